//! Requests: parsed from a datagram without allocation, written by clients.

use std::{
    io::{self, Write},
    net::Ipv4Addr,
};

use crate::{
    common::Reader, AnnounceEvent, ConnectionId, InfoHash, PeerId, RequestParseError,
    TransactionId, PROTOCOL_ID,
};

const ACTION_CONNECT: i32 = 0;
const ACTION_ANNOUNCE: i32 = 1;
const ACTION_SCRAPE: i32 = 2;

/// A connect request: the first step of every exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The client's tag.
    pub transaction_id: TransactionId,
}

/// An announce: "I am in this swarm; who else is?"
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// From the connect response.
    pub connection_id: ConnectionId,
    /// The client's tag.
    pub transaction_id: TransactionId,
    /// The torrent.
    pub info_hash: InfoHash,
    /// The announcing peer.
    pub peer_id: PeerId,
    /// Bytes downloaded so far.
    pub bytes_downloaded: i64,
    /// Bytes still missing.
    pub bytes_left: i64,
    /// Bytes uploaded so far.
    pub bytes_uploaded: i64,
    /// Started, completed, stopped or none.
    pub event: AnnounceEvent,
    /// The address the client claims (0 on the wire: none).
    pub ip_address: Option<Ipv4Addr>,
    /// A random key the client keeps across announces.
    pub key: u32,
    /// Peers wanted; negative means the tracker's default.
    pub peers_wanted: i32,
    /// The port the peer listens on.
    pub port: u16,
}

/// Info hashes borrowed from a scrape datagram; always 1 or more whole hashes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InfoHashes<'a> {
    bytes: &'a [u8],
}

impl<'a> InfoHashes<'a> {
    /// Number of hashes.
    pub fn len(&self) -> usize {
        self.bytes.len() / 20
    }

    /// Never true for a parsed request.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Hash `i`.
    pub fn get(&self, i: usize) -> Option<InfoHash> {
        let chunk = self.bytes.get(i * 20..i * 20 + 20)?;
        let mut hash = [0u8; 20];
        hash.copy_from_slice(chunk);
        Some(InfoHash(hash))
    }

    /// The hashes in request order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = InfoHash> + Clone + 'a {
        self.bytes.chunks_exact(20).map(|chunk| {
            let mut hash = [0u8; 20];
            hash.copy_from_slice(chunk);
            InfoHash(hash)
        })
    }

    /// The raw bytes, 20 per hash.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Wraps raw bytes; None unless they are 1 or more whole hashes.
    pub fn from_bytes(bytes: &'a [u8]) -> Option<Self> {
        (!bytes.is_empty() && bytes.len() % 20 == 0).then_some(Self { bytes })
    }
}

impl std::fmt::Debug for InfoHashes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A scrape: seeders, leechers and downloads of some torrents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrapeRequest<'a> {
    /// From the connect response.
    pub connection_id: ConnectionId,
    /// The client's tag.
    pub transaction_id: TransactionId,
    /// The torrents, in the order the answer must follow.
    pub info_hashes: InfoHashes<'a>,
}

/// Any BEP 15 request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Action 0.
    Connect(ConnectRequest),
    /// Action 1.
    Announce(AnnounceRequest),
    /// Action 2.
    Scrape(ScrapeRequest<'a>),
}

impl<'a> Request<'a> {
    /// Parses a datagram. Scrapes may name at most `max_scrape_torrents`
    /// hashes. Bytes after an announce (BEP 41 URL data) are ignored.
    pub fn parse(bytes: &'a [u8], max_scrape_torrents: usize) -> Result<Self, RequestParseError> {
        let mut r = Reader::new(bytes);
        let (Some(connection_id), Some(action), Some(transaction_id)) = (r.i64(), r.i32(), r.i32())
        else {
            return Err(RequestParseError::TooShort(bytes.len()));
        };
        let transaction_id = TransactionId(transaction_id);
        match action {
            ACTION_CONNECT => {
                if connection_id != PROTOCOL_ID {
                    return Err(RequestParseError::InvalidProtocolId);
                }
                Ok(Self::Connect(ConnectRequest { transaction_id }))
            }
            ACTION_ANNOUNCE => parse_announce(&mut r, ConnectionId(connection_id), transaction_id),
            ACTION_SCRAPE => {
                let connection_id = ConnectionId(connection_id);
                let hashes = r.rest();
                if hashes.is_empty() {
                    Err(RequestParseError::ScrapeEmpty {
                        connection_id,
                        transaction_id,
                    })
                } else if hashes.len() % 20 != 0 {
                    Err(RequestParseError::ScrapePartialHash {
                        connection_id,
                        transaction_id,
                    })
                } else if hashes.len() / 20 > max_scrape_torrents {
                    Err(RequestParseError::ScrapeTooManyHashes {
                        connection_id,
                        transaction_id,
                    })
                } else {
                    Ok(Self::Scrape(ScrapeRequest {
                        connection_id,
                        transaction_id,
                        info_hashes: InfoHashes { bytes: hashes },
                    }))
                }
            }
            action => Err(RequestParseError::UnknownAction {
                connection_id: ConnectionId(connection_id),
                transaction_id,
                action,
            }),
        }
    }

    /// Writes the request as a client sends it.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Self::Connect(r) => {
                w.write_all(&PROTOCOL_ID.to_be_bytes())?;
                w.write_all(&ACTION_CONNECT.to_be_bytes())?;
                w.write_all(&r.transaction_id.0.to_be_bytes())
            }
            Self::Announce(r) => {
                w.write_all(&r.connection_id.0.to_be_bytes())?;
                w.write_all(&ACTION_ANNOUNCE.to_be_bytes())?;
                w.write_all(&r.transaction_id.0.to_be_bytes())?;
                w.write_all(&r.info_hash.0)?;
                w.write_all(&r.peer_id.0)?;
                w.write_all(&r.bytes_downloaded.to_be_bytes())?;
                w.write_all(&r.bytes_left.to_be_bytes())?;
                w.write_all(&r.bytes_uploaded.to_be_bytes())?;
                w.write_all(&r.event.to_wire().to_be_bytes())?;
                w.write_all(&r.ip_address.map_or([0; 4], |ip| ip.octets()))?;
                w.write_all(&r.key.to_be_bytes())?;
                w.write_all(&r.peers_wanted.to_be_bytes())?;
                w.write_all(&r.port.to_be_bytes())
            }
            Self::Scrape(r) => {
                w.write_all(&r.connection_id.0.to_be_bytes())?;
                w.write_all(&ACTION_SCRAPE.to_be_bytes())?;
                w.write_all(&r.transaction_id.0.to_be_bytes())?;
                w.write_all(r.info_hashes.bytes)
            }
        }
    }
}

fn parse_announce(
    r: &mut Reader<'_>,
    connection_id: ConnectionId,
    transaction_id: TransactionId,
) -> Result<Request<'static>, RequestParseError> {
    let too_short = RequestParseError::AnnounceTooShort {
        connection_id,
        transaction_id,
    };
    let parsed = (|| {
        Some(AnnounceRequest {
            connection_id,
            transaction_id,
            info_hash: InfoHash(r.array()?),
            peer_id: PeerId(r.array()?),
            bytes_downloaded: r.i64()?,
            bytes_left: r.i64()?,
            bytes_uploaded: r.i64()?,
            event: AnnounceEvent::from_wire(r.i32()?),
            ip_address: match r.u32()? {
                0 => None,
                ip => Some(Ipv4Addr::from(ip)),
            },
            key: r.u32()?,
            peers_wanted: r.i32()?,
            port: r.u16()?,
        })
    })();
    parsed.map(Request::Announce).ok_or(too_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn connect_bytes() -> Vec<u8> {
        let mut b = vec![0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80];
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        b
    }

    fn announce_bytes() -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // connection id
        b.extend_from_slice(&[0, 0, 0, 1]); // announce
        b.extend_from_slice(&[0, 0, 0, 9]); // transaction id
        b.extend_from_slice(&[0xaa; 20]);
        b.extend_from_slice(&[0xbb; 20]);
        b.extend_from_slice(&100i64.to_be_bytes());
        b.extend_from_slice(&200i64.to_be_bytes());
        b.extend_from_slice(&300i64.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 2]); // started
        b.extend_from_slice(&[10, 0, 0, 1]);
        b.extend_from_slice(&[0, 0, 0x12, 0x34]);
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&[0x1a, 0xe1]); // 6881
        b
    }

    #[test]
    fn connect_vector() {
        let bytes = connect_bytes();
        let parsed = Request::parse(&bytes, 10).expect("parses");
        assert_eq!(
            parsed,
            Request::Connect(ConnectRequest {
                transaction_id: TransactionId(0xdeadbeefu32 as i32)
            })
        );
        let mut out = vec![];
        parsed.write(&mut out).expect("writes");
        assert_eq!(out, bytes);
    }

    #[test]
    fn announce_vector() {
        let bytes = announce_bytes();
        assert_eq!(bytes.len(), 98);
        let Ok(Request::Announce(a)) = Request::parse(&bytes, 10) else {
            panic!("not an announce");
        };
        assert_eq!(a.connection_id, ConnectionId(0x0102030405060708));
        assert_eq!(a.transaction_id, TransactionId(9));
        assert_eq!(a.info_hash, InfoHash([0xaa; 20]));
        assert_eq!(a.peer_id, PeerId([0xbb; 20]));
        assert_eq!(
            (a.bytes_downloaded, a.bytes_left, a.bytes_uploaded),
            (100, 200, 300)
        );
        assert_eq!(a.event, AnnounceEvent::Started);
        assert_eq!(a.ip_address, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(a.key, 0x1234);
        assert_eq!(a.peers_wanted, -1);
        assert_eq!(a.port, 6881);
        let mut out = vec![];
        Request::Announce(a).write(&mut out).expect("writes");
        assert_eq!(out, bytes);
    }

    #[test]
    fn bep41_options_are_ignored() {
        let mut bytes = announce_bytes();
        bytes.extend_from_slice(&[0x2, 0x5, b'/', b'a', b'n', b'n', b'o', 0x1, 0x0]);
        assert!(matches!(
            Request::parse(&bytes, 10),
            Ok(Request::Announce(_))
        ));
    }

    #[test]
    fn scrape_vector_and_limits() {
        let mut bytes = vec![0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend_from_slice(&[1; 20]);
        bytes.extend_from_slice(&[2; 20]);
        let Ok(Request::Scrape(s)) = Request::parse(&bytes, 2) else {
            panic!("not a scrape");
        };
        assert_eq!(s.connection_id, ConnectionId(7));
        assert_eq!(s.info_hashes.len(), 2);
        assert_eq!(s.info_hashes.get(1), Some(InfoHash([2; 20])));
        assert_eq!(
            s.info_hashes.iter().collect::<Vec<_>>(),
            vec![InfoHash([1; 20]), InfoHash([2; 20])]
        );
        let err = Request::parse(&bytes, 1).expect_err("too many");
        assert!(matches!(err, RequestParseError::ScrapeTooManyHashes { .. }));
        assert_eq!(err.transaction_id(), Some(TransactionId(3)));
        assert_eq!(err.connection_id(), Some(ConnectionId(7)));
        let err = Request::parse(&bytes[..16], 5).expect_err("empty");
        assert!(matches!(err, RequestParseError::ScrapeEmpty { .. }));
        let err = Request::parse(&bytes[..30], 5).expect_err("partial");
        assert!(matches!(err, RequestParseError::ScrapePartialHash { .. }));
    }

    #[test]
    fn errors_say_whether_to_reply() {
        let err = Request::parse(&[0; 15], 5).expect_err("short");
        assert_eq!(err, RequestParseError::TooShort(15));
        assert_eq!(err.transaction_id(), None);
        let mut bad_magic = connect_bytes();
        bad_magic[0] = 1;
        let err = Request::parse(&bad_magic, 5).expect_err("magic");
        assert_eq!(err, RequestParseError::InvalidProtocolId);
        assert_eq!(err.transaction_id(), None);
        let mut unknown = connect_bytes();
        unknown[11] = 9;
        let err = Request::parse(&unknown, 5).expect_err("action");
        assert!(matches!(
            err,
            RequestParseError::UnknownAction { action: 9, .. }
        ));
        assert!(err.transaction_id().is_some());
        let short = &announce_bytes()[..97];
        let err = Request::parse(short, 5).expect_err("short announce");
        assert!(matches!(err, RequestParseError::AnnounceTooShort { .. }));
        assert_eq!(err.transaction_id(), Some(TransactionId(9)));
        for err in [
            err,
            RequestParseError::TooShort(0),
            RequestParseError::InvalidProtocolId,
        ] {
            assert!(err.message().len() <= 40);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for valid in [connect_bytes(), announce_bytes()] {
            for len in 0..valid.len() {
                let _ = Request::parse(&valid[..len], 5);
            }
        }
        for len in 0..=120 {
            let _ = Request::parse(&vec![0xff; len], 5);
        }
    }

    fn arb_announce() -> impl Strategy<Value = AnnounceRequest> {
        (
            any::<(i64, i32, [u8; 20], [u8; 20], i64, i64, i64)>(),
            (
                0i32..4,
                any::<u32>(),
                any::<u32>(),
                any::<i32>(),
                any::<u16>(),
            ),
        )
            .prop_map(|((c, t, h, p, d, l, u), (e, ip, key, want, port))| {
                AnnounceRequest {
                    connection_id: ConnectionId(c),
                    transaction_id: TransactionId(t),
                    info_hash: InfoHash(h),
                    peer_id: PeerId(p),
                    bytes_downloaded: d,
                    bytes_left: l,
                    bytes_uploaded: u,
                    event: AnnounceEvent::from_wire(e),
                    ip_address: (ip != 0).then(|| Ipv4Addr::from(ip)),
                    key,
                    peers_wanted: want,
                    port,
                }
            })
    }

    proptest! {
        #[test]
        fn announce_round_trip(a in arb_announce()) {
            let mut bytes = vec![];
            Request::Announce(a).write(&mut bytes).expect("writes");
            prop_assert_eq!(Request::parse(&bytes, 1), Ok(Request::Announce(a)));
        }

        #[test]
        fn connect_round_trip(t in any::<i32>()) {
            let r = Request::Connect(ConnectRequest { transaction_id: TransactionId(t) });
            let mut bytes = vec![];
            r.write(&mut bytes).expect("writes");
            prop_assert_eq!(Request::parse(&bytes, 1), Ok(r));
        }

        #[test]
        fn scrape_round_trip(c in any::<i64>(), t in any::<i32>(), hashes in proptest::collection::vec(any::<[u8; 20]>(), 1..10)) {
            let flat: Vec<u8> = hashes.iter().flatten().copied().collect();
            let r = Request::Scrape(ScrapeRequest {
                connection_id: ConnectionId(c),
                transaction_id: TransactionId(t),
                info_hashes: InfoHashes::from_bytes(&flat).expect("whole hashes"),
            });
            let mut bytes = vec![];
            r.write(&mut bytes).expect("writes");
            prop_assert_eq!(Request::parse(&bytes, 10), Ok(r));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::parse(&bytes, 5);
        }
    }
}
