//! `token generate` and `healthcheck`.

use std::path::PathBuf;

use clap::Subcommand;
use ward_proto::spire::api::server::agent::v1 as agentpb;

use super::{Admin, CliResult, Common, Ctx, Format, Output, checked_i32, parse_id};
use crate::cli_err;

/// The token commands.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Generates a join token.
    Generate(Generate),
}

/// Flags of `token generate`.
#[derive(clap::Args, Debug)]
pub struct Generate {
    /// Token TTL in seconds.
    #[arg(long = "ttl", default_value_t = 600, allow_negative_numbers = true)]
    pub ttl: i64,
    /// Additional SPIFFE ID to assign the token owner.
    #[arg(long = "spiffeID", default_value = "")]
    pub spiffe_id: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `healthcheck` (it has no `-output`).
#[derive(clap::Args, Debug)]
pub struct Healthcheck {
    /// Path to the server's admin API socket.
    #[arg(long = "socketPath", default_value = crate::config::DEFAULT_SOCKET_PATH, value_parser = super::any_path)]
    pub socket_path: PathBuf,
    /// Performs a less stringent health check (the same check here).
    #[arg(long = "shallow")]
    pub shallow: bool,
    /// Prints verbose information.
    #[arg(long = "verbose")]
    pub verbose: bool,
}

/// Runs a token command.
pub async fn run(cmd: TokenCmd) -> Output {
    let TokenCmd::Generate(a) = cmd;
    let common = a.common.clone();
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = generate(&mut ctx, &admin, &a).await;
        (ctx, r)
    })
    .await
}

async fn generate(ctx: &mut Ctx, admin: &Admin, a: &Generate) -> CliResult {
    let agent_id = if a.spiffe_id.is_empty() { None } else { Some(parse_id(&a.spiffe_id)?) };
    let ttl = checked_i32(a.ttl).map_err(|e| cli_err!("invalid value for TTL: {e}"))?;
    let token = agentpb::agent_client::AgentClient::new(admin.channel())
        .create_join_token(agentpb::CreateJoinTokenRequest { ttl, token: String::new(), agent_id })
        .await
        .map_err(|s| cli_err!("{}", admin.status(&s)))?
        .into_inner();
    ctx.print_proto(&token, |ctx, token| {
        ctx.print(&format!("Token: {}\n", token.value));
        if a.spiffe_id.is_empty() {
            ctx.print("Warning: Missing SPIFFE ID.\n");
        }
        Ok(())
    })
}

/// `healthcheck`: asks the server's health service; healthy when SERVING.
pub async fn healthcheck(a: Healthcheck) -> Output {
    let common = Common { socket_path: a.socket_path.clone(), output: Format::Pretty };
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = check(&mut ctx, &admin, a.verbose)
            .await
            .map_err(|e| cli_err!("server is unhealthy: {e}"));
        if r.is_ok() {
            ctx.print("Server is healthy.\n");
        }
        (ctx, r)
    })
    .await
}

async fn check(ctx: &mut Ctx, admin: &Admin, verbose: bool) -> CliResult {
    use ward_proto::grpc::health::v1 as health;
    if verbose {
        ctx.print("Checking server health...\n");
    }
    let resp = health::health_client::HealthClient::new(admin.channel())
        .check(health::HealthCheckRequest { service: String::new() })
        .await;
    let resp = match resp {
        Ok(r) => r.into_inner(),
        Err(s) => {
            if verbose {
                ctx.eprint(&format!("Failed to check health: {}\n", admin.status(&s)));
            }
            return Err(cli_err!("unable to determine health"));
        }
    };
    let status = health::health_check_response::ServingStatus::try_from(resp.status)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| resp.status.to_string());
    if status != "SERVING" {
        return Err(cli_err!("server returned status {}", super::go_quote(&status)));
    }
    Ok(())
}
