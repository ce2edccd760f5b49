//! `spire.api.server.entry.v1.Entry`: entry administration and the agents' entry sync.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Code, Request, Response, Status, Streaming};
use ward_core::entry::{EntryCheck, EntryError};
use ward_core::id_policy::{verify_member_id, verify_workload_id};
use ward_core::{EntryId, RegistrationEntry, SpiffeId, TrustDomain};
use ward_proto::convert::{
    ConvertError, IdField, RepeatedField, batch_status, batch_status_ok, entry_from_proto,
    entry_patch_from_proto, entry_revision_to_proto, entry_to_proto, repeated_field,
    selector_match_from_proto, selectors_from_proto, spiffe_id_from_proto,
};
use ward_proto::spire::api::server::entry::v1::{self as pb, entry_server::Entry};
use ward_proto::spire::api::types;
use ward_store::{Command, EntryFilter, EntryUpdate, FederatesWithFilter, ItemError, Outcome};

use super::{
    Batch, count_i32, go_quoted_rune, item_code, new_entry_id, page_request, propose, row_id_token,
};
use crate::current_read::{CurrentRead, confirm};
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

/// Which batch write an item status is for: SPIRE's texts name it.
#[derive(Clone, Copy)]
enum Write {
    Create,
    Update,
}

impl Write {
    /// SPIRE's prefix for a refusal by its datastore.
    fn failed(self) -> &'static str {
        match self {
            Self::Create => "failed to create entry",
            Self::Update => "failed to update entry",
        }
    }
}

/// SPIRE's status for a wire entry that does not convert.
fn convert_status(e: &ConvertError) -> types::Status {
    batch_status(Code::InvalidArgument, format!("failed to convert entry: {e}"))
}

/// SPIRE's status for an entry that breaks a rule: its API's conversion or its datastore's
/// validation, which answer with different prefixes.
fn entry_error_status(e: &EntryError, write: Write) -> types::Status {
    match e.check() {
        EntryCheck::Request => {
            batch_status(Code::InvalidArgument, format!("failed to convert entry: {e}"))
        }
        EntryCheck::Record => batch_status(
            Code::InvalidArgument,
            format!("{}: datastore-validation: {e}", write.failed()),
        ),
    }
}

/// SPIRE's status for a list field holding an item twice: its SQL datastore's unique index
/// refuses the row.
fn repeated_status(field: RepeatedField, write: Write) -> types::Status {
    let index = match field {
        RepeatedField::Selectors => {
            "selectors.registered_entry_id, selectors.type, selectors.value"
        }
        RepeatedField::DnsNames => "dns_names.registered_entry_id, dns_names.value",
    };
    batch_status(
        Code::AlreadyExists,
        format!("{}: datastore-sql: UNIQUE constraint failed: {index}", write.failed()),
    )
}

/// SPIRE's status for an item the store refused.
fn item_status(e: &ItemError, write: Write) -> types::Status {
    match e {
        ItemError::EntryExists(_) => {
            batch_status(Code::AlreadyExists, "similar entry already exists")
        }
        ItemError::EntryIdTaken(_) => batch_status(
            Code::AlreadyExists,
            format!(
                "{}: datastore-sql: UNIQUE constraint failed: registered_entries.entry_id",
                write.failed()
            ),
        ),
        // SPIRE does not say which entry it did not find.
        ItemError::EntryNotFound(_) => batch_status(Code::NotFound, write.failed()),
        ItemError::InvalidEntry(inner) => entry_error_status(inner, write),
        ItemError::FederatedBundleMissing(td) => batch_status(
            Code::Internal,
            format!("{}: unable to find federated bundle \"{}\"", write.failed(), td.id()),
        ),
        other => batch_status(item_code(other), format!("{}: {other}", write.failed())),
    }
}

/// Renders an entry the way SPIRE answers a create or update: its datastore reads the
/// entry back with DNS names (and selectors) in index order. Reads keep the caller's order.
fn written_entry_to_proto(e: &RegistrationEntry, mask: Option<&types::EntryMask>) -> types::Entry {
    let mut out = entry_to_proto(e, mask);
    out.dns_names.sort_unstable();
    out
}

/// A wire entry to create, checked in SPIRE's order; the status when it is refused.
fn new_entry(
    proto: &types::Entry,
    td: &TrustDomain,
    now: i64,
) -> Result<RegistrationEntry, types::Status> {
    // SPIRE checks the id only after the entry's other rules: convert under a stand-in
    // when the wire id is invalid, and report that after those rules.
    let (id, id_check) = if proto.id.is_empty() {
        (new_entry_id(), Ok(()))
    } else {
        match EntryId::new(&proto.id) {
            Ok(id) => (id, Ok(())),
            Err(e) => (new_entry_id(), Err(e)),
        }
    };
    let mut e = entry_from_proto(proto, id).map_err(|err| convert_status(&err))?;
    e.validate_with_id(td, id_check).map_err(|err| entry_error_status(&err, Write::Create))?;
    if let Some(field) = repeated_field(proto, None) {
        return Err(repeated_status(field, Write::Create));
    }
    e.created_at = now;
    e.revision_number = 0;
    Ok(e)
}

/// A wire entry and input mask to apply, checked in SPIRE's order; the status when it is
/// refused.
fn entry_update(
    proto: &types::Entry,
    input_mask: Option<&types::EntryMask>,
    td: &TrustDomain,
) -> Result<EntryUpdate, types::Status> {
    let patch = entry_patch_from_proto(proto, input_mask).map_err(|err| convert_status(&err))?;
    patch.validate(td).map_err(|err| entry_error_status(&err, Write::Update))?;
    // An id that cannot be stored names no entry: SPIRE finds none.
    let id = EntryId::new(&proto.id)
        .map_err(|_| batch_status(Code::NotFound, Write::Update.failed()))?;
    if let Some(field) = repeated_field(proto, input_mask) {
        return Err(repeated_status(field, Write::Update));
    }
    Ok(EntryUpdate { id, patch })
}

/// The fields ListEntries and CountEntries filters share (two prost types of one shape).
struct WireFilter<'a> {
    by_spiffe_id: Option<&'a types::Spiffeid>,
    by_parent_id: Option<&'a types::Spiffeid>,
    by_selectors: Option<&'a types::SelectorMatch>,
    by_federates_with: Option<&'a types::FederatesWithMatch>,
    by_hint: Option<&'a String>,
    by_downstream: Option<bool>,
}

macro_rules! wire_filter {
    ($f:expr) => {
        $f.map(|f| WireFilter {
            by_spiffe_id: f.by_spiffe_id.as_ref(),
            by_parent_id: f.by_parent_id.as_ref(),
            by_selectors: f.by_selectors.as_ref(),
            by_federates_with: f.by_federates_with.as_ref(),
            by_hint: f.by_hint.as_ref(),
            by_downstream: f.by_downstream,
        })
    };
}

/// A filter SPIFFE ID that parses and follows `rule`, else `message: <why>`.
fn filter_id<E: std::fmt::Display>(
    id: &types::Spiffeid,
    rule: impl FnOnce(&SpiffeId) -> Result<(), E>,
    message: &str,
) -> Result<SpiffeId, Status> {
    let bad = |why: String| Status::invalid_argument(format!("{message}: {why}"));
    let parsed = spiffe_id_from_proto(Some(id), IdField::Id).map_err(|e| match e {
        ConvertError::InvalidId(_, why) => bad(why.to_string()),
        other => bad(other.to_string()),
    })?;
    rule(&parsed).map_err(|e| bad(e.to_string()))?;
    Ok(parsed)
}

/// The ListEntries / CountEntries filter, checked as SPIRE checks it. `failed` prefixes the
/// errors SPIRE's datastore gives ("failed to list entries", "failed to count entries").
fn entry_filter(
    f: Option<WireFilter<'_>>,
    td: &TrustDomain,
    failed: &str,
) -> Result<EntryFilter, Status> {
    let mut out = EntryFilter::default();
    let Some(f) = f else { return Ok(out) };
    out.hint = f.by_hint.cloned();
    if let Some(id) = f.by_parent_id {
        out.parent_id =
            Some(filter_id(id, |id| verify_member_id(id, td), "malformed parent ID filter")?);
    }
    if let Some(id) = f.by_spiffe_id {
        out.spiffe_id =
            Some(filter_id(id, |id| verify_workload_id(id, td), "malformed SPIFFE ID filter")?);
    }
    let selectors = match f.by_selectors {
        Some(m) => {
            let bad = |why: &dyn std::fmt::Display| {
                Status::invalid_argument(format!("malformed selectors filter: {why}"))
            };
            let set = selectors_from_proto(&m.selectors).map_err(|e| bad(&e))?;
            if set.is_empty() {
                return Err(bad(&"empty selector set"));
            }
            Some((set, m.r#match))
        }
        None => None,
    };
    let federates_with = match f.by_federates_with {
        Some(m) => {
            let bad = |why: &dyn std::fmt::Display| {
                Status::invalid_argument(format!("malformed federates with filter: {why}"))
            };
            let tds = m
                .trust_domains
                .iter()
                .map(|t| TrustDomain::parse(t).map_err(|e| bad(&e)))
                .collect::<Result<Vec<_>, _>>()?;
            if tds.is_empty() {
                return Err(bad(&"empty trust domain set"));
            }
            Some((tds, m.r#match))
        }
        None => None,
    };
    // SPIRE's datastore reads the match modes last, as Internal errors.
    let mode = |n: i32, what: &str| {
        selector_match_from_proto(n).map_err(|_| {
            Status::internal(format!(
                "{failed}: datastore-sql: unhandled {what} match behavior {}",
                go_quoted_rune(n)
            ))
        })
    };
    if let Some((selectors, n)) = selectors {
        let match_mode = mode(n, "selectors")?;
        out.selectors = Some(ward_store::SelectorFilter { selectors, match_mode });
    }
    if let Some((trust_domains, n)) = federates_with {
        let match_mode = mode(n, "federates with")?;
        out.federates_with = Some(FederatesWithFilter { trust_domains, match_mode });
    }
    out.downstream_only = f.by_downstream == Some(true);
    Ok(out)
}

type SyncStream =
    Pin<Box<dyn Stream<Item = Result<pb::SyncAuthorizedEntriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Entry for EntryService {
    async fn count_entries(
        &self,
        req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        let td = &self.state.trust_domain;
        let filter =
            entry_filter(wire_filter!(req.filter.as_ref()), td, "failed to count entries")?;
        confirm(current).await?;
        let count = self.state.store.count_entries(&filter);
        Ok(Response::new(pb::CountEntriesResponse { count: count_i32(count) }))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        let td = &self.state.trust_domain;
        let filter = entry_filter(wire_filter!(req.filter.as_ref()), td, "failed to list entries")?;
        // Page tokens are creation numbers, as SPIRE's are row ids. SPIRE's SQL datastore
        // wraps the refusal of a token.
        let page = page_request(req.page_size, &req.page_token, row_id_token, |why| {
            Status::internal(format!(
                "failed to list entries: datastore-sql: rpc error: code = InvalidArgument \
                     desc = {why}"
            ))
        })?;
        confirm(current).await?;
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
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        if req.id.is_empty() {
            return Err(Status::invalid_argument("missing ID"));
        }
        let id = EntryId::new(&req.id).map_err(|_| Status::not_found("entry not found"))?;
        confirm(current).await?;
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
        // Items refused before the proposal keep their slot with a status; the rest are
        // proposed, and apply decides them against the stored state.
        let mut batch: Batch<pb::batch_create_entry_response::Result> = Batch::default();
        let mut valid: Vec<RegistrationEntry> = Vec::new();
        for proto in &req.entries {
            let refused = |status| pb::batch_create_entry_response::Result {
                status: Some(status),
                entry: None,
            };
            if let Some(e) = batch.take(new_entry(proto, td, now).map_err(refused)) {
                valid.push(e);
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
                    entry: Some(written_entry_to_proto(&e, mask)),
                },
                Err(err) => pb::batch_create_entry_response::Result {
                    status: Some(item_status(&err, Write::Create)),
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
        let td = &self.state.trust_domain;
        // Each item becomes a patch; apply merges it into the stored entry.
        let mut batch: Batch<pb::batch_update_entry_response::Result> = Batch::default();
        let mut valid = Vec::new();
        for proto in &req.entries {
            let refused = |status| pb::batch_update_entry_response::Result {
                status: Some(status),
                entry: None,
            };
            let item = entry_update(proto, req.input_mask.as_ref(), td).map_err(refused);
            if let Some(u) = batch.take(item) {
                valid.push(u);
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
                    entry: Some(written_entry_to_proto(&e, out_mask)),
                },
                Err(err) => pb::batch_update_entry_response::Result {
                    status: Some(item_status(&err, Write::Update)),
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
            let refused = |code, message: &str| pb::batch_delete_entry_response::Result {
                status: Some(batch_status(code, message)),
                id: raw.clone(),
            };
            if raw.is_empty() {
                batch.refuse(refused(Code::InvalidArgument, "missing entry ID"));
                continue;
            }
            // An id that cannot be stored names no entry.
            match EntryId::new(raw) {
                Ok(id) => {
                    batch.accept();
                    valid.push(id);
                }
                Err(_) => batch.refuse(refused(Code::NotFound, "entry not found")),
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
