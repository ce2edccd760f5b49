//! Envoy SDS v3 served by ward-agent's SDS service on the agent's Unix socket, read by a
//! client built on Envoy's go-control-plane types (`tests/interop/envoy-sds/`): StreamSecrets
//! for the caller's SVID, `ROOTCA`, `ALL` and `default` on one stream (each later request
//! ACKs the last response), and FetchSecrets. The client is another process, attested from
//! its peer credentials by the `unix` workload attestor; its decoded secrets must be exactly
//! the chain, key and bundles the agent's cache holds, and pass go-control-plane's generated
//! validation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test on any error"
)]

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use tonic::service::Routes;
use ward_agent::cache::{Cache, CacheView, X509Identity};
use ward_agent::sds::{SdsConfig, SdsService};
use ward_agent::workload::{CallerAttestor, ListenerConfig, WorkloadListener};
use ward_attest::{ProcFs, UnixAttestor, UnixConfig, WorkloadAttestor};
use ward_ca::PrivateKey;
use ward_core::bundle::pem::encode_certificates;
use ward_core::{Bundle, Selector, SelectorSet, SpiffeId, TrustDomain};
use ward_testkit::{TestAuthority, agent};
use ward_tests::envoy_sds::{self, Mode, Output, TrustDomain as ValidatorTd};

struct Authority {
    td: TrustDomain,
    authority: TestAuthority,
}

impl Authority {
    fn new(td: &str) -> Self {
        Self { td: TrustDomain::new(td).unwrap(), authority: TestAuthority::new(td) }
    }

    fn bundle(&self) -> Bundle {
        self.authority.bundle()
    }

    fn bundle_pem(&self) -> String {
        self.bundle().x509_authorities_to_pem()
    }

    /// An SVID for `path` signed by this CA, with a fresh key, selected by `selectors`.
    fn identity(&self, entry_id: &str, path: &str, selectors: &SelectorSet) -> X509Identity {
        let id = SpiffeId::from_parts(&self.td, path).unwrap();
        X509Identity::clone(&agent::identity(&self.authority, entry_id, id, selectors.clone()))
    }
}

fn key_pem(identity: &X509Identity) -> String {
    PrivateKey::from_pkcs8_der(&identity.private_key).unwrap().to_pkcs8_pem().to_string()
}

/// Serves SDS over `cache` on a fresh socket; returns the socket's path (the directory lives
/// as long as the returned guard).
fn serve(cache: &Arc<Cache>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent").join("api.sock");
    let listener = WorkloadListener::bind(&ListenerConfig::new(&socket)).unwrap();
    let unix: Box<dyn WorkloadAttestor> =
        Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default()));
    let sds =
        SdsService::new(SdsConfig::default(), Arc::clone(cache), CallerAttestor::new(vec![unix]));
    tokio::spawn(listener.serve(Routes::new(sds.into_server()), std::future::pending()));
    (dir, socket)
}

async fn run_client(socket: &std::path::Path, mode: Mode, names: &[&[&str]]) -> Output {
    let socket = socket.to_owned();
    let names: Vec<Vec<String>> =
        names.iter().map(|n| n.iter().map(|s| s.to_string()).collect()).collect();
    tokio::task::spawn_blocking(move || {
        let client = envoy_sds::client().unwrap();
        let names: Vec<Vec<&str>> =
            names.iter().map(|n| n.iter().map(String::as_str).collect()).collect();
        let names: Vec<&[&str]> = names.iter().map(Vec::as_slice).collect();
        envoy_sds::fetch(&client, &socket, mode, &names).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_control_plane_client_reads_the_svid_rootca_all_and_default() {
    let own = Authority::new("example.org");
    let other = Authority::new("other.test");
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let mine = SelectorSet::new(vec![Selector::parse(&format!("unix:uid:{uid}")).unwrap()]);
    let mut web = own.identity("entry-a", "/web", &mine);
    web.federates_with = vec![other.td.clone()];
    let db = own.identity("entry-b", "/db", &mine);
    let cache = Arc::new(Cache::new(CacheView::new(own.bundle())));
    cache.update(|v| {
        v.identities = vec![Arc::new(web.clone()), Arc::new(db.clone())];
        v.federated.insert(other.td.clone(), Arc::new(other.bundle()));
    });
    let (_dir, socket) = serve(&cache);

    let out = run_client(
        &socket,
        Mode::Stream,
        &[&["spiffe://example.org/web", "ROOTCA"], &["ALL"], &["default", "spiffe://other.test"]],
    )
    .await;
    assert_eq!((out.error_code.as_str(), out.error_message.as_str()), ("", ""));
    assert_eq!(out.responses.len(), 3);
    for resp in &out.responses {
        assert_eq!(resp.version_info, "1");
        assert_eq!(resp.nonce.len(), 8);
        assert_eq!(
            resp.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        );
        for secret in &resp.secrets {
            assert_eq!(secret.validation_error, "", "{}", secret.name);
        }
    }
    assert_ne!(out.responses[0].nonce, out.responses[1].nonce);

    // The SVID by its SPIFFE ID and ROOTCA.
    let first = &out.responses[0];
    assert_eq!(first.names(), ["ROOTCA", "spiffe://example.org/web"]);
    let svid = first.secret("spiffe://example.org/web").unwrap();
    assert_eq!(svid.kind, "tls_certificate");
    assert_eq!(svid.chain_pem, encode_certificates(&web.chain));
    assert_eq!(svid.private_key_pem, key_pem(&web));
    let rootca = first.secret("ROOTCA").unwrap();
    assert_eq!(rootca.kind, "validation_context");
    assert_eq!(rootca.validator_name, "envoy.tls.cert_validator.spiffe");
    assert_eq!(
        rootca.trust_domains,
        [ValidatorTd { name: "example.org".into(), bundle_pem: own.bundle_pem() }]
    );
    assert_eq!(rootca.trusted_ca_pem, "");

    // ALL: one SPIFFE validator with every trust domain the caller may see, by name.
    let all = out.responses[1].secret("ALL").unwrap();
    assert_eq!(out.responses[1].names(), ["ALL"]);
    assert_eq!(
        all.trust_domains,
        [
            ValidatorTd { name: "example.org".into(), bundle_pem: own.bundle_pem() },
            ValidatorTd { name: "other.test".into(), bundle_pem: other.bundle_pem() },
        ]
    );

    // default: the first identity by entry id; a federated trust domain by its ID.
    let third = &out.responses[2];
    assert_eq!(third.names(), ["spiffe://other.test", "default"]);
    let default = third.secret("default").unwrap();
    assert_eq!(default.chain_pem, encode_certificates(&web.chain));
    assert_eq!(default.private_key_pem, key_pem(&web));
    assert_eq!(
        third.secret("spiffe://other.test").unwrap().trust_domains,
        [ValidatorTd { name: "other.test".into(), bundle_pem: other.bundle_pem() }]
    );

    // FetchSecrets: everything without names; an identity the caller lacks is refused.
    let out = run_client(&socket, Mode::Fetch, &[&[], &["spiffe://example.org/nope"]]).await;
    assert_eq!(out.responses.len(), 1);
    let everything = &out.responses[0];
    assert_eq!((everything.version_info.as_str(), everything.nonce.as_str()), ("", ""));
    assert_eq!(
        everything.names(),
        [
            "spiffe://example.org",
            "spiffe://other.test",
            "spiffe://example.org/web",
            "spiffe://example.org/db",
        ]
    );
    let db_secret = everything.secret("spiffe://example.org/db").unwrap();
    assert_eq!(db_secret.chain_pem, encode_certificates(&db.chain));
    assert_eq!(db_secret.private_key_pem, key_pem(&db));
    assert_eq!(out.error_code, "InvalidArgument");
    assert_eq!(
        out.error_message,
        r#"workload is not authorized for the requested identities ["spiffe://example.org/nope"]"#
    );
}
