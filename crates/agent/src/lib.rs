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
//!
//! The agent never depends on the store, the cluster or sled: it is a client of the server's
//! API only.

pub mod cache;
pub mod error;
pub mod jwt;
pub mod manager;
pub mod sds;
pub mod svid;
pub mod sync;
pub mod workload;
