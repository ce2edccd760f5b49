//! The in-memory image of the whole state with its secondary indexes.
//!
//! Every query is answered from here; sled is the durable copy that rebuilds this image on
//! open. `apply` changes both in step under the store's write lock.
//!
//! This module holds [`State`] itself: its slabs and indexes and the entry and agent
//! inserts, removals and point lookups that keep them in step. Each other concern lives in
//! its own module, as further `impl State` blocks:
//!
//! - [`groups`]: the frozen per-parent child groups the walk reads, and how a change
//!   re-freezes only the groups it touched;
//! - [`alias`]: the node-alias table that agents point into;
//! - [`walk`]: SPIRE's authorized-entries walk for an agent;
//! - [`invalidate`]: the reverse walk that finds the agents a change reaches;
//! - [`query`]: SPIRE's list and count queries with their filters and pages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use ward_core::{
    AgentId, AttestedNode, Bundle, EntryId, FederationRelationship, JoinTokenHash,
    RegistrationEntry, SpiffeId, StoredJoinToken, TrustDomain,
};

use crate::feed::FeedTail;
use crate::index::{HashIndex, PassThrough, Slab, Slot, SlotSet, key_hash};
use crate::ordered::Ordered;
use crate::request_ids::RequestIds;

mod alias;
mod bulk;
mod groups;
mod invalidate;
mod query;
mod walk;

use alias::{AliasCell, AliasSlots};
use groups::{ChildGroup, DirtyGroup};
pub(crate) use invalidate::InvalidationSet;
pub use walk::AuthorizedEntries;

/// An entry as a key of the ordered id map: ordered by, and borrowable as, its id, so the
/// map needs no second copy of the id.
#[derive(Clone, Debug)]
struct ById(Arc<RegistrationEntry>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.as_str().cmp(other.0.id.as_str())
    }
}

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.id.as_str()
    }
}

/// An entry in its slot, with the hash of its SPIFFE ID and the first bytes of its id next
/// to it, so the authorized-entries walk and its sort rarely touch the entry's strings, and
/// its creation number (the order ListEntries lists in).
#[derive(Debug)]
struct Slotted {
    entry: Arc<RegistrationEntry>,
    spiffe_hash: u64,
    id_prefix: u64,
    number: u64,
}

/// The first 8 bytes of `s`, big-endian and zero-padded: ordering by it agrees with
/// ordering by `s` whenever the prefixes differ.
fn prefix_key(s: &str) -> u64 {
    let mut b = [0u8; 8];
    for (to, from) in b.iter_mut().zip(s.bytes()) {
        *to = from;
    }
    u64::from_be_bytes(b)
}

impl Slotted {
    fn new(entry: Arc<RegistrationEntry>, number: u64) -> Self {
        let spiffe_hash = key_hash(entry.spiffe_id.as_str());
        let id_prefix = prefix_key(entry.id.as_str());
        Self { entry, spiffe_hash, id_prefix, number }
    }
}

/// An agent in its slot, with the aliases it belongs to kept in step with agent and alias
/// changes.
#[derive(Debug)]
struct AgentCell {
    node: Arc<AttestedNode>,
    aliases: AliasSlots,
}

/// What one SPIFFE-ID hash leads to: the frozen children of the parent ID under it and
/// the agents whose id has it, so an agent and its own children cost one probe.
#[derive(Debug, Default)]
struct ByIdHash {
    group: Option<Arc<ChildGroup>>,
    agents: Option<SlotSet>,
    /// A copy of the aliases of the agent under this hash, read when the record is not
    /// `collided` (so at most one agent has this hash) and saving a read of its slab cell.
    agent_aliases: AliasSlots,
    /// Whether two different IDs (agents' or the group's parent) ever had this hash; until
    /// then, confirming one of them confirms all.
    collided: bool,
}

/// The in-memory state.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) server_id: SpiffeId,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) applied: u64,
    pub(crate) revision: u64,
    entries: Slab<Slotted>,
    entry_ids: BTreeMap<ById, Slot>,
    /// Entries by creation number (then slot, for entries loaded without one).
    entry_order: BTreeSet<(u64, Slot)>,
    /// The highest creation number ever given to an entry; the next entry gets one more.
    pub(crate) last_entry_number: u64,
    // The entry indexes order each set by creation number, so list pages resume in place.
    by_parent: HashIndex<u64>,
    by_spiffe: HashIndex<u64>,
    by_selector: HashIndex<u64>,
    by_federates: HashIndex<u64>,
    /// Node-alias entries by each of their selectors.
    alias_by_selector: HashIndex,
    /// The node-alias entries; agents' alias lists hold indexes into it.
    alias_cells: Slab<AliasCell>,
    /// Alias cell of each node-alias entry slot.
    alias_cell_of: HashMap<Slot, Slot>,
    /// Alias cells by the hash of their entry's SPIFFE ID (kept current by settle).
    alias_cells_by_hash: HashIndex,
    agents: Slab<AgentCell>,
    agent_ids: BTreeMap<AgentId, Slot>,
    /// Parent hashes under which entries of more than one parent ID were ever indexed
    /// (64-bit collisions: in practice empty). Other parent hashes hold one parent ID.
    collided_parents: HashSet<u64>,
    agent_by_selector: HashIndex,
    /// By SPIFFE-ID hash: agents with that id (one probe instead of a walk down
    /// `agent_ids`) and the frozen children of a parent hash that holds one parent ID,
    /// rebuilt by [`State::refreeze_dirty_groups`] for the hashes in `dirty`.
    ids: HashMap<u64, ByIdHash, BuildHasherDefault<PassThrough>>,
    /// Parent hashes whose frozen group is missing or stale.
    dirty: HashMap<u64, DirtyGroup>,
    pub(crate) tokens: BTreeMap<JoinTokenHash, StoredJoinToken>,
    /// Bundles, listed in creation order.
    pub(crate) bundles: Ordered<Bundle>,
    /// Federation relationships (without their bundle), listed in creation order.
    pub(crate) federations: Ordered<FederationRelationship>,
    /// The Raft term of the last applied log entry (0 when applied outside Raft).
    pub(crate) applied_term: u64,
    /// The membership after the last applied membership change (opaque bytes).
    pub(crate) conf_state: Option<Vec<u8>>,
    /// Recently applied request ids.
    pub(crate) request_ids: RequestIds,
    /// The change feed's open run.
    pub(crate) feed: FeedTail,
    /// Applied writes not yet given to the engine (see [`crate::batch`]).
    pub(crate) unwritten: crate::batch::WriteBehind,
    /// Set while a store is loaded from disk: entries' index keys wait here until
    /// [`State::end_bulk_load`] builds the indexes from them at once.
    bulk: Option<Box<bulk::Bulk>>,
}

impl State {
    pub(crate) fn new(trust_domain: TrustDomain) -> Self {
        let server_id = SpiffeId::from_parts(&trust_domain, "/spire/server")
            .unwrap_or_else(|_| trust_domain.id());
        Self {
            server_id,
            trust_domain,
            applied: 0,
            revision: 0,
            entries: Slab::default(),
            entry_ids: BTreeMap::new(),
            entry_order: BTreeSet::new(),
            last_entry_number: 0,
            by_parent: HashIndex::default(),
            by_spiffe: HashIndex::default(),
            by_selector: HashIndex::default(),
            by_federates: HashIndex::default(),
            alias_by_selector: HashIndex::default(),
            alias_cells: Slab::default(),
            alias_cell_of: HashMap::new(),
            alias_cells_by_hash: HashIndex::default(),
            agents: Slab::default(),
            agent_ids: BTreeMap::new(),
            collided_parents: HashSet::new(),
            agent_by_selector: HashIndex::default(),
            ids: HashMap::default(),
            dirty: HashMap::new(),
            tokens: BTreeMap::new(),
            bundles: Ordered::default(),
            federations: Ordered::default(),
            applied_term: 0,
            conf_state: None,
            request_ids: RequestIds::default(),
            feed: FeedTail::new(0),
            unwritten: crate::batch::WriteBehind::default(),
            bulk: None,
        }
    }

    pub(crate) fn is_alias(&self, e: &RegistrationEntry) -> bool {
        e.parent_id == self.server_id
    }

    /// Inserts or replaces an entry, keeping every index in step. A replaced entry keeps
    /// its creation number; a new one gets the next (see [`State::entry_number`]). Returns
    /// the entry's number; `None`, with nothing changed, for a new entry when every slot is
    /// in use (see [`State::has_room_for_entry`]).
    pub(crate) fn put_entry(&mut self, e: Arc<RegistrationEntry>) -> Option<u64> {
        if let Some(slot) = self.entry_ids.remove(e.id.as_str()) {
            let number = self.entries.get(slot).map_or(0, |s| s.number);
            if let Some(old) = self.entry_at(slot).cloned() {
                self.unindex_entry(slot, &old, number);
            }
            self.index_entry(slot, &e, number);
            self.entries.replace(slot, Slotted::new(Arc::clone(&e), number));
            self.entry_ids.insert(ById(e), slot);
            Some(number)
        } else {
            let number = self.last_entry_number.saturating_add(1);
            self.insert_new_entry(e, number).then_some(number)
        }
    }

    /// Inserts an entry whose id is not stored yet with creation number `number` (bulk
    /// load; entries stored before numbers were kept load with 0). False, with nothing
    /// changed, when every slot is in use.
    pub(crate) fn insert_new_entry(&mut self, e: Arc<RegistrationEntry>, number: u64) -> bool {
        if let Some(mut bulk) = self.bulk.take() {
            let inserted = self.bulk_insert(&mut bulk, e, number);
            self.bulk = Some(bulk);
            return inserted;
        }
        let Some(slot) = self.entries.insert(Slotted::new(Arc::clone(&e), number)) else {
            return false;
        };
        self.index_entry(slot, &e, number);
        self.entry_order.insert((number, slot));
        self.last_entry_number = self.last_entry_number.max(number);
        self.entry_ids.insert(ById(e), slot);
        true
    }

    /// Whether a new entry has a slot (there are 2^32) and a creation number: numbers stop
    /// below `u64::MAX`, which no run of `crate::entry_runs` holds.
    pub(crate) fn has_room_for_entry(&self) -> bool {
        self.entries.has_room() && self.last_entry_number < u64::MAX.saturating_sub(1)
    }

    /// Whether a new agent has a slot (there are 2^32).
    pub(crate) fn has_room_for_agent(&self) -> bool {
        self.agents.has_room()
    }

    /// The creation number of the entry with this id: one more than the highest number
    /// any entry was given before it, so entries list in the order they were created, as
    /// SPIRE lists them by row id. Updates keep it.
    pub(crate) fn entry_number(&self, id: &EntryId) -> Option<u64> {
        let slot = *self.entry_ids.get(id.as_str())?;
        self.entries.get(slot).map(|s| s.number)
    }

    pub(crate) fn remove_entry(&mut self, id: &EntryId) -> Option<Arc<RegistrationEntry>> {
        let slot = self.entry_ids.remove(id.as_str())?;
        let Slotted { entry: old, number, .. } = self.entries.remove(slot)?;
        self.unindex_entry(slot, &old, number);
        self.entry_order.remove(&(number, slot));
        Some(old)
    }

    fn index_entry(&mut self, slot: Slot, e: &RegistrationEntry, number: u64) {
        let parent_hash = key_hash(e.parent_id.as_str());
        // Keep the invariant the walk relies on: a parent hash not marked as collided holds
        // entries of one parent ID only.
        let other = self.by_parent.get(parent_hash).and_then(|set| set.iter().find(|&s| s != slot));
        if other.and_then(|s| self.entry_at(s)).is_some_and(|o| o.parent_id != e.parent_id) {
            self.collided_parents.insert(parent_hash);
        }
        let first_child = other.is_none() && self.by_parent.get(parent_hash).is_none();
        self.by_parent.insert_keyed(parent_hash, number, slot);
        self.touch(parent_hash, &e.id);
        if first_child {
            self.mark_parents_of(parent_hash);
        }
        self.by_spiffe.insert_keyed(key_hash(e.spiffe_id.as_str()), number, slot);
        for s in e.selectors.as_slice() {
            self.by_selector.insert_keyed(key_hash(s), number, slot);
        }
        for td in &e.federates_with {
            self.by_federates.insert_keyed(key_hash(td.as_str()), number, slot);
        }
        if self.is_alias(e) {
            self.index_alias(slot, e);
        }
    }

    /// Enters the node-alias entry `e` in `slot` in the alias tables and the alias lists of
    /// the agents it matches.
    fn index_alias(&mut self, slot: Slot, e: &RegistrationEntry) {
        for s in e.selectors.as_slice() {
            self.alias_by_selector.insert(key_hash(s), slot);
        }
        let spiffe_hash = key_hash(e.spiffe_id.as_str());
        let group = if self.dirty.contains_key(&spiffe_hash) {
            None
        } else {
            self.current_group(spiffe_hash, e.spiffe_id.as_str())
        };
        // Never `None`: the alias slab grows only when all its cells are live, one per
        // live alias entry, so it holds fewer cells than the entry slab has slots.
        let Some(cell) = self.alias_cells.insert(AliasCell { slot, spiffe_hash, group }) else {
            return;
        };
        self.alias_cell_of.insert(slot, cell);
        self.alias_cells_by_hash.insert(spiffe_hash, cell);
        for agent in self.agent_slots_matching(&e.selectors) {
            if let Some(a) = self.agents.get_mut(agent) {
                a.aliases.update(|v| {
                    if !v.contains(&cell) {
                        v.push(cell);
                    }
                });
            }
            self.copy_aliases_to_record(agent);
        }
    }

    fn unindex_entry(&mut self, slot: Slot, e: &RegistrationEntry, number: u64) {
        let parent_hash = key_hash(e.parent_id.as_str());
        self.by_parent.remove_keyed(parent_hash, number, slot);
        self.touch(parent_hash, &e.id);
        if self.by_parent.get(parent_hash).is_none() {
            self.mark_parents_of(parent_hash);
        }
        self.by_spiffe.remove_keyed(key_hash(e.spiffe_id.as_str()), number, slot);
        for s in e.selectors.as_slice() {
            self.by_selector.remove_keyed(key_hash(s), number, slot);
        }
        for td in &e.federates_with {
            self.by_federates.remove_keyed(key_hash(td.as_str()), number, slot);
        }
        if self.is_alias(e) {
            for s in e.selectors.as_slice() {
                self.alias_by_selector.remove(key_hash(s), slot);
            }
            if let Some(cell) = self.alias_cell_of.remove(&slot) {
                for agent in self.agent_slots_matching(&e.selectors) {
                    if let Some(a) = self.agents.get_mut(agent) {
                        a.aliases.update(|v| v.retain(|&c| c != cell));
                    }
                    self.copy_aliases_to_record(agent);
                }
                if let Some(old) = self.alias_cells.remove(cell) {
                    self.alias_cells_by_hash.remove(old.spiffe_hash, cell);
                }
            }
        }
    }

    pub(crate) fn entry(&self, id: &EntryId) -> Option<&Arc<RegistrationEntry>> {
        self.entry_ids.get_key_value(id.as_str()).map(|(k, _)| &k.0)
    }

    fn entry_at(&self, slot: Slot) -> Option<&Arc<RegistrationEntry>> {
        self.entries.get(slot).map(|s| &s.entry)
    }

    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Number of distinct entry ids; equal to [`State::entry_count`] unless a load was
    /// given one id twice.
    pub(crate) fn distinct_entry_ids(&self) -> usize {
        self.entry_ids.len()
    }

    fn slots<'a>(
        &'a self,
        index: &'a HashIndex<u64>,
        hash: u64,
    ) -> impl Iterator<Item = &'a Arc<RegistrationEntry>> + 'a {
        index.get(hash).into_iter().flat_map(|set| set.iter()).filter_map(|s| self.entry_at(s))
    }

    /// Entries whose SPIFFE ID is `id`.
    pub(crate) fn with_spiffe_id<'a>(
        &'a self,
        id: &'a str,
    ) -> impl Iterator<Item = &'a Arc<RegistrationEntry>> + 'a {
        self.slots(&self.by_spiffe, key_hash(id)).filter(move |e| e.spiffe_id.as_str() == id)
    }

    /// Entries that federate with `td`.
    pub(crate) fn federating_with<'a>(
        &'a self,
        td: &'a TrustDomain,
    ) -> impl Iterator<Item = &'a Arc<RegistrationEntry>> + 'a {
        self.slots(&self.by_federates, key_hash(td.as_str()))
            .filter(move |e| e.federates_with.contains(td))
    }

    /// An entry with the same SPIFFE ID, parent and selectors as `e` (whatever its id).
    pub(crate) fn similar_entry(&self, e: &RegistrationEntry) -> Option<&Arc<RegistrationEntry>> {
        let set = self.by_spiffe.get(key_hash(e.spiffe_id.as_str()))?;
        set.iter().filter_map(|s| self.entry_at(s)).find(|o| {
            o.spiffe_id == e.spiffe_id && o.parent_id == e.parent_id && o.selectors == e.selectors
        })
    }

    /// Inserts or replaces an agent. False, with nothing changed, for a new agent when every
    /// slot is in use (see [`State::has_room_for_agent`]).
    pub(crate) fn put_agent(&mut self, a: Arc<AttestedNode>) -> bool {
        let aliases = AliasSlots::from_vec(self.alias_cells_of(&a.selectors));
        if let Some(&slot) = self.agent_ids.get(&a.id) {
            if let Some(old) = self.agents.get(slot).map(|c| Arc::clone(&c.node)) {
                for s in old.selectors.as_slice() {
                    self.agent_by_selector.remove(key_hash(s), slot);
                }
            }
            for s in a.selectors.as_slice() {
                self.agent_by_selector.insert(key_hash(s), slot);
            }
            self.agents.replace(slot, AgentCell { node: a, aliases });
            self.copy_aliases_to_record(slot);
        } else {
            let Some(slot) = self.agents.insert(AgentCell { node: Arc::clone(&a), aliases }) else {
                return false;
            };
            for s in a.selectors.as_slice() {
                self.agent_by_selector.insert(key_hash(s), slot);
            }
            let hash = key_hash(a.id.0.as_str());
            let collided = self.ids.get(&hash).is_some_and(|r| {
                r.group.as_ref().is_some_and(|g| !g.parent.is(a.id.0.as_str()))
                    || r.agents.as_ref().is_some_and(|set| {
                        set.iter().any(|s| self.agents.get(s).is_some_and(|o| o.node.id != a.id))
                    })
            });
            let r = self.ids.entry(hash).or_default();
            r.collided |= collided;
            match &mut r.agents {
                Some(set) => set.insert((), slot),
                None => r.agents = Some(SlotSet::One((), slot)),
            }
            self.agent_ids.insert(a.id.clone(), slot);
            self.copy_aliases_to_record(slot);
        }
        true
    }

    pub(crate) fn remove_agent(&mut self, id: &AgentId) -> Option<Arc<AttestedNode>> {
        let slot = self.agent_ids.remove(id)?;
        let hash = key_hash(id.0.as_str());
        if let Some(r) = self.ids.get_mut(&hash)
            && r.agents.as_mut().is_some_and(|set| set.remove((), slot))
        {
            r.agents = None;
            if r.group.is_none() {
                self.ids.remove(&hash);
            }
        }
        let old = self.agents.remove(slot)?.node;
        for s in old.selectors.as_slice() {
            self.agent_by_selector.remove(key_hash(s), slot);
        }
        Some(old)
    }

    pub(crate) fn agent(&self, id: &AgentId) -> Option<&Arc<AttestedNode>> {
        self.agent_slot(id).and_then(|s| self.agents.get(s)).map(|c| &c.node)
    }

    fn agent_slot(&self, id: &AgentId) -> Option<Slot> {
        let set = self.ids.get(&key_hash(id.0.as_str()))?.agents.as_ref()?;
        set.iter().find(|&s| self.agents.get(s).is_some_and(|a| a.node.id == *id))
    }

    pub(crate) fn agent_count(&self) -> usize {
        self.agents.len()
    }

    pub(crate) fn all_agents(&self) -> impl Iterator<Item = &Arc<AttestedNode>> {
        self.agent_ids.values().filter_map(|&s| self.agents.get(s)).map(|c| &c.node)
    }

    pub(crate) fn all_entries(&self) -> impl Iterator<Item = &Arc<RegistrationEntry>> {
        self.entry_ids.keys().map(|k| &k.0)
    }

    /// Every entry with its creation number, in id order (the engine's key order).
    #[cfg(test)]
    pub(crate) fn numbered_entries_by_id(
        &self,
    ) -> impl Iterator<Item = (u64, &Arc<RegistrationEntry>)> {
        self.entry_ids.values().filter_map(|&s| self.entries.get(s)).map(|s| (s.number, &s.entry))
    }

    /// Up to `max` entries numbered at most `up_to`, with their numbers, in id order from
    /// the first id after `after` (from the first id when `None`).
    pub(crate) fn numbered_entries_after(
        &self,
        after: Option<&str>,
        up_to: u64,
        max: usize,
    ) -> impl Iterator<Item = (u64, &Arc<RegistrationEntry>)> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.entry_ids
            .range::<str, _>((from, Bound::Unbounded))
            .filter_map(|(_, &s)| self.entries.get(s))
            .filter(move |s| s.number <= up_to)
            .take(max)
            .map(|s| (s.number, &s.entry))
    }

    /// The entries numbered `start..end`, with their numbers, in creation order.
    pub(crate) fn entries_numbered(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, &Arc<RegistrationEntry>)> {
        self.entry_order
            .range((start, Slot::MIN)..(end, Slot::MIN))
            .filter_map(|&(n, s)| self.entry_at(s).map(|e| (n, e)))
    }

    /// Every entry with its creation number, in creation order.
    pub(crate) fn numbered_entries(
        &self,
    ) -> impl DoubleEndedIterator<Item = (u64, &Arc<RegistrationEntry>)> {
        self.entry_order.iter().filter_map(|&(n, s)| self.entry_at(s).map(|e| (n, e)))
    }
}

/// Entries and checks shared by the tests of the state's modules.
#[cfg(test)]
mod fixtures {
    use std::sync::Arc;

    use ward_core::{AgentId, EntryId, RegistrationEntry, Selector, SelectorSet, SpiffeId};

    use super::State;

    pub(super) fn entry(id: &str, spiffe: &str, parent: &str) -> Arc<RegistrationEntry> {
        Arc::new(RegistrationEntry::new(
            EntryId::new(id).unwrap(),
            SpiffeId::parse(spiffe).unwrap(),
            SpiffeId::parse(parent).unwrap(),
            SelectorSet::new(vec![Selector::parse("u:1").unwrap()]),
        ))
    }

    pub(super) fn with_selectors(e: &RegistrationEntry, sels: &[&str]) -> Arc<RegistrationEntry> {
        let mut e = e.clone();
        e.selectors = SelectorSet::new(sels.iter().map(|s| Selector::parse(s).unwrap()).collect());
        Arc::new(e)
    }

    pub(super) fn ids_of(s: &State, agent: &AgentId) -> Vec<String> {
        s.authorized_entries(agent).iter().map(|e| e.id.as_str().to_owned()).collect()
    }

    /// Checks the walk both before settling (dirty hashes walked slot by slot) and after
    /// (alias cells read their cached group).
    pub(super) fn check(s: &mut State, agent: &AgentId, want: &[&str], step: &str) {
        assert_eq!(ids_of(s, agent), want, "{step}, unsettled");
        s.refreeze_dirty_groups();
        assert_eq!(ids_of(s, agent), want, "{step}, settled");
    }
}
