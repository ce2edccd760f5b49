//! `spire.api.types.Bundle` <-> core [`Bundle`], with `BundleMask` handling.

use ward_core::{AuthorityError, Bundle, JwtAuthority, X509Authority};

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

/// Reads a bundle the server sent (GetBundle, ListFederatedBundles) as it is, taint flags
/// included; only the trust domain is checked.
///
/// # Errors
/// [`ConvertError::InvalidTrustDomain`].
pub fn bundle_from_proto(proto: &types::Bundle) -> Result<Bundle, ConvertError> {
    Ok(Bundle {
        trust_domain: trust_domain_from_proto(&proto.trust_domain)?,
        x509_authorities: proto.x509_authorities.iter().map(x509_authority_from_proto).collect(),
        jwt_authorities: proto.jwt_authorities.iter().map(jwt_authority_from_proto).collect(),
        refresh_hint: proto.refresh_hint,
        sequence_number: proto.sequence_number,
    })
}

/// Parses a bundle a caller supplies (federated bundle create, update and set; federation
/// relationship bundles) as SPIRE's `ProtoToBundle` does: the trust domain, then every X.509
/// authority (each must be a certificate), then every JWT authority (each must be a PKIX
/// public key with a key ID). Taint flags are dropped: only LocalAuthority taints.
///
/// # Errors
/// [`ConvertError::InvalidTrustDomain`], [`ConvertError::X509Authority`] or
/// [`ConvertError::JwtAuthority`].
pub fn bundle_from_caller(proto: &types::Bundle) -> Result<Bundle, ConvertError> {
    Ok(Bundle {
        trust_domain: trust_domain_from_proto(&proto.trust_domain)?,
        x509_authorities: proto
            .x509_authorities
            .iter()
            .map(x509_authority_from_caller)
            .collect::<Result<_, _>>()
            .map_err(ConvertError::X509Authority)?,
        jwt_authorities: proto
            .jwt_authorities
            .iter()
            .map(jwt_authority_from_caller)
            .collect::<Result<_, _>>()
            .map_err(ConvertError::JwtAuthority)?,
        refresh_hint: proto.refresh_hint,
        sequence_number: proto.sequence_number,
    })
}

/// Renders an X.509 authority.
pub fn x509_authority_to_proto(a: &X509Authority) -> types::X509Certificate {
    types::X509Certificate { asn1: a.der.clone(), tainted: a.tainted }
}

/// Reads an X.509 authority the server sent, taint flag included.
pub fn x509_authority_from_proto(c: &types::X509Certificate) -> X509Authority {
    X509Authority { der: c.asn1.clone(), tainted: c.tainted }
}

/// Parses an X.509 authority a caller supplies (AppendBundle, federated bundles): it must
/// be a certificate; its taint flag is dropped.
///
/// # Errors
/// [`AuthorityError::MalformedCertificate`].
pub fn x509_authority_from_caller(
    c: &types::X509Certificate,
) -> Result<X509Authority, AuthorityError> {
    X509Authority::from_caller(c.asn1.clone())
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

/// Reads a JWT authority the server sent, taint flag included.
pub fn jwt_authority_from_proto(k: &types::JwtKey) -> JwtAuthority {
    JwtAuthority {
        public_key_der: k.public_key.clone(),
        key_id: k.key_id.clone(),
        expires_at: k.expires_at,
        tainted: k.tainted,
    }
}

/// Parses a JWT authority a caller supplies (AppendBundle, PublishJWTAuthority, federated
/// bundles): a PKIX public key, then a key ID (agents reject a bundle holding a key without
/// one); its taint flag is dropped.
///
/// # Errors
/// As [`JwtAuthority::from_caller`].
pub fn jwt_authority_from_caller(k: &types::JwtKey) -> Result<JwtAuthority, AuthorityError> {
    JwtAuthority::from_caller(k.public_key.clone(), k.key_id.clone(), k.expires_at)
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
    fn caller_bundles_must_parse_in_spire_order() {
        // The X.509 authorities are checked before the JWT authorities.
        let wire = bundle_to_proto(&bundle(), None);
        let err = bundle_from_caller(&wire).unwrap_err();
        assert_eq!(err, ConvertError::X509Authority(AuthorityError::MalformedCertificate));
        assert_eq!(err.to_string(), "unable to parse X.509 authority: x509: malformed certificate");

        let mut wire = bundle_to_proto(&bundle(), None);
        wire.x509_authorities.clear();
        let err = bundle_from_caller(&wire).unwrap_err();
        assert!(matches!(err, ConvertError::JwtAuthority(AuthorityError::MalformedPublicKey(_))));
        assert!(err.to_string().starts_with("unable to parse JWT authority: x509: "), "{err}");

        let mut wire = bundle_to_proto(&bundle(), None);
        wire.trust_domain = "EXAMPLE".into();
        assert_eq!(
            bundle_from_caller(&wire).unwrap_err(),
            ConvertError::InvalidTrustDomain(SpiffeIdError::BadTrustDomainChar)
        );

        let empty = types::Bundle { trust_domain: "example.org".into(), ..Default::default() };
        assert_eq!(bundle_from_caller(&empty).unwrap(), Bundle::new(bundle().trust_domain));
    }
}
