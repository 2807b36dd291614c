//! Per-executor counters.
//!
//! Each executor counts into its own plain cells: no atomics, no sharing on
//! the request path. Readers (the periodic log line, the metrics endpoint,
//! the status page in `status.rs`) collect the figures from every executor.

use std::{
    cell::Cell,
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Index of UDP in per-protocol counters.
pub const UDP: usize = 0;
/// Index of HTTP in per-protocol counters.
pub const HTTP: usize = 1;
/// Index of WebSocket in per-protocol counters.
pub const WS: usize = 2;
/// Protocol names, by index.
pub const PROTOCOLS: [&str; 3] = ["udp", "http", "ws"];

use crate::swarm::Refusal;

/// Index of an address's family in per-family counters.
#[inline]
pub fn family(ip: std::net::IpAddr) -> usize {
    match ip.to_canonical() {
        std::net::IpAddr::V4(_) => 0,
        std::net::IpAddr::V6(_) => 1,
    }
}

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
    /// UDP announces (that passed the rules) for a torrent of this
    /// executor's own shard: answered here, no mesh hop.
    pub udp_announce_local: Counter,
    /// UDP announces (that passed the rules) sent over the mesh to the
    /// torrent's owner; with kernel steering on, close to none.
    pub udp_announce_forwarded: Counter,
    /// UDP scrapes whose torrents all live on this executor's shard.
    pub udp_scrape_local: Counter,
    /// UDP scrapes that needed other executors' shards (steering routes a
    /// scrape by its first hash, so only multi-shard scrapes).
    pub udp_scrape_forwarded: Counter,
    /// UDP requests with a connection id we did not issue or that expired.
    pub udp_invalid_connection_id: Counter,
    /// UDP replies the kernel refused as longer than the link (EMSGSIZE:
    /// the sockets set DF); `udp.max_datagram_bytes` is above the path MTU.
    pub udp_send_too_large: Counter,
    /// UDP replies the kernel refused for any other reason.
    pub udp_send_failed: Counter,
    /// UDP scrapes dropped, without a reply, because the executor already
    /// had `udp.max_scrapes_in_flight` cross-shard scrapes waiting.
    pub udp_scrape_overload: Counter,
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
    /// Requests that could not be parsed, by protocol.
    pub bad_requests: [Counter; 3],
    /// Requests refused by the access list, by protocol.
    pub access_denied: [Counter; 3],
    /// Requests by protocol and client IP family (IPv4, IPv6).
    pub requests_by_family: [[Counter; 2]; 3],
    /// Requests the tracker's rules refused, by protocol and refusal.
    pub refusals: [[Counter; Refusal::ALL.len()]; 3],
    /// Messages to other executors lost: a lossy message met a full
    /// channel, or an outbox overflowed.
    pub mesh_dropped: Counter,
    /// Sends refused because the destination's channel was full (or it had
    /// too many requests outstanding); each was handled at once.
    pub mesh_full: Counter,
    /// Requests for another cluster member that its link's queue refused
    /// (full): each answered "busy" at once rather than at the deadline.
    pub cluster_link_busy: Counter,
    /// Requests whose answer did not come before the deadline (one per
    /// request or fan-out, however many parts were missing).
    pub mesh_deadlines: Counter,
    /// Answers that arrived after their request had given up.
    pub mesh_late_replies: Counter,
    /// Cluster links refused: TLS failed, or the certificate did not name
    /// the member the peer claimed to be.
    pub cluster_links_refused: Counter,
}

/// `name{labels} value`: one sample of a metric, before the executor label.
pub type Sample<V> = (&'static str, Vec<(&'static str, String)>, V);

/// One executor's figures at one moment, published for the endpoint.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `(name, labels, value)` of every counter.
    pub counters: Vec<Sample<u64>>,
    /// `(name, labels, value)` of every gauge.
    pub gauges: Vec<Sample<i64>>,
}

impl ExecutorStats {
    /// Counts a refusal of the tracker's rules: by its kind, and (as
    /// before there were kinds) as access denied or a bad request.
    pub fn refused(&self, protocol: usize, refusal: Refusal) {
        self.refusals[protocol][refusal.index()].bump();
        match refusal {
            Refusal::NotAllowed => self.access_denied[protocol].bump(),
            // A full scrape is a habit of some clients, not a bad request.
            Refusal::FullScrape => {}
            _ => self.bad_requests[protocol].bump(),
        }
    }

    /// The counters as labelled samples.
    pub fn samples(&self) -> Vec<Sample<u64>> {
        let proto = |p: &str| ("protocol", p.to_owned());
        let action = |a: &str| ("action", a.to_owned());
        let kind = |k: &str| ("kind", k.to_owned());
        let route = |r: &str| ("route", r.to_owned());
        let mut out = vec![
            (
                "requests",
                vec![proto("udp"), action("connect")],
                self.udp_connect.get(),
            ),
            (
                "requests",
                vec![proto("udp"), action("announce")],
                self.udp_announce.get(),
            ),
            (
                "requests",
                vec![proto("udp"), action("scrape")],
                self.udp_scrape.get(),
            ),
            (
                "requests",
                vec![proto("http"), action("announce")],
                self.http_announce.get(),
            ),
            (
                "requests",
                vec![proto("http"), action("scrape")],
                self.http_scrape.get(),
            ),
            (
                "requests",
                vec![proto("ws"), action("announce")],
                self.ws_announce.get(),
            ),
            (
                "requests",
                vec![proto("ws"), action("scrape")],
                self.ws_scrape.get(),
            ),
            ("responses", vec![proto("udp")], self.udp_responses.get()),
            (
                "udp_routed",
                vec![action("announce"), route("local")],
                self.udp_announce_local.get(),
            ),
            (
                "udp_routed",
                vec![action("announce"), route("forwarded")],
                self.udp_announce_forwarded.get(),
            ),
            (
                "udp_routed",
                vec![action("scrape"), route("local")],
                self.udp_scrape_local.get(),
            ),
            (
                "udp_routed",
                vec![action("scrape"), route("forwarded")],
                self.udp_scrape_forwarded.get(),
            ),
            ("responses", vec![proto("http")], self.http_responses.get()),
            ("responses", vec![proto("ws")], self.ws_messages_out.get()),
            (
                "errors",
                vec![proto("udp"), kind("invalid_connection_id")],
                self.udp_invalid_connection_id.get(),
            ),
            (
                "errors",
                vec![proto("udp"), kind("send_too_large")],
                self.udp_send_too_large.get(),
            ),
            (
                "errors",
                vec![proto("udp"), kind("send_failed")],
                self.udp_send_failed.get(),
            ),
            (
                "errors",
                vec![proto("udp"), kind("scrape_overload")],
                self.udp_scrape_overload.get(),
            ),
            (
                "errors",
                vec![proto("http"), kind("connection_refused")],
                self.http_connections_refused.get(),
            ),
            (
                "errors",
                vec![proto("http"), kind("timeout")],
                self.http_timeouts.get(),
            ),
            (
                "errors",
                vec![proto("ws"), kind("connection_refused")],
                self.ws_connections_refused.get(),
            ),
            (
                "errors",
                vec![proto("ws"), kind("relay_dropped")],
                self.ws_dropped.get(),
            ),
            (
                "errors",
                vec![proto("mesh"), kind("message_dropped")],
                self.mesh_dropped.get(),
            ),
            (
                "errors",
                vec![proto("mesh"), kind("channel_full")],
                self.mesh_full.get(),
            ),
            (
                "errors",
                vec![proto("cluster"), kind("link_busy")],
                self.cluster_link_busy.get(),
            ),
            (
                "errors",
                vec![proto("mesh"), kind("reply_timeout")],
                self.mesh_deadlines.get(),
            ),
            (
                "errors",
                vec![proto("mesh"), kind("late_reply")],
                self.mesh_late_replies.get(),
            ),
            (
                "errors",
                vec![proto("cluster"), kind("link_refused")],
                self.cluster_links_refused.get(),
            ),
            (
                "ws_connections_opened",
                Vec::new(),
                self.ws_connections_opened.get(),
            ),
        ];
        for (p, name) in PROTOCOLS.iter().enumerate() {
            out.push((
                "errors",
                vec![proto(name), kind("bad_request")],
                self.bad_requests[p].get(),
            ));
            out.push((
                "access_denied",
                vec![proto(name)],
                self.access_denied[p].get(),
            ));
            for refusal in Refusal::ALL {
                out.push((
                    "refusals",
                    vec![proto(name), ("reason", refusal.kind().to_owned())],
                    self.refusals[p][refusal.index()].get(),
                ));
            }
            for (f, fam) in ["ipv4", "ipv6"].iter().enumerate() {
                out.push((
                    "requests_by_ip_family",
                    vec![proto(name), ("ip_family", (*fam).to_owned())],
                    self.requests_by_family[p][f].get(),
                ));
            }
        }
        out
    }
}

/// How far back request and error rates look.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// One executor's request and error totals by protocol at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Totals {
    /// When they were published.
    pub at: Instant,
    /// Requests by protocol (`UDP`, `HTTP`, `WS`).
    pub requests: [u64; 3],
    /// Errors by protocol.
    pub errors: [u64; 3],
}

impl Totals {
    fn of(snapshot: &Snapshot, at: Instant) -> Self {
        let mut totals = Totals {
            at,
            requests: [0; 3],
            errors: [0; 3],
        };
        for (name, labels, value) in &snapshot.counters {
            let slot = match *name {
                "requests" => &mut totals.requests,
                "errors" => &mut totals.errors,
                _ => continue,
            };
            let protocol = labels
                .iter()
                .find(|(k, _)| *k == "protocol")
                .and_then(|(_, v)| PROTOCOLS.iter().position(|p| p == v));
            if let Some(p) = protocol {
                slot[p] = slot[p].saturating_add(*value);
            }
        }
        totals
    }
}

/// An executor's published figures: the last snapshot and the totals of
/// the last [`RATE_WINDOW`] (the oldest entry is the newest one at least
/// that old, so rates cover the whole window once it has passed).
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// The last snapshot.
    pub snapshot: Option<Snapshot>,
    /// Totals, oldest first.
    pub history: VecDeque<Totals>,
}

impl Published {
    /// Requests and errors per second by protocol over the window: the
    /// difference between the newest and the oldest totals kept.
    pub fn rates(&self) -> ([f64; 3], [f64; 3]) {
        let (Some(first), Some(last)) = (self.history.front(), self.history.back()) else {
            return ([0.0; 3], [0.0; 3]);
        };
        let secs = last.at.saturating_duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return ([0.0; 3], [0.0; 3]);
        }
        let rate = |a: [u64; 3], b: [u64; 3]| {
            std::array::from_fn(|i| b[i].saturating_sub(a[i]) as f64 / secs)
        };
        (
            rate(first.requests, last.requests),
            rate(first.errors, last.errors),
        )
    }
}

/// Where executors publish their snapshots and the endpoint reads them.
///
/// Each executor writes its own slot once a second from a timer task, so
/// the request path never touches this lock.
pub struct MetricsHub {
    slots: std::sync::Mutex<Vec<Published>>,
    started: Instant,
    /// Private mode's database thread, if it runs.
    database: std::sync::OnceLock<std::sync::Arc<crate::database::DatabaseStats>>,
}

impl MetricsHub {
    /// A hub for `executors` slots.
    pub fn new(executors: usize) -> Self {
        Self {
            slots: std::sync::Mutex::new(vec![Published::default(); executors]),
            started: Instant::now(),
            database: std::sync::OnceLock::new(),
        }
    }

    /// Adds the database thread's figures.
    pub fn set_database(&self, stats: std::sync::Arc<crate::database::DatabaseStats>) {
        let _ = self.database.set(stats);
    }

    /// When the hub (the process) started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Replaces executor `index`'s snapshot and records its totals.
    pub fn publish(&self, index: usize, snapshot: Snapshot) {
        let now = Instant::now();
        let totals = Totals::of(&snapshot, now);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(index) {
            slot.snapshot = Some(snapshot);
            if slot.history.is_empty() {
                // Every count was zero at start: the first rates cover
                // the requests made before the first publication too.
                slot.history.push_back(Totals {
                    at: self.started,
                    requests: [0; 3],
                    errors: [0; 3],
                });
            }
            slot.history.push_back(totals);
            while slot
                .history
                .get(1)
                .is_some_and(|next| now.saturating_duration_since(next.at) >= RATE_WINDOW)
            {
                slot.history.pop_front();
            }
        }
    }

    /// Every executor's published figures, by executor.
    pub fn published(&self) -> Vec<Published> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every executor's figures in the Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> String {
        use prometheus_client::{
            encoding::text::encode,
            metrics::{counter::Counter as PCounter, family::Family, gauge::Gauge},
            registry::Registry,
        };
        type Labels = Vec<(String, String)>;
        let slots: Vec<Option<Snapshot>> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| p.snapshot.clone())
            .collect();
        let mut counters: Vec<(&'static str, Family<Labels, PCounter>)> = Vec::new();
        let mut gauges: Vec<(&'static str, Family<Labels, Gauge>)> = Vec::new();
        for (index, snapshot) in slots.iter().enumerate() {
            let Some(snapshot) = snapshot else { continue };
            let labelled = |labels: &[(&'static str, String)]| {
                let mut l: Labels = labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                l.push(("executor".to_owned(), index.to_string()));
                l
            };
            for (name, labels, value) in &snapshot.counters {
                let family = match counters.iter().find(|(n, _)| n == name) {
                    Some((_, f)) => f.clone(),
                    None => {
                        let f = Family::default();
                        counters.push((name, f.clone()));
                        f
                    }
                };
                family.get_or_create(&labelled(labels)).inc_by(*value);
            }
            for (name, labels, value) in &snapshot.gauges {
                let family = match gauges.iter().find(|(n, _)| n == name) {
                    Some((_, f)) => f.clone(),
                    None => {
                        let f = Family::default();
                        gauges.push((name, f.clone()));
                        f
                    }
                };
                family.get_or_create(&labelled(labels)).set(*value);
            }
        }
        if let Some(db) = self.database.get() {
            use std::sync::atomic::Ordering::Relaxed;
            let figures = [
                ("private_pending_rows", db.pending_rows.load(Relaxed), false),
                ("private_users", db.users.load(Relaxed), false),
                ("private_torrents", db.torrents.load(Relaxed), false),
                (
                    "private_write_failures",
                    db.write_failures.load(Relaxed),
                    true,
                ),
                (
                    "private_load_failures",
                    db.load_failures.load(Relaxed),
                    true,
                ),
                (
                    "private_batches_written",
                    db.batches_written.load(Relaxed),
                    true,
                ),
                ("private_rows_written", db.rows_written.load(Relaxed), true),
                (
                    "private_batches_already_applied",
                    db.batches_already_applied.load(Relaxed),
                    true,
                ),
            ];
            for (name, value, counter) in figures {
                if counter {
                    let f: Family<Labels, PCounter> = Family::default();
                    f.get_or_create(&Vec::new()).inc_by(value);
                    counters.push((name, f));
                } else {
                    let f: Family<Labels, Gauge> = Family::default();
                    f.get_or_create(&Vec::new())
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                    gauges.push((name, f));
                }
            }
        }
        let mut registry = Registry::with_prefix("aquatic");
        for (name, family) in counters {
            registry.register(name, help(name), family);
        }
        for (name, family) in gauges {
            registry.register(name, help(name), family);
        }
        let mut text = String::new();
        if let Err(err) = encode(&mut text, &registry) {
            log::error!("cannot encode metrics: {err}");
        }
        text
    }
}

fn help(name: &str) -> &'static str {
    match name {
        "requests" => "Requests by protocol and action",
        "responses" => "Responses (WS: messages) sent by protocol",
        "errors" => "Errors and bad requests by protocol and kind",
        "access_denied" => "Requests refused by the access list",
        "refusals" => "Requests the tracker's rules refused, by protocol and reason",
        "requests_by_ip_family" => "Requests by protocol and client IP family",
        "ws_connections_opened" => "WebSocket connections accepted",
        "torrents" => "Torrents held, by swarm kind (bt: UDP and HTTP; ws: WebTorrent)",
        "peers" => "Peers held, by swarm kind and seeder/leecher",
        "ws_connections" => "Open WebSocket connections",
        "map_capacity" => "Capacity of the executor's maps (to see them shrink)",
        "udp_routed" => "UDP announces and scrapes answered by the receiving executor (local) or needing another's shard (forwarded)",
        "udp_kernel_drops" => "Datagrams the kernel dropped for the executor's UDP socket (full receive buffer; SO_RXQ_OVFL's counter)",
        "udp_kernel_steering" => "1 when the kernel steers UDP datagrams to their torrent's executor (udp.kernel_steering)",
        "private_pending_rows" => "Private mode: statistics rows waiting to be written",
        "private_users" => "Private mode: users in the last load",
        "private_torrents" => "Private mode: torrents in the last load",
        "private_write_failures" => "Private mode: failed attempts to write statistics",
        "private_load_failures" => "Private mode: failed loads of users and torrents",
        "private_batches_written" => "Private mode: statistics batches committed",
        "private_rows_written" => "Private mode: statistics rows written",
        "private_batches_already_applied" => {
            "Private mode: retried batches found already committed (not applied twice)"
        }
        _ => "aquatic metric",
    }
}
