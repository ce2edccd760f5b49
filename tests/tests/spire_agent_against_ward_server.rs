#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! An unmodified SPIRE v1.13.3 `spire-agent` gets working X509- and JWT-SVIDs from
//! `ward-server`, with entries and tokens made by both admin CLIs (see
//! `ward_tests::agent_scenario` for the steps).

use ward_tests::agent_scenario::{ServerKind, run_scenario};

#[test]
fn spire_agent_against_ward_server() {
    run_scenario(ServerKind::Ward);
}
