//! The SVID API over the real admin socket and agent mTLS, answering as SPIRE v1.13.3 does:
//! mint requests are checked like SPIRE's (reserved and trust-domain-only IDs, DNS names and
//! wildcard overlap, CSR subject copied into the leaf), the batch and JWT calls check their
//! arguments in SPIRE's order with SPIRE's texts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use base64::Engine as _;
use common::*;
use tonic::Code;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_proto::spire::api::types;
use x509_parser::prelude::FromDer;

/// A CSR asking for `uris` and `dns` with the given subject attributes.
fn csr(uris: &[&str], dns: &[&str], subject: &[(rcgen::DnType, &str)]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut req =
        rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
            .unwrap();
    for uri in uris {
        req.subject_alt_names.push(rcgen::SanType::URI((*uri).try_into().unwrap()));
    }
    req.distinguished_name = rcgen::DistinguishedName::new();
    for (ty, value) in subject {
        req.distinguished_name.push(ty.clone(), *value);
    }
    req.serialize_request(&key).unwrap().der().to_vec()
}

fn workload_csr(dns: &[&str]) -> Vec<u8> {
    csr(&["spiffe://example.org/web"], dns, &[])
}

async fn mint_x509(
    ts: &TestServer,
    csr: Vec<u8>,
    ttl: i32,
) -> Result<types::X509svid, tonic::Status> {
    let mut c = svidpb::svid_client::SvidClient::new(ts.admin().await);
    c.mint_x509svid(svidpb::MintX509svidRequest { csr, ttl })
        .await
        .map(|r| r.into_inner().svid.unwrap())
}

async fn mint_jwt(
    ts: &TestServer,
    id: Option<types::Spiffeid>,
    audience: &[&str],
) -> Result<types::Jwtsvid, tonic::Status> {
    let mut c = svidpb::svid_client::SvidClient::new(ts.admin().await);
    c.mint_jwtsvid(svidpb::MintJwtsvidRequest {
        id,
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        ttl: 0,
    })
    .await
    .map(|r| r.into_inner().svid.unwrap())
}

fn refusal(r: Result<impl std::fmt::Debug, tonic::Status>) -> (Code, String) {
    let e = r.unwrap_err();
    (e.code(), e.message().to_owned())
}

fn invalid(message: &str) -> (Code, String) {
    (Code::InvalidArgument, message.to_owned())
}

/// The `aud` claim of a JWT-SVID.
fn audience_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    serde_json::from_slice::<serde_json::Value>(&json).unwrap()["aud"].clone()
}

#[tokio::test]
async fn mint_x509_svid_refuses_reserved_ids_and_bad_dns_names_as_spire() {
    let ts = TestServer::start().await;
    let reserved = |id: &str| {
        invalid(&format!(
            "CSR URI SAN is invalid: \"{id}\" is not a workload in trust domain \"example.org\"; \
             path is in the reserved namespace"
        ))
    };
    let cases: Vec<(Vec<u8>, (Code, String))> = vec![
        (
            csr(&["spiffe://example.org/spire/server"], &[], &[]),
            reserved("spiffe://example.org/spire/server"),
        ),
        (
            csr(&["spiffe://example.org/spire/agent/join_token/x"], &[], &[]),
            reserved("spiffe://example.org/spire/agent/join_token/x"),
        ),
        (
            csr(&["spiffe://example.org"], &[], &[]),
            invalid(
                "CSR URI SAN is invalid: \"spiffe://example.org\" is not a workload in trust \
                 domain \"example.org\"; path is empty",
            ),
        ),
        (
            csr(&["spiffe://other.org/web"], &[], &[]),
            invalid(
                "CSR URI SAN is invalid: \"spiffe://other.org/web\" is not a member of trust \
                 domain \"example.org\"",
            ),
        ),
        (csr(&[], &["a.example.org"], &[]), invalid("CSR URI SAN is required")),
        (
            csr(&["spiffe://example.org/a", "spiffe://example.org/b"], &[], &[]),
            invalid("only one URI SAN is expected"),
        ),
        (
            workload_csr(&["a.*.example.org"]),
            invalid("CSR DNS name is invalid: wildcard must be first label"),
        ),
        (
            workload_csr(&["-web.example.org"]),
            invalid("CSR DNS name is invalid: idna error\nidna: invalid label \"-web\""),
        ),
        (
            workload_csr(&["*.example.org", "a.example.org"]),
            invalid(
                "CSR DNS name contains a wildcard that covers another non-wildcard name: name \
                 \"a.example.org\" overlaps with an existing wildcard name in the list: \
                 wildcard overlap",
            ),
        ),
        (vec![], invalid("missing CSR")),
    ];
    for (csr, want) in cases {
        assert_eq!(refusal(mint_x509(&ts, csr, 0).await), want);
    }

    let mut bad_sig = workload_csr(&[]);
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    let (code, message) = refusal(mint_x509(&ts, bad_sig, 0).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("failed to verify CSR signature: "), "{message}");
    let (code, message) = refusal(mint_x509(&ts, b"not DER".to_vec(), 0).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("malformed CSR: "), "{message}");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn mint_x509_svid_copies_the_csr_subject_and_takes_names_spire_accepts() {
    let ts = TestServer::start().await;
    // Underscores, upper case and a wildcard beside a name it does not cover: SPIRE signs.
    let names = ["Web_1.example.org", "*.internal.example.org", "internal.example.org"];
    let subject = [(rcgen::DnType::OrganizationName, "Acme"), (rcgen::DnType::CommonName, "x")];
    // A negative TTL means the default, as in SPIRE.
    let svid =
        mint_x509(&ts, csr(&["spiffe://example.org/web"], &names, &subject), -5).await.unwrap();
    let (_, leaf) =
        x509_parser::certificate::X509Certificate::from_der(&svid.cert_chain[0]).unwrap();
    let attrs: Vec<(String, String)> = leaf
        .subject()
        .iter_attributes()
        .map(|a| (a.attr_type().to_id_string(), a.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        attrs,
        [
            ("2.5.4.10".to_owned(), "Acme".to_owned()),
            ("2.5.4.3".to_owned(), "Web_1.example.org".to_owned())
        ]
    );
    let sans = leaf.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
    let dns: Vec<String> = sans
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(dns, names);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600 + 10, "the default X509-SVID TTL, backdated 10 s");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn mint_jwt_svid_refuses_reserved_ids_and_drops_empty_audiences() {
    let ts = TestServer::start().await;
    let reserved = invalid(
        "invalid SPIFFE ID: \"spiffe://example.org/spire/server\" is not a workload in trust \
         domain \"example.org\"; path is in the reserved namespace",
    );
    assert_eq!(
        refusal(mint_jwt(&ts, Some(id("example.org", "/spire/server")), &["a"]).await),
        reserved
    );
    assert_eq!(
        refusal(mint_jwt(&ts, Some(id("example.org", "")), &["a"]).await),
        invalid(
            "invalid SPIFFE ID: \"spiffe://example.org\" is not a workload in trust domain \
             \"example.org\"; path is empty"
        )
    );
    assert_eq!(
        refusal(mint_jwt(&ts, Some(id("other.org", "/w")), &["a"]).await),
        invalid(
            "invalid SPIFFE ID: \"spiffe://other.org/w\" is not a member of trust domain \
             \"example.org\""
        )
    );
    assert_eq!(
        refusal(mint_jwt(&ts, None, &["a"]).await),
        invalid("invalid SPIFFE ID: request must specify SPIFFE ID")
    );
    let web = Some(id("example.org", "/web"));
    assert_eq!(
        refusal(mint_jwt(&ts, web.clone(), &[]).await),
        invalid("at least one audience is required")
    );
    assert_eq!(
        refusal(mint_jwt(&ts, web.clone(), &["", ""]).await),
        (
            Code::Internal,
            "failed to sign JWT-SVID: invalid JWT-SVID audience: cannot be empty".to_owned()
        )
    );
    let jwt = mint_jwt(&ts, web, &["", "db", ""]).await.unwrap();
    assert_eq!(audience_of(&jwt.token), serde_json::json!(["db"]));
    ts.server.shutdown().await;
}

#[tokio::test]
async fn agent_signing_calls_check_arguments_in_spire_order() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, agent_id) = new_agent(&ts).await;
    let mine = ts.create_entry("/mine", &agent_id, ("unix", "uid:1")).await;
    let mut c =
        svidpb::svid_client::SvidClient::new(tls_channel(ts.addr(), &roots, Some(ident)).await);

    let err = c.batch_new_x509svid(svidpb::BatchNewX509svidRequest { params: vec![] }).await;
    assert_eq!(refusal(err), invalid("missing parameters"));

    // The entry is looked up first: an empty or unknown id is NotFound whatever the audience.
    let not_found = (Code::NotFound, "entry not found or not authorized".to_owned());
    let jwt = |entry_id: &str, audience: &[&str]| svidpb::NewJwtsvidRequest {
        entry_id: entry_id.to_owned(),
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
    };
    assert_eq!(refusal(c.new_jwtsvid(jwt("", &[])).await), not_found);
    assert_eq!(refusal(c.new_jwtsvid(jwt("nope", &[])).await), not_found);
    assert_eq!(
        refusal(c.new_jwtsvid(jwt(&mine, &[])).await),
        invalid("at least one audience is required")
    );
    assert_eq!(
        refusal(c.new_jwtsvid(jwt(&mine, &[""])).await),
        (
            Code::Internal,
            "failed to sign JWT-SVID: invalid JWT-SVID audience: cannot be empty".to_owned()
        )
    );
    let svid = c.new_jwtsvid(jwt(&mine, &["", "db"])).await.unwrap().into_inner().svid.unwrap();
    assert_eq!(audience_of(&svid.token), serde_json::json!(["db"]));
    ts.server.shutdown().await;
}

#[tokio::test]
async fn entry_dns_names_follow_spire_rules() {
    let ts = TestServer::start().await;
    let mut c = entrypb::entry_client::EntryClient::new(ts.admin().await);
    let entry = |path: &str, dns: &[&str]| types::Entry {
        spiffe_id: Some(id("example.org", path)),
        parent_id: Some(id("example.org", "/spire/agent/x")),
        selectors: vec![types::Selector { r#type: "unix".into(), value: "uid:1".into() }],
        dns_names: dns.iter().map(|d| (*d).to_owned()).collect(),
        ..Default::default()
    };
    let resp = c
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![
                // SPIRE accepts these (no overlap check for entries).
                entry("/a", &["under_score.example.org", "*.example.org", "b.example.org"]),
                entry("/b", &["a.*.example.org"]),
                entry("/c", &["ab--c.example.org"]),
                entry("/d", &["example.org."]),
            ],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i32, String)> = resp
        .results
        .iter()
        .map(|r| {
            let s = r.status.clone().unwrap();
            (s.code, s.message)
        })
        .collect();
    let bad = |m: &str| (Code::InvalidArgument as i32, format!("failed to convert entry: {m}"));
    assert_eq!(
        got,
        [
            (0, "OK".to_owned()),
            bad("invalid DNS name: wildcard must be first label"),
            bad("invalid DNS name: idna error\nidna: invalid label \"ab--c\""),
            bad("invalid DNS name: domain ends with dot"),
        ]
    );
    ts.server.shutdown().await;
}
