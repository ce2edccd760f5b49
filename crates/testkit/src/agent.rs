//! Fixtures for the agent's serving side (feature `agent`): identities as the agent's cache
//! holds them, and a JWT-SVID source, both signed by a [`TestAuthority`].

use std::sync::Arc;

use ward_agent::cache::{JwtSvidError, JwtSvidFuture, JwtSvidSource, JwtSvidToken, X509Identity};
use ward_core::{SelectorSet, SpiffeId};

use crate::TestAuthority;

/// The identity of entry `entry_id` with `spiffe_id`, selected by `selectors`, holding a
/// fresh X509-SVID signed by `authority`.
pub fn identity(
    authority: &TestAuthority,
    entry_id: &str,
    spiffe_id: SpiffeId,
    selectors: SelectorSet,
) -> Arc<X509Identity> {
    let svid = authority.x509_svid(&spiffe_id);
    Arc::new(X509Identity {
        entry_id: entry_id.into(),
        spiffe_id,
        selectors,
        federates_with: Vec::new(),
        hint: String::new(),
        admin: false,
        downstream: false,
        chain: svid.chain,
        private_key: Arc::new(svid.private_key),
        expires_at: svid.expires_at,
    })
}

/// Mints JWT-SVIDs with a [`TestAuthority`]'s JWT key, as a server would.
#[derive(Debug)]
pub struct TestJwtSource(pub Arc<TestAuthority>);

impl JwtSvidSource for TestJwtSource {
    fn fetch_jwt_svid<'a>(
        &'a self,
        identity: &'a X509Identity,
        audience: &'a [String],
    ) -> JwtSvidFuture<'a> {
        Box::pin(async move {
            let jwt = self
                .0
                .jwt_svid(&identity.spiffe_id, audience)
                .map_err(JwtSvidError::Unavailable)?;
            Ok(JwtSvidToken {
                spiffe_id: identity.spiffe_id.clone(),
                token: jwt.token,
                hint: identity.hint.clone(),
                expires_at: jwt.expires_at,
            })
        })
    }
}
