//! ListAgents / CountAgents `by_expires_before` (what `spire-server agent list|count
//! -expiresBefore` sends): agents attested at different times are told apart by SVID expiry.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestServer, new_agent};
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_server::api::agent::format_expires_before;

fn list(before: &str) -> agentpb::ListAgentsRequest {
    agentpb::ListAgentsRequest {
        filter: Some(agentpb::list_agents_request::Filter {
            by_expires_before: before.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn by_expires_before_selects_agents_whose_svid_expired_earlier() {
    let ts = TestServer::start().await;
    let (_, early) = new_agent(&ts).await;
    ts.clock.advance(2 * 3600);
    let (_, late) = new_agent(&ts).await;
    let mut c = agentpb::agent_client::AgentClient::new(ts.admin().await);

    let all = c.list_agents(agentpb::ListAgentsRequest::default()).await.unwrap().into_inner();
    let expiry = |id: &str| {
        let a = all.agents.iter().find(|a| {
            let i = a.id.as_ref().unwrap();
            format!("spiffe://{}{}", i.trust_domain, i.path) == id
        });
        a.unwrap().x509svid_expires_at
    };
    let (t_early, t_late) = (expiry(&early), expiry(&late));
    assert!(t_late >= t_early + 2 * 3600, "{t_early} {t_late}");

    let ids = |r: agentpb::ListAgentsResponse| -> Vec<String> {
        r.agents
            .into_iter()
            .map(|a| {
                let i = a.id.unwrap();
                format!("spiffe://{}{}", i.trust_domain, i.path)
            })
            .collect()
    };
    // Strictly before: the early agent's own expiry does not select it.
    let at_early = format_expires_before(t_early);
    assert!(ids(c.list_agents(list(&at_early)).await.unwrap().into_inner()).is_empty());
    let after_early = format_expires_before(t_early + 1);
    let got = ids(c.list_agents(list(&after_early)).await.unwrap().into_inner());
    assert_eq!(got, vec![early.clone()]);
    let after_late = format_expires_before(t_late + 1);
    let mut got = ids(c.list_agents(list(&after_late)).await.unwrap().into_inner());
    got.sort();
    let mut want = vec![early, late];
    want.sort();
    assert_eq!(got, want);

    let count = c
        .count_agents(agentpb::CountAgentsRequest {
            filter: Some(agentpb::count_agents_request::Filter {
                by_expires_before: after_early,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 1);

    ts.server.shutdown().await;
}
