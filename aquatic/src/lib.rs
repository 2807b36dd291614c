//! aquatic: one process serving every BitTorrent tracker protocol.
//!
//! ```text
//!   cli ──> config ──> server (main thread: sockets, signals, panic policy)
//!                         │
//!          ┌──────────────┼──────────────┐   one glommio executor per core
//!     executor 0     executor 1  ...  executor N-1
//!     net/udp.rs     net/udp.rs        (own SO_REUSEPORT socket each)
//!     swarm shard 0  swarm shard 1     (torrents with shard_of(hash) == i)
//!          └──── routing: channel mesh, ShardMessage ────┘
//! ```
//!
//! A request whose torrent lives on the executor that received it is
//! answered inline; otherwise it travels to the owner, which answers (UDP
//! from its own socket, same local address). Dependencies point one way:
//! `net -> routing -> swarm -> protocol crates / aquatic_common`; glommio
//! appears only in `net/`, `executor.rs` and `server.rs`.
#![warn(unreachable_pub)]

pub mod cli;
pub mod config;
pub mod executor;
pub mod metrics;
mod net;
pub mod notify;
pub mod routing;
pub mod server;
pub mod swarm;
