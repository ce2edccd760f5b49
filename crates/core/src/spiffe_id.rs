//! SPIFFE IDs and trust domains, read as the SPIFFE-ID standard and go-spiffe v2 read them.
//!
//! A SPIFFE ID is `spiffe://<trust domain><path>`. The trust domain is one or more of
//! lower-case letters, digits, `.`, `-` and `_`. The path is empty or a sequence of
//! `/segment`, each segment one or more of letters, digits, `.`, `-` and `_`, never `.` or
//! `..`. There is no port, userinfo, query or fragment, and no trailing slash.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a SPIFFE ID, a trust domain name or a SPIFFE ID path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input is empty.
    #[error("cannot be empty")]
    Empty,
    /// The scheme is not exactly `spiffe`.
    #[error("scheme is missing or invalid")]
    WrongScheme,
    /// Nothing stands between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain has a character outside `a-z 0-9 . - _`.
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and \
         underscores"
    )]
    BadTrustDomainChar,
    /// The authority carries a port (`:`).
    #[error("trust domain cannot have a port")]
    HasPort,
    /// The authority carries userinfo (`@`).
    #[error("trust domain cannot have user info")]
    HasUserinfo,
    /// A `?` starts a query.
    #[error("cannot have a query")]
    HasQuery,
    /// A `#` starts a fragment.
    #[error("cannot have a fragment")]
    HasFragment,
    /// A path segment is empty (`//`).
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A path segment has a character outside `a-z A-Z 0-9 . - _`.
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    )]
    BadPathSegmentChar,
    /// A non-empty path does not start with `/`.
    #[error("path must have a leading slash")]
    NoLeadingSlash,
}

fn is_trust_domain_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn validate_trust_domain_name(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    for b in name.bytes() {
        if !is_trust_domain_char(b) {
            return Err(authority_char_error(b));
        }
    }
    Ok(())
}

fn authority_char_error(b: u8) -> SpiffeIdError {
    match b {
        b':' => SpiffeIdError::HasPort,
        b'@' => SpiffeIdError::HasUserinfo,
        b'?' => SpiffeIdError::HasQuery,
        b'#' => SpiffeIdError::HasFragment,
        _ => SpiffeIdError::BadTrustDomainChar,
    }
}

/// Checks a SPIFFE ID path: empty, or `/segment` repeated.
///
/// # Errors
/// The first rule the path breaks.
pub fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::NoLeadingSlash);
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        for b in segment.bytes() {
            if !is_path_segment_char(b) {
                return Err(match b {
                    b'?' => SpiffeIdError::HasQuery,
                    b'#' => SpiffeIdError::HasFragment,
                    _ => SpiffeIdError::BadPathSegmentChar,
                });
            }
        }
    }
    Ok(())
}

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`).
    ///
    /// # Errors
    /// [`SpiffeIdError`] naming the broken rule.
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        validate_trust_domain_name(name)?;
        Ok(Self(name.to_owned()))
    }

    /// Parses either a bare name or a SPIFFE ID (`spiffe://example.org/...`), taking the
    /// trust domain of the latter, as go-spiffe's `TrustDomainFromString` does.
    ///
    /// # Errors
    /// [`SpiffeIdError`] naming the broken rule.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.contains(":/") { Ok(SpiffeId::parse(s)?.trust_domain().clone()) } else { Self::new(s) }
    }

    /// The bare name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself, `spiffe://<name>`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            id: format!("{SCHEME_PREFIX}{}", self.0),
            td_end: SCHEME_PREFIX.len() + self.0.len(),
        }
    }

    /// The SPIFFE ID `spiffe://<name><path>`.
    ///
    /// # Errors
    /// [`SpiffeIdError`] if `path` breaks a path rule.
    pub fn spiffe_id(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::from_parts(self, path)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A SPIFFE ID such as `spiffe://example.org/ns/prod/sa/web`.
///
/// Stored as its canonical string, so [`SpiffeId::as_str`] and comparisons are free.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the trust domain ends and the path begins.
    td_end: usize,
}

impl SpiffeId {
    /// The longest SPIFFE ID, in bytes, that ward's CA puts into an SVID.
    ///
    /// The parser accepts longer IDs (as go-spiffe does); issuance refuses them.
    pub const MAX_SVID_LEN: usize = 2048;

    /// Parses `spiffe://<trust domain><path>`.
    ///
    /// # Errors
    /// [`SpiffeIdError`] naming the first broken rule.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let td_end = Self::check(s)?;
        Ok(Self { id: s.to_owned(), td_end })
    }

    /// [`SpiffeId::parse`] keeping `s` as the ID's storage (decoding a record needs no
    /// second copy).
    ///
    /// # Errors
    /// [`SpiffeIdError`] naming the first broken rule.
    pub fn parse_owned(s: String) -> Result<Self, SpiffeIdError> {
        let td_end = Self::check(&s)?;
        Ok(Self { id: s, td_end })
    }

    /// Checks `s` as [`SpiffeId::parse`] does; the byte offset where its trust domain ends.
    fn check(s: &str) -> Result<usize, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let Some(rest) = s.strip_prefix(SCHEME_PREFIX) else {
            return Err(SpiffeIdError::WrongScheme);
        };
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        for b in td.bytes() {
            if !is_trust_domain_char(b) {
                return Err(authority_char_error(b));
            }
        }
        validate_path(path)?;
        Ok(SCHEME_PREFIX.len() + td_len)
    }

    /// Builds `spiffe://<td><path>`; `path` is empty or starts with `/`.
    ///
    /// # Errors
    /// [`SpiffeIdError`] if `path` breaks a path rule.
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path)?;
        Ok(Self {
            id: format!("{SCHEME_PREFIX}{}{path}", td.as_str()),
            td_end: SCHEME_PREFIX.len() + td.as_str().len(),
        })
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain name part.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME_PREFIX.len()..self.td_end]
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.td_end..]
    }

    /// Whether this ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.as_str()
    }

    /// Whether this is the ID of a trust domain itself (empty path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    /// Whether the path is in the namespace SPIRE reserves for itself: `/spire` and
    /// everything under `/spire/` (the server, agents).
    pub fn is_reserved(&self) -> bool {
        let path = self.path();
        path == "/spire" || path.starts_with("/spire/")
    }

    /// Checks that this ID names something in `td`: a member of it with a non-empty path
    /// (SPIRE's `VerifyTrustDomainMemberID`).
    ///
    /// # Errors
    /// [`IdRoleError::NotMember`] or [`IdRoleError::MemberPathEmpty`].
    pub fn check_member_of(&self, td: &TrustDomain) -> Result<(), IdRoleError> {
        self.check_in(td)?;
        if self.path().is_empty() {
            return Err(IdRoleError::MemberPathEmpty(self.clone(), td.clone()));
        }
        Ok(())
    }

    /// Checks that this ID may be given to a workload of `td`: a member with a non-empty path
    /// outside the reserved namespace (SPIRE's `VerifyTrustDomainWorkloadID`).
    ///
    /// # Errors
    /// [`IdRoleError::NotMember`], [`IdRoleError::WorkloadPathEmpty`] or
    /// [`IdRoleError::WorkloadPathReserved`].
    pub fn check_workload_of(&self, td: &TrustDomain) -> Result<(), IdRoleError> {
        self.check_in(td)?;
        if self.path().is_empty() {
            return Err(IdRoleError::WorkloadPathEmpty(self.clone(), td.clone()));
        }
        if self.is_reserved() {
            return Err(IdRoleError::WorkloadPathReserved(self.clone(), td.clone()));
        }
        Ok(())
    }

    /// Checks that this ID names an agent of `td`: a member whose path is under
    /// `/spire/agent/` (SPIRE's `VerifyTrustDomainAgentID`).
    ///
    /// # Errors
    /// [`IdRoleError::NotMember`], [`IdRoleError::AgentPathEmpty`] or
    /// [`IdRoleError::AgentPathNotAgent`].
    pub fn check_agent_of(&self, td: &TrustDomain) -> Result<(), IdRoleError> {
        self.check_in(td)?;
        if self.path().is_empty() {
            return Err(IdRoleError::AgentPathEmpty(self.clone(), td.clone()));
        }
        if !self.path().starts_with("/spire/agent/") {
            return Err(IdRoleError::AgentPathNotAgent(self.clone(), td.clone()));
        }
        Ok(())
    }

    fn check_in(&self, td: &TrustDomain) -> Result<(), IdRoleError> {
        if self.is_member_of(td) {
            Ok(())
        } else {
            Err(IdRoleError::NotMember(self.clone(), td.clone()))
        }
    }
}

/// Why a SPIFFE ID cannot play a role (member, workload, agent) in a trust domain. The texts
/// are SPIRE's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdRoleError {
    /// The ID belongs to another trust domain.
    #[error("\"{0}\" is not a member of trust domain \"{1}\"")]
    NotMember(SpiffeId, TrustDomain),
    /// The ID is the trust domain's own ID where a member is needed.
    #[error("\"{0}\" is not a member of trust domain \"{1}\"; path is empty")]
    MemberPathEmpty(SpiffeId, TrustDomain),
    /// The ID is the trust domain's own ID where a workload is needed.
    #[error("\"{0}\" is not a workload in trust domain \"{1}\"; path is empty")]
    WorkloadPathEmpty(SpiffeId, TrustDomain),
    /// The ID is in the reserved `/spire` namespace where a workload is needed.
    #[error("\"{0}\" is not a workload in trust domain \"{1}\"; path is in the reserved namespace")]
    WorkloadPathReserved(SpiffeId, TrustDomain),
    /// The ID is the trust domain's own ID where an agent is needed.
    #[error("\"{0}\" is not an agent in trust domain \"{1}\"; path is empty")]
    AgentPathEmpty(SpiffeId, TrustDomain),
    /// The ID is outside `/spire/agent/` where an agent is needed.
    #[error("\"{0}\" is not an agent in trust domain \"{1}\"; path is not in the agent namespace")]
    AgentPathNotAgent(SpiffeId, TrustDomain),
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse_owned(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError as E;

    #[test]
    fn accepts_valid_ids() {
        for s in [
            "spiffe://example.org",
            "spiffe://a-b_c.9/x",
            "spiffe://example.org/ns/prod/sa/Web.App-1_x",
            "spiffe://example.org/...a/a..",
        ] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.as_str(), s);
        }
        let id = SpiffeId::parse("spiffe://example.org/a/b").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/a/b");
        assert_eq!(id.trust_domain(), TrustDomain::new("example.org").unwrap());
    }

    #[test]
    fn rejection_table() {
        let long_td = format!("spiffe://{}", "a".repeat(300));
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", E::Empty),
            ("http://example.org/a", E::WrongScheme),
            ("SPIFFE://example.org/a", E::WrongScheme),
            ("spiffe:/example.org", E::WrongScheme),
            ("example.org/a", E::WrongScheme),
            ("spiffe://", E::MissingTrustDomain),
            ("spiffe:///path", E::MissingTrustDomain),
            ("spiffe://Example.org", E::BadTrustDomainChar),
            ("spiffe://exa mple.org", E::BadTrustDomainChar),
            ("spiffe://example.org:8080/a", E::HasPort),
            ("spiffe://user@example.org/a", E::HasUserinfo),
            ("spiffe://example.org?x=1", E::HasQuery),
            ("spiffe://example.org/a?x=1", E::HasQuery),
            ("spiffe://example.org#frag", E::HasFragment),
            ("spiffe://example.org/a#frag", E::HasFragment),
            ("spiffe://example.org//a", E::EmptySegment),
            ("spiffe://example.org/a//b", E::EmptySegment),
            ("spiffe://example.org/./a", E::DotSegment),
            ("spiffe://example.org/a/..", E::DotSegment),
            ("spiffe://example.org/", E::TrailingSlash),
            ("spiffe://example.org/a/", E::TrailingSlash),
            ("spiffe://example.org/a b", E::BadPathSegmentChar),
            ("spiffe://example.org/a%20b", E::BadPathSegmentChar),
            ("spiffe://example.org/ü", E::BadPathSegmentChar),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).unwrap_err(), *want, "input {input:?}");
        }
        // A long trust domain is valid as far as the parser is concerned.
        assert!(SpiffeId::parse(&long_td).is_ok());
    }

    #[test]
    fn trust_domain_table() {
        assert_eq!(TrustDomain::new("").unwrap_err(), E::MissingTrustDomain);
        assert_eq!(TrustDomain::new("Example").unwrap_err(), E::BadTrustDomainChar);
        assert_eq!(TrustDomain::new("a:1").unwrap_err(), E::HasPort);
        assert_eq!(TrustDomain::new("u@a").unwrap_err(), E::HasUserinfo);
        assert_eq!(TrustDomain::new("a/b").unwrap_err(), E::BadTrustDomainChar);
        assert_eq!(TrustDomain::parse("spiffe://td.x/a").unwrap().as_str(), "td.x");
        assert_eq!(TrustDomain::parse("td.x").unwrap().id().as_str(), "spiffe://td.x");
    }

    #[test]
    fn from_parts_checks_path() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(SpiffeId::from_parts(&td, "a").unwrap_err(), E::NoLeadingSlash);
        assert_eq!(SpiffeId::from_parts(&td, "/a/").unwrap_err(), E::TrailingSlash);
        let id = SpiffeId::from_parts(&td, "/spire/server").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/spire/server");
        assert_eq!(id, SpiffeId::parse("spiffe://example.org/spire/server").unwrap());
    }

    #[test]
    fn accepts_ids_up_to_the_svid_limit() {
        let prefix = "spiffe://example.org/";
        let id = format!("{prefix}{}", "a".repeat(SpiffeId::MAX_SVID_LEN - prefix.len()));
        assert_eq!(SpiffeId::parse(&id).unwrap().as_str().len(), SpiffeId::MAX_SVID_LEN);
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = SpiffeId::parse("spiffe://example.org/a").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/a\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://Bad\"").is_err());
    }

    #[test]
    fn roles_in_a_trust_domain_with_spire_texts() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let text = |r: Result<(), IdRoleError>| r.unwrap_err().to_string();
        assert_eq!(id("spiffe://example.org/w").check_workload_of(&td), Ok(()));
        assert_eq!(id("spiffe://example.org/spire/agent/x").check_agent_of(&td), Ok(()));
        assert_eq!(id("spiffe://example.org/spire/server").check_member_of(&td), Ok(()));
        assert_eq!(
            text(id("spiffe://other.org/w").check_workload_of(&td)),
            "\"spiffe://other.org/w\" is not a member of trust domain \"example.org\""
        );
        assert_eq!(
            text(id("spiffe://example.org").check_member_of(&td)),
            "\"spiffe://example.org\" is not a member of trust domain \"example.org\"; path is \
             empty"
        );
        assert_eq!(
            text(id("spiffe://example.org").check_workload_of(&td)),
            "\"spiffe://example.org\" is not a workload in trust domain \"example.org\"; path is \
             empty"
        );
        for reserved in ["spiffe://example.org/spire", "spiffe://example.org/spire/server"] {
            assert_eq!(
                text(id(reserved).check_workload_of(&td)),
                format!(
                    "\"{reserved}\" is not a workload in trust domain \"example.org\"; path is in \
                     the reserved namespace"
                )
            );
        }
        assert!(!id("spiffe://example.org/spires").is_reserved());
        assert_eq!(
            text(id("spiffe://example.org").check_agent_of(&td)),
            "\"spiffe://example.org\" is not an agent in trust domain \"example.org\"; path is \
             empty"
        );
        assert_eq!(
            text(id("spiffe://example.org/spire/agent").check_agent_of(&td)),
            "\"spiffe://example.org/spire/agent\" is not an agent in trust domain \
             \"example.org\"; path is not in the agent namespace"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn valid_ids_round_trip(
                td in "[a-z0-9._-]{1,30}",
                segs in proptest::collection::vec("[a-zA-Z0-9._-]{1,12}", 0..6),
            ) {
                let segs: Vec<_> = segs.into_iter().filter(|s| s != "." && s != "..").collect();
                let path: String = segs.iter().map(|s| format!("/{s}")).collect();
                let s = format!("spiffe://{td}{path}");
                let id = SpiffeId::parse(&s).unwrap();
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert_eq!(id.trust_domain_name(), td.as_str());
                prop_assert_eq!(id.path(), path.as_str());
            }

            #[test]
            fn parse_never_panics(s in ".{0,80}") {
                let _ = SpiffeId::parse(&s);
                let _ = TrustDomain::parse(&s);
            }

            #[test]
            fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
                let s = String::from_utf8_lossy(&bytes);
                let _ = SpiffeId::parse(&s);
                let _ = TrustDomain::parse(&s);
            }
        }
    }
}
