#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Snapshot export as a stream and import that replaces the whole state: round trips, the
//! consistent cut under concurrent writes, and rejection of damaged or incomplete streams.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use ward_core::{
    AttestedNode, Bundle, BundleEndpointProfile, EntryId, FederationRelationship, JoinToken,
    JwtAuthority, RegistrationEntry, TrustDomain, X509Authority,
};
use ward_store::testdata::DataSet;
use ward_store::{
    AgentFilter, BundleDeleteMode, Change, Command, Committed, EntryFilter, PageRequest,
    SnapshotChunk, SnapshotInfo, Store, StoreConfig, StoreError,
};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::new(DataSet::trust_domain())).unwrap()
}

const TOKENS: [&str; 3] = ["tok-a", "tok-b", "tok-late"];

fn fed_td() -> TrustDomain {
    TrustDomain::new("fed.example").unwrap()
}

/// The small data set plus join tokens, bundles with authorities and a federation
/// relationship, so every kind of record is in the snapshot.
fn loaded() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    DataSet::SMALL.load(&store).unwrap();
    for t in &TOKENS[..2] {
        let token = JoinToken { token: (*t).into(), expires_at: 2_000_000_000 }.to_stored();
        store
            .apply(store.last_applied() + 1, &Command::CreateJoinToken { token, entry: None })
            .unwrap();
    }
    store
        .apply(
            store.last_applied() + 1,
            &Command::AppendBundle {
                trust_domain: DataSet::trust_domain(),
                x509_authorities: vec![X509Authority::new(vec![1, 2, 3])],
                jwt_authorities: vec![JwtAuthority {
                    public_key_der: vec![4, 5, 6],
                    key_id: "kid-1".into(),
                    expires_at: 1_900_000_000,
                    tainted: false,
                }],
            },
        )
        .unwrap();
    let rel = FederationRelationship {
        trust_domain: fed_td(),
        bundle_endpoint_url: "https://fed.example/bundle".into(),
        profile: BundleEndpointProfile::HttpsWeb,
        trust_domain_bundle: Some(Bundle::new(fed_td())),
    };
    store
        .apply(store.last_applied() + 1, &Command::CreateFederationRelationships(vec![rel]))
        .unwrap();
    store.flush().unwrap();
    (dir, store)
}

/// Everything the store answers, in comparable form.
#[derive(Debug, PartialEq)]
struct View {
    entries: Vec<Arc<RegistrationEntry>>,
    agents: Vec<Arc<AttestedNode>>,
    authorized: Vec<Vec<Arc<RegistrationEntry>>>,
    bundles: Vec<Arc<Bundle>>,
    federations: Vec<Arc<FederationRelationship>>,
    tokens: Vec<Option<i64>>,
    changes: Vec<Change>,
    revision: u64,
    applied: u64,
}

fn view(store: &Store) -> View {
    let agents = store.list_agents(&AgentFilter::default(), &PageRequest::all()).items;
    View {
        entries: store.list_entries(&EntryFilter::default(), &PageRequest::all()).items,
        authorized: agents
            .iter()
            .map(|a| store.authorized_entries_uncached(&a.id).to_vec())
            .collect(),
        agents,
        bundles: store.list_bundles(&PageRequest::all()).items,
        federations: store.list_federation_relationships(&PageRequest::all()).items,
        tokens: TOKENS.iter().map(|t| store.join_token(t).map(|t| t.expires_at)).collect(),
        changes: store.changes_since(0, usize::MAX).unwrap(),
        revision: store.revision(),
        applied: store.last_applied(),
    }
}

#[test]
fn streamed_snapshot_round_trips_into_an_empty_store() {
    let (_dir, store) = loaded();
    let want = view(&store);
    assert_eq!(want.entries.len(), 1006);
    assert_eq!(want.agents.len(), 100);
    assert_eq!(want.bundles.len(), 2);
    assert_eq!(want.federations.len(), 1);
    assert_eq!(want.tokens, vec![Some(2_000_000_000), Some(2_000_000_000), None]);

    let export = store.export_snapshot_stream(16 * 1024).unwrap();
    let info = export.info();
    assert_eq!((info.applied, info.revision), (want.applied, want.revision));
    // Through the transport encoding, one chunk at a time.
    let mut seqs = Vec::new();
    let wire = export.map(|c| {
        let c = c.unwrap();
        seqs.push((c.seq, c.last));
        SnapshotChunk::from_bytes(&c.to_bytes())
    });
    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    assert_eq!(other.import_snapshot_stream(wire).unwrap(), info);
    assert!(seqs.len() > 3, "several chunks: {}", seqs.len());
    let expect_seqs: Vec<(u32, bool)> =
        (0..seqs.len()).map(|i| (i as u32, i + 1 == seqs.len())).collect();
    assert_eq!(seqs, expect_seqs);
    assert_eq!(view(&other), want);

    // Durable: the same after reopening.
    drop(other);
    let other = open(dir2.path());
    assert_eq!(view(&other), want);
}

#[test]
fn stream_and_collected_export_yield_the_same_chunks() {
    let (_dir, store) = loaded();
    let streamed: Vec<SnapshotChunk> =
        store.export_snapshot_stream(4096).unwrap().map(Result::unwrap).collect();
    let whole = store.export_snapshot(4096).unwrap();
    assert_eq!(streamed, whole.chunks);
    let trailer = streamed.last().unwrap();
    assert!(trailer.last);
    // The trailer: layout 2; applied, term, revision, records (u64 LE); the trust domain;
    // no membership; the stream CRC.
    let u = |i: usize| u64::from_le_bytes(trailer.payload[1 + i..9 + i].try_into().unwrap());
    let name = DataSet::trust_domain().as_str().len();
    assert_eq!(trailer.payload[0], 2);
    assert_eq!(trailer.payload.len(), 1 + 32 + 4 + name + 1 + 4);
    assert_eq!(trailer.payload[1 + 32 + 4 + name], 0, "no membership");
    let info = SnapshotInfo {
        applied: u(0),
        term: u(8),
        revision: u(16),
        records: u(24),
        conf_state: None,
        trust_domain: DataSet::trust_domain(),
    };
    assert_eq!(info, whole.info);
    assert_eq!(whole.info.applied, store.last_applied());
}

#[test]
fn one_record_chunks_still_round_trip() {
    let (_dir, store) = loaded();
    let want = view(&store);
    let export = store.export_snapshot_stream(1).unwrap();
    let info = export.info();
    let chunks: Vec<SnapshotChunk> = export.map(Result::unwrap).collect();
    // Every data chunk holds exactly one record, then the trailer.
    assert_eq!(chunks.len() as u64, info.records + 1);
    // 100 agents, 1,006 entries in runs of 8 creation numbers, tokens, feed, metadata.
    assert!(info.records > 100 + 1006 / 8, "agents, entry runs and more: {}", info.records);
    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    assert_eq!(other.import_snapshot(chunks).unwrap(), info);
    assert_eq!(view(&other), want);
}

/// Runs `f` on another thread and fails if it does not finish in time, so a writer that
/// blocks on a live export fails the test instead of hanging it.
fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("write blocked by a live export")
}

#[test]
fn writes_during_an_export_do_not_block_and_stay_out_of_it() {
    let (_dir, store) = loaded();
    let at_cut = view(&store);
    let mut export = store.export_snapshot_stream(8 * 1024).unwrap();
    let first = export.next().unwrap().unwrap();
    assert!(!first.last);

    // While the export is alive: create, delete and re-attest.
    let late_entry = DataSet::workload_entry(1_000, 0);
    let deleted = at_cut.entries[3].id.clone();
    let s = store.clone();
    let late = late_entry.clone();
    let gone = deleted.clone();
    let applied = finishes(move || {
        s.apply(s.last_applied() + 1, &Command::CreateEntries(vec![late])).unwrap();
        s.apply(s.last_applied() + 1, &Command::DeleteEntries(vec![gone])).unwrap();
        let mut again = DataSet::agent(5);
        again.serial = "999999".into();
        s.apply(s.last_applied() + 1, &Command::AttestAgent(again)).unwrap();
        let token = JoinToken { token: TOKENS[2].into(), expires_at: 2_000_000_000 }.to_stored();
        s.apply(s.last_applied() + 1, &Command::CreateJoinToken { token, entry: None }).unwrap()
    });
    assert_eq!(applied.index, at_cut.applied + 4);
    assert!(store.entry(&late_entry.id).is_some());
    assert!(store.entry(&deleted).is_none());

    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    let info = other.import_snapshot_stream(std::iter::once(Ok(first)).chain(export)).unwrap();
    assert_eq!((info.applied, info.revision), (at_cut.applied, at_cut.revision));
    assert_eq!(view(&other), at_cut);
    assert!(other.entry(&late_entry.id).is_none());
    assert!(other.entry(&deleted).is_some());
    assert_eq!(other.agent(&DataSet::agent_id(5)).unwrap().serial, "1005");
    assert_eq!(other.join_token(TOKENS[2]), None);
}

#[test]
fn importing_over_the_source_during_an_export_leaves_the_stream_intact() {
    let (_dir, store) = loaded();
    let at_cut = view(&store);
    let export = store.export_snapshot_stream(8 * 1024).unwrap();

    // Replace the source's whole state with an empty store's (newer: it applied more no-ops).
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = open(empty_dir.path());
    let noops: Vec<Committed<'_>> =
        (1..=store.last_applied() + 1).map(|index| Committed::Empty { index, term: 1 }).collect();
    empty.apply_committed(&noops).unwrap();
    let s = store.clone();
    let blank = empty.export_snapshot(0).unwrap();
    finishes(move || s.import_snapshot(blank.chunks).unwrap());
    assert_eq!(store.entry_count(), 0);

    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    other.import_snapshot_stream(export).unwrap();
    assert_eq!(view(&other), at_cut);
}

/// A target store with state of its own, and its view.
fn target() -> (tempfile::TempDir, Store, View) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .apply(
            store.last_applied() + 1,
            &Command::CreateEntries(vec![DataSet::workload_entry(7, 7)]),
        )
        .unwrap();
    store.apply(store.last_applied() + 1, &Command::AttestAgent(DataSet::agent(7))).unwrap();
    let v = view(&store);
    (dir, store, v)
}

fn bad(msg: &str) -> StoreError {
    StoreError::BadSnapshot(msg.into())
}

#[test]
fn damaged_or_incomplete_streams_are_rejected_and_leave_the_target_unchanged() {
    let (_dir, store) = loaded();
    let chunks: Vec<SnapshotChunk> =
        store.export_snapshot_stream(8 * 1024).unwrap().map(Result::unwrap).collect();
    assert!(chunks.len() > 4);
    let (tdir, other, before) = target();

    let mut corrupted = chunks.clone();
    corrupted[2].payload[5] ^= 0x40;
    assert_eq!(other.import_snapshot(corrupted).unwrap_err(), bad("checksum mismatch in chunk 2"));
    assert_eq!(view(&other), before);

    let mut missing = chunks.clone();
    missing.remove(1);
    assert_eq!(
        other.import_snapshot(missing).unwrap_err(),
        bad("chunk 2 arrived where 1 was expected")
    );
    assert_eq!(view(&other), before);

    let mut reordered = chunks.clone();
    reordered.swap(0, 1);
    assert_eq!(
        other.import_snapshot(reordered).unwrap_err(),
        bad("chunk 1 arrived where 0 was expected")
    );
    assert_eq!(view(&other), before);

    let mut no_trailer = chunks.clone();
    no_trailer.pop();
    assert_eq!(
        other.import_snapshot(no_trailer).unwrap_err(),
        bad("stream ended without its trailer")
    );
    assert_eq!(view(&other), before);

    // A failing source (a broken transfer) aborts with its own error.
    let cut_off = chunks
        .iter()
        .take(3)
        .cloned()
        .map(Ok)
        .chain(std::iter::once(Err(StoreError::Engine("transfer reset".into()))));
    assert_eq!(
        other.import_snapshot_stream(cut_off).unwrap_err(),
        StoreError::Engine("transfer reset".into())
    );
    assert_eq!(view(&other), before);

    // Nothing of the failed imports reached disk either.
    drop(other);
    let other = open(tdir.path());
    assert_eq!(view(&other), before);
    // And a sound stream still imports afterwards.
    other.import_snapshot(chunks).unwrap();
    assert_eq!(view(&other), view(&store));
}

#[test]
fn exports_taken_while_a_writer_runs_match_their_applied_index() {
    let (_dir, store) = loaded();
    let base = store.last_applied();
    // Command k (from 1) re-attests agent k % 100 with serial "w{k}".
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            for k in 1..=20_000usize {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let mut a = DataSet::agent(k % 100);
                a.serial = format!("w{k}");
                store.apply(store.last_applied() + 1, &Command::AttestAgent(a)).unwrap();
            }
        })
    };
    for _ in 0..1000 {
        if store.last_applied() > base {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut seen = Vec::new();
    for _ in 0..8 {
        let export = store.export_snapshot_stream(4096).unwrap();
        let info = export.info();
        let dir2 = tempfile::tempdir().unwrap();
        let other = open(dir2.path());
        assert_eq!(other.import_snapshot_stream(export).unwrap(), info);
        assert_eq!(other.last_applied(), info.applied);
        let done = (info.applied - base) as usize;
        for j in 0..100 {
            let want = (1..=done)
                .rev()
                .find(|k| k % 100 == j)
                .map_or_else(|| DataSet::agent(j).serial, |k| format!("w{k}"));
            assert_eq!(other.agent(&DataSet::agent_id(j)).unwrap().serial, want, "agent {j}");
        }
        // The change feed is whole: one record per revision, up to the cut's.
        let revisions: Vec<u64> =
            other.changes_since(0, usize::MAX).unwrap().iter().map(|c| c.revision).collect();
        assert_eq!(revisions, (1..=info.revision).collect::<Vec<_>>());
        seen.push(info.applied);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(seen[0] > base, "the writer ran before the first cut: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "cuts move forward: {seen:?}");
}

/// Review §1.6: the ids a bundle delete records in the change feed follow entry ids, not
/// the history-dependent slots of the index, so a replica that installed a snapshot and one
/// that replayed the log export the same bytes after the same delete.
#[test]
fn bundle_delete_feed_is_the_same_after_replay_and_after_import() {
    for mode in [BundleDeleteMode::Delete, BundleDeleteMode::Dissociate] {
        let dir = tempfile::tempdir().unwrap();
        let replayed = open(dir.path());
        let next = |s: &Store, cmd: Command| s.apply(s.last_applied() + 1, &cmd).unwrap();
        next(&replayed, Command::SetBundles(vec![Bundle::new(fed_td())]));
        // Created in reverse id order, so the replayed store's slots run against the ids;
        // an import numbers slots in id order.
        for (i, id) in ["z-user", "m-user", "a-user"].into_iter().enumerate() {
            let e = RegistrationEntry {
                id: EntryId::new(id).unwrap(),
                federates_with: vec![fed_td()],
                ..DataSet::workload_entry(i, i)
            };
            next(&replayed, Command::CreateEntries(vec![e]));
        }
        let dir2 = tempfile::tempdir().unwrap();
        let imported = open(dir2.path());
        imported.import_snapshot(replayed.export_snapshot(4096).unwrap().chunks).unwrap();

        let delete = Command::DeleteBundles { trust_domains: vec![fed_td()], mode };
        for s in [&replayed, &imported] {
            next(s, delete.clone());
        }
        let feed = replayed.changes_since(replayed.revision() - 1, 1).unwrap();
        let ids: Vec<&str> = feed[0].entries.iter().map(EntryId::as_str).collect();
        assert_eq!(ids, ["a-user", "m-user", "z-user"], "{mode:?}");
        assert_eq!(
            replayed.export_snapshot(4096).unwrap().chunks,
            imported.export_snapshot(4096).unwrap().chunks,
            "{mode:?}"
        );
    }
}

#[test]
fn a_snapshot_of_another_trust_domain_or_not_newer_is_refused() {
    let (_dir, store) = loaded();
    let chunks = store.export_snapshot(8 * 1024).unwrap().chunks;

    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Store::open(foreign_dir.path(), StoreConfig::new(fed_td())).unwrap();
    let before = view(&foreign);
    assert_eq!(
        foreign.import_snapshot(chunks.clone()).unwrap_err(),
        bad("the snapshot belongs to trust domain example.org, not fed.example")
    );
    assert_eq!(view(&foreign), before);

    // A store that is ahead of the snapshot keeps its state.
    let (_tdir, ahead, _) = target();
    let noops: Vec<Committed<'_>> =
        (3..=store.last_applied() + 5).map(|index| Committed::Empty { index, term: 1 }).collect();
    ahead.apply_committed(&noops).unwrap();
    let before = view(&ahead);
    assert_eq!(
        ahead.import_snapshot(chunks.clone()).unwrap_err(),
        StoreError::SnapshotNotNewer {
            snapshot: store.last_applied(),
            applied: store.last_applied() + 5
        }
    );
    assert_eq!(view(&ahead), before);
    // So is a store at the same index: the snapshot brings nothing.
    let at = store.last_applied();
    assert_eq!(
        store.import_snapshot(chunks).unwrap_err(),
        StoreError::SnapshotNotNewer { snapshot: at, applied: at }
    );
}

#[test]
fn a_store_of_another_trust_domain_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let err = Store::open(dir.path(), StoreConfig::new(fed_td())).unwrap_err();
    assert_eq!(
        err,
        StoreError::TrustDomainMismatch {
            stored: "example.org".into(),
            configured: "fed.example".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "the store belongs to trust domain example.org, not the configured fed.example; point \
         the server at its own data directory"
    );
    // The right trust domain still opens it.
    drop(err);
    open(dir.path());
}

#[test]
fn raft_metadata_travels_in_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .apply_committed(&[
            Committed::Empty { index: 1, term: 2 },
            Committed::Membership { index: 2, term: 2, conf_state: b"voters 1 2 3" },
            Committed::Empty { index: 3, term: 5 },
        ])
        .unwrap();
    let snap = store.export_snapshot(0).unwrap();
    assert_eq!((snap.info.applied, snap.info.term), (3, 5));
    assert_eq!(snap.info.conf_state.as_deref(), Some(&b"voters 1 2 3"[..]));
    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    other.import_snapshot(snap.chunks).unwrap();
    assert_eq!((other.last_applied(), other.applied_term()), (3, 5));
    assert_eq!(other.conf_state().as_deref(), Some(&b"voters 1 2 3"[..]));
    assert_eq!(other.durable_applied(), 3, "an import is durable");
}

#[test]
fn readers_keep_being_served_while_a_large_import_is_transferred() {
    let (_dir, store) = loaded();
    let want = view(&store);
    let chunks = store.export_snapshot(2 * 1024).unwrap().chunks;
    assert!(chunks.len() > 50, "a long transfer: {} chunks", chunks.len());
    let (_tdir, other, _) = target();

    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (other, reads, done) = (other.clone(), Arc::clone(&reads), Arc::clone(&done));
        std::thread::spawn(move || {
            for _ in 0..50_000_000u64 {
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                std::hint::black_box(other.entry_count());
                std::hint::black_box(other.authorized_entries(&DataSet::agent_id(7)));
                reads.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        })
    };
    // Before each chunk after the first, the source waits until the reader has finished a
    // read since the previous chunk: if the import held the state lock, it would not. One
    // deadline for the whole transfer; once it has passed, the source stops waiting.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut served = 0usize;
    let mut last = reads.load(std::sync::atomic::Ordering::Acquire);
    let n = chunks.len();
    let source = chunks.into_iter().enumerate().map(|(i, chunk)| {
        if i > 0 {
            while reads.load(std::sync::atomic::Ordering::Acquire) == last
                && std::time::Instant::now() < deadline
            {
                std::thread::yield_now();
            }
            let now = reads.load(std::sync::atomic::Ordering::Acquire);
            if now > last {
                served += 1;
            }
            last = now;
        }
        chunk
    });
    other.import_snapshot(source).unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    reader.join().unwrap();
    assert_eq!(served, n - 1, "the reader was served between every two chunks");
    assert_eq!(view(&other), want);
}
