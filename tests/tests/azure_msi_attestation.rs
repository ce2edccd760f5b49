#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! azure_msi node attestation with SPIRE v1.13.3, inside a network namespace made here
//! ([`ward_tests::azure`]): the instance metadata service (`169.254.169.254`) hands out an
//! access token signed by a test key, and `login.microsoftonline.com` publishes that key in the
//! key set its OpenID configuration names, over HTTPS from a test CA that spire-server and
//! ward-server trust through `SSL_CERT_FILE`.
//! 1. an unmodified spire-agent with its azure_msi plugin attests to ward-server, and so does
//!    ward-agent with `[node_attestor.azure_msi]`: `spire-server agent show` prints the same
//!    agent (`azure_msi/<tenant>/<principal>`, no re-attestation, no selectors: ward does not
//!    call the Azure Resource Manager API, where SPIRE's selectors come from);
//! 2. bad evidence — a forged signature, a key the issuer does not publish, another tenant, a
//!    wrong audience, an expired token, a token without a tenant, a truncated payload — is
//!    refused by ward-server with the code and message spire-server gives for the same
//!    evidence (spire-server refuses all of these before it calls the Resource Manager API);
//!    neither agent list changes; the same token again while its agent is attested gets SPIRE's
//!    trust-on-first-use refusal from ward-server.
//!
//! spire-server cannot attest a good token here: after the checks it asks the Resource Manager
//! API for the VM of the principal, which this test does not fake.
//!
//! Needs root (network namespace, ports 80 and 443 in it) and SPIRE's binaries (built with Go).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::azure_msi::{AzureMsiAgentConfig, AzureMsiAttestor};
use ward_tests::agent::AgentDirs;
use ward_tests::agent_scenario::wait_ready;
use ward_tests::azure::{AzureLab, IMDS_ADDRESS, KID, msi_claims};
use ward_tests::cli::AdminCli;
use ward_tests::daemon::Daemon;
use ward_tests::gcp::{TokenSigner, unix_now};
use ward_tests::node_attestation::{
    Tampered, agent_ids, agent_show, plugin_block, refusal, start_spire_agent_with_attestor,
    start_spire_server_with_attestor, start_ward_agent_with_attestor,
    start_ward_server_with_attestor, truncated, wait_attested,
};
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::SpireBins;
use ward_tests::ward::{ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const PRINCIPAL: &str = "0f7bd2a1-4c11-4b7e-9d2e-6a1c5e0b9f3d";

#[test]
fn azure_msi_attestation_interoperates_with_spire() {
    let tmp = tempfile::Builder::new().prefix("ward-az").tempdir().unwrap();
    let root = tmp.path();
    let spire = SpireBins::locate().unwrap();
    let ward_bin = ward_server_bin().unwrap();
    let agent_bin = ward_agent_bin().unwrap();
    let mut azure = AzureLab::new(&root.join("azure")).unwrap();
    azure.enter().unwrap();
    // Built after entering the namespace, so its threads are in it too.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut procs = Procs::default();
    if let Err(e) = scenario(root, &spire, &ward_bin, &agent_bin, &azure, &rt, &mut procs) {
        // The daemons are dropped during the panic, which prints their logs.
        panic!("azure_msi scenario failed: {e:#}");
    }
}

/// Every process the scenario starts; dropped (killed) when the test ends.
#[derive(Default)]
struct Procs {
    agents: Vec<Daemon>,
    spire_server: Option<ServerProcess>,
    ward_server: Option<ServerProcess>,
}

fn agent_id() -> String {
    format!("spiffe://{TD}/spire/agent/azure_msi/{TENANT}/{PRINCIPAL}")
}

/// A token with the claims edited by `edit`, signed by `signer`.
fn token_with(signer: &TokenSigner, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut claims = msi_claims(unix_now(), TENANT, PRINCIPAL);
    edit(&mut claims);
    signer.sign(KID, &claims).unwrap()
}

/// `{"token": <token>}`, as the agent sends it.
fn payload(token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap()
}

/// ward-agent's attestor asking the namespace's metadata service, its payload replaced.
fn sending(payload: Vec<u8>) -> Arc<dyn NodeAttestor> {
    let inner = Arc::new(
        AzureMsiAttestor::new(AzureMsiAgentConfig {
            metadata_host: IMDS_ADDRESS.to_owned(),
            ..AzureMsiAgentConfig::default()
        })
        .unwrap(),
    );
    Tampered::payload(inner, Box::new(move |_| payload.clone()))
}

#[allow(clippy::too_many_arguments)]
fn scenario(
    root: &Path,
    spire: &SpireBins,
    ward_bin: &Path,
    agent_bin: &Path,
    azure: &AzureLab,
    rt: &tokio::runtime::Runtime,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    let id = agent_id();
    eprintln!("0. a token for {id}; both servers in the namespace");
    let token = token_with(&azure.signer, |_| {});
    azure.set_token(&token);
    let launcher = azure.launcher()?;
    let spire_server = procs.spire_server.insert(start_spire_server_with_attestor(
        &spire.server,
        &launcher,
        &root.join("spire-server"),
        &ServerOptions::new(TD),
        &plugin_block("azure_msi", &[("tenants", format!("{{ {TENANT:?} = {{}} }}"))]),
    )?);
    let ward_server = procs.ward_server.insert(start_ward_server_with_attestor(
        ward_bin,
        &launcher,
        &root.join("ward-server"),
        &ServerOptions::new(TD),
        &format!("[node_attestors.azure_msi.tenants.{TENANT:?}]"),
    )?);
    let spire_on_spire = AdminCli::new(&spire.server, &spire_server.socket_path);
    let spire_on_ward = AdminCli::new(&spire.server, &ward_server.socket_path);
    let ward_cli = AdminCli::new(ward_bin, &ward_server.socket_path);
    wait_ready(&mut spire_server.daemon, &spire_on_spire)?;
    wait_ready(&mut ward_server.daemon, &ward_cli)?;
    let ward_bundle = root.join("ward-bundle.pem");
    std::fs::write(&ward_bundle, ward_cli.bundle_show_pem()?)?;

    eprintln!("1. spire-agent, then ward-agent, to ward-server");
    let (mut agent, _) = start_spire_agent_with_attestor(
        &spire.agent,
        &launcher,
        &root.join("sa-ws"),
        TD,
        ward_server.port,
        &ward_bundle,
        &plugin_block("azure_msi", &[]),
    )?;
    wait_attested(&spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], &id)?;
    let reference = agent_show(&spire_on_ward, &id)?;
    agent.terminate(Duration::from_secs(10))?;
    eprintln!("{reference}");
    for want in ["Attestation type  : azure_msi", "Can re-attest     : false"] {
        ensure!(reference.contains(want), "agent show lacks {want:?}:\n{reference}");
    }
    spire_on_ward.ok(&["agent", "evict"], &["-spiffeID", &id])?;
    let dirs = AgentDirs::new(root, "wa-ws");
    let mut agent = start_ward_agent_with_attestor(
        agent_bin,
        &launcher,
        &dirs,
        TD,
        ward_server.port,
        &ward_bundle,
        "[node_attestor.azure_msi]",
    )?;
    wait_attested(&spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], &id)?;
    let shown = agent_show(&spire_on_ward, &id)?;
    ensure!(shown == reference, "ward-agent → ward-server:\n{shown}\nwant:\n{reference}");
    procs.agents.push(agent);

    eprintln!("2. bad evidence: ward-server answers as spire-server does");
    let other_key = TokenSigner::new()?;
    let mut forged = token.clone().into_bytes();
    let at = forged.len() - 3;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged)?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("forged signature", payload(&forged)),
        ("a key the issuer does not publish", payload(&token_with(&other_key, |_| {}))),
        (
            "another tenant",
            payload(&token_with(&azure.signer, |c| {
                c["tid"] = "00000000-0000-0000-0000-000000000000".into();
            })),
        ),
        (
            "wrong audience",
            payload(&token_with(&azure.signer, |c| c["aud"] = "https://vault.azure.net".into())),
        ),
        (
            "expired token",
            payload(&token_with(&azure.signer, |c| {
                c["iat"] = (unix_now() - 7200).into();
                c["nbf"] = (unix_now() - 7200).into();
                c["exp"] = (unix_now() - 3600).into();
            })),
        ),
        (
            "no tenant",
            payload(&token_with(&azure.signer, |c| {
                c.as_object_mut().unwrap().remove("tid");
            })),
        ),
        ("truncated payload", truncated(payload(&token))),
    ];
    let before = (agent_ids(&spire_on_spire)?, agent_ids(&spire_on_ward)?);
    for (what, payload) in cases {
        let from_spire = rt.block_on(refusal(spire_server.port, TD, sending(payload.clone())));
        let from_ward = rt.block_on(refusal(ward_server.port, TD, sending(payload)));
        eprintln!("  {what}: {from_spire:?}");
        ensure!(from_spire.0 != tonic::Code::Ok, "spire-server accepted the {what}");
        ensure!(
            from_ward == from_spire,
            "{what}: ward-server answered {from_ward:?}, spire-server {from_spire:?}"
        );
    }
    let after = (agent_ids(&spire_on_spire)?, agent_ids(&spire_on_ward)?);
    ensure!(after == before, "agents changed: {before:?} → {after:?}");
    // Trust on first use: the attested agent's token again (spire-server never got that far).
    let again = rt.block_on(refusal(ward_server.port, TD, sending(payload(&token))));
    let tofu = "nodeattestor(azure_msi): attestation data has already been used to attest an agent";
    ensure!(
        again == (tonic::Code::PermissionDenied, tofu.to_owned()),
        "second attestation: {again:?}"
    );
    ward_server.daemon.ensure_running()?;
    Ok(())
}
