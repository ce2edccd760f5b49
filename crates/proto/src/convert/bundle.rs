//! `spire.api.types.Bundle` <-> core [`Bundle`], with `BundleMask` handling.

use ward_core::{Bundle, JwtAuthority, X509Authority};

use super::error::ConvertError;
use super::spiffe_id::trust_domain_from_proto;
use crate::spire::api::types;

fn bundle_mask_all() -> types::BundleMask {
    types::BundleMask {
        x509_authorities: true,
        jwt_authorities: true,
        refresh_hint: true,
        sequence_number: true,
    }
}

/// Renders a bundle, keeping only the fields `mask` selects (all when `None`); the trust
/// domain (bare name) is always present.
pub fn bundle_to_proto(bundle: &Bundle, mask: Option<&types::BundleMask>) -> types::Bundle {
    let all = bundle_mask_all();
    let m = mask.unwrap_or(&all);
    types::Bundle {
        trust_domain: bundle.trust_domain.as_str().to_owned(),
        x509_authorities: if m.x509_authorities {
            bundle.x509_authorities.iter().map(x509_authority_to_proto).collect()
        } else {
            Vec::new()
        },
        jwt_authorities: if m.jwt_authorities {
            bundle.jwt_authorities.iter().map(jwt_authority_to_proto).collect()
        } else {
            Vec::new()
        },
        refresh_hint: if m.refresh_hint { bundle.refresh_hint } else { 0 },
        sequence_number: if m.sequence_number { bundle.sequence_number } else { 0 },
    }
}

/// Parses a wire bundle (federated bundle create/set, federation relationship bundles).
///
/// Certificates and keys are checked for presence here; parsing their DER is left to the
/// caller that owns X.509 handling.
///
/// # Errors
/// [`ConvertError::InvalidTrustDomain`], [`ConvertError::EmptyX509Authority`],
/// [`ConvertError::EmptyJwtPublicKey`] or [`ConvertError::MissingJwtKeyId`].
pub fn bundle_from_proto(proto: &types::Bundle) -> Result<Bundle, ConvertError> {
    Ok(Bundle {
        trust_domain: trust_domain_from_proto(&proto.trust_domain)?,
        x509_authorities: proto
            .x509_authorities
            .iter()
            .map(x509_authority_from_proto)
            .collect::<Result<_, _>>()?,
        jwt_authorities: proto
            .jwt_authorities
            .iter()
            .map(jwt_authority_from_proto)
            .collect::<Result<_, _>>()?,
        refresh_hint: proto.refresh_hint,
        sequence_number: proto.sequence_number,
    })
}

/// Applies a BatchUpdateFederatedBundle item: the authorities and numbers the input mask
/// selects (all when `None`) come from `proto`, the rest stay; the trust domain never changes.
///
/// # Errors
/// As [`bundle_from_proto`] for the selected fields.
pub fn apply_bundle_update(
    existing: &Bundle,
    proto: &types::Bundle,
    input_mask: Option<&types::BundleMask>,
) -> Result<Bundle, ConvertError> {
    let all = bundle_mask_all();
    let m = input_mask.unwrap_or(&all);
    let mut out = existing.clone();
    if m.x509_authorities {
        out.x509_authorities = proto
            .x509_authorities
            .iter()
            .map(x509_authority_from_proto)
            .collect::<Result<_, _>>()?;
    }
    if m.jwt_authorities {
        out.jwt_authorities =
            proto.jwt_authorities.iter().map(jwt_authority_from_proto).collect::<Result<_, _>>()?;
    }
    if m.refresh_hint {
        out.refresh_hint = proto.refresh_hint;
    }
    if m.sequence_number {
        out.sequence_number = proto.sequence_number;
    }
    Ok(out)
}

/// Renders an X.509 authority.
pub fn x509_authority_to_proto(a: &X509Authority) -> types::X509Certificate {
    types::X509Certificate { asn1: a.der.clone(), tainted: a.tainted }
}

/// Parses an X.509 authority.
///
/// # Errors
/// [`ConvertError::EmptyX509Authority`] when no certificate bytes are present.
pub fn x509_authority_from_proto(
    c: &types::X509Certificate,
) -> Result<X509Authority, ConvertError> {
    if c.asn1.is_empty() {
        return Err(ConvertError::EmptyX509Authority);
    }
    Ok(X509Authority { der: c.asn1.clone(), tainted: c.tainted })
}

/// Renders a JWT authority.
pub fn jwt_authority_to_proto(a: &JwtAuthority) -> types::JwtKey {
    types::JwtKey {
        public_key: a.public_key_der.clone(),
        key_id: a.key_id.clone(),
        expires_at: a.expires_at,
        tainted: a.tainted,
    }
}

/// Parses a JWT authority (AppendBundle, PublishJWTAuthority, federated bundles).
///
/// # Errors
/// [`ConvertError::EmptyJwtPublicKey`] or [`ConvertError::MissingJwtKeyId`] (agents reject a
/// bundle holding a key without id).
pub fn jwt_authority_from_proto(k: &types::JwtKey) -> Result<JwtAuthority, ConvertError> {
    if k.public_key.is_empty() {
        return Err(ConvertError::EmptyJwtPublicKey);
    }
    if k.key_id.is_empty() {
        return Err(ConvertError::MissingJwtKeyId);
    }
    Ok(JwtAuthority {
        public_key_der: k.public_key.clone(),
        key_id: k.key_id.clone(),
        expires_at: k.expires_at,
        tainted: k.tainted,
    })
}

#[cfg(test)]
mod tests {
    use ward_core::{SpiffeIdError, TrustDomain};

    use super::*;

    fn bundle() -> Bundle {
        Bundle {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            x509_authorities: vec![X509Authority { der: vec![0x30, 0x82, 1], tainted: false }],
            jwt_authorities: vec![JwtAuthority {
                public_key_der: vec![0x30, 0x59],
                key_id: "kid1".into(),
                expires_at: 1_900_000_000,
                tainted: true,
            }],
            refresh_hint: 300,
            sequence_number: 42,
        }
    }

    #[test]
    fn round_trips_with_nil_mask() {
        let wire = bundle_to_proto(&bundle(), None);
        assert_eq!(wire.trust_domain, "example.org");
        assert_eq!(wire.x509_authorities[0].asn1, vec![0x30, 0x82, 1]);
        assert_eq!(wire.jwt_authorities[0].key_id, "kid1");
        assert!(wire.jwt_authorities[0].tainted);
        assert_eq!((wire.refresh_hint, wire.sequence_number), (300, 42));
        assert_eq!(bundle_from_proto(&wire).unwrap(), bundle());
    }

    #[test]
    fn mask_keeps_trust_domain_and_selected_fields() {
        let mask = types::BundleMask { sequence_number: true, ..Default::default() };
        let wire = bundle_to_proto(&bundle(), Some(&mask));
        assert_eq!(
            wire,
            types::Bundle {
                trust_domain: "example.org".into(),
                sequence_number: 42,
                ..Default::default()
            }
        );
    }

    #[test]
    fn rejects_bad_authorities() {
        let mut wire = bundle_to_proto(&bundle(), None);
        wire.jwt_authorities[0].key_id.clear();
        let err = bundle_from_proto(&wire).unwrap_err();
        assert_eq!(err, ConvertError::MissingJwtKeyId);
        assert_eq!(err.to_string(), "unable to parse JWT authority: missing key ID");

        let mut wire = bundle_to_proto(&bundle(), None);
        wire.jwt_authorities[0].public_key.clear();
        assert_eq!(bundle_from_proto(&wire).unwrap_err(), ConvertError::EmptyJwtPublicKey);

        let mut wire = bundle_to_proto(&bundle(), None);
        wire.x509_authorities[0].asn1.clear();
        assert_eq!(bundle_from_proto(&wire).unwrap_err(), ConvertError::EmptyX509Authority);

        let mut wire = bundle_to_proto(&bundle(), None);
        wire.trust_domain = "EXAMPLE".into();
        assert_eq!(
            bundle_from_proto(&wire).unwrap_err(),
            ConvertError::InvalidTrustDomain(SpiffeIdError::BadTrustDomainChar)
        );
    }

    #[test]
    fn update_applies_only_masked_fields() {
        let patch = types::Bundle {
            trust_domain: "ignored.org".into(),
            refresh_hint: 60,
            ..Default::default()
        };
        let mask = types::BundleMask { refresh_hint: true, ..Default::default() };
        let updated = apply_bundle_update(&bundle(), &patch, Some(&mask)).unwrap();
        let mut want = bundle();
        want.refresh_hint = 60;
        assert_eq!(updated, want);

        let cleared = apply_bundle_update(&bundle(), &patch, None).unwrap();
        assert!(cleared.x509_authorities.is_empty() && cleared.jwt_authorities.is_empty());
        assert_eq!(cleared.trust_domain.as_str(), "example.org");
    }
}
