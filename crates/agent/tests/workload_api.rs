//! The Workload API over a real Unix socket: the test process is the caller, attested by the
//! real `unix` attestor from its own `/proc` entry; SVIDs and JWT-SVIDs are signed by a real
//! ward-ca CA.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};
use ward_agent::cache::{Cache, CacheView, PendingIdentity, X509Identity};
use ward_agent::workload::{
    CallerAttestor, ListenerConfig, WorkloadApi, WorkloadApiConfig, WorkloadListener,
};
use ward_attest::{ProcFs, UnixAttestor, UnixConfig, WorkloadAttestor};
use ward_ca::{JwtSigner, KeyType, PrivateKey};
use ward_core::{Bundle, Selector, SelectorSet, SpiffeId, X509Authority};
use ward_proto::spiffe::workload as pb;
use ward_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use ward_testkit::TestAuthority;
use ward_testkit::agent::{self, TestJwtSource};

const TD: &str = "example.org";

/// The test process's effective uid, as the unix attestor reports it.
fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn uid_selector(uid: u32) -> SelectorSet {
    SelectorSet::new(vec![Selector::new("unix", &format!("uid:{uid}")).unwrap()])
}

/// An identity for entry `entry_id` with SPIFFE ID `path` in the trust domain, selected by
/// `selectors`, with an SVID freshly signed by `authority`.
fn identity(
    authority: &TestAuthority,
    entry_id: &str,
    path: &str,
    selectors: SelectorSet,
) -> Arc<X509Identity> {
    let spiffe_id = SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap();
    agent::identity(authority, entry_id, spiffe_id, selectors)
}

/// An agent's Workload API on a socket in a temporary directory.
struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    cache: Arc<Cache>,
    authority: Arc<TestAuthority>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Agent {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("public").join("agent.sock");
        let authority = Arc::new(TestAuthority::new(TD));
        let cache = Arc::new(Cache::new(CacheView::new(authority.bundle())));
        let attestors: Vec<Box<dyn WorkloadAttestor>> =
            vec![Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default()))];
        let api = WorkloadApi::new(
            Arc::clone(&cache),
            Arc::new(TestJwtSource(Arc::clone(&authority))),
            CallerAttestor::new(attestors),
            WorkloadApiConfig::default(),
        );
        let listener = WorkloadListener::bind(&ListenerConfig::new(&socket)).unwrap();
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(async move {
            listener
                .serve(tonic::service::Routes::new(api.into_service()), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { _dir: dir, socket, cache, authority, stop: Some(stop), server: Some(server) }
    }

    async fn client(&self) -> SpiffeWorkloadApiClient<Channel> {
        client_at(&self.socket).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap();
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

async fn client_at(path: &Path) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(channel_at(path).await)
}

async fn channel_at(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

/// A request carrying the security header.
fn req<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

fn svid_ids(resp: &pb::X509svidResponse) -> Vec<&str> {
    resp.svids.iter().map(|s| s.spiffe_id.as_str()).collect()
}

fn assert_status(status: &Status, code: Code, message: &str) {
    assert_eq!((status.code(), status.message()), (code, message), "{status:?}");
}

#[tokio::test]
async fn x509_svid_stream_follows_rotation_entry_additions_and_removals() {
    let agent = Agent::start().await;
    let mine = uid_selector(my_uid());
    let first = identity(&agent.authority, "a", "/web", mine.clone());
    agent.cache.update(|v| v.identities = vec![Arc::clone(&first)]);

    let mut stream = agent
        .client()
        .await
        .fetch_x509svid(req(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(svid_ids(&resp), ["spiffe://example.org/web"]);
    let svid = &resp.svids[0];
    assert_eq!(svid.x509_svid, first.chain.concat());
    assert_eq!(svid.x509_svid_key, first.private_key.to_vec());
    assert_eq!(svid.bundle, agent.authority.ca_der());
    // The key really is the certificate's: the SVID's public key matches it.
    let key = PrivateKey::from_pkcs8_der(&svid.x509_svid_key).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&svid.x509_svid).unwrap();
    assert_eq!(cert.public_key().raw, key.public_key_der());

    // Rotation: same entry, new SVID.
    let rotated = identity(&agent.authority, "a", "/web", mine.clone());
    agent.cache.update(|v| v.identities = vec![Arc::clone(&rotated)]);
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(resp.svids[0].x509_svid, rotated.chain.concat());

    // A view change that does not change this caller's answer sends nothing; the next one
    // that does (an entry added) is the next message.
    let other = identity(&agent.authority, "z", "/other", uid_selector(my_uid() + 1));
    agent.cache.update(|v| v.identities.push(Arc::clone(&other)));
    let added = identity(&agent.authority, "b", "/api", mine.clone());
    agent.cache.update(|v| v.identities.insert(1, Arc::clone(&added)));
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(svid_ids(&resp), ["spiffe://example.org/web", "spiffe://example.org/api"]);

    // Entry removal removes the identity.
    agent.cache.update(|v| v.identities.retain(|i| i.entry_id != "a"));
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(svid_ids(&resp), ["spiffe://example.org/api"]);

    // The last one gone: the stream ends with PermissionDenied, as SPIRE's does.
    agent.cache.update(|v| v.identities.retain(|i| i.entry_id == "z"));
    let status = stream.message().await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "no identity issued");
    drop(stream);
    agent.stop().await;
}

#[tokio::test]
async fn a_caller_whose_selectors_match_nothing_gets_permission_denied_and_nothing_else() {
    let agent = Agent::start().await;
    let not_mine = identity(&agent.authority, "a", "/web", uid_selector(my_uid() + 1));
    agent.cache.update(|v| v.identities = vec![not_mine]);
    let mut client = agent.client().await;

    let status = client.fetch_x509svid(req(pb::X509svidRequest {})).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "no identity issued");
    let status = client.fetch_x509_bundles(req(pb::X509BundlesRequest {})).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "no identity issued");
    let status = client.fetch_jwt_bundles(req(pb::JwtBundlesRequest {})).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "no identity issued");
    let status = client
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: "".into(),
        }))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "no identity issued");
    agent.stop().await;
}

#[tokio::test]
async fn calls_without_the_security_header_are_invalid_arguments() {
    let agent = Agent::start().await;
    let mine = identity(&agent.authority, "a", "/web", uid_selector(my_uid()));
    agent.cache.update(|v| v.identities = vec![mine]);
    let mut client = agent.client().await;
    let wrong = |value: Option<&str>| {
        let mut request = Request::new(pb::X509svidRequest {});
        if let Some(value) = value {
            request.metadata_mut().insert("workload.spiffe.io", value.parse().unwrap());
        }
        request
    };
    for value in [None, Some("false"), Some("True")] {
        let status = client.fetch_x509svid(wrong(value)).await.unwrap_err();
        assert_status(&status, Code::InvalidArgument, "security header missing from request");
    }
    let status = client.fetch_x509_bundles(pb::X509BundlesRequest {}).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "security header missing from request");
    let status = client.fetch_jwt_bundles(pb::JwtBundlesRequest {}).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "security header missing from request");
    let status = client
        .fetch_jwtsvid(pb::JwtsvidRequest { audience: vec!["db".into()], spiffe_id: "".into() })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "security header missing from request");
    let status = client
        .validate_jwtsvid(pb::ValidateJwtsvidRequest { audience: "db".into(), svid: "x".into() })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "security header missing from request");
    // Two values are refused too: exactly one `true` is required.
    let mut request = req(pb::X509svidRequest {});
    request.metadata_mut().append("workload.spiffe.io", "true".parse().unwrap());
    let status = client.fetch_x509svid(request).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "security header missing from request");
    // With the header the same caller is served.
    let mut stream = client.fetch_x509svid(req(pb::X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(svid_ids(&stream.message().await.unwrap().unwrap()), ["spiffe://example.org/web"]);
    drop(stream);
    agent.stop().await;
}

#[tokio::test]
async fn jwt_svids_fetched_from_the_agent_validate_against_its_bundle() {
    let agent = Agent::start().await;
    let mine = uid_selector(my_uid());
    let web = identity(&agent.authority, "a", "/web", mine.clone());
    let api = identity(&agent.authority, "b", "/api", mine);
    agent.cache.update(|v| v.identities = vec![web, api]);
    let mut client = agent.client().await;

    let status = client
        .fetch_jwtsvid(req(pb::JwtsvidRequest { audience: vec![], spiffe_id: "".into() }))
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "audience must be specified");
    let status = client
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: "not-an-id".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("invalid requested SPIFFE ID: "), "{status:?}");

    let all = client
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: "".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = all.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/web", "spiffe://example.org/api"]);

    // The spiffe_id filter: one of the caller's, or none (PermissionDenied).
    let one = client
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec!["db".into(), "cache".into()],
            spiffe_id: "spiffe://example.org/api".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.svids.len(), 1);
    let token = one.svids[0].svid.clone();
    let status = client
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: "spiffe://example.org/else".into(),
        }))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "no identity issued");

    let validated = client
        .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.spiffe_id, "spiffe://example.org/api");
    let claims = validated.claims.unwrap();
    let aud = match claims.fields["aud"].kind.as_ref().unwrap() {
        prost_types::value::Kind::ListValue(list) => list
            .values
            .iter()
            .map(|v| match v.kind.as_ref().unwrap() {
                prost_types::value::Kind::StringValue(s) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(aud, ["db", "cache"]);
    assert!(claims.fields.contains_key("exp") && claims.fields.contains_key("sub"));

    for (audience, svid, message) in [
        ("", token.as_str(), "audience must be specified".to_owned()),
        ("db", "", "svid must be specified".to_owned()),
        ("web", token.as_str(), r#"expected audience in ["web"] (audience=["db" "cache"])"#.into()),
    ] {
        let status = client
            .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: svid.into(),
            }))
            .await
            .unwrap_err();
        assert_status(&status, Code::InvalidArgument, &message);
    }
    // A token of another trust domain is checked against keys the caller does not have.
    let foreign =
        JwtSigner::new(PrivateKey::generate(KeyType::EcP256).unwrap(), "k".into(), i64::MAX)
            .unwrap()
            .sign(
                &SpiffeId::parse("spiffe://other.test/x").unwrap(),
                &["db".to_owned()],
                SystemTime::now(),
                Duration::from_secs(60),
            )
            .unwrap();
    let status = client
        .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: foreign.token,
        }))
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, r#"no keys found for trust domain "other.test""#);
    agent.stop().await;
}

#[tokio::test]
async fn jwt_and_x509_bundles_are_served_by_trust_domain_id() {
    let agent = Agent::start().await;
    let mine = identity(&agent.authority, "a", "/web", uid_selector(my_uid()));
    agent.cache.update(|v| v.identities = vec![mine]);
    let mut client = agent.client().await;

    let mut jwt =
        client.fetch_jwt_bundles(req(pb::JwtBundlesRequest {})).await.unwrap().into_inner();
    let resp = jwt.message().await.unwrap().unwrap();
    let keys: Vec<&String> = resp.bundles.keys().collect();
    assert_eq!(keys, ["spiffe://example.org"]);
    let jwks: serde_json::Value =
        serde_json::from_slice(&resp.bundles["spiffe://example.org"]).unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(key["kid"], agent.authority.jwt().key_id());
    assert_eq!((key["kty"].as_str(), key["crv"].as_str()), (Some("EC"), Some("P-256")));
    assert!(key.get("use").is_none() && jwks.get("spiffe_sequence").is_none(), "{jwks}");
    let parsed =
        ward_core::bundle::json::jwt_authorities_from_jwks(&resp.bundles["spiffe://example.org"])
            .unwrap();
    assert_eq!(parsed[0].public_key_der, agent.authority.jwt().public_key_der());

    let mut x509 =
        client.fetch_x509_bundles(req(pb::X509BundlesRequest {})).await.unwrap().into_inner();
    let resp = x509.message().await.unwrap().unwrap();
    assert_eq!(resp.bundles["spiffe://example.org"], agent.authority.ca_der());

    // A bundle change reaches both streams.
    let extra = TestAuthority::new(TD);
    agent.cache.update(|v| {
        let mut bundle = Bundle::clone(&v.bundle);
        bundle.jwt_authorities.push(extra.jwt().authority());
        bundle.x509_authorities.push(X509Authority::new(extra.ca_der().to_vec()));
        v.bundle = Arc::new(bundle);
    });
    let resp = jwt.message().await.unwrap().unwrap();
    let parsed =
        ward_core::bundle::json::jwt_authorities_from_jwks(&resp.bundles["spiffe://example.org"])
            .unwrap();
    assert_eq!(parsed.len(), 2);
    let resp = x509.message().await.unwrap().unwrap();
    assert_eq!(
        resp.bundles["spiffe://example.org"],
        [agent.authority.ca_der(), extra.ca_der()].concat()
    );
    drop((jwt, x509));
    agent.stop().await;
}

#[tokio::test]
async fn a_stream_waits_for_a_pending_svid_and_keeps_the_caller_registered_while_open() {
    let agent = Agent::start().await;
    let mine = uid_selector(my_uid());
    agent.cache.update(|v| {
        v.pending = vec![Arc::new(PendingIdentity {
            entry_id: "a".into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
            selectors: mine.clone(),
        })];
    });
    let mut workloads = agent.cache.workloads();
    let mut client = agent.client().await;
    let call = tokio::spawn(async move {
        let stream = client.fetch_x509svid(req(pb::X509svidRequest {})).await;
        (client, stream)
    });
    // The caller is registered with its attested selectors while it waits.
    workloads.wait_for(|w| w.values().any(|s| mine.is_subset_of(s))).await.unwrap();
    let minted = identity(&agent.authority, "a", "/web", mine.clone());
    agent.cache.update(|v| {
        v.pending.clear();
        v.identities = vec![minted];
    });
    let (_client, stream) = call.await.unwrap();
    let mut stream = stream.unwrap().into_inner();
    assert_eq!(svid_ids(&stream.message().await.unwrap().unwrap()), ["spiffe://example.org/web"]);
    drop(stream);
    // Once the stream is gone, so is the registration.
    workloads.wait_for(|w| w.is_empty()).await.unwrap();
    agent.stop().await;
}

#[tokio::test]
async fn the_socket_gets_its_own_directory_mode_0777_and_the_alternate_names() {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("public");
    let socket = public.join("agent.sock");
    // A stale socket and a stale link from an earlier run are replaced.
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    std::os::unix::fs::symlink("gone.sock", public.join("api.sock")).unwrap();

    let listener = WorkloadListener::bind(&ListenerConfig::new(&socket)).unwrap();
    assert_eq!(listener.socket_path(), socket);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&public), 0o755);
    assert_eq!(mode(&socket), 0o777);
    for name in ["socket", "spire-agent.sock", "api.sock"] {
        assert_eq!(std::fs::read_link(public.join(name)).unwrap(), Path::new("agent.sock"));
    }
    drop(listener);

    // Missing directories are created; a socket named like an alternate is not linked to.
    let nested = dir.path().join("a").join("b").join("api.sock");
    let listener = WorkloadListener::bind(&ListenerConfig::new(&nested)).unwrap();
    assert!(std::fs::symlink_metadata(nested.with_file_name("socket")).unwrap().is_symlink());
    assert!(!nested.with_file_name("api.sock").is_symlink());
    drop(listener);
}

#[tokio::test]
async fn clients_reach_the_api_through_an_alternate_name() {
    let agent = Agent::start().await;
    let mine = identity(&agent.authority, "a", "/web", uid_selector(my_uid()));
    agent.cache.update(|v| v.identities = vec![mine]);
    let mut client = client_at(&agent.socket.with_file_name("spire-agent.sock")).await;
    let mut stream = client.fetch_x509svid(req(pb::X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(svid_ids(&stream.message().await.unwrap().unwrap()), ["spiffe://example.org/web"]);
    drop(stream);
    agent.stop().await;
}

#[tokio::test]
async fn the_health_service_on_the_socket_reports_serving_when_the_api_answers() {
    use ward_proto::grpc::health::v1::{self as health, health_client::HealthClient};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let authority = Arc::new(TestAuthority::new(TD));
    let cache = Arc::new(Cache::new(CacheView::new(authority.bundle())));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(ward_agent::workload::serve(
        ListenerConfig::new(&socket),
        cache,
        Arc::new(TestJwtSource(authority)),
        vec![Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default()))],
        async {
            let _ = stopped.await;
        },
    ));
    // The socket is ready once the alternate names exist (they are linked after the bind).
    tokio::time::timeout(Duration::from_secs(30), async {
        while !socket.with_file_name("socket").exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the socket within 30 s");
    let mut client = HealthClient::new(channel_at(&socket).await);
    // The agent's own call gets PermissionDenied here (no entry selects it): still serving.
    let resp = client.check(health::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(
        resp.into_inner().status,
        health::health_check_response::ServingStatus::Serving as i32
    );
    let status =
        client.check(health::HealthCheckRequest { service: "x".into() }).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "per-service health is not supported");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
