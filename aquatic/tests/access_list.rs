//! The access list end to end: every protocol refuses what it must, and
//! SIGUSR1 swaps the list at runtime (a broken file keeps the old one).

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use aquatic_udp_protocol::{AnnounceEvent, OwnedResponse};
use common::{
    base_config, eventually, hash_on_shard, http_client::percent, udp_client::Client as UdpClient,
    Tracker,
};

fn hex(hash: &[u8; 20]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn config_with_list(mode: &str, path: &Path) -> String {
    format!(
        "{}[access_list]\nmode = \"{mode}\"\npath = {:?}\n",
        base_config(),
        path.display().to_string()
    )
}

/// Whether a UDP announce for `hash` is served (not refused).
fn udp_allowed(tracker: &Tracker, hash: [u8; 20]) -> bool {
    let mut client = UdpClient::new(tracker.udp_v4());
    match client.announce(hash, 1, 1000, AnnounceEvent::Started, 10) {
        OwnedResponse::AnnounceIpv4 { .. } => true,
        OwnedResponse::Error { message, .. } => {
            assert_eq!(message, "info hash not allowed");
            false
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Whether an HTTP announce for `hash` is served.
fn http_allowed(tracker: &Tracker, hash: [u8; 20]) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()));
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET /announce?info_hash={}&peer_id={}&port=1000&left=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
        percent(&hash),
        percent(&[2; 20])
    )
    .expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    if response.contains("info hash not allowed") {
        false
    } else {
        assert!(response.contains("8:interval"), "{response}");
        true
    }
}

/// Whether a WebTorrent announce for `hash` is served.
fn ws_allowed(tracker: &Tracker, hash: [u8; 20]) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], tracker.ws.expect("ws").port()));
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (mut socket, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
    let binary = |b: &[u8; 20]| b.iter().map(|&c| char::from(c)).collect::<String>();
    let message = serde_json::json!({
        "action": "announce",
        "info_hash": binary(&hash),
        "peer_id": binary(&[3; 20]),
        "left": 1,
        "event": "started",
    });
    socket
        .send(tungstenite::Message::Text(message.to_string().into()))
        .expect("send");
    let reply = socket.read().expect("reply");
    let text = reply.to_text().expect("text");
    if text.contains("info hash not allowed") {
        false
    } else {
        assert!(text.contains("\"interval\""), "{text}");
        true
    }
}

fn allowed_everywhere(tracker: &Tracker, hash: [u8; 20]) -> [bool; 3] {
    [
        udp_allowed(tracker, hash),
        http_allowed(tracker, hash),
        ws_allowed(tracker, hash),
    ]
}

#[test]
fn allow_list_is_enforced_and_reloaded_on_sigusr1() {
    let dir = common::scratch_dir("access-allow");
    let listed = hash_on_shard(0, 2, 1);
    let other = hash_on_shard(1, 2, 2);
    let list = dir.join("list");
    std::fs::write(&list, format!("# test\n{}\n", hex(&listed))).expect("write list");
    let tracker = Tracker::start("access-allow", &config_with_list("allow", &list));

    assert_eq!(allowed_everywhere(&tracker, listed), [true; 3]);
    assert_eq!(allowed_everywhere(&tracker, other), [false; 3]);

    // Reload: now only `other` is allowed.
    std::fs::write(&list, format!("{}\n", hex(&other))).expect("rewrite list");
    tracker.signal(libc::SIGUSR1);
    let swapped = eventually(Duration::from_secs(5), || {
        (allowed_everywhere(&tracker, other) == [true; 3]).then_some(())
    });
    assert!(swapped.is_some(), "SIGUSR1 did not reload the list");
    assert_eq!(allowed_everywhere(&tracker, listed), [false; 3]);

    // A broken file keeps the old list, and the tracker lives on.
    std::fs::write(&list, "not a hash\n").expect("break list");
    tracker.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(allowed_everywhere(&tracker, other), [true; 3]);
    assert_eq!(allowed_everywhere(&tracker, listed), [false; 3]);
}

#[test]
fn deny_list_refuses_listed_hashes() {
    let dir = common::scratch_dir("access-deny");
    let denied = hash_on_shard(1, 2, 3);
    let list = dir.join("list");
    std::fs::write(&list, format!("{}\n", hex(&denied).to_uppercase())).expect("write list");
    let tracker = Tracker::start("access-deny", &config_with_list("deny", &list));
    assert_eq!(allowed_everywhere(&tracker, denied), [false; 3]);
    assert_eq!(
        allowed_everywhere(&tracker, hash_on_shard(0, 2, 4)),
        [true; 3]
    );
}

#[test]
fn a_bad_list_at_start_is_a_startup_error_naming_the_line() {
    let dir = common::scratch_dir("access-bad");
    let list = dir.join("list");
    std::fs::write(&list, format!("{}\n\nzz\n", hex(&[1; 20]))).expect("write list");
    let err = match Tracker::try_start("access-bad", &config_with_list("allow", &list)) {
        Ok(_) => panic!("started with a broken access list"),
        Err(err) => err,
    };
    assert!(
        err.contains("line 3"),
        "the error should name line 3: {err}"
    );
}
