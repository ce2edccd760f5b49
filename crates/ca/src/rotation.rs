//! The CA rotation schedule as a pure function of time and state.
//!
//! Each authority kind (X.509 CA, JWT key) has two slots, A and B. With `L` the lifetime of
//! the current authority and `r` its remaining lifetime, SPIRE's rules are:
//!
//! - **prepare** the next authority (in the other slot) when `r < min(L/2, 30 days)`, and
//!   publish its public part right away so relying parties learn it early;
//! - **activate** it when `r < min(L/6, 7 days)`: next becomes current, current becomes old;
//! - **prune** an old authority from the bundle 24 hours after it expired.
//!
//! [`plan`] looks at a [`RotationState`] and `now` and returns the [`RotationAction`]s a
//! driver should execute, in order; the driver applies each to the state with
//! [`SlotState::set_next`], [`SlotState::activate`] and [`SlotState::prune`]. Nothing here
//! reads a clock, touches a key or sleeps.

use std::time::{Duration, SystemTime};

/// How long after expiry an old authority stays in the bundle.
pub const PRUNE_AFTER_EXPIRY: Duration = Duration::from_secs(24 * 3600);
const THIRTY_DAYS: i64 = 30 * 86_400;
const SEVEN_DAYS: i64 = 7 * 86_400;

/// One of the two key slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotId {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl SlotId {
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// What kind of authority a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorityKind {
    /// The X.509 CA.
    X509,
    /// The JWT signing key.
    Jwt,
}

impl AuthorityKind {
    /// The key manager id of this kind's key in `slot`, as SPIRE names them
    /// (`x509-CA-A`, `x509-CA-B`, `JWT-Signer-A`, `JWT-Signer-B`).
    pub fn key_id(self, slot: SlotId) -> &'static str {
        match (self, slot) {
            (Self::X509, SlotId::A) => "x509-CA-A",
            (Self::X509, SlotId::B) => "x509-CA-B",
            (Self::Jwt, SlotId::A) => "JWT-Signer-A",
            (Self::Jwt, SlotId::B) => "JWT-Signer-B",
        }
    }
}

/// An authority as the schedule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityInfo {
    /// The slot its key lives in.
    pub slot: SlotId,
    /// Its id: SKI hex for X.509, `kid` for JWT.
    pub id: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl AuthorityInfo {
    fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

/// The authorities of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    /// The active authority, which signs.
    pub current: Option<AuthorityInfo>,
    /// A prepared authority, published but not yet signing.
    pub next: Option<AuthorityInfo>,
    /// Former authorities still in the bundle.
    pub old: Vec<AuthorityInfo>,
}

impl SlotState {
    /// Records a freshly prepared authority as next (after [`RotationAction::Prepare`]).
    pub fn set_next(&mut self, info: AuthorityInfo) {
        self.next = Some(info);
    }

    /// Next becomes current and the former current becomes old
    /// (after [`RotationAction::Activate`]). Does nothing without a next authority.
    pub fn activate(&mut self) {
        if let Some(next) = self.next.take()
            && let Some(current) = self.current.replace(next)
        {
            self.old.push(current);
        }
    }

    /// Drops the old authority `id` (after [`RotationAction::Prune`]).
    pub fn prune(&mut self, id: &str) {
        self.old.retain(|a| a.id != id);
    }
}

/// The state of both kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationState {
    /// X.509 CAs.
    pub x509: SlotState,
    /// JWT keys.
    pub jwt: SlotState,
}

impl RotationState {
    /// The slots of `kind`.
    pub fn slots(&self, kind: AuthorityKind) -> &SlotState {
        match kind {
            AuthorityKind::X509 => &self.x509,
            AuthorityKind::Jwt => &self.jwt,
        }
    }

    /// The slots of `kind`, mutably.
    pub fn slots_mut(&mut self, kind: AuthorityKind) -> &mut SlotState {
        match kind {
            AuthorityKind::X509 => &mut self.x509,
            AuthorityKind::Jwt => &mut self.jwt,
        }
    }
}

/// A step for the rotation driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationAction {
    /// Generate a key in `slot`, build the authority (CA certificate or JWT key id), publish
    /// its public part in the bundle, then call [`SlotState::set_next`].
    Prepare {
        /// Which kind.
        kind: AuthorityKind,
        /// The slot to (re)generate.
        slot: SlotId,
    },
    /// Switch signing to the next authority, then call [`SlotState::activate`].
    Activate {
        /// Which kind.
        kind: AuthorityKind,
    },
    /// Remove the expired authority `id` from the bundle, then call [`SlotState::prune`].
    Prune {
        /// Which kind.
        kind: AuthorityKind,
        /// The authority id.
        id: String,
    },
}

/// Remaining lifetime below which the next authority is prepared: `min(L/2, 30 days)`.
pub fn prepare_threshold(lifetime_secs: i64) -> i64 {
    (lifetime_secs / 2).min(THIRTY_DAYS)
}

/// Remaining lifetime below which the next authority is activated: `min(L/6, 7 days)`.
pub fn activate_threshold(lifetime_secs: i64) -> i64 {
    (lifetime_secs / 6).min(SEVEN_DAYS)
}

fn plan_kind(kind: AuthorityKind, s: &SlotState, now: i64, out: &mut Vec<RotationAction>) {
    let next_usable = s.next.as_ref().filter(|n| !n.expired(now));
    let prepare_slot =
        s.next.as_ref().map(|n| n.slot).or(s.current.as_ref().map(|c| c.slot.other()));
    let prepare_slot = prepare_slot.unwrap_or(SlotId::A);
    match &s.current {
        Some(current) if !current.expired(now) => {
            let lifetime = current.not_after - current.not_before;
            let remaining = current.not_after - now;
            let must_activate = remaining < activate_threshold(lifetime);
            if next_usable.is_none() && (must_activate || remaining < prepare_threshold(lifetime)) {
                out.push(RotationAction::Prepare { kind, slot: prepare_slot });
            }
            if must_activate {
                out.push(RotationAction::Activate { kind });
            }
        }
        // No current authority, or it expired: get one now.
        _ => {
            if next_usable.is_none() {
                out.push(RotationAction::Prepare { kind, slot: prepare_slot });
            }
            out.push(RotationAction::Activate { kind });
        }
    }
    let now_pruned = now.saturating_sub(PRUNE_AFTER_EXPIRY.as_secs() as i64);
    for old in &s.old {
        if now_pruned >= old.not_after {
            out.push(RotationAction::Prune { kind, id: old.id.clone() });
        }
    }
}

/// The actions due at `now`: X.509 first, then JWT; for each kind prepare before activate
/// before prune.
pub fn plan(now: SystemTime, state: &RotationState) -> Vec<RotationAction> {
    let now = ward_core::clock::unix_seconds(now);
    let mut out = Vec::new();
    plan_kind(AuthorityKind::X509, &state.x509, now, &mut out);
    plan_kind(AuthorityKind::Jwt, &state.jwt, now, &mut out);
    out
}
