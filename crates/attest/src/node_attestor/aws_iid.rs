//! `aws_iid`: the EC2 instance identity document (SPIRE v1.13.3 `pkg/common/plugin/aws`,
//! `pkg/agent/plugin/nodeattestor/awsiid`, `pkg/server/plugin/nodeattestor/awsiid`).
//!
//! 1. The agent ([`AwsIidAttestor`]) reads from the instance metadata service (IMDS) the
//!    instance identity document, its RSA-1024 signature and its RSA-2048 PKCS#7 signature
//!    (`/latest/dynamic/instance-identity/{document,signature,rsa2048}`), asking for an IMDSv2
//!    session token first as the AWS SDK does, and sends them as [`AttestationData`]:
//!    `{"document": ..., "signature": ..., "rsa2048": ...}`, encoded as Go encodes it.
//! 2. The server ([`AwsIidVerifier`]) verifies the PKCS#7 signature when there is one
//!    (against the region's AWS RSA-2048 certificate; its content must be the document),
//!    else the RSA-1024 PKCS#1 v1.5 signature of the document (the region's RSA-1024
//!    certificate, or AWS's default one). It then asks EC2 (`DescribeInstances`, see [`api`])
//!    about the document's instance in its region, pending or running: unless
//!    `skip_block_device` is set or the account is in `account_ids_for_local_validation`, the
//!    root EBS volume must have been attached within 60 seconds of network interface 0 (a
//!    root volume swapped in later is refused). The agent is attested at once as
//!    `spiffe://<td>/spire/agent` + the agent path template (default
//!    `/aws_iid/<account>/<region>/<instance-id>`), with the selectors `az:`, `image:id:`,
//!    `instance:id:` and `region:` from the document, `tag:<key>:<value>`, `sg:id:` and
//!    `sg:name:` from the instance, and `iamrole:<role ARN>` for each role of its instance
//!    profile (IAM `GetInstanceProfile`; not with `disable_instance_profile_selectors`). The
//!    agent may not attest again: a second attestation of the same agent ID is refused until
//!    the agent is evicted (trust on first use; the store enforces it).
//!
//! AWS's certificates are compiled in (`aws_iid/rsa2048.pem`, `aws_iid/rsa1024.pem`, as AWS
//! publishes them); the configuration adds or replaces certificates per region.
//!
//! What ward does differently: no `.Tags` in agent path templates, no `assume_role`, no
//! Organizations or EKS checks (refused in the configuration); credentials only from the
//! configuration or the environment (see [`api`]). As in SPIRE, DescribeInstances and the
//! root volume check come before the server's trust-on-first-use check, and the IAM calls
//! after it (in [`ServerNodeAttestor::complete`]). The document must be verified by its
//! PKCS#7 content check, which SPIRE v1.15.0 added (v1.13.3 does not compare them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer};
use ward_core::TrustDomain;
use x509_parser::prelude::{FromDer, X509Certificate};

pub use self::api::AwsApiSettings;
use self::api::{AwsApi, Instance};
use super::field_template::{FieldTemplate, agent_id};
use super::x509pop::go_json_error;
use super::{
    AttestedAgent, NodeAttestError, NodeAttestor, Refusal, RefusalCode, ServerNodeAttestor,
    Verification,
};

pub mod api;
mod document_signature;

pub use document_signature::ber_to_der;
#[cfg(test)]
use document_signature::{OID_MESSAGE_DIGEST, OID_SHA256, OID_SIGNED_DATA};
use document_signature::{verify_pkcs7, verify_rsa1024};

/// The attestation type name.
pub const NAME: &str = "aws_iid";

/// Where the agent reads instance metadata unless `ec2_metadata_endpoint` says otherwise (the
/// AWS SDK's IPv4 endpoint).
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://169.254.169.254";

/// The agent path template SPIRE uses by default.
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str =
    "/{{ .PluginName}}/{{ .AccountID }}/{{ .Region }}/{{ .InstanceID }}";

/// AWS's partitions, the values SPIRE's `partition` takes.
pub const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

/// The IMDS paths the agent reads, below `/latest/dynamic/`.
const DOCUMENT_PATH: &str = "instance-identity/document";
const SIGNATURE_PATH: &str = "instance-identity/signature";
const RSA2048_PATH: &str = "instance-identity/rsa2048";

/// The session token's lifetime the AWS SDK asks for (5 minutes), and its headers.
const TOKEN_TTL_SECONDS: &str = "300";
const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// How long one IMDS operation may take (the AWS SDK's default).
const IMDS_TIMEOUT: Duration = Duration::from_secs(5);

/// The attestation payload (SPIRE's `IIDAttestationData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AttestationData {
    /// The instance identity document, JSON as IMDS serves it.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub document: String,
    /// Base64 RSA-1024 PKCS#1 v1.5 (SHA-256) signature of the document.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub signature: String,
    /// Base64 PKCS#7 SignedData holding the document, signed with RSA-2048, without PEM armour.
    #[serde(default, rename = "rsa2048", deserialize_with = "null_as_empty")]
    pub signature_rsa2048: String,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl AttestationData {
    /// The payload of a document and its two signatures.
    pub fn new(document: &str, signature: &str, signature_rsa2048: &str) -> Self {
        Self {
            document: document.to_owned(),
            signature: signature.to_owned(),
            signature_rsa2048: signature_rsa2048.to_owned(),
        }
    }

    /// The payload as spire-agent sends it: Go's `json.Marshal` of the struct (members in
    /// declaration order, `<`, `>`, `&`, U+2028 and U+2029 escaped).
    pub fn to_go_json(&self) -> Vec<u8> {
        let mut out = String::from("{\"document\":");
        ward_core::go_json::write_string(&self.document, &mut out);
        out.push_str(",\"signature\":");
        ward_core::go_json::write_string(&self.signature, &mut out);
        out.push_str(",\"rsa2048\":");
        ward_core::go_json::write_string(&self.signature_rsa2048, &mut out);
        out.push('}');
        out.into_bytes()
    }
}

/// The fields of the instance identity document ward reads (the AWS SDK's
/// `InstanceIdentityDocument`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceIdentityDocument {
    /// The AWS account.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub account_id: String,
    /// The region.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub region: String,
    /// The instance ID.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub instance_id: String,
    /// The availability zone.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub availability_zone: String,
    /// The AMI.
    #[serde(default, rename = "imageId", deserialize_with = "null_as_empty")]
    pub image_id: String,
}

// ---------------------------------------------------------------------------------------------
// Agent side

/// The agent's `aws_iid` settings (SPIRE's agent `plugin_data`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsIidAgentConfig {
    /// `ec2_metadata_endpoint`: the IMDS base URL; only its scheme, host and port count (the
    /// AWS SDK replaces the path). `None`: [`DEFAULT_METADATA_ENDPOINT`].
    pub ec2_metadata_endpoint: Option<String>,
}

/// Where IMDS is: an `http` host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host[:port]` as the `Host` header names it.
    authority: String,
    /// Where to connect.
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text)
            .map_err(|e| format!("invalid ec2_metadata_endpoint {text:?}: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "invalid ec2_metadata_endpoint {text:?}: ward reads instance metadata over http \
                 only"
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("invalid ec2_metadata_endpoint {text:?}: no host"))?;
        let port = url.port().unwrap_or(80);
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Self { authority, host, port })
    }
}

/// The agent side: reads the document and its signatures from IMDS for each attestation.
#[derive(Debug)]
pub struct AwsIidAttestor {
    endpoint: Endpoint,
}

fn config_error(reason: impl Into<String>) -> NodeAttestError {
    NodeAttestError::Config { attestor: NAME, reason: reason.into() }
}

impl AwsIidAttestor {
    /// An attestor reading from the configured endpoint.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] for an endpoint that is not an `http` URL with a host.
    pub fn new(config: AwsIidAgentConfig) -> Result<Self, NodeAttestError> {
        let text = config.ec2_metadata_endpoint.as_deref().unwrap_or(DEFAULT_METADATA_ENDPOINT);
        let endpoint = Endpoint::parse(text).map_err(config_error)?;
        Ok(Self { endpoint })
    }

    /// The document and signatures IMDS serves now.
    ///
    /// # Errors
    /// [`NodeAttestError::Evidence`] naming the URL that failed.
    pub fn fetch(&self) -> Result<AttestationData, NodeAttestError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| config_error(format!("starting an I/O runtime: {e}")))?;
        runtime.block_on(self.fetch_async())
    }

    async fn fetch_async(&self) -> Result<AttestationData, NodeAttestError> {
        let token = self.session_token().await?;
        let document = self.dynamic_data(DOCUMENT_PATH, token.as_deref()).await?;
        let signature = self.dynamic_data(SIGNATURE_PATH, token.as_deref()).await?;
        let signature_rsa2048 = self.dynamic_data(RSA2048_PATH, token.as_deref()).await?;
        Ok(AttestationData { document, signature, signature_rsa2048 })
    }

    fn evidence_error(&self, path: &str, why: String) -> NodeAttestError {
        NodeAttestError::Evidence {
            attestor: NAME,
            path: format!("http://{}{path}", self.endpoint.authority).into(),
            source: std::io::Error::other(why),
        }
    }

    /// An IMDSv2 session token, or `None` to read without one (IMDSv1), as the AWS SDK
    /// decides: a 400 answer is an error, any other failure falls back to no token.
    async fn session_token(&self) -> Result<Option<String>, NodeAttestError> {
        let path = "/latest/api/token";
        match self.request(http::Method::PUT, path, &[(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS)]).await
        {
            Ok((status, headers, body)) if status.is_success() => {
                let ttl_ok = headers
                    .get(TOKEN_TTL_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.parse::<i64>().is_ok());
                Ok(ttl_ok.then(|| String::from_utf8_lossy(&body).into_owned()))
            }
            Ok((status, _, _)) if status == http::StatusCode::BAD_REQUEST => {
                Err(self
                    .evidence_error(path, "request to EC2 IMDS failed: 400 Bad Request".to_owned()))
            }
            Ok(_) | Err(_) => Ok(None),
        }
    }

    async fn dynamic_data(
        &self,
        item: &str,
        token: Option<&str>,
    ) -> Result<String, NodeAttestError> {
        let path = format!("/latest/dynamic/{item}");
        let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN_HEADER, t)).into_iter().collect();
        let (status, _, body) = self
            .request(http::Method::GET, &path, &headers)
            .await
            .map_err(|e| self.evidence_error(&path, e))?;
        if !status.is_success() {
            return Err(self.evidence_error(&path, format!("request to EC2 IMDS failed: {status}")));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// One HTTP/1.1 request on a new connection, within [`IMDS_TIMEOUT`].
    async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
        let exchange = async {
            let stream =
                tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                    .await
                    .map_err(|e| e.to_string())?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(connection);
            let mut request = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &self.endpoint.authority);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            driver.abort();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(IMDS_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {IMDS_TIMEOUT:?}"))?
    }
}

impl NodeAttestor for AwsIidAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        Ok(self.fetch()?.to_go_json())
    }

    fn answer(&self, _challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        Err(NodeAttestError::UnexpectedChallenge)
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// Which of the document's signatures a certificate verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// The RSA-1024 PKCS#1 v1.5 signature (`signature`).
    Rsa1024,
    /// The RSA-2048 PKCS#7 signature (`rsa2048`).
    Rsa2048,
}

/// What the server needs of one AWS certificate: its issuer and serial (a PKCS#7 signer
/// names its certificate by them) and its RSA public key.
#[derive(Debug, Clone)]
struct SigningCert {
    raw_issuer: Vec<u8>,
    serial: Vec<u8>,
    public_key: Vec<u8>,
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// Big-endian bytes without leading zeros (two serials are equal as numbers).
fn unsigned(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

impl SigningCert {
    fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("x509: malformed certificate: {e}"))?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm.to_id_string() != OID_RSA {
            return Err("the certificate's key is not RSA".into());
        }
        Ok(Self {
            raw_issuer: cert.tbs_certificate.issuer.as_raw().to_vec(),
            serial: unsigned(cert.raw_serial()).to_vec(),
            public_key: spki.subject_public_key.data.to_vec(),
        })
    }
}

/// The certificates of a file laid out as `aws_iid/rsa2048.pem`: `region: <name>` lines, each
/// followed by its PEM certificate (`*`: every region not listed).
fn compiled_in(text: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let mut region: Option<&str> = None;
    let mut block = String::new();
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("region: ") {
            region = Some(r.trim());
            block.clear();
            continue;
        }
        if region.is_some() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END CERTIFICATE-----")
            && let Some(r) = region.take()
        {
            let pem = pem::parse(&block).map_err(|e| format!("region {r}: {e}"))?;
            out.insert(r.to_owned(), pem.into_contents());
        }
    }
    Ok(out)
}

/// The server's `aws_iid` settings, files already read.
#[derive(Debug, Clone)]
pub struct AwsIidServerConfig {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// `agent_path_template`; `None` is [`DEFAULT_AGENT_PATH_TEMPLATE`].
    pub agent_path_template: Option<String>,
    /// Certificates (DER) by region and key type that add to or replace AWS's.
    pub certificates: Vec<(KeyType, String, Vec<u8>)>,
    /// Credentials and endpoints of the AWS API calls.
    pub api: AwsApiSettings,
    /// `skip_block_device`: no root volume attach-time check.
    pub skip_block_device: bool,
    /// `disable_instance_profile_selectors`: no IAM call, no `iamrole:` selectors.
    pub disable_instance_profile_selectors: bool,
    /// `account_ids_for_local_validation`: accounts whose instances skip the root volume check.
    pub account_ids_for_local_validation: Vec<String>,
}

/// The server side: verifies documents against AWS's certificates and attests once per
/// instance.
#[derive(Debug)]
pub struct AwsIidVerifier {
    trust_domain: TrustDomain,
    template: FieldTemplate,
    rsa1024: BTreeMap<String, SigningCert>,
    rsa2048: BTreeMap<String, SigningCert>,
    api: AwsApi,
    /// By agent ID, what `begin` found for `complete`.
    pending: std::sync::Mutex<BTreeMap<String, PendingProfiles>>,
    skip_block_device: bool,
    disable_instance_profile_selectors: bool,
    local_accounts: BTreeSet<String>,
}

/// The template actions ward renders for `aws_iid` (SPIRE's `agentPathTemplateData` less
/// `.Tags`, which needs the EC2 API).
const TEMPLATE_FIELDS: [&str; 5] =
    ["PluginName", "AccountID", "Region", "InstanceID", "TrustDomain"];

impl AwsIidVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] when a certificate is not an RSA certificate or the
    /// template is refused.
    pub fn new(config: AwsIidServerConfig) -> Result<Self, NodeAttestError> {
        let template = FieldTemplate::parse(
            config.agent_path_template.as_deref().unwrap_or(DEFAULT_AGENT_PATH_TEMPLATE),
            &TEMPLATE_FIELDS,
        )
        .map_err(config_error)?;
        let mut maps = [
            (KeyType::Rsa1024, include_str!("aws_iid/rsa1024.pem"), BTreeMap::new()),
            (KeyType::Rsa2048, include_str!("aws_iid/rsa2048.pem"), BTreeMap::new()),
        ];
        for (kind, text, map) in &mut maps {
            for (region, der) in compiled_in(text).map_err(config_error)? {
                let cert = SigningCert::parse(&der)
                    .map_err(|e| config_error(format!("AWS certificate of {region}: {e}")))?;
                map.insert(region, cert);
            }
            for (k, region, der) in &config.certificates {
                if k == kind {
                    let cert = SigningCert::parse(der).map_err(|e| {
                        config_error(format!("certificate for region {region}: {e}"))
                    })?;
                    map.insert(region.clone(), cert);
                }
            }
        }
        let [(_, _, rsa1024), (_, _, rsa2048)] = maps;
        let api = AwsApi::new(config.api)
            .map_err(|e| config_error(format!("starting the AWS API client: {e}")))?;
        Ok(Self {
            trust_domain: config.trust_domain,
            template,
            rsa1024,
            rsa2048,
            api,
            pending: std::sync::Mutex::new(BTreeMap::new()),
            skip_block_device: config.skip_block_device,
            disable_instance_profile_selectors: config.disable_instance_profile_selectors,
            local_accounts: config.account_ids_for_local_validation.into_iter().collect(),
        })
    }

    /// Whether AWS credentials were found (without, every attestation is refused).
    pub fn has_credentials(&self) -> bool {
        self.api.has_credentials()
    }

    /// SPIRE's `getAWSCACertificate`: the region's RSA-1024 certificate or the default one;
    /// the region's RSA-2048 certificate or an error.
    fn certificate(&self, region: &str, kind: KeyType) -> Result<&SigningCert, String> {
        match kind {
            KeyType::Rsa1024 => self
                .rsa1024
                .get(region)
                .or_else(|| self.rsa1024.get("*"))
                .ok_or_else(|| format!("unsupported region {region:?}")),
            KeyType::Rsa2048 => {
                self.rsa2048.get(region).ok_or_else(|| format!("unsupported region {region:?}"))
            }
        }
    }

    /// SPIRE's `unmarshalAndValidateIdentityDocument`, with v1.15.0's check that the PKCS#7
    /// content is the document.
    fn verified_document(&self, payload: &[u8]) -> Result<InstanceIdentityDocument, Refusal> {
        use RefusalCode::{Internal, InvalidArgument};
        let data: AttestationData = serde_json::from_slice(payload).map_err(|e| {
            refuse(
                InvalidArgument,
                format!("failed to unmarshal the attestation data: {}", go_json_error(&e)),
            )
        })?;
        let doc: InstanceIdentityDocument = serde_json::from_str(&data.document).map_err(|e| {
            refuse(InvalidArgument, format!("failed to unmarshal the IID: {}", go_json_error(&e)))
        })?;
        let (signature, kind) = if data.signature_rsa2048.is_empty() {
            (&data.signature, KeyType::Rsa1024)
        } else {
            (&data.signature_rsa2048, KeyType::Rsa2048)
        };
        if signature.is_empty() {
            return Err(refuse(
                InvalidArgument,
                "instance identity cryptographic signature is required",
            ));
        }
        let cert = self.certificate(&doc.region, kind).map_err(|e| {
            refuse(
                Internal,
                format!("failed to load the AWS CA certificate for region {:?}: {e}", doc.region),
            )
        })?;
        match kind {
            // SPIRE wraps verifyRSASignature's status error in another status, so its text
            // reads as the inner status's string.
            KeyType::Rsa1024 => verify_rsa1024(cert, &data.document, signature).map_err(|e| {
                refuse(InvalidArgument, format!("rpc error: code = InvalidArgument desc = {e}"))
            })?,
            KeyType::Rsa2048 => {
                let content = verify_pkcs7(cert, signature)?;
                if content != data.document.as_bytes() {
                    return Err(refuse(
                        InvalidArgument,
                        "instance identity document does not match the verified PKCS7 content",
                    ));
                }
            }
        }
        Ok(doc)
    }
}

fn refuse(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

/// Go's `base64.StdEncoding` as SPIRE decodes with it: padding required, `\r` and `\n`
/// skipped, trailing bits not checked. Errors in Go's words, at the offset in `text`.
fn go_base64(text: &str) -> Result<Vec<u8>, String> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    );
    let kept: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b != b'\r' && *b != b'\n')
        .map(|(i, _)| i)
        .collect();
    let stripped: Vec<u8> = kept.iter().filter_map(|&i| text.as_bytes().get(i).copied()).collect();
    ENGINE.decode(&stripped).map_err(|e| {
        let at = match e {
            base64::DecodeError::InvalidByte(at, _)
            | base64::DecodeError::InvalidLastSymbol(at, _) => at,
            base64::DecodeError::InvalidLength(at) => at,
            base64::DecodeError::InvalidPadding => stripped.len(),
        };
        let at = kept.get(at).copied().unwrap_or(text.len());
        format!("illegal base64 data at input byte {at}")
    })
}

impl ServerNodeAttestor for AwsIidVerifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn begin(&self, payload: &[u8], _now: i64) -> Result<Verification, Refusal> {
        use RefusalCode::Internal;
        let doc = self.verified_document(payload)?;
        let reservations = self
            .api
            .describe_instances(&doc.region, &doc.instance_id)
            .map_err(|e| refuse(Internal, format!("failed to describe instance: {e}")))?;
        if !self.skip_block_device && !self.local_accounts.contains(&doc.account_id) {
            let instance = reservations
                .first()
                .ok_or_else(|| {
                    refuse(
                        Internal,
                        "failed to query AWS via describe-instances: returned no reservations",
                    )
                })?
                .first()
                .ok_or_else(|| {
                    refuse(
                        Internal,
                        "failed to query AWS via describe-instances: returned no instances",
                    )
                })?;
            check_block_device(instance)
                .map_err(|e| refuse(Internal, format!("failed aws ec2 attestation: {e}")))?;
        }
        // SPIRE leaves the template's TrustDomain unset: it renders empty.
        let values = BTreeMap::from([
            ("PluginName", NAME.to_owned()),
            ("AccountID", doc.account_id.clone()),
            ("Region", doc.region.clone()),
            ("InstanceID", doc.instance_id.clone()),
        ]);
        let path = self.template.render(&values);
        let agent_id = agent_id(&self.trust_domain, &path).map_err(|e| {
            refuse(RefusalCode::Internal, format!("failed to create spiffe ID: {e}"))
        })?;
        let mut selector_values: BTreeSet<String> = [
            format!("image:id:{}", doc.image_id),
            format!("instance:id:{}", doc.instance_id),
            format!("region:{}", doc.region),
            format!("az:{}", doc.availability_zone),
        ]
        .into_iter()
        .collect();
        for instance in reservations.iter().flatten() {
            add_instance_selectors(instance, &mut selector_values);
        }
        let profiles: Vec<String> = if self.disable_instance_profile_selectors {
            Vec::new()
        } else {
            reservations.iter().flatten().filter_map(|i| i.instance_profile_arn.clone()).collect()
        };
        self.pending_profiles()
            .insert(agent_id.to_string(), PendingProfiles { region: doc.region.clone(), profiles });
        Ok(Verification::Attested(AttestedAgent {
            agent_id,
            selector_values: selector_values.into_iter().collect(),
            can_reattest: false,
        }))
    }

    fn complete(&self, mut attested: AttestedAgent, _now: i64) -> Result<AttestedAgent, Refusal> {
        let key = attested.agent_id.to_string();
        let roles = self.instance_profile_selectors(&key)?;
        // Entries of attestations that did not get here (refused as attested before, or by
        // IAM) stay until the same agent ID begins again: one per instance at most.
        self.pending_profiles().remove(&key);
        let mut all: BTreeSet<String> = attested.selector_values.into_iter().collect();
        all.extend(roles);
        attested.selector_values = all.into_iter().collect();
        Ok(attested)
    }
}

/// SPIRE's `resolveSelectors` for one instance, before its IAM part: `tag:`, `sg:id:` and
/// `sg:name:`.
fn add_instance_selectors(instance: &Instance, out: &mut BTreeSet<String>) {
    let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
    for tag in &instance.tags {
        out.insert(format!("tag:{}:{}", or_empty(&tag.key), or_empty(&tag.value)));
    }
    for sg in &instance.security_groups {
        out.insert(format!("sg:id:{}", or_empty(&sg.group_id)));
        out.insert(format!("sg:name:{}", or_empty(&sg.group_name)));
    }
}

/// What `begin` leaves for `complete`: the document's region and the instance profile ARNs
/// DescribeInstances returned (none with `disable_instance_profile_selectors`).
#[derive(Debug, Clone)]
struct PendingProfiles {
    region: String,
    profiles: Vec<String>,
}

impl AwsIidVerifier {
    fn pending_profiles(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PendingProfiles>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `iamrole:` part of SPIRE's `resolveSelectors`, which SPIRE runs after its
    /// trust-on-first-use check: IAM `GetInstanceProfile` of each instance profile
    /// DescribeInstances named for this agent in `begin`.
    fn instance_profile_selectors(&self, agent_id: &str) -> Result<Vec<String>, Refusal> {
        let Some(pending) = self.pending_profiles().get(agent_id).cloned() else {
            // Only when a concurrent attestation of the same agent completed first (and the
            // store then refuses this one as attested before).
            return Err(refuse(
                RefusalCode::Internal,
                "failed to get intance profile: the instance's DescribeInstances answer was \
                 used by a concurrent attestation of the same agent; attest again",
            ));
        };
        let mut out = Vec::new();
        for arn in &pending.profiles {
            let name = instance_profile_name(arn).map_err(|e| refuse(RefusalCode::Internal, e))?;
            let roles = self.api.get_instance_profile(&pending.region, &name).map_err(|e| {
                refuse(RefusalCode::Internal, format!("failed to get intance profile: {e}"))
            })?;
            out.extend(roles.into_iter().flatten().map(|role| format!("iamrole:{role}")));
        }
        Ok(out)
    }
}

/// How far apart (seconds) the root volume and the primary network interface may have been
/// attached.
const MAX_SECONDS_BETWEEN_DEVICE_ATTACHMENTS: i64 = 60;

/// SPIRE's `checkBlockDevice`: the root EBS volume was attached with the primary network
/// interface (within a minute), so it was not swapped in later. Where SPIRE dereferences a
/// member AWS left out (and would fail), ward refuses with a sentence naming it.
fn check_block_device(instance: &Instance) -> Result<(), String> {
    let iface = instance
        .network_interfaces
        .iter()
        .flatten()
        .find(|a| a.device_index == Some(0))
        .ok_or("the EC2 instance network interface with device index 0 is inaccessible")?;
    if instance.root_device_type.as_deref() == Some("instance-store") {
        return Ok(());
    }
    let root_name = instance.root_device_name.clone().unwrap_or_default();
    let root = instance
        .block_devices
        .iter()
        .find(|b| b.device_name.as_deref() == Some(root_name.as_str()))
        .ok_or_else(|| {
            format!("failed to locate the root device block mapping with name {root_name:?}")
        })?;
    let (Some(iface_time), Some(root_time)) = (iface.attach_time, root.attach_time) else {
        return Err(
            "the attach time of the root device's EBS volume or of network interface 0 is \
             missing from DescribeInstances"
                .to_owned(),
        );
    };
    let disparity = iface_time.abs_diff(root_time);
    if disparity > MAX_SECONDS_BETWEEN_DEVICE_ATTACHMENTS.unsigned_abs() {
        return Err(format!(
            "failed checking the disparity device attach times, root BlockDeviceMapping and \
             NetworkInterface[0] attach times differ by {disparity} seconds"
        ));
    }
    Ok(())
}

/// SPIRE's `instanceProfileNameFromArn`: the last path element after `instance-profile/`.
fn instance_profile_name(arn: &str) -> Result<String, String> {
    // Go's arn.Parse.
    let Some(rest) = arn.strip_prefix("arn:") else {
        return Err("failed to parse arn: invalid prefix".to_owned());
    };
    let sections: Vec<&str> = rest.splitn(5, ':').collect();
    let [_, _, _, _, resource] = sections[..] else {
        return Err("failed to parse arn: not enough sections".to_owned());
    };
    static PROFILE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = PROFILE.get_or_init(|| regex::Regex::new("instance-profile[/:](.+)").ok());
    let matched = re
        .as_ref()
        .and_then(|re| re.captures(resource))
        .and_then(|c| c.get(1))
        .ok_or("arn is not for an instance profile")?;
    Ok(matched.as_str().rsplit('/').next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests;
