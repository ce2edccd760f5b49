#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Targeted behaviour: the standard data set, snapshots, cache precision, join tokens,
//! agent serials, bundles, the change feed and stale indices.

use std::sync::Arc;

use ward_core::{
    AgentId, Bundle, BundleEndpointProfile, EntryId, EntryPatch, FederationRelationship, JoinToken,
    JoinTokenHash, JwtAuthority, SelectorMatch, SelectorSet, TrustDomain, X509Authority,
};
use ward_store::testdata::DataSet;
use ward_store::{
    AgentFilter, AuthorizedEntries, BundleDeleteMode, BundleMask, BundleUpdate, Command,
    ConsumedToken, EntryFilter, EntryUpdate, FederationMask, FederationUpdate, ItemError, Outcome,
    PageRequest, SelectorFilter, SnapshotChunk, Store, StoreConfig, StoreError,
};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::new(DataSet::trust_domain())).unwrap()
}

fn loaded() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    DataSet::SMALL.load(&store).unwrap();
    (dir, store)
}

fn ids(v: &[Arc<ward_core::RegistrationEntry>]) -> Vec<EntryId> {
    v.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn data_set_gives_every_agent_fifteen_entries_and_survives_reopen() {
    let (dir, store) = loaded();
    assert_eq!(store.entry_count(), 1006);
    assert_eq!(store.agent_count(), 100);
    let want: Vec<EntryId> = {
        let mut v: Vec<EntryId> = (0..10)
            .map(|k| DataSet::workload_entry(7, k).id)
            .chain((0..5).map(|k| DataSet::alias_child_entry(0, k).id))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&store.authorized_entries(&DataSet::agent_id(7)).to_vec()), want);
    for i in 0..100 {
        assert_eq!(store.authorized_entries(&DataSet::agent_id(i)).len(), 15);
    }
    let applied = store.last_applied();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.last_applied(), applied);
    assert_eq!(ids(&store.authorized_entries(&DataSet::agent_id(7)).to_vec()), want);
}

fn query_fingerprint(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    let sel = |s: &str| SelectorSet::new(vec![s.parse().unwrap()]);
    let filters = [
        EntryFilter::default(),
        EntryFilter { parent_id: Some(DataSet::agent_id(3).0), ..Default::default() },
        EntryFilter {
            selectors: Some(SelectorFilter {
                selectors: sel("unix:uid:1003"),
                match_mode: SelectorMatch::Superset,
            }),
            ..Default::default()
        },
        EntryFilter {
            selectors: Some(SelectorFilter {
                selectors: sel("test:group:g0"),
                match_mode: SelectorMatch::Exact,
            }),
            ..Default::default()
        },
    ];
    for f in &filters {
        let page = store.list_entries(f, &PageRequest::first(50));
        out.push(format!(
            "{:?} {:?} {}",
            ids(&page.items),
            page.next_token,
            store.count_entries(f)
        ));
    }
    for i in [0, 42, 99] {
        out.push(format!("{:?}", ids(&store.authorized_entries(&DataSet::agent_id(i)).to_vec())));
    }
    let agents = store.list_agents(&AgentFilter::default(), &PageRequest::first(10));
    out.push(format!("{:?}", agents.items));
    out.push(format!("{} {}", store.last_applied(), store.revision()));
    out
}

#[test]
fn snapshot_round_trip_into_empty_store_gives_identical_answers() {
    let (_dir, store) = loaded();
    let snap = store.export_snapshot(16 * 1024).unwrap();
    assert!(snap.chunks.len() > 2, "several chunks");
    assert!(snap.chunks.last().unwrap().last);
    // Through the transport encoding.
    let wire: Vec<Vec<u8>> = snap.chunks.iter().map(SnapshotChunk::to_bytes).collect();
    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    let info =
        other.import_snapshot(wire.iter().map(|b| SnapshotChunk::from_bytes(b).unwrap())).unwrap();
    assert_eq!(info, snap.info);
    assert_eq!(query_fingerprint(&other), query_fingerprint(&store));
    // The imported state is durable and live after reopening.
    drop(other);
    let other = open(dir2.path());
    assert_eq!(query_fingerprint(&other), query_fingerprint(&store));
}

#[test]
fn damaged_or_incomplete_snapshot_leaves_state_untouched() {
    let (_dir, store) = loaded();
    let snap = store.export_snapshot(16 * 1024).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    other
        .apply(
            other.last_applied() + 1,
            &Command::CreateEntries(vec![DataSet::workload_entry(1, 1)]),
        )
        .unwrap();
    let before = query_fingerprint(&other);

    let mut bytes = snap.chunks[1].to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    assert!(matches!(SnapshotChunk::from_bytes(&bytes), Err(StoreError::BadSnapshot(_))));

    let mut bad = snap.chunks.clone();
    bad[1].payload[0] ^= 1;
    assert!(
        matches!(other.import_snapshot(bad), Err(StoreError::BadSnapshot(m)) if m.contains("checksum"))
    );
    let mut missing_trailer = snap.chunks.clone();
    missing_trailer.pop();
    assert!(
        matches!(other.import_snapshot(missing_trailer), Err(StoreError::BadSnapshot(m)) if m.contains("trailer"))
    );
    let mut reordered = snap.chunks.clone();
    reordered.swap(0, 1);
    assert!(
        matches!(other.import_snapshot(reordered), Err(StoreError::BadSnapshot(m)) if m.contains("expected"))
    );
    assert_eq!(query_fingerprint(&other), before);
}

#[test]
fn cache_is_invalidated_only_for_affected_agents() {
    let (_dir, store) = loaded();
    let a7 = DataSet::agent_id(7);
    let a8 = DataSet::agent_id(8);
    let a150 = DataSet::agent_id(150); // not in the set
    let first7 = store.authorized_entries(&a7);
    let first8 = store.authorized_entries(&a8);
    assert!(
        AuthorizedEntries::ptr_eq(&first7, &store.authorized_entries(&a7)),
        "served from cache"
    );

    // A new entry under agent 7 invalidates agent 7 only.
    let mut e = DataSet::workload_entry(7, 0);
    e.id = EntryId::new("extra-7").unwrap();
    e.spiffe_id = DataSet::trust_domain().spiffe_id("/extra/7").unwrap();
    store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![e])).unwrap();
    let second7 = store.authorized_entries(&a7);
    assert_eq!(second7.len(), 16);
    assert!(!AuthorizedEntries::ptr_eq(&first7, &second7));
    assert!(
        AuthorizedEntries::ptr_eq(&first8, &store.authorized_entries(&a8)),
        "agent 8 untouched"
    );

    // A child of the alias both belong to invalidates both.
    let mut e = DataSet::alias_child_entry(0, 0);
    e.id = EntryId::new("extra-alias").unwrap();
    e.spiffe_id = DataSet::trust_domain().spiffe_id("/extra/alias").unwrap();
    store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![e])).unwrap();
    assert_eq!(store.authorized_entries(&a7).len(), 17);
    assert_eq!(store.authorized_entries(&a8).len(), 16);

    // Nested: an entry under a workload entry's SPIFFE ID reaches that agent.
    let mut nested = DataSet::workload_entry(8, 0);
    nested.id = EntryId::new("nested-8").unwrap();
    nested.parent_id = DataSet::workload_entry(8, 3).spiffe_id;
    nested.spiffe_id = DataSet::trust_domain().spiffe_id("/nested/8").unwrap();
    let before7 = store.authorized_entries(&a7);
    store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![nested])).unwrap();
    assert_eq!(store.authorized_entries(&a8).len(), 17);
    assert!(AuthorizedEntries::ptr_eq(&before7, &store.authorized_entries(&a7)));

    // A new agent attesting with group 0's selector joins the alias.
    let mut att = DataSet::agent(50);
    att.id = a150.clone();
    assert_eq!(store.authorized_entries(&a150).len(), 0);
    store.apply(store.last_applied() + 1, &Command::AttestAgent(att)).unwrap();
    assert_eq!(store.authorized_entries(&a150).len(), 6);
    // Changing the alias's selectors moves membership for all members at once.
    let mut alias = DataSet::alias_entry(0);
    alias.selectors = SelectorSet::new(vec!["test:host:50".parse().unwrap()]);
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::UpdateEntries(vec![EntryUpdate {
                id: alias.id.clone(),
                patch: EntryPatch::all_of(&alias),
            }]),
        )
        .unwrap();
    let Outcome::Entries(items) = r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!(items[0].as_ref().unwrap().revision_number, 1);
    assert_eq!(store.authorized_entries(&a150).len(), 6);
    assert_eq!(store.authorized_entries(&DataSet::agent_id(50)).len(), 16);
    assert_eq!(store.authorized_entries(&a7).len(), 11);
    assert_eq!(store.authorized_entries(&a8).len(), 11);
    for i in [7, 8, 50, 99] {
        let a = DataSet::agent_id(i);
        assert_eq!(
            ids(&store.authorized_entries(&a).to_vec()),
            ids(&store.authorized_entries_uncached(&a).to_vec())
        );
    }
}

#[test]
fn batch_items_fail_independently_with_typed_reasons() {
    let (_dir, store) = loaded();
    let existing = DataSet::workload_entry(1, 1);
    let mut dup = existing.clone();
    dup.id = EntryId::new("dup").unwrap();
    let mut bad = existing.clone();
    bad.id = EntryId::new("bad").unwrap();
    bad.selectors = SelectorSet::default();
    let mut ok = existing.clone();
    ok.id = EntryId::new("fresh").unwrap();
    ok.spiffe_id = DataSet::trust_domain().spiffe_id("/fresh").unwrap();
    let mut fed = ok.clone();
    fed.id = EntryId::new("fed").unwrap();
    fed.spiffe_id = DataSet::trust_domain().spiffe_id("/fed").unwrap();
    fed.federates_with = vec![TrustDomain::new("other.org").unwrap()];
    let mut same_id = existing.clone();
    same_id.spiffe_id = DataSet::trust_domain().spiffe_id("/same-id").unwrap();
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::CreateEntries(vec![dup, existing.clone(), bad, ok, fed, same_id]),
        )
        .unwrap();
    let Outcome::Entries(items) = r.outcome else { panic!() };
    assert_eq!(items[0], Err(ItemError::EntryExists(Arc::new(existing.clone()))));
    // As in SPIRE, the similar-entry rule comes before the id: the same entry again is
    // "similar", and only a different entry under a used id is "id in use".
    assert_eq!(items[1], Err(ItemError::EntryExists(Arc::new(existing.clone()))));
    assert_eq!(items[5], Err(ItemError::EntryIdTaken(existing.id.clone())));
    assert_eq!(items[2], Err(ItemError::InvalidEntry(ward_core::entry::EntryError::NoSelectors)));
    assert_eq!(items[3].as_ref().unwrap().id.as_str(), "fresh");
    assert_eq!(
        items[4],
        Err(ItemError::FederatedBundleMissing(TrustDomain::new("other.org").unwrap()))
    );
    assert_eq!(store.entry_count(), 1007);
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::DeleteEntries(vec![
                EntryId::new("fresh").unwrap(),
                EntryId::new("nope").unwrap(),
            ]),
        )
        .unwrap();
    assert_eq!(
        r.outcome,
        Outcome::DeletedEntries(vec![
            Ok(EntryId::new("fresh").unwrap()),
            Err(ItemError::EntryNotFound(EntryId::new("nope").unwrap())),
        ])
    );
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn join_tokens_are_kept_only_as_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let secret = "7f3c-join-token-value-that-must-not-be-stored";
    let token = JoinToken { token: secret.into(), expires_at: 2_000_000_000 };
    store
        .apply(
            store.last_applied() + 1,
            &Command::CreateJoinToken { token: token.to_stored(), entry: None },
        )
        .unwrap();
    assert_eq!(store.join_token(secret), Some(token.to_stored()));
    assert_eq!(store.join_token_by_hash(&JoinTokenHash::of(secret)), Some(token.to_stored()));
    store.flush().unwrap();
    let found = |hay: &[u8]| hay.windows(secret.len()).any(|w| w == secret.as_bytes());
    assert!(!found(&all_bytes(dir.path())), "the token value is on disk");
    let mut snapshot = Vec::new();
    for chunk in store.export_snapshot_stream(64 * 1024).unwrap() {
        snapshot.extend(chunk.unwrap().to_bytes());
    }
    assert!(!found(&snapshot), "the token value is in a snapshot");
    // The command that carries it prints no secret either.
    let consume = Command::ConsumeJoinToken { hash: JoinTokenHash::of(secret), now: 1 };
    let create = Command::CreateJoinToken { token: token.to_stored(), entry: None };
    for text in [format!("{consume:?}"), format!("{create:?}")] {
        assert!(!text.contains(&JoinTokenHash::of(secret).to_hex()[..12]), "{text}");
    }
}

#[test]
fn join_token_is_consumed_even_when_expired() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let tok = |t: &str| JoinToken { token: t.into(), expires_at: 100 }.to_stored();
    let mut entry = DataSet::workload_entry(0, 0);
    entry.parent_id = DataSet::trust_domain().spiffe_id("/spire/agent/join_token/t1").unwrap();
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::CreateJoinToken { token: tok("t1"), entry: Some(entry.clone()) },
        )
        .unwrap();
    assert!(matches!(r.outcome, Outcome::JoinTokenCreated(Ok(Some(ref e))) if e.id == entry.id));
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::CreateJoinToken { token: tok("t1"), entry: None },
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::JoinTokenCreated(Err(ItemError::TokenExists)));
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::ConsumeJoinToken { hash: JoinTokenHash::of("t1"), now: 150 },
        )
        .unwrap();
    assert_eq!(
        r.outcome,
        Outcome::JoinTokenConsumed(Ok(ConsumedToken { expires_at: 100, expired: true }))
    );
    assert_eq!(store.join_token("t1"), None);
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::ConsumeJoinToken { hash: JoinTokenHash::of("t1"), now: 50 },
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::JoinTokenConsumed(Err(ItemError::TokenNotFound)));
    store
        .apply(
            store.last_applied() + 1,
            &Command::CreateJoinToken { token: tok("t2"), entry: None },
        )
        .unwrap();
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::ConsumeJoinToken { hash: JoinTokenHash::of("t2"), now: 50 },
        )
        .unwrap();
    assert_eq!(
        r.outcome,
        Outcome::JoinTokenConsumed(Ok(ConsumedToken { expires_at: 100, expired: false }))
    );
}

#[test]
fn agent_serials_renew_activate_and_ban() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id: AgentId = DataSet::agent_id(1);
    store.apply(store.last_applied() + 1, &Command::AttestAgent(DataSet::agent(1))).unwrap();
    store
        .apply(
            store.last_applied() + 1,
            &Command::RenewAgent { id: id.clone(), new_serial: "77".into(), new_expires_at: 9000 },
        )
        .unwrap();
    let a = store.agent(&id).unwrap();
    assert_eq!((a.serial.as_str(), a.new_serial.as_str()), ("1001", "77"));
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::ActivateAgentSerial { id: id.clone(), serial: "78".into() },
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::Agent(Err(ItemError::SerialMismatch)));
    store
        .apply(
            store.last_applied() + 1,
            &Command::ActivateAgentSerial { id: id.clone(), serial: "77".into() },
        )
        .unwrap();
    let a = store.agent(&id).unwrap();
    assert_eq!((a.serial.as_str(), a.new_serial.as_str(), a.expires_at), ("77", "", 9000));
    store.apply(store.last_applied() + 1, &Command::BanAgent(id.clone())).unwrap();
    assert!(store.agent(&id).unwrap().is_banned());
    let banned = AgentFilter { banned: Some(true), ..Default::default() };
    assert_eq!(store.count_agents(&banned), 1);
    let r =
        store.apply(store.last_applied() + 1, &Command::AttestAgent(DataSet::agent(1))).unwrap();
    assert_eq!(r.outcome, Outcome::Agent(Err(ItemError::AgentBanned(id.clone()))));
    store.apply(store.last_applied() + 1, &Command::DeleteAgent(id.clone())).unwrap();
    let r =
        store.apply(store.last_applied() + 1, &Command::AttestAgent(DataSet::agent(1))).unwrap();
    assert!(matches!(r.outcome, Outcome::Agent(Ok(ref a)) if a.serial == "1001"));
}

#[test]
fn a_first_use_attestation_is_refused_while_the_agent_has_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let att = DataSet::agent(3);
    let id = att.id.clone();
    let once = |store: &Store| {
        store
            .apply(store.last_applied() + 1, &Command::AttestAgentFirstUse(att.clone()))
            .unwrap()
            .outcome
    };
    assert!(matches!(once(&store), Outcome::Agent(Ok(ref a)) if a.id == id));
    // The same evidence again: refused, and the record is the first one.
    let before = store.agent(&id).unwrap();
    assert_eq!(once(&store), Outcome::Agent(Err(ItemError::AgentAttestedBefore(id.clone()))));
    assert_eq!(store.agent(&id).unwrap(), before);
    // Banned: still "attested before", as SPIRE's plugin answers before the ban check.
    store.apply(store.last_applied() + 1, &Command::BanAgent(id.clone())).unwrap();
    assert_eq!(once(&store), Outcome::Agent(Err(ItemError::AgentAttestedBefore(id.clone()))));
    // Evicted: the evidence attests again.
    store.apply(store.last_applied() + 1, &Command::DeleteAgent(id.clone())).unwrap();
    assert!(matches!(once(&store), Outcome::Agent(Ok(_))));
    // An ordinary attestation of the same ID is not limited.
    let r = store.apply(store.last_applied() + 1, &Command::AttestAgent(att.clone())).unwrap();
    assert!(matches!(r.outcome, Outcome::Agent(Ok(_))));
}

#[test]
fn bundles_append_taint_revoke_and_delete_modes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let td = TrustDomain::new("fed.org").unwrap();
    let x = |b: u8| X509Authority { der: vec![b; 4], tainted: false };
    let jwt = JwtAuthority {
        public_key_der: vec![1],
        key_id: "k1".into(),
        expires_at: 10,
        tainted: false,
    };
    let append = Command::AppendBundle {
        trust_domain: td.clone(),
        x509_authorities: vec![x(1), x(2)],
        jwt_authorities: vec![jwt.clone()],
    };
    // As SPIRE's datastore: the first append creates the bundle as given (sequence 0), the
    // second finds nothing new and changes nothing.
    store.apply(store.last_applied() + 1, &append).unwrap();
    let rev = store.revision();
    store.apply(store.last_applied() + 1, &append).unwrap();
    assert_eq!(store.revision(), rev);
    let b = store.bundle(&td).unwrap();
    assert_eq!((b.x509_authorities.len(), b.sequence_number), (2, 0));
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::RevokeX509Authority { trust_domain: td.clone(), der: vec![1; 4] },
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::Bundles(vec![Err(ItemError::AuthorityNotTainted)]));
    store
        .apply(
            store.last_applied() + 1,
            &Command::TaintX509Authority { trust_domain: td.clone(), der: vec![1; 4] },
        )
        .unwrap();
    store
        .apply(
            store.last_applied() + 1,
            &Command::RevokeX509Authority { trust_domain: td.clone(), der: vec![1; 4] },
        )
        .unwrap();
    store
        .apply(
            store.last_applied() + 1,
            &Command::TaintJwtAuthority { trust_domain: td.clone(), key_id: "k1".into() },
        )
        .unwrap();
    let b = store.bundle(&td).unwrap();
    assert_eq!(b.x509_authorities, vec![x(2)]);
    assert!(b.jwt_authorities[0].tainted);
    assert_eq!(b.sequence_number, 3);

    // Appending an authority the bundle holds tainted adds no untainted copy.
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::AppendBundle {
                trust_domain: td.clone(),
                x509_authorities: vec![],
                jwt_authorities: vec![jwt.clone()],
            },
        )
        .unwrap();
    let Outcome::Bundles(ref v) = r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!(v[0].as_ref().unwrap().jwt_authorities.len(), 1);
    assert_eq!(v[0].as_ref().unwrap().sequence_number, 3);

    let mut e = DataSet::workload_entry(0, 0);
    e.federates_with = vec![td.clone()];
    store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![e.clone()])).unwrap();
    let del = |mode| Command::DeleteBundles { trust_domains: vec![td.clone()], mode };
    let r = store.apply(store.last_applied() + 1, &del(BundleDeleteMode::Restrict)).unwrap();
    assert_eq!(r.outcome, Outcome::Bundles(vec![Err(ItemError::BundleInUse(td.clone(), 1))]));
    store.apply(store.last_applied() + 1, &del(BundleDeleteMode::Dissociate)).unwrap();
    let after = store.entry(&e.id).unwrap();
    assert!(after.federates_with.is_empty());
    // As SPIRE: dissociating keeps the entry's revision.
    assert_eq!(after.revision_number, 0);
    assert_eq!(store.bundle(&td), None);
    store
        .apply(store.last_applied() + 1, &Command::SetBundles(vec![Bundle::new(td.clone())]))
        .unwrap();
}

#[test]
fn revisions_change_feed_and_stale_indices() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = store.apply(5, &Command::AttestAgent(DataSet::agent(0))).unwrap();
    assert_eq!((r.index, r.revision), (5, 1));
    assert_eq!(
        store.apply(5, &Command::BanAgent(DataSet::agent_id(0))),
        Err(StoreError::StaleIndex { index: 5, applied: 5 })
    );
    // A refused item changes nothing: the revision stays.
    let r = store.apply(6, &Command::DeleteEntries(vec![EntryId::new("x").unwrap()])).unwrap();
    assert_eq!(r.revision, 1);
    let e = DataSet::workload_entry(0, 0);
    store.apply(7, &Command::CreateEntries(vec![e.clone()])).unwrap();
    store
        .apply(
            8,
            &Command::UpdateEntries(vec![EntryUpdate {
                id: e.id.clone(),
                patch: EntryPatch::all_of(&e),
            }]),
        )
        .unwrap();
    assert_eq!(store.entry(&e.id).unwrap().revision_number, 1);
    let feed = store.changes_since(1, 10).unwrap();
    assert_eq!(feed.len(), 2);
    assert_eq!((feed[0].revision, feed[0].entries.clone()), (2, vec![e.id.clone()]));
    assert_eq!(feed[1].revision, 3);
    assert_eq!(store.changes_since(0, 1).unwrap()[0].agents, vec![DataSet::agent_id(0)]);
    assert_eq!(store.last_applied(), 8);
}

#[test]
fn page_tokens_stay_valid_across_writes() {
    let (_dir, store) = loaded();
    let filter = EntryFilter { parent_id: Some(DataSet::agent_id(5).0), ..Default::default() };
    let before = store.list_entries(&filter, &PageRequest::all()).items;
    let first = store.list_entries(&filter, &PageRequest::first(4));
    assert_eq!(ids(&first.items), ids(&before[..4]));
    // The token is a creation number, as SPIRE's is a row id.
    let token = first.next_token.clone().unwrap();
    assert!(token.parse::<u32>().is_ok(), "{token}");
    // Delete the entry the token names and add one whose id sorts first: it was created
    // last, so it lists last.
    store
        .apply(store.last_applied() + 1, &Command::DeleteEntries(vec![first.items[3].id.clone()]))
        .unwrap();
    let mut early = DataSet::workload_entry(5, 0);
    early.id = EntryId::new("00000000-early").unwrap();
    early.spiffe_id = DataSet::trust_domain().spiffe_id("/early").unwrap();
    store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![early.clone()])).unwrap();
    let rest = store.list_entries(&filter, &PageRequest { token: Some(token.clone()), size: 100 });
    // As SPIRE's, a page with entries carries the token of its last one; the walk ends on
    // an empty page.
    let last = rest.next_token.clone().unwrap();
    let end = store.list_entries(&filter, &PageRequest { token: Some(last), size: 100 });
    assert_eq!((end.items.len(), end.next_token), (0, None));
    let mut want = ids(&before[4..]);
    want.push(early.id.clone());
    assert_eq!(ids(&rest.items), want);
    // The same holds for the unfiltered walk: nothing of the first page comes again.
    let all = store.list_entries(
        &EntryFilter::default(),
        &PageRequest { token: Some(token.clone()), size: 3 },
    );
    assert_eq!(all.items.len(), 3);
    assert!(all.items.iter().all(|e| !before[..4].iter().any(|b| b.id == e.id)));
}

#[test]
fn prune_bundle_authorities_removes_the_listed_ones_and_never_empties_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let td = TrustDomain::new("example.org").unwrap();
    let x = |b: u8| X509Authority { der: vec![b; 4], tainted: false };
    let jwt = |kid: &str| JwtAuthority {
        public_key_der: vec![1],
        key_id: kid.into(),
        expires_at: 10,
        tainted: false,
    };
    let prune = |ders: Vec<Vec<u8>>, kids: Vec<&str>| Command::PruneBundleAuthorities {
        trust_domain: td.clone(),
        x509_ders: ders,
        jwt_key_ids: kids.into_iter().map(String::from).collect(),
    };

    let r = store.apply(store.last_applied() + 1, &prune(vec![vec![1; 4]], vec![])).unwrap();
    assert_eq!(r.outcome, Outcome::Bundles(vec![Err(ItemError::BundleNotFound(td.clone()))]));

    store
        .apply(
            store.last_applied() + 1,
            &Command::AppendBundle {
                trust_domain: td.clone(),
                x509_authorities: vec![x(1), x(2), x(3)],
                jwt_authorities: vec![jwt("a"), jwt("b")],
            },
        )
        .unwrap();
    let seq = store.bundle(&td).unwrap().sequence_number;

    // Nothing listed is present: no change, no sequence bump, no revision bump.
    let rev = store.revision();
    let r = store.apply(store.last_applied() + 1, &prune(vec![vec![9; 4]], vec!["zz"])).unwrap();
    assert_eq!(r.revision, rev);
    let Outcome::Bundles(ref v) = r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!(v[0].as_ref().unwrap().sequence_number, seq);
    assert_eq!(store.bundle(&td).unwrap().sequence_number, seq);

    // Exactly the listed ones leave; one bump.
    store.apply(store.last_applied() + 1, &prune(vec![vec![1; 4], vec![9; 4]], vec!["a"])).unwrap();
    let b = store.bundle(&td).unwrap();
    assert_eq!(b.x509_authorities, vec![x(2), x(3)]);
    assert_eq!(b.jwt_authorities, vec![jwt("b")]);
    assert_eq!(b.sequence_number, seq + 1);

    // Pruning that would leave no X.509 authority, or no JWT authority, halts: nothing
    // leaves, not even the other listed kind (SPIRE's "would prune all ...").
    let rev = store.revision();
    for (ders, kids) in [(vec![vec![2; 4], vec![3; 4]], vec![]), (vec![vec![2; 4]], vec!["b"])] {
        let r = store.apply(store.last_applied() + 1, &prune(ders, kids)).unwrap();
        assert_eq!(r.revision, rev, "halted prune changes nothing");
        let b = store.bundle(&td).unwrap();
        assert_eq!(b.x509_authorities, vec![x(2), x(3)]);
        assert_eq!(b.jwt_authorities, vec![jwt("b")]);
        assert_eq!(b.sequence_number, seq + 1);
    }

    // Every copy of a listed authority leaves.
    store
        .apply(
            store.last_applied() + 1,
            &Command::AppendBundle {
                trust_domain: td.clone(),
                x509_authorities: vec![x(4)],
                jwt_authorities: vec![],
            },
        )
        .unwrap();
    let mut b = Bundle::clone(&store.bundle(&td).unwrap());
    b.x509_authorities.push(x(2));
    store.apply(store.last_applied() + 1, &Command::SetBundles(vec![b])).unwrap();
    store.apply(store.last_applied() + 1, &prune(vec![vec![2; 4], vec![3; 4]], vec![])).unwrap();
    let b = store.bundle(&td).unwrap();
    assert_eq!(b.x509_authorities, vec![x(4)]);
    // The append and the prune bump once each; setting takes the sequence as given.
    assert_eq!(b.sequence_number, seq + 3);

    // The result survives a reopen.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.bundle(&td).unwrap().x509_authorities, vec![x(4)]);
}

#[test]
fn taint_and_revoke_act_on_every_copy_of_an_authority() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let td = TrustDomain::new("fed.org").unwrap();
    let x = |b: u8| X509Authority { der: vec![b; 4], tainted: false };
    let jwt = |k: u8| JwtAuthority {
        public_key_der: vec![k],
        key_id: "k1".into(),
        expires_at: 10,
        tainted: false,
    };
    // A bundle taken as given may list the same authority twice.
    let mut b = Bundle::new(td.clone());
    b.x509_authorities = vec![x(1), x(2), x(1)];
    b.jwt_authorities = vec![jwt(1), jwt(2)];
    store.apply(store.last_applied() + 1, &Command::SetBundles(vec![b])).unwrap();

    let taint_x = Command::TaintX509Authority { trust_domain: td.clone(), der: vec![1; 4] };
    store.apply(store.last_applied() + 1, &taint_x).unwrap();
    let tainted: Vec<bool> =
        store.bundle(&td).unwrap().x509_authorities.iter().map(|a| a.tainted).collect();
    assert_eq!(tainted, vec![true, false, true]);
    let r = store.apply(store.last_applied() + 1, &taint_x).unwrap();
    assert_eq!(
        r.outcome,
        Outcome::Bundles(vec![Err(ItemError::Invalid("authority is already tainted".into()))])
    );
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::RevokeX509Authority { trust_domain: td.clone(), der: vec![1; 4] },
        )
        .unwrap();
    let Outcome::Bundles(ref v) = r.outcome else { panic!("{:?}", r.outcome) };
    assert_eq!(v[0].as_ref().unwrap().x509_authorities, vec![x(2)], "no copy stays trusted");

    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::RevokeJwtAuthority { trust_domain: td.clone(), key_id: "k1".into() },
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::Bundles(vec![Err(ItemError::AuthorityNotTainted)]));
    store
        .apply(
            store.last_applied() + 1,
            &Command::TaintJwtAuthority { trust_domain: td.clone(), key_id: "k1".into() },
        )
        .unwrap();
    assert!(store.bundle(&td).unwrap().jwt_authorities.iter().all(|a| a.tainted));
    store
        .apply(
            store.last_applied() + 1,
            &Command::RevokeJwtAuthority { trust_domain: td.clone(), key_id: "k1".into() },
        )
        .unwrap();
    let b = store.bundle(&td).unwrap();
    assert!(b.jwt_authorities.is_empty());
    // SetBundles left 0; each successful taint and revoke bumps once.
    assert_eq!(b.sequence_number, 4);

    drop(store);
    let store = open(dir.path());
    assert_eq!(store.bundle(&td).unwrap().x509_authorities, vec![x(2)]);
}

#[test]
fn bundles_are_stored_with_the_sequence_number_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let td = TrustDomain::new("fed.org").unwrap();
    let mut b = Bundle::new(td.clone());
    b.sequence_number = 5;
    store.apply(store.last_applied() + 1, &Command::SetBundles(vec![b.clone()])).unwrap();
    // Setting the same content again keeps the number, as SPIRE's datastore does.
    store.apply(store.last_applied() + 1, &Command::SetBundles(vec![b.clone()])).unwrap();
    assert_eq!(store.bundle(&td).unwrap().sequence_number, 5);

    // The relationship carries a bundle with sequence 0: stored as given.
    let rel = FederationRelationship {
        trust_domain: td.clone(),
        bundle_endpoint_url: "https://fed.org/".into(),
        profile: BundleEndpointProfile::HttpsWeb,
        trust_domain_bundle: Some(Bundle::new(td.clone())),
    };
    let r = store
        .apply(store.last_applied() + 1, &Command::CreateFederationRelationships(vec![rel.clone()]))
        .unwrap();
    // Created: reported with the bundle it was given.
    assert_eq!(r.outcome, Outcome::Federations(vec![Ok(Arc::new(rel.clone()))]));
    assert_eq!(store.bundle(&td).unwrap().sequence_number, 0);

    let mut newer = Bundle::new(td.clone());
    newer.sequence_number = 9;
    let update = FederationUpdate {
        relationship: FederationRelationship {
            trust_domain_bundle: Some(newer.clone()),
            ..rel.clone()
        },
        mask: FederationMask::ALL,
    };
    let r = store
        .apply(store.last_applied() + 1, &Command::UpdateFederationRelationships(vec![update]))
        .unwrap();
    let joined = FederationRelationship { trust_domain_bundle: Some(newer.clone()), ..rel.clone() };
    assert_eq!(r.outcome, Outcome::Federations(vec![Ok(Arc::new(joined.clone()))]));
    // Reads join the trust domain's bundle, as SPIRE's datastore does.
    assert_eq!(store.federation_relationship(&td).as_deref(), Some(&joined));

    // Deleting the relationship keeps the bundle.
    store
        .apply(store.last_applied() + 1, &Command::DeleteFederationRelationships(vec![td.clone()]))
        .unwrap();
    assert_eq!(store.federation_relationship(&td), None);
    assert_eq!(store.bundle(&td).unwrap().sequence_number, 9);
}

#[test]
fn create_and_update_bundles_check_existence_in_apply() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let td = TrustDomain::new("fed.org").unwrap();
    let mut b = Bundle::new(td.clone());
    b.x509_authorities = vec![X509Authority::new(vec![1; 4])];
    b.refresh_hint = 60;
    b.sequence_number = 3;

    // Two creates of one trust domain in one command: the second is refused.
    let r = store
        .apply(store.last_applied() + 1, &Command::CreateBundles(vec![b.clone(), b.clone()]))
        .unwrap();
    assert_eq!(
        r.outcome,
        Outcome::Bundles(vec![Ok(Arc::new(b.clone())), Err(ItemError::BundleExists(td.clone()))])
    );

    // An update takes only the masked fields from the input, against the stored bundle.
    let input = Bundle { refresh_hint: 5, sequence_number: 7, ..Bundle::new(td.clone()) };
    let mask = BundleMask { refresh_hint: true, ..no_fields() };
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::UpdateBundles(vec![
                BundleUpdate { bundle: input.clone(), mask },
                BundleUpdate {
                    bundle: Bundle::new(TrustDomain::new("none.org").unwrap()),
                    mask: BundleMask::ALL,
                },
            ]),
        )
        .unwrap();
    let want = Bundle { refresh_hint: 5, ..b.clone() };
    assert_eq!(
        r.outcome,
        Outcome::Bundles(vec![
            Ok(Arc::new(want.clone())),
            Err(ItemError::BundleNotFound(TrustDomain::new("none.org").unwrap()))
        ])
    );
    let r = store
        .apply(
            store.last_applied() + 1,
            &Command::UpdateBundles(vec![BundleUpdate {
                bundle: input.clone(),
                mask: BundleMask::ALL,
            }]),
        )
        .unwrap();
    assert_eq!(r.outcome, Outcome::Bundles(vec![Ok(Arc::new(input.clone()))]));
    assert_eq!(store.bundle(&td).as_deref(), Some(&input));
}

fn no_fields() -> BundleMask {
    BundleMask {
        x509_authorities: false,
        jwt_authorities: false,
        refresh_hint: false,
        sequence_number: false,
    }
}

#[test]
fn bundles_and_relationships_list_in_creation_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let names = ["zeta.org", "alpha.org", "mid.org"];
    for n in names {
        let td = TrustDomain::new(n).unwrap();
        store
            .apply(store.last_applied() + 1, &Command::SetBundles(vec![Bundle::new(td.clone())]))
            .unwrap();
        let rel = FederationRelationship {
            trust_domain: td,
            bundle_endpoint_url: format!("https://{n}/"),
            profile: BundleEndpointProfile::HttpsWeb,
            trust_domain_bundle: None,
        };
        store
            .apply(store.last_applied() + 1, &Command::CreateFederationRelationships(vec![rel]))
            .unwrap();
    }
    // Replacing keeps the place; deleting and creating again goes last.
    let zeta = TrustDomain::new("zeta.org").unwrap();
    let alpha = TrustDomain::new("alpha.org").unwrap();
    store
        .apply(store.last_applied() + 1, &Command::SetBundles(vec![Bundle::new(zeta.clone())]))
        .unwrap();
    store
        .apply(
            store.last_applied() + 1,
            &Command::DeleteBundles {
                trust_domains: vec![alpha.clone()],
                mode: BundleDeleteMode::Restrict,
            },
        )
        .unwrap();
    store
        .apply(store.last_applied() + 1, &Command::SetBundles(vec![Bundle::new(alpha.clone())]))
        .unwrap();

    let listed = |store: &Store| -> (Vec<String>, Vec<String>) {
        let b = store.list_bundles(&PageRequest::all());
        let f = store.list_federation_relationships(&PageRequest::all());
        (
            b.items.iter().map(|b| b.trust_domain.as_str().to_owned()).collect(),
            f.items.iter().map(|f| f.trust_domain.as_str().to_owned()).collect(),
        )
    };
    let want = (
        vec!["zeta.org".to_owned(), "mid.org".into(), "alpha.org".into()],
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    );
    assert_eq!(listed(&store), want);
    // Pages follow the same order; tokens are creation numbers.
    let p = store.list_bundles(&PageRequest::first(2));
    assert_eq!(p.next_token.as_deref(), Some("3"));
    let p = store.list_bundles(&PageRequest { token: p.next_token, size: 2 });
    assert_eq!(p.items[0].trust_domain, alpha);

    // The order survives a reopen and a snapshot round trip.
    let snap = store.export_snapshot(64).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(listed(&store), want);
    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    other.import_snapshot(snap.chunks).unwrap();
    assert_eq!(listed(&other), want);
}

/// A change reaching more agents than `cache_invalidate_limit` drops the whole cache; at or
/// under the limit only the reached agents are invalidated. Either way every agent then
/// sees the change.
#[test]
fn wide_alias_changes_drop_the_whole_cache_above_the_limit() {
    for (limit, drops_all) in [(50, true), (200, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(DataSet::trust_domain());
        config.cache_invalidate_limit = limit;
        let store = Store::open(dir.path(), config).unwrap();
        DataSet::SMALL.load(&store).unwrap();
        // An agent outside alias 0's 100 members, with one entry of its own.
        let outsider = DataSet::agent_id(500);
        store.apply(store.last_applied() + 1, &Command::AttestAgent(DataSet::agent(500))).unwrap();
        let mut own = DataSet::workload_entry(500, 0);
        own.id = EntryId::new("outsider-own").unwrap();
        store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![own])).unwrap();
        let before = store.authorized_entries(&outsider);
        assert_eq!(before.len(), 1);
        let members: Vec<AuthorizedEntries> =
            (0..100).map(|i| store.authorized_entries(&DataSet::agent_id(i))).collect();

        let mut child = DataSet::alias_child_entry(0, 0);
        child.id = EntryId::new("wide-child").unwrap();
        child.spiffe_id = DataSet::trust_domain().spiffe_id("/wide/child").unwrap();
        store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![child])).unwrap();

        for (i, old) in members.iter().enumerate() {
            let now = store.authorized_entries(&DataSet::agent_id(i));
            assert_eq!(now.len(), 16, "limit {limit}, agent {i}");
            assert!(!AuthorizedEntries::ptr_eq(old, &now));
        }
        let after = store.authorized_entries(&outsider);
        assert_eq!(after.len(), 1);
        assert_eq!(!AuthorizedEntries::ptr_eq(&before, &after), drops_all, "limit {limit}");
    }
}

/// Applies `cmd` at the next log index.
fn propose(store: &Store, cmd: &Command) -> Result<ward_store::Applied, StoreError> {
    store.apply(store.last_applied() + 1, cmd)
}

/// Entries named so that id order and creation order disagree, under one parent, each with
/// selectors `unix:uid:<n % 3>`.
fn created_out_of_id_order(store: &Store) -> Vec<EntryId> {
    let parent = DataSet::agent_id(0).0;
    let names = ["m", "c", "x", "a", "q", "b", "z"];
    let mut created = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let mut e = DataSet::workload_entry(0, 0);
        e.id = EntryId::new(name).unwrap();
        e.spiffe_id = DataSet::trust_domain().spiffe_id(&format!("/ordered/{name}")).unwrap();
        e.parent_id = parent.clone();
        e.selectors = SelectorSet::new(vec![
            ward_core::Selector::parse(&format!("unix:uid:{}", n % 3)).unwrap(),
        ]);
        propose(store, &Command::CreateEntries(vec![e])).unwrap();
        created.push(EntryId::new(name).unwrap());
    }
    created
}

/// Every page of `filter` with pages of `size`, and the tokens handed out.
fn walk(store: &Store, filter: &EntryFilter, size: usize) -> (Vec<EntryId>, Vec<String>) {
    let (mut got, mut tokens, mut token) = (Vec::new(), Vec::new(), None);
    loop {
        let page = store.list_entries(filter, &PageRequest { token: token.clone(), size });
        got.extend(ids(&page.items));
        match page.next_token {
            Some(t) => {
                tokens.push(t.clone());
                token = Some(t);
            }
            None => return (got, tokens),
        }
    }
}

#[test]
fn entries_list_in_creation_order_with_number_tokens_under_every_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let created = created_out_of_id_order(&store);
    let sel = |v: &[&str], match_mode| EntryFilter {
        selectors: Some(SelectorFilter {
            selectors: SelectorSet::new(
                v.iter().map(|s| ward_core::Selector::parse(s).unwrap()).collect(),
            ),
            match_mode,
        }),
        ..Default::default()
    };
    let every = |keep: &dyn Fn(usize) -> bool| -> Vec<EntryId> {
        created.iter().enumerate().filter(|(n, _)| keep(*n)).map(|(_, id)| id.clone()).collect()
    };
    let cases: Vec<(&str, EntryFilter, Vec<EntryId>)> = vec![
        ("no filter", EntryFilter::default(), every(&|_| true)),
        (
            "parent",
            EntryFilter { parent_id: Some(DataSet::agent_id(0).0), ..Default::default() },
            every(&|_| true),
        ),
        // The union of two selectors' sets, merged in creation order.
        (
            "any of two",
            sel(&["unix:uid:0", "unix:uid:2"], SelectorMatch::Any),
            every(&|n| n % 3 != 1),
        ),
        ("superset", sel(&["unix:uid:1"], SelectorMatch::Superset), every(&|n| n % 3 == 1)),
    ];
    for (name, filter, want) in cases {
        for size in [0, 1, 2, 3] {
            let (got, tokens) = walk(&store, &filter, size);
            assert_eq!(got, want, "{name}, pages of {size}");
            // Tokens are the creation numbers (1 for the first entry) of each page's last.
            for t in &tokens {
                let n: usize = t.parse().unwrap();
                assert!(want.contains(&created[n - 1]), "{name}: token {t}");
            }
        }
    }
}

#[test]
fn entry_creation_numbers_survive_reopen_and_snapshots_and_are_never_given_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut created = created_out_of_id_order(&store);
    // An update keeps the entry's place.
    let patch = EntryPatch { hint: Some("moved?".into()), ..Default::default() };
    let update = EntryUpdate { id: created[0].clone(), patch };
    propose(&store, &Command::UpdateEntries(vec![update])).unwrap();
    // Deleting the newest entry (number 7) does not free its number.
    let newest = created.pop().unwrap();
    propose(&store, &Command::DeleteEntries(vec![newest])).unwrap();
    let numbered = |store: &Store, what: &str| {
        let (got, tokens) = walk(store, &EntryFilter::default(), 1);
        assert_eq!(got, created, "{what}");
        assert_eq!(tokens, ["1", "2", "3", "4", "5", "6"], "{what}");
    };
    numbered(&store, "before reopen");
    store.flush().unwrap();
    let snap = store.export_snapshot(0).unwrap();
    drop(store);

    // A new entry lists after token 7: it got number 8, not the deleted newest's 7.
    let gets_a_new_number = |store: &Store, what: &str| {
        let mut e = DataSet::workload_entry(1, 0);
        e.id = EntryId::new("0-late").unwrap();
        propose(store, &Command::CreateEntries(vec![e])).unwrap();
        let after_7 = store.list_entries(
            &EntryFilter::default(),
            &PageRequest { token: Some("7".into()), size: 10 },
        );
        assert_eq!(ids(&after_7.items), [EntryId::new("0-late").unwrap()], "{what}");
    };
    let store = open(dir.path());
    numbered(&store, "after reopen");
    gets_a_new_number(&store, "after reopen");

    let other_dir = tempfile::tempdir().unwrap();
    let other = open(other_dir.path());
    other.import_snapshot(snap.chunks).unwrap();
    numbered(&other, "after a snapshot import");
    gets_a_new_number(&other, "after a snapshot import");
}
