//! The two kinds of parse error: per request (reply, keep the connection) and
//! per connection (reply, then close).

/// A query parameter of an announce request, named in [`RequestError`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Param {
    /// `info_hash`
    InfoHash,
    /// `peer_id`
    PeerId,
    /// `port`
    Port,
    /// `uploaded`
    Uploaded,
    /// `downloaded`
    Downloaded,
    /// `left`
    Left,
    /// `event`
    Event,
    /// `numwant`
    Numwant,
    /// `key`
    Key,
    /// `compact`
    Compact,
    /// `no_peer_id`
    NoPeerId,
}

impl Param {
    /// The parameter's name as it appears in the query string.
    pub fn name(self) -> &'static str {
        match self {
            Param::InfoHash => "info_hash",
            Param::PeerId => "peer_id",
            Param::Port => "port",
            Param::Uploaded => "uploaded",
            Param::Downloaded => "downloaded",
            Param::Left => "left",
            Param::Event => "event",
            Param::Numwant => "numwant",
            Param::Key => "key",
            Param::Compact => "compact",
            Param::NoPeerId => "no_peer_id",
        }
    }
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A well-formed HTTP request whose tracker request is invalid.
///
/// The peer gets a bencoded failure (see [`RequestError::failure_reason`]) and
/// the connection may carry on: the request's bytes were consumed in full, so
/// the next pipelined request starts right after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The path is neither `/announce` nor `/scrape`.
    #[error("unknown path")]
    UnknownPath,
    /// `/<segment>/announce` or `/<segment>/scrape` whose segment is not a
    /// passkey (32 ASCII letters and digits).
    #[error("invalid passkey")]
    InvalidPasskey,
    /// A required parameter (`info_hash`, `peer_id` or `port`) is absent.
    #[error("missing parameter {0}")]
    MissingParameter(Param),
    /// A `%` not followed by two hexadecimal digits.
    #[error("invalid percent-encoding in {0}")]
    InvalidPercentEncoding(Param),
    /// `info_hash` or `peer_id` did not decode to exactly 20 bytes.
    #[error("{0} is not 20 bytes long")]
    WrongLength(Param),
    /// A parameter whose value could not be understood, e.g. a port that is
    /// not a number below 65536, an unknown event or a key over 32 bytes.
    #[error("invalid value for {0}")]
    InvalidParameter(Param),
    /// A scrape without any `info_hash`: scraping every torrent is refused.
    #[error("full scrapes are not supported")]
    FullScrapeNotSupported,
    /// A scrape with more `info_hash` parameters than
    /// [`ParseLimits::max_scrape_torrents`](crate::ParseLimits::max_scrape_torrents).
    #[error("too many info hashes in scrape")]
    TooManyInfoHashes,
}

impl RequestError {
    /// The text for the bencoded `failure reason` sent to the peer.
    pub fn failure_reason(&self) -> &'static str {
        match self {
            RequestError::UnknownPath => "unknown path",
            RequestError::InvalidPasskey => "invalid passkey",
            RequestError::MissingParameter(p) => match p {
                Param::InfoHash => "missing info_hash",
                Param::PeerId => "missing peer_id",
                Param::Port => "missing port",
                _ => "missing parameter",
            },
            RequestError::InvalidPercentEncoding(p) => match p {
                Param::InfoHash => "invalid percent-encoding in info_hash",
                Param::PeerId => "invalid percent-encoding in peer_id",
                Param::Key => "invalid percent-encoding in key",
                _ => "invalid percent-encoding",
            },
            RequestError::WrongLength(p) => match p {
                Param::InfoHash => "info_hash must be 20 bytes",
                Param::PeerId => "peer_id must be 20 bytes",
                _ => "parameter has the wrong length",
            },
            RequestError::InvalidParameter(p) => match p {
                Param::InfoHash => "invalid info_hash",
                Param::PeerId => "invalid peer_id",
                Param::Port => "invalid port",
                Param::Uploaded => "invalid uploaded",
                Param::Downloaded => "invalid downloaded",
                Param::Left => "invalid left",
                Param::Event => "invalid event",
                Param::Numwant => "invalid numwant",
                Param::Key => "invalid key",
                Param::Compact => "invalid compact",
                Param::NoPeerId => "invalid no_peer_id",
            },
            RequestError::FullScrapeNotSupported => "full scrapes are not supported",
            RequestError::TooManyInfoHashes => "too many info hashes",
        }
    }

    /// The HTTP status a strict server would answer with.
    ///
    /// Many clients (libtorrent among them) only read the `failure reason`
    /// of a `200 OK` answer, so a server may prefer 200 for these; that
    /// choice is the server's.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::UnknownPath => 404,
            _ => 400,
        }
    }
}

/// An HTTP-level error after which the byte stream cannot be trusted.
///
/// The server writes one response with this status and failure reason
/// (with `keep_alive = false`) and then closes the connection: where the next
/// request would start is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Not an HTTP/1.x request head (bad token, version, line ending or header).
    #[error("malformed HTTP request")]
    Malformed,
    /// A method other than `GET`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No complete request line within
    /// [`ParseLimits::max_request_bytes`](crate::ParseLimits::max_request_bytes).
    #[error("request line too long")]
    RequestLineTooLong,
    /// The header block does not end within
    /// [`ParseLimits::max_request_bytes`](crate::ParseLimits::max_request_bytes),
    /// or has more than
    /// [`ParseLimits::max_headers`](crate::ParseLimits::max_headers) headers.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// A `Content-Length` above zero or a `Transfer-Encoding`: tracker
    /// requests have no body, and skipping one is not worth the risk.
    #[error("request body not supported")]
    BodyNotSupported,
}

impl ConnectionError {
    /// The text for the bencoded `failure reason` sent before closing.
    pub fn failure_reason(&self) -> &'static str {
        match self {
            ConnectionError::Malformed => "malformed HTTP request",
            ConnectionError::MethodNotAllowed => "method not allowed",
            ConnectionError::RequestLineTooLong => "request line too long",
            ConnectionError::HeadersTooLarge => "request headers too large",
            ConnectionError::BodyNotSupported => "request body not supported",
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            ConnectionError::Malformed | ConnectionError::BodyNotSupported => 400,
            ConnectionError::MethodNotAllowed => 405,
            ConnectionError::RequestLineTooLong => 414,
            ConnectionError::HeadersTooLarge => 431,
        }
    }
}
