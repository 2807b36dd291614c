//! The binary's command line and configuration handling.

mod common;

use std::process::Stdio;

use common::{assert_parses_to_defaults, binary, scratch_dir};

#[test]
fn unknown_config_key_is_named_and_fatal() {
    let dir = scratch_dir("cli-unknown");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[udp]\nadress = \"[::]:0\"\n").expect("write");
    let out = binary().arg("-c").arg(&path).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("adress"), "stderr names the key: {stderr}");
    assert!(
        stderr.contains("bad.toml"),
        "stderr names the file: {stderr}"
    );
}

#[test]
fn every_invalid_value_is_listed_with_the_file() {
    let dir = scratch_dir("cli-invalid");
    let path = dir.join("values.toml");
    std::fs::write(
        &path,
        "[tracker]\nmax_numwant = 5000\n[ws]\nmax_offers = 0\n",
    )
    .expect("write");
    let out = binary().arg("-c").arg(&path).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("{}: ", path.display());
    for problem in [
        "tracker.max_numwant: must be at most 3000",
        "ws.max_offers: must be at least 1",
    ] {
        assert!(
            stderr.lines().any(|l| l == format!("{prefix}{problem}")),
            "one line per problem, prefixed by the file: {stderr}"
        );
    }
}

#[test]
fn printed_default_config_parses_back() {
    let out = binary().arg("-p").output().expect("run");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        printed.contains("[udp]") && printed.contains('#'),
        "commented TOML"
    );
    let dir = scratch_dir("cli-print");
    let path = dir.join("printed.toml");
    std::fs::write(&path, &printed).expect("write");
    assert_parses_to_defaults(&path);
}

#[test]
fn help_and_bad_flags() {
    let out = binary().arg("--help").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
    let out = binary()
        .arg("--nope")
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_exits_zero() {
    let mut tracker = common::Tracker::start("cli-sigterm", &common::base_config());
    tracker.signal(libc::SIGTERM);
    let status = tracker
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn privileges_are_dropped_after_binding() {
    let config = format!(
        "{}[privileges]\ndrop = true\nuser = \"nobody\"\n",
        common::base_config()
    );
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    match common::Tracker::try_start("privileges", &config) {
        Ok(tracker) => {
            assert!(root, "only root can drop privileges");
            let status = std::fs::read_to_string(format!("/proc/{}/status", tracker.child.id()))
                .expect("proc status");
            let uid_line = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .expect("Uid line");
            assert!(
                uid_line.split_whitespace().skip(1).all(|id| id == "65534"),
                "still privileged: {uid_line}"
            );
            // It still serves after the drop.
            let mut client = common::udp_client::Client::new(tracker.udp_v4());
            let _ = client.announce(
                common::hash_on_shard(0, 2, 1),
                1,
                1,
                aquatic_udp_protocol::AnnounceEvent::Started,
                1,
            );
        }
        Err(err) => {
            assert!(!root, "root failed to drop privileges: {err}");
            assert!(err.contains("cannot drop privileges"), "{err}");
        }
    }
}
