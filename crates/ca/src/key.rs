//! Private keys: the four key types SPIRE offers, generation, parsing, and cached signers.
//!
//! Every private-key operation (generation, parsing, signing) goes through aws-lc-rs. Key
//! bytes are held in [`Zeroizing`] buffers and wiped when dropped; `Debug` never prints them.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _, RsaEncoding, RsaKeyPair,
};
use zeroize::Zeroizing;

use crate::error::{KeyError, SignError};

/// The kinds of CA and JWT keys, named as SPIRE names them in `ca_key_type` / `jwt_key_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    /// ECDSA on NIST P-256 (`ec-p256`), the default.
    #[default]
    EcP256,
    /// ECDSA on NIST P-384 (`ec-p384`).
    EcP384,
    /// RSA with a 2048-bit modulus (`rsa-2048`).
    Rsa2048,
    /// RSA with a 4096-bit modulus (`rsa-4096`).
    Rsa4096,
}

impl KeyType {
    /// All key types, in SPIRE's documentation order.
    pub const ALL: [KeyType; 4] = [Self::Rsa2048, Self::Rsa4096, Self::EcP256, Self::EcP384];

    /// SPIRE's name for the key type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// The JWS `alg` a key of this type signs with.
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::EcP256 => "ES256",
            Self::EcP384 => "ES384",
            Self::Rsa2048 | Self::Rsa4096 => "RS256",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| KeyError::UnknownKeyType(s.to_owned()))
    }
}

/// A private key with its type and public half.
///
/// Holds the PKCS#8 v1 DER in a buffer that is zeroized on drop. Signing keys are built from
/// it once (see [`PrivateKey::x509_signer`], [`PrivateKey::jws_signer`]) and then cached by
/// their owners, so nothing is re-parsed per signature.
#[derive(Clone)]
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    public_key_der: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .field("private", &"<redacted>")
            .finish()
    }
}

fn ec_alg(key_type: KeyType) -> Option<&'static EcdsaSigningAlgorithm> {
    match key_type {
        KeyType::EcP256 => Some(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyType::EcP384 => Some(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        KeyType::Rsa2048 | KeyType::Rsa4096 => None,
    }
}

fn rsa_type(key: &RsaKeyPair) -> Result<KeyType, KeyError> {
    match key.public_modulus_len() * 8 {
        2048 => Ok(KeyType::Rsa2048),
        4096 => Ok(KeyType::Rsa4096),
        _ => Err(KeyError::Unsupported("RSA keys must be 2048 or 4096 bits")),
    }
}

fn rsa_pkcs8(key: &RsaKeyPair) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let der: Pkcs8V1Der<'static> =
        key.as_der().map_err(|_| KeyError::Crypto("RSA PKCS#8 encoding"))?;
    Ok(Zeroizing::new(der.as_ref().to_vec()))
}

fn spki<T: AsDer<PublicKeyX509Der<'static>>>(public: &T) -> Result<Vec<u8>, KeyError> {
    let der = public.as_der().map_err(|_| KeyError::Crypto("public key encoding"))?;
    Ok(der.as_ref().to_vec())
}

impl PrivateKey {
    /// Generates a fresh key of `key_type` with aws-lc-rs.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the library fails to generate.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let pkcs8 = match ec_alg(key_type) {
            Some(alg) => {
                let doc = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new())
                    .map_err(|_| KeyError::Crypto("EC key generation"))?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            None => {
                let size =
                    if key_type == KeyType::Rsa2048 { KeySize::Rsa2048 } else { KeySize::Rsa4096 };
                let key = RsaKeyPair::generate(size)
                    .map_err(|_| KeyError::Crypto("RSA key generation"))?;
                rsa_pkcs8(&key)?
            }
        };
        Self::from_pkcs8_der(&pkcs8)
    }

    /// Parses an unencrypted PKCS#8 v1 DER private key, finding its type.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] for anything that is not a P-256, P-384 or RSA PKCS#8 key,
    /// [`KeyError::Unsupported`] for RSA keys other than 2048 or 4096 bits.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        for key_type in [KeyType::EcP256, KeyType::EcP384] {
            if let Some(alg) = ec_alg(key_type)
                && let Ok(key) = EcdsaKeyPair::from_pkcs8(alg, der)
            {
                return Ok(Self {
                    key_type,
                    pkcs8: Zeroizing::new(der.to_vec()),
                    public_key_der: spki(key.public_key())?,
                });
            }
        }
        match RsaKeyPair::from_pkcs8(der) {
            Ok(key) => Ok(Self {
                key_type: rsa_type(&key)?,
                pkcs8: Zeroizing::new(der.to_vec()),
                public_key_der: spki(key.public_key())?,
            }),
            Err(_) => Err(KeyError::Malformed("not a P-256, P-384 or RSA PKCS#8 private key")),
        }
    }

    /// Parses a PEM private key: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) or
    /// `RSA PRIVATE KEY` (PKCS#1). The first private-key block in the text is used.
    ///
    /// # Errors
    /// [`KeyError::Pem`] for undecodable PEM, [`KeyError::Malformed`] when no block holds a
    /// usable key.
    pub fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        // Take every block's bytes into a zeroizing buffer before anything can drop them.
        let blocks: Vec<(String, Zeroizing<Vec<u8>>)> = pem::parse_many(text)?
            .into_iter()
            .map(|b| (b.tag().to_owned(), Zeroizing::new(b.into_contents())))
            .collect();
        for (tag, der) in &blocks {
            match tag.as_str() {
                "PRIVATE KEY" => return Self::from_pkcs8_der(der),
                "EC PRIVATE KEY" => {
                    for key_type in [KeyType::EcP256, KeyType::EcP384] {
                        if let Some(alg) = ec_alg(key_type)
                            && let Ok(key) = EcdsaKeyPair::from_private_key_der(alg, der)
                        {
                            let doc = key
                                .to_pkcs8v1()
                                .map_err(|_| KeyError::Crypto("EC PKCS#8 encoding"))?;
                            return Self::from_pkcs8_der(doc.as_ref());
                        }
                    }
                    return Err(KeyError::Malformed("EC PRIVATE KEY is not a P-256/P-384 key"));
                }
                "RSA PRIVATE KEY" => {
                    let key = RsaKeyPair::from_der(der)
                        .map_err(|_| KeyError::Malformed("bad RSA PRIVATE KEY"))?;
                    return Self::from_pkcs8_der(&rsa_pkcs8(&key)?);
                }
                _ => {}
            }
        }
        Err(KeyError::Malformed("no PRIVATE KEY block in PEM"))
    }

    /// Parses either PEM (text starting with `-----BEGIN`, after whitespace) or PKCS#8 DER.
    ///
    /// # Errors
    /// As [`PrivateKey::from_pem`] and [`PrivateKey::from_pkcs8_der`].
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            Self::from_pem(bytes)
        } else {
            Self::from_pkcs8_der(bytes)
        }
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The private key as PKCS#8 v1 DER. Handle with care.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The private key as a PKCS#8 `PRIVATE KEY` PEM block, in a zeroizing buffer.
    ///
    /// Written by the `pem` crate (64 columns, `\n` line ends); the copy of the key handed
    /// to it is zeroized afterwards, its own scratch base64 string is not.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let block = pem::Pem::new("PRIVATE KEY", self.pkcs8.to_vec());
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        let out = Zeroizing::new(pem::encode_config(&block, config));
        drop(Zeroizing::new(block.into_contents()));
        out
    }

    /// The public key as SubjectPublicKeyInfo (PKIX) DER.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// A signer producing X.509 signatures: ECDSA as ASN.1 DER (SHA-256 for P-256, SHA-384
    /// for P-384), RSA as PKCS#1 v1.5 with SHA-256, as SPIRE's CA signs.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the key no longer parses (it was checked when built).
    pub fn x509_signer(&self) -> Result<Signer, KeyError> {
        self.signer(false)
    }

    /// A signer producing JWS signatures: `ES256`/`ES384` as fixed-width `r||s`, `RS256` as
    /// PKCS#1 v1.5 with SHA-256.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] if the key no longer parses.
    pub fn jws_signer(&self) -> Result<Signer, KeyError> {
        self.signer(true)
    }

    fn signer(&self, fixed: bool) -> Result<Signer, KeyError> {
        let inner = match self.key_type {
            KeyType::EcP256 | KeyType::EcP384 => {
                let alg = match (self.key_type, fixed) {
                    (KeyType::EcP256, false) => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    (KeyType::EcP256, true) => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    (_, false) => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    (_, true) => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                };
                SignerKey::Ecdsa(
                    EcdsaKeyPair::from_pkcs8(alg, &self.pkcs8)
                        .map_err(|_| KeyError::Crypto("EC key parse"))?,
                )
            }
            KeyType::Rsa2048 | KeyType::Rsa4096 => SignerKey::Rsa(
                RsaKeyPair::from_pkcs8(&self.pkcs8)
                    .map_err(|_| KeyError::Crypto("RSA key parse"))?,
                &signature::RSA_PKCS1_SHA256,
            ),
        };
        Ok(Signer { key_type: self.key_type, inner, rng: SystemRandom::new() })
    }
}

enum SignerKey {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
}

/// A parsed, ready-to-use signing key. Build once, sign many times.
pub struct Signer {
    key_type: KeyType,
    inner: SignerKey,
    rng: SystemRandom,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

/// DER AlgorithmIdentifier for ecdsa-with-SHA256.
const ALG_ECDSA_SHA256: &[u8] =
    &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// DER AlgorithmIdentifier for ecdsa-with-SHA384.
const ALG_ECDSA_SHA384: &[u8] =
    &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
/// DER AlgorithmIdentifier for sha256WithRSAEncryption (with NULL parameters).
const ALG_RSA_SHA256: &[u8] =
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00];

impl Signer {
    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The DER AlgorithmIdentifier of the X.509 signatures this signer makes.
    pub fn x509_algorithm_der(&self) -> &'static [u8] {
        match self.key_type {
            KeyType::EcP256 => ALG_ECDSA_SHA256,
            KeyType::EcP384 => ALG_ECDSA_SHA384,
            KeyType::Rsa2048 | KeyType::Rsa4096 => ALG_RSA_SHA256,
        }
    }

    /// Signs `msg`, appending the signature to `out`.
    ///
    /// # Errors
    /// [`SignError::Crypto`] if the library fails.
    pub fn sign_into(&self, msg: &[u8], out: &mut Vec<u8>) -> Result<(), SignError> {
        match &self.inner {
            SignerKey::Ecdsa(key) => {
                let sig = key.sign(&self.rng, msg).map_err(|_| SignError::Crypto)?;
                out.extend_from_slice(sig.as_ref());
            }
            SignerKey::Rsa(key, enc) => {
                let start = out.len();
                out.resize(start + key.public_modulus_len(), 0);
                key.sign(*enc, &self.rng, msg, &mut out[start..]).map_err(|_| SignError::Crypto)?;
            }
        }
        Ok(())
    }

    /// Signs `msg` and returns the signature.
    ///
    /// # Errors
    /// [`SignError::Crypto`] if the library fails.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        let mut out = Vec::with_capacity(512);
        self.sign_into(msg, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::UnparsedPublicKey;

    #[test]
    fn key_type_names_round_trip() {
        for kt in KeyType::ALL {
            assert_eq!(kt.as_str().parse::<KeyType>().unwrap(), kt);
        }
        assert_eq!(KeyType::default(), KeyType::EcP256);
        assert!(matches!(
            "ec-p521".parse::<KeyType>(),
            Err(KeyError::UnknownKeyType(s)) if s == "ec-p521"
        ));
    }

    #[test]
    fn generate_parse_sign_verify_every_type() {
        for kt in KeyType::ALL {
            let key = PrivateKey::generate(kt).unwrap();
            assert_eq!(key.key_type(), kt);
            let again = PrivateKey::from_pkcs8_der(key.pkcs8_der()).unwrap();
            assert_eq!(again.public_key_der(), key.public_key_der());
            let from_pem = PrivateKey::from_pem(key.to_pkcs8_pem().as_bytes()).unwrap();
            assert_eq!(from_pem.public_key_der(), key.public_key_der());

            let (_, info) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(key.public_key_der()).unwrap();
            let spki = info.subject_public_key.data.to_vec();
            let msg = b"ward";
            let x509_sig = key.x509_signer().unwrap().sign(msg).unwrap();
            let jws_sig = key.jws_signer().unwrap().sign(msg).unwrap();
            let (x509_alg, jws_alg): (
                &'static dyn signature::VerificationAlgorithm,
                &'static dyn signature::VerificationAlgorithm,
            ) = match kt {
                KeyType::EcP256 => {
                    (&signature::ECDSA_P256_SHA256_ASN1, &signature::ECDSA_P256_SHA256_FIXED)
                }
                KeyType::EcP384 => {
                    (&signature::ECDSA_P384_SHA384_ASN1, &signature::ECDSA_P384_SHA384_FIXED)
                }
                _ => {
                    (&signature::RSA_PKCS1_2048_8192_SHA256, &signature::RSA_PKCS1_2048_8192_SHA256)
                }
            };
            UnparsedPublicKey::new(x509_alg, &spki).verify(msg, &x509_sig).unwrap();
            UnparsedPublicKey::new(jws_alg, &spki).verify(msg, &jws_sig).unwrap();
            if kt == KeyType::EcP256 {
                assert_eq!(jws_sig.len(), 64);
            }
        }
    }

    #[test]
    fn pem_output_matches_the_pem_crate() {
        let key = PrivateKey::generate(KeyType::Rsa2048).unwrap();
        let ours = key.to_pkcs8_pem();
        let theirs = pem::parse(ours.as_bytes()).unwrap();
        assert_eq!(theirs.tag(), "PRIVATE KEY");
        assert_eq!(theirs.contents(), key.pkcs8_der());
        assert!(ours.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        let (_, der) = x509_parser::pem::parse_x509_pem(ours.as_bytes()).unwrap();
        assert_eq!(der.contents, key.pkcs8_der());
    }

    #[test]
    fn keys_and_signers_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PrivateKey>();
        assert_send_sync::<Signer>();
        assert_send_sync::<crate::X509Ca>();
        assert_send_sync::<crate::JwtSigner>();
    }

    #[test]
    fn debug_redacts() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let text = format!("{key:?}");
        assert!(text.contains("<redacted>"));
        assert!(!text.contains(&format!("{:?}", &key.pkcs8_der()[..8])));
    }

    #[test]
    fn rejects_garbage_and_reads_sec1_and_pkcs1() {
        assert!(matches!(PrivateKey::from_pkcs8_der(b"nope"), Err(KeyError::Malformed(_))));
        assert!(matches!(
            PrivateKey::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(KeyError::Malformed(_))
        ));
        // SEC1 from the P-256 key: re-encode via aws-lc-rs.
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let ec =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, key.pkcs8_der())
                .unwrap();
        let sec1 = ec.private_key().as_der().unwrap();
        let text = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.as_ref().to_vec()));
        let parsed = PrivateKey::from_pem_or_der(text.as_bytes()).unwrap();
        assert_eq!(parsed.public_key_der(), key.public_key_der());
    }
}
