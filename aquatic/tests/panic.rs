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
