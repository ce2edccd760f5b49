//! `spire.api.server.agent.v1.Agent`: node attestation (join tokens), agent SVID renewal and
//! join-token creation.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use ward_ca::SvidParams;
use ward_core::{AgentId, JoinToken, RegistrationEntry, Selector, SelectorSet, SpiffeId};
use ward_proto::convert::{IdField, agent_to_proto, spiffe_id_from_proto, x509_svid_to_proto};
use ward_proto::spire::api::server::agent::v1::{self as pb, agent_server::Agent};
use ward_proto::spire::api::types;
use ward_proto::spire::api::types::permission_denied_details::Reason;
use ward_store::{AgentAttestation, AgentFilter, Command, ItemError, Outcome};

use super::{
    agent_selector_filter, count_i32, new_entry_id, page_request, propose, sign_error_status,
    unimplemented,
};
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
            .map_err(|e| sign_error_status(&e, "failed to sign X509 SVID"))?;
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

    async fn attest(
        &self,
        first: pb::AttestAgentRequest,
    ) -> Result<pb::AttestAgentResponse, Status> {
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
        if data.r#type != "join_token" {
            return Err(Status::failed_precondition(format!(
                "error getting node attestor: could not find node attestor type {:?}",
                data.r#type
            )));
        }
        let token = String::from_utf8(data.payload)
            .map_err(|_| Status::invalid_argument("failed to attest: join token is not UTF-8"))?;
        let now = self.state.clock.unix_seconds();
        let applied =
            propose(&self.state, Command::ConsumeJoinToken { token: token.clone(), now }).await?;
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
        if self.state.store.agent(&AgentId(agent_id.clone())).is_some_and(|n| n.is_banned()) {
            return Err(Status::permission_denied("failed to attest: agent is banned"));
        }
        let (chain, serial, expires_at) = self.sign_agent_svid(&agent_id, &svid_params.csr)?;
        let cmd = Command::AttestAgent(AgentAttestation {
            id: AgentId(agent_id.clone()),
            attestation_type: "join_token".into(),
            serial,
            expires_at,
            selectors: SelectorSet::default(),
            can_reattest: false,
        });
        match propose(&self.state, cmd).await?.outcome {
            Outcome::Agent(Ok(_)) => {}
            Outcome::Agent(Err(ItemError::AgentBanned(_))) => {
                return Err(Status::permission_denied("failed to attest: agent is banned"));
            }
            Outcome::Agent(Err(e)) => {
                return Err(Status::internal(format!("failed to create attested agent: {e}")));
            }
            other => return Err(unexpected(&other)),
        }
        tracing::info!(agent_id = %agent_id, "agent attested");
        Ok(pb::AttestAgentResponse {
            step: Some(pb::attest_agent_response::Step::Result(
                pb::attest_agent_response::Result {
                    svid: Some(x509_svid_to_proto(chain, &agent_id, expires_at, "")),
                    reattestable: false,
                },
            )),
        })
    }
}

/// `spiffe://<td>/spire/agent/join_token/<token>`.
fn join_token_agent_id(state: &ServerState, token: &str) -> Result<SpiffeId, Status> {
    state
        .trust_domain
        .spiffe_id(&format!("/spire/agent/join_token/{token}"))
        .map_err(|e| Status::invalid_argument(format!("failed to attest: invalid join token: {e}")))
}

/// The agent ID argument of Get/Delete/BanAgent: a member of the server's trust domain.
fn agent_id_arg(id: Option<&types::Spiffeid>) -> Result<AgentId, Status> {
    let id = spiffe_id_from_proto(id, IdField::AgentId)
        .map_err(|e| Status::invalid_argument(format!("invalid agent ID: {e}")))?;
    Ok(AgentId(id))
}

type AgentFilterArgs<'a> =
    (&'a String, Option<&'a types::SelectorMatch>, Option<bool>, Option<bool>, &'a String);

/// ListAgents/CountAgents filter; `failed` prefixes SPIRE's datastore errors.
fn agent_filter(f: Option<AgentFilterArgs<'_>>, failed: &str) -> Result<AgentFilter, Status> {
    let mut out = AgentFilter::default();
    let Some((att, sel, banned, reattest, expires_before)) = f else { return Ok(out) };
    if !expires_before.is_empty() {
        let t = parse_expires_before(expires_before).map_err(|e| {
            Status::invalid_argument(format!("failed to parse expires before filter: {e}"))
        })?;
        out.expires_before = Some(t);
    }
    out.attestation_type = Some(att.clone()).filter(|a| !a.is_empty());
    out.selectors = sel.map(|m| agent_selector_filter(m, failed)).transpose()?;
    out.banned = banned;
    out.can_reattest = reattest;
    Ok(out)
}

/// Parses the `by_expires_before` filter value, in the layout SPIRE's CLI sends (Go's
/// `2006-01-02 15:04:05 -0700 -07`, e.g. `2026-01-01 00:00:00 +0000 +00`), into Unix
/// seconds. The `±HHMM` offset is authoritative; the trailing `±HH` must agree with it.
///
/// # Errors
/// A message saying which part is malformed.
pub fn parse_expires_before(s: &str) -> Result<i64, String> {
    let parts: Vec<&str> = s.split(' ').collect();
    let [date, clock, offset, offset_hours] = parts.as_slice() else {
        return Err(format!("{s:?} is not \"YYYY-MM-DD hh:mm:ss ±hhmm ±hh\""));
    };
    let num = |v: &str, what: &str| -> Result<u32, String> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad {what} {v:?}"));
        }
        v.parse::<u32>().map_err(|_| format!("bad {what} {v:?}"))
    };
    let fields = |v: &str, sep: char, what: &str| -> Result<[u32; 3], String> {
        let f: Vec<&str> = v.split(sep).collect();
        let [a, b, c] = f.as_slice() else { return Err(format!("bad {what} {v:?}")) };
        Ok([num(a, what)?, num(b, what)?, num(c, what)?])
    };
    let [year, month, day] = fields(date, '-', "date")?;
    let [hour, minute, second] = fields(clock, ':', "time")?;
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(|| format!("bad month in {date:?}"))?;
    let date = i32::try_from(year)
        .ok()
        .and_then(|y| time::Date::from_calendar_date(y, month, u8::try_from(day).ok()?).ok())
        .ok_or_else(|| format!("bad date {date:?}"))?;
    let clock = time::Time::from_hms(
        u8::try_from(hour).unwrap_or(u8::MAX),
        u8::try_from(minute).unwrap_or(u8::MAX),
        u8::try_from(second).unwrap_or(u8::MAX),
    )
    .map_err(|_| format!("bad time {clock:?}"))?;
    let sign_and = |v: &str, len: usize| -> Result<(i32, u32), String> {
        let (sign, digits) = match v.split_at_checked(1) {
            Some(("+", d)) => (1, d),
            Some(("-", d)) => (-1, d),
            _ => return Err(format!("bad zone offset {v:?}")),
        };
        if digits.len() != len {
            return Err(format!("bad zone offset {v:?}"));
        }
        Ok((sign, num(digits, "zone offset")?))
    };
    let (sign, hhmm) = sign_and(offset, 4)?;
    let (sign_h, hh) = sign_and(offset_hours, 2)?;
    if (sign_h, hh) != (sign, hhmm / 100) {
        return Err(format!("zone offsets {offset:?} and {offset_hours:?} disagree"));
    }
    let offset_secs = i64::from(sign) * i64::from((hhmm / 100) * 3600 + (hhmm % 100) * 60);
    let local = time::PrimitiveDateTime::new(date, clock).assume_utc().unix_timestamp();
    Ok(local - offset_secs)
}

/// Formats Unix seconds `t` (UTC) in the `by_expires_before` layout, as SPIRE's
/// `agent purge` does; [`parse_expires_before`] reads it back.
pub fn format_expires_before(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 +00",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => String::new(),
    }
}

fn unexpected(o: &Outcome) -> Status {
    Status::internal(format!("unexpected apply outcome {o:?}"))
}

type AttestStream = Pin<Box<dyn Stream<Item = Result<pb::AttestAgentResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn count_agents(
        &self,
        req: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountAgentsResponse>, Status> {
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
        let count = self.state.store.count_agents(&filter);
        Ok(Response::new(pb::CountAgentsResponse { count: count_i32(count) }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
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
        let req = req.into_inner();
        let id = agent_id_arg(req.id.as_ref())?;
        let node =
            self.state.store.agent(&id).ok_or_else(|| Status::not_found("agent not found"))?;
        Ok(Response::new(agent_to_proto(&node, req.output_mask.as_ref())))
    }

    async fn delete_agent(
        &self,
        req: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<()>, Status> {
        let id = agent_id_arg(req.into_inner().id.as_ref())?;
        self.agent_command(Command::DeleteAgent(id), "failed to remove agent").await
    }

    async fn ban_agent(&self, req: Request<pb::BanAgentRequest>) -> Result<Response<()>, Status> {
        let id = agent_id_arg(req.into_inner().id.as_ref())?;
        self.agent_command(Command::BanAgent(id), "failed to ban agent").await
    }

    type AttestAgentStream = AttestStream;

    async fn attest_agent(
        &self,
        req: Request<Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<Self::AttestAgentStream>, Status> {
        let caller = caller_of(&req)?;
        if let Some(ip) = caller.rate_limit_ip() {
            self.state
                .limits
                .attest
                .acquire(ip, 1)
                .await
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        }
        let mut stream = req.into_inner();
        let first = match stream.message().await? {
            Some(m) => m,
            None => return Err(Status::invalid_argument("malformed param: missing params")),
        };
        let resp = self.attest(first).await?;
        let out: AttestStream = Box::pin(futures::stream::once(async move { Ok(resp) }));
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
        if let Some(ip) = caller.rate_limit_ip() {
            self.state
                .limits
                .sign
                .acquire(ip, 1)
                .await
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        }
        let node = self
            .state
            .store
            .agent(&agent_id)
            .ok_or_else(|| Status::not_found("agent not found"))?;
        if node.can_reattest {
            return Err(ward_proto::convert::permission_denied(
                "agent must reattest to renew its SVID",
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
        let token = if req.token.is_empty() { uuid::Uuid::new_v4().to_string() } else { req.token };
        let now = self.state.clock.unix_seconds();
        let expires_at = now.saturating_add(i64::from(req.ttl));
        let token_agent = join_token_agent_id(&self.state, &token)
            .map_err(|_| Status::invalid_argument("invalid join token"))?;
        let entry = match req.agent_id {
            None => None,
            Some(id) => {
                let id = spiffe_id_from_proto(Some(&id), IdField::AgentId)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                if !id.is_member_of(&self.state.trust_domain) {
                    return Err(Status::invalid_argument(format!(
                        "invalid agent ID: \"{id}\" is not a member of trust domain \"{}\"",
                        self.state.trust_domain
                    )));
                }
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
            token: JoinToken { token: token.clone(), expires_at },
            entry,
        };
        match propose(&self.state, cmd).await?.outcome {
            Outcome::JoinTokenCreated(Ok(_)) => {}
            Outcome::JoinTokenCreated(Err(ItemError::TokenExists)) => {
                return Err(Status::already_exists("join token already exists"));
            }
            Outcome::JoinTokenCreated(Err(e)) => {
                return Err(Status::invalid_argument(format!("failed to create token: {e}")));
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
    fn parses_spire_layout_with_offsets() {
        assert_eq!(parse_expires_before("2026-01-01 00:00:00 +0000 +00"), Ok(1_767_225_600));
        assert_eq!(parse_expires_before("2026-01-01 05:30:00 +0530 +05"), Ok(1_767_225_600));
        assert_eq!(parse_expires_before("2025-12-31 19:00:00 -0500 -05"), Ok(1_767_225_600));
        assert_eq!(format_expires_before(1_767_225_600), "2026-01-01 00:00:00 +0000 +00");
        let t = 1_800_000_123;
        assert_eq!(parse_expires_before(&format_expires_before(t)), Ok(t));
    }

    #[test]
    fn refuses_malformed_values() {
        for (bad, why) in [
            ("2026-01-01T00:00:00Z", "is not"),
            ("2026-13-01 00:00:00 +0000 +00", "bad month"),
            ("2026-02-30 00:00:00 +0000 +00", "bad date"),
            ("2026-01-01 24:00:00 +0000 +00", "bad time"),
            ("2026-01-01 00:00:00 0000 +00", "bad zone offset"),
            ("2026-01-01 00:00:00 +0100 +02", "disagree"),
            ("2026-01-+1 00:00:00 +0000 +00", "bad date"),
        ] {
            let err = parse_expires_before(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
