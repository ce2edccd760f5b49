//! Core SPIFFE types for ward.
//!
//! This crate owns the vocabulary every other ward crate speaks:
//! - [`TrustDomain`] and [`SpiffeId`] with the SPIFFE-ID standard's rules ([`spiffe_id`]);
//! - DNS names for X509-SVIDs checked by SPIRE's rules ([`dns_name`]);
//! - [`Selector`]s, [`SelectorSet`]s and SPIRE's four [`SelectorMatch`] modes ([`selector`]);
//! - the registration entry, attested-node, join-token and federation models;
//! - SPIFFE [`Bundle`]s and their codecs ([`bundle`]): the SPIFFE bundle JSON document
//!   ([`Bundle::from_spiffe_json`], [`Bundle::to_spiffe_json`]), the plain JWKS of JWT
//!   authorities ([`Bundle::to_jwks_json`], [`bundle::json::jwt_authorities_from_jwks`]) and
//!   PEM ([`Bundle::from_pem`], [`Bundle::x509_authorities_to_pem`]);
//! - public keys as JWKs and as PKIX DER, and the conversion between them ([`jwk`]), written
//!   with the workspace's one DER writer ([`der`]);
//! - join tokens and the SHA-256 form the store keeps ([`JoinTokenHash`]);
//! - the IDs of a cluster's server replicas ([`replica_id`]);
//! - X509-SVID chain verification ([`x509svid::verify`]: SPIFFE's leaf rules, with path
//!   building and RFC 5280 path validation by `rustls-webpki`) and JWT-SVID validation
//!   ([`jwtsvid::validate`], or [`UnverifiedJwtSvid`] to pick the bundle by subject first).
//!
//! It deliberately does no I/O: no sockets, no files, no clock reads. Time is an argument,
//! or comes through the [`Clock`] trait whose implementations live with the binaries and the
//! test kit. It signs nothing and generates no keys (that is `ward-ca`'s job); signature
//! checks use aws-lc-rs, which is pure computation.
//!
//! Every parser returns a typed error naming the rule the input broke, and never panics on
//! any input: each has a table test of exact errors, property tests, and a cargo-fuzz target
//! in the repository's `fuzz/` directory.
//!
//! A typical flow on a server: decode a federated trust domain's bundle with
//! [`Bundle::from_spiffe_json`], keep it, and later check a peer's chain with
//! [`x509svid::verify_with_bundle`] or a presented token with [`jwtsvid::validate`], passing
//! `now` from the [`Clock`].

pub mod bundle;
pub mod clock;
pub mod der;
pub mod dns_name;
pub mod entry;
pub mod entry_patch;
pub mod federation;
pub mod go_json;
pub mod id_policy;
pub mod join_token;
pub mod jwk;
pub mod jwtsvid;
pub mod node;
pub mod replica_id;
pub mod selector;
pub mod spiffe_id;
pub mod x509svid;

#[cfg(test)]
mod testutil;

pub use bundle::{
    AuthorityError, Bundle, BundleDecodeError, BundleEncodeError, JwtAuthority, PemError,
    X509Authority,
};
pub use clock::Clock;
pub use entry::{EntryId, RegistrationEntry};
pub use entry_patch::EntryPatch;
pub use federation::{BundleEndpointProfile, FederationRelationship};
pub use id_policy::IdPolicyError;
pub use join_token::{JoinToken, JoinTokenHash, StoredJoinToken};
pub use jwk::{EcCurve, JwkError, JwkPublicKey};
pub use jwtsvid::{JwsAlgorithm, JwtSvid, JwtSvidError, UnverifiedJwtSvid};
pub use node::{AgentId, AttestedNode};
pub use selector::{Selector, SelectorError, SelectorMatch, SelectorSet};
pub use spiffe_id::{IdRoleError, SpiffeId, SpiffeIdError, TrustDomain};
pub use x509svid::X509SvidError;
