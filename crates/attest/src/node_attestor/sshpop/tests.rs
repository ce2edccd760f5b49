//! Keys and certificates come from `ssh-keygen` (OpenSSH's client tools), as hosts get them.

use std::process::Command;

use super::*;
use serde_json::Value;

const TD: &str = "example.org";

/// A directory of keys and certificates made by `ssh-keygen`.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("ssh-keygen").args(args).current_dir(self.dir.path()).output();
        let out = out.expect("ssh-keygen runs (OpenSSH client tools installed)");
        assert!(
            out.status.success(),
            "ssh-keygen {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A key pair `name` / `name.pub`; `kind` is `ed25519`, `ecdsa:<bits>` or `rsa:<bits>`.
    fn key(&self, name: &str, kind: &str) -> PathBuf {
        let (t, bits) = kind.split_once(':').unwrap_or((kind, ""));
        let mut args = vec!["-q", "-t", t, "-N", "", "-C", name, "-f", name];
        if !bits.is_empty() {
            args.extend(["-b", bits]);
        }
        self.run(&args);
        self.path(name)
    }

    /// Signs `host.pub` with `ca`; `extra` are more `ssh-keygen` options (`-h`, `-n`, `-V`).
    fn sign(&self, ca: &str, host: &str, extra: &[&str]) -> PathBuf {
        let mut args = vec!["-q", "-s", ca, "-I", "node1"];
        args.extend(extra);
        let public = format!("{host}.pub");
        args.push(&public);
        self.run(&args);
        self.path(&format!("{host}-cert.pub"))
    }

    fn ca_line(&self, ca: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{ca}.pub"))).unwrap().trim().to_owned()
    }
}

const HOST: &[&str] = &["-h", "-n", "node1.example.org,node1"];

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
    )
    .unwrap()
}

fn verifier(cas: Vec<String>, domain: &str, template: Option<&str>) -> SshpopVerifier {
    SshpopVerifier::new(SshpopServerConfig {
        trust_domain: TrustDomain::new(TD).unwrap(),
        cert_authorities: cas,
        canonical_domain: domain.into(),
        agent_path_template: template.map(str::to_owned),
    })
    .unwrap()
}

fn attestor(keys: &Keys, host: &str) -> SshpopAttestor {
    SshpopAttestor::new(SshpopAgentConfig {
        host_key_path: keys.path(host),
        host_cert_path: keys.path(&format!("{host}-cert.pub")),
    })
    .unwrap()
}

/// The certificate's wire bytes, from its file.
fn cert_bytes(keys: &Keys, host: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(keys.path(&format!("{host}-cert.pub"))).unwrap();
    STANDARD.decode(text.split_whitespace().nth(1).unwrap()).unwrap()
}

fn refusal(r: Result<Verification, Refusal>) -> String {
    match r {
        Err(Refusal { code: RefusalCode::Internal, message }) => message,
        other => panic!("expected an Internal refusal, got {other:?}"),
    }
}

fn challenge(v: Result<Verification, Refusal>) -> (Vec<u8>, Box<dyn PendingChallenge>) {
    match v {
        Ok(Verification::Challenge { challenge, pending }) => (challenge, pending),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// A full exchange: payload, challenge, answer.
fn attest(v: &SshpopVerifier, a: &SshpopAttestor) -> Result<AttestedAgent, Refusal> {
    let (c, pending) = challenge(v.begin(&a.payload().unwrap(), now()));
    match pending.respond(&a.answer(&c).unwrap())? {
        Verification::Attested(agent) => Ok(agent),
        Verification::Challenge { .. } => panic!("a second challenge"),
    }
}

#[test]
fn every_key_type_attests_with_the_certificate_fingerprint_and_no_selectors() {
    let keys = Keys::new();
    for (i, (ca_kind, host_kind)) in [
        ("ed25519", "ed25519"),
        ("ecdsa:256", "ecdsa:256"),
        ("ecdsa:521", "ecdsa:384"),
        ("rsa:2048", "rsa:3072"),
        ("ed25519", "ecdsa:384"),
    ]
    .into_iter()
    .enumerate()
    {
        let (ca, host) = (format!("ca{i}"), format!("host{i}"));
        keys.key(&ca, ca_kind);
        keys.key(&host, host_kind);
        keys.sign(&ca, &host, HOST);
        let v = verifier(vec![keys.ca_line(&ca)], "", None);
        let agent = attest(&v, &attestor(&keys, &host)).unwrap();
        let fp = URL_SAFE_NO_PAD.encode(digest::digest(&SHA256, &cert_bytes(&keys, &host)));
        assert_eq!(
            agent.agent_id.as_str(),
            format!("spiffe://{TD}/spire/agent/sshpop/{fp}"),
            "{host_kind} signed by {ca_kind}"
        );
        assert!(agent.selector_values.is_empty());
        assert!(agent.can_reattest);
    }
}

#[test]
fn the_wire_format_is_gos() {
    let keys = Keys::new();
    keys.key("ca", "ed25519");
    keys.key("host", "ed25519");
    keys.sign("ca", "host", HOST);
    let a = attestor(&keys, "host");
    let payload = a.payload().unwrap();
    assert_eq!(
        String::from_utf8(payload.clone()).unwrap(),
        format!("{{\"Certificate\":\"{}\"}}", STANDARD.encode(cert_bytes(&keys, "host")))
    );
    let v = verifier(vec![keys.ca_line("ca")], "", None);
    let (c, _) = challenge(v.begin(&payload, now()));
    let c: Value = serde_json::from_slice(&c).unwrap();
    assert_eq!(STANDARD.decode(c["Nonce"].as_str().unwrap()).unwrap().len(), 32);
    assert_eq!(c.as_object().unwrap().len(), 1);

    let answer = a.answer(br#"{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#).unwrap();
    let text = String::from_utf8(answer).unwrap();
    assert!(text.starts_with("{\"Nonce\":\""), "{text}");
    assert!(text.contains(",\"Signature\":{\"Format\":\"ssh-ed25519\",\"Blob\":\""), "{text}");
    assert!(text.ends_with("\",\"Rest\":null}}"), "{text}");

    // Go matches member names regardless of case.
    let lower = String::from_utf8(payload).unwrap().replace("Certificate", "certificate");
    challenge(v.begin(lower.as_bytes(), now()));
}

#[test]
fn certificates_spire_refuses_are_refused_with_its_text() {
    let keys = Keys::new();
    keys.key("ca", "ed25519");
    keys.key("other", "ed25519");
    let v = verifier(vec![keys.ca_line("ca")], "", None);
    let refused = |host: &str, kind: &str, ca: &str, extra: &[&str], at: i64| {
        keys.key(host, kind);
        keys.sign(ca, host, extra);
        refusal(v.begin(&attestor(&keys, host).payload().unwrap(), at))
    };
    assert_eq!(
        refused("h1", "ed25519", "other", HOST, now()),
        "failed to check host key: ssh: no authorities for hostname: node1.example.org:22"
    );
    let window = ["-h", "-n", "node1", "-V", "20200101000000:20200102000000"];
    let start = 1_577_836_800; // 2020-01-01T00:00:00Z in the local zone of ssh-keygen: UTC here
    let h2 = |at| {
        refusal(v.begin(&AttestationData { certificate: cert_bytes(&keys, "h2") }.to_json(), at))
    };
    refused("h2", "ed25519", "ca", &window, now());
    assert_eq!(h2(now()), "failed to check host key: ssh: cert has expired");
    assert_eq!(h2(start - 86_400), "failed to check host key: ssh: cert is not yet valid");
    assert_eq!(
        refused("h3", "ed25519", "ca", &["-n", "node1"], now()),
        "failed to check host key: ssh: certificate presented as a host key has type 1"
    );
    assert_eq!(refused("h4", "ed25519", "ca", &["-h"], now()), "cert has no valid principals");
    assert_eq!(
        refused("h5", "ed25519", "ca", &["-h", "-n", "fe80::1"], now()),
        "failed to check host key: address fe80::1:22: too many colons in address"
    );

    // A CA signature that does not verify.
    let mut forged = cert_bytes(&keys, "h1");
    keys.sign("ca", "h1", HOST);
    forged = {
        let mut good = cert_bytes(&keys, "h1");
        let last = good.len() - 1;
        good[last] ^= 1;
        assert_ne!(good, forged);
        good
    };
    assert_eq!(
        refusal(v.begin(&AttestationData { certificate: forged }.to_json(), now())),
        "failed to check host key: ssh: certificate signature does not verify"
    );

    // A plain public key, bytes that are no key, and payloads that are not the JSON.
    let plain = std::fs::read_to_string(keys.path("h1.pub")).unwrap();
    let plain = STANDARD.decode(plain.split_whitespace().nth(1).unwrap()).unwrap();
    assert_eq!(
        refusal(v.begin(&AttestationData { certificate: plain }.to_json(), now())),
        "pubkey in response is not a certificate"
    );
    let truncated = cert_bytes(&keys, "h1")[..40].to_vec();
    assert!(
        refusal(v.begin(&AttestationData { certificate: truncated }.to_json(), now()))
            .starts_with("failed to parse public key: ssh: ")
    );
    let payload = attestor(&keys, "h1").payload().unwrap();
    assert_eq!(
        refusal(v.begin(&payload[..payload.len() / 2], now())),
        "failed to unmarshal data: unexpected end of JSON input"
    );
    assert_eq!(refusal(v.begin(b"{}", now())), "no certificate in response");
    assert_eq!(refusal(v.begin(b"null", now())), "no certificate in response");
    assert_eq!(
        refusal(v.begin(b"[]", now())),
        "failed to unmarshal data: json: cannot unmarshal array into Go value of type \
         sshpop.attestationData"
    );
    assert_eq!(
        refusal(v.begin(br#"{"Certificate":5}"#, now())),
        "failed to unmarshal data: json: cannot unmarshal number into Go struct field \
         attestationData.Certificate of type []uint8"
    );
    assert_eq!(
        refusal(v.begin(br#"{"Certificate":"a!"}"#, now())),
        "failed to unmarshal data: illegal base64 data at input byte 1"
    );
}

#[test]
fn the_canonical_domain_is_checked_and_cut_off_for_the_hostname() {
    let keys = Keys::new();
    keys.key("ca", "ed25519");
    keys.key("host", "ed25519");
    keys.sign("ca", "host", HOST);
    let a = attestor(&keys, "host");
    let v = verifier(vec![keys.ca_line("ca")], "example.org", Some("/host/{{ .Hostname }}"));
    assert_eq!(
        attest(&v, &a).unwrap().agent_id.as_str(),
        "spiffe://example.org/spire/agent/host/node1"
    );
    let v = verifier(vec![keys.ca_line("ca")], "example.com", None);
    assert_eq!(
        refusal(v.begin(&a.payload().unwrap(), now())),
        "failed to decanonicalize hostname: cert principal is not in domain \".example.com\""
    );
    let v = verifier(
        vec![keys.ca_line("ca")],
        "",
        Some("/static/{{ index .ValidPrincipals 1 }}/{{ .KeyId }}/{{ .Serial }}"),
    );
    assert_eq!(
        attest(&v, &a).unwrap().agent_id.as_str(),
        "spiffe://example.org/spire/agent/static/node1/node1/0"
    );
    let v = verifier(vec![keys.ca_line("ca")], "", Some("/{{ index .ValidPrincipals 5 }}"));
    assert_eq!(
        refusal(attest(&v, &a).map(Verification::Attested)),
        "failed to create AgentID: error calling index: index out of range: 5"
    );
}

#[test]
fn answers_that_do_not_prove_possession_are_refused() {
    let keys = Keys::new();
    keys.key("ca", "ed25519");
    keys.key("host", "ed25519");
    keys.key("thief", "ed25519");
    keys.sign("ca", "host", HOST);
    let v = verifier(vec![keys.ca_line("ca")], "", None);
    let a = attestor(&keys, "host");
    let payload = a.payload().unwrap();

    // An answer to one challenge replayed against another.
    let (first, _) = challenge(v.begin(&payload, now()));
    let old_answer = a.answer(&first).unwrap();
    let (_, pending) = challenge(v.begin(&payload, now()));
    assert_eq!(
        refusal(pending.respond(&old_answer)),
        "failed to verify signature: ssh: signature did not verify"
    );

    // Signed by a key that is not the certificate's.
    let (c, pending) = challenge(v.begin(&payload, now()));
    let thief = load_key(&std::fs::read(keys.path("thief")).unwrap()).unwrap();
    let parsed = ChallengeRequest::from_json(&c).unwrap();
    let own = vec![7u8; 32];
    let sig = thief.sign(combine_nonces(&parsed.nonce, &own).unwrap().as_ref()).unwrap();
    let forged = ChallengeResponse { nonce: own.clone(), signature: Some(sig.clone()) };
    assert_eq!(
        refusal(pending.respond(&forged.to_json())),
        "failed to verify signature: ssh: signature did not verify"
    );

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            ChallengeResponse {
                nonce: own.clone(),
                signature: Some(SshSignature { format: "ssh-rsa".into(), ..sig.clone() }),
            }
            .to_json(),
            "failed to verify signature: ssh: signature type ssh-rsa for key type ssh-ed25519",
        ),
        (
            ChallengeResponse { nonce: vec![1; 16], signature: Some(sig) }.to_json(),
            "failed to combine nonces: invalid response nonce size",
        ),
        (
            b"{\"Nonce\":".to_vec(),
            "failed to unmarshal challenge response: unexpected end of JSON input",
        ),
    ];
    for (answer, want) in cases {
        let (_, pending) = challenge(v.begin(&payload, now()));
        assert_eq!(refusal(pending.respond(&answer)), want);
    }
}

#[test]
fn configuration_is_refused_as_spire_refuses_it() {
    let refused =
        |cas: Vec<String>, template: Option<&str>| match SshpopVerifier::new(SshpopServerConfig {
            trust_domain: TrustDomain::new(TD).unwrap(),
            cert_authorities: cas,
            canonical_domain: String::new(),
            agent_path_template: template.map(str::to_owned),
        }) {
            Err(NodeAttestError::Config { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
    assert_eq!(
        refused(vec![], None),
        "failed to create cert checker: must provide at least one cert authority"
    );
    assert_eq!(
        refused(vec!["nonsense".into()], None),
        "failed to create cert checker: failed to parse public key \"nonsense\": ssh: no key found"
    );
    let keys = Keys::new();
    keys.key("ca", "ed25519");
    assert!(refused(vec![keys.ca_line("ca")], Some("/{{ .Issuer }}")).contains("not supported"));

    // Options before the key, as in authorized_keys.
    verifier(vec![format!("cert-authority {}", keys.ca_line("ca"))], "", None);

    let file = keys.path("cas");
    std::fs::write(&file, format!("\n{}\n\n", keys.ca_line("ca"))).unwrap();
    assert_eq!(cert_authorities_from_file(&file).unwrap(), vec![keys.ca_line("ca")]);
    std::fs::write(&file, "\n\n").unwrap();
    assert_eq!(
        cert_authorities_from_file(&file).unwrap_err(),
        format!("no data found in file: {:?}", file.display().to_string())
    );

    // The agent refuses files that hold no key or certificate.
    keys.key("host", "ed25519");
    let bad = SshpopAttestor::new(SshpopAgentConfig {
        host_key_path: keys.path("host"),
        host_cert_path: keys.path("host.pub"),
    });
    assert!(
        matches!(bad, Err(NodeAttestError::Config { ref reason, .. }) if reason.starts_with("failed to get cert and signer from pem: ")),
        "{bad:?}"
    );
    let missing = SshpopAttestor::new(SshpopAgentConfig::default());
    assert!(matches!(missing, Err(NodeAttestError::Evidence { .. })), "{missing:?}");
}

#[test]
fn host_ports_split_as_go_splits_them() {
    assert_eq!(split_host_port("node1:22").unwrap(), "node1");
    assert_eq!(split_host_port("[fe80::1]:22").unwrap(), "fe80::1");
    for (addr, why) in [
        ("node1", "missing port in address"),
        ("a:b:22", "too many colons in address"),
        ("[fe80::1:22", "missing ']' in address"),
        ("[fe80::1]", "missing port in address"),
        ("[a]:b:22", "too many colons in address"),
        ("[a]b:22", "missing port in address"),
        ("a[b:22", "unexpected '[' in address"),
        ("a]b:22", "unexpected ']' in address"),
    ] {
        assert_eq!(split_host_port(addr).unwrap_err(), format!("address {addr}: {why}"));
    }
}
