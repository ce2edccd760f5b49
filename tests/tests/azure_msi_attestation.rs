#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! azure_msi node attestation with SPIRE v1.13.3, inside a network namespace made here
//! ([`ward_tests::azure`]): the instance metadata service (`169.254.169.254`) hands out an
//! access token signed by a test key; `login.microsoftonline.com` publishes that key and
//! issues Resource Manager tokens to a test application (client-credentials grant); and
//! `management.azure.com` knows the VM whose identity the token's principal is, its network
//! interface, security group and subnet — over HTTPS from a test CA that spire-server and
//! ward-server trust through `SSL_CERT_FILE`. Both servers have the tenant with the
//! application's `subscription_id`, `app_id` and `app_secret`, and a second tenant whose
//! secret is wrong.
//! 1. the same token attests three ways, the agent evicted in between (trust on first use):
//!    spire-agent → spire-server, ward-agent → spire-server, spire-agent → ward-server (then
//!    ward-agent → ward-server); `spire-server agent show` prints the same agent each time,
//!    with SPIRE's five selectors; ward-server's requests to the login service and Resource
//!    Manager are spire-server's (paths, API versions, queries, the grant's form fields);
//! 2. bad evidence — a forged signature, a key the issuer does not publish, another tenant, a
//!    wrong audience, an expired token, a token without a tenant, a truncated payload, a
//!    principal no VM has, a VM Resource Manager does not find, a tenant whose client secret is refused — is refused by ward-server
//!    with the code and message spire-server gives for the same evidence; neither agent list
//!    changes;
//! 3. the attested token again while its agent is attested on both servers: SPIRE's
//!    trust-on-first-use refusal from both, before either asks Azure anything, and
//!    ward-server keeps serving;
//! 4. a second pair of servers whose tenant has no credentials: each takes its subscription
//!    from the instance metadata service and a Resource Manager token from its managed
//!    identity there, and spire-agent's attestation shows the same agent on both.
//!
//! Needs root (network namespace, ports 80 and 443 in it) and SPIRE's binaries (built with Go).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::azure_msi::{AzureMsiAgentConfig, AzureMsiAttestor};
use ward_tests::agent::{AgentDirs, wait_healthy};
use ward_tests::azure::{
    APP_ID, APP_SECRET, AzureLab, GHOST_PRINCIPAL, IMDS_ADDRESS, KID, SUBSCRIPTION, VM_SELECTORS,
    form_of, msi_claims,
};
use ward_tests::cli::AdminCli;
use ward_tests::gcp::{TokenSigner, unix_now};
use ward_tests::node_attestation::scenario::ready_pair;
use ward_tests::node_attestation::{
    Procs, Tampered, agent_ids, agent_show, plugin_block, refusal, start_spire_agent_with_attestor,
    start_spire_server_with_attestor, start_ward_agent_with_attestor,
    start_ward_server_with_attestor, truncated, wait_attested,
};
use ward_tests::server::ServerOptions;
use ward_tests::spire::SpireBins;
use ward_tests::ward::{ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// A tenant both servers hold with a client secret the login service refuses.
const BAD_SECRET_TENANT: &str = "5e1f0d2c-3b4a-4c5d-8e6f-7a8b9c0d1e2f";
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

/// What a server's Azure requests must agree on: the Resource Manager request lines in order,
/// and the token requests' lines with the grant's form fields ward sends (the SDK adds CAE
/// claims), each shape once: the SDK asks for a token before the first request of each of its
/// three clients, ward once for the token's lifetime, and the SDK first reads the tenant's
/// OpenID configuration, which ward does not need.
fn shape(requests: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut arm, mut tokens) = (Vec::new(), Vec::new());
    for r in requests {
        let line = r.lines().next().unwrap_or_default().to_owned();
        if r.contains("\r\nhost: management.azure.com\r\n")
            || r.contains("\r\nHost: management.azure.com\r\n")
        {
            arm.push(line);
        } else if line.starts_with("POST ") {
            let form = form_of(r);
            let mut fields = vec![line];
            for k in ["client_id", "client_secret", "grant_type", "scope"] {
                let v = form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                fields.push(format!("{k}={v:?}"));
            }
            let shown = fields.join(" ");
            if !tokens.contains(&shown) {
                tokens.push(shown);
            }
        }
    }
    (arm, tokens)
}

fn tenants_block() -> String {
    format!(
        "{{\n  {TENANT:?} = {{ subscription_id = {SUBSCRIPTION:?}, app_id = {APP_ID:?}, \
         app_secret = {APP_SECRET:?} }}\n  {BAD_SECRET_TENANT:?} = {{ subscription_id = \
         {SUBSCRIPTION:?}, app_id = {APP_ID:?}, app_secret = \"not-the-secret\" }}\n}}"
    )
}

fn ward_tenants() -> String {
    let mut out = String::new();
    for (tenant, secret) in [(TENANT, APP_SECRET), (BAD_SECRET_TENANT, "not-the-secret")] {
        out.push_str(&format!(
            "[node_attestors.azure_msi.tenants.{tenant:?}]\nsubscription_id = {SUBSCRIPTION:?}\n\
             app_id = {APP_ID:?}\napp_secret = {secret:?}\n"
        ));
    }
    out
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
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
    eprintln!("0. a token for {id}, whose VM is in {SUBSCRIPTION}; both servers in the namespace");
    let token = token_with(&azure.signer, |_| {});
    azure.set_token(&token);
    azure.set_vm_principal(PRINCIPAL);
    let launcher = azure.launcher()?;
    let spire_server = procs.spire_server.insert(start_spire_server_with_attestor(
        &spire.server,
        &launcher,
        &root.join("spire-server"),
        &ServerOptions::new(TD),
        &plugin_block("azure_msi", &[("tenants", tenants_block())]),
    )?);
    let ward_server = procs.ward_server.insert(start_ward_server_with_attestor(
        ward_bin,
        &launcher,
        &root.join("ward-server"),
        &ServerOptions::new(TD),
        &ward_tenants(),
    )?);
    let pair = ready_pair(spire, ward_bin, spire_server, ward_server, root)?;
    let evict = |cli: &AdminCli| cli.ok(&["agent", "evict"], &["-spiffeID", &id]).map(|_| ());
    let spire_agent = |dir: &str, port: u16, bundle: &Path| {
        start_spire_agent_with_attestor(
            &spire.agent,
            &launcher,
            &root.join(dir),
            TD,
            port,
            bundle,
            &plugin_block("azure_msi", &[]),
        )
    };
    let ward_agent = |dir: &str, port: u16, bundle: &Path| {
        start_ward_agent_with_attestor(
            agent_bin,
            &launcher,
            &AgentDirs::new(root, dir),
            TD,
            port,
            bundle,
            "[node_attestor.azure_msi]",
        )
    };

    eprintln!("1. spire-agent → spire-server: the reference");
    azure.take_requests();
    let (mut agent, _) = spire_agent("sa-ss", spire_server.port, &pair.spire_bundle)?;
    wait_attested(&pair.spire_on_spire, &mut [&mut agent, &mut spire_server.daemon], &id)?;
    let reference = agent_show(&pair.spire_on_spire, &id)?;
    agent.terminate(Duration::from_secs(10))?;
    let spire_requests = azure.take_requests();
    eprintln!("{reference}\nspire-server asked Azure: {:#?}", shape(&spire_requests));
    let mut wants: Vec<String> =
        ["Attestation type  : azure_msi", "Can re-attest     : false"].map(str::to_owned).into();
    wants.extend(VM_SELECTORS.iter().map(|s| format!("azure_msi:{s}")));
    for want in &wants {
        ensure!(reference.contains(want.as_str()), "agent show lacks {want:?}:\n{reference}");
    }
    evict(&pair.spire_on_spire)?;

    eprintln!("   ward-agent → spire-server");
    let dirs = AgentDirs::new(root, "wa-ss");
    let mut agent = ward_agent("wa-ss", spire_server.port, &pair.spire_bundle)?;
    wait_healthy(agent_bin, &mut agent, &dirs.admin_socket)?;
    let shown = agent_show(&pair.spire_on_spire, &id)?;
    agent.terminate(Duration::from_secs(10))?;
    ensure!(shown == reference, "ward-agent → spire-server:\n{shown}\nwant:\n{reference}");
    evict(&pair.spire_on_spire)?;
    azure.take_requests();

    eprintln!("   spire-agent → ward-server");
    let (mut agent, _) = spire_agent("sa-ws", ward_server.port, &pair.ward_bundle)?;
    wait_attested(&pair.spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], &id)?;
    let shown = agent_show(&pair.spire_on_ward, &id)?;
    agent.terminate(Duration::from_secs(10))?;
    ensure!(shown == reference, "spire-agent → ward-server:\n{shown}\nwant:\n{reference}");
    let ward_requests = azure.take_requests();

    ensure!(
        shape(&ward_requests) == shape(&spire_requests),
        "ward-server asked Azure:\n{:#?}\nspire-server asked:\n{:#?}",
        shape(&ward_requests),
        shape(&spire_requests)
    );
    evict(&pair.spire_on_ward)?;

    eprintln!("   ward-agent → ward-server");
    let mut agent = ward_agent("wa-ws", ward_server.port, &pair.ward_bundle)?;
    wait_attested(&pair.spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], &id)?;
    let shown = agent_show(&pair.spire_on_ward, &id)?;
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
        (
            "a principal no VM has",
            payload(&token_with(&azure.signer, |c| {
                c["sub"] = "6c2d9e4f-0000-4000-8000-00000000beef".into();
            })),
        ),
        (
            "a VM Resource Manager does not find",
            payload(&token_with(&azure.signer, |c| c["sub"] = GHOST_PRINCIPAL.into())),
        ),
        (
            "a tenant whose client secret is refused",
            payload(&token_with(&azure.signer, |c| c["tid"] = BAD_SECRET_TENANT.into())),
        ),
    ];
    let before = (agent_ids(&pair.spire_on_spire)?, agent_ids(&pair.spire_on_ward)?);
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
    let after = (agent_ids(&pair.spire_on_spire)?, agent_ids(&pair.spire_on_ward)?);
    ensure!(after == before, "agents changed: {before:?} → {after:?}");

    eprintln!("3. the token again while its agent is attested: trust on first use");
    let first = rt.block_on(refusal(spire_server.port, TD, sending(payload(&token))));
    ensure!(first.0 == tonic::Code::Ok, "spire-server did not attest the token: {first:?}");
    azure.take_requests();
    let from_spire = rt.block_on(refusal(spire_server.port, TD, sending(payload(&token))));
    let from_ward = rt.block_on(refusal(ward_server.port, TD, sending(payload(&token))));
    let tofu = "nodeattestor(azure_msi): attestation data has already been used to attest an agent";
    ensure!(
        from_spire == (tonic::Code::PermissionDenied, tofu.to_owned()) && from_ward == from_spire,
        "second attestation: ward-server {from_ward:?}, spire-server {from_spire:?}"
    );
    // Refused before Resource Manager is asked, by both.
    let asked = azure.take_requests();
    ensure!(asked.is_empty(), "Azure asked about an attested agent: {:#?}", shape(&asked));
    ensure!(agent_ids(&pair.spire_on_ward)? == after.1, "ward-server's agents changed");
    ward_server.daemon.ensure_running()?;

    eprintln!("4. a tenant without credentials: each server's own managed identity");
    let msi_root = root.join("msi");
    std::fs::create_dir_all(&msi_root)?;
    let mut msi_spire = start_spire_server_with_attestor(
        &spire.server,
        &launcher,
        &msi_root.join("spire-server"),
        &ServerOptions::new(TD),
        &plugin_block("azure_msi", &[("tenants", format!("{{\n  {TENANT:?} = {{}}\n}}"))]),
    )?;
    let mut msi_ward = start_ward_server_with_attestor(
        ward_bin,
        &launcher,
        &msi_root.join("ward-server"),
        &ServerOptions::new(TD),
        &format!("[node_attestors.azure_msi.tenants.{TENANT:?}]\n"),
    )?;
    let msi = ready_pair(spire, ward_bin, &mut msi_spire, &mut msi_ward, &msi_root)?;
    let token = token_with(&azure.signer, |_| {});
    azure.set_token(&token);
    azure.take_requests();
    let start = |dir: &str, port: u16, bundle: &Path| {
        start_spire_agent_with_attestor(
            &spire.agent,
            &launcher,
            &msi_root.join(dir),
            TD,
            port,
            bundle,
            &plugin_block("azure_msi", &[]),
        )
    };
    let (mut agent, _) = start("sa-ss", msi_spire.port, &msi.spire_bundle)?;
    wait_attested(&msi.spire_on_spire, &mut [&mut agent, &mut msi_spire.daemon], &id)?;
    let from_spire = agent_show(&msi.spire_on_spire, &id)?;
    agent.terminate(Duration::from_secs(10))?;
    let (mut agent, _) = start("sa-ws", msi_ward.port, &msi.ward_bundle)?;
    wait_attested(&msi.spire_on_ward, &mut [&mut agent, &mut msi_ward.daemon], &id)?;
    let from_ward = agent_show(&msi.spire_on_ward, &id)?;
    agent.terminate(Duration::from_secs(10))?;
    ensure!(
        from_spire == reference && from_ward == reference,
        "managed identity: spire-server shows\n{from_spire}\nward-server shows\n{from_ward}\nwant:\n{reference}"
    );
    // Both looked the VM up in the subscription of their own instance metadata, with the
    // managed identity's token (the fake Resource Manager accepts no other).
    let arm: Vec<String> = shape(&azure.take_requests()).0;
    ensure!(
        arm.iter()
            .filter(|r| r.contains(&format!("/subscriptions/{SUBSCRIPTION}/resources")))
            .count()
            == 2,
        "Resource Manager was asked: {arm:#?}"
    );
    Ok(())
}
