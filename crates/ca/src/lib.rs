//! ward's certificate authority.
//!
//! `ward-ca` owns everything that touches a CA private key:
//!
//! - [`KeyManager`]s that generate and keep keys ([`MemoryKeyManager`], and
//!   [`DiskKeyManager`] with PKCS#8 files, mode 0600, atomically replaced); the four
//!   [`KeyType`]s SPIRE offers (`ec-p256` default, `ec-p384`, `rsa-2048`, `rsa-4096`);
//! - the X.509 CA ([`X509Ca`]): self-signed, or an intermediate under an [`UpstreamCa`]
//!   loaded from disk;
//! - X509-SVID signing from a PKCS#10 CSR (signature checked, only the key used) or from a
//!   bare SubjectPublicKeyInfo, in SPIRE's certificate profile;
//! - JWT-SVID signing ([`JwtSigner`]);
//! - the rotation schedule ([`rotation::plan`]) as a pure function of time and state;
//! - owner-only directories and the atomic, synced file write that key files and the
//!   server's CA journal use ([`files`]).
//!
//! It does not store certificates, publish bundles, run timers or talk to the network: the
//! server's CA manager does that, executing the [`RotationAction`]s this crate plans. Its
//! only I/O is reading and writing key files (and reading upstream CA files). Every
//! private-key operation goes through aws-lc-rs.
//!
//! # Profile (as SPIRE)
//!
//! Every certificate has a random positive 128-bit serial, SKI = SHA-1 of the
//! subjectPublicKey bits, AKI = the issuer's SKI, NotBefore = now − 10 s and NotAfter =
//! now + TTL capped at the issuer's NotAfter. A CA certificate carries URI SAN
//! `spiffe://<td>`, subject `C=US, O=SPIFFE, serialNumber=<serial>`, CA=true and key usage
//! keyCertSign|cRLSign. An X509-SVID carries one URI SAN (plus DNS SANs), subject
//! `C=US, O=SPIRE[, CN=<first DNS name>]`, CA=false, key usage
//! digitalSignature|keyEncipherment|keyAgreement and extended key usage
//! serverAuth+clientAuth. JWT-SVIDs have header `alg` (ES256, ES384 or RS256 by key type),
//! `kid` and `typ: JWT`, and claims `sub`, `aud` (array), `exp` (capped at the key's
//! expiry), `iat` and optionally `iss`.
//!
//! # Main flow
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use ward_ca::{
//!     build_csr, JwtSigner, KeyManager, KeyType, MemoryKeyManager, PrivateKey, SvidParams,
//!     X509Ca, new_key_id,
//! };
//! use ward_core::{SpiffeId, TrustDomain};
//!
//! let now = SystemTime::now();
//! let td = TrustDomain::new("example.org")?;
//! let keys = MemoryKeyManager::new(); // DiskKeyManager::new(data_dir, ..) on a server
//!
//! // 1. A CA key and a self-signed CA certificate for the trust domain.
//! let ca_key = keys.get_or_generate("x509-CA-A", KeyType::EcP256)?;
//! let ca = X509Ca::self_signed(ca_key, &td, Duration::from_secs(24 * 3600), now)?;
//!
//! // 2. A workload's CSR (only its key is used) and the entry's identity give the leaf.
//! let workload_key = PrivateKey::generate(KeyType::EcP256)?;
//! let csr = build_csr(&workload_key)?;
//! let id = SpiffeId::parse("spiffe://example.org/demo")?;
//! let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(3600) };
//! let leaf_der = ca.sign_x509_svid_from_csr(&csr, &params, now)?;
//! assert!(!leaf_der.is_empty());
//!
//! // 3. A JWT key published under a random kid signs JWT-SVIDs.
//! let jwt_key = keys.get_or_generate("JWT-Signer-A", KeyType::EcP256)?;
//! let signer = JwtSigner::new(jwt_key, new_key_id()?, ca.not_after_unix())?;
//! let jwt = signer.sign(&id, &["demo".to_owned()], now, Duration::from_secs(300))?;
//! assert_eq!(jwt.token.split('.').count(), 3);
//!
//! // 4. A driver runs `ward_ca::rotation::plan(now, &state)` every few seconds and executes
//! //    the actions it returns.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod csr;
pub mod error;
pub mod files;
pub mod jwt;
pub mod key;
pub mod keymanager;
pub mod rotation;
mod telemetry;
pub mod x509;

pub use csr::{
    CheckedPublicKey, CsrRequest, CsrSubject, PublicKeyKind, build_csr, check_public_key, read_csr,
    verify_csr,
};
pub use error::{CaError, CsrError, KeyError, PublicKeyError, SignError};
pub use jwt::{JwtSigner, SignedJwt, new_key_id};
pub use key::{KeyType, PrivateKey, Signer};
pub use keymanager::{DiskKeyManager, KeyFileFormat, KeyManager, MemoryKeyManager};
pub use rotation::{
    AuthorityInfo, AuthorityKind, RotationAction, RotationState, SlotId, SlotState,
};
pub use x509::{SvidParams, UpstreamCa, X509Ca, subject_key_id};
