//! A small BEP 15 client for the end-to-end tests.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use aquatic_udp_protocol::{
    AnnounceEvent, AnnounceRequest, ConnectRequest, ConnectionId, InfoHash, OwnedResponse, PeerId,
    Request, ScrapeRequest, TransactionId,
};

pub struct Client {
    pub socket: UdpSocket,
    tracker: SocketAddr,
    pub connection_id: ConnectionId,
    next_tid: i32,
}

impl Client {
    pub fn new(tracker: SocketAddr) -> Client {
        let bind: SocketAddr = if tracker.is_ipv6() {
            "[::1]:0".parse().expect("addr")
        } else {
            "127.0.0.1:0".parse().expect("addr")
        };
        let socket = UdpSocket::bind(bind).expect("bind client");
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut client = Client {
            socket,
            tracker,
            connection_id: ConnectionId(0),
            next_tid: 1,
        };
        let tid = client.tid();
        match client.request(&Request::Connect(ConnectRequest {
            transaction_id: tid,
        })) {
            OwnedResponse::Connect(r) => {
                assert_eq!(r.transaction_id, tid);
                client.connection_id = r.connection_id;
            }
            other => panic!("expected connect response, got {other:?}"),
        }
        client
    }

    pub fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        TransactionId(self.next_tid)
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.tracker).expect("send");
    }

    pub fn recv_raw(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        match self.socket.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    /// Sends `request` and returns the reply, sending it again after each
    /// read timeout, as BEP 15 clients do: UDP may drop a datagram (a
    /// socket buffer full after a flood, a loaded machine), and a test
    /// must not mistake that for the tracker's silence.
    pub fn request(&self, request: &Request<'_>) -> OwnedResponse {
        const ATTEMPTS: usize = 3;
        let mut bytes = Vec::new();
        request.write(&mut bytes).expect("write request");
        // Every request carries its transaction id at 12..16, every
        // response at 4..8: a late answer to an earlier attempt or request
        // is skipped, never taken for this one.
        let transaction_id = bytes[12..16].to_vec();
        for _ in 0..ATTEMPTS {
            self.send_raw(&bytes);
            while let Some(reply) = self.recv_raw() {
                if reply.get(4..8) == Some(&transaction_id[..]) {
                    return OwnedResponse::parse(&reply, self.tracker.is_ipv6())
                        .expect("a valid response");
                }
            }
        }
        panic!("no reply to {ATTEMPTS} attempts, each within the read timeout");
    }

    pub fn announce(
        &mut self,
        hash: [u8; 20],
        peer: u8,
        port: u16,
        event: AnnounceEvent,
        left: i64,
    ) -> OwnedResponse {
        self.announce_wanting(hash, peer, port, event, left, -1)
    }

    /// Fills `hash`'s swarm with `peers` leechers announced from this
    /// client's address, each on its own port (peers are told apart by
    /// id, address and port).
    pub fn fill_swarm(&mut self, hash: [u8; 20], peers: u16) {
        for i in 0..peers {
            let peer = (i % 256) as u8;
            self.announce(hash, peer, 10_000 + i, AnnounceEvent::Started, 10);
        }
    }

    /// An announce asking for `numwant` peers (-1: the tracker's default).
    pub fn announce_wanting(
        &mut self,
        hash: [u8; 20],
        peer: u8,
        port: u16,
        event: AnnounceEvent,
        left: i64,
        numwant: i32,
    ) -> OwnedResponse {
        let request = self.announce_request(hash, peer, port, event, left, numwant);
        self.request(&request)
    }

    /// The announce [`Client::announce_wanting`] sends, with a fresh
    /// transaction id, for tests that send it themselves.
    pub fn announce_request(
        &mut self,
        hash: [u8; 20],
        peer: u8,
        port: u16,
        event: AnnounceEvent,
        left: i64,
        numwant: i32,
    ) -> Request<'static> {
        let tid = self.tid();
        Request::Announce(AnnounceRequest {
            connection_id: self.connection_id,
            transaction_id: tid,
            info_hash: InfoHash(hash),
            peer_id: PeerId([peer; 20]),
            bytes_downloaded: 0,
            bytes_left: left,
            bytes_uploaded: 0,
            event,
            ip_address: None,
            key: 0,
            peers_wanted: numwant,
            port,
        })
    }

    /// The bytes of a scrape of `hashes`, with a fresh transaction id.
    pub fn scrape_bytes(&mut self, hashes: &[[u8; 20]]) -> (TransactionId, Vec<u8>) {
        let tid = self.tid();
        let flat: Vec<u8> = hashes.iter().flatten().copied().collect();
        let mut bytes = Vec::new();
        // Built by hand: the request type borrows its hashes from a datagram.
        bytes.extend_from_slice(&self.connection_id.0.to_be_bytes());
        bytes.extend_from_slice(&2i32.to_be_bytes());
        bytes.extend_from_slice(&tid.0.to_be_bytes());
        bytes.extend_from_slice(&flat);
        (tid, bytes)
    }

    pub fn scrape(&mut self, hashes: &[[u8; 20]]) -> Vec<(i32, i32, i32)> {
        let (tid, bytes) = self.scrape_bytes(hashes);
        let parsed = Request::parse(&bytes, 100).expect("valid scrape");
        assert!(matches!(parsed, Request::Scrape(ScrapeRequest { .. })));
        self.send_raw(&bytes);
        let reply = self.recv_raw().expect("scrape reply");
        match OwnedResponse::parse(&reply, self.tracker.is_ipv6()).expect("valid") {
            OwnedResponse::Scrape {
                transaction_id,
                torrent_stats,
            } => {
                assert_eq!(transaction_id, tid);
                torrent_stats
                    .iter()
                    .map(|s| (s.seeders, s.leechers, s.completed))
                    .collect()
            }
            other => panic!("expected scrape response, got {other:?}"),
        }
    }
}

pub fn peers_v4(r: &OwnedResponse) -> Vec<u16> {
    match r {
        OwnedResponse::AnnounceIpv4 { peers, .. } => peers.iter().map(|p| p.port).collect(),
        other => panic!("expected an IPv4 announce response, got {other:?}"),
    }
}

pub fn counts(r: &OwnedResponse) -> (i32, i32) {
    match r {
        OwnedResponse::AnnounceIpv4 {
            seeders, leechers, ..
        }
        | OwnedResponse::AnnounceIpv6 {
            seeders, leechers, ..
        } => (*seeders, *leechers),
        other => panic!("expected an announce response, got {other:?}"),
    }
}
