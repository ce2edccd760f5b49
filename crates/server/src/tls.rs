//! The TCP listener's TLS: the server's own rotating X509-SVID, optional SPIFFE client
//! authentication against the current bundle, and the per-connection peer facts handlers read.
//! The agent side ([`SpiffeServerVerifier`], [`agent_client_config`], [`agent_channel`]) is
//! in `ward-spiffe-tls`, shared with `ward-agent`, and re-exported here.
//!
//! tonic's built-in TLS checks DNS names, which SVIDs do not have, so the listener runs a
//! tokio-rustls acceptor and hands tonic a stream type ([`TlsConn`]) that implements
//! [`Connected`]; its [`TlsPeer`] lands in every request's extensions.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use ward_core::{Bundle, TrustDomain};

use crate::authz::PresentedSvid;

pub use ward_spiffe_tls::{
    SpiffeServerVerifier, TlsError, agent_channel, agent_client_config, leaf_facts, provider,
};

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the verifier reads the current trust anchors from.
pub trait AuthoritySource: Send + Sync + std::fmt::Debug {
    /// The server trust domain's current bundle, if there is one.
    fn bundle(&self) -> Option<Arc<Bundle>>;
}

/// Verifies client certificates, when presented, SPIFFE-style with ward-core's X509-SVID
/// validation: exactly one URI SAN, a member of the server's trust domain, a leaf (not a
/// CA) usable for TLS client authentication, chaining to a current X.509 authority of the
/// bundle, valid now. The path itself is built and validated by `rustls-webpki`.
///
/// The peer listener of a cluster uses [`SpiffeClientVerifier::replicas`]: a presented
/// certificate must then also name a replica of the trust domain
/// (`spiffe://<td>/spire/server/replica/<node-id>`). A client without one completes the
/// handshake (a joining replica has no certificate the cluster trusts yet) and reaches only
/// the peer methods that need none.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    td: TrustDomain,
    source: Arc<dyn AuthoritySource>,
    provider: Arc<CryptoProvider>,
    replicas_only: bool,
}

impl SpiffeClientVerifier {
    /// A verifier for members of `td` trusting whatever `source` currently holds.
    pub fn new(td: TrustDomain, source: Arc<dyn AuthoritySource>) -> Self {
        Self { td, source, provider: provider(), replicas_only: false }
    }

    /// A verifier that accepts only certificates naming a replica of `td` and chaining to
    /// what `source` currently holds.
    pub fn replicas(td: TrustDomain, source: Arc<dyn AuthoritySource>) -> Self {
        Self { td, source, provider: provider(), replicas_only: true }
    }
}

fn refused(reason: impl std::fmt::Display) -> rustls::Error {
    tracing::debug!(%reason, "client certificate refused");
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.source.bundle().ok_or_else(|| refused("no trust bundle yet"))?;
        let mut chain: Vec<&[u8]> = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.as_ref());
        chain.extend(intermediates.iter().map(|c| c.as_ref()));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let id = ward_core::x509svid::verify_with_bundle_for(
            ward_core::x509svid::SvidUsage::ClientAuth,
            &chain,
            &bundle,
            now,
        )
        .map_err(refused)?;
        if !id.is_member_of(&self.td) {
            return Err(refused(format!("unexpected trust domain in client ID {id}")));
        }
        if self.replicas_only && ward_core::replica_id::replica_node_id(&id, &self.td).is_none() {
            return Err(refused(format!("client ID {id} is not a replica")));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's own certificate, swapped in place when the SVID rotates.
#[derive(Debug)]
pub struct RotatingServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl RotatingServerCert {
    /// Builds the certified key from a DER chain (leaf first) and a PKCS#8 private key.
    ///
    /// # Errors
    /// [`TlsError::Rustls`] when the key is not usable.
    pub fn certified_key(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<CertifiedKey, TlsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
        let signing = provider().key_provider.load_private_key(key)?;
        let certs = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        Ok(CertifiedKey::new(certs, signing))
    }

    /// Starts with `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self { current: RwLock::new(Arc::new(key)) }
    }

    /// Replaces the certificate used by new handshakes.
    pub fn set(&self, key: CertifiedKey) {
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(key),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
    }
}

impl ResolvesServerCert for RotatingServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|g| g.clone())
    }
}

/// Builds the listener's rustls configuration: TLS 1.2+, ALPN `h2`, optional client auth.
///
/// # Errors
/// [`TlsError::Rustls`] if rustls rejects the protocol set.
pub fn server_config(
    verifier: Arc<SpiffeClientVerifier>,
    cert: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// What a request learns about its TCP connection.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The remote address.
    pub remote_addr: Option<SocketAddr>,
    /// The verified client SVID, if the client presented one.
    pub svid: Option<PresentedSvid>,
}

/// A server-side TLS connection that tonic can serve.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl TlsConn {
    fn new(inner: TlsStream<TcpStream>) -> Self {
        let (tcp, session) = inner.get_ref();
        let remote_addr = tcp.peer_addr().ok();
        let svid = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|leaf| leaf_facts(leaf).ok());
        Self { inner, peer: TlsPeer { remote_addr, svid } }
    }
}

impl Connected for TlsConn {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Limits on the TLS listener's handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Handshakes in progress at once; further connections wait in the kernel's accept
    /// queue until one finishes (default [`MAX_CONCURRENT_HANDSHAKES`]).
    pub max_concurrent: usize,
    /// Longest a handshake may take before the connection is dropped (default 10 s).
    pub timeout: Duration,
}

/// Default bound on concurrent TLS handshakes. A handshake costs a signature and a chain
/// verification (well under a millisecond of CPU each), so this is far more than two cores
/// can finish at once, while still capping the tasks and memory a flood of slow or silent
/// clients can pin.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self { max_concurrent: MAX_CONCURRENT_HANDSHAKES, timeout: HANDSHAKE_TIMEOUT }
    }
}

/// Live counters of the listener's handshakes.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    in_flight: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl HandshakeStats {
    /// Handshakes in progress now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most handshakes that were ever in progress at once.
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        InFlight(self.clone())
    }
}

/// One handshake counted in [`HandshakeStats::in_flight`] while it lives.
struct InFlight(Arc<HandshakeStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently, at most
/// `limits.max_concurrent` at a time (the mini-redis pattern: a permit is taken before a
/// connection is accepted and returned when its handshake ends), yielding finished
/// connections. Failed handshakes are logged and dropped; the loop ends when the receiver
/// is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: HandshakeLimits,
    stats: Arc<HandshakeStats>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1)));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = tx.closed() => break,
            };
            let (tcp, addr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let in_flight = stats.enter();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(limits.timeout, acceptor.accept(tcp)).await;
                drop(in_flight);
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConn::new(stream))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "tls handshake failed"),
                    Err(_) => tracing::debug!(peer = %addr, "tls handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
