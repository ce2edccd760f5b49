//! `sshpop`: SSH host certificate proof of possession (SPIRE v1.13.3
//! `pkg/common/plugin/sshpop`, `pkg/agent/plugin/nodeattestor/sshpop`,
//! `pkg/server/plugin/nodeattestor/sshpop`).
//!
//! The node holds an OpenSSH host certificate signed by a CA the server trusts, and the host's
//! private key.
//! 1. The agent ([`SshpopAttestor`]) sends `{"Certificate": <base64 of the certificate in SSH
//!    wire format>}`.
//! 2. The server ([`SshpopVerifier`]) checks it as Go's `ssh.CertChecker.CheckHostKey` checks a
//!    host certificate for `<first principal>:22`: a host certificate, signed by a configured
//!    CA key, no critical option but `source-address`, valid now, CA signature good. With a
//!    `canonical_domain`, the first principal must end in `.<domain>`, which is cut off to give
//!    the hostname. The server then sends `{"Nonce": <base64 of 32 random bytes>}`.
//! 3. The agent answers `{"Nonce": <its own 32 bytes>, "Signature": {"Format", "Blob",
//!    "Rest"}}`, an SSH signature with the host key over SHA-256(server nonce ‖ agent nonce).
//! 4. The server verifies it with the certificate's key and attests the agent as
//!    `spiffe://<td>/spire/agent` + the agent path template (default
//!    `/{{ .PluginName}}/{{ .Fingerprint }}`, the unpadded URL-safe base64 SHA-256 of the
//!    certificate's wire bytes). There are no selectors. The agent may attest again.
//!
//! JSON follows Go's `encoding/json`: Go's field names (matched regardless of case when
//! decoding, as Go matches them), byte strings as standard base64, `null` for nothing.
//!
//! Every refusal is `Internal`, with SPIRE's text, as SPIRE's plugin answers.
//!
//! Keys: the server verifies Ed25519, ECDSA (P-256, P-384, P-521) and RSA (1024 to 8192 bits;
//! `ssh-rsa`, `rsa-sha2-256`, `rsa-sha2-512`) signatures. The agent reads OpenSSH-format
//! private keys (what `ssh-keygen` writes; not passphrase-protected) of those types and signs
//! RSA with `rsa-sha2-512` where spire-agent signs `ssh-rsa` (SHA-1); both are accepted by both
//! servers. Not done: the PEM private key formats Go also reads (PKCS#1, SEC 1, PKCS#8), and
//! of Go's template language only the fields listed at [`AgentPathTemplate::parse`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{self, Digest, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use num_bigint::BigUint;
use serde::Deserialize;
use serde_json::{Map, Value};
use ssh_key::private::KeypairData;
use ssh_key::public::{EcdsaPublicKey, KeyData};
use ssh_key::{HashAlg, PrivateKey, PublicKey};
use ward_core::TrustDomain;

use super::field_template::{Segment, agent_id, split_template};
use super::x509pop::{Base64Bytes, go_json_error};
use super::{
    AttestedAgent, NodeAttestError, NodeAttestor, PendingChallenge, Refusal, RefusalCode,
    ServerNodeAttestor, Verification,
};

/// The attestation type name.
pub const NAME: &str = "sshpop";

/// SPIRE's default agent path template.
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str = "/{{ .PluginName}}/{{ .Fingerprint }}";

/// SPIRE's default `host_key_path`.
pub const DEFAULT_HOST_KEY_PATH: &str = "/etc/ssh/ssh_host_rsa_key";

/// SPIRE's default `host_cert_path`.
pub const DEFAULT_HOST_CERT_PATH: &str = "/etc/ssh/ssh_host_rsa_key-cert.pub";

/// Length of each nonce, in bytes.
const NONCE_LEN: usize = 32;

/// The `source-address` critical option, which a host-key check leaves to the SSH server.
const SOURCE_ADDRESS: &str = "source-address";

// ---------------------------------------------------------------------------------------------
// Go's encoding/json, as far as these messages need it

/// The JSON kind Go names in `cannot unmarshal <kind>` errors.
fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `data` as a JSON object decoded into Go type `go_type`: `None` for `null`.
fn go_object(data: &[u8], go_type: &str) -> Result<Option<Map<String, Value>>, String> {
    let value: Value = serde_json::from_slice(data).map_err(|e| go_json_error(&e))?;
    match value {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            go_kind(&other)
        )),
    }
}

/// The member Go decodes into field `name`: an exact match, else one equal ignoring case.
fn go_member<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// The `[]byte` field `name` of Go struct `go_struct` (empty when absent or `null`).
fn go_bytes(obj: &Map<String, Value>, go_struct: &str, name: &str) -> Result<Vec<u8>, String> {
    match go_member(obj, name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(s @ Value::String(_)) => {
            Base64Bytes::deserialize(s).map(|b| b.0).map_err(|e| e.to_string())
        }
        Some(other) => Err(format!(
            "json: cannot unmarshal {} into Go struct field {go_struct}.{name} of type []uint8",
            go_kind(other)
        )),
    }
}

/// The `string` field `name` of Go struct `go_struct` (empty when absent or `null`).
fn go_string(obj: &Map<String, Value>, go_struct: &str, name: &str) -> Result<String, String> {
    match go_member(obj, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "json: cannot unmarshal {} into Go struct field {go_struct}.{name} of type string",
            go_kind(other)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire messages

/// The attestation payload: the host certificate in SSH wire format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationData {
    /// The certificate's wire bytes.
    pub certificate: Vec<u8>,
}

impl AttestationData {
    /// Go's encoding: `{"Certificate":"<base64>"}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut obj = Map::new();
        obj.insert("Certificate".into(), go_bytes_value(&self.certificate));
        Value::Object(obj).to_string().into_bytes()
    }

    /// Decodes `data` as Go's `json.Unmarshal` into SPIRE's `attestationData` does.
    ///
    /// # Errors
    /// Go's message.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let Some(obj) = go_object(data, "sshpop.attestationData")? else {
            return Ok(Self::default());
        };
        Ok(Self { certificate: go_bytes(&obj, "attestationData", "Certificate")? })
    }
}

/// Go's JSON for a `[]byte`: base64, `null` when nil.
fn go_bytes_value(b: &[u8]) -> Value {
    Value::String(STANDARD.encode(b))
}

/// The server's challenge: its nonce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChallengeRequest {
    /// The server's nonce.
    pub nonce: Vec<u8>,
}

impl ChallengeRequest {
    /// Go's encoding: `{"Nonce":"<base64>"}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut obj = Map::new();
        obj.insert("Nonce".into(), go_bytes_value(&self.nonce));
        Value::Object(obj).to_string().into_bytes()
    }

    /// Decodes `data` as Go decodes SPIRE's `challengeRequest`.
    ///
    /// # Errors
    /// Go's message.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let Some(obj) = go_object(data, "sshpop.challengeRequest")? else {
            return Ok(Self::default());
        };
        Ok(Self { nonce: go_bytes(&obj, "challengeRequest", "Nonce")? })
    }
}

/// An SSH signature as Go's `ssh.Signature` holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshSignature {
    /// The signature algorithm (`ssh-ed25519`, `rsa-sha2-512`, ...).
    pub format: String,
    /// The signature blob.
    pub blob: Vec<u8>,
    /// Trailing data (security-key signatures); `None` is Go's nil.
    pub rest: Option<Vec<u8>>,
}

/// The agent's answer: its nonce and the signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChallengeResponse {
    /// The agent's nonce.
    pub nonce: Vec<u8>,
    /// The signature over SHA-256(server nonce ‖ agent nonce); `None` is Go's nil.
    pub signature: Option<SshSignature>,
}

impl ChallengeResponse {
    /// Go's encoding: `{"Nonce":"..","Signature":{"Format":"..","Blob":"..","Rest":null}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let signature = match &self.signature {
            None => "null".to_owned(),
            Some(s) => format!(
                "{{\"Format\":{},\"Blob\":{},\"Rest\":{}}}",
                Value::String(s.format.clone()),
                go_bytes_value(&s.blob),
                s.rest.as_deref().map_or(Value::Null, go_bytes_value)
            ),
        };
        // Go writes members in field order, which serde_json's map would sort.
        format!("{{\"Nonce\":{},\"Signature\":{signature}}}", go_bytes_value(&self.nonce))
            .into_bytes()
    }

    /// Decodes `data` as Go decodes SPIRE's `challengeResponse`.
    ///
    /// # Errors
    /// Go's message.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let Some(obj) = go_object(data, "sshpop.challengeResponse")? else {
            return Ok(Self::default());
        };
        let nonce = go_bytes(&obj, "challengeResponse", "Nonce")?;
        let signature = match go_member(&obj, "Signature") {
            None | Some(Value::Null) => None,
            Some(Value::Object(sig)) => {
                let at = "challengeResponse.Signature";
                Some(SshSignature {
                    format: go_string(sig, at, "Format")?,
                    blob: go_bytes(sig, at, "Blob")?,
                    rest: match go_member(sig, "Rest") {
                        None | Some(Value::Null) => None,
                        Some(_) => Some(go_bytes(sig, at, "Rest")?),
                    },
                })
            }
            Some(other) => {
                return Err(format!(
                    "json: cannot unmarshal {} into Go struct field challengeResponse.Signature \
                     of type ssh.Signature",
                    go_kind(other)
                ));
            }
        };
        Ok(Self { nonce, signature })
    }
}

/// SHA-256(challenge ‖ response), both exactly [`NONCE_LEN`] bytes (SPIRE's texts otherwise).
fn combine_nonces(challenge: &[u8], response: &[u8]) -> Result<Digest, &'static str> {
    if challenge.len() != NONCE_LEN {
        return Err("invalid challenge nonce size");
    }
    if response.len() != NONCE_LEN {
        return Err("invalid response nonce size");
    }
    let mut ctx = digest::Context::new(&SHA256);
    ctx.update(challenge);
    ctx.update(response);
    Ok(ctx.finish())
}

fn nonce() -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
    let mut n = vec![0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut n)?;
    Ok(n)
}

/// SPIRE's agent ID fingerprint: unpadded URL-safe base64 of SHA-256 of the certificate's wire
/// bytes.
pub fn fingerprint(certificate: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&SHA256, certificate))
}

// ---------------------------------------------------------------------------------------------
// SSH signatures (Go's `ssh.PublicKey.Verify` texts)

/// An SSH `mpint`: big-endian two's complement, minimal, a leading zero when the top bit is set.
fn mpint(unsigned_be: &[u8]) -> Vec<u8> {
    let start = unsigned_be.iter().position(|&b| b != 0).unwrap_or(unsigned_be.len());
    let digits = &unsigned_be[start..];
    let mut out = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_some_and(|b| b & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(digits);
    out
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
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
fn verify(key: &KeyData, format: &str, blob: &[u8], data: &[u8]) -> Result<(), String> {
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
const HOST_CERT: u32 = 2;

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
    key: KeyData,
    serial: u64,
    cert_type: u32,
    key_id: String,
    principals: Vec<String>,
    valid_after: u64,
    valid_before: u64,
    critical_options: Vec<String>,
    signature_key: KeyData,
    signature_format: String,
    signature_blob: Vec<u8>,
    /// The length of the part the CA signed (all but the trailing signature).
    signed_len: usize,
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
    fn parse(bytes: &[u8]) -> Result<Self, Option<String>> {
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

// ---------------------------------------------------------------------------------------------
// Agent side

/// Where the agent's host key and certificate are (SPIRE's agent `plugin_data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshpopAgentConfig {
    /// The host's private key, OpenSSH format.
    pub host_key_path: PathBuf,
    /// The host certificate, OpenSSH format (`<type>-cert-v01@openssh.com <base64> [comment]`).
    pub host_cert_path: PathBuf,
}

impl Default for SshpopAgentConfig {
    fn default() -> Self {
        Self {
            host_key_path: DEFAULT_HOST_KEY_PATH.into(),
            host_cert_path: DEFAULT_HOST_CERT_PATH.into(),
        }
    }
}

/// The host key, as aws-lc-rs signs with it.
enum HostKey {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair, &'static str),
    Rsa(RsaKeyPair),
}

/// The evidence of one attestation: the certificate sent and the key that answers.
struct Evidence {
    certificate: Vec<u8>,
    key: HostKey,
}

/// The agent side: reads the host certificate and key when an attestation starts (so a
/// renewed certificate is picked up), sends the certificate and answers the challenge.
pub struct SshpopAttestor {
    config: SshpopAgentConfig,
    current: Mutex<Option<Arc<Evidence>>>,
}

impl std::fmt::Debug for SshpopAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("SshpopAttestor").field("config", &self.config).finish_non_exhaustive()
    }
}

fn config_error(reason: impl Into<String>) -> NodeAttestError {
    NodeAttestError::Config { attestor: NAME, reason: reason.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, NodeAttestError> {
    std::fs::read(path).map_err(|source| NodeAttestError::Evidence {
        attestor: NAME,
        path: path.to_owned(),
        source,
    })
}

/// The wire bytes of the first certificate in an OpenSSH `-cert.pub` file (comment lines and
/// blank lines skipped, as Go's `ssh.ParseAuthorizedKey` skips them).
fn certificate_from_text(text: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "ssh: no key found")?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("ssh: no key found")?;
    let wire = line
        .split_whitespace()
        .nth(1)
        .and_then(|b| STANDARD.decode(b).ok())
        .ok_or("ssh: no key found")?;
    match SshCertificate::parse(&wire) {
        Ok(_) => Ok(wire),
        Err(None) => Err("pubkey isn't a certificate".into()),
        Err(Some(e)) => Err(e),
    }
}

/// PKCS#1 `RSAPrivateKey` DER from OpenSSH's RSA fields (the CRT exponents computed).
fn rsa_pkcs1_der(n: &[u8], e: &[u8], d: &[u8], iqmp: &[u8], p: &[u8], q: &[u8]) -> Vec<u8> {
    fn der_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap_or(0));
        } else {
            let bytes = len.to_be_bytes();
            let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len() - 1);
            out.push(0x80 | u8::try_from(bytes.len() - start).unwrap_or(0));
            out.extend_from_slice(&bytes[start..]);
        }
    }
    fn der_int(out: &mut Vec<u8>, unsigned_be: &[u8]) {
        let mut v = mpint(unsigned_be);
        if v.is_empty() {
            v.push(0);
        }
        out.push(0x02);
        der_len(out, v.len());
        out.extend_from_slice(&v);
    }
    let one = BigUint::from(1u8);
    let d_big = BigUint::from_bytes_be(d);
    let dp = (&d_big % (BigUint::from_bytes_be(p) - &one)).to_bytes_be();
    let dq = (&d_big % (BigUint::from_bytes_be(q) - &one)).to_bytes_be();
    let mut body = Vec::new();
    der_int(&mut body, &[0]);
    for part in [n, e, d, p, q, &dp, &dq, iqmp] {
        der_int(&mut body, part);
    }
    let mut out = vec![0x30];
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn load_key(text: &[u8]) -> Result<HostKey, String> {
    let key = PrivateKey::from_openssh(text).map_err(|e| format!("ssh: {e}"))?;
    if key.is_encrypted() {
        return Err("ssh: this private key is passphrase protected".into());
    }
    let unsupported = || format!("ssh: unsupported key type {}", key.algorithm().as_str());
    match key.key_data() {
        KeypairData::Ed25519(k) => {
            Ed25519KeyPair::from_seed_and_public_key(&k.private.to_bytes(), &k.public.0)
                .map(HostKey::Ed25519)
                .map_err(|e| format!("ssh: {e}"))
        }
        KeypairData::Ecdsa(k) => {
            let (alg, format) = match k.curve() {
                ssh_key::EcdsaCurve::NistP256 => {
                    (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "ecdsa-sha2-nistp256")
                }
                ssh_key::EcdsaCurve::NistP384 => {
                    (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "ecdsa-sha2-nistp384")
                }
                ssh_key::EcdsaCurve::NistP521 => {
                    (&signature::ECDSA_P521_SHA512_FIXED_SIGNING, "ecdsa-sha2-nistp521")
                }
            };
            EcdsaKeyPair::from_private_key_and_public_key(
                alg,
                k.private_key_bytes(),
                k.public_key_bytes(),
            )
            .map(|kp| HostKey::Ecdsa(kp, format))
            .map_err(|e| format!("ssh: {e}"))
        }
        KeypairData::Rsa(k) => {
            let part = |m: &ssh_key::Mpint| m.as_positive_bytes().map(<[u8]>::to_vec);
            let (Some(n), Some(e), Some(d), Some(iqmp), Some(p), Some(q)) = (
                part(&k.public.n),
                part(&k.public.e),
                part(&k.private.d),
                part(&k.private.iqmp),
                part(&k.private.p),
                part(&k.private.q),
            ) else {
                return Err(unsupported());
            };
            RsaKeyPair::from_der(&rsa_pkcs1_der(&n, &e, &d, &iqmp, &p, &q))
                .map(HostKey::Rsa)
                .map_err(|e| format!("ssh: RSA key: {e}"))
        }
        _ => Err(unsupported()),
    }
}

impl HostKey {
    /// Go's `ssh.Signer.Sign` of `data` (RSA as `rsa-sha2-512`).
    fn sign(&self, data: &[u8]) -> Result<SshSignature, String> {
        let rng = SystemRandom::new();
        let (format, blob) = match self {
            Self::Ed25519(k) => ("ssh-ed25519", k.sign(data).as_ref().to_vec()),
            Self::Ecdsa(k, format) => {
                let sig = k.sign(&rng, data).map_err(|_| "ECDSA signing failed")?;
                let (r, s) = sig.as_ref().split_at(sig.as_ref().len() / 2);
                let mut blob = Vec::new();
                put_string(&mut blob, &mpint(r));
                put_string(&mut blob, &mpint(s));
                (*format, blob)
            }
            Self::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA512, &rng, data, &mut sig)
                    .map_err(|_| "RSA signing failed")?;
                ("rsa-sha2-512", sig)
            }
        };
        Ok(SshSignature { format: format.to_owned(), blob, rest: None })
    }
}

impl SshpopAttestor {
    /// An attestor for `config`; the files are read once now, so a configuration that cannot
    /// produce evidence is refused at start-up, as SPIRE refuses it.
    ///
    /// # Errors
    /// [`NodeAttestError`] when a file cannot be read or does not hold a certificate or key.
    pub fn new(config: SshpopAgentConfig) -> Result<Self, NodeAttestError> {
        let attestor = Self { config, current: Mutex::new(None) };
        attestor.load()?;
        Ok(attestor)
    }

    fn load(&self) -> Result<Evidence, NodeAttestError> {
        let key_text = read(&self.config.host_key_path)?;
        let cert_text = read(&self.config.host_cert_path)?;
        let failed =
            |e: String| config_error(format!("failed to get cert and signer from pem: {e}"));
        let key = load_key(&key_text).map_err(failed)?;
        let certificate = certificate_from_text(&cert_text).map_err(failed)?;
        Ok(Evidence { certificate, key })
    }

    fn evidence(&self) -> Result<Arc<Evidence>, NodeAttestError> {
        let current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        current.clone().ok_or_else(|| {
            config_error("client must provide attestation data to respond to challenge")
        })
    }
}

impl NodeAttestor for SshpopAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        let evidence = Arc::new(self.load()?);
        let payload = AttestationData { certificate: evidence.certificate.clone() }.to_json();
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(evidence);
        Ok(payload)
    }

    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        let evidence = self.evidence()?;
        let challenge = ChallengeRequest::from_json(challenge)
            .map_err(|e| config_error(format!("failed to unmarshal challenge request: {e}")))?;
        let own = nonce().map_err(|_| config_error("failed to generate nonce"))?;
        let to_be_signed = combine_nonces(&challenge.nonce, &own)
            .map_err(|e| config_error(format!("failed to combine nonces: {e}")))?;
        let signature = evidence
            .key
            .sign(to_be_signed.as_ref())
            .map_err(|e| config_error(format!("failed to sign data: {e}")))?;
        Ok(ChallengeResponse { nonce: own, signature: Some(signature) }.to_json())
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// One action an agent path template can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    PluginName,
    Fingerprint,
    Hostname,
    KeyId,
    Serial,
    Principal(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// An agent path template: text with `{{ .Field }}` actions, as SPIRE's `agent_path_template`
/// writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPathTemplate {
    pieces: Vec<Piece>,
}

/// What a template is rendered with.
struct TemplateData<'a> {
    fingerprint: &'a str,
    hostname: &'a str,
    cert: &'a SshCertificate,
}

impl AgentPathTemplate {
    /// Parses `text`. Actions ward renders: `.PluginName`, `.Fingerprint`, `.Hostname`,
    /// `.KeyId`, `.Serial` and `index .ValidPrincipals <n>`.
    ///
    /// # Errors
    /// A sentence naming the action ward does not render, or SPIRE's text for a template that
    /// does not parse.
    pub fn parse(text: &str) -> Result<Self, String> {
        let segments = split_template(text)
            .ok_or_else(|| format!("failed to parse agent svid template: {text:?}"))?;
        let pieces = segments
            .into_iter()
            .map(|segment| match segment {
                Segment::Text(t) => Ok(Piece::Text(t.to_owned())),
                Segment::Action(action) => Self::field(action).map(Piece::Field),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { pieces })
    }

    fn field(action: &str) -> Result<Field, String> {
        let field = match action {
            ".PluginName" => Field::PluginName,
            ".Fingerprint" => Field::Fingerprint,
            ".Hostname" => Field::Hostname,
            ".KeyId" => Field::KeyId,
            ".Serial" => Field::Serial,
            other => {
                let words: Vec<&str> = other.split_whitespace().collect();
                match words.as_slice() {
                    ["index", ".ValidPrincipals", n] if n.parse::<usize>().is_ok() => {
                        Field::Principal(n.parse().unwrap_or_default())
                    }
                    _ => {
                        return Err(format!(
                            "agent_path_template action {{{{ {other} }}}} is not supported: ward \
                             renders .PluginName, .Fingerprint, .Hostname, .KeyId, .Serial and \
                             index .ValidPrincipals <n>"
                        ));
                    }
                }
            }
        };
        Ok(field)
    }

    fn render(&self, data: &TemplateData<'_>) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(Field::PluginName) => out.push_str(NAME),
                Piece::Field(Field::Fingerprint) => out.push_str(data.fingerprint),
                Piece::Field(Field::Hostname) => out.push_str(data.hostname),
                Piece::Field(Field::KeyId) => out.push_str(&data.cert.key_id),
                Piece::Field(Field::Serial) => out.push_str(&data.cert.serial.to_string()),
                Piece::Field(Field::Principal(i)) => match data.cert.principals.get(*i) {
                    Some(p) => out.push_str(p),
                    None => {
                        return Err(format!("error calling index: index out of range: {i}"));
                    }
                },
            }
        }
        Ok(out)
    }
}

/// The server's `sshpop` settings.
#[derive(Debug, Clone)]
pub struct SshpopServerConfig {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// Trusted CA keys, one `authorized_keys` line each (`cert_authorities` and the lines of
    /// `cert_authorities_path`).
    pub cert_authorities: Vec<String>,
    /// `canonical_domain`: the domain the first principal must be in (empty: any).
    pub canonical_domain: String,
    /// `agent_path_template`; `None` is [`DEFAULT_AGENT_PATH_TEMPLATE`].
    pub agent_path_template: Option<String>,
}

/// The non-empty lines of a `cert_authorities_path` file, as SPIRE reads it.
///
/// # Errors
/// SPIRE's text when the file holds nothing, or the I/O error.
pub fn cert_authorities_from_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        // Go's `*PathError` text: `open <path>: <lower-case strerror>`.
        let os = e.to_string();
        let os = os.split(" (os error").next().unwrap_or_default();
        let mut chars = os.chars();
        let os: String =
            chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default();
        format!("open {}: {os}", path.display())
    })?;
    let lines: Vec<String> =
        text.split('\n').filter(|l| !l.is_empty()).map(str::to_owned).collect();
    if lines.is_empty() {
        return Err(format!("no data found in file: {:?}", path.display().to_string()));
    }
    Ok(lines)
}

/// The key of one `authorized_keys` line, as Go's `ssh.ParseAuthorizedKey` finds it (options
/// before the key allowed, comment lines skipped).
fn authority_key(line: &str) -> Result<KeyData, String> {
    let entry = line
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("ssh: no key found")?;
    ssh_key::authorized_keys::Entry::from_str(entry)
        .map(|e| e.public_key().key_data().clone())
        .map_err(|_| "ssh: no key found".to_owned())
}

/// The server side: checks host certificates against the configured CA keys and the proof of
/// possession of the host key.
#[derive(Debug)]
pub struct SshpopVerifier {
    trust_domain: TrustDomain,
    authorities: Vec<KeyData>,
    canonical_domain: String,
    template: AgentPathTemplate,
}

impl SshpopVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] with SPIRE's text when there is no CA key, one does not
    /// parse, or the template is refused.
    pub fn new(config: SshpopServerConfig) -> Result<Self, NodeAttestError> {
        if config.cert_authorities.is_empty() {
            return Err(config_error(
                "failed to create cert checker: must provide at least one cert authority",
            ));
        }
        let authorities = config
            .cert_authorities
            .iter()
            .map(|line| {
                authority_key(line).map_err(|e| {
                    config_error(format!(
                        "failed to create cert checker: failed to parse public key {line:?}: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let template = AgentPathTemplate::parse(
            config.agent_path_template.as_deref().unwrap_or(DEFAULT_AGENT_PATH_TEMPLATE),
        )
        .map_err(config_error)?;
        Ok(Self {
            trust_domain: config.trust_domain,
            authorities,
            canonical_domain: config.canonical_domain,
            template,
        })
    }

    fn is_authority(&self, key: &KeyData) -> bool {
        let fp = key.fingerprint(HashAlg::Sha256);
        self.authorities.iter().any(|a| a.fingerprint(HashAlg::Sha256) == fp)
    }

    /// Go's `CertChecker.CheckHostKey(addr, _, cert)` with SPIRE's checker, at `now`.
    fn check_host_key(
        &self,
        addr: &str,
        raw: &[u8],
        cert: &SshCertificate,
        now: i64,
    ) -> Result<(), String> {
        if cert.cert_type != HOST_CERT {
            return Err(format!(
                "ssh: certificate presented as a host key has type {}",
                cert.cert_type
            ));
        }
        if !self.is_authority(&cert.signature_key) {
            return Err(format!("ssh: no authorities for hostname: {addr}"));
        }
        let hostname = split_host_port(addr)?;
        // Go walks a map; the first unsupported option in the certificate's order is named.
        if let Some(opt) = cert.critical_options.iter().find(|k| k.as_str() != SOURCE_ADDRESS) {
            return Err(format!("ssh: unsupported critical option {opt:?} in certificate"));
        }
        let principals = &cert.principals;
        if !principals.is_empty() && !principals.contains(&hostname) {
            let quoted: Vec<String> = principals.iter().map(|p| format!("{p:?}")).collect();
            return Err(format!(
                "ssh: principal {hostname:?} not in the set of valid principals for given \
                 certificate: [{}]",
                quoted.join(" ")
            ));
        }
        let after = cert.valid_after.cast_signed();
        if after < 0 || now < after {
            return Err("ssh: cert is not yet valid".into());
        }
        let before = cert.valid_before.cast_signed();
        if cert.valid_before != u64::MAX && (now >= before || before < 0) {
            return Err("ssh: cert has expired".into());
        }
        let tbs = raw.get(..cert.signed_len).ok_or("ssh: certificate signature does not verify")?;
        verify(&cert.signature_key, &cert.signature_format, &cert.signature_blob, tbs)
            .map_err(|_| "ssh: certificate signature does not verify".to_owned())
    }
}

/// Go's `net.SplitHostPort`: the host of `host:port`, with its error texts.
fn split_host_port(addr: &str) -> Result<String, String> {
    let err = |why: &str| format!("address {addr}: {why}");
    let Some(colon) = addr.rfind(':') else { return Err(err("missing port in address")) };
    // `[` may not appear from `j` on, `]` not from `k` on.
    let (host, j, k) = if let Some(bracketed) = addr.strip_prefix('[') {
        let Some(end) = bracketed.find(']').map(|e| e + 1) else {
            return Err(err("missing ']' in address"));
        };
        if end + 1 == addr.len() {
            return Err(err("missing port in address"));
        }
        if end + 1 != colon {
            return Err(if addr.as_bytes().get(end + 1) == Some(&b':') {
                err("too many colons in address")
            } else {
                err("missing port in address")
            });
        }
        (&addr[1..end], 1, end + 1)
    } else {
        let host = &addr[..colon];
        if host.contains(':') {
            return Err(err("too many colons in address"));
        }
        (host, 0, 0)
    };
    if addr[j..].contains('[') {
        return Err(err("unexpected '[' in address"));
    }
    if addr[k..].contains(']') {
        return Err(err("unexpected ']' in address"));
    }
    Ok(host.to_owned())
}

/// SPIRE's `decanonicalizeHostname`.
fn decanonicalize(fqdn: &str, domain: &str) -> Result<String, String> {
    if domain.is_empty() {
        return Ok(fqdn.to_owned());
    }
    let suffix = format!(".{domain}");
    fqdn.strip_suffix(&suffix)
        .map(str::to_owned)
        .ok_or_else(|| format!("cert principal is not in domain {suffix:?}"))
}

fn internal(message: impl Into<String>) -> Refusal {
    Refusal::new(RefusalCode::Internal, message)
}

impl ServerNodeAttestor for SshpopVerifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn begin(&self, payload: &[u8], now: i64) -> Result<Verification, Refusal> {
        let data = AttestationData::from_json(payload)
            .map_err(|e| internal(format!("failed to unmarshal data: {e}")))?;
        if data.certificate.is_empty() {
            return Err(internal("no certificate in response"));
        }
        let cert = SshCertificate::parse(&data.certificate).map_err(|e| match e {
            None => internal("pubkey in response is not a certificate"),
            Some(e) => internal(format!("failed to parse public key: {e}")),
        })?;
        let Some(first) = cert.principals.first() else {
            return Err(internal("cert has no valid principals"));
        };
        let addr = format!("{first}:22");
        self.check_host_key(&addr, &data.certificate, &cert, now)
            .map_err(|e| internal(format!("failed to check host key: {e}")))?;
        let hostname = decanonicalize(first, &self.canonical_domain)
            .map_err(|e| internal(format!("failed to decanonicalize hostname: {e}")))?;

        let server_nonce =
            nonce().map_err(|_| internal("failed to generate nonce: no random bytes"))?;
        let challenge = ChallengeRequest { nonce: server_nonce.clone() }.to_json();

        // The agent's identity is settled now; it is handed out only once the proof holds.
        let fp = fingerprint(&data.certificate);
        let attested = self
            .template
            .render(&TemplateData { fingerprint: &fp, hostname: &hostname, cert: &cert })
            .and_then(|path| agent_id(&self.trust_domain, &path))
            .map_err(|e| internal(format!("failed to create AgentID: {e}")))
            .map(|agent_id| AttestedAgent {
                agent_id,
                selector_values: Vec::new(),
                can_reattest: true,
            });
        Ok(Verification::Challenge {
            challenge,
            pending: Box::new(PendingProof { key: cert.key.clone(), server_nonce, attested }),
        })
    }
}

/// The challenge sent, waiting for the agent's proof.
struct PendingProof {
    key: KeyData,
    server_nonce: Vec<u8>,
    attested: Result<AttestedAgent, Refusal>,
}

impl PendingChallenge for PendingProof {
    fn respond(self: Box<Self>, response: &[u8]) -> Result<Verification, Refusal> {
        let parsed = ChallengeResponse::from_json(response)
            .map_err(|e| internal(format!("failed to unmarshal challenge response: {e}")))?;
        let to_be_signed = combine_nonces(&self.server_nonce, &parsed.nonce)
            .map_err(|e| internal(format!("failed to combine nonces: {e}")))?;
        // Go would dereference a missing signature; ward checks it as an empty one.
        let sig = parsed.signature.unwrap_or_default();
        verify(&self.key, &sig.format, &sig.blob, to_be_signed.as_ref())
            .map_err(|e| internal(format!("failed to verify signature: {e}")))?;
        self.attested.map(Verification::Attested)
    }
}

#[cfg(test)]
mod tests;
