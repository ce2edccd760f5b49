//! The SPIFFE bundle endpoint (profile `https_spiffe`): the server's own trust bundle as a
//! SPIFFE bundle document, over HTTPS authenticated with the server's X509-SVID.
//!
//! As SPIRE's endpoint: `GET /` answers the bundle with `Content-Type: application/json`,
//! the configured refresh hint and the stored sequence number; another method answers 405,
//! another path 404. No client certificate is asked for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use ward_core::TrustDomain;
use ward_store::Store;

use crate::tls::{RotatingServerCert, TlsError, provider};

/// How long a client has to finish the TLS handshake and send its request headers
/// (SPIRE: `ReadHeaderTimeout` of 10 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint serves.
#[derive(Debug, Clone)]
pub struct BundleSource {
    /// The store holding the bundle.
    pub store: Store,
    /// The server's trust domain, whose bundle is served.
    pub trust_domain: TrustDomain,
    /// The refresh hint written into the document (SPIRE's `refresh_hint`).
    pub refresh_hint: Duration,
}

impl BundleSource {
    /// The response to one request.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
        }
        if path != "/" {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        }
        let Some(bundle) = self.store.bundle(&self.trust_domain) else {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 unable to retrieve local bundle\n",
            );
        };
        let mut bundle = (*bundle).clone();
        bundle.refresh_hint = i64::try_from(self.refresh_hint.as_secs()).unwrap_or(i64::MAX);
        match bundle.to_spiffe_json() {
            Ok(json) => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            Err(e) => {
                tracing::error!(error = %e, "unable to marshal local bundle");
                text(StatusCode::INTERNAL_SERVER_ERROR, "500 unable to marshal local bundle\n")
            }
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The endpoint's TLS configuration: TLS 1.2+, ALPN `http/1.1`, the server's SVID, no
/// client authentication.
///
/// # Errors
/// [`TlsError::Rustls`] if rustls rejects the protocol set.
pub fn tls_config(cert: Arc<RotatingServerCert>) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves `source` on `listener` until `stop` is raised.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    source: Arc<BundleSource>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "bundle endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stopped => return,
        };
        let acceptor = acceptor.clone();
        let source = source.clone();
        tokio::spawn(async move { connection(acceptor, tcp, peer, source).await });
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    source: Arc<BundleSource>,
) {
    let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bundle endpoint handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "bundle endpoint handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let resp = source.respond(req.method(), req.uri().path());
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "bundle endpoint connection ended");
    }
}
