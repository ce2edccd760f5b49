//! `cluster status | add | remove | transfer-leader`: ward's own commands for its Raft
//! cluster (SPIRE has none), over the admin socket's `ward.cluster.v1.Cluster` service.

use clap::Subcommand;
use ward_proto::ward::cluster::v1 as pb;
use ward_proto::ward::cluster::v1::cluster_client::ClusterClient;

use super::{Admin, CliResult, Common, Ctx, Output};
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

/// Flags of `cluster add`.
#[derive(clap::Args, Debug)]
pub struct Add {
    /// The new replica's node id.
    #[arg(long = "nodeId")]
    pub node_id: u64,
    /// The new replica's peer address (host:port), as the other replicas reach it.
    #[arg(long = "address")]
    pub address: String,
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
    /// The replica's node id.
    #[arg(long = "nodeId")]
    pub node_id: u64,
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
            ClusterCmd::Remove(a) => remove(&mut ctx, &admin, a.node_id).await,
            ClusterCmd::TransferLeader(a) => transfer(&mut ctx, &admin, a.node_id).await,
        };
        (ctx, r)
    })
    .await
}

fn client(admin: &Admin) -> ClusterClient<tonic::transport::Channel> {
    ClusterClient::new(admin.channel())
}

async fn status(ctx: &mut Ctx, admin: &Admin) -> CliResult {
    let s = client(admin)
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| cli_err!("{}", admin.status(&e)))?
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
        ctx.print(&format!("Members: {}\n", s.members.len()));
        for m in &s.members {
            let leader = if m.leader { " leader" } else { "" };
            let address = if m.address.is_empty() { "-" } else { m.address.as_str() };
            ctx.print(&format!(
                "  {} {}{leader} {address} matched={} lag={}\n",
                m.node_id, m.role, m.matched, m.lag
            ));
        }
        Ok(())
    })
}

async fn add(ctx: &mut Ctx, admin: &Admin, a: &Add) -> CliResult {
    let r = client(admin)
        .add_member(pb::AddMemberRequest {
            node_id: a.node_id,
            address: a.address.clone(),
            ttl: a.ttl,
        })
        .await
        .map_err(|e| cli_err!("{}", admin.status(&e)))?
        .into_inner();
    ctx.print_proto(&r, |ctx, r| {
        ctx.print(&format!("Join credential: {}\n", r.credential));
        ctx.print(&format!("Expires at: {}\n", super::printer::rfc3339_utc(r.expires_at)));
        Ok(())
    })
}

async fn remove(ctx: &mut Ctx, admin: &Admin, node_id: u64) -> CliResult {
    client(admin)
        .remove_member(pb::RemoveMemberRequest { node_id })
        .await
        .map_err(|e| cli_err!("{}", admin.status(&e)))?;
    ctx.print(&format!("Removed replica {node_id}\n"));
    Ok(())
}

async fn transfer(ctx: &mut Ctx, admin: &Admin, node_id: u64) -> CliResult {
    let r = client(admin)
        .transfer_leader(pb::TransferLeaderRequest { node_id })
        .await
        .map_err(|e| cli_err!("{}", admin.status(&e)))?
        .into_inner();
    ctx.print(&format!("Leader: {}\n", r.leader_id));
    Ok(())
}
