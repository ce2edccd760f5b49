//! Frozen child groups: the entries of each parent ID, sorted by id in shared chunks, with
//! the children that parent entries of their own marked, so the authorized-entries walk
//! reads one block per parent.
//!
//! Index changes mark parent hashes dirty ([`DirtyGroup`]); [`State::refreeze_dirty_groups`]
//! then patches the chunks the changed children fall in, or rebuilds a group whole when many
//! changed or deletes left it fragmented.

use std::sync::Arc;

use ward_core::{EntryId, RegistrationEntry};

use super::{Slotted, State, prefix_key};
use crate::index::key_hash;

/// Children per chunk of a frozen group: a change re-freezes one chunk and copies the
/// group's chunk pointers, so a write under a parent with many children stays cheap.
pub(super) const CHUNK: usize = 64;

/// A child in a frozen group: its id's first bytes (the sort key) and the entry.
#[derive(Clone, Debug)]
pub(super) struct Child {
    pub(super) key: u64,
    pub(super) entry: Arc<RegistrationEntry>,
}

impl Child {
    /// Orders by id: the prefix first, the whole id only when prefixes tie.
    pub(super) fn cmp_id(&self, key: u64, id: &str) -> std::cmp::Ordering {
        self.key.cmp(&key).then_with(|| self.entry.id.as_str().cmp(id))
    }
}

/// A child while a group is built or patched, with its SPIFFE ID's hash when entries are
/// parented by that ID (the walk then descends into it).
#[derive(Clone, Debug)]
pub(super) struct Fresh {
    pub(super) child: Child,
    pub(super) mark: Option<u64>,
}

/// Up to about [`CHUNK`] children of one parent, sorted by id, and the children that
/// parent entries of their own as `(index, hash of its SPIFFE ID)`.
#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub(super) children: Arc<[Child]>,
    pub(super) marks: Box<[(u32, u64)]>,
}

impl Chunk {
    pub(super) fn new(items: Vec<Fresh>) -> Self {
        let marks = (0u32..).zip(&items).filter_map(|(i, f)| f.mark.map(|h| (i, h))).collect();
        Self { children: items.into_iter().map(|f| f.child).collect(), marks }
    }

    /// This chunk's children followed by `later` (which sort after them), sharing the
    /// entries.
    fn extended(&self, later: Vec<Fresh>) -> Self {
        let base = u32::try_from(self.children.len()).unwrap_or(u32::MAX);
        let marks = self
            .marks
            .iter()
            .copied()
            .chain((base..).zip(&later).filter_map(|(i, f)| f.mark.map(|h| (i, h))))
            .collect();
        let children =
            self.children.iter().cloned().chain(later.into_iter().map(|f| f.child)).collect();
        Self { children, marks }
    }

    /// The children back as working items, marks included.
    pub(super) fn thaw(&self) -> Vec<Fresh> {
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
    pub(super) descend: bool,
    pub(super) parent: InlineId,
    pub(super) len: usize,
    pub(super) first: Chunk,
    pub(super) rest: Box<[Chunk]>,
}

impl ChildGroup {
    /// A group of `items` (any order) cut into chunks; `None` when there are none.
    pub(super) fn new(parent: &str, mut items: Vec<Fresh>) -> Option<Self> {
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

    pub(super) fn from_chunks(parent: InlineId, mut chunks: Vec<Chunk>) -> Option<Self> {
        if chunks.is_empty() {
            return None;
        }
        let first = chunks.remove(0);
        let len = chunks
            .iter()
            .map(|c| c.children.len())
            .fold(first.children.len(), usize::saturating_add);
        let descend = !first.marks.is_empty() || chunks.iter().any(|c| !c.marks.is_empty());
        Some(Self { parent, len, descend, first, rest: chunks.into_boxed_slice() })
    }

    pub(super) fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    pub(super) fn children(&self) -> impl Iterator<Item = &Child> {
        self.chunks().flat_map(|c| c.children.iter())
    }
}

/// A chunk of a group being patched: shared until a change opens it, and found by the
/// id it started with (chunks cover disjoint, ordered id ranges). Children that sort after
/// all of a shared chunk's are gathered beside it, so appending (as server-chosen ids in
/// time order do) neither opens the chunk nor searches it.
pub(super) struct Patch<'a> {
    low: Option<(u64, &'a str)>,
    frozen: Option<&'a Chunk>,
    appended: Vec<Fresh>,
    open: Vec<Fresh>,
}

impl<'a> Patch<'a> {
    pub(super) fn new(chunk: &'a Chunk) -> Self {
        let low = chunk.children.first().map(|c| (c.key, c.entry.id.as_str()));
        Self { low, frozen: Some(chunk), appended: Vec::new(), open: Vec::new() }
    }

    /// Whether the chunk starts at or before `(key, id)`.
    pub(super) fn starts_by(&self, key: u64, id: &str) -> bool {
        self.low.is_some_and(|low| low <= (key, id))
    }

    /// The children as working items, for a change anywhere in the chunk.
    pub(super) fn open(&mut self) -> &mut Vec<Fresh> {
        if let Some(c) = self.frozen.take() {
            self.open = c.thaw();
            self.open.append(&mut self.appended);
        }
        &mut self.open
    }

    /// A new chunk holding only `first`, the child in `s`.
    fn starting_with(s: &'a Slotted, first: Fresh) -> Self {
        let low = Some((s.id_prefix, s.entry.id.as_str()));
        Self { low, frozen: None, appended: Vec::new(), open: vec![first] }
    }

    /// Adds a child that sorts after every child of the chunk.
    fn push(&mut self, last: Fresh) {
        match self.frozen {
            Some(_) => self.appended.push(last),
            None => self.open.push(last),
        }
    }

    /// The chunk's children: how many, and the last.
    fn tail(&self) -> (usize, Option<&Child>) {
        match self.frozen {
            Some(c) => (
                c.children.len().saturating_add(self.appended.len()),
                self.appended.last().map(|f| &f.child).or(c.children.last()),
            ),
            None => (self.open.len(), self.open.last().map(|f| &f.child)),
        }
    }

    /// The patched chunk, cut in two or more when it grew past twice [`CHUNK`], or none
    /// when it was emptied.
    fn finish(self, chunks: &mut Vec<Chunk>) {
        match self.frozen {
            Some(c) if self.appended.is_empty() => chunks.push(c.clone()),
            Some(c) => chunks.push(c.extended(self.appended)),
            None if self.open.len() > 2 * CHUNK => {
                chunks.extend(self.open.chunks(CHUNK).map(|c| Chunk::new(c.to_vec())));
            }
            None if !self.open.is_empty() => chunks.push(Chunk::new(self.open)),
            None => {}
        }
    }
}

/// Parent hashes whose frozen group is missing or stale, with the ids of the children that
/// changed under each (or `full` when the group must be rebuilt from the parent index).
#[derive(Debug, Default)]
pub(super) struct DirtyGroup {
    pub(super) full: bool,
    pub(super) ids: Vec<EntryId>,
}

/// Bytes of an ID stored inside its owner when they fit, so comparing it reads no
/// further allocation.
pub(super) const INLINE_ID: usize = 64;

/// From this many dirty groups on, [`State::refreeze_dirty_groups`] builds them on two
/// threads (a command dirties a few; opening a store dirties every parent's).
const PARALLEL_REFREEZE: usize = 4096;

/// An ID kept inline when at most [`INLINE_ID`] bytes long.
#[derive(Clone, Debug)]
pub(super) enum InlineId {
    Short { len: u8, bytes: [u8; INLINE_ID] },
    Long(Box<str>),
}

impl InlineId {
    pub(super) fn new(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE_ID => {
                let mut bytes = [0u8; INLINE_ID];
                for (to, from) in bytes.iter_mut().zip(s.bytes()) {
                    *to = from;
                }
                Self::Short { len, bytes }
            }
            _ => Self::Long(s.into()),
        }
    }

    pub(super) fn is(&self, s: &str) -> bool {
        self.bytes() == s.as_bytes()
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::Short { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Self::Long(l) => l.as_bytes(),
        }
    }
}

impl State {
    /// Marks stale the groups holding an entry whose SPIFFE ID hashes to `hash`: whether
    /// that entry has children just changed.
    pub(super) fn mark_parents_of(&mut self, hash: u64) {
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
    pub(super) fn touch(&mut self, hash: u64, id: &EntryId) {
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

    /// Notes that the groups of `hashes` must be rebuilt whole from the parent index.
    pub(super) fn mark_full(&mut self, hashes: Vec<u64>) {
        self.dirty.reserve(hashes.len());
        for hash in hashes {
            let t = self.dirty.entry(hash).or_default();
            t.full = true;
            t.ids = Vec::new();
        }
    }

    /// Notes that the group of `hash` must be rebuilt from the parent index.
    #[cfg(test)]
    pub(super) fn touch_all(&mut self, hash: u64) {
        let t = self.dirty.entry(hash).or_default();
        t.full = true;
        t.ids.clear();
    }

    /// Rebuilds the frozen groups of the parent hashes changed since the last call.
    ///
    /// Each group is built from the parent index, the entries and that hash's own current
    /// group, none of which building another hash's group changes, so the groups are built
    /// first (on two threads when there are many, as after opening a store) and then put in
    /// place one by one in the dirty set's order: the same result as building each in turn.
    pub(crate) fn refreeze_dirty_groups(&mut self) {
        let dirty: Vec<(u64, DirtyGroup)> = std::mem::take(&mut self.dirty).into_iter().collect();
        let this = &*self;
        let build = |part: &[(u64, DirtyGroup)]| -> Vec<Option<ChildGroup>> {
            part.iter().map(|(hash, touched)| this.rebuild_group(*hash, touched)).collect()
        };
        let built: Vec<Option<ChildGroup>> = if dirty.len() < PARALLEL_REFREEZE {
            build(&dirty)
        } else {
            let (low, high) = dirty.split_at(dirty.len() / 2);
            std::thread::scope(|scope| {
                let second = scope.spawn(|| build(high));
                let mut built = build(low);
                // A panic in the other thread is passed on, as it would have been here.
                match second.join() {
                    Ok(rest) => built.extend(rest),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
                built
            })
        };
        for ((hash, _), group) in dirty.into_iter().zip(built) {
            match group {
                Some(g) => {
                    let collided =
                        self.ids.get(&hash).and_then(|r| r.agents.as_ref()).is_some_and(|set| {
                            set.iter().any(|s| {
                                self.agents
                                    .get(s)
                                    .is_some_and(|a| !g.parent.is(a.node.id.0.as_str()))
                            })
                        });
                    let g = Arc::new(g);
                    let r = self.ids.entry(hash).or_default();
                    r.collided |= collided;
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

    /// The settled frozen group under `hash` when it holds the children of `id`.
    pub(super) fn current_group(&self, hash: u64, id: &str) -> Option<Arc<ChildGroup>> {
        self.ids.get(&hash)?.group.as_ref().filter(|g| g.parent.is(id)).cloned()
    }

    /// The new frozen group of `hash` after `touched`: the current group patched chunk by
    /// chunk when only a few children changed, otherwise rebuilt from the parent index.
    /// `None` when it holds no entries or entries of more than one parent ID (those are
    /// walked slot by slot).
    pub(super) fn rebuild_group(&self, hash: u64, touched: &DirtyGroup) -> Option<ChildGroup> {
        if self.collided_parents.contains(&hash) {
            return None;
        }
        let current = self.ids.get(&hash).and_then(|r| r.group.as_ref());
        // Patch when few children changed and deletes have not left the group in many
        // small chunks; a whole rebuild re-cuts it.
        if let Some(g) = current
            && !touched.full
            && touched.ids.len().saturating_mul(8) <= g.len
            && g.rest.len() <= g.len.div_ceil(CHUNK).saturating_mul(2)
            && let Some(patched) = self.patch_group(hash, g, &touched.ids)
        {
            return patched;
        }
        self.build_group(hash)
    }

    /// The frozen group of `hash` built from the parent index.
    pub(super) fn build_group(&self, hash: u64) -> Option<ChildGroup> {
        let set = self.by_parent.get(hash)?;
        let items: Vec<Fresh> =
            set.iter().filter_map(|s| self.entries.get(s)).map(|s| self.child(s)).collect();
        let parent = items.first()?.child.entry.parent_id.clone();
        ChildGroup::new(parent.as_str(), items)
    }

    /// `g` with the children `ids` removed and, where they are still children of its
    /// parent, put back as they are now. Only the chunks they fall in are copied. `None`
    /// when it cannot be patched (a child now has another parent ID under the same hash).
    pub(super) fn patch_group(
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
            // A child after every other one (server-chosen ids are made in time order, so
            // most new children are) is added to the last chunk without opening it, or opens
            // a new chunk once the last is full, instead of copying a last chunk that only
            // grows.
            if let Some(s) = now
                && at.saturating_add(1) == work.len()
                && let Some(last) = work.last_mut()
                && let (len, Some(child)) = last.tail()
                && child.cmp_id(key, id.as_str()).is_lt()
            {
                if len >= CHUNK {
                    work.push(Patch::starting_with(s, self.child(s)));
                } else {
                    last.push(self.child(s));
                }
                continue;
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
            w.finish(&mut chunks);
        }
        Some(ChildGroup::from_chunks(g.parent.clone(), chunks))
    }

    /// The entry in `s` as a child for a frozen group.
    pub(super) fn child(&self, s: &Slotted) -> Fresh {
        Fresh {
            child: Child { key: s.id_prefix, entry: Arc::clone(&s.entry) },
            mark: self.by_parent.get(s.spiffe_hash).is_some().then_some(s.spiffe_hash),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;
    use std::collections::{HashMap, HashSet};

    use ward_core::{AgentId, EntryId, RegistrationEntry, SpiffeId, TrustDomain};

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
                assert!(chunk.marks.windows(2).all(|w| w[0].0 < w[1].0), "marks in order");
                assert!(chunk.marks.iter().all(|&(at, _)| (at as usize) < chunk.children.len()));
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

    #[test]
    fn many_dirty_groups_built_on_two_threads_are_those_of_the_entries() {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        let parents = PARALLEL_REFREEZE + 100;
        let mut number = 0;
        for p in 0..parents {
            let parent = format!("spiffe://example.org/p/{p}");
            for c in 0..2 {
                // The first child of each parent is the next parent: groups carry marks.
                let spiffe = match c {
                    0 => format!("spiffe://example.org/p/{}", p + 1),
                    _ => format!("spiffe://example.org/w/{p}"),
                };
                number += 1;
                assert!(s.insert_new_entry(entry(&format!("e-{p}-{c}"), &spiffe, &parent), number));
            }
        }
        assert!(s.dirty.len() >= PARALLEL_REFREEZE);
        s.refreeze_dirty_groups();
        assert!(s.dirty.is_empty());
        assert_eq!(s.ids.values().filter(|r| r.group.is_some()).count(), parents);
        check_groups(&s);
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
        s.refreeze_dirty_groups();
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
            s.refreeze_dirty_groups();
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
        s.refreeze_dirty_groups();
        let after = group_of(&s);
        assert_eq!(after.len, before.len + 1);
        let kept = before
            .chunks()
            .filter(|c| after.chunks().any(|d| Arc::ptr_eq(&c.children, &d.children)));
        assert_eq!(kept.count(), count - 1);
        check_groups(&s);
    }

    /// Children whose ids sort after every other (server-chosen ids come in time order) fill
    /// a last chunk up to [`CHUNK`] and then open a new one, leaving earlier chunks shared,
    /// and the groups stay exactly what the entries say.
    #[test]
    fn children_appended_in_id_order_open_new_chunks() {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        let agent = "spiffe://example.org/spire/agent/a";
        let hash = key_hash(agent);
        // Ids share their first 8 bytes, as time-ordered UUIDs made close together do.
        let id_of = |n: u64| format!("0193a5f2-{n:06}");
        for n in 0..3 {
            s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
        }
        s.refreeze_dirty_groups();
        let mut n = 3;
        while n < 700 {
            let before = s.ids[&hash].group.clone().unwrap();
            // One child at a time, and now and then two in one patch.
            for _ in 0..1 + n % 2 {
                s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
                n += 1;
            }
            s.refreeze_dirty_groups();
            let after = s.ids[&hash].group.clone().unwrap();
            assert!(after.chunks().all(|c| c.children.len() <= CHUNK), "at {n}");
            let shared = before
                .chunks()
                .filter(|c| after.chunks().any(|d| Arc::ptr_eq(&c.children, &d.children)))
                .count();
            if before.len >= 16 {
                assert!(shared + 1 >= before.chunks().count(), "at {n}: only the last changes");
            }
        }
        check_groups(&s);
        let g = s.ids[&hash].group.clone().unwrap();
        assert!(g.chunks().count() >= g.len / CHUNK, "{} chunks for {}", g.chunks().count(), g.len);
    }

    /// In one patch, children appended to the last chunk without opening it, then changes
    /// that open it (one of them re-touches an appended child, one removes an older child):
    /// the group is still exactly what the entries say.
    #[test]
    fn appended_children_then_changes_in_the_same_chunk() {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        let agent = "spiffe://example.org/spire/agent/a";
        let hash = key_hash(agent);
        let id_of = |n: u64| format!("0193a5f2-{n:06}");
        let put = |s: &mut State, n: u64, under: &str| {
            s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), under));
        };
        for n in 0..40 {
            put(&mut s, n, agent);
        }
        s.refreeze_dirty_groups();
        for round in 0..30u64 {
            let first = 40 + round * 3;
            // Appended without opening the last chunk...
            put(&mut s, first, agent);
            put(&mut s, first + 1, agent);
            // ...then an appended child touched again opens it, an older child goes away,
            // one more is appended to the opened chunk, and a child of the previous round
            // moves under another workload.
            put(&mut s, first + 1, agent);
            s.remove_entry(&EntryId::new(&id_of(first - 2)).unwrap());
            put(&mut s, first + 2, agent);
            put(&mut s, first - 1, "spiffe://example.org/w/0");
            s.refreeze_dirty_groups();
            check_groups(&s);
            let g = s.ids[&hash].group.clone().unwrap();
            let ids: Vec<String> = g.children().map(|c| c.entry.id.as_str().to_owned()).collect();
            assert!(ids.contains(&id_of(first)) && ids.contains(&id_of(first + 2)), "{round}");
            assert!(!ids.contains(&id_of(first - 1)) && !ids.contains(&id_of(first - 2)));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A new id after every other (time order), under `parent_of(under)`.
        Append {
            under: u8,
        },
        /// The id `back` places before the newest put again under `parent_of(under)`.
        Put {
            back: u16,
            under: u8,
        },
        Remove {
            back: u16,
        },
        /// An id between two older ones.
        Middle {
            at: u16,
            under: u8,
        },
        Refreeze,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u8..8).prop_map(|under| Op::Append { under }),
            2 => (0u16..300, 0u8..8).prop_map(|(back, under)| Op::Put { back, under }),
            2 => (0u16..300).prop_map(|back| Op::Remove { back }),
            1 => (0u16..2000, 0u8..8).prop_map(|(at, under)| Op::Middle { at, under }),
            3 => Just(Op::Refreeze),
        ]
    }

    /// Two agents, or a workload (so the workload's descent mark changes).
    fn parent_of(under: u8, newest: u64) -> String {
        match under {
            0..=3 => "spiffe://example.org/spire/agent/a".into(),
            4 => "spiffe://example.org/spire/agent/b".into(),
            u => format!("spiffe://example.org/w/{}", newest.saturating_sub(u64::from(u) * 3)),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Mostly appends in id order, mixed with moves, removals, ids between old ones and
        /// refreezes at random points: every patched group is consistent and lists its
        /// children exactly as a group built whole from the parent index does.
        #[allow(clippy::arithmetic_side_effects)] // small numbers in a test
        #[test]
        fn patched_groups_with_appends_equal_groups_built_whole(
            start in 0u64..200,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let mut s = State::new(TrustDomain::new("example.org").unwrap());
            // Time-ordered ids sharing their first 8 bytes, and ids that fall between them.
            let id_of = |n: u64| format!("0193a5f2-{n:06}0");
            let mid_of = |n: u64| format!("0193a5f2-{n:06}5");
            let put = |s: &mut State, id: &str, n: u64, under: &str| {
                s.put_entry(entry(id, &format!("spiffe://example.org/w/{n}"), under));
            };
            let mut next = 0u64;
            for _ in 0..start {
                put(&mut s, &id_of(next), next, "spiffe://example.org/spire/agent/a");
                next += 1;
            }
            s.refreeze_dirty_groups();
            check_groups(&s);
            for op in ops {
                match op {
                    Op::Append { under } => {
                        put(&mut s, &id_of(next), next, &parent_of(under, next));
                        next += 1;
                    }
                    Op::Put { back, under } => {
                        let n = next.saturating_sub(1 + u64::from(back));
                        put(&mut s, &id_of(n), n, &parent_of(under, next));
                        next = next.max(n + 1);
                    }
                    Op::Remove { back } => {
                        let n = next.saturating_sub(1 + u64::from(back));
                        s.remove_entry(&EntryId::new(&id_of(n)).unwrap());
                    }
                    Op::Middle { at, under } => {
                        let n = u64::from(at) % next.max(1);
                        put(&mut s, &mid_of(n), n + 100_000, &parent_of(under, next));
                    }
                    Op::Refreeze => {
                        s.refreeze_dirty_groups();
                        check_groups(&s);
                    }
                }
            }
            s.refreeze_dirty_groups();
            check_groups(&s);
            for (hash, r) in &s.ids {
                let Some(g) = &r.group else { continue };
                let whole = s.build_group(*hash).unwrap();
                let patched: Vec<&str> = g.children().map(|c| c.entry.id.as_str()).collect();
                let built: Vec<&str> = whole.children().map(|c| c.entry.id.as_str()).collect();
                proptest::prop_assert_eq!(patched, built);
            }
        }
    }
}
