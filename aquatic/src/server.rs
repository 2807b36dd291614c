//! The process: sockets, executor threads, signals and the panic policy.
//!
//! ```text
//! main thread: config -> panic hook -> RLIMIT_MEMLOCK -> access list
//!              -> bind N SO_REUSEPORT sockets per protocol (port 0 resolved once)
//!              -> N threads, each a glommio LocalExecutor pinned to a core
//!              -> wait for all ready -> print the listening addresses
//!              -> signals: SIGUSR1 reload, SIGTERM/SIGINT stop (a second one: exit now)
//! ```
//!
//! A panic on any thread logs the message and ends the whole process with
//! status 101, so that systemd restarts it: a tracker with a dead shard is
//! worse than a restarted one.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use aquatic_common::{
    access_list::AccessList,
    connection_id::ConnectionIdValidator,
    time::{ServerStartInstant, UnixSeconds},
};
use glommio::{
    channels::channel_mesh::MeshBuilder, LocalExecutorBuilder, Placement, PoolPlacement,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    config::{Config, ValidConfig},
    executor::{self, ExecutorSetup, ExecutorSockets, Shared},
    metrics::MetricsHub,
    notify::{monotonic_usec, notify},
    reload::Reloadable,
    snapshot::{self, RestoredShards, StateDir, TorrentRecord},
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
) -> anyhow::Result<rustls::ServerConfig> {
    aquatic_common::tls::load_server_config(certificate, key, HTTP_ALPN)
        .with_context(|| format!("cannot load the {protocol} certificate and key"))
}

fn load_http_tls(config: &Config) -> anyhow::Result<rustls::ServerConfig> {
    let http = &config.http;
    load_tls(
        "HTTPS",
        &http.tls_certificate_path,
        &http.tls_private_key_path,
    )
}

fn load_ws_tls(config: &Config) -> anyhow::Result<rustls::ServerConfig> {
    let ws = &config.ws;
    load_tls("WSS", &ws.tls_certificate_path, &ws.tls_private_key_path)
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

/// Runs the tracker until SIGTERM or SIGINT.
pub fn run(config: ValidConfig) -> anyhow::Result<()> {
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
    let mut listening = Vec::new();
    if config.udp.enabled {
        let (address, sockets) = bind_all(config.udp.address, Type::DGRAM, workers, |a| {
            bind_udp(a, &config)
        })?;
        listening.push(format!("udp://{address}"));
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

    let metrics = Arc::new(MetricsHub::new(workers));
    if config.metrics.enabled {
        let listener = std::net::TcpListener::bind(config.metrics.address).with_context(|| {
            format!("cannot bind the metrics address {}", config.metrics.address)
        })?;
        listening.push(format!("metrics://{}", listener.local_addr()?));
        let hub = metrics.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || crate::metrics::serve(listener, hub))
            .context("cannot start the metrics thread")?;
    }

    drop_privileges(&config.privileges)?;

    let (events, event_rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
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
    let key = snapshot::connection_id_key(state.as_deref())?;
    let start = ServerStartInstant::new();
    let restored = Arc::new(RestoredShards::new(restore(
        state.as_deref(),
        workers,
        &config,
    )));
    let shared = Shared {
        config: config.clone(),
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
        state,
    };
    let shutdown = shared.shutdown.clone();
    let mesh = MeshBuilder::full(workers, config.runtime.mesh_channel_size);
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
            shards: workers,
            mesh: mesh.clone(),
            sockets: ExecutorSockets { udp, http, ws },
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
        std::thread::Builder::new()
            .name(format!("aquatic-{i}"))
            .spawn(move || {
                match builder.make() {
                    Ok(executor) => executor.run(executor::run(setup)),
                    Err(err) => {
                        let _ = events.send(Event::StartFailed(i, err.to_string()));
                        return;
                    }
                }
                let _ = events.send(Event::Exited(i));
            })
            .context("cannot start an executor thread")?;
    }
    drop(events);

    wait_until_ready(&event_rx, workers, &config)?;
    for address in &listening {
        println!("aquatic: listening on {address}");
    }
    println!("aquatic: ready with {workers} workers");
    notify("READY=1");
    log::info!("serving {} with {workers} workers", listening.join(", "));

    let reloadables = Reloadables {
        access_list,
        http_tls,
        ws_tls,
    };
    serve_until_stopped(&event_rx, workers, &config, &reloadables, &shutdown)
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
fn restore(state: Option<&StateDir>, workers: usize, config: &Config) -> Vec<Vec<TorrentRecord>> {
    let Some(state) = state else {
        return Vec::new();
    };
    let began = Instant::now();
    let restored = state.restore(workers, UnixSeconds::now(), config.tracker.peer_timeout());
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

fn wait_until_ready(
    events: &mpsc::Receiver<Event>,
    workers: usize,
    config: &Config,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut ready = 0;
    while ready < workers {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Ready(_)) => ready += 1,
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
    Ok(())
}

fn serve_until_stopped(
    events: &mpsc::Receiver<Event>,
    workers: usize,
    config: &Config,
    reloadables: &Reloadables,
    shutdown: &AtomicBool,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    loop {
        match events.recv() {
            Ok(Event::Signal(SIGUSR1)) => {
                notify(&format!("RELOADING=1\n{}", monotonic_usec()));
                reload(config, reloadables);
                notify("READY=1");
            }
            Ok(Event::Signal(signal @ (SIGTERM | SIGINT))) => {
                log::info!("signal {signal}: stopping");
                notify("STOPPING=1");
                shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            Ok(Event::Exited(i)) => bail!("executor {i} stopped unexpectedly"),
            Ok(other) => log::debug!("ignored event {other:?}"),
            Err(_) => bail!("every executor is gone"),
        }
    }
    let stop_timeout = config.snapshot.stop_timeout();
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
    Ok(())
}

/// What SIGUSR1 reloads.
struct Reloadables {
    access_list: Arc<Reloadable<AccessList>>,
    http_tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    ws_tls: Option<Arc<Reloadable<rustls::ServerConfig>>>,
}

fn reload(config: &Config, reloadables: &Reloadables) {
    match AccessList::load(config.access_list.mode, &config.access_list.path) {
        Ok(list) => {
            log::info!("access list reloaded: {} info hashes", list.len());
            reloadables.access_list.replace(list);
        }
        Err(err) => log::error!("access list reload failed, keeping the old list: {err}"),
    }
    reload_tls("HTTPS", &reloadables.http_tls, || load_http_tls(config));
    reload_tls("WSS", &reloadables.ws_tls, || load_ws_tls(config));
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
    fn udp_replies_carry_df_without_pmtu_bookkeeping() {
        let config = Config::default();
        for address in ["127.0.0.1:0", "[::]:0"] {
            let socket = bind_udp(address.parse().expect("address"), &config).expect("bind");
            assert_eq!(mtu_discover(&socket), libc::IP_PMTUDISC_PROBE, "{address}");
        }
    }
}
