//! The bootstrap trust bundle: the X.509 authorities the agent checks the server against
//! before it has a bundle of its own, from `trust_bundle_path` or `trust_bundle_url`, in PEM or
//! as a SPIFFE bundle document (`trust_bundle_format`), as spire-agent reads them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use ward_core::{Bundle, TrustDomain};

use crate::config::{BootstrapTrust, BundleFormat};

/// Largest bundle document accepted from a URL.
const MAX_BUNDLE_BYTES: usize = 4 << 20;
/// Longest the download of a bundle may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why no bootstrap bundle could be had.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file could not be read.
    #[error("unable to read trust bundle {}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The URL could not be fetched.
    #[error("unable to fetch trust bundle URL {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The document does not decode in the configured format.
    #[error("unable to parse trust bundle: {0}")]
    Parse(String),
    /// The document holds no certificate.
    #[error("load bundle: no certs in bundle")]
    Empty,
}

/// Loads the bootstrap authorities (DER) for `td`; `None` for insecure bootstrap.
///
/// # Errors
/// [`BootstrapError`].
pub async fn load(
    source: &BootstrapTrust,
    td: &TrustDomain,
) -> Result<Option<Vec<Vec<u8>>>, BootstrapError> {
    let (bytes, format) = match source {
        BootstrapTrust::Insecure => return Ok(None),
        BootstrapTrust::Path(path, format) => (read(path)?, *format),
        BootstrapTrust::Url(url, format) => (fetch(url).await?, *format),
    };
    let ders = parse(&bytes, format, td)?;
    if ders.is_empty() {
        return Err(BootstrapError::Empty);
    }
    Ok(Some(ders))
}

fn read(path: &Path) -> Result<Vec<u8>, BootstrapError> {
    std::fs::read(path).map_err(|source| BootstrapError::Read { path: path.to_owned(), source })
}

/// Decodes a bundle document into DER X.509 authorities.
///
/// # Errors
/// [`BootstrapError::Parse`].
pub fn parse(
    bytes: &[u8],
    format: BundleFormat,
    td: &TrustDomain,
) -> Result<Vec<Vec<u8>>, BootstrapError> {
    match format {
        BundleFormat::Pem => {
            let text =
                std::str::from_utf8(bytes).map_err(|e| BootstrapError::Parse(e.to_string()))?;
            ward_core::bundle::pem::decode_certificates(text)
                .map_err(|e| BootstrapError::Parse(e.to_string()))
        }
        BundleFormat::Spiffe => {
            let bundle = Bundle::from_spiffe_json(td.clone(), bytes)
                .map_err(|e| BootstrapError::Parse(e.to_string()))?;
            Ok(bundle.x509_authorities.into_iter().map(|a| a.der).collect())
        }
    }
}

/// GETs an `https://` URL, trusting the web PKI roots.
async fn fetch(url: &str) -> Result<Vec<u8>, BootstrapError> {
    let fail = |reason: String| BootstrapError::Fetch { url: url.to_owned(), reason };
    match tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url)).await {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail("timed out".into())),
    }
}

async fn fetch_inner(url: &str) -> Result<Vec<u8>, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().ok_or("no host")?.to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config = rustls::ClientConfig::builder_with_provider(ward_spiffe_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[').trim_end_matches(']').to_owned(),
    )
    .map_err(|e| e.to_string())?;
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("unexpected status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_documents_yield_their_x509_authorities() {
        let td = TrustDomain::new("example.org").unwrap();
        let doc = br#"{"keys":[]}"#;
        assert_eq!(parse(doc, BundleFormat::Spiffe, &td).unwrap(), Vec::<Vec<u8>>::new());
        assert!(matches!(
            parse(b"not json", BundleFormat::Spiffe, &td),
            Err(BootstrapError::Parse(_))
        ));
        assert!(matches!(
            parse(
                b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
                BundleFormat::Pem,
                &td
            ),
            Err(BootstrapError::Parse(_))
        ));
    }
}
