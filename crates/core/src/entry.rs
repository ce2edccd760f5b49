//! The registration entry model (SPIRE's `types.Entry`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dns_name::{DnsNameError, validate_dns_name};
use crate::id_policy::{IdPolicyError, verify_member_id, verify_workload_id};
use crate::selector::{Selector, SelectorSet};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The id of a registration entry: client-chosen (at most 255 of the characters
/// `[-._0-9A-Za-z]`, as SPIRE's datastore allows) or a UUIDv4 the server picks.
///
/// Decoding checks the same rules as [`EntryId::new`] (the store builds keys from ids).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct EntryId(String);

/// Why a string is not an entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryIdError {
    /// The id is empty.
    #[error("entry id cannot be empty")]
    Empty,
    /// The id is longer than 255 bytes.
    #[error("entry ID too long")]
    TooLong,
    /// The id has a character outside `[-._0-9A-Za-z]`.
    #[error("entry ID contains invalid characters")]
    BadChar,
}

impl EntryId {
    /// The longest entry id accepted.
    pub const MAX_LEN: usize = 255;

    /// Checks and wraps an entry id: 1 to 255 of the characters `[-._0-9A-Za-z]` (SPIRE's
    /// `validEntryIDChars`; a UUID is one).
    ///
    /// # Errors
    /// [`EntryIdError`] naming the broken rule.
    pub fn new(id: &str) -> Result<Self, EntryIdError> {
        if id.is_empty() {
            return Err(EntryIdError::Empty);
        }
        if id.len() > Self::MAX_LEN {
            return Err(EntryIdError::TooLong);
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
            return Err(EntryIdError::BadChar);
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EntryId {
    type Error = EntryIdError;
    fn try_from(id: String) -> Result<Self, EntryIdError> {
        Self::new(&id)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({})", self.0)
    }
}

/// A registration entry: which workloads (by selectors, under a parent) get which SPIFFE ID.
///
/// Every field of SPIRE's `spire.api.types.Entry`; semantics follow SPIRE (see the field docs).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RegistrationEntry {
    /// Entry id.
    pub id: EntryId,
    /// The SPIFFE ID given to matching workloads.
    pub spiffe_id: SpiffeId,
    /// The agent, node alias or entry under which the workload runs.
    pub parent_id: SpiffeId,
    /// Selectors a workload (or, for node aliases, an agent) must have; sorted, no duplicates.
    pub selectors: SelectorSet,
    /// X509-SVID lifetime in seconds; 0 means the server default.
    pub x509_svid_ttl: i32,
    /// JWT-SVID lifetime in seconds; 0 means the server default.
    pub jwt_svid_ttl: i32,
    /// Trust domains whose bundles the workload receives.
    pub federates_with: Vec<TrustDomain>,
    /// An SVID with this ID may call admin RPCs.
    pub admin: bool,
    /// An SVID with this ID may act as a downstream CA.
    pub downstream: bool,
    /// Unix seconds after which the entry is pruned; 0 means never.
    pub expires_at: i64,
    /// DNS names put into X509-SVIDs; the first becomes the subject common name.
    pub dns_names: Vec<String>,
    /// Bumped by every update.
    pub revision_number: i64,
    /// The SVID goes to SVIDStore plugins instead of the Workload API.
    pub store_svid: bool,
    /// Free-form hint surfaced to workloads (at most 1024 bytes).
    pub hint: String,
    /// Unix seconds when the server created the entry.
    pub created_at: i64,
}

/// Why a registration entry is not acceptable, with SPIRE's text for each rule.
///
/// SPIRE checks an entry twice: its API converts the request (the [`EntryCheck::Request`]
/// rules), then its datastore validates the record (the [`EntryCheck::Record`] rules, whose
/// texts start with "invalid registration entry"). The two answer with different prefixes,
/// so each variant says which check it belongs to ([`EntryError::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The parent ID is not a member of the server's trust domain.
    #[error("invalid parent ID: {0}")]
    ParentId(#[source] IdPolicyError),
    /// The SPIFFE ID is not a workload of the server's trust domain.
    #[error("invalid spiffe ID: {0}")]
    SpiffeId(#[source] IdPolicyError),
    /// A DNS name breaks SPIRE's rules ([`crate::dns_name`]).
    #[error("invalid DNS name: {0}")]
    BadDnsName(#[source] DnsNameError),
    /// No selectors.
    #[error("selector list is empty")]
    NoSelectors,
    /// The hint is longer than 1024 bytes.
    #[error("hint is too long, max length is 1024 characters")]
    HintTooLong,
    /// `store_svid` is set and the selectors have more than one type.
    #[error(
        "invalid registration entry: selector types must be the same when store SVID is enabled"
    )]
    StoreSvidSelectorTypes,
    /// The entry id as sent breaks the id rules.
    #[error("invalid registration entry: {0}")]
    Id(#[source] EntryIdError),
    /// `x509_svid_ttl` is negative.
    #[error("invalid registration entry: X509SvidTtl is not set")]
    NegativeX509SvidTtl,
    /// `jwt_svid_ttl` is negative.
    #[error("invalid registration entry: JwtSvidTtl is not set")]
    NegativeJwtSvidTtl,
}

/// Which of SPIRE's two checks an [`EntryError`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryCheck {
    /// The API's conversion of the request ("failed to convert entry").
    Request,
    /// The datastore's validation of the record ("failed to create entry" or "failed to
    /// update entry", then "datastore-validation").
    Record,
}

impl EntryError {
    /// The check that finds this error.
    pub fn check(&self) -> EntryCheck {
        match self {
            Self::StoreSvidSelectorTypes
            | Self::Id(_)
            | Self::NegativeX509SvidTtl
            | Self::NegativeJwtSvidTtl => EntryCheck::Record,
            _ => EntryCheck::Request,
        }
    }
}

/// SPIRE's rule for an entry's parent ID: a member of `td`.
pub(crate) fn check_parent_id(id: &SpiffeId, td: &TrustDomain) -> Result<(), EntryError> {
    verify_member_id(id, td).map_err(EntryError::ParentId)
}

/// SPIRE's rule for an entry's SPIFFE ID: a workload of `td`.
pub(crate) fn check_spiffe_id(id: &SpiffeId, td: &TrustDomain) -> Result<(), EntryError> {
    verify_workload_id(id, td).map_err(EntryError::SpiffeId)
}

pub(crate) fn check_dns_names(names: &[String]) -> Result<(), EntryError> {
    names.iter().try_for_each(|n| validate_dns_name(n).map_err(EntryError::BadDnsName))
}

pub(crate) fn check_selectors(selectors: &SelectorSet) -> Result<(), EntryError> {
    if selectors.is_empty() {
        return Err(EntryError::NoSelectors);
    }
    Ok(())
}

pub(crate) fn check_hint(hint: &str) -> Result<(), EntryError> {
    // SPIRE counts bytes.
    if hint.len() > RegistrationEntry::MAX_HINT_LEN {
        return Err(EntryError::HintTooLong);
    }
    Ok(())
}

pub(crate) fn check_x509_svid_ttl(ttl: i32) -> Result<(), EntryError> {
    if ttl < 0 {
        return Err(EntryError::NegativeX509SvidTtl);
    }
    Ok(())
}

pub(crate) fn check_jwt_svid_ttl(ttl: i32) -> Result<(), EntryError> {
    if ttl < 0 {
        return Err(EntryError::NegativeJwtSvidTtl);
    }
    Ok(())
}

impl RegistrationEntry {
    /// The longest hint accepted.
    pub const MAX_HINT_LEN: usize = 1024;

    /// An entry with these identities and selectors and every other field at its zero
    /// value (default TTLs, no federation, no DNS names, not admin or downstream, no
    /// expiry, revision 0, created at 0). Set the rest with struct update syntax.
    pub fn new(
        id: EntryId,
        spiffe_id: SpiffeId,
        parent_id: SpiffeId,
        selectors: SelectorSet,
    ) -> Self {
        Self {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            expires_at: 0,
            dns_names: Vec::new(),
            revision_number: 0,
            store_svid: false,
            hint: String::new(),
            created_at: 0,
        }
    }

    /// Whether this is a node-alias entry (its parent is the server).
    pub fn is_node_alias(&self, td: &TrustDomain) -> bool {
        self.parent_id.is_member_of(td) && self.parent_id.path() == "/spire/server"
    }

    /// Checks a new entry against SPIRE's rules for trust domain `td`, in SPIRE's order.
    ///
    /// # Errors
    /// The first [`EntryError`] found.
    pub fn validate(&self, td: &TrustDomain) -> Result<(), EntryError> {
        self.validate_with_id(td, Ok(()))
    }

    /// As [`RegistrationEntry::validate`], for an entry whose id as sent was `id` (the entry
    /// holds a stand-in when that id is invalid): SPIRE reports a bad id after the selector
    /// types rule and before the TTL rules.
    ///
    /// # Errors
    /// The first [`EntryError`] found.
    pub fn validate_with_id(
        &self,
        td: &TrustDomain,
        id: Result<(), EntryIdError>,
    ) -> Result<(), EntryError> {
        check_parent_id(&self.parent_id, td)?;
        check_spiffe_id(&self.spiffe_id, td)?;
        check_dns_names(&self.dns_names)?;
        check_selectors(&self.selectors)?;
        check_hint(&self.hint)?;
        self.check_store_svid()?;
        id.map_err(EntryError::Id)?;
        check_x509_svid_ttl(self.x509_svid_ttl)?;
        check_jwt_svid_ttl(self.jwt_svid_ttl)
    }

    /// SPIRE's rule for entries whose SVIDs go to SVIDStore plugins: every selector has the
    /// same type.
    ///
    /// # Errors
    /// [`EntryError::StoreSvidSelectorTypes`].
    pub fn check_store_svid(&self) -> Result<(), EntryError> {
        let mut types = self.selectors.as_slice().iter().map(|s| &s.selector_type);
        let first = types.next();
        if self.store_svid && types.any(|t| Some(t) != first) {
            return Err(EntryError::StoreSvidSelectorTypes);
        }
        Ok(())
    }

    /// The selectors as a slice.
    pub fn selector_list(&self) -> &[Selector] {
        self.selectors.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RegistrationEntry {
        RegistrationEntry {
            dns_names: vec!["web.example.org".into()],
            ..RegistrationEntry::new(
                EntryId::new("e1").unwrap(),
                SpiffeId::parse("spiffe://example.org/web").unwrap(),
                SpiffeId::parse("spiffe://example.org/spire/agent/x").unwrap(),
                SelectorSet::new(vec![Selector::parse("unix:uid:0").unwrap()]),
            )
        }
    }

    #[test]
    fn decoding_checks_the_entry_id_rules() {
        let long = "a".repeat(256);
        for (raw, want) in [
            ("", EntryIdError::Empty),
            ("a/b", EntryIdError::BadChar),
            (&long, EntryIdError::TooLong),
        ] {
            let err = serde_json::from_value::<EntryId>(serde_json::json!(raw)).unwrap_err();
            assert_eq!(err.to_string(), want.to_string(), "{raw}");
        }
        let id = EntryId::new("e-1.x_y").unwrap();
        let back: EntryId = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn entry_id_rules_are_spires() {
        assert_eq!(EntryId::new("").unwrap_err(), EntryIdError::Empty);
        assert_eq!(EntryId::new(&"a".repeat(256)).unwrap_err(), EntryIdError::TooLong);
        assert_eq!(EntryId::new(&"a".repeat(255)).unwrap().as_str().len(), 255);
        for bad in ["a b", "a/b", "a:b", "a%b", "a?b", "a#b", "é", "a+b"] {
            assert_eq!(EntryId::new(bad).unwrap_err(), EntryIdError::BadChar, "{bad}");
        }
        let ok = "Az09-._";
        assert_eq!(EntryId::new(ok).unwrap().as_str(), ok);
        assert_eq!(EntryIdError::BadChar.to_string(), "entry ID contains invalid characters");
    }

    #[test]
    fn validation_table_with_spire_texts() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(entry().validate(&td), Ok(()));
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        type Edit = Box<dyn Fn(&mut RegistrationEntry)>;
        let cases: Vec<(Edit, EntryError, &str)> = vec![
            (
                Box::new(move |e| e.parent_id = id("spiffe://other.org/x")),
                EntryError::ParentId(IdPolicyError::NotMember(
                    id("spiffe://other.org/x"),
                    td.clone(),
                )),
                "invalid parent ID: \"spiffe://other.org/x\" is not a member of trust domain \
                 \"example.org\"",
            ),
            (
                Box::new(move |e| e.parent_id = id("spiffe://example.org")),
                EntryError::ParentId(IdPolicyError::MemberPathEmpty(
                    id("spiffe://example.org"),
                    td.clone(),
                )),
                "invalid parent ID: \"spiffe://example.org\" is not a member of trust domain \
                 \"example.org\"; path is empty",
            ),
            (
                Box::new(move |e| e.spiffe_id = id("spiffe://other.org/x")),
                EntryError::SpiffeId(IdPolicyError::NotMember(
                    id("spiffe://other.org/x"),
                    td.clone(),
                )),
                "invalid spiffe ID: \"spiffe://other.org/x\" is not a member of trust domain \
                 \"example.org\"",
            ),
            (
                Box::new(move |e| e.spiffe_id = id("spiffe://example.org")),
                EntryError::SpiffeId(IdPolicyError::WorkloadPathEmpty(
                    id("spiffe://example.org"),
                    td.clone(),
                )),
                "invalid spiffe ID: \"spiffe://example.org\" is not a workload in trust domain \
                 \"example.org\"; path is empty",
            ),
            (
                Box::new(move |e| e.spiffe_id = id("spiffe://example.org/spire/x")),
                EntryError::SpiffeId(IdPolicyError::WorkloadPathReserved(
                    id("spiffe://example.org/spire/x"),
                    td.clone(),
                )),
                "invalid spiffe ID: \"spiffe://example.org/spire/x\" is not a workload in trust \
                 domain \"example.org\"; path is in the reserved namespace",
            ),
            (
                Box::new(|e| e.selectors = SelectorSet::default()),
                EntryError::NoSelectors,
                "selector list is empty",
            ),
            (
                Box::new(|e| e.x509_svid_ttl = -1),
                EntryError::NegativeX509SvidTtl,
                "invalid registration entry: X509SvidTtl is not set",
            ),
            (
                Box::new(|e| e.jwt_svid_ttl = -1),
                EntryError::NegativeJwtSvidTtl,
                "invalid registration entry: JwtSvidTtl is not set",
            ),
            (
                Box::new(|e| e.dns_names = vec!["-bad".into()]),
                EntryError::BadDnsName(DnsNameError::InvalidLabel("-bad".into())),
                "invalid DNS name: idna error\nidna: invalid label \"-bad\"",
            ),
            (
                Box::new(|e| e.hint = "h".repeat(1025)),
                EntryError::HintTooLong,
                "hint is too long, max length is 1024 characters",
            ),
            (
                // 600 characters but 1,200 bytes: SPIRE counts bytes.
                Box::new(|e| e.hint = "é".repeat(600)),
                EntryError::HintTooLong,
                "hint is too long, max length is 1024 characters",
            ),
            (
                Box::new(|e| {
                    e.store_svid = true;
                    e.selectors = SelectorSet::new(vec![
                        Selector::parse("unix:uid:0").unwrap(),
                        Selector::parse("k8s:ns:a").unwrap(),
                    ]);
                }),
                EntryError::StoreSvidSelectorTypes,
                "invalid registration entry: selector types must be the same when store SVID is \
                 enabled",
            ),
        ];
        for (mutate, want, text) in cases {
            let mut e = entry();
            mutate(&mut e);
            assert_eq!(e.validate(&td), Err(want.clone()));
            assert_eq!(want.to_string(), text);
        }
        // One selector type with store_svid is fine, as is `h` repeated 1024 times.
        let mut e = entry();
        e.store_svid = true;
        e.selectors = SelectorSet::new(vec![
            Selector::parse("unix:uid:0").unwrap(),
            Selector::parse("unix:gid:0").unwrap(),
        ]);
        e.hint = "h".repeat(1024);
        assert_eq!(e.validate(&td), Ok(()));
    }

    #[test]
    fn checks_run_in_spire_order() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut e = entry();
        e.x509_svid_ttl = -1;
        e.store_svid = true;
        e.selectors = SelectorSet::new(vec![
            Selector::parse("unix:uid:0").unwrap(),
            Selector::parse("k8s:ns:a").unwrap(),
        ]);
        let bad_id = Err(EntryIdError::BadChar);
        assert_eq!(e.validate_with_id(&td, bad_id), Err(EntryError::StoreSvidSelectorTypes));
        e.store_svid = false;
        assert_eq!(e.validate_with_id(&td, bad_id), Err(EntryError::Id(EntryIdError::BadChar)));
        assert_eq!(e.validate(&td), Err(EntryError::NegativeX509SvidTtl));
        assert_eq!(EntryError::NegativeX509SvidTtl.check(), EntryCheck::Record);
        e.hint = "h".repeat(1025);
        assert_eq!(e.validate(&td), Err(EntryError::HintTooLong));
        assert_eq!(EntryError::HintTooLong.check(), EntryCheck::Request);
    }
}
