//! The metrics listener: Prometheus text at `/metrics`, and for people a
//! status page at `/` (small, self-contained HTML: no script, no external
//! asset) with the same figures as JSON at `/status.json`.
//!
//! ```text
//!   executors ──publish once a second──> MetricsHub (snapshots, 60 s of totals)
//!                                            │
//!   "metrics" thread: GET /metrics ─> MetricsHub::encode (OpenMetrics text)
//!                     GET /status.json, GET / ─> Status::collect ─> JSON, HTML
//! ```
//!
//! The page and the JSON are rendered from one [`Status`], so they cannot
//! disagree. Rates are over the last minute ([`RATE_WINDOW`]), from the
//! totals each executor published.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;

use crate::metrics::{MetricsHub, Published, Snapshot, PROTOCOLS, RATE_WINDOW};

/// Everything the status page shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// Resident memory of the process (VmRSS), if the OS says.
    pub memory_rss_bytes: Option<u64>,
    /// The window of the rates, seconds.
    pub rate_window_secs: u64,
    /// Torrents and peers by swarm: `bt` (UDP and HTTP peers share it) and
    /// `ws` (WebTorrent).
    pub swarms: Vec<SwarmStatus>,
    /// Requests and errors by protocol.
    pub protocols: Vec<ProtocolStatus>,
    /// The same by executor.
    pub executors: Vec<ExecutorStatus>,
}

/// One kind of swarm, over every executor.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SwarmStatus {
    /// `bt` or `ws`.
    pub swarm: &'static str,
    /// Torrents held.
    pub torrents: i64,
    /// Seeders held.
    pub seeders: i64,
    /// Leechers held.
    pub leechers: i64,
}

/// One protocol, over every executor.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProtocolStatus {
    /// `udp`, `http` or `ws`.
    pub protocol: &'static str,
    /// Requests since start.
    pub requests: u64,
    /// Errors since start.
    pub errors: u64,
    /// Requests per second over the window.
    pub requests_per_sec: f64,
    /// Errors per second over the window.
    pub errors_per_sec: f64,
}

/// One executor.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExecutorStatus {
    /// Its index (the `executor` label of the metrics).
    pub executor: usize,
    /// Whether it has published figures yet.
    pub published: bool,
    /// Torrents of its shard, both swarm kinds.
    pub torrents: i64,
    /// Peers of its shard, both swarm kinds.
    pub peers: i64,
    /// Requests it received since start, every protocol.
    pub requests: u64,
    /// Errors it counted since start, every protocol.
    pub errors: u64,
    /// Requests per second over the window.
    pub requests_per_sec: f64,
    /// Errors per second over the window.
    pub errors_per_sec: f64,
}

fn label<'a>(labels: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

/// A gauge of a snapshot: the sum of the samples named `name` whose labels
/// include every `(key, value)` of `want`.
fn gauge(snapshot: &Snapshot, name: &str, want: &[(&str, &str)]) -> i64 {
    snapshot
        .gauges
        .iter()
        .filter(|(n, labels, _)| {
            *n == name && want.iter().all(|(k, v)| label(labels, k) == Some(v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

impl Status {
    /// The figures now.
    pub fn collect(hub: &MetricsHub) -> Self {
        Self::from_published(&hub.published(), hub.started().elapsed(), resident_memory())
    }

    fn from_published(published: &[Published], uptime: Duration, rss: Option<u64>) -> Self {
        let mut swarms: Vec<SwarmStatus> = ["bt", "ws"]
            .into_iter()
            .map(|swarm| SwarmStatus {
                swarm,
                ..SwarmStatus::default()
            })
            .collect();
        let mut protocols: Vec<ProtocolStatus> = PROTOCOLS
            .into_iter()
            .map(|protocol| ProtocolStatus {
                protocol,
                ..ProtocolStatus::default()
            })
            .collect();
        let mut executors = Vec::with_capacity(published.len());
        for (executor, slot) in published.iter().enumerate() {
            let mut status = ExecutorStatus {
                executor,
                ..ExecutorStatus::default()
            };
            if let Some(snapshot) = &slot.snapshot {
                status.published = true;
                for swarm in &mut swarms {
                    let kind = swarm.swarm;
                    let torrents = gauge(snapshot, "torrents", &[("swarm", kind)]);
                    let seeders = gauge(snapshot, "peers", &[("swarm", kind), ("kind", "seeder")]);
                    let leechers =
                        gauge(snapshot, "peers", &[("swarm", kind), ("kind", "leecher")]);
                    swarm.torrents += torrents;
                    swarm.seeders += seeders;
                    swarm.leechers += leechers;
                    status.torrents += torrents;
                    status.peers += seeders + leechers;
                }
            }
            let (request_rates, error_rates) = slot.rates();
            if let Some(last) = slot.history.back() {
                for (p, protocol) in protocols.iter_mut().enumerate() {
                    protocol.requests += last.requests[p];
                    protocol.errors += last.errors[p];
                    protocol.requests_per_sec += request_rates[p];
                    protocol.errors_per_sec += error_rates[p];
                }
                status.requests = last.requests.iter().sum();
                status.errors = last.errors.iter().sum();
            }
            status.requests_per_sec = request_rates.iter().sum();
            status.errors_per_sec = error_rates.iter().sum();
            executors.push(status);
        }
        Status {
            uptime_secs: uptime.as_secs(),
            memory_rss_bytes: rss,
            rate_window_secs: RATE_WINDOW.as_secs(),
            swarms,
            protocols,
            executors,
        }
    }

    /// As JSON (what `/status.json` serves).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|err| {
            log::error!("cannot encode the status: {err}");
            "{}".to_owned()
        })
    }

    /// As a self-contained HTML page (what `/` serves). Every figure has
    /// an `id` (`swarm-bt-torrents`, `protocol-udp-requests`,
    /// `executor-0-peers`, …) so tools and tests can read the page.
    pub fn to_html(&self) -> String {
        let mut html = String::with_capacity(4096);
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <meta http-equiv=\"refresh\" content=\"10\">\
             <title>aquatic status</title><style>{STYLE}</style></head><body>\
             <h1>aquatic <small>{version}</small></h1>\
             <p>up <span id=\"uptime\">{uptime}</span> \
             (<span id=\"uptime-secs\">{uptime_secs}</span> s) · memory \
             <span id=\"memory\">{memory}</span> · rates over the last \
             {window} s · <a href=\"/status.json\">status.json</a> · \
             <a href=\"/metrics\">metrics</a></p>",
            version = env!("CARGO_PKG_VERSION"),
            uptime = human_duration(self.uptime_secs),
            uptime_secs = self.uptime_secs,
            memory = self
                .memory_rss_bytes
                .map_or("unknown".to_owned(), human_bytes),
            window = self.rate_window_secs,
        );
        html.push_str(
            "<h2>Swarms</h2><table><tr><th>swarm</th><th>torrents</th>\
             <th>seeders</th><th>leechers</th></tr>",
        );
        for s in &self.swarms {
            let name = match s.swarm {
                "bt" => "BitTorrent (UDP and HTTP)",
                _ => "WebTorrent (WebSocket)",
            };
            let id = s.swarm;
            let _ = write!(
                html,
                "<tr><td>{name}</td><td id=\"swarm-{id}-torrents\">{}</td>\
                 <td id=\"swarm-{id}-seeders\">{}</td><td id=\"swarm-{id}-leechers\">{}</td></tr>",
                s.torrents, s.seeders, s.leechers
            );
        }
        html.push_str(
            "</table><h2>Protocols</h2><table><tr><th>protocol</th><th>requests</th>\
             <th>requests/s</th><th>errors</th><th>errors/s</th></tr>",
        );
        for p in &self.protocols {
            let id = p.protocol;
            let _ = write!(
                html,
                "<tr><td>{id}</td><td id=\"protocol-{id}-requests\">{}</td>\
                 <td id=\"protocol-{id}-requests-per-sec\">{:.2}</td>\
                 <td id=\"protocol-{id}-errors\">{}</td>\
                 <td id=\"protocol-{id}-errors-per-sec\">{:.2}</td></tr>",
                p.requests, p.requests_per_sec, p.errors, p.errors_per_sec
            );
        }
        html.push_str(
            "</table><h2>Executors</h2><table><tr><th>executor</th><th>torrents</th>\
             <th>peers</th><th>requests</th><th>requests/s</th><th>errors</th>\
             <th>errors/s</th></tr>",
        );
        for e in &self.executors {
            let i = e.executor;
            if !e.published {
                let _ = write!(
                    html,
                    "<tr><td>{i}</td><td colspan=\"6\">no figures yet</td></tr>"
                );
                continue;
            }
            let _ = write!(
                html,
                "<tr><td>{i}</td><td id=\"executor-{i}-torrents\">{}</td>\
                 <td id=\"executor-{i}-peers\">{}</td><td id=\"executor-{i}-requests\">{}</td>\
                 <td id=\"executor-{i}-requests-per-sec\">{:.2}</td>\
                 <td id=\"executor-{i}-errors\">{}</td>\
                 <td id=\"executor-{i}-errors-per-sec\">{:.2}</td></tr>",
                e.torrents, e.peers, e.requests, e.requests_per_sec, e.errors, e.errors_per_sec
            );
        }
        html.push_str("</table></body></html>\n");
        html
    }
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
h1 small{font-size:55%;color:#777}table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}";

fn human_duration(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours}h {minutes}m")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m {seconds}s")
    }
}

fn human_bytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// VmRSS of this process, from `/proc/self/status`.
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The path of a request head's request line (`GET /path HTTP/1.1`).
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let _method = parts.next()?;
    let target = parts.next()?;
    Some(target.split('?').next().unwrap_or(target))
}

/// Reads a request head: up to its blank line, 2 KiB, the peer's end or
/// the read timeout, whichever comes first (a request line may arrive in
/// several segments).
fn read_head(stream: &mut impl Read) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while head.len() < 2048 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    head
}

/// Serves the metrics listener forever, on its own thread: `/metrics`,
/// `/status.json` and `/`; anything else is a 404.
pub fn serve(listener: std::net::TcpListener, hub: Arc<MetricsHub>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let head = read_head(&mut stream);
        let (status, content_type, body) = match request_path(&head) {
            Some("/metrics") => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                hub.encode(),
            ),
            Some("/status.json") => (
                "200 OK",
                "application/json",
                Status::collect(&hub).to_json(),
            ),
            Some("/") => (
                "200 OK",
                "text/html; charset=utf-8",
                Status::collect(&hub).to_html(),
            ),
            _ => (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found: try /, /status.json or /metrics\n".to_owned(),
            ),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, time::Instant};

    use super::*;
    use crate::metrics::Totals;

    fn snapshot(torrents: i64, seeders: i64, leechers: i64, udp_requests: u64) -> Snapshot {
        let l = |k: &'static str, v: &str| (k, v.to_owned());
        Snapshot {
            counters: vec![
                (
                    "requests",
                    vec![l("protocol", "udp"), l("action", "announce")],
                    udp_requests,
                ),
                (
                    "errors",
                    vec![l("protocol", "udp"), l("kind", "bad_request")],
                    1,
                ),
                (
                    "errors",
                    vec![l("protocol", "mesh"), l("kind", "channel_full")],
                    5,
                ),
            ],
            gauges: vec![
                ("torrents", vec![l("swarm", "bt")], torrents),
                ("torrents", vec![l("swarm", "ws")], 0),
                (
                    "peers",
                    vec![l("swarm", "bt"), l("kind", "seeder")],
                    seeders,
                ),
                (
                    "peers",
                    vec![l("swarm", "bt"), l("kind", "leecher")],
                    leechers,
                ),
            ],
        }
    }

    #[test]
    fn figures_add_up_over_executors_and_rates_use_the_window() {
        let hub = MetricsHub::new(3);
        hub.publish(0, snapshot(2, 1, 3, 10));
        hub.publish(1, snapshot(1, 0, 1, 4));
        let mut published = hub.published();
        // Executor 0 had 10 requests 30 s ago and 70 now: 2 per second.
        let now = Instant::now();
        let totals = |at, requests| Totals {
            at,
            requests: [requests, 0, 0],
            errors: [1, 0, 0],
        };
        published[0].history =
            VecDeque::from([totals(now - Duration::from_secs(30), 10), totals(now, 70)]);
        let status = Status::from_published(&published, Duration::from_secs(3700), Some(1 << 20));
        assert_eq!(
            status.swarms[0],
            SwarmStatus {
                swarm: "bt",
                torrents: 3,
                seeders: 1,
                leechers: 4
            }
        );
        assert_eq!(status.protocols[0].requests, 74);
        assert_eq!(
            status.protocols[0].errors, 2,
            "mesh errors are no protocol's"
        );
        assert_eq!(status.executors[0].requests_per_sec, 2.0);
        assert_eq!(status.executors[0].peers, 4);
        assert!(!status.executors[2].published);
        let html = status.to_html();
        for needle in [
            "<td id=\"swarm-bt-torrents\">3</td>",
            "<td id=\"protocol-udp-requests\">74</td>",
            "<td id=\"executor-0-requests-per-sec\">2.00</td>",
            "<td id=\"executor-1-peers\">1</td>",
            "<span id=\"uptime\">1h 1m</span>",
            "<span id=\"memory\">1.0 MiB</span>",
            "no figures yet",
        ] {
            assert!(html.contains(needle), "{needle} in {html}");
        }
        let json: serde_json::Value = serde_json::from_str(&status.to_json()).expect("json");
        assert_eq!(json["swarms"][0]["torrents"], 3);
        assert_eq!(json["executors"][1]["requests"], 4);
    }

    #[test]
    fn history_keeps_one_window() {
        let hub = MetricsHub::new(1);
        for _ in 0..5 {
            hub.publish(0, snapshot(0, 0, 0, 1));
        }
        // All within the window: all kept, after the zeros of the start.
        let published = hub.published();
        assert_eq!(published[0].history.len(), 6);
        assert_eq!(published[0].history[0].requests, [0; 3]);
        assert!(published[0].rates().0[0] > 0.0, "the first request counts");
    }

    #[test]
    fn paths() {
        assert_eq!(request_path(b"GET / HTTP/1.1\r\n"), Some("/"));
        assert_eq!(
            request_path(b"GET /status.json?x=1 HTTP/1.1\r\n"),
            Some("/status.json")
        );
        assert_eq!(request_path(b""), None);
    }
}
