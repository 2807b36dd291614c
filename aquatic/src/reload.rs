//! Values the main thread replaces at runtime (the configuration, access
//! list, TLS configurations), each executor's lock-free copy of them, and
//! which configuration keys a reload may change.
//!
//! ```text
//!   SIGHUP ─> main thread: read + validate the file ─> plan(running, file)
//!               │  runtime keys from the file, restart-only keys kept as running
//!               └─> Reloadable<ValidConfig>::replace ─> each executor's timer:
//!                     LocalCopy::refresh ─> host, UDP, HTTP, WS endpoints apply it
//!   SIGUSR1 (and after every SIGHUP) ─> access list and TLS files re-read
//! ```
//!
//! Which keys a reload applies is one list, [`RUNTIME_KEYS`]: a key is
//! restart-only unless it is there, so a new table or key (cluster,
//! snapshots, …) is never half-applied by accident. To make a key
//! runtime-changeable, make every reader of it take the reloaded value
//! (the executors' `apply_config`), then add it to the list.

use std::{
    cell::{Cell, RefCell},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

/// A value the main thread replaces at runtime (access list, TLS config).
///
/// Executors compare `generation` on a timer and take a new `Arc` only when
/// it changed, so the request path reads an executor-local copy: no lock,
/// no atomic.
pub struct Reloadable<T> {
    generation: AtomicU64,
    value: Mutex<Arc<T>>,
}

impl<T> Reloadable<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Self {
            generation: AtomicU64::new(0),
            value: Mutex::new(Arc::new(value)),
        }
    }

    /// Replaces the value; executors pick it up within a fraction of a second.
    pub fn replace(&self, value: T) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value and its generation.
    pub fn current(&self) -> (u64, Arc<T>) {
        let generation = self.generation();
        let value = self.value.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (generation, value)
    }
}

/// An executor's copy of a [`Reloadable`].
pub struct LocalCopy<T> {
    shared: Arc<Reloadable<T>>,
    seen: Cell<u64>,
    value: RefCell<Arc<T>>,
}

impl<T> LocalCopy<T> {
    /// Copies the current value.
    pub fn new(shared: Arc<Reloadable<T>>) -> Self {
        let (generation, value) = shared.current();
        Self {
            shared,
            seen: Cell::new(generation),
            value: RefCell::new(value),
        }
    }

    /// The local value.
    pub fn get(&self) -> Arc<T> {
        self.value.borrow().clone()
    }

    /// Takes the shared value if it changed; the new value if it did.
    pub fn refresh(&self) -> Option<Arc<T>> {
        if self.shared.generation() == self.seen.get() {
            return None;
        }
        let (generation, value) = self.shared.current();
        self.seen.set(generation);
        *self.value.borrow_mut() = value.clone();
        Some(value)
    }
}

/// The dotted keys a SIGHUP reload applies to the running tracker; every
/// other key needs a restart (its running value is kept and the reload
/// says so). Timeouts and limits read per connection apply to connections
/// accepted after the reload; open connections keep theirs.
pub const RUNTIME_KEYS: &[&str] = &[
    "log_level",
    "tracker.announce_interval_secs",
    "tracker.peer_timeout_secs",
    "tracker.cleaning_interval_secs",
    "tracker.default_numwant",
    "tracker.max_numwant",
    "tracker.max_scrape_torrents",
    "udp.max_scrapes_in_flight",
    "http.max_connections_per_worker",
    "http.max_request_bytes",
    "http.request_timeout_secs",
    "http.keep_alive_timeout_secs",
    "http.reverse_proxy_ip_header",
    "http.reverse_proxy_trusted_hops",
    "http.trusted_proxies",
    "ws.max_connections_per_worker",
    "ws.max_message_bytes",
    "ws.max_frame_bytes",
    "ws.max_offers",
    "ws.max_peers_per_connection",
    "ws.outgoing_queue",
    "ws.handshake_timeout_secs",
    "ws.idle_timeout_secs",
    "ws.announce_interval_secs",
    "access_list.mode",
    "access_list.path",
    // Runtime only while TLS stays on: switching it on or off changes the
    // listener's scheme, which needs a restart (see `plan`).
    "http.tls_certificate_path",
    "http.tls_private_key_path",
    "ws.tls_certificate_path",
    "ws.tls_private_key_path",
    // Members added or removed (positions never move, see
    // `cluster::members`); this node's own `cluster.node` and
    // `cluster.listen` stay restart-only.
    "cluster.members",
];

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// A configuration did not serialize to a TOML tree (cannot happen for
    /// the serde tree; kept typed rather than a panic).
    #[error("cannot compare the configurations: {0}")]
    Serialize(String),
    /// The file's runtime keys together with the running restart-only
    /// values do not make a valid configuration.
    #[error(
        "the file's runtime-changeable keys do not go with the running values of the \
         restart-only keys ({}); restart to apply the file",
        .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")
    )]
    Invalid(Vec<crate::config::Problem>),
}

/// What a reload does.
#[derive(Debug)]
pub struct ReloadPlan {
    /// The configuration to run from now on.
    pub config: crate::config::ValidConfig,
    /// Keys whose new value is applied.
    pub applied: Vec<String>,
    /// Keys that changed in the file but need a restart: the running value
    /// is kept.
    pub not_applied: Vec<String>,
}

/// Whether a reload may apply `key` (dotted).
pub fn is_runtime_key(key: &str) -> bool {
    RUNTIME_KEYS.contains(&key)
}

fn tree(config: &crate::config::Config) -> Result<toml::Table, ReloadError> {
    toml::Table::try_from(config).map_err(|e| ReloadError::Serialize(e.to_string()))
}

/// The dotted keys whose values differ between two trees (arrays compare
/// as one value), sorted.
fn changed_keys(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    fn walk(old: &toml::Table, new: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            let dotted = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match (old.get(key), new.get(key)) {
                (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                    walk(a, b, &dotted, out)
                }
                (a, b) if a != b => out.push(dotted),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(old, new, "", &mut out);
    out
}

/// Sets `dotted` in `tree` to `value`, or removes it for None.
fn set_key(tree: &mut toml::Table, dotted: &str, value: Option<&toml::Value>) {
    match dotted.split_once('.') {
        None => match value {
            Some(value) => {
                tree.insert(dotted.to_owned(), value.clone());
            }
            None => {
                tree.remove(dotted);
            }
        },
        Some((head, rest)) => {
            if let Some(toml::Value::Table(inner)) = tree.get_mut(head) {
                set_key(inner, rest, value);
            }
        }
    }
}

fn get_key<'t>(tree: &'t toml::Table, dotted: &str) -> Option<&'t toml::Value> {
    match dotted.split_once('.') {
        None => tree.get(dotted),
        Some((head, rest)) => match tree.get(head) {
            Some(toml::Value::Table(inner)) => get_key(inner, rest),
            _ => None,
        },
    }
}

/// What reloading `file` over `running` does: the file's values of the
/// runtime keys, the running values of every other key, validated again
/// as a whole.
pub fn plan(
    running: &crate::config::ValidConfig,
    file: &crate::config::ValidConfig,
) -> Result<ReloadPlan, ReloadError> {
    let old = tree(running)?;
    let new = tree(file)?;
    let changed = changed_keys(&old, &new);
    // TLS paths are runtime keys only while TLS stays on or off.
    let tls_switched = |table: &str| match table {
        "http" => running.http.tls() != file.http.tls(),
        "ws" => running.ws.tls() != file.ws.tls(),
        _ => false,
    };
    let runtime = |key: &str| {
        is_runtime_key(key)
            && !key
                .split_once(".tls_")
                .is_some_and(|(table, _)| tls_switched(table))
    };
    let (applied, not_applied): (Vec<String>, Vec<String>) =
        changed.into_iter().partition(|key| runtime(key));
    let mut merged = new;
    for key in &not_applied {
        set_key(&mut merged, key, get_key(&old, key));
    }
    let config: crate::config::Config = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ReloadError::Serialize(e.to_string()))?;
    let config = config.validate().map_err(ReloadError::Invalid)?;
    Ok(ReloadPlan {
        config,
        applied,
        not_applied,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ValidConfig};

    fn config(text: &str) -> ValidConfig {
        Config::from_toml(text, Path::new("x")).expect("valid")
    }

    #[test]
    fn runtime_keys_exist() {
        let defaults = tree(&Config::default()).expect("tree");
        for key in RUNTIME_KEYS {
            assert!(get_key(&defaults, key).is_some(), "{key} is a config key");
        }
    }

    #[test]
    fn runtime_keys_apply_and_restart_only_keys_are_kept() {
        let running = config("workers = 2\n[udp]\naddress = \"[::]:0\"\n");
        let file = config(
            "workers = 3\nlog_level = \"debug\"\n[udp]\naddress = \"[::]:7\"\n\
             [tracker]\nannounce_interval_secs = 60\n[metrics]\naddress = \"127.0.0.1:1\"\n",
        );
        let plan = plan(&running, &file).expect("plan");
        assert_eq!(
            plan.applied,
            ["log_level", "tracker.announce_interval_secs"]
        );
        assert_eq!(
            plan.not_applied,
            ["metrics.address", "udp.address", "workers"]
        );
        assert_eq!(plan.config.workers, 2);
        assert_eq!(plan.config.udp.address, running.udp.address);
        assert_eq!(plan.config.metrics.address, running.metrics.address);
        assert_eq!(plan.config.tracker.announce_interval_secs, 60);
        assert_eq!(plan.config.log_level, crate::config::LogLevel::Debug);
    }

    #[test]
    fn unchanged_file_changes_nothing() {
        let running = config("[tracker]\nmax_numwant = 10\n");
        let plan = plan(&running, &running.clone()).expect("plan");
        assert!(plan.applied.is_empty() && plan.not_applied.is_empty());
        assert_eq!(plan.config, running);
    }

    #[test]
    fn switching_tls_needs_a_restart_but_moving_the_files_does_not() {
        let plain = config("");
        let tls = |dir: &str| {
            config(&format!(
                "[http]\ntls_certificate_path = \"{dir}/c.pem\"\ntls_private_key_path = \"{dir}/k.pem\"\n"
            ))
        };
        let on = plan(&plain, &tls("/a")).expect("plan");
        assert!(on.applied.is_empty());
        assert!(!on.config.http.tls());
        let moved = plan(&tls("/a"), &tls("/b")).expect("plan");
        assert_eq!(
            moved.applied,
            ["http.tls_certificate_path", "http.tls_private_key_path"]
        );
    }

    #[test]
    fn the_member_list_reloads_but_this_nodes_name_and_listen_address_need_a_restart() {
        let dir = std::env::temp_dir().join(format!("aquatic-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for file in ["key", "ca.pem", "node.pem", "node.key"] {
            std::fs::write(dir.join(file), b"x").expect("file");
        }
        let cluster = |node: &str, listen: u16, members: &str| {
            config(&format!(
                "[cluster]\nenabled = true\nnode = \"{node}\"\nlisten = \"127.0.0.1:{listen}\"\n\
                 members = [{members}]\nkey_file = {key:?}\nca_certificate_path = {ca:?}\n\
                 certificate_path = {cert:?}\nprivate_key_path = {pkey:?}\n",
                key = dir.join("key").display().to_string(),
                ca = dir.join("ca.pem").display().to_string(),
                cert = dir.join("node.pem").display().to_string(),
                pkey = dir.join("node.key").display().to_string(),
            ))
        };
        let a = r#"{ name = "a", address = "127.0.0.1:3100" }"#;
        let b = r#"{ name = "b", address = "127.0.0.1:3200" }"#;
        let c = r#"{ name = "c", address = "127.0.0.1:3300" }"#;
        let running = cluster("a", 3100, &format!("{a}, {b}"));
        let file = cluster("c", 3101, &format!("{a}, {c}"));
        let plan = plan(&running, &file).expect("plan");
        assert_eq!(plan.applied, ["cluster.members"]);
        assert_eq!(plan.not_applied, ["cluster.listen", "cluster.node"]);
        assert_eq!(plan.config.cluster.node, "a");
        assert_eq!(plan.config.cluster.members, file.cluster.members);
        // A list without this node does not go with its running name.
        let without_me = cluster("b", 3100, b);
        assert!(super::plan(&running, &without_me).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_mix_that_does_not_validate_changes_nothing() {
        // With UDP off a scrape may hold 100 hashes; turning UDP off needs
        // a restart, and 100 hashes do not fit a UDP scrape.
        let running = config("[tracker]\nmax_scrape_torrents = 70\n");
        let file = config("[udp]\nenabled = false\n[tracker]\nmax_scrape_torrents = 100\n");
        let err = plan(&running, &file).expect_err("invalid mix");
        assert!(
            err.to_string().contains("tracker.max_scrape_torrents"),
            "{err}"
        );
    }
}
