//! SSH signatures and OpenSSH host certificates, checked with Go's `golang.org/x/crypto/ssh`
//! texts.

use aws_lc_rs::signature;
use ssh_key::PublicKey;
use ssh_key::public::{EcdsaPublicKey, KeyData};

// ---------------------------------------------------------------------------------------------
// SSH signatures (Go's `ssh.PublicKey.Verify` texts)

/// An SSH `mpint`: big-endian two's complement, minimal, a leading zero when the top bit is set.
pub(super) fn mpint(unsigned_be: &[u8]) -> Vec<u8> {
    let start = unsigned_be.iter().position(|&b| b != 0).unwrap_or(unsigned_be.len());
    let digits = &unsigned_be[start..];
    let mut out = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_some_and(|b| b & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(digits);
    out
}

pub(super) fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

/// Reads one SSH `string` from the front of `input`.
fn take_string<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = input.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (s, rest) = rest.split_at(len);
    *input = rest;
    Some(s)
}

/// The ECDSA blob `mpint r ‖ mpint s` as `r ‖ s`, each left-padded to `width`; `None` when the
/// blob does not hold two non-negative integers that fit.
fn ecdsa_fixed(blob: &[u8], width: usize) -> Option<Vec<u8>> {
    let mut input = blob;
    let r = take_string(&mut input)?;
    let s = take_string(&mut input)?;
    let mut out = vec![0u8; 2 * width];
    for (i, n) in [r, s].into_iter().enumerate() {
        if n.first().is_some_and(|b| b & 0x80 != 0) {
            return None;
        }
        let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
        if n.len() > width {
            return None;
        }
        out[(i + 1) * width - n.len()..(i + 1) * width].copy_from_slice(n);
    }
    Some(out)
}

/// Verifies `sig` over `data` with `key` as Go's `ssh.PublicKey.Verify` does, in its words.
pub(super) fn verify(key: &KeyData, format: &str, blob: &[u8], data: &[u8]) -> Result<(), String> {
    use signature::UnparsedPublicKey;
    let key_type = key.algorithm().as_str().to_owned();
    let wrong_type = || format!("ssh: signature type {format} for key type {key_type}");
    let did_not_verify = || "ssh: signature did not verify".to_owned();
    match key {
        KeyData::Ed25519(pk) => {
            if format != key_type {
                return Err(wrong_type());
            }
            UnparsedPublicKey::new(&signature::ED25519, &pk.0)
                .verify(data, blob)
                .map_err(|_| did_not_verify())
        }
        KeyData::Ecdsa(pk) => {
            if format != key_type {
                return Err(wrong_type());
            }
            let (alg, width): (&'static signature::EcdsaVerificationAlgorithm, usize) = match pk {
                EcdsaPublicKey::NistP256(_) => (&signature::ECDSA_P256_SHA256_FIXED, 32),
                EcdsaPublicKey::NistP384(_) => (&signature::ECDSA_P384_SHA384_FIXED, 48),
                EcdsaPublicKey::NistP521(_) => (&signature::ECDSA_P521_SHA512_FIXED, 66),
            };
            let sig = ecdsa_fixed(blob, width).ok_or_else(|| "ssh: short read".to_owned())?;
            UnparsedPublicKey::new(alg, pk.as_sec1_bytes())
                .verify(data, &sig)
                .map_err(|_| did_not_verify())
        }
        KeyData::Rsa(pk) => {
            let params = match format {
                "ssh-rsa" => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
                "rsa-sha2-256" => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                "rsa-sha2-512" => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
                _ => return Err(wrong_type()),
            };
            let (Some(n), Some(e)) = (pk.n.as_positive_bytes(), pk.e.as_positive_bytes()) else {
                return Err("crypto/rsa: verification error".into());
            };
            // Go pads a short signature with leading zeros to the modulus length.
            let mut padded = blob.to_vec();
            if padded.len() < n.len() {
                let mut p = vec![0u8; n.len() - padded.len()];
                p.extend_from_slice(blob);
                padded = p;
            }
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, data, &padded)
                .map_err(|_| "crypto/rsa: verification error".to_owned())
        }
        _ => Err(format!("ssh: unsupported key type {key_type}")),
    }
}

// ---------------------------------------------------------------------------------------------
// OpenSSH certificates (PROTOCOL.certkeys), read as Go's `ssh.ParsePublicKey` reads them

/// Go's `errShortRead`.
const SHORT_READ: &str = "ssh: short read";

/// Host certificates are type 2, user certificates type 1.
pub(super) const HOST_CERT: u32 = 2;

/// Certificate key types: the certificate type name, the plain key type, and how many SSH
/// `string`/`mpint` fields the key takes in the certificate.
const CERT_TYPES: &[(&str, &str, usize)] = &[
    ("ssh-rsa-cert-v01@openssh.com", "ssh-rsa", 2),
    ("ssh-dss-cert-v01@openssh.com", "ssh-dss", 4),
    ("ecdsa-sha2-nistp256-cert-v01@openssh.com", "ecdsa-sha2-nistp256", 2),
    ("ecdsa-sha2-nistp384-cert-v01@openssh.com", "ecdsa-sha2-nistp384", 2),
    ("ecdsa-sha2-nistp521-cert-v01@openssh.com", "ecdsa-sha2-nistp521", 2),
    ("ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519", 1),
    ("sk-ecdsa-sha2-nistp256-cert-v01@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", 3),
    ("sk-ssh-ed25519-cert-v01@openssh.com", "sk-ssh-ed25519@openssh.com", 2),
];

/// Plain public key types Go parses.
const KEY_TYPES: &[&str] = &[
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-ed25519",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "sk-ssh-ed25519@openssh.com",
];

/// An OpenSSH certificate: what the checks and the agent path template read.
#[derive(Debug, Clone)]
pub struct SshCertificate {
    pub(super) key: KeyData,
    pub(super) serial: u64,
    pub(super) cert_type: u32,
    pub(super) key_id: String,
    pub(super) principals: Vec<String>,
    pub(super) valid_after: u64,
    pub(super) valid_before: u64,
    pub(super) critical_options: Vec<String>,
    pub(super) signature_key: KeyData,
    pub(super) signature_format: String,
    pub(super) signature_blob: Vec<u8>,
    /// The length of the part the CA signed (all but the trailing signature).
    pub(super) signed_len: usize,
}

fn take_u32(input: &mut &[u8]) -> Option<u32> {
    let (n, rest) = input.split_first_chunk::<4>()?;
    *input = rest;
    Some(u32::from_be_bytes(*n))
}

fn take_u64(input: &mut &[u8]) -> Option<u64> {
    let (n, rest) = input.split_first_chunk::<8>()?;
    *input = rest;
    Some(u64::from_be_bytes(*n))
}

/// A plain public key from its wire bytes.
fn key_data(blob: &[u8]) -> Result<KeyData, String> {
    PublicKey::from_bytes(blob).map(|k| k.key_data().clone()).map_err(|e| match e {
        ssh_key::Error::AlgorithmUnknown | ssh_key::Error::AlgorithmUnsupported { .. } => {
            let mut input = blob;
            let algo = take_string(&mut input).map(String::from_utf8_lossy).unwrap_or_default();
            format!("ssh: unknown key algorithm: {algo}")
        }
        _ => SHORT_READ.to_owned(),
    })
}

impl SshCertificate {
    /// Parses a certificate's wire bytes. `Err(None)` when they are a plain public key, else
    /// Go's message for what is wrong.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, Option<String>> {
        let short = || Some(SHORT_READ.to_owned());
        let mut input = bytes;
        let algo = take_string(&mut input).ok_or_else(short)?;
        let algo = String::from_utf8_lossy(algo).into_owned();
        let Some(&(_, plain, fields)) = CERT_TYPES.iter().find(|(c, _, _)| *c == algo) else {
            if KEY_TYPES.contains(&algo.as_str()) {
                return match key_data(bytes) {
                    Ok(_) => Err(None),
                    Err(e) => Err(Some(e)),
                };
            }
            return Err(Some(format!("ssh: unknown key algorithm: {algo}")));
        };
        take_string(&mut input).ok_or_else(short)?; // nonce
        let mut blob = Vec::new();
        put_string(&mut blob, plain.as_bytes());
        for _ in 0..fields {
            put_string(&mut blob, take_string(&mut input).ok_or_else(short)?);
        }
        let key = key_data(&blob).map_err(Some)?;
        let serial = take_u64(&mut input).ok_or_else(short)?;
        let cert_type = take_u32(&mut input).ok_or_else(short)?;
        let key_id =
            String::from_utf8_lossy(take_string(&mut input).ok_or_else(short)?).into_owned();
        let mut list = take_string(&mut input).ok_or_else(short)?;
        let mut principals = Vec::new();
        while !list.is_empty() {
            let p = take_string(&mut list).ok_or_else(short)?;
            principals.push(String::from_utf8_lossy(p).into_owned());
        }
        let valid_after = take_u64(&mut input).ok_or_else(short)?;
        let valid_before = take_u64(&mut input).ok_or_else(short)?;
        let mut tuples = take_string(&mut input).ok_or_else(short)?;
        let mut critical_options = Vec::new();
        while !tuples.is_empty() {
            let name = take_string(&mut tuples).ok_or_else(short)?;
            take_string(&mut tuples).ok_or_else(short)?;
            critical_options.push(String::from_utf8_lossy(name).into_owned());
        }
        take_string(&mut input).ok_or_else(short)?; // extensions
        take_string(&mut input).ok_or_else(short)?; // reserved
        let signature_key = key_data(take_string(&mut input).ok_or_else(short)?).map_err(Some)?;
        let signed_len = bytes.len() - input.len();
        let mut sig = take_string(&mut input).ok_or_else(short)?;
        let parse_error = || Some("ssh: signature parse error".to_owned());
        let format = take_string(&mut sig).ok_or_else(parse_error)?;
        let blob = take_string(&mut sig).ok_or_else(parse_error)?;
        if !input.is_empty() {
            return Err(Some("ssh: trailing junk in public key".into()));
        }
        Ok(Self {
            key,
            serial,
            cert_type,
            key_id,
            principals,
            valid_after,
            valid_before,
            critical_options,
            signature_key,
            signature_format: String::from_utf8_lossy(format).into_owned(),
            signature_blob: blob.to_vec(),
            signed_len,
        })
    }
}
