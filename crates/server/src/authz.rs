//! Per-method authorization as SPIRE decides it, as a pure function.
//!
//! [`policy`] says which caller classes a method admits; [`decide`] takes the facts about a
//! caller (transport, presented SVID, admin entries, attested-node record) and the time, and
//! returns [`Decision::Allow`] or a [`Denial`] with SPIRE's code, message and
//! `PermissionDeniedDetails` reason. The async layer in `crate::layer` gathers the facts.

use std::fmt;

use ward_core::AttestedNode;

/// Which callers a method admits (SPIRE's `policy_data.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Anyone, authenticated or not.
    Any,
    /// Only callers on the admin Unix socket.
    Local,
    /// Local callers and admins.
    LocalOrAdmin,
    /// Local callers, admins and attested agents.
    LocalOrAdminOrAgent,
    /// Attested agents only.
    Agent,
    /// Callers whose SPIFFE ID has a `downstream` entry.
    Downstream,
}

impl Policy {
    /// Whether local callers pass.
    pub fn allows_local(self) -> bool {
        matches!(self, Self::Local | Self::LocalOrAdmin | Self::LocalOrAdminOrAgent)
    }

    /// Whether admins pass.
    pub fn allows_admin(self) -> bool {
        matches!(self, Self::LocalOrAdmin | Self::LocalOrAdminOrAgent)
    }

    /// Whether attested agents pass.
    pub fn allows_agent(self) -> bool {
        matches!(self, Self::Agent | Self::LocalOrAdminOrAgent)
    }
}

/// The policy of a gRPC method given by its full path (`/package.Service/Method`), or `None`
/// for a method SPIRE has no policy for (denied to everyone).
pub fn policy(full_method: &str) -> Option<Policy> {
    use Policy::*;
    let p = match full_method {
        "/spire.api.server.svid.v1.SVID/MintX509SVID" => LocalOrAdmin,
        "/spire.api.server.svid.v1.SVID/MintJWTSVID" => LocalOrAdmin,
        "/spire.api.server.svid.v1.SVID/BatchNewX509SVID" => Agent,
        "/spire.api.server.svid.v1.SVID/NewJWTSVID" => Agent,
        "/spire.api.server.svid.v1.SVID/NewDownstreamX509CA" => Downstream,
        "/spire.api.server.bundle.v1.Bundle/GetBundle" => Any,
        "/spire.api.server.bundle.v1.Bundle/AppendBundle" => LocalOrAdmin,
        "/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority" => Downstream,
        "/spire.api.server.bundle.v1.Bundle/CountBundles" => LocalOrAdmin,
        "/spire.api.server.bundle.v1.Bundle/ListFederatedBundles" => LocalOrAdmin,
        "/spire.api.server.bundle.v1.Bundle/GetFederatedBundle" => LocalOrAdminOrAgent,
        "/spire.api.server.bundle.v1.Bundle/BatchCreateFederatedBundle" => LocalOrAdmin,
        "/spire.api.server.bundle.v1.Bundle/BatchUpdateFederatedBundle" => LocalOrAdmin,
        "/spire.api.server.bundle.v1.Bundle/BatchSetFederatedBundle" => LocalOrAdmin,
        "/spire.api.server.bundle.v1.Bundle/BatchDeleteFederatedBundle" => LocalOrAdmin,
        "/spire.api.server.debug.v1.Debug/GetInfo" => Local,
        "/spire.api.server.entry.v1.Entry/CountEntries" => LocalOrAdmin,
        "/spire.api.server.entry.v1.Entry/ListEntries" => LocalOrAdmin,
        "/spire.api.server.entry.v1.Entry/GetEntry" => LocalOrAdmin,
        "/spire.api.server.entry.v1.Entry/BatchCreateEntry" => LocalOrAdmin,
        "/spire.api.server.entry.v1.Entry/BatchUpdateEntry" => LocalOrAdmin,
        "/spire.api.server.entry.v1.Entry/BatchDeleteEntry" => LocalOrAdmin,
        "/spire.api.server.entry.v1.Entry/GetAuthorizedEntries" => Agent,
        "/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries" => Agent,
        "/ward.agent.v1.AgentWatch/Watch" => Agent,
        "/spire.api.server.agent.v1.Agent/CountAgents" => LocalOrAdmin,
        "/spire.api.server.agent.v1.Agent/ListAgents" => LocalOrAdmin,
        "/spire.api.server.agent.v1.Agent/GetAgent" => LocalOrAdmin,
        "/spire.api.server.agent.v1.Agent/DeleteAgent" => LocalOrAdmin,
        "/spire.api.server.agent.v1.Agent/BanAgent" => LocalOrAdmin,
        "/spire.api.server.agent.v1.Agent/AttestAgent" => Any,
        "/spire.api.server.agent.v1.Agent/RenewAgent" => Agent,
        "/spire.api.server.agent.v1.Agent/CreateJoinToken" => LocalOrAdmin,
        "/grpc.health.v1.Health/Check" => Local,
        "/grpc.health.v1.Health/List" => Local,
        "/grpc.health.v1.Health/Watch" => Local,
        "/ward.cluster.v1.Cluster/Status" => Local,
        "/ward.cluster.v1.Cluster/AddMember" => Local,
        "/ward.cluster.v1.Cluster/RemoveMember" => Local,
        "/ward.cluster.v1.Cluster/TransferLeader" => Local,
        "/spire.api.server.logger.v1.Logger/GetLogger" => Local,
        "/spire.api.server.logger.v1.Logger/SetLogLevel" => Local,
        "/spire.api.server.logger.v1.Logger/ResetLogLevel" => Local,
        "/spire.api.server.trustdomain.v1.TrustDomain/ListFederationRelationships"
        | "/spire.api.server.trustdomain.v1.TrustDomain/GetFederationRelationship"
        | "/spire.api.server.trustdomain.v1.TrustDomain/BatchCreateFederationRelationship"
        | "/spire.api.server.trustdomain.v1.TrustDomain/BatchUpdateFederationRelationship"
        | "/spire.api.server.trustdomain.v1.TrustDomain/BatchDeleteFederationRelationship"
        | "/spire.api.server.trustdomain.v1.TrustDomain/RefreshBundle" => LocalOrAdmin,
        "/spire.api.server.localauthority.v1.LocalAuthority/GetJWTAuthorityState"
        | "/spire.api.server.localauthority.v1.LocalAuthority/PrepareJWTAuthority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/ActivateJWTAuthority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/TaintJWTAuthority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/RevokeJWTAuthority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/GetX509AuthorityState"
        | "/spire.api.server.localauthority.v1.LocalAuthority/PrepareX509Authority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/ActivateX509Authority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/TaintX509Authority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/TaintX509UpstreamAuthority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509Authority"
        | "/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509UpstreamAuthority" => {
            LocalOrAdmin
        }
        _ => return None,
    };
    Some(p)
}

/// SPIRE's `PostStatus`: a method of a served service that has no policy, so everyone is
/// refused before its handler runs.
pub const POST_STATUS: &str = "/spire.api.server.agent.v1.Agent/PostStatus";

/// Whether the router should answer the call itself: paths that are not methods of any
/// served service get gRPC's `Unimplemented` instead of an authorization denial.
pub fn is_unknown_method(full_method: &str) -> bool {
    policy(full_method).is_none() && full_method != POST_STATUS
}

/// The X509-SVID a TCP caller presented (already chain-verified at the TLS handshake): its
/// SPIFFE ID, decimal serial and NotAfter.
pub use ward_spiffe_tls::LeafFacts as PresentedSvid;

/// Everything [`decide`] needs to know about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerFacts {
    /// The call came over the admin Unix socket.
    pub local: bool,
    /// The SVID a TCP caller presented, if any.
    pub svid: Option<PresentedSvid>,
    /// Some registration entry with the caller's SPIFFE ID has `admin = true`.
    pub admin_entry: bool,
    /// Some registration entry with the caller's SPIFFE ID has `downstream = true`.
    pub downstream_entry: bool,
    /// The attested-node record for the caller's SPIFFE ID, when one exists.
    pub node: Option<AttestedNode>,
}

/// Why an agent was refused (`spire.api.types.PermissionDeniedDetails.Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The agent's SVID is past NotAfter.
    AgentExpired,
    /// No attested-node record.
    AgentNotAttested,
    /// The presented serial is neither the current nor the pending one.
    AgentNotActive,
    /// The record is banned.
    AgentBanned,
    /// A re-attestable agent must attest again instead of renewing.
    AgentMustReattest,
}

/// A refusal: gRPC code (always PermissionDenied here), message, optional details reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The message SPIRE sends.
    pub message: String,
    /// The `PermissionDeniedDetails` reason, when SPIRE attaches one.
    pub reason: Option<DenyReason>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// How an allowed caller was authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorized {
    /// The method admits anyone.
    Anyone,
    /// Local (admin socket) caller.
    Local,
    /// Admin by entry.
    Admin,
    /// Downstream by entry.
    Downstream,
    /// An attested agent. `promote_pending` asks the caller to make the pending serial current.
    Agent {
        /// The presented serial is the pending one: propose its promotion.
        promote_pending: bool,
    },
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow(Authorized),
    /// Refuse with PermissionDenied.
    Deny(Denial),
}

/// Decides whether the caller may invoke `full_method` at `now` (Unix seconds), in SPIRE's
/// order: any, local, admin, downstream, then agent (never for local callers).
pub fn decide(full_method: &str, facts: &CallerFacts, now: i64) -> Decision {
    let denied = || {
        Decision::Deny(Denial {
            message: format!("authorization denied for method {full_method}"),
            reason: None,
        })
    };
    let Some(policy) = policy(full_method) else {
        return denied();
    };
    if policy == Policy::Any {
        return Decision::Allow(Authorized::Anyone);
    }
    if policy.allows_local() && facts.local {
        return Decision::Allow(Authorized::Local);
    }
    if policy.allows_admin() && facts.svid.is_some() && facts.admin_entry {
        return Decision::Allow(Authorized::Admin);
    }
    if policy == Policy::Downstream && facts.svid.is_some() && facts.downstream_entry {
        return Decision::Allow(Authorized::Downstream);
    }
    if policy.allows_agent() && !facts.local {
        return match agent_check(facts, now) {
            Ok(promote_pending) => Decision::Allow(Authorized::Agent { promote_pending }),
            Err(d) => Decision::Deny(d),
        };
    }
    denied()
}

fn agent_check(facts: &CallerFacts, now: i64) -> Result<bool, Denial> {
    let plain = |message: &str| Denial { message: message.to_owned(), reason: None };
    let Some(svid) = &facts.svid else {
        return Err(plain("caller does not have an X509-SVID"));
    };
    let id = svid.id.as_str();
    let with = |reason, message: String| Denial { message, reason: Some(reason) };
    if now > svid.not_after {
        return Err(with(DenyReason::AgentExpired, format!("agent {id:?} SVID is expired")));
    }
    let Some(node) = &facts.node else {
        return Err(with(DenyReason::AgentNotAttested, format!("agent {id:?} is not attested")));
    };
    if node.serial.is_empty() {
        return Err(with(DenyReason::AgentBanned, format!("agent {id:?} is banned")));
    }
    if node.serial == svid.serial {
        return Ok(false);
    }
    if !node.new_serial.is_empty() && node.new_serial == svid.serial {
        return Ok(true);
    }
    Err(with(
        DenyReason::AgentNotActive,
        format!(
            "agent {id:?} expected to have serial number {:?}; has {:?}",
            node.serial, svid.serial
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::{AgentId, SelectorSet, SpiffeId};

    fn agent_svid() -> PresentedSvid {
        PresentedSvid {
            id: SpiffeId::parse("spiffe://example.org/spire/agent/join_token/t").unwrap(),
            serial: "42".into(),
            not_after: 1000,
        }
    }

    fn node(serial: &str, new_serial: &str) -> AttestedNode {
        AttestedNode {
            id: AgentId(agent_svid().id),
            attestation_type: "join_token".into(),
            serial: serial.into(),
            expires_at: 1000,
            new_serial: new_serial.into(),
            new_expires_at: 2000,
            selectors: SelectorSet::default(),
            can_reattest: false,
        }
    }

    fn agent(n: Option<AttestedNode>) -> CallerFacts {
        CallerFacts {
            local: false,
            svid: Some(agent_svid()),
            admin_entry: false,
            downstream_entry: false,
            node: n,
        }
    }

    #[test]
    fn agent_states() {
        let m = "/spire.api.server.svid.v1.SVID/BatchNewX509SVID";
        assert_eq!(
            decide(m, &agent(Some(node("42", ""))), 10),
            Decision::Allow(Authorized::Agent { promote_pending: false })
        );
        assert_eq!(
            decide(m, &agent(Some(node("41", "42"))), 10),
            Decision::Allow(Authorized::Agent { promote_pending: true })
        );
        let Decision::Deny(d) = decide(m, &agent(Some(node("41", ""))), 10) else { panic!() };
        assert_eq!(d.reason, Some(DenyReason::AgentNotActive));
        assert_eq!(
            d.message,
            "agent \"spiffe://example.org/spire/agent/join_token/t\" expected to have serial \
             number \"41\"; has \"42\""
        );
        let Decision::Deny(d) = decide(m, &agent(Some(node("", ""))), 10) else { panic!() };
        assert_eq!(d.reason, Some(DenyReason::AgentBanned));
        let Decision::Deny(d) = decide(m, &agent(None), 10) else { panic!() };
        assert_eq!(d.reason, Some(DenyReason::AgentNotAttested));
        let Decision::Deny(d) = decide(m, &agent(Some(node("42", ""))), 1001) else { panic!() };
        assert_eq!(d.reason, Some(DenyReason::AgentExpired));
    }

    #[test]
    fn local_is_never_an_agent() {
        let facts = CallerFacts {
            local: true,
            svid: None,
            admin_entry: false,
            downstream_entry: false,
            node: None,
        };
        let m = "/spire.api.server.agent.v1.Agent/RenewAgent";
        assert_eq!(
            decide(m, &facts, 0),
            Decision::Deny(Denial {
                message: format!("authorization denied for method {m}"),
                reason: None
            })
        );
        assert_eq!(
            decide("/spire.api.server.bundle.v1.Bundle/GetFederatedBundle", &facts, 0),
            Decision::Allow(Authorized::Local)
        );
    }
}
