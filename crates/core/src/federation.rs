//! Federation relationships with other trust domains.

use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// How a foreign trust domain's bundle endpoint is authenticated.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BundleEndpointProfile {
    /// Web PKI (`https_web`).
    HttpsWeb,
    /// SPIFFE authentication of the endpoint (`https_spiffe`).
    HttpsSpiffe {
        /// The SPIFFE ID the endpoint's server certificate must carry.
        endpoint_spiffe_id: SpiffeId,
    },
}

/// A relationship with a foreign trust domain whose bundle ward fetches.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FederationRelationship {
    /// The foreign trust domain.
    pub trust_domain: TrustDomain,
    /// URL of its bundle endpoint.
    pub bundle_endpoint_url: String,
    /// How the endpoint is authenticated.
    pub profile: BundleEndpointProfile,
    /// A bundle to start from, if the operator gave one.
    pub trust_domain_bundle: Option<Bundle>,
}
