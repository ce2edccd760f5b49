//! A brute-force model of the store: plain maps, linear scans, and the authorized-entries
//! rule written as the spec states it. Shared by the property and crash tests, with a few
//! helpers for opening stores.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ward_core::{
    AgentId, AttestedNode, Bundle, EntryId, FederationRelationship, JoinTokenHash,
    RegistrationEntry, SelectorMatch, SpiffeId, StoredJoinToken, TrustDomain,
};
use ward_store::{
    AgentAttestation, AgentFilter, BundleDeleteMode, Command, ConsumedToken, EntryFilter,
    FederationUpdate, ItemError, Outcome, Page, PageRequest, Store,
};

#[derive(Clone, Debug)]
pub struct Model {
    pub td: TrustDomain,
    pub server: SpiffeId,
    pub entries: BTreeMap<EntryId, RegistrationEntry>,
    /// Creation number of every entry ever created (entries list in this order).
    pub entry_numbers: BTreeMap<EntryId, u64>,
    pub last_entry_number: u64,
    pub agents: BTreeMap<AgentId, AttestedNode>,
    pub tokens: BTreeMap<JoinTokenHash, StoredJoinToken>,
    pub bundles: BTreeMap<TrustDomain, Bundle>,
    /// Trust domains of `bundles` in creation order (how they are listed).
    pub bundle_order: Vec<TrustDomain>,
    /// Stored without their `trust_domain_bundle` (that lives in `bundles`).
    pub federations: BTreeMap<TrustDomain, FederationRelationship>,
    /// Trust domains of `federations` in creation order.
    pub federation_order: Vec<TrustDomain>,
    pub revision: u64,
    /// Every join token value and trust domain a command named, so that absent records are
    /// checked too.
    pub seen_tokens: BTreeSet<JoinTokenHash>,
    pub seen_tds: BTreeSet<TrustDomain>,
    /// What the change feed must name for the last command that bumped the revision.
    pub last_change: ChangeSets,
    /// Bundles the current command wrote, changed or not (the feed names them).
    pub written_bundles: BTreeSet<TrustDomain>,
}

/// The records a change-feed record names, as sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSets {
    pub entries: BTreeSet<EntryId>,
    pub agents: BTreeSet<AgentId>,
    pub bundles: BTreeSet<TrustDomain>,
}

impl ChangeSets {
    pub fn of(c: &ward_store::Change) -> Self {
        Self {
            entries: c.entries.iter().cloned().collect(),
            agents: c.agents.iter().cloned().collect(),
            bundles: c.bundles.iter().cloned().collect(),
        }
    }
}

/// Keys whose value differs between two maps (added, removed or changed).
fn differing<K: Ord + Clone, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> BTreeSet<K> {
    a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
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
            bundle_order: Vec::new(),
            entry_numbers: BTreeMap::new(),
            last_entry_number: 0,
            federations: BTreeMap::new(),
            federation_order: Vec::new(),
            revision: 0,
            seen_tokens: BTreeSet::new(),
            seen_tds: BTreeSet::new(),
            last_change: ChangeSets::default(),
            written_bundles: BTreeSet::new(),
        }
    }

    fn federated_bundles(&self, tds: &[TrustDomain]) -> Result<(), ItemError> {
        for td in tds {
            if !self.bundles.contains_key(td) {
                return Err(ItemError::FederatedBundleMissing(td.clone()));
            }
        }
        Ok(())
    }

    fn create(&mut self, e: &RegistrationEntry) -> Result<Arc<RegistrationEntry>, ItemError> {
        e.validate(&self.td).map_err(ItemError::InvalidEntry)?;
        if let Some(o) = self.entries.values().find(|o| {
            o.spiffe_id == e.spiffe_id && o.parent_id == e.parent_id && o.selectors == e.selectors
        }) {
            return Err(ItemError::EntryExists(Arc::new(o.clone())));
        }
        if self.entries.contains_key(&e.id) {
            return Err(ItemError::EntryIdTaken(e.id.clone()));
        }
        self.federated_bundles(&e.federates_with)?;
        let mut e = e.clone();
        e.revision_number = 0;
        self.last_entry_number += 1;
        self.entry_numbers.insert(e.id.clone(), self.last_entry_number);
        self.entries.insert(e.id.clone(), e.clone());
        Ok(Arc::new(e))
    }

    /// Applies `cmd`; returns the outcome the store must report.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        self.remember(cmd);
        let before = self.fingerprint();
        let old = (self.entries.clone(), self.agents.clone(), self.bundles.clone());
        self.written_bundles.clear();
        let out = self.apply_inner(cmd);
        if self.fingerprint() != before || self.mutated_anyway(cmd, &out) {
            self.revision += 1;
            let mut agents = differing(&old.1, &self.agents);
            // A successful agent command rewrites the record even when it stays equal.
            if let (
                Command::AttestAgent(AgentAttestation { id, .. })
                | Command::AttestAgentFirstUse(AgentAttestation { id, .. })
                | Command::BanAgent(id)
                | Command::RenewAgent { id, .. }
                | Command::ActivateAgentSerial { id, .. },
                Outcome::Agent(Ok(_)),
            ) = (cmd, &out)
            {
                agents.insert(id.clone());
            }
            self.last_change = ChangeSets {
                entries: differing(&old.0, &self.entries),
                agents,
                bundles: differing(&old.2, &self.bundles)
                    .union(&self.written_bundles)
                    .cloned()
                    .collect(),
            };
        }
        out
    }

    /// Writes that leave the fingerprint equal still count as mutations in the store (e.g.
    /// re-banning a banned agent rewrites its record).
    fn mutated_anyway(&self, cmd: &Command, out: &Outcome) -> bool {
        match (cmd, out) {
            (
                Command::BanAgent(_) | Command::AttestAgent(_) | Command::AttestAgentFirstUse(_),
                Outcome::Agent(Ok(_)),
            ) => true,
            (Command::SetBundles(b), _) => !b.is_empty(),
            (Command::CreateBundles(_) | Command::UpdateBundles(_), Outcome::Bundles(r)) => {
                r.iter().any(Result::is_ok)
            }
            (Command::UpdateEntries(_), Outcome::Entries(r)) => r.iter().any(Result::is_ok),
            (
                Command::RenewAgent { .. } | Command::ActivateAgentSerial { .. },
                Outcome::Agent(Ok(_)),
            ) => true,
            (Command::UpdateFederationRelationships(_), Outcome::Federations(r)) => {
                r.iter().any(Result::is_ok)
            }
            _ => false,
        }
    }

    fn fingerprint(&self) -> String {
        format!(
            "{:?}{:?}{:?}{:?}{:?}",
            self.entries, self.agents, self.tokens, self.bundles, self.federations
        )
    }

    fn remember(&mut self, cmd: &Command) {
        let tds: Vec<TrustDomain> = match cmd {
            Command::CreateJoinToken { token, .. } => {
                self.seen_tokens.insert(token.hash);
                vec![]
            }
            Command::ConsumeJoinToken { hash, .. } => {
                self.seen_tokens.insert(*hash);
                vec![]
            }
            Command::SetBundles(bs) | Command::CreateBundles(bs) => {
                bs.iter().map(|b| b.trust_domain.clone()).collect()
            }
            Command::UpdateBundles(us) => {
                us.iter().map(|u| u.bundle.trust_domain.clone()).collect()
            }
            Command::DeleteBundles { trust_domains, .. }
            | Command::DeleteFederationRelationships(trust_domains) => trust_domains.clone(),
            Command::AppendBundle { trust_domain, .. }
            | Command::TaintX509Authority { trust_domain, .. }
            | Command::RevokeX509Authority { trust_domain, .. }
            | Command::TaintJwtAuthority { trust_domain, .. }
            | Command::RevokeJwtAuthority { trust_domain, .. }
            | Command::PruneBundleAuthorities { trust_domain, .. } => vec![trust_domain.clone()],
            Command::CreateFederationRelationships(fs) => {
                fs.iter().map(|f| f.trust_domain.clone()).collect()
            }
            Command::UpdateFederationRelationships(us) => {
                us.iter().map(|u| u.relationship.trust_domain.clone()).collect()
            }
            _ => vec![],
        };
        self.seen_tds.extend(tds);
    }

    /// Stores a whole bundle as given; a new one goes last in the listing order.
    fn set_bundle(&mut self, b: &Bundle) -> Bundle {
        self.written_bundles.insert(b.trust_domain.clone());
        if self.bundles.insert(b.trust_domain.clone(), b.clone()).is_none() {
            self.bundle_order.push(b.trust_domain.clone());
        }
        b.clone()
    }

    fn remove_bundle(&mut self, td: &TrustDomain) -> Option<Bundle> {
        self.bundle_order.retain(|t| t != td);
        self.bundles.remove(td)
    }

    /// A stored relationship as reads report it: with its trust domain's bundle.
    pub fn joined(&self, f: &FederationRelationship) -> FederationRelationship {
        FederationRelationship {
            trust_domain_bundle: self.bundles.get(&f.trust_domain).cloned(),
            ..f.clone()
        }
    }

    /// Checks a relationship, stores the bundle it carries and the relationship without
    /// it; returns the bundle it carried.
    fn federation_checked(
        &mut self,
        f: &FederationRelationship,
    ) -> Result<Option<Bundle>, ItemError> {
        if f.bundle_endpoint_url.is_empty() {
            return Err(ItemError::Invalid("bundle endpoint URL is required".into()));
        }
        if f.trust_domain == self.td {
            return Err(ItemError::Invalid(
                "unable to create federation relationship for the server's own trust domain".into(),
            ));
        }
        if f.trust_domain_bundle.as_ref().is_some_and(|b| b.trust_domain != f.trust_domain) {
            return Err(ItemError::Invalid(
                "trust domain bundle is for another trust domain".into(),
            ));
        }
        let mut f = f.clone();
        let given = f.trust_domain_bundle.take();
        if let Some(b) = &given {
            self.set_bundle(b);
        }
        if self.federations.insert(f.trust_domain.clone(), f.clone()).is_none() {
            self.federation_order.push(f.trust_domain.clone());
        }
        Ok(given)
    }

    /// Created: reported with the bundle it was given.
    fn create_federation(
        &mut self,
        f: &FederationRelationship,
    ) -> Result<Arc<FederationRelationship>, ItemError> {
        if self.federations.contains_key(&f.trust_domain) {
            return Err(ItemError::FederationExists(f.trust_domain.clone()));
        }
        let given = self.federation_checked(f)?;
        Ok(Arc::new(FederationRelationship { trust_domain_bundle: given, ..f.clone() }))
    }

    /// Updated: reported with the trust domain's bundle after the update.
    fn update_federation(
        &mut self,
        u: &FederationUpdate,
    ) -> Result<Arc<FederationRelationship>, ItemError> {
        let td = &u.relationship.trust_domain;
        let Some(mut f) = self.federations.get(td).cloned() else {
            return Err(ItemError::FederationNotFound(td.clone()));
        };
        if u.mask.bundle_endpoint_url {
            f.bundle_endpoint_url = u.relationship.bundle_endpoint_url.clone();
        }
        if u.mask.profile {
            f.profile = u.relationship.profile.clone();
        }
        if u.mask.trust_domain_bundle {
            f.trust_domain_bundle = u.relationship.trust_domain_bundle.clone();
        }
        self.federation_checked(&f)?;
        let stored = self.federations[td].clone();
        Ok(Arc::new(self.joined(&stored)))
    }

    /// Taints every authority of `td`'s bundle that `pick` (X.509 or JWT list) selects.
    fn taint(
        &mut self,
        td: &TrustDomain,
        pick: impl Fn(&mut Bundle) -> Vec<&mut bool>,
    ) -> Result<Arc<Bundle>, ItemError> {
        let mut b = self.bundles.get(td).cloned().ok_or(ItemError::BundleNotFound(td.clone()))?;
        let flags = pick(&mut b);
        if flags.is_empty() {
            return Err(ItemError::AuthorityNotFound(td.clone()));
        }
        if flags.iter().any(|t| **t) {
            return Err(ItemError::Invalid("authority is already tainted".into()));
        }
        for f in flags {
            *f = true;
        }
        b.sequence_number = b.sequence_number.saturating_add(1);
        self.bundles.insert(td.clone(), b.clone());
        Ok(Arc::new(b))
    }

    /// Removes every authority `is` selects; all of them must be tainted.
    fn revoke<T: Clone>(
        &mut self,
        td: &TrustDomain,
        list: impl Fn(&mut Bundle) -> &mut Vec<T>,
        is: impl Fn(&T) -> bool,
        tainted: impl Fn(&T) -> bool,
    ) -> Result<Arc<Bundle>, ItemError> {
        let mut b = self.bundles.get(td).cloned().ok_or(ItemError::BundleNotFound(td.clone()))?;
        let items = list(&mut b);
        let hits: Vec<T> = items.iter().filter(|a| is(a)).cloned().collect();
        if hits.is_empty() {
            return Err(ItemError::AuthorityNotFound(td.clone()));
        }
        if !hits.iter().all(&tainted) {
            return Err(ItemError::AuthorityNotTainted);
        }
        items.retain(|a| !is(a));
        b.sequence_number = b.sequence_number.saturating_add(1);
        self.bundles.insert(td.clone(), b.clone());
        Ok(Arc::new(b))
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
                        u.patch.validate(&self.td).map_err(ItemError::InvalidEntry)?;
                        let Some(old) = self.entries.get(&u.id).cloned() else {
                            return Err(ItemError::EntryNotFound(u.id.clone()));
                        };
                        let mut e = old.clone();
                        e.apply_patch(&u.patch);
                        e.check_store_svid().map_err(ItemError::InvalidEntry)?;
                        if let Some(tds) = &u.patch.federates_with {
                            self.federated_bundles(tds)?;
                        }
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
                if self.tokens.contains_key(&token.hash) {
                    return Err(ItemError::TokenExists);
                }
                let created = match entry {
                    Some(e) => Some(self.create(e)?),
                    None => None,
                };
                self.tokens.insert(token.hash, token.clone());
                Ok(created)
            })(
            )),
            Command::ConsumeJoinToken { hash, now } => {
                Outcome::JoinTokenConsumed(match self.tokens.remove(hash) {
                    Some(t) => {
                        Ok(ConsumedToken { expires_at: t.expires_at, expired: t.expires_at < *now })
                    }
                    None => Err(ItemError::TokenNotFound),
                })
            }
            Command::AttestAgentFirstUse(a) if self.agents.contains_key(&a.id) => {
                Outcome::Agent(Err(ItemError::AgentAttestedBefore(a.id.clone())))
            }
            Command::AttestAgent(a) | Command::AttestAgentFirstUse(a) => Outcome::Agent((|| {
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
            })(
            )),
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
            Command::SetBundles(bs) => {
                Outcome::Bundles(bs.iter().map(|b| Ok(Arc::new(self.set_bundle(b)))).collect())
            }
            Command::CreateBundles(bs) => Outcome::Bundles(
                bs.iter()
                    .map(|b| {
                        if self.bundles.contains_key(&b.trust_domain) {
                            return Err(ItemError::BundleExists(b.trust_domain.clone()));
                        }
                        Ok(Arc::new(self.set_bundle(b)))
                    })
                    .collect(),
            ),
            Command::UpdateBundles(us) => Outcome::Bundles(
                us.iter()
                    .map(|u| {
                        let td = &u.bundle.trust_domain;
                        let Some(mut b) = self.bundles.get(td).cloned() else {
                            return Err(ItemError::BundleNotFound(td.clone()));
                        };
                        if u.mask.x509_authorities {
                            b.x509_authorities = u.bundle.x509_authorities.clone();
                        }
                        if u.mask.jwt_authorities {
                            b.jwt_authorities = u.bundle.jwt_authorities.clone();
                        }
                        if u.mask.refresh_hint {
                            b.refresh_hint = u.bundle.refresh_hint;
                        }
                        if u.mask.sequence_number {
                            b.sequence_number = u.bundle.sequence_number;
                        }
                        Ok(Arc::new(self.set_bundle(&b)))
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
                                }
                            }
                        }
                        Ok(Arc::new(self.remove_bundle(td).unwrap()))
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
            Command::RenewAgent { id, new_serial, new_expires_at } => {
                Outcome::Agent(match self.agents.get_mut(id) {
                    None => Err(ItemError::AgentNotFound(id.clone())),
                    Some(n) if n.serial.is_empty() => Err(ItemError::AgentBanned(id.clone())),
                    Some(_) if new_serial.is_empty() => {
                        Err(ItemError::Invalid("new serial is required".into()))
                    }
                    Some(n) => {
                        n.new_serial = new_serial.clone();
                        n.new_expires_at = *new_expires_at;
                        Ok(Arc::new(n.clone()))
                    }
                })
            }
            Command::ActivateAgentSerial { id, serial } => {
                Outcome::Agent(match self.agents.get_mut(id) {
                    None => Err(ItemError::AgentNotFound(id.clone())),
                    Some(n) if n.serial.is_empty() => Err(ItemError::AgentBanned(id.clone())),
                    Some(n) if n.new_serial.is_empty() || &n.new_serial != serial => {
                        Err(ItemError::SerialMismatch)
                    }
                    Some(n) => {
                        n.serial = serial.clone();
                        n.expires_at = n.new_expires_at;
                        n.new_serial = String::new();
                        n.new_expires_at = 0;
                        Ok(Arc::new(n.clone()))
                    }
                })
            }
            Command::AppendBundle { trust_domain, x509_authorities, jwt_authorities } => {
                // SPIRE: a missing bundle is created as given (sequence 0); otherwise what
                // the bundle lacks is added (taint not compared) and the sequence goes up.
                let Some(old) = self.bundles.get(trust_domain).cloned() else {
                    let b = Bundle {
                        x509_authorities: x509_authorities.clone(),
                        jwt_authorities: jwt_authorities.clone(),
                        ..Bundle::new(trust_domain.clone())
                    };
                    return Outcome::Bundles(vec![Ok(Arc::new(self.set_bundle(&b)))]);
                };
                let mut b = old.clone();
                let mut added = false;
                for x in x509_authorities {
                    if old.x509_authorities.iter().all(|o| o.der != x.der) {
                        b.x509_authorities.push(x.clone());
                        added = true;
                    }
                }
                for j in jwt_authorities {
                    let same = |o: &ward_core::JwtAuthority| {
                        o.public_key_der == j.public_key_der
                            && o.key_id == j.key_id
                            && o.expires_at == j.expires_at
                    };
                    if !old.jwt_authorities.iter().any(same) {
                        b.jwt_authorities.push(j.clone());
                        added = true;
                    }
                }
                if added {
                    b.sequence_number = b.sequence_number.saturating_add(1);
                    self.set_bundle(&b);
                }
                Outcome::Bundles(vec![Ok(Arc::new(b))])
            }
            Command::TaintX509Authority { trust_domain, der } => {
                Outcome::Bundles(vec![self.taint(trust_domain, |b| {
                    b.x509_authorities
                        .iter_mut()
                        .filter(|a| &a.der == der)
                        .map(|a| &mut a.tainted)
                        .collect()
                })])
            }
            Command::TaintJwtAuthority { trust_domain, key_id } => {
                Outcome::Bundles(vec![self.taint(trust_domain, |b| {
                    b.jwt_authorities
                        .iter_mut()
                        .filter(|a| &a.key_id == key_id)
                        .map(|a| &mut a.tainted)
                        .collect()
                })])
            }
            Command::RevokeX509Authority { trust_domain, der } => {
                Outcome::Bundles(vec![self.revoke(
                    trust_domain,
                    |b| &mut b.x509_authorities,
                    |a| &a.der == der,
                    |a| a.tainted,
                )])
            }
            Command::RevokeJwtAuthority { trust_domain, key_id } => {
                Outcome::Bundles(vec![self.revoke(
                    trust_domain,
                    |b| &mut b.jwt_authorities,
                    |a| &a.key_id == key_id,
                    |a| a.tainted,
                )])
            }
            Command::PruneBundleAuthorities { trust_domain, x509_ders, jwt_key_ids } => {
                Outcome::Bundles(vec![match self.bundles.get(trust_domain).cloned() {
                    None => Err(ItemError::BundleNotFound(trust_domain.clone())),
                    Some(b) => {
                        let x509: Vec<_> = b
                            .x509_authorities
                            .iter()
                            .filter(|a| !x509_ders.contains(&a.der))
                            .cloned()
                            .collect();
                        let jwt: Vec<_> = b
                            .jwt_authorities
                            .iter()
                            .filter(|a| !jwt_key_ids.contains(&a.key_id))
                            .cloned()
                            .collect();
                        // SPIRE halts rather than leave a bundle without X.509 or JWT
                        // authorities.
                        let halt = (x509.is_empty() && !b.x509_authorities.is_empty())
                            || (jwt.is_empty() && !b.jwt_authorities.is_empty());
                        let same = x509.len() == b.x509_authorities.len()
                            && jwt.len() == b.jwt_authorities.len();
                        if halt || same {
                            Ok(Arc::new(b))
                        } else {
                            let b = Bundle {
                                x509_authorities: x509,
                                jwt_authorities: jwt,
                                sequence_number: b.sequence_number.saturating_add(1),
                                ..b
                            };
                            self.bundles.insert(trust_domain.clone(), b.clone());
                            Ok(Arc::new(b))
                        }
                    }
                }])
            }
            Command::CreateFederationRelationships(fs) => {
                Outcome::Federations(fs.iter().map(|f| self.create_federation(f)).collect())
            }
            Command::UpdateFederationRelationships(us) => {
                Outcome::Federations(us.iter().map(|u| self.update_federation(u)).collect())
            }
            Command::DeleteFederationRelationships(tds) => Outcome::Federations(
                tds.iter()
                    .map(|td| {
                        self.federation_order.retain(|t| t != td);
                        self.federations
                            .remove(td)
                            .map(Arc::new)
                            .ok_or_else(|| ItemError::FederationNotFound(td.clone()))
                    })
                    .collect(),
            ),
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
        if f.federates_with.as_ref().is_some_and(|ff| {
            // SPIRE: an entry that federates with nothing is in no subset.
            let empty_subset =
                ff.match_mode == SelectorMatch::Subset && e.federates_with.is_empty();
            empty_subset || !set_match(&e.federates_with, &ff.trust_domains, ff.match_mode)
        }) {
            return false;
        }
        if f.hint.as_ref().is_some_and(|h| h != &e.hint) {
            return false;
        }
        !f.downstream_only || e.downstream
    }

    pub fn list_entries(&self, f: &EntryFilter) -> Vec<RegistrationEntry> {
        self.entries_in_order().into_iter().filter(|e| self.entry_matches(f, e)).cloned().collect()
    }

    /// The entries in creation order, as ListEntries lists them.
    pub fn entries_in_order(&self) -> Vec<&RegistrationEntry> {
        let mut all: Vec<&RegistrationEntry> = self.entries.values().collect();
        all.sort_by_key(|e| self.entry_numbers[&e.id]);
        all
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

/// Every page of a ListEntries walk, concatenated; checks page sizes and tokens: as
/// SPIRE's, every page with entries has a token, only the first empty page ends the walk,
/// and only the last page with entries may be short.
/// Opens the store in `dir` for trust domain `example.org`, flushing only when asked.
pub fn open_unflushed(dir: &std::path::Path) -> Store {
    let mut config = ward_store::StoreConfig::new(TrustDomain::new("example.org").unwrap());
    config.flush_every_ms = None;
    Store::open(dir, config).unwrap()
}

pub fn all_pages_entries(store: &Store, f: &EntryFilter, size: usize) -> Vec<RegistrationEntry> {
    let mut out = Vec::new();
    let mut token = None;
    let mut short = false;
    for _ in 0..10_000 {
        let page = store.list_entries(f, &PageRequest { token: token.clone(), size });
        assert!(size == 0 || page.items.len() <= size);
        out.extend(page.items.iter().map(|e| RegistrationEntry::clone(e)));
        match page.next_token {
            Some(t) => {
                assert!(
                    size > 0 && !page.items.is_empty(),
                    "a token only on a paged, non-empty page"
                );
                assert!(!short, "a short page is the last with entries");
                short = page.items.len() < size;
                token = Some(t);
            }
            None => {
                assert!(size == 0 || page.items.is_empty(), "a paged walk ends on an empty page");
                return out;
            }
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

/// Every page of a walk over a list keyed by trust domain, concatenated; checks that
/// non-final pages are full.
pub fn all_pages<T>(fetch: impl Fn(&PageRequest) -> Page<T>, size: usize) -> Vec<T> {
    let mut out = Vec::new();
    let mut token = None;
    for _ in 0..10_000 {
        let page = fetch(&PageRequest { token: token.clone(), size });
        assert!(size == 0 || page.items.len() <= size, "page longer than {size}");
        let full = page.items.len() == size;
        out.extend(page.items);
        match page.next_token {
            Some(t) => {
                assert!(full, "a non-final page is full");
                token = Some(t);
            }
            None => return out,
        }
    }
    panic!("paging did not end");
}

/// Asserts that every stored record and the authorized entries of `agents` equal the
/// model's.
pub fn assert_same_state(store: &Store, model: &Model, agents: &[AgentId]) {
    let all = all_pages_entries(store, &EntryFilter::default(), 0);
    let want: Vec<RegistrationEntry> = model.entries_in_order().into_iter().cloned().collect();
    assert_eq!(all, want, "entries");
    let agents_all = all_pages_agents(store, &AgentFilter::default(), 0);
    let want_agents: Vec<AttestedNode> = model.agents.values().cloned().collect();
    assert_eq!(agents_all, want_agents, "agents");
    for a in agents {
        assert_eq!(store.agent(a).as_deref(), model.agents.get(a), "agent {a}");
    }
    for (t, tok) in &model.tokens {
        assert_eq!(store.join_token_by_hash(t).as_ref(), Some(tok));
    }
    for t in &model.seen_tokens {
        assert_eq!(store.join_token_by_hash(t), model.tokens.get(t).cloned(), "join token {t:?}");
    }
    let want_bundles: Vec<Bundle> =
        model.bundle_order.iter().map(|td| model.bundles[td].clone()).collect();
    let want_feds: Vec<FederationRelationship> =
        model.federation_order.iter().map(|td| model.joined(&model.federations[td])).collect();
    for size in [0, 1, 2] {
        let got: Vec<Bundle> = all_pages(|p| store.list_bundles(p), size)
            .into_iter()
            .map(|b| Bundle::clone(&b))
            .collect();
        assert_eq!(got, want_bundles, "ListBundles page {size}");
        let got: Vec<FederationRelationship> =
            all_pages(|p| store.list_federation_relationships(p), size)
                .into_iter()
                .map(|f| FederationRelationship::clone(&f))
                .collect();
        assert_eq!(got, want_feds, "ListFederationRelationships page {size}");
    }
    for td in model.seen_tds.iter().chain(model.bundles.keys()) {
        assert_eq!(store.bundle(td).as_deref(), model.bundles.get(td), "bundle {td}");
        assert_eq!(
            store.federation_relationship(td).as_deref(),
            model.federations.get(td).map(|f| model.joined(f)).as_ref(),
            "federation relationship {td}"
        );
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
