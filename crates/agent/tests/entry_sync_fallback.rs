#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Against a server whose Entry service has no SyncAuthorizedEntries (it answers
//! `Unimplemented`, as servers older than SPIRE 1.12 may), the agent's entry sync falls back
//! to GetAuthorizedEntries and stays on it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};
use ward_agent::sync::EntrySync;
use ward_proto::spire::api::server::entry::v1 as pb;
use ward_proto::spire::api::server::entry::v1::entry_server::{Entry, EntryServer};
use ward_proto::spire::api::types;

/// An Entry service that knows GetAuthorizedEntries only.
#[derive(Default)]
struct OldServer {
    entries: std::sync::Mutex<Vec<types::Entry>>,
    sync_calls: AtomicU64,
    get_calls: AtomicU64,
}

/// The service handle (the test keeps another to read the counters).
struct Shared(Arc<OldServer>);

impl std::ops::Deref for Shared {
    type Target = OldServer;
    fn deref(&self) -> &OldServer {
        &self.0
    }
}

fn no<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this server"))
}

type SyncStream = Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::SyncAuthorizedEntriesResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl Entry for Shared {
    async fn count_entries(
        &self,
        _: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        no()
    }
    async fn list_entries(
        &self,
        _: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        no()
    }
    async fn get_entry(
        &self,
        _: Request<pb::GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        no()
    }
    async fn batch_create_entry(
        &self,
        _: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        no()
    }
    async fn batch_update_entry(
        &self,
        _: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        no()
    }
    async fn batch_delete_entry(
        &self,
        _: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        no()
    }
    async fn get_authorized_entries(
        &self,
        req: Request<pb::GetAuthorizedEntriesRequest>,
    ) -> Result<Response<pb::GetAuthorizedEntriesResponse>, Status> {
        self.get_calls.fetch_add(1, Ordering::Relaxed);
        let mask = req.into_inner().output_mask.unwrap();
        assert!(mask.revision_number && mask.selectors && !mask.parent_id);
        let entries = self.entries.lock().unwrap().clone();
        Ok(Response::new(pb::GetAuthorizedEntriesResponse { entries }))
    }
    type SyncAuthorizedEntriesStream = SyncStream;
    async fn sync_authorized_entries(
        &self,
        _: Request<Streaming<pb::SyncAuthorizedEntriesRequest>>,
    ) -> Result<Response<SyncStream>, Status> {
        self.sync_calls.fetch_add(1, Ordering::Relaxed);
        no()
    }
}

fn entry(id: &str, uid: u32) -> types::Entry {
    types::Entry {
        id: id.into(),
        spiffe_id: Some(types::Spiffeid {
            trust_domain: "example.org".into(),
            path: format!("/{id}"),
        }),
        selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{uid}") }],
        revision_number: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn falls_back_to_get_authorized_entries_when_sync_is_unimplemented() {
    let server = Arc::new(OldServer::default());
    *server.entries.lock().unwrap() = vec![entry("a", 1), entry("b", 2)];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = EntryServer::new(Shared(Arc::clone(&server)));
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut sync = EntrySync::new();
    let changes = sync.sync(&channel).await.unwrap();
    assert!(sync.uses_fallback());
    assert_eq!(changes.upserted.iter().collect::<Vec<_>>(), ["a", "b"]);

    // A later sync goes straight to GetAuthorizedEntries and sees the removal.
    *server.entries.lock().unwrap() = vec![entry("b", 2)];
    let changes = sync.sync(&channel).await.unwrap();
    assert_eq!(changes.removed.iter().collect::<Vec<_>>(), ["a"]);
    assert_eq!(sync.entries().keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(server.sync_calls.load(Ordering::Relaxed), 1);
    assert_eq!(server.get_calls.load(Ordering::Relaxed), 2);
    assert_eq!(sync.counters().full_fetches.load(Ordering::Relaxed), 2);
    serving.abort();
}
