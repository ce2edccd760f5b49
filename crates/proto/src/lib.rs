//! Wire types of ward's SPIRE-compatible server API, and their conversions to core types.
//!
//! This crate owns the Rust code generated from the workspace's `proto/` directory (at build
//! time, with a vendored `protoc`; no system installation is needed) and the one place where
//! wire messages turn into [`ward_core`] types and back ([`convert`]).
//!
//! The `.proto` files match SPIRE's `spire-api-sdk` as pinned by SPIRE v1.13 name for name and
//! number for number, so the generated clients and servers talk to unmodified SPIRE agents and
//! CLIs. Module paths mirror the proto packages:
//!
//! - [`spire::api::types`]: shared messages (`Entry`, `Agent`, `Bundle`, `X509SVID`, ...)
//! - [`spire::api::server::agent::v1`], [`spire::api::server::bundle::v1`],
//!   [`spire::api::server::entry::v1`], [`spire::api::server::svid::v1`],
//!   [`spire::api::server::trustdomain::v1`], [`spire::api::server::localauthority::v1`],
//!   [`spire::api::server::debug::v1`], [`spire::api::server::logger::v1`]: one service each,
//!   with a generated `*_server` module (trait + tonic service) and `*_client` module
//! - [`spiffe::workload`]: the SPIFFE Workload API the agent serves to workloads
//! - [`grpc::health::v1`]: the standard health service
//! - [`envoy`]: Envoy's SDS v3 service and the messages it carries (`DiscoveryRequest`,
//!   `Secret`, `SPIFFECertValidatorConfig`), served by the agent
//! - [`google::rpc`]: the rich error `Status` used to carry typed error details
//! - [`ward::cluster::v1`]: ward's own replica-to-replica `Peer` service and the `Cluster`
//!   administration service (not part of SPIRE's API)
//!
//! The messages the admin CLI prints also implement serde's `Serialize` (and `Deserialize`) in
//! protobuf's canonical JSON mapping, with proto field names (`pbjson`).
//!
//! It does no I/O and holds no policy: authorization, storage and signing live in the crates
//! that call it.

pub mod convert;
pub mod go;

/// `envoy.*` packages: the parts of Envoy's data-plane API that the agent's SDS serves.
pub mod envoy {
    /// `envoy.config.*`.
    pub mod config {
        /// `envoy.config.core.*`.
        pub mod core {
            /// `envoy.config.core.v3`: `Node`, `DataSource`, `TypedExtensionConfig`.
            #[allow(missing_docs, clippy::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    /// `envoy.extensions.*`.
    pub mod extensions {
        /// `envoy.extensions.transport_sockets.*`.
        pub mod transport_sockets {
            /// `envoy.extensions.transport_sockets.tls.*`.
            pub mod tls {
                /// `envoy.extensions.transport_sockets.tls.v3`: `Secret` and what it holds.
                #[allow(missing_docs, clippy::all)]
                pub mod v3 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/envoy.extensions.transport_sockets.tls.v3.rs"
                    ));
                }
            }
        }
    }
    /// `envoy.service.*`.
    pub mod service {
        /// `envoy.service.discovery.*`.
        pub mod discovery {
            /// `envoy.service.discovery.v3`: xDS requests and responses.
            #[allow(missing_docs, clippy::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
        /// `envoy.service.secret.*`.
        pub mod secret {
            /// `envoy.service.secret.v3`: the secret discovery service (SDS).
            #[allow(missing_docs, clippy::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.secret.v3.rs"));
            }
        }
    }
    /// `envoy.type.*`.
    pub mod r#type {
        /// `envoy.type.v3`.
        #[allow(missing_docs, clippy::all)]
        pub mod v3 {
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
}

/// `google.*` packages.
pub mod google {
    /// `google.rpc`: the rich status message carried in `grpc-status-details-bin`.
    #[allow(missing_docs, clippy::all)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// `grpc.*` packages.
pub mod grpc {
    /// `grpc.health.*` packages.
    pub mod health {
        /// `grpc.health.v1`: the standard gRPC health service.
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
        }
    }
}

/// The SPIFFE standards' definitions.
pub mod spiffe {
    /// The SPIFFE Workload API (`SpiffeWorkloadAPI`; the standard's definition has no proto
    /// package, so method paths are `/SpiffeWorkloadAPI/<Method>`), with the generated
    /// `spiffe_workload_api_server` and `spiffe_workload_api_client` modules.
    #[allow(missing_docs, clippy::all)]
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/_.rs"));
    }
}

/// `spire.*` packages.
pub mod spire {
    /// `spire.api.*` packages.
    pub mod api {
        /// `spire.api.types`: messages shared by the services.
        #[allow(missing_docs, clippy::all)]
        pub mod types {
            include!(concat!(env!("OUT_DIR"), "/spire.api.types.rs"));
            include!(concat!(env!("OUT_DIR"), "/spire.api.types.serde.rs"));
        }

        /// `spire.api.server.*`: the server's services.
        pub mod server {
            /// `spire.api.server.agent.*`.
            pub mod agent {
                /// Agent management and node attestation.
                #[allow(missing_docs, clippy::all)]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.agent.v1.rs"));
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.agent.v1.serde.rs"));
                }
            }
            /// `spire.api.server.bundle.*`.
            pub mod bundle {
                /// Own and federated bundles.
                #[allow(missing_docs, clippy::all)]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.bundle.v1.rs"));
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.bundle.v1.serde.rs"));
                }
            }
            /// `spire.api.server.debug.*`.
            pub mod debug {
                /// Server diagnostics.
                #[allow(missing_docs, clippy::all)]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.debug.v1.rs"));
                }
            }
            /// `spire.api.server.entry.*`.
            pub mod entry {
                /// Registration entries and the agent's entry sync.
                #[allow(missing_docs, clippy::all)]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.entry.v1.rs"));
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.entry.v1.serde.rs"));
                }
            }
            /// `spire.api.server.localauthority.*`.
            pub mod localauthority {
                /// Manual control of the server's own authorities.
                #[allow(missing_docs, clippy::all)]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.localauthority.v1.rs"));
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/spire.api.server.localauthority.v1.serde.rs"
                    ));
                }
            }
            /// `spire.api.server.logger.*`.
            pub mod logger {
                /// Run-time log level control.
                #[allow(missing_docs, clippy::all)]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.logger.v1.rs"));
                }
            }
            /// `spire.api.server.svid.*`.
            pub mod svid {
                /// SVID issuance.
                #[allow(missing_docs, clippy::all)]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.svid.v1.rs"));
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.svid.v1.serde.rs"));
                }
            }
            /// `spire.api.server.trustdomain.*`.
            pub mod trustdomain {
                /// Federation relationships.
                #[allow(missing_docs, clippy::all)]
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.trustdomain.v1.rs"));
                    include!(concat!(env!("OUT_DIR"), "/spire.api.server.trustdomain.v1.serde.rs"));
                }
            }
        }
    }
}

/// `ward.*` packages: ward's own services, beside SPIRE's.
pub mod ward {
    /// `ward.agent.*`.
    pub mod agent {
        /// `AgentWatch`: the stream on which a ward server tells its agents that what they
        /// receive changed.
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/ward.agent.v1.rs"));
        }
    }
    /// `ward.cluster.*`.
    pub mod cluster {
        /// The replica-to-replica `Peer` service (raft messages, snapshots, joining) and the
        /// `Cluster` administration service of the admin socket.
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/ward.cluster.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/ward.cluster.v1.serde.rs"));
        }
    }
}
