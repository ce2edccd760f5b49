//! The client of the kubelet's `/pods` endpoint: plain HTTP on the read-only port, or HTTPS
//! on the secure port with a bearer token, a client certificate or no credentials.
//!
//! The attestor is called on blocking threads, so the client owns a small tokio runtime (one
//! worker thread) and waits for each request on a channel: it never blocks inside, nor
//! starts a runtime within, an async caller's runtime.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::warn;

use super::{K8sError, KubeletAuth, KubeletSettings, KubeletVerification, SecureKubelet};

/// How long one `/pods` request may take, connection and TLS handshake included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest `/pods` body read (a node's pod list is a few MiB at most).
const MAX_BODY: usize = 256 * 1024 * 1024;
/// How much of an error response's body is quoted in the error.
const MAX_ERROR_BODY: usize = 1024;

/// Where and how one request goes: the files read into memory.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    token: Option<String>,
}

impl Target {
    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/pods", self.authority())
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The loaded target and when its files were read.
struct Loaded {
    target: Target,
    at: Instant,
}

/// A kubelet `/pods` client.
pub(super) struct KubeletClient {
    settings: KubeletSettings,
    /// Always `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// A client for `settings`, with its token and TLS files read now, so a missing file is
    /// a configuration error as in SPIRE.
    pub(super) fn new(settings: KubeletSettings) -> Result<Self, K8sError> {
        let target = load(&settings)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ward-k8s-kubelet")
            .enable_all()
            .build()
            .map_err(K8sError::Runtime)?;
        Ok(Self {
            settings,
            runtime: Some(runtime),
            loaded: Mutex::new(Loaded { target, at: Instant::now() }),
        })
    }

    /// The URL requested.
    pub(super) fn url(&self) -> String {
        self.target().url()
    }

    /// The target, with the files read again once `reload_interval` has passed; when they
    /// cannot be read, the previous ones are kept and a warning logged (SPIRE does the same).
    fn target(&self) -> Target {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if let KubeletSettings::Secure(secure) = &self.settings
            && loaded.at.elapsed() >= secure.reload_interval
        {
            match load(&self.settings) {
                Ok(target) => *loaded = Loaded { target, at: Instant::now() },
                Err(e) => warn!(error = %e, "unable to load kubelet client"),
            }
        }
        loaded.target.clone()
    }

    /// `GET /pods`: the body of a 200 answer.
    ///
    /// # Errors
    /// [`K8sError::Request`] when the kubelet cannot be reached, TLS fails or the request
    /// times out; [`K8sError::Status`] for another status; [`K8sError::ReadBody`].
    pub(super) fn pods(&self) -> Result<Bytes, K8sError> {
        let target = self.target();
        let (tx, rx) = mpsc::sync_channel(1);
        let Some(runtime) = &self.runtime else {
            return Err(K8sError::Request { reason: "the kubelet client is closed".to_owned() });
        };
        runtime.spawn(async move {
            let url = target.url();
            let result = match tokio::time::timeout(REQUEST_TIMEOUT, get_pods(target)).await {
                Ok(result) => result,
                Err(_) => Err(K8sError::Request {
                    reason: format!("GET {url}: no answer within {REQUEST_TIMEOUT:?}"),
                }),
            };
            // The receiver only goes away if the attestor's thread died.
            let _ = tx.send(result);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(K8sError::Request { reason: "the kubelet client runtime stopped".to_owned() })
        })
    }
}

impl Drop for KubeletClient {
    /// Stops the client's runtime without waiting for it: dropping a runtime the ordinary way
    /// blocks, which panics when the attestor is dropped inside an async task.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Reads the files `settings` name into a target.
fn load(settings: &KubeletSettings) -> Result<Target, K8sError> {
    let secure = match settings {
        KubeletSettings::ReadOnly { port } => {
            return Ok(Target {
                host: "127.0.0.1".to_owned(),
                port: *port,
                tls: None,
                token: None,
            });
        }
        KubeletSettings::Secure(secure) => secure,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = verifier(secure, &provider)?;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| K8sError::TlsClient { reason: e.to_string() })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut token = None;
    let config = match &secure.auth {
        KubeletAuth::Anonymous => builder.with_no_client_auth(),
        KubeletAuth::Token(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| K8sError::LoadToken { path: path.clone(), source })?;
            // An empty token file means no header, as in SPIRE.
            token = Some(text.trim().to_owned()).filter(|t| !t.is_empty());
            builder.with_no_client_auth()
        }
        KubeletAuth::ClientCertificate { certificate, private_key } => {
            let (chain, key) = client_key_pair(certificate, private_key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| K8sError::LoadKeypair { reason: e.to_string() })?
        }
    };
    let host = secure.node_name.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| K8sError::Request { reason: format!("node name {host:?}: {e}") })?;
    Ok(Target { host, port: secure.port, tls: Some((Arc::new(config), server_name)), token })
}

/// The verifier of the kubelet's serving certificate.
fn verifier(
    secure: &SecureKubelet,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, K8sError> {
    let ca_path = match &secure.verification {
        KubeletVerification::Skip => {
            return Ok(Arc::new(KubeletVerifier { roots: None, provider: Arc::clone(provider) }));
        }
        KubeletVerification::Ca(path) => path,
    };
    let pem = std::fs::read(ca_path)
        .map_err(|source| K8sError::LoadCa { path: ca_path.clone(), source })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| K8sError::ParseCa { reason: e.to_string() })?;
        roots.add(cert).map_err(|e| K8sError::ParseCa { reason: e.to_string() })?;
    }
    if roots.is_empty() {
        return Err(K8sError::ParseCa {
            reason: format!("no PEM certificate in {}", ca_path.display()),
        });
    }
    let roots = Arc::new(roots);
    if secure.node_name.is_some() {
        // Reached by its node name: the certificate must name the node.
        WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider))
            .build()
            .map(|v| v as Arc<dyn ServerCertVerifier>)
            .map_err(|e| K8sError::ParseCa { reason: e.to_string() })
    } else {
        Ok(Arc::new(KubeletVerifier { roots: Some(roots), provider: Arc::clone(provider) }))
    }
}

/// The client certificate chain and key, PEM files.
fn client_key_pair(
    certificate: &Path,
    private_key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), K8sError> {
    let cert_pem = std::fs::read(certificate)
        .map_err(|source| K8sError::LoadCertificate { path: certificate.to_owned(), source })?;
    let key_pem = std::fs::read(private_key)
        .map_err(|source| K8sError::LoadPrivateKey { path: private_key.to_owned(), source })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| K8sError::LoadKeypair { reason: format!("certificate: {e}") })?;
    if chain.is_empty() {
        return Err(K8sError::LoadKeypair {
            reason: "failed to find any PEM data in certificate input".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| K8sError::LoadKeypair { reason: format!("private key: {e}") })?;
    Ok((chain, key))
}

/// The kubelet verifier for the cases rustls's own does not cover: reached at `127.0.0.1`,
/// whose certificate names the node and not the address, the chain is verified against the
/// CA and the name is not checked (SPIRE does the same); with `skip_kubelet_verification`
/// (`roots: None`) nothing is. Handshake signatures are always checked.
#[derive(Debug)]
struct KubeletVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for KubeletVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects, and over TLS when the target has it, asks for `/pods`.
async fn get_pods(target: Target) -> Result<Bytes, K8sError> {
    let url = target.url();
    let request_err =
        |e: &dyn std::fmt::Display| K8sError::Request { reason: format!("GET {url}: {e}") };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| request_err(&e))?;
    match &target.tls {
        Some((config, server_name)) => {
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                .connect(server_name.clone(), tcp)
                .await
                .map_err(|e| request_err(&e))?;
            request(tls, &target, &url).await
        }
        None => request(tcp, &target, &url).await,
    }
}

/// One HTTP/1.1 `GET /pods` on an open connection.
async fn request<S>(io: S, target: &Target, url: &str) -> Result<Bytes, K8sError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request_err =
        |e: &dyn std::fmt::Display| K8sError::Request { reason: format!("GET {url}: {e}") };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| request_err(&e))?;
    tokio::spawn(async move {
        // Ends when the response is read and the sender dropped; errors reach the sender.
        let _ = connection.await;
    });
    let mut builder = http::Request::get("/pods")
        .header(http::header::HOST, target.authority())
        .header(http::header::ACCEPT, "application/json");
    if let Some(token) = &target.token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = builder.body(Empty::<Bytes>::new()).map_err(|e| request_err(&e))?;
    let response = sender.send_request(req).await.map_err(|e| request_err(&e))?;
    let status = response.status();
    if status != http::StatusCode::OK {
        // The start of the body says why (SPIRE quotes one read of up to 1 KiB).
        let mut body = response.into_body();
        let mut start = Vec::new();
        while start.len() < MAX_ERROR_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        start.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
        start.truncate(MAX_ERROR_BODY);
        return Err(K8sError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&start).into_owned(),
        });
    }
    Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| K8sError::ReadBody { reason: e.to_string() })
}
