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
//!
//! Memory of an idle connection. A tracker holds many more connections
//! than messages in flight, so what a connection keeps between messages
//! is kept small, and the rest lives only while it is needed:
//!
//! - the task's own future only holds boxes: the handshake (about 10 KiB
//!   of state over TLS) is boxed and freed when it completes, and the
//!   connection's loop is boxed at the size of its own transport, so a
//!   plain connection does not pay for the TLS variant; inside the loop,
//!   handling a message and sending a reply are boxed futures, allocated
//!   per message, so the loop's state is only what waiting needs;
//! - the reply buffer is allocated when a reply is written and handed to
//!   the socket with it;
//! - the outgoing queue starts empty and grows on demand (bounded by
//!   `ws.outgoing_queue`, enforced by the router);
//! - tungstenite's read buffer starts at [`READ_BUFFER`] bytes and grows
//!   only for a larger message;
//! - over TLS, rustls' connection is boxed and its record buffers exist
//!   only while a record is in flight (see [`super::ws_tls`]): an idle WSS
//!   connection pays for its keys, not for a 4 KiB receive buffer.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    time::{Duration, Instant},
};

use aquatic_common::InfoHash;
use aquatic_ws_protocol::{
    ErrorResponse, InMessage, OutMessage, OwnedOutMessage, ScrapeRequest, ScrapeResponse,
};
use async_tungstenite::{
    tungstenite::{self, protocol::WebSocketConfig, Message},
    WebSocketStream,
};
use futures_lite::{AsyncRead, AsyncWrite, StreamExt};
use glommio::{channels::local_channel::LocalReceiver, timer::sleep};

use super::{Listener, OpenConnection};
use crate::{
    config::WsConfig,
    metrics::{family, ExecutorStats, WS},
    reload::LocalCopy,
    router::Router,
    swarm::{ConnectionPeers, ConnectionRef, Refusal, SwarmKind},
    timing::within,
};

/// Bytes tungstenite reads from a connection at a time (and the read
/// buffer an idle connection keeps): an announce without offers is a few
/// hundred bytes; longer messages take a few reads.
const READ_BUFFER: usize = 1024;
/// Time to write one message to a client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket side of one executor.
pub struct WsEndpoint {
    listener: Listener,
    tls: Option<Rc<LocalCopy<rustls::ServerConfig>>>,
    /// Replaced whole on reload; a connection takes it when accepted.
    config: RefCell<Rc<WsConfig>>,
    router: Rc<Router>,
    stats: Rc<ExecutorStats>,
    next_connection: Cell<u64>,
}

impl WsEndpoint {
    /// The endpoint around a listener bound by the main thread.
    pub fn new(
        listener: socket2::Socket,
        tls: Option<Rc<LocalCopy<rustls::ServerConfig>>>,
        config: &crate::config::Config,
        router: Rc<Router>,
        stats: Rc<ExecutorStats>,
    ) -> Self {
        Self {
            listener: Listener::new(listener),
            tls,
            config: RefCell::new(Rc::new(config.ws.clone())),
            router,
            stats,
            next_connection: Cell::new(0),
        }
    }

    /// The listener (to stop accepting, and to count open connections).
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// Takes a reloaded configuration's runtime values (see
    /// `reload::RUNTIME_KEYS`) for the connections accepted from now on.
    pub fn apply_config(&self, config: &crate::config::Config) {
        *self.config.borrow_mut() = Rc::new(config.ws.clone());
    }

    fn config(&self) -> Rc<WsConfig> {
        self.config.borrow().clone()
    }
}

/// Accepts connections forever, one task each.
pub async fn run(endpoint: Rc<WsEndpoint>) {
    let max = || endpoint.config().max_connections_per_worker;
    let refused = || endpoint.stats.ws_connections_refused.bump();
    endpoint
        .listener
        .accept_loop("ws", max, refused, |stream, open| {
            endpoint.stats.ws_connections_opened.bump();
            let id = endpoint.next_connection.get();
            endpoint.next_connection.set(id.wrapping_add(1));
            let connection = ConnectionRef {
                node: endpoint.router.node(),
                executor: endpoint.router.id(),
                connection: id,
            };
            let tls = endpoint.tls.as_ref().map(|t| t.get());
            let endpoint = endpoint.clone();
            let ip_family = stream.peer_addr().map_or(0, |a| family(a.ip()));
            async move {
                let config = endpoint.config();
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
                        let handshake = within(handshake_timeout, Box::pin(handshake)).await;
                        if let Some(Ok(ws)) = handshake {
                            Box::pin(serve(&endpoint, ws, connection, ip_family, open)).await;
                        }
                    }
                    Some(tls) => {
                        let handshake = async {
                            let stream = super::ws_tls::accept(stream, tls)
                                .await
                                .map_err(tungstenite::Error::Io)?;
                            async_tungstenite::accept_async_with_config(stream, Some(ws_config))
                                .await
                        };
                        let handshake = within(handshake_timeout, Box::pin(handshake)).await;
                        if let Some(Ok(ws)) = handshake {
                            Box::pin(serve(&endpoint, ws, connection, ip_family, open)).await;
                        }
                    }
                }
            }
        })
        .await;
}

/// Everything a connection's peers are, so they can leave when it closes.
struct Registration<'a> {
    router: &'a Router,
    connection: ConnectionRef,
    peers: ConnectionPeers,
    _open: OpenConnection,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.router.ws_unregister(self.connection.connection);
        let peers = self.peers.take();
        if !peers.is_empty() {
            self.router.ws_closed(self.connection, peers);
        }
    }
}

enum Event {
    Incoming(Option<Result<Message, tungstenite::Error>>),
    Outgoing(Option<OwnedOutMessage>),
    Tick,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    endpoint: &WsEndpoint,
    mut ws: WebSocketStream<S>,
    connection: ConnectionRef,
    ip_family: usize,
    open: OpenConnection,
) {
    let config = endpoint.config();
    let router = &*endpoint.router;
    let stats = &endpoint.stats;
    let queue: LocalReceiver<OwnedOutMessage> =
        router.ws_register(connection.connection, config.outgoing_queue);
    let mut registration = Registration {
        router,
        connection,
        peers: ConnectionPeers::default(),
        _open: open,
    };
    let idle = Duration::from_secs(config.idle_timeout_secs);
    let mut last_heard = Instant::now();
    let mut pinged = false;
    // Allocated by `write` when there is a reply, and handed to the socket.
    let mut out = Vec::new();
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
                        stats.requests_by_family[WS][ip_family].bump();
                        #[cfg(feature = "test-hooks")]
                        if let Some(answer) = crate::hooks::ws_text(&text, router.id()) {
                            let _ = Box::pin(send(&mut ws, Message::Text(answer.into()))).await;
                            continue;
                        }
                        Box::pin(handle_text(endpoint, &mut registration, &text, &mut out)).await
                    }
                    Message::Binary(_) => {
                        stats.bad_requests[WS].bump();
                        write(
                            &mut out,
                            &OutMessage::Error(ErrorResponse {
                                failure_reason: "binary messages are not supported",
                                action: None,
                                info_hash: None,
                            }),
                        )
                    }
                    Message::Close(_) => break,
                    // tungstenite answers pings itself; pongs only prove life.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => false,
                }
            }
            Event::Incoming(Some(Err(err))) => {
                log::debug!("ws connection {}: {err}", connection.connection);
                if matches!(err, tungstenite::Error::Capacity(_)) {
                    stats.bad_requests[WS].bump();
                }
                break;
            }
            Event::Incoming(None) => break,
            Event::Outgoing(Some(message)) => write(&mut out, &message.as_out_message()),
            Event::Outgoing(None) => break,
            Event::Tick => {
                if last_heard.elapsed() >= 2 * idle {
                    log::debug!("ws connection {} idle: closed", connection.connection);
                    break;
                }
                if !pinged && last_heard.elapsed() >= idle {
                    pinged = true;
                    if !Box::pin(send(&mut ws, Message::Ping(Vec::new().into()))).await {
                        break;
                    }
                }
                false
            }
        };
        if reply {
            let bytes = std::mem::take(&mut out);
            // serde_json writes UTF-8; the fallback never runs.
            let text = String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            stats.ws_messages_out.bump();
            if !Box::pin(send(&mut ws, Message::Text(text.into()))).await {
                break;
            }
        }
    }
    let close = tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "".into(),
    };
    let _ = within(Duration::from_secs(1), Box::pin(ws.close(Some(close)))).await;
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
    endpoint: &WsEndpoint,
    registration: &mut Registration<'_>,
    text: &str,
    out: &mut Vec<u8>,
) -> bool {
    let stats = &endpoint.stats;
    match InMessage::parse_text(text) {
        Ok(InMessage::Announce(request)) => {
            stats.ws_announce.bump();
            let info_hash = request.info_hash;
            let connection = registration.connection;
            let peers = &mut registration.peers;
            match endpoint.router.ws_announce(request, connection, peers) {
                // The response comes back through the queue, from the
                // owning shard.
                Ok(()) => false,
                Err(refusal) => {
                    count_refusal(stats, refusal);
                    write_error(out, refusal, Some("announce"), Some(info_hash))
                }
            }
        }
        Ok(InMessage::Scrape(request)) => {
            stats.ws_scrape.bump();
            scrape(endpoint, request, out).await
        }
        Err(err) => {
            stats.bad_requests[WS].bump();
            write(
                out,
                &OutMessage::Error(ErrorResponse {
                    failure_reason: err.failure_reason(),
                    action: None,
                    info_hash: None,
                }),
            )
        }
    }
}

fn count_refusal(stats: &ExecutorStats, refusal: Refusal) {
    stats.refused(WS, refusal);
}

async fn scrape(endpoint: &WsEndpoint, request: ScrapeRequest, out: &mut Vec<u8>) -> bool {
    let hashes = request.info_hashes;
    match endpoint.router.scrape(SwarmKind::Ws, &hashes).await {
        Ok(parts) => {
            // What arrived; a shard that did not answer in time is left out.
            let files: Vec<_> = hashes
                .iter()
                .zip(parts)
                .filter_map(|(hash, s)| Some((*hash, s?.into())))
                .collect();
            write(
                out,
                &OutMessage::ScrapeResponse(ScrapeResponse { files: &files }),
            )
        }
        Err(refusal) => {
            count_refusal(&endpoint.stats, refusal);
            write_error(out, refusal, Some("scrape"), None)
        }
    }
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
    refusal: Refusal,
    action: Option<&'static str>,
    info_hash: Option<InfoHash>,
) -> bool {
    write(
        out,
        &OutMessage::Error(ErrorResponse {
            failure_reason: refusal.failure_reason(),
            action,
            info_hash,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns (a future, here) without calling it.
    fn returned_size<'a, A: 'a, B, C, D, E, R>(_: impl FnOnce(&'a A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle connection's task holds `serve`'s state for its whole life:
    /// it must stay small (it was 33 KiB when the handshake lived in it).
    /// The bounds leave room for compiler changes, not for a buffer.
    #[test]
    fn an_idle_connection_task_is_small() {
        type Tls = super::super::ws_tls::TlsStream<glommio::net::TcpStream>;
        let plain = returned_size(serve::<glommio::net::TcpStream>);
        let tls = returned_size(serve::<Tls>);
        assert!(plain <= 3 * 1024, "plain serve future: {plain} bytes");
        // The TLS stream is the socket plus a box and three empty buffers
        // (see `ws_tls`); rustls' connection is not inline.
        assert!(
            tls <= plain + 512,
            "TLS serve future: {tls} bytes, plain {plain} bytes"
        );
    }
}
