//! What the `aws_iid` suite needs besides the node-attestation harness: a test "AWS region"
//! (an RSA-2048 and an RSA-1024 key with self-signed certificates, as AWS publishes one of
//! each per region) that signs instance identity documents the way AWS does — with the
//! `openssl` command line, so the PKCS#7 is BER with indefinite lengths, as AWS's is — and a
//! fake instance metadata service (IMDS) on 127.0.0.1 that serves them, IMDSv2 token first,
//! and records every request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::command::run;

/// How long one `openssl` run may take.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// A test region's signing keys and certificates (PEM files under one directory).
pub struct TestRegion {
    /// The RSA-2048 certificate (verifies `rsa2048`).
    pub rsa2048_cert: PathBuf,
    rsa2048_key: PathBuf,
    /// The RSA-1024 certificate (verifies `signature`).
    pub rsa1024_cert: PathBuf,
    rsa1024_key: PathBuf,
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let mut cmd = std::process::Command::new("openssl");
    cmd.current_dir(dir).args(args);
    let out = run(&mut cmd, OPENSSL_TIMEOUT)?.success()?;
    Ok(out.stdout.into_bytes())
}

/// Base64 of `bytes` in lines of 64 characters (as IMDS serves signatures), no final newline.
fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    text.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

impl TestRegion {
    /// New keys and certificates under `dir` (created), named after `name`.
    ///
    /// # Errors
    /// When `openssl` fails.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = |what: &str| dir.join(format!("{name}-{what}.pem"));
        let region = Self {
            rsa2048_cert: file("rsa2048-cert"),
            rsa2048_key: file("rsa2048-key"),
            rsa1024_cert: file("rsa1024-cert"),
            rsa1024_key: file("rsa1024-key"),
            dir: dir.to_owned(),
        };
        for (bits, key, cert) in [
            ("rsa:2048", &region.rsa2048_key, &region.rsa2048_cert),
            ("rsa:1024", &region.rsa1024_key, &region.rsa1024_cert),
        ] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    bits,
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/O=test/CN={name} {bits}"),
                    "-keyout",
                    &key.to_string_lossy(),
                    "-out",
                    &cert.to_string_lossy(),
                ],
            )
            .with_context(|| format!("making the {bits} certificate of {name}"))?;
        }
        Ok(region)
    }

    /// The RSA-1024 `signature` of `document`: base64 PKCS#1 v1.5 over SHA-256.
    ///
    /// # Errors
    /// When `openssl` fails.
    pub fn sign_rsa1024(&self, document: &str) -> anyhow::Result<String> {
        let doc = self.dir.join(format!("doc-{}.json", crate::next_tag()));
        std::fs::write(&doc, document)?;
        let sig = openssl(
            &self.dir,
            &[
                "dgst",
                "-sha256",
                "-sign",
                &self.rsa1024_key.to_string_lossy(),
                &doc.to_string_lossy(),
            ],
        )?;
        Ok(base64_lines(&sig))
    }

    /// The `rsa2048` PKCS#7 of `document`: SignedData holding the document, signed attributes
    /// and all, streamed BER, PEM armour removed.
    ///
    /// # Errors
    /// When `openssl` fails.
    pub fn sign_pkcs7(&self, document: &str) -> anyhow::Result<String> {
        let doc = self.dir.join(format!("doc-{}.json", crate::next_tag()));
        std::fs::write(&doc, document)?;
        let pem = openssl(
            &self.dir,
            &[
                "smime",
                "-sign",
                "-binary",
                "-nodetach",
                "-nocerts",
                "-stream",
                "-md",
                "sha256",
                "-outform",
                "PEM",
                "-in",
                &doc.to_string_lossy(),
                "-signer",
                &self.rsa2048_cert.to_string_lossy(),
                "-inkey",
                &self.rsa2048_key.to_string_lossy(),
            ],
        )?;
        let text = String::from_utf8(pem)?;
        let body: Vec<&str> =
            text.lines().filter(|l| !l.starts_with("-----") && !l.is_empty()).collect();
        ensure!(!body.is_empty(), "openssl printed no PKCS#7: {text}");
        Ok(body.join("\n"))
    }
}

/// An instance identity document as IMDS serves it (pretty-printed, AWS's member order).
pub fn document(account: &str, region: &str, instance_id: &str) -> String {
    format!(
        "{{\n  \"accountId\" : \"{account}\",\n  \"architecture\" : \"x86_64\",\n  \
         \"availabilityZone\" : \"{region}a\",\n  \"billingProducts\" : null,\n  \
         \"devpayProductCodes\" : null,\n  \"marketplaceProductCodes\" : null,\n  \
         \"imageId\" : \"ami-0123456789abcdef0\",\n  \"instanceId\" : \"{instance_id}\",\n  \
         \"instanceType\" : \"t3.micro\",\n  \"kernelId\" : null,\n  \
         \"pendingTime\" : \"2026-11-30T12:00:00Z\",\n  \"privateIp\" : \"10.0.0.7\",\n  \
         \"ramdiskId\" : null,\n  \"region\" : \"{region}\",\n  \"version\" : \"2017-09-30\"\n}}"
    )
}

/// What one instance's IMDS serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// `instance-identity/document`.
    pub document: String,
    /// `instance-identity/signature`.
    pub signature: String,
    /// `instance-identity/rsa2048`.
    pub rsa2048: String,
}

impl Identity {
    /// `document` signed both ways by `region`.
    ///
    /// # Errors
    /// When `openssl` fails.
    pub fn signed(region: &TestRegion, document: String) -> anyhow::Result<Self> {
        Ok(Self {
            signature: region.sign_rsa1024(&document)?,
            rsa2048: region.sign_pkcs7(&document)?,
            document,
        })
    }
}

/// One request the fake IMDS answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsRequest {
    /// `GET`, `PUT`.
    pub method: String,
    /// The path.
    pub path: String,
    /// Whether it carried the session token the fake handed out.
    pub with_token: bool,
    /// The token lifetime it asked for (`x-aws-ec2-metadata-token-ttl-seconds`).
    pub token_ttl: Option<String>,
}

/// The token the fake IMDS hands out.
const TOKEN: &str = "fake-imds-session-token";

/// A fake IMDS on 127.0.0.1: serves one [`Identity`] (which a test may replace), grants
/// IMDSv2 tokens, and records each request. Stops when dropped.
pub struct FakeImds {
    /// Its port.
    pub port: u16,
    identity: Arc<Mutex<Identity>>,
    requests: Arc<Mutex<Vec<ImdsRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeImds {
    /// Starts serving `identity`.
    ///
    /// # Errors
    /// When it cannot listen.
    pub fn start(identity: Identity) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let identity = Arc::new(Mutex::new(identity));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (id, reqs, halt) = (identity.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &id, &reqs);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Self { port, identity, requests, stop, thread: Some(thread) })
    }

    /// Its base URL, as `ec2_metadata_endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Serves `identity` from now on.
    pub fn set(&self, identity: Identity) {
        *self.identity.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = identity;
    }

    /// The requests answered so far, and forgets them.
    pub fn take_requests(&self) -> Vec<ImdsRequest> {
        std::mem::take(
            &mut *self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers the requests of one connection (keep-alive) until it closes.
fn serve(
    stream: TcpStream,
    identity: &Mutex<Identity>,
    requests: &Mutex<Vec<ImdsRequest>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let path = words.next().unwrap_or_default().to_owned();
        let (mut with_token, mut token_ttl, mut length) = (false, None, 0usize);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "x-aws-ec2-metadata-token" => with_token = value == TOKEN,
                "x-aws-ec2-metadata-token-ttl-seconds" => token_ttl = Some(value.to_owned()),
                "content-length" => length = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(ImdsRequest {
            method: method.clone(),
            path: path.clone(),
            with_token,
            token_ttl: token_ttl.clone(),
        });
        let id = identity.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let (status, extra, body) = match (method.as_str(), path.as_str()) {
            ("PUT", "/latest/api/token") => (
                "200 OK",
                format!(
                    "x-aws-ec2-metadata-token-ttl-seconds: {}\r\n",
                    token_ttl.unwrap_or_default()
                ),
                TOKEN.to_owned(),
            ),
            ("GET", "/latest/dynamic/instance-identity/document") => {
                ("200 OK", String::new(), id.document)
            }
            ("GET", "/latest/dynamic/instance-identity/signature") => {
                ("200 OK", String::new(), id.signature)
            }
            ("GET", "/latest/dynamic/instance-identity/rsa2048") => {
                ("200 OK", String::new(), id.rsa2048)
            }
            _ => ("404 Not Found", String::new(), String::new()),
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )?;
        writer.flush()?;
    }
}
