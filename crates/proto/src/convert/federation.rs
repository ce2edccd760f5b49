//! `spire.api.types.FederationRelationship` <-> core [`FederationRelationship`].

use ward_core::{BundleEndpointProfile, FederationRelationship, SpiffeId, TrustDomain};

use super::bundle::{bundle_from_caller, bundle_to_proto};
use super::error::ConvertError;
use crate::spire::api::types;
use crate::spire::api::types::federation_relationship::BundleEndpointProfile as WireProfile;

fn mask_all() -> types::FederationRelationshipMask {
    types::FederationRelationshipMask {
        bundle_endpoint_url: true,
        bundle_endpoint_profile: true,
        trust_domain_bundle: true,
    }
}

/// Renders a relationship, keeping only the fields `mask` selects (all when `None`); the
/// trust domain is always present.
pub fn federation_relationship_to_proto(
    rel: &FederationRelationship,
    mask: Option<&types::FederationRelationshipMask>,
) -> types::FederationRelationship {
    let all = mask_all();
    let m = mask.unwrap_or(&all);
    types::FederationRelationship {
        trust_domain: rel.trust_domain.as_str().to_owned(),
        bundle_endpoint_url: if m.bundle_endpoint_url {
            rel.bundle_endpoint_url.clone()
        } else {
            String::new()
        },
        bundle_endpoint_profile: m.bundle_endpoint_profile.then(|| profile_to_proto(&rel.profile)),
        trust_domain_bundle: if m.trust_domain_bundle {
            rel.trust_domain_bundle.as_ref().map(|b| bundle_to_proto(b, None))
        } else {
            None
        },
    }
}

/// Parses a relationship as sent to BatchCreateFederationRelationship (every field read).
///
/// # Errors
/// The first [`ConvertError`], in SPIRE's order: trust domain, endpoint URL (https, host, no
/// user info), profile, starting bundle (which must be for the same trust domain).
pub fn federation_relationship_from_proto(
    proto: &types::FederationRelationship,
) -> Result<FederationRelationship, ConvertError> {
    let trust_domain =
        TrustDomain::parse(&proto.trust_domain).map_err(ConvertError::FederationTrustDomain)?;
    check_bundle_endpoint_url(&proto.bundle_endpoint_url)?;
    let profile = profile_from_proto(proto.bundle_endpoint_profile.as_ref())?;
    let trust_domain_bundle = starting_bundle(proto, &trust_domain)?;
    Ok(FederationRelationship {
        trust_domain,
        bundle_endpoint_url: proto.bundle_endpoint_url.clone(),
        profile,
        trust_domain_bundle,
    })
}

fn profile_to_proto(p: &BundleEndpointProfile) -> WireProfile {
    match p {
        BundleEndpointProfile::HttpsWeb => WireProfile::HttpsWeb(types::HttpsWebProfile {}),
        BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            WireProfile::HttpsSpiffe(types::HttpsspiffeProfile {
                endpoint_spiffe_id: endpoint_spiffe_id.as_str().to_owned(),
            })
        }
    }
}

fn profile_from_proto(p: Option<&WireProfile>) -> Result<BundleEndpointProfile, ConvertError> {
    match p {
        None => Err(ConvertError::MissingBundleEndpointProfile),
        Some(WireProfile::HttpsWeb(_)) => Ok(BundleEndpointProfile::HttpsWeb),
        Some(WireProfile::HttpsSpiffe(s)) => Ok(BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse(&s.endpoint_spiffe_id)
                .map_err(ConvertError::InvalidEndpointSpiffeId)?,
        }),
    }
}

fn starting_bundle(
    proto: &types::FederationRelationship,
    trust_domain: &TrustDomain,
) -> Result<Option<ward_core::Bundle>, ConvertError> {
    let Some(wire) = &proto.trust_domain_bundle else {
        return Ok(None);
    };
    let bundle =
        bundle_from_caller(wire).map_err(|e| ConvertError::FederationBundle(Box::new(e)))?;
    if &bundle.trust_domain != trust_domain {
        return Err(ConvertError::FederationBundleMismatch {
            bundle: wire.trust_domain.clone(),
            relationship: trust_domain.as_str().to_owned(),
        });
    }
    Ok(Some(bundle))
}

/// The URL checks SPIRE applies, in its order: the URL parses, its scheme is `https`, it
/// names a host, and it carries no user info.
///
/// SPIRE reads the URL with Go's RFC 3986 parser; the `url` crate follows the WHATWG URL
/// standard, which repairs some input Go refuses and refuses some input Go reads as a
/// relative reference. So the `url` crate decides whether the URL is well formed, and the
/// host and user info are judged on the authority as written, as Go sees them.
fn check_bundle_endpoint_url(raw: &str) -> Result<(), ConvertError> {
    let malformed = |why: &dyn std::fmt::Display| {
        ConvertError::MalformedBundleEndpointUrl(format!("parse {raw:?}: {why}"))
    };
    // The WHATWG parser silently drops tabs and newlines; Go refuses every control byte.
    if raw.bytes().any(|b| b.is_ascii_control()) {
        return Err(malformed(&"net/url: invalid control character in URL"));
    }
    if raw.starts_with(':') {
        return Err(malformed(&"missing protocol scheme"));
    }
    match url::Url::parse(raw) {
        // Go reads these as a relative reference or an empty host: refused below.
        Ok(_) | Err(url::ParseError::RelativeUrlWithoutBase | url::ParseError::EmptyHost) => {}
        Err(e) => return Err(malformed(&e)),
    }
    let Some((scheme, rest)) = raw.split_once(':') else {
        return Err(ConvertError::BundleEndpointUrlNotHttps);
    };
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(ConvertError::BundleEndpointUrlNotHttps);
    }
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(ConvertError::BundleEndpointUrlNoHost);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() {
        return Err(ConvertError::BundleEndpointUrlNoHost);
    }
    if userinfo.is_some() {
        return Err(ConvertError::BundleEndpointUrlUserInfo);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ward_core::{Bundle, SpiffeIdError};

    use super::*;

    fn rel() -> FederationRelationship {
        FederationRelationship {
            trust_domain: TrustDomain::new("other.org").unwrap(),
            bundle_endpoint_url: "https://other.org:8443/bundle".into(),
            profile: BundleEndpointProfile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::parse("spiffe://other.org/spire/server").unwrap(),
            },
            trust_domain_bundle: Some(Bundle::new(TrustDomain::new("other.org").unwrap())),
        }
    }

    #[test]
    fn round_trips_both_profiles() {
        let wire = federation_relationship_to_proto(&rel(), None);
        assert_eq!(
            wire.bundle_endpoint_profile,
            Some(WireProfile::HttpsSpiffe(types::HttpsspiffeProfile {
                endpoint_spiffe_id: "spiffe://other.org/spire/server".into()
            }))
        );
        assert_eq!(federation_relationship_from_proto(&wire).unwrap(), rel());

        let mut web = rel();
        web.profile = BundleEndpointProfile::HttpsWeb;
        web.trust_domain_bundle = None;
        let wire = federation_relationship_to_proto(&web, None);
        assert_eq!(
            wire.bundle_endpoint_profile,
            Some(WireProfile::HttpsWeb(types::HttpsWebProfile {}))
        );
        assert_eq!(federation_relationship_from_proto(&wire).unwrap(), web);
    }

    #[test]
    fn mask_keeps_trust_domain() {
        let mask = types::FederationRelationshipMask::default();
        assert_eq!(
            federation_relationship_to_proto(&rel(), Some(&mask)),
            types::FederationRelationship {
                trust_domain: "other.org".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn rejects_bad_urls_with_spire_texts() {
        let cases = [
            (
                "http://other.org",
                ConvertError::BundleEndpointUrlNotHttps,
                "bundle endpoint URL must use the https scheme",
            ),
            (
                "https:///path",
                ConvertError::BundleEndpointUrlNoHost,
                "bundle endpoint URL must specify the host",
            ),
            (
                "https://u:p@other.org/",
                ConvertError::BundleEndpointUrlUserInfo,
                "bundle endpoint URL must not contain user info",
            ),
            (
                "",
                ConvertError::BundleEndpointUrlNotHttps,
                "bundle endpoint URL must use the https scheme",
            ),
            (
                "not a url",
                ConvertError::BundleEndpointUrlNotHttps,
                "bundle endpoint URL must use the https scheme",
            ),
            (
                "https://",
                ConvertError::BundleEndpointUrlNoHost,
                "bundle endpoint URL must specify the host",
            ),
            (
                "https:other.org",
                ConvertError::BundleEndpointUrlNoHost,
                "bundle endpoint URL must specify the host",
            ),
            (
                "https://@other.org",
                ConvertError::BundleEndpointUrlUserInfo,
                "bundle endpoint URL must not contain user info",
            ),
            (
                "https://a b.org/",
                ConvertError::MalformedBundleEndpointUrl(
                    "parse \"https://a b.org/\": invalid international domain name".into(),
                ),
                "failed to parse bundle endpoint URL: parse \"https://a b.org/\": invalid international domain name",
            ),
            (
                "https://other.org/\tx",
                ConvertError::MalformedBundleEndpointUrl(
                    "parse \"https://other.org/\\tx\": net/url: invalid control character in URL"
                        .into(),
                ),
                "failed to parse bundle endpoint URL: parse \"https://other.org/\\tx\": net/url: invalid control character in URL",
            ),
        ];
        for (url, want, text) in cases {
            let mut wire = federation_relationship_to_proto(&rel(), None);
            wire.bundle_endpoint_url = url.into();
            let err = federation_relationship_from_proto(&wire).unwrap_err();
            assert_eq!(err, want, "{url}");
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn accepts_urls_go_reads_as_https_with_a_host() {
        for url in ["https://other.org", "HTTPS://other.org:8443/bundle?x=1#f", "https://10.0.0.1/"]
        {
            let mut wire = federation_relationship_to_proto(&rel(), None);
            wire.bundle_endpoint_url = url.into();
            assert!(federation_relationship_from_proto(&wire).is_ok(), "{url}");
        }
    }

    #[test]
    fn rejects_bad_profile_trust_domain_and_bundle() {
        let mut wire = federation_relationship_to_proto(&rel(), None);
        wire.bundle_endpoint_profile = None;
        assert_eq!(
            federation_relationship_from_proto(&wire).unwrap_err(),
            ConvertError::MissingBundleEndpointProfile
        );

        let mut wire = federation_relationship_to_proto(&rel(), None);
        wire.bundle_endpoint_profile = Some(WireProfile::HttpsSpiffe(types::HttpsspiffeProfile {
            endpoint_spiffe_id: "x".into(),
        }));
        assert_eq!(
            federation_relationship_from_proto(&wire).unwrap_err(),
            ConvertError::InvalidEndpointSpiffeId(SpiffeIdError::WrongScheme)
        );

        let mut wire = federation_relationship_to_proto(&rel(), None);
        wire.trust_domain = "".into();
        assert_eq!(
            federation_relationship_from_proto(&wire).unwrap_err(),
            ConvertError::FederationTrustDomain(SpiffeIdError::MissingTrustDomain)
        );

        let mut wire = federation_relationship_to_proto(&rel(), None);
        wire.trust_domain_bundle =
            Some(types::Bundle { trust_domain: "third.org".into(), ..Default::default() });
        let err = federation_relationship_from_proto(&wire).unwrap_err();
        assert_eq!(
            err,
            ConvertError::FederationBundleMismatch {
                bundle: "third.org".into(),
                relationship: "other.org".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "trust domain bundle (\"third.org\") must match the trust domain of the federation \
             relationship (\"other.org\")"
        );
    }
}
