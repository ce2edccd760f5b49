#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! LocalAuthority prepare → activate → taint → revoke of the X.509 and the JWT authority
//! while an unmodified SPIRE v1.13.3 `spire-agent` is attested to `ward-server`: the agent
//! rotates its SVIDs off the tainted authorities and keeps serving (see
//! `ward_tests::authority_scenario` for the steps).

#[test]
fn authorities_follow_an_attested_agent() {
    ward_tests::authority_scenario::run_authority_scenario();
}
