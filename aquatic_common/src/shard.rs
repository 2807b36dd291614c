//! Which executor owns a torrent.
//!
//! Every executor owns one shard of the torrent space; a request for a torrent
//! is answered by the executor whose shard holds its info hash.

use crate::InfoHash;

/// Index of a shard, equal to the index of the executor that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub usize);

/// The shard that owns `info_hash` among `shards` shards.
///
/// Uses the first eight bytes of the hash, which are uniformly distributed
/// for SHA-1 hashes, so no extra hashing is needed: `u64(first 8 bytes, big
/// endian) % shards`.
///
/// # Panics
/// If `shards` is zero (the runtime always has at least one executor).
#[inline]
pub fn shard_of(info_hash: &InfoHash, shards: usize) -> ShardId {
    let mut first = [0u8; 8];
    first.copy_from_slice(&info_hash.0[..8]);
    ShardId((u64::from_be_bytes(first) % shards as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_first_eight_bytes() {
        let mut h = InfoHash([0; 20]);
        h.0[7] = 5;
        assert_eq!(shard_of(&h, 2), ShardId(1));
        assert_eq!(shard_of(&h, 5), ShardId(0));
        h.0[19] = 0xff; // later bytes do not matter
        assert_eq!(shard_of(&h, 2), ShardId(1));
        assert_eq!(shard_of(&h, 1), ShardId(0));
    }
}
