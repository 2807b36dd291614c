//! Messages between executors.
//!
//! Executors share nothing: a request for a torrent another executor owns
//! travels to it as a [`ShardMessage`] over the glommio channel mesh, and
//! whatever must come back travels the same way, named by the asker's
//! token. Sends never wait: a full channel drops the message and counts it
//! (the client retries, as UDP and HTTP clients do), so two busy executors
//! can never block each other.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use aquatic_common::{InfoHash, ShardId};

use crate::swarm::{
    BtAnnounce, BtAnnounceOutcome, BtPeerOut, ConnectionRef, ScrapeStats, WsAnnounce, WsOutgoing,
};

/// Which swarms a scrape reads: BitTorrent (UDP and HTTP) or WebTorrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwarmKind {
    /// UDP and HTTP peers.
    Bt,
    /// WebSocket peers.
    Ws,
}

/// Work and replies that cross executors.
#[derive(Debug)]
pub enum ShardMessage {
    /// A UDP announce for a torrent the receiver owns. The receiver answers
    /// the client itself, from its own socket on the same local address,
    /// which saves the way back.
    UdpAnnounce {
        /// Where the answer goes.
        client: SocketAddr,
        /// The client's transaction id.
        transaction_id: i32,
        /// The announce.
        request: BtAnnounce,
    },
    /// An announce whose answer goes back to `origin` (HTTP).
    Announce {
        /// Who asked.
        origin: ShardId,
        /// The asker's name for the reply.
        token: u64,
        /// The announce.
        request: BtAnnounce,
    },
    /// The part of a scrape whose hashes the receiver owns.
    Scrape {
        /// Who asked.
        origin: ShardId,
        /// The asker's name for the reply.
        token: u64,
        /// Which swarms.
        kind: SwarmKind,
        /// The hashes.
        hashes: Vec<InfoHash>,
    },
    /// A WebTorrent announce for a torrent the receiver owns; what it
    /// causes is sent straight to the connections concerned.
    WsAnnounce(WsAnnounce),
    /// A message for a WebSocket connection held by the receiver.
    WsDeliver {
        /// The connection.
        connection: ConnectionRef,
        /// What to send it.
        message: WsOutgoing,
    },
    /// A WebSocket connection closed: its peers leave these swarms.
    WsClosed {
        /// The connection that closed.
        connection: ConnectionRef,
        /// Each torrent it announced in, with the peer id it used.
        peers: Vec<(InfoHash, aquatic_common::PeerId)>,
    },
    /// The answer to an [`ShardMessage::Announce`] or [`ShardMessage::Scrape`].
    Reply {
        /// The asker's name for it.
        token: u64,
        /// The answer.
        reply: ShardReply,
    },
}

/// What a shard answers another executor.
#[derive(Debug)]
pub enum ShardReply {
    /// Counts and chosen peers of an announce.
    Announce {
        /// Seeders and leechers.
        outcome: BtAnnounceOutcome,
        /// IPv4 peers (for IPv4 requesters).
        peers_v4: Vec<BtPeerOut<Ipv4Addr>>,
        /// IPv6 peers (for IPv6 requesters).
        peers_v6: Vec<BtPeerOut<Ipv6Addr>>,
    },
    /// Figures in the order of the hashes asked for.
    Scrape(Vec<ScrapeStats>),
}
