//! Pieces every protocol of the tracker shares.
//!
//! ```text
//!  aquatic_{udp,http,ws}_protocol ──┐
//!                                   ├─> aquatic (executors, sockets, shards)
//!  aquatic_common ──────────────────┘
//!    ids          InfoHash, PeerId: the 20-byte wire identities
//!    shard        ShardId and shard_of(info_hash): which executor owns a torrent
//!                 (first 4 bytes, big endian, mod N: computable by a kernel BPF program)
//!    outcome      what a shard answers: selected peers, counts, scrape figures;
//!                 each protocol crate converts them into its wire types
//!    dense        DenseSwarm<R>: a BitTorrent swarm as one array of 16-byte records
//!    swarm        Swarm<P>: seeders and leechers of one torrent, random peer
//!                 selection, expiry and shrinking — written once for UDP, HTTP and WS
//!    time         a coarse, monotonic seconds-since-start clock and ValidUntil
//!    connection_id stateless BEP 15 connection ids (keyed hash of address and expiry)
//!    access_list  allow / deny lists of info hashes, parsed from a file
//!    ip_network   CIDR networks (trusted reverse proxies), parsed strictly
//!    tls          rustls server configuration from PEM files (HTTPS, WSS)
//! ```
//!
//! Nothing here does I/O on sockets or knows about the async runtime: the
//! types are synchronous and deterministic given a clock and an RNG, so they
//! are tested with a fake clock and a seeded RNG.
#![warn(missing_docs, unreachable_pub)]

pub mod access_list;
pub mod connection_id;
pub mod dense;
mod ids;
pub mod ip_network;
pub mod outcome;
mod peer_map;
pub mod shard;
pub mod swarm;
pub mod time;
pub mod tls;

pub use ids::{InfoHash, InvalidHex, PeerId};
pub use outcome::{AnnounceOutcome, PeerCounts, ScrapeStats, SelectedPeer, SelectedPeers};
pub use shard::{shard_of, ShardId};
