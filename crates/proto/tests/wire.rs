//! Exact encodings of SPIRE API messages, with field keys computed by hand as
//! `(field_number << 3) | wire_type` (0 = varint, 2 = length-delimited). A wrong field
//! number or type in `proto/` changes a key byte and fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use prost::Message;
use ward_proto::spire::api::server::agent::v1 as agent;
use ward_proto::spire::api::server::entry::v1 as entry;
use ward_proto::spire::api::server::svid::v1 as svid;
use ward_proto::spire::api::types;

/// Encodes `msg`, checks the bytes, and checks that decoding them gives `msg` back.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, want: &[u8]) {
    let got = msg.encode_to_vec();
    assert_eq!(got, want, "encoding of {msg:?}");
    assert_eq!(&M::decode(want).unwrap(), msg, "decoding of {want:02x?}");
}

fn id(td: &str, path: &str) -> Option<types::Spiffeid> {
    Some(types::Spiffeid { trust_domain: td.into(), path: path.into() })
}

#[test]
fn spiffe_id_and_selector_keys() {
    // trust_domain = 1 (0x0a), path = 2 (0x12).
    assert_wire(&id("td", "/a").unwrap(), &[0x0a, 2, b't', b'd', 0x12, 2, b'/', b'a']);
    // type = 1, value = 2.
    assert_wire(
        &types::Selector { r#type: "u".into(), value: "v".into() },
        &[0x0a, 1, b'u', 0x12, 1, b'v'],
    );
}

#[test]
fn attest_agent_request_params_and_challenge_response() {
    let req = agent::AttestAgentRequest {
        step: Some(agent::attest_agent_request::Step::Params(
            agent::attest_agent_request::Params {
                data: Some(types::AttestationData {
                    r#type: "join_token".into(),
                    payload: b"tok".to_vec(),
                }),
                params: Some(agent::AgentX509svidParams { csr: vec![1, 2] }),
            },
        )),
    };
    let mut want = vec![0x0a, 25]; // step.params = 1, 25 bytes
    want.extend([0x0a, 17]); // Params.data = 1
    want.extend([0x0a, 10]); // AttestationData.type = 1
    want.extend(b"join_token");
    want.extend([0x12, 3]); // AttestationData.payload = 2
    want.extend(b"tok");
    want.extend([0x12, 4]); // Params.params = 2
    want.extend([0x0a, 2, 1, 2]); // AgentX509SVIDParams.csr = 1
    assert_wire(&req, &want);

    let resp = agent::AttestAgentRequest {
        step: Some(agent::attest_agent_request::Step::ChallengeResponse(vec![7])),
    };
    assert_wire(&resp, &[0x12, 1, 7]); // step.challenge_response = 2
}

#[test]
fn attest_agent_response_result_and_challenge() {
    let resp = agent::AttestAgentResponse {
        step: Some(agent::attest_agent_response::Step::Result(
            agent::attest_agent_response::Result {
                svid: Some(types::X509svid {
                    cert_chain: vec![vec![0xaa]],
                    id: None,
                    expires_at: 1,
                    hint: String::new(),
                }),
                reattestable: true,
            },
        )),
    };
    // step.result = 1 { svid = 1 { cert_chain = 1, expires_at = 3 }, reattestable = 2 }
    assert_wire(&resp, &[0x0a, 9, 0x0a, 5, 0x0a, 1, 0xaa, 0x18, 1, 0x10, 1]);
    let challenge = agent::AttestAgentResponse {
        step: Some(agent::attest_agent_response::Step::Challenge(vec![5])),
    };
    assert_wire(&challenge, &[0x12, 1, 5]);
}

#[test]
fn x509_svid_keys() {
    let s = types::X509svid {
        cert_chain: vec![vec![1]],
        id: id("a", ""),
        expires_at: 2,
        hint: "h".into(),
    };
    // cert_chain = 1, id = 2, expires_at = 3, hint = 4 (0x22).
    assert_wire(&s, &[0x0a, 1, 1, 0x12, 3, 0x0a, 1, b'a', 0x18, 2, 0x22, 1, b'h']);
}

#[test]
fn entry_every_field_number() {
    let e = |f: &dyn Fn(&mut types::Entry)| {
        let mut e = types::Entry::default();
        f(&mut e);
        e
    };
    let cases: Vec<(types::Entry, Vec<u8>)> = vec![
        (e(&|e| e.id = "i".into()), vec![0x0a, 1, b'i']),
        (e(&|e| e.spiffe_id = id("a", "")), vec![0x12, 3, 0x0a, 1, b'a']),
        (e(&|e| e.parent_id = id("a", "")), vec![0x1a, 3, 0x0a, 1, b'a']),
        (
            e(&|e| {
                e.selectors = vec![types::Selector { r#type: "t".into(), value: String::new() }]
            }),
            vec![0x22, 3, 0x0a, 1, b't'],
        ),
        (e(&|e| e.x509_svid_ttl = 60), vec![0x28, 60]),
        (e(&|e| e.federates_with = vec!["f".into()]), vec![0x32, 1, b'f']),
        (e(&|e| e.admin = true), vec![0x38, 1]),
        (e(&|e| e.downstream = true), vec![0x40, 1]),
        (e(&|e| e.expires_at = 9), vec![0x48, 9]),
        (e(&|e| e.dns_names = vec!["d".into()]), vec![0x52, 1, b'd']),
        (e(&|e| e.revision_number = 11), vec![0x58, 11]),
        (e(&|e| e.store_svid = true), vec![0x60, 1]),
        (e(&|e| e.jwt_svid_ttl = 13), vec![0x68, 13]),
        (e(&|e| e.hint = "h".into()), vec![0x72, 1, b'h']),
        (e(&|e| e.created_at = 15), vec![0x78, 15]),
    ];
    for (msg, want) in cases {
        assert_wire(&msg, &want);
    }
    // The mask mirrors the entry's numbers 2..=15.
    let mask = types::EntryMask {
        spiffe_id: true,
        revision_number: true,
        created_at: true,
        ..Default::default()
    };
    assert_wire(&mask, &[0x10, 1, 0x58, 1, 0x78, 1]);
}

#[test]
fn sync_authorized_entries_messages() {
    let req = entry::SyncAuthorizedEntriesRequest {
        output_mask: Some(types::EntryMask { revision_number: true, ..Default::default() }),
        ids: vec!["x".into()],
    };
    // output_mask = 1 { revision_number = 11 }, ids = 2.
    assert_wire(&req, &[0x0a, 2, 0x58, 1, 0x12, 1, b'x']);

    let resp = entry::SyncAuthorizedEntriesResponse {
        entry_revisions: vec![entry::EntryRevision {
            id: "a".into(),
            revision_number: 2,
            created_at: 3,
        }],
        entries: vec![types::Entry { id: "b".into(), ..Default::default() }],
        more: true,
    };
    // entry_revisions = 1 { id = 1, revision_number = 2, created_at = 3 }, entries = 2, more = 3.
    assert_wire(
        &resp,
        &[0x0a, 7, 0x0a, 1, b'a', 0x10, 2, 0x18, 3, 0x12, 3, 0x0a, 1, b'b', 0x18, 1],
    );
}

#[test]
fn batch_new_x509_svid_messages() {
    let req = svid::BatchNewX509svidRequest {
        params: vec![svid::NewX509svidParams { entry_id: "e".into(), csr: vec![9] }],
    };
    // params = 1 { entry_id = 1, csr = 2 }.
    assert_wire(&req, &[0x0a, 6, 0x0a, 1, b'e', 0x12, 1, 9]);

    let resp = svid::BatchNewX509svidResponse {
        results: vec![svid::batch_new_x509svid_response::Result {
            status: Some(types::Status { code: 5, message: "x".into() }),
            svid: Some(types::X509svid { expires_at: 1, ..Default::default() }),
        }],
    };
    // results = 1 { status = 1 { code = 1, message = 2 }, svid = 2 { expires_at = 3 } }.
    assert_wire(&resp, &[0x0a, 11, 0x0a, 5, 0x08, 5, 0x12, 1, b'x', 0x12, 2, 0x18, 1]);
}

#[test]
fn bundle_keys() {
    let b = types::Bundle {
        trust_domain: "t".into(),
        x509_authorities: vec![types::X509Certificate { asn1: vec![1], tainted: true }],
        jwt_authorities: vec![types::JwtKey {
            public_key: vec![2],
            key_id: "k".into(),
            expires_at: 3,
            tainted: true,
        }],
        refresh_hint: 4,
        sequence_number: 5,
    };
    let want = [
        0x0a, 1, b't', // trust_domain = 1
        0x12, 5, 0x0a, 1, 1, 0x10, 1, // x509_authorities = 2 { asn1 = 1, tainted = 2 }
        0x1a, 10, 0x0a, 1, 2, 0x12, 1, b'k', 0x18, 3, 0x20,
        1, // jwt_authorities = 3 {1,2,3,4}
        0x20, 4, // refresh_hint = 4
        0x28, 5, // sequence_number = 5
    ];
    assert_wire(&b, &want);
    // BundleMask has no field 1.
    let mask =
        types::BundleMask { x509_authorities: true, sequence_number: true, ..Default::default() };
    assert_wire(&mask, &[0x10, 1, 0x28, 1]);
}

#[test]
fn agent_keys() {
    let a = types::Agent {
        id: id("a", ""),
        attestation_type: "j".into(),
        x509svid_serial_number: "1".into(),
        x509svid_expires_at: 4,
        selectors: vec![types::Selector { r#type: "s".into(), value: String::new() }],
        banned: true,
        can_reattest: true,
    };
    let want = [
        0x0a, 3, 0x0a, 1, b'a', // id = 1
        0x12, 1, b'j', // attestation_type = 2
        0x1a, 1, b'1', // x509svid_serial_number = 3
        0x20, 4, // x509svid_expires_at = 4
        0x2a, 3, 0x0a, 1, b's', // selectors = 5
        0x30, 1, // banned = 6
        0x38, 1, // can_reattest = 7
    ];
    assert_wire(&a, &want);
    let mask =
        types::AgentMask { attestation_type: true, can_reattest: true, ..Default::default() };
    assert_wire(&mask, &[0x10, 1, 0x38, 1]);
}

#[test]
fn join_token_keys() {
    assert_wire(
        &types::JoinToken { value: "v".into(), expires_at: 600 },
        // value = 1, expires_at = 2 (600 = varint 0xd8 0x04).
        &[0x0a, 1, b'v', 0x10, 0xd8, 0x04],
    );
    let req = agent::CreateJoinTokenRequest { ttl: 600, token: "t".into(), agent_id: id("a", "") };
    // ttl = 1, token = 2, agent_id = 3.
    assert_wire(&req, &[0x08, 0xd8, 0x04, 0x12, 1, b't', 0x1a, 3, 0x0a, 1, b'a']);
}

#[test]
fn permission_denied_details_and_enums() {
    use types::permission_denied_details::Reason;
    let d = types::PermissionDeniedDetails { reason: Reason::AgentMustReattest as i32 };
    assert_wire(&d, &[0x08, 5]);
    assert_eq!(Reason::AgentExpired as i32, 1);
    assert_eq!(Reason::AgentNotAttested as i32, 2);
    assert_eq!(Reason::AgentNotActive as i32, 3);
    assert_eq!(Reason::AgentBanned as i32, 4);
    assert_eq!(types::LogLevel::Trace as i32, 7);
    assert_eq!(types::LogLevel::Info as i32, 5);
    use ward_proto::spire::api::server::bundle::v1::batch_delete_federated_bundle_request::Mode;
    assert_eq!((Mode::Restrict as i32, Mode::Delete as i32, Mode::Dissociate as i32), (0, 1, 2));
}

#[test]
fn federation_relationship_oneof_keys() {
    use types::federation_relationship::BundleEndpointProfile;
    let r = types::FederationRelationship {
        trust_domain: "t".into(),
        bundle_endpoint_url: "u".into(),
        bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsSpiffe(
            types::HttpsspiffeProfile { endpoint_spiffe_id: "s".into() },
        )),
        trust_domain_bundle: Some(types::Bundle { trust_domain: "t".into(), ..Default::default() }),
    };
    // trust_domain = 1, bundle_endpoint_url = 2, https_spiffe = 4 { endpoint_spiffe_id = 1 },
    // trust_domain_bundle = 5.
    assert_wire(
        &r,
        &[0x0a, 1, b't', 0x12, 1, b'u', 0x22, 3, 0x0a, 1, b's', 0x2a, 3, 0x0a, 1, b't'],
    );
    let web = types::FederationRelationship {
        bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsWeb(types::HttpsWebProfile {})),
        ..Default::default()
    };
    assert_wire(&web, &[0x1a, 0]); // https_web = 3, empty message
}
