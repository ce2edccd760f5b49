//! Entry and bundle sync: the agent's copy of the registration entries it is authorized for,
//! and of its trust domain's and federated trust domains' bundles.
//!
//! Entries come from `Entry/SyncAuthorizedEntries` (SPIRE's revision-delta protocol, see
//! spire-compat §2.4): the agent opens the stream with an output mask; the server either
//! answers with every entry at once (at most one page, 500 entries) or with pages of
//! `(id, revision_number, created_at)`, after which the agent asks, by id, only for the entries
//! it does not hold at that revision. Entries it holds that are no longer listed are dropped.
//! Against a server without that RPC (`Unimplemented`) the agent falls back to
//! `Entry/GetAuthorizedEntries` (the full list every time) and stays on it.
//!
//! Bundles: `Bundle/GetBundle`, then `Bundle/GetFederatedBundle` for each trust domain named in
//! the entries' `federates_with` (sorted); a federated bundle the server does not have
//! (`NotFound`) is skipped with a warning, any other error fails the sync.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use ward_core::{Bundle, SelectorSet, SpiffeId, TrustDomain};
use ward_proto::convert::{
    ConvertError, IdField, bundle_from_proto, entry_mask_all, selectors_from_proto,
    spiffe_id_from_proto, trust_domain_from_proto,
};
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;

use crate::error::SyncError;

/// The entry fields the agent asks for. SPIRE's agent asks for `spiffe_id, selectors,
/// federates_with, admin, downstream, revision_number, store_svid, hint, created_at`; ward's
/// also asks for what goes into an SVID (`dns_names`, `x509_svid_ttl`) and `jwt_svid_ttl`, so
/// an update that changes only selectors or a hint does not re-mint the SVID.
pub fn output_mask() -> types::EntryMask {
    types::EntryMask { parent_id: false, expires_at: false, ..entry_mask_all() }
}

/// A registration entry as the agent receives it (the server never sends it the parent ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizedEntry {
    /// Entry id.
    pub id: String,
    /// The SPIFFE ID of the entry's SVIDs.
    pub spiffe_id: SpiffeId,
    /// Workload selectors (at least one).
    pub selectors: SelectorSet,
    /// Trust domains whose bundles the workload receives.
    pub federates_with: Vec<TrustDomain>,
    /// The `admin` flag.
    pub admin: bool,
    /// The `downstream` flag.
    pub downstream: bool,
    /// DNS names of the X509-SVID.
    pub dns_names: Vec<String>,
    /// X509-SVID lifetime in seconds; 0 means the server default.
    pub x509_svid_ttl: i32,
    /// JWT-SVID lifetime in seconds; 0 means the server default.
    pub jwt_svid_ttl: i32,
    /// The hint surfaced to workloads.
    pub hint: String,
    /// The SVID goes to SVIDStore plugins rather than to workloads.
    pub store_svid: bool,
    /// The server's revision of the entry.
    pub revision_number: i64,
    /// Unix seconds when the server created the entry (0 if the server does not say).
    pub created_at: i64,
}

/// Why an entry the server sent was dropped.
#[derive(Debug, thiserror::Error)]
pub enum EntryRejected {
    /// No id.
    #[error("missing entry id")]
    MissingId,
    /// The SPIFFE ID, a selector or a federated trust domain is malformed, or there is no
    /// selector.
    #[error(transparent)]
    Malformed(#[from] ConvertError),
    /// No selector.
    #[error("entry has no selectors")]
    NoSelectors,
}

impl AuthorizedEntry {
    /// Reads an entry as SPIRE's agent checks it: an id, a valid SPIFFE ID, at least one
    /// well-formed selector, valid federated trust domain names.
    ///
    /// # Errors
    /// [`EntryRejected`] naming the first rule broken.
    pub fn from_proto(e: &types::Entry) -> Result<Self, EntryRejected> {
        if e.id.is_empty() {
            return Err(EntryRejected::MissingId);
        }
        let spiffe_id = spiffe_id_from_proto(e.spiffe_id.as_ref(), IdField::SpiffeId)?;
        let selectors = selectors_from_proto(&e.selectors)?;
        if selectors.is_empty() {
            return Err(EntryRejected::NoSelectors);
        }
        let federates_with = e
            .federates_with
            .iter()
            .map(|td| trust_domain_from_proto(td))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: e.id.clone(),
            spiffe_id,
            selectors,
            federates_with,
            admin: e.admin,
            downstream: e.downstream,
            dns_names: e.dns_names.clone(),
            x509_svid_ttl: e.x509_svid_ttl,
            jwt_svid_ttl: e.jwt_svid_ttl,
            hint: e.hint.clone(),
            store_svid: e.store_svid,
            revision_number: e.revision_number,
            created_at: e.created_at,
        })
    }

    /// Whether an X509-SVID minted for `self` would differ from one minted for `other`: the
    /// SPIFFE ID, the DNS names or the lifetime changed.
    pub fn svid_differs_from(&self, other: &Self) -> bool {
        self.spiffe_id != other.spiffe_id
            || self.dns_names != other.dns_names
            || self.x509_svid_ttl != other.x509_svid_ttl
    }
}

/// Counters of the sync's work, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct SyncCounters {
    /// Entry syncs that succeeded.
    pub syncs: AtomicU64,
    /// Entry syncs that failed.
    pub failures: AtomicU64,
    /// Full entries received from the server, over all syncs (a delta sync that finds
    /// nothing changed adds 0).
    pub entries_fetched: AtomicU64,
    /// Entry ids the agent asked for in the delta phase of SyncAuthorizedEntries.
    pub ids_requested: AtomicU64,
    /// Syncs done with GetAuthorizedEntries (the fallback).
    pub full_fetches: AtomicU64,
}

impl SyncCounters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// What one entry sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EntryChanges {
    /// Entries new to the agent, or received again (their revision changed).
    pub upserted: BTreeSet<String>,
    /// Entries no longer authorized.
    pub removed: BTreeSet<String>,
}

impl EntryChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// The agent's copy of its authorized entries, kept current by [`EntrySync::sync`].
#[derive(Debug)]
pub struct EntrySync {
    entries: BTreeMap<String, AuthorizedEntry>,
    use_sync_rpc: bool,
    counters: Arc<SyncCounters>,
}

impl Default for EntrySync {
    fn default() -> Self {
        Self::new()
    }
}

impl EntrySync {
    /// An empty copy that syncs with SyncAuthorizedEntries.
    pub fn new() -> Self {
        Self { entries: BTreeMap::new(), use_sync_rpc: true, counters: Arc::default() }
    }

    /// The entries held, by id.
    pub fn entries(&self) -> &BTreeMap<String, AuthorizedEntry> {
        &self.entries
    }

    /// The counters (shared; they keep counting).
    pub fn counters(&self) -> Arc<SyncCounters> {
        Arc::clone(&self.counters)
    }

    /// Whether the server lacked SyncAuthorizedEntries and the agent uses
    /// GetAuthorizedEntries.
    pub fn uses_fallback(&self) -> bool {
        !self.use_sync_rpc
    }

    /// Brings the entries up to date with the server over `channel`.
    ///
    /// # Errors
    /// [`SyncError`] when an RPC fails or the server breaks the protocol; the entries held
    /// are then unchanged.
    pub async fn sync(&mut self, channel: &Channel) -> Result<EntryChanges, SyncError> {
        let result = self.sync_once(channel).await;
        match &result {
            Ok(_) => self.counters.syncs.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.failures.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    async fn sync_once(&mut self, channel: &Channel) -> Result<EntryChanges, SyncError> {
        if self.use_sync_rpc {
            match self.sync_deltas(channel).await {
                Err(SyncError::Rpc { status, .. }) if status.code() == Code::Unimplemented => {
                    tracing::warn!(
                        "the server has no SyncAuthorizedEntries; using GetAuthorizedEntries"
                    );
                    self.use_sync_rpc = false;
                }
                other => return other,
            }
        }
        self.fetch_all(channel).await
    }

    /// GetAuthorizedEntries: the whole list replaces the held one.
    async fn fetch_all(&mut self, channel: &Channel) -> Result<EntryChanges, SyncError> {
        let mut client = entrypb::entry_client::EntryClient::new(channel.clone());
        let req = entrypb::GetAuthorizedEntriesRequest { output_mask: Some(output_mask()) };
        let resp = client
            .get_authorized_entries(req)
            .await
            .map_err(|status| SyncError::rpc("GetAuthorizedEntries", status))?
            .into_inner();
        SyncCounters::add(&self.counters.entries_fetched, resp.entries.len());
        self.counters.full_fetches.fetch_add(1, Ordering::Relaxed);
        Ok(self.replace_all(&resp.entries))
    }

    fn replace_all(&mut self, received: &[types::Entry]) -> EntryChanges {
        let mut next = BTreeMap::new();
        for e in received {
            if let Some(entry) = checked(e) {
                next.insert(entry.id.clone(), entry);
            }
        }
        let mut changes = EntryChanges::default();
        for id in self.entries.keys() {
            if !next.contains_key(id) {
                changes.removed.insert(id.clone());
            }
        }
        for (id, entry) in &next {
            if self.entries.get(id) != Some(entry) {
                changes.upserted.insert(id.clone());
            }
        }
        self.entries = next;
        changes
    }

    /// SyncAuthorizedEntries (spire-compat §2.4).
    async fn sync_deltas(&mut self, channel: &Channel) -> Result<EntryChanges, SyncError> {
        const RPC: &str = "SyncAuthorizedEntries";
        let mut client = entrypb::entry_client::EntryClient::new(channel.clone());
        let (tx, rx) = mpsc::channel(4);
        let first = entrypb::SyncAuthorizedEntriesRequest {
            output_mask: Some(output_mask()),
            ids: Vec::new(),
        };
        tx.send(first).await.map_err(|_| SyncError::protocol(RPC, "request stream closed"))?;
        let mut stream = client
            .sync_authorized_entries(ReceiverStream::new(rx))
            .await
            .map_err(|status| SyncError::rpc(RPC, status))?
            .into_inner();

        // Phase one: every entry at once, or pages of revisions.
        let mut full: Vec<types::Entry> = Vec::new();
        let mut revisions: Vec<entrypb::EntryRevision> = Vec::new();
        let mut page_size = 0;
        loop {
            let resp = stream
                .message()
                .await
                .map_err(|status| SyncError::rpc(RPC, status))?
                .ok_or_else(|| SyncError::protocol(RPC, "stream ended before the last page"))?;
            if !resp.entry_revisions.is_empty() && !resp.entries.is_empty() {
                return Err(SyncError::protocol(RPC, "a page holds both entries and revisions"));
            }
            if page_size == 0 {
                page_size = resp.entry_revisions.len();
            }
            full.extend(resp.entries);
            revisions.extend(resp.entry_revisions);
            if !resp.more {
                break;
            }
        }
        if revisions.is_empty() {
            drop(tx);
            SyncCounters::add(&self.counters.entries_fetched, full.len());
            return Ok(self.replace_all(&full));
        }
        if !full.is_empty() {
            return Err(SyncError::protocol(RPC, "entries sent before the revisions ended"));
        }

        // Phase two: ask for what changed.
        let listed: BTreeMap<&str, &entrypb::EntryRevision> =
            revisions.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut wanted: Vec<String> = listed
            .values()
            .filter(|r| match self.entries.get(&r.id) {
                None => true,
                Some(held) => {
                    held.revision_number != r.revision_number
                        || (r.created_at != 0 && held.created_at != r.created_at)
                }
            })
            .map(|r| r.id.clone())
            .collect();
        wanted.sort();
        let mut received: Vec<types::Entry> = Vec::new();
        for chunk in wanted.chunks(page_size.max(1)) {
            SyncCounters::add(&self.counters.ids_requested, chunk.len());
            let req =
                entrypb::SyncAuthorizedEntriesRequest { output_mask: None, ids: chunk.to_vec() };
            tx.send(req).await.map_err(|_| SyncError::protocol(RPC, "request stream closed"))?;
            loop {
                let resp = stream
                    .message()
                    .await
                    .map_err(|status| SyncError::rpc(RPC, status))?
                    .ok_or_else(|| SyncError::protocol(RPC, "stream ended before the entries"))?;
                if !resp.entry_revisions.is_empty() {
                    return Err(SyncError::protocol(RPC, "revisions sent in answer to ids"));
                }
                received.extend(resp.entries);
                if !resp.more {
                    break;
                }
            }
        }
        drop(tx);
        SyncCounters::add(&self.counters.entries_fetched, received.len());

        let mut changes = EntryChanges::default();
        self.entries.retain(|id, _| {
            let keep = listed.contains_key(id.as_str());
            if !keep {
                changes.removed.insert(id.clone());
            }
            keep
        });
        for e in &received {
            if !listed.contains_key(e.id.as_str()) {
                continue;
            }
            match checked(e) {
                Some(entry) => {
                    changes.upserted.insert(entry.id.clone());
                    self.entries.insert(entry.id.clone(), entry);
                }
                None => {
                    if self.entries.remove(&e.id).is_some() {
                        changes.removed.insert(e.id.clone());
                    }
                }
            }
        }
        Ok(changes)
    }
}

/// The entry, or `None` with a warning when it is malformed.
fn checked(e: &types::Entry) -> Option<AuthorizedEntry> {
    match AuthorizedEntry::from_proto(e) {
        Ok(entry) => Some(entry),
        Err(error) => {
            tracing::warn!(entry_id = %e.id, %error, "dropping a malformed entry the server sent");
            None
        }
    }
}

/// The trust domain's bundle and the federated bundles of `federated` the server has.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundles {
    /// The agent's own trust domain's bundle.
    pub own: Bundle,
    /// Federated bundles, by trust domain.
    pub federated: BTreeMap<TrustDomain, Bundle>,
}

/// Fetches the bundles: GetBundle, then GetFederatedBundle for each of `federated` in order.
///
/// # Errors
/// [`SyncError`] when an RPC fails (a federated bundle's `NotFound` only skips it), when the
/// own bundle is for another trust domain than `trust_domain`, or when one of its JWT
/// authorities has no key id (SPIRE's agent refuses such a bundle).
pub async fn fetch_bundles(
    channel: &Channel,
    trust_domain: &TrustDomain,
    federated: &BTreeSet<TrustDomain>,
) -> Result<Bundles, SyncError> {
    let mut client = bundlepb::bundle_client::BundleClient::new(channel.clone());
    let own = client
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .map_err(|status| SyncError::rpc("GetBundle", status))?
        .into_inner();
    let own = checked_bundle("GetBundle", &own)?;
    if &own.trust_domain != trust_domain {
        return Err(SyncError::protocol(
            "GetBundle",
            format!("bundle is for {} instead of {trust_domain}", own.trust_domain),
        ));
    }
    let mut out = BTreeMap::new();
    for td in federated {
        let req =
            bundlepb::GetFederatedBundleRequest { trust_domain: td.to_string(), output_mask: None };
        match client.get_federated_bundle(req).await {
            Ok(resp) => {
                let bundle = checked_bundle("GetFederatedBundle", &resp.into_inner())?;
                out.insert(td.clone(), bundle);
            }
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!(trust_domain = %td, "federated bundle not found");
            }
            Err(status) => return Err(SyncError::rpc("GetFederatedBundle", status)),
        }
    }
    Ok(Bundles { own, federated: out })
}

fn checked_bundle(rpc: &'static str, proto: &types::Bundle) -> Result<Bundle, SyncError> {
    if proto.jwt_authorities.iter().any(|k| k.key_id.is_empty()) {
        return Err(SyncError::protocol(rpc, "a JWT authority has no key id"));
    }
    bundle_from_proto(proto).map_err(|e| SyncError::protocol(rpc, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(id: &str, path: &str, selectors: &[(&str, &str)]) -> types::Entry {
        types::Entry {
            id: id.into(),
            spiffe_id: Some(types::Spiffeid {
                trust_domain: "example.org".into(),
                path: path.into(),
            }),
            selectors: selectors
                .iter()
                .map(|(t, v)| types::Selector { r#type: (*t).into(), value: (*v).into() })
                .collect(),
            revision_number: 1,
            ..Default::default()
        }
    }

    #[test]
    fn malformed_entries_are_refused_with_the_rule_they_break() {
        assert!(matches!(
            AuthorizedEntry::from_proto(&wire("", "/w", &[("unix", "uid:1")])),
            Err(EntryRejected::MissingId)
        ));
        assert!(matches!(
            AuthorizedEntry::from_proto(&wire("a", "/w", &[])),
            Err(EntryRejected::NoSelectors)
        ));
        assert!(matches!(
            AuthorizedEntry::from_proto(&wire("a", "w", &[("unix", "uid:1")])),
            Err(EntryRejected::Malformed(_))
        ));
        assert!(matches!(
            AuthorizedEntry::from_proto(&wire("a", "/w", &[("un:ix", "uid:1")])),
            Err(EntryRejected::Malformed(_))
        ));
        let ok = AuthorizedEntry::from_proto(&wire("a", "/w", &[("unix", "uid:1")])).unwrap();
        assert_eq!(ok.spiffe_id.to_string(), "spiffe://example.org/w");
    }

    #[test]
    fn replacing_the_list_reports_added_changed_and_removed_entries() {
        let mut sync = EntrySync::new();
        let a = wire("a", "/a", &[("unix", "uid:1")]);
        let b = wire("b", "/b", &[("unix", "uid:2")]);
        let changes = sync.replace_all(&[a.clone(), b.clone()]);
        assert_eq!(changes.upserted, ["a", "b"].map(String::from).into());
        let mut a2 = a.clone();
        a2.revision_number = 2;
        let bad = wire("c", "/c", &[]);
        let changes = sync.replace_all(&[a2, bad]);
        assert_eq!(changes.upserted, ["a"].map(String::from).into());
        assert_eq!(changes.removed, ["b"].map(String::from).into());
        assert_eq!(sync.entries().keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn only_spiffe_id_dns_names_and_ttl_change_the_svid() {
        let base = AuthorizedEntry::from_proto(&wire("a", "/a", &[("unix", "uid:1")])).unwrap();
        let mut hinted = base.clone();
        hinted.hint = "h".into();
        hinted.selectors = SelectorSet::default();
        assert!(!hinted.svid_differs_from(&base));
        let mut dns = base.clone();
        dns.dns_names = vec!["a.example.org".into()];
        assert!(dns.svid_differs_from(&base));
        let mut ttl = base.clone();
        ttl.x509_svid_ttl = 60;
        assert!(ttl.svid_differs_from(&base));
    }
}
