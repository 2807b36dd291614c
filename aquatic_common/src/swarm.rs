//! The peers of one torrent, and the choice of which of them to hand out.
//!
//! UDP and HTTP share `Swarm<BtPeer>`-style swarms keyed by IP family; the
//! WebTorrent shard keeps its own swarms of WebRTC peers. Both use this one
//! implementation of the tracker rules:
//!
//! - seeders and leechers live in separate maps, so counts are `len()` and a
//!   seeder can be handed leechers only;
//! - a response holds `min(wanted, candidates)` peers, where the requester is
//!   never a candidate, chosen from a random place in the swarm;
//! - expired peers are removed by [`Swarm::clean`], and maps whose length
//!   fell far below their capacity are shrunk so memory goes back.

use rand::Rng;

use crate::{peer_map::PeerMap, time::SecondsSinceStart, time::ValidUntil, PeerCounts, PeerId};

/// What a swarm needs to know about any kind of peer.
pub trait SwarmPeer: Clone {
    /// When the peer expires unless it announces again.
    fn valid_until(&self) -> ValidUntil;
}

/// Whether a peer is seeding or leeching after its announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerStatus {
    /// Has the whole torrent (`left == 0`, or the `completed` event).
    Seeding,
    /// Still downloading.
    Leeching,
    /// Left the swarm (`stopped` event).
    Stopped,
}

impl PeerStatus {
    /// Status from the announce event and the bytes the peer says it lacks.
    ///
    /// `bytes_left` is `None` when the client did not say (magnet links):
    /// such a peer is a leecher unless it reports `completed`.
    pub fn from_announce(stopped: bool, completed: bool, bytes_left: Option<u64>) -> Self {
        if stopped {
            Self::Stopped
        } else if completed || bytes_left == Some(0) {
            Self::Seeding
        } else {
            Self::Leeching
        }
    }
}

/// The seeders and leechers of one torrent (of one IP family or kind),
/// keyed by `K`: the peer id for WebRTC peers; peer id and address for
/// UDP and HTTP peers, so that nobody can move or stop another client's
/// entry by replaying its peer id from elsewhere.
#[derive(Debug)]
pub struct Swarm<P, K = PeerId> {
    seeders: PeerMap<K, P>,
    leechers: PeerMap<K, P>,
}

impl<P, K> Default for Swarm<P, K> {
    fn default() -> Self {
        Self {
            seeders: PeerMap::default(),
            leechers: PeerMap::default(),
        }
    }
}

/// Shrink a map once its capacity is this many times its length or more.
const SHRINK_RATIO: usize = 4;
/// Maps this small are never shrunk: the work is not worth the bytes.
const SHRINK_MIN_CAPACITY: usize = 64;

impl<P: SwarmPeer, K: std::hash::Hash + Eq + Clone> Swarm<P, K> {
    /// Number of seeders.
    pub fn seeders(&self) -> usize {
        self.seeders.len()
    }

    /// Number of leechers.
    pub fn leechers(&self) -> usize {
        self.leechers.len()
    }

    /// No peer left.
    pub fn is_empty(&self) -> bool {
        self.seeders.is_empty() && self.leechers.is_empty()
    }

    /// The peer with this key, if present.
    pub fn get(&self, peer_id: &K) -> Option<(&P, PeerStatus)> {
        if let Some(p) = self.seeders.get(peer_id) {
            Some((p, PeerStatus::Seeding))
        } else {
            self.leechers
                .get(peer_id)
                .map(|p| (p, PeerStatus::Leeching))
        }
    }

    /// Applies an announce: inserts, updates, moves (leecher to seeder) or,
    /// for [`PeerStatus::Stopped`], removes the peer.
    ///
    /// Returns the status the peer had before, if it was present.
    pub fn upsert(&mut self, peer_id: K, peer: P, status: PeerStatus) -> Option<PeerStatus> {
        let (same, other, other_status) = match status {
            PeerStatus::Seeding => (&mut self.seeders, &mut self.leechers, PeerStatus::Leeching),
            PeerStatus::Leeching => (&mut self.leechers, &mut self.seeders, PeerStatus::Seeding),
            PeerStatus::Stopped => {
                return if self.seeders.swap_remove(&peer_id).is_some() {
                    Some(PeerStatus::Seeding)
                } else if self.leechers.swap_remove(&peer_id).is_some() {
                    Some(PeerStatus::Leeching)
                } else {
                    None
                };
            }
        };
        // One lookup for the common case, a re-announce with the same
        // standing (updated in place); one more for a new or moving peer.
        if same.insert(peer_id.clone(), peer) {
            Some(status)
        } else if other.swap_remove(&peer_id).is_some() {
            Some(other_status)
        } else {
            None
        }
    }

    /// Removes a peer; returns it if it was present.
    pub fn remove(&mut self, peer_id: &K) -> Option<P> {
        self.seeders
            .swap_remove(peer_id)
            .or_else(|| self.leechers.swap_remove(peer_id))
    }

    /// Calls `emit` for up to `max` peers chosen for `requester`.
    ///
    /// The requester is never chosen. A seeder is given only leechers (none
    /// when there are none: seeders have nothing to gain from each other). When
    /// there are more candidates than `max`, the peers come from a random
    /// place in the swarm. Returns how many peers were emitted, which is
    /// exactly `min(max, candidates)`.
    pub fn select_peers<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        requester: &K,
        requester_is_seeder: bool,
        max: usize,
        mut emit: impl FnMut(&K, &P),
    ) -> usize {
        // Seeders have nothing to gain from each other: a seeder gets
        // leechers only, and an empty list when there are none.
        let (first, second): (&PeerMap<K, P>, Option<&PeerMap<K, P>>) = if requester_is_seeder {
            (&self.leechers, None)
        } else {
            (&self.seeders, Some(&self.leechers))
        };
        let pool = first.len() + second.map_or(0, |m| m.len());
        let requester_in_pool =
            first.contains_key(requester) || second.is_some_and(|m| m.contains_key(requester));
        let candidates = pool - usize::from(requester_in_pool);
        let wanted = max.min(candidates);
        if wanted == 0 {
            return 0;
        }
        let start = if wanted == candidates {
            0
        } else {
            rng.gen_range(0..pool)
        };
        let mut emitted = 0;
        for offset in 0..pool {
            let i = (start + offset) % pool;
            let entry = if i < first.len() {
                first.get_index(i)
            } else {
                second.and_then(|m| m.get_index(i - first.len()))
            };
            if let Some((id, peer)) = entry {
                if id != requester {
                    emit(id, peer);
                    emitted += 1;
                    if emitted == wanted {
                        break;
                    }
                }
            }
        }
        emitted
    }

    /// Every peer, seeders first (for relays that must reach all of them).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &P)> {
        self.seeders.iter().chain(self.leechers.iter())
    }

    /// Removes peers that expired before `now` and shrinks sparse maps.
    /// Returns how many seeders and leechers were removed.
    pub fn clean(&mut self, now: SecondsSinceStart) -> PeerCounts {
        let before = (self.seeders.len(), self.leechers.len());
        self.seeders.retain(|_, p| p.valid_until().valid_at(now));
        self.leechers.retain(|_, p| p.valid_until().valid_at(now));
        self.seeders.shrink_if_sparse();
        self.leechers.shrink_if_sparse();
        PeerCounts {
            seeders: before.0 - self.seeders.len(),
            leechers: before.1 - self.leechers.len(),
        }
    }

    /// Seeders and leechers, as counts.
    pub fn counts(&self) -> PeerCounts {
        PeerCounts {
            seeders: self.seeders.len(),
            leechers: self.leechers.len(),
        }
    }

    /// Slots allocated in both maps (for metrics and memory tests).
    pub fn capacity(&self) -> usize {
        self.seeders.capacity() + self.leechers.capacity()
    }
}

/// Whether a map of `capacity` slots holding `len` entries is worth
/// shrinking: the one rule for torrent maps and swarm sides alike.
pub fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity >= SHRINK_MIN_CAPACITY && capacity >= len * SHRINK_RATIO
}

/// Shrinks any hashbrown map whose length fell far below its capacity.
///
/// Shards call this on their torrent maps after cleaning, so that memory
/// taken at a traffic peak goes back to the allocator when traffic drops.
pub fn shrink_map_if_sparse<K, V, S>(map: &mut hashbrown::HashMap<K, V, S>)
where
    K: Eq + std::hash::Hash,
    S: std::hash::BuildHasher,
{
    if is_sparse(map.len(), map.capacity()) {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};
    use std::collections::HashSet;

    #[derive(Clone, Debug, PartialEq)]
    struct P(u32);
    impl SwarmPeer for P {
        fn valid_until(&self) -> ValidUntil {
            ValidUntil(SecondsSinceStart(self.0))
        }
    }

    fn id(n: u8) -> PeerId {
        PeerId([n; 20])
    }

    fn swarm(seeders: u8, leechers: u8) -> Swarm<P> {
        let mut s = Swarm::default();
        for i in 0..seeders {
            s.upsert(id(i), P(100), PeerStatus::Seeding);
        }
        for i in seeders..seeders + leechers {
            s.upsert(id(i), P(100), PeerStatus::Leeching);
        }
        s
    }

    fn select(s: &Swarm<P>, me: PeerId, seeder: bool, max: usize) -> Vec<PeerId> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut out = vec![];
        let n = s.select_peers(&mut rng, &me, seeder, max, |id, _| out.push(*id));
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn upsert_moves_and_stops() {
        let mut s = swarm(0, 1);
        assert_eq!((s.seeders(), s.leechers()), (0, 1));
        assert_eq!(
            s.upsert(id(0), P(1), PeerStatus::Seeding),
            Some(PeerStatus::Leeching)
        );
        assert_eq!((s.seeders(), s.leechers()), (1, 0));
        assert_eq!(
            s.upsert(id(0), P(1), PeerStatus::Stopped),
            Some(PeerStatus::Seeding)
        );
        assert!(s.is_empty());
        assert_eq!(s.upsert(id(0), P(1), PeerStatus::Stopped), None);
        assert!(s.is_empty());
    }

    #[test]
    fn never_returns_requester_and_counts_exactly() {
        let s = swarm(3, 4);
        for max in 0..10 {
            for me in 0..8u8 {
                let got = select(&s, id(me), me < 3, max);
                assert!(!got.contains(&id(me)));
                // Seeders (0..3) get the four leechers; the others all
                // peers but themselves.
                let candidates = match me {
                    0..3 => 4,
                    3..7 => 6,
                    _ => 7,
                };
                assert_eq!(got.len(), max.min(candidates), "max {max} me {me}");
                let unique: HashSet<_> = got.iter().collect();
                assert_eq!(unique.len(), got.len());
            }
        }
    }

    #[test]
    fn seeders_get_only_leechers_when_there_are_some() {
        let s = swarm(3, 2);
        let got = select(&s, id(0), true, 50);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|p| p.0[0] >= 3));
        // no leechers: a seeder gets nobody
        let s = swarm(3, 0);
        assert!(select(&s, id(0), true, 50).is_empty());
    }

    #[test]
    fn random_choice_varies() {
        let s = swarm(0, 100);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut firsts = HashSet::new();
        for _ in 0..20 {
            let mut first = None;
            s.select_peers(&mut rng, &id(200), false, 5, |id, _| {
                first.get_or_insert(*id);
            });
            firsts.insert(first);
        }
        assert!(firsts.len() > 5);
    }

    #[test]
    fn clean_removes_expired_and_shrinks() {
        let mut s: Swarm<P> = Swarm::default();
        for i in 0..200u8 {
            s.upsert(id(i), P(if i < 190 { 5 } else { 50 }), PeerStatus::Leeching);
        }
        let cap = s.capacity();
        assert_eq!(s.clean(SecondsSinceStart(10)).leechers, 190);
        assert_eq!(s.leechers(), 10);
        assert!(s.capacity() < cap);
        assert_eq!(s.clean(SecondsSinceStart(10)), PeerCounts::default());
    }

    proptest::proptest! {
        #[test]
        fn selection_invariants(seeders in 0u8..40, leechers in 0u8..40, me in 0u8..90,
                                seeder in proptest::bool::ANY, max in 0usize..100) {
            let s = swarm(seeders, leechers);
            let got = select(&s, id(me), seeder, max);
            proptest::prop_assert!(!got.contains(&id(me)));
            let unique: HashSet<_> = got.iter().collect();
            proptest::prop_assert_eq!(unique.len(), got.len());
            let me_seeder = me < seeders;
            let me_leecher = me >= seeders && me < seeders + leechers;
            let candidates = if seeder {
                leechers as usize - usize::from(me_leecher)
            } else {
                (seeders + leechers) as usize - usize::from(me_seeder || me_leecher)
            };
            proptest::prop_assert_eq!(got.len(), max.min(candidates));
        }
    }
}
