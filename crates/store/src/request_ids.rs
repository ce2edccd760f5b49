//! The replicated table of recently applied request ids, which makes a retried proposal
//! apply once.

use std::collections::{HashMap, VecDeque};

use crate::batch::WriteBatch;
use crate::error::StoreError;
use crate::feed::RUN_LAYOUT;
use crate::record;

/// How many request ids the store remembers: the ids of the last this-many applied log
/// entries that carried one. A retry that arrives later than that is applied again.
pub const REQUEST_ID_RETAIN: usize = 65_536;

/// Log indexes per stored run of request ids.
pub(crate) const REQUEST_RUN: u64 = 64;

/// Bytes per id in a run record: the log index (u64 big-endian) and the id (u128 big-endian).
const ID_BYTES: usize = 24;

/// Bytes of a full run record.
const RUN_RECORD_BYTES: usize = 1 + 64 * ID_BYTES;

/// The run that holds log index `index`.
pub(crate) fn run_of(index: u64) -> u64 {
    index / REQUEST_RUN
}

/// Request ids with the log index they were first applied at, oldest index first.
///
/// Part of the replicated state: every replica applies the same entries in the same order,
/// so every replica holds the same table and evicts the same ids (oldest index first).
///
/// Stored in runs: the ids applied at log indexes `n * REQUEST_RUN ..` up to the next run
/// live in one record, `q` + `n` (u64 big-endian): [`RUN_LAYOUT`], then per id its index
/// (u64 big-endian) and the id (u128 big-endian), in index order. An apply rewrites the runs
/// it added to ([`RequestIds::seal`]) in its own engine batch; a run's record is removed when
/// the oldest remembered id moves past it. The records therefore hold every remembered id
/// and, in the oldest run, possibly a few ids evicted already; opening replays them through
/// [`RequestIds::record`], which evicts those again, so a replica that restarted remembers
/// exactly what one that did not remembers.
#[derive(Debug, Default)]
pub(crate) struct RequestIds {
    by_id: HashMap<u128, u64>,
    by_index: VecDeque<(u64, u128)>,
    /// Runs added to since the last [`RequestIds::seal`], oldest first.
    dirty: Vec<u64>,
}

/// What [`RequestIds::record`] did besides remembering the id.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Recorded {
    /// The id it evicted (with its index) to stay within [`REQUEST_ID_RETAIN`].
    pub(crate) evicted: Option<(u64, u128)>,
    /// The run none of whose ids is remembered any more: its record is to be removed.
    pub(crate) dropped_run: Option<u64>,
}

impl RequestIds {
    /// The index `id` was applied at, if it is remembered.
    pub(crate) fn first_index(&self, id: u128) -> Option<u64> {
        self.by_id.get(&id).copied()
    }

    /// Remembers `id` as applied at `index` (after every remembered index) and marks its run
    /// to be written; evicts the oldest id beyond [`REQUEST_ID_RETAIN`].
    pub(crate) fn record(&mut self, index: u64, id: u128) -> Recorded {
        self.by_id.insert(id, index);
        self.by_index.push_back((index, id));
        let run = run_of(index);
        if self.dirty.last() != Some(&run) {
            self.dirty.push(run);
        }
        if self.by_index.len() <= REQUEST_ID_RETAIN {
            return Recorded { evicted: None, dropped_run: None };
        }
        let Some((old_index, old_id)) = self.by_index.pop_front() else {
            return Recorded { evicted: None, dropped_run: None };
        };
        if self.by_id.get(&old_id) == Some(&old_index) {
            self.by_id.remove(&old_id);
        }
        let old_run = run_of(old_index);
        let dropped_run = match self.by_index.front() {
            Some(&(front, _)) if run_of(front) == old_run => None,
            _ => Some(old_run),
        };
        Recorded { evicted: Some((old_index, old_id)), dropped_run }
    }

    /// Takes back the last [`RequestIds::record`] (of `id` at `index`), remembering again
    /// the entry it evicted, for an apply that failed (whose batch is dropped, so the runs
    /// marked to be written are forgotten too).
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
        self.dirty.clear();
    }

    /// Forgets which runs are to be written: after loading them from the engine.
    pub(crate) fn mark_clean(&mut self) {
        self.dirty.clear();
    }

    /// Puts the record of every run added to since the last seal in `batch`.
    pub(crate) fn seal(&mut self, batch: &mut WriteBatch) {
        for run in std::mem::take(&mut self.dirty) {
            batch.insert(record::request_run_key(run), self.run_record(run));
        }
    }

    /// The record of run `run` as the remembered ids make it.
    fn run_record(&self, run: u64) -> Vec<u8> {
        let start = self.by_index.partition_point(|&(index, _)| run_of(index) < run);
        let ids = self.by_index.range(start..).take_while(|&&(index, _)| run_of(index) == run);
        let mut out = Vec::with_capacity(RUN_RECORD_BYTES);
        out.push(RUN_LAYOUT);
        for &(index, id) in ids {
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        out
    }

    /// Every run of remembered ids as `(run, record)`, oldest first: what a snapshot carries
    /// (the oldest run holds only remembered ids, so the stream is the same on every
    /// replica whatever evicted ids its oldest record still holds).
    pub(crate) fn runs(&self) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut last = None;
        for &(index, _) in &self.by_index {
            let run = run_of(index);
            if last != Some(run) {
                out.push((run, self.run_record(run)));
                last = Some(run);
            }
        }
        out
    }

    /// The remembered ids with their indexes, oldest first.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (u64, u128)> + '_ {
        self.by_index.iter().copied()
    }
}

/// The `(index, id)` pairs of a run record, in index order.
///
/// # Errors
/// [`StoreError::Corrupt`] for an unknown layout or a record that is not whole ids, or ids
/// that do not belong to the key's run or are out of order.
pub(crate) fn read_run(key: &[u8], value: &[u8]) -> Result<Vec<(u64, u128)>, StoreError> {
    let run = record::key_number(record::REQUEST_RUN, key)
        .ok_or_else(|| record::corrupt(key, "not a request-id run key"))?;
    let Some((&RUN_LAYOUT, body)) = value.split_first() else {
        return Err(record::corrupt(key, "unknown run layout"));
    };
    let (pairs, rest) = body.as_chunks::<ID_BYTES>();
    if !rest.is_empty() {
        return Err(record::corrupt(key, "request-id run is not whole ids"));
    }
    let mut out: Vec<(u64, u128)> = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let (index, id) = pair.split_first_chunk::<8>().map_or((0, 0), |(i, id)| {
            let id: [u8; 16] = id.try_into().unwrap_or_default();
            (u64::from_be_bytes(*i), u128::from_be_bytes(id))
        });
        if run_of(index) != run || out.last().is_some_and(|&(last, _)| last >= index) {
            return Err(record::corrupt(key, "request-id run out of order"));
        }
        out.push((index, id));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_index_first() {
        let mut ids = RequestIds::default();
        for i in 0..REQUEST_ID_RETAIN as u64 {
            assert_eq!(ids.record(i + 10, u128::from(i) + 1).evicted, None);
        }
        assert_eq!(ids.record(1_000_000, 0xabc).evicted, Some((10, 1)));
        assert_eq!(ids.first_index(1), None);
        assert_eq!(ids.first_index(2), Some(11));
        assert_eq!(ids.first_index(0xabc), Some(1_000_000));
        assert_eq!(ids.iter().len(), REQUEST_ID_RETAIN);
        assert_eq!(ids.iter().next(), Some((11, 2)));
    }

    #[test]
    fn a_run_is_dropped_when_its_last_remembered_id_is_evicted() {
        let mut ids = RequestIds::default();
        // Indexes REQUEST_RUN - 2 ..: the first run holds two ids, the rest whole runs.
        let first = REQUEST_RUN - 2;
        for (n, index) in (first..first + REQUEST_ID_RETAIN as u64).enumerate() {
            ids.record(index, n as u128 + 1);
        }
        let next = first + REQUEST_ID_RETAIN as u64;
        let one = ids.record(next, 0xa);
        assert_eq!(one, Recorded { evicted: Some((first, 1)), dropped_run: None });
        let two = ids.record(next + 1, 0xb);
        assert_eq!(two, Recorded { evicted: Some((first + 1, 2)), dropped_run: Some(0) });
        let three = ids.record(next + 2, 0xc);
        assert_eq!(three, Recorded { evicted: Some((REQUEST_RUN, 3)), dropped_run: None });
    }

    #[test]
    fn run_records_read_back_and_damaged_ones_are_corrupt() {
        let mut ids = RequestIds::default();
        for index in [REQUEST_RUN + 1, REQUEST_RUN + 5, 2 * REQUEST_RUN] {
            ids.record(index, u128::from(index) << 64);
        }
        let mut batch = WriteBatch::default();
        ids.seal(&mut batch);
        let runs = ids.runs();
        assert_eq!(runs.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![1, 2]);
        let key = record::request_run_key(1);
        let read = read_run(&key, &runs[0].1).unwrap();
        assert_eq!(read, vec![(65, 65u128 << 64), (69, 69u128 << 64)]);
        let bad = |v: &[u8], k: &[u8]| matches!(read_run(k, v), Err(StoreError::Corrupt { .. }));
        assert!(bad(&runs[0].1[..30], &key), "not whole ids");
        assert!(bad(&[2], &key), "unknown layout");
        assert!(bad(&runs[1].1, &key), "ids of another run");
        let mut swapped = vec![RUN_LAYOUT];
        swapped.extend_from_slice(&runs[0].1[25..]);
        swapped.extend_from_slice(&runs[0].1[1..25]);
        assert!(bad(&swapped, &key), "out of order");
    }
}
