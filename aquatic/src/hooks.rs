//! Faults on demand for the end-to-end tests that need one (a panic in a
//! task, a stalled mesh, the executor holding a connection). Compiled only
//! with the `test-hooks` feature, which only those tests enable: the binary
//! operators run has none of this, and a test checks that the marker
//! string below is absent from it.

use std::sync::atomic::{AtomicBool, Ordering};

use aquatic_common::ShardId;

/// Every hook's trigger starts with this.
pub const MARKER: &str = "aquatic-test-hook";

/// A UDP datagram or WebSocket text that makes its task panic.
const PANIC: &[u8] = b"aquatic-test-hook:panic";
/// A UDP datagram after which no executor reads its mesh channels.
const STALL_MESH: &[u8] = b"aquatic-test-hook:stall-mesh";
/// A UDP datagram after which they read them again.
const RESUME_MESH: &[u8] = b"aquatic-test-hook:resume-mesh";
/// A UDP datagram after which no cluster link writes its queue (the
/// queues fill; heartbeats still join them).
const STALL_LINKS: &[u8] = b"aquatic-test-hook:stall-links";
/// A WebSocket text answered with the executor that holds the connection.
const EXECUTOR: &[u8] = b"aquatic-test-hook:executor";

static MESH_STALLED: AtomicBool = AtomicBool::new(false);
static LINKS_STALLED: AtomicBool = AtomicBool::new(false);

/// The reply to a stall or resume datagram, sent once the hook has taken
/// effect, so that a test waits on it instead of sleeping.
pub const ACK: &[u8] = b"aquatic-test-hook:ok";

/// Acts on a hook datagram; true if `bytes` was one (then it gets [`ACK`]
/// as its only reply).
pub fn udp_datagram(bytes: &[u8], executor: ShardId) -> bool {
    if bytes == PANIC {
        panic!("test hook: panic requested on executor {}", executor.0);
    }
    if bytes == STALL_MESH {
        log::warn!("test hook: every executor stops reading the mesh");
        MESH_STALLED.store(true, Ordering::Relaxed);
        return true;
    }
    if bytes == STALL_LINKS {
        log::warn!("test hook: cluster links stop writing");
        LINKS_STALLED.store(true, Ordering::Relaxed);
        return true;
    }
    if bytes == RESUME_MESH {
        log::warn!("test hook: every executor reads the mesh again");
        MESH_STALLED.store(false, Ordering::Relaxed);
        return true;
    }
    false
}

/// Panics on `GET /aquatic-test-hook/panic`.
pub fn http_request(buffered: &[u8]) {
    if buffered.starts_with(b"GET /aquatic-test-hook/panic ") {
        panic!("test hook: panic requested in an http connection task");
    }
}

/// Acts on a hook text; `Some(reply)` if `text` was one.
pub fn ws_text(text: &str, executor: ShardId) -> Option<String> {
    match text.as_bytes() {
        PANIC => panic!("test hook: panic requested in a ws connection task"),
        EXECUTOR => Some(format!("{{\"test_hook_executor\":{}}}", executor.0)),
        _ => None,
    }
}

/// Whether the mesh-receiving tasks must pause.
pub fn mesh_stalled() -> bool {
    MESH_STALLED.load(Ordering::Relaxed)
}

/// Whether the cluster links' writers must pause.
pub fn links_stalled() -> bool {
    LINKS_STALLED.load(Ordering::Relaxed)
}
