//! Fetching a foreign trust domain's bundle from its SPIFFE bundle endpoint.
//!
//! Error texts follow SPIRE's bundle client (they reach operators through RefreshBundle):
//! `failed to fetch bundle: Get "<url>": <why>`, `unexpected status <n> fetching bundle: <body>`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use ward_core::{Bundle, Clock, SpiffeId, TrustDomain};

use crate::tls::{SpiffeServerVerifier, leaf_facts, provider};

/// The longest a fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest bundle document accepted.
const MAX_BODY: usize = 4 << 20;

/// How the endpoint's server certificate is checked.
#[derive(Debug, Clone)]
pub enum EndpointAuth {
    /// `https_spiffe`: the certificate is an X509-SVID for `id` chaining to `roots` (DER).
    Spiffe {
        /// The endpoint's expected SPIFFE ID.
        id: SpiffeId,
        /// X.509 authorities of the endpoint's trust domain.
        roots: Vec<Vec<u8>>,
    },
    /// `https_web`: Web PKI (the Mozilla roots plus `extra_roots`, DER) and the URL's host.
    Web {
        /// Roots trusted besides the built-in ones.
        extra_roots: Vec<Vec<u8>>,
    },
}

/// Fetches and decodes the bundle of `td` from `url`.
///
/// # Errors
/// A sentence in SPIRE's words saying what failed.
pub async fn fetch_bundle(
    td: &TrustDomain,
    url: &str,
    auth: &EndpointAuth,
    clock: Arc<dyn Clock>,
) -> Result<Bundle, String> {
    match tokio::time::timeout(FETCH_TIMEOUT, fetch(td, url, auth, clock)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "failed to fetch bundle: Get {url:?}: context deadline exceeded (Client.Timeout exceeded \
             while awaiting headers)"
        )),
    }
}

async fn fetch(
    td: &TrustDomain,
    url: &str,
    auth: &EndpointAuth,
    clock: Arc<dyn Clock>,
) -> Result<Bundle, String> {
    let get_err = |why: String| format!("failed to fetch bundle: Get {url:?}: {why}");
    let parsed = url::Url::parse(url).map_err(|e| get_err(e.to_string()))?;
    if parsed.scheme() != "https" {
        return Err(get_err(format!("unsupported protocol scheme {:?}", parsed.scheme())));
    }
    let host = parsed.host_str().ok_or_else(|| get_err("no Host in request URL".into()))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    // IPv6 literals come bracketed from the URL.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let addr = format!("{}:{port}", if bare_host.contains(':') { host } else { &bare_host });

    let tls = client_config(auth, clock).map_err(get_err)?;
    let tcp = TcpStream::connect((bare_host.as_str(), port)).await.map_err(|e| {
        get_err(match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                format!("dial tcp {addr}: connect: connection refused")
            }
            _ => format!("dial tcp {addr}: {e}"),
        })
    })?;
    let name = ServerName::try_from(bare_host.clone()).map_err(|e| get_err(e.to_string()))?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| get_err(handshake_error(&e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| get_err(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let host_header = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let req = Request::get(path)
        .header(header::HOST, host_header)
        .header(header::USER_AGENT, "ward-server")
        .body(Empty::<Bytes>::new())
        .map_err(|e| get_err(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| get_err(e.to_string()))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("failed to read bundle: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        let shown = &body[..body.len().min(1024)];
        return Err(format!(
            "unexpected status {} fetching bundle: {}",
            status.as_u16(),
            String::from_utf8_lossy(shown)
        ));
    }
    Bundle::from_spiffe_json(td.clone(), &body).map_err(|e| format!("failed to decode bundle: {e}"))
}

/// The text of a failed handshake: the verifier's own sentence when it refused the server.
fn handshake_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::General(why)) => why.clone(),
        // Go's wording, which SPIRE passes on.
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            "tls: failed to verify certificate: x509: certificate signed by unknown authority"
                .to_owned()
        }
        Some(other) => format!("tls: {other}"),
        None => e.to_string(),
    }
}

/// Certificates are checked at the server's time, as every other validity check is.
struct ClockTime(Arc<dyn Clock>);

impl std::fmt::Debug for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockTime")
    }
}

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<UnixTime> {
        let now = self.0.now().duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(UnixTime::since_unix_epoch(now))
    }
}

fn client_config(
    auth: &EndpointAuth,
    clock: Arc<dyn Clock>,
) -> Result<rustls::ClientConfig, String> {
    let builder =
        rustls::ClientConfig::builder_with_details(provider(), Arc::new(ClockTime(clock)))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
    let mut cfg = match auth {
        EndpointAuth::Spiffe { id, roots } => {
            let verifier = SvidVerifier::new(id.clone(), roots)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        EndpointAuth::Web { extra_roots } => {
            let mut store = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            for der in extra_roots {
                store.add(CertificateDer::from(der.clone())).map_err(|e| e.to_string())?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// `https_spiffe`: the server's leaf is an X509-SVID chaining to the endpoint trust domain's
/// authorities and naming exactly the expected ID; host names are not checked. The chain is
/// checked before the ID, and refusals are worded, as go-spiffe does; handshake signatures
/// are checked by ward's agent-side verifier.
#[derive(Debug)]
struct SvidVerifier {
    expected: SpiffeId,
    roots: RootCertStore,
    inner: SpiffeServerVerifier,
}

impl SvidVerifier {
    fn new(expected: SpiffeId, roots: &[Vec<u8>]) -> Result<Self, String> {
        let mut store = RootCertStore::empty();
        for der in roots {
            store.add(CertificateDer::from(der.clone())).map_err(|e| e.to_string())?;
        }
        let inner =
            SpiffeServerVerifier::new(expected.clone(), Some(roots)).map_err(|e| e.to_string())?;
        Ok(Self { expected, roots: store, inner })
    }
}

impl ServerCertVerifier for SvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = leaf_facts(end_entity)
            .map_err(|e| rustls::Error::General(format!("x509svid: {e}")))?
            .id;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| {
            let why = match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                    "x509: certificate signed by unknown authority".to_owned()
                }
                other => other.to_string(),
            };
            rustls::Error::General(format!("x509svid: could not verify leaf certificate: {why}"))
        })?;
        if id != self.expected {
            return Err(rustls::Error::General(format!("unexpected ID {:?}", id.to_string())));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(msg, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(msg, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
