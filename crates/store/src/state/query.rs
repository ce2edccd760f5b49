//! SPIRE's list and count queries over entries and agents: candidates from the narrowest
//! index that applies (SPIFFE ID, parent ID, selectors or federated trust domains under
//! their match mode), confirmed against the filter, then cut into pages by id.

use std::sync::Arc;

use ward_core::{AttestedNode, RegistrationEntry, SelectorMatch, SelectorSet};

use super::{ById, State};
use crate::index::{HashIndex, Slot, key_hash};
use crate::query::{AgentFilter, EntryFilter, Page, PageRequest, SelectorFilter, agent_token};

impl State {
    /// Candidate entries for a filter, from the narrowest index that applies; `None` when no
    /// index applies and the caller must walk all entries.
    pub(super) fn entry_candidates(&self, f: &EntryFilter) -> Option<Vec<Slot>> {
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

    pub(super) fn selector_candidates(
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

/// Candidate slots for a set of key hashes under a match mode: the smallest key's set when
/// every key must be present (exact, superset), the union otherwise (subset, any). `None`
/// when the index cannot narrow the search: a superset of nothing, or, when records may
/// have no keys at all (`may_be_empty`), subset and exact-empty, which such records match.
pub(super) fn candidates_by_mode(
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

pub(super) fn finish_page<T>(items: Vec<T>, more: bool, token: impl Fn(&T) -> String) -> Page<T> {
    let next_token = if more { items.last().map(token) } else { None };
    Page { items, next_token }
}
