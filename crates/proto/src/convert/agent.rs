//! `spire.api.types.Agent` <-> [`AttestedNode`], with `AgentMask` handling.

use ward_core::{AgentId, AttestedNode};

use super::error::{ConvertError, IdField};
use super::selector::{selectors_from_proto, selectors_to_proto};
use super::spiffe_id::{spiffe_id_from_proto, spiffe_id_to_proto};
use crate::spire::api::server::agent::v1 as agentpb;
use crate::spire::api::types;

/// The first message of AttestAgent: attestation data of `attestation_type` (for example
/// `join_token`, whose payload is the token) and the CSR for the agent's SVID.
pub fn attest_agent_params(
    attestation_type: &str,
    payload: Vec<u8>,
    csr: Vec<u8>,
) -> agentpb::AttestAgentRequest {
    agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData { r#type: attestation_type.to_owned(), payload }),
                params: Some(agentpb::AgentX509svidParams { csr }),
            },
        )),
    }
}

/// Renders an attested node, keeping only the fields `mask` selects (all when `None`); the
/// id is always present. `banned` is true when the node's serial is empty, as in SPIRE.
/// The pending (renewed, not yet used) serial is internal and never sent.
pub fn agent_to_proto(node: &AttestedNode, mask: Option<&types::AgentMask>) -> types::Agent {
    let all = types::AgentMask {
        attestation_type: true,
        x509svid_serial_number: true,
        x509svid_expires_at: true,
        selectors: true,
        banned: true,
        can_reattest: true,
    };
    let m = mask.unwrap_or(&all);
    types::Agent {
        id: Some(spiffe_id_to_proto(node.id.spiffe_id())),
        attestation_type: if m.attestation_type {
            node.attestation_type.clone()
        } else {
            String::new()
        },
        x509svid_serial_number: if m.x509svid_serial_number {
            node.serial.clone()
        } else {
            String::new()
        },
        x509svid_expires_at: if m.x509svid_expires_at { node.expires_at } else { 0 },
        selectors: if m.selectors { selectors_to_proto(&node.selectors) } else { Vec::new() },
        banned: m.banned && node.is_banned(),
        can_reattest: m.can_reattest && node.can_reattest,
    }
}

/// Parses a wire agent into an attested node with no pending serial.
///
/// `banned` is not a separate field of the core model: a banned agent is one whose serial is
/// empty, so `banned = true` clears the serial.
///
/// # Errors
/// [`ConvertError::MissingId`] / [`ConvertError::InvalidId`] (agent ID) or a selector error.
pub fn agent_from_proto(proto: &types::Agent) -> Result<AttestedNode, ConvertError> {
    let id = spiffe_id_from_proto(proto.id.as_ref(), IdField::AgentId)?;
    let selectors = selectors_from_proto(&proto.selectors)?;
    Ok(AttestedNode {
        id: AgentId(id),
        attestation_type: proto.attestation_type.clone(),
        serial: if proto.banned { String::new() } else { proto.x509svid_serial_number.clone() },
        expires_at: proto.x509svid_expires_at,
        new_serial: String::new(),
        new_expires_at: 0,
        selectors,
        can_reattest: proto.can_reattest,
    })
}

#[cfg(test)]
mod tests {
    use ward_core::{SelectorSet, SpiffeId};

    use super::*;

    fn node() -> AttestedNode {
        AttestedNode {
            id: AgentId(SpiffeId::parse("spiffe://example.org/spire/agent/x509pop/abc").unwrap()),
            attestation_type: "x509pop".into(),
            serial: "123456789".into(),
            expires_at: 1_800_000_000,
            new_serial: "987".into(),
            new_expires_at: 1_800_003_600,
            selectors: SelectorSet::new(vec!["x509pop:subject:cn:node1".parse().unwrap()]),
            can_reattest: true,
        }
    }

    #[test]
    fn renders_all_fields_with_nil_mask() {
        let a = agent_to_proto(&node(), None);
        assert_eq!(
            a.id,
            Some(types::Spiffeid {
                trust_domain: "example.org".into(),
                path: "/spire/agent/x509pop/abc".into()
            })
        );
        assert_eq!(a.attestation_type, "x509pop");
        assert_eq!(a.x509svid_serial_number, "123456789");
        assert_eq!(a.x509svid_expires_at, 1_800_000_000);
        assert_eq!(a.selectors.len(), 1);
        assert_eq!(a.selectors[0].value, "subject:cn:node1");
        assert!(!a.banned);
        assert!(a.can_reattest);
    }

    #[test]
    fn mask_limits_fields_and_keeps_id() {
        let mask = types::AgentMask { banned: true, ..Default::default() };
        let mut banned = node();
        banned.serial.clear();
        let a = agent_to_proto(&banned, Some(&mask));
        assert!(a.banned);
        assert!(a.id.is_some());
        assert_eq!(a.attestation_type, "");
        assert_eq!(a.x509svid_expires_at, 0);
        assert!(a.selectors.is_empty());
        assert!(!a.can_reattest);
    }

    #[test]
    fn parses_back_without_pending_serial() {
        let parsed = agent_from_proto(&agent_to_proto(&node(), None)).unwrap();
        let mut want = node();
        want.new_serial.clear();
        want.new_expires_at = 0;
        assert_eq!(parsed, want);

        let mut banned = agent_to_proto(&node(), None);
        banned.banned = true;
        assert!(agent_from_proto(&banned).unwrap().is_banned());

        let err = agent_from_proto(&types::Agent::default()).unwrap_err();
        assert_eq!(err, ConvertError::MissingId(IdField::AgentId));
        assert_eq!(err.to_string(), "invalid agent ID: request must specify SPIFFE ID");
    }
}
