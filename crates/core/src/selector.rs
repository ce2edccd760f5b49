//! Selectors (`type:value`), selector sets and SPIRE's four selector match modes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string or pair is not a selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The string has no `:` between type and value.
    #[error("selector must be formatted as type:value")]
    MissingSeparator,
    /// The type is empty.
    #[error("selector type cannot be empty")]
    EmptyType,
    /// The type contains `:`.
    #[error("selector type cannot contain ':'")]
    TypeHasColon,
    /// The value is empty.
    #[error("selector value cannot be empty")]
    EmptyValue,
}

/// One selector: a `type` (the attestor plugin name, such as `unix` or `k8s`) and a value,
/// which may itself contain `:` (`k8s:ns:prod`).
///
/// Decoding checks the same rules as [`Selector::new`], so a stored record or a log entry
/// cannot hold a selector that parsing would refuse.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "SelectorFields")]
pub struct Selector {
    /// The selector type: the attestor's name.
    pub selector_type: String,
    /// The value the attestor produced.
    pub value: String,
}

impl Selector {
    /// Builds a selector from its type and value, checking both.
    ///
    /// # Errors
    /// [`SelectorError`] when the type is empty or has `:`, or the value is empty.
    pub fn new(selector_type: &str, value: &str) -> Result<Self, SelectorError> {
        Self::check(selector_type, value)?;
        Ok(Self { selector_type: selector_type.to_owned(), value: value.to_owned() })
    }

    /// The rules of [`Selector::new`].
    fn check(selector_type: &str, value: &str) -> Result<(), SelectorError> {
        if selector_type.is_empty() {
            return Err(SelectorError::EmptyType);
        }
        if selector_type.contains(':') {
            return Err(SelectorError::TypeHasColon);
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue);
        }
        Ok(())
    }

    /// Parses `type:value`; everything after the first `:` is the value.
    ///
    /// # Errors
    /// [`SelectorError`] naming the broken rule.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let Some((t, v)) = s.split_once(':') else {
            return Err(SelectorError::MissingSeparator);
        };
        Self::new(t, v)
    }
}

/// A selector's fields as encoded, before [`Selector::new`] checks them.
#[derive(Deserialize)]
struct SelectorFields {
    selector_type: String,
    value: String,
}

impl TryFrom<SelectorFields> for Selector {
    type Error = SelectorError;
    fn try_from(f: SelectorFields) -> Result<Self, SelectorError> {
        // Keeps the decoded strings: no second copy.
        Self::check(&f.selector_type, &f.value)?;
        Ok(Self { selector_type: f.selector_type, value: f.value })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.selector_type, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({}:{})", self.selector_type, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A sorted set of selectors without duplicates.
///
/// [`SelectorSet::contains`] and the subset tests binary-search, so the order is an
/// invariant: decoding goes through [`SelectorSet::new`] and sorts and deduplicates
/// whatever list it reads (a record written by another version, a hand-made snapshot, a
/// log entry from a peer), so a decoded set answers exactly as a built one.
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(from = "Vec<Selector>")]
pub struct SelectorSet(Vec<Selector>);

impl SelectorSet {
    /// Builds a set: sorts and drops duplicates.
    pub fn new(mut selectors: Vec<Selector>) -> Self {
        selectors.sort();
        selectors.dedup();
        Self(selectors)
    }

    /// The selectors in order.
    pub fn as_slice(&self) -> &[Selector] {
        &self.0
    }

    /// Number of selectors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `s` is in the set.
    pub fn contains(&self, s: &Selector) -> bool {
        self.0.binary_search(s).is_ok()
    }

    /// Whether every selector of `self` is in `other`.
    pub fn is_subset_of(&self, other: &SelectorSet) -> bool {
        self.0.iter().all(|s| other.contains(s))
    }

    /// Whether `self` and `other` share a selector.
    pub fn intersects(&self, other: &SelectorSet) -> bool {
        self.0.iter().any(|s| other.contains(s))
    }
}

impl From<Vec<Selector>> for SelectorSet {
    fn from(v: Vec<Selector>) -> Self {
        Self::new(v)
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

/// How a filter's selectors are compared with an entry's, as SPIRE's `SelectorMatch`.
///
/// The wire values are those of `spire.api.types.SelectorMatch.MatchBehavior`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub enum SelectorMatch {
    /// The entry's selectors are exactly the requested ones.
    #[default]
    Exact,
    /// The entry's selectors are a subset of the requested ones.
    Subset,
    /// The entry's selectors are a superset of the requested ones.
    Superset,
    /// The entry has at least one of the requested selectors.
    Any,
}

impl SelectorMatch {
    /// Whether an entry with `entry` selectors matches a filter of `requested` selectors.
    pub fn matches(self, entry: &SelectorSet, requested: &SelectorSet) -> bool {
        match self {
            Self::Exact => entry == requested,
            Self::Subset => entry.is_subset_of(requested),
            Self::Superset => requested.is_subset_of(entry),
            Self::Any => entry.intersects(requested),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> SelectorSet {
        items.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn parse_table() {
        let ok = Selector::parse("k8s:ns:prod").unwrap();
        assert_eq!(ok.selector_type, "k8s");
        assert_eq!(ok.value, "ns:prod");
        assert_eq!(ok.to_string(), "k8s:ns:prod");
        let cases: &[(&str, SelectorError)] = &[
            ("", SelectorError::MissingSeparator),
            ("unix", SelectorError::MissingSeparator),
            (":uid:0", SelectorError::EmptyType),
            ("unix:", SelectorError::EmptyValue),
        ];
        for (input, want) in cases {
            assert_eq!(Selector::parse(input).unwrap_err(), *want, "input {input:?}");
        }
        assert_eq!(Selector::new("a:b", "c").unwrap_err(), SelectorError::TypeHasColon);
    }

    #[test]
    fn decoded_set_is_sorted_and_deduplicated() {
        let json = r#"[{"selector_type":"b","value":"1"},{"selector_type":"a","value":"1"},
            {"selector_type":"b","value":"1"}]"#;
        let s: SelectorSet = serde_json::from_str(json).unwrap();
        assert_eq!(s, set(&["a:1", "b:1"]));
        assert!(s.contains(&Selector::parse("a:1").unwrap()), "binary search finds a:1");
        assert!(set(&["a:1"]).is_subset_of(&s));
        // The encoding is unchanged: a built set round-trips to itself.
        let built = set(&["z:9", "a:1"]);
        let back: SelectorSet =
            serde_json::from_str(&serde_json::to_string(&built).unwrap()).unwrap();
        assert_eq!(back, built);
    }

    #[test]
    fn decoding_refuses_a_selector_that_parsing_refuses() {
        for (ty, value, want) in [
            ("", "1", SelectorError::EmptyType),
            ("a:b", "1", SelectorError::TypeHasColon),
            ("unix", "", SelectorError::EmptyValue),
        ] {
            let json = serde_json::json!({ "selector_type": ty, "value": value });
            let err = serde_json::from_value::<Selector>(json).unwrap_err();
            assert_eq!(err.to_string(), want.to_string(), "{ty}:{value}");
        }
        let ok: Selector =
            serde_json::from_str(r#"{"selector_type":"k8s","value":"ns:x"}"#).unwrap();
        assert_eq!(ok, Selector::parse("k8s:ns:x").unwrap());
    }

    #[test]
    fn set_sorts_and_dedups() {
        let s = set(&["b:1", "a:1", "b:1"]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.as_slice()[0].to_string(), "a:1");
    }

    #[test]
    fn match_modes() {
        let entry = set(&["a:1", "b:2"]);
        let cases = [
            (SelectorMatch::Exact, &["a:1", "b:2"][..], true),
            (SelectorMatch::Exact, &["a:1"][..], false),
            (SelectorMatch::Subset, &["a:1", "b:2", "c:3"][..], true),
            (SelectorMatch::Subset, &["a:1"][..], false),
            (SelectorMatch::Superset, &["a:1"][..], true),
            (SelectorMatch::Superset, &["a:1", "c:3"][..], false),
            (SelectorMatch::Any, &["c:3", "b:2"][..], true),
            (SelectorMatch::Any, &["c:3"][..], false),
        ];
        for (mode, requested, want) in cases {
            assert_eq!(mode.matches(&entry, &set(requested)), want, "{mode:?} {requested:?}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn valid_selectors_round_trip(t in "[a-z0-9_-]{1,12}", v in "[ -~]{1,40}") {
                let sel = Selector::new(&t, &v).unwrap();
                let parsed = Selector::parse(&sel.to_string()).unwrap();
                prop_assert_eq!(&parsed.selector_type, &t);
                prop_assert_eq!(&parsed.value, &v);
            }

            #[test]
            fn parse_never_panics(s in ".{0,80}") {
                let _ = Selector::parse(&s);
            }

            #[test]
            fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
                let _ = Selector::parse(&String::from_utf8_lossy(&bytes));
            }
        }
    }
}
