//! The router: where a request for a torrent goes, and how its answer comes back.
//!
//! ```text
//!   net/{udp,http,ws} ──> Router ── owner == me ──> SharedHost (inline, no hop)
//!                           │
//!                           └─ owner != me ──> channel mesh ──> owner's Router::handle_incoming
//!                                 typed reply future <── AnnounceReply / ScrapeReply ──┘
//! ```
//!
//! Every request is checked against the tracker's rules (`swarm::Rules`,
//! through the host) before it is routed, so a refusal never crosses the
//! mesh. What crosses it:
//!
//! - **Requests that want an answer** (HTTP announces, scrape parts) get a
//!   token and a typed pending slot. One deadline covers a whole fan-out,
//!   however many shards it spans. A destination can have at most
//!   `mesh_channel_size` requests outstanding from one executor, so the
//!   replies it owes are bounded.
//! - **Lossy messages** (forwarded UDP announces, WebTorrent announces and
//!   relays) are sent with `try_send`: a full channel returns at once, the
//!   caller answers "busy" or drops the datagram, and it is counted.
//! - **Messages that must arrive** (replies, WebSocket closes) that meet a
//!   full channel wait in a bounded per-destination outbox, drained by a
//!   task on a short timer: the mesh-receive loop never waits on a full
//!   channel, so two busy executors cannot block each other.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    net::SocketAddr,
    rc::Rc,
    time::Duration,
};

use aquatic_common::{
    shard_of,
    time::{SecondsSinceStart, ServerStartInstant, ValidUntil},
    AnnounceOutcome, InfoHash, PeerId, ScrapeStats, SelectedPeers, ShardId,
};
use aquatic_udp_protocol::TransactionId;
use aquatic_ws_protocol::OwnedOutMessage;
use glommio::{
    channels::{
        channel_mesh::Senders,
        local_channel::{self, LocalReceiver, LocalSender},
    },
    timer::sleep,
    GlommioError, ResourceType,
};
use hashbrown::HashMap;

use crate::{
    cluster::{
        frame::{
            stats_from_wire, wire_stats, Frame, RemoteReply, ReplyTarget, WireAnnounce, WireAnswer,
            WireConnection, WireHandbackPeer, WireHandbackTorrent, WireWsAnnounce,
        },
        members::{LiveSet, Members, NodeId},
        queue::LinkQueues,
    },
    host::{AnnounceReplyTo, Effects, ReplyAddress, ShardRequest, SharedHost},
    metrics::ExecutorStats,
    swarm::{AnnounceInput, BtPeerEntry, ConnectionPeers, ConnectionRef, Refusal, SwarmKind},
    timing::within,
};

/// How long a request waits for another executor's answer.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);
/// How often a non-empty outbox is retried.
const OUTBOX_RETRY: Duration = Duration::from_millis(1);
/// Most torrents one handback take removes from a shard.
const HANDBACK_TORRENTS: usize = 64;
/// Most peers one handback take removes (a larger swarm is taken whole
/// and split into frames of this many).
const HANDBACK_PEERS: usize = 2048;
/// Most held torrents one handback take looks at (most belong to other
/// owners), so that one take stays short beside announces.
const HANDBACK_SCAN: usize = 4096;
/// How long a handback waits before looking again for room in the link's
/// queue, or after a shard did not answer.
const HANDBACK_WAIT: Duration = Duration::from_millis(10);

/// What the asker of a request frame gets when the frame cannot leave
/// (its link's queue is full): the executor and a "no answer" message,
/// so that it answers "busy" at once. None for frames nobody waits on
/// (a UDP client retries by itself).
fn busy_reply(frame: &Frame) -> Option<(ShardId, MeshMessage)> {
    match frame {
        Frame::Announce {
            reply:
                RemoteReply {
                    executor,
                    target: ReplyTarget::Token(token),
                },
            ..
        } => Some((
            ShardId(*executor as usize),
            MeshMessage::AnnounceFailed { token: *token },
        )),
        Frame::Scrape {
            executor,
            token,
            hashes,
            ..
        } => Some((
            ShardId(*executor as usize),
            MeshMessage::RemoteScrapeReply {
                token: *token,
                stats: vec![None; hashes.len()],
            },
        )),
        _ => None,
    }
}

/// Adds `n` to a counter cell.
fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// Peers in handed-back torrents.
fn peer_count(torrents: &[WireHandbackTorrent]) -> u64 {
    torrents.iter().map(|t| t.peers.len() as u64).sum()
}

/// Handback frames for taken torrents: at most [`HANDBACK_TORRENTS`]
/// torrents and [`HANDBACK_PEERS`] peers each, a larger swarm split over
/// several frames (its `completed` in the first part only).
fn handback_frames(torrents: Vec<WireHandbackTorrent>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let (mut current, mut peers) = (Vec::new(), 0);
    for torrent in torrents {
        let mut rest = torrent.peers;
        let mut completed = torrent.completed;
        loop {
            let room = HANDBACK_PEERS - peers;
            let tail = rest.split_off(rest.len().min(room));
            peers += rest.len();
            current.push(WireHandbackTorrent {
                info_hash: torrent.info_hash,
                completed,
                peers: rest,
            });
            completed = 0;
            rest = tail;
            if peers >= HANDBACK_PEERS || current.len() >= HANDBACK_TORRENTS {
                frames.push(Frame::Handback {
                    torrents: std::mem::take(&mut current),
                });
                peers = 0;
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    if !current.is_empty() {
        frames.push(Frame::Handback { torrents: current });
    }
    frames
}

/// A peer on the wire: info hash and peer id.
type WirePeer = ([u8; 20], [u8; 20]);

/// What travels between executors.
#[derive(Debug)]
pub enum MeshMessage {
    /// Work for the shard that owns a torrent.
    Request(ShardRequest),
    /// The answer to an announce this executor asked for.
    AnnounceReply {
        /// The asker's name for it.
        token: u64,
        /// Counts.
        outcome: AnnounceOutcome,
        /// The chosen peers.
        peers: SelectedPeers,
    },
    /// The answer to a scrape part this executor asked for.
    ScrapeReply {
        /// The asker's name for it.
        token: u64,
        /// Figures in the order of the hashes asked for.
        stats: Vec<ScrapeStats>,
    },
    /// A message for a WebSocket connection this executor holds.
    WsDeliver {
        /// The connection.
        connection: ConnectionRef,
        /// What to send it.
        message: OwnedOutMessage,
    },
    /// A frame for another node, to the executor that runs the links.
    ToNode {
        /// The member.
        node: NodeId,
        /// The frame.
        frame: Frame,
        /// An answer owed (may use the queue's reserve), not a request.
        must_arrive: bool,
    },
    /// The owner node could not answer this executor's announce.
    AnnounceFailed {
        /// The asker's name for it.
        token: u64,
    },
    /// Scrape figures from another node; None where its shard did not
    /// answer in time.
    RemoteScrapeReply {
        /// The asker's name for it.
        token: u64,
        /// Figures in the order asked.
        stats: Vec<Option<ScrapeStats>>,
    },
    /// From the executor that runs the links: take from this shard the
    /// next torrents `node` owns under `live` (it rejoined), to hand back.
    HandbackTake {
        /// The asker's name for the answer.
        token: u64,
        /// The member they go to.
        node: NodeId,
        /// The live set they are owned under.
        live: LiveSet,
        /// The first take of this handback: list the torrents held now.
        first: bool,
    },
    /// The answer: the torrents taken (now gone from the shard), and
    /// whether more remain.
    HandbackTaken {
        /// From the take.
        token: u64,
        /// The swarms.
        torrents: Vec<WireHandbackTorrent>,
        /// More to take.
        more: bool,
    },
    /// Swarms another member handed back, for this shard to merge.
    HandbackMerge {
        /// The swarms this shard owns.
        torrents: Vec<WireHandbackTorrent>,
    },
    /// The answer to a UDP announce this executor forwarded to another
    /// node: sent from this executor's socket, which the client wrote to.
    UdpAnswer {
        /// The client.
        client: SocketAddr,
        /// Its transaction id.
        transaction_id: TransactionId,
        /// Counts.
        outcome: AnnounceOutcome,
        /// The chosen peers.
        peers: SelectedPeers,
    },
}

/// Why a routed request got no answer from the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The tracker's rules refused it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The owner's channel was full (or too many requests to it were
    /// outstanding): refused at once, nothing waited.
    #[error("tracker busy, try again")]
    Busy,
    /// The owner did not answer before the deadline.
    #[error("tracker busy, try again")]
    NoReply,
}

impl RouteError {
    /// The text the client gets.
    pub fn failure_reason(self) -> &'static str {
        match self {
            Self::Refused(refusal) => refusal.failure_reason(),
            Self::Busy | Self::NoReply => "tracker busy, try again",
        }
    }
}

/// Writes UDP announce responses for announces other executors forwarded
/// here (the UDP adapter implements it; the router does not know sockets).
pub trait UdpAnswers {
    /// Queues the response to `client`.
    fn answer_announce(
        &mut self,
        client: SocketAddr,
        transaction_id: TransactionId,
        outcome: &AnnounceOutcome,
        peers: &SelectedPeers,
    );
}

/// Why a message did not go.
enum SendFailure {
    /// The channel is full; here is the message back.
    Full(MeshMessage),
    /// The destination is gone (stopping); the message is lost.
    Gone,
}

/// Pending answers of one kind, by token.
struct PendingReplies<T> {
    waiting: RefCell<HashMap<u64, LocalSender<T>>>,
}

impl<T> Default for PendingReplies<T> {
    fn default() -> Self {
        Self {
            waiting: RefCell::default(),
        }
    }
}

impl<T> PendingReplies<T> {
    fn open(&self, token: u64) -> LocalReceiver<T> {
        let (sender, receiver) = local_channel::new_bounded(1);
        self.waiting.borrow_mut().insert(token, sender);
        receiver
    }

    fn close(&self, token: u64) {
        self.waiting.borrow_mut().remove(&token);
    }

    /// Hands `reply` to its waiter; false if nobody waits any more.
    fn resolve(&self, token: u64, reply: T) -> bool {
        match self.waiting.borrow_mut().remove(&token) {
            Some(sender) => sender.try_send(reply).is_ok(),
            None => false,
        }
    }

    fn shrink(&self) {
        aquatic_common::swarm::shrink_map_if_sparse(&mut self.waiting.borrow_mut());
    }
}

/// Messages that must arrive, waiting for room in their channel.
struct Outbox {
    queues: RefCell<Vec<VecDeque<MeshMessage>>>,
    /// Most messages queued for one destination.
    capacity: usize,
    /// Wakes the drain task.
    wake: LocalSender<()>,
}

/// What the router knows of the cluster.
struct RouterCluster {
    /// Replaced when a reload changes the member list (positions never
    /// move, so a `NodeId` held across the change stays right).
    members: RefCell<Rc<Members>>,
    live: RefCell<LiveSet>,
    /// The links' queues, on the executor that runs the links.
    links: Option<Rc<LinkQueues>>,
    /// `cluster.direct_udp_replies`: forwarded UDP announces are answered
    /// from this node's socket rather than returned to the node that got them.
    direct_udp: bool,
    /// Per member, how many times it rejoined: a handback stops when a
    /// newer one starts.
    rejoins: RefCell<Vec<u64>>,
    /// Per member, the torrents still to look at for its handback (on
    /// every executor, for its own shard).
    handback_lists: RefCell<HashMap<usize, Vec<InfoHash>>>,
    /// Handback takes waiting for a shard's answer (on the links' executor).
    handback_takes: PendingReplies<(Vec<WireHandbackTorrent>, bool)>,
}

impl RouterCluster {
    /// The member list now.
    fn members(&self) -> Rc<Members> {
        self.members.borrow().clone()
    }
}

/// The executor that runs the links of a cluster node.
pub const LINK_EXECUTOR: ShardId = ShardId(0);

/// One executor's router.
pub struct Router {
    me: ShardId,
    shards: usize,
    clock: ServerStartInstant,
    mesh: Senders<MeshMessage>,
    host: Rc<SharedHost>,
    stats: Rc<ExecutorStats>,
    deadline: Duration,
    next_token: Cell<u64>,
    /// Requests outstanding per destination (executors, then members;
    /// grows when a reload adds members).
    in_flight: RefCell<Vec<Rc<Cell<usize>>>>,
    max_in_flight: usize,
    /// None: the owner could not answer.
    announces: PendingReplies<Option<(AnnounceOutcome, SelectedPeers)>>,
    scrapes: PendingReplies<Vec<Option<ScrapeStats>>>,
    outbox: Outbox,
    /// Outgoing queues of the WebSocket connections this executor holds,
    /// each with the most messages it may hold.
    ws_connections: RefCell<HashMap<u64, (LocalSender<OwnedOutMessage>, usize)>>,
    /// None when the cluster is off.
    cluster: Option<RouterCluster>,
}

/// Counts a request outstanding to one destination while it lives.
struct InFlight<'a> {
    count: Rc<Cell<usize>>,
    _request: std::marker::PhantomData<&'a ()>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.set(self.count.get().saturating_sub(1));
    }
}

/// A reply slot that closes itself when its request is dropped (the
/// client went away) or answered.
struct Waiting<'a, T> {
    replies: &'a PendingReplies<T>,
    token: u64,
    receiver: LocalReceiver<T>,
    _in_flight: InFlight<'a>,
}

impl<T> Waiting<'_, T> {
    async fn recv(&self) -> Option<T> {
        self.receiver.recv().await
    }
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        self.replies.close(self.token);
    }
}

/// Splits `items` by the shard that owns each one's info hash: entry `i`
/// of the result holds shard `i`'s items, in their original order.
pub fn partition_by_owner<T>(
    shards: usize,
    items: impl IntoIterator<Item = T>,
    info_hash: impl Fn(&T) -> &InfoHash,
) -> Vec<Vec<T>> {
    let mut parts: Vec<Vec<T>> = (0..shards).map(|_| Vec::new()).collect();
    for item in items {
        let owner = shard_of(info_hash(&item), shards);
        parts[owner.0].push(item);
    }
    parts
}

impl Router {
    /// A router for executor `me` of `shards`, sending over `mesh`. The
    /// returned receiver wakes [`Router::drain_outbox`].
    pub fn new(
        mesh: Senders<MeshMessage>,
        shards: usize,
        clock: ServerStartInstant,
        host: Rc<SharedHost>,
        stats: Rc<ExecutorStats>,
        mesh_channel_size: usize,
        deadline: Duration,
    ) -> (Self, LocalReceiver<()>) {
        let (wake, woken) = local_channel::new_bounded(1);
        let router = Self {
            me: ShardId(mesh.peer_id()),
            shards,
            clock,
            mesh,
            host,
            stats,
            deadline,
            next_token: Cell::new(0),
            in_flight: RefCell::new((0..shards).map(|_| Rc::default()).collect()),
            max_in_flight: mesh_channel_size,
            announces: PendingReplies::default(),
            scrapes: PendingReplies::default(),
            outbox: Outbox {
                queues: RefCell::new((0..shards).map(|_| VecDeque::new()).collect()),
                // Replies owed to one executor are bounded by its in-flight
                // cap; closes by connections. Room for both, and then some.
                capacity: mesh_channel_size.saturating_mul(4).max(1024),
                wake,
            },
            ws_connections: RefCell::default(),
            cluster: None,
        };
        (router, woken)
    }

    /// Makes this router a cluster node's: torrents are owned by the live
    /// members, `links` (on [`LINK_EXECUTOR`] only) are the queues of the
    /// links to the other members.
    pub fn with_cluster(
        mut self,
        members: Rc<Members>,
        live: LiveSet,
        links: Option<Rc<LinkQueues>>,
        direct_udp: bool,
    ) -> Self {
        // One request slot counter per member too, after the shards'.
        *self.in_flight.get_mut() = (0..self.shards + members.len())
            .map(|_| Rc::default())
            .collect();
        self.cluster = Some(RouterCluster {
            rejoins: RefCell::new(vec![0; members.len()]),
            members: RefCell::new(members),
            live: RefCell::new(live),
            links,
            direct_udp,
            handback_lists: RefCell::default(),
            handback_takes: PendingReplies::default(),
        });
        self
    }

    /// The cluster as this router sees it (for metrics): the members, the
    /// live set, and the links' queues on [`LINK_EXECUTOR`].
    pub fn cluster_view(&self) -> Option<(Rc<Members>, LiveSet, Option<Rc<LinkQueues>>)> {
        let cluster = self.cluster.as_ref()?;
        Some((
            cluster.members(),
            cluster.live.borrow().clone(),
            cluster.links.clone(),
        ))
    }

    /// Takes a reloaded member list (see `Members::reloaded`): added
    /// members own torrents once they are live, removed ones at once no
    /// longer do.
    pub fn set_members(&self, members: Rc<Members>) {
        if let Some(cluster) = &self.cluster {
            *cluster.members.borrow_mut() = members;
        }
    }

    /// Takes the live set the links found. The WebTorrent peers whose
    /// connections lived on a member that left it are dropped from this
    /// executor's shard: that member's closes can no longer arrive. On the
    /// links' executor, each member that rejoined gets back the swarms
    /// this node served for it meanwhile (`Router::hand_back`).
    pub fn set_live(self: &Rc<Self>, live: LiveSet) {
        let joined = self.take_live(live);
        let Some(cluster) = &self.cluster else { return };
        if cluster.links.is_some() {
            for node in joined {
                let rejoin = {
                    let mut rejoins = cluster.rejoins.borrow_mut();
                    if rejoins.len() <= node.0 {
                        rejoins.resize(node.0 + 1, 0);
                    }
                    rejoins[node.0] += 1;
                    rejoins[node.0]
                };
                glommio::spawn_local(self.clone().hand_back(node, rejoin)).detach();
            }
        }
    }

    /// Makes `live` this router's live set, drops the WebTorrent peers of
    /// the members that left it, and returns the members that joined.
    fn take_live(&self, live: LiveSet) -> Vec<NodeId> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let (lost, joined): (Vec<NodeId>, Vec<NodeId>) = {
            let before = cluster.live.borrow();
            (
                before.iter().filter(|n| !live.contains(*n)).collect(),
                live.iter().filter(|n| !before.contains(*n)).collect(),
            )
        };
        *cluster.live.borrow_mut() = live;
        for node in lost {
            let node = u32::try_from(node.0).unwrap_or(u32::MAX);
            let dropped = self.host.with(|host| host.ws_drop_node(node));
            if dropped > 0 {
                log::info!(
                    "dropped {dropped} WebTorrent peers of member {node}, which left the live set"
                );
            }
        }
        joined
    }

    /// Hands `node`, which rejoined the live set, the BitTorrent swarms
    /// this node's shards hold and it owns again: shard by shard, a few
    /// torrents at a time (each take is short, and this task yields
    /// between takes, so announces go on), each frame queued only when the
    /// link's queue has room to spare (else it waits, it never drops).
    /// Stops when `node` leaves again or rejoins anew (what it took and did
    /// not queue goes back into this node's shards). A link that speaks
    /// frame version 1 gets no handback: those swarms expire here. Runs on
    /// the links' executor.
    async fn hand_back(self: Rc<Self>, node: NodeId, rejoin: u64) {
        let Some(cluster) = &self.cluster else { return };
        let Some(links) = cluster.links.clone() else {
            return;
        };
        let name = cluster.members().name(node).to_owned();
        let still = || {
            cluster.live.borrow().contains(node)
                && cluster.rejoins.borrow().get(node.0) == Some(&rejoin)
        };
        let version = links.version(node);
        let handback = Frame::Handback {
            torrents: Vec::new(),
        };
        if version < handback.since() {
            if let Some(stats) = links.stats(node) {
                crate::cluster::queue::bump(&stats.handback_skipped);
            }
            log::info!(
                "cluster member {name} speaks link frame version {version}: its swarms served here are not handed back (they expire)"
            );
            return;
        }
        let (mut torrents_out, mut peers_out) = (0u64, 0u64);
        for shard in (0..self.shards).map(ShardId) {
            let mut first = true;
            loop {
                if !still() {
                    return;
                }
                if !links.has_room(node, 1) {
                    sleep(HANDBACK_WAIT).await;
                    continue;
                }
                let live = cluster.live.borrow().clone();
                let taken = if shard == self.me {
                    Some(self.take_handback(node, &live, first))
                } else {
                    self.request_handback(shard, node, live, first).await
                };
                let Some((torrents, more)) = taken else {
                    // Busy or silent: ask again (a first take lists anew).
                    sleep(HANDBACK_WAIT).await;
                    continue;
                };
                first = false;
                let taken = torrents.len() as u64;
                let mut frames = handback_frames(torrents).into_iter();
                while let Some(frame) = frames.next() {
                    while !links.has_room(node, 1) && still() {
                        sleep(HANDBACK_WAIT).await;
                    }
                    if !still() {
                        // The member left again: what was taken goes back
                        // into this node's shards rather than being lost.
                        let rest = std::iter::once(frame).chain(frames);
                        self.merge_here(
                            rest.flat_map(|f| match f {
                                Frame::Handback { torrents } => torrents,
                                _ => Vec::new(),
                            })
                            .collect(),
                        );
                        return;
                    }
                    let peers = match &frame {
                        Frame::Handback { torrents } => peer_count(torrents),
                        _ => 0,
                    };
                    // There is room (checked just now, on this one thread),
                    // so the queue takes it.
                    if links.push(node, frame) {
                        peers_out += peers;
                        if let Some(stats) = links.stats(node) {
                            add(&stats.handback_peers_out, peers);
                        }
                    }
                }
                torrents_out += taken;
                if let Some(stats) = links.stats(node) {
                    add(&stats.handback_torrents_out, taken);
                }
                if !more {
                    break;
                }
                glommio::yield_if_needed().await;
            }
        }
        if torrents_out > 0 {
            log::info!(
                "cluster member {name} rejoined: handed it back {torrents_out} torrents ({peers_out} peers)"
            );
        }
    }

    /// Asks `shard` for its next torrents owned by `node`; None when it
    /// is busy or does not answer in time.
    async fn request_handback(
        &self,
        shard: ShardId,
        node: NodeId,
        live: LiveSet,
        first: bool,
    ) -> Option<(Vec<WireHandbackTorrent>, bool)> {
        let cluster = self.cluster.as_ref()?;
        let in_flight = self.reserve(shard)?;
        let waiting = self.open_reply(&cluster.handback_takes, in_flight);
        let message = MeshMessage::HandbackTake {
            token: waiting.token,
            node,
            live,
            first,
        };
        self.try_send(shard, message).ok()?;
        within(self.deadline, waiting.recv()).await.flatten()
    }

    /// Takes from this executor's shard the next torrents `node` owns
    /// under `live` (removing them here), and whether more remain.
    fn take_handback(
        &self,
        node: NodeId,
        live: &LiveSet,
        first: bool,
    ) -> (Vec<WireHandbackTorrent>, bool) {
        let Some(cluster) = &self.cluster else {
            return (Vec::new(), false);
        };
        let mut lists = cluster.handback_lists.borrow_mut();
        if first {
            lists.insert(node.0, self.host.with(|host| host.bt_info_hashes()));
        }
        let Some(list) = lists.get_mut(&node.0) else {
            return (Vec::new(), false);
        };
        let now = self.now();
        let (mut torrents, mut peers, mut entries) = (Vec::new(), 0, Vec::new());
        let mut scanned = 0;
        while torrents.len() < HANDBACK_TORRENTS
            && peers < HANDBACK_PEERS
            && scanned < HANDBACK_SCAN
        {
            let Some(hash) = list.pop() else { break };
            scanned += 1;
            if cluster.members().owner(&hash, live) != node {
                continue;
            }
            entries.clear();
            let Some(completed) = self
                .host
                .with(|host| host.bt_take(now, &hash, &mut entries))
            else {
                continue;
            };
            let wire: Vec<WireHandbackPeer> = entries
                .iter()
                .filter_map(|entry| {
                    let remaining = entry.valid_until.0 .0.saturating_sub(now.0);
                    (remaining > 0).then_some(WireHandbackPeer {
                        ip: entry.ip,
                        port: entry.port,
                        peer_id_hash: entry.peer_id_hash,
                        peer_id: entry.peer_id.map(|id| id.0),
                        seeder: entry.seeder,
                        remaining_secs: remaining,
                    })
                })
                .collect();
            peers += wire.len();
            torrents.push(WireHandbackTorrent {
                info_hash: hash.0,
                completed,
                peers: wire,
            });
        }
        let more = !list.is_empty();
        if !more {
            lists.remove(&node.0);
        }
        (torrents, more)
    }

    /// Merges handed-back swarms into this node's shards, each into the
    /// one its own `shard_of` picks: inline for this executor's, over the
    /// mesh (must arrive) for the others.
    fn merge_here(&self, torrents: Vec<WireHandbackTorrent>) {
        let mut parts: Vec<Vec<WireHandbackTorrent>> =
            (0..self.shards).map(|_| Vec::new()).collect();
        for torrent in torrents {
            let shard = shard_of(&InfoHash(torrent.info_hash), self.shards);
            parts[shard.0].push(torrent);
        }
        for (shard, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            if ShardId(shard) == self.me {
                self.merge_handback(part);
            } else {
                self.send_must_arrive(
                    ShardId(shard),
                    MeshMessage::HandbackMerge { torrents: part },
                );
            }
        }
    }

    /// Merges handed-back swarms this executor's shard owns.
    fn merge_handback(&self, torrents: Vec<WireHandbackTorrent>) {
        let now = self.now();
        self.host.with(|host| {
            for torrent in torrents {
                let peers = torrent
                    .peers
                    .iter()
                    .map(|p| BtPeerEntry {
                        peer_id_hash: p.peer_id_hash,
                        peer_id: p.peer_id.map(PeerId),
                        ip: p.ip,
                        port: p.port,
                        seeder: p.seeder,
                        valid_until: ValidUntil(SecondsSinceStart(
                            now.0.saturating_add(p.remaining_secs),
                        )),
                    })
                    .collect();
                host.bt_merge_handback(now, InfoHash(torrent.info_hash), torrent.completed, peers);
            }
        });
    }

    /// This node's place in the member list (0 without a cluster): the
    /// `node` of the connections it accepts.
    pub fn node(&self) -> u32 {
        self.cluster
            .as_ref()
            .map_or(0, |c| u32::try_from(c.members().me().0).unwrap_or(u32::MAX))
    }

    /// The member that owns `info_hash`, if it is not this node.
    fn remote_owner(&self, info_hash: &InfoHash) -> Option<NodeId> {
        let cluster = self.cluster.as_ref()?;
        let owner = cluster.members().owner(info_hash, &cluster.live.borrow());
        (owner != cluster.members().me()).then_some(owner)
    }

    /// Sends `frame` to another member: into its link's queue here, or to
    /// the executor that runs the links. False (counted) when it cannot go.
    pub fn send_to_node(&self, node: NodeId, frame: Frame, must_arrive: bool) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        if let Some(links) = &cluster.links {
            let queued = if must_arrive {
                links.push_must_arrive(node, frame)
            } else {
                links.push(node, frame)
            };
            if !queued {
                log::debug!(
                    "a frame for member {} was dropped: its link's queue is full",
                    node.0
                );
            }
            return queued;
        }
        let message = MeshMessage::ToNode {
            node,
            frame,
            must_arrive,
        };
        if must_arrive {
            self.send_must_arrive(LINK_EXECUTOR, message);
            true
        } else {
            self.send_lossy(LINK_EXECUTOR, message).is_ok()
        }
    }

    /// Sends a request frame to another member and opens its reply slot.
    fn request_remote<'a, T>(
        &'a self,
        node: NodeId,
        replies: &'a PendingReplies<T>,
        frame: impl FnOnce(u64) -> Frame,
    ) -> Result<Waiting<'a, T>, RouteError> {
        // Members' in-flight slots follow the executors'.
        let in_flight = self
            .reserve_slot(self.shards + node.0)
            .ok_or(RouteError::Busy)?;
        let waiting = self.open_reply(replies, in_flight);
        let token = waiting.token;
        if self.send_to_node(node, frame(token), false) {
            Ok(waiting)
        } else {
            self.stats.cluster_link_busy.bump();
            Err(RouteError::Busy)
        }
    }

    fn executor_u32(&self) -> u32 {
        u32::try_from(self.me.0).unwrap_or(u32::MAX)
    }

    /// This executor's counters.
    pub fn stats(&self) -> &ExecutorStats {
        &self.stats
    }

    /// This executor's shard.
    pub fn id(&self) -> ShardId {
        self.me
    }

    /// Seconds since the server started.
    #[inline]
    pub fn now(&self) -> SecondsSinceStart {
        self.clock.seconds_elapsed()
    }

    fn owner(&self, info_hash: &InfoHash) -> ShardId {
        shard_of(info_hash, self.shards)
    }

    fn token(&self) -> u64 {
        let token = self.next_token.get();
        self.next_token.set(token.wrapping_add(1));
        token
    }

    /// Sends without waiting; a full channel gives the message back.
    #[expect(
        clippy::result_large_err,
        reason = "the message comes back by value on the rare full channel; boxing it would allocate on every send"
    )]
    fn try_send(&self, to: ShardId, message: MeshMessage) -> Result<(), SendFailure> {
        match self.mesh.try_send_to(to.0, message) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(message))) => {
                self.stats.mesh_full.bump();
                Err(SendFailure::Full(message))
            }
            Err(err) => {
                // Closed: the executor is stopping. Anything else is a
                // message to ourselves, which routing never sends.
                log::debug!("message to executor {} dropped: {err}", to.0);
                Err(SendFailure::Gone)
            }
        }
    }

    /// Sends a message that may be lost (the client retries): a full
    /// channel drops it and counts it.
    fn send_lossy(&self, to: ShardId, message: MeshMessage) -> Result<(), RouteError> {
        self.try_send(to, message).map_err(|_| {
            self.stats.mesh_dropped.bump();
            RouteError::Busy
        })
    }

    /// Sends a message that must arrive: behind others already waiting for
    /// `to`, or into the outbox if the channel is full.
    fn send_must_arrive(&self, to: ShardId, message: MeshMessage) {
        let mut queues = self.outbox.queues.borrow_mut();
        let queue = &mut queues[to.0];
        let message = if queue.is_empty() {
            match self.try_send(to, message) {
                Ok(()) | Err(SendFailure::Gone) => return,
                Err(SendFailure::Full(message)) => message,
            }
        } else {
            message
        };
        if queue.len() >= self.outbox.capacity {
            self.stats.mesh_dropped.bump();
            log::warn!(
                "outbox to executor {} full ({} messages): a reply or close was dropped",
                to.0,
                queue.len()
            );
            return;
        }
        queue.push_back(message);
        let _ = self.outbox.wake.try_send(());
    }

    /// Sends the outbox's messages as their channels make room, forever.
    pub async fn drain_outbox(self: Rc<Self>, woken: LocalReceiver<()>) {
        while woken.recv().await.is_some() {
            loop {
                let mut left = 0;
                {
                    let mut queues = self.outbox.queues.borrow_mut();
                    for (to, queue) in queues.iter_mut().enumerate() {
                        while let Some(message) = queue.pop_front() {
                            if let Err(SendFailure::Full(message)) =
                                self.try_send(ShardId(to), message)
                            {
                                queue.push_front(message);
                                break;
                            }
                        }
                        left += queue.len();
                    }
                }
                if left == 0 {
                    break;
                }
                sleep(OUTBOX_RETRY).await;
            }
        }
    }

    /// Reserves a request slot towards `to`, or None when too many are
    /// outstanding (then the destination is too slow: answer busy).
    fn reserve(&self, to: ShardId) -> Option<InFlight<'_>> {
        self.reserve_slot(to.0)
    }

    /// Takes one of the in-flight places of slot `slot` (an executor, or
    /// after them a cluster member); None when they are all taken.
    fn reserve_slot(&self, slot: usize) -> Option<InFlight<'_>> {
        let count = {
            let mut in_flight = self.in_flight.borrow_mut();
            // A member a reload added: its slot is made on first use.
            if slot >= self.shards && in_flight.len() <= slot {
                in_flight.resize_with(slot + 1, Rc::default);
            }
            in_flight.get(slot)?.clone()
        };
        if count.get() >= self.max_in_flight {
            self.stats.mesh_full.bump();
            return None;
        }
        count.set(count.get() + 1);
        Some(InFlight {
            count,
            _request: std::marker::PhantomData,
        })
    }

    /// Opens a reply slot for a request that holds `in_flight`.
    fn open_reply<'a, T>(
        &self,
        replies: &'a PendingReplies<T>,
        in_flight: InFlight<'a>,
    ) -> Waiting<'a, T> {
        let token = self.token();
        let receiver = replies.open(token);
        Waiting {
            replies,
            token,
            receiver,
            _in_flight: in_flight,
        }
    }

    /// Sends a request and opens its reply slot.
    fn request<'a, T>(
        &'a self,
        to: ShardId,
        replies: &'a PendingReplies<T>,
        request: impl FnOnce(ReplyAddress) -> ShardRequest,
    ) -> Result<Waiting<'a, T>, RouteError> {
        let in_flight = self.reserve(to).ok_or(RouteError::Busy)?;
        let waiting = self.open_reply(replies, in_flight);
        let token = waiting.token;
        let address = ReplyAddress {
            origin: self.me,
            token,
        };
        // On failure `waiting` drops here and closes its slot.
        self.try_send(to, MeshMessage::Request(request(address)))
            .map_err(|_| RouteError::Busy)?;
        Ok(waiting)
    }

    fn deadline_passed(&self) {
        self.stats.mesh_deadlines.bump();
    }

    /// A UDP announce: answered here when this shard owns the torrent
    /// (peers in `out`, `Ok(Some(outcome))`), otherwise forwarded to the
    /// owner, which answers the client itself (`Ok(None)`).
    pub fn announce_udp(
        &self,
        input: AnnounceInput,
        client: SocketAddr,
        transaction_id: TransactionId,
        out: &mut SelectedPeers,
    ) -> Result<Option<AnnounceOutcome>, RouteError> {
        let now = self.now();
        if let Some(node) = self.remote_owner(&input.info_hash) {
            let wire = WireAnnounce::from_input(&input);
            self.host.with(|host| host.rules().bt_announce(input))?;
            let frame = Frame::Announce {
                reply: RemoteReply {
                    executor: self.executor_u32(),
                    target: ReplyTarget::Udp {
                        client,
                        transaction_id: transaction_id.0,
                    },
                },
                input: wire,
            };
            // The owner's answer comes back here and leaves from this
            // node's socket, the address the client wrote to.
            return if self.send_to_node(node, frame, false) {
                Ok(None)
            } else {
                Err(RouteError::Busy)
            };
        }
        let owner = self.owner(&input.info_hash);
        self.host.with(|host| {
            let request = host.rules().bt_announce(input)?;
            if owner == self.me {
                self.stats.udp_announce_local.bump();
                return Ok(Some(host.announce(now, &request, out)));
            }
            self.stats.udp_announce_forwarded.bump();
            let reply_to = AnnounceReplyTo::Udp {
                client,
                transaction_id,
            };
            let message = MeshMessage::Request(ShardRequest::Announce { request, reply_to });
            self.send_lossy(owner, message).map(|()| None)
        })
    }

    /// A UDP or HTTP announce whose answer comes back here: the chosen
    /// peers land in `out`.
    pub async fn announce(
        &self,
        input: AnnounceInput,
        out: &mut SelectedPeers,
    ) -> Result<AnnounceOutcome, RouteError> {
        self.announce_routed(input, out, true).await
    }

    /// An announce another member forwarded here: answered by this node's
    /// shards, never forwarded again (members may disagree for a moment on
    /// who is alive; a second hop could loop).
    pub async fn announce_local(
        &self,
        input: AnnounceInput,
        out: &mut SelectedPeers,
    ) -> Result<AnnounceOutcome, RouteError> {
        self.announce_routed(input, out, false).await
    }

    async fn announce_routed(
        &self,
        input: AnnounceInput,
        out: &mut SelectedPeers,
        to_other_nodes: bool,
    ) -> Result<AnnounceOutcome, RouteError> {
        let now = self.now();
        let remote = to_other_nodes
            .then(|| self.remote_owner(&input.info_hash))
            .flatten();
        let owner = self.owner(&input.info_hash);
        let wire = remote.map(|_| WireAnnounce::from_input(&input));
        let request = self.host.with(|host| host.rules().bt_announce(input))?;
        let waiting = match (remote, wire) {
            (Some(node), Some(wire)) => {
                let executor = self.executor_u32();
                self.request_remote(node, &self.announces, |token| Frame::Announce {
                    reply: RemoteReply {
                        executor,
                        target: ReplyTarget::Token(token),
                    },
                    input: wire,
                })?
            }
            _ if owner == self.me => {
                return Ok(self.host.with(|host| host.announce(now, &request, out)));
            }
            _ => self.request(owner, &self.announces, |address| ShardRequest::Announce {
                request,
                reply_to: AnnounceReplyTo::Executor(address),
            })?,
        };
        match within(self.deadline, waiting.recv()).await {
            Some(Some(Some((outcome, peers)))) => {
                *out = peers;
                Ok(outcome)
            }
            Some(Some(None)) => Err(RouteError::Busy),
            _ => {
                self.deadline_passed();
                Err(RouteError::NoReply)
            }
        }
    }

    /// Checks that a private request's passkey names a member who may use
    /// the tracker.
    pub fn check_member(
        &self,
        passkey: Option<&aquatic_http_protocol::Passkey>,
    ) -> Result<(), Refusal> {
        self.host
            .with(|host| host.rules().private_member(passkey).map(|_| ()))
    }

    /// Checks a scrape against the rules; true when this shard owns every
    /// hash (the caller may then answer with [`Router::scrape_here`]).
    pub fn check_scrape(
        &self,
        hashes: impl ExactSizeIterator<Item = InfoHash> + Clone,
    ) -> Result<bool, Refusal> {
        self.host.with(|host| host.rules().scrape(hashes.clone()))?;
        Ok(hashes
            .into_iter()
            .all(|h| self.owner(&h) == self.me && self.remote_owner(&h).is_none()))
    }

    /// Figures of torrents this shard owns, pushed to `out` in order.
    pub fn scrape_here(
        &self,
        kind: SwarmKind,
        hashes: impl Iterator<Item = InfoHash>,
        out: &mut Vec<ScrapeStats>,
    ) {
        self.host
            .with(|host| out.extend(hashes.map(|h| host.scrape(kind, &h))));
    }

    /// Figures for `hashes`, in their order, from every shard that owns
    /// one: this shard's inline, the others asked at once and awaited
    /// together under one deadline. `None` marks the hashes whose shard did
    /// not answer in time (or whose channel was full).
    pub async fn scrape(
        &self,
        kind: SwarmKind,
        hashes: &[InfoHash],
    ) -> Result<Vec<Option<ScrapeStats>>, Refusal> {
        self.check_scrape(hashes.iter().copied())?;
        Ok(self.scrape_checked(kind, hashes).await)
    }

    /// [`Router::scrape`] for hashes [`Router::check_scrape`] accepted.
    pub async fn scrape_checked(
        &self,
        kind: SwarmKind,
        hashes: &[InfoHash],
    ) -> Vec<Option<ScrapeStats>> {
        self.scrape_routed(kind, hashes, true).await
    }

    /// A scrape part another member forwarded here: this node's shards
    /// only (see [`Router::announce_local`]).
    pub async fn scrape_local(
        &self,
        kind: SwarmKind,
        hashes: &[InfoHash],
    ) -> Vec<Option<ScrapeStats>> {
        self.scrape_routed(kind, hashes, false).await
    }

    async fn scrape_routed(
        &self,
        kind: SwarmKind,
        hashes: &[InfoHash],
        to_other_nodes: bool,
    ) -> Vec<Option<ScrapeStats>> {
        let mut stats: Vec<Option<ScrapeStats>> = vec![None; hashes.len()];
        let mut waiting = Vec::new();
        let mut here: Vec<(usize, &InfoHash)> = Vec::with_capacity(hashes.len());
        let members = self.cluster.as_ref().map_or(0, |c| c.members().len());
        let mut remote: Vec<Vec<(usize, InfoHash)>> = (0..members).map(|_| Vec::new()).collect();
        for (i, hash) in hashes.iter().enumerate() {
            match to_other_nodes.then(|| self.remote_owner(hash)).flatten() {
                Some(node) => remote[node.0].push((i, *hash)),
                None => here.push((i, hash)),
            }
        }
        let executor = self.executor_u32();
        for (node, part) in remote.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            let positions: Vec<usize> = part.iter().map(|(i, _)| *i).collect();
            let part_hashes: Vec<[u8; 20]> = part.iter().map(|(_, h)| h.0).collect();
            let sent = self.request_remote(NodeId(node), &self.scrapes, |token| Frame::Scrape {
                executor,
                token,
                ws: kind == SwarmKind::Ws,
                hashes: part_hashes,
            });
            if let Ok(part) = sent {
                waiting.push((positions, part));
            }
        }
        let parts = partition_by_owner(self.shards, here, |(_, h)| h);
        for (shard, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            if ShardId(shard) == self.me {
                self.host.with(|host| {
                    for (i, hash) in &part {
                        stats[*i] = Some(host.scrape(kind, hash));
                    }
                });
                continue;
            }
            let positions: Vec<usize> = part.iter().map(|(i, _)| *i).collect();
            let part_hashes: Vec<InfoHash> = part.iter().map(|(_, h)| **h).collect();
            let sent = self.request(ShardId(shard), &self.scrapes, |reply_to| {
                ShardRequest::Scrape {
                    kind,
                    hashes: part_hashes,
                    reply_to,
                }
            });
            // A full channel leaves the part unanswered at once.
            if let Ok(part) = sent {
                waiting.push((positions, part));
            }
        }
        if waiting.is_empty() {
            return stats;
        }
        let all_arrived = async {
            for (positions, part) in &waiting {
                if let Some(figures) = part.recv().await {
                    for (i, s) in positions.iter().zip(figures) {
                        stats[*i] = s;
                    }
                }
            }
            true
        };
        // One deadline for the whole fan-out, however many parts it has.
        let arrived = futures_lite::future::or(all_arrived, async {
            sleep(self.deadline).await;
            false
        })
        .await;
        if !arrived {
            self.deadline_passed();
        }
        stats
    }

    /// Registers a WebSocket connection of this executor; messages for it
    /// arrive on the returned queue.
    ///
    /// The queue holds at most `queue` messages. It is an unbounded glommio
    /// channel with the bound checked here on delivery: a bounded one
    /// allocates all its slots at once (64 × 80 bytes by default) for every
    /// connection, most of which never has more than one message waiting.
    pub fn ws_register(&self, connection: u64, queue: usize) -> LocalReceiver<OwnedOutMessage> {
        let (sender, receiver) = local_channel::new_unbounded();
        self.ws_connections
            .borrow_mut()
            .insert(connection, (sender, queue));
        receiver
    }

    /// Forgets a connection: messages for it are dropped from now on.
    pub fn ws_unregister(&self, connection: u64) {
        self.ws_connections.borrow_mut().remove(&connection);
    }

    /// Closes every connection's queue, which ends their tasks.
    pub fn ws_close_all(&self) {
        let closing: Vec<_> = self.ws_connections.borrow_mut().drain().collect();
        drop(closing);
    }

    /// Hands `message` to a WebSocket connection, here or on its executor.
    /// A full queue or channel drops it (a slow client must not hold
    /// anyone up).
    fn deliver(&self, connection: ConnectionRef, message: OwnedOutMessage) {
        if connection.node != self.node() {
            let mut bytes = Vec::new();
            if message.as_out_message().write(&mut bytes).is_err() {
                return;
            }
            let frame = Frame::WsDeliver {
                executor: u32::try_from(connection.executor.0).unwrap_or(u32::MAX),
                connection: connection.connection,
                message: bytes,
            };
            if !self.send_to_node(NodeId(connection.node as usize), frame, false) {
                self.stats.ws_dropped.bump();
            }
            return;
        }
        if connection.executor != self.me {
            let message = MeshMessage::WsDeliver {
                connection,
                message,
            };
            let _ = self.send_lossy(connection.executor, message);
            return;
        }
        let connections = self.ws_connections.borrow();
        let delivered = connections
            .get(&connection.connection)
            .is_some_and(|(queue, bound)| queue.len() < *bound && queue.try_send(message).is_ok());
        if !delivered {
            self.stats.ws_dropped.bump();
        }
    }

    /// A WebTorrent announce from `connection`: checked, recorded in the
    /// connection's `peers`, and applied by the owning shard, which sends
    /// the responses to the connections concerned.
    pub fn ws_announce(
        &self,
        request: aquatic_ws_protocol::AnnounceRequest,
        connection: ConnectionRef,
        peers: &mut ConnectionPeers,
    ) -> Result<(), Refusal> {
        let now = self.now();
        let owner = self.owner(&request.info_hash);
        let request = self
            .host
            .with(|host| host.rules().ws_announce(request, connection, peers))?;
        let stop = request
            .stopped
            .then_some((request.info_hash, request.peer_id));
        let reached_owner = if let Some(node) = self.remote_owner(&request.info_hash) {
            // Lost only when the link is full or down; the client announces again.
            let frame = Frame::WsAnnounce(WireWsAnnounce::from_announce(&request));
            self.send_to_node(node, frame, false)
        } else if owner == self.me {
            self.host.with(|host| {
                host.ws_announce(now, request, |c, m| self.deliver(c, m));
            });
            true
        } else {
            let message = MeshMessage::Request(ShardRequest::WsAnnounce(request));
            // Lost only when the owner is overwhelmed; the client announces again.
            self.send_lossy(owner, message).is_ok()
        };
        // Forget a stopped peer only once the stop is on its way to the
        // owner: a stop that was lost leaves the peer to the close cleanup.
        if let (Some((info_hash, peer_id)), true) = (stop, reached_owner) {
            peers.forget(info_hash, peer_id);
        }
        Ok(())
    }

    /// A connection closed: every node and shard that holds one of its
    /// peers drops it.
    pub fn ws_closed(&self, connection: ConnectionRef, mut peers: Vec<(InfoHash, PeerId)>) {
        if self.cluster.is_some() {
            let mut remote: HashMap<NodeId, Vec<WirePeer>> = HashMap::new();
            peers.retain(|(hash, peer_id)| match self.remote_owner(hash) {
                Some(node) => {
                    remote.entry(node).or_default().push((hash.0, peer_id.0));
                    false
                }
                None => true,
            });
            for (node, part) in remote {
                let frame = Frame::WsClosed {
                    connection: WireConnection::from_ref(connection),
                    peers: part,
                };
                self.send_to_node(node, frame, true);
            }
        }
        self.ws_closed_here(connection, peers);
    }

    /// This node's part of a close: every shard that holds one of the
    /// connection's peers drops it.
    fn ws_closed_here(&self, connection: ConnectionRef, peers: Vec<(InfoHash, PeerId)>) {
        let parts = partition_by_owner(self.shards, peers, |(h, _)| h);
        for (shard, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            if ShardId(shard) == self.me {
                self.host.with(|host| host.ws_disconnect(connection, &part));
            } else {
                let request = ShardRequest::WsClosed {
                    connection,
                    peers: part,
                };
                self.send_must_arrive(ShardId(shard), MeshMessage::Request(request));
            }
        }
    }

    /// Handles a message from another executor. UDP announce answers go to
    /// `udp` (absent when this executor serves no UDP).
    pub fn handle_incoming(&self, message: MeshMessage, udp: Option<&mut dyn UdpAnswers>) {
        match message {
            MeshMessage::Request(request) => {
                let now = self.now();
                let mut effects = ApplyEffects { router: self, udp };
                self.host
                    .with(|host| host.handle(now, request, &mut effects));
            }
            MeshMessage::AnnounceReply {
                token,
                outcome,
                peers,
            } => {
                if !self.announces.resolve(token, Some((outcome, peers))) {
                    self.stats.mesh_late_replies.bump();
                }
            }
            MeshMessage::ScrapeReply { token, stats } => {
                if !self
                    .scrapes
                    .resolve(token, stats.into_iter().map(Some).collect())
                {
                    self.stats.mesh_late_replies.bump();
                }
            }
            MeshMessage::WsDeliver {
                connection,
                message,
            } => self.deliver(connection, message),
            MeshMessage::ToNode {
                node,
                frame,
                must_arrive,
            } => {
                let links = self.cluster.as_ref().and_then(|c| c.links.as_ref());
                match links {
                    Some(links) if must_arrive => {
                        links.push_must_arrive(node, frame);
                    }
                    Some(links) => {
                        // A request the queue refuses is answered "busy" at
                        // once, so its asker does not wait for the deadline.
                        let busy = busy_reply(&frame);
                        if !links.push(node, frame) {
                            if let Some((asker, message)) = busy {
                                self.stats.cluster_link_busy.bump();
                                if asker == self.me {
                                    self.handle_incoming(message, None);
                                } else if asker.0 < self.shards {
                                    self.send_must_arrive(asker, message);
                                }
                            }
                        }
                    }
                    None => {
                        log::error!("a frame for another node reached an executor without links")
                    }
                }
            }
            MeshMessage::AnnounceFailed { token } => {
                if !self.announces.resolve(token, None) {
                    self.stats.mesh_late_replies.bump();
                }
            }
            MeshMessage::RemoteScrapeReply { token, stats } => {
                if !self.scrapes.resolve(token, stats) {
                    self.stats.mesh_late_replies.bump();
                }
            }
            MeshMessage::HandbackTake {
                token,
                node,
                live,
                first,
            } => {
                // The links' view is the freshest: taken now rather than on
                // this executor's reload timer, so that its own announces
                // for the torrents handed back go to their owner at once
                // instead of making new copies here.
                let stale = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| *c.live.borrow() != live);
                if stale {
                    self.take_live(live.clone());
                }
                let (torrents, more) = self.take_handback(node, &live, first);
                let reply = MeshMessage::HandbackTaken {
                    token,
                    torrents,
                    more,
                };
                self.send_must_arrive(LINK_EXECUTOR, reply);
            }
            MeshMessage::HandbackTaken {
                token,
                torrents,
                more,
            } => {
                let resolved = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.handback_takes.resolve(token, (torrents, more)));
                if !resolved {
                    // Those torrents left their shard: they refill by
                    // re-announce at the owner.
                    self.stats.mesh_late_replies.bump();
                }
            }
            MeshMessage::HandbackMerge { torrents } => self.merge_handback(torrents),
            MeshMessage::UdpAnswer {
                client,
                transaction_id,
                outcome,
                peers,
            } => match udp {
                Some(udp) => udp.answer_announce(client, transaction_id, &outcome, &peers),
                None => log::error!("a UDP answer reached an executor without UDP"),
            },
        }
    }

    /// Handles a request or answer frame from another member (on
    /// [`LINK_EXECUTOR`]). Requests are answered by this node's shards as
    /// if one of its own executors had asked; answers go to the executor
    /// that waits for them. UDP answers for this executor go to `udp`.
    pub fn handle_frame(
        self: &Rc<Self>,
        from: NodeId,
        frame: Frame,
        udp: Option<&mut dyn UdpAnswers>,
    ) {
        match frame {
            Frame::Announce { reply, input } => {
                let input = input.into_input();
                let direct = self.cluster.as_ref().is_some_and(|c| c.direct_udp);
                if let (
                    true,
                    ReplyTarget::Udp {
                        client,
                        transaction_id,
                    },
                ) = (direct, reply.target)
                {
                    self.answer_udp_directly(input, client, TransactionId(transaction_id), udp);
                    return;
                }
                if self.owner(&input.info_hash) == self.me {
                    // Owned by this executor's shard: no task, no wait.
                    let now = self.now();
                    let mut peers = SelectedPeers::default();
                    let answer = self.host.with(|host| {
                        let request = host.rules().bt_announce(input).ok()?;
                        let outcome = host.announce(now, &request, &mut peers);
                        Some(WireAnswer::new(&outcome, &peers))
                    });
                    self.send_to_node(from, Frame::AnnounceAnswer { reply, answer }, true);
                    return;
                }
                let router = self.clone();
                glommio::spawn_local(async move {
                    let mut peers = SelectedPeers::default();
                    let answer = router
                        .announce_local(input, &mut peers)
                        .await
                        .ok()
                        .map(|outcome| WireAnswer::new(&outcome, &peers));
                    router.send_to_node(from, Frame::AnnounceAnswer { reply, answer }, true);
                })
                .detach();
            }
            Frame::AnnounceAnswer { reply, answer } => self.route_answer(reply, answer, udp),
            Frame::Scrape {
                executor,
                token,
                ws,
                hashes,
            } => {
                let router = self.clone();
                glommio::spawn_local(async move {
                    let kind = if ws { SwarmKind::Ws } else { SwarmKind::Bt };
                    let hashes: Vec<InfoHash> = hashes.into_iter().map(InfoHash).collect();
                    let stats = router
                        .scrape_local(kind, &hashes)
                        .await
                        .into_iter()
                        .map(|s| s.map(wire_stats))
                        .collect();
                    let answer = Frame::ScrapeAnswer {
                        executor,
                        token,
                        stats,
                    };
                    router.send_to_node(from, answer, true);
                })
                .detach();
            }
            Frame::ScrapeAnswer {
                executor,
                token,
                stats,
            } => {
                let stats: Vec<Option<ScrapeStats>> =
                    stats.into_iter().map(|s| s.map(stats_from_wire)).collect();
                let to = ShardId(executor as usize);
                if to == self.me {
                    if !self.scrapes.resolve(token, stats) {
                        self.stats.mesh_late_replies.bump();
                    }
                } else if to.0 < self.shards {
                    self.send_must_arrive(to, MeshMessage::RemoteScrapeReply { token, stats });
                }
            }
            Frame::WsAnnounce(wire) => {
                let Some(request) = wire.into_announce() else {
                    log::debug!(
                        "member {}: a WebTorrent announce with a broken payload",
                        from.0
                    );
                    return;
                };
                let owner = self.owner(&request.info_hash);
                if owner == self.me {
                    let now = self.now();
                    self.host.with(|host| {
                        host.ws_announce(now, request, |c, m| self.deliver(c, m));
                    });
                } else {
                    let message = MeshMessage::Request(ShardRequest::WsAnnounce(request));
                    let _ = self.send_lossy(owner, message);
                }
            }
            Frame::WsDeliver {
                executor,
                connection,
                message,
            } => match OwnedOutMessage::parse(&message) {
                Ok(message) => {
                    let connection = ConnectionRef {
                        node: self.node(),
                        executor: ShardId(executor as usize),
                        connection,
                    };
                    if connection.executor.0 < self.shards {
                        self.deliver(connection, message);
                    }
                }
                Err(_) => log::debug!("member {}: a WebSocket message that does not parse", from.0),
            },
            Frame::WsClosed { connection, peers } => {
                let peers = peers
                    .into_iter()
                    .map(|(hash, peer_id)| (InfoHash(hash), PeerId(peer_id)))
                    .collect();
                self.ws_closed_here(connection.into_ref(), peers);
            }
            Frame::Handback { torrents } => {
                let links = self.cluster.as_ref().and_then(|c| c.links.as_ref());
                if let Some(stats) = links.and_then(|l| l.stats(from)) {
                    let (t, p) = (torrents.len() as u64, peer_count(&torrents));
                    add(&stats.handback_torrents_in, t);
                    add(&stats.handback_peers_in, p);
                }
                self.merge_here(torrents);
            }
            Frame::Hello { .. } | Frame::Heartbeat { .. } | Frame::HeartbeatAck { .. } => {}
        }
    }

    /// A forwarded UDP announce answered from this node's own socket (the
    /// nodes share the anycast address the client wrote to): by this
    /// executor, or by the owning shard's, as a forward between executors
    /// is answered.
    fn answer_udp_directly(
        &self,
        input: AnnounceInput,
        client: SocketAddr,
        transaction_id: TransactionId,
        udp: Option<&mut dyn UdpAnswers>,
    ) {
        let now = self.now();
        let owner = self.owner(&input.info_hash);
        let Ok(request) = self.host.with(|host| host.rules().bt_announce(input)) else {
            return;
        };
        if owner != self.me {
            let reply_to = AnnounceReplyTo::Udp {
                client,
                transaction_id,
            };
            let message = MeshMessage::Request(ShardRequest::Announce { request, reply_to });
            let _ = self.send_lossy(owner, message);
            return;
        }
        let Some(udp) = udp else {
            log::error!("a UDP announce reached an executor without UDP");
            return;
        };
        let mut peers = SelectedPeers::default();
        let outcome = self
            .host
            .with(|host| host.announce(now, &request, &mut peers));
        udp.answer_announce(client, transaction_id, &outcome, &peers);
    }

    /// Hands an announce answer from another member to the executor that
    /// forwarded the announce.
    fn route_answer(
        &self,
        reply: RemoteReply,
        answer: Option<WireAnswer>,
        udp: Option<&mut dyn UdpAnswers>,
    ) {
        let to = ShardId(reply.executor as usize);
        if to.0 >= self.shards {
            log::debug!(
                "an answer for executor {} of {}: dropped",
                to.0,
                self.shards
            );
            return;
        }
        let parts = answer.map(WireAnswer::into_parts);
        match reply.target {
            ReplyTarget::Token(token) => {
                if to == self.me {
                    if !self.announces.resolve(token, parts) {
                        self.stats.mesh_late_replies.bump();
                    }
                    return;
                }
                let message = match parts {
                    Some((outcome, peers)) => MeshMessage::AnnounceReply {
                        token,
                        outcome,
                        peers,
                    },
                    None => MeshMessage::AnnounceFailed { token },
                };
                self.send_must_arrive(to, message);
            }
            ReplyTarget::Udp {
                client,
                transaction_id,
            } => {
                // No answer from the owner: the client retries.
                let Some((outcome, peers)) = parts else {
                    return;
                };
                let transaction_id = TransactionId(transaction_id);
                if to == self.me {
                    match udp {
                        Some(udp) => udp.answer_announce(client, transaction_id, &outcome, &peers),
                        None => log::error!("a UDP answer reached an executor without UDP"),
                    }
                } else {
                    let message = MeshMessage::UdpAnswer {
                        client,
                        transaction_id,
                        outcome,
                        peers,
                    };
                    self.send_must_arrive(to, message);
                }
            }
        }
    }

    /// Gives back memory of maps that traffic grew.
    pub fn shrink(&self) {
        self.announces.shrink();
        self.scrapes.shrink();
        aquatic_common::swarm::shrink_map_if_sparse(&mut self.ws_connections.borrow_mut());
    }

    /// Slots of the WebSocket connection map (for metrics).
    pub fn ws_capacity(&self) -> usize {
        self.ws_connections.borrow().capacity()
    }
}

/// Applies what the host says should happen.
struct ApplyEffects<'a, 'u> {
    router: &'a Router,
    udp: Option<&'u mut dyn UdpAnswers>,
}

impl Effects for ApplyEffects<'_, '_> {
    fn answer_udp(
        &mut self,
        client: SocketAddr,
        transaction_id: TransactionId,
        outcome: &AnnounceOutcome,
        peers: &SelectedPeers,
    ) {
        match &mut self.udp {
            Some(udp) => udp.answer_announce(client, transaction_id, outcome, peers),
            // Only an executor with a UDP socket forwards UDP announces,
            // and all have one or none.
            None => log::error!("a UDP announce reached an executor without UDP"),
        }
    }

    fn reply_announce(
        &mut self,
        to: ReplyAddress,
        outcome: AnnounceOutcome,
        peers: &SelectedPeers,
    ) {
        let message = MeshMessage::AnnounceReply {
            token: to.token,
            outcome,
            peers: peers.clone(),
        };
        self.router.send_must_arrive(to.origin, message);
    }

    fn reply_scrape(&mut self, to: ReplyAddress, stats: Vec<ScrapeStats>) {
        let message = MeshMessage::ScrapeReply {
            token: to.token,
            stats,
        };
        self.router.send_must_arrive(to.origin, message);
    }

    fn deliver(&mut self, connection: ConnectionRef, message: OwnedOutMessage) {
        self.router.deliver(connection, message);
    }
}

#[cfg(test)]
mod tests {
    //! The router on real glommio executors joined in a real mesh: peer 0
    //! asks, peer 1 answers, any other peer never reads its channels.

    use std::sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    };

    use aquatic_common::access_list::AccessList;
    use futures_lite::StreamExt;
    use glommio::{channels::channel_mesh::MeshBuilder, LocalExecutorBuilder, Placement};

    use super::*;
    use crate::{config::Config, host::ShardHost};

    /// What the asking executor saw.
    struct Seen<T> {
        result: T,
        deadlines: u64,
        mesh_full: u64,
    }

    fn hash_on(shard: u8) -> InfoHash {
        let mut hash = InfoHash([9; 20]);
        hash.0[..4].copy_from_slice(&[0, 0, 0, shard]);
        hash
    }

    /// Runs `shards` executors in a mesh of `channel_size`; peer 0 runs
    /// `ask` on its router and its result comes back.
    fn with_mesh<T, F, Fut>(
        shards: usize,
        channel_size: usize,
        deadline: Duration,
        ask: F,
    ) -> Seen<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Router>) -> Fut + Send + Clone + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let mesh = MeshBuilder::<MeshMessage, _>::full(shards, channel_size);
        let (result_tx, result_rx) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let start = ServerStartInstant::new();
        let threads: Vec<_> = (0..shards)
            .map(|_| {
                let (mesh, ask, result_tx, done) =
                    (mesh.clone(), ask.clone(), result_tx.clone(), done.clone());
                std::thread::spawn(move || {
                    let executor = LocalExecutorBuilder::new(Placement::Unbound)
                        .io_memory(64 << 10)
                        .ring_depth(16)
                        .make()
                        .expect("executor");
                    executor.run(async move {
                        let (senders, mut receivers) = mesh.join().await.expect("join");
                        let config = Config::default();
                        let host = ShardHost::from_entropy(&config, Arc::new(AccessList::off()));
                        let stats = Rc::new(ExecutorStats::default());
                        let (router, woken) = Router::new(
                            senders,
                            shards,
                            start,
                            Rc::new(SharedHost::new(host)),
                            stats.clone(),
                            channel_size,
                            deadline,
                        );
                        let router = Rc::new(router);
                        glommio::spawn_local(router.clone().drain_outbox(woken)).detach();
                        match router.id().0 {
                            0 => {
                                // Replies come in on the asker's own channels.
                                for (_, mut stream) in receivers.streams() {
                                    let router = router.clone();
                                    glommio::spawn_local(async move {
                                        while let Some(message) = stream.next().await {
                                            router.handle_incoming(message, None);
                                        }
                                    })
                                    .detach();
                                }
                                let result = ask(router.clone()).await;
                                let seen = Seen {
                                    result,
                                    deadlines: stats.mesh_deadlines.get(),
                                    mesh_full: stats.mesh_full.get(),
                                };
                                done.store(true, Ordering::Relaxed);
                                assert!(result_tx.send(seen).is_ok(), "the test waits");
                            }
                            1 => {
                                let mut streams = receivers.streams();
                                while !done.load(Ordering::Relaxed) {
                                    for (_, stream) in &mut streams {
                                        while let Some(Some(message)) =
                                            futures_lite::future::poll_once(stream.next()).await
                                        {
                                            router.handle_incoming(message, None);
                                        }
                                    }
                                    sleep(Duration::from_millis(1)).await;
                                }
                            }
                            _ => {
                                // Holds its channels open and reads nothing.
                                while !done.load(Ordering::Relaxed) {
                                    sleep(Duration::from_millis(5)).await;
                                }
                                drop(receivers);
                            }
                        }
                    });
                })
            })
            .collect();
        let seen = result_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the asker reports");
        for thread in threads {
            thread.join().expect("executor thread");
        }
        seen
    }

    #[test]
    fn a_request_the_link_refuses_gets_a_busy_reply_for_its_asker() {
        let announce = Frame::Announce {
            reply: RemoteReply {
                executor: 1,
                target: ReplyTarget::Token(7),
            },
            input: WireAnnounce::from_input(&AnnounceInput {
                info_hash: InfoHash([1; 20]),
                peer_id: PeerId([2; 20]),
                ip: std::net::IpAddr::from([127, 0, 0, 1]),
                port: 1,
                stopped: false,
                completed: false,
                bytes_left: None,
                numwant: None,
                max_peers: None,
                private: None,
                peer_ids: crate::swarm::PeerIdUse::Hashed,
            }),
        };
        assert!(matches!(
            busy_reply(&announce),
            Some((ShardId(1), MeshMessage::AnnounceFailed { token: 7 }))
        ));
        let scrape = Frame::Scrape {
            executor: 0,
            token: 3,
            ws: false,
            hashes: vec![[1; 20], [2; 20]],
        };
        match busy_reply(&scrape) {
            Some((ShardId(0), MeshMessage::RemoteScrapeReply { token: 3, stats })) => {
                assert_eq!(stats, vec![None, None]);
            }
            other => panic!("{other:?}"),
        }
        // A forwarded UDP announce: the client retries, nobody waits.
        let Frame::Announce { input, .. } = announce else {
            unreachable!()
        };
        let udp = Frame::Announce {
            reply: RemoteReply {
                executor: 1,
                target: ReplyTarget::Udp {
                    client: SocketAddr::from(([127, 0, 0, 1], 9)),
                    transaction_id: 5,
                },
            },
            input,
        };
        assert!(busy_reply(&udp).is_none());
        assert!(busy_reply(&Frame::Heartbeat { sent_micros: 1 }).is_none());
    }

    #[test]
    fn handback_frames_are_bounded_and_split_a_large_swarm() {
        let peer = WireHandbackPeer {
            ip: "10.0.0.1".parse().expect("ip"),
            port: 1,
            peer_id_hash: 1,
            peer_id: None,
            seeder: false,
            remaining_secs: 60,
        };
        let torrent = |tag: u8, peers: usize| WireHandbackTorrent {
            info_hash: [tag; 20],
            completed: 5,
            peers: vec![peer; peers],
        };
        let mut torrents = vec![torrent(0, HANDBACK_PEERS * 2 + 10)];
        torrents.extend((1..=HANDBACK_TORRENTS as u8 + 1).map(|t| torrent(t, 1)));
        let frames = handback_frames(torrents);
        let mut peers = 0;
        let mut completed = 0;
        for frame in &frames {
            let Frame::Handback { torrents } = frame else {
                panic!("{frame:?}")
            };
            assert!(torrents.len() <= HANDBACK_TORRENTS);
            assert!(peer_count(torrents) <= HANDBACK_PEERS as u64);
            peers += peer_count(torrents);
            completed += torrents.iter().map(|t| u64::from(t.completed)).sum::<u64>();
            let mut writer = crate::cluster::frame::FrameWriter::default();
            assert!(writer.push(frame), "fits a frame");
        }
        assert_eq!(
            peers,
            (HANDBACK_PEERS * 2 + 10 + HANDBACK_TORRENTS + 1) as u64
        );
        assert_eq!(
            completed,
            5 * (HANDBACK_TORRENTS as u64 + 2),
            "each torrent's count once"
        );
        assert!(handback_frames(Vec::new()).is_empty());
    }

    #[test]
    fn a_scrape_over_a_silent_shard_waits_for_one_deadline() {
        // Two hashes on the answering shard, two on the silent one, one here.
        let hashes = [hash_on(1), hash_on(2), hash_on(0), hash_on(4), hash_on(5)];
        let seen = with_mesh(
            3,
            16,
            Duration::from_millis(300),
            move |router| async move { router.scrape(SwarmKind::Bt, &hashes).await },
        );
        let parts = seen.result.expect("valid scrape");
        let answered: Vec<bool> = parts.iter().map(Option::is_some).collect();
        // shard_of: 1 -> 1, 2 -> 2, 0 -> 0, 4 -> 1, 5 -> 2.
        assert_eq!(answered, [true, false, true, true, false]);
        assert_eq!(seen.deadlines, 1, "one deadline for the whole fan-out");
    }

    #[test]
    fn a_full_mesh_channel_is_busy_at_once() {
        // Peer 2 is silent: its channel from peer 0 holds one message.
        let seen = with_mesh(3, 1, Duration::from_millis(300), |router| async move {
            let input = |peer: u8| AnnounceInput {
                info_hash: hash_on(2),
                peer_id: PeerId([peer; 20]),
                ip: std::net::IpAddr::from([10, 0, 0, peer]),
                port: 6881,
                stopped: false,
                completed: false,
                bytes_left: Some(1),
                numwant: None,
                max_peers: None,
                private: None,
                peer_ids: crate::swarm::PeerIdUse::Hashed,
            };
            let (mut a, mut b) = (SelectedPeers::default(), SelectedPeers::default());
            // The first fills the silent shard's channel and waits; the
            // second finds it full and is refused without waiting.
            let (first, second) = futures_lite::future::zip(
                router.announce(input(1), &mut a),
                router.announce(input(2), &mut b),
            )
            .await;
            vec![first.expect_err("no reply"), second.expect_err("busy")]
        });
        assert_eq!(seen.result, [RouteError::NoReply, RouteError::Busy]);
        assert_eq!(seen.deadlines, 1);
        assert!(seen.mesh_full >= 1, "counted as a full channel");
    }

    #[test]
    fn a_websocket_queue_holds_its_bound_and_drops_the_rest() {
        let seen = with_mesh(1, 16, Duration::from_millis(300), |router| async move {
            let queue = router.ws_register(7, 2);
            let connection = ConnectionRef {
                node: 0,
                executor: router.id(),
                connection: 7,
            };
            let message = |n: usize| {
                OwnedOutMessage::AnnounceResponse(aquatic_ws_protocol::AnnounceResponse {
                    info_hash: InfoHash([1; 20]),
                    complete: n,
                    incomplete: 0,
                    announce_interval: 120,
                })
            };
            for n in 0..5 {
                router.deliver(connection, message(n));
            }
            let dropped = router.stats.ws_dropped.get();
            let mut queued = Vec::new();
            while let Some(Some(m)) = futures_lite::future::poll_once(queue.recv()).await {
                match m {
                    OwnedOutMessage::AnnounceResponse(r) => queued.push(r.complete),
                    other => panic!("unexpected {other:?}"),
                }
                if queued.len() == 2 {
                    break;
                }
            }
            // Room again once the connection has taken its messages.
            router.deliver(connection, message(9));
            let again = futures_lite::future::poll_once(queue.recv()).await;
            (queued, dropped, again.flatten().is_some())
        });
        assert_eq!(seen.result, (vec![0, 1], 3, true));
    }
}
