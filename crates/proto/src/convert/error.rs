//! The error of every fallible conversion.

use std::fmt;

use ward_core::{AuthorityError, SpiffeIdError};

/// Which SPIFFE ID of a message failed to parse; decides the error text's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdField {
    /// `Entry.spiffe_id`.
    SpiffeId,
    /// `Entry.parent_id`.
    ParentId,
    /// An agent ID (`Agent.id`, `GetAgentRequest.id`, ...).
    AgentId,
    /// Any other SPIFFE ID field.
    Id,
}

impl fmt::Display for IdField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SpiffeId => "spiffe ID",
            Self::ParentId => "parent ID",
            Self::AgentId => "agent ID",
            Self::Id => "SPIFFE ID",
        })
    }
}

/// Why a wire message does not convert into a core type. Texts follow SPIRE's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A required SPIFFE ID message is absent.
    #[error("invalid {0}: request must specify SPIFFE ID")]
    MissingId(IdField),
    /// A SPIFFE ID's trust domain or path is malformed.
    #[error("invalid {0}: {1}")]
    InvalidId(IdField, #[source] SpiffeIdError),
    /// A `federates_with` name is not a trust domain.
    #[error("invalid federated trust domain: {0}")]
    InvalidFederatedTrustDomain(#[source] SpiffeIdError),
    /// A bare trust domain name (bundle, request field) is malformed.
    #[error("invalid trust domain: {0}")]
    InvalidTrustDomain(#[source] SpiffeIdError),
    /// An entry has no selectors.
    #[error("selector list is empty")]
    NoSelectors,
    /// A selector has an empty type.
    #[error("missing selector type")]
    MissingSelectorType,
    /// A selector type contains `:`.
    #[error("selector type contains ':'")]
    SelectorTypeHasColon,
    /// A selector has an empty value.
    #[error("missing selector value")]
    MissingSelectorValue,
    /// A match behavior number outside the enum.
    #[error("unknown match behavior {0}")]
    UnknownMatchBehavior(i32),
    /// A caller's X.509 authority does not parse.
    #[error("unable to parse X.509 authority: {0}")]
    X509Authority(#[source] AuthorityError),
    /// A caller's JWT authority does not parse or has no key ID.
    #[error("unable to parse JWT authority: {0}")]
    JwtAuthority(#[source] AuthorityError),
    /// A federation relationship's trust domain is malformed.
    #[error("failed to parse trust domain: {0}")]
    FederationTrustDomain(#[source] SpiffeIdError),
    /// The bundle endpoint URL cannot be parsed.
    #[error("failed to parse bundle endpoint URL: {0}")]
    MalformedBundleEndpointUrl(String),
    /// The bundle endpoint URL is not `https`.
    #[error("bundle endpoint URL must use the https scheme")]
    BundleEndpointUrlNotHttps,
    /// The bundle endpoint URL has no host.
    #[error("bundle endpoint URL must specify the host")]
    BundleEndpointUrlNoHost,
    /// The bundle endpoint URL carries user info.
    #[error("bundle endpoint URL must not contain user info")]
    BundleEndpointUrlUserInfo,
    /// No bundle endpoint profile was given.
    #[error("unsupported bundle endpoint profile type: <nil>")]
    MissingBundleEndpointProfile,
    /// The `https_spiffe` profile's endpoint SPIFFE ID is malformed.
    #[error("failed to parse endpoint SPIFFE ID: {0}")]
    InvalidEndpointSpiffeId(#[source] SpiffeIdError),
    /// The relationship's starting bundle does not convert.
    #[error("failed to parse bundle: {0}")]
    FederationBundle(#[source] Box<ConvertError>),
    /// The relationship's starting bundle is for another trust domain.
    #[error(
        "trust domain bundle (\"{bundle}\") must match the trust domain of the federation \
         relationship (\"{relationship}\")"
    )]
    FederationBundleMismatch {
        /// The bundle's trust domain as sent.
        bundle: String,
        /// The relationship's trust domain.
        relationship: String,
    },
}
