//! A brute-force model of the store: plain maps, linear scans, and the authorized-entries
//! rule written as the spec states it. Shared by the property and crash tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ward_core::{
    AgentId, AttestedNode, Bundle, EntryId, JoinToken, RegistrationEntry, SelectorMatch, SpiffeId,
    TrustDomain,
};
use ward_store::{
    AgentFilter, BundleDeleteMode, Command, ConsumedToken, EntryFilter, ItemError, Outcome,
    PageRequest, Store,
};

#[derive(Clone, Debug)]
pub struct Model {
    pub td: TrustDomain,
    pub server: SpiffeId,
    pub entries: BTreeMap<EntryId, RegistrationEntry>,
    pub agents: BTreeMap<AgentId, AttestedNode>,
    pub tokens: BTreeMap<String, JoinToken>,
    pub bundles: BTreeMap<TrustDomain, Bundle>,
    pub revision: u64,
}

fn set_match<T: Ord + Clone>(entry: &[T], req: &[T], mode: SelectorMatch) -> bool {
    let e: BTreeSet<T> = entry.iter().cloned().collect();
    let r: BTreeSet<T> = req.iter().cloned().collect();
    match mode {
        SelectorMatch::Exact => e == r,
        SelectorMatch::Subset => e.is_subset(&r),
        SelectorMatch::Superset => r.is_subset(&e),
        SelectorMatch::Any => !e.is_disjoint(&r),
    }
}

impl Model {
    pub fn new(td: TrustDomain) -> Self {
        let server = td.spiffe_id("/spire/server").unwrap();
        Self {
            td,
            server,
            entries: BTreeMap::new(),
            agents: BTreeMap::new(),
            tokens: BTreeMap::new(),
            bundles: BTreeMap::new(),
            revision: 0,
        }
    }

    fn check(&self, e: &RegistrationEntry) -> Result<(), ItemError> {
        e.validate(&self.td).map_err(ItemError::InvalidEntry)?;
        if let Some(o) = self.entries.values().find(|o| {
            o.id != e.id
                && o.spiffe_id == e.spiffe_id
                && o.parent_id == e.parent_id
                && o.selectors == e.selectors
        }) {
            return Err(ItemError::EntryExists(Arc::new(o.clone())));
        }
        for td in &e.federates_with {
            if !self.bundles.contains_key(td) {
                return Err(ItemError::FederatedBundleMissing(td.clone()));
            }
        }
        Ok(())
    }

    fn create(&mut self, e: &RegistrationEntry) -> Result<Arc<RegistrationEntry>, ItemError> {
        if self.entries.contains_key(&e.id) {
            return Err(ItemError::EntryIdTaken(e.id.clone()));
        }
        self.check(e)?;
        let mut e = e.clone();
        e.revision_number = 0;
        self.entries.insert(e.id.clone(), e.clone());
        Ok(Arc::new(e))
    }

    /// Applies `cmd`; returns the outcome the store must report.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        let before = self.fingerprint();
        let out = self.apply_inner(cmd);
        if self.fingerprint() != before || self.mutated_anyway(cmd, &out) {
            self.revision += 1;
        }
        out
    }

    /// Writes that leave the fingerprint equal still count as mutations in the store (e.g.
    /// re-banning a banned agent rewrites its record).
    fn mutated_anyway(&self, cmd: &Command, out: &Outcome) -> bool {
        match (cmd, out) {
            (Command::BanAgent(_) | Command::AttestAgent(_), Outcome::Agent(Ok(_))) => true,
            (Command::SetBundles(b), _) => !b.is_empty(),
            (Command::UpdateEntries(_), Outcome::Entries(r)) => r.iter().any(Result::is_ok),
            _ => false,
        }
    }

    fn fingerprint(&self) -> String {
        format!("{:?}{:?}{:?}{:?}", self.entries, self.agents, self.tokens, self.bundles)
    }

    fn apply_inner(&mut self, cmd: &Command) -> Outcome {
        match cmd {
            Command::CreateEntries(items) => {
                Outcome::Entries(items.iter().map(|e| self.create(e)).collect())
            }
            Command::UpdateEntries(items) => Outcome::Entries(
                items
                    .iter()
                    .map(|u| {
                        let Some(old) = self.entries.get(&u.entry.id).cloned() else {
                            return Err(ItemError::EntryNotFound(u.entry.id.clone()));
                        };
                        let (m, s) = (&u.mask, &u.entry);
                        let mut e = old.clone();
                        if m.spiffe_id {
                            e.spiffe_id = s.spiffe_id.clone();
                        }
                        if m.parent_id {
                            e.parent_id = s.parent_id.clone();
                        }
                        if m.selectors {
                            e.selectors = s.selectors.clone();
                        }
                        if m.x509_svid_ttl {
                            e.x509_svid_ttl = s.x509_svid_ttl;
                        }
                        if m.jwt_svid_ttl {
                            e.jwt_svid_ttl = s.jwt_svid_ttl;
                        }
                        if m.federates_with {
                            e.federates_with = s.federates_with.clone();
                        }
                        if m.admin {
                            e.admin = s.admin;
                        }
                        if m.downstream {
                            e.downstream = s.downstream;
                        }
                        if m.expires_at {
                            e.expires_at = s.expires_at;
                        }
                        if m.dns_names {
                            e.dns_names = s.dns_names.clone();
                        }
                        if m.store_svid {
                            e.store_svid = s.store_svid;
                        }
                        if m.hint {
                            e.hint = s.hint.clone();
                        }
                        self.check(&e)?;
                        e.revision_number = old.revision_number + 1;
                        self.entries.insert(e.id.clone(), e.clone());
                        Ok(Arc::new(e))
                    })
                    .collect(),
            ),
            Command::DeleteEntries(ids) => Outcome::DeletedEntries(
                ids.iter()
                    .map(|id| {
                        self.entries
                            .remove(id)
                            .map(|_| id.clone())
                            .ok_or_else(|| ItemError::EntryNotFound(id.clone()))
                    })
                    .collect(),
            ),
            Command::CreateJoinToken { token, entry } => Outcome::JoinTokenCreated((|| {
                if token.token.is_empty() {
                    return Err(ItemError::Invalid("token value is required".into()));
                }
                if self.tokens.contains_key(&token.token) {
                    return Err(ItemError::TokenExists);
                }
                let created = match entry {
                    Some(e) => Some(self.create(e)?),
                    None => None,
                };
                self.tokens.insert(token.token.clone(), token.clone());
                Ok(created)
            })(
            )),
            Command::ConsumeJoinToken { token, now } => {
                Outcome::JoinTokenConsumed(match self.tokens.remove(token) {
                    Some(t) => {
                        Ok(ConsumedToken { expires_at: t.expires_at, expired: t.expires_at < *now })
                    }
                    None => Err(ItemError::TokenNotFound),
                })
            }
            Command::AttestAgent(a) => Outcome::Agent((|| {
                if self.agents.get(&a.id).is_some_and(|n| n.serial.is_empty()) {
                    return Err(ItemError::AgentBanned(a.id.clone()));
                }
                if a.serial.is_empty() {
                    return Err(ItemError::Invalid("serial is required".into()));
                }
                let n = AttestedNode {
                    id: a.id.clone(),
                    attestation_type: a.attestation_type.clone(),
                    serial: a.serial.clone(),
                    expires_at: a.expires_at,
                    new_serial: String::new(),
                    new_expires_at: 0,
                    selectors: a.selectors.clone(),
                    can_reattest: a.can_reattest,
                };
                self.agents.insert(a.id.clone(), n.clone());
                Ok(Arc::new(n))
            })()),
            Command::BanAgent(id) => Outcome::Agent(match self.agents.get_mut(id) {
                None => Err(ItemError::AgentNotFound(id.clone())),
                Some(n) => {
                    n.serial.clear();
                    n.new_serial.clear();
                    Ok(Arc::new(n.clone()))
                }
            }),
            Command::DeleteAgent(id) => Outcome::Agent(
                self.agents
                    .remove(id)
                    .map(Arc::new)
                    .ok_or_else(|| ItemError::AgentNotFound(id.clone())),
            ),
            Command::SetBundles(bs) => Outcome::Bundles(
                bs.iter()
                    .map(|b| {
                        let mut b = b.clone();
                        if let Some(old) = self.bundles.get(&b.trust_domain) {
                            b.sequence_number = b.sequence_number.max(old.sequence_number + 1);
                        }
                        self.bundles.insert(b.trust_domain.clone(), b.clone());
                        Ok(Arc::new(b))
                    })
                    .collect(),
            ),
            Command::DeleteBundles { trust_domains, mode } => Outcome::Bundles(
                trust_domains
                    .iter()
                    .map(|td| {
                        if !self.bundles.contains_key(td) {
                            return Err(ItemError::BundleNotFound(td.clone()));
                        }
                        let users: Vec<EntryId> = self
                            .entries
                            .values()
                            .filter(|e| e.federates_with.contains(td))
                            .map(|e| e.id.clone())
                            .collect();
                        match mode {
                            BundleDeleteMode::Restrict if !users.is_empty() => {
                                return Err(ItemError::BundleInUse(td.clone(), users.len()));
                            }
                            BundleDeleteMode::Restrict => {}
                            BundleDeleteMode::Delete => {
                                for id in &users {
                                    self.entries.remove(id);
                                }
                            }
                            BundleDeleteMode::Dissociate => {
                                for id in &users {
                                    let e = self.entries.get_mut(id).unwrap();
                                    e.federates_with.retain(|t| t != td);
                                    e.revision_number += 1;
                                }
                            }
                        }
                        Ok(Arc::new(self.bundles.remove(td).unwrap()))
                    })
                    .collect(),
            ),
            Command::PruneEntries { expires_before } => {
                let before = self.entries.len();
                self.entries.retain(|_, e| e.expires_at == 0 || e.expires_at >= *expires_before);
                Outcome::Pruned(before - self.entries.len())
            }
            Command::PruneJoinTokens { expires_before } => {
                let before = self.tokens.len();
                self.tokens.retain(|_, t| t.expires_at >= *expires_before);
                Outcome::Pruned(before - self.tokens.len())
            }
            Command::PruneAgents { expires_before, include_non_reattestable } => {
                let before = self.agents.len();
                self.agents.retain(|_, a| {
                    !(a.expires_at < *expires_before
                        && (a.can_reattest || *include_non_reattestable))
                });
                Outcome::Pruned(before - self.agents.len())
            }
            other => panic!("model does not cover {other:?}"),
        }
    }

    /// The spec's rule, by repeated full scans.
    pub fn authorized(&self, agent: &AgentId) -> Vec<EntryId> {
        let mut frontier: Vec<SpiffeId> = vec![agent.0.clone()];
        if let Some(node) = self.agents.get(agent) {
            for alias in self.entries.values() {
                if alias.parent_id == self.server
                    && alias.selectors.as_slice().iter().all(|s| node.selectors.contains(s))
                {
                    frontier.push(alias.spiffe_id.clone());
                }
            }
        }
        let mut visited: BTreeSet<SpiffeId> = BTreeSet::new();
        let mut out: BTreeSet<EntryId> = BTreeSet::new();
        while let Some(p) = frontier.pop() {
            if !visited.insert(p.clone()) {
                continue;
            }
            for e in self.entries.values() {
                if e.parent_id == p {
                    out.insert(e.id.clone());
                    frontier.push(e.spiffe_id.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    pub fn entry_matches(&self, f: &EntryFilter, e: &RegistrationEntry) -> bool {
        if f.spiffe_id.as_ref().is_some_and(|id| id != &e.spiffe_id) {
            return false;
        }
        if f.parent_id.as_ref().is_some_and(|id| id != &e.parent_id) {
            return false;
        }
        if f.selectors.as_ref().is_some_and(|sf| {
            !set_match(e.selectors.as_slice(), sf.selectors.as_slice(), sf.match_mode)
        }) {
            return false;
        }
        if f.federates_with
            .as_ref()
            .is_some_and(|ff| !set_match(&e.federates_with, &ff.trust_domains, ff.match_mode))
        {
            return false;
        }
        if f.hint.as_ref().is_some_and(|h| h != &e.hint) {
            return false;
        }
        !f.downstream_only || e.downstream
    }

    pub fn list_entries(&self, f: &EntryFilter) -> Vec<RegistrationEntry> {
        self.entries.values().filter(|e| self.entry_matches(f, e)).cloned().collect()
    }

    pub fn list_agents(&self, f: &AgentFilter) -> Vec<AttestedNode> {
        self.agents
            .values()
            .filter(|a| {
                f.attestation_type.as_ref().is_none_or(|t| t == &a.attestation_type)
                    && f.selectors.as_ref().is_none_or(|sf| {
                        set_match(a.selectors.as_slice(), sf.selectors.as_slice(), sf.match_mode)
                    })
                    && f.banned.is_none_or(|b| b == a.serial.is_empty())
                    && f.can_reattest.is_none_or(|b| b == a.can_reattest)
                    && f.expires_before.is_none_or(|t| a.expires_at < t)
            })
            .cloned()
            .collect()
    }
}

/// Every page of a ListEntries walk, concatenated; checks page sizes and tokens.
pub fn all_pages_entries(store: &Store, f: &EntryFilter, size: usize) -> Vec<RegistrationEntry> {
    let mut out = Vec::new();
    let mut token = None;
    for _ in 0..10_000 {
        let page = store.list_entries(f, &PageRequest { token: token.clone(), size });
        assert!(size == 0 || page.items.len() <= size);
        out.extend(page.items.iter().map(|e| RegistrationEntry::clone(e)));
        match page.next_token {
            Some(t) => {
                assert_eq!(page.items.len(), size, "a non-final page is full");
                token = Some(t);
            }
            None => return out,
        }
    }
    panic!("paging did not end");
}

/// Every page of a ListAgents walk, concatenated.
pub fn all_pages_agents(store: &Store, f: &AgentFilter, size: usize) -> Vec<AttestedNode> {
    let mut out = Vec::new();
    let mut token = None;
    for _ in 0..10_000 {
        let page = store.list_agents(f, &PageRequest { token: token.clone(), size });
        out.extend(page.items.iter().map(|a| AttestedNode::clone(a)));
        match page.next_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
    panic!("paging did not end");
}

/// Asserts that every stored record and the authorized entries of `agents` equal the
/// model's.
pub fn assert_same_state(store: &Store, model: &Model, agents: &[AgentId]) {
    let all = all_pages_entries(store, &EntryFilter::default(), 0);
    let want: Vec<RegistrationEntry> = model.entries.values().cloned().collect();
    assert_eq!(all, want, "entries");
    let agents_all = all_pages_agents(store, &AgentFilter::default(), 0);
    let want_agents: Vec<AttestedNode> = model.agents.values().cloned().collect();
    assert_eq!(agents_all, want_agents, "agents");
    for (t, tok) in &model.tokens {
        assert_eq!(store.join_token(t).as_ref(), Some(tok));
    }
    for (td, b) in &model.bundles {
        assert_eq!(store.bundle(td).as_deref(), Some(b));
    }
    assert_eq!(store.revision(), model.revision, "revision");
    for a in agents {
        let got: Vec<EntryId> =
            store.authorized_entries_uncached(a).iter().map(|e| e.id.clone()).collect();
        assert_eq!(got, model.authorized(a), "uncached authorized entries of {a}");
        let cached: Vec<EntryId> =
            store.authorized_entries(a).iter().map(|e| e.id.clone()).collect();
        assert_eq!(cached, got, "cached authorized entries of {a}");
    }
}
