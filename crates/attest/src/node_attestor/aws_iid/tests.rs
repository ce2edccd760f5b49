use aws_lc_rs::digest::{self, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, RsaKeyPair};
use cms::cert::IssuerAndSerialNumber;
use cms::cert::x509::attr::Attribute;
use cms::cert::x509::name::Name;
use cms::cert::x509::serial_number::SerialNumber;
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{Any, ObjectIdentifier, OctetString, SetOfVec};
use der::{Decode, Encode};

use super::api::tests::{
    FakeAws, describe_instances_xml, instance_profile_xml, instance_xml, settings_for,
};
use super::*;

const DOCUMENT: &str = "{\n  \"accountId\" : \"123456789012\",\n  \"architecture\" : \"x86_64\",\n  \
    \"availabilityZone\" : \"us-west-2b\",\n  \"imageId\" : \"ami-5fb8c835\",\n  \
    \"instanceId\" : \"i-0b22a22eec53b9321\",\n  \"instanceType\" : \"t2.micro\",\n  \
    \"pendingTime\" : \"2026-11-30T12:00:00Z\",\n  \"privateIp\" : \"10.0.0.7\",\n  \
    \"region\" : \"us-west-2\",\n  \"version\" : \"2017-09-30\"\n}";

/// A signing key and its self-signed certificate, as AWS has per region.
struct Signer {
    key: RsaKeyPair,
    cert_der: Vec<u8>,
}

fn signer(cn: &str) -> Signer {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = p.self_signed(&key).unwrap();
    Signer {
        key: RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap(),
        cert_der: cert.der().to_vec(),
    }
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
            .unwrap();
        sig
    }

    /// `signature`: base64 PKCS#1 v1.5 over the document, with line breaks as IMDS has them.
    fn rsa1024(&self, document: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.sign(document.as_bytes()));
        b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c)).collect::<Vec<_>>().join("\n")
    }

    /// `rsa2048`: base64 PKCS#7 SignedData holding `content`, signed attributes included.
    fn pkcs7(&self, content: &str, edit: impl FnOnce(&mut SignerInfo)) -> String {
        let oid = ObjectIdentifier::new_unwrap;
        let sha256 = AlgorithmIdentifierOwned { oid: oid(OID_SHA256), parameters: None };
        let digest = digest::digest(&SHA256, content.as_bytes());
        let attr = |o: &str, v: Any| Attribute {
            oid: oid(o),
            values: SetOfVec::try_from(vec![v]).unwrap(),
        };
        let attrs = SetOfVec::try_from(vec![
            attr("1.2.840.113549.1.9.3", Any::encode_from(&oid("1.2.840.113549.1.7.1")).unwrap()),
            attr(
                OID_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(digest.as_ref()).unwrap()).unwrap(),
            ),
        ])
        .unwrap();
        let (_, cert) = X509Certificate::from_der(&self.cert_der).unwrap();
        let mut info = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: Name::from_der(cert.tbs_certificate.issuer.as_raw()).unwrap(),
                serial_number: SerialNumber::new(cert.raw_serial()).unwrap(),
            }),
            digest_alg: sha256.clone(),
            signature: OctetString::new(self.sign(&attrs.to_der().unwrap())).unwrap(),
            signed_attrs: Some(attrs),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: oid(OID_RSA),
                parameters: Some(Any::null()),
            },
            unsigned_attrs: None,
        };
        edit(&mut info);
        let sd = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![sha256]).unwrap(),
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: oid("1.2.840.113549.1.7.1"),
                econtent: Some(
                    Any::encode_from(&OctetString::new(content.as_bytes()).unwrap()).unwrap(),
                ),
            },
            certificates: None,
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![info]).unwrap()),
        };
        let ci = ContentInfo {
            content_type: oid(OID_SIGNED_DATA),
            content: Any::encode_from(&sd).unwrap(),
        };
        base64::engine::general_purpose::STANDARD.encode(ci.to_der().unwrap())
    }
}

/// A fake EC2 describing the document's instance: root volume and interface 0 attached
/// together, no tags, groups or instance profile.
fn plain_ec2() -> FakeAws {
    let xml = describe_instances_xml(&[instance_xml(
        "2026-11-30T12:00:00.000Z",
        "2026-11-30T12:00:00.000Z",
        "",
    )]);
    FakeAws::start(move |_| (200, xml.clone()))
}

fn config(
    template: Option<&str>,
    certs: Vec<(KeyType, &str, &Signer)>,
    api: &FakeAws,
) -> AwsIidServerConfig {
    AwsIidServerConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        agent_path_template: template.map(str::to_owned),
        certificates: certs
            .into_iter()
            .map(|(k, r, s)| (k, r.to_owned(), s.cert_der.clone()))
            .collect(),
        api: settings_for(&api.url),
        skip_block_device: false,
        disable_instance_profile_selectors: false,
        account_ids_for_local_validation: Vec::new(),
    }
}

fn verifier(template: Option<&str>, certs: Vec<(KeyType, &str, &Signer)>) -> AwsIidVerifier {
    AwsIidVerifier::new(config(template, certs, &plain_ec2())).unwrap()
}

fn payload(document: &str, signature: &str, rsa2048: &str) -> Vec<u8> {
    AttestationData::new(document, signature, rsa2048).to_go_json()
}

/// `begin`, then `complete` as the server runs it after its trust-on-first-use check.
fn attest(v: &AwsIidVerifier, payload: &[u8]) -> Result<AttestedAgent, Refusal> {
    match v.begin(payload, 0)? {
        Verification::Attested(a) => v.complete(a, 0),
        other => panic!("expected an attestation, got {other:?}"),
    }
}

fn attested(v: &AwsIidVerifier, payload: &[u8]) -> AttestedAgent {
    attest(v, payload).unwrap_or_else(|r| panic!("expected an attestation, got {r:?}"))
}

fn refusal(v: &AwsIidVerifier, payload: &[u8]) -> (RefusalCode, String) {
    match attest(v, payload) {
        Err(r) => (r.code, r.message),
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn payload_is_go_json_of_the_three_members() {
    let p = payload("{\"a\" : \"<b>&\"\n}", "c2ln\nbmF0dXJl", "");
    assert_eq!(
        String::from_utf8(p.clone()).unwrap(),
        r#"{"document":"{\"a\" : \"\u003cb\u003e\u0026\"\n}","signature":"c2ln\nbmF0dXJl","rsa2048":""}"#
    );
    let back: AttestationData = serde_json::from_slice(&p).unwrap();
    assert_eq!(back.document, "{\"a\" : \"<b>&\"\n}");
}

#[test]
fn pkcs7_signed_document_attests_with_document_selectors() {
    let aws = signer("aws us-west-2");
    let v = verifier(None, vec![(KeyType::Rsa2048, "us-west-2", &aws)]);
    let a = attested(&v, &payload(DOCUMENT, "", &aws.pkcs7(DOCUMENT, |_| {})));
    assert_eq!(
        a.agent_id.to_string(),
        "spiffe://example.org/spire/agent/aws_iid/123456789012/us-west-2/i-0b22a22eec53b9321"
    );
    assert_eq!(
        a.selector_values,
        [
            "az:us-west-2b",
            "image:id:ami-5fb8c835",
            "instance:id:i-0b22a22eec53b9321",
            "region:us-west-2"
        ]
    );
    assert!(!a.can_reattest);
}

#[test]
fn rsa1024_signature_is_used_without_pkcs7() {
    let aws = signer("aws legacy");
    let v = verifier(
        Some("/{{ .PluginName }}/{{ .Region }}/{{ .InstanceID }}{{ .TrustDomain }}"),
        vec![(KeyType::Rsa1024, "us-west-2", &aws)],
    );
    let a = attested(&v, &payload(DOCUMENT, &aws.rsa1024(DOCUMENT), ""));
    assert_eq!(a.agent_id.path(), "/spire/agent/aws_iid/us-west-2/i-0b22a22eec53b9321");

    let other = signer("not aws");
    assert_eq!(
        refusal(&v, &payload(DOCUMENT, &other.rsa1024(DOCUMENT), "")),
        (
            RefusalCode::InvalidArgument,
            "rpc error: code = InvalidArgument desc = failed to verify the cryptographic signature: \
             crypto/rsa: verification error"
                .into()
        )
    );
    assert_eq!(
        refusal(&v, &payload(DOCUMENT, "c2ln!", "")),
        (
            RefusalCode::InvalidArgument,
            "rpc error: code = InvalidArgument desc = failed to decode the IID signature: illegal \
             base64 data at input byte 4"
                .into()
        )
    );
}

#[test]
fn refuses_bad_evidence_with_spire_texts() {
    use RefusalCode::{Internal, InvalidArgument};
    let aws = signer("aws us-west-2");
    let v = verifier(None, vec![(KeyType::Rsa2048, "us-west-2", &aws)]);
    let good = aws.pkcs7(DOCUMENT, |_| {});
    let failed = "failed verification of instance identity cryptographic signature: ";

    let full = payload(DOCUMENT, "", &good);
    assert_eq!(
        refusal(&v, &full[..full.len() / 2]),
        (
            InvalidArgument,
            "failed to unmarshal the attestation data: unexpected end of JSON input".into()
        )
    );
    assert_eq!(
        refusal(&v, &payload("{", "", &good)),
        (InvalidArgument, "failed to unmarshal the IID: unexpected end of JSON input".into())
    );
    assert_eq!(
        refusal(&v, &payload(DOCUMENT, "", "")),
        (InvalidArgument, "instance identity cryptographic signature is required".into())
    );
    // Signed by a key that is not the region's.
    let forged = signer("aws us-west-2").pkcs7(DOCUMENT, |_| {});
    assert_eq!(
        refusal(&v, &payload(DOCUMENT, "", &forged)),
        (InvalidArgument, format!("{failed}pkcs7: No certificate for signer"))
    );
    // The right signer named, the signature not its.
    let bad_sig = aws.pkcs7(DOCUMENT, |i| {
        let mut s = i.signature.as_bytes().to_vec();
        s[0] ^= 1;
        i.signature = OctetString::new(s).unwrap();
    });
    assert_eq!(
        refusal(&v, &payload(DOCUMENT, "", &bad_sig)),
        (InvalidArgument, format!("{failed}crypto/rsa: verification error"))
    );
    // A valid signature of another document.
    let other_doc = DOCUMENT.replace("i-0b22a22eec53b9321", "i-0000000000000000");
    assert_eq!(
        refusal(&v, &payload(&other_doc, "", &good)),
        (
            InvalidArgument,
            "instance identity document does not match the verified PKCS7 content".into()
        )
    );
    assert_eq!(
        refusal(&v, &payload(DOCUMENT, "", "!!")),
        (InvalidArgument, "failed to decode the instance identity cryptographic signature".into())
    );
    let cut = &good[..good.len() / 2 / 4 * 4];
    let (code, message) = refusal(&v, &payload(DOCUMENT, "", cut));
    assert_eq!(code, InvalidArgument);
    assert!(
        message.starts_with("failed to parse the instance identity cryptographic signature: "),
        "{message}"
    );
    let elsewhere = DOCUMENT.replace("us-west-2", "xx-nowhere-1");
    assert_eq!(
        refusal(&v, &payload(&elsewhere, "", &aws.pkcs7(&elsewhere, |_| {}))),
        (
            Internal,
            "failed to load the AWS CA certificate for region \"xx-nowhere-1\": unsupported \
             region \"xx-nowhere-1\""
                .into()
        )
    );
}

#[test]
fn ber_with_indefinite_lengths_becomes_der() {
    // SEQUENCE (indefinite) { [0] (indefinite) { OCTET STRING constructed (indefinite) {
    // "ab", "c" } } }
    let ber = [
        0x30, 0x80, 0xa0, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0, 0, 0, 0,
        0, 0,
    ];
    assert_eq!(ber_to_der(&ber).unwrap(), [0x30, 0x07, 0xa0, 0x05, 0x04, 0x03, b'a', b'b', b'c']);
    for bad in [&ber[..ber.len() - 1], &[0x30, 0x05, 0x04][..], &[0x04, 0x80, 0, 0][..]] {
        assert!(ber_to_der(bad).is_err(), "{bad:?}");
    }
    let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 100).flatten().collect();
    assert!(ber_to_der(&deep).is_err());
}

#[test]
fn compiled_in_certificates_cover_aws_regions() {
    let v = verifier(None, vec![]);
    for region in ["us-east-1", "eu-west-1", "ap-southeast-4", "us-gov-west-1"] {
        assert!(v.certificate(region, KeyType::Rsa2048).is_ok(), "{region}");
    }
    assert_eq!(v.rsa2048.len(), 31);
    // RSA-1024: regions without their own certificate use AWS's default one.
    assert!(v.certificate("us-east-1", KeyType::Rsa1024).is_ok());
    assert_eq!(
        v.certificate("xx-nowhere-1", KeyType::Rsa2048).unwrap_err(),
        "unsupported region \"xx-nowhere-1\""
    );
}

#[test]
fn templates_with_tags_are_refused() {
    let e =
        AwsIidVerifier::new(config(Some("/{{ .Tags.name }}"), vec![], &plain_ec2())).unwrap_err();
    assert!(e.to_string().contains("{{ .Tags.name }} is not supported"), "{e}");
}

const PROFILE_ARN: &str = "arn:aws:iam::123456789012:instance-profile/path/to/blog-profile";

/// A fake EC2 + IAM: DescribeInstances answers `instances`, GetInstanceProfile one role.
fn ec2_and_iam(instances: Vec<String>) -> FakeAws {
    let xml = describe_instances_xml(&instances);
    FakeAws::start(move |r| match r.params().get("Action").map(String::as_str) {
        Some("GetInstanceProfile") => {
            (200, instance_profile_xml(&["arn:aws:iam::123456789012:role/Blog"]))
        }
        _ => (200, xml.clone()),
    })
}

#[test]
fn tags_security_groups_and_instance_profile_roles_become_selectors() {
    let aws = signer("aws us-west-2");
    let extra = format!(
        "<groupSet><item><groupId>sg-01234567</groupId><groupName>blog</groupName></item>\
         </groupSet><iamInstanceProfile><arn>{PROFILE_ARN}</arn></iamInstanceProfile>\
         <tagSet><item><key>name</key><value>blog</value></item><item><key>env</key></item>\
         </tagSet>"
    );
    let fake = ec2_and_iam(vec![instance_xml(
        "2026-11-30T12:00:00.000Z",
        "2026-11-30T12:01:00.000Z",
        &extra,
    )]);
    let certs = vec![(KeyType::Rsa2048, "us-west-2", &aws)];
    let v = AwsIidVerifier::new(config(None, certs.clone(), &fake)).unwrap();
    let p = payload(DOCUMENT, "", &aws.pkcs7(DOCUMENT, |_| {}));
    assert_eq!(
        attested(&v, &p).selector_values,
        [
            "az:us-west-2b",
            "iamrole:arn:aws:iam::123456789012:role/Blog",
            "image:id:ami-5fb8c835",
            "instance:id:i-0b22a22eec53b9321",
            "region:us-west-2",
            "sg:id:sg-01234567",
            "sg:name:blog",
            "tag:env:",
            "tag:name:blog",
        ]
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].params()["InstanceId.1"], "i-0b22a22eec53b9321");
    assert_eq!(seen[1].params()["InstanceProfileName"], "blog-profile");

    // IAM is asked in the complete step only (after the server's trust-on-first-use check).
    let Ok(Verification::Attested(begun)) = v.begin(&p, 0) else { panic!("begin refused") };
    assert!(!begun.selector_values.iter().any(|s| s.starts_with("iamrole:")));
    assert_eq!(fake.seen().len(), 3);
    let done = v.complete(begun, 0).unwrap();
    assert!(done.selector_values.contains(&"iamrole:arn:aws:iam::123456789012:role/Blog".into()));
    assert!(done.selector_values.is_sorted());
    assert_eq!(fake.seen().len(), 4);

    let mut c = config(None, certs, &fake);
    c.disable_instance_profile_selectors = true;
    let v = AwsIidVerifier::new(c).unwrap();
    let selectors = attested(&v, &p).selector_values;
    assert!(!selectors.iter().any(|s| s.starts_with("iamrole:")), "{selectors:?}");
    assert_eq!(fake.seen().len(), 5, "no IAM call when disabled");
}

#[test]
fn a_root_volume_attached_later_is_refused_unless_skipped() {
    use RefusalCode::Internal;
    let aws = signer("aws us-west-2");
    let certs = vec![(KeyType::Rsa2048, "us-west-2", &aws)];
    let p = payload(DOCUMENT, "", &aws.pkcs7(DOCUMENT, |_| {}));
    let late =
        ec2_and_iam(vec![instance_xml("2026-11-30T12:05:00.000Z", "2026-11-30T12:00:00.000Z", "")]);
    let v = AwsIidVerifier::new(config(None, certs.clone(), &late)).unwrap();
    assert_eq!(
        refusal(&v, &p),
        (
            Internal,
            "failed aws ec2 attestation: failed checking the disparity device attach times, root \
             BlockDeviceMapping and NetworkInterface[0] attach times differ by 300 seconds"
                .into()
        )
    );
    let mut c = config(None, certs.clone(), &late);
    c.skip_block_device = true;
    assert!(attest(&AwsIidVerifier::new(c).unwrap(), &p).is_ok());
    let mut c = config(None, certs.clone(), &late);
    c.account_ids_for_local_validation = vec!["123456789012".into()];
    assert!(attest(&AwsIidVerifier::new(c).unwrap(), &p).is_ok());

    let cases = [
        (
            "<DescribeInstancesResponse><reservationSet/></DescribeInstancesResponse>".to_owned(),
            "failed to query AWS via describe-instances: returned no reservations",
        ),
        (
            describe_instances_xml(&[]),
            "failed to query AWS via describe-instances: returned no instances",
        ),
        (
            describe_instances_xml(&["<rootDeviceName>/dev/sda1</rootDeviceName>".to_owned()]),
            "failed aws ec2 attestation: the EC2 instance network interface with device index 0 \
             is inaccessible",
        ),
        (
            describe_instances_xml(&[instance_xml(
                "2026-11-30T12:00:00Z",
                "2026-11-30T12:00:00Z",
                "",
            )
            .replace("<rootDeviceName>/dev/xvda", "<rootDeviceName>/dev/sda1")]),
            "failed aws ec2 attestation: failed to locate the root device block mapping with name \
             \"/dev/sda1\"",
        ),
    ];
    for (xml, want) in cases {
        let fake = FakeAws::start(move |_| (200, xml.clone()));
        let v = AwsIidVerifier::new(config(None, certs.clone(), &fake)).unwrap();
        assert_eq!(refusal(&v, &p), (Internal, want.to_owned()));
    }
    // An instance-store root is not checked.
    let store = describe_instances_xml(&[instance_xml(
        "2026-11-30T12:05:00.000Z",
        "2026-11-30T12:00:00.000Z",
        "",
    )
    .replace("<rootDeviceType>ebs", "<rootDeviceType>instance-store")]);
    let fake = FakeAws::start(move |_| (200, store.clone()));
    assert!(attest(&AwsIidVerifier::new(config(None, certs, &fake)).unwrap(), &p).is_ok());
}

#[test]
fn api_failures_are_refused_with_spire_texts() {
    use RefusalCode::Internal;
    let aws = signer("aws us-west-2");
    let certs = vec![(KeyType::Rsa2048, "us-west-2", &aws)];
    let p = payload(DOCUMENT, "", &aws.pkcs7(DOCUMENT, |_| {}));
    let missing = FakeAws::start(|_| {
        (
            400,
            "<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The \
             instance ID 'i-0b22a22eec53b9321' does not exist</Message></Error></Errors>\
             <RequestID>req-1</RequestID></Response>"
                .into(),
        )
    });
    let v = AwsIidVerifier::new(config(None, certs.clone(), &missing)).unwrap();
    assert_eq!(
        refusal(&v, &p),
        (
            Internal,
            "failed to describe instance: operation error EC2: DescribeInstances, https response \
             error StatusCode: 400, RequestID: req-1, api error InvalidInstanceID.NotFound: The \
             instance ID 'i-0b22a22eec53b9321' does not exist"
                .into()
        )
    );

    let profile = |arn: &str| {
        let extra = format!("<iamInstanceProfile><arn>{arn}</arn></iamInstanceProfile>");
        describe_instances_xml(&[instance_xml(
            "2026-11-30T12:00:00Z",
            "2026-11-30T12:00:00Z",
            &extra,
        )])
    };
    let no_iam = profile(PROFILE_ARN);
    let fake = FakeAws::start(move |r| match r.params()["Action"].as_str() {
        "GetInstanceProfile" => (
            404,
            "<ErrorResponse><Error><Code>NoSuchEntity</Code><Message>Instance Profile \
             blog-profile cannot be found.</Message></Error><RequestId>req-2</RequestId>\
             </ErrorResponse>"
                .into(),
        ),
        _ => (200, no_iam.clone()),
    });
    let v = AwsIidVerifier::new(config(None, certs.clone(), &fake)).unwrap();
    assert_eq!(
        refusal(&v, &p),
        (
            Internal,
            "failed to get intance profile: operation error IAM: GetInstanceProfile, https \
             response error StatusCode: 404, RequestID: req-2, NoSuchEntity: Instance Profile \
             blog-profile cannot be found."
                .into()
        )
    );
    for (arn, want) in [
        ("instance-profile/x", "failed to parse arn: invalid prefix"),
        ("arn:aws:iam::123", "failed to parse arn: not enough sections"),
        ("arn:aws:iam::123:role/x", "arn is not for an instance profile"),
    ] {
        let xml = profile(arn);
        let fake = FakeAws::start(move |_| (200, xml.clone()));
        let v = AwsIidVerifier::new(config(None, certs.clone(), &fake)).unwrap();
        assert_eq!(refusal(&v, &p), (Internal, want.to_owned()), "{arn}");
    }

    let mut c = config(None, certs, &plain_ec2());
    c.api = AwsApiSettings::default();
    let (code, message) = refusal(&AwsIidVerifier::new(c).unwrap(), &p);
    assert_eq!(code, Internal);
    assert!(
        message.starts_with(
            "failed to describe instance: operation error EC2: DescribeInstances, get identity: \
             get credentials: "
        ),
        "{message}"
    );
}

#[test]
fn instance_profile_names_are_the_last_path_element() {
    assert_eq!(instance_profile_name(PROFILE_ARN).unwrap(), "blog-profile");
    assert_eq!(instance_profile_name("arn:aws:iam::1:instance-profile:p").unwrap(), "p");
    assert_eq!(
        instance_profile_name("arn:aws:iam::1:instance-profile/").unwrap_err(),
        "arn is not for an instance profile"
    );
}

#[test]
fn endpoint_keeps_scheme_host_and_port_only() {
    let e = Endpoint::parse("http://169.254.169.254/latest").unwrap();
    assert_eq!(
        (e.authority.as_str(), e.host.as_str(), e.port),
        ("169.254.169.254", "169.254.169.254", 80)
    );
    let e = Endpoint::parse("http://[fd00:ec2::254]:8080").unwrap();
    assert_eq!(
        (e.authority.as_str(), e.host.as_str(), e.port),
        ("[fd00:ec2::254]:8080", "fd00:ec2::254", 8080)
    );
    assert!(Endpoint::parse("https://169.254.169.254").unwrap_err().contains("over http only"));
    assert!(
        AwsIidAttestor::new(AwsIidAgentConfig { ec2_metadata_endpoint: Some("nope".into()) })
            .is_err()
    );
}

/// One canned answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, &'static str)>, String);
/// One request seen: method, path, token header.
type Seen = (String, String, Option<String>);

/// A fake IMDS on 127.0.0.1 answering `answers` in order (status, extra headers, body); the
/// requests it saw (method, path, token header).
fn fake_imds(answers: Vec<Answer>) -> (u16, std::thread::JoinHandle<Vec<Seen>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (status, headers, body) in answers {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, path) =
                (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned());
            let mut token = None;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case(TOKEN_HEADER)
                {
                    token = Some(v.trim().to_owned());
                }
            }
            seen.push((method, path, token));
            let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            stream.write_all(out.as_bytes()).unwrap();
        }
        seen
    });
    (port, handle)
}

#[test]
fn agent_reads_imds_with_a_session_token() {
    let (port, imds) = fake_imds(vec![
        (200, vec![(TOKEN_TTL_HEADER, "300")], "tok".into()),
        (200, vec![], DOCUMENT.into()),
        (200, vec![], "c2ln".into()),
        (200, vec![], "cGtjczc=".into()),
    ]);
    let a = AwsIidAttestor::new(AwsIidAgentConfig {
        ec2_metadata_endpoint: Some(format!("http://127.0.0.1:{port}/latest")),
    })
    .unwrap();
    assert_eq!(a.payload().unwrap(), payload(DOCUMENT, "c2ln", "cGtjczc="));
    let tok = Some("tok".to_owned());
    let seen = imds.join().unwrap();
    assert_eq!(
        seen,
        [
            ("PUT".into(), "/latest/api/token".into(), None),
            ("GET".into(), "/latest/dynamic/instance-identity/document".into(), tok.clone()),
            ("GET".into(), "/latest/dynamic/instance-identity/signature".into(), tok.clone()),
            ("GET".into(), "/latest/dynamic/instance-identity/rsa2048".into(), tok),
        ]
    );
    assert!(matches!(a.answer(b"x"), Err(NodeAttestError::UnexpectedChallenge)));
}

#[test]
fn agent_falls_back_to_imdsv1_and_reports_failures() {
    let (port, imds) = fake_imds(vec![
        (403, vec![], String::new()),
        (200, vec![], DOCUMENT.into()),
        (404, vec![], String::new()),
    ]);
    let a = AwsIidAttestor::new(AwsIidAgentConfig {
        ec2_metadata_endpoint: Some(format!("http://127.0.0.1:{port}")),
    })
    .unwrap();
    let e = a.payload().unwrap_err();
    assert!(e.to_string().contains("/latest/dynamic/instance-identity/signature"), "{e}");
    let seen = imds.join().unwrap();
    assert_eq!(seen[1], ("GET".into(), "/latest/dynamic/instance-identity/document".into(), None));
}
