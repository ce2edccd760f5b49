//! `spire.api.server.entry.v1.Entry`: entry administration and the agents' entry sync.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Code, Request, Response, Status, Streaming};
use ward_core::{EntryId, RegistrationEntry};
use ward_proto::convert::{
    IdField, apply_entry_update, batch_status, batch_status_ok, entry_from_proto,
    entry_revision_to_proto, entry_to_proto, selector_match_from_proto, spiffe_id_from_proto,
    trust_domain_from_proto,
};
use ward_proto::spire::api::server::entry::v1::{self as pb, entry_server::Entry};
use ward_proto::spire::api::types;
use ward_store::{
    Command, EntryFilter, EntryMask, EntryUpdate, FederatesWithFilter, ItemError, Outcome,
};

use super::{Batch, count_i32, item_code, new_entry_id, page_request, propose, selector_filter};
use crate::state::{ServerState, caller_of};

/// SPIRE's fixed page size for SyncAuthorizedEntries.
pub const SYNC_PAGE_SIZE: usize = 500;

/// The Entry service.
#[derive(Debug, Clone)]
pub struct EntryService {
    state: Arc<ServerState>,
}

impl EntryService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }

    fn authorized(
        &self,
        req_caller: &crate::state::Caller,
    ) -> Result<ward_store::AuthorizedEntries, Status> {
        let agent = req_caller
            .agent_id()
            .ok_or_else(|| Status::permission_denied("caller is not an agent"))?;
        Ok(self.state.store.authorized_entries(&agent))
    }
}

/// The per-item status SPIRE's BatchCreateEntry gives a refused item.
fn create_item_status(e: &ItemError) -> types::Status {
    match e {
        ItemError::EntryExists(_) => {
            batch_status(Code::AlreadyExists, "similar entry already exists")
        }
        ItemError::InvalidEntry(inner) => {
            batch_status(Code::InvalidArgument, format!("failed to convert entry: {inner}"))
        }
        ItemError::FederatedBundleMissing(td) => batch_status(
            Code::InvalidArgument,
            format!("failed to create entry: unable to find federated bundle \"{td}\""),
        ),
        other => batch_status(item_code(other), format!("failed to create entry: {other}")),
    }
}

macro_rules! entry_filter {
    ($f:expr) => {{
        let f = $f;
        let mut out = EntryFilter::default();
        if let Some(f) = f {
            if let Some(id) = f.by_spiffe_id.as_ref() {
                out.spiffe_id = Some(
                    spiffe_id_from_proto(Some(id), IdField::SpiffeId)
                        .map_err(|e| Status::invalid_argument(format!("malformed filter: {e}")))?,
                );
            }
            if let Some(id) = f.by_parent_id.as_ref() {
                out.parent_id = Some(
                    spiffe_id_from_proto(Some(id), IdField::ParentId)
                        .map_err(|e| Status::invalid_argument(format!("malformed filter: {e}")))?,
                );
            }
            out.selectors = f.by_selectors.as_ref().map(selector_filter).transpose()?;
            if let Some(fw) = f.by_federates_with.as_ref() {
                let trust_domains = fw
                    .trust_domains
                    .iter()
                    .map(|t| trust_domain_from_proto(t))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(format!("malformed filter: {e}")))?;
                let match_mode = selector_match_from_proto(fw.r#match)
                    .map_err(|e| Status::invalid_argument(format!("malformed filter: {e}")))?;
                out.federates_with = Some(FederatesWithFilter { trust_domains, match_mode });
            }
            out.hint = f.by_hint.clone();
            out.downstream_only = f.by_downstream == Some(true);
        }
        out
    }};
}

/// The store's field mask from the wire's (`revision_number`, `created_at` are server-owned).
fn store_entry_mask(m: &types::EntryMask) -> EntryMask {
    EntryMask {
        spiffe_id: m.spiffe_id,
        parent_id: m.parent_id,
        selectors: m.selectors,
        x509_svid_ttl: m.x509_svid_ttl,
        jwt_svid_ttl: m.jwt_svid_ttl,
        federates_with: m.federates_with,
        admin: m.admin,
        downstream: m.downstream,
        expires_at: m.expires_at,
        dns_names: m.dns_names,
        store_svid: m.store_svid,
        hint: m.hint,
    }
}

type SyncStream =
    Pin<Box<dyn Stream<Item = Result<pb::SyncAuthorizedEntriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Entry for EntryService {
    async fn count_entries(
        &self,
        req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        let req = req.into_inner();
        let filter = entry_filter!(req.filter.as_ref());
        let count = self.state.store.count_entries(&filter);
        Ok(Response::new(pb::CountEntriesResponse { count: count_i32(count) }))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let req = req.into_inner();
        let filter = entry_filter!(req.filter.as_ref());
        let page = page_request(req.page_size, &req.page_token)?;
        let result = self.state.store.list_entries(&filter, &page);
        let mask = req.output_mask.as_ref();
        Ok(Response::new(pb::ListEntriesResponse {
            entries: result.items.iter().map(|e| entry_to_proto(e, mask)).collect(),
            next_page_token: result.next_token.unwrap_or_default(),
        }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        let req = req.into_inner();
        if req.id.is_empty() {
            return Err(Status::invalid_argument("missing ID"));
        }
        let id = EntryId::new(&req.id).map_err(|_| Status::not_found("entry not found"))?;
        let entry =
            self.state.store.entry(&id).ok_or_else(|| Status::not_found("entry not found"))?;
        Ok(Response::new(entry_to_proto(&entry, req.output_mask.as_ref())))
    }

    async fn batch_create_entry(
        &self,
        req: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        let req = req.into_inner();
        let mask = req.output_mask.as_ref();
        let now = self.state.clock.unix_seconds();
        let td = &self.state.trust_domain;
        // Items that fail conversion keep their slot with a status; the rest are proposed.
        let mut batch: Batch<pb::batch_create_entry_response::Result> = Batch::default();
        let mut valid: Vec<RegistrationEntry> = Vec::new();
        for proto in &req.entries {
            let converted = entry_from_proto(proto, new_entry_id)
                .map_err(|e| e.to_string())
                .and_then(|mut e| {
                    e.validate(td).map_err(|err| err.to_string())?;
                    e.created_at = now;
                    e.revision_number = 0;
                    Ok(e)
                });
            match converted {
                Ok(e) => {
                    batch.accept();
                    valid.push(e);
                }
                Err(msg) => batch.refuse(pb::batch_create_entry_response::Result {
                    status: Some(batch_status(
                        Code::InvalidArgument,
                        format!("failed to convert entry: {msg}"),
                    )),
                    entry: None,
                }),
            }
        }
        if !valid.is_empty() {
            let applied = propose(&self.state, Command::CreateEntries(valid)).await?;
            let Outcome::Entries(items) = applied.outcome else {
                return Err(Status::internal("unexpected apply outcome"));
            };
            batch.fill(items.into_iter().map(|item| match item {
                Ok(e) => pb::batch_create_entry_response::Result {
                    status: Some(batch_status_ok()),
                    entry: Some(entry_to_proto(&e, mask)),
                },
                Err(err) => pb::batch_create_entry_response::Result {
                    status: Some(create_item_status(&err)),
                    entry: match &err {
                        ItemError::EntryExists(existing) => Some(entry_to_proto(existing, mask)),
                        _ => None,
                    },
                },
            }));
        }
        Ok(Response::new(pb::BatchCreateEntryResponse { results: batch.finish() }))
    }

    async fn batch_update_entry(
        &self,
        req: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        let req = req.into_inner();
        let out_mask = req.output_mask.as_ref();
        let store_mask = req.input_mask.as_ref().map_or(EntryMask::ALL, store_entry_mask);
        let td = &self.state.trust_domain;
        let mut batch: Batch<pb::batch_update_entry_response::Result> = Batch::default();
        let mut valid = Vec::new();
        for proto in &req.entries {
            let existing = EntryId::new(&proto.id).ok().and_then(|id| self.state.store.entry(&id));
            let merged = match existing {
                None if proto.id.is_empty() => Err((
                    Code::InvalidArgument,
                    "failed to convert entry: missing entry ID".to_owned(),
                )),
                None => Err((Code::NotFound, "entry not found".to_owned())),
                Some(e) => apply_entry_update(&e, proto, req.input_mask.as_ref())
                    .map_err(|err| err.to_string())
                    .and_then(|m| m.validate(td).map(|()| m).map_err(|err| err.to_string()))
                    .map_err(|msg| {
                        (Code::InvalidArgument, format!("failed to convert entry: {msg}"))
                    }),
            };
            match merged {
                Ok(entry) => {
                    batch.accept();
                    valid.push(EntryUpdate { entry, mask: store_mask });
                }
                Err((code, msg)) => batch.refuse(pb::batch_update_entry_response::Result {
                    status: Some(batch_status(code, msg)),
                    entry: None,
                }),
            }
        }
        if !valid.is_empty() {
            let applied = propose(&self.state, Command::UpdateEntries(valid)).await?;
            let Outcome::Entries(items) = applied.outcome else {
                return Err(Status::internal("unexpected apply outcome"));
            };
            batch.fill(items.into_iter().map(|item| match item {
                Ok(e) => pb::batch_update_entry_response::Result {
                    status: Some(batch_status_ok()),
                    entry: Some(entry_to_proto(&e, out_mask)),
                },
                Err(ItemError::EntryNotFound(_)) => pb::batch_update_entry_response::Result {
                    status: Some(batch_status(Code::NotFound, "entry not found")),
                    entry: None,
                },
                Err(err) => pb::batch_update_entry_response::Result {
                    status: Some(batch_status(
                        item_code(&err),
                        format!("failed to update entry: {err}"),
                    )),
                    entry: None,
                },
            }));
        }
        Ok(Response::new(pb::BatchUpdateEntryResponse { results: batch.finish() }))
    }

    async fn batch_delete_entry(
        &self,
        req: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        let ids = req.into_inner().ids;
        let mut batch: Batch<pb::batch_delete_entry_response::Result> = Batch::default();
        let mut valid = Vec::new();
        for raw in &ids {
            match EntryId::new(raw) {
                Ok(id) => {
                    batch.accept();
                    valid.push(id);
                }
                Err(_) => batch.refuse(pb::batch_delete_entry_response::Result {
                    status: Some(batch_status(Code::InvalidArgument, "missing entry ID")),
                    id: raw.clone(),
                }),
            }
        }
        if !valid.is_empty() {
            let applied = propose(&self.state, Command::DeleteEntries(valid.clone())).await?;
            let Outcome::DeletedEntries(items) = applied.outcome else {
                return Err(Status::internal("unexpected apply outcome"));
            };
            batch.fill(items.into_iter().zip(valid).map(|(item, id)| {
                let status = match item {
                    Ok(_) => batch_status_ok(),
                    Err(ItemError::EntryNotFound(_)) => {
                        batch_status(Code::NotFound, "entry not found")
                    }
                    Err(e) => batch_status(item_code(&e), format!("failed to delete entry: {e}")),
                };
                pb::batch_delete_entry_response::Result {
                    status: Some(status),
                    id: id.as_str().to_owned(),
                }
            }));
        }
        Ok(Response::new(pb::BatchDeleteEntryResponse { results: batch.finish() }))
    }

    async fn get_authorized_entries(
        &self,
        req: Request<pb::GetAuthorizedEntriesRequest>,
    ) -> Result<Response<pb::GetAuthorizedEntriesResponse>, Status> {
        let caller = caller_of(&req)?;
        let entries = self.authorized(&caller)?;
        let mask = req.into_inner().output_mask;
        Ok(Response::new(pb::GetAuthorizedEntriesResponse {
            entries: entries.iter().map(|e| entry_to_proto(e, mask.as_ref())).collect(),
        }))
    }

    type SyncAuthorizedEntriesStream = SyncStream;

    async fn sync_authorized_entries(
        &self,
        req: Request<Streaming<pb::SyncAuthorizedEntriesRequest>>,
    ) -> Result<Response<Self::SyncAuthorizedEntriesStream>, Status> {
        let caller = caller_of(&req)?;
        let authorized = self.authorized(&caller)?;
        let mut inbound = req.into_inner();
        let Some(first) = inbound.message().await? else {
            let empty: SyncStream = Box::pin(futures::stream::empty());
            return Ok(Response::new(empty));
        };
        if !first.ids.is_empty() {
            return Err(Status::invalid_argument(
                "specifying IDs on initial request is not supported",
            ));
        }
        if first.output_mask.as_ref().is_some_and(|m| !m.revision_number) {
            return Err(Status::invalid_argument("revision number cannot be masked"));
        }
        let mask = first.output_mask;
        let stream = async_stream::try_stream! {
            // Borrowed from the shared result for the life of the stream: no entry is
            // cloned or reference-counted per call.
            let entries: Vec<&Arc<RegistrationEntry>> = authorized.iter().collect();
            if entries.len() <= SYNC_PAGE_SIZE {
                yield pb::SyncAuthorizedEntriesResponse {
                    entry_revisions: Vec::new(),
                    entries: entries.iter().map(|e| entry_to_proto(e, mask.as_ref())).collect(),
                    more: false,
                };
                return;
            }
            let pages = entries.len().div_ceil(SYNC_PAGE_SIZE);
            for (i, chunk) in entries.chunks(SYNC_PAGE_SIZE).enumerate() {
                yield pb::SyncAuthorizedEntriesResponse {
                    entry_revisions: chunk.iter().map(|e| entry_revision_to_proto(e)).collect(),
                    entries: Vec::new(),
                    more: i + 1 < pages,
                };
            }
            let by_id: HashMap<&str, &Arc<RegistrationEntry>> =
                entries.iter().map(|e| (e.id.as_str(), *e)).collect();
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(s) if s.code() == Code::Cancelled => break,
                    Err(s) => Err(s)?,
                };
                let mut ids = msg.ids;
                ids.sort();
                let found: Vec<types::Entry> = ids
                    .iter()
                    .filter_map(|id| by_id.get(id.as_str()))
                    .map(|e| entry_to_proto(e, mask.as_ref()))
                    .collect();
                if found.is_empty() {
                    yield pb::SyncAuthorizedEntriesResponse {
                        entry_revisions: Vec::new(),
                        entries: Vec::new(),
                        more: false,
                    };
                    continue;
                }
                let pages = found.len().div_ceil(SYNC_PAGE_SIZE);
                for (i, chunk) in found.chunks(SYNC_PAGE_SIZE).enumerate() {
                    yield pb::SyncAuthorizedEntriesResponse {
                        entry_revisions: Vec::new(),
                        entries: chunk.to_vec(),
                        more: i + 1 < pages,
                    };
                }
            }
        };
        let out: SyncStream = Box::pin(stream);
        Ok(Response::new(out))
    }
}
