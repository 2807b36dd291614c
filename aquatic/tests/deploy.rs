//! The files in deploy/: the systemd unit verifies, the sample config is
//! what `-p` prints and runs, the example access list loads.

mod common;

use std::{path::PathBuf, process::Command};

use common::{base_config, scratch_dir, Tracker};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// `systemd-analyze verify` exits 0 even for unknown keys, so every line
/// that names the unit file counts as a failure too.
fn verify(unit_text: &str, name: &str) -> Result<(), String> {
    let dir = scratch_dir(name);
    let unit = dir.join("aquatic.service");
    std::fs::write(&unit, unit_text).expect("write unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze must be installed (.ci/test installs systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("aquatic.service"))
        .collect();
    if output.status.success() && complaints.is_empty() {
        Ok(())
    } else {
        Err(format!("status {}: {stderr}", output.status))
    }
}

fn unit_with_test_binary() -> String {
    let unit = std::fs::read_to_string(deploy("aquatic.service")).expect("read unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/aquatic -c /etc/aquatic/config.toml"));
    // verify checks that the binary exists: point it at the one under test.
    unit.replace("/usr/local/bin/aquatic", env!("CARGO_BIN_EXE_aquatic"))
}

#[test]
fn systemd_unit_verifies() {
    let unit = unit_with_test_binary();
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -USR1 $MAINPID",
        "Restart=on-failure",
        "LimitMEMLOCK=",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "io_uring_setup io_uring_enter io_uring_register",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    verify(&unit, "unit-ok").expect("the unit verifies cleanly");
    // The check itself must catch a typo.
    let broken = unit.replace("NoNewPrivileges=", "NoNewPrivilegez=");
    assert!(
        verify(&broken, "unit-broken").is_err(),
        "a misspelt key went unnoticed"
    );
}

#[test]
fn sample_config_is_the_printed_default_and_runs() {
    let sample = std::fs::read_to_string(deploy("config.toml")).expect("read sample");
    let printed = Command::new(env!("CARGO_BIN_EXE_aquatic"))
        .arg("-p")
        .output()
        .expect("run -p");
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        sample,
        "deploy/config.toml is stale: regenerate it with `aquatic -p > deploy/config.toml`"
    );
    // Run it, on free ports and without pinning (tests share the machine).
    let runnable = sample
        .replace("\"[::]:3000\"", "\"[::]:0\"")
        .replace("\"[::]:3001\"", "\"[::]:0\"")
        .replace("\"[::]:3002\"", "\"[::]:0\"")
        .replace("pin_cpus = true", "pin_cpus = false")
        .replace("workers = 0", "workers = 2");
    let tracker = Tracker::start("sample-config", &runnable);
    assert!(tracker.udp.is_some() && tracker.http.is_some() && tracker.ws.is_some());
}

#[test]
fn example_access_list_loads() {
    let config = format!(
        "{}[access_list]\nmode = \"allow\"\npath = {:?}\n",
        base_config(),
        deploy("access-list.example").display().to_string()
    );
    Tracker::start("access-list-example", &config);
}
