//! The shard host: one executor's torrents and the synchronous handler of
//! every request for them.
//!
//! ```text
//!   router (glommio glue) ──ShardRequest──> ShardHost::handle(now, request, effects)
//!                                              │ rules (swarm::Rules), BtShard, WsShard
//!                                              v
//!                 Effects: answer a UDP client · reply to an executor ·
//!                          deliver a message to a WebSocket connection
//! ```
//!
//! After quinn-proto's `Endpoint::handle`: the host never touches a socket
//! or a channel, it says what should happen and the glue does it. The
//! effects come out through a sink ([`Effects`]) rather than a returned
//! list so that the chosen peers are lent, not copied into an allocation
//! per request. Everything here is synchronous and deterministic given the
//! clock and the RNG, and tested without glommio.

use std::{cell::RefCell, net::SocketAddr, sync::Arc, time::Duration};

use aquatic_common::{
    access_list::AccessList,
    time::{SecondsSinceStart, ValidUntil},
    AnnounceOutcome, InfoHash, PeerCounts, PeerId, ScrapeStats, SelectedPeers, ShardId,
};
use aquatic_udp_protocol::TransactionId;
use aquatic_ws_protocol::OwnedOutMessage;
use rand::{rngs::SmallRng, SeedableRng};

use crate::{
    config::Config,
    swarm::{
        private::{Batch, Catalog, Ledger},
        BtAnnounce, BtPeerEntry, BtShard, CleanCursor, CleanReport, ConnectionRef, Limits, Rules,
        SwarmKind, WsAnnounce, WsShard, WsTiming,
    },
};

/// Where the answer to a request from another executor goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyAddress {
    /// The executor that asked.
    pub origin: ShardId,
    /// The asker's name for the answer.
    pub token: u64,
}

/// Who gets the answer to an announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceReplyTo {
    /// A UDP client, answered from this executor's own socket (same local
    /// address), which saves the way back.
    Udp {
        /// The client.
        client: SocketAddr,
        /// Its transaction id.
        transaction_id: TransactionId,
    },
    /// The executor that holds the client's connection (HTTP).
    Executor(ReplyAddress),
}

/// Work another executor sends to the owner of a torrent.
#[derive(Debug)]
pub enum ShardRequest {
    /// A validated UDP or HTTP announce.
    Announce {
        /// The announce.
        request: BtAnnounce,
        /// Who gets the answer.
        reply_to: AnnounceReplyTo,
    },
    /// The part of a scrape whose hashes this shard owns.
    Scrape {
        /// Which swarms.
        kind: SwarmKind,
        /// The hashes, in the order the answer keeps.
        hashes: Vec<InfoHash>,
        /// Who gets the figures.
        reply_to: ReplyAddress,
    },
    /// A validated WebTorrent announce; what it causes goes straight to
    /// the connections concerned.
    WsAnnounce(WsAnnounce),
    /// A WebSocket connection closed: its peers leave these swarms.
    WsClosed {
        /// The connection that closed.
        connection: ConnectionRef,
        /// Each torrent it announced in, with the peer id it used.
        peers: Vec<(InfoHash, PeerId)>,
    },
}

/// What handling a request makes happen; the glue around the host does it.
pub trait Effects {
    /// Send a UDP client its announce response.
    fn answer_udp(
        &mut self,
        client: SocketAddr,
        transaction_id: TransactionId,
        outcome: &AnnounceOutcome,
        peers: &SelectedPeers,
    );
    /// Send another executor the answer to its announce.
    fn reply_announce(&mut self, to: ReplyAddress, outcome: AnnounceOutcome, peers: &SelectedPeers);
    /// Send another executor its part of a scrape.
    fn reply_scrape(&mut self, to: ReplyAddress, stats: Vec<ScrapeStats>);
    /// Hand a message to a WebSocket connection, here or on its executor.
    fn deliver(&mut self, connection: ConnectionRef, message: OwnedOutMessage);
}

/// Figures for the metrics endpoint, all O(1) to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostGauges {
    /// BitTorrent torrents held.
    pub bt_torrents: usize,
    /// BitTorrent peers held.
    pub bt_peers: PeerCounts,
    /// Slots of the BitTorrent torrent map.
    pub bt_capacity: usize,
    /// WebTorrent torrents held.
    pub ws_torrents: usize,
    /// WebTorrent peers held.
    pub ws_peers: PeerCounts,
    /// Slots of the WebTorrent torrent map.
    pub ws_capacity: usize,
    /// WebTorrent announces refused so far: the peer id was another
    /// connection's.
    pub ws_peer_id_in_use: u64,
}

/// Where a cleaning pass in slices ([`ShardHost::clean_slice`]) goes on.
#[derive(Debug, Default)]
pub struct HostCleaning {
    /// The public swarms are done; the cursor is in the private ones.
    public_done: bool,
    cursor: CleanCursor,
    /// The public swarms' report, once they are done.
    bt: CleanReport,
}

/// One executor's shard of the torrents, with the rules it applies.
pub struct ShardHost {
    bt: BtShard,
    ws: WsShard,
    /// The private tracker's swarms: public listeners never see them.
    private_bt: BtShard,
    /// The private swarms' accounting.
    ledger: Ledger,
    rules: Rules,
    rng: SmallRng,
    peer_timeout: Duration,
    ws_timing: WsTiming,
    /// Peers chosen for requests from other executors, reused.
    scratch: SelectedPeers,
    /// WebTorrent announces refused for a peer id held by another connection.
    ws_refused: u64,
}

impl ShardHost {
    /// An empty shard under `config`'s rules.
    pub fn new(config: &Config, access_list: Arc<AccessList>, rng: SmallRng) -> Self {
        Self {
            bt: BtShard::new(
                config.tracker.peer_timeout(),
                config.tracker.cleaning_interval(),
            ),
            ws: WsShard::default(),
            private_bt: BtShard::new(
                config.tracker.peer_timeout(),
                config.tracker.cleaning_interval(),
            ),
            ledger: Ledger::default(),
            rules: Rules::new(Limits::from_config(config), access_list),
            rng,
            peer_timeout: config.tracker.peer_timeout(),
            ws_timing: WsTiming {
                peer_timeout: config.tracker.peer_timeout(),
                announce_interval: config.ws.announce_interval_secs,
            },
            scratch: SelectedPeers::default(),
            ws_refused: 0,
        }
    }

    /// The same empty shard hashing peer ids with `key`, the process's one
    /// key (snapshot records then match whichever shard restores them).
    pub fn with_peer_id_key(mut self, key: crate::swarm::PeerIdKey) -> Self {
        self.bt = self.bt.with_peer_id_key(key);
        self.private_bt = self.private_bt.with_peer_id_key(key);
        self
    }

    /// An empty shard with a random RNG.
    pub fn from_entropy(config: &Config, access_list: Arc<AccessList>) -> Self {
        Self::new(config, access_list, SmallRng::from_entropy())
    }

    /// The rules requests are checked against before they are routed.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Takes a reloaded configuration's rules: limits, peer timeout and
    /// the WebTorrent interval. The swarms stay as they are.
    pub fn apply_config(&mut self, config: &Config) {
        self.rules.set_limits(Limits::from_config(config));
        self.peer_timeout = config.tracker.peer_timeout();
        self.ws_timing = WsTiming {
            peer_timeout: config.tracker.peer_timeout(),
            announce_interval: config.ws.announce_interval_secs,
        };
    }

    /// Takes a reloaded access list.
    pub fn set_access_list(&mut self, access_list: Arc<AccessList>) {
        self.rules.set_access_list(access_list);
    }

    /// Takes a reloaded private catalog.
    pub fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        self.rules.set_catalog(catalog);
    }

    /// Applies a UDP or HTTP announce for a torrent this shard owns; the
    /// chosen peers land in `out`. A private announce goes to the private
    /// swarms and is accounted.
    pub fn announce(
        &mut self,
        now: SecondsSinceStart,
        request: &BtAnnounce,
        out: &mut SelectedPeers,
    ) -> AnnounceOutcome {
        let Some(peer) = &request.private else {
            return self
                .bt
                .announce(self.peer_timeout, now, &mut self.rng, request, out);
        };
        let outcome = self
            .private_bt
            .announce(self.peer_timeout, now, &mut self.rng, request, out);
        self.ledger.record(
            now,
            self.peer_timeout,
            request.info_hash,
            request.peer_id,
            peer,
            request.ip,
            request.port,
            request.stopped,
            request.completed,
            request.bytes_left,
        );
        outcome
    }

    /// Takes the private accounting gathered since the last drain.
    pub fn drain_private(&mut self) -> Batch {
        let swarms = &self.private_bt;
        self.ledger.drain(|hash| {
            let s = swarms.scrape(hash);
            PeerCounts {
                seeders: s.seeders,
                leechers: s.leechers,
            }
        })
    }

    /// Puts back accounting that could not be handed to the database
    /// thread; it goes with the next drain.
    pub fn restore_private(&mut self, batch: Batch) {
        self.ledger.restore(batch);
    }

    /// Scrape figures of one torrent this shard owns.
    pub fn scrape(&self, kind: SwarmKind, info_hash: &InfoHash) -> ScrapeStats {
        match kind {
            SwarmKind::Bt => self.bt.scrape(info_hash),
            SwarmKind::Ws => self.ws.scrape(info_hash),
            SwarmKind::Private => self.private_bt.scrape(info_hash),
        }
    }

    /// Applies a WebTorrent announce for a torrent this shard owns. A
    /// refusal (the peer id belongs to another connection) is delivered to
    /// the announcing connection as an error and counted.
    pub fn ws_announce(
        &mut self,
        now: SecondsSinceStart,
        request: WsAnnounce,
        mut deliver: impl FnMut(ConnectionRef, OwnedOutMessage),
    ) {
        let (connection, info_hash) = (request.connection, request.info_hash);
        let result = self
            .ws
            .announce(self.ws_timing, now, &mut self.rng, request, &mut deliver);
        if let Err(refusal) = result {
            self.ws_refused += 1;
            let error = OwnedOutMessage::Error {
                failure_reason: refusal.failure_reason().to_owned(),
                action: Some("announce".to_owned()),
                info_hash: Some(info_hash),
            };
            deliver(connection, error);
        }
    }

    /// Removes the peers a closed connection held in this shard's swarms.
    pub fn ws_disconnect(&mut self, connection: ConnectionRef, peers: &[(InfoHash, PeerId)]) {
        for (hash, peer_id) in peers {
            self.ws.disconnect(hash, peer_id, connection);
        }
    }

    /// Removes the WebTorrent peers whose connections lived on cluster
    /// member `node`, which left the live set. Returns how many.
    pub fn ws_drop_node(&mut self, node: u32) -> usize {
        self.ws.drop_node(node)
    }

    /// Handles a request another executor sent.
    pub fn handle(
        &mut self,
        now: SecondsSinceStart,
        request: ShardRequest,
        effects: &mut impl Effects,
    ) {
        match request {
            ShardRequest::Announce { request, reply_to } => {
                let mut peers = std::mem::take(&mut self.scratch);
                let outcome = self.announce(now, &request, &mut peers);
                match reply_to {
                    AnnounceReplyTo::Udp {
                        client,
                        transaction_id,
                    } => effects.answer_udp(client, transaction_id, &outcome, &peers),
                    AnnounceReplyTo::Executor(to) => effects.reply_announce(to, outcome, &peers),
                }
                self.scratch = peers;
            }
            ShardRequest::Scrape {
                kind,
                hashes,
                reply_to,
            } => {
                let stats = hashes.iter().map(|h| self.scrape(kind, h)).collect();
                effects.reply_scrape(reply_to, stats);
            }
            ShardRequest::WsAnnounce(request) => {
                self.ws_announce(now, request, |c, m| effects.deliver(c, m));
            }
            ShardRequest::WsClosed { connection, peers } => {
                self.ws_disconnect(connection, &peers);
            }
        }
    }

    /// The public UDP and HTTP torrents held (a cluster node looks for the
    /// ones a rejoining member owns).
    pub fn bt_info_hashes(&self) -> Vec<InfoHash> {
        self.bt.info_hashes()
    }

    /// Removes a public torrent this node no longer owns, appending its
    /// peers to `out`; its `completed` count, None when not held.
    pub fn bt_take(
        &mut self,
        now: SecondsSinceStart,
        info_hash: &InfoHash,
        out: &mut Vec<BtPeerEntry>,
    ) -> Option<u32> {
        self.bt.take(info_hash, now, out)
    }

    /// Merges a swarm another member hands back (see
    /// [`BtShard::merge_handback`]) under this node's rules: a torrent the
    /// access list refuses is not taken, nor a peer on port 0, and no peer
    /// lives longer than this node's peer timeout. Returns the peers put
    /// in or refreshed.
    pub fn bt_merge_handback(
        &mut self,
        now: SecondsSinceStart,
        info_hash: InfoHash,
        completed: u32,
        mut peers: Vec<BtPeerEntry>,
    ) -> usize {
        if !self.rules.torrent_allowed(&info_hash) {
            return 0;
        }
        let longest = ValidUntil::after(now, self.peer_timeout);
        peers.retain(|p| p.port != 0 && p.valid_until.0 > now);
        for peer in &mut peers {
            peer.valid_until = peer.valid_until.min(longest);
        }
        self.bt
            .merge_handback(info_hash, completed, now, &mut peers)
    }

    /// Removes expired peers and empty torrents, shrinks sparse maps: the
    /// whole pass in one step.
    pub fn clean(&mut self, now: SecondsSinceStart) -> (CleanReport, CleanReport) {
        let mut pass = HostCleaning::default();
        loop {
            if let Some(reports) = self.clean_slice(now, &mut pass, usize::MAX) {
                return reports;
            }
        }
    }

    /// One slice of a cleaning pass: the public swarms, then the private
    /// ones, in slices of about `work` torrents and peers
    /// ([`BtShard::clean_slice`]), then the private accounting and the
    /// WebTorrent swarms in one step. Returns the pass's reports (UDP and
    /// HTTP, WebTorrent) when it is done; requests may be handled between
    /// two slices.
    pub fn clean_slice(
        &mut self,
        now: SecondsSinceStart,
        pass: &mut HostCleaning,
        work: usize,
    ) -> Option<(CleanReport, CleanReport)> {
        if !pass.public_done {
            let report = self.bt.clean_slice(now, &mut pass.cursor, work)?;
            pass.public_done = true;
            pass.bt = report;
            return None;
        }
        let private = self.private_bt.clean_slice(now, &mut pass.cursor, work)?;
        self.ledger.clean(now);
        let mut bt = pass.bt;
        bt.peers_removed += private.peers_removed;
        bt.torrents_removed += private.torrents_removed;
        *pass = HostCleaning::default();
        Some((bt, self.ws.clean(now)))
    }

    /// The UDP and HTTP swarms, to read (snapshots).
    pub fn bt(&self) -> &BtShard {
        &self.bt
    }

    /// The UDP and HTTP swarms, to refill (restore).
    pub fn bt_mut(&mut self) -> &mut BtShard {
        &mut self.bt
    }

    /// The private tracker's swarms and their accounting, to read
    /// (snapshot).
    pub fn private_parts(&self) -> (&BtShard, &Ledger) {
        (&self.private_bt, &self.ledger)
    }

    /// The private tracker's swarms and their accounting, to refill
    /// (restore).
    pub fn private_parts_mut(&mut self) -> (&mut BtShard, &mut Ledger) {
        (&mut self.private_bt, &mut self.ledger)
    }

    /// How long a peer stays without announcing.
    pub fn peer_timeout(&self) -> Duration {
        self.peer_timeout
    }

    /// Figures for metrics and logs.
    pub fn gauges(&self) -> HostGauges {
        let mut bt_peers = self.bt.peer_counts();
        bt_peers += self.private_bt.peer_counts();
        HostGauges {
            bt_torrents: self.bt.torrents() + self.private_bt.torrents(),
            bt_peers,
            bt_capacity: self.bt.capacity() + self.private_bt.capacity(),
            ws_torrents: self.ws.torrents(),
            ws_peers: self.ws.peer_counts(),
            ws_capacity: self.ws.capacity(),
            ws_peer_id_in_use: self.ws_refused,
        }
    }
}

/// The host as the executor's tasks share it: each access is one
/// synchronous call, so no borrow ever lives across an `.await`, and no
/// `RefCell` guard leaves this module.
pub struct SharedHost(RefCell<ShardHost>);

impl SharedHost {
    /// Shares `host`.
    pub fn new(host: ShardHost) -> Self {
        Self(RefCell::new(host))
    }

    /// Runs `f` on the host.
    ///
    /// # Panics
    /// If called from inside `f` (the host is never re-entered: effects
    /// are applied by the glue, which does not call back into the host).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut ShardHost) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::swarm::AnnounceInput;

    /// Records every effect.
    #[derive(Default)]
    struct Recorded {
        udp: Vec<(SocketAddr, TransactionId, AnnounceOutcome, SelectedPeers)>,
        announces: Vec<(ReplyAddress, AnnounceOutcome, SelectedPeers)>,
        scrapes: Vec<(ReplyAddress, Vec<ScrapeStats>)>,
        delivered: Vec<(ConnectionRef, OwnedOutMessage)>,
    }

    impl Effects for Recorded {
        fn answer_udp(
            &mut self,
            client: SocketAddr,
            transaction_id: TransactionId,
            outcome: &AnnounceOutcome,
            peers: &SelectedPeers,
        ) {
            self.udp
                .push((client, transaction_id, *outcome, peers.clone()));
        }
        fn reply_announce(
            &mut self,
            to: ReplyAddress,
            outcome: AnnounceOutcome,
            peers: &SelectedPeers,
        ) {
            self.announces.push((to, outcome, peers.clone()));
        }
        fn reply_scrape(&mut self, to: ReplyAddress, stats: Vec<ScrapeStats>) {
            self.scrapes.push((to, stats));
        }
        fn deliver(&mut self, connection: ConnectionRef, message: OwnedOutMessage) {
            self.delivered.push((connection, message));
        }
    }

    fn host() -> ShardHost {
        ShardHost::new(
            &Config::default(),
            Arc::new(AccessList::off()),
            SmallRng::seed_from_u64(5),
        )
    }

    fn announce(host: &ShardHost, peer: u8) -> BtAnnounce {
        let input = AnnounceInput {
            info_hash: InfoHash([7; 20]),
            peer_id: PeerId([peer; 20]),
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, peer)),
            port: 6881,
            stopped: false,
            completed: false,
            bytes_left: Some(1),
            numwant: None,
            max_peers: None,
            private: None,
            peer_ids: crate::swarm::PeerIdUse::KeptAndShown,
        };
        host.rules().bt_announce(input).expect("valid")
    }

    #[test]
    fn forwarded_requests_come_out_as_effects() {
        let mut host = host();
        let mut effects = Recorded::default();
        let now = SecondsSinceStart(0);
        let client: SocketAddr = "10.0.0.1:6881".parse().expect("addr");
        let first = announce(&host, 1);
        host.handle(
            now,
            ShardRequest::Announce {
                request: first,
                reply_to: AnnounceReplyTo::Udp {
                    client,
                    transaction_id: TransactionId(9),
                },
            },
            &mut effects,
        );
        let to = ReplyAddress {
            origin: ShardId(1),
            token: 42,
        };
        let second = announce(&host, 2);
        host.handle(
            now,
            ShardRequest::Announce {
                request: second,
                reply_to: AnnounceReplyTo::Executor(to),
            },
            &mut effects,
        );
        host.handle(
            now,
            ShardRequest::Scrape {
                kind: SwarmKind::Bt,
                hashes: vec![InfoHash([7; 20]), InfoHash([8; 20])],
                reply_to: to,
            },
            &mut effects,
        );
        assert_eq!(effects.udp.len(), 1);
        assert_eq!(effects.udp[0].1, TransactionId(9));
        assert_eq!(effects.udp[0].2.leechers, 1);
        assert_eq!(effects.announces.len(), 1);
        let (address, outcome, peers) = &effects.announces[0];
        assert_eq!(*address, to);
        assert_eq!(outcome.leechers, 2);
        assert_eq!(peers.v4.len(), 1, "the first peer, handed to the second");
        assert_eq!(peers.v4[0].peer_id, Some(PeerId([1; 20])));
        assert_eq!(effects.scrapes[0].1[0].leechers, 2);
        assert_eq!(effects.scrapes[0].1[1], ScrapeStats::default());
        assert_eq!(host.gauges().bt_peers.leechers, 2);
    }

    #[test]
    fn a_handback_keeps_this_nodes_rules() {
        use aquatic_common::access_list::AccessListMode;
        let allowed = InfoHash([7; 20]);
        let refused = InfoHash([8; 20]);
        let list = AccessList::parse(AccessListMode::Allow, &"07".repeat(20)).expect("list");
        let mut host = ShardHost::new(
            &Config::default(),
            Arc::new(list),
            SmallRng::seed_from_u64(5),
        );
        let now = SecondsSinceStart(10);
        let peer = |port: u16, ttl: u32| BtPeerEntry {
            peer_id_hash: u64::from(port),
            peer_id: None,
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            port,
            seeder: false,
            valid_until: ValidUntil(SecondsSinceStart(now.0 + ttl)),
        };
        assert_eq!(
            host.bt_merge_handback(now, refused, 0, vec![peer(1, 60)]),
            0,
            "the access list refuses the torrent"
        );
        let peers = vec![peer(0, 60), peer(2, 0), peer(3, 1_000_000)];
        assert_eq!(
            host.bt_merge_handback(now, allowed, 0, peers),
            1,
            "no port 0, nothing expired"
        );
        assert_eq!(host.gauges().bt_torrents, 1);
        // Lives no longer than this node's peer timeout.
        let mut entries = Vec::new();
        host.bt_take(now, &allowed, &mut entries).expect("held");
        let longest = ValidUntil::after(now, host.peer_timeout());
        assert!(entries[0].valid_until <= longest, "{entries:?}");
        assert_eq!(host.gauges().bt_torrents, 0);
    }
}
