//! A fake EC2 + IAM Query endpoint on 127.0.0.1 for the unit tests, and the client's tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::*;

/// One request the fake received.
#[derive(Debug, Clone)]
pub(crate) struct FakeRequest {
    pub(crate) method: String,
    pub(crate) target: String,
    /// Lower-case names.
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: String,
}

impl FakeRequest {
    /// The form parameters of the body.
    pub(crate) fn params(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(self.body.as_bytes()).into_owned().collect()
    }
}

type Handler = dyn Fn(&FakeRequest) -> (u16, String) + Send + Sync;

/// Answers every connection with `handler`; records the requests.
pub(crate) struct FakeAws {
    pub(crate) url: String,
    pub(crate) requests: Arc<Mutex<Vec<FakeRequest>>>,
}

impl FakeAws {
    pub(crate) fn start(
        handler: impl Fn(&FakeRequest) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let _ = answer(conn, &*handler, &seen);
            }
        });
        Self { url, requests }
    }

    /// The requests received so far.
    pub(crate) fn seen(&self) -> Vec<FakeRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer(
    conn: std::net::TcpStream,
    handler: &Handler,
    seen: &Mutex<Vec<FakeRequest>>,
) -> std::io::Result<()> {
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let target = words.next().unwrap_or_default().to_owned();
    let mut headers = BTreeMap::new();
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let request =
        FakeRequest { method, target, headers, body: String::from_utf8_lossy(&body).into_owned() };
    let (status, text) = handler(&request);
    seen.lock().unwrap().push(request);
    write!(
        writer,
        "HTTP/1.1 {status} X\r\nContent-Type: text/xml;charset=UTF-8\r\nx-amzn-RequestId: \
         hdr-id\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    writer.flush()
}

/// A `DescribeInstancesResponse` with `instances` (the XML of each `item`) in one reservation.
pub(crate) fn describe_instances_xml(instances: &[String]) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse \
         xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r-1</requestId>\
         <reservationSet><item><reservationId>r-0123</reservationId><instancesSet>{}\
         </instancesSet></item></reservationSet></DescribeInstancesResponse>",
        instances.iter().map(|i| format!("<item>{i}</item>")).collect::<String>()
    )
}

/// An instance `item` body: EBS root `/dev/xvda` attached at `root_at`, interface 0 at
/// `nic_at` (RFC 3339), and `extra` members.
pub(crate) fn instance_xml(root_at: &str, nic_at: &str, extra: &str) -> String {
    format!(
        "<instanceId>i-0b22a22eec53b9321</instanceId><rootDeviceType>ebs</rootDeviceType>\
         <rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping><item>\
         <deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-1</volumeId>\
         <attachTime>{root_at}</attachTime></ebs></item></blockDeviceMapping>\
         <networkInterfaceSet><item><attachment><deviceIndex>1</deviceIndex>\
         <attachTime>2020-01-01T00:00:00.000Z</attachTime></attachment></item><item><attachment>\
         <deviceIndex>0</deviceIndex><attachTime>{nic_at}</attachTime></attachment></item>\
         </networkInterfaceSet>{extra}"
    )
}

/// A `GetInstanceProfileResponse` with roles of `arns`.
pub(crate) fn instance_profile_xml(arns: &[&str]) -> String {
    format!(
        "<GetInstanceProfileResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">\
         <GetInstanceProfileResult><InstanceProfile><InstanceProfileName>p</InstanceProfileName>\
         <Roles>{}</Roles></InstanceProfile></GetInstanceProfileResult><ResponseMetadata>\
         <RequestId>iam-1</RequestId></ResponseMetadata></GetInstanceProfileResponse>",
        arns.iter()
            .map(|a| format!("<member><RoleName>r</RoleName><Arn>{a}</Arn></member>"))
            .collect::<String>()
    )
}

pub(crate) fn credentials() -> ApiCredentials {
    ApiCredentials {
        access_key_id: "AKIDTEST".into(),
        secret_access_key: Zeroizing::new("secret".into()),
        session_token: None,
    }
}

/// Settings with credentials calling `url` for both services.
pub(crate) fn settings_for(url: &str) -> AwsApiSettings {
    AwsApiSettings {
        credentials: Some(credentials()),
        instance_role: None,
        ec2_endpoint: Some(url.to_owned()),
        iam_endpoint: Some(url.to_owned()),
    }
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> =
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |k| map.get(k).cloned()
}

#[test]
fn settings_take_keys_from_config_then_environment_as_spire_does() {
    let s =
        AwsApiSettings::resolve(Some("AK"), Some("SK"), env(&[(SESSION_TOKEN_VAR, "T")])).unwrap();
    let c = s.credentials.unwrap();
    assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AK", "SK"));
    assert!(c.session_token.is_none(), "a session token goes with the environment's keys only");

    let vars =
        [(ACCESS_KEY_ID_VAR, "EAK"), (SECRET_ACCESS_KEY_VAR, "ESK"), (SESSION_TOKEN_VAR, "T")];
    let c = AwsApiSettings::resolve(None, Some(""), env(&vars)).unwrap().credentials.unwrap();
    assert_eq!(c.access_key_id, "EAK");
    assert_eq!(c.session_token.as_deref().map(String::as_str), Some("T"));
    // A configured key with the other from the environment, as SPIRE's Validate allows.
    let c = AwsApiSettings::resolve(Some("AK"), None, env(&vars)).unwrap().credentials.unwrap();
    assert_eq!((c.access_key_id.as_str(), c.secret_access_key.as_str()), ("AK", "ESK"));

    assert_eq!(
        AwsApiSettings::resolve(Some("AK"), None, env(&[])).unwrap_err(),
        "configuration missing secret access key, but has access key id"
    );
    assert_eq!(
        AwsApiSettings::resolve(None, None, env(&[(SECRET_ACCESS_KEY_VAR, "x")])).unwrap_err(),
        "configuration missing access key id, but has secret access key"
    );
    // No keys: the instance role, from the metadata service the SDK's variables name.
    let s = AwsApiSettings::resolve(None, None, env(&[])).unwrap();
    assert_eq!(s.instance_role.as_deref(), Some(DEFAULT_METADATA_ENDPOINT));
    assert!(s.credentials.is_none());
    let s = AwsApiSettings::resolve(None, None, env(&[(METADATA_ENDPOINT_VAR, "http://imds:81")]));
    assert_eq!(s.unwrap().instance_role.as_deref(), Some("http://imds:81"));
    assert_eq!(
        AwsApiSettings::resolve(None, None, env(&[(METADATA_DISABLED_VAR, "true")])).unwrap(),
        AwsApiSettings::default()
    );
    // Keys win over the metadata service.
    let s = AwsApiSettings::resolve(Some("AK"), Some("SK"), env(&[])).unwrap();
    assert!(s.instance_role.is_none());
}

#[test]
fn endpoints_follow_the_sdk_variables_and_aws_partitions() {
    let s = AwsApiSettings::resolve(
        None,
        None,
        env(&[("AWS_ENDPOINT_URL", "http://all"), ("AWS_ENDPOINT_URL_IAM", "http://iam")]),
    )
    .unwrap();
    assert_eq!(s.ec2_endpoint.as_deref(), Some("http://all"));
    assert_eq!(s.iam_endpoint.as_deref(), Some("http://iam"));
    let s = AwsApiSettings::resolve(
        None,
        None,
        env(&[("AWS_ENDPOINT_URL", "http://all"), ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")]),
    )
    .unwrap();
    assert_eq!((s.ec2_endpoint, s.iam_endpoint), (None, None));

    let api = AwsApi::new(AwsApiSettings::default()).unwrap();
    let e = |service, region| api.endpoint(service, region);
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        e(Service::Ec2, "us-west-2"),
        pair("https://ec2.us-west-2.amazonaws.com", "us-west-2")
    );
    assert_eq!(e(Service::Iam, "eu-west-1"), pair("https://iam.amazonaws.com", "us-east-1"));
    assert_eq!(
        e(Service::Ec2, "cn-north-1"),
        pair("https://ec2.cn-north-1.amazonaws.com.cn", "cn-north-1")
    );
    assert_eq!(
        e(Service::Iam, "cn-northwest-1"),
        pair("https://iam.cn-north-1.amazonaws.com.cn", "cn-north-1")
    );
    assert_eq!(
        e(Service::Iam, "us-gov-east-1"),
        pair("https://iam.us-gov.amazonaws.com", "us-gov-west-1")
    );
    let api = AwsApi::new(settings_for("http://127.0.0.1:9")).unwrap();
    assert_eq!(api.endpoint(Service::Iam, "eu-west-1"), pair("http://127.0.0.1:9", "eu-west-1"));
}

#[test]
fn query_bodies_are_encoded_as_go_encodes_them() {
    assert_eq!(query_escape("a b+c~d*e/f=g_h.i-j"), "a+b%2Bc~d%2Ae%2Ff%3Dg_h.i-j");
    assert_eq!(
        query_body("GetInstanceProfile", "2010-05-08", &[("InstanceProfileName", "p@x")]),
        "Action=GetInstanceProfile&InstanceProfileName=p%40x&Version=2010-05-08"
    );
    assert_eq!(operation_url("http://127.0.0.1:5").unwrap(), "http://127.0.0.1:5/");
    assert_eq!(operation_url("http://h/base").unwrap(), "http://h/base/");
}

#[test]
fn describe_instances_posts_a_signed_query_and_reads_the_instance() {
    let extra = "<groupSet><item><groupId>sg-1</groupId><groupName>web</groupName></item></groupSet>\
                 <iamInstanceProfile><arn>arn:aws:iam::123:instance-profile/p</arn></iamInstanceProfile>\
                 <tagSet><item><key>Name</key><value>blog &amp; co</value></item>\
                 <item><key>empty</key><value/></item></tagSet>";
    let xml = describe_instances_xml(&[instance_xml(
        "2026-11-30T12:00:00.000Z",
        "2026-11-30T12:00:30Z",
        extra,
    )]);
    let fake = FakeAws::start(move |_| (200, xml.clone()));
    let api = AwsApi::new(settings_for(&fake.url)).unwrap();
    let reservations = api.describe_instances("us-west-2", "i-0b22a22eec53b9321").unwrap();
    let [instances] = &reservations[..] else { panic!("{reservations:?}") };
    let [i] = &instances[..] else { panic!("{instances:?}") };
    assert_eq!(
        i.tags,
        [
            Tag { key: Some("Name".into()), value: Some("blog & co".into()) },
            Tag { key: Some("empty".into()), value: Some(String::new()) }
        ]
    );
    assert_eq!(
        i.security_groups,
        [GroupIdentifier { group_id: Some("sg-1".into()), group_name: Some("web".into()) }]
    );
    assert_eq!(i.instance_profile_arn.as_deref(), Some("arn:aws:iam::123:instance-profile/p"));
    assert_eq!(i.root_device_name.as_deref(), Some("/dev/xvda"));
    assert_eq!(i.block_devices[0].attach_time, Some(1_796_040_000));
    assert_eq!(
        i.network_interfaces[1],
        Some(InterfaceAttachment { device_index: Some(0), attach_time: Some(1_796_040_030) })
    );

    let [req] = &fake.seen()[..] else { panic!() };
    assert_eq!((req.method.as_str(), req.target.as_str()), ("POST", "/"));
    assert_eq!(
        req.body,
        "Action=DescribeInstances&Filter.1.Name=instance-state-name&Filter.1.Value.1=pending&\
         Filter.1.Value.2=running&InstanceId.1=i-0b22a22eec53b9321&Version=2016-11-15"
    );
    assert_eq!(req.headers["content-type"], "application/x-www-form-urlencoded");
    let auth = &req.headers["authorization"];
    let date = &req.headers["x-amz-date"];
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDTEST/{}/us-west-2/ec2/aws4_request, \
             SignedHeaders=content-length;content-type;host;x-amz-date, Signature=",
            &date[..8]
        )),
        "{auth}"
    );
    assert!(!req.headers.contains_key("x-amz-security-token"));
}

#[test]
fn api_errors_read_as_the_sdk_prints_them() {
    let ec2 = FakeAws::start(|_| {
        (
            400,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
             <Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-1' does not \
             exist</Message></Error></Errors><RequestID>ec2-req</RequestID></Response>"
                .into(),
        )
    });
    let api = AwsApi::new(settings_for(&ec2.url)).unwrap();
    assert_eq!(
        api.describe_instances("us-west-2", "i-1").unwrap_err(),
        "operation error EC2: DescribeInstances, https response error StatusCode: 400, \
         RequestID: ec2-req, api error InvalidInstanceID.NotFound: The instance ID 'i-1' does \
         not exist"
    );
    let iam = FakeAws::start(|r| {
        let body = if r.params()["InstanceProfileName"] == "gone" {
            "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error>\
             <Type>Sender</Type><Code>NoSuchEntity</Code><Message>Instance Profile gone cannot \
             be found.</Message></Error><RequestId>iam-req</RequestId></ErrorResponse>"
        } else {
            "<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error>\
             </ErrorResponse>"
        };
        (if body.contains("NoSuch") { 404 } else { 403 }, body.into())
    });
    let api = AwsApi::new(settings_for(&iam.url)).unwrap();
    assert_eq!(
        api.get_instance_profile("us-west-2", "gone").unwrap_err(),
        "operation error IAM: GetInstanceProfile, https response error StatusCode: 404, \
         RequestID: iam-req, NoSuchEntity: Instance Profile gone cannot be found."
    );
    assert_eq!(
        api.get_instance_profile("us-west-2", "other").unwrap_err(),
        "operation error IAM: GetInstanceProfile, https response error StatusCode: 403, \
         RequestID: hdr-id, api error AccessDenied: no"
    );
    let req = &iam.seen()[0];
    assert!(
        req.headers["authorization"].contains("/us-west-2/iam/aws4_request"),
        "an overridden IAM endpoint is signed for the instance's region: {req:?}"
    );

    let bad = FakeAws::start(|_| (200, "<DescribeInstancesResponse>".into()));
    let api = AwsApi::new(settings_for(&bad.url)).unwrap();
    assert!(api.describe_instances("us-west-2", "i-1").unwrap_err().starts_with(
        "operation error EC2: DescribeInstances, deserialization failed, failed to decode \
             response body, "
    ));

    let api = AwsApi::new(AwsApiSettings::default()).unwrap();
    assert!(api.describe_instances("us-west-2", "i-1").unwrap_err().starts_with(
        "operation error EC2: DescribeInstances, get identity: get credentials: failed to \
             refresh cached credentials, no AWS credentials"
    ));
    let api = AwsApi::new(settings_for("http://127.0.0.1:1")).unwrap();
    assert!(api.describe_instances("us-west-2", "i-1").unwrap_err().starts_with(
        "operation error EC2: DescribeInstances, https response error StatusCode: 0, \
             RequestID: , request send failed, Post \"http://127.0.0.1:1/\": "
    ));
}

#[test]
fn instance_profiles_list_their_roles_and_session_tokens_are_signed() {
    let fake = FakeAws::start(|_| {
        (200, instance_profile_xml(&["arn:aws:iam::1:role/a", "arn:aws:iam::1:role/b"]))
    });
    let mut settings = settings_for(&fake.url);
    if let Some(c) = &mut settings.credentials {
        c.session_token = Some(Zeroizing::new("tok".into()));
    }
    let api = AwsApi::new(settings).unwrap();
    assert_eq!(
        api.get_instance_profile("eu-west-1", "p").unwrap(),
        [Some("arn:aws:iam::1:role/a".to_owned()), Some("arn:aws:iam::1:role/b".to_owned())]
    );
    let req = &fake.seen()[0];
    assert_eq!(req.body, "Action=GetInstanceProfile&InstanceProfileName=p&Version=2010-05-08");
    assert_eq!(req.headers["x-amz-security-token"], "tok");
    assert!(
        req.headers["authorization"].contains(
            "SignedHeaders=content-length;content-type;host;x-amz-date;x-amz-security-token"
        ),
        "{req:?}"
    );
}

/// A fake instance metadata service serving role `web`'s credentials, expiring `expires_in`
/// seconds from now; `token_status` answers the IMDSv2 token request.
fn fake_imds(expires_in: i64, token_status: u16) -> FakeAws {
    FakeAws::start(move |r| {
        let expiration = (OffsetDateTime::now_utc() + time::Duration::seconds(expires_in))
            .format(&Rfc3339)
            .unwrap();
        match (r.method.as_str(), r.target.as_str()) {
            ("PUT", "/latest/api/token") => (token_status, "imds-session".into()),
            ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "web\n".into()),
            ("GET", "/latest/meta-data/iam/security-credentials/web") => (
                200,
                format!(
                    "{{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"ASIAROLE\",\
                     \"SecretAccessKey\":\"role-secret\",\"Token\":\"role-token\",\
                     \"Expiration\":\"{expiration}\"}}"
                ),
            ),
            _ => (404, String::new()),
        }
    })
}

#[test]
fn without_keys_the_instance_roles_credentials_sign_and_are_kept_until_near_expiry() {
    let xml =
        describe_instances_xml(&[instance_xml("2026-11-30T12:00:00Z", "2026-11-30T12:00:00Z", "")]);
    let ec2 = FakeAws::start(move |_| (200, xml.clone()));
    let imds = fake_imds(3600, 200);
    let settings = AwsApiSettings {
        credentials: None,
        instance_role: Some(imds.url.clone()),
        ec2_endpoint: Some(ec2.url.clone()),
        iam_endpoint: Some(ec2.url.clone()),
    };
    let api = AwsApi::new(settings).unwrap();
    assert!(api.has_credentials());
    api.describe_instances("us-west-2", "i-1").unwrap();
    api.describe_instances("us-west-2", "i-1").unwrap();
    let calls = ec2.seen();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert!(call.headers["authorization"].contains("Credential=ASIAROLE/"), "{call:?}");
        assert_eq!(call.headers["x-amz-security-token"], "role-token");
    }
    // One token, the role list and the role's credentials: kept for the second call.
    let asked: Vec<(String, String)> =
        imds.seen().into_iter().map(|r| (r.method.clone(), r.target.clone())).collect();
    assert_eq!(
        asked,
        [
            ("PUT".to_owned(), "/latest/api/token".to_owned()),
            ("GET".to_owned(), "/latest/meta-data/iam/security-credentials/".to_owned()),
            ("GET".to_owned(), "/latest/meta-data/iam/security-credentials/web".to_owned()),
        ]
    );
    let seen = imds.seen();
    assert_eq!(seen[0].headers["x-aws-ec2-metadata-token-ttl-seconds"], "21600");
    assert_eq!(seen[1].headers["x-aws-ec2-metadata-token"], "imds-session");
    assert_eq!(seen[2].headers["x-aws-ec2-metadata-token"], "imds-session");
}

#[test]
fn instance_role_credentials_near_expiry_are_asked_again_and_imdsv1_is_the_fallback() {
    let xml =
        describe_instances_xml(&[instance_xml("2026-11-30T12:00:00Z", "2026-11-30T12:00:00Z", "")]);
    let ec2 = FakeAws::start(move |_| (200, xml.clone()));
    // Expiring within the refresh margin, and no IMDSv2 (403 to the token request).
    let imds = fake_imds(60, 403);
    let settings = AwsApiSettings {
        credentials: None,
        instance_role: Some(imds.url.clone()),
        ec2_endpoint: Some(ec2.url.clone()),
        iam_endpoint: None,
    };
    let api = AwsApi::new(settings).unwrap();
    api.describe_instances("us-west-2", "i-1").unwrap();
    api.describe_instances("us-west-2", "i-1").unwrap();
    let gets: Vec<FakeRequest> =
        imds.seen().into_iter().filter(|r| r.target.ends_with("/web")).collect();
    assert_eq!(gets.len(), 2, "credentials expiring within five minutes are asked for again");
    assert!(gets.iter().all(|r| !r.headers.contains_key("x-aws-ec2-metadata-token")));
}

#[test]
fn a_metadata_service_without_a_role_refuses_with_the_sdks_chain_text() {
    let imds = FakeAws::start(|r| match r.target.as_str() {
        "/latest/api/token" => (200, "t".into()),
        _ => (404, String::new()),
    });
    let settings = AwsApiSettings {
        credentials: None,
        instance_role: Some(imds.url.clone()),
        ec2_endpoint: Some("http://127.0.0.1:1".into()),
        iam_endpoint: None,
    };
    let api = AwsApi::new(settings).unwrap();
    let err = api.describe_instances("us-west-2", "i-1").unwrap_err();
    assert_eq!(
        err,
        "operation error EC2: DescribeInstances, get identity: get credentials: failed to refresh \
         cached credentials, no EC2 IMDS role found, operation error ec2imds: GetMetadata, http \
         response error StatusCode: 404, request to EC2 IMDS failed"
    );
    let bad_token = FakeAws::start(|_| (400, String::new()));
    let settings = AwsApiSettings {
        credentials: None,
        instance_role: Some(bad_token.url.clone()),
        ec2_endpoint: Some("http://127.0.0.1:1".into()),
        iam_endpoint: None,
    };
    let err = AwsApi::new(settings).unwrap().describe_instances("us-west-2", "i-1").unwrap_err();
    assert!(err.ends_with("no EC2 IMDS role found, failed to get API token, 400 X"), "{err}");
}
