//! The replicated table of recently applied request ids, which makes a retried proposal
//! apply once.

use std::collections::{HashMap, VecDeque};

/// How many request ids the store remembers: the ids of the last this-many applied log
/// entries that carried one. A retry that arrives later than that is applied again.
pub const REQUEST_ID_RETAIN: usize = 65_536;

/// Request ids with the log index they were first applied at, oldest index first.
///
/// Part of the replicated state: every replica applies the same entries in the same order,
/// so every replica holds the same table and evicts the same ids (oldest index first). It is
/// stored in the live tree (`r` + index, u64 big-endian → the id, u128 big-endian) and so
/// travels in snapshots.
#[derive(Debug, Default)]
pub(crate) struct RequestIds {
    by_id: HashMap<u128, u64>,
    by_index: VecDeque<(u64, u128)>,
}

impl RequestIds {
    /// The index `id` was applied at, if it is remembered.
    pub(crate) fn first_index(&self, id: u128) -> Option<u64> {
        self.by_id.get(&id).copied()
    }

    /// Remembers `id` as applied at `index` (after every remembered index), and returns the
    /// index of the entry it evicts to stay within [`REQUEST_ID_RETAIN`], if any.
    pub(crate) fn record(&mut self, index: u64, id: u128) -> Option<u64> {
        self.by_id.insert(id, index);
        self.by_index.push_back((index, id));
        if self.by_index.len() <= REQUEST_ID_RETAIN {
            return None;
        }
        let (old_index, old_id) = self.by_index.pop_front()?;
        if self.by_id.get(&old_id) == Some(&old_index) {
            self.by_id.remove(&old_id);
        }
        Some(old_index)
    }

    /// The oldest remembered id with its index: the one [`RequestIds::record`] evicts next.
    pub(crate) fn oldest(&self) -> Option<(u64, u128)> {
        self.by_index.front().copied()
    }

    /// Takes back the last [`RequestIds::record`] (of `id` at `index`), remembering again
    /// the entry it evicted, for an apply that failed.
    pub(crate) fn forget(&mut self, index: u64, id: u128, evicted: Option<(u64, u128)>) {
        if self.by_index.back() == Some(&(index, id)) {
            self.by_index.pop_back();
            if self.by_id.get(&id) == Some(&index) {
                self.by_id.remove(&id);
            }
        }
        if let Some((old_index, old_id)) = evicted {
            self.by_index.push_front((old_index, old_id));
            self.by_id.entry(old_id).or_insert(old_index);
        }
    }

    /// The remembered ids with their indexes, oldest first.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (u64, u128)> + '_ {
        self.by_index.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_index_first() {
        let mut ids = RequestIds::default();
        for i in 0..REQUEST_ID_RETAIN as u64 {
            assert_eq!(ids.record(i + 10, u128::from(i) + 1), None);
        }
        assert_eq!(ids.record(1_000_000, 0xabc), Some(10));
        assert_eq!(ids.first_index(1), None);
        assert_eq!(ids.first_index(2), Some(11));
        assert_eq!(ids.first_index(0xabc), Some(1_000_000));
        assert_eq!(ids.iter().len(), REQUEST_ID_RETAIN);
        assert_eq!(ids.iter().next(), Some((11, 2)));
    }
}
