//! A replica's peer certificate: how it proves to the other replicas that it belongs.
//!
//! The certificate carries one URI SAN, `spiffe://<td>/spire/server/replica/<node-id>`, and
//! is signed by this replica's own active X.509 authority, which every replica trusts
//! because it is in the trust domain's bundle. Only the server's signing path signs IDs under
//! `/spire/server`, so no agent or workload can hold such a certificate. The key lives in
//! `<data_dir>/cluster/keys/peer.key` (PEM, mode 0600); the certificate is signed again when the
//! active authority changes and at half its lifetime, and presented on both sides of every
//! peer connection.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use ward_ca::{DiskKeyManager, KeyFileFormat, KeyManager, KeyType, SvidParams, X509Ca};
use ward_core::TrustDomain;

use crate::ca_manager::CaManager;
use crate::tls::RotatingServerCert;

/// The key id of the peer key in the cluster key directory.
const PEER_KEY_ID: &str = "peer";

/// Lifetime of a peer certificate (capped at the signing authority's NotAfter).
pub const PEER_CERT_TTL: Duration = Duration::from_secs(3600);

/// Why the peer identity could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    /// The key could not be created or read.
    #[error("peer key: {0}")]
    Key(#[from] ward_ca::KeyError),
    /// There is no active X.509 authority to sign with, or signing failed.
    #[error("signing the peer certificate: {0}")]
    Sign(String),
    /// rustls refused the key or chain.
    #[error("peer certificate: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// One issued peer certificate.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// Leaf first, then the authority that signed it.
    pub chain: Vec<Vec<u8>>,
    /// The authority's id (SKI hex) that signed it.
    pub authority_id: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// This replica's peer identity: the key on disk and the current certificate, presented by
/// the peer listener and by every outgoing peer connection.
#[derive(Debug)]
pub struct PeerIdentity {
    td: TrustDomain,
    node_id: u64,
    keys: DiskKeyManager,
    current: RwLock<Option<(PeerCert, Arc<CertifiedKey>)>>,
}

impl PeerIdentity {
    /// Opens (or creates) the peer key under `cluster_dir/keys`.
    ///
    /// # Errors
    /// [`PeerIdentityError::Key`] when the key directory or file cannot be used (including a
    /// key file others can read).
    pub fn open(
        cluster_dir: &Path,
        td: TrustDomain,
        node_id: u64,
    ) -> Result<Self, PeerIdentityError> {
        let keys = DiskKeyManager::new(cluster_dir.join("keys"), KeyFileFormat::Pem)?;
        if keys.get_key(PEER_KEY_ID)?.is_none() {
            keys.generate_key(PEER_KEY_ID, KeyType::EcP256)?;
        }
        Ok(Self { td, node_id, keys, current: RwLock::new(None) })
    }

    /// This replica's node id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The current certificate, if one was issued.
    pub fn cert(&self) -> Option<PeerCert> {
        self.current.read().ok().and_then(|g| g.as_ref().map(|(c, _)| c.clone()))
    }

    fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|g| g.as_ref().map(|(_, k)| k.clone()))
    }

    /// Signs a new certificate with `ca`'s active authority when there is none yet, when the
    /// active authority changed, or when half of the current one's lifetime has passed.
    /// Returns whether a new certificate was issued.
    ///
    /// # Errors
    /// [`PeerIdentityError`] when there is no active authority or signing fails.
    pub fn refresh(&self, ca: &CaManager, now: SystemTime) -> Result<bool, PeerIdentityError> {
        let authority = ca.x509_ca().map_err(|e| PeerIdentityError::Sign(e.to_string()))?;
        self.refresh_with(&authority, now)
    }

    /// [`PeerIdentity::refresh`] with an explicit signing authority.
    ///
    /// # Errors
    /// [`PeerIdentityError`] when signing fails.
    pub fn refresh_with(
        &self,
        authority: &X509Ca,
        now: SystemTime,
    ) -> Result<bool, PeerIdentityError> {
        let now_s = ward_core::clock::unix_seconds(now);
        if let Some(c) = self.cert() {
            let half = c.not_before.saturating_add(c.not_after.saturating_sub(c.not_before) / 2);
            if c.authority_id == authority.authority_id() && now_s < half {
                return Ok(false);
            }
        }
        let key = self.keys.get_key(PEER_KEY_ID)?.ok_or_else(|| {
            PeerIdentityError::Sign("the peer key disappeared from the key directory".into())
        })?;
        let id = ward_core::replica_id::replica_id(&self.td, self.node_id)
            .map_err(|e| PeerIdentityError::Sign(e.to_string()))?;
        let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: PEER_CERT_TTL };
        let leaf = authority
            .sign_server_x509_svid(key.public_key_der(), &params, now)
            .map_err(|e| PeerIdentityError::Sign(e.to_string()))?;
        let not_after = authority
            .svid_not_after(now, PEER_CERT_TTL)
            .map_err(|e| PeerIdentityError::Sign(e.to_string()))?;
        let mut chain = vec![leaf];
        chain.extend(authority.svid_chain_tail().iter().cloned());
        if chain.last().map(Vec::as_slice) != Some(authority.trust_anchor_der()) {
            chain.push(authority.trust_anchor_der().to_vec());
        }
        let certified = Arc::new(RotatingServerCert::certified_key(&chain, key.pkcs8_der())?);
        let cert = PeerCert {
            chain,
            authority_id: authority.authority_id(),
            not_before: now_s.saturating_sub(ward_ca::x509::BACKDATE_SECS),
            not_after,
        };
        match self.current.write() {
            Ok(mut g) => *g = Some((cert, certified)),
            Err(p) => *p.into_inner() = Some((cert, certified)),
        }
        tracing::info!(node_id = self.node_id, not_after, "issued the peer certificate");
        Ok(true)
    }
}

impl ResolvesServerCert for PeerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified()
    }
}

impl ResolvesClientCert for PeerIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
