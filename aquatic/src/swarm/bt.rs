//! BitTorrent (UDP and HTTP) swarms of one shard.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aquatic_common::{
    swarm::{shrink_map_if_sparse, PeerStatus, Swarm, SwarmPeer},
    time::{SecondsSinceStart, ValidUntil},
    AnnounceOutcome, InfoHash, PeerCounts, PeerId, ScrapeStats, SelectedPeer, SelectedPeers,
};
use hashbrown::HashMap;
use rand::Rng;

/// A peer as the swarm stores it: where to reach it and until when.
#[derive(Clone, Copy, Debug)]
struct BtPeer<A> {
    ip: A,
    port: u16,
    valid_until: ValidUntil,
}

impl<A: Copy> SwarmPeer for BtPeer<A> {
    fn valid_until(&self) -> ValidUntil {
        self.valid_until
    }
}

/// Who a UDP or HTTP peer is: its id *and* its address. A stopped event or
/// a re-announce only touches the entry of the same address, so a peer id
/// seen in a response cannot be used from elsewhere to evict or redirect
/// that peer; clients that share an id (load testers send all zeros) stay
/// apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BtPeerKey<A> {
    peer_id: PeerId,
    ip: A,
    port: u16,
}

type V6Swarm = Swarm<BtPeer<Ipv6Addr>, BtPeerKey<Ipv6Addr>>;

#[derive(Default)]
struct Torrent {
    v4: Swarm<BtPeer<Ipv4Addr>, BtPeerKey<Ipv4Addr>>,
    /// Boxed and made on demand: most torrents never see an IPv6 peer, and
    /// an empty swarm inline would nearly double every torrent's size.
    v6: Option<Box<V6Swarm>>,
    /// `completed` events seen: the scrape's "downloaded".
    completed: u32,
}

impl Torrent {
    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.as_ref().is_none_or(|s| s.is_empty())
    }

    fn counts(&self) -> PeerCounts {
        let mut counts = self.v4.counts();
        if let Some(v6) = &self.v6 {
            counts += v6.counts();
        }
        counts
    }

    fn v6_mut(&mut self) -> &mut V6Swarm {
        self.v6.get_or_insert_with(Box::default)
    }

    fn clean(&mut self, now: SecondsSinceStart) -> PeerCounts {
        let mut removed = self.v4.clean(now);
        if let Some(v6) = &mut self.v6 {
            removed += v6.clean(now);
            if v6.is_empty() {
                self.v6 = None;
            }
        }
        removed
    }
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
}

/// What one cleaning pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Expired peers removed.
    pub peers_removed: usize,
    /// Empty torrents removed.
    pub torrents_removed: usize,
}

/// The torrents whose info hash maps to this shard.
#[derive(Default)]
pub struct BtShard {
    torrents: HashMap<InfoHash, Torrent>,
    /// Seeders and leechers over all torrents, kept as peers change.
    counts: PeerCounts,
}

impl BtShard {
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
        if status == PeerStatus::Stopped && !self.torrents.contains_key(&request.info_hash) {
            // Never create a torrent just to record that a peer left it.
            return AnnounceOutcome::default();
        }
        let torrent = self.torrents.entry(request.info_hash).or_default();
        let valid_until = ValidUntil::after(now, peer_timeout);
        // One generic arm for both families: the IPv4 and IPv6 swarms
        // differ only in their address type.
        let previous = match request.ip {
            IpAddr::V4(ip) => announce_in(
                &mut torrent.v4,
                rng,
                request,
                status,
                ip,
                valid_until,
                &mut out.v4,
            ),
            IpAddr::V6(ip) => announce_in(
                torrent.v6_mut(),
                rng,
                request,
                status,
                ip,
                valid_until,
                &mut out.v6,
            ),
        };
        self.counts.change(previous, Some(status));
        if request.completed && previous != Some(PeerStatus::Seeding) {
            torrent.completed = torrent.completed.saturating_add(1);
        }
        let counts = torrent.counts();
        if torrent.is_empty() {
            self.torrents.remove(&request.info_hash);
        }
        AnnounceOutcome {
            seeders: counts.seeders,
            leechers: counts.leechers,
        }
    }

    /// Scrape figures for one torrent (zeros when unknown).
    pub fn scrape(&self, info_hash: &InfoHash) -> ScrapeStats {
        self.torrents
            .get(info_hash)
            .map_or_else(ScrapeStats::default, |t| {
                let counts = t.counts();
                ScrapeStats {
                    seeders: counts.seeders,
                    leechers: counts.leechers,
                    completed: t.completed,
                }
            })
    }

    /// Removes peers expired at `now` and torrents left empty, then shrinks
    /// maps that became sparse so the memory goes back.
    pub fn clean(&mut self, now: SecondsSinceStart) -> CleanReport {
        let mut report = CleanReport::default();
        let before = self.torrents.len();
        let mut removed = PeerCounts::default();
        self.torrents.retain(|_, t| {
            removed += t.clean(now);
            !t.is_empty()
        });
        self.counts.remove(removed);
        report.peers_removed = removed.seeders + removed.leechers;
        report.torrents_removed = before - self.torrents.len();
        shrink_map_if_sparse(&mut self.torrents);
        report
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
}

/// One UDP or HTTP peer as code outside the swarms sees it (snapshots):
/// what the peer is, not how the shard stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtPeerEntry {
    /// Its id.
    pub peer_id: PeerId,
    /// Its address.
    pub ip: IpAddr,
    /// The port it listens on.
    pub port: u16,
    /// Seeding (else leeching).
    pub seeder: bool,
    /// When it expires unless it announces again.
    pub valid_until: ValidUntil,
}

/// Reading and refilling a shard as [`BtPeerEntry`]s, for snapshots.
impl BtShard {
    /// Every torrent's info hash, in no particular order.
    pub fn info_hashes(&self) -> Vec<InfoHash> {
        self.torrents.keys().copied().collect()
    }

    /// Appends the peers of `info_hash` to `out` and returns its
    /// `completed` count; `None` for a torrent not held.
    pub fn torrent_entries(&self, info_hash: &InfoHash, out: &mut Vec<BtPeerEntry>) -> Option<u32> {
        let torrent = self.torrents.get(info_hash)?;
        fn push<A: Copy + Eq + std::hash::Hash + Into<IpAddr>>(
            swarm: &Swarm<BtPeer<A>, BtPeerKey<A>>,
            out: &mut Vec<BtPeerEntry>,
        ) {
            // Swarm::iter yields the seeders first.
            let seeders = swarm.seeders();
            out.extend(
                swarm
                    .iter()
                    .enumerate()
                    .map(|(i, (key, peer))| BtPeerEntry {
                        peer_id: key.peer_id,
                        ip: peer.ip.into(),
                        port: peer.port,
                        seeder: i < seeders,
                        valid_until: peer.valid_until,
                    }),
            );
        }
        push(&torrent.v4, out);
        if let Some(v6) = &torrent.v6 {
            push(v6, out);
        }
        Some(torrent.completed)
    }

    /// Puts restored peers into `info_hash`'s swarms, keeping the counts. A
    /// peer already there keeps whichever entry expires later; `completed`
    /// becomes the larger of the two counts. Nothing is made for no peers.
    pub fn restore(&mut self, info_hash: InfoHash, completed: u32, peers: &[BtPeerEntry]) {
        if peers.is_empty() {
            return;
        }
        let torrent = self.torrents.entry(info_hash).or_default();
        torrent.completed = torrent.completed.max(completed);
        for entry in peers {
            let status = if entry.seeder {
                PeerStatus::Seeding
            } else {
                PeerStatus::Leeching
            };
            let previous = match entry.ip {
                IpAddr::V4(ip) => restore_in(&mut torrent.v4, entry, ip, status),
                IpAddr::V6(ip) => restore_in(torrent.v6_mut(), entry, ip, status),
            };
            if let Some(previous) = previous {
                self.counts.change(previous, Some(status));
            }
        }
    }
}

/// Inserts one restored peer unless the swarm holds it with a later
/// expiry; returns the change to count (`Some(previous status)`).
fn restore_in<A: Copy + Eq + std::hash::Hash>(
    swarm: &mut Swarm<BtPeer<A>, BtPeerKey<A>>,
    entry: &BtPeerEntry,
    ip: A,
    status: PeerStatus,
) -> Option<Option<PeerStatus>> {
    let key = BtPeerKey {
        peer_id: entry.peer_id,
        ip,
        port: entry.port,
    };
    if swarm
        .get(&key)
        .is_some_and(|(held, _)| held.valid_until >= entry.valid_until)
    {
        return None;
    }
    let peer = BtPeer {
        ip,
        port: entry.port,
        valid_until: entry.valid_until,
    };
    Some(swarm.upsert(key, peer, status))
}

fn announce_in<A: Copy + Eq + std::hash::Hash, R: Rng + ?Sized>(
    swarm: &mut Swarm<BtPeer<A>, BtPeerKey<A>>,
    rng: &mut R,
    request: &BtAnnounce,
    status: PeerStatus,
    ip: A,
    valid_until: ValidUntil,
    out: &mut Vec<SelectedPeer<A>>,
) -> Option<PeerStatus> {
    let peer = BtPeer {
        ip,
        port: request.port,
        valid_until,
    };
    let key = BtPeerKey {
        peer_id: request.peer_id,
        ip,
        port: request.port,
    };
    let previous = swarm.upsert(key, peer, status);
    if status != PeerStatus::Stopped {
        swarm.select_peers(
            rng,
            &key,
            status == PeerStatus::Seeding,
            request.numwant,
            |key, p| {
                out.push(SelectedPeer {
                    peer_id: key.peer_id,
                    ip_address: p.ip,
                    port: p.port,
                })
            },
        );
    }
    previous
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
        assert_eq!(f.out.v4[0].peer_id, PeerId([1; 20]));
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
        assert_eq!(f.shard.torrent_entries(&hash, &mut entries), Some(1));
        assert_eq!(entries.len(), 3);
        assert_eq!(f.shard.info_hashes(), vec![hash]);
        let mut copy = BtShard::default();
        copy.restore(hash, 1, &entries);
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
        copy.restore(hash, 0, &older);
        assert_eq!(copy.peer_counts(), f.shard.peer_counts());
        let mut again = Vec::new();
        copy.torrent_entries(&hash, &mut again);
        again.sort_by_key(|e| e.peer_id);
        entries.sort_by_key(|e| e.peer_id);
        assert_eq!(again, entries);
        // Expiry still applies to restored peers.
        assert_eq!(copy.clean(SecondsSinceStart(3604)).peers_removed, 2);
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
}
