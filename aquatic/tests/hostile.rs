//! Hostile input against the real binary: floods, forged connection ids,
//! giant headers, connection hoarding, giant and binary WebSocket frames.
//! After each, the tracker must still answer a normal announce correctly
//! and its resident memory must stay bounded.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use aquatic_udp_protocol::{AnnounceEvent, OwnedResponse};
use common::{base_config, hash_on_shard, udp_client::Client as UdpClient, Tracker};
use rand::{Rng, RngCore, SeedableRng};

/// Far above what these tests need (a few MiB), far below a leak.
const RSS_LIMIT_KIB: u64 = 256 * 1024;

fn rss_kib(tracker: &Tracker) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", tracker.child.id())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A normal UDP announce gets a correct answer, and memory is bounded.
fn still_healthy(tracker: &Tracker, tag: u8) {
    let mut client = UdpClient::new(tracker.udp_v4());
    let hash = hash_on_shard(u64::from(tag % 2), 2, tag);
    match client.announce(hash, 1, 4242, AnnounceEvent::Started, 10) {
        OwnedResponse::AnnounceIpv4 { leechers, .. } => assert_eq!(leechers, 1),
        other => panic!("unhealthy after abuse: {other:?}"),
    }
    let rss = rss_kib(tracker);
    assert!(rss < RSS_LIMIT_KIB, "RSS {rss} KiB after abuse");
}

fn http_addr(tracker: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()))
}

fn ws_addr(tracker: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tracker.ws.expect("ws").port()))
}

#[test]
fn random_datagram_flood() {
    let tracker = Tracker::start("hostile-flood", &base_config());
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_nonblocking(true).expect("nonblocking");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut buf = vec![0u8; 2048];
    let mut sink = [0u8; 4096];
    let mut replies = 0usize;
    for i in 0..30_000u32 {
        let len = rng.gen_range(0..buf.len());
        rng.fill_bytes(&mut buf[..len]);
        // Some look like requests: a plausible action after 12 bytes.
        if i % 3 == 0 && len >= 16 {
            buf[8..12].copy_from_slice(&(i % 4).to_be_bytes()[..4]);
        }
        // A full send buffer only means we outran the loopback: drop it.
        let _ = socket.send_to(&buf[..len], tracker.udp_v4());
        while let Ok((n, _)) = socket.recv_from(&mut sink) {
            replies += 1;
            assert!(n <= 2048 + 8, "a reply larger than any request");
        }
    }
    still_healthy(&tracker, 1);
    eprintln!("flood: {replies} replies seen to 30000 garbage datagrams");
}

#[test]
fn ten_thousand_forged_connection_ids() {
    let tracker = Tracker::start("hostile-ids", &base_config());
    let mut client = UdpClient::new(tracker.udp_v4());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    let genuine = client.connection_id;
    let mut refused = 0;
    for i in 0..10_000u32 {
        client.connection_id = aquatic_udp_protocol::ConnectionId(rng.gen());
        if client.connection_id == genuine {
            continue;
        }
        let hash = hash_on_shard(u64::from(i % 2), 2, 3);
        // Every forged id must be refused: never a peer list.
        client
            .socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut bytes = Vec::new();
        aquatic_udp_protocol::Request::Announce(aquatic_udp_protocol::AnnounceRequest {
            connection_id: client.connection_id,
            transaction_id: aquatic_udp_protocol::TransactionId(i as i32),
            info_hash: aquatic_udp_protocol::InfoHash(hash),
            peer_id: aquatic_udp_protocol::PeerId([5; 20]),
            bytes_downloaded: 0,
            bytes_left: 1,
            bytes_uploaded: 0,
            event: AnnounceEvent::Started,
            ip_address: None,
            key: 0,
            peers_wanted: 10,
            port: 1,
        })
        .write(&mut bytes)
        .expect("write");
        client
            .socket
            .send_to(&bytes, tracker.udp_v4())
            .expect("send");
        let mut reply = [0u8; 1024];
        if let Ok((n, _)) = client.socket.recv_from(&mut reply) {
            match OwnedResponse::parse(&reply[..n], false) {
                Ok(OwnedResponse::Error { .. }) => refused += 1,
                other => panic!("forged connection id accepted: {other:?}"),
            }
        }
    }
    assert!(refused > 9_000, "only {refused} refusals seen");
    // None of the forged announces entered a swarm.
    client.connection_id = genuine;
    client
        .socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let stats = client.scrape(&[hash_on_shard(0, 2, 3), hash_on_shard(1, 2, 3)]);
    assert!(
        stats.iter().all(|s| s.1 == 0),
        "forged peers counted: {stats:?}"
    );
    still_healthy(&tracker, 2);
}

#[test]
fn one_megabyte_of_http_headers() {
    let tracker = Tracker::start("hostile-headers", &base_config());
    let mut stream = TcpStream::connect(http_addr(&tracker)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /announce HTTP/1.1\r\n")
        .expect("write");
    let header = format!("X-Junk: {}\r\n", "j".repeat(1000));
    let mut written = 0;
    while written < 1 << 20 {
        // The server may close on us once the limit is passed.
        if stream.write_all(header.as_bytes()).is_err() {
            break;
        }
        written += header.len();
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.is_empty() || text.contains("failure reason"),
        "unexpected answer to 1 MB of headers: {text}"
    );
    still_healthy(&tracker, 3);
}

#[test]
fn idle_connections_up_to_the_cap_and_beyond() {
    let config = base_config()
        .replacen("[http]\n", "[http]\nmax_connections_per_worker = 50\n", 1)
        .replacen("[ws]\n", "[ws]\nmax_connections_per_worker = 50\n", 1);
    let tracker = Tracker::start("hostile-idle", &config);
    // 2 workers × 50 = 100 per protocol; open 300 of each and hold them.
    let mut held = Vec::new();
    for addr in [http_addr(&tracker), ws_addr(&tracker)] {
        for _ in 0..300 {
            if let Ok(stream) = TcpStream::connect(addr) {
                held.push(stream);
            }
        }
    }
    // The extra ones are closed by the server at once.
    std::thread::sleep(Duration::from_millis(500));
    let mut closed = 0;
    for stream in &mut held {
        stream
            .set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte), Ok(0)) {
            closed += 1;
        }
    }
    assert!(
        closed >= 350,
        "{closed} of 600 closed: the per-executor cap did not hold"
    );
    still_healthy(&tracker, 4);
    drop(held);
    // Once they are gone, HTTP serves again.
    let served = common::eventually(Duration::from_secs(5), || {
        let mut stream = TcpStream::connect(http_addr(&tracker)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"GET /scrape HTTP/1.1\r\n\r\n").ok()?;
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).ok()?;
        (n > 0).then_some(())
    });
    assert!(
        served.is_some(),
        "HTTP does not serve after the hoarders left"
    );
}

#[test]
fn huge_binary_and_garbage_websocket_frames() {
    let tracker = Tracker::start("hostile-ws", &base_config());
    let addr = ws_addr(&tracker);
    for round in 0..20 {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let (mut socket, _) =
            tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
        let message = match round % 4 {
            0 => tungstenite::Message::Binary(vec![0xff; 1 << 20].into()),
            1 => tungstenite::Message::Text("x".repeat(1 << 20).into()),
            2 => tungstenite::Message::Text("{\"action\":\"announce\",".repeat(1000).into()),
            _ => tungstenite::Message::Binary(vec![0; 10].into()),
        };
        let _ = socket.send(message);
        // An error reply or a close: either way, it must end or answer.
        let _ = socket.read();
    }
    still_healthy(&tracker, 5);
}
