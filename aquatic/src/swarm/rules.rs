//! The tracker's rules for requests, once for every protocol.
//!
//! A socket adapter turns its wire request into one of the neutral inputs
//! here ([`AnnounceInput`] for UDP and HTTP, a WebTorrent
//! [`AnnounceRequest`](aquatic_ws_protocol::AnnounceRequest), a list of
//! info hashes for a scrape) and [`Rules`] decides: a validated request the
//! shard may apply, or a [`Refusal`] whose text the client gets. The access
//! list, the port, `left`, numwant, scrape sizes and the per-connection
//! peer cap are checked here and nowhere else.

use std::{net::IpAddr, sync::Arc};

use aquatic_common::{access_list::AccessList, InfoHash, PeerId};
use hashbrown::HashSet;

use super::{
    bt::{BtAnnounce, PeerIdUse},
    private::{Catalog, PrivatePeer, User},
    refusal::Refusal,
    ws::{ConnectionRef, WsAnnounce, WsAnswer},
};

/// A UDP or HTTP announce as the protocol crates parse it, before the
/// tracker's rules: the adapters fill it from the wire and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceInput {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The announcing peer.
    pub peer_id: PeerId,
    /// The source address, canonical. Any address inside the request is
    /// ignored: honouring it would let anyone point a swarm at a third party.
    pub ip: IpAddr,
    /// The port the peer says it listens on.
    pub port: u16,
    /// The `stopped` event.
    pub stopped: bool,
    /// The `completed` event.
    pub completed: bool,
    /// `left` as sent: UDP's is signed, HTTP's may be absent.
    pub bytes_left: Option<i64>,
    /// Peers wanted, if the client said (UDP's -1 and 0 mean "not said").
    pub numwant: Option<usize>,
    /// The most peers the reply can carry, if the transport limits it (a
    /// UDP reply must fit one datagram); None: no limit but the config's.
    pub max_peers: Option<usize>,
    /// Set when the announce came to the private tracker.
    pub private: Option<PrivateCredentials>,
    /// Whether the shard keeps the full peer id (HTTP) and this response
    /// shows peer ids (HTTP, non-compact, no `no_peer_id`).
    pub peer_ids: PeerIdUse,
}

/// What a private tracker's announce carries besides a public one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivateCredentials {
    /// The passkey of the path, if there was one.
    pub passkey: Option<aquatic_http_protocol::Passkey>,
    /// `uploaded` as sent.
    pub uploaded: u64,
    /// `downloaded` as sent.
    pub downloaded: u64,
}

impl AnnounceInput {
    /// A BEP 15 announce from `ip`, whose reply has room for `max_peers`.
    pub fn udp(
        request: &aquatic_udp_protocol::AnnounceRequest,
        ip: IpAddr,
        max_peers: usize,
    ) -> Self {
        use aquatic_udp_protocol::AnnounceEvent;
        Self {
            info_hash: request.info_hash,
            peer_id: request.peer_id,
            ip,
            port: request.port,
            stopped: request.event == AnnounceEvent::Stopped,
            completed: request.event == AnnounceEvent::Completed,
            bytes_left: Some(request.bytes_left),
            numwant: usize::try_from(request.peers_wanted)
                .ok()
                .filter(|&n| n > 0),
            max_peers: Some(max_peers),
            private: None,
            peer_ids: PeerIdUse::Hashed,
        }
    }

    /// A BEP 3 announce from `ip`, to the private tracker if `private`.
    pub fn http(
        request: &aquatic_http_protocol::AnnounceRequest,
        ip: IpAddr,
        private: bool,
    ) -> Self {
        use aquatic_http_protocol::AnnounceEvent;
        Self {
            info_hash: request.info_hash,
            peer_id: request.peer_id,
            ip,
            port: request.port,
            stopped: request.event == AnnounceEvent::Stopped,
            completed: request.event == AnnounceEvent::Completed,
            bytes_left: request
                .bytes_left
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            numwant: request.numwant,
            // A response body has no size limit that matters here.
            max_peers: None,
            private: private.then_some(PrivateCredentials {
                passkey: request.passkey,
                uploaded: request.bytes_uploaded,
                downloaded: request.bytes_downloaded,
            }),
            peer_ids: if request.compact || request.no_peer_id {
                PeerIdUse::Kept
            } else {
                PeerIdUse::KeptAndShown
            },
        }
    }
}

/// The limits the rules apply, taken from the configuration once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Peers returned when the client does not say.
    pub default_numwant: usize,
    /// Most peers returned.
    pub max_numwant: usize,
    /// Most info hashes in one scrape.
    pub max_scrape_torrents: usize,
    /// Most offers relayed for one WebTorrent announce.
    pub max_offers: usize,
    /// Most (torrent, peer id) pairs one WebSocket connection may announce.
    pub max_peers_per_connection: usize,
}

impl Limits {
    /// The limits of a validated configuration.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            default_numwant: config.tracker.default_numwant,
            max_numwant: config.tracker.max_numwant,
            max_scrape_torrents: config.tracker.max_scrape_torrents,
            max_offers: config.ws.max_offers,
            max_peers_per_connection: config.ws.max_peers_per_connection,
        }
    }
}

/// The rules one executor applies: its limits and its copy of the access
/// list (replaced when the list is reloaded), and in private mode its copy
/// of the users, torrents and whitelist.
pub struct Rules {
    limits: Limits,
    access_list: Arc<AccessList>,
    catalog: Arc<Catalog>,
}

impl Rules {
    /// Rules with `limits` and `access_list`.
    pub fn new(limits: Limits, access_list: Arc<AccessList>) -> Self {
        Self {
            limits,
            access_list,
            catalog: Arc::new(Catalog::starting()),
        }
    }

    /// Takes reloaded limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Takes a reloaded private catalog.
    pub fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        self.catalog = catalog;
    }

    /// The member a private scrape's passkey names, if they may use the
    /// tracker.
    pub fn private_member(
        &self,
        passkey: Option<&aquatic_http_protocol::Passkey>,
    ) -> Result<User, Refusal> {
        self.catalog.member(passkey)
    }

    /// Takes a reloaded access list.
    pub fn set_access_list(&mut self, access_list: Arc<AccessList>) {
        self.access_list = access_list;
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the access list lets `info_hash` be tracked here (a
    /// handed-back swarm is checked like an announce).
    pub fn torrent_allowed(&self, info_hash: &InfoHash) -> bool {
        self.access_list.allows(info_hash)
    }

    fn allowed(&self, info_hash: &InfoHash) -> Result<(), Refusal> {
        if self.access_list.allows(info_hash) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// Validates a UDP or HTTP announce.
    ///
    /// A negative `left` (BEP 15's field is signed) says nothing true about
    /// the peer, so it counts as unknown: a leecher, unless `completed`.
    /// numwant is capped by `max_numwant` and by what the reply can carry,
    /// before the shard chooses peers, so that the peers sent are a random
    /// choice among all and not the first of a longer list.
    ///
    /// A private announce is checked against the catalog, all in memory:
    /// member, client whitelist, registered torrent, leeching right.
    pub fn bt_announce(&self, input: AnnounceInput) -> Result<BtAnnounce, Refusal> {
        self.allowed(&input.info_hash)?;
        let private = match input.private {
            None => None,
            Some(credentials) => {
                let seeding = input.bytes_left == Some(0);
                let (user, torrent) = self.catalog.check_announce(
                    credentials.passkey.as_ref(),
                    &input.info_hash,
                    &input.peer_id,
                    seeding || input.stopped,
                )?;
                Some(PrivatePeer {
                    user: user.id,
                    torrent: torrent.id,
                    freeleech: torrent.freeleech,
                    uploaded: credentials.uploaded,
                    downloaded: credentials.downloaded,
                })
            }
        };
        if input.port == 0 {
            return Err(Refusal::InvalidPort);
        }
        Ok(BtAnnounce {
            private,
            info_hash: input.info_hash,
            peer_id: input.peer_id,
            ip: input.ip,
            port: input.port,
            stopped: input.stopped,
            completed: input.completed,
            bytes_left: input.bytes_left.and_then(|n| u64::try_from(n).ok()),
            numwant: input
                .numwant
                .unwrap_or(self.limits.default_numwant)
                .min(self.limits.max_numwant)
                .min(input.max_peers.unwrap_or(usize::MAX)),
            peer_ids: input.peer_ids,
        })
    }

    /// Validates a scrape of `info_hashes` (any protocol).
    pub fn scrape(
        &self,
        info_hashes: impl ExactSizeIterator<Item = InfoHash>,
    ) -> Result<(), Refusal> {
        if info_hashes.len() == 0 {
            return Err(Refusal::FullScrape);
        }
        if info_hashes.len() > self.limits.max_scrape_torrents {
            return Err(Refusal::TooManyInfoHashes);
        }
        for hash in info_hashes {
            self.allowed(&hash)?;
        }
        Ok(())
    }

    /// Validates a WebTorrent announce arriving on `connection`, and
    /// records it in the connection's `peers` so that they leave their
    /// swarms when it closes.
    pub fn ws_announce(
        &self,
        request: aquatic_ws_protocol::AnnounceRequest,
        connection: ConnectionRef,
        peers: &mut ConnectionPeers,
    ) -> Result<WsAnnounce, Refusal> {
        use aquatic_ws_protocol::AnnounceEvent;
        let info_hash = request.info_hash;
        self.allowed(&info_hash)?;
        let stopped = request.event == AnnounceEvent::Stopped;
        // The JavaScript client shares one socket among all its torrents
        // and clients, so one connection may hold several peers, even in
        // one torrent.
        let key = (info_hash, request.peer_id);
        // Only a complete relay (answer, to_peer_id and offer_id) leaves
        // the swarm as it is; anything else may insert the peer, so it is
        // recorded for close cleanup whatever the message's shape.
        let answer = match (request.answer, request.to_peer_id, request.offer_id) {
            (Some(answer), Some(to_peer_id), Some(offer_id)) => Some(WsAnswer {
                to_peer_id,
                offer_id,
                answer,
            }),
            _ => None,
        };
        // A stop leaves the record alone here: the router forgets the key
        // once the stop has reached the owner (ConnectionPeers::forget), so
        // a stop lost to a full mesh still leaves the peer to the close.
        if answer.is_none() && !stopped && !peers.announced.contains(&key) {
            if peers.announced.len() >= self.limits.max_peers_per_connection {
                return Err(Refusal::TooManyPeersOnConnection);
            }
            peers.announced.insert(key);
        }
        let max_offers = self.limits.max_offers;
        let numwant = request.numwant.unwrap_or(max_offers).min(max_offers);
        let offers = request
            .offers
            .unwrap_or_default()
            .into_iter()
            .take(numwant)
            .map(|o| (o.offer_id, o.offer))
            .collect();
        Ok(WsAnnounce {
            info_hash,
            peer_id: request.peer_id,
            connection,
            stopped,
            completed: request.event == AnnounceEvent::Completed,
            bytes_left: request.bytes_left,
            offers,
            numwant,
            answer,
        })
    }
}

/// The peers one WebSocket connection announced, so that they can leave
/// every swarm when it closes.
#[derive(Debug, Default)]
pub struct ConnectionPeers {
    announced: HashSet<(InfoHash, PeerId)>,
}

impl ConnectionPeers {
    /// Every (torrent, peer id) pair announced and not stopped, emptying
    /// the record.
    pub fn take(&mut self) -> Vec<(InfoHash, PeerId)> {
        self.announced.drain().collect()
    }

    /// Forgets a pair whose `stopped` reached its shard.
    pub fn forget(&mut self, info_hash: InfoHash, peer_id: PeerId) {
        self.announced.remove(&(info_hash, peer_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aquatic_common::access_list::AccessListMode;

    fn rules(list: &str, mode: AccessListMode) -> Rules {
        let limits = Limits::from_config(&crate::config::Config::default());
        let list = AccessList::parse(mode, list).expect("list");
        Rules::new(limits, Arc::new(list))
    }

    fn input() -> AnnounceInput {
        AnnounceInput {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([2; 20]),
            ip: IpAddr::from([127, 0, 0, 1]),
            port: 6881,
            stopped: false,
            completed: false,
            bytes_left: Some(10),
            numwant: None,
            max_peers: None,
            private: None,
            peer_ids: PeerIdUse::Hashed,
        }
    }

    #[test]
    fn announces_are_validated_once_for_every_protocol() {
        let r = rules("", AccessListMode::Off);
        let ok = r.bt_announce(input()).expect("valid");
        assert_eq!((ok.numwant, ok.bytes_left), (50, Some(10)));
        let port0 = AnnounceInput { port: 0, ..input() };
        assert_eq!(r.bt_announce(port0), Err(Refusal::InvalidPort));
        let negative = AnnounceInput {
            bytes_left: Some(-1),
            ..input()
        };
        assert_eq!(r.bt_announce(negative).expect("valid").bytes_left, None);
        let greedy = AnnounceInput {
            numwant: Some(usize::MAX),
            ..input()
        };
        assert_eq!(r.bt_announce(greedy).expect("valid").numwant, 100);
    }

    #[test]
    fn numwant_is_capped_by_what_the_reply_can_carry() {
        let r = rules("", AccessListMode::Off);
        let capped = |numwant, max_peers| {
            let input = AnnounceInput {
                numwant,
                max_peers,
                ..input()
            };
            r.bt_announce(input).expect("valid").numwant
        };
        assert_eq!(capped(Some(90), Some(79)), 79);
        assert_eq!(capped(None, Some(20)), 20, "the default too");
        assert_eq!(capped(Some(90), Some(200)), 90, "below the cap: as asked");
        assert_eq!(capped(Some(500), Some(242)), 100, "max_numwant still caps");
    }

    #[test]
    fn access_list_applies_to_announces_and_every_scraped_hash() {
        let allowed = "0101010101010101010101010101010101010101\n";
        let r = rules(allowed, AccessListMode::Allow);
        assert!(r.bt_announce(input()).is_ok());
        let other = AnnounceInput {
            info_hash: InfoHash([9; 20]),
            ..input()
        };
        assert_eq!(r.bt_announce(other), Err(Refusal::NotAllowed));
        assert!(r.scrape([InfoHash([1; 20])].into_iter()).is_ok());
        assert_eq!(
            r.scrape([InfoHash([1; 20]), InfoHash([9; 20])].into_iter()),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(r.scrape(std::iter::empty()), Err(Refusal::FullScrape));
        assert_eq!(
            r.scrape(vec![InfoHash([1; 20]); 71].into_iter()),
            Err(Refusal::TooManyInfoHashes)
        );
    }

    #[test]
    fn refusal_texts_are_the_wire_texts() {
        for r in [
            Refusal::NotAllowed,
            Refusal::InvalidPort,
            Refusal::TooManyPeersOnConnection,
            Refusal::TooManyInfoHashes,
            Refusal::FullScrape,
            Refusal::PeerIdInUse,
            Refusal::UnknownPasskey,
        ] {
            assert_eq!(r.to_string(), r.failure_reason());
        }
    }
}
