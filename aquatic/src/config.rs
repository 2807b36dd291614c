//! The configuration: a TOML file over embedded defaults, then validated.
//!
//! `default_config.toml` is both the source of every default and the
//! commented text `--print-config` prints; a test checks that it parses to
//! exactly `Config::default()`, so the two cannot drift apart.
//!
//! [`Config`] is the raw serde tree, exactly as the file spells it.
//! [`Config::validate`] checks what serde cannot (every number has a lower
//! and an upper bound, some keys go together) and collects every problem
//! at once, each with its dotted key, so an operator fixes a file in one
//! pass. What comes out is a [`ValidConfig`], the only thing the runtime
//! should take: it can be made by validation alone, and it reads like a
//! `Config` through `Deref`.

use std::{
    fmt,
    net::SocketAddr,
    ops::{Deref, RangeInclusive},
    path::{Path, PathBuf},
    time::Duration,
};

use aquatic_common::{
    access_list::AccessListMode,
    ip_network::{InvalidNetwork, IpNetwork},
};
use serde::{Deserialize, Serialize};

/// The commented default configuration, printed by `--print-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default_config.toml");

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The values parse, but some are out of range or do not go together.
    /// Displayed as a summary line, then one `path: key: reason` line per
    /// problem.
    #[error("invalid config file {}{}", .path.display(), problem_lines(.path, .problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, table by table in the order of
        /// `default_config.toml`; never empty.
        problems: Vec<Problem>,
    },
}

/// The summary's tail and one line per problem, each prefixed by the file
/// (as compilers do), so every line can be read or grepped on its own.
fn problem_lines(path: &Path, problems: &[Problem]) -> String {
    let plural = if problems.len() == 1 { "" } else { "s" };
    let mut text = format!(" ({} problem{plural}):", problems.len());
    for problem in problems {
        text.push_str(&format!("\n{}: {problem}", path.display()));
    }
    text
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key it concerns, as in the file: `"tracker.max_numwant"`.
    /// A problem of several keys together names them all, comma-separated.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: Reason,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// What is wrong with a key's value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// Below the smallest value that works.
    #[error("must be at least {min}")]
    TooSmall {
        /// The smallest value accepted.
        min: u64,
    },
    /// Above the largest value accepted: beyond it a value is a typo or
    /// would not fit what it sizes (a datagram, a buffer, a timer).
    #[error("must be at most {max}")]
    TooLarge {
        /// The largest value accepted.
        max: u64,
    },
    /// Empty while its partner is set; the two are set both or neither.
    #[error("is empty but {other} is set: set both or neither")]
    GoTogether {
        /// The partner key, which is set.
        other: &'static str,
    },
    /// Empty, but another key is not `"off"` and so needs it
    /// (`access_list.path` when `access_list.mode` is allow or deny).
    #[error("must be set when {needed_by} is not \"off\"")]
    Missing {
        /// The key whose value needs this one.
        needed_by: &'static str,
    },
    /// Private mode without the HTTP tracker that carries the passkeys.
    #[error("private mode serves members over HTTP(S): enable http")]
    PrivateNeedsHttp,
    /// Private swarms are not forwarded between nodes (yet): a member's
    /// announce reaching a node that does not own the torrent would land
    /// in a public swarm elsewhere.
    #[error("private mode does not run on a cluster node yet: disable one of them")]
    PrivateOnCluster,
    /// A protocol that cannot carry a passkey is enabled in private mode
    /// without being kept explicitly as a public tracker.
    #[error(
        "{protocol} cannot carry a passkey, so it would serve only public swarms: set {keep} = \
         true to keep it as a public tracker (it never sees the private swarms), or set \
         {disable} = false"
    )]
    CannotCarryPasskey {
        /// The protocol.
        protocol: &'static str,
        /// The key that keeps it public.
        keep: &'static str,
        /// The key that disables it.
        disable: &'static str,
    },
    /// Every protocol is disabled: there would be nothing to serve.
    #[error("all false: nothing to serve, enable at least one")]
    NothingEnabled,
    /// A scrape of `tracker.max_scrape_torrents` info hashes, as clients
    /// send it, is longer than `http.max_request_bytes`: every such
    /// scrape would be refused with a 414.
    #[error(
        "a scrape of {torrents} info hashes needs up to {needed} bytes of request \
         ({SCRAPE_BYTES_PER_HASH} per percent-encoded hash, {REQUEST_HEAD_ALLOWANCE} for the \
         request line and headers): raise http.max_request_bytes or lower \
         tracker.max_scrape_torrents"
    )]
    ScrapeExceedsHttpRequest {
        /// `tracker.max_scrape_torrents`.
        torrents: u64,
        /// The `http.max_request_bytes` that scrape needs.
        needed: u64,
    },
    /// More info hashes than BEP 15 lets a UDP scrape carry.
    #[error(
        "BEP 15 allows at most {max} info hashes in a UDP scrape: lower \
         tracker.max_scrape_torrents or disable UDP"
    )]
    ScrapeExceedsUdp {
        /// BEP 15's limit.
        max: u64,
    },
    /// An entry of `http.trusted_proxies` is not a network.
    #[error("{entry:?} is not a network such as \"10.0.0.0/8\" or \"::1/128\": {error}")]
    InvalidNetwork {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        error: InvalidNetwork,
    },
    /// `http.reverse_proxy_ip_header` is set but no proxy is trusted to
    /// send it: the header would be ignored and every peer would get the
    /// proxy's address (and trusting every peer would let any client put
    /// a third party's address into swarms).
    #[error(
        "the header is set but no proxy is trusted to send it: list the proxies' \
         networks in http.trusted_proxies (e.g. [\"127.0.0.1/32\"]), or leave \
         http.reverse_proxy_ip_header empty to use the socket's address"
    )]
    NoTrustedProxies,
    /// A UDP reply these values allow would not fit the datagram limit:
    /// it would be refused by the kernel (DF is set) or fragmented.
    #[error(
        "a UDP reply of up to {bytes} bytes does not fit the {limit} bytes of an IPv6 reply \
         (udp.max_datagram_bytes - 20)"
    )]
    UdpReplyTooLarge {
        /// The longest reply the values allow.
        bytes: u64,
        /// The most an IPv6 reply may carry.
        limit: u64,
    },
    /// Needed because another key is true (`cluster.key_file` and the TLS
    /// files when `cluster.enabled` is).
    #[error("must be set when {needed_by} is true")]
    RequiredBy {
        /// The key that needs this one.
        needed_by: &'static str,
    },
    /// A file the configuration names cannot be opened.
    #[error("cannot read {}: {error}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        error: String,
    },
    /// `cluster.node` is not the name of any of `cluster.members`.
    #[error("{node:?} is not the name of any of cluster.members")]
    NotAMember {
        /// The name given.
        node: String,
    },
    /// A member name or address appears twice.
    #[error("{value} appears more than once")]
    Duplicate {
        /// The repeated name or address.
        value: String,
    },
    /// A member name is not a DNS name, which its certificate must carry
    /// as subjectAltName (`"tracker-a"`, `"a.tracker.example"`).
    #[error("member name {name:?} is not a DNS name (letters, digits, '-' and '.')")]
    NotADnsName {
        /// The name given.
        name: String,
    },
    /// A member address other nodes could not dial (port 0 or 0.0.0.0 / ::).
    #[error("member address {address} cannot be dialled: give its real IP and port")]
    NotDialable {
        /// The address given.
        address: SocketAddr,
    },
}

/// The longest an `info_hash=…&` parameter is with every byte
/// percent-encoded, as libtorrent and most clients send it: 10 + 60 + 1.
pub const SCRAPE_BYTES_PER_HASH: u64 = 71;

/// What a scrape's request head holds besides its hashes: `GET /scrape?`,
/// ` HTTP/1.1` and typical headers (Host, User-Agent, Accept-Encoding,
/// Connection, a proxy's X-Forwarded-For), with room to spare.
pub const REQUEST_HEAD_ALLOWANCE: u64 = 512;

/// BEP 15: "Up to about 74 torrents can be scraped at once"; a request of
/// 16 + 20 × 74 bytes also stays under the UDP endpoint's 2048-byte read.
pub const UDP_MAX_SCRAPE_TORRENTS: u64 = 74;

/// A [`Config`] that passed [`Config::validate`]: what the runtime takes.
///
/// Only validation makes one (the defaults included), so holding one means
/// every value is in range. It reads like a `Config` through `Deref` and
/// serializes as one.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ValidConfig {
    config: Config,
    /// `http.trusted_proxies`, parsed.
    #[serde(skip)]
    trusted_proxies: Vec<IpNetwork>,
}

impl ValidConfig {
    /// The configuration, for code that still takes a plain `Config`.
    pub fn into_inner(self) -> Config {
        self.config
    }

    /// `http.trusted_proxies` as networks: the socket peers whose
    /// `http.reverse_proxy_ip_header` is believed. Never empty when the
    /// header is set.
    pub fn trusted_proxies(&self) -> &[IpNetwork] {
        &self.trusted_proxies
    }
}

impl Deref for ValidConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

impl Default for ValidConfig {
    /// The built-in defaults, which are valid (a test checks it).
    fn default() -> Self {
        Config::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
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
    /// Several nodes serving one tracker.
    pub cluster: ClusterConfig,
    /// Private tracker mode: passkeys and accounting in MariaDB.
    pub private: PrivateConfig,
    /// Swarm snapshots and the persisted connection-id key.
    pub snapshot: SnapshotConfig,
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
    /// Largest IPv4 reply payload; IPv6 replies get 20 bytes less.
    pub max_datagram_bytes: usize,
    /// Cross-shard scrapes waiting for other executors, per executor.
    pub max_scrapes_in_flight: usize,
    /// Steer announces and scrapes to their torrent's executor in the
    /// kernel (`SO_ATTACH_REUSEPORT_CBPF`).
    pub kernel_steering: bool,
}

/// Declares the table of a protocol served on a TCP listener (`[http]`,
/// `[ws]`): the fields every such table has, then the table's own, in one
/// flat serde struct (not a nested table, and not `#[serde(flatten)]`, which
/// would defeat `deny_unknown_fields`), so operators' files keep their keys.
/// It also writes, once for all such tables, `tls()` and the validation of
/// the shared fields ([`check_listener`]).
macro_rules! listener_table {
    (
        $(#[$attr:meta])*
        pub struct $name:ident in $table:literal, serving $proto:literal {
            $( $(#[$field_attr:meta])* pub $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            #[doc = concat!("Serve ", $proto, " at all.")]
            pub enabled: bool,
            /// Address of every executor's SO_REUSEPORT listener.
            pub address: SocketAddr,
            /// IPV6_V6ONLY on an IPv6 address.
            pub only_ipv6: bool,
            #[doc = concat!("PEM certificate chain; empty with the key: plain ", $proto, ".")]
            pub tls_certificate_path: PathBuf,
            /// PEM private key.
            pub tls_private_key_path: PathBuf,
            /// Open connections per executor.
            pub max_connections_per_worker: usize,
            $( $(#[$field_attr])* pub $field: $ty, )*
        }

        impl $name {
            /// The shared fields' dotted keys in this table.
            const KEYS: ListenerKeys = ListenerKeys {
                tls_certificate_path: concat!($table, ".tls_certificate_path"),
                tls_private_key_path: concat!($table, ".tls_private_key_path"),
                max_connections_per_worker: concat!($table, ".max_connections_per_worker"),
            };

            #[doc = concat!("Whether TLS is configured for ", $proto, " (validation ensures the key is set too).")]
            pub fn tls(&self) -> bool {
                !self.tls_certificate_path.as_os_str().is_empty()
            }

            /// Checks the fields every listener table shares.
            fn check_listener(&self, check: &mut Checker) {
                check_listener(
                    check,
                    &Self::KEYS,
                    &self.tls_certificate_path,
                    &self.tls_private_key_path,
                    self.max_connections_per_worker,
                );
            }
        }
    };
}

/// The dotted keys of the fields listener tables share, in one table.
struct ListenerKeys {
    tls_certificate_path: &'static str,
    tls_private_key_path: &'static str,
    max_connections_per_worker: &'static str,
}

/// The validation of the fields `listener_table!` declares, written once.
fn check_listener(
    check: &mut Checker,
    keys: &ListenerKeys,
    certificate: &Path,
    private_key: &Path,
    max_connections_per_worker: usize,
) {
    match (
        certificate.as_os_str().is_empty(),
        private_key.as_os_str().is_empty(),
    ) {
        (false, true) => check.push(
            keys.tls_private_key_path,
            Reason::GoTogether {
                other: keys.tls_certificate_path,
            },
        ),
        (true, false) => check.push(
            keys.tls_certificate_path,
            Reason::GoTogether {
                other: keys.tls_private_key_path,
            },
        ),
        _ => {}
    }
    check.range(
        keys.max_connections_per_worker,
        max_connections_per_worker,
        1..=1 << 20,
    );
}

listener_table! {
    /// The HTTP(S) tracker: the `[http]` table.
    pub struct HttpConfig in "http", serving "HTTP" {
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
        /// Networks (CIDR) of the proxies whose header is believed.
        pub trusted_proxies: Vec<String>,
    }
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
            // A scrape of the default 70 hashes needs 71 × 70 + 512 = 5482;
            // 8192 is also what nginx and Apache accept by default.
            max_request_bytes: 8192,
            request_timeout_secs: 10,
            keep_alive_timeout_secs: 60,
            reverse_proxy_ip_header: String::new(),
            reverse_proxy_trusted_hops: 1,
            trusted_proxies: Vec::new(),
        }
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

listener_table! {
    /// The WebTorrent tracker: the `[ws]` table.
    pub struct WsConfig in "ws", serving "WebSocket" {
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

/// Private tracker mode: the `[private]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivateConfig {
    /// Make the HTTP(S) tracker private.
    pub enabled: bool,
    /// Keep UDP as a public tracker next to the private HTTP one.
    pub public_udp: bool,
    /// Keep WebTorrent as a public tracker next to the private HTTP one.
    pub public_ws: bool,
    /// Database server host name or address.
    pub database_host: String,
    /// Database server TCP port.
    pub database_port: u32,
    /// Database (schema) name.
    pub database_name: String,
    /// Database user.
    pub database_user: String,
    /// File holding the database password (first line); empty: none.
    pub database_password_file: PathBuf,
    /// PEM CA certificate of the database server; set: TLS required.
    pub database_tls_ca_path: PathBuf,
    /// Seconds to connect to the database.
    pub connect_timeout_secs: u64,
    /// Seconds a database read or write may take.
    pub io_timeout_secs: u64,
    /// Seconds between reloads of users, torrents and whitelist; 0: only on SIGUSR1.
    pub reload_interval_secs: u64,
    /// Seconds between writes of the accumulated statistics.
    pub flush_interval_secs: u64,
    /// Seconds the last write on stop may take.
    pub stop_flush_timeout_secs: u64,
    /// Batches of statistics waiting between the executors and the database thread.
    pub channel_batches: usize,
}

impl Default for PrivateConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            public_udp: false,
            public_ws: false,
            database_host: "127.0.0.1".to_owned(),
            database_port: 3306,
            database_name: "aquatic".to_owned(),
            database_user: "aquatic".to_owned(),
            database_password_file: PathBuf::new(),
            database_tls_ca_path: PathBuf::new(),
            connect_timeout_secs: 5,
            io_timeout_secs: 10,
            reload_interval_secs: 300,
            flush_interval_secs: 3,
            stop_flush_timeout_secs: 10,
            channel_batches: 64,
        }
    }
}

impl PrivateConfig {
    fn check(&self, config: &Config, check: &mut Checker) {
        check.range("private.database_port", self.database_port, 1..=65535);
        check.range(
            "private.connect_timeout_secs",
            self.connect_timeout_secs,
            1..=3600,
        );
        check.range("private.io_timeout_secs", self.io_timeout_secs, 1..=3600);
        check.range(
            "private.reload_interval_secs",
            self.reload_interval_secs,
            0..=DAY_SECS,
        );
        check.range(
            "private.flush_interval_secs",
            self.flush_interval_secs,
            1..=3600,
        );
        check.range(
            "private.stop_flush_timeout_secs",
            self.stop_flush_timeout_secs,
            1..=3600,
        );
        check.range("private.channel_batches", self.channel_batches, 1..=65536);
        if !self.enabled {
            return;
        }
        if !config.http.enabled {
            check.push("private.enabled, http.enabled", Reason::PrivateNeedsHttp);
        }
        if config.cluster.enabled {
            check.push("private.enabled, cluster.enabled", Reason::PrivateOnCluster);
        }
        if config.udp.enabled && !self.public_udp {
            check.push(
                "private.enabled, udp.enabled",
                Reason::CannotCarryPasskey {
                    protocol: "UDP",
                    keep: "private.public_udp",
                    disable: "udp.enabled",
                },
            );
        }
        if config.ws.enabled && !self.public_ws {
            check.push(
                "private.enabled, ws.enabled",
                Reason::CannotCarryPasskey {
                    protocol: "WebTorrent",
                    keep: "private.public_ws",
                    disable: "ws.enabled",
                },
            );
        }
        if self.database_host.is_empty() {
            check.push(
                "private.database_host",
                Reason::Missing {
                    needed_by: "private.enabled",
                },
            );
        }
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

/// Several nodes, one tracker: the `[cluster]` table. The key names are
/// fixed (operators' config management relies on them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Run as a cluster node at all.
    pub enabled: bool,
    /// This node's name, one of `members`.
    pub node: String,
    /// Where this node accepts links from the other members.
    pub listen: SocketAddr,
    /// Every node of the cluster, this one included. Re-read on SIGHUP: a
    /// member added is dialled and owns torrents once its link is up (the
    /// others hand its swarms over); a member removed has its links closed
    /// and its torrents move to their next owner. `node` and `listen` need
    /// a restart.
    pub members: Vec<ClusterMember>,
    /// The connection-id key every member shares (32 or more bytes).
    pub key_file: PathBuf,
    /// The CA (PEM) that signs every member's certificate.
    pub ca_certificate_path: PathBuf,
    /// This node's certificate chain (PEM); its subjectAltName is `node`.
    pub certificate_path: PathBuf,
    /// This node's private key (PEM).
    pub private_key_path: PathBuf,
    /// A member silent this long leaves the live set.
    pub failure_timeout_secs: u64,
    /// The owner answers forwarded UDP announces from its own socket.
    pub direct_udp_replies: bool,
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMember {
    /// Its name: a DNS name its certificate carries as subjectAltName.
    pub name: String,
    /// Where it accepts links.
    pub address: SocketAddr,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node: "a".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 3100)),
            members: vec![
                ClusterMember {
                    name: "a".to_owned(),
                    address: SocketAddr::from(([127, 0, 0, 1], 3100)),
                },
                ClusterMember {
                    name: "b".to_owned(),
                    address: SocketAddr::from(([127, 0, 0, 1], 3200)),
                },
            ],
            key_file: PathBuf::new(),
            ca_certificate_path: PathBuf::new(),
            certificate_path: PathBuf::new(),
            private_key_path: PathBuf::new(),
            failure_timeout_secs: 5,
            direct_udp_replies: false,
        }
    }
}

impl ClusterConfig {
    /// Checks the table. Names, addresses and files only matter (and are
    /// only checked) when the cluster is enabled.
    fn check(&self, check: &mut Checker) {
        // Heartbeats go out several times per timeout; below a second the
        // members would drop each other on any scheduling hiccup, and past
        // an hour a dead node would keep its torrents for too long.
        check.range(
            "cluster.failure_timeout_secs",
            self.failure_timeout_secs,
            1..=3600,
        );
        if !self.enabled {
            return;
        }
        // 1024 nodes is past any tracker deployment; every announce
        // weighs each live member once.
        check.range("cluster.members", self.members.len(), 1..=1024);
        let mut names = std::collections::HashSet::new();
        let mut addresses = std::collections::HashSet::new();
        for member in &self.members {
            if rustls::pki_types::ServerName::try_from(member.name.as_str()).is_err()
                || member.name.parse::<std::net::IpAddr>().is_ok()
            {
                check.push(
                    "cluster.members",
                    Reason::NotADnsName {
                        name: member.name.clone(),
                    },
                );
            }
            if !names.insert(member.name.as_str()) {
                check.push(
                    "cluster.members",
                    Reason::Duplicate {
                        value: member.name.clone(),
                    },
                );
            }
            if !addresses.insert(member.address) {
                check.push(
                    "cluster.members",
                    Reason::Duplicate {
                        value: member.address.to_string(),
                    },
                );
            }
            if member.address.port() == 0 || member.address.ip().is_unspecified() {
                check.push(
                    "cluster.members",
                    Reason::NotDialable {
                        address: member.address,
                    },
                );
            }
        }
        if !names.contains(self.node.as_str()) {
            check.push(
                "cluster.node",
                Reason::NotAMember {
                    node: self.node.clone(),
                },
            );
        }
        for (key, path) in [
            ("cluster.key_file", &self.key_file),
            ("cluster.ca_certificate_path", &self.ca_certificate_path),
            ("cluster.certificate_path", &self.certificate_path),
            ("cluster.private_key_path", &self.private_key_path),
        ] {
            if path.as_os_str().is_empty() {
                check.push(
                    key,
                    Reason::RequiredBy {
                        needed_by: "cluster.enabled",
                    },
                );
            } else if let Err(error) = std::fs::File::open(path) {
                check.push(
                    key,
                    Reason::Unreadable {
                        path: path.clone(),
                        error: error.to_string(),
                    },
                );
            }
        }
    }

    /// How long a member may stay silent before it leaves the live set.
    pub fn failure_timeout(&self) -> Duration {
        Duration::from_secs(self.failure_timeout_secs)
    }
}

/// Swarm snapshots and the persisted connection-id key: the `[snapshot]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The state directory; empty: `$STATE_DIRECTORY`, else no state at all.
    pub dir: PathBuf,
    /// Seconds between background snapshots; 0: only at stop.
    pub interval_secs: u64,
    /// Seconds a graceful stop may take, all of it: closing, the last
    /// snapshot, then (private mode) the last flush in what is left.
    pub stop_timeout_secs: u64,
}

/// What a graceful stop may take beyond `snapshot.stop_timeout_secs`: the
/// private accounting file's write after the last flush gave up, and a
/// database call that was under way (the process exits then regardless).
pub const STOP_EXIT_GRACE: Duration = Duration::from_secs(2);

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            interval_secs: 60,
            stop_timeout_secs: 10,
        }
    }
}

impl SnapshotConfig {
    fn check(&self, check: &mut Checker) {
        check.range("snapshot.interval_secs", self.interval_secs, 0..=DAY_SECS);
        // Past 10 minutes a stop is a hang; systemd's TimeoutStopSec=
        // default is 90 s.
        check.range(
            "snapshot.stop_timeout_secs",
            self.stop_timeout_secs,
            1..=600,
        );
    }

    /// The state directory in use: `dir`, else `$STATE_DIRECTORY` (its
    /// first entry: systemd separates several with `:`), else none.
    pub fn state_dir(&self, state_directory_env: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        if !self.dir.as_os_str().is_empty() {
            return Some(self.dir.clone());
        }
        let env = state_directory_env?.as_bytes();
        let first = env.split(|b| *b == b':').next()?;
        (!first.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(first)))
    }

    /// Period of the background snapshot, if there is one.
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_secs > 0).then(|| Duration::from_secs(self.interval_secs))
    }

    /// How long a graceful stop may take: the executors' part, and the
    /// budget private mode's last flush gets what is left of.
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout_secs)
    }

    /// The longest a graceful stop takes, from the signal to the exit,
    /// whatever the database does: the unit's `TimeoutStopSec=` must be at
    /// least this, or systemd's SIGKILL comes first.
    pub fn worst_case_stop(&self) -> Duration {
        self.stop_timeout() + STOP_EXIT_GRACE
    }
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
            cluster: ClusterConfig::default(),
            private: PrivateConfig::default(),
            snapshot: SnapshotConfig::default(),
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
            // A 1500-byte MTU (Ethernet) less the IPv4 and UDP headers.
            max_datagram_bytes: 1472,
            max_scrapes_in_flight: 256,
            kernel_steering: true,
        }
    }
}

impl UdpConfig {
    /// The most bytes of a reply to a client of this family: an IPv6
    /// header is 20 bytes longer than an IPv4 one, so on the same link an
    /// IPv6 reply carries 20 bytes less.
    pub fn max_reply_bytes(&self, ipv6: bool) -> usize {
        if ipv6 {
            self.max_datagram_bytes.saturating_sub(IPV6_EXTRA_HEADER)
        } else {
            self.max_datagram_bytes
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
    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<ValidConfig, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<ValidConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks what serde cannot, ranges and combinations, and reports every
    /// problem (never empty on `Err`), table by table in the order of
    /// `default_config.toml`.
    ///
    /// Every number has an upper bound as well as a lower one: generous
    /// values no deployment needs, past which a value is a typo (a timeout
    /// in milliseconds, a size in bytes where KiB was meant) or would not
    /// fit what it sizes. Each bound says why where it is checked.
    pub fn validate(self) -> Result<ValidConfig, Vec<Problem>> {
        let mut check = Checker::default();
        // 1024 executors is past the core count of any machine this runs
        // on; 0 means one per core.
        check.range("workers", self.workers, 0..=1024);
        self.runtime.check(&mut check);
        self.tracker.check(&mut check);
        self.udp.check(&mut check);
        check_udp_replies(&self.tracker, &self.udp, &mut check);
        let trusted_proxies = self.http.check(&mut check);
        self.ws.check(&mut check);
        if self.access_list.mode != AccessListMode::Off
            && self.access_list.path.as_os_str().is_empty()
        {
            check.push(
                "access_list.path",
                Reason::Missing {
                    needed_by: "access_list.mode",
                },
            );
        }
        self.snapshot.check(&mut check);
        self.check_scrape_limits(&mut check);
        self.cluster.check(&mut check);
        self.private.check(&self, &mut check);
        if !self.udp.enabled && !self.http.enabled && !self.ws.enabled {
            check.push(
                "udp.enabled, http.enabled, ws.enabled",
                Reason::NothingEnabled,
            );
        }
        if check.0.is_empty() {
            Ok(ValidConfig {
                config: self,
                trusted_proxies,
            })
        } else {
            Err(check.0)
        }
    }

    /// `tracker.max_scrape_torrents` against what each enabled protocol can
    /// carry. Skipped for a key already out of range: one problem per
    /// mistake.
    fn check_scrape_limits(&self, check: &mut Checker) {
        const TORRENTS: &str = "tracker.max_scrape_torrents";
        const REQUEST_BYTES: &str = "http.max_request_bytes";
        if check.has(TORRENTS) {
            return;
        }
        let torrents = u64::try_from(self.tracker.max_scrape_torrents).unwrap_or(u64::MAX);
        let needed = torrents
            .saturating_mul(SCRAPE_BYTES_PER_HASH)
            .saturating_add(REQUEST_HEAD_ALLOWANCE);
        let request_bytes = u64::try_from(self.http.max_request_bytes).unwrap_or(u64::MAX);
        if self.http.enabled && !check.has(REQUEST_BYTES) && needed > request_bytes {
            check.push(
                "tracker.max_scrape_torrents, http.max_request_bytes",
                Reason::ScrapeExceedsHttpRequest { torrents, needed },
            );
        }
        if self.udp.enabled && torrents > UDP_MAX_SCRAPE_TORRENTS {
            check.push(
                "tracker.max_scrape_torrents, udp.enabled",
                Reason::ScrapeExceedsUdp {
                    max: UDP_MAX_SCRAPE_TORRENTS,
                },
            );
        }
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

/// Collects problems: validation never stops at the first.
#[derive(Default)]
struct Checker(Vec<Problem>);

impl Checker {
    fn push(&mut self, key: &'static str, reason: Reason) {
        self.0.push(Problem { key, reason });
    }

    /// Whether a problem with `key` on its own was already found.
    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key == key)
    }

    /// `value` must lie in `bounds`; a value too large for `u64` is too large.
    fn range(&mut self, key: &'static str, value: impl TryInto<u64>, bounds: RangeInclusive<u64>) {
        let value = value.try_into().unwrap_or(u64::MAX);
        if value < *bounds.start() {
            self.push(
                key,
                Reason::TooSmall {
                    min: *bounds.start(),
                },
            );
        } else if value > *bounds.end() {
            self.push(key, Reason::TooLarge { max: *bounds.end() });
        }
    }
}

/// Seconds in a day: the longest timer or interval that still makes sense.
const DAY_SECS: u64 = 24 * 60 * 60;

/// The most peers one response may carry: a UDP announce response of this
/// many IPv6 peers (20 + 18 × 3000 bytes) still fits a datagram.
const MAX_NUMWANT: u64 = 3000;

impl RuntimeConfig {
    fn check(&self, check: &mut Checker) {
        // Linux's largest CPU count (NR_CPUS with MAXSMP) is 8192.
        check.range("runtime.first_core", self.first_core, 0..=8191);
        // 1 GiB of locked memory per executor.
        check.range("runtime.io_memory_kib", self.io_memory_kib, 0..=1 << 20);
        // io_uring refuses more entries (IORING_MAX_ENTRIES); no power of
        // two needed, the kernel rounds up.
        check.range("runtime.ring_depth", self.ring_depth, 1..=32768);
        check.range(
            "runtime.mesh_channel_size",
            self.mesh_channel_size,
            1..=1 << 20,
        );
    }
}

impl TrackerConfig {
    fn check(&self, check: &mut Checker) {
        check.range(
            "tracker.announce_interval_secs",
            self.announce_interval_secs,
            1..=DAY_SECS,
        );
        check.range(
            "tracker.peer_timeout_secs",
            self.peer_timeout_secs,
            1..=7 * DAY_SECS,
        );
        check.range(
            "tracker.cleaning_interval_secs",
            self.cleaning_interval_secs,
            1..=DAY_SECS,
        );
        check.range(
            "tracker.default_numwant",
            self.default_numwant,
            0..=MAX_NUMWANT,
        );
        check.range("tracker.max_numwant", self.max_numwant, 0..=MAX_NUMWANT);
        // default_numwant above max_numwant is no problem: max_numwant
        // caps it, as it caps what clients ask for (files that set only
        // max_numwant low keep working).
        // A UDP scrape response of 1000 torrents (8 + 12 × 1000 bytes) fits a
        // datagram with room to spare (it sizes every UDP send slot). With
        // UDP enabled BEP 15's 74 is the real cap, and over HTTP the
        // request size is (both checked in check_scrape_limits); 1000 is
        // for HTTP- and WS-only trackers.
        check.range(
            "tracker.max_scrape_torrents",
            self.max_scrape_torrents,
            1..=1000,
        );
    }
}

impl UdpConfig {
    fn check(&self, check: &mut Checker) {
        // 1 GiB; the kernel caps it at net.core.rmem_max anyway.
        check.range(
            "udp.socket_recv_buffer_size",
            self.socket_recv_buffer_size,
            0..=1 << 30,
        );
        // BEP 15 has clients reuse an id for a minute; 0 would refuse every
        // id at once.
        check.range(
            "udp.connection_id_max_age_secs",
            self.connection_id_max_age_secs,
            1..=3600,
        );
        check.range(
            "udp.max_datagram_bytes",
            self.max_datagram_bytes,
            MAX_DATAGRAM_BYTES,
        );
        // Each waiting scrape holds a task and a reply buffer (a few KiB);
        // 65536 of them is past any executor's honest backlog.
        check.range(
            "udp.max_scrapes_in_flight",
            self.max_scrapes_in_flight,
            1..=65536,
        );
    }
}

/// The IPv6 header's length beyond the IPv4 header's.
const IPV6_EXTRA_HEADER: usize = 20;

/// What `udp.max_datagram_bytes` may be: from the 576-byte datagram every
/// IPv4 host must accept (RFC 791) to the largest UDP payload over IPv4
/// (65535 less the IPv4 and UDP headers).
const MAX_DATAGRAM_BYTES: RangeInclusive<u64> = 576..=65507;

/// Checks that every UDP reply the tracker's limits allow fits the
/// datagram limit. Announce replies need no check (the peers in each are
/// capped to fit); a scrape reply answers every hash, so the most hashes
/// in a scrape must fit, in the smaller IPv6 reply.
fn check_udp_replies(tracker: &TrackerConfig, udp: &UdpConfig, check: &mut Checker) {
    // A key out of range already has its problem: comparing it too would
    // only repeat it.
    let checked = ["tracker.max_scrape_torrents", "udp.max_datagram_bytes"];
    if !udp.enabled || checked.iter().any(|key| check.has(key)) {
        return;
    }
    // BEP 15: an 8-byte head, then 12 bytes per torrent.
    let scrape_reply = tracker
        .max_scrape_torrents
        .saturating_mul(12)
        .saturating_add(8);
    let limit = udp.max_reply_bytes(true);
    if scrape_reply > limit {
        check.push(
            "tracker.max_scrape_torrents, udp.max_datagram_bytes",
            Reason::UdpReplyTooLarge {
                bytes: scrape_reply as u64,
                limit: limit as u64,
            },
        );
    }
}

impl HttpConfig {
    /// Checks the table and returns `trusted_proxies` parsed (the entries
    /// that parse; any that does not is a problem).
    fn check(&self, check: &mut Checker) -> Vec<IpNetwork> {
        self.check_listener(check);
        // 1 MiB of request head is far past any client's.
        check.range(
            "http.max_request_bytes",
            self.max_request_bytes,
            256..=1 << 20,
        );
        check.range(
            "http.request_timeout_secs",
            self.request_timeout_secs,
            1..=DAY_SECS,
        );
        check.range(
            "http.keep_alive_timeout_secs",
            self.keep_alive_timeout_secs,
            1..=DAY_SECS,
        );
        check.range(
            "http.reverse_proxy_trusted_hops",
            self.reverse_proxy_trusted_hops,
            1..=64,
        );
        let mut networks = Vec::with_capacity(self.trusted_proxies.len());
        for entry in &self.trusted_proxies {
            match entry.parse::<IpNetwork>() {
                Ok(network) => networks.push(network),
                Err(error) => check.push(
                    "http.trusted_proxies",
                    Reason::InvalidNetwork {
                        entry: entry.clone(),
                        error,
                    },
                ),
            }
        }
        // Each without the other is a silent mistake: a header believed
        // from no one gives every peer the proxy's address, and trusted
        // proxies without a header do the same.
        match (
            self.reverse_proxy_ip_header.is_empty(),
            self.trusted_proxies.is_empty(),
        ) {
            (false, true) => check.push(
                "http.reverse_proxy_ip_header, http.trusted_proxies",
                Reason::NoTrustedProxies,
            ),
            (true, false) => check.push(
                "http.reverse_proxy_ip_header",
                Reason::GoTogether {
                    other: "http.trusted_proxies",
                },
            ),
            _ => {}
        }
        networks
    }
}

impl WsConfig {
    fn check(&self, check: &mut Checker) {
        self.check_listener(check);
        // 16 MiB; an announce with ten offers is a few KiB.
        check.range(
            "ws.max_message_bytes",
            self.max_message_bytes,
            1024..=16 << 20,
        );
        check.range("ws.max_frame_bytes", self.max_frame_bytes, 1024..=16 << 20);
        check.range("ws.max_offers", self.max_offers, 1..=100);
        check.range(
            "ws.max_peers_per_connection",
            self.max_peers_per_connection,
            1..=65536,
        );
        check.range("ws.outgoing_queue", self.outgoing_queue, 1..=65536);
        check.range(
            "ws.handshake_timeout_secs",
            self.handshake_timeout_secs,
            1..=DAY_SECS,
        );
        check.range("ws.idle_timeout_secs", self.idle_timeout_secs, 1..=DAY_SECS);
        check.range(
            "ws.announce_interval_secs",
            self.announce_interval_secs,
            1..=DAY_SECS,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems a file has; panics if it has none.
    fn problems(text: &str) -> Vec<Problem> {
        match Config::from_toml(text, Path::new("x.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected invalid values, got {other:?}"),
        }
    }

    fn keys(problems: &[Problem]) -> Vec<&'static str> {
        problems.iter().map(|p| p.key).collect()
    }

    /// The default tree with every integer replaced by `value`, and the
    /// dotted keys of those integers.
    fn every_integer_set_to(value: i64) -> (String, Vec<String>) {
        let mut tree = toml::Value::try_from(Config::default()).expect("serializes");
        let mut keys = Vec::new();
        let top = tree.as_table_mut().expect("a table");
        for (name, item) in top.iter_mut() {
            match item {
                toml::Value::Integer(n) => {
                    *n = value;
                    keys.push(name.clone());
                }
                toml::Value::Table(table) => {
                    for (field, item) in table.iter_mut() {
                        if let toml::Value::Integer(n) = item {
                            *n = value;
                            keys.push(format!("{name}.{field}"));
                        }
                    }
                }
                _ => {}
            }
        }
        keys.sort();
        (toml::to_string(&tree).expect("prints"), keys)
    }

    #[test]
    fn embedded_default_is_the_default() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML, Path::new("default")).expect("parses");
        assert_eq!(parsed.into_inner(), Config::default());
    }

    #[test]
    fn defaults_are_valid() {
        let valid = Config::default().validate().expect("valid");
        assert_eq!(*valid, Config::default());
        assert_eq!(ValidConfig::default(), valid);
    }

    #[test]
    fn valid_config_prints_and_parses_back() {
        // What --print-parsed-config and the config fuzz target rely on.
        let config =
            Config::from_toml("[tracker]\nmax_numwant = 3000", Path::new("x")).expect("valid");
        let printed = toml::to_string(&config).expect("serializes");
        let again = Config::from_toml(&printed, Path::new("printed")).expect("parses");
        assert_eq!(again, config);
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(
            *Config::from_toml("", Path::new("x")).expect("parses"),
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
    fn every_problem_is_reported_with_its_key() {
        let text = "[tracker]\nannounce_interval_secs = 0\n\
                    [ws]\nmax_offers = 1000\n\
                    [access_list]\nmode = \"allow\"\n";
        let err = Config::from_toml(text, Path::new("three.toml")).expect_err("invalid");
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("expected invalid values, got {err:?}");
        };
        assert_eq!(
            problems,
            &[
                Problem {
                    key: "tracker.announce_interval_secs",
                    reason: Reason::TooSmall { min: 1 },
                },
                Problem {
                    key: "ws.max_offers",
                    reason: Reason::TooLarge { max: 100 },
                },
                Problem {
                    key: "access_list.path",
                    reason: Reason::Missing {
                        needed_by: "access_list.mode"
                    },
                },
            ]
        );
        let msg = err.to_string();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(
            lines,
            [
                "invalid config file three.toml (3 problems):",
                "three.toml: tracker.announce_interval_secs: must be at least 1",
                "three.toml: ws.max_offers: must be at most 100",
                "three.toml: access_list.path: must be set when access_list.mode is not \"off\"",
            ],
            "{msg}"
        );
    }

    #[test]
    fn upper_bound_is_inclusive() {
        // 1000 hashes fit neither UDP nor the default HTTP request size.
        let http_only = "[udp]\nenabled = false\n[http]\nmax_request_bytes = 71512\n";
        assert!(Config::from_toml(
            &format!("{http_only}[tracker]\nmax_scrape_torrents = 1000"),
            Path::new("x")
        )
        .is_ok());
        assert_eq!(
            problems("[tracker]\nmax_scrape_torrents = 1001"),
            [Problem {
                key: "tracker.max_scrape_torrents",
                reason: Reason::TooLarge { max: 1000 },
            }]
        );
        assert_eq!(
            problems("[tracker]\nmax_numwant = 3001"),
            [Problem {
                key: "tracker.max_numwant",
                reason: Reason::TooLarge { max: 3000 },
            }]
        );
    }

    #[test]
    fn every_number_has_an_upper_bound() {
        // Walks the serialized defaults, so a number added later is covered.
        let (text, expected) = every_integer_set_to(i64::from(u32::MAX));
        assert!(
            expected.len() >= 27,
            "the walk finds the numbers: {expected:?}"
        );
        let found = problems(&text);
        assert!(
            found
                .iter()
                .all(|p| matches!(p.reason, Reason::TooLarge { .. })),
            "{found:?}"
        );
        let mut found = keys(&found);
        found.sort_unstable();
        assert_eq!(found, expected);
    }

    #[test]
    fn lower_bounds() {
        let (text, _) = every_integer_set_to(0);
        let found: Vec<(&str, u64)> = problems(&text)
            .into_iter()
            .map(|p| match p.reason {
                Reason::TooSmall { min } => (p.key, min),
                other => panic!("{}: {other}", p.key),
            })
            .collect();
        let mut expected = vec![
            ("runtime.ring_depth", 1),
            ("runtime.mesh_channel_size", 1),
            ("tracker.announce_interval_secs", 1),
            ("tracker.peer_timeout_secs", 1),
            ("tracker.cleaning_interval_secs", 1),
            ("tracker.max_scrape_torrents", 1),
            ("udp.connection_id_max_age_secs", 1),
            ("udp.max_datagram_bytes", 576),
            ("udp.max_scrapes_in_flight", 1),
            ("http.max_connections_per_worker", 1),
            ("http.max_request_bytes", 256),
            ("http.request_timeout_secs", 1),
            ("http.keep_alive_timeout_secs", 1),
            ("http.reverse_proxy_trusted_hops", 1),
            ("ws.max_connections_per_worker", 1),
            ("ws.max_message_bytes", 1024),
            ("ws.max_frame_bytes", 1024),
            ("ws.max_offers", 1),
            ("ws.max_peers_per_connection", 1),
            ("ws.outgoing_queue", 1),
            ("ws.handshake_timeout_secs", 1),
            ("ws.idle_timeout_secs", 1),
            ("ws.announce_interval_secs", 1),
            ("cluster.failure_timeout_secs", 1),
            ("private.database_port", 1),
            ("private.connect_timeout_secs", 1),
            ("private.io_timeout_secs", 1),
            ("private.flush_interval_secs", 1),
            ("private.stop_flush_timeout_secs", 1),
            ("private.channel_batches", 1),
            ("snapshot.stop_timeout_secs", 1),
        ];
        let mut found = found;
        found.sort_unstable();
        expected.sort_unstable();
        assert_eq!(found, expected);
    }

    #[test]
    fn private_mode_refuses_listeners_that_cannot_carry_a_passkey() {
        let found = problems("[private]\nenabled = true");
        assert_eq!(
            keys(&found),
            [
                "private.enabled, udp.enabled",
                "private.enabled, ws.enabled"
            ]
        );
        let text = found[0].to_string();
        assert!(text.contains("private.public_udp = true"), "{text}");
        assert!(text.contains("udp.enabled = false"), "{text}");
        let kept = "[private]\nenabled = true\npublic_udp = true\npublic_ws = true";
        assert!(Config::from_toml(kept, Path::new("x")).is_ok());
        let http_only = "[udp]\nenabled = false\n[ws]\nenabled = false\n[private]\nenabled = true";
        assert!(Config::from_toml(http_only, Path::new("x")).is_ok());
        let no_http = "[http]\nenabled = false\n[ws]\nenabled = false\n\
                       [private]\nenabled = true\npublic_udp = true";
        assert_eq!(keys(&problems(no_http)), ["private.enabled, http.enabled"]);
    }

    #[test]
    fn private_mode_is_refused_on_a_cluster_node() {
        let both = "[udp]\nenabled = false\n[ws]\nenabled = false\n\
                    [private]\nenabled = true\n[cluster]\nenabled = true";
        let found = problems(both);
        assert!(
            keys(&found).contains(&"private.enabled, cluster.enabled"),
            "{found:?}"
        );
    }

    #[test]
    fn combinations() {
        assert!(
            Config::from_toml(
                "[tracker]\ndefault_numwant = 200\nmax_numwant = 100",
                Path::new("x")
            )
            .is_ok(),
            "max_numwant caps default_numwant"
        );
        assert_eq!(
            keys(&problems(
                "[http]\ntls_certificate_path = \"c.pem\"\n[ws]\ntls_private_key_path = \"k.pem\""
            )),
            ["http.tls_private_key_path", "ws.tls_certificate_path"]
        );
        assert_eq!(
            problems("[udp]\nenabled = false\n[http]\nenabled = false\n[ws]\nenabled = false"),
            [Problem {
                key: "udp.enabled, http.enabled, ws.enabled",
                reason: Reason::NothingEnabled,
            }]
        );
    }

    #[test]
    fn scrape_limits_fit_the_protocols() {
        let scrape = |torrents: u64, rest: &str| {
            format!("[tracker]\nmax_scrape_torrents = {torrents}\n{rest}")
        };
        // The defaults: 70 hashes need 71 × 70 + 512 = 5482 bytes.
        assert!(Config::from_toml(
            &scrape(70, "[http]\nmax_request_bytes = 5482"),
            Path::new("x")
        )
        .is_ok());
        assert_eq!(
            problems(&scrape(70, "[http]\nmax_request_bytes = 5481")),
            [Problem {
                key: "tracker.max_scrape_torrents, http.max_request_bytes",
                reason: Reason::ScrapeExceedsHttpRequest {
                    torrents: 70,
                    needed: 5482
                },
            }]
        );
        assert!(Config::from_toml(&scrape(74, ""), Path::new("x")).is_ok());
        assert_eq!(
            problems(&scrape(75, "")),
            [Problem {
                key: "tracker.max_scrape_torrents, udp.enabled",
                reason: Reason::ScrapeExceedsUdp { max: 74 },
            }]
        );
        // Each protocol disabled lifts its own limit.
        assert!(Config::from_toml(
            &scrape(
                100,
                "[udp]\nenabled = false\n[http]\nmax_request_bytes = 7612"
            ),
            Path::new("x")
        )
        .is_ok());
        assert!(Config::from_toml(
            &scrape(100, "[udp]\nenabled = false\n[http]\nenabled = false"),
            Path::new("x")
        )
        .is_ok());
        let message = Config::from_toml(
            &scrape(100, "[http]\nmax_request_bytes = 4096"),
            Path::new("x.toml"),
        )
        .expect_err("contradicting")
        .to_string();
        assert_eq!(
            message.lines().collect::<Vec<_>>(),
            [
                "invalid config file x.toml (2 problems):",
                "x.toml: tracker.max_scrape_torrents, http.max_request_bytes: a scrape of 100 \
                 info hashes needs up to 7612 bytes of request (71 per percent-encoded hash, \
                 512 for the request line and headers): raise http.max_request_bytes or lower \
                 tracker.max_scrape_torrents",
                "x.toml: tracker.max_scrape_torrents, udp.enabled: BEP 15 allows at most 74 \
                 info hashes in a UDP scrape: lower tracker.max_scrape_torrents or disable UDP",
            ]
        );
    }

    #[test]
    fn proxy_header_needs_trusted_proxies() {
        let config = Config::from_toml(
            "[http]\nreverse_proxy_ip_header = \"X-Forwarded-For\"\n\
             trusted_proxies = [\"127.0.0.1/32\", \"2001:db8::/32\"]",
            Path::new("x"),
        )
        .expect("valid");
        assert_eq!(
            config.trusted_proxies(),
            ["127.0.0.1/32".parse().ok(), "2001:db8::/32".parse().ok()]
                .into_iter()
                .flatten()
                .collect::<Vec<IpNetwork>>()
        );
        assert!(ValidConfig::default().trusted_proxies().is_empty());
        assert_eq!(
            problems("[http]\nreverse_proxy_ip_header = \"X-Forwarded-For\""),
            [Problem {
                key: "http.reverse_proxy_ip_header, http.trusted_proxies",
                reason: Reason::NoTrustedProxies,
            }]
        );
        assert_eq!(
            problems("[http]\ntrusted_proxies = [\"10.0.0.0/8\"]"),
            [Problem {
                key: "http.reverse_proxy_ip_header",
                reason: Reason::GoTogether {
                    other: "http.trusted_proxies"
                },
            }]
        );
        let message = Config::from_toml(
            "[http]\nreverse_proxy_ip_header = \"X-Real-IP\"\n\
             trusted_proxies = [\"10.0.0.1/8\", \"proxy\"]",
            Path::new("x.toml"),
        )
        .expect_err("invalid")
        .to_string();
        assert_eq!(
            message.lines().collect::<Vec<_>>(),
            [
                "invalid config file x.toml (2 problems):",
                "x.toml: http.trusted_proxies: \"10.0.0.1/8\" is not a network such as \
                 \"10.0.0.0/8\" or \"::1/128\": address bits are set past the prefix \
                 length: the network is 10.0.0.0/8",
                "x.toml: http.trusted_proxies: \"proxy\" is not a network such as \
                 \"10.0.0.0/8\" or \"::1/128\": not an IPv4 or IPv6 address before the '/'",
            ]
        );
    }

    #[test]
    fn udp_replies_fit_the_datagram_limit() {
        let udp = UdpConfig::default();
        assert_eq!(
            (udp.max_reply_bytes(false), udp.max_reply_bytes(true)),
            (1472, 1452)
        );
        assert_eq!(
            problems("[udp]\nmax_datagram_bytes = 575"),
            [Problem {
                key: "udp.max_datagram_bytes",
                reason: Reason::TooSmall { min: 576 },
            }]
        );
        assert_eq!(
            problems("[udp]\nmax_datagram_bytes = 65508"),
            [Problem {
                key: "udp.max_datagram_bytes",
                reason: Reason::TooLarge { max: 65507 },
            }]
        );
        // 576 bytes leave an IPv6 reply 556: 8 + 12 × 45 = 548 fits,
        // 8 + 12 × 46 = 560 does not.
        let small = |torrents: usize| {
            format!(
                "[tracker]\nmax_scrape_torrents = {torrents}\n[udp]\nmax_datagram_bytes = 576\n"
            )
        };
        assert!(Config::from_toml(&small(45), Path::new("x")).is_ok());
        assert_eq!(
            problems(&small(46)),
            [Problem {
                key: "tracker.max_scrape_torrents, udp.max_datagram_bytes",
                reason: Reason::UdpReplyTooLarge {
                    bytes: 560,
                    limit: 556
                },
            }]
        );
        let err = Config::from_toml(&small(46), Path::new("x")).expect_err("too large");
        assert_eq!(
            err.to_string().lines().nth(1),
            Some(
                "x: tracker.max_scrape_torrents, udp.max_datagram_bytes: a UDP reply of up to 560 bytes \
                 does not fit the 556 bytes of an IPv6 reply (udp.max_datagram_bytes - 20)"
            )
        );
        // Without UDP there is no datagram to fit.
        let off = small(46) + "enabled = false\n";
        assert!(Config::from_toml(&off, Path::new("x")).is_ok());
        // A key out of range is reported once, not again as a combination.
        assert_eq!(
            keys(&problems(&small(46).replace("576", "100"))),
            ["udp.max_datagram_bytes"]
        );
    }

    /// A directory with the four files a cluster node reads.
    fn cluster_files(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("aquatic-cluster-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for file in ["key", "ca.pem", "node.pem", "node.key"] {
            std::fs::write(dir.join(file), [0u8; 32]).expect("write");
        }
        dir
    }

    fn cluster_toml(dir: &Path, node: &str, members: &str) -> String {
        let d = dir.display();
        format!(
            "[cluster]\nenabled = true\nnode = \"{node}\"\nmembers = {members}\n\
             key_file = \"{d}/key\"\nca_certificate_path = \"{d}/ca.pem\"\n\
             certificate_path = \"{d}/node.pem\"\nprivate_key_path = \"{d}/node.key\"\n"
        )
    }

    #[test]
    fn a_cluster_is_validated_only_when_enabled() {
        // The defaults name files that are not set: harmless while off.
        let off = Config::from_toml("[cluster]\nnode = \"z\"", Path::new("x")).expect("off");
        assert!(!off.cluster.enabled);
        let dir = cluster_files("valid");
        let two = r#"[{ name = "a", address = "127.0.0.1:3100" }, { name = "b.example", address = "127.0.0.1:3200" }]"#;
        let valid = Config::from_toml(&cluster_toml(&dir, "b.example", two), Path::new("x"))
            .expect("valid");
        assert_eq!(valid.cluster.members.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cluster_problems_are_named() {
        let dir = cluster_files("bad");
        let members = r#"[{ name = "a", address = "127.0.0.1:3100" }, { name = "a", address = "127.0.0.1:3100" }, { name = "no spaces", address = "0.0.0.0:3300" }]"#;
        let found = problems(&cluster_toml(&dir, "c", members));
        let reasons: Vec<(&str, Reason)> = found.into_iter().map(|p| (p.key, p.reason)).collect();
        assert_eq!(
            reasons,
            [
                (
                    "cluster.members",
                    Reason::Duplicate {
                        value: "a".to_owned()
                    }
                ),
                (
                    "cluster.members",
                    Reason::Duplicate {
                        value: "127.0.0.1:3100".to_owned()
                    }
                ),
                (
                    "cluster.members",
                    Reason::NotADnsName {
                        name: "no spaces".to_owned()
                    }
                ),
                (
                    "cluster.members",
                    Reason::NotDialable {
                        address: "0.0.0.0:3300".parse().expect("address")
                    }
                ),
                (
                    "cluster.node",
                    Reason::NotAMember {
                        node: "c".to_owned()
                    }
                ),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cluster_files_must_be_set_and_readable() {
        let text = "[cluster]\nenabled = true\nkey_file = \"/nonexistent/key\"";
        let found = problems(text);
        assert_eq!(
            keys(&found),
            [
                "cluster.key_file",
                "cluster.ca_certificate_path",
                "cluster.certificate_path",
                "cluster.private_key_path"
            ]
        );
        assert!(matches!(found[0].reason, Reason::Unreadable { .. }));
        assert!(
            found[0].to_string().contains("/nonexistent/key"),
            "{}",
            found[0]
        );
        assert_eq!(
            found[1].reason,
            Reason::RequiredBy {
                needed_by: "cluster.enabled"
            }
        );
    }

    #[test]
    fn tls_needs_both_files() {
        let both = "[http]\ntls_certificate_path = \"c.pem\"\ntls_private_key_path = \"k.pem\"";
        let config = Config::from_toml(both, Path::new("x")).expect("valid");
        assert!(config.http.tls() && !config.ws.tls());
    }

    #[test]
    fn state_dir_from_config_or_systemd() {
        use std::ffi::OsStr;
        let mut snapshot = SnapshotConfig::default();
        assert_eq!(snapshot.state_dir(None), None, "off by default");
        assert_eq!(snapshot.state_dir(Some(OsStr::new(""))), None);
        assert_eq!(
            snapshot.state_dir(Some(OsStr::new("/var/lib/aquatic:/var/lib/other"))),
            Some(PathBuf::from("/var/lib/aquatic"))
        );
        snapshot.dir = PathBuf::from("/srv/state");
        assert_eq!(
            snapshot.state_dir(Some(OsStr::new("/var/lib/aquatic"))),
            Some(PathBuf::from("/srv/state")),
            "the config wins"
        );
        assert_eq!(snapshot.interval(), Some(Duration::from_secs(60)));
        snapshot.interval_secs = 0;
        assert_eq!(snapshot.interval(), None);
    }

    #[test]
    fn numwant_capped() {
        let t = TrackerConfig::default();
        assert_eq!(t.numwant(None), 50);
        assert_eq!(t.numwant(Some(7)), 7);
        assert_eq!(t.numwant(Some(usize::MAX)), 100);
    }
}
