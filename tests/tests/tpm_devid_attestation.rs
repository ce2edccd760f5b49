#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! tpm_devid node attestation both ways with SPIRE v1.13.3, real processes on 127.0.0.1 and a
//! software TPM (swtpm on a Unix socket, provisioned here with tpm2-tools: an RSA EK whose
//! certificate, signed by a test manufacturer CA, is in NV index 0x01c00002, and DevID keys
//! whose certificates a test DevID CA signs):
//! 1. for an RSA and a P-256 DevID key, an unmodified spire-agent with its tpm_devid plugin
//!    attests to spire-server and to ward-server, and ward-agent with
//!    `[node_attestor.tpm_devid]` attests to spire-server: `spire-server agent show` prints the
//!    same agent (SPIFFE ID, type, re-attestability, selectors) whichever agent attested to
//!    whichever server (serial and expiry normalised);
//! 2. bad evidence — a DevID certificate of another CA, an EK certificate of another CA, a
//!    forged and a replayed nonce signature, a wrong credential answer, a truncated payload —
//!    is refused by ward-server with the code and message spire-server gives for the same
//!    evidence; the agent lists do not change and the server keeps serving.
//!
//! Needs `swtpm` and `tpm2-tools` (installed by `.ci/run`) and SPIRE's binaries (Go).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SubjectPublicKeyInfo,
};
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::tpm_devid::{TpmDevidAgentConfig, TpmDevidAttestor};
use ward_attest::node_attestor::x509pop::fingerprint;
use ward_tests::agent::{AgentDirs, wait_healthy};
use ward_tests::agent_scenario::wait_ready;
use ward_tests::cli::AdminCli;
use ward_tests::daemon::Daemon;
use ward_tests::node_attestation::{
    Tampered, agent_show, agents, plugin_block, refusal, start_spire_agent_with_attestor,
    start_spire_server_with_attestor, start_ward_agent_with_attestor,
    start_ward_server_with_attestor, truncated, wait_attested,
};
use ward_tests::quoted_path;
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::SpireBins;
use ward_tests::swtpm::{DevidKey, Swtpm};
use ward_tests::ward::{ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";

/// A CA and its signing key.
struct TestCa {
    pem: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(cn: &str) -> Self {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self { pem: cert.pem(), der: cert.der().to_vec(), issuer: Issuer::new(p, key) }
    }

    /// A certificate for the key `spki` (DER), with subject CN `cn` if any; (PEM, DER).
    fn certify(&self, spki: &[u8], cn: Option<&str>) -> (String, Vec<u8>) {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        let public = SubjectPublicKeyInfo::from_der(spki).unwrap();
        let cert = p.signed_by(&public, &self.issuer).unwrap();
        (cert.pem(), cert.der().to_vec())
    }
}

/// A node: a DevID key in the TPM and its certificate.
struct Node {
    key: DevidKey,
    cert: PathBuf,
    der: Vec<u8>,
}

impl Node {
    fn new(dir: &Path, tpm: &Swtpm, name: &str, rsa: bool, ca: &TestCa) -> anyhow::Result<Self> {
        let key = tpm.create_devid(name, rsa)?;
        let (pem, der) = ca.certify(&key.spki, Some(name));
        let cert = dir.join(format!("{name}.crt.pem"));
        std::fs::write(&cert, pem)?;
        Ok(Self { key, cert, der })
    }

    /// The same key with a certificate from `ca`.
    fn recertified(&self, dir: &Path, name: &str, ca: &TestCa) -> anyhow::Result<Self> {
        let (pem, der) = ca.certify(&self.key.spki, Some(name));
        let cert = dir.join(format!("{name}.crt.pem"));
        std::fs::write(&cert, pem)?;
        let key = DevidKey {
            public_path: self.key.public_path.clone(),
            private_path: self.key.private_path.clone(),
            spki: self.key.spki.clone(),
        };
        Ok(Self { key, cert, der })
    }

    /// `spiffe://example.org/spire/agent/tpm_devid/<sha1 of the DevID certificate>`.
    fn agent_id(&self) -> String {
        format!("spiffe://{TD}/spire/agent/tpm_devid/{}", fingerprint(&self.der))
    }

    /// Keys and values of the agent `plugin_data`, quoted for HCL or TOML alike.
    fn agent_data(&self, tpm: &Swtpm) -> Vec<(&'static str, String)> {
        vec![
            ("devid_cert_path", quoted_path(&self.cert)),
            ("devid_priv_path", quoted_path(&self.key.private_path)),
            ("devid_pub_path", quoted_path(&self.key.public_path)),
            ("tpm_device_path", quoted_path(&tpm.socket)),
        ]
    }

    fn attestor(&self, tpm: &Swtpm) -> Arc<dyn NodeAttestor> {
        Arc::new(
            TpmDevidAttestor::new(TpmDevidAgentConfig {
                devid_cert_path: self.cert.clone(),
                devid_priv_path: self.key.private_path.clone(),
                devid_pub_path: self.key.public_path.clone(),
                tpm_device_path: Some(tpm.socket.clone()),
                ..TpmDevidAgentConfig::default()
            })
            .unwrap(),
        )
    }
}

fn start_spire_agent_tpm(
    bins: &SpireBins,
    dir: &Path,
    port: u16,
    bundle: &Path,
    node: &Node,
    tpm: &Swtpm,
) -> anyhow::Result<Daemon> {
    let block = plugin_block("tpm_devid", &node.agent_data(tpm));
    Ok(start_spire_agent_with_attestor(&bins.agent, &[], dir, TD, port, bundle, &block)?.0)
}

fn start_ward_agent_tpm(
    bin: &Path,
    dirs: &AgentDirs,
    port: u16,
    bundle: &Path,
    node: &Node,
    tpm: &Swtpm,
) -> anyhow::Result<Daemon> {
    let mut toml = "[node_attestor.tpm_devid]\n".to_owned();
    for (k, v) in node.agent_data(tpm) {
        toml.push_str(&format!("{k} = {v}\n"));
    }
    start_ward_agent_with_attestor(bin, &[], dirs, TD, port, bundle, &toml)
}

/// `json` with the base64 member `key` rewritten by `edit`.
fn edit_member(json: &[u8], key: &str, edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(json).unwrap();
    let mut bytes = STANDARD.decode(doc[key].as_str().unwrap()).unwrap();
    edit(&mut bytes);
    doc[key] = STANDARD.encode(&bytes).into();
    serde_json::to_vec(&doc).unwrap()
}

#[test]
fn tpm_devid_attestation_interoperates_with_spire() {
    let tmp = tempfile::Builder::new().prefix("ward-tpm").tempdir().unwrap();
    let spire = SpireBins::locate().unwrap();
    let ward_bin = ward_server_bin().unwrap();
    let agent_bin = ward_agent_bin().unwrap();
    let mut procs = Procs::default();
    if let Err(e) = scenario(tmp.path(), &spire, &ward_bin, &agent_bin, &mut procs) {
        // The daemons are dropped during the panic, which prints their logs.
        panic!("tpm_devid scenario failed: {e:#}");
    }
}

/// Every process the scenario starts; dropped (killed) when the test ends.
#[derive(Default)]
struct Procs {
    tpm: Option<Swtpm>,
    spire_server: Option<ServerProcess>,
    ward_server: Option<ServerProcess>,
}

fn scenario(
    root: &Path,
    spire: &SpireBins,
    ward_bin: &Path,
    agent_bin: &Path,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    eprintln!("0. a TPM with an EK certificate and two DevID keys; both servers trust the CAs");
    let certs = root.join("certs");
    std::fs::create_dir_all(&certs)?;
    let devid_ca = TestCa::new("DevID Root CA");
    let ek_ca = TestCa::new("TPM Manufacturer CA");
    let other_ca = TestCa::new("Unrelated CA");
    let devid_ca_path = certs.join("devid-ca.pem");
    std::fs::write(&devid_ca_path, &devid_ca.pem)?;
    let ek_ca_path = certs.join("ek-ca.pem");
    std::fs::write(&ek_ca_path, &ek_ca.pem)?;

    let tpm = procs.tpm.insert(Swtpm::start(&root.join("tpm"))?);
    let ek_spki = tpm.ek_spki()?;
    tpm.store_ek_certificate(&ek_ca.certify(&ek_spki, None).1)?;
    let a = Node::new(&certs, tpm, "node-a", true, &devid_ca)?;
    let b = Node::new(&certs, tpm, "node-b", false, &devid_ca)?;
    let tpm: &Swtpm = tpm;

    let server_data = [
        ("devid_ca_path", quoted_path(&devid_ca_path)),
        ("endorsement_ca_path", quoted_path(&ek_ca_path)),
    ];
    let spire_server = procs.spire_server.insert(start_spire_server_with_attestor(
        &spire.server,
        &[],
        &root.join("spire-server"),
        &ServerOptions::new(TD),
        &plugin_block("tpm_devid", &server_data),
    )?);
    let ward_server = procs.ward_server.insert(start_ward_server_with_attestor(
        ward_bin,
        &[],
        &root.join("ward-server"),
        &ServerOptions::new(TD),
        &format!(
            "[node_attestors.tpm_devid]\n{}",
            server_data.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>()
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

    eprintln!("1. the same DevID through each agent to each server");
    for (node, label) in [(&a, "rsa"), (&b, "ecdsa")] {
        let id = node.agent_id();
        // spire-agent -> spire-server: the reference.
        let mut agent = start_spire_agent_tpm(
            spire,
            &root.join(format!("sa-ss-{label}")),
            spire_server.port,
            &spire_bundle,
            node,
            tpm,
        )?;
        wait_attested(&spire_on_spire, &mut [&mut agent, &mut spire_server.daemon], &id)?;
        let reference = agent_show(&spire_on_spire, &id)?;
        agent.terminate(Duration::from_secs(10))?;
        eprintln!("{reference}");
        for want in [
            "Attestation type  : tpm_devid".to_owned(),
            "Can re-attest     : true".to_owned(),
            format!("tpm_devid:subject:cn:{}", if label == "rsa" { "node-a" } else { "node-b" }),
            "tpm_devid:issuer:cn:DevID Root CA".to_owned(),
            format!("tpm_devid:ca:fingerprint:{}", fingerprint(&devid_ca.der)),
        ] {
            ensure!(reference.contains(&want), "spire-server's agent lacks {want}:\n{reference}");
        }
        // spire-agent -> ward-server.
        let mut agent = start_spire_agent_tpm(
            spire,
            &root.join(format!("sa-ws-{label}")),
            ward_server.port,
            &ward_bundle,
            node,
            tpm,
        )?;
        wait_attested(&spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], &id)?;
        let on_ward = agent_show(&spire_on_ward, &id)?;
        agent.terminate(Duration::from_secs(10))?;
        ensure!(
            on_ward == reference,
            "spire-agent -> ward-server:\n{on_ward}\nspire-agent -> spire-server:\n{reference}"
        );
        // ward-agent -> spire-server (the node's record there is replaced).
        let dirs = AgentDirs::new(root, &format!("wa-ss-{label}"));
        let mut agent =
            start_ward_agent_tpm(agent_bin, &dirs, spire_server.port, &spire_bundle, node, tpm)?;
        wait_healthy(agent_bin, &mut agent, &dirs.admin_socket)?;
        let by_ward_agent = agent_show(&spire_on_spire, &id)?;
        agent.terminate(Duration::from_secs(10))?;
        ensure!(
            by_ward_agent == reference,
            "ward-agent -> spire-server:\n{by_ward_agent}\nspire-agent -> spire-server:\n{reference}"
        );
    }

    eprintln!("2. bad evidence gets spire-server's code and message from ward-server");
    let rt = tokio::runtime::Runtime::new()?;
    let recorded = Arc::new(Mutex::new(None));
    for port in [spire_server.port, ward_server.port] {
        let rec = recorded.clone();
        let recorder = Tampered::answer(
            a.attestor(tpm),
            Box::new(move |ans| {
                *rec.lock().unwrap() = Some(ans.clone());
                ans
            }),
        );
        let (code, message) = rt.block_on(refusal(port, TD, recorder));
        ensure!(code == tonic::Code::Ok, "a good attestation failed: {code:?} {message}");
    }
    let before_spire = agents(&spire_on_spire)?;
    let before_ward = agents(&spire_on_ward)?;
    let foreign = a.recertified(&certs, "node-foreign", &other_ca)?;
    let foreign_ek = other_ca.certify(&ek_spki, None).1;
    let replayed = recorded.clone();
    let cases: Vec<(&str, Arc<dyn NodeAttestor>)> = vec![
        ("DevID certificate of another CA", foreign.attestor(tpm)),
        (
            "EK certificate of another CA",
            Tampered::payload(
                a.attestor(tpm),
                Box::new(move |p| edit_member(&p, "EKCert", |b| *b = foreign_ek.clone())),
            ),
        ),
        (
            "forged nonce signature",
            Tampered::answer(
                a.attestor(tpm),
                Box::new(|ans| edit_member(&ans, "DevID", |b| b[0] ^= 1)),
            ),
        ),
        (
            "replayed challenge response",
            Tampered::answer(
                a.attestor(tpm),
                Box::new(move |_| replayed.lock().unwrap().clone().unwrap()),
            ),
        ),
        (
            "wrong credential answer",
            Tampered::answer(
                a.attestor(tpm),
                Box::new(|ans| edit_member(&ans, "CredActivation", |b| b[0] ^= 1)),
            ),
        ),
        ("truncated payload", Tampered::payload(a.attestor(tpm), Box::new(truncated))),
    ];
    for (what, attestor) in cases {
        let spire_says = rt.block_on(refusal(spire_server.port, TD, attestor.clone()));
        let ward_says = rt.block_on(refusal(ward_server.port, TD, attestor));
        eprintln!("   {what}: spire-server {spire_says:?}, ward-server {ward_says:?}");
        ensure!(spire_says.0 != tonic::Code::Ok, "spire-server accepted the {what}");
        ensure!(
            ward_says == spire_says,
            "{what}: ward-server said {ward_says:?}, spire-server {spire_says:?}"
        );
    }
    ensure!(agents(&spire_on_spire)? == before_spire, "spire-server's agent list changed");
    ensure!(agents(&spire_on_ward)? == before_ward, "ward-server's agent list changed");
    ward_cli.healthcheck().context("ward-server after the bad evidence")?;
    drop(rt);
    Ok(())
}
