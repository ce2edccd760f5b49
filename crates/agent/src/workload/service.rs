//! The `SpiffeWorkloadAPI` service.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{debug, error, instrument, warn};
use ward_core::{Bundle, SelectorSet, SpiffeId, TrustDomain};
use ward_proto::spiffe::workload as pb;
use ward_proto::spiffe::workload::spiffe_workload_api_server::SpiffeWorkloadApi;

use super::{CallerAttestor, SECURITY_HEADER, WorkloadApiService, jwt};
use crate::cache::{Cache, CacheView, JwtSvidSource, WorkloadInterest, X509Identity};

/// The Workload API's options, with SPIRE's names and defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadApiConfig {
    /// Serve FetchX509Bundles and FetchJWTBundles to callers without an identity (their
    /// own trust domain's bundle only); default `false`.
    pub allow_unauthenticated_verifiers: bool,
    /// Claims of JWT-SVIDs from other trust domains that ValidateJWTSVID passes on beside
    /// `sub`, `exp` and `aud`; default none.
    pub allowed_foreign_jwt_claims: BTreeSet<String>,
}

/// The SPIFFE Workload API over the agent's [`Cache`].
///
/// Every call is checked for the security header, then attested; the caller is served the
/// identities of the entries whose selectors it has all of. Streams follow the cache and send
/// a new message whenever the caller's answer changes; a stream whose caller loses its last
/// identity ends with `PermissionDenied`, as SPIRE's does.
#[derive(Clone)]
pub struct WorkloadApi {
    cache: Arc<Cache>,
    jwt_source: Arc<dyn JwtSvidSource>,
    attestor: CallerAttestor,
    config: Arc<WorkloadApiConfig>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApi")
            .field("attestor", &self.attestor)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WorkloadApi {
    /// The service over `cache`, minting JWT-SVIDs with `jwt_source`.
    pub fn new(
        cache: Arc<Cache>,
        jwt_source: Arc<dyn JwtSvidSource>,
        attestor: CallerAttestor,
        config: WorkloadApiConfig,
    ) -> Self {
        Self { cache, jwt_source, attestor, config: Arc::new(config) }
    }

    /// The service to add to a [`tonic::service::Routes`] (its streams are answered as
    /// [`WorkloadApiService`] describes).
    pub fn into_service(self) -> WorkloadApiService {
        WorkloadApiService::new(self)
    }

    /// Checks the header and attests the caller. Also says whether the caller is the agent
    /// itself (its health check), whose refusals are not logged, as in SPIRE.
    async fn caller<T>(&self, request: &Request<T>) -> Result<(SelectorSet, bool), Status> {
        check_security_header(request)?;
        let selectors = self.attestor.attest(request).await?;
        let own = request
            .extensions()
            .get::<super::PeerInfo>()
            .is_some_and(|peer| peer.caller().pid == std::process::id());
        Ok((selectors, own))
    }

    /// Registers the caller with the cache (kept while the returned interest lives, so
    /// the agent keeps and mints the SVIDs it needs) and waits for a view in which none of the
    /// entries it matches is waiting for an SVID.
    async fn ready_view(
        &self,
        selectors: &SelectorSet,
    ) -> Result<(WorkloadInterest, watch::Receiver<Arc<CacheView>>), Status> {
        let interest = self.cache.register_workload(selectors.clone());
        let mut rx = self.cache.subscribe();
        rx.wait_for(|view| !view.is_pending_for(selectors)).await.map_err(|_| shutting_down())?;
        Ok((interest, rx))
    }

    /// Follows the cache for one stream: `compose` turns a view into the caller's message
    /// (or the status that ends the stream); a message equal to the last one sent is not
    /// sent again.
    async fn follow<M>(
        &self,
        (selectors, quiet): (SelectorSet, bool),
        compose: fn(&CacheView, &SelectorSet, &WorkloadApiConfig) -> Result<M, Status>,
    ) -> Result<Response<MessageStream<M>>, Status>
    where
        M: Fingerprint + Send + 'static,
    {
        let (interest, mut rx) = self.ready_view(&selectors).await?;
        let first = compose(&rx.borrow_and_update(), &selectors, &self.config)
            .inspect_err(|status| log_refusal(status, &selectors, quiet))?;
        let config = Arc::clone(&self.config);
        let stream = async_stream::stream! {
            let _interest = interest;
            // The stream remembers what it sent by fingerprint: 32 bytes instead of a copy of
            // the message (about 1.3 KB per SVID).
            let mut last = first.fingerprint();
            yield Ok(first);
            loop {
                if rx.changed().await.is_err() {
                    yield Err(shutting_down());
                    break;
                }
                let view = Arc::clone(&rx.borrow_and_update());
                if view.is_pending_for(&selectors) {
                    continue;
                }
                match compose(&view, &selectors, &config) {
                    Ok(message) => {
                        let fingerprint = message.fingerprint();
                        if fingerprint != last {
                            last = fingerprint;
                            yield Ok(message);
                        }
                    }
                    Err(status) => {
                        log_refusal(&status, &selectors, quiet);
                        yield Err(status);
                        break;
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A SHA-256 over a Workload API message's fields in a fixed order (each field length-prefixed,
/// map entries by key), so two messages with equal fields have equal fingerprints whatever the
/// order of their maps.
pub trait Fingerprint {
    /// The message's fingerprint.
    fn fingerprint(&self) -> [u8; 32];
}

/// Feeds length-prefixed fields into a SHA-256.
struct FingerprintBuilder(aws_lc_rs::digest::Context);

impl FingerprintBuilder {
    fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.count(bytes.len());
        self.0.update(bytes);
        self
    }

    fn count(&mut self, n: usize) -> &mut Self {
        self.0.update(&(n as u64).to_be_bytes());
        self
    }

    fn list(&mut self, items: &[Vec<u8>]) -> &mut Self {
        self.count(items.len());
        for item in items {
            self.field(item);
        }
        self
    }

    fn map(&mut self, map: &std::collections::HashMap<String, Vec<u8>>) -> &mut Self {
        let sorted: BTreeMap<&String, &Vec<u8>> = map.iter().collect();
        self.count(sorted.len());
        for (key, value) in sorted {
            self.field(key.as_bytes()).field(value);
        }
        self
    }

    fn finish(self) -> [u8; 32] {
        let mut out = [0; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

impl Fingerprint for pb::X509svidResponse {
    fn fingerprint(&self) -> [u8; 32] {
        let mut fp = FingerprintBuilder::new();
        fp.count(self.svids.len());
        for svid in &self.svids {
            fp.field(svid.spiffe_id.as_bytes())
                .field(&svid.x509_svid)
                .field(&svid.x509_svid_key)
                .field(&svid.bundle)
                .field(svid.hint.as_bytes());
        }
        fp.list(&self.crl).map(&self.federated_bundles);
        fp.finish()
    }
}

impl Fingerprint for pb::X509BundlesResponse {
    fn fingerprint(&self) -> [u8; 32] {
        let mut fp = FingerprintBuilder::new();
        fp.list(&self.crl).map(&self.bundles);
        fp.finish()
    }
}

impl Fingerprint for pb::JwtBundlesResponse {
    fn fingerprint(&self) -> [u8; 32] {
        let mut fp = FingerprintBuilder::new();
        fp.map(&self.bundles);
        fp.finish()
    }
}

/// A server stream of Workload API messages.
pub type MessageStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

fn shutting_down() -> Status {
    Status::unavailable("agent is shutting down")
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// Logs why a stream was refused or ended, unless the caller is the agent itself.
fn log_refusal(status: &Status, selectors: &SelectorSet, quiet: bool) {
    if quiet {
        return;
    }
    if status.code() == tonic::Code::PermissionDenied {
        error!(registered = false, selectors = ?selectors, "no identity issued");
    } else {
        error!(error = %status.message(), "could not serve the caller");
    }
}

/// SPIRE's rule: the metadata `workload.spiffe.io` with exactly one value, `true`.
fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument("security header missing from request")),
    }
}

/// The identities a caller is served, by entry id, without entries whose non-empty hint an
/// earlier entry already has (SPIRE keeps the oldest entry of such a set; ward, which does
/// not hold entries' creation times, keeps the smallest entry id).
fn served_identities(view: &CacheView, selectors: &SelectorSet) -> Vec<Arc<X509Identity>> {
    let mut identities = view.identities_for(selectors);
    identities.sort_by(|a, b| a.entry_id.cmp(&b.entry_id));
    let mut hints = HashSet::new();
    identities.retain(|id| {
        if id.hint.is_empty() || hints.insert(id.hint.clone()) {
            return true;
        }
        warn!(hint = %id.hint, entry_id = %id.entry_id, "ignoring entry with duplicate hint");
        false
    });
    identities
}

fn td_key(td: &TrustDomain) -> String {
    td.id().as_str().to_owned()
}

fn concatenated_x509(bundle: &Bundle) -> Vec<u8> {
    bundle.x509_authorities.iter().flat_map(|a| a.as_ref().iter().copied()).collect()
}

fn x509_svid_response(
    view: &CacheView,
    selectors: &SelectorSet,
    _: &WorkloadApiConfig,
) -> Result<pb::X509svidResponse, Status> {
    let identities = served_identities(view, selectors);
    if identities.is_empty() {
        return Err(no_identity());
    }
    let bundle = concatenated_x509(&view.bundle);
    let federated_bundles = view
        .federated_bundles_for(&identities)
        .iter()
        .map(|(td, b)| (td_key(td), concatenated_x509(b)))
        .collect();
    let svids = identities
        .iter()
        .map(|id| pb::X509svid {
            spiffe_id: id.spiffe_id.as_str().to_owned(),
            x509_svid: id.chain.concat(),
            x509_svid_key: id.private_key.to_vec(),
            bundle: bundle.clone(),
            hint: id.hint.clone(),
        })
        .collect();
    Ok(pb::X509svidResponse { svids, crl: Vec::new(), federated_bundles })
}

/// The bundles a caller may see: its own trust domain's always, federated ones only with an
/// identity; `None` when it has no identity and unauthenticated verifiers are not allowed.
fn visible_bundles(
    view: &CacheView,
    selectors: &SelectorSet,
    config: &WorkloadApiConfig,
) -> Result<Vec<Arc<Bundle>>, Status> {
    let identities = view.identities_for(selectors);
    if identities.is_empty() && !config.allow_unauthenticated_verifiers {
        return Err(no_identity());
    }
    let mut bundles = vec![Arc::clone(&view.bundle)];
    bundles.extend(view.federated_bundles_for(&identities).into_values());
    Ok(bundles)
}

fn x509_bundles_response(
    view: &CacheView,
    selectors: &SelectorSet,
    config: &WorkloadApiConfig,
) -> Result<pb::X509BundlesResponse, Status> {
    let bundles = visible_bundles(view, selectors, config)?
        .iter()
        .map(|b| (td_key(&b.trust_domain), concatenated_x509(b)))
        .collect();
    Ok(pb::X509BundlesResponse { crl: Vec::new(), bundles })
}

fn jwt_bundles_response(
    view: &CacheView,
    selectors: &SelectorSet,
    config: &WorkloadApiConfig,
) -> Result<pb::JwtBundlesResponse, Status> {
    let mut bundles = std::collections::HashMap::new();
    for bundle in visible_bundles(view, selectors, config)? {
        let jwks = bundle.to_jwks_json().map_err(|e| {
            error!(trust_domain = %bundle.trust_domain, error = %e, "could not serialize jwt bundle");
            Status::unavailable(format!("could not serialize response: {e}"))
        })?;
        bundles.insert(td_key(&bundle.trust_domain), jwks.into_bytes());
    }
    Ok(pb::JwtBundlesResponse { bundles })
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = MessageStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = MessageStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = MessageStream<pb::JwtBundlesResponse>;

    #[instrument(skip_all, name = "FetchX509SVID")]
    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self.caller(&request).await?;
        self.follow(selectors, x509_svid_response).await
    }

    #[instrument(skip_all, name = "FetchX509Bundles")]
    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let selectors = self.caller(&request).await?;
        self.follow(selectors, x509_bundles_response).await
    }

    #[instrument(skip_all, name = "FetchJWTBundles")]
    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.caller(&request).await?;
        self.follow(selectors, jwt_bundles_response).await
    }

    #[instrument(skip_all, name = "FetchJWTSVID")]
    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_security_header(&request)?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            error!("missing required audience parameter");
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let wanted = match req.spiffe_id.as_str() {
            "" => None,
            id => Some(SpiffeId::parse(id).map_err(|e| {
                error!(spiffe_id = id, error = %e, "invalid requested SPIFFE ID");
                Status::invalid_argument(format!("invalid requested SPIFFE ID: {e}"))
            })?),
        };
        let selectors = self.attestor.attest(&request).await?;
        let (_interest, rx) = self.ready_view(&selectors).await?;
        let view = Arc::clone(&rx.borrow());
        let mut svids = Vec::new();
        for identity in served_identities(&view, &selectors) {
            if wanted.as_ref().is_some_and(|w| *w != identity.spiffe_id) {
                continue;
            }
            let token =
                self.jwt_source.fetch_jwt_svid(&identity, &req.audience).await.map_err(|e| {
                    error!(spiffe_id = %identity.spiffe_id, error = %e, "could not fetch JWT-SVID");
                    Status::unavailable(format!("could not fetch JWT-SVID: {e}"))
                })?;
            debug!(spiffe_id = %identity.spiffe_id, expires_at = token.expires_at, "fetched JWT-SVID");
            svids.push(pb::Jwtsvid {
                spiffe_id: identity.spiffe_id.as_str().to_owned(),
                svid: token.token,
                hint: identity.hint.clone(),
            });
        }
        if svids.is_empty() {
            error!(registered = false, selectors = ?selectors, "no identity issued");
            return Err(no_identity());
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    #[instrument(skip_all, name = "ValidateJWTSVID")]
    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_security_header(&request)?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            error!("missing required audience parameter");
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            error!("missing required svid parameter");
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let selectors = self.attestor.attest(&request).await?;
        let view = self.cache.current();
        let identities = view.identities_for(&selectors);
        let mut bundles: BTreeMap<TrustDomain, Arc<Bundle>> =
            view.federated_bundles_for(&identities);
        bundles.insert(view.bundle.trust_domain.clone(), Arc::clone(&view.bundle));
        let (spiffe_id, claims) =
            jwt::validate(&req.svid, &req.audience, &bundles, SystemTime::now()).map_err(
                |message| {
                    warn!(audience = %req.audience, error = %message, "failed to validate JWT");
                    Status::invalid_argument(message)
                },
            )?;
        debug!(spiffe_id = %spiffe_id, "validated JWT-SVID");
        let foreign = !spiffe_id.is_member_of(&view.bundle.trust_domain);
        let claims = jwt::shown_claims(claims, foreign, &self.config.allowed_foreign_jwt_claims);
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: spiffe_id.as_str().to_owned(),
            claims: Some(claims),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn svid(id: &str, der: &[u8]) -> pb::X509svid {
        pb::X509svid {
            spiffe_id: id.to_owned(),
            x509_svid: der.to_vec(),
            x509_svid_key: b"key".to_vec(),
            bundle: b"bundle".to_vec(),
            hint: String::new(),
        }
    }

    fn federated(keys: impl Iterator<Item = usize>) -> HashMap<String, Vec<u8>> {
        keys.map(|i| (format!("spiffe://td{i}.example"), vec![u8::try_from(i).unwrap(); 3]))
            .collect()
    }

    #[test]
    fn equal_messages_have_equal_fingerprints_whatever_their_map_order() {
        let a = pb::X509svidResponse {
            svids: vec![svid("spiffe://example.org/a", b"der")],
            crl: Vec::new(),
            federated_bundles: federated(0..50),
        };
        let b = pb::X509svidResponse { federated_bundles: federated((0..50).rev()), ..a.clone() };
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
        let bundles = pb::X509BundlesResponse { crl: Vec::new(), bundles: federated(0..50) };
        let reversed =
            pb::X509BundlesResponse { bundles: federated((0..50).rev()), ..bundles.clone() };
        assert_eq!(bundles.fingerprint(), reversed.fingerprint());
        let jwt = pb::JwtBundlesResponse { bundles: federated(0..50) };
        assert_eq!(
            jwt.fingerprint(),
            pb::JwtBundlesResponse { bundles: federated((0..50).rev()) }.fingerprint()
        );
    }

    #[test]
    fn a_changed_field_changes_the_fingerprint() {
        let base = pb::X509svidResponse {
            svids: vec![svid("spiffe://example.org/a", b"der")],
            crl: Vec::new(),
            federated_bundles: federated(0..2),
        };
        let rotated = pb::X509svidResponse {
            svids: vec![svid("spiffe://example.org/a", b"de2")],
            ..base.clone()
        };
        let more = pb::X509svidResponse {
            svids: vec![
                svid("spiffe://example.org/a", b"der"),
                svid("spiffe://example.org/b", b"der"),
            ],
            ..base.clone()
        };
        let bundle_gone =
            pb::X509svidResponse { federated_bundles: federated(0..1), ..base.clone() };
        let fingerprints = [&base, &rotated, &more, &bundle_gone].map(|m| m.fingerprint());
        for (i, a) in fingerprints.iter().enumerate() {
            for b in &fingerprints[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn field_boundaries_count() {
        let a =
            pb::JwtBundlesResponse { bundles: HashMap::from([("ab".to_owned(), b"c".to_vec())]) };
        let b =
            pb::JwtBundlesResponse { bundles: HashMap::from([("a".to_owned(), b"bc".to_vec())]) };
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
