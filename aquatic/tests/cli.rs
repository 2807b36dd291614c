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

#[test]
fn print_config_into_a_closed_pipe_exits_quietly() {
    // `aquatic -p | head -3`: the reader has gone before the write. The
    // read end is closed before the child starts, so the write surely
    // meets EPIPE.
    for flag in ["-p", "--print-parsed-config"] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = binary()
            .arg(flag)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{flag}: no panic");
    }
}

/// Runs a tracker that fails at once (its UDP address is not local) with
/// stderr in a file, `JOURNAL_STREAM` set from `journal_stream` (given the
/// file's device and inode), and returns what it logged.
fn failing_start_stderr(name: &str, journal_stream: impl Fn(u64, u64) -> String) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = scratch_dir(name);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "log_level = \"info\"\n[udp]\naddress = \"192.0.2.1:0\"\n[http]\nenabled = false\n\
         [ws]\nenabled = false\n[runtime]\npin_cpus = false\n",
    )
    .expect("write");
    let log = dir.join("stderr.log");
    let file = std::fs::File::create(&log).expect("create");
    let meta = file.metadata().expect("metadata");
    let status = binary()
        .arg("-c")
        .arg(&config)
        .env("JOURNAL_STREAM", journal_stream(meta.dev(), meta.ino()))
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(1));
    std::fs::read_to_string(&log).expect("read log")
}

#[test]
fn journal_lines_have_priorities_and_no_timestamp() {
    let text = failing_start_stderr("cli-journal", |dev, ino| format!("{dev}:{ino}"));
    let line = text
        .lines()
        .find(|l| l.contains("cannot bind"))
        .unwrap_or_else(|| panic!("the bind error is logged: {text}"));
    // `<priority>LEVEL [target] message`: nothing, no timestamp, between
    // the level and the target.
    assert!(line.starts_with("<3>ERROR [aquatic"), "{line}");
}

#[test]
fn lines_elsewhere_keep_their_timestamp() {
    // The variable inherited from a journal-connected parent, but stderr
    // is a file: a device:inode that is not stderr's.
    let text = failing_start_stderr("cli-not-journal", |dev, ino| format!("{dev}:{}", ino + 1));
    let line = text
        .lines()
        .find(|l| l.contains("cannot bind") && l.contains("ERROR"))
        .unwrap_or_else(|| panic!("the bind error is logged: {text}"));
    assert!(!line.starts_with('<'), "{line}");
    assert!(
        line.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "starts with a timestamp: {line}"
    );
}

#[test]
fn check_config_lists_every_problem_with_its_key() {
    let dir = scratch_dir("cli-check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "wrokers = 2\n[udp]\nadress = \"[::]:0\"\n[tracker]\nmax_numwant = 5000\n\
         [access_list]\nmode = \"allow\"\npath = \"/nonexistent/list\"\n",
    )
    .expect("write");
    for flag in ["--check-config", "-t"] {
        let out = binary().arg(flag).arg(&path).output().expect("run");
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let prefix = format!("{}: ", path.display());
        for problem in [
            "udp.adress: unknown key",
            "wrokers: unknown key",
            "tracker.max_numwant: must be at most 3000",
        ] {
            assert!(
                stderr.lines().any(|l| l == format!("{prefix}{problem}")),
                "{flag}: {problem}: {stderr}"
            );
        }
        // The values are checked even though there are unknown keys; the
        // named file only once the values are valid.
        assert!(!stderr.contains("access_list.path"), "{stderr}");
    }

    std::fs::write(
        &path,
        "[access_list]\nmode = \"allow\"\npath = \"/nonexistent/list\"\n",
    )
    .expect("write");
    let out = binary().arg("-t").arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}: access_list.path: ", path.display())),
        "{stderr}"
    );
}

#[test]
fn check_config_passes_a_good_file_without_binding() {
    let dir = scratch_dir("cli-check-ok");
    // A port that is already taken: checking must not try to bind it.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let path = dir.join("good.toml");
    std::fs::write(
        &path,
        format!("{}[udp]\naddress = \"127.0.0.1:{port}\"\n", "workers = 2\n"),
    )
    .expect("write");
    let out = binary()
        .arg("-c")
        .arg(&path)
        .arg("-t")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
    // The printed defaults are a good file too.
    let printed = binary().arg("-p").output().expect("run").stdout;
    std::fs::write(&path, printed).expect("write");
    let out = binary()
        .arg("--check-config")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));

    let out = binary()
        .arg("--check-config")
        .arg(dir.join("missing.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}
