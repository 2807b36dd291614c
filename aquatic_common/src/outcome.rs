//! What a shard answers, before any protocol shapes it.
//!
//! The shard's results are protocol-neutral; each protocol crate owns the
//! conversion of these types into its own wire types (`From` impls beside
//! its response types), so no adapter maps fields by hand.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::PeerId;

/// A peer chosen for an announce response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SelectedPeer<A> {
    /// The peer's full id, when the shard keeps it (peers that announced
    /// over HTTP) and the requester's response shows ids (HTTP
    /// non-compact); None otherwise.
    pub peer_id: Option<PeerId>,
    /// [`Ipv4Addr`] or [`Ipv6Addr`].
    pub ip_address: A,
    /// The port the peer listens on.
    pub port: u16,
}

/// The peers chosen for one announce, by IP family.
///
/// Reused from request to request (cleared by the shard before it fills
/// them), so that answering allocates nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectedPeers {
    /// IPv4 peers, for IPv4 requesters.
    pub v4: Vec<SelectedPeer<Ipv4Addr>>,
    /// IPv6 peers, for IPv6 requesters.
    pub v6: Vec<SelectedPeer<Ipv6Addr>>,
}

impl SelectedPeers {
    /// Empties both lists, keeping their memory.
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
}

/// The counts in an announce response (both IP families).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnnounceOutcome {
    /// Seeders of the torrent.
    pub seeders: usize,
    /// Leechers of the torrent.
    pub leechers: usize,
}

/// Scrape figures of one torrent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    /// Peers with the whole torrent.
    pub seeders: usize,
    /// Peers still downloading.
    pub leechers: usize,
    /// Completed downloads seen.
    pub completed: u32,
}

/// Seeders and leechers over many swarms, kept up to date as peers come
/// and go, so that reading them costs nothing (metrics read them every
/// second; walking every torrent would not scale).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Seeders.
    pub seeders: usize,
    /// Leechers.
    pub leechers: usize,
}

impl PeerCounts {
    /// Seeders and leechers together.
    pub fn total(&self) -> usize {
        self.seeders + self.leechers
    }

    /// Accounts for one peer whose standing went from `before` to `after`
    /// (`None`: absent).
    pub fn change(
        &mut self,
        before: Option<crate::swarm::PeerStatus>,
        after: Option<crate::swarm::PeerStatus>,
    ) {
        use crate::swarm::PeerStatus::{Leeching, Seeding, Stopped};
        match before {
            Some(Seeding) => self.seeders = self.seeders.saturating_sub(1),
            Some(Leeching) => self.leechers = self.leechers.saturating_sub(1),
            Some(Stopped) | None => {}
        }
        match after {
            Some(Seeding) => self.seeders += 1,
            Some(Leeching) => self.leechers += 1,
            Some(Stopped) | None => {}
        }
    }

    /// Accounts for peers removed in bulk (expiry).
    pub fn remove(&mut self, removed: PeerCounts) {
        self.seeders = self.seeders.saturating_sub(removed.seeders);
        self.leechers = self.leechers.saturating_sub(removed.leechers);
    }
}

impl std::ops::AddAssign for PeerCounts {
    fn add_assign(&mut self, other: Self) {
        self.seeders += other.seeders;
        self.leechers += other.leechers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::PeerStatus::*;

    #[test]
    fn counts_follow_changes() {
        let mut c = PeerCounts::default();
        c.change(None, Some(Leeching));
        c.change(None, Some(Leeching));
        c.change(Some(Leeching), Some(Seeding));
        assert_eq!(
            c,
            PeerCounts {
                seeders: 1,
                leechers: 1
            }
        );
        c.change(Some(Seeding), Some(Stopped));
        c.remove(PeerCounts {
            seeders: 0,
            leechers: 1,
        });
        assert_eq!(c, PeerCounts::default());
    }
}
