//! The HTTP(S) tracker of one executor (BEP 3, 23, 7, 48).
//!
//! Each executor accepts on its own SO_REUSEPORT listener and serves every
//! connection as a task: read, parse with `aquatic_http_protocol`, answer
//! in order (pipelined requests included), repeat while keep-alive lasts.
//! Announces and scrapes go through the router exactly as UDP's do, so
//! UDP and HTTP peers of a torrent share one swarm.
//!
//! Slow clients cannot hold a connection: a request must arrive whole
//! within `request_timeout_secs` of its own first byte (each pipelined
//! request has its own deadline), an idle connection
//! closes after `keep_alive_timeout_secs`, and writes time out too.

use std::{
    cell::RefCell,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    time::{Duration, Instant},
};

use aquatic_common::{ip_network::IpNetwork, InfoHash, SelectedPeers};
use aquatic_http_protocol::{
    parse_request, AnnounceRequest, AnnounceResponse, FailureResponse, ParseLimits, Parsed,
    Request, RequestError, Response, ScrapeResponse, ScrapeStatistics,
};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Listener;
use crate::{
    config::{HttpConfig, ValidConfig},
    metrics::{family, ExecutorStats, HTTP},
    reload::LocalCopy,
    router::{RouteError, Router},
    swarm::{AnnounceInput, SwarmKind},
    timing::within,
};

/// Bytes read per system call.
const READ_CHUNK: usize = 2048;

/// What the HTTP side reads from the configuration. A reload replaces it
/// whole: a connection takes its settings when it is accepted, and an
/// announce response the interval in force when it is written.
struct HttpSettings {
    config: HttpConfig,
    /// The socket peers whose `reverse_proxy_ip_header` is believed.
    trusted_proxies: Vec<IpNetwork>,
    announce_interval: u32,
    max_scrape_torrents: usize,
    /// Private mode: every request needs a member's passkey.
    private: bool,
}

impl HttpSettings {
    fn new(config: &ValidConfig) -> Self {
        Self {
            config: config.http.clone(),
            trusted_proxies: config.trusted_proxies().to_vec(),
            announce_interval: config.tracker.announce_interval_secs,
            max_scrape_torrents: config.tracker.max_scrape_torrents,
            private: config.private.enabled,
        }
    }
}

/// The HTTP side of one executor.
pub struct HttpEndpoint {
    listener: Listener,
    tls: Option<Rc<LocalCopy<rustls::ServerConfig>>>,
    settings: RefCell<Rc<HttpSettings>>,
    router: Rc<Router>,
    stats: Rc<ExecutorStats>,
}

impl HttpEndpoint {
    /// The endpoint around a listener bound by the main thread.
    pub fn new(
        listener: socket2::Socket,
        tls: Option<Rc<LocalCopy<rustls::ServerConfig>>>,
        config: &ValidConfig,
        router: Rc<Router>,
        stats: Rc<ExecutorStats>,
    ) -> Self {
        Self {
            listener: Listener::new(listener),
            tls,
            settings: RefCell::new(Rc::new(HttpSettings::new(config))),
            router,
            stats,
        }
    }

    /// The listener (to stop accepting).
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// Takes a reloaded configuration's runtime values (see
    /// `reload::RUNTIME_KEYS`) for the connections accepted from now on.
    pub fn apply_config(&self, config: &ValidConfig) {
        *self.settings.borrow_mut() = Rc::new(HttpSettings::new(config));
    }

    fn settings(&self) -> Rc<HttpSettings> {
        self.settings.borrow().clone()
    }
}

/// Accepts connections forever, one task each.
pub async fn run(endpoint: Rc<HttpEndpoint>) {
    let max = || endpoint.settings().config.max_connections_per_worker;
    let refused = || endpoint.stats.http_connections_refused.bump();
    endpoint
        .listener
        .accept_loop("http", max, refused, |stream, open| {
            let endpoint = endpoint.clone();
            let tls = endpoint.tls.as_ref().map(|t| t.get());
            async move {
                let _open = open;
                let Ok(peer) = stream.peer_addr() else { return };
                let handshake_timeout =
                    Duration::from_secs(endpoint.settings().config.request_timeout_secs);
                match tls {
                    None => serve(&endpoint, stream, peer).await,
                    Some(config) => {
                        let acceptor = futures_rustls::TlsAcceptor::from(config);
                        match within(handshake_timeout, acceptor.accept(stream)).await {
                            Some(Ok(tls_stream)) => serve(&endpoint, tls_stream, peer).await,
                            Some(Err(err)) => {
                                log::debug!("tls handshake with {peer} failed: {err}")
                            }
                            None => log::debug!("tls handshake with {peer} timed out"),
                        }
                    }
                }
            }
        })
        .await;
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    endpoint: &HttpEndpoint,
    mut stream: S,
    peer: SocketAddr,
) {
    let settings = endpoint.settings();
    let config = &settings.config;
    let stats = &endpoint.stats;
    let limits = ParseLimits {
        max_request_bytes: config.max_request_bytes,
        max_scrape_torrents: settings.max_scrape_torrents,
        ..ParseLimits::default()
    };
    let request_timeout = Duration::from_secs(config.request_timeout_secs);
    let idle_timeout = Duration::from_secs(config.keep_alive_timeout_secs);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut selected = SelectedPeers::default();
    let mut request_started: Option<Instant> = None;
    loop {
        #[cfg(feature = "test-hooks")]
        crate::hooks::http_request(&buf);
        let mut consumed = 0;
        let mut close = false;
        loop {
            match parse_request(&buf[consumed..], &limits) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Complete(parsed)) => {
                    stats.requests_by_family[HTTP][family(peer.ip())].bump();
                    consumed += parsed.consumed;
                    let keep_alive = parsed.keep_alive;
                    let client_ip = client_ip(config, &settings.trusted_proxies, &parsed, peer);
                    let request = parsed.request;
                    let mut reply = Reply {
                        out: &mut out,
                        keep_alive,
                    };
                    answer(endpoint, request, client_ip, &mut reply, &mut selected).await;
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Err(err) => {
                    stats.bad_requests[HTTP].bump();
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
        request_started = next_deadline_start(request_started, consumed, &buf, Instant::now());
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
                    stats.http_timeouts.bump();
                    log::debug!("http client {peer} too slow: disconnected");
                }
                return;
            }
        }
    }
}

/// When the request at the front of `buf` started, for its deadline, after
/// `consumed` bytes of complete requests were taken off the front.
///
/// Each request gets `request_timeout_secs` from its own first byte: once a
/// request is consumed, what remains is a later request, whose clock starts
/// now (its first bytes came in the read that completed the one before, and
/// the time spent answering that one is the server's, not the client's).
/// Keeping the first request's clock would cut off a client that pipelines
/// steadily, whose buffer is never empty.
fn next_deadline_start(
    started: Option<Instant>,
    consumed: usize,
    buf: &[u8],
    now: Instant,
) -> Option<Instant> {
    if buf.is_empty() {
        None
    } else if consumed > 0 {
        Some(now)
    } else {
        // Still the same incomplete request: its clock keeps running.
        started.or(Some(now))
    }
}

/// The client's address: the socket's peer, or the configured proxy header
/// when the peer is a trusted proxy (None: a trusted proxy sent no usable
/// header, which the client is told).
///
/// From any other peer the header is the client's own claim and is ignored:
/// a client that reaches the tracker directly gets its own address, not the
/// third party's it may have written there. It is not refused either, so a
/// tracker reachable both directly and through its proxy serves both.
fn client_ip(
    config: &HttpConfig,
    trusted_proxies: &[IpNetwork],
    parsed: &aquatic_http_protocol::ParsedRequest<'_>,
    peer: SocketAddr,
) -> Option<IpAddr> {
    let peer_ip = peer.ip().to_canonical();
    if config.reverse_proxy_ip_header.is_empty()
        || !trusted_proxies.iter().any(|n| n.contains(peer_ip))
    {
        return Some(peer_ip);
    }
    parsed
        .forwarded_ip_behind(
            &config.reverse_proxy_ip_header,
            config.reverse_proxy_trusted_hops,
        )
        .map(|ip| ip.to_canonical())
}

/// Where one response goes, and whether the connection stays open.
struct Reply<'a> {
    out: &'a mut Vec<u8>,
    keep_alive: bool,
}

impl Reply<'_> {
    fn failure(&mut self, reason: &str, status: u16) {
        let failure = Response::Failure(FailureResponse {
            failure_reason: reason,
        });
        let _ = failure.write_http(self.out, status, self.keep_alive);
    }

    fn response(&mut self, response: &Response<'_>) {
        let _ = response.write_http(self.out, 200, self.keep_alive);
    }
}

/// A refusal as the HTTP client sees it, counted.
fn refuse(endpoint: &HttpEndpoint, reply: &mut Reply<'_>, err: RouteError) {
    let status = match err {
        RouteError::Refused(refusal) => {
            endpoint.stats.refused(HTTP, refusal);
            // A refused info hash or member is an answer, not a
            // malformed request.
            if refusal.is_answer() {
                200
            } else {
                400
            }
        }
        RouteError::Busy | RouteError::NoReply => 503,
    };
    reply.failure(err.failure_reason(), status);
}

async fn answer(
    endpoint: &HttpEndpoint,
    request: Result<Request, RequestError>,
    client_ip: Option<IpAddr>,
    reply: &mut Reply<'_>,
    selected: &mut SelectedPeers,
) {
    let stats = &endpoint.stats;
    match request {
        Err(err) => {
            stats.bad_requests[HTTP].bump();
            reply.failure(err.failure_reason(), err.status());
        }
        Ok(Request::Announce(announce)) => {
            stats.http_announce.bump();
            let Some(ip) = client_ip else {
                stats.bad_requests[HTTP].bump();
                reply.failure("missing or invalid client address header", 400);
                return;
            };
            answer_announce(endpoint, &announce, ip, reply, selected).await;
        }
        Ok(Request::Scrape(scrape)) => {
            stats.http_scrape.bump();
            let hashes = &scrape.info_hashes;
            let kind = if endpoint.settings.borrow().private {
                if let Err(refusal) = endpoint.router.check_member(scrape.passkey.as_ref()) {
                    refuse(endpoint, reply, refusal.into());
                    return;
                }
                SwarmKind::Private
            } else {
                SwarmKind::Bt
            };
            match endpoint.router.scrape(kind, hashes).await {
                Ok(parts) => {
                    // A part whose shard did not answer in time is left
                    // out: the files dictionary holds what arrived.
                    let files: Vec<(InfoHash, ScrapeStatistics)> = hashes
                        .iter()
                        .zip(parts)
                        .filter_map(|(hash, s)| Some((*hash, s?.into())))
                        .collect();
                    reply.response(&Response::Scrape(ScrapeResponse { files: &files }));
                    stats.http_responses.bump();
                }
                Err(refusal) => refuse(endpoint, reply, refusal.into()),
            }
        }
    }
}

async fn answer_announce(
    endpoint: &HttpEndpoint,
    announce: &AnnounceRequest,
    ip: IpAddr,
    reply: &mut Reply<'_>,
    selected: &mut SelectedPeers,
) {
    let input = AnnounceInput::http(announce, ip, endpoint.settings.borrow().private);
    match endpoint.router.announce(input, selected).await {
        Ok(outcome) => {
            let response = Response::Announce(AnnounceResponse {
                interval: endpoint.settings.borrow().announce_interval,
                complete: outcome.seeders,
                incomplete: outcome.leechers,
                peers_v4: &selected.v4,
                peers_v6: &selected.v6,
                compact: announce.compact,
                no_peer_id: announce.no_peer_id,
                warning: None,
            });
            reply.response(&response);
            endpoint.stats.http_responses.bump();
        }
        Err(err) => refuse(endpoint, reply, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_has_its_own_deadline() {
        let first = Instant::now();
        let later = first + Duration::from_secs(5);
        // Nothing left: no request is running.
        assert_eq!(next_deadline_start(Some(first), 10, b"", later), None);
        // A request completed and the next one began: a fresh clock.
        assert_eq!(
            next_deadline_start(Some(first), 10, b"GET /an", later),
            Some(later)
        );
        // Nothing completed: the same request's clock keeps running.
        assert_eq!(
            next_deadline_start(Some(first), 0, b"GET /an", later),
            Some(first)
        );
        assert_eq!(next_deadline_start(None, 0, b"GET", later), Some(later));
    }
}
