//! The Agent API over the real admin socket and agent mTLS, answering as SPIRE v1.13.3 does:
//! agent ID arguments, join-token agent IDs, RenewAgent for re-attesting agents, and the
//! unmodified `spire-server agent purge` against ward.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tonic::Code;
use ward_core::{AgentId, SelectorSet, SpiffeId};
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::types;
use ward_store::{AgentAttestation, Command, EntryFilter, PageRequest};

fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let e = r.unwrap_err();
    (e.code(), e.message().to_owned())
}

fn invalid(message: &str) -> (Code, String) {
    (Code::InvalidArgument, message.to_owned())
}

/// Records an attested agent directly in the store (as a node attestor other than join_token
/// would) and returns an identity for it: an SVID from the server's CA expiring `expires_in`
/// seconds from now (negative: already expired).
async fn record_agent(
    ts: &TestServer,
    path: &str,
    can_reattest: bool,
    expires_in: i64,
) -> Identity {
    let id = SpiffeId::parse(&format!("spiffe://example.org{path}")).unwrap();
    let key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    let ca = ts.server.state.ca.x509_ca().unwrap();
    let params =
        ward_ca::SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(600) };
    let leaf =
        ca.sign_x509_svid(key.public_key_der(), &params, std::time::SystemTime::now()).unwrap();
    let facts = ward_server::tls::leaf_facts(&leaf).unwrap();
    let expires_at = ward_core::clock::unix_seconds(std::time::SystemTime::now()) + expires_in;
    let cmd = Command::AttestAgent(AgentAttestation {
        id: AgentId(id),
        attestation_type: "x509pop".into(),
        serial: facts.serial,
        expires_at,
        selectors: SelectorSet::default(),
        can_reattest,
    });
    ts.server.state.proposer.propose(cmd).await.unwrap();
    Identity { chain: vec![leaf], key_pkcs8: key.pkcs8_der().to_vec() }
}

async fn agent_ids(ts: &TestServer) -> Vec<String> {
    let mut c = agentpb::agent_client::AgentClient::new(ts.admin().await);
    let resp = c.list_agents(agentpb::ListAgentsRequest::default()).await.unwrap().into_inner();
    let mut ids: Vec<String> = resp
        .agents
        .into_iter()
        .map(|a| {
            let i = a.id.unwrap();
            format!("spiffe://{}{}", i.trust_domain, i.path)
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn get_delete_and_ban_take_only_agent_ids_of_the_trust_domain() {
    let ts = TestServer::start().await;
    let (_, agent) = new_agent(&ts).await;
    let mut c = agentpb::agent_client::AgentClient::new(ts.admin().await);
    let cases = [
        (
            Some(id("example.org", "/workload")),
            "invalid agent ID: \"spiffe://example.org/workload\" is not an agent in trust domain \
             \"example.org\"; path is not in the agent namespace",
        ),
        (
            Some(id("example.org", "/spire/server")),
            "invalid agent ID: \"spiffe://example.org/spire/server\" is not an agent in trust \
             domain \"example.org\"; path is not in the agent namespace",
        ),
        (
            Some(id("example.org", "")),
            "invalid agent ID: \"spiffe://example.org\" is not an agent in trust domain \
             \"example.org\"; path is empty",
        ),
        (
            Some(id("other.org", "/spire/agent/x")),
            "invalid agent ID: \"spiffe://other.org/spire/agent/x\" is not a member of trust \
             domain \"example.org\"",
        ),
        (None, "invalid agent ID: request must specify SPIFFE ID"),
    ];
    for (agent_id, want) in cases {
        let get = c.get_agent(agentpb::GetAgentRequest { id: agent_id.clone(), output_mask: None });
        assert_eq!(refusal(get.await), invalid(want));
        let del = c.delete_agent(agentpb::DeleteAgentRequest { id: agent_id.clone() });
        assert_eq!(refusal(del.await), invalid(want));
        let ban = c.ban_agent(agentpb::BanAgentRequest { id: agent_id });
        assert_eq!(refusal(ban.await), invalid(want));
    }
    // An agent ID of the trust domain that nobody holds is simply not found.
    let missing = Some(id("example.org", "/spire/agent/join_token/none"));
    let get = c.get_agent(agentpb::GetAgentRequest { id: missing, output_mask: None }).await;
    assert_eq!(refusal(get), (Code::NotFound, "agent not found".to_owned()));
    assert_eq!(agent_ids(&ts).await, [agent]);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn join_token_agent_id_is_checked_before_anything_is_written() {
    let ts = TestServer::start().await;
    let mut c = agentpb::agent_client::AgentClient::new(ts.admin().await);
    let token = |agent_id: Option<types::Spiffeid>| agentpb::CreateJoinTokenRequest {
        ttl: 600,
        token: "fixed-token".into(),
        agent_id,
    };
    let cases = [
        (
            id("example.org", "/spire/agent/mine"),
            "invalid agent ID: \"spiffe://example.org/spire/agent/mine\" is not a workload in \
             trust domain \"example.org\"; path is in the reserved namespace",
        ),
        (
            id("example.org", ""),
            "invalid agent ID: \"spiffe://example.org\" is not a workload in trust domain \
             \"example.org\"; path is empty",
        ),
        (
            id("other.org", "/node"),
            "invalid agent ID: \"spiffe://other.org/node\" is not a member of trust domain \
             \"example.org\"",
        ),
        (id("example.org", "no-slash"), "invalid agent ID: path must have a leading slash"),
    ];
    let applied = ts.server.state.store.last_applied();
    for (agent_id, want) in cases {
        assert_eq!(refusal(c.create_join_token(token(Some(agent_id))).await), invalid(want));
    }
    assert_eq!(ts.server.state.store.last_applied(), applied, "nothing was written");
    assert!(ts.server.state.store.join_token("fixed-token").is_none());

    let made = c.create_join_token(token(Some(id("example.org", "/node")))).await.unwrap();
    assert_eq!(made.into_inner().value, "fixed-token");
    assert_eq!(
        refusal(c.create_join_token(token(None)).await),
        (
            Code::Internal,
            "failed to create token: datastore-sql: UNIQUE constraint failed: join_tokens.token"
                .to_owned()
        )
    );
    let entries = ts.server.state.store.list_entries(&EntryFilter::default(), &PageRequest::all());
    assert_eq!(entries.items.len(), 1);
    assert_eq!(entries.items[0].spiffe_id.as_str(), "spiffe://example.org/node");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn a_reattesting_agent_is_told_to_reattest_instead_of_renewing() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let ident = record_agent(&ts, "/spire/agent/x509pop/node1", true, 600).await;
    let mut c =
        agentpb::agent_client::AgentClient::new(tls_channel(ts.addr(), &roots, Some(ident)).await);
    let (_, csr) = key_and_csr();
    let err = c
        .renew_agent(agentpb::RenewAgentRequest {
            params: Some(agentpb::AgentX509svidParams { csr }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "agent must reattest instead of renew");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn malformed_expires_before_filter_is_ignored_as_spire_ignores_it() {
    let ts = TestServer::start().await;
    let (_, a) = new_agent(&ts).await;
    let (_, b) = new_agent(&ts).await;
    let mut c = agentpb::agent_client::AgentClient::new(ts.admin().await);
    for value in ["yesterday", "2026-01-01T00:00:00Z", "0001-01-01 00:00:00 +0000 +00"] {
        let filter = agentpb::count_agents_request::Filter {
            by_expires_before: value.into(),
            ..Default::default()
        };
        let count = c
            .count_agents(agentpb::CountAgentsRequest { filter: Some(filter) })
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(count, 2, "{value}");
    }
    let filter = agentpb::list_agents_request::Filter {
        by_expires_before: "2000-01-01 00:00:00 +0000 +00".into(),
        ..Default::default()
    };
    let listed = c
        .list_agents(agentpb::ListAgentsRequest { filter: Some(filter), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.agents.is_empty(), "every agent expires after 2000");
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(agent_ids(&ts).await, want);
    ts.server.shutdown().await;
}

/// The directory of the unmodified SPIRE v1.13.3 binaries (`WARD_SPIRE_BIN`, as `tests/run`
/// sets it, or the cache `tests/interop/spire/build.sh` fills).
fn spire_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARD_SPIRE_BIN") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    Path::new(&home).join(".cache/ward/spire/v1.13.3")
}

/// Runs `spire-server agent purge <args>` against `socket`; returns (exit code, stdout,
/// stderr).
async fn spire_purge(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let bin = spire_bin_dir().join("spire-server");
    assert!(bin.is_file(), "{} is missing: run tests/interop/spire/build.sh", bin.display());
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["agent", "purge", "-socketPath"]).arg(socket).args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("spire-server agent purge finished within a minute")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn spire_server_agent_purge_works_against_ward() {
    let ts = TestServer::start().await;
    let socket = ts.server.socket_path.clone();
    const DAY: i64 = 86_400;
    record_agent(&ts, "/spire/agent/x509pop/long-gone", true, -40 * DAY).await;
    record_agent(&ts, "/spire/agent/x509pop/yesterday", true, -DAY).await;
    record_agent(&ts, "/spire/agent/x509pop/alive", true, DAY).await;
    // Agents that cannot re-attest are never purged, however long expired.
    record_agent(&ts, "/spire/agent/x509pop/tofu", false, -40 * DAY).await;
    let all = agent_ids(&ts).await;
    assert_eq!(all.len(), 4);

    let gone = "spiffe://example.org/spire/agent/x509pop/long-gone";
    let yesterday = "spiffe://example.org/spire/agent/x509pop/yesterday";
    let dry = spire_purge(&socket, &["-dryRun"]).await;
    assert_eq!(
        dry,
        (
            0,
            format!(
                "Found 1 expired agent\n\n\nAgents that can be purged:\nSPIFFE ID         : {gone}\n"
            ),
            String::new()
        )
    );
    assert_eq!(agent_ids(&ts).await, all, "a dry run deletes nothing");

    let purged = spire_purge(&socket, &[]).await;
    assert_eq!(
        purged,
        (
            0,
            format!("Found 1 expired agent\n\nAgents purged:\nSPIFFE ID         : {gone}\n"),
            String::new()
        )
    );
    let json = spire_purge(&socket, &["-expiredFor", "1h", "-output", "json"]).await;
    assert_eq!(json.0, 0, "{json:?}");
    let parsed: serde_json::Value = serde_json::from_str(&json.1).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!([{"expired_agents": [{"agent_id": yesterday, "deleted": true}]}])
    );
    assert_eq!(
        spire_purge(&socket, &[]).await,
        (0, "No agents to purge.\n".to_owned(), String::new())
    );
    assert_eq!(
        agent_ids(&ts).await,
        [
            "spiffe://example.org/spire/agent/x509pop/alive",
            "spiffe://example.org/spire/agent/x509pop/tofu"
        ]
    );
    ts.server.shutdown().await;
}
