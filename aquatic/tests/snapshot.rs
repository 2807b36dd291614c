//! Restarts that keep the swarms: UDP and HTTP peers across both shards,
//! SIGTERM or kill -9, the same state directory, another worker count;
//! damaged snapshot files; connection ids issued before a restart.

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use aquatic_http_protocol::bencode::Value;
use aquatic_udp_protocol::{AnnounceEvent, OwnedResponse};
use common::{
    base_config, eventually, hash_on_shard,
    http_client::{percent, read_responses},
    metrics_client::{metrics_text, sum},
    scratch_dir,
    udp_client::{peers_v4, Client as UdpClient},
    Tracker,
};

/// The probe peer every observation announces as (its own port).
const PROBE: (u8, u16) = (200, 40_000);

fn config(workers: usize, state: &Path, interval_secs: u64) -> String {
    format!(
        "{}[snapshot]\ndir = {:?}\ninterval_secs = {interval_secs}\n[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n",
        base_config().replacen("workers = 2", &format!("workers = {workers}"), 1),
        state.display().to_string()
    )
}

/// Four torrents, two on each shard of two.
fn hashes() -> Vec<[u8; 20]> {
    vec![
        hash_on_shard(0, 2, 1),
        hash_on_shard(1, 2, 2),
        hash_on_shard(0, 2, 3),
        hash_on_shard(1, 2, 4),
    ]
}

fn http_v4(tracker: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http enabled").port()))
}

fn http_announce(tracker: &Tracker, hash: [u8; 20], peer: u8, port: u16, left: u64) {
    let target = format!(
        "/announce?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}&compact=1",
        percent(&hash),
        percent(&[peer; 20])
    );
    let mut stream = TcpStream::connect(http_v4(tracker)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("write");
    let (status, body) = read_responses(&mut stream, 1).remove(0);
    assert_eq!(status, 200, "{body:?}");
    assert!(body.get(b"failure reason").is_none(), "{body:?}");
    assert!(matches!(body.get(b"peers"), Some(Value::Bytes(_))));
}

/// Per torrent `i`: i + 2 UDP leechers, one UDP peer that completed, two
/// HTTP peers (one seeding): peers of both protocols, both standings.
fn fill(tracker: &Tracker) -> usize {
    let mut udp = UdpClient::new(tracker.udp_v4());
    let mut peers = 0;
    for (i, hash) in hashes().into_iter().enumerate() {
        let base = 10_000 + 100 * i as u16;
        for n in 0..(i as u16 + 2) {
            udp.announce(hash, n as u8, base + n, AnnounceEvent::Started, 10);
            peers += 1;
        }
        udp.announce(hash, 50, base + 50, AnnounceEvent::Started, 10);
        udp.announce(hash, 50, base + 50, AnnounceEvent::Completed, 0);
        http_announce(tracker, hash, 60, base + 60, 5);
        http_announce(tracker, hash, 61, base + 61, 0);
        peers += 3;
    }
    peers
}

/// What clients see of each torrent: (seeders, leechers, completed) by
/// scrape, and the ports an announce hands the probe peer.
fn observe(tracker: &Tracker) -> Vec<((i32, i32, i32), Vec<u16>)> {
    let mut udp = UdpClient::new(tracker.udp_v4());
    let hashes = hashes();
    let mut seen = Vec::new();
    for hash in &hashes {
        let response = udp.announce_wanting(
            hash.to_owned(),
            PROBE.0,
            PROBE.1,
            AnnounceEvent::None,
            10,
            200,
        );
        let mut ports = peers_v4(&response);
        ports.sort_unstable();
        seen.push(ports);
    }
    let counts = udp.scrape(&hashes);
    counts.into_iter().zip(seen).collect()
}

fn sigterm(tracker: Tracker) {
    stop_with(tracker, libc::SIGTERM);
}

fn stop_with(mut tracker: Tracker, signal: i32) {
    tracker.signal(signal);
    let status = tracker.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status:?}");
}

fn metric(tracker: &Tracker, name: &str) -> f64 {
    sum(&metrics_text(tracker.metrics.expect("metrics")), name, &[])
}

/// Fills a tracker of `before` workers, stops it with SIGTERM, starts
/// one of `after` workers on the same directory: clients see the same.
fn survives_restart(name: &str, before: usize, after: usize) {
    let state = scratch_dir(name);
    let first = Tracker::start(name, &config(before, &state, 0));
    let peers = fill(&first);
    let seen = observe(&first);
    assert_eq!(seen[3].0, (2, 7, 1), "torrent 3 as filled");
    assert_eq!(seen[3].1.len(), 8, "every other peer of torrent 3");
    sigterm(first);
    for i in 0..before {
        assert!(
            state.join(format!("swarms-{i}.snapshot")).exists(),
            "executor {i} wrote"
        );
    }

    let second = Tracker::start(name, &config(after, &state, 0));
    assert_eq!(
        metric(&second, "aquatic_snapshot_peers_restored"),
        (peers + hashes().len()) as f64,
        "the filled peers and the probe"
    );
    assert_eq!(observe(&second), seen);
    sigterm(second);
    for i in after..before {
        assert!(
            !state.join(format!("swarms-{i}.snapshot")).exists(),
            "file {i} of the earlier run was absorbed and removed"
        );
    }
    let third = Tracker::start(name, &config(after, &state, 0));
    assert_eq!(
        metric(&third, "aquatic_snapshot_peers_restored"),
        (peers + hashes().len()) as f64
    );
    assert_eq!(observe(&third), seen, "and again after a second restart");
    drop(third);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn swarms_survive_sigterm_and_restart() {
    survives_restart("snap-same", 2, 2);
}

#[test]
fn swarms_survive_going_from_two_workers_to_one() {
    survives_restart("snap-2to1", 2, 1);
}

#[test]
fn swarms_survive_going_from_one_worker_to_two() {
    survives_restart("snap-1to2", 1, 2);
}

#[test]
fn kill_9_after_a_periodic_snapshot_keeps_its_peers() {
    let state = scratch_dir("snap-kill");
    let mut first = Tracker::start("snap-kill", &config(2, &state, 1));
    let peers = fill(&first);
    let seen = observe(&first);
    let expected = (peers + hashes().len()) as f64;
    // Periodic snapshots keep coming (two more per executor, so at least
    // one begun after the fill), and the last has every peer.
    let writes = metric(&first, "aquatic_snapshot_writes_total");
    eventually(Duration::from_secs(30), || {
        (metric(&first, "aquatic_snapshot_writes_total") >= writes + 4.0
            && metric(&first, "aquatic_snapshot_peers") == expected)
            .then_some(())
    })
    .expect("periodic snapshots, the last with every peer");
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");
    drop(first);

    let second = Tracker::start("snap-kill", &config(2, &state, 1));
    assert_eq!(metric(&second, "aquatic_snapshot_peers_restored"), expected);
    assert_eq!(observe(&second), seen);
    drop(second);
    let _ = std::fs::remove_dir_all(&state);
}

/// Writes a good one-executor snapshot, damages it with `damage`, starts
/// again: empty swarms, one log line naming the file, the file kept
/// aside, and the tracker serves.
fn damaged_file_starts_empty(name: &str, damage: impl FnOnce(&mut Vec<u8>), says: &str) {
    let state = scratch_dir(name);
    let first = Tracker::start(name, &config(1, &state, 0));
    fill(&first);
    let filled = observe(&first);
    assert_ne!(filled[0].0, (0, 0, 0));
    sigterm(first);
    let file = state.join("swarms-0.snapshot");
    let mut bytes = std::fs::read(&file).expect("snapshot written");
    damage(&mut bytes);
    std::fs::write(&file, &bytes).expect("write damaged file");

    let mut second = Tracker::start(name, &config(1, &state, 0));
    assert_eq!(metric(&second, "aquatic_snapshot_peers_restored"), 0.0);
    let mut udp = UdpClient::new(second.udp_v4());
    assert_eq!(udp.scrape(&hashes()), vec![(0, 0, 0); 4], "started empty");
    let hash = hashes()[0];
    udp.announce(hash, 1, 5000, AnnounceEvent::Started, 10);
    assert_eq!(udp.scrape(&[hash]), vec![(0, 1, 0)], "and serves");
    assert!(
        state.join("swarms-0.snapshot.rejected").exists(),
        "kept aside"
    );
    let stderr = second.stderr_text();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("is unusable"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("swarms-0.snapshot"), "{}", lines[0]);
    assert!(lines[0].contains(says), "{} should say {says:?}", lines[0]);
    drop(second);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_truncated_snapshot_starts_empty() {
    damaged_file_starts_empty("snap-trunc", |b| b.truncate(b.len() - 7), "truncated");
}

#[test]
fn a_snapshot_with_a_flipped_byte_starts_empty() {
    damaged_file_starts_empty(
        "snap-flip",
        |b| {
            let middle = b.len() / 2;
            b[middle] ^= 0x01;
        },
        "checksum",
    );
}

#[test]
fn an_empty_snapshot_starts_empty() {
    damaged_file_starts_empty("snap-empty", |b| b.clear(), "truncated");
}

#[test]
fn a_snapshot_of_a_newer_format_starts_empty() {
    damaged_file_starts_empty(
        "snap-newer",
        |b| {
            // The version field (u16 LE after the 8 magic bytes).
            let version = u16::from_le_bytes([b[8], b[9]]);
            b[8..10].copy_from_slice(&(version + 1).to_le_bytes());
        },
        "newer",
    );
}

#[test]
fn a_connection_id_from_before_a_restart_is_accepted_after_it() {
    let state = scratch_dir("snap-cid");
    let first = Tracker::start("snap-cid", &config(2, &state, 0));
    let mut client = UdpClient::new(first.udp_v4());
    let old_id = client.connection_id;
    client.announce(hashes()[0], 9, 6009, AnnounceEvent::Started, 10);
    // SIGINT (Ctrl-C) stops the same way as SIGTERM, snapshot included.
    stop_with(first, libc::SIGINT);

    let second = Tracker::start("snap-cid", &config(2, &state, 0));
    let mut client = UdpClient::new(second.udp_v4());
    client.connection_id = old_id;
    let response = client.announce(hashes()[1], 1, 6000, AnnounceEvent::Started, 10);
    assert!(
        matches!(response, OwnedResponse::AnnounceIpv4 { .. }),
        "the old id is accepted: {response:?}"
    );
    assert_eq!(
        client.scrape(&[hashes()[0]]),
        vec![(0, 1, 0)],
        "SIGINT wrote"
    );
    drop(second);

    // The control: another state directory, another key.
    let other = scratch_dir("snap-cid-other");
    let third = Tracker::start("snap-cid", &config(2, &other, 0));
    let mut client = UdpClient::new(third.udp_v4());
    client.connection_id = old_id;
    let response = client.announce(hashes()[1], 1, 6000, AnnounceEvent::Started, 10);
    assert!(
        matches!(response, OwnedResponse::Error { .. }),
        "another key refuses it: {response:?}"
    );
    drop(third);
    for dir in [state, other] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_second_process_on_the_same_state_directory_is_refused() {
    let state = scratch_dir("snap-lock");
    let first = Tracker::start("snap-lock", &config(1, &state, 0));
    let err = match Tracker::try_start("snap-lock-2", &config(1, &state, 0)) {
        Ok(_) => panic!("a second process started on a locked directory"),
        Err(err) => err,
    };
    assert!(err.contains("in use by another aquatic process"), "{err}");
    drop(first);
    let _ = std::fs::remove_dir_all(PathBuf::from(&state));
}

#[test]
fn a_stop_after_periodic_snapshots_still_writes_one() {
    let state = scratch_dir("snap-stop-after");
    let text = config(2, &state, 1).replacen("log_level = \"warn\"", "log_level = \"info\"", 1);
    let mut tracker = Tracker::start("snap-stop-after", &text);
    let metrics = tracker.metrics.expect("metrics");
    // Each executor has written two periodic snapshots: the writer is free
    // again after each.
    eventually(Duration::from_secs(30), || {
        let text = metrics_text(metrics);
        (0..2)
            .all(|i| {
                let executor = format!("executor=\"{i}\"");
                sum(&text, "aquatic_snapshot_writes_total", &[&executor]) >= 2.0
            })
            .then_some(())
    })
    .expect("two periodic snapshots per executor");
    tracker.signal(libc::SIGTERM);
    let status = tracker.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status:?}");
    let stderr = tracker.stderr_text();
    let stop_lines = stderr
        .lines()
        .filter(|l| l.contains("snapshot (at stop)"))
        .count();
    assert_eq!(
        stop_lines, 2,
        "one stop-time snapshot per executor:\n{stderr}"
    );
    drop(tracker);
    let _ = std::fs::remove_dir_all(&state);
}
