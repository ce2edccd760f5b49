//! `spire.api.types.Selector` and the match-behavior enums <-> core selectors.

use ward_core::{Selector, SelectorMatch, SelectorSet};

use super::error::ConvertError;
use crate::spire::api::types;
use crate::spire::api::types::selector_match::MatchBehavior;

/// Parses one wire selector.
///
/// # Errors
/// [`ConvertError::MissingSelectorType`], [`ConvertError::SelectorTypeHasColon`] or
/// [`ConvertError::MissingSelectorValue`], checked in that order as SPIRE does.
pub fn selector_from_proto(s: &types::Selector) -> Result<Selector, ConvertError> {
    if s.r#type.is_empty() {
        return Err(ConvertError::MissingSelectorType);
    }
    if s.r#type.contains(':') {
        return Err(ConvertError::SelectorTypeHasColon);
    }
    if s.value.is_empty() {
        return Err(ConvertError::MissingSelectorValue);
    }
    Ok(Selector { selector_type: s.r#type.clone(), value: s.value.clone() })
}

/// Parses a list of wire selectors into a set (sorted, duplicates dropped). An empty list
/// gives an empty set; callers that require selectors check that themselves.
///
/// # Errors
/// The first selector's error, as [`selector_from_proto`].
pub fn selectors_from_proto(list: &[types::Selector]) -> Result<SelectorSet, ConvertError> {
    list.iter().map(selector_from_proto).collect::<Result<Vec<_>, _>>().map(SelectorSet::new)
}

/// Renders one selector.
pub fn selector_to_proto(s: &Selector) -> types::Selector {
    types::Selector { r#type: s.selector_type.clone(), value: s.value.clone() }
}

/// Renders a selector set in its sorted order.
pub fn selectors_to_proto(set: &SelectorSet) -> Vec<types::Selector> {
    set.as_slice().iter().map(selector_to_proto).collect()
}

/// Reads a `SelectorMatch.match` or `FederatesWithMatch.match` number (both enums share
/// their numbering).
///
/// # Errors
/// [`ConvertError::UnknownMatchBehavior`] for a number outside the enum.
pub fn selector_match_from_proto(value: i32) -> Result<SelectorMatch, ConvertError> {
    match MatchBehavior::try_from(value) {
        Ok(MatchBehavior::MatchExact) => Ok(SelectorMatch::Exact),
        Ok(MatchBehavior::MatchSubset) => Ok(SelectorMatch::Subset),
        Ok(MatchBehavior::MatchSuperset) => Ok(SelectorMatch::Superset),
        Ok(MatchBehavior::MatchAny) => Ok(SelectorMatch::Any),
        Err(_) => Err(ConvertError::UnknownMatchBehavior(value)),
    }
}

/// The wire number of a match mode (valid for both match enums).
pub fn selector_match_to_proto(m: SelectorMatch) -> i32 {
    let behavior = match m {
        SelectorMatch::Exact => MatchBehavior::MatchExact,
        SelectorMatch::Subset => MatchBehavior::MatchSubset,
        SelectorMatch::Superset => MatchBehavior::MatchSuperset,
        SelectorMatch::Any => MatchBehavior::MatchAny,
    };
    behavior as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(t: &str, v: &str) -> types::Selector {
        types::Selector { r#type: t.into(), value: v.into() }
    }

    #[test]
    fn parses_value_with_colons() {
        let s = selector_from_proto(&wire("k8s", "ns:prod")).unwrap();
        assert_eq!(s, Selector::parse("k8s:ns:prod").unwrap());
        assert_eq!(selector_to_proto(&s), wire("k8s", "ns:prod"));
    }

    #[test]
    fn rejects_bad_selectors_with_spire_texts() {
        let cases = [
            (wire("", "x"), ConvertError::MissingSelectorType, "missing selector type"),
            (wire("a:b", "x"), ConvertError::SelectorTypeHasColon, "selector type contains ':'"),
            (wire("unix", ""), ConvertError::MissingSelectorValue, "missing selector value"),
        ];
        for (input, want, text) in cases {
            let err = selector_from_proto(&input).unwrap_err();
            assert_eq!(err, want);
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn list_becomes_sorted_set() {
        let set = selectors_from_proto(&[
            wire("unix", "uid:1"),
            wire("unix", "gid:0"),
            wire("unix", "uid:1"),
        ])
        .unwrap();
        assert_eq!(selectors_to_proto(&set), vec![wire("unix", "gid:0"), wire("unix", "uid:1")]);
        assert_eq!(
            selectors_from_proto(&[wire("unix", "uid:1"), wire("", "x")]).unwrap_err(),
            ConvertError::MissingSelectorType
        );
    }

    #[test]
    fn match_modes_use_spire_numbers() {
        for (n, m) in [
            (0, SelectorMatch::Exact),
            (1, SelectorMatch::Subset),
            (2, SelectorMatch::Superset),
            (3, SelectorMatch::Any),
        ] {
            assert_eq!(selector_match_from_proto(n).unwrap(), m);
            assert_eq!(selector_match_to_proto(m), n);
        }
        assert_eq!(
            selector_match_from_proto(4).unwrap_err(),
            ConvertError::UnknownMatchBehavior(4)
        );
    }
}
