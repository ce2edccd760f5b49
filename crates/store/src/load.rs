//! Opening a store: reading a generation tree (or the entry image) into a fresh in-memory
//! [`State`], with the entry records decoded on two threads while a third indexes them.

use std::sync::Arc;

use ward_core::{
    AttestedNode, Bundle, FederationRelationship, RegistrationEntry, StoredJoinToken, TrustDomain,
};

use crate::error::{EngineResult, StoreError};
use crate::image::{self, Image};
use crate::record;
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
    if let Some(v) = tree.get(record::META_FORMAT).engine()? {
        let format = record::read_u64(record::META_FORMAT, &v)?;
        if format > record::FORMAT {
            return Err(StoreError::UnsupportedFormat(format));
        }
    } else {
        tree.insert(record::META_FORMAT, record::u64_value(record::FORMAT)).engine()?;
    }
    check_trust_domain(tree, td)?;
    let entries = match tree.get(record::META_ENTRIES).engine()? {
        Some(v) => record::read_u64(record::META_ENTRIES, &v)?,
        None => 0,
    };
    let entries = match &image {
        Some(image) => image.count(),
        None => usize::try_from(entries).unwrap_or(0),
    };
    state.begin_bulk_load(entries);
    let loaded = match &image {
        Some(image) => load_entries(&mut state, |high| image.records(high)),
        None => {
            let (low, high) = entry_halves(tree)?;
            load_entries(&mut state, |second| {
                let range = if second { high.clone() } else { low.clone() };
                tree.range(range).map(|kv| kv.engine())
            })
        }
    };
    let from_image = image.is_some();
    drop(image);
    state.end_bulk_load();
    loaded?;
    if from_image && state.entry_count() != entries {
        return Err(StoreError::Corrupt {
            key: image::IMAGE_FILE.into(),
            reason: format!("{} entries read, {entries} recorded", state.entry_count()),
        });
    }
    let records =
        [record::AGENT, record::TOKEN, record::BUNDLE, record::FEDERATION, record::REQUEST]
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
            Some(record::REQUEST) => {
                // Keys are in index order, as the table keeps them.
                let (index, id) = record::read_request(&k, &v)?;
                state.request_ids.record(index, id);
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
    state.refreeze_dirty_groups();
    Ok(state)
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
        let first = scope.spawn(move || decode_range(half(false), |b| tx_low.send(b).is_ok()));
        let second = scope.spawn(move || decode_range(half(true), |b| tx_high.send(b).is_ok()));
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
/// of [`LOAD_BATCH`]; stops early (with `Ok`) when `send` says the receiver is gone.
fn decode_range<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    range: impl Iterator<Item = Result<(K, V), StoreError>>,
    mut send: impl FnMut(Decoded) -> bool,
) -> Result<(), StoreError> {
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    for kv in range {
        let (k, v) = kv?;
        let (e, number): (RegistrationEntry, u64) =
            record::decode_numbered(k.as_ref(), v.as_ref())?;
        batch.push((Arc::new(e), number));
        if batch.len() == LOAD_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH));
            if !send(full) {
                return Ok(());
            }
        }
    }
    send(batch);
    Ok(())
}

/// The entry key range cut in two at the midpoint of its first and last keys (compared as
/// numbers over their first 8 bytes after the prefix): even halves for random ids such as
/// UUIDs, and always two ranges that together cover every entry key exactly once.
fn entry_halves(tree: &sled::Tree) -> Result<(KeyRange, KeyRange), StoreError> {
    let start = vec![record::ENTRY];
    let end = vec![record::ENTRY.saturating_add(1)];
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
