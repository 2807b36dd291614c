//! Private mode's database thread: loads users, torrents and the client
//! whitelist into memory, and writes the executors' accounting back.
//!
//! ```text
//!   executors ──Batch (bounded channel, try_send)──> database thread
//!                                                      │ pending: merged per (user, torrent)
//!   SIGUSR1 / every reload_interval ──Reload──>        │ every flush_interval: one transaction
//!                                                      v
//!                   MariaDB: multi-row upserts + tracker_batches.last_sequence
//!   Reloadable<Catalog> <── load ──┘
//! ```
//!
//! The thread is the only place that talks to the database; no request
//! waits for it. A flush is one transaction that also records its batch's
//! sequence number: when a COMMIT's acknowledgement is lost, the retry
//! reads the number back and, finding it applied, does not apply it again.
//! While a batch is being retried, newer deltas merge into the next one,
//! so memory is bounded by active users × torrents, not by announces.
//!
//! With a state directory, a stop that cannot write everything (the
//! database is away) keeps what is left in the accounting file, with the
//! executors' baselines (snapshot.rs): the batch in flight under its
//! sequence number, the rest as never tried. The next start hands both
//! back to this thread, which writes them like any other (the batch in
//! flight is not applied again if its COMMIT had landed).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender},
        Arc,
    },
    time::{Duration, Instant},
};

use aquatic_common::InfoHash;
use aquatic_http_protocol::Passkey;
use hashbrown::HashMap;
use mysql::{prelude::Queryable, Conn, OptsBuilder, Row, SslOpts};

use crate::{
    config::PrivateConfig,
    reload::Reloadable,
    snapshot::{Accounting, BaselineRecord, StateDir},
    swarm::private::{Batch, Catalog, Freeleech, RegisteredTorrent, TorrentId, User, UserId},
};

/// The `tracker_batches` row this tracker writes.
const TRACKER_ID: u8 = 1;
/// Rows per INSERT statement (keeps each statement well under
/// `max_allowed_packet`).
const ROWS_PER_STATEMENT: usize = 1000;
/// Longest wait between attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the executors and the main thread send the database thread.
#[derive(Debug)]
pub enum DbMessage {
    /// Accounting from one executor.
    Batch(Batch),
    /// Reload users, torrents and whitelist now (SIGUSR1).
    Reload,
    /// A stopping executor's private baselines, kept in the state
    /// directory with what the last flush leaves.
    Baselines(Vec<BaselineRecord>),
    /// Flush what is pending until `flush_until` (what the graceful stop's
    /// one budget leaves, at most `stop_flush_timeout_secs`), keep what is
    /// left in the state directory, and stop.
    Stop {
        /// When the last flush gives up.
        flush_until: Instant,
    },
}

/// Figures of the database thread for metrics, updated by it alone.
#[derive(Debug, Default)]
pub struct DatabaseStats {
    /// Rows waiting to be written (pending and in flight).
    pub pending_rows: AtomicU64,
    /// Failed flush attempts.
    pub write_failures: AtomicU64,
    /// Failed loads of users, torrents and whitelist.
    pub load_failures: AtomicU64,
    /// Batches committed.
    pub batches_written: AtomicU64,
    /// Rows written.
    pub rows_written: AtomicU64,
    /// Batches found already applied on a retry (a lost COMMIT acknowledgement).
    pub batches_already_applied: AtomicU64,
    /// Users in the last catalog loaded.
    pub users: AtomicU64,
    /// Torrents in the last catalog loaded.
    pub torrents: AtomicU64,
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// The password file could not be read.
    #[error("cannot read the database password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server or the connection failed.
    #[error(transparent)]
    Mysql(#[from] mysql::Error),
}

/// What the thread needs to run.
pub struct DatabaseThread {
    config: PrivateConfig,
    catalog: Arc<Reloadable<Catalog>>,
    stats: Arc<DatabaseStats>,
    on_first_load: Option<Box<dyn FnOnce() + Send>>,
    /// Where a stop keeps the accounting it could not write.
    state: Option<Arc<StateDir>>,
    /// What the last stop kept, to write first.
    restored: Option<(Option<(u64, Batch)>, Batch)>,
    /// The stopping executors' baselines.
    baselines: Vec<BaselineRecord>,
}

impl DatabaseThread {
    /// A thread that publishes into `catalog` and calls `on_first_load`
    /// once the first load succeeded.
    pub fn new(
        config: PrivateConfig,
        catalog: Arc<Reloadable<Catalog>>,
        stats: Arc<DatabaseStats>,
        on_first_load: Box<dyn FnOnce() + Send>,
    ) -> Self {
        Self {
            config,
            catalog,
            stats,
            on_first_load: Some(on_first_load),
            state: None,
            restored: None,
            baselines: Vec::new(),
        }
    }

    /// Keeps what a stop cannot write in `state`, and starts with what
    /// the last stop kept there (`in_flight` under its sequence number,
    /// `pending` never tried).
    pub fn with_state(
        self,
        state: Option<Arc<StateDir>>,
        in_flight: Option<(u64, Batch)>,
        pending: Batch,
    ) -> Self {
        Self {
            state,
            restored: Some((in_flight, pending)),
            ..self
        }
    }

    fn receive(&mut self, writer: &mut Writer, message: DbMessage) {
        match message {
            DbMessage::Batch(batch) => writer.pending.merge(batch),
            DbMessage::Baselines(baselines) => self.baselines.extend(baselines),
            DbMessage::Reload | DbMessage::Stop { .. } => {}
        }
    }

    /// Runs until [`DbMessage::Stop`] (or every sender is gone, then for
    /// at most `stop_flush_timeout_secs`), then flushes.
    pub fn run(mut self, messages: Receiver<DbMessage>) {
        let flush_interval = Duration::from_secs(self.config.flush_interval_secs);
        let reload_interval = match self.config.reload_interval_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let mut writer = Writer::default();
        if let Some((in_flight, pending)) = self.restored.take() {
            writer.in_flight = in_flight;
            writer.pending = pending;
            if writer.rows() > 0 {
                log::info!(
                    "private: {} rows of statistics kept at the last stop are written first",
                    writer.rows()
                );
            }
        }
        let mut backoff = Backoff::default();
        let mut next_flush = Instant::now() + flush_interval;
        let mut next_reload = Some(Instant::now());
        loop {
            let now = Instant::now();
            let mut wake = next_flush;
            if let Some(reload) = next_reload {
                wake = wake.min(reload);
            }
            let wake = wake.max(backoff.retry_at);
            match messages.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(DbMessage::Reload) => next_reload = Some(Instant::now()),
                Ok(DbMessage::Stop { flush_until }) => {
                    self.stop(&mut writer, &messages, flush_until);
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Ok(message) => self.receive(&mut writer, message),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Take whatever else is queued before doing slow work.
            while let Ok(message) = messages.try_recv() {
                match message {
                    DbMessage::Reload => next_reload = Some(Instant::now()),
                    DbMessage::Stop { flush_until } => {
                        self.stop(&mut writer, &messages, flush_until);
                        return;
                    }
                    message => self.receive(&mut writer, message),
                }
            }
            self.publish_pending(&writer);
            let now = Instant::now();
            if now < backoff.retry_at {
                continue;
            }
            if next_reload.is_some_and(|at| now >= at) {
                match self.load(&mut writer) {
                    Ok(()) => {
                        backoff.reset();
                        next_reload = reload_interval.map(|i| Instant::now() + i);
                    }
                    Err(err) => {
                        self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
                        writer.conn = None;
                        let wait = backoff.fail();
                        if self.catalog.current().1.loaded() {
                            log::warn!("private: reload failed (retrying in {wait:?}): {err}");
                        } else {
                            log::warn!(
                                "private: cannot load users and torrents yet (retrying in \
                                 {wait:?}); announces are answered \"tracker is starting\": {err}"
                            );
                        }
                        continue;
                    }
                }
            }
            if now >= next_flush {
                next_flush = now + flush_interval;
                match writer.flush(&self.config, &self.stats) {
                    Ok(()) => backoff.reset(),
                    Err(err) => {
                        self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                        writer.conn = None;
                        let wait = backoff.fail();
                        log::warn!(
                            "private: writing statistics failed, {} rows kept in memory \
                             (retrying in {wait:?}): {err}",
                            writer.rows()
                        );
                    }
                }
                self.publish_pending(&writer);
            }
        }
        let flush_until = Instant::now() + Duration::from_secs(self.config.stop_flush_timeout_secs);
        self.stop(&mut writer, &messages, flush_until);
    }

    fn publish_pending(&self, writer: &Writer) {
        let rows = u64::try_from(writer.rows()).unwrap_or(u64::MAX);
        self.stats.pending_rows.store(rows, Ordering::Relaxed);
    }

    /// The last flush: everything queued, retried until `deadline`;
    /// then, with a state directory, what is left and the baselines are
    /// kept there for the next start. A deadline already past (the
    /// executors' stop took the whole budget) tries no flush at all: with
    /// the database away one attempt alone can take `connect_timeout_secs`.
    fn stop(&mut self, writer: &mut Writer, messages: &Receiver<DbMessage>, deadline: Instant) {
        while let Ok(message) = messages.try_recv() {
            self.receive(writer, message);
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let mut wait = Duration::from_millis(100);
        loop {
            if writer.rows() == 0 {
                log::info!("private: statistics flushed");
                break;
            }
            if Instant::now() >= deadline {
                self.give_up(writer, timeout);
                break;
            }
            if let Err(err) = writer.flush(&self.config, &self.stats) {
                self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                writer.conn = None;
                log::warn!("private: final flush failed: {err}");
            }
            if writer.rows() > 0 && Instant::now() + wait >= deadline {
                self.give_up(writer, timeout);
                break;
            }
            if writer.rows() > 0 {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
        self.keep(writer);
    }

    /// Says that the last flush gave up after `timeout`, and where the
    /// rows go.
    fn give_up(&self, writer: &Writer, timeout: Duration) {
        if self.state.is_some() {
            log::warn!(
                "private: gave up flushing after {timeout:?}: {} rows of statistics \
                 are kept in the state directory for the next start",
                writer.rows()
            );
        } else {
            log::error!(
                "private: gave up flushing after {timeout:?}: {} rows of statistics lost \
                 (no state directory to keep them in)",
                writer.rows()
            );
        }
    }

    /// Writes the accounting file: baselines, and deltas not written.
    fn keep(&mut self, writer: &mut Writer) {
        let Some(state) = &self.state else {
            return;
        };
        let accounting = Accounting {
            baselines: std::mem::take(&mut self.baselines),
            in_flight: writer.in_flight.take(),
            pending: std::mem::take(&mut writer.pending),
        };
        if accounting.is_empty() {
            return;
        }
        let path = state.accounting_path();
        match state.write_accounting(&accounting, aquatic_common::time::UnixSeconds::now()) {
            Ok(bytes) => log::info!(
                "private: kept {} baselines and {} rows of statistics in {} ({bytes} bytes)",
                accounting.baselines.len(),
                accounting.rows(),
                path.display()
            ),
            Err(err) => log::error!(
                "private: cannot keep the accounting in {}: {err}; {} rows of statistics lost, \
                 members' next announces credit nothing",
                path.display(),
                accounting.rows()
            ),
        }
    }

    fn load(&mut self, writer: &mut Writer) -> Result<(), DatabaseError> {
        let started = Instant::now();
        let conn = writer.connection(&self.config)?;
        let catalog = load_catalog(conn)?;
        let (users, torrents) = (catalog.users(), catalog.torrents());
        self.stats
            .users
            .store(users as u64, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .torrents
            .store(torrents as u64, std::sync::atomic::Ordering::Relaxed);
        self.catalog.replace(catalog);
        log::info!(
            "private: loaded {users} users and {torrents} torrents in {:?}",
            started.elapsed()
        );
        if let Some(first) = self.on_first_load.take() {
            first();
        }
        Ok(())
    }
}

/// Retry pacing while the database is away: 1 s, doubling up to 30 s.
#[derive(Debug)]
struct Backoff {
    retry_at: Instant,
    wait: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            retry_at: Instant::now(),
            wait: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    fn fail(&mut self) -> Duration {
        let wait = self.wait;
        self.retry_at = Instant::now() + wait;
        self.wait = (self.wait * 2).min(MAX_BACKOFF);
        wait
    }

    fn reset(&mut self) {
        self.wait = Duration::from_secs(1);
        self.retry_at = Instant::now();
    }
}

/// The connection and what waits to be written.
#[derive(Default)]
struct Writer {
    conn: Option<Conn>,
    /// Merged deltas not yet in a batch.
    pending: Batch,
    /// The batch being written, with its sequence number; kept until its
    /// transaction is known to be committed.
    in_flight: Option<(u64, Batch)>,
    /// The sequence number of the next batch, once read from the database.
    next_sequence: Option<u64>,
}

impl Writer {
    fn rows(&self) -> usize {
        self.pending.rows() + self.in_flight.as_ref().map_or(0, |(_, b)| b.rows())
    }

    fn connection(&mut self, config: &PrivateConfig) -> Result<&mut Conn, DatabaseError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => connect(config)?,
        };
        Ok(self.conn.insert(conn))
    }

    /// Writes the batch in flight (or a new one from what is pending).
    fn flush(
        &mut self,
        config: &PrivateConfig,
        stats: &DatabaseStats,
    ) -> Result<(), DatabaseError> {
        if self.in_flight.is_none() && self.pending.is_empty() {
            return Ok(());
        }
        let next = self.next_sequence;
        let conn = self.connection(config)?;
        let next = match next {
            Some(n) => n,
            // After a restart with a batch kept in flight, numbers go on
            // after its own, whatever the database says: reusing it would
            // make the next batch look applied already.
            None => last_sequence(conn)?
                .saturating_add(1)
                .max(self.in_flight.as_ref().map_or(0, |(s, _)| s + 1)),
        };
        self.next_sequence = Some(next);
        if self.in_flight.is_none() {
            let batch = std::mem::take(&mut self.pending);
            self.in_flight = Some((next, batch));
            self.next_sequence = Some(next + 1);
        }
        self.connection(config)?;
        let (Some(conn), Some((sequence, batch))) = (self.conn.as_mut(), self.in_flight.as_ref())
        else {
            return Ok(());
        };
        let applied = write_batch(conn, *sequence, batch)?;
        if applied {
            stats.batches_written.fetch_add(1, Ordering::Relaxed);
            stats
                .rows_written
                .fetch_add(batch.rows() as u64, Ordering::Relaxed);
        } else {
            stats
                .batches_already_applied
                .fetch_add(1, Ordering::Relaxed);
            log::info!("private: batch {sequence} was already committed; not applied again");
        }
        self.in_flight = None;
        Ok(())
    }
}

fn connect(config: &PrivateConfig) -> Result<Conn, DatabaseError> {
    let password = if config.database_password_file.as_os_str().is_empty() {
        None
    } else {
        Some(read_password(&config.database_password_file)?)
    };
    let io_timeout = Some(Duration::from_secs(config.io_timeout_secs));
    let mut opts = OptsBuilder::new()
        .ip_or_hostname(Some(config.database_host.clone()))
        .tcp_port(u16::try_from(config.database_port).unwrap_or(3306))
        .user(Some(config.database_user.clone()))
        .pass(password)
        .db_name(Some(config.database_name.clone()))
        // Always the configured TCP address: never a local socket found
        // by asking the server (it would bypass TLS and test proxies).
        .prefer_socket(false)
        .tcp_connect_timeout(Some(Duration::from_secs(config.connect_timeout_secs)))
        .read_timeout(io_timeout)
        .write_timeout(io_timeout);
    if !config.database_tls_ca_path.as_os_str().is_empty() {
        let ssl = SslOpts::default().with_root_cert_path(Some(config.database_tls_ca_path.clone()));
        opts = opts.ssl_opts(ssl);
    }
    Ok(Conn::new(opts)?)
}

fn read_password(path: &Path) -> Result<String, DatabaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatabaseError::PasswordFile {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

fn last_sequence(conn: &mut Conn) -> Result<u64, DatabaseError> {
    let last: Option<u64> = conn.query_first(format!(
        "SELECT last_sequence FROM tracker_batches WHERE tracker_id = {TRACKER_ID}"
    ))?;
    Ok(last.unwrap_or(0))
}

/// Column `i` of `row` as `T`, or None if absent, NULL or of another type.
fn column<T: mysql::prelude::FromValue>(row: &Row, i: usize) -> Option<T> {
    row.get_opt::<T, usize>(i).and_then(Result::ok)
}

/// Reads users, torrents and whitelist. Rows that cannot be used (a
/// passkey that is not 32 letters and digits, an info hash that is not 20
/// bytes) are skipped and counted in the log, with their text made valid
/// UTF-8.
fn load_catalog(conn: &mut Conn) -> Result<Catalog, DatabaseError> {
    let mut users = HashMap::new();
    let mut skipped = 0usize;
    for row in conn.query_iter("SELECT id, passkey, can_leech, enabled FROM tracker_users")? {
        let row = row?;
        let id: Option<u32> = column(&row, 0);
        let passkey: Option<Vec<u8>> = column(&row, 1);
        let (Some(id), Some(passkey)) = (id, passkey) else {
            skipped += 1;
            continue;
        };
        let Some(passkey) = Passkey::new(&passkey) else {
            log::warn!(
                "private: user {id} has an unusable passkey {:?}: skipped",
                String::from_utf8_lossy(&passkey)
            );
            skipped += 1;
            continue;
        };
        let user = User {
            id: UserId(id),
            can_leech: column::<bool>(&row, 2).unwrap_or(false),
            enabled: column::<bool>(&row, 3).unwrap_or(false),
        };
        users.insert(passkey, user);
    }
    let mut torrents = HashMap::new();
    for row in conn.query_iter("SELECT id, info_hash, freeleech FROM tracker_torrents")? {
        let row = row?;
        let id: Option<u32> = column(&row, 0);
        let hash: Option<Vec<u8>> = column(&row, 1);
        let freeleech: Option<Vec<u8>> = column(&row, 2);
        let Some((id, hash)) = id.zip(hash.and_then(|h| <[u8; 20]>::try_from(h).ok())) else {
            skipped += 1;
            continue;
        };
        let freeleech = freeleech.map_or(Freeleech::None, |f| {
            Freeleech::from_db(&String::from_utf8_lossy(&f))
        });
        torrents.insert(
            InfoHash(hash),
            RegisteredTorrent {
                id: TorrentId(id),
                freeleech,
            },
        );
    }
    let mut whitelist = Vec::new();
    for row in conn.query_iter("SELECT peer_id_prefix FROM tracker_client_whitelist")? {
        let row = row?;
        if let Some(prefix) = column::<Vec<u8>>(&row, 0).filter(|p| !p.is_empty()) {
            whitelist.push(prefix);
        }
    }
    if skipped > 0 {
        log::warn!("private: {skipped} unusable rows skipped");
    }
    Ok(Catalog::new(users, torrents, whitelist))
}

/// An address as `tracker_transfer.last_ip` stores it (what INET6_ATON
/// makes: 4 bytes for IPv4, 16 for IPv6), as an SQL hex literal.
fn ip_literal(ip: IpAddr) -> String {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    };
    let mut text = String::from("X'");
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text.push('\'');
    text
}

/// Multi-row INSERTs of `rows`, each `(…)` written by `values`, in
/// statements of at most [`ROWS_PER_STATEMENT`] rows.
fn statements<T>(
    head: &str,
    tail: &str,
    rows: &[T],
    mut values: impl FnMut(&mut String, &T),
) -> Vec<String> {
    rows.chunks(ROWS_PER_STATEMENT)
        .map(|chunk| {
            let mut sql = String::from(head);
            for (i, row) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                values(&mut sql, row);
            }
            sql.push_str(tail);
            sql
        })
        .collect()
}

/// The statements that apply `batch` (all values are numbers or hex
/// literals made here: nothing from a client is spliced into SQL).
fn batch_statements(batch: &Batch) -> Vec<String> {
    let mut sql = Vec::new();
    let mut transfers: Vec<_> = batch.transfers.iter().collect();
    transfers.sort_unstable_by_key(|(k, _)| **k);
    sql.extend(statements(
        "INSERT INTO tracker_transfer \
         (user_id, torrent_id, uploaded, downloaded, last_ip, last_port, last_announce) VALUES ",
        " ON DUPLICATE KEY UPDATE uploaded = uploaded + VALUES(uploaded), \
         downloaded = downloaded + VALUES(downloaded), last_ip = VALUES(last_ip), \
         last_port = VALUES(last_port), last_announce = VALUES(last_announce)",
        &transfers,
        |s, ((user, torrent), t)| {
            let _ = write!(
                s,
                "({},{},{},{},{},{},NOW())",
                user.0,
                torrent.0,
                t.uploaded,
                t.downloaded,
                ip_literal(t.ip),
                t.port
            );
        },
    ));
    let mut snatches: Vec<_> = batch.snatches.iter().collect();
    snatches.sort_unstable_by_key(|(k, _)| **k);
    sql.extend(statements(
        "INSERT INTO tracker_snatches (user_id, torrent_id, times, first_at, last_at) VALUES ",
        " ON DUPLICATE KEY UPDATE times = times + VALUES(times), last_at = VALUES(last_at)",
        &snatches,
        |s, ((user, torrent), n)| {
            let _ = write!(s, "({},{},{},NOW(),NOW())", user.0, torrent.0, n);
        },
    ));
    let mut snatched: HashMap<TorrentId, u64> = HashMap::new();
    for ((_, torrent), n) in &batch.snatches {
        *snatched.entry(*torrent).or_default() += u64::from(*n);
    }
    let mut snatched: Vec<_> = snatched.into_iter().collect();
    snatched.sort_unstable();
    sql.extend(statements(
        "INSERT INTO tracker_torrent_stats (torrent_id, snatched, last_action) VALUES ",
        " ON DUPLICATE KEY UPDATE snatched = snatched + VALUES(snatched), \
         last_action = VALUES(last_action)",
        &snatched,
        |s, (torrent, n)| {
            let _ = write!(s, "({},{},NOW())", torrent.0, n);
        },
    ));
    let mut counts: Vec<_> = batch.counts.iter().collect();
    counts.sort_unstable_by_key(|(k, _)| **k);
    sql.extend(statements(
        "INSERT INTO tracker_torrent_stats (torrent_id, seeders, leechers, last_action) VALUES ",
        " ON DUPLICATE KEY UPDATE seeders = VALUES(seeders), leechers = VALUES(leechers), \
         last_action = VALUES(last_action)",
        &counts,
        |s, (torrent, c)| {
            let _ = write!(s, "({},{},{},NOW())", torrent.0, c.seeders, c.leechers);
        },
    ));
    sql
}

/// Applies `batch` as batch number `sequence` in one transaction; false
/// when that number was already committed (the batch is not applied
/// again).
fn write_batch(conn: &mut Conn, sequence: u64, batch: &Batch) -> Result<bool, DatabaseError> {
    let mut tx = conn.start_transaction(mysql::TxOpts::default())?;
    let last: Option<u64> = tx.query_first(format!(
        "SELECT last_sequence FROM tracker_batches WHERE tracker_id = {TRACKER_ID} FOR UPDATE"
    ))?;
    if last.is_some_and(|last| last >= sequence) {
        tx.rollback()?;
        return Ok(false);
    }
    for statement in batch_statements(batch) {
        tx.query_drop(statement)?;
    }
    tx.query_drop(format!(
        "INSERT INTO tracker_batches (tracker_id, last_sequence) VALUES ({TRACKER_ID}, {sequence}) \
         ON DUPLICATE KEY UPDATE last_sequence = VALUES(last_sequence)"
    ))?;
    tx.commit()?;
    Ok(true)
}

/// The channel executors send on, and the thread's receiving end.
pub fn channel(batches: usize) -> (SyncSender<DbMessage>, Receiver<DbMessage>) {
    std::sync::mpsc::sync_channel(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::private::Transfer;
    use aquatic_common::PeerCounts;

    #[test]
    fn addresses_are_stored_as_inet6_aton_makes_them() {
        assert_eq!(ip_literal("127.0.0.1".parse().expect("ip")), "X'7f000001'");
        assert_eq!(
            ip_literal("::1".parse().expect("ip")),
            "X'00000000000000000000000000000001'"
        );
        assert_eq!(
            ip_literal("::ffff:10.0.0.1".parse().expect("ip")),
            "X'0a000001'"
        );
    }

    #[test]
    fn statements_are_chunked_and_only_numbers() {
        let mut batch = Batch::default();
        for user in 0..2500 {
            batch.transfers.insert(
                (UserId(user), TorrentId(1)),
                Transfer {
                    uploaded: 1,
                    downloaded: 2,
                    ip: "10.0.0.1".parse().expect("ip"),
                    port: 1,
                },
            );
        }
        batch.snatches.insert((UserId(1), TorrentId(1)), 2);
        batch.counts.insert(TorrentId(1), PeerCounts::default());
        let sql = batch_statements(&batch);
        // 3 transfer statements, snatches, snatched, counts.
        assert_eq!(sql.len(), 6);
        assert!(sql[0].matches("NOW()").count() == 1000);
        assert!(sql[3].starts_with("INSERT INTO tracker_snatches"));
    }
}
