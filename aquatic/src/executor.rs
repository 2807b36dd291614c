//! One executor: a shard of the torrents plus the tasks that serve it.
//!
//! ```text
//!            ┌──────────── executor i (pinned to core first_core + i) ───────────┐
//!  udp    ──>│ udp task ──(own shard)──> BtShard ──> response ──> socket          │
//!  http   ──>│ connection tasks ──(other shard)──> mesh ──> executor j ──> Reply  │
//!  mesh   ──>│ one task per peer: forwarded announces, scrape parts, replies      │
//!            │ timers: cleaning (staggered), reload pickup, shutdown watch        │
//!            └────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! All state is `Rc`/`RefCell` owned by the executor's thread; no borrow is
//! held across an `.await`.

use std::{
    cell::{Cell, RefCell},
    net::{Ipv4Addr, Ipv6Addr},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aquatic_common::{
    access_list::AccessList,
    connection_id::ConnectionIdValidator,
    shard_of,
    time::{SecondsSinceStart, ServerStartInstant},
    InfoHash, ShardId,
};
use futures_lite::StreamExt;
use glommio::{
    channels::{
        channel_mesh::{Full, MeshBuilder, Senders},
        local_channel::{self, LocalReceiver, LocalSender},
    },
    timer::sleep,
    Latency, Shares, TaskQueueHandle,
};
use hashbrown::HashMap;
use rand::{rngs::SmallRng, SeedableRng};

use crate::{
    config::Config,
    metrics::ExecutorStats,
    net::{
        http::{self, HttpEndpoint},
        udp::{self, UdpEndpoint},
        ws::{self, WsEndpoint},
    },
    routing::{ShardMessage, ShardReply, SwarmKind},
    swarm::{
        BtAnnounce, BtAnnounceOutcome, BtPeerOut, BtShard, ConnectionRef, ScrapeStats, WsAnnounce,
        WsOutgoing, WsShard,
    },
};

/// The datagram that makes an executor panic when built with `test-hooks`.
#[cfg(feature = "test-hooks")]
pub const TEST_PANIC_TRIGGER: &[u8] = b"aquatic-test-hook:panic";

/// How long a stopping executor waits for WebSocket close handshakes.
const WS_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long an executor waits for another to answer before giving up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A value the main thread replaces at runtime (access list, TLS config).
///
/// Executors compare `generation` on a timer and take a new `Arc` only when
/// it changed, so the request path reads an executor-local copy: no lock,
/// no atomic.
pub struct Reloadable<T> {
    generation: AtomicU64,
    value: Mutex<Arc<T>>,
}

impl<T> Reloadable<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Self {
            generation: AtomicU64::new(0),
            value: Mutex::new(Arc::new(value)),
        }
    }

    /// Replaces the value; executors pick it up within a fraction of a second.
    pub fn replace(&self, value: T) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value and its generation.
    pub fn current(&self) -> (u64, Arc<T>) {
        let generation = self.generation();
        let value = self.value.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (generation, value)
    }
}

/// An executor's copy of a [`Reloadable`].
pub struct LocalCopy<T> {
    shared: Arc<Reloadable<T>>,
    seen: Cell<u64>,
    value: RefCell<Arc<T>>,
}

impl<T> LocalCopy<T> {
    /// Copies the current value.
    pub fn new(shared: Arc<Reloadable<T>>) -> Self {
        let (generation, value) = shared.current();
        Self {
            shared,
            seen: Cell::new(generation),
            value: RefCell::new(value),
        }
    }

    /// The local value.
    pub fn get(&self) -> Arc<T> {
        self.value.borrow().clone()
    }

    /// Takes the shared value if it changed; true if it did.
    fn refresh(&self) -> bool {
        if self.shared.generation() == self.seen.get() {
            return false;
        }
        let (generation, value) = self.shared.current();
        self.seen.set(generation);
        *self.value.borrow_mut() = value;
        true
    }
}

/// What the main thread hands each executor thread.
pub struct ExecutorSetup {
    /// The thread's index (the shard is the mesh's peer id).
    pub thread_index: usize,
    /// Executors in all.
    pub shards: usize,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The clock's zero, shared by all executors.
    pub start: ServerStartInstant,
    /// Connection id key, shared by all executors.
    pub validator: ConnectionIdValidator,
    /// This executor's UDP socket, bound by the main thread.
    pub udp_socket: Option<socket2::Socket>,
    /// This executor's HTTP listener, bound by the main thread.
    pub http_listener: Option<socket2::Socket>,
    /// The mesh every executor joins.
    pub mesh: MeshBuilder<ShardMessage, Full>,
    /// The shared access list.
    pub access_list: Arc<Reloadable<AccessList>>,
    /// The shared TLS configuration for HTTPS, if enabled.
    pub http_tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    /// This executor's WebSocket listener, bound by the main thread.
    pub ws_listener: Option<socket2::Socket>,
    /// The shared TLS configuration for WSS, if enabled.
    pub ws_tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    /// Where to publish figures for the metrics endpoint, if enabled.
    pub metrics: Option<Arc<crate::metrics::MetricsHub>>,
    /// Set by the main thread to stop.
    pub shutdown: Arc<AtomicBool>,
    /// Told once this executor serves.
    pub events: std::sync::mpsc::Sender<crate::server::Event>,
}

/// The state of one executor, shared by its tasks.
pub struct Executor {
    /// This executor's shard.
    pub id: ShardId,
    /// Executors in all.
    pub shards: usize,
    /// The validated configuration.
    pub config: Arc<Config>,
    start: ServerStartInstant,
    /// The torrents this executor owns.
    pub shard: RefCell<BtShard>,
    /// The WebTorrent torrents this executor owns.
    pub ws_shard: RefCell<WsShard>,
    /// Outgoing queues of the WebSocket connections this executor holds.
    pub ws_connections: RefCell<HashMap<u64, LocalSender<WsOutgoing>>>,
    /// WebSocket connection tasks still running.
    pub ws_open: Cell<usize>,
    /// Set when the executor stops: accept loops take no new connections.
    pub stopping: Cell<bool>,
    /// Randomness for peer selection.
    pub rng: RefCell<SmallRng>,
    mesh: Senders<ShardMessage>,
    waiting: RefCell<HashMap<u64, LocalSender<ShardReply>>>,
    next_token: Cell<u64>,
    access_list: LocalCopy<AccessList>,
    /// Counters.
    pub stats: ExecutorStats,
    /// Where request-serving tasks run.
    pub requests_queue: TaskQueueHandle,
}

impl Executor {
    /// Seconds since the server started.
    #[inline]
    pub fn now(&self) -> SecondsSinceStart {
        self.start.seconds_elapsed()
    }

    /// Whether the access list lets `info_hash` through.
    #[inline]
    pub fn access_list_allows(&self, info_hash: &InfoHash) -> bool {
        self.access_list.value.borrow().allows(info_hash)
    }

    /// The shard that owns `info_hash`.
    #[inline]
    pub fn owner(&self, info_hash: &InfoHash) -> ShardId {
        shard_of(info_hash, self.shards)
    }

    /// Sends to another executor without waiting; a full channel drops the
    /// message and counts it.
    pub fn send_to_shard(&self, to: ShardId, message: ShardMessage) {
        if let Err(err) = self.mesh.try_send_to(to.0, message) {
            self.stats.mesh_dropped.bump();
            log::debug!("message to executor {} dropped: {err}", to.0);
        }
    }

    /// Sends a request another executor answers with a [`ShardMessage::Reply`];
    /// the reply arrives on the returned receiver.
    fn send_request(
        &self,
        to: ShardId,
        message: impl FnOnce(u64) -> ShardMessage,
    ) -> (u64, LocalReceiver<ShardReply>) {
        let token = self.next_token.get();
        self.next_token.set(token.wrapping_add(1));
        let (sender, receiver) = local_channel::new_bounded(1);
        self.waiting.borrow_mut().insert(token, sender);
        self.send_to_shard(to, message(token));
        (token, receiver)
    }

    /// Waits for the reply to `token` (None if it never comes).
    async fn wait_reply(
        &self,
        token: u64,
        receiver: LocalReceiver<ShardReply>,
    ) -> Option<ShardReply> {
        let reply = futures_lite::future::or(receiver.recv(), async {
            sleep(REPLY_TIMEOUT).await;
            None
        })
        .await;
        self.waiting.borrow_mut().remove(&token);
        reply
    }

    /// Runs an announce on whichever shard owns the torrent; peers land in
    /// `out_v4` / `out_v6`. None when the owner did not answer in time.
    pub async fn announce(
        &self,
        request: BtAnnounce,
        out_v4: &mut Vec<BtPeerOut<Ipv4Addr>>,
        out_v6: &mut Vec<BtPeerOut<Ipv6Addr>>,
    ) -> Option<BtAnnounceOutcome> {
        let owner = self.owner(&request.info_hash);
        if owner == self.id {
            return Some(self.announce_local(&request, out_v4, out_v6));
        }
        let message = |token| ShardMessage::Announce {
            origin: self.id,
            token,
            request,
        };
        let (token, receiver) = self.send_request(owner, message);
        match self.wait_reply(token, receiver).await? {
            ShardReply::Announce {
                outcome,
                peers_v4,
                peers_v6,
            } => {
                *out_v4 = peers_v4;
                *out_v6 = peers_v6;
                Some(outcome)
            }
            ShardReply::Scrape(_) => None,
        }
    }

    /// Runs an announce on this executor's own shard.
    pub fn announce_local(
        &self,
        request: &BtAnnounce,
        out_v4: &mut Vec<BtPeerOut<Ipv4Addr>>,
        out_v6: &mut Vec<BtPeerOut<Ipv6Addr>>,
    ) -> BtAnnounceOutcome {
        let mut shard = self.shard.borrow_mut();
        let mut rng = self.rng.borrow_mut();
        shard.announce(
            &self.config.tracker,
            self.now(),
            &mut *rng,
            request,
            out_v4,
            out_v6,
        )
    }

    /// Scrape figures for `hashes`, in their order, from every shard that
    /// owns one of them: the local part inline, the others asked at once
    /// and awaited together. Parts that never come back read as zeros.
    pub async fn scrape(&self, kind: SwarmKind, hashes: &[InfoHash]) -> Vec<ScrapeStats> {
        let mut stats = vec![ScrapeStats::default(); hashes.len()];
        let mut remote: Vec<(ShardId, Vec<usize>, Vec<InfoHash>)> = Vec::new();
        {
            for (i, hash) in hashes.iter().enumerate() {
                let owner = self.owner(hash);
                if owner == self.id {
                    stats[i] = self.scrape_local(kind, hash);
                } else if let Some(part) = remote.iter_mut().find(|p| p.0 == owner) {
                    part.1.push(i);
                    part.2.push(*hash);
                } else {
                    remote.push((owner, vec![i], vec![*hash]));
                }
            }
        }
        // Every part is asked before any is awaited, so the parts are
        // answered in parallel.
        let pending: Vec<_> = remote
            .into_iter()
            .map(|(owner, positions, hashes)| {
                let (token, receiver) = self.send_request(owner, |token| ShardMessage::Scrape {
                    origin: self.id,
                    token,
                    kind,
                    hashes,
                });
                (token, receiver, positions)
            })
            .collect();
        for (token, receiver, positions) in pending {
            if let Some(ShardReply::Scrape(part)) = self.wait_reply(token, receiver).await {
                for (i, s) in positions.into_iter().zip(part) {
                    stats[i] = s;
                }
            }
        }
        stats
    }

    /// Scrape figures of one torrent this executor owns.
    pub fn scrape_local(&self, kind: SwarmKind, hash: &InfoHash) -> ScrapeStats {
        match kind {
            SwarmKind::Bt => self.shard.borrow().scrape(hash),
            SwarmKind::Ws => self.ws_shard.borrow().scrape(hash),
        }
    }

    /// Runs a WebTorrent announce here if this shard owns the torrent, or
    /// sends it to the owner.
    pub fn ws_announce(&self, request: WsAnnounce) {
        let owner = self.owner(&request.info_hash);
        if owner != self.id {
            self.send_to_shard(owner, ShardMessage::WsAnnounce(request));
            return;
        }
        let mut rng = self.rng.borrow_mut();
        self.ws_shard.borrow_mut().announce(
            &self.config.tracker,
            self.now(),
            &mut *rng,
            request,
            |connection, message| self.ws_send(connection, message),
        );
    }

    /// Hands `message` to a WebSocket connection, here or on its executor.
    /// A full queue drops it (a slow client must not hold anyone up).
    pub fn ws_send(&self, connection: ConnectionRef, message: WsOutgoing) {
        if connection.executor != self.id {
            self.send_to_shard(
                connection.executor,
                ShardMessage::WsDeliver {
                    connection,
                    message,
                },
            );
            return;
        }
        let connections = self.ws_connections.borrow();
        match connections.get(&connection.connection) {
            // try_send wakes the connection's task at once.
            Some(queue) => {
                if queue.try_send(message).is_err() {
                    self.stats.ws_dropped.bump();
                }
            }
            None => self.stats.ws_dropped.bump(),
        }
    }

    /// A connection closed: every shard that holds one of its peers drops it.
    pub fn ws_closed(
        &self,
        connection: ConnectionRef,
        peers: Vec<(InfoHash, aquatic_common::PeerId)>,
    ) {
        let mut by_owner: Vec<(ShardId, Vec<(InfoHash, aquatic_common::PeerId)>)> = Vec::new();
        for (hash, peer_id) in peers {
            let owner = self.owner(&hash);
            if owner == self.id {
                self.ws_shard
                    .borrow_mut()
                    .disconnect(&hash, &peer_id, connection);
            } else if let Some(part) = by_owner.iter_mut().find(|p| p.0 == owner) {
                part.1.push((hash, peer_id));
            } else {
                by_owner.push((owner, vec![(hash, peer_id)]));
            }
        }
        for (owner, peers) in by_owner {
            self.send_to_shard(owner, ShardMessage::WsClosed { connection, peers });
        }
    }

    fn deliver(&self, token: u64, reply: ShardReply) {
        if let Some(sender) = self.waiting.borrow_mut().remove(&token) {
            let _ = sender.try_send(reply);
        }
    }
}

/// The executor's main future: joins the mesh, starts the tasks, reports
/// ready, and returns when the main thread asks it to stop.
pub async fn run(setup: ExecutorSetup) {
    let ExecutorSetup {
        thread_index,
        shards,
        config,
        start,
        validator,
        udp_socket,
        http_listener,
        mesh,
        access_list,
        http_tls,
        ws_listener,
        ws_tls,
        metrics,
        shutdown,
        events,
    } = setup;
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(err) => panic!("executor {thread_index} could not join the mesh: {err}"),
    };
    // The mesh numbers executors in the order they joined; that number is
    // the shard this executor owns, whatever its thread index.
    let id = ShardId(senders.peer_id());
    let requests_queue = glommio::executor().create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_millis(10)),
        "requests",
    );
    let background = glommio::executor().create_task_queue(
        Shares::Static(100),
        Latency::NotImportant,
        "background",
    );
    let ex = Rc::new(Executor {
        id,
        shards,
        config: config.clone(),
        start,
        shard: RefCell::default(),
        ws_shard: RefCell::default(),
        ws_connections: RefCell::default(),
        ws_open: Cell::new(0),
        stopping: Cell::new(false),
        rng: RefCell::new(SmallRng::from_entropy()),
        mesh: senders,
        waiting: RefCell::default(),
        next_token: Cell::new(0),
        access_list: LocalCopy::new(access_list),
        stats: ExecutorStats::default(),
        requests_queue,
    });

    let udp = udp_socket.map(|socket| Rc::new(UdpEndpoint::new(socket, validator, &config)));
    if let Some(udp) = &udp {
        spawn(requests_queue, udp::run(ex.clone(), udp.clone()));
    }
    let http_tls = http_tls.map(|tls| Rc::new(LocalCopy::new(tls)));
    if let Some(listener) = http_listener {
        let endpoint = Rc::new(HttpEndpoint::new(listener, http_tls.clone()));
        spawn(requests_queue, http::run(ex.clone(), endpoint));
    }
    let ws_tls = ws_tls.map(|tls| Rc::new(LocalCopy::new(tls)));
    if let Some(listener) = ws_listener {
        let endpoint = Rc::new(WsEndpoint::new(listener, ws_tls.clone()));
        spawn(requests_queue, ws::run(ex.clone(), endpoint));
    }
    for (_, stream) in receivers.streams() {
        let ex = ex.clone();
        let udp = udp.clone();
        spawn(requests_queue, async move {
            let mut stream = stream;
            while let Some(message) = stream.next().await {
                handle_message(&ex, udp.as_deref(), message).await;
            }
        });
    }
    spawn(background, clean_periodically(ex.clone()));
    if let Some(hub) = metrics {
        spawn(background, publish_metrics(ex.clone(), hub));
    }
    spawn(
        background,
        refresh_reloadables(
            ex.clone(),
            [http_tls, ws_tls].into_iter().flatten().collect(),
        ),
    );

    let _ = events.send(crate::server::Event::Ready(thread_index));
    while !shutdown.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(50)).await;
    }
    log::debug!("executor {} stopping", ex.id.0);
    ex.stopping.set(true);
    // Dropping the queues ends every WebSocket task: each sends a close
    // frame and its peers leave their swarms.
    let closing: Vec<_> = ex.ws_connections.borrow_mut().drain().collect();
    drop(closing);
    let deadline = std::time::Instant::now() + WS_CLOSE_GRACE;
    while ex.ws_open.get() > 0 && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
}

/// Spawns a detached task on `queue`.
pub fn spawn(queue: TaskQueueHandle, future: impl std::future::Future<Output = ()> + 'static) {
    match glommio::spawn_local_into(future, queue) {
        Ok(task) => task.detach(),
        Err(err) => panic!("cannot spawn task: {err}"),
    };
}

async fn handle_message(ex: &Executor, udp: Option<&UdpEndpoint>, message: ShardMessage) {
    match message {
        ShardMessage::UdpAnnounce {
            client,
            transaction_id,
            request,
        } => {
            if let Some(udp) = udp {
                udp::answer_forwarded_announce(ex, udp, client, transaction_id, &request).await;
            }
        }
        ShardMessage::Announce {
            origin,
            token,
            request,
        } => {
            let (mut peers_v4, mut peers_v6) = (Vec::new(), Vec::new());
            let outcome = ex.announce_local(&request, &mut peers_v4, &mut peers_v6);
            let reply = ShardReply::Announce {
                outcome,
                peers_v4,
                peers_v6,
            };
            ex.send_to_shard(origin, ShardMessage::Reply { token, reply });
        }
        ShardMessage::Scrape {
            origin,
            token,
            kind,
            hashes,
        } => {
            let stats = hashes
                .iter()
                .map(|hash| ex.scrape_local(kind, hash))
                .collect();
            let reply = ShardReply::Scrape(stats);
            ex.send_to_shard(origin, ShardMessage::Reply { token, reply });
        }
        ShardMessage::Reply { token, reply } => ex.deliver(token, reply),
        ShardMessage::WsAnnounce(request) => ex.ws_announce(request),
        ShardMessage::WsDeliver {
            connection,
            message,
        } => ex.ws_send(connection, message),
        ShardMessage::WsClosed { connection, peers } => {
            let mut shard = ex.ws_shard.borrow_mut();
            for (hash, peer_id) in peers {
                shard.disconnect(&hash, &peer_id, connection);
            }
        }
    }
}

async fn clean_periodically(ex: Rc<Executor>) {
    let interval = ex.config.tracker.cleaning_interval();
    // Stagger the executors so their cleaning passes do not coincide.
    let offset = interval.mul_f64(ex.id.0 as f64 / ex.shards.max(1) as f64);
    sleep(offset).await;
    loop {
        sleep(interval).await;
        let now = ex.now();
        let report = ex.shard.borrow_mut().clean(now);
        let ws_report = ex.ws_shard.borrow_mut().clean(now);
        shrink_if_sparse(&mut ex.waiting.borrow_mut());
        shrink_if_sparse(&mut ex.ws_connections.borrow_mut());
        // Freed swarms, maps and connection buffers go back to the
        // allocator, but glibc keeps freed heap pages unless asked: hand
        // them back to the OS so RSS falls when traffic does.
        release_free_memory();
        let shard = ex.shard.borrow();
        let (seeders, leechers) = shard.peer_counts();
        log::debug!(
            "executor {}: removed {} peers and {} torrents (ws: {} and {}); now {} torrents, {seeders} seeders, {leechers} leechers, {} ws torrents",
            ex.id.0,
            report.peers_removed,
            report.torrents_removed,
            ws_report.peers_removed,
            ws_report.torrents_removed,
            shard.torrents(),
            ex.ws_shard.borrow().torrents(),
        );
    }
}

/// Publishes this executor's figures once a second: the request path only
/// bumps its own cells, the endpoint reads the last snapshot.
async fn publish_metrics(ex: Rc<Executor>, hub: Arc<crate::metrics::MetricsHub>) {
    loop {
        let mut snapshot = crate::metrics::Snapshot {
            counters: ex.stats.samples(),
            gauges: Vec::new(),
        };
        {
            let label = |k: &'static str, v: &str| (k, v.to_owned());
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            let bt = ex.shard.borrow();
            let ws = ex.ws_shard.borrow();
            let (bt_seeders, bt_leechers) = bt.peer_counts();
            let (ws_seeders, ws_leechers) = ws.peer_counts();
            let connections = ex.ws_connections.borrow();
            let gauges = &mut snapshot.gauges;
            gauges.push(("torrents", vec![label("swarm", "bt")], count(bt.torrents())));
            gauges.push(("torrents", vec![label("swarm", "ws")], count(ws.torrents())));
            for (swarm, kind, n) in [
                ("bt", "seeder", bt_seeders),
                ("bt", "leecher", bt_leechers),
                ("ws", "seeder", ws_seeders),
                ("ws", "leecher", ws_leechers),
            ] {
                gauges.push((
                    "peers",
                    vec![label("swarm", swarm), label("kind", kind)],
                    count(n),
                ));
            }
            gauges.push(("ws_connections", Vec::new(), count(ex.ws_open.get())));
            for (map, capacity) in [
                ("bt_torrents", bt.capacity()),
                ("ws_torrents", ws.capacity()),
                ("ws_connections", connections.capacity()),
            ] {
                gauges.push(("map_capacity", vec![label("map", map)], count(capacity)));
            }
        }
        hub.publish(ex.id.0, snapshot);
        sleep(Duration::from_secs(1)).await;
    }
}

fn shrink_if_sparse<V>(map: &mut HashMap<u64, V>) {
    if map.capacity() > 64 && map.capacity() > map.len() * 4 {
        map.shrink_to_fit();
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
    ex: Rc<Executor>,
    tls_configs: Vec<Rc<LocalCopy<rustls::ServerConfig>>>,
) {
    loop {
        sleep(Duration::from_millis(200)).await;
        if ex.access_list.refresh() {
            log::debug!("executor {} took the new access list", ex.id.0);
        }
        for tls in &tls_configs {
            tls.refresh();
        }
    }
}
