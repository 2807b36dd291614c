//! The UDP tracker task of one executor (BEP 15).
//!
//! One wake-up of the task handles a whole batch: glommio's receive returns
//! the first datagram, a non-blocking `recvmmsg` drains the rest, every
//! request is answered synchronously (local shard inline, other shards over
//! the mesh), and the answers leave with one `sendmmsg`.
//!
//! Nothing here replies to an unverified source with more bytes than it
//! sent: connect responses are as long as connect requests and error
//! messages are cut to the request's length.

use std::{
    cell::RefCell,
    io::Cursor,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    rc::Rc,
};

use aquatic_common::{connection_id::ConnectionIdValidator, time::SecondsSinceStart};
use aquatic_udp_protocol::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, ConnectResponse, ConnectionId, ErrorResponse,
    Request, Response, ResponsePeer, ScrapeRequest, ScrapeResponse, TorrentScrapeStatistics,
    TransactionId,
};
use glommio::net::UdpSocket;

use super::udp_batch::DatagramBatch;
use crate::{
    config::Config,
    executor::{spawn, Executor},
    metrics::{family, UDP},
    routing::{ShardMessage, SwarmKind},
    swarm::{BtAnnounce, BtAnnounceOutcome, BtPeerOut, ScrapeStats},
};

/// Datagrams per recvmmsg / sendmmsg.
const BATCH: usize = 32;
/// Full batches handled before the task gives other tasks a turn.
const MAX_BATCHES_PER_WAKE: usize = 16;
/// Largest request accepted: a full scrape plus BEP 41 options fit easily.
const MAX_REQUEST: usize = 2048;

/// The UDP side of one executor: its socket and what it needs to answer.
pub(crate) struct UdpEndpoint {
    socket: UdpSocket,
    validator: ConnectionIdValidator,
    response_slot: usize,
    scratch: RefCell<Scratch>,
}

/// Buffers reused across requests so that answering allocates nothing.
#[derive(Default)]
struct Scratch {
    v4: Vec<BtPeerOut<Ipv4Addr>>,
    v6: Vec<BtPeerOut<Ipv6Addr>>,
    peers_v4: Vec<ResponsePeer<Ipv4Addr>>,
    peers_v6: Vec<ResponsePeer<Ipv6Addr>>,
    scrape_stats: Vec<TorrentScrapeStatistics>,
}

impl UdpEndpoint {
    pub(crate) fn new(
        socket: socket2::Socket,
        validator: ConnectionIdValidator,
        config: &Config,
    ) -> Self {
        let tracker = &config.tracker;
        // An IPv6 peer takes 18 bytes; a scraped torrent 12.
        let response_slot = (20 + 18 * tracker.max_numwant)
            .max(8 + 12 * tracker.max_scrape_torrents)
            .max(MAX_REQUEST);
        Self {
            socket: UdpSocket::from(socket),
            validator,
            response_slot,
            scratch: RefCell::default(),
        }
    }
}

/// Receives, answers and sends, batch by batch, forever.
pub(crate) async fn run(ex: Rc<Executor>, udp: Rc<UdpEndpoint>) {
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
        let mut now = ex.now();
        handle_datagram(&ex, &udp, now, &first[..n], src, &mut outgoing);
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
                    handle_datagram(&ex, &udp, now, bytes, src, &mut outgoing);
                }
            }
            if got < BATCH {
                break;
            }
            now = ex.now();
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
                        log::debug!("udp send to {dst} failed: {err}");
                    }
                }
                sent += 1;
            }
            Ok(n) => sent += n,
            Err(err) => {
                log::debug!("udp send failed: {err}");
                sent += 1;
            }
        }
    }
    batch.clear();
}

fn handle_datagram(
    ex: &Rc<Executor>,
    udp: &Rc<UdpEndpoint>,
    now: SecondsSinceStart,
    bytes: &[u8],
    src: SocketAddr,
    out: &mut DatagramBatch,
) {
    #[cfg(feature = "test-hooks")]
    if bytes == crate::executor::TEST_PANIC_TRIGGER {
        panic!("test hook: panic requested on executor {}", ex.id.0);
    }
    let ip = src.ip().to_canonical();
    let stats = &ex.stats;
    stats.requests_by_family[UDP][family(ip)].bump();
    match Request::parse(bytes, ex.config.tracker.max_scrape_torrents) {
        Ok(Request::Connect(req)) => {
            stats.udp_connect.bump();
            let id = udp.validator.create(ip, now);
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
                queue_error(
                    out,
                    src,
                    req.transaction_id,
                    "invalid connection id",
                    bytes.len(),
                );
                return;
            }
            if !ex.access_list_allows(&req.info_hash) {
                stats.access_denied[UDP].bump();
                queue_error(
                    out,
                    src,
                    req.transaction_id,
                    "info hash not allowed",
                    bytes.len(),
                );
                return;
            }
            announce(ex, udp, &req, ip, src, out);
        }
        Ok(Request::Scrape(req)) => {
            stats.udp_scrape.bump();
            if !connection_valid(udp, req.connection_id, ip, now) {
                stats.udp_invalid_connection_id.bump();
                queue_error(
                    out,
                    src,
                    req.transaction_id,
                    "invalid connection id",
                    bytes.len(),
                );
                return;
            }
            if !req.info_hashes.iter().all(|h| ex.access_list_allows(&h)) {
                stats.access_denied[UDP].bump();
                queue_error(
                    out,
                    src,
                    req.transaction_id,
                    "info hash not allowed",
                    bytes.len(),
                );
                return;
            }
            scrape(ex, udp, &req, src, out);
        }
        Err(err) => {
            stats.bad_requests[UDP].bump();
            log::trace!("bad udp request from {src}: {err}");
            // Only a datagram long enough to carry a transaction id gets a
            // reply, and then one no longer than itself.
            if let Some(tid) = err.transaction_id() {
                queue_error(out, src, tid, err.message(), bytes.len());
            }
        }
    }
}

fn connection_valid(
    udp: &UdpEndpoint,
    id: ConnectionId,
    ip: IpAddr,
    now: SecondsSinceStart,
) -> bool {
    udp.validator.is_valid(id.0.to_be_bytes(), ip, now)
}

fn to_bt_announce(ex: &Executor, req: &AnnounceRequest, ip: IpAddr) -> BtAnnounce {
    BtAnnounce {
        info_hash: req.info_hash,
        peer_id: req.peer_id,
        // The ip field of the request is ignored: honouring it would let
        // anyone point a swarm at a third party.
        ip,
        port: req.port,
        stopped: req.event == AnnounceEvent::Stopped,
        completed: req.event == AnnounceEvent::Completed,
        bytes_left: Some(req.bytes_left.max(0) as u64),
        numwant: ex
            .config
            .tracker
            .numwant(usize::try_from(req.peers_wanted).ok().filter(|&n| n > 0)),
    }
}

fn announce(
    ex: &Executor,
    udp: &UdpEndpoint,
    req: &AnnounceRequest,
    ip: IpAddr,
    src: SocketAddr,
    out: &mut DatagramBatch,
) {
    let request = to_bt_announce(ex, req, ip);
    let owner = ex.owner(&req.info_hash);
    if owner == ex.id {
        answer_announce(ex, udp, req.transaction_id, &request, |response| {
            queue(out, src, response, usize::MAX);
        });
    } else {
        ex.send_to_shard(
            owner,
            ShardMessage::UdpAnnounce {
                client: src,
                transaction_id: req.transaction_id.0,
                request,
            },
        );
    }
}

/// Runs an announce on this executor's shard and hands the response to `send`.
fn answer_announce(
    ex: &Executor,
    udp: &UdpEndpoint,
    transaction_id: TransactionId,
    request: &BtAnnounce,
    send: impl FnOnce(&Response<'_>),
) {
    let mut scratch = udp.scratch.borrow_mut();
    let Scratch {
        v4,
        v6,
        peers_v4,
        peers_v6,
        ..
    } = &mut *scratch;
    let outcome: BtAnnounceOutcome = ex.announce_local(request, v4, v6);
    let interval = ex.config.tracker.announce_interval_secs as i32;
    let leechers = outcome.leechers.min(i32::MAX as usize) as i32;
    let seeders = outcome.seeders.min(i32::MAX as usize) as i32;
    let response = match request.ip {
        IpAddr::V4(_) => {
            peers_v4.clear();
            peers_v4.extend(v4.iter().map(|p| ResponsePeer {
                ip_address: p.ip,
                port: p.port,
            }));
            Response::AnnounceIpv4(AnnounceResponse {
                transaction_id,
                announce_interval: interval,
                leechers,
                seeders,
                peers: peers_v4,
            })
        }
        IpAddr::V6(_) => {
            peers_v6.clear();
            peers_v6.extend(v6.iter().map(|p| ResponsePeer {
                ip_address: p.ip,
                port: p.port,
            }));
            Response::AnnounceIpv6(AnnounceResponse {
                transaction_id,
                announce_interval: interval,
                leechers,
                seeders,
                peers: peers_v6,
            })
        }
    };
    ex.stats.udp_responses.bump();
    send(&response);
}

/// Answers a UDP announce that another executor forwarded to this shard.
pub(crate) async fn answer_forwarded_announce(
    ex: &Executor,
    udp: &UdpEndpoint,
    client: SocketAddr,
    transaction_id: i32,
    request: &BtAnnounce,
) {
    let mut buf = Vec::new();
    answer_announce(
        ex,
        udp,
        TransactionId(transaction_id),
        request,
        |response| {
            buf = write_response(response, udp.response_slot, usize::MAX);
        },
    );
    send_one(udp, &buf, client).await;
}

fn to_wire(s: ScrapeStats) -> TorrentScrapeStatistics {
    TorrentScrapeStatistics {
        seeders: s.seeders.min(i32::MAX as usize) as i32,
        completed: s.completed.min(i32::MAX as u32) as i32,
        leechers: s.leechers.min(i32::MAX as usize) as i32,
    }
}

fn scrape(
    ex: &Rc<Executor>,
    udp: &Rc<UdpEndpoint>,
    req: &ScrapeRequest<'_>,
    src: SocketAddr,
    out: &mut DatagramBatch,
) {
    let transaction_id = req.transaction_id;
    if req.info_hashes.iter().all(|hash| ex.owner(&hash) == ex.id) {
        let mut scratch = udp.scratch.borrow_mut();
        let stats = &mut scratch.scrape_stats;
        stats.clear();
        {
            let shard = ex.shard.borrow();
            stats.extend(
                req.info_hashes
                    .iter()
                    .map(|hash| to_wire(shard.scrape(&hash))),
            );
        }
        let response = Response::Scrape(ScrapeResponse {
            transaction_id,
            torrent_stats: stats,
        });
        ex.stats.udp_responses.bump();
        queue(out, src, &response, usize::MAX);
        return;
    }
    // Hashes on other shards: a task gathers the parts and answers, so the
    // batch loop does not wait.
    let hashes: Vec<_> = req.info_hashes.iter().collect();
    let (ex, udp) = (ex.clone(), udp.clone());
    let queue = ex.requests_queue;
    spawn(queue, async move {
        let stats: Vec<_> = ex
            .scrape(SwarmKind::Bt, &hashes)
            .await
            .into_iter()
            .map(to_wire)
            .collect();
        let response = Response::Scrape(ScrapeResponse {
            transaction_id,
            torrent_stats: &stats,
        });
        let buf = write_response(&response, udp.response_slot, usize::MAX);
        ex.stats.udp_responses.bump();
        send_one(&udp, &buf, src).await;
    });
}

async fn send_one(udp: &UdpEndpoint, bytes: &[u8], dst: SocketAddr) {
    if bytes.is_empty() {
        return;
    }
    if let Err(err) = udp.socket.send_to(bytes, dst).await {
        log::debug!("udp send to {dst} failed: {err}");
    }
}

fn write_response(response: &Response<'_>, slot: usize, limit: usize) -> Vec<u8> {
    let mut buf = vec![0u8; slot];
    let n = write_into(response, &mut buf, limit).unwrap_or(0);
    buf.truncate(n);
    buf
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
