#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! aws_iid node attestation with SPIRE v1.13.3, real processes on 127.0.0.1, instance identity
//! documents signed here by a test "region" (RSA-2048 PKCS#7 and RSA-1024 signatures made with
//! the `openssl` command line, as AWS makes them) and served by a fake IMDS on 127.0.0.1, and
//! a fake EC2 + IAM Query API on 127.0.0.1 (reached through `AWS_ENDPOINT_URL`) that checks
//! each request's SigV4 signature. Needs Go (to build SPIRE) and `openssl`.
//!
//! spire-server verifies documents only against AWS's certificates compiled into it (its test
//! hook is not reachable from configuration), so it cannot accept a document signed here:
//! ward-agent → spire-server is checked to fail exactly that way, and ward-agent's payload is
//! compared byte for byte with spire-agent's instead.
//! 1. spire-agent's aws_iid plugin and ward-agent's attestor read the same IMDS with the same
//!    requests (token first) and produce the same payload bytes;
//! 2. spire-agent with its own plugin attests to ward-server (which trusts the test region's
//!    certificates); `spire-server agent show` prints the agent ID
//!    `aws_iid/<account>/<region>/<instance>`, type aws_iid, not re-attestable, the
//!    document's selectors and the instance's tag, security group and IAM role selectors from
//!    the fake API, which saw one signed DescribeInstances and one signed GetInstanceProfile;
//! 3. a second attestation of that instance is refused (trust on first use), asking EC2 but not
//!    IAM, as SPIRE does, until the agent is evicted; then ward-agent attests with the same
//!    document and is shown the same way;
//! 4. bad evidence — a forged PKCS#7 or RSA-1024 signature, a truncated payload, no signature,
//!    an unknown region, a document that is not the one signed — is refused by ward-server with
//!    the code and message spire-server gives for the same payload (where spire-server can
//!    check it; otherwise with SPIRE's text from its source); nothing is stored and the server
//!    keeps serving;
//! 5. what the AWS API answers — a root volume attached five minutes after the network
//!    interface, an instance EC2 does not know, an instance profile IAM does not know — is
//!    refused with SPIRE's code and message (from its source: spire-server cannot get that far
//!    with a test document), nothing stored;
//! 6. spire-server cannot verify a test document: ward-agent's evidence is refused the way
//!    spire-server refuses documents of regions it has no certificate for;
//! 7. so the AWS SDK for Go v2 at SPIRE's versions (`aws-sdk-probe`, configured as
//!    spire-server configures it) makes the same calls to the same fake: its requests have the
//!    same method, path, content type, signing service and region, and body as ward-server's,
//!    ward-server signs a subset of the headers it signs, and the SDK's error texts for the
//!    unknown instance and profile are the ones ward-server put in its refusals.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::aws_iid::{AttestationData, AwsIidAgentConfig, AwsIidAttestor};
use ward_tests::agent::{AgentDirs, wait_healthy};
use ward_tests::aws_api::{
    ACCESS_KEY_ID, AwsApiRequest, FakeAwsApi, FakeInstance, SECRET_ACCESS_KEY, aws_sdk_probe,
    run_probe,
};
use ward_tests::aws_iid::{FakeImds, Identity, TestRegion, document};
use ward_tests::node_attestation::scenario::{ServerPair, ready_pair};
use ward_tests::node_attestation::{
    Procs, Tampered, agent_ids, agent_show, plugin_block, refusal, run_scenario,
    start_spire_agent_with_attestor, start_spire_server_with_attestor,
    start_ward_agent_with_attestor, start_ward_server_with_attestor, truncated, wait_attested,
};
use ward_tests::payload_capture::capture_spire_agent_payload;
use ward_tests::server::ServerOptions;
use ward_tests::spire::SpireBins;
use ward_tests::{quoted, quoted_path};

const TD: &str = "example.org";
const ACCOUNT: &str = "123456789012";
/// The region the test keys sign for; ward-server is given its certificates.
const TEST_REGION: &str = "us-test-1";
/// A real region: both servers verify its documents against AWS's certificate.
const AWS_REGION: &str = "us-west-2";
const INSTANCE: &str = "i-0a1b2c3d4e5f60718";
/// An instance whose root volume was attached five minutes after its network interface.
const LATE_ROOT_INSTANCE: &str = "i-0a1b2c3d4e5f60719";
/// An instance whose instance profile IAM does not know.
const NO_PROFILE_INSTANCE: &str = "i-0a1b2c3d4e5f6071a";
/// An instance EC2 does not know.
const UNKNOWN_INSTANCE: &str = "i-0a1b2c3d4e5f6071b";
const PROFILE_ARN: &str = "arn:aws:iam::123456789012:instance-profile/ward/blog-profile";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/Blog";

fn agent_id(region: &str, instance: &str) -> String {
    format!("spiffe://{TD}/spire/agent/aws_iid/{ACCOUNT}/{region}/{instance}")
}

fn spire_agent_block(imds: &FakeImds) -> String {
    plugin_block("aws_iid", &[("ec2_metadata_endpoint", quoted(&imds.endpoint()))])
}

fn ward_attestor(imds: &FakeImds) -> Arc<dyn NodeAttestor> {
    Arc::new(
        AwsIidAttestor::new(AwsIidAgentConfig { ec2_metadata_endpoint: Some(imds.endpoint()) })
            .unwrap(),
    )
}

/// An attestor sending `payload` as it is.
fn sending(imds: &FakeImds, payload: Vec<u8>) -> Arc<dyn NodeAttestor> {
    Tampered::payload(ward_attestor(imds), Box::new(move |_| payload.clone()))
}

fn payload(document: &str, signature: &str, rsa2048: &str) -> Vec<u8> {
    AttestationData::new(document, signature, rsa2048).to_go_json()
}

#[test]
fn aws_iid_attestation_interoperates_with_spire() {
    run_scenario("aws_iid", "aws", scenario);
}

fn scenario(
    root: &Path,
    spire: &SpireBins,
    ward_bin: &Path,
    agent_bin: &Path,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    eprintln!("0. a test region's keys, a signed document served by a fake IMDS, both servers");
    let region = TestRegion::new(&root.join("keys"), TEST_REGION)?;
    let doc = document(ACCOUNT, TEST_REGION, INSTANCE);
    let identity = Identity::signed(&region, doc.clone())?;
    let imds = FakeImds::start(identity.clone())?;
    let api = FakeAwsApi::start()?;
    api.add_instance(
        INSTANCE,
        FakeInstance {
            tags: vec![("name".into(), "blog".into()), ("team".into(), "id & access".into())],
            security_groups: vec![("sg-01234567".into(), "blog".into())],
            instance_profile_arn: Some(PROFILE_ARN.into()),
            root_attached_after: 30,
        },
    );
    api.add_profile("blog-profile", &[ROLE_ARN]);
    api.add_instance(
        LATE_ROOT_INSTANCE,
        FakeInstance { root_attached_after: 300, ..FakeInstance::default() },
    );
    api.add_instance(
        NO_PROFILE_INSTANCE,
        FakeInstance {
            instance_profile_arn: Some(
                "arn:aws:iam::123456789012:instance-profile/gone-profile".into(),
            ),
            ..FakeInstance::default()
        },
    );
    let spire_server = procs.spire_server.insert(start_spire_server_with_attestor(
        &spire.server,
        &[],
        &root.join("spire-server"),
        &ServerOptions::new(TD),
        &plugin_block("aws_iid", &[]),
    )?);
    let ward_toml = format!(
        "[node_attestors.aws_iid]\naccess_key_id = {}\nsecret_access_key = {}\n\
         [node_attestors.aws_iid.rsa2048_certificates]\n{} = {}\n\
         [node_attestors.aws_iid.rsa1024_certificates]\n{} = {}\n",
        quoted(ACCESS_KEY_ID),
        quoted(SECRET_ACCESS_KEY),
        quoted(TEST_REGION),
        quoted_path(&region.rsa2048_cert),
        quoted(TEST_REGION),
        quoted_path(&region.rsa1024_cert),
    );
    let launcher = ["env".to_owned(), format!("AWS_ENDPOINT_URL={}", api.url())];
    let ward_server = procs.ward_server.insert(start_ward_server_with_attestor(
        ward_bin,
        &launcher,
        &root.join("ward-server"),
        &ServerOptions::new(TD),
        &ward_toml,
    )?);
    let ServerPair { spire_on_spire, spire_on_ward, ward_cli, ward_bundle, .. } =
        ready_pair(spire, ward_bin, spire_server, ward_server, root)?;

    eprintln!("1. spire-agent's and ward-agent's payloads and IMDS requests are the same");
    let captured = capture_spire_agent_payload(
        &spire.agent,
        &[],
        &root.join("capture"),
        TD,
        &spire_agent_block(&imds),
    )?;
    let spire_requests = imds.take_requests();
    ensure!(captured.attestation_type == "aws_iid", "type {:?}", captured.attestation_type);
    let ours = ward_attestor(&imds).payload()?;
    let ward_requests = imds.take_requests();
    ensure!(
        ours == captured.payload,
        "ward-agent's payload:\n{}\nspire-agent's:\n{}",
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&captured.payload)
    );
    ensure!(ours == payload(&identity.document, &identity.signature, &identity.rsa2048));
    ensure!(ward_requests.len() == 4, "ward-agent's IMDS requests: {ward_requests:#?}");
    ensure!(
        spire_requests.get(..4) == Some(&ward_requests[..]),
        "IMDS requests, spire-agent: {spire_requests:#?}\nward-agent: {ward_requests:#?}"
    );
    ensure!(
        ward_requests[0].method == "PUT" && ward_requests[1..].iter().all(|r| r.with_token),
        "IMDSv2 token not used: {ward_requests:#?}"
    );

    eprintln!("2. spire-agent attests to ward-server with its own plugin");
    let id = agent_id(TEST_REGION, INSTANCE);
    let (mut agent, _) = start_spire_agent_with_attestor(
        &spire.agent,
        &[],
        &root.join("sa-ws"),
        TD,
        ward_server.port,
        &ward_bundle,
        &spire_agent_block(&imds),
    )?;
    wait_attested(&spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], &id)?;
    let by_spire_agent = agent_show(&spire_on_ward, &id)?;
    eprintln!("{by_spire_agent}");
    for line in [
        "Attestation type  : aws_iid".to_owned(),
        "Can re-attest     : false".to_owned(),
        format!("aws_iid:az:{TEST_REGION}a"),
        "aws_iid:image:id:ami-0123456789abcdef0".to_owned(),
        format!("aws_iid:instance:id:{INSTANCE}"),
        format!("aws_iid:region:{TEST_REGION}"),
        "aws_iid:tag:name:blog".to_owned(),
        "aws_iid:tag:team:id & access".to_owned(),
        "aws_iid:sg:id:sg-01234567".to_owned(),
        "aws_iid:sg:name:blog".to_owned(),
        format!("aws_iid:iamrole:{ROLE_ARN}"),
    ] {
        ensure!(by_spire_agent.contains(&line), "agent show lacks {line:?}:\n{by_spire_agent}");
    }
    agent.terminate(Duration::from_secs(10))?;
    let requests = api.take_requests();
    ensure!(requests.len() == 2, "AWS API requests: {requests:#?}");
    let ward_calls = requests.clone();
    let (ec2, iam) = (&requests[0], &requests[1]);
    ensure!(requests.iter().all(|r| r.signature_ok), "a bad signature: {requests:#?}");
    ensure!(
        (ec2.service.as_str(), ec2.region.as_str(), ec2.method.as_str(), ec2.target.as_str())
            == ("ec2", TEST_REGION, "POST", "/")
            && ec2.body
                == format!(
                    "Action=DescribeInstances&Filter.1.Name=instance-state-name&\
                     Filter.1.Value.1=pending&Filter.1.Value.2=running&InstanceId.1={INSTANCE}&\
                     Version=2016-11-15"
                )
            && ec2.content_type == "application/x-www-form-urlencoded",
        "DescribeInstances: {ec2:#?}"
    );
    ensure!(
        (iam.service.as_str(), iam.region.as_str()) == ("iam", TEST_REGION)
            && iam.body
                == "Action=GetInstanceProfile&InstanceProfileName=blog-profile&Version=2010-05-08",
        "GetInstanceProfile: {iam:#?}"
    );

    eprintln!("3. trust on first use: a second attestation is refused until the agent is evicted");
    let rt = tokio::runtime::Runtime::new()?;
    let again = rt.block_on(refusal(ward_server.port, TD, ward_attestor(&imds)));
    ensure!(
        again
            == (
                tonic::Code::PermissionDenied,
                "nodeattestor(aws_iid): attestation data has already been used to attest an agent"
                    .to_owned()
            ),
        "second attestation: {again:?}"
    );
    // As in SPIRE: DescribeInstances before the trust-on-first-use check, IAM only after it.
    let calls: Vec<String> = api
        .take_requests()
        .into_iter()
        .map(|r| r.params.get("Action").cloned().unwrap_or_default())
        .collect();
    ensure!(calls == ["DescribeInstances"], "AWS calls for the second attestation: {calls:?}");
    spire_on_ward.ok(&["agent", "evict"], &["-spiffeID", &id])?;
    let dirs = AgentDirs::new(root, "wa-ws");
    let toml =
        format!("[node_attestor.aws_iid]\nec2_metadata_endpoint = {}", quoted(&imds.endpoint()));
    let mut agent = start_ward_agent_with_attestor(
        agent_bin,
        &[],
        &dirs,
        TD,
        ward_server.port,
        &ward_bundle,
        &toml,
    )?;
    wait_healthy(agent_bin, &mut agent, &dirs.admin_socket)?;
    let by_ward_agent = agent_show(&spire_on_ward, &id)?;
    ensure!(
        by_ward_agent == by_spire_agent,
        "ward-agent -> ward-server:\n{by_ward_agent}\nspire-agent -> ward-server:\n{by_spire_agent}"
    );
    procs.agents.push(agent);

    eprintln!("4. bad evidence gets spire-server's code and message from ward-server");
    let aws_doc = document(ACCOUNT, AWS_REGION, INSTANCE);
    let nowhere_doc = document(ACCOUNT, "xx-nowhere-1", INSTANCE);
    let other_doc = document(ACCOUNT, TEST_REGION, "i-0ffffffffffffffff");
    let good = payload(&doc, &identity.signature, &identity.rsa2048);
    // (what, payload, whether spire-server can judge it the same way)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "PKCS#7 of a key that is not AWS's",
            payload(&aws_doc, "", &region.sign_pkcs7(&aws_doc)?),
            true,
        ),
        (
            "RSA-1024 signature of a key that is not AWS's",
            payload(&aws_doc, &region.sign_rsa1024(&aws_doc)?, ""),
            true,
        ),
        ("truncated payload", truncated(good.clone()), true),
        ("no signature", payload(&doc, "", ""), true),
        (
            "a region without a certificate",
            payload(&nowhere_doc, "", &region.sign_pkcs7(&nowhere_doc)?),
            true,
        ),
        (
            "RSA-1024 signature of another document",
            payload(&other_doc, &identity.signature, ""),
            true,
        ),
        ("PKCS#7 of another document", payload(&other_doc, "", &identity.rsa2048), false),
    ];
    let before_spire = agent_ids(&spire_on_spire)?;
    let before_ward = agent_ids(&spire_on_ward)?;
    for (what, bytes, comparable) in cases {
        let ward_says = rt.block_on(refusal(ward_server.port, TD, sending(&imds, bytes.clone())));
        let spire_says = rt.block_on(refusal(spire_server.port, TD, sending(&imds, bytes)));
        eprintln!("   {what}: ward-server {ward_says:?}, spire-server {spire_says:?}");
        ensure!(ward_says.0 != tonic::Code::Ok, "ward-server accepted {what}");
        if comparable {
            ensure!(
                ward_says == spire_says,
                "{what}: ward-server {ward_says:?}, spire-server {spire_says:?}"
            );
        } else {
            // SPIRE v1.15.0's check (v1.13.3 does not compare the document with the PKCS#7).
            ensure!(
                ward_says
                    == (
                        tonic::Code::InvalidArgument,
                        "nodeattestor(aws_iid): instance identity document does not match the \
                         verified PKCS7 content"
                            .to_owned()
                    ),
                "{what}: {ward_says:?}"
            );
        }
    }
    ensure!(agent_ids(&spire_on_spire)? == before_spire, "spire-server's agent list changed");
    ensure!(agent_ids(&spire_on_ward)? == before_ward, "ward-server's agent list changed");
    ward_cli.healthcheck().context("ward-server after the bad evidence")?;

    eprintln!("5. what the AWS API answers is refused with SPIRE's code and message");
    api.take_requests();
    let signed = |instance: &str| -> anyhow::Result<Vec<u8>> {
        let id = Identity::signed(&region, document(ACCOUNT, TEST_REGION, instance))?;
        Ok(payload(&id.document, &id.signature, &id.rsa2048))
    };
    let before_ward = agent_ids(&spire_on_ward)?;
    let late =
        rt.block_on(refusal(ward_server.port, TD, sending(&imds, signed(LATE_ROOT_INSTANCE)?)));
    ensure!(
        late == (
            tonic::Code::Internal,
            "nodeattestor(aws_iid): failed aws ec2 attestation: failed checking the disparity \
             device attach times, root BlockDeviceMapping and NetworkInterface[0] attach times \
             differ by 300 seconds"
                .to_owned()
        ),
        "a root volume attached late: {late:?}"
    );
    let unknown =
        rt.block_on(refusal(ward_server.port, TD, sending(&imds, signed(UNKNOWN_INSTANCE)?)));
    let no_profile =
        rt.block_on(refusal(ward_server.port, TD, sending(&imds, signed(NO_PROFILE_INSTANCE)?)));
    let requests = api.take_requests();
    ensure!(requests.len() == 4, "AWS API requests: {requests:#?}");
    ensure!(
        unknown
            == (
                tonic::Code::Internal,
                format!(
                    "nodeattestor(aws_iid): failed to describe instance: operation error EC2: \
                     DescribeInstances, https response error StatusCode: 400, RequestID: {}, api \
                     error InvalidInstanceID.NotFound: The instance ID '{UNKNOWN_INSTANCE}' does \
                     not exist",
                    requests[1].request_id
                )
            ),
        "an unknown instance: {unknown:?}"
    );
    ensure!(
        no_profile
            == (
                tonic::Code::Internal,
                format!(
                    "nodeattestor(aws_iid): failed to get intance profile: operation error IAM: \
                     GetInstanceProfile, https response error StatusCode: 404, RequestID: {}, \
                     NoSuchEntity: Instance Profile gone-profile cannot be found.",
                    requests[3].request_id
                )
            ),
        "an unknown instance profile: {no_profile:?}"
    );
    ensure!(agent_ids(&spire_on_ward)? == before_ward, "ward-server's agent list changed");
    ward_cli.healthcheck().context("ward-server after the AWS API refusals")?;

    eprintln!("6. spire-server cannot verify a test document: ward-agent's evidence is refused");
    let spire_says = rt.block_on(refusal(spire_server.port, TD, ward_attestor(&imds)));
    ensure!(
        spire_says
            == (
                tonic::Code::Internal,
                format!(
                    "nodeattestor(aws_iid): failed to load the AWS CA certificate for region \
                     {TEST_REGION:?}: unsupported region {TEST_REGION:?}"
                )
            ),
        "spire-server: {spire_says:?}"
    );
    drop(rt);

    eprintln!("7. the AWS SDK for Go v2, as spire-server uses it, sends the same calls");
    let probe = aws_sdk_probe()?;
    api.take_requests();
    let ok = run_probe(&probe, &api, "describe-instances", TEST_REGION, INSTANCE)?;
    let ok_profile = run_probe(&probe, &api, "get-instance-profile", TEST_REGION, "blog-profile")?;
    ensure!(
        (ok.as_str(), ok_profile.as_str()) == ("ok", "ok"),
        "the SDK's calls: {ok}, {ok_profile}"
    );
    let sdk_calls = api.take_requests();
    ensure!(sdk_calls.len() == 2, "the SDK's requests: {sdk_calls:#?}");
    for (sdk, ward) in sdk_calls.iter().zip(&ward_calls) {
        eprintln!(
            "   {}: signed headers, SDK {:?}, ward-server {:?}",
            sdk.params.get("Action").map(String::as_str).unwrap_or_default(),
            sdk.signed_headers,
            ward.signed_headers
        );
        let shape = |r: &AwsApiRequest| {
            (
                r.method.clone(),
                r.target.clone(),
                r.content_type.clone(),
                r.service.clone(),
                r.region.clone(),
                r.body.clone(),
                r.signature_ok,
            )
        };
        ensure!(
            shape(sdk) == shape(ward),
            "the SDK's request:\n{sdk:#?}\nward-server's:\n{ward:#?}"
        );
        ensure!(
            ward.signed_headers.iter().all(|h| sdk.signed_headers.contains(h)),
            "ward-server signs headers the SDK does not: {:?} vs {:?}",
            ward.signed_headers,
            sdk.signed_headers
        );
    }
    // The SDK's error texts, which spire-server puts after "failed to describe instance: " and
    // "failed to get intance profile: ".
    let unknown_sdk = run_probe(&probe, &api, "describe-instances", TEST_REGION, UNKNOWN_INSTANCE)?;
    let gone_sdk = run_probe(&probe, &api, "get-instance-profile", TEST_REGION, "gone-profile")?;
    let ids: Vec<String> = api.take_requests().into_iter().map(|r| r.request_id).collect();
    ensure!(ids.len() == 2, "the SDK's requests: {ids:?}");
    let as_ward = |text: &str, id: &str, wrapped: &str| {
        format!("nodeattestor(aws_iid): {wrapped}: {}", text.replace(id, "<id>"))
    };
    let unknown_ward = unknown.1.replace(&requests_id(&unknown.1), "<id>");
    ensure!(
        unknown_sdk.strip_prefix("error: ").map(|t| as_ward(
            t,
            &ids[0],
            "failed to describe instance"
        )) == Some(unknown_ward.clone()),
        "unknown instance, SDK: {unknown_sdk}\nward-server: {unknown_ward}"
    );
    let gone_ward = no_profile.1.replace(&requests_id(&no_profile.1), "<id>");
    ensure!(
        gone_sdk.strip_prefix("error: ").map(|t| as_ward(
            t,
            &ids[1],
            "failed to get intance profile"
        )) == Some(gone_ward.clone()),
        "unknown profile, SDK: {gone_sdk}\nward-server: {gone_ward}"
    );
    Ok(())
}

/// The request ID a refusal text names (`RequestID: <id>,`).
fn requests_id(text: &str) -> String {
    text.split("RequestID: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default()
        .to_owned()
}
