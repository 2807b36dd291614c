//! Private tracker mode end to end: the real binary against a real MariaDB
//! server that each test starts for itself (tests/common/mariadb.rs).

mod common;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use aquatic_http_protocol::bencode::Value;
use common::{
    eventually,
    http_client::{percent, read_responses},
    mariadb::{free_port, MariaDb},
    metrics_client::metrics_text,
    Tracker,
};
use mysql::prelude::Queryable;

/// Waits for the database to show what the tracker wrote.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

fn passkey(user: u32) -> String {
    format!("passkey{user:025}")
}

/// Peer ids on the seeded whitelist start with "-AQ".
fn peer_id(n: u8) -> [u8; 20] {
    let mut id = *b"-AQ0100-000000000000";
    id[19] = n;
    id
}

fn hash(torrent: u32) -> [u8; 20] {
    [u8::try_from(torrent).expect("small id"); 20]
}

/// Users 1 (member), 2 (disabled), 3 (seed only), 4 (member), 5 (to be
/// removed); torrents 10 (normal), 11 (freeleech), 12 (neutral); the
/// whitelist allows "-AQ" peer ids.
fn seed(db: &MariaDb) {
    let mut conn = db.conn();
    for (id, can_leech, enabled) in [(1, 1, 1), (2, 1, 0), (3, 0, 1), (4, 1, 1), (5, 1, 1)] {
        conn.query_drop(format!(
            "INSERT INTO tracker_users (id, passkey, can_leech, enabled) VALUES \
             ({id}, '{}', {can_leech}, {enabled})",
            passkey(id)
        ))
        .expect("user");
    }
    for (id, freeleech) in [(10, "none"), (11, "free"), (12, "neutral")] {
        conn.query_drop(format!(
            "INSERT INTO tracker_torrents (id, info_hash, freeleech) VALUES \
             ({id}, X'{}', '{freeleech}')",
            hex(&hash(id))
        ))
        .expect("torrent");
    }
    conn.query_drop("INSERT INTO tracker_client_whitelist (peer_id_prefix) VALUES ('-AQ')")
        .expect("whitelist");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tracker_config(db_address: SocketAddr, db: &MariaDb, extra: &str) -> String {
    format!(
        "workers = 2\nlog_level = \"info\"\n[runtime]\npin_cpus = false\n[udp]\nenabled = false\n\
         [ws]\nenabled = false\n[http]\naddress = \"[::]:0\"\n[metrics]\nenabled = true\n\
         address = \"127.0.0.1:0\"\n{}",
        db.private_config(db_address, extra)
    )
}

/// One private announce.
struct Announce {
    user: u32,
    torrent: u32,
    peer: [u8; 20],
    port: u16,
    uploaded: u64,
    downloaded: u64,
    left: u64,
    event: Option<&'static str>,
}

impl Announce {
    fn new(user: u32, torrent: u32, peer: u8) -> Self {
        Self {
            user,
            torrent,
            peer: peer_id(peer),
            port: 6000 + u16::from(peer),
            uploaded: 0,
            downloaded: 0,
            left: 1000,
            event: None,
        }
    }

    fn counters(self, uploaded: u64, downloaded: u64, left: u64) -> Self {
        Self {
            uploaded,
            downloaded,
            left,
            ..self
        }
    }

    fn event(self, event: &'static str) -> Self {
        Self {
            event: Some(event),
            ..self
        }
    }

    fn target(&self) -> String {
        let mut target = format!(
            "/{}/announce?info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1",
            passkey(self.user),
            percent(&hash(self.torrent)),
            percent(&self.peer),
            self.port,
            self.uploaded,
            self.downloaded,
            self.left
        );
        if let Some(event) = self.event {
            target.push_str(&format!("&event={event}"));
        }
        target
    }

    /// Sends it to `addr`: (status, body).
    fn send_to(&self, addr: SocketAddr) -> (u16, Value) {
        get(addr, &self.target())
    }
}

fn get(addr: SocketAddr, target: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: tracker\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    read_responses(&mut stream, 1).remove(0)
}

fn v4(tracker: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()))
}

fn v6(tracker: &Tracker) -> SocketAddr {
    SocketAddr::from((
        std::net::Ipv6Addr::LOCALHOST,
        tracker.http.expect("http").port(),
    ))
}

/// The failure reason of a response, checked to be valid UTF-8.
fn failure(body: &Value) -> Option<String> {
    body.get(b"failure reason").map(|reason| {
        let bytes = reason.as_bytes().expect("a string");
        String::from_utf8(bytes.to_vec()).expect("failure reasons are valid UTF-8")
    })
}

/// Waits until every executor holds the first loaded users and torrents
/// (the tracker prints a line then; before it, an announce reaching an
/// executor that has not taken them yet is told "tracker is starting"),
/// then announces member 1 on torrent 10.
fn wait_loaded(tracker: &Tracker, wait: Duration) {
    assert!(
        tracker.wait_for_stdout("aquatic: private data loaded", wait),
        "the tracker never loaded its data"
    );
    ok(v4(tracker), &Announce::new(1, 10, 1).event("started"));
}

fn ok(addr: SocketAddr, announce: &Announce) -> Value {
    let (status, body) = announce.send_to(addr);
    assert_eq!(status, 200);
    assert_eq!(failure(&body), None, "announce refused: {body:?}");
    body
}

fn refused(addr: SocketAddr, announce: &Announce) -> String {
    let (status, body) = announce.send_to(addr);
    assert_eq!(status, 200, "a refusal is an answer the client reads");
    failure(&body).unwrap_or_else(|| panic!("not refused: {body:?}"))
}

/// (uploaded, downloaded) credited to `user` on `torrent`.
fn transfer(db: &MariaDb, user: u32, torrent: u32) -> Option<(u64, u64)> {
    db.conn()
        .query_first(format!(
            "SELECT uploaded, downloaded FROM tracker_transfer \
             WHERE user_id = {user} AND torrent_id = {torrent}"
        ))
        .expect("query")
}

fn wait_transfer(db: &MariaDb, user: u32, torrent: u32, expected: (u64, u64)) {
    let found = eventually(FLUSH_WAIT, || {
        (transfer(db, user, torrent) == Some(expected)).then_some(())
    });
    assert!(
        found.is_some(),
        "user {user} torrent {torrent}: expected {expected:?}, database has {:?}",
        transfer(db, user, torrent)
    );
}

/// A figure of the tracker's metrics (a sample without labels).
fn metric(tracker: &Tracker, name: &str) -> f64 {
    let text = metrics_text(tracker.metrics.expect("metrics"));
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the tracker has nothing left to write.
fn wait_flushed(tracker: &Tracker) {
    let done = eventually(FLUSH_WAIT, || {
        (metric(tracker, "aquatic_private_pending_rows") == 0.0).then_some(())
    });
    assert!(done.is_some(), "rows still pending");
}

/// Sends SIGUSR1 and waits until the reload shows in the load counter.
fn reload(tracker: &Tracker) {
    tracker.signal(libc::SIGUSR1);
}

/// Addresses, snatches, and seeders/leechers/snatched per torrent, as read back.
type Outcome = (
    Vec<(u32, String, u16)>,
    Vec<(u32, u32, u32)>,
    Vec<(u32, u32, u32, u32)>,
);

#[test]
fn refusals_accounting_addresses_and_reloads() {
    let db = MariaDb::start("accounting");
    seed(&db);
    let tracker = Tracker::start(
        "private-accounting",
        &tracker_config(db.address(), &db, "reload_interval_secs = 0\n"),
    );
    let addr = v4(&tracker);
    // The first load happens right away; wait for it.
    wait_loaded(&tracker, FLUSH_WAIT);

    // Each refusal, with its own reason.
    assert_eq!(refused(addr, &Announce::new(9, 10, 2)), "unknown passkey");
    assert_eq!(
        refused(addr, &Announce::new(2, 10, 2)),
        "your account is disabled"
    );
    assert_eq!(
        refused(addr, &Announce::new(1, 99, 2)),
        "torrent not registered with this tracker"
    );
    let mut other_client = Announce::new(1, 10, 2);
    other_client.peer = *b"-XX0100-000000000000";
    assert_eq!(
        refused(addr, &other_client),
        "your client is not on the whitelist"
    );
    assert_eq!(
        refused(addr, &Announce::new(3, 10, 3)),
        "leeching is not allowed for your account"
    );
    // Seeding is what a seed-only member may do.
    ok(addr, &Announce::new(3, 11, 3).counters(0, 0, 0));
    let (status, body) = get(
        addr,
        &format!(
            "/announce?info_hash={}&peer_id={}&port=1&left=1",
            percent(&hash(10)),
            percent(&peer_id(1))
        ),
    );
    assert_eq!(status, 200);
    assert_eq!(
        failure(&body).as_deref(),
        Some("passkey required: use /<passkey>/announce")
    );
    let (_, body) = get(addr, "/short/announce?x=1");
    assert_eq!(failure(&body).as_deref(), Some("invalid passkey"));
    // A scrape needs a member's passkey too.
    let (_, body) = get(
        addr,
        &format!("/{}/scrape?info_hash={}", passkey(9), percent(&hash(10))),
    );
    assert_eq!(failure(&body).as_deref(), Some("unknown passkey"));

    // Member 1 over IPv4: started, then without event, then completed.
    ok(addr, &Announce::new(1, 10, 1).counters(1000, 500, 500));
    ok(
        addr,
        &Announce::new(1, 10, 1)
            .counters(3000, 1000, 0)
            .event("completed"),
    );
    // Member 4 over IPv6, leeching.
    let addr6 = v6(&tracker);
    ok(addr6, &Announce::new(4, 10, 4).event("started"));
    let body = ok(addr6, &Announce::new(4, 10, 4).counters(0, 700, 300));
    assert_eq!(body.get(b"complete").and_then(Value::as_int), Some(1));
    assert_eq!(body.get(b"incomplete").and_then(Value::as_int), Some(1));
    // Freeleech: upload counts, download does not; neutral: neither.
    ok(addr, &Announce::new(1, 11, 5).event("started"));
    ok(addr, &Announce::new(1, 11, 5).counters(400, 800, 200));
    ok(addr, &Announce::new(1, 12, 6).event("started"));
    ok(addr, &Announce::new(1, 12, 6).counters(400, 800, 200));
    // Counters that go backwards (a restarted client) credit nothing.
    ok(addr, &Announce::new(1, 12, 6).counters(10, 10, 200));

    wait_transfer(&db, 1, 10, (3000, 1000));
    wait_transfer(&db, 4, 10, (0, 700));
    wait_transfer(&db, 1, 11, (400, 0));
    wait_transfer(&db, 1, 12, (0, 0));
    wait_flushed(&tracker);
    let mut conn = db.conn();
    // What the database should hold once every hand-over is written.
    let expected_addresses = vec![
        (1, "127.0.0.1".to_owned(), 6001),
        (4, "::1".to_owned(), 6004),
    ];
    let expected_snatches = vec![(1, 10, 1)];
    let expected_stats = vec![(10, 1, 1, 1), (11, 1, 1, 0), (12, 0, 1, 0)];
    let mut read = || -> Outcome {
        let addresses = conn
            .query(
                "SELECT user_id, INET6_NTOA(last_ip), last_port FROM tracker_transfer \
                 WHERE torrent_id = 10 ORDER BY user_id",
            )
            .expect("query");
        let snatches = conn
            .query("SELECT user_id, torrent_id, times FROM tracker_snatches")
            .expect("query");
        let stats = conn
            .query(
                "SELECT torrent_id, seeders, leechers, snatched FROM tracker_torrent_stats \
                 ORDER BY torrent_id",
            )
            .expect("query");
        (addresses, snatches, stats)
    };
    let expected = (expected_addresses, expected_snatches, expected_stats);
    let matched = eventually(FLUSH_WAIT, || (read() == expected).then_some(()));
    assert!(
        matched.is_some(),
        "(addresses, snatches, seeders/leechers/snatched): expected {expected:?}, database has {:?}",
        read()
    );
    // The private swarm is scraped with a passkey.
    let (_, body) = get(
        addr,
        &format!("/{}/scrape?info_hash={}", passkey(1), percent(&hash(10))),
    );
    assert_eq!(failure(&body), None);

    // A passkey removed is refused after SIGUSR1; one added is accepted.
    conn.query_drop("DELETE FROM tracker_users WHERE id = 5")
        .expect("delete");
    conn.query_drop(format!(
        "INSERT INTO tracker_users (id, passkey) VALUES (6, '{}')",
        passkey(6)
    ))
    .expect("insert");
    ok(addr, &Announce::new(5, 10, 7).event("started"));
    reload(&tracker);
    let removed = eventually(FLUSH_WAIT, || {
        let (_, body) = Announce::new(5, 10, 7).send_to(addr);
        (failure(&body).as_deref() == Some("unknown passkey")).then_some(())
    });
    assert!(removed.is_some(), "removed passkey still accepted");
    ok(addr, &Announce::new(6, 10, 8).event("started"));
}

#[test]
fn starts_without_database_and_reloads_on_its_timer() {
    // The database is not there yet: the tracker starts and says so.
    let port = free_port();
    let dir = common::scratch_dir("private-late");
    let password = dir.join("password");
    std::fs::write(&password, format!("{}\n", common::mariadb::PASSWORD)).expect("write");
    let config = format!(
        "workers = 2\nlog_level = \"info\"\n[runtime]\npin_cpus = false\n[udp]\nenabled = false\n\
         [ws]\nenabled = false\n[http]\naddress = \"[::]:0\"\n[private]\nenabled = true\n\
         database_host = \"127.0.0.1\"\ndatabase_port = {}\ndatabase_password_file = {:?}\n\
         flush_interval_secs = 1\nreload_interval_secs = 1\nconnect_timeout_secs = 1\n",
        port,
        password.display().to_string()
    );
    let tracker = Tracker::start("private-late", &config);
    let addr = v4(&tracker);
    assert_eq!(
        refused(addr, &Announce::new(1, 10, 1)),
        "tracker is starting, try again shortly"
    );
    let db = MariaDb::start_on("late", port, None);
    seed(&db);
    wait_loaded(&tracker, Duration::from_secs(60));
    // A member added is accepted after reload_interval_secs, no signal.
    db.conn()
        .query_drop(format!(
            "INSERT INTO tracker_users (id, passkey) VALUES (7, '{}')",
            passkey(7)
        ))
        .expect("insert");
    let added = eventually(FLUSH_WAIT, || {
        let (_, body) = Announce::new(7, 10, 2).event("started").send_to(addr);
        (failure(&body).is_none()).then_some(())
    });
    assert!(added.is_some(), "the new passkey was never accepted");
    drop(tracker);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_flushes_pending_deltas() {
    let db = MariaDb::start("sigterm");
    seed(&db);
    // Flushes would come only once an hour: what arrives is the stop's.
    let extra = "reload_interval_secs = 0\n";
    let config = tracker_config(db.address(), &db, extra)
        .replace("flush_interval_secs = 1", "flush_interval_secs = 3600");
    let mut tracker = Tracker::start("private-sigterm", &config);
    let addr = v4(&tracker);
    wait_loaded(&tracker, FLUSH_WAIT);
    ok(addr, &Announce::new(1, 10, 1).counters(123, 45, 10));
    assert_eq!(
        transfer(&db, 1, 10),
        None,
        "nothing written before the stop"
    );
    tracker.signal(libc::SIGTERM);
    let status = tracker.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(transfer(&db, 1, 10), Some((123, 45)));
}

/// Sends the same announces through an outage made by `outage` and checks
/// that the totals are those of a run without it.
fn totals_survive(name: &str, outage: impl FnOnce(&mut MariaDb, &dyn Fn(u64))) {
    let mut db = MariaDb::start(name);
    seed(&db);
    let tracker = Tracker::start(
        &format!("private-{name}"),
        &tracker_config(db.address(), &db, "reload_interval_secs = 0\n"),
    );
    let addr = v4(&tracker);
    wait_loaded(&tracker, FLUSH_WAIT);
    ok(addr, &Announce::new(1, 10, 1).counters(100, 10, 900));
    wait_transfer(&db, 1, 10, (100, 10));
    let step = |n: u64| {
        ok(
            addr,
            &Announce::new(1, 10, 1).counters(100 * n, 10 * n, 900),
        );
    };
    outage(&mut db, &step);
    step(20);
    wait_transfer(&db, 1, 10, (2000, 200));
    wait_flushed(&tracker);
    assert_eq!(transfer(&db, 1, 10), Some((2000, 200)));
    assert!(metric(&tracker, "aquatic_private_write_failures_total") >= 1.0);
}

#[test]
fn database_stopped_mid_run() {
    totals_survive("stopped", |db, step| {
        db.stop();
        // Announces are answered while the database is gone, across
        // several failed flushes.
        for n in 2..=10 {
            step(n);
            std::thread::sleep(Duration::from_millis(300));
        }
        db.run();
    });
}

#[test]
fn database_frozen_mid_run() {
    totals_survive("frozen", |db, step| {
        db.signal(libc::SIGSTOP);
        for n in 2..=10 {
            step(n);
            std::thread::sleep(Duration::from_millis(500));
        }
        db.signal(libc::SIGCONT);
    });
}

/// A TCP proxy that forwards a MySQL connection and, once, forwards the
/// client's COMMIT to the server, then cuts both connections before the
/// server's answer reaches the client.
struct CommitCutter {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl CommitCutter {
    fn start(server: SocketAddr) -> CommitCutter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let done = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(upstream) = TcpStream::connect(server) else {
                    continue;
                };
                let done = done.clone();
                let (c2, u2) = (
                    client.try_clone().expect("clone"),
                    upstream.try_clone().expect("clone"),
                );
                // Server to client: plain copy, unless the cut happened.
                let cut_seen = done.clone();
                std::thread::spawn(move || copy_until_cut(u2, c2, &cut_seen));
                std::thread::spawn(move || client_to_server(client, upstream, &done));
            }
        });
        CommitCutter { address, cut }
    }
}

fn copy_until_cut(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || cut.load(Ordering::SeqCst) && to.peer_addr().is_err() {
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// Forwards MySQL packets; the first COM_QUERY "COMMIT" is forwarded, then
/// the client's connection is cut at once, before any answer arrives.
fn client_to_server(mut client: TcpStream, mut server: TcpStream, cut: &AtomicBool) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16384];
    while let Ok(n) = client.read(&mut buf) {
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        // Whole packets: 3-byte length, sequence id, payload.
        while pending.len() >= 4 {
            let len = usize::from(pending[0])
                | usize::from(pending[1]) << 8
                | usize::from(pending[2]) << 16;
            if pending.len() < 4 + len {
                break;
            }
            let packet: Vec<u8> = pending.drain(..4 + len).collect();
            let is_commit =
                packet.get(4) == Some(&0x03) && packet[5..].eq_ignore_ascii_case(b"COMMIT");
            if server.write_all(&packet).is_err() {
                return;
            }
            if is_commit && !cut.swap(true, Ordering::SeqCst) {
                // The COMMIT reached the server; its answer never reaches
                // the tracker.
                let _ = client.shutdown(Shutdown::Both);
                // Let the server finish the commit before it sees the
                // connection close.
                std::thread::sleep(Duration::from_millis(500));
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}

#[test]
fn a_commit_whose_answer_is_lost_is_not_applied_twice() {
    let db = MariaDb::start("lost-ack");
    seed(&db);
    let proxy = CommitCutter::start(db.address());
    let tracker = Tracker::start(
        "private-lost-ack",
        &tracker_config(proxy.address, &db, "reload_interval_secs = 0\n"),
    );
    let addr = v4(&tracker);
    wait_loaded(&tracker, FLUSH_WAIT);
    ok(addr, &Announce::new(1, 10, 1).counters(500, 50, 900));
    wait_transfer(&db, 1, 10, (500, 50));
    assert!(proxy.cut.load(Ordering::SeqCst), "the proxy cut a COMMIT");
    // The retry found its batch committed and did not apply it again.
    let skipped = eventually(FLUSH_WAIT, || {
        (metric(&tracker, "aquatic_private_batches_already_applied_total") >= 1.0).then_some(())
    });
    assert!(skipped.is_some(), "the retry was not recognised");
    ok(addr, &Announce::new(1, 10, 1).counters(600, 60, 900));
    wait_transfer(&db, 1, 10, (600, 60));
    wait_flushed(&tracker);
    assert_eq!(transfer(&db, 1, 10), Some((600, 60)));
}

#[test]
fn database_over_tls() {
    let dir = common::scratch_dir("mariadb-cert");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write");
    let db = MariaDb::start_on("tls", free_port(), Some((cert.clone(), key)));
    seed(&db);
    // The user REQUIREs SSL: without the CA the tracker cannot even load.
    let plain = tracker_config(db.address(), &db, "reload_interval_secs = 0\n").replace(
        "database_host = \"127.0.0.1\"",
        "database_host = \"localhost\"",
    );
    let with_tls = format!(
        "{plain}database_tls_ca_path = {:?}\n",
        cert.display().to_string()
    );
    let tracker = Tracker::start("private-tls", &with_tls);
    let addr = v4(&tracker);
    wait_loaded(&tracker, FLUSH_WAIT);
    ok(addr, &Announce::new(1, 10, 1).counters(42, 4, 900));
    wait_transfer(&db, 1, 10, (42, 4));
    drop(tracker);
    let tracker = Tracker::start("private-no-tls", &plain);
    let failed = eventually(FLUSH_WAIT, || {
        (metric(&tracker, "aquatic_private_load_failures_total") >= 1.0).then_some(())
    });
    assert!(failed.is_some(), "a plain connection was not refused");
    assert_eq!(
        refused(v4(&tracker), &Announce::new(1, 10, 1)),
        "tracker is starting, try again shortly",
        "a plain connection is refused by the server"
    );
    drop(tracker);
    let _ = std::fs::remove_dir_all(dir);
}

/// A private tracker whose state directory is `state`: snapshots only at
/// stop, flushes only at stop (so what the database holds is exactly
/// what each stop wrote).
fn restartable_config(db: &MariaDb, state: &std::path::Path) -> String {
    let extra = "reload_interval_secs = 0\nstop_flush_timeout_secs = 2\n";
    format!(
        "{}[snapshot]\ndir = {:?}\ninterval_secs = 0\n",
        tracker_config(db.address(), db, extra)
            .replace("flush_interval_secs = 1", "flush_interval_secs = 3600"),
        state.display().to_string()
    )
}

fn stop(tracker: &mut Tracker) {
    tracker.signal(libc::SIGTERM);
    let status = tracker.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Member 4's client on torrent 10, with these counters.
fn member_4(uploaded: u64, downloaded: u64) -> Announce {
    Announce::new(4, 10, 4).counters(uploaded, downloaded, 500)
}

/// A clean restart with the database there: the stop writes the deltas,
/// and the member's first announce after the restart is credited only its
/// growth since its last one before (its baseline was kept), neither its
/// whole counters again nor nothing.
#[test]
fn a_restart_credits_exactly_the_growth() {
    let db = MariaDb::start("restart");
    seed(&db);
    let state = common::scratch_dir("private-restart-state");
    let config = restartable_config(&db, &state);
    let mut tracker = Tracker::start("private-restart-1", &config);
    wait_loaded(&tracker, FLUSH_WAIT);
    ok(v4(&tracker), &member_4(0, 0).event("started"));
    ok(v4(&tracker), &member_4(1000, 100));
    stop(&mut tracker);
    assert_eq!(transfer(&db, 4, 10), Some((1000, 100)), "the stop's flush");
    assert!(state.join("private-accounting.snapshot").exists());

    let mut tracker = Tracker::start("private-restart-2", &config);
    assert!(
        tracker
            .wait_for_stderr("private: restored 2 baselines", FLUSH_WAIT)
            .is_some(),
        "{}",
        tracker.stderr_so_far()
    );
    assert!(
        !state.join("private-accounting.snapshot").exists(),
        "taken as it is read"
    );
    wait_loaded(&tracker, FLUSH_WAIT);
    // The private swarm is back too: member 4's client is a leecher there.
    let body = ok(v4(&tracker), &Announce::new(1, 10, 1).counters(0, 0, 0));
    assert_eq!(body.get(b"incomplete").and_then(Value::as_int), Some(1));
    ok(v4(&tracker), &member_4(1500, 300));
    stop(&mut tracker);
    // 0 -> 1000 -> 1500 uploaded, 0 -> 100 -> 300 downloaded.
    assert_eq!(transfer(&db, 4, 10), Some((1500, 300)));
    let _ = std::fs::remove_dir_all(state);
}

/// A stop while the database is away keeps the deltas in the state
/// directory; the next run writes them once (a third run does not write
/// them again), and its member's first announce is credited its growth.
#[test]
fn deltas_of_a_stop_without_database_are_written_once_after_the_restart() {
    let mut db = MariaDb::start("restart-down");
    seed(&db);
    let state = common::scratch_dir("private-restart-down-state");
    let config = restartable_config(&db, &state);
    let mut tracker = Tracker::start("private-restart-down-1", &config);
    wait_loaded(&tracker, FLUSH_WAIT);
    ok(v4(&tracker), &member_4(0, 0).event("started"));
    ok(v4(&tracker), &member_4(1000, 100));
    db.stop();
    stop(&mut tracker);
    let kept = tracker.stderr_text();
    assert!(
        kept.contains("are kept in the state directory for the next start"),
        "{kept}"
    );
    db.run();
    assert_eq!(transfer(&db, 4, 10), None, "nothing reached the database");

    let mut tracker = Tracker::start("private-restart-down-2", &config);
    wait_loaded(&tracker, FLUSH_WAIT);
    ok(v4(&tracker), &member_4(1500, 300));
    stop(&mut tracker);
    assert_eq!(transfer(&db, 4, 10), Some((1500, 300)));

    // Once: a third run writes nothing of the first run's again.
    let mut tracker = Tracker::start("private-restart-down-3", &config);
    wait_loaded(&tracker, FLUSH_WAIT);
    ok(v4(&tracker), &member_4(1600, 300));
    stop(&mut tracker);
    assert_eq!(transfer(&db, 4, 10), Some((1600, 300)));
    let _ = std::fs::remove_dir_all(state);
}
