//! What the agent holds for workloads, and how the serving side follows it.
//!
//! The part of the agent that talks to the server (node attestation, entry sync, SVID
//! minting and rotation) publishes a [`CacheView`] through a [`Cache`] every time something a
//! workload could see changes: an SVID is minted or rotated, an entry is added or removed, a
//! bundle changes. The serving side (Workload API, Envoy SDS) holds a
//! [`tokio::sync::watch::Receiver`] from [`Cache::subscribe`], and on each change computes
//! what one caller may see with [`CacheView::identities_for`] (the caller's selectors) and
//! [`CacheView::federated_bundles_for`].
//!
//! A view is immutable and shared (`Arc`): publishing one never blocks a reader, and a
//! stream that falls behind skips straight to the newest view, as a watch channel does.
//!
//! JWT-SVIDs are not held ahead of time: the serving side asks a [`JwtSvidSource`] for one
//! when a workload calls, and the source mints or returns a cached token.
//!
//! The agent may hold fewer X509-SVIDs than entries (an LRU bound, as SPIRE's
//! `x509_svid_cache_max_size`): an entry without an SVID is listed in
//! [`CacheView::pending`]. The serving side registers each caller it serves with
//! [`Cache::register_workload`]; while the returned [`WorkloadInterest`] lives, the SVIDs of
//! entries that caller matches are kept, and minted if missing (a caller matching a pending
//! entry waits for a view in which it is no longer pending, [`CacheView::is_pending_for`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use ward_core::{Bundle, SelectorSet, SpiffeId, TrustDomain};
use zeroize::Zeroizing;

/// One registration entry the agent is authorized for, with the X509-SVID it holds for it.
#[derive(Clone)]
pub struct X509Identity {
    /// The registration entry's id.
    pub entry_id: String,
    /// The SVID's SPIFFE ID (the entry's `spiffe_id`).
    pub spiffe_id: SpiffeId,
    /// The entry's selectors: a caller whose selectors include all of them gets this identity
    /// (SPIRE's agent matches entries whose selectors are a subset of the workload's).
    pub selectors: SelectorSet,
    /// Trust domains whose bundles a caller of this identity also receives.
    pub federates_with: Vec<TrustDomain>,
    /// The entry's hint (`X509SVID.hint` in the Workload API); empty when unset.
    pub hint: String,
    /// The entry's `admin` flag.
    pub admin: bool,
    /// The entry's `downstream` flag.
    pub downstream: bool,
    /// The certificate chain, DER, leaf first (intermediates follow when the server sent
    /// them).
    pub chain: Vec<Vec<u8>>,
    /// The SVID's private key, PKCS#8 DER; wiped when the last copy is dropped.
    pub private_key: Arc<Zeroizing<Vec<u8>>>,
    /// The leaf's NotAfter.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for X509Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Identity")
            .field("entry_id", &self.entry_id)
            .field("spiffe_id", &self.spiffe_id)
            .field("selectors", &self.selectors)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Everything a workload may be served at one moment.
#[derive(Clone, Debug)]
pub struct CacheView {
    /// Bumped by one on every publish; a stream compares it to skip unchanged views.
    pub revision: u64,
    /// The agent's own trust domain's bundle.
    pub bundle: Arc<Bundle>,
    /// Federated trust domains' bundles the agent received, by trust domain.
    pub federated: BTreeMap<TrustDomain, Arc<Bundle>>,
    /// Entries with an SVID, in the order the agent keeps them (by entry id).
    pub identities: Vec<Arc<X509Identity>>,
    /// Entries the agent is authorized for that have no SVID at the moment (not minted yet,
    /// or evicted by the SVID cache bound), by entry id.
    pub pending: Vec<Arc<PendingIdentity>>,
}

/// A registration entry the agent is authorized for but holds no X509-SVID for right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingIdentity {
    /// The registration entry's id.
    pub entry_id: String,
    /// The entry's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The entry's selectors.
    pub selectors: SelectorSet,
}

impl CacheView {
    /// A view with `bundle` and nothing else (revision 0).
    pub fn new(bundle: Bundle) -> Self {
        Self {
            revision: 0,
            bundle: Arc::new(bundle),
            federated: BTreeMap::new(),
            identities: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Whether a caller with `selectors` matches an entry whose SVID is not there yet: a
    /// stream should then wait for a later view before answering (the agent mints SVIDs for
    /// registered workloads, see [`Cache::register_workload`]).
    pub fn is_pending_for(&self, selectors: &SelectorSet) -> bool {
        self.pending.iter().any(|p| !p.selectors.is_empty() && p.selectors.is_subset_of(selectors))
    }

    /// The identities a caller with `selectors` gets: those whose entry's selectors are all
    /// among the caller's. An entry without selectors matches no caller.
    pub fn identities_for(&self, selectors: &SelectorSet) -> Vec<Arc<X509Identity>> {
        self.identities
            .iter()
            .filter(|id| !id.selectors.is_empty() && id.selectors.is_subset_of(selectors))
            .cloned()
            .collect()
    }

    /// The federated bundles `identities` ask for (the union of their `federates_with`), of
    /// the trust domains the agent holds a bundle for.
    pub fn federated_bundles_for(
        &self,
        identities: &[Arc<X509Identity>],
    ) -> BTreeMap<TrustDomain, Arc<Bundle>> {
        let mut out = BTreeMap::new();
        for td in identities.iter().flat_map(|id| id.federates_with.iter()) {
            if let Some(bundle) = self.federated.get(td) {
                out.insert(td.clone(), Arc::clone(bundle));
            }
        }
        out
    }
}

/// Publishes [`CacheView`]s to every subscriber.
#[derive(Debug)]
pub struct Cache {
    tx: watch::Sender<Arc<CacheView>>,
    workloads: Arc<watch::Sender<WorkloadSelectors>>,
}

/// The selector sets of the workloads being served right now, by registration number.
pub type WorkloadSelectors = BTreeMap<u64, SelectorSet>;

/// A workload being served (see [`Cache::register_workload`]); dropping it ends the
/// registration.
#[derive(Debug)]
pub struct WorkloadInterest {
    id: u64,
    workloads: Arc<watch::Sender<WorkloadSelectors>>,
}

impl Drop for WorkloadInterest {
    fn drop(&mut self) {
        self.workloads.send_modify(|w| {
            w.remove(&self.id);
        });
    }
}

impl Cache {
    /// A cache whose first view is `view`.
    pub fn new(view: CacheView) -> Self {
        let (tx, _) = watch::channel(Arc::new(view));
        let (workloads, _) = watch::channel(WorkloadSelectors::new());
        Self { tx, workloads: Arc::new(workloads) }
    }

    /// Registers a workload with `selectors` as being served (a Workload API or SDS stream,
    /// or a unary call in progress) until the returned value is dropped. The agent keeps the
    /// X509-SVIDs of the entries it matches, and mints missing ones promptly.
    pub fn register_workload(&self, selectors: SelectorSet) -> WorkloadInterest {
        let mut id = 0;
        self.workloads.send_modify(|w| {
            id = w.last_key_value().map_or(0, |(k, _)| k.wrapping_add(1));
            w.insert(id, selectors);
        });
        WorkloadInterest { id, workloads: Arc::clone(&self.workloads) }
    }

    /// A receiver of the registered workloads' selector sets (see
    /// [`Cache::register_workload`]); it sees every registration and every drop.
    pub fn workloads(&self) -> watch::Receiver<WorkloadSelectors> {
        self.workloads.subscribe()
    }

    /// A receiver that sees the current view and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CacheView>> {
        self.tx.subscribe()
    }

    /// The view as it is now.
    pub fn current(&self) -> Arc<CacheView> {
        Arc::clone(&self.tx.borrow())
    }

    /// Publishes a new view built from the current one by `change`; the revision is bumped
    /// (saturating) whatever `change` sets it to.
    pub fn update(&self, change: impl FnOnce(&mut CacheView)) {
        self.tx.send_modify(|view| {
            let mut next = CacheView::clone(view);
            change(&mut next);
            next.revision = view.revision.saturating_add(1);
            *view = Arc::new(next);
        });
    }
}

/// A JWT-SVID handed to a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtSvidToken {
    /// The SPIFFE ID (`sub`).
    pub spiffe_id: SpiffeId,
    /// The compact JWS.
    pub token: String,
    /// The entry's hint; empty when unset.
    pub hint: String,
    /// Unix seconds when the token expires.
    pub expires_at: i64,
}

/// Why no JWT-SVID could be had.
#[derive(Debug, thiserror::Error)]
pub enum JwtSvidError {
    /// The server could not be reached or refused; the message says which.
    #[error("{0}")]
    Unavailable(String),
}

/// The future a [`JwtSvidSource`] returns.
pub type JwtSvidFuture<'a> =
    Pin<Box<dyn Future<Output = Result<JwtSvidToken, JwtSvidError>> + Send + 'a>>;

/// Mints (or returns a cached) JWT-SVID for an identity the caller was matched to.
pub trait JwtSvidSource: Send + Sync {
    /// A JWT-SVID for `identity` with `audience` (never empty; the caller checks).
    fn fetch_jwt_svid<'a>(
        &'a self,
        identity: &'a X509Identity,
        audience: &'a [String],
    ) -> JwtSvidFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::Selector;

    fn identity(entry_id: &str, selectors: &[&str], federates_with: &[&str]) -> X509Identity {
        X509Identity {
            entry_id: entry_id.into(),
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{entry_id}")).unwrap(),
            selectors: selectors.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            federates_with: federates_with.iter().map(|td| TrustDomain::new(td).unwrap()).collect(),
            hint: String::new(),
            admin: false,
            downstream: false,
            chain: vec![vec![1]],
            private_key: Arc::new(Zeroizing::new(vec![2])),
            expires_at: SystemTime::UNIX_EPOCH,
        }
    }

    fn set(selectors: &[&str]) -> SelectorSet {
        selectors.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn a_caller_gets_the_entries_whose_selectors_it_has_all_of() {
        let mut view = CacheView::new(Bundle::new(TrustDomain::new("example.org").unwrap()));
        view.identities = vec![
            Arc::new(identity("a", &["unix:uid:1000"], &[])),
            Arc::new(identity("b", &["unix:uid:1000", "unix:gid:5"], &[])),
            Arc::new(identity("c", &["unix:uid:0"], &[])),
            Arc::new(identity("d", &[], &[])),
        ];
        let ids = |sel: &[&str]| -> Vec<String> {
            view.identities_for(&set(sel)).iter().map(|i| i.entry_id.clone()).collect()
        };
        assert_eq!(ids(&["unix:uid:1000"]), ["a"]);
        assert_eq!(ids(&["unix:uid:1000", "unix:gid:5", "unix:user:x"]), ["a", "b"]);
        assert_eq!(ids(&["unix:gid:5"]), Vec::<String>::new());
        assert_eq!(ids(&[]), Vec::<String>::new());
    }

    #[test]
    fn federated_bundles_are_those_the_matched_identities_ask_for_and_the_agent_holds() {
        let mut view = CacheView::new(Bundle::new(TrustDomain::new("example.org").unwrap()));
        for td in ["a.test", "b.test"] {
            let td = TrustDomain::new(td).unwrap();
            view.federated.insert(td.clone(), Arc::new(Bundle::new(td)));
        }
        let ids = [
            Arc::new(identity("x", &["unix:uid:1"], &["a.test", "missing.test"])),
            Arc::new(identity("y", &["unix:uid:1"], &["a.test"])),
        ];
        let got: Vec<String> =
            view.federated_bundles_for(&ids).keys().map(|td| td.to_string()).collect();
        assert_eq!(got, ["a.test"]);
    }

    #[tokio::test]
    async fn subscribers_see_each_update_with_a_new_revision() {
        let cache =
            Cache::new(CacheView::new(Bundle::new(TrustDomain::new("example.org").unwrap())));
        let mut rx = cache.subscribe();
        assert_eq!(rx.borrow_and_update().revision, 0);
        cache.update(|v| {
            v.identities.push(Arc::new(identity("a", &["unix:uid:1"], &[])));
            v.revision = 99;
        });
        rx.changed().await.unwrap();
        let view = rx.borrow_and_update().clone();
        assert_eq!((view.revision, view.identities.len()), (1, 1));
        assert_eq!(cache.current().revision, 1);
    }

    #[test]
    fn registered_workloads_are_listed_until_their_interest_is_dropped() {
        let cache =
            Cache::new(CacheView::new(Bundle::new(TrustDomain::new("example.org").unwrap())));
        let rx = cache.workloads();
        let a = cache.register_workload(set(&["unix:uid:1"]));
        let b = cache.register_workload(set(&["unix:uid:2"]));
        let listed = |rx: &watch::Receiver<WorkloadSelectors>| -> Vec<SelectorSet> {
            rx.borrow().values().cloned().collect()
        };
        assert_eq!(listed(&rx), [set(&["unix:uid:1"]), set(&["unix:uid:2"])]);
        drop(a);
        assert_eq!(listed(&rx), [set(&["unix:uid:2"])]);
        drop(b);
        assert!(listed(&rx).is_empty());
    }

    #[test]
    fn a_caller_matching_an_entry_without_an_svid_is_pending() {
        let mut view = CacheView::new(Bundle::new(TrustDomain::new("example.org").unwrap()));
        view.pending = vec![Arc::new(PendingIdentity {
            entry_id: "p".into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/p").unwrap(),
            selectors: set(&["unix:uid:7"]),
        })];
        assert!(view.is_pending_for(&set(&["unix:uid:7", "unix:gid:1"])));
        assert!(!view.is_pending_for(&set(&["unix:uid:8"])));
    }
}
