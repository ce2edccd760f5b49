//! The registration entry model (SPIRE's `types.Entry`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::selector::{Selector, SelectorSet};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The id of a registration entry: client-chosen (at most 255 characters of a restricted
/// set) or a UUIDv4 the server picks.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId(String);

/// Why a string is not an entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryIdError {
    /// The id is empty.
    #[error("entry id cannot be empty")]
    Empty,
    /// The id is longer than 255 characters.
    #[error("entry id too long")]
    TooLong,
    /// The id has a character outside the allowed set.
    #[error("entry id contains invalid characters")]
    BadChar,
}

impl EntryId {
    /// The longest entry id accepted.
    pub const MAX_LEN: usize = 255;

    /// Checks and wraps an entry id. Allowed characters are printable ASCII other than
    /// space, as SPIRE allows for user-chosen ids.
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
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EntryIdError::BadChar);
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
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
    /// Free-form hint surfaced to workloads (at most 1024 characters).
    pub hint: String,
    /// Unix seconds when the server created the entry.
    pub created_at: i64,
}

/// Why a registration entry is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The SPIFFE ID is outside the server's trust domain.
    #[error("invalid spiffe ID: \"{0}\" is not a member of trust domain \"{1}\"")]
    SpiffeIdNotMember(SpiffeId, TrustDomain),
    /// The SPIFFE ID has an empty path.
    #[error("invalid spiffe ID: path cannot be empty")]
    SpiffeIdEmptyPath,
    /// The SPIFFE ID is in the reserved `/spire` namespace.
    #[error("invalid spiffe ID: \"{0}\" is reserved for SPIRE")]
    SpiffeIdReserved(SpiffeId),
    /// The parent ID is outside the server's trust domain.
    #[error("invalid parent ID: \"{0}\" is not a member of trust domain \"{1}\"")]
    ParentIdNotMember(SpiffeId, TrustDomain),
    /// The parent ID has an empty path.
    #[error("invalid parent ID: path cannot be empty")]
    ParentIdEmptyPath,
    /// No selectors.
    #[error("selector list is empty")]
    NoSelectors,
    /// A TTL is negative.
    #[error("{0} cannot be negative")]
    NegativeTtl(&'static str),
    /// A DNS name is malformed.
    #[error("invalid DNS name \"{0}\"")]
    BadDnsName(String),
    /// The hint is longer than 1024 characters.
    #[error("hint is too long, max length is 1024 characters")]
    HintTooLong,
    /// A node (alias) entry federates with another trust domain.
    #[error("node entries can not federate")]
    NodeEntryFederates,
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

    /// Checks the entry against SPIRE's rules for trust domain `td`.
    ///
    /// # Errors
    /// The first [`EntryError`] found.
    pub fn validate(&self, td: &TrustDomain) -> Result<(), EntryError> {
        if !self.parent_id.is_member_of(td) {
            return Err(EntryError::ParentIdNotMember(self.parent_id.clone(), td.clone()));
        }
        if self.parent_id.path().is_empty() {
            return Err(EntryError::ParentIdEmptyPath);
        }
        if !self.spiffe_id.is_member_of(td) {
            return Err(EntryError::SpiffeIdNotMember(self.spiffe_id.clone(), td.clone()));
        }
        if self.spiffe_id.path().is_empty() {
            return Err(EntryError::SpiffeIdEmptyPath);
        }
        let path = self.spiffe_id.path();
        if path == "/spire" || path.starts_with("/spire/") {
            return Err(EntryError::SpiffeIdReserved(self.spiffe_id.clone()));
        }
        if self.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        if self.x509_svid_ttl < 0 {
            return Err(EntryError::NegativeTtl("x509SvidTtl"));
        }
        if self.jwt_svid_ttl < 0 {
            return Err(EntryError::NegativeTtl("jwtSvidTtl"));
        }
        for name in &self.dns_names {
            if !is_valid_dns_name(name) {
                return Err(EntryError::BadDnsName(name.clone()));
            }
        }
        if self.hint.chars().count() > Self::MAX_HINT_LEN {
            return Err(EntryError::HintTooLong);
        }
        if self.is_node_alias(td) && !self.federates_with.is_empty() {
            return Err(EntryError::NodeEntryFederates);
        }
        Ok(())
    }

    /// The selectors as a slice.
    pub fn selector_list(&self) -> &[Selector] {
        self.selectors.as_slice()
    }
}

/// Whether `name` is a DNS name SPIRE accepts for an entry: labels of letters, digits and
/// `-` (not at either end), at most 63 bytes each, 253 in all; a leading `*.` wildcard is
/// allowed.
pub fn is_valid_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
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
    fn entry_id_rules() {
        assert_eq!(EntryId::new("").unwrap_err(), EntryIdError::Empty);
        assert_eq!(EntryId::new(&"a".repeat(256)).unwrap_err(), EntryIdError::TooLong);
        assert_eq!(EntryId::new("a b").unwrap_err(), EntryIdError::BadChar);
        assert_eq!(EntryId::new("abc-123").unwrap().as_str(), "abc-123");
    }

    #[test]
    fn validation_table() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(entry().validate(&td), Ok(()));
        let other = SpiffeId::parse("spiffe://other.org/x").unwrap();
        type Edit = Box<dyn Fn(&mut RegistrationEntry)>;
        let cases: Vec<(Edit, EntryError)> = vec![
            (
                Box::new(|e| {
                    e.spiffe_id = SpiffeId::parse("spiffe://example.org/spire/x").unwrap()
                }),
                EntryError::SpiffeIdReserved(
                    SpiffeId::parse("spiffe://example.org/spire/x").unwrap(),
                ),
            ),
            (
                Box::new(|e| e.spiffe_id = SpiffeId::parse("spiffe://example.org").unwrap()),
                EntryError::SpiffeIdEmptyPath,
            ),
            (
                Box::new(|e| e.parent_id = SpiffeId::parse("spiffe://other.org/x").unwrap()),
                EntryError::ParentIdNotMember(other.clone(), td.clone()),
            ),
            (Box::new(|e| e.selectors = SelectorSet::default()), EntryError::NoSelectors),
            (Box::new(|e| e.x509_svid_ttl = -1), EntryError::NegativeTtl("x509SvidTtl")),
            (
                Box::new(|e| e.dns_names = vec!["-bad".into()]),
                EntryError::BadDnsName("-bad".into()),
            ),
            (Box::new(|e| e.hint = "h".repeat(1025)), EntryError::HintTooLong),
        ];
        for (mutate, want) in cases {
            let mut e = entry();
            mutate(&mut e);
            assert_eq!(e.validate(&td), Err(want));
        }
    }

    #[test]
    fn dns_names() {
        assert!(is_valid_dns_name("a.b-c.example"));
        assert!(is_valid_dns_name("*.example.org"));
        assert!(!is_valid_dns_name("a..b"));
        assert!(!is_valid_dns_name(""));
        assert!(!is_valid_dns_name(&"a".repeat(64)));
    }
}
