//! The configuration: a TOML file over embedded defaults, then validated.
//!
//! `default_config.toml` is both the source of every default and the
//! commented text `--print-config` prints; a test checks that it parses to
//! exactly `Config::default()`, so the two cannot drift apart.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aquatic_common::access_list::AccessListMode;
use serde::{Deserialize, Serialize};

/// The commented default configuration, printed by `--print-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default_config.toml");

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (unknown key, wrong type…).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and the line.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Start-up, shutdown and summaries.
    Info,
    /// Per-event detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// As a `log` filter.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Self::Off => log::LevelFilter::Off,
            Self::Error => log::LevelFilter::Error,
            Self::Warn => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The whole configuration. See `default_config.toml` for what each key means.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Executors; 0 = one per available core.
    pub workers: usize,
    /// Executor placement and io_uring sizes.
    pub runtime: RuntimeConfig,
    /// Protocol-independent tracker rules.
    pub tracker: TrackerConfig,
    /// The UDP tracker.
    pub udp: UdpConfig,
    /// The HTTP(S) tracker.
    pub http: HttpConfig,
    /// The WebTorrent (WS/WSS) tracker.
    pub ws: WsConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Dropping root after binding.
    pub privileges: PrivilegesConfig,
    /// Allow / deny list of info hashes.
    pub access_list: AccessListConfig,
}

/// Executor placement and io_uring sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Pin executor i to core first_core + i.
    pub pin_cpus: bool,
    /// First core to pin to.
    pub first_core: usize,
    /// io_uring buffer memory per executor, KiB (locked memory).
    pub io_memory_kib: usize,
    /// io_uring submission queue depth.
    pub ring_depth: usize,
    /// Capacity of each executor-to-executor channel.
    pub mesh_channel_size: usize,
}

/// Protocol-independent tracker rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Seconds between announces asked of clients.
    pub announce_interval_secs: u32,
    /// Peers silent this long are removed.
    pub peer_timeout_secs: u64,
    /// Period of the cleaning timer.
    pub cleaning_interval_secs: u64,
    /// Peers returned when the client does not ask for a number.
    pub default_numwant: usize,
    /// Cap on peers returned.
    pub max_numwant: usize,
    /// Cap on info hashes per scrape.
    pub max_scrape_torrents: usize,
}

/// The UDP tracker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpConfig {
    /// Serve UDP at all.
    pub enabled: bool,
    /// Address of every executor's SO_REUSEPORT socket.
    pub address: SocketAddr,
    /// IPV6_V6ONLY on an IPv6 address.
    pub only_ipv6: bool,
    /// SO_RCVBUF; 0 = system default.
    pub socket_recv_buffer_size: usize,
    /// Lifetime of connection ids.
    pub connection_id_max_age_secs: u64,
}

/// The HTTP(S) tracker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Address of every executor's SO_REUSEPORT listener.
    pub address: SocketAddr,
    /// IPV6_V6ONLY on an IPv6 address.
    pub only_ipv6: bool,
    /// PEM certificate chain; empty with the key: plain HTTP.
    pub tls_certificate_path: PathBuf,
    /// PEM private key.
    pub tls_private_key_path: PathBuf,
    /// Open connections per executor.
    pub max_connections_per_worker: usize,
    /// Longest request head.
    pub max_request_bytes: usize,
    /// Time to send a whole request.
    pub request_timeout_secs: u64,
    /// Idle keep-alive time.
    pub keep_alive_timeout_secs: u64,
    /// Header with the client address behind a proxy; empty: none.
    pub reverse_proxy_ip_header: String,
    /// Appending proxies in front.
    pub reverse_proxy_trusted_hops: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: SocketAddr::from(([0u16; 8], 3001)),
            only_ipv6: false,
            tls_certificate_path: PathBuf::new(),
            tls_private_key_path: PathBuf::new(),
            max_connections_per_worker: 4096,
            max_request_bytes: 4096,
            request_timeout_secs: 10,
            keep_alive_timeout_secs: 60,
            reverse_proxy_ip_header: String::new(),
            reverse_proxy_trusted_hops: 1,
        }
    }
}

impl HttpConfig {
    /// Whether HTTPS is configured.
    pub fn tls(&self) -> bool {
        !self.tls_certificate_path.as_os_str().is_empty()
    }
}

/// Dropping root after the sockets are bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivilegesConfig {
    /// Drop at all.
    pub drop: bool,
    /// The user to become.
    pub user: String,
    /// The group to become; empty: the user's own.
    pub group: String,
    /// Directory to chroot into; empty: none.
    pub chroot: PathBuf,
}

impl Default for PrivilegesConfig {
    fn default() -> Self {
        Self {
            drop: false,
            user: "nobody".to_owned(),
            group: String::new(),
            chroot: PathBuf::new(),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve metrics at all.
    pub enabled: bool,
    /// Where.
    pub address: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            address: SocketAddr::from(([127, 0, 0, 1], 9000)),
        }
    }
}

/// The WebTorrent tracker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Serve WebSocket at all.
    pub enabled: bool,
    /// Address of every executor's SO_REUSEPORT listener.
    pub address: SocketAddr,
    /// IPV6_V6ONLY on an IPv6 address.
    pub only_ipv6: bool,
    /// PEM certificate chain; empty with the key: plain WS.
    pub tls_certificate_path: PathBuf,
    /// PEM private key.
    pub tls_private_key_path: PathBuf,
    /// Open connections per executor.
    pub max_connections_per_worker: usize,
    /// Largest message.
    pub max_message_bytes: usize,
    /// Largest frame.
    pub max_frame_bytes: usize,
    /// Most offers relayed per announce.
    pub max_offers: usize,
    /// Peers (torrent and peer id pairs) one connection may announce.
    pub max_peers_per_connection: usize,
    /// Messages queued for one connection.
    pub outgoing_queue: usize,
    /// Time to complete the handshake.
    pub handshake_timeout_secs: u64,
    /// Silence before a ping; twice this closes.
    pub idle_timeout_secs: u64,
    /// Interval told to clients.
    pub announce_interval_secs: u32,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: SocketAddr::from(([0u16; 8], 3002)),
            only_ipv6: false,
            tls_certificate_path: PathBuf::new(),
            tls_private_key_path: PathBuf::new(),
            max_connections_per_worker: 8192,
            max_message_bytes: 65536,
            max_frame_bytes: 65536,
            max_offers: 10,
            max_peers_per_connection: 1024,
            outgoing_queue: 64,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 60,
            announce_interval_secs: 120,
        }
    }
}

impl WsConfig {
    /// Whether WSS is configured.
    pub fn tls(&self) -> bool {
        !self.tls_certificate_path.as_os_str().is_empty()
    }
}

/// Allow / deny list of info hashes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessListConfig {
    /// off, allow or deny.
    pub mode: AccessListMode,
    /// The file of hex info hashes.
    pub path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: LogLevel::Info,
            workers: 0,
            runtime: RuntimeConfig::default(),
            tracker: TrackerConfig::default(),
            udp: UdpConfig::default(),
            http: HttpConfig::default(),
            ws: WsConfig::default(),
            metrics: MetricsConfig::default(),
            privileges: PrivilegesConfig::default(),
            access_list: AccessListConfig::default(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            pin_cpus: true,
            first_core: 0,
            io_memory_kib: 512,
            ring_depth: 128,
            mesh_channel_size: 4096,
        }
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            announce_interval_secs: 1800,
            peer_timeout_secs: 3600,
            cleaning_interval_secs: 60,
            default_numwant: 50,
            max_numwant: 100,
            max_scrape_torrents: 70,
        }
    }
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: SocketAddr::from(([0u16; 8], 3000)),
            only_ipv6: false,
            socket_recv_buffer_size: 0,
            connection_id_max_age_secs: 120,
        }
    }
}

impl TrackerConfig {
    /// How long a peer stays without announcing.
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_secs(self.peer_timeout_secs)
    }

    /// Period of the cleaning timer.
    pub fn cleaning_interval(&self) -> Duration {
        Duration::from_secs(self.cleaning_interval_secs)
    }

    /// Peers to return for a request that asked for `numwant` (None or negative: default).
    pub fn numwant(&self, asked: Option<usize>) -> usize {
        asked.unwrap_or(self.default_numwant).min(self.max_numwant)
    }
}

impl Config {
    /// Parses TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks what serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.tracker;
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_owned()));
        if t.announce_interval_secs == 0 {
            return invalid("tracker.announce_interval_secs must be at least 1");
        }
        if t.peer_timeout_secs == 0 || t.cleaning_interval_secs == 0 {
            return invalid(
                "tracker.peer_timeout_secs and cleaning_interval_secs must be at least 1",
            );
        }
        if t.max_scrape_torrents == 0 {
            return invalid("tracker.max_scrape_torrents must be at least 1");
        }
        if self.runtime.mesh_channel_size == 0 || self.runtime.ring_depth == 0 {
            return invalid("runtime.mesh_channel_size and runtime.ring_depth must be at least 1");
        }
        if self.access_list.mode != AccessListMode::Off
            && self.access_list.path.as_os_str().is_empty()
        {
            return invalid("access_list.path must be set when access_list.mode is not \"off\"");
        }
        if !self.udp.enabled && !self.http.enabled && !self.ws.enabled {
            return invalid(
                "nothing to serve: enable at least one protocol (udp.enabled, http.enabled, ws.enabled)",
            );
        }
        let w = &self.ws;
        if w.tls_certificate_path.as_os_str().is_empty()
            != w.tls_private_key_path.as_os_str().is_empty()
        {
            return invalid("ws.tls_certificate_path and ws.tls_private_key_path go together: set both or neither");
        }
        if w.max_connections_per_worker == 0
            || w.outgoing_queue == 0
            || w.max_offers == 0
            || w.max_peers_per_connection == 0
        {
            return invalid("ws.max_connections_per_worker, ws.outgoing_queue, ws.max_offers and ws.max_peers_per_connection must be at least 1");
        }
        if w.max_message_bytes < 1024 || w.max_frame_bytes < 1024 {
            return invalid("ws.max_message_bytes and ws.max_frame_bytes must be at least 1024");
        }
        if w.handshake_timeout_secs == 0
            || w.idle_timeout_secs == 0
            || w.announce_interval_secs == 0
        {
            return invalid("ws.handshake_timeout_secs, ws.idle_timeout_secs and ws.announce_interval_secs must be at least 1");
        }
        let h = &self.http;
        if h.tls_certificate_path.as_os_str().is_empty()
            != h.tls_private_key_path.as_os_str().is_empty()
        {
            return invalid("http.tls_certificate_path and http.tls_private_key_path go together: set both or neither");
        }
        if h.max_request_bytes < 256 || h.max_connections_per_worker == 0 {
            return invalid("http.max_request_bytes must be at least 256 and http.max_connections_per_worker at least 1");
        }
        if h.request_timeout_secs == 0 || h.keep_alive_timeout_secs == 0 {
            return invalid(
                "http.request_timeout_secs and http.keep_alive_timeout_secs must be at least 1",
            );
        }
        if h.reverse_proxy_trusted_hops == 0 {
            return invalid("http.reverse_proxy_trusted_hops must be at least 1");
        }
        if t.max_numwant > 3000 {
            return invalid(
                "tracker.max_numwant must be at most 3000 (a UDP response must fit a datagram)",
            );
        }
        Ok(())
    }

    /// Executors to run: `workers`, or one per available core.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_the_default() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML, Path::new("default")).expect("parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(
            Config::from_toml("", Path::new("x")).expect("parses"),
            Config::default()
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[udp]\nadress = \"[::]:1\"\n", Path::new("my.toml"))
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("adress") && msg.contains("my.toml"), "{msg}");
    }

    #[test]
    fn invalid_values_refused() {
        assert!(
            Config::from_toml("[tracker]\nannounce_interval_secs = 0", Path::new("x")).is_err()
        );
        assert!(Config::from_toml("[access_list]\nmode = \"allow\"", Path::new("x")).is_err());
        assert!(Config::from_toml("workers = -1", Path::new("x")).is_err());
    }

    #[test]
    fn numwant_capped() {
        let t = TrackerConfig::default();
        assert_eq!(t.numwant(None), 50);
        assert_eq!(t.numwant(Some(7)), 7);
        assert_eq!(t.numwant(Some(usize::MAX)), 100);
    }
}
