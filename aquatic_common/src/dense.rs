//! Dense swarms: the peers of one torrent and address family as one flat
//! array of small fixed-size records, for swarms that hold millions of peers.
//!
//! [`Swarm`](crate::swarm::Swarm) keeps two maps of `(key, peer)` pairs;
//! that is right for WebTorrent peers (a few per connection) but costs
//! BitTorrent swarms tens of bytes of key and map per peer. Here:
//!
//! - a swarm is one `Vec<R>` of records, seeders first: `[seeders | leechers]`,
//!   so counts are a subtraction, a seeder's candidates (leechers only) are
//!   one slice, and nothing is stored per peer for its standing;
//! - a record carries its own identity ([`DenseRecord::same_peer`]), so
//!   there is no separate key; small swarms are searched linearly and
//!   swarms above [`INDEX_MIN`] peers get an index of `u32` positions
//!   (4 bytes and a control byte per slot) so a re-announce stays O(1);
//! - the vector grows by a quarter, not by doubling, so a big swarm carries
//!   at most a quarter of empty slots; cleaning shrinks it back;
//! - expiry is a [`Tick`]: a `u16` on a [`CoarseClock`] whose resolution is
//!   chosen from the peer timeout, so any valid configuration fits.
//!
//! Peer selection follows the same rules as `Swarm::select_peers` (the
//! requester is never chosen, a seeder gets leechers only, exactly
//! `min(max, candidates)` peers from a random place).

use std::hash::BuildHasher;
use std::time::Duration;

use hashbrown::HashTable;
use rand::Rng;

use crate::{swarm::PeerStatus, time::SecondsSinceStart, PeerCounts};

/// Swarms with more peers than this get a position index; below it a
/// linear scan over at most this many 16-byte records is as fast as a
/// hash lookup and costs nothing.
pub const INDEX_MIN: usize = 32;

/// A point in time on a [`CoarseClock`], wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tick(pub u16);

/// Seconds since start counted in units of `2^shift` seconds, kept in a
/// wrapping `u16`.
///
/// The resolution is the finest at which the peer timeout plus one
/// cleaning interval spans at most a quarter of the `u16` range (16 384
/// ticks): one second for timeouts up to about four and a half hours, 64 s
/// for the largest timeout the configuration allows (7 days). Expiry is
/// compared as a signed wrapping difference, which is exact as long as a
/// peer is at most 32 767 ticks from `now`: an announced peer is at most
/// 16 384 ticks ahead, and an expired one is removed by the next cleaning,
/// within 16 384 ticks after it expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoarseClock {
    shift: u8,
}

/// Ticks a peer timeout plus a cleaning interval may span.
const TICK_SPAN: u64 = 1 << 14;

impl CoarseClock {
    /// The finest clock for peers living `peer_timeout` and cleaned every
    /// `cleaning_interval`.
    pub fn for_timeouts(peer_timeout: Duration, cleaning_interval: Duration) -> Self {
        let span = peer_timeout
            .as_secs()
            .saturating_add(cleaning_interval.as_secs());
        let mut shift = 0u8;
        while shift < 31 && (span >> shift) >= TICK_SPAN {
            shift += 1;
        }
        Self { shift }
    }

    /// Seconds per tick.
    pub fn resolution_secs(&self) -> u32 {
        1 << self.shift
    }

    /// The tick `now` falls in.
    pub fn now(&self, now: SecondsSinceStart) -> Tick {
        Tick((now.0 >> self.shift) as u16)
    }

    /// The expiry of a peer that announced at `now` and lives `ttl`,
    /// rounded up (a peer never expires early) and capped at the span the
    /// clock was made for.
    pub fn expiry(&self, now: SecondsSinceStart, ttl: Duration) -> Tick {
        let unit = u64::from(self.resolution_secs());
        let until = u64::from(now.0) + ttl.as_secs().min((TICK_SPAN - 1) * unit);
        Tick(until.div_ceil(unit) as u16)
    }

    /// Whether a peer expiring at `expiry` is still valid in `now`.
    pub fn valid_at(&self, expiry: Tick, now: Tick) -> bool {
        expiry.0.wrapping_sub(now.0) as i16 >= 0
    }

    /// `expiry` as seconds since start, read near `now` (for records
    /// taken out of a swarm: snapshots, tests).
    pub fn seconds(&self, expiry: Tick, now: SecondsSinceStart) -> SecondsSinceStart {
        let ahead = i64::from(expiry.0.wrapping_sub(self.now(now).0) as i16);
        let base = i64::from(now.0 >> self.shift);
        let ticks = (base + ahead).max(0);
        SecondsSinceStart(u32::try_from(ticks << self.shift).unwrap_or(u32::MAX))
    }
}

impl Default for CoarseClock {
    /// One-second ticks: right for timeouts up to about four and a half hours.
    fn default() -> Self {
        Self { shift: 0 }
    }
}

/// A peer record a [`DenseSwarm`] can hold.
pub trait DenseRecord: Copy {
    /// Whether `other` is the same peer (the identity fields are equal).
    fn same_peer(&self, other: &Self) -> bool;
    /// A hash of the identity fields, under the shard's random state.
    fn identity_hash<S: BuildHasher>(&self, state: &S) -> u64;
    /// When the peer expires.
    fn expiry(&self) -> Tick;
}

/// The seeders and leechers of one swarm, as one array of records.
#[derive(Debug)]
pub struct DenseSwarm<R> {
    /// `[seeders | leechers]`.
    peers: Vec<R>,
    /// How many of `peers`, from the start, are seeders.
    seeders: u32,
    /// Positions in `peers` by identity, only above [`INDEX_MIN`] peers.
    index: Option<Box<HashTable<u32>>>,
}

impl<R> Default for DenseSwarm<R> {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            seeders: 0,
            index: None,
        }
    }
}

/// What [`DenseSwarm::upsert`] did.
#[derive(Clone, Copy, Debug)]
pub struct Upserted<R> {
    /// The peer's standing and record before, if it was present.
    pub previous: Option<(PeerStatus, R)>,
    /// Where the peer is now (None: stopped).
    pub position: Option<usize>,
}

impl<R: DenseRecord> DenseSwarm<R> {
    /// Seeders and leechers.
    pub fn counts(&self) -> PeerCounts {
        PeerCounts {
            seeders: self.seeders as usize,
            leechers: self.peers.len() - self.seeders as usize,
        }
    }

    /// No peer left.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peers held.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Record slots allocated (for metrics and memory tests).
    pub fn capacity(&self) -> usize {
        self.peers.capacity()
    }

    /// Every peer with its standing, seeders first.
    pub fn iter(&self) -> impl Iterator<Item = (&R, PeerStatus)> {
        let seeders = self.seeders as usize;
        self.peers.iter().enumerate().map(move |(i, r)| {
            let status = if i < seeders {
                PeerStatus::Seeding
            } else {
                PeerStatus::Leeching
            };
            (r, status)
        })
    }

    /// The peer matching `probe`, with its standing.
    pub fn get<S: BuildHasher>(&self, probe: &R, state: &S) -> Option<(&R, PeerStatus)> {
        let i = self.find(probe, state)?;
        Some((&self.peers[i], self.status_at(i)))
    }

    fn status_at(&self, i: usize) -> PeerStatus {
        if i < self.seeders as usize {
            PeerStatus::Seeding
        } else {
            PeerStatus::Leeching
        }
    }

    fn find<S: BuildHasher>(&self, probe: &R, state: &S) -> Option<usize> {
        match &self.index {
            Some(index) => index
                .find(probe.identity_hash(state), |&i| {
                    self.peers[i as usize].same_peer(probe)
                })
                .map(|&i| i as usize),
            None => self.peers.iter().position(|r| r.same_peer(probe)),
        }
    }

    /// Points the index entry whose record hashes to `hash` and which
    /// holds position `from` at `to`.
    fn reposition(&mut self, hash: u64, from: u32, to: u32) {
        if let Some(index) = &mut self.index {
            if let Some(slot) = index.find_mut(hash, |&j| j == from) {
                *slot = to;
            }
        }
    }

    /// Swaps the records at `a` and `b`, keeping the index right.
    fn swap<S: BuildHasher>(&mut self, a: usize, b: usize, state: &S) {
        if a == b {
            return;
        }
        if self.index.is_some() {
            // Each step looks an entry up by its record's hash and a
            // position no other entry holds at that moment (through
            // u32::MAX, which no record has): with two entries holding
            // the same position, a lookup could find the other one when
            // their hash tags collide, and the index would lose a record.
            let hash_a = self.peers[a].identity_hash(state);
            let hash_b = self.peers[b].identity_hash(state);
            self.reposition(hash_a, a as u32, u32::MAX);
            self.reposition(hash_b, b as u32, a as u32);
            self.reposition(hash_a, u32::MAX, b as u32);
        }
        self.peers.swap(a, b);
    }

    /// Appends a record, growing by a quarter (at least one slot).
    fn push<S: BuildHasher>(&mut self, record: R, state: &S) -> usize {
        if self.peers.len() == self.peers.capacity() {
            self.peers.reserve_exact((self.peers.len() / 4).max(1));
        }
        let position = self.peers.len();
        self.peers.push(record);
        match &mut self.index {
            Some(index) => {
                let peers = &self.peers;
                index.insert_unique(record.identity_hash(state), position as u32, |&i| {
                    peers[i as usize].identity_hash(state)
                });
            }
            None if self.peers.len() > INDEX_MIN => self.rebuild_index(state),
            None => {}
        }
        position
    }

    /// Removes the record at `i`, keeping `[seeders | leechers]`.
    fn remove_at<S: BuildHasher>(&mut self, mut i: usize, state: &S) -> R {
        if i < self.seeders as usize {
            // Move it to the last seeder's place, then make that slot the
            // first leecher's.
            let last_seeder = self.seeders as usize - 1;
            self.swap(i, last_seeder, state);
            self.seeders -= 1;
            i = last_seeder;
        }
        let last = self.peers.len() - 1;
        self.swap(i, last, state);
        if let Some(index) = &mut self.index {
            let hash = self.peers[last].identity_hash(state);
            if let Ok(entry) = index.find_entry(hash, |&j| j == last as u32) {
                entry.remove();
            }
        }
        let removed = self.peers.pop();
        // `i <= last` holds a record, so the pop cannot fail.
        removed.unwrap_or_else(|| unreachable!("remove_at past the end"))
    }

    /// Applies an announce: inserts, updates, moves (seeder to leecher or
    /// back) or, for [`PeerStatus::Stopped`], removes the peer matching
    /// `record`.
    pub fn upsert<S: BuildHasher>(
        &mut self,
        record: R,
        status: PeerStatus,
        state: &S,
    ) -> Upserted<R> {
        let found = self.find(&record, state);
        let previous = found.map(|i| (self.status_at(i), self.peers[i]));
        let position = match (found, status) {
            (None, PeerStatus::Stopped) => None,
            (Some(i), PeerStatus::Stopped) => {
                self.remove_at(i, state);
                None
            }
            (Some(i), _) if self.status_at(i) == status => {
                self.peers[i] = record;
                Some(i)
            }
            (Some(i), PeerStatus::Leeching) => {
                // A seeder becomes the first leecher.
                let last_seeder = self.seeders as usize - 1;
                self.swap(i, last_seeder, state);
                self.seeders -= 1;
                self.peers[last_seeder] = record;
                Some(last_seeder)
            }
            (Some(i), _) => {
                // A leecher becomes the last seeder.
                let first_leecher = self.seeders as usize;
                self.swap(i, first_leecher, state);
                self.seeders += 1;
                self.peers[first_leecher] = record;
                Some(first_leecher)
            }
            (None, PeerStatus::Leeching) => Some(self.push(record, state)),
            (None, PeerStatus::Seeding) => {
                let at = self.push(record, state);
                let first_leecher = self.seeders as usize;
                self.swap(at, first_leecher, state);
                self.seeders += 1;
                Some(first_leecher)
            }
        };
        Upserted { previous, position }
    }

    /// Removes the peer matching `probe`; returns it if it was present.
    pub fn remove<S: BuildHasher>(&mut self, probe: &R, state: &S) -> Option<(PeerStatus, R)> {
        let i = self.find(probe, state)?;
        let status = self.status_at(i);
        Some((status, self.remove_at(i, state)))
    }

    /// Calls `emit` for up to `max` peers chosen for the requester at
    /// `requester` (its position after [`upsert`](Self::upsert); None when
    /// it is not in this swarm).
    ///
    /// The requester is never chosen; a seeder gets leechers only (none
    /// when there are none). When there are more candidates than `max`, the
    /// peers come from a random place. Returns how many were emitted:
    /// exactly `min(max, candidates)`.
    pub fn select_peers<Rn: Rng + ?Sized>(
        &self,
        rng: &mut Rn,
        requester: Option<usize>,
        requester_is_seeder: bool,
        max: usize,
        mut emit: impl FnMut(&R),
    ) -> usize {
        let pool_start = if requester_is_seeder {
            self.seeders as usize
        } else {
            0
        };
        let pool = &self.peers[pool_start..];
        let skip = requester
            .filter(|&p| p >= pool_start)
            .map(|p| p - pool_start);
        let candidates = pool.len() - usize::from(skip.is_some());
        let wanted = max.min(candidates);
        if wanted == 0 {
            return 0;
        }
        let start = if wanted == candidates {
            0
        } else {
            rng.gen_range(0..pool.len())
        };
        let mut emitted = 0;
        let (tail, head) = pool.split_at(start);
        for (i, record) in (start..).zip(head).chain((0..).zip(tail)) {
            if Some(i) != skip {
                emit(record);
                emitted += 1;
                if emitted == wanted {
                    break;
                }
            }
        }
        emitted
    }

    /// Removes peers that are no longer valid at `now` (calling `removed`
    /// for each) and gives back memory the swarm no longer needs. Returns
    /// how many seeders and leechers went.
    pub fn clean<S: BuildHasher>(
        &mut self,
        clock: &CoarseClock,
        now: Tick,
        state: &S,
        mut removed: impl FnMut(&R),
    ) -> PeerCounts {
        let before = self.counts();
        let seeders = self.seeders as usize;
        let mut position = 0;
        let mut kept_seeders = 0u32;
        self.peers.retain(|r| {
            let keep = clock.valid_at(r.expiry(), now);
            if keep && position < seeders {
                kept_seeders += 1;
            }
            if !keep {
                removed(r);
            }
            position += 1;
            keep
        });
        self.seeders = kept_seeders;
        let after = self.counts();
        let gone = PeerCounts {
            seeders: before.seeders - after.seeders,
            leechers: before.leechers - after.leechers,
        };
        let sparse = self.peers.capacity() > 4 && self.peers.capacity() >= self.peers.len() * 2;
        if sparse {
            self.peers.shrink_to_fit();
        }
        if gone != PeerCounts::default() || sparse {
            if self.peers.len() > INDEX_MIN {
                self.rebuild_index(state);
            } else {
                self.index = None;
            }
        }
        gone
    }

    fn rebuild_index<S: BuildHasher>(&mut self, state: &S) {
        let mut index = HashTable::with_capacity(self.peers.len() + self.peers.len() / 4);
        for (i, record) in self.peers.iter().enumerate() {
            let peers = &self.peers;
            index.insert_unique(record.identity_hash(state), i as u32, |&j| {
                peers[j as usize].identity_hash(state)
            });
        }
        self.index = Some(Box::new(index));
    }

    /// Heap bytes this swarm holds (records and index), for the memory
    /// figures in tests and the README.
    pub fn heap_bytes(&self) -> usize {
        self.peers.capacity() * std::mem::size_of::<R>()
            + self.index.as_ref().map_or(0, |index| {
                std::mem::size_of::<HashTable<u32>>() + index.capacity() * (4 + 1)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};
    use std::collections::HashSet;

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Rec {
        id: u32,
        expiry: Tick,
    }

    impl DenseRecord for Rec {
        fn same_peer(&self, other: &Self) -> bool {
            self.id == other.id
        }
        fn identity_hash<S: BuildHasher>(&self, state: &S) -> u64 {
            state.hash_one(self.id)
        }
        fn expiry(&self) -> Tick {
            self.expiry
        }
    }

    fn rec(id: u32) -> Rec {
        Rec {
            id,
            expiry: Tick(100),
        }
    }

    type State = hashbrown::DefaultHashBuilder;

    /// Checks `[seeders | leechers]` against a model and the index against
    /// the positions.
    fn check<S: BuildHasher>(
        s: &DenseSwarm<Rec>,
        model: &std::collections::HashMap<u32, PeerStatus>,
        state: &S,
    ) {
        assert_eq!(s.len(), model.len());
        for (r, status) in s.iter() {
            assert_eq!(model.get(&r.id), Some(&status), "{r:?}");
            assert_eq!(s.get(r, state).map(|(_, st)| st), Some(status));
        }
        if let Some(index) = &s.index {
            assert_eq!(index.len(), s.len());
            let mut positions: Vec<u32> = index.iter().copied().collect();
            positions.sort_unstable();
            assert_eq!(positions, (0..s.len() as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn coarse_clock_never_expires_early_and_fits_every_timeout() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            CoarseClock::for_timeouts(Duration::from_secs(3600), Duration::from_secs(60))
                .resolution_secs(),
            1
        );
        let week = CoarseClock::for_timeouts(7 * day, day);
        assert_eq!(week.resolution_secs(), 64);
        for clock in [
            CoarseClock::default(),
            week,
            CoarseClock::for_timeouts(Duration::from_secs(20_000), Duration::ZERO),
        ] {
            for now in [
                0u32,
                1,
                63,
                64,
                65,
                1_000_000,
                4_194_303,
                4_194_304,
                u32::MAX - 700_000,
            ] {
                for ttl in [1u64, 10, 63, 64, 65, 3600, 7 * 86_400] {
                    let ttl = Duration::from_secs(ttl).min(Duration::from_secs(
                        u64::from(clock.resolution_secs()) * (TICK_SPAN - 1),
                    ));
                    let expiry = clock.expiry(SecondsSinceStart(now), ttl);
                    let until = now as u64 + ttl.as_secs();
                    // Valid at every second up to now + ttl.
                    for t in [now as u64, until.saturating_sub(1), until] {
                        let t = SecondsSinceStart(t as u32);
                        assert!(
                            clock.valid_at(expiry, clock.now(t)),
                            "{clock:?} now {now} ttl {ttl:?} t {t:?}"
                        );
                    }
                    // And gone within one tick and a second after it.
                    let late =
                        SecondsSinceStart((until + 2 * u64::from(clock.resolution_secs())) as u32);
                    assert!(
                        !clock.valid_at(expiry, clock.now(late)),
                        "{clock:?} now {now} ttl {ttl:?}"
                    );
                    assert!(clock.seconds(expiry, SecondsSinceStart(now)).0 as u64 >= until);
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn upserts_and_removes_keep_partition_and_index(ops in proptest::collection::vec((0u32..80, 0u8..3), 0..400)) {
            let state = State::default();
            let mut s = DenseSwarm::default();
            let mut model = std::collections::HashMap::new();
            for (id, op) in ops {
                let status = [PeerStatus::Seeding, PeerStatus::Leeching, PeerStatus::Stopped][op as usize];
                let up = s.upsert(rec(id), status, &state);
                proptest::prop_assert_eq!(up.previous.map(|p| p.0), model.get(&id).copied());
                if status == PeerStatus::Stopped {
                    model.remove(&id);
                    proptest::prop_assert!(up.position.is_none());
                } else {
                    model.insert(id, status);
                    let at = up.position.expect("present");
                    proptest::prop_assert_eq!(s.peers[at].id, id);
                }
                check(&s, &model, &state);
            }
        }

        #[test]
        fn selection_invariants(seeders in 0u32..60, leechers in 0u32..60, me in 0u32..130,
                                seeder in proptest::bool::ANY, max in 0usize..100) {
            let state = State::default();
            let mut s = DenseSwarm::default();
            for i in 0..seeders { s.upsert(rec(i), PeerStatus::Seeding, &state); }
            for i in seeders..seeders + leechers { s.upsert(rec(i), PeerStatus::Leeching, &state); }
            let position = s.find(&rec(me), &state);
            let mut rng = SmallRng::seed_from_u64(7);
            let mut got = vec![];
            let n = s.select_peers(&mut rng, position, seeder, max, |r| got.push(r.id));
            proptest::prop_assert_eq!(n, got.len());
            proptest::prop_assert!(!got.contains(&me));
            let unique: HashSet<_> = got.iter().collect();
            proptest::prop_assert_eq!(unique.len(), got.len());
            let me_seeder = me < seeders;
            let me_leecher = me >= seeders && me < seeders + leechers;
            if seeder {
                proptest::prop_assert!(got.iter().all(|&id| id >= seeders));
            }
            let candidates = if seeder {
                leechers as usize - usize::from(me_leecher)
            } else {
                (seeders + leechers) as usize - usize::from(me_seeder || me_leecher)
            };
            proptest::prop_assert_eq!(got.len(), max.min(candidates));
        }
    }

    #[test]
    fn random_choice_varies() {
        let state = State::default();
        let mut s = DenseSwarm::default();
        for i in 0..100 {
            s.upsert(rec(i), PeerStatus::Leeching, &state);
        }
        let mut rng = SmallRng::seed_from_u64(1);
        let mut firsts = HashSet::new();
        for _ in 0..20 {
            let mut first = None;
            s.select_peers(&mut rng, None, false, 5, |r| {
                first.get_or_insert(r.id);
            });
            firsts.insert(first);
        }
        assert!(firsts.len() > 5);
    }

    #[test]
    fn clean_expires_keeps_partition_and_shrinks() {
        let state = State::default();
        let clock = CoarseClock::default();
        let mut s = DenseSwarm::default();
        let mut model = std::collections::HashMap::new();
        for i in 0..200u32 {
            let status = if i % 3 == 0 {
                PeerStatus::Seeding
            } else {
                PeerStatus::Leeching
            };
            let r = Rec {
                id: i,
                expiry: Tick(if i < 190 { 5 } else { 50 }),
            };
            s.upsert(r, status, &state);
            if i >= 190 {
                model.insert(i, status);
            }
        }
        let cap = s.capacity();
        assert!(s.index.is_some());
        let mut removed = 0;
        let gone = s.clean(&clock, Tick(10), &state, |_| removed += 1);
        assert_eq!(gone.seeders + gone.leechers, 190);
        assert_eq!(removed, 190);
        check(&s, &model, &state);
        assert!(s.capacity() < cap);
        assert!(s.index.is_none());
        assert_eq!(
            s.clean(&clock, Tick(10), &state, |_| ()),
            PeerCounts::default()
        );
    }
}
