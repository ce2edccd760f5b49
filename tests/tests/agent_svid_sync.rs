#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! ward-agent's entry sync and SVID manager against a real `ward-server` process (and the
//! basics against an unmodified spire-server v1.13.3): entries created through the admin API
//! appear in the agent's cache with a valid X509-SVID, an update that changes the SVID
//! re-mints it, a delete removes it, a short-TTL SVID rotates before it expires, a delta sync
//! asks only for the changed entry, JWT-SVIDs are cached per audience set, and the SVID cache
//! bound holds while a served workload still gets its SVID.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tonic::transport::Channel;
use ward_agent::cache::{Cache, CacheView, JwtSvidSource, X509Identity};
use ward_agent::jwt::JwtSvids;
use ward_agent::manager::{Manager, ManagerConfig};
use ward_agent::sync::SyncCounters;
use ward_ca::{KeyType, PrivateKey, build_csr};
use ward_core::{Bundle, Clock, Selector, SelectorSet, TrustDomain};
use ward_proto::convert::{attest_agent_params, bundle_from_proto};
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;
use ward_server::cli::admin_channel;
use ward_server::tls::{SpiffeServerVerifier, agent_channel, agent_client_config};
use ward_tests::cli::AdminCli;
use ward_tests::server::{ServerOptions, ServerProcess};

const TD: &str = "example.org";
/// Long enough for a debug-build server under load; every wait ends as soon as its
/// condition holds.
const DEADLINE: Duration = Duration::from_secs(60);

struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A server with an attested agent: the admin channel and the agent's mTLS channel.
struct Attested {
    _dir: tempfile::TempDir,
    server: ServerProcess,
    admin: Channel,
    agent_id: String,
    channel: Channel,
    bundle: Bundle,
}

impl Drop for Attested {
    fn drop(&mut self) {
        let _ = self.server.daemon.terminate(Duration::from_secs(10));
    }
}

enum Kind {
    Ward,
    Spire,
}

async fn attested(kind: Kind) -> Attested {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::new(TD);
    let (mut server, bin) = match kind {
        Kind::Ward => {
            let bin = ward_tests::ward::ward_server_bin().unwrap();
            (ward_tests::ward::start_ward_server(&bin, dir.path(), &options).unwrap(), bin)
        }
        Kind::Spire => {
            let bins = ward_tests::spire::SpireBins::locate().unwrap();
            let s = ward_tests::spire::start_spire_server(&bins, dir.path(), &options).unwrap();
            (s, bins.server)
        }
    };
    let cli = AdminCli::new(&bin, &server.socket_path);
    let daemon = &mut server.daemon;
    tokio::task::block_in_place(|| ward_tests::agent_scenario::wait_ready(daemon, &cli)).unwrap();
    let admin = admin_channel(&server.socket_path).await.unwrap();

    tracing::info!("attesting an agent with a join token");
    let token = agentpb::agent_client::AgentClient::new(admin.clone())
        .create_join_token(agentpb::CreateJoinTokenRequest { ttl: 600, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .value;
    let addr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let td = TrustDomain::new(TD).unwrap();
    let insecure = Arc::new(SpiffeServerVerifier::for_trust_domain(&td, None).unwrap());
    let bootstrap =
        agent_channel(addr, Arc::new(agent_client_config(insecure, None).unwrap())).await.unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let req =
        attest_agent_params("join_token", token.as_bytes().to_vec(), build_csr(&key).unwrap());
    let mut stream = agentpb::agent_client::AgentClient::new(bootstrap.clone())
        .attest_agent(futures_iter(req))
        .await
        .unwrap()
        .into_inner();
    let chain = match stream.message().await.unwrap().unwrap().step.unwrap() {
        agentpb::attest_agent_response::Step::Result(r) => r.svid.unwrap().cert_chain,
        other => panic!("unexpected step {other:?}"),
    };
    let bundle = bundlepb::bundle_client::BundleClient::new(bootstrap)
        .get_bundle(bundlepb::GetBundleRequest::default())
        .await
        .unwrap()
        .into_inner();
    let bundle = bundle_from_proto(&bundle).unwrap();
    let roots: Vec<Vec<u8>> = bundle.x509_authorities.iter().map(|a| a.der.clone()).collect();
    let verifier = Arc::new(SpiffeServerVerifier::for_trust_domain(&td, Some(&roots)).unwrap());
    let cfg = agent_client_config(verifier, Some((chain, key.pkcs8_der().to_vec()))).unwrap();
    let channel = agent_channel(addr, Arc::new(cfg)).await.unwrap();
    Attested {
        _dir: dir,
        server,
        admin,
        agent_id: format!("spiffe://{TD}/spire/agent/join_token/{token}"),
        channel,
        bundle,
    }
}

fn futures_iter(
    req: agentpb::AttestAgentRequest,
) -> impl tokio_stream::Stream<Item = agentpb::AttestAgentRequest> {
    tokio_stream::iter(vec![req])
}

fn spiffe_id(s: &str) -> types::Spiffeid {
    let rest = s.strip_prefix("spiffe://").unwrap();
    let (td, path) = rest.split_once('/').unwrap();
    types::Spiffeid { trust_domain: td.into(), path: format!("/{path}") }
}

fn entry(parent: &str, path: &str, uid: u32) -> types::Entry {
    types::Entry {
        spiffe_id: Some(spiffe_id(&format!("spiffe://{TD}{path}"))),
        parent_id: Some(spiffe_id(parent)),
        selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{uid}") }],
        ..Default::default()
    }
}

/// Creates `entries`; returns their ids in order.
async fn create(admin: &Channel, entries: Vec<types::Entry>) -> Vec<String> {
    let resp = entrypb::entry_client::EntryClient::new(admin.clone())
        .batch_create_entry(entrypb::BatchCreateEntryRequest { entries, output_mask: None })
        .await
        .unwrap()
        .into_inner();
    resp.results
        .into_iter()
        .map(|r| {
            let status = r.status.unwrap_or_default();
            assert_eq!(status.code, 0, "create: {}", status.message);
            r.entry.unwrap().id
        })
        .collect()
}

async fn update(admin: &Channel, e: types::Entry) {
    let resp = entrypb::entry_client::EntryClient::new(admin.clone())
        .batch_update_entry(entrypb::BatchUpdateEntryRequest {
            entries: vec![e],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = resp.results[0].status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "update: {}", status.message);
}

async fn delete(admin: &Channel, id: &str) {
    entrypb::entry_client::EntryClient::new(admin.clone())
        .batch_delete_entry(entrypb::BatchDeleteEntryRequest { ids: vec![id.into()] })
        .await
        .unwrap();
}

/// Waits until `check` returns something for the cache's view, or panics at the deadline with
/// the last view's summary.
async fn wait_view<T>(
    cache: &Cache,
    what: &str,
    mut check: impl FnMut(&CacheView) -> Option<T>,
) -> T {
    let mut rx = cache.subscribe();
    let outcome = tokio::time::timeout(DEADLINE, async {
        loop {
            let view = rx.borrow_and_update().clone();
            if let Some(t) = check(&view) {
                return t;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    match outcome {
        Ok(t) => t,
        Err(_) => {
            let view = cache.current();
            panic!(
                "timed out waiting for {what}; view {} has {} identities, {} pending",
                view.revision,
                view.identities.len(),
                view.pending.len()
            )
        }
    }
}

fn find(view: &CacheView, entry_id: &str) -> Option<Arc<X509Identity>> {
    view.identities.iter().find(|i| i.entry_id == entry_id).cloned()
}

fn dns_names(leaf: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Running {
    cache: Arc<Cache>,
    sync: Arc<SyncCounters>,
    counters: Arc<ward_agent::manager::ManagerCounters>,
    channel: watch::Receiver<Channel>,
    task: tokio::task::JoinHandle<Result<(), ward_agent::error::SyncError>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_manager(a: &Attested, edit: impl FnOnce(&mut ManagerConfig)) -> Running {
    let mut config = ManagerConfig::new(TrustDomain::new(TD).unwrap());
    config.sync_interval = Duration::from_millis(500);
    edit(&mut config);
    let cache = Arc::new(Cache::new(CacheView::new(a.bundle.clone())));
    let (_tx, channel) = watch::channel(a.channel.clone());
    let manager = Manager::new(config, channel.clone(), Arc::clone(&cache), Arc::new(SystemClock));
    let sync = manager.sync_counters();
    let counters = manager.counters();
    let task = tokio::spawn(manager.run());
    Running { cache, sync, counters, channel, task }
}

fn selectors(uid: u32) -> SelectorSet {
    [Selector::parse(&format!("unix:uid:{uid}")).unwrap()].into_iter().collect()
}

/// Entries appear with SVIDs that verify against the bundle; a DNS name change re-mints, a
/// delete removes, a short TTL rotates before expiry; JWT-SVIDs are cached per audience set.
async fn entry_lifecycle(kind: Kind) {
    let a = attested(kind).await;
    let run = start_manager(&a, |_| {});

    tracing::info!("two entries appear with valid SVIDs");
    let mut short = entry(&a.agent_id, "/short", 1001);
    short.x509_svid_ttl = 20;
    short.jwt_svid_ttl = 6;
    let ids = create(&a.admin, vec![entry(&a.agent_id, "/web", 1000), short]).await;
    let (web, short_id) = (ids[0].clone(), ids[1].clone());
    let (first_web, first_short) =
        wait_view(&run.cache, "both SVIDs", |v| Some((find(v, &web)?, find(v, &short_id)?))).await;
    let view = run.cache.current();
    let now = SystemTime::now();
    for id in [&first_web, &first_short] {
        let got = ward_core::x509svid::verify_with_bundle(&id.chain, &view.bundle, now).unwrap();
        assert_eq!(got, id.spiffe_id);
        // The key is the one the SVID certifies.
        let key = PrivateKey::from_pkcs8_der(&id.private_key).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&id.chain[0]).unwrap();
        assert_eq!(leaf.public_key().raw, key.public_key_der());
    }
    assert_eq!(first_web.spiffe_id.to_string(), format!("spiffe://{TD}/web"));
    assert_eq!(first_web.selectors, selectors(1000));

    tracing::info!("a DNS name added to an entry re-mints its SVID");
    let mut changed = entry(&a.agent_id, "/web", 1000);
    changed.id = web.clone();
    changed.dns_names = vec!["web.example.org".into()];
    update(&a.admin, changed).await;
    let reminted = wait_view(&run.cache, "the re-minted SVID", |v| {
        find(v, &web).filter(|i| i.chain[0] != first_web.chain[0])
    })
    .await;
    assert_eq!(dns_names(&reminted.chain[0]), ["web.example.org"]);
    assert_ne!(**reminted.private_key, **first_web.private_key, "a new key per SVID");

    tracing::info!("the 20 s SVID rotates before it expires");
    let rotated = wait_view(&run.cache, "the short SVID's rotation", |v| {
        find(v, &short_id).filter(|i| i.chain[0] != first_short.chain[0])
    })
    .await;
    assert!(SystemTime::now() < first_short.expires_at, "rotated only after expiry");
    assert!(rotated.expires_at > first_short.expires_at);
    assert!(run.counters.svids_renewed.load(Ordering::Relaxed) >= 2);

    tracing::info!("JWT-SVIDs are cached per (SPIFFE ID, audience set)");
    let jwt = JwtSvids::new(run.channel.clone(), Arc::new(SystemClock), 100);
    let aud = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let t1 = jwt.fetch_jwt_svid(&reminted, &aud(&["a", "b"])).await.unwrap();
    let t2 = jwt.fetch_jwt_svid(&reminted, &aud(&["b", "a"])).await.unwrap();
    assert_eq!(t1, t2);
    assert_eq!(jwt.minted(), 1);
    let t3 = jwt.fetch_jwt_svid(&reminted, &aud(&["c"])).await.unwrap();
    assert_ne!(t1.token, t3.token);
    assert_eq!(jwt.minted(), 2);
    assert_eq!(t1.spiffe_id, reminted.spiffe_id);
    let claims = jwt_claims(&t3.token);
    assert_eq!(claims["sub"], format!("spiffe://{TD}/web"));
    // One audience may be a string or a one-element array (go-jose writes the former).
    assert!(
        claims["aud"] == serde_json::json!(["c"]) || claims["aud"] == serde_json::json!("c"),
        "{}",
        claims["aud"]
    );

    tracing::info!("a JWT-SVID is served from the cache until half its lifetime has passed");
    let first = jwt.fetch_jwt_svid(&rotated, &aud(&["x"])).await.unwrap();
    let minted = jwt.minted();
    assert_eq!(jwt.fetch_jwt_svid(&rotated, &aud(&["x"])).await.unwrap(), first);
    assert_eq!(jwt.minted(), minted);
    let claims = jwt_claims(&first.token);
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, 6, "the entry's jwt_svid_ttl");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let renewed = loop {
        let t = jwt.fetch_jwt_svid(&rotated, &aud(&["x"])).await.unwrap();
        if t.token != first.token {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "the JWT-SVID was never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(SystemClock.unix_seconds() >= iat + 3, "renewed before its half-life");
    assert_eq!(jwt.minted(), minted + 1);
    assert!(jwt_claims(&renewed.token)["iat"].as_i64().unwrap() >= iat + 3);

    tracing::info!("a deleted entry leaves the cache");
    delete(&a.admin, &web).await;
    wait_view(&run.cache, "the deleted entry to go", |v| find(v, &web).is_none().then_some(()))
        .await;
    assert!(find(&run.cache.current(), &short_id).is_some());
    assert!(!run.task.is_finished());
}

fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_become_svids_that_follow_updates_deletes_and_rotation() {
    entry_lifecycle(Kind::Ward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_become_svids_against_spire_server() {
    entry_lifecycle(Kind::Spire).await;
}

/// With more entries than one sync page (500), the server sends revisions and the agent asks
/// only for what changed; the SVID cache bound holds, and a served workload whose entry has
/// no SVID gets one while the bound evicts an idle one instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sync_fetches_only_changed_entries_and_the_svid_bound_holds() {
    let a = attested(Kind::Ward).await;
    const N: u32 = 520;
    const MAX: usize = 50;
    let entries: Vec<types::Entry> =
        (0..N).map(|i| entry(&a.agent_id, &format!("/w{i:04}"), 2000 + i)).collect();
    let ids = create(&a.admin, entries).await;
    let run = start_manager(&a, |c| c.x509_svid_cache_max_size = MAX);

    tracing::info!("the first sync fetches every entry; SVIDs stop at the bound");
    let view = wait_view(&run.cache, "the bound to fill", |v| {
        (v.identities.len() == MAX && v.pending.len() == N as usize - MAX).then(|| v.clone())
    })
    .await;
    assert_eq!(run.sync.entries_fetched.load(Ordering::Relaxed), u64::from(N));
    assert_eq!(run.sync.ids_requested.load(Ordering::Relaxed), u64::from(N));

    tracing::info!("one updated entry is the only one asked for");
    let held = view.identities[0].clone();
    let target = held.entry_id.clone();
    let index = held.spiffe_id.path()[2..].parse::<u32>().unwrap();
    assert_eq!(ids[index as usize], target);
    let mut changed = entry(&a.agent_id, held.spiffe_id.path(), 2000 + index);
    changed.id = target.clone();
    changed.hint = "changed".into();
    update(&a.admin, changed).await;
    wait_view(&run.cache, "the new hint", |v| {
        find(v, &target).filter(|i| i.hint == "changed").map(|_| ())
    })
    .await;
    assert_eq!(run.sync.ids_requested.load(Ordering::Relaxed), u64::from(N) + 1);
    assert_eq!(run.sync.entries_fetched.load(Ordering::Relaxed), u64::from(N) + 1);
    assert!(run.sync.syncs.load(Ordering::Relaxed) >= 2);

    tracing::info!("a served workload whose entry is pending gets its SVID; the bound holds");
    let pending = view.pending.last().unwrap().clone();
    let uid = 2000 + pending.spiffe_id.path()[2..].parse::<u32>().unwrap();
    let _interest = run.cache.register_workload(selectors(uid));
    let view = wait_view(&run.cache, "the served workload's SVID within the bound", |v| {
        (find(v, &pending.entry_id).is_some() && v.identities.len() == MAX).then(|| v.clone())
    })
    .await;
    assert_eq!(view.pending.len(), N as usize - MAX);
    assert!(!view.is_pending_for(&selectors(uid)));
    let evicted = run.counters.svids_evicted.load(Ordering::Relaxed);
    let minted = run.counters.svids_minted.load(Ordering::Relaxed);
    assert_eq!((minted, evicted), (MAX as u64 + 1, 1));
}

/// When the server's X.509 authority is replaced and the old one tainted, SVIDs signed by the
/// old one rotate at the next sync instead of at their half-life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_of_a_tainted_authority_rotate_onto_the_new_one() {
    use ward_proto::spire::api::server::localauthority::v1 as lapb;
    let a = attested(Kind::Ward).await;
    let run = start_manager(&a, |_| {});
    let id = create(&a.admin, vec![entry(&a.agent_id, "/tainted", 3000)]).await.remove(0);
    let before = wait_view(&run.cache, "the SVID", |v| find(v, &id)).await;

    tracing::info!("prepare and activate a new X.509 authority, then taint the old one");
    let mut la = lapb::local_authority_client::LocalAuthorityClient::new(a.admin.clone());
    let old = la
        .get_x509_authority_state(lapb::GetX509AuthorityStateRequest {})
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap()
        .authority_id;
    let new = la
        .prepare_x509_authority(lapb::PrepareX509AuthorityRequest {})
        .await
        .unwrap()
        .into_inner()
        .prepared_authority
        .unwrap()
        .authority_id;
    la.activate_x509_authority(lapb::ActivateX509AuthorityRequest { authority_id: new })
        .await
        .unwrap();
    la.taint_x509_authority(lapb::TaintX509AuthorityRequest { authority_id: old }).await.unwrap();

    let after = wait_view(&run.cache, "the SVID to leave the tainted authority", |v| {
        let untainted: Vec<Vec<u8>> = v
            .bundle
            .x509_authorities
            .iter()
            .filter(|x| !x.tainted)
            .map(|x| x.der.clone())
            .collect();
        find(v, &id).filter(|i| {
            i.chain[0] != before.chain[0]
                && ward_agent::manager::chained_to(&i.chain, &untainted, SystemTime::now())
        })
    })
    .await;
    let tainted: Vec<Vec<u8>> = run
        .cache
        .current()
        .bundle
        .x509_authorities
        .iter()
        .filter(|x| x.tainted)
        .map(|x| x.der.clone())
        .collect();
    assert_eq!(tainted.len(), 1);
    assert!(ward_agent::manager::chained_to(&before.chain, &tainted, SystemTime::now()));
    assert!(!ward_agent::manager::chained_to(&after.chain, &tainted, SystemTime::now()));
}
