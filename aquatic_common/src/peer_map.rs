//! One side (seeders or leechers) of a swarm.
//!
//! Most swarms hold a handful of peers. Two IndexMaps per swarm cost two
//! hash tables and two entry vectors each, even for one peer, so a side
//! starts as a short vector searched linearly (one small allocation) and
//! becomes an IndexMap only when it grows past [`SMALL_MAX`]; cleaning
//! turns a shrunken map back into a vector.

use indexmap::IndexMap;

use crate::swarm::is_sparse;

/// Peers kept in a plain vector before switching to a hash map.
const SMALL_MAX: usize = 8;

type LargeMap<K, P> = IndexMap<K, P, hashbrown::DefaultHashBuilder>;

/// Peers by key, in an order [`PeerMap::get_index`] can address.
#[derive(Debug)]
pub(crate) enum PeerMap<K, P> {
    Small(Vec<(K, P)>),
    Large(Box<LargeMap<K, P>>),
}

impl<K, P> Default for PeerMap<K, P> {
    fn default() -> Self {
        Self::Small(Vec::new())
    }
}

impl<K: std::hash::Hash + Eq, P> PeerMap<K, P> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Small(v) => v.len(),
            Self::Large(m) => m.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, key: &K) -> Option<&P> {
        match self {
            Self::Small(v) => v.iter().find(|(k, _)| k == key).map(|(_, p)| p),
            Self::Large(m) => m.get(key),
        }
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Removes `key`; the last entry takes its place.
    pub(crate) fn swap_remove(&mut self, key: &K) -> Option<P> {
        match self {
            Self::Small(v) => {
                let i = v.iter().position(|(k, _)| k == key)?;
                Some(v.swap_remove(i).1)
            }
            Self::Large(m) => m.swap_remove(key),
        }
    }

    /// Inserts or replaces, with one lookup. Returns whether `key` was
    /// already present (and its peer replaced).
    pub(crate) fn insert(&mut self, key: K, peer: P) -> bool {
        match self {
            Self::Small(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = peer;
                    return true;
                }
                if v.len() < SMALL_MAX {
                    if v.len() == v.capacity() {
                        // 1, 2, 4, 8: no room reserved that a small swarm
                        // does not use.
                        v.reserve_exact(v.len().max(1));
                    }
                    v.push((key, peer));
                } else {
                    let mut map = LargeMap::with_capacity_and_hasher(
                        SMALL_MAX * 2,
                        hashbrown::DefaultHashBuilder::default(),
                    );
                    map.extend(v.drain(..));
                    map.insert(key, peer);
                    *self = Self::Large(Box::new(map));
                }
                false
            }
            Self::Large(m) => m.insert(key, peer).is_some(),
        }
    }

    pub(crate) fn get_index(&self, i: usize) -> Option<(&K, &P)> {
        match self {
            Self::Small(v) => v.get(i).map(|(k, p)| (k, p)),
            Self::Large(m) => m.get_index(i),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &P)> {
        let (small, large) = match self {
            Self::Small(v) => (Some(v.iter().map(|(k, p)| (k, p))), None),
            Self::Large(m) => (None, Some(m.iter())),
        };
        small
            .into_iter()
            .flatten()
            .chain(large.into_iter().flatten())
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut P) -> bool) {
        match self {
            Self::Small(v) => v.retain_mut(|(k, p)| keep(k, p)),
            Self::Large(m) => m.retain(|k, p| keep(k, p)),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        match self {
            Self::Small(v) => v.capacity(),
            Self::Large(m) => m.capacity(),
        }
    }

    /// Gives back memory a side no longer needs: a large map that fell to
    /// a handful of peers becomes a vector again; a sparse one shrinks.
    pub(crate) fn shrink_if_sparse(&mut self) {
        match self {
            Self::Small(v) => {
                if v.capacity() > v.len() * 2 {
                    v.shrink_to_fit();
                }
            }
            Self::Large(m) => {
                if m.len() <= SMALL_MAX / 2 {
                    let v: Vec<(K, P)> = m.drain(..).collect();
                    *self = Self::Small(v);
                } else if is_sparse(m.len(), m.capacity()) {
                    m.shrink_to_fit();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_map_and_shrinks_back() {
        let mut map: PeerMap<u32, u32> = PeerMap::default();
        for i in 0..20 {
            map.insert(i, i * 10);
            assert_eq!(map.len(), i as usize + 1);
        }
        assert!(matches!(map, PeerMap::Large(_)));
        assert!(map.insert(3, 99));
        assert!(!map.insert(100, 1));
        assert_eq!(map.swap_remove(&100), Some(1));
        assert_eq!(map.get(&3), Some(&99));
        assert_eq!(map.len(), 20);
        for i in 0..18 {
            assert_eq!(map.swap_remove(&i), Some(if i == 3 { 99 } else { i * 10 }));
        }
        map.shrink_if_sparse();
        assert!(matches!(map, PeerMap::Small(_)));
        let mut keys: Vec<u32> = map.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![18, 19]);
        assert!(map.get_index(1).is_some() && map.get_index(2).is_none());
        map.retain(|k, _| *k == 19);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key(&19));
    }
}
