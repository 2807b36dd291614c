//! Why the tracker refuses a request: one list for every protocol, with
//! the exact text each client reads.

/// Why a request is refused. The display text is the failure reason the
/// client reads; it is part of the wire protocol and never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The access list does not let the info hash (or one of a scrape's
    /// hashes) through.
    #[error("info hash not allowed")]
    NotAllowed,
    /// A BitTorrent announce for port 0: nobody could connect to the peer.
    #[error("invalid port")]
    InvalidPort,
    /// A WebSocket connection already announced as many peers as allowed.
    #[error("too many torrents on one connection")]
    TooManyPeersOnConnection,
    /// A scrape for more torrents than allowed.
    #[error("too many info hashes")]
    TooManyInfoHashes,
    /// A scrape for no torrent at all (a "full scrape").
    #[error("full scrapes are not supported")]
    FullScrape,
    /// A WebTorrent announce for a peer id another live connection holds:
    /// nobody may stop, move or take over another client's peer.
    #[error("peer id in use by another connection")]
    PeerIdInUse,
    /// Private mode: no load of users and torrents has succeeded yet.
    #[error("tracker is starting, try again shortly")]
    TrackerStarting,
    /// Private mode: `/announce` or `/scrape` without a passkey.
    #[error("passkey required: use /<passkey>/announce")]
    PasskeyRequired,
    /// Private mode: nobody has this passkey (or it was changed).
    #[error("unknown passkey")]
    UnknownPasskey,
    /// Private mode: the member's account is disabled.
    #[error("your account is disabled")]
    UserDisabled,
    /// Private mode: the info hash is not a registered torrent.
    #[error("torrent not registered with this tracker")]
    TorrentNotRegistered,
    /// Private mode: the peer id's prefix is not on the client whitelist.
    #[error("your client is not on the whitelist")]
    ClientNotWhitelisted,
    /// Private mode: the member may only seed.
    #[error("leeching is not allowed for your account")]
    LeechingNotAllowed,
}

impl Refusal {
    /// Every refusal, in [`Refusal::index`] order.
    pub const ALL: [Refusal; 13] = [
        Self::NotAllowed,
        Self::InvalidPort,
        Self::TooManyPeersOnConnection,
        Self::TooManyInfoHashes,
        Self::FullScrape,
        Self::PeerIdInUse,
        Self::TrackerStarting,
        Self::PasskeyRequired,
        Self::UnknownPasskey,
        Self::UserDisabled,
        Self::TorrentNotRegistered,
        Self::ClientNotWhitelisted,
        Self::LeechingNotAllowed,
    ];

    /// Its position in [`Refusal::ALL`] (for per-refusal counters).
    pub fn index(self) -> usize {
        match self {
            Self::NotAllowed => 0,
            Self::InvalidPort => 1,
            Self::TooManyPeersOnConnection => 2,
            Self::TooManyInfoHashes => 3,
            Self::FullScrape => 4,
            Self::PeerIdInUse => 5,
            Self::TrackerStarting => 6,
            Self::PasskeyRequired => 7,
            Self::UnknownPasskey => 8,
            Self::UserDisabled => 9,
            Self::TorrentNotRegistered => 10,
            Self::ClientNotWhitelisted => 11,
            Self::LeechingNotAllowed => 12,
        }
    }

    /// Its name in metrics.
    pub fn kind(self) -> &'static str {
        match self {
            Self::NotAllowed => "not_allowed",
            Self::InvalidPort => "invalid_port",
            Self::TooManyPeersOnConnection => "too_many_peers_on_connection",
            Self::TooManyInfoHashes => "too_many_info_hashes",
            Self::FullScrape => "full_scrape",
            Self::PeerIdInUse => "peer_id_in_use",
            Self::TrackerStarting => "tracker_starting",
            Self::PasskeyRequired => "passkey_required",
            Self::UnknownPasskey => "unknown_passkey",
            Self::UserDisabled => "user_disabled",
            Self::TorrentNotRegistered => "torrent_not_registered",
            Self::ClientNotWhitelisted => "client_not_whitelisted",
            Self::LeechingNotAllowed => "leeching_not_allowed",
        }
    }

    /// The text the client gets.
    pub fn failure_reason(self) -> &'static str {
        match self {
            Self::NotAllowed => "info hash not allowed",
            Self::InvalidPort => "invalid port",
            Self::TooManyPeersOnConnection => "too many torrents on one connection",
            Self::TooManyInfoHashes => "too many info hashes",
            Self::FullScrape => "full scrapes are not supported",
            Self::PeerIdInUse => "peer id in use by another connection",
            Self::TrackerStarting => "tracker is starting, try again shortly",
            Self::PasskeyRequired => "passkey required: use /<passkey>/announce",
            Self::UnknownPasskey => "unknown passkey",
            Self::UserDisabled => "your account is disabled",
            Self::TorrentNotRegistered => "torrent not registered with this tracker",
            Self::ClientNotWhitelisted => "your client is not on the whitelist",
            Self::LeechingNotAllowed => "leeching is not allowed for your account",
        }
    }

    /// Whether the refusal is an answer about the request's subject (the
    /// torrent or the member) rather than a malformed request: sent with
    /// status 200, since many clients (libtorrent among them) read the
    /// failure reason of a 200 only.
    pub fn is_answer(self) -> bool {
        !matches!(
            self,
            Self::InvalidPort
                | Self::TooManyPeersOnConnection
                | Self::TooManyInfoHashes
                | Self::FullScrape
                | Self::PeerIdInUse
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_own_place_and_name() {
        for (i, refusal) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(refusal.index(), i);
            assert_eq!(refusal.to_string(), refusal.failure_reason());
        }
        let mut kinds: Vec<_> = Refusal::ALL.iter().map(|r| r.kind()).collect();
        kinds.dedup();
        assert_eq!(kinds.len(), Refusal::ALL.len());
    }
}
