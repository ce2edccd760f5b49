//! The replica-to-replica side of a cluster: peer identity, the peer listener and how one
//! replica connects to another.
//!
//! - [`identity`]: the replica's peer certificate (`spiffe://<td>/spire/server/replica/<id>`),
//!   signed by its own X.509 authority and presented on both ends of every peer connection.
//! - [`service`]: the `ward.cluster.v1.Peer` service; raft messages are checked against the
//!   connection's certificate before raft sees a byte of them.
//! - [`transport`]: raft messages out (one stream per peer, batched, bounded, reconnecting
//!   with backoff and jitter) and snapshots in, for the `ward-cluster` driver.
//! - [`credential`]: one-time join credentials; [`replica`]: starting a replica, its peer
//!   back end (snapshots, joins) and the joining side; [`admin`]: the admin socket's
//!   `ward.cluster.v1.Cluster` service.
//!
//! Both ends check each other: the listener accepts only certificates that chain to the trust
//! domain's current bundle and name a replica ([`crate::tls::SpiffeClientVerifier::replicas`]);
//! a connecting replica accepts only the certificate of the replica it dialled, chaining to
//! the same bundle ([`client_config`]).

pub mod admin;
pub mod credential;
pub mod identity;
pub mod removal;
pub mod replica;
pub mod service;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Server};
use ward_core::TrustDomain;
use ward_proto::ward::cluster::v1::peer_server::PeerServer;

use crate::tls::{self, AuthoritySource, SpiffeClientVerifier, SpiffeServerVerifier, TlsError};

pub use identity::{PeerCert, PeerIdentity, PeerIdentityError};
pub use service::{PeerBackend, PeerService, RaftInbound};

/// What a replica's cluster services share: the admin socket's `Cluster` service
/// ([`admin::ClusterAdmin`]) and the peer listener's back end ([`replica::ClusterBackend`]).
#[derive(Clone)]
pub struct ReplicaContext {
    /// The replica's driver.
    pub handle: ward_cluster::ClusterHandle,
    /// Its store.
    pub store: ward_store::Store,
    /// The trust domain.
    pub td: TrustDomain,
    /// Writes.
    pub proposer: Arc<dyn crate::proposer::Proposer>,
    /// Known peer addresses.
    pub addresses: Arc<transport::AddressBook>,
    /// Time (credential expiry).
    pub clock: Arc<dyn ward_core::Clock>,
    /// Serializes membership changes.
    pub membership: admin::MembershipLock,
}

impl std::fmt::Debug for ReplicaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaContext").field("node_id", &self.handle.node_id()).finish()
    }
}

/// Longest a peer connection attempt (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest message the peer listener decodes (16 MiB). raft sends at least one log
/// entry per append whatever `max_size_per_msg` says, and one admin write the API accepts
/// (tonic's 4 MiB request limit) can become an entry of about 1.7 times that; a batch of
/// [`transport::BATCH_BYTES`] of messages also carries its own framing. With tonic's default
/// of 4 MiB a follower refused such an append, and every later write waited behind it until
/// an election discarded it. Only `Raft` needs it, and its caller's certificate is checked
/// before a message is decoded; every other method is held to [`SMALL_REQUEST_LIMIT`].
pub const PEER_MESSAGE_LIMIT: usize = 16 << 20;

/// The most request bytes the peer listener reads for a method other than `Raft` (4 MiB,
/// gRPC's usual limit): `Discover` and `Join` answer callers that hold no replica
/// certificate yet, and `Snapshot`'s request is a descriptor of a few bytes. A longer body
/// is refused with `ResourceExhausted` once this many bytes have arrived.
pub const SMALL_REQUEST_LIMIT: usize = 4 << 20;

/// The path of the one peer method whose requests may be [`PEER_MESSAGE_LIMIT`] long.
const RAFT_PATH: &str = "/ward.cluster.v1.Peer/Raft";

/// Holds the request body of every peer method but `Raft` to [`SMALL_REQUEST_LIMIT`] bytes.
fn limit_small_requests(req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    use http_body_util::BodyExt as _;
    if req.uri().path() == RAFT_PATH {
        return req;
    }
    req.map(|body| {
        let limited = http_body_util::Limited::new(body, SMALL_REQUEST_LIMIT).map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                let status = tonic::Status::resource_exhausted(format!(
                    "request larger than {SMALL_REQUEST_LIMIT} bytes"
                ));
                Box::new(status) as tonic::codegen::StdError
            } else {
                e
            }
        });
        tonic::body::Body::new(limited)
    })
}

/// The peer listener's TLS: the replica's own peer certificate, and client certificates
/// accepted only when they chain to `source`'s bundle and name a replica of `td`.
///
/// # Errors
/// [`TlsError`] when rustls refuses the configuration.
pub fn listener_config(
    td: TrustDomain,
    identity: Arc<PeerIdentity>,
    source: Arc<dyn AuthoritySource>,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier::replicas(td, source));
    tls::server_config(verifier, identity)
}

/// Serves `service` on `listener` with `config` until `stop` is raised.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    service: PeerService,
    stop: watch::Receiver<bool>,
) {
    let incoming = tls::incoming(
        listener,
        config,
        tls::HandshakeLimits::default(),
        Arc::new(tls::HandshakeStats::default()),
    );
    let mut stop = stop;
    let signal = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = Server::builder()
        .layer(tower::util::MapRequestLayer::new(limit_small_requests))
        .add_service(PeerServer::new(service).max_decoding_message_size(PEER_MESSAGE_LIMIT))
        .serve_with_incoming_shutdown(incoming, signal)
        .await
    {
        tracing::error!(error = %e, "peer listener failed");
    }
}

/// TLS for dialling replica `to`: the server must present `to`'s replica certificate chaining
/// to one of `roots` (the bundle's X.509 authorities, DER); this replica presents its own
/// peer certificate when `identity` is given (a joining replica has none the cluster trusts).
///
/// # Errors
/// [`TlsError`] when a root is unusable or rustls refuses the configuration.
pub fn client_config(
    td: &TrustDomain,
    to: u64,
    roots: &[Vec<u8>],
    identity: Option<Arc<PeerIdentity>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let expected = ward_core::replica_id::replica_id(td, to)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let verifier = Arc::new(SpiffeServerVerifier::new(expected, Some(roots))?);
    client_config_with(verifier, identity)
}

/// TLS with an explicit server verifier (see [`client_config`]).
///
/// # Errors
/// [`TlsError`] when rustls refuses the configuration.
pub fn client_config_with(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    identity: Option<Arc<PeerIdentity>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(id) => builder.with_client_cert_resolver(id),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A gRPC channel to the peer listener at `address` (`host:port`, resolved at each
/// connection) over TLS with `config`. Connects lazily; the first call dials.
///
/// # Errors
/// A transport error when the endpoint cannot be built.
pub fn channel(
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let target = address.to_owned();
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let dial = async {
                    let tcp = tokio::net::TcpStream::connect(target.as_str()).await?;
                    let _ = tcp.set_nodelay(true);
                    // Verification ignores the name (the certificate carries only a URI).
                    let name = rustls::pki_types::ServerName::try_from("localhost")
                        .map_err(std::io::Error::other)?;
                    connector.connect(name, tcp).await
                };
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, dial)
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        })))
}
