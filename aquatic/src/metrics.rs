//! Per-executor counters.
//!
//! Each executor counts into its own plain cells: no atomics, no sharing on
//! the request path. Readers (the periodic log line, the metrics endpoint)
//! collect the figures from every executor.

use std::cell::Cell;

/// A counter owned by one executor.
#[derive(Default, Debug)]
pub struct Counter(Cell<u64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn bump(&self) {
        self.0.set(self.0.get().wrapping_add(1));
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// What one executor has seen.
#[derive(Default, Debug)]
pub struct ExecutorStats {
    /// UDP connect requests.
    pub udp_connect: Counter,
    /// UDP announce requests.
    pub udp_announce: Counter,
    /// UDP scrape requests.
    pub udp_scrape: Counter,
    /// UDP announce and scrape responses sent.
    pub udp_responses: Counter,
    /// UDP requests with a connection id we did not issue or that expired.
    pub udp_invalid_connection_id: Counter,
    /// HTTP announce requests.
    pub http_announce: Counter,
    /// HTTP scrape requests.
    pub http_scrape: Counter,
    /// HTTP announce and scrape responses.
    pub http_responses: Counter,
    /// HTTP connections closed at once because the executor had too many.
    pub http_connections_refused: Counter,
    /// HTTP clients disconnected for sending a request too slowly.
    pub http_timeouts: Counter,
    /// WebSocket announce messages (offers and answers included).
    pub ws_announce: Counter,
    /// WebSocket scrape messages.
    pub ws_scrape: Counter,
    /// WebSocket messages sent.
    pub ws_messages_out: Counter,
    /// WebSocket connections accepted.
    pub ws_connections_opened: Counter,
    /// WebSocket connections closed at once because the executor had too many.
    pub ws_connections_refused: Counter,
    /// Relayed messages dropped: a slow connection's queue was full, or it
    /// had gone.
    pub ws_dropped: Counter,
    /// Requests that could not be parsed.
    pub bad_requests: Counter,
    /// Requests refused by the access list.
    pub access_denied: Counter,
    /// Messages to other executors dropped because their channel was full.
    pub mesh_dropped: Counter,
}
