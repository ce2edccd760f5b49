//! SPIFFE federation: the bundle endpoint this server serves ([`endpoint`]) and the
//! bundle manager that fetches federated trust domains' bundles from theirs ([`client`]).
//!
//! The manager follows SPIRE's: it keeps one updater per federation relationship (those in
//! the store, and those of the configuration file, which win over stored ones for the same
//! trust domain), reconciles that set every 10 seconds and before every RefreshBundle, and
//! each updater fetches its bundle on a schedule derived from the refresh hint
//! ([`next_refresh`]). A fetched bundle that differs from the stored one is written with
//! [`Command::SetBundles`] through the proposer.

pub mod client;
pub mod config;
pub mod endpoint;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use ward_core::{Bundle, BundleEndpointProfile, Clock, TrustDomain};
use ward_store::{Command, Outcome, Store};

use crate::proposer::Proposer;
use client::EndpointAuth;

/// How often the set of relationships is re-read (SPIRE: 10 s).
pub const CONFIG_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// The refresh interval when a fetched bundle carries no refresh hint (SPIRE: 5 min).
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// The smallest refresh hint honoured (SPIRE: 1 min).
pub const MINIMUM_REFRESH_HINT: Duration = Duration::from_secs(60);
/// Fetches attempted per refresh-hint period (SPIRE: 4).
pub const ATTEMPTS_PER_REFRESH_HINT: u32 = 4;
/// The bundle endpoint's refresh hint when the configuration sets none (SPIRE: 5 min).
pub const DEFAULT_ENDPOINT_REFRESH_HINT: Duration = Duration::from_secs(300);

/// Where and how a federated trust domain's bundle is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The bundle endpoint URL.
    pub url: String,
    /// How the endpoint is authenticated.
    pub profile: BundleEndpointProfile,
}

/// What one update did (SPIRE's `UpdateBundle` results).
#[derive(Debug, Default)]
pub struct UpdateResult {
    /// The stored bundle before the update, if there was one.
    pub local: Option<Arc<Bundle>>,
    /// The fetched bundle, when it differed from the stored one and was stored.
    pub stored: Option<Bundle>,
    /// Why the update failed, in SPIRE's words.
    pub error: Option<String>,
}

/// When to fetch next after an update, as SPIRE schedules it: from the newly stored
/// bundle's refresh hint (5 minutes without one), else from the stored bundle's (its hint,
/// or a tenth of its shortest-lived X.509 authority), never less than a minute, divided by
/// [`ATTEMPTS_PER_REFRESH_HINT`]; with no bundle at all, after a minute.
pub fn next_refresh(local: Option<&Bundle>, stored: Option<&Bundle>) -> Duration {
    if let Some(b) = stored {
        if b.refresh_hint <= 0 {
            return DEFAULT_REFRESH_INTERVAL;
        }
        return safe_hint(secs(b.refresh_hint)) / ATTEMPTS_PER_REFRESH_HINT;
    }
    match local {
        Some(b) => calculate_refresh_hint(b) / ATTEMPTS_PER_REFRESH_HINT,
        None => MINIMUM_REFRESH_HINT,
    }
}

/// SPIRE's `CalculateRefreshHint`: the bundle's hint, or a tenth of the shortest lifetime
/// among its X.509 authorities, at least [`MINIMUM_REFRESH_HINT`].
pub fn calculate_refresh_hint(b: &Bundle) -> Duration {
    if b.refresh_hint > 0 {
        return safe_hint(secs(b.refresh_hint));
    }
    let shortest = b
        .x509_authorities
        .iter()
        .filter_map(|a| x509_parser::parse_x509_certificate(&a.der).ok())
        .map(|(_, c)| {
            let v = c.validity();
            v.not_after.timestamp().saturating_sub(v.not_before.timestamp())
        })
        .min();
    safe_hint(shortest.map_or(Duration::ZERO, |s| secs(s) / 10))
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn safe_hint(d: Duration) -> Duration {
    d.max(MINIMUM_REFRESH_HINT)
}

/// One running updater.
#[derive(Debug)]
struct Updater {
    config: watch::Sender<EndpointConfig>,
    task: JoinHandle<()>,
}

/// The federated bundle manager.
pub struct Federation {
    store: Store,
    proposer: Arc<dyn Proposer>,
    clock: Arc<dyn Clock>,
    configured: BTreeMap<TrustDomain, EndpointConfig>,
    web_roots: Vec<Vec<u8>>,
    updaters: Mutex<BTreeMap<TrustDomain, Updater>>,
    reconciling: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation").field("configured", &self.configured).finish()
    }
}

impl Federation {
    /// A manager over `store`, writing through `proposer`, checking certificates at
    /// `clock`'s time. `configured` are the relationships of the configuration file;
    /// `web_roots` (DER) are trusted for `https_web` endpoints besides the built-in Web PKI
    /// roots.
    pub fn new(
        store: Store,
        proposer: Arc<dyn Proposer>,
        clock: Arc<dyn Clock>,
        configured: BTreeMap<TrustDomain, EndpointConfig>,
        web_roots: Vec<Vec<u8>>,
    ) -> Self {
        Self {
            store,
            proposer,
            clock,
            configured,
            web_roots,
            updaters: Mutex::new(BTreeMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
        }
    }

    /// The relationships to manage: the stored ones, overridden by the configured ones.
    fn configs(&self) -> BTreeMap<TrustDomain, EndpointConfig> {
        let mut all = BTreeMap::new();
        let page = ward_store::PageRequest::all();
        for rel in self.store.list_federation_relationships(&page).items {
            all.insert(
                rel.trust_domain.clone(),
                EndpointConfig {
                    url: rel.bundle_endpoint_url.clone(),
                    profile: rel.profile.clone(),
                },
            );
        }
        all.extend(self.configured.iter().map(|(td, c)| (td.clone(), c.clone())));
        all
    }

    fn updaters(&self) -> std::sync::MutexGuard<'_, BTreeMap<TrustDomain, Updater>> {
        self.updaters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts updaters for new relationships, passes changed endpoints to running ones and
    /// stops those whose relationship is gone.
    pub async fn reconcile(self: &Arc<Self>) {
        let _one_at_a_time = self.reconciling.lock().await;
        let mut configs = self.configs();
        let mut updaters = self.updaters();
        updaters.retain(|td, u| match configs.remove(td) {
            Some(c) => {
                u.config.send_if_modified(|old| {
                    let changed = *old != c;
                    if changed {
                        tracing::info!(trust_domain = %td, url = %c.url, "updated configuration for managed trust domain");
                        *old = c;
                    }
                    changed
                });
                true
            }
            None => {
                tracing::info!(trust_domain = %td, "trust domain no longer managed");
                u.task.abort();
                false
            }
        });
        for (td, c) in configs {
            tracing::info!(trust_domain = %td, url = %c.url, "trust domain is now managed");
            let (tx, rx) = watch::channel(c);
            let task = tokio::spawn(run_updater(self.clone(), td.clone(), rx));
            updaters.insert(td, Updater { config: tx, task });
        }
    }

    /// SPIRE's `RefreshBundleFor`: `Ok(false)` when `td` is not managed, else the result of
    /// one update.
    ///
    /// # Errors
    /// Why the update failed, in SPIRE's words.
    pub async fn refresh(self: &Arc<Self>, td: &TrustDomain) -> Result<bool, String> {
        self.reconcile().await;
        let config = match self.updaters().get(td) {
            Some(u) => u.config.borrow().clone(),
            None => return Ok(false),
        };
        match self.update(td, &config).await.error {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// Runs the manager until `stop` is raised.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            self.reconcile().await;
            tokio::select! {
                () = tokio::time::sleep(CONFIG_REFRESH_INTERVAL) => {}
                () = &mut stopped => break,
            }
        }
        for (_, u) in std::mem::take(&mut *self.updaters()) {
            u.task.abort();
        }
    }

    /// One update of `td`'s bundle from `config`'s endpoint.
    pub async fn update(&self, td: &TrustDomain, config: &EndpointConfig) -> UpdateResult {
        let auth = match &config.profile {
            BundleEndpointProfile::HttpsWeb => {
                EndpointAuth::Web { extra_roots: self.web_roots.clone() }
            }
            BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                let Some(b) = self.store.bundle(&endpoint_spiffe_id.trust_domain()) else {
                    return UpdateResult {
                        error: Some(
                            "can't perform SPIFFE Authentication: local copy of bundle not found"
                                .to_owned(),
                        ),
                        ..UpdateResult::default()
                    };
                };
                EndpointAuth::Spiffe {
                    id: endpoint_spiffe_id.clone(),
                    roots: b.x509_authorities.iter().map(|a| a.der.clone()).collect(),
                }
            }
        };
        let local = self.store.bundle(td);
        let fetched = match client::fetch_bundle(td, &config.url, &auth, self.clock.clone()).await {
            Ok(b) => b,
            Err(e) => {
                return UpdateResult {
                    local,
                    stored: None,
                    error: Some(format!("failed to fetch federated bundle from endpoint: {e}")),
                };
            }
        };
        if local.as_deref() == Some(&fetched) {
            return UpdateResult { local, stored: None, error: None };
        }
        let stored = match self.proposer.propose(Command::SetBundles(vec![fetched])).await {
            Ok(applied) => match applied.outcome {
                Outcome::Bundles(mut items) if items.len() == 1 => match items.pop() {
                    Some(Ok(b)) => Ok((*b).clone()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("no apply result".to_owned()),
                },
                other => Err(format!("unexpected apply outcome {other:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(b) => UpdateResult { local, stored: Some(b), error: None },
            Err(e) => UpdateResult {
                local,
                stored: None,
                error: Some(format!("failed to store fetched federated bundle: {e}")),
            },
        }
    }
}

async fn run_updater(
    fed: Arc<Federation>,
    td: TrustDomain,
    config: watch::Receiver<EndpointConfig>,
) {
    loop {
        let current = config.borrow().clone();
        let r = fed.update(&td, &current).await;
        if let Some(e) = &r.error {
            tracing::error!(trust_domain = %td, error = %e, "error updating bundle");
        }
        if r.stored.is_some() {
            tracing::info!(trust_domain = %td, "bundle refreshed");
        }
        let next = next_refresh(r.local.as_deref(), r.stored.as_ref());
        tracing::debug!(trust_domain = %td, after = ?next, "scheduling next bundle refresh");
        tokio::time::sleep(next).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use ward_core::X509Authority;

    fn bundle(hint: i64, ca_lifetimes: &[u64]) -> Bundle {
        let mut b = Bundle::new(TrustDomain::new("a.test").unwrap());
        b.refresh_hint = hint;
        for secs in ca_lifetimes {
            let key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
            let ca = ward_ca::X509Ca::self_signed(
                key,
                &b.trust_domain,
                Duration::from_secs(*secs),
                SystemTime::now(),
            )
            .unwrap();
            b.x509_authorities.push(X509Authority::new(ca.cert_der().to_vec()));
        }
        b
    }

    #[test]
    fn a_newly_stored_bundle_schedules_by_its_hint_or_five_minutes() {
        let min = Duration::from_secs;
        // A quarter of the hint.
        assert_eq!(next_refresh(None, Some(&bundle(600, &[]))), min(150));
        // Hints under a minute count as a minute.
        assert_eq!(next_refresh(None, Some(&bundle(5, &[]))), min(15));
        // No hint in the fetched document: SPIRE's 5 minutes, not divided.
        assert_eq!(next_refresh(None, Some(&bundle(0, &[3600]))), min(300));
        // The stored bundle is ignored when a new one was stored.
        assert_eq!(next_refresh(Some(&bundle(4000, &[])), Some(&bundle(400, &[]))), min(100));
    }

    #[test]
    fn without_a_new_bundle_the_stored_one_schedules_or_a_minute() {
        let min = Duration::from_secs;
        assert_eq!(next_refresh(Some(&bundle(800, &[])), None), min(200));
        // No hint: a tenth of the shortest CA lifetime (plus the backdate), then a quarter.
        let by_lifetime = next_refresh(Some(&bundle(0, &[36_000, 360_000])), None);
        assert!(by_lifetime >= min(900) && by_lifetime <= min(920), "{by_lifetime:?}");
        // Short-lived CAs: never under a minute before dividing.
        assert_eq!(next_refresh(Some(&bundle(0, &[120])), None), min(15));
        assert_eq!(next_refresh(Some(&bundle(0, &[])), None), min(15));
        // Nothing stored and nothing fetched: retry after a minute.
        assert_eq!(next_refresh(None, None), MINIMUM_REFRESH_HINT);
    }
}
