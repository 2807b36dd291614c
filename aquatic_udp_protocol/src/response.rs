//! Responses: written into the caller's buffer by the tracker, parsed by clients.

use std::{
    io::{self, Write},
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::{common::Reader, ConnectionId, ResponseParseError, TransactionId};

/// One peer of an announce response: 6 bytes (IPv4) or 18 bytes (IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponsePeer<A> {
    /// The peer's address.
    pub ip_address: A,
    /// The peer's port.
    pub port: u16,
}

/// Figures for one torrent of a scrape response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TorrentScrapeStatistics {
    /// Peers with the whole torrent.
    pub seeders: i32,
    /// Completed downloads.
    pub completed: i32,
    /// Peers still downloading.
    pub leechers: i32,
}

impl<A> From<aquatic_common::SelectedPeer<A>> for ResponsePeer<A> {
    fn from(p: aquatic_common::SelectedPeer<A>) -> Self {
        Self {
            ip_address: p.ip_address,
            port: p.port,
        }
    }
}

/// A count as BEP 15's signed 32-bit field, saturating.
fn wire_count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl From<aquatic_common::ScrapeStats> for TorrentScrapeStatistics {
    fn from(s: aquatic_common::ScrapeStats) -> Self {
        Self {
            seeders: wire_count(s.seeders),
            completed: i32::try_from(s.completed).unwrap_or(i32::MAX),
            leechers: wire_count(s.leechers),
        }
    }
}

/// Answer to a connect request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectResponse {
    /// From the request.
    pub transaction_id: TransactionId,
    /// To be sent with announces and scrapes.
    pub connection_id: ConnectionId,
}

/// Answer to an announce; `A` is `Ipv4Addr` or `Ipv6Addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceResponse<'a, A> {
    /// From the request.
    pub transaction_id: TransactionId,
    /// Seconds until the next announce.
    pub announce_interval: i32,
    /// Leechers of the torrent.
    pub leechers: i32,
    /// Seeders of the torrent.
    pub seeders: i32,
    /// Peers for the client.
    pub peers: &'a [ResponsePeer<A>],
}

impl<'a, A> AnnounceResponse<'a, A> {
    /// The response to an announce the shard answered with `outcome`.
    pub fn new(
        transaction_id: TransactionId,
        announce_interval: u32,
        outcome: &aquatic_common::AnnounceOutcome,
        peers: &'a [ResponsePeer<A>],
    ) -> Self {
        Self {
            transaction_id,
            announce_interval: i32::try_from(announce_interval).unwrap_or(i32::MAX),
            leechers: wire_count(outcome.leechers),
            seeders: wire_count(outcome.seeders),
            peers,
        }
    }
}

/// Answer to a scrape, in the order of the request's hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrapeResponse<'a> {
    /// From the request.
    pub transaction_id: TransactionId,
    /// One entry per requested hash.
    pub torrent_stats: &'a [TorrentScrapeStatistics],
}

/// An error for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    /// From the request.
    pub transaction_id: TransactionId,
    /// What went wrong.
    pub message: &'a str,
}

/// Any response, borrowing its lists so that writing allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// Action 0.
    Connect(ConnectResponse),
    /// Action 1 with 6-byte peers.
    AnnounceIpv4(AnnounceResponse<'a, Ipv4Addr>),
    /// Action 1 with 18-byte peers.
    AnnounceIpv6(AnnounceResponse<'a, Ipv6Addr>),
    /// Action 2.
    Scrape(ScrapeResponse<'a>),
    /// Action 3.
    Error(ErrorResponse<'a>),
}

fn write_announce_head<A>(w: &mut impl Write, r: &AnnounceResponse<'_, A>) -> io::Result<()> {
    w.write_all(&1i32.to_be_bytes())?;
    w.write_all(&r.transaction_id.0.to_be_bytes())?;
    w.write_all(&r.announce_interval.to_be_bytes())?;
    w.write_all(&r.leechers.to_be_bytes())?;
    w.write_all(&r.seeders.to_be_bytes())
}

impl Response<'_> {
    /// Writes the datagram.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Self::Connect(r) => {
                w.write_all(&0i32.to_be_bytes())?;
                w.write_all(&r.transaction_id.0.to_be_bytes())?;
                w.write_all(&r.connection_id.0.to_be_bytes())
            }
            Self::AnnounceIpv4(r) => {
                write_announce_head(w, r)?;
                for p in r.peers {
                    w.write_all(&p.ip_address.octets())?;
                    w.write_all(&p.port.to_be_bytes())?;
                }
                Ok(())
            }
            Self::AnnounceIpv6(r) => {
                write_announce_head(w, r)?;
                for p in r.peers {
                    w.write_all(&p.ip_address.octets())?;
                    w.write_all(&p.port.to_be_bytes())?;
                }
                Ok(())
            }
            Self::Scrape(r) => {
                w.write_all(&2i32.to_be_bytes())?;
                w.write_all(&r.transaction_id.0.to_be_bytes())?;
                for s in r.torrent_stats {
                    w.write_all(&s.seeders.to_be_bytes())?;
                    w.write_all(&s.completed.to_be_bytes())?;
                    w.write_all(&s.leechers.to_be_bytes())?;
                }
                Ok(())
            }
            Self::Error(r) => {
                w.write_all(&3i32.to_be_bytes())?;
                w.write_all(&r.transaction_id.0.to_be_bytes())?;
                w.write_all(r.message.as_bytes())
            }
        }
    }
}

/// A response parsed by a client, owning its lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedResponse {
    /// Action 0.
    Connect(ConnectResponse),
    /// Action 1 over IPv4.
    AnnounceIpv4 {
        /// From the request.
        transaction_id: TransactionId,
        /// Seconds until the next announce.
        announce_interval: i32,
        /// Leechers.
        leechers: i32,
        /// Seeders.
        seeders: i32,
        /// Peers.
        peers: Vec<ResponsePeer<Ipv4Addr>>,
    },
    /// Action 1 over IPv6.
    AnnounceIpv6 {
        /// From the request.
        transaction_id: TransactionId,
        /// Seconds until the next announce.
        announce_interval: i32,
        /// Leechers.
        leechers: i32,
        /// Seeders.
        seeders: i32,
        /// Peers.
        peers: Vec<ResponsePeer<Ipv6Addr>>,
    },
    /// Action 2.
    Scrape {
        /// From the request.
        transaction_id: TransactionId,
        /// One entry per requested hash.
        torrent_stats: Vec<TorrentScrapeStatistics>,
    },
    /// Action 3.
    Error {
        /// From the request.
        transaction_id: TransactionId,
        /// What went wrong (invalid UTF-8 replaced).
        message: String,
    },
}

impl OwnedResponse {
    /// Parses a response datagram; `ipv6` says whether announce peers are 18 bytes.
    pub fn parse(bytes: &[u8], ipv6: bool) -> Result<Self, ResponseParseError> {
        let mut r = Reader::new(bytes);
        let (Some(action), Some(transaction_id)) = (r.i32(), r.i32()) else {
            return Err(ResponseParseError::TooShort);
        };
        let transaction_id = TransactionId(transaction_id);
        match action {
            0 => {
                let connection_id = ConnectionId(r.i64().ok_or(ResponseParseError::TooShort)?);
                Ok(Self::Connect(ConnectResponse {
                    transaction_id,
                    connection_id,
                }))
            }
            1 => {
                let (Some(announce_interval), Some(leechers), Some(seeders)) =
                    (r.i32(), r.i32(), r.i32())
                else {
                    return Err(ResponseParseError::TooShort);
                };
                let rest = r.rest();
                let entry = if ipv6 { 18 } else { 6 };
                if rest.len() % entry != 0 {
                    return Err(ResponseParseError::PartialEntry);
                }
                if ipv6 {
                    let peers = rest
                        .chunks_exact(18)
                        .map(|c| {
                            let mut ip = [0u8; 16];
                            ip.copy_from_slice(&c[..16]);
                            ResponsePeer {
                                ip_address: Ipv6Addr::from(ip),
                                port: u16::from_be_bytes([c[16], c[17]]),
                            }
                        })
                        .collect();
                    Ok(Self::AnnounceIpv6 {
                        transaction_id,
                        announce_interval,
                        leechers,
                        seeders,
                        peers,
                    })
                } else {
                    let peers = rest
                        .chunks_exact(6)
                        .map(|c| ResponsePeer {
                            ip_address: Ipv4Addr::new(c[0], c[1], c[2], c[3]),
                            port: u16::from_be_bytes([c[4], c[5]]),
                        })
                        .collect();
                    Ok(Self::AnnounceIpv4 {
                        transaction_id,
                        announce_interval,
                        leechers,
                        seeders,
                        peers,
                    })
                }
            }
            2 => {
                let rest = r.rest();
                if rest.len() % 12 != 0 {
                    return Err(ResponseParseError::PartialEntry);
                }
                let torrent_stats = rest
                    .chunks_exact(12)
                    .map(|c| {
                        let mut r = Reader::new(c);
                        TorrentScrapeStatistics {
                            seeders: r.i32().unwrap_or(0),
                            completed: r.i32().unwrap_or(0),
                            leechers: r.i32().unwrap_or(0),
                        }
                    })
                    .collect();
                Ok(Self::Scrape {
                    transaction_id,
                    torrent_stats,
                })
            }
            3 => Ok(Self::Error {
                transaction_id,
                message: String::from_utf8_lossy(r.rest()).into_owned(),
            }),
            other => Err(ResponseParseError::UnknownAction(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shard_results_become_wire_fields_saturating() {
        let outcome = aquatic_common::AnnounceOutcome {
            seeders: usize::MAX,
            leechers: 3,
        };
        let peers = [ResponsePeer::from(aquatic_common::SelectedPeer {
            peer_id: Some(aquatic_common::PeerId([1; 20])),
            ip_address: Ipv4Addr::new(1, 2, 3, 4),
            port: 5,
        })];
        let r = AnnounceResponse::new(TransactionId(7), u32::MAX, &outcome, &peers);
        assert_eq!(
            (r.seeders, r.leechers, r.announce_interval),
            (i32::MAX, 3, i32::MAX)
        );
        assert_eq!(
            r.peers[0],
            ResponsePeer {
                ip_address: Ipv4Addr::new(1, 2, 3, 4),
                port: 5
            }
        );
        let stats = TorrentScrapeStatistics::from(aquatic_common::ScrapeStats {
            seeders: 1,
            leechers: usize::MAX,
            completed: u32::MAX,
        });
        assert_eq!(
            stats,
            TorrentScrapeStatistics {
                seeders: 1,
                completed: i32::MAX,
                leechers: i32::MAX
            }
        );
    }

    fn bytes(response: &Response<'_>) -> Vec<u8> {
        let mut out = vec![];
        response.write(&mut out).expect("writes");
        out
    }

    #[test]
    fn connect_vector() {
        let r = Response::Connect(ConnectResponse {
            transaction_id: TransactionId(5),
            connection_id: ConnectionId(0x0102030405060708),
        });
        assert_eq!(bytes(&r), [0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn announce_vectors() {
        let peers = [ResponsePeer {
            ip_address: Ipv4Addr::new(1, 2, 3, 4),
            port: 0x1ae1,
        }];
        let r = Response::AnnounceIpv4(AnnounceResponse {
            transaction_id: TransactionId(1),
            announce_interval: 1800,
            leechers: 2,
            seeders: 3,
            peers: &peers,
        });
        assert_eq!(
            bytes(&r),
            [
                0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x07, 0x08, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 0x1a,
                0xe1
            ]
        );
        let peers6 = [ResponsePeer {
            ip_address: Ipv6Addr::LOCALHOST,
            port: 80,
        }];
        let r = Response::AnnounceIpv6(AnnounceResponse {
            transaction_id: TransactionId(1),
            announce_interval: 1,
            leechers: 0,
            seeders: 0,
            peers: &peers6,
        });
        let b = bytes(&r);
        assert_eq!(b.len(), 20 + 18);
        assert_eq!(
            &b[20..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80]
        );
    }

    #[test]
    fn scrape_and_error_vectors() {
        let stats = [TorrentScrapeStatistics {
            seeders: 1,
            completed: 2,
            leechers: 3,
        }];
        let r = Response::Scrape(ScrapeResponse {
            transaction_id: TransactionId(7),
            torrent_stats: &stats,
        });
        assert_eq!(
            bytes(&r),
            [0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]
        );
        let r = Response::Error(ErrorResponse {
            transaction_id: TransactionId(7),
            message: "no",
        });
        assert_eq!(bytes(&r), [0, 0, 0, 3, 0, 0, 0, 7, b'n', b'o']);
    }

    #[test]
    fn writing_into_a_full_buffer_fails_cleanly() {
        let r = Response::Error(ErrorResponse {
            transaction_id: TransactionId(7),
            message: "long message",
        });
        let mut buf = [0u8; 10];
        assert!(r.write(&mut std::io::Cursor::new(&mut buf[..])).is_err());
    }

    #[test]
    fn bad_responses() {
        assert_eq!(
            OwnedResponse::parse(&[0; 7], false),
            Err(ResponseParseError::TooShort)
        );
        assert_eq!(
            OwnedResponse::parse(&[0, 0, 0, 9, 0, 0, 0, 0], false),
            Err(ResponseParseError::UnknownAction(9))
        );
        let mut announce = vec![0, 0, 0, 1, 0, 0, 0, 0];
        announce.extend_from_slice(&[0; 12 + 5]);
        assert_eq!(
            OwnedResponse::parse(&announce, false),
            Err(ResponseParseError::PartialEntry)
        );
    }

    proptest! {
        #[test]
        fn announce_round_trip(t in any::<i32>(), i in any::<i32>(), l in any::<i32>(), s in any::<i32>(),
                               v4 in proptest::collection::vec(any::<(u32, u16)>(), 0..50),
                               v6 in proptest::collection::vec(any::<(u128, u16)>(), 0..50)) {
            let peers: Vec<_> = v4.iter().map(|&(ip, port)| ResponsePeer { ip_address: Ipv4Addr::from(ip), port }).collect();
            let r = Response::AnnounceIpv4(AnnounceResponse { transaction_id: TransactionId(t), announce_interval: i, leechers: l, seeders: s, peers: &peers });
            prop_assert_eq!(
                OwnedResponse::parse(&bytes(&r), false),
                Ok(OwnedResponse::AnnounceIpv4 { transaction_id: TransactionId(t), announce_interval: i, leechers: l, seeders: s, peers: peers.clone() })
            );
            let peers: Vec<_> = v6.iter().map(|&(ip, port)| ResponsePeer { ip_address: Ipv6Addr::from(ip), port }).collect();
            let r = Response::AnnounceIpv6(AnnounceResponse { transaction_id: TransactionId(t), announce_interval: i, leechers: l, seeders: s, peers: &peers });
            prop_assert_eq!(
                OwnedResponse::parse(&bytes(&r), true),
                Ok(OwnedResponse::AnnounceIpv6 { transaction_id: TransactionId(t), announce_interval: i, leechers: l, seeders: s, peers: peers.clone() })
            );
        }

        #[test]
        fn other_round_trips(t in any::<i32>(), c in any::<i64>(), msg in "[ -~]{0,40}",
                             stats in proptest::collection::vec(any::<(i32, i32, i32)>(), 0..70)) {
            let r = Response::Connect(ConnectResponse { transaction_id: TransactionId(t), connection_id: ConnectionId(c) });
            prop_assert_eq!(OwnedResponse::parse(&bytes(&r), false), Ok(OwnedResponse::Connect(ConnectResponse { transaction_id: TransactionId(t), connection_id: ConnectionId(c) })));
            let r = Response::Error(ErrorResponse { transaction_id: TransactionId(t), message: &msg });
            prop_assert_eq!(OwnedResponse::parse(&bytes(&r), false), Ok(OwnedResponse::Error { transaction_id: TransactionId(t), message: msg.clone() }));
            let stats: Vec<_> = stats.iter().map(|&(s, c, l)| TorrentScrapeStatistics { seeders: s, completed: c, leechers: l }).collect();
            let r = Response::Scrape(ScrapeResponse { transaction_id: TransactionId(t), torrent_stats: &stats });
            prop_assert_eq!(OwnedResponse::parse(&bytes(&r), false), Ok(OwnedResponse::Scrape { transaction_id: TransactionId(t), torrent_stats: stats.clone() }));
        }

        #[test]
        fn random_responses_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), ipv6 in any::<bool>()) {
            let _ = OwnedResponse::parse(&bytes, ipv6);
        }
    }
}
