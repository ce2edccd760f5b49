#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! k8s_psat node attestation both ways with SPIRE v1.13.3 against a real Kubernetes API
//! server: etcd and an unmodified kube-apiserver v1.34 on 127.0.0.1 (built by
//! `tests/interop/kubernetes/build.sh`, so the first run needs Go), with Nodes,
//! ServiceAccounts and Pods created here and bound service-account tokens minted with the
//! TokenRequest API (audience `spire-server`).
//! 1. an unmodified spire-agent with its k8s_psat plugin attests to spire-server and to
//!    ward-server, and ward-agent with `[node_attestor.k8s_psat]` attests to spire-server,
//!    all with the same pod's token: `spire-server agent show` prints the same agent (SPIFFE
//!    ID `k8s_psat/<cluster>/<node UID>`, type, re-attestability, selectors) whichever agent
//!    attested to whichever server. spire-server reads the cluster with a client certificate,
//!    ward-server with a bearer token;
//! 2. bad evidence — a token for another audience, a token of a service account not on the
//!    allow list, a token bound to no pod, an unknown cluster, an expired token (signed
//!    with the API server's key), a forged token (signed with another key), a truncated
//!    payload — is refused by ward-server with the code and message spire-server gives for
//!    the same evidence; the agent lists do not change and the server keeps serving;
//! 3. a node alias entry by `k8s_psat:cluster:<name>` groups a spire-agent and a ward-agent
//!    on two nodes on ward-server, and a workload entry under the alias is served by both
//!    agents' Workload APIs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, ensure};
use serde_json::json;
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::k8s_psat::{K8sPsatAgentConfig, K8sPsatAttestor};
use ward_tests::agent::{AgentDirs, wait_healthy};
use ward_tests::daemon::Daemon;
use ward_tests::kubernetes::{KubeBins, KubeCluster};
use ward_tests::node_attestation::scenario::{
    Expected, attest_three_ways, compare_refusals, create_alias_and_workload, ready_pair,
    wait_workload_served,
};
use ward_tests::node_attestation::{
    Tampered, agent_show, agents, hcl_list, plugin_block, refusal, start_spire_agent_with_attestor,
    start_spire_server_with_attestor, start_ward_agent_with_attestor,
    start_ward_server_with_attestor, truncated,
};
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::SpireBins;
use ward_tests::ward::{ward_agent_bin, ward_server_bin};
use ward_tests::{quoted, quoted_path};

const TD: &str = "example.org";
const CLUSTER: &str = "test-cluster";
const NS: &str = "spire";
const SA: &str = "spire-agent";
const ALIAS_ID: &str = "spiffe://example.org/k8s-psat-nodes";
const WORKLOAD_ID: &str = "spiffe://example.org/k8s-psat-workload";

#[test]
fn k8s_psat_attestation_interoperates_with_spire() {
    let tmp = tempfile::Builder::new().prefix("ward-psat").tempdir().unwrap();
    let root = tmp.path();
    let kube = KubeBins::locate().unwrap();
    let spire = SpireBins::locate().unwrap();
    let ward_bin = ward_server_bin().unwrap();
    let agent_bin = ward_agent_bin().unwrap();
    let mut procs = Procs::default();
    if let Err(e) = scenario(root, &kube, &spire, &ward_bin, &agent_bin, &mut procs) {
        // The daemons are dropped during the panic, which prints their logs.
        panic!("k8s_psat scenario failed: {e:#}");
    }
}

/// Every process the scenario starts; dropped (killed) when the test ends, agents first.
#[derive(Default)]
struct Procs {
    agents: Vec<Daemon>,
    spire_server: Option<ServerProcess>,
    ward_server: Option<ServerProcess>,
    cluster: Option<KubeCluster>,
}

/// The server plugin data of one cluster read through `kubeconfig`.
fn server_cluster_hcl(kubeconfig: &Path) -> String {
    format!(
        "{{\n                {} = {{\n                    service_account_allow_list = {}\n                    kube_config_file = {}\n                    allowed_node_label_keys = {}\n                    allowed_pod_label_keys = {}\n                }}\n            }}",
        quoted(CLUSTER),
        hcl_list(&[format!("{NS}:{SA}").as_str()]),
        quoted_path(kubeconfig),
        hcl_list(&["topology.kubernetes.io/zone"]),
        hcl_list(&["app"]),
    )
}

fn server_cluster_toml(kubeconfig: &Path) -> String {
    format!(
        "[node_attestors.k8s_psat.clusters.{}]\nservice_account_allow_list = [{}]\n\
         kube_config_file = {}\nallowed_node_label_keys = [\"topology.kubernetes.io/zone\"]\n\
         allowed_pod_label_keys = [\"app\"]\n",
        quoted(CLUSTER),
        quoted(&format!("{NS}:{SA}")),
        quoted_path(kubeconfig),
    )
}

fn start_spire_agent_psat(
    spire: &SpireBins,
    dir: &Path,
    port: u16,
    bundle: &Path,
    token: &Path,
) -> anyhow::Result<(Daemon, PathBuf)> {
    let block = plugin_block(
        "k8s_psat",
        &[("cluster", quoted(CLUSTER)), ("token_path", quoted_path(token))],
    );
    start_spire_agent_with_attestor(&spire.agent, &[], dir, TD, port, bundle, &block)
}

fn start_ward_agent_psat(
    bin: &Path,
    dirs: &AgentDirs,
    port: u16,
    bundle: &Path,
    token: &Path,
) -> anyhow::Result<Daemon> {
    let toml = format!(
        "[node_attestor.k8s_psat]\ncluster = {}\ntoken_path = {}",
        quoted(CLUSTER),
        quoted_path(token)
    );
    start_ward_agent_with_attestor(bin, &[], dirs, TD, port, bundle, &toml)
}

/// An in-process attestor presenting `token` for `cluster`.
fn attestor(dir: &Path, name: &str, cluster: &str, token: &str) -> Arc<dyn NodeAttestor> {
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, token).unwrap();
    Arc::new(
        K8sPsatAttestor::new(K8sPsatAgentConfig { cluster: cluster.to_owned(), token_path: path })
            .unwrap(),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn scenario(
    root: &Path,
    kube: &KubeBins,
    spire: &SpireBins,
    ward_bin: &Path,
    agent_bin: &Path,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    eprintln!("0. a Kubernetes API server with two nodes and two agent pods");
    let cluster = procs.cluster.insert(KubeCluster::start(kube, &root.join("kube"))?);
    cluster.create_namespace(NS)?;
    cluster.create_service_account(NS, SA)?;
    cluster.create_service_account("default", "intruder")?;
    let node_a = cluster
        .create_node("node-a", &json!({ "topology.kubernetes.io/zone": "zone-1", "rack": "r1" }))?;
    let node_b =
        cluster.create_node("node-b", &json!({ "topology.kubernetes.io/zone": "zone-2" }))?;
    let pod_a = cluster.create_pod(
        NS,
        "agent-a",
        SA,
        "node-a",
        &json!({ "app": "spire-agent", "tier": "infra" }),
        "10.0.0.11",
    )?;
    let pod_b = cluster.create_pod(
        NS,
        "agent-b",
        SA,
        "node-b",
        &json!({ "app": "spire-agent" }),
        "10.0.0.12",
    )?;
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let token_a = cluster.token_request(NS, SA, &["spire-server"], Some(("agent-a", &pod_a)))?;
    let token_b = cluster.token_request(NS, SA, &["spire-server"], Some(("agent-b", &pod_b)))?;
    let token_a_path = tokens.join("agent-a");
    std::fs::write(&token_a_path, &token_a)?;
    let token_b_path = tokens.join("agent-b");
    std::fs::write(&token_b_path, &token_b)?;
    let id_a = format!("spiffe://{TD}/spire/agent/k8s_psat/{CLUSTER}/{node_a}");
    let id_b = format!("spiffe://{TD}/spire/agent/k8s_psat/{CLUSTER}/{node_b}");

    let spire_block =
        plugin_block("k8s_psat", &[("clusters", server_cluster_hcl(&cluster.admin_kubeconfig))]);
    let spire_server = procs.spire_server.insert(start_spire_server_with_attestor(
        &spire.server,
        &[],
        &root.join("spire-server"),
        &ServerOptions::new(TD),
        &spire_block,
    )?);
    let ward_server = procs.ward_server.insert(start_ward_server_with_attestor(
        ward_bin,
        &[],
        &root.join("ward-server"),
        &ServerOptions::new(TD),
        &server_cluster_toml(&cluster.token_kubeconfig),
    )?);
    let pair = ready_pair(spire, ward_bin, spire_server, ward_server, root)?;

    eprintln!("1. the same pod's token through each agent to each server");
    let expected = Expected {
        id: &id_a,
        attestation_type: "k8s_psat",
        selectors: vec![
            format!("k8s_psat:cluster:{CLUSTER}"),
            format!("k8s_psat:agent_ns:{NS}"),
            format!("k8s_psat:agent_sa:{SA}"),
            "k8s_psat:agent_pod_name:agent-a".to_owned(),
            format!("k8s_psat:agent_pod_uid:{pod_a}"),
            "k8s_psat:agent_node_ip:10.0.0.11".to_owned(),
            "k8s_psat:agent_node_name:node-a".to_owned(),
            format!("k8s_psat:agent_node_uid:{node_a}"),
            "k8s_psat:agent_node_label:topology.kubernetes.io/zone:zone-1".to_owned(),
            "k8s_psat:agent_pod_label:app:spire-agent".to_owned(),
        ],
    };
    let (reference, agent) = attest_three_ways(
        root,
        agent_bin,
        &pair,
        spire_server,
        ward_server,
        &expected,
        &|dir, port, bundle| start_spire_agent_psat(spire, dir, port, bundle, &token_a_path),
        &|dirs, port, bundle| start_ward_agent_psat(agent_bin, dirs, port, bundle, &token_a_path),
    )?;
    procs.agents.push(agent);
    for unwanted in ["rack", "tier"] {
        ensure!(!reference.contains(unwanted), "label {unwanted} is not allowed:\n{reference}");
    }

    eprintln!("2. bad evidence gets spire-server's code and message from ward-server");
    let wrong_audience =
        cluster.token_request(NS, SA, &["elsewhere"], Some(("agent-a", &pod_a)))?;
    let not_allowed = cluster.token_request("default", "intruder", &["spire-server"], None)?;
    let unbound = cluster.token_request(NS, SA, &["spire-server"], None)?;
    let expired = cluster.resign(&token_a, false, |claims| {
        let past = now() - 7200;
        claims["iat"] = json!(past - 3600);
        claims["nbf"] = json!(past - 3600);
        claims["exp"] = json!(past);
    })?;
    let forged = cluster.resign(&token_a, true, |_| {})?;
    let resigned = cluster.resign(&token_a, false, |_| {})?;
    let bad: Vec<(&str, Arc<dyn NodeAttestor>)> = vec![
        ("token for another audience", attestor(&tokens, "aud", CLUSTER, &wrong_audience)),
        ("service account not allowed", attestor(&tokens, "sa", CLUSTER, &not_allowed)),
        ("token bound to no pod", attestor(&tokens, "unbound", CLUSTER, &unbound)),
        ("unknown cluster", attestor(&tokens, "cluster", "other-cluster", &token_a)),
        ("expired token", attestor(&tokens, "expired", CLUSTER, &expired)),
        ("forged token", attestor(&tokens, "forged", CLUSTER, &forged)),
        (
            "truncated payload",
            Tampered::payload(attestor(&tokens, "trunc", CLUSTER, &token_a), Box::new(truncated)),
        ),
    ];
    let rt = tokio::runtime::Runtime::new()?;
    let before_spire = agents(&pair.spire_on_spire)?;
    let before_ward = agents(&pair.spire_on_ward)?;
    compare_refusals(&rt, TD, spire_server.port, ward_server.port, bad, str::to_owned)?;
    ensure!(agents(&pair.spire_on_spire)? == before_spire, "spire-server's agent list changed");
    ensure!(agents(&pair.spire_on_ward)? == before_ward, "ward-server's agent list changed");
    // spire-server (whose agent has stopped) takes the same claims signed with the API
    // server's own key: the expired token is refused for its time, not its signature.
    let resigned_says = rt.block_on(refusal(
        spire_server.port,
        TD,
        attestor(&tokens, "resigned", CLUSTER, &resigned),
    ));
    ensure!(resigned_says.0 == tonic::Code::Ok, "a re-signed valid token: {resigned_says:?}");
    pair.ward_cli.healthcheck().context("ward-server after the bad evidence")?;
    pair.spire_on_ward
        .healthcheck()
        .context("ward-server after the bad evidence (spire-server CLI)")?;

    eprintln!("3. a node alias by cluster groups two agents on ward-server");
    create_alias_and_workload(
        &pair.spire_on_ward,
        root,
        ALIAS_ID,
        &format!("k8s_psat:cluster:{CLUSTER}"),
        WORKLOAD_ID,
    )?;
    let dirs_b = AgentDirs::new(root, "wa-ws");
    let mut agent_b = start_ward_agent_psat(
        agent_bin,
        &dirs_b,
        ward_server.port,
        &pair.ward_bundle,
        &token_b_path,
    )?;
    wait_healthy(agent_bin, &mut agent_b, &dirs_b.admin_socket)?;
    let listed: Vec<String> = agents(&pair.spire_on_ward)?.into_iter().map(|(id, _)| id).collect();
    let mut want = vec![id_a.clone(), id_b.clone()];
    want.sort();
    ensure!(listed == want, "agents {listed:?}, expected {want:?}");
    let show_b = agent_show(&pair.spire_on_ward, &id_b)?;
    ensure!(
        show_b.contains("k8s_psat:agent_node_label:topology.kubernetes.io/zone:zone-2"),
        "{show_b}"
    );
    procs.agents.push(agent_b);
    wait_workload_served(
        &spire.agent,
        root,
        &[
            ("spire-agent", root.join("sa-ws").join("workload.sock")),
            ("ward-agent", dirs_b.socket.clone()),
        ],
        &mut procs.agents,
        WORKLOAD_ID,
    )?;
    drop(rt);
    Ok(())
}
