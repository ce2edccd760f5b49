//! SPIFFE-style TLS between a node agent and a server (ward-server or spire-server v1.13),
//! shared by `ward-server` (its listener, its tests, its peer links) and `ward-agent`.
//!
//! SVIDs carry a SPIFFE ID in one URI SAN and no DNS name, so the usual hostname check does
//! not apply. A SPIRE agent accepts the server when its leaf names exactly
//! `spiffe://<td>/spire/server` and chains to an X.509 authority of the bundle the agent
//! holds; before it has a bundle (`insecure_bootstrap`) only the ID is checked.
//!
//! Main items:
//! - [`SpiffeServerVerifier`]: that check, as a rustls `ServerCertVerifier`;
//! - [`agent_client_config`]: TLS 1.2+, ALPN `h2`, the verifier, and the agent's own SVID
//!   when it has one;
//! - [`agent_channel`]: a tonic channel over that configuration;
//! - [`leaf_facts`]: the SPIFFE ID, serial and NotAfter of a presented leaf.
//!
//! The crate does no file I/O and reads no clock of its own: rustls passes `now` in.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use ward_core::{SpiffeId, TrustDomain};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the key or configuration.
    #[error("tls configuration")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider all of ward's TLS uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Facts from a presented X.509 leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    /// The leaf's SPIFFE ID.
    pub id: SpiffeId,
    /// The leaf's serial number, decimal.
    pub serial: String,
    /// The leaf's NotAfter, Unix seconds.
    pub not_after: i64,
}

/// Facts from a presented X.509 leaf: SPIFFE ID, decimal serial, NotAfter.
///
/// # Errors
/// A message when the certificate is not parseable or does not carry exactly one SPIFFE URI SAN.
pub fn leaf_facts(der: &[u8]) -> Result<LeafFacts, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad certificate: {e}"))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                uris.push(*u);
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(format!("expected exactly one URI SAN, found {}", uris.len()));
    };
    let id = SpiffeId::parse(uri).map_err(|e| format!("bad SPIFFE ID in URI SAN: {e}"))?;
    Ok(LeafFacts {
        id,
        serial: cert.tbs_certificate.serial.to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// How an agent (or a test, a bench, a replica) verifies the server it connects to.
///
/// SPIRE agents do not check DNS names: they accept the server when its leaf carries exactly
/// one URI SAN equal to the expected server ID (`spiffe://<td>/spire/server`) and chains to
/// an X.509 authority of the bundle they hold. Before an agent has a bundle (first
/// attestation with `insecure_bootstrap`) only the ID is checked.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    expected_id: SpiffeId,
    roots: Option<rustls::RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// Accepts a server presenting `expected_id` that chains to one of `roots` (DER X.509
    /// authorities); `None` is insecure bootstrap, which checks the ID only.
    ///
    /// # Errors
    /// [`TlsError::Rustls`] when a root is not a usable CA certificate.
    pub fn new(expected_id: SpiffeId, roots: Option<&[Vec<u8>]>) -> Result<Self, TlsError> {
        let roots = match roots {
            Some(ders) => {
                let mut store = rustls::RootCertStore::empty();
                for der in ders {
                    store.add(CertificateDer::from(der.clone()))?;
                }
                Some(store)
            }
            None => None,
        };
        Ok(Self { expected_id, roots, provider: provider() })
    }

    /// A verifier for the server of `td` (`spiffe://<td>/spire/server`), as [`Self::new`].
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn for_trust_domain(td: &TrustDomain, roots: Option<&[Vec<u8>]>) -> Result<Self, TlsError> {
        let id = SpiffeId::from_parts(td, "/spire/server").map_err(|e| {
            TlsError::Rustls(rustls::Error::General(format!("server ID for {td}: {e}")))
        })?;
        Self::new(id, roots)
    }

    /// The SPIFFE ID the server must present.
    pub fn expected_id(&self) -> &SpiffeId {
        &self.expected_id
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = leaf_facts(end_entity).map_err(rustls::Error::General)?.id;
        if id != self.expected_id {
            return Err(rustls::Error::General(format!(
                "server presented {id}, expected {}",
                self.expected_id
            )));
        }
        if let Some(roots) = &self.roots {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &rustls::server::ParsedCertificate::try_from(end_entity)?,
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
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(msg, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(msg, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// An agent's client TLS configuration: TLS 1.2+, ALPN `h2`, the server checked by
/// `verifier`, and `identity` (certificate chain leaf first, PKCS#8 key; both DER)
/// presented when given.
///
/// # Errors
/// [`TlsError::Rustls`] when rustls refuses the protocol set, the chain or the key.
pub fn agent_client_config(
    verifier: Arc<SpiffeServerVerifier>,
    identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Opens a TLS connection to `addr` with `config`. Verification ignores the server name
/// (SVIDs carry none), so SNI is a fixed placeholder.
///
/// # Errors
/// The I/O error of the TCP connect or the handshake.
pub async fn connect_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// A gRPC channel to the server at `addr` over TLS with `config` (see
/// [`agent_client_config`]). The connection is made now; the channel reconnects with the
/// same configuration when it drops.
///
/// # Errors
/// The transport error when connecting or the handshake fails.
pub async fn agent_channel(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let config = config.clone();
            async move {
                let tls = connect_tls(addr, config).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}
