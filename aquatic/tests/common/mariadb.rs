//! A private MariaDB server for one test: its own data directory under a
//! temporary directory, started as `mariadbd --no-defaults` on a free
//! loopback port (no systemd; a system instance is left alone), with the
//! tracker's schema loaded and a user `aquatic` that has only the grants
//! deploy/README.md documents. Stopped and removed on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mysql::{prelude::Queryable, Conn, OptsBuilder};

pub const PASSWORD: &str = "tracker-secret";
const MARIADBD: &str = "/usr/sbin/mariadbd";

/// A running private server.
pub struct MariaDb {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    tls: Option<(PathBuf, PathBuf)>,
}

/// A loopback port nobody listens on right now (see [`super::unused_port`]).
pub fn free_port() -> u16 {
    super::unused_port()
}

impl MariaDb {
    /// A server on a free port with the schema loaded.
    pub fn start(name: &str) -> MariaDb {
        Self::start_on(name, free_port(), None)
    }

    /// A server on `port`; with `tls` (certificate, key), TLS is on and
    /// the tracker's user must use it.
    pub fn start_on(name: &str, port: u16, tls: Option<(PathBuf, PathBuf)>) -> MariaDb {
        assert!(
            Path::new(MARIADBD).exists(),
            "{MARIADBD} is missing: install Debian's mariadb-server (.ci/test does)"
        );
        let dir = super::scratch_dir(&format!("mariadb-{name}"));
        // Its own temporary directory: servers bootstrapping at once in
        // the shared /tmp collide on their temporary tables.
        std::fs::create_dir_all(dir.join("tmp")).expect("tmp dir");
        let install = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .output()
            .expect("run mariadb-install-db");
        assert!(
            install.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        let mut db = MariaDb {
            dir,
            port,
            child: None,
            tls,
        };
        db.run();
        db.setup();
        db
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mariadb.sock")
    }

    /// Starts mariadbd on the existing data directory and waits for it.
    pub fn run(&mut self) {
        let mut command = Command::new(MARIADBD);
        command
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=*")
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--skip-log-bin")
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((cert, key)) = &self.tls {
            command
                .arg(format!("--ssl-cert={}", cert.display()))
                .arg(format!("--ssl-key={}", key.display()))
                .arg(format!("--ssl-ca={}", cert.display()));
        }
        self.child = Some(command.spawn().expect("spawn mariadbd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.root().is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM, waits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the server (SIGSTOP / SIGCONT).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// An administrative connection over the Unix socket.
    pub fn root(&self) -> Result<Conn, mysql::Error> {
        let opts = OptsBuilder::new()
            .socket(Some(self.socket().display().to_string()))
            .user(Some("root"))
            .tcp_connect_timeout(Some(Duration::from_secs(2)));
        Conn::new(opts)
    }

    /// An administrative connection to the tracker's database.
    pub fn conn(&self) -> Conn {
        let opts = OptsBuilder::new()
            .socket(Some(self.socket().display().to_string()))
            .user(Some("root"))
            .db_name(Some("aquatic"));
        Conn::new(opts).expect("connect as root")
    }

    fn setup(&self) {
        let mut conn = self.root().expect("root connection");
        conn.query_drop("CREATE DATABASE aquatic")
            .expect("create database");
        let require = if self.tls.is_some() {
            " REQUIRE SSL"
        } else {
            ""
        };
        conn.query_drop(format!(
            "CREATE USER 'aquatic'@'%' IDENTIFIED BY '{PASSWORD}'{require}"
        ))
        .expect("create user");
        let mut conn = self.conn();
        let schema = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/private/schema.sql"),
        )
        .expect("read schema");
        let schema: String = schema
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for statement in schema.split(';').filter(|s| !s.trim().is_empty()) {
            conn.query_drop(statement).expect("schema statement");
        }
        // The grants deploy/README.md documents: read three tables, write four.
        for grant in [
            "GRANT SELECT ON aquatic.tracker_users TO 'aquatic'@'%'",
            "GRANT SELECT ON aquatic.tracker_torrents TO 'aquatic'@'%'",
            "GRANT SELECT ON aquatic.tracker_client_whitelist TO 'aquatic'@'%'",
            "GRANT SELECT, INSERT, UPDATE ON aquatic.tracker_transfer TO 'aquatic'@'%'",
            "GRANT SELECT, INSERT, UPDATE ON aquatic.tracker_snatches TO 'aquatic'@'%'",
            "GRANT SELECT, INSERT, UPDATE ON aquatic.tracker_torrent_stats TO 'aquatic'@'%'",
            "GRANT SELECT, INSERT, UPDATE ON aquatic.tracker_batches TO 'aquatic'@'%'",
        ] {
            conn.query_drop(grant).expect("grant");
        }
    }

    /// `[private]` config lines pointing the tracker at this server through
    /// `address` (the server itself, or a proxy in front of it).
    pub fn private_config(&self, address: SocketAddr, extra: &str) -> String {
        let password = self.dir.join("password");
        std::fs::write(&password, format!("{PASSWORD}\n")).expect("write password");
        format!(
            "[private]\nenabled = true\ndatabase_host = {:?}\ndatabase_port = {}\n\
             database_password_file = {:?}\nflush_interval_secs = 1\nio_timeout_secs = 2\n\
             connect_timeout_secs = 2\n{extra}",
            address.ip().to_string(),
            address.port(),
            password.display().to_string()
        )
    }

    /// The address to reach the server over TCP.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server would not stop.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
