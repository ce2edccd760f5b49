//! `gcp_iit`'s `use_instance_metadata`: the Compute Engine API's view of the attesting
//! instance (`instances.get`), read as SPIRE v1.13.3's server plugin reads it through
//! `google.golang.org/api/compute/v1` and `cloud.google.com/go/auth`.
//!
//! Credentials are found as Application Default Credentials are: `service_account_file`,
//! else the file `GOOGLE_APPLICATION_CREDENTIALS` names, else
//! `$HOME/.config/gcloud/application_default_credentials.json`, else the metadata server's
//! token for the instance's default service account when the server runs on Compute Engine
//! (`GCE_METADATA_HOST` set, or `169.254.169.254` / `metadata.google.internal` answering). A
//! service-account key is exchanged for an access token with a signed JWT (RS256, the
//! JWT-bearer grant POSTed to the key's `token_uri`); an `authorized_user` file with its
//! refresh token. Both files, and the token, are read again at each attestation, as SPIRE
//! builds a new client each time.
//!
//! The instance is asked for at `https://compute.<universe>/compute/v1/projects/<project>/
//! zones/<zone>/instances/<name>?alt=json&prettyPrint=false` (universe `googleapis.com`, or
//! `GOOGLE_CLOUD_UNIVERSE_DOMAIN`; `compute.mtls.googleapis.com` when
//! `GOOGLE_API_USE_MTLS_ENDPOINT` is `always`). Failures carry the Go libraries' texts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

use super::super::http_get::{HttpGetter, HttpResponse, read_regular_file};
use super::super::sshpop::wire::go_kind;
use super::super::x509pop::go_json_error;
use super::super::{Refusal, RefusalCode};

/// The largest credentials file read (keys are a few KiB): a larger one, or one that is not a
/// regular file (a FIFO would block the read for good), refuses the attestation.
const MAX_CREDENTIALS_FILE: u64 = 1024 * 1024;
/// SPIRE's default `max_metadata_value_size`.
pub const DEFAULT_MAX_METADATA_VALUE_SIZE: i64 = 128;
/// Where service-account keys without a `token_uri` exchange their assertion.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The universe whose endpoints are used unless `GOOGLE_CLOUD_UNIVERSE_DOMAIN` names another.
pub const DEFAULT_UNIVERSE_DOMAIN: &str = "googleapis.com";
/// The scopes the Compute Engine client asks tokens for (its default scopes).
pub const SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/compute",
    "https://www.googleapis.com/auth/compute.readonly",
    "https://www.googleapis.com/auth/devstorage.full_control",
    "https://www.googleapis.com/auth/devstorage.read_only",
    "https://www.googleapis.com/auth/devstorage.read_write",
];
/// The grant a service account's signed assertion is exchanged with.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Where the ADC help page is (in the "no credentials" text).
const ADC_SETUP_URL: &str = "https://cloud.google.com/docs/authentication/external/set-up-adc";
/// The metadata server's address when `GCE_METADATA_HOST` is not set.
const METADATA_IP: &str = "169.254.169.254";
/// The `User-Agent` of ward's requests to the Compute Engine API.
const USER_AGENT: &str = "ward-gcp-iit";

/// What `use_instance_metadata` is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceMetadataConfig {
    /// `service_account_file`: a Google credentials file; `None`: Application Default
    /// Credentials.
    pub service_account_file: Option<PathBuf>,
    /// `allowed_label_keys`: the labels turned into `label:<key>:<value>` selectors.
    pub allowed_label_keys: BTreeSet<String>,
    /// `allowed_metadata_keys`: the metadata items turned into `metadata:<key>:<value>`.
    pub allowed_metadata_keys: BTreeSet<String>,
    /// `max_metadata_value_size` (0 is [`DEFAULT_MAX_METADATA_VALUE_SIZE`]): an allowed
    /// metadata value longer than this (bytes) refuses the attestation.
    pub max_metadata_value_size: i64,
}

/// The parts of a Compute Engine `Instance` ward reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// `tags.items`.
    #[serde(default)]
    pub tags: Option<Tags>,
    /// `serviceAccounts[].email`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub service_accounts: Vec<ServiceAccount>,
    /// `labels` (a `null` value reads as empty, as Go decodes it into a string).
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, Option<String>>,
    /// `metadata.items`.
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// A JSON `null` read as the type's empty value, as Go's `encoding/json` leaves a slice, map
/// or string empty for `null`.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An instance's network tags.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Tags {
    /// The tags.
    #[serde(default, deserialize_with = "null_as_default")]
    pub items: Vec<String>,
}

/// A service account attached to an instance.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceAccount {
    /// Its email.
    #[serde(default, deserialize_with = "null_as_default")]
    pub email: String,
}

/// An instance's metadata.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    /// The items.
    #[serde(default, deserialize_with = "null_as_default")]
    pub items: Vec<MetadataItem>,
}

/// One metadata item; its value may be absent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetadataItem {
    /// The key.
    #[serde(default, deserialize_with = "null_as_default")]
    pub key: String,
    /// The value.
    #[serde(default)]
    pub value: Option<String>,
}

/// The selectors SPIRE adds from the instance: `tag:`, `sa:`, `label:<k>:<v>` for allowed
/// label keys, `metadata:<k>:<v>` for allowed metadata keys, in that order.
///
/// # Errors
/// SPIRE's refusal when an allowed metadata value is longer than the limit.
pub fn instance_selectors(
    config: &InstanceMetadataConfig,
    instance: &Instance,
) -> Result<Vec<String>, Refusal> {
    let limit = if config.max_metadata_value_size == 0 {
        DEFAULT_MAX_METADATA_VALUE_SIZE
    } else {
        config.max_metadata_value_size
    };
    let mut metadata = Vec::new();
    for item in instance.metadata.iter().flat_map(|m| &m.items) {
        if !config.allowed_metadata_keys.contains(&item.key) {
            continue;
        }
        let value = item.value.clone().unwrap_or_default();
        let len = i64::try_from(value.len()).unwrap_or(i64::MAX);
        if item.value.is_some() && len > limit {
            return Err(Refusal::new(
                RefusalCode::Internal,
                format!("metadata {:?} exceeded value limit ({len} > {limit})", item.key),
            ));
        }
        metadata.push(format!("metadata:{}:{value}", item.key));
    }
    let mut out = Vec::new();
    out.extend(instance.tags.iter().flat_map(|t| &t.items).map(|t| format!("tag:{t}")));
    out.extend(instance.service_accounts.iter().map(|s| format!("sa:{}", s.email)));
    out.extend(
        instance
            .labels
            .iter()
            .filter(|(k, _)| config.allowed_label_keys.contains(*k))
            .map(|(k, v)| format!("label:{k}:{}", v.as_deref().unwrap_or_default())),
    );
    out.extend(metadata);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// Where ADC looks: the process environment, read at each attestation.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub application_credentials: Option<String>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `GCE_METADATA_HOST`.
    pub metadata_host: Option<String>,
    /// `GOOGLE_CLOUD_UNIVERSE_DOMAIN`.
    pub universe_domain: Option<String>,
    /// `GOOGLE_CLOUD_QUOTA_PROJECT`.
    pub quota_project: Option<String>,
    /// `GOOGLE_API_USE_MTLS_ENDPOINT` (or the older `GOOGLE_API_USE_MTLS`).
    pub mtls_endpoint: Option<String>,
}

impl Environment {
    /// The process's environment (empty variables count as unset).
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            application_credentials: var("GOOGLE_APPLICATION_CREDENTIALS"),
            home: var("HOME").map(PathBuf::from),
            metadata_host: var("GCE_METADATA_HOST"),
            universe_domain: var("GOOGLE_CLOUD_UNIVERSE_DOMAIN"),
            quota_project: var("GOOGLE_CLOUD_QUOTA_PROJECT"),
            mtls_endpoint: var("GOOGLE_API_USE_MTLS_ENDPOINT")
                .or_else(|| var("GOOGLE_API_USE_MTLS")),
        }
    }

    fn universe(&self) -> &str {
        self.universe_domain.as_deref().unwrap_or(DEFAULT_UNIVERSE_DOMAIN)
    }

    /// The Compute Engine API's base URL: `https://compute.<universe>/compute/v1/`, or its
    /// mutual-TLS host when `GOOGLE_API_USE_MTLS_ENDPOINT` is `always` (which ward asks without
    /// a client certificate, as the Go client does when none is configured).
    ///
    /// # Errors
    /// The Go client's text for mutual TLS outside `googleapis.com`.
    pub fn compute_endpoint(&self) -> Result<String, String> {
        let always =
            self.mtls_endpoint.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("always"));
        match (always, self.universe()) {
            (true, DEFAULT_UNIVERSE_DOMAIN) => {
                Ok("https://compute.mtls.googleapis.com/compute/v1/".to_owned())
            }
            (true, _) => {
                Err("mTLS is not supported in any universe other than googleapis.com".to_owned())
            }
            (false, universe) => Ok(format!("https://compute.{universe}/compute/v1/")),
        }
    }
}

/// Credentials found, ready to get an access token.
#[derive(Debug, Clone)]
enum Credentials {
    /// A service-account key: a signed assertion for a token.
    ServiceAccount { key: ServiceAccountKey, quota_project: Option<String> },
    /// A user's refresh token.
    AuthorizedUser { user: AuthorizedUser, quota_project: Option<String> },
    /// The metadata server's token for the default service account.
    Metadata { host: String },
}

/// A service-account key file's fields that ward uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceAccountKey {
    /// `private_key`: PEM (or bare DER) PKCS#8 or PKCS#1 RSA key.
    #[serde(default)]
    pub private_key: String,
    /// `private_key_id`: the JWT header's `kid`.
    #[serde(default)]
    pub private_key_id: String,
    /// `client_email`: the assertion's `iss`.
    #[serde(default)]
    pub client_email: String,
    /// `token_uri`: where the assertion is exchanged (default [`GOOGLE_TOKEN_URL`]).
    #[serde(default)]
    pub token_uri: String,
    /// `universe_domain`.
    #[serde(default)]
    pub universe_domain: String,
}

/// An `authorized_user` file's fields.
#[derive(Debug, Clone, Default, Deserialize)]
struct AuthorizedUser {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
    #[serde(default)]
    refresh_token: String,
    #[serde(default)]
    universe_domain: String,
}

/// Go's `os` error text for a file that cannot be read.
fn go_open_error(path: &Path, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::IsADirectory => "is a directory".to_owned(),
        _ => e.to_string(),
    };
    match e.kind() {
        std::io::ErrorKind::IsADirectory => format!("read {}: {why}", path.display()),
        _ => format!("open {}: {why}", path.display()),
    }
}

/// Reads a credentials file as `credentials.DetectDefault` does.
fn credentials_from_file(path: &Path, env: &Environment) -> Result<Credentials, String> {
    let bytes =
        read_regular_file(path, MAX_CREDENTIALS_FILE).map_err(|e| go_open_error(path, &e))?;
    credentials_from_json(&bytes, env)
}

fn credentials_from_json(bytes: &[u8], env: &Environment) -> Result<Credentials, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| go_json_error(&e))?;
    // A console OAuth client file ("web" / "installed" with redirect URIs) needs a browser.
    for kind in ["web", "installed"] {
        let redirects = value.get(kind).and_then(|c| c.get("redirect_uris"));
        if redirects.and_then(Value::as_array).is_some_and(|r| !r.is_empty()) {
            return Err("credentials: auth handler must be specified for this credential filetype"
                .to_owned());
        }
    }
    let kind = match value.get("type") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(format!(
                "json: cannot unmarshal {} into Go struct field fileTypeChecker.type of type string",
                go_kind(other)
            ));
        }
    };
    let quota_project = env
        .quota_project
        .clone()
        .or_else(|| value.get("quota_project_id").and_then(Value::as_str).map(str::to_owned));
    let quota_project = quota_project.filter(|q| !q.is_empty());
    match kind {
        "service_account" => {
            let key: ServiceAccountKey =
                serde_json::from_value(value).map_err(|e| go_json_error(&e))?;
            Ok(Credentials::ServiceAccount { key, quota_project })
        }
        "authorized_user" => {
            let user: AuthorizedUser =
                serde_json::from_value(value).map_err(|e| go_json_error(&e))?;
            Ok(Credentials::AuthorizedUser { user, quota_project })
        }
        "impersonated_service_account"
        | "external_account"
        | "external_account_authorized_user"
        | "gdch_service_account" => Err(format!(
            "credentials of type {kind:?} are not supported by ward (service_account and \
             authorized_user files, and the metadata server's credentials, are)"
        )),
        _ => Err("credentials: unsupported unidentified file type".to_owned()),
    }
}

/// Whether the server runs on Compute Engine, decided once per process as Go's `metadata.OnGCE`
/// decides: `GCE_METADATA_HOST` set, else the first answer of two probes run side by side —
/// the metadata server answering at `169.254.169.254` with `Metadata-Flavor: Google`, and
/// `metadata.google.internal.` resolving — or, when the machine's DMI product name says
/// Google, either probe succeeding within five more seconds.
fn on_gce(env: &Environment) -> bool {
    static ON_GCE: OnceLock<bool> = OnceLock::new();
    env.metadata_host.is_some() || *ON_GCE.get_or_init(probe_gce)
}

fn probe_gce() -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let by_http = tx.clone();
    std::thread::spawn(move || {
        let answered = HttpGetter::new("ward-gce-probe").is_ok_and(|client| {
            client
                .get(&format!("http://{METADATA_IP}"), &[("Metadata-Flavor", "Google")])
                .is_ok_and(|r| {
                    r.headers.get("metadata-flavor").is_some_and(|v| v.as_bytes() == b"Google")
                })
        });
        let _ = by_http.send(answered);
    });
    std::thread::spawn(move || {
        use std::net::ToSocketAddrs;
        let resolved = ("metadata.google.internal.", 80)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.next().is_some());
        let _ = tx.send(resolved);
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap_or(false);
    if first || !dmi_says_google() {
        return first;
    }
    rx.recv_timeout(Duration::from_secs(5)).unwrap_or(false)
}

/// Whether `/sys/class/dmi/id/product_name` is `Google` or `Google Compute Engine`.
fn dmi_says_google() -> bool {
    let name = std::fs::read_to_string("/sys/class/dmi/id/product_name").unwrap_or_default();
    matches!(name.trim(), "Google" | "Google Compute Engine")
}

/// Application Default Credentials: the configured file, `GOOGLE_APPLICATION_CREDENTIALS`,
/// gcloud's well-known file, the metadata server.
fn find_credentials(file: Option<&Path>, env: &Environment) -> Result<Credentials, String> {
    if let Some(file) = file {
        return credentials_from_file(file, env);
    }
    if let Some(file) = &env.application_credentials {
        return credentials_from_file(Path::new(file), env);
    }
    if let Some(home) = &env.home {
        let well_known = home.join(".config/gcloud/application_default_credentials.json");
        if let Ok(bytes) = read_regular_file(&well_known, MAX_CREDENTIALS_FILE) {
            return credentials_from_json(&bytes, env);
        }
    }
    if on_gce(env) {
        let host = env.metadata_host.clone().unwrap_or_else(|| METADATA_IP.to_owned());
        return Ok(Credentials::Metadata { host });
    }
    Err(format!(
        "credentials: could not find default credentials. See {ADC_SETUP_URL} for more \
         information"
    ))
}

/// The signed assertion a service account exchanges for a token: RS256, header
/// `{"alg","typ","kid"}`, claims `iss`, `scope`, `exp`, `iat`, `aud` as Go's `auth` library
/// writes them (`iat` ten seconds back, `exp` an hour after).
///
/// # Errors
/// Go's texts when the key does not parse or signing fails.
pub fn service_account_assertion(
    key: &ServiceAccountKey,
    token_url: &str,
    now: i64,
) -> Result<String, String> {
    let pair = rsa_key(&key.private_key)?;
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": key.private_key_id});
    let iat = now - 10;
    // serde_json keeps insertion order only with a feature; write the object by hand.
    let claims = format!(
        "{{\"iss\":{},\"scope\":{},\"exp\":{},\"iat\":{iat},\"aud\":{}}}",
        Value::from(key.client_email.as_str()),
        Value::from(SCOPES.join(" ")),
        iat + 3600,
        Value::from(token_url),
    );
    let header = format!(
        "{{\"alg\":{},\"typ\":{},\"kid\":{}}}",
        header["alg"], header["typ"], header["kid"]
    );
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let mut signature = vec![0u8; pair.public_modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature)
        .map_err(|_| "crypto/rsa: signing failed".to_owned())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// The key of a service-account file: PEM or bare DER, PKCS#8 or PKCS#1 (Go's `ParseKey`).
fn rsa_key(text: &str) -> Result<RsaKeyPair, String> {
    let der = match pem::parse(text.as_bytes()) {
        Ok(block) => block.contents().to_vec(),
        Err(_) => text.as_bytes().to_vec(),
    };
    RsaKeyPair::from_pkcs8(&der).or_else(|_| RsaKeyPair::from_der(&der)).map_err(|_| {
        "private key should be a PEM or plain PKCS1 or PKCS8: x509: failed to parse private key \
         (use ParsePKCS8PrivateKey instead for this key format)"
            .to_owned()
    })
}

/// A token endpoint's answer.
#[derive(Debug, Default, Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    token_type: String,
    #[serde(default)]
    expires_in: i64,
}

/// Google's token endpoint answer, or the `auth` library's text.
fn token_from(response: Result<HttpResponse, String>) -> Result<(String, String), String> {
    let response = response.map_err(|e| format!("auth: cannot fetch token: {e}"))?;
    if !(200..300).contains(&response.status) {
        return Err(format!(
            "auth: cannot fetch token: {}\nResponse: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ));
    }
    let answer: TokenAnswer = serde_json::from_slice(&response.body)
        .map_err(|e| format!("auth: cannot fetch token: {}", go_json_error(&e)))?;
    Ok((answer.token_type, answer.access_token))
}

/// A refresh-token answer, or the `auth` library's three-legged flow's text (its endpoint may
/// answer JSON or a query string, and report an OAuth error code).
fn refreshed_token(response: Result<HttpResponse, String>) -> Result<(String, String), String> {
    let response = response?;
    let failure = !(200..300).contains(&response.status);
    let generic = || {
        format!(
            "auth: cannot fetch token: {}\nResponse: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
    };
    let content_type = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let fields: BTreeMap<String, String> =
        if matches!(content_type.as_str(), "application/x-www-form-urlencoded" | "text/plain") {
            url::form_urlencoded::parse(&response.body).into_owned().collect()
        } else {
            match serde_json::from_slice::<BTreeMap<String, Value>>(&response.body) {
                Ok(map) => map
                    .into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                    .collect(),
                Err(_) if failure => return Err(generic()),
                Err(e) => return Err(format!("auth: cannot parse json: {}", go_json_error(&e))),
            }
        };
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let code = field("error");
    if !code.is_empty() {
        let mut text = format!("auth: {code:?}");
        for extra in [field("error_description"), field("error_uri")] {
            if !extra.is_empty() {
                text.push_str(&format!(" {extra:?}"));
            }
        }
        return Err(text);
    }
    if failure {
        return Err(generic());
    }
    let token = field("access_token");
    if token.is_empty() {
        return Err("auth: server response missing access_token".to_owned());
    }
    Ok((field("token_type"), token))
}

/// What the Compute Engine API is asked with: the endpoint, the token, and the headers.
#[derive(Debug)]
pub struct ComputeClient {
    client: HttpGetter,
}

impl ComputeClient {
    /// A client with its own HTTP runtime.
    ///
    /// # Errors
    /// When the runtime cannot start.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { client: HttpGetter::new("ward-gcp-compute")? })
    }

    /// `instances.get` for the instance: the refusal is SPIRE's
    /// (`failed to fetch instance metadata: ...`, Internal).
    ///
    /// # Errors
    /// The refusal.
    pub fn instance(
        &self,
        file: Option<&Path>,
        env: &Environment,
        project: &str,
        zone: &str,
        name: &str,
        now: i64,
    ) -> Result<Instance, Refusal> {
        let refused = |why: String| {
            Refusal::new(RefusalCode::Internal, format!("failed to fetch instance metadata: {why}"))
        };
        let endpoint = env
            .compute_endpoint()
            .map_err(|e| refused(format!("failed to create compute service client: {e}")))?;
        let credentials = find_credentials(file, env)
            .map_err(|e| refused(format!("failed to create compute service client: {e}")))?;
        let url = instance_url(&endpoint, project, zone, name);
        let failed = |why: String| refused(format!("failed to fetch instance metadata: {why}"));
        let in_get = |why: String| failed(format!("Get {url:?}: {why}"));
        let (token_type, token, quota_project) = match &credentials {
            Credentials::ServiceAccount { key, quota_project } => {
                let universe = if key.universe_domain.is_empty() {
                    DEFAULT_UNIVERSE_DOMAIN
                } else {
                    key.universe_domain.as_str()
                };
                if universe != DEFAULT_UNIVERSE_DOMAIN {
                    return Err(failed(format!(
                        "service account keys of universe {universe:?} sign their own tokens, \
                         which ward does not do"
                    )));
                }
                let token_url = if key.token_uri.is_empty() {
                    GOOGLE_TOKEN_URL
                } else {
                    key.token_uri.as_str()
                };
                let assertion = service_account_assertion(key, token_url, now).map_err(in_get)?;
                let response = self.post_form(
                    token_url,
                    &[("assertion", &assertion), ("grant_type", JWT_BEARER_GRANT)],
                );
                let (kind, token) = token_from(response).map_err(in_get)?;
                check_universe(env.universe(), universe).map_err(in_get)?;
                (kind, token, quota_project.clone())
            }
            Credentials::AuthorizedUser { user, quota_project } => {
                let response = self.post_form(
                    GOOGLE_TOKEN_URL,
                    &[
                        ("client_id", &user.client_id),
                        ("client_secret", &user.client_secret),
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &user.refresh_token),
                    ],
                );
                let (kind, token) = refreshed_token(response).map_err(in_get)?;
                let universe = if user.universe_domain.is_empty() {
                    DEFAULT_UNIVERSE_DOMAIN
                } else {
                    user.universe_domain.as_str()
                };
                check_universe(env.universe(), universe).map_err(in_get)?;
                (kind, token, quota_project.clone())
            }
            Credentials::Metadata { host } => {
                let (kind, token) = self.metadata_token(host).map_err(in_get)?;
                (kind, token, env.quota_project.clone())
            }
        };
        let kind = if token_type.is_empty() { "Bearer" } else { token_type.as_str() };
        let authorization = format!("{kind} {token}");
        let mut headers =
            vec![("User-Agent", USER_AGENT), ("Authorization", authorization.as_str())];
        if let Some(q) = &quota_project {
            headers.push(("X-Goog-User-Project", q.as_str()));
        }
        let response = self.client.get(&url, &headers).map_err(failed)?;
        if !(200..300).contains(&response.status) {
            return Err(failed(googleapi_error(response.status, &response.body)));
        }
        serde_json::from_slice(&response.body).map_err(|e| failed(go_json_error(&e)))
    }

    /// `POST url` of a form (its fields in Go's `url.Values` order: sorted by name).
    fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> Result<HttpResponse, String> {
        let form =
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        self.client.post(url, &[("Content-Type", "application/x-www-form-urlencoded")], form)
    }

    /// The metadata server's token for the default service account (Go's `computeProvider`).
    fn metadata_token(&self, host: &str) -> Result<(String, String), String> {
        let scopes: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("scopes", &SCOPES.join(","))
            .finish();
        let suffix = format!("instance/service-accounts/default/token?{scopes}");
        let url = format!("http://{host}/computeMetadata/v1/{suffix}");
        let cannot = |why: String| format!("credentials: cannot fetch token: {why}");
        let response = self
            .client
            .get(&url, &[("Metadata-Flavor", "Google"), ("User-Agent", "gcloud-golang/0.1")])
            .map_err(cannot)?;
        let body = String::from_utf8_lossy(&response.body).into_owned();
        if response.status == 404 {
            return Err(cannot(format!("metadata: GCE metadata {suffix:?} not defined")));
        }
        if response.status != 200 {
            return Err(cannot(format!("compute: Received {} `{body}`", response.status)));
        }
        let answer: TokenAnswer = serde_json::from_str(&body).map_err(|e| {
            format!("credentials: invalid token JSON from metadata: {}", go_json_error(&e))
        })?;
        if answer.expires_in == 0 || answer.access_token.is_empty() {
            return Err("credentials: incomplete token received from metadata".to_owned());
        }
        Ok((answer.token_type, answer.access_token))
    }
}

/// The `auth` library's refusal of credentials from another universe than the client's.
fn check_universe(client: &str, credentials: &str) -> Result<(), String> {
    if client == credentials {
        return Ok(());
    }
    Err(format!(
        "the configured universe domain ({client:?}) does not match the universe domain found \
         in the credentials ({credentials:?}). If you haven't configured the universe domain \
         explicitly, \"googleapis.com\" is the default"
    ))
}

/// What a URI template escapes in a `{var}` expansion: all but unreserved characters.
const TEMPLATE_ESCAPE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `instances.get`'s URL under the API's base URL (ending in `/`).
pub fn instance_url(endpoint: &str, project: &str, zone: &str, name: &str) -> String {
    let e = |s: &str| percent_encoding::utf8_percent_encode(s, TEMPLATE_ESCAPE).to_string();
    format!(
        "{endpoint}projects/{}/zones/{}/instances/{}?alt=json&prettyPrint=false",
        e(project),
        e(zone),
        e(name)
    )
}

/// A Google API error answer as `googleapi.Error` prints it.
pub fn googleapi_error(status: u16, body: &[u8]) -> String {
    let generic = || {
        format!(
            "googleapi: got HTTP response code {status} with body: {}",
            String::from_utf8_lossy(body)
        )
    };
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let Ok(reply) = parsed else { return generic() };
    let reply = match reply {
        Value::Array(items) => items.into_iter().next().unwrap_or(Value::Null),
        other => other,
    };
    let Some(error) = reply.get("error").filter(|e| e.is_object()) else { return generic() };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let code = error.get("code").and_then(Value::as_i64).filter(|c| *c != 0);
    let code = code.unwrap_or(i64::from(status));
    let message = text(error.get("message"));
    let errors: Vec<(String, String)> = error
        .get("errors")
        .and_then(Value::as_array)
        .map(|items| {
            items.iter().map(|i| (text(i.get("reason")), text(i.get("message")))).collect()
        })
        .unwrap_or_default();
    if errors.is_empty() && message.is_empty() {
        return format!(
            "googleapi: got HTTP response code {code} with body: {}",
            String::from_utf8_lossy(body)
        );
    }
    let mut out = format!("googleapi: Error {code}: {message}");
    let details = error.get("details").and_then(Value::as_array).filter(|d| !d.is_empty());
    if let Some(pretty) = details.and_then(|d| serde_json::to_string_pretty(d).ok()) {
        out.push_str("\nDetails:\n");
        out.push_str(&go_html_escape(&pretty));
        out.push('\n');
    }
    if errors.is_empty() {
        return out.trim().to_owned();
    }
    if errors.len() == 1 && errors[0].1 == message {
        out.push_str(&format!(", {}", errors[0].0));
        return out;
    }
    out.push_str("\nMore details:\n");
    for (reason, message) in errors {
        out.push_str(&format!("Reason: {reason}, Message: {message}\n"));
    }
    out
}

/// Go's JSON encoder escapes `<`, `>` and `&` in strings.
fn go_html_escape(s: &str) -> String {
    s.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

#[cfg(test)]
mod tests;
