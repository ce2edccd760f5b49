//! Node attestation, the agent's side of `AttestAgent` (SPIRE v1.13.3
//! `pkg/agent/attestor/node/node.go`): a fresh P-256 key and a CSR without a URI SAN, the
//! attestor's payload on a TLS connection that presents no client certificate, challenges
//! answered until the server returns the agent SVID, then `GetBundle` on the same connection
//! to learn (or refresh) the trust domain's bundle.
//!
//! The server is checked against the bootstrap (or cached) bundle, or only by its SPIFFE ID
//! with insecure bootstrap; see `ward-spiffe-tls`.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use ward_attest::{NodeAttestError, NodeAttestor};
use ward_ca::{KeyType, PrivateKey};
use ward_core::{Bundle, TrustDomain};
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::types;

use crate::data_dir::AgentState;
use crate::server_client::{self, ConnectError, ServerTarget};

/// Why node attestation failed.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// No TLS connection to the server.
    #[error("create attestation client")]
    Connect(#[from] ConnectError),
    /// The node attestor could not produce evidence or an answer.
    #[error("node attestor")]
    Attestor(#[from] NodeAttestError),
    /// Generating the key or the CSR failed.
    #[error("generating the agent key")]
    Key(#[from] ward_ca::KeyError),
    /// The server refused or failed the attestation.
    #[error("node attestation was refused by the server: {}", .0.message())]
    Refused(tonic::Status),
    /// The server's `GetBundle` failed.
    #[error("failed to get updated bundle: {}", .0.message())]
    GetBundle(tonic::Status),
    /// The server answered with something unusable.
    #[error("{0}")]
    BadResponse(String),
}

impl AttestationError {
    /// The gRPC status the server answered with, when it did.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Refused(s) | Self::GetBundle(s) => Some(s),
            _ => None,
        }
    }
}

/// Attests the node to the server at `target` with `attestor`.
///
/// `roots` are the X.509 authorities the server must chain to; `None` is insecure bootstrap
/// (the server's ID is checked, its chain is not, and the bundle comes from its answer).
///
/// # Errors
/// [`AttestationError`] naming the step that failed.
pub async fn attest(
    target: Arc<ServerTarget>,
    td: &TrustDomain,
    roots: Option<&[Vec<u8>]>,
    attestor: Arc<dyn NodeAttestor>,
) -> Result<AgentState, AttestationError> {
    let key = PrivateKey::generate(KeyType::EcP256)?;
    let csr = ward_ca::build_csr(&key)?;
    let config = server_client::client_config(td, roots, None)?;
    let channel = server_client::channel(target, config, false).await?;

    let payload = {
        let attestor = attestor.clone();
        tokio::task::spawn_blocking(move || attestor.payload())
            .await
            .map_err(|e| AttestationError::BadResponse(format!("node attestor task: {e}")))??
    };
    let (tx, rx) = mpsc::channel(2);
    let first = agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData { r#type: attestor.name().to_owned(), payload }),
                params: Some(agentpb::AgentX509svidParams { csr }),
            },
        )),
    };
    // The receiver is alive until the stream below ends, so this cannot fail.
    let _ = tx.send(first).await;
    let mut client = agentpb::agent_client::AgentClient::new(channel.clone());
    let mut responses = client
        .attest_agent(ReceiverStream::new(rx))
        .await
        .map_err(AttestationError::Refused)?
        .into_inner();
    let (svid, reattestable) = loop {
        let msg =
            responses.message().await.map_err(AttestationError::Refused)?.ok_or_else(|| {
                AttestationError::BadResponse("server closed the attestation stream".into())
            })?;
        match msg.step {
            Some(agentpb::attest_agent_response::Step::Challenge(challenge)) => {
                let attestor = attestor.clone();
                let answer = tokio::task::spawn_blocking(move || attestor.answer(&challenge))
                    .await
                    .map_err(|e| {
                        AttestationError::BadResponse(format!("node attestor task: {e}"))
                    })??;
                let step = agentpb::attest_agent_request::Step::ChallengeResponse(answer);
                if tx.send(agentpb::AttestAgentRequest { step: Some(step) }).await.is_err() {
                    return Err(AttestationError::BadResponse(
                        "server closed the attestation stream".into(),
                    ));
                }
            }
            Some(agentpb::attest_agent_response::Step::Result(result)) => {
                let svid = result.svid.ok_or_else(|| {
                    AttestationError::BadResponse("attest response is missing SVID".into())
                })?;
                break (svid.cert_chain, result.reattestable);
            }
            None => {
                return Err(AttestationError::BadResponse(
                    "attest response has neither a result nor a challenge".into(),
                ));
            }
        }
    };
    // Half-close: the server treats the end of our requests as the end of the exchange.
    drop(tx);
    drop(responses);
    check_svid(&svid, td, &key)?;

    let bundle = fetch_bundle(channel, td).await?;
    Ok(AgentState { svid, key, bundle, reattestable })
}

/// Asks the server for its trust domain's bundle (`GetBundle`, unauthenticated) and checks it
/// as spire-agent does: it must be `td`'s and every JWT authority must have a key id.
///
/// # Errors
/// [`AttestationError::GetBundle`] or [`AttestationError::BadResponse`].
pub async fn fetch_bundle(
    channel: tonic::transport::Channel,
    td: &TrustDomain,
) -> Result<Bundle, AttestationError> {
    let proto = bundlepb::bundle_client::BundleClient::new(channel)
        .get_bundle(bundlepb::GetBundleRequest::default())
        .await
        .map_err(AttestationError::GetBundle)?
        .into_inner();
    if proto.jwt_authorities.iter().any(|k| k.key_id.is_empty()) {
        return Err(AttestationError::BadResponse(
            "invalid trust domain bundle: a JWT authority has no key ID".into(),
        ));
    }
    let bundle = ward_proto::convert::bundle_from_proto(&proto)
        .map_err(|e| AttestationError::BadResponse(format!("invalid trust domain bundle: {e}")))?;
    if &bundle.trust_domain != td {
        return Err(AttestationError::BadResponse(format!(
            "the server sent the bundle of {}, not {td}",
            bundle.trust_domain
        )));
    }
    if bundle.x509_authorities.is_empty() {
        return Err(AttestationError::BadResponse(
            "the trust domain bundle has no X.509 authority".into(),
        ));
    }
    Ok(bundle)
}

/// Checks an agent SVID the server issued: parseable, one SPIFFE ID in `td`, and the public
/// key of `key`.
///
/// # Errors
/// [`AttestationError::BadResponse`].
pub fn check_svid(
    chain: &[Vec<u8>],
    td: &TrustDomain,
    key: &PrivateKey,
) -> Result<(), AttestationError> {
    let bad = |m: String| AttestationError::BadResponse(format!("invalid SVID cert chain: {m}"));
    let leaf = chain.first().ok_or_else(|| bad("empty".into()))?;
    let facts = ward_spiffe_tls::leaf_facts(leaf).map_err(bad)?;
    if !facts.id.is_member_of(td) {
        return Err(bad(format!("{} is not in trust domain {td}", facts.id)));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    if cert.public_key().raw != key.public_key_der() {
        return Err(bad("the certificate is not for the agent's key".into()));
    }
    Ok(())
}
