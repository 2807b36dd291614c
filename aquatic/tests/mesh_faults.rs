//! What clients see when executors cannot reach each other: a test hook
//! makes every executor stop reading its mesh channels.
//! Needs the `test-hooks` feature, which only tests enable.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use common::{
    base_config, eventually, hash_on_shard,
    http_client::{percent, read_responses},
    Tracker,
};

fn announce_request(hash: [u8; 20], peer: u8) -> Vec<u8> {
    format!(
        "GET /announce?info_hash={}&peer_id={}&port=6881&left=1 HTTP/1.1\r\nHost: t\r\n\r\n",
        percent(&hash),
        percent(&[peer; 20])
    )
    .into_bytes()
}

/// (status, failure reason if any) of `count` responses.
fn statuses_and_reasons(stream: &mut TcpStream, count: usize) -> Vec<(u16, Option<String>)> {
    read_responses(stream, count)
        .into_iter()
        .map(|(status, body)| {
            let reason = body
                .get(b"failure reason")
                .and_then(|v| v.as_bytes())
                .map(|r| String::from_utf8_lossy(r).into_owned());
            (status, reason)
        })
        .collect()
}

fn metric(addr: SocketAddr, name_and_labels: &str) -> f64 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text.lines()
        .filter(|l| l.starts_with("aquatic_errors_total{") && l.contains(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_full_mesh_channel_makes_http_announces_busy() {
    let config = base_config().replace("[runtime]\n", "[runtime]\nmesh_channel_size = 1\n")
        + "[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n";
    let tracker = Tracker::start("mesh-full", &config);
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.send_to(b"aquatic-test-hook:stall-mesh", tracker.udp_v4())
        .expect("send");
    std::thread::sleep(Duration::from_millis(200)); // the hook has no reply to wait on

    // Four announces for each shard on one connection. The executor
    // holding it answers its own shard's. For the other shard: the first
    // is still handled (the receiving task was already waiting for a
    // message when the hook fired; it stalls after that one), the second
    // fills the one-slot channel and waits for its deadline, the next two
    // find the channel full and are refused at once.
    let http = SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()));
    let mut stream = TcpStream::connect(http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut requests = Vec::new();
    for (i, shard) in [0, 0, 0, 0, 1, 1, 1, 1].into_iter().enumerate() {
        requests.extend(announce_request(hash_on_shard(shard, 2, 1), i as u8));
    }
    stream.write_all(&requests).expect("write");
    let responses = statuses_and_reasons(&mut stream, 8);
    let is_busy = |(status, reason): &(u16, Option<String>)| {
        *status == 503 && reason.as_deref() == Some("tracker busy, try again")
    };
    let is_answer = |(status, reason): &(u16, Option<String>)| *status == 200 && reason.is_none();
    let (first, second) = responses.split_at(4);
    let (local, remote) = if first.iter().all(is_answer) {
        (first, second)
    } else {
        (second, first)
    };
    assert!(local.iter().all(is_answer), "{responses:?}");
    assert!(is_answer(&remote[0]), "{responses:?}");
    assert!(remote[1..].iter().all(is_busy), "{responses:?}");

    // Executors publish their counters once a second.
    let metrics = tracker.metrics.expect("metrics");
    let counted = eventually(Duration::from_secs(5), || {
        let full = metric(metrics, "kind=\"channel_full\"");
        let timeouts = metric(metrics, "kind=\"reply_timeout\"");
        (full >= 2.0 && timeouts >= 1.0).then_some((full, timeouts))
    });
    let (_, timeouts) = counted.expect("two sends refused by a full channel, one deadline");
    assert_eq!(
        timeouts, 1.0,
        "one deadline, for the one request that was sent"
    );
}
