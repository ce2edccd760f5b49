//! A real Kubernetes control plane for the `k8s_psat` suites: an etcd server and an unmodified
//! `kube-apiserver` (the versions pinned in `tests/interop/kubernetes/go.mod`) on 127.0.0.1,
//! with certificates and a service-account signing key made here, and helpers to create
//! objects, mint bound service-account tokens with the TokenRequest API and sign tokens the
//! API server did not issue.
//!
//! Both are built once into a cache outside the repository by
//! `tests/interop/kubernetes/build.sh`; `$WARD_KUBERNETES_BIN` names the directory holding
//! `kube-apiserver` and `etcd` built elsewhere. Needs Go for the first build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use serde_json::{Value, json};
use ward_attest::node_attestor::k8s_psat::apiserver::{Connection, Requester, answer_error};

use crate::command::run;
use crate::daemon::Daemon;
use crate::free_port;
use crate::wait::{Step, poll_until};

/// Environment variable naming the directory that holds `kube-apiserver` and `etcd`
/// (`tests/run` sets it to the output of `tests/interop/kubernetes/build.sh`).
pub const KUBERNETES_BIN_ENV: &str = "WARD_KUBERNETES_BIN";

/// Deadline for building kube-apiserver and etcd when no cached build exists.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// How long etcd and kube-apiserver may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The service-account issuer the API server signs tokens as.
pub const ISSUER: &str = "https://kubernetes.default.svc";

/// Paths of the control-plane binaries.
#[derive(Debug, Clone)]
pub struct KubeBins {
    /// `kube-apiserver`.
    pub apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
}

impl KubeBins {
    /// Finds the binaries in `$WARD_KUBERNETES_BIN`, or runs
    /// `tests/interop/kubernetes/build.sh` and uses the directory it prints. The lookup runs
    /// once per test process.
    ///
    /// # Errors
    /// When the build fails or a binary is missing.
    pub fn locate() -> anyhow::Result<Self> {
        static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let dir = DIR
            .get_or_init(|| kube_dir().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)?;
        let bins = Self { apiserver: dir.join("kube-apiserver"), etcd: dir.join("etcd") };
        for bin in [&bins.apiserver, &bins.etcd] {
            ensure!(
                bin.is_file(),
                "{} does not exist (set {KUBERNETES_BIN_ENV} or run \
                 tests/interop/kubernetes/build.sh)",
                bin.display()
            );
        }
        Ok(bins)
    }
}

fn kube_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(KUBERNETES_BIN_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/kubernetes/build.sh");
    let out = run(&mut Command::new(&script), BUILD_TIMEOUT)?
        .success()
        .context("building kube-apiserver and etcd with tests/interop/kubernetes/build.sh")?;
    let dir = out.stdout.trim();
    if dir.is_empty() {
        bail!("build.sh printed no directory\n{}", out.describe());
    }
    Ok(PathBuf::from(dir))
}

/// A running etcd and kube-apiserver; dropping it stops both.
pub struct KubeCluster {
    /// kube-apiserver, dropped first.
    pub apiserver: Daemon,
    /// etcd.
    pub etcd: Daemon,
    /// A kubeconfig whose user is a cluster admin by client certificate.
    pub admin_kubeconfig: PathBuf,
    /// A kubeconfig whose user is a cluster admin by bearer token.
    pub token_kubeconfig: PathBuf,
    /// The API server's port on 127.0.0.1.
    pub port: u16,
    sa_key: KeyPair,
    conn: Connection,
    requester: Requester,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster").field("port", &self.port).finish_non_exhaustive()
    }
}

fn ca(cn: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(p, key)))
}

/// A certificate of `issuer` and its key, PEM.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    org: Option<&str>,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A kubeconfig for `server` trusting `ca_pem`, whose user has `user_yaml` (indented lines).
fn kubeconfig(server: &str, ca_pem: &str, user_yaml: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  \
         cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: \
         test\n  user:\n{user_yaml}contexts:\n- name: test\n  context:\n    cluster: test\n    \
         user: test\n",
        STANDARD.encode(ca_pem)
    )
}

impl KubeCluster {
    /// Starts etcd and kube-apiserver with their files under `dir` and waits until the API
    /// server is ready.
    ///
    /// # Errors
    /// When a process cannot start or does not become ready in time.
    pub fn start(bins: &KubeBins, dir: &Path) -> anyhow::Result<Self> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        let (ca_pem, ca) = ca("kubernetes test CA")?;
        std::fs::write(pki.join("ca.pem"), &ca_pem)?;
        let (serving, serving_key) = leaf(
            &ca,
            "kube-apiserver",
            None,
            vec![
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                SanType::DnsName("localhost".try_into()?),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        std::fs::write(pki.join("serving.pem"), serving)?;
        std::fs::write(pki.join("serving-key.pem"), serving_key)?;
        let (admin, admin_key) = leaf(
            &ca,
            "test-admin",
            Some("system:masters"),
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let sa_key = KeyPair::generate()?;
        std::fs::write(pki.join("sa.key"), sa_key.serialize_pem())?;
        std::fs::write(pki.join("sa.pub"), sa_key.public_key_pem())?;
        let token_bytes: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..)).take(24).collect();
        let admin_token = URL_SAFE_NO_PAD.encode(token_bytes);
        std::fs::write(
            pki.join("tokens.csv"),
            format!("{admin_token},token-admin,token-admin-uid,\"system:masters\"\n"),
        )?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let mut etcd_cmd = Command::new(&bins.etcd);
        etcd_cmd.args([
            "--name=test".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=test=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync".to_owned(),
            "--log-level=warn".to_owned(),
        ]);
        let etcd = Daemon::spawn("etcd", etcd_cmd, &dir.join("etcd.log"))?;

        let port = free_port()?;
        let mut api_cmd = Command::new(&bins.apiserver);
        api_cmd.args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--tls-cert-file={}", pki.join("serving.pem").display()),
            format!("--tls-private-key-file={}", pki.join("serving-key.pem").display()),
            format!("--client-ca-file={}", pki.join("ca.pem").display()),
            format!("--token-auth-file={}", pki.join("tokens.csv").display()),
            format!("--service-account-issuer={ISSUER}"),
            format!("--service-account-key-file={}", pki.join("sa.pub").display()),
            format!("--service-account-signing-key-file={}", pki.join("sa.key").display()),
            "--authorization-mode=RBAC".to_owned(),
            "--service-cluster-ip-range=10.96.0.0/24".to_owned(),
            "--endpoint-reconciler-type=none".to_owned(),
            "--enable-priority-and-fairness=false".to_owned(),
            "--profiling=false".to_owned(),
            "--v=1".to_owned(),
        ]);
        let apiserver = Daemon::spawn("kube-apiserver", api_cmd, &dir.join("kube-apiserver.log"))?;

        let server = format!("https://127.0.0.1:{port}");
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        let user = format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            STANDARD.encode(admin),
            STANDARD.encode(admin_key)
        );
        std::fs::write(&admin_kubeconfig, kubeconfig(&server, &ca_pem, &user))?;
        let token_kubeconfig = dir.join("token.kubeconfig");
        std::fs::write(
            &token_kubeconfig,
            kubeconfig(&server, &ca_pem, &format!("    token: {admin_token}\n")),
        )?;
        let conn = Connection::from_kubeconfig(&admin_kubeconfig).map_err(anyhow::Error::msg)?;
        let mut cluster = Self {
            apiserver,
            etcd,
            admin_kubeconfig,
            token_kubeconfig,
            port,
            sa_key,
            conn,
            requester: Requester::new()?,
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        poll_until("kube-apiserver to be ready", READY_TIMEOUT, || {
            self.etcd.ensure_running()?;
            self.apiserver.ensure_running()?;
            // The default namespace exists once the API server's bootstrap has run.
            let ready = self.send("GET", "/readyz", None);
            let ns = self.send("GET", "/api/v1/namespaces/default", None);
            Ok(match (ready, ns) {
                (Ok((200, _)), Ok((200, _))) => Step::Done(()),
                (r, n) => Step::Retry(format!("readyz {r:?}, namespace default {n:?}")),
            })
        })
    }

    /// Sends `method path` with a JSON body; the status and the parsed body (`null` when it
    /// is not JSON).
    ///
    /// # Errors
    /// When the API server cannot be reached.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let method = http::Method::from_bytes(method.as_bytes())?;
        let body = body.map(serde_json::to_vec).transpose()?;
        let answer =
            self.requester.send(&self.conn, method, path, body).map_err(anyhow::Error::msg)?;
        let doc = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if !(200..300).contains(&answer.status) {
            return Ok((answer.status, json!({ "error": answer_error(&answer), "body": doc })));
        }
        Ok((answer.status, doc))
    }

    /// `POST path` with `body`, which must succeed; the created object.
    ///
    /// # Errors
    /// When the API server refuses it.
    pub fn create(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, doc) = self.send("POST", path, Some(body))?;
        ensure!((200..300).contains(&status), "POST {path}: {status} {doc}");
        Ok(doc)
    }

    /// Creates a Node with `labels`; its UID.
    ///
    /// # Errors
    /// When the API server refuses it.
    pub fn create_node(&self, name: &str, labels: &Value) -> anyhow::Result<String> {
        let node = self.create(
            "/api/v1/nodes",
            &json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": { "name": name, "labels": labels },
            }),
        )?;
        uid(&node)
    }

    /// Creates a Namespace.
    ///
    /// # Errors
    /// When the API server refuses it.
    pub fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        self.create(
            "/api/v1/namespaces",
            &json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } }),
        )?;
        Ok(())
    }

    /// Creates a ServiceAccount.
    ///
    /// # Errors
    /// When the API server refuses it.
    pub fn create_service_account(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.create(
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
            &json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": { "name": name, "namespace": namespace },
            }),
        )?;
        Ok(())
    }

    /// Creates a Pod of `service_account` bound to `node` with `labels`, and sets its status'
    /// host IP to `host_ip` (as the kubelet would); its UID.
    ///
    /// # Errors
    /// When the API server refuses it.
    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        node: &str,
        labels: &Value,
        host_ip: &str,
    ) -> anyhow::Result<String> {
        let path = format!("/api/v1/namespaces/{namespace}/pods");
        let mut pod = self.create(
            &path,
            &json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": { "name": name, "namespace": namespace, "labels": labels },
                "spec": {
                    "serviceAccountName": service_account,
                    "nodeName": node,
                    "automountServiceAccountToken": false,
                    "containers": [{ "name": "agent", "image": "spire-agent:test" }],
                },
            }),
        )?;
        let pod_uid = uid(&pod)?;
        pod["status"]["hostIP"] = json!(host_ip);
        pod["status"]["hostIPs"] = json!([{ "ip": host_ip }]);
        let status_path = format!("{path}/{name}/status");
        let (status, doc) = self.send("PUT", &status_path, Some(&pod))?;
        ensure!((200..300).contains(&status), "PUT {status_path}: {status} {doc}");
        Ok(pod_uid)
    }

    /// A token of `service_account` for `audiences` from the TokenRequest API, bound to the
    /// pod `(name, uid)` when given.
    ///
    /// # Errors
    /// When the API server refuses it.
    pub fn token_request(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        pod: Option<(&str, &str)>,
    ) -> anyhow::Result<String> {
        let mut spec = json!({ "audiences": audiences, "expirationSeconds": 3600 });
        if let Some((name, uid)) = pod {
            spec["boundObjectRef"] =
                json!({ "kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid });
        }
        let answer = self.create(
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"),
            &json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec }),
        )?;
        answer["status"]["token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no token in {answer}"))
    }

    /// `token` with its claims edited by `edit`, signed again with the API server's
    /// service-account key, or with a key of its own when `foreign` (a forgery).
    ///
    /// # Errors
    /// When the token is not a JWT.
    pub fn resign(
        &self,
        token: &str,
        foreign: bool,
        edit: impl FnOnce(&mut Value),
    ) -> anyhow::Result<String> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims)) = (parts.next(), parts.next()) else {
            bail!("not a JWT");
        };
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
        let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims)?)?;
        edit(&mut claims);
        let mut jwt_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        jwt_header.kid = header["kid"].as_str().map(str::to_owned);
        let other;
        let key = if foreign {
            other = KeyPair::generate()?;
            &other
        } else {
            &self.sa_key
        };
        let encoding = jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der());
        Ok(jsonwebtoken::encode(&jwt_header, &claims, &encoding)?)
    }
}

fn uid(object: &Value) -> anyhow::Result<String> {
    object["metadata"]["uid"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no metadata.uid in {object}"))
}
