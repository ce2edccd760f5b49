//! Conversions between wire messages and [`ward_core`] types, kept in one place.
//!
//! Direction names follow one rule: `*_from_proto` parses a wire message into a core type
//! and can fail with a [`ConvertError`] whose text matches what SPIRE says for the same
//! input; `*_to_proto` renders a core type and cannot fail. Output masks follow SPIRE: `None`
//! means every field, and ids (entry id, agent id, trust domain) are always present.
//!
//! Parsing here is structural (well-formed IDs, selectors, names). Policy that depends on the
//! server (membership in its trust domain, reserved paths, DNS name rules, hint length)
//! lives in [`ward_core::RegistrationEntry::validate`] and in the services.

mod agent;
mod bundle;
mod entry;
mod error;
mod federation;
mod join_token;
mod selector;
mod spiffe_id;
mod status;
mod svid;

pub use agent::{agent_from_proto, agent_to_proto, attest_agent_params};
pub use bundle::{
    bundle_from_caller, bundle_from_proto, bundle_to_proto, jwt_authority_from_caller,
    jwt_authority_from_proto, jwt_authority_to_proto, x509_authority_from_caller,
    x509_authority_from_proto, x509_authority_to_proto,
};
pub use entry::{
    RepeatedField, entry_from_proto, entry_mask_all, entry_patch_from_proto,
    entry_revision_to_proto, entry_to_proto, repeated_field,
};
pub use error::{ConvertError, IdField};
pub use federation::{federation_relationship_from_proto, federation_relationship_to_proto};
pub use join_token::{join_token_from_proto, join_token_to_proto};
pub use selector::{
    selector_from_proto, selector_match_from_proto, selector_match_to_proto, selector_to_proto,
    selectors_from_proto, selectors_to_proto,
};
pub use spiffe_id::{spiffe_id_from_proto, spiffe_id_to_proto, trust_domain_from_proto};
pub use status::{
    PERMISSION_DENIED_DETAILS_TYPE_URL, batch_status, batch_status_ok, permission_denied,
    permission_denied_reason,
};
pub use svid::{jwt_svid_to_proto, x509_svid_to_proto};
