//! `spire.api.server.agent.v1.Agent`: node attestation (join tokens, and the challenge-response
//! attestors of `ward-attest` such as x509pop), agent SVID renewal and join-token creation.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use ward_attest::{Refusal, RefusalCode, ServerNodeAttestor, Verification};
use ward_ca::SvidParams;
use ward_core::{
    AgentId, JoinToken, JoinTokenHash, RegistrationEntry, Selector, SelectorSet, SpiffeId,
};
use ward_proto::convert::{IdField, agent_to_proto, x509_svid_to_proto};
use ward_proto::spire::api::server::agent::v1::{self as pb, agent_server::Agent};
use ward_proto::spire::api::types;
use ward_proto::spire::api::types::permission_denied_details::Reason;
use ward_store::{AgentAttestation, AgentFilter, Command, ItemError, Outcome};

use super::{
    AGENT_CSR, agent_selector_filter, count_i32, id_for_role, new_entry_id, page_request, propose,
    sign_error_status, unimplemented,
};
use crate::current_read::{CurrentRead, confirm};
use crate::ratelimit::{Limited, grpc_deadline};
use crate::state::{ServerState, caller_of};
use crate::tls::leaf_facts;

/// The Agent service.
#[derive(Debug, Clone)]
pub struct AgentService {
    state: Arc<ServerState>,
}

impl AgentService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }

    /// Signs an agent SVID for the key in `csr`; returns the chain and the leaf's facts.
    fn sign_agent_svid(
        &self,
        id: &SpiffeId,
        csr: &[u8],
    ) -> Result<(Vec<Vec<u8>>, String, i64), Status> {
        let ca = self.state.ca.x509_ca().map_err(|e| Status::internal(e.to_string()))?;
        let params = SvidParams { spiffe_id: id, dns_names: &[], ttl: self.state.agent_ttl };
        let leaf = ca
            .sign_x509_svid_from_csr(csr, &params, self.state.clock.now())
            .map_err(|e| sign_error_status(&e, AGENT_CSR, "failed to sign X509 SVID"))?;
        let facts = leaf_facts(&leaf).map_err(Status::internal)?;
        let mut chain = vec![leaf];
        chain.extend(ca.svid_chain_tail().iter().cloned());
        Ok((chain, facts.serial, facts.not_after))
    }

    /// Proposes a ban or delete; a missing agent is NotFound.
    async fn agent_command(&self, cmd: Command, context: &str) -> Result<Response<()>, Status> {
        match propose(&self.state, cmd).await?.outcome {
            Outcome::Agent(Ok(_)) => Ok(Response::new(())),
            Outcome::Agent(Err(ItemError::AgentNotFound(_))) => {
                Err(Status::not_found("agent not found"))
            }
            Outcome::Agent(Err(e)) => Err(Status::internal(format!("{context}: {e}"))),
            other => Err(unexpected(&other)),
        }
    }

    /// Checks the first request of `AttestAgent` (SPIRE's `validateAttestAgentParams`).
    fn attest_params(
        first: pb::AttestAgentRequest,
    ) -> Result<(types::AttestationData, Vec<u8>), Status> {
        use pb::attest_agent_request::Step;
        let params = match first.step {
            Some(Step::Params(p)) => p,
            _ => return Err(Status::invalid_argument("malformed param: missing params")),
        };
        let Some(data) = params.data else {
            return Err(Status::invalid_argument("malformed param: missing attestation data"));
        };
        let Some(svid_params) = params.params else {
            return Err(Status::invalid_argument("malformed param: missing X509-SVID parameters"));
        };
        if svid_params.csr.is_empty() {
            return Err(Status::invalid_argument("malformed param: missing CSR"));
        }
        if data.r#type.is_empty() {
            return Err(Status::invalid_argument("malformed param: missing attestation data type"));
        }
        if data.payload.is_empty() {
            return Err(Status::invalid_argument(
                "malformed param: missing attestation data payload",
            ));
        }
        Ok((data, svid_params.csr))
    }

    async fn attest_join_token(
        &self,
        payload: Vec<u8>,
        csr: &[u8],
    ) -> Result<pb::AttestAgentResponse, Status> {
        let token = String::from_utf8(payload)
            .map_err(|_| Status::invalid_argument("failed to attest: join token is not UTF-8"))?;
        let now = self.state.clock.unix_seconds();
        let applied = propose(
            &self.state,
            Command::ConsumeJoinToken { hash: JoinTokenHash::of(&token), now },
        )
        .await?;
        match applied.outcome {
            Outcome::JoinTokenConsumed(Ok(c)) if c.expired => {
                return Err(Status::invalid_argument("join token expired"));
            }
            Outcome::JoinTokenConsumed(Ok(_)) => {}
            Outcome::JoinTokenConsumed(Err(_)) => {
                return Err(Status::invalid_argument(
                    "failed to attest: join token does not exist or has already been used",
                ));
            }
            other => return Err(unexpected(&other)),
        }
        let agent_id = join_token_agent_id(&self.state, &token)?;
        let how = Attestation { can_reattest: false, first_use: false };
        self.complete_attestation(&agent_id, "join_token", SelectorSet::default(), how, csr).await
    }

    /// Runs a challenge-response attestor over the stream: each challenge goes out on `tx`,
    /// each answer is read from `requests`, until the attestor accepts or refuses.
    async fn attest_with(
        &self,
        attestor: Arc<dyn ServerNodeAttestor>,
        payload: Vec<u8>,
        csr: Vec<u8>,
        requests: &mut Streaming<pb::AttestAgentRequest>,
        tx: &mpsc::Sender<Result<pb::AttestAgentResponse, Status>>,
    ) -> Result<pb::AttestAgentResponse, Status> {
        use pb::attest_agent_request::Step;
        let name = attestor.name();
        let refused = |r: Refusal| refusal_status(name, r);
        let now = self.state.clock.unix_seconds();
        // An attestor may fetch keys over the network (gcp_iit): off the async workers.
        let verifier = Arc::clone(&attestor);
        let mut step = attestor_call(move || verifier.begin(&payload, now))
            .await
            .map_err(|e| Status::internal(format!("node attestor failed: {e}")))?
            .map_err(refused)?;
        let attested = loop {
            match step {
                Verification::Attested(a) => break a,
                Verification::Challenge { challenge, pending } => {
                    let out = pb::AttestAgentResponse {
                        step: Some(pb::attest_agent_response::Step::Challenge(challenge)),
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        return Err(Status::internal("failed to send challenge to agent"));
                    }
                    let answer = match requests.message().await {
                        Ok(Some(m)) => match m.step {
                            Some(Step::ChallengeResponse(r)) => r,
                            _ => Vec::new(),
                        },
                        Ok(None) => {
                            return Err(Status::internal(
                                "failed to receive challenge from agent: EOF",
                            ));
                        }
                        Err(e) => {
                            return Err(Status::internal(format!(
                                "failed to receive challenge from agent: {}",
                                e.message()
                            )));
                        }
                    };
                    step = pending.respond(&answer).map_err(refused)?;
                }
            }
        };
        // An attestor that cannot re-attest trusts on first use (SPIRE's plugin layer): its
        // evidence attests an agent ID once, until that agent is evicted. This check gives
        // SPIRE's answer before a provider's API is asked (as SPIRE's attestors do) and saves
        // signing an SVID for nothing; the store's apply decides (`AttestAgentFirstUse`), so
        // two concurrent attestations cannot both succeed.
        let first_use = !attested.can_reattest;
        if first_use && self.state.store.agent(&AgentId(attested.agent_id.clone())).is_some() {
            return Err(refused(attested_before()));
        }
        let verifier = Arc::clone(&attestor);
        let now = self.state.clock.unix_seconds();
        let attested = attestor_call(move || verifier.complete(attested, now))
            .await
            .map_err(|e| Status::internal(format!("node attestor failed: {e}")))?
            .map_err(refused)?;
        let selectors = attested
            .selector_values
            .iter()
            .map(|v| Selector::new(name, v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(format!("invalid selector from node attestor: {e}")))?;
        self.complete_attestation(
            &attested.agent_id,
            name,
            SelectorSet::new(selectors),
            Attestation { can_reattest: attested.can_reattest, first_use },
            &csr,
        )
        .await
    }

    /// What follows a successful attestation (SPIRE's `AttestAgent` after the attestor): a
    /// banned agent is refused, the agent SVID is signed, and the attested node is stored with
    /// its selectors, replacing what an earlier attestation stored.
    async fn complete_attestation(
        &self,
        agent_id: &SpiffeId,
        attestation_type: &str,
        selectors: SelectorSet,
        how: Attestation,
        csr: &[u8],
    ) -> Result<pb::AttestAgentResponse, Status> {
        let Attestation { can_reattest, first_use } = how;
        if agent_id.path() == "/spire/server" {
            return Err(Status::internal("agent ID cannot collide with the server ID"));
        }
        if self.state.store.agent(&AgentId(agent_id.clone())).is_some_and(|n| n.is_banned()) {
            return Err(Status::permission_denied("failed to attest: agent is banned"));
        }
        let (chain, serial, expires_at) = self.sign_agent_svid(agent_id, csr)?;
        let att = AgentAttestation {
            id: AgentId(agent_id.clone()),
            attestation_type: attestation_type.to_owned(),
            serial,
            expires_at,
            selectors,
            can_reattest,
        };
        let cmd =
            if first_use { Command::AttestAgentFirstUse(att) } else { Command::AttestAgent(att) };
        match propose(&self.state, cmd).await?.outcome {
            Outcome::Agent(Ok(_)) => {}
            Outcome::Agent(Err(ItemError::AgentAttestedBefore(_))) => {
                return Err(refusal_status(attestation_type, attested_before()));
            }
            Outcome::Agent(Err(ItemError::AgentBanned(_))) => {
                return Err(Status::permission_denied("failed to attest: agent is banned"));
            }
            Outcome::Agent(Err(e)) => {
                return Err(Status::internal(format!("failed to create attested agent: {e}")));
            }
            other => return Err(unexpected(&other)),
        }
        tracing::info!(agent_id = %agent_id, node_attestor_type = attestation_type, "agent attested");
        Ok(pb::AttestAgentResponse {
            step: Some(pb::attest_agent_response::Step::Result(
                pb::attest_agent_response::Result {
                    svid: Some(x509_svid_to_proto(chain, agent_id, expires_at, "")),
                    reattestable: can_reattest,
                },
            )),
        })
    }
}

/// How an agent attested: what `complete_attestation` records besides its identity.
#[derive(Debug, Clone, Copy)]
struct Attestation {
    /// The agent re-attests instead of renewing its SVID.
    can_reattest: bool,
    /// The attestor trusts on first use: refuse when the agent ID has a record.
    first_use: bool,
}

/// SPIRE's refusal of trust-on-first-use evidence that attested an agent before
/// (`pkg/server/plugin/nodeattestor/base`).
fn attested_before() -> Refusal {
    Refusal::new(
        RefusalCode::PermissionDenied,
        "attestation data has already been used to attest an agent",
    )
}

/// A node attestor's refusal as SPIRE's plugin layer reports it: the code, and the message
/// prefixed with `nodeattestor(<name>): `.
/// How many node-attestor calls (which may wait on a cloud provider for up to their HTTP
/// timeouts) hold a blocking thread at once. The rest wait here without a thread, so a slow
/// provider cannot take the blocking pool that SVID signing also uses.
const MAX_ATTESTOR_CALLS: usize = 64;

/// Runs `call` on a blocking thread once one of [`MAX_ATTESTOR_CALLS`] permits is free.
async fn attestor_call<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_ATTESTOR_CALLS);
    // The semaphore is never closed, so acquiring only waits.
    let permit = PERMITS.acquire().await.ok();
    let result = tokio::task::spawn_blocking(call).await;
    drop(permit);
    result
}

/// The longest refusal message sent, in bytes: a provider's error body can be megabytes, and
/// a gRPC client refuses trailers past 16 KiB (hyper's default), which would turn the refusal
/// into a transport error with no text at all.
const MAX_REFUSAL_MESSAGE: usize = 8 * 1024;

fn refusal_status(name: &str, r: Refusal) -> Status {
    let mut message = format!("nodeattestor({name}): {}", r.message);
    if message.len() > MAX_REFUSAL_MESSAGE {
        let mut cut = MAX_REFUSAL_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (cut)");
    }
    match r.code {
        RefusalCode::InvalidArgument => Status::invalid_argument(message),
        RefusalCode::PermissionDenied => Status::permission_denied(message),
        RefusalCode::Internal => Status::internal(message),
    }
}

/// A join token made by the server: a version 4 UUID in hyphenated form, as spire-server
/// makes them, its 122 random bits drawn from the operating system at each call. A token is a
/// bearer credential, so it does not come from the process's id generator (uuid's
/// thread-local one), which a fork or a restored VM snapshot would repeat.
fn new_join_token() -> Result<String, Status> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Status::internal("the random source failed; no join token was made"))?;
    Ok(uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string())
}

/// `spiffe://<td>/spire/agent/join_token/<token>`.
fn join_token_agent_id(state: &ServerState, token: &str) -> Result<SpiffeId, Status> {
    state
        .trust_domain
        .spiffe_id(&format!("/spire/agent/join_token/{token}"))
        .map_err(|e| Status::invalid_argument(format!("failed to attest: invalid join token: {e}")))
}

/// The agent ID argument of Get/Delete/BanAgent: an agent of the server's trust domain
/// (`/spire/agent/...`), else InvalidArgument "invalid agent ID: ..." as in SPIRE.
fn agent_id_arg(state: &ServerState, id: Option<&types::Spiffeid>) -> Result<AgentId, Status> {
    let td = &state.trust_domain;
    id_for_role(id, IdField::AgentId, |id| id.check_agent_of(td)).map(AgentId)
}

type AgentFilterArgs<'a> =
    (&'a String, Option<&'a types::SelectorMatch>, Option<bool>, Option<bool>, &'a String);

/// ListAgents/CountAgents filter; `failed` prefixes SPIRE's datastore errors. A
/// `by_expires_before` value that does not parse is ignored, as SPIRE ignores it.
fn agent_filter(f: Option<AgentFilterArgs<'_>>, failed: &str) -> Result<AgentFilter, Status> {
    let mut out = AgentFilter::default();
    let Some((att, sel, banned, reattest, expires_before)) = f else { return Ok(out) };
    if !expires_before.is_empty() {
        out.expires_before = parse_expires_before(expires_before);
    }
    out.attestation_type = Some(att.clone()).filter(|a| !a.is_empty());
    out.selectors = sel.map(|m| agent_selector_filter(m, failed)).transpose()?;
    out.banned = banned;
    out.can_reattest = reattest;
    Ok(out)
}

/// The `by_expires_before` layout (Go's `2006-01-02 15:04:05 -0700 -07`) up to the second
/// zone, with the fraction of a second Go's parser also takes.
const EXPIRES_BEFORE_HEAD: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day] [hour padding:none]:[minute]:[second][optional [[first [.] [,]][subsecond]]] [offset_hour sign:mandatory][offset_minute]"
);
/// The trailing `-07` zone of the layout.
const EXPIRES_BEFORE_ZONE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[offset_hour sign:mandatory]");
/// The whole layout, for formatting.
const EXPIRES_BEFORE_LAYOUT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute] [offset_hour sign:mandatory]"
);

/// Reads a `by_expires_before` value as SPIRE does (Go's `time.Parse` with the layout
/// `2006-01-02 15:04:05 -0700 -07`, e.g. `2026-01-01 00:00:00 +0000 +00`): the filter keeps
/// agents whose SVID expires strictly before the instant, as Unix seconds. As in Go, the
/// trailing whole-hour zone decides the offset. `None` (no filter) for a value that does not
/// parse, and for Go's zero time, which SPIRE treats as no filter.
pub fn parse_expires_before(s: &str) -> Option<i64> {
    let (head, zone) = s.rsplit_once(' ')?;
    let local = time::OffsetDateTime::parse(head, EXPIRES_BEFORE_HEAD).ok()?;
    let zone = time::UtcOffset::parse(zone, EXPIRES_BEFORE_ZONE).ok()?;
    let at = time::PrimitiveDateTime::new(local.date(), local.time()).assume_offset(zone);
    // Go's zero time, 0001-01-01 00:00:00 UTC.
    const GO_ZERO_UNIX: i64 = -62_135_596_800;
    if at.unix_timestamp() == GO_ZERO_UNIX && at.nanosecond() == 0 {
        return None;
    }
    // `expires_at < t` for a t inside second n holds exactly for expiries up to n.
    let secs = at.unix_timestamp();
    Some(if at.nanosecond() > 0 { secs.saturating_add(1) } else { secs })
}

/// Formats Unix seconds `t` (UTC) in the `by_expires_before` layout, as SPIRE's
/// `agent list -expiresBefore` expects it; [`parse_expires_before`] reads it back.
pub fn format_expires_before(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(EXPIRES_BEFORE_LAYOUT).ok())
        .unwrap_or_default()
}

/// An outcome that does not belong to the command proposed: a bug. Neither the status nor the
/// log carries the outcome itself, which may hold request data.
fn unexpected(_: &Outcome) -> Status {
    tracing::error!("unexpected apply outcome");
    Status::internal("unexpected apply outcome")
}

type AttestStream = Pin<Box<dyn Stream<Item = Result<pb::AttestAgentResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn count_agents(
        &self,
        req: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountAgentsResponse>, Status> {
        let current = CurrentRead::of(&req);
        let f = req.into_inner().filter;
        let filter = agent_filter(
            f.as_ref().map(|f| {
                (
                    &f.by_attestation_type,
                    f.by_selector_match.as_ref(),
                    f.by_banned,
                    f.by_can_reattest,
                    &f.by_expires_before,
                )
            }),
            "failed to count agents",
        )?;
        confirm(current).await?;
        let count = self.state.store.count_agents(&filter);
        Ok(Response::new(pb::CountAgentsResponse { count: count_i32(count) }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        let filter = agent_filter(
            req.filter.as_ref().map(|f| {
                (
                    &f.by_attestation_type,
                    f.by_selector_match.as_ref(),
                    f.by_banned,
                    f.by_can_reattest,
                    &f.by_expires_before,
                )
            }),
            "failed to list agents",
        )?;
        // Page tokens are agent IDs.
        let page = page_request(
            req.page_size,
            &req.page_token,
            |t| SpiffeId::parse(t).is_ok(),
            |why| Status::internal(format!("failed to list agents: {why}")),
        )?;
        confirm(current).await?;
        let result = self.state.store.list_agents(&filter, &page);
        Ok(Response::new(pb::ListAgentsResponse {
            agents: result
                .items
                .iter()
                .map(|a| agent_to_proto(a, req.output_mask.as_ref()))
                .collect(),
            next_page_token: result.next_token.unwrap_or_default(),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<types::Agent>, Status> {
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        let id = agent_id_arg(&self.state, req.id.as_ref())?;
        confirm(current).await?;
        let node =
            self.state.store.agent(&id).ok_or_else(|| Status::not_found("agent not found"))?;
        Ok(Response::new(agent_to_proto(&node, req.output_mask.as_ref())))
    }

    async fn delete_agent(
        &self,
        req: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<()>, Status> {
        let id = agent_id_arg(&self.state, req.into_inner().id.as_ref())?;
        self.agent_command(Command::DeleteAgent(id), "failed to remove agent").await
    }

    async fn ban_agent(&self, req: Request<pb::BanAgentRequest>) -> Result<Response<()>, Status> {
        let id = agent_id_arg(&self.state, req.into_inner().id.as_ref())?;
        self.agent_command(Command::BanAgent(id), "failed to ban agent").await
    }

    type AttestAgentStream = AttestStream;

    async fn attest_agent(
        &self,
        req: Request<Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<Self::AttestAgentStream>, Status> {
        let caller = caller_of(&req)?;
        let deadline = grpc_deadline(req.metadata());
        let ip = caller.rate_limit_ip();
        self.state.limits.admit(Limited::AttestAgent, ip, 1, deadline).await?;
        let mut stream = req.into_inner();
        let first = match stream.message().await? {
            Some(m) => m,
            None => return Err(Status::invalid_argument("malformed param: missing params")),
        };
        let (data, csr) = Self::attest_params(first)?;
        if data.r#type == "join_token" {
            let resp = self.attest_join_token(data.payload, &csr).await?;
            let out: AttestStream = Box::pin(futures::stream::once(async move { Ok(resp) }));
            return Ok(Response::new(out));
        }
        let Some(attestor) = self.state.node_attestor(&data.r#type) else {
            return Err(Status::failed_precondition(format!(
                "error getting node attestor: could not find node attestor type {:?}",
                data.r#type
            )));
        };
        // The exchange runs beside the response stream: challenges go out as they are made.
        let (tx, rx) = mpsc::channel(2);
        let service = self.clone();
        tokio::spawn(async move {
            let result = service.attest_with(attestor, data.payload, csr, &mut stream, &tx).await;
            if let Err(status) = &result {
                tracing::debug!(code = ?status.code(), error = status.message(), "node attestation refused");
            }
            let _ = tx.send(result).await;
        });
        let out: AttestStream = Box::pin(ReceiverStream::new(rx));
        Ok(Response::new(out))
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let caller = caller_of(&req)?;
        let Some(agent_id) = caller.agent_id() else {
            return Err(Status::permission_denied("caller is not an agent"));
        };
        let deadline = grpc_deadline(req.metadata());
        let ip = caller.rate_limit_ip();
        self.state.limits.admit(Limited::RenewAgent, ip, 1, deadline).await?;
        let node = self
            .state
            .store
            .agent(&agent_id)
            .ok_or_else(|| Status::not_found("agent not found"))?;
        if node.can_reattest {
            return Err(ward_proto::convert::permission_denied(
                "agent must reattest instead of renew",
                Reason::AgentMustReattest,
            ));
        }
        let Some(params) = req.into_inner().params else {
            return Err(Status::invalid_argument("params cannot be nil"));
        };
        if params.csr.is_empty() {
            return Err(Status::invalid_argument("missing CSR"));
        }
        let (chain, serial, expires_at) =
            self.sign_agent_svid(agent_id.spiffe_id(), &params.csr)?;
        let cmd = Command::RenewAgent {
            id: agent_id.clone(),
            new_serial: serial,
            new_expires_at: expires_at,
        };
        match propose(&self.state, cmd).await?.outcome {
            Outcome::Agent(Ok(_)) => {}
            Outcome::Agent(Err(e)) => {
                return Err(Status::internal(format!("failed to update agent: {e}")));
            }
            other => return Err(unexpected(&other)),
        }
        Ok(Response::new(pb::RenewAgentResponse {
            svid: Some(x509_svid_to_proto(chain, agent_id.spiffe_id(), expires_at, "")),
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<types::JoinToken>, Status> {
        let req = req.into_inner();
        if req.ttl < 1 {
            return Err(Status::invalid_argument("ttl is required, you must provide one"));
        }
        // The ID the token's entry gives the agent is checked before anything is written.
        let td = &self.state.trust_domain;
        let agent_id = req
            .agent_id
            .as_ref()
            .map(|id| id_for_role(Some(id), IdField::AgentId, |id| id.check_workload_of(td)))
            .transpose()?;
        let token = if req.token.is_empty() { new_join_token()? } else { req.token };
        let now = self.state.clock.unix_seconds();
        let expires_at = now.saturating_add(i64::from(req.ttl));
        let token_agent = join_token_agent_id(&self.state, &token)
            .map_err(|_| Status::invalid_argument("invalid join token"))?;
        let entry = match agent_id {
            None => None,
            Some(id) => {
                let selector = Selector::new("spiffe_id", token_agent.as_str())
                    .map_err(|e| Status::internal(e.to_string()))?;
                Some(RegistrationEntry {
                    created_at: now,
                    ..RegistrationEntry::new(
                        new_entry_id(),
                        id,
                        token_agent.clone(),
                        SelectorSet::new(vec![selector]),
                    )
                })
            }
        };
        let cmd = Command::CreateJoinToken {
            token: JoinToken { token: token.clone(), expires_at }.to_stored(),
            entry,
        };
        match propose(&self.state, cmd).await?.outcome {
            Outcome::JoinTokenCreated(Ok(_)) => {}
            Outcome::JoinTokenCreated(Err(ItemError::TokenExists)) => {
                // SPIRE answers a reused token value with its datastore's unique-constraint
                // failure; scripts see the same text here.
                return Err(Status::internal(
                    "failed to create token: datastore-sql: UNIQUE constraint failed: \
                     join_tokens.token",
                ));
            }
            Outcome::JoinTokenCreated(Err(e)) => {
                return Err(Status::internal(format!(
                    "failed to create join token registration entry: {e}"
                )));
            }
            other => return Err(unexpected(&other)),
        }
        Ok(Response::new(types::JoinToken { value: token, expires_at }))
    }

    async fn post_status(
        &self,
        _: Request<pb::PostStatusRequest>,
    ) -> Result<Response<pb::PostStatusResponse>, Status> {
        Err(unimplemented("PostStatus"))
    }
}

#[cfg(test)]
mod expires_before_tests {
    use super::*;

    #[test]
    fn parses_spire_layout_as_go_does() {
        assert_eq!(parse_expires_before("2026-01-01 00:00:00 +0000 +00"), Some(1_767_225_600));
        // The trailing whole-hour zone decides, as in Go.
        assert_eq!(parse_expires_before("2026-01-01 05:00:00 +0530 +05"), Some(1_767_225_600));
        assert_eq!(parse_expires_before("2025-12-31 19:00:00 -0500 -05"), Some(1_767_225_600));
        assert_eq!(parse_expires_before("2026-01-01 01:00:00 +0000 +01"), Some(1_767_225_600));
        assert_eq!(parse_expires_before("2026-01-01 0:00:00 +0000 +00"), Some(1_767_225_600));
        assert_eq!(parse_expires_before("2026-01-01 00:00:00.250 +0000 +00"), Some(1_767_225_601));
        assert_eq!(format_expires_before(1_767_225_600), "2026-01-01 00:00:00 +0000 +00");
        let t = 1_800_000_123;
        assert_eq!(parse_expires_before(&format_expires_before(t)), Some(t));
    }

    #[test]
    fn malformed_values_and_the_zero_time_mean_no_filter() {
        for bad in [
            "yesterday",
            "2026-01-01T00:00:00Z",
            "2026-13-01 00:00:00 +0000 +00",
            "2026-02-30 00:00:00 +0000 +00",
            "2026-01-01 24:00:00 +0000 +00",
            "2026-01-01 00:00:00 0000 +00",
            "2026-01-01 00:00:00 +0000",
            "2026-1-01 00:00:00 +0000 +00",
            "2026-01-01 00:00:00 +0000 +00 ",
            "0001-01-01 00:00:00 +0000 +00",
        ] {
            assert_eq!(parse_expires_before(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod unexpected_outcome_tests {
    use super::*;

    #[test]
    fn status_carries_no_outcome_data() {
        let consumed = ward_store::ConsumedToken { expires_at: 1_234_567, expired: false };
        let status = unexpected(&Outcome::JoinTokenConsumed(Ok(consumed)));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "unexpected apply outcome");
    }
}

#[cfg(test)]
mod refusal_status_tests {
    use super::*;

    #[test]
    fn a_huge_refusal_is_cut_on_a_character_boundary_and_a_small_one_kept() {
        let small =
            refusal_status("aws_iid", Refusal::new(RefusalCode::Internal, "no such instance"));
        assert_eq!(small.code(), tonic::Code::Internal);
        assert_eq!(small.message(), "nodeattestor(aws_iid): no such instance");
        // A provider's 4 MB error body, in multi-byte characters.
        let huge = refusal_status(
            "azure_msi",
            Refusal { code: RefusalCode::PermissionDenied, message: "é".repeat(2 << 20) },
        );
        assert_eq!(huge.code(), tonic::Code::PermissionDenied);
        assert!(huge.message().len() <= MAX_REFUSAL_MESSAGE + "… (cut)".len());
        assert!(huge.message().starts_with("nodeattestor(azure_msi): éé"));
        assert!(huge.message().ends_with("é… (cut)"));
    }
}

#[cfg(test)]
mod attestor_call_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_bound_of_attestor_calls_hold_a_thread_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..MAX_ATTESTOR_CALLS * 2)
            .map(|_| {
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                tokio::spawn(attestor_call(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= MAX_ATTESTOR_CALLS, "{most} calls ran at once");
        assert!(most > 1, "calls ran one at a time");
    }
}

#[cfg(test)]
mod join_token_tests {
    use super::*;

    #[test]
    fn a_server_made_join_token_is_a_hyphenated_random_uuid() {
        let a = new_join_token().unwrap();
        let b = new_join_token().unwrap();
        assert_ne!(a, b);
        for t in [&a, &b] {
            assert_eq!(t.len(), 36, "{t}");
            let u = uuid::Uuid::parse_str(t).unwrap();
            assert_eq!(u.get_version(), Some(uuid::Version::Random), "{t}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{t}");
            assert_eq!(u.hyphenated().to_string(), *t);
        }
    }
}
