//! Google Cloud for the `gcp_iit` suite, inside a network namespace the test makes: a fake
//! metadata server (`metadata.google.internal`, plain HTTP on port 80) that hands out an
//! identity token, and a fake `www.googleapis.com` (HTTPS on port 443, certificate from a test
//! CA) that publishes the certificate of the key that signs it. Processes started with
//! [`GcpLab::launcher`] see both names in their `/etc/hosts` and trust the test CA through
//! `SSL_CERT_FILE` (read by Go's `crypto/x509` and by ward's HTTP client alike), so
//! spire-server verifies test-signed tokens as it verifies Google's.
//!
//! Needs root (`ip netns`, `setns`). The thread that calls [`GcpLab::enter`] joins the
//! namespace, and so do the threads and processes it starts afterwards (a tokio runtime built
//! after it, `free_port`, the daemons), so the test talks to servers on the namespace's
//! 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::netns::NetLab;

/// Where `www.googleapis.com` is in the namespace.
pub const GOOGLE_ADDRESS: &str = "127.0.0.2";
/// Where `metadata.google.internal` is in the namespace.
pub const METADATA_ADDRESS: &str = "127.0.0.3";
/// Where `oauth2.googleapis.com` is in the namespace (see [`crate::gcp_api`]).
pub const OAUTH2_ADDRESS: &str = "127.0.0.4";
/// Where `compute.googleapis.com` is in the namespace (see [`crate::gcp_api`]).
pub const COMPUTE_ADDRESS: &str = "127.0.0.5";
/// The key ID of the test signing key.
pub const KID: &str = "ward-test-key";
/// The audience SPIRE's agent asks tokens for.
pub const AUDIENCE: &str = "spire-gcp-node-attestor";
/// How long the fake servers run at most.
const SERVE_LIMIT: Duration = Duration::from_secs(900);

/// The key that signs identity tokens, and its self-signed certificate (as Google publishes).
pub struct TokenSigner {
    key: RsaKeyPair,
    /// The certificate, PEM.
    pub cert_pem: String,
}

impl TokenSigner {
    /// A new 2048-bit RSA key and its certificate.
    ///
    /// # Errors
    /// When key generation fails.
    pub fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
        let cert =
            CertificateParams::new(vec!["ward-test-signer".to_owned()])?.self_signed(&key)?;
        let key = RsaKeyPair::from_pkcs8(&key.serialize_der())
            .map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
        Ok(Self { key, cert_pem: cert.pem() })
    }

    /// A compact RS256 JWS of `claims` with key ID `kid`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign(&self, kid: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
        let header = serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Google's certificate answer: `{"<kid>": "<PEM>"}`.
    pub fn certs_json(&self) -> String {
        serde_json::json!({ KID: self.cert_pem }).to_string()
    }
}

/// Identity token claims as Compute Engine writes them (`format=full`), valid from `now` for
/// an hour.
pub fn identity_claims(now: i64, project: &str, instance_id: &str) -> serde_json::Value {
    serde_json::json!({
        "aud": AUDIENCE,
        "azp": "112233445566778899",
        "email": "1234-compute@developer.gserviceaccount.com",
        "email_verified": true,
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": "112233445566778899",
        "google": {"compute_engine": {
            "instance_creation_timestamp": now - 86400,
            "instance_id": instance_id,
            "instance_name": "blog-server",
            "project_id": project,
            "project_number": 1234,
            "zone": "us-west1-b"
        }}
    })
}

/// The Unix time now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// One request as the fake servers saw it: its request line and headers (and its body after a
/// blank line, when it has one).
pub type Head = String;

/// An HTTP answer: status, extra headers, body.
pub type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// What a fake server answers a request with.
pub type Handler = Arc<dyn Fn(&Head) -> Answer + Send + Sync>;

/// A server answering each connection's one request with its handler, until dropped.
pub struct FakeServer {
    stop: Arc<AtomicBool>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The request line and headers, then, when the request has a `Content-Length` body, a blank
/// line and the body (as text).
fn read_head(stream: &mut impl Read) -> std::io::Result<Head> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0usize;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0).min(1 << 20);
        }
        head.push_str(&line);
    }
    if length > 0 {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        head.push_str("\r\n");
        head.push_str(&String::from_utf8_lossy(&body));
    }
    Ok(head)
}

fn write_answer(stream: &mut impl Write, (status, headers, body): &Answer) -> std::io::Result<()> {
    let mut text =
        format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn serve_one(
    tcp: TcpStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
    handler: &Handler,
) -> std::io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    match tls {
        Some(config) => {
            let conn =
                rustls::ServerConnection::new(Arc::clone(config)).map_err(std::io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            let head = read_head(&mut stream)?;
            write_answer(&mut stream, &handler(&head))?;
            stream.conn.send_close_notify();
            stream.flush()
        }
        None => {
            let mut tcp = tcp;
            let head = read_head(&mut tcp)?;
            write_answer(&mut tcp, &handler(&head))
        }
    }
}

/// Serves each connection to `listener` (over TLS with `tls`) with `handler`, on threads of
/// its own, until the result is dropped or [`SERVE_LIMIT`] has passed.
///
/// # Errors
/// When the listener cannot be made non-blocking.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
) -> anyhow::Result<FakeServer> {
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::spawn(move || {
        let deadline = Instant::now() + SERVE_LIMIT;
        while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
            match listener.accept() {
                Ok((tcp, _)) => {
                    let (tls, handler) = (tls.clone(), Arc::clone(&handler));
                    std::thread::spawn(move || {
                        if let Err(e) = serve_one(tcp, tls.as_ref(), &handler) {
                            eprintln!("fake GCP server: {e}");
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Ok(FakeServer { stop })
}

/// The namespace, its `/etc/hosts`, the test CA and the fake servers.
pub struct GcpLab {
    lab: NetLab,
    member: u64,
    /// The test CA's certificate (PEM file), given to processes as `SSL_CERT_FILE`.
    pub ca_path: PathBuf,
    /// The key that signs tokens and whose certificate the fake Google publishes.
    pub signer: Arc<TokenSigner>,
    /// The token the metadata server hands out.
    token: Arc<Mutex<String>>,
    /// How many requests the fake Google answered.
    pub cert_requests: Arc<AtomicUsize>,
    /// The last request the metadata server answered.
    pub last_metadata_request: Arc<Mutex<Head>>,
    /// The fake Google servers' TLS configuration (a certificate of the test CA for
    /// `www.googleapis.com`, `oauth2.googleapis.com` and `compute.googleapis.com`), once
    /// [`GcpLab::enter`] has made it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    servers: Vec<FakeServer>,
}

impl GcpLab {
    /// Makes the namespace and its `/etc/hosts`, the test CA (written under `dir`) and the
    /// signing key. Nothing listens yet: see [`GcpLab::enter`].
    ///
    /// # Errors
    /// When the namespace cannot be made (not root) or a file cannot be written.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let mut lab = NetLab::new("gcp", 0)?;
        let member = lab.add_client()?;
        lab.set_hosts(
            member,
            &[
                (GOOGLE_ADDRESS, "www.googleapis.com"),
                (METADATA_ADDRESS, "metadata.google.internal"),
                (OAUTH2_ADDRESS, "oauth2.googleapis.com"),
                (COMPUTE_ADDRESS, "compute.googleapis.com"),
            ],
        )?;
        std::fs::create_dir_all(dir)?;
        let ca_path = dir.join("test-ca.pem");
        Ok(Self {
            lab,
            member,
            ca_path,
            signer: Arc::new(TokenSigner::new()?),
            token: Arc::new(Mutex::new(String::new())),
            cert_requests: Arc::new(AtomicUsize::new(0)),
            last_metadata_request: Arc::new(Mutex::new(String::new())),
            tls: None,
            servers: Vec::new(),
        })
    }

    /// The words that start a program in the namespace with its `/etc/hosts` and the test CA
    /// as `SSL_CERT_FILE`.
    ///
    /// # Errors
    /// When the namespace is gone.
    pub fn launcher(&self) -> anyhow::Result<Vec<String>> {
        let mut words = self.lab.launcher(self.member)?;
        words.push("env".to_owned());
        words.push(format!("SSL_CERT_FILE={}", self.ca_path.display()));
        Ok(words)
    }

    /// Moves the calling thread into the namespace and starts the fake servers there.
    ///
    /// # Errors
    /// When `setns` fails or a server cannot listen.
    pub fn enter(&mut self) -> anyhow::Result<()> {
        enter_namespace(&self.lab, self.member)?;
        // www.googleapis.com: HTTPS with a certificate from the test CA.
        let tls = Arc::new(test_ca_tls_for(
            &self.ca_path,
            &["www.googleapis.com", "oauth2.googleapis.com", "compute.googleapis.com"],
        )?);
        self.tls = Some(Arc::clone(&tls));
        let certs = self.signer.certs_json().into_bytes();
        let count = Arc::clone(&self.cert_requests);
        let google: Handler = Arc::new(move |head| {
            count.fetch_add(1, Ordering::SeqCst);
            if head.starts_with("GET /oauth2/v1/certs ") {
                (200, vec![("Content-Type".into(), "application/json".into())], certs.clone())
            } else {
                (404, Vec::new(), b"not found".to_vec())
            }
        });
        let listener = TcpListener::bind((GOOGLE_ADDRESS, 443)).context("binding :443")?;
        self.servers.push(serve(listener, Some(tls), google)?);

        // metadata.google.internal: plain HTTP, the token for the default service account.
        let token = Arc::clone(&self.token);
        let last = Arc::clone(&self.last_metadata_request);
        let metadata: Handler = Arc::new(move |head| {
            *last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = head.clone();
            let flavored = head.to_ascii_lowercase().contains("\r\nmetadata-flavor: google\r\n");
            let path = "GET /computeMetadata/v1/instance/service-accounts/default/identity?\
                        audience=spire-gcp-node-attestor&format=full ";
            // The default service account's access token, for servers that find their
            // Compute Engine API credentials on the metadata server.
            let access = "GET /computeMetadata/v1/instance/service-accounts/default/token?";
            if flavored && head.starts_with(path) {
                let t = token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                (200, Vec::new(), t.into_bytes())
            } else if flavored && head.starts_with(access) {
                crate::gcp_api::access_token_answer()
            } else {
                (404, Vec::new(), b"not found".to_vec())
            }
        });
        let listener = TcpListener::bind((METADATA_ADDRESS, 80)).context("binding :80")?;
        self.servers.push(serve(listener, None, metadata)?);
        Ok(())
    }

    /// Sets the token the metadata server hands out.
    pub fn set_token(&self, token: &str) {
        *self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = token.to_owned();
    }
}

/// Moves the calling thread into member `member`'s network namespace.
///
/// # Errors
/// When the namespace cannot be opened or `setns` fails.
pub fn enter_namespace(lab: &NetLab, member: u64) -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{}", lab.namespace(member)?);
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .context("setns")
}

/// A new test CA (its certificate written to `ca_path`) and a TLS server configuration with a
/// certificate it issued for `name`.
///
/// # Errors
/// When a key or certificate cannot be made or written.
pub fn test_ca_tls(ca_path: &Path, name: &str) -> anyhow::Result<rustls::ServerConfig> {
    test_ca_tls_for(ca_path, &[name])
}

/// As [`test_ca_tls`], the certificate naming each of `names`.
///
/// # Errors
/// When a key or certificate cannot be made or written.
pub fn test_ca_tls_for(ca_path: &Path, names: &[&str]) -> anyhow::Result<rustls::ServerConfig> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(ca_path, ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names)?.signed_by(&leaf_key, &issuer)?;
    Ok(rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )?)
}
