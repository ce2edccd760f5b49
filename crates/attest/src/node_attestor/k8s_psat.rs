//! `k8s_psat`: Kubernetes projected service-account tokens (SPIRE v1.13.3
//! `pkg/agent/plugin/nodeattestor/k8spsat`, `pkg/server/plugin/nodeattestor/k8spsat`,
//! `pkg/common/plugin/k8s`).
//!
//! The agent runs in a pod whose service-account token is projected with the server's
//! audience.
//! 1. The agent ([`K8sPsatAttestor`]) sends [`AttestationData`], `{"cluster": <name>,
//!    "token": <the token file's text>}`, and takes no challenge.
//! 2. The server ([`K8sPsatVerifier`]) looks the cluster up in its configuration and asks
//!    that cluster's API server for a TokenReview of the token with the cluster's audiences;
//!    the token must be authenticated, valid for one of them, and belong to a service account
//!    on the cluster's allow list (`<namespace>:<name>`). The review names the pod the token
//!    is bound to; the server reads that Pod and its Node.
//! 3. The agent is `spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node UID>`, with the
//!    selectors `cluster`, `agent_ns`, `agent_sa`, `agent_pod_name`, `agent_pod_uid`,
//!    `agent_node_ip`, `agent_node_name`, `agent_node_uid`, and `agent_node_label:<k>:<v>` /
//!    `agent_pod_label:<k>:<v>` for each allowed label key present. The agent may attest
//!    again.
//!
//! What ward's API client does not do (SPIRE's client-go does): kubeconfig `exec` and
//! `auth-provider` credentials, `insecure-skip-tls-verify`, and API servers over plain HTTP.

pub mod apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use ward_core::TrustDomain;

pub use self::apiserver::{ApiServerClient, Credentials, KubeApi, TokenReviewStatus};
use super::x509pop::go_json_error;
use super::{
    AttestedAgent, NodeAttestError, NodeAttestor, Refusal, RefusalCode, ServerNodeAttestor,
    Verification,
};

/// The attestation type name.
pub const NAME: &str = "k8s_psat";

/// Where the agent reads its token by default.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/spire-agent";

/// The audience a cluster's tokens are reviewed for by default.
pub const DEFAULT_AUDIENCE: &str = "spire-server";

/// The TokenReview extra attribute naming the pod a token is bound to.
const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
/// The TokenReview extra attribute holding the UID of the pod a token is bound to.
const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";

/// The attestation payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationData {
    /// The cluster name, as configured on both sides.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub cluster: String,
    /// The projected service-account token (a JWT).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub token: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl AttestationData {
    /// The payload as spire-agent's `json.Marshal` writes it (`<`, `>`, `&`, U+2028 and
    /// U+2029 escaped; `cluster` before `token`, as in SPIRE's struct), byte for byte.
    pub fn to_go_json(&self) -> Vec<u8> {
        let value = serde_json::json!({ "cluster": self.cluster, "token": self.token });
        ward_proto::go::marshal(&value).into_bytes()
    }
}

// ---------------------------------------------------------------------------------------------
// Agent side

/// SPIRE's agent `plugin_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatAgentConfig {
    /// The cluster name the server knows this cluster by.
    pub cluster: String,
    /// The projected token's file.
    pub token_path: PathBuf,
}

/// The agent side: reads the token when an attestation starts (the kubelet rotates it).
#[derive(Debug, Clone)]
pub struct K8sPsatAttestor {
    config: K8sPsatAgentConfig,
}

fn config_error(reason: impl Into<String>) -> NodeAttestError {
    NodeAttestError::Config { attestor: NAME, reason: reason.into() }
}

impl K8sPsatAttestor {
    /// An attestor for `config`.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] without a cluster name (SPIRE's `missing required cluster
    /// block`).
    pub fn new(config: K8sPsatAgentConfig) -> Result<Self, NodeAttestError> {
        if config.cluster.is_empty() {
            return Err(config_error("missing required cluster block"));
        }
        Ok(Self { config })
    }
}

impl NodeAttestor for K8sPsatAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        let path = &self.config.token_path;
        let data = std::fs::read(path).map_err(|source| NodeAttestError::Evidence {
            attestor: NAME,
            path: path.clone(),
            source,
        })?;
        if data.is_empty() {
            return Err(config_error(format!(
                "unable to load token from {}: {:?} is empty",
                path.display(),
                path.display().to_string()
            )));
        }
        // Sent as read, as spire-agent sends it (Go's string conversion keeps invalid UTF-8
        // bytes, which its JSON encoder then writes as U+FFFD, as this does).
        let token = String::from_utf8_lossy(&data).into_owned();
        Ok(AttestationData { cluster: self.config.cluster.clone(), token }.to_go_json())
    }

    fn answer(&self, _challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        Err(NodeAttestError::UnexpectedChallenge)
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// One cluster of SPIRE's server `plugin_data` `clusters` map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatClusterConfig {
    /// `<namespace>:<service account>` names whose tokens attest agents.
    pub service_account_allow_list: Vec<String>,
    /// The audiences tokens are reviewed for (SPIRE's default: `["spire-server"]`).
    pub audience: Vec<String>,
    /// The API server and credentials: a kubeconfig file, or the in-cluster credentials.
    pub credentials: Credentials,
    /// Node label keys turned into `agent_node_label` selectors.
    pub allowed_node_label_keys: Vec<String>,
    /// Pod label keys turned into `agent_pod_label` selectors.
    pub allowed_pod_label_keys: Vec<String>,
}

/// SPIRE's server `plugin_data`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPsatServerConfig {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// The clusters, by name.
    pub clusters: BTreeMap<String, K8sPsatClusterConfig>,
}

#[derive(Debug)]
struct Cluster {
    service_accounts: BTreeSet<String>,
    audience: Vec<String>,
    api: Arc<dyn KubeApi>,
    node_label_keys: BTreeSet<String>,
    pod_label_keys: BTreeSet<String>,
}

/// The server side.
#[derive(Debug)]
pub struct K8sPsatVerifier {
    trust_domain: TrustDomain,
    clusters: BTreeMap<String, Cluster>,
}

impl K8sPsatVerifier {
    /// A verifier asking each cluster's API server.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] with SPIRE's sentence for a cluster without allowed
    /// service accounts, or when a client's runtime cannot start.
    pub fn new(config: K8sPsatServerConfig) -> Result<Self, NodeAttestError> {
        Self::with_api(config, |c| {
            ApiServerClient::new(c.credentials.clone())
                .map(|a| Arc::new(a) as Arc<dyn KubeApi>)
                .map_err(|e| format!("unable to start the API client: {e}"))
        })
    }

    /// A verifier asking the API `api` makes for each cluster (tests give a fake one).
    ///
    /// # Errors
    /// As [`K8sPsatVerifier::new`].
    pub fn with_api(
        config: K8sPsatServerConfig,
        mut api: impl FnMut(&K8sPsatClusterConfig) -> Result<Arc<dyn KubeApi>, String>,
    ) -> Result<Self, NodeAttestError> {
        let mut clusters = BTreeMap::new();
        for (name, c) in config.clusters {
            if c.service_account_allow_list.is_empty() {
                return Err(config_error(format!(
                    "cluster {name:?} configuration must have at least one service account \
                     allowed"
                )));
            }
            let cluster = Cluster {
                service_accounts: c.service_account_allow_list.iter().cloned().collect(),
                audience: c.audience.clone(),
                api: api(&c).map_err(config_error)?,
                node_label_keys: c.allowed_node_label_keys.iter().cloned().collect(),
                pod_label_keys: c.allowed_pod_label_keys.iter().cloned().collect(),
            };
            clusters.insert(name, cluster);
        }
        Ok(Self { trust_domain: config.trust_domain, clusters })
    }
}

fn refuse(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

fn internal(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalCode::Internal, message)
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name), SPIRE's sentences
/// otherwise.
fn names_from_status(status: &TokenReviewStatus) -> Result<(String, String), String> {
    let username = &status.user.username;
    if username.is_empty() {
        return Err("empty username".to_owned());
    }
    let names: Vec<&str> = username.split(':').collect();
    if names.len() != 4 {
        return Err(format!("unexpected username format: {username}"));
    }
    if names[2].is_empty() {
        return Err("missing namespace".to_owned());
    }
    if names[3].is_empty() {
        return Err("missing service account name".to_owned());
    }
    Ok((names[2].to_owned(), names[3].to_owned()))
}

/// The one value of the extra attribute `key`; `what` names it in SPIRE's sentences.
fn single_extra(
    status: &TokenReviewStatus,
    key: &str,
    what: &str,
    count_word: &str,
) -> Result<String, String> {
    let Some(values) = status.user.extra.get(key) else {
        return Err(format!("missing {what}"));
    };
    if values.len() != 1 {
        return Err(format!("expected 1 {count_word} but got: {}", values.len()));
    }
    if values[0].is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(values[0].clone())
}

impl ServerNodeAttestor for K8sPsatVerifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn begin(&self, payload: &[u8], _now: i64) -> Result<Verification, Refusal> {
        let data: AttestationData = serde_json::from_slice(payload).map_err(|e| {
            refuse(
                RefusalCode::InvalidArgument,
                format!("failed to unmarshal data payload: {}", go_json_error(&e)),
            )
        })?;
        if data.cluster.is_empty() {
            return Err(refuse(
                RefusalCode::InvalidArgument,
                "missing cluster in attestation data",
            ));
        }
        if data.token.is_empty() {
            return Err(refuse(RefusalCode::InvalidArgument, "missing token in attestation data"));
        }
        let Some(cluster) = self.clusters.get(&data.cluster) else {
            return Err(refuse(
                RefusalCode::InvalidArgument,
                format!("not configured for cluster {:?}", data.cluster),
            ));
        };
        let status = cluster
            .api
            .validate_token(&data.token, &cluster.audience)
            .map_err(|e| internal(format!("unable to validate token with TokenReview API: {e}")))?;
        if !status.authenticated {
            return Err(refuse(
                RefusalCode::PermissionDenied,
                "token not authenticated according to TokenReview API",
            ));
        }
        let (namespace, service_account) = names_from_status(&status).map_err(|e| {
            internal(format!("fail to parse username from token review status: {e}"))
        })?;
        let full_name = format!("{namespace}:{service_account}");
        if !cluster.service_accounts.contains(&full_name) {
            return Err(refuse(
                RefusalCode::PermissionDenied,
                format!("{full_name:?} is not an allowed service account"),
            ));
        }
        let pod_name = single_extra(&status, POD_NAME_KEY, "pod name", "name")
            .map_err(|e| internal(format!("fail to get pod name from token review status: {e}")))?;
        let pod_uid = single_extra(&status, POD_UID_KEY, "pod UID", "UID")
            .map_err(|e| internal(format!("fail to get pod UID from token review status: {e}")))?;
        let pod = cluster
            .api
            .pod(&namespace, &pod_name)
            .map_err(|e| internal(format!("fail to get pod from k8s API server: {e}")))?;
        let node = cluster
            .api
            .node(&pod.spec.node_name)
            .map_err(|e| internal(format!("fail to get node from k8s API server: {e}")))?;
        let node_uid = node.metadata.uid;
        if node_uid.is_empty() {
            return Err(internal("node UID is empty"));
        }
        let agent_id = self
            .trust_domain
            .spiffe_id(&format!("/spire/agent/{NAME}/{}/{node_uid}", data.cluster))
            .map_err(|e| internal(format!("invalid agent ID: {e}")))?;
        let mut selector_values = vec![
            format!("cluster:{}", data.cluster),
            format!("agent_ns:{namespace}"),
            format!("agent_sa:{service_account}"),
            format!("agent_pod_name:{pod_name}"),
            format!("agent_pod_uid:{pod_uid}"),
            format!("agent_node_ip:{}", pod.status.host_ip),
            format!("agent_node_name:{}", pod.spec.node_name),
            format!("agent_node_uid:{node_uid}"),
        ];
        for (key, value) in &node.metadata.labels {
            if cluster.node_label_keys.contains(key) {
                selector_values.push(format!("agent_node_label:{key}:{value}"));
            }
        }
        for (key, value) in &pod.metadata.labels {
            if cluster.pod_label_keys.contains(key) {
                selector_values.push(format!("agent_pod_label:{key}:{value}"));
            }
        }
        Ok(Verification::Attested(AttestedAgent { agent_id, selector_values, can_reattest: true }))
    }
}

#[cfg(test)]
mod tests;
