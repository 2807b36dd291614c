//! The outgoing queue of each link, and its figures: the router (on the
//! executor that runs the links) pushes frames, the link's writer takes
//! them in batches.
//!
//! Bounded: a request that meets a full queue is refused at once (the
//! caller answers "busy" or drops the datagram) and counted; a frame that
//! must arrive (an answer owed to the other node, a heartbeat reply) has
//! a reserve of the same size again before it too is dropped and counted.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    rc::Rc,
};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use crate::cluster::{frame::Frame, members::NodeId};

/// Figures of one link, read by the metrics timer.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Frames written.
    pub frames_out: Cell<u64>,
    /// Frames read.
    pub frames_in: Cell<u64>,
    /// Bytes written (TLS payload).
    pub bytes_out: Cell<u64>,
    /// Bytes read.
    pub bytes_in: Cell<u64>,
    /// Frames dropped: queue full or frame too long.
    pub dropped: Cell<u64>,
    /// Links made (dialled or accepted) after the first.
    pub reconnects: Cell<u64>,
    /// Connections claiming to be this member that failed authentication.
    pub refused: Cell<u64>,
    /// The last heartbeat's round trip, microseconds.
    pub heartbeat_rtt_micros: Cell<u64>,
    /// Links made so far.
    pub links: Cell<u64>,
    /// Torrents handed back to this member (it rejoined and owns them).
    pub handback_torrents_out: Cell<u64>,
    /// Their peers.
    pub handback_peers_out: Cell<u64>,
    /// Torrents this member handed back to this node.
    pub handback_torrents_in: Cell<u64>,
    /// Their peers.
    pub handback_peers_in: Cell<u64>,
    /// Rejoins whose swarms were not handed back: the link speaks a frame
    /// version without handback.
    pub handback_skipped: Cell<u64>,
}

/// Adds one to a counter cell.
pub fn bump(cell: &Cell<u64>) {
    cell.set(cell.get().wrapping_add(1));
}

/// One member's outgoing queue.
struct Queue {
    frames: RefCell<VecDeque<Frame>>,
    /// The frame version the current (or last) link agreed on.
    version: Cell<u16>,
    wake: LocalSender<()>,
    woken: RefCell<Option<LocalReceiver<()>>>,
    stats: Rc<LinkStats>,
}

impl Queue {
    fn new() -> Rc<Self> {
        let (wake, woken) = local_channel::new_bounded(1);
        Rc::new(Queue {
            frames: RefCell::default(),
            version: Cell::new(crate::cluster::frame::OLDEST_FRAME_VERSION),
            wake,
            woken: RefCell::new(Some(woken)),
            stats: Rc::default(),
        })
    }
}

/// The outgoing queues of every link, by member; members added by a
/// reload get theirs with [`LinkQueues::grow`] (positions never move).
pub struct LinkQueues {
    queues: RefCell<Vec<Rc<Queue>>>,
    capacity: usize,
}

impl LinkQueues {
    /// Queues for `members` members, each holding `capacity` requests.
    pub fn new(members: usize, capacity: usize) -> Self {
        Self {
            queues: RefCell::new((0..members).map(|_| Queue::new()).collect()),
            capacity: capacity.max(1),
        }
    }

    /// Makes room for `members` members (never shrinks: a removed member
    /// keeps its queue, emptied, and its figures).
    pub fn grow(&self, members: usize) {
        let mut queues = self.queues.borrow_mut();
        while queues.len() < members {
            queues.push(Queue::new());
        }
    }

    fn get(&self, of: NodeId) -> Option<Rc<Queue>> {
        self.queues.borrow().get(of.0).cloned()
    }

    /// Queues a frame that may be refused; false (counted) when the queue
    /// is full or the member unknown.
    pub fn push(&self, to: NodeId, frame: Frame) -> bool {
        self.push_within(to, frame, self.capacity)
    }

    /// Queues a frame that must arrive: it may use the reserve.
    pub fn push_must_arrive(&self, to: NodeId, frame: Frame) -> bool {
        self.push_within(to, frame, self.capacity.saturating_mul(2))
    }

    fn push_within(&self, to: NodeId, frame: Frame, limit: usize) -> bool {
        let Some(queue) = self.get(to) else {
            return false;
        };
        let mut frames = queue.frames.borrow_mut();
        if frames.len() >= limit {
            bump(&queue.stats.dropped);
            return false;
        }
        frames.push_back(frame);
        let _ = queue.wake.try_send(());
        true
    }

    /// Records the frame version `to`'s new link agreed on.
    pub fn set_version(&self, to: NodeId, version: u16) {
        if let Some(queue) = self.get(to) {
            queue.version.set(version);
        }
    }

    /// The frame version `to`'s link speaks.
    pub fn version(&self, to: NodeId) -> u16 {
        self.get(to)
            .map_or(crate::cluster::frame::OLDEST_FRAME_VERSION, |q| {
                q.version.get()
            })
    }

    /// Whether a request pushed for `to` now would find room for `frames`
    /// more with some to spare: background work (handback) waits for this
    /// rather than take the room of requests.
    pub fn has_room(&self, to: NodeId, frames: usize) -> bool {
        self.get(to)
            .is_some_and(|q| q.frames.borrow().len() + frames <= (self.capacity / 2).max(1))
    }

    /// The most frames a queue holds for requests.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes up to `most` frames for `to`, oldest first.
    pub fn take(&self, to: NodeId, most: usize, into: &mut Vec<Frame>) {
        if let Some(queue) = self.get(to) {
            let mut frames = queue.frames.borrow_mut();
            let n = frames.len().min(most);
            into.extend(frames.drain(..n));
        }
    }

    /// Whether frames wait for `to`.
    pub fn has_frames(&self, to: NodeId) -> bool {
        self.get(to).is_some_and(|q| !q.frames.borrow().is_empty())
    }

    /// Drops what waits for a member that left the live set (counted).
    pub fn clear(&self, to: NodeId) {
        if let Some(queue) = self.get(to) {
            let n = queue.frames.borrow_mut().drain(..).count() as u64;
            queue.stats.dropped.set(queue.stats.dropped.get() + n);
        }
    }

    /// The wake-up receiver of `to`'s writer (taken once; the writer of
    /// each new link borrows it back).
    pub fn take_waker(&self, to: NodeId) -> Option<LocalReceiver<()>> {
        let queue = self.get(to)?;
        let woken = queue.woken.borrow_mut().take();
        woken
    }

    /// Gives a waker back when a link ends.
    pub fn return_waker(&self, to: NodeId, woken: LocalReceiver<()>) {
        if let Some(queue) = self.get(to) {
            *queue.woken.borrow_mut() = Some(woken);
        }
    }

    /// A link's figures.
    pub fn stats(&self, of: NodeId) -> Option<Rc<LinkStats>> {
        self.get(of).map(|q| q.stats.clone())
    }
}
