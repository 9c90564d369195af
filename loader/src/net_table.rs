//! A table of values by network, built for a million entries (bans,
//! offenders): the entries sit in one vector, each at a slot that never
//! moves, and a hash table of 4-byte slot numbers finds them. A `HashMap`
//! of as many entries keeps each key beside its value in a table twice the
//! size of what it holds (hashbrown doubles at 7/8 full): 236 MiB for a
//! million bans; here the vector holds each entry once and the index costs
//! 5 bytes a bucket.
use ipnet::IpNet;
use std::hash::BuildHasher as _;

pub struct NetTable<V> {
    /// `None`: a free slot (listed in `free`).
    slots: Vec<Option<(IpNet, V)>>,
    free: Vec<u32>,
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl<V> Default for NetTable<V> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<V> NetTable<V> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Room for `n` more entries without growing.
    pub fn reserve(&mut self, n: usize) {
        let slots = &self.slots;
        let hasher = &self.hasher;
        self.index.reserve(n, |&i| hash_at(hasher, slots, i));
        self.slots.reserve(n.saturating_sub(self.free.len()));
    }

    fn find(&self, net: &IpNet) -> Option<u32> {
        let hash = self.hasher.hash_one(net);
        self.index
            .find(hash, |&i| key_at(&self.slots, i) == net)
            .copied()
    }

    /// The slot of `net`: stable until it is removed.
    pub fn slot_of(&self, net: &IpNet) -> Option<u32> {
        self.find(net)
    }

    pub fn contains_key(&self, net: &IpNet) -> bool {
        self.find(net).is_some()
    }

    pub fn get(&self, net: &IpNet) -> Option<&V> {
        self.find(net).map(|i| &self.at(i).1)
    }

    pub fn get_mut(&mut self, net: &IpNet) -> Option<&mut V> {
        self.find(net).map(|i| &mut self.at_mut(i).1)
    }

    /// Keeps the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&IpNet, &mut V) -> bool) {
        let gone: Vec<IpNet> = self
            .slots
            .iter_mut()
            .flatten()
            .filter_map(|(net, v)| (!keep(net, v)).then_some(*net))
            .collect();
        for net in gone {
            self.remove(&net);
        }
    }

    /// The live slots, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
    }

    /// One past the last slot (live or free): `slots_in` walks up to it.
    pub fn slot_end(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The live entries of the slots in `range` (slots past the end are
    /// none): a walk over a table that changes between its steps (see
    /// `bans::sliced`).
    pub fn slots_in(&self, range: std::ops::Range<u32>) -> impl Iterator<Item = &(IpNet, V)> {
        let end = (range.end as usize).min(self.slots.len());
        let start = (range.start as usize).min(end);
        self.slots[start..end].iter().flatten()
    }

    /// The entry at `slot` (which must hold one).
    pub fn at(&self, slot: u32) -> &(IpNet, V) {
        self.slots[slot as usize].as_ref().expect("a live slot")
    }

    pub fn at_mut(&mut self, slot: u32) -> &mut (IpNet, V) {
        self.slots[slot as usize].as_mut().expect("a live slot")
    }

    /// Inserts or replaces; returns the slot and the value replaced.
    pub fn insert(&mut self, net: IpNet, value: V) -> (u32, Option<V>) {
        if let Some(i) = self.find(&net) {
            let old = std::mem::replace(&mut self.at_mut(i).1, value);
            return (i, Some(old));
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some((net, value));
                i
            }
            None => {
                let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 entries");
                self.slots.push(Some((net, value)));
                i
            }
        };
        let hash = self.hasher.hash_one(net);
        let slots = &self.slots;
        let hasher = &self.hasher;
        self.index
            .insert_unique(hash, i, |&j| hash_at(hasher, slots, j));
        (i, None)
    }

    pub fn remove(&mut self, net: &IpNet) -> Option<V> {
        let hash = self.hasher.hash_one(net);
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(hash, |&i| key_at(slots, i) == net)
            .ok()?;
        let (i, _) = entry.remove();
        self.free.push(i);
        self.slots[i as usize].take().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &V)> {
        self.slots.iter().flatten().map(|(n, v)| (n, v))
    }
}

fn key_at<V>(slots: &[Option<(IpNet, V)>], i: u32) -> &IpNet {
    &slots[i as usize]
        .as_ref()
        .expect("indexed slots are live")
        .0
}

fn hash_at<V>(hasher: &foldhash::fast::RandomState, slots: &[Option<(IpNet, V)>], i: u32) -> u64 {
    hasher.hash_one(key_at(slots, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(i: u32) -> IpNet {
        IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from(i)))
    }

    /// Against a `HashMap` doing the same inserts, replacements and
    /// removals: the same contents, and slots that never move.
    #[test]
    fn behaves_as_a_map_with_stable_slots() {
        let mut t = NetTable::default();
        let mut m = std::collections::HashMap::new();
        let mut slots = std::collections::HashMap::new();
        let mut x = 12345u32;
        for step in 0..50_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let n = net(x % 3000);
            if x.is_multiple_of(3) {
                assert_eq!(t.remove(&n), m.remove(&n));
                slots.remove(&n);
            } else {
                let (slot, old) = t.insert(n, step);
                assert_eq!(old, m.insert(n, step));
                if let Some(s) = slots.insert(n, slot) {
                    assert_eq!(s, slot, "a live entry's slot moved");
                }
            }
            assert_eq!(t.len(), m.len());
        }
        for (n, v) in &m {
            assert_eq!(t.get(n), Some(v));
            assert_eq!(t.at(slots[n]).1, *v);
        }
        let mut seen: Vec<_> = t.iter().map(|(n, v)| (*n, *v)).collect();
        let mut want: Vec<_> = m.into_iter().collect();
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
    }
}
