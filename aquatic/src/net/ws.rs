//! The WebTorrent tracker of one executor (WebSocket, optionally TLS).
//!
//! Each connection is a task that waits on three things at once: the next
//! client frame, the connection's outgoing queue, and its idle timer.
//! Offers and answers for this connection may come from any shard; they
//! are put in the queue (bounded: a slow client loses messages, it never
//! blocks a shard), and putting one there wakes the task at once.
//!
//! The task remembers every torrent its peer announced in. However the
//! connection ends (close frame, error, timeout, executor stop), a guard
//! tells each owning shard, and the peer leaves those swarms.

use std::{
    cell::Cell,
    rc::Rc,
    time::{Duration, Instant},
};

use aquatic_common::{InfoHash, PeerId};
use aquatic_ws_protocol::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, AnswerMessage, ErrorResponse, InMessage,
    OfferMessage, OutMessage, ScrapeRequest, ScrapeResponse, ScrapeStatistics,
};
use async_tungstenite::{
    tungstenite::{self, protocol::WebSocketConfig, Message},
    WebSocketStream,
};
use futures_lite::{AsyncRead, AsyncWrite, StreamExt};
use glommio::{
    channels::local_channel::{self, LocalReceiver},
    timer::sleep,
};
use hashbrown::HashSet;

use super::{accept_loop, within, Listener, OpenConnection};
use crate::{
    executor::{Executor, LocalCopy},
    metrics::{family, WS},
    routing::SwarmKind,
    swarm::{ConnectionRef, WsAnnounce, WsAnswer, WsOutgoing},
};

/// Bytes read from a connection at a time.
const READ_BUFFER: usize = 4096;
/// Time to write one message to a client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket side of one executor.
pub(crate) struct WsEndpoint {
    listener: Listener,
    tls: Option<Rc<LocalCopy<rustls::ServerConfig>>>,
    next_connection: Cell<u64>,
}

impl WsEndpoint {
    pub(crate) fn new(
        listener: socket2::Socket,
        tls: Option<Rc<LocalCopy<rustls::ServerConfig>>>,
    ) -> Self {
        Self {
            listener: Listener::new(listener),
            tls,
            next_connection: Cell::new(0),
        }
    }
}

/// Accepts connections forever, one task each.
pub(crate) async fn run(ex: Rc<Executor>, endpoint: Rc<WsEndpoint>) {
    let max = ex.config.ws.max_connections_per_worker;
    let refused = |ex: &Executor| ex.stats.ws_connections_refused.bump();
    accept_loop(
        &ex,
        &endpoint.listener,
        "ws",
        max,
        refused,
        |stream, open| {
            ex.stats.ws_connections_opened.bump();
            let id = endpoint.next_connection.get();
            endpoint.next_connection.set(id.wrapping_add(1));
            let connection = ConnectionRef {
                executor: ex.id,
                connection: id,
            };
            let tls = endpoint.tls.as_ref().map(|t| t.get());
            let ex = ex.clone();
            let ip_family = stream.peer_addr().map_or(0, |a| family(a.ip()));
            async move {
                let config = &ex.config.ws;
                let handshake_timeout = Duration::from_secs(config.handshake_timeout_secs);
                // tungstenite's default 128 KiB read buffer per connection
                // would dominate memory; tracker messages are small.
                let ws_config = WebSocketConfig::default()
                    .read_buffer_size(READ_BUFFER)
                    .write_buffer_size(0)
                    .max_message_size(Some(config.max_message_bytes))
                    .max_frame_size(Some(config.max_frame_bytes));
                match tls {
                    None => {
                        let handshake =
                            async_tungstenite::accept_async_with_config(stream, Some(ws_config));
                        if let Some(Ok(ws)) = within(handshake_timeout, handshake).await {
                            serve(&ex, ws, connection, ip_family, open).await;
                        }
                    }
                    Some(tls) => {
                        let handshake = async {
                            let stream = futures_rustls::TlsAcceptor::from(tls)
                                .accept(stream)
                                .await
                                .map_err(tungstenite::Error::Io)?;
                            async_tungstenite::accept_async_with_config(stream, Some(ws_config))
                                .await
                        };
                        if let Some(Ok(ws)) = within(handshake_timeout, handshake).await {
                            serve(&ex, ws, connection, ip_family, open).await;
                        }
                    }
                }
            }
        },
    )
    .await;
}

/// Everything a connection's peers are, so they can leave when it closes.
struct Registration<'a> {
    ex: &'a Executor,
    connection: ConnectionRef,
    announced: HashSet<(InfoHash, PeerId)>,
    _open: OpenConnection,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.ex.ws_open.set(self.ex.ws_open.get().saturating_sub(1));
        self.ex
            .ws_connections
            .borrow_mut()
            .remove(&self.connection.connection);
        let peers: Vec<_> = self.announced.drain().collect();
        if !peers.is_empty() {
            self.ex.ws_closed(self.connection, peers);
        }
    }
}

enum Event {
    Incoming(Option<Result<Message, tungstenite::Error>>),
    Outgoing(Option<WsOutgoing>),
    Tick,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ex: &Executor,
    mut ws: WebSocketStream<S>,
    connection: ConnectionRef,
    ip_family: usize,
    open: OpenConnection,
) {
    let (sender, queue): (_, LocalReceiver<WsOutgoing>) =
        local_channel::new_bounded(ex.config.ws.outgoing_queue);
    ex.ws_connections
        .borrow_mut()
        .insert(connection.connection, sender);
    ex.ws_open.set(ex.ws_open.get() + 1);
    let mut registration = Registration {
        ex,
        connection,
        announced: HashSet::new(),
        _open: open,
    };
    let idle = Duration::from_secs(ex.config.ws.idle_timeout_secs);
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let mut out = Vec::with_capacity(512);
    loop {
        let tick_in = if pinged {
            (last_heard + 2 * idle).saturating_duration_since(Instant::now())
        } else {
            (last_heard + idle).saturating_duration_since(Instant::now())
        };
        // race, not or: a client that floods us must not starve its own
        // outgoing queue.
        let event = futures_lite::future::race(
            async { Event::Incoming(ws.next().await) },
            futures_lite::future::race(async { Event::Outgoing(queue.recv().await) }, async {
                sleep(tick_in).await;
                Event::Tick
            }),
        )
        .await;
        let reply = match event {
            Event::Incoming(Some(Ok(message))) => {
                last_heard = Instant::now();
                pinged = false;
                match message {
                    Message::Text(text) => {
                        ex.stats.requests_by_family[WS][ip_family].bump();
                        #[cfg(feature = "test-hooks")]
                        if text.as_bytes() == crate::executor::TEST_PANIC_TRIGGER {
                            panic!("test hook: panic requested in a ws connection task");
                        }
                        // Lets tests place connections on different executors.
                        #[cfg(feature = "test-hooks")]
                        if text.as_bytes() == b"aquatic-test-hook:executor" {
                            out.clear();
                            out.extend(format!("{{\"test_hook_executor\":{}}}", ex.id.0).bytes());
                            let _ = send(
                                &mut ws,
                                Message::Text(String::from_utf8_lossy(&out).into_owned().into()),
                            )
                            .await;
                            out.clear();
                            continue;
                        }
                        handle_text(ex, &mut registration, &text, &mut out).await
                    }
                    Message::Binary(_) => {
                        ex.stats.bad_requests[WS].bump();
                        write_error(&mut out, "binary messages are not supported", None, None)
                    }
                    Message::Close(_) => break,
                    // tungstenite answers pings itself; pongs only prove life.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => false,
                }
            }
            Event::Incoming(Some(Err(err))) => {
                log::debug!("ws connection {}: {err}", connection.connection);
                if matches!(err, tungstenite::Error::Capacity(_)) {
                    ex.stats.bad_requests[WS].bump();
                }
                break;
            }
            Event::Incoming(None) => break,
            Event::Outgoing(Some(message)) => {
                write_outgoing(&message, ex.config.ws.announce_interval_secs, &mut out)
            }
            Event::Outgoing(None) => break,
            Event::Tick => {
                if last_heard.elapsed() >= 2 * idle {
                    log::debug!("ws connection {} idle: closed", connection.connection);
                    break;
                }
                if !pinged && last_heard.elapsed() >= idle {
                    pinged = true;
                    if !send(&mut ws, Message::Ping(Vec::new().into())).await {
                        break;
                    }
                }
                false
            }
        };
        if reply {
            let bytes = std::mem::replace(&mut out, Vec::with_capacity(512));
            // serde_json writes UTF-8; the fallback never runs.
            let text = String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            ex.stats.ws_messages_out.bump();
            if !send(&mut ws, Message::Text(text.into())).await {
                break;
            }
        }
    }
    let close = tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "".into(),
    };
    let _ = within(Duration::from_secs(1), ws.close(Some(close))).await;
    // `registration` drops here: the peers leave their swarms.
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    message: Message,
) -> bool {
    matches!(within(WRITE_TIMEOUT, ws.send(message)).await, Some(Ok(())))
}

/// Handles one client message; true if `out` holds a reply to send.
async fn handle_text(
    ex: &Executor,
    registration: &mut Registration<'_>,
    text: &str,
    out: &mut Vec<u8>,
) -> bool {
    match InMessage::parse_text(text) {
        Ok(InMessage::Announce(request)) => {
            ex.stats.ws_announce.bump();
            announce(ex, registration, request, out)
        }
        Ok(InMessage::Scrape(request)) => {
            ex.stats.ws_scrape.bump();
            scrape(ex, request, out).await
        }
        Err(err) => {
            ex.stats.bad_requests[WS].bump();
            write_error(out, err.failure_reason(), None, None)
        }
    }
}

fn announce(
    ex: &Executor,
    registration: &mut Registration<'_>,
    request: AnnounceRequest,
    out: &mut Vec<u8>,
) -> bool {
    let info_hash = request.info_hash;
    if !ex.access_list_allows(&info_hash) {
        ex.stats.access_denied[WS].bump();
        return write_error(
            out,
            "info hash not allowed",
            Some("announce"),
            Some(info_hash),
        );
    }
    let stopped = request.event == AnnounceEvent::Stopped;
    let announced = &mut registration.announced;
    // The JavaScript client shares one socket among all its torrents and
    // clients, so one connection may hold several peers, even in one torrent.
    let key = (info_hash, request.peer_id);
    if stopped {
        announced.remove(&key);
    } else if announced.len() >= ex.config.ws.max_peers_per_connection && !announced.contains(&key)
    {
        ex.stats.bad_requests[WS].bump();
        return write_error(
            out,
            "too many torrents on one connection",
            Some("announce"),
            Some(info_hash),
        );
    } else if request.answer.is_none() {
        announced.insert(key);
    }
    let max_offers = ex.config.ws.max_offers;
    let numwant = request.numwant.unwrap_or(max_offers).min(max_offers);
    let answer = match (request.answer, request.to_peer_id, request.offer_id) {
        (Some(answer), Some(to_peer_id), Some(offer_id)) => Some(WsAnswer {
            to_peer_id,
            offer_id,
            answer,
        }),
        _ => None,
    };
    let offers = request
        .offers
        .unwrap_or_default()
        .into_iter()
        .take(numwant)
        .map(|o| (o.offer_id, o.offer))
        .collect();
    ex.ws_announce(WsAnnounce {
        info_hash,
        peer_id: request.peer_id,
        connection: registration.connection,
        stopped,
        completed: request.event == AnnounceEvent::Completed,
        bytes_left: request.bytes_left,
        offers,
        numwant,
        answer,
    });
    // The response comes back through the queue, from the owning shard.
    false
}

async fn scrape(ex: &Executor, request: ScrapeRequest, out: &mut Vec<u8>) -> bool {
    let hashes = request.info_hashes;
    if hashes.is_empty() {
        return write_error(out, "full scrapes are not supported", Some("scrape"), None);
    }
    if hashes.len() > ex.config.tracker.max_scrape_torrents {
        ex.stats.bad_requests[WS].bump();
        return write_error(out, "too many info hashes", Some("scrape"), None);
    }
    if !hashes.iter().all(|h| ex.access_list_allows(h)) {
        ex.stats.access_denied[WS].bump();
        return write_error(out, "info hash not allowed", Some("scrape"), None);
    }
    let stats = ex.scrape(SwarmKind::Ws, &hashes).await;
    let files: Vec<_> = hashes
        .iter()
        .zip(stats)
        .map(|(hash, s)| {
            (
                *hash,
                ScrapeStatistics {
                    complete: s.seeders,
                    incomplete: s.leechers,
                    downloaded: s.completed as usize,
                },
            )
        })
        .collect();
    write(
        out,
        &OutMessage::ScrapeResponse(ScrapeResponse { files: &files }),
    )
}

fn write_outgoing(message: &WsOutgoing, announce_interval: u32, out: &mut Vec<u8>) -> bool {
    let message = match message {
        WsOutgoing::AnnounceResponse {
            info_hash,
            complete,
            incomplete,
        } => OutMessage::AnnounceResponse(AnnounceResponse {
            info_hash: *info_hash,
            complete: *complete,
            incomplete: *incomplete,
            announce_interval,
        }),
        WsOutgoing::Offer {
            info_hash,
            peer_id,
            offer_id,
            offer,
        } => OutMessage::Offer(OfferMessage {
            info_hash: *info_hash,
            peer_id: *peer_id,
            offer_id: *offer_id,
            offer,
        }),
        WsOutgoing::Answer {
            info_hash,
            peer_id,
            offer_id,
            answer,
        } => OutMessage::Answer(AnswerMessage {
            info_hash: *info_hash,
            peer_id: *peer_id,
            offer_id: *offer_id,
            answer,
        }),
    };
    write(out, &message)
}

fn write(out: &mut Vec<u8>, message: &OutMessage<'_>) -> bool {
    out.clear();
    match message.write(out) {
        Ok(()) => true,
        Err(err) => {
            log::error!("cannot serialize a ws message: {err}");
            false
        }
    }
}

fn write_error(
    out: &mut Vec<u8>,
    reason: &str,
    action: Option<&'static str>,
    info_hash: Option<InfoHash>,
) -> bool {
    write(
        out,
        &OutMessage::Error(ErrorResponse {
            failure_reason: reason,
            action,
            info_hash,
        }),
    )
}
