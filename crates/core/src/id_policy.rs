//! Which SPIFFE IDs may stand where in a trust domain: SPIRE's rules for the IDs a server
//! accepts as members (an entry's parent ID) and as workloads (an entry's SPIFFE ID).

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Why a SPIFFE ID does not fit its role in a trust domain, with SPIRE's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdPolicyError {
    /// The ID is in another trust domain.
    #[error("\"{0}\" is not a member of trust domain \"{1}\"")]
    NotMember(SpiffeId, TrustDomain),
    /// A member ID with an empty path (the trust domain's own ID).
    #[error("\"{0}\" is not a member of trust domain \"{1}\"; path is empty")]
    MemberPathEmpty(SpiffeId, TrustDomain),
    /// A workload ID with an empty path.
    #[error("\"{0}\" is not a workload in trust domain \"{1}\"; path is empty")]
    WorkloadPathEmpty(SpiffeId, TrustDomain),
    /// A workload ID in the reserved `/spire` namespace.
    #[error("\"{0}\" is not a workload in trust domain \"{1}\"; path is in the reserved namespace")]
    WorkloadPathReserved(SpiffeId, TrustDomain),
}

/// Whether `path` is in SPIRE's reserved namespace (`/spire` and below).
pub fn is_reserved_path(path: &str) -> bool {
    path == "/spire" || path.starts_with("/spire/")
}

/// SPIRE's member rule (`VerifyTrustDomainMemberID`): `id` is in `td` and has a path.
///
/// # Errors
/// [`IdPolicyError::NotMember`] or [`IdPolicyError::MemberPathEmpty`].
pub fn verify_member_id(id: &SpiffeId, td: &TrustDomain) -> Result<(), IdPolicyError> {
    if !id.is_member_of(td) {
        return Err(IdPolicyError::NotMember(id.clone(), td.clone()));
    }
    if id.path().is_empty() {
        return Err(IdPolicyError::MemberPathEmpty(id.clone(), td.clone()));
    }
    Ok(())
}

/// SPIRE's workload rule (`VerifyTrustDomainWorkloadID`): `id` is in `td`, has a path, and
/// the path is outside the reserved `/spire` namespace.
///
/// # Errors
/// [`IdPolicyError::NotMember`], [`IdPolicyError::WorkloadPathEmpty`] or
/// [`IdPolicyError::WorkloadPathReserved`].
pub fn verify_workload_id(id: &SpiffeId, td: &TrustDomain) -> Result<(), IdPolicyError> {
    if !id.is_member_of(td) {
        return Err(IdPolicyError::NotMember(id.clone(), td.clone()));
    }
    if id.path().is_empty() {
        return Err(IdPolicyError::WorkloadPathEmpty(id.clone(), td.clone()));
    }
    if is_reserved_path(id.path()) {
        return Err(IdPolicyError::WorkloadPathReserved(id.clone(), td.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_and_workload_rules_with_spire_texts() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        type Want = Result<(), &'static str>;
        let cases: [(&str, Want, Want); 6] = [
            ("spiffe://example.org/w", Ok(()), Ok(())),
            (
                "spiffe://example.org/spire/agent/x",
                Ok(()),
                Err("path is in the reserved namespace"),
            ),
            ("spiffe://example.org/spire", Ok(()), Err("path is in the reserved namespace")),
            ("spiffe://example.org/spirex", Ok(()), Ok(())),
            (
                "spiffe://example.org",
                Err("\"spiffe://example.org\" is not a member of trust domain \"example.org\"; \
                     path is empty"),
                Err("\"spiffe://example.org\" is not a workload in trust domain \"example.org\"; \
                     path is empty"),
            ),
            (
                "spiffe://other.org/w",
                Err("\"spiffe://other.org/w\" is not a member of trust domain \"example.org\""),
                Err("\"spiffe://other.org/w\" is not a member of trust domain \"example.org\""),
            ),
        ];
        for (s, member, workload) in cases {
            let got = verify_member_id(&id(s), &td).map_err(|e| e.to_string());
            match member {
                Ok(()) => assert_eq!(got, Ok(()), "{s}"),
                Err(text) => assert_eq!(got.unwrap_err(), text, "{s}"),
            }
            let got = verify_workload_id(&id(s), &td).map_err(|e| e.to_string());
            match workload {
                Ok(()) => assert_eq!(got, Ok(()), "{s}"),
                Err(text) => assert!(got.unwrap_err().ends_with(text), "{s}"),
            }
        }
    }
}
