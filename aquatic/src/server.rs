//! The process: sockets, executor threads, signals and the panic policy.
//!
//! ```text
//! main thread: config -> panic hook -> RLIMIT_MEMLOCK -> access list
//!              -> bind N SO_REUSEPORT sockets per protocol (port 0 resolved once)
//!              -> UDP: attach the kernel steering program (net::steering)
//!              -> N threads, each a glommio LocalExecutor pinned to a core,
//!                 made in order so that mesh peer i is thread i (socket i)
//!              -> wait for all ready -> print the listening addresses
//!              -> signals: SIGHUP config reload (then what SIGUSR1 does),
//!                 SIGUSR1 files reload, SIGTERM/SIGINT stop (detach the
//!                 steering program, then stop; a second one: exit now)
//! ```
//!
//! Reloads run on the main thread and only ever swap [`Reloadable`]s; the
//! executors pick the new values up on a timer (`executor.rs`), so a
//! reload never blocks or touches the request path. SIGHUP re-reads the
//! config file, applies the keys `reload::RUNTIME_KEYS` lists and logs the
//! others as needing a restart; other features that reload on a signal add
//! their step to [`reload_files`] (SIGUSR1, also run after every SIGHUP) or,
//! for their config keys, to `RUNTIME_KEYS` and the executors' `apply_config`.
//!
//! A panic on any thread logs the message and ends the whole process with
//! status 101, so that systemd restarts it: a tracker with a dead shard is
//! worse than a restarted one.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicBool, mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use aquatic_common::{
    access_list::AccessList,
    connection_id::{ConnectionIdKey, ConnectionIdValidator},
    time::{ServerStartInstant, UnixSeconds},
};
use glommio::{
    channels::channel_mesh::MeshBuilder, LocalExecutorBuilder, Placement, PoolPlacement,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    cluster::{
        link::LinkSetup,
        members::{LiveSet, Members},
        tls::LinkTls,
    },
    config::{Config, ValidConfig, STOP_EXIT_GRACE},
    database::{self, DatabaseStats, DatabaseThread, DbMessage},
    executor::{self, ClusterShared, ExecutorSetup, ExecutorSockets, PrivateShared, Shared},
    metrics::MetricsHub,
    net::steering::{CpuPlacement, Steering},
    notify::{monotonic_usec, notify},
    reload::Reloadable,
    snapshot::{self, RestoredShards, StateDir, TorrentRecord},
    swarm::PeerIdKey,
};

/// How long executors may take to start before start-up is declared failed.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What the main thread waits for.
#[derive(Debug)]
pub enum Event {
    /// An executor (by thread index) serves.
    Ready(usize),
    /// An executor could not be created.
    StartFailed(usize, String),
    /// An executor's thread ended.
    Exited(usize),
    /// A signal arrived.
    Signal(i32),
    /// Private mode: the first load of users and torrents succeeded.
    PrivateLoaded,
}

/// Makes a panic on any thread end the process with a non-zero status.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let message = format!("panic on thread '{name}': {info}; stopping the whole process");
        log::error!("{message}");
        eprintln!("aquatic: {message}");
        std::process::exit(101);
    }));
}

/// Raises RLIMIT_MEMLOCK's soft limit so `needed` bytes can be locked, if
/// the hard limit (or our privileges) allow it.
fn raise_memlock(needed: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return Ok(());
        }
        if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed {
            return Ok(());
        }
        let wanted = libc::rlimit {
            rlim_cur: needed,
            rlim_max: limit.rlim_max.max(needed),
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &wanted) == 0 {
            log::info!("raised RLIMIT_MEMLOCK to {} KiB", needed / 1024);
            return Ok(());
        }
        if limit.rlim_max == libc::RLIM_INFINITY || limit.rlim_max >= needed {
            let soft = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &soft) == 0 {
                return Ok(());
            }
        }
    }
    bail!(
        "the locked-memory limit (ulimit -l) is {} KiB, but the executors need about {} KiB for their io_uring rings: \
         raise it (`ulimit -l {}` in the shell, LimitMEMLOCK= in the systemd unit) or lower `workers` / `runtime.io_memory_kib`",
        limit.rlim_cur / 1024,
        needed / 1024,
        needed / 1024
    )
}

/// io_uring memory one executor locks: registered buffers plus three rings.
fn memlock_per_executor(config: &Config) -> u64 {
    let rings = 3 * config.runtime.ring_depth as u64 * 128;
    config.runtime.io_memory_kib as u64 * 1024 + rings + 256 * 1024
}

fn bind_udp(address: SocketAddr, config: &Config) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(config.udp.only_ipv6)?;
    }
    socket.set_reuse_port(true)?;
    // Blocking mode on purpose: io_uring would answer EAGAIN on a
    // non-blocking socket instead of waiting; our own batched calls pass
    // MSG_DONTWAIT.
    if config.udp.socket_recv_buffer_size > 0 {
        socket.set_recv_buffer_size(config.udp.socket_recv_buffer_size)?;
    }
    set_dont_fragment(&socket)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// Sets DF without path-MTU bookkeeping (`IP_PMTUDISC_PROBE`) on IPv4
/// replies, including v4-mapped ones from a dual-stack socket. Replies are
/// far below any real MTU, and with DF set the kernel skips computing an IP
/// id per datagram, a measurable part of its per-reply cost.
fn set_dont_fragment(socket: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn bind_tcp(address: SocketAddr, only_v6: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(only_v6)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// ALPN for the HTTPS listener.
const HTTP_ALPN: &[&[u8]] = &[b"http/1.1"];

/// A protocol's TLS configuration from its certificate and key files.
fn load_tls(
    protocol: &str,
    certificate: &std::path::Path,
    key: &std::path::Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<rustls::ServerConfig> {
    aquatic_common::tls::load_server_config_with_provider(certificate, key, HTTP_ALPN, provider)
        .with_context(|| format!("cannot load the {protocol} certificate and key"))
}

fn load_http_tls(config: &Config) -> anyhow::Result<rustls::ServerConfig> {
    let http = &config.http;
    load_tls(
        "HTTPS",
        &http.tls_certificate_path,
        &http.tls_private_key_path,
        Arc::new(rustls::crypto::ring::default_provider()),
    )
}

fn load_ws_tls(config: &Config) -> anyhow::Result<rustls::ServerConfig> {
    let ws = &config.ws;
    // Idle WebSocket connections are many and long-lived: keep their TLS
    // 1.3 keys raw between records (see net::lazy_aead).
    load_tls(
        "WSS",
        &ws.tls_certificate_path,
        &ws.tls_private_key_path,
        crate::net::lazy_aead::provider(),
    )
}

/// Becomes the configured user (and group), inside the configured chroot,
/// once everything that needs root is done.
fn drop_privileges(privileges: &crate::config::PrivilegesConfig) -> anyhow::Result<()> {
    use std::ffi::CString;
    if !privileges.drop {
        return Ok(());
    }
    let user = CString::new(privileges.user.as_str()).context("privileges.user")?;
    // SAFETY: getpwnam/getgrnam return pointers into static storage that we
    // read at once, on the main thread, before any other thread looks up users.
    let (uid, user_gid) = unsafe {
        let pw = libc::getpwnam(user.as_ptr());
        if pw.is_null() {
            bail!("privileges.user {:?} does not exist", privileges.user);
        }
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    let gid = if privileges.group.is_empty() {
        user_gid
    } else {
        let group = CString::new(privileges.group.as_str()).context("privileges.group")?;
        // SAFETY: as above.
        unsafe {
            let gr = libc::getgrnam(group.as_ptr());
            if gr.is_null() {
                bail!("privileges.group {:?} does not exist", privileges.group);
            }
            (*gr).gr_gid
        }
    };
    let failed = |what: &str| {
        anyhow::anyhow!(
            "cannot drop privileges ({what}): {}; start as root, or set privileges.drop = false",
            std::io::Error::last_os_error()
        )
    };
    if !privileges.chroot.as_os_str().is_empty() {
        use std::os::unix::ffi::OsStrExt;
        let dir =
            CString::new(privileges.chroot.as_os_str().as_bytes()).context("privileges.chroot")?;
        // SAFETY: plain system calls with valid C strings.
        unsafe {
            if libc::chroot(dir.as_ptr()) != 0 {
                return Err(failed("chroot"));
            }
            if libc::chdir(c"/".as_ptr()) != 0 {
                return Err(failed("chdir"));
            }
        }
    }
    // SAFETY: plain system calls; glibc applies them to every thread.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(failed("setgroups"));
        }
        if libc::setgid(gid) != 0 {
            return Err(failed("setgid"));
        }
        if libc::setuid(uid) != 0 {
            return Err(failed("setuid"));
        }
        if libc::setuid(0) == 0 {
            bail!("privileges were not dropped: setuid(0) still works");
        }
    }
    log::info!("running as uid {uid}, gid {gid}");
    Ok(())
}

/// Binds one socket per executor on one address; a port of 0 is resolved
/// once, so every executor shares the same port.
fn bind_all<F>(
    configured: SocketAddr,
    socket_type: Type,
    count: usize,
    bind: F,
) -> anyhow::Result<(SocketAddr, Vec<Socket>)>
where
    F: Fn(SocketAddr) -> std::io::Result<Socket>,
{
    let mut address = configured;
    if address.port() == 0 {
        // The kernel may hand a SO_REUSEPORT bind(0) a port that another
        // process's SO_REUSEPORT group already uses (same uid), which would
        // split traffic between the two. A plain socket gets a free port.
        let probe = Socket::new(Domain::for_address(address), socket_type, None)
            .and_then(|s| s.bind(&address.into()).map(|()| s))
            .and_then(|s| s.local_addr())
            .with_context(|| format!("cannot bind {configured}"))?;
        if let Some(resolved) = probe.as_socket() {
            address.set_port(resolved.port());
        }
    }
    let sockets = (0..count)
        .map(|_| bind(address).with_context(|| format!("cannot bind {address}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((address, sockets))
}

/// Runs the tracker until SIGTERM or SIGINT. `config_path` is the file
/// `config` came from, re-read on SIGHUP (None: the built-in defaults).
pub fn run(config: ValidConfig, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let live_config = Arc::new(Reloadable::new(config.clone()));
    let config = Arc::new(config);
    let workers = config.worker_count();
    raise_memlock(memlock_per_executor(&config) * workers as u64)?;

    let access_list = AccessList::load(config.access_list.mode, &config.access_list.path)
        .context("cannot load the access list")?;
    let access_list = Arc::new(Reloadable::new(access_list));
    let http_tls = if config.http.enabled && config.http.tls() {
        Some(Arc::new(Reloadable::new(load_http_tls(&config)?)))
    } else {
        None
    };

    let mut udp_sockets: Vec<Option<Socket>> = (0..workers).map(|_| None).collect();
    let mut steering = None;
    let mut listening = Vec::new();
    if config.udp.enabled {
        let (address, sockets) = bind_all(config.udp.address, Type::DGRAM, workers, |a| {
            bind_udp(a, &config)
        })?;
        listening.push(format!("udp://{address}"));
        steering = steer_udp(&config, &sockets);
        for (slot, socket) in udp_sockets.iter_mut().zip(sockets) {
            *slot = Some(socket);
        }
    }

    let ws_tls = if config.ws.enabled && config.ws.tls() {
        Some(Arc::new(Reloadable::new(load_ws_tls(&config)?)))
    } else {
        None
    };
    let mut ws_listeners: Vec<Option<Socket>> = (0..workers).map(|_| None).collect();
    if config.ws.enabled {
        let only_v6 = config.ws.only_ipv6;
        let (address, sockets) = bind_all(config.ws.address, Type::STREAM, workers, |a| {
            bind_tcp(a, only_v6)
        })?;
        let scheme = if ws_tls.is_some() { "wss" } else { "ws" };
        listening.push(format!("{scheme}://{address}"));
        for (slot, socket) in ws_listeners.iter_mut().zip(sockets) {
            *slot = Some(socket);
        }
    }
    let mut http_listeners: Vec<Option<Socket>> = (0..workers).map(|_| None).collect();
    if config.http.enabled {
        let only_v6 = config.http.only_ipv6;
        let (address, sockets) = bind_all(config.http.address, Type::STREAM, workers, |a| {
            bind_tcp(a, only_v6)
        })?;
        let scheme = if http_tls.is_some() { "https" } else { "http" };
        listening.push(format!("{scheme}://{address}"));
        for (slot, socket) in http_listeners.iter_mut().zip(sockets) {
            *slot = Some(socket);
        }
    }

    let mut cluster = None;
    let mut cluster_tls = None;
    let mut cluster_members = None;
    if let Some(members) = Members::from_config(&config.cluster) {
        let tls = Arc::new(Reloadable::new(
            LinkTls::load(&config.cluster).context("cannot load the cluster certificates")?,
        ));
        cluster_tls = Some(tls.clone());
        let listener = std::net::TcpListener::bind(config.cluster.listen)
            .with_context(|| format!("cannot bind cluster.listen {}", config.cluster.listen))?;
        listening.push(format!("cluster://{}", listener.local_addr()?));
        let live = Arc::new(Reloadable::new(LiveSet::only(members.me(), members.len())));
        let members = Arc::new(Reloadable::new(members));
        cluster_members = Some(members.clone());
        let links = LinkSetup {
            members: members.clone(),
            tls,
            listener,
            failure_timeout: config.cluster.failure_timeout(),
            live: live.clone(),
        };
        cluster = Some(ClusterShared {
            members,
            live,
            links: Arc::new(std::sync::Mutex::new(Some(links))),
        });
    }

    let metrics = Arc::new(MetricsHub::new(workers));
    if config.metrics.enabled {
        let listener = std::net::TcpListener::bind(config.metrics.address).with_context(|| {
            format!("cannot bind the metrics address {}", config.metrics.address)
        })?;
        listening.push(format!("metrics://{}", listener.local_addr()?));
        let hub = metrics.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || crate::status::serve(listener, hub))
            .context("cannot start the metrics thread")?;
    }

    drop_privileges(&config.privileges)?;

    let (events, event_rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    {
        let events = events.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if events.send(Event::Signal(signal)).is_err() {
                        break;
                    }
                }
            })
            .context("cannot start the signal thread")?;
    }

    let state = open_state_dir(&config, workers)?;
    let key = connection_id_key(&config, state.as_deref())?;
    let peer_id_key = peer_id_key(&config, state.as_deref())?;
    let start = ServerStartInstant::new();
    let mut restored =
        RestoredShards::new(restore(state.as_deref(), workers, &config, &peer_id_key));
    // Private mode's accounting of the last clean stop: the baselines go
    // to the executors with their torrents, the deltas to the database
    // thread.
    let accounting = match (&state, config.private.enabled) {
        (Some(state), true) => restore_accounting(state, workers, &config),
        _ => None,
    };
    let private = if config.private.enabled {
        let catalog = Arc::new(Reloadable::new(crate::swarm::private::Catalog::starting()));
        let stats = Arc::new(DatabaseStats::default());
        metrics.set_database(stats.clone());
        let (sender, receiver) = database::channel(config.private.channel_batches);
        let loaded = {
            let events = events.clone();
            Box::new(move || {
                let _ = events.send(Event::PrivateLoaded);
            })
        };
        let (in_flight, pending) = match accounting {
            Some(accounting) => {
                restored = restored.with_baselines(accounting.per_shard);
                (accounting.in_flight, accounting.pending)
            }
            None => (None, Default::default()),
        };
        let thread = DatabaseThread::new(config.private.clone(), catalog.clone(), stats, loaded)
            .with_state(state.clone(), in_flight, pending);
        let handle = std::thread::Builder::new()
            .name("database".into())
            .spawn(move || thread.run(receiver))
            .context("cannot start the database thread")?;
        Some((
            PrivateShared {
                catalog,
                database: sender,
                executors_loaded: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            },
            handle,
        ))
    } else {
        None
    };
    let restored = Arc::new(restored);

    let shared = Shared {
        config: config.clone(),
        live_config: live_config.clone(),
        start,
        validator: ConnectionIdValidator::new(
            key,
            Duration::from_secs(config.udp.connection_id_max_age_secs),
        ),
        access_list: access_list.clone(),
        http_tls: http_tls.clone(),
        ws_tls: ws_tls.clone(),
        metrics: config.metrics.enabled.then(|| metrics.clone()),
        shutdown: Arc::new(AtomicBool::new(false)),
        cluster,
        private: private.as_ref().map(|(p, _)| p.clone()),
        state,
        peer_id_key,
    };
    let shutdown = shared.shutdown.clone();
    let mesh = MeshBuilder::full(workers, config.runtime.mesh_channel_size);
    let (made_tx, made_rx) = mpsc::channel();
    let listeners = udp_sockets
        .into_iter()
        .zip(http_listeners)
        .zip(ws_listeners);
    for (i, ((udp, http), ws)) in listeners.enumerate() {
        let ready = {
            let events = events.clone();
            Box::new(move || {
                let _ = events.send(Event::Ready(i));
            })
        };
        let setup = ExecutorSetup {
            index: i,
            shards: workers,
            mesh: mesh.clone(),
            sockets: ExecutorSockets {
                udp,
                udp_steered: steering.is_some(),
                http,
                ws,
            },
            shared: shared.clone(),
            ready,
            restored: restored.clone(),
        };
        let placement = if config.runtime.pin_cpus {
            Placement::Fixed(config.runtime.first_core + i)
        } else {
            Placement::Unbound
        };
        let builder = LocalExecutorBuilder::new(placement)
            .name(&format!("aquatic-{i}"))
            .io_memory(config.runtime.io_memory_kib * 1024)
            .ring_depth(config.runtime.ring_depth)
            // Snapshot files are written on the blocking thread: let it run
            // on any core rather than take turns with its pinned executor.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1));
        let events = events.clone();
        let made = made_tx.clone();
        std::thread::Builder::new()
            .name(format!("aquatic-{i}"))
            .spawn(move || {
                let executor = builder.make();
                let _ = made.send(());
                match executor {
                    Ok(executor) => executor.run(executor::run(setup)),
                    Err(err) => {
                        let _ = events.send(Event::StartFailed(i, err.to_string()));
                        return;
                    }
                }
                let _ = events.send(Event::Exited(i));
            })
            .context("cannot start an executor thread")?;
        // glommio numbers executors as they are made, and the mesh ranks
        // its members by that number: making them one after the other
        // makes mesh peer i (shard i) the thread that holds socket i and
        // is pinned to core first_core + i, which kernel steering needs.
        if made_rx.recv_timeout(START_TIMEOUT).is_err() {
            bail!("executor {i} was not created within {START_TIMEOUT:?}");
        }
    }
    drop(events);

    let loaded = wait_until_ready(&event_rx, workers, &config)?;
    for address in &listening {
        println!("aquatic: listening on {address}");
    }
    println!("aquatic: ready with {workers} workers");
    let mut state = ServeState {
        ready_notified: false,
        executors_loaded: private
            .as_ref()
            .map(|(p, _)| (p.executors_loaded.clone(), workers)),
    };
    if private.is_none() || loaded {
        private_loaded(&mut state);
    } else {
        log::info!("private: READY=1 waits for the first load of users and torrents");
    }
    log::info!("serving {} with {workers} workers", listening.join(", "));

    let reloadables = Reloadables {
        config_path,
        config: live_config,
        access_list,
        http_tls,
        ws_tls,
        cluster_tls,
        cluster_members,
        database: private.as_ref().map(|(p, _)| p.database.clone()),
    };
    let result = serve_until_stopped(
        &event_rx,
        workers,
        &reloadables,
        &shutdown,
        steering,
        &mut state,
    );
    if let Some((shared, handle)) = private {
        drop(reloadables);
        // After an error there was no stop signal: the budget starts now.
        let stop_deadline = match &result {
            Ok(deadline) => *deadline,
            Err(_) => Instant::now() + config.snapshot.stop_timeout(),
        };
        stop_database(shared, handle, stop_deadline, &config);
    }
    result.map(|_| ())
}

/// Attaches the kernel steering program to the UDP group (bound, in
/// executor order), if configured and there is more than one executor.
/// Where the kernel refuses it, one line says so and the kernel's hash
/// spreads datagrams as before.
fn steer_udp(config: &Config, sockets: &[Socket]) -> Option<Steering> {
    if !config.udp.kernel_steering || sockets.len() < 2 {
        return None;
    }
    let placement = match u32::try_from(config.runtime.first_core) {
        Ok(first_core) if config.runtime.pin_cpus => CpuPlacement::Pinned { first_core },
        _ => CpuPlacement::Unpinned,
    };
    match Steering::attach(sockets, placement) {
        Ok(steering) => {
            let connects = match placement {
                CpuPlacement::Pinned { .. } => "the executor of the receiving CPU",
                CpuPlacement::Unpinned => "the kernel's hash (executors not pinned)",
            };
            log::info!(
                "udp: kernel steering on: announces and scrapes go to their torrent's executor, connects to {connects}"
            );
            Some(steering)
        }
        Err(err) => {
            log::warn!(
                "udp: kernel steering unavailable ({err}): datagrams spread by the kernel's hash and forwarded between executors (udp.kernel_steering = false silences this)"
            );
            None
        }
    }
}

/// The key connection ids are made with: the file the cluster's members
/// share when the cluster is on (an id issued by one node must be accepted
/// by every other), otherwise the one persisted in the state directory
/// (ids survive a restart), otherwise a fresh random key. A missing or
/// short shared key is a start-up error, never a silent fallback: members
/// with different keys would refuse each other's ids.
fn connection_id_key(config: &Config, state: Option<&StateDir>) -> anyhow::Result<ConnectionIdKey> {
    if !config.cluster.enabled {
        return Ok(snapshot::connection_id_key(state)?);
    }
    let path = &config.cluster.key_file;
    let material = std::fs::read(path)
        .with_context(|| format!("cannot read cluster.key_file {}", path.display()))?;
    ConnectionIdKey::from_material(&material)
        .with_context(|| format!("cluster.key_file {}", path.display()))
}

/// The peer-id key: on a cluster node derived from `cluster.key_file`
/// (like the connection-id key), so every member hashes a peer id alike and
/// a swarm handed from one to another still matches its peers'
/// re-announces; else the state directory's (or a random one).
fn peer_id_key(
    config: &Config,
    state: Option<&StateDir>,
) -> anyhow::Result<crate::swarm::PeerIdKey> {
    if !config.cluster.enabled {
        return Ok(snapshot::peer_id_key(state)?);
    }
    let path = &config.cluster.key_file;
    let material = std::fs::read(path)
        .with_context(|| format!("cannot read cluster.key_file {}", path.display()))?;
    Ok(crate::swarm::PeerIdKey::from_material(&material))
}

/// What the main thread remembers while serving.
struct ServeState {
    /// READY=1 was sent (in private mode only after the first load).
    ready_notified: bool,
    /// Private mode: how many executors hold a loaded catalog, of how many.
    executors_loaded: Option<(Arc<std::sync::atomic::AtomicUsize>, usize)>,
}

/// Sends READY=1 the first time the tracker can answer members: in
/// private mode once every executor has taken the first loaded catalog
/// (they pick it up on their reload timer, within a fraction of a second).
fn private_loaded(state: &mut ServeState) {
    if state.ready_notified {
        return;
    }
    state.ready_notified = true;
    if let Some((loaded, workers)) = &state.executors_loaded {
        let deadline = Instant::now() + Duration::from_secs(10);
        while loaded.load(std::sync::atomic::Ordering::Acquire) < *workers {
            if Instant::now() >= deadline {
                log::warn!("private: not every executor took the loaded catalog within 10 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        println!("aquatic: private data loaded");
    }
    notify("READY=1");
}

/// When the database thread's last flush gives up: after
/// `private.stop_flush_timeout_secs`, and never after the graceful stop's
/// one budget (`stop_deadline`, `snapshot.stop_timeout_secs` after the
/// signal) is spent: the flush gets what the executors left, so that the
/// whole stop fits in the unit's `TimeoutStopSec=` (see
/// [`SnapshotConfig::worst_case_stop`](crate::config::SnapshotConfig::worst_case_stop)).
fn flush_deadline(now: Instant, stop_deadline: Instant, flush_timeout: Duration) -> Instant {
    (now + flush_timeout).min(stop_deadline).max(now)
}

/// Asks the database thread for its last flush, in what is left of the
/// stop's budget, and waits for it (it gives up by itself at that point;
/// the wait ends [`STOP_EXIT_GRACE`] after `stop_deadline` whatever
/// happens, e.g. a database call that hangs for `io_timeout_secs`).
fn stop_database(
    shared: PrivateShared,
    handle: std::thread::JoinHandle<()>,
    stop_deadline: Instant,
    config: &Config,
) {
    let flush_until = flush_deadline(
        Instant::now(),
        stop_deadline,
        Duration::from_secs(config.private.stop_flush_timeout_secs),
    );
    // A blocking send: the thread keeps emptying the channel.
    let _ = shared.database.send(DbMessage::Stop { flush_until });
    drop(shared);
    let deadline = stop_deadline.max(flush_until) + STOP_EXIT_GRACE;
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            log::error!("private: the database thread did not finish its last flush; exiting");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = handle.join();
}

/// The state directory, locked, if snapshots are on (`snapshot.dir`, else
/// `$STATE_DIRECTORY`).
fn open_state_dir(config: &Config, workers: usize) -> anyhow::Result<Option<Arc<StateDir>>> {
    let env = std::env::var_os("STATE_DIRECTORY");
    let Some(path) = config.snapshot.state_dir(env.as_deref()) else {
        log::info!("no state directory (snapshot.dir, $STATE_DIRECTORY): swarms and connection ids do not survive a restart");
        return Ok(None);
    };
    let state = StateDir::open(&path, workers)?;
    Ok(Some(Arc::new(state)))
}

/// The snapshots' torrents for each executor, by the current `shard_of`
/// and worker count.
fn restore(
    state: Option<&StateDir>,
    workers: usize,
    config: &Config,
    peer_id_key: &PeerIdKey,
) -> Vec<Vec<TorrentRecord>> {
    let Some(state) = state else {
        return Vec::new();
    };
    let began = Instant::now();
    let restored = state.restore(
        workers,
        UnixSeconds::now(),
        config.tracker.peer_timeout(),
        peer_id_key,
    );
    if restored.files > 0 {
        log::info!(
            "restored {} peers from {} snapshot files in {} (up to {} s old; {} peers had expired) in {:?}",
            restored.peers,
            restored.files,
            state.path().display(),
            restored.oldest_secs,
            restored.expired,
            began.elapsed()
        );
    }
    restored.per_shard
}

/// The private accounting the last clean stop kept, removed from the state
/// directory as it is read (logged).
fn restore_accounting(
    state: &StateDir,
    workers: usize,
    config: &Config,
) -> Option<snapshot::RestoredAccounting> {
    let accounting =
        state.take_accounting(workers, UnixSeconds::now(), config.tracker.peer_timeout())?;
    log::info!(
        "private: restored {} baselines ({} had expired) and {} rows of statistics not yet \
         written from {}",
        accounting.baselines,
        accounting.expired,
        accounting.pending.rows() + accounting.in_flight.as_ref().map_or(0, |(_, b)| b.rows()),
        state.accounting_path().display()
    );
    Some(accounting)
}

/// Waits until every executor serves; true if the private catalog's first
/// load arrived meanwhile.
fn wait_until_ready(
    events: &mpsc::Receiver<Event>,
    workers: usize,
    config: &Config,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut ready = 0;
    let mut loaded = false;
    while ready < workers {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Ready(_)) => ready += 1,
            Ok(Event::PrivateLoaded) => loaded = true,
            Ok(Event::StartFailed(i, err)) => {
                let hint = if err.contains("memory")
                    || err.contains("ENOMEM")
                    || err.contains("EPERM")
                {
                    format!(
                        " (io_uring needs locked memory: raise `ulimit -l`, LimitMEMLOCK= in the systemd unit, or lower runtime.io_memory_kib = {} / workers)",
                        config.runtime.io_memory_kib
                    )
                } else if config.runtime.pin_cpus {
                    " (is the core there? see runtime.pin_cpus and runtime.first_core)".to_owned()
                } else {
                    String::new()
                };
                bail!("executor {i} failed to start: {err}{hint}");
            }
            Ok(Event::Exited(i)) => bail!("executor {i} stopped during start-up"),
            Ok(Event::Signal(_)) => bail!("stopped by a signal during start-up"),
            Err(_) => bail!("executors did not start within {START_TIMEOUT:?}"),
        }
    }
    Ok(loaded)
}

/// Serves until a stop signal, then waits for the executors within the
/// stop's budget; returns when that budget ends (what private mode's
/// last flush may still use).
fn serve_until_stopped(
    events: &mpsc::Receiver<Event>,
    workers: usize,
    reloadables: &Reloadables,
    shutdown: &AtomicBool,
    steering: Option<Steering>,
    state: &mut ServeState,
) -> anyhow::Result<Instant> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    loop {
        match events.recv() {
            Ok(Event::PrivateLoaded) => private_loaded(state),
            Ok(Event::Signal(signal @ (SIGHUP | SIGUSR1))) => {
                notify(&format!("RELOADING=1\n{}", monotonic_usec()));
                if signal == SIGHUP {
                    reload_config(reloadables);
                }
                reload_files(&reloadables.config.current().1, reloadables);
                notify("READY=1");
            }
            Ok(Event::Signal(signal @ (SIGTERM | SIGINT))) => {
                log::info!("signal {signal}: stopping");
                notify("STOPPING=1");
                // Before any executor closes its socket: a close moves the
                // group's last socket into the closed one's index.
                if let Some(steering) = steering {
                    if let Err(err) = steering.detach() {
                        log::warn!("udp: cannot detach the steering program: {err}");
                    }
                }
                shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            Ok(Event::Exited(i)) => bail!("executor {i} stopped unexpectedly"),
            Ok(other) => log::debug!("ignored event {other:?}"),
            Err(_) => bail!("every executor is gone"),
        }
    }
    let stop_timeout = reloadables.config.current().1.snapshot.stop_timeout();
    let deadline = Instant::now() + stop_timeout;
    let mut exited = 0;
    while exited < workers {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Exited(_)) => exited += 1,
            Ok(Event::Signal(SIGTERM | SIGINT)) => {
                log::warn!("second signal: exiting at once");
                break;
            }
            Ok(_) => {}
            Err(_) => {
                log::warn!(
                    "executors did not stop within {stop_timeout:?} (snapshot.stop_timeout_secs); exiting anyway"
                );
                break;
            }
        }
    }
    log::info!("stopped");
    Ok(deadline)
}

/// What SIGHUP and SIGUSR1 reload.
struct Reloadables {
    /// The file SIGHUP re-reads.
    config_path: Option<PathBuf>,
    /// The configuration in force.
    config: Arc<Reloadable<ValidConfig>>,
    access_list: Arc<Reloadable<AccessList>>,
    http_tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    ws_tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    /// The cluster CA, certificate and key (links made after a reload use
    /// the new ones; links already up keep theirs).
    cluster_tls: Option<Arc<Reloadable<LinkTls>>>,
    /// The cluster's member list, replaced when `cluster.members` changes.
    cluster_members: Option<Arc<Reloadable<Members>>>,
    /// Private mode: the database thread reloads users and torrents.
    database: Option<mpsc::SyncSender<DbMessage>>,
}

/// SIGHUP: re-reads the config file and puts its runtime keys in force
/// (the executors take them within a fraction of a second). A file that
/// does not validate, alone or with the running restart-only values,
/// changes nothing.
fn reload_config(reloadables: &Reloadables) {
    let Some(path) = &reloadables.config_path else {
        log::info!("config reload: no config file (built-in defaults): nothing to re-read");
        return;
    };
    // Every problem, as --check-config lists them, not only serde's first.
    let checked = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read the file: {err}"))
        .and_then(|text| {
            crate::check::check_text(&text).map_err(|findings| {
                let list: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
                format!("{} problem(s): {}", list.len(), list.join("; "))
            })
        });
    let file = match checked {
        Ok(file) => file,
        Err(problems) => {
            log::error!(
                "config reload of {} failed, nothing changed: {problems}",
                path.display()
            );
            return;
        }
    };
    let running = reloadables.config.current().1;
    let plan = match crate::reload::plan(&running, &file) {
        Ok(plan) => plan,
        Err(err) => {
            log::error!(
                "config reload of {} failed, nothing changed: {err}",
                path.display()
            );
            return;
        }
    };
    if !plan.not_applied.is_empty() {
        log::warn!(
            "config reload of {}: not applied, these keys need a restart (running values kept): {}",
            path.display(),
            plan.not_applied.join(", ")
        );
    }
    if plan.applied.is_empty() {
        log::info!(
            "config reload of {}: no runtime-changeable key changed",
            path.display()
        );
        return;
    }
    crate::logging::set_level(plan.config.log_level.filter());
    log::info!(
        "config reload of {}: applied {}",
        path.display(),
        plan.applied.join(", ")
    );
    if let Some(members) = &reloadables.cluster_members {
        if plan.applied.iter().any(|key| key == "cluster.members") {
            let running = members.current().1;
            // `plan` validated the list with this node's running name in it.
            if let Some(next) = running.reloaded(&plan.config.cluster) {
                let added: Vec<&str> = next
                    .others()
                    .filter(|n| running.is_removed(*n))
                    .map(|n| next.name(n))
                    .collect();
                let removed: Vec<&str> = running
                    .others()
                    .filter(|n| next.is_removed(*n))
                    .map(|n| running.name(n))
                    .collect();
                log::info!(
                    "cluster members reloaded: added [{}], removed [{}]",
                    added.join(", "),
                    removed.join(", ")
                );
                members.replace(next);
            }
        }
    }
    reloadables.config.replace(plan.config);
}

/// SIGUSR1 (and the end of every SIGHUP): re-reads the files `config`
/// names; a file that fails to load keeps the old one.
fn reload_files(config: &Config, reloadables: &Reloadables) {
    if let Some(database) = &reloadables.database {
        if database.try_send(DbMessage::Reload).is_err() {
            log::warn!(
                "private: reload not queued (the database thread is busy); it runs on its timer"
            );
        }
    }
    match AccessList::load(config.access_list.mode, &config.access_list.path) {
        Ok(list) => {
            log::info!("access list reloaded: {} info hashes", list.len());
            reloadables.access_list.replace(list);
        }
        Err(err) => log::error!("access list reload failed, keeping the old list: {err}"),
    }
    reload_tls("HTTPS", &reloadables.http_tls, || load_http_tls(config));
    reload_tls("WSS", &reloadables.ws_tls, || load_ws_tls(config));
    if let Some(current) = &reloadables.cluster_tls {
        match LinkTls::load(&config.cluster) {
            Ok(tls) => {
                log::info!("cluster CA, certificate and key reloaded");
                current.replace(tls);
            }
            Err(err) => {
                log::error!("cluster certificate reload failed, keeping the old ones: {err}")
            }
        }
    }
}

/// Swaps in a freshly loaded TLS configuration; a failure keeps the old one.
fn reload_tls(
    protocol: &str,
    current: &Option<Arc<Reloadable<rustls::ServerConfig>>>,
    load: impl FnOnce() -> anyhow::Result<rustls::ServerConfig>,
) {
    let Some(current) = current else { return };
    match load() {
        Ok(server_config) => {
            log::info!("{protocol} certificate and key reloaded");
            current.replace(server_config);
        }
        Err(err) => log::error!("{protocol} reload failed, keeping the old certificate: {err:#}"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn the_last_flush_gets_what_the_executors_left() {
        let now = Instant::now();
        let secs = Duration::from_secs;
        // Executors done early: the flush's own timeout bounds it.
        assert_eq!(flush_deadline(now, now + secs(9), secs(5)), now + secs(5));
        // They took most of the budget: the flush gets the rest.
        assert_eq!(flush_deadline(now, now + secs(2), secs(10)), now + secs(2));
        // They took all of it (or more): no flush, the rows are kept.
        assert_eq!(flush_deadline(now + secs(3), now, secs(10)), now + secs(3));
    }

    fn mtu_discover(socket: &Socket) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket and a c_int-sized out parameter.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        value
    }

    #[test]
    fn the_cluster_key_comes_from_its_file() {
        let dir = std::env::temp_dir().join(format!("aquatic-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut config = Config::default();
        config.cluster.enabled = true;
        config.cluster.key_file = dir.join("key");
        let validator = |config: &Config| {
            ConnectionIdValidator::new(
                connection_id_key(config, None).expect("key"),
                Duration::from_secs(60),
            )
        };
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        let now = aquatic_common::time::UnixSeconds(1_800_000_000);

        std::fs::write(&config.cluster.key_file, [7u8; 31]).expect("write");
        let short = connection_id_key(&config, None).expect_err("31 bytes");
        assert!(format!("{short:#}").contains("key"), "{short:#}");

        std::fs::write(&config.cluster.key_file, [7u8; 32]).expect("write");
        let id = validator(&config).create(ip, now);
        assert!(
            validator(&config).is_valid(id, ip, now),
            "same file, same key"
        );
        std::fs::write(&config.cluster.key_file, [8u8; 32]).expect("write");
        assert!(
            !validator(&config).is_valid(id, ip, now),
            "another key refuses it"
        );

        std::fs::remove_file(&config.cluster.key_file).expect("remove");
        let missing = connection_id_key(&config, None).expect_err("missing");
        assert!(
            format!("{missing:#}").contains("cluster.key_file"),
            "{missing:#}"
        );
        config.cluster.enabled = false;
        assert!(
            connection_id_key(&config, None).is_ok(),
            "no cluster: a random key"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn udp_replies_carry_df_without_pmtu_bookkeeping() {
        let config = Config::default();
        for address in ["127.0.0.1:0", "[::]:0"] {
            let socket = bind_udp(address.parse().expect("address"), &config).expect("bind");
            assert_eq!(mtu_discover(&socket), libc::IP_PMTUDISC_PROBE, "{address}");
        }
    }
}
