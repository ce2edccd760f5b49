//! The admin CLI binary against an in-process server, `run` config errors, and entry
//! administration RPCs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tonic::Code;
use ward_core::{AgentId, SpiffeId};
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;
use ward_store::{EntryFilter, PageRequest};

const BIN: &str = env!("CARGO_BIN_EXE_ward-server");

async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(BIN).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|rest| rest.trim_start_matches([' ', ':']).trim()))
        .unwrap_or_else(|| panic!("no {name} in {stdout}"))
}

#[tokio::test]
async fn token_entry_bundle_and_health_commands() {
    let ts = TestServer::start().await;
    let sock = ts.server.socket_path.to_str().unwrap().to_owned();
    let store = ts.server.state.store.clone();

    let (ok, out, err) = cli(&["token", "generate", "-socketPath", &sock, "-ttl", "300"]).await;
    assert!(ok, "{err}");
    // SPIRE's CLI warns when the token maps to no SPIFFE ID.
    let token = out.lines().next().unwrap().strip_prefix("Token: ").unwrap();
    assert_eq!(out, format!("Token: {token}\nWarning: Missing SPIFFE ID.\n"));
    assert!(store.join_token(token).is_some());

    // -spiffeID also maps the join-token agent to that ID with an entry.
    let (ok, out, _) = cli(&[
        "token",
        "generate",
        "-socketPath",
        &sock,
        "-spiffeID",
        "spiffe://example.org/node-a",
    ])
    .await;
    assert!(ok);
    let token2 = out.strip_prefix("Token: ").unwrap().trim();
    let filter = EntryFilter {
        spiffe_id: Some(SpiffeId::parse("spiffe://example.org/node-a").unwrap()),
        ..EntryFilter::default()
    };
    let found = store.list_entries(&filter, &PageRequest::all()).items;
    assert_eq!(found.len(), 1);
    let agent = format!("spiffe://example.org/spire/agent/join_token/{token2}");
    assert_eq!(found[0].parent_id.as_str(), agent);
    assert_eq!(found[0].selectors.as_slice()[0].to_string(), format!("spiffe_id:{agent}"));

    let (ok, out, err) = cli(&[
        "entry",
        "create",
        "-socketPath",
        &sock,
        "-spiffeID",
        "spiffe://example.org/web",
        "-parentID",
        &agent,
        "-selector",
        "unix:uid:1000",
        "-selector",
        "unix:gid:1000",
        "-x509SVIDTTL",
        "120",
        "-dns",
        "web.example.org",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(field(&out, "SPIFFE ID"), "spiffe://example.org/web");
    assert_eq!(field(&out, "Parent ID"), agent);
    assert_eq!(field(&out, "X509-SVID TTL"), "120");
    assert_eq!(field(&out, "JWT-SVID TTL"), "default");
    assert_eq!(field(&out, "DNS name"), "web.example.org");
    assert_eq!(out.lines().filter(|l| l.starts_with("Selector")).count(), 2);
    let id = ward_core::EntryId::new(field(&out, "Entry ID")).unwrap();
    let stored = store.entry(&id).unwrap();
    assert_eq!(stored.x509_svid_ttl, 120);

    let (ok, out, _) = cli(&[
        "entry",
        "create",
        "-socketPath",
        &sock,
        "-node",
        "-spiffeID",
        "spiffe://example.org/cluster",
        "-selector",
        "join_token:x",
    ])
    .await;
    assert!(ok);
    assert_eq!(field(&out, "Parent ID"), "spiffe://example.org/spire/server");

    // Missing selector: refused by the CLI itself.
    let (ok, _, err) = cli(&[
        "entry",
        "create",
        "-socketPath",
        &sock,
        "-spiffeID",
        "spiffe://example.org/x",
        "-parentID",
        &agent,
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("at least one selector is required"), "{err}");

    // A server-side refusal is reported with the per-item status.
    let (ok, _, err) = cli(&[
        "entry",
        "create",
        "-socketPath",
        &sock,
        "-spiffeID",
        "spiffe://other.org/x",
        "-parentID",
        &agent,
        "-selector",
        "a:b",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("is not a member of trust domain"), "{err}");

    let (ok, out, _) = cli(&["entry", "show", "-socketPath", &sock]).await;
    assert!(ok);
    assert!(out.starts_with("Found 3 entries\n"), "{out}");
    let (ok, out, _) =
        cli(&["entry", "show", "-socketPath", &sock, "-selector", "unix:gid:1000"]).await;
    assert!(ok);
    assert!(out.starts_with("Found 1 entry\n"), "{out}");
    assert_eq!(field(&out, "SPIFFE ID"), "spiffe://example.org/web");
    let (ok, out, _) = cli(&["entry", "show", "-socketPath", &sock, "-entryID", id.as_str()]).await;
    assert!(ok);
    assert_eq!(field(&out, "Entry ID"), id.as_str());
    let (ok, _, err) = cli(&["entry", "show", "-socketPath", &sock, "-entryID", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");

    let (ok, pem, _) = cli(&["bundle", "show", "-socketPath", &sock]).await;
    assert!(ok);
    let ders: Vec<Vec<u8>> =
        pem::parse_many(pem.as_bytes()).unwrap().into_iter().map(|p| p.into_contents()).collect();
    assert_eq!(ders, ts.roots().await);
    let (ok, json, _) = cli(&["bundle", "show", "-socketPath", &sock, "-format", "spiffe"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.iter().filter(|k| k["use"] == "x509-svid").count(), 1);
    assert_eq!(keys.iter().filter(|k| k["use"] == "jwt-svid").count(), 1);

    let (ok, out, _) = cli(&["healthcheck", "-socketPath", &sock]).await;
    assert!(ok);
    assert_eq!(out, "Server is healthy.\n");

    let (ok, _, err) = cli(&["bundle", "show", "-socketPath", "/nonexistent/api.sock"]).await;
    assert!(!ok);
    // As Go's gRPC client words a socket that is not there.
    assert_eq!(
        err,
        "Error: rpc error: code = Unavailable desc = connection error: desc = \"transport: Error \
         while dialing: dial unix ///nonexistent/api.sock: connect: no such file or directory\"\n"
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn run_rejects_unknown_config_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "trust_domain = \"example.org\"\nbind_prot = 1\n").unwrap();
    let (ok, _, err) = cli(&["run", "-config", cfg.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(err.contains("unknown field `bind_prot`"), "{err}");
}

#[tokio::test]
async fn update_and_delete_entries() {
    let ts = TestServer::start().await;
    let (_, agent_id) = new_agent(&ts).await;
    let id = ts.create_entry("/svc", &agent_id, ("unix", "uid:1")).await;
    let mut c = entrypb::entry_client::EntryClient::new(ts.admin().await);

    // No input mask: every field is replaced (spire-server entry update sends none).
    let update = types::Entry {
        id: id.clone(),
        spiffe_id: Some(id_of("/svc2")),
        parent_id: Some(parse(&agent_id)),
        selectors: vec![types::Selector { r#type: "unix".into(), value: "uid:2".into() }],
        hint: "h".into(),
        ..Default::default()
    };
    let resp = c
        .batch_update_entry(entrypb::BatchUpdateEntryRequest {
            entries: vec![update.clone(), types::Entry { id: "missing".into(), ..update }],
            input_mask: None,
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let e = resp.results[0].entry.as_ref().unwrap();
    assert_eq!(e.spiffe_id.as_ref().unwrap().path, "/svc2");
    assert_eq!(e.revision_number, 1);
    assert_eq!(e.hint, "h");
    let st = resp.results[1].status.as_ref().unwrap();
    assert_eq!((st.code, st.message.as_str()), (Code::NotFound as i32, "failed to update entry"));

    // Only the masked field changes.
    let resp = c
        .batch_update_entry(entrypb::BatchUpdateEntryRequest {
            entries: vec![types::Entry {
                id: id.clone(),
                hint: "new".into(),
                ..Default::default()
            }],
            input_mask: Some(types::EntryMask { hint: true, ..Default::default() }),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let e = resp.results[0].entry.as_ref().unwrap();
    assert_eq!((e.hint.as_str(), e.revision_number), ("new", 2));
    assert_eq!(e.spiffe_id.as_ref().unwrap().path, "/svc2");

    // The agent sees the new revision.
    let agent = AgentId(SpiffeId::parse(&agent_id).unwrap());
    assert_eq!(ts.server.state.store.authorized_entries(&agent).to_vec()[0].revision_number, 2);

    let resp = c
        .batch_delete_entry(entrypb::BatchDeleteEntryRequest { ids: vec![id.clone(), id.clone()] })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = resp.results.iter().map(|r| r.status.as_ref().unwrap().code).collect();
    assert_eq!(codes, vec![0, Code::NotFound as i32]);
    assert!(ts.server.state.store.authorized_entries(&agent).is_empty());
    ts.server.shutdown().await;
}

fn id_of(path: &str) -> types::Spiffeid {
    id("example.org", path)
}

fn csr_with_sans(uris: &[&str], dns: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    for u in uris {
        params.subject_alt_names.push(rcgen::SanType::URI((*u).try_into().unwrap()));
    }
    for d in dns {
        params.subject_alt_names.push(rcgen::SanType::DnsName((*d).try_into().unwrap()));
    }
    params.serialize_request(&key).unwrap().der().to_vec()
}

#[tokio::test]
async fn mint_x509_and_jwt_svids() {
    use ward_proto::spire::api::server::svid::v1 as svidpb;
    let ts = TestServer::start().await;
    let before = ts.server.state.store.last_applied();
    let mut c = svidpb::svid_client::SvidClient::new(ts.admin().await);

    let csr = csr_with_sans(&["spiffe://example.org/minted"], &["a.example.org"]);
    let svid = c
        .mint_x509svid(svidpb::MintX509svidRequest { csr, ttl: 600 })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    let leaf = ward_server::tls::leaf_facts(&svid.cert_chain[0]).unwrap();
    assert_eq!(leaf.id.as_str(), "spiffe://example.org/minted");
    assert_eq!(svid.expires_at, leaf.not_after);
    let (_, cert) = x509_parser::parse_x509_certificate(&svid.cert_chain[0]).unwrap();
    let dns: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(dns, vec!["a.example.org"]);

    for (csr, msg) in [
        (csr_with_sans(&[], &["a.example.org"]), "CSR URI SAN is required"),
        (
            csr_with_sans(&["spiffe://other.org/x"], &[]),
            "CSR URI SAN is invalid: \"spiffe://other.org/x\" is not a member of trust domain \"example.org\"",
        ),
    ] {
        let err = c.mint_x509svid(svidpb::MintX509svidRequest { csr, ttl: 0 }).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, msg));
    }

    let jwt = c
        .mint_jwtsvid(svidpb::MintJwtsvidRequest {
            id: Some(id_of("/minted")),
            audience: vec!["aud".into()],
            ttl: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(jwt.expires_at - jwt.issued_at, 60);
    let err = c
        .mint_jwtsvid(svidpb::MintJwtsvidRequest {
            id: Some(id_of("/minted")),
            audience: vec![],
            ttl: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(ts.server.state.store.last_applied(), before, "minting writes nothing");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn admin_socket_modes() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    // A directory the server creates gets 0750, the socket 0770 (as SPIRE).
    let ts = TestServer::start().await;
    let sock = ts.server.socket_path.clone();
    assert_eq!(mode(sock.parent().unwrap()), 0o750);
    assert_eq!(mode(&sock), 0o770);
    ts.server.shutdown().await;
    assert!(!sock.exists(), "socket removed on shutdown");

    // An existing directory keeps its mode.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = shared.path().join("api.sock");
    let ts = TestServer::start_with(|cfg| cfg.socket_path = path.clone()).await;
    assert_eq!(mode(shared.path()), 0o777);
    assert_eq!(mode(&path), 0o770);
    ts.server.shutdown().await;
}
