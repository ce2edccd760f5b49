//! SPIRE's authorized entries of an agent: its own children, the children of the node
//! aliases it belongs to, and, recursively, the children of every entry reached, each
//! parent visited once. Settled parents are read as whole frozen groups; dirty or collided
//! ones slot by slot.

use std::collections::HashMap;
use std::sync::Arc;

use ward_core::{AgentId, RegistrationEntry};

use super::groups::{Child, ChildGroup, InlineId};
use super::{ByIdHash, State};
use crate::index::{Slot, key_hash};

/// The authorized entries of an agent: shared per-parent blocks of entries, iterated in
/// entry-id order. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuthorizedEntries {
    pub(super) parts: Arc<[Arc<ChildGroup>]>,
}

impl AuthorizedEntries {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len).sum()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.len == 0)
    }

    /// The entries, sorted by id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<RegistrationEntry>> + '_ {
        let mut all: Vec<&Child> = Vec::with_capacity(self.len());
        all.extend(self.parts.iter().flat_map(|p| p.children()));
        if self.parts.len() > 1 {
            all.sort_unstable_by(|a, b| a.cmp_id(b.key, b.entry.id.as_str()));
        }
        all.into_iter().map(|c| &c.entry)
    }

    /// The entries, sorted by id, as a vector.
    pub fn to_vec(&self) -> Vec<Arc<RegistrationEntry>> {
        self.iter().cloned().collect()
    }

    /// Whether `a` and `b` are the same computed result (not merely equal entries).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.parts, &b.parts)
    }
}

/// A parent ID as the walk holds it: borrowed from an entry, or inline in a frozen group.
#[derive(Clone, Copy)]
pub(super) enum Name<'a> {
    Str(&'a str),
    Inline(&'a InlineId),
}

impl Name<'_> {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::Str(s) => s.as_bytes(),
            Self::Inline(i) => i.bytes(),
        }
    }
}

/// A small visited-set of parent IDs (with their hashes) that avoids hashing again for the
/// common short walks. IDs are compared only when their hashes are equal.
pub(super) struct Visited<'a> {
    pub(super) small: Vec<(u64, Name<'a>)>,
    pub(super) large: Option<HashMap<u64, Vec<Name<'a>>>>,
}

impl<'a> Visited<'a> {
    pub(super) fn new() -> Self {
        Self { small: Vec::new(), large: None }
    }

    /// Inserts; false if it was there.
    pub(super) fn insert(&mut self, hash: u64, name: Name<'a>) -> bool {
        if let Some(large) = &mut self.large {
            let names = large.entry(hash).or_default();
            if names.iter().any(|n| n.bytes() == name.bytes()) {
                return false;
            }
            names.push(name);
            return true;
        }
        if self.small.iter().any(|(h, n)| *h == hash && n.bytes() == name.bytes()) {
            return false;
        }
        self.small.push((hash, name));
        if self.small.len() > 32 {
            let mut large: HashMap<u64, Vec<Name<'a>>> = HashMap::new();
            for (h, n) in self.small.drain(..) {
                large.entry(h).or_default().push(n);
            }
            self.large = Some(large);
        }
        true
    }
}

/// Pushes the children of `g` that parent entries of their own.
pub(super) fn push_descendants<'a>(g: &'a ChildGroup, stack: &mut Vec<(u64, &'a str)>) {
    if !g.descend {
        return;
    }
    for chunk in g.chunks() {
        for &(i, hash) in chunk.marks() {
            if let Some(c) = chunk.children.get(i as usize) {
                stack.push((hash, c.entry.spiffe_id.as_str()));
            }
        }
    }
}

impl State {
    /// SPIRE's authorized entries for `agent`, computed from the indexes.
    pub(crate) fn authorized_entries(&self, agent: &AgentId) -> AuthorizedEntries {
        let mut visited = Visited::new();
        let mut stack: Vec<(u64, &str)> = Vec::new();
        let mut parts: Vec<Arc<ChildGroup>> = Vec::new();
        let hash = key_hash(agent.0.as_str());
        visited.insert(hash, Name::Str(agent.0.as_str()));
        let record = self.ids.get(&hash);
        // The agent's own children first: that read and the agent's below are independent,
        // so their memory reads overlap.
        let own = self.visit(hash, record, agent.0.as_str(), &mut stack, &mut parts);
        let aliases: &[Slot] = match record {
            Some(r) if r.agents.is_some() && own && !r.collided => {
                // The group's parent matched the agent's id and every id under this hash
                // is that one: the record's copy of the agent's aliases is the agent's.
                r.agent_aliases.as_slice()
            }
            Some(r) => r
                .agents
                .as_ref()
                .and_then(|set| {
                    set.iter().find_map(|s| self.agents.get(s).filter(|a| a.node.id == *agent))
                })
                .map_or(&[][..], |c| c.aliases.as_slice()),
            None => &[],
        };
        let settled = self.dirty.is_empty();
        for &cell in aliases {
            let Some(alias) = self.alias_cells.get(cell) else { continue };
            match &alias.group {
                // The cell's group is current and holds the alias's children.
                Some(g) if settled || !self.dirty.contains_key(&alias.spiffe_hash) => {
                    if visited.insert(alias.spiffe_hash, Name::Inline(&g.parent)) {
                        push_descendants(g, &mut stack);
                        parts.push(Arc::clone(g));
                    }
                }
                _ => {
                    if let Some(e) = self.entries.get(alias.slot) {
                        stack.push((alias.spiffe_hash, e.entry.spiffe_id.as_str()));
                    }
                }
            }
        }
        while let Some((hash, parent)) = stack.pop() {
            if visited.insert(hash, Name::Str(parent)) {
                self.visit(hash, self.ids.get(&hash), parent, &mut stack, &mut parts);
            }
        }
        AuthorizedEntries { parts: parts.into() }
    }

    /// Adds the children of `parent` to `parts` and those with children of their own to
    /// `stack`; true when they came from the frozen group, whose parent is then `parent`.
    pub(super) fn visit<'a>(
        &'a self,
        hash: u64,
        record: Option<&'a ByIdHash>,
        parent: &str,
        stack: &mut Vec<(u64, &'a str)>,
        parts: &mut Vec<Arc<ChildGroup>>,
    ) -> bool {
        if !self.dirty.is_empty() && self.dirty.contains_key(&hash) {
            self.walk_slots(hash, parent, stack, parts);
            return false;
        }
        // Settled: the frozen group, if any, is current and holds one parent ID.
        let Some(g) = record.and_then(|r| r.group.as_ref()) else {
            if self.collided_parents.contains(&hash) {
                self.walk_slots(hash, parent, stack, parts);
            }
            return false;
        };
        if !g.parent.is(parent) {
            return false;
        }
        push_descendants(g, stack);
        parts.push(Arc::clone(g));
        true
    }

    /// The children of `parent` read slot by slot from the parent index (collided or not
    /// yet settled hashes), added to `parts` as one group.
    pub(super) fn walk_slots<'a>(
        &'a self,
        hash: u64,
        parent: &str,
        stack: &mut Vec<(u64, &'a str)>,
        parts: &mut Vec<Arc<ChildGroup>>,
    ) {
        let Some(set) = self.by_parent.get(hash) else { return };
        let mut found = Vec::new();
        for slot in set.iter() {
            let Some(slotted) = self.entries.get(slot) else { continue };
            if slotted.entry.parent_id.as_str() != parent {
                continue;
            }
            let child = self.child(slotted);
            if child.mark.is_some() {
                stack.push((slotted.spiffe_hash, slotted.entry.spiffe_id.as_str()));
            }
            found.push(child);
        }
        if let Some(g) = ChildGroup::new(parent, found) {
            parts.push(Arc::new(g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;
    use ward_core::{SpiffeId, TrustDomain};

    /// A 64-bit collision between two parent IDs cannot be produced on purpose, so this
    /// plants one in the parent index and checks that the walk still returns only the
    /// entries whose parent really matches, in both orders within the bucket.
    #[test]
    fn parent_hash_collision_is_resolved_by_comparing_ids() {
        let td = TrustDomain::new("example.org").unwrap();
        for order in [0, 1] {
            let mut s = State::new(td.clone());
            let p = "spiffe://example.org/spire/agent/p";
            let q = "spiffe://example.org/spire/agent/q";
            let a = entry("a", "spiffe://example.org/a", p);
            let b = entry("b", "spiffe://example.org/b", q);
            let (first, second) = if order == 0 { (&a, &b) } else { (&b, &a) };
            s.put_entry(Arc::clone(first));
            s.put_entry(Arc::clone(second));
            let slot_b = *s.entry_ids.get("b").unwrap();
            let hp = key_hash(p);
            s.by_parent.insert_keyed(hp, s.entries.get(slot_b).unwrap().number, slot_b);
            s.collided_parents.insert(hp);
            let agent = AgentId(SpiffeId::parse(p).unwrap());
            let got = s.authorized_entries(&agent);
            let got: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(got, vec!["a"], "order {order}");
            // Settled, the collided hash gets no frozen group and is still walked by slot.
            s.touch_all(hp);
            s.refreeze_dirty_groups();
            assert!(s.ids.get(&hp).is_none_or(|r| r.group.is_none()));
            let got = s.authorized_entries(&agent);
            let got: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(got, vec!["a"], "settled, order {order}");
        }
    }

    #[test]
    fn walk_sorts_by_full_id_when_prefixes_tie() {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        let p = "spiffe://example.org/spire/agent/p";
        for id in ["samepref-b", "samepref-a", "other", "samepref"] {
            s.put_entry(entry(id, &format!("spiffe://example.org/{id}"), p));
        }
        let agent = AgentId(SpiffeId::parse(p).unwrap());
        let got: Vec<String> =
            s.authorized_entries(&agent).iter().map(|e| e.id.as_str().to_owned()).collect();
        assert_eq!(got, vec!["other", "samepref", "samepref-a", "samepref-b"]);
    }
}
