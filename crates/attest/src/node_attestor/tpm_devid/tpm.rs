//! The TPM 2.0 structures `tpm_devid` exchanges (TCG TPM 2.0 Library, Part 2), in their wire
//! form, and the server's side of credential activation (Part 1, §24: `MakeCredential`).
//!
//! Only what node attestation reads is decoded: `TPMT_PUBLIC` for RSA and ECC keys, the
//! certify form of `TPMS_ATTEST`, and `TPMT_SIGNATURE`.

use aws_lc_rs::cipher::{
    AES_128, AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
    UnboundCipherKey,
};
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::PublicEncryptingKey;
use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384};
use aws_lc_rs::rsa::{OAEP_SHA512_MGF1SHA512, OaepAlgorithm, OaepPublicEncryptingKey};

/// `TPM_ALG_RSA`.
pub const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA1`.
pub const ALG_SHA1: u16 = 0x0004;
/// `TPM_ALG_AES`.
pub const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_SHA384`.
pub const ALG_SHA384: u16 = 0x000C;
/// `TPM_ALG_SHA512`.
pub const ALG_SHA512: u16 = 0x000D;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA`.
pub const ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub const ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_ECDAA`.
pub const ALG_ECDAA: u16 = 0x001A;
/// `TPM_ALG_ECC`.
pub const ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_CFB`.
pub const ALG_CFB: u16 = 0x0043;

/// `TPMA_OBJECT.sign`.
pub const ATTR_SIGN: u32 = 0x0004_0000;

/// `TPM_GENERATED_VALUE`: the first field of every `TPMS_ATTEST` the TPM makes.
pub const GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_CERTIFY`.
pub const ST_ATTEST_CERTIFY: u16 = 0x8017;

/// A cursor over big-endian TPM wire data.
pub struct Reader<'a> {
    buf: &'a [u8],
}

const EOF: &str = "unexpected EOF";

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// `unexpected EOF` when fewer are left.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(EOF.into());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A `u8`.
    ///
    /// # Errors
    /// `unexpected EOF`.
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }

    /// A big-endian `u16`.
    ///
    /// # Errors
    /// `unexpected EOF`.
    pub fn u16(&mut self) -> Result<u16, String> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian `u32`.
    ///
    /// # Errors
    /// `unexpected EOF`.
    pub fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian `u64`.
    ///
    /// # Errors
    /// `unexpected EOF`.
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A `TPM2B_*`: a `u16` size, then that many bytes.
    ///
    /// # Errors
    /// `unexpected EOF`.
    pub fn sized(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }
}

/// Appends `b` as a `TPM2B_*` (a `u16` size first).
///
/// # Panics
/// Never for what the TPM exchanges (a buffer over 65535 bytes is cut to that length).
pub fn put_sized(out: &mut Vec<u8>, b: &[u8]) {
    let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&b[..usize::from(n)]);
}

/// A TPM hash algorithm's digest algorithm.
pub fn hash(alg: u16) -> Option<&'static digest::Algorithm> {
    match alg {
        ALG_SHA1 => Some(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        ALG_SHA256 => Some(&digest::SHA256),
        ALG_SHA384 => Some(&digest::SHA384),
        ALG_SHA512 => Some(&digest::SHA512),
        _ => None,
    }
}

fn hmac_alg(alg: u16) -> Option<hmac::Algorithm> {
    match alg {
        ALG_SHA1 => Some(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
        ALG_SHA256 => Some(hmac::HMAC_SHA256),
        ALG_SHA384 => Some(hmac::HMAC_SHA384),
        ALG_SHA512 => Some(hmac::HMAC_SHA512),
        _ => None,
    }
}

fn oaep_alg(alg: u16) -> Option<&'static OaepAlgorithm> {
    match alg {
        ALG_SHA1 => Some(&OAEP_SHA1_MGF1SHA1),
        ALG_SHA256 => Some(&OAEP_SHA256_MGF1SHA256),
        ALG_SHA384 => Some(&OAEP_SHA384_MGF1SHA384),
        ALG_SHA512 => Some(&OAEP_SHA512_MGF1SHA512),
        _ => None,
    }
}

fn unsupported_hash(alg: u16) -> String {
    format!("hash algorithm not supported: 0x{alg:x}")
}

/// `TPMT_SYM_DEF_OBJECT`, when not `TPM_ALG_NULL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    /// The cipher (`TPM_ALG_AES`, ...).
    pub alg: u16,
    /// Its key size in bits.
    pub key_bits: u16,
    /// Its mode (`TPM_ALG_CFB`, ...).
    pub mode: u16,
}

/// A signing scheme (`TPMT_RSA_SCHEME`, `TPMT_ECC_SCHEME`), when not `TPM_ALG_NULL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// The scheme (`TPM_ALG_RSASSA`, `TPM_ALG_ECDSA`, ...).
    pub alg: u16,
    /// Its hash algorithm.
    pub hash: u16,
}

/// The type-specific part of a [`Public`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyParams {
    /// `TPMS_RSA_PARMS` and the modulus.
    Rsa {
        /// The symmetric algorithm of a storage key.
        symmetric: Option<SymDef>,
        /// The signing or encryption scheme.
        scheme: Option<Scheme>,
        /// The key size.
        key_bits: u16,
        /// The public exponent (0 is 65537).
        exponent: u32,
        /// The modulus, big-endian.
        modulus: Vec<u8>,
    },
    /// `TPMS_ECC_PARMS` and the point.
    Ecc {
        /// The symmetric algorithm of a storage key.
        symmetric: Option<SymDef>,
        /// The signing scheme.
        scheme: Option<Scheme>,
        /// `TPM_ECC_CURVE`.
        curve: u16,
        /// The point's x coordinate.
        x: Vec<u8>,
        /// The point's y coordinate.
        y: Vec<u8>,
    },
}

/// A decoded `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// The encoded structure (what the TPM hashes into the object's name).
    pub raw: Vec<u8>,
    /// `TPMI_ALG_PUBLIC`.
    pub kind: u16,
    /// The name algorithm.
    pub name_alg: u16,
    /// `TPMA_OBJECT`.
    pub attributes: u32,
    /// The key's parameters and public value.
    pub params: KeyParams,
}

fn sym_def(r: &mut Reader<'_>) -> Result<Option<SymDef>, String> {
    let alg = r.u16()?;
    if alg == ALG_NULL {
        return Ok(None);
    }
    Ok(Some(SymDef { alg, key_bits: r.u16()?, mode: r.u16()? }))
}

fn scheme(r: &mut Reader<'_>) -> Result<Option<Scheme>, String> {
    let alg = r.u16()?;
    if alg == ALG_NULL {
        return Ok(None);
    }
    let hash = r.u16()?;
    if alg == ALG_ECDAA {
        r.u16()?;
    }
    Ok(Some(Scheme { alg, hash }))
}

impl Public {
    /// Decodes a `TPMT_PUBLIC` (no size prefix) at the start of `buf`.
    ///
    /// # Errors
    /// A sentence when it is truncated or not an RSA or ECC key.
    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(buf);
        let kind = r.u16()?;
        let name_alg = r.u16()?;
        let attributes = r.u32()?;
        r.sized()?; // authPolicy
        let params = match kind {
            ALG_RSA => {
                let symmetric = sym_def(&mut r)?;
                let scheme = scheme(&mut r)?;
                let key_bits = r.u16()?;
                let exponent = r.u32()?;
                let modulus = r.sized()?.to_vec();
                KeyParams::Rsa { symmetric, scheme, key_bits, exponent, modulus }
            }
            ALG_ECC => {
                let symmetric = sym_def(&mut r)?;
                let scheme = scheme(&mut r)?;
                let curve = r.u16()?;
                if r.u16()? != ALG_NULL {
                    r.u16()?; // the KDF's hash
                }
                let x = r.sized()?.to_vec();
                let y = r.sized()?.to_vec();
                KeyParams::Ecc { symmetric, scheme, curve, x, y }
            }
            other => return Err(format!("unsupported public key type 0x{other:04x}")),
        };
        let used = buf.len() - r.rest().len();
        Ok(Self { raw: buf[..used].to_vec(), kind, name_alg, attributes, params })
    }

    /// The object's name digest with hash `alg` (a name is `alg ‖ H(TPMT_PUBLIC)`).
    ///
    /// # Errors
    /// An unsupported hash.
    pub fn name_digest(&self, alg: u16) -> Result<Vec<u8>, String> {
        let h = hash(alg).ok_or_else(|| unsupported_hash(alg))?;
        Ok(digest::digest(h, &self.raw).as_ref().to_vec())
    }

    /// The object's `TPM2B_NAME` contents: `nameAlg ‖ H_nameAlg(TPMT_PUBLIC)`.
    ///
    /// # Errors
    /// An unsupported name algorithm.
    pub fn name(&self) -> Result<Vec<u8>, String> {
        let mut out = self.name_alg.to_be_bytes().to_vec();
        out.extend(self.name_digest(self.name_alg)?);
        Ok(out)
    }

    /// The RSA modulus and exponent, for an RSA key.
    pub fn rsa(&self) -> Option<(&[u8], u32)> {
        match &self.params {
            KeyParams::Rsa { modulus, exponent, .. } => {
                Some((modulus, if *exponent == 0 { 65537 } else { *exponent }))
            }
            KeyParams::Ecc { .. } => None,
        }
    }

    /// The signing scheme (`None` for `TPM_ALG_NULL`).
    pub fn scheme(&self) -> Option<Scheme> {
        match &self.params {
            KeyParams::Rsa { scheme, .. } | KeyParams::Ecc { scheme, .. } => *scheme,
        }
    }

    /// The symmetric algorithm of a storage key (`None` for `TPM_ALG_NULL`).
    pub fn symmetric(&self) -> Option<SymDef> {
        match &self.params {
            KeyParams::Rsa { symmetric, .. } | KeyParams::Ecc { symmetric, .. } => *symmetric,
        }
    }
}

/// The parts of a `TPMS_ATTEST` of type `TPM_ST_ATTEST_CERTIFY` the server checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// `TPMI_ST_ATTEST`.
    pub kind: u16,
    /// The certified object's `TPM2B_NAME` contents, for a certify structure.
    pub certified_name: Option<Vec<u8>>,
}

impl Attest {
    /// Decodes a `TPMS_ATTEST`.
    ///
    /// # Errors
    /// A sentence when it is truncated or was not made by a TPM.
    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(buf);
        let magic = r.u32()?;
        if magic != GENERATED_VALUE {
            return Err(format!("incorrect magic value: {magic:x}"));
        }
        let kind = r.u16()?;
        r.sized()?; // qualifiedSigner
        r.sized()?; // extraData
        r.bytes(8 + 4 + 4 + 1)?; // clockInfo
        r.u64()?; // firmwareVersion
        let certified_name =
            if kind == ST_ATTEST_CERTIFY { Some(r.sized()?.to_vec()) } else { None };
        Ok(Self { kind, certified_name })
    }
}

/// A decoded `TPMT_SIGNATURE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// RSASSA or RSAPSS: the hash and the signature.
    Rsa {
        /// The signature scheme.
        scheme: u16,
        /// The hash signed.
        hash: u16,
        /// The signature bytes.
        signature: Vec<u8>,
    },
    /// An ECC scheme: the hash and `r`, `s`.
    Ecc {
        /// The hash signed.
        hash: u16,
        /// `r`.
        r: Vec<u8>,
        /// `s`.
        s: Vec<u8>,
    },
}

impl Signature {
    /// Decodes a `TPMT_SIGNATURE`.
    ///
    /// # Errors
    /// A sentence when it is truncated or of an unknown scheme.
    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(buf);
        match r.u16()? {
            scheme @ (ALG_RSASSA | ALG_RSAPSS) => {
                let hash = r.u16()?;
                Ok(Self::Rsa { scheme, hash, signature: r.sized()?.to_vec() })
            }
            ALG_ECDSA | ALG_ECDAA => {
                let hash = r.u16()?;
                let r_ = r.sized()?.to_vec();
                Ok(Self::Ecc { hash, r: r_, s: r.sized()?.to_vec() })
            }
            other => Err(format!("unsupported signature algorithm 0x{other:04x}")),
        }
    }
}

/// `KDFa` (Part 1, §11.4.10.2): SP 800-108 counter mode with HMAC over `hash_alg`,
/// `bits` long.
///
/// # Errors
/// An unsupported hash.
pub fn kdfa(
    hash_alg: u16,
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Result<Vec<u8>, String> {
    let alg = hmac_alg(hash_alg).ok_or_else(|| unsupported_hash(hash_alg))?;
    let key = hmac::Key::new(alg, key);
    let want = usize::try_from(bits.div_ceil(8)).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(want);
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(want);
    if !bits.is_multiple_of(8) {
        out[0] &= (1u8 << (bits % 8)) - 1;
    }
    Ok(out)
}

fn cipher_key(key: &[u8]) -> Result<UnboundCipherKey, String> {
    let alg = match key.len() {
        16 => &AES_128,
        32 => &AES_256,
        n => return Err(format!("unsupported symmetric key size {n}")),
    };
    UnboundCipherKey::new(alg, key).map_err(|_| "invalid symmetric key".to_owned())
}

/// AES-CFB with an all-zero IV, in place (what `MakeCredential` encrypts the credential with).
///
/// # Errors
/// An AES key size other than 128 or 256 bits.
pub fn cfb_encrypt(key: &[u8], data: &mut [u8]) -> Result<(), String> {
    let k = EncryptingKey::cfb128(cipher_key(key)?).map_err(|_| "cfb".to_owned())?;
    k.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from([0u8; 16])))
        .map(|_| ())
        .map_err(|_| "cfb encryption failed".to_owned())
}

/// AES-CFB decryption with an all-zero IV, in place (what `ActivateCredential` does).
///
/// # Errors
/// An AES key size other than 128 or 256 bits.
pub fn cfb_decrypt(key: &[u8], data: &mut [u8]) -> Result<(), String> {
    let k = DecryptingKey::cfb128(cipher_key(key)?).map_err(|_| "cfb".to_owned())?;
    k.decrypt(data, DecryptionContext::Iv128(FixedLength::from([0u8; 16])))
        .map(|_| ())
        .map_err(|_| "cfb decryption failed".to_owned())
}

/// DER of an RSA `SubjectPublicKeyInfo` with modulus `n` and exponent `e`.
pub fn rsa_spki(n: &[u8], e: u32) -> Vec<u8> {
    let rsa_key = rsa_public_key_der(n, e);
    let mut bits = vec![0u8];
    bits.extend(rsa_key);
    // AlgorithmIdentifier { rsaEncryption, NULL }
    let alg: &[u8] =
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut body = alg.to_vec();
    der(&mut body, 0x03, &bits);
    let mut out = Vec::new();
    der(&mut out, 0x30, &body);
    out
}

/// DER of a PKCS #1 `RSAPublicKey` with modulus `n` and exponent `e`.
pub fn rsa_public_key_der(n: &[u8], e: u32) -> Vec<u8> {
    let mut body = Vec::new();
    der_uint(&mut body, n);
    der_uint(&mut body, &e.to_be_bytes());
    let mut out = Vec::new();
    der(&mut out, 0x30, &body);
    out
}

fn der_uint(out: &mut Vec<u8>, be: &[u8]) {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len().saturating_sub(1));
    let mut v = Vec::with_capacity(be.len() + 1);
    if be.get(start).is_some_and(|&b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(&be[start..]);
    if v.is_empty() {
        v.push(0);
    }
    der(out, 0x02, &v);
}

fn der(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    let n = body.len();
    if n < 0x80 {
        out.push(u8::try_from(n).unwrap_or(0));
    } else {
        let len = n.to_be_bytes();
        let start = len.iter().position(|&b| b != 0).unwrap_or(len.len() - 1);
        out.push(0x80 | u8::try_from(len.len() - start).unwrap_or(0));
        out.extend_from_slice(&len[start..]);
    }
    out.extend_from_slice(body);
}

/// What `MakeCredential` produces: the contents of the `TPM2B_ID_OBJECT` and of the
/// `TPM2B_ENCRYPTED_SECRET` (without their size prefixes, as SPIRE sends them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// `TPMS_ID_OBJECT`: `TPM2B integrityHMAC ‖ encIdentity`.
    pub credential: Vec<u8>,
    /// The seed, RSA-OAEP encrypted to the endorsement key with label `IDENTITY`.
    pub secret: Vec<u8>,
}

/// `MakeCredential` to an RSA endorsement key: `secret` can be recovered only by the TPM that
/// holds `ek` and an object named `name_alg ‖ name_digest` (the attestation key).
///
/// # Errors
/// Why the credential cannot be made (an unsupported algorithm or key).
pub fn make_credential(
    ek: &Public,
    name_alg: u16,
    name_digest: &[u8],
    secret: &[u8],
) -> Result<MadeCredential, String> {
    let (n, e) = ek.rsa().ok_or("unsupported algorithm")?;
    let sym = ek.symmetric().ok_or("the endorsement key has no symmetric algorithm")?;
    if sym.alg != ALG_AES || sym.mode != ALG_CFB {
        return Err("the endorsement key's symmetric algorithm is not AES-CFB".into());
    }
    let mut seed = vec![0u8; usize::from(sym.key_bits / 8)];
    aws_lc_rs::rand::fill(&mut seed).map_err(|_| "no random bytes")?;

    let oaep = oaep_alg(name_alg).ok_or_else(|| unsupported_hash(name_alg))?;
    let public = PublicEncryptingKey::from_der(&rsa_spki(n, e))
        .map_err(|e| format!("invalid endorsement key: {e}"))?;
    let public =
        OaepPublicEncryptingKey::new(public).map_err(|_| "invalid endorsement key".to_owned())?;
    let mut enc_secret = vec![0u8; public.ciphertext_size()];
    let enc_secret = public
        .encrypt(oaep, &seed, &mut enc_secret, Some(b"IDENTITY\0"))
        .map_err(|_| "RSA-OAEP encryption failed")?
        .to_vec();

    let mut name = name_alg.to_be_bytes().to_vec();
    name.extend_from_slice(name_digest);
    let bits = u32::from(sym.key_bits);
    let sym_key = kdfa(name_alg, &seed, "STORAGE", &name, &[], bits)?;
    let mut enc_identity = Vec::with_capacity(secret.len() + 2);
    put_sized(&mut enc_identity, secret);
    cfb_encrypt(&sym_key, &mut enc_identity)?;

    let digest_bits = hash(name_alg).map(|h| h.output_len() * 8).unwrap_or_default();
    let hmac_key = kdfa(
        name_alg,
        &seed,
        "INTEGRITY",
        &[],
        &[],
        u32::try_from(digest_bits).unwrap_or_default(),
    )?;
    let alg = hmac_alg(name_alg).ok_or_else(|| unsupported_hash(name_alg))?;
    let mut mac = hmac::Context::with_key(&hmac::Key::new(alg, &hmac_key));
    mac.update(&enc_identity);
    mac.update(&name);
    let integrity = mac.sign();

    let mut credential = Vec::new();
    put_sized(&mut credential, integrity.as_ref());
    credential.extend_from_slice(&enc_identity);
    Ok(MadeCredential { credential, secret: enc_secret })
}

/// DER of an ECDSA signature (`SEQUENCE { INTEGER r, INTEGER s }`) from big-endian `r`, `s`.
pub fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    der_uint(&mut body, r);
    der_uint(&mut body, s);
    let mut out = Vec::new();
    der(&mut out, 0x30, &body);
    out
}
