//! Error types of the CA: one enum per concern, each variant naming what failed.

/// Why a key could not be generated, loaded, parsed or stored.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key type name is not one of `ec-p256`, `ec-p384`, `rsa-2048`, `rsa-4096`.
    #[error("unknown key type {0:?}: expected ec-p256, ec-p384, rsa-2048 or rsa-4096")]
    UnknownKeyType(String),
    /// The bytes are not a private key ward can use (PKCS#8, SEC1 EC or PKCS#1 RSA).
    #[error("not a usable private key: {0}")]
    Malformed(&'static str),
    /// The PEM text could not be decoded.
    #[error("bad PEM: {0}")]
    Pem(#[from] pem::PemError),
    /// The key is valid but of a kind ward does not use (other curve, odd RSA size).
    #[error("unsupported private key: {0}")]
    Unsupported(&'static str),
    /// The cryptographic library refused an operation.
    #[error("crypto operation failed: {0}")]
    Crypto(&'static str),
    /// A key id would not make a safe file name.
    #[error("invalid key id {0:?}: use 1-128 of A-Z a-z 0-9 . _ - (not starting with '.')")]
    InvalidKeyId(String),
    /// The key directory or a key file is open to group members or other users (or the
    /// directory could not be created).
    #[error("key storage: {0}")]
    Permissions(#[from] crate::files::PrivatePathError),
    /// A key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a public key (from a CSR or a bare SubjectPublicKeyInfo) cannot go into an SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// The bytes are not a DER SubjectPublicKeyInfo.
    #[error("malformed SubjectPublicKeyInfo")]
    Malformed,
    /// Bytes follow the SubjectPublicKeyInfo.
    #[error("trailing bytes after SubjectPublicKeyInfo")]
    TrailingData,
    /// The key algorithm is neither EC nor RSA.
    #[error("unsupported public key algorithm {oid}")]
    UnsupportedAlgorithm {
        /// Dotted OID of the algorithm.
        oid: String,
    },
    /// An EC key on a curve other than P-256 or P-384.
    #[error("unsupported elliptic curve {oid}")]
    UnsupportedCurve {
        /// Dotted OID of the curve, or `absent`.
        oid: String,
    },
    /// An RSA key shorter than 2048 bits.
    #[error("RSA key of {bits} bits is too small (minimum 2048)")]
    RsaTooSmall {
        /// Modulus size in bits.
        bits: usize,
    },
}

/// Why a PKCS#10 certificate signing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// The bytes are not a DER CertificationRequest.
    #[error("malformed CSR DER")]
    MalformedDer,
    /// Bytes follow the CertificationRequest.
    #[error("trailing bytes after CSR")]
    TrailingData,
    /// The CSR's signature algorithm is not one ward checks.
    #[error("unsupported CSR signature algorithm {oid}")]
    UnsupportedSignatureAlgorithm {
        /// Dotted OID of the algorithm.
        oid: String,
    },
    /// The CSR's public key cannot be certified.
    #[error("CSR public key: {0}")]
    UnsupportedKey(#[from] PublicKeyError),
    /// The CSR is not signed by the key it carries.
    #[error("CSR signature does not verify")]
    BadSignature,
}

/// Why an SVID (X.509 or JWT) was not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The bare public key was refused.
    #[error(transparent)]
    PublicKey(#[from] PublicKeyError),
    /// The SPIFFE ID is longer than [`ward_core::SpiffeId::MAX_SVID_LEN`].
    #[error("SPIFFE ID is {len} bytes long; the limit is {max}")]
    IdTooLong {
        /// Length of the refused ID in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The SPIFFE ID belongs to another trust domain than the CA's.
    #[error("{id} is not a member of trust domain {trust_domain}")]
    NotInTrustDomain {
        /// The refused ID.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A DNS name breaks SPIRE's rules ([`ward_core::dns_name`]).
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidDnsName {
        /// The refused name.
        name: String,
        /// The rule it breaks.
        #[source]
        reason: ward_core::dns_name::DnsNameError,
    },
    /// The server's own SPIFFE ID, or one below it (a replica's), asked of a signing path
    /// other than the server's.
    #[error("{0} is in the server's own namespace; only the server's SVIDs may carry it")]
    ServerIdReserved(String),
    /// [`crate::X509Ca::sign_server_x509_svid`] was asked for another ID.
    #[error("{0} is not the server's ID")]
    NotServerId(String),
    /// The CA certificate has expired (or expires this very second).
    #[error("CA expired at unix time {not_after}")]
    CaExpired {
        /// NotAfter of the CA, Unix seconds.
        not_after: i64,
    },
    /// The JWT signing key has expired.
    #[error("JWT signing key expired at unix time {expires_at}")]
    KeyExpired {
        /// Expiry of the key, Unix seconds.
        expires_at: i64,
    },
    /// A JWT-SVID needs at least one audience.
    #[error("a JWT-SVID needs at least one audience")]
    NoAudience,
    /// A zero TTL was requested.
    #[error("TTL must be at least one second")]
    ZeroTtl,
    /// The signing operation itself failed.
    #[error("signing failed")]
    Crypto,
}

/// Why a CA could not be built or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Signing the CA certificate failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// A certificate is not valid DER X.509.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(&'static str),
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    /// The upstream certificate is not a CA certificate.
    #[error("upstream certificate is not a CA (basicConstraints CA=false or absent)")]
    NotACa,
    /// The issuing certificate has expired by `now`.
    #[error("issuing certificate expired at unix time {not_after}")]
    IssuerExpired {
        /// NotAfter of the issuer, Unix seconds.
        not_after: i64,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// PEM text could not be decoded or held no certificate.
    #[error("bad PEM in {0}")]
    Pem(String),
}
