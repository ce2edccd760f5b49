#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! An operator's reads of replicated state on a replica cut off from its cluster: the
//! replica still holds an agent, a federated bundle and a federation relationship that the
//! majority has deleted since, and a JWT authority of its own bundle is missing. Every admin
//! read of entries, agents, bundles and federation relationships answers `Unavailable`
//! ("cannot confirm this replica is up to date") instead of that stale copy, while what
//! agents read (the bundle to an anonymous caller, a federated bundle to an attested agent)
//! is still served from the replica's own store. The refusal comes after the cluster's read
//! timeout, however long writes may wait; a read with malformed input is refused with
//! `InvalidArgument` without waiting at all. Once the link is back, the same reads answer
//! with the majority's state.
//!
//! Three real replicas (drivers, sled stores) on the in-memory network; the one under test
//! serves the real gRPC services on its admin socket and TCP listener.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;
use ward_cluster::mem_network::MemNetwork;
use ward_cluster::{ClusterConfig, ClusterHandle, MembershipChange, NodeId, Replica, SledLogStore};
use ward_core::{
    AgentId, Bundle, BundleEndpointProfile, FederationRelationship, JwtAuthority, SelectorSet,
    SpiffeId, TrustDomain,
};
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::trustdomain::v1 as tdpb;
use ward_server::proposer::ClusterProposer;
use ward_store::{AgentAttestation, BundleDeleteMode, Command, Store, StoreConfig};

const WAIT: Duration = Duration::from_secs(30);
const AGENT: &str = "spiffe://example.org/spire/agent/test/1";
const FOREIGN: &str = "other.org";
/// The key id of the JWT authority the majority adds while the replica is cut off.
const MAJORITY_KEY: &str = "majority-key";

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

/// One replica's store and driver.
struct Node {
    store: Store,
    handle: ClusterHandle,
    _dir: tempfile::TempDir,
}

fn start_node(net: &MemNetwork, id: NodeId, bootstrap: bool) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::new(td("example.org"))).unwrap();
    let mut config = ClusterConfig::new(id);
    config.bootstrap = bootstrap;
    config.tick_interval = Duration::from_millis(20);
    config.election_tick = 10;
    config.heartbeat_tick = 2;
    // A read the leader does not confirm fails after `read_timeout`, however long a write may
    // wait: far beyond the test's deadline, so that a read bounded by it fails the test.
    config.propose_timeout = Duration::from_secs(600);
    config.read_timeout = Duration::from_secs(1);
    let handle = ward_cluster::start(Replica {
        config,
        log: SledLogStore::open(&store).unwrap(),
        store: store.clone(),
        transport: Some(net.transport(id)),
        snapshots: Some(net.snapshot_source(id)),
        runtime: tokio::runtime::Handle::current(),
    })
    .unwrap();
    net.register(id, handle.clone(), store.clone());
    Node { store, handle, _dir: dir }
}

/// Polls `f` until it yields a value; the test fails after [`WAIT`].
async fn until<T, Fut: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> Fut) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Proposes `cmd` through the leader (retrying while an election runs); its log index.
async fn propose(leader: &ClusterHandle, cmd: Command) -> u64 {
    until("a proposal", || async { leader.propose(cmd.clone()).await.ok() }).await.index
}

async fn wait_applied(store: &Store, index: u64) {
    until(&format!("index {index} applied"), || async {
        (store.last_applied() >= index).then_some(())
    })
    .await;
}

type Read = Pin<Box<dyn Future<Output = Result<String, tonic::Status>> + Send>>;

/// Each admin read under test, by name: its answer summarised (what a stale replica would
/// show), or its error.
fn admin_reads(channel: &tonic::transport::Channel) -> Vec<(&'static str, Read)> {
    let agents = || agentpb::agent_client::AgentClient::new(channel.clone());
    let bundles = || bundlepb::bundle_client::BundleClient::new(channel.clone());
    let entries = || entrypb::entry_client::EntryClient::new(channel.clone());
    let feds = || tdpb::trust_domain_client::TrustDomainClient::new(channel.clone());
    let agent_id = common::parse(AGENT);
    let foreign = FOREIGN.to_owned();
    let reads: Vec<(&'static str, Read)> = vec![
        ("CountAgents", {
            let mut c = agents();
            Box::pin(async move {
                let r = c.count_agents(agentpb::CountAgentsRequest::default()).await?;
                Ok(format!("{} agents", r.into_inner().count))
            })
        }),
        ("ListAgents", {
            let mut c = agents();
            Box::pin(async move {
                let r = c.list_agents(agentpb::ListAgentsRequest::default()).await?;
                Ok(format!("{} agents listed", r.into_inner().agents.len()))
            })
        }),
        ("GetAgent", {
            let mut c = agents();
            Box::pin(async move {
                let req = agentpb::GetAgentRequest { id: Some(agent_id), output_mask: None };
                let r = c.get_agent(req).await?;
                Ok(format!("agent {:?}", r.into_inner().id))
            })
        }),
        ("GetBundle", {
            let mut c = bundles();
            Box::pin(async move {
                let r = c.get_bundle(bundlepb::GetBundleRequest::default()).await?;
                let keys = r.into_inner().jwt_authorities;
                Ok(format!("majority key: {}", keys.iter().any(|k| k.key_id == MAJORITY_KEY)))
            })
        }),
        ("CountBundles", {
            let mut c = bundles();
            Box::pin(async move {
                let r = c.count_bundles(bundlepb::CountBundlesRequest::default()).await?;
                Ok(format!("{} bundles", r.into_inner().count))
            })
        }),
        ("ListFederatedBundles", {
            let mut c = bundles();
            Box::pin(async move {
                let r = c
                    .list_federated_bundles(bundlepb::ListFederatedBundlesRequest::default())
                    .await?;
                Ok(format!("{} federated bundles", r.into_inner().bundles.len()))
            })
        }),
        ("GetFederatedBundle", {
            let mut c = bundles();
            let foreign = foreign.clone();
            Box::pin(async move {
                let req = bundlepb::GetFederatedBundleRequest {
                    trust_domain: foreign,
                    output_mask: None,
                };
                let r = c.get_federated_bundle(req).await?;
                Ok(format!("bundle of {}", r.into_inner().trust_domain))
            })
        }),
        ("ListFederationRelationships", {
            let mut c = feds();
            Box::pin(async move {
                let req = tdpb::ListFederationRelationshipsRequest::default();
                let r = c.list_federation_relationships(req).await?;
                Ok(format!("{} relationships", r.into_inner().federation_relationships.len()))
            })
        }),
        ("GetFederationRelationship", {
            let mut c = feds();
            Box::pin(async move {
                let req = tdpb::GetFederationRelationshipRequest {
                    trust_domain: foreign,
                    output_mask: None,
                };
                let r = c.get_federation_relationship(req).await?;
                Ok(format!("relationship with {}", r.into_inner().trust_domain))
            })
        }),
        ("CountEntries", {
            let mut c = entries();
            Box::pin(async move {
                let r = c.count_entries(entrypb::CountEntriesRequest::default()).await?;
                Ok(format!("{} entries", r.into_inner().count))
            })
        }),
        ("ListEntries", {
            let mut c = entries();
            Box::pin(async move {
                let r = c.list_entries(entrypb::ListEntriesRequest::default()).await?;
                Ok(format!("{} entries listed", r.into_inner().entries.len()))
            })
        }),
        ("GetEntry", {
            let mut c = entries();
            Box::pin(async move {
                let req =
                    entrypb::GetEntryRequest { id: "no-such-entry".into(), output_mask: None };
                match c.get_entry(req).await {
                    Ok(r) => Ok(format!("entry {}", r.into_inner().id)),
                    Err(s) if s.code() == Code::NotFound => Ok("no such entry".into()),
                    Err(s) => Err(s),
                }
            })
        }),
    ];
    reads
}

/// Reads with malformed input, each with what it was refused with.
async fn bad_reads(channel: &tonic::transport::Channel) -> Vec<(&'static str, tonic::Status)> {
    let mut entries = entrypb::entry_client::EntryClient::new(channel.clone());
    let mut agents = agentpb::agent_client::AgentClient::new(channel.clone());
    let mut bundles = bundlepb::bundle_client::BundleClient::new(channel.clone());
    let mut feds = tdpb::trust_domain_client::TrustDomainClient::new(channel.clone());
    let missing_id = entrypb::GetEntryRequest { id: String::new(), output_mask: None };
    let no_agent = agentpb::GetAgentRequest { id: None, output_mask: None };
    let bad_td = || "Not A Trust Domain!".to_owned();
    let bundle = bundlepb::GetFederatedBundleRequest { trust_domain: bad_td(), output_mask: None };
    let rel = tdpb::GetFederationRelationshipRequest { trust_domain: bad_td(), output_mask: None };
    vec![
        ("GetEntry", entries.get_entry(missing_id).await.unwrap_err()),
        ("GetAgent", agents.get_agent(no_agent).await.unwrap_err()),
        ("GetFederatedBundle", bundles.get_federated_bundle(bundle).await.unwrap_err()),
        ("GetFederationRelationship", feds.get_federation_relationship(rel).await.unwrap_err()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_replica_refuses_admin_reads_but_serves_agents_its_bundle() {
    let net = MemNetwork::new(tokio::runtime::Handle::current());
    let leader = start_node(&net, 1, true);
    until("replica 1 to elect itself", || async {
        (leader.handle.leader() == Some(1)).then_some(())
    })
    .await;
    let mut followers = Vec::new();
    for id in [2, 3] {
        followers.push(start_node(&net, id, false));
        until("a new voter", || async {
            leader.handle.change_membership(MembershipChange::AddVoter(id)).await.ok()
        })
        .await;
    }
    let (cut, other) = (&followers[0], &followers[1]);

    // The replica under test serves the gRPC services over its own store and driver.
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config_in(dir.path(), "");
    let opts = ward_server::run::StartOptions {
        store: Some((cut.store.clone(), Arc::new(ClusterProposer::new(cut.handle.clone())))),
        ..ward_server::run::StartOptions::default()
    };
    let server = ward_server::run::start_with(cfg, opts).await.unwrap();
    let admin = ward_server::cli::admin_channel(&server.socket_path).await.unwrap();

    // What the majority will change while the replica is cut off.
    let agent = AgentId(SpiffeId::parse(AGENT).unwrap());
    propose(
        &leader.handle,
        Command::AttestAgent(AgentAttestation {
            id: agent.clone(),
            attestation_type: "test".into(),
            serial: "1".into(),
            expires_at: 4_000_000_000,
            selectors: SelectorSet::default(),
            can_reattest: false,
        }),
    )
    .await;
    propose(&leader.handle, Command::SetBundles(vec![Bundle::new(td(FOREIGN))])).await;
    let index = propose(
        &leader.handle,
        Command::CreateFederationRelationships(vec![FederationRelationship {
            trust_domain: td(FOREIGN),
            bundle_endpoint_url: "https://127.0.0.1:1/bundle".into(),
            profile: BundleEndpointProfile::HttpsWeb,
            trust_domain_bundle: None,
        }]),
    )
    .await;
    wait_applied(&cut.store, index).await;
    // A real agent, attested through the replica under test while it is connected.
    let token = agentpb::agent_client::AgentClient::new(admin.clone())
        .create_join_token(agentpb::CreateJoinTokenRequest { ttl: 600, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .value;
    let (key, csr) = common::key_and_csr();
    let svid = common::attest(server.tcp_addr, &token, csr).await.unwrap().svid.unwrap();
    let agent_identity =
        common::Identity { chain: svid.cert_chain, key_pkcs8: key.pkcs8_der().to_vec() };
    let roots: Vec<Vec<u8>> = bundlepb::bundle_client::BundleClient::new(admin.clone())
        .get_bundle(bundlepb::GetBundleRequest::default())
        .await
        .unwrap()
        .into_inner()
        .x509_authorities
        .into_iter()
        .map(|a| a.asn1)
        .collect();
    let before: Vec<(&str, String)> = futures::future::join_all(
        admin_reads(&admin).into_iter().map(|(name, read)| async move { (name, read.await) }),
    )
    .await
    .into_iter()
    .map(|(name, r)| (name, r.unwrap_or_else(|e| panic!("{name} while connected: {e:?}"))))
    .collect();

    // Cut off, the replica keeps its copy while the majority deletes all of it and adds a JWT
    // authority to the trust domain's bundle.
    net.isolate(2);
    propose(&leader.handle, Command::DeleteAgent(agent.clone())).await;
    propose(
        &leader.handle,
        Command::DeleteBundles {
            trust_domains: vec![td(FOREIGN)],
            mode: BundleDeleteMode::Restrict,
        },
    )
    .await;
    propose(&leader.handle, Command::DeleteFederationRelationships(vec![td(FOREIGN)])).await;
    let jwt = JwtAuthority {
        key_id: MAJORITY_KEY.into(),
        public_key_der: ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256)
            .unwrap()
            .public_key_der()
            .to_vec(),
        expires_at: 4_000_000_000,
        tainted: false,
    };
    let index = propose(
        &leader.handle,
        Command::AppendBundle {
            trust_domain: td("example.org"),
            x509_authorities: Vec::new(),
            jwt_authorities: vec![jwt],
        },
    )
    .await;
    wait_applied(&other.store, index).await;
    assert!(cut.store.agent(&agent).is_some(), "the cut-off replica still holds the agent");
    assert!(cut.store.last_applied() < index);

    let answers = tokio::time::timeout(
        WAIT,
        futures::future::join_all(
            admin_reads(&admin).into_iter().map(|(name, read)| async move { (name, read.await) }),
        ),
    )
    .await
    .expect("reads are refused after the read timeout, not the proposal timeout");
    for (name, answer) in answers {
        match answer {
            Ok(stale) => panic!("{name} answered from a stale copy while cut off: {stale}"),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{name}: {s:?}");
                assert!(
                    s.message().starts_with("cannot confirm this replica is up to date: "),
                    "{name}: {}",
                    s.message()
                );
            }
        }
    }

    // Bad input is refused for what it is, before any wait for the leader.
    for (name, refusal) in bad_reads(&admin).await {
        assert_eq!(refusal.code(), Code::InvalidArgument, "{name}: {refusal:?}");
        assert!(!refusal.message().starts_with("cannot confirm"), "{name}: {refusal:?}");
    }

    // What agents read stays local: the bundle to an anonymous caller (an agent before it
    // attests), and a federated bundle to the attested agent, from the replica's own copy.
    let tcp = common::tls_channel(server.tcp_addr, &[], None).await;
    let local = bundlepb::bundle_client::BundleClient::new(tcp)
        .get_bundle(bundlepb::GetBundleRequest::default())
        .await
        .expect("the agent-facing bundle is served from the replica's own store")
        .into_inner();
    let as_agent = common::tls_channel(server.tcp_addr, &roots, Some(agent_identity)).await;
    let federated = bundlepb::bundle_client::BundleClient::new(as_agent)
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: FOREIGN.into(),
            output_mask: None,
        })
        .await
        .expect("an agent's federated bundle is served from the replica's own store")
        .into_inner();
    assert_eq!(federated.trust_domain, FOREIGN);
    assert!(local.jwt_authorities.iter().all(|a| a.key_id != MAJORITY_KEY));

    // Healed, the same reads answer with the majority's state.
    net.heal();
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let answers = futures::future::join_all(
            admin_reads(&admin).into_iter().map(|(name, read)| async move { (name, read.await) }),
        )
        .await;
        let summary: Vec<(&str, Result<String, Code>)> =
            answers.into_iter().map(|(n, r)| (n, r.map_err(|s| s.code()))).collect();
        if summary.iter().all(|(_, r)| !matches!(r, Err(Code::Unavailable))) {
            break summary;
        }
        assert!(Instant::now() < deadline, "reads after the heal: {summary:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let want_after = |name: &str| -> Result<String, Code> {
        match name {
            "CountAgents" => Ok("1 agents".into()),
            "ListAgents" => Ok("1 agents listed".into()),
            "GetBundle" => Ok("majority key: true".into()),
            "CountBundles" => Ok("1 bundles".into()),
            "ListFederatedBundles" => Ok("0 federated bundles".into()),
            "ListFederationRelationships" => Ok("0 relationships".into()),
            "CountEntries" => Ok("0 entries".into()),
            "ListEntries" => Ok("0 entries listed".into()),
            "GetEntry" => Ok("no such entry".into()),
            _ => Err(Code::NotFound),
        }
    };
    for (name, got) in &after {
        assert_eq!(*got, want_after(name), "{name} after the heal");
    }
    // And before the cut they showed what the majority then deleted.
    for (name, want) in [
        ("CountAgents", "2 agents"),
        ("GetBundle", "majority key: false"),
        (
            "GetAgent",
            "agent Some(Spiffeid { trust_domain: \"example.org\", path: \"/spire/agent/test/1\" })",
        ),
        ("CountBundles", "2 bundles"),
        ("GetFederatedBundle", "bundle of other.org"),
        ("GetFederationRelationship", "relationship with other.org"),
    ] {
        let got = before.iter().find(|(n, _)| *n == name).map(|(_, s)| s.as_str());
        assert_eq!(got, Some(want), "{name} before the cut");
    }
    drop(server);
}
