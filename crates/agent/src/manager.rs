//! The SVID manager: keeps the agent's entries, bundles and X509-SVIDs current and publishes
//! them into the [`Cache`].
//!
//! One task owns all of the state ([`Manager::run`]); nothing is shared behind a lock. Every
//! `sync_interval` (5 s by default) it syncs entries and bundles ([`crate::sync`]), then mints
//! what is missing or due. With push sync on ([`ManagerConfig::push`], the default) it also
//! holds a ward server's watch stream ([`crate::push`]): it syncs at once when the server
//! says something changed, and polls only every `push_sync_poll_interval` (30 s by default)
//! while that stream is healthy; against spire-server it polls every `sync_interval`. Between syncs it wakes for the next SVID due for rotation and when
//! the set of workloads being served changes ([`Cache::register_workload`]), so a new
//! caller's SVID is minted at once rather than at the next sync. A failed sync is retried
//! after an exponential backoff with jitter (capped at [`ManagerConfig::max_backoff`]).
//!
//! An SVID is (re-)minted when:
//! - its entry has none and there is room under `x509_svid_cache_max_size`, or a workload
//!   being served matches the entry (a workload is never denied for the bound);
//! - it reached its rotation time (half-life, jittered; see [`crate::svid::rotation_time`]);
//! - what goes into it changed: the entry's SPIFFE ID, DNS names or X509-SVID TTL.
//!
//! SVIDs of entries no longer authorized are dropped. When more SVIDs are held than the bound,
//! those no workload being served matches are evicted, least recently used first (SPIRE's
//! `lru_cache.go` semantics; "used" means matched by a registered workload).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tonic::transport::Channel;
use ward_ca::KeyType;
use ward_core::{Clock, SelectorSet, TrustDomain};

use crate::cache::{Cache, PendingIdentity, WorkloadSelectors, X509Identity};
use crate::error::SyncError;
use crate::push::{PushConfig, PushState, PushWatcher};
use crate::svid::{MAX_BATCH_SIZE, MintResult, MintedSvid, mint_batch};
use crate::sync::{AuthorizedEntry, Bundles, EntrySync, SyncCounters, fetch_bundles};

/// SPIRE's default `x509_svid_cache_max_size`.
pub const DEFAULT_X509_SVID_CACHE_MAX_SIZE: usize = 1000;

/// The manager's settings.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The agent's trust domain.
    pub trust_domain: TrustDomain,
    /// Time between two syncs with the server. Default 5 s (SPIRE's).
    pub sync_interval: Duration,
    /// How many X509-SVIDs the agent keeps at most, beyond those of entries that workloads
    /// being served match. Default 1000 (SPIRE's `x509_svid_cache_max_size`).
    pub x509_svid_cache_max_size: usize,
    /// Longest wait between two attempts after failed syncs. Default 60 s.
    pub max_backoff: Duration,
    /// Key type of workload X509-SVIDs. Default EC P-256.
    pub key_type: KeyType,
    /// Push sync against a ward server; `None` polls only. Default on.
    pub push: Option<PushConfig>,
}

impl ManagerConfig {
    /// The defaults for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            sync_interval: Duration::from_secs(5),
            x509_svid_cache_max_size: DEFAULT_X509_SVID_CACHE_MAX_SIZE,
            max_backoff: Duration::from_secs(60),
            key_type: KeyType::EcP256,
            push: Some(PushConfig::default()),
        }
    }
}

/// Counters of the manager's work (shared; they keep counting while it runs).
#[derive(Debug, Default)]
pub struct ManagerCounters {
    /// X509-SVIDs minted for entries that had none.
    pub svids_minted: AtomicU64,
    /// X509-SVIDs replaced (rotation or a changed entry).
    pub svids_renewed: AtomicU64,
    /// X509-SVIDs evicted by the cache bound.
    pub svids_evicted: AtomicU64,
    /// BatchNewX509SVID calls made.
    pub batches: AtomicU64,
    /// Per-entry refusals in BatchNewX509SVID results.
    pub mint_refusals: AtomicU64,
}

/// An SVID the manager holds, with the entry as it was when the SVID was minted.
struct Held {
    minted_for: AuthorizedEntry,
    svid: MintedSvid,
    identity: Arc<X509Identity>,
}

/// Keeps entries, bundles and SVIDs current; see the module docs.
pub struct Manager {
    config: ManagerConfig,
    channel: watch::Receiver<Channel>,
    cache: Arc<Cache>,
    clock: Arc<dyn Clock>,
    workloads: watch::Receiver<WorkloadSelectors>,
    entries: EntrySync,
    bundles: Option<Bundles>,
    held: BTreeMap<String, Held>,
    last_used: HashMap<String, u64>,
    use_tick: u64,
    batch_limit: usize,
    /// Whether the last pass minted everything it tried to; when not, the manager waits for
    /// the next sync instead of waking for rotations (no tight retry loop).
    minted_all: bool,
    /// Tainted X.509 authorities (DER) whose SVIDs were already sent to rotation.
    tainted_seen: BTreeSet<Vec<u8>>,
    counters: Arc<ManagerCounters>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("entries", &self.entries.entries().len())
            .field("svids", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager that talks to the server over the channel in `channel` (replace it there
    /// when the agent's own SVID rotates; the next call uses the new one) and publishes into
    /// `cache`.
    pub fn new(
        config: ManagerConfig,
        channel: watch::Receiver<Channel>,
        cache: Arc<Cache>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let workloads = cache.workloads();
        Self {
            config,
            channel,
            cache,
            clock,
            workloads,
            entries: EntrySync::new(),
            bundles: None,
            held: BTreeMap::new(),
            last_used: HashMap::new(),
            use_tick: 0,
            batch_limit: MAX_BATCH_SIZE,
            minted_all: true,
            tainted_seen: BTreeSet::new(),
            counters: Arc::default(),
        }
    }

    /// The entry sync's counters.
    pub fn sync_counters(&self) -> Arc<SyncCounters> {
        self.entries.counters()
    }

    /// The manager's counters.
    pub fn counters(&self) -> Arc<ManagerCounters> {
        Arc::clone(&self.counters)
    }

    /// Runs until the server refuses the agent itself (PermissionDenied with a reason: the
    /// agent must re-attest or stop) and returns that error. Other failures are logged and
    /// retried with backoff. Cancel it by dropping (aborting) the task.
    ///
    /// # Errors
    /// The [`SyncError`] whose [`SyncError::agent_refused`] is set.
    pub async fn run(mut self) -> Result<(), SyncError> {
        let mut push = self.config.push.map(|config| {
            let (watcher, state) = PushWatcher::new(config, self.channel.clone());
            (AbortOnDrop(tokio::spawn(watcher.run())), state)
        });
        let mut failures: u32 = 0;
        let mut sync_now = true;
        let mut push_requests_seen = 0;
        let mut last_sync = tokio::time::Instant::now();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            let interval = self.poll_interval(push.as_ref().map(|(_, s)| *s.borrow()));
            let due = sync_now || retry_at.map_or(now >= last_sync + interval, |at| now >= at);
            let outcome = if due {
                sync_now = false;
                let outcome = self.sync().await;
                match &outcome {
                    Ok(()) => {
                        failures = 0;
                        last_sync = now;
                        retry_at = None;
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        retry_at = Some(now + retry_delay(&self.config, failures, error));
                    }
                }
                outcome
            } else {
                self.mint_due().await
            };
            if let Err(error) = outcome {
                if let Some(reason) = error.agent_refused() {
                    tracing::error!(%error, ?reason, "the server refused the agent");
                    return Err(error);
                }
                if failures == 1 && error.connection_lost() {
                    // Most often the server closed an old connection (its maximum connection
                    // age) as the call went out; the next call gets a new one.
                    tracing::debug!(%error, "the connection to the server was lost; retrying now");
                } else {
                    tracing::warn!(%error, failures, "sync with the server failed; retrying");
                }
            }
            let interval = self.poll_interval(push.as_ref().map(|(_, s)| *s.borrow()));
            let next_sync = retry_at.unwrap_or(last_sync + interval);
            let rotation = if self.minted_all { self.next_rotation() } else { None };
            let wake = rotation.map_or(next_sync, |at| at.min(next_sync));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                changed = self.workloads.changed() => {
                    if changed.is_err() {
                        // The cache is gone: nobody is served any more.
                        return Ok(());
                    }
                }
                requests = push_changed(push.as_mut().map(|(_, s)| s)) => {
                    if requests != push_requests_seen {
                        push_requests_seen = requests;
                        sync_now = true;
                    }
                }
            }
        }
    }

    /// The time between periodic syncs: `sync_interval`, or the slower push poll while the
    /// push stream is healthy.
    fn poll_interval(&self, push: Option<PushState>) -> Duration {
        match (self.config.push, push) {
            (Some(config), Some(state)) if state.healthy => {
                config.poll_interval.max(self.config.sync_interval)
            }
            _ => self.config.sync_interval,
        }
    }

    /// One full round: entries, bundles, then SVIDs.
    ///
    /// # Errors
    /// The first [`SyncError`]; what succeeded before it is kept and published.
    pub async fn sync(&mut self) -> Result<(), SyncError> {
        let channel = self.channel.borrow().clone();
        let changes = self.entries.sync(&channel).await?;
        if !changes.is_empty() {
            tracing::debug!(
                upserted = changes.upserted.len(),
                removed = changes.removed.len(),
                "entries changed"
            );
        }
        let federated: BTreeSet<TrustDomain> = self
            .entries
            .entries()
            .values()
            .filter(|e| !e.store_svid)
            .flat_map(|e| e.federates_with.iter().cloned())
            .collect();
        let bundles = fetch_bundles(&channel, &self.config.trust_domain, &federated).await;
        let bundles_changed = match bundles {
            Ok(b) => {
                let changed = self.bundles.as_ref() != Some(&b);
                self.rotate_tainted(&b);
                self.bundles = Some(b);
                changed
            }
            Err(e) => {
                self.update_svids(&channel, false).await?;
                return Err(e);
            }
        };
        self.update_svids(&channel, bundles_changed || !changes.is_empty()).await
    }

    /// Makes every SVID chained to an X.509 authority newly marked tainted in the trust
    /// domain's bundle due for rotation now (SPIRE's agent does the same on a taint).
    fn rotate_tainted(&mut self, bundles: &Bundles) {
        let fresh: Vec<Vec<u8>> = bundles
            .own
            .x509_authorities
            .iter()
            .filter(|a| a.tainted && !self.tainted_seen.contains(&a.der))
            .map(|a| a.der.clone())
            .collect();
        if fresh.is_empty() {
            return;
        }
        let now = self.clock.now();
        for (id, held) in &mut self.held {
            if chained_to(&held.svid.chain, &fresh, now) {
                tracing::info!(entry_id = %id, "X509-SVID signed by a tainted authority; rotating");
                held.svid.rotate_at = now;
            }
        }
        self.tainted_seen.extend(fresh);
    }

    /// Mints what is due without syncing entries first.
    async fn mint_due(&mut self) -> Result<(), SyncError> {
        let channel = self.channel.borrow().clone();
        self.update_svids(&channel, false).await
    }

    fn next_rotation(&self) -> Option<tokio::time::Instant> {
        let at = self.held.values().map(|h| h.svid.rotate_at).min()?;
        let wait = at.duration_since(self.clock.now()).unwrap_or(Duration::ZERO);
        Some(tokio::time::Instant::now() + wait)
    }

    /// Drops, evicts and mints SVIDs, then publishes if anything a workload sees changed
    /// (`changed` says the entries or bundles did).
    async fn update_svids(
        &mut self,
        channel: &Channel,
        mut changed: bool,
    ) -> Result<(), SyncError> {
        let now = self.clock.now();
        let workloads: Vec<SelectorSet> =
            self.workloads.borrow_and_update().values().cloned().collect();
        let entries = self.entries.entries().clone();
        let wanted: BTreeMap<&String, &AuthorizedEntry> =
            entries.iter().filter(|(_, e)| !e.store_svid).collect();

        // Drop SVIDs of entries that went away.
        let before = self.held.len();
        self.held.retain(|id, _| wanted.contains_key(id));
        self.last_used.retain(|id, _| wanted.contains_key(id));
        changed |= self.held.len() != before;

        // Entries a workload being served matches count as used now.
        self.use_tick += 1;
        let active: BTreeSet<&String> = wanted
            .iter()
            .filter(|(_, e)| workloads.iter().any(|w| e.selectors.is_subset_of(w)))
            .map(|(id, _)| *id)
            .collect();
        for id in &active {
            self.last_used.insert((*id).clone(), self.use_tick);
        }

        // Evict beyond the bound, least recently used first, never an active one.
        let max = self.config.x509_svid_cache_max_size;
        if self.held.len() > max {
            let mut idle: Vec<(u64, String)> = self
                .held
                .keys()
                .filter(|id| !active.contains(id))
                .map(|id| (self.last_used.get(id).copied().unwrap_or(0), id.clone()))
                .collect();
            idle.sort();
            let excess = self.held.len() - max;
            for (_, id) in idle.into_iter().take(excess) {
                tracing::debug!(entry_id = %id, "evicting an X509-SVID (cache bound)");
                self.held.remove(&id);
                self.counters.svids_evicted.fetch_add(1, Ordering::Relaxed);
                changed = true;
            }
        }

        // What to mint, most urgent first: workloads waiting, changed entries, due
        // rotations, then room under the bound.
        let mut due = DueList::default();
        for id in &active {
            if !self.held.contains_key(*id) {
                due.push(id);
            }
        }
        for (id, held) in &self.held {
            if wanted.get(id).is_some_and(|e| e.svid_differs_from(&held.minted_for)) {
                due.push(id);
            }
        }
        for (id, held) in &self.held {
            if held.svid.rotate_at <= now {
                due.push(id);
            }
        }
        let room = max.saturating_sub(self.held.len());
        let mut added = 0;
        for id in wanted.keys() {
            if added >= room {
                break;
            }
            if !self.held.contains_key(*id) && due.push(id) {
                added += 1;
            }
        }

        // Identities whose entry changed in ways that do not touch the SVID.
        for (id, held) in self.held.iter_mut() {
            if let Some(entry) = wanted.get(id)
                && **entry != held.minted_for
                && !entry.svid_differs_from(&held.minted_for)
            {
                held.identity = Arc::new(identity(entry, &held.svid));
                held.minted_for = (*entry).clone();
                changed = true;
            }
        }

        let result = self.mint(channel, &due.order, &wanted, now).await;
        match &result {
            Ok(n) => {
                changed |= *n > 0;
                self.minted_all = *n == due.order.len();
            }
            Err(_) => {
                changed = true;
                self.minted_all = false;
            }
        }
        if changed {
            self.publish(&wanted);
        }
        result.map(|_| ())
    }

    /// Mints `due` in batches; returns how many SVIDs it stored.
    async fn mint(
        &mut self,
        channel: &Channel,
        due: &[String],
        wanted: &BTreeMap<&String, &AuthorizedEntry>,
        now: SystemTime,
    ) -> Result<usize, SyncError> {
        let mut stored = 0;
        let mut rest = due;
        while !rest.is_empty() {
            let take = self.batch_limit.min(rest.len());
            let (batch, tail) = rest.split_at(take);
            rest = tail;
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            let results = match mint_batch(channel, batch, self.config.key_type, now).await {
                Ok(r) => {
                    self.batch_limit = (self.batch_limit * 2).min(MAX_BATCH_SIZE);
                    r
                }
                Err(e) => {
                    self.batch_limit = (self.batch_limit / 2).max(1);
                    return Err(e);
                }
            };
            for (id, result) in results {
                let Some(entry) = wanted.get(&id) else { continue };
                match result {
                    MintResult::Minted(svid) => {
                        let renewed = self.held.contains_key(&id);
                        if renewed {
                            self.counters.svids_renewed.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(entry_id = %id, spiffe_id = %entry.spiffe_id, "renewed X509-SVID");
                        } else {
                            self.counters.svids_minted.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(entry_id = %id, spiffe_id = %entry.spiffe_id, "created X509-SVID");
                        }
                        let identity = Arc::new(identity(entry, &svid));
                        self.held.insert(id, Held { minted_for: (*entry).clone(), svid, identity });
                        stored += 1;
                    }
                    MintResult::Refused { code, message } => {
                        self.counters.mint_refusals.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(entry_id = %id, code, %message, "the server refused an X509-SVID");
                    }
                }
            }
        }
        Ok(stored)
    }

    fn publish(&self, wanted: &BTreeMap<&String, &AuthorizedEntry>) {
        let identities: Vec<Arc<X509Identity>> =
            self.held.values().map(|h| Arc::clone(&h.identity)).collect();
        let pending: Vec<Arc<PendingIdentity>> = wanted
            .iter()
            .filter(|(id, _)| !self.held.contains_key(**id))
            .map(|(id, e)| {
                Arc::new(PendingIdentity {
                    entry_id: (*id).clone(),
                    spiffe_id: e.spiffe_id.clone(),
                    selectors: e.selectors.clone(),
                })
            })
            .collect();
        let bundles = self.bundles.clone();
        self.cache.update(move |view| {
            if let Some(b) = bundles {
                if *view.bundle != b.own {
                    view.bundle = Arc::new(b.own);
                }
                let same = view.federated.len() == b.federated.len()
                    && view
                        .federated
                        .iter()
                        .zip(&b.federated)
                        .all(|((ta, a), (tb, b))| ta == tb && **a == *b);
                if !same {
                    view.federated =
                        b.federated.into_iter().map(|(td, b)| (td, Arc::new(b))).collect();
                }
            }
            view.identities = identities;
            view.pending = pending;
        });
    }
}

/// Aborts the task when dropped (the push watcher dies with the manager).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for a push state not yet seen (one published while the manager was busy counts)
/// and returns its count of sync requests. Never resolves without push sync (or once the
/// watcher is gone).
async fn push_changed(state: Option<&mut watch::Receiver<PushState>>) -> u64 {
    let Some(state) = state else { return std::future::pending().await };
    if state.changed().await.is_err() {
        return std::future::pending().await;
    }
    state.borrow_and_update().sync_requests
}

/// Whether `chain` (DER, leaf first) verifies up to one of `authorities` at `now`.
pub fn chained_to(chain: &[Vec<u8>], authorities: &[Vec<u8>], now: SystemTime) -> bool {
    ward_core::x509svid::verify(chain, authorities, now).is_ok()
}

/// Entry ids to mint, in order, each once.
#[derive(Default)]
struct DueList {
    order: Vec<String>,
    seen: BTreeSet<String>,
}

impl DueList {
    /// Adds `id` unless it is there; says whether it was added.
    fn push(&mut self, id: &str) -> bool {
        let added = self.seen.insert(id.to_owned());
        if added {
            self.order.push(id.to_owned());
        }
        added
    }
}

fn identity(entry: &AuthorizedEntry, svid: &MintedSvid) -> X509Identity {
    X509Identity {
        entry_id: entry.id.clone(),
        spiffe_id: entry.spiffe_id.clone(),
        selectors: entry.selectors.clone(),
        federates_with: entry.federates_with.clone(),
        hint: entry.hint.clone(),
        admin: entry.admin,
        downstream: entry.downstream,
        chain: svid.chain.clone(),
        private_key: Arc::clone(&svid.private_key),
        expires_at: svid.expires_at,
    }
}

/// When to retry a failed sync: at once after a first failure that only lost the connection
/// ([`SyncError::connection_lost`]), else after [`backoff`].
fn retry_delay(config: &ManagerConfig, failures: u32, error: &SyncError) -> Duration {
    if failures == 1 && error.connection_lost() {
        Duration::ZERO
    } else {
        backoff(config.sync_interval, config.max_backoff, failures)
    }
}

/// The wait after `failures` failed attempts in a row: `interval` doubled per failure up to
/// `max`, then a random 0–20 % taken off so agents that failed together spread out.
pub fn backoff(interval: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    let base = interval.saturating_mul(factor).min(max);
    base.mul_f64(1.0 - 0.2 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_svid_is_chained_only_to_the_authority_that_signed_it() {
        let a = ward_testkit::TestAuthority::new("example.org");
        let b = ward_testkit::TestAuthority::new("example.org");
        let id = ward_core::SpiffeId::parse("spiffe://example.org/w").unwrap();
        let svid = a.x509_svid(&id);
        let now = SystemTime::now();
        assert!(chained_to(&svid.chain, &[a.ca_der().to_vec()], now));
        assert!(!chained_to(&svid.chain, &[b.ca_der().to_vec()], now));
        assert!(chained_to(&svid.chain, &[b.ca_der().to_vec(), a.ca_der().to_vec()], now));
    }

    #[test]
    fn a_first_lost_connection_is_retried_at_once_and_anything_else_after_the_backoff() {
        let config = ManagerConfig::new(TrustDomain::new("example.org").unwrap());
        let lost = SyncError::rpc(
            "SyncAuthorizedEntries",
            tonic::Status::cancelled("operation was canceled"),
        );
        let broken =
            SyncError::rpc("SyncAuthorizedEntries", tonic::Status::unavailable("connection reset"));
        let refused = SyncError::rpc("SyncAuthorizedEntries", tonic::Status::internal("boom"));
        assert_eq!(retry_delay(&config, 1, &lost), Duration::ZERO);
        assert_eq!(retry_delay(&config, 1, &broken), Duration::ZERO);
        // A second failure in a row is not a closed connection any more: back off.
        assert!(retry_delay(&config, 2, &lost) >= Duration::from_secs(8));
        assert!(retry_delay(&config, 1, &refused) >= Duration::from_secs(4));
        let protocol = SyncError::protocol("SyncAuthorizedEntries", "bad answer");
        assert!(!protocol.connection_lost());
        assert!(retry_delay(&config, 1, &protocol) >= Duration::from_secs(4));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_never_exceeds_it() {
        let i = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        for _ in 0..50 {
            let first = backoff(i, max, 1);
            assert!(first <= i && first >= i.mul_f64(0.8), "{first:?}");
            let third = backoff(i, max, 3);
            assert!(third <= i * 4 && third >= (i * 4).mul_f64(0.8), "{third:?}");
            assert!(backoff(i, max, 40) <= max);
        }
    }
}
