//! The members of the cluster as the runtime uses them: a [`NodeId`] per
//! member, this node's own id, and the live set that ownership is chosen
//! over.

use aquatic_common::InfoHash;

use crate::{cluster::ownership, config::ClusterConfig};

/// A member, by its position in the configured member list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// The configured members and which of them is this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    names: Vec<String>,
    addresses: Vec<std::net::SocketAddr>,
    me: NodeId,
}

impl Members {
    /// From a validated `[cluster]` table (`node` is one of `members`);
    /// None when the cluster is off.
    pub fn from_config(config: &ClusterConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let me = config.members.iter().position(|m| m.name == config.node)?;
        Some(Self {
            names: config.members.iter().map(|m| m.name.clone()).collect(),
            addresses: config.members.iter().map(|m| m.address).collect(),
            me: NodeId(me),
        })
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Never true for a validated configuration.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// A member's name.
    pub fn name(&self, node: NodeId) -> &str {
        self.names.get(node.0).map_or("", String::as_str)
    }

    /// A member's link address.
    pub fn address(&self, node: NodeId) -> Option<std::net::SocketAddr> {
        self.addresses.get(node.0).copied()
    }

    /// The member called `name`.
    pub fn by_name(&self, name: &str) -> Option<NodeId> {
        self.names.iter().position(|n| n == name).map(NodeId)
    }

    /// Every member but this one.
    pub fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.names.len())
            .map(NodeId)
            .filter(move |n| *n != self.me)
    }

    /// Whether this node dials `other` (rather than waiting for it to
    /// dial): the member with the smaller name dials, so each pair has one
    /// link and no two nodes race to make it.
    pub fn dials(&self, other: NodeId) -> bool {
        self.name(self.me) < self.name(other)
    }

    /// The live member that owns `info_hash`; this node when no other
    /// member is live.
    pub fn owner(&self, info_hash: &InfoHash, live: &LiveSet) -> NodeId {
        let live_names = self
            .names
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == self.me.0 || live.contains(NodeId(*i)))
            .map(|(i, name)| (i, name.as_str()))
            .collect::<Vec<_>>();
        ownership::owner_index(live_names.iter().map(|(_, name)| *name), info_hash)
            .and_then(|i| live_names.get(i))
            .map_or(self.me, |(i, _)| NodeId(*i))
    }
}

/// The members this node believes alive (itself always).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveSet(Vec<bool>);

impl LiveSet {
    /// Only `me` of `members` members.
    pub fn only(me: NodeId, members: usize) -> Self {
        let mut live = vec![false; members];
        if let Some(slot) = live.get_mut(me.0) {
            *slot = true;
        }
        Self(live)
    }

    /// Whether `node` is live.
    pub fn contains(&self, node: NodeId) -> bool {
        self.0.get(node.0).copied().unwrap_or(false)
    }

    /// Marks `node` live or not; true if that changed anything.
    pub fn set(&mut self, node: NodeId, live: bool) -> bool {
        match self.0.get_mut(node.0) {
            Some(slot) if *slot != live => {
                *slot = live;
                true
            }
            _ => false,
        }
    }

    /// The live members.
    pub fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, live)| **live)
            .map(|(i, _)| NodeId(i))
    }
}

/// When each member was last heard from, and so which are live: a member
/// silent for the failure timeout leaves the set, one heard again rejoins.
/// Time is passed in (seconds as `f64` from any fixed zero), so this is
/// tested without a clock.
#[derive(Clone, Debug)]
pub struct Liveness {
    last_heard: Vec<Option<f64>>,
    timeout_secs: f64,
    live: LiveSet,
}

impl Liveness {
    /// Nobody heard yet: only `me` is live.
    pub fn new(members: &Members, timeout: std::time::Duration) -> Self {
        Self {
            last_heard: vec![None; members.len()],
            timeout_secs: timeout.as_secs_f64(),
            live: LiveSet::only(members.me(), members.len()),
        }
    }

    /// A frame from `node` arrived at `now`; true if it (re)joined.
    pub fn heard(&mut self, node: NodeId, now: f64) -> bool {
        if let Some(slot) = self.last_heard.get_mut(node.0) {
            *slot = Some(now);
        }
        self.live.set(node, true)
    }

    /// Drops the members silent since `now - timeout`; the ones that left.
    pub fn expire(&mut self, me: NodeId, now: f64) -> Vec<NodeId> {
        let mut left = Vec::new();
        for (i, heard) in self.last_heard.iter().enumerate() {
            let node = NodeId(i);
            if node == me {
                continue;
            }
            let silent = heard.is_none_or(|t| now - t > self.timeout_secs);
            if silent && self.live.set(node, false) {
                left.push(node);
            }
        }
        left
    }

    /// The live set now.
    pub fn live(&self) -> &LiveSet {
        &self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterMember;

    fn members(me: &str) -> Members {
        let mut config = ClusterConfig {
            enabled: true,
            node: me.to_owned(),
            ..ClusterConfig::default()
        };
        config.members = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, name)| ClusterMember {
                name: (*name).to_owned(),
                address: std::net::SocketAddr::from(([127, 0, 0, 1], 3100 + i as u16)),
            })
            .collect();
        Members::from_config(&config).expect("enabled")
    }

    #[test]
    fn every_node_agrees_on_the_owner_given_the_same_live_set() {
        let all = LiveSet(vec![true; 3]);
        let (a, b, c) = (members("a"), members("b"), members("c"));
        for byte in 0..=255u8 {
            let hash = InfoHash([byte; 20]);
            let owner = a.owner(&hash, &all);
            assert_eq!(b.owner(&hash, &all), owner);
            assert_eq!(c.owner(&hash, &all), owner);
        }
    }

    #[test]
    fn a_node_alone_owns_everything() {
        let a = members("a");
        let alone = LiveSet::only(a.me(), 3);
        assert!((0..=255u8).all(|b| a.owner(&InfoHash([b; 20]), &alone) == a.me()));
    }

    #[test]
    fn one_link_per_pair() {
        let (a, b) = (members("a"), members("b"));
        assert!(a.dials(NodeId(1)) && !b.dials(NodeId(0)));
        assert_eq!(a.others().collect::<Vec<_>>(), [NodeId(1), NodeId(2)]);
    }

    #[test]
    fn silence_past_the_timeout_leaves_and_a_heartbeat_rejoins() {
        let a = members("a");
        let mut liveness = Liveness::new(&a, std::time::Duration::from_secs(5));
        assert!(liveness.heard(NodeId(1), 0.0), "joined");
        assert!(!liveness.heard(NodeId(1), 1.0), "already live");
        assert!(
            liveness.expire(a.me(), 6.0).is_empty(),
            "5 s of silence is allowed"
        );
        assert_eq!(liveness.expire(a.me(), 6.5), [NodeId(1)]);
        assert!(!liveness.live().contains(NodeId(1)));
        assert!(liveness.live().contains(a.me()), "never leaves itself");
        assert!(liveness.heard(NodeId(1), 7.0), "rejoined");
    }
}
