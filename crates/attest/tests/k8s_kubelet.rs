//! The `k8s` attestor against a fake kubelet: a real HTTPS (or HTTP) server on 127.0.0.1
//! serving a kubelet `/pods` list, with certificates made here by rcgen, and a proc file
//! system in a temporary directory holding the cgroup files of the processes attested. One
//! test moves a real process into a cgroup named as containerd names a container's (needs
//! root) and attests it through the kernel's own `/proc`.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on any error")]

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use ward_attest::k8s::{K8sConfig, K8sError};
use ward_attest::{AttestError, K8sAttestor, ProcFs, WorkloadAttestor};

const POD_LIST: &str = include_str!("data/kubelet_pods.json");

const POD_UID: &str = "8e6ca02c-ec29-4563-abf0-785201df621d";
const APP_CID: &str = "29425aaed69f6aaf60ce26d7ad49d80b4bf0843a563d5bc115b128fc6d1bf53b";
const INIT_CID: &str = "d48a3ab2a225b835eeb30f7239b4173092dae67f404718f6d7f16acf66fe7432";
const JOB_POD_UID: &str = "fa1940c8-6cad-400a-81eb-b6970e6fd52e";
const UNKNOWN_CID: &str = "0000000000000000000000000000000000000000000000000000000000000abc";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.agent-service-account";

/// The pod selectors of the `checkout` pod.
const POD_SELECTORS: &[&str] = &[
    "k8s:sa:checkout",
    "k8s:ns:shop",
    "k8s:node-name:worker-1",
    "k8s:pod-uid:8e6ca02c-ec29-4563-abf0-785201df621d",
    "k8s:pod-name:checkout-6d8f9b7c5-x2k4p",
    "k8s:pod-image-count:2",
    "k8s:pod-init-image-count:1",
    "k8s:pod-image:registry.example.com/shop/checkout:1.4.2",
    "k8s:pod-image:registry.example.com/shop/checkout@sha256:c6aa8b385a725ee7b58292e07d5bdc03f2b84ec1cc57ea8e196735652f1d2dc6",
    "k8s:pod-image:docker.io/envoyproxy/envoy:v1.31.0",
    "k8s:pod-image:docker.io/envoyproxy/envoy@sha256:fc52db0fa15f974d7941f2b54eec4b567ad6663f19734488592929cce371171f",
    "k8s:pod-init-image:registry.example.com/shop/migrate:1.4.2",
    "k8s:pod-init-image:registry.example.com/shop/migrate@sha256:6cd057c909fa25f563a34c7c162c2c7552b9461579338eb63c2ec5e9004dcb60",
    "k8s:pod-label:app:checkout",
    "k8s:pod-label:pod-template-hash:6d8f9b7c5",
    "k8s:pod-label:tier:backend",
    "k8s:pod-owner:ReplicaSet:checkout-6d8f9b7c5",
    "k8s:pod-owner-uid:ReplicaSet:4aade2b4-f323-43ba-be9a-c80ff4227da6",
];

/// The container selectors of its `app` container.
const APP_SELECTORS: &[&str] = &[
    "k8s:container-name:app",
    "k8s:container-image:registry.example.com/shop/checkout:1.4.2",
    "k8s:container-image:registry.example.com/shop/checkout@sha256:c6aa8b385a725ee7b58292e07d5bdc03f2b84ec1cc57ea8e196735652f1d2dc6",
];

fn set(selectors: &[&str]) -> BTreeSet<String> {
    selectors.iter().map(|s| (*s).to_owned()).collect()
}

fn strings(selectors: &[ward_core::Selector]) -> BTreeSet<String> {
    selectors.iter().map(ToString::to_string).collect()
}

/// What the fake kubelet checks and answers.
#[derive(Default)]
struct KubeletState {
    /// Answers to give in turn; the last one is repeated.
    bodies: VecDeque<String>,
    /// The `Authorization` header of every request, in order.
    auth_headers: Vec<Option<String>>,
    /// Whether each connection presented a client certificate.
    client_certs: Vec<bool>,
    /// The token required, if any.
    required_token: Option<String>,
}

/// A fake kubelet on 127.0.0.1.
struct FakeKubelet {
    addr: SocketAddr,
    state: Arc<Mutex<KubeletState>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        // Stops the server without blocking, so a test may drop it inside a runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl FakeKubelet {
    /// Starts the server; with `tls`, HTTPS with that server configuration.
    fn start(tls: Option<rustls::ServerConfig>, required_token: Option<&str>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(KubeletState {
            required_token: required_token.map(str::to_owned),
            bodies: VecDeque::from([POD_LIST.to_owned()]),
            ..KubeletState::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let served = Arc::clone(&state);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let state = Arc::clone(&served);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            // A failed handshake (the client refused our certificate) just
                            // closes the connection.
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let has_cert = tls.get_ref().1.peer_certificates().is_some();
                            state.lock().unwrap().client_certs.push(has_cert);
                            serve(TokioIo::new(tls), state).await;
                        }
                        None => serve(TokioIo::new(tcp), state).await,
                    }
                });
            }
        });
        Self { addr, state, runtime: Some(runtime) }
    }

    fn set_bodies(&self, bodies: impl IntoIterator<Item = String>) {
        self.state.lock().unwrap().bodies = bodies.into_iter().collect();
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().auth_headers.len()
    }

    fn auth_headers(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().auth_headers.clone()
    }
}

async fn serve<S>(io: TokioIo<S>, state: Arc<Mutex<KubeletState>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let state = Arc::clone(&state);
        async move {
            let mut state = state.lock().unwrap();
            let auth = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            state.auth_headers.push(auth.clone());
            let respond = |status: u16, body: String| {
                hyper::Response::builder().status(status).body(Full::new(Bytes::from(body)))
            };
            if req.uri().path() != "/pods" {
                return respond(404, "404 page not found\n".to_owned());
            }
            if let Some(token) = &state.required_token {
                let expected = format!("Bearer {token}");
                if auth.as_deref() != Some(expected.as_str()) {
                    return respond(401, "Unauthorized\n".to_owned());
                }
            }
            let body = if state.bodies.len() > 1 {
                state.bodies.pop_front().unwrap()
            } else {
                state.bodies.front().cloned().unwrap_or_default()
            };
            respond(200, body)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}

/// A CA and a kubelet serving certificate it signed.
struct Pki {
    ca_pem: String,
    server_config: rustls::ServerConfig,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A new CA, and a kubelet certificate for `names` signed by it. With `client_ca`, the
/// server requires client certificates signed by that CA.
fn pki(names: &[&str], client_ca: Option<&str>) -> Pki {
    let ca = ca("kubelet-ca");
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server_config = builder
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    Pki { ca_pem: ca.pem(), server_config }
}

/// A self-signed CA whose subject is `name` and a random serial-like suffix, so two CAs made
/// here never share a name.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let suffix: u64 = rand_suffix();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} {suffix:x}"));
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A temporary directory with a proc file system and configuration files.
struct Host {
    dir: TempDir,
}

impl Host {
    fn new() -> Self {
        let host = Self { dir: tempfile::tempdir().unwrap() };
        host.write("token", &format!("{TOKEN}\n"));
        host
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Gives process `pid` the cgroup file `content`.
    fn process(&self, pid: u32, content: &str) {
        self.write(&format!("proc/{pid}/cgroup"), content);
    }

    fn procfs(&self) -> ProcFs {
        ProcFs::new(self.path("proc"))
    }

    /// An attestor asking `kubelet` on its read-only port, with more TOML configuration.
    fn read_only(&self, kubelet: &FakeKubelet, extra: &str) -> K8sAttestor {
        let port = kubelet.addr.port();
        self.attestor(&format!("kubelet_read_only_port = {port}\n{extra}")).unwrap()
    }

    /// An attestor with this TOML configuration.
    fn attestor(&self, toml_config: &str) -> Result<K8sAttestor, K8sError> {
        let config: K8sConfig = toml::from_str(toml_config).unwrap();
        K8sAttestor::new(config.settings(|_| None).unwrap(), self.procfs())
    }
}

fn toml_path(path: &Path) -> String {
    path.display().to_string()
}

/// A containerd process of the `app` container on cgroup v2 with the systemd driver.
fn app_cgroup() -> String {
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{APP_CID}.scope\n",
        POD_UID.replace('-', "_")
    )
}

fn secure_config(host: &Host, pki: &Pki, kubelet: &FakeKubelet, extra: &str) -> String {
    let ca = host.write("kubelet-ca.pem", &pki.ca_pem);
    format!(
        "kubelet_secure_port = {}\nkubelet_ca_path = {:?}\ntoken_path = {:?}\n{extra}",
        kubelet.addr.port(),
        toml_path(&ca),
        toml_path(&host.path("token")),
    )
}

fn k8s_error(result: Result<Vec<ward_core::Selector>, AttestError>) -> K8sError {
    match result {
        Err(AttestError::K8s(e)) => e,
        other => panic!("expected a k8s error, got {other:?}"),
    }
}

#[test]
fn secure_port_with_the_service_account_token_gives_the_pod_and_container_selectors() {
    // The certificate names the node only: at 127.0.0.1 the chain is checked, not the name.
    let pki = pki(&["worker-1.kubelet.invalid"], None);
    let kubelet = FakeKubelet::start(Some(pki.server_config.clone()), Some(TOKEN));
    let host = Host::new();
    host.process(4242, &app_cgroup());
    let attestor = host.attestor(&secure_config(&host, &pki, &kubelet, "")).unwrap();
    assert_eq!(attestor.kubelet_url(), format!("https://127.0.0.1:{}/pods", kubelet.addr.port()));

    let selectors = attestor.attest(4242).unwrap();
    let mut expected = set(POD_SELECTORS);
    expected.extend(set(APP_SELECTORS));
    assert_eq!(strings(&selectors), expected);
    assert_eq!(selectors.len(), expected.len(), "no selector twice");
    // The pod selectors come first, in SPIRE's order.
    assert_eq!(selectors[0].to_string(), "k8s:sa:checkout");
    assert_eq!(selectors[1].to_string(), "k8s:ns:shop");
    assert_eq!(kubelet.auth_headers(), vec![Some(format!("Bearer {TOKEN}"))]);
}

#[test]
fn the_read_only_port_is_plain_http_without_credentials() {
    let kubelet = FakeKubelet::start(None, None);
    let host = Host::new();
    host.process(7, &format!("0::/../pod{POD_UID}/{APP_CID}\n"));
    let attestor = host.read_only(&kubelet, "");
    assert_eq!(attestor.kubelet_url(), format!("http://127.0.0.1:{}/pods", kubelet.addr.port()));
    let mut expected = set(POD_SELECTORS);
    expected.extend(set(APP_SELECTORS));
    assert_eq!(strings(&attestor.attest(7).unwrap()), expected);
    assert_eq!(kubelet.auth_headers(), vec![None]);
}

#[test]
fn a_kubelet_certificate_from_another_ca_is_refused() {
    let real = pki(&["worker-1"], None);
    let other = pki(&["worker-1"], None);
    let kubelet = FakeKubelet::start(Some(real.server_config.clone()), Some(TOKEN));
    let host = Host::new();
    host.process(4242, &app_cgroup());
    let attestor = host.attestor(&secure_config(&host, &other, &kubelet, "")).unwrap();
    let err = k8s_error(attestor.attest(4242));
    assert!(matches!(err, K8sError::Request { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "unable to perform request: GET https://127.0.0.1:{}/pods: invalid peer certificate",
            kubelet.addr.port()
        )),
        "{text}"
    );
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert_eq!(kubelet.requests(), 0, "no request is sent to an unverified kubelet");

    // The same kubelet is accepted when its CA is skipped.
    let skipping = host
        .attestor(&format!(
            "kubelet_secure_port = {}\nskip_kubelet_verification = true\ntoken_path = {:?}",
            kubelet.addr.port(),
            toml_path(&host.path("token"))
        ))
        .unwrap();
    assert!(strings(&skipping.attest(4242).unwrap()).contains("k8s:container-name:app"));
}

#[test]
fn with_a_node_name_the_kubelet_certificate_must_name_the_node() {
    let pki = pki(&["localhost"], None);
    let kubelet = FakeKubelet::start(Some(pki.server_config.clone()), Some(TOKEN));
    let host = Host::new();
    host.process(4242, &app_cgroup());
    let named =
        host.attestor(&secure_config(&host, &pki, &kubelet, "node_name = \"localhost\"")).unwrap();
    assert_eq!(named.kubelet_url(), format!("https://localhost:{}/pods", kubelet.addr.port()));
    assert!(
        strings(&named.attest(4242).unwrap()).contains("k8s:pod-name:checkout-6d8f9b7c5-x2k4p")
    );

    // Reached by another name (127.0.0.1 is the same host), the name check fails.
    let misnamed =
        host.attestor(&secure_config(&host, &pki, &kubelet, "node_name = \"127.0.0.1\"")).unwrap();
    let err = k8s_error(misnamed.attest(4242)).to_string();
    assert!(
        err.contains("invalid peer certificate: certificate not valid for name \"127.0.0.1\""),
        "{err}"
    );
}

#[test]
fn a_wrong_token_gets_the_kubelet_status_and_body() {
    let pki = pki(&["worker-1"], None);
    let kubelet = FakeKubelet::start(Some(pki.server_config.clone()), Some("another-token"));
    let host = Host::new();
    host.process(4242, &app_cgroup());
    let attestor = host.attestor(&secure_config(&host, &pki, &kubelet, "")).unwrap();
    let err = k8s_error(attestor.attest(4242));
    assert_eq!(err.to_string(), "unexpected status code on pods response: 401 Unauthorized\n");
}

#[test]
fn anonymous_authentication_sends_no_token() {
    let pki = pki(&["worker-1"], None);
    let kubelet = FakeKubelet::start(Some(pki.server_config.clone()), None);
    let host = Host::new();
    host.process(4242, &app_cgroup());
    let attestor = host
        .attestor(&secure_config(&host, &pki, &kubelet, "use_anonymous_authentication = true"))
        .unwrap();
    assert!(!attestor.attest(4242).unwrap().is_empty());
    assert_eq!(kubelet.auth_headers(), vec![None]);
}

#[test]
fn a_client_certificate_authenticates_without_a_token() {
    // The kubelet trusts client certificates of its own CA.
    let client_ca = ca("client-ca");
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["spire-agent".to_owned()])
        .unwrap()
        .signed_by(&client_key, &client_ca)
        .unwrap();
    let pki = pki(&["worker-1"], Some(&client_ca.pem()));
    let kubelet = FakeKubelet::start(Some(pki.server_config.clone()), None);
    let host = Host::new();
    host.process(4242, &app_cgroup());
    let cert = host.write("client.pem", &client_cert.pem());
    let key = host.write("client-key.pem", &client_key.serialize_pem());
    let attestor = host
        .attestor(&secure_config(
            &host,
            &pki,
            &kubelet,
            &format!(
                "certificate_path = {:?}\nprivate_key_path = {:?}",
                toml_path(&cert),
                toml_path(&key)
            ),
        ))
        .unwrap();
    assert!(strings(&attestor.attest(4242).unwrap()).contains("k8s:container-name:app"));
    let state = kubelet.state.lock().unwrap();
    assert_eq!(state.client_certs, vec![true]);
    assert_eq!(state.auth_headers, vec![None]);
}

#[test]
fn a_process_in_no_container_gets_no_selectors_and_the_kubelet_is_not_asked() {
    let kubelet = FakeKubelet::start(None, None);
    let host = Host::new();
    host.process(1000, "0::/user.slice/user-1000.slice/session-2.scope\n");
    let attestor = host.read_only(&kubelet, "");
    assert_eq!(attestor.attest(1000).unwrap(), vec![]);
    // A process that is gone has no cgroup file: no selectors either, as in SPIRE.
    assert_eq!(attestor.attest(99999).unwrap(), vec![]);
    assert_eq!(kubelet.requests(), 0);
}

#[test]
fn a_container_missing_from_every_list_fails_after_max_poll_attempts() {
    let kubelet = FakeKubelet::start(None, None);
    let host = Host::new();
    host.process(5, &format!("0::/../pod{POD_UID}/{UNKNOWN_CID}\n"));
    // Each wait (20ms) outlasts the cache (10ms), so every attempt asks the kubelet.
    let attestor =
        host.read_only(&kubelet, "max_poll_attempts = 3\npoll_retry_interval = \"20ms\"");
    let err = k8s_error(attestor.attest(5));
    assert!(matches!(err, K8sError::NotFound));
    assert_eq!(err.to_string(), "no selectors found after max poll attempts");
    assert_eq!(kubelet.requests(), 3);
}

/// The pod list with the `app` container not started yet (no container ID).
fn app_not_started() -> String {
    let mut list: serde_json::Value = serde_json::from_str(POD_LIST).unwrap();
    let app = &mut list["items"][0]["status"]["containerStatuses"][0];
    app.as_object_mut().unwrap().remove("containerID");
    app["state"] = serde_json::json!({ "waiting": { "reason": "ContainerCreating" } });
    list.to_string()
}

#[test]
fn a_container_the_kubelet_reports_late_is_found_by_polling() {
    let kubelet = FakeKubelet::start(None, None);
    kubelet.set_bodies([app_not_started(), app_not_started(), POD_LIST.to_owned()]);
    let host = Host::new();
    host.process(5, &app_cgroup());
    let attestor =
        host.read_only(&kubelet, "max_poll_attempts = 5\npoll_retry_interval = \"20ms\"");
    assert!(strings(&attestor.attest(5).unwrap()).contains("k8s:container-name:app"));
    assert_eq!(kubelet.requests(), 3);
}

#[test]
fn disabled_container_selectors_attest_a_known_pod_before_its_container_starts() {
    let kubelet = FakeKubelet::start(None, None);
    kubelet.set_bodies([app_not_started()]);
    let host = Host::new();
    host.process(5, &app_cgroup());
    let attestor = host.read_only(&kubelet, "disable_container_selectors = true");
    assert_eq!(strings(&attestor.attest(5).unwrap()), set(POD_SELECTORS));
    assert_eq!(kubelet.requests(), 1);
}

#[test]
fn the_pod_list_is_cached_for_half_the_poll_interval() {
    let kubelet = FakeKubelet::start(None, None);
    let host = Host::new();
    host.process(5, &app_cgroup());
    host.process(6, &format!("0::/../pod{POD_UID}/{INIT_CID}\n"));
    let attestor = host.read_only(&kubelet, "poll_retry_interval = \"1h\"");
    assert!(strings(&attestor.attest(5).unwrap()).contains("k8s:container-name:app"));
    // An init container is found among the init container statuses.
    let init = strings(&attestor.attest(6).unwrap());
    assert!(init.contains("k8s:container-name:migrate"), "{init:?}");
    assert!(init.contains("k8s:container-image:registry.example.com/shop/migrate:1.4.2"));
    assert_eq!(kubelet.requests(), 1);

    // With a 2ms interval the list is kept for 1ms: a later attestation asks again.
    let short = host.read_only(&kubelet, "poll_retry_interval = \"2ms\"");
    short.attest(5).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    short.attest(5).unwrap();
    assert_eq!(kubelet.requests(), 3);
}

#[test]
fn without_a_pod_uid_in_the_cgroups_every_pod_is_searched() {
    let kubelet = FakeKubelet::start(None, None);
    let host = Host::new();
    // CRI-O under a cgroup namespace names the container only.
    host.process(9, &format!("0::/../crio-{APP_CID}.scope\n"));
    let attestor = host.read_only(&kubelet, "");
    assert!(strings(&attestor.attest(9).unwrap()).contains(&format!("k8s:pod-uid:{POD_UID}")));

    // Two pods claiming the container is an error, not a guess.
    let mut list: serde_json::Value = serde_json::from_str(POD_LIST).unwrap();
    let mut copy = list["items"][0].clone();
    copy["metadata"]["uid"] = serde_json::json!("00000000-1111-2222-3333-444444444444");
    list["items"].as_array_mut().unwrap().push(copy);
    kubelet.set_bodies([list.to_string()]);
    let fresh = host.read_only(&kubelet, "");
    let err = k8s_error(fresh.attest(9));
    assert!(matches!(err, K8sError::DuplicateContainer));
    assert_eq!(err.to_string(), "two pods found with same container Id");
}

#[test]
fn the_pod_named_by_the_cgroups_is_the_only_one_looked_at() {
    let kubelet = FakeKubelet::start(None, None);
    let host = Host::new();
    // The app container's ID under the job pod's UID: no match, even though another pod
    // holds the container.
    host.process(9, &format!("0::/../pod{JOB_POD_UID}/{APP_CID}\n"));
    let attestor = host.read_only(&kubelet, "max_poll_attempts = 1");
    assert!(matches!(k8s_error(attestor.attest(9)), K8sError::NotFound));
}

#[test]
fn missing_credential_files_are_configuration_errors() {
    let host = Host::new();
    let err = host.attestor("kubelet_ca_path = \"/nonexistent/ca.pem\"").unwrap_err();
    assert!(matches!(err, K8sError::LoadCa { .. }));
    assert!(err.to_string().starts_with("unable to load kubelet CA: open /nonexistent/ca.pem: "));

    let bad = host.write("bad.pem", "BAD PEM");
    let err = host.attestor(&format!("kubelet_ca_path = {:?}", toml_path(&bad))).unwrap_err();
    assert!(err.to_string().starts_with("unable to parse kubelet CA: "), "{err}");

    let pki = pki(&["worker-1"], None);
    let ca = host.write("ca.pem", &pki.ca_pem);
    let err = host
        .attestor(&format!(
            "kubelet_ca_path = {:?}\ntoken_path = \"/nonexistent/token\"",
            toml_path(&ca)
        ))
        .unwrap_err();
    assert!(err.to_string().starts_with("unable to load token: open /nonexistent/token: "));

    let err = host
        .attestor(&format!(
            "kubelet_ca_path = {:?}\ncertificate_path = {:?}\nprivate_key_path = {:?}",
            toml_path(&ca),
            toml_path(&bad),
            toml_path(&bad)
        ))
        .unwrap_err();
    assert!(err.to_string().starts_with("unable to load keypair: "), "{err}");
}

#[tokio::test]
async fn the_attestor_is_used_and_dropped_inside_an_async_runtime() {
    // The agent calls attestors on blocking threads and may drop them in a task.
    let kubelet = FakeKubelet::start(None, None);
    let host = Host::new();
    host.process(5, &app_cgroup());
    let attestor = Arc::new(host.read_only(&kubelet, ""));
    let blocking = Arc::clone(&attestor);
    let selectors = tokio::task::spawn_blocking(move || blocking.attest(5)).await.unwrap();
    assert!(strings(&selectors.unwrap()).contains("k8s:container-name:app"));
    drop(attestor);
    drop(kubelet);
}

/// A cgroup made for a test and a process moved into it; on drop the process is killed and
/// reaped and the directories removed, deepest first.
struct PodCgroup {
    child: std::process::Child,
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    /// Makes `<hierarchy>/<relative>` in the first cgroup hierarchy that allows it (the
    /// unified v2 one, mounted at `/sys/fs/cgroup/unified` on hybrid hosts or at
    /// `/sys/fs/cgroup` itself; else the v1 `pids` one) and moves a new `sleep` into it.
    fn start(relative: &str) -> Self {
        let root = Path::new("/sys/fs/cgroup");
        let child = std::process::Command::new("sleep").arg("300").spawn().unwrap();
        let mut cgroup = Self { child, dirs: Vec::new() };
        for hierarchy in [root.join("unified"), root.to_owned(), root.join("pids")] {
            if !hierarchy.join("cgroup.procs").exists() {
                continue;
            }
            let mut dir = hierarchy;
            let made: Result<(), std::io::Error> = relative.split('/').try_for_each(|part| {
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir)?;
                    cgroup.dirs.push(dir.clone());
                }
                Ok(())
            });
            let moved = made.and_then(|()| {
                std::fs::write(dir.join("cgroup.procs"), cgroup.child.id().to_string())
            });
            if moved.is_ok() {
                return cgroup;
            }
            cgroup.remove_dirs();
        }
        panic!("no cgroup hierarchy under /sys/fs/cgroup lets this test make a cgroup");
    }

    fn remove_dirs(&mut self) {
        for dir in self.dirs.drain(..).rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.remove_dirs();
    }
}

#[test]
fn a_real_process_in_a_pod_cgroup_is_attested_through_the_kernel_cgroup_file() {
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test runs as root: it makes cgroups and moves a process into one"
    );
    let kubelet = FakeKubelet::start(None, None);
    // The containerd layout with the systemd driver, under a top directory of this test.
    let relative = format!(
        "ward-k8sattest-{}/kubepods-burstable-pod{}.slice/cri-containerd-{APP_CID}.scope",
        std::process::id(),
        POD_UID.replace('-', "_")
    );
    let workload = PodCgroup::start(&relative);
    let pid = workload.child.id();
    let cgroup_file = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup_file.contains(&relative), "{cgroup_file}");

    let config: K8sConfig =
        toml::from_str(&format!("kubelet_read_only_port = {}", kubelet.addr.port())).unwrap();
    let attestor = K8sAttestor::new(config.settings(|_| None).unwrap(), ProcFs::default()).unwrap();
    let mut expected = set(POD_SELECTORS);
    expected.extend(set(APP_SELECTORS));
    assert_eq!(strings(&attestor.attest(pid).unwrap()), expected);
    // This test's own process is in no pod.
    assert_eq!(attestor.attest(std::process::id()).unwrap(), vec![]);
}

#[test]
fn the_token_is_read_again_after_the_reload_interval() {
    let pki = pki(&["worker-1"], None);
    let kubelet = FakeKubelet::start(Some(pki.server_config.clone()), None);
    let host = Host::new();
    host.process(4242, &app_cgroup());
    // The pod list is cached for 1ms and the files for 1ms.
    let attestor = host
        .attestor(&secure_config(
            &host,
            &pki,
            &kubelet,
            "reload_interval = \"1ms\"\npoll_retry_interval = \"2ms\"",
        ))
        .unwrap();
    attestor.attest(4242).unwrap();
    host.write("token", "  rotated-token\n");
    std::thread::sleep(std::time::Duration::from_millis(5));
    attestor.attest(4242).unwrap();
    // A token file that cannot be read keeps the last good token (and logs a warning).
    std::fs::remove_file(host.path("token")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    attestor.attest(4242).unwrap();
    // An empty token sends no header.
    host.write("token", "\n");
    std::thread::sleep(std::time::Duration::from_millis(5));
    attestor.attest(4242).unwrap();
    assert_eq!(
        kubelet.auth_headers(),
        vec![
            Some(format!("Bearer {TOKEN}")),
            Some("Bearer rotated-token".to_owned()),
            Some("Bearer rotated-token".to_owned()),
            None,
        ]
    );
}
