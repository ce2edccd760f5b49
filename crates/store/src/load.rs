//! Opening a store: reading a generation tree (or the entry image) into a fresh in-memory
//! [`State`], with the entry records decoded on two threads while a third indexes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use ward_core::{
    AttestedNode, Bundle, FederationRelationship, RegistrationEntry, StoredJoinToken, TrustDomain,
};

use crate::entry_runs;
use crate::error::{EngineResult, StoreError};
use crate::feed::{self, FeedTail, RUN_LAYOUT};
use crate::image::{self, Image};
use crate::record;
use crate::request_ids;
use crate::snapshot::put_framed;
use crate::state::State;

/// Reads a whole generation tree into a fresh in-memory state.
///
/// A tree without a layout format or trust domain gets them recorded (a new store, or one
/// written before they were kept); a tree recorded for another trust domain is refused.
/// Builds the in-memory image of `tree`, reading its entries from `image` when given (an
/// image checked to be of exactly this tree) instead of the tree.
pub(crate) fn load_state(
    tree: &sled::Tree,
    td: &TrustDomain,
    image: Option<Image>,
) -> Result<State, StoreError> {
    let mut state = State::new(td.clone());
    let format = match tree.get(record::META_FORMAT).engine()? {
        Some(v) => record::read_u64(record::META_FORMAT, &v)?,
        // A new tree, or one written before the format was recorded (format 1).
        None => 1,
    };
    if format > record::FORMAT {
        return Err(StoreError::UnsupportedFormat(format));
    }
    if format < 2 {
        migrate_runs(tree)?;
    }
    if format < 3 || tree.contains_key(record::META_MIGRATING_ENTRIES).engine()? {
        migrate_entry_runs(tree)?;
    }
    check_trust_domain(tree, td)?;
    let recorded = match tree.get(record::META_ENTRIES).engine()? {
        Some(v) => Some(record::read_u64(record::META_ENTRIES, &v)?),
        None => None,
    };
    let entries = match &image {
        Some(image) => image.count(),
        None => recorded.and_then(|n| usize::try_from(n).ok()).unwrap_or(0),
    };
    // A size hint only: a damaged count must not reserve more than a large store needs.
    state.begin_bulk_load(entries.min(MAX_RESERVE));
    let loaded = match &image {
        // The image names every entry by id with its number; the tree only those without.
        Some(image) => load_entries(&mut state, false, |high| image.records(high)),
        None => {
            // Entries stored alone (without a creation number) with the first half of the
            // runs; they are few.
            let (low, high) = run_halves(tree)?;
            load_entries(&mut state, true, |second| {
                let alone = if second { None } else { Some(tree.scan_prefix([record::ENTRY])) };
                let runs = tree.range(if second { high.clone() } else { low.clone() });
                alone.into_iter().flatten().chain(runs).map(|kv| kv.engine())
            })
        }
    };
    let image_revision = image.as_ref().map(|i| i.of().revision);
    drop(image);
    state.end_bulk_load();
    loaded?;
    if image_revision.is_some() && state.entry_count() != entries {
        return Err(image_corrupt(format!(
            "{} entries read, {entries} recorded",
            state.entry_count()
        )));
    }
    if state.distinct_entry_ids() != state.entry_count() {
        return Err(StoreError::Corrupt {
            key: if image_revision.is_some() { image::IMAGE_FILE } else { "entry records" }.into(),
            reason: format!(
                "{} entry records for {} distinct ids",
                state.entry_count(),
                state.distinct_entry_ids()
            ),
        });
    }
    let records =
        [record::AGENT, record::TOKEN, record::BUNDLE, record::FEDERATION, record::REQUEST_RUN]
            .into_iter()
            .flat_map(|p| tree.scan_prefix([p]));
    let meta = [
        record::META_APPLIED,
        record::META_REVISION,
        record::META_APPLIED_TERM,
        record::META_CONF_STATE,
        record::META_ENTRY_NUMBER,
    ]
    .into_iter()
    .filter_map(|k| tree.get(k).map(|v| v.map(|v| (sled::IVec::from(k), v))).transpose());
    for kv in records.chain(meta) {
        let (k, v) = kv.engine()?;
        match k.first().copied() {
            Some(record::AGENT) => {
                let a: AttestedNode = record::decode(&k, &v)?;
                if !state.put_agent(Arc::new(a)) {
                    return Err(StoreError::Capacity);
                }
            }
            Some(record::TOKEN) => {
                let t: StoredJoinToken = record::decode(&k, &v)?;
                state.tokens.insert(t.hash, t);
            }
            Some(record::BUNDLE) => {
                let (b, number): (Bundle, u64) = record::decode_numbered(&k, &v)?;
                state.bundles.insert_numbered(b.trust_domain.clone(), Arc::new(b), number);
            }
            Some(record::FEDERATION) => {
                let (f, number): (FederationRelationship, u64) = record::decode_numbered(&k, &v)?;
                state.federations.insert_numbered(f.trust_domain.clone(), Arc::new(f), number);
            }
            Some(record::REQUEST_RUN) => {
                // Runs come in index order, as the table keeps them; replaying evicts again
                // the ids of the oldest run that were evicted before.
                for (index, id) in request_ids::read_run(&k, &v)? {
                    state.request_ids.record(index, id);
                }
            }
            _ if &*k == record::META_APPLIED => state.applied = record::read_u64(&k, &v)?,
            _ if &*k == record::META_REVISION => state.revision = record::read_u64(&k, &v)?,
            _ if &*k == record::META_APPLIED_TERM => {
                state.applied_term = record::read_u64(&k, &v)?;
            }
            _ if &*k == record::META_CONF_STATE => state.conf_state = Some(v.to_vec()),
            _ if &*k == record::META_ENTRY_NUMBER => {
                let n = record::read_u64(&k, &v)?;
                state.last_entry_number = state.last_entry_number.max(n);
            }
            _ => {}
        }
    }
    state.request_ids.mark_clean();
    if let Some(since) = image_revision {
        catch_up_entries(tree, &mut state, since)?;
        let count = state.entry_count() as u64;
        if recorded.is_some_and(|n| n != count) {
            return Err(image_corrupt(format!(
                "{count} entries after the changes since the image, {recorded:?} recorded"
            )));
        }
    }
    let run = feed::run_of(state.revision);
    state.feed = FeedTail::stored(run, tree.get(record::feed_key(run)).engine()?.as_deref())?;
    state.refreeze_dirty_groups();
    Ok(state)
}

/// An image is caught up only while fewer than one entry in this many changed after it
/// (at 1M entries a changed entry costs about 60 µs of catch-up, a full read about 4 s
/// more than an exact image: the break-even is near 60,000)...
const CATCH_UP_SHARE: usize = 16;
/// ... or no more than this many (cheap whatever the store's size).
const CATCH_UP_ALWAYS: usize = 4096;

fn image_corrupt(reason: String) -> StoreError {
    StoreError::Corrupt { key: image::IMAGE_FILE.into(), reason }
}

/// Brings entries loaded from an image of revision `since` up to the tree's revision
/// (`state.revision`, already read): every entry the change feed names after `since` is
/// read again from the tree, replaced if it is there and removed if not. The feed must
/// hold every revision from `since + 1` to the tree's, one after the other; otherwise the
/// image cannot be caught up and this fails (open then reads every entry from the tree).
///
/// A changed entry is looked for in the run of the number it had in the image (an update
/// keeps its number), in its own record when it had number 0, and, when the image did not
/// hold it, in the runs after the image's highest number (a new entry gets a higher one).
fn catch_up_entries(tree: &sled::Tree, state: &mut State, since: u64) -> Result<(), StoreError> {
    let to = state.revision;
    if since > to {
        return Err(image_corrupt(format!("image of revision {since}, the tree is at {to}")));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut next = since.saturating_add(1);
    if since < to {
        for change in feed::stored_from(tree, next) {
            let change = change?;
            if change.revision != next {
                return Err(image_corrupt(format!(
                    "the change feed has revision {} where {next} was due",
                    change.revision
                )));
            }
            ids.extend(change.entries);
            next = next.saturating_add(1);
        }
    }
    if next != to.saturating_add(1) {
        return Err(image_corrupt(format!(
            "the change feed ends before revision {to} (next {next}) after the image's {since}"
        )));
    }
    // Each changed entry costs a random read and an index update one at a time, several
    // times a bulk-loaded record: past this share reading every record is faster.
    if ids.len() > CATCH_UP_ALWAYS && ids.len() > state.entry_count() / CATCH_UP_SHARE {
        return Err(StoreError::ImageBehind { changed: ids.len(), entries: state.entry_count() });
    }
    let imaged_up_to = state.numbered_entries().next_back().map_or(0, |(n, _)| n);
    // The numbers the image gave changed entries: in their runs only these are decoded.
    let mut numbers = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for id in &ids {
        match state.entry_number(id) {
            Some(0) => {
                let key = record::entry_key(id);
                if let Some(v) = tree.get(&key).engine()? {
                    found.push(record::decode_numbered::<RegistrationEntry>(&key, &v)?);
                }
            }
            Some(number) => {
                numbers.insert(number);
            }
            None => {}
        }
        state.remove_entry(id);
    }
    let runs: std::collections::BTreeSet<u64> =
        numbers.iter().map(|&n| entry_runs::run_of(n)).collect();
    let first_new = entry_runs::run_of(imaged_up_to.saturating_add(1));
    let newer = record::entry_run_key(first_new);
    let end = [record::ENTRY_RUN.saturating_add(1)];
    let reads = runs
        .into_iter()
        .filter(|&run| run < first_new)
        .filter_map(|run| {
            let key = record::entry_run_key(run);
            tree.get(&key).map(|v| v.map(|v| (sled::IVec::from(key), v))).transpose()
        })
        .chain(tree.range(newer..end.to_vec()));
    for kv in reads {
        let (k, v) = kv.engine()?;
        // A run from `first_new` on holds new entries after the image's: decode them all.
        let wanted = |n: u64| numbers.contains(&n) || entry_runs::run_of(n) >= first_new;
        let decoded = entry_runs::decode_some(&k, &v, wanted)?;
        found.extend(decoded.into_iter().filter(|(e, _)| ids.contains(&e.id)));
    }
    for (e, number) in found {
        if !state.insert_new_entry(Arc::new(e), number) {
            return Err(StoreError::Capacity);
        }
    }
    Ok(())
}

/// Moves a layout-format-1 tree to the current format: the change feed's records (one per
/// revision, `c`) and the request-id table's (one per log index, `r`) become runs (`h`, `q`;
/// see `crate::feed` and `crate::request_ids`), in one engine batch with the new
/// `m/format`, so a crash leaves the tree in one format or the other. A feed record's value
/// becomes its frame as is. Costs one pass over at most 100,000 + 65,536 small records, once.
fn migrate_runs(tree: &sled::Tree) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut feed_runs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for kv in tree.scan_prefix([record::CHANGE]) {
        let (k, v) = kv.engine()?;
        let revision = record::key_number(record::CHANGE, &k)
            .ok_or_else(|| record::corrupt(&k, "not a change-feed key"))?;
        let run = feed_runs.entry(feed::run_of(revision)).or_insert_with(|| vec![RUN_LAYOUT]);
        put_framed(run, &v)?;
        batch.remove(k);
    }
    let mut request_runs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for kv in tree.scan_prefix([record::REQUEST]) {
        let (k, v) = kv.engine()?;
        let (index, id) = record::read_request(&k, &v)?;
        let run =
            request_runs.entry(request_ids::run_of(index)).or_insert_with(|| vec![RUN_LAYOUT]);
        run.extend_from_slice(&index.to_be_bytes());
        run.extend_from_slice(&id.to_be_bytes());
        batch.remove(k);
    }
    for (run, value) in feed_runs {
        batch.insert(record::feed_key(run), value);
    }
    for (run, value) in request_runs {
        batch.insert(record::request_run_key(run), value);
    }
    batch.insert(record::META_FORMAT, record::u64_value(2));
    tree.apply_batch(batch).engine()
}

/// Numbered entries migrated per engine batch by [`migrate_entry_runs`].
const MIGRATE_BATCH: usize = 65_536;

/// Moves a layout-format-2 tree to format 3: every entry record with a creation number
/// (`e` + id) joins its run (`n`, see `crate::entry_runs`); entries without one stay. In
/// batches of [`MIGRATE_BATCH`] entries, each of which removes its records and writes their
/// runs merged with what the runs already hold. The first batch records format 3 and
/// `m/migrating-entries`, removed once the last is written: a crash part-way leaves a tree
/// an older release refuses and the next open of this one finishes.
fn migrate_entry_runs(tree: &sled::Tree) -> Result<(), StoreError> {
    let mut records = tree.scan_prefix([record::ENTRY]);
    loop {
        let mut batch = sled::Batch::default();
        // With the first batch the tree says format 3, which a release that reads only
        // format 2 refuses; the marker has the next open finish the move.
        batch.insert(record::META_FORMAT, record::u64_value(3));
        batch.insert(record::META_MIGRATING_ENTRIES, &[1u8][..]);
        let mut runs: BTreeMap<u64, Vec<(u64, Arc<RegistrationEntry>)>> = BTreeMap::new();
        let mut moved = 0usize;
        for kv in records.by_ref() {
            let (k, v) = kv.engine()?;
            let (e, number): (RegistrationEntry, u64) = record::decode_numbered(&k, &v)?;
            if number == 0 {
                continue;
            }
            runs.entry(entry_runs::run_of(number)).or_default().push((number, Arc::new(e)));
            batch.remove(k);
            moved = moved.saturating_add(1);
            if moved == MIGRATE_BATCH {
                break;
            }
        }
        if moved == 0 {
            break;
        }
        for (run, mut entries) in runs {
            let key = record::entry_run_key(run);
            if let Some(v) = tree.get(&key).engine()? {
                entries.extend(
                    entry_runs::decode(&key, &v)?.into_iter().map(|(e, n)| (n, Arc::new(e))),
                );
            }
            entries.sort_by_key(|(n, _)| *n);
            if entries.windows(2).any(|w| w.first().map(|a| a.0) == w.get(1).map(|b| b.0)) {
                return Err(record::corrupt(&key, "two entries with one creation number"));
            }
            batch.insert(key, entry_runs::encode(entries.iter().map(|(n, e)| (*n, e)))?);
        }
        tree.apply_batch(batch).engine()?;
    }
    let mut done = sled::Batch::default();
    done.insert(record::META_FORMAT, record::u64_value(3));
    done.remove(record::META_MIGRATING_ENTRIES);
    tree.apply_batch(done).engine()
}

/// Refuses a tree recorded for another trust domain than `td`; records `td` in one that
/// has none.
fn check_trust_domain(tree: &sled::Tree, td: &TrustDomain) -> Result<(), StoreError> {
    match tree.get(record::META_TRUST_DOMAIN).engine()? {
        Some(v) if *v == *td.as_str().as_bytes() => Ok(()),
        Some(v) => Err(StoreError::TrustDomainMismatch {
            stored: String::from_utf8_lossy(&v).into_owned(),
            configured: td.as_str().to_owned(),
        }),
        None => {
            tree.insert(record::META_TRUST_DOMAIN, td.as_str().as_bytes()).engine()?;
            Ok(())
        }
    }
}

/// The most entry slots an open reserves ahead (a hint; more are added as needed).
const MAX_RESERVE: usize = 1 << 24;

/// Entries per message from a decoding thread to the indexing one in [`load_entries`].
const LOAD_BATCH: usize = 2048;

/// A range of engine keys.
type KeyRange = std::ops::Range<Vec<u8>>;

/// A batch of decoded entries with their creation numbers.
type Decoded = Vec<(Arc<RegistrationEntry>, u64)>;

/// Loads every entry record into `state`. Two threads read and decode (reading the
/// records from `half(false)` and `half(true)`: the engine's pages or the entry image,
/// checking every SPIFFE ID, selector and entry ID) the two halves of the entry key range
/// while this one indexes: decoding is the larger share of opening a big store, so it runs
/// on both cores, and on a machine busy with other work this process gets three runnable
/// threads' share of it. Entries are indexed in key (entry id) order whatever the threads'
/// timing, so slots come out the same on every open: the first half's batches as they
/// come, the second half's (kept meanwhile) after them.
///
/// # Errors
/// The first decoding error, else [`StoreError::Capacity`] when the image is full.
fn load_entries<I, K, V>(
    state: &mut State,
    alone_unnumbered: bool,
    half: impl Fn(bool) -> I + Sync,
) -> Result<(), StoreError>
where
    I: Iterator<Item = Result<(K, V), StoreError>>,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let (tx_low, rx_low) = std::sync::mpsc::sync_channel::<Decoded>(8);
    // Unbounded: its batches wait until the first half is indexed.
    let (tx_high, rx_high) = std::sync::mpsc::channel::<Decoded>();
    let half = &half;
    std::thread::scope(|scope| {
        let first = scope
            .spawn(move || decode_range(half(false), alone_unnumbered, |b| tx_low.send(b).is_ok()));
        let second = scope
            .spawn(move || decode_range(half(true), alone_unnumbered, |b| tx_high.send(b).is_ok()));
        let mut indexed = Ok(());
        'batches: for batch in rx_low.iter().chain(rx_high.iter()) {
            for (e, number) in batch {
                // Keys are unique in the tree, so every entry is new.
                if !state.insert_new_entry(e, number) {
                    indexed = Err(StoreError::Capacity);
                    break 'batches;
                }
            }
        }
        // Stops the decoders if the indexer stopped early: their sends fail.
        drop((rx_low, rx_high));
        let joined = |h: std::thread::ScopedJoinHandle<'_, Result<(), StoreError>>| {
            h.join().unwrap_or_else(|_| {
                Err(StoreError::Engine("entry decoding thread panicked".into()))
            })
        };
        let (first, second) = (joined(first), joined(second));
        first.and(second).and(indexed)
    })
}

/// Reads and decodes the entry records of one key range, handing them to `send` in batches
/// of [`LOAD_BATCH`]; stops early (with `Ok`) when `send` says the receiver is gone. With
/// `alone_unnumbered` (a tree's records), an entry stored alone with a creation number is
/// corrupt.
fn decode_range<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    range: impl Iterator<Item = Result<(K, V), StoreError>>,
    alone_unnumbered: bool,
    mut send: impl FnMut(Decoded) -> bool,
) -> Result<(), StoreError> {
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    for kv in range {
        let (k, v) = kv?;
        let (k, v) = (k.as_ref(), v.as_ref());
        if k.first() == Some(&record::ENTRY_RUN) {
            for (e, number) in entry_runs::decode(k, v)? {
                batch.push((Arc::new(e), number));
            }
        } else {
            let (e, number): (RegistrationEntry, u64) = record::decode_numbered(k, v)?;
            if k.strip_prefix(&[record::ENTRY]) != Some(e.id.as_str().as_bytes()) {
                return Err(record::corrupt(k, "the record holds another entry's id"));
            }
            // A numbered entry belongs in its run: updates and deletes go there only.
            if alone_unnumbered && number != 0 {
                return Err(record::corrupt(k, "an entry with a creation number stored alone"));
            }
            batch.push((Arc::new(e), number));
        }
        if batch.len() >= LOAD_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH));
            if !send(full) {
                return Ok(());
            }
        }
    }
    send(batch);
    Ok(())
}

/// The entry-run key range cut in two at the midpoint of its first and last run numbers:
/// always two ranges that together cover every run key exactly once.
fn run_halves(tree: &sled::Tree) -> Result<(KeyRange, KeyRange), StoreError> {
    let start = vec![record::ENTRY_RUN];
    let end = vec![record::ENTRY_RUN.saturating_add(1)];
    let first = tree.range(start.clone()..end.clone()).next().transpose().engine()?;
    let last = tree.range(start.clone()..end.clone()).next_back().transpose().engine()?;
    let number = |k: &[u8]| {
        let mut b = [0u8; 8];
        for (to, from) in b.iter_mut().zip(k.iter().skip(1)) {
            *to = *from;
        }
        u64::from_be_bytes(b)
    };
    let mid = match (first, last) {
        (Some((a, _)), Some((b, _))) => {
            let (a, b) = (number(&a), number(&b));
            a.saturating_add(b.saturating_sub(a) / 2)
        }
        _ => 0,
    };
    let mut cut = start.clone();
    cut.extend_from_slice(&mid.to_be_bytes());
    Ok((start..cut.clone(), cut..end))
}

#[cfg(test)]
mod tests {
    use ward_core::JoinToken;

    use super::*;
    use crate::testdata::DataSet;
    use crate::{Command, Committed, LogEntry, Store, StoreConfig};

    fn open(dir: &std::path::Path) -> Store {
        Store::open(dir, StoreConfig::new(DataSet::trust_domain())).unwrap()
    }

    /// Applies indexes `from..from + n`, each a new join token with request id `index + 7`,
    /// in committed runs of 9.
    #[expect(clippy::arithmetic_side_effects, reason = "small indexes in tests")]
    fn apply_tokens(store: &Store, from: u64, n: u64) {
        let data: Vec<(u64, Vec<u8>)> = (from..from + n)
            .map(|i| {
                let token = JoinToken { token: format!("t{i}"), expires_at: 2_000_000_000 };
                let cmd = Command::CreateJoinToken { token: token.to_stored(), entry: None };
                (i, LogEntry::new(u128::from(i) + 7, cmd).encode())
            })
            .collect();
        for run in data.chunks(9) {
            let batch: Vec<Committed<'_>> = run
                .iter()
                .map(|(index, data)| Committed::Entry { index: *index, term: 1, data })
                .collect();
            store.apply_committed(&batch).unwrap();
        }
    }

    /// Rewrites a current-format tree in layout format 1, as the releases before runs wrote
    /// it: one `c` record per revision (the change's encoding), one `r` record per request
    /// id, and `m/format` 1 (or none, as before the format was recorded).
    fn to_format_1(tree: &sled::Tree, record_format: bool) {
        let mut batch = sled::Batch::default();
        for kv in tree.scan_prefix([record::FEED_RUN]) {
            let (k, v) = kv.unwrap();
            for frame in feed::frames(&k, &v) {
                let frame = frame.unwrap();
                let change: record::Change = record::decode(&k, frame).unwrap();
                batch.insert(record::change_key(change.revision), frame);
            }
            batch.remove(k);
        }
        for kv in tree.scan_prefix([record::REQUEST_RUN]) {
            let (k, v) = kv.unwrap();
            for (index, id) in request_ids::read_run(&k, &v).unwrap() {
                batch.insert(record::request_key(index), &id.to_be_bytes());
            }
            batch.remove(k);
        }
        if record_format {
            batch.insert(record::META_FORMAT, record::u64_value(1));
        } else {
            batch.remove(record::META_FORMAT);
        }
        tree.apply_batch(batch).unwrap();
    }

    #[test]
    fn a_format_1_store_opens_migrated_to_runs_with_the_same_feed_and_request_ids() {
        let reference_dir = tempfile::tempdir().unwrap();
        let reference = open(reference_dir.path());
        apply_tokens(&reference, 1, 150);
        for record_format in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            apply_tokens(&store, 1, 150);
            // The engine holds every apply before its records are rewritten by hand.
            store.flush().unwrap();
            let tree = store.data_tree();
            to_format_1(&tree, record_format);
            assert_eq!(tree.scan_prefix([record::CHANGE]).count(), 150);
            assert_eq!(tree.scan_prefix([record::REQUEST]).count(), 150);
            store.flush().unwrap();
            drop((tree, store));

            let store = open(dir.path());
            let tree = store.data_tree();
            let format = tree.get(record::META_FORMAT).unwrap().unwrap();
            assert_eq!(record::read_u64(b"m/format", &format).unwrap(), record::FORMAT);
            assert_eq!(tree.scan_prefix([record::CHANGE]).count(), 0, "no format-1 feed left");
            assert_eq!(tree.scan_prefix([record::REQUEST]).count(), 0, "no format-1 ids left");
            assert_eq!(
                store.changes_since(0, usize::MAX).unwrap(),
                reference.changes_since(0, usize::MAX).unwrap()
            );
            let stream = |s: &Store| s.export_snapshot(0).unwrap().chunks;
            assert_eq!(stream(&store), stream(&reference), "the same state, byte for byte");
            // Retries of ids applied before the migration are still duplicates; the stores
            // go on alike.
            let retry = LogEntry::new(64 + 7, Command::PruneJoinTokens { expires_before: 0 });
            let data = retry.encode();
            let out = store
                .apply_committed(&[Committed::Entry { index: 151, term: 1, data: &data }])
                .unwrap();
            assert_eq!(out[0].result, Err(crate::Duplicate { first_index: 64 }));
            apply_tokens(&store, 152, 40);
            drop(tree);
            let twin_dir = tempfile::tempdir().unwrap();
            let twin = open(twin_dir.path());
            twin.import_snapshot(stream(&reference)).unwrap();
            twin.apply_committed(&[Committed::Entry { index: 151, term: 1, data: &data }]).unwrap();
            apply_tokens(&twin, 152, 40);
            assert_eq!(stream(&store), stream(&twin));
        }
    }

    /// Rewrites the entry runs of a current-format tree as layout format 2 wrote entries:
    /// one `e` record per entry, and `m/format` 2. With `cut_short`, the entries with even
    /// numbers stay in their runs, as a migration stopped between two of its batches leaves
    /// some of them.
    fn to_format_2(tree: &sled::Tree, cut_short: bool) {
        let mut batch = sled::Batch::default();
        for kv in tree.scan_prefix([record::ENTRY_RUN]) {
            let (k, v) = kv.unwrap();
            let mut kept = Vec::new();
            for (e, number) in entry_runs::decode(&k, &v).unwrap() {
                if cut_short && number % 2 == 0 {
                    kept.push((number, Arc::new(e)));
                } else {
                    batch.insert(
                        record::entry_key(&e.id),
                        record::encode_numbered(&e, number).unwrap(),
                    );
                }
            }
            if kept.is_empty() {
                batch.remove(k);
            } else {
                batch.insert(k, entry_runs::encode(kept.iter().map(|(n, e)| (*n, e))).unwrap());
            }
        }
        batch.insert(record::META_FORMAT, record::u64_value(2));
        tree.apply_batch(batch).unwrap();
    }

    /// Creates, updates and deletes entries of the small set after it is loaded.
    #[expect(clippy::arithmetic_side_effects, reason = "small numbers in tests")]
    fn change_entries(store: &Store) {
        let next = |cmd: Command| store.apply(store.last_applied() + 1, &cmd).unwrap();
        let mut changed = DataSet::workload_entry(3, 1);
        changed.hint = "changed".into();
        let patch = ward_core::EntryPatch::all_of(&changed);
        next(Command::UpdateEntries(vec![crate::EntryUpdate { id: changed.id, patch }]));
        next(Command::DeleteEntries(vec![DataSet::workload_entry(4, 2).id]));
        let mut created = DataSet::workload_entry(5, 0);
        created.id = DataSet::entry_id(9, 5, 0);
        created.spiffe_id = DataSet::trust_domain().spiffe_id("/created").unwrap();
        next(Command::CreateEntries(vec![created]));
    }

    #[test]
    fn a_format_2_store_opens_migrated_to_entry_runs_with_the_same_entries() {
        let stream = |s: &Store| s.export_snapshot(0).unwrap().chunks;
        for cut_short in [false, true] {
            let reference_dir = tempfile::tempdir().unwrap();
            let reference = open(reference_dir.path());
            DataSet::SMALL.load(&reference).unwrap();
            change_entries(&reference);
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            DataSet::SMALL.load(&store).unwrap();
            change_entries(&store);
            store.flush().unwrap();
            let tree = store.data_tree();
            to_format_2(&tree, cut_short);
            let alone = tree.scan_prefix([record::ENTRY]).count();
            assert!(alone > 500, "{alone} entries stored alone");
            assert_eq!(tree.scan_prefix([record::ENTRY_RUN]).count() > 0, cut_short);
            store.flush().unwrap();
            drop((tree, store));

            let store = open(dir.path());
            let tree = store.data_tree();
            let format = tree.get(record::META_FORMAT).unwrap().unwrap();
            assert_eq!(record::read_u64(b"m/format", &format).unwrap(), 3);
            assert_eq!(tree.scan_prefix([record::ENTRY]).count(), 0, "no entry left alone");
            same_records(&stream(&store), &stream(&reference));
            assert_eq!(stream(&store), stream(&reference), "the same state, byte for byte");
            drop(tree);
            // It goes on alike, and reads the same after another open.
            change_entries_after_migration(&store);
            change_entries_after_migration(&reference);
            store.flush().unwrap();
            drop(store);
            let store = open(dir.path());
            assert_eq!(stream(&store), stream(&reference));
        }
    }

    /// Fails naming the keys whose records differ between two streams.
    fn same_records(a: &[crate::SnapshotChunk], b: &[crate::SnapshotChunk]) {
        let records = |chunks: &[crate::SnapshotChunk]| {
            let mut out = BTreeMap::new();
            for c in chunks.iter().filter(|c| !c.last) {
                let mut buf = c.payload.as_slice();
                while !buf.is_empty() {
                    let k = crate::snapshot::take_framed(&mut buf).unwrap().to_vec();
                    let v = crate::snapshot::take_framed(&mut buf).unwrap().to_vec();
                    out.insert(k, v);
                }
            }
            out
        };
        let (a, b) = (records(a), records(b));
        let differ: Vec<String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert!(differ.is_empty(), "records differ: {differ:?}");
    }

    #[expect(clippy::arithmetic_side_effects, reason = "small numbers in tests")]
    fn change_entries_after_migration(store: &Store) {
        let next = |cmd: Command| store.apply(store.last_applied() + 1, &cmd).unwrap();
        next(Command::DeleteEntries(vec![DataSet::workload_entry(3, 1).id]));
        let mut created = DataSet::workload_entry(6, 0);
        created.id = DataSet::entry_id(9, 6, store.revision());
        created.spiffe_id = DataSet::trust_domain().spiffe_id("/created-after").unwrap();
        next(Command::CreateEntries(vec![created.clone()]));
        next(Command::DeleteEntries(vec![created.id]));
    }

    #[test]
    fn entries_stored_without_a_number_stay_alone_and_change_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (store, old) = store_with_unnumbered(dir.path(), 2);
        let tree = store.data_tree();
        let alone: Vec<_> = tree.scan_prefix([record::ENTRY]).map(|kv| kv.unwrap().0).collect();
        assert_eq!(alone.len(), 2, "entries without a number are not moved to a run");
        assert_eq!(store.read().entry_number(&old[0].id), Some(0));
        let mut changed = old[0].clone();
        changed.hint = "changed".into();
        let patch = ward_core::EntryPatch::all_of(&changed);
        let cmd =
            Command::UpdateEntries(vec![crate::EntryUpdate { id: changed.id.clone(), patch }]);
        store.apply(store.last_applied() + 1, &cmd).unwrap();
        store
            .apply(store.last_applied() + 1, &Command::DeleteEntries(vec![old[1].id.clone()]))
            .unwrap();
        store.flush().unwrap();
        let v = tree.get(record::entry_key(&old[0].id)).unwrap().unwrap();
        let (stored, number): (RegistrationEntry, u64) = record::decode_numbered(b"e", &v).unwrap();
        assert_eq!((stored.hint.as_str(), number), ("changed", 0));
        assert!(tree.get(record::entry_key(&old[1].id)).unwrap().is_none());
        let want = store.export_snapshot(0).unwrap().chunks;
        drop((tree, store));
        let store = open(dir.path());
        assert_eq!(store.read().entry(&old[0].id).map(|e| e.hint.clone()), Some("changed".into()));
        assert_eq!(store.export_snapshot(0).unwrap().chunks, want);
        // A snapshot carries them alone too, and installs the same.
        let target_dir = tempfile::tempdir().unwrap();
        let target = open(target_dir.path());
        target.import_snapshot(want.clone()).unwrap();
        assert_eq!(target.export_snapshot(0).unwrap().chunks, want);
    }

    /// A stream of `store`'s engine records as they are (of an older layout when rewritten
    /// so) with `info`'s trailer.
    fn raw_stream(store: &Store, info: &crate::SnapshotInfo) -> Vec<crate::SnapshotChunk> {
        let mut payload = Vec::new();
        let mut records = 0u64;
        for kv in store.data_tree().iter() {
            let (k, v) = kv.unwrap();
            put_framed(&mut payload, &k).unwrap();
            put_framed(&mut payload, &v).unwrap();
            records = records.saturating_add(1);
        }
        let info = crate::SnapshotInfo { records, ..info.clone() };
        crate::snapshot::stream_of(vec![payload], &info).unwrap()
    }

    /// A format-2 store of the small set with `n` of two more entries stored as records
    /// written before creation numbers were kept (the value alone), reopened without an
    /// image (so from its records, migrated).
    fn store_with_unnumbered(dir: &std::path::Path, n: usize) -> (Store, [RegistrationEntry; 2]) {
        let store = open(dir);
        DataSet::SMALL.load(&store).unwrap();
        let tree = store.data_tree();
        to_format_2(&tree, false);
        let old = [DataSet::workload_entry(7, 0), DataSet::workload_entry(7, 1)];
        for e in &old[..n] {
            tree.insert(record::entry_key(&e.id), record::encode(e).unwrap()).unwrap();
        }
        drop(tree);
        let store = reopen_from_records(dir, store).unwrap();
        assert!(!store.opened_from_image());
        assert_eq!(store.read().entry_number(&old[0].id), Some(0));
        (store, old)
    }

    /// Changes an entry of run 0 (numbers 1 to 7).
    #[expect(clippy::arithmetic_side_effects, reason = "small numbers in tests")]
    fn change_in_run_0(store: &Store) {
        let mut changed = {
            let s = store.read();
            let (n, e) = s.entries_numbered(1, entry_runs::ENTRY_RUN).next().unwrap();
            assert!(n >= 1);
            (**e).clone()
        };
        changed.hint = "changed".into();
        let patch = ward_core::EntryPatch::all_of(&changed);
        let cmd = Command::UpdateEntries(vec![crate::EntryUpdate { id: changed.id, patch }]);
        store.apply(store.last_applied() + 1, &cmd).unwrap();
    }

    /// Reopens `dir` from its records (the image removed).
    fn reopen_from_records(dir: &std::path::Path, store: Store) -> Result<Store, StoreError> {
        store.flush().unwrap();
        drop(store);
        let _ = std::fs::remove_file(dir.join(image::IMAGE_FILE));
        Store::open(dir, StoreConfig::new(DataSet::trust_domain()))
    }

    #[test]
    fn a_change_in_the_first_run_leaves_unnumbered_entries_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (store, old) = store_with_unnumbered(dir.path(), 2);
        change_in_run_0(&store);
        let count = store.entry_count();
        let store = reopen_from_records(dir.path(), store).expect("the store reopens");
        assert_eq!(store.entry_count(), count);
        assert_eq!(store.read().entry_number(&old[1].id), Some(0));
    }

    #[test]
    fn an_unnumbered_entry_deleted_stays_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, old) = store_with_unnumbered(dir.path(), 1);
        change_in_run_0(&store);
        let delete = Command::DeleteEntries(vec![old[0].id.clone()]);
        store.apply(store.last_applied() + 1, &delete).unwrap();
        let count = store.entry_count();
        let store = reopen_from_records(dir.path(), store).unwrap();
        assert!(store.entry(&old[0].id).is_none(), "a deleted entry came back");
        assert_eq!(store.entry_count(), count);
    }

    #[test]
    fn creation_numbers_stop_below_the_last_so_every_entry_has_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let tree = store.data_tree();
        tree.insert(record::META_ENTRY_NUMBER, record::u64_value(u64::MAX - 2)).unwrap();
        drop(tree);
        let store = reopen_from_records(dir.path(), store).unwrap();
        let create = |k: usize| Command::CreateEntries(vec![DataSet::workload_entry(1, k)]);
        let first = store.apply(store.last_applied() + 1, &create(0)).unwrap();
        assert!(matches!(&first.outcome, crate::Outcome::Entries(r) if r[0].is_ok()), "{first:?}");
        assert_eq!(
            store.read().entry_number(&DataSet::workload_entry(1, 0).id),
            Some(u64::MAX - 1)
        );
        // The next would be numbered u64::MAX: refused as this item's error, nothing changed.
        let second = store.apply(store.last_applied() + 1, &create(1)).unwrap();
        assert!(
            matches!(&second.outcome, crate::Outcome::Entries(r) if r[0].is_err()),
            "{second:?}"
        );
        let want = store.export_snapshot(0).unwrap().chunks;
        let store = reopen_from_records(dir.path(), store).unwrap();
        assert!(store.entry(&DataSet::workload_entry(1, 0).id).is_some());
        assert_eq!(store.export_snapshot(0).unwrap().chunks, want);
    }

    #[test]
    fn a_numbered_entry_stored_alone_is_corrupt_in_format_3() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        DataSet::SMALL.load(&store).unwrap();
        let e = DataSet::workload_entry(7, 0);
        let tree = store.data_tree();
        tree.insert(record::entry_key(&e.id), record::encode_numbered(&e, 5000).unwrap()).unwrap();
        drop(tree);
        let Err(err) = reopen_from_records(dir.path(), store) else { panic!("opened") };
        assert!(err.to_string().contains("stored alone"), "{err}");
    }

    #[test]
    fn a_move_into_runs_cut_short_is_finished_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        DataSet::SMALL.load(&store).unwrap();
        change_entries(&store);
        let want = store.export_snapshot(0).unwrap().chunks;
        store.flush().unwrap();
        // As the first batches of the move leave a tree: format 3 and the marker, some
        // entries in runs, the others still alone.
        let tree = store.data_tree();
        to_format_2(&tree, true);
        tree.insert(record::META_FORMAT, record::u64_value(3)).unwrap();
        tree.insert(record::META_MIGRATING_ENTRIES, &[1u8][..]).unwrap();
        assert!(tree.scan_prefix([record::ENTRY]).count() > 400);
        drop(tree);
        let store = reopen_from_records(dir.path(), store).unwrap();
        let tree = store.data_tree();
        assert_eq!(tree.scan_prefix([record::ENTRY]).count(), 0);
        assert!(!tree.contains_key(record::META_MIGRATING_ENTRIES).unwrap());
        assert_eq!(store.export_snapshot(0).unwrap().chunks, want);
    }

    #[test]
    fn a_format_2_snapshot_installs_migrated_to_entry_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        DataSet::SMALL.load(&store).unwrap();
        change_entries(&store);
        store.flush().unwrap();
        let want = store.export_snapshot(0).unwrap();
        to_format_2(&store.data_tree(), false);
        let target_dir = tempfile::tempdir().unwrap();
        let target = open(target_dir.path());
        target.import_snapshot(raw_stream(&store, &want.info)).unwrap();
        assert_eq!(target.export_snapshot(0).unwrap().chunks, want.chunks);
    }

    #[test]
    fn a_format_1_snapshot_installs_migrated_to_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        apply_tokens(&store, 1, 70);
        let want = store.export_snapshot(0).unwrap();
        // A format-1 stream: the records of a format-1 tree, raw, and the same trailer.
        to_format_1(&store.data_tree(), true);
        let target_dir = tempfile::tempdir().unwrap();
        let target = open(target_dir.path());
        target.import_snapshot(raw_stream(&store, &want.info)).unwrap();
        assert_eq!(target.export_snapshot(0).unwrap().chunks, want.chunks);
        assert_eq!(target.changes_since(68, 5).unwrap().len(), 2);
    }
}
