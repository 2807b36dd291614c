//! The Prometheus endpoint: after known traffic, its figures add up.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use aquatic_udp_protocol::AnnounceEvent;
use common::{
    base_config, eventually, hash_on_shard,
    metrics_client::{metrics_text, sum},
    udp_client::Client as UdpClient,
    Tracker,
};

#[test]
fn metrics_count_requests_errors_and_swarms() {
    let config = format!(
        "{}[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n",
        base_config()
    );
    let tracker = Tracker::start("metrics", &config);
    let metrics = tracker.metrics.expect("metrics address printed");

    // Two UDP announces in two torrents, one on each shard.
    let mut udp = UdpClient::new(tracker.udp_v4());
    udp.announce(hash_on_shard(0, 2, 1), 1, 1000, AnnounceEvent::Started, 10);
    udp.announce(hash_on_shard(1, 2, 2), 1, 1000, AnnounceEvent::Started, 0);
    // Three garbage datagrams.
    let raw = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..3 {
        raw.send_to(&[0xde; 30], tracker.udp_v4()).expect("send");
    }
    // One HTTP announce and one malformed HTTP request.
    let http = SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()));
    for request in [
        format!(
            "GET /announce?info_hash={}&peer_id={}&port=1&left=5 HTTP/1.1\r\nConnection: close\r\n\r\n",
            "%01".repeat(20),
            "%02".repeat(20)
        ),
        "GET /announce?info_hash=%01 HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
    ] {
        let mut stream = TcpStream::connect(http).expect("connect");
        stream.write_all(request.as_bytes()).expect("write");
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }

    let text = eventually(Duration::from_secs(5), || {
        let text = metrics_text(metrics);
        (sum(
            &text,
            "aquatic_requests_total",
            &["protocol=\"http\"", "action=\"announce\""],
        ) >= 1.0
            && sum(
                &text,
                "aquatic_errors_total",
                &["kind=\"bad_request\"", "protocol=\"udp\""],
            ) >= 3.0)
            .then_some(text)
    })
    .expect("figures appear within a few snapshot intervals");

    assert_eq!(
        sum(
            &text,
            "aquatic_requests_total",
            &["protocol=\"udp\"", "action=\"connect\""]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &text,
            "aquatic_requests_total",
            &["protocol=\"udp\"", "action=\"announce\""]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &text,
            "aquatic_requests_total",
            &["protocol=\"http\"", "action=\"announce\""]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &text,
            "aquatic_errors_total",
            &["protocol=\"udp\"", "kind=\"bad_request\""]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &text,
            "aquatic_errors_total",
            &["protocol=\"http\"", "kind=\"bad_request\""]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &text,
            "aquatic_requests_by_ip_family_total",
            &["protocol=\"udp\"", "ip_family=\"ipv4\""]
        ),
        6.0,
        "1 connect + 2 announces + 3 garbage"
    );
    assert_eq!(sum(&text, "aquatic_torrents", &["swarm=\"bt\""]), 3.0);
    assert_eq!(
        sum(&text, "aquatic_peers", &["swarm=\"bt\"", "kind=\"seeder\""]),
        1.0
    );
    assert_eq!(
        sum(
            &text,
            "aquatic_peers",
            &["swarm=\"bt\"", "kind=\"leecher\""]
        ),
        2.0
    );
    // Every executor reports, with its label.
    for executor in ["executor=\"0\"", "executor=\"1\""] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("aquatic_map_capacity{") && l.contains(executor)),
            "no map capacity for {executor}:\n{text}"
        );
    }
}

#[test]
fn refusals_are_counted_by_kind() {
    let config = format!(
        "{}[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n",
        base_config()
    );
    let tracker = Tracker::start("metrics-refusals", &config);
    let metrics = tracker.metrics.expect("metrics address printed");
    let mut udp = UdpClient::new(tracker.udp_v4());
    for shard in 0..2 {
        udp.announce(hash_on_shard(shard, 2, 5), 1, 0, AnnounceEvent::Started, 1);
    }
    let http = SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()));
    let mut stream = TcpStream::connect(http).expect("connect");
    let request = format!(
        "GET /announce?info_hash={}&peer_id={}&port=0&left=5 HTTP/1.1\r\nConnection: close\r\n\r\n",
        "%01".repeat(20),
        "%02".repeat(20)
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    assert!(String::from_utf8_lossy(&sink).contains("invalid port"));

    let counted = eventually(Duration::from_secs(5), || {
        let text = metrics_text(metrics);
        let udp = sum(
            &text,
            "aquatic_refusals_total",
            &["protocol=\"udp\"", "reason=\"invalid_port\""],
        );
        let http = sum(
            &text,
            "aquatic_refusals_total",
            &["protocol=\"http\"", "reason=\"invalid_port\""],
        );
        (udp >= 2.0 && http >= 1.0).then_some((udp, http))
    });
    assert_eq!(counted, Some((2.0, 1.0)), "two UDP and one HTTP refusal");
}
