//! One executor: a shard of the torrents plus the tasks that serve it.
//!
//! ```text
//!            ┌──────────── executor i (pinned to core first_core + i) ───────────┐
//!  socket ──>│ udp task ──(local hash)──> BtShard ──> response ──> socket         │
//!            │     └──(other shard)──> mesh ──> executor j                         │
//!  mesh   ──>│ mesh task per peer: forwarded announces, scrape parts              │
//!            │ timers: cleaning (staggered), access list refresh, shutdown watch  │
//!            └────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! All state is `Rc`/`RefCell` owned by the executor's thread; no borrow is
//! held across an `.await`.

use std::{
    cell::RefCell,
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
    time::{SecondsSinceStart, ServerStartInstant},
    InfoHash, ShardId,
};
use futures_lite::StreamExt;
use glommio::{
    channels::channel_mesh::{MeshBuilder, Senders},
    timer::sleep,
    Latency, Shares,
};
use rand::{rngs::SmallRng, SeedableRng};

use crate::{
    config::Config,
    metrics::ExecutorStats,
    net::udp::{self, UdpEndpoint},
    routing::ShardMessage,
    swarm::BtShard,
};

/// The datagram that makes an executor panic when built with `test-hooks`.
#[cfg(feature = "test-hooks")]
pub const TEST_PANIC_TRIGGER: &[u8] = b"aquatic-test-hook:panic";

/// The access list every executor copies from, replaced on reload.
///
/// Executors check `generation` on a timer and take a new `Arc` only when
/// it changed, so the request path reads an executor-local copy.
#[derive(Default)]
pub struct SharedAccessList {
    generation: AtomicU64,
    list: Mutex<Arc<AccessList>>,
}

impl SharedAccessList {
    /// Starts with `list`.
    pub fn new(list: AccessList) -> Self {
        Self {
            generation: AtomicU64::new(0),
            list: Mutex::new(Arc::new(list)),
        }
    }

    /// Replaces the list; executors pick it up within a second.
    pub fn replace(&self, list: AccessList) {
        *self.list.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn current(&self) -> (u64, Arc<AccessList>) {
        let generation = self.generation.load(Ordering::Acquire);
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (generation, list)
    }
}

/// What the main thread hands each executor thread.
pub struct ExecutorSetup {
    /// The thread's index (the shard is the mesh's peer id).
    pub id: ShardId,
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
    /// The mesh every executor joins.
    pub mesh: MeshBuilder<ShardMessage, glommio::channels::channel_mesh::Full>,
    /// The shared access list.
    pub access_list: Arc<SharedAccessList>,
    /// Set by the main thread to stop.
    pub shutdown: Arc<AtomicBool>,
    /// Told once this executor serves.
    pub ready: std::sync::mpsc::Sender<crate::server::Event>,
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
    /// Randomness for peer selection.
    pub rng: RefCell<SmallRng>,
    mesh: Senders<ShardMessage>,
    access_list: RefCell<Arc<AccessList>>,
    /// Counters.
    pub stats: ExecutorStats,
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
        self.access_list.borrow().allows(info_hash)
    }

    /// Sends to another executor without waiting; a full channel drops the
    /// message and counts it.
    pub fn send_to_shard(&self, to: ShardId, message: ShardMessage) {
        if let Err(err) = self.mesh.try_send_to(to.0, message) {
            self.stats.mesh_dropped.bump();
            log::debug!("message to executor {} dropped: {err}", to.0);
        }
    }
}

/// The executor's main future: joins the mesh, starts the tasks, reports
/// ready, and returns when the main thread asks it to stop.
pub async fn run(setup: ExecutorSetup) {
    let ExecutorSetup {
        id: thread_index,
        shards,
        config,
        start,
        validator,
        udp_socket,
        mesh,
        access_list,
        shutdown,
        ready,
    } = setup;
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(err) => panic!("executor {} could not join the mesh: {err}", thread_index.0),
    };
    // The mesh numbers executors in the order they joined; that number is
    // the shard this executor owns, whatever its thread index.
    let id = ShardId(senders.peer_id());
    let (generation, list) = access_list.current();
    let ex = Rc::new(Executor {
        id,
        shards,
        config: config.clone(),
        start,
        shard: RefCell::default(),
        rng: RefCell::new(SmallRng::from_entropy()),
        mesh: senders,
        access_list: RefCell::new(list),
        stats: ExecutorStats::default(),
    });
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

    let udp = udp_socket.map(|socket| {
        Rc::new(UdpEndpoint::new(
            socket,
            validator,
            config.tracker.max_numwant,
            config.tracker.max_scrape_torrents,
        ))
    });
    if let Some(udp) = &udp {
        spawn(requests, udp::run(ex.clone(), udp.clone()));
    }
    for (_, stream) in receivers.streams() {
        let ex = ex.clone();
        let udp = udp.clone();
        spawn(requests, async move {
            let mut stream = stream;
            while let Some(message) = stream.next().await {
                handle_message(&ex, udp.as_deref(), message).await;
            }
        });
    }
    spawn(background, clean_periodically(ex.clone(), udp.clone()));
    spawn(
        background,
        refresh_access_list(ex.clone(), access_list, generation),
    );

    let _ = ready.send(crate::server::Event::Ready(thread_index));
    while !shutdown.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(50)).await;
    }
    log::debug!("executor {} stopping", ex.id.0);
}

fn spawn(queue: glommio::TaskQueueHandle, future: impl std::future::Future<Output = ()> + 'static) {
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
        ShardMessage::ScrapeRequest {
            origin,
            token,
            hashes,
        } => {
            let stats = {
                let shard = ex.shard.borrow();
                hashes
                    .into_iter()
                    .map(|(i, hash)| (i, shard.scrape(&hash)))
                    .collect()
            };
            ex.send_to_shard(origin, ShardMessage::ScrapeResponse { token, stats });
        }
        ShardMessage::ScrapeResponse { token, stats } => {
            if let Some(udp) = udp {
                udp::complete_scrape_part(udp, ex, token, stats).await;
            }
        }
    }
}

async fn clean_periodically(ex: Rc<Executor>, udp: Option<Rc<UdpEndpoint>>) {
    let interval = ex.config.tracker.cleaning_interval();
    // Stagger the executors so their cleaning passes do not coincide.
    let offset = interval.mul_f64(ex.id.0 as f64 / ex.shards.max(1) as f64);
    sleep(offset).await;
    loop {
        sleep(interval).await;
        let now = ex.now();
        let report = ex.shard.borrow_mut().clean(now);
        if let Some(udp) = &udp {
            udp.clean(now);
        }
        let shard = ex.shard.borrow();
        let (seeders, leechers) = shard.peer_counts();
        log::debug!(
            "executor {}: removed {} peers and {} torrents; now {} torrents, {seeders} seeders, {leechers} leechers",
            ex.id.0,
            report.peers_removed,
            report.torrents_removed,
            shard.torrents(),
        );
    }
}

async fn refresh_access_list(ex: Rc<Executor>, shared: Arc<SharedAccessList>, mut seen: u64) {
    loop {
        sleep(Duration::from_millis(200)).await;
        if shared.generation.load(Ordering::Acquire) != seen {
            let (generation, list) = shared.current();
            seen = generation;
            *ex.access_list.borrow_mut() = list;
        }
    }
}
