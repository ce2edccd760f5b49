//! Records the node attestation payload an unmodified spire-agent sends: a stand-in for
//! spire-server's Agent API on 127.0.0.1 (TLS, a server SVID from a CA made here) that reads
//! the first `AttestAgent` message, keeps its attestation type and payload, and refuses the
//! attestation. A suite compares the payload byte for byte with what ward-agent's attestor
//! produces from the same evidence.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};
use ward_proto::spire::api::server::agent::v1::{self as pb, agent_server};
use ward_proto::spire::api::types;

use crate::node_attestation::start_spire_agent_with_attestor;

/// How long spire-agent may take to send its first `AttestAgent` message.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(60);

/// What an agent opened `AttestAgent` with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// `AttestationData.type`.
    pub attestation_type: String,
    /// `AttestationData.payload`.
    pub payload: Vec<u8>,
}

/// The refusal spire-agent gets (it retries; the capture keeps the first message).
const REFUSAL: &str = "payload recorded";

struct Recorder {
    tx: mpsc::Sender<Captured>,
}

type AttestStream = Pin<Box<dyn Stream<Item = Result<pb::AttestAgentResponse, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the payload recorder serves AttestAgent only"))
}

#[tonic::async_trait]
impl agent_server::Agent for Recorder {
    async fn count_agents(
        &self,
        _: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountAgentsResponse>, Status> {
        unimplemented()
    }

    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        unimplemented()
    }

    async fn get_agent(
        &self,
        _: Request<pb::GetAgentRequest>,
    ) -> Result<Response<types::Agent>, Status> {
        unimplemented()
    }

    async fn delete_agent(
        &self,
        _: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<()>, Status> {
        unimplemented()
    }

    async fn ban_agent(&self, _: Request<pb::BanAgentRequest>) -> Result<Response<()>, Status> {
        unimplemented()
    }

    type AttestAgentStream = AttestStream;

    async fn attest_agent(
        &self,
        request: Request<Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<AttestStream>, Status> {
        let first = request.into_inner().message().await?;
        let data = first.and_then(|m| match m.step {
            Some(pb::attest_agent_request::Step::Params(p)) => p.data,
            _ => None,
        });
        if let Some(d) = data {
            let _ = self.tx.try_send(Captured { attestation_type: d.r#type, payload: d.payload });
        }
        Err(Status::permission_denied(REFUSAL))
    }

    async fn renew_agent(
        &self,
        _: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        unimplemented()
    }

    async fn create_join_token(
        &self,
        _: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<types::JoinToken>, Status> {
        unimplemented()
    }

    async fn post_status(
        &self,
        _: Request<pb::PostStatusRequest>,
    ) -> Result<Response<pb::PostStatusResponse>, Status> {
        unimplemented()
    }
}

/// A TLS connection as tonic serves it.
struct Conn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A CA (written to `bundle` as PEM) and a server X509-SVID it signed, for TLS.
fn server_identity(trust_domain: &str, bundle: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "payload recorder CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(bundle, ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names =
        vec![SanType::URI(format!("spiffe://{trust_domain}/spire/server").try_into()?)];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    let der_key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der_key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Starts spire-agent (behind `launcher`, files under `dir`) with `attestor_block` against a
/// recorder standing in for spire-server, and returns what it opened `AttestAgent` with.
///
/// # Errors
/// When the recorder cannot start, spire-agent exits, or nothing arrives within a minute.
pub fn capture_spire_agent_payload(
    spire_agent: &Path,
    launcher: &[String],
    dir: &Path,
    trust_domain: &str,
    attestor_block: &str,
) -> anyhow::Result<Captured> {
    std::fs::create_dir_all(dir)?;
    let bundle = dir.join("recorder-bundle.pem");
    let tls = Arc::new(server_identity(trust_domain, &bundle)?);
    let runtime = tokio::runtime::Runtime::new()?;
    let (tx, mut rx) = mpsc::channel(1);
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let (conn_tx, conn_rx) = mpsc::channel::<Result<Conn, std::io::Error>>(8);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, conn_tx) = (acceptor.clone(), conn_tx.clone());
            tokio::spawn(async move {
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                {
                    let _ = conn_tx.send(Ok(Conn(tls))).await;
                }
            });
        }
    });
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(agent_server::AgentServer::new(Recorder { tx }))
            .serve_with_incoming(ReceiverStream::new(conn_rx)),
    );
    let (mut agent, _) = start_spire_agent_with_attestor(
        spire_agent,
        launcher,
        &dir.join("agent"),
        trust_domain,
        port,
        &bundle,
        attestor_block,
    )?;
    let deadline = std::time::Instant::now() + CAPTURE_TIMEOUT;
    let captured = loop {
        if let Ok(c) = rx.try_recv() {
            break c;
        }
        agent.ensure_running().context("spire-agent exited before attesting")?;
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("spire-agent sent no AttestAgent within {CAPTURE_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(agent);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(captured)
}
