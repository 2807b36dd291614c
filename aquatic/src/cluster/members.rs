//! The members of the cluster as the runtime uses them: a [`NodeId`] per
//! member, this node's own id, and the live set that ownership is chosen
//! over.
//!
//! Positions never move: a member added by a reload gets the next one, a
//! member removed keeps its position as a tombstone that owns nothing (and
//! gets it back if its name returns), so a [`NodeId`] held anywhere (a
//! WebTorrent peer's connection, a link's queue, a reply slot) stays right
//! across reloads.

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
    /// Removed by a reload: owns nothing, is never dialled or accepted.
    removed: Vec<bool>,
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
            removed: vec![false; config.members.len()],
            me: NodeId(me),
        })
    }

    /// The member list of a reloaded `[cluster]` table, positions kept:
    /// known names keep theirs (with the new address), new names are
    /// appended, names no longer listed become tombstones. This node stays
    /// itself (`cluster.node` needs a restart). None when the cluster is
    /// off or would no longer list this node.
    pub fn reloaded(&self, config: &ClusterConfig) -> Option<Self> {
        if !config.enabled || !config.members.iter().any(|m| m.name == self.name(self.me)) {
            return None;
        }
        let mut next = self.clone();
        next.removed.iter_mut().for_each(|r| *r = true);
        for member in &config.members {
            match next.names.iter().position(|n| *n == member.name) {
                Some(i) => {
                    next.addresses[i] = member.address;
                    next.removed[i] = false;
                }
                None => {
                    next.names.push(member.name.clone());
                    next.addresses.push(member.address);
                    next.removed.push(false);
                }
            }
        }
        Some(next)
    }

    /// Whether a reload removed `node` (a tombstone).
    pub fn is_removed(&self, node: NodeId) -> bool {
        self.removed.get(node.0).copied().unwrap_or(true)
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// How many positions there are (tombstones included).
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

    /// The member called `name` (not a tombstone).
    pub fn by_name(&self, name: &str) -> Option<NodeId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(NodeId)
            .filter(|n| !self.is_removed(*n))
    }

    /// Every member but this one (tombstones left out).
    pub fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.names.len())
            .map(NodeId)
            .filter(move |n| *n != self.me && !self.is_removed(*n))
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
            .filter(|(i, _)| {
                *i == self.me.0 || (live.contains(NodeId(*i)) && !self.is_removed(NodeId(*i)))
            })
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
        if live && node.0 >= self.0.len() {
            self.0.resize(node.0 + 1, false);
        }
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
        if node.0 >= self.last_heard.len() {
            self.last_heard.resize(node.0 + 1, None);
        }
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

    /// A member removed by a reload leaves the live set at once; true if
    /// it was live.
    pub fn forget(&mut self, node: NodeId) -> bool {
        if let Some(slot) = self.last_heard.get_mut(node.0) {
            *slot = None;
        }
        self.live.set(node, false)
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
    fn a_reload_appends_new_members_and_keeps_removed_ones_as_tombstones() {
        let a = members("a");
        let mut config = ClusterConfig {
            enabled: true,
            node: "a".to_owned(),
            ..ClusterConfig::default()
        };
        let member = |name: &str, port: u16| ClusterMember {
            name: name.to_owned(),
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        config.members = vec![member("d", 4000), member("c", 3999), member("a", 3100)];
        let next = a.reloaded(&config).expect("a stays");
        assert_eq!(next.len(), 4);
        assert_eq!(next.by_name("c"), Some(NodeId(2)), "c keeps its position");
        assert_eq!(next.address(NodeId(2)), Some(member("c", 3999).address));
        assert_eq!(next.by_name("d"), Some(NodeId(3)), "d is appended");
        assert!(next.is_removed(NodeId(1)) && next.by_name("b").is_none());
        assert_eq!(next.others().collect::<Vec<_>>(), [NodeId(2), NodeId(3)]);
        let all = LiveSet(vec![true; 4]);
        assert!((0..=255u8).all(|b| next.owner(&InfoHash([b; 20]), &all) != NodeId(1)));
        config.members.push(member("b", 3101));
        let back = next.reloaded(&config).expect("a stays");
        assert_eq!(
            back.by_name("b"),
            Some(NodeId(1)),
            "b comes back to its place"
        );
        config.members.retain(|m| m.name != "a");
        assert!(
            back.reloaded(&config).is_none(),
            "a node cannot remove itself"
        );
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
