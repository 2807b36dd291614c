//! The UDP tracker task of one executor (BEP 15): bytes in, bytes out.
//!
//! One wake-up of the task handles a whole batch: glommio's receive returns
//! the first datagram, a non-blocking `recvmmsg` drains the rest, every
//! request goes to the router (answered inline when this executor owns the
//! torrent, forwarded to the owner otherwise, which answers from its own
//! socket), and the answers leave with one `sendmmsg`.
//!
//! Nothing here replies to an unverified source with more bytes than it
//! sent: connect responses are as long as connect requests and error
//! messages are cut to the request's length.
//!
//! Every reply fits `udp.max_datagram_bytes` (less 20 bytes for IPv6): the
//! sockets set DF, so the kernel refuses a datagram longer than the link
//! instead of fragmenting it. Announces ask the shard for no more peers
//! than fit; validation keeps full scrapes within the limit; a send the
//! kernel refuses anyway is counted by kind.

use std::{
    cell::{Cell, RefCell},
    io::{self, Cursor},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    rc::Rc,
};

use aquatic_common::{
    connection_id::ConnectionIdValidator, time::UnixSeconds, AnnounceOutcome, ScrapeStats,
    SelectedPeer, SelectedPeers,
};
use aquatic_udp_protocol::{
    AnnounceResponse, ConnectResponse, ConnectionId, ErrorResponse, Request, Response,
    ResponsePeer, ScrapeRequest, ScrapeResponse, TorrentScrapeStatistics, TransactionId,
};
use glommio::net::UdpSocket;

use super::{spawn_request_task, udp_batch::DatagramBatch};
use crate::{
    metrics::{family, ExecutorStats, UDP},
    router::{RouteError, Router, UdpAnswers},
    swarm::{AnnounceInput, SwarmKind},
};

/// Datagrams per recvmmsg / sendmmsg.
const BATCH: usize = 32;
/// Full batches handled before the task gives other tasks a turn.
const MAX_BATCHES_PER_WAKE: usize = 16;
/// Largest request accepted: a full scrape plus BEP 41 options fit easily.
const MAX_REQUEST: usize = 2048;
/// BEP 15 announce reply head: action, transaction id, interval, leechers, seeders.
const ANNOUNCE_HEAD: usize = 20;
/// Wire bytes of one IPv4 peer (address and port).
const PEER_V4: usize = 6;
/// Wire bytes of one IPv6 peer.
const PEER_V6: usize = 18;

/// The most peers of `peer_bytes` each an announce reply of at most
/// `reply_bytes` can carry.
fn peers_that_fit(reply_bytes: usize, peer_bytes: usize) -> usize {
    reply_bytes.saturating_sub(ANNOUNCE_HEAD) / peer_bytes
}

/// What a UDP endpoint needs from the configuration.
pub struct UdpSettings {
    /// Lifetime and key of connection ids.
    pub validator: ConnectionIdValidator,
    /// The interval told to clients (reloadable).
    pub announce_interval: Cell<u32>,
    /// Most hashes in one scrape (reloadable).
    pub max_scrape_torrents: Cell<usize>,
    /// Longest reply to an IPv4 client (`udp.max_datagram_bytes`).
    pub max_reply_bytes_v4: usize,
    /// Longest reply to an IPv6 client (20 bytes less).
    pub max_reply_bytes_v6: usize,
    /// Most cross-shard scrapes waiting for other executors at once
    /// (reloadable).
    pub max_scrapes_in_flight: Cell<usize>,
}

impl UdpSettings {
    /// The settings a configuration gives, with `validator`'s ids.
    pub fn new(config: &crate::config::Config, validator: ConnectionIdValidator) -> Self {
        Self {
            validator,
            announce_interval: Cell::new(config.tracker.announce_interval_secs),
            max_scrape_torrents: Cell::new(config.tracker.max_scrape_torrents),
            max_reply_bytes_v4: config.udp.max_reply_bytes(false),
            max_reply_bytes_v6: config.udp.max_reply_bytes(true),
            max_scrapes_in_flight: Cell::new(config.udp.max_scrapes_in_flight),
        }
    }

    /// Takes the reloadable values of a reloaded configuration (see
    /// `reload::RUNTIME_KEYS`); the datagram sizes stay.
    pub fn apply_config(&self, config: &crate::config::Config) {
        self.announce_interval
            .set(config.tracker.announce_interval_secs);
        self.max_scrape_torrents
            .set(config.tracker.max_scrape_torrents);
        self.max_scrapes_in_flight
            .set(config.udp.max_scrapes_in_flight);
    }
}

/// The UDP side of one executor: its socket and what it needs to answer.
pub struct UdpEndpoint {
    socket: UdpSocket,
    settings: UdpSettings,
    router: Rc<Router>,
    stats: Rc<ExecutorStats>,
    response_slot: usize,
    /// Peers that fit one announce reply, by client family (IPv4, IPv6).
    max_peers: [usize; 2],
    /// Cross-shard scrape tasks not yet finished.
    scrapes_in_flight: Cell<usize>,
    scratch: RefCell<Scratch>,
}

/// The wire forms of the shard's results, reused across requests so that
/// answering allocates nothing.
#[derive(Default)]
struct WireBuffers {
    peers_v4: Vec<ResponsePeer<Ipv4Addr>>,
    peers_v6: Vec<ResponsePeer<Ipv6Addr>>,
    scrape: Vec<TorrentScrapeStatistics>,
}

#[derive(Default)]
struct Scratch {
    selected: SelectedPeers,
    stats: Vec<ScrapeStats>,
    wire: WireBuffers,
}

impl UdpEndpoint {
    /// The endpoint around a socket bound by the main thread.
    pub fn new(
        socket: socket2::Socket,
        settings: UdpSettings,
        router: Rc<Router>,
        stats: Rc<ExecutorStats>,
    ) -> Self {
        // Announce replies are capped to the limit and validation keeps
        // full scrapes within it; error replies are no longer than requests.
        let response_slot = settings
            .max_reply_bytes_v4
            .max(settings.max_reply_bytes_v6)
            .max(MAX_REQUEST);
        let max_peers = [
            peers_that_fit(settings.max_reply_bytes_v4, PEER_V4),
            peers_that_fit(settings.max_reply_bytes_v6, PEER_V6),
        ];
        Self {
            socket: UdpSocket::from(socket),
            settings,
            router,
            stats,
            response_slot,
            max_peers,
            scrapes_in_flight: Cell::new(0),
            scratch: RefCell::default(),
        }
    }

    /// Datagrams the kernel dropped for this executor's socket so far
    /// (None where the kernel cannot say).
    pub fn kernel_drops(&self) -> Option<u64> {
        super::steering::kernel_drops(self.socket.as_raw_fd()).ok()
    }

    /// Takes a reloaded configuration's runtime values.
    pub fn apply_config(&self, config: &crate::config::Config) {
        self.settings.apply_config(config);
    }

    /// Where announces forwarded from other executors are answered: one per
    /// mesh-receiving task, with its own batch.
    pub fn forwarded_answers(self: &Rc<Self>) -> ForwardedAnswers {
        ForwardedAnswers {
            batch: DatagramBatch::new(BATCH, self.response_slot),
            wire: WireBuffers::default(),
            endpoint: self.clone(),
        }
    }
}

/// Answers to announces other executors forwarded here, queued for one
/// `sendmmsg`.
pub struct ForwardedAnswers {
    endpoint: Rc<UdpEndpoint>,
    batch: DatagramBatch,
    wire: WireBuffers,
}

impl ForwardedAnswers {
    /// No room for another answer.
    pub fn is_full(&self) -> bool {
        self.batch.is_full()
    }

    /// Sends what is queued.
    pub async fn flush(&mut self) {
        if self.batch.len() > 0 {
            flush(&self.endpoint, &mut self.batch).await;
        }
    }
}

impl UdpAnswers for ForwardedAnswers {
    fn answer_announce(
        &mut self,
        client: SocketAddr,
        transaction_id: TransactionId,
        outcome: &AnnounceOutcome,
        peers: &SelectedPeers,
    ) {
        let interval = self.endpoint.settings.announce_interval.get();
        queue_announce(
            &mut self.batch,
            &mut self.wire,
            client,
            transaction_id,
            interval,
            outcome,
            peers,
        );
        self.endpoint.stats.udp_responses.bump();
    }
}

/// Receives, answers and sends, batch by batch, forever.
pub async fn run(udp: Rc<UdpEndpoint>) {
    let fd = udp.socket.as_raw_fd();
    let mut incoming = DatagramBatch::new(BATCH, MAX_REQUEST);
    let mut outgoing = DatagramBatch::new(BATCH, udp.response_slot);
    let mut first = vec![0u8; MAX_REQUEST];
    loop {
        let (n, src) = match udp.socket.recv_from(&mut first).await {
            Ok(r) => r,
            Err(err) => {
                log::warn!("udp receive failed: {err}");
                continue;
            }
        };
        // Connection ids carry wall-clock time (valid across nodes and
        // restarts); the shards keep their own monotonic clock.
        let mut now = UnixSeconds::now();
        handle_datagram(&udp, now, &first[..n], src, &mut outgoing);
        // Bounded, so that a sustained flood of full batches cannot starve
        // this executor's other tasks (HTTP, WS, mesh, timers).
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let got = match incoming.receive_nonblocking(fd) {
                Ok(got) => got,
                Err(err) => {
                    log::warn!("udp recvmmsg failed: {err}");
                    0
                }
            };
            for i in 0..got {
                if outgoing.is_full() {
                    flush(&udp, &mut outgoing).await;
                }
                if let Some((bytes, src)) = incoming.get(i) {
                    handle_datagram(&udp, now, bytes, src, &mut outgoing);
                }
            }
            if got < BATCH {
                break;
            }
            now = UnixSeconds::now();
        }
        flush(&udp, &mut outgoing).await;
        glommio::yield_if_needed().await;
    }
}

/// Sends every queued response: one `sendmmsg` in the common case, glommio's
/// asynchronous send for what the kernel would not take at once.
async fn flush(udp: &UdpEndpoint, batch: &mut DatagramBatch) {
    let fd = udp.socket.as_raw_fd();
    let mut sent = 0;
    while sent < batch.len() {
        match batch.send_nonblocking(fd, sent) {
            Ok(0) => {
                // The send buffer is full: wait for room on this datagram.
                if let Some((bytes, dst)) = batch.get(sent) {
                    if let Err(err) = udp.socket.send_to(bytes, dst).await {
                        count_send_error(&udp.stats, &io::Error::from(err));
                    }
                }
                sent += 1;
            }
            Ok(n) => sent += n,
            Err(err) => {
                // The error is the first remaining datagram's: skip it.
                count_send_error(&udp.stats, &err);
                sent += 1;
            }
        }
    }
    batch.clear();
}

/// Counts a send the kernel refused, by kind. Not a warning per datagram:
/// a misconfigured limit would log one for every large reply.
fn count_send_error(stats: &ExecutorStats, err: &io::Error) {
    if err.raw_os_error() == Some(libc::EMSGSIZE) {
        // DF is set, so this is a reply longer than the link's MTU.
        stats.udp_send_too_large.bump();
    } else {
        stats.udp_send_failed.bump();
    }
    log::debug!("udp send failed: {err}");
}

fn handle_datagram(
    udp: &Rc<UdpEndpoint>,
    now: UnixSeconds,
    bytes: &[u8],
    src: SocketAddr,
    out: &mut DatagramBatch,
) {
    #[cfg(feature = "test-hooks")]
    if crate::hooks::udp_datagram(bytes, udp.router.id()) {
        let ack = crate::hooks::ACK;
        out.push(src, |buf| {
            buf.get_mut(..ack.len())?.copy_from_slice(ack);
            Some(ack.len())
        });
        return;
    }
    let ip = src.ip().to_canonical();
    let stats = &udp.stats;
    stats.requests_by_family[UDP][family(ip)].bump();
    let error = |out: &mut DatagramBatch, transaction_id, message: &str| {
        queue_error(out, src, transaction_id, message, bytes.len());
    };
    match Request::parse(bytes, udp.settings.max_scrape_torrents.get()) {
        Ok(Request::Connect(req)) => {
            stats.udp_connect.bump();
            let id = udp.settings.validator.create(ip, now);
            let response = Response::Connect(ConnectResponse {
                transaction_id: req.transaction_id,
                connection_id: ConnectionId(i64::from_be_bytes(id)),
            });
            queue(out, src, &response, usize::MAX);
        }
        Ok(Request::Announce(req)) => {
            stats.udp_announce.bump();
            if !connection_valid(udp, req.connection_id, ip, now) {
                stats.udp_invalid_connection_id.bump();
                return error(out, req.transaction_id, "invalid connection id");
            }
            let input = AnnounceInput::udp(&req, ip, udp.max_peers[family(ip)]);
            let mut scratch = udp.scratch.borrow_mut();
            let Scratch { selected, wire, .. } = &mut *scratch;
            match udp
                .router
                .announce_udp(input, src, req.transaction_id, selected)
            {
                Ok(Some(outcome)) => {
                    let interval = udp.settings.announce_interval.get();
                    let tid = req.transaction_id;
                    queue_announce(out, wire, src, tid, interval, &outcome, selected);
                    stats.udp_responses.bump();
                }
                // The owner answers from its own socket.
                Ok(None) => {}
                Err(err) => {
                    count_refusal(stats, err);
                    error(out, req.transaction_id, err.failure_reason());
                }
            }
        }
        Ok(Request::Scrape(req)) => {
            stats.udp_scrape.bump();
            if !connection_valid(udp, req.connection_id, ip, now) {
                stats.udp_invalid_connection_id.bump();
                return error(out, req.transaction_id, "invalid connection id");
            }
            match udp.router.check_scrape(req.info_hashes.iter()) {
                Ok(true) => {
                    stats.udp_scrape_local.bump();
                    scrape_here(udp, &req, src, out);
                }
                Ok(false) => {
                    stats.udp_scrape_forwarded.bump();
                    scrape_across_shards(udp, &req, src);
                }
                Err(refusal) => {
                    count_refusal(stats, RouteError::Refused(refusal));
                    error(out, req.transaction_id, refusal.failure_reason());
                }
            }
        }
        Err(err) => {
            stats.bad_requests[UDP].bump();
            log::trace!("bad udp request from {src}: {err}");
            // Only a datagram long enough to carry a transaction id gets a
            // reply, and then one no longer than itself.
            if let Some(tid) = err.transaction_id() {
                error(out, tid, err.message());
            }
        }
    }
}

fn count_refusal(stats: &ExecutorStats, err: RouteError) {
    // Busy and no-reply are counted by the router (mesh full, deadline).
    if let RouteError::Refused(refusal) = err {
        stats.refused(UDP, refusal);
    }
}

fn connection_valid(udp: &UdpEndpoint, id: ConnectionId, ip: IpAddr, now: UnixSeconds) -> bool {
    udp.settings.validator.is_valid(id.0.to_be_bytes(), ip, now)
}

/// Queues the announce response for the shard's answer: the one place the
/// shard's peers become UDP wire peers.
fn queue_announce(
    out: &mut DatagramBatch,
    wire: &mut WireBuffers,
    client: SocketAddr,
    transaction_id: TransactionId,
    interval: u32,
    outcome: &AnnounceOutcome,
    peers: &SelectedPeers,
) {
    let response = if client.ip().to_canonical().is_ipv4() {
        let peers = wire_peers(&mut wire.peers_v4, &peers.v4);
        Response::AnnounceIpv4(AnnounceResponse::new(
            transaction_id,
            interval,
            outcome,
            peers,
        ))
    } else {
        let peers = wire_peers(&mut wire.peers_v6, &peers.v6);
        Response::AnnounceIpv6(AnnounceResponse::new(
            transaction_id,
            interval,
            outcome,
            peers,
        ))
    };
    queue(out, client, &response, usize::MAX);
}

/// The shard's peers as BEP 15 wire peers, in a reused buffer.
fn wire_peers<'a, A: Copy>(
    buffer: &'a mut Vec<ResponsePeer<A>>,
    peers: &[SelectedPeer<A>],
) -> &'a [ResponsePeer<A>] {
    buffer.clear();
    buffer.extend(peers.iter().map(|&p| ResponsePeer::from(p)));
    buffer
}

fn scrape_here(
    udp: &UdpEndpoint,
    req: &ScrapeRequest<'_>,
    src: SocketAddr,
    out: &mut DatagramBatch,
) {
    let mut scratch = udp.scratch.borrow_mut();
    let Scratch { stats, wire, .. } = &mut *scratch;
    stats.clear();
    udp.router
        .scrape_here(SwarmKind::Bt, req.info_hashes.iter(), stats);
    wire.scrape.clear();
    wire.scrape
        .extend(stats.iter().map(|&s| TorrentScrapeStatistics::from(s)));
    let response = Response::Scrape(ScrapeResponse {
        transaction_id: req.transaction_id,
        torrent_stats: &wire.scrape,
    });
    udp.stats.udp_responses.bump();
    queue(out, src, &response, usize::MAX);
}

/// A cross-shard scrape task in flight, counted while it lives (however
/// its future ends).
struct ScrapeInFlight(Rc<UdpEndpoint>);

impl Drop for ScrapeInFlight {
    fn drop(&mut self) {
        let count = &self.0.scrapes_in_flight;
        count.set(count.get().saturating_sub(1));
    }
}

/// Hashes on other shards: a task gathers the parts and answers, so the
/// batch loop does not wait.
///
/// Each task waits up to the mesh deadline, so a flood of them (from
/// spoofed sources, which no per-client limit catches) is bounded per
/// executor: past `max_scrapes_in_flight`, the scrape is dropped without
/// a reply and counted.
fn scrape_across_shards(udp: &Rc<UdpEndpoint>, req: &ScrapeRequest<'_>, src: SocketAddr) {
    let in_flight = udp.scrapes_in_flight.get();
    if in_flight >= udp.settings.max_scrapes_in_flight.get() {
        udp.stats.udp_scrape_overload.bump();
        log::trace!("udp scrape from {src} dropped: {in_flight} scrapes in flight");
        return;
    }
    udp.scrapes_in_flight.set(in_flight + 1);
    let guard = ScrapeInFlight(udp.clone());
    let hashes: Vec<_> = req.info_hashes.iter().collect();
    let transaction_id = req.transaction_id;
    let request_len = 16 + 20 * hashes.len();
    spawn_request_task(async move {
        let udp = &guard.0;
        let parts = udp.router.scrape_checked(SwarmKind::Bt, &hashes).await;
        let mut batch = DatagramBatch::new(1, udp.response_slot);
        // A UDP scrape answers every hash by position: with a part
        // missing, a clear failure is more honest than zeros.
        match parts.into_iter().collect::<Option<Vec<_>>>() {
            Some(stats) => {
                let stats: Vec<_> = stats
                    .into_iter()
                    .map(TorrentScrapeStatistics::from)
                    .collect();
                let response = Response::Scrape(ScrapeResponse {
                    transaction_id,
                    torrent_stats: &stats,
                });
                queue(&mut batch, src, &response, usize::MAX);
                udp.stats.udp_responses.bump();
            }
            None => {
                let reason = RouteError::NoReply.failure_reason();
                queue_error(&mut batch, src, transaction_id, reason, request_len);
            }
        }
        flush(udp, &mut batch).await;
    });
}

fn write_into(response: &Response<'_>, buf: &mut [u8], limit: usize) -> Option<usize> {
    let mut cursor = Cursor::new(buf);
    response.write(&mut cursor).ok()?;
    Some((cursor.position() as usize).min(limit))
}

fn queue(out: &mut DatagramBatch, dst: SocketAddr, response: &Response<'_>, limit: usize) {
    out.push(dst, |buf| write_into(response, buf, limit));
}

/// Queues a BEP 15 error no longer than the request it answers.
fn queue_error(
    out: &mut DatagramBatch,
    dst: SocketAddr,
    transaction_id: TransactionId,
    message: &str,
    request_len: usize,
) {
    let room = request_len.saturating_sub(8);
    let mut cut = message.len().min(room);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let response = Response::Error(ErrorResponse {
        transaction_id,
        message: &message[..cut],
    });
    queue(out, dst, &response, request_len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_replies_of_the_capped_peers_fit() {
        // A 1500-byte MTU: 1472 bytes for IPv4, 1452 for IPv6.
        assert_eq!(peers_that_fit(1472, PEER_V4), 242);
        assert_eq!(peers_that_fit(1452, PEER_V6), 79);
        for (limit, peer) in [
            (1472, PEER_V4),
            (1452, PEER_V6),
            (576, PEER_V4),
            (65507, PEER_V6),
        ] {
            let n = peers_that_fit(limit, peer);
            assert!(ANNOUNCE_HEAD + n * peer <= limit);
            assert!(ANNOUNCE_HEAD + (n + 1) * peer > limit);
        }
    }
}
