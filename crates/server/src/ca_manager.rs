//! The CA manager: runs `ward-ca`'s rotation schedule on a timer, keeps this replica's CA
//! and JWT keys in the data directory, and publishes their public parts into the trust
//! bundle through the command path.
//!
//! Keys live in `<data_dir>/ca/keys` (PKCS#8, mode 0600, SPIRE's slot names). Which
//! authority sits in which slot, and its certificate or key id, is kept in
//! `<data_dir>/ca/journal.json` so a restart resumes with the same authorities.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use ward_ca::{
    AuthorityInfo, AuthorityKind, DiskKeyManager, JwtSigner, KeyFileFormat, KeyManager, KeyType,
    RotationAction, RotationState, SlotId, X509Ca,
};
use ward_core::clock::unix_seconds;
use ward_core::{Bundle, TrustDomain, X509Authority};
use ward_store::{Command, Outcome};

use crate::proposer::{ProposeError, Proposer};

/// How often the schedule is checked (SPIRE: 10 s).
pub const ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// How often expired authorities are pruned from the own bundle (SPIRE: 6 h).
pub const AUTHORITY_PRUNE_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// How long an expired authority stays in the bundle before it is pruned (SPIRE: 24 h).
pub const AUTHORITY_EXPIRY_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Why the CA manager failed.
#[derive(Debug, thiserror::Error)]
pub enum CaManagerError {
    /// Key generation or loading failed.
    #[error("key manager: {0}")]
    Key(#[from] ward_ca::KeyError),
    /// Building a CA failed.
    #[error("building the CA: {0}")]
    Ca(#[from] ward_ca::CaError),
    /// Reading or writing the journal failed.
    #[error("CA journal {path}: {reason}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Publishing into the bundle failed. (Not a `source`: the reason is in the message
    /// once, not repeated by error chains.)
    #[error("publishing to the bundle: {0}")]
    Propose(ProposeError),
    /// There is no active authority (the manager has not run yet).
    #[error("no active {0} authority")]
    NoAuthority(&'static str),
}

impl From<ProposeError> for CaManagerError {
    fn from(e: ProposeError) -> Self {
        Self::Propose(e)
    }
}

/// CA manager settings.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Key type of CA and JWT keys.
    pub key_type: KeyType,
    /// Lifetime of each authority.
    pub ca_ttl: Duration,
    /// `iss` for JWT-SVIDs.
    pub jwt_issuer: Option<String>,
    /// `<data_dir>/ca`.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SlotRole {
    Current,
    Next,
    Old,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalX509 {
    slot: char,
    role: SlotRole,
    cert_der_b64: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalJwt {
    slot: char,
    role: SlotRole,
    key_id: String,
    not_before: i64,
    not_after: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    x509: Vec<JournalX509>,
    jwt: Vec<JournalJwt>,
}

fn slot_char(s: SlotId) -> char {
    match s {
        SlotId::A => 'A',
        SlotId::B => 'B',
    }
}

fn char_slot(c: char) -> SlotId {
    if c == 'B' { SlotId::B } else { SlotId::A }
}

#[derive(Debug, Default)]
struct Slots {
    rotation: RotationState,
    x509: HashMap<SlotId, Arc<X509Ca>>,
    jwt: HashMap<SlotId, Arc<JwtSigner>>,
}

/// This replica's authorities and their rotation.
#[derive(Debug)]
pub struct CaManager {
    settings: CaSettings,
    keys: DiskKeyManager,
    proposer: Arc<dyn Proposer>,
    slots: Mutex<Slots>,
    active_x509: RwLock<Option<Arc<X509Ca>>>,
    active_jwt: RwLock<Option<Arc<JwtSigner>>>,
    /// Serializes the schedule and operator actions (prepare, activate, taint, revoke), so a
    /// check made under it still holds when the action runs.
    ops: tokio::sync::Mutex<()>,
}

impl CaManager {
    /// Opens the key directory and journal (creating them when missing).
    ///
    /// # Errors
    /// [`CaManagerError`] when keys or the journal cannot be read.
    pub fn open(settings: CaSettings, proposer: Arc<dyn Proposer>) -> Result<Self, CaManagerError> {
        let keys = DiskKeyManager::new(settings.dir.join("keys"), KeyFileFormat::Pem)?;
        let me = Self {
            settings,
            keys,
            proposer,
            slots: Mutex::new(Slots::default()),
            active_x509: RwLock::new(None),
            active_jwt: RwLock::new(None),
            ops: tokio::sync::Mutex::new(()),
        };
        me.load_journal()?;
        Ok(me)
    }

    fn journal_path(&self) -> PathBuf {
        self.settings.dir.join("journal.json")
    }

    fn journal_err(&self, reason: impl ToString) -> CaManagerError {
        CaManagerError::Journal { path: self.journal_path(), reason: reason.to_string() }
    }

    fn load_journal(&self) -> Result<(), CaManagerError> {
        let path = self.journal_path();
        let journal: Journal = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.journal_err(e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.journal_err(e)),
        };
        let mut slots = self.lock_slots();
        for j in journal.x509 {
            let slot = char_slot(j.slot);
            let Some(key) = self.keys.get_key(AuthorityKind::X509.key_id(slot))? else {
                continue;
            };
            let der = STANDARD.decode(&j.cert_der_b64).map_err(|e| self.journal_err(e))?;
            let Ok(ca) = X509Ca::from_parts(key, der, Vec::new()) else { continue };
            let info = x509_info(slot, &ca);
            place(&mut slots.rotation.x509, j.role, info);
            let ca = Arc::new(ca);
            if j.role == SlotRole::Current {
                self.set_active_x509(ca.clone());
            }
            slots.x509.insert(slot, ca);
        }
        for j in journal.jwt {
            let slot = char_slot(j.slot);
            let Some(key) = self.keys.get_key(AuthorityKind::Jwt.key_id(slot))? else {
                continue;
            };
            let signer = Arc::new(self.jwt_signer(key, j.key_id.clone(), j.not_after)?);
            let info = AuthorityInfo {
                slot,
                id: j.key_id,
                not_before: j.not_before,
                not_after: j.not_after,
            };
            place(&mut slots.rotation.jwt, j.role, info);
            if j.role == SlotRole::Current {
                self.set_active_jwt(signer.clone());
            }
            // The journal lists current and next before old ones. An old authority whose
            // slot was reused holds the new key, not its own: it must not take the slot.
            if j.role != SlotRole::Old || !slots.jwt.contains_key(&slot) {
                slots.jwt.insert(slot, signer);
            }
        }
        Ok(())
    }

    fn save_journal(&self, slots: &Slots) -> Result<(), CaManagerError> {
        let mut journal = Journal::default();
        let st = &slots.rotation;
        let roles = |s: &ward_ca::SlotState| {
            let mut v: Vec<(SlotRole, AuthorityInfo)> = Vec::new();
            v.extend(s.current.clone().map(|i| (SlotRole::Current, i)));
            v.extend(s.next.clone().map(|i| (SlotRole::Next, i)));
            v.extend(s.old.iter().cloned().map(|i| (SlotRole::Old, i)));
            v
        };
        for (role, info) in roles(&st.x509) {
            if let Some(ca) = slots.x509.get(&info.slot).filter(|c| c.authority_id() == info.id) {
                journal.x509.push(JournalX509 {
                    slot: slot_char(info.slot),
                    role,
                    cert_der_b64: STANDARD.encode(ca.cert_der()),
                });
            }
        }
        for (role, info) in roles(&st.jwt) {
            journal.jwt.push(JournalJwt {
                slot: slot_char(info.slot),
                role,
                key_id: info.id,
                not_before: info.not_before,
                not_after: info.not_after,
            });
        }
        let bytes = serde_json::to_vec_pretty(&journal).map_err(|e| self.journal_err(e))?;
        // Synced and renamed: a crash never leaves an empty or partial journal behind.
        ward_ca::files::write_atomically(&self.journal_path(), &bytes)
            .map_err(|e| self.journal_err(e))
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn jwt_signer(
        &self,
        key: ward_ca::PrivateKey,
        kid: String,
        not_after: i64,
    ) -> Result<JwtSigner, CaManagerError> {
        let s = JwtSigner::new(key, kid, not_after)?;
        Ok(match &self.settings.jwt_issuer {
            Some(iss) => s.with_issuer(iss.clone()),
            None => s,
        })
    }

    fn set_active_x509(&self, ca: Arc<X509Ca>) {
        match self.active_x509.write() {
            Ok(mut g) => *g = Some(ca),
            Err(p) => *p.into_inner() = Some(ca),
        }
    }

    fn set_active_jwt(&self, s: Arc<JwtSigner>) {
        match self.active_jwt.write() {
            Ok(mut g) => *g = Some(s),
            Err(p) => *p.into_inner() = Some(s),
        }
    }

    /// The CA that signs X509-SVIDs now.
    ///
    /// # Errors
    /// [`CaManagerError::NoAuthority`] before the first rotation step.
    pub fn x509_ca(&self) -> Result<Arc<X509Ca>, CaManagerError> {
        self.active_x509
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or(CaManagerError::NoAuthority("X.509"))
    }

    /// The key that signs JWT-SVIDs now.
    ///
    /// # Errors
    /// [`CaManagerError::NoAuthority`] before the first rotation step.
    pub fn jwt_signer_now(&self) -> Result<Arc<JwtSigner>, CaManagerError> {
        self.active_jwt
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or(CaManagerError::NoAuthority("JWT"))
    }

    /// Makes sure every authority this replica holds is in the bundle (after a restart with
    /// a fresh store, or a lost proposal).
    ///
    /// # Errors
    /// [`CaManagerError::Propose`].
    pub async fn republish(&self) -> Result<(), CaManagerError> {
        let (x509, jwt) = self.own_authorities();
        if x509.is_empty() && jwt.is_empty() {
            return Ok(());
        }
        self.publish(x509, jwt).await
    }

    /// [`CaManager::republish`], skipped when `bundle` (the trust domain's bundle as this
    /// replica's store holds it) already has every authority of this replica: a replica
    /// restarting with the keys it had published needs no write, so it starts (and serves
    /// its peers) even while the cluster has no leader yet, as when every replica restarts
    /// at once. Returns whether a write was made.
    ///
    /// # Errors
    /// As [`CaManager::republish`].
    pub async fn republish_missing(
        &self,
        bundle: Option<&ward_core::Bundle>,
    ) -> Result<bool, CaManagerError> {
        let (x509, jwt) = self.own_authorities();
        let present = bundle.is_some_and(|b| {
            x509.iter().all(|a| b.x509_authorities.iter().any(|h| h.der == a.der))
                && jwt.iter().all(|a| {
                    b.jwt_authorities
                        .iter()
                        .any(|h| h.key_id == a.key_id && h.public_key_der == a.public_key_der)
                })
        });
        if present || (x509.is_empty() && jwt.is_empty()) {
            return Ok(false);
        }
        self.publish(x509, jwt).await?;
        Ok(true)
    }

    /// The X.509 and JWT authorities of this replica's slots.
    fn own_authorities(&self) -> (Vec<X509Authority>, Vec<ward_core::JwtAuthority>) {
        {
            let slots = self.lock_slots();
            let x: Vec<X509Authority> = slots
                .x509
                .values()
                .map(|ca| X509Authority::new(ca.trust_anchor_der().to_vec()))
                .collect();
            let j: Vec<_> = slots.jwt.values().map(|s| s.authority()).collect();
            (x, j)
        }
    }

    async fn publish(
        &self,
        x509_authorities: Vec<X509Authority>,
        jwt_authorities: Vec<ward_core::JwtAuthority>,
    ) -> Result<(), CaManagerError> {
        let cmd = Command::AppendBundle {
            trust_domain: self.settings.trust_domain.clone(),
            x509_authorities,
            jwt_authorities,
        };
        match self.proposer.propose(cmd).await {
            // Appending authorities has no result to read: applied is all that matters.
            Ok(_) | Err(crate::proposer::ProposeError::AppliedUnobserved { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes from the own bundle `bundle` the authorities that expired more than
    /// [`AUTHORITY_EXPIRY_GRACE`] before `now`: X.509 authorities by certificate NotAfter,
    /// JWT authorities by their expiry (0 = never). Any replica may prune any authority of
    /// the shared bundle. As in SPIRE, the store changes nothing when pruning would leave the
    /// bundle without an X.509 authority or without a JWT key; that is logged as a warning.
    /// Returns how many authorities left the bundle.
    ///
    /// # Errors
    /// [`CaManagerError::Propose`].
    pub async fn prune_expired(
        &self,
        bundle: Option<&Bundle>,
        now: SystemTime,
    ) -> Result<usize, CaManagerError> {
        let Some(bundle) = bundle else { return Ok(0) };
        let grace = i64::try_from(AUTHORITY_EXPIRY_GRACE.as_secs()).unwrap_or(i64::MAX);
        let cutoff = unix_seconds(now).saturating_sub(grace);
        let Some(cmd) = prune_command(bundle, cutoff) else { return Ok(0) };
        let before = authority_count(bundle);
        let applied = self.proposer.propose(cmd).await?;
        let removed = match applied.outcome {
            Outcome::Bundles(v) => match v.first() {
                Some(Ok(b)) => before.saturating_sub(authority_count(b)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pruning expired authorities was refused");
                    return Ok(0);
                }
                None => 0,
            },
            _ => 0,
        };
        if removed > 0 {
            tracing::info!(count = removed, "pruned expired authorities from the bundle");
        } else {
            tracing::warn!(
                "expired authorities were not pruned: the bundle would be left without an \
                 X.509 authority or without a JWT key"
            );
        }
        Ok(removed)
    }

    /// Runs the schedule once at `now`: prepares, activates and prunes as `ward-ca` plans.
    /// Returns whether the active X.509 CA changed.
    ///
    /// # Errors
    /// [`CaManagerError`] when a key, certificate, journal write or proposal fails.
    pub async fn tick(&self, now: SystemTime) -> Result<bool, CaManagerError> {
        let _ops = self.ops.lock().await;
        let actions = ward_ca::rotation::plan(now, &self.lock_slots().rotation);
        let mut x509_changed = false;
        for action in actions {
            match action {
                RotationAction::Prepare { kind, slot } => {
                    self.prepare_in(kind, slot, now).await?;
                }
                RotationAction::Activate { kind } => {
                    let changed = self.activate_next(kind)?;
                    x509_changed |= changed && kind == AuthorityKind::X509;
                }
                RotationAction::Prune { kind, id } => {
                    let mut slots = self.lock_slots();
                    slots.rotation.slots_mut(kind).prune(&id);
                    self.save_journal(&slots)?;
                }
            }
        }
        Ok(x509_changed)
    }

    /// Takes the operator lock: the schedule waits until the returned [`CaOps`] is dropped.
    pub async fn operations(&self) -> CaOps<'_> {
        CaOps { ca: self, _guard: self.ops.lock().await }
    }

    /// Generates a key in `slot`, builds the authority, publishes its public part and records
    /// it as the prepared (next) authority.
    async fn prepare_in(
        &self,
        kind: AuthorityKind,
        slot: SlotId,
        now: SystemTime,
    ) -> Result<(), CaManagerError> {
        let key = self.keys.generate_key(kind.key_id(slot), self.settings.key_type)?;
        match kind {
            AuthorityKind::X509 => {
                let ca = X509Ca::self_signed(
                    key,
                    &self.settings.trust_domain,
                    self.settings.ca_ttl,
                    now,
                )?;
                let authority = X509Authority::new(ca.trust_anchor_der().to_vec());
                self.publish(vec![authority], Vec::new()).await?;
                let mut slots = self.lock_slots();
                slots.rotation.x509.set_next(x509_info(slot, &ca));
                slots.x509.insert(slot, Arc::new(ca));
                self.save_journal(&slots)?;
            }
            AuthorityKind::Jwt => {
                let kid = ward_ca::new_key_id()?;
                let nb = unix_seconds(now);
                let ttl = i64::try_from(self.settings.ca_ttl.as_secs()).unwrap_or(i64::MAX / 4);
                let na = nb.saturating_add(ttl);
                let signer = self.jwt_signer(key, kid.clone(), na)?;
                self.publish(Vec::new(), vec![signer.authority()]).await?;
                let mut slots = self.lock_slots();
                slots.rotation.jwt.set_next(AuthorityInfo {
                    slot,
                    id: kid,
                    not_before: nb,
                    not_after: na,
                });
                slots.jwt.insert(slot, Arc::new(signer));
                self.save_journal(&slots)?;
            }
        }
        tracing::info!(kind = ?kind, slot = ?slot, "prepared authority");
        Ok(())
    }

    /// Makes the prepared authority of `kind` the active one (the active one becomes old).
    /// Returns whether the signing authority changed.
    fn activate_next(&self, kind: AuthorityKind) -> Result<bool, CaManagerError> {
        let mut slots = self.lock_slots();
        slots.rotation.slots_mut(kind).activate();
        let current = slots.rotation.slots(kind).current.clone();
        let mut changed = false;
        if let Some(cur) = current {
            match kind {
                AuthorityKind::X509 => {
                    if let Some(ca) = slots.x509.get(&cur.slot) {
                        changed = !self.x509_ca().is_ok_and(|a| a.authority_id() == cur.id);
                        self.set_active_x509(ca.clone());
                    }
                }
                AuthorityKind::Jwt => {
                    if let Some(s) = slots.jwt.get(&cur.slot) {
                        changed = !self.jwt_signer_now().is_ok_and(|a| a.key_id() == cur.id);
                        self.set_active_jwt(s.clone());
                    }
                }
            }
            tracing::info!(kind = ?kind, id = %cur.id, "activated authority");
        }
        self.save_journal(&slots)?;
        Ok(changed)
    }

    /// The authorities of `kind` as SPIRE's two slots show them.
    fn authority_slots(&self, kind: AuthorityKind) -> AuthoritySlots {
        let slots = self.lock_slots();
        let st = slots.rotation.slots(kind);
        let view = |info: &AuthorityInfo| {
            let upstream_id = match kind {
                AuthorityKind::X509 => slots
                    .x509
                    .get(&info.slot)
                    .filter(|ca| ca.authority_id() == info.id)
                    .and_then(|ca| upstream_authority_id(ca))
                    .unwrap_or_default(),
                AuthorityKind::Jwt => String::new(),
            };
            AuthorityState { id: info.id.clone(), expires_at: info.not_after, upstream_id }
        };
        let next = match (&st.next, st.old.last()) {
            (Some(prepared), _) => Some((view(prepared), NextStatus::Prepared)),
            (None, Some(old)) => Some((view(old), NextStatus::Old)),
            (None, None) => None,
        };
        AuthoritySlots { active: st.current.as_ref().map(view), next }
    }
}

/// One authority as the LocalAuthority API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityState {
    /// SKI hex of an X.509 authority, key ID of a JWT authority.
    pub id: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// SKI hex of the upstream authority that signed an X.509 authority; empty otherwise.
    pub upstream_id: String,
}

/// What the slot beside the active one holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStatus {
    /// A prepared authority, published but not signing yet.
    Prepared,
    /// The authority that was active before the current one.
    Old,
}

impl NextStatus {
    /// The status name SPIRE's journal uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Prepared => "PREPARED",
            Self::Old => "OLD",
        }
    }
}

/// The authorities of one kind as SPIRE's two slots present them: the active one, and the
/// other slot holding either a prepared authority or the previously active (old) one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthoritySlots {
    /// The authority that signs now; `None` before the first rotation step.
    pub active: Option<AuthorityState>,
    /// The other slot, when it holds an authority.
    pub next: Option<(AuthorityState, NextStatus)>,
}

impl AuthoritySlots {
    /// The other slot's authority ID (empty when the slot is empty).
    pub fn next_id(&self) -> &str {
        self.next.as_ref().map_or("", |(s, _)| s.id.as_str())
    }

    /// The active authority's ID (empty before the first rotation step).
    pub fn active_id(&self) -> &str {
        self.active.as_ref().map_or("", |s| s.id.as_str())
    }
}

/// Operator access to the CA manager while the schedule waits (see
/// [`CaManager::operations`]).
#[derive(Debug)]
pub struct CaOps<'a> {
    ca: &'a CaManager,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl CaOps<'_> {
    /// The authorities of `kind`.
    pub fn slots(&self, kind: AuthorityKind) -> AuthoritySlots {
        self.ca.authority_slots(kind)
    }

    /// Whether the active X.509 authority is signed by an upstream authority.
    pub fn is_upstream(&self) -> bool {
        self.ca.x509_ca().is_ok_and(|ca| !ca.upstream_chain().is_empty())
    }

    /// Prepares a new authority of `kind` in the slot beside the active one (replacing what
    /// it held: a prepared or an old authority) and publishes it. Returns it.
    ///
    /// # Errors
    /// [`CaManagerError::NoAuthority`] without an active authority; key, certificate, journal
    /// and proposal errors.
    pub async fn prepare(
        &self,
        kind: AuthorityKind,
        now: SystemTime,
    ) -> Result<AuthorityState, CaManagerError> {
        let slot = {
            let slots = self.ca.lock_slots();
            let st = slots.rotation.slots(kind);
            let current =
                st.current.as_ref().ok_or(CaManagerError::NoAuthority(kind_name(kind)))?;
            st.next.as_ref().map_or(current.slot.other(), |n| n.slot)
        };
        self.ca.prepare_in(kind, slot, now).await?;
        match self.slots(kind).next {
            Some((state, NextStatus::Prepared)) => Ok(state),
            _ => Err(CaManagerError::NoAuthority(kind_name(kind))),
        }
    }

    /// Makes the prepared authority of `kind` the active one; the formerly active one becomes
    /// old. Returns the new active authority.
    ///
    /// # Errors
    /// [`CaManagerError::NoAuthority`] when nothing is active afterwards; journal errors.
    pub fn activate(&self, kind: AuthorityKind) -> Result<AuthorityState, CaManagerError> {
        self.ca.activate_next(kind)?;
        self.slots(kind).active.ok_or(CaManagerError::NoAuthority(kind_name(kind)))
    }
}

fn kind_name(kind: AuthorityKind) -> &'static str {
    match kind {
        AuthorityKind::X509 => "X.509",
        AuthorityKind::Jwt => "JWT",
    }
}

/// SKI hex of the upstream certificate that signed `ca` (its authority key identifier), or
/// `None` for a self-signed CA.
fn upstream_authority_id(ca: &X509Ca) -> Option<String> {
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    if ca.upstream_chain().is_empty() {
        return None;
    }
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(ca.cert_der()).ok()?;
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
        }
        _ => None,
    })
}

/// SKI hex of a certificate (its subject key identifier extension), if it has one.
pub fn subject_key_id_hex(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(hex::encode(k.0)),
        _ => None,
    })
}

/// The command that removes `bundle`'s authorities that expired before `expired_before`
/// (Unix seconds), or `None` when there are none. Certificates that do not parse are kept.
pub fn prune_command(bundle: &Bundle, expired_before: i64) -> Option<Command> {
    let x509_ders: Vec<Vec<u8>> = bundle
        .x509_authorities
        .iter()
        .filter(|a| cert_not_after(&a.der).is_some_and(|na| na < expired_before))
        .map(|a| a.der.clone())
        .collect();
    let jwt_key_ids: Vec<String> = bundle
        .jwt_authorities
        .iter()
        .filter(|a| a.expires_at != 0 && a.expires_at < expired_before)
        .map(|a| a.key_id.clone())
        .collect();
    if x509_ders.is_empty() && jwt_key_ids.is_empty() {
        return None;
    }
    Some(Command::PruneBundleAuthorities {
        trust_domain: bundle.trust_domain.clone(),
        x509_ders,
        jwt_key_ids,
    })
}

fn cert_not_after(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn authority_count(b: &Bundle) -> usize {
    b.x509_authorities.len() + b.jwt_authorities.len()
}

fn x509_info(slot: SlotId, ca: &X509Ca) -> AuthorityInfo {
    AuthorityInfo {
        slot,
        id: ca.authority_id(),
        not_before: unix_seconds(ca.not_before()),
        not_after: ca.not_after_unix(),
    }
}

fn place(s: &mut ward_ca::SlotState, role: SlotRole, info: AuthorityInfo) {
    match role {
        SlotRole::Current => s.current = Some(info),
        SlotRole::Next => s.next = Some(info),
        SlotRole::Old => s.old.push(info),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::JwtAuthority;

    #[test]
    fn prune_command_lists_only_expired_authorities() {
        let td = TrustDomain::new("example.org").unwrap();
        let jwt = |kid: &str, exp| JwtAuthority {
            public_key_der: vec![1],
            key_id: kid.into(),
            expires_at: exp,
            tainted: false,
        };
        let mut b = Bundle::new(td.clone());
        // Not a certificate: kept, never guessed at.
        b.x509_authorities.push(X509Authority::new(vec![0x30, 0x00]));
        b.jwt_authorities = vec![jwt("never", 0), jwt("old", 99), jwt("edge", 100)];
        assert_eq!(
            prune_command(&b, 100),
            Some(Command::PruneBundleAuthorities {
                trust_domain: td,
                x509_ders: Vec::new(),
                jwt_key_ids: vec!["old".into()],
            })
        );
        assert_eq!(prune_command(&b, 99), None);
    }
}
