//! Cache invalidation: the agents whose cached authorized entries a change may alter, found
//! by walking from the changed entry's parent back up to the agents and node aliases that
//! reach it.

use std::collections::HashSet;

use ward_core::{AgentId, RegistrationEntry, SelectorSet, SpiffeId};

use super::State;
use crate::index::key_hash;

/// The agents whose cached authorized entries a command may have changed: listed one by
/// one up to a limit, beyond which the whole cache is dropped (a change under a node alias
/// that every agent of a large cluster belongs to).
#[derive(Debug)]
pub(crate) struct InvalidationSet {
    agents: HashSet<AgentId>,
    all: bool,
    limit: usize,
}

impl InvalidationSet {
    /// Nobody yet; more than `limit` agents means all of them.
    pub(crate) fn new(limit: usize) -> Self {
        Self { agents: HashSet::new(), all: false, limit }
    }

    pub(crate) fn insert(&mut self, agent: &AgentId) {
        if !self.all && !self.agents.contains(agent) {
            if self.agents.len() >= self.limit {
                self.set_all();
            } else {
                self.agents.insert(agent.clone());
            }
        }
    }

    /// Whether `more` further agents would take it past the limit.
    fn would_overflow(&self, more: usize) -> bool {
        self.all || self.agents.len().saturating_add(more) > self.limit
    }

    fn set_all(&mut self) {
        self.all = true;
        self.agents = HashSet::new();
    }

    /// Whether it means every agent (the limit was passed).
    pub(crate) fn is_all(&self) -> bool {
        self.all
    }

    /// The agents listed one by one (empty once the limit was passed).
    pub(crate) fn agents(&self) -> impl Iterator<Item = &AgentId> {
        self.agents.iter()
    }
}

impl State {
    /// Agents whose authorized entries include the children of `parent` (the reverse walk
    /// used for precise cache invalidation). Adds them to `out`.
    pub(crate) fn agents_reaching(&self, parent: &SpiffeId, out: &mut InvalidationSet) {
        let mut visited: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = vec![parent.as_str()];
        while let Some(p) = stack.pop() {
            if out.is_all() {
                return;
            }
            if !visited.insert(p) {
                continue;
            }
            // The agent with this ID reaches its own children.
            if let Ok(id) = SpiffeId::parse(p) {
                out.insert(&AgentId(id));
            }
            for e in self.with_spiffe_id(p) {
                if self.is_alias(e) {
                    self.alias_members(&e.selectors, out);
                } else {
                    stack.push(e.parent_id.as_str());
                }
            }
        }
    }

    /// Agents whose authorized entries would include `e` (or its descendants) if it were
    /// stored: the reachers of its parent, or, for an alias, its members.
    pub(crate) fn agents_affected_by(&self, e: &RegistrationEntry, out: &mut InvalidationSet) {
        if self.is_alias(e) {
            self.alias_members(&e.selectors, out);
        } else {
            self.agents_reaching(&e.parent_id, out);
        }
    }

    /// Adds the members of a node alias with `selectors` to `out`, or makes it all agents
    /// when the selector index says there may be more than its limit (without listing them).
    fn alias_members(&self, selectors: &SelectorSet, out: &mut InvalidationSet) {
        let bound = selectors
            .as_slice()
            .iter()
            .map(|s| self.agent_by_selector.count(key_hash(s)))
            .min()
            .unwrap_or_else(|| self.agent_count());
        if out.would_overflow(bound) {
            out.set_all();
            return;
        }
        for a in self.agents_matching(selectors) {
            out.insert(&a.id);
        }
    }
}
