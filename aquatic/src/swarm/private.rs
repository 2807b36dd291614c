//! Private tracker rules and accounting: who may announce (from the
//! [`Catalog`] loaded from the database) and what each announce credits
//! (the [`Ledger`] of one shard), all in memory and synchronous.
//!
//! ```text
//!   Catalog (users by passkey, torrents by info hash, whitelist)
//!      │ Rules::bt_announce: refusals from memory, no database call
//!      v
//!   PrivatePeer in the BtAnnounce ──> shard: private swarm + Ledger::record
//!                                       │ deltas merged per (user, torrent)
//!                                       v
//!   Ledger::drain ──> Batch ──> database thread (merged again, written)
//! ```
//!
//! A peer's baseline is keyed by (torrent, user, peer id), so two members
//! behind one address, or one member's two clients, never shift each
//! other's counters.

use std::net::IpAddr;

use aquatic_common::{time::SecondsSinceStart, time::ValidUntil, InfoHash, PeerCounts, PeerId};
use aquatic_http_protocol::Passkey;
use hashbrown::HashMap;

use super::refusal::Refusal;

/// A member's id in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub u32);

/// A torrent's id in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TorrentId(pub u32);

/// What a torrent's transfer counts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Freeleech {
    /// Upload and download both count.
    #[default]
    None,
    /// Download does not count.
    Free,
    /// Neither counts.
    Neutral,
}

impl Freeleech {
    /// The schema's spelling (`none`, `free`, `neutral`); anything else is
    /// None (a typo in the site's data must not make a torrent free).
    pub fn from_db(text: &str) -> Self {
        match text {
            "free" => Self::Free,
            "neutral" => Self::Neutral,
            _ => Self::None,
        }
    }
}

/// A member as the tracker needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// May announce with `left > 0`.
    pub can_leech: bool,
    /// May announce at all.
    pub enabled: bool,
}

/// A registered torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisteredTorrent {
    /// Its id.
    pub id: TorrentId,
    /// How its transfer counts.
    pub freeleech: Freeleech,
}

/// Users, torrents and the client whitelist as last loaded; each executor
/// reads its copy without a lock. Before the first load it is empty and
/// not [`loaded`](Catalog::loaded).
#[derive(Debug, Default)]
pub struct Catalog {
    loaded: bool,
    users: HashMap<Passkey, User>,
    torrents: HashMap<InfoHash, RegisteredTorrent>,
    /// Peer-id prefixes allowed; empty: every client.
    whitelist: Vec<Vec<u8>>,
}

impl Catalog {
    /// The catalog before anything was loaded: every private request is
    /// answered "tracker is starting".
    pub fn starting() -> Self {
        Self::default()
    }

    /// A loaded catalog.
    pub fn new(
        users: HashMap<Passkey, User>,
        torrents: HashMap<InfoHash, RegisteredTorrent>,
        whitelist: Vec<Vec<u8>>,
    ) -> Self {
        Self {
            loaded: true,
            users,
            torrents,
            whitelist,
        }
    }

    /// Whether a load succeeded.
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// Members known.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Torrents registered.
    pub fn torrents(&self) -> usize {
        self.torrents.len()
    }

    /// The member with `passkey` who may announce, or why not.
    pub fn member(&self, passkey: Option<&Passkey>) -> Result<User, Refusal> {
        if !self.loaded {
            return Err(Refusal::TrackerStarting);
        }
        let passkey = passkey.ok_or(Refusal::PasskeyRequired)?;
        let user = *self.users.get(passkey).ok_or(Refusal::UnknownPasskey)?;
        if !user.enabled {
            return Err(Refusal::UserDisabled);
        }
        Ok(user)
    }

    /// Checks a private announce: member, client, torrent, leeching right.
    pub fn check_announce(
        &self,
        passkey: Option<&Passkey>,
        info_hash: &InfoHash,
        peer_id: &PeerId,
        seeding: bool,
    ) -> Result<(User, RegisteredTorrent), Refusal> {
        let user = self.member(passkey)?;
        if !self.whitelist.is_empty() && !self.whitelist.iter().any(|p| peer_id.0.starts_with(p)) {
            return Err(Refusal::ClientNotWhitelisted);
        }
        let torrent = *self
            .torrents
            .get(info_hash)
            .ok_or(Refusal::TorrentNotRegistered)?;
        if !seeding && !user.can_leech {
            return Err(Refusal::LeechingNotAllowed);
        }
        Ok((user, torrent))
    }
}

/// What a private announce adds to a [`BtAnnounce`](super::BtAnnounce):
/// who it is and what its counters say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivatePeer {
    /// The member.
    pub user: UserId,
    /// The torrent.
    pub torrent: TorrentId,
    /// How its transfer counts.
    pub freeleech: Freeleech,
    /// `uploaded` as sent.
    pub uploaded: u64,
    /// `downloaded` as sent.
    pub downloaded: u64,
}

/// Credited bytes of one member on one torrent, with where it last was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes credited as uploaded.
    pub uploaded: u64,
    /// Bytes credited as downloaded.
    pub downloaded: u64,
    /// The address it last announced from.
    pub ip: IpAddr,
    /// The port it last announced.
    pub port: u16,
}

/// What one or more flush intervals changed, merged: bounded by active
/// members × torrents, however many announces made it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Credited bytes per (member, torrent).
    pub transfers: HashMap<(UserId, TorrentId), Transfer>,
    /// Snatches per (member, torrent).
    pub snatches: HashMap<(UserId, TorrentId), u32>,
    /// Latest seeders and leechers of torrents whose counts changed.
    pub counts: HashMap<TorrentId, PeerCounts>,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty() && self.snatches.is_empty() && self.counts.is_empty()
    }

    /// Rows this batch writes.
    pub fn rows(&self) -> usize {
        self.transfers.len() + self.snatches.len() + self.counts.len()
    }

    /// Adds `later` to this batch: bytes and snatches add up, the later
    /// counts and address win.
    pub fn merge(&mut self, later: Batch) {
        for (key, t) in later.transfers {
            self.transfers
                .entry(key)
                .and_modify(|e| {
                    e.uploaded = e.uploaded.saturating_add(t.uploaded);
                    e.downloaded = e.downloaded.saturating_add(t.downloaded);
                    e.ip = t.ip;
                    e.port = t.port;
                })
                .or_insert(t);
        }
        for (key, n) in later.snatches {
            let e = self.snatches.entry(key).or_insert(0);
            *e = e.saturating_add(n);
        }
        self.counts.extend(later.counts);
    }
}

/// The counters a peer last reported.
#[derive(Clone, Copy, Debug)]
struct Baseline {
    uploaded: u64,
    downloaded: u64,
    /// The last announce said `left = 0`.
    seeding: bool,
    valid_until: ValidUntil,
}

/// One private peer's last reported counters, as a snapshot keeps them
/// (so that a restart neither credits its whole counters again nor
/// forgets what it did since its last announce).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaselineEntry {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The member.
    pub user: UserId,
    /// The member's client.
    pub peer_id: PeerId,
    /// `uploaded` as last sent.
    pub uploaded: u64,
    /// `downloaded` as last sent.
    pub downloaded: u64,
    /// The last announce said `left = 0`.
    pub seeding: bool,
    /// When it is forgotten unless the peer announces again.
    pub valid_until: ValidUntil,
}

/// One shard's accounting: each private peer's last counters, the deltas
/// not yet handed to the database thread, and the counts last reported
/// per torrent (so that a torrent whose peers expired is written as 0).
#[derive(Default)]
pub struct Ledger {
    baselines: HashMap<(InfoHash, UserId, PeerId), Baseline>,
    pending: Batch,
    /// Torrents with peers here, with the counts last put in a batch.
    reported: HashMap<InfoHash, (TorrentId, Option<PeerCounts>)>,
}

impl Ledger {
    /// Records an announce the shard applied: credits the counters'
    /// growth since the peer's last announce (none on its first: what it
    /// did before is not known to be uncredited), and marks the torrent's
    /// counts for writing.
    ///
    /// A snatch is a `completed` announce with nothing left, or a peer
    /// seen leeching that now reports nothing left (aria2c, stopping right
    /// after its download, sends `stopped` with `left = 0` and never
    /// `completed`); a peer already seeding never snatches again.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        now: SecondsSinceStart,
        peer_timeout: std::time::Duration,
        info_hash: InfoHash,
        peer_id: PeerId,
        peer: &PrivatePeer,
        ip: IpAddr,
        port: u16,
        stopped: bool,
        completed: bool,
        left: Option<u64>,
    ) {
        let key = (info_hash, peer.user, peer_id);
        let (mut up, mut down) = (0, 0);
        let previous = self.baselines.get(&key);
        let seeding = left == Some(0);
        let snatched = seeding
            && match previous {
                None => completed,
                Some(base) => !base.seeding,
            };
        if let Some(base) = previous {
            // Counters that went backwards (a client restart) reset the
            // baseline without credit.
            if peer.uploaded >= base.uploaded && peer.downloaded >= base.downloaded {
                up = peer.uploaded - base.uploaded;
                down = peer.downloaded - base.downloaded;
            }
        }
        match peer.freeleech {
            Freeleech::None => {}
            Freeleech::Free => down = 0,
            Freeleech::Neutral => (up, down) = (0, 0),
        }
        if stopped {
            self.baselines.remove(&key);
        } else {
            self.baselines.insert(
                key,
                Baseline {
                    uploaded: peer.uploaded,
                    downloaded: peer.downloaded,
                    seeding,
                    valid_until: ValidUntil::after(now, peer_timeout),
                },
            );
        }
        let transfer = Transfer {
            uploaded: up,
            downloaded: down,
            ip,
            port,
        };
        let mut one = Batch::default();
        one.transfers.insert((peer.user, peer.torrent), transfer);
        if snatched {
            one.snatches.insert((peer.user, peer.torrent), 1);
        }
        self.pending.merge(one);
        self.reported
            .entry(info_hash)
            .or_insert((peer.torrent, None));
    }

    /// Forgets baselines of peers that expired at `now` (their swarm
    /// entries expire with the same timeout).
    pub fn clean(&mut self, now: SecondsSinceStart) {
        self.baselines.retain(|_, b| b.valid_until.valid_at(now));
        aquatic_common::swarm::shrink_map_if_sparse(&mut self.baselines);
    }

    /// Takes what changed since the last drain: the pending deltas, and the
    /// counts of each torrent (read with `counts_of`) that differ from
    /// those last taken. A torrent at 0 is taken once and then forgotten.
    pub fn drain(&mut self, mut counts_of: impl FnMut(&InfoHash) -> PeerCounts) -> Batch {
        let mut batch = std::mem::take(&mut self.pending);
        self.reported.retain(|hash, (id, last)| {
            let now = counts_of(hash);
            if *last != Some(now) {
                batch.counts.insert(*id, now);
                *last = Some(now);
            }
            now != PeerCounts::default()
        });
        batch
    }

    /// Puts back a batch that could not be handed on, under what came since.
    pub fn restore(&mut self, mut batch: Batch) {
        let later = std::mem::take(&mut self.pending);
        // Counts in `later` are newer; merge keeps the later ones.
        batch.merge(later);
        self.pending = batch;
    }

    /// Peers with a baseline.
    pub fn peers(&self) -> usize {
        self.baselines.len()
    }

    /// Every peer's baseline.
    pub fn baseline_entries(&self) -> impl Iterator<Item = BaselineEntry> + '_ {
        self.baselines
            .iter()
            .map(|(&(info_hash, user, peer_id), b)| BaselineEntry {
                info_hash,
                user,
                peer_id,
                uploaded: b.uploaded,
                downloaded: b.downloaded,
                seeding: b.seeding,
                valid_until: b.valid_until,
            })
    }

    /// Puts back a baseline from the snapshot of a clean stop: the peer's
    /// next announce credits only what it did since its last one. One the
    /// peer has already replaced by announcing is left alone.
    pub fn restore_baseline(&mut self, entry: BaselineEntry) {
        self.baselines
            .entry((entry.info_hash, entry.user, entry.peer_id))
            .or_insert(Baseline {
                uploaded: entry.uploaded,
                downloaded: entry.downloaded,
                seeding: entry.seeding,
                valid_until: entry.valid_until,
            });
    }

    /// The database id of a torrent with private peers here (snapshots
    /// keep it with the swarm).
    pub fn torrent_id(&self, info_hash: &InfoHash) -> Option<TorrentId> {
        self.reported.get(info_hash).map(|(id, _)| *id)
    }

    /// Marks a restored private swarm's torrent for writing its counts,
    /// as an announce would have.
    pub fn restore_torrent(&mut self, info_hash: InfoHash, torrent: TorrentId) {
        self.reported.entry(info_hash).or_insert((torrent, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PASSKEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn catalog(whitelist: Vec<Vec<u8>>) -> Catalog {
        let passkey = |b: &[u8; 32]| Passkey::new(b).expect("passkey");
        let mut users = HashMap::new();
        let user = |id, can_leech, enabled| User {
            id: UserId(id),
            can_leech,
            enabled,
        };
        users.insert(passkey(PASSKEY), user(1, true, true));
        users.insert(
            passkey(b"disabled00000000000000000000000a"),
            user(2, true, false),
        );
        users.insert(
            passkey(b"seedonly00000000000000000000000a"),
            user(3, false, true),
        );
        let mut torrents = HashMap::new();
        torrents.insert(
            InfoHash([1; 20]),
            RegisteredTorrent {
                id: TorrentId(10),
                freeleech: Freeleech::None,
            },
        );
        Catalog::new(users, torrents, whitelist)
    }

    #[test]
    fn each_refusal_from_memory() {
        let c = catalog(vec![b"-lt".to_vec()]);
        let key = |b: &[u8; 32]| Passkey::new(b);
        let hash = InfoHash([1; 20]);
        let lt = PeerId(*b"-lt0D80-000000000000");
        let check = |p: Option<Passkey>, h: &InfoHash, id: &PeerId, seeding| {
            c.check_announce(p.as_ref(), h, id, seeding).map(|_| ())
        };
        assert_eq!(check(key(PASSKEY), &hash, &lt, false), Ok(()));
        assert_eq!(
            check(None, &hash, &lt, false),
            Err(Refusal::PasskeyRequired)
        );
        assert_eq!(
            check(key(b"nobody00000000000000000000000000"), &hash, &lt, false),
            Err(Refusal::UnknownPasskey)
        );
        assert_eq!(
            check(key(b"disabled00000000000000000000000a"), &hash, &lt, false),
            Err(Refusal::UserDisabled)
        );
        assert_eq!(
            check(key(PASSKEY), &hash, &PeerId([b'x'; 20]), false),
            Err(Refusal::ClientNotWhitelisted)
        );
        assert_eq!(
            check(key(PASSKEY), &InfoHash([2; 20]), &lt, false),
            Err(Refusal::TorrentNotRegistered)
        );
        let seed_only = key(b"seedonly00000000000000000000000a");
        assert_eq!(
            check(seed_only, &hash, &lt, false),
            Err(Refusal::LeechingNotAllowed)
        );
        assert_eq!(check(seed_only, &hash, &lt, true), Ok(()));
        assert_eq!(
            Catalog::starting()
                .check_announce(key(PASSKEY).as_ref(), &hash, &lt, true)
                .map(|_| ()),
            Err(Refusal::TrackerStarting)
        );
        let open = catalog(Vec::new());
        assert!(open
            .check_announce(key(PASSKEY).as_ref(), &hash, &PeerId([b'x'; 20]), true)
            .is_ok());
    }

    fn peer(freeleech: Freeleech, uploaded: u64, downloaded: u64) -> PrivatePeer {
        PrivatePeer {
            user: UserId(1),
            torrent: TorrentId(10),
            freeleech,
            uploaded,
            downloaded,
        }
    }

    fn record(ledger: &mut Ledger, peer_id: u8, p: PrivatePeer, stopped: bool, completed: bool) {
        // left: 0 once downloaded is at least 12 (the tests' "done").
        let left = Some(if p.downloaded >= 12 && completed {
            0
        } else {
            1
        });
        ledger.record(
            SecondsSinceStart(0),
            Duration::from_secs(60),
            InfoHash([1; 20]),
            PeerId([peer_id; 20]),
            &p,
            IpAddr::from([127, 0, 0, 1]),
            6881,
            stopped,
            completed,
            left,
        );
    }

    #[test]
    fn a_snatch_is_counted_once_per_download() {
        let mut ledger = Ledger::default();
        let p = peer(Freeleech::None, 0, 0);
        let mut announce = |peer_id: u8, stopped, completed, left| {
            ledger.record(
                SecondsSinceStart(0),
                Duration::from_secs(60),
                InfoHash([1; 20]),
                PeerId([peer_id; 20]),
                &p,
                IpAddr::from([127, 0, 0, 1]),
                6881,
                stopped,
                completed,
                Some(left),
            );
        };
        // Leeching, then completed, then completed again: one snatch.
        announce(1, false, false, 5);
        announce(1, false, true, 0);
        announce(1, false, true, 0);
        // Leeching, then stopped with nothing left (aria2c): one snatch.
        announce(2, false, false, 5);
        announce(2, true, false, 0);
        // A seeder from the start: none.
        announce(3, false, false, 0);
        announce(3, true, false, 0);
        let batch = ledger.drain(|_| PeerCounts::default());
        assert_eq!(batch.snatches.get(&(UserId(1), TorrentId(10))), Some(&2));
    }

    fn credited(batch: &Batch) -> (u64, u64) {
        batch
            .transfers
            .get(&(UserId(1), TorrentId(10)))
            .map_or((0, 0), |t| (t.uploaded, t.downloaded))
    }

    #[test]
    fn only_differences_are_credited() {
        let mut ledger = Ledger::default();
        let none = Freeleech::None;
        record(&mut ledger, 1, peer(none, 100, 50), false, false);
        record(&mut ledger, 1, peer(none, 300, 80), false, false);
        // Another client of the same member: its own baseline.
        record(&mut ledger, 2, peer(none, 1000, 0), false, false);
        record(&mut ledger, 2, peer(none, 1010, 5), false, false);
        let batch = ledger.drain(|_| PeerCounts::default());
        assert_eq!(credited(&batch), (210, 35));
        // Backwards: reset without credit, then growth from the new base.
        record(&mut ledger, 1, peer(none, 10, 10), false, false);
        record(&mut ledger, 1, peer(none, 15, 12), true, true);
        let batch = ledger.drain(|_| PeerCounts::default());
        assert_eq!(credited(&batch), (5, 2));
        assert_eq!(batch.snatches.get(&(UserId(1), TorrentId(10))), Some(&1));
        // Stopped: the baseline is gone, the next announce starts afresh.
        record(&mut ledger, 1, peer(none, 500, 500), false, false);
        assert_eq!(credited(&ledger.drain(|_| PeerCounts::default())), (0, 0));
    }

    #[test]
    fn freeleech_and_neutral() {
        let mut ledger = Ledger::default();
        record(&mut ledger, 1, peer(Freeleech::Free, 0, 0), false, false);
        record(
            &mut ledger,
            1,
            peer(Freeleech::Free, 100, 100),
            false,
            false,
        );
        assert_eq!(credited(&ledger.drain(|_| PeerCounts::default())), (100, 0));
        record(
            &mut ledger,
            1,
            peer(Freeleech::Neutral, 200, 200),
            false,
            false,
        );
        assert_eq!(credited(&ledger.drain(|_| PeerCounts::default())), (0, 0));
    }

    #[test]
    fn counts_written_when_they_change_and_zero_once() {
        let mut ledger = Ledger::default();
        record(&mut ledger, 1, peer(Freeleech::None, 0, 0), false, false);
        let one = PeerCounts {
            seeders: 1,
            leechers: 0,
        };
        let batch = ledger.drain(|_| one);
        assert_eq!(batch.counts.get(&TorrentId(10)), Some(&one));
        assert!(ledger.drain(|_| one).counts.is_empty(), "unchanged");
        let zero = PeerCounts::default();
        assert_eq!(
            ledger.drain(|_| zero).counts.get(&TorrentId(10)),
            Some(&zero)
        );
        assert!(ledger.drain(|_| zero).is_empty(), "forgotten after the 0");
    }

    /// A baseline read out and put into another ledger (a restart) makes
    /// the next announce credit only the growth since the last one.
    #[test]
    fn restored_baselines_credit_only_the_growth() {
        let mut ledger = Ledger::default();
        let none = Freeleech::None;
        record(&mut ledger, 1, peer(none, 0, 0), false, false);
        record(&mut ledger, 1, peer(none, 100, 40), false, false);
        assert_eq!(
            credited(&ledger.drain(|_| PeerCounts::default())),
            (100, 40)
        );
        let entries: Vec<BaselineEntry> = ledger.baseline_entries().collect();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].uploaded, entries[0].downloaded), (100, 40));
        let mut restarted = Ledger::default();
        for entry in entries {
            restarted.restore_baseline(entry);
        }
        record(&mut restarted, 1, peer(none, 250, 50), false, false);
        assert_eq!(
            credited(&restarted.drain(|_| PeerCounts::default())),
            (150, 10)
        );
        // Without the baseline the same announce credits nothing.
        let mut forgot = Ledger::default();
        record(&mut forgot, 1, peer(none, 250, 50), false, false);
        assert_eq!(credited(&forgot.drain(|_| PeerCounts::default())), (0, 0));
    }

    #[test]
    fn restored_batches_merge_with_later_ones() {
        let mut ledger = Ledger::default();
        let none = Freeleech::None;
        record(&mut ledger, 1, peer(none, 0, 0), false, false);
        record(&mut ledger, 1, peer(none, 10, 10), false, false);
        let first = ledger.drain(|_| PeerCounts::default());
        record(&mut ledger, 1, peer(none, 15, 20), false, false);
        ledger.restore(first);
        assert_eq!(credited(&ledger.drain(|_| PeerCounts::default())), (15, 20));
    }
}
