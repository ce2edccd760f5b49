//! A small blocking HTTP/1.1 client for the cloud attestors: the agent asks its cloud's
//! metadata service for evidence, the server fetches the keys that sign it and, where
//! credentials are configured, asks the provider's API about the instance (`GET`, and `POST`
//! for token exchanges and query APIs).
//!
//! Attestors are called on blocking threads, so the client owns a one-worker tokio runtime and
//! waits for each request on a channel: it never blocks inside, nor starts a runtime within, an
//! async caller's runtime. HTTPS is verified against the PEM file named by `SSL_CERT_FILE` when
//! that variable is set (as Go's `crypto/x509` reads it on Linux), else against the Mozilla
//! roots of `webpki-roots`.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long one request may take, connection and TLS handshake included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest body read (identity tokens and key sets are a few KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// A response: its status, headers and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The status as Go's `Response.Status` reads: the code and the reason phrase the server
    /// sent (`404 Not Found`).
    pub status_text: String,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A blocking HTTP client (`GET` and `POST`).
pub struct HttpGetter {
    /// Always `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    /// How long one request may take.
    timeout: Duration,
}

impl std::fmt::Debug for HttpGetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGetter").finish_non_exhaustive()
    }
}

impl HttpGetter {
    /// A client with its own runtime thread named `name`.
    ///
    /// # Errors
    /// When the runtime cannot start.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Self { runtime: Some(runtime), timeout: REQUEST_TIMEOUT })
    }

    /// A client whose requests may take `timeout` each (connection and TLS included) instead
    /// of 15 seconds.
    ///
    /// # Errors
    /// When the runtime cannot start.
    pub fn with_timeout(name: &str, timeout: Duration) -> std::io::Result<Self> {
        let mut client = Self::new(name)?;
        client.timeout = timeout;
        Ok(client)
    }

    /// `GET url` with `headers`: the response whatever its status.
    ///
    /// # Errors
    /// A sentence (in the manner of Go's `net/http` client errors) when the URL is not
    /// `http`/`https`, the server cannot be reached, TLS fails, or no answer comes in time.
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, String> {
        self.send(http::Method::GET, url, headers, Bytes::new())
    }

    /// `POST url` with `headers` (the caller names the `Content-Type`) and `body`: the
    /// response whatever its status. `Content-Length` is set from the body.
    ///
    /// # Errors
    /// As [`HttpGetter::get`], with `Post` in place of `Get`.
    pub fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<HttpResponse, String> {
        self.send(http::Method::POST, url, headers, body.into())
    }

    /// `PUT url` with `headers` and `body` (the AWS instance metadata service's session token
    /// is asked for with a `PUT`): the response whatever its status.
    ///
    /// # Errors
    /// As [`HttpGetter::get`], with `Put` in place of `Get`.
    pub fn put(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<HttpResponse, String> {
        self.send(http::Method::PUT, url, headers, body.into())
    }

    fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<HttpResponse, String> {
        // Go's client errors name the method as `Get` / `Post`.
        let verb = match method {
            http::Method::POST => "Post",
            http::Method::PUT => "Put",
            _ => "Get",
        };
        let parsed = url::Url::parse(url).map_err(|e| format!("parse {url:?}: {e}"))?;
        let headers: Vec<(String, String)> =
            headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let Some(runtime) = &self.runtime else {
            return Err("the HTTP client is closed".to_owned());
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let shown = url.to_owned();
        let timeout = self.timeout;
        runtime.spawn(async move {
            let exchange = send(method, parsed, headers, body);
            let result = match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            // The receiver only goes away if the caller's thread died.
            let _ = tx.send(result);
        });
        rx.recv()
            .unwrap_or_else(|_| Err("the HTTP client runtime stopped".to_owned()))
            .map_err(|e| format!("{verb} {shown:?}: {e}"))
    }
}

impl Drop for HttpGetter {
    /// Stops the runtime without waiting for it: dropping a runtime the ordinary way blocks,
    /// which panics when the attestor is dropped inside an async task.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Reads `path` when it is a regular file of at most `max` bytes: a FIFO, a device or a
/// directory is refused before it is opened (opening a FIFO blocks until a writer comes; a
/// device may never end), and so is a larger file.
///
/// # Errors
/// The I/O error, or `InvalidInput` saying why the file is refused.
pub fn read_regular_file(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"));
    }
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {max} bytes"),
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The largest `SSL_CERT_FILE` read.
const MAX_CERT_FILE: u64 = 16 * 1024 * 1024;

/// The TLS client configuration, built once: roots from `SSL_CERT_FILE` or `webpki-roots`.
fn tls_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            match std::env::var_os("SSL_CERT_FILE") {
                Some(path) => {
                    let pem = read_regular_file(path.as_ref(), MAX_CERT_FILE).map_err(|e| {
                        format!("reading SSL_CERT_FILE {}: {e}", path.to_string_lossy())
                    })?;
                    for cert in CertificateDer::pem_slice_iter(&pem) {
                        let cert = cert.map_err(|e| format!("SSL_CERT_FILE: {e}"))?;
                        roots.add(cert).map_err(|e| format!("SSL_CERT_FILE: {e}"))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

async fn send(
    method: http::Method,
    url: url::Url,
    headers: Vec<(String, String)>,
    body: Bytes,
) -> Result<HttpResponse, String> {
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(format!("unsupported protocol scheme {other:?}")),
    };
    let host = url.host_str().ok_or("no host in request URL")?.to_owned();
    let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let tcp = TcpStream::connect((bare.as_str(), port)).await.map_err(|e| format!("dial: {e}"))?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    if tls {
        let server_name = ServerName::try_from(bare).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        request(stream, method, &authority, &target, &headers, body).await
    } else {
        request(tcp, method, &authority, &target, &headers, body).await
    }
}

async fn request<S>(
    io: S,
    method: http::Method,
    authority: &str,
    target: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<HttpResponse, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // Ends when the response is read and the sender dropped; errors reach the sender.
        let _ = connection.await;
    });
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(target)
        .header(http::header::HOST, authority);
    if method == http::Method::POST || method == http::Method::PUT {
        builder = builder.header(http::header::CONTENT_LENGTH, body.len());
    }
    for (k, v) in headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let reason = match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(r) => String::from_utf8_lossy(r.as_bytes()).into_owned(),
        None => response.status().canonical_reason().unwrap_or_default().to_owned(),
    };
    let status_text =
        if reason.is_empty() { status.to_string() } else { format!("{status} {reason}") };
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string())?;
    Ok(HttpResponse { status, status_text, headers, body })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::HttpGetter;
    use crate::node_attestor::test_http::{http_answer, serve};

    #[test]
    fn a_post_sends_its_method_length_and_headers_and_returns_the_answer() {
        let (addr, heads) = serve(vec![http_answer("200 OK", "", "{\"ok\":1}")]);
        let client = HttpGetter::new("post-test").unwrap();
        let url = format!("http://{addr}/token?x=1");
        let answer = client
            .post(&url, &[("content-type", "application/x-www-form-urlencoded")], "grant=abc")
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"{\"ok\":1}");
        let head = heads.recv().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /token?x=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("content-length: 9\r\n"), "{head}");
        assert!(head.contains("content-type: application/x-www-form-urlencoded\r\n"), "{head}");
    }

    #[test]
    fn a_refused_post_names_the_method_as_go_does() {
        let client = HttpGetter::new("post-test").unwrap();
        let err = client.post("ftp://127.0.0.1/x", &[], "").unwrap_err();
        assert_eq!(err, "Post \"ftp://127.0.0.1/x\": unsupported protocol scheme \"ftp\"");
    }

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.json");
        std::fs::write(&file, b"{}").unwrap();
        assert_eq!(super::read_regular_file(&file, 2).unwrap(), b"{}");
        let err = super::read_regular_file(&file, 1).unwrap_err();
        assert_eq!(err.to_string(), "larger than 1 bytes");
        let err = super::read_regular_file(dir.path(), 10).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::IsADirectory);
        // A FIFO is refused at once, not opened (opening it would wait for a writer).
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let err = super::read_regular_file(&fifo, 10).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        let err = super::read_regular_file(Path::new("/dev/zero"), 10).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
    }
}
