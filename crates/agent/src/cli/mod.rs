//! The `ward-agent api` commands: a SPIFFE Workload API client on the command line that
//! behaves as spire-agent v1.13's `api` commands do (flags, human output, `-output json`,
//! files written by `-write`, error texts and exit codes), so scripts written for
//! `spire-agent api` work with `ward-agent api` unchanged.
//!
//! - [`api`]: the commands and their flags ([`api::ApiArgs`], [`api::run`]).
//! - [`client`]: where the endpoint is (`-socketPath`, else `SPIFFE_ENDPOINT_SOCKET`, else the
//!   default socket), the connection and the security header, errors as grpc-go words them.
//! - [`x509`]: X509-SVID responses parsed, checked, printed and written to files.
//! - [`watch`]: the `api watch` loop.
//! - [`proto_json`]: `-output json`.
//! - [`go_text`]: times, durations and paths as Go prints them.

pub mod api;
pub mod client;
pub mod go_text;
pub mod proto_json;
pub mod watch;
pub mod x509;
