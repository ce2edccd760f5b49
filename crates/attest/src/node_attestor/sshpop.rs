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
use ssh_key::private::KeypairData;
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PrivateKey};
use ward_core::TrustDomain;

use super::field_template::{Segment, agent_id, split_template};
use super::{
    AttestedAgent, NodeAttestError, NodeAttestor, PendingChallenge, Refusal, RefusalCode,
    ServerNodeAttestor, Verification,
};

mod ssh;
pub(crate) mod wire;

pub use ssh::SshCertificate;
use ssh::{HOST_CERT, mpint, put_string, verify};
pub use wire::{AttestationData, ChallengeRequest, ChallengeResponse, SshSignature};

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
