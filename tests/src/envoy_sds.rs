//! An SDS v3 client nobody here wrote the types of: the Go program in
//! `tests/interop/envoy-sds/`, built on Envoy's go-control-plane types (pinned in its
//! `go.mod`), asks an SDS server on a Unix socket for secrets as Envoy does and prints what it
//! decoded as JSON.
//!
//! The client is built once per go-control-plane version into a cache outside the repository
//! by `tests/interop/envoy-sds/build.sh`; `$WARD_ENVOY_SDS_CLIENT_BIN` names a client built
//! elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::command::run;

/// Environment variable naming a built client.
pub const CLIENT_BIN_ENV: &str = "WARD_ENVOY_SDS_CLIENT_BIN";

/// Deadline for building the client when no cached build exists.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Deadline for one run of the client.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// One trust domain of a SPIFFE validator secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrustDomain {
    /// The bare trust domain name.
    pub name: String,
    /// Its CA certificates, PEM.
    pub bundle_pem: String,
}

/// One secret as the client decoded it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Secret {
    /// The resource name.
    pub name: String,
    /// `tls_certificate` or `validation_context`.
    pub kind: String,
    /// The certificate chain, PEM (TLS certificates).
    #[serde(default, rename = "certificate_chain_pem")]
    pub chain_pem: String,
    /// The private key, PEM (TLS certificates).
    #[serde(default)]
    pub private_key_pem: String,
    /// The CAs of a legacy validation context, PEM.
    #[serde(default)]
    pub trusted_ca_pem: String,
    /// The custom validator's name (SPIFFE validation contexts).
    #[serde(default)]
    pub validator_name: String,
    /// The SPIFFE validator's trust domains.
    #[serde(default)]
    pub trust_domains: Vec<TrustDomain>,
    /// What go-control-plane's generated validation (`ValidateAll`) said; empty when valid.
    #[serde(default)]
    pub validation_error: String,
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Response {
    /// `version_info`.
    pub version_info: String,
    /// `nonce`.
    pub nonce: String,
    /// `type_url`.
    pub type_url: String,
    /// The resources, decoded.
    pub secrets: Vec<Secret>,
}

impl Response {
    /// The secret named `name`.
    ///
    /// # Errors
    /// When the response has none.
    pub fn secret(&self, name: &str) -> anyhow::Result<&Secret> {
        self.secrets
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no secret {name:?} in {:?}", self.names()))
    }

    /// The secrets' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.secrets.iter().map(|s| s.name.as_str()).collect()
    }
}

/// What one run printed: the responses, and the status that ended the calls early.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Output {
    /// One per request answered.
    pub responses: Vec<Response>,
    /// The gRPC code name (`InvalidArgument`) of the error that ended the run, if any.
    #[serde(default)]
    pub error_code: String,
    /// Its message.
    #[serde(default)]
    pub error_message: String,
}

/// How the client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One StreamSecrets stream; each name set after the first ACKs the last response.
    Stream,
    /// One FetchSecrets call per name set.
    Fetch,
}

/// The client binary: `$WARD_ENVOY_SDS_CLIENT_BIN`, or what `build.sh` builds.
///
/// # Errors
/// When the build fails (no Go toolchain, no module proxy and no cached module).
pub fn client() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(CLIENT_BIN_ENV) {
        return Ok(PathBuf::from(bin));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/envoy-sds/build.sh");
    let out = run(&mut Command::new(&script), BUILD_TIMEOUT)?
        .success()
        .context("building the SDS client with tests/interop/envoy-sds/build.sh")?;
    let bin = out.stdout.trim();
    if bin.is_empty() {
        bail!("build.sh printed no path\n{}", out.describe());
    }
    Ok(PathBuf::from(bin))
}

/// Runs the client against the SDS server at `socket`, one request per entry of `name_sets`.
///
/// # Errors
/// When the client cannot run or fails (not when the server ends the calls with an error:
/// that is in [`Output::error_code`]).
pub fn fetch(
    client: &Path,
    socket: &Path,
    mode: Mode,
    name_sets: &[&[&str]],
) -> anyhow::Result<Output> {
    fetch_as(client, socket, mode, &[], name_sets)
}

/// Like [`fetch`], with `node_flags` describing the proxy's Node: `-envoy-version=1.17.0`
/// (its `user_agent_build_version`), `-disable-spiffe-cert-validation=true` (that Node
/// metadata key, as a string).
///
/// # Errors
/// As [`fetch`].
pub fn fetch_as(
    client: &Path,
    socket: &Path,
    mode: Mode,
    node_flags: &[&str],
    name_sets: &[&[&str]],
) -> anyhow::Result<Output> {
    let mut cmd = Command::new(client);
    cmd.arg("-socket").arg(socket).args(node_flags);
    if mode == Mode::Fetch {
        cmd.arg("-fetch");
    }
    for names in name_sets {
        cmd.arg(format!("-names={}", names.join(",")));
    }
    let out = run(&mut cmd, RUN_TIMEOUT)?.success()?;
    serde_json::from_str(&out.stdout)
        .with_context(|| format!("reading the client's output\n{}", out.describe()))
}
