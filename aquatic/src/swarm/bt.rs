//! BitTorrent (UDP and HTTP) swarms of one shard, laid out for density.
//!
//! Where the bytes go (x86-64), per torrent and per peer:
//!
//! ```text
//!   torrent table   HashTable<Torrent>: 48-byte entries + 1 control byte,
//!                   1.14x to 2.3x slots per torrent (hashbrown's load factor)
//!   Torrent         info hash 20 | completed 4 | peers 24:
//!                     One  { seeder, BtPeer<Ipv4Addr> }   the common case, inline
//!                     Many (Box<Swarms>)                  2+ peers or any IPv6 peer
//!   Swarms          v4 DenseSwarm (records + seeder count + index above 32 peers),
//!                   v6 Option<Box<DenseSwarm>> made on demand
//!   BtPeer<Ipv4>    16 bytes: id hash 8 | ip 4 | port 2 | expiry 2 (coarse tick)
//!   BtPeer<Ipv6>    28 bytes: id hash 8 | ip 16 | port 2 | expiry 2
//! ```
//!
//! Identity. A peer is the same peer when its peer id *and* its address
//! and port match (issue 14's rule: a peer id replayed from elsewhere is
//! another peer, so nobody can stop or redirect another client's entry).
//! The address and port are compared exactly; the peer id is kept as a
//! 63-bit SipHash-1-3 of it under a secret 128-bit key ([`PeerIdKey`]),
//! one per process and shared by every shard: derived from the state
//! directory's persisted key material when there is one (so snapshot
//! records match after a restart and after re-sharding), random otherwise.
//! Two different peer ids announced from the same address
//! and port are taken for one peer only if their hashes collide: with the
//! key secret, a client cannot aim for that, and by chance it happens with
//! probability 2^-63 for a pair (n ids behind one address and port:
//! below n² / 2^64).
//!
//! Full peer ids. Non-compact HTTP responses (BEP 3 dictionaries) show
//! each peer's `peer id`. The full 20 bytes are kept only for peers that
//! announced over HTTP, in a side table by id hash with a reference count
//! (the record's top id-hash bit says it has an entry). Peers that only
//! ever announced over UDP have no full id, and their dictionaries leave
//! `peer id` out, as BEP 23's `no_peer_id` does (clients that ask for
//! non-compact responses are old or minimal; libtorrent, transmission and
//! aria2 all accept a dictionary without it). Two HTTP peer ids whose
//! hashes collide (probability below n² / 2^64 for n ids) share the first
//! one's entry: the second is shown with the first's id.
//!
//! Private mode's per-peer fields (a later issue) belong in a side table
//! keyed like the full peer ids, or in a second record type for private
//! swarms (`DenseSwarm<R>` is generic over the record): public peers keep
//! their 16 bytes either way.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aquatic_common::{
    dense::{CoarseClock, DenseRecord, DenseSwarm, Tick},
    swarm::{is_sparse, PeerStatus},
    time::{SecondsSinceStart, ValidUntil},
    AnnounceOutcome, InfoHash, PeerCounts, PeerId, ScrapeStats, SelectedPeer, SelectedPeers,
};
use hashbrown::{hash_map::Entry, DefaultHashBuilder, HashMap, HashTable};
use rand::Rng;

/// The top bit of a stored id hash: the full peer id is in the side table.
const HAS_FULL_ID: u64 = 1 << 63;

/// The key of the peer-id hash (SipHash-1-3), one per process. Snapshots
/// store id hashes, so a restarted process must hash with the same key
/// (derived from the state directory, [`PeerIdKey::from_material`]) or
/// restored peers no longer match their own re-announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerIdKey(pub [u64; 2]);

impl PeerIdKey {
    /// A fresh random key.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The key derived from persisted key material (the state directory's
    /// connection-id key file): SipHash-2-4-128 under the zero key over a
    /// domain-separation label and the material, so that the same material
    /// gives the same key in every shard and after a restart, and neither
    /// key reveals the other.
    pub fn from_material(material: &[u8]) -> Self {
        use siphasher::sip128::Hasher128;
        let mut h = siphasher::sip128::SipHasher24::new_with_keys(0, 0);
        h.write(b"aquatic peer-id key v1\0");
        h.write(material);
        let sum = h.finish128();
        Self([sum.h1, sum.h2])
    }

    /// The 63-bit hash of `peer_id` (top bit clear).
    pub fn hash(&self, peer_id: &PeerId) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.0[0], self.0[1]);
        h.write(&peer_id.0);
        h.finish() & !HAS_FULL_ID
    }
}

/// A peer as the swarm stores it: a hash of its id (and whether the full
/// id is kept), where to reach it, and until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BtPeer<A> {
    /// The id hash as two halves, so that the record is 4-aligned (16
    /// bytes for IPv4, 28 for IPv6, no padding).
    id: [u32; 2],
    ip: A,
    port: u16,
    expiry: Tick,
}

impl<A> BtPeer<A> {
    fn id(&self) -> u64 {
        u64::from(self.id[0]) | u64::from(self.id[1]) << 32
    }

    fn id_hash(&self) -> u64 {
        self.id() & !HAS_FULL_ID
    }

    fn has_full_id(&self) -> bool {
        self.id() & HAS_FULL_ID != 0
    }

    fn set_id(&mut self, id: u64) {
        self.id = [id as u32, (id >> 32) as u32];
    }

    /// A record for the peer whose stored id (hash and flag) is `id`.
    fn new(id: u64, ip: A, port: u16, expiry: Tick) -> Self {
        let mut record = Self {
            id: [0; 2],
            ip,
            port,
            expiry,
        };
        record.set_id(id);
        record
    }
}

impl<A: Copy + Eq + std::hash::Hash> DenseRecord for BtPeer<A> {
    fn same_peer(&self, other: &Self) -> bool {
        self.id_hash() == other.id_hash() && self.ip == other.ip && self.port == other.port
    }

    fn identity_hash<S: BuildHasher>(&self, state: &S) -> u64 {
        state.hash_one((self.id_hash(), self.ip, self.port))
    }

    fn expiry(&self) -> Tick {
        self.expiry
    }
}

/// The IPv4 and IPv6 swarms of a torrent with more than one IPv4 peer or
/// any IPv6 peer.
#[derive(Default)]
struct Swarms {
    v4: DenseSwarm<BtPeer<Ipv4Addr>>,
    /// Boxed and made on demand: most torrents never see an IPv6 peer.
    v6: Option<Box<DenseSwarm<BtPeer<Ipv6Addr>>>>,
}

/// The peers of one torrent.
enum Peers {
    /// No peer (only between a stop and the torrent's removal).
    Empty,
    /// Most torrents have one peer: it lives inline, nothing allocated.
    One {
        seeder: bool,
        peer: BtPeer<Ipv4Addr>,
    },
    Many(Box<Swarms>),
}

struct Torrent {
    info_hash: InfoHash,
    /// `completed` events seen: the scrape's "downloaded".
    completed: u32,
    peers: Peers,
}

fn status_of(seeder: bool) -> PeerStatus {
    if seeder {
        PeerStatus::Seeding
    } else {
        PeerStatus::Leeching
    }
}

impl Torrent {
    fn counts(&self) -> PeerCounts {
        match &self.peers {
            Peers::Empty => PeerCounts::default(),
            Peers::One { seeder, .. } => {
                let mut counts = PeerCounts::default();
                counts.change(None, Some(status_of(*seeder)));
                counts
            }
            Peers::Many(swarms) => {
                let mut counts = swarms.v4.counts();
                if let Some(v6) = &swarms.v6 {
                    counts += v6.counts();
                }
                counts
            }
        }
    }

    fn is_empty(&self) -> bool {
        match &self.peers {
            Peers::Empty => true,
            Peers::One { .. } => false,
            Peers::Many(s) => s.v4.is_empty() && s.v6.as_ref().is_none_or(|v6| v6.is_empty()),
        }
    }

    /// The swarms, made from the inline peer if needed.
    fn swarms(&mut self, state: &DefaultHashBuilder) -> &mut Swarms {
        if !matches!(self.peers, Peers::Many(_)) {
            let mut swarms = Box::<Swarms>::default();
            if let Peers::One { seeder, peer } = self.peers {
                swarms.v4.upsert(peer, status_of(seeder), state);
            }
            self.peers = Peers::Many(swarms);
        }
        match &mut self.peers {
            Peers::Many(swarms) => swarms,
            _ => unreachable!("made above"),
        }
    }

    /// After cleaning: a torrent down to one IPv4 peer keeps it inline.
    fn compact(&mut self) {
        let Peers::Many(swarms) = &self.peers else {
            return;
        };
        let v6_empty = swarms.v6.as_ref().is_none_or(|v6| v6.is_empty());
        if v6_empty && swarms.v4.len() <= 1 {
            let only = swarms
                .v4
                .iter()
                .next()
                .map(|(peer, status)| (*peer, status));
            self.peers = match only {
                Some((peer, status)) => Peers::One {
                    seeder: status == PeerStatus::Seeding,
                    peer,
                },
                None => Peers::Empty,
            };
        }
    }
}

/// What the shard does with an announcing peer's full 20-byte id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerIdUse {
    /// UDP: no response shows ids; the peer is matched by id hash only.
    Hashed,
    /// HTTP: the id is kept whole, for non-compact responses to others;
    /// this response shows none (compact, or `no_peer_id`).
    Kept,
    /// HTTP, non-compact without `no_peer_id`: kept, and this response
    /// shows the ids of the peers that have one.
    KeptAndShown,
}

/// A UDP or HTTP announce the tracker's rules accepted
/// ([`Rules::bt_announce`](super::rules::Rules::bt_announce)): the only kind the
/// shard applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtAnnounce {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The announcing peer.
    pub peer_id: PeerId,
    /// Source address, canonical (IPv4-mapped IPv6 turned into IPv4).
    pub ip: IpAddr,
    /// The port the peer listens on.
    pub port: u16,
    /// The `stopped` event.
    pub stopped: bool,
    /// The `completed` event.
    pub completed: bool,
    /// Bytes the peer still lacks, if it said.
    pub bytes_left: Option<u64>,
    /// Peers wanted, already capped by config.
    pub numwant: usize,
    /// Who the member is and what its counters say, on the private tracker.
    pub private: Option<super::private::PrivatePeer>,
    /// Whether the full peer id is kept and shown.
    pub peer_ids: PeerIdUse,
}

/// What one cleaning pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Expired peers removed.
    pub peers_removed: usize,
    /// Empty torrents removed.
    pub torrents_removed: usize,
}

/// Where a cleaning pass done in slices ([`BtShard::clean_slice`]) goes
/// on, and what it removed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanCursor {
    /// Torrents before the next one to look at, in the table's order.
    next: usize,
    /// Torrents still to look at in this pass (the table's length when it
    /// began): a pass ends even if announces add torrents faster than
    /// slices look at them.
    left: Option<usize>,
    peers_removed: usize,
    torrents_removed: usize,
}

/// One peer as a neutral record (what a snapshot can store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtPeerRecord {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The peer's address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// The 63-bit hash of its peer id under the shard's [`PeerIdKey`].
    pub peer_id_hash: u64,
    /// The full peer id, kept only for peers that announced over HTTP.
    pub peer_id: Option<PeerId>,
    /// Seeding or leeching.
    pub seeder: bool,
    /// When it expires (to the clock's resolution, never earlier).
    pub valid_until: ValidUntil,
}

/// Full peer ids of the peers that announced over HTTP, by id hash, with
/// how many stored peers refer to each.
#[derive(Default)]
struct FullIds(HashMap<u64, (PeerId, u32)>);

impl FullIds {
    fn acquire(&mut self, id_hash: u64, peer_id: PeerId) {
        self.0.entry(id_hash).or_insert((peer_id, 0)).1 += 1;
    }

    fn release(&mut self, id_hash: u64) {
        if let Entry::Occupied(mut entry) = self.0.entry(id_hash) {
            entry.get_mut().1 -= 1;
            if entry.get().1 == 0 {
                entry.remove();
            }
        }
    }

    fn get(&self, id_hash: u64) -> Option<PeerId> {
        self.0.get(&id_hash).map(|(id, _)| *id)
    }

    fn shrink_if_sparse(&mut self) {
        if is_sparse(self.0.len(), self.0.capacity()) {
            self.0.shrink_to_fit();
        }
    }
}

/// The torrents whose info hash maps to this shard.
pub struct BtShard {
    torrents: HashTable<Torrent>,
    /// Hashes info hashes for the table and peers for swarm indexes.
    state: DefaultHashBuilder,
    key: PeerIdKey,
    clock: CoarseClock,
    full_ids: FullIds,
    /// Seeders and leechers over all torrents, kept as peers change.
    counts: PeerCounts,
}

impl Default for BtShard {
    /// A shard for peer timeouts up to about four and a half hours (one
    /// second resolution); [`BtShard::new`] fits any configuration.
    fn default() -> Self {
        Self::with_clock(CoarseClock::default(), PeerIdKey::random())
    }
}

/// The parts of a shard an announce in one family needs.
struct Ctx<'a, R: Rng + ?Sized> {
    state: &'a DefaultHashBuilder,
    full_ids: &'a mut FullIds,
    rng: &'a mut R,
    request: &'a BtAnnounce,
    status: PeerStatus,
}

impl BtShard {
    /// An empty shard whose coarse clock fits peers living `peer_timeout`
    /// and cleaned every `cleaning_interval`.
    pub fn new(peer_timeout: std::time::Duration, cleaning_interval: std::time::Duration) -> Self {
        Self::with_clock(
            CoarseClock::for_timeouts(peer_timeout, cleaning_interval),
            PeerIdKey::random(),
        )
    }

    /// An empty shard with this clock and peer-id key (a restore passes the
    /// key its records were hashed with).
    pub fn with_clock(clock: CoarseClock, key: PeerIdKey) -> Self {
        Self {
            torrents: HashTable::new(),
            state: DefaultHashBuilder::default(),
            key,
            clock,
            full_ids: FullIds::default(),
            counts: PeerCounts::default(),
        }
    }

    /// The key peer ids are hashed with.
    pub fn peer_id_key(&self) -> PeerIdKey {
        self.key
    }

    fn find(&self, info_hash: &InfoHash) -> Option<&Torrent> {
        self.torrents.find(self.state.hash_one(info_hash), |t| {
            t.info_hash == *info_hash
        })
    }

    /// Applies an announce and chooses peers for the reply: IPv4 requesters
    /// get IPv4 peers in `out.v4`, IPv6 requesters IPv6 peers in `out.v6`.
    /// `out` is cleared first.
    pub fn announce<R: Rng + ?Sized>(
        &mut self,
        peer_timeout: std::time::Duration,
        now: SecondsSinceStart,
        rng: &mut R,
        request: &BtAnnounce,
        out: &mut SelectedPeers,
    ) -> AnnounceOutcome {
        out.clear();
        let status =
            PeerStatus::from_announce(request.stopped, request.completed, request.bytes_left);
        let hash = self.state.hash_one(request.info_hash);
        let eq = |t: &Torrent| t.info_hash == request.info_hash;
        let torrent = match self.torrents.find_mut(hash, eq) {
            Some(torrent) => torrent,
            // Never create a torrent just to record that a peer left it.
            None if status == PeerStatus::Stopped => return AnnounceOutcome::default(),
            None => {
                let state = &self.state;
                self.torrents
                    .insert_unique(
                        hash,
                        Torrent {
                            info_hash: request.info_hash,
                            completed: 0,
                            peers: Peers::Empty,
                        },
                        |t| state.hash_one(t.info_hash),
                    )
                    .into_mut()
            }
        };
        let mut id = self.key.hash(&request.peer_id);
        if request.peer_ids != PeerIdUse::Hashed {
            id |= HAS_FULL_ID;
        }
        let expiry = self.clock.expiry(now, peer_timeout);
        let mut ctx = Ctx {
            state: &self.state,
            full_ids: &mut self.full_ids,
            rng,
            request,
            status,
        };
        let previous = match request.ip {
            IpAddr::V4(ip) => {
                let record = BtPeer::new(id, ip, request.port, expiry);
                announce_v4(torrent, record, &mut ctx, &mut out.v4)
            }
            IpAddr::V6(ip) => {
                let record = BtPeer::new(id, ip, request.port, expiry);
                let swarms = torrent.swarms(ctx.state);
                let v6 = swarms.v6.get_or_insert_with(Box::default);
                announce_in(v6, record, &mut ctx, &mut out.v6)
            }
        };
        self.counts.change(previous, Some(status));
        if request.completed && previous != Some(PeerStatus::Seeding) {
            torrent.completed = torrent.completed.saturating_add(1);
        }
        let counts = torrent.counts();
        if torrent.is_empty() {
            if let Ok(entry) = self.torrents.find_entry(hash, eq) {
                entry.remove();
            }
        } else if let Peers::Many(swarms) = &mut torrent.peers {
            if swarms.v6.as_ref().is_some_and(|v6| v6.is_empty()) {
                swarms.v6 = None;
            }
        }
        AnnounceOutcome {
            seeders: counts.seeders,
            leechers: counts.leechers,
        }
    }

    /// Scrape figures for one torrent (zeros when unknown).
    pub fn scrape(&self, info_hash: &InfoHash) -> ScrapeStats {
        self.find(info_hash).map_or_else(ScrapeStats::default, |t| {
            let counts = t.counts();
            ScrapeStats {
                seeders: counts.seeders,
                leechers: counts.leechers,
                completed: t.completed,
            }
        })
    }

    /// Removes peers expired at `now` and torrents left empty, then shrinks
    /// maps that became sparse so the memory goes back: the whole pass in
    /// one step ([`clean_slice`](Self::clean_slice) with no bound).
    pub fn clean(&mut self, now: SecondsSinceStart) -> CleanReport {
        let mut cursor = CleanCursor::default();
        loop {
            if let Some(report) = self.clean_slice(now, &mut cursor, usize::MAX) {
                return report;
            }
        }
    }

    /// One slice of a cleaning pass: cleans the torrents after those
    /// `cursor` has passed, until `work` torrents and peers have been
    /// looked at (a torrent is looked at whole, so a slice ends after the
    /// torrent that reaches the bound). Returns the pass's report once it
    /// reached the end of the table, having shrunk the maps that became
    /// sparse; `None` while there is more.
    ///
    /// Between two slices the shard may change, and every count stays
    /// right whatever happens, since each slice removes what it removes
    /// and adjusts the counts at once. The cursor is a position in the
    /// table's order, corrected for the torrents this pass removed: a
    /// torrent inserted before it or another removal (a cluster hand-back)
    /// shifts it by one, and a growth of the table reorders it, so a
    /// torrent may then be looked at twice (harmless) or not at all in
    /// this pass (the next one cleans it).
    pub fn clean_slice(
        &mut self,
        now: SecondsSinceStart,
        cursor: &mut CleanCursor,
        work: usize,
    ) -> Option<CleanReport> {
        let work = work.max(1);
        let left = *cursor.left.get_or_insert(self.torrents.len());
        let tick = self.clock.now(now);
        let (clock, state, full_ids) = (&self.clock, &self.state, &mut self.full_ids);
        let mut release = |id: u64, has_full_id: bool| {
            if has_full_id {
                full_ids.release(id & !HAS_FULL_ID);
            }
        };
        let mut removed = PeerCounts::default();
        let (mut looked, mut done_work) = (0usize, 0usize);
        let mut emptied = Vec::new();
        let mut reached_end = true;
        for t in self.torrents.iter_mut().skip(cursor.next) {
            if done_work >= work || looked == left {
                reached_end = false;
                break;
            }
            let peers = t.counts();
            done_work = done_work.saturating_add(1 + peers.total());
            looked += 1;
            match &mut t.peers {
                Peers::Empty => {}
                Peers::One { seeder, peer } => {
                    if !clock.valid_at(peer.expiry, tick) {
                        release(peer.id(), peer.has_full_id());
                        removed.change(None, Some(status_of(*seeder)));
                        t.peers = Peers::Empty;
                    }
                }
                Peers::Many(swarms) => {
                    removed += swarms
                        .v4
                        .clean(clock, tick, state, |p| release(p.id(), p.has_full_id()));
                    if let Some(v6) = &mut swarms.v6 {
                        removed +=
                            v6.clean(clock, tick, state, |p| release(p.id(), p.has_full_id()));
                    }
                    t.compact();
                }
            }
            if t.is_empty() {
                emptied.push(t.info_hash);
            }
        }
        for hash in &emptied {
            let found = self
                .torrents
                .find_entry(self.state.hash_one(hash), |t| t.info_hash == *hash);
            if let Ok(entry) = found {
                entry.remove();
            }
        }
        self.counts.remove(removed);
        cursor.peers_removed += removed.total();
        cursor.torrents_removed += emptied.len();
        // The removed torrents were before the next one in the order.
        cursor.next += looked - emptied.len();
        cursor.left = Some(left - looked);
        if !reached_end && left > looked {
            return None;
        }
        if is_sparse(self.torrents.len(), self.torrents.capacity()) {
            let state = &self.state;
            self.torrents.shrink_to_fit(|t| state.hash_one(t.info_hash));
        }
        self.full_ids.shrink_if_sparse();
        let report = CleanReport {
            peers_removed: cursor.peers_removed,
            torrents_removed: cursor.torrents_removed,
        };
        *cursor = CleanCursor::default();
        Some(report)
    }

    /// Torrents held.
    pub fn torrents(&self) -> usize {
        self.torrents.len()
    }

    /// Seeders and leechers over all torrents (kept as peers change: O(1)).
    pub fn peer_counts(&self) -> PeerCounts {
        self.counts
    }

    /// Slots allocated in the torrent map.
    pub fn capacity(&self) -> usize {
        self.torrents.capacity()
    }

    /// Every peer as a neutral record, expiry read near `now`.
    pub fn records(&self, now: SecondsSinceStart) -> impl Iterator<Item = BtPeerRecord> + '_ {
        self.torrents.iter().flat_map(move |t| {
            let record = move |ip: IpAddr,
                               port: u16,
                               id: u64,
                               has_full: bool,
                               seeder: bool,
                               expiry: Tick| {
                BtPeerRecord {
                    info_hash: t.info_hash,
                    ip,
                    port,
                    peer_id_hash: id & !HAS_FULL_ID,
                    peer_id: if has_full {
                        self.full_ids.get(id & !HAS_FULL_ID)
                    } else {
                        None
                    },
                    seeder,
                    valid_until: ValidUntil(self.clock.seconds(expiry, now)),
                }
            };
            let mut list = Vec::new();
            match &t.peers {
                Peers::Empty => {}
                Peers::One { seeder, peer } => list.push(record(
                    IpAddr::V4(peer.ip),
                    peer.port,
                    peer.id(),
                    peer.has_full_id(),
                    *seeder,
                    peer.expiry,
                )),
                Peers::Many(swarms) => {
                    for (p, status) in swarms.v4.iter() {
                        list.push(record(
                            IpAddr::V4(p.ip),
                            p.port,
                            p.id(),
                            p.has_full_id(),
                            status == PeerStatus::Seeding,
                            p.expiry,
                        ));
                    }
                    for (p, status) in swarms.v6.iter().flat_map(|v6| v6.iter()) {
                        list.push(record(
                            IpAddr::V6(p.ip),
                            p.port,
                            p.id(),
                            p.has_full_id(),
                            status == PeerStatus::Seeding,
                            p.expiry,
                        ));
                    }
                }
            }
            list
        })
    }
}

/// Keeps the full-id table in step with a peer's record going from
/// `previous` to `now` (None: absent); returns the id bits `now` must carry.
fn full_id_change(
    full_ids: &mut FullIds,
    previous: Option<u64>,
    now: Option<u64>,
    peer_id: PeerId,
) -> Option<u64> {
    let had = previous.is_some_and(|id| id & HAS_FULL_ID != 0);
    match now {
        None => {
            if had {
                full_ids.release(previous.unwrap_or(0) & !HAS_FULL_ID);
            }
            None
        }
        Some(id) => {
            let wants = id & HAS_FULL_ID != 0;
            if wants && !had {
                full_ids.acquire(id & !HAS_FULL_ID, peer_id);
            }
            // A UDP re-announce keeps the full id an HTTP one left.
            Some(if had { id | HAS_FULL_ID } else { id })
        }
    }
}

fn announce_v4<R: Rng + ?Sized>(
    torrent: &mut Torrent,
    mut record: BtPeer<Ipv4Addr>,
    ctx: &mut Ctx<'_, R>,
    out: &mut Vec<SelectedPeer<Ipv4Addr>>,
) -> Option<PeerStatus> {
    match &mut torrent.peers {
        Peers::Empty if ctx.status != PeerStatus::Stopped => {
            if let Some(id) =
                full_id_change(ctx.full_ids, None, Some(record.id()), ctx.request.peer_id)
            {
                record.set_id(id);
            }
            torrent.peers = Peers::One {
                seeder: ctx.status == PeerStatus::Seeding,
                peer: record,
            };
            // The requester is the only peer: nobody to hand out.
            None
        }
        Peers::Empty => None,
        Peers::One { seeder, peer } if peer.same_peer(&record) => {
            let previous = status_of(*seeder);
            let now = (ctx.status != PeerStatus::Stopped).then_some(record.id());
            match full_id_change(ctx.full_ids, Some(peer.id()), now, ctx.request.peer_id) {
                Some(id) => {
                    record.set_id(id);
                    *peer = record;
                    *seeder = ctx.status == PeerStatus::Seeding;
                }
                None => torrent.peers = Peers::Empty,
            }
            Some(previous)
        }
        Peers::One { .. } if ctx.status == PeerStatus::Stopped => None,
        _ => {
            let swarms = torrent.swarms(ctx.state);
            announce_in(&mut swarms.v4, record, ctx, out)
        }
    }
}

/// One UDP or HTTP peer as code outside the swarms sees it (snapshots):
/// what the shard knows of it, not how the shard stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtPeerEntry {
    /// The 63-bit hash of its peer id under the shard's [`PeerIdKey`].
    pub peer_id_hash: u64,
    /// Its full id, kept only for peers that announced over HTTP.
    pub peer_id: Option<PeerId>,
    /// Its address.
    pub ip: IpAddr,
    /// The port it listens on.
    pub port: u16,
    /// Seeding (else leeching).
    pub seeder: bool,
    /// When it expires unless it announces again (to the clock's
    /// resolution, never earlier).
    pub valid_until: ValidUntil,
}

/// Reading and refilling a shard as [`BtPeerEntry`]s, for snapshots.
impl BtShard {
    /// An empty shard like this one but hashing peer ids with `key`: one
    /// key per process, so that snapshot records match across shards and
    /// restarts.
    pub fn with_peer_id_key(self, key: PeerIdKey) -> Self {
        debug_assert!(self.torrents.is_empty(), "the key changes only while empty");
        Self::with_clock(self.clock, key)
    }

    /// Every torrent's info hash, in no particular order.
    pub fn info_hashes(&self) -> Vec<InfoHash> {
        self.torrents.iter().map(|t| t.info_hash).collect()
    }

    /// Appends the peers of `info_hash` to `out`, expiries read near
    /// `now`, and returns its `completed` count; `None` for a torrent not
    /// held.
    pub fn torrent_entries(
        &self,
        info_hash: &InfoHash,
        now: SecondsSinceStart,
        out: &mut Vec<BtPeerEntry>,
    ) -> Option<u32> {
        self.torrent_entries_part(info_hash, now, 0, usize::MAX, out)
    }

    /// [`torrent_entries`](Self::torrent_entries) for at most `max` peers
    /// after the first `skip` (in the order of the swarm, which holds
    /// between two calls that change nothing): lets a snapshot read a big
    /// torrent in bounded slices.
    pub fn torrent_entries_part(
        &self,
        info_hash: &InfoHash,
        now: SecondsSinceStart,
        skip: usize,
        max: usize,
        out: &mut Vec<BtPeerEntry>,
    ) -> Option<u32> {
        let torrent = self.find(info_hash)?;
        let entry = |ip: IpAddr, port: u16, id: u64, seeder: bool, expiry: Tick| {
            let peer_id_hash = id & !HAS_FULL_ID;
            BtPeerEntry {
                peer_id_hash,
                peer_id: if id & HAS_FULL_ID != 0 {
                    self.full_ids.get(peer_id_hash)
                } else {
                    None
                },
                ip,
                port,
                seeder,
                valid_until: ValidUntil(self.clock.seconds(expiry, now)),
            }
        };
        match &torrent.peers {
            Peers::Empty => {}
            Peers::One { seeder, peer } => {
                if skip == 0 && max > 0 {
                    out.push(entry(
                        IpAddr::V4(peer.ip),
                        peer.port,
                        peer.id(),
                        *seeder,
                        peer.expiry,
                    ));
                }
            }
            Peers::Many(swarms) => {
                // Skipped before the entries are made: skipping costs
                // a step per peer, not a lookup.
                let v4_len = swarms.v4.len();
                let v4 = swarms.v4.iter().skip(skip).take(max).map(|(p, status)| {
                    let seeder = status == PeerStatus::Seeding;
                    entry(IpAddr::V4(p.ip), p.port, p.id(), seeder, p.expiry)
                });
                let v4_taken = v4_len.saturating_sub(skip).min(max);
                let v6 = swarms
                    .v6
                    .iter()
                    .flat_map(|v6| v6.iter())
                    .skip(skip.saturating_sub(v4_len))
                    .take(max - v4_taken)
                    .map(|(p, status)| {
                        let seeder = status == PeerStatus::Seeding;
                        entry(IpAddr::V6(p.ip), p.port, p.id(), seeder, p.expiry)
                    });
                out.extend(v4.chain(v6));
            }
        }
        Some(torrent.completed)
    }

    /// Puts restored peers into `info_hash`'s swarms at `now`, keeping the
    /// counts. A peer already there keeps whichever record expires later;
    /// `completed` becomes the larger of the two counts. Nothing is made
    /// for no peers.
    pub fn restore(
        &mut self,
        info_hash: InfoHash,
        completed: u32,
        now: SecondsSinceStart,
        peers: &[BtPeerEntry],
    ) {
        if let Some((torrent, _)) = self.insert_entries(info_hash, now, peers) {
            torrent.completed = torrent.completed.max(completed);
        }
    }

    /// Merges a swarm another cluster member served while this node was
    /// not live (a handback) into `info_hash`'s swarms at `now`. The same
    /// rule as a restore: a peer already held keeps its record unless the
    /// handed one expires later, i.e. announced more recently (the caller
    /// caps lifetimes at this node's peer timeout), so a peer that
    /// announced here directly since is never overridden by an older copy.
    /// The sender counted `completed` only while it owned the torrent, so
    /// it adds to this node's count. A full peer id is hashed again under
    /// this shard's key. Returns how many peers were put in or refreshed.
    pub fn merge_handback(
        &mut self,
        info_hash: InfoHash,
        completed: u32,
        now: SecondsSinceStart,
        peers: &mut [BtPeerEntry],
    ) -> usize {
        for entry in peers.iter_mut() {
            if let Some(peer_id) = entry.peer_id {
                entry.peer_id_hash = self.key.hash(&peer_id);
            }
        }
        match self.insert_entries(info_hash, now, peers) {
            Some((torrent, changed)) => {
                torrent.completed = torrent.completed.saturating_add(completed);
                changed
            }
            None => 0,
        }
    }

    /// Removes `info_hash`'s torrent, appending its peers to `out`
    /// (expiries read near `now`); its `completed` count, None for a
    /// torrent not held. For a handback: this node no longer owns it.
    pub fn take(
        &mut self,
        info_hash: &InfoHash,
        now: SecondsSinceStart,
        out: &mut Vec<BtPeerEntry>,
    ) -> Option<u32> {
        let completed = self.torrent_entries(info_hash, now, out)?;
        let hash = self.state.hash_one(info_hash);
        let Ok(entry) = self
            .torrents
            .find_entry(hash, |t| t.info_hash == *info_hash)
        else {
            return Some(completed);
        };
        let (torrent, _) = entry.remove();
        self.counts.remove(torrent.counts());
        let full_ids = &mut self.full_ids;
        let mut release = |id: u64, has_full_id: bool| {
            if has_full_id {
                full_ids.release(id & !HAS_FULL_ID);
            }
        };
        match &torrent.peers {
            Peers::Empty => {}
            Peers::One { peer, .. } => release(peer.id(), peer.has_full_id()),
            Peers::Many(swarms) => {
                for (p, _) in swarms.v4.iter() {
                    release(p.id(), p.has_full_id());
                }
                for (p, _) in swarms.v6.iter().flat_map(|v6| v6.iter()) {
                    release(p.id(), p.has_full_id());
                }
            }
        }
        Some(completed)
    }

    /// Puts peers from elsewhere (a snapshot, a handback) into
    /// `info_hash`'s swarms at `now` through [`insert_record`], keeping the
    /// counts; the torrent and how many peers went in or were refreshed,
    /// or None (nothing made) for no peers.
    fn insert_entries(
        &mut self,
        info_hash: InfoHash,
        now: SecondsSinceStart,
        peers: &[BtPeerEntry],
    ) -> Option<(&mut Torrent, usize)> {
        if peers.is_empty() {
            return None;
        }
        let hash = self.state.hash_one(info_hash);
        let eq = |t: &Torrent| t.info_hash == info_hash;
        if self.find(&info_hash).is_none() {
            let state = &self.state;
            self.torrents.insert_unique(
                hash,
                Torrent {
                    info_hash,
                    completed: 0,
                    peers: Peers::Empty,
                },
                |t| state.hash_one(t.info_hash),
            );
        }
        let torrent = self.torrents.find_mut(hash, eq)?;
        let mut changed = 0;
        for entry in peers {
            let ttl = entry.valid_until.0 .0.saturating_sub(now.0);
            let expiry = self
                .clock
                .expiry(now, std::time::Duration::from_secs(u64::from(ttl)));
            let parts = ShardParts {
                clock: &self.clock,
                state: &self.state,
                full_ids: &mut self.full_ids,
            };
            if let Some(previous) = insert_record(torrent, entry, expiry, parts) {
                self.counts.change(previous, Some(status_of(entry.seeder)));
                changed += 1;
            }
        }
        Some((torrent, changed))
    }
}

/// The parts of a shard putting a peer in needs besides its torrent.
struct ShardParts<'a> {
    clock: &'a CoarseClock,
    state: &'a DefaultHashBuilder,
    full_ids: &'a mut FullIds,
}

/// Puts one peer from elsewhere (snapshot, handback) into `torrent`,
/// expiring at `expiry`, unless it holds that peer with a later expiry;
/// returns the change to count (`Some(previous status)`). The one place
/// this rule lives, for the inline single peer and for the swarms.
fn insert_record(
    torrent: &mut Torrent,
    entry: &BtPeerEntry,
    expiry: Tick,
    parts: ShardParts<'_>,
) -> Option<Option<PeerStatus>> {
    let ShardParts {
        clock,
        state,
        full_ids,
    } = parts;
    let status = status_of(entry.seeder);
    let mut id = entry.peer_id_hash & !HAS_FULL_ID;
    if entry.peer_id.is_some() {
        id |= HAS_FULL_ID;
    }
    let peer_id = entry.peer_id.unwrap_or(PeerId([0; 20]));
    match entry.ip {
        IpAddr::V4(ip) => {
            let mut record = BtPeer::new(id, ip, entry.port, expiry);
            match &mut torrent.peers {
                Peers::Empty => {
                    if let Some(id) = full_id_change(full_ids, None, Some(id), peer_id) {
                        record.set_id(id);
                    }
                    torrent.peers = Peers::One {
                        seeder: entry.seeder,
                        peer: record,
                    };
                    Some(None)
                }
                Peers::One { seeder, peer } if peer.same_peer(&record) => {
                    if clock.valid_at(peer.expiry, record.expiry) {
                        None
                    } else {
                        let previous = status_of(*seeder);
                        if let Some(id) =
                            full_id_change(full_ids, Some(peer.id()), Some(id), peer_id)
                        {
                            record.set_id(id);
                        }
                        *peer = record;
                        *seeder = entry.seeder;
                        Some(Some(previous))
                    }
                }
                _ => {
                    let swarms = torrent.swarms(state);
                    restore_in(
                        &mut swarms.v4,
                        record,
                        status,
                        clock,
                        state,
                        full_ids,
                        peer_id,
                    )
                }
            }
        }
        IpAddr::V6(ip) => {
            let record = BtPeer::new(id, ip, entry.port, expiry);
            let swarms = torrent.swarms(state);
            let v6 = swarms.v6.get_or_insert_with(Box::default);
            restore_in(v6, record, status, clock, state, full_ids, peer_id)
        }
    }
}

/// Inserts one restored peer unless the swarm holds it with a later
/// expiry; returns the change to count (`Some(previous status)`).
fn restore_in<A: Copy + Eq + std::hash::Hash>(
    swarm: &mut DenseSwarm<BtPeer<A>>,
    mut record: BtPeer<A>,
    status: PeerStatus,
    clock: &CoarseClock,
    state: &DefaultHashBuilder,
    full_ids: &mut FullIds,
    peer_id: PeerId,
) -> Option<Option<PeerStatus>> {
    let held = swarm.get(&record, state).map(|(held, _)| *held);
    if held.is_some_and(|held| clock.valid_at(held.expiry, record.expiry)) {
        return None;
    }
    if let Some(id) = full_id_change(full_ids, held.map(|h| h.id()), Some(record.id()), peer_id) {
        record.set_id(id);
    }
    let upserted = swarm.upsert(record, status, state);
    Some(upserted.previous.map(|(status, _)| status))
}

fn announce_in<A: Copy + Eq + std::hash::Hash, R: Rng + ?Sized>(
    swarm: &mut DenseSwarm<BtPeer<A>>,
    record: BtPeer<A>,
    ctx: &mut Ctx<'_, R>,
    out: &mut Vec<SelectedPeer<A>>,
) -> Option<PeerStatus> {
    let upserted = swarm.upsert(record, ctx.status, ctx.state);
    let previous_id = upserted.previous.map(|(_, p)| p.id());
    let now_id = upserted.position.map(|_| record.id());
    if let Some(id) = full_id_change(ctx.full_ids, previous_id, now_id, ctx.request.peer_id) {
        if id != record.id() {
            let mut fixed = record;
            fixed.set_id(id);
            swarm.upsert(fixed, ctx.status, ctx.state);
        }
    }
    if let Some(position) = upserted.position {
        let show_ids = ctx.request.peer_ids == PeerIdUse::KeptAndShown;
        let full_ids = &*ctx.full_ids;
        swarm.select_peers(
            ctx.rng,
            Some(position),
            ctx.status == PeerStatus::Seeding,
            ctx.request.numwant,
            |p| {
                out.push(SelectedPeer {
                    peer_id: if show_ids && p.has_full_id() {
                        full_ids.get(p.id_hash())
                    } else {
                        None
                    },
                    ip_address: p.ip,
                    port: p.port,
                })
            },
        );
    }
    upserted.previous.map(|(status, _)| status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn announce(n: u8, ip: IpAddr, left: u64) -> BtAnnounce {
        BtAnnounce {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([n; 20]),
            ip,
            port: 1000 + n as u16,
            stopped: false,
            completed: false,
            bytes_left: Some(left),
            numwant: 50,
            private: None,
            peer_ids: PeerIdUse::KeptAndShown,
        }
    }

    struct Fixture {
        shard: BtShard,
        peer_timeout: std::time::Duration,
        rng: SmallRng,
        out: SelectedPeers,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                shard: BtShard::default(),
                peer_timeout: std::time::Duration::from_secs(3600),
                rng: SmallRng::seed_from_u64(3),
                out: SelectedPeers::default(),
            }
        }
        fn run(&mut self, now: u32, req: &BtAnnounce) -> AnnounceOutcome {
            self.shard.announce(
                self.peer_timeout,
                SecondsSinceStart(now),
                &mut self.rng,
                req,
                &mut self.out,
            )
        }
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    #[test]
    fn families_stay_apart_and_counts_cover_both() {
        let mut f = Fixture::new();
        f.run(0, &announce(1, V4, 10));
        f.run(0, &announce(2, V6, 0));
        let out = f.run(0, &announce(3, V4, 10));
        assert_eq!(
            out,
            AnnounceOutcome {
                seeders: 1,
                leechers: 2
            }
        );
        assert_eq!(f.out.v4.len(), 1);
        assert_eq!(f.out.v4[0].peer_id, Some(PeerId([1; 20])));
        assert!(f.out.v6.is_empty());
        f.run(0, &announce(4, V6, 10));
        assert_eq!(f.out.v6.len(), 1);
        assert_eq!(f.out.v6[0].port, 1002);
    }

    #[test]
    fn a_peer_id_replayed_from_another_address_is_another_peer() {
        let mut f = Fixture::new();
        f.run(0, &announce(1, V4, 10));
        let mut forged = announce(1, "10.9.9.9".parse().expect("ip"), 10);
        forged.stopped = true;
        f.run(0, &forged);
        assert_eq!(
            f.shard.scrape(&InfoHash([1; 20])).leechers,
            1,
            "not evicted"
        );
        forged.stopped = false;
        f.run(0, &forged);
        assert_eq!(
            f.shard.scrape(&InfoHash([1; 20])).leechers,
            2,
            "not redirected"
        );
    }

    #[test]
    fn stopped_removes_and_completed_counts_once() {
        let mut f = Fixture::new();
        f.run(0, &announce(1, V4, 10));
        let mut done = announce(1, V4, 0);
        done.completed = true;
        f.run(0, &done);
        f.run(0, &done);
        let stats = f.shard.scrape(&InfoHash([1; 20]));
        assert_eq!(
            stats,
            ScrapeStats {
                seeders: 1,
                leechers: 0,
                completed: 1
            }
        );
        let mut stop = announce(1, V4, 0);
        stop.stopped = true;
        f.run(0, &stop);
        assert_eq!(f.shard.torrents(), 0);
        // a stop for an unknown torrent creates nothing
        f.run(0, &stop);
        assert_eq!(f.shard.torrents(), 0);
    }

    #[test]
    fn clean_expires_peers_and_torrents() {
        let mut f = Fixture::new();
        f.peer_timeout = std::time::Duration::from_secs(10);
        f.run(0, &announce(1, V4, 10));
        f.run(5, &announce(2, V4, 10));
        assert_eq!(
            f.shard.clean(SecondsSinceStart(12)),
            CleanReport {
                peers_removed: 1,
                torrents_removed: 0
            }
        );
        assert_eq!(f.shard.scrape(&InfoHash([1; 20])).leechers, 1);
        assert_eq!(
            f.shard.clean(SecondsSinceStart(16)),
            CleanReport {
                peers_removed: 1,
                torrents_removed: 1
            }
        );
        assert_eq!(f.shard.torrents(), 0);
        assert_eq!(f.shard.peer_counts(), PeerCounts::default());
    }

    /// Torrent `t`, peer `n` of it: HTTP peers (full ids kept) on odd
    /// torrents, some IPv6, so every kind of swarm is in the table.
    fn spread(t: u32, n: u8) -> BtAnnounce {
        let mut hash = [0u8; 20];
        hash[..4].copy_from_slice(&t.to_be_bytes());
        let ip = if n % 4 == 3 { V6 } else { V4 };
        let mut peer_id = [n; 20];
        peer_id[..4].copy_from_slice(&t.to_be_bytes());
        BtAnnounce {
            info_hash: InfoHash(hash),
            peer_id: PeerId(peer_id),
            peer_ids: if t % 2 == 1 {
                PeerIdUse::Kept
            } else {
                PeerIdUse::Hashed
            },
            ..announce(n, ip, u64::from(n % 2))
        }
    }

    /// A shard of 300 torrents with 1 to 5 peers each, half of them
    /// announced at 0 (expired at 20 with a 10 s timeout), half at 15.
    fn mixed_fixture() -> Fixture {
        let mut f = Fixture::new();
        f.peer_timeout = std::time::Duration::from_secs(10);
        for t in 0..300u32 {
            for n in 0..(1 + t % 5) as u8 {
                let at = if (t + u32::from(n)) % 2 == 0 { 0 } else { 15 };
                f.run(at, &spread(t, n));
            }
        }
        f
    }

    /// What a shard holds, in an order that does not depend on the table
    /// (id hashes left out: two shards hash under different keys).
    fn held(shard: &BtShard, now: u32) -> Vec<(InfoHash, IpAddr, u16, Option<PeerId>, bool)> {
        let mut all: Vec<_> = shard
            .records(SecondsSinceStart(now))
            .map(|r| (r.info_hash, r.ip, r.port, r.peer_id, r.seeder))
            .collect();
        all.sort_unstable();
        all
    }

    /// The counts, the full-id table and the records agree.
    fn assert_consistent(shard: &BtShard, now: u32) {
        let records: Vec<_> = shard.records(SecondsSinceStart(now)).collect();
        let seeders = records.iter().filter(|r| r.seeder).count();
        assert_eq!(
            shard.peer_counts(),
            PeerCounts {
                seeders,
                leechers: records.len() - seeders
            }
        );
        let with_id = records.iter().filter(|r| r.peer_id.is_some()).count();
        let referenced: u32 = shard.full_ids.0.values().map(|(_, n)| *n).sum();
        assert_eq!(
            referenced as usize, with_id,
            "full ids referenced once per peer"
        );
        assert!(shard.full_ids.0.values().all(|(_, n)| *n > 0));
    }

    #[test]
    fn a_pass_in_slices_cleans_what_one_step_cleans() {
        let (mut whole, mut sliced) = (mixed_fixture(), mixed_fixture());
        let now = SecondsSinceStart(20);
        let expected = whole.shard.clean(now);
        assert!(expected.peers_removed > 0 && expected.torrents_removed > 0);
        let mut cursor = CleanCursor::default();
        let mut slices = 0;
        let report = loop {
            slices += 1;
            if let Some(report) = sliced.shard.clean_slice(now, &mut cursor, 7) {
                break report;
            }
            assert_consistent(&sliced.shard, 20);
        };
        assert!(slices > 50, "a bound of 7 makes many slices: {slices}");
        assert_eq!(report, expected);
        assert_eq!(held(&sliced.shard, 20), held(&whole.shard, 20));
        assert_eq!(sliced.shard.peer_counts(), whole.shard.peer_counts());
        assert_eq!(sliced.shard.torrents(), whole.shard.torrents());
        assert_eq!(cursor, CleanCursor::default(), "ready for the next pass");
    }

    #[test]
    fn announces_between_slices_keep_the_shard_consistent() {
        let mut f = mixed_fixture();
        let now = SecondsSinceStart(20);
        let mut cursor = CleanCursor::default();
        let mut step = 0u32;
        loop {
            if f.shard.clean_slice(now, &mut cursor, 11).is_some() {
                break;
            }
            // New torrents (the table grows: it reorders), re-announces
            // of expired peers (they live again), and stops.
            for i in 0..20 {
                f.run(20, &spread(1000 + step * 20 + i, 0));
            }
            f.run(20, &spread(step % 300, 0));
            let mut stop = spread((step * 7) % 300, 1);
            stop.stopped = true;
            f.run(20, &stop);
            assert_consistent(&f.shard, 20);
            step += 1;
        }
        assert!(step > 10, "announces came between many slices: {step}");
        assert_consistent(&f.shard, 20);
        // Whatever this pass could not see, the next one cleans: then
        // nothing expired is left.
        f.shard.clean(now);
        assert_consistent(&f.shard, 20);
        assert!(
            f.shard.records(now).all(|r| r.valid_until.0 .0 > 20),
            "no expired peer left"
        );
    }

    #[test]
    fn counts_are_kept_as_peers_change() {
        let mut f = Fixture::new();
        f.peer_timeout = std::time::Duration::from_secs(10);
        f.run(0, &announce(1, V4, 10));
        f.run(0, &announce(2, V6, 0));
        f.run(5, &announce(3, V4, 10));
        let mut moved = announce(1, V4, 0);
        moved.completed = true;
        f.run(5, &moved);
        assert_eq!(
            f.shard.peer_counts(),
            PeerCounts {
                seeders: 2,
                leechers: 1
            }
        );
        f.shard.clean(SecondsSinceStart(12));
        assert_eq!(
            f.shard.peer_counts(),
            PeerCounts {
                seeders: 1,
                leechers: 1
            }
        );
        let mut stop = announce(3, V4, 10);
        stop.stopped = true;
        f.run(12, &stop);
        assert_eq!(
            f.shard.peer_counts(),
            PeerCounts {
                seeders: 1,
                leechers: 0
            }
        );
    }

    #[test]
    fn entries_read_back_into_an_equal_shard() {
        let mut f = Fixture::new();
        f.run(0, &announce(1, V4, 10));
        f.run(3, &announce(2, V6, 0));
        let mut done = announce(3, V4, 0);
        done.completed = true;
        f.run(5, &done);
        let hash = InfoHash([1; 20]);
        let mut entries = Vec::new();
        assert_eq!(
            f.shard
                .torrent_entries(&hash, SecondsSinceStart(5), &mut entries),
            Some(1)
        );
        assert_eq!(entries.len(), 3);
        assert_eq!(f.shard.info_hashes(), vec![hash]);
        // One key per process: a shard restoring another's entries uses it.
        let mut copy = BtShard::default().with_peer_id_key(f.shard.peer_id_key());
        copy.restore(hash, 1, SecondsSinceStart(5), &entries);
        // The HTTP announces' full ids come back too.
        assert!(entries.iter().all(|e| e.peer_id.is_some()));
        assert_eq!(copy.scrape(&hash), f.shard.scrape(&hash));
        assert_eq!(copy.peer_counts(), f.shard.peer_counts());
        // Again, older: nothing changes; the counts stay right.
        let older: Vec<BtPeerEntry> = entries
            .iter()
            .map(|e| BtPeerEntry {
                valid_until: ValidUntil(SecondsSinceStart(0)),
                seeder: !e.seeder,
                ..*e
            })
            .collect();
        copy.restore(hash, 0, SecondsSinceStart(5), &older);
        assert_eq!(copy.peer_counts(), f.shard.peer_counts());
        let mut again = Vec::new();
        copy.torrent_entries(&hash, SecondsSinceStart(5), &mut again);
        again.sort_by_key(|e| e.peer_id_hash);
        entries.sort_by_key(|e| e.peer_id_hash);
        assert_eq!(again, entries);
        // Expiry still applies to restored peers.
        assert_eq!(copy.clean(SecondsSinceStart(3604)).peers_removed, 2);
    }

    /// Parts of any size, read one after the other, are the whole
    /// torrent: IPv4 and IPv6 peers, seeders and leechers, each once.
    #[test]
    fn a_torrent_read_in_parts_is_the_whole_torrent() {
        let mut f = Fixture::new();
        for n in 0..9u8 {
            let ip = if n % 3 == 0 { V6 } else { V4 };
            f.run(0, &announce(n, ip, u64::from(n % 2)));
        }
        let (hash, now) = (InfoHash([1; 20]), SecondsSinceStart(0));
        let mut whole = Vec::new();
        f.shard.torrent_entries(&hash, now, &mut whole);
        assert_eq!(whole.len(), 9);
        for part in 1..=10 {
            let (mut parts, mut skip) = (Vec::new(), 0);
            loop {
                let before = parts.len();
                let completed = f
                    .shard
                    .torrent_entries_part(&hash, now, skip, part, &mut parts);
                assert_eq!(completed, Some(0));
                let got = parts.len() - before;
                assert!(got <= part);
                if got < part {
                    break;
                }
                skip += got;
            }
            assert_eq!(parts, whole, "parts of {part}");
        }
        let mut none = Vec::new();
        assert_eq!(
            f.shard
                .torrent_entries_part(&InfoHash([2; 20]), now, 0, 5, &mut none),
            None
        );
    }

    #[test]
    fn torrent_map_shrinks_after_traffic_drops() {
        let mut f = Fixture::new();
        f.peer_timeout = std::time::Duration::from_secs(1);
        for i in 0..5000u32 {
            let mut a = announce(1, V4, 1);
            a.info_hash.0[..4].copy_from_slice(&i.to_be_bytes());
            f.run(0, &a);
        }
        let peak = f.shard.capacity();
        assert!(peak >= 5000);
        f.shard.clean(SecondsSinceStart(10));
        assert!(
            f.shard.capacity() < peak / 4,
            "{} vs {peak}",
            f.shard.capacity()
        );
    }

    #[test]
    fn records_are_small_and_one_peer_torrents_allocate_nothing() {
        assert_eq!(std::mem::size_of::<BtPeer<Ipv4Addr>>(), 16);
        assert_eq!(std::mem::size_of::<BtPeer<Ipv6Addr>>(), 28);
        assert_eq!(std::mem::size_of::<Torrent>(), 48);
        let mut f = Fixture::new();
        f.run(0, &announce(1, V4, 10));
        let one = |f: &Fixture| {
            f.shard
                .find(&InfoHash([1; 20]))
                .is_some_and(|t| matches!(t.peers, Peers::One { .. }))
        };
        assert!(one(&f));
        f.run(0, &announce(2, V4, 10));
        assert!(!one(&f));
        let mut stop = announce(2, V4, 10);
        stop.stopped = true;
        f.run(0, &stop);
        // Back inline at the next cleaning.
        f.shard.clean(SecondsSinceStart(0));
        assert!(one(&f));
        assert_eq!(f.shard.scrape(&InfoHash([1; 20])).leechers, 1);
    }

    #[test]
    fn two_peer_ids_behind_one_address_and_port_are_two_peers() {
        let mut f = Fixture::new();
        let mut a = announce(1, V4, 10);
        let mut b = announce(2, V4, 10);
        b.port = a.port;
        f.run(0, &a);
        f.run(0, &b);
        assert_eq!(f.shard.scrape(&InfoHash([1; 20])).leechers, 2);
        a.stopped = true;
        f.run(0, &a);
        assert_eq!(f.shard.scrape(&InfoHash([1; 20])).leechers, 1);
        b.stopped = false;
        f.run(0, &b);
        assert_eq!(f.out.v4.len(), 0, "b is alone");
    }

    #[test]
    fn full_ids_only_for_http_peers_and_released_when_they_go() {
        let mut f = Fixture::new();
        f.peer_timeout = std::time::Duration::from_secs(10);
        let mut udp = announce(1, V4, 10);
        udp.peer_ids = PeerIdUse::Hashed;
        f.run(0, &udp);
        let mut http = announce(2, V4, 10);
        http.peer_ids = PeerIdUse::Kept;
        f.run(0, &http);
        assert_eq!(f.out.v4.len(), 1);
        assert_eq!(f.out.v4[0].peer_id, None, "compact: no ids shown");
        let mut shown = announce(3, V4, 10);
        shown.peer_ids = PeerIdUse::KeptAndShown;
        f.run(0, &shown);
        let mut ids: Vec<_> = f.out.v4.iter().map(|p| (p.port, p.peer_id)).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![(1001, None), (1002, Some(PeerId([2; 20])))]);
        assert_eq!(f.shard.full_ids.0.len(), 2);
        // A UDP re-announce of an HTTP peer keeps its id.
        let mut again = announce(2, V4, 10);
        again.peer_ids = PeerIdUse::Hashed;
        f.run(5, &again);
        let records: Vec<_> = f.shard.records(SecondsSinceStart(5)).collect();
        let two = records.iter().find(|r| r.port == 1002).expect("peer 2");
        assert_eq!(two.peer_id, Some(PeerId([2; 20])));
        assert_eq!(
            two.peer_id_hash,
            f.shard.peer_id_key().hash(&PeerId([2; 20]))
        );
        assert_eq!(two.valid_until, ValidUntil(SecondsSinceStart(15)));
        assert!(!two.seeder);
        assert_eq!(
            records
                .iter()
                .find(|r| r.port == 1001)
                .expect("peer 1")
                .peer_id,
            None
        );
        // Stops and expiry give the ids back.
        shown.stopped = true;
        f.run(5, &shown);
        assert_eq!(f.shard.full_ids.0.len(), 1);
        f.shard.clean(SecondsSinceStart(30));
        assert_eq!(f.shard.torrents(), 0);
        assert!(f.shard.full_ids.0.is_empty());
    }

    #[test]
    fn a_large_swarm_is_indexed_and_keeps_its_rules() {
        let mut f = Fixture::new();
        for n in 0..200u8 {
            let mut a = announce(n, V4, u64::from(n % 2));
            a.ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, n));
            f.run(0, &a);
        }
        let stats = f.shard.scrape(&InfoHash([1; 20]));
        assert_eq!((stats.seeders, stats.leechers), (100, 100));
        // Every peer moves to the other side, then re-announces in place.
        for n in 0..200u8 {
            let mut a = announce(n, V4, u64::from(n % 2 == 0));
            a.ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, n));
            a.numwant = 300;
            f.run(1, &a);
            f.run(1, &a);
            assert!(f
                .out
                .v4
                .iter()
                .all(|p| p.port != a.port || p.ip_address != Ipv4Addr::new(10, 0, 1, n)));
            let expected = if n % 2 == 1 { 100 } else { 199 };
            assert_eq!(f.out.v4.len(), expected, "peer {n}");
        }
        assert_eq!(
            f.shard.peer_counts(),
            PeerCounts {
                seeders: 100,
                leechers: 100
            }
        );
    }

    #[test]
    fn a_taken_torrent_leaves_with_its_counts_and_full_ids() {
        let mut f = Fixture::new();
        f.run(0, &announce(1, V4, 10));
        f.run(0, &announce(2, V6, 0));
        let mut other = announce(3, V4, 10);
        other.info_hash = InfoHash([2; 20]);
        f.run(0, &other);
        let mut out = Vec::new();
        let hash = InfoHash([1; 20]);
        assert_eq!(f.shard.take(&hash, SecondsSinceStart(4), &mut out), Some(0));
        assert_eq!(out.len(), 2);
        assert!(
            out.iter().all(|e| e.peer_id.is_some()),
            "HTTP peers' ids go along"
        );
        assert_eq!(f.shard.torrents(), 1);
        assert_eq!(
            f.shard.peer_counts(),
            PeerCounts {
                seeders: 0,
                leechers: 1
            }
        );
        assert_eq!(f.shard.full_ids.0.len(), 1, "only the other torrent's id");
        assert_eq!(f.shard.take(&hash, SecondsSinceStart(4), &mut out), None);
    }

    #[test]
    fn a_handback_never_overrides_a_more_recent_announce_and_adds_completed() {
        // The owner that gets the swarm back: peer 1 announced here at 100
        // (a seeder now); peer 2 only at the other node.
        let mut owner = Fixture::new();
        let mut one = announce(1, V4, 0);
        one.completed = true;
        owner.run(100, &one);
        // The node that served meanwhile, same key (the cluster's).
        let mut served = Fixture::new();
        served.shard = BtShard::default().with_peer_id_key(owner.shard.peer_id_key());
        served.run(50, &announce(1, V4, 10));
        let mut two = announce(2, V4, 10);
        two.completed = true;
        served.run(60, &two);
        let hash = InfoHash([1; 20]);
        let mut entries = Vec::new();
        let completed = served
            .shard
            .take(&hash, SecondsSinceStart(100), &mut entries)
            .expect("held");
        // A full id is hashed again under the receiver's key: a wrong
        // hash on the wire does not make a second peer.
        for entry in &mut entries {
            entry.peer_id_hash ^= 1;
        }
        let merged =
            owner
                .shard
                .merge_handback(hash, completed, SecondsSinceStart(100), &mut entries);
        assert_eq!(merged, 1, "peer 2 only: peer 1's own announce is newer");
        assert_eq!(
            owner.shard.peer_counts(),
            PeerCounts {
                seeders: 2,
                leechers: 0
            },
            "peer 1 stays the seeder it said it was here (peer 2 completed)"
        );
        assert_eq!(owner.shard.scrape(&hash).completed, 2, "1 here + 1 there");
        // An older copy of peer 2 does not shorten its life.
        let mut stale = entries.clone();
        for entry in &mut stale {
            entry.valid_until = ValidUntil(SecondsSinceStart(101));
        }
        assert_eq!(
            owner
                .shard
                .merge_handback(hash, 0, SecondsSinceStart(100), &mut stale),
            0
        );
        // Peer 1 expires at 3700 (its own announce), peer 2 at 3660.
        assert_eq!(owner.shard.clean(SecondsSinceStart(3661)).peers_removed, 1);
        assert_eq!(owner.shard.peer_counts().seeders, 1);
    }
}
