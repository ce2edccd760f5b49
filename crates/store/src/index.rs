//! Compact in-memory index building blocks: a slab of records addressed by `u32` slots and
//! hash indexes from a key's 64-bit hash to the set of slots holding that key.
//!
//! Hash indexes store only hashes and slots; a lookup returns candidates that the caller
//! confirms against the record itself, so a collision costs a comparison, never a wrong
//! answer.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A slot number in a [`Slab`].
pub(crate) type Slot = u32;

/// Records addressed by slot; freed slots are reused.
///
/// The records are kept in chunks of [`SLAB_CHUNK`] slots that never move once the first
/// chunk is full: growing by a chunk allocates that chunk alone, where one `Vec` would copy every record each time it
/// doubled (29–47 ms at 262,144 entries, inside an apply, on every replica at the same
/// revision).
#[derive(Debug)]
pub(crate) struct Slab<T> {
    chunks: Vec<Vec<Option<T>>>,
    free: Vec<Slot>,
    len: usize,
    /// Slots handed out so far, freed or not (the next new slot's number).
    used: usize,
}

/// Slots per chunk of a [`Slab`] (a power of two).
pub(crate) const SLAB_CHUNK: usize = 1 << 12;

/// The chunk and the place in it of `slot`.
fn slab_place(slot: Slot) -> (usize, usize) {
    let slot = slot as usize;
    (slot / SLAB_CHUNK, slot % SLAB_CHUNK)
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self { chunks: Vec::new(), free: Vec::new(), len: 0, used: 0 }
    }
}

impl<T> Slab<T> {
    /// Stores `item` in a free slot, or in a new one; `None` (and `item` dropped) when every
    /// `u32` slot is in use. Callers check [`Slab::has_room`] before they change anything.
    pub(crate) fn insert(&mut self, item: T) -> Option<Slot> {
        // Free slots always name a place in a chunk.
        if let Some(slot) = self.free.pop()
            && let Some(place) = self.place_mut(slot)
        {
            *place = Some(item);
            self.len = self.len.saturating_add(1);
            return Some(slot);
        }
        let slot = Slot::try_from(self.used).ok()?;
        let (chunk, _) = slab_place(slot);
        if chunk == self.chunks.len() {
            // The first chunk grows as a `Vec` does, so a small store keeps little memory;
            // the others are allocated whole.
            self.chunks.push(if chunk == 0 { Vec::new() } else { Vec::with_capacity(SLAB_CHUNK) });
        }
        self.chunks.get_mut(chunk)?.push(Some(item));
        self.used = self.used.saturating_add(1);
        self.len = self.len.saturating_add(1);
        Some(slot)
    }

    /// Whether [`Slab::insert`] has a slot to give.
    pub(crate) fn has_room(&self) -> bool {
        !self.free.is_empty() || Slot::try_from(self.used).is_ok()
    }

    fn place(&self, slot: Slot) -> Option<&Option<T>> {
        let (chunk, at) = slab_place(slot);
        self.chunks.get(chunk)?.get(at)
    }

    fn place_mut(&mut self, slot: Slot) -> Option<&mut Option<T>> {
        let (chunk, at) = slab_place(slot);
        self.chunks.get_mut(chunk)?.get_mut(at)
    }

    pub(crate) fn get(&self, slot: Slot) -> Option<&T> {
        self.place(slot).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, slot: Slot) -> Option<&mut T> {
        self.place_mut(slot).and_then(Option::as_mut)
    }

    pub(crate) fn replace(&mut self, slot: Slot, item: T) {
        if let Some(place) = self.place_mut(slot) {
            *place = Some(item);
        }
    }

    pub(crate) fn remove(&mut self, slot: Slot) -> Option<T> {
        let taken = self.place_mut(slot).and_then(Option::take);
        if taken.is_some() {
            self.free.push(slot);
            self.len = self.len.saturating_sub(1);
        }
        taken
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Room in the list of chunks for `additional` more records (each chunk is still
    /// allocated when its first record arrives).
    pub(crate) fn reserve(&mut self, additional: usize) {
        let want = self.used.saturating_add(additional).div_ceil(SLAB_CHUNK);
        self.chunks.reserve(want.saturating_sub(self.chunks.len()));
    }
}

/// The slots under one hash, ordered by an order key `K` and then by slot: a single slot
/// needs no allocation. Indexes that need no order use `K = ()`, which costs nothing; the
/// entry indexes use the entry's creation number, so a page of a list walks a set from
/// where the previous page stopped instead of sorting the whole set.
#[derive(Debug)]
pub(crate) enum SlotSet<K = ()> {
    One(K, Slot),
    // Boxed so a single-slot key stays small in the table.
    #[allow(clippy::box_collection)]
    Many(Box<BTreeSet<(K, Slot)>>),
}

impl<K: Ord + Copy> SlotSet<K> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::One(..) => 1,
            Self::Many(s) => s.len(),
        }
    }

    /// Adds `slot` under order key `key`.
    pub(crate) fn insert(&mut self, key: K, slot: Slot) {
        match self {
            Self::One(k, existing) => {
                if (*k, *existing) != (key, slot) {
                    let set: BTreeSet<(K, Slot)> = [(*k, *existing), (key, slot)].into();
                    *self = Self::Many(Box::new(set));
                }
            }
            Self::Many(set) => {
                set.insert((key, slot));
            }
        }
    }

    /// Removes `slot` (held under `key`); true when nothing is left and the caller must
    /// drop the set.
    pub(crate) fn remove(&mut self, key: K, slot: Slot) -> bool {
        match self {
            Self::One(k, existing) => (*k, *existing) == (key, slot),
            Self::Many(many) => {
                many.remove(&(key, slot));
                if many.len() == 1 {
                    if let Some(&(k, only)) = many.iter().next() {
                        *self = Self::One(k, only);
                    }
                    false
                } else {
                    many.is_empty()
                }
            }
        }
    }

    /// The slots, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.keyed().map(|(_, s)| s)
    }

    /// The slots with their order keys, in order.
    pub(crate) fn keyed(&self) -> SlotSetIter<'_, K> {
        match self {
            Self::One(k, s) => SlotSetIter::One(Some((*k, *s))),
            Self::Many(set) => SlotSetIter::Many(set.range(..)),
        }
    }

    /// The slots whose order key is above `after`, in order.
    pub(crate) fn keyed_after(&self, after: K) -> SlotSetIter<'_, K> {
        match self {
            Self::One(k, s) => SlotSetIter::One(Some((*k, *s)).filter(|_| *k > after)),
            Self::Many(set) => SlotSetIter::Many(set.range((
                std::ops::Bound::Excluded((after, Slot::MAX)),
                std::ops::Bound::Unbounded,
            ))),
        }
    }
}

/// Iterator over a [`SlotSet`]: slots with their order keys.
pub(crate) enum SlotSetIter<'a, K> {
    One(Option<(K, Slot)>),
    Many(std::collections::btree_set::Range<'a, (K, Slot)>),
}

impl<K: Copy> Iterator for SlotSetIter<'_, K> {
    type Item = (K, Slot);
    fn next(&mut self) -> Option<(K, Slot)> {
        match self {
            Self::One(s) => s.take(),
            Self::Many(it) => it.next().copied(),
        }
    }
}

/// A hasher for keys that are already 64-bit hashes.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The 64-bit hash used for every index key. Deterministic across processes.
pub(crate) fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    // FNV-1a over the key's Hash output: cheap for the short strings indexed here.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            // Final avalanche so low bits are well mixed for the hash table.
            let mut h = self.0;
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
            h
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut h);
    h.finish()
}

/// One hash of a [`HashIndex::dump`]: the hash, whether its set is a single slot, and the
/// set.
#[cfg(test)]
pub(crate) type Dumped<K> = (u64, bool, Vec<(K, Slot)>);

/// A multimap from a key's hash to slots, each set ordered by `K` (see [`SlotSet`]).
///
/// The hashes are spread over [`HASH_SHARDS`] tables by six bits of the hash that the
/// tables themselves do not use (bits 32–37: a table uses the low bits for the bucket and
/// the top seven for its tag). A table doubles when it is 7/8 full, moving every record:
/// the indexes' tables growing past 114,000 and 229,000 entries took 30–155 ms of one apply, on every
/// replica at the same revision. Tables of a 64th each reach that point thousands of
/// records apart, each moving a 64th.
#[derive(Debug)]
pub(crate) struct HashIndex<K = ()> {
    shards: Box<[Shard<K>; HASH_SHARDS]>,
}

type Shard<K> = HashMap<u64, SlotSet<K>, BuildHasherDefault<PassThrough>>;

/// Tables per [`HashIndex`].
pub(crate) const HASH_SHARDS: usize = 64;

/// The table of `hash` in a [`HashIndex`].
fn shard_of(hash: u64) -> usize {
    // Six bits: below HASH_SHARDS.
    ((hash >> 32) & 0x3f) as usize
}

impl<K> Default for HashIndex<K> {
    fn default() -> Self {
        Self { shards: Box::new(std::array::from_fn(|_| HashMap::default())) }
    }
}

impl<K: Ord + Copy> HashIndex<K> {
    fn shard(&self, hash: u64) -> Option<&Shard<K>> {
        self.shards.get(shard_of(hash))
    }

    fn shard_mut(&mut self, hash: u64) -> Option<&mut Shard<K>> {
        self.shards.get_mut(shard_of(hash))
    }

    /// Adds `slot` under `hash`, ordered by `key`.
    pub(crate) fn insert_keyed(&mut self, hash: u64, key: K, slot: Slot) {
        let Some(map) = self.shard_mut(hash) else { return };
        match map.get_mut(&hash) {
            None => {
                map.insert(hash, SlotSet::One(key, slot));
            }
            Some(set) => set.insert(key, slot),
        }
    }

    /// Removes `slot` (added under `key`) from `hash`.
    pub(crate) fn remove_keyed(&mut self, hash: u64, key: K, slot: Slot) {
        let Some(map) = self.shard_mut(hash) else { return };
        let Some(set) = map.get_mut(&hash) else { return };
        if set.remove(key, slot) {
            map.remove(&hash);
        }
    }

    /// Adds `items`, `(hash, key, slot)` sorted and without repeats, as one
    /// [`HashIndex::insert_keyed`] each would, building each new hash's set at once.
    pub(crate) fn extend_sorted(&mut self, items: &[(u64, K, Slot)]) {
        let runs = items.chunk_by(|a, b| a.0 == b.0);
        let mut new = [0usize; HASH_SHARDS];
        for run in runs.clone() {
            if let Some(n) = run.first().and_then(|&(hash, _, _)| new.get_mut(shard_of(hash))) {
                *n = n.saturating_add(1);
            }
        }
        for (map, n) in self.shards.iter_mut().zip(new) {
            map.reserve(n);
        }
        for run in runs {
            let Some(&(hash, key, slot)) = run.first() else { continue };
            let Some(map) = self.shard_mut(hash) else { continue };
            if let Some(set) = map.get_mut(&hash) {
                for &(_, key, slot) in run {
                    set.insert(key, slot);
                }
            } else if run.len() == 1 {
                map.insert(hash, SlotSet::One(key, slot));
            } else {
                let set: BTreeSet<(K, Slot)> = run.iter().map(|&(_, k, s)| (k, s)).collect();
                map.insert(hash, SlotSet::Many(Box::new(set)));
            }
        }
    }

    /// Every hash with its slots and their order keys, sorted: for comparing indexes.
    #[cfg(test)]
    pub(crate) fn dump(&self) -> Vec<Dumped<K>> {
        let mut out: Vec<_> = self
            .shards
            .iter()
            .flat_map(|map| map.iter())
            .map(|(&h, set)| (h, matches!(set, SlotSet::One(..)), set.keyed().collect()))
            .collect();
        out.sort_unstable_by_key(|(h, _, _)| *h);
        out
    }

    pub(crate) fn get(&self, hash: u64) -> Option<&SlotSet<K>> {
        self.shard(hash)?.get(&hash)
    }

    pub(crate) fn count(&self, hash: u64) -> usize {
        self.get(hash).map_or(0, SlotSet::len)
    }

    /// The hashes that have at least one slot, in no particular order.
    pub(crate) fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.shards.iter().flat_map(|map| map.keys().copied())
    }
}

impl HashIndex {
    /// Adds `slot` under `hash`.
    pub(crate) fn insert(&mut self, hash: u64, slot: Slot) {
        self.insert_keyed(hash, (), slot);
    }

    /// Removes `slot` from `hash`.
    pub(crate) fn remove(&mut self, hash: u64, slot: Slot) {
        self.remove_keyed(hash, (), slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Growing a slab by many chunks moves no record (a `Vec` would copy them all each
    /// time it doubled), and slots across chunk boundaries read, replace and free.
    #[test]
    fn slab_records_stay_in_place_as_it_grows() {
        let mut s = Slab::default();
        for i in 0..SLAB_CHUNK {
            assert_eq!(s.insert(i), Some(Slot::try_from(i).unwrap()));
        }
        let before: *const usize = s.get(0).unwrap();
        for i in SLAB_CHUNK..SLAB_CHUNK * 3 + 5 {
            assert_eq!(s.insert(i), Some(Slot::try_from(i).unwrap()));
        }
        assert!(std::ptr::eq(before, s.get(0).unwrap()), "the first record moved");
        assert_eq!(s.chunks.len(), 4);
        let edge = Slot::try_from(SLAB_CHUNK).unwrap();
        assert_eq!(s.get(edge - 1), Some(&(SLAB_CHUNK - 1)));
        assert_eq!(s.get(edge), Some(&SLAB_CHUNK));
        s.replace(edge, 7);
        assert_eq!(s.remove(edge), Some(7));
        assert_eq!(s.get(edge), None);
        assert_eq!(s.len(), SLAB_CHUNK * 3 + 4);
        assert_eq!(s.insert(9), Some(edge), "the freed slot is used again");
        assert_eq!(s.get(Slot::try_from(SLAB_CHUNK * 3 + 5).unwrap()), None);
    }

    /// Hashes spread evenly over the tables, and every operation finds its hash's table.
    #[test]
    fn hash_index_spreads_hashes_over_its_tables() {
        let mut h = HashIndex::default();
        let n = 64 * 1024u32;
        let hash = |i: u32| key_hash(&format!("spiffe://example.org/w/{i}"));
        for i in 0..n {
            h.insert(hash(i), i);
        }
        let sizes: Vec<usize> = h.shards.iter().map(HashMap::len).collect();
        let even = n as usize / HASH_SHARDS;
        assert!(sizes.iter().all(|&s| s > even * 4 / 5 && s < even * 6 / 5), "{sizes:?}");
        assert_eq!(h.hashes().count(), n as usize);
        for i in (0..n).step_by(97) {
            assert_eq!(h.count(hash(i)), 1);
            h.remove(hash(i), i);
            assert_eq!(h.get(hash(i)).map(SlotSet::len), None);
        }
        h.insert_keyed(hash(1), (), 5);
        assert_eq!(h.count(hash(1)), 2);
    }

    #[test]
    fn slab_reuses_slots() {
        let mut s = Slab::default();
        let a = s.insert("a").unwrap();
        let b = s.insert("b").unwrap();
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        let c = s.insert("c").unwrap();
        assert_eq!(c, a);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn hash_index_one_many_one() {
        let mut i = HashIndex::default();
        i.insert(7, 1);
        i.insert(7, 1);
        assert_eq!(i.count(7), 1);
        i.insert(7, 2);
        assert_eq!(i.get(7).unwrap().iter().collect::<Vec<_>>(), vec![1, 2]);
        i.remove(7, 1);
        assert!(matches!(i.get(7), Some(SlotSet::One((), 2))));
        i.remove(7, 2);
        assert_eq!(i.count(7), 0);
        assert_eq!(key_hash("abc"), key_hash("abc"));
        assert_ne!(key_hash("abc"), key_hash("abd"));
    }

    #[test]
    fn keyed_sets_iterate_by_key_and_resume_after_one() {
        let mut i: HashIndex<u64> = HashIndex::default();
        // Slot order disagrees with key order on purpose.
        i.insert_keyed(7, 30, 1);
        assert_eq!(i.get(7).unwrap().keyed_after(30).count(), 0);
        assert_eq!(i.get(7).unwrap().keyed_after(29).collect::<Vec<_>>(), [(30, 1)]);
        i.insert_keyed(7, 10, 5);
        i.insert_keyed(7, 20, 3);
        let set = i.get(7).unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), [5, 3, 1]);
        assert_eq!(set.keyed_after(10).collect::<Vec<_>>(), [(20, 3), (30, 1)]);
        assert_eq!(set.keyed_after(0).count(), 3);
        i.remove_keyed(7, 10, 5);
        i.remove_keyed(7, 30, 1);
        assert!(matches!(i.get(7), Some(SlotSet::One(20, 3))));
    }
}
