//! Registration entries stored in runs of consecutive creation numbers.
//!
//! Entries numbered `n * ENTRY_RUN .. (n + 1) * ENTRY_RUN` live in one engine record,
//! `n` + `n` (u64 big-endian): [`RUN_LAYOUT`], then per entry, in creation-number order,
//! its numbered record (the bytes `e` + id held alone in layout format 2, see
//! [`record::encode_numbered`]) framed with its u32 little-endian length. A run with no
//! entry left has no record.
//!
//! Why runs: every engine record costs sled a tree descent, a page update and, when keys
//! arrive in order, a leaf split every few inserts, whatever the record's size. Entries are
//! created in number order, so the entries created between two engine batches fall into a
//! few runs, each written once per batch (see [`crate::batch`]): at 256 concurrent creates
//! that is about one record per 16 entries instead of one per entry. An update or delete of
//! an older entry rewrites its whole run (at most [`ENTRY_RUN`] entries, a few KiB).
//!
//! Entries read from records written before creation numbers were kept have number 0; they
//! stay in their own `e` + id records (see [`crate::apply`]), where no run would fit them.

use std::sync::Arc;

use ward_core::RegistrationEntry;

use crate::error::StoreError;
use crate::feed::RUN_LAYOUT;
use crate::record;
use crate::snapshot::put_framed;

/// Creation numbers per run.
pub(crate) const ENTRY_RUN: u64 = 16;

/// The run that holds creation number `number`.
pub(crate) fn run_of(number: u64) -> u64 {
    number / ENTRY_RUN
}

/// The creation numbers of run `run`: `start..end` (`end` saturates at `u64::MAX`).
pub(crate) fn numbers_of(run: u64) -> (u64, u64) {
    let start = run.saturating_mul(ENTRY_RUN);
    (start, start.saturating_add(ENTRY_RUN))
}

/// The record of a run holding `entries` (numbered, in number order).
///
/// # Errors
/// [`StoreError::Encode`] if an entry cannot be encoded.
pub(crate) fn encode<'a>(
    entries: impl IntoIterator<Item = (u64, &'a Arc<RegistrationEntry>)>,
) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![RUN_LAYOUT];
    for (number, e) in entries {
        put_framed(&mut out, &record::encode_numbered(&**e, number)?)?;
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
    let run = record::key_number(record::ENTRY_RUN, key)
        .ok_or_else(|| record::corrupt(key, "not an entry-run key"))?;
    let (start, end) = numbers_of(run);
    let Some((&layout, mut rest)) = value.split_first() else {
        return Err(record::corrupt(key, "empty entry run"));
    };
    if layout != RUN_LAYOUT {
        return Err(record::corrupt(key, format!("unknown entry-run layout {layout}")));
    }
    let mut out = Vec::new();
    let mut after = None;
    while !rest.is_empty() {
        let frame =
            take_frame(&mut rest).ok_or_else(|| record::corrupt(key, "entry run cut short"))?;
        let (e, number): (RegistrationEntry, u64) = record::decode_numbered(key, frame)?;
        if number < start || number >= end || after.is_some_and(|a| number <= a) {
            return Err(record::corrupt(
                key,
                format!("entry number {number} out of place in run {run}"),
            ));
        }
        after = Some(number);
        out.push((e, number));
    }
    Ok(out)
}

/// Takes one u32-LE-length-framed item off the front of `buf`.
fn take_frame<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = buf.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (item, tail) = rest.split_at(len);
    *buf = tail;
    Some(item)
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

    #[test]
    fn a_run_reads_back_its_entries_and_numbers() {
        let es: Vec<_> = [33, 36, 47].into_iter().map(|n| (n, entry(n))).collect();
        let value = encode(es.iter().map(|(n, e)| (*n, e))).unwrap();
        let key = record::entry_run_key(2);
        let back = decode(&key, &value).unwrap();
        let want: Vec<_> = es.iter().map(|(n, e)| ((**e).clone(), *n)).collect();
        assert_eq!(back, want);
        assert_eq!(decode(&key, &[RUN_LAYOUT]).unwrap(), vec![]);
    }

    #[test]
    fn a_damaged_or_misplaced_run_is_refused() {
        let one = encode([(33, &entry(33))]).unwrap();
        let misplaced = decode(&record::entry_run_key(1), &one).unwrap_err();
        assert!(misplaced.to_string().contains("out of place"), "{misplaced}");
        let cut = decode(&record::entry_run_key(2), &one[..one.len() - 1]).unwrap_err();
        assert!(matches!(cut, StoreError::Corrupt { .. }), "{cut}");
        let e = entry(34);
        let backwards = encode([(34, &e), (33, &e)]).unwrap();
        assert!(decode(&record::entry_run_key(2), &backwards).is_err());
        assert!(decode(&record::entry_run_key(2), &[]).is_err());
        assert!(decode(&record::entry_run_key(2), &[9]).is_err());
        assert!(decode(&record::feed_key(2), &one).is_err());
    }
}
