//! Registration entries stored in runs of consecutive creation numbers.
//!
//! Entries numbered `n * ENTRY_RUN .. (n + 1) * ENTRY_RUN` live in one engine record,
//! `n` + `n` (u64 big-endian): [`RUN_LAYOUT`], then per entry, in creation-number order, a
//! frame: the number (u64 big-endian), the length of the entry's record (u32
//! little-endian) and the record (the `Versioned` encoding of the `RegistrationEntry`, see
//! [`record::encode`]). A run with no entry left has no record.
//!
//! Why runs: every engine record costs sled a tree descent, a page update and, when keys
//! arrive in order, a leaf split every few inserts, whatever the record's size. Entries are
//! created in number order, so the entries created between two engine batches fall into a
//! few runs, each written once per batch (see [`crate::batch`]): at 256 concurrent creates
//! that is about one record per 8 entries instead of one per entry. An update or delete of
//! an older entry rewrites its whole run, at most [`ENTRY_RUN`] entries (a few KiB); only
//! the changed entries are encoded again ([`reencode`]), the others' frames are copied from
//! the run as stored.
//!
//! Entries read from records written before creation numbers were kept have number 0; they
//! stay in their own `e` + id records (see [`crate::apply`]), where no run would fit them.

use std::sync::Arc;

use ward_core::RegistrationEntry;

use crate::error::StoreError;
use crate::feed::RUN_LAYOUT;
use crate::record;

/// Creation numbers per run.
pub(crate) const ENTRY_RUN: u64 = 8;

/// Bytes of a frame before the entry's record: its number and the record's length.
const FRAME_HEAD: usize = 12;

/// The run that holds creation number `number`.
pub(crate) fn run_of(number: u64) -> u64 {
    number / ENTRY_RUN
}

/// The creation numbers of run `run`: `start..end`. Run 0 starts at 1: number 0 marks an
/// entry stored alone. `end` saturates at `u64::MAX`, which no entry gets (see
/// `State::has_room_for_entry`).
pub(crate) fn numbers_of(run: u64) -> (u64, u64) {
    let start = run.saturating_mul(ENTRY_RUN);
    (start.max(1), start.saturating_add(ENTRY_RUN))
}

/// Appends the frame of entry `number` whose record is `bytes`.
fn put_frame(out: &mut Vec<u8>, number: u64, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::Encode("entry record larger than 4 GiB".into()))?;
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The record of a run holding `entries` (numbered, in number order).
///
/// # Errors
/// [`StoreError::Encode`] if an entry cannot be encoded.
pub(crate) fn encode<'a>(
    entries: impl IntoIterator<Item = (u64, &'a Arc<RegistrationEntry>)>,
) -> Result<Vec<u8>, StoreError> {
    reencode(None, entries, |_| true)
}

/// The record of a run holding `entries` (numbered, in number order), given the run's
/// record as stored (`stored`, if any): an entry for which `changed` is false and whose
/// frame `stored` holds keeps that frame's bytes; every other entry is encoded.
///
/// # Errors
/// [`StoreError::Encode`] if an entry cannot be encoded; [`StoreError::Corrupt`] if
/// `stored` (key, value) is not a valid run record.
pub(crate) fn reencode<'a>(
    stored: Option<(&[u8], &[u8])>,
    entries: impl IntoIterator<Item = (u64, &'a Arc<RegistrationEntry>)>,
    changed: impl Fn(u64) -> bool,
) -> Result<Vec<u8>, StoreError> {
    let mut old = match stored {
        Some((key, value)) => Some(Frames::of(key, value)?),
        None => None,
    };
    let mut out = Vec::with_capacity(stored.map_or(1, |(_, v)| v.len().saturating_add(256)));
    out.push(RUN_LAYOUT);
    for (number, e) in entries {
        let mut kept = None;
        if !changed(number)
            && let Some(frames) = old.as_mut()
        {
            // Both lists are in number order: skip the stored frames before this one.
            while let Some((n, bytes)) = frames.peek()? {
                if n >= number {
                    if n == number {
                        kept = Some(bytes);
                    }
                    break;
                }
                frames.next()?;
            }
        }
        match kept {
            Some(bytes) => put_frame(&mut out, number, bytes)?,
            None => put_frame(&mut out, number, &record::encode(&**e)?)?,
        }
    }
    Ok(out)
}

/// The entries of the run record `value` under `key`, with their creation numbers.
///
/// # Errors
/// [`StoreError::Corrupt`] when the key is not a run key, the layout is unknown, a frame is
/// cut short, an entry does not decode, or a number is outside the run or not after the
/// one before it.
pub(crate) fn decode(
    key: &[u8],
    value: &[u8],
) -> Result<Vec<(RegistrationEntry, u64)>, StoreError> {
    decode_some(key, value, |_| true)
}

/// The entries of the run record `value` under `key` whose number `wanted` accepts, with
/// their numbers; the others are checked for their place but not decoded.
///
/// # Errors
/// As [`decode`].
pub(crate) fn decode_some(
    key: &[u8],
    value: &[u8],
    wanted: impl Fn(u64) -> bool,
) -> Result<Vec<(RegistrationEntry, u64)>, StoreError> {
    let mut frames = Frames::of(key, value)?;
    let mut out = Vec::new();
    while let Some((number, bytes)) = frames.next()? {
        if wanted(number) {
            out.push((record::decode(key, bytes)?, number));
        }
    }
    Ok(out)
}

/// The frames of a run record, checked as they are read.
struct Frames<'a> {
    key: &'a [u8],
    rest: &'a [u8],
    run: u64,
    start: u64,
    end: u64,
    after: Option<u64>,
}

impl<'a> Frames<'a> {
    fn of(key: &'a [u8], value: &'a [u8]) -> Result<Self, StoreError> {
        let run = record::key_number(record::ENTRY_RUN, key)
            .ok_or_else(|| record::corrupt(key, "not an entry-run key"))?;
        let Some((&layout, rest)) = value.split_first() else {
            return Err(record::corrupt(key, "empty entry run"));
        };
        if layout != RUN_LAYOUT {
            return Err(record::corrupt(key, format!("unknown entry-run layout {layout}")));
        }
        let (start, end) = numbers_of(run);
        Ok(Self { key, rest, run, start, end, after: None })
    }

    /// The next frame's number and record, without taking it.
    fn peek(&self) -> Result<Option<(u64, &'a [u8])>, StoreError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let cut = || record::corrupt(self.key, "entry run cut short");
        let (head, body) = self.rest.split_first_chunk::<FRAME_HEAD>().ok_or_else(cut)?;
        let (number, len) = head.split_first_chunk::<8>().ok_or_else(cut)?;
        let number = u64::from_be_bytes(*number);
        let len: [u8; 4] = len.try_into().map_err(|_| cut())?;
        let len = usize::try_from(u32::from_le_bytes(len)).map_err(|_| cut())?;
        let bytes = body.get(..len).ok_or_else(cut)?;
        if number < self.start || number >= self.end || self.after.is_some_and(|a| number <= a) {
            return Err(record::corrupt(
                self.key,
                format!("entry number {number} out of place in run {}", self.run),
            ));
        }
        Ok(Some((number, bytes)))
    }

    /// Takes the next frame's number and record.
    fn next(&mut self) -> Result<Option<(u64, &'a [u8])>, StoreError> {
        let Some((number, bytes)) = self.peek()? else { return Ok(None) };
        self.rest = self.rest.get(FRAME_HEAD.saturating_add(bytes.len())..).unwrap_or_default();
        self.after = Some(number);
        Ok(Some((number, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::{EntryId, Selector, SelectorSet, TrustDomain};

    fn entry(i: u64) -> Arc<RegistrationEntry> {
        let td = TrustDomain::new("example.org").unwrap();
        Arc::new(RegistrationEntry::new(
            EntryId::new(&format!("entry-{i}")).unwrap(),
            td.spiffe_id(&format!("/w/{i}")).unwrap(),
            td.spiffe_id("/agent").unwrap(),
            SelectorSet::new(vec![Selector::new("unix", &format!("uid:{i}")).unwrap()]),
        ))
    }

    /// Creation number `k` of run 2.
    #[allow(clippy::arithmetic_side_effects)] // small numbers in tests
    fn n(k: u64) -> u64 {
        2 * ENTRY_RUN + k
    }

    #[test]
    fn a_run_reads_back_its_entries_and_numbers() {
        let es: Vec<_> = [n(1), n(3), n(7)].into_iter().map(|n| (n, entry(n))).collect();
        let value = encode(es.iter().map(|(n, e)| (*n, e))).unwrap();
        let key = record::entry_run_key(2);
        let back = decode(&key, &value).unwrap();
        let want: Vec<_> = es.iter().map(|(n, e)| ((**e).clone(), *n)).collect();
        assert_eq!(back, want);
        assert_eq!(decode(&key, &[RUN_LAYOUT]).unwrap(), vec![]);
    }

    #[test]
    fn reencoding_keeps_the_stored_bytes_of_unchanged_entries_only() {
        let key = record::entry_run_key(2);
        let (a, b, c, d) = (entry(n(1)), entry(n(3)), entry(n(5)), entry(n(7)));
        // As stored: n(1), n(3) and n(5), where n(3)'s stored record differs from memory's entry, so
        // the output shows which of the two it took.
        let stale = entry(1036);
        let stored = encode([(n(1), &a), (n(3), &stale), (n(5), &c)]).unwrap();
        // In memory: n(5) deleted, n(7) created, n(3) unchanged, n(1) changed.
        let mut a2 = (*a).clone();
        a2.hint = "changed".into();
        let a2 = Arc::new(a2);
        let memory = [(n(1), &a2), (n(3), &b), (n(7), &d)];
        let changed = [n(1), n(5), n(7)];
        let out = reencode(Some((&key, &stored)), memory, |n| changed.contains(&n)).unwrap();
        let got = decode(&key, &out).unwrap();
        let want = vec![((*a2).clone(), n(1)), ((*stale).clone(), n(3)), ((*d).clone(), n(7))];
        assert_eq!(got, want);
        // Marked changed, it is encoded from memory.
        let out = reencode(Some((&key, &stored)), memory, |_| true).unwrap();
        assert_eq!(out, encode(memory).unwrap());
        // An entry the stored run lacks is encoded whatever the mark.
        let out = reencode(Some((&key, &stored)), [(n(7), &d)], |_| false).unwrap();
        assert_eq!(decode(&key, &out).unwrap(), vec![((*d).clone(), n(7))]);
        // A damaged stored run is an error, not a guess.
        let cut = &stored[..stored.len() - 3];
        assert!(reencode(Some((&key, cut)), memory, |_| false).is_err());
    }

    #[test]
    fn a_damaged_or_misplaced_run_is_refused() {
        let one = encode([(n(1), &entry(n(1)))]).unwrap();
        let misplaced = decode(&record::entry_run_key(1), &one).unwrap_err();
        assert!(misplaced.to_string().contains("out of place"), "{misplaced}");
        let cut = decode(&record::entry_run_key(2), &one[..one.len() - 1]).unwrap_err();
        assert!(matches!(cut, StoreError::Corrupt { .. }), "{cut}");
        let e = entry(n(2));
        let backwards = encode([(n(2), &e), (n(1), &e)]).unwrap();
        assert!(decode(&record::entry_run_key(2), &backwards).is_err());
        assert!(decode(&record::entry_run_key(2), &[]).is_err());
        assert!(decode(&record::entry_run_key(2), &[9]).is_err());
        assert!(decode(&record::feed_key(2), &one).is_err());
    }
}
