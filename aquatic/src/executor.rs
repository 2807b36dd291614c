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
    InfoHash, ShardId,
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
    cluster::{
        link::{self, LinkSetup},
        members::{LiveSet, Members},
        queue::LinkQueues,
    },
    config::ValidConfig,
    database::DbMessage,
    host::{HostCleaning, ShardHost, SharedHost},
    metrics::{ExecutorStats, MetricsHub, Snapshot},
    net::{
        http::{self, HttpEndpoint},
        udp::{self, ForwardedAnswers, UdpEndpoint, UdpSettings},
        ws::{self, WsEndpoint},
    },
    reload::{LocalCopy, Reloadable},
    router::{MeshMessage, Router, UdpAnswers, LINK_EXECUTOR, REPLY_DEADLINE},
    snapshot::{BaselineRecord, PeerRecord, RestoredShards, SnapshotBody, StateDir, TorrentRecord},
    swarm::{
        private::{Catalog, TorrentId},
        PeerIdKey, Refusal,
    },
};

/// How often an executor hands its private accounting to the database
/// thread (which writes every `flush_interval_secs`).
const HAND_OVER_INTERVAL: Duration = Duration::from_millis(500);
/// How long a stopping executor keeps trying to hand over its last accounting.
const HAND_OVER_GRACE: Duration = Duration::from_secs(2);

/// How long a stopping executor waits for WebSocket close handshakes.
const WS_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The sockets the main thread bound for one executor.
#[derive(Default)]
pub struct ExecutorSockets {
    /// The UDP socket, if UDP is served.
    pub udp: Option<socket2::Socket>,
    /// Whether the kernel steers the UDP group's datagrams to their
    /// torrent's executor (`net::steering`).
    pub udp_steered: bool,
    /// The HTTP listener, if HTTP is served.
    pub http: Option<socket2::Socket>,
    /// The WebSocket listener, if WebTorrent is served.
    pub ws: Option<socket2::Socket>,
}

/// What every executor of a cluster node shares.
#[derive(Clone)]
pub struct ClusterShared {
    /// The member list, replaced when SIGHUP changes `cluster.members`
    /// (positions never move).
    pub members: Arc<Reloadable<Members>>,
    /// The live set, replaced by the links as members come and go.
    pub live: Arc<Reloadable<LiveSet>>,
    /// What the links need, taken by the executor that joins the mesh as
    /// [`LINK_EXECUTOR`] (mesh ids follow the order of joining, not of
    /// the threads).
    pub links: Arc<std::sync::Mutex<Option<LinkSetup>>>,
}

/// What every executor shares with the main thread.
#[derive(Clone)]
pub struct Shared {
    /// The validated configuration the process started with: what the
    /// restart-only keys say.
    pub config: Arc<ValidConfig>,
    /// The configuration in force, replaced by a SIGHUP reload (only its
    /// runtime keys ever differ from `config`'s).
    pub live_config: Arc<Reloadable<ValidConfig>>,
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
    /// The cluster, if this node is a member of one.
    pub cluster: Option<ClusterShared>,
    /// Private mode's catalog and database thread.
    pub private: Option<PrivateShared>,
    /// The locked state directory, when snapshots are on.
    pub state: Option<Arc<StateDir>>,
    /// The one key every shard hashes peer ids with (snapshot records
    /// match whichever shard restores them).
    pub peer_id_key: PeerIdKey,
}

/// What private mode shares: the catalog the database thread loads, and
/// the bounded channel to that thread.
#[derive(Clone)]
pub struct PrivateShared {
    /// Users, torrents and whitelist, replaced on each load.
    pub catalog: Arc<Reloadable<Catalog>>,
    /// Accounting goes here.
    pub database: std::sync::mpsc::SyncSender<DbMessage>,
    /// How many executors hold a loaded catalog: the main thread reports
    /// ready only once every one does, so that no member is told "starting"
    /// after READY=1.
    pub executors_loaded: Arc<std::sync::atomic::AtomicUsize>,
}

/// What the main thread hands one executor thread.
pub struct ExecutorSetup {
    /// This executor's index: its shard, the index of its sockets in their
    /// SO_REUSEPORT groups, and (pinned) its core's offset from
    /// `runtime.first_core`.
    pub index: usize,
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
    udp_steered: bool,
    http: Option<Rc<HttpEndpoint>>,
    ws: Option<Rc<WsEndpoint>>,
    snapshots: Option<Rc<Snapshots>>,
}

/// The executor's main future: joins the mesh, starts the tasks, reports
/// ready, and returns when the main thread asks it to stop.
pub async fn run(setup: ExecutorSetup) {
    let ExecutorSetup {
        index,
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
    // The kernel steers datagrams by socket index, the router by mesh
    // peer id: they must be the same number (server.rs makes the
    // executors in order so that they are).
    assert_eq!(
        senders.peer_id(),
        index,
        "executor {index} joined the mesh as peer {}: shards and sockets would disagree",
        senders.peer_id()
    );
    let senders_id = senders.peer_id();
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
    let host = Rc::new(SharedHost::new(
        ShardHost::from_entropy(config, access_list.get()).with_peer_id_key(shared.peer_id_key),
    ));
    let catalog = shared
        .private
        .as_ref()
        .map(|p| LocalCopy::new(p.catalog.clone()));
    let counted_loaded = std::cell::Cell::new(false);
    if let (Some(catalog), Some(private)) = (&catalog, &shared.private) {
        let current = catalog.get();
        count_loaded_catalog(&current, &counted_loaded, private);
        host.with(|host| host.set_catalog(current));
    }
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
    let ExecutorSockets {
        udp: udp_socket,
        http: http_socket,
        ws: ws_socket,
        udp_steered,
    } = sockets;
    let link_setup = match &shared.cluster {
        Some(cluster) if ShardId(senders_id) == LINK_EXECUTOR => cluster
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
        _ => None,
    };
    let link_queues = match (&shared.cluster, &link_setup) {
        (Some(cluster), Some(_)) => Some(Rc::new(LinkQueues::new(
            cluster.members.current().1.len(),
            config.runtime.mesh_channel_size,
        ))),
        _ => None,
    };
    let router = match &shared.cluster {
        Some(cluster) => router.with_cluster(
            Rc::new((*cluster.members.current().1).clone()),
            (*cluster.live.current().1).clone(),
            link_queues.clone(),
            config.cluster.direct_udp_replies,
        ),
        None => router,
    };
    let router = Rc::new(router);
    let http_tls = shared.http_tls.clone().map(|t| Rc::new(LocalCopy::new(t)));
    let ws_tls = shared.ws_tls.clone().map(|t| Rc::new(LocalCopy::new(t)));
    let ex = Executor {
        udp: udp_socket.map(|socket| {
            let settings = UdpSettings::new(config, shared.validator.clone());
            Rc::new(UdpEndpoint::new(
                socket,
                settings,
                router.clone(),
                stats.clone(),
            ))
        }),
        http: http_socket.map(|listener| {
            let tls = http_tls.clone();
            Rc::new(HttpEndpoint::new(
                listener,
                tls,
                config,
                router.clone(),
                stats.clone(),
            ))
        }),
        ws: ws_socket.map(|listener| {
            let tls = ws_tls.clone();
            Rc::new(WsEndpoint::new(
                listener,
                tls,
                config,
                router.clone(),
                stats.clone(),
            ))
        }),
        udp_steered,
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
        let shard = ex.router.id().0;
        snapshots.restore(restored.take(shard));
        snapshots.restore_baselines(restored.take_baselines(shard));
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
    let live_config = Rc::new(LocalCopy::new(shared.live_config.clone()));
    if let (Some(setup), Some(queues)) = (link_setup, link_queues) {
        spawn(
            requests,
            link::run(setup, ex.router.clone(), queues, ex.udp.clone()),
        );
    }
    spawn(
        background,
        clean_periodically(
            ex.router.clone(),
            ex.host.clone(),
            live_config.clone(),
            shards,
        ),
    );
    if let Some(hub) = shared.metrics.clone() {
        // Once now, so that the endpoint has every executor's figures
        // (those of the restore among them) from the moment it is ready.
        let source = ex.snapshot_source();
        hub.publish(source.id, source.snapshot());
        spawn(background, publish_metrics(source, hub));
    }
    let tls_copies = [http_tls, ws_tls].into_iter().flatten().collect();
    let live = shared.cluster.as_ref().map(|cluster| {
        (
            LocalCopy::new(cluster.live.clone()),
            LocalCopy::new(cluster.members.clone()),
        )
    });
    spawn(
        background,
        refresh_reloadables(
            ex.reload_targets(),
            ex.router.clone(),
            live_config,
            access_list,
            catalog.map(|c| (c, shared.private.clone(), counted_loaded)),
            tls_copies,
            live,
        ),
    );
    if let Some(private) = &shared.private {
        spawn(
            background,
            hand_over_periodically(ex.host.clone(), private.database.clone()),
        );
    }
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
    if let Some(private) = &shared.private {
        hand_over_last(&ex.host, &private.database).await;
        if let Some(snapshots) = &ex.snapshots {
            hand_over_baselines(snapshots.baselines(), &private.database).await;
        }
    }
}

/// Hands a stopping executor's private baselines to the database thread,
/// which keeps them in the state directory with what its last flush
/// leaves (they are in no swarm snapshot: see snapshot.rs).
async fn hand_over_baselines(
    baselines: Vec<BaselineRecord>,
    database: &std::sync::mpsc::SyncSender<DbMessage>,
) {
    if baselines.is_empty() {
        return;
    }
    let deadline = std::time::Instant::now() + HAND_OVER_GRACE;
    let mut message = DbMessage::Baselines(baselines);
    loop {
        match database.try_send(message) {
            Ok(()) => return,
            Err(std::sync::mpsc::TrySendError::Full(back)) => message = back,
            Err(_) => return,
        }
        if std::time::Instant::now() >= deadline {
            log::error!(
                "private: could not hand over the baselines: channel full; members' next \
                 announces after the restart credit nothing"
            );
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Hands the private accounting to the database thread, forever. A full
/// channel (the database is slow or away) keeps it here, merging with
/// what comes next.
async fn hand_over_periodically(
    host: Rc<SharedHost>,
    database: std::sync::mpsc::SyncSender<DbMessage>,
) {
    loop {
        sleep(HAND_OVER_INTERVAL).await;
        hand_over(&host, &database);
    }
}

/// One hand-over; true when nothing is left here.
fn hand_over(host: &SharedHost, database: &std::sync::mpsc::SyncSender<DbMessage>) -> bool {
    let batch = host.with(|host| host.drain_private());
    if batch.is_empty() {
        return true;
    }
    match database.try_send(DbMessage::Batch(batch)) {
        Ok(()) => true,
        Err(std::sync::mpsc::TrySendError::Full(DbMessage::Batch(batch))) => {
            host.with(|host| host.restore_private(batch));
            false
        }
        Err(_) => {
            log::warn!("private: the database thread is gone; accounting dropped");
            true
        }
    }
}

/// The last hand-over of a stopping executor, retried for a short while.
async fn hand_over_last(host: &SharedHost, database: &std::sync::mpsc::SyncSender<DbMessage>) {
    let deadline = std::time::Instant::now() + HAND_OVER_GRACE;
    while !hand_over(host, database) {
        if std::time::Instant::now() >= deadline {
            log::error!("private: could not hand over the last accounting: channel full");
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

impl Executor {
    fn reload_targets(&self) -> ReloadTargets {
        ReloadTargets {
            id: self.router.id().0,
            host: self.host.clone(),
            udp: self.udp.clone(),
            http: self.http.clone(),
            ws: self.ws.clone(),
        }
    }

    fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource {
            id: self.router.id().0,
            router: self.router.clone(),
            host: self.host.clone(),
            stats: self.stats.clone(),
            udp: self.udp.clone(),
            udp_steered: self.udp_steered,
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
    config: Rc<LocalCopy<ValidConfig>>,
    shards: usize,
) {
    let interval = config.get().tracker.cleaning_interval();
    let id = router.id().0;
    // Stagger the executors so their cleaning passes do not coincide.
    let offset = interval.mul_f64(id as f64 / shards.max(1) as f64);
    sleep(offset).await;
    // The most torrents and peers held since the last malloc_trim.
    let mut most_held = 0usize;
    loop {
        // Read each time: a reload may change it.
        sleep(config.get().tracker.cleaning_interval()).await;
        let now = router.now();
        let began = std::time::Instant::now();
        // In slices, a timer between two (as the snapshot does): one pass
        // over 1 M peers in one step held the executor for 175 ms.
        let mut pass = HostCleaning::default();
        let (mut slices, mut longest) = (0u32, Duration::ZERO);
        let (bt, ws) = loop {
            let slice_began = std::time::Instant::now();
            let reports = host.with(|host| host.clean_slice(now, &mut pass, CLEAN_SLICE_WORK));
            slices += 1;
            longest = longest.max(slice_began.elapsed());
            if let Some(reports) = reports {
                break reports;
            }
            sleep(SNAPSHOT_SLICE_PAUSE).await;
        };
        let gauges = host.with(|host| host.gauges());
        let cleaned = began.elapsed();
        router.shrink();
        let shrunk = began.elapsed();
        // Freed swarms, maps and connection buffers go back to the
        // allocator, but glibc keeps freed heap pages unless asked: hand
        // them back to the OS so RSS falls when traffic does. malloc_trim
        // walks the whole heap (6 ms at 1 M peers though nothing is free),
        // so only once the shard holds a sixteenth less than its most
        // since the last trim (WebSocket peers leave when their
        // connection closes, not in this pass, so the pass's own report
        // is not enough; a busy tracker's steady churn does not trim
        // every pass).
        let held = gauges.bt_torrents
            + gauges.bt_peers.total()
            + gauges.ws_torrents
            + gauges.ws_peers.total();
        most_held = most_held.max(held);
        if held + most_held / 16 < most_held {
            release_free_memory();
            most_held = held;
        }
        let trimmed = began.elapsed();
        log::debug!(
            "executor {id}: cleaning pass in {trimmed:?} (clean {cleaned:?} in {slices} slices, longest {longest:?}, shrink {:?}, trim {:?}): removed {} peers and {} torrents (ws: {} and {}); now {} torrents, {} seeders, {} leechers, {} ws torrents",
            shrunk - cleaned,
            trimmed - shrunk,
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
    udp: Option<Rc<UdpEndpoint>>,
    udp_steered: bool,
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
        gauges.push((
            "udp_kernel_steering",
            Vec::new(),
            i64::from(self.udp_steered),
        ));
        for (map, capacity) in [
            ("bt_torrents", g.bt_capacity),
            ("ws_torrents", g.ws_capacity),
            ("ws_connections", self.router.ws_capacity()),
        ] {
            gauges.push(("map_capacity", vec![label("map", map)], count(capacity)));
        }
        let mut counters = self.stats.samples();
        if let Some(drops) = self.udp.as_ref().and_then(|udp| udp.kernel_drops()) {
            counters.push(("udp_kernel_drops", Vec::new(), drops));
        }
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
        if let Some((members, live, links)) = self.router.cluster_view() {
            cluster_samples(
                &members,
                &live,
                links.as_deref(),
                &mut counters,
                &mut gauges,
            );
        }
        if let Some(snapshots) = &self.snapshots {
            snapshots.status.samples(&mut counters, &mut gauges);
        }
        Snapshot { counters, gauges }
    }
}

/// The live set and, on the executor that runs them, each link's figures.
fn cluster_samples(
    members: &Members,
    live: &LiveSet,
    links: Option<&LinkQueues>,
    counters: &mut Vec<crate::metrics::Sample<u64>>,
    gauges: &mut Vec<crate::metrics::Sample<i64>>,
) {
    for node in (0..members.len()).map(crate::cluster::members::NodeId) {
        if members.is_removed(node) {
            continue;
        }
        let member = || vec![("member", members.name(node).to_owned())];
        // Every executor's own view: they take the live set on a timer.
        gauges.push((
            "cluster_member_live",
            member(),
            i64::from(live.contains(node)),
        ));
        let Some(stats) = links.and_then(|links| links.stats(node)) else {
            continue;
        };
        let directed = |direction: &str| {
            vec![
                ("member", members.name(node).to_owned()),
                ("direction", direction.to_owned()),
            ]
        };
        counters.push((
            "cluster_link_frames",
            directed("out"),
            stats.frames_out.get(),
        ));
        counters.push(("cluster_link_frames", directed("in"), stats.frames_in.get()));
        counters.push(("cluster_link_bytes", directed("out"), stats.bytes_out.get()));
        counters.push(("cluster_link_bytes", directed("in"), stats.bytes_in.get()));
        counters.push(("cluster_link_dropped", member(), stats.dropped.get()));
        counters.push(("cluster_link_reconnects", member(), stats.reconnects.get()));
        counters.push(("cluster_link_refused", member(), stats.refused.get()));
        for (direction, torrents, peers) in [
            (
                "out",
                &stats.handback_torrents_out,
                &stats.handback_peers_out,
            ),
            ("in", &stats.handback_torrents_in, &stats.handback_peers_in),
        ] {
            counters.push((
                "cluster_handback_torrents",
                directed(direction),
                torrents.get(),
            ));
            counters.push(("cluster_handback_peers", directed(direction), peers.get()));
        }
        counters.push((
            "cluster_handback_skipped",
            member(),
            stats.handback_skipped.get(),
        ));
        gauges.push((
            "cluster_link_heartbeat_rtt_micros",
            member(),
            i64::try_from(stats.heartbeat_rtt_micros.get()).unwrap_or(i64::MAX),
        ));
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

/// Counts this executor among those holding a loaded catalog, once.
fn count_loaded_catalog(
    catalog: &Catalog,
    counted: &std::cell::Cell<bool>,
    private: &PrivateShared,
) {
    if catalog.loaded() && !counted.replace(true) {
        private
            .executors_loaded
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// The parts of an executor a reloaded configuration reaches.
struct ReloadTargets {
    id: usize,
    host: Rc<SharedHost>,
    udp: Option<Rc<UdpEndpoint>>,
    http: Option<Rc<HttpEndpoint>>,
    ws: Option<Rc<WsEndpoint>>,
}

impl ReloadTargets {
    /// Hands every part the runtime keys of `config` (see
    /// `reload::RUNTIME_KEYS`); nothing is dropped: swarms, connections
    /// and queues stay.
    fn apply(&self, config: &ValidConfig) {
        self.host.with(|host| host.apply_config(config));
        if let Some(udp) = &self.udp {
            udp.apply_config(config);
        }
        if let Some(http) = &self.http {
            http.apply_config(config);
        }
        if let Some(ws) = &self.ws {
            ws.apply_config(config);
        }
        log::debug!("executor {} took the reloaded configuration", self.id);
    }
}

async fn refresh_reloadables(
    targets: ReloadTargets,
    router: Rc<Router>,
    config: Rc<LocalCopy<ValidConfig>>,
    access_list: LocalCopy<AccessList>,
    catalog: Option<(
        LocalCopy<Catalog>,
        Option<PrivateShared>,
        std::cell::Cell<bool>,
    )>,
    tls_configs: Vec<Rc<LocalCopy<rustls::ServerConfig>>>,
    live: Option<(LocalCopy<LiveSet>, LocalCopy<Members>)>,
) {
    let host = targets.host.clone();
    loop {
        sleep(Duration::from_millis(200)).await;
        if let Some((live, members)) = &live {
            // Members before the live set: a member that joined is known
            // by the time it can be an owner.
            if let Some(members) = members.refresh() {
                router.set_members(Rc::new((*members).clone()));
            }
            if let Some(live) = live.refresh() {
                router.set_live((*live).clone());
            }
        }
        if let Some(config) = config.refresh() {
            targets.apply(&config);
        }
        if let Some(list) = access_list.refresh() {
            host.with(|host| host.set_access_list(list));
            log::debug!("an executor took the new access list");
        }
        if let Some((copy, private, counted)) = &catalog {
            if let Some(catalog) = copy.refresh() {
                if let Some(private) = private {
                    count_loaded_catalog(&catalog, counted, private);
                }
                host.with(|host| host.set_catalog(catalog));
                log::debug!("an executor took the new private catalog");
            }
        }
        for tls in &tls_configs {
            tls.refresh();
        }
    }
}

/// Torrents and peers a cleaning slice looks at (about 0.2 ms of work):
/// then it yields to requests.
const CLEAN_SLICE_WORK: usize = 16_384;

/// Peers read out of the shard between two yields while a snapshot is
/// collected (a big torrent is read in parts): a slice takes well under a
/// millisecond, so requests wait no longer than that behind it. The
/// snapshot log line says how long the longest slice took.
const SNAPSHOT_SLICE_PEERS: usize = 4096;
/// Torrents looked at in one slice at most (one without peers still
/// costs a lookup).
const SNAPSHOT_SLICE_TORRENTS: usize = 2048;
/// Bytes reserved for one slice's records (about 32 a peer): each slice
/// encodes into a buffer of its own, so the executor never grows (and
/// copies) one buffer of the whole body.
const SNAPSHOT_SLICE_BYTES: usize = SNAPSHOT_SLICE_PEERS * 40;
/// The pause between two slices.
const SNAPSHOT_SLICE_PAUSE: Duration = Duration::from_micros(100);
/// The pause after each slice's buffer is written, in a periodic write
/// (about 250 buffers at 1 M peers: a quarter of a second added).
const SNAPSHOT_WRITE_PACE: Duration = Duration::from_millis(1);

/// Runs a periodic snapshot's write (checksum, copy into the page cache,
/// fsync) on a thread of its own at the lowest CPU priority (nice 19): an
/// executor sharing its core (glommio's blocking thread is not pinned, and
/// may land on any executor's core) then preempts it as soon as a request
/// arrives, instead of waiting out a scheduler slice behind it.
fn at_lowest_priority(work: impl FnOnce() -> Result<u64, String> + Send) -> Result<u64, String> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn_scoped(scope, || {
                // SAFETY: setpriority(2) on this thread's own id (on
                // Linux a thread id names one thread). A failure leaves
                // the priority as it was, which is only slower for others.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
                }
                work()
            })
            .map_err(|e| format!("cannot start the snapshot thread: {e}"))?;
        thread
            .join()
            .map_err(|_| "the snapshot thread panicked".to_owned())?
    })
}

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
    /// Puts the restored torrents into the shard (a private tracker's
    /// into its private swarms); runs before any task.
    fn restore(&self, records: Vec<TorrentRecord>) {
        let now = self.start.seconds_elapsed();
        let mut restored = 0u64;
        let mut entries = Vec::new();
        self.host.with(|host| {
            let timeout = host.peer_timeout();
            for record in records {
                entries.clear();
                entries.extend(record.peers.iter().filter_map(|p| p.to_entry(now, timeout)));
                if entries.is_empty() {
                    continue;
                }
                restored += entries.len() as u64;
                let hash = InfoHash(record.info_hash);
                match record.private_torrent {
                    None => host.bt_mut().restore(hash, record.completed, now, &entries),
                    Some(torrent) => {
                        let (swarms, ledger) = host.private_parts_mut();
                        swarms.restore(hash, record.completed, now, &entries);
                        ledger.restore_torrent(hash, TorrentId(torrent));
                    }
                }
            }
        });
        self.status.peers_restored.set(restored);
    }

    /// Puts the private baselines of the last clean stop into the ledger;
    /// runs before any task.
    fn restore_baselines(&self, records: Vec<BaselineRecord>) {
        let now = self.start.seconds_elapsed();
        self.host.with(|host| {
            let timeout = host.peer_timeout();
            let (_, ledger) = host.private_parts_mut();
            for entry in records.iter().filter_map(|r| r.to_entry(now, timeout)) {
                ledger.restore_baseline(entry);
            }
        });
    }

    /// Every private baseline, for the stop (one pass: nothing is served
    /// any more).
    fn baselines(&self) -> Vec<BaselineRecord> {
        let now = self.start.seconds_elapsed();
        self.host.with(|host| {
            let timeout = host.peer_timeout();
            let (_, ledger) = host.private_parts();
            ledger
                .baseline_entries()
                .map(|e| BaselineRecord::from_entry(&e, now, timeout))
                .collect()
        })
    }

    async fn write_periodically(self: Rc<Self>, interval: Duration) {
        loop {
            sleep(interval).await;
            self.write("periodic").await;
        }
    }

    /// Collects the shard in slices, yielding to requests between them,
    /// then writes the file on a blocking thread. A slice is bounded by
    /// peers and by torrents (a big torrent is read in parts), encodes
    /// into its own buffer, and allocates nothing in proportion to the
    /// shard; the blocking thread gets owned, encoded buffers (and frees
    /// them). A failure is logged and counted: the previous snapshot stays.
    async fn write(&self, why: &str) {
        let Ok(_permit) = self.writing.acquire_permit(1).await else {
            return;
        };
        let began = std::time::Instant::now();
        let created_at = UnixSeconds::now();
        let now = self.start.seconds_elapsed();
        let (lists, timeout) = self.host.with(|host| {
            let lists = [
                host.bt().info_hashes(),
                host.private_parts().0.info_hashes(),
            ];
            (lists, host.peer_timeout())
        });
        let listed = began.elapsed();
        let mut body = SnapshotBody::default();
        let mut entries = Vec::new();
        let mut records = Vec::new();
        // Where the next slice starts: which list (public, private), which
        // torrent in it, and how many of its peers are already read.
        let (mut list, mut next, mut skip) = (0usize, 0usize, 0usize);
        let mut failure = None;
        let (mut slices, mut longest) = (0u32, Duration::ZERO);
        loop {
            let done = self.host.with(|host| {
                let slice_began = std::time::Instant::now();
                body.start_chunk(SNAPSHOT_SLICE_BYTES);
                let (mut peers_left, mut torrents_left) =
                    (SNAPSHOT_SLICE_PEERS, SNAPSHOT_SLICE_TORRENTS);
                let done = loop {
                    if peers_left == 0 || torrents_left == 0 {
                        break false;
                    }
                    let Some(hash) = lists.get(list).map(|l| l.get(next)) else {
                        break true;
                    };
                    let Some(&hash) = hash else {
                        (list, next, skip) = (list + 1, 0, 0);
                        continue;
                    };
                    torrents_left -= 1;
                    let (shard, private_torrent) = if list == 0 {
                        (host.bt(), None)
                    } else {
                        let (swarms, ledger) = host.private_parts();
                        // A private swarm is kept with its database id;
                        // one without is not the tracker's any more.
                        let Some(id) = ledger.torrent_id(&hash) else {
                            (next, skip) = (next + 1, 0);
                            continue;
                        };
                        (swarms, Some(id.0))
                    };
                    entries.clear();
                    // Gone since the list was taken: nothing to keep.
                    let Some(completed) =
                        shard.torrent_entries_part(&hash, now, skip, peers_left, &mut entries)
                    else {
                        (next, skip) = (next + 1, 0);
                        continue;
                    };
                    records.clear();
                    records.extend(
                        entries
                            .iter()
                            .map(|e| PeerRecord::from_entry(e, now, timeout)),
                    );
                    if let Err(err) = body.push_torrent(hash, completed, private_torrent, &records)
                    {
                        failure = Some(err.to_string());
                        break true;
                    }
                    if entries.len() == peers_left {
                        // The slice is full: this torrent may go on.
                        skip += entries.len();
                        peers_left = 0;
                    } else {
                        peers_left -= entries.len();
                        (next, skip) = (next + 1, 0);
                    }
                };
                slices += 1;
                longest = longest.max(slice_began.elapsed());
                done
            });
            if done {
                break;
            }
            // A timer, not a yield of the task queue: with nothing else
            // runnable a yielded queue runs again at once, before the
            // reactor has looked for new datagrams; a sleep parks this
            // task, so the executor polls its ring and serves what waits.
            sleep(SNAPSHOT_SLICE_PAUSE).await;
        }
        let collected = began.elapsed();
        let peers = body.peers();
        let result = match failure {
            Some(err) => Err(err),
            None => {
                let state = self.state.clone();
                let executor = self.executor;
                let periodic = why != AT_STOP;
                glommio::executor()
                    .spawn_blocking(move || {
                        let work = move || {
                            // The hash lists and the buffers are freed
                            // here, not on the executor.
                            drop(lists);
                            let pace = periodic.then_some(SNAPSHOT_WRITE_PACE);
                            state
                                .write_snapshot_body(executor, body, created_at, pace)
                                .map_err(|e| e.to_string())
                        };
                        if periodic {
                            at_lowest_priority(work)
                        } else {
                            // At stop nothing is served: full speed, so
                            // that it fits in snapshot.stop_timeout_secs.
                            work()
                        }
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
                    "snapshot ({why}): {peers} peers, {bytes} bytes in {} in {took:?} \
                     (torrent lists {listed:?}, {slices} slices in {collected:?}, \
                     longest {longest:?})",
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
