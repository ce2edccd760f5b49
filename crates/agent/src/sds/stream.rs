//! The state of one `StreamSecrets` stream: what was asked, what was sent, and when to send
//! again (SPIRE v1.13's rules).
//!
//! - Each new workload update bumps the version (`"1"`, `"2"`, ...; `"0"` before the first)
//!   and, once something was requested, is answered at once.
//! - A request is answered when its resource names differ (as a set) from the last
//!   request's, or when it is the first; the answer waits for the first update if none came.
//! - After a response, a request must carry its nonce: one with another nonce is stale and
//!   ignored. One with the right nonce but another version (or none) is a NACK, logged; it
//!   may still change the names. A request without a Node reuses the last one seen.

use tonic::Status;
use tracing::{debug, error, warn};
use ward_proto::envoy::config::core::v3::Node;
use ward_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::SdsConfig;
use super::response::{WorkloadUpdate, build_response};

/// One stream's state.
#[derive(Debug, Default)]
pub struct StreamState {
    version: u64,
    last_nonce: Option<String>,
    last_node: Option<Node>,
    last_request: Option<DiscoveryRequest>,
    update: Option<WorkloadUpdate>,
}

impl StreamState {
    /// A stream that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The version the next response carries.
    pub fn version_info(&self) -> String {
        self.version.to_string()
    }

    /// Takes a request; true when a response is due now.
    pub fn on_request(&mut self, mut req: DiscoveryRequest) -> bool {
        debug!(
            resource_names = ?req.resource_names,
            version_info = %req.version_info,
            nonce = %req.response_nonce,
            "received StreamSecrets request"
        );
        if let Some(detail) = &req.error_detail {
            error!(
                resource_names = ?req.resource_names,
                error = %detail.message,
                "Envoy reported errors applying secrets"
            );
        }
        if let Some(last_nonce) = &self.last_nonce {
            if *last_nonce != req.response_nonce {
                warn!(
                    nonce = %req.response_nonce,
                    expect = %last_nonce,
                    "received unexpected nonce; ignoring request"
                );
                return false;
            }
            let version = self.version_info();
            if req.version_info != version {
                error!(
                    version_info = %req.version_info,
                    expect = %version,
                    "client rejected expected version and rolled back"
                );
            }
            if req.node.is_none() {
                req.node = self.last_node.clone();
            }
        }
        let changed = match &self.last_request {
            None => true,
            Some(last) => names_changed(&last.resource_names, &req.resource_names),
        };
        self.last_request = Some(req);
        changed && self.update.is_some()
    }

    /// Takes a workload update; true when a response is due now.
    pub fn on_update(&mut self, update: WorkloadUpdate) -> bool {
        self.version = self.version.saturating_add(1);
        self.update = Some(update);
        self.last_request.is_some()
    }

    /// The response due now, with `nonce`; remembers the nonce and the request's Node.
    ///
    /// # Errors
    /// As [`build_response`]; also `Internal` when nothing was requested or no update came
    /// (a caller bug: ask only after `on_request` or `on_update` returned true).
    pub fn respond(
        &mut self,
        config: &SdsConfig,
        nonce: String,
    ) -> Result<DiscoveryResponse, Status> {
        let (Some(req), Some(update)) = (&self.last_request, &self.update) else {
            return Err(Status::internal("no request or workload update to answer"));
        };
        let resp = build_response(config, &self.version_info(), Some(nonce), req, update)?;
        self.last_nonce = Some(resp.nonce.clone());
        if req.node.is_some() {
            self.last_node = req.node.clone();
        }
        Ok(resp)
    }
}

/// Whether `new` names another set of resources than `old` (SPIRE compares lengths, then
/// looks up each new name among the old ones).
fn names_changed(old: &[String], new: &[String]) -> bool {
    old.len() != new.len() || new.iter().any(|n| !old.contains(n))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use ward_core::{Bundle, TrustDomain};

    use super::*;

    fn update() -> WorkloadUpdate {
        WorkloadUpdate {
            bundle: Arc::new(Bundle::new(TrustDomain::new("example.org").unwrap())),
            federated: BTreeMap::new(),
            identities: Vec::new(),
        }
    }

    fn req(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn respond(state: &mut StreamState, nonce: &str) -> DiscoveryResponse {
        state.respond(&SdsConfig::default(), nonce.into()).unwrap()
    }

    #[test]
    fn the_first_request_waits_for_the_first_update_and_gets_version_one() {
        let mut state = StreamState::new();
        assert!(!state.on_request(req(&["ROOTCA"], "", "")));
        assert!(state.on_update(update()));
        let resp = respond(&mut state, "n1");
        assert_eq!((resp.version_info.as_str(), resp.nonce.as_str()), ("1", "n1"));
        assert_eq!(resp.resources.len(), 1);
    }

    #[test]
    fn an_ack_is_not_answered_but_new_names_and_updates_are() {
        let mut state = StreamState::new();
        assert!(!state.on_update(update()));
        assert!(state.on_request(req(&["ROOTCA"], "", "")));
        respond(&mut state, "n1");
        // ACK of version 1 with the same names: nothing to send.
        assert!(!state.on_request(req(&["ROOTCA"], "1", "n1")));
        // An update is pushed as version 2.
        assert!(state.on_update(update()));
        assert_eq!(respond(&mut state, "n2").version_info, "2");
        // A NACK (wrong version) with new names is answered.
        assert!(state.on_request(req(&["spiffe://example.org"], "1", "n2")));
        let resp = respond(&mut state, "n3");
        assert_eq!(resp.version_info, "2");
    }

    #[test]
    fn a_request_with_a_stale_nonce_is_ignored() {
        let mut state = StreamState::new();
        state.on_update(update());
        state.on_request(req(&["ROOTCA"], "", ""));
        respond(&mut state, "n1");
        assert!(!state.on_request(req(&["ALL"], "1", "old")));
        // The ignored request did not replace the last one: an update answers ROOTCA.
        assert!(state.on_update(update()));
        let resp = respond(&mut state, "n2");
        assert_eq!(resp.resources.len(), 1);
    }

    #[test]
    fn a_request_without_node_reuses_the_last_node_seen() {
        let mut state = StreamState::new();
        state.on_update(update());
        let mut first = req(&["ROOTCA"], "", "");
        first.node = Some(Node { id: "envoy-1".into(), ..Default::default() });
        state.on_request(first);
        respond(&mut state, "n1");
        state.on_request(req(&["ALL"], "1", "n1"));
        assert_eq!(state.last_request.as_ref().unwrap().node.as_ref().unwrap().id, "envoy-1");
    }

    #[test]
    fn names_compare_as_sets_of_equal_size() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!names_changed(&names(&["a", "b"]), &names(&["b", "a"])));
        assert!(names_changed(&names(&["a"]), &names(&["a", "b"])));
        assert!(names_changed(&names(&["a", "b"]), &names(&["a", "c"])));
    }
}
