//! Messages between executors.
//!
//! Executors share nothing: a request for a torrent another executor owns
//! travels to it as a [`ShardMessage`] over the glommio channel mesh, and
//! whatever must come back travels the same way. Sends never wait: a full
//! channel drops the message and counts it (the client retries, as UDP and
//! HTTP clients do), so two busy executors can never block each other.

use std::net::SocketAddr;

use aquatic_common::{InfoHash, ShardId};

use crate::swarm::{BtAnnounce, ScrapeStats};

/// Work and replies that cross executors.
#[derive(Debug)]
pub enum ShardMessage {
    /// A UDP announce for a torrent the receiver owns. The receiver answers
    /// the client itself, from its own socket on the same local address.
    UdpAnnounce {
        /// Where the answer goes.
        client: SocketAddr,
        /// The client's transaction id.
        transaction_id: i32,
        /// The announce.
        request: BtAnnounce,
    },
    /// The part of a scrape whose hashes the receiver owns.
    ScrapeRequest {
        /// Who asked (and waits for the [`ShardMessage::ScrapeResponse`]).
        origin: ShardId,
        /// The origin's name for the pending scrape.
        token: u64,
        /// Position in the original request, and the hash.
        hashes: Vec<(u16, InfoHash)>,
    },
    /// Figures for part of a scrape, back to its origin.
    ScrapeResponse {
        /// The origin's name for the pending scrape.
        token: u64,
        /// Position in the original request, and the figures.
        stats: Vec<(u16, ScrapeStats)>,
    },
}
