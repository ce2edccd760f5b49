//! JWT-SVID validation, as the SPIFFE JWT-SVID standard and go-spiffe's `jwtsvid` read it.
//!
//! A JWT-SVID is a compact JWS. [`UnverifiedJwtSvid::parse`] reads it without trusting it:
//! the header's `alg` must be one of RS256/384/512, ES256/384/512 or PS256/384/512, `kid`
//! is required, `typ` (if present) is `JWT` or `JOSE`, and `crit` is refused; the claims
//! must hold a `sub` that is a SPIFFE ID. The caller then picks the bundle of that SPIFFE ID's
//! trust domain and calls [`UnverifiedJwtSvid::verify`], which finds the JWT authority by
//! `kid`, verifies the signature with aws-lc-rs, and checks `exp` (required, must be after
//! `now`), `nbf` (if present, must not be after `now`) and `aud` (required; string or array;
//! must contain every expected audience). [`validate`] does both steps against one bundle.

use std::time::SystemTime;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::bundle::Bundle;
use crate::jwk::{EcCurve, JwkError, JwkPublicKey};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The JWS algorithms a JWT-SVID may be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// ECDSA on P-521 with SHA-512.
    Es512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
}

impl JwsAlgorithm {
    const ALL: [Self; 9] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Es256,
        Self::Es384,
        Self::Es512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
    ];

    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }

    /// The algorithm named `name`, if it is one JWT-SVIDs may use.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The aws-lc-rs verifier for this algorithm and `key`, or `None` if the key does not
    /// fit the algorithm (an EC key for RS256, a P-384 key for ES256, ...).
    fn verifier(self, key: &JwkPublicKey) -> Option<&'static dyn VerificationAlgorithm> {
        let curve = match key {
            JwkPublicKey::Ec { curve, .. } => Some(*curve),
            JwkPublicKey::Rsa { .. } => None,
        };
        Some(match (self, curve) {
            (Self::Rs256, None) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (Self::Rs384, None) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (Self::Rs512, None) => &signature::RSA_PKCS1_2048_8192_SHA512,
            (Self::Ps256, None) => &signature::RSA_PSS_2048_8192_SHA256,
            (Self::Ps384, None) => &signature::RSA_PSS_2048_8192_SHA384,
            (Self::Ps512, None) => &signature::RSA_PSS_2048_8192_SHA512,
            (Self::Es256, Some(EcCurve::P256)) => &signature::ECDSA_P256_SHA256_FIXED,
            (Self::Es384, Some(EcCurve::P384)) => &signature::ECDSA_P384_SHA384_FIXED,
            (Self::Es512, Some(EcCurve::P521)) => &signature::ECDSA_P521_SHA512_FIXED,
            _ => return None,
        })
    }
}

/// A part of a compact JWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtPart {
    /// The protected header.
    Header,
    /// The claims (payload).
    Claims,
    /// The signature.
    Signature,
}

/// Why a token is not a valid JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtSvidError {
    /// The token is not three dot-separated parts.
    #[error("token is not a compact jws of three parts")]
    Malformed,
    /// A part is not unpadded base64url.
    #[error("token {0:?} is not base64url")]
    InvalidBase64(JwtPart),
    /// The header or claims are not a JSON object.
    #[error("token {0:?} is not a json object")]
    InvalidJson(JwtPart),
    /// The header has no `alg`.
    #[error("token header has no alg")]
    MissingAlgorithm,
    /// The header's `alg` is not one JWT-SVIDs may use.
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The header has no `kid`, or an empty one.
    #[error("token header has no key id")]
    MissingKeyId,
    /// A header member has the wrong JSON type.
    #[error("token header member {0:?} has the wrong type")]
    InvalidHeaderMember(&'static str),
    /// The header's `typ` is neither `JWT` nor `JOSE`.
    #[error("unsupported token type {0:?}")]
    UnsupportedType(String),
    /// The header has `crit`: no extension is understood, so none can be critical.
    #[error("token header has critical extensions")]
    UnsupportedCritical,
    /// The claims have no `sub`.
    #[error("token has no subject")]
    MissingSubject,
    /// The `sub` claim is not a SPIFFE ID.
    #[error("token subject is not a spiffe id")]
    InvalidSubject(#[source] SpiffeIdError),
    /// A claim has the wrong JSON type.
    #[error("token claim {0:?} has the wrong type")]
    InvalidClaim(&'static str),
    /// The token's SPIFFE ID is not in the bundle's trust domain.
    #[error("token subject is in trust domain {found}, bundle is for {expected}")]
    TrustDomainMismatch {
        /// The bundle's trust domain.
        expected: TrustDomain,
        /// The subject's trust domain.
        found: TrustDomain,
    },
    /// No JWT authority in the bundle has the token's `kid`.
    #[error("no jwt authority with key id {0:?}")]
    KeyNotFound(String),
    /// The JWT authority's public key cannot be read.
    #[error("jwt authority {key_id:?} has an unusable public key")]
    InvalidAuthorityKey {
        /// The authority's key id.
        key_id: String,
        /// What is wrong with the key.
        #[source]
        source: JwkError,
    },
    /// The authority's key type or curve does not fit the token's `alg`.
    #[error("jwt authority key does not fit algorithm {0:?}")]
    KeyAlgorithmMismatch(JwsAlgorithm),
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// The claims have no `exp`.
    #[error("token has no expiry")]
    MissingExpiry,
    /// `exp` is not after `now`.
    #[error("token has expired")]
    Expired,
    /// `nbf` is after `now`.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The claims have no `aud`.
    #[error("token has no audience")]
    MissingAudience,
    /// `aud` lacks an expected audience.
    #[error("token audience does not contain {0:?}")]
    AudienceMismatch(String),
}

/// A validated JWT-SVID.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSvid {
    /// The subject.
    pub spiffe_id: SpiffeId,
    /// The audience, as a list even when the token carried a single string.
    pub audience: Vec<String>,
    /// `exp`, whole Unix seconds (rounded down).
    pub expires_at: i64,
    /// Every claim of the token, as sent.
    pub claims: Map<String, Value>,
}

/// A JWT-SVID whose shape has been checked but whose signature and claims have not.
#[derive(Debug, Clone)]
pub struct UnverifiedJwtSvid {
    algorithm: JwsAlgorithm,
    key_id: String,
    spiffe_id: SpiffeId,
    claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

impl UnverifiedJwtSvid {
    /// Reads a compact JWS and checks its header and subject.
    ///
    /// # Errors
    /// [`JwtSvidError`] naming the first problem: shape, encoding, header rules, subject.
    pub fn parse(token: &str) -> Result<Self, JwtSvidError> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtSvidError::Malformed);
        };
        let header_obj = decode_object(header, JwtPart::Header)?;
        let algorithm = match header_obj.get("alg") {
            None => return Err(JwtSvidError::MissingAlgorithm),
            Some(Value::String(alg)) => JwsAlgorithm::from_name(alg)
                .ok_or_else(|| JwtSvidError::UnsupportedAlgorithm(alg.clone()))?,
            Some(_) => return Err(JwtSvidError::InvalidHeaderMember("alg")),
        };
        let key_id = match header_obj.get("kid") {
            Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
            None | Some(Value::String(_)) => return Err(JwtSvidError::MissingKeyId),
            Some(_) => return Err(JwtSvidError::InvalidHeaderMember("kid")),
        };
        match header_obj.get("typ") {
            None => {}
            Some(Value::String(typ)) if typ == "JWT" || typ == "JOSE" => {}
            Some(Value::String(typ)) => return Err(JwtSvidError::UnsupportedType(typ.clone())),
            Some(_) => return Err(JwtSvidError::InvalidHeaderMember("typ")),
        }
        if header_obj.contains_key("crit") {
            return Err(JwtSvidError::UnsupportedCritical);
        }
        let claims_obj = decode_object(claims, JwtPart::Claims)?;
        let spiffe_id = match claims_obj.get("sub") {
            None => return Err(JwtSvidError::MissingSubject),
            Some(Value::String(sub)) => {
                SpiffeId::parse(sub).map_err(JwtSvidError::InvalidSubject)?
            }
            Some(_) => return Err(JwtSvidError::InvalidClaim("sub")),
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwtSvidError::InvalidBase64(JwtPart::Signature))?;
        // The signed bytes are the first two parts with their separating dot.
        let signing_input = format!("{header}.{claims}");
        Ok(Self { algorithm, key_id, spiffe_id, claims: claims_obj, signing_input, signature })
    }

    /// The header's `alg`.
    pub fn algorithm(&self) -> JwsAlgorithm {
        self.algorithm
    }

    /// The header's `kid`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The (unverified) subject: pick the bundle of its trust domain.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The (unverified) claims.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Verifies the signature with `bundle`'s JWT authority named by `kid`, then the claims
    /// at `now`; `audience` lists the audiences the token must all contain (an empty list
    /// skips the audience match, never the presence of `aud`).
    ///
    /// # Errors
    /// [`JwtSvidError`] naming the first problem: trust domain, key, signature, expiry,
    /// not-before, audience.
    pub fn verify(
        self,
        bundle: &Bundle,
        audience: &[&str],
        now: SystemTime,
    ) -> Result<JwtSvid, JwtSvidError> {
        if !self.spiffe_id.is_member_of(&bundle.trust_domain) {
            return Err(JwtSvidError::TrustDomainMismatch {
                expected: bundle.trust_domain.clone(),
                found: self.spiffe_id.trust_domain(),
            });
        }
        let authority = bundle
            .jwt_authorities
            .iter()
            .find(|a| a.key_id == self.key_id)
            .ok_or_else(|| JwtSvidError::KeyNotFound(self.key_id.clone()))?;
        let key = JwkPublicKey::from_spki_der(&authority.public_key_der).map_err(|source| {
            JwtSvidError::InvalidAuthorityKey { key_id: self.key_id.clone(), source }
        })?;
        let verifier = self
            .algorithm
            .verifier(&key)
            .ok_or(JwtSvidError::KeyAlgorithmMismatch(self.algorithm))?;
        UnparsedPublicKey::new(verifier, key.raw_public_key())
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JwtSvidError::BadSignature)?;

        let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(_) => 0.0,
        };
        let exp = numeric_claim(&self.claims, "exp")?.ok_or(JwtSvidError::MissingExpiry)?;
        if now >= exp {
            return Err(JwtSvidError::Expired);
        }
        if numeric_claim(&self.claims, "nbf")?.is_some_and(|nbf| now < nbf) {
            return Err(JwtSvidError::NotYetValid);
        }
        let token_audience = match self.claims.get("aud") {
            None => return Err(JwtSvidError::MissingAudience),
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(auds)) => auds
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(JwtSvidError::InvalidClaim("aud"))?,
            Some(_) => return Err(JwtSvidError::InvalidClaim("aud")),
        };
        if let Some(missing) = audience.iter().find(|a| !token_audience.iter().any(|t| t == *a)) {
            return Err(JwtSvidError::AudienceMismatch((*missing).to_owned()));
        }
        Ok(JwtSvid {
            spiffe_id: self.spiffe_id,
            audience: token_audience,
            // Saturating float-to-int conversion; exp is finite and after now here.
            expires_at: exp.floor() as i64,
            claims: self.claims,
        })
    }
}

/// Parses `token` and verifies it against `bundle` (the bundle of the token's trust domain).
///
/// # Errors
/// As [`UnverifiedJwtSvid::parse`] and [`UnverifiedJwtSvid::verify`].
pub fn validate(
    token: &str,
    bundle: &Bundle,
    audience: &[&str],
    now: SystemTime,
) -> Result<JwtSvid, JwtSvidError> {
    UnverifiedJwtSvid::parse(token)?.verify(bundle, audience, now)
}

fn decode_object(part: &str, which: JwtPart) -> Result<Map<String, Value>, JwtSvidError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtSvidError::InvalidBase64(which))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        _ => Err(JwtSvidError::InvalidJson(which)),
    }
}

/// A NumericDate claim (RFC 7519 §2): absent, or a JSON number.
fn numeric_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<f64>, JwtSvidError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(JwtSvidError::InvalidClaim(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::JwtAuthority;
    use crate::clock::unix_seconds;
    use crate::testutil::{jwt_key_pool, now};
    use JwsAlgorithm as A;
    use JwtSvidError as E;
    use aws_lc_rs::rand::SystemRandom;
    use serde_json::json;

    const ID: &str = "spiffe://example.org/ns/prod/sa/web";

    /// Pool index of the key each algorithm signs with.
    fn key_index(alg: JwsAlgorithm) -> usize {
        match alg {
            A::Es256 => 0,
            A::Es384 => 1,
            A::Es512 => 2,
            _ => 3,
        }
    }

    fn bundle() -> Bundle {
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.jwt_authorities = jwt_key_pool()
            .iter()
            .enumerate()
            .map(|(i, (_, spki))| JwtAuthority {
                public_key_der: spki.clone(),
                key_id: format!("kid-{i}"),
                expires_at: 0,
                tainted: false,
            })
            .collect();
        bundle
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// Signs `input` with pool key `key` as `alg` prescribes.
    fn signature(alg: JwsAlgorithm, key: usize, input: &str) -> Vec<u8> {
        let pkcs8 = &jwt_key_pool()[key].0;
        let rng = SystemRandom::new();
        let ec = |a| {
            signature::EcdsaKeyPair::from_pkcs8(a, pkcs8)
                .unwrap()
                .sign(&rng, input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec()
        };
        let rsa = |a| {
            let kp = signature::RsaKeyPair::from_pkcs8(pkcs8).unwrap();
            let mut sig = vec![0; kp.public_modulus_len()];
            kp.sign(a, &rng, input.as_bytes(), &mut sig).unwrap();
            sig
        };
        match alg {
            A::Es256 => ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            A::Es384 => ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            A::Es512 => ec(&signature::ECDSA_P521_SHA512_FIXED_SIGNING),
            A::Rs256 => rsa(&signature::RSA_PKCS1_SHA256),
            A::Rs384 => rsa(&signature::RSA_PKCS1_SHA384),
            A::Rs512 => rsa(&signature::RSA_PKCS1_SHA512),
            A::Ps256 => rsa(&signature::RSA_PSS_SHA256),
            A::Ps384 => rsa(&signature::RSA_PSS_SHA384),
            A::Ps512 => rsa(&signature::RSA_PSS_SHA512),
        }
    }

    fn token(alg: JwsAlgorithm, key: usize, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = signature(alg, key, &input);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn header(alg: JwsAlgorithm) -> Value {
        json!({"alg": alg.name(), "kid": format!("kid-{}", key_index(alg)), "typ": "JWT"})
    }

    fn exp() -> i64 {
        unix_seconds(now()) + 300
    }

    fn claims() -> Value {
        json!({"sub": ID, "aud": ["svc", "other"], "exp": exp(), "iat": unix_seconds(now())})
    }

    fn good(alg: JwsAlgorithm) -> String {
        token(alg, key_index(alg), &header(alg), &claims())
    }

    fn edit(v: &Value, key: &str, new: Option<Value>) -> Value {
        let mut v = v.clone();
        let obj = v.as_object_mut().unwrap();
        match new {
            Some(new) => obj.insert(key.into(), new),
            None => obj.remove(key),
        };
        v
    }

    #[test]
    fn accepts_every_allowed_algorithm() {
        for alg in JwsAlgorithm::ALL {
            let svid = validate(&good(alg), &bundle(), &["svc"], now())
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(svid.spiffe_id.as_str(), ID);
            assert_eq!(svid.audience, ["svc", "other"]);
            assert_eq!(svid.expires_at, exp());
            assert_eq!(Value::Object(svid.claims), claims());
        }
    }

    /// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`.
    fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
        use crate::jwk::read_tlv;
        let (info, _) = read_tlv(pkcs8, 0x30).unwrap();
        let (_, rest) = read_tlv(info, 0x02).unwrap();
        let (_, rest) = read_tlv(rest, 0x30).unwrap();
        read_tlv(rest, 0x04).unwrap().0.to_vec()
    }

    /// Tokens from an independent JOSE implementation validate.
    #[test]
    fn accepts_tokens_signed_by_jsonwebtoken() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let pool = jwt_key_pool();
        let rsa = || EncodingKey::from_rsa_der(&pkcs1_of(&pool[3].0));
        let cases = [
            (Algorithm::ES256, A::Es256, EncodingKey::from_ec_der(&pool[0].0)),
            (Algorithm::ES384, A::Es384, EncodingKey::from_ec_der(&pool[1].0)),
            (Algorithm::RS256, A::Rs256, rsa()),
            (Algorithm::RS512, A::Rs512, rsa()),
            (Algorithm::PS256, A::Ps256, rsa()),
            (Algorithm::PS384, A::Ps384, rsa()),
        ];
        for (alg, ours, key) in cases {
            let mut header = Header::new(alg);
            header.kid = Some(format!("kid-{}", key_index(ours)));
            let t = jsonwebtoken::encode(&header, &claims(), &key).unwrap();
            let svid = validate(&t, &bundle(), &["other"], now()).unwrap();
            assert_eq!(svid.spiffe_id.as_str(), ID, "{alg:?}");
            assert_eq!(svid.expires_at, exp());
        }
    }

    #[test]
    fn accepts_string_audience_and_checks_every_expected_audience() {
        let c = edit(&claims(), "aud", Some("svc".into()));
        let t = token(A::Es256, 0, &header(A::Es256), &c);
        assert_eq!(validate(&t, &bundle(), &["svc"], now()).unwrap().audience, ["svc"]);
        let t = good(A::Es256);
        assert!(validate(&t, &bundle(), &["svc", "other"], now()).is_ok());
        assert_eq!(
            validate(&t, &bundle(), &["svc", "third"], now()).unwrap_err(),
            E::AudienceMismatch("third".into())
        );
        assert!(validate(&t, &bundle(), &[], now()).is_ok());
    }

    #[test]
    fn typ_may_be_jose_or_absent() {
        for h in [
            edit(&header(A::Es256), "typ", Some("JOSE".into())),
            edit(&header(A::Es256), "typ", None),
        ] {
            let t = token(A::Es256, 0, &h, &claims());
            assert_eq!(validate(&t, &bundle(), &["svc"], now()).unwrap().spiffe_id.as_str(), ID);
        }
    }

    #[test]
    fn expiry_is_exclusive_and_not_before_inclusive() {
        let t = good(A::Es256);
        let at = |s: i64| crate::testutil::at(s);
        assert!(validate(&t, &bundle(), &["svc"], at(exp() - 1)).is_ok());
        assert_eq!(validate(&t, &bundle(), &["svc"], at(exp())).unwrap_err(), E::Expired);
        let c = edit(&claims(), "nbf", Some(unix_seconds(now()).into()));
        let t = token(A::Es256, 0, &header(A::Es256), &c);
        assert!(validate(&t, &bundle(), &["svc"], now()).is_ok());
        assert_eq!(
            validate(&t, &bundle(), &["svc"], at(unix_seconds(now()) - 1)).unwrap_err(),
            E::NotYetValid
        );
    }

    #[test]
    fn parse_exposes_unverified_subject_for_bundle_lookup() {
        let u = UnverifiedJwtSvid::parse(&good(A::Ps384)).unwrap();
        assert_eq!(u.spiffe_id().trust_domain_name(), "example.org");
        assert_eq!(u.key_id(), "kid-3");
        assert_eq!(u.algorithm(), A::Ps384);
        assert_eq!(u.claims()["sub"], ID);
    }

    #[test]
    fn rejection_table() {
        let h = header(A::Es256);
        let c = claims();
        let sign = |h: &Value, c: &Value| token(A::Es256, 0, h, c);
        let sig_of_good = good(A::Es256).rsplit('.').next().unwrap().to_owned();
        let mut bad_key_bundle = bundle();
        bad_key_bundle.jwt_authorities[0].public_key_der = vec![1, 2, 3];
        let der_signature = {
            let input = format!("{}.{}", b64(&h), b64(&c));
            let pkcs8 = &jwt_key_pool()[0].0;
            let kp = signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                pkcs8,
            )
            .unwrap();
            let sig = kp.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        };
        let cases: Vec<(String, JwtSvidError)> = vec![
            ("".into(), E::Malformed),
            ("abc".into(), E::Malformed),
            ("a.b".into(), E::Malformed),
            (format!("{}.x", good(A::Es256)), E::Malformed),
            ("!!.e30.AA".into(), E::InvalidBase64(JwtPart::Header)),
            (format!("{}=.{}.AA", b64(&h), b64(&c)), E::InvalidBase64(JwtPart::Header)),
            (format!("{}.{}.AA", b64(&json!([1])), b64(&c)), E::InvalidJson(JwtPart::Header)),
            (
                format!("{}.{}.AA", URL_SAFE_NO_PAD.encode("{"), b64(&c)),
                E::InvalidJson(JwtPart::Header),
            ),
            (sign(&edit(&h, "alg", None), &c), E::MissingAlgorithm),
            (
                sign(&edit(&h, "alg", Some("HS256".into())), &c),
                E::UnsupportedAlgorithm("HS256".into()),
            ),
            (
                sign(&edit(&h, "alg", Some("none".into())), &c),
                E::UnsupportedAlgorithm("none".into()),
            ),
            (
                sign(&edit(&h, "alg", Some("es256".into())), &c),
                E::UnsupportedAlgorithm("es256".into()),
            ),
            (sign(&edit(&h, "alg", Some(256.into())), &c), E::InvalidHeaderMember("alg")),
            (sign(&edit(&h, "kid", None), &c), E::MissingKeyId),
            (sign(&edit(&h, "kid", Some("".into())), &c), E::MissingKeyId),
            (sign(&edit(&h, "kid", Some(json!(["kid-0"]))), &c), E::InvalidHeaderMember("kid")),
            (
                sign(&edit(&h, "typ", Some("at+jwt".into())), &c),
                E::UnsupportedType("at+jwt".into()),
            ),
            (sign(&edit(&h, "typ", Some(json!(null))), &c), E::InvalidHeaderMember("typ")),
            (sign(&edit(&h, "crit", Some(json!(["exp"]))), &c), E::UnsupportedCritical),
            (format!("{}.**.AA", b64(&h)), E::InvalidBase64(JwtPart::Claims)),
            (format!("{}.{}.AA", b64(&h), b64(&json!("sub"))), E::InvalidJson(JwtPart::Claims)),
            (sign(&h, &edit(&c, "sub", None)), E::MissingSubject),
            (sign(&h, &edit(&c, "sub", Some(7.into()))), E::InvalidClaim("sub")),
            (
                sign(&h, &edit(&c, "sub", Some("spiffe://Example.org/a".into()))),
                E::InvalidSubject(SpiffeIdError::BadTrustDomainChar),
            ),
            (
                sign(&h, &edit(&c, "sub", Some("https://example.org/a".into()))),
                E::InvalidSubject(SpiffeIdError::WrongScheme),
            ),
            (format!("{}.{}.A+/=", b64(&h), b64(&c)), E::InvalidBase64(JwtPart::Signature)),
            (
                sign(&h, &edit(&c, "sub", Some("spiffe://other.org/a".into()))),
                E::TrustDomainMismatch {
                    expected: TrustDomain::new("example.org").unwrap(),
                    found: TrustDomain::new("other.org").unwrap(),
                },
            ),
            (sign(&edit(&h, "kid", Some("kid-9".into())), &c), E::KeyNotFound("kid-9".into())),
            (sign(&edit(&h, "kid", Some("kid-1".into())), &c), E::KeyAlgorithmMismatch(A::Es256)),
            (
                token(A::Rs256, 3, &edit(&header(A::Rs256), "kid", Some("kid-0".into())), &c),
                E::KeyAlgorithmMismatch(A::Rs256),
            ),
            (
                token(A::Es512, 2, &edit(&header(A::Es512), "kid", Some("kid-3".into())), &c),
                E::KeyAlgorithmMismatch(A::Es512),
            ),
            (format!("{}.{}.", b64(&h), b64(&c)), E::BadSignature),
            (
                format!("{}.{}.{sig_of_good}", b64(&h), b64(&edit(&c, "aud", Some("x".into())))),
                E::BadSignature,
            ),
            (der_signature, E::BadSignature),
            (token(A::Ps256, 3, &header(A::Rs256), &c), E::BadSignature),
            (sign(&h, &edit(&c, "exp", None)), E::MissingExpiry),
            (sign(&h, &edit(&c, "exp", Some("soon".into()))), E::InvalidClaim("exp")),
            (sign(&h, &edit(&c, "exp", Some(unix_seconds(now()).into()))), E::Expired),
            (sign(&h, &edit(&c, "exp", Some(0.into()))), E::Expired),
            (sign(&h, &edit(&c, "nbf", Some((unix_seconds(now()) + 10).into()))), E::NotYetValid),
            (sign(&h, &edit(&c, "nbf", Some(json!({})))), E::InvalidClaim("nbf")),
            (sign(&h, &edit(&c, "aud", None)), E::MissingAudience),
            (sign(&h, &edit(&c, "aud", Some(5.into()))), E::InvalidClaim("aud")),
            (sign(&h, &edit(&c, "aud", Some(json!(["svc", 1])))), E::InvalidClaim("aud")),
            (sign(&h, &edit(&c, "aud", Some(json!([])))), E::AudienceMismatch("svc".into())),
            (sign(&h, &edit(&c, "aud", Some("other".into()))), E::AudienceMismatch("svc".into())),
        ];
        for (input, want) in cases {
            assert_eq!(
                validate(&input, &bundle(), &["svc"], now()).unwrap_err(),
                want,
                "token {input}"
            );
        }
        assert_eq!(
            validate(&good(A::Es256), &bad_key_bundle, &["svc"], now()).unwrap_err(),
            E::InvalidAuthorityKey { key_id: "kid-0".into(), source: JwkError::MalformedSpki }
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_on_random_text(s in ".{0,200}") {
                let _ = validate(&s, &bundle(), &["svc"], now());
            }

            #[test]
            fn never_panics_on_random_parts(
                h in proptest::collection::vec(any::<u8>(), 0..64),
                c in proptest::collection::vec(any::<u8>(), 0..64),
                s in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let t = [h, c, s].map(|p| URL_SAFE_NO_PAD.encode(p)).join(".");
                prop_assert!(validate(&t, &bundle(), &["svc"], now()).is_err());
            }

            #[test]
            fn any_changed_claim_breaks_the_signature(aud in "[a-z]{1,10}") {
                prop_assume!(aud != "svc");
                let good = good(A::Es256);
                let mut parts: Vec<&str> = good.split('.').collect();
                let forged = b64(&edit(&claims(), "aud", Some(json!([aud.clone(), "svc"]))));
                parts[1] = &forged;
                prop_assert_eq!(
                    validate(&parts.join("."), &bundle(), &["svc"], now()).unwrap_err(),
                    E::BadSignature
                );
            }
        }
    }
}
