//! Who may talk raft to a replica: only another replica of the same trust domain, with a
//! certificate its own authority (one of the bundle's) signed, sending messages in its own
//! name. Every refused caller's bytes never reach the raft side.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Code, Request, Status};
use ward_ca::{KeyType, PrivateKey, SvidParams, X509Ca};
use ward_core::replica_id::replica_id;
use ward_core::{Bundle, SpiffeId, TrustDomain, X509Authority};
use ward_proto::ward::cluster::v1::peer_client::PeerClient;
use ward_proto::ward::cluster::v1::{
    DiscoverRequest, JoinRequest, JoinResponse, RaftAddress, RaftBatch, SnapshotRequest,
};
use ward_server::peer::service::ChunkStream;
use ward_server::peer::{self, PeerBackend, PeerIdentity, PeerService, RaftInbound};
use ward_server::tls::{AuthoritySource, SpiffeServerVerifier, agent_client_config};

const DAY: Duration = Duration::from_secs(86_400);

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn ca(td: &TrustDomain) -> X509Ca {
    X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), td, DAY, SystemTime::now())
        .unwrap()
}

#[derive(Debug)]
struct Fixed(Arc<Bundle>);

impl AuthoritySource for Fixed {
    fn bundle(&self) -> Option<Arc<Bundle>> {
        Some(self.0.clone())
    }
}

/// The raft side of the listener: records what was handed over.
#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<(u64, Vec<u8>)>>,
    addresses: Mutex<Vec<(u64, String)>>,
}

impl RaftInbound for Recorder {
    fn deliver(&self, from: u64, bytes: &[u8]) -> Result<(), String> {
        self.delivered.lock().unwrap().push((from, bytes.to_vec()));
        Ok(())
    }

    fn learn_address(&self, from: u64, address: &str) {
        self.addresses.lock().unwrap().push((from, address.to_owned()));
    }

    fn learn_member(&self, node: u64, address: &str) {
        self.addresses.lock().unwrap().push((node, address.to_owned()));
    }
}

struct Authorities(Vec<Vec<u8>>);

#[tonic::async_trait]
impl PeerBackend for Authorities {
    async fn snapshot(&self, _to: u64, _descriptor: Vec<u8>) -> Result<ChunkStream, Status> {
        Ok(Box::pin(futures::stream::empty()))
    }

    fn x509_authorities(&self) -> Vec<Vec<u8>> {
        self.0.clone()
    }

    async fn join(&self, _req: JoinRequest) -> Result<JoinResponse, Status> {
        Err(Status::permission_denied("no credentials in this test"))
    }
}

/// A raft message's bytes: the addressing fields plus a term (field 4), as raft encodes them.
fn raft_message(from: u64, to: u64) -> Vec<u8> {
    let mut bytes = RaftAddress { to, from }.encode_to_vec();
    bytes.extend_from_slice(&[0x20, 0x07]);
    bytes
}

struct Listener {
    addr: std::net::SocketAddr,
    inbound: Arc<Recorder>,
    /// The roots a client needs to accept the listener.
    roots: Vec<Vec<u8>>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// Replica 1 of example.org, its bundle holding its own authority and `others`.
async fn listener(own: &X509Ca, others: &[&X509Ca]) -> Listener {
    let dir = tempfile::tempdir().unwrap();
    let identity = Arc::new(PeerIdentity::open(dir.path(), td(), 1).unwrap());
    assert!(identity.refresh_with(own, SystemTime::now()).unwrap());
    let mut bundle = Bundle::new(td());
    for ca in std::iter::once(own).chain(others.iter().copied()) {
        bundle.x509_authorities.push(X509Authority::new(ca.trust_anchor_der().to_vec()));
    }
    let roots: Vec<Vec<u8>> = bundle.x509_authorities.iter().map(|a| a.der.clone()).collect();
    let config = peer::listener_config(td(), identity, Arc::new(Fixed(Arc::new(bundle)))).unwrap();
    let inbound = Arc::new(Recorder::default());
    let service = PeerService::new(1, td(), inbound.clone(), Arc::new(Authorities(roots.clone())));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(peer::serve(tcp, Arc::new(config), service, stop_rx));
    Listener { addr, inbound, roots, _stop: stop, _dir: dir }
}

/// A client presenting `identity` (chain, PKCS#8 key), checking the listener as replica 1.
fn client_with(
    l: &Listener,
    identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
) -> PeerClient<tonic::transport::Channel> {
    let verifier =
        Arc::new(SpiffeServerVerifier::new(replica_id(&td(), 1).unwrap(), Some(&l.roots)).unwrap());
    let config = agent_client_config(verifier, identity).unwrap();
    PeerClient::new(peer::channel(&l.addr.to_string(), Arc::new(config)).unwrap())
}

/// A replica's own client: its peer identity, issued by `authority`.
fn replica_client(
    l: &Listener,
    td: &TrustDomain,
    node: u64,
    authority: &X509Ca,
    dir: &std::path::Path,
) -> PeerClient<tonic::transport::Channel> {
    let identity = Arc::new(PeerIdentity::open(dir, td.clone(), node).unwrap());
    identity.refresh_with(authority, SystemTime::now()).unwrap();
    let config = peer::client_config(&self::td(), 1, &l.roots, Some(identity)).unwrap();
    PeerClient::new(peer::channel(&l.addr.to_string(), Arc::new(config)).unwrap())
}

async fn send(
    client: &mut PeerClient<tonic::transport::Channel>,
    messages: Vec<Vec<u8>>,
) -> Result<(), Status> {
    let batch = RaftBatch { messages, from_address: "127.0.0.2:8082".into(), members: Vec::new() };
    client.raft(Request::new(futures::stream::iter(vec![batch]))).await.map(|_| ())
}

#[tokio::test]
async fn a_replica_of_the_trust_domain_delivers_raft_messages_in_its_own_name() {
    let (a, b) = (ca(&td()), ca(&td()));
    let l = listener(&a, &[&b]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut client = replica_client(&l, &td(), 2, &b, dir.path());
    let messages = vec![raft_message(2, 1), raft_message(2, 1)];
    send(&mut client, messages.clone()).await.unwrap();
    let delivered = l.inbound.delivered.lock().unwrap().clone();
    assert_eq!(delivered, vec![(2, messages[0].clone()), (2, messages[1].clone())]);
    assert_eq!(*l.inbound.addresses.lock().unwrap(), vec![(2, "127.0.0.2:8082".to_owned())]);
}

#[tokio::test]
async fn a_replica_sending_in_another_replicas_name_is_refused_before_raft_sees_it() {
    let (a, b) = (ca(&td()), ca(&td()));
    let l = listener(&a, &[&b]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut client = replica_client(&l, &td(), 2, &b, dir.path());
    let status = send(&mut client, vec![raft_message(3, 1)]).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "raft message from replica 3 on the connection of replica 2");
    // Not even the well-formed message before it in a later batch gets through once refused,
    // and a message for another recipient is refused too.
    let status = send(&mut client, vec![raft_message(2, 5)]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = send(&mut client, vec![vec![0xff, 0xff, 0xff]]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(l.inbound.delivered.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_agent_svid_is_refused() {
    let a = ca(&td());
    let l = listener(&a, &[]).await;
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/spire/agent/join_token/x").unwrap();
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: DAY };
    let leaf = a.sign_x509_svid(key.public_key_der(), &params, SystemTime::now()).unwrap();
    let chain = vec![leaf, a.trust_anchor_der().to_vec()];
    let mut client = client_with(&l, Some((chain, key.pkcs8_der().to_vec())));
    assert!(send(&mut client, vec![raft_message(2, 1)]).await.is_err());
    assert!(l.inbound.delivered.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_self_signed_replica_certificate_is_refused() {
    let a = ca(&td());
    let l = listener(&a, &[]).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://example.org/spire/server/replica/2".try_into().unwrap(),
    )];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).unwrap().der().to_vec();
    let mut client = client_with(&l, Some((vec![cert], key.serialize_der())));
    assert!(send(&mut client, vec![raft_message(2, 1)]).await.is_err());
    assert!(l.inbound.delivered.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_replica_of_another_trust_domain_is_refused() {
    let a = ca(&td());
    let other_td = TrustDomain::new("other.org").unwrap();
    let other = ca(&other_td);
    // Even with the other trust domain's authority in the bundle, its replicas are not ours.
    let l = listener(&a, &[&other]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut client = replica_client(&l, &other_td, 2, &other, dir.path());
    assert!(send(&mut client, vec![raft_message(2, 1)]).await.is_err());
    assert!(l.inbound.delivered.lock().unwrap().is_empty());
}

#[tokio::test]
async fn without_a_certificate_only_discovery_and_join_answer() {
    let a = ca(&td());
    let l = listener(&a, &[]).await;
    let mut client = client_with(&l, None);
    let status = send(&mut client, vec![raft_message(2, 1)]).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status =
        client.snapshot(SnapshotRequest { descriptor: vec![1] }).await.map(|_| ()).unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(l.inbound.delivered.lock().unwrap().is_empty());
    let found = client.discover(DiscoverRequest {}).await.unwrap().into_inner();
    assert_eq!(found.x509_authorities, vec![a.trust_anchor_der().to_vec()]);
}

/// A request to any method but `Raft` is read up to 4 MiB: a 5 MiB `Join` (callers without a
/// replica certificate may send one) is refused with `ResourceExhausted` before the back end
/// sees it, a 3 MiB one reaches it; a replica's 6 MiB raft message is still delivered.
#[tokio::test]
async fn only_raft_messages_may_pass_4_mib() {
    let (a, b) = (ca(&td()), ca(&td()));
    let l = listener(&a, &[&b]).await;
    let mut client = client_with(&l, None);
    let join = |len: usize| JoinRequest {
        credential: "ward-join-1-0000".into(),
        x509_authorities: vec![vec![0x30; len]],
        jwt_authorities: Vec::new(),
    };
    let status = client.join(join(5 << 20)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let status = client.join(join(3 << 20)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "the back end answered: {status:?}");

    let dir = tempfile::tempdir().unwrap();
    let mut replica = replica_client(&l, &td(), 2, &b, dir.path());
    // An unknown length-delimited field (number 20) carries the bulk, as entries would.
    let mut big = raft_message(2, 1);
    let bulk = 6usize << 20;
    big.extend_from_slice(&[0xa2, 0x01]);
    prost::encoding::encode_varint(bulk as u64, &mut big);
    big.resize(big.len() + bulk, 0x55);
    send(&mut replica, vec![big.clone()]).await.unwrap();
    assert_eq!(l.inbound.delivered.lock().unwrap().as_slice(), &[(2, big)]);
}

#[tokio::test]
async fn a_client_dialling_the_wrong_replica_refuses_it() {
    let a = ca(&td());
    let l = listener(&a, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let identity = Arc::new(PeerIdentity::open(dir.path(), td(), 2).unwrap());
    identity.refresh_with(&a, SystemTime::now()).unwrap();
    // The listener is replica 1; a client expecting replica 3 there refuses the handshake.
    let config = peer::client_config(&td(), 3, &l.roots, Some(identity)).unwrap();
    let mut client = PeerClient::new(peer::channel(&l.addr.to_string(), Arc::new(config)).unwrap());
    assert!(client.discover(DiscoverRequest {}).await.is_err());
}

#[test]
fn the_peer_key_is_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let a = ca(&td());
    let first = PeerIdentity::open(dir.path(), td(), 4).unwrap();
    assert!(first.refresh_with(&a, SystemTime::now()).unwrap());
    assert!(!first.refresh_with(&a, SystemTime::now()).unwrap(), "fresh and same authority");
    let key_file = dir.path().join("keys/peer.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leaf = first.cert().unwrap().chain[0].clone();
    let facts = ward_server::tls::leaf_facts(&leaf).unwrap();
    assert_eq!(facts.id.as_str(), "spiffe://example.org/spire/server/replica/4");
    // A new authority makes a new certificate for the same key.
    let b = ca(&td());
    assert!(first.refresh_with(&b, SystemTime::now()).unwrap());
    let again = PeerIdentity::open(dir.path(), td(), 4).unwrap();
    again.refresh_with(&b, SystemTime::now()).unwrap();
    let spki = |der: &[u8]| {
        use x509_parser::prelude::FromDer;
        let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
        c.public_key().raw.to_vec()
    };
    assert_eq!(spki(&again.cert().unwrap().chain[0]), spki(&first.cert().unwrap().chain[0]));
}
