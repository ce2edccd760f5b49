#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! x509pop node attestation both ways with SPIRE v1.13.3, real processes on 127.0.0.1, node
//! certificates made here with rcgen:
//! 1. an unmodified spire-agent with its x509pop plugin attests to ward-server and to
//!    spire-server, and ward-agent with `[node_attestor.x509pop]` attests to spire-server, all
//!    with the same certificate (an RSA key: Go's and ward's RSA-PSS signatures cross over): `spire-server agent show` prints the
//!    same agent (SPIFFE ID, type, re-attestability, selectors) whichever agent attested to
//!    whichever server (serial and expiry normalised);
//! 2. bad evidence — a certificate of another CA, an expired certificate, a wrong and a
//!    replayed challenge response, a truncated payload — is refused by ward-server with the
//!    code and message spire-server gives for the same evidence; the agent list does not
//!    change and the server keeps serving;
//! 3. a node alias entry by `x509pop:ca:fingerprint:` groups a spire-agent and a ward-agent
//!    with different certificates (RSA and ECDSA) on ward-server, and a workload entry under
//!    the alias is served by both agents' Workload APIs;
//! 4. with a 20 s agent SVID both agents attest to ward-server again (their node records get
//!    new serials), as x509pop allows.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::x509pop::{X509popAgentConfig, X509popAttestor, fingerprint};
use ward_tests::agent::{AgentDirs, wait_healthy};
use ward_tests::cli::AdminCli;
use ward_tests::daemon::Daemon;
use ward_tests::node_attestation::scenario::{
    Expected, attest_three_ways, compare_refusals, create_alias_and_workload, ready_pair,
    wait_workload_served,
};
use ward_tests::node_attestation::{
    Procs, Tampered, agent_show, agents, plugin_block, refusal, run_scenario,
    start_spire_agent_with_attestor, start_spire_server_with_attestor,
    start_ward_agent_with_attestor, start_ward_server_with_attestor, truncated,
    wait_attested_again,
};
use ward_tests::quoted_path;
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::SpireBins;

const TD: &str = "example.org";
/// ward-server's agent SVID lifetime: short, so that its agents attest again during the test.
const AGENT_TTL: Duration = Duration::from_secs(20);
const ALIAS_ID: &str = "spiffe://example.org/x509pop-nodes";
const WORKLOAD_ID: &str = "spiffe://example.org/x509pop-workload";

/// A CA that signs node certificates.
struct Ca {
    pem: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(cn: &str) -> Ca {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), der: cert.der().to_vec(), issuer: Issuer::new(p, key) }
}

/// A node certificate and key on disk.
struct Node {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Node {
    fn config(&self) -> X509popAgentConfig {
        X509popAgentConfig {
            private_key_path: self.key.clone(),
            certificate_path: self.cert.clone(),
            intermediates_path: None,
        }
    }

    fn attestor(&self) -> Arc<X509popAttestor> {
        Arc::new(X509popAttestor::new(self.config()).unwrap())
    }

    /// `spiffe://example.org/spire/agent/x509pop/<sha1 of the certificate>`.
    fn agent_id(&self) -> String {
        format!("spiffe://{TD}/spire/agent/x509pop/{}", fingerprint(&self.der))
    }
}

fn node(
    dir: &Path,
    name: &str,
    ca: &Ca,
    alg: &'static rcgen::SignatureAlgorithm,
    edit: impl FnOnce(&mut CertificateParams),
) -> Node {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.subject_alt_names =
        vec![SanType::URI(format!("x509pop://{TD}/datacenter/dc-{name}").try_into().unwrap())];
    edit(&mut p);
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert_path, key_path) =
        (dir.join(format!("{name}.crt.pem")), dir.join(format!("{name}.key.pem")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Node { cert: cert_path, key: key_path, der: cert.der().to_vec() }
}

fn x509pop_server_block(ca_path: &Path) -> String {
    plugin_block("x509pop", &[("ca_bundle_path", quoted_path(ca_path))])
}

fn start_spire_server_x509pop(
    bins: &SpireBins,
    dir: &Path,
    ca_path: &Path,
) -> anyhow::Result<ServerProcess> {
    start_spire_server_with_attestor(
        &bins.server,
        &[],
        dir,
        &ServerOptions::new(TD),
        &x509pop_server_block(ca_path),
    )
}

fn start_ward_server_x509pop(
    bin: &Path,
    dir: &Path,
    ca_path: &Path,
) -> anyhow::Result<ServerProcess> {
    start_ward_server_with_attestor(
        bin,
        &[],
        dir,
        &ServerOptions { agent_ttl: Some(AGENT_TTL), ..ServerOptions::new(TD) },
        &format!("[node_attestors.x509pop]\nca_bundle_path = {}", quoted_path(ca_path)),
    )
}

/// Starts spire-agent with its x509pop plugin (no join token).
fn start_spire_agent_x509pop(
    bins: &SpireBins,
    dir: &Path,
    port: u16,
    bundle: &Path,
    node: &Node,
) -> anyhow::Result<(Daemon, PathBuf)> {
    let block = plugin_block(
        "x509pop",
        &[
            ("private_key_path", quoted_path(&node.key)),
            ("certificate_path", quoted_path(&node.cert)),
        ],
    );
    start_spire_agent_with_attestor(&bins.agent, &[], dir, TD, port, bundle, &block)
}

/// Starts ward-agent with `[node_attestor.x509pop]` (no join token).
fn start_ward_agent_x509pop(
    bin: &Path,
    dirs: &AgentDirs,
    port: u16,
    bundle: &Path,
    node: &Node,
) -> anyhow::Result<Daemon> {
    let toml = format!(
        "[node_attestor.x509pop]\nprivate_key_path = {}\ncertificate_path = {}",
        quoted_path(&node.key),
        quoted_path(&node.cert)
    );
    start_ward_agent_with_attestor(bin, &[], dirs, TD, port, bundle, &toml)
}

/// The answer with one bit of its signature flipped.
fn flip_signature(answer: Vec<u8>) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let r = doc["ecdsa_signature"]["r"].as_str().unwrap().to_owned();
    let mut bytes = base64_decode(&r);
    bytes[0] ^= 1;
    doc["ecdsa_signature"]["r"] = base64_encode(&bytes).into();
    serde_json::to_vec(&doc).unwrap()
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The bad-evidence cases, each as an attestor; the replay records its answer first.
fn bad_evidence(
    foreign: &Node,
    expired: &Node,
    good: &Node,
    recorded: &Arc<Mutex<Option<Vec<u8>>>>,
) -> Vec<(&'static str, Arc<dyn NodeAttestor>)> {
    let replayed = recorded.clone();
    vec![
        ("certificate of another CA", foreign.attestor()),
        ("expired certificate", expired.attestor()),
        ("wrong challenge response", Tampered::answer(good.attestor(), Box::new(flip_signature))),
        (
            "replayed challenge response",
            Tampered::answer(
                good.attestor(),
                Box::new(move |_| replayed.lock().unwrap().clone().unwrap()),
            ),
        ),
        ("truncated payload", Tampered::payload(good.attestor(), Box::new(truncated))),
    ]
}

/// Go prints the validation time, which differs between two runs.
fn without_current_time(message: &str) -> String {
    regex::Regex::new(r"current time \S+ is")
        .unwrap()
        .replace(message, "current time <now> is")
        .into_owned()
}

#[test]
fn x509pop_attestation_interoperates_with_spire() {
    run_scenario("x509pop", "x5", scenario);
}

fn scenario(
    root: &Path,
    spire: &SpireBins,
    ward_bin: &Path,
    agent_bin: &Path,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    eprintln!("0. a CA and node certificates; both servers trust the CA");
    let certs = root.join("certs");
    let node_ca = ca("x509pop node CA");
    std::fs::create_dir_all(&certs)?;
    let ca_path = certs.join("ca.pem");
    std::fs::write(&ca_path, &node_ca.pem)?;
    let a = node(&certs, "node-a", &node_ca, &rcgen::PKCS_RSA_SHA256, |_| {});
    let b = node(&certs, "node-b", &node_ca, &rcgen::PKCS_ECDSA_P256_SHA256, |_| {});
    // Attests in-process only, so the running agents' own node records stay as they are.
    let c = node(&certs, "node-c", &node_ca, &rcgen::PKCS_ECDSA_P256_SHA256, |_| {});
    let other_ca = ca("another CA");
    let foreign = node(&certs, "node-foreign", &other_ca, &rcgen::PKCS_ECDSA_P256_SHA256, |_| {});
    let expired = node(&certs, "node-expired", &node_ca, &rcgen::PKCS_ECDSA_P256_SHA256, |p| {
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2024, 1, 2);
    });

    let spire_server = procs.spire_server.insert(start_spire_server_x509pop(
        spire,
        &root.join("spire-server"),
        &ca_path,
    )?);
    let ward_server = procs.ward_server.insert(start_ward_server_x509pop(
        ward_bin,
        &root.join("ward-server"),
        &ca_path,
    )?);
    let pair = ready_pair(spire, ward_bin, spire_server, ward_server, root)?;

    eprintln!("1. the same certificate through each agent to each server");
    let id_a = a.agent_id();
    let expected = Expected {
        id: &id_a,
        attestation_type: "x509pop",
        selectors: vec![
            "x509pop:subject:cn:node-a".to_owned(),
            format!("x509pop:ca:fingerprint:{}", fingerprint(&node_ca.der)),
            "x509pop:san:datacenter:dc-node-a".to_owned(),
        ],
    };
    let (_, agent) = attest_three_ways(
        root,
        agent_bin,
        &pair,
        spire_server,
        ward_server,
        &expected,
        &|dir, port, bundle| start_spire_agent_x509pop(spire, dir, port, bundle, &a),
        &|dirs, port, bundle| start_ward_agent_x509pop(agent_bin, dirs, port, bundle, &a),
    )?;
    procs.agents.push(agent);

    eprintln!("2. bad evidence gets spire-server's code and message from ward-server");
    let rt = tokio::runtime::Runtime::new()?;
    let recorded = Arc::new(Mutex::new(None));
    // A good attestation on each server, recording the answer a replay sends again.
    for port in [spire_server.port, ward_server.port] {
        let rec = recorded.clone();
        let recorder = Tampered::answer(
            c.attestor(),
            Box::new(move |ans| {
                *rec.lock().unwrap() = Some(ans.clone());
                ans
            }),
        );
        let (code, message) = rt.block_on(refusal(port, TD, recorder));
        ensure!(code == tonic::Code::Ok, "a good attestation failed: {code:?} {message}");
    }
    // Nothing the bad evidence could name changes: the agents listed, and node-c's record
    // (the running agents re-attest on their own schedule).
    let stored = |cli: &AdminCli| -> anyhow::Result<(Vec<String>, Option<String>)> {
        let listed = agents(cli)?;
        let c_serial = listed.iter().find(|(id, _)| *id == c.agent_id()).map(|(_, s)| s.clone());
        Ok((listed.into_iter().map(|(id, _)| id).collect(), c_serial))
    };
    let before_spire = stored(&pair.spire_on_spire)?;
    let before_ward = stored(&pair.spire_on_ward)?;
    ensure!(before_ward.1.is_some(), "node-c is not attested to ward-server");
    compare_refusals(
        &rt,
        TD,
        spire_server.port,
        ward_server.port,
        bad_evidence(&foreign, &expired, &c, &recorded),
        without_current_time,
    )?;
    ensure!(stored(&pair.spire_on_spire)? == before_spire, "spire-server's agent list changed");
    ensure!(stored(&pair.spire_on_ward)? == before_ward, "ward-server's agent list changed");
    pair.ward_cli.healthcheck().context("ward-server after the bad evidence")?;
    pair.spire_on_ward
        .healthcheck()
        .context("ward-server after the bad evidence (spire-server CLI)")?;

    eprintln!("3. a node alias by CA fingerprint groups two agents on ward-server");
    create_alias_and_workload(
        &pair.spire_on_ward,
        root,
        ALIAS_ID,
        &format!("x509pop:ca:fingerprint:{}", fingerprint(&node_ca.der)),
        WORKLOAD_ID,
    )?;
    let dirs_b = AgentDirs::new(root, "wa-ws");
    let mut agent_b =
        start_ward_agent_x509pop(agent_bin, &dirs_b, ward_server.port, &pair.ward_bundle, &b)?;
    wait_healthy(agent_bin, &mut agent_b, &dirs_b.admin_socket)?;
    let listed: Vec<String> = agents(&pair.spire_on_ward)?.into_iter().map(|(id, _)| id).collect();
    let mut want = vec![id_a.clone(), b.agent_id(), c.agent_id()];
    want.sort();
    ensure!(listed == want, "agents {listed:?}, expected {want:?}");
    let show_b = agent_show(&pair.spire_on_ward, &b.agent_id())?;
    ensure!(show_b.contains("x509pop:subject:cn:node-b"), "{show_b}");
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

    eprintln!("4. both agents attest again (x509pop allows it) when their SVIDs age");
    wait_attested_again(&pair.spire_on_ward, &mut procs.agents, &[id_a.clone(), b.agent_id()])?;
    drop(rt);
    Ok(())
}
