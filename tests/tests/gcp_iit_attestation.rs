#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! gcp_iit node attestation both ways with SPIRE v1.13.3, inside a network namespace made
//! here ([`ward_tests::gcp`]): `metadata.google.internal` hands out an identity token signed
//! by a test key, and `www.googleapis.com` publishes that key's certificate over HTTPS from a
//! test CA that spire-server and ward-server trust through `SSL_CERT_FILE`.
//! 1. the same token through each agent to each server: spire-agent → spire-server (the
//!    reference), then, once spire-server has evicted that agent, ward-agent → spire-server,
//!    and spire-agent → ward-server: `spire-server agent show` prints the same agent (SPIFFE
//!    ID, type, no re-attestation, selectors) each time;
//! 2. bad evidence — a forged signature, a key Google does not publish, a wrong audience, an
//!    expired token, a project not in the allow list, a truncated token, and the same token
//!    again while its agent is attested (trust on first use) — is refused by ward-server with
//!    the code and message spire-server gives for the same evidence; neither agent list
//!    changes;
//! 3. once ward-server has evicted the agent, the same token attests again.
//!
//! Needs root (network namespace, ports 80 and 443 in it) and SPIRE's binaries (built with Go).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::gcp_iit::{GcpIitAgentConfig, GcpIitAttestor};
use ward_tests::agent::AgentDirs;
use ward_tests::agent_scenario::wait_ready;
use ward_tests::cli::AdminCli;
use ward_tests::daemon::Daemon;
use ward_tests::gcp::{GcpLab, KID, METADATA_ADDRESS, TokenSigner, identity_claims, unix_now};
use ward_tests::node_attestation::{
    Tampered, agent_ids, agent_show, hcl_list, plugin_block, refusal,
    start_spire_agent_with_attestor, start_spire_server_with_attestor,
    start_ward_agent_with_attestor, start_ward_server_with_attestor, truncated, wait_attested,
};
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::SpireBins;
use ward_tests::ward::{ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const PROJECT: &str = "project-123";
const INSTANCE: &str = "4815162342";
const AGENT_ID: &str = "spiffe://example.org/spire/agent/gcp_iit/project-123/4815162342";

#[test]
fn gcp_iit_attestation_interoperates_with_spire() {
    let tmp = tempfile::Builder::new().prefix("ward-gcp").tempdir().unwrap();
    let root = tmp.path();
    let spire = SpireBins::locate().unwrap();
    let ward_bin = ward_server_bin().unwrap();
    let agent_bin = ward_agent_bin().unwrap();
    let mut gcp = GcpLab::new(&root.join("gcp")).unwrap();
    gcp.enter().unwrap();
    // Built after entering the namespace, so its threads are in it too.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut procs = Procs::default();
    if let Err(e) = scenario(root, &spire, &ward_bin, &agent_bin, &gcp, &rt, &mut procs) {
        // The daemons are dropped during the panic, which prints their logs.
        panic!("gcp_iit scenario failed: {e:#}");
    }
}

/// Every process the scenario starts; dropped (killed) when the test ends.
#[derive(Default)]
struct Procs {
    agents: Vec<Daemon>,
    spire_server: Option<ServerProcess>,
    ward_server: Option<ServerProcess>,
}

/// A token with the claims edited by `edit`, signed by `signer`.
fn token_with(signer: &TokenSigner, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut claims = identity_claims(unix_now(), PROJECT, INSTANCE);
    edit(&mut claims);
    signer.sign(KID, &claims).unwrap()
}

/// ward-agent's attestor asking the namespace's metadata server, its payload replaced.
fn sending(payload: Vec<u8>) -> Arc<dyn NodeAttestor> {
    let inner = Arc::new(
        GcpIitAttestor::new(GcpIitAgentConfig {
            identity_token_host: METADATA_ADDRESS.to_owned(),
            ..GcpIitAgentConfig::default()
        })
        .unwrap(),
    );
    Tampered::payload(inner, Box::new(move |_| payload.clone()))
}

/// The token with one character of its signature changed.
fn forged(token: &str) -> Vec<u8> {
    let mut bytes = token.as_bytes().to_vec();
    let at = bytes.len() - 3;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    bytes
}

#[allow(clippy::too_many_arguments)]
fn scenario(
    root: &Path,
    spire: &SpireBins,
    ward_bin: &Path,
    agent_bin: &Path,
    gcp: &GcpLab,
    rt: &tokio::runtime::Runtime,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    eprintln!("0. a token for {AGENT_ID}; both servers in the namespace");
    let token = token_with(&gcp.signer, |_| {});
    gcp.set_token(&token);
    let launcher = gcp.launcher()?;
    let spire_server = procs.spire_server.insert(start_spire_server_with_attestor(
        &spire.server,
        &launcher,
        &root.join("spire-server"),
        &ServerOptions::new(TD),
        &plugin_block("gcp_iit", &[("projectid_allow_list", hcl_list(&[PROJECT]))]),
    )?);
    let ward_server = procs.ward_server.insert(start_ward_server_with_attestor(
        ward_bin,
        &launcher,
        &root.join("ward-server"),
        &ServerOptions::new(TD),
        &format!("[node_attestors.gcp_iit]\nprojectid_allow_list = [{PROJECT:?}]"),
    )?);
    let spire_on_spire = AdminCli::new(&spire.server, &spire_server.socket_path);
    let spire_on_ward = AdminCli::new(&spire.server, &ward_server.socket_path);
    let ward_cli = AdminCli::new(ward_bin, &ward_server.socket_path);
    wait_ready(&mut spire_server.daemon, &spire_on_spire)?;
    wait_ready(&mut ward_server.daemon, &ward_cli)?;
    let spire_bundle = root.join("spire-bundle.pem");
    std::fs::write(&spire_bundle, spire_on_spire.bundle_show_pem()?)?;
    let ward_bundle = root.join("ward-bundle.pem");
    std::fs::write(&ward_bundle, ward_cli.bundle_show_pem()?)?;
    let spire_block = plugin_block("gcp_iit", &[]);

    eprintln!("1. the same token through each agent to each server");
    let (mut agent, _) = start_spire_agent_with_attestor(
        &spire.agent,
        &launcher,
        &root.join("sa-ss"),
        TD,
        spire_server.port,
        &spire_bundle,
        &spire_block,
    )?;
    wait_attested(&spire_on_spire, &mut [&mut agent, &mut spire_server.daemon], AGENT_ID)?;
    let reference = agent_show(&spire_on_spire, AGENT_ID)?;
    agent.terminate(Duration::from_secs(10))?;
    eprintln!("{reference}");
    for want in [
        "Attestation type  : gcp_iit",
        "Can re-attest     : false",
        "gcp_iit:project-id:project-123",
        "gcp_iit:zone:us-west1-b",
        "gcp_iit:instance-name:blog-server",
    ] {
        ensure!(reference.contains(want), "spire-server's agent show lacks {want:?}:\n{reference}");
    }
    spire_on_spire.ok(&["agent", "evict"], &["-spiffeID", AGENT_ID])?;

    // ward-agent -> spire-server, once the first agent is evicted.
    let dirs = AgentDirs::new(root, "wa-ss");
    let toml = "[node_attestor.gcp_iit]";
    let mut agent = start_ward_agent_with_attestor(
        agent_bin,
        &launcher,
        &dirs,
        TD,
        spire_server.port,
        &spire_bundle,
        toml,
    )?;
    wait_attested(&spire_on_spire, &mut [&mut agent, &mut spire_server.daemon], AGENT_ID)?;
    let shown = agent_show(&spire_on_spire, AGENT_ID)?;
    ensure!(shown == reference, "ward-agent → spire-server:\n{shown}\nwant:\n{reference}");
    let metadata_request = gcp.last_metadata_request.lock().unwrap().clone();
    ensure!(
        metadata_request.starts_with(
            "GET /computeMetadata/v1/instance/service-accounts/default/identity?\
             audience=spire-gcp-node-attestor&format=full HTTP/1.1\r\n"
        ),
        "ward-agent asked the metadata server: {metadata_request}"
    );
    procs.agents.push(agent);

    // spire-agent -> ward-server.
    let (mut agent, _) = start_spire_agent_with_attestor(
        &spire.agent,
        &launcher,
        &root.join("sa-ws"),
        TD,
        ward_server.port,
        &ward_bundle,
        &spire_block,
    )?;
    wait_attested(&spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], AGENT_ID)?;
    let shown = agent_show(&spire_on_ward, AGENT_ID)?;
    ensure!(shown == reference, "spire-agent → ward-server:\n{shown}\nwant:\n{reference}");
    procs.agents.push(agent);
    ensure!(
        gcp.cert_requests.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "both servers fetch the certificates from www.googleapis.com"
    );

    eprintln!("2. bad evidence: ward-server answers as spire-server does");
    let other_key = TokenSigner::new()?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("forged signature", forged(&token)),
        ("a key Google does not publish", token_with(&other_key, |_| {}).into_bytes()),
        (
            "wrong audience",
            token_with(&gcp.signer, |c| c["aud"] = "someone-else".into()).into_bytes(),
        ),
        (
            "expired token",
            token_with(&gcp.signer, |c| {
                c["iat"] = (unix_now() - 7200).into();
                c["exp"] = (unix_now() - 3600).into();
            })
            .into_bytes(),
        ),
        (
            "project not allowed",
            token_with(&gcp.signer, |c| {
                c["google"]["compute_engine"]["project_id"] = "project-999".into();
            })
            .into_bytes(),
        ),
        ("truncated token", truncated(token.clone().into_bytes())),
        ("second attestation (trust on first use)", token.clone().into_bytes()),
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

    ward_server.daemon.ensure_running()?;
    Ok(())
}
