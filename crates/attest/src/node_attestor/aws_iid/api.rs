//! The AWS API calls of the `aws_iid` server (SPIRE v1.13.3
//! `pkg/server/plugin/nodeattestor/awsiid/{iid,client,session}.go`): EC2 `DescribeInstances`
//! for the attesting instance and IAM `GetInstanceProfile` for its instance profile's roles,
//! as the AWS SDK for Go v2 sends them (Query protocol, form-encoded `POST /`, SigV4-signed)
//! and as it reports their failures (`operation error EC2: DescribeInstances, https response
//! error StatusCode: 400, RequestID: ..., api error <Code>: <Message>`).
//!
//! Credentials: `access_key_id` / `secret_access_key`, each defaulting to `AWS_ACCESS_KEY_ID`
//! / `AWS_SECRET_ACCESS_KEY` as SPIRE reads them; with both from the environment,
//! `AWS_SESSION_TOKEN` too (as the SDK's environment provider does). Without either, the
//! instance role's temporary credentials from the instance metadata service (IMDSv2 session
//! token, else IMDSv1; `AWS_EC2_METADATA_SERVICE_ENDPOINT`, default `http://169.254.169.254`;
//! not when `AWS_EC2_METADATA_DISABLED=true`), kept until five minutes before they expire, as
//! the last member of the SDK's default chain provides them. ward does not read shared
//! credential files, web identity tokens or container credentials.
//!
//! Endpoints: AWS's (`https://ec2.<region>.amazonaws.com`, `https://iam.amazonaws.com` signed
//! for `us-east-1`, and their `aws-cn` / `aws-us-gov` forms), or the SDK's overrides
//! `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL_IAM`, `AWS_ENDPOINT_URL` (unless
//! `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`); an overridden endpoint is signed for the
//! instance's region, as the SDK's endpoint rules do.

use std::sync::Mutex;
use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::node_attestor::http_get::{HttpGetter, HttpResponse};

/// The variables SPIRE and the AWS SDK read credentials from.
pub const ACCESS_KEY_ID_VAR: &str = "AWS_ACCESS_KEY_ID";
/// See [`ACCESS_KEY_ID_VAR`].
pub const SECRET_ACCESS_KEY_VAR: &str = "AWS_SECRET_ACCESS_KEY";
/// See [`ACCESS_KEY_ID_VAR`].
pub const SESSION_TOKEN_VAR: &str = "AWS_SESSION_TOKEN";

/// The variable naming the instance metadata service's base URL (the SDK's).
pub const METADATA_ENDPOINT_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// The variable that, set to `true`, keeps the SDK (and ward) away from the metadata service.
pub const METADATA_DISABLED_VAR: &str = "AWS_EC2_METADATA_DISABLED";
/// The instance metadata service's base URL unless [`METADATA_ENDPOINT_VAR`] names another.
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://169.254.169.254";
/// Instance-role credentials are asked for again this long before they expire (seconds).
const ROLE_REFRESH_MARGIN: i64 = 300;
/// The IMDSv2 session token's lifetime asked for, in seconds (the SDK's).
const METADATA_TOKEN_TTL: &str = "21600";
/// How long one request to the instance metadata service may take (ward's choice: off EC2
/// the address does not answer, and an attestation should not wait long for that).
const METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Static AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiCredentials {
    /// The access key ID.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// A session token (temporary credentials).
    pub session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where and as whom the server calls AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsApiSettings {
    /// Static credentials; `None`: the instance role's, from [`AwsApiSettings::instance_role`].
    pub credentials: Option<ApiCredentials>,
    /// The instance metadata service's base URL, when no static credentials are set and the
    /// service is not disabled; with neither, every call fails.
    pub instance_role: Option<String>,
    /// The EC2 endpoint URL replacing AWS's.
    pub ec2_endpoint: Option<String>,
    /// The IAM endpoint URL replacing AWS's.
    pub iam_endpoint: Option<String>,
}

impl AwsApiSettings {
    /// The settings of the configured keys (empty or `None`: unset) and of the environment as
    /// `getenv` reads it (SPIRE's `SessionConfig.Validate`, the SDK's endpoint variables).
    ///
    /// # Errors
    /// SPIRE's text when only one of the two keys is set.
    pub fn resolve(
        access_key_id: Option<&str>,
        secret_access_key: Option<&str>,
        getenv: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let env = |name: &str| getenv(name).filter(|v| !v.is_empty());
        let configured = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_owned);
        let (ak_conf, sk_conf) = (configured(access_key_id), configured(secret_access_key));
        let from_env = ak_conf.is_none() && sk_conf.is_none();
        let ak = ak_conf.or_else(|| env(ACCESS_KEY_ID_VAR));
        let sk = sk_conf.or_else(|| env(SECRET_ACCESS_KEY_VAR));
        let credentials = match (ak, sk) {
            (Some(_), None) => {
                return Err("configuration missing secret access key, but has access key id".into());
            }
            (None, Some(_)) => {
                return Err("configuration missing access key id, but has secret access key".into());
            }
            (None, None) => None,
            (Some(access_key_id), Some(secret)) => Some(ApiCredentials {
                access_key_id,
                secret_access_key: Zeroizing::new(secret),
                session_token: if from_env {
                    env(SESSION_TOKEN_VAR).map(Zeroizing::new)
                } else {
                    None
                },
            }),
        };
        let ignore = env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint = |service: &str| {
            if ignore {
                return None;
            }
            env(&format!("AWS_ENDPOINT_URL_{service}")).or_else(|| env("AWS_ENDPOINT_URL"))
        };
        let metadata_disabled =
            env(METADATA_DISABLED_VAR).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let instance_role = (credentials.is_none() && !metadata_disabled).then(|| {
            env(METADATA_ENDPOINT_VAR).unwrap_or_else(|| DEFAULT_METADATA_ENDPOINT.to_owned())
        });
        Ok(Self {
            credentials,
            instance_role,
            ec2_endpoint: endpoint("EC2"),
            iam_endpoint: endpoint("IAM"),
        })
    }
}

/// One of the two services called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Ec2,
    Iam,
}

impl Service {
    /// The SDK's service ID, as its errors name it.
    fn id(self) -> &'static str {
        match self {
            Self::Ec2 => "EC2",
            Self::Iam => "IAM",
        }
    }

    /// The SigV4 signing name.
    fn signing_name(self) -> &'static str {
        match self {
            Self::Ec2 => "ec2",
            Self::Iam => "iam",
        }
    }

    /// The Query API version.
    fn version(self) -> &'static str {
        match self {
            Self::Ec2 => "2016-11-15",
            Self::Iam => "2010-05-08",
        }
    }
}

/// AWS's partition of a region, by its name.
fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// An EC2 tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tag {
    /// `key`.
    pub key: Option<String>,
    /// `value`.
    pub value: Option<String>,
}

/// A security group of the instance (`groupSet`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupIdentifier {
    /// `groupId`.
    pub group_id: Option<String>,
    /// `groupName`.
    pub group_name: Option<String>,
}

/// A block device mapping (`blockDeviceMapping`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDevice {
    /// `deviceName`.
    pub device_name: Option<String>,
    /// Whether it has an `ebs` member.
    pub ebs: bool,
    /// `ebs.attachTime`, Unix seconds.
    pub attach_time: Option<i64>,
}

/// A network interface's attachment (`networkInterfaceSet` / `attachment`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceAttachment {
    /// `deviceIndex`.
    pub device_index: Option<i64>,
    /// `attachTime`, Unix seconds.
    pub attach_time: Option<i64>,
}

/// What ward reads of a `DescribeInstances` instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    /// `tagSet`.
    pub tags: Vec<Tag>,
    /// `groupSet`.
    pub security_groups: Vec<GroupIdentifier>,
    /// `iamInstanceProfile.arn`.
    pub instance_profile_arn: Option<String>,
    /// `rootDeviceType` (`ebs`, `instance-store`).
    pub root_device_type: Option<String>,
    /// `rootDeviceName`.
    pub root_device_name: Option<String>,
    /// `blockDeviceMapping`.
    pub block_devices: Vec<BlockDevice>,
    /// `networkInterfaceSet`: each interface's attachment (`None`: it has none).
    pub network_interfaces: Vec<Option<InterfaceAttachment>>,
}

/// The AWS API client of the `aws_iid` server.
#[derive(Debug)]
pub struct AwsApi {
    settings: AwsApiSettings,
    http: HttpGetter,
    /// The instance metadata service's client (short timeout).
    imds: HttpGetter,
    /// The instance role's credentials and when they expire (Unix seconds).
    role: Mutex<Option<(ApiCredentials, i64)>>,
}

impl AwsApi {
    /// A client for `settings`.
    ///
    /// # Errors
    /// When its HTTP runtime cannot start.
    pub fn new(settings: AwsApiSettings) -> std::io::Result<Self> {
        Ok(Self {
            settings,
            http: HttpGetter::new("aws-api")?,
            imds: HttpGetter::with_timeout("aws-imds", METADATA_TIMEOUT)?,
            role: Mutex::new(None),
        })
    }

    /// Whether credentials were found: static ones, or the instance metadata service to ask.
    pub fn has_credentials(&self) -> bool {
        self.settings.credentials.is_some() || self.settings.instance_role.is_some()
    }

    fn held_role(&self) -> std::sync::MutexGuard<'_, Option<(ApiCredentials, i64)>> {
        self.role.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The credentials to sign with: the static ones, else the instance role's (asked for
    /// when none are held or they expire within [`ROLE_REFRESH_MARGIN`]).
    fn credentials(&self) -> Result<ApiCredentials, String> {
        if let Some(c) = &self.settings.credentials {
            return Ok(c.clone());
        }
        let Some(base) = &self.settings.instance_role else {
            return Err("get identity: get credentials: failed to refresh cached credentials, no \
                        AWS credentials: set access_key_id and secret_access_key, or \
                        AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or let ward read the \
                        instance role (AWS_EC2_METADATA_DISABLED is true)"
                .to_owned());
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if let Some((c, expires)) = self.held_role().as_ref()
            && now < expires.saturating_sub(ROLE_REFRESH_MARGIN)
        {
            return Ok(c.clone());
        }
        // Not under the lock: a slow metadata service must not queue attestations behind one
        // another (two may both ask; the later answer is kept).
        let (c, expires) = instance_role_credentials(&self.imds, base).map_err(|e| {
            format!(
                "get identity: get credentials: failed to refresh cached credentials, no EC2 \
                 IMDS role found, {e}"
            )
        })?;
        *self.held_role() = Some((c.clone(), expires));
        Ok(c)
    }

    /// `DescribeInstances` of `instance_id` in `region`, filtered to pending and running
    /// instances as SPIRE asks: the reservations' instances.
    ///
    /// # Errors
    /// The SDK's operation error text.
    pub fn describe_instances(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<Vec<Vec<Instance>>, String> {
        let params = [
            ("Filter.1.Name", "instance-state-name"),
            ("Filter.1.Value.1", "pending"),
            ("Filter.1.Value.2", "running"),
            ("InstanceId.1", instance_id),
        ];
        let op = "DescribeInstances";
        let body = self.call(Service::Ec2, op, region, &params)?;
        parse_reservations(&body).map_err(|e| deserialization_error(Service::Ec2, op, &e))
    }

    /// `GetInstanceProfile` of `name` (called with the instance's region): its roles' ARNs
    /// (`None` for a role without one).
    ///
    /// # Errors
    /// The SDK's operation error text.
    pub fn get_instance_profile(
        &self,
        region: &str,
        name: &str,
    ) -> Result<Vec<Option<String>>, String> {
        let op = "GetInstanceProfile";
        let body = self.call(Service::Iam, op, region, &[("InstanceProfileName", name)])?;
        parse_role_arns(&body).map_err(|e| deserialization_error(Service::Iam, op, &e))
    }

    /// The endpoint URL and signing region of `service` for `region`.
    fn endpoint(&self, service: Service, region: &str) -> (String, String) {
        let overridden = match service {
            Service::Ec2 => &self.settings.ec2_endpoint,
            Service::Iam => &self.settings.iam_endpoint,
        };
        if let Some(url) = overridden {
            return (url.clone(), region.to_owned());
        }
        let partition = partition_of(region);
        match (service, partition) {
            (Service::Ec2, "aws-cn") => {
                (format!("https://ec2.{region}.amazonaws.com.cn"), region.to_owned())
            }
            (Service::Ec2, _) => (format!("https://ec2.{region}.amazonaws.com"), region.to_owned()),
            (Service::Iam, "aws-cn") => {
                ("https://iam.cn-north-1.amazonaws.com.cn".to_owned(), "cn-north-1".to_owned())
            }
            (Service::Iam, "aws-us-gov") => {
                ("https://iam.us-gov.amazonaws.com".to_owned(), "us-gov-west-1".to_owned())
            }
            (Service::Iam, _) => ("https://iam.amazonaws.com".to_owned(), "us-east-1".to_owned()),
        }
    }

    /// One signed Query API call: the body of a 2xx answer.
    fn call(
        &self,
        service: Service,
        action: &str,
        region: &str,
        params: &[(&str, &str)],
    ) -> Result<String, String> {
        let op_error = |e: String| format!("operation error {}: {action}, {e}", service.id());
        let credentials = &self.credentials().map_err(op_error)?;
        let (base, signing_region) = self.endpoint(service, region);
        let url = operation_url(&base).map_err(|e| op_error(format!("resolve endpoint: {e}")))?;
        let body = query_body(action, service.version(), params);
        let content_type = "application/x-www-form-urlencoded";
        let headers = signed_headers(
            credentials,
            service.signing_name(),
            &signing_region,
            &url,
            content_type,
            &body,
            SystemTime::now(),
        )
        .map_err(|e| op_error(format!("failed to sign request: {e}")))?;
        let mut all: Vec<(&str, &str)> = vec![("content-type", content_type)];
        all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let answer = self.http.post(&url, &all, body).map_err(|e| {
            op_error(format!(
                "https response error StatusCode: 0, RequestID: , request send failed, {e}"
            ))
        })?;
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        if (200..300).contains(&answer.status) {
            return Ok(text);
        }
        Err(op_error(response_error(service, &answer, &text)))
    }
}

/// The instance role's credentials from the instance metadata service at `base`, and when
/// they expire (Unix seconds): an IMDSv2 session token (IMDSv1 when the service answers the
/// token request with anything but success or 400, as the SDK falls back), the role's name,
/// then its credentials document (`Code`, `AccessKeyId`, `SecretAccessKey`, `Token`,
/// `Expiration`).
fn instance_role_credentials(
    http: &HttpGetter,
    base: &str,
) -> Result<(ApiCredentials, i64), String> {
    const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
    const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
    const ROLES: &str = "/latest/meta-data/iam/security-credentials/";
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Document {
        #[serde(default)]
        code: String,
        #[serde(default)]
        access_key_id: String,
        #[serde(default)]
        secret_access_key: String,
        #[serde(default)]
        token: String,
        #[serde(default)]
        expiration: String,
    }
    let base = base.trim_end_matches('/');
    let token = match http.put(
        &format!("{base}/latest/api/token"),
        &[(TTL_HEADER, METADATA_TOKEN_TTL)],
        "",
    ) {
        Ok(answer) if (200..300).contains(&answer.status) => {
            Some(String::from_utf8_lossy(&answer.body).into_owned())
        }
        Ok(answer) if answer.status == 400 => {
            return Err(format!("failed to get API token, {}", answer.status_text));
        }
        Ok(_) | Err(_) => None,
    };
    let headers: Vec<(&str, &str)> =
        token.as_deref().map(|t| (TOKEN_HEADER, t)).into_iter().collect();
    let get = |path: &str| -> Result<String, String> {
        let answer = http.get(&format!("{base}{path}"), &headers)?;
        if !(200..300).contains(&answer.status) {
            return Err(format!(
                "operation error ec2imds: GetMetadata, http response error StatusCode: {}, request to EC2 IMDS failed",
                answer.status
            ));
        }
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    };
    let roles = get(ROLES)?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("no instance role is attached to the instance")?;
    let text = get(&format!("{ROLES}{role}"))?;
    let doc: Document = serde_json::from_str(&text)
        .map_err(|e| format!("failed to decode EC2 IMDS role credentials, {e}"))?;
    if doc.code != "Success" {
        return Err(format!("error in credential response: {}", doc.code));
    }
    if doc.access_key_id.is_empty() || doc.secret_access_key.is_empty() {
        return Err(
            "the instance role's credentials lack AccessKeyId or SecretAccessKey".to_owned()
        );
    }
    let expires = OffsetDateTime::parse(&doc.expiration, &Rfc3339)
        .map_err(|e| {
            format!("invalid Expiration {:?} in EC2 IMDS role credentials: {e}", doc.expiration)
        })?
        .unix_timestamp();
    let credentials = ApiCredentials {
        access_key_id: doc.access_key_id,
        secret_access_key: Zeroizing::new(doc.secret_access_key),
        session_token: (!doc.token.is_empty()).then(|| Zeroizing::new(doc.token)),
    };
    Ok((credentials, expires))
}

/// The URL the SDK posts to: the endpoint with its path joined with `/`.
fn operation_url(base: &str) -> Result<String, String> {
    let mut url = url::Url::parse(base).map_err(|e| format!("invalid endpoint {base:?}: {e}"))?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url.to_string())
}

/// The form-encoded Query body, keys sorted as the SDK's encoder sorts them.
fn query_body(action: &str, version: &str, params: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, &str)> = vec![("Action", action), ("Version", version)];
    pairs.extend_from_slice(params);
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Go's `url.QueryEscape`: all but letters, digits and `-_.~` percent-encoded, spaces as `+`.
fn query_escape(text: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b' ');
    percent_encoding::utf8_percent_encode(text, KEEP).to_string().replace(' ', "+")
}

/// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) of a `POST` to
/// `url` with `content_type` and `body`; `host`, `content-type` and `content-length` are signed.
fn signed_headers(
    credentials: &ApiCredentials,
    service: &str,
    region: &str,
    url: &str,
    content_type: &str,
    body: &str,
    now: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.as_str().to_owned(),
        credentials.session_token.as_ref().map(|t| t.as_str().to_owned()),
        None,
        "ward",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let length = body.len().to_string();
    let headers = [("content-type", content_type), ("content-length", length.as_str())];
    let request = SignableRequest::new(
        "POST",
        url,
        headers.into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params).map_err(|e| e.to_string())?.into_parts();
    Ok(instructions.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

/// The text of a non-2xx answer as the SDK reports it, after `operation error ...,`.
fn response_error(service: Service, answer: &HttpResponse, body: &str) -> String {
    let header_id = answer
        .headers
        .get("x-amzn-requestid")
        .or_else(|| answer.headers.get("x-amz-request-id"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parsed = roxmltree::Document::parse(body).ok();
    let root = parsed.as_ref().map(roxmltree::Document::root_element);
    let error = root.and_then(|r| descendant(r, "Error"));
    let code = error.and_then(|e| text_of(e, "Code")).unwrap_or_else(|| "UnknownError".to_owned());
    let message = error.and_then(|e| text_of(e, "Message")).unwrap_or_else(|| code.clone());
    let body_id = root.and_then(|r| match service {
        Service::Ec2 => text_of(r, "RequestID"),
        Service::Iam => text_of(r, "RequestId"),
    });
    let request_id = body_id.filter(|i| !i.is_empty()).unwrap_or(header_id);
    // IAM's errors modelled for GetInstanceProfile print as `<Code>: <Message>`; the rest as
    // the SDK's generic API error.
    let api =
        if service == Service::Iam && matches!(code.as_str(), "NoSuchEntity" | "ServiceFailure") {
            format!("{code}: {message}")
        } else {
            format!("api error {code}: {message}")
        };
    format!("https response error StatusCode: {}, RequestID: {request_id}, {api}", answer.status)
}

fn deserialization_error(service: Service, action: &str, e: &str) -> String {
    format!(
        "operation error {}: {action}, deserialization failed, failed to decode response body, {e}",
        service.id()
    )
}

/// The first element below `node` (itself excluded) named `name` (any namespace).
fn descendant<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    node.descendants().skip(1).find(|n| n.is_element() && n.tag_name().name() == name)
}

/// The child element of `node` named `name`.
fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| n.is_element() && n.tag_name().name() == name)
}

/// The text of the child element `name` (`Some("")` when it is empty).
fn text_of(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name).map(|c| c.text().unwrap_or_default().to_owned())
}

/// The `item` (or `member`) children of the child element `name`.
fn list<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &str,
    entry: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    child(node, name)
        .into_iter()
        .flat_map(|c| c.children())
        .filter(move |n| n.is_element() && n.tag_name().name() == entry)
}

/// An ISO 8601 time as EC2 writes it (`2026-11-30T12:00:00.000Z`): Unix seconds.
fn timestamp(node: roxmltree::Node<'_, '_>, name: &str) -> Result<Option<i64>, String> {
    match text_of(node, name) {
        None => Ok(None),
        Some(t) => OffsetDateTime::parse(t.trim(), &Rfc3339)
            .map(|t| Some(t.unix_timestamp()))
            .map_err(|e| format!("failed to parse {name} {t:?}: {e}")),
    }
}

fn parse_reservations(body: &str) -> Result<Vec<Vec<Instance>>, String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let mut reservations = Vec::new();
    for reservation in list(root, "reservationSet", "item") {
        let mut instances = Vec::new();
        for i in list(reservation, "instancesSet", "item") {
            instances.push(parse_instance(i)?);
        }
        reservations.push(instances);
    }
    Ok(reservations)
}

fn parse_instance(i: roxmltree::Node<'_, '_>) -> Result<Instance, String> {
    let tags = list(i, "tagSet", "item")
        .map(|t| Tag { key: text_of(t, "key"), value: text_of(t, "value") })
        .collect();
    let security_groups = list(i, "groupSet", "item")
        .map(|g| GroupIdentifier {
            group_id: text_of(g, "groupId"),
            group_name: text_of(g, "groupName"),
        })
        .collect();
    let mut block_devices = Vec::new();
    for b in list(i, "blockDeviceMapping", "item") {
        let ebs = child(b, "ebs");
        block_devices.push(BlockDevice {
            device_name: text_of(b, "deviceName"),
            ebs: ebs.is_some(),
            attach_time: match ebs {
                Some(e) => timestamp(e, "attachTime")?,
                None => None,
            },
        });
    }
    let mut network_interfaces = Vec::new();
    for n in list(i, "networkInterfaceSet", "item") {
        network_interfaces.push(match child(n, "attachment") {
            None => None,
            Some(a) => Some(InterfaceAttachment {
                device_index: match text_of(a, "deviceIndex") {
                    None => None,
                    Some(t) => Some(
                        t.trim().parse().map_err(|e| format!("invalid deviceIndex {t:?}: {e}"))?,
                    ),
                },
                attach_time: timestamp(a, "attachTime")?,
            }),
        });
    }
    Ok(Instance {
        tags,
        security_groups,
        instance_profile_arn: child(i, "iamInstanceProfile").and_then(|p| text_of(p, "arn")),
        root_device_type: text_of(i, "rootDeviceType"),
        root_device_name: text_of(i, "rootDeviceName"),
        block_devices,
        network_interfaces,
    })
}

fn parse_role_arns(body: &str) -> Result<Vec<Option<String>>, String> {
    let doc = roxmltree::Document::parse(body).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let Some(profile) = descendant(root, "InstanceProfile") else {
        return Ok(Vec::new());
    };
    Ok(list(profile, "Roles", "member").map(|r| text_of(r, "Arn")).collect())
}

#[cfg(test)]
#[path = "api_tests.rs"]
pub(crate) mod tests;
