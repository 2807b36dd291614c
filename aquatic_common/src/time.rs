//! A coarse monotonic clock measured in seconds since the server started.
//!
//! Expiry times are stored as `u32` seconds so that peers stay small; the
//! runtime reads the clock once per batch of requests and passes `now` down,
//! which keeps the swarm logic deterministic in tests.

use std::time::{Duration, Instant};

/// The instant the server started: the zero of [`SecondsSinceStart`].
#[derive(Clone, Copy, Debug)]
pub struct ServerStartInstant(Instant);

impl ServerStartInstant {
    /// Marks now as the start.
    pub fn new() -> Self {
        Self(Instant::now())
    }

    /// Seconds elapsed since the start.
    pub fn seconds_elapsed(&self) -> SecondsSinceStart {
        SecondsSinceStart(self.0.elapsed().as_secs().min(u32::MAX as u64) as u32)
    }
}

impl Default for ServerStartInstant {
    fn default() -> Self {
        Self::new()
    }
}

/// A point in time, in whole seconds since the server started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SecondsSinceStart(pub u32);

impl SecondsSinceStart {
    /// This point plus `d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(d.as_secs().min(u32::MAX as u64) as u32),
        )
    }
}

/// The time after which a record (a peer, a connection id) is no longer valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValidUntil(pub SecondsSinceStart);

impl ValidUntil {
    /// Valid until `now + ttl`.
    pub fn after(now: SecondsSinceStart, ttl: Duration) -> Self {
        Self(now.plus(ttl))
    }

    /// Still valid at `now`.
    pub fn valid_at(&self, now: SecondsSinceStart) -> bool {
        self.0 >= now
    }
}

/// Wall-clock time in whole seconds since the Unix epoch: the clock of
/// anything that must mean the same on another node or after a restart
/// (connection ids, snapshot ages). `u32` lasts until 2106.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixSeconds(pub u32);

impl UnixSeconds {
    /// The system clock now; a clock set before 1970 reads as 0.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self(secs.min(u32::MAX as u64) as u32)
    }
}
