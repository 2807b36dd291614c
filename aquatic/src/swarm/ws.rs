//! WebTorrent swarms of one shard.
//!
//! A WebTorrent peer is not an address but a WebSocket connection, which
//! lives on whichever executor accepted it. The swarm records that
//! connection ([`ConnectionRef`]); offers, answers and announce responses
//! are handed to a `deliver` callback as the protocol crate's own
//! [`OwnedOutMessage`], with the connection they are for, and the router
//! takes them there, locally or over the mesh.

use std::time::Duration;

use aquatic_common::{
    swarm::{shrink_map_if_sparse, PeerStatus, Swarm, SwarmPeer},
    time::{SecondsSinceStart, ValidUntil},
    InfoHash, PeerCounts, PeerId, ScrapeStats, ShardId,
};
use aquatic_ws_protocol::{AnnounceResponse, OfferId, OwnedOutMessage, RtcPayload};
use hashbrown::HashMap;
use rand::Rng;

use super::{bt::CleanReport, refusal::Refusal};

/// Names one WebSocket connection in the whole cluster (or process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionRef {
    /// The cluster member whose executor holds the connection (its place in
    /// the member list; 0 without a cluster).
    pub node: u32,
    /// The executor whose task holds the connection.
    pub executor: ShardId,
    /// The connection's number on that executor.
    pub connection: u64,
}

#[derive(Clone, Copy, Debug)]
struct WsPeer {
    connection: ConnectionRef,
    valid_until: ValidUntil,
}

impl SwarmPeer for WsPeer {
    fn valid_until(&self) -> ValidUntil {
        self.valid_until
    }
}

/// An answer to relay to the peer that made the offer.
#[derive(Debug)]
pub struct WsAnswer {
    /// The peer that made the offer.
    pub to_peer_id: PeerId,
    /// The offer answered.
    pub offer_id: OfferId,
    /// The SDP answer, relayed verbatim.
    pub answer: RtcPayload,
}

/// A WebTorrent announce the tracker's rules accepted
/// ([`Rules::ws_announce`](super::rules::Rules::ws_announce)).
#[derive(Debug)]
pub struct WsAnnounce {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The announcing peer.
    pub peer_id: PeerId,
    /// Where the peer is connected.
    pub connection: ConnectionRef,
    /// `event=stopped`.
    pub stopped: bool,
    /// `event=completed`.
    pub completed: bool,
    /// `left`, if sent.
    pub bytes_left: Option<u64>,
    /// Offers to hand to other peers, one each.
    pub offers: Vec<(OfferId, RtcPayload)>,
    /// How many offers to hand out at most (numwant, capped).
    pub numwant: usize,
    /// An answer to relay instead of a plain announce.
    pub answer: Option<WsAnswer>,
}

#[derive(Default)]
struct Torrent {
    peers: Swarm<WsPeer>,
    completed: u32,
}

/// The WebTorrent torrents one executor owns.
#[derive(Default)]
pub struct WsShard {
    torrents: HashMap<InfoHash, Torrent>,
    /// Seeders and leechers over all torrents, kept as peers change.
    counts: PeerCounts,
}

/// How long WebTorrent peers live and what interval they are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsTiming {
    /// Peers silent this long expire.
    pub peer_timeout: Duration,
    /// The interval in announce responses.
    pub announce_interval: u32,
}

impl WsShard {
    /// Records an announce and hands what it causes to `deliver`: offers to
    /// chosen peers, an answer to the peer that offered, and the
    /// announcer's own response.
    ///
    /// A peer belongs to the connection that announced it: an announce,
    /// stop or answer under a peer id another connection holds is refused
    /// ([`Refusal::PeerIdInUse`]) and changes nothing. The holder's close
    /// frees the id (its peers leave when the connection ends).
    pub fn announce<R: Rng + ?Sized>(
        &mut self,
        timing: WsTiming,
        now: SecondsSinceStart,
        rng: &mut R,
        request: WsAnnounce,
        mut deliver: impl FnMut(ConnectionRef, OwnedOutMessage),
    ) -> Result<(), Refusal> {
        let WsAnnounce {
            info_hash,
            peer_id,
            connection,
            stopped,
            completed,
            bytes_left,
            offers,
            numwant,
            answer,
        } = request;
        let valid_until = ValidUntil::after(now, timing.peer_timeout);
        let response = |info_hash, counts: PeerCounts| {
            OwnedOutMessage::AnnounceResponse(AnnounceResponse {
                info_hash,
                complete: counts.seeders,
                incomplete: counts.leechers,
                announce_interval: timing.announce_interval,
            })
        };
        let held_elsewhere = |torrent: &Torrent| {
            torrent
                .peers
                .get(&peer_id)
                .is_some_and(|(peer, _)| peer.connection != connection)
        };
        if let Some(answer) = answer {
            // An answer is a relay, not an announce: the JavaScript client
            // sends it without `left` or `event`, so it must not change the
            // peer's standing. It only proves the peer is still there.
            let Some(torrent) = self.torrents.get_mut(&info_hash) else {
                return Ok(());
            };
            if held_elsewhere(torrent) {
                return Err(Refusal::PeerIdInUse);
            }
            if let Some((_, status)) = torrent.peers.get(&peer_id) {
                let refreshed = WsPeer {
                    connection,
                    valid_until,
                };
                torrent.peers.upsert(peer_id, refreshed, status);
            }
            if let Some((to, _)) = torrent.peers.get(&answer.to_peer_id) {
                deliver(
                    to.connection,
                    OwnedOutMessage::Answer {
                        info_hash,
                        peer_id,
                        offer_id: answer.offer_id,
                        answer: answer.answer,
                    },
                );
            }
            return Ok(());
        }

        let status = PeerStatus::from_announce(stopped, completed, bytes_left);
        if self.torrents.get(&info_hash).is_some_and(held_elsewhere) {
            return Err(Refusal::PeerIdInUse);
        }
        if status == PeerStatus::Stopped && !self.torrents.contains_key(&info_hash) {
            deliver(connection, response(info_hash, PeerCounts::default()));
            return Ok(());
        }
        let torrent = self.torrents.entry(info_hash).or_default();
        let peer = WsPeer {
            connection,
            valid_until,
        };
        let previous = torrent.peers.upsert(peer_id, peer, status);
        self.counts.change(previous, Some(status));
        if completed && previous != Some(PeerStatus::Seeding) {
            torrent.completed = torrent.completed.saturating_add(1);
        }
        if status != PeerStatus::Stopped && !offers.is_empty() {
            let wanted = numwant.min(offers.len());
            let mut offers = offers.into_iter();
            torrent.peers.select_peers(
                rng,
                &peer_id,
                status == PeerStatus::Seeding,
                wanted,
                |_, other| {
                    if let Some((offer_id, offer)) = offers.next() {
                        deliver(
                            other.connection,
                            OwnedOutMessage::Offer {
                                info_hash,
                                peer_id,
                                offer_id,
                                offer,
                            },
                        );
                    }
                },
            );
        }
        deliver(connection, response(info_hash, torrent.peers.counts()));
        if torrent.peers.is_empty() {
            self.torrents.remove(&info_hash);
        }
        Ok(())
    }

    /// Removes `peer_id` from `info_hash` if `connection` still holds it
    /// (the peer may have reconnected elsewhere since).
    pub fn disconnect(
        &mut self,
        info_hash: &InfoHash,
        peer_id: &PeerId,
        connection: ConnectionRef,
    ) {
        let Some(torrent) = self.torrents.get_mut(info_hash) else {
            return;
        };
        if let Some(status) = torrent
            .peers
            .get(peer_id)
            .and_then(|(p, status)| (p.connection == connection).then_some(status))
        {
            torrent.peers.remove(peer_id);
            self.counts.change(Some(status), None);
            if torrent.peers.is_empty() {
                self.torrents.remove(info_hash);
            }
        }
    }

    /// Removes every peer whose connection lives on cluster member `node`
    /// (that member left the live set: its connections are gone for this
    /// node's purposes, and their closes may never arrive). Returns how
    /// many peers left.
    pub fn drop_node(&mut self, node: u32) -> usize {
        let mut counts = self.counts;
        let mut dropped = 0;
        self.torrents.retain(|_, torrent| {
            let leaving: Vec<(PeerId, PeerStatus)> = torrent
                .peers
                .iter()
                .filter(|(_, p)| p.connection.node == node)
                .filter_map(|(id, _)| torrent.peers.get(id).map(|(_, status)| (*id, status)))
                .collect();
            for (peer_id, status) in leaving {
                torrent.peers.remove(&peer_id);
                counts.change(Some(status), None);
                dropped += 1;
            }
            !torrent.peers.is_empty()
        });
        self.counts = counts;
        dropped
    }

    /// Figures for one torrent.
    pub fn scrape(&self, info_hash: &InfoHash) -> ScrapeStats {
        self.torrents
            .get(info_hash)
            .map_or_else(ScrapeStats::default, |t| ScrapeStats {
                seeders: t.peers.seeders(),
                leechers: t.peers.leechers(),
                completed: t.completed,
            })
    }

    /// Drops expired peers and empty torrents; shrinks sparse maps.
    pub fn clean(&mut self, now: SecondsSinceStart) -> CleanReport {
        let mut report = CleanReport::default();
        let before = self.torrents.len();
        let mut removed = PeerCounts::default();
        self.torrents.retain(|_, t| {
            removed += t.peers.clean(now);
            !t.peers.is_empty()
        });
        self.counts.remove(removed);
        report.peers_removed = removed.total();
        report.torrents_removed = before - self.torrents.len();
        shrink_map_if_sparse(&mut self.torrents);
        report
    }

    /// Torrents held.
    pub fn torrents(&self) -> usize {
        self.torrents.len()
    }

    /// Seeders and leechers over all torrents (kept as peers change: O(1)).
    pub fn peer_counts(&self) -> PeerCounts {
        self.counts
    }

    /// Capacity of the torrent map (to watch it shrink).
    pub fn capacity(&self) -> usize {
        self.torrents.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    fn conn(n: u64) -> ConnectionRef {
        ConnectionRef {
            node: 0,
            executor: ShardId(0),
            connection: n,
        }
    }

    fn offer(n: u8) -> (OfferId, RtcPayload) {
        let raw = serde_json::value::RawValue::from_string(format!("{{\"sdp\":\"o{n}\"}}"))
            .expect("raw json");
        (OfferId([n; 20]), raw)
    }

    fn announce(peer: u8, offers: Vec<(OfferId, RtcPayload)>) -> WsAnnounce {
        WsAnnounce {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([peer; 20]),
            connection: conn(u64::from(peer)),
            stopped: false,
            completed: false,
            bytes_left: Some(1),
            numwant: 10,
            offers,
            answer: None,
        }
    }

    type Delivered = Vec<(ConnectionRef, OwnedOutMessage)>;

    fn run(shard: &mut WsShard, request: WsAnnounce) -> Delivered {
        try_run(shard, request).expect("accepted")
    }

    #[test]
    fn a_lost_node_takes_only_its_connections_peers() {
        let mut shard = WsShard::default();
        run(&mut shard, announce(1, Vec::new()));
        let mut remote = announce(2, Vec::new());
        remote.connection.node = 1;
        run(&mut shard, remote);
        let mut other_torrent = announce(3, Vec::new());
        other_torrent.connection.node = 1;
        other_torrent.info_hash = InfoHash([2; 20]);
        run(&mut shard, other_torrent);
        assert_eq!(shard.peer_counts().leechers, 3);

        assert_eq!(shard.drop_node(1), 2);
        assert_eq!(shard.peer_counts().leechers, 1);
        assert_eq!(shard.scrape(&InfoHash([1; 20])).leechers, 1);
        assert_eq!(shard.torrents(), 1, "the emptied torrent is gone");
        assert_eq!(shard.drop_node(1), 0);
    }

    #[test]
    fn offers_go_to_other_peers_and_answers_come_back() {
        let mut shard = WsShard::default();
        let first = run(&mut shard, announce(1, vec![offer(9)]));
        // Alone: only the announce response.
        assert_eq!(first.len(), 1);
        assert!(matches!(
            first[0].1,
            OwnedOutMessage::AnnounceResponse(AnnounceResponse { incomplete: 1, .. })
        ));

        let second = run(&mut shard, announce(2, vec![offer(7), offer(8)]));
        // One offer to peer 1 (the only other peer), then the response.
        assert_eq!(second.len(), 2);
        match &second[0] {
            (
                to,
                OwnedOutMessage::Offer {
                    peer_id,
                    offer_id,
                    offer,
                    ..
                },
            ) => {
                assert_eq!(*to, conn(1));
                assert_eq!(*peer_id, PeerId([2; 20]));
                assert_eq!(*offer_id, OfferId([7; 20]));
                assert_eq!(offer.get(), "{\"sdp\":\"o7\"}");
            }
            other => panic!("expected an offer, got {other:?}"),
        }
        assert!(
            matches!(second[1], (c, OwnedOutMessage::AnnounceResponse(AnnounceResponse { incomplete: 2, .. })) if c == conn(2))
        );

        let mut answer = announce(1, Vec::new());
        answer.bytes_left = None;
        answer.answer = Some(WsAnswer {
            to_peer_id: PeerId([2; 20]),
            offer_id: OfferId([7; 20]),
            answer: offer(3).1,
        });
        let relayed = run(&mut shard, answer);
        assert_eq!(relayed.len(), 1, "an answer gets no announce response");
        assert!(
            matches!(&relayed[0], (c, OwnedOutMessage::Answer { peer_id, .. }) if *c == conn(2) && *peer_id == PeerId([1; 20]))
        );
        assert_eq!(shard.scrape(&InfoHash([1; 20])).leechers, 2);
    }

    #[test]
    fn disconnect_removes_only_the_matching_connection() {
        let mut shard = WsShard::default();
        run(&mut shard, announce(1, Vec::new()));
        run(&mut shard, announce(2, Vec::new()));
        let hash = InfoHash([1; 20]);
        shard.disconnect(&hash, &PeerId([1; 20]), conn(99));
        assert_eq!(shard.scrape(&hash).leechers, 2, "other connection: kept");
        shard.disconnect(&hash, &PeerId([1; 20]), conn(1));
        assert_eq!(shard.scrape(&hash).leechers, 1);
        shard.disconnect(&hash, &PeerId([2; 20]), conn(2));
        assert_eq!(shard.torrents(), 0, "empty torrents go at once");
        assert_eq!(shard.peer_counts(), PeerCounts::default());
    }

    fn try_run(shard: &mut WsShard, request: WsAnnounce) -> Result<Delivered, Refusal> {
        let mut out = Vec::new();
        let timing = WsTiming {
            peer_timeout: Duration::from_secs(3600),
            announce_interval: 120,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        shard
            .announce(timing, SecondsSinceStart(0), &mut rng, request, |c, m| {
                out.push((c, m))
            })
            .map(|()| out)
    }

    #[test]
    fn another_connection_can_neither_stop_nor_take_over_a_peer() {
        let mut shard = WsShard::default();
        run(&mut shard, announce(1, Vec::new()));
        let hash = InfoHash([1; 20]);
        // Connection 9 replays peer 1's id: stopped, then a plain announce,
        // then an answer in its name.
        let mut stop = announce(1, Vec::new());
        stop.connection = conn(9);
        stop.stopped = true;
        assert_eq!(
            try_run(&mut shard, stop).map(|d| d.len()),
            Err(Refusal::PeerIdInUse)
        );
        let mut hijack = announce(1, Vec::new());
        hijack.connection = conn(9);
        assert_eq!(
            try_run(&mut shard, hijack).map(|d| d.len()),
            Err(Refusal::PeerIdInUse)
        );
        let mut answer = announce(1, Vec::new());
        answer.connection = conn(9);
        answer.answer = Some(WsAnswer {
            to_peer_id: PeerId([2; 20]),
            offer_id: OfferId([7; 20]),
            answer: offer(3).1,
        });
        assert_eq!(
            try_run(&mut shard, answer).map(|d| d.len()),
            Err(Refusal::PeerIdInUse)
        );
        // Peer 1 is still connection 1's: offers to it still go there.
        assert_eq!(shard.scrape(&hash).leechers, 1);
        let out = run(&mut shard, announce(2, vec![offer(5)]));
        assert!(matches!(out[0], (c, OwnedOutMessage::Offer { .. }) if c == conn(1)));
        // Once connection 1 closes, the id is free.
        shard.disconnect(&hash, &PeerId([1; 20]), conn(1));
        let mut taken = announce(1, Vec::new());
        taken.connection = conn(9);
        assert!(try_run(&mut shard, taken).is_ok());
    }

    #[test]
    fn offers_are_capped_by_numwant() {
        let mut shard = WsShard::default();
        for peer in 1..=5 {
            run(&mut shard, announce(peer, Vec::new()));
        }
        let mut request = announce(6, (0..5).map(offer).collect());
        request.numwant = 2;
        let out = run(&mut shard, request);
        let offers = out
            .iter()
            .filter(|(_, m)| matches!(m, OwnedOutMessage::Offer { .. }))
            .count();
        assert_eq!(offers, 2);
    }
}
