//! The links of a cluster node: one TLS connection per pair of members,
//! run by one executor ([`LINK_EXECUTOR`](crate::router::LINK_EXECUTOR)), carrying batched frames both
//! ways, with heartbeats that keep the live set.
//!
//! ```text
//!   executor i ──mesh──> LINK_EXECUTOR: LinkQueues[member] ──writer──> TLS ──> member
//!   member ──> TLS ──reader──> Router::handle_frame (answers to the waiting executor)
//!   every frame read: Liveness::heard; a timer: Liveness::expire -> live set to every router
//! ```
//!
//! The member with the smaller name dials, the other accepts, so each pair
//! has exactly one link and neither side races the other. Both sides check
//! the other's certificate names the member it is (see `cluster::tls`); a
//! failure is logged, counted and the connection closed. A dialler that
//! loses its link dials again with a backoff from 100 ms to 5 s.
//!
//! The member list is re-read on SIGHUP (`Members::reloaded`): the liveness
//! tick takes a new list, makes room for the members added (queues,
//! generations) and starts dialling those this node dials; a member
//! removed leaves the live set at once, its dialler stops, its link closes
//! (both halves check on their next wake-up) and its connections are
//! refused like a non-member's.

use std::{
    cell::RefCell,
    net::SocketAddr,
    os::fd::{FromRawFd, IntoRawFd},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::{
    net::{TcpListener, TcpStream},
    timer::sleep,
};

use crate::{
    cluster::{
        frame::{Frame, FrameReader, FrameWriter},
        members::{LiveSet, Liveness, Members, NodeId},
        queue::{bump, LinkQueues},
        tls::{agreed_version, server_name, LinkTls},
    },
    net::udp::{ForwardedAnswers, UdpEndpoint},
    reload::{LocalCopy, Reloadable},
    router::{Router, UdpAnswers},
    timing::within,
};

/// Time for TCP connect, TLS and the hello frames.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most frames in one write.
const BATCH_FRAMES: usize = 512;
/// Dial backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the live set is recomputed.
const LIVENESS_TICK: Duration = Duration::from_millis(100);

/// What the links need from the main thread.
pub struct LinkSetup {
    /// The member list, replaced on SIGHUP.
    pub members: Arc<Reloadable<Members>>,
    /// Certificates, replaced on SIGUSR1; each new link takes the current ones.
    pub tls: Arc<Reloadable<LinkTls>>,
    /// The bound link listener.
    pub listener: std::net::TcpListener,
    /// `cluster.failure_timeout_secs`.
    pub failure_timeout: Duration,
    /// Where the live set is published for every executor.
    pub live: Arc<Reloadable<LiveSet>>,
}

struct Links {
    members: RefCell<Rc<Members>>,
    tls: Arc<Reloadable<LinkTls>>,
    queues: Rc<LinkQueues>,
    router: Rc<Router>,
    udp: Option<Rc<UdpEndpoint>>,
    liveness: RefCell<Liveness>,
    live: Arc<Reloadable<LiveSet>>,
    /// Each member's current link; a newer one retires an older one.
    generation: RefCell<Vec<u64>>,
    /// The members a dialler runs for (one each).
    dialling: RefCell<std::collections::HashSet<NodeId>>,
    started: Instant,
    heartbeat: Duration,
}

/// Runs every link of this node, forever.
pub async fn run(
    setup: LinkSetup,
    router: Rc<Router>,
    queues: Rc<LinkQueues>,
    udp: Option<Rc<UdpEndpoint>>,
) {
    let members_copy = LocalCopy::new(setup.members.clone());
    let members = Rc::new((*members_copy.get()).clone());
    let links = Rc::new(Links {
        liveness: RefCell::new(Liveness::new(&members, setup.failure_timeout)),
        generation: RefCell::new(vec![0; members.len()]),
        dialling: RefCell::default(),
        members: RefCell::new(members),
        tls: setup.tls,
        queues,
        router,
        udp,
        live: setup.live,
        started: Instant::now(),
        // Four heartbeats per timeout: one lost or late is no failure.
        heartbeat: (setup.failure_timeout / 4).max(Duration::from_millis(100)),
    });
    // SAFETY: a bound, listening TCP socket the main thread handed over.
    let listener = unsafe { TcpListener::from_raw_fd(setup.listener.into_raw_fd()) };
    glommio::spawn_local(accept(links.clone(), listener)).detach();
    links.start_diallers();
    loop {
        sleep(LIVENESS_TICK).await;
        if let Some(members) = members_copy.refresh() {
            links.take_members(Rc::new((*members).clone()));
        }
        let now = links.now();
        let me = links.members().me();
        let left = links.liveness.borrow_mut().expire(me, now);
        for node in &left {
            log::warn!(
                "cluster member {} silent for {:?}: its torrents move to their next owner",
                links.members().name(*node),
                links.heartbeat * 4
            );
            links.queues.clear(*node);
        }
        if !left.is_empty() {
            links.publish();
        }
    }
}

impl Links {
    fn members(&self) -> Rc<Members> {
        self.members.borrow().clone()
    }

    fn generation(&self, node: NodeId) -> u64 {
        self.generation.borrow().get(node.0).copied().unwrap_or(0)
    }

    /// Starts a dialler for every member this node dials that has none.
    fn start_diallers(self: &Rc<Self>) {
        let members = self.members();
        for node in members.others() {
            if members.dials(node) && self.dialling.borrow_mut().insert(node) {
                glommio::spawn_local(dial(self.clone(), node)).detach();
            }
        }
    }

    /// Takes a reloaded member list: room for the members added, the ones
    /// removed out of the live set (their links close on their next
    /// wake-up: `serve` checks), diallers for the added ones.
    fn take_members(self: &Rc<Self>, members: Rc<Members>) {
        let before = self.members();
        self.queues.grow(members.len());
        {
            let mut generation = self.generation.borrow_mut();
            if generation.len() < members.len() {
                generation.resize(members.len(), 0);
            }
        }
        // The routers here know the new list before anything can join.
        self.router.set_members(members.clone());
        *self.members.borrow_mut() = members.clone();
        let mut left = false;
        for node in before.others().filter(|n| members.is_removed(*n)) {
            log::info!(
                "cluster member {} removed from the member list: its links close, its torrents move to their next owner",
                members.name(node)
            );
            self.queues.clear(node);
            left |= self.liveness.borrow_mut().forget(node);
        }
        if left {
            self.publish();
        }
        self.start_diallers();
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn publish(&self) {
        let live = self.liveness.borrow().live().clone();
        self.router.set_live(live.clone());
        self.live.replace(live);
    }

    fn heard(&self, node: NodeId) {
        if self.members().is_removed(node) {
            return;
        }
        let joined = self.liveness.borrow_mut().heard(node, self.now());
        if joined {
            log::info!("cluster member {} is live", self.members().name(node));
            self.publish();
        }
    }

    fn refused(&self, node: Option<NodeId>, peer: SocketAddr, why: &str) {
        log::warn!("cluster link from {peer} refused: {why}");
        if let Some(stats) = node.and_then(|n| self.queues.stats(n)) {
            bump(&stats.refused);
        }
        self.router.stats().cluster_links_refused.bump();
    }
}

/// Reads frames until one arrives or the stream ends.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    reader: &mut FrameReader,
    buf: &mut [u8],
) -> Option<Frame> {
    loop {
        match reader.next_frame() {
            Ok(Some(frame)) => return Some(frame),
            Ok(None) => {}
            Err(err) => {
                log::warn!("cluster link: {err}");
                return None;
            }
        }
        let n = stream.read(buf).await.ok()?;
        if n == 0 {
            return None;
        }
        reader.feed(&buf[..n]);
    }
}

async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: u16,
    frame: &Frame,
) -> Option<()> {
    let mut writer = FrameWriter::default();
    writer.push_version(version, frame).then_some(())?;
    stream.write_all(writer.bytes()).await.ok()?;
    stream.flush().await.ok()
}

async fn accept(links: Rc<Links>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("cluster link accept failed: {err}");
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let links = links.clone();
        glommio::spawn_local(async move {
            let Ok(peer) = stream.peer_addr() else { return };
            let _ = stream.set_nodelay(true);
            let tls_now = links.tls.current().1;
            let acceptor = futures_rustls::TlsAcceptor::from(tls_now.server.clone());
            let handshake = async {
                let mut tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(err) => return Err((None, format!("TLS handshake failed: {err}"))),
                };
                let version = agreed_version(tls.get_ref().1.alpn_protocol());
                let mut reader = FrameReader::up_to(version);
                let mut buf = vec![0u8; 16 << 10];
                let Some(Frame::Hello { name }) = read_frame(&mut tls, &mut reader, &mut buf).await
                else {
                    return Err((None, "no hello frame".to_owned()));
                };
                let members = links.members();
                let Some(node) = members.by_name(&name) else {
                    return Err((None, format!("{name:?} is not a member")));
                };
                let certificates = tls.get_ref().1.peer_certificates().unwrap_or_default();
                if !tls_now.certifies(certificates, &name) {
                    return Err((
                        Some(node),
                        format!("its certificate does not name {name:?}"),
                    ));
                }
                if node == members.me() || members.dials(node) {
                    return Err((Some(node), format!("{name:?} should not dial this node")));
                }
                let hello = Frame::Hello {
                    name: members.name(members.me()).to_owned(),
                };
                write_frame(&mut tls, version, &hello)
                    .await
                    .ok_or((Some(node), "hello not sent".to_owned()))?;
                Ok((node, tls, reader, version))
            };
            match within(HANDSHAKE_TIMEOUT, handshake).await {
                Some(Ok((node, tls, reader, version))) => {
                    serve(&links, node, tls, reader, version).await
                }
                Some(Err((node, why))) => links.refused(node, peer, &why),
                None => links.refused(None, peer, "handshake timed out"),
            }
        })
        .detach();
    }
}

async fn dial(links: Rc<Links>, node: NodeId) {
    let mut backoff = BACKOFF_MIN;
    let name = links.members().name(node).to_owned();
    loop {
        if links.members().is_removed(node) {
            // A reload removed it; a later one that lists it again starts
            // a new dialler.
            links.dialling.borrow_mut().remove(&node);
            return;
        }
        let connected = async {
            // The address as listed now: a reload may have moved it.
            let address = links.members().address(node)?;
            let stream = TcpStream::connect(address).await.ok()?;
            let _ = stream.set_nodelay(true);
            let client = links.tls.current().1.client.clone();
            let connector = futures_rustls::TlsConnector::from(client);
            let mut tls = match connector.connect(server_name(&name)?, stream).await {
                Ok(tls) => tls,
                Err(err) => {
                    log::warn!("cluster link to {name} at {address} refused: {err}");
                    links.router.stats().cluster_links_refused.bump();
                    return None;
                }
            };
            let members = links.members();
            let hello = Frame::Hello {
                name: members.name(members.me()).to_owned(),
            };
            let version = agreed_version(tls.get_ref().1.alpn_protocol());
            write_frame(&mut tls, version, &hello).await?;
            let mut reader = FrameReader::up_to(version);
            let mut buf = vec![0u8; 16 << 10];
            match read_frame(&mut tls, &mut reader, &mut buf).await? {
                Frame::Hello { name: theirs } if theirs == name => Some((tls, reader, version)),
                _ => None,
            }
        };
        match within(HANDSHAKE_TIMEOUT, connected).await.flatten() {
            Some((tls, reader, version)) => {
                backoff = BACKOFF_MIN;
                serve(&links, node, tls, reader, version).await;
            }
            None => {
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Runs one authenticated link, speaking frame `version` both ways, until
/// it breaks or a newer one replaces it.
async fn serve<S>(links: &Rc<Links>, node: NodeId, stream: S, mut reader: FrameReader, version: u16)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let generation = links.generation(node) + 1;
    if let Some(slot) = links.generation.borrow_mut().get_mut(node.0) {
        *slot = generation;
    }
    reader.limit_to(version);
    // Before the member can rejoin: what it is sent depends on it.
    links.queues.set_version(node, version);
    // Ends when a newer link replaces it or a reload removes the member.
    let current = || links.generation(node) == generation && !links.members().is_removed(node);
    if let Some(stats) = links.queues.stats(node) {
        if stats.links.get() > 0 {
            bump(&stats.reconnects);
        }
        bump(&stats.links);
    }
    log::info!(
        "cluster link to {} up (frame version {version})",
        links.members().name(node)
    );
    links.heard(node);
    // A link that was replaced still holds the waker until it notices.
    let mut woken = None;
    for _ in 0..50 {
        woken = links.queues.take_waker(node);
        if woken.is_some() {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let Some(woken) = woken else { return };
    let (mut read_half, mut write_half) = futures_lite::io::split(stream);
    let writer = async {
        let mut batch = Vec::with_capacity(BATCH_FRAMES);
        let mut writer = FrameWriter::default();
        let mut next_heartbeat = Instant::now();
        loop {
            if !current() {
                return;
            }
            if Instant::now() >= next_heartbeat {
                let sent_micros = links.started.elapsed().as_micros() as u64;
                links
                    .queues
                    .push_must_arrive(node, Frame::Heartbeat { sent_micros });
                next_heartbeat = Instant::now() + links.heartbeat;
            }
            #[cfg(feature = "test-hooks")]
            if crate::hooks::links_stalled() {
                sleep(Duration::from_millis(10)).await;
                continue;
            }
            links.queues.take(node, BATCH_FRAMES, &mut batch);
            if batch.is_empty() {
                let wait = next_heartbeat.saturating_duration_since(Instant::now());
                let _ = within(wait, woken.recv()).await;
                continue;
            }
            for frame in batch.drain(..) {
                if !writer.push_version(version, &frame) {
                    if let Some(stats) = links.queues.stats(node) {
                        bump(&stats.dropped);
                    }
                }
            }
            if write_half.write_all(writer.bytes()).await.is_err()
                || write_half.flush().await.is_err()
            {
                return;
            }
            if let Some(stats) = links.queues.stats(node) {
                stats
                    .frames_out
                    .set(stats.frames_out.get() + writer.frames() as u64);
                stats
                    .bytes_out
                    .set(stats.bytes_out.get() + writer.bytes().len() as u64);
            }
            writer.clear();
        }
    };
    let reading = async {
        let mut buf = vec![0u8; 64 << 10];
        let mut answers: Option<ForwardedAnswers> =
            links.udp.as_ref().map(|udp| udp.forwarded_answers());
        loop {
            loop {
                let frame = match reader.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(err) => {
                        log::warn!("cluster link from {}: {err}", links.members().name(node));
                        return;
                    }
                };
                links.heard(node);
                if let Some(stats) = links.queues.stats(node) {
                    bump(&stats.frames_in);
                }
                match frame {
                    Frame::Heartbeat { sent_micros } => {
                        links
                            .queues
                            .push_must_arrive(node, Frame::HeartbeatAck { sent_micros });
                    }
                    Frame::HeartbeatAck { sent_micros } => {
                        let now = links.started.elapsed().as_micros() as u64;
                        if let Some(stats) = links.queues.stats(node) {
                            stats
                                .heartbeat_rtt_micros
                                .set(now.saturating_sub(sent_micros));
                        }
                    }
                    Frame::Hello { .. } => {}
                    other => links.router.handle_frame(
                        node,
                        other,
                        answers.as_mut().map(|a| a as &mut dyn UdpAnswers),
                    ),
                }
                if let Some(answers) = &mut answers {
                    if answers.is_full() {
                        answers.flush().await;
                    }
                }
            }
            if let Some(answers) = &mut answers {
                answers.flush().await;
            }
            if !current() {
                return;
            }
            // Wakes now and then to notice a newer link.
            let n = match within(links.heartbeat, read_half.read(&mut buf)).await {
                Some(Ok(0)) | Some(Err(_)) => return,
                Some(Ok(n)) => n,
                None => continue,
            };
            if let Some(stats) = links.queues.stats(node) {
                stats.bytes_in.set(stats.bytes_in.get() + n as u64);
            }
            reader.feed(&buf[..n]);
        }
    };
    futures_lite::future::or(writer, reading).await;
    links.queues.return_waker(node, woken);
    log::info!("cluster link to {} down", links.members().name(node));
}
