//! `spire.api.types.SPIFFEID` <-> [`SpiffeId`].

use ward_core::{SpiffeId, TrustDomain};

use super::error::{ConvertError, IdField};
use crate::spire::api::types;

/// Parses a wire SPIFFE ID (bare trust domain name plus path) into a [`SpiffeId`].
///
/// `field` names the message field in the error text.
///
/// # Errors
/// [`ConvertError::MissingId`] when `id` is `None`, [`ConvertError::InvalidId`] when the
/// trust domain name or the path is malformed.
pub fn spiffe_id_from_proto(
    id: Option<&types::Spiffeid>,
    field: IdField,
) -> Result<SpiffeId, ConvertError> {
    let id = id.ok_or(ConvertError::MissingId(field))?;
    let td = TrustDomain::new(&id.trust_domain).map_err(|e| ConvertError::InvalidId(field, e))?;
    SpiffeId::from_parts(&td, &id.path).map_err(|e| ConvertError::InvalidId(field, e))
}

/// Splits a [`SpiffeId`] into the wire form.
pub fn spiffe_id_to_proto(id: &SpiffeId) -> types::Spiffeid {
    types::Spiffeid { trust_domain: id.trust_domain_name().to_owned(), path: id.path().to_owned() }
}

/// Parses a trust domain given on the wire as a bare name (or, as SPIRE also accepts, as
/// `spiffe://name`).
///
/// # Errors
/// [`ConvertError::InvalidTrustDomain`] when it is malformed.
pub fn trust_domain_from_proto(name: &str) -> Result<TrustDomain, ConvertError> {
    TrustDomain::parse(name).map_err(ConvertError::InvalidTrustDomain)
}

#[cfg(test)]
mod tests {
    use ward_core::SpiffeIdError;

    use super::*;

    fn wire(td: &str, path: &str) -> types::Spiffeid {
        types::Spiffeid { trust_domain: td.into(), path: path.into() }
    }

    #[test]
    fn round_trips_through_the_wire_form() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
        let proto = spiffe_id_to_proto(&id);
        assert_eq!(proto, wire("example.org", "/ns/prod/sa/web"));
        assert_eq!(spiffe_id_from_proto(Some(&proto), IdField::Id).unwrap(), id);
    }

    #[test]
    fn trust_domain_id_has_empty_path() {
        let id = spiffe_id_from_proto(Some(&wire("example.org", "")), IdField::Id).unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org");
    }

    #[test]
    fn rejects_missing_and_malformed_ids_with_spire_texts() {
        let err = spiffe_id_from_proto(None, IdField::SpiffeId).unwrap_err();
        assert_eq!(err, ConvertError::MissingId(IdField::SpiffeId));
        assert_eq!(err.to_string(), "invalid spiffe ID: request must specify SPIFFE ID");

        let err =
            spiffe_id_from_proto(Some(&wire("Example.org", "/x")), IdField::ParentId).unwrap_err();
        assert_eq!(
            err,
            ConvertError::InvalidId(IdField::ParentId, SpiffeIdError::BadTrustDomainChar)
        );
        assert_eq!(
            err.to_string(),
            "invalid parent ID: trust domain characters are limited to lowercase letters, \
             numbers, dots, dashes, and underscores"
        );

        let err =
            spiffe_id_from_proto(Some(&wire("example.org", "x")), IdField::AgentId).unwrap_err();
        assert_eq!(err, ConvertError::InvalidId(IdField::AgentId, SpiffeIdError::NoLeadingSlash));

        let err = spiffe_id_from_proto(Some(&wire("", "/x")), IdField::Id).unwrap_err();
        assert_eq!(err, ConvertError::InvalidId(IdField::Id, SpiffeIdError::MissingTrustDomain));
    }

    #[test]
    fn trust_domain_accepts_bare_name_or_id() {
        assert_eq!(trust_domain_from_proto("example.org").unwrap().as_str(), "example.org");
        assert_eq!(
            trust_domain_from_proto("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            trust_domain_from_proto("").unwrap_err(),
            ConvertError::InvalidTrustDomain(SpiffeIdError::MissingTrustDomain)
        );
    }
}
