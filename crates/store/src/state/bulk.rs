//! Loading a whole store at once: entries read from disk are put in their slots as they
//! come, and their index keys are collected, sorted, and built into the indexes at the end
//! of the load, one map insert per distinct key instead of one probe (and a cache miss) per
//! key of every entry.
//!
//! The indexes come out exactly as inserting the entries one by one would leave them: the
//! same sets, the same collided-parent marks, the same id and creation-order maps.

use std::sync::Arc;

use ward_core::RegistrationEntry;

use super::{ById, Slotted, State};
use crate::index::{Slot, key_hash};

/// `(key hash, creation number, slot)`: one key of one entry for a [`HashIndex<u64>`].
type Keyed = (u64, u64, Slot);

/// The index keys of the entries loaded so far.
#[derive(Debug, Default)]
pub(super) struct Bulk {
    parent: Vec<Keyed>,
    spiffe: Vec<Keyed>,
    selector: Vec<Keyed>,
    federates: Vec<Keyed>,
    ids: Vec<(ById, Slot)>,
    order: Vec<(u64, Slot)>,
}

impl State {
    /// Starts loading about `entries` entries from disk: until [`State::end_bulk_load`],
    /// [`State::insert_new_entry`] only collects index keys, and the entry indexes must not
    /// be read.
    pub(crate) fn begin_bulk_load(&mut self, entries: usize) {
        self.entries.reserve(entries);
        let bulk = Bulk {
            parent: Vec::with_capacity(entries),
            spiffe: Vec::with_capacity(entries),
            selector: Vec::with_capacity(entries),
            federates: Vec::new(),
            ids: Vec::with_capacity(entries),
            order: Vec::with_capacity(entries),
        };
        self.bulk = Some(Box::new(bulk));
    }

    /// [`State::insert_new_entry`] during a bulk load: the entry takes a slot, its keys wait
    /// in `bulk`. A node alias is entered in the alias tables at once (there are few; no
    /// agent is loaded yet, so none is matched).
    pub(super) fn bulk_insert(
        &mut self,
        bulk: &mut Bulk,
        e: Arc<RegistrationEntry>,
        number: u64,
    ) -> bool {
        let slotted = Slotted::new(Arc::clone(&e), number);
        let spiffe_hash = slotted.spiffe_hash;
        let Some(slot) = self.entries.insert(slotted) else {
            return false;
        };
        bulk.parent.push((key_hash(e.parent_id.as_str()), number, slot));
        bulk.spiffe.push((spiffe_hash, number, slot));
        for s in e.selectors.as_slice() {
            bulk.selector.push((key_hash(s), number, slot));
        }
        for td in &e.federates_with {
            bulk.federates.push((key_hash(td.as_str()), number, slot));
        }
        bulk.order.push((number, slot));
        self.last_entry_number = self.last_entry_number.max(number);
        if self.is_alias(&e) {
            self.index_alias(slot, &e);
        }
        bulk.ids.push((ById(e), slot));
        true
    }

    /// Ends a bulk load: builds the entry indexes from the collected keys, and marks every
    /// parent's group to be rebuilt whole by the next [`State::refreeze_dirty_groups`]
    /// (what noting each child one by one would have asked for: no group is frozen while
    /// loading).
    pub(crate) fn end_bulk_load(&mut self) {
        let Some(bulk) = self.bulk.take() else { return };
        let Bulk { mut parent, spiffe, selector, federates, ids, order } = *bulk;
        sort_keys(&mut parent);
        self.note_parent_collisions(&parent);
        self.by_parent.extend_sorted(&parent);
        drop(parent);
        for (index, mut keys) in [
            (&mut self.by_spiffe, spiffe),
            (&mut self.by_selector, selector),
            (&mut self.by_federates, federates),
        ] {
            sort_keys(&mut keys);
            index.extend_sorted(&keys);
        }
        // Records are read in key order, which is id order: the map is built in one pass.
        if self.entry_ids.is_empty() {
            self.entry_ids = ids.into_iter().collect();
        } else {
            self.entry_ids.extend(ids);
        }
        if self.entry_order.is_empty() {
            self.entry_order = order.into_iter().collect();
        } else {
            self.entry_order.extend(order);
        }
        let parents: Vec<u64> = self.by_parent.hashes().collect();
        self.mark_full(parents);
    }

    /// Marks the parent hashes of `parent` (sorted) under which entries of more than one
    /// parent ID are loaded, as indexing them one by one would have.
    fn note_parent_collisions(&mut self, parent: &[Keyed]) {
        for run in parent.chunk_by(|a, b| a.0 == b.0) {
            let mut ids = run
                .iter()
                .filter_map(|&(_, _, slot)| self.entries.get(slot))
                .map(|s| s.entry.parent_id.as_str());
            let Some(first) = ids.next() else { continue };
            if ids.any(|id| id != first)
                && let Some(&(hash, _, _)) = run.first()
            {
                self.collided_parents.insert(hash);
            }
        }
    }
}

/// Sorts keys by hash, then creation number and slot (the order of each hash's set), and
/// drops repeats (one entry with two selectors of equal hash).
fn sort_keys(keys: &mut Vec<Keyed>) {
    keys.sort_unstable();
    keys.dedup();
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // small fixed numbers
mod tests {
    use super::*;
    use crate::state::fixtures::{entry, ids_of, with_selectors};
    use ward_core::{AgentId, AttestedNode, SelectorSet, SpiffeId, TrustDomain};

    fn entries() -> Vec<(Arc<RegistrationEntry>, u64)> {
        let server = "spiffe://example.org/spire/server";
        let mut out = Vec::new();
        for a in 0..6u64 {
            let agent = format!("spiffe://example.org/spire/agent/x/{a}");
            for w in 0..5u64 {
                let e =
                    entry(&format!("e-{a}-{w}"), &format!("spiffe://example.org/w/{w}"), &agent);
                // Two entries share selectors, and numbers disagree with id order.
                let e = with_selectors(&e, &[&format!("u:{}", w % 2), "k:ns:prod"]);
                out.push((e, 100 - a * 10 - w));
            }
        }
        for g in 0..2u64 {
            let alias = format!("spiffe://example.org/alias/{g}");
            let e = entry(&format!("g-{g}"), &alias, server);
            out.push((with_selectors(&e, &[&format!("test:group:{g}")]), 200 + g));
            out.push((entry(&format!("h-{g}"), "spiffe://example.org/shared", &alias), 300 + g));
        }
        out.sort_by(|(a, _), (b, _)| a.id.cmp(&b.id));
        out
    }

    fn agent(i: u64) -> Arc<AttestedNode> {
        let id =
            AgentId(SpiffeId::parse(&format!("spiffe://example.org/spire/agent/x/{i}")).unwrap());
        Arc::new(AttestedNode {
            id,
            attestation_type: "x".into(),
            serial: "1".into(),
            expires_at: 0,
            new_serial: String::new(),
            new_expires_at: 0,
            selectors: SelectorSet::new(vec![
                ward_core::Selector::parse(&format!("test:group:{}", i % 2)).unwrap(),
            ]),
            can_reattest: false,
        })
    }

    fn load(bulk: bool) -> State {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        if bulk {
            s.begin_bulk_load(4);
        }
        for (e, number) in entries() {
            assert!(s.insert_new_entry(e, number));
        }
        s.end_bulk_load();
        for i in 0..6 {
            assert!(s.put_agent(agent(i)));
        }
        s.refreeze_dirty_groups();
        s
    }

    #[test]
    fn a_bulk_load_builds_the_indexes_that_inserting_one_by_one_does() {
        let (one, bulk) = (load(false), load(true));
        for (a, b) in [
            (&one.by_parent, &bulk.by_parent),
            (&one.by_spiffe, &bulk.by_spiffe),
            (&one.by_selector, &bulk.by_selector),
            (&one.by_federates, &bulk.by_federates),
        ] {
            assert_eq!(a.dump(), b.dump());
        }
        assert!(!bulk.by_selector.dump().is_empty());
        assert_eq!(one.alias_by_selector.dump(), bulk.alias_by_selector.dump());
        let ids =
            |s: &State| s.entry_ids.iter().map(|(k, &v)| (k.0.id.clone(), v)).collect::<Vec<_>>();
        assert_eq!(ids(&one), ids(&bulk));
        assert_eq!(one.entry_order, bulk.entry_order);
        assert_eq!(one.collided_parents, bulk.collided_parents);
        assert_eq!(one.last_entry_number, bulk.last_entry_number);
        for i in 0..6 {
            let id = agent(i).id.clone();
            let found = ids_of(&bulk, &id);
            assert_eq!(found.len(), 6, "agent {i}: its 5 entries and its alias's child");
            assert_eq!(ids_of(&one, &id), found);
        }
    }
}
