//! Workload attestation for ward's agent: which selectors describe the process calling the
//! Workload API.
//!
//! The agent learns the caller's pid, uid and gid from the kernel (`SO_PEERCRED` on the
//! Workload API socket), and asks each configured [`WorkloadAttestor`] for the selectors of
//! that pid. Selectors are named and formed exactly as SPIRE v1.13.3's plugins of the same
//! name form them, so registration entries written for SPIRE select the same workloads.
//!
//! Main types:
//! - [`WorkloadAttestor`], the trait, and [`UnixAttestor`] ([`unix`]), the `unix` plugin with
//!   SPIRE's [`UnixConfig`] keys and defaults, and [`SystemdAttestor`] ([`systemd`]), the
//!   `systemd` plugin (the unit of the process, over D-Bus), and [`K8sAttestor`] ([`k8s`]),
//!   the `k8s` plugin (the pod and container of the process, from its cgroups and the
//!   kubelet) with SPIRE's [`K8sConfig`] keys;
//! - [`CallerWatch`] and [`attest_caller`], which refuse selectors gathered for a caller that
//!   exited or whose pid was reused while it was attested (SPIRE's peer-tracker checks);
//! - [`ProcFs`], the proc file system the facts come from;
//! - [`AttestError`], with SPIRE's message texts;
//! - [`NodeAttestor`] ([`node_attestor`]), the agent side of node attestation (the evidence an
//!   agent sends in `AttestAgent`), and [`ServerNodeAttestor`], the server side that verifies
//!   it, one module per attestor: [`node_attestor::join_token`], [`node_attestor::x509pop`]
//!   (X.509 proof of possession, both sides) and [`node_attestor::k8s_psat`] (Kubernetes
//!   projected service-account tokens, both sides).
//!
//! A flow: `let watch = CallerWatch::open(&procfs, caller)?; let selectors =
//! attestor.attest(caller.pid)?; watch.check()?;`, which [`attest_caller`] wraps.
//!
//! This crate keeps no state between calls beyond the `systemd` attestor's D-Bus connection
//! and the `k8s` attestor's kubelet client and cached pod list, makes no other network calls
//! than to D-Bus, the kubelet and (`k8s_psat`'s server side) the Kubernetes API server, and
//! depends on no store or cluster crate: the agent that uses it stays small. It reads the proc file system and the user and group databases, and so is
//! Linux-only. What each selector needs from the operating system (capabilities) is in
//! [`unix`], [`systemd`] and `docs/agent-attestors.md`.

mod caller_watch;
mod error;
pub mod k8s;
pub mod node_attestor;
mod procfs;
pub mod systemd;
pub mod unix;
mod workload_attestor;

pub use caller_watch::{Caller, CallerWatch, attest_caller};
pub use error::AttestError;
pub use k8s::{K8sAttestor, K8sConfig};
pub use node_attestor::{
    AttestedAgent, NodeAttestError, NodeAttestor, PendingChallenge, Refusal, RefusalCode,
    ServerNodeAttestor, Verification,
};
pub use procfs::{ProcFs, ProcStatus};
pub use systemd::{SystemdAttestor, SystemdBus};
pub use unix::{UnixAttestation, UnixAttestor, UnixConfig};
pub use workload_attestor::WorkloadAttestor;
