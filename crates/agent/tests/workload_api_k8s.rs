//! The Workload API selecting by `k8s` selectors: the test process moves itself into a
//! cgroup named as containerd names a pod's container, a kubelet stand-in on 127.0.0.1
//! serves a kubelet pod list on the read-only port, and the process, as a workload, asks the
//! agent's socket for its X509-SVIDs. Needs root (it makes a cgroup and moves into it).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};
use tonic::{Code, Request};
use ward_agent::cache::{
    Cache, CacheView, JwtSvidError, JwtSvidFuture, JwtSvidSource, X509Identity,
};
use ward_agent::workload::{
    CallerAttestor, ListenerConfig, WorkloadApi, WorkloadApiConfig, WorkloadListener,
};
use ward_attest::{K8sAttestor, K8sConfig, ProcFs, UnixAttestor, UnixConfig, WorkloadAttestor};
use ward_ca::{KeyType, PrivateKey, SvidParams, X509Ca};
use ward_core::{Bundle, Selector, SelectorSet, SpiffeId, TrustDomain, X509Authority};
use ward_proto::spiffe::workload as pb;
use ward_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use zeroize::Zeroizing;

const TD: &str = "example.org";
/// The kubelet pod list the `k8s` attestor's own tests use: the `checkout` pod of namespace
/// `shop` with service account `checkout` has the `app` container below.
const POD_LIST: &str = include_str!("../../attest/tests/data/kubelet_pods.json");
const POD_UID: &str = "8e6ca02c-ec29-4563-abf0-785201df621d";
const APP_CID: &str = "29425aaed69f6aaf60ce26d7ad49d80b4bf0843a563d5bc115b128fc6d1bf53b";

/// A kubelet read-only port stand-in: answers every connection with the pod list.
fn serve_pod_list() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Read the request head, then answer and close.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            assert!(
                head.starts_with(b"GET /pods HTTP/1.1\r\n"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{POD_LIST}",
                POD_LIST.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

/// This process moved into a pod container's cgroup; moved back and the cgroup removed on
/// drop.
struct InPodCgroup {
    procs_back: PathBuf,
    dirs: Vec<PathBuf>,
}

impl InPodCgroup {
    /// Moves this process into `<hierarchy>/ward-agent-k8s-<pid>/
    /// kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
    fn enter() -> Self {
        assert_eq!(
            std::fs::metadata("/proc/self").unwrap().uid(),
            0,
            "this test runs as root: it makes a cgroup and moves itself into it"
        );
        // The unified (v2) hierarchy, or the v1 `pids` one on a host without it, and where
        // this process is in it now (its `0::` or `:pids:` line).
        let root = Path::new("/sys/fs/cgroup");
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let line_path = |prefix: &str| {
            own.lines().find_map(|l| l.split_once(prefix).map(|(_, p)| p.to_owned()))
        };
        let (hierarchy, current) = [
            (root.join("unified"), "0::"),
            (root.to_owned(), "0::"),
            (root.join("pids"), ":pids:"),
        ]
        .into_iter()
        .find(|(h, _)| h.join("cgroup.procs").exists())
        .and_then(|(h, prefix)| Some((h, line_path(prefix)?)))
        .expect("a cgroup hierarchy under /sys/fs/cgroup");
        let procs_back = hierarchy.join(current.trim_start_matches('/')).join("cgroup.procs");
        let relative = format!(
            "ward-agent-k8s-{}/kubepods-burstable-pod{}.slice/cri-containerd-{APP_CID}.scope",
            std::process::id(),
            POD_UID.replace('-', "_")
        );
        let mut dirs = Vec::new();
        let mut dir = hierarchy;
        for part in relative.split('/') {
            dir.push(part);
            std::fs::create_dir(&dir).unwrap();
            dirs.push(dir.clone());
        }
        let guard = Self { procs_back, dirs };
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        guard
    }
}

impl Drop for InPodCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.procs_back, std::process::id().to_string());
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// JWT-SVIDs are not asked for here.
struct NoJwt;

impl JwtSvidSource for NoJwt {
    fn fetch_jwt_svid<'a>(&'a self, _: &'a X509Identity, _: &'a [String]) -> JwtSvidFuture<'a> {
        Box::pin(async { Err(JwtSvidError::Unavailable("not in this test".to_owned())) })
    }
}

fn selectors(list: &[&str]) -> SelectorSet {
    SelectorSet::new(list.iter().map(|s| Selector::parse(s).unwrap()).collect())
}

/// An entry for `path` selected by `selectors`, with an SVID signed by `ca`.
fn identity(ca: &X509Ca, entry_id: &str, path: &str, selected_by: &[&str]) -> Arc<X509Identity> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let spiffe_id = SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap();
    let params =
        SvidParams { spiffe_id: &spiffe_id, dns_names: &[], ttl: Duration::from_secs(600) };
    let leaf = ca.sign_x509_svid(key.public_key_der(), &params, SystemTime::now()).unwrap();
    Arc::new(X509Identity {
        entry_id: entry_id.into(),
        spiffe_id,
        selectors: selectors(selected_by),
        federates_with: Vec::new(),
        hint: String::new(),
        admin: false,
        downstream: false,
        chain: vec![leaf],
        private_key: Arc::new(Zeroizing::new(key.pkcs8_der().to_vec())),
        expires_at: SystemTime::now() + Duration::from_secs(600),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_in_a_pod_gets_the_svids_of_entries_with_its_k8s_selectors() {
    let port = serve_pod_list();
    let td = TrustDomain::new(TD).unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let ca = X509Ca::self_signed(key, &td, Duration::from_secs(3600), SystemTime::now()).unwrap();
    let mut bundle = Bundle::new(td);
    bundle.x509_authorities = vec![X509Authority::new(ca.cert_der().to_vec())];
    let cache = Arc::new(Cache::new(CacheView::new(bundle)));
    cache.update(|v| {
        v.identities = vec![
            identity(&ca, "checkout", "/ns/shop/sa/checkout", &["k8s:ns:shop", "k8s:sa:checkout"]),
            identity(
                &ca,
                "app",
                "/shop/app",
                &["k8s:pod-label:app:checkout", "k8s:container-name:app"],
            ),
            identity(&ca, "sidecar", "/shop/envoy", &["k8s:ns:shop", "k8s:container-name:envoy"]),
            identity(&ca, "dns", "/dns", &["k8s:ns:kube-system"]),
        ];
    });

    let k8s: K8sConfig = toml::from_str(&format!("kubelet_read_only_port = {port}")).unwrap();
    let attestors: Vec<Box<dyn WorkloadAttestor>> = vec![
        Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default())),
        Box::new(K8sAttestor::new(k8s.settings(|_| None).unwrap(), ProcFs::default()).unwrap()),
    ];
    let api = WorkloadApi::new(
        Arc::clone(&cache),
        Arc::new(NoJwt),
        CallerAttestor::new(attestors),
        WorkloadApiConfig::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = WorkloadListener::bind(&ListenerConfig::new(&socket)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let routes = tonic::service::Routes::new(api.into_service());
        listener.serve(routes, async { drop(stopped.await) }).await.unwrap();
    });
    let channel = Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let client = SpiffeWorkloadApiClient::new(channel);
    let fetch = |mut client: SpiffeWorkloadApiClient<_>| async move {
        let mut request = Request::new(pb::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        client.fetch_x509svid(request).await?.into_inner().message().await.map(Option::unwrap)
    };

    // Outside the pod: no k8s selectors, so no entry matches.
    let status = fetch(client.clone()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::PermissionDenied, "no identity issued"));

    // Inside the pod's app container: the entries whose selectors the pod and container
    // satisfy, and not the sidecar's or another namespace's.
    let in_pod = InPodCgroup::enter();
    let resp = fetch(client.clone()).await.unwrap();
    drop(in_pod);
    let mut ids: Vec<&str> = resp.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["spiffe://example.org/ns/shop/sa/checkout", "spiffe://example.org/shop/app"]);
    assert_eq!(resp.svids[0].bundle, ca.cert_der());

    // Attestation is per call, from the process's cgroups at that moment.
    let status = fetch(client).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "out of the pod again");
    stop.send(()).unwrap();
    server.await.unwrap();
}
