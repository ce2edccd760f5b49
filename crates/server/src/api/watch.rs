//! `ward.agent.v1.AgentWatch`: ward's own push stream for its agents, beside SPIRE's API.
//!
//! An attested agent opens `Watch` on the agent-facing TLS port (the same authorization as
//! SyncAuthorizedEntries). The stream follows this replica's store revision
//! ([`ward_store::Store::watch_revision`]), which moves only after a command was applied
//! here and is readable, so every replica serves it from its own apply (replicas apply the
//! same log) and an agent's sync that follows an event, over the same connection, reads a
//! state at least as new as the event.
//!
//! What an event says: the stream keeps the agent's view as of its last event (its
//! authorized entries by id, revision and creation time; its trust domain's bundle and the
//! bundles its entries federate with) and, each time the revision moves, compares it with
//! the view now. Only a difference gives an event (`entries_changed`, `bundles_changed`);
//! the agent then syncs through SPIRE's RPCs. The first event (`initial`) is sent at once;
//! heartbeats (an event with nothing changed) come every `heartbeat_seconds` when nothing
//! else was sent, so an agent notices a dead stream.
//!
//! Bounds: nothing is queued per stream: the stream computes its next event only when the
//! transport takes one, from the latest revision, so a slow agent gets the newest state and
//! never a backlog. An agent may hold [`WatchLimits::streams_per_agent`] streams at once; one
//! more is refused with `ResourceExhausted`. A stream ends (status OK) after
//! [`WatchLimits::max_age`], as the server ages out connections, so agents rebalance
//! across replicas; it ends with the agent's `PermissionDenied` when the agent is banned,
//! deleted or its SVID expired, and when the server stops.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use ward_core::{AgentId, Bundle, TrustDomain};
use ward_proto::ward::agent::v1::agent_watch_server::AgentWatch;
use ward_proto::ward::agent::v1::{WatchEvent, WatchRequest};
use ward_store::{AuthorizedEntries, Store};

use crate::authz::{self, CallerFacts, Decision, PresentedSvid};
use crate::state::{ServerState, caller_of, denial_status};

/// The full gRPC method name of `Watch`.
pub const WATCH_METHOD: &str = "/ward.agent.v1.AgentWatch/Watch";

/// Heartbeat interval when the agent asks for none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// The shortest and longest heartbeat intervals an agent may ask for.
const HEARTBEAT_RANGE: (u32, u32) = (1, 300);

/// How many streams and for how long.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// Streams one agent (by SPIFFE ID) may hold at once. Default 4: an agent holds one,
    /// and one more while it reconnects.
    pub streams_per_agent: usize,
    /// How long a stream lasts before the server ends it; a random 0–10 % is taken off
    /// per stream so agents started together do not reconnect together. Default 180 s, the
    /// server's connection age.
    pub max_age: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self { streams_per_agent: 4, max_age: Duration::from_secs(180) }
    }
}

/// Open streams per agent.
#[derive(Debug, Default)]
struct StreamCounts(Mutex<HashMap<AgentId, usize>>);

impl StreamCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, usize>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One open stream of an agent; gives its place back when dropped.
struct StreamSlot {
    counts: Arc<StreamCounts>,
    agent: AgentId,
}

impl StreamSlot {
    fn take(counts: &Arc<StreamCounts>, agent: &AgentId, limit: usize) -> Option<Self> {
        let mut map = counts.lock();
        let n = map.entry(agent.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Self { counts: counts.clone(), agent: agent.clone() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(n) = map.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.agent);
            }
        }
    }
}

/// What an agent receives, as far as an event needs to tell it apart.
struct AgentView {
    entries: AuthorizedEntries,
    bundles: Vec<(TrustDomain, Option<Arc<Bundle>>)>,
}

impl AgentView {
    fn of(store: &Store, agent: &AgentId, own: &TrustDomain) -> Self {
        let entries = store.authorized_entries(agent);
        let mut domains: Vec<&TrustDomain> =
            entries.iter().flat_map(|e| e.federates_with.iter()).collect();
        domains.push(own);
        domains.sort();
        domains.dedup();
        let bundles = domains.into_iter().map(|td| (td.clone(), store.bundle(td))).collect();
        Self { entries, bundles }
    }

    fn entries_differ(&self, other: &Self) -> bool {
        if AuthorizedEntries::ptr_eq(&self.entries, &other.entries) {
            return false;
        }
        self.entries.len() != other.entries.len()
            || self.entries.iter().zip(other.entries.iter()).any(|(a, b)| {
                a.id != b.id
                    || a.revision_number != b.revision_number
                    || a.created_at != b.created_at
            })
    }

    fn bundles_differ(&self, other: &Self) -> bool {
        self.bundles.len() != other.bundles.len()
            || self.bundles.iter().zip(&other.bundles).any(|((ta, a), (tb, b))| {
                ta != tb
                    || match (a, b) {
                        (Some(a), Some(b)) => !Arc::ptr_eq(a, b) && **a != **b,
                        (None, None) => false,
                        _ => true,
                    }
            })
    }
}

/// The AgentWatch service.
#[derive(Debug, Clone)]
pub struct WatchService {
    state: Arc<ServerState>,
    limits: WatchLimits,
    counts: Arc<StreamCounts>,
    stop: watch::Receiver<bool>,
}

impl WatchService {
    /// A service over `state`; its streams end when `stop` turns true.
    pub fn new(state: Arc<ServerState>, limits: WatchLimits, stop: watch::Receiver<bool>) -> Self {
        Self { state, limits, counts: Arc::default(), stop }
    }
}

/// Why a stream's loop woke.
enum Wake {
    /// The store reached this revision.
    Revision(u64),
    /// Nothing was sent for a heartbeat interval.
    Heartbeat,
}

/// The stream of events `Watch` answers with.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

/// The agent's `PermissionDenied` (with SPIRE's reason) when the agent that presented `svid`
/// is no longer accepted: banned, deleted, its SVID expired or replaced.
fn still_accepted(state: &ServerState, svid: &PresentedSvid) -> Result<(), Status> {
    let facts = CallerFacts {
        local: false,
        svid: Some(svid.clone()),
        admin_entry: false,
        downstream_entry: false,
        node: state.store.agent(&AgentId(svid.id.clone())).map(|n| (*n).clone()),
    };
    match authz::decide(WATCH_METHOD, &facts, state.clock.unix_seconds()) {
        Decision::Allow(_) => Ok(()),
        Decision::Deny(d) => Err(denial_status(&d)),
    }
}

fn heartbeat_of(req: &WatchRequest) -> Duration {
    match req.heartbeat_seconds {
        0 => DEFAULT_HEARTBEAT,
        s => Duration::from_secs(u64::from(s.clamp(HEARTBEAT_RANGE.0, HEARTBEAT_RANGE.1))),
    }
}

#[tonic::async_trait]
impl AgentWatch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller_of(&req)?;
        let (Some(agent), Some(svid)) = (caller.agent_id(), caller.svid.clone()) else {
            return Err(Status::permission_denied("caller is not an agent"));
        };
        let Some(slot) = StreamSlot::take(&self.counts, &agent, self.limits.streams_per_agent)
        else {
            tracing::warn!(agent_id = %agent.0, "refusing a watch stream: too many open");
            return Err(Status::resource_exhausted(format!(
                "agent already holds {} watch streams",
                self.limits.streams_per_agent
            )));
        };
        let heartbeat = heartbeat_of(req.get_ref());
        let age = self.limits.max_age.mul_f64(1.0 - 0.1 * fastrand::f64());
        let state = self.state.clone();
        let mut stop = self.stop.clone();
        tracing::debug!(agent_id = %agent.0, ?heartbeat, "watch stream opened");
        let stream = async_stream::try_stream! {
            let _slot = slot;
            let own = state.trust_domain.clone();
            // Mark the revision seen before reading the view: a change applied after this
            // line wakes the loop below.
            let mut revisions = state.store.watch_revision();
            let mut revision = revisions.current();
            let mut view = AgentView::of(&state.store, &agent, &own);
            yield WatchEvent { revision, entries_changed: false, bundles_changed: false, initial: true };
            let end = tokio::time::Instant::now() + age;
            let mut beat = tokio::time::Instant::now() + heartbeat;
            loop {
                let wake = tokio::select! {
                    changed = revisions.changed() => match changed {
                        Some(now) => Wake::Revision(now),
                        None => break,
                    },
                    () = tokio::time::sleep_until(beat) => Wake::Heartbeat,
                    () = tokio::time::sleep_until(end) => break,
                    _ = stop.wait_for(|s| *s) => break,
                };
                still_accepted(&state, &svid)?;
                let event = match wake {
                    Wake::Revision(now) => {
                        revision = now;
                        let next = AgentView::of(&state.store, &agent, &own);
                        let entries_changed = view.entries_differ(&next);
                        let bundles_changed = view.bundles_differ(&next);
                        view = next;
                        if !entries_changed && !bundles_changed {
                            continue;
                        }
                        WatchEvent { revision, entries_changed, bundles_changed, initial: false }
                    }
                    Wake::Heartbeat => WatchEvent {
                        revision,
                        entries_changed: false,
                        bundles_changed: false,
                        initial: false,
                    },
                };
                beat = tokio::time::Instant::now() + heartbeat;
                yield event;
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_gets_at_most_its_limit_of_streams_and_a_closed_one_frees_its_place() {
        let counts = Arc::new(StreamCounts::default());
        let a = AgentId(ward_core::SpiffeId::parse("spiffe://example.org/spire/agent/a").unwrap());
        let b = AgentId(ward_core::SpiffeId::parse("spiffe://example.org/spire/agent/b").unwrap());
        let first = StreamSlot::take(&counts, &a, 2).unwrap();
        let _second = StreamSlot::take(&counts, &a, 2).unwrap();
        assert!(StreamSlot::take(&counts, &a, 2).is_none());
        assert!(StreamSlot::take(&counts, &b, 2).is_some());
        drop(first);
        assert!(StreamSlot::take(&counts, &a, 2).is_some());
    }

    #[test]
    fn heartbeat_requests_are_held_within_bounds() {
        let of = |s| heartbeat_of(&WatchRequest { heartbeat_seconds: s });
        assert_eq!(of(0), DEFAULT_HEARTBEAT);
        assert_eq!(of(2), Duration::from_secs(2));
        assert_eq!(of(100_000), Duration::from_secs(300));
    }
}
