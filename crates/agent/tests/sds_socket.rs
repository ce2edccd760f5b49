//! Envoy SDS v3 over the agent's real Unix socket ([`WorkloadListener`]): the caller is
//! attested from its peer credentials by the `unix` workload attestor, and is served X509-SVIDs signed by a ward-ca CA from the
//! agent's cache.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test on any error"
)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Streaming};
use ward_agent::cache::{Cache, CacheView, PendingIdentity, X509Identity};
use ward_agent::sds::{SECRET_TYPE_URL, SPIFFE_VALIDATOR_TYPE_URL, SdsConfig, SdsService};
use ward_agent::workload::{CallerAttestor, ListenerConfig, WorkloadListener};
use ward_attest::{ProcFs, UnixAttestor, UnixConfig, WorkloadAttestor};
use ward_ca::PrivateKey;
use ward_core::bundle::pem::encode_certificates;
use ward_core::{Bundle, Selector, SelectorSet, SpiffeId, TrustDomain};
use ward_proto::envoy::config::core::v3::data_source::Specifier;
use ward_proto::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use ward_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use ward_proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use ward_testkit::{TestAuthority, agent};

/// A trust domain's CA from ward-ca, and identities it signs.
struct TestCa {
    authority: TestAuthority,
    td: TrustDomain,
}

impl TestCa {
    fn new(td: &str) -> Self {
        Self { authority: TestAuthority::new(td), td: TrustDomain::new(td).unwrap() }
    }

    fn bundle(&self) -> Bundle {
        self.authority.bundle()
    }

    /// An identity for `path` with a fresh key, selected by `selectors`.
    fn identity(&self, entry_id: &str, path: &str, selectors: &SelectorSet) -> X509Identity {
        let id = SpiffeId::from_parts(&self.td, path).unwrap();
        X509Identity::clone(&agent::identity(&self.authority, entry_id, id, selectors.clone()))
    }
}

/// The selectors this test process has: its uid as the `unix` attestor reports it.
fn my_uid_selector() -> SelectorSet {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    SelectorSet::new(vec![Selector::parse(&format!("unix:uid:{uid}")).unwrap()])
}

/// The agent's socket serving SDS over `cache`, and a client connected to it.
struct Agent {
    _dir: tempfile::TempDir,
    client: SecretDiscoveryServiceClient<Channel>,
}

async fn serve(cache: &Arc<Cache>) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("public").join("api.sock");
    let listener = WorkloadListener::bind(&ListenerConfig::new(&path)).unwrap();
    let unix: Box<dyn WorkloadAttestor> =
        Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default()));
    let attestor = CallerAttestor::new(vec![unix]);
    let service = SdsService::new(SdsConfig::default(), Arc::clone(cache), attestor);
    tokio::spawn(listener.serve(Routes::new(service.into_server()), std::future::pending()));
    Agent { client: connect(&path).await, _dir: dir }
}

async fn connect(path: &Path) -> SecretDiscoveryServiceClient<Channel> {
    let path: PathBuf = path.to_owned();
    let channel = Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    SecretDiscoveryServiceClient::new(channel)
}

fn request(names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    }
}

fn ack(names: &[&str], resp: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: resp.version_info.clone(),
        response_nonce: resp.nonce.clone(),
        ..request(names)
    }
}

fn secrets(resp: &DiscoveryResponse) -> BTreeMap<String, Secret> {
    resp.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            let secret = Secret::decode(any.value.as_slice()).unwrap();
            (secret.name.clone(), secret)
        })
        .collect()
}

fn inline(source: Option<&ward_proto::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(bytes)) => bytes.clone(),
        other => panic!("not inline bytes: {other:?}"),
    }
}

/// The certificate chain PEM and key PEM of a `tls_certificate` secret.
fn tls(secret: &Secret) -> (String, String) {
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("not a tls certificate: {}", secret.name)
    };
    (
        String::from_utf8(inline(tls.certificate_chain.as_ref())).unwrap(),
        String::from_utf8(inline(tls.private_key.as_ref())).unwrap(),
    )
}

/// (trust domain name, CA PEM) of each trust domain of a SPIFFE validator secret.
fn spiffe_validator(secret: &Secret) -> Vec<(String, String)> {
    let Some(secret::Type::ValidationContext(ctx)) = &secret.r#type else {
        panic!("not a validation context: {}", secret.name)
    };
    let config = ctx.custom_validator_config.as_ref().unwrap();
    let any = config.typed_config.as_ref().unwrap();
    assert_eq!(any.type_url, SPIFFE_VALIDATOR_TYPE_URL);
    SpiffeCertValidatorConfig::decode(any.value.as_slice())
        .unwrap()
        .trust_domains
        .iter()
        .map(|td| (td.name.clone(), String::from_utf8(inline(td.trust_bundle.as_ref())).unwrap()))
        .collect()
}

fn key_pem(identity: &X509Identity) -> String {
    PrivateKey::from_pkcs8_der(&identity.private_key).unwrap().to_pkcs8_pem().to_string()
}

/// A StreamSecrets stream with a sender for further requests.
async fn open_stream(
    client: &mut SecretDiscoveryServiceClient<Channel>,
    first: DiscoveryRequest,
) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    let responses = client.stream_secrets(ReceiverStream::new(rx)).await.unwrap().into_inner();
    (tx, responses)
}

async fn next(responses: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(30), responses.message())
        .await
        .expect("no response within 30 s")
        .unwrap()
        .expect("stream ended")
}

#[tokio::test]
async fn stream_serves_the_callers_svid_and_bundle_and_pushes_a_rotation() {
    let ca = TestCa::new("example.org");
    let mine = my_uid_selector();
    let first = ca.identity("e1", "/web", &mine);
    let cache = Arc::new(Cache::new(CacheView::new(ca.bundle())));
    cache.update(|v| v.identities = vec![Arc::new(first.clone())]);
    let mut agent = serve(&cache).await;

    let names = ["spiffe://example.org/web", "ROOTCA"];
    let (tx, mut responses) = open_stream(&mut agent.client, request(&names)).await;
    let resp = next(&mut responses).await;
    assert_eq!(resp.version_info, "1");
    assert_eq!(resp.nonce.len(), 8);
    assert_eq!(resp.type_url, SECRET_TYPE_URL);
    let got = secrets(&resp);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["ROOTCA", "spiffe://example.org/web"]);
    let (chain, key) = tls(&got["spiffe://example.org/web"]);
    assert_eq!(chain, encode_certificates(&first.chain));
    assert_eq!(key, key_pem(&first));
    let leaf_der = &ward_core::bundle::pem::decode_certificates(&chain).unwrap()[0];
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(format!("{:?}", san.value.general_names), r#"[URI("spiffe://example.org/web")]"#);
    assert_eq!(
        spiffe_validator(&got["ROOTCA"]),
        [("example.org".to_owned(), ca.bundle().x509_authorities_to_pem())]
    );

    // Envoy ACKs; then the SVID rotates and the new one is pushed as the next version.
    tx.send(ack(&names, &resp)).await.unwrap();
    let rotated = ca.identity("e1", "/web", &mine);
    cache.update(|v| v.identities = vec![Arc::new(rotated.clone())]);
    let resp = next(&mut responses).await;
    assert_eq!(resp.version_info, "2");
    let (chain, key) = tls(&secrets(&resp)["spiffe://example.org/web"]);
    assert_eq!(chain, encode_certificates(&rotated.chain));
    assert_eq!(key, key_pem(&rotated));
    assert_ne!(rotated.chain[0], first.chain[0]);

    // The entry goes away: the requested identity can no longer be served and the stream
    // ends as SPIRE ends it.
    tx.send(ack(&names, &resp)).await.unwrap();
    cache.update(|v| v.identities.clear());
    let err = tokio::time::timeout(Duration::from_secs(30), responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        r#"workload is not authorized for the requested identities ["spiffe://example.org/web"]"#
    );
}

#[tokio::test]
async fn new_names_on_the_stream_are_answered_and_all_holds_federated_bundles() {
    let ca = TestCa::new("example.org");
    let other = TestCa::new("other.test");
    let mine = my_uid_selector();
    let mut identity = ca.identity("e1", "/web", &mine);
    identity.federates_with = vec![other.td.clone()];
    let cache = Arc::new(Cache::new(CacheView::new(ca.bundle())));
    cache.update(|v| {
        v.identities = vec![Arc::new(identity.clone())];
        v.federated.insert(other.td.clone(), Arc::new(other.bundle()));
    });
    let mut agent = serve(&cache).await;

    let (tx, mut responses) = open_stream(&mut agent.client, request(&["default"])).await;
    let resp = next(&mut responses).await;
    let got = secrets(&resp);
    assert_eq!(tls(&got["default"]).0, encode_certificates(&identity.chain));

    tx.send(ack(&["ALL", "spiffe://other.test"], &resp)).await.unwrap();
    let resp = next(&mut responses).await;
    assert_eq!(resp.version_info, "1");
    let got = secrets(&resp);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["ALL", "spiffe://other.test"]);
    assert_eq!(
        spiffe_validator(&got["ALL"]),
        [
            ("example.org".to_owned(), ca.bundle().x509_authorities_to_pem()),
            ("other.test".to_owned(), other.bundle().x509_authorities_to_pem()),
        ]
    );
    assert_eq!(
        spiffe_validator(&got["spiffe://other.test"]),
        [("other.test".to_owned(), other.bundle().x509_authorities_to_pem())]
    );
}

#[tokio::test]
async fn fetch_answers_once_and_a_caller_matching_no_entry_gets_only_the_bundle() {
    let ca = TestCa::new("example.org");
    let someone_else = SelectorSet::new(vec![Selector::parse("unix:uid:4294967294").unwrap()]);
    let cache = Arc::new(Cache::new(CacheView::new(ca.bundle())));
    cache.update(|v| v.identities = vec![Arc::new(ca.identity("e1", "/web", &someone_else))]);
    let mut agent = serve(&cache).await;

    let resp = agent.client.fetch_secrets(request(&[])).await.unwrap().into_inner();
    assert_eq!((resp.version_info.as_str(), resp.nonce.as_str()), ("", ""));
    let got = secrets(&resp);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["spiffe://example.org"]);

    let err = agent.client.fetch_secrets(request(&["spiffe://example.org/web"])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        r#"workload is not authorized for the requested identities ["spiffe://example.org/web"]"#
    );
}

#[tokio::test]
async fn delta_secrets_is_unimplemented_as_in_spire() {
    let ca = TestCa::new("example.org");
    let cache = Arc::new(Cache::new(CacheView::new(ca.bundle())));
    let mut agent = serve(&cache).await;
    let requests = tokio_stream::iter(vec![DeltaDiscoveryRequest::default()]);
    let err = agent.client.delta_secrets(requests).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "Method is not implemented");
}

#[tokio::test]
async fn a_stream_registers_its_caller_and_waits_for_a_pending_svid() {
    let ca = TestCa::new("example.org");
    let mine = my_uid_selector();
    let cache = Arc::new(Cache::new(CacheView::new(ca.bundle())));
    cache.update(|v| {
        v.pending = vec![Arc::new(PendingIdentity {
            entry_id: "e1".into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
            selectors: mine.clone(),
        })];
    });
    let mut workloads = cache.workloads();
    let mut agent = serve(&cache).await;

    let (tx, mut responses) = open_stream(&mut agent.client, request(&["default"])).await;
    // The caller is registered with its selectors, so the agent mints its SVID.
    let registered = tokio::time::timeout(
        Duration::from_secs(30),
        workloads.wait_for(|w| w.values().any(|s| mine.is_subset_of(s))),
    )
    .await
    .expect("caller not registered within 30 s")
    .is_ok();
    assert!(registered);

    // The SVID arrives; the first answer carries it (nothing was sent while it was pending).
    let minted = ca.identity("e1", "/web", &mine);
    cache.update(|v| {
        v.pending.clear();
        v.identities = vec![Arc::new(minted.clone())];
    });
    let resp = next(&mut responses).await;
    assert_eq!(resp.version_info, "1");
    assert_eq!(tls(&secrets(&resp)["default"]).0, encode_certificates(&minted.chain));

    // When the stream ends, the registration goes away.
    drop(responses);
    drop(tx);
    let gone = tokio::time::timeout(Duration::from_secs(30), workloads.wait_for(|w| w.is_empty()))
        .await
        .expect("registration not dropped within 30 s")
        .is_ok();
    assert!(gone);
}

#[tokio::test]
async fn the_workload_api_socket_also_serves_sds() {
    let ca = TestCa::new("example.org");
    let mine = my_uid_selector();
    let authority = Arc::new(TestAuthority::new("example.org"));
    let web = ca.identity("e1", "/web", &mine);
    let cache = Arc::new(Cache::new(CacheView::new(ca.bundle())));
    cache.update(|v| v.identities = vec![Arc::new(web.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("public").join("api.sock");
    let unix: Box<dyn WorkloadAttestor> =
        Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ward_agent::workload::serve(
        ListenerConfig::new(&socket),
        Arc::clone(&cache),
        Arc::new(agent::TestJwtSource(authority)),
        vec![unix],
        async {
            let _ = stopped.await;
        },
    ));
    // The socket exists once bound; connect when it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(tokio::time::Instant::now() < deadline, "socket not bound within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = connect(&socket).await;
    let resp = client.fetch_secrets(request(&["default"])).await.unwrap().into_inner();
    assert_eq!(tls(&secrets(&resp)["default"]).0, encode_certificates(&web.chain));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
