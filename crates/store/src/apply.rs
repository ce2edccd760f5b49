//! The deterministic state transition: one [`Command`] against the in-memory state, producing
//! the sled batch that makes it durable and the set of agents whose cached authorized entries
//! it invalidates.

use std::sync::Arc;

use ward_core::{
    AgentId, AttestedNode, Bundle, EntryId, FederationRelationship, JoinTokenHash, JwtAuthority,
    RegistrationEntry, StoredJoinToken, TrustDomain, X509Authority,
};

use crate::batch::WriteBatch;
use crate::command::{
    AgentAttestation, BundleDeleteMode, Command, ConsumedToken, EntryUpdate, FederationUpdate,
    ItemError, Outcome,
};
use crate::error::StoreError;
use crate::feed::FeedTail;
use crate::record::{self, Change};
use crate::state::{InvalidationSet, State};

/// One command's work in progress.
///
/// Memory changes as the command runs (later items see earlier ones), so every change to a
/// record is logged in `undo` with the record as it was; when the command cannot be made
/// durable, [`roll_back`] puts the image back.
pub(crate) struct Txn<'a> {
    pub(crate) state: &'a mut State,
    pub(crate) batch: WriteBatch,
    pub(crate) change: Change,
    pub(crate) mutated: bool,
    /// Whether to compute the agents whose cached results change (false when nothing is
    /// cached, e.g. during a bulk load).
    track: bool,
    pub(crate) touched: InvalidationSet,
    /// The records changed so far, as they were before, oldest change first.
    pub(crate) undo: Vec<Undo>,
}

/// A record as it was before a command changed it (`None`: it did not exist).
pub(crate) enum Undo {
    /// With the entry's creation number.
    Entry(EntryId, Option<(u64, Arc<RegistrationEntry>)>),
    Agent(AgentId, Option<Arc<AttestedNode>>),
    Token(JoinTokenHash, Option<StoredJoinToken>),
    /// With the bundle's creation number.
    Bundle(TrustDomain, Option<(u64, Arc<Bundle>)>),
    /// With the relationship's creation number.
    Federation(TrustDomain, Option<(u64, Arc<FederationRelationship>)>),
    /// A request id remembered at `index`, and the one that evicted.
    RequestId {
        index: u64,
        id: u128,
        evicted: Option<(u64, u128)>,
    },
    /// The change feed's open run as it was before a new run opened.
    FeedTail(FeedTail),
    /// The change feed's open run before a change was added: its length and dirty flag.
    FeedAppend {
        len: usize,
        dirty: bool,
    },
}

/// Puts back every record in `undo`, newest change first, so the image is again what it was
/// before the command (slots may differ; nothing answers by slot order).
pub(crate) fn roll_back(state: &mut State, undo: Vec<Undo>) {
    for u in undo.into_iter().rev() {
        // A restored record takes the slot its removal freed, so these never fail.
        match u {
            Undo::Entry(id, Some((number, e))) => {
                state.remove_entry(&id);
                state.insert_new_entry(e, number);
            }
            Undo::Entry(id, None) => {
                state.remove_entry(&id);
            }
            Undo::Agent(_, Some(a)) => {
                state.put_agent(a);
            }
            Undo::Agent(id, None) => {
                state.remove_agent(&id);
            }
            Undo::Token(hash, Some(t)) => {
                state.tokens.insert(hash, t);
            }
            Undo::Token(hash, None) => {
                state.tokens.remove(&hash);
            }
            Undo::Bundle(td, Some((number, b))) => state.bundles.insert_numbered(td, b, number),
            Undo::Bundle(td, None) => {
                state.bundles.remove(&td);
            }
            Undo::Federation(td, Some((number, f))) => {
                state.federations.insert_numbered(td, f, number);
            }
            Undo::Federation(td, None) => {
                state.federations.remove(&td);
            }
            Undo::RequestId { index, id, evicted } => state.request_ids.forget(index, id, evicted),
            Undo::FeedTail(tail) => state.feed = tail,
            Undo::FeedAppend { len, dirty } => {
                state.feed.bytes.truncate(len);
                state.feed.dirty = dirty;
            }
        }
    }
    state.refreeze_dirty_groups();
}

type ItemResult<T> = Result<T, ItemError>;

impl<'a> Txn<'a> {
    /// A command's work on `state`; `track` computes the agents whose cached results
    /// change, listing at most `limit` of them.
    pub(crate) fn new(state: &'a mut State, track: bool, limit: usize) -> Self {
        Self {
            state,
            batch: WriteBatch::default(),
            change: Change::default(),
            mutated: false,
            track,
            touched: InvalidationSet::new(limit),
            undo: Vec::new(),
        }
    }

    // ----- primitive writes: memory (with its undo), batch, change feed, invalidation -----

    /// Stores an entry, creating or replacing it. A new entry gets the next creation number
    /// (kept under `m/entry-number`, so a number is never given twice); a replaced one keeps
    /// its own.
    fn put_entry(&mut self, e: RegistrationEntry) -> Result<Arc<RegistrationEntry>, StoreError> {
        let known = self.state.entry_number(&e.id);
        let number = known.unwrap_or_else(|| self.state.last_entry_number.saturating_add(1));
        let old = self.state.entry(&e.id).cloned();
        if let Some(old) = old.as_ref().filter(|_| self.track) {
            self.state.agents_affected_by(old, &mut self.touched);
        }
        let e = Arc::new(e);
        if self.state.put_entry(Arc::clone(&e)).is_none() {
            return Err(StoreError::Capacity);
        }
        self.undo.push(Undo::Entry(e.id.clone(), known.zip(old)));
        fault::point()?;
        // `m/entry-number` is written once per engine batch, with the other metadata, and
        // a numbered entry's run when the batch is written (see `crate::entry_runs`).
        if number == 0 {
            self.batch.insert(record::entry_key(&e.id), record::encode_numbered(&*e, 0)?);
        } else {
            self.state.unwritten.entry_changed(number);
        }
        if self.track {
            self.state.agents_affected_by(&e, &mut self.touched);
        }
        self.change.entries.push(e.id.clone());
        self.mutated = true;
        Ok(e)
    }

    fn remove_entry(&mut self, id: &EntryId) -> Option<Arc<RegistrationEntry>> {
        if let Some(old) = self.state.entry(id).filter(|_| self.track).cloned() {
            self.state.agents_affected_by(&old, &mut self.touched);
        }
        let number = self.state.entry_number(id);
        let old = self.state.remove_entry(id)?;
        self.undo.push(Undo::Entry(id.clone(), number.zip(Some(Arc::clone(&old)))));
        match number {
            Some(number) if number > 0 => self.state.unwritten.entry_changed(number),
            _ => self.batch.remove(record::entry_key(id)),
        }
        self.change.entries.push(id.clone());
        self.mutated = true;
        Some(old)
    }

    fn put_agent(&mut self, a: AttestedNode) -> Result<Arc<AttestedNode>, StoreError> {
        let old = self.state.agent(&a.id).cloned();
        let a = Arc::new(a);
        if !self.state.put_agent(Arc::clone(&a)) {
            return Err(StoreError::Capacity);
        }
        self.undo.push(Undo::Agent(a.id.clone(), old));
        fault::point()?;
        self.batch.insert(record::agent_key(&a.id), record::encode(&*a)?);
        self.touched.insert(&a.id);
        self.change.agents.push(a.id.clone());
        self.mutated = true;
        Ok(a)
    }

    fn remove_agent(&mut self, id: &AgentId) -> Option<Arc<AttestedNode>> {
        let old = self.state.remove_agent(id)?;
        self.undo.push(Undo::Agent(id.clone(), Some(Arc::clone(&old))));
        self.batch.remove(record::agent_key(id));
        self.touched.insert(id);
        self.change.agents.push(id.clone());
        self.mutated = true;
        Some(old)
    }

    /// Stores a bundle as given, creating or replacing it (a replaced bundle keeps its place
    /// in the creation order).
    fn put_bundle(&mut self, b: Bundle) -> Result<Arc<Bundle>, StoreError> {
        let td = b.trust_domain.clone();
        let old = numbered(self.state.bundles.number_of(&td), self.state.bundles.get(&td));
        let b = Arc::new(b);
        let number = self.state.bundles.insert(td.clone(), Arc::clone(&b));
        self.undo.push(Undo::Bundle(td.clone(), old));
        fault::point()?;
        self.batch.insert(record::bundle_key(&td), record::encode_numbered(&*b, number)?);
        self.change.bundles.push(td);
        self.mutated = true;
        Ok(b)
    }

    fn remove_bundle(&mut self, td: &TrustDomain) -> Option<Arc<Bundle>> {
        let number = self.state.bundles.number_of(td);
        let old = self.state.bundles.remove(td)?;
        self.undo.push(Undo::Bundle(td.clone(), numbered(number, Some(&old))));
        self.batch.remove(record::bundle_key(td));
        self.change.bundles.push(td.clone());
        self.mutated = true;
        Some(old)
    }

    fn put_token(&mut self, t: StoredJoinToken) -> Result<(), StoreError> {
        let bytes = record::encode(&t)?;
        let old = self.state.tokens.insert(t.hash, t.clone());
        self.undo.push(Undo::Token(t.hash, old));
        fault::point()?;
        self.batch.insert(record::token_key(&t.hash), bytes);
        self.mutated = true;
        Ok(())
    }

    fn remove_token(&mut self, hash: &JoinTokenHash) -> Option<StoredJoinToken> {
        let old = self.state.tokens.remove(hash)?;
        self.undo.push(Undo::Token(*hash, Some(old.clone())));
        self.batch.remove(record::token_key(hash));
        self.mutated = true;
        Some(old)
    }

    fn put_federation(
        &mut self,
        f: FederationRelationship,
    ) -> Result<Arc<FederationRelationship>, StoreError> {
        let td = f.trust_domain.clone();
        let old = numbered(self.state.federations.number_of(&td), self.state.federations.get(&td));
        let f = Arc::new(f);
        let number = self.state.federations.insert(td.clone(), Arc::clone(&f));
        self.undo.push(Undo::Federation(td.clone(), old));
        fault::point()?;
        self.batch.insert(record::federation_key(&td), record::encode_numbered(&*f, number)?);
        self.mutated = true;
        Ok(f)
    }

    fn remove_federation(&mut self, td: &TrustDomain) -> Option<Arc<FederationRelationship>> {
        let number = self.state.federations.number_of(td);
        let old = self.state.federations.remove(td)?;
        self.undo.push(Undo::Federation(td.clone(), numbered(number, Some(&old))));
        self.batch.remove(record::federation_key(td));
        self.mutated = true;
        Some(old)
    }

    // ----- commands -----

    pub(crate) fn run(&mut self, cmd: &Command) -> Result<Outcome, StoreError> {
        Ok(match cmd {
            Command::CreateEntries(items) => {
                let mut out = Vec::with_capacity(items.len());
                for e in items {
                    out.push(match self.check_create(e) {
                        Ok(e) => Ok(self.put_entry(e)?),
                        Err(err) => Err(err),
                    });
                }
                Outcome::Entries(out)
            }
            Command::UpdateEntries(items) => {
                let mut out = Vec::with_capacity(items.len());
                for u in items {
                    out.push(match self.check_update(u) {
                        Ok(e) => Ok(self.put_entry(e)?),
                        Err(err) => Err(err),
                    });
                }
                Outcome::Entries(out)
            }
            Command::DeleteEntries(ids) => Outcome::DeletedEntries(
                ids.iter()
                    .map(|id| {
                        self.remove_entry(id)
                            .map(|_| id.clone())
                            .ok_or_else(|| ItemError::EntryNotFound(id.clone()))
                    })
                    .collect(),
            ),
            Command::CreateJoinToken { token, entry } => {
                Outcome::JoinTokenCreated(self.create_token(token, entry.as_ref())?)
            }
            Command::ConsumeJoinToken { hash, now } => {
                Outcome::JoinTokenConsumed(match self.remove_token(hash) {
                    Some(t) => {
                        Ok(ConsumedToken { expires_at: t.expires_at, expired: t.expires_at < *now })
                    }
                    None => Err(ItemError::TokenNotFound),
                })
            }
            Command::AttestAgent(att) => Outcome::Agent(self.attest(att)?),
            Command::AttestAgentFirstUse(att) => {
                Outcome::Agent(if self.state.agent(&att.id).is_some() {
                    Err(ItemError::AgentAttestedBefore(att.id.clone()))
                } else {
                    self.attest(att)?
                })
            }
            Command::RenewAgent { id, new_serial, new_expires_at } => {
                Outcome::Agent(match self.live_agent(id) {
                    Err(e) => Err(e),
                    Ok(_) if new_serial.is_empty() => {
                        Err(ItemError::Invalid("new serial is required".into()))
                    }
                    Ok(mut a) => {
                        a.new_serial.clone_from(new_serial);
                        a.new_expires_at = *new_expires_at;
                        Ok(self.put_agent(a)?)
                    }
                })
            }
            Command::ActivateAgentSerial { id, serial } => {
                Outcome::Agent(match self.live_agent(id) {
                    Err(e) => Err(e),
                    Ok(a) if a.new_serial.is_empty() || &a.new_serial != serial => {
                        Err(ItemError::SerialMismatch)
                    }
                    Ok(mut a) => {
                        a.serial = std::mem::take(&mut a.new_serial);
                        a.expires_at = a.new_expires_at;
                        a.new_expires_at = 0;
                        Ok(self.put_agent(a)?)
                    }
                })
            }
            Command::BanAgent(id) => Outcome::Agent(match self.state.agent(id) {
                None => Err(ItemError::AgentNotFound(id.clone())),
                Some(a) => {
                    let mut a = AttestedNode::clone(a);
                    a.serial.clear();
                    a.new_serial.clear();
                    Ok(self.put_agent(a)?)
                }
            }),
            Command::DeleteAgent(id) => Outcome::Agent(
                self.remove_agent(id).ok_or_else(|| ItemError::AgentNotFound(id.clone())),
            ),
            Command::SetBundles(bundles) => {
                let mut out = Vec::with_capacity(bundles.len());
                for b in bundles {
                    out.push(Ok(self.put_bundle(b.clone())?));
                }
                Outcome::Bundles(out)
            }
            Command::CreateBundles(bundles) => {
                let mut out = Vec::with_capacity(bundles.len());
                for b in bundles {
                    out.push(if self.state.bundles.contains_key(&b.trust_domain) {
                        Err(ItemError::BundleExists(b.trust_domain.clone()))
                    } else {
                        Ok(self.put_bundle(b.clone())?)
                    });
                }
                Outcome::Bundles(out)
            }
            Command::UpdateBundles(updates) => {
                let mut out = Vec::with_capacity(updates.len());
                for u in updates {
                    let td = &u.bundle.trust_domain;
                    out.push(match self.state.bundles.get(td) {
                        None => Err(ItemError::BundleNotFound(td.clone())),
                        Some(old) => {
                            let merged = u.mask.merge(old, &u.bundle);
                            Ok(self.put_bundle(merged)?)
                        }
                    });
                }
                Outcome::Bundles(out)
            }
            Command::AppendBundle { trust_domain, x509_authorities, jwt_authorities } => {
                Outcome::Bundles(vec![Ok(self.append_bundle(
                    trust_domain,
                    x509_authorities,
                    jwt_authorities,
                )?)])
            }
            Command::DeleteBundles { trust_domains, mode } => {
                let mut out = Vec::with_capacity(trust_domains.len());
                for td in trust_domains {
                    out.push(self.delete_bundle(td, *mode)?);
                }
                Outcome::Bundles(out)
            }
            Command::TaintX509Authority { trust_domain, der } => {
                Outcome::Bundles(vec![self.edit_bundle(trust_domain, |b| {
                    let flags = b.x509_authorities.iter_mut().filter(|a| &a.der == der);
                    taint(flags.map(|a| &mut a.tainted).collect(), trust_domain)
                })?])
            }
            Command::RevokeX509Authority { trust_domain, der } => {
                Outcome::Bundles(vec![self.edit_bundle(trust_domain, |b| {
                    let list = &mut b.x509_authorities;
                    revoke(list, |a| &a.der == der, |a| a.tainted, trust_domain)
                })?])
            }
            Command::TaintJwtAuthority { trust_domain, key_id } => {
                Outcome::Bundles(vec![self.edit_bundle(trust_domain, |b| {
                    let flags = b.jwt_authorities.iter_mut().filter(|a| &a.key_id == key_id);
                    taint(flags.map(|a| &mut a.tainted).collect(), trust_domain)
                })?])
            }
            Command::RevokeJwtAuthority { trust_domain, key_id } => {
                Outcome::Bundles(vec![self.edit_bundle(trust_domain, |b| {
                    let list = &mut b.jwt_authorities;
                    revoke(list, |a| &a.key_id == key_id, |a| a.tainted, trust_domain)
                })?])
            }
            Command::PruneBundleAuthorities { trust_domain, x509_ders, jwt_key_ids } => {
                Outcome::Bundles(vec![self.prune_authorities(
                    trust_domain,
                    x509_ders,
                    jwt_key_ids,
                )?])
            }
            Command::CreateFederationRelationships(items) => {
                let mut out = Vec::with_capacity(items.len());
                for f in items {
                    out.push(self.create_federation(f)?);
                }
                Outcome::Federations(out)
            }
            Command::UpdateFederationRelationships(items) => {
                let mut out = Vec::with_capacity(items.len());
                for u in items {
                    out.push(self.update_federation(u)?);
                }
                Outcome::Federations(out)
            }
            Command::DeleteFederationRelationships(tds) => {
                let mut out = Vec::with_capacity(tds.len());
                for td in tds {
                    out.push(
                        self.remove_federation(td)
                            .ok_or_else(|| ItemError::FederationNotFound(td.clone())),
                    );
                }
                Outcome::Federations(out)
            }
            Command::PruneEntries { expires_before } => {
                let doomed: Vec<EntryId> = self
                    .state
                    .all_entries()
                    .filter(|e| e.expires_at != 0 && e.expires_at < *expires_before)
                    .map(|e| e.id.clone())
                    .collect();
                for id in &doomed {
                    self.remove_entry(id);
                }
                Outcome::Pruned(doomed.len())
            }
            Command::PruneJoinTokens { expires_before } => {
                let doomed: Vec<JoinTokenHash> = self
                    .state
                    .tokens
                    .values()
                    .filter(|t| t.expires_at < *expires_before)
                    .map(|t| t.hash)
                    .collect();
                for t in &doomed {
                    self.remove_token(t);
                }
                Outcome::Pruned(doomed.len())
            }
            Command::PruneAgents { expires_before, include_non_reattestable } => {
                let doomed: Vec<AgentId> = self
                    .state
                    .all_agents()
                    .filter(|a| {
                        a.expires_at < *expires_before
                            && (a.can_reattest || *include_non_reattestable)
                    })
                    .map(|a| a.id.clone())
                    .collect();
                for id in &doomed {
                    self.remove_agent(id);
                }
                Outcome::Pruned(doomed.len())
            }
        })
    }

    // ----- item checks: they read state only, so a refused item changes nothing -----

    /// Every trust domain in `tds` has a bundle.
    fn check_federated_bundles(&self, tds: &[TrustDomain]) -> ItemResult<()> {
        match tds.iter().find(|td| !self.state.bundles.contains_key(td)) {
            Some(td) => Err(ItemError::FederatedBundleMissing(td.clone())),
            None => Ok(()),
        }
    }

    /// SPIRE's create checks, in its order: the entry's rules, a similar entry (same SPIFFE
    /// ID, parent ID and selectors), the id in use, the federated bundles.
    fn check_create(&self, e: &RegistrationEntry) -> ItemResult<RegistrationEntry> {
        e.validate(&self.state.trust_domain).map_err(ItemError::InvalidEntry)?;
        if let Some(existing) = self.state.similar_entry(e) {
            return Err(ItemError::EntryExists(Arc::clone(existing)));
        }
        if self.state.entry(&e.id).is_some() {
            return Err(ItemError::EntryIdTaken(e.id.clone()));
        }
        if !self.state.has_room_for_entry() {
            return Err(ItemError::Invalid(StoreError::Capacity.to_string()));
        }
        self.check_federated_bundles(&e.federates_with)?;
        let mut e = e.clone();
        e.revision_number = 0;
        Ok(e)
    }

    /// SPIRE's update checks, in its order: the patched fields' rules, the entry exists, the
    /// selector types under `store_svid` on the patched entry, the federated bundles when the
    /// patch sets them. Unlike a create, an update may make the entry similar to another.
    fn check_update(&self, u: &EntryUpdate) -> ItemResult<RegistrationEntry> {
        u.patch.validate(&self.state.trust_domain).map_err(ItemError::InvalidEntry)?;
        let Some(old) = self.state.entry(&u.id) else {
            return Err(ItemError::EntryNotFound(u.id.clone()));
        };
        let mut e = RegistrationEntry::clone(old);
        e.apply_patch(&u.patch);
        e.check_store_svid().map_err(ItemError::InvalidEntry)?;
        if let Some(tds) = &u.patch.federates_with {
            self.check_federated_bundles(tds)?;
        }
        e.revision_number = old.revision_number.saturating_add(1);
        Ok(e)
    }

    fn create_token(
        &mut self,
        token: &StoredJoinToken,
        entry: Option<&RegistrationEntry>,
    ) -> Result<ItemResult<Option<Arc<RegistrationEntry>>>, StoreError> {
        if self.state.tokens.contains_key(&token.hash) {
            return Ok(Err(ItemError::TokenExists));
        }
        let entry = match entry.map(|e| self.check_create(e)).transpose() {
            Ok(e) => e,
            Err(err) => return Ok(Err(err)),
        };
        self.put_token(token.clone())?;
        Ok(Ok(match entry {
            Some(e) => Some(self.put_entry(e)?),
            None => None,
        }))
    }

    fn live_agent(&self, id: &AgentId) -> ItemResult<AttestedNode> {
        match self.state.agent(id) {
            None => Err(ItemError::AgentNotFound(id.clone())),
            Some(a) if a.is_banned() => Err(ItemError::AgentBanned(id.clone())),
            Some(a) => Ok(AttestedNode::clone(a)),
        }
    }

    fn attest(
        &mut self,
        att: &AgentAttestation,
    ) -> Result<ItemResult<Arc<AttestedNode>>, StoreError> {
        if self.state.agent(&att.id).is_some_and(|a| a.is_banned()) {
            return Ok(Err(ItemError::AgentBanned(att.id.clone())));
        }
        if att.serial.is_empty() {
            return Ok(Err(ItemError::Invalid("serial is required".into())));
        }
        if self.state.agent(&att.id).is_none() && !self.state.has_room_for_agent() {
            return Ok(Err(ItemError::Invalid(StoreError::Capacity.to_string())));
        }
        let node = AttestedNode {
            id: att.id.clone(),
            attestation_type: att.attestation_type.clone(),
            serial: att.serial.clone(),
            expires_at: att.expires_at,
            new_serial: String::new(),
            new_expires_at: 0,
            selectors: att.selectors.clone(),
            can_reattest: att.can_reattest,
        };
        Ok(Ok(self.put_agent(node)?))
    }

    fn edit_bundle(
        &mut self,
        td: &TrustDomain,
        edit: impl FnOnce(&mut Bundle) -> ItemResult<()>,
    ) -> Result<ItemResult<Arc<Bundle>>, StoreError> {
        let Some(old) = self.state.bundles.get(td) else {
            return Ok(Err(ItemError::BundleNotFound(td.clone())));
        };
        let mut b = Bundle::clone(old);
        if let Err(e) = edit(&mut b) {
            return Ok(Err(e));
        }
        b.sequence_number = b.sequence_number.saturating_add(1);
        Ok(Ok(self.put_bundle(b)?))
    }

    /// SPIRE's append: a missing bundle is created with exactly the given authorities;
    /// otherwise the authorities not present yet are added and the sequence number goes up.
    fn append_bundle(
        &mut self,
        td: &TrustDomain,
        x509: &[X509Authority],
        jwt: &[JwtAuthority],
    ) -> Result<Arc<Bundle>, StoreError> {
        let Some(old) = self.state.bundles.get(td) else {
            let b = Bundle {
                x509_authorities: x509.to_vec(),
                jwt_authorities: jwt.to_vec(),
                ..Bundle::new(td.clone())
            };
            return self.put_bundle(b);
        };
        let mut b = Bundle::clone(old);
        // Compared with the bundle as it was, as SPIRE merges: two equal new items both go in.
        let new_x509: Vec<&X509Authority> =
            x509.iter().filter(|x| !old.x509_authorities.iter().any(|o| o.der == x.der)).collect();
        let new_jwt: Vec<&JwtAuthority> = jwt
            .iter()
            .filter(|j| !old.jwt_authorities.iter().any(|o| same_jwt_key(o, j)))
            .collect();
        if new_x509.is_empty() && new_jwt.is_empty() {
            return Ok(Arc::clone(old));
        }
        b.x509_authorities.extend(new_x509.into_iter().cloned());
        b.jwt_authorities.extend(new_jwt.into_iter().cloned());
        b.sequence_number = b.sequence_number.saturating_add(1);
        self.put_bundle(b)
    }

    fn prune_authorities(
        &mut self,
        td: &TrustDomain,
        x509_ders: &[Vec<u8>],
        jwt_key_ids: &[String],
    ) -> Result<ItemResult<Arc<Bundle>>, StoreError> {
        let Some(old) = self.state.bundles.get(td) else {
            return Ok(Err(ItemError::BundleNotFound(td.clone())));
        };
        let mut b = Bundle::clone(old);
        b.x509_authorities.retain(|a| !x509_ders.contains(&a.der));
        b.jwt_authorities.retain(|a| !jwt_key_ids.contains(&a.key_id));
        let empties = |now: usize, before: usize| now == 0 && before > 0;
        let halted = empties(b.x509_authorities.len(), old.x509_authorities.len())
            || empties(b.jwt_authorities.len(), old.jwt_authorities.len());
        // `retain` only removes, so a list changed exactly when its length did.
        let removed = b.x509_authorities.len() != old.x509_authorities.len()
            || b.jwt_authorities.len() != old.jwt_authorities.len();
        if halted || !removed {
            return Ok(Ok(Arc::clone(old)));
        }
        b.sequence_number = b.sequence_number.saturating_add(1);
        Ok(Ok(self.put_bundle(b)?))
    }

    fn delete_bundle(
        &mut self,
        td: &TrustDomain,
        mode: BundleDeleteMode,
    ) -> Result<ItemResult<Arc<Bundle>>, StoreError> {
        if !self.state.bundles.contains_key(td) {
            return Ok(Err(ItemError::BundleNotFound(td.clone())));
        }
        // By id: the index yields slot order, which depends on history (a replica that
        // installed a snapshot numbers slots differently), and the change feed records these
        // ids in this order.
        let mut users: Vec<Arc<RegistrationEntry>> =
            self.state.federating_with(td).cloned().collect();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        match mode {
            BundleDeleteMode::Restrict if !users.is_empty() => {
                return Ok(Err(ItemError::BundleInUse(td.clone(), users.len())));
            }
            BundleDeleteMode::Restrict => {}
            BundleDeleteMode::Delete => {
                for e in &users {
                    self.remove_entry(&e.id);
                }
            }
            BundleDeleteMode::Dissociate => {
                for e in &users {
                    let mut e = RegistrationEntry::clone(e);
                    // SPIRE's datastore clears the association without a new revision.
                    e.federates_with.retain(|t| t != td);
                    self.put_entry(e)?;
                }
            }
        }
        match self.remove_bundle(td) {
            Some(b) => Ok(Ok(b)),
            None => Ok(Err(ItemError::BundleNotFound(td.clone()))),
        }
    }

    /// Checks a relationship and stores the bundle it carries, as given; returns the
    /// relationship without that bundle (as it is stored) and the bundle.
    fn federation_bundle(
        &mut self,
        f: &FederationRelationship,
    ) -> Result<ItemResult<Checked>, StoreError> {
        if f.bundle_endpoint_url.is_empty() {
            return Ok(Err(ItemError::Invalid("bundle endpoint URL is required".into())));
        }
        if f.trust_domain == self.state.trust_domain {
            return Ok(Err(ItemError::Invalid(
                "unable to create federation relationship for the server's own trust domain".into(),
            )));
        }
        let mut f = f.clone();
        let mut stored = None;
        if let Some(b) = f.trust_domain_bundle.take() {
            if b.trust_domain != f.trust_domain {
                return Ok(Err(ItemError::Invalid(
                    "trust domain bundle is for another trust domain".into(),
                )));
            }
            stored = Some(self.put_bundle(b)?);
        }
        Ok(Ok((f, stored)))
    }

    fn create_federation(
        &mut self,
        f: &FederationRelationship,
    ) -> Result<ItemResult<Arc<FederationRelationship>>, StoreError> {
        if self.state.federations.contains_key(&f.trust_domain) {
            return Ok(Err(ItemError::FederationExists(f.trust_domain.clone())));
        }
        match self.federation_bundle(f)? {
            Ok((stripped, bundle)) => {
                let stored = self.put_federation(stripped)?;
                Ok(Ok(with_bundle(&stored, bundle.as_deref())))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    fn update_federation(
        &mut self,
        u: &FederationUpdate,
    ) -> Result<ItemResult<Arc<FederationRelationship>>, StoreError> {
        let src = &u.relationship;
        let Some(old) = self.state.federations.get(&src.trust_domain) else {
            return Ok(Err(ItemError::FederationNotFound(src.trust_domain.clone())));
        };
        let mut f = FederationRelationship::clone(old);
        if u.mask.bundle_endpoint_url {
            f.bundle_endpoint_url.clone_from(&src.bundle_endpoint_url);
        }
        if u.mask.profile {
            f.profile = src.profile.clone();
        }
        if u.mask.trust_domain_bundle {
            f.trust_domain_bundle.clone_from(&src.trust_domain_bundle);
        }
        match self.federation_bundle(&f)? {
            Ok((stripped, _)) => {
                let stored = self.put_federation(stripped)?;
                let bundle = self.state.bundles.get(&stored.trust_domain).cloned();
                Ok(Ok(with_bundle(&stored, bundle.as_deref())))
            }
            Err(e) => Ok(Err(e)),
        }
    }
}

/// A record with its creation number, when it exists.
fn numbered<V>(number: Option<u64>, value: Option<&Arc<V>>) -> Option<(u64, Arc<V>)> {
    number.zip(value.cloned())
}

/// A checked relationship as it is stored (without its bundle), and the bundle it carried,
/// as stored.
type Checked = (FederationRelationship, Option<Arc<Bundle>>);

/// A relationship as reported: the stored one with `bundle` as its `trust_domain_bundle`.
pub(crate) fn with_bundle(
    f: &Arc<FederationRelationship>,
    bundle: Option<&Bundle>,
) -> Arc<FederationRelationship> {
    match bundle {
        None => Arc::clone(f),
        Some(b) => Arc::new(FederationRelationship {
            trust_domain_bundle: Some(b.clone()),
            ..FederationRelationship::clone(f)
        }),
    }
}

/// Whether two JWT authorities are the same key as SPIRE's merge compares them (public key,
/// key ID and expiry), whatever their taint flags.
fn same_jwt_key(a: &JwtAuthority, b: &JwtAuthority) -> bool {
    a.public_key_der == b.public_key_der && a.key_id == b.key_id && a.expires_at == b.expires_at
}

/// Marks every copy of an authority tainted (a bundle taken as given may list one twice).
/// Refused when there is none, or when one is tainted already.
fn taint(flags: Vec<&mut bool>, td: &TrustDomain) -> ItemResult<()> {
    if flags.is_empty() {
        return Err(ItemError::AuthorityNotFound(td.clone()));
    }
    if flags.iter().any(|t| **t) {
        return Err(ItemError::Invalid("authority is already tainted".into()));
    }
    for flag in flags {
        *flag = true;
    }
    Ok(())
}

/// Removes every copy of the authority `is` picks, so no copy stays trusted; every copy
/// must be tainted.
fn revoke<T>(
    list: &mut Vec<T>,
    is: impl Fn(&T) -> bool,
    tainted: impl Fn(&T) -> bool,
    td: &TrustDomain,
) -> ItemResult<()> {
    let mut hits = list.iter().filter(|a| is(a)).peekable();
    if hits.peek().is_none() {
        return Err(ItemError::AuthorityNotFound(td.clone()));
    }
    if !hits.all(tainted) {
        return Err(ItemError::AuthorityNotTainted);
    }
    list.retain(|a| !is(a));
    Ok(())
}

/// Test-only faults in apply: the store's unit tests make the `n`-th record write of the
/// next command fail after it changed memory, or make it panic there, to check that a
/// failed apply leaves nothing behind and that a panicked one is never read through.
#[cfg(test)]
pub(crate) mod fault {
    use std::cell::Cell;

    use crate::error::StoreError;

    /// What the armed fault does.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Kind {
        /// Fail with [`StoreError::Encode`].
        Fail,
        /// Panic.
        Panic,
        /// Fail writing the batch (checked in the store, not here).
        Batch,
    }

    thread_local! {
        static ARMED: Cell<Option<(usize, Kind)>> = const { Cell::new(None) };
    }

    /// Arms a fault at the `n`-th record write (from 1) on this thread.
    pub(crate) fn arm(n: usize, kind: Kind) {
        ARMED.with(|a| a.set(Some((n, kind))));
    }

    /// Disarms any fault on this thread.
    pub(crate) fn disarm() {
        ARMED.with(|a| a.set(None));
    }

    /// Counts one record write and fires the armed fault when its turn comes.
    pub(crate) fn point() -> Result<(), StoreError> {
        match ARMED.with(Cell::get) {
            Some((n, kind @ (Kind::Fail | Kind::Panic))) if n <= 1 => {
                disarm();
                match kind {
                    Kind::Panic => panic!("injected panic in apply"),
                    _ => Err(StoreError::Encode("injected fault".into())),
                }
            }
            Some((n, kind)) if !matches!(kind, Kind::Batch) => {
                ARMED.with(|a| a.set(Some((n.saturating_sub(1), kind))));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether the batch write is to fail (disarms it).
    pub(crate) fn batch() -> bool {
        let armed = matches!(ARMED.with(Cell::get), Some((_, Kind::Batch)));
        if armed {
            disarm();
        }
        armed
    }
}

/// Outside tests no fault is ever armed.
#[cfg(not(test))]
pub(crate) mod fault {
    use crate::error::StoreError;

    /// Never fails.
    #[inline]
    pub(crate) fn point() -> Result<(), StoreError> {
        Ok(())
    }

    /// Never fails.
    #[inline]
    pub(crate) fn batch() -> bool {
        false
    }
}
