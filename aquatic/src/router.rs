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
    shard_of, time::SecondsSinceStart, time::ServerStartInstant, AnnounceOutcome, InfoHash, PeerId,
    ScrapeStats, SelectedPeers, ShardId,
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
    host::{AnnounceReplyTo, Effects, ReplyAddress, ShardRequest, SharedHost},
    metrics::ExecutorStats,
    swarm::{AnnounceInput, ConnectionPeers, ConnectionRef, Refusal, SwarmKind},
    timing::within,
};

/// How long a request waits for another executor's answer.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);
/// How often a non-empty outbox is retried.
const OUTBOX_RETRY: Duration = Duration::from_millis(1);

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
    /// Requests outstanding per destination.
    in_flight: Vec<Cell<usize>>,
    max_in_flight: usize,
    announces: PendingReplies<(AnnounceOutcome, SelectedPeers)>,
    scrapes: PendingReplies<Vec<ScrapeStats>>,
    outbox: Outbox,
    /// Outgoing queues of the WebSocket connections this executor holds,
    /// each with the most messages it may hold.
    ws_connections: RefCell<HashMap<u64, (LocalSender<OwnedOutMessage>, usize)>>,
}

/// Counts a request outstanding to one destination while it lives.
struct InFlight<'a> {
    count: &'a Cell<usize>,
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
            in_flight: (0..shards).map(|_| Cell::new(0)).collect(),
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
        };
        (router, woken)
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
        let count = &self.in_flight[to.0];
        if count.get() >= self.max_in_flight {
            self.stats.mesh_full.bump();
            return None;
        }
        count.set(count.get() + 1);
        Some(InFlight { count })
    }

    /// Sends a request and opens its reply slot.
    fn request<'a, T>(
        &'a self,
        to: ShardId,
        replies: &'a PendingReplies<T>,
        request: impl FnOnce(ReplyAddress) -> ShardRequest,
    ) -> Result<Waiting<'a, T>, RouteError> {
        let in_flight = self.reserve(to).ok_or(RouteError::Busy)?;
        let token = self.token();
        let receiver = replies.open(token);
        let waiting = Waiting {
            replies,
            token,
            receiver,
            _in_flight: in_flight,
        };
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
        let owner = self.owner(&input.info_hash);
        self.host.with(|host| {
            let request = host.rules().bt_announce(input)?;
            if owner == self.me {
                return Ok(Some(host.announce(now, &request, out)));
            }
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
        let now = self.now();
        let owner = self.owner(&input.info_hash);
        let request = self.host.with(|host| host.rules().bt_announce(input))?;
        if owner == self.me {
            return Ok(self.host.with(|host| host.announce(now, &request, out)));
        }
        let waiting = self.request(owner, &self.announces, |address| ShardRequest::Announce {
            request,
            reply_to: AnnounceReplyTo::Executor(address),
        })?;
        match within(self.deadline, waiting.recv()).await {
            Some(Some((outcome, peers))) => {
                *out = peers;
                Ok(outcome)
            }
            _ => {
                self.deadline_passed();
                Err(RouteError::NoReply)
            }
        }
    }

    /// Checks a scrape against the rules; true when this shard owns every
    /// hash (the caller may then answer with [`Router::scrape_here`]).
    pub fn check_scrape(
        &self,
        hashes: impl ExactSizeIterator<Item = InfoHash> + Clone,
    ) -> Result<bool, Refusal> {
        self.host.with(|host| host.rules().scrape(hashes.clone()))?;
        Ok(hashes.into_iter().all(|h| self.owner(&h) == self.me))
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
        let mut stats: Vec<Option<ScrapeStats>> = vec![None; hashes.len()];
        let parts = partition_by_owner(self.shards, hashes.iter().enumerate(), |(_, h)| h);
        let mut waiting = Vec::new();
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
                        stats[*i] = Some(s);
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
        let reached_owner = if owner == self.me {
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

    /// A connection closed: every shard that holds one of its peers drops it.
    pub fn ws_closed(&self, connection: ConnectionRef, peers: Vec<(InfoHash, PeerId)>) {
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
                if !self.announces.resolve(token, (outcome, peers)) {
                    self.stats.mesh_late_replies.bump();
                }
            }
            MeshMessage::ScrapeReply { token, stats } => {
                if !self.scrapes.resolve(token, stats) {
                    self.stats.mesh_late_replies.bump();
                }
            }
            MeshMessage::WsDeliver {
                connection,
                message,
            } => self.deliver(connection, message),
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
