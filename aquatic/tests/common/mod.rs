//! Starts the real binary on random loopback ports and talks to it.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod http_client;
pub mod mariadb;
pub mod metrics_client;
pub mod udp_client;

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A running tracker process, killed on drop.
pub struct Tracker {
    pub child: Child,
    pub udp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// Where the node accepts cluster links, if it is a cluster member.
    pub cluster: Option<SocketAddr>,
    pub config_path: PathBuf,
    pub dir: PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// What the process has written to stderr so far, line by line.
    stderr_lines: std::sync::Arc<std::sync::Mutex<String>>,
    /// The process's stdout lines after its ready line.
    stdout_lines: std::sync::Mutex<mpsc::Receiver<String>>,
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "aquatic-test-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// A port for a listener whose address must be known before its process
/// starts (a cluster member's link, a database server).
///
/// It is picked at random *below* the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), because that range is where every
/// `port 0` bind and every outgoing connection of the tests running beside
/// this one take their ports: a port found free there and released could
/// be handed to one of them before our listener binds it (CI saw a cluster
/// link port taken that way). Below the range, only another test's random
/// pick can collide, and the port is checked free for TCP and UDP first.
pub fn unused_port() -> u16 {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32768, 60999));
    let candidates = if low >= 2048 {
        low.saturating_sub(16384).max(1024)..low
    } else {
        high.saturating_add(1)..u16::MAX
    };
    assert!(
        candidates.len() >= 1000,
        "no room outside the ephemeral ports {low}-{high}"
    );
    loop {
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), candidates.clone());
        let free = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
            && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok();
        if free {
            return port;
        }
    }
}

/// The binary under test.
pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aquatic"))
}

/// Asserts that the config file at `path` parses to exactly the built-in
/// defaults (what `--print-parsed-config` prints).
pub fn assert_parses_to_defaults(path: &std::path::Path) {
    let parsed = binary()
        .arg("-c")
        .arg(path)
        .arg("--print-parsed-config")
        .output()
        .expect("run");
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let defaults = binary().arg("--print-parsed-config").output().expect("run");
    assert_eq!(
        parsed.stdout,
        defaults.stdout,
        "{} parses to the defaults",
        path.display()
    );
}

/// Config text every test starts from: two workers, port 0 everywhere,
/// quiet logs, no CPU pinning (tests may run in parallel).
pub fn base_config() -> String {
    "workers = 2\nlog_level = \"warn\"\n[runtime]\npin_cpus = false\n[udp]\naddress = \"[::]:0\"\n[http]\naddress = \"[::]:0\"\n[ws]\naddress = \"[::]:0\"\n"
        .to_owned()
}

impl Tracker {
    /// Starts the binary with `config` and waits until it says it is ready.
    pub fn start(name: &str, config: &str) -> Tracker {
        Self::try_start(name, config).unwrap_or_else(|e| panic!("tracker did not start: {e}"))
    }

    pub fn try_start(name: &str, config: &str) -> Result<Tracker, String> {
        Self::try_start_command(name, config, binary())
    }

    /// [`Tracker::try_start`] with a prepared `command` for the binary
    /// (e.g. with a `pre_exec` hook).
    pub fn try_start_command(
        name: &str,
        config: &str,
        mut command: Command,
    ) -> Result<Tracker, String> {
        let dir = scratch_dir(name);
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = command
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aquatic");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let lines = stderr_lines.clone();
        let stderr = std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&line);
                line.clear();
            }
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            let mut all = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
            all.push_str(&rest);
            all
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tracker = Tracker {
            stdout_lines: std::sync::Mutex::new(rx),
            child,
            udp: None,
            http: None,
            ws: None,
            metrics: None,
            cluster: None,
            config_path,
            dir,
            stderr: Some(stderr),
            stderr_lines,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tracker
                .stdout_lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(left);
            match line {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("aquatic: listening on ") {
                        let (scheme, addr) = rest.split_once("://").expect("scheme://addr");
                        let addr: SocketAddr = addr.parse().expect("address");
                        match scheme {
                            "udp" => tracker.udp = Some(addr),
                            "http" | "https" => tracker.http = Some(addr),
                            "ws" | "wss" => tracker.ws = Some(addr),
                            "metrics" => tracker.metrics = Some(addr),
                            "cluster" => tracker.cluster = Some(addr),
                            other => panic!("unknown scheme {other}"),
                        }
                    } else if line.starts_with("aquatic: ready") {
                        return Ok(tracker);
                    }
                }
                Err(_) => {
                    let _ = tracker.child.kill();
                    let status = tracker.child.wait().ok();
                    return Err(format!(
                        "no ready line; exit {status:?}; stderr:\n{}",
                        tracker.stderr_text()
                    ));
                }
            }
        }
    }

    /// Waits up to `timeout` for a stdout line starting with `prefix`
    /// (lines before it are skipped); whether it came.
    pub fn wait_for_stdout(&self, prefix: &str, timeout: Duration) -> bool {
        let lines = self.stdout_lines.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + timeout;
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.starts_with(prefix) {
                return true;
            }
        }
        false
    }

    /// UDP address on IPv4 loopback.
    pub fn udp_v4(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.udp.expect("udp enabled").port()))
    }

    /// UDP address on IPv6 loopback.
    pub fn udp_v6(&self) -> SocketAddr {
        SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            self.udp.expect("udp enabled").port(),
        ))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// What the process has written to stderr so far, while it runs.
    pub fn stderr_so_far(&self) -> String {
        self.stderr_lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for a line of stderr containing `text`.
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> Option<String> {
        eventually(timeout, || {
            self.stderr_so_far()
                .lines()
                .find(|l| l.contains(text))
                .map(str::to_owned)
        })
    }

    /// Everything the process wrote to stderr (after it exited).
    pub fn stderr_text(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tracker stderr:\n{}", self.stderr_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An info hash owned by shard `shard` of `shards` (first 4 bytes decide), with `tag` to tell hashes apart.
pub fn hash_on_shard(shard: u64, shards: u64, tag: u8) -> [u8; 20] {
    let mut h = [tag; 20];
    // shard_of reads the first 4 bytes, big endian, modulo the shard count.
    let base = u64::from(tag) * shards + shard;
    let base = u32::try_from(base).expect("small tag and shard count");
    h[..4].copy_from_slice(&base.to_be_bytes());
    h
}

/// A self-signed certificate for "localhost", written as PEM files in a
/// scratch directory, and a TLS client that trusts it.
pub struct TestCertificate {
    pub dir: PathBuf,
    /// Config lines for a `[http]` or `[ws]` section.
    pub config_lines: String,
    client_config: std::sync::Arc<rustls::ClientConfig>,
}

impl TestCertificate {
    pub fn new(name: &str) -> TestCertificate {
        let dir = scratch_dir(name);
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("generate certificate");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
        std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("write key");
        let config_lines = format!(
            "tls_certificate_path = {:?}\ntls_private_key_path = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).expect("add root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestCertificate {
            dir,
            config_lines,
            client_config: std::sync::Arc::new(client_config),
        }
    }

    /// A TLS connection to `addr` that verifies the certificate.
    pub fn connect(
        &self,
        addr: SocketAddr,
    ) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connection =
            rustls::ClientConnection::new(self.client_config.clone(), name).expect("tls client");
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        rustls::StreamOwned::new(connection, tcp)
    }
}

impl Drop for TestCertificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
