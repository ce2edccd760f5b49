//! Envoy's secret discovery service (SDS v3), served on the Workload API socket as SPIRE's
//! agent serves it.
//!
//! Envoy (or any xDS client) asks for secrets by name; the caller is attested like a
//! Workload API caller, by the same [`CallerAttestor`] on the same socket (no security
//! header is needed), and sees the identities whose
//! entries its selectors match:
//!
//! | name | secret |
//! |---|---|
//! | an identity's SPIFFE ID | its `tls_certificate` (PEM chain and PKCS#8 key) |
//! | [`SdsConfig::default_svid_name`] (`default`) | the first identity (lowest entry id) |
//! | `spiffe://<trust domain>` | that trust domain's validation context (own or federated) |
//! | [`SdsConfig::default_bundle_name`] (`ROOTCA`) | the own trust domain's validation context |
//! | [`SdsConfig::default_all_bundles_name`] (`ALL`) | one SPIFFE validator for every trust domain |
//! | no name | every identity and bundle, each under its own name |
//!
//! Validation contexts use Envoy's SPIFFE certificate validator
//! (`envoy.tls.cert_validator.spiffe`) unless the proxy is Envoy 1.17 or older or the
//! validator is turned off (the agent's `disable_spiffe_cert_validation`, or the Node
//! metadata key of that name); then they carry the CAs as `trusted_ca`.
//!
//! `StreamSecrets` answers each new set of names and pushes a new version whenever what the
//! caller may see changes (an SVID rotates, an entry or bundle changes); it registers the
//! caller with the cache ([`Cache::register_workload`]) for its lifetime and holds its answers
//! while an SVID the caller matches is still pending. `FetchSecrets` answers once, from what
//! the cache holds at that moment; `DeltaSecrets` is `Unimplemented`, as in SPIRE. The decisions are pure
//! functions: [`build_response`] (which secrets) and [`StreamState`] (when to answer).

mod response;
mod stream;

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, error, instrument};
use ward_core::SelectorSet;
use ward_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use ward_proto::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};

pub use response::{
    DISABLE_SPIFFE_CERT_VALIDATION_KEY, SECRET_TYPE_URL, SPIFFE_VALIDATOR_NAME,
    SPIFFE_VALIDATOR_TYPE_URL, WorkloadUpdate, build_response, spiffe_validator_wanted,
};
pub use stream::StreamState;

use crate::cache::{Cache, CacheView};
use crate::workload::CallerAttestor;

/// The agent's `sds` settings (SPIRE's `sds { ... }` block, same names and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdsConfig {
    /// The name that asks for the caller's default identity. Default `default`.
    pub default_svid_name: String,
    /// The name that asks for the own trust domain's bundle. Default `ROOTCA`.
    pub default_bundle_name: String,
    /// The name that asks for every bundle the caller may see in one SPIFFE validator.
    /// Default `ALL`.
    pub default_all_bundles_name: String,
    /// Serve validation contexts as plain `trusted_ca` instead of the SPIFFE validator
    /// (a proxy may override it with the Node metadata key of the same name). Default false.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: "default".to_owned(),
            default_bundle_name: "ROOTCA".to_owned(),
            default_all_bundles_name: "ALL".to_owned(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// The SDS v3 service over the agent's [`Cache`].
pub struct SdsService {
    config: SdsConfig,
    cache: Arc<Cache>,
    attestor: CallerAttestor,
}

impl std::fmt::Debug for SdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsService").field("config", &self.config).finish_non_exhaustive()
    }
}

impl SdsService {
    /// A service serving what `cache` holds to callers attested by `attestor`.
    pub fn new(config: SdsConfig, cache: Arc<Cache>, attestor: CallerAttestor) -> Self {
        Self { config, cache, attestor }
    }

    /// The service wrapped for a tonic router; add it to the [`Routes`] a
    /// [`WorkloadListener`](crate::workload::WorkloadListener) serves, beside the Workload API.
    ///
    /// [`Routes`]: tonic::service::Routes
    pub fn into_server(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self)
    }
}

/// The response stream of `StreamSecrets` and `DeltaSecrets`.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("Method is not implemented"))
    }

    #[instrument(skip_all)]
    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let selectors = self.attestor.attest(&request).await.inspect_err(|e| {
            error!(error = %e.message(), "failed to attest the workload");
        })?;
        let inbound = request.into_inner();
        let views = self.cache.subscribe();
        let config = self.config.clone();
        let (tx, rx) = mpsc::channel(4);
        // While the stream lasts the agent keeps (and mints) the caller's SVIDs.
        let interest = self.cache.register_workload(selectors.clone());
        tokio::spawn(async move {
            let _interest = interest;
            if let Err(status) = serve_stream(&config, &selectors, views, inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(resource_names = ?request.get_ref().resource_names))]
    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let selectors = self.attestor.attest(&request).await.inspect_err(|e| {
            error!(error = %e.message(), "failed to attest the workload");
        })?;
        let _interest = self.cache.register_workload(selectors.clone());
        let view = self.cache.current();
        let update = WorkloadUpdate::for_caller(&view, &selectors);
        let resp = build_response(&self.config, "", None, request.get_ref(), &update).inspect_err(
            |e| error!(error = %e.message(), "error building fetch secrets response"),
        )?;
        debug!(count = resp.resources.len(), "sending FetchSecrets response");
        Ok(Response::new(resp))
    }
}

/// Runs one `StreamSecrets` stream until the client goes away, the agent's cache is dropped,
/// or a request cannot be answered (the error ends the stream).
async fn serve_stream(
    config: &SdsConfig,
    selectors: &SelectorSet,
    mut views: watch::Receiver<Arc<CacheView>>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> Result<(), Status> {
    let mut state = StreamState::new();
    let mut last: Option<WorkloadUpdate> = None;
    // The view current at subscription counts as the first update.
    views.mark_changed();
    loop {
        let due = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => state.on_request(req),
                Ok(None) => return Ok(()),
                Err(status) if status.code() == Code::Cancelled => return Ok(()),
                Err(status) => {
                    error!(error = %status.message(), "received error from stream secrets client");
                    return Err(status);
                }
            },
            changed = views.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let view = Arc::clone(&views.borrow_and_update());
                // Wait until every SVID the caller should get is there, as SPIRE does before
                // its first answer.
                if view.is_pending_for(selectors) {
                    continue;
                }
                let update = WorkloadUpdate::for_caller(&view, selectors);
                if last.as_ref().is_some_and(|l| l.same_as(&update)) {
                    continue;
                }
                last = Some(update.clone());
                state.on_update(update)
            }
            () = tx.closed() => return Ok(()),
        };
        if !due {
            continue;
        }
        let resp = state.respond(config, next_nonce()?).inspect_err(|e| {
            error!(error = %e.message(), "error building stream secrets response");
        })?;
        debug!(
            version_info = %resp.version_info,
            nonce = %resp.nonce,
            count = resp.resources.len(),
            "sending StreamSecrets response"
        );
        if tx.send(Ok(resp)).await.is_err() {
            return Ok(());
        }
    }
}

/// Eight random hex characters.
fn next_nonce() -> Result<String, Status> {
    let mut bytes = [0u8; 4];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Status::internal("failed to generate a response nonce"))?;
    Ok(hex::encode(bytes))
}
