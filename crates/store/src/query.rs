//! Filter and page types for the list and count queries (SPIRE's ListEntries, CountEntries,
//! ListAgents, CountAgents).

use serde::{Deserialize, Serialize};
use ward_core::{
    AgentId, AttestedNode, RegistrationEntry, SelectorMatch, SelectorSet, SpiffeId, TrustDomain,
};

/// Selectors with a match mode (SPIRE's `SelectorMatch`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SelectorFilter {
    /// The requested selectors.
    pub selectors: SelectorSet,
    /// How they are compared with the record's.
    pub match_mode: SelectorMatch,
}

impl SelectorFilter {
    /// Whether a record with `selectors` passes.
    pub fn matches(&self, selectors: &SelectorSet) -> bool {
        self.match_mode.matches(selectors, &self.selectors)
    }
}

/// Trust domains with a match mode (SPIRE's `FederatesWithMatch`), compared with an entry's
/// `federates_with` set as selectors are.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FederatesWithFilter {
    /// The requested trust domains.
    pub trust_domains: Vec<TrustDomain>,
    /// How they are compared with the entry's.
    pub match_mode: SelectorMatch,
}

impl FederatesWithFilter {
    /// Whether an entry federating with `tds` passes.
    pub fn matches(&self, tds: &[TrustDomain]) -> bool {
        let has = |set: &[TrustDomain], td: &TrustDomain| set.contains(td);
        let entry_in_req = || tds.iter().all(|td| has(&self.trust_domains, td));
        let req_in_entry = || self.trust_domains.iter().all(|td| has(tds, td));
        match self.match_mode {
            SelectorMatch::Exact => entry_in_req() && req_in_entry(),
            // As in SPIRE, an entry that federates with nothing is in no subset.
            SelectorMatch::Subset => !tds.is_empty() && entry_in_req(),
            SelectorMatch::Superset => req_in_entry(),
            SelectorMatch::Any => tds.iter().any(|td| has(&self.trust_domains, td)),
        }
    }
}

/// ListEntries / CountEntries filter; every set field must match (AND).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct EntryFilter {
    /// `by_spiffe_id`: exact SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// `by_parent_id`: exact parent ID.
    pub parent_id: Option<SpiffeId>,
    /// `by_selectors`.
    pub selectors: Option<SelectorFilter>,
    /// `by_federates_with`.
    pub federates_with: Option<FederatesWithFilter>,
    /// `by_hint`: exact hint.
    pub hint: Option<String>,
    /// `by_downstream = true`: only downstream entries. SPIRE treats `false` as no filter, so
    /// the server maps both absent and `false` to `false` here.
    pub downstream_only: bool,
}

impl EntryFilter {
    /// Whether `e` passes every set filter.
    pub fn matches(&self, e: &RegistrationEntry) -> bool {
        self.spiffe_id.as_ref().is_none_or(|id| &e.spiffe_id == id)
            && self.parent_id.as_ref().is_none_or(|id| &e.parent_id == id)
            && self.selectors.as_ref().is_none_or(|f| f.matches(&e.selectors))
            && self.federates_with.as_ref().is_none_or(|f| f.matches(&e.federates_with))
            && self.hint.as_ref().is_none_or(|h| &e.hint == h)
            && (!self.downstream_only || e.downstream)
    }
}

/// ListAgents / CountAgents filter; every set field must match (AND).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct AgentFilter {
    /// `by_attestation_type`.
    pub attestation_type: Option<String>,
    /// `by_selector_match`.
    pub selectors: Option<SelectorFilter>,
    /// `by_banned`.
    pub banned: Option<bool>,
    /// `by_can_reattest`.
    pub can_reattest: Option<bool>,
    /// `by_expires_before`: SVID NotAfter strictly before this Unix time.
    pub expires_before: Option<i64>,
}

impl AgentFilter {
    /// Whether `a` passes every set filter.
    pub fn matches(&self, a: &AttestedNode) -> bool {
        self.attestation_type.as_ref().is_none_or(|t| &a.attestation_type == t)
            && self.selectors.as_ref().is_none_or(|f| f.matches(&a.selectors))
            && self.banned.is_none_or(|b| a.is_banned() == b)
            && self.can_reattest.is_none_or(|b| a.can_reattest == b)
            && self.expires_before.is_none_or(|t| a.expires_at < t)
    }
}

/// Where a page starts and how long it is.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PageRequest {
    /// The `next_page_token` of the previous page; `None` or empty for the first page.
    pub token: Option<String>,
    /// Items per page; 0 means all.
    pub size: usize,
}

impl PageRequest {
    /// Everything, in one page.
    pub fn all() -> Self {
        Self::default()
    }

    /// The first page of `size` items.
    pub fn first(size: usize) -> Self {
        Self { token: None, size }
    }
}

/// One page of results. Tokens name the last item returned (an agent's id, or the creation
/// number of an entry, bundle or federation relationship), so they stay valid across
/// writes: a page resumes after that item whatever changed meanwhile.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The token for the next page; `None` when this page is the last. (ListEntries, as
    /// SPIRE's, hands out a token with every page that holds entries: its last page is
    /// the empty one.)
    pub next_token: Option<String>,
}

/// An agent id as a page token.
pub(crate) fn agent_token(id: &AgentId) -> String {
    id.0.as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federates_with_subset_needs_some_federation_as_in_spire() {
        let td = |s: &str| TrustDomain::new(s).unwrap();
        let f = |match_mode| FederatesWithFilter {
            trust_domains: vec![td("a.org"), td("b.org")],
            match_mode,
        };
        assert!(!f(SelectorMatch::Subset).matches(&[]));
        assert!(f(SelectorMatch::Subset).matches(&[td("a.org")]));
        assert!(!f(SelectorMatch::Subset).matches(&[td("a.org"), td("c.org")]));
        assert!(!f(SelectorMatch::Any).matches(&[]));
        assert!(f(SelectorMatch::Exact).matches(&[td("b.org"), td("a.org")]));
        assert!(f(SelectorMatch::Superset).matches(&[td("a.org"), td("b.org"), td("c.org")]));
    }
}
