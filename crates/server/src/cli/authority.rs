//! `localauthority x509|jwt show|prepare|activate|taint|revoke` and
//! `upstreamauthority taint|revoke`.

use clap::Subcommand;
use ward_proto::spire::api::server::localauthority::v1 as lapb;

use super::{Admin, CliResult, Common, Ctx, Output};
use crate::cli_err;

/// `localauthority x509` or `localauthority jwt`.
#[derive(Subcommand, Debug)]
pub enum LocalAuthorityCmd {
    /// The X.509 authorities.
    X509 {
        #[command(subcommand)]
        /// The verb.
        verb: Verb,
    },
    /// The JWT authorities.
    Jwt {
        #[command(subcommand)]
        /// The verb.
        verb: Verb,
    },
}

/// What to do with a local authority.
#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Shows the active, prepared and old authorities.
    Show(NoId),
    /// Prepares a new authority and publishes it in the bundle.
    Prepare(NoId),
    /// Activates the prepared authority.
    Activate(WithId),
    /// Marks the old authority as tainted.
    Taint(WithId),
    /// Removes the tainted old authority from the bundle.
    Revoke(WithId),
}

/// Flags of verbs without an authority ID.
#[derive(clap::Args, Debug)]
pub struct NoId {
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// `-authorityID`.
#[derive(clap::Args, Debug)]
pub struct WithId {
    /// The authority ID.
    #[arg(long = "authorityID", default_value = "")]
    pub authority_id: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// `upstreamauthority taint|revoke`.
#[derive(Subcommand, Debug)]
pub enum UpstreamAuthorityCmd {
    /// Marks the upstream X.509 authority as tainted.
    Taint(Skid),
    /// Removes the tainted upstream X.509 authority from the bundle.
    Revoke(Skid),
}

/// `-subjectKeyID`.
#[derive(clap::Args, Debug)]
pub struct Skid {
    /// The Subject Key ID of the upstream authority's CA certificate.
    #[arg(long = "subjectKeyID", default_value = "")]
    pub subject_key_id: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    X509,
    Jwt,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::X509 => "X.509",
            Kind::Jwt => "JWT",
        }
    }
}

/// Runs a localauthority command.
pub async fn run_local(cmd: LocalAuthorityCmd) -> Output {
    let (kind, verb) = match cmd {
        LocalAuthorityCmd::X509 { verb } => (Kind::X509, verb),
        LocalAuthorityCmd::Jwt { verb } => (Kind::Jwt, verb),
    };
    let common = match &verb {
        Verb::Show(a) | Verb::Prepare(a) => a.common.clone(),
        Verb::Activate(a) | Verb::Taint(a) | Verb::Revoke(a) => a.common.clone(),
    };
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = local(&mut ctx, &admin, kind, &verb).await;
        (ctx, r)
    })
    .await
}

fn client(
    admin: &Admin,
) -> lapb::local_authority_client::LocalAuthorityClient<tonic::transport::Channel> {
    lapb::local_authority_client::LocalAuthorityClient::new(admin.channel())
}

fn print_state(ctx: &mut Ctx, kind: Kind, s: &lapb::AuthorityState) {
    ctx.print(&format!("  Authority ID: {}\n", s.authority_id));
    ctx.print(&format!("  Expires at: {}\n", super::printer::go_time_utc(s.expires_at)));
    if kind == Kind::Jwt {
        return;
    }
    if s.upstream_authority_subject_key_id.is_empty() {
        ctx.print("  Upstream authority ID: No upstream authority\n");
    } else {
        ctx.print(&format!(
            "  Upstream authority Subject Key ID: {}\n",
            s.upstream_authority_subject_key_id
        ));
    }
}

/// Prints `title:` and the state, or the internal error SPIRE reports when it is missing.
fn print_one(
    ctx: &mut Ctx,
    kind: Kind,
    title: &str,
    what: &str,
    state: Option<&lapb::AuthorityState>,
) -> CliResult {
    ctx.print(&format!("{title} {} authority:\n", kind.label()));
    let Some(state) = state else {
        return Err(cli_err!(
            "internal error: expected to have {what} {} authority information",
            kind.label()
        ));
    };
    print_state(ctx, kind, state);
    Ok(())
}

fn print_show(
    ctx: &mut Ctx,
    kind: Kind,
    active: Option<&lapb::AuthorityState>,
    prepared: Option<&lapb::AuthorityState>,
    old: Option<&lapb::AuthorityState>,
) {
    for (i, (title, state)) in
        [("Active", active), ("Prepared", prepared), ("Old", old)].into_iter().enumerate()
    {
        if i > 0 {
            ctx.print("\n");
        }
        ctx.print(&format!("{title} {} authority:\n", kind.label()));
        match state {
            Some(s) => print_state(ctx, kind, s),
            None => ctx.print(&format!(
                "  No {} {} authority found\n",
                title.to_lowercase(),
                kind.label()
            )),
        }
    }
}

async fn local(ctx: &mut Ctx, admin: &Admin, kind: Kind, verb: &Verb) -> CliResult {
    let mut c = client(admin);
    let label = kind.label();
    let id = match verb {
        Verb::Activate(a) | Verb::Taint(a) | Verb::Revoke(a) => {
            if a.authority_id.is_empty() {
                return Err(cli_err!("an authority ID is required"));
            }
            a.authority_id.clone()
        }
        Verb::Show(_) | Verb::Prepare(_) => String::new(),
    };
    let st = |s: tonic::Status| admin.status(&s);
    match (kind, verb) {
        (Kind::X509, Verb::Show(_)) => {
            let r = c
                .get_x509_authority_state(lapb::GetX509AuthorityStateRequest {})
                .await
                .map_err(|s| cli_err!("could not get X.509 authorities: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_show(ctx, kind, r.active.as_ref(), r.prepared.as_ref(), r.old.as_ref());
                Ok(())
            })
        }
        (Kind::Jwt, Verb::Show(_)) => {
            let r = c
                .get_jwt_authority_state(lapb::GetJwtAuthorityStateRequest {})
                .await
                .map_err(|s| cli_err!("{}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_show(ctx, kind, r.active.as_ref(), r.prepared.as_ref(), r.old.as_ref());
                Ok(())
            })
        }
        (Kind::X509, Verb::Prepare(_)) => {
            let r = c
                .prepare_x509_authority(lapb::PrepareX509AuthorityRequest {})
                .await
                .map_err(|s| cli_err!("could not prepare {label} authority: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_one(ctx, kind, "Prepared", "prepared", r.prepared_authority.as_ref())
            })
        }
        (Kind::Jwt, Verb::Prepare(_)) => {
            let r = c
                .prepare_jwt_authority(lapb::PrepareJwtAuthorityRequest {})
                .await
                .map_err(|s| cli_err!("could not prepare {label} authority: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_one(ctx, kind, "Prepared", "prepared", r.prepared_authority.as_ref())
            })
        }
        (Kind::X509, Verb::Activate(_)) => {
            let r = c
                .activate_x509_authority(lapb::ActivateX509AuthorityRequest { authority_id: id })
                .await
                .map_err(|s| cli_err!("could not activate {label} authority: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_one(ctx, kind, "Activated", "activated", r.activated_authority.as_ref())
            })
        }
        (Kind::Jwt, Verb::Activate(_)) => {
            let r = c
                .activate_jwt_authority(lapb::ActivateJwtAuthorityRequest { authority_id: id })
                .await
                .map_err(|s| cli_err!("could not activate {label} authority: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_one(ctx, kind, "Activated", "activated", r.activated_authority.as_ref())
            })
        }
        (Kind::X509, Verb::Taint(_)) => {
            let r = c
                .taint_x509_authority(lapb::TaintX509AuthorityRequest { authority_id: id })
                .await
                .map_err(|s| cli_err!("could not taint {label} authority: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_one(ctx, kind, "Tainted", "tainted", r.tainted_authority.as_ref())
            })
        }
        (Kind::Jwt, Verb::Taint(_)) => {
            let r = c
                .taint_jwt_authority(lapb::TaintJwtAuthorityRequest { authority_id: id })
                .await
                .map_err(|s| cli_err!("could not taint {label} authority: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_one(ctx, kind, "Tainted", "tainted", r.tainted_authority.as_ref())
            })
        }
        (Kind::X509, Verb::Revoke(_)) => {
            let r = c
                .revoke_x509_authority(lapb::RevokeX509AuthorityRequest { authority_id: id })
                .await
                .map_err(|s| cli_err!("could not revoke {label} authority: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_one(ctx, kind, "Revoked", "revoked", r.revoked_authority.as_ref())
            })
        }
        (Kind::Jwt, Verb::Revoke(_)) => {
            let r = c
                .revoke_jwt_authority(lapb::RevokeJwtAuthorityRequest { authority_id: id })
                .await
                .map_err(|s| cli_err!("could not revoke {label} authority: {}", st(s)))?
                .into_inner();
            ctx.print_proto(&r, |ctx, r| {
                print_one(ctx, kind, "Revoked", "revoked", r.revoked_authority.as_ref())
            })
        }
    }
}

/// Runs an upstreamauthority command.
pub async fn run_upstream(cmd: UpstreamAuthorityCmd) -> Output {
    let (taint, a) = match cmd {
        UpstreamAuthorityCmd::Taint(a) => (true, a),
        UpstreamAuthorityCmd::Revoke(a) => (false, a),
    };
    let common = a.common.clone();
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = upstream(&mut ctx, &admin, taint, &a.subject_key_id).await;
        (ctx, r)
    })
    .await
}

async fn upstream(ctx: &mut Ctx, admin: &Admin, taint: bool, skid: &str) -> CliResult {
    if skid.is_empty() {
        return Err(cli_err!("the Subject Key ID of the X.509 upstream authority is required"));
    }
    let mut c = client(admin);
    if taint {
        let r = c
            .taint_x509_upstream_authority(lapb::TaintX509UpstreamAuthorityRequest {
                subject_key_id: skid.to_owned(),
            })
            .await
            .map_err(|s| {
                cli_err!("could not taint X.509 upstream authority: {}", admin.status(&s))
            })?
            .into_inner();
        ctx.print_proto(&r, |ctx, r| {
            ctx.print("Tainted X.509 upstream authority:\n");
            ctx.print(&format!("  Subject Key ID: {}\n", r.upstream_authority_subject_key_id));
            Ok(())
        })
    } else {
        let r = c
            .revoke_x509_upstream_authority(lapb::RevokeX509UpstreamAuthorityRequest {
                subject_key_id: skid.to_owned(),
            })
            .await
            .map_err(|s| {
                cli_err!("could not revoke X.509 upstream authority: {}", admin.status(&s))
            })?
            .into_inner();
        ctx.print_proto(&r, |ctx, r| {
            ctx.print("Revoked X.509 upstream authority:\n");
            ctx.print(&format!("  Subject Key ID: {}\n", r.upstream_authority_subject_key_id));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_prints_the_three_slots() {
        let mut ctx = Ctx::new(super::super::Format::Pretty);
        let active = lapb::AuthorityState {
            authority_id: "abc".into(),
            expires_at: 4_102_444_800,
            upstream_authority_subject_key_id: String::new(),
        };
        print_show(&mut ctx, Kind::X509, Some(&active), None, None);
        assert_eq!(
            ctx.out,
            "Active X.509 authority:\n  Authority ID: abc\n  Expires at: 2100-01-01 00:00:00 +0000 UTC\n\
             \x20 Upstream authority ID: No upstream authority\n\nPrepared X.509 authority:\n\
             \x20 No prepared X.509 authority found\n\nOld X.509 authority:\n\
             \x20 No old X.509 authority found\n"
        );
    }
}
