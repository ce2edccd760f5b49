//! `cluster status | add | remove | transfer-leader`: ward's own commands for its Raft
//! cluster (SPIRE has none), over the admin socket's `ward.cluster.v1.Cluster` service.

use clap::Subcommand;
use ward_proto::ward::cluster::v1 as pb;
use ward_proto::ward::cluster::v1::cluster_client::ClusterClient;

use super::{Admin, CliError, CliResult, Common, Ctx, Output};
use crate::cli_err;

/// The cluster commands.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Members, roles, term, commit and applied index, lag per follower, last snapshot.
    Status(Status),
    /// Makes a one-time join credential for a new replica.
    Add(Add),
    /// Removes a replica (refused when it would leave no quorum or no voter).
    Remove(NodeArg),
    /// Hands leadership to another voter.
    #[command(name = "transfer-leader")]
    TransferLeader(NodeArg),
}

/// Flags of `cluster status`.
#[derive(clap::Args, Debug)]
pub struct Status {
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `cluster add`. Required values are checked by the command (as SPIRE's commands
/// check theirs), so that a missing one reads `Error: ... (-nodeId <id>)` with the flag
/// spelled as documented.
#[derive(clap::Args, Debug)]
pub struct Add {
    /// The new replica's node id (required).
    #[arg(long = "nodeId")]
    pub node_id: Option<u64>,
    /// The new replica's peer address (host:port), as the other replicas reach it (required).
    #[arg(long = "address")]
    pub address: Option<String>,
    /// Seconds the credential stays usable (0: one hour).
    #[arg(long = "ttl", default_value_t = 0)]
    pub ttl: i32,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `cluster remove` and `cluster transfer-leader`.
#[derive(clap::Args, Debug)]
pub struct NodeArg {
    /// The replica's node id (required).
    #[arg(long = "nodeId")]
    pub node_id: Option<u64>,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Runs a cluster command.
pub async fn run(cmd: ClusterCmd) -> Output {
    let common = match &cmd {
        ClusterCmd::Status(a) => a.common.clone(),
        ClusterCmd::Add(a) => a.common.clone(),
        ClusterCmd::Remove(a) | ClusterCmd::TransferLeader(a) => a.common.clone(),
    };
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = match cmd {
            ClusterCmd::Status(_) => status(&mut ctx, &admin).await,
            ClusterCmd::Add(a) => add(&mut ctx, &admin, &a).await,
            ClusterCmd::Remove(a) => remove(&mut ctx, &admin, &a).await,
            ClusterCmd::TransferLeader(a) => transfer(&mut ctx, &admin, &a).await,
        };
        (ctx, r)
    })
    .await
}

/// The sentence for a missing `-nodeId`.
pub const NODE_ID_REQUIRED: &str = "a node id is required (-nodeId <id>)";

/// The sentence for a missing `-address` of `cluster add`.
pub const ADDRESS_REQUIRED: &str = "an address is required (-address <host:port>)";

fn node_id(value: Option<u64>) -> Result<u64, CliError> {
    value.ok_or_else(|| cli_err!("{NODE_ID_REQUIRED}"))
}

fn client(admin: &Admin) -> ClusterClient<tonic::transport::Channel> {
    ClusterClient::new(admin.channel())
}

/// A refused call as Go's gRPC prints it. A server without the cluster service at all (a
/// SPIRE server, or one too old to say why) refuses with `Unimplemented` and no reason; the
/// reason is given here then.
fn refused(admin: &Admin, status: &tonic::Status) -> CliError {
    let text = admin.status(status);
    if status.code() == tonic::Code::Unimplemented && status.message().is_empty() {
        return cli_err!("the server has no cluster service (not a cluster member): {text}");
    }
    cli_err!("{text}")
}

async fn status(ctx: &mut Ctx, admin: &Admin) -> CliResult {
    let s = client(admin)
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| refused(admin, &e))?
        .into_inner();
    ctx.print_proto(&s, |ctx, s| {
        let leader = if s.leader_id == 0 { "none".to_owned() } else { s.leader_id.to_string() };
        ctx.print(&format!("Replica: {}\nLeader: {leader}\n", s.node_id));
        ctx.print(&format!("Term: {}\nCommit: {}\nApplied: {}\n", s.term, s.commit, s.applied));
        let snap = s.last_snapshot.as_ref().map_or(0, |x| x.index);
        ctx.print(&format!("Last snapshot: {snap}\n"));
        ctx.print(&format!(
            "Applied index: {}\nState digest: {}\n",
            s.applied_index, s.state_digest
        ));
        let slow = |x: &Option<pb::SlowSteps>| {
            let (count, slowest) = x.as_ref().map_or((0, 0), |x| (x.count, x.slowest_ms));
            format!("{count} (slowest {slowest} ms)")
        };
        ctx.print(&format!(
            "Slow raft cycles (10 ms or more): {}\nSlow log syncs (10 ms or more): {}\n",
            slow(&s.slow_raft_cycles),
            slow(&s.slow_log_syncs)
        ));
        ctx.print(&format!("Members: {}\n", s.members.len()));
        for m in &s.members {
            let leader = if m.leader { " leader" } else { "" };
            let address = if m.address.is_empty() { "-" } else { m.address.as_str() };
            let heard = m.last_heard_ms.map(|ms| format!(" last_heard={ms}ms")).unwrap_or_default();
            ctx.print(&format!(
                "  {} {}{leader} {address} matched={} lag={}{heard}\n",
                m.node_id, m.role, m.matched, m.lag
            ));
        }
        Ok(())
    })
}

async fn add(ctx: &mut Ctx, admin: &Admin, a: &Add) -> CliResult {
    let node_id = node_id(a.node_id)?;
    let address = a.address.clone().ok_or_else(|| cli_err!("{ADDRESS_REQUIRED}"))?;
    let r = client(admin)
        .add_member(pb::AddMemberRequest { node_id, address, ttl: a.ttl })
        .await
        .map_err(|e| refused(admin, &e))?
        .into_inner();
    ctx.print_proto(&r, |ctx, r| {
        ctx.print(&format!("Join credential: {}\n", r.credential));
        ctx.print(&format!("Expires at: {}\n", super::printer::rfc3339_utc(r.expires_at)));
        Ok(())
    })
}

async fn remove(ctx: &mut Ctx, admin: &Admin, a: &NodeArg) -> CliResult {
    let node_id = node_id(a.node_id)?;
    let r = client(admin)
        .remove_member(pb::RemoveMemberRequest { node_id })
        .await
        .map_err(|e| refused(admin, &e))?
        .into_inner();
    ctx.print_proto(&r, |ctx, _| {
        ctx.print(&format!("Removed replica {node_id}\n"));
        Ok(())
    })
}

async fn transfer(ctx: &mut Ctx, admin: &Admin, a: &NodeArg) -> CliResult {
    let node_id = node_id(a.node_id)?;
    let r = client(admin)
        .transfer_leader(pb::TransferLeaderRequest { node_id })
        .await
        .map_err(|e| refused(admin, &e))?
        .into_inner();
    ctx.print_proto(&r, |ctx, r| {
        ctx.print(&format!("Leader: {}\n", r.leader_id));
        Ok(())
    })
}
