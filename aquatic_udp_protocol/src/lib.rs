//! BEP 15, the UDP tracker protocol, without I/O.
//!
//! The runtime in `aquatic/` receives datagrams, calls [`Request::parse`] on
//! the bytes (no allocation: a scrape borrows its info hashes from the
//! datagram) and writes a [`Response`] into its own send buffer with
//! [`Response::write`]. Clients and tests go the other way with
//! [`Request::write`] and [`OwnedResponse::parse`].
//!
//! Parse errors say whether the sender gets an answer:
//! [`RequestParseError::transaction_id`] is `Some` only when the datagram
//! was long enough to carry one.
#![warn(missing_docs, unreachable_pub)]

mod common;
mod error;
mod request;
mod response;

pub use aquatic_common::{InfoHash, PeerId};
pub use common::{AnnounceEvent, ConnectionId, TransactionId, PROTOCOL_ID};
pub use error::{RequestParseError, ResponseParseError};
pub use request::{AnnounceRequest, ConnectRequest, InfoHashes, Request, ScrapeRequest};
pub use response::{
    AnnounceResponse, ConnectResponse, ErrorResponse, OwnedResponse, Response, ResponsePeer,
    ScrapeResponse, TorrentScrapeStatistics,
};
