//! The tracker's rules and swarms: everything a request does to the
//! torrents, synchronous and deterministic.
//!
//! ```text
//!   wire request ──> rules.rs (Rules): access list, port, left, numwant,
//!                    scrape size, per-connection peer cap ──> Refusal?
//!                         │ validated BtAnnounce / WsAnnounce
//!                         v
//!   bt.rs  BtShard: UDP and HTTP peers of a torrent in one swarm per family
//!   ws.rs  WsShard: WebTorrent peers, offers and answers to relay
//!   private.rs  private mode: Catalog (who may announce), Ledger (what
//!               each announce credits), Batch (what the database gets)
//! ```
//!
//! Everything here is plain data and functions of `(now, rng, request)`:
//! no sockets, no `.await`, no channels, no glommio. The shard host above
//! feeds requests in; what comes out are protocol-neutral results
//! (`aquatic_common::{AnnounceOutcome, SelectedPeers, ScrapeStats}`) or the
//! WebTorrent protocol's own messages.

mod bt;
pub mod private;
mod refusal;
mod rules;
mod ws;

pub use bt::{
    BtAnnounce, BtPeerEntry, BtPeerRecord, BtShard, CleanCursor, CleanReport, PeerIdKey, PeerIdUse,
};
pub use refusal::Refusal;
pub use rules::{AnnounceInput, ConnectionPeers, Limits, PrivateCredentials, Rules};
pub use ws::{ConnectionRef, WsAnnounce, WsAnswer, WsShard, WsTiming};

/// Which swarms a scrape reads: BitTorrent (UDP and HTTP) or WebTorrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwarmKind {
    /// UDP and HTTP peers.
    Bt,
    /// WebSocket peers.
    Ws,
    /// The private tracker's (HTTP) peers.
    Private,
}
