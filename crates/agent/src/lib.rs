//! ward's node agent.
//!
//! The agent attests its node to a server (ward-server or spire-server v1.13), keeps an
//! X509-SVID for every registration entry authorized for the node, rotates them, and serves
//! them to workloads over the SPIFFE Workload API and Envoy SDS on a Unix socket. It attests
//! each calling workload with the attestors of `ward-attest`.
//!
//! Main pieces:
//! - [`cache`]: what the agent holds for workloads ([`cache::CacheView`]: the trust domain's
//!   bundle, federated bundles, and the X509-SVIDs of the entries it is authorized for),
//!   published through a watch channel that the Workload API and SDS streams follow;
//!   [`cache::JwtSvidSource`] mints JWT-SVIDs on demand.
//! - [`workload`]: the SPIFFE Workload API on a Unix socket ([`workload::serve`]), which
//!   attests each caller and serves it from the cache.
//! - [`sync`]: the agent's copy of its authorized entries (SyncAuthorizedEntries revision
//!   deltas) and of its own and federated bundles; [`manager::Manager`] keeps them current and
//!   one X509-SVID per entry (minted in batches, rotated at half-life, bounded like SPIRE's
//!   `x509_svid_cache_max_size`), publishing into the cache; [`jwt::JwtSvids`] mints and caches
//!   JWT-SVIDs.
//! - [`sds`]: Envoy's secret discovery service (SDS v3) over the cache, with SPIRE's resource
//!   names and validation contexts, served on the Workload API socket.
//! - [`agent`]: the agent's life ([`agent::Agent`]): load the agent SVID from the
//!   [`data_dir`] or attest ([`attestation`], with a bootstrap bundle from [`bootstrap`]),
//!   renew it at half-life ([`renewal`]), follow bundle changes, serve the [`admin`] socket,
//!   and run the [`agent::Component`]s that plug in (entry sync and the SVID manager, the
//!   Workload API, SDS) with an [`agent::AgentHandle`].
//! - [`server_client`]: the TLS connection to the server, checked as spire-agent checks it.
//! - [`config`]: the settings and their defaults.
//! - [`components`]: the parts `ward-agent run` starts from the settings (the SVID manager,
//!   the Workload API socket with the configured workload attestors).
//! - [`cli`]: `ward-agent api …`, a Workload API client with spire-agent's `api` commands.
//!
//! Flow of `ward-agent run`: [`config::Settings`] → [`agent::Agent::start`] (load or attest)
//! → [`agent::Agent::run`] with the components until a signal or a fatal error.
//!
//! The agent never depends on the store, the cluster or sled: it is a client of the server's
//! API only.

pub mod admin;
pub mod agent;
pub mod attestation;
pub mod bootstrap;
pub mod cache;
pub mod cli;
pub mod components;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod health_checks;
pub mod jwt;
pub mod manager;
pub mod push;
pub mod renewal;
pub mod sds;
pub mod server_client;
pub mod spire_config;
pub mod svid;
pub mod sync;
pub mod workload;
