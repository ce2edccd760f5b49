//! The request fields SPIRE's handlers add to their audit records, read from the decoded
//! request message, per method.

use prost::Message;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_proto::spire::api::server::trustdomain::v1 as tdpb;
use ward_proto::spire::api::types;

/// Request fields of a call-level record (every one optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Common {
    pub spiffe_id: Option<String>,
    pub entry_id: Option<String>,
    pub trust_domain_id: Option<String>,
    pub ttl: Option<i64>,
    pub audience: Option<String>,
}

/// Filter fields of Count/List calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub node_attestor_type: Option<String>,
    pub by_banned: Option<bool>,
    pub by_can_reattest: Option<bool>,
    pub by_selector_match: Option<String>,
    pub by_selectors: Option<String>,
    pub hint: Option<String>,
    pub parent_id: Option<String>,
    pub spiffe_id: Option<String>,
    pub federates_with_match: Option<String>,
    pub federates_with: Option<String>,
    pub downstream: Option<bool>,
}

/// The fields of one entry of a batch create or update (SPIRE logs those the input mask
/// names; all of them without a mask).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFields {
    pub entry_id: Option<String>,
    pub spiffe_id: Option<String>,
    pub parent_id: Option<String>,
    pub selectors: Option<String>,
    pub x509_svid_ttl: Option<i64>,
    pub jwt_svid_ttl: Option<i64>,
    pub federates_with: Option<String>,
    pub admin: Option<bool>,
    pub downstream: Option<bool>,
    pub expires_at: Option<i64>,
    pub dns_name: Option<String>,
    pub revision_number: Option<i64>,
    pub store_svid: Option<bool>,
    pub hint: Option<String>,
    pub created_at: Option<i64>,
}

/// What a call's audit looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One record for the call, with these request fields.
    Call(Common),
    /// One record for the call, with these filter fields.
    Filtered(Filter),
    /// One record per entry in the request, each with its result's status.
    Entries(Vec<EntryFields>),
    /// One record per entry id in the request, each with its result's status.
    EntryIds(Vec<String>),
}

/// The batch methods whose audit records are per item (the response is read for the
/// statuses).
pub fn per_item(method: &str) -> bool {
    matches!(method, "BatchCreateEntry" | "BatchUpdateEntry" | "BatchDeleteEntry")
}

/// The plan for `service`/`method` given the request message bytes (without the gRPC
/// frame header) on the server of `trust_domain`. A message that does not decode gets a plan
/// without request fields: the handler refuses it.
pub fn plan(service: &str, method: &str, msg: &[u8], trust_domain: &str) -> Plan {
    if (service, method) == ("bundle.v1.Bundle", "GetBundle") {
        let td = Some(trust_domain.to_owned());
        return Plan::Call(Common { trust_domain_id: td, ..Common::default() });
    }
    plan_decoded(service, method, msg).unwrap_or_else(|| {
        if per_item(method) { Plan::Entries(Vec::new()) } else { Plan::Call(Common::default()) }
    })
}

/// The filter plan of a Count/ListEntries filter (two message types of the same shape).
macro_rules! entry_filter_parts {
    ($f:expr) => {{
        let f = $f;
        entry_filter(EntryFilterParts {
            hint: f.by_hint,
            parent_id: f.by_parent_id,
            spiffe_id: f.by_spiffe_id,
            selectors: f.by_selectors,
            federates_with: f.by_federates_with,
            downstream: f.by_downstream,
        })
    }};
}

fn plan_decoded(service: &str, method: &str, msg: &[u8]) -> Option<Plan> {
    let call = |c: Common| Some(Plan::Call(c));
    match (service, method) {
        ("agent.v1.Agent", "CountAgents") => {
            let r = agentpb::CountAgentsRequest::decode(msg).ok()?;
            let f = r.filter.unwrap_or_default();
            Some(agent_filter(
                f.by_attestation_type,
                f.by_banned,
                f.by_can_reattest,
                f.by_selector_match,
            ))
        }
        ("agent.v1.Agent", "ListAgents") => {
            let r = agentpb::ListAgentsRequest::decode(msg).ok()?;
            let f = r.filter.unwrap_or_default();
            Some(agent_filter(
                f.by_attestation_type,
                f.by_banned,
                f.by_can_reattest,
                f.by_selector_match,
            ))
        }
        ("agent.v1.Agent", "GetAgent") => {
            let r = agentpb::GetAgentRequest::decode(msg).ok()?;
            call(Common { spiffe_id: r.id.as_ref().and_then(id_string), ..Common::default() })
        }
        ("agent.v1.Agent", "DeleteAgent") => {
            let r = agentpb::DeleteAgentRequest::decode(msg).ok()?;
            call(Common { spiffe_id: r.id.as_ref().and_then(id_string), ..Common::default() })
        }
        ("agent.v1.Agent", "BanAgent") => {
            let r = agentpb::BanAgentRequest::decode(msg).ok()?;
            call(Common { spiffe_id: r.id.as_ref().and_then(id_string), ..Common::default() })
        }
        ("agent.v1.Agent", "CreateJoinToken") => {
            let r = agentpb::CreateJoinTokenRequest::decode(msg).ok()?;
            call(Common {
                ttl: Some(i64::from(r.ttl)).filter(|t| *t > 0),
                spiffe_id: r.agent_id.as_ref().and_then(id_string),
                ..Common::default()
            })
        }
        ("entry.v1.Entry", "CountEntries") => {
            let r = entrypb::CountEntriesRequest::decode(msg).ok()?;
            Some(entry_filter_parts!(r.filter.unwrap_or_default()))
        }
        ("entry.v1.Entry", "ListEntries") => {
            let r = entrypb::ListEntriesRequest::decode(msg).ok()?;
            Some(entry_filter_parts!(r.filter.unwrap_or_default()))
        }
        ("entry.v1.Entry", "GetEntry") => {
            let r = entrypb::GetEntryRequest::decode(msg).ok()?;
            call(Common { entry_id: Some(r.id), ..Common::default() })
        }
        ("entry.v1.Entry", "BatchCreateEntry") => {
            let r = entrypb::BatchCreateEntryRequest::decode(msg).ok()?;
            Some(Plan::Entries(r.entries.iter().map(|e| entry_fields(e, None)).collect()))
        }
        ("entry.v1.Entry", "BatchUpdateEntry") => {
            let r = entrypb::BatchUpdateEntryRequest::decode(msg).ok()?;
            let mask = r.input_mask;
            Some(Plan::Entries(r.entries.iter().map(|e| entry_fields(e, mask.as_ref())).collect()))
        }
        ("entry.v1.Entry", "BatchDeleteEntry") => {
            let r = entrypb::BatchDeleteEntryRequest::decode(msg).ok()?;
            Some(Plan::EntryIds(r.ids))
        }
        ("bundle.v1.Bundle", "GetFederatedBundle") => {
            let r = bundlepb::GetFederatedBundleRequest::decode(msg).ok()?;
            call(Common { trust_domain_id: Some(r.trust_domain), ..Common::default() })
        }
        ("trustdomain.v1.TrustDomain", "GetFederationRelationship") => {
            let r = tdpb::GetFederationRelationshipRequest::decode(msg).ok()?;
            call(Common { trust_domain_id: Some(r.trust_domain), ..Common::default() })
        }
        ("trustdomain.v1.TrustDomain", "RefreshBundle") => {
            let r = tdpb::RefreshBundleRequest::decode(msg).ok()?;
            call(Common { trust_domain_id: Some(r.trust_domain), ..Common::default() })
        }
        ("svid.v1.SVID", "MintJWTSVID") => {
            let r = svidpb::MintJwtsvidRequest::decode(msg).ok()?;
            call(Common {
                spiffe_id: r.id.as_ref().and_then(id_string),
                audience: Some(r.audience.join(",")),
                ttl: Some(i64::from(r.ttl)),
                ..Common::default()
            })
        }
        ("svid.v1.SVID", "NewJWTSVID") => {
            let r = svidpb::NewJwtsvidRequest::decode(msg).ok()?;
            call(Common {
                entry_id: Some(r.entry_id),
                audience: Some(r.audience.join(",")),
                ..Common::default()
            })
        }
        _ => call(Common::default()),
    }
}

/// `spiffe://<td><path>` for a wire SPIFFE ID with a trust domain.
fn id_string(id: &types::Spiffeid) -> Option<String> {
    (!id.trust_domain.is_empty()).then(|| format!("spiffe://{}{}", id.trust_domain, id.path))
}

/// `type:value` pairs joined with `,`, as SPIRE writes selectors in logs.
fn selectors_field(selectors: &[types::Selector]) -> String {
    let pairs: Vec<String> =
        selectors.iter().map(|s| format!("{}:{}", s.r#type, s.value)).collect();
    pairs.join(",")
}

fn selector_match_name(m: i32) -> String {
    types::selector_match::MatchBehavior::try_from(m)
        .map_or_else(|_| m.to_string(), |b| b.as_str_name().to_owned())
}

fn agent_filter(
    attestation_type: String,
    banned: Option<bool>,
    can_reattest: Option<bool>,
    selectors: Option<types::SelectorMatch>,
) -> Plan {
    Plan::Filtered(Filter {
        node_attestor_type: Some(attestation_type).filter(|t| !t.is_empty()),
        by_banned: banned,
        by_can_reattest: can_reattest,
        by_selector_match: selectors.as_ref().map(|s| selector_match_name(s.r#match)),
        by_selectors: selectors.as_ref().map(|s| selectors_field(&s.selectors)),
        ..Filter::default()
    })
}

struct EntryFilterParts {
    hint: Option<String>,
    parent_id: Option<types::Spiffeid>,
    spiffe_id: Option<types::Spiffeid>,
    selectors: Option<types::SelectorMatch>,
    federates_with: Option<types::FederatesWithMatch>,
    downstream: Option<bool>,
}

fn entry_filter(f: EntryFilterParts) -> Plan {
    let fed_match = |m: i32| {
        types::federates_with_match::MatchBehavior::try_from(m)
            .map_or_else(|_| m.to_string(), |b| b.as_str_name().to_owned())
    };
    Plan::Filtered(Filter {
        hint: f.hint,
        parent_id: f.parent_id.as_ref().and_then(id_string),
        spiffe_id: f.spiffe_id.as_ref().and_then(id_string),
        by_selector_match: f.selectors.as_ref().map(|s| selector_match_name(s.r#match)),
        by_selectors: f.selectors.as_ref().map(|s| selectors_field(&s.selectors)),
        federates_with_match: f.federates_with.as_ref().map(|m| fed_match(m.r#match)),
        federates_with: f.federates_with.as_ref().map(|m| m.trust_domains.join(",")),
        downstream: f.downstream,
        ..Filter::default()
    })
}

fn entry_fields(e: &types::Entry, mask: Option<&types::EntryMask>) -> EntryFields {
    let on = |pick: fn(&types::EntryMask) -> bool| mask.is_none_or(pick);
    let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
    EntryFields {
        entry_id: non_empty(e.id.clone()),
        spiffe_id: e.spiffe_id.as_ref().filter(|_| on(|m| m.spiffe_id)).and_then(id_string),
        parent_id: e.parent_id.as_ref().filter(|_| on(|m| m.parent_id)).and_then(id_string),
        selectors: on(|m| m.selectors).then(|| selectors_field(&e.selectors)).and_then(non_empty),
        x509_svid_ttl: on(|m| m.x509_svid_ttl).then_some(i64::from(e.x509_svid_ttl)),
        jwt_svid_ttl: on(|m| m.jwt_svid_ttl).then_some(i64::from(e.jwt_svid_ttl)),
        federates_with: on(|m| m.federates_with)
            .then(|| e.federates_with.join(","))
            .and_then(non_empty),
        admin: on(|m| m.admin).then_some(e.admin),
        downstream: on(|m| m.downstream).then_some(e.downstream),
        expires_at: on(|m| m.expires_at).then_some(e.expires_at),
        dns_name: on(|m| m.dns_names).then(|| e.dns_names.join(",")).and_then(non_empty),
        revision_number: on(|m| m.revision_number).then_some(e.revision_number),
        store_svid: on(|m| m.store_svid).then_some(e.store_svid),
        hint: on(|m| m.hint).then(|| e.hint.clone()),
        created_at: on(|m| m.created_at).then_some(e.created_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_create_records_each_entry_as_spire_does() {
        let req = entrypb::BatchCreateEntryRequest {
            entries: vec![types::Entry {
                spiffe_id: Some(types::Spiffeid {
                    trust_domain: "example.org".into(),
                    path: "/w".into(),
                }),
                parent_id: Some(types::Spiffeid {
                    trust_domain: "example.org".into(),
                    path: "/agent".into(),
                }),
                selectors: vec![
                    types::Selector { r#type: "unix".into(), value: "uid:1".into() },
                    types::Selector { r#type: "unix".into(), value: "gid:2".into() },
                ],
                dns_names: vec!["a.example.org".into(), "b.example.org".into()],
                ..types::Entry::default()
            }],
            output_mask: None,
        };
        let Plan::Entries(items) =
            plan("entry.v1.Entry", "BatchCreateEntry", &req.encode_to_vec(), "td")
        else {
            panic!("not per item");
        };
        let e = &items[0];
        assert_eq!(e.spiffe_id.as_deref(), Some("spiffe://example.org/w"));
        assert_eq!(e.parent_id.as_deref(), Some("spiffe://example.org/agent"));
        assert_eq!(e.selectors.as_deref(), Some("unix:uid:1,unix:gid:2"));
        assert_eq!(e.dns_name.as_deref(), Some("a.example.org,b.example.org"));
        assert_eq!((e.admin, e.x509_svid_ttl, e.entry_id.as_deref()), (Some(false), Some(0), None));
    }

    #[test]
    fn update_mask_limits_fields() {
        let req = entrypb::BatchUpdateEntryRequest {
            entries: vec![types::Entry { id: "e1".into(), hint: "h".into(), ..Default::default() }],
            input_mask: Some(types::EntryMask { hint: true, ..Default::default() }),
            output_mask: None,
        };
        let Plan::Entries(items) =
            plan("entry.v1.Entry", "BatchUpdateEntry", &req.encode_to_vec(), "td")
        else {
            panic!("not per item");
        };
        let want = EntryFields {
            entry_id: Some("e1".into()),
            hint: Some("h".into()),
            ..EntryFields::default()
        };
        assert_eq!(items[0], want);
    }

    #[test]
    fn agent_filter_and_ids() {
        let req = agentpb::ListAgentsRequest {
            filter: Some(agentpb::list_agents_request::Filter {
                by_attestation_type: "join_token".into(),
                by_banned: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Plan::Filtered(f) = plan("agent.v1.Agent", "ListAgents", &req.encode_to_vec(), "td")
        else {
            panic!("not filtered");
        };
        assert_eq!(f.node_attestor_type.as_deref(), Some("join_token"));
        assert_eq!((f.by_banned, f.by_can_reattest), (Some(true), None));
        let req = agentpb::GetAgentRequest {
            id: Some(types::Spiffeid { trust_domain: "example.org".into(), path: "/a".into() }),
            output_mask: None,
        };
        let got = plan("agent.v1.Agent", "GetAgent", &req.encode_to_vec(), "td");
        let want = Common { spiffe_id: Some("spiffe://example.org/a".into()), ..Common::default() };
        assert_eq!(got, Plan::Call(want));
        assert_eq!(
            plan("entry.v1.Entry", "GetEntry", &[0xff], "td"),
            Plan::Call(Common::default())
        );
    }
}
