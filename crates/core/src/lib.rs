//! Core SPIFFE types for ward.
//!
//! This crate owns the vocabulary every other ward crate speaks: [`TrustDomain`] and
//! [`SpiffeId`] with the SPIFFE-ID standard's rules, [`Selector`]s and SPIRE's four
//! [`SelectorMatch`] modes, the registration entry and attested-node models, SPIFFE bundles,
//! and X509-SVID and JWT-SVID validation.
//!
//! It deliberately does no I/O: no sockets, no files, no clock reads. Time is an argument,
//! or comes through the [`Clock`] trait whose implementations live with the binaries and the
//! test kit. Signature checks use aws-lc-rs, which is pure computation.

pub mod bundle;
pub mod clock;
pub mod entry;
pub mod federation;
pub mod join_token;
pub mod jwk;
pub mod jwtsvid;
pub mod node;
pub mod selector;
pub mod spiffe_id;
pub mod x509svid;

#[cfg(test)]
mod testutil;

pub use bundle::{
    Bundle, BundleDecodeError, BundleEncodeError, JwtAuthority, PemError, X509Authority,
};
pub use clock::Clock;
pub use entry::{EntryId, RegistrationEntry};
pub use federation::{BundleEndpointProfile, FederationRelationship};
pub use join_token::JoinToken;
pub use jwk::{EcCurve, JwkError, JwkPublicKey};
pub use jwtsvid::{JwsAlgorithm, JwtSvid, JwtSvidError, UnverifiedJwtSvid};
pub use node::{AgentId, AttestedNode};
pub use selector::{Selector, SelectorError, SelectorMatch, SelectorSet};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use x509svid::X509SvidError;
