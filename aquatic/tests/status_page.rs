//! The status page of the metrics listener, in a real browser: an idle
//! tracker given a known set of announces; headless Chromium (Debian's
//! /usr/bin/chromium, which .ci/test installs) renders `/`, the page shows
//! those torrent and peer counts and matches `/status.json`, and a
//! screenshot is saved under the test's output directory
//! (`target/tmp/status_page/status.png`).

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aquatic_udp_protocol::AnnounceEvent;
use common::{
    base_config, eventually, hash_on_shard, http_client::percent, scratch_dir, udp_client::Client,
    Tracker,
};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_owned(), body.to_owned())
}

fn status_json(addr: SocketAddr) -> Value {
    let (head, body) = get(addr, "/status.json");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/json"), "{head}");
    serde_json::from_str(&body).expect("valid JSON")
}

/// Runs Chromium headless with `args`, bounded in time; its stdout.
fn chromium(profile: &Path, args: &[String]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `apt-get install chromium` (.ci/test does)"
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "chromium {args:?}: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("reader")
}

/// The text of the element with `id` in rendered HTML.
fn text_of(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no element {id} in the page: {dom}"))
        + marker.len();
    let end = start + dom[start..].find('<').expect("closing tag");
    dom[start..end].to_owned()
}

fn int_of(dom: &str, id: &str) -> i64 {
    text_of(dom, id)
        .parse()
        .unwrap_or_else(|_| panic!("{id} is not a number: {:?}", text_of(dom, id)))
}

#[test]
fn status_page_renders_the_figures_of_status_json() {
    let config = format!(
        "{}[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n",
        base_config()
    );
    let tracker = Tracker::start("status-page", &config);
    let metrics = tracker.metrics.expect("metrics listener");

    // The known announces: three BitTorrent torrents over both shards,
    // two seeders and three leechers in all, one of them over HTTP.
    let mut udp = Client::new(tracker.udp_v4());
    let (a, b, c) = (
        hash_on_shard(0, 2, 1),
        hash_on_shard(1, 2, 1),
        hash_on_shard(1, 2, 2),
    );
    udp.announce(a, 1, 6001, AnnounceEvent::Started, 10);
    udp.announce(a, 2, 6002, AnnounceEvent::Started, 10);
    udp.announce(a, 3, 6003, AnnounceEvent::Started, 0);
    udp.announce(b, 4, 6004, AnnounceEvent::Started, 10);
    let http = SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()));
    let mut stream = TcpStream::connect(http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!(
        "GET /announce?info_hash={}&peer_id={}&port=6005&left=0&compact=1 HTTP/1.1\r\n\
         Host: t\r\nConnection: close\r\n\r\n",
        percent(&c),
        percent(&[5; 20])
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read");
    assert!(reply.starts_with(b"HTTP/1.1 200"));

    // Executors publish once a second: wait until both have published
    // these figures.
    let json = eventually(Duration::from_secs(15), || {
        let json = status_json(metrics);
        let bt = &json["swarms"][0];
        let both = json["executors"]
            .as_array()
            .is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["published"] == true));
        (both
            && bt["torrents"] == 3
            && bt["seeders"] == 2
            && bt["leechers"] == 3
            && json["protocols"][1]["requests"] == 1)
            .then_some(json)
    })
    .unwrap_or_else(|| {
        panic!(
            "status.json never showed the announces: {}",
            status_json(metrics)
        )
    });
    assert_eq!(json["swarms"][0]["swarm"], "bt");
    assert_eq!(json["swarms"][1]["torrents"], 0, "no WebTorrent swarm");
    assert!(json["memory_rss_bytes"].as_u64().is_some_and(|m| m > 0));

    // The page, as the browser renders it.
    let url = format!("http://{metrics}/");
    let profile = scratch_dir("status-page-chromium");
    let dom = chromium(&profile, &["--dump-dom".to_owned(), url.clone()]);
    assert!(dom.contains("<title>aquatic status</title>"), "{dom}");
    assert!(!dom.contains("<script"), "self-contained, no script");
    for (id, want) in [
        ("swarm-bt-torrents", 3),
        ("swarm-bt-seeders", 2),
        ("swarm-bt-leechers", 3),
        ("swarm-ws-torrents", 0),
        ("protocol-http-requests", 1),
    ] {
        assert_eq!(int_of(&dom, id), want, "{id}");
    }
    // Everything it shows is what status.json says (the tracker is idle,
    // so the counts stand still).
    let json = status_json(metrics);
    for (i, swarm) in ["bt", "ws"].into_iter().enumerate() {
        for field in ["torrents", "seeders", "leechers"] {
            assert_eq!(
                json["swarms"][i][field].as_i64(),
                Some(int_of(&dom, &format!("swarm-{swarm}-{field}"))),
                "{swarm} {field}"
            );
        }
    }
    for (i, protocol) in ["udp", "http", "ws"].into_iter().enumerate() {
        for field in ["requests", "errors"] {
            assert_eq!(
                json["protocols"][i][field].as_i64(),
                Some(int_of(&dom, &format!("protocol-{protocol}-{field}"))),
                "{protocol} {field}"
            );
        }
        text_of(&dom, &format!("protocol-{protocol}-requests-per-sec"))
            .parse::<f64>()
            .expect("a rate");
    }
    assert!(
        json["protocols"][0]["requests"].as_i64() >= Some(4),
        "the UDP announces"
    );
    for executor in 0..2 {
        for field in ["torrents", "peers", "requests", "errors"] {
            assert_eq!(
                json["executors"][executor][field].as_i64(),
                Some(int_of(&dom, &format!("executor-{executor}-{field}"))),
                "executor {executor} {field}"
            );
        }
    }
    // Shard 0 holds torrent a, shard 1 torrents b and c.
    assert_eq!(int_of(&dom, "executor-0-torrents"), 1);
    assert_eq!(int_of(&dom, "executor-1-torrents"), 2);

    // A screenshot, kept for people to look at.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status_page");
    std::fs::create_dir_all(&out).expect("output dir");
    let png = out.join("status.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &profile,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1000,800".to_owned(),
            "--hide-scrollbars".to_owned(),
            url,
        ],
    );
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    println!("status page screenshot: {}", png.display());
    let _ = std::fs::remove_dir_all(&profile);

    // The other paths.
    let (head, body) = get(metrics, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("aquatic_torrents"), "{body}");
    let (head, _) = get(metrics, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
