//! Which executor owns a torrent.
//!
//! Every executor owns one shard of the torrent space; a request for a torrent
//! is answered by the executor whose shard holds its info hash.

use crate::InfoHash;

/// Index of a shard, equal to the index of the executor that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub usize);

/// The bytes of an info hash that choose its shard. Anything that chooses
/// among *nodes* of a cluster must use other bytes, so that the two choices
/// stay independent.
pub const SHARD_BYTES: std::ops::Range<usize> = 0..4;

/// The shard that owns `info_hash` among `shards` shards:
/// `u32(first 4 bytes, big endian) % shards`.
///
/// SHA-1 output is uniform, so no extra hashing is needed. The arithmetic is
/// 32-bit on purpose: a classic BPF program attached to a reuseport group
/// (`SO_ATTACH_REUSEPORT_CBPF`) can compute exactly this function from the
/// datagram, so the kernel and the executors agree on every torrent's owner.
///
/// # Panics
/// If `shards` is zero (the runtime always has at least one executor).
#[inline]
pub fn shard_of(info_hash: &InfoHash, shards: usize) -> ShardId {
    let [a, b, c, d, ..] = info_hash.0;
    let first = u32::from_be_bytes([a, b, c, d]);
    // `shards` is at most the executor count; more than u32::MAX shards
    // would be a bug elsewhere, and saturating keeps the result in range.
    let n = u32::try_from(shards).unwrap_or(u32::MAX);
    ShardId((first % n) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    #[test]
    fn routes_by_first_four_bytes() {
        let mut h = InfoHash([0; 20]);
        h.0[3] = 5;
        assert_eq!(shard_of(&h, 2), ShardId(1));
        assert_eq!(shard_of(&h, 5), ShardId(0));
        h.0[4] = 0xff; // later bytes do not matter
        h.0[19] = 0xff;
        assert_eq!(shard_of(&h, 2), ShardId(1));
        assert_eq!(shard_of(&h, 1), ShardId(0));
        h.0[0] = 1; // big endian: 0x01000005 % 3 == 0
        assert_eq!(shard_of(&h, 3), ShardId(0x0100_0005 % 3));
    }

    #[test]
    fn random_hashes_spread_evenly() {
        let mut rng = SmallRng::seed_from_u64(11);
        for shards in [2usize, 3, 7, 16] {
            let samples = 20_000 * shards;
            let mut counts = vec![0usize; shards];
            for _ in 0..samples {
                let mut h = InfoHash([0; 20]);
                rng.fill(&mut h.0[..]);
                counts[shard_of(&h, shards).0] += 1;
            }
            let expected = samples / shards;
            for (shard, &n) in counts.iter().enumerate() {
                // 20 000 expected per shard: a binomial's standard
                // deviation is ~141, so 5 % (1000) is over 7 sigma.
                assert!(
                    n.abs_diff(expected) < expected / 20,
                    "{shards} shards: shard {shard} got {n}, expected about {expected}"
                );
            }
        }
    }
}
