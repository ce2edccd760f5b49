//! `gcp_iit`: Google Compute Engine instance identity tokens (SPIRE v1.13.3
//! `pkg/common/plugin/gcp`, `pkg/agent/plugin/nodeattestor/gcpiit`,
//! `pkg/server/plugin/nodeattestor/gcpiit`).
//!
//! 1. The agent ([`GcpIitAttestor`]) asks the metadata server for an identity token
//!    (`GET http://<identity_token_host>/computeMetadata/v1/instance/service-accounts/<account>/identity?audience=spire-gcp-node-attestor&format=full`,
//!    header `Metadata-Flavor: Google`) and sends the token's bytes as the payload.
//! 2. The server ([`GcpIitVerifier`]) checks the token: an RS256 JWS whose `kid` names one of
//!    Google's signing certificates (fetched from `https://www.googleapis.com/oauth2/v1/certs`
//!    and kept until the answer's `Expires`), audience `spire-gcp-node-attestor`, `nbf`,
//!    `exp` and `iat` with one minute of leeway, and the token's project in
//!    `projectid_allow_list`.
//! 3. The agent is attested at once as `spiffe://<td>/spire/agent` + the agent path template
//!    (default `/{{ .PluginName }}/{{ .ProjectID }}/{{ .InstanceID }}`), with the selectors
//!    `project-id:<id>`, `zone:<zone>` and `instance-name:<name>`. The agent may not attest
//!    again (`can_reattest` false): the server refuses a second attestation of the same agent
//!    ID until the agent is evicted (trust on first use, decided where the attestation is
//!    stored).
//! 4. With `use_instance_metadata`, once the agent ID is known not to be attested before, the
//!    Compute Engine API is asked about the instance ([`compute`]) and its tags, service
//!    accounts, allowed labels and allowed metadata items become selectors too.
//!
//! Refusals carry SPIRE's codes and go-jose's messages for the failures of the token.
//!
//! What ward does not do: the agent path template takes field actions only (see
//! [`FieldTemplate`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Deserialize;
use ward_core::TrustDomain;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::field_template::{FieldTemplate, agent_id};
use super::http_get::HttpGetter;
use super::jws::{CRYPTO_FAILURE, CompactJws, RegisteredClaims};
use super::x509pop::go_json_error;
use compute::{ComputeClient, Environment, InstanceMetadataConfig};

use super::{
    AttestedAgent, NodeAttestError, NodeAttestor, Refusal, RefusalCode, ServerNodeAttestor,
    Verification,
};

/// The attestation type name.
pub const NAME: &str = "gcp_iit";
/// The audience the agent asks the token for and the server requires.
pub const AUDIENCE: &str = "spire-gcp-node-attestor";
/// Where the agent asks for its token by default.
pub const DEFAULT_IDENTITY_TOKEN_HOST: &str = "metadata.google.internal";
/// The service account whose token the agent asks for by default.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Where Google publishes the certificates of the keys that sign identity tokens.
pub const GOOGLE_CERTS_URL: &str = "https://www.googleapis.com/oauth2/v1/certs";
/// SPIRE's default agent path template.
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str =
    "/{{ .PluginName }}/{{ .ProjectID }}/{{ .InstanceID }}";

/// The fields an agent path template may name (SPIRE's `ComputeEngine` and `PluginName`).
const TEMPLATE_FIELDS: &[&str] = &[
    "PluginName",
    "ProjectID",
    "ProjectNumber",
    "Zone",
    "InstanceID",
    "InstanceName",
    "InstanceCreationTimestamp",
];

/// go-jose's validation leeway for `nbf`, `exp` and `iat`, seconds.
const LEEWAY: i64 = 60;

fn config_error(reason: impl Into<String>) -> NodeAttestError {
    NodeAttestError::Config { attestor: NAME, reason: reason.into() }
}

// ---------------------------------------------------------------------------------------------
// Agent side

/// Where the agent asks for its token (SPIRE's agent `plugin_data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpIitAgentConfig {
    /// `identity_token_host`: the metadata server's host (with a port when not 80).
    pub identity_token_host: String,
    /// `service_account`: whose token to ask for.
    pub service_account: String,
}

impl Default for GcpIitAgentConfig {
    fn default() -> Self {
        Self {
            identity_token_host: DEFAULT_IDENTITY_TOKEN_HOST.to_owned(),
            service_account: DEFAULT_SERVICE_ACCOUNT.to_owned(),
        }
    }
}

/// What Go's `url.URL.EscapedPath` escapes in a path: all but unreserved characters and
/// `$&+,/:;=@`.
const PATH_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b',')
    .remove(b'/')
    .remove(b':')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

impl GcpIitAgentConfig {
    /// The URL the token is asked for at.
    pub fn identity_token_url(&self) -> String {
        let path = format!(
            "/computeMetadata/v1/instance/service-accounts/{}/identity",
            self.service_account
        );
        format!(
            "http://{}{}?audience={AUDIENCE}&format=full",
            self.identity_token_host,
            percent_encoding::utf8_percent_encode(&path, PATH_ESCAPE)
        )
    }
}

/// The agent side: asks the metadata server for a fresh token at each attestation.
#[derive(Debug)]
pub struct GcpIitAttestor {
    config: GcpIitAgentConfig,
    client: HttpGetter,
}

impl GcpIitAttestor {
    /// An attestor for `config` (empty values take SPIRE's defaults).
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] when the HTTP client cannot start.
    pub fn new(mut config: GcpIitAgentConfig) -> Result<Self, NodeAttestError> {
        if config.identity_token_host.is_empty() {
            config.identity_token_host = DEFAULT_IDENTITY_TOKEN_HOST.to_owned();
        }
        if config.service_account.is_empty() {
            config.service_account = DEFAULT_SERVICE_ACCOUNT.to_owned();
        }
        let client = HttpGetter::new("ward-gcp-iit")
            .map_err(|e| config_error(format!("unable to start the HTTP client: {e}")))?;
        Ok(Self { config, client })
    }
}

impl NodeAttestor for GcpIitAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        let failed =
            |why: String| config_error(format!("unable to retrieve valid identity token: {why}"));
        let response = self
            .client
            .get(&self.config.identity_token_url(), &[("Metadata-Flavor", "Google")])
            .map_err(failed)?;
        if response.status != 200 {
            return Err(failed(format!("unexpected status code: {}", response.status)));
        }
        Ok(response.body.to_vec())
    }

    fn answer(&self, _challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        Err(NodeAttestError::UnexpectedChallenge)
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// The server's `gcp_iit` settings.
#[derive(Debug, Clone)]
pub struct GcpIitServerConfig {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// `projectid_allow_list`: the projects whose instances may attest (required).
    pub project_id_allow_list: Vec<String>,
    /// `agent_path_template`; `None` is [`DEFAULT_AGENT_PATH_TEMPLATE`].
    pub agent_path_template: Option<String>,
    /// Where Google's certificates are fetched from; `None`: only `extra_certificates`.
    pub certs_url: Option<String>,
    /// Certificates trusted besides the fetched ones, DER by key ID.
    pub extra_certificates: BTreeMap<String, Vec<u8>>,
    /// `use_instance_metadata` and its settings; `None`: the token's selectors only.
    pub instance_metadata: Option<InstanceMetadataConfig>,
}

/// A signing key: the RSA public key (PKCS#1 DER) of a certificate, or why it has none.
#[derive(Debug, Clone)]
enum SigningKey {
    Rsa(Vec<u8>),
    Other,
}

fn signing_key(der: &[u8]) -> Result<SigningKey, ()> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| ())?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() == "1.2.840.113549.1.1.1" {
        Ok(SigningKey::Rsa(spki.subject_public_key.data.to_vec()))
    } else {
        Ok(SigningKey::Other)
    }
}

/// Parses Google's certificate answer: a JSON object of PEM certificates by key ID.
///
/// # Errors
/// SPIRE's texts.
fn parse_certificates(body: &[u8]) -> Result<BTreeMap<String, SigningKey>, String> {
    let data: BTreeMap<String, String> = serde_json::from_slice(body)
        .map_err(|e| format!("unable to unmarshal certificate response: {}", go_json_error(&e)))?;
    let mut keys = BTreeMap::new();
    for (kid, text) in data {
        let block = pem::parse(text.as_bytes())
            .map_err(|_| "unable to unmarshal certificate response: malformed PEM block")?;
        let key = signing_key(block.contents())
            .map_err(|()| "unable to unmarshal certificate response: malformed certificate PEM")?;
        keys.insert(kid, key);
    }
    Ok(keys)
}

/// Google's keys as last fetched, and until when they hold (`None`: fetch each time, as SPIRE
/// does when the answer has no `Expires`).
#[derive(Debug, Default)]
struct Cache {
    keys: BTreeMap<String, SigningKey>,
    expires: Option<SystemTime>,
}

/// The server side.
#[derive(Debug)]
pub struct GcpIitVerifier {
    trust_domain: TrustDomain,
    allow: Vec<String>,
    template: FieldTemplate,
    certs_url: Option<String>,
    extra: BTreeMap<String, SigningKey>,
    client: HttpGetter,
    cache: Mutex<Cache>,
    instance_metadata: Option<(InstanceMetadataConfig, ComputeClient)>,
}

impl GcpIitVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] with SPIRE's sentence when the allow list is empty, the
    /// template is refused, or an extra certificate does not parse.
    pub fn new(config: GcpIitServerConfig) -> Result<Self, NodeAttestError> {
        if config.project_id_allow_list.is_empty() {
            return Err(config_error("projectid_allow_list is required"));
        }
        let template = FieldTemplate::parse(
            config.agent_path_template.as_deref().unwrap_or(DEFAULT_AGENT_PATH_TEMPLATE),
            TEMPLATE_FIELDS,
        )
        .map_err(config_error)?;
        let extra = config
            .extra_certificates
            .into_iter()
            .map(|(kid, der)| {
                signing_key(&der)
                    .map(|k| (kid.clone(), k))
                    .map_err(|()| config_error(format!("certificate {kid:?} does not parse")))
            })
            .collect::<Result<_, _>>()?;
        let client = HttpGetter::new("ward-gcp-iit")
            .map_err(|e| config_error(format!("unable to start the HTTP client: {e}")))?;
        let instance_metadata = match config.instance_metadata {
            None => None,
            Some(c) => Some((
                c,
                ComputeClient::new()
                    .map_err(|e| config_error(format!("unable to start the HTTP client: {e}")))?,
            )),
        };
        Ok(Self {
            instance_metadata,
            trust_domain: config.trust_domain,
            allow: config.project_id_allow_list,
            template,
            certs_url: config.certs_url,
            extra,
            client,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The keys tokens may be signed with: Google's (fetched again once the cache has
    /// expired) and the extra ones.
    fn keys(&self) -> Result<BTreeMap<String, SigningKey>, String> {
        let mut all = self.extra.clone();
        if let Some(url) = &self.certs_url {
            let cache = || self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (mut keys, fresh) = {
                let held = cache();
                (held.keys.clone(), held.expires.is_some_and(|at| SystemTime::now() <= at))
            };
            if !fresh {
                // Fetched without the lock: a slow endpoint must not queue attestations behind
                // one another (two may both fetch; the later answer is kept).
                let response = self.client.get(url, &[])?;
                if response.status != 200 {
                    return Err(format!("unexpected status code: {}", response.status));
                }
                keys = parse_certificates(&response.body)?;
                let expires = response
                    .headers
                    .get(http::header::EXPIRES)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| httpdate::parse_http_date(v).ok());
                *cache() = Cache { keys: keys.clone(), expires };
            }
            all.extend(keys);
        }
        Ok(all)
    }
}

/// The claims of an identity token ward reads.
#[derive(Debug, Clone, Default, Deserialize)]
struct IdentityToken {
    #[serde(flatten)]
    registered: RegisteredClaims,
    #[serde(default)]
    google: Google,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Google {
    #[serde(default)]
    compute_engine: ComputeEngine,
}

/// The instance a token names.
#[derive(Debug, Clone, Default, Deserialize)]
struct ComputeEngine {
    #[serde(default)]
    project_id: String,
    #[serde(default)]
    project_number: i64,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    instance_name: String,
    #[serde(default)]
    instance_creation_timestamp: i64,
}

impl GcpIitVerifier {
    /// Parses and verifies the token: its claims, or the refusal.
    fn verify(&self, token: &[u8], now: i64) -> Result<IdentityToken, Refusal> {
        use RefusalCode::{Internal, InvalidArgument, PermissionDenied};
        // SPIRE fetches the keys before it reads the token.
        let keys = self.keys().map_err(|e| Refusal::new(Internal, e))?;
        let unparsable = |why: String| {
            Refusal::new(InvalidArgument, format!("unable to parse the identity token: {why}"))
        };
        let jws = CompactJws::parse(token, &["RS256"]).map_err(unparsable)?;
        let bad_signature = |why: &str| {
            Refusal::new(
                InvalidArgument,
                format!("failed to validate the identity token signature: {why}"),
            )
        };
        let Some(key) = keys.get(&jws.kid).filter(|_| !jws.kid.is_empty()) else {
            return Err(bad_signature(
                "go-jose/go-jose: JWK with matching kid not found in JWK Set",
            ));
        };
        let verified = match key {
            SigningKey::Rsa(public) => {
                jws.verifies_with(&jsonwebtoken::DecodingKey::from_rsa_der(public))
            }
            SigningKey::Other => false,
        };
        if !verified {
            return Err(bad_signature(CRYPTO_FAILURE));
        }
        let claims: IdentityToken =
            serde_json::from_slice(&jws.claims).map_err(|e| bad_signature(&go_json_error(&e)))?;
        claims.registered.validate(AUDIENCE, now, LEEWAY).map_err(|e| {
            Refusal::new(
                PermissionDenied,
                format!("failed to validate the identity token claims: {e}"),
            )
        })?;
        Ok(claims)
    }
}

impl ServerNodeAttestor for GcpIitVerifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn begin(&self, payload: &[u8], now: i64) -> Result<Verification, Refusal> {
        let token = self.verify(payload, now)?;
        let ce = token.google.compute_engine;
        if !self.allow.contains(&ce.project_id) {
            return Err(Refusal::new(
                RefusalCode::PermissionDenied,
                format!("identity token project ID {:?} is not in the allow list", ce.project_id),
            ));
        }
        let values = BTreeMap::from([
            ("PluginName", NAME.to_owned()),
            ("ProjectID", ce.project_id.clone()),
            ("ProjectNumber", ce.project_number.to_string()),
            ("Zone", ce.zone.clone()),
            ("InstanceID", ce.instance_id.clone()),
            ("InstanceName", ce.instance_name.clone()),
            ("InstanceCreationTimestamp", ce.instance_creation_timestamp.to_string()),
        ]);
        let agent_id =
            agent_id(&self.trust_domain, &self.template.render(&values)).map_err(|e| {
                Refusal::new(RefusalCode::Internal, format!("failed to create agent ID: {e}"))
            })?;
        Ok(Verification::Attested(AttestedAgent {
            agent_id,
            selector_values: vec![
                format!("project-id:{}", ce.project_id),
                format!("zone:{}", ce.zone),
                format!("instance-name:{}", ce.instance_name),
            ],
            can_reattest: false,
        }))
    }

    fn complete(&self, mut attested: AttestedAgent, now: i64) -> Result<AttestedAgent, Refusal> {
        let Some((config, compute)) = &self.instance_metadata else {
            return Ok(attested);
        };
        // `begin` wrote the token's project, zone and instance name as the first selectors.
        let value = |prefix: &str| {
            attested
                .selector_values
                .iter()
                .find_map(|v| v.strip_prefix(prefix))
                .unwrap_or_default()
                .to_owned()
        };
        let (project, zone, name) = (value("project-id:"), value("zone:"), value("instance-name:"));
        let instance = compute.instance(
            config.service_account_file.as_deref(),
            &Environment::from_process(),
            &project,
            &zone,
            &name,
            now,
        )?;
        attested.selector_values.extend(compute::instance_selectors(config, &instance)?);
        Ok(attested)
    }
}

pub mod compute;

#[cfg(test)]
mod tests;
