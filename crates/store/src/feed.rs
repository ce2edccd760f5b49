//! The change feed's storage: one record per run of [`FEED_RUN`] revisions.
//!
//! Each command that changes anything gets the next revision and a [`Change`] naming what it
//! changed. The changes of revisions `n * FEED_RUN ..= n * FEED_RUN + FEED_RUN - 1` live in
//! one record, `h` + `n` (u64 big-endian): a layout byte ([`RUN_LAYOUT`]) and then, oldest
//! first, one frame per change (u32 little-endian length, then the change encoded as any
//! record is, `postcard` of `Versioned::V1`). Run 0 starts at revision 1.
//!
//! The newest run, the open one, is kept in memory as the bytes of its record
//! ([`FeedTail`]) while it fills; every apply that adds to it writes the whole record once,
//! in the same engine batch as the records of the commands it applied, so a crash keeps a
//! change exactly when it keeps the command. A run is never written again once the next one
//! opens. When run `n` opens, run `n - FEED_KEPT_RUNS - 1` is removed: the runs left always
//! hold at least the last [`CHANGE_FEED_RETAIN`] revisions, and readers
//! ([`crate::Store::changes_since`], the snapshot export) answer from [`first_kept`] on, so
//! what they return is exactly the last [`CHANGE_FEED_RETAIN`] changes, as when each
//! revision had its own record (layout format 1).
//!
//! Per revision that leaves one record write per apply (not per command) and one removal per
//! run, where format 1 wrote one record and removed another for every revision.

use crate::apply::Undo;
use crate::batch::WriteBatch;
use crate::error::{EngineResult, StoreError};
use crate::record::{self, Change};
use crate::snapshot::put_framed;
use crate::store::CHANGE_FEED_RETAIN;

/// Revisions per change-feed run. Divides [`CHANGE_FEED_RETAIN`].
pub(crate) const FEED_RUN: u64 = 32;

/// Whole runs kept before the open one: with it they cover at least the last
/// [`CHANGE_FEED_RETAIN`] revisions.
pub(crate) const FEED_KEPT_RUNS: u64 = CHANGE_FEED_RETAIN / FEED_RUN;

/// The byte that opens a change-feed or request-id run record: the run layout.
pub(crate) const RUN_LAYOUT: u8 = 1;

/// The run that holds `revision`.
pub(crate) fn run_of(revision: u64) -> u64 {
    revision / FEED_RUN
}

/// The oldest revision the feed answers for when the store is at `revision`.
pub(crate) fn first_kept(revision: u64) -> u64 {
    revision.saturating_sub(CHANGE_FEED_RETAIN).saturating_add(1)
}

/// The open run: its number and its record's bytes, as stored once sealed.
#[derive(Clone, Debug)]
pub(crate) struct FeedTail {
    /// The run's number.
    pub(crate) run: u64,
    /// The record: [`RUN_LAYOUT`] and the frames added so far.
    pub(crate) bytes: Vec<u8>,
    /// Whether frames were added since the record was last put in a batch.
    pub(crate) dirty: bool,
}

impl FeedTail {
    /// An empty run `run`.
    pub(crate) fn new(run: u64) -> Self {
        Self { run, bytes: vec![RUN_LAYOUT], dirty: false }
    }

    /// Run `run` as read from the engine (`None`: not stored, so empty).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if the record does not open with [`RUN_LAYOUT`].
    pub(crate) fn stored(run: u64, bytes: Option<&[u8]>) -> Result<Self, StoreError> {
        match bytes {
            None => Ok(Self::new(run)),
            Some(b) if b.first() == Some(&RUN_LAYOUT) => {
                Ok(Self { run, bytes: b.to_vec(), dirty: false })
            }
            Some(_) => Err(record::corrupt(&record::feed_key(run), "unknown run layout")),
        }
    }

    /// Adds `change` (of revision `change.revision`, the one after the last added) to the
    /// feed. At a run boundary the open run is put in `batch` if it changed, a new run opens
    /// and the run that falls out of retention is removed. Every change to the tail is
    /// logged in `undo`.
    ///
    /// # Errors
    /// [`StoreError::Encode`] if the change cannot be encoded (nothing changed then).
    pub(crate) fn push(
        &mut self,
        change: &Change,
        batch: &mut WriteBatch,
        undo: &mut Vec<Undo>,
    ) -> Result<(), StoreError> {
        let encoded = record::encode(change)?;
        let run = run_of(change.revision);
        if run != self.run {
            self.seal(batch);
            let full = std::mem::replace(self, Self::new(run));
            undo.push(Undo::FeedTail(full));
            if let Some(old) = run.checked_sub(FEED_KEPT_RUNS).and_then(|r| r.checked_sub(1)) {
                batch.remove(record::feed_key(old));
            }
        }
        undo.push(Undo::FeedAppend { len: self.bytes.len(), dirty: self.dirty });
        put_framed(&mut self.bytes, &encoded)?;
        self.dirty = true;
        Ok(())
    }

    /// Puts the open run's record in `batch` if frames were added since it was last put.
    pub(crate) fn seal(&mut self, batch: &mut WriteBatch) {
        if self.dirty {
            batch.insert(record::feed_key(self.run), self.bytes.clone());
            self.dirty = false;
        }
    }
}

/// The frames of the run record `value` (stored under `key`), oldest first: each one
/// change's encoding.
pub(crate) fn frames<'a>(
    key: &'a [u8],
    value: &'a [u8],
) -> impl Iterator<Item = Result<&'a [u8], StoreError>> + 'a {
    let mut rest = match value.split_first() {
        Some((&RUN_LAYOUT, rest)) => Ok(rest),
        _ => Err(record::corrupt(key, "unknown run layout")),
    };
    std::iter::from_fn(move || match &mut rest {
        Err(_) => {
            let e = std::mem::replace(&mut rest, Ok(&[]));
            e.err().map(Err)
        }
        Ok([]) => None,
        Ok(buf) => {
            let frame = buf
                .split_first_chunk::<4>()
                .map(|(len, tail)| (u32::from_le_bytes(*len) as usize, tail))
                .and_then(|(len, tail)| tail.split_at_checked(len));
            match frame {
                Some((frame, tail)) => {
                    *buf = tail;
                    Some(Ok(frame))
                }
                None => {
                    rest = Ok(&[]);
                    Some(Err(record::corrupt(key, "truncated change-feed frame")))
                }
            }
        }
    })
}

/// The changes of the run record `value` (stored under `key`), oldest first.
pub(crate) fn changes<'a>(
    key: &'a [u8],
    value: &'a [u8],
) -> impl Iterator<Item = Result<Change, StoreError>> + 'a {
    frames(key, value).map(move |frame| record::decode(key, frame?))
}

/// Every change `tree`'s feed holds of revision `from` or later, oldest first; the first
/// error ends it.
pub(crate) fn stored_from(
    tree: &sled::Tree,
    from: u64,
) -> impl Iterator<Item = Result<Change, StoreError>> + '_ {
    tree.range(record::feed_key(run_of(from))..)
        .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.first() == Some(&record::FEED_RUN)))
        .flat_map(|kv| match kv.engine() {
            // A run holds at most FEED_RUN changes.
            Ok((k, v)) => changes(&k, &v).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
        .filter(move |c| c.as_ref().map_or(true, |c| c.revision >= from))
}

/// The run record `value` of run `run` with only the changes of revisions from `first` on
/// (`None` when none is left): how the oldest kept run travels in a snapshot, so the stream
/// is the same whatever older revisions a replica's oldest run still holds.
///
/// # Errors
/// [`StoreError::Corrupt`] if a frame cannot be read, [`StoreError::Encode`] if one is too
/// large to frame.
pub(crate) fn from_revision(
    run: u64,
    value: &[u8],
    first: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let key = record::feed_key(run);
    let mut out = vec![RUN_LAYOUT];
    for frame in frames(&key, value) {
        let frame = frame?;
        let change: Change = record::decode(&key, frame)?;
        if change.revision >= first {
            put_framed(&mut out, frame)?;
        }
    }
    Ok((out.len() > 1).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64) -> Change {
        Change { revision, ..Change::default() }
    }

    #[test]
    fn runs_divide_the_retained_revisions() {
        assert_eq!(CHANGE_FEED_RETAIN % FEED_RUN, 0);
        assert_eq!((run_of(1), run_of(FEED_RUN - 1), run_of(FEED_RUN)), (0, 0, 1));
        assert_eq!((first_kept(5), first_kept(CHANGE_FEED_RETAIN + 7)), (1, 8));
    }

    #[test]
    fn a_run_boundary_seals_the_full_run_and_drops_the_one_out_of_retention() {
        let mut tail = FeedTail::new(FEED_KEPT_RUNS + 1);
        let start = (FEED_KEPT_RUNS + 1) * FEED_RUN;
        let mut batch = WriteBatch::default();
        let mut undo = Vec::new();
        for r in start..start + FEED_RUN + 1 {
            tail.push(&change(r), &mut batch, &mut undo).unwrap();
        }
        tail.seal(&mut batch);
        let tree = sled::Config::new().temporary(true).open().unwrap().open_tree("t").unwrap();
        tree.insert(record::feed_key(0), vec![RUN_LAYOUT]).unwrap();
        tree.insert(record::feed_key(1), vec![RUN_LAYOUT]).unwrap();
        tree.apply_batch(batch.into_sled()).unwrap();
        let full = tree.get(record::feed_key(FEED_KEPT_RUNS + 1)).unwrap().unwrap();
        let key = record::feed_key(FEED_KEPT_RUNS + 1);
        let revisions: Vec<u64> = changes(&key, &full).map(|c| c.unwrap().revision).collect();
        assert_eq!(revisions, (start..start + FEED_RUN).collect::<Vec<_>>());
        let open = tree.get(record::feed_key(FEED_KEPT_RUNS + 2)).unwrap().unwrap();
        assert_eq!(*open, *tail.bytes);
        // Opening run K + 2 leaves runs 2 ..= K + 2: run 1 falls out (run 0 went earlier).
        assert_eq!(tree.get(record::feed_key(1)).unwrap(), None, "run 1 fell out");
        assert!(tree.get(record::feed_key(0)).unwrap().is_some(), "one removal per run");
    }

    #[test]
    fn a_damaged_run_is_corrupt_not_a_panic() {
        let key = record::feed_key(3);
        let mut tail = FeedTail::new(0);
        tail.push(&change(1), &mut WriteBatch::default(), &mut Vec::new()).unwrap();
        for cut in 2..tail.bytes.len() {
            let got: Result<Vec<Change>, _> = changes(&key, &tail.bytes[..cut]).collect();
            assert!(matches!(got, Err(StoreError::Corrupt { .. })), "cut at {cut}");
        }
        let got: Result<Vec<Change>, _> = changes(&key, &[9, 0]).collect();
        assert!(matches!(got, Err(StoreError::Corrupt { .. })));
        assert_eq!(changes(&key, &[RUN_LAYOUT]).count(), 0);
    }

    #[test]
    fn the_oldest_run_travels_from_the_first_kept_revision() {
        let mut tail = FeedTail::new(0);
        for r in 1..6 {
            tail.push(&change(r), &mut WriteBatch::default(), &mut Vec::new()).unwrap();
        }
        let kept = from_revision(0, &tail.bytes, 4).unwrap().unwrap();
        let key = record::feed_key(0);
        let revisions: Vec<u64> = changes(&key, &kept).map(|c| c.unwrap().revision).collect();
        assert_eq!(revisions, vec![4, 5]);
        assert_eq!(from_revision(0, &tail.bytes, 6).unwrap(), None);
    }
}
