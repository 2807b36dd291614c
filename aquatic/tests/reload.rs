//! SIGHUP: the config file re-read on a running tracker. Runtime keys
//! reach every executor without dropping peers or connections; keys that
//! need a restart are logged and keep their running value; a file that
//! does not validate changes nothing.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use aquatic_udp_protocol::{AnnounceEvent, OwnedResponse};
use common::{
    base_config, eventually, hash_on_shard, http_client::percent, http_client::read_responses,
    udp_client::Client, Tracker,
};

const WAIT: Duration = Duration::from_secs(10);

fn interval_and_peers(response: &OwnedResponse) -> (i32, i32) {
    match response {
        OwnedResponse::AnnounceIpv4 {
            announce_interval,
            leechers,
            seeders,
            ..
        } => (*announce_interval, leechers + seeders),
        other => panic!("expected an announce response, got {other:?}"),
    }
}

fn http_announce(stream: &mut TcpStream, hash: [u8; 20], peer: u8) -> i64 {
    let target = format!(
        "/announce?info_hash={}&peer_id={}&port=7000&uploaded=0&downloaded=0&left=1&compact=1",
        percent(&hash),
        percent(&[peer; 20])
    );
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let (status, body) = read_responses(stream, 1).remove(0);
    assert_eq!(status, 200, "{body:?}");
    body.get(b"interval")
        .and_then(aquatic_http_protocol::bencode::Value::as_int)
        .unwrap_or_else(|| panic!("no interval: {body:?}"))
}

#[test]
fn sighup_applies_runtime_keys_and_logs_the_rest() {
    let config = base_config().replace("log_level = \"warn\"", "log_level = \"info\"");
    let tracker = Tracker::start("reload", &config);
    let udp = tracker.udp_v4();
    let http = SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()));
    // One swarm on each shard, a peer in each before the reload.
    let hashes = [hash_on_shard(0, 2, 1), hash_on_shard(1, 2, 1)];
    let mut client = Client::new(udp);
    for hash in hashes {
        let first = client.announce(hash, 1, 6881, AnnounceEvent::Started, 10);
        assert_eq!(interval_and_peers(&first).0, 1800);
    }
    let mut keep_alive = TcpStream::connect(http).expect("connect");
    keep_alive
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(http_announce(&mut keep_alive, hashes[0], 9), 1800);

    // A runtime key and two restart-only keys (workers, an address).
    std::fs::write(
        &tracker.config_path,
        format!(
            "{}[tracker]\nannounce_interval_secs = 77\n",
            config
                .replace("workers = 2", "workers = 3")
                .replace("[ws]\naddress = \"[::]:0\"", "[ws]\naddress = \"[::]:1\"")
        ),
    )
    .expect("write");
    tracker.signal(libc::SIGHUP);
    let line = tracker
        .wait_for_stderr("need a restart", WAIT)
        .expect("the restart-only keys are logged");
    assert!(
        line.contains("WARN") && line.ends_with("(running values kept): workers, ws.address"),
        "{line}"
    );
    assert!(tracker
        .wait_for_stderr("applied tracker.announce_interval_secs", WAIT)
        .is_some());
    // Every executor takes it; the peers announced before are still there.
    // Counts include the announcing peer: on hashes[0] UDP peer 1, HTTP
    // peer 9 and peer 2; on hashes[1] peers 1 and 2.
    for (hash, peers_before_and_now) in hashes.into_iter().zip([3, 2]) {
        let seen = eventually(WAIT, || {
            let r = client.announce(hash, 2, 6882, AnnounceEvent::Started, 10);
            let (interval, peers) = interval_and_peers(&r);
            (interval == 77).then_some(peers)
        });
        assert_eq!(
            seen,
            Some(peers_before_and_now),
            "the earlier peers are still in the swarm"
        );
    }
    // The open keep-alive connection survived and answers with the new value.
    assert_eq!(http_announce(&mut keep_alive, hashes[1], 9), 77);
    // Still the two executors it started with.
    assert!(tracker.ws.is_some());

    // A file that does not validate changes nothing.
    std::fs::write(
        &tracker.config_path,
        format!("{config}[tracker]\nannounce_interval_secs = 55\nmax_numwant = 5000\n"),
    )
    .expect("write");
    tracker.signal(libc::SIGHUP);
    let line = tracker
        .wait_for_stderr("nothing changed", WAIT)
        .expect("the failure is logged");
    assert!(line.contains("ERROR"), "{line}");
    assert!(tracker
        .wait_for_stderr("tracker.max_numwant: must be at most 3000", WAIT)
        .is_some());
    // A later SIGUSR1 is handled after the failed reload (signals are taken
    // in order), and its executors' pick-up runs on the same timer.
    tracker.signal(libc::SIGUSR1);
    assert!(tracker
        .wait_for_stderr("access list reloaded", WAIT)
        .is_some());
    let r = client.announce(hashes[0], 3, 6883, AnnounceEvent::Started, 10);
    assert_eq!(interval_and_peers(&r).0, 77);
    assert_eq!(http_announce(&mut keep_alive, hashes[0], 9), 77);
}

#[test]
fn sighup_switches_the_access_list_mode_and_file() {
    let tracker = Tracker::start("reload-access-list", &base_config());
    let mut client = Client::new(tracker.udp_v4());
    let (listed, unlisted) = (hash_on_shard(0, 2, 3), hash_on_shard(1, 2, 3));
    for hash in [listed, unlisted] {
        let r = client.announce(hash, 1, 6881, AnnounceEvent::Started, 10);
        assert!(
            matches!(r, OwnedResponse::AnnounceIpv4 { .. }),
            "mode off: {r:?}"
        );
    }
    let list = tracker.dir.join("allowed");
    let hex: String = listed.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&list, format!("{hex}\n")).expect("write list");
    std::fs::write(
        &tracker.config_path,
        format!(
            "{}[access_list]\nmode = \"allow\"\npath = {:?}\n",
            base_config(),
            list.display().to_string()
        ),
    )
    .expect("write");
    tracker.signal(libc::SIGHUP);
    // The unlisted hash is refused once the executors took the new list;
    // the listed one is still served.
    let refused = eventually(WAIT, || {
        let r = client.announce(unlisted, 2, 6882, AnnounceEvent::Started, 10);
        matches!(r, OwnedResponse::Error { .. }).then_some(())
    });
    assert!(refused.is_some(), "the allow list is in force after SIGHUP");
    let r = client.announce(listed, 2, 6882, AnnounceEvent::Started, 10);
    assert!(matches!(r, OwnedResponse::AnnounceIpv4 { .. }), "{r:?}");
}

/// A keep-alive scrape on `stream`; whether it got a 200.
fn scrape_ok(stream: &mut (impl Read + Write)) -> bool {
    let request = format!(
        "GET /scrape?info_hash={} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n",
        percent(&hash_on_shard(0, 2, 9))
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).is_err() || &head != b"HTTP/1.1 200" {
        return false;
    }
    // The rest of this response: headers and a short bencoded body.
    let mut rest = [0u8; 512];
    stream.read(&mut rest).is_ok()
}

#[test]
fn sighup_moves_the_tls_certificate_without_dropping_connections() {
    let (first, second) = (
        common::TestCertificate::new("reload-tls-a"),
        common::TestCertificate::new("reload-tls-b"),
    );
    let with_tls = |cert: &common::TestCertificate| {
        base_config()
            .replace("log_level = \"warn\"", "log_level = \"info\"")
            .replacen("[http]\n", &format!("[http]\n{}", cert.config_lines), 1)
    };
    let tracker = Tracker::start("reload-tls", &with_tls(&first));
    let https = SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()));
    let mut open = first.connect(https);
    assert!(scrape_ok(&mut open), "served with the first certificate");
    assert!(
        !scrape_ok(&mut second.connect(https)),
        "a client that trusts only the second certificate is refused at first"
    );

    std::fs::write(&tracker.config_path, with_tls(&second)).expect("write");
    tracker.signal(libc::SIGHUP);
    assert!(tracker
        .wait_for_stderr(
            "applied http.tls_certificate_path, http.tls_private_key_path",
            WAIT
        )
        .is_some());
    // New connections get the second certificate; the connection opened
    // before the reload goes on.
    let served = eventually(WAIT, || scrape_ok(&mut second.connect(https)).then_some(()));
    assert!(
        served.is_some(),
        "the second certificate is served after SIGHUP"
    );
    assert!(
        scrape_ok(&mut open),
        "the open connection survived the reload"
    );
}
