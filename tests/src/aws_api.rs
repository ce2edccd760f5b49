//! A fake AWS EC2 + IAM Query API on 127.0.0.1 for the `aws_iid` suites: it answers
//! `DescribeInstances` and `GetInstanceProfile` with the XML AWS returns (tags, security
//! groups, instance profile, block devices, network interfaces; profile roles), and AWS's error
//! documents for unknown instances and profiles. It checks every request's SigV4 signature
//! against the test's secret key with its own implementation (not the server's signer), answers
//! a bad one with AWS's `SignatureDoesNotMatch`, and records each request for comparison.
//!
//! `aws-sdk-probe` (`tests/interop/aws-sdk/`) makes the same calls with the AWS SDK for Go v2
//! at the versions SPIRE v1.13.3 pins, configured as spire-server configures it, so the suite
//! can compare its requests and error texts with ward-server's on the same fake. It is built
//! once into a cache outside the repository by that directory's `build.sh`;
//! `$WARD_AWS_SDK_PROBE_BIN` names a built one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::{digest, hmac};

use crate::command::{interop_tool, run};

/// The variable naming a built `aws-sdk-probe`.
pub const AWS_SDK_PROBE_BIN_ENV: &str = "WARD_AWS_SDK_PROBE_BIN";
/// How long building the probe may take (the EC2 client is a large Go package).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long one probe call may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The probe binary: `$WARD_AWS_SDK_PROBE_BIN`, or what `build.sh` builds. Needs Go (and the
/// module proxy, or the modules in Go's cache) the first time.
///
/// # Errors
/// When the build fails.
pub fn aws_sdk_probe() -> anyhow::Result<PathBuf> {
    interop_tool(AWS_SDK_PROBE_BIN_ENV, "interop/aws-sdk/build.sh", BUILD_TIMEOUT)
}

/// Runs `probe operation region id` against `api` with the test's keys: its line (`ok`, or
/// `error: ` and the SDK's error text).
///
/// # Errors
/// When the probe does not run or fails.
pub fn run_probe(
    probe: &Path,
    api: &FakeAwsApi,
    operation: &str,
    region: &str,
    id: &str,
) -> anyhow::Result<String> {
    let home = tempfile::tempdir()?;
    let mut cmd = Command::new(probe);
    cmd.args([operation, region, id])
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_ENDPOINT_URL", api.url())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let out = run(&mut cmd, PROBE_TIMEOUT)?.success()?;
    Ok(out.stdout.trim().to_owned())
}

/// The access key ID the fake accepts.
pub const ACCESS_KEY_ID: &str = "AKIDWARDTEST00000001";
/// Its secret.
pub const SECRET_ACCESS_KEY: &str = "wardtest/secret+key0000000000000000000000";

/// An instance the fake EC2 describes.
#[derive(Debug, Clone, Default)]
pub struct FakeInstance {
    /// `(key, value)` tags.
    pub tags: Vec<(String, String)>,
    /// `(group ID, group name)` security groups.
    pub security_groups: Vec<(String, String)>,
    /// The instance profile ARN.
    pub instance_profile_arn: Option<String>,
    /// Seconds between network interface 0's attachment and the root volume's.
    pub root_attached_after: i64,
}

impl FakeInstance {
    /// The instance's `item` XML, as `DescribeInstances` returns it.
    fn xml(&self, instance_id: &str) -> String {
        let nic_at = 1_796_040_000i64;
        let at = |unix: i64| {
            time::OffsetDateTime::from_unix_timestamp(unix)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_default()
        };
        let mut out = format!(
            "<instanceId>{instance_id}</instanceId><imageId>ami-0123456789abcdef0</imageId>\
             <instanceState><code>16</code><name>running</name></instanceState>\
             <instanceType>t3.micro</instanceType><rootDeviceType>ebs</rootDeviceType>\
             <rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping><item>\
             <deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-0123</volumeId>\
             <status>attached</status><attachTime>{}</attachTime>\
             <deleteOnTermination>true</deleteOnTermination></ebs></item></blockDeviceMapping>\
             <networkInterfaceSet><item><networkInterfaceId>eni-0123</networkInterfaceId>\
             <attachment><attachmentId>eni-attach-0123</attachmentId><deviceIndex>0</deviceIndex>\
             <status>attached</status><attachTime>{}</attachTime>\
             <deleteOnTermination>true</deleteOnTermination></attachment></item>\
             </networkInterfaceSet><groupSet>",
            at(nic_at + self.root_attached_after),
            at(nic_at)
        );
        for (id, name) in &self.security_groups {
            out.push_str(&format!(
                "<item><groupId>{}</groupId><groupName>{}</groupName></item>",
                escape(id),
                escape(name)
            ));
        }
        out.push_str("</groupSet>");
        if let Some(arn) = &self.instance_profile_arn {
            out.push_str(&format!(
                "<iamInstanceProfile><arn>{}</arn><id>AIPA0123</id></iamInstanceProfile>",
                escape(arn)
            ));
        }
        out.push_str("<tagSet>");
        for (k, v) in &self.tags {
            out.push_str(&format!(
                "<item><key>{}</key><value>{}</value></item>",
                escape(k),
                escape(v)
            ));
        }
        out.push_str("</tagSet>");
        out
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsApiRequest {
    /// `POST`.
    pub method: String,
    /// The request target.
    pub target: String,
    /// The signing scope's service (`ec2`, `iam`) and region.
    pub service: String,
    /// See `service`.
    pub region: String,
    /// The form parameters (`Action`, `Version`, ...).
    pub params: BTreeMap<String, String>,
    /// The raw body.
    pub body: String,
    /// `Content-Type`.
    pub content_type: String,
    /// The signed header names, as the `Authorization` header lists them.
    pub signed_headers: Vec<String>,
    /// Whether the signature is right for the test's secret key.
    pub signature_ok: bool,
    /// The request ID the answer carried.
    pub request_id: String,
}

/// What the fake serves.
#[derive(Debug, Clone, Default)]
struct State {
    instances: BTreeMap<String, FakeInstance>,
    profiles: BTreeMap<String, Vec<String>>,
    requests: Vec<AwsApiRequest>,
}

/// The fake EC2 + IAM endpoint. Stops when dropped.
pub struct FakeAwsApi {
    /// Its port.
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAwsApi {
    /// Starts an endpoint serving no instance yet.
    ///
    /// # Errors
    /// When it cannot listen.
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, halt) = (state.clone(), stop.clone());
        let ids = Arc::new(AtomicU64::new(1));
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &st, &ids);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Self { port, state, stop, thread: Some(thread) })
    }

    /// Its URL, as `AWS_ENDPOINT_URL` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Describes `instance_id` as `instance` from now on.
    pub fn add_instance(&self, instance_id: &str, instance: FakeInstance) {
        self.state().instances.insert(instance_id.to_owned(), instance);
    }

    /// Serves the instance profile `name` with roles of `role_arns`.
    pub fn add_profile(&self, name: &str, role_arns: &[&str]) {
        self.state()
            .profiles
            .insert(name.to_owned(), role_arns.iter().map(|r| (*r).to_owned()).collect());
    }

    /// The requests answered so far, and forgets them.
    pub fn take_requests(&self) -> Vec<AwsApiRequest> {
        std::mem::take(&mut self.state().requests)
    }
}

impl Drop for FakeAwsApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request as read off the wire.
struct Raw {
    method: String,
    target: String,
    /// Lower-case names, in order, values trimmed.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Answers the one request of a connection (the answer closes it).
fn serve(stream: TcpStream, state: &Mutex<State>, ids: &AtomicU64) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let target = words.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let raw = Raw { method, target, headers, body: Vec::new() };
    let length: usize = raw.header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let raw = Raw { body, ..raw };
    let request_id = format!("fake-{:08}", ids.fetch_add(1, Ordering::Relaxed));
    let (status, xml) = answer(&raw, state, &request_id);
    write!(
        writer,
        "HTTP/1.1 {status}\r\nContent-Type: text/xml;charset=UTF-8\r\nx-amzn-RequestId: \
         {request_id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    )?;
    writer.flush()
}

/// The signing scope and verdict of a request's `Authorization` header.
struct Signature {
    service: String,
    region: String,
    signed_headers: Vec<String>,
    ok: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes()).as_ref().to_vec()
}

/// SigV4 (`AWS4-HMAC-SHA256`, headers form) of `raw`, recomputed with the test's secret.
fn check_signature(raw: &Raw) -> Option<Signature> {
    let auth = raw.header("authorization")?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut fields = BTreeMap::new();
    for part in rest.split(", ") {
        let (k, v) = part.split_once('=')?;
        fields.insert(k, v);
    }
    let credential: Vec<&str> = fields.get("Credential")?.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = credential[..] else { return None };
    let signed_headers: Vec<String> =
        fields.get("SignedHeaders")?.split(';').map(str::to_owned).collect();
    let amz_date = raw.header("x-amz-date")?;
    let mut canonical_headers = String::new();
    for name in &signed_headers {
        let values: Vec<String> = raw
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let (path, query) = raw.target.split_once('?').unwrap_or((&raw.target, ""));
    let canonical_request = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{}\n{}",
        raw.method,
        signed_headers.join(";"),
        sha256_hex(&raw.body)
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{SECRET_ACCESS_KEY}").as_bytes(), date);
    let k_region = hmac_sha256(&k_date, region);
    let k_service = hmac_sha256(&k_region, service);
    let k_signing = hmac_sha256(&k_service, "aws4_request");
    let expected = hex(&hmac_sha256(&k_signing, &to_sign));
    let must_sign = ["host", "x-amz-date"].iter().all(|h| signed_headers.iter().any(|s| s == h));
    Some(Signature {
        service: service.to_owned(),
        region: region.to_owned(),
        signed_headers,
        ok: key_id == ACCESS_KEY_ID
            && must_sign
            && amz_date.starts_with(date)
            && fields.get("Signature") == Some(&expected.as_str()),
    })
}

fn answer(raw: &Raw, state: &Mutex<State>, request_id: &str) -> (&'static str, String) {
    let body = String::from_utf8_lossy(&raw.body).into_owned();
    let params: BTreeMap<String, String> = body
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect();
    let signature = check_signature(raw);
    let mut state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    state.requests.push(AwsApiRequest {
        method: raw.method.clone(),
        target: raw.target.clone(),
        service: signature.as_ref().map(|s| s.service.clone()).unwrap_or_default(),
        region: signature.as_ref().map(|s| s.region.clone()).unwrap_or_default(),
        params: params.clone(),
        body,
        content_type: raw.header("content-type").unwrap_or_default().to_owned(),
        signed_headers: signature.as_ref().map(|s| s.signed_headers.clone()).unwrap_or_default(),
        signature_ok: signature.as_ref().is_some_and(|s| s.ok),
        request_id: request_id.to_owned(),
    });
    let service = signature.as_ref().map(|s| s.service.as_str()).unwrap_or_default();
    let ec2_error = |code: &str, message: &str| {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}\
             </Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID>\
             </Response>",
            escape(message)
        )
    };
    let iam_error = |code: &str, message: &str| {
        format!(
            "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error><Type>Sender\
             </Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{request_id}\
             </RequestId></ErrorResponse>",
            escape(message)
        )
    };
    if !signature.as_ref().is_some_and(|s| s.ok) {
        let message = "The request signature we calculated does not match the signature you \
                       provided. Check your AWS Secret Access Key and signing method.";
        return match service {
            "iam" => ("403 Forbidden", iam_error("SignatureDoesNotMatch", message)),
            _ => ("401 Unauthorized", ec2_error("AuthFailure", message)),
        };
    }
    let param = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    match (service, param("Action")) {
        ("ec2", "DescribeInstances") => {
            let id = param("InstanceId.1");
            let filtered = param("Filter.1.Name") == "instance-state-name"
                && param("Filter.1.Value.1") == "pending"
                && param("Filter.1.Value.2") == "running";
            let Some(instance) = state.instances.get(id).filter(|_| filtered) else {
                return (
                    "400 Bad Request",
                    ec2_error(
                        "InvalidInstanceID.NotFound",
                        &format!("The instance ID '{id}' does not exist"),
                    ),
                );
            };
            (
                "200 OK",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse \
                     xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>{request_id}\
                     </requestId><reservationSet><item><reservationId>r-0123</reservationId>\
                     <ownerId>123456789012</ownerId><groupSet/><instancesSet><item>{}</item>\
                     </instancesSet></item></reservationSet></DescribeInstancesResponse>",
                    instance.xml(id)
                ),
            )
        }
        ("iam", "GetInstanceProfile") => {
            let name = param("InstanceProfileName");
            let Some(roles) = state.profiles.get(name) else {
                return (
                    "404 Not Found",
                    iam_error("NoSuchEntity", &format!("Instance Profile {name} cannot be found.")),
                );
            };
            let members: String = roles
                .iter()
                .map(|arn| {
                    let role = arn.rsplit('/').next().unwrap_or_default();
                    format!(
                        "<member><Path>/</Path><RoleName>{}</RoleName><RoleId>AROA0123</RoleId>\
                         <Arn>{}</Arn><CreateDate>2026-01-01T00:00:00Z</CreateDate></member>",
                        escape(role),
                        escape(arn)
                    )
                })
                .collect();
            (
                "200 OK",
                format!(
                    "<GetInstanceProfileResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">\
                     <GetInstanceProfileResult><InstanceProfile><InstanceProfileId>AIPA0123\
                     </InstanceProfileId><Roles>{members}</Roles><InstanceProfileName>{}\
                     </InstanceProfileName><Path>/</Path></InstanceProfile>\
                     </GetInstanceProfileResult><ResponseMetadata><RequestId>{request_id}\
                     </RequestId></ResponseMetadata></GetInstanceProfileResponse>",
                    escape(name)
                ),
            )
        }
        (_, action) => (
            "400 Bad Request",
            ec2_error(
                "InvalidAction",
                &format!("The action {action} is not valid for this web service."),
            ),
        ),
    }
}

/// `application/x-www-form-urlencoded` decoding of one key or value.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hexpair = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hexpair.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
