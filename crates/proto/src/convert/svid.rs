//! Builders for the SVID wire messages.

use ward_core::SpiffeId;

use super::spiffe_id::spiffe_id_to_proto;
use crate::spire::api::types;

/// Builds a `types.X509SVID` from a DER chain (leaf first), its SPIFFE ID, the leaf's
/// NotAfter (Unix seconds) and the entry hint.
pub fn x509_svid_to_proto(
    cert_chain: Vec<Vec<u8>>,
    id: &SpiffeId,
    expires_at: i64,
    hint: &str,
) -> types::X509svid {
    types::X509svid {
        cert_chain,
        id: Some(spiffe_id_to_proto(id)),
        expires_at,
        hint: hint.to_owned(),
    }
}

/// Builds a `types.JWTSVID` from a compact JWS and its claims' times (Unix seconds).
pub fn jwt_svid_to_proto(
    token: String,
    id: &SpiffeId,
    issued_at: i64,
    expires_at: i64,
    hint: &str,
) -> types::Jwtsvid {
    types::Jwtsvid {
        token,
        id: Some(spiffe_id_to_proto(id)),
        expires_at,
        issued_at,
        hint: hint.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_x509_and_jwt_svids() {
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let x = x509_svid_to_proto(vec![vec![1], vec![2]], &id, 99, "h");
        assert_eq!(x.cert_chain, vec![vec![1], vec![2]]);
        assert_eq!(x.id.as_ref().map(|i| i.path.as_str()), Some("/web"));
        assert_eq!((x.expires_at, x.hint.as_str()), (99, "h"));

        let j = jwt_svid_to_proto("a.b.c".into(), &id, 10, 20, "");
        assert_eq!((j.token.as_str(), j.issued_at, j.expires_at), ("a.b.c", 10, 20));
        assert_eq!(j.id.map(|i| i.trust_domain), Some("example.org".to_owned()));
    }
}
