//! Why bytes are not a request or a response.

use crate::{ConnectionId, TransactionId};

/// Why a datagram is not a valid request.
///
/// Variants that carry a transaction id came from a datagram long enough to
/// be answered with a BEP 15 error; the others are dropped silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestParseError {
    /// Shorter than the 16 bytes every request starts with: no reply.
    #[error("datagram of {0} bytes is too short to be a request")]
    TooShort(usize),
    /// A connect request without the protocol magic number: no reply, as
    /// such a datagram is most likely not meant for a tracker.
    #[error("connect request with a wrong protocol id")]
    InvalidProtocolId,
    /// The action field is not connect, announce or scrape.
    #[error("unknown action {action}")]
    UnknownAction {
        /// The connection id field.
        connection_id: ConnectionId,
        /// The transaction id to answer with.
        transaction_id: TransactionId,
        /// The action found.
        action: i32,
    },
    /// An announce shorter than 98 bytes.
    #[error("announce request too short")]
    AnnounceTooShort {
        /// The connection id field.
        connection_id: ConnectionId,
        /// The transaction id to answer with.
        transaction_id: TransactionId,
    },
    /// A scrape with no info hash.
    #[error("scrape request without info hashes")]
    ScrapeEmpty {
        /// The connection id field.
        connection_id: ConnectionId,
        /// The transaction id to answer with.
        transaction_id: TransactionId,
    },
    /// A scrape whose hash bytes are not a multiple of 20.
    #[error("scrape request with a partial info hash")]
    ScrapePartialHash {
        /// The connection id field.
        connection_id: ConnectionId,
        /// The transaction id to answer with.
        transaction_id: TransactionId,
    },
    /// A scrape with more info hashes than allowed.
    #[error("scrape request with too many info hashes")]
    ScrapeTooManyHashes {
        /// The connection id field.
        connection_id: ConnectionId,
        /// The transaction id to answer with.
        transaction_id: TransactionId,
    },
}

impl RequestParseError {
    /// The transaction id to answer with, when the sender should get an error response.
    pub fn transaction_id(&self) -> Option<TransactionId> {
        match *self {
            Self::TooShort(_) | Self::InvalidProtocolId => None,
            Self::UnknownAction { transaction_id, .. }
            | Self::AnnounceTooShort { transaction_id, .. }
            | Self::ScrapeEmpty { transaction_id, .. }
            | Self::ScrapePartialHash { transaction_id, .. }
            | Self::ScrapeTooManyHashes { transaction_id, .. } => Some(transaction_id),
        }
    }

    /// The connection id field of the datagram, when it had one.
    pub fn connection_id(&self) -> Option<ConnectionId> {
        match *self {
            Self::TooShort(_) | Self::InvalidProtocolId => None,
            Self::UnknownAction { connection_id, .. }
            | Self::AnnounceTooShort { connection_id, .. }
            | Self::ScrapeEmpty { connection_id, .. }
            | Self::ScrapePartialHash { connection_id, .. }
            | Self::ScrapeTooManyHashes { connection_id, .. } => Some(connection_id),
        }
    }

    /// The short text for the BEP 15 error response.
    pub fn message(&self) -> &'static str {
        match self {
            Self::TooShort(_) => "request too short",
            Self::InvalidProtocolId => "invalid protocol id",
            Self::UnknownAction { .. } => "unknown action",
            Self::AnnounceTooShort { .. } => "announce too short",
            Self::ScrapeEmpty { .. } => "scrape without info hash",
            Self::ScrapePartialHash { .. } => "partial info hash",
            Self::ScrapeTooManyHashes { .. } => "too many info hashes",
        }
    }
}

/// Why a datagram is not a valid response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseParseError {
    /// Too short for its action.
    #[error("response too short")]
    TooShort,
    /// Not a known action.
    #[error("unknown response action {0}")]
    UnknownAction(i32),
    /// Trailing bytes that do not form a whole peer or torrent entry.
    #[error("response with a partial entry")]
    PartialEntry,
}
