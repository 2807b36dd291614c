//! Stateless BEP 15 connection ids.
//!
//! A connection id is `valid_until (4 bytes) || keyed_hash(valid_until, ip) (4 bytes)`
//! with a random per-process key. Checking one needs no table, so there is
//! nothing to clean and nothing for a flood of connect requests to fill.
//! The source port is left out on purpose: NATs may move it between connect
//! and announce.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    net::IpAddr,
    time::Duration,
};

use crate::time::SecondsSinceStart;

/// Creates and checks connection ids. Clone it into every executor: clones
/// share the key, so any executor accepts ids made by any other.
#[derive(Clone, Debug)]
pub struct ConnectionIdValidator {
    // SipHash-1-3 keyed from the OS's randomness, as std's RandomState is.
    key: std::collections::hash_map::RandomState,
    max_age: u32,
}

impl ConnectionIdValidator {
    /// A validator with a fresh random key; ids are valid for `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self {
            key: std::collections::hash_map::RandomState::new(),
            max_age: max_age.as_secs().clamp(1, u32::MAX as u64) as u32,
        }
    }

    fn tag(&self, valid_until: u32, ip: IpAddr) -> [u8; 4] {
        let mut h = self.key.build_hasher();
        valid_until.hash(&mut h);
        ip.hash(&mut h);
        (h.finish() as u32).to_be_bytes()
    }

    /// A connection id for `ip`, issued at `now`.
    pub fn create(&self, ip: IpAddr, now: SecondsSinceStart) -> [u8; 8] {
        let valid_until = now.0.saturating_add(self.max_age);
        let mut id = [0u8; 8];
        id[..4].copy_from_slice(&valid_until.to_be_bytes());
        id[4..].copy_from_slice(&self.tag(valid_until, ip));
        id
    }

    /// Whether `id` was issued by this process to `ip` and has not expired at `now`.
    pub fn is_valid(&self, id: [u8; 8], ip: IpAddr, now: SecondsSinceStart) -> bool {
        let mut until = [0u8; 4];
        until.copy_from_slice(&id[..4]);
        let valid_until = u32::from_be_bytes(until);
        // An expiry further out than we ever issue is forged.
        if valid_until < now.0 || valid_until > now.0.saturating_add(self.max_age) {
            return false;
        }
        id[4..] == self.tag(valid_until, ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn valid_for_max_age_only() {
        let v = ConnectionIdValidator::new(Duration::from_secs(120));
        let id = v.create(IP, SecondsSinceStart(1000));
        assert!(v.is_valid(id, IP, SecondsSinceStart(1000)));
        assert!(v.is_valid(id, IP, SecondsSinceStart(1120)));
        assert!(!v.is_valid(id, IP, SecondsSinceStart(1121)));
    }

    #[test]
    fn bound_to_ip_and_key() {
        let v = ConnectionIdValidator::new(Duration::from_secs(120));
        let now = SecondsSinceStart(5);
        let id = v.create(IP, now);
        assert!(!v.is_valid(id, IpAddr::V6(Ipv6Addr::LOCALHOST), now));
        assert!(v.clone().is_valid(id, IP, now));
        let other = ConnectionIdValidator::new(Duration::from_secs(120));
        assert!(!other.is_valid(id, IP, now));
    }

    #[test]
    fn forged_ids_refused() {
        let v = ConnectionIdValidator::new(Duration::from_secs(120));
        let now = SecondsSinceStart(5);
        assert!(!v.is_valid([0; 8], IP, now));
        assert!(!v.is_valid([0xff; 8], IP, now));
        let mut id = v.create(IP, now);
        id[7] ^= 1;
        assert!(!v.is_valid(id, IP, now));
    }
}
