//! The files in deploy/: the systemd unit verifies, the sample config is
//! what `-p` prints and runs, the example access list loads and is obeyed.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use aquatic_udp_protocol::{AnnounceEvent, OwnedResponse};
use common::{
    assert_parses_to_defaults, base_config, binary, scratch_dir, udp_client::Client as UdpClient,
    Tracker,
};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// `text` with `from` replaced by `to`; `from` must be there, so a changed
/// default cannot silently turn a replacement into a no-op.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not found");
    text.replace(from, to)
}

/// Runs `systemd-analyze verify` on `unit_text` saved as aquatic.service.
/// verify exits 0 for unknown keys, bad values and unknown system call
/// groups ("Unknown key ...", "Failed to parse ...", "Unknown system call
/// group ...", all "ignoring"), so any line naming the unit file is a
/// failure too (this includes every "Unknown", "Invalid" and "Failed").
fn verify(unit_text: &str, name: &str) -> Result<(), String> {
    let dir = scratch_dir(name);
    let unit = dir.join("aquatic.service");
    std::fs::write(&unit, unit_text).expect("write unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze must be installed (.ci/test installs systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Every complaint about the unit names it: "/tmp/.../aquatic.service:12:
    // Unknown key ..." or "aquatic.service: Command ... is not executable".
    let complaints = stderr.lines().any(|l| l.contains("aquatic.service"));
    if output.status.success() && !complaints {
        Ok(())
    } else {
        Err(format!("status {}: {stderr}", output.status))
    }
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy("aquatic.service")).expect("read unit");
    // verify checks that ExecStart's binary exists: use the one under test.
    for needed in [
        "ExecStartPre=/usr/local/bin/aquatic --check-config /etc/aquatic/config.toml\n",
        "ExecStart=/usr/local/bin/aquatic -c /etc/aquatic/config.toml\n",
        "ExecReload=/usr/local/bin/aquatic --check-config /etc/aquatic/config.toml\n\
         ExecReload=/bin/kill -HUP $MAINPID\n",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed:?}");
    }
    let unit = swap(
        &unit,
        "/usr/local/bin/aquatic",
        env!("CARGO_BIN_EXE_aquatic"),
    );
    for needed in [
        "Type=notify\n",
        "NotifyAccess=main",
        "Restart=on-failure",
        "LimitMEMLOCK=",
        "LimitNOFILE=",
        "DynamicUser=yes",
        "ConfigurationDirectory=aquatic",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed:?}");
    }
    verify(&unit, "unit-ok").expect("the unit verifies cleanly");
    // The check itself must catch mistakes that verify only warns about.
    for (from, to) in [
        ("NoNewPrivileges=", "NoNewPrivilegez="),
        ("LimitMEMLOCK=512M", "LimitMEMLOCK=512Q"),
        ("@system-service", "@system-servise"),
    ] {
        let broken = swap(&unit, from, to);
        assert!(
            verify(&broken, "unit-broken").is_err(),
            "{to:?} went unnoticed"
        );
    }
}

/// The binary's longest graceful stop with the shipped defaults (the
/// executors' snapshot, private mode's last flush in what they leave, the
/// exit grace) fits in the unit's `TimeoutStopSec=`: otherwise systemd's
/// SIGKILL comes first and the snapshot or the accounting file is lost.
#[test]
fn the_longest_stop_fits_the_units_stop_timeout() {
    let unit = std::fs::read_to_string(deploy("aquatic.service")).expect("read unit");
    let values: Vec<u64> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(|v| v.trim().parse().expect("TimeoutStopSec= in whole seconds"))
        .collect();
    assert_eq!(values.len(), 1, "one TimeoutStopSec= in the unit");
    let sample = std::fs::read_to_string(deploy("config.toml")).expect("read sample");
    let config: aquatic::config::Config = toml::from_str(&sample).expect("sample parses");
    let longest = config.snapshot.worst_case_stop();
    assert!(
        longest < Duration::from_secs(values[0]),
        "a stop may take {longest:?} (snapshot.stop_timeout_secs and the exit grace; \
         private.stop_flush_timeout_secs only within it), more than TimeoutStopSec={}",
        values[0]
    );
}

#[test]
fn sample_config_parses() {
    let sample = std::fs::read_to_string(deploy("config.toml")).expect("read sample");
    let printed = binary().arg("-p").output().expect("run -p");
    assert!(printed.status.success());
    assert!(
        String::from_utf8_lossy(&printed.stdout) == sample,
        "deploy/config.toml is stale: regenerate it with \
         `cargo build -p aquatic && target/debug/aquatic -p > deploy/config.toml`"
    );

    // It parses (this flag prints and exits) to the built-in defaults.
    assert_parses_to_defaults(&deploy("config.toml"));

    // And it runs: on free ports and without pinning (tests share the
    // machine), otherwise as shipped.
    let mut runnable = sample.clone();
    for (from, to) in [
        ("\"[::]:3000\"", "\"[::]:0\""),
        ("\"[::]:3001\"", "\"[::]:0\""),
        ("\"[::]:3002\"", "\"[::]:0\""),
        ("pin_cpus = true", "pin_cpus = false"),
        ("workers = 0", "workers = 2"),
    ] {
        runnable = swap(&runnable, from, to);
    }
    let mut tracker = Tracker::start("sample-config", &runnable);
    assert!(tracker.udp.is_some() && tracker.http.is_some() && tracker.ws.is_some());
    tracker.signal(libc::SIGTERM);
    let status = tracker.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0), "what systemd sees on stop");
}

#[test]
fn access_list_example_parses() {
    let path = deploy("access-list.example");
    let text = std::fs::read_to_string(&path).expect("read example");
    let listed: Vec<[u8; 20]> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            assert_eq!(l.len(), 40, "{l:?}");
            let mut hash = [0u8; 20];
            for (i, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&l[2 * i..2 * i + 2], 16).expect("hex");
            }
            hash
        })
        .collect();
    assert!(listed.len() >= 3, "a few example hashes");

    let config = format!(
        "{}[access_list]\nmode = \"allow\"\npath = {:?}\n",
        base_config(),
        path.display().to_string()
    );
    let tracker = Tracker::start("access-list-example", &config);
    let mut client = UdpClient::new(tracker.udp_v4());
    for hash in listed {
        let response = client.announce(hash, 1, 1000, AnnounceEvent::Started, 10);
        assert!(
            matches!(response, OwnedResponse::AnnounceIpv4 { .. }),
            "listed {hash:02x?} refused: {response:?}"
        );
    }
    let response = client.announce([0x11; 20], 1, 1000, AnnounceEvent::Started, 10);
    assert!(
        matches!(response, OwnedResponse::Error { .. }),
        "an unlisted hash was served: {response:?}"
    );
}
