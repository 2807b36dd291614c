//! A panic on any executor stops the whole process with a non-zero status.
//! Needs the `test-hooks` feature, which only tests enable.

mod common;

use std::{net::UdpSocket, time::Duration};

use common::{base_config, Tracker};

#[test]
fn executor_panic_stops_the_process() {
    let mut tracker = Tracker::start("panic", &base_config());
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .send_to(b"aquatic-test-hook:panic", tracker.udp_v4())
        .expect("send");
    let status = tracker
        .wait_exit(Duration::from_secs(10))
        .expect("process exits");
    assert!(!status.success(), "non-zero status, got {status:?}");
    let stderr = tracker.stderr_text();
    assert!(
        stderr.contains("test hook: panic requested"),
        "panic logged: {stderr}"
    );
}

fn assert_panicked(mut tracker: Tracker, what: &str) {
    let status = tracker
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{what}: the process did not exit"));
    assert!(!status.success(), "{what}: non-zero status, got {status:?}");
    assert_eq!(status.code(), Some(101), "{what}: the panic status");
    let stderr = tracker.stderr_text();
    assert!(
        stderr.contains("test hook: panic requested"),
        "{what}: panic logged: {stderr}"
    );
}

#[test]
fn http_connection_panic_stops_the_process() {
    use std::io::Write;
    let tracker = Tracker::start("panic-http", &base_config());
    let port = tracker.http.expect("http").port();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(b"GET /aquatic-test-hook/panic HTTP/1.1\r\n\r\n")
        .expect("write");
    assert_panicked(tracker, "http");
}

#[test]
fn ws_connection_panic_stops_the_process() {
    let tracker = Tracker::start("panic-ws", &base_config());
    let port = tracker.ws.expect("ws").port();
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (mut socket, _) =
        tungstenite::client(format!("ws://127.0.0.1:{port}/"), stream).expect("handshake");
    socket
        .send(tungstenite::Message::Text("aquatic-test-hook:panic".into()))
        .expect("send");
    assert_panicked(tracker, "ws");
}
