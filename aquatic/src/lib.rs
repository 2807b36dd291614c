//! aquatic: one process serving every BitTorrent tracker protocol.
//!
//! ```text
//!   cli ──> config ──> server (composition root: sockets, executors, signals, panic policy)
//!                        │  one glommio executor per core
//!                        └─ executor i (wires the parts below, runs the timers)
//!                             └─ net/{udp,http,ws}   socket tasks: bytes <-> protocol types
//!                                  └─ router         the mesh: typed requests and replies,
//!                                     │              one deadline per request, outbox
//!                                     └─ host        ShardHost: synchronous
//!                                          │         handle(now, request) -> effects
//!                                          └─ swarm/ tracker rules, once: validation, access
//!                                                    list, peer selection, cleaning, counts
//! ```
//!
//! A request whose torrent lives on the executor that received it is
//! answered inline; otherwise the router sends it to the owner
//! (`shard_of(info_hash)`), which answers (UDP from its own socket, same
//! local address). Dependencies point one way, down the picture; a test
//! (`tests/module_graph.rs`) fails on any import cycle among these modules.
//! glommio appears only in `net/`, `router`, `executor`, `server`,
//! `timing` and the cluster's `link` and `queue`; `host` and `swarm/` are
//! plain synchronous code, and so is `snapshot` (the state directory: swarm
//! snapshot files, their restore, the persisted connection-id key), which
//! `server` calls at start and `executor` on its snapshot timer and at stop.
//!
//! In a cluster (`cluster/`), the router first asks which live member owns
//! the torrent (rendezvous hashing); a request owned by another node goes
//! over that member's link (run by executor 0) and its answer comes back
//! to the executor that asked, as an answer from another executor would.
//! The receiving node's router hands it to its own shards; the shard host
//! never knows a request came from another node.
#![warn(unreachable_pub)]

pub mod check;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod database;
pub mod executor;
#[cfg(feature = "test-hooks")]
pub mod hooks;
pub mod host;
#[cfg(any(test, feature = "fuzzing"))]
pub mod invariants;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod swarm;
pub mod timing;
