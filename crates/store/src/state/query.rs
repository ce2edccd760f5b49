//! SPIRE's list and count queries over entries and agents: candidates from the narrowest
//! index that applies (SPIFFE ID, parent ID, selectors or federated trust domains under
//! their match mode), confirmed against the filter, then cut into pages: entries in
//! creation order (each index set is ordered by creation number, so a page starts where the
//! last one stopped), agents by id.

use std::ops::Bound;
use std::sync::Arc;

use ward_core::{AttestedNode, RegistrationEntry, SelectorMatch, SelectorSet};

use super::State;
use crate::index::{HashIndex, Slot, SlotSet, SlotSetIter, key_hash};
use crate::query::{AgentFilter, EntryFilter, Page, PageRequest, SelectorFilter, agent_token};

impl State {
    /// The index sets whose union holds every entry a filter can match, from the narrowest
    /// index that applies; `None` when no index applies and the caller must walk all
    /// entries.
    fn entry_candidate_sets(&self, f: &EntryFilter) -> Option<Vec<&SlotSet<u64>>> {
        if let Some(id) = &f.spiffe_id {
            return Some(self.by_spiffe.get(key_hash(id.as_str())).into_iter().collect());
        }
        if let Some(id) = &f.parent_id {
            return Some(self.by_parent.get(key_hash(id.as_str())).into_iter().collect());
        }
        if let Some(sets) = f.selectors.as_ref().and_then(|sf| {
            let hashes = sf.selectors.as_slice().iter().map(key_hash);
            candidate_sets(&self.by_selector, hashes, sf.match_mode, false)
        }) {
            return Some(sets);
        }
        if let Some(ff) = &f.federates_with {
            let hashes = ff.trust_domains.iter().map(|td| key_hash(td.as_str()));
            if let Some(sets) = candidate_sets(&self.by_federates, hashes, ff.match_mode, true) {
                return Some(sets);
            }
        }
        None
    }

    /// Slots of the entries a filter can match with their creation numbers, in creation
    /// order, starting after creation number `after`.
    fn entry_slots_after(
        &self,
        f: &EntryFilter,
        after: Option<u64>,
    ) -> Box<dyn Iterator<Item = (u64, Slot)> + '_> {
        match self.entry_candidate_sets(f) {
            Some(sets) => Box::new(MergedSets::new(&sets, after)),
            None => {
                let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded((a, Slot::MAX)));
                Box::new(self.entry_order.range((from, Bound::Unbounded)).copied())
            }
        }
    }

    pub(super) fn selector_candidates(
        &self,
        index: &HashIndex,
        sf: &SelectorFilter,
        may_be_empty: bool,
    ) -> Option<Vec<Slot>> {
        let hashes = sf.selectors.as_slice().iter().map(key_hash);
        candidate_sets(index, hashes, sf.match_mode, may_be_empty).map(|sets| union_slots(&sets))
    }

    /// ListEntries: a page in creation order. The token is the creation number of the
    /// previous page's last entry; a token that is not a number yields an empty page (the
    /// server refuses such tokens before asking). As SPIRE's, every page of a paged walk
    /// that holds entries carries a token, so the walk ends with an empty page. The walk
    /// reads only the entries from the token on, so a page costs its size (plus the
    /// candidates the filter refuses).
    pub(crate) fn list_entries(
        &self,
        f: &EntryFilter,
        page: &PageRequest,
    ) -> Page<Arc<RegistrationEntry>> {
        let after = match page.token.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => match t.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return Page { items: Vec::new(), next_token: None },
            },
        };
        let size = if page.size == 0 { usize::MAX } else { page.size };
        let mut items = Vec::new();
        let mut last = None;
        for (number, slot) in self.entry_slots_after(f, after) {
            if items.len() == size {
                break;
            }
            let Some(e) = self.entry_at(slot).filter(|e| f.matches(e)) else { continue };
            items.push(Arc::clone(e));
            last = Some(number);
        }
        let paged = page.size > 0;
        Page { items, next_token: last.filter(|_| paged).map(|n| n.to_string()) }
    }

    /// CountEntries.
    pub(crate) fn count_entries(&self, f: &EntryFilter) -> usize {
        self.entry_slots_after(f, None)
            .filter_map(|(_, s)| self.entry_at(s))
            .filter(|e| f.matches(e))
            .count()
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
}

/// The index sets whose union holds the candidates for a set of key hashes under a match
/// mode: the smallest key's set when every key must be present (exact, superset), every
/// key's set otherwise (subset, any). `None` when the index cannot narrow the search: a
/// superset of nothing, or, when records may have no keys at all (`may_be_empty`), subset
/// and exact-empty, which such records match.
pub(super) fn candidate_sets<K: Ord + Copy>(
    index: &HashIndex<K>,
    hashes: impl Iterator<Item = u64>,
    mode: SelectorMatch,
    may_be_empty: bool,
) -> Option<Vec<&SlotSet<K>>> {
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
            Some(index.get(smallest).into_iter().collect())
        }
        SelectorMatch::Subset | SelectorMatch::Any => {
            Some(hashes.iter().filter_map(|&h| index.get(h)).collect())
        }
    }
}

/// The slots of the union of `sets`, each once.
fn union_slots<K: Ord + Copy>(sets: &[&SlotSet<K>]) -> Vec<Slot> {
    if let [one] = sets {
        return one.iter().collect();
    }
    let mut all: Vec<Slot> = sets.iter().flat_map(|s| s.iter()).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The union of a few ordered index sets, in order, each slot once: a merge that keeps
/// one cursor per set (filters name a few keys, so a linear pick of the smallest head is
/// cheapest).
struct MergedSets<'a> {
    heads: Vec<std::iter::Peekable<SlotSetIter<'a, u64>>>,
}

impl<'a> MergedSets<'a> {
    fn new(sets: &[&'a SlotSet<u64>], after: Option<u64>) -> Self {
        let start = |s: &'a SlotSet<u64>| match after {
            Some(a) => s.keyed_after(a),
            None => s.keyed(),
        };
        Self { heads: sets.iter().map(|s| start(s).peekable()).collect() }
    }
}

impl Iterator for MergedSets<'_> {
    type Item = (u64, Slot);

    fn next(&mut self) -> Option<(u64, Slot)> {
        let smallest = self.heads.iter_mut().filter_map(|h| h.peek().copied()).min()?;
        for head in &mut self.heads {
            if head.peek() == Some(&smallest) {
                head.next();
            }
        }
        Some(smallest)
    }
}

pub(super) fn finish_page<T>(items: Vec<T>, more: bool, token: impl Fn(&T) -> String) -> Page<T> {
    let next_token = if more { items.last().map(token) } else { None };
    Page { items, next_token }
}
