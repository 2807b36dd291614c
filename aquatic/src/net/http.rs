//! The HTTP(S) tracker of one executor (BEP 3, 23, 7, 48).
//!
//! Each executor accepts on its own SO_REUSEPORT listener and serves every
//! connection as a task: read, parse with `aquatic_http_protocol`, answer
//! in order (pipelined requests included), repeat while keep-alive lasts.
//! Announces and scrapes go to the owning shard exactly as UDP's do, so
//! UDP and HTTP peers of a torrent share one swarm.
//!
//! Slow clients cannot hold a connection: a request must arrive whole
//! within `request_timeout_secs` of its first byte, an idle connection
//! closes after `keep_alive_timeout_secs`, and writes time out too.

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    rc::Rc,
    time::{Duration, Instant},
};

use aquatic_common::InfoHash;
use aquatic_http_protocol::{
    parse_request, AnnounceEvent, AnnounceRequest, AnnounceResponse, FailureResponse, ParseLimits,
    Parsed, Request, RequestError, Response, ResponsePeer, ScrapeResponse, ScrapeStatistics,
};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{accept_loop, within, Listener};
use crate::{
    config::HttpConfig,
    executor::{Executor, LocalCopy},
    metrics::{family, HTTP},
    routing::SwarmKind,
    swarm::{BtAnnounce, BtPeerOut},
};

/// Bytes read per system call.
const READ_CHUNK: usize = 2048;

/// The HTTP side of one executor.
pub(crate) struct HttpEndpoint {
    listener: Listener,
    tls: Option<Rc<LocalCopy<rustls::ServerConfig>>>,
}

impl HttpEndpoint {
    pub(crate) fn new(
        listener: socket2::Socket,
        tls: Option<Rc<LocalCopy<rustls::ServerConfig>>>,
    ) -> Self {
        Self {
            listener: Listener::new(listener),
            tls,
        }
    }
}

/// Accepts connections forever, one task each.
pub(crate) async fn run(ex: Rc<Executor>, endpoint: Rc<HttpEndpoint>) {
    let max = ex.config.http.max_connections_per_worker;
    let refused = |ex: &Executor| ex.stats.http_connections_refused.bump();
    accept_loop(
        &ex,
        &endpoint.listener,
        "http",
        max,
        refused,
        |stream, open| {
            let ex = ex.clone();
            let tls = endpoint.tls.as_ref().map(|t| t.get());
            async move {
                let _open = open;
                let Ok(peer) = stream.peer_addr() else { return };
                let handshake_timeout = Duration::from_secs(ex.config.http.request_timeout_secs);
                match tls {
                    None => serve(&ex, stream, peer).await,
                    Some(config) => {
                        let acceptor = futures_rustls::TlsAcceptor::from(config);
                        match within(handshake_timeout, acceptor.accept(stream)).await {
                            Some(Ok(tls_stream)) => serve(&ex, tls_stream, peer).await,
                            Some(Err(err)) => {
                                log::debug!("tls handshake with {peer} failed: {err}")
                            }
                            None => log::debug!("tls handshake with {peer} timed out"),
                        }
                    }
                }
            }
        },
    )
    .await;
}

/// Reusable per-connection buffers.
#[derive(Default)]
struct Scratch {
    v4: Vec<BtPeerOut<Ipv4Addr>>,
    v6: Vec<BtPeerOut<Ipv6Addr>>,
    peers_v4: Vec<ResponsePeer<Ipv4Addr>>,
    peers_v6: Vec<ResponsePeer<Ipv6Addr>>,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(ex: &Executor, mut stream: S, peer: SocketAddr) {
    let config = &ex.config.http;
    let limits = ParseLimits {
        max_request_bytes: config.max_request_bytes,
        max_scrape_torrents: ex.config.tracker.max_scrape_torrents,
        ..ParseLimits::default()
    };
    let request_timeout = Duration::from_secs(config.request_timeout_secs);
    let idle_timeout = Duration::from_secs(config.keep_alive_timeout_secs);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let scratch = RefCell::new(Scratch::default());
    let mut request_started: Option<Instant> = None;
    loop {
        #[cfg(feature = "test-hooks")]
        if buf.starts_with(b"GET /aquatic-test-hook/panic ") {
            panic!("test hook: panic requested in an http connection task");
        }
        let mut consumed = 0;
        let mut close = false;
        loop {
            match parse_request(&buf[consumed..], &limits) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Complete(parsed)) => {
                    ex.stats.requests_by_family[HTTP][family(peer.ip())].bump();
                    consumed += parsed.consumed;
                    let keep_alive = parsed.keep_alive;
                    let client_ip = client_ip(config, &parsed, peer);
                    let request = parsed.request;
                    answer(ex, request, client_ip, keep_alive, &mut out, &scratch).await;
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Err(err) => {
                    ex.stats.bad_requests[HTTP].bump();
                    let failure = Response::Failure(FailureResponse {
                        failure_reason: err.failure_reason(),
                    });
                    let _ = failure.write_http(&mut out, err.status(), false);
                    close = true;
                    break;
                }
            }
        }
        buf.drain(..consumed);
        request_started = if buf.is_empty() {
            None
        } else {
            request_started.or_else(|| Some(Instant::now()))
        };
        if !out.is_empty() {
            match within(request_timeout, stream.write_all(&out)).await {
                Some(Ok(())) => out.clear(),
                _ => return,
            }
            if within(request_timeout, stream.flush()).await.is_none() {
                return;
            }
        }
        if close {
            let _ = within(Duration::from_secs(1), stream.close()).await;
            return;
        }
        let limit = match request_started {
            None => idle_timeout,
            Some(started) => request_timeout.saturating_sub(started.elapsed()),
        };
        let filled = buf.len();
        buf.resize(filled + READ_CHUNK, 0);
        let read = within(limit, stream.read(&mut buf[filled..])).await;
        match read {
            Some(Ok(n)) if n > 0 => {
                buf.truncate(filled + n);
                request_started.get_or_insert_with(Instant::now);
            }
            Some(_) => return, // closed by the client, or an error
            None => {
                if request_started.is_some() {
                    ex.stats.http_timeouts.bump();
                    log::debug!("http client {peer} too slow: disconnected");
                }
                return;
            }
        }
    }
}

/// The client's address: the socket's peer, or the configured proxy header.
fn client_ip(
    config: &HttpConfig,
    parsed: &aquatic_http_protocol::ParsedRequest<'_>,
    peer: SocketAddr,
) -> Option<IpAddr> {
    if config.reverse_proxy_ip_header.is_empty() {
        return Some(peer.ip().to_canonical());
    }
    parsed
        .forwarded_ip_behind(
            &config.reverse_proxy_ip_header,
            config.reverse_proxy_trusted_hops,
        )
        .map(|ip| ip.to_canonical())
}

fn write_failure(out: &mut Vec<u8>, reason: &str, status: u16, keep_alive: bool) {
    let failure = Response::Failure(FailureResponse {
        failure_reason: reason,
    });
    let _ = failure.write_http(out, status, keep_alive);
}

async fn answer(
    ex: &Executor,
    request: Result<Request, RequestError>,
    client_ip: Option<IpAddr>,
    keep_alive: bool,
    out: &mut Vec<u8>,
    scratch: &RefCell<Scratch>,
) {
    match request {
        Err(err) => {
            ex.stats.bad_requests[HTTP].bump();
            write_failure(out, err.failure_reason(), err.status(), keep_alive);
        }
        Ok(Request::Announce(announce)) => {
            ex.stats.http_announce.bump();
            let Some(ip) = client_ip else {
                ex.stats.bad_requests[HTTP].bump();
                write_failure(
                    out,
                    "missing or invalid client address header",
                    400,
                    keep_alive,
                );
                return;
            };
            answer_announce(ex, &announce, ip, keep_alive, out, scratch).await;
        }
        Ok(Request::Scrape(scrape)) => {
            ex.stats.http_scrape.bump();
            if !scrape.info_hashes.iter().all(|h| ex.access_list_allows(h)) {
                ex.stats.access_denied[HTTP].bump();
                write_failure(out, "info hash not allowed", 200, keep_alive);
                return;
            }
            let stats = ex.scrape(SwarmKind::Bt, &scrape.info_hashes).await;
            let files: Vec<(InfoHash, ScrapeStatistics)> = scrape
                .info_hashes
                .iter()
                .zip(stats)
                .map(|(hash, s)| {
                    (
                        *hash,
                        ScrapeStatistics {
                            complete: s.seeders,
                            downloaded: s.completed as usize,
                            incomplete: s.leechers,
                        },
                    )
                })
                .collect();
            let response = Response::Scrape(ScrapeResponse { files: &files });
            let _ = response.write_http(out, 200, keep_alive);
            ex.stats.http_responses.bump();
        }
    }
}

async fn answer_announce(
    ex: &Executor,
    announce: &AnnounceRequest,
    ip: IpAddr,
    keep_alive: bool,
    out: &mut Vec<u8>,
    scratch: &RefCell<Scratch>,
) {
    if !ex.access_list_allows(&announce.info_hash) {
        ex.stats.access_denied[HTTP].bump();
        write_failure(out, "info hash not allowed", 200, keep_alive);
        return;
    }
    if announce.port == 0 {
        ex.stats.bad_requests[HTTP].bump();
        write_failure(out, "invalid port", 400, keep_alive);
        return;
    }
    let request = BtAnnounce {
        info_hash: announce.info_hash,
        peer_id: announce.peer_id,
        ip,
        port: announce.port,
        stopped: announce.event == AnnounceEvent::Stopped,
        completed: announce.event == AnnounceEvent::Completed,
        bytes_left: announce.bytes_left,
        numwant: ex.config.tracker.numwant(announce.numwant),
    };
    // The scratch vectors leave the RefCell for the await and come back after.
    let (mut v4, mut v6) = {
        let mut s = scratch.borrow_mut();
        (std::mem::take(&mut s.v4), std::mem::take(&mut s.v6))
    };
    let outcome = ex.announce(request, &mut v4, &mut v6).await;
    let mut s = scratch.borrow_mut();
    let Some(outcome) = outcome else {
        write_failure(out, "tracker busy, try again", 503, keep_alive);
        return;
    };
    let Scratch {
        peers_v4, peers_v6, ..
    } = &mut *s;
    peers_v4.clear();
    peers_v4.extend(v4.iter().map(|p| ResponsePeer {
        peer_id: p.peer_id,
        ip_address: p.ip,
        port: p.port,
    }));
    peers_v6.clear();
    peers_v6.extend(v6.iter().map(|p| ResponsePeer {
        peer_id: p.peer_id,
        ip_address: p.ip,
        port: p.port,
    }));
    let response = Response::Announce(AnnounceResponse {
        interval: ex.config.tracker.announce_interval_secs,
        complete: outcome.seeders,
        incomplete: outcome.leechers,
        peers_v4,
        peers_v6,
        compact: announce.compact,
        no_peer_id: announce.no_peer_id,
        warning: None,
    });
    let _ = response.write_http(out, 200, keep_alive);
    ex.stats.http_responses.bump();
    s.v4 = v4;
    s.v6 = v6;
}
