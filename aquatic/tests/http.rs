//! HTTP and HTTPS tracker end to end: the real binary, two workers, real
//! TCP connections on loopback.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use aquatic_http_protocol::bencode::Value;
use aquatic_udp_protocol::{AnnounceEvent, OwnedResponse};
use common::{
    base_config, hash_on_shard,
    http_client::{percent, read_responses},
    udp_client::Client as UdpClient,
    Tracker,
};

fn http_v4(tracker: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http enabled").port()))
}

/// `config` with `lines` added to its `[http]` section.
fn with_http(config: &str, lines: &str) -> String {
    config.replacen("[http]\n", &format!("[http]\n{lines}"), 1)
}

fn announce_target(hash: [u8; 20], peer: u8, port: u16, extra: &str) -> String {
    format!(
        "/announce?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=100{extra}",
        percent(&hash),
        percent(&[peer; 20])
    )
}

fn get(target: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!("GET {target} HTTP/1.1\r\nHost: tracker\r\nConnection: {connection}\r\n\r\n")
        .into_bytes()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// One request on a fresh connection.
fn request(addr: SocketAddr, raw: &[u8]) -> (u16, Value) {
    let mut stream = connect(addr);
    stream.write_all(raw).expect("write");
    read_responses(&mut stream, 1).remove(0)
}

fn announce(addr: SocketAddr, hash: [u8; 20], peer: u8, port: u16, extra: &str) -> Value {
    let (status, body) = request(addr, &get(&announce_target(hash, peer, port, extra), false));
    assert_eq!(status, 200, "announce failed: {body:?}");
    assert!(body.get(b"failure reason").is_none(), "failure: {body:?}");
    body
}

fn failure_reason(body: &Value) -> String {
    let reason = body
        .get(b"failure reason")
        .and_then(Value::as_bytes)
        .unwrap_or_else(|| panic!("expected a failure reason, got {body:?}"));
    String::from_utf8_lossy(reason).into_owned()
}

fn int(body: &Value, key: &[u8]) -> i64 {
    body.get(key)
        .and_then(Value::as_int)
        .unwrap_or_else(|| panic!("no integer {:?} in {body:?}", String::from_utf8_lossy(key)))
}

/// Ports of the peers in an announce response, compact or not.
fn peer_ports(body: &Value) -> Vec<u16> {
    match body.get(b"peers").expect("peers") {
        Value::Bytes(compact) => {
            assert_eq!(compact.len() % 6, 0, "compact IPv4 peers are 6 bytes each");
            compact
                .chunks(6)
                .map(|c| u16::from_be_bytes([c[4], c[5]]))
                .collect()
        }
        Value::List(peers) => peers
            .iter()
            .map(|p| u16::try_from(int(p, b"port")).expect("port"))
            .collect(),
        other => panic!("peers is neither a string nor a list: {other:?}"),
    }
}

#[test]
fn announce_compact_one_zero_and_absent() {
    let tracker = Tracker::start("http-compact", &base_config());
    let addr = http_v4(&tracker);
    let hash = hash_on_shard(1, 2, 7);
    let first = announce(addr, hash, 1, 7001, "&compact=1");
    assert_eq!(peer_ports(&first), Vec::<u16>::new());
    assert_eq!(int(&first, b"interval"), 1800);

    // compact=1: BEP 23 byte string with 127.0.0.1:7001.
    let compact = announce(addr, hash, 2, 7002, "&compact=1");
    let Some(Value::Bytes(peers)) = compact.get(b"peers") else {
        panic!("compact=1 must give a byte string: {compact:?}");
    };
    assert_eq!(peers.as_slice(), &[127, 0, 0, 1, 0x1b, 0x59]);
    assert_eq!(int(&compact, b"incomplete"), 2);

    // compact=0 and no compact at all: BEP 3 dictionaries with peer ids.
    for extra in ["&compact=0", ""] {
        let body = announce(addr, hash, 3, 7003, extra);
        let Some(Value::List(peers)) = body.get(b"peers") else {
            panic!("compact {extra:?} must give a list: {body:?}");
        };
        assert_eq!(peers.len(), 2);
        for peer in peers {
            assert_eq!(
                peer.get(b"ip").and_then(Value::as_bytes),
                Some(&b"127.0.0.1"[..])
            );
            let id = peer
                .get(b"peer id")
                .and_then(Value::as_bytes)
                .expect("peer id");
            assert!(
                id == [1u8; 20] || id == [2u8; 20],
                "unexpected peer id {id:?}"
            );
        }
        let mut ports = peer_ports(&body);
        ports.sort_unstable();
        assert_eq!(ports, vec![7001, 7002]);
    }

    // no_peer_id drops the ids from the dictionaries.
    let body = announce(addr, hash, 3, 7003, "&compact=0&no_peer_id=1");
    let Some(Value::List(peers)) = body.get(b"peers") else {
        panic!("expected a list: {body:?}");
    };
    assert!(peers.iter().all(|p| p.get(b"peer id").is_none()));
}

#[test]
fn udp_and_http_peers_share_a_swarm() {
    let tracker = Tracker::start("http-udp", &base_config());
    let addr = http_v4(&tracker);
    for (shard, tag) in [(0, 11), (1, 12)] {
        let hash = hash_on_shard(shard, 2, tag);
        let mut udp = UdpClient::new(tracker.udp_v4());
        let response = udp.announce(hash, 1, 8001, AnnounceEvent::Started, 100);
        assert!(matches!(response, OwnedResponse::AnnounceIpv4 { .. }));

        let body = announce(addr, hash, 2, 8002, "&compact=1");
        assert_eq!(peer_ports(&body), vec![8001], "HTTP peer sees the UDP peer");

        match udp.announce(hash, 1, 8001, AnnounceEvent::None, 100) {
            OwnedResponse::AnnounceIpv4 { peers, .. } => {
                let ports: Vec<u16> = peers.iter().map(|p| p.port).collect();
                assert_eq!(ports, vec![8002], "UDP peer sees the HTTP peer");
            }
            other => panic!("unexpected {other:?}"),
        }

        // Full peer ids are kept for HTTP peers only: in a dictionary
        // response the UDP peer comes without one (as with no_peer_id).
        let body = announce(addr, hash, 3, 8003, "&compact=0");
        let Some(Value::List(peers)) = body.get(b"peers") else {
            panic!("expected a list: {body:?}");
        };
        let mut ids: Vec<(i64, Option<Vec<u8>>)> = peers
            .iter()
            .map(|p| {
                let port = p.get(b"port").and_then(Value::as_int).expect("port");
                (
                    port,
                    p.get(b"peer id")
                        .and_then(Value::as_bytes)
                        .map(<[u8]>::to_vec),
                )
            })
            .collect();
        ids.sort();
        assert_eq!(ids, vec![(8001, None), (8002, Some(vec![2u8; 20]))]);
    }
}

#[test]
fn scrape_of_many_hashes_across_shards() {
    let tracker = Tracker::start("http-scrape", &base_config());
    let addr = http_v4(&tracker);
    let hashes = [
        hash_on_shard(0, 2, 21),
        hash_on_shard(1, 2, 22),
        hash_on_shard(1, 2, 23),
        hash_on_shard(0, 2, 24),
        hash_on_shard(1, 2, 25), // never announced
    ];
    // Hash i gets i + 1 leechers, and the first one a seeder too.
    for (i, hash) in hashes.iter().take(4).enumerate() {
        for peer in 0..=i as u8 {
            announce(addr, *hash, peer + 1, 9000 + u16::from(peer), "");
        }
    }
    let seeder = format!(
        "/announce?info_hash={}&peer_id={}&port=9100&left=0&event=completed",
        percent(&hashes[0]),
        percent(&[99; 20])
    );
    let (status, _) = request(addr, &get(&seeder, false));
    assert_eq!(status, 200);

    let query: Vec<String> = hashes
        .iter()
        .map(|h| format!("info_hash={}", percent(h)))
        .collect();
    let target = format!("/scrape?{}", query.join("&"));
    let (status, body) = request(addr, &get(&target, false));
    assert_eq!(status, 200, "{body:?}");
    let files = body
        .get(b"files")
        .and_then(Value::as_dict)
        .expect("files dict");
    assert_eq!(files.len(), hashes.len(), "every hash answered: {body:?}");
    for (i, hash) in hashes.iter().enumerate() {
        let stats = files.get(hash.as_slice()).expect("hash in files");
        let leechers = if i < 4 { i as i64 + 1 } else { 0 };
        assert_eq!(int(stats, b"incomplete"), leechers, "hash {i}");
        assert_eq!(int(stats, b"complete"), i64::from(i == 0), "hash {i}");
        assert_eq!(int(stats, b"downloaded"), i64::from(i == 0), "hash {i}");
    }
}

#[test]
fn empty_scrape_gets_a_clear_failure() {
    let tracker = Tracker::start("http-empty-scrape", &base_config());
    let (status, body) = request(http_v4(&tracker), &get("/scrape", false));
    assert_eq!(failure_reason(&body), "full scrapes are not supported");
    assert!(
        (400..500).contains(&status) || status == 200,
        "status {status}"
    );
}

#[test]
fn malformed_requests_get_bencoded_failures_and_serving_goes_on() {
    let tracker = Tracker::start("http-malformed", &base_config());
    let addr = http_v4(&tracker);
    let hash = hash_on_shard(0, 2, 31);
    let peer = percent(&[5; 20]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "short info_hash",
            get(
                &format!("/announce?info_hash=%01%02&peer_id={peer}&port=1"),
                false,
            ),
        ),
        (
            "missing port",
            get(
                &format!("/announce?info_hash={}&peer_id={peer}", percent(&hash)),
                false,
            ),
        ),
        (
            "bad percent-encoding",
            get(
                &format!(
                    "/announce?info_hash=%zz{}&peer_id={peer}&port=1",
                    percent(&hash[1..])
                ),
                false,
            ),
        ),
        (
            "oversized request line",
            get(&format!("/announce?junk={}", "a".repeat(8192)), false),
        ),
        (
            "POST",
            format!(
                "POST {} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
                announce_target(hash, 5, 1, "")
            )
            .into_bytes(),
        ),
        ("not HTTP at all", b"\x16\x03\x01garbage\r\n\r\n".to_vec()),
    ];
    for (what, raw) in cases {
        let (status, body) = request(addr, &raw);
        let reason = failure_reason(&body);
        assert!(!reason.is_empty(), "{what}: empty reason");
        assert!(
            (400..600).contains(&status),
            "{what}: status {status} ({reason})"
        );
    }
    // Still serving.
    let body = announce(addr, hash, 6, 6006, "");
    assert_eq!(int(&body, b"incomplete"), 1);
}

#[test]
fn keep_alive_and_pipelining_on_one_connection() {
    let tracker = Tracker::start("http-keepalive", &base_config());
    let addr = http_v4(&tracker);
    let mut stream = connect(addr);
    // One at a time, across both shards.
    for (i, shard) in [0u64, 1, 0, 1].into_iter().enumerate() {
        let hash = hash_on_shard(shard, 2, 40 + i as u8);
        stream
            .write_all(&get(&announce_target(hash, 1, 1000, ""), true))
            .expect("write");
        let (status, body) = read_responses(&mut stream, 1).remove(0);
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(int(&body, b"incomplete"), 1);
    }
    // Pipelined: three requests in one write, answered in order (the swarm
    // grows by one with each, whichever shard owns it).
    let hash = hash_on_shard(1, 2, 50);
    let mut batch = Vec::new();
    for peer in 1..=3u8 {
        batch.extend(get(
            &announce_target(hash, peer, 2000 + u16::from(peer), ""),
            true,
        ));
    }
    stream.write_all(&batch).expect("write");
    let answers = read_responses(&mut stream, 3);
    let leechers: Vec<i64> = answers.iter().map(|(_, b)| int(b, b"incomplete")).collect();
    assert_eq!(leechers, vec![1, 2, 3]);
}

#[test]
fn a_stalled_half_request_is_disconnected() {
    let config = with_http(&base_config(), "request_timeout_secs = 1\n");
    let tracker = Tracker::start("http-slowloris", &config);
    let mut stream = connect(http_v4(&tracker));
    stream
        .write_all(b"GET /announce?info_hash=%01")
        .expect("write half a request");
    let started = Instant::now();
    let mut buf = [0u8; 512];
    // The read timeout is 10 s; the server must close well before that.
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // a 408-style failure may come first
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "still open after {:?}: the header-read timeout did not fire",
        started.elapsed()
    );
    // Other clients are served meanwhile and after.
    announce(http_v4(&tracker), hash_on_shard(0, 2, 60), 1, 1, "");
}

#[test]
fn https_announce_with_a_generated_certificate() {
    let certificate = common::TestCertificate::new("https-cert");
    let config = with_http(&base_config(), &certificate.config_lines);
    let tracker = Tracker::start("https", &config);
    let mut tls = certificate.connect(http_v4(&tracker));
    let hash = hash_on_shard(1, 2, 70);
    tls.write_all(&get(&announce_target(hash, 1, 4001, "&compact=1"), true))
        .expect("write over tls");
    let (status, body) = read_responses(&mut tls, 1).remove(0);
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(int(&body, b"incomplete"), 1);

    // A plain-text client on the TLS port gets nowhere, and the server lives on.
    let mut plain = connect(http_v4(&tracker));
    plain
        .write_all(&get(&announce_target(hash, 2, 4002, ""), false))
        .expect("write");
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "TLS port answered plain HTTP"
    );
}
