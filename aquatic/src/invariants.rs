//! The shard host's invariants, checked after every step of an arbitrary
//! sequence of announces, stops and connection closes from several
//! clients: what the fuzz target `shard_host` and a property test drive.
//!
//! After every step:
//! - no WebTorrent peer of a closed connection is left, and no announce
//!   under another live connection's peer id changed anything;
//! - the counts the host keeps equal the peers a model of the same
//!   sequence holds, per torrent and in total;
//! - an announce's list never holds the requester, is no longer than
//!   `min(numwant, swarm - 1)`, holds only leechers for a seeder, and only
//!   peers of the requester's address family.
//!
//! Compiled for tests and for the fuzz crate (feature `fuzzing`) only.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use aquatic_common::{
    access_list::AccessList, swarm::PeerStatus, time::SecondsSinceStart, InfoHash, PeerCounts,
    PeerId, ShardId,
};
use aquatic_ws_protocol::{
    AnnounceEvent, AnnounceOffer, AnnounceRequest, OfferId, OwnedOutMessage,
};
use hashbrown::{HashMap, HashSet};
use rand::{rngs::SmallRng, SeedableRng};

use crate::{
    config::Config,
    host::ShardHost,
    swarm::{AnnounceInput, ConnectionPeers, ConnectionRef, Refusal, SwarmKind},
};

const TORRENTS: u8 = 3;
const PEERS: u8 = 6;
const CONNECTIONS: u8 = 4;

/// A UDP/HTTP peer as the swarm keys it.
type BtKey = (u8, PeerId, IpAddr, u16);

fn info_hash(t: u8) -> InfoHash {
    InfoHash([t; 20])
}

fn connection(c: u8) -> ConnectionRef {
    ConnectionRef {
        node: 0,
        executor: ShardId(0),
        connection: u64::from(c),
    }
}

/// What the host should hold after the sequence so far.
#[derive(Default)]
struct Model {
    bt: HashMap<BtKey, PeerStatus>,
    ws: HashMap<(u8, PeerId), (u8, PeerStatus)>,
    open: HashSet<u8>,
}

impl Model {
    fn bt_counts(&self, t: Option<u8>) -> PeerCounts {
        count(
            self.bt
                .iter()
                .filter(|(k, _)| t.is_none_or(|t| k.0 == t))
                .map(|(_, s)| *s),
        )
    }

    fn ws_counts(&self, t: Option<u8>) -> PeerCounts {
        count(
            self.ws
                .iter()
                .filter(|(k, _)| t.is_none_or(|t| k.0 == t))
                .map(|(_, (_, s))| *s),
        )
    }
}

fn count(statuses: impl Iterator<Item = PeerStatus>) -> PeerCounts {
    let mut counts = PeerCounts::default();
    for status in statuses {
        counts.change(None, Some(status));
    }
    counts
}

/// Reads operations out of arbitrary bytes.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }
}

/// Runs the sequence `bytes` encodes; `Err` names the first broken
/// invariant.
pub fn check_sequence(bytes: &[u8]) -> Result<(), String> {
    let config = Config::default();
    let mut host = ShardHost::new(
        &config,
        Arc::new(AccessList::off()),
        SmallRng::seed_from_u64(7),
    );
    let mut model = Model::default();
    let mut records: HashMap<u8, ConnectionPeers> = HashMap::new();
    let mut ops = Ops(bytes);
    let now = SecondsSinceStart(0);
    while let (Some(op), Some(a), Some(b)) = (ops.byte(), ops.byte(), ops.byte()) {
        let t = a % TORRENTS;
        let p = (a / TORRENTS) % PEERS;
        match op % 3 {
            0 => bt_announce(&mut host, &mut model, now, t, p, b)?,
            1 => {
                let c = b % CONNECTIONS;
                model.open.insert(c);
                let record = records.entry(c).or_default();
                ws_announce(&mut host, &mut model, record, now, t, p, c, b)?;
            }
            _ => {
                let c = b % CONNECTIONS;
                if let Some(mut record) = records.remove(&c) {
                    host.ws_disconnect(connection(c), &record.take());
                }
                model.open.remove(&c);
                model.ws.retain(|_, (holder, _)| *holder != c);
            }
        }
        check_counts(&host, &model)?;
    }
    Ok(())
}

fn status_of(stopped: bool, completed: bool, left: Option<i64>) -> PeerStatus {
    // The rules' view of `left`: negative is unknown.
    PeerStatus::from_announce(stopped, completed, left.and_then(|n| u64::try_from(n).ok()))
}

fn bt_announce(
    host: &mut ShardHost,
    model: &mut Model,
    now: SecondsSinceStart,
    t: u8,
    p: u8,
    b: u8,
) -> Result<(), String> {
    let ip = if b & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, p))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(p)))
    };
    let port = 6000 + u16::from(p % 3);
    let (stopped, completed) = ((b >> 1) % 4 == 1, (b >> 1) % 4 == 2);
    let left = [Some(0), Some(10), Some(-1), None][usize::from((b >> 3) % 4)];
    let numwant = usize::from((b >> 5) % 8);
    let input = AnnounceInput {
        info_hash: info_hash(t),
        peer_id: PeerId([p; 20]),
        ip,
        port,
        stopped,
        completed,
        bytes_left: left,
        numwant: Some(numwant).filter(|&n| n > 0),
        max_peers: None,
        private: None,
        // Every peer keeps its full id and every list shows them, so the
        // check below can name each listed peer.
        peer_ids: crate::swarm::PeerIdUse::KeptAndShown,
    };
    let request = host
        .rules()
        .bt_announce(input)
        .map_err(|r| format!("a valid announce refused: {r}"))?;
    let mut out = aquatic_common::SelectedPeers::default();
    let outcome = host.announce(now, &request, &mut out);
    let key = (t, request.peer_id, ip, port);
    let status = status_of(stopped, completed, left);
    match status {
        PeerStatus::Stopped => {
            model.bt.remove(&key);
        }
        status => {
            model.bt.insert(key, status);
        }
    }
    let listed: Vec<(u8, Option<PeerId>, IpAddr, u16)> = out
        .v4
        .iter()
        .map(|p| (t, p.peer_id, IpAddr::V4(p.ip_address), p.port))
        .chain(
            out.v6
                .iter()
                .map(|p| (t, p.peer_id, IpAddr::V6(p.ip_address), p.port)),
        )
        .collect();
    let listed: Vec<BtKey> = listed
        .into_iter()
        .map(|(t, id, ip, port)| {
            id.map(|id| (t, id, ip, port))
                .ok_or_else(|| format!("peer {ip}:{port} listed without its full id"))
        })
        .collect::<Result<_, _>>()?;
    if listed.contains(&key) {
        return Err(format!("{key:?} was handed itself"));
    }
    let swarm = outcome.seeders + outcome.leechers;
    if listed.len() > request.numwant.min(swarm.saturating_sub(1)) {
        return Err(format!(
            "{} peers for numwant {} in a swarm of {swarm}",
            listed.len(),
            request.numwant
        ));
    }
    if (ip.is_ipv4() && !out.v6.is_empty()) || (ip.is_ipv6() && !out.v4.is_empty()) {
        return Err("a peer of the other address family was listed".to_owned());
    }
    for peer in &listed {
        match model.bt.get(peer) {
            None => return Err(format!("{peer:?} listed but not in the swarm")),
            Some(PeerStatus::Seeding) if status == PeerStatus::Seeding => {
                return Err(format!("seeder {key:?} was handed seeder {peer:?}"));
            }
            Some(_) => {}
        }
    }
    let model_counts = model.bt_counts(Some(t));
    let counts = (outcome.seeders, outcome.leechers);
    if status != PeerStatus::Stopped && counts != (model_counts.seeders, model_counts.leechers) {
        return Err(format!(
            "announce counts {counts:?}, model {model_counts:?}"
        ));
    }
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one WebTorrent step of the driver, spelled out"
)]
fn ws_announce(
    host: &mut ShardHost,
    model: &mut Model,
    record: &mut ConnectionPeers,
    now: SecondsSinceStart,
    t: u8,
    p: u8,
    c: u8,
    b: u8,
) -> Result<(), String> {
    let peer_id = PeerId([p; 20]);
    let event = [
        AnnounceEvent::Started,
        AnnounceEvent::Stopped,
        AnnounceEvent::Completed,
        AnnounceEvent::Update,
    ][usize::from((b >> 2) % 4)];
    let left = [Some(0), Some(10), None, Some(5)][usize::from((b >> 4) % 4)];
    let mut offers = Vec::new();
    for i in 0..(b >> 6) {
        let offer = serde_json::value::RawValue::from_string("{}".to_owned())
            .map_err(|e| format!("an SDP stand-in: {e}"))?;
        offers.push(AnnounceOffer {
            offer_id: OfferId([i; 20]),
            offer,
        });
    }
    let request = AnnounceRequest {
        info_hash: info_hash(t),
        peer_id,
        event,
        bytes_left: left,
        numwant: None,
        offers: Some(offers),
        answer: None,
        to_peer_id: None,
        offer_id: None,
    };
    let request = host
        .rules()
        .ws_announce(request, connection(c), record)
        .map_err(|r| format!("a valid WebTorrent announce refused: {r}"))?;
    let stopped = request.stopped;
    let mut delivered = Vec::new();
    host.ws_announce(now, request, |to, message| delivered.push((to, message)));
    if stopped {
        record.forget(info_hash(t), peer_id);
    }
    let held_by = model.ws.get(&(t, peer_id)).map(|(holder, _)| *holder);
    let refused = delivered.iter().any(|(to, m)| {
        *to == connection(c)
            && matches!(m, OwnedOutMessage::Error { failure_reason, .. }
                if failure_reason == Refusal::PeerIdInUse.failure_reason())
    });
    match held_by {
        Some(holder) if holder != c => {
            if !refused {
                return Err(format!(
                    "connection {c} announced connection {holder}'s peer {p}"
                ));
            }
            return Ok(());
        }
        _ if refused => return Err(format!("connection {c} refused its own peer {p}")),
        _ => {}
    }
    let status = PeerStatus::from_announce(stopped, event == AnnounceEvent::Completed, left);
    match status {
        PeerStatus::Stopped => {
            model.ws.remove(&(t, peer_id));
        }
        status => {
            model.ws.insert((t, peer_id), (c, status));
        }
    }
    for (to, message) in &delivered {
        if let OwnedOutMessage::Offer { .. } = message {
            let receiver = u8::try_from(to.connection).unwrap_or(u8::MAX);
            let holds_peer_here = model
                .ws
                .iter()
                .any(|((mt, mp), (holder, _))| *mt == t && *mp != peer_id && *holder == receiver);
            if !model.open.contains(&receiver) || !holds_peer_here {
                return Err(format!("an offer went to connection {receiver}, which holds no other peer of torrent {t}"));
            }
        }
    }
    Ok(())
}

fn check_counts(host: &ShardHost, model: &Model) -> Result<(), String> {
    let gauges = host.gauges();
    if gauges.bt_peers != model.bt_counts(None) {
        return Err(format!(
            "host counts {:?}, model {:?}",
            gauges.bt_peers,
            model.bt_counts(None)
        ));
    }
    if gauges.ws_peers != model.ws_counts(None) {
        return Err(format!(
            "WebTorrent counts {:?}, model {:?}",
            gauges.ws_peers,
            model.ws_counts(None)
        ));
    }
    for t in 0..TORRENTS {
        for (kind, want) in [
            (SwarmKind::Bt, model.bt_counts(Some(t))),
            (SwarmKind::Ws, model.ws_counts(Some(t))),
        ] {
            let got = host.scrape(kind, &info_hash(t));
            if (got.seeders, got.leechers) != (want.seeders, want.leechers) {
                return Err(format!(
                    "torrent {t} {kind:?}: scrape {got:?}, model {want:?}"
                ));
            }
        }
    }
    for ((t, p), (holder, _)) in &model.ws {
        if !model.open.contains(holder) {
            return Err(format!(
                "peer {p:?} of torrent {t} outlived connection {holder}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn shard_host_invariants_hold(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let result = check_sequence(&bytes);
            proptest::prop_assert!(result.is_ok(), "{:?}", result);
        }
    }

    #[test]
    fn a_hijack_attempt_is_checked() {
        // Connection 0 announces peer 0 in torrent 0; connection 1 replays
        // the id; connection 0 closes; connection 1 may take it now.
        check_sequence(&[1, 0, 0, 1, 0, 1, 2, 0, 0, 1, 0, 1]).expect("invariants hold");
    }
}
