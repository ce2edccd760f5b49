//! The node-alias table: a dense slab of the alias entries (those parented by the server's
//! ID) that each agent's record points into, kept in step with alias and agent changes, so
//! the walk finds an agent's aliases and their children without probing the entry indexes.

use std::sync::Arc;

use ward_core::{SelectorMatch, SelectorSet};

use super::{ChildGroup, State};
use crate::index::{Slot, key_hash};
use crate::query::SelectorFilter;

/// The alias cells (indexes into the alias table) an agent belongs to; one alias needs no
/// allocation, so the walk finds it in the agent's own record.
#[derive(Clone, Debug)]
pub(super) enum AliasSlots {
    One(Slot),
    Many(Vec<Slot>),
}

impl Default for AliasSlots {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl AliasSlots {
    pub(super) fn from_vec(v: Vec<Slot>) -> Self {
        match v.as_slice() {
            [one] => Self::One(*one),
            _ => Self::Many(v),
        }
    }

    pub(super) fn as_slice(&self) -> &[Slot] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }

    pub(super) fn update(&mut self, f: impl FnOnce(&mut Vec<Slot>)) {
        let mut v = self.as_slice().to_vec();
        f(&mut v);
        *self = Self::from_vec(v);
    }
}

/// A node-alias entry in the dense alias table that agents point into, with the frozen
/// group of its children kept current by [`State::refreeze_dirty_groups`]: the walk reaches an alias's
/// children from this small, hot table instead of reading the entry and probing its hash.
#[derive(Debug)]
pub(super) struct AliasCell {
    /// The alias entry's slot in `entries`.
    pub(super) slot: Slot,
    pub(super) spiffe_hash: u64,
    /// The frozen children of the alias's SPIFFE ID; `None` when it has none, or when they
    /// must be walked slot by slot (collided hash), or until the next settle.
    pub(super) group: Option<Arc<ChildGroup>>,
}

impl State {
    /// Points the alias cells whose SPIFFE ID hashes to `hash` at `group` when it holds
    /// that ID's children, and at nothing otherwise.
    pub(super) fn refresh_alias_groups(&mut self, hash: u64, group: Option<&Arc<ChildGroup>>) {
        let Some(set) = self.alias_cells_by_hash.get(hash) else { return };
        let cells: Vec<Slot> = set.iter().collect();
        for cell in cells {
            let Some(c) = self.alias_cells.get(cell) else { continue };
            let id = self.entries.get(c.slot).map(|s| s.entry.spiffe_id.as_str());
            let current = group.filter(|g| id.is_some_and(|id| g.parent.is(id))).cloned();
            if let Some(c) = self.alias_cells.get_mut(cell) {
                c.group = current;
            }
        }
    }

    /// Copies the alias slots of the agent in `slot` to the record of its id's hash.
    pub(super) fn copy_aliases_to_record(&mut self, slot: Slot) {
        let Some(cell) = self.agents.get(slot) else { return };
        let hash = key_hash(cell.node.id.0.as_str());
        let aliases = cell.aliases.clone();
        if let Some(r) = self.ids.get_mut(&hash) {
            r.agent_aliases = aliases;
        }
    }

    /// Slots of the agents whose node selectors include every selector of `selectors`.
    pub(super) fn agent_slots_matching(&self, selectors: &SelectorSet) -> Vec<Slot> {
        let sf =
            SelectorFilter { selectors: selectors.clone(), match_mode: SelectorMatch::Superset };
        let slots: Vec<Slot> = match self.selector_candidates(&self.agent_by_selector, &sf, true) {
            Some(slots) => slots,
            None => self.agent_ids.values().copied().collect(),
        };
        slots
            .into_iter()
            .filter(|&s| {
                self.agents.get(s).is_some_and(|a| selectors.is_subset_of(&a.node.selectors))
            })
            .collect()
    }

    /// Alias cells of the node-alias entries an agent with `selectors` belongs to.
    pub(super) fn alias_cells_of(&self, selectors: &SelectorSet) -> Vec<Slot> {
        let mut out: Vec<Slot> = Vec::new();
        for s in selectors.as_slice() {
            let Some(set) = self.alias_by_selector.get(key_hash(s)) else { continue };
            for slot in set.iter() {
                let Some(alias) = self.entry_at(slot) else { continue };
                let Some(&cell) = self.alias_cell_of.get(&slot) else { continue };
                if self.is_alias(alias)
                    && alias.selectors.is_subset_of(selectors)
                    && !out.contains(&cell)
                {
                    out.push(cell);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;
    use ward_core::{
        AgentId, AttestedNode, EntryId, RegistrationEntry, Selector, SelectorSet, SpiffeId,
        TrustDomain,
    };

    /// The alias table's cached child groups follow every change that can make them stale:
    /// children added and removed, the alias's SPIFFE ID changed, the alias removed, two
    /// aliases with one SPIFFE ID, and a collided hash under the alias's SPIFFE ID.
    #[test]
    fn alias_cells_follow_alias_and_children_changes() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut s = State::new(td);
        let server = "spiffe://example.org/spire/server";
        let agent = AgentId(SpiffeId::parse("spiffe://example.org/spire/agent/x").unwrap());
        let node = AttestedNode {
            id: agent.clone(),
            attestation_type: "join_token".into(),
            serial: "1".into(),
            expires_at: 0,
            new_serial: String::new(),
            new_expires_at: 0,
            selectors: SelectorSet::new(vec![
                Selector::parse("test:g").unwrap(),
                Selector::parse("test:h").unwrap(),
            ]),
            can_reattest: false,
        };
        let alias = with_selectors(&entry("alias", "spiffe://example.org/g", server), &["test:g"]);
        s.put_entry(Arc::clone(&alias));
        s.put_agent(Arc::new(node));
        check(&mut s, &agent, &[], "alias without children");

        s.put_entry(entry("c1", "spiffe://example.org/w1", "spiffe://example.org/g"));
        check(&mut s, &agent, &["c1"], "child added");
        // A grandchild through the cached group's descendants.
        s.put_entry(entry("gc", "spiffe://example.org/w2", "spiffe://example.org/w1"));
        check(&mut s, &agent, &["c1", "gc"], "grandchild added");

        // Same SPIFFE ID for a second alias: its children are listed once.
        let twin = with_selectors(&entry("twin", "spiffe://example.org/g", server), &["test:h"]);
        s.put_entry(twin);
        check(&mut s, &agent, &["c1", "gc"], "second alias with the same SPIFFE ID");
        s.remove_entry(&EntryId::new("twin").unwrap());
        check(&mut s, &agent, &["c1", "gc"], "second alias removed");

        // The alias now names another ID: the old children are no longer reached.
        let mut moved = RegistrationEntry::clone(&alias);
        moved.spiffe_id = SpiffeId::parse("spiffe://example.org/h").unwrap();
        s.put_entry(Arc::new(moved));
        check(&mut s, &agent, &[], "alias SPIFFE ID changed");
        s.put_entry(entry("c2", "spiffe://example.org/w3", "spiffe://example.org/h"));
        check(&mut s, &agent, &["c2"], "child of the new ID");
        s.remove_entry(&EntryId::new("c2").unwrap());
        check(&mut s, &agent, &[], "child removed");
        s.put_entry(entry("c3", "spiffe://example.org/w4", "spiffe://example.org/h"));
        check(&mut s, &agent, &["c3"], "child added again");
        // Settled, the alias's cell holds the group, so the walk does not read the entry.
        let cell_of = |s: &State| s.alias_cell_of[s.entry_ids.get("alias").unwrap()];
        assert!(s.alias_cells.get(cell_of(&s)).unwrap().group.is_some());

        // A planted collision under the alias's SPIFFE-ID hash: no cached group, the walk
        // reads slots and keeps only the real children.
        let h = key_hash("spiffe://example.org/h");
        let stranger = entry("zz", "spiffe://example.org/w5", "spiffe://example.org/other");
        s.put_entry(Arc::clone(&stranger));
        let slot = *s.entry_ids.get("zz").unwrap();
        s.by_parent.insert_keyed(h, s.entries.get(slot).unwrap().number, slot);
        s.collided_parents.insert(h);
        s.touch_all(h);
        check(&mut s, &agent, &["c3"], "collided alias hash");
        assert!(s.alias_cells.get(cell_of(&s)).unwrap().group.is_none());

        s.remove_entry(&EntryId::new("alias").unwrap());
        check(&mut s, &agent, &[], "alias removed");
        assert_eq!(s.alias_cells.len(), 0);
        assert!(s.alias_cell_of.is_empty());
    }
}
