//! The HTTP/1.x request head: framing on a keep-alive connection, limits,
//! keep-alive rules and header lookup. The query itself is parsed in
//! `request.rs`.

use std::net::{IpAddr, SocketAddr};

use crate::error::{ConnectionError, RequestError};
use crate::request::Request;

/// The most headers [`parse_request`] can look at, whatever
/// [`ParseLimits::max_headers`] says: their slots live on the stack.
pub const MAX_HEADERS: usize = 64;

/// Limits on what one request may take, from the server's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// The most bytes one request head (request line and headers) may take.
    /// A buffer this long that holds no complete head is refused.
    pub max_request_bytes: usize,
    /// The most `info_hash` parameters in one scrape.
    pub max_scrape_torrents: usize,
    /// The most headers in one request (capped at [`MAX_HEADERS`]).
    pub max_headers: usize,
}

impl Default for ParseLimits {
    /// 4 KiB heads (a libtorrent announce with its headers is about 600
    /// bytes, a scrape of 50 torrents about 3.5 KiB), 50 torrents per scrape
    /// and 32 headers.
    fn default() -> Self {
        Self {
            max_request_bytes: 4096,
            max_scrape_torrents: 50,
            max_headers: 32,
        }
    }
}

/// What the bytes received so far on a connection hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// The request head is not complete yet: read more and call again with
    /// the longer buffer.
    Incomplete,
    /// One complete request head.
    Complete(ParsedRequest<'a>),
}

/// One complete HTTP request head, whose tracker request may still be invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest<'a> {
    /// The tracker request, or why it is refused. On `Err` the server
    /// answers with the error's failure reason and may keep the connection.
    pub request: Result<Request, RequestError>,
    /// How many bytes of the buffer this request took; the next pipelined
    /// request starts there.
    pub consumed: usize,
    /// Whether the connection stays open after the response: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The header lines, validated by the parser, for [`ParsedRequest::header`].
    header_block: &'a [u8],
}

impl<'a> ParsedRequest<'a> {
    /// All headers as `(name, value)` in order, values without surrounding
    /// whitespace (and from the end with `.rev()`).
    pub fn headers(&self) -> impl DoubleEndedIterator<Item = (&'a [u8], &'a [u8])> {
        self.header_block.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], trim(&line[colon + 1..])))
        })
    }

    /// The value of the header `name` (compared case-insensitively).
    ///
    /// When the header appears more than once the last one is returned: a
    /// reverse proxy appends its own line after whatever the client sent.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The client address a trusted reverse proxy put in `header_name`
    /// (e.g. `X-Forwarded-For` or `X-Real-IP`): the last entry of the
    /// header's list (see [`Self::forwarded_ip_behind`]), as an IP address
    /// or `ip:port`.
    ///
    /// Only call this for a request from a trusted proxy: clients can send
    /// the header themselves.
    pub fn forwarded_ip(&self, header_name: &str) -> Option<IpAddr> {
        self.forwarded_ip_behind(header_name, 1)
    }

    /// Like [`Self::forwarded_ip`] with `trusted_hops` proxies in front:
    /// each appends the address it received from, so the client's address
    /// is entry `trusted_hops` counted from the end (1 = the last).
    /// Entries before it can be forged by the client and are never used.
    ///
    /// Repeated lines of the header are one comma-separated list, in order
    /// (RFC 9110 §5.3): `X-Forwarded-For: a, b` then `X-Forwarded-For: c`
    /// is `a, b, c`, so a proxy that adds its own line rather than append
    /// to the client's counts as one hop like one that appends. Empty
    /// entries are not counted (RFC 9110 §5.6.1).
    pub fn forwarded_ip_behind(&self, header_name: &str, trusted_hops: usize) -> Option<IpAddr> {
        let entry = self
            .headers()
            .rev()
            .filter(|(name, _)| name.eq_ignore_ascii_case(header_name.as_bytes()))
            .flat_map(|(_, value)| value.rsplit(|&b| b == b','))
            .map(trim)
            .filter(|entry| !entry.is_empty())
            .nth(trusted_hops.checked_sub(1)?)?;
        let text = std::str::from_utf8(entry).ok()?;
        text.parse::<IpAddr>()
            .ok()
            .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
    }
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Parses the first request in `buf`, the bytes received so far on a
/// connection that have not been consumed by earlier requests.
///
/// - `Ok(Parsed::Incomplete)`: keep the bytes, read more, call again.
/// - `Ok(Parsed::Complete(p))`: answer `p.request` (a failure response on
///   `Err`), drop `p.consumed` bytes from the front of the buffer, and close
///   after the response unless `p.keep_alive`; further pipelined requests
///   may already be in the rest of the buffer.
/// - `Err(e)`: answer with `e.status()` and `e.failure_reason()` and close.
///
/// Tracker requests have no body, so the request ends with its head.
pub fn parse_request<'a>(
    buf: &'a [u8],
    limits: &ParseLimits,
) -> Result<Parsed<'a>, ConnectionError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers[..limits.max_headers.min(MAX_HEADERS)]);
    let status = match req.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(ConnectionError::HeadersTooLarge),
        Err(_) => return Err(ConnectionError::Malformed),
    };
    // httparse fills in the method as soon as it is read, so a POST is
    // refused before its head (or body) arrives.
    if req.method.is_some_and(|m| m != "GET") {
        return Err(ConnectionError::MethodNotAllowed);
    }
    let consumed = match status {
        httparse::Status::Partial if buf.len() >= limits.max_request_bytes => {
            return Err(too_large(buf, limits.max_request_bytes))
        }
        httparse::Status::Partial => return Ok(Parsed::Incomplete),
        httparse::Status::Complete(n) if n > limits.max_request_bytes => {
            return Err(too_large(buf, limits.max_request_bytes))
        }
        httparse::Status::Complete(n) => n,
    };

    let mut keep_alive = req.version == Some(1);
    let mut close = false;
    for header in req.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = trim(header.value);
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(ConnectionError::Malformed);
            }
            if value.iter().any(|&b| b != b'0') {
                return Err(ConnectionError::BodyNotSupported);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ConnectionError::BodyNotSupported);
        }
    }

    let target = req.path.unwrap_or_default().as_bytes();
    let header_start = request_line_end(buf).unwrap_or(consumed).min(consumed);
    Ok(Parsed::Complete(ParsedRequest {
        request: Request::parse_target(target, limits.max_scrape_torrents),
        consumed,
        keep_alive: keep_alive && !close,
        header_block: &buf[header_start..consumed],
    }))
}

/// Where the request line ends (after its `\n`), skipping the empty lines
/// RFC 9112 lets a server ignore before it.
fn request_line_end(buf: &[u8]) -> Option<usize> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let newline = buf[start..].iter().position(|&b| b == b'\n')?;
    Some(start + newline + 1)
}

fn too_large(buf: &[u8], max_request_bytes: usize) -> ConnectionError {
    match request_line_end(buf) {
        Some(end) if end <= max_request_bytes => ConnectionError::HeadersTooLarge,
        _ => ConnectionError::RequestLineTooLong,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Param;
    use crate::request::tests::arb_request;
    use crate::request::{AnnounceEvent, AnnounceRequest, PeerKey, ScrapeRequest};
    use aquatic_common::{InfoHash, PeerId};
    use proptest::prelude::*;

    fn limits() -> ParseLimits {
        ParseLimits {
            max_request_bytes: 1024,
            max_scrape_torrents: 4,
            max_headers: 8,
        }
    }

    fn complete(buf: &[u8]) -> ParsedRequest<'_> {
        match parse_request(buf, &limits()) {
            Ok(Parsed::Complete(p)) => p,
            other => panic!("not complete: {other:?}"),
        }
    }

    fn ok_announce(buf: &[u8]) -> AnnounceRequest {
        match complete(buf).request {
            Ok(Request::Announce(r)) => r,
            other => panic!("not an announce: {other:?}"),
        }
    }

    /// `%1a%2b…AbCd`, as libtorrent escapes every byte but unreserved ones.
    const INFO_HASH_QUERY: &str = "%1a%2b%3c%4d%5e%6f%70%81%92%a3%b4%c5%d6%e7%f8%09AbCd";
    const INFO_HASH: [u8; 20] = [
        0x1a, 0x2b, 0x3c, 0x4d, 0x5e, 0x6f, 0x70, 0x81, 0x92, 0xa3, 0xb4, 0xc5, 0xd6, 0xe7, 0xf8,
        0x09, b'A', b'b', b'C', b'd',
    ];

    fn peer_id(prefix: &[u8], rest: &[u8]) -> PeerId {
        let mut id = [0u8; 20];
        id[..prefix.len()].copy_from_slice(prefix);
        id[prefix.len()..].copy_from_slice(rest);
        PeerId(id)
    }

    #[test]
    fn libtorrent_announce() {
        let line = format!(
            "GET /announce?info_hash={INFO_HASH_QUERY}&peer_id=-LT2000-%8a%9bxyz%00%ff12345\
             &port=6881&uploaded=0&downloaded=0&left=1234&corrupt=0&key=ABCD1234&event=started\
             &numwant=200&compact=1&no_peer_id=1&supportcrypto=1&redundant=0 HTTP/1.1\r\n\
             Host: tracker.example:6969\r\nUser-Agent: libtorrent/2.0.8.0\r\n\
             Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        );
        let parsed = complete(line.as_bytes());
        assert_eq!(parsed.consumed, line.len());
        assert!(!parsed.keep_alive);
        assert_eq!(
            parsed.header("user-agent"),
            Some(&b"libtorrent/2.0.8.0"[..])
        );
        assert_eq!(
            parsed.request,
            Ok(Request::Announce(AnnounceRequest {
                info_hash: InfoHash(INFO_HASH),
                peer_id: peer_id(b"-LT2000-", b"\x8a\x9bxyz\x00\xff12345"),
                port: 6881,
                bytes_uploaded: 0,
                bytes_downloaded: 0,
                bytes_left: Some(1234),
                event: AnnounceEvent::Started,
                numwant: Some(200),
                key: PeerKey::new(b"ABCD1234"),
                compact: true,
                no_peer_id: true,
                passkey: None,
            }))
        );
    }

    #[test]
    fn transmission_announce() {
        let line = format!(
            "GET /announce?info_hash={INFO_HASH_QUERY}&peer_id=-TR3000-k2vhe9lbw1ch\
             &port=51413&uploaded=0&downloaded=0&left=0&numwant=80&key=6f8e0b9c&compact=1\
             &supportcrypto=1&event=started HTTP/1.1\r\nHost: tracker.example\r\n\
             User-Agent: Transmission/3.00\r\nAccept: */*\r\n\
             Accept-Encoding: deflate, gzip\r\n\r\n"
        );
        let parsed = complete(line.as_bytes());
        assert_eq!(parsed.consumed, line.len());
        assert!(parsed.keep_alive);
        let r = ok_announce(line.as_bytes());
        assert_eq!(r.peer_id, peer_id(b"-TR3000-", b"k2vhe9lbw1ch"));
        assert_eq!(
            (r.port, r.bytes_left, r.numwant),
            (51413, Some(0), Some(80))
        );
        assert_eq!(r.key, PeerKey::new(b"6f8e0b9c"));
        assert_eq!(r.event, AnnounceEvent::Started);
        assert!(r.compact && !r.no_peer_id);
    }

    #[test]
    fn aria2_announce() {
        let line = format!(
            "GET /announce?info_hash={INFO_HASH_QUERY}&peer_id=A2-1-36-0-%12%34%56%78%9A%BC%DE%F0%01%23\
             &uploaded=0&downloaded=0&left=1000&compact=1&key=rZ4mQ0aB&event=started&numwant=50\
             &no_peer_id=1&port=6881 HTTP/1.1\r\nUser-Agent: aria2/1.36.0\r\nAccept: */*\r\n\
             Host: tracker.example:80\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n\r\n"
        );
        let r = ok_announce(line.as_bytes());
        assert_eq!(r.info_hash, InfoHash(INFO_HASH));
        assert_eq!(
            r.peer_id,
            peer_id(b"A2-1-36-0-", b"\x12\x34\x56\x78\x9a\xbc\xde\xf0\x01\x23")
        );
        assert_eq!(
            (r.port, r.bytes_left, r.numwant),
            (6881, Some(1000), Some(50))
        );
        assert!(r.compact && r.no_peer_id);
    }

    const ANNOUNCE: &str =
        "GET /announce?info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1";

    #[test]
    fn compact_over_http() {
        for (suffix, compact) in [("&compact=1", true), ("&compact=0", false), ("", false)] {
            let line = format!("{ANNOUNCE}{suffix} HTTP/1.1\r\n\r\n");
            assert_eq!(ok_announce(line.as_bytes()).compact, compact, "{suffix:?}");
        }
    }

    #[test]
    fn scrapes() {
        let parsed = complete(
            b"GET /scrape?info_hash=aaaaaaaaaaaaaaaaaaaa&info_hash=%62bbbbbbbbbbbbbbbbbbb HTTP/1.1\r\n\r\n",
        );
        assert_eq!(
            parsed.request,
            Ok(Request::Scrape(ScrapeRequest {
                info_hashes: vec![InfoHash([b'a'; 20]), InfoHash([b'b'; 20])],
                passkey: None,
            }))
        );
        let parsed = complete(b"GET /scrape HTTP/1.1\r\n\r\n");
        let err = parsed.request.expect_err("full scrape");
        assert_eq!(err, RequestError::FullScrapeNotSupported);
        assert_eq!(err.failure_reason(), "full scrapes are not supported");
        assert!(parsed.keep_alive);
    }

    #[test]
    fn request_errors_keep_the_connection() {
        let buf = format!(
            "GET /announce?info_hash=short&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1 HTTP/1.1\r\n\r\n\
             GET /announce?info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb HTTP/1.1\r\n\r\n\
             GET /nope HTTP/1.1\r\n\r\n\
             GET /announce?info_hash=a%zzaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1 HTTP/1.1\r\n\r\n\
             {ANNOUNCE} HTTP/1.1\r\n\r\n"
        );
        let mut rest = buf.as_bytes();
        let mut results = Vec::new();
        while !rest.is_empty() {
            let parsed = complete(rest);
            assert!(parsed.keep_alive);
            results.push(parsed.request.map(|_| ()));
            rest = &rest[parsed.consumed..];
        }
        assert_eq!(
            results,
            [
                Err(RequestError::WrongLength(Param::InfoHash)),
                Err(RequestError::MissingParameter(Param::Port)),
                Err(RequestError::UnknownPath),
                Err(RequestError::InvalidPercentEncoding(Param::InfoHash)),
                Ok(()),
            ]
        );
        assert_eq!(RequestError::UnknownPath.status(), 404);
        assert_eq!(
            RequestError::MissingParameter(Param::Port).failure_reason(),
            "missing port"
        );
    }

    #[test]
    fn pipelined_requests() {
        let first = format!("{ANNOUNCE}&event=started HTTP/1.1\r\nHost: t\r\n\r\n");
        let second =
            format!("{ANNOUNCE}&event=stopped HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let buf = format!("{first}{second}GET /scr");
        let parsed = complete(buf.as_bytes());
        assert_eq!(parsed.consumed, first.len());
        assert!(parsed.keep_alive);
        assert!(matches!(
            parsed.request,
            Ok(Request::Announce(AnnounceRequest {
                event: AnnounceEvent::Started,
                ..
            }))
        ));
        let rest = &buf.as_bytes()[parsed.consumed..];
        let parsed = complete(rest);
        assert_eq!(parsed.consumed, second.len());
        assert!(!parsed.keep_alive);
        assert!(matches!(
            parsed.request,
            Ok(Request::Announce(AnnounceRequest {
                event: AnnounceEvent::Stopped,
                ..
            }))
        ));
        assert_eq!(
            parse_request(&rest[parsed.consumed..], &limits()),
            Ok(Parsed::Incomplete)
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let line =
            format!("\r\n{ANNOUNCE} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n");
        for end in 0..line.len() {
            assert_eq!(
                parse_request(&line.as_bytes()[..end], &limits()),
                Ok(Parsed::Incomplete),
                "{end}"
            );
        }
        assert_eq!(complete(line.as_bytes()).consumed, line.len());
    }

    #[test]
    fn keep_alive_rules() {
        for (version, connection, keep_alive) in [
            ("1.1", None, true),
            ("1.1", Some("close"), false),
            ("1.1", Some("Close"), false),
            ("1.1", Some("keep-alive"), true),
            ("1.1", Some("keep-alive, close"), false),
            ("1.1", Some("Upgrade"), true),
            ("1.0", None, false),
            ("1.0", Some("keep-alive"), true),
            ("1.0", Some("Keep-Alive"), true),
            ("1.0", Some("close"), false),
        ] {
            let header = connection
                .map(|c| format!("Connection: {c}\r\n"))
                .unwrap_or_default();
            let line = format!("{ANNOUNCE} HTTP/{version}\r\n{header}\r\n");
            assert_eq!(complete(line.as_bytes()).keep_alive, keep_alive, "{line:?}");
        }
    }

    #[test]
    fn header_lookup() {
        let line = format!(
            "{ANNOUNCE} HTTP/1.1\r\nHost: t\r\nx-forwarded-for: 1.1.1.1\r\n\
             X-Forwarded-For:  203.0.113.7, 10.0.0.2 \r\nX-Real-IP: [2001:db8::1]:443\r\n\r\n"
        );
        let parsed = complete(line.as_bytes());
        assert_eq!(parsed.header("HOST"), Some(&b"t"[..]));
        assert_eq!(parsed.header("missing"), None);
        assert_eq!(
            parsed.header("X-Forwarded-For"),
            Some(&b"203.0.113.7, 10.0.0.2"[..])
        );
        assert_eq!(
            parsed.forwarded_ip("x-forwarded-for"),
            "10.0.0.2".parse().ok()
        );
        assert_eq!(parsed.forwarded_ip("x-real-ip"), "2001:db8::1".parse().ok());
        assert_eq!(parsed.forwarded_ip("host"), None);
        assert_eq!(
            parsed.forwarded_ip_behind("x-forwarded-for", 2),
            "203.0.113.7".parse().ok()
        );
        // The earlier line is the start of the same list.
        assert_eq!(
            parsed.forwarded_ip_behind("x-forwarded-for", 3),
            "1.1.1.1".parse().ok()
        );
        assert_eq!(parsed.forwarded_ip_behind("x-forwarded-for", 4), None);
        assert_eq!(parsed.forwarded_ip_behind("x-forwarded-for", 0), None);
        assert_eq!(parsed.headers().count(), 4);
    }

    #[test]
    fn repeated_header_lines_are_one_list() {
        let line = format!(
            "{ANNOUNCE} HTTP/1.1\r\nX-Forwarded-For: 198.51.100.1, 198.51.100.2\r\n\
             Host: t\r\nx-forwarded-for: 203.0.113.9\r\nX-Forwarded-For: 10.0.0.1,\r\n\
             X-Forwarded-For:\r\n\r\n"
        );
        let parsed = complete(line.as_bytes());
        // The list is 198.51.100.1, 198.51.100.2, 203.0.113.9, 10.0.0.1:
        // lines in order, the empty entry and the empty line not counted.
        let behind = |hops| parsed.forwarded_ip_behind("X-Forwarded-For", hops);
        assert_eq!(behind(1), "10.0.0.1".parse().ok());
        assert_eq!(behind(2), "203.0.113.9".parse().ok());
        assert_eq!(behind(3), "198.51.100.2".parse().ok());
        assert_eq!(behind(4), "198.51.100.1".parse().ok());
        assert_eq!(behind(5), None);
        // A proxy that adds its own line counts as one hop, as one that
        // appends to the client's line does.
        let own_line = format!(
            "{ANNOUNCE} HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
        );
        let appended =
            format!("{ANNOUNCE} HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.9\r\n\r\n");
        for text in [own_line, appended] {
            let parsed = complete(text.as_bytes());
            assert_eq!(
                parsed.forwarded_ip("x-forwarded-for"),
                "203.0.113.9".parse().ok()
            );
            assert_eq!(
                parsed.forwarded_ip_behind("x-forwarded-for", 2),
                "6.6.6.6".parse().ok()
            );
        }
    }

    #[test]
    fn method_not_allowed() {
        assert_eq!(
            parse_request(
                b"POST /announce HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                &limits()
            ),
            Err(ConnectionError::MethodNotAllowed)
        );
        // Refused as soon as the method is known.
        assert_eq!(
            parse_request(b"POST /ann", &limits()),
            Err(ConnectionError::MethodNotAllowed)
        );
        assert_eq!(ConnectionError::MethodNotAllowed.status(), 405);
    }

    #[test]
    fn malformed() {
        for buf in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET /announce HTTP/2.0\r\n\r\n",
            b"GET /announce HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET  HTTP/1.1\r\n\r\n",
            b"GET /announce HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ] {
            assert_eq!(
                parse_request(buf, &limits()),
                Err(ConnectionError::Malformed),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn bodies_refused() {
        assert_eq!(
            parse_request(
                b"GET /scrape HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                &limits()
            ),
            Err(ConnectionError::BodyNotSupported)
        );
        assert_eq!(
            parse_request(
                b"GET /scrape HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                &limits()
            ),
            Err(ConnectionError::BodyNotSupported)
        );
        let p = complete(b"GET /scrape HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(p.request, Err(RequestError::FullScrapeNotSupported));
    }

    #[test]
    fn size_limits() {
        let long_line = format!("GET /announce?{} HTTP/1.1\r\n\r\n", "x".repeat(2000));
        assert_eq!(
            parse_request(long_line.as_bytes(), &limits()),
            Err(ConnectionError::RequestLineTooLong)
        );
        // Refused once the buffer reaches the limit, without waiting for the end.
        assert_eq!(
            parse_request(&long_line.as_bytes()[..1024], &limits()),
            Err(ConnectionError::RequestLineTooLong)
        );
        assert_eq!(
            parse_request(&long_line.as_bytes()[..1023], &limits()),
            Ok(Parsed::Incomplete)
        );
        let big_headers = format!(
            "GET /scrape HTTP/1.1\r\nCookie: {}\r\n\r\n",
            "c".repeat(2000)
        );
        assert_eq!(
            parse_request(big_headers.as_bytes(), &limits()),
            Err(ConnectionError::HeadersTooLarge)
        );
        assert_eq!(
            parse_request(&big_headers.as_bytes()[..1500], &limits()),
            Err(ConnectionError::HeadersTooLarge)
        );
        let many_headers = format!("GET /scrape HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(9));
        assert_eq!(
            parse_request(many_headers.as_bytes(), &limits()),
            Err(ConnectionError::HeadersTooLarge)
        );
        assert_eq!(ConnectionError::RequestLineTooLong.status(), 414);
        assert_eq!(ConnectionError::HeadersTooLarge.status(), 431);
        let too_many = format!(
            "GET /scrape?{} HTTP/1.1\r\n\r\n",
            "info_hash=aaaaaaaaaaaaaaaaaaaa&".repeat(5)
        );
        assert_eq!(
            complete(too_many.as_bytes()).request,
            Err(RequestError::TooManyInfoHashes)
        );
    }

    /// The fuzz target's seeds are what they claim to be.
    #[test]
    fn fuzz_seeds_parse() {
        let seeds: [(&[u8], usize); 3] = [
            (
                include_bytes!("../fuzz/seeds/request/libtorrent_announce"),
                1,
            ),
            (
                include_bytes!("../fuzz/seeds/request/transmission_pipelined"),
                2,
            ),
            (include_bytes!("../fuzz/seeds/request/scrape_multi"), 2),
        ];
        for (seed, requests) in seeds {
            let mut rest = seed;
            let mut ok = 0;
            while !rest.is_empty() {
                let parsed = complete(rest);
                ok += usize::from(parsed.request.is_ok());
                rest = &rest[parsed.consumed..];
            }
            assert!(ok >= 1 && ok <= requests);
        }
    }

    proptest! {
        #[test]
        fn http_round_trip(request in arb_request(4), keep_alive in any::<bool>()) {
            let mut buf = Vec::new();
            request.write_http_get(&mut buf, "tracker.example:6969", keep_alive).expect("vec write");
            let parsed = complete(&buf);
            prop_assert_eq!(parsed.consumed, buf.len());
            prop_assert_eq!(parsed.keep_alive, keep_alive);
            prop_assert_eq!(parsed.request, Ok(request));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_request(&bytes, &limits());
            let mut get = b"GET /announce?".to_vec();
            get.extend_from_slice(&bytes);
            get.extend_from_slice(b" HTTP/1.1\r\n\r\n");
            let _ = parse_request(&get, &limits());
        }

        #[test]
        fn consumed_stays_in_bounds(bytes in proptest::collection::vec(
            proptest::sample::select(b"GET /scrape?info_hash=a HTTP/1.0\r\n:xX-%".to_vec()), 0..256,
        )) {
            if let Ok(Parsed::Complete(p)) = parse_request(&bytes, &limits()) {
                prop_assert!(p.consumed > 0 && p.consumed <= bytes.len());
                let _ = p.headers().count();
            }
        }
    }
}
