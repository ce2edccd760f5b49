//! The in-memory image of the whole state with its secondary indexes.
//!
//! Every query is answered from here; sled is the durable copy that rebuilds this image on
//! open. `apply` changes both in step under the store's write lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use ward_core::{
    AgentId, AttestedNode, Bundle, EntryId, FederationRelationship, JoinToken, RegistrationEntry,
    SelectorMatch, SelectorSet, SpiffeId, TrustDomain,
};

use crate::index::{HashIndex, IdSet, PassThrough, Slab, Slot, key_hash};
use crate::query::{AgentFilter, EntryFilter, Page, PageRequest, SelectorFilter, agent_token};

/// Children per chunk of a frozen group: a change re-freezes one chunk and copies the
/// group's chunk pointers, so a write under a parent with many children stays cheap.
const CHUNK: usize = 64;

/// A child in a frozen group: its id's first bytes (the sort key) and the entry.
#[derive(Clone, Debug)]
struct Child {
    key: u64,
    entry: Arc<RegistrationEntry>,
}

impl Child {
    /// Orders by id: the prefix first, the whole id only when prefixes tie.
    fn cmp_id(&self, key: u64, id: &str) -> std::cmp::Ordering {
        self.key.cmp(&key).then_with(|| self.entry.id.as_str().cmp(id))
    }
}

/// A child while a group is built or patched, with its SPIFFE ID's hash when entries are
/// parented by that ID (the walk then descends into it).
#[derive(Clone, Debug)]
struct Fresh {
    child: Child,
    mark: Option<u64>,
}

/// Up to about [`CHUNK`] children of one parent, sorted by id, and the children that
/// parent entries of their own as `(index, hash of its SPIFFE ID)`.
#[derive(Clone, Debug)]
struct Chunk {
    children: Arc<[Child]>,
    marks: Box<[(u32, u64)]>,
}

impl Chunk {
    fn new(items: Vec<Fresh>) -> Self {
        let marks = (0u32..).zip(&items).filter_map(|(i, f)| f.mark.map(|h| (i, h))).collect();
        Self { children: items.into_iter().map(|f| f.child).collect(), marks }
    }

    /// The children back as working items, marks included.
    fn thaw(&self) -> Vec<Fresh> {
        let mut marks = self.marks.iter().peekable();
        (0u32..)
            .zip(self.children.iter())
            .map(|(i, c)| {
                let mark = marks.next_if(|(at, _)| *at == i).map(|&(_, h)| h);
                Fresh { child: c.clone(), mark }
            })
            .collect()
    }
}

/// The entries of one parent ID, frozen for the authorized-entries walk: sorted by id in
/// chunks, with the children that parent other entries marked, so the walk reads one block
/// per parent instead of every child. The first chunk is inline: most parents have one.
// In declaration order: the walk reads `descend` and `parent`, next to the reference count.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct ChildGroup {
    /// Whether any child parents entries (the walk then reads the chunks' marks).
    descend: bool,
    parent: InlineId,
    len: usize,
    first: Chunk,
    rest: Box<[Chunk]>,
}

impl ChildGroup {
    /// A group of `items` (any order) cut into chunks; `None` when there are none.
    fn new(parent: &str, mut items: Vec<Fresh>) -> Option<Self> {
        items.sort_unstable_by(|a, b| a.child.cmp_id(b.child.key, b.child.entry.id.as_str()));
        let mut chunks = Vec::with_capacity(items.len().div_ceil(CHUNK));
        while items.len() > CHUNK {
            let tail = items.split_off(CHUNK);
            chunks.push(Chunk::new(std::mem::replace(&mut items, tail)));
        }
        if !items.is_empty() {
            chunks.push(Chunk::new(items));
        }
        Self::from_chunks(InlineId::new(parent), chunks)
    }

    fn from_chunks(parent: InlineId, mut chunks: Vec<Chunk>) -> Option<Self> {
        if chunks.is_empty() {
            return None;
        }
        let first = chunks.remove(0);
        let len = first.children.len() + chunks.iter().map(|c| c.children.len()).sum::<usize>();
        let descend = !first.marks.is_empty() || chunks.iter().any(|c| !c.marks.is_empty());
        Some(Self { parent, len, descend, first, rest: chunks.into_boxed_slice() })
    }

    fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    fn children(&self) -> impl Iterator<Item = &Child> {
        self.chunks().flat_map(|c| c.children.iter())
    }
}

/// A chunk of a group being patched: shared until a change opens it, and found by the
/// id it started with (chunks cover disjoint, ordered id ranges).
struct Patch {
    low: Option<(u64, Arc<RegistrationEntry>)>,
    frozen: Option<Chunk>,
    open: Vec<Fresh>,
}

impl Patch {
    fn new(chunk: &Chunk) -> Self {
        let low = chunk.children.first().map(|c| (c.key, Arc::clone(&c.entry)));
        Self { low, frozen: Some(chunk.clone()), open: Vec::new() }
    }

    /// Whether the chunk starts at or before `(key, id)`.
    fn starts_by(&self, key: u64, id: &str) -> bool {
        self.low.as_ref().is_some_and(|(k, e)| (*k, e.id.as_str()) <= (key, id))
    }

    fn open(&mut self) -> &mut Vec<Fresh> {
        if let Some(c) = self.frozen.take() {
            self.open = c.thaw();
        }
        &mut self.open
    }
}

/// The agents whose cached authorized entries a command may have changed: listed one by
/// one up to a limit, beyond which the whole cache is dropped (a change under a node alias
/// that every agent of a large cluster belongs to).
#[derive(Debug)]
pub(crate) struct Affected {
    agents: HashSet<AgentId>,
    all: bool,
    limit: usize,
}

impl Affected {
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

/// Parent hashes whose frozen group is missing or stale, with the ids of the children that
/// changed under each (or `full` when the group must be rebuilt from the parent index).
#[derive(Debug, Default)]
struct Touched {
    full: bool,
    ids: Vec<EntryId>,
}

/// Bytes of an ID stored inside its owner when they fit, so comparing it reads no
/// further allocation.
const INLINE_ID: usize = 64;

/// An ID kept inline when at most [`INLINE_ID`] bytes long.
#[derive(Clone, Debug)]
enum InlineId {
    Short { len: u8, bytes: [u8; INLINE_ID] },
    Long(Box<str>),
}

impl InlineId {
    fn new(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE_ID => {
                let mut bytes = [0u8; INLINE_ID];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Self::Short { len, bytes }
            }
            _ => Self::Long(s.into()),
        }
    }

    fn is(&self, s: &str) -> bool {
        self.bytes() == s.as_bytes()
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::Short { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Self::Long(l) => l.as_bytes(),
        }
    }
}

/// The authorized entries of an agent: shared per-parent blocks of entries, iterated in
/// entry-id order. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuthorizedEntries {
    parts: Arc<[Arc<ChildGroup>]>,
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
/// to it, so the authorized-entries walk and its sort rarely touch the entry's strings.
#[derive(Debug)]
struct Slotted {
    entry: Arc<RegistrationEntry>,
    spiffe_hash: u64,
    id_prefix: u64,
}

/// The first 8 bytes of `s`, big-endian and zero-padded: ordering by it agrees with
/// ordering by `s` whenever the prefixes differ.
fn prefix_key(s: &str) -> u64 {
    let mut b = [0u8; 8];
    let n = s.len().min(8);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

impl Slotted {
    fn new(entry: Arc<RegistrationEntry>) -> Self {
        let spiffe_hash = key_hash(entry.spiffe_id.as_str());
        let id_prefix = prefix_key(entry.id.as_str());
        Self { entry, spiffe_hash, id_prefix }
    }
}

/// The alias cells (indexes into the alias table) an agent belongs to; one alias needs no
/// allocation, so the walk finds it in the agent's own record.
#[derive(Clone, Debug)]
enum AliasSlots {
    One(Slot),
    Many(Vec<Slot>),
}

impl Default for AliasSlots {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl AliasSlots {
    fn from_vec(v: Vec<Slot>) -> Self {
        match v.as_slice() {
            [one] => Self::One(*one),
            _ => Self::Many(v),
        }
    }

    fn as_slice(&self) -> &[Slot] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }

    fn update(&mut self, f: impl FnOnce(&mut Vec<Slot>)) {
        let mut v = self.as_slice().to_vec();
        f(&mut v);
        *self = Self::from_vec(v);
    }
}

/// An agent in its slot, with the aliases it belongs to kept in step with agent and alias
/// changes.
#[derive(Debug)]
struct AgentCell {
    node: Arc<AttestedNode>,
    aliases: AliasSlots,
}

/// A node-alias entry in the dense alias table that agents point into, with the frozen
/// group of its children kept current by [`State::settle`]: the walk reaches an alias's
/// children from this small, hot table instead of reading the entry and probing its hash.
#[derive(Debug)]
struct AliasCell {
    /// The alias entry's slot in `entries`.
    slot: Slot,
    spiffe_hash: u64,
    /// The frozen children of the alias's SPIFFE ID; `None` when it has none, or when they
    /// must be walked slot by slot (collided hash), or until the next settle.
    group: Option<Arc<ChildGroup>>,
}

/// What one SPIFFE-ID hash leads to: the frozen children of the parent ID under it and
/// the agents whose id has it, so an agent and its own children cost one probe.
#[derive(Debug, Default)]
struct IdRecord {
    group: Option<Arc<ChildGroup>>,
    agents: Option<IdSet>,
    /// A copy of the aliases of the agent under this hash, read when the record is not
    /// `mixed` (so at most one agent has this hash) and saving a read of its slab cell.
    agent_aliases: AliasSlots,
    /// Whether two different IDs (agents' or the group's parent) ever had this hash; until
    /// then, confirming one of them confirms all.
    mixed: bool,
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
    by_parent: HashIndex,
    by_spiffe: HashIndex,
    by_selector: HashIndex,
    by_federates: HashIndex,
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
    /// rebuilt by [`State::settle`] for the hashes in `dirty`.
    ids: HashMap<u64, IdRecord, BuildHasherDefault<PassThrough>>,
    /// Parent hashes whose frozen group is missing or stale.
    dirty: HashMap<u64, Touched>,
    pub(crate) tokens: BTreeMap<String, JoinToken>,
    pub(crate) bundles: BTreeMap<TrustDomain, Arc<Bundle>>,
    pub(crate) federations: BTreeMap<TrustDomain, Arc<FederationRelationship>>,
}

/// A parent ID as the walk holds it: borrowed from an entry, or inline in a frozen group.
#[derive(Clone, Copy)]
enum Name<'a> {
    Str(&'a str),
    Inline(&'a InlineId),
}

impl Name<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Str(s) => s.as_bytes(),
            Self::Inline(i) => i.bytes(),
        }
    }
}

/// A small visited-set of parent IDs (with their hashes) that avoids hashing again for the
/// common short walks. IDs are compared only when their hashes are equal.
struct Visited<'a> {
    small: Vec<(u64, Name<'a>)>,
    large: Option<HashMap<u64, Vec<Name<'a>>>>,
}

impl<'a> Visited<'a> {
    fn new() -> Self {
        Self { small: Vec::new(), large: None }
    }

    /// Inserts; false if it was there.
    fn insert(&mut self, hash: u64, name: Name<'a>) -> bool {
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
fn push_descendants<'a>(g: &'a ChildGroup, stack: &mut Vec<(u64, &'a str)>) {
    if !g.descend {
        return;
    }
    for chunk in g.chunks() {
        for &(i, hash) in chunk.marks.iter() {
            if let Some(c) = chunk.children.get(i as usize) {
                stack.push((hash, c.entry.spiffe_id.as_str()));
            }
        }
    }
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
            bundles: BTreeMap::new(),
            federations: BTreeMap::new(),
        }
    }

    pub(crate) fn is_alias(&self, e: &RegistrationEntry) -> bool {
        e.parent_id == self.server_id
    }

    // ----- entries: mutation -----

    /// Inserts or replaces an entry, keeping every index in step.
    pub(crate) fn put_entry(&mut self, e: Arc<RegistrationEntry>) {
        if let Some(slot) = self.entry_ids.remove(e.id.as_str()) {
            if let Some(old) = self.entry_at(slot).cloned() {
                self.unindex_entry(slot, &old);
            }
            self.index_entry(slot, &e);
            self.entries.replace(slot, Slotted::new(Arc::clone(&e)));
            self.entry_ids.insert(ById(e), slot);
        } else {
            self.insert_new_entry(e);
        }
    }

    /// Inserts an entry whose id is not stored yet (bulk load).
    pub(crate) fn insert_new_entry(&mut self, e: Arc<RegistrationEntry>) {
        let slot = self.entries.insert(Slotted::new(Arc::clone(&e)));
        self.index_entry(slot, &e);
        self.entry_ids.insert(ById(e), slot);
    }

    /// Makes room for `entries` entries before a bulk load.
    pub(crate) fn reserve_entries(&mut self, entries: usize) {
        self.entries.reserve(entries);
        self.by_spiffe.reserve(entries);
    }

    pub(crate) fn remove_entry(&mut self, id: &EntryId) -> Option<Arc<RegistrationEntry>> {
        let slot = self.entry_ids.remove(id.as_str())?;
        let old = self.entries.remove(slot)?.entry;
        self.unindex_entry(slot, &old);
        Some(old)
    }

    fn index_entry(&mut self, slot: Slot, e: &RegistrationEntry) {
        let parent_hash = key_hash(e.parent_id.as_str());
        // Keep the invariant the walk relies on: a parent hash not marked as collided holds
        // entries of one parent ID only.
        let other = self.by_parent.get(parent_hash).and_then(|set| set.iter().find(|&s| s != slot));
        if other.and_then(|s| self.entry_at(s)).is_some_and(|o| o.parent_id != e.parent_id) {
            self.collided_parents.insert(parent_hash);
        }
        let first_child = self.by_parent.get(parent_hash).is_none();
        self.by_parent.insert(parent_hash, slot);
        self.touch(parent_hash, &e.id);
        if first_child {
            self.mark_parents_of(parent_hash);
        }
        self.by_spiffe.insert(key_hash(e.spiffe_id.as_str()), slot);
        for s in e.selectors.as_slice() {
            self.by_selector.insert(key_hash(s), slot);
        }
        for td in &e.federates_with {
            self.by_federates.insert(key_hash(td.as_str()), slot);
        }
        if self.is_alias(e) {
            for s in e.selectors.as_slice() {
                self.alias_by_selector.insert(key_hash(s), slot);
            }
            let spiffe_hash = key_hash(e.spiffe_id.as_str());
            let group = if self.dirty.contains_key(&spiffe_hash) {
                None
            } else {
                self.current_group(spiffe_hash, e.spiffe_id.as_str())
            };
            let cell = self.alias_cells.insert(AliasCell { slot, spiffe_hash, group });
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
    }

    fn unindex_entry(&mut self, slot: Slot, e: &RegistrationEntry) {
        let parent_hash = key_hash(e.parent_id.as_str());
        self.by_parent.remove(parent_hash, slot);
        self.touch(parent_hash, &e.id);
        if self.by_parent.get(parent_hash).is_none() {
            self.mark_parents_of(parent_hash);
        }
        self.by_spiffe.remove(key_hash(e.spiffe_id.as_str()), slot);
        for s in e.selectors.as_slice() {
            self.by_selector.remove(key_hash(s), slot);
        }
        for td in &e.federates_with {
            self.by_federates.remove(key_hash(td.as_str()), slot);
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

    /// Marks stale the groups holding an entry whose SPIFFE ID hashes to `hash`: whether
    /// that entry has children just changed.
    fn mark_parents_of(&mut self, hash: u64) {
        let Some(set) = self.by_spiffe.get(hash) else { return };
        let marked: Vec<(u64, EntryId)> = set
            .iter()
            .filter_map(|slot| self.entries.get(slot))
            .map(|e| (key_hash(e.entry.parent_id.as_str()), e.entry.id.clone()))
            .collect();
        for (parent_hash, id) in marked {
            self.touch(parent_hash, &id);
        }
    }

    /// Notes that the child `id` of the parent hash `hash` changed (added, removed, or
    /// whether it parents entries).
    fn touch(&mut self, hash: u64, id: &EntryId) {
        // Without a frozen group (a new parent, or a bulk load) it is built whole: no need
        // to remember which children changed.
        let frozen = self.ids.get(&hash).is_some_and(|r| r.group.is_some());
        let t = self.dirty.entry(hash).or_default();
        if !frozen && !t.full {
            t.full = true;
            t.ids = Vec::new();
        }
        if !t.full {
            t.ids.push(id.clone());
        }
    }

    /// Notes that the group of `hash` must be rebuilt from the parent index.
    #[cfg(test)]
    fn touch_all(&mut self, hash: u64) {
        let t = self.dirty.entry(hash).or_default();
        t.full = true;
        t.ids.clear();
    }

    /// Rebuilds the frozen groups of the parent hashes changed since the last call.
    pub(crate) fn settle(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for (hash, touched) in dirty {
            match self.rebuild_group(hash, &touched) {
                Some(g) => {
                    let mixed =
                        self.ids.get(&hash).and_then(|r| r.agents.as_ref()).is_some_and(|set| {
                            set.iter().any(|s| {
                                self.agents
                                    .get(s)
                                    .is_some_and(|a| !g.parent.is(a.node.id.0.as_str()))
                            })
                        });
                    let g = Arc::new(g);
                    let r = self.ids.entry(hash).or_default();
                    r.mixed |= mixed;
                    r.group = Some(Arc::clone(&g));
                    self.refresh_alias_groups(hash, Some(&g));
                }
                None => {
                    if let Some(r) = self.ids.get_mut(&hash) {
                        r.group = None;
                        if r.agents.is_none() {
                            self.ids.remove(&hash);
                        }
                    }
                    self.refresh_alias_groups(hash, None);
                }
            }
        }
    }

    /// Points the alias cells whose SPIFFE ID hashes to `hash` at `group` when it holds
    /// that ID's children, and at nothing otherwise.
    fn refresh_alias_groups(&mut self, hash: u64, group: Option<&Arc<ChildGroup>>) {
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

    /// The settled frozen group under `hash` when it holds the children of `id`.
    fn current_group(&self, hash: u64, id: &str) -> Option<Arc<ChildGroup>> {
        self.ids.get(&hash)?.group.as_ref().filter(|g| g.parent.is(id)).cloned()
    }

    /// The new frozen group of `hash` after `touched`: the current group patched chunk by
    /// chunk when only a few children changed, otherwise rebuilt from the parent index.
    /// `None` when it holds no entries or entries of more than one parent ID (those are
    /// walked slot by slot).
    fn rebuild_group(&self, hash: u64, touched: &Touched) -> Option<ChildGroup> {
        if self.collided_parents.contains(&hash) {
            return None;
        }
        let current = self.ids.get(&hash).and_then(|r| r.group.as_ref());
        // Patch when few children changed and deletes have not left the group in many
        // small chunks; a whole rebuild re-cuts it.
        if let Some(g) = current
            && !touched.full
            && touched.ids.len().saturating_mul(8) <= g.len
            && g.rest.len() <= 2 * g.len.div_ceil(CHUNK)
            && let Some(patched) = self.patch_group(hash, g, &touched.ids)
        {
            return patched;
        }
        self.build_group(hash)
    }

    /// The frozen group of `hash` built from the parent index.
    fn build_group(&self, hash: u64) -> Option<ChildGroup> {
        let set = self.by_parent.get(hash)?;
        let items: Vec<Fresh> =
            set.iter().filter_map(|s| self.entries.get(s)).map(|s| self.child(s)).collect();
        let parent = items.first()?.child.entry.parent_id.clone();
        ChildGroup::new(parent.as_str(), items)
    }

    /// `g` with the children `ids` removed and, where they are still children of its
    /// parent, put back as they are now. Only the chunks they fall in are copied. `None`
    /// when it cannot be patched (a child now has another parent ID under the same hash).
    fn patch_group(
        &self,
        hash: u64,
        g: &ChildGroup,
        ids: &[EntryId],
    ) -> Option<Option<ChildGroup>> {
        let mut work: Vec<Patch> = g.chunks().map(Patch::new).collect();
        for id in ids {
            let key = prefix_key(id.as_str());
            let at = work.partition_point(|w| w.starts_by(key, id.as_str())).saturating_sub(1);
            let now = self
                .entry_ids
                .get(id.as_str())
                .and_then(|&slot| self.entries.get(slot))
                .filter(|s| key_hash(s.entry.parent_id.as_str()) == hash);
            if now.is_some_and(|s| !g.parent.is(s.entry.parent_id.as_str())) {
                return None;
            }
            let chunk = work.get_mut(at)?.open();
            let find = |c: &Fresh| c.child.cmp_id(key, id.as_str());
            if let Ok(pos) = chunk.binary_search_by(find) {
                chunk.remove(pos);
            }
            if let Some(s) = now {
                let (Ok(pos) | Err(pos)) = chunk.binary_search_by(find);
                chunk.insert(pos, self.child(s));
            }
        }
        let mut chunks = Vec::with_capacity(work.len());
        for w in work {
            if let Some(c) = w.frozen {
                chunks.push(c);
            } else if w.open.len() > 2 * CHUNK {
                chunks.extend(w.open.chunks(CHUNK).map(|c| Chunk::new(c.to_vec())));
            } else if !w.open.is_empty() {
                chunks.push(Chunk::new(w.open));
            }
        }
        Some(ChildGroup::from_chunks(g.parent.clone(), chunks))
    }

    /// The entry in `s` as a child for a frozen group.
    fn child(&self, s: &Slotted) -> Fresh {
        Fresh {
            child: Child { key: s.id_prefix, entry: Arc::clone(&s.entry) },
            mark: self.by_parent.get(s.spiffe_hash).is_some().then_some(s.spiffe_hash),
        }
    }

    // ----- entries: lookups -----

    pub(crate) fn entry(&self, id: &EntryId) -> Option<&Arc<RegistrationEntry>> {
        self.entry_ids.get_key_value(id.as_str()).map(|(k, _)| &k.0)
    }

    fn entry_at(&self, slot: Slot) -> Option<&Arc<RegistrationEntry>> {
        self.entries.get(slot).map(|s| &s.entry)
    }

    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }

    fn slots<'a>(
        &'a self,
        index: &'a HashIndex,
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

    /// An entry with the same SPIFFE ID, parent and selectors as `e`, other than `e` itself.
    pub(crate) fn similar_entry(&self, e: &RegistrationEntry) -> Option<&Arc<RegistrationEntry>> {
        let set = self.by_spiffe.get(key_hash(e.spiffe_id.as_str()))?;
        set.iter().filter_map(|s| self.entry_at(s)).find(|o| {
            o.id != e.id
                && o.spiffe_id == e.spiffe_id
                && o.parent_id == e.parent_id
                && o.selectors == e.selectors
        })
    }

    /// Candidate entries for a filter, from the narrowest index that applies; `None` when no
    /// index applies and the caller must walk all entries.
    fn entry_candidates(&self, f: &EntryFilter) -> Option<Vec<Slot>> {
        let from = |index: &HashIndex, h: u64| -> Vec<Slot> {
            index.get(h).map(|s| s.iter().collect()).unwrap_or_default()
        };
        if let Some(id) = &f.spiffe_id {
            return Some(from(&self.by_spiffe, key_hash(id.as_str())));
        }
        if let Some(id) = &f.parent_id {
            return Some(from(&self.by_parent, key_hash(id.as_str())));
        }
        if let Some(c) = f
            .selectors
            .as_ref()
            .and_then(|sf| self.selector_candidates(&self.by_selector, sf, false))
        {
            return Some(c);
        }
        if let Some(ff) = &f.federates_with {
            let hashes = ff.trust_domains.iter().map(|td| key_hash(td.as_str()));
            if let Some(c) = candidates_by_mode(&self.by_federates, hashes, ff.match_mode, true) {
                return Some(c);
            }
        }
        None
    }

    fn selector_candidates(
        &self,
        index: &HashIndex,
        sf: &SelectorFilter,
        may_be_empty: bool,
    ) -> Option<Vec<Slot>> {
        let hashes = sf.selectors.as_slice().iter().map(key_hash);
        candidates_by_mode(index, hashes, sf.match_mode, may_be_empty)
    }

    /// ListEntries.
    pub(crate) fn list_entries(
        &self,
        f: &EntryFilter,
        page: &PageRequest,
    ) -> Page<Arc<RegistrationEntry>> {
        let after = page.token.as_deref().filter(|t| !t.is_empty());
        let size = if page.size == 0 { usize::MAX } else { page.size };
        match self.entry_candidates(f) {
            Some(slots) => {
                let mut hits: Vec<&Arc<RegistrationEntry>> = slots
                    .into_iter()
                    .filter_map(|s| self.entry_at(s))
                    .filter(|e| after.is_none_or(|a| e.id.as_str() > a) && f.matches(e))
                    .collect();
                hits.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                let more = hits.len() > size;
                hits.truncate(size);
                finish_page(hits.into_iter().cloned().collect(), more, |e| e.id.as_str().to_owned())
            }
            None => {
                let iter: Box<dyn Iterator<Item = (&ById, &Slot)>> = match after {
                    Some(a) => Box::new(self.entry_ids.range::<str, _>((
                        std::ops::Bound::Excluded(a),
                        std::ops::Bound::Unbounded,
                    ))),
                    None => Box::new(self.entry_ids.iter()),
                };
                let mut items = Vec::new();
                let mut more = false;
                for (ById(e), _) in iter {
                    if !f.matches(e) {
                        continue;
                    }
                    if items.len() == size {
                        more = true;
                        break;
                    }
                    items.push(Arc::clone(e));
                }
                finish_page(items, more, |e| e.id.as_str().to_owned())
            }
        }
    }

    /// CountEntries.
    pub(crate) fn count_entries(&self, f: &EntryFilter) -> usize {
        match self.entry_candidates(f) {
            Some(slots) => {
                slots.into_iter().filter_map(|s| self.entry_at(s)).filter(|e| f.matches(e)).count()
            }
            None => self.all_entries().filter(|e| f.matches(e)).count(),
        }
    }

    // ----- agents -----

    pub(crate) fn put_agent(&mut self, a: Arc<AttestedNode>) {
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
            let slot = self.agents.insert(AgentCell { node: Arc::clone(&a), aliases });
            for s in a.selectors.as_slice() {
                self.agent_by_selector.insert(key_hash(s), slot);
            }
            let hash = key_hash(a.id.0.as_str());
            let mixed = self.ids.get(&hash).is_some_and(|r| {
                r.group.as_ref().is_some_and(|g| !g.parent.is(a.id.0.as_str()))
                    || r.agents.as_ref().is_some_and(|set| {
                        set.iter().any(|s| self.agents.get(s).is_some_and(|o| o.node.id != a.id))
                    })
            });
            let r = self.ids.entry(hash).or_default();
            r.mixed |= mixed;
            match &mut r.agents {
                Some(set) => set.insert(slot),
                None => r.agents = Some(IdSet::One(slot)),
            }
            self.agent_ids.insert(a.id.clone(), slot);
            self.copy_aliases_to_record(slot);
        }
    }

    /// Copies the alias slots of the agent in `slot` to the record of its id's hash.
    fn copy_aliases_to_record(&mut self, slot: Slot) {
        let Some(cell) = self.agents.get(slot) else { return };
        let hash = key_hash(cell.node.id.0.as_str());
        let aliases = cell.aliases.clone();
        if let Some(r) = self.ids.get_mut(&hash) {
            r.agent_aliases = aliases;
        }
    }

    /// Slots of the agents whose node selectors include every selector of `selectors`.
    fn agent_slots_matching(&self, selectors: &SelectorSet) -> Vec<Slot> {
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

    pub(crate) fn remove_agent(&mut self, id: &AgentId) -> Option<Arc<AttestedNode>> {
        let slot = self.agent_ids.remove(id)?;
        let hash = key_hash(id.0.as_str());
        if let Some(r) = self.ids.get_mut(&hash)
            && r.agents.as_mut().is_some_and(|set| set.remove(slot))
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

    /// ListAgents.
    pub(crate) fn list_agents(
        &self,
        f: &AgentFilter,
        page: &PageRequest,
    ) -> Page<Arc<AttestedNode>> {
        let after = page.token.as_deref().filter(|t| !t.is_empty());
        let size = if page.size == 0 { usize::MAX } else { page.size };
        let candidates = f
            .selectors
            .as_ref()
            .and_then(|sf| self.selector_candidates(&self.agent_by_selector, sf, true));
        let mut hits: Vec<&Arc<AttestedNode>> = match candidates {
            Some(slots) => {
                let mut v: Vec<_> = slots
                    .into_iter()
                    .filter_map(|s| self.agents.get(s).map(|c| &c.node))
                    .filter(|a| after.is_none_or(|t| a.id.0.as_str() > t) && f.matches(a))
                    .collect();
                v.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                v
            }
            None => self
                .all_agents()
                .filter(|a| after.is_none_or(|t| a.id.0.as_str() > t) && f.matches(a))
                .take(size.saturating_add(1))
                .collect(),
        };
        let more = hits.len() > size;
        hits.truncate(size);
        finish_page(hits.into_iter().cloned().collect(), more, |a| agent_token(&a.id))
    }

    /// CountAgents.
    pub(crate) fn count_agents(&self, f: &AgentFilter) -> usize {
        self.all_agents().filter(|a| f.matches(a)).count()
    }

    /// Agents whose node selectors include every selector of `selectors`.
    pub(crate) fn agents_matching(&self, selectors: &SelectorSet) -> Vec<Arc<AttestedNode>> {
        let sf =
            SelectorFilter { selectors: selectors.clone(), match_mode: SelectorMatch::Superset };
        match self.selector_candidates(&self.agent_by_selector, &sf, true) {
            Some(slots) => slots
                .into_iter()
                .filter_map(|s| self.agents.get(s).map(|c| &c.node))
                .filter(|a| selectors.is_subset_of(&a.selectors))
                .cloned()
                .collect(),
            None => self
                .all_agents()
                .filter(|a| selectors.is_subset_of(&a.selectors))
                .cloned()
                .collect(),
        }
    }

    // ----- authorized entries -----

    /// Alias cells of the node-alias entries an agent with `selectors` belongs to.
    fn alias_cells_of(&self, selectors: &SelectorSet) -> Vec<Slot> {
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
            Some(r) if r.agents.is_some() && own && !r.mixed => {
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
    fn visit<'a>(
        &'a self,
        hash: u64,
        record: Option<&'a IdRecord>,
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
    fn walk_slots<'a>(
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

    /// Agents whose authorized entries include the children of `parent` (the reverse walk
    /// used for precise cache invalidation). Adds them to `out`.
    pub(crate) fn agents_reaching(&self, parent: &SpiffeId, out: &mut Affected) {
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
    pub(crate) fn agents_affected_by(&self, e: &RegistrationEntry, out: &mut Affected) {
        if self.is_alias(e) {
            self.alias_members(&e.selectors, out);
        } else {
            self.agents_reaching(&e.parent_id, out);
        }
    }

    /// Adds the members of a node alias with `selectors` to `out`, or makes it all agents
    /// when the selector index says there may be more than its limit (without listing them).
    fn alias_members(&self, selectors: &SelectorSet, out: &mut Affected) {
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

    // ----- whole-state views (snapshots, tests) -----

    pub(crate) fn all_entries(&self) -> impl Iterator<Item = &Arc<RegistrationEntry>> {
        self.entry_ids.keys().map(|k| &k.0)
    }
}

/// Candidate slots for a set of key hashes under a match mode: the smallest key's set when
/// every key must be present (exact, superset), the union otherwise (subset, any). `None`
/// when the index cannot narrow the search: a superset of nothing, or, when records may
/// have no keys at all (`may_be_empty`), subset and exact-empty, which such records match.
fn candidates_by_mode(
    index: &HashIndex,
    hashes: impl Iterator<Item = u64>,
    mode: SelectorMatch,
    may_be_empty: bool,
) -> Option<Vec<Slot>> {
    let hashes: Vec<u64> = hashes.collect();
    if may_be_empty && mode == SelectorMatch::Subset {
        return None;
    }
    if hashes.is_empty() {
        return match mode {
            SelectorMatch::Superset => None,
            SelectorMatch::Exact if may_be_empty => None,
            _ => Some(Vec::new()),
        };
    }
    match mode {
        SelectorMatch::Exact | SelectorMatch::Superset => {
            let smallest = hashes.iter().copied().min_by_key(|&h| index.count(h))?;
            Some(index.get(smallest).map(|s| s.iter().collect()).unwrap_or_default())
        }
        SelectorMatch::Subset | SelectorMatch::Any => {
            let mut all: Vec<Slot> =
                hashes.iter().filter_map(|&h| index.get(h)).flat_map(|s| s.iter()).collect();
            all.sort_unstable();
            all.dedup();
            Some(all)
        }
    }
}

fn finish_page<T>(items: Vec<T>, more: bool, token: impl Fn(&T) -> String) -> Page<T> {
    let next_token = if more { items.last().map(token) } else { None };
    Page { items, next_token }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::{Selector, SelectorSet};

    fn entry(id: &str, spiffe: &str, parent: &str) -> Arc<RegistrationEntry> {
        Arc::new(RegistrationEntry::new(
            EntryId::new(id).unwrap(),
            SpiffeId::parse(spiffe).unwrap(),
            SpiffeId::parse(parent).unwrap(),
            SelectorSet::new(vec![Selector::parse("u:1").unwrap()]),
        ))
    }

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
            s.by_parent.insert(hp, slot_b);
            s.collided_parents.insert(hp);
            let agent = AgentId(SpiffeId::parse(p).unwrap());
            let got = s.authorized_entries(&agent);
            let got: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(got, vec!["a"], "order {order}");
            // Settled, the collided hash gets no frozen group and is still walked by slot.
            s.touch_all(hp);
            s.settle();
            assert!(s.ids.get(&hp).is_none_or(|r| r.group.is_none()));
            let got = s.authorized_entries(&agent);
            let got: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(got, vec!["a"], "settled, order {order}");
        }
    }

    fn with_selectors(e: &RegistrationEntry, sels: &[&str]) -> Arc<RegistrationEntry> {
        let mut e = e.clone();
        e.selectors = SelectorSet::new(sels.iter().map(|s| Selector::parse(s).unwrap()).collect());
        Arc::new(e)
    }

    fn ids_of(s: &State, agent: &AgentId) -> Vec<String> {
        s.authorized_entries(agent).iter().map(|e| e.id.as_str().to_owned()).collect()
    }

    /// Checks the walk both before settling (dirty hashes walked slot by slot) and after
    /// (alias cells read their cached group).
    fn check(s: &mut State, agent: &AgentId, want: &[&str], step: &str) {
        assert_eq!(ids_of(s, agent), want, "{step}, unsettled");
        s.settle();
        assert_eq!(ids_of(s, agent), want, "{step}, settled");
    }

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
        s.by_parent.insert(h, slot);
        s.collided_parents.insert(h);
        s.touch_all(h);
        check(&mut s, &agent, &["c3"], "collided alias hash");
        assert!(s.alias_cells.get(cell_of(&s)).unwrap().group.is_none());

        s.remove_entry(&EntryId::new("alias").unwrap());
        check(&mut s, &agent, &[], "alias removed");
        assert_eq!(s.alias_cells.len(), 0);
        assert!(s.alias_cell_of.is_empty());
    }

    /// Checks every frozen group against the entries: exactly the children of its parent,
    /// sorted across chunks, chunks neither empty nor oversized, length and descent marks
    /// current.
    fn check_groups(s: &State) {
        let parent_ids: HashSet<&str> = s.all_entries().map(|e| e.parent_id.as_str()).collect();
        for (hash, r) in &s.ids {
            let Some(g) = &r.group else { continue };
            let kids: Vec<&Child> = g.children().collect();
            assert_eq!(kids.len(), g.len);
            assert!(g.chunks().all(|c| !c.children.is_empty() && c.children.len() <= 2 * CHUNK));
            for w in kids.windows(2) {
                let order = w[0].cmp_id(w[1].key, w[1].entry.id.as_str());
                assert_eq!(order, std::cmp::Ordering::Less);
            }
            let mut want: Vec<&str> = s
                .all_entries()
                .filter(|e| g.parent.is(e.parent_id.as_str()))
                .map(|e| e.id.as_str())
                .collect();
            want.sort_unstable();
            let mut got: Vec<&str> = kids.iter().map(|c| c.entry.id.as_str()).collect();
            got.sort_unstable();
            assert_eq!(got, want, "group under hash {hash:x}");
            for c in &kids {
                assert!(Arc::ptr_eq(&c.entry, s.entry(&c.entry.id).unwrap()), "stale entry");
            }
            for chunk in g.chunks() {
                for (i, c) in chunk.children.iter().enumerate() {
                    let mark = chunk.marks.iter().find(|(at, _)| *at as usize == i);
                    let parents = parent_ids.contains(c.entry.spiffe_id.as_str());
                    assert_eq!(mark.is_some(), parents, "mark of {}", c.entry.id.as_str());
                    if let Some(&(_, h)) = mark {
                        assert_eq!(h, key_hash(c.entry.spiffe_id.as_str()));
                    }
                }
            }
            assert_eq!(g.descend, g.chunks().any(|c| !c.marks.is_empty()));
        }
    }

    /// SPIRE's walk done naively from a parent → children map of every entry.
    fn naive_walk(s: &State, agent: &AgentId) -> Vec<String> {
        let mut children: HashMap<&str, Vec<&RegistrationEntry>> = HashMap::new();
        for e in s.all_entries() {
            children.entry(e.parent_id.as_str()).or_default().push(e);
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![agent.0.as_str()];
        while let Some(p) = stack.pop() {
            if !seen.insert(p) {
                continue;
            }
            for e in children.get(p).into_iter().flatten() {
                out.push(e.id.as_str().to_owned());
                stack.push(e.spiffe_id.as_str());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// A parent with hundreds of children changed a few at a time: the groups are patched
    /// chunk by chunk (split when they grow, dropped when empty) and must always equal what
    /// the entries say.
    #[test]
    fn patched_groups_match_the_entries() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut s = State::new(td);
        let agents: Vec<String> =
            (0..2).map(|i| format!("spiffe://example.org/spire/agent/{i}")).collect();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // Ids share 8-byte prefixes in runs so the full-id tie-break is exercised too.
        let id_of = |n: u64| format!("{:08}-{n}", n % 37);
        for n in 0..600 {
            let parent = &agents[(n % 2) as usize];
            s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), parent));
        }
        s.settle();
        check_groups(&s);
        for round in 0..300 {
            for _ in 0..1 + next(4) {
                let n = next(900);
                let id = EntryId::new(&id_of(n)).unwrap();
                match next(5) {
                    0 => {
                        s.remove_entry(&id);
                    }
                    1 => {
                        // Nested under another workload: toggles that one's descent mark.
                        let under = format!("spiffe://example.org/w/{}", next(900));
                        s.put_entry(entry(
                            id.as_str(),
                            &format!("spiffe://example.org/w/{n}"),
                            &under,
                        ));
                    }
                    _ => {
                        let parent = &agents[next(2) as usize];
                        s.put_entry(entry(
                            id.as_str(),
                            &format!("spiffe://example.org/w/{n}"),
                            parent,
                        ));
                    }
                }
            }
            s.settle();
            check_groups(&s);
            for a in &agents {
                let agent = AgentId(SpiffeId::parse(a).unwrap());
                assert_eq!(ids_of(&s, &agent), naive_walk(&s, &agent), "round {round}");
            }
        }
        // One more child: the agent's group is patched, keeping every chunk but the one the
        // child falls in.
        let agent = AgentId(SpiffeId::parse(&agents[0]).unwrap());
        let group_of = |s: &State| s.ids[&key_hash(agent.0.as_str())].group.clone().unwrap();
        let before = group_of(&s);
        let count = before.chunks().count();
        assert!(count > 2, "{count}");
        s.put_entry(entry("00000005-extra", "spiffe://example.org/extra", &agents[0]));
        s.settle();
        let after = group_of(&s);
        assert_eq!(after.len, before.len + 1);
        let kept = before
            .chunks()
            .filter(|c| after.chunks().any(|d| Arc::ptr_eq(&c.children, &d.children)));
        assert_eq!(kept.count(), count - 1);
        check_groups(&s);
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
