//! Tracker responses, written as bencode straight into any `io::Write`, and
//! the HTTP/1.1 response head around them.

use std::io::{self, Cursor, Write};
use std::net::{Ipv4Addr, Ipv6Addr};

use aquatic_common::{InfoHash, PeerId};

use crate::bencode::write_bytes;

/// A peer handed out in an announce response: the shard's own
/// [`SelectedPeer`](aquatic_common::SelectedPeer), written as it is (its
/// `peer_id`, when the shard has it, appears in non-compact responses
/// unless the client sent `no_peer_id=1`).
pub type ResponsePeer<A> = aquatic_common::SelectedPeer<A>;

/// The answer to an announce.
///
/// Keys are written in bencode's byte order: `complete`, `incomplete`,
/// `interval`, `peers`, `peers6`, `warning message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceResponse<'a> {
    /// Seconds the client should wait before announcing again.
    pub interval: u32,
    /// Seeders in the swarm.
    pub complete: usize,
    /// Leechers in the swarm.
    pub incomplete: usize,
    /// IPv4 peers.
    pub peers_v4: &'a [ResponsePeer<Ipv4Addr>],
    /// IPv6 peers.
    pub peers_v6: &'a [ResponsePeer<Ipv6Addr>],
    /// BEP 23: `peers` as a string of 6-byte entries and BEP 7 `peers6` as
    /// 18-byte entries (left out when there are no IPv6 peers). Otherwise
    /// BEP 3's `peers` list of `{ip, peer id, port}` dictionaries holding
    /// both families.
    pub compact: bool,
    /// Leave `peer id` out of non-compact peer dictionaries (it is also
    /// left out of the dictionary of a peer whose id is not known).
    pub no_peer_id: bool,
    /// An optional `warning message`.
    pub warning: Option<&'a str>,
}

/// Counts for one torrent in a scrape response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScrapeStatistics {
    /// Seeders.
    pub complete: usize,
    /// Times the torrent was completed (`event=completed` announces).
    pub downloaded: usize,
    /// Leechers.
    pub incomplete: usize,
}

impl From<aquatic_common::ScrapeStats> for ScrapeStatistics {
    fn from(s: aquatic_common::ScrapeStats) -> Self {
        Self {
            complete: s.seeders,
            downloaded: s.completed as usize,
            incomplete: s.leechers,
        }
    }
}

/// The answer to a scrape: a `files` dictionary keyed by raw info hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeResponse<'a> {
    /// The torrents, in any order. They are written sorted by info hash, as
    /// bencode requires; for a repeated info hash only the first is written.
    pub files: &'a [(InfoHash, ScrapeStatistics)],
}

/// A refusal: `d14:failure reason…e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureResponse<'a> {
    /// Shown to the user by the client.
    pub failure_reason: &'a str,
}

/// Any tracker response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// An announce's peers and counts.
    Announce(AnnounceResponse<'a>),
    /// A scrape's counts.
    Scrape(ScrapeResponse<'a>),
    /// A refusal.
    Failure(FailureResponse<'a>),
}

fn write_int(w: &mut impl Write, n: impl std::fmt::Display) -> io::Result<()> {
    write!(w, "i{n}e")
}

/// Writes the textual address as a bencode string, formatted on the stack.
fn write_ip(w: &mut impl Write, ip: impl std::fmt::Display) -> io::Result<()> {
    // The longest IPv6 text, with an embedded IPv4 address, is 45 bytes.
    let mut buf = [0u8; 64];
    let mut cursor = Cursor::new(&mut buf[..]);
    write!(cursor, "{ip}")?;
    let len = usize::try_from(cursor.position()).unwrap_or(buf.len());
    write_bytes(w, &buf[..len])
}

impl AnnounceResponse<'_> {
    /// Writes the bencoded body.
    pub fn write_bencode(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(b"d8:complete")?;
        write_int(w, self.complete)?;
        w.write_all(b"10:incomplete")?;
        write_int(w, self.incomplete)?;
        w.write_all(b"8:interval")?;
        write_int(w, self.interval)?;
        w.write_all(b"5:peers")?;
        if self.compact {
            write!(w, "{}:", self.peers_v4.len() * 6)?;
            for peer in self.peers_v4 {
                w.write_all(&peer.ip_address.octets())?;
                w.write_all(&peer.port.to_be_bytes())?;
            }
            if !self.peers_v6.is_empty() {
                write!(w, "6:peers6{}:", self.peers_v6.len() * 18)?;
                for peer in self.peers_v6 {
                    w.write_all(&peer.ip_address.octets())?;
                    w.write_all(&peer.port.to_be_bytes())?;
                }
            }
        } else {
            w.write_all(b"l")?;
            for peer in self.peers_v4 {
                self.write_peer_dict(w, peer.ip_address, peer.peer_id.as_ref(), peer.port)?;
            }
            for peer in self.peers_v6 {
                self.write_peer_dict(w, peer.ip_address, peer.peer_id.as_ref(), peer.port)?;
            }
            w.write_all(b"e")?;
        }
        if let Some(warning) = self.warning {
            w.write_all(b"15:warning message")?;
            write_bytes(w, warning.as_bytes())?;
        }
        w.write_all(b"e")
    }

    fn write_peer_dict(
        &self,
        w: &mut impl Write,
        ip: impl std::fmt::Display,
        peer_id: Option<&PeerId>,
        port: u16,
    ) -> io::Result<()> {
        w.write_all(b"d2:ip")?;
        write_ip(w, ip)?;
        if let Some(peer_id) = peer_id.filter(|_| !self.no_peer_id) {
            w.write_all(b"7:peer id20:")?;
            w.write_all(&peer_id.0)?;
        }
        w.write_all(b"4:port")?;
        write_int(w, port)?;
        w.write_all(b"e")
    }
}

impl ScrapeResponse<'_> {
    /// Writes the bencoded body.
    ///
    /// Files already in strictly increasing order are written without
    /// allocating; otherwise a vector of references is sorted first.
    pub fn write_bencode(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(b"d5:filesd")?;
        if self.files.windows(2).all(|pair| pair[0].0 < pair[1].0) {
            for (info_hash, stats) in self.files {
                write_file(w, info_hash, stats)?;
            }
        } else {
            let mut sorted: Vec<&(InfoHash, ScrapeStatistics)> = self.files.iter().collect();
            // Stable, so `dedup_by` keeps the first of each repeated hash.
            sorted.sort_by_key(|entry| entry.0);
            sorted.dedup_by(|later, earlier| later.0 == earlier.0);
            for (info_hash, stats) in sorted {
                write_file(w, info_hash, stats)?;
            }
        }
        w.write_all(b"ee")
    }
}

fn write_file(
    w: &mut impl Write,
    info_hash: &InfoHash,
    stats: &ScrapeStatistics,
) -> io::Result<()> {
    write_bytes(w, &info_hash.0)?;
    w.write_all(b"d8:complete")?;
    write_int(w, stats.complete)?;
    w.write_all(b"10:downloaded")?;
    write_int(w, stats.downloaded)?;
    w.write_all(b"10:incomplete")?;
    write_int(w, stats.incomplete)?;
    w.write_all(b"e")
}

impl FailureResponse<'_> {
    /// Writes the bencoded body.
    pub fn write_bencode(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(b"d14:failure reason")?;
        write_bytes(w, self.failure_reason.as_bytes())?;
        w.write_all(b"e")
    }
}

impl Response<'_> {
    /// Writes the bencoded body.
    pub fn write_bencode(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Response::Announce(r) => r.write_bencode(w),
            Response::Scrape(r) => r.write_bencode(w),
            Response::Failure(r) => r.write_bencode(w),
        }
    }

    /// The length of [`Response::write_bencode`]'s output, found by writing
    /// into a counter.
    pub fn bencoded_len(&self) -> usize {
        let mut counter = Counter(0);
        // Counter never fails.
        let _ = self.write_bencode(&mut counter);
        counter.0
    }

    /// Writes a whole HTTP/1.1 response, head and body, without an
    /// intermediate buffer: the body is encoded twice, once to count its
    /// length for `Content-Length` and once into `w`.
    ///
    /// Announces and scrapes take status 200. For failures, see
    /// [`RequestError::status`](crate::RequestError::status).
    pub fn write_http(&self, w: &mut impl Write, status: u16, keep_alive: bool) -> io::Result<()> {
        write_http_head(w, status, self.bencoded_len(), keep_alive)?;
        self.write_bencode(w)
    }
}

struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        // The reason phrase may be empty (RFC 9112, section 4).
        _ => "",
    }
}

/// Writes an HTTP/1.1 response head: status line, `Content-Type:
/// text/plain`, `Content-Length`, `Allow: GET` on a 405, `Connection:
/// close` unless `keep_alive`, and the blank line.
///
/// A kept-alive connection gets no `Connection` header: HTTP/1.1 clients
/// assume keep-alive, and an HTTP/1.0 client that asked for it still reads
/// the body by `Content-Length` (at worst it closes the connection itself).
pub fn write_http_head(
    w: &mut impl Write,
    status: u16,
    content_length: usize,
    keep_alive: bool,
) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {content_length}\r\n",
        reason_phrase(status)
    )?;
    if status == 405 {
        w.write_all(b"Allow: GET\r\n")?;
    }
    if !keep_alive {
        w.write_all(b"Connection: close\r\n")?;
    }
    w.write_all(b"\r\n")
}

/// Writes a whole HTTP/1.1 response around an already encoded body (see
/// [`write_http_head`]). [`Response::write_http`] does the same without
/// needing the body in a buffer first.
pub fn write_http_response(
    w: &mut impl Write,
    status: u16,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    write_http_head(w, status, body.len(), keep_alive)?;
    w.write_all(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::{decode, Value};
    use crate::client::parse_http_response;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    fn bencoded(response: Response<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        response.write_bencode(&mut buf).expect("vec write");
        assert_eq!(buf.len(), response.bencoded_len());
        buf
    }

    const V4: [ResponsePeer<Ipv4Addr>; 1] = [ResponsePeer {
        peer_id: Some(PeerId([b'A'; 20])),
        ip_address: Ipv4Addr::new(1, 2, 3, 4),
        port: 6881,
    }];
    const V6: [ResponsePeer<Ipv6Addr>; 1] = [ResponsePeer {
        peer_id: Some(PeerId([b'B'; 20])),
        ip_address: Ipv6Addr::LOCALHOST,
        port: 0x1a2b,
    }];

    fn announce(compact: bool, no_peer_id: bool) -> AnnounceResponse<'static> {
        AnnounceResponse {
            interval: 1800,
            complete: 2,
            incomplete: 1,
            peers_v4: &V4,
            peers_v6: &V6,
            compact,
            no_peer_id,
            warning: None,
        }
    }

    #[test]
    fn compact_announce_bytes() {
        let mut expected = b"d8:completei2e10:incompletei1e8:intervali1800e\
            5:peers6:\x01\x02\x03\x04\x1a\xe1\
            6:peers618:"
            .to_vec();
        expected.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        expected.extend_from_slice(b"\x1a\x2be");
        assert_eq!(
            bencoded(Response::Announce(announce(true, false))),
            expected
        );
    }

    #[test]
    fn compact_announce_without_v6_peers() {
        let r = AnnounceResponse {
            peers_v4: &[],
            peers_v6: &[],
            warning: Some("slow down"),
            ..announce(true, false)
        };
        assert_eq!(
            bencoded(Response::Announce(r)),
            b"d8:completei2e10:incompletei1e8:intervali1800e5:peers0:\
              15:warning message9:slow downe"
        );
    }

    #[test]
    fn non_compact_announce_bytes() {
        assert_eq!(
            bencoded(Response::Announce(announce(false, false))),
            b"d8:completei2e10:incompletei1e8:intervali1800e5:peersl\
              d2:ip7:1.2.3.47:peer id20:AAAAAAAAAAAAAAAAAAAA4:porti6881ee\
              d2:ip3:::17:peer id20:BBBBBBBBBBBBBBBBBBBB4:porti6699ee\
              ee"
        );
        assert_eq!(
            bencoded(Response::Announce(announce(false, true))),
            b"d8:completei2e10:incompletei1e8:intervali1800e5:peersl\
              d2:ip7:1.2.3.44:porti6881eed2:ip3:::14:porti6699eeee"
        );
    }

    #[test]
    fn scrape_bytes_sorted_and_deduplicated() {
        let stats = |n| ScrapeStatistics {
            complete: n,
            downloaded: n + 1,
            incomplete: n + 2,
        };
        let files = [
            (InfoHash([b'b'; 20]), stats(1)),
            (InfoHash([b'a'; 20]), stats(4)),
            (InfoHash([b'b'; 20]), stats(7)),
        ];
        assert_eq!(
            bencoded(Response::Scrape(ScrapeResponse { files: &files })),
            b"d5:filesd\
              20:aaaaaaaaaaaaaaaaaaaad8:completei4e10:downloadedi5e10:incompletei6ee\
              20:bbbbbbbbbbbbbbbbbbbbd8:completei1e10:downloadedi2e10:incompletei3ee\
              ee"
        );
        assert_eq!(
            bencoded(Response::Scrape(ScrapeResponse {
                files: &files[1..2]
            })),
            b"d5:filesd20:aaaaaaaaaaaaaaaaaaaad8:completei4e10:downloadedi5e10:incompletei6eeee"
        );
        assert_eq!(
            bencoded(Response::Scrape(ScrapeResponse { files: &[] })),
            b"d5:filesdee"
        );
    }

    #[test]
    fn failure_bytes() {
        assert_eq!(
            bencoded(Response::Failure(FailureResponse {
                failure_reason: "full scrapes are not supported"
            })),
            b"d14:failure reason30:full scrapes are not supportede"
        );
    }

    #[test]
    fn http_framing() {
        let failure = Response::Failure(FailureResponse {
            failure_reason: "unknown path",
        });
        let mut out = Vec::new();
        failure.write_http(&mut out, 404, true).expect("vec write");
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n\r\n\
              d14:failure reason12:unknown pathe"
        );

        let mut out = Vec::new();
        write_http_response(&mut out, 405, b"de", false).expect("vec write");
        assert_eq!(
            out,
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
              Allow: GET\r\nConnection: close\r\n\r\nde"
        );

        let mut out = Vec::new();
        write_http_head(&mut out, 299, 0, true).expect("vec write");
        assert_eq!(
            out,
            b"HTTP/1.1 299 \r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn client_reads_responses() {
        let mut out = Vec::new();
        Response::Announce(announce(true, false))
            .write_http(&mut out, 200, true)
            .expect("vec write");
        write_http_response(&mut out, 400, b"d14:failure reason1:xe", false).expect("vec write");

        for end in 0..out.len().min(150) {
            assert_eq!(parse_http_response(&out[..end]), Ok(None), "{end}");
        }
        let first = parse_http_response(&out).expect("valid").expect("complete");
        assert_eq!(first.status, 200);
        assert!(!first.connection_close);
        let body = decode(first.body).expect("bencode");
        assert_eq!(body.get(b"interval"), Some(&Value::Int(1800)));

        let second = parse_http_response(&out[first.consumed..])
            .expect("valid")
            .expect("complete");
        assert_eq!(second.status, 400);
        assert!(second.connection_close);
        assert_eq!(first.consumed + second.consumed, out.len());
        assert_eq!(
            decode(second.body).expect("bencode").get(b"failure reason"),
            Some(&Value::Bytes(b"x".to_vec()))
        );
    }

    fn arb_peers<A: std::fmt::Debug>(
        addr: impl Strategy<Value = A>,
    ) -> impl Strategy<Value = Vec<ResponsePeer<A>>> {
        proptest::collection::vec(
            (proptest::option::of(any::<[u8; 20]>()), addr, any::<u16>()).prop_map(
                |(id, ip_address, port)| ResponsePeer {
                    peer_id: id.map(PeerId),
                    ip_address,
                    port,
                },
            ),
            0..8,
        )
    }

    fn int(v: &Value, key: &[u8]) -> Option<i64> {
        v.get(key).and_then(Value::as_int)
    }

    fn decode_compact<const N: usize>(bytes: &[u8]) -> Vec<([u8; N], u16)> {
        assert_eq!(bytes.len() % (N + 2), 0);
        bytes
            .chunks_exact(N + 2)
            .map(|c| {
                let mut ip = [0u8; N];
                ip.copy_from_slice(&c[..N]);
                (ip, u16::from_be_bytes([c[N], c[N + 1]]))
            })
            .collect()
    }

    proptest! {
        #[test]
        fn announce_round_trip(
            interval in any::<u32>(),
            complete in 0..=i64::MAX as usize,
            incomplete in 0..=i64::MAX as usize,
            v4 in arb_peers(any::<[u8; 4]>().prop_map(Ipv4Addr::from)),
            v6 in arb_peers(any::<[u8; 16]>().prop_map(Ipv6Addr::from)),
            compact in any::<bool>(),
            no_peer_id in any::<bool>(),
            warning in proptest::option::of(".{0,20}"),
        ) {
            let response = AnnounceResponse {
                interval,
                complete,
                incomplete,
                peers_v4: &v4,
                peers_v6: &v6,
                compact,
                no_peer_id,
                warning: warning.as_deref(),
            };
            let value = decode(&bencoded(Response::Announce(response))).expect("canonical bencode");
            prop_assert_eq!(int(&value, b"interval"), Some(i64::from(interval)));
            prop_assert_eq!(int(&value, b"complete"), Some(complete as i64));
            prop_assert_eq!(int(&value, b"incomplete"), Some(incomplete as i64));
            prop_assert_eq!(
                value.get(b"warning message").and_then(Value::as_bytes),
                warning.as_ref().map(|w| w.as_bytes())
            );
            if compact {
                let peers = value.get(b"peers").and_then(Value::as_bytes).expect("peers");
                let want: Vec<_> = v4.iter().map(|p| (p.ip_address.octets(), p.port)).collect();
                prop_assert_eq!(decode_compact::<4>(peers), want);
                let want6: Vec<_> = v6.iter().map(|p| (p.ip_address.octets(), p.port)).collect();
                match value.get(b"peers6").and_then(Value::as_bytes) {
                    Some(peers6) => prop_assert_eq!(decode_compact::<16>(peers6), want6),
                    None => prop_assert!(v6.is_empty()),
                }
            } else {
                prop_assert!(value.get(b"peers6").is_none());
                let peers = value.get(b"peers").and_then(Value::as_list).expect("peers list");
                let want: Vec<(IpAddr, u16, Option<PeerId>)> = v4
                    .iter()
                    .map(|p| (IpAddr::V4(p.ip_address), p.port, p.peer_id))
                    .chain(v6.iter().map(|p| (IpAddr::V6(p.ip_address), p.port, p.peer_id)))
                    .collect();
                prop_assert_eq!(peers.len(), want.len());
                for (peer, (ip, port, peer_id)) in peers.iter().zip(want) {
                    let text = peer.get(b"ip").and_then(Value::as_bytes).expect("ip");
                    let parsed: IpAddr = std::str::from_utf8(text).expect("utf-8").parse().expect("ip");
                    prop_assert_eq!(parsed, ip);
                    prop_assert_eq!(int(peer, b"port"), Some(i64::from(port)));
                    let id = peer.get(b"peer id").and_then(Value::as_bytes);
                    prop_assert_eq!(id, peer_id.as_ref().filter(|_| !no_peer_id).map(|p| &p.0[..]));
                }
            }
        }

        #[test]
        fn scrape_round_trip(
            files in proptest::collection::vec(
                ((0u8..4), any::<(u32, u32, u32)>()),
                0..10,
            )
        ) {
            let files: Vec<_> = files
                .into_iter()
                .map(|(h, (c, d, i))| {
                    (InfoHash([h; 20]), ScrapeStatistics {
                        complete: c as usize,
                        downloaded: d as usize,
                        incomplete: i as usize,
                    })
                })
                .collect();
            let value = decode(&bencoded(Response::Scrape(ScrapeResponse { files: &files })))
                .expect("canonical bencode");
            let mut want = BTreeMap::new();
            for (hash, stats) in &files {
                want.entry(hash.0.to_vec()).or_insert(*stats);
            }
            let got = value.get(b"files").and_then(Value::as_dict).expect("files");
            prop_assert_eq!(got.len(), want.len());
            for (hash, stats) in want {
                let entry = got.get(&hash).expect("hash present");
                prop_assert_eq!(int(entry, b"complete"), Some(stats.complete as i64));
                prop_assert_eq!(int(entry, b"downloaded"), Some(stats.downloaded as i64));
                prop_assert_eq!(int(entry, b"incomplete"), Some(stats.incomplete as i64));
            }
        }

        #[test]
        fn failure_round_trip(reason in ".{0,40}") {
            let value = decode(&bencoded(Response::Failure(FailureResponse { failure_reason: &reason })))
                .expect("canonical bencode");
            prop_assert_eq!(
                value.get(b"failure reason").and_then(Value::as_bytes),
                Some(reason.as_bytes())
            );
        }

        #[test]
        fn client_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_http_response(&bytes);
            let mut with_head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec();
            with_head.extend_from_slice(&bytes);
            let _ = parse_http_response(&with_head);
        }
    }
}
