//! The synchronous shard: the torrents one executor owns.
//!
//! Everything here is plain data and functions of `(now, rng, request)`:
//! no sockets, no `.await`, no channels. The glommio tasks in `net/` and
//! `server.rs` hand requests in and send the outcomes out. UDP and HTTP
//! announces land in the same [`BtShard`], so clients of either protocol
//! see each other's peers.

mod bt;
mod ws;

pub use bt::{BtAnnounce, BtAnnounceOutcome, BtPeerOut, BtShard, CleanReport, ScrapeStats};
pub use ws::{ConnectionRef, WsAnnounce, WsAnswer, WsOutgoing, WsShard};
