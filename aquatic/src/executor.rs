//! One executor: the wiring of a shard host, a router and the socket
//! endpoints on one pinned thread, and the timers that keep them.
//!
//! ```text
//!            ┌──────────── executor i (pinned to core first_core + i) ─────────────┐
//!  udp    ──>│ net::udp ──┐                                                          │
//!  http   ──>│ net::http ─┼─> Router ── own shard ──> SharedHost (ShardHost, swarm/) │
//!  ws     ──>│ net::ws ───┘     │ other shard: mesh ──> executor j's Router           │
//!  mesh   ──>│ one task per peer: Router::handle_incoming (UDP answers to net::udp)  │
//!            │ timers: cleaning (staggered), reload pickup, metrics, outbox drain,   │
//!            │         snapshot (collected in slices, written on a blocking thread)  │
//!            └──────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! A restored snapshot goes into the shard before any task starts, so the
//! executor serves (and reports ready) with its swarms already there.
//!
//! This module only composes: it owns nothing the request path uses except
//! through the router, the host and the endpoints.

use std::{
    cell::Cell,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use aquatic_common::{
    access_list::AccessList,
    connection_id::ConnectionIdValidator,
    time::{ServerStartInstant, UnixSeconds},
    InfoHash,
};
use futures_lite::StreamExt;
use glommio::{
    channels::{
        channel_mesh::{Full, MeshBuilder},
        shared_channel::ConnectedReceiver,
    },
    timer::sleep,
    Latency, Shares, TaskQueueHandle,
};

use crate::{
    config::ValidConfig,
    host::{ShardHost, SharedHost},
    metrics::{ExecutorStats, MetricsHub, Snapshot},
    net::{
        http::{self, HttpEndpoint},
        udp::{self, ForwardedAnswers, UdpEndpoint, UdpSettings},
        ws::{self, WsEndpoint},
    },
    reload::{LocalCopy, Reloadable},
    router::{MeshMessage, Router, UdpAnswers, REPLY_DEADLINE},
    snapshot::{PeerRecord, RestoredShards, SnapshotBody, StateDir, TorrentRecord},
    swarm::Refusal,
};

/// How long a stopping executor waits for WebSocket close handshakes.
const WS_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The sockets the main thread bound for one executor.
#[derive(Default)]
pub struct ExecutorSockets {
    /// The UDP socket, if UDP is served.
    pub udp: Option<socket2::Socket>,
    /// The HTTP listener, if HTTP is served.
    pub http: Option<socket2::Socket>,
    /// The WebSocket listener, if WebTorrent is served.
    pub ws: Option<socket2::Socket>,
}

/// What every executor shares with the main thread.
#[derive(Clone)]
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<ValidConfig>,
    /// The clock's zero.
    pub start: ServerStartInstant,
    /// The connection id key.
    pub validator: ConnectionIdValidator,
    /// The access list, replaced on reload.
    pub access_list: Arc<Reloadable<AccessList>>,
    /// HTTPS configuration, replaced on reload.
    pub http_tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    /// WSS configuration, replaced on reload.
    pub ws_tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    /// Where figures are published, if metrics are on.
    pub metrics: Option<Arc<MetricsHub>>,
    /// Set by the main thread to stop.
    pub shutdown: Arc<AtomicBool>,
    /// The locked state directory, when snapshots are on.
    pub state: Option<Arc<StateDir>>,
}

/// What the main thread hands one executor thread.
pub struct ExecutorSetup {
    /// Executors in all.
    pub shards: usize,
    /// The mesh every executor joins.
    pub mesh: MeshBuilder<MeshMessage, Full>,
    /// This executor's sockets.
    pub sockets: ExecutorSockets,
    /// What all executors share.
    pub shared: Shared,
    /// Called once the executor serves.
    pub ready: Box<dyn FnOnce() + Send>,
    /// Torrents restored from the snapshots, by the shard that owns them.
    pub restored: Arc<RestoredShards>,
}

/// The parts of one running executor.
struct Executor {
    router: Rc<Router>,
    host: Rc<SharedHost>,
    stats: Rc<ExecutorStats>,
    udp: Option<Rc<UdpEndpoint>>,
    http: Option<Rc<HttpEndpoint>>,
    ws: Option<Rc<WsEndpoint>>,
    snapshots: Option<Rc<Snapshots>>,
}

/// The executor's main future: joins the mesh, starts the tasks, reports
/// ready, and returns when the main thread asks it to stop.
pub async fn run(setup: ExecutorSetup) {
    let ExecutorSetup {
        shards,
        mesh,
        sockets,
        shared,
        ready,
        restored,
    } = setup;
    let config = &shared.config;
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(err) => panic!("an executor could not join the mesh: {err}"),
    };
    let requests = glommio::executor().create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_millis(10)),
        "requests",
    );
    let background = glommio::executor().create_task_queue(
        Shares::Static(100),
        Latency::NotImportant,
        "background",
    );

    let access_list = LocalCopy::new(shared.access_list.clone());
    let host = Rc::new(SharedHost::new(ShardHost::from_entropy(
        config,
        access_list.get(),
    )));
    let stats = Rc::new(ExecutorStats::default());
    let (router, outbox_woken) = Router::new(
        senders,
        shards,
        shared.start,
        host.clone(),
        stats.clone(),
        config.runtime.mesh_channel_size,
        REPLY_DEADLINE,
    );
    let router = Rc::new(router);
    let http_tls = shared.http_tls.clone().map(|t| Rc::new(LocalCopy::new(t)));
    let ws_tls = shared.ws_tls.clone().map(|t| Rc::new(LocalCopy::new(t)));
    let ex = Executor {
        udp: sockets.udp.map(|socket| {
            let settings = UdpSettings {
                validator: shared.validator.clone(),
                announce_interval: config.tracker.announce_interval_secs,
                max_scrape_torrents: config.tracker.max_scrape_torrents,
                max_reply_bytes_v4: config.udp.max_reply_bytes(false),
                max_reply_bytes_v6: config.udp.max_reply_bytes(true),
                max_scrapes_in_flight: config.udp.max_scrapes_in_flight,
            };
            Rc::new(UdpEndpoint::new(
                socket,
                settings,
                router.clone(),
                stats.clone(),
            ))
        }),
        http: sockets.http.map(|listener| {
            let tls = http_tls.clone();
            Rc::new(HttpEndpoint::new(
                listener,
                tls,
                config,
                router.clone(),
                stats.clone(),
            ))
        }),
        ws: sockets.ws.map(|listener| {
            let tls = ws_tls.clone();
            Rc::new(WsEndpoint::new(
                listener,
                tls,
                config,
                router.clone(),
                stats.clone(),
            ))
        }),
        snapshots: shared.state.clone().map(|state| {
            Rc::new(Snapshots {
                state,
                host: host.clone(),
                start: shared.start,
                executor: router.id().0,
                writing: glommio::sync::Semaphore::new(1),
                status: SnapshotStatus::default(),
            })
        }),
        router,
        host,
        stats,
    };
    if let Some(snapshots) = &ex.snapshots {
        snapshots.restore(restored.take(ex.router.id().0));
    }

    spawn(requests, ex.router.clone().drain_outbox(outbox_woken));
    if let Some(udp) = &ex.udp {
        spawn(requests, udp::run(udp.clone()));
    }
    if let Some(endpoint) = &ex.http {
        spawn(requests, http::run(endpoint.clone()));
    }
    if let Some(endpoint) = &ex.ws {
        spawn(requests, ws::run(endpoint.clone()));
    }
    for (_, stream) in receivers.streams() {
        let answers = ex.udp.as_ref().map(|udp| udp.forwarded_answers());
        spawn(requests, receive_mesh(ex.router.clone(), answers, stream));
    }
    spawn(
        background,
        clean_periodically(ex.router.clone(), ex.host.clone(), config.clone(), shards),
    );
    if let Some(hub) = shared.metrics.clone() {
        // Once now, so that the endpoint has every executor's figures
        // (those of the restore among them) from the moment it is ready.
        let source = ex.snapshot_source();
        hub.publish(source.id, source.snapshot());
        spawn(background, publish_metrics(source, hub));
    }
    let tls_copies = [http_tls, ws_tls].into_iter().flatten().collect();
    spawn(
        background,
        refresh_reloadables(ex.host.clone(), access_list, tls_copies),
    );
    if let (Some(snapshots), Some(interval)) = (&ex.snapshots, config.snapshot.interval()) {
        spawn(background, snapshots.clone().write_periodically(interval));
    }

    ready();
    while !shared.shutdown.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(50)).await;
    }
    ex.stop().await;
    if let Some(snapshots) = &ex.snapshots {
        snapshots.write(AT_STOP).await;
    }
}

impl Executor {
    fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource {
            id: self.router.id().0,
            router: self.router.clone(),
            host: self.host.clone(),
            stats: self.stats.clone(),
            ws: self.ws.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    /// Takes no new connections and closes every WebSocket: each task
    /// sends a close frame and its peers leave their swarms.
    async fn stop(&self) {
        log::debug!("executor {} stopping", self.router.id().0);
        for listener in [
            self.http.as_ref().map(|e| e.listener()),
            self.ws.as_ref().map(|e| e.listener()),
        ]
        .into_iter()
        .flatten()
        {
            listener.stop_accepting();
        }
        self.router.ws_close_all();
        let Some(ws) = &self.ws else { return };
        let deadline = std::time::Instant::now() + WS_CLOSE_GRACE;
        while ws.listener().open_connections() > 0 && std::time::Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Spawns a detached task on `queue`.
fn spawn(queue: TaskQueueHandle, future: impl std::future::Future<Output = ()> + 'static) {
    match glommio::spawn_local_into(future, queue) {
        Ok(task) => task.detach(),
        Err(err) => panic!("cannot spawn task: {err}"),
    };
}

/// Handles what one other executor sends, message by message. UDP answers
/// for forwarded announces collect in a batch that leaves in one
/// `sendmmsg` when it fills or when no message is waiting.
async fn receive_mesh(
    router: Rc<Router>,
    mut answers: Option<ForwardedAnswers>,
    mut stream: ConnectedReceiver<MeshMessage>,
) {
    loop {
        #[cfg(feature = "test-hooks")]
        while crate::hooks::mesh_stalled() {
            sleep(Duration::from_millis(10)).await;
        }
        let message = match futures_lite::future::poll_once(stream.next()).await {
            Some(message) => message,
            None => {
                if let Some(answers) = &mut answers {
                    answers.flush().await;
                }
                stream.next().await
            }
        };
        let Some(message) = message else { break };
        router.handle_incoming(message, answers.as_mut().map(|a| a as &mut dyn UdpAnswers));
        if let Some(answers) = &mut answers {
            if answers.is_full() {
                answers.flush().await;
            }
        }
    }
}

async fn clean_periodically(
    router: Rc<Router>,
    host: Rc<SharedHost>,
    config: Arc<ValidConfig>,
    shards: usize,
) {
    let interval = config.tracker.cleaning_interval();
    let id = router.id().0;
    // Stagger the executors so their cleaning passes do not coincide.
    let offset = interval.mul_f64(id as f64 / shards.max(1) as f64);
    sleep(offset).await;
    loop {
        sleep(interval).await;
        let now = router.now();
        let ((bt, ws), gauges) = host.with(|host| (host.clean(now), host.gauges()));
        router.shrink();
        // Freed swarms, maps and connection buffers go back to the
        // allocator, but glibc keeps freed heap pages unless asked: hand
        // them back to the OS so RSS falls when traffic does.
        release_free_memory();
        log::debug!(
            "executor {id}: removed {} peers and {} torrents (ws: {} and {}); now {} torrents, {} seeders, {} leechers, {} ws torrents",
            bt.peers_removed,
            bt.torrents_removed,
            ws.peers_removed,
            ws.torrents_removed,
            gauges.bt_torrents,
            gauges.bt_peers.seeders,
            gauges.bt_peers.leechers,
            gauges.ws_torrents,
        );
    }
}

/// What the metrics timer reads.
struct SnapshotSource {
    id: usize,
    router: Rc<Router>,
    host: Rc<SharedHost>,
    stats: Rc<ExecutorStats>,
    ws: Option<Rc<WsEndpoint>>,
    snapshots: Option<Rc<Snapshots>>,
}

impl SnapshotSource {
    /// This executor's figures now: O(1), whatever the number of torrents.
    fn snapshot(&self) -> Snapshot {
        let label = |k: &'static str, v: &str| (k, v.to_owned());
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let g = self.host.with(|host| host.gauges());
        let ws_open = self
            .ws
            .as_ref()
            .map_or(0, |ws| ws.listener().open_connections());
        let mut gauges = vec![
            ("torrents", vec![label("swarm", "bt")], count(g.bt_torrents)),
            ("torrents", vec![label("swarm", "ws")], count(g.ws_torrents)),
        ];
        for (swarm, kind, n) in [
            ("bt", "seeder", g.bt_peers.seeders),
            ("bt", "leecher", g.bt_peers.leechers),
            ("ws", "seeder", g.ws_peers.seeders),
            ("ws", "leecher", g.ws_peers.leechers),
        ] {
            gauges.push((
                "peers",
                vec![label("swarm", swarm), label("kind", kind)],
                count(n),
            ));
        }
        gauges.push(("ws_connections", Vec::new(), count(ws_open)));
        for (map, capacity) in [
            ("bt_torrents", g.bt_capacity),
            ("ws_torrents", g.ws_capacity),
            ("ws_connections", self.router.ws_capacity()),
        ] {
            gauges.push(("map_capacity", vec![label("map", map)], count(capacity)));
        }
        let mut counters = self.stats.samples();
        // Refused by the owning shard, which keeps its own count: the
        // announce had passed this executor's rules.
        counters.push((
            "refusals",
            vec![
                label("protocol", "ws"),
                label("reason", Refusal::PeerIdInUse.kind()),
            ],
            g.ws_peer_id_in_use,
        ));
        if let Some(snapshots) = &self.snapshots {
            snapshots.status.samples(&mut counters, &mut gauges);
        }
        Snapshot { counters, gauges }
    }
}

/// Publishes this executor's figures once a second: the request path only
/// bumps its own cells, the endpoint reads the last snapshot.
async fn publish_metrics(source: SnapshotSource, hub: Arc<MetricsHub>) {
    loop {
        hub.publish(source.id, source.snapshot());
        sleep(Duration::from_secs(1)).await;
    }
}

/// Returns free heap memory to the OS (glibc's `malloc_trim`).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn refresh_reloadables(
    host: Rc<SharedHost>,
    access_list: LocalCopy<AccessList>,
    tls_configs: Vec<Rc<LocalCopy<rustls::ServerConfig>>>,
) {
    loop {
        sleep(Duration::from_millis(200)).await;
        if let Some(list) = access_list.refresh() {
            host.with(|host| host.set_access_list(list));
            log::debug!("an executor took the new access list");
        }
        for tls in &tls_configs {
            tls.refresh();
        }
    }
}

/// Peers read out of the shard between two yields while a snapshot is
/// collected: a slice takes well under a millisecond, so requests wait no
/// longer than that behind it.
const SNAPSHOT_SLICE_PEERS: usize = 4096;
/// The pause between two slices.
const SNAPSHOT_SLICE_PAUSE: Duration = Duration::from_micros(100);

/// What the stop-time snapshot is called in logs.
const AT_STOP: &str = "at stop";

/// This executor's snapshots: restore at start, write periodically and at
/// stop, and the figures for metrics.
struct Snapshots {
    state: Arc<StateDir>,
    host: Rc<SharedHost>,
    start: ServerStartInstant,
    executor: usize,
    /// One write at a time: a stop-time write waits for a periodic one.
    writing: glommio::sync::Semaphore,
    status: SnapshotStatus,
}

/// Figures of the last snapshot, for metrics.
#[derive(Default)]
struct SnapshotStatus {
    writes: Cell<u64>,
    failures: Cell<u64>,
    last_duration_ms: Cell<u64>,
    last_bytes: Cell<u64>,
    last_peers: Cell<u64>,
    last_written: Cell<Option<UnixSeconds>>,
    peers_restored: Cell<u64>,
}

impl SnapshotStatus {
    fn samples(
        &self,
        counters: &mut Vec<crate::metrics::Sample<u64>>,
        gauges: &mut Vec<crate::metrics::Sample<i64>>,
    ) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        counters.push(("snapshot_writes", Vec::new(), self.writes.get()));
        counters.push(("snapshot_failures", Vec::new(), self.failures.get()));
        gauges.push((
            "snapshot_peers_restored",
            Vec::new(),
            gauge(self.peers_restored.get()),
        ));
        if let Some(written) = self.last_written.get() {
            let age = UnixSeconds::now().0.saturating_sub(written.0);
            gauges.push(("snapshot_age_seconds", Vec::new(), i64::from(age)));
            gauges.push((
                "snapshot_duration_milliseconds",
                Vec::new(),
                gauge(self.last_duration_ms.get()),
            ));
            gauges.push(("snapshot_bytes", Vec::new(), gauge(self.last_bytes.get())));
            gauges.push(("snapshot_peers", Vec::new(), gauge(self.last_peers.get())));
        }
    }
}

impl Snapshots {
    /// Puts the restored torrents into the shard; runs before any task.
    fn restore(&self, records: Vec<TorrentRecord>) {
        let now = self.start.seconds_elapsed();
        let mut restored = 0u64;
        let mut entries = Vec::new();
        self.host.with(|host| {
            let timeout = host.peer_timeout();
            for record in records {
                entries.clear();
                entries.extend(record.peers.iter().filter_map(|p| p.to_entry(now, timeout)));
                restored += entries.len() as u64;
                host.bt_mut()
                    .restore(InfoHash(record.info_hash), record.completed, &entries);
            }
        });
        self.status.peers_restored.set(restored);
    }

    async fn write_periodically(self: Rc<Self>, interval: Duration) {
        loop {
            sleep(interval).await;
            self.write("periodic").await;
        }
    }

    /// Collects the shard in slices, yielding to requests between them,
    /// then writes the file on a blocking thread. A failure is logged and
    /// counted: the previous snapshot stays.
    async fn write(&self, why: &str) {
        let Ok(_permit) = self.writing.acquire_permit(1).await else {
            return;
        };
        let began = std::time::Instant::now();
        let created_at = UnixSeconds::now();
        let now = self.start.seconds_elapsed();
        let (hashes, timeout) = self
            .host
            .with(|host| (host.bt().info_hashes(), host.peer_timeout()));
        let mut body = SnapshotBody::default();
        let mut entries = Vec::new();
        let mut records = Vec::new();
        let mut next = 0;
        let mut failure = None;
        while next < hashes.len() && failure.is_none() {
            self.host.with(|host| {
                let mut slice_peers = 0;
                while slice_peers < SNAPSHOT_SLICE_PEERS && next < hashes.len() {
                    let hash = hashes[next];
                    next += 1;
                    entries.clear();
                    // Gone since the list was taken: nothing to keep.
                    let Some(completed) = host.bt().torrent_entries(&hash, &mut entries) else {
                        continue;
                    };
                    slice_peers += entries.len();
                    records.clear();
                    records.extend(
                        entries
                            .iter()
                            .map(|e| PeerRecord::from_entry(e, now, timeout)),
                    );
                    if let Err(err) = body.push_torrent(hash, completed, &records) {
                        failure = Some(err.to_string());
                        break;
                    }
                }
            });
            // A timer, not a yield of the task queue: with nothing else
            // runnable a yielded queue runs again at once, before the
            // reactor has looked for new datagrams; a sleep parks this
            // task, so the executor polls its ring and serves what waits.
            sleep(SNAPSHOT_SLICE_PAUSE).await;
        }
        let peers = body.peers();
        let result = match failure {
            Some(err) => Err(err),
            None => {
                let state = self.state.clone();
                let executor = self.executor;
                glommio::executor()
                    .spawn_blocking(move || {
                        state
                            .write_snapshot(executor, &body.into_file(created_at))
                            .map_err(|e| e.to_string())
                    })
                    .await
            }
        };
        let took = began.elapsed();
        let path = self.state.snapshot_path(self.executor);
        match result {
            Ok(bytes) => {
                let s = &self.status;
                s.writes.set(s.writes.get() + 1);
                s.last_duration_ms
                    .set(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
                s.last_bytes.set(bytes);
                s.last_peers.set(peers);
                s.last_written.set(Some(created_at));
                // The stop-time one is worth a line; periodic ones are
                // in the metrics.
                let level = if why == AT_STOP {
                    log::Level::Info
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "snapshot ({why}): {peers} peers, {bytes} bytes in {} in {took:?}",
                    path.display()
                );
            }
            Err(err) => {
                self.status.failures.set(self.status.failures.get() + 1);
                log::error!(
                    "snapshot ({why}) to {} failed, the previous one stays: {err}",
                    path.display()
                );
            }
        }
    }
}
