//! HTTP limits a hostile or merely busy client meets, end to end against the
//! real binary: scrape size against request size, the request deadline under
//! pipelining, and the reverse-proxy header honoured only from trusted
//! proxies.

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use aquatic_http_protocol::bencode::Value;
use common::{
    base_config, hash_on_shard,
    http_client::{percent, read_responses},
    Tracker,
};

fn http_v4(tracker: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http enabled").port()))
}

/// `config` with `lines` added to its `[http]` section.
fn with_http(config: &str, lines: &str) -> String {
    config.replacen("[http]\n", &format!("[http]\n{lines}"), 1)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
}

/// A GET with typical client headers and `extra_headers` (each ending in CRLF).
fn get(target: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: tracker.example:3001\r\n\
         User-Agent: libtorrent/2.0.8.0\r\nAccept-Encoding: gzip\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

fn announce_target(hash: [u8; 20], peer: u8, port: u16, extra: &str) -> String {
    format!(
        "/announce?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=100{extra}",
        percent(&hash),
        percent(&[peer; 20])
    )
}

/// One request on a fresh connection.
fn request(addr: SocketAddr, raw: &[u8]) -> (u16, Value) {
    let mut stream = connect(addr);
    stream.write_all(raw).expect("write");
    read_responses(&mut stream, 1).remove(0)
}

/// The `ip` of every peer in a non-compact announce response.
fn peer_ips(body: &Value) -> Vec<String> {
    let Some(Value::List(peers)) = body.get(b"peers") else {
        panic!("compact=0 must give a list of peers: {body:?}");
    };
    peers
        .iter()
        .map(|p| {
            let ip = p.get(b"ip").and_then(Value::as_bytes).expect("ip");
            String::from_utf8_lossy(ip).into_owned()
        })
        .collect()
}

/// stderr of a tracker that must refuse to start with `config`.
fn refused_start(name: &str, config: &str) -> String {
    match Tracker::try_start(name, config) {
        Ok(_) => panic!("the tracker started with a contradicting config:\n{config}"),
        Err(stderr) => stderr,
    }
}

#[test]
fn default_config_serves_a_scrape_of_max_scrape_torrents_hashes() {
    let tracker = Tracker::start("http-scrape-70", &base_config());
    // tracker.max_scrape_torrents defaults to 70; every byte percent-encoded
    // as clients such as libtorrent do (60 characters per hash).
    let hashes: Vec<[u8; 20]> = (0..70u8).map(|i| hash_on_shard(0, 1, i)).collect();
    let query: Vec<String> = hashes
        .iter()
        .map(|h| format!("info_hash={}", percent(h)))
        .collect();
    let target = format!("/scrape?{}", query.join("&"));
    let (status, body) = request(http_v4(&tracker), &get(&target, ""));
    assert_eq!(status, 200, "a scrape of 70 hashes is refused: {body:?}");
    let files = body
        .get(b"files")
        .and_then(Value::as_dict)
        .expect("files dict");
    assert_eq!(files.len(), 70, "every hash answered");
}

#[test]
fn contradicting_scrape_limits_are_refused_at_start() {
    // 100 hashes need about 7.6 KB of request over HTTP and break BEP 15's
    // 74 over UDP.
    let config = format!(
        "{}[tracker]\nmax_scrape_torrents = 100\n",
        with_http(&base_config(), "max_request_bytes = 4096\n")
    );
    let stderr = refused_start("http-scrape-contradiction", &config);
    let http_line = stderr
        .lines()
        .find(|l| l.contains("tracker.max_scrape_torrents, http.max_request_bytes"))
        .unwrap_or_else(|| panic!("no problem naming both HTTP keys: {stderr}"));
    assert!(
        http_line.contains("7612"),
        "says what is needed: {http_line}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("tracker.max_scrape_torrents, udp.enabled")),
        "no problem naming the UDP keys: {stderr}"
    );
}

#[test]
fn a_client_pipelining_steadily_is_not_timed_out() {
    let config = with_http(&base_config(), "request_timeout_secs = 2\n");
    let tracker = Tracker::start("http-pipelining-deadline", &config);
    let mut stream = connect(http_v4(&tracker));
    let hash = hash_on_shard(0, 2, 80);
    let requests: Vec<Vec<u8>> = (1..=11u8)
        .map(|peer| get(&announce_target(hash, peer, 3000 + u16::from(peer), ""), ""))
        .collect();
    let half = |r: &[u8]| r.len() / 2;
    stream
        .write_all(&requests[0][..half(&requests[0])])
        .expect("first half");
    // Each write completes one request and starts the next, so the
    // server's buffer is never empty for about 5 s, well past the 2 s a
    // single request may take.
    for (i, pair) in requests.windows(2).enumerate() {
        thread::sleep(Duration::from_millis(500));
        let (this, next) = (&pair[0], &pair[1]);
        let mut chunk = this[half(this)..].to_vec();
        chunk.extend_from_slice(&next[..half(next)]);
        stream
            .write_all(&chunk)
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        let (status, body) = read_responses(&mut stream, 1).remove(0);
        assert_eq!(status, 200, "request {i}: {body:?}");
    }
    let last = &requests[requests.len() - 1];
    stream.write_all(&last[half(last)..]).expect("last half");
    let (status, body) = read_responses(&mut stream, 1).remove(0);
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(
        body.get(b"incomplete").and_then(Value::as_int),
        Some(11),
        "every announce arrived: {body:?}"
    );
}

/// The `[http]` lines of a tracker behind a proxy header.
fn proxy_lines(trusted_proxies: &str) -> String {
    format!("reverse_proxy_ip_header = \"X-Forwarded-For\"\ntrusted_proxies = {trusted_proxies}\n")
}

#[test]
fn forwarded_address_is_used_from_a_trusted_proxy() {
    let config = with_http(&base_config(), &proxy_lines("[\"127.0.0.1/32\"]"));
    let tracker = Tracker::start("http-proxy-trusted", &config);
    let addr = http_v4(&tracker);
    let hash = hash_on_shard(1, 2, 81);
    for (peer, client) in [(1, "203.0.113.9"), (2, "203.0.113.10")] {
        let target = announce_target(hash, peer, 5000 + u16::from(peer), "&compact=0");
        let header = format!("X-Forwarded-For: {client}\r\n");
        let (status, body) = request(addr, &get(&target, &header));
        assert_eq!(status, 200, "{body:?}");
        if peer == 2 {
            assert_eq!(peer_ips(&body), ["203.0.113.9"]);
        }
    }
}

#[test]
fn forwarded_header_from_an_untrusted_peer_is_ignored() {
    // Loopback is not in 10.0.0.0/8: the test client reaches the tracker
    // directly, as a hostile client would.
    let config = with_http(&base_config(), &proxy_lines("[\"10.0.0.0/8\"]"));
    let tracker = Tracker::start("http-proxy-untrusted", &config);
    let addr = http_v4(&tracker);
    let hash = hash_on_shard(0, 2, 82);
    for peer in [1, 2] {
        let target = announce_target(hash, peer, 6000 + u16::from(peer), "&compact=0");
        let (status, body) = request(addr, &get(&target, "X-Forwarded-For: 203.0.113.9\r\n"));
        assert_eq!(status, 200, "a direct client is served: {body:?}");
        if peer == 2 {
            assert_eq!(peer_ips(&body), ["127.0.0.1"]);
        }
    }
}

#[test]
fn proxy_header_without_trusted_proxies_is_refused_at_start() {
    let config = with_http(
        &base_config(),
        "reverse_proxy_ip_header = \"X-Forwarded-For\"\n",
    );
    let stderr = refused_start("http-proxy-no-trust", &config);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("http.reverse_proxy_ip_header, http.trusted_proxies")),
        "no problem naming both keys: {stderr}"
    );
}
