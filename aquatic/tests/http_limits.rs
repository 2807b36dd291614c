//! HTTP limits a hostile or merely busy client meets, end to end against the
//! real binary: scrape size against request size, the request deadline under
//! pipelining, and the reverse-proxy header honoured only from trusted
//! proxies.

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
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

/// One request on a fresh connection.
fn request(addr: SocketAddr, raw: &[u8]) -> (u16, Value) {
    let mut stream = connect(addr);
    stream.write_all(raw).expect("write");
    read_responses(&mut stream, 1).remove(0)
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
