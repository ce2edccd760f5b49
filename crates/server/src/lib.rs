//! The ward server.
//!
//! Owns the server binary's pieces: configuration ([`config`]), the SPIRE-compatible API
//! services ([`api`]) on the TCP listener (TLS with optional SPIFFE client authentication,
//! [`tls`]) and on the admin Unix socket, per-method authorization ([`authz`], applied by
//! [`layer`]) and per-IP rate limits ([`ratelimit`]), the write path (every write is a store
//! `Command` proposed through a [`proposer::Proposer`]), the CA manager ([`ca_manager`]),
//! SPIFFE federation (the bundle endpoint and the federated bundle manager, [`federation`]),
//! start-up and shutdown ([`run`]) and the admin CLI ([`cli`]). For operators moving over from
//! SPIRE it also reads SPIRE's own server configuration ([`spire_config`]) and copies
//! registration entries, federation relationships and federated bundles out of a running SPIRE
//! server ([`migrate`]).
//!
//! It does not own the storage layout or queries (`ward-store`), certificate building and
//! signing (`ward-ca`) or the wire types and their conversions (`ward-proto`).
//!
//! Served on both listeners (TCP for agents, the admin socket for operators):
//!
//! - `Agent`: AttestAgent (join tokens), RenewAgent, CreateJoinToken, List/Count/Get/Ban/
//!   DeleteAgent;
//! - `Entry`: Count/List/GetEntry, BatchCreate/Update/DeleteEntry, GetAuthorizedEntries,
//!   SyncAuthorizedEntries (SPIRE's 500-entry paging);
//! - `SVID`: BatchNewX509SVID, NewJWTSVID, MintX509SVID, MintJWTSVID;
//! - `Bundle`: Get/Count/AppendBundle, List/GetFederatedBundle, BatchCreate/Update/Set/
//!   DeleteFederatedBundle;
//! - `TrustDomain`: List/GetFederationRelationship, BatchCreate/Update/Delete, and
//!   RefreshBundle (fetches the federated bundle now, [`federation`]);
//! - `LocalAuthority`: state, prepare, activate, taint and revoke of this server's X.509 and
//!   JWT authorities; the upstream variants answer as SPIRE does without an upstream;
//! - on the admin socket only: `grpc.health.v1.Health/Check`, `Logger` (the live log level,
//!   [`logging`]) and `Debug/GetInfo`.
//!
//! Other methods of these services answer `Unimplemented` (PostStatus is refused by policy
//! first, as in SPIRE); services that are not served answer `Unimplemented`.
//!
//! Flow of a call: the TLS acceptor verifies an optional client SVID against the current
//! bundle; the [`layer::AuthLayer`] classifies the caller (local, unauthenticated, agent,
//! admin), asks [`authz::decide`] and records a [`state::Caller`] in the request; the handler
//! converts the request, reads the store or proposes a command, and converts the result back.
//!
//! A replica of a cluster also serves its peers ([`peer`]): the `ward.cluster.v1.Peer`
//! service on a listener of its own, with mutual TLS between replica certificates.
//!
//! Observability: [`telemetry`] (Prometheus metrics under SPIRE's names; its
//! [`telemetry::MetricsLayer`] wraps the authorization layer), [`audit`] (SPIRE's audit log,
//! inside the authorization layer), [`health_checks`] (SPIRE's `/live` and `/ready`
//! listener), both HTTP endpoints served by [`http_listener`].

pub mod api;
pub mod audit;
pub mod authz;
pub mod ca_manager;
pub mod cli;
pub mod config;
pub mod current_read;
pub mod data_dir;
pub mod dev;
pub mod federation;
pub mod health_checks;
pub mod http_listener;
pub mod layer;
pub mod logging;
pub mod migrate;
pub mod peer;
pub mod proposer;
pub mod ratelimit;
pub mod run;
pub mod spire_config;
pub mod state;
pub mod telemetry;
pub mod tls;
