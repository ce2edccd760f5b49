//! The X.509 CA: a self-signed or upstream-signed CA certificate and X509-SVID signing.
//!
//! Certificates follow SPIRE's profile (see the crate docs). They are encoded by hand with
//! the small writer in `der`: everything that is the same for every leaf (issuer, signature
//! algorithm, key usage, extended key usage, basic constraints, authority key identifier) is
//! encoded once when the CA is loaded, so signing an SVID costs one CSR signature check,
//! one SHA-1 and one signature.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use ward_core::{SpiffeId, TrustDomain};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::csr::{CheckedPublicKey, CsrRequest, CsrSubject, check_public_key, verify_csr};
use crate::error::{CaError, SignError};
use crate::key::{PrivateKey, Signer};
use ward_core::der;

const OID_COUNTRY: &[u8] = &[0x55, 0x04, 0x06];
const OID_PROVINCE: &[u8] = &[0x55, 0x04, 0x08];
const OID_LOCALITY: &[u8] = &[0x55, 0x04, 0x07];
const OID_STREET_ADDRESS: &[u8] = &[0x55, 0x04, 0x09];
const OID_POSTAL_CODE: &[u8] = &[0x55, 0x04, 0x11];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
const OID_ORGANIZATIONAL_UNIT: &[u8] = &[0x55, 0x04, 0x0b];
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SERIAL_NUMBER: &[u8] = &[0x55, 0x04, 0x05];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const OID_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// `[0] EXPLICIT INTEGER 2`: X.509 v3.
const VERSION_V3: &[u8] = &[0xa0, 0x03, 0x02, 0x01, 0x02];
/// How far NotBefore is backdated, as SPIRE does, to absorb clock skew.
pub const BACKDATE_SECS: i64 = 10;
/// The path of the server's own SPIFFE ID, which only [`X509Ca::sign_server_x509_svid`]
/// signs (as it alone signs the IDs below it, such as a replica's peer ID).
pub const SERVER_ID_PATH: &str = "/spire/server";

/// Whether `path` is the server's own ID or lies below it (`/spire/server/...`).
fn in_server_namespace(path: &str) -> bool {
    path.strip_prefix(SERVER_ID_PATH).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What an X509-SVID says, taken from the registration entry (never from the CSR).
#[derive(Debug, Clone, Copy)]
pub struct SvidParams<'a> {
    /// The one URI SAN.
    pub spiffe_id: &'a SpiffeId,
    /// DNS SANs; the first also becomes the subject CN.
    pub dns_names: &'a [String],
    /// Requested lifetime; the certificate never outlives the CA.
    pub ttl: Duration,
}

fn unix(t: SystemTime) -> i64 {
    ward_core::clock::unix_seconds(t)
}

fn to_system_time(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

fn ttl_secs(ttl: Duration) -> Result<i64, SignError> {
    match i64::try_from(ttl.as_secs()) {
        Ok(0) => Err(SignError::ZeroTtl),
        Ok(s) => Ok(s),
        Err(_) => Ok(i64::MAX / 2),
    }
}

fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b' ' | b'\'' | b'(' | b')' | b'+' | b',' | b'-' | b'.' | b'/' | b':')
            || matches!(b, b'=' | b'?')
    })
}

/// Appends `SET { SEQUENCE { type, value } }`.
fn rdn(out: &mut Vec<u8>, oid: &[u8], value: &str) {
    der::nested(out, der::SET, |o| attribute(o, oid, value));
}

/// Appends `SEQUENCE { type, value }`, the value a PrintableString when it can be one.
fn attribute(out: &mut Vec<u8>, oid: &[u8], value: &str) {
    let tag = if is_printable(value) { der::PRINTABLE_STRING } else { der::UTF8_STRING };
    der::nested(out, der::SEQUENCE, |o| {
        der::tlv(o, der::OID, oid);
        der::tlv(o, tag, value.as_bytes());
    });
}

/// Appends one RDN holding every value of one attribute type (nothing for no values), its
/// members in DER SET OF order. This is how Go writes a `pkix.Name`.
fn rdn_set<S: AsRef<str>>(out: &mut Vec<u8>, oid: &[u8], values: &[S]) {
    if values.is_empty() {
        return;
    }
    let mut members: Vec<Vec<u8>> = values
        .iter()
        .map(|v| {
            let mut m = Vec::new();
            attribute(&mut m, oid, v.as_ref());
            m
        })
        .collect();
    members.sort();
    der::nested(out, der::SET, |o| members.iter().for_each(|m| o.extend_from_slice(m)));
}

/// Appends the RDNs of a leaf subject taken from a CSR, in the order and grouping Go's
/// `pkix.Name` gives them; the first DNS name, if any, replaces the common name.
fn csr_subject_rdns(out: &mut Vec<u8>, subject: &CsrSubject, dns_names: &[String]) {
    rdn_set(out, OID_COUNTRY, &subject.country);
    rdn_set(out, OID_PROVINCE, &subject.province);
    rdn_set(out, OID_LOCALITY, &subject.locality);
    rdn_set(out, OID_STREET_ADDRESS, &subject.street_address);
    rdn_set(out, OID_POSTAL_CODE, &subject.postal_code);
    rdn_set(out, OID_ORGANIZATION, &subject.organization);
    rdn_set(out, OID_ORGANIZATIONAL_UNIT, &subject.organizational_unit);
    let cn = dns_names.first().map_or(subject.common_name.as_str(), String::as_str);
    if !cn.is_empty() {
        rdn(out, OID_COMMON_NAME, cn);
    }
    if !subject.serial_number.is_empty() {
        rdn(out, OID_SERIAL_NUMBER, &subject.serial_number);
    }
}

/// Appends one Extension: `SEQUENCE { extnID, critical?, OCTET STRING { value } }`.
fn extension(out: &mut Vec<u8>, oid: &[u8], critical: bool, value: impl FnOnce(&mut Vec<u8>)) {
    der::nested(out, der::SEQUENCE, |o| {
        der::tlv(o, der::OID, oid);
        if critical {
            o.extend_from_slice(&[0x01, 0x01, 0xff]);
        }
        der::nested(o, der::OCTET_STRING, value);
    });
}

fn ski_extension(out: &mut Vec<u8>, ski: &[u8]) {
    extension(out, OID_SUBJECT_KEY_ID, false, |o| der::tlv(o, der::OCTET_STRING, ski));
}

fn aki_extension(out: &mut Vec<u8>, issuer_ski: &[u8]) {
    extension(out, OID_AUTHORITY_KEY_ID, false, |o| {
        der::nested(o, der::SEQUENCE, |o| der::tlv(o, 0x80, issuer_ski));
    });
}

/// SHA-1 of the subjectPublicKey bits, as RFC 5280 method 1 and SPIRE compute the SKI.
pub fn subject_key_id(key_bits: &[u8]) -> [u8; 20] {
    let d = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key_bits);
    let mut out = [0u8; 20];
    out.copy_from_slice(d.as_ref());
    out
}

/// A random positive 128-bit serial (never zero).
fn random_serial(rng: &SystemRandom) -> Result<[u8; 16], SignError> {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial).map_err(|_| SignError::Crypto)?;
    if serial == [0u8; 16] {
        serial[15] = 1;
    }
    Ok(serial)
}

/// Signs `tbs` (written into the certificate by `write_tbs`) and returns the certificate.
fn signed_certificate(
    signer: &Signer,
    capacity: usize,
    write_tbs: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, SignError> {
    let mut out = Vec::with_capacity(capacity);
    der::nested(&mut out, der::SEQUENCE, |o| {
        let start = o.len();
        der::nested(o, der::SEQUENCE, write_tbs);
        let mut sig = Vec::with_capacity(520);
        signer.sign_into(&o[start..], &mut sig)?;
        o.extend_from_slice(signer.x509_algorithm_der());
        der::bit_string(o, &sig);
        Ok::<(), SignError>(())
    })?;
    Ok(out)
}

/// Facts read back from a CA certificate.
struct CertFacts {
    subject_der: Vec<u8>,
    /// The trust domain of the first `spiffe://` URI SAN, if any.
    trust_domain: Option<TrustDomain>,
    ski: [u8; 20],
    key_bits: Vec<u8>,
    not_before: i64,
    not_after: i64,
    is_ca: bool,
}

fn cert_facts(cert_der: &[u8]) -> Result<CertFacts, CaError> {
    let (rest, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| CaError::MalformedCertificate("not DER X.509"))?;
    if !rest.is_empty() {
        return Err(CaError::MalformedCertificate("trailing bytes"));
    }
    let key_bits = cert.public_key().subject_public_key.data.to_vec();
    let mut ski = subject_key_id(&key_bits);
    let mut is_ca = false;
    let mut trust_domain = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) if trust_domain.is_none() => {
                trust_domain = san.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(u) => SpiffeId::parse(u).ok().map(|id| id.trust_domain()),
                    _ => None,
                });
            }
            ParsedExtension::SubjectKeyIdentifier(id) if id.0.len() == 20 => {
                ski.copy_from_slice(id.0);
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            _ => {}
        }
    }
    Ok(CertFacts {
        subject_der: cert.subject().as_raw().to_vec(),
        trust_domain,
        ski,
        key_bits,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca,
    })
}

fn spki_bits(spki_der: &[u8]) -> Result<Vec<u8>, CaError> {
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|_| CaError::MalformedCertificate("bad public key"))?;
    Ok(info.subject_public_key.data.to_vec())
}

/// An upstream CA loaded from disk that signs ward's intermediate CA certificate.
#[derive(Debug)]
pub struct UpstreamCa {
    certs: Vec<Vec<u8>>,
    signer: Signer,
    facts_subject: Vec<u8>,
    ski: [u8; 20],
    not_after: i64,
}

impl UpstreamCa {
    /// Loads the upstream CA from a PEM certificate file (the upstream CA certificate first,
    /// then any certificates above it up to the root) and a PEM private key file.
    ///
    /// # Errors
    /// [`CaError::Io`] for unreadable files, [`CaError::Pem`] for bad PEM, and the errors of
    /// [`UpstreamCa::new`].
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| CaError::Io { path: p.to_owned(), source })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = zeroize::Zeroizing::new(read(key_path)?);
        let certs: Vec<Vec<u8>> = pem::parse_many(&cert_pem)
            .map_err(|_| CaError::Pem(cert_path.display().to_string()))?
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .collect();
        if certs.is_empty() {
            return Err(CaError::Pem(cert_path.display().to_string()));
        }
        Self::new(certs, PrivateKey::from_pem(&key_pem)?)
    }

    /// An upstream CA from DER certificates (its own first, then up to the root) and its key.
    ///
    /// # Errors
    /// [`CaError::MalformedCertificate`], [`CaError::NotACa`], [`CaError::KeyMismatch`].
    pub fn new(certs: Vec<Vec<u8>>, key: PrivateKey) -> Result<Self, CaError> {
        let first = certs.first().ok_or(CaError::MalformedCertificate("no certificate"))?;
        let facts = cert_facts(first)?;
        if !facts.is_ca {
            return Err(CaError::NotACa);
        }
        if spki_bits(key.public_key_der())? != facts.key_bits {
            return Err(CaError::KeyMismatch);
        }
        for c in &certs[1..] {
            cert_facts(c)?;
        }
        Ok(Self {
            signer: key.x509_signer()?,
            facts_subject: facts.subject_der,
            ski: facts.ski,
            not_after: facts.not_after,
            certs,
        })
    }

    /// The upstream certificates, its own first, DER.
    pub fn certs(&self) -> &[Vec<u8>] {
        &self.certs
    }
}

/// A loaded X.509 CA ready to sign X509-SVIDs.
#[derive(Debug)]
pub struct X509Ca {
    cert_der: Vec<u8>,
    upstream: Vec<Vec<u8>>,
    svid_chain_tail: Vec<Vec<u8>>,
    trust_domain: Option<TrustDomain>,
    key: PrivateKey,
    signer: Signer,
    ski: [u8; 20],
    not_before: i64,
    not_after: i64,
    rng: SystemRandom,
    /// Signature AlgorithmIdentifier followed by the issuer Name.
    leaf_alg_and_issuer: Vec<u8>,
    /// Key usage, extended key usage, basic constraints and authority key id extensions.
    leaf_fixed_extensions: Vec<u8>,
    /// The `C=US` and `O=SPIRE` RDNs of every leaf subject.
    leaf_subject_base: Vec<u8>,
}

impl X509Ca {
    /// Builds a self-signed CA for `td` valid from `now - 10s` to `now + ttl`.
    ///
    /// # Errors
    /// [`CaError`] if signing fails or `ttl` is zero.
    pub fn self_signed(
        key: PrivateKey,
        td: &TrustDomain,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let signer = key.x509_signer()?;
        let key_bits = spki_bits(key.public_key_der())?;
        let ski = subject_key_id(&key_bits);
        let now = unix(now);
        let not_after = now.saturating_add(ttl_secs(ttl)?);
        let cert = build_ca_cert(&key, &signer, td, &ski, None, now, not_after)?;
        Self::from_parts(key, cert, Vec::new())
    }

    /// Builds an intermediate CA for `td` signed by `upstream`, valid from `now - 10s` to
    /// `now + ttl` capped at the upstream certificate's NotAfter.
    ///
    /// # Errors
    /// [`CaError::IssuerExpired`] if the upstream has expired by `now`, or a signing error.
    pub fn signed_by_upstream(
        key: PrivateKey,
        td: &TrustDomain,
        ttl: Duration,
        now: SystemTime,
        upstream: &UpstreamCa,
    ) -> Result<Self, CaError> {
        let now = unix(now);
        if now >= upstream.not_after {
            return Err(CaError::IssuerExpired { not_after: upstream.not_after });
        }
        let key_bits = spki_bits(key.public_key_der())?;
        let ski = subject_key_id(&key_bits);
        let not_after = now.saturating_add(ttl_secs(ttl)?).min(upstream.not_after);
        let cert = build_ca_cert(&key, &upstream.signer, td, &ski, Some(upstream), now, not_after)?;
        Self::from_parts(key, cert, upstream.certs.clone())
    }

    /// Re-creates a CA from its stored certificate, key and upstream chain (the certificates
    /// above it, nearest first; empty for a self-signed CA).
    ///
    /// # Errors
    /// [`CaError::MalformedCertificate`], [`CaError::NotACa`], [`CaError::KeyMismatch`].
    pub fn from_parts(
        key: PrivateKey,
        cert_der: Vec<u8>,
        upstream: Vec<Vec<u8>>,
    ) -> Result<Self, CaError> {
        let facts = cert_facts(&cert_der)?;
        if !facts.is_ca {
            return Err(CaError::NotACa);
        }
        if spki_bits(key.public_key_der())? != facts.key_bits {
            return Err(CaError::KeyMismatch);
        }
        let signer = key.x509_signer()?;

        let mut leaf_alg_and_issuer = Vec::with_capacity(256);
        leaf_alg_and_issuer.extend_from_slice(signer.x509_algorithm_der());
        leaf_alg_and_issuer.extend_from_slice(&facts.subject_der);

        let mut fixed = Vec::with_capacity(128);
        // digitalSignature | keyEncipherment | keyAgreement: bits 0, 2, 4.
        extension(&mut fixed, OID_KEY_USAGE, true, |o| {
            o.extend_from_slice(&[0x03, 0x02, 0x03, 0xa8])
        });
        extension(&mut fixed, OID_EXT_KEY_USAGE, false, |o| {
            der::nested(o, der::SEQUENCE, |o| {
                der::tlv(o, der::OID, OID_SERVER_AUTH);
                der::tlv(o, der::OID, OID_CLIENT_AUTH);
            });
        });
        extension(&mut fixed, OID_BASIC_CONSTRAINTS, true, |o| der::tlv(o, der::SEQUENCE, &[]));
        aki_extension(&mut fixed, &facts.ski);

        let mut base = Vec::with_capacity(32);
        rdn(&mut base, OID_COUNTRY, "US");
        rdn(&mut base, OID_ORGANIZATION, "SPIRE");

        let mut svid_chain_tail = Vec::new();
        if !upstream.is_empty() {
            svid_chain_tail.push(cert_der.clone());
            svid_chain_tail.extend(upstream[..upstream.len() - 1].iter().cloned());
        }
        Ok(Self {
            cert_der,
            upstream,
            svid_chain_tail,
            trust_domain: facts.trust_domain,
            key,
            signer,
            ski: facts.ski,
            not_before: facts.not_before,
            not_after: facts.not_after,
            rng: SystemRandom::new(),
            leaf_alg_and_issuer,
            leaf_fixed_extensions: fixed,
            leaf_subject_base: base,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificates above the CA certificate, nearest first (empty when self-signed).
    pub fn upstream_chain(&self) -> &[Vec<u8>] {
        &self.upstream
    }

    /// The certificates an SVID chain carries after its leaf: nothing for a self-signed CA;
    /// the CA certificate and the upstream intermediates (all but the root) otherwise.
    pub fn svid_chain_tail(&self) -> &[Vec<u8>] {
        &self.svid_chain_tail
    }

    /// The certificates relying parties must trust: the CA certificate itself when
    /// self-signed, the upstream root (the last upstream certificate) otherwise.
    pub fn trust_anchor_der(&self) -> &[u8] {
        self.upstream.last().map_or(&self.cert_der, |c| c)
    }

    /// The trust domain named by the CA certificate's `spiffe://` URI SAN. SVIDs are only
    /// signed for IDs in it. `None` for a CA certificate without such a SAN (then any
    /// trust domain is signed).
    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }

    /// The CA's private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The subject key identifier (what leaves carry as authority key identifier).
    pub fn ski(&self) -> &[u8; 20] {
        &self.ski
    }

    /// The authority ID SPIRE uses for this CA: lower-case hex of the SKI.
    pub fn authority_id(&self) -> String {
        hex::encode(self.ski)
    }

    /// NotBefore of the CA certificate.
    pub fn not_before(&self) -> SystemTime {
        to_system_time(self.not_before)
    }

    /// NotAfter of the CA certificate.
    pub fn not_after(&self) -> SystemTime {
        to_system_time(self.not_after)
    }

    /// NotAfter of the CA certificate as Unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after
    }

    /// The NotAfter (Unix seconds) of an SVID signed at `now` with `ttl`: `now + ttl`, capped
    /// at the CA's own NotAfter. Callers that need the expiry of a leaf they just had signed
    /// with the same `now` and `ttl` read it here instead of parsing the leaf.
    ///
    /// # Errors
    /// [`SignError::ZeroTtl`] for a zero TTL.
    pub fn svid_not_after(&self, now: SystemTime, ttl: Duration) -> Result<i64, SignError> {
        self.svid_not_after_at(unix(now), ttl)
    }

    fn svid_not_after_at(&self, now: i64, ttl: Duration) -> Result<i64, SignError> {
        Ok(now.saturating_add(ttl_secs(ttl)?).min(self.not_after))
    }

    /// Signs an X509-SVID for the key in a DER PKCS#10 CSR. The CSR's signature is checked;
    /// only its public key is used. Returns the leaf certificate, DER.
    ///
    /// # Errors
    /// [`SignError::Csr`] for a refused CSR, and the errors of [`X509Ca::sign_x509_svid`].
    pub fn sign_x509_svid_from_csr(
        &self,
        csr_der: &[u8],
        params: &SvidParams<'_>,
        now: SystemTime,
    ) -> Result<Vec<u8>, SignError> {
        self.check_params(params, false)?;
        let key = verify_csr(csr_der)?;
        self.sign_checked(&key, params, None, now).inspect(|_| crate::telemetry::x509_svid_signed())
    }

    /// Signs an X509-SVID for a CSR read with [`crate::read_csr`] (MintX509SVID): the key
    /// and, unless it is empty, the subject come from the CSR, with the first DNS name as the
    /// common name. Returns the leaf, DER.
    ///
    /// # Errors
    /// The errors of [`X509Ca::sign_x509_svid`] but for the key's.
    pub fn sign_x509_svid_for_request(
        &self,
        csr: &CsrRequest<'_>,
        params: &SvidParams<'_>,
        now: SystemTime,
    ) -> Result<Vec<u8>, SignError> {
        self.check_params(params, false)?;
        let subject = Some(&csr.subject).filter(|s| !s.is_empty());
        self.sign_checked(&csr.key, params, subject, now)
            .inspect(|_| crate::telemetry::x509_svid_signed())
    }

    /// Signs an X509-SVID for a bare SubjectPublicKeyInfo DER. Returns the leaf, DER.
    ///
    /// # Errors
    /// [`SignError::PublicKey`] for a refused key, [`SignError::IdTooLong`],
    /// [`SignError::NotInTrustDomain`], [`SignError::ServerIdReserved`],
    /// [`SignError::InvalidDnsName`], [`SignError::ZeroTtl`], [`SignError::CaExpired`].
    pub fn sign_x509_svid(
        &self,
        spki_der: &[u8],
        params: &SvidParams<'_>,
        now: SystemTime,
    ) -> Result<Vec<u8>, SignError> {
        self.check_params(params, false)?;
        let key = check_public_key(spki_der)?;
        self.sign_checked(&key, params, None, now).inspect(|_| crate::telemetry::x509_svid_signed())
    }

    /// Signs the server's own X509-SVID (`spiffe://<td>/spire/server`), or a replica's peer
    /// certificate (`spiffe://<td>/spire/server/replica/<node-id>`, see
    /// [`ward_core::replica_id`]), for a bare SubjectPublicKeyInfo DER. The other signing
    /// methods refuse the server's ID and every ID below it, so that no API can obtain a
    /// certificate agents would take for the server or replicas would take for a replica.
    /// Returns the leaf, DER.
    ///
    /// # Errors
    /// [`SignError::NotServerId`] for any other ID, and the errors of
    /// [`X509Ca::sign_x509_svid`].
    pub fn sign_server_x509_svid(
        &self,
        spki_der: &[u8],
        params: &SvidParams<'_>,
        now: SystemTime,
    ) -> Result<Vec<u8>, SignError> {
        let td = params.spiffe_id.trust_domain();
        let replica = ward_core::replica_id::replica_node_id(params.spiffe_id, &td).is_some();
        if params.spiffe_id.path() != SERVER_ID_PATH && !replica {
            return Err(SignError::NotServerId(params.spiffe_id.to_string()));
        }
        self.check_params(params, true)?;
        let key = check_public_key(spki_der)?;
        self.sign_checked(&key, params, None, now).inspect(|_| crate::telemetry::x509_svid_signed())
    }

    fn sign_checked(
        &self,
        key: &CheckedPublicKey<'_>,
        params: &SvidParams<'_>,
        subject: Option<&CsrSubject>,
        now: SystemTime,
    ) -> Result<Vec<u8>, SignError> {
        let now = unix(now);
        if now >= self.not_after {
            return Err(SignError::CaExpired { not_after: self.not_after });
        }
        let not_after = self.svid_not_after_at(now, params.ttl)?;
        let serial = random_serial(&self.rng)?;
        let ski = subject_key_id(key.key_bits);
        let id = params.spiffe_id.as_str().as_bytes();
        let capacity = 700 + key.spki_der.len() + id.len() + params.dns_names.len() * 64;
        signed_certificate(&self.signer, capacity, |o| {
            o.extend_from_slice(VERSION_V3);
            der::uint(o, &serial);
            o.extend_from_slice(&self.leaf_alg_and_issuer);
            der::nested(o, der::SEQUENCE, |o| {
                der::time(o, now - BACKDATE_SECS);
                der::time(o, not_after);
            });
            der::nested(o, der::SEQUENCE, |o| match subject {
                Some(subject) => csr_subject_rdns(o, subject, params.dns_names),
                None => {
                    o.extend_from_slice(&self.leaf_subject_base);
                    if let Some(cn) = params.dns_names.first() {
                        rdn(o, OID_COMMON_NAME, cn);
                    }
                }
            });
            o.extend_from_slice(key.spki_der);
            der::nested(o, 0xa3, |o| {
                der::nested(o, der::SEQUENCE, |o| {
                    o.extend_from_slice(&self.leaf_fixed_extensions);
                    ski_extension(o, &ski);
                    extension(o, OID_SUBJECT_ALT_NAME, false, |o| {
                        der::nested(o, der::SEQUENCE, |o| {
                            der::tlv(o, 0x86, id);
                            for dns in params.dns_names {
                                der::tlv(o, 0x82, dns.as_bytes());
                            }
                        });
                    });
                });
            });
        })
    }

    fn check_params(&self, params: &SvidParams<'_>, server_svid: bool) -> Result<(), SignError> {
        if let Some(td) = &self.trust_domain
            && !params.spiffe_id.is_member_of(td)
        {
            return Err(SignError::NotInTrustDomain {
                id: params.spiffe_id.to_string(),
                trust_domain: td.to_string(),
            });
        }
        if !server_svid && in_server_namespace(params.spiffe_id.path()) {
            return Err(SignError::ServerIdReserved(params.spiffe_id.to_string()));
        }
        check_params(params)
    }
}

fn check_params(params: &SvidParams<'_>) -> Result<(), SignError> {
    let len = params.spiffe_id.as_str().len();
    if len > SpiffeId::MAX_SVID_LEN {
        return Err(SignError::IdTooLong { len, max: SpiffeId::MAX_SVID_LEN });
    }
    for dns in params.dns_names {
        ward_core::dns_name::validate_dns_name(dns)
            .map_err(|reason| SignError::InvalidDnsName { name: dns.clone(), reason })?;
    }
    if params.ttl.as_secs() == 0 {
        return Err(SignError::ZeroTtl);
    }
    Ok(())
}

/// Builds a CA certificate (self-signed when `upstream` is `None`).
fn build_ca_cert(
    key: &PrivateKey,
    signer: &Signer,
    td: &TrustDomain,
    ski: &[u8; 20],
    upstream: Option<&UpstreamCa>,
    now: i64,
    not_after: i64,
) -> Result<Vec<u8>, SignError> {
    let serial = random_serial(&SystemRandom::new())?;
    let serial_decimal = u128::from_be_bytes(serial).to_string();
    let mut subject = Vec::with_capacity(96);
    der::nested(&mut subject, der::SEQUENCE, |o| {
        rdn(o, OID_COUNTRY, "US");
        rdn(o, OID_ORGANIZATION, "SPIFFE");
        rdn(o, OID_SERIAL_NUMBER, &serial_decimal);
    });
    let (issuer, issuer_ski) = match upstream {
        Some(u) => (u.facts_subject.as_slice(), &u.ski),
        None => (subject.as_slice(), ski),
    };
    let td_id = td.id();
    signed_certificate(signer, 1024 + key.public_key_der().len(), |o| {
        o.extend_from_slice(VERSION_V3);
        der::uint(o, &serial);
        o.extend_from_slice(signer.x509_algorithm_der());
        o.extend_from_slice(issuer);
        der::nested(o, der::SEQUENCE, |o| {
            der::time(o, now - BACKDATE_SECS);
            der::time(o, not_after);
        });
        o.extend_from_slice(&subject);
        o.extend_from_slice(key.public_key_der());
        der::nested(o, 0xa3, |o| {
            der::nested(o, der::SEQUENCE, |o| {
                // keyCertSign | cRLSign: bits 5, 6.
                extension(o, OID_KEY_USAGE, true, |o| {
                    o.extend_from_slice(&[0x03, 0x02, 0x01, 0x06])
                });
                extension(o, OID_BASIC_CONSTRAINTS, true, |o| {
                    der::tlv(o, der::SEQUENCE, &[0x01, 0x01, 0xff]);
                });
                ski_extension(o, ski);
                aki_extension(o, issuer_ski);
                extension(o, OID_SUBJECT_ALT_NAME, false, |o| {
                    der::nested(o, der::SEQUENCE, |o| der::tlv(o, 0x86, td_id.as_str().as_bytes()));
                });
            });
        });
    })
}
