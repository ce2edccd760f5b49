//! SyncAuthorizedEntries above SPIRE's 500-entry page: revision pages, then full entries
//! on request, as spire-agent drives it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tonic::Code;
use ward_core::{EntryId, RegistrationEntry, Selector, SelectorSet, SpiffeId};
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;
use ward_store::Command;

fn entry(i: usize, parent: &str) -> RegistrationEntry {
    RegistrationEntry {
        created_at: 1,
        ..RegistrationEntry::new(
            EntryId::new(&format!("e{i:04}")).unwrap(),
            SpiffeId::parse(&format!("spiffe://example.org/w/{i}")).unwrap(),
            SpiffeId::parse(parent).unwrap(),
            SelectorSet::new(vec![Selector::new("unix", &format!("uid:{i}")).unwrap()]),
        )
    }
}

fn ids_request(ids: Vec<String>) -> entrypb::SyncAuthorizedEntriesRequest {
    entrypb::SyncAuthorizedEntriesRequest { output_mask: None, ids }
}

#[tokio::test]
async fn revision_pages_then_entries_by_id() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, agent_id) = new_agent(&ts).await;
    let entries: Vec<_> = (0..620).map(|i| entry(i, &agent_id)).collect();
    ts.server.state.proposer.propose(Command::CreateEntries(entries)).await.unwrap();

    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let mut client = entrypb::entry_client::EntryClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mask = types::EntryMask { spiffe_id: true, revision_number: true, ..Default::default() };
    tx.send(entrypb::SyncAuthorizedEntriesRequest { output_mask: Some(mask), ids: vec![] })
        .await
        .unwrap();
    let mut stream = client
        .sync_authorized_entries(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let p1 = stream.message().await.unwrap().unwrap();
    assert_eq!((p1.entry_revisions.len(), p1.entries.len(), p1.more), (500, 0, true));
    let p2 = stream.message().await.unwrap().unwrap();
    assert_eq!((p2.entry_revisions.len(), p2.entries.len(), p2.more), (120, 0, false));
    let mut all: Vec<String> =
        p1.entry_revisions.iter().chain(&p2.entry_revisions).map(|r| r.id.clone()).collect();
    assert_eq!(all.len(), 620);
    assert!(p1.entry_revisions.iter().all(|r| r.created_at == 1 && r.revision_number == 0));

    // Ask for the first 500 (unsorted, plus an unknown id): one full page back.
    let mut first: Vec<String> = all.drain(..500).collect();
    first.reverse();
    first.push("not-authorized".into());
    tx.send(ids_request(first)).await.unwrap();
    let r = stream.message().await.unwrap().unwrap();
    assert_eq!((r.entries.len(), r.entry_revisions.len(), r.more), (500, 0, false));
    assert_eq!(r.entries[0].id, "e0000", "sorted by id");
    assert!(r.entries[0].parent_id.is_none(), "first request's mask applies");
    assert_eq!(r.entries[0].spiffe_id.as_ref().unwrap().path, "/w/0");

    // The rest.
    tx.send(ids_request(all)).await.unwrap();
    let r = stream.message().await.unwrap().unwrap();
    assert_eq!((r.entries.len(), r.more), (120, false));

    // Nothing matches: one empty page.
    tx.send(ids_request(vec!["nope".into()])).await.unwrap();
    let r = stream.message().await.unwrap().unwrap();
    assert_eq!((r.entries.len(), r.entry_revisions.len(), r.more), (0, 0, false));

    // Half-closing ends the RPC with OK.
    drop(tx);
    assert!(stream.message().await.unwrap().is_none());
    ts.server.shutdown().await;
}

#[tokio::test]
async fn first_request_rules() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, _) = new_agent(&ts).await;
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let mut client = entrypb::entry_client::EntryClient::new(ch);

    let with_ids = ids_request(vec!["x".into()]);
    let err =
        client.sync_authorized_entries(futures::stream::iter(vec![with_ids])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "specifying IDs on initial request is not supported");

    let masked = entrypb::SyncAuthorizedEntriesRequest {
        output_mask: Some(types::EntryMask { spiffe_id: true, ..Default::default() }),
        ids: vec![],
    };
    let err =
        client.sync_authorized_entries(futures::stream::iter(vec![masked])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // No entries: one empty full response.
    let ok = entrypb::SyncAuthorizedEntriesRequest { output_mask: None, ids: vec![] };
    let mut s =
        client.sync_authorized_entries(futures::stream::iter(vec![ok])).await.unwrap().into_inner();
    let r = s.message().await.unwrap().unwrap();
    assert_eq!((r.entries.len(), r.entry_revisions.len(), r.more), (0, 0, false));
    assert!(s.message().await.unwrap().is_none());
    ts.server.shutdown().await;
}
