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
mod tests;
