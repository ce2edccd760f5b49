#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! A store that cannot apply a write stops the server: the failed call answers Internal, the
//! server stops serving and [`serve_until`] returns `StoreFailed`, whose exit code is 70, so
//! a supervisor restarts the server and the store replays its log.
//!
//! The store failure comes from a proposer that wraps the real one and, once broken,
//! answers as the store does after a failed write; the store's own tests inject the fault
//! inside apply.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;
use ward_server::proposer::{LocalProposer, ProposeError, ProposeFuture, Proposer, ReadFuture};
use ward_server::run::{EXIT_STORE_FAILED, StoreFailed, exit_code, serve_until};
use ward_store::{Command, Store, StoreConfig, StoreError};

/// The real proposer until `broken` is set; then every write fails as a store whose disk
/// refused a batch.
#[derive(Debug)]
struct Breakable {
    inner: LocalProposer,
    broken: Arc<AtomicBool>,
}

impl Proposer for Breakable {
    fn propose(&self, cmd: Command) -> ProposeFuture {
        if self.broken.load(Ordering::SeqCst) {
            let e = StoreError::Engine("No space left on device (os error 28)".into());
            return Box::pin(async move { Err(ProposeError::Store(e)) });
        }
        self.inner.propose(cmd)
    }

    fn read_barrier(&self) -> ReadFuture {
        self.inner.read_barrier()
    }
}

#[tokio::test]
async fn a_store_failure_stops_the_server_with_exit_code_70() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config_in(dir.path(), "");
    let store =
        Store::open(dir.path().join("store"), StoreConfig::new(cfg.trust_domain.clone())).unwrap();
    let broken = Arc::new(AtomicBool::new(false));
    let proposer =
        Arc::new(Breakable { inner: LocalProposer::new(store.clone()), broken: broken.clone() });
    let opts = ward_server::run::StartOptions {
        store: Some((store, proposer)),
        ..ward_server::run::StartOptions::default()
    };
    let server = ward_server::run::start_with(cfg, opts).await.unwrap();
    let socket = server.socket_path.clone();
    let tcp = server.tcp_addr;
    let serving = tokio::spawn(serve_until(server, std::future::pending()));

    tracing::info!("a write that the store cannot apply");
    broken.store(true, Ordering::SeqCst);
    let channel = ward_server::cli::admin_channel(&socket).await.unwrap();
    let mut entries = entrypb::entry_client::EntryClient::new(channel);
    let entry = types::Entry {
        spiffe_id: Some(common::id("example.org", "/w")),
        parent_id: Some(common::id("example.org", "/spire/agent/x")),
        selectors: vec![types::Selector { r#type: "unix".into(), value: "uid:1".into() }],
        ..Default::default()
    };
    let status = entries
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![entry],
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(status.message().contains("No space left on device"), "{}", status.message());

    tracing::info!("the server stops on its own, with the store failure");
    let result = tokio::time::timeout(Duration::from_secs(20), serving).await.unwrap().unwrap();
    let err = result.as_ref().unwrap_err();
    let failed = err.downcast_ref::<StoreFailed>().expect("a store failure");
    assert!(failed.0.contains("No space left on device"), "{failed}");
    assert_eq!(exit_code(&result), EXIT_STORE_FAILED);
    assert_eq!(EXIT_STORE_FAILED, 70);
    assert_eq!(exit_code(&Ok(())), 0);
    assert_eq!(exit_code(&Err(anyhow::anyhow!("bad config"))), 1);

    tracing::info!("nothing is served any more");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tcp_closed = tokio::net::TcpStream::connect(tcp).await.is_err();
        let admin_closed = tokio::net::UnixStream::connect(&socket).await.is_err();
        if tcp_closed && admin_closed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "listeners still accept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
