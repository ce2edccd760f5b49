#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! gcp_iit node attestation both ways with SPIRE v1.13.3, inside a network namespace made
//! here ([`ward_tests::gcp`]): `metadata.google.internal` hands out an identity token signed
//! by a test key, and `www.googleapis.com` publishes that key's certificate over HTTPS from a
//! test CA that spire-server and ward-server trust through `SSL_CERT_FILE`. Both servers run
//! with `use_instance_metadata` and the same service-account key file: `oauth2.googleapis.com`
//! exchanges the key's signed assertion for an access token, and `compute.googleapis.com`
//! describes the instances ([`ward_tests::gcp_api`]).
//! 1. the same token through each agent to each server: spire-agent → spire-server (the
//!    reference), then, once spire-server has evicted that agent, ward-agent → spire-server,
//!    and spire-agent → ward-server: `spire-server agent show` prints the same agent (SPIFFE
//!    ID, type, no re-attestation, selectors: the token's, and the instance's tags, service
//!    account, allowed label and allowed metadata items, not the others) each time; ward-server
//!    asks the token endpoint and `instances.get` as spire-server does (same form fields,
//!    assertion header and claims, request line, authorization and quota-project headers);
//! 2. bad evidence — a forged signature, a key Google does not publish, a wrong audience, an
//!    expired token, a project not in the allow list, a truncated token, the same token again
//!    while its agent is attested (trust on first use, decided before the API is asked), an
//!    instance the API does not know, an API error with details, an API error without a JSON
//!    body, an allowed metadata value over the size limit, and the token endpoint refusing the
//!    key — is refused by ward-server with
//!    the code and message spire-server gives for the same evidence; neither agent list
//!    changes;
//! 3. without `service_account_file`, two more server pairs find Application Default
//!    Credentials, one through `GOOGLE_APPLICATION_CREDENTIALS` (the same key file), one on the
//!    metadata server (`GCE_METADATA_HOST`, its default service account's token): another
//!    instance attests to both servers of each pair with the same `agent show`, both ask the
//!    metadata server for the token with the same request, and an unknown instance is
//!    refused alike.
//!
//! Needs root (network namespace, ports 80 and 443 in it) and SPIRE's binaries (built with Go).

use std::collections::BTreeMap;
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
use ward_tests::gcp::{
    Answer, GcpLab, KID, METADATA_ADDRESS, TokenSigner, identity_claims, unix_now,
};
use ward_tests::gcp_api::{
    ACCESS_TOKEN, ComputeApi, QUOTA_PROJECT, SA_EMAIL, ServiceAccount, TOKEN_URI, form,
    google_error, header, json_answer, jwt_parts, split_request,
};
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
const ZONE: &str = "us-west1-b";
const INSTANCE_NAME: &str = "blog-server";

/// What `instances.get` answers, by instance name: the attesting instance, and instances whose
/// lookups fail.
fn instances() -> BTreeMap<String, Answer> {
    let blog_server = serde_json::json!({
        "kind": "compute#instance",
        "id": INSTANCE,
        "name": INSTANCE_NAME,
        "zone": format!("https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{ZONE}"),
        "status": "RUNNING",
        "tags": {"items": ["http-server", "web"], "fingerprint": "42WmSpB8rSM="},
        "serviceAccounts": [{
            "email": "1234-compute@developer.gserviceaccount.com",
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"]
        }],
        // Only "env" is allowed.
        "labels": {"env": "prod", "team": "payments"},
        "metadata": {"kind": "compute#metadata", "items": [
            {"key": "role", "value": "frontend"},
            {"key": "empty"},
            {"key": "startup-script", "value": "#!/bin/sh\necho not a selector"}
        ]}
    });
    let mut bulky = blog_server.clone();
    bulky["metadata"]["items"][0]["value"] = "x".repeat(200).into();
    let denied = serde_json::json!({"error": {
        "code": 403,
        "message": "Request had insufficient authentication scopes.",
        "errors": [{
            "message": "Insufficient Permission",
            "domain": "global",
            "reason": "insufficientPermissions"
        }],
        "status": "PERMISSION_DENIED",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "domain": "googleapis.com",
            "metadata": {"service": "compute.googleapis.com", "method": "compute.v1.InstancesService.Get"}
        }]
    }});
    BTreeMap::from([
        (INSTANCE_NAME.to_owned(), json_answer(&blog_server)),
        ("bulky-server".to_owned(), json_answer(&bulky)),
        ("denied-server".to_owned(), (403, Vec::new(), denied.to_string().into_bytes())),
        ("flaky-server".to_owned(), (502, Vec::new(), b"<html>Bad Gateway</html>".to_vec())),
        ("quota-server".to_owned(), google_error(429, "Rate Limit Exceeded", "rateLimitExceeded")),
    ])
}

/// The `[node_attestors.gcp_iit]` / `plugin_data` settings for the Compute Engine API.
const LABEL_KEYS: &[&str] = &["env"];
const METADATA_KEYS: &[&str] = &["role", "empty"];

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
    /// Server pairs finding their API credentials by Application Default Credentials.
    adc_servers: Vec<ServerProcess>,
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

/// A token for another instance (another agent ID), looked up by `name`.
fn on_instance(gcp: &GcpLab, id: &str, name: &str) -> Vec<u8> {
    token_with(&gcp.signer, |c| {
        c["google"]["compute_engine"]["instance_id"] = id.into();
        c["google"]["compute_engine"]["instance_name"] = name.into();
    })
    .into_bytes()
}

/// spire-server's and ward-server's token and `instances.get` requests ask the same: the
/// JWT-bearer grant with an assertion of the same header and claims (times aside: valid one
/// hour), and the instance with the token and the key file's quota project.
fn same_api_requests(spire: &(String, String), ward: &(String, String)) -> anyhow::Result<()> {
    let assertion = |request: &str| -> anyhow::Result<_> {
        let (head, body) = split_request(request);
        let fields = form(body);
        ensure!(head.starts_with("POST /token HTTP/1.1\r\n"), "token request: {head}");
        ensure!(
            header(head, "content-type") == Some("application/x-www-form-urlencoded"),
            "token request: {head}"
        );
        let names: Vec<&String> = fields.keys().collect();
        let (header, mut claims, _) = jwt_parts(&fields["assertion"])?;
        let (iat, exp) = (claims["iat"].as_i64().unwrap_or(0), claims["exp"].as_i64().unwrap_or(0));
        ensure!(exp - iat == 3600, "assertion valid {} s", exp - iat);
        claims["iat"] = 0.into();
        claims["exp"] = 0.into();
        Ok((format!("{names:?} {}", fields["grant_type"]), header, claims))
    };
    let (spire_form, spire_header, spire_claims) = assertion(&spire.0)?;
    eprintln!("   spire-server's assertion: {spire_header} {spire_claims}");
    ensure!(spire_claims["iss"] == SA_EMAIL && spire_claims["aud"] == TOKEN_URI, "{spire_claims}");
    ensure!(
        assertion(&ward.0)? == (spire_form, spire_header, spire_claims),
        "token requests differ:\nward-server: {}\nspire-server: {}",
        ward.0,
        spire.0
    );
    let get = |request: &str| {
        let (head, _) = split_request(request);
        (
            head.lines().next().unwrap_or_default().to_owned(),
            header(head, "authorization").map(str::to_owned),
            header(head, "x-goog-user-project").map(str::to_owned),
        )
    };
    let spire_get = get(&spire.1);
    eprintln!("   spire-server's instances.get: {spire_get:?}");
    ensure!(
        spire_get
            == (
                format!(
                    "GET /compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{INSTANCE_NAME}\
                     ?alt=json&prettyPrint=false HTTP/1.1"
                ),
                Some(format!("Bearer {ACCESS_TOKEN}")),
                Some(QUOTA_PROJECT.to_owned()),
            ),
        "spire-server asked {}",
        spire.1
    );
    ensure!(get(&ward.1) == spire_get, "ward-server asked {}\nspire-server {}", ward.1, spire.1);
    Ok(())
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
    eprintln!("0. a token for {AGENT_ID}; both servers in the namespace, with the API");
    let token = token_with(&gcp.signer, |_| {});
    gcp.set_token(&token);
    let account = ServiceAccount::write(root, "service-account.json")?;
    let api = ComputeApi::start(gcp, &account, PROJECT, ZONE, instances())?;
    let launcher = gcp.launcher()?;
    let key_file = account.path.display().to_string();
    let spire_server = procs.spire_server.insert(start_spire_server_with_attestor(
        &spire.server,
        &launcher,
        &root.join("spire-server"),
        &ServerOptions::new(TD),
        &plugin_block(
            "gcp_iit",
            &[
                ("projectid_allow_list", hcl_list(&[PROJECT])),
                ("use_instance_metadata", "true".to_owned()),
                ("service_account_file", format!("{key_file:?}")),
                ("allowed_label_keys", hcl_list(LABEL_KEYS)),
                ("allowed_metadata_keys", hcl_list(METADATA_KEYS)),
                ("max_metadata_value_size", "64".to_owned()),
            ],
        ),
    )?);
    let ward_server = procs.ward_server.insert(start_ward_server_with_attestor(
        ward_bin,
        &launcher,
        &root.join("ward-server"),
        &ServerOptions::new(TD),
        &format!(
            "[node_attestors.gcp_iit]\nprojectid_allow_list = [{PROJECT:?}]\n\
             use_instance_metadata = true\nservice_account_file = {key_file:?}\n\
             allowed_label_keys = {LABEL_KEYS:?}\nallowed_metadata_keys = {METADATA_KEYS:?}\n\
             max_metadata_value_size = 64\n"
        ),
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
        "gcp_iit:tag:http-server",
        "gcp_iit:tag:web",
        "gcp_iit:sa:1234-compute@developer.gserviceaccount.com",
        "gcp_iit:label:env:prod",
        "gcp_iit:metadata:role:frontend",
        "gcp_iit:metadata:empty:",
    ] {
        ensure!(reference.contains(want), "spire-server's agent show lacks {want:?}:\n{reference}");
    }
    for unwanted in ["team", "startup-script"] {
        ensure!(!reference.contains(unwanted), "{unwanted} is not allowed:\n{reference}");
    }
    let spire_requests = api.last_requests();
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
    same_api_requests(&spire_requests, &api.last_requests())?;
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
        ("an instance the API does not know", on_instance(gcp, "1001", "gone-server")),
        ("an API refusal with details", on_instance(gcp, "1002", "denied-server")),
        ("an API error without JSON", on_instance(gcp, "1003", "flaky-server")),
        ("an API error with one reason", on_instance(gcp, "1004", "quota-server")),
        ("a metadata value over the limit", on_instance(gcp, "1005", "bulky-server")),
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
    // The token endpoint refusing the key.
    api.refuse_tokens.store(true, std::sync::atomic::Ordering::SeqCst);
    let payload = on_instance(gcp, "1006", INSTANCE_NAME);
    let from_spire = rt.block_on(refusal(spire_server.port, TD, sending(payload.clone())));
    let from_ward = rt.block_on(refusal(ward_server.port, TD, sending(payload)));
    api.refuse_tokens.store(false, std::sync::atomic::Ordering::SeqCst);
    eprintln!("  the token endpoint refusing the key: {from_spire:?}");
    ensure!(from_spire.0 != tonic::Code::Ok, "spire-server attested without a token");
    ensure!(
        from_ward == from_spire,
        "token refused: ward-server answered {from_ward:?}, spire-server {from_spire:?}"
    );
    let after = (agent_ids(&spire_on_spire)?, agent_ids(&spire_on_ward)?);
    ensure!(after == before, "agents changed: {before:?} → {after:?}");

    ward_server.daemon.ensure_running()?;

    eprintln!("3. without service_account_file: Application Default Credentials");
    let home = root.join("empty-home");
    std::fs::create_dir_all(&home)?;
    let variants = [
        ("adc-file", format!("GOOGLE_APPLICATION_CREDENTIALS={key_file}"), "2001"),
        ("adc-metadata", format!("GCE_METADATA_HOST={METADATA_ADDRESS}"), "3001"),
    ];
    for (name, variable, id) in variants {
        let mut launcher = launcher.clone();
        launcher.extend([format!("HOME={}", home.display()), variable.clone()]);
        eprintln!("  {variable}");
        with_default_credentials(root, spire, ward_bin, gcp, rt, procs, name, &launcher, id)?;
    }
    Ok(())
}

/// A spire-server and a ward-server started by `launcher` (which sets where Application
/// Default Credentials are found) with use_instance_metadata and no service_account_file:
/// instance `id` attests to both with the same agent show, each server asks for its token where
/// the other does, and an unknown instance is refused alike.
#[allow(clippy::too_many_arguments)]
fn with_default_credentials(
    root: &Path,
    spire: &SpireBins,
    ward_bin: &Path,
    gcp: &GcpLab,
    rt: &tokio::runtime::Runtime,
    procs: &mut Procs,
    name: &str,
    launcher: &[String],
    id: &str,
) -> anyhow::Result<()> {
    let spire_server = start_spire_server_with_attestor(
        &spire.server,
        launcher,
        &root.join(format!("spire-server-{name}")),
        &ServerOptions::new(TD),
        &plugin_block(
            "gcp_iit",
            &[
                ("projectid_allow_list", hcl_list(&[PROJECT])),
                ("use_instance_metadata", "true".to_owned()),
                ("allowed_label_keys", hcl_list(LABEL_KEYS)),
                ("allowed_metadata_keys", hcl_list(METADATA_KEYS)),
            ],
        ),
    )?;
    let ward_server = start_ward_server_with_attestor(
        ward_bin,
        launcher,
        &root.join(format!("ward-server-{name}")),
        &ServerOptions::new(TD),
        &format!(
            "[node_attestors.gcp_iit]\nprojectid_allow_list = [{PROJECT:?}]\n\
             use_instance_metadata = true\nallowed_label_keys = {LABEL_KEYS:?}\n\
             allowed_metadata_keys = {METADATA_KEYS:?}\n"
        ),
    )?;
    let spire_cli = AdminCli::new(&spire.server, &spire_server.socket_path);
    let spire_on_ward = AdminCli::new(&spire.server, &ward_server.socket_path);
    let ward_cli = AdminCli::new(ward_bin, &ward_server.socket_path);
    let (spire_port, ward_port) = (spire_server.port, ward_server.port);
    // Kept in `procs` at once, so that their logs are shown if a step fails.
    procs.adc_servers.extend([spire_server, ward_server]);
    let n = procs.adc_servers.len();
    let [spire_server, ward_server] = &mut procs.adc_servers[n - 2..] else {
        anyhow::bail!("two servers were just started");
    };
    wait_ready(&mut spire_server.daemon, &spire_cli)?;
    wait_ready(&mut ward_server.daemon, &ward_cli)?;

    let payload = on_instance(gcp, id, INSTANCE_NAME);
    let agent_id = format!("spiffe://{TD}/spire/agent/gcp_iit/{PROJECT}/{id}");
    let by_spire = rt.block_on(refusal(spire_port, TD, sending(payload.clone())));
    let spire_asked = gcp.last_metadata_request.lock().unwrap().clone();
    let by_ward = rt.block_on(refusal(ward_port, TD, sending(payload)));
    let ward_asked = gcp.last_metadata_request.lock().unwrap().clone();
    ensure!(
        by_spire.0 == tonic::Code::Ok && by_ward.0 == tonic::Code::Ok,
        "spire-server: {by_spire:?}, ward-server: {by_ward:?}"
    );
    let shown = agent_show(&spire_cli, &agent_id)?;
    ensure!(shown.contains("gcp_iit:tag:web"), "no instance selectors:\n{shown}");
    let on_ward = agent_show(&spire_on_ward, &agent_id)?;
    ensure!(on_ward == shown, "ward-server:\n{on_ward}\nspire-server:\n{shown}");
    if name == "adc-metadata" {
        let line = |head: &str| head.lines().next().unwrap_or_default().to_owned();
        eprintln!("   spire-server asked the metadata server: {}", line(&spire_asked));
        ensure!(
            line(&spire_asked).starts_with(
                "GET /computeMetadata/v1/instance/service-accounts/default/token?scopes="
            ) && line(&ward_asked) == line(&spire_asked),
            "metadata token requests: ward-server {ward_asked}\nspire-server {spire_asked}"
        );
    }

    let payload = on_instance(gcp, &format!("{id}9"), "gone-server");
    let from_spire = rt.block_on(refusal(spire_port, TD, sending(payload.clone())));
    let from_ward = rt.block_on(refusal(ward_port, TD, sending(payload)));
    eprintln!("   an instance the API does not know: {from_spire:?}");
    ensure!(from_spire.0 != tonic::Code::Ok, "spire-server attested an unknown instance");
    ensure!(
        from_ward == from_spire,
        "ward-server answered {from_ward:?}, spire-server {from_spire:?}"
    );
    Ok(())
}
