//! Generates the Rust code for every file under the workspace's `proto/` directory.
//!
//! protoc comes from `protoc-bin-vendored`, so no system installation is needed; the
//! well-known types (`google/protobuf/*.proto`) come from its include directory.

use std::io;
use std::path::PathBuf;

/// Files compiled, relative to `proto/`. Each one's imports are found through the include path.
const PROTOS: &[&str] = &[
    "envoy/config/core/v3/base.proto",
    "envoy/config/core/v3/extension.proto",
    "envoy/extensions/transport_sockets/tls/v3/common.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/service/secret/v3/sds.proto",
    "envoy/type/v3/semantic_version.proto",
    "google/rpc/status.proto",
    "grpc/health/v1/health.proto",
    "spire/api/types/agent.proto",
    "spire/api/types/attestation.proto",
    "spire/api/types/bundle.proto",
    "spire/api/types/entry.proto",
    "spire/api/types/federateswith.proto",
    "spire/api/types/federationrelationship.proto",
    "spire/api/types/jointoken.proto",
    "spire/api/types/jwtsvid.proto",
    "spire/api/types/logger.proto",
    "spire/api/types/selector.proto",
    "spire/api/types/spiffeid.proto",
    "spire/api/types/status.proto",
    "spire/api/types/x509svid.proto",
    "spire/api/server/agent/v1/agent.proto",
    "spire/api/server/bundle/v1/bundle.proto",
    "spire/api/server/debug/v1/debug.proto",
    "spire/api/server/entry/v1/entry.proto",
    "spire/api/server/localauthority/v1/localauthority.proto",
    "spire/api/server/logger/v1/logger.proto",
    "spire/api/server/svid/v1/svid.proto",
    "spire/api/server/trustdomain/v1/trustdomain.proto",
    "ward/agent/v1/watch.proto",
    "ward/cluster/v1/admin.proto",
    "ward/cluster/v1/peer.proto",
];

fn main() -> io::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let proto_root = manifest_dir.join("../../proto");
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let wkt_include = protoc_bin_vendored::include_path().map_err(io::Error::other)?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let includes = [proto_root.clone(), wkt_include.clone()];

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let descriptor_path = out_dir.join("descriptors.bin");
    config.file_descriptor_set_path(&descriptor_path);

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &files, &includes)?;

    compile_packageless(&proto_root, &wkt_include)?;

    // JSON (serde) for the messages the admin CLI prints with `-output json`, named and shaped
    // as protobuf's canonical JSON mapping with proto field names and every field emitted.
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .emit_fields()
        .build(JSON_MESSAGES)
}

/// Files without a `package` statement, relative to `proto/`: the SPIFFE Workload API's
/// definition declares none. They are compiled apart from [`PROTOS`] because pbjson-build
/// cannot read a descriptor set holding a file without a package; prost writes their code
/// to `_.rs`.
const PACKAGELESS_PROTOS: &[&str] = &["spiffe/workload/workload.proto"];

fn compile_packageless(
    proto_root: &std::path::Path,
    wkt_include: &std::path::Path,
) -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    let files: Vec<PathBuf> = PACKAGELESS_PROTOS.iter().map(|p| proto_root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    tonic_prost_build::configure().build_client(true).build_server(true).compile_with_config(
        config,
        &files,
        &[proto_root.to_path_buf(), wkt_include.to_path_buf()],
    )
}

/// Message paths (and the messages nested in them) that get serde `Serialize`/`Deserialize`.
/// Requests carrying `google.protobuf` wrappers are left out: prost's well-known types have no
/// serde support, and the CLI only prints responses.
const JSON_MESSAGES: &[&str] = &[
    ".spire.api.types",
    ".spire.api.server.agent.v1.CountAgentsResponse",
    ".spire.api.server.agent.v1.ListAgentsResponse",
    ".spire.api.server.bundle.v1.CountBundlesResponse",
    ".spire.api.server.bundle.v1.ListFederatedBundlesResponse",
    ".spire.api.server.bundle.v1.BatchSetFederatedBundleResponse",
    ".spire.api.server.bundle.v1.BatchDeleteFederatedBundleResponse",
    ".spire.api.server.entry.v1.CountEntriesResponse",
    ".spire.api.server.entry.v1.ListEntriesResponse",
    ".spire.api.server.entry.v1.BatchCreateEntryResponse",
    ".spire.api.server.entry.v1.BatchUpdateEntryResponse",
    ".spire.api.server.entry.v1.BatchDeleteEntryResponse",
    ".spire.api.server.svid.v1.MintJWTSVIDResponse",
    ".spire.api.server.trustdomain.v1.ListFederationRelationshipsResponse",
    ".spire.api.server.trustdomain.v1.BatchCreateFederationRelationshipResponse",
    ".spire.api.server.trustdomain.v1.BatchUpdateFederationRelationshipResponse",
    ".spire.api.server.trustdomain.v1.BatchDeleteFederationRelationshipResponse",
    ".spire.api.server.localauthority.v1",
    ".ward.cluster.v1.StatusResponse",
    ".ward.cluster.v1.MemberStatus",
    ".ward.cluster.v1.SnapshotStatus",
    ".ward.cluster.v1.SlowSteps",
    ".ward.cluster.v1.AddMemberResponse",
    ".ward.cluster.v1.RemoveMemberResponse",
    ".ward.cluster.v1.TransferLeaderResponse",
];
