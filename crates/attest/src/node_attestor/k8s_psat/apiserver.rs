//! A Kubernetes API server client for the `k8s_psat` server side: TokenReview, and reading a
//! Pod and a Node, over HTTPS with a bearer token or a client certificate, configured by a
//! kubeconfig file or by the in-cluster service-account credentials (as SPIRE v1.13.3's
//! `pkg/common/plugin/k8s/apiserver`, which reads its configuration again at each call).
//!
//! The attestor is called on blocking threads, so the client owns a small tokio runtime (one
//! worker thread) and waits for each request on a channel: it never blocks inside, nor
//! starts a runtime within, an async caller's runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// How long one request may take, connection and TLS handshake included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body read.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Where a pod finds its service account's credentials (client-go's in-cluster config).
const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `authentication.k8s.io/v1` `TokenReviewStatus`: what the API server says of a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenReviewStatus {
    /// Whether the token is valid.
    pub authenticated: bool,
    /// Who the token belongs to.
    pub user: UserInfo,
    /// The audiences the token was accepted for.
    #[serde(deserialize_with = "null_as_default")]
    pub audiences: Vec<String>,
    /// Why the token was not accepted.
    pub error: String,
}

/// `authentication.k8s.io/v1` `UserInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct UserInfo {
    /// `system:serviceaccount:<namespace>:<name>` for a service account.
    pub username: String,
    /// The user's UID.
    pub uid: String,
    /// The user's groups.
    #[serde(deserialize_with = "null_as_default")]
    pub groups: Vec<String>,
    /// Extra attributes (`authentication.kubernetes.io/pod-name`, `.../pod-uid`, ...).
    #[serde(deserialize_with = "null_as_default")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// `ObjectMeta`, the members the attestor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ObjectMeta {
    /// The object's name.
    pub name: String,
    /// The object's UID.
    pub uid: String,
    /// The object's labels.
    #[serde(deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
}

/// A `v1` Pod, the members the attestor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Pod {
    /// Name, UID, labels.
    pub metadata: ObjectMeta,
    /// `spec.nodeName`.
    pub spec: PodSpec,
    /// `status.hostIP`.
    pub status: PodStatus,
}

/// `PodSpec`, the members the attestor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    /// The node the pod is scheduled on.
    pub node_name: String,
}

/// `PodStatus`, the members the attestor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PodStatus {
    /// The IP of the pod's node.
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

/// A `v1` Node, the members the attestor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Name, UID, labels.
    pub metadata: ObjectMeta,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What the `k8s_psat` server side asks the API server. Errors are SPIRE's sentences
/// (`unable to query pods API: ...`), which the attestor puts behind its own.
pub trait KubeApi: Send + Sync + std::fmt::Debug {
    /// Creates a TokenReview of `token` for `audiences` and returns its status; an error
    /// when the review carries one, or when an authenticated token holds none of
    /// `audiences`.
    ///
    /// # Errors
    /// A sentence.
    fn validate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, String>;

    /// Reads a Pod.
    ///
    /// # Errors
    /// A sentence.
    fn pod(&self, namespace: &str, name: &str) -> Result<Pod, String>;

    /// Reads a Node.
    ///
    /// # Errors
    /// A sentence.
    fn node(&self, name: &str) -> Result<Node, String>;
}

/// Where and how requests go: a kubeconfig's current context or the in-cluster
/// credentials, resolved.
#[derive(Clone)]
pub struct Connection {
    host: String,
    port: u16,
    /// The base path of the server URL (without a trailing `/`).
    base_path: String,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    token: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A kubeconfig file, the members ward reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
struct KubeConfig {
    current_context: String,
    #[serde(deserialize_with = "null_as_default")]
    clusters: Vec<Named<KubeCluster>>,
    #[serde(deserialize_with = "null_as_default")]
    users: Vec<Named<KubeUser>>,
    #[serde(deserialize_with = "null_as_default")]
    contexts: Vec<Named<KubeContext>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
struct KubeCluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
struct KubeUser {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml::Value>,
    auth_provider: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KubeContext {
    cluster: String,
    user: String,
}

fn find<'a, T>(items: &'a [Named<T>], name: &str, what: &str) -> Result<&'a T, String> {
    items
        .iter()
        .find(|n| n.name == name)
        .map(|n| &n.value)
        .ok_or_else(|| format!("{what} {name:?} is not in the kubeconfig"))
}

/// A file named in a kubeconfig: relative to the kubeconfig's directory.
fn relative_to(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_owned() } else { dir.join(path) }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("unable to read {what} {}: {e}", path.display()))
}

fn decode_data(text: &str, what: &str) -> Result<Vec<u8>, String> {
    STANDARD.decode(text.trim()).map_err(|e| format!("{what}: {e}"))
}

impl Connection {
    /// The connection a kubeconfig file's current context describes.
    ///
    /// # Errors
    /// A sentence naming what is missing or unreadable.
    pub fn from_kubeconfig(path: &Path) -> Result<Self, String> {
        let text = read(path, "kubeconfig")?;
        let config: KubeConfig = serde_yaml::from_slice(&text)
            .map_err(|e| format!("unable to parse kubeconfig {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        if config.current_context.is_empty() {
            return Err("invalid configuration: no configuration has been provided".to_owned());
        }
        let context = find(&config.contexts, &config.current_context, "context")?;
        let cluster = find(&config.clusters, &context.cluster, "cluster")?;
        let user = find(&config.users, &context.user, "user")?;
        if cluster.insecure_skip_tls_verify {
            return Err("insecure-skip-tls-verify is not supported: give the cluster's \
                        certificate-authority or certificate-authority-data"
                .to_owned());
        }
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err("exec and auth-provider credentials are not supported: give a token, \
                        tokenFile or a client certificate and key"
                .to_owned());
        }
        let ca = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
            (Some(data), _) => decode_data(data, "certificate-authority-data")?,
            (None, Some(file)) => read(&relative_to(dir, file), "certificate-authority")?,
            (None, None) => {
                return Err(format!(
                    "cluster {:?} has no certificate-authority or certificate-authority-data",
                    context.cluster
                ));
            }
        };
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) if !t.is_empty() => Some(t.clone()),
            (_, Some(file)) => {
                let text = read(&relative_to(dir, file), "tokenFile")?;
                Some(String::from_utf8_lossy(&text).trim().to_owned())
            }
            _ => None,
        };
        let cert = match (&user.client_certificate_data, &user.client_certificate) {
            (Some(data), _) => Some(decode_data(data, "client-certificate-data")?),
            (None, Some(file)) => Some(read(&relative_to(dir, file), "client-certificate")?),
            (None, None) => None,
        };
        let key = match (&user.client_key_data, &user.client_key) {
            (Some(data), _) => Some(decode_data(data, "client-key-data")?),
            (None, Some(file)) => Some(read(&relative_to(dir, file), "client-key")?),
            (None, None) => None,
        };
        let client_auth = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err("a client certificate needs its key and a key its certificate".into());
            }
        };
        Self::new(&cluster.server, &ca, cluster.tls_server_name.as_deref(), token, client_auth)
    }

    /// The in-cluster connection: `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`,
    /// with the pod's service-account token and CA.
    ///
    /// # Errors
    /// client-go's sentence when the variables are unset, or a file is unreadable.
    pub fn in_cluster() -> Result<Self, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_default();
        if host.is_empty() || port.is_empty() {
            return Err("unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and \
                        KUBERNETES_SERVICE_PORT must be defined"
                .to_owned());
        }
        let dir = Path::new(IN_CLUSTER_DIR);
        let token = read(&dir.join("token"), "token")?;
        let ca = read(&dir.join("ca.crt"), "ca.crt")?;
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let token = String::from_utf8_lossy(&token).trim().to_owned();
        Self::new(&format!("https://{host}:{port}"), &ca, None, Some(token), None)
    }

    /// A connection to `server` (an `https://` URL), trusting the PEM certificates `ca_pem`,
    /// with a bearer token and/or a client certificate chain and key (PEM).
    ///
    /// # Errors
    /// A sentence for a URL that is not HTTPS, or PEM that does not parse.
    pub fn new(
        server: &str,
        ca_pem: &[u8],
        tls_server_name: Option<&str>,
        token: Option<String>,
        client_auth: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, String> {
        let url = url::Url::parse(server).map_err(|e| format!("server {server:?}: {e}"))?;
        if url.scheme() != "https" {
            return Err(format!("server {server:?}: only https:// API servers are supported"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("server {server:?} has no host")),
        };
        let port = url.port().unwrap_or(443);
        let base_path = url.path().trim_end_matches('/').to_owned();
        let server_name = ServerName::try_from(tls_server_name.unwrap_or(&host).to_owned())
            .map_err(|e| format!("server name of {server:?}: {e}"))?;

        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| format!("unable to parse the CA certificates: {e}"))?;
            roots.add(cert).map_err(|e| format!("unable to parse the CA certificates: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no PEM certificate in the API server's CA".to_owned());
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| e.to_string())?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_webpki_verifier(verifier);
        let tls = match client_auth {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                if chain.is_empty() {
                    return Err("no PEM certificate in the client certificate".to_owned());
                }
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("client key: {e}"))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
            }
        };
        Ok(Self {
            host,
            port,
            base_path,
            tls: Arc::new(tls),
            server_name,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}{path}", self.authority(), self.base_path)
    }
}

/// An HTTP answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

/// Sends requests on its own runtime, so callers may be blocking threads or async tasks.
pub struct Requester {
    /// Always `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester").finish_non_exhaustive()
    }
}

impl Requester {
    /// A requester with its own one-thread runtime.
    ///
    /// # Errors
    /// When the runtime cannot start.
    pub fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ward-k8s-apiserver")
            .enable_all()
            .build()?;
        Ok(Self { runtime: Some(runtime) })
    }

    /// Sends `method path` with a JSON `body` (if any) on `conn` and waits for the answer.
    ///
    /// # Errors
    /// Go's `<Method> "<url>": <why>` when the server cannot be reached, TLS fails, or no
    /// answer comes within 10 seconds.
    pub fn send(
        &self,
        conn: &Connection,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String> {
        let Some(runtime) = &self.runtime else {
            return Err("the API server client is closed".to_owned());
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let conn = conn.clone();
        let path = path.to_owned();
        runtime.spawn(async move {
            let url = conn.url(&path);
            let verb = go_method(&method);
            let result =
                match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&conn, method, &path, body))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "context deadline exceeded (no answer within {REQUEST_TIMEOUT:?})"
                    )),
                };
            // The receiver only goes away if the caller's thread died.
            let _ = tx.send(result.map_err(|e| format!("{verb} {url:?}: {e}")));
        });
        rx.recv().unwrap_or_else(|_| Err("the API server client runtime stopped".to_owned()))
    }
}

impl Drop for Requester {
    /// Stops the runtime without waiting for it: dropping a runtime the ordinary way blocks,
    /// which panics when the attestor is dropped inside an async task.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The method as Go's `net/http` errors spell it (`Post`, `Get`).
fn go_method(method: &http::Method) -> String {
    let m = method.as_str();
    let mut out = m[..1].to_owned();
    out.push_str(&m[1..].to_ascii_lowercase());
    out
}

async fn exchange(
    conn: &Connection,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, String> {
    let tcp = TcpStream::connect((conn.host.as_str(), conn.port))
        .await
        .map_err(|e| format!("dial tcp {}: {e}", conn.authority()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&conn.tls))
        .connect(conn.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // Ends when the response is read and the sender dropped; errors reach the sender.
        let _ = connection.await;
    });
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", conn.base_path))
        .header(http::header::HOST, conn.authority())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "ward-server");
    if body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    if let Some(token) = &conn.token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| {
        // Only an invalid path or header value gets here.
        e.to_string()
    })?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer { status, body })
}

/// Where the API client's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A kubeconfig file (its current context).
    KubeConfig(PathBuf),
    /// The pod's in-cluster service-account credentials.
    InCluster,
}

/// The API client of one cluster: reads its configuration again at each call, as SPIRE
/// does, so rotated credentials are picked up.
#[derive(Debug)]
pub struct ApiServerClient {
    credentials: Credentials,
    requester: Requester,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: TokenReviewSpec<'a>,
}

#[derive(Serialize)]
struct TokenReviewSpec<'a> {
    token: &'a str,
    audiences: &'a [String],
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokenReviewAnswer {
    status: TokenReviewStatus,
}

/// A `v1` `Status` error body: its message.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StatusBody {
    kind: String,
    message: String,
}

/// The error text client-go gives for a non-2xx answer: the `Status` message, or a sentence
/// for the status code.
pub fn answer_error(answer: &Answer) -> String {
    if let Ok(s) = serde_json::from_slice::<StatusBody>(&answer.body)
        && s.kind == "Status"
        && !s.message.is_empty()
    {
        return s.message;
    }
    match answer.status {
        401 => "Unauthorized".to_owned(),
        403 => "Forbidden".to_owned(),
        404 => "the server could not find the requested resource".to_owned(),
        code => {
            let start =
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(1024)]).into_owned();
            format!(
                "an error on the server ({start:?}) has prevented the request from succeeding \
                 (status {code})"
            )
        }
    }
}

/// Go's `%q` of a list of strings: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

impl ApiServerClient {
    /// A client reading `credentials` at each call.
    ///
    /// # Errors
    /// When its runtime cannot start.
    pub fn new(credentials: Credentials) -> std::io::Result<Self> {
        Ok(Self { credentials, requester: Requester::new()? })
    }

    fn connection(&self) -> Result<Connection, String> {
        match &self.credentials {
            Credentials::KubeConfig(path) => Connection::from_kubeconfig(path),
            Credentials::InCluster => Connection::in_cluster(),
        }
        .map_err(|e| format!("unable to get clientset: unable to create client config: {e}"))
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, path: &str, api: &str) -> Result<T, String> {
        let conn = self.connection()?;
        let answer = self
            .requester
            .send(&conn, http::Method::GET, path, None)
            .map_err(|e| format!("unable to query {api} API: {e}"))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!("unable to query {api} API: {}", answer_error(&answer)));
        }
        serde_json::from_slice(&answer.body)
            .map_err(|e| format!("unable to query {api} API: decoding the answer: {e}"))
    }
}

fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl KubeApi for ApiServerClient {
    fn validate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, String> {
        let conn = self.connection()?;
        let review = TokenReview {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: TokenReviewSpec { token, audiences },
        };
        let body = serde_json::to_vec(&review).map_err(|e| e.to_string())?;
        let answer = self
            .requester
            .send(
                &conn,
                http::Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                Some(body),
            )
            .map_err(|e| format!("unable to query token review API: {e}"))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!("unable to query token review API: {}", answer_error(&answer)));
        }
        let review: TokenReviewAnswer = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("unable to query token review API: decoding the answer: {e}"))?;
        let status = review.status;
        if !status.error.is_empty() {
            return Err(format!("token review API response contains an error: {}", status.error));
        }
        if status.authenticated
            && !audiences.is_empty()
            && !audiences.iter().any(|a| status.audiences.contains(a))
        {
            return Err(format!(
                "token review API did not validate audience: wanted one of {} but got {}",
                go_quote_list(audiences),
                go_quote_list(&status.audiences)
            ));
        }
        Ok(status)
    }

    fn pod(&self, namespace: &str, name: &str) -> Result<Pod, String> {
        if namespace.is_empty() {
            return Err("empty namespace".to_owned());
        }
        if name.is_empty() {
            return Err("empty pod name".to_owned());
        }
        self.get(
            &format!("/api/v1/namespaces/{}/pods/{}", segment(namespace), segment(name)),
            "pods",
        )
    }

    fn node(&self, name: &str) -> Result<Node, String> {
        if name.is_empty() {
            return Err("empty node name".to_owned());
        }
        self.get(&format!("/api/v1/nodes/{}", segment(name)), "nodes")
    }
}
