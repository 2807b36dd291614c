//! Micro-benchmarks of the pure functions on the request path:
//! `cargo bench -p aquatic --bench hot_paths`.
//!
//! Parsing and writing for each protocol, peer selection on swarms of 10,
//! 1 000 and 100 000 peers, shard routing, and sealing/opening a TLS 1.3
//! record with ring's stock AEAD and with WSS's raw-key one
//! (`net::lazy_aead`, which expands the key per record). Figures are for comparing
//! two versions of this code on one machine, never for tests.

use std::{
    hint::black_box,
    net::{Ipv4Addr, Ipv6Addr},
};

use aquatic_common::{
    shard_of,
    swarm::{PeerStatus, Swarm, SwarmPeer},
    time::{SecondsSinceStart, ValidUntil},
    InfoHash, PeerId,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{rngs::SmallRng, Rng, SeedableRng};

fn udp(c: &mut Criterion) {
    use aquatic_udp_protocol::*;
    let mut announce = Vec::new();
    Request::Announce(AnnounceRequest {
        connection_id: ConnectionId(7),
        transaction_id: TransactionId(9),
        info_hash: InfoHash([1; 20]),
        peer_id: PeerId([2; 20]),
        bytes_downloaded: 0,
        bytes_left: 10,
        bytes_uploaded: 0,
        event: AnnounceEvent::Started,
        ip_address: None,
        key: 0,
        peers_wanted: 50,
        port: 6881,
    })
    .write(&mut announce)
    .expect("write");
    c.bench_function("udp/parse announce", |b| {
        b.iter(|| Request::parse(black_box(&announce), 70).is_ok())
    });
    let peers: Vec<_> = (0..50u16)
        .map(|i| ResponsePeer {
            ip_address: Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8),
            port: 6881 + i,
        })
        .collect();
    let response = Response::AnnounceIpv4(AnnounceResponse {
        transaction_id: TransactionId(9),
        announce_interval: 1800,
        leechers: 10,
        seeders: 40,
        peers: &peers,
    });
    let mut out = vec![0u8; 2048];
    c.bench_function("udp/write announce response (50 peers)", |b| {
        b.iter(|| {
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            black_box(&response).write(&mut cursor).is_ok()
        })
    });
}

fn http(c: &mut Criterion) {
    use aquatic_http_protocol::*;
    let request = format!(
        "GET /announce?info_hash={}&peer_id=-lt2080-abcdefghijkl&port=6881&uploaded=0&downloaded=0&left=100&corrupt=0&key=1A2B3C4D&event=started&numwant=200&compact=1&no_peer_id=1 HTTP/1.1\r\nHost: tracker.example.org:3001\r\nUser-Agent: libtorrent/2.0.8\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        "%01".repeat(20)
    );
    let limits = ParseLimits::default();
    c.bench_function("http/parse announce (libtorrent)", |b| {
        b.iter(|| {
            matches!(
                parse_request(black_box(request.as_bytes()), &limits),
                Ok(Parsed::Complete(_))
            )
        })
    });
    let peers: Vec<_> = (0..50u16)
        .map(|i| ResponsePeer {
            peer_id: Some(PeerId([i as u8; 20])),
            ip_address: Ipv4Addr::new(10, 0, 0, i as u8),
            port: 6881 + i,
        })
        .collect();
    let no_v6: Vec<ResponsePeer<Ipv6Addr>> = Vec::new();
    let response = Response::Announce(AnnounceResponse {
        interval: 1800,
        complete: 40,
        incomplete: 10,
        peers_v4: &peers,
        peers_v6: &no_v6,
        compact: true,
        no_peer_id: true,
        warning: None,
    });
    let mut out = Vec::with_capacity(1024);
    c.bench_function("http/write compact announce response (50 peers)", |b| {
        b.iter(|| {
            out.clear();
            black_box(&response).write_http(&mut out, 200, true).is_ok()
        })
    });
}

fn ws(c: &mut Criterion) {
    use aquatic_ws_protocol::*;
    let message = r#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","peer_id":"-WW0105-abcdefghijkl","numwant":5,"uploaded":0,"downloaded":0,"left":1234,"event":"started","offers":[{"offer":{"type":"offer","sdp":"v=0\r\no=- 123 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"},"offer_id":"bbbbbbbbbbbbbbbbbbbb"}]}"#;
    c.bench_function("ws/parse announce with one offer", |b| {
        b.iter(|| InMessage::parse_text(black_box(message)).is_ok())
    });
    // As webtorrent sends them: ids of random bytes (half of them above
    // U+007F, some escaped) and ten offers, as aquatic_ws_load_test does.
    // Many different messages, so that branch predictors cannot learn one.
    let mut rng = SmallRng::seed_from_u64(3);
    let sdp = r#"{"type":"offer","sdp":"v=0\r\no=- 123 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}"#;
    let random_texts: Vec<String> = (0..256)
        .map(|_| {
            let announce = InMessage::Announce(AnnounceRequest {
                info_hash: InfoHash(rng.gen()),
                peer_id: PeerId(rng.gen()),
                event: AnnounceEvent::Update,
                bytes_left: Some(0),
                numwant: Some(10),
                offers: Some(
                    (0..10)
                        .map(|_| AnnounceOffer {
                            offer_id: OfferId(rng.gen()),
                            offer: serde_json::value::RawValue::from_string(sdp.to_owned())
                                .expect("raw"),
                        })
                        .collect(),
                ),
                answer: None,
                to_peer_id: None,
                offer_id: None,
            });
            let mut written = Vec::new();
            announce.write(&mut written).expect("write");
            String::from_utf8(written).expect("utf-8")
        })
        .collect();
    let mut next = random_texts.iter().cycle();
    c.bench_function("ws/parse announce with ten offers, random ids", |b| {
        b.iter(|| InMessage::parse_text(black_box(next.next().map_or("", String::as_str))).is_ok())
    });
    let offer =
        serde_json::value::RawValue::from_string(r#"{"type":"offer","sdp":"v=0\r\n"}"#.to_owned())
            .expect("raw");
    let out_message = OutMessage::Offer(OfferMessage {
        info_hash: InfoHash([0xff; 20]),
        peer_id: PeerId([0x41; 20]),
        offer_id: OfferId([0x80; 20]),
        offer: &offer,
    });
    let mut out = Vec::with_capacity(512);
    c.bench_function("ws/write relayed offer", |b| {
        b.iter(|| {
            out.clear();
            black_box(&out_message).write(&mut out).is_ok()
        })
    });
}

#[derive(Clone)]
struct Peer(ValidUntil);

impl SwarmPeer for Peer {
    fn valid_until(&self) -> ValidUntil {
        self.0
    }
}

fn peer_id(n: u32) -> PeerId {
    let mut id = [0u8; 20];
    id[..4].copy_from_slice(&n.to_be_bytes());
    PeerId(id)
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("swarm/select 50 peers");
    for size in [10u32, 1_000, 100_000] {
        let mut swarm: Swarm<Peer> = Swarm::default();
        for n in 0..size {
            let status = if n % 4 == 0 {
                PeerStatus::Seeding
            } else {
                PeerStatus::Leeching
            };
            swarm.upsert(peer_id(n), Peer(ValidUntil(SecondsSinceStart(100))), status);
        }
        let mut rng = SmallRng::seed_from_u64(1);
        let requester = peer_id(size / 2);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                let mut count = 0usize;
                swarm.select_peers(&mut rng, &requester, false, 50, |_, _| count += 1);
                count
            })
        });
    }
    group.finish();
    c.bench_function("swarm/re-announce (upsert, 1000 peers)", |b| {
        let mut swarm: Swarm<Peer> = Swarm::default();
        for n in 0..1000 {
            swarm.upsert(
                peer_id(n),
                Peer(ValidUntil(SecondsSinceStart(100))),
                PeerStatus::Leeching,
            );
        }
        let mut n = 0;
        b.iter(|| {
            n = (n + 1) % 1000;
            swarm.upsert(
                peer_id(n),
                Peer(ValidUntil(SecondsSinceStart(200))),
                PeerStatus::Leeching,
            )
        })
    });
}

fn routing(c: &mut Criterion) {
    let hash = InfoHash([0x5a; 20]);
    c.bench_function("shard_of (16 shards)", |b| {
        b.iter(|| shard_of(black_box(&hash), black_box(16)))
    });
}

/// One WebTorrent-sized record (300 bytes) sealed, then opened, per
/// iteration, for each TLS 1.3 suite: ring's stock AEAD (key expanded once)
/// against `net::lazy_aead` (key expanded per record).
fn tls_records(c: &mut Criterion) {
    use rustls::{
        crypto::cipher::{InboundOpaqueMessage, OutboundChunks, OutboundPlainMessage},
        ContentType, ProtocolVersion, SupportedCipherSuite,
    };
    let lazy = aquatic::net::lazy_aead::provider();
    let stock = rustls::crypto::ring::default_provider();
    let data = [0x61u8; 300];
    let tls13 = |p: &rustls::crypto::CryptoProvider| {
        p.cipher_suites
            .iter()
            .filter_map(|s| match s {
                SupportedCipherSuite::Tls13(s) => Some(*s),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for (label, suites) in [("stock", tls13(&stock)), ("raw keys", tls13(&lazy))] {
        for suite in suites {
            let expander = suite.hkdf_provider.extract_from_secret(None, b"bench");
            let key = || rustls::internal::derive_traffic_key(&*expander, suite.aead_alg);
            let iv = || rustls::internal::derive_traffic_iv(&*expander);
            let mut encrypter = suite.aead_alg.encrypter(key(), iv());
            let mut decrypter = suite.aead_alg.decrypter(key(), iv());
            let mut seq = 0u64;
            let name = format!("tls13/seal+open 300 B, {:?}, {label}", suite.common.suite);
            c.bench_function(&name, |b| {
                b.iter(|| {
                    seq += 1;
                    let msg = OutboundPlainMessage {
                        typ: ContentType::ApplicationData,
                        version: ProtocolVersion::TLSv1_3,
                        payload: OutboundChunks::Single(black_box(&data)),
                    };
                    let mut record = encrypter.encrypt(msg, seq).expect("seal").encode();
                    let msg = InboundOpaqueMessage::new(
                        ContentType::ApplicationData,
                        ProtocolVersion::TLSv1_2,
                        &mut record[5..],
                    );
                    decrypter.decrypt(msg, seq).expect("open").payload.len()
                })
            });
        }
    }
}

criterion_group!(benches, udp, http, ws, selection, routing, tls_records);
criterion_main!(benches);
