//! How the agent reaches its server: the configured host names or addresses, resolved on
//! every connection attempt (a name may have several address records; they are tried in
//! turn, starting from a different one each time so agents spread over replicas), over TLS
//! that checks the server's SVID as spire-agent does (`ward-spiffe-tls`).
//!
//! [`ServerClient`] holds the gRPC channel the agent's parts share. It is rebuilt when the
//! agent SVID rotates ([`ServerClient::set_identity`]): new connections present the new SVID,
//! as spire-agent re-creates its connection after every rotation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use ward_core::TrustDomain;
use ward_spiffe_tls::{SpiffeServerVerifier, agent_client_config, connect_tls};

/// Longest one RPC may take (spire-agent's per-call timeout).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a TCP connect and TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection to the server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS configuration could not be built (a bad root or key).
    #[error("tls configuration")]
    Tls(#[from] ward_spiffe_tls::TlsError),
    /// Connecting or the handshake failed.
    #[error("connecting to the server")]
    Transport(#[from] tonic::transport::Error),
}

/// Where the server is: host names or IP addresses and one port.
#[derive(Debug)]
pub struct ServerTarget {
    hosts: Vec<String>,
    port: u16,
    next: AtomicUsize,
}

impl ServerTarget {
    /// The servers at `hosts` (names or addresses), all on `port`.
    pub fn new(hosts: Vec<String>, port: u16) -> Self {
        let start = fastrand::usize(..hosts.len().max(1));
        Self { hosts, port, next: AtomicUsize::new(start) }
    }

    /// A short description for logs (`host:port`, or the first host and how many more).
    pub fn describe(&self) -> String {
        match self.hosts.as_slice() {
            [one] => format!("{one}:{}", self.port),
            [first, rest @ ..] => format!("{first}:{} (+{} more)", self.port, rest.len()),
            [] => "no server".into(),
        }
    }

    /// Every address of every host, in a rotating order.
    ///
    /// # Errors
    /// The resolver's error when no host resolves.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let mut addrs = Vec::new();
        let mut last_err = None;
        for host in &self.hosts {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match tokio::net::lookup_host((host, self.port)).await {
                Ok(found) => addrs.extend(found),
                Err(e) => last_err = Some(e),
            }
        }
        if addrs.is_empty() {
            return Err(last_err.unwrap_or_else(|| std::io::Error::other("no server address")));
        }
        let shift = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        addrs.rotate_left(shift);
        Ok(addrs)
    }
}

/// A gRPC channel to the server over TLS with `config`, trying each resolved address in turn
/// on every (re)connection. With `lazy` the first connection is made on first use.
///
/// # Errors
/// [`ConnectError::Transport`] when an eager connection fails.
pub async fn channel(
    target: Arc<ServerTarget>,
    config: Arc<rustls::ClientConfig>,
    lazy: bool,
) -> Result<Channel, ConnectError> {
    let endpoint = Endpoint::from_static("http://spire-server")
        .timeout(RPC_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let connector = tower::service_fn(move |_: http::Uri| {
        let target = target.clone();
        let config = config.clone();
        async move {
            let mut last = std::io::Error::other("no server address");
            for addr in target.resolve().await? {
                let attempt =
                    tokio::time::timeout(CONNECT_TIMEOUT, connect_tls(addr, config.clone()));
                match attempt.await {
                    Ok(Ok(tls)) => return Ok(hyper_util::rt::TokioIo::new(tls)),
                    Ok(Err(e)) => {
                        tracing::debug!(server = %addr, error = %e, "server connection failed");
                        last = e;
                    }
                    Err(_) => {
                        last =
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                    }
                }
            }
            Err(last)
        }
    });
    if lazy {
        Ok(endpoint.connect_with_connector_lazy(connector))
    } else {
        Ok(endpoint.connect_with_connector(connector).await?)
    }
}

/// The agent SVID and key presented to the server (DER chain leaf first, PKCS#8 key).
pub type ClientIdentity = (Vec<Vec<u8>>, Vec<u8>);

/// The TLS client configuration for the server of `td`: its SVID checked against `roots`
/// (`None` checks the ID only: insecure bootstrap), presenting `identity` when given.
///
/// # Errors
/// [`ConnectError::Tls`].
pub fn client_config(
    td: &TrustDomain,
    roots: Option<&[Vec<u8>]>,
    identity: Option<ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let verifier = Arc::new(SpiffeServerVerifier::for_trust_domain(td, roots)?);
    Ok(Arc::new(agent_client_config(verifier, identity)?))
}

/// The shared, authenticated (mTLS) channel to the server.
#[derive(Debug, Clone)]
pub struct ServerClient {
    target: Arc<ServerTarget>,
    trust_domain: TrustDomain,
    channel: Arc<watch::Sender<Channel>>,
}

impl ServerClient {
    /// A client presenting `identity` and trusting `roots`; connects on first use.
    ///
    /// # Errors
    /// [`ConnectError::Tls`] when the identity or roots are unusable.
    pub async fn new(
        target: Arc<ServerTarget>,
        trust_domain: TrustDomain,
        roots: &[Vec<u8>],
        identity: ClientIdentity,
    ) -> Result<Self, ConnectError> {
        let config = client_config(&trust_domain, Some(roots), Some(identity))?;
        let ch = channel(target.clone(), config, true).await?;
        Ok(Self { target, trust_domain, channel: Arc::new(watch::Sender::new(ch)) })
    }

    /// The channel to use for the next call (cheap to clone; after a rotation, a new one).
    pub fn channel(&self) -> Channel {
        self.channel.borrow().clone()
    }

    /// A receiver that always holds the channel to use (it changes when the agent SVID
    /// rotates), for parts that make calls for as long as the agent runs.
    pub fn channels(&self) -> watch::Receiver<Channel> {
        self.channel.subscribe()
    }

    /// Where the server is.
    pub fn target(&self) -> &Arc<ServerTarget> {
        &self.target
    }

    /// Switches to a new identity and bundle: later calls connect afresh with them.
    ///
    /// # Errors
    /// [`ConnectError::Tls`] when the identity or roots are unusable.
    pub async fn set_identity(
        &self,
        roots: &[Vec<u8>],
        identity: ClientIdentity,
    ) -> Result<(), ConnectError> {
        let config = client_config(&self.trust_domain, Some(roots), Some(identity))?;
        let ch = channel(self.target.clone(), config, true).await?;
        self.channel.send_replace(ch);
        Ok(())
    }
}
