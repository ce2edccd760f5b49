use std::sync::Mutex;

use super::apiserver::{Node, ObjectMeta, Pod, PodSpec, PodStatus, UserInfo};
use super::*;

/// An API server that knows one token, one pod and one node.
#[derive(Debug, Default)]
struct FakeApi {
    reviews: Mutex<Vec<(String, Vec<String>)>>,
    status: Option<TokenReviewStatus>,
    review_error: Option<String>,
    node_uid: String,
}

impl KubeApi for FakeApi {
    fn validate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, String> {
        self.reviews.lock().unwrap().push((token.to_owned(), audiences.to_vec()));
        if let Some(e) = &self.review_error {
            return Err(e.clone());
        }
        Ok(self.status.clone().unwrap_or_default())
    }

    fn pod(&self, namespace: &str, name: &str) -> Result<Pod, String> {
        if (namespace, name) != ("spire", "agent-1") {
            return Err(format!("pods {name:?} not found"));
        }
        Ok(Pod {
            metadata: ObjectMeta {
                name: name.to_owned(),
                uid: "pod-uid".to_owned(),
                labels: [("app", "spire-agent"), ("tier", "infra")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            },
            spec: PodSpec { node_name: "node-a".to_owned() },
            status: PodStatus { host_ip: "10.1.2.3".to_owned() },
        })
    }

    fn node(&self, name: &str) -> Result<Node, String> {
        if name != "node-a" {
            return Err(format!("nodes {name:?} not found"));
        }
        Ok(Node {
            metadata: ObjectMeta {
                name: name.to_owned(),
                uid: self.node_uid.clone(),
                labels: [("zone", "z1"), ("rack", "r9")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            },
        })
    }
}

fn good_status() -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: true,
        user: UserInfo {
            username: "system:serviceaccount:spire:spire-agent".to_owned(),
            extra: [
                (POD_NAME_KEY.to_owned(), vec!["agent-1".to_owned()]),
                (POD_UID_KEY.to_owned(), vec!["pod-uid".to_owned()]),
            ]
            .into_iter()
            .collect(),
            ..UserInfo::default()
        },
        audiences: vec![DEFAULT_AUDIENCE.to_owned()],
        error: String::new(),
    }
}

fn cluster_config() -> K8sPsatClusterConfig {
    K8sPsatClusterConfig {
        service_account_allow_list: vec!["spire:spire-agent".to_owned()],
        audience: vec![DEFAULT_AUDIENCE.to_owned()],
        credentials: Credentials::InCluster,
        allowed_node_label_keys: vec!["zone".to_owned()],
        allowed_pod_label_keys: vec!["app".to_owned()],
    }
}

fn verifier(api: FakeApi) -> (K8sPsatVerifier, Arc<FakeApi>) {
    let api = Arc::new(api);
    let given = Arc::clone(&api);
    let config = K8sPsatServerConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        clusters: [("prod".to_owned(), cluster_config())].into_iter().collect(),
    };
    let v = K8sPsatVerifier::with_api(config, |_| Ok(given.clone() as Arc<dyn KubeApi>)).unwrap();
    (v, api)
}

fn good_api() -> FakeApi {
    FakeApi { status: Some(good_status()), node_uid: "node-uid".to_owned(), ..FakeApi::default() }
}

fn payload(cluster: &str, token: &str) -> Vec<u8> {
    AttestationData { cluster: cluster.to_owned(), token: token.to_owned() }.to_go_json()
}

fn refusal(v: &K8sPsatVerifier, payload: &[u8]) -> Refusal {
    match v.begin(payload, 0) {
        Err(r) => r,
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn attests_with_spire_agent_id_and_selectors() {
    let (v, api) = verifier(good_api());
    let Verification::Attested(a) = v.begin(&payload("prod", "tok"), 0).unwrap() else {
        panic!("no challenge expected");
    };
    assert_eq!(a.agent_id.to_string(), "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid");
    assert!(a.can_reattest);
    assert_eq!(
        a.selector_values,
        [
            "cluster:prod",
            "agent_ns:spire",
            "agent_sa:spire-agent",
            "agent_pod_name:agent-1",
            "agent_pod_uid:pod-uid",
            "agent_node_ip:10.1.2.3",
            "agent_node_name:node-a",
            "agent_node_uid:node-uid",
            "agent_node_label:zone:z1",
            "agent_pod_label:app:spire-agent",
        ]
    );
    assert_eq!(*api.reviews.lock().unwrap(), [("tok".to_owned(), vec!["spire-server".to_owned()])]);
}

#[test]
fn refuses_bad_payloads_with_spires_codes_and_messages() {
    let (v, api) = verifier(good_api());
    let cases: [(&[u8], RefusalCode, &str); 5] = [
        (
            b"{\"cluster\":\"prod\",\"tok",
            RefusalCode::InvalidArgument,
            "failed to unmarshal data payload: unexpected end of JSON input",
        ),
        (b"{\"token\":\"t\"}", RefusalCode::InvalidArgument, "missing cluster in attestation data"),
        (
            b"{\"cluster\":\"prod\"}",
            RefusalCode::InvalidArgument,
            "missing token in attestation data",
        ),
        (
            b"{\"cluster\":\"dev\",\"token\":\"t\"}",
            RefusalCode::InvalidArgument,
            "not configured for cluster \"dev\"",
        ),
        (
            b"{\"cluster\":null,\"token\":\"t\"}",
            RefusalCode::InvalidArgument,
            "missing cluster in attestation data",
        ),
    ];
    for (p, code, message) in cases {
        assert_eq!(refusal(&v, p), Refusal::new(code, message), "{}", String::from_utf8_lossy(p));
    }
    assert!(api.reviews.lock().unwrap().is_empty(), "no review for a malformed payload");
}

#[test]
fn refuses_what_the_review_refuses() {
    let (v, _) = verifier(FakeApi {
        review_error: Some("token review API response contains an error: expired".to_owned()),
        ..good_api()
    });
    assert_eq!(
        refusal(&v, &payload("prod", "t")),
        internal(
            "unable to validate token with TokenReview API: token review API response contains \
             an error: expired"
        )
    );

    let mut unauthenticated = good_status();
    unauthenticated.authenticated = false;
    let (v, _) = verifier(FakeApi { status: Some(unauthenticated), ..good_api() });
    assert_eq!(
        refusal(&v, &payload("prod", "t")),
        refuse(
            RefusalCode::PermissionDenied,
            "token not authenticated according to TokenReview API"
        )
    );

    let mut other_sa = good_status();
    other_sa.user.username = "system:serviceaccount:default:intruder".to_owned();
    let (v, _) = verifier(FakeApi { status: Some(other_sa), ..good_api() });
    assert_eq!(
        refusal(&v, &payload("prod", "t")),
        refuse(
            RefusalCode::PermissionDenied,
            "\"default:intruder\" is not an allowed service account"
        )
    );

    let mut bad_user = good_status();
    bad_user.user.username = "admin".to_owned();
    let (v, _) = verifier(FakeApi { status: Some(bad_user), ..good_api() });
    assert_eq!(
        refusal(&v, &payload("prod", "t")),
        internal(
            "fail to parse username from token review status: unexpected username format: admin"
        )
    );

    let mut unbound = good_status();
    unbound.user.extra.clear();
    let (v, _) = verifier(FakeApi { status: Some(unbound), ..good_api() });
    assert_eq!(
        refusal(&v, &payload("prod", "t")),
        internal("fail to get pod name from token review status: missing pod name")
    );

    let mut two_uids = good_status();
    two_uids.user.extra.insert(POD_UID_KEY.to_owned(), vec!["a".into(), "b".into()]);
    let (v, _) = verifier(FakeApi { status: Some(two_uids), ..good_api() });
    assert_eq!(
        refusal(&v, &payload("prod", "t")),
        internal("fail to get pod UID from token review status: expected 1 UID but got: 2")
    );

    let mut gone = good_status();
    gone.user.extra.insert(POD_NAME_KEY.to_owned(), vec!["agent-2".into()]);
    let (v, _) = verifier(FakeApi { status: Some(gone), ..good_api() });
    assert_eq!(
        refusal(&v, &payload("prod", "t")),
        internal("fail to get pod from k8s API server: pods \"agent-2\" not found")
    );

    let (v, _) = verifier(FakeApi { node_uid: String::new(), ..good_api() });
    assert_eq!(refusal(&v, &payload("prod", "t")), internal("node UID is empty"));
}

#[test]
fn a_cluster_needs_an_allowed_service_account() {
    let mut c = cluster_config();
    c.service_account_allow_list.clear();
    let config = K8sPsatServerConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        clusters: [("prod".to_owned(), c)].into_iter().collect(),
    };
    let err = K8sPsatVerifier::with_api(config, |_| Ok(Arc::new(good_api()) as Arc<dyn KubeApi>))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "k8s_psat: cluster \"prod\" configuration must have at least one service account allowed"
    );
}

#[test]
fn the_agent_sends_the_token_file_as_spire_agent_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "eyJ.a<b>&c\n").unwrap();
    let a = K8sPsatAttestor::new(K8sPsatAgentConfig { cluster: "prod".into(), token_path: path })
        .unwrap();
    assert_eq!(a.name(), "k8s_psat");
    assert_eq!(
        String::from_utf8(a.payload().unwrap()).unwrap(),
        r#"{"cluster":"prod","token":"eyJ.a\u003cb\u003e\u0026c\n"}"#
    );
    assert!(matches!(a.answer(b"x"), Err(NodeAttestError::UnexpectedChallenge)));

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let a = K8sPsatAttestor::new(K8sPsatAgentConfig { cluster: "prod".into(), token_path: empty })
        .unwrap();
    assert!(a.payload().unwrap_err().to_string().contains("is empty"));
    let missing = dir.path().join("missing");
    let a = K8sPsatAttestor::new(K8sPsatAgentConfig { cluster: "c".into(), token_path: missing })
        .unwrap();
    assert!(matches!(a.payload(), Err(NodeAttestError::Evidence { .. })));
    assert!(
        K8sPsatAttestor::new(K8sPsatAgentConfig {
            cluster: String::new(),
            token_path: "/t".into()
        })
        .is_err()
    );
}

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn kubeconfig_current_context_with_token_or_client_certificate() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem()).unwrap();
    std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["admin".into()])
        .unwrap()
        .self_signed(&client_key)
        .unwrap();
    let cert_data = base64::engine::general_purpose::STANDARD.encode(client_cert.pem());
    let key_data = base64::engine::general_purpose::STANDARD.encode(client_key.serialize_pem());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: admin\nclusters:\n\
         - name: c1\n  cluster:\n    server: https://127.0.0.1:6443/prefix/\n    \
         certificate-authority: ca.pem\n\
         users:\n- name: reader\n  user:\n    tokenFile: token\n\
         - name: admin\n  user:\n    client-certificate-data: {cert_data}\n    \
         client-key-data: {key_data}\n\
         contexts:\n- name: read\n  context:\n    cluster: c1\n    user: reader\n\
         - name: admin\n  context:\n    cluster: c1\n    user: admin\n"
    );
    let path = dir.path().join("config");
    std::fs::write(&path, &kubeconfig).unwrap();
    let conn = apiserver::Connection::from_kubeconfig(&path).unwrap();
    assert_eq!(conn.url("/api/v1/nodes/x"), "https://127.0.0.1:6443/prefix/api/v1/nodes/x");

    std::fs::write(&path, kubeconfig.replace("current-context: admin", "current-context: read"))
        .unwrap();
    let conn = apiserver::Connection::from_kubeconfig(&path).unwrap();
    assert!(!format!("{conn:?}").contains("s3cret"));

    std::fs::write(&path, kubeconfig.replace("current-context: admin", "current-context: gone"))
        .unwrap();
    let err = apiserver::Connection::from_kubeconfig(&path).unwrap_err();
    assert_eq!(err, "context \"gone\" is not in the kubeconfig");

    std::fs::write(&path, kubeconfig.replace("https://", "http://")).unwrap();
    let err = apiserver::Connection::from_kubeconfig(&path).unwrap_err();
    assert!(err.contains("only https://"), "{err}");
}

#[test]
fn api_errors_read_like_client_gos() {
    let answer = apiserver::Answer {
        status: 404,
        body: bytes::Bytes::from_static(
            br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" not found","reason":"NotFound","code":404}"#,
        ),
    };
    assert_eq!(apiserver::answer_error(&answer), "pods \"x\" not found");
    let answer = apiserver::Answer { status: 401, body: bytes::Bytes::new() };
    assert_eq!(apiserver::answer_error(&answer), "Unauthorized");
}

#[test]
fn reading_an_unreachable_api_server_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "current-context: c\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
         certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: t\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n",
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(ca_pem())
        }
    );
    let path = dir.path().join("config");
    std::fs::write(&path, config).unwrap();
    let client = ApiServerClient::new(Credentials::KubeConfig(path)).unwrap();
    let err = client.node("n").unwrap_err();
    assert!(
        err.starts_with(&format!(
            "unable to query nodes API: Get \"https://127.0.0.1:{port}/api/v1/nodes/n\": dial tcp"
        )),
        "{err}"
    );
    assert_eq!(client.node("").unwrap_err(), "empty node name");
}
