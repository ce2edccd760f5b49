//! Shared test harness: an in-process server on temp dirs and real sockets, an admin client
//! over its Unix socket, and agent-side TLS clients that verify the server SPIFFE-style.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use tonic::transport::Channel;
use ward_ca::{KeyType, PrivateKey, build_csr};
use ward_core::Clock;
use ward_proto::convert::attest_agent_params;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;
use ward_server::config::{Config, Overrides};
use ward_server::run::RunningServer;
use ward_server::tls::{SpiffeServerVerifier, agent_channel, agent_client_config};

/// A clock tests can move forward.
#[derive(Debug, Default)]
pub struct ManualClock {
    offset_secs: AtomicI64,
}

impl ManualClock {
    pub fn advance(&self, secs: i64) {
        self.offset_secs.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        let off = self.offset_secs.load(Ordering::SeqCst);
        SystemTime::now() + Duration::from_secs(u64::try_from(off).unwrap_or(0))
    }
}

/// A configuration listening on 127.0.0.1 (any port), with its admin socket and data
/// directory under `dir`, followed by the TOML lines of `extra`.
pub fn config_in(dir: &std::path::Path, extra: &str) -> Config {
    let text = format!(
        "bind_address = \"127.0.0.1\"\nbind_port = 0\nsocket_path = \"{}\"\ndata_dir = \"{}\"\n{extra}",
        dir.join("admin/api.sock").display(),
        dir.join("data").display()
    );
    Config::from_toml(&text, &Overrides::default()).unwrap()
}

pub struct TestServer {
    pub server: RunningServer,
    pub clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config_in(dir.path(), "[ratelimit]\nattestation = false\nsigning = false\n");
        edit(&mut cfg);
        let clock = Arc::new(ManualClock::default());
        let opts = ward_server::run::StartOptions {
            clock: clock.clone(),
            store: None,
            svid_check_interval: std::time::Duration::from_millis(100),
            federation_web_roots: Vec::new(),
        };
        let server = ward_server::run::start_with(cfg, opts).await.unwrap();
        Self { server, clock, _dir: dir }
    }

    pub async fn admin(&self) -> Channel {
        ward_server::cli::admin_channel(&self.server.socket_path).await.unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.tcp_addr
    }

    pub async fn create_token(&self, ttl: i32) -> String {
        let mut c = agentpb::agent_client::AgentClient::new(self.admin().await);
        c.create_join_token(agentpb::CreateJoinTokenRequest {
            ttl,
            token: String::new(),
            agent_id: None,
        })
        .await
        .unwrap()
        .into_inner()
        .value
    }

    /// Creates an entry and returns its id.
    pub async fn create_entry(
        &self,
        spiffe_path: &str,
        parent: &str,
        selector: (&str, &str),
    ) -> String {
        let mut c = entrypb::entry_client::EntryClient::new(self.admin().await);
        let resp = c
            .batch_create_entry(entrypb::BatchCreateEntryRequest {
                entries: vec![types::Entry {
                    spiffe_id: Some(id("example.org", spiffe_path)),
                    parent_id: Some(parse(parent)),
                    selectors: vec![types::Selector {
                        r#type: selector.0.into(),
                        value: selector.1.into(),
                    }],
                    ..Default::default()
                }],
                output_mask: None,
            })
            .await
            .unwrap()
            .into_inner();
        let r = &resp.results[0];
        assert_eq!(r.status.as_ref().unwrap().code, 0, "{:?}", r.status);
        r.entry.as_ref().unwrap().id.clone()
    }

    /// The own bundle's X.509 authorities.
    pub async fn roots(&self) -> Vec<Vec<u8>> {
        let mut c = bundlepb::bundle_client::BundleClient::new(self.admin().await);
        let b = c.get_bundle(bundlepb::GetBundleRequest { output_mask: None }).await.unwrap();
        b.into_inner().x509_authorities.into_iter().map(|a| a.asn1).collect()
    }
}

pub fn id(td: &str, path: &str) -> types::Spiffeid {
    types::Spiffeid { trust_domain: td.into(), path: path.into() }
}

pub fn parse(s: &str) -> types::Spiffeid {
    let rest = s.strip_prefix("spiffe://").unwrap();
    let (td, path) = rest.split_once('/').map_or((rest, ""), |(t, p)| (t, p));
    id(td, &format!("/{path}"))
}

/// The agent-side verifier for `spiffe://example.org/spire/server`, chaining to `roots`
/// (empty: insecure bootstrap, ID only).
pub fn server_verifier(roots: &[Vec<u8>]) -> Arc<SpiffeServerVerifier> {
    let td = ward_core::TrustDomain::new("example.org").unwrap();
    let roots = Some(roots).filter(|r| !r.is_empty());
    Arc::new(SpiffeServerVerifier::for_trust_domain(&td, roots).unwrap())
}

/// A client identity: certificate chain and PKCS#8 key.
#[derive(Clone)]
pub struct Identity {
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
}

/// A gRPC channel over TLS to `addr`, verifying the server against `roots` and presenting
/// `identity` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    roots: &[Vec<u8>],
    identity: Option<Identity>,
) -> Channel {
    try_tls_channel(addr, roots, identity).await.unwrap()
}

pub async fn try_tls_channel(
    addr: SocketAddr,
    roots: &[Vec<u8>],
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let identity = identity.map(|id| (id.chain, id.key_pkcs8));
    let cfg = agent_client_config(server_verifier(roots), identity).unwrap();
    agent_channel(addr, Arc::new(cfg)).await
}

/// A fresh P-256 key and a CSR for it.
pub fn key_and_csr() -> (PrivateKey, Vec<u8>) {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let csr = build_csr(&key).unwrap();
    (key, csr)
}

/// Attests with `token` over a TLS connection without a client certificate.
pub async fn attest(
    addr: SocketAddr,
    token: &str,
    csr: Vec<u8>,
) -> Result<agentpb::attest_agent_response::Result, tonic::Status> {
    let ch = tls_channel(addr, &[], None).await;
    let mut c = agentpb::agent_client::AgentClient::new(ch);
    let req = attest_agent_params("join_token", token.as_bytes().to_vec(), csr);
    let mut stream = c.attest_agent(futures::stream::iter(vec![req])).await?.into_inner();
    let msg = stream.message().await?.expect("a response");
    match msg.step {
        Some(agentpb::attest_agent_response::Step::Result(r)) => Ok(r),
        other => panic!("unexpected step {other:?}"),
    }
}

/// Attests a new agent and returns its identity and SPIFFE ID.
pub async fn new_agent(ts: &TestServer) -> (Identity, String) {
    let token = ts.create_token(600).await;
    let (key, csr) = key_and_csr();
    let r = attest(ts.addr(), &token, csr).await.unwrap();
    let svid = r.svid.unwrap();
    let ident = Identity { chain: svid.cert_chain, key_pkcs8: key.pkcs8_der().to_vec() };
    (ident, format!("spiffe://example.org/spire/agent/join_token/{token}"))
}

/// `GET path` over plain HTTP/1.1 to `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}
