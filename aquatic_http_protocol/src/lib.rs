//! The HTTP tracker protocol (BEP 3, BEP 23 compact peers, BEP 7 `peers6`,
//! BEP 48 scrape), with no I/O: bytes in, typed requests out; typed
//! responses in, bytes out.
//!
//! ```text
//!   TCP/TLS stream ──bytes──> parse_request ──Request──> shard (aquatic_common::swarm)
//!   (aquatic/src/net/http.rs)                                   │
//!         <──bytes── Response::write_http <──AnnounceResponse───┘
//! ```
//!
//! The runtime in `aquatic/` owns sockets, buffers and timeouts. For each
//! connection it keeps the bytes read so far and calls [`parse_request`]:
//!
//! ```
//! use aquatic_http_protocol::{parse_request, ParseLimits, Parsed, Request};
//!
//! let limits = ParseLimits::default();
//! let mut received: Vec<u8> = b"GET /scrape?info_hash=aaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n\
//!                               GET /scrape HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
//! let mut answers = Vec::new();
//! loop {
//!     match parse_request(&received, &limits) {
//!         // Read more bytes from the socket and call again.
//!         Ok(Parsed::Incomplete) => break,
//!         Ok(Parsed::Complete(parsed)) => {
//!             // Ok(request): hand it to the shard. Err(e): answer with
//!             // e.failure_reason() and keep going.
//!             answers.push(parsed.request.map_err(|e| e.failure_reason()));
//!             let keep_alive = parsed.keep_alive;
//!             received.drain(..parsed.consumed);
//!             if !keep_alive {
//!                 break; // close after writing the answers
//!             }
//!         }
//!         // Answer with e.status() and e.failure_reason(), then close.
//!         Err(e) => panic!("{}: {}", e.status(), e.failure_reason()),
//!     }
//! }
//! assert!(matches!(answers[0], Ok(Request::Scrape(_))));
//! assert_eq!(answers[1], Err("full scrapes are not supported"));
//! ```
//!
//! Two kinds of error: a [`RequestError`] (bad query, unknown path) comes
//! inside a complete request, the peer gets a bencoded failure reason and
//! the connection carries on; a [`ConnectionError`] (not HTTP, not `GET`,
//! too large, has a body) means the stream cannot be framed any further,
//! so the server answers once and closes.
//!
//! Responses are written as bencode straight into any [`std::io::Write`]
//! (typically the connection's output buffer), with
//! [`Response::write_http`] adding the HTTP head. Nothing on the server's
//! path allocates except for scrapes (the request's list of info hashes, and
//! a sorted copy of references when a response's files are not in order).
//!
//! Choices that clients can notice:
//!
//! - `compact` absent means the BEP 3 list of dictionaries, as BEP 23
//!   reads; the clients that matter (libtorrent, transmission, aria2) send
//!   `compact=1` anyway, so this only affects minimal or old clients, which
//!   are exactly the ones that may not understand compact peers.
//! - Numbers too large for `u64` (`left`, `uploaded`, `downloaded`)
//!   saturate instead of failing the announce: a huge `left` still means
//!   "leeching", and a counter is not worth refusing a peer over.
//!
//! [`bencode`] and [`parse_http_response`] are the client side, for tests
//! in this and other crates.
#![warn(missing_docs, unreachable_pub)]

pub mod bencode;
mod client;
mod error;
mod http;
mod percent;
mod request;
mod response;

pub use aquatic_common::{InfoHash, PeerId};

pub use client::{parse_http_response, HttpResponse, ResponseParseError};
pub use error::{ConnectionError, Param, RequestError};
pub use http::{parse_request, ParseLimits, Parsed, ParsedRequest, MAX_HEADERS};
pub use request::{AnnounceEvent, AnnounceRequest, Passkey, PeerKey, Request, ScrapeRequest};
pub use response::{
    write_http_head, write_http_response, AnnounceResponse, FailureResponse, Response,
    ResponsePeer, ScrapeResponse, ScrapeStatistics,
};
