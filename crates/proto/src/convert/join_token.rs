//! `spire.api.types.JoinToken` <-> core [`JoinToken`].

use ward_core::JoinToken;

use crate::spire::api::types;

/// Renders a join token.
pub fn join_token_to_proto(token: &JoinToken) -> types::JoinToken {
    types::JoinToken { value: token.token.clone(), expires_at: token.expires_at }
}

/// Reads a join token (a client receiving CreateJoinToken's answer).
pub fn join_token_from_proto(proto: &types::JoinToken) -> JoinToken {
    JoinToken { token: proto.value.clone(), expires_at: proto.expires_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = JoinToken { token: "4a1c".into(), expires_at: 1_700_000_600 };
        let wire = join_token_to_proto(&t);
        assert_eq!(wire, types::JoinToken { value: "4a1c".into(), expires_at: 1_700_000_600 });
        assert_eq!(join_token_from_proto(&wire), t);
    }
}
