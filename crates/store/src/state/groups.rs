//! Frozen child groups: the entries of each parent ID, sorted by id in shared chunks, with
//! the children that parent entries of their own marked, so the authorized-entries walk
//! reads one block per parent.
//!
//! Index changes mark parent hashes dirty ([`DirtyGroup`]); [`State::refreeze_dirty_groups`]
//! then patches the chunks the changed children fall in, or rebuilds a group whole when many
//! changed or deletes left it fragmented. Children after every other (as server-chosen ids,
//! made in time order, mostly are) go in a new chunk merged with the small chunks at the
//! tail like a binary counter, so full chunks are never copied by appends.

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
/// parent entries of their own as `(index, hash of its SPIFFE ID)`. Both are shared, so
/// cloning a chunk allocates nothing.
#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub(super) children: Arc<[Child]>,
    /// `None` when no child parents entries, as in most chunks: making or cloning such a
    /// chunk then touches no second allocation.
    marks: Option<Arc<[(u32, u64)]>>,
}

/// The marks of `items` placed after `base` children, as `(index, hash)`.
fn marks_of(base: usize, items: &[Fresh]) -> impl Iterator<Item = (u32, u64)> + '_ {
    let base = u32::try_from(base).unwrap_or(u32::MAX);
    (base..).zip(items).filter_map(|(i, f)| f.mark.map(|h| (i, h)))
}

/// Shared marks, or none when empty.
fn shared_marks(marks: Vec<(u32, u64)>) -> Option<Arc<[(u32, u64)]>> {
    (!marks.is_empty()).then(|| marks.into())
}

impl Chunk {
    pub(super) fn new(items: Vec<Fresh>) -> Self {
        let marks = shared_marks(marks_of(0, &items).collect());
        Self { children: items.into_iter().map(|f| f.child).collect(), marks }
    }

    /// The children of `parts` followed by `later` (which sort after them all) as one
    /// chunk, sharing the entries.
    fn joined(parts: &[Chunk], later: Vec<Fresh>) -> Self {
        let len = parts.iter().map(Chunk::len).fold(later.len(), usize::saturating_add);
        let mut children: Vec<Child> = Vec::with_capacity(len);
        let mut marks = Vec::new();
        for c in parts {
            let base = u32::try_from(children.len()).unwrap_or(u32::MAX);
            marks.extend(c.marks().iter().map(|&(i, h)| (i.saturating_add(base), h)));
            children.extend(c.children.iter().cloned());
        }
        marks.extend(marks_of(children.len(), &later));
        children.extend(later.into_iter().map(|f| f.child));
        Self { children: children.into(), marks: shared_marks(marks) }
    }

    /// The children that parent entries of their own, as `(index, hash of its SPIFFE
    /// ID)` in index order.
    pub(super) fn marks(&self) -> &[(u32, u64)] {
        self.marks.as_deref().unwrap_or_default()
    }

    pub(super) fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether the chunk's first child sorts at or before `(key, id)`: the prefix is read
    /// from the chunk itself, the entry's id only when prefixes tie.
    fn starts_by(&self, key: u64, id: &str) -> bool {
        self.children.first().is_some_and(|c| c.cmp_id(key, id).is_le())
    }

    /// The children back as working items, marks included.
    pub(super) fn thaw(&self) -> Vec<Fresh> {
        let mut marks = self.marks().iter().peekable();
        (0u32..)
            .zip(self.children.iter())
            .map(|(i, c)| {
                let mark = marks.next_if(|(at, _)| *at == i).map(|&(_, h)| h);
                Fresh { child: c.clone(), mark }
            })
            .collect()
    }
}

/// The trailing chunks that appending `count` children merges with: from the returned
/// index on. They merge while the chunk before is less than twice as large as the merged
/// tail and the merge stays within [`CHUNK`], so the chunks after the last full one halve
/// in size (a binary counter: single appends give sizes like 32, 16, 4, 1), each child is
/// copied about log2([`CHUNK`]) times before it lands in a full chunk, and a full chunk is
/// never copied by appends.
fn merge_from(chunks: &[Chunk], count: usize) -> usize {
    let mut len = count;
    let mut from = chunks.len();
    while let Some(prev) = from.checked_sub(1).and_then(|i| chunks.get(i))
        && prev.len() < len.saturating_mul(2)
        && prev.len().saturating_add(len) <= CHUNK
    {
        len = len.saturating_add(prev.len());
        from = from.saturating_sub(1);
    }
    from
}

/// Adds `appended` (sorted, and sorting after every child in `chunks`) at the tail of
/// `chunks`. While the small chunks after the last full one and `appended` hold fewer than
/// [`CHUNK`] children, `appended` is merged with the trailing chunks as [`merge_from`]
/// says. Once they hold [`CHUNK`] or more, they are cut again into full chunks and at most
/// one small one after them, so a small chunk never stays between full ones (as batches
/// of appends would otherwise leave).
fn push_appended(chunks: &mut Vec<Chunk>, appended: Vec<Fresh>) {
    let small_from =
        chunks.iter().rposition(|c| c.len() >= CHUNK).map_or(0, |i| i.saturating_add(1));
    let small = chunks.get(small_from..).unwrap_or_default().iter().map(Chunk::len).sum::<usize>();
    if small.saturating_add(appended.len()) >= CHUNK {
        let mut items: Vec<Fresh> =
            chunks.split_off(small_from).iter().flat_map(Chunk::thaw).collect();
        items.extend(appended);
        let mut full = items.chunks_exact(CHUNK);
        chunks.extend(full.by_ref().map(|c| Chunk::new(c.to_vec())));
        if !full.remainder().is_empty() {
            chunks.push(Chunk::new(full.remainder().to_vec()));
        }
        return;
    }
    if appended.is_empty() {
        return;
    }
    let merged = chunks.split_off(merge_from(chunks, appended.len()));
    chunks.push(if merged.is_empty() {
        Chunk::new(appended)
    } else {
        Chunk::joined(&merged, appended)
    });
}

/// The children of an opened chunk back in `chunks`: cut in [`CHUNK`]s when it grew past
/// twice that, dropped when it was emptied.
fn push_opened(chunks: &mut Vec<Chunk>, items: Vec<Fresh>) {
    if items.len() > 2 * CHUNK {
        chunks.extend(items.chunks(CHUNK).map(|c| Chunk::new(c.to_vec())));
    } else if !items.is_empty() {
        chunks.push(Chunk::new(items));
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
        let len = chunks.iter().map(Chunk::len).fold(first.len(), usize::saturating_add);
        let descend = first.marks.is_some() || chunks.iter().any(|c| c.marks.is_some());
        Some(Self { parent, len, descend, first, rest: chunks.into_boxed_slice() })
    }

    pub(super) fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    pub(super) fn children(&self) -> impl Iterator<Item = &Child> {
        self.chunks().flat_map(|c| c.children.iter())
    }

    /// The index (in [`Self::chunks`] order) of the chunk whose id range holds `(key,
    /// id)`: the last one starting at or before it, or the first.
    fn chunk_at(&self, key: u64, id: &str) -> usize {
        self.rest.partition_point(|c| c.starts_by(key, id))
    }

    /// The chunk at `at` in [`Self::chunks`] order.
    fn chunk(&self, at: usize) -> Option<&Chunk> {
        match at.checked_sub(1) {
            None => Some(&self.first),
            Some(i) => self.rest.get(i),
        }
    }

    /// The child sorting after every other.
    fn last_child(&self) -> Option<&Child> {
        self.rest.last().unwrap_or(&self.first).children.last()
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

/// Small chunks that appends may leave at a group's tail: sizes halve, so at most
/// log2([`CHUNK`]) + 1 of them.
const TAIL_CHUNKS: usize = (CHUNK.ilog2() as usize).saturating_add(1);

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
        // small chunks; a whole rebuild re-cuts it. Appends leave up to `TAIL_CHUNKS` small
        // chunks at the tail, their sizes halving (see `merge_from`): allowed on top of
        // twice the packed count, so that a group that only grows (127 children appended
        // one by one are in 7 chunks) is patched, not rebuilt whole on every change.
        if let Some(g) = current
            && !touched.full
            && touched.ids.len().saturating_mul(8) <= g.len
            && g.rest.len() <= g.len.div_ceil(CHUNK).saturating_mul(2).saturating_add(TAIL_CHUNKS)
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
    /// parent, put back as they are now. Only the chunks they fall in are copied, and the
    /// small chunks at the tail that children after every other are merged with (see
    /// [`merge_from`]). `None` when it cannot be patched (a child now has another parent ID
    /// under the same hash).
    pub(super) fn patch_group(
        &self,
        hash: u64,
        g: &ChildGroup,
        ids: &[EntryId],
    ) -> Option<Option<ChildGroup>> {
        let last = g.last_child();
        // The chunks a change falls in, by index, as working items; the rest stay shared.
        let mut opened: Vec<(usize, Vec<Fresh>)> = Vec::new();
        // Children after every child of `g`, in order: server-chosen ids are made in time
        // order, so most new children are.
        let mut appended: Vec<Fresh> = Vec::new();
        for id in ids {
            let key = prefix_key(id.as_str());
            let now = self
                .entry_ids
                .get(id.as_str())
                .and_then(|&slot| self.entries.get(slot))
                .filter(|s| key_hash(s.entry.parent_id.as_str()) == hash);
            if now.is_some_and(|s| !g.parent.is(s.entry.parent_id.as_str())) {
                return None;
            }
            let find = |c: &Fresh| c.child.cmp_id(key, id.as_str());
            let items = if last.is_none_or(|c| c.cmp_id(key, id.as_str()).is_lt()) {
                if let Some(s) = now
                    && appended.last().is_none_or(|f| find(f).is_lt())
                {
                    appended.push(self.child(s));
                    continue;
                }
                &mut appended
            } else {
                let at = g.chunk_at(key, id.as_str());
                let open = match opened.iter().position(|(i, _)| *i == at) {
                    Some(open) => open,
                    None => {
                        opened.push((at, g.chunk(at)?.thaw()));
                        opened.len().saturating_sub(1)
                    }
                };
                &mut opened.get_mut(open)?.1
            };
            if let Ok(pos) = items.binary_search_by(find) {
                items.remove(pos);
            }
            if let Some(s) = now {
                let (Ok(pos) | Err(pos)) = items.binary_search_by(find);
                items.insert(pos, self.child(s));
            }
        }
        opened.sort_unstable_by_key(|(at, _)| *at);
        let mut opened = opened.into_iter().peekable();
        let mut chunks = Vec::with_capacity(g.rest.len().saturating_add(2));
        for (at, chunk) in g.chunks().enumerate() {
            match opened.next_if(|(i, _)| *i == at) {
                Some((_, items)) => push_opened(&mut chunks, items),
                None => chunks.push(chunk.clone()),
            }
        }
        push_appended(&mut chunks, appended);
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
                assert!(chunk.marks.as_ref().is_none_or(|m| !m.is_empty()), "empty marks kept");
                let marks = chunk.marks();
                assert!(marks.windows(2).all(|w| w[0].0 < w[1].0), "marks in order");
                assert!(marks.iter().all(|&(at, _)| (at as usize) < chunk.children.len()));
                for (i, c) in chunk.children.iter().enumerate() {
                    let mark = marks.iter().find(|(at, _)| *at as usize == i);
                    let parents = parent_ids.contains(c.entry.spiffe_id.as_str());
                    assert_eq!(mark.is_some(), parents, "mark of {}", c.entry.id.as_str());
                    if let Some(&(_, h)) = mark {
                        assert_eq!(h, key_hash(c.entry.spiffe_id.as_str()));
                    }
                }
            }
            assert_eq!(g.descend, g.chunks().any(|c| !c.marks().is_empty()));
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

    /// Children whose ids sort after every other (server-chosen ids come in time order) go
    /// in a new chunk merged with the small chunks at the tail: every chunk but the last
    /// is kept as it was, full chunks among them, and the groups (descent marks included)
    /// stay exactly what the entries say.
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
            let added = 1 + n % 2;
            for _ in 0..added {
                s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
                // Every third child parents an entry of its own: marked as it is appended,
                // and its mark carried along as the tail chunks merge.
                if n % 3 == 0 {
                    let under = format!("spiffe://example.org/w/{n}");
                    s.put_entry(entry(&format!("x-{n}"), "spiffe://example.org/x", &under));
                }
                n += 1;
            }
            s.refreeze_dirty_groups();
            if n % 50 < 2 {
                check_groups(&s);
            }
            let after = s.ids[&hash].group.clone().unwrap();
            assert!(after.chunks().all(|c| c.children.len() <= CHUNK), "at {n}");
            if before.len >= 16 {
                // Patched: `after` starts with chunks of `before`, shared, and those include
                // every full chunk of `before`; the chunks after them hold the small tail
                // merged with the new children: one chunk, or a full one and a remainder.
                let old: Vec<&Chunk> = before.chunks().collect();
                let new: Vec<&Chunk> = after.chunks().collect();
                let kept = old
                    .iter()
                    .zip(&new)
                    .take_while(|(a, b)| Arc::ptr_eq(&a.children, &b.children))
                    .count();
                assert!(old[kept..].iter().all(|c| c.len() < CHUNK), "at {n}: a full chunk copied");
                assert!(
                    (1..=2).contains(&(new.len() - kept)),
                    "at {n}: {} new chunks",
                    new.len() - kept
                );
                assert_eq!(
                    new[kept..].iter().map(|c| c.len()).sum::<usize>(),
                    old[kept..].iter().map(|c| c.len()).sum::<usize>() + added as usize,
                    "at {n}: the new chunks are the merged tail and the new children"
                );
                assert!(
                    new.len() <= after.len / CHUNK + TAIL_CHUNKS,
                    "at {n}: {} chunks",
                    new.len()
                );
            }
        }
        check_groups(&s);
        let g = s.ids[&hash].group.clone().unwrap();
        assert!(g.chunks().count() >= g.len / CHUNK, "{} chunks for {}", g.chunks().count(), g.len);
    }

    /// Appending 1,000 children one at a time, refreezing after each: a full chunk, once
    /// made, is never copied again, the tail holds about log2([`CHUNK`]) small chunks, and
    /// each child is copied about log2([`CHUNK`]) times in all, not about [`CHUNK`] / 2 as
    /// when the last chunk was copied whole on every append.
    #[test]
    fn appended_children_are_copied_about_log2_chunk_times() {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        let agent = "spiffe://example.org/spire/agent/a";
        let hash = key_hash(agent);
        let id_of = |n: u64| format!("0193a5f2-{n:06}");
        let total = 1000;
        let mut full: Vec<Arc<[Child]>> = Vec::new();
        let mut copied = 0;
        let mut before: Option<Arc<ChildGroup>> = None;
        for n in 0..total {
            s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
            s.refreeze_dirty_groups();
            let g = s.ids[&hash].group.clone().unwrap();
            // Children in chunks this group does not share with the one before, but the
            // new child: copies.
            let made: usize = g
                .chunks()
                .filter(|c| {
                    before
                        .as_ref()
                        .is_none_or(|b| b.chunks().all(|d| !Arc::ptr_eq(&c.children, &d.children)))
                })
                .map(Chunk::len)
                .sum();
            copied += made - 1;
            for c in g.chunks().filter(|c| c.len() == CHUNK) {
                if !full.iter().any(|f| Arc::ptr_eq(f, &c.children)) {
                    full.push(Arc::clone(&c.children));
                }
            }
            before = Some(g);
        }
        check_groups(&s);
        let g = s.ids[&hash].group.clone().unwrap();
        let len = usize::try_from(total).unwrap();
        assert_eq!(g.len, len);
        assert_eq!(full.len(), len / CHUNK);
        for f in &full {
            assert!(g.chunks().any(|c| Arc::ptr_eq(f, &c.children)), "a full chunk was copied");
        }
        let log2 = CHUNK.ilog2() as usize;
        let count = g.chunks().count();
        assert!(count <= len / CHUNK + log2 + 2, "{count} chunks for {len}");
        // Copying the last chunk on every append made about len * CHUNK / 2 copies.
        assert!(copied <= len * (log2 + 1), "{copied} copies for {len} children");
    }

    /// More than [`CHUNK`] children appended in one patch of a large group: they go in
    /// full chunks of their own (and a small one merged with the tail), earlier full chunks
    /// stay shared, and the group is what the entries say.
    #[test]
    fn many_children_appended_in_one_patch() {
        let mut s = State::new(TrustDomain::new("example.org").unwrap());
        let agent = "spiffe://example.org/spire/agent/a";
        let hash = key_hash(agent);
        let id_of = |n: u64| format!("0193a5f2-{n:06}");
        let put = |s: &mut State, n: u64| {
            s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
        };
        for n in 0..1200 {
            put(&mut s, n);
        }
        s.refreeze_dirty_groups();
        let mut next = 1200;
        for round in 0..6 {
            let before = s.ids[&hash].group.clone().unwrap();
            // Between 1 and 146 children, and one from the middle removed.
            for _ in 0..1 + round * 29 {
                put(&mut s, next);
                next += 1;
            }
            s.remove_entry(&EntryId::new(&id_of(round * 100 + 7)).unwrap());
            s.refreeze_dirty_groups();
            check_groups(&s);
            let after = s.ids[&hash].group.clone().unwrap();
            assert!(after.chunks().all(|c| c.len() <= CHUNK), "round {round}");
            let opened = before
                .chunks()
                .filter(|c| after.chunks().all(|d| !Arc::ptr_eq(&c.children, &d.children)));
            // The chunk of the removed child, and the small chunks at the tail.
            assert!(opened.filter(|c| c.len() == CHUNK).count() <= 1, "round {round}");
        }
    }

    /// Children appended in batches (a create of many entries under one parent per apply,
    /// ids in time order): the small chunks appends leave stay at the tail, at most
    /// [`TAIL_CHUNKS`] of them, as they do for single appends; none is stranded between
    /// full chunks.
    #[test]
    fn children_appended_in_batches_leave_few_small_chunks() {
        let mut failed = Vec::new();
        for batch in [33u64, 40, 65, 100] {
            let mut s = State::new(TrustDomain::new("example.org").unwrap());
            let agent = "spiffe://example.org/spire/agent/a";
            let hash = key_hash(agent);
            let id_of = |n: u64| format!("0193a5f2-{n:06}");
            let mut n = 0;
            // A first child, then batches: every refreeze patches the group.
            s.put_entry(entry(&id_of(n), "spiffe://example.org/w/0", agent));
            n += 1;
            s.refreeze_dirty_groups();
            for _ in 0..30 {
                for _ in 0..batch {
                    s.put_entry(entry(&id_of(n), &format!("spiffe://example.org/w/{n}"), agent));
                    n += 1;
                }
                s.refreeze_dirty_groups();
            }
            check_groups(&s);
            let g = s.ids[&hash].group.clone().unwrap();
            let sizes: Vec<usize> = g.chunks().map(Chunk::len).collect();
            let small = sizes.iter().filter(|&&l| l < CHUNK).count();
            if sizes.len() > g.len / CHUNK + TAIL_CHUNKS || small > TAIL_CHUNKS {
                failed.push(format!(
                    "batches of {batch}: {} chunks ({small} small) for {} children: {sizes:?}",
                    sizes.len(),
                    g.len
                ));
            }
        }
        assert!(failed.is_empty(), "{failed:#?}");
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
