//! `agent list|show|count|ban|evict|purge`.

use clap::Subcommand;
use serde_json::json;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::types;

use super::{Admin, CliResult, Common, Ctx, Format, Output, id_string, parse_id, plural};
use crate::cli_err;

/// The agent commands.
#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Lists attested agents and their SPIFFE IDs.
    List(Filters),
    /// Counts attested agents.
    Count(Filters),
    /// Shows the details of an attested agent given its SPIFFE ID.
    Show(ById),
    /// Bans an attested agent given its SPIFFE ID.
    Ban(ById),
    /// Evicts an attested agent given its SPIFFE ID.
    Evict(ById),
    /// Purges expired agents that were attested using a non-TOFU security model.
    Purge(Purge),
}

/// Filters of `agent list` and `agent count`.
#[derive(clap::Args, Debug)]
pub struct Filters {
    /// A colon-delimited type:value selector. Can be used more than once.
    #[arg(long = "selector")]
    pub selector: Vec<String>,
    /// Filter by attestation type, like join_token or x509pop.
    #[arg(long = "attestationType", default_value = "")]
    pub attestation_type: String,
    /// 'true': agents that can re-attest, 'false': agents that can't, other values: all.
    #[arg(long = "canReattest", default_value = "")]
    pub can_reattest: String,
    /// 'true': banned agents, 'false': agents not banned, other values: all.
    #[arg(long = "banned", default_value = "")]
    pub banned: String,
    /// Filter by expiration time (format: "2006-01-02 15:04:05 -0700 -07").
    #[arg(long = "expiresBefore", default_value = "")]
    pub expires_before: String,
    /// The match mode used when filtering by selectors: exact, any, superset or subset.
    #[arg(long = "matchSelectorsOn", default_value = "superset")]
    pub match_selectors_on: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// `-spiffeID` of one agent.
#[derive(clap::Args, Debug)]
pub struct ById {
    /// The SPIFFE ID of the agent (agent identity).
    #[arg(long = "spiffeID", default_value = "")]
    pub spiffe_id: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `agent purge`.
#[derive(clap::Args, Debug)]
pub struct Purge {
    /// Time since the agent's SVID expired after which it is purged (Go duration).
    #[arg(long = "expiredFor", default_value = "720h", value_parser = parse_go_duration)]
    pub expired_for: i64,
    /// Prints the agents that would be purged without purging them.
    #[arg(long = "dryRun")]
    pub dry_run: bool,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Parses a Go duration (`1h30m`, `-5s`) into nanoseconds.
///
/// # Errors
/// Go's flag package text for a bad value: `parse error`.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    go_parse_duration::parse_duration(s).map_err(|_| "parse error".to_owned())
}

/// Runs an agent command.
pub async fn run(cmd: AgentCmd) -> Output {
    match cmd {
        AgentCmd::List(f) => {
            let common = f.common.clone();
            super::with_admin(&common, |mut ctx, admin| async move {
                let r = list(&mut ctx, &admin, &f).await;
                (ctx, r)
            })
            .await
        }
        AgentCmd::Count(f) => {
            let common = f.common.clone();
            super::with_admin(&common, |mut ctx, admin| async move {
                let r = count(&mut ctx, &admin, &f).await;
                (ctx, r)
            })
            .await
        }
        AgentCmd::Show(a) => by_id(a, Action::Show).await,
        AgentCmd::Ban(a) => by_id(a, Action::Ban).await,
        AgentCmd::Evict(a) => by_id(a, Action::Evict).await,
        AgentCmd::Purge(p) => {
            let common = p.common.clone();
            super::with_admin(&common, |mut ctx, admin| async move {
                let r = purge(&mut ctx, &admin, &p).await;
                (ctx, r)
            })
            .await
        }
    }
}

fn client(admin: &Admin) -> agentpb::agent_client::AgentClient<tonic::transport::Channel> {
    agentpb::agent_client::AgentClient::new(admin.channel())
        .max_decoding_message_size(super::ANSWER_LIMIT)
}

/// The filter both `list` and `count` send, checked as SPIRE's CLI checks it.
struct Filter {
    by_attestation_type: String,
    by_selector_match: Option<types::SelectorMatch>,
    by_banned: Option<bool>,
    by_can_reattest: Option<bool>,
    by_expires_before: String,
}

fn tri_state(s: &str) -> Option<bool> {
    match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn filter(f: &Filters) -> Result<Filter, super::CliError> {
    let mut by_selector_match = None;
    if !f.selector.is_empty() {
        let m = match f.match_selectors_on.as_str() {
            "exact" => types::selector_match::MatchBehavior::MatchExact,
            "any" => types::selector_match::MatchBehavior::MatchAny,
            "superset" => types::selector_match::MatchBehavior::MatchSuperset,
            "subset" => types::selector_match::MatchBehavior::MatchSubset,
            _ => return Err(cli_err!("unsupported match behavior")),
        };
        let mut selectors = Vec::new();
        for s in &f.selector {
            selectors.push(
                super::parse_selector(s)
                    .map_err(|e| cli_err!("error parsing selector {}: {e}", super::go_quote(s)))?,
            );
        }
        by_selector_match = Some(types::SelectorMatch { selectors, r#match: m as i32 });
    }
    if !f.expires_before.is_empty() {
        check_expires_before(&f.expires_before).map_err(|e| cli_err!("date is not valid: {e}"))?;
    }
    Ok(Filter {
        by_attestation_type: f.attestation_type.clone(),
        by_selector_match,
        by_banned: tri_state(&f.banned),
        by_can_reattest: tri_state(&f.can_reattest),
        by_expires_before: f.expires_before.clone(),
    })
}

async fn list(ctx: &mut Ctx, admin: &Admin, f: &Filters) -> CliResult {
    let fl = filter(f)?;
    let filter = agentpb::list_agents_request::Filter {
        by_attestation_type: fl.by_attestation_type,
        by_selector_match: fl.by_selector_match,
        by_banned: fl.by_banned,
        by_can_reattest: fl.by_can_reattest,
        by_expires_before: fl.by_expires_before,
    };
    let mut client = client(admin);
    let mut all = agentpb::ListAgentsResponse::default();
    let mut page_token = String::new();
    loop {
        let resp = client
            .list_agents(agentpb::ListAgentsRequest {
                filter: Some(filter.clone()),
                output_mask: None,
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|s| cli_err!("{}", admin.status(&s)))?
            .into_inner();
        all.agents.extend(resp.agents);
        // Stop on an empty token, and on a token that does not move (a server bug would
        // otherwise loop forever).
        if resp.next_page_token.is_empty() || resp.next_page_token == page_token {
            break;
        }
        page_token = resp.next_page_token;
    }
    ctx.print_proto(&all, |ctx, all| {
        if all.agents.is_empty() {
            ctx.print("No attested agents found\n");
            return Ok(());
        }
        let n = all.agents.len();
        ctx.print(&format!(
            "{}:\n\n",
            plural(&format!("Found {n} attested "), "agent", "agents", n)
        ));
        for a in &all.agents {
            print_agent(ctx, a);
        }
        Ok(())
    })
}

fn print_agent(ctx: &mut Ctx, a: &types::Agent) {
    ctx.print(&format!("SPIFFE ID         : {}\n", id_string(a.id.as_ref())));
    ctx.print(&format!("Attestation type  : {}\n", a.attestation_type));
    ctx.print(&format!(
        "Expiration time   : {}\n",
        super::printer::go_time_utc(a.x509svid_expires_at)
    ));
    if a.banned {
        ctx.print("Banned            : true\n");
    } else {
        ctx.print(&format!("Serial number     : {}\n", a.x509svid_serial_number));
    }
    ctx.print(&format!("Can re-attest     : {}\n", a.can_reattest));
    ctx.print("\n");
}

async fn count(ctx: &mut Ctx, admin: &Admin, f: &Filters) -> CliResult {
    let fl = filter(f)?;
    let filter = agentpb::count_agents_request::Filter {
        by_attestation_type: fl.by_attestation_type,
        by_selector_match: fl.by_selector_match,
        by_banned: fl.by_banned,
        by_can_reattest: fl.by_can_reattest,
        by_expires_before: fl.by_expires_before,
    };
    let resp = client(admin)
        .count_agents(agentpb::CountAgentsRequest { filter: Some(filter) })
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&resp, |ctx, resp| {
        let n = usize::try_from(resp.count).unwrap_or_default();
        ctx.print(&format!("{}\n", plural(&format!("{n} attested "), "agent", "agents", n)));
        Ok(())
    })
}

#[derive(Clone, Copy)]
enum Action {
    Show,
    Ban,
    Evict,
}

async fn by_id(a: ById, action: Action) -> Output {
    let common = a.common.clone();
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = by_id_inner(&mut ctx, &admin, &a.spiffe_id, action).await;
        (ctx, r)
    })
    .await
}

async fn by_id_inner(ctx: &mut Ctx, admin: &Admin, spiffe_id: &str, action: Action) -> CliResult {
    if spiffe_id.is_empty() {
        return Err(cli_err!("a SPIFFE ID is required"));
    }
    let id = parse_id(spiffe_id)?;
    let mut client = client(admin);
    let status = |s: tonic::Status| cli_err!("{}", admin.status(&s));
    match action {
        Action::Show => {
            let agent = client
                .get_agent(agentpb::GetAgentRequest { id: Some(id), output_mask: None })
                .await
                .map_err(status)?
                .into_inner();
            ctx.print_proto(&agent, |ctx, agent| {
                ctx.print("Found an attested agent given its SPIFFE ID\n\n");
                print_agent(ctx, agent);
                for s in &agent.selectors {
                    ctx.print(&format!("Selectors         : {}:{}\n", s.r#type, s.value));
                }
                Ok(())
            })
        }
        Action::Ban => {
            client.ban_agent(agentpb::BanAgentRequest { id: Some(id) }).await.map_err(status)?;
            empty_response(ctx, "Agent banned successfully\n");
            Ok(())
        }
        Action::Evict => {
            client
                .delete_agent(agentpb::DeleteAgentRequest { id: Some(id) })
                .await
                .map_err(status)?;
            empty_response(ctx, "Agent evicted successfully\n");
            Ok(())
        }
    }
}

/// Prints an empty response: `{}` as JSON, `pretty` otherwise.
fn empty_response(ctx: &mut Ctx, pretty: &str) {
    match ctx.format {
        Format::Json => ctx.print("{}\n"),
        Format::Pretty => ctx.print(pretty),
    }
}

async fn purge(ctx: &mut Ctx, admin: &Admin, p: &Purge) -> CliResult {
    let mut client = client(admin);
    let resp = client
        .list_agents(agentpb::ListAgentsRequest {
            filter: Some(agentpb::list_agents_request::Filter {
                by_can_reattest: Some(true),
                ..Default::default()
            }),
            output_mask: Some(types::AgentMask { x509svid_expires_at: true, ..Default::default() }),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map_err(|s| cli_err!("failed to list agents: {}", admin.status(&s)))?
        .into_inner();
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    // (agent id, deleted, error)
    let mut expired: Vec<(String, bool, String)> = Vec::new();
    for agent in resp.agents {
        let id = agent.id.clone().ok_or_else(|| cli_err!("trust domain is missing"))?;
        let since = now - i128::from(agent.x509svid_expires_at) * 1_000_000_000;
        if since <= i128::from(p.expired_for) {
            continue;
        }
        let mut row = (id_string(Some(&id)), false, String::new());
        if !p.dry_run {
            match client.delete_agent(agentpb::DeleteAgentRequest { id: Some(id) }).await {
                Ok(_) => row.1 = true,
                Err(s) => row.2 = admin.status(&s),
            }
        }
        expired.push(row);
    }
    match ctx.format {
        Format::Json => {
            let agents: Vec<serde_json::Value> = expired
                .iter()
                .map(|(id, deleted, error)| {
                    let mut v = json!({"agent_id": id, "deleted": deleted});
                    if !error.is_empty() {
                        v["error"] = json!(error);
                    }
                    v
                })
                .collect();
            // SPIRE's CLI prints the result struct inside a list.
            ctx.print(&super::printer::struct_json(&json!([{ "expired_agents": agents }])));
        }
        Format::Pretty => {
            if expired.is_empty() {
                ctx.print("No agents to purge.\n");
                return Ok(());
            }
            let n = expired.len();
            ctx.print(&format!(
                "{}\n\n",
                plural(&format!("Found {n} expired "), "agent", "agents", n)
            ));
            if p.dry_run {
                ctx.print("\nAgents that can be purged:\n");
                for (id, _, _) in &expired {
                    ctx.print(&format!("SPIFFE ID         : {id}\n"));
                }
                return Ok(());
            }
            let purged: Vec<_> = expired.iter().filter(|r| r.1).collect();
            let kept: Vec<_> = expired.iter().filter(|r| !r.1).collect();
            if !purged.is_empty() {
                ctx.print("Agents purged:\n");
                for (id, _, _) in purged {
                    ctx.print(&format!("SPIFFE ID         : {id}\n"));
                }
            }
            if !kept.is_empty() {
                ctx.print("Agents not purged:\n");
                for (id, _, error) in kept {
                    ctx.print(&format!("SPIFFE ID         : {id}\n"));
                    ctx.print(&format!("Error             : {error}\n"));
                }
            }
        }
    }
    Ok(())
}

/// Go's layout for `-expiresBefore`, element by element: (layout text, what the input must
/// hold there).
const EXPIRES_LAYOUT: &str = "2006-01-02 15:04:05 -0700 -07";

#[derive(Clone, Copy)]
enum Elem {
    Digits(usize, &'static str),
    Lit(&'static str),
    Zone(usize, &'static str),
}

/// Checks `s` against `2006-01-02 15:04:05 -0700 -07` and words a failure as Go's
/// `time.Parse` does (`parsing time "x" as "<layout>": cannot parse "x" as "2006"`).
///
/// # Errors
/// Go's text for the first element that does not parse, a field out of range, or extra text.
pub fn check_expires_before(s: &str) -> Result<(), String> {
    use Elem::{Digits, Lit, Zone};
    let layout = [
        Digits(4, "2006"),
        Lit("-"),
        Digits(2, "01"),
        Lit("-"),
        Digits(2, "02"),
        Lit(" "),
        Digits(2, "15"),
        Lit(":"),
        Digits(2, "04"),
        Lit(":"),
        Digits(2, "05"),
        Lit(" "),
        Zone(4, "-0700"),
        Lit(" "),
        Zone(2, "-07"),
    ];
    let q = super::go_quote;
    let cannot = |rest: &str, elem: &str| {
        format!(
            "parsing time {} as {}: cannot parse {} as {}",
            q(s),
            q(EXPIRES_LAYOUT),
            q(rest),
            q(elem)
        )
    };
    let mut rest = s;
    let mut fields = Vec::new();
    for (i, e) in layout.iter().enumerate() {
        match *e {
            Lit(l) => {
                let Some(r) = rest.strip_prefix(l) else {
                    // Go names the literal text up to the next element.
                    let mut text = String::from(l);
                    if let Some(Lit(next)) = layout.get(i + 1) {
                        text.push_str(next);
                    }
                    return Err(cannot(rest, &text));
                };
                rest = r;
            }
            Digits(n, name) => {
                let digits = rest.bytes().take(n).filter(u8::is_ascii_digit).count();
                if digits < n {
                    return Err(cannot(rest, name));
                }
                fields.push(rest[..n].parse::<u32>().unwrap_or_default());
                rest = &rest[n..];
            }
            Zone(n, name) => {
                let ok = rest.len() > n
                    && matches!(rest.as_bytes().first(), Some(b'+' | b'-'))
                    && rest.bytes().skip(1).take(n).all(|b| b.is_ascii_digit());
                if !ok {
                    return Err(cannot(rest, name));
                }
                rest = &rest[n + 1..];
            }
        }
    }
    if !rest.is_empty() {
        return Err(format!("parsing time {}: extra text: {}", q(s), q(rest)));
    }
    let out_of_range = |what: &str| format!("parsing time {}: {what} out of range", q(s));
    let (month, day, hour, minute, second) =
        (fields[1], fields[2], fields[3], fields[4], fields[5]);
    if !(1..=12).contains(&month) {
        return Err(out_of_range("month"));
    }
    if !(1..=31).contains(&day) {
        return Err(out_of_range("day"));
    }
    if hour > 23 {
        return Err(out_of_range("hour"));
    }
    if minute > 59 {
        return Err(out_of_range("minute"));
    }
    if second > 59 {
        return Err(out_of_range("second"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_before_layout() {
        assert_eq!(check_expires_before("2099-01-01 00:00:00 +0000 +00"), Ok(()));
        assert_eq!(
            check_expires_before("tomorrow").unwrap_err(),
            "parsing time \"tomorrow\" as \"2006-01-02 15:04:05 -0700 -07\": cannot parse \
             \"tomorrow\" as \"2006\""
        );
        assert_eq!(
            check_expires_before("2099-13-01 00:00:00 +0000 +00").unwrap_err(),
            "parsing time \"2099-13-01 00:00:00 +0000 +00\": month out of range"
        );
        assert!(
            check_expires_before("2099-01-01 00:00:00 +0000 +00x")
                .unwrap_err()
                .contains("extra text")
        );
    }

    #[test]
    fn tri_state_flags() {
        assert_eq!(tri_state("true"), Some(true));
        assert_eq!(tri_state("false"), Some(false));
        assert_eq!(tri_state("maybe"), None);
    }
}
