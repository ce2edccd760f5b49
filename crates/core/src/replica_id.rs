//! The SPIFFE IDs of a cluster's server replicas: `spiffe://<td>/spire/server/replica/<id>`.
//!
//! A replica proves to the others that it belongs to the cluster with an X.509 certificate
//! carrying this ID, issued by its own X.509 authority (one of the trust domain's bundle).
//! The path lies under the server's own ID in the reserved `/spire` namespace: no API signs
//! an SVID there for anyone else, so only a replica's CA can have made such a certificate.

use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The path prefix of replica IDs; the decimal node id follows.
pub const REPLICA_PATH_PREFIX: &str = "/spire/server/replica/";

/// The ID of replica `node_id` of `td`.
///
/// # Errors
/// [`SpiffeIdError`] only if the result would be too long for a SPIFFE ID (it never is for a
/// valid trust domain name).
pub fn replica_id(td: &TrustDomain, node_id: u64) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::from_parts(td, &format!("{REPLICA_PATH_PREFIX}{node_id}"))
}

/// The node id `id` names when it is a replica ID of `td`: the path is the prefix followed by
/// a decimal number from 1 up, written without leading zeros. `None` for anything else
/// (another trust domain, the server ID, an agent, a workload, `replica/0`, `replica/01`).
pub fn replica_node_id(id: &SpiffeId, td: &TrustDomain) -> Option<u64> {
    if !id.is_member_of(td) {
        return None;
    }
    let digits = id.path().strip_prefix(REPLICA_PATH_PREFIX)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_round_trip_and_nothing_else_is_one() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = replica_id(&td, 3).unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/spire/server/replica/3");
        assert_eq!(replica_node_id(&id, &td), Some(3));
        let max = replica_id(&td, u64::MAX).unwrap();
        assert_eq!(replica_node_id(&max, &td), Some(u64::MAX));
        let other = TrustDomain::new("other.org").unwrap();
        assert_eq!(replica_node_id(&id, &other), None, "another trust domain");
        for not in [
            "spiffe://example.org/spire/server",
            "spiffe://example.org/spire/server/replica",
            "spiffe://example.org/spire/server/replica/0",
            "spiffe://example.org/spire/server/replica/01",
            "spiffe://example.org/spire/server/replica/3/x",
            "spiffe://example.org/spire/server/replica/18446744073709551616",
            "spiffe://example.org/spire/agent/join_token/3",
            "spiffe://example.org/workload/spire/server/replica/3",
        ] {
            assert_eq!(replica_node_id(&SpiffeId::parse(not).unwrap(), &td), None, "{not}");
        }
    }
}
