//! `azure_msi`: Azure managed service identity tokens (SPIRE v1.13.3
//! `pkg/common/plugin/azure`, `pkg/agent/plugin/nodeattestor/azuremsi`,
//! `pkg/server/plugin/nodeattestor/azuremsi`).
//!
//! 1. The agent ([`AzureMsiAttestor`]) asks the instance metadata service for an access token
//!    (`GET http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=<resource_id>`,
//!    header `Metadata: true`) and sends `{"token": "<access token>"}`.
//! 2. The server ([`AzureMsiVerifier`]) checks the token against the key set its OpenID
//!    configuration names (issuer `https://login.microsoftonline.com/common/`, fetched again
//!    every hour): a JWS with a `kid` of that set, RS/PS 256–512 or ES 256/384, claims `tid`
//!    and `sub`, the tenant configured, and the audience the tenant's `resource_id` with five
//!    minutes of leeway for `nbf`, `exp` and `iat`.
//! 3. The agent is attested at once as `spiffe://<td>/spire/agent` + the agent path template
//!    (default `/{{ .PluginName }}/{{ .TenantID }}/{{ .PrincipalID }}`); it may not attest
//!    again until evicted (trust on first use, checked where the attestation is stored).
//!
//! 4. With a tenant's application credentials (`subscription_id`, `app_id`, `app_secret`) the
//!    server, once it has checked that the agent ID may attest (`complete`), asks Azure Resource
//!    Manager for the VM whose managed identity is the token's
//!    subject, then for that VM and its network interfaces ([`resource_manager`]), and the
//!    agent gets SPIRE's selectors: `subscription-id:<sub>`, `vm-name:<rg>:<vm>`,
//!    `network-security-group:<rg>:<nsg>`, `virtual-network:<rg>:<vnet>` and
//!    `virtual-network-subnet:<rg>:<vnet>:<subnet>`.
//!
//! A tenant without application credentials uses the server VM's managed identity, with the
//! subscription of the server's own instance metadata (read at start), as SPIRE's default
//! Azure credential does on a VM. What ward does not do: the rest of that default chain
//! (environment variables, workload identity). The agent path template takes field actions
//! only.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use ward_core::TrustDomain;

pub mod resource_manager;

use resource_manager::ResourceManager;
pub use resource_manager::{AppCredentials, DEFAULT_LOGIN_URL, DEFAULT_RESOURCE_MANAGER_URL};

use super::field_template::{FieldTemplate, agent_id};
use super::http_get::HttpGetter;
use super::jws::{CRYPTO_FAILURE, CompactJws, RegisteredClaims};
use super::x509pop::go_json_error;
use super::{
    AttestedAgent, NodeAttestError, NodeAttestor, Refusal, RefusalCode, ServerNodeAttestor,
    Verification,
};

/// The attestation type name.
pub const NAME: &str = "azure_msi";
/// The resource tokens are asked for by default (and the audience a tenant expects).
pub const DEFAULT_RESOURCE_ID: &str = "https://management.azure.com/";
/// The instance metadata service.
pub const DEFAULT_METADATA_HOST: &str = "169.254.169.254";
/// The OpenID issuer whose key set signs tokens.
pub const AZURE_OIDC_ISSUER: &str = "https://login.microsoftonline.com/common/";
/// SPIRE's default agent path template.
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str =
    "/{{ .PluginName }}/{{ .TenantID }}/{{ .PrincipalID }}";

/// The fields an agent path template may name.
const TEMPLATE_FIELDS: &[&str] =
    &["PluginName", "TenantID", "PrincipalID", "Issuer", "Subject", "ID"];
/// The signature algorithms SPIRE accepts, in its order.
const ALGORITHMS: &[&str] =
    &["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"];
/// SPIRE's leeway for the token's times, seconds.
const LEEWAY: i64 = 300;
/// How long a fetched key set is used.
const KEY_SET_REFRESH: Duration = Duration::from_secs(3600);

fn config_error(reason: impl Into<String>) -> NodeAttestError {
    NodeAttestError::Config { attestor: NAME, reason: reason.into() }
}

/// The first KiB of a body, as SPIRE quotes it.
fn start_of(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Agent side

/// What the agent asks for (SPIRE's agent `plugin_data`, and where the metadata service is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureMsiAgentConfig {
    /// `resource_id`: the resource the token is for.
    pub resource_id: String,
    /// The instance metadata service's host (ward's; SPIRE's is fixed).
    pub metadata_host: String,
}

impl Default for AzureMsiAgentConfig {
    fn default() -> Self {
        Self {
            resource_id: DEFAULT_RESOURCE_ID.to_owned(),
            metadata_host: DEFAULT_METADATA_HOST.to_owned(),
        }
    }
}

impl AzureMsiAgentConfig {
    /// The URL the token is asked for at.
    pub fn token_url(&self) -> String {
        let resource: String =
            url::form_urlencoded::byte_serialize(self.resource_id.as_bytes()).collect();
        format!(
            "http://{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}",
            self.metadata_host
        )
    }
}

/// The payload: the access token.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct AttestationData {
    /// The access token.
    #[serde(default)]
    pub token: String,
}

/// The agent side: asks the metadata service for a fresh token at each attestation.
#[derive(Debug)]
pub struct AzureMsiAttestor {
    config: AzureMsiAgentConfig,
    client: HttpGetter,
}

impl AzureMsiAttestor {
    /// An attestor for `config` (empty values take the defaults).
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] when the HTTP client cannot start.
    pub fn new(mut config: AzureMsiAgentConfig) -> Result<Self, NodeAttestError> {
        if config.resource_id.is_empty() {
            config.resource_id = DEFAULT_RESOURCE_ID.to_owned();
        }
        if config.metadata_host.is_empty() {
            config.metadata_host = DEFAULT_METADATA_HOST.to_owned();
        }
        let client = HttpGetter::new("ward-azure-msi")
            .map_err(|e| config_error(format!("unable to start the HTTP client: {e}")))?;
        Ok(Self { config, client })
    }

    fn token(&self) -> Result<String, String> {
        let response = self.client.get(&self.config.token_url(), &[("Metadata", "true")])?;
        if response.status != 200 {
            return Err(format!(
                "unexpected status code {}: {}",
                response.status,
                start_of(&response.body)
            ));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            access_token: String,
        }
        let r: TokenResponse = serde_json::from_slice(&response.body)
            .map_err(|e| format!("unable to decode response: {}", go_json_error(&e)))?;
        if r.access_token.is_empty() {
            return Err("response missing access token".into());
        }
        Ok(r.access_token)
    }
}

impl NodeAttestor for AzureMsiAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        let token =
            self.token().map_err(|e| config_error(format!("unable to fetch token: {e}")))?;
        serde_json::to_vec(&AttestationData { token })
            .map_err(|e| config_error(format!("failed to marshal payload: {e}")))
    }

    fn answer(&self, _challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        Err(NodeAttestError::UnexpectedChallenge)
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// The server's `azure_msi` settings.
#[derive(Debug, Clone)]
pub struct AzureMsiServerConfig {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// `tenants`: the tenant IDs that may attest, each with the resource its tokens are for
    /// (the audience) and the credentials selectors are looked up with.
    pub tenants: BTreeMap<String, AzureTenant>,
    /// `agent_path_template`; `None` is [`DEFAULT_AGENT_PATH_TEMPLATE`].
    pub agent_path_template: Option<String>,
    /// The OpenID issuer whose configuration names the key set; `None`: only `extra_keys`.
    pub oidc_issuer: Option<String>,
    /// A JSON Web Key Set trusted besides the fetched one.
    pub extra_keys: Option<jsonwebtoken::jwk::JwkSet>,
    /// Where tokens are asked for ([`DEFAULT_LOGIN_URL`]).
    pub login_url: String,
    /// Azure Resource Manager ([`DEFAULT_RESOURCE_MANAGER_URL`]).
    pub resource_manager_url: String,
    /// The instance metadata service asked for the server VM's subscription and its managed
    /// identity's tokens when a tenant has no application credentials (empty:
    /// [`DEFAULT_METADATA_URL`]).
    pub metadata_url: String,
}

/// The instance metadata service of an Azure VM.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
/// How long one request to the instance metadata service may take (ward's bound: off Azure
/// the address does not answer).
const METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The server VM's subscription, from its instance metadata, as SPIRE's
/// `azure.FetchInstanceMetadata` reads it (and with its texts).
fn own_subscription(metadata_url: &str) -> Result<String, String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Compute {
        name: String,
        #[serde(rename = "subscriptionId")]
        subscription_id: String,
        #[serde(rename = "resourceGroupName")]
        resource_group_name: String,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct InstanceMetadata {
        compute: Compute,
    }
    let client = HttpGetter::with_timeout("ward-azure-imds", METADATA_TIMEOUT)
        .map_err(|e| format!("unable to start the HTTP client: {e}"))?;
    let url = format!(
        "{}/metadata/instance?api-version=2017-08-01&format=json",
        metadata_url.trim_end_matches('/')
    );
    let response = client.get(&url, &[("Metadata", "true")])?;
    if response.status != 200 {
        return Err(format!(
            "unexpected status code {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        ));
    }
    let metadata: InstanceMetadata = serde_json::from_slice(&response.body)
        .map_err(|e| format!("unable to decode response: {}", go_json_error(&e)))?;
    let c = metadata.compute;
    if c.name.is_empty() {
        return Err("response missing instance name".into());
    }
    if c.subscription_id.is_empty() {
        return Err("response missing instance subscription id".into());
    }
    if c.resource_group_name.is_empty() {
        return Err("response missing instance resource group name".into());
    }
    Ok(c.subscription_id)
}

/// One tenant of [`AzureMsiServerConfig::tenants`] (SPIRE's `TenantConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureTenant {
    /// `resource_id`: the audience of its tokens; empty is [`DEFAULT_RESOURCE_ID`].
    pub resource_id: String,
    /// `subscription_id`: where its VMs are looked up.
    pub subscription_id: String,
    /// `app_id`: the application the server signs in as.
    pub app_id: String,
    /// `app_secret`: that application's client secret.
    pub app_secret: String,
}

/// A tenant as the verifier keeps it.
#[derive(Debug)]
struct Tenant {
    resource_id: String,
    api: ResourceManager,
}

/// The fetched key set and when it was fetched.
#[derive(Debug, Default)]
struct Cache {
    keys: Option<jsonwebtoken::jwk::JwkSet>,
    fetched: Option<Instant>,
}

/// The server side.
#[derive(Debug)]
pub struct AzureMsiVerifier {
    trust_domain: TrustDomain,
    tenants: BTreeMap<String, Tenant>,
    template: FieldTemplate,
    oidc_issuer: Option<String>,
    extra: Vec<jsonwebtoken::jwk::Jwk>,
    client: HttpGetter,
    cache: Mutex<Cache>,
}

/// The claims ward reads.
#[derive(Debug, Clone, Default, Deserialize)]
struct MsiClaims {
    #[serde(flatten)]
    registered: RegisteredClaims,
    #[serde(default)]
    iss: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    jti: String,
    #[serde(default)]
    tid: String,
}

impl AzureMsiVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] with SPIRE's sentence when there is no tenant, or when the
    /// template is refused.
    pub fn new(config: AzureMsiServerConfig) -> Result<Self, NodeAttestError> {
        if config.tenants.is_empty() {
            return Err(config_error("configuration must have at least one tenant"));
        }
        let template = FieldTemplate::parse(
            config.agent_path_template.as_deref().unwrap_or(DEFAULT_AGENT_PATH_TEMPLATE),
            TEMPLATE_FIELDS,
        )
        .map_err(config_error)?;
        let login_url =
            if config.login_url.is_empty() { DEFAULT_LOGIN_URL } else { config.login_url.as_str() };
        let arm_url = if config.resource_manager_url.is_empty() {
            DEFAULT_RESOURCE_MANAGER_URL
        } else {
            config.resource_manager_url.as_str()
        };
        let metadata_url = if config.metadata_url.is_empty() {
            DEFAULT_METADATA_URL
        } else {
            config.metadata_url.as_str()
        };
        // Asked once, at start, as SPIRE asks it when it configures the plugin.
        let mut own_subscription_id: Option<String> = None;
        let mut tenants = BTreeMap::new();
        for (id, t) in config.tenants {
            if t.subscription_id.is_empty() && t.app_id.is_empty() && t.app_secret.is_empty() {
                // The server VM's managed identity, in the subscription of the server VM.
                let subscription_id = match &own_subscription_id {
                    Some(s) => s.clone(),
                    None => {
                        let s = own_subscription(metadata_url).map_err(|e| {
                            config_error(format!(
                                "tenant {id:?} has no subscription_id, app_id and app_secret, so \
                                 the server VM's managed identity is used, but its instance \
                                 metadata could not be read: {e}"
                            ))
                        })?;
                        own_subscription_id = Some(s.clone());
                        s
                    }
                };
                let resource_id = if t.resource_id.is_empty() {
                    DEFAULT_RESOURCE_ID.to_owned()
                } else {
                    t.resource_id
                };
                let credentials = AppCredentials {
                    subscription_id,
                    app_id: String::new(),
                    app_secret: String::new(),
                    metadata_url: metadata_url.to_owned(),
                };
                let api = ResourceManager::new(&id, credentials, login_url, arm_url);
                tenants.insert(id, Tenant { resource_id, api });
                continue;
            }
            for (value, what) in [
                (&t.subscription_id, "subscription id"),
                (&t.app_id, "app id"),
                (&t.app_secret, "app secret"),
            ] {
                if value.is_empty() {
                    return Err(config_error(format!(
                        "misconfigured tenant {id:?}: missing {what}"
                    )));
                }
            }
            let resource_id = if t.resource_id.is_empty() {
                DEFAULT_RESOURCE_ID.to_owned()
            } else {
                t.resource_id
            };
            let credentials = AppCredentials {
                subscription_id: t.subscription_id,
                app_id: t.app_id,
                app_secret: t.app_secret,
                metadata_url: String::new(),
            };
            let api = ResourceManager::new(&id, credentials, login_url, arm_url);
            tenants.insert(id, Tenant { resource_id, api });
        }
        let client = HttpGetter::new("ward-azure-msi")
            .map_err(|e| config_error(format!("unable to start the HTTP client: {e}")))?;
        Ok(Self {
            trust_domain: config.trust_domain,
            tenants,
            template,
            oidc_issuer: config.oidc_issuer,
            extra: config.extra_keys.map(|s| s.keys).unwrap_or_default(),
            client,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// `GET url`: the body of a 200 answer, else SPIRE's text.
    fn fetch(&self, url: &str) -> Result<bytes::Bytes, String> {
        let response = self.client.get(url, &[])?;
        if response.status != 200 {
            return Err(format!(
                "unexpected status code {}: {}",
                response.status,
                start_of(&response.body)
            ));
        }
        Ok(response.body)
    }

    /// Discovers and fetches the issuer's key set (SPIRE's `jwtutil.OIDCIssuer`).
    fn download(&self, issuer: &str) -> Result<jsonwebtoken::jwk::JwkSet, String> {
        let mut url = url::Url::parse(issuer).map_err(|e| e.to_string())?;
        let path = format!("{}/.well-known/openid-configuration", url.path().trim_end_matches('/'));
        url.set_path(&path);
        #[derive(Deserialize)]
        struct OpenIdConfiguration {
            #[serde(default)]
            jwks_uri: String,
        }
        let config: OpenIdConfiguration = serde_json::from_slice(&self.fetch(url.as_str())?)
            .map_err(|e| format!("failed to decode configuration: {}", go_json_error(&e)))?;
        if config.jwks_uri.is_empty() {
            return Err("configuration missing JWKS URI".into());
        }
        serde_json::from_slice(&self.fetch(&config.jwks_uri)?)
            .map_err(|e| format!("failed to decode key set: {}", go_json_error(&e)))
    }

    /// The keys named `kid`: the issuer's (fetched again after an hour; the old set is kept
    /// when that fails, as SPIRE keeps it), then the extra ones.
    fn keys(&self) -> Result<Vec<jsonwebtoken::jwk::Jwk>, String> {
        let mut all = Vec::new();
        if let Some(issuer) = &self.oidc_issuer {
            let cache = || self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (mut keys, stale) = {
                let held = cache();
                (held.keys.clone(), held.fetched.is_none_or(|at| at.elapsed() >= KEY_SET_REFRESH))
            };
            if stale {
                // Fetched without the lock: a slow issuer must not queue attestations behind
                // one another (two may both fetch; the later set is kept).
                match self.download(issuer) {
                    Ok(set) => {
                        keys = Some(set.clone());
                        *cache() = Cache { keys: Some(set), fetched: Some(Instant::now()) };
                    }
                    Err(e) if keys.is_none() => return Err(e),
                    Err(e) => tracing::warn!(error = %e, "unable to refresh key set"),
                }
            }
            all.extend(keys.iter().flat_map(|s| s.keys.iter().cloned()));
        }
        all.extend(self.extra.iter().cloned());
        Ok(all)
    }
}

impl ServerNodeAttestor for AzureMsiVerifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn begin(&self, payload: &[u8], now: i64) -> Result<Verification, Refusal> {
        use RefusalCode::{Internal, InvalidArgument, PermissionDenied};
        let data: AttestationData = serde_json::from_slice(payload).map_err(|e| {
            Refusal::new(
                InvalidArgument,
                format!("failed to unmarshal data payload: {}", go_json_error(&e)),
            )
        })?;
        if data.token.is_empty() {
            return Err(Refusal::new(InvalidArgument, "missing token from attestation data"));
        }
        let keys = self
            .keys()
            .map_err(|e| Refusal::new(Internal, format!("unable to obtain JWKS: {e}")))?;
        let jws = CompactJws::parse(data.token.as_bytes(), ALGORITHMS)
            .map_err(|e| Refusal::new(InvalidArgument, format!("unable to parse token: {e}")))?;
        if jws.kid.is_empty() {
            return Err(Refusal::new(InvalidArgument, "token missing key id"));
        }
        let Some(key) = keys.iter().find(|k| k.common.key_id.as_deref() == Some(jws.kid.as_str()))
        else {
            return Err(Refusal::new(InvalidArgument, format!("key id {:?} not found", jws.kid)));
        };
        let unverified =
            |why: &str| Refusal::new(InvalidArgument, format!("unable to verify token: {why}"));
        let verified = jsonwebtoken::DecodingKey::from_jwk(key)
            .is_ok_and(|decoding| jws.verifies_with(&decoding));
        if !verified {
            return Err(unverified(CRYPTO_FAILURE));
        }
        let claims: MsiClaims =
            serde_json::from_slice(&jws.claims).map_err(|e| unverified(&go_json_error(&e)))?;
        if claims.tid.is_empty() {
            return Err(Refusal::new(Internal, "token missing tenant ID claim"));
        }
        if claims.sub.is_empty() {
            return Err(Refusal::new(Internal, "token missing subject claim"));
        }
        let values = BTreeMap::from([
            ("PluginName", NAME.to_owned()),
            ("TenantID", claims.tid.clone()),
            ("PrincipalID", claims.sub.clone()),
            ("Issuer", claims.iss.clone()),
            ("Subject", claims.sub.clone()),
            ("ID", claims.jti.clone()),
        ]);
        let agent_id = agent_id(&self.trust_domain, &self.template.render(&values))
            .map_err(|e| Refusal::new(Internal, format!("unable to make agent ID: {e}")))?;
        let Some(tenant) = self.tenants.get(&claims.tid) else {
            return Err(Refusal::new(
                PermissionDenied,
                format!("tenant {:?} is not authorized", claims.tid),
            ));
        };
        claims
            .registered
            .validate(&tenant.resource_id, now, LEEWAY)
            .map_err(|e| Refusal::new(Internal, format!("unable to validate token claims: {e}")))?;
        // The lookup waits for `complete`, after the server's trust-on-first-use check; these
        // two values say what to look up and are replaced there.
        let selector_values = vec![
            format!("{PENDING_TENANT}{}", claims.tid),
            format!("{PENDING_PRINCIPAL}{}", claims.sub),
        ];
        Ok(Verification::Attested(AttestedAgent { agent_id, selector_values, can_reattest: false }))
    }

    /// SPIRE's selectors, read from Azure Resource Manager for the principal `begin` accepted
    /// (only for an agent that may attest, as SPIRE resolves after its trust-on-first-use
    /// check).
    fn complete(&self, mut attested: AttestedAgent, _now: i64) -> Result<AttestedAgent, Refusal> {
        let pending = |prefix: &str| {
            attested.selector_values.iter().find_map(|v| v.strip_prefix(prefix)).map(str::to_owned)
        };
        let (Some(tenant_id), Some(principal)) =
            (pending(PENDING_TENANT), pending(PENDING_PRINCIPAL))
        else {
            return Err(Refusal::new(
                RefusalCode::Internal,
                "attestation was not begun by azure_msi",
            ));
        };
        let Some(tenant) = self.tenants.get(&tenant_id) else {
            return Err(Refusal::new(
                RefusalCode::PermissionDenied,
                format!("tenant {tenant_id:?} is not authorized"),
            ));
        };
        attested.selector_values =
            resource_manager::selectors(&self.client, &tenant.api, &principal)
                .map_err(|e| Refusal::new(RefusalCode::Internal, e))?;
        Ok(attested)
    }
}

/// The value `begin` passes the token's tenant to `complete` in.
const PENDING_TENANT: &str = "\u{0}tenant:";
/// The value `begin` passes the token's subject to `complete` in.
const PENDING_PRINCIPAL: &str = "\u{0}principal:";

#[cfg(test)]
mod tests;
