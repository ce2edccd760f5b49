//! Registration entries, paging and list filters answer as SPIRE v1.13.3 does: the codes and
//! texts below were read from a real spire-server (SQLite datastore) given the same requests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tonic::Code;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::trustdomain::v1 as tdpb;
use ward_proto::spire::api::types;

const AGENT: &str = "/spire/agent/x";

type EntryClient = entrypb::entry_client::EntryClient<tonic::transport::Channel>;

fn sel(t: &str, v: &str) -> types::Selector {
    types::Selector { r#type: t.into(), value: v.into() }
}

/// A valid entry under the agent `AGENT` with the SPIFFE ID path `path`.
fn entry(path: &str) -> types::Entry {
    types::Entry {
        parent_id: Some(id("example.org", AGENT)),
        spiffe_id: Some(id("example.org", path)),
        selectors: vec![sel("unix", "uid:1")],
        ..Default::default()
    }
}

fn status_of(s: Option<&types::Status>) -> (Code, String) {
    let s = s.unwrap();
    (Code::from_i32(s.code), s.message.clone())
}

async fn create(c: &mut EntryClient, entries: Vec<types::Entry>) -> Vec<(Code, String)> {
    let resp = c
        .batch_create_entry(entrypb::BatchCreateEntryRequest { entries, output_mask: None })
        .await
        .unwrap()
        .into_inner();
    resp.results.iter().map(|r| status_of(r.status.as_ref())).collect()
}

async fn update(
    c: &mut EntryClient,
    entries: Vec<types::Entry>,
    input_mask: Option<types::EntryMask>,
) -> entrypb::BatchUpdateEntryResponse {
    c.batch_update_entry(entrypb::BatchUpdateEntryRequest {
        entries,
        input_mask,
        output_mask: None,
    })
    .await
    .unwrap()
    .into_inner()
}

fn statuses(resp: &entrypb::BatchUpdateEntryResponse) -> Vec<(Code, String)> {
    resp.results.iter().map(|r| status_of(r.status.as_ref())).collect()
}

fn entry_count(ts: &TestServer) -> usize {
    ts.server.state.store.entry_count()
}

fn invalid(m: &str) -> (Code, String) {
    (Code::InvalidArgument, m.to_owned())
}

#[tokio::test]
async fn create_refuses_each_item_with_spires_code_and_text() {
    let ts = TestServer::start().await;
    let mut c = EntryClient::new(ts.admin().await);
    let taken = types::Entry { id: "taken".into(), ..entry("/taken") };
    assert_eq!(create(&mut c, vec![taken]).await, vec![(Code::Ok, "OK".to_owned())]);
    let before = entry_count(&ts);

    let mixed = vec![sel("k8s", "ns:x"), sel("unix", "uid:1")];
    let with = |e: types::Entry, f: &dyn Fn(&mut types::Entry)| {
        let mut e = e;
        f(&mut e);
        e
    };
    let cases: Vec<(types::Entry, (Code, String))> = vec![
        (
            with(entry("/a"), &|e| {
                e.selectors = mixed.clone();
                e.store_svid = true;
            }),
            invalid(
                "failed to create entry: datastore-validation: invalid registration entry: \
                 selector types must be the same when store SVID is enabled",
            ),
        ),
        (
            with(entry("/b"), &|e| e.selectors = vec![sel("unix", "uid:1"), sel("unix", "uid:1")]),
            (
                Code::AlreadyExists,
                "failed to create entry: datastore-sql: UNIQUE constraint failed: \
                 selectors.registered_entry_id, selectors.type, selectors.value"
                    .to_owned(),
            ),
        ),
        (
            with(entry("/c"), &|e| {
                e.dns_names = vec!["a.example.org".into(), "a.example.org".into()];
            }),
            (
                Code::AlreadyExists,
                "failed to create entry: datastore-sql: UNIQUE constraint failed: \
                 dns_names.registered_entry_id, dns_names.value"
                    .to_owned(),
            ),
        ),
        (
            with(entry("/d"), &|e| e.id = "my/id".into()),
            invalid(
                "failed to create entry: datastore-validation: invalid registration entry: \
                 entry ID contains invalid characters",
            ),
        ),
        (
            with(entry("/d"), &|e| e.id = "a".repeat(256)),
            invalid(
                "failed to create entry: datastore-validation: invalid registration entry: \
                 entry ID too long",
            ),
        ),
        (
            with(entry("/e"), &|e| e.id = "taken".into()),
            (
                Code::AlreadyExists,
                "failed to create entry: datastore-sql: UNIQUE constraint failed: \
                 registered_entries.entry_id"
                    .to_owned(),
            ),
        ),
        (
            with(entry("/f"), &|e| e.federates_with = vec!["nowhere.org".into()]),
            (
                Code::Internal,
                "failed to create entry: unable to find federated bundle \
                 \"spiffe://nowhere.org\""
                    .to_owned(),
            ),
        ),
        (
            entry(""),
            invalid(
                "failed to convert entry: invalid spiffe ID: \"spiffe://example.org\" is not a \
                 workload in trust domain \"example.org\"; path is empty",
            ),
        ),
        (
            entry("/spire/x"),
            invalid(
                "failed to convert entry: invalid spiffe ID: \"spiffe://example.org/spire/x\" is \
                 not a workload in trust domain \"example.org\"; path is in the reserved namespace",
            ),
        ),
        (
            with(entry("/g"), &|e| e.parent_id = Some(id("example.org", ""))),
            invalid(
                "failed to convert entry: invalid parent ID: \"spiffe://example.org\" is not a \
                 member of trust domain \"example.org\"; path is empty",
            ),
        ),
        (
            with(entry("/g"), &|e| e.parent_id = Some(id("other.org", "/x"))),
            invalid(
                "failed to convert entry: invalid parent ID: \"spiffe://other.org/x\" is not a \
                 member of trust domain \"example.org\"",
            ),
        ),
        (
            with(entry("/h"), &|e| e.x509_svid_ttl = -1),
            invalid(
                "failed to create entry: datastore-validation: invalid registration entry: \
                 X509SvidTtl is not set",
            ),
        ),
        (
            with(entry("/h"), &|e| e.jwt_svid_ttl = -1),
            invalid(
                "failed to create entry: datastore-validation: invalid registration entry: \
                 JwtSvidTtl is not set",
            ),
        ),
        (
            // 600 characters, 1,200 bytes: SPIRE counts bytes.
            with(entry("/i"), &|e| e.hint = "é".repeat(600)),
            invalid("failed to convert entry: hint is too long, max length is 1024 characters"),
        ),
    ];
    let (entries, want): (Vec<_>, Vec<_>) = cases.into_iter().unzip();
    assert_eq!(create(&mut c, entries).await, want);
    assert_eq!(entry_count(&ts), before, "no refused item was stored");

    // The same selector type throughout is fine with store_svid, and so is a 1,024-byte
    // hint.
    let fine = types::Entry {
        selectors: vec![sel("unix", "uid:1"), sel("unix", "gid:1")],
        store_svid: true,
        hint: "h".repeat(1024),
        ..entry("/fine")
    };
    assert_eq!(create(&mut c, vec![fine]).await, vec![(Code::Ok, "OK".to_owned())]);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn dns_names_come_back_sorted_from_writes_and_in_the_callers_order_from_reads() {
    let ts = TestServer::start().await;
    let mut c = EntryClient::new(ts.admin().await);
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let e = types::Entry {
        id: "dns".into(),
        dns_names: names(&["b.example.org", "B.example.org", "a.example.org"]),
        ..entry("/dns")
    };
    let resp = c
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![e.clone()],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let created = resp.results[0].entry.as_ref().unwrap();
    assert_eq!(created.dns_names, names(&["B.example.org", "a.example.org", "b.example.org"]));
    let got = c
        .get_entry(entrypb::GetEntryRequest { id: "dns".into(), output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.dns_names, e.dns_names);
    let listed = c.list_entries(entrypb::ListEntriesRequest::default()).await.unwrap();
    assert_eq!(listed.into_inner().entries[0].dns_names, e.dns_names);

    let patch = types::Entry {
        id: "dns".into(),
        dns_names: names(&["z.example.org", "y.example.org"]),
        ..Default::default()
    };
    let mask = types::EntryMask { dns_names: true, ..Default::default() };
    let resp = update(&mut c, vec![patch.clone()], Some(mask)).await;
    let updated = resp.results[0].entry.as_ref().unwrap();
    assert_eq!(updated.dns_names, names(&["y.example.org", "z.example.org"]));
    let got = c
        .get_entry(entrypb::GetEntryRequest { id: "dns".into(), output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.dns_names, patch.dns_names);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn update_answers_as_spire_and_may_make_entries_alike() {
    let ts = TestServer::start().await;
    let mut c = EntryClient::new(ts.admin().await);
    let u1 = types::Entry { id: "u1".into(), ..entry("/u1") };
    let u2 = types::Entry { id: "u2".into(), ..entry("/u2") };
    create(&mut c, vec![u1, u2]).await;

    // SPIRE checks similarity on create only: an update may make two entries alike.
    let resp = update(&mut c, vec![types::Entry { id: "u2".into(), ..entry("/u1") }], None).await;
    assert_eq!(statuses(&resp), vec![(Code::Ok, "OK".to_owned())]);
    let e = resp.results[0].entry.as_ref().unwrap();
    assert_eq!((e.spiffe_id.as_ref().unwrap().path.as_str(), e.revision_number), ("/u1", 1));

    let only = |f: fn(&mut types::EntryMask)| {
        let mut m = types::EntryMask::default();
        f(&mut m);
        Some(m)
    };
    let not_found = (Code::NotFound, "failed to update entry".to_owned());
    let cases: Vec<(types::Entry, Option<types::EntryMask>, (Code, String))> = vec![
        (types::Entry { id: "nope".into(), ..entry("/u1") }, None, not_found.clone()),
        (types::Entry { id: String::new(), ..entry("/u1") }, None, not_found.clone()),
        (types::Entry { id: "bad/id".into(), ..entry("/u1") }, None, not_found.clone()),
        (
            types::Entry {
                id: "u2".into(),
                federates_with: vec!["nowhere.org".into()],
                ..entry("/u2")
            },
            None,
            (
                Code::Internal,
                "failed to update entry: unable to find federated bundle \
                 \"spiffe://nowhere.org\""
                    .to_owned(),
            ),
        ),
        (
            types::Entry {
                id: "u2".into(),
                store_svid: true,
                selectors: vec![sel("unix", "uid:1"), sel("k8s", "ns:1")],
                ..Default::default()
            },
            only(|m| {
                m.store_svid = true;
                m.selectors = true;
            }),
            invalid(
                "failed to update entry: datastore-validation: invalid registration entry: \
                 selector types must be the same when store SVID is enabled",
            ),
        ),
        (
            types::Entry {
                id: "u1".into(),
                selectors: vec![sel("unix", "uid:1"), sel("unix", "uid:1")],
                ..Default::default()
            },
            only(|m| m.selectors = true),
            (
                Code::AlreadyExists,
                "failed to update entry: datastore-sql: UNIQUE constraint failed: \
                 selectors.registered_entry_id, selectors.type, selectors.value"
                    .to_owned(),
            ),
        ),
        (
            types::Entry { id: "nope".into(), x509_svid_ttl: -1, ..Default::default() },
            only(|m| m.x509_svid_ttl = true),
            invalid(
                "failed to update entry: datastore-validation: invalid registration entry: \
                 X509SvidTtl is not set",
            ),
        ),
        (
            types::Entry {
                id: "u1".into(),
                spiffe_id: Some(id("example.org", "/spire/a")),
                ..Default::default()
            },
            only(|m| m.spiffe_id = true),
            invalid(
                "failed to convert entry: invalid spiffe ID: \"spiffe://example.org/spire/a\" is \
                 not a workload in trust domain \"example.org\"; path is in the reserved namespace",
            ),
        ),
    ];
    for (e, mask, want) in cases {
        let resp = update(&mut c, vec![e.clone()], mask).await;
        assert_eq!(statuses(&resp), vec![want], "{e:?}");
    }

    // store_svid turned on later is checked against the stored selectors.
    let mixed = types::Entry {
        id: "u1".into(),
        selectors: vec![sel("unix", "uid:1"), sel("k8s", "ns:1")],
        ..Default::default()
    };
    let resp = update(&mut c, vec![mixed], only(|m| m.selectors = true)).await;
    assert_eq!(statuses(&resp), vec![(Code::Ok, "OK".to_owned())]);
    let on = types::Entry { id: "u1".into(), store_svid: true, ..Default::default() };
    let resp = update(&mut c, vec![on], only(|m| m.store_svid = true)).await;
    assert_eq!(
        statuses(&resp),
        vec![invalid(
            "failed to update entry: datastore-validation: invalid registration entry: selector \
             types must be the same when store SVID is enabled"
        )]
    );
    ts.server.shutdown().await;
}

/// The real `spire-server` binary: from `$WARD_SPIRE_BIN`, else from the cache that
/// `tests/interop/spire/build.sh` fills (building it once when missing).
fn spire_server() -> std::path::PathBuf {
    let dir = match std::env::var_os("WARD_SPIRE_BIN") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/spire/build.sh");
            let out = std::process::Command::new(script).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        }
    };
    dir.join("spire-server")
}

/// `spire-server entry update` (no input mask) that makes an entry identical to another,
/// with SPIRE's own CLI.
#[tokio::test]
async fn spire_cli_update_to_an_identical_entry_succeeds() {
    let ts = TestServer::start().await;
    let sock = ts.server.socket_path.to_str().unwrap().to_owned();
    let mut c = EntryClient::new(ts.admin().await);
    create(&mut c, vec![types::Entry { id: "one".into(), ..entry("/same") }]).await;
    create(&mut c, vec![types::Entry { id: "two".into(), ..entry("/other") }]).await;
    let out = tokio::process::Command::new(spire_server())
        .args(["entry", "update", "-socketPath", &sock, "-entryID", "two"])
        .args(["-parentID", "spiffe://example.org/spire/agent/x"])
        .args(["-spiffeID", "spiffe://example.org/same", "-selector", "unix:uid:1"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("spiffe://example.org/same"), "{stdout}");
    let two = ts.server.state.store.entry(&ward_core::EntryId::new("two").unwrap()).unwrap();
    assert_eq!(two.spiffe_id.as_str(), "spiffe://example.org/same");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn get_and_delete_name_missing_entries_as_spire() {
    let ts = TestServer::start().await;
    let mut c = EntryClient::new(ts.admin().await);
    for (id, want) in [
        ("nope", (Code::NotFound, "entry not found")),
        ("bad/id", (Code::NotFound, "entry not found")),
        ("", (Code::InvalidArgument, "missing ID")),
    ] {
        let st = c
            .get_entry(entrypb::GetEntryRequest { id: id.into(), output_mask: None })
            .await
            .unwrap_err();
        assert_eq!((st.code(), st.message()), want, "{id}");
    }
    let resp = c
        .batch_delete_entry(entrypb::BatchDeleteEntryRequest {
            ids: vec!["nope".into(), String::new(), "bad/id".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(Code, String, String)> = resp
        .results
        .iter()
        .map(|r| {
            let (code, msg) = status_of(r.status.as_ref());
            (code, msg, r.id.clone())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Code::NotFound, "entry not found".into(), "nope".into()),
            (Code::InvalidArgument, "missing entry ID".into(), String::new()),
            (Code::NotFound, "entry not found".into(), "bad/id".into()),
        ]
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn page_size_and_tokens_as_spire_for_every_list() {
    let ts = TestServer::start().await;
    let ch = ts.admin().await;
    let mut c = EntryClient::new(ch.clone());
    create(&mut c, vec![entry("/p1"), entry("/p2"), entry("/p3")]).await;

    // A size of 0 or less lists everything and ignores the token, whatever it is.
    for page_size in [0, -1, -500] {
        let resp = c
            .list_entries(entrypb::ListEntriesRequest {
                page_size,
                page_token: "not/a token".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((resp.entries.len(), resp.next_page_token.as_str()), (3, ""), "{page_size}");
    }
    // Paging still works with the tokens the server hands out.
    let first = c
        .list_entries(entrypb::ListEntriesRequest { page_size: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let rest = c
        .list_entries(entrypb::ListEntriesRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.entries.len(), rest.entries.len()), (2, 1));

    // Tokens are row numbers, as SPIRE's: anything else, entry-id shaped or not, is refused.
    for token in ["a/b", "garbage", "abc", "-1", "+1", "4294967296", "p1"] {
        let st = c
            .list_entries(entrypb::ListEntriesRequest {
                page_size: 1,
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (st.code(), st.message().to_owned()),
            (
                Code::Internal,
                format!(
                    "failed to list entries: datastore-sql: rpc error: code = InvalidArgument \
                     desc = could not parse token '{token}'"
                )
            )
        );
    }
    // A number past the last entry is a valid token: an empty last page.
    let past = c
        .list_entries(entrypb::ListEntriesRequest {
            page_size: 1,
            page_token: "4294967295".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((past.entries.len(), past.next_page_token.as_str()), (0, ""));

    let mut agents = agentpb::agent_client::AgentClient::new(ch.clone());
    let ok = agents
        .list_agents(agentpb::ListAgentsRequest {
            page_size: -1,
            page_token: "junk".into(),
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let st = agents
        .list_agents(agentpb::ListAgentsRequest {
            page_size: 1,
            page_token: "junk".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), st.message()),
        (Code::Internal, "failed to list agents: could not parse token 'junk'")
    );

    let mut bundles = bundlepb::bundle_client::BundleClient::new(ch.clone());
    let ok = bundles
        .list_federated_bundles(bundlepb::ListFederatedBundlesRequest {
            page_size: -1,
            page_token: "Not A Domain".into(),
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let st = bundles
        .list_federated_bundles(bundlepb::ListFederatedBundlesRequest {
            page_size: 1,
            page_token: "Not A Domain".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), st.message()),
        (Code::Internal, "failed to list bundles: could not parse token 'Not A Domain'")
    );

    let mut tds = tdpb::trust_domain_client::TrustDomainClient::new(ch);
    let ok = tds
        .list_federation_relationships(tdpb::ListFederationRelationshipsRequest {
            page_size: 0,
            page_token: "Not A Domain".into(),
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let st = tds
        .list_federation_relationships(tdpb::ListFederationRelationshipsRequest {
            page_size: 1,
            page_token: "Not A Domain".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), st.message()),
        (
            Code::Internal,
            "failed to list federation relationships: could not parse token 'Not A Domain'"
        )
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn entry_filters_are_checked_as_spire_checks_them() {
    let ts = TestServer::start().await;
    let mut c = EntryClient::new(ts.admin().await);
    let sel_match = |selectors: Vec<types::Selector>, r#match: i32| {
        Some(types::SelectorMatch { selectors, r#match })
    };
    let fed_match = |trust_domains: &[&str], r#match: i32| {
        Some(types::FederatesWithMatch {
            trust_domains: trust_domains.iter().map(|s| (*s).to_owned()).collect(),
            r#match,
        })
    };
    type Filter = entrypb::list_entries_request::Filter;
    let cases: Vec<(Filter, Code, &str)> = vec![
        (
            Filter { by_parent_id: Some(id("other.org", "/x")), ..Default::default() },
            Code::InvalidArgument,
            "malformed parent ID filter: \"spiffe://other.org/x\" is not a member of trust \
             domain \"example.org\"",
        ),
        (
            Filter { by_parent_id: Some(id("example.org", "")), ..Default::default() },
            Code::InvalidArgument,
            "malformed parent ID filter: \"spiffe://example.org\" is not a member of trust \
             domain \"example.org\"; path is empty",
        ),
        (
            Filter { by_parent_id: Some(id("example.org", "x")), ..Default::default() },
            Code::InvalidArgument,
            "malformed parent ID filter: path must have a leading slash",
        ),
        (
            Filter { by_spiffe_id: Some(id("example.org", "/spire/x")), ..Default::default() },
            Code::InvalidArgument,
            "malformed SPIFFE ID filter: \"spiffe://example.org/spire/x\" is not a workload in \
             trust domain \"example.org\"; path is in the reserved namespace",
        ),
        (
            Filter { by_spiffe_id: Some(id("example.org", "")), ..Default::default() },
            Code::InvalidArgument,
            "malformed SPIFFE ID filter: \"spiffe://example.org\" is not a workload in trust \
             domain \"example.org\"; path is empty",
        ),
        (
            Filter { by_spiffe_id: Some(id("Bad", "/a")), ..Default::default() },
            Code::InvalidArgument,
            "malformed SPIFFE ID filter: trust domain characters are limited to lowercase \
             letters, numbers, dots, dashes, and underscores",
        ),
        (
            Filter { by_selectors: sel_match(vec![], 0), ..Default::default() },
            Code::InvalidArgument,
            "malformed selectors filter: empty selector set",
        ),
        (
            Filter { by_selectors: sel_match(vec![sel("a:b", "x")], 0), ..Default::default() },
            Code::InvalidArgument,
            "malformed selectors filter: selector type contains ':'",
        ),
        (
            Filter { by_selectors: sel_match(vec![sel("a", "b")], 9), ..Default::default() },
            Code::Internal,
            "failed to list entries: datastore-sql: unhandled selectors match behavior '\\t'",
        ),
        (
            Filter { by_federates_with: fed_match(&[], 0), ..Default::default() },
            Code::InvalidArgument,
            "malformed federates with filter: empty trust domain set",
        ),
        (
            Filter { by_federates_with: fed_match(&["Bad"], 0), ..Default::default() },
            Code::InvalidArgument,
            "malformed federates with filter: trust domain characters are limited to lowercase \
             letters, numbers, dots, dashes, and underscores",
        ),
        (
            Filter { by_federates_with: fed_match(&["x.org"], 9), ..Default::default() },
            Code::Internal,
            "failed to list entries: datastore-sql: unhandled federates with match behavior \
             '\\t'",
        ),
    ];
    for (filter, code, text) in cases {
        let st = c
            .list_entries(entrypb::ListEntriesRequest {
                filter: Some(filter.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!((st.code(), st.message()), (code, text));
        // CountEntries checks the same fields the same way.
        let count_filter = entrypb::count_entries_request::Filter {
            by_spiffe_id: filter.by_spiffe_id,
            by_parent_id: filter.by_parent_id,
            by_selectors: filter.by_selectors,
            by_federates_with: filter.by_federates_with,
            by_hint: filter.by_hint,
            by_downstream: filter.by_downstream,
        };
        let st = c
            .count_entries(entrypb::CountEntriesRequest { filter: Some(count_filter) })
            .await
            .unwrap_err();
        let text = text.replace("failed to list entries", "failed to count entries");
        assert_eq!((st.code(), st.message()), (code, text.as_str()));
    }
    // The parent of node aliases is a member ID: filtering by it is fine.
    let ok = c
        .list_entries(entrypb::ListEntriesRequest {
            filter: Some(Filter {
                by_parent_id: Some(id("example.org", "/spire/server")),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn agent_selector_filters_are_refused_as_spire_refuses_them() {
    let ts = TestServer::start().await;
    let mut c = agentpb::agent_client::AgentClient::new(ts.admin().await);
    let filter =
        |selectors: Vec<types::Selector>, r#match: i32| agentpb::list_agents_request::Filter {
            by_selector_match: Some(types::SelectorMatch { selectors, r#match }),
            ..Default::default()
        };
    let cases = [
        (
            filter(vec![sel("", "a")], 0),
            Code::InvalidArgument,
            "failed to parse selectors: missing selector type",
        ),
        (
            filter(vec![], 0),
            Code::Internal,
            "failed to list agents: cannot list by empty selectors set",
        ),
        (
            filter(vec![sel("a", "b")], 9),
            Code::Internal,
            "failed to list agents: datastore-sql: unhandled match behavior '\\t'",
        ),
    ];
    for (f, code, text) in cases {
        let st = c
            .list_agents(agentpb::ListAgentsRequest {
                filter: Some(f.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!((st.code(), st.message()), (code, text));
        let count = agentpb::count_agents_request::Filter {
            by_selector_match: f.by_selector_match,
            ..Default::default()
        };
        let st =
            c.count_agents(agentpb::CountAgentsRequest { filter: Some(count) }).await.unwrap_err();
        let text = text.replace("failed to list agents", "failed to count agents");
        assert_eq!((st.code(), st.message()), (code, text.as_str()));
    }
    ts.server.shutdown().await;
}

#[tokio::test]
async fn entries_list_in_creation_order_with_row_number_tokens_as_spire() {
    let ts = TestServer::start().await;
    let mut c = EntryClient::new(ts.admin().await);
    // SPIRE lists by row id: creation order, whatever the entry ids.
    let names = ["zz", "aa", "mm"];
    for name in names {
        let e = types::Entry { id: name.into(), ..entry(&format!("/{name}")) };
        assert_eq!(create(&mut c, vec![e]).await, vec![(Code::Ok, "OK".to_owned())]);
    }
    let all = c.list_entries(entrypb::ListEntriesRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), names);
    let (mut got, mut tokens, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = c
            .list_entries(entrypb::ListEntriesRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        got.extend(page.entries.iter().map(|e| e.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokens.push(token.clone());
    }
    assert_eq!(got, names);
    assert_eq!(tokens, ["1", "2", "3"]);
    ts.server.shutdown().await;
}
