//! ValidateJWTSVID's checks, with SPIRE's messages, and the claims as a protobuf `Struct`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use prost_types::value::Kind;
use serde_json::{Map, Value};
use ward_core::{Bundle, JwtSvidError, SpiffeId, TrustDomain, UnverifiedJwtSvid};

/// Validates `token` for `audience` against the bundle of its subject's trust domain among
/// `bundles`. The error is the message SPIRE v1.13.3 returns for the same failure
/// (`pkg/common/jwtsvid/validate.go`), sent with `InvalidArgument`.
pub(super) fn validate(
    token: &str,
    audience: &str,
    bundles: &BTreeMap<TrustDomain, Arc<Bundle>>,
    now: SystemTime,
) -> Result<(SpiffeId, Map<String, Value>), String> {
    let unverified = UnverifiedJwtSvid::parse(token).map_err(|e| match e {
        JwtSvidError::MissingKeyId => "token header missing key id".to_owned(),
        JwtSvidError::MissingSubject => "token missing subject claim".to_owned(),
        JwtSvidError::InvalidSubject(e) => format!("token has in invalid subject claim: {e}"),
        other => format!("unable to parse JWT token: {other}"),
    })?;
    if !unverified.claims().contains_key("exp") {
        return Err("token missing exp claim".to_owned());
    }
    let td = unverified.spiffe_id().trust_domain();
    let bundle = bundles
        .get(&td)
        .ok_or_else(|| format!("no keys found for trust domain {:?}", td.as_str()))?;
    let token_audience = unverified.claims().get("aud").cloned();
    let key_id = unverified.key_id().to_owned();
    let svid = unverified.verify(bundle, &[audience], now).map_err(|e| match e {
        JwtSvidError::KeyNotFound(_) | JwtSvidError::TrustDomainMismatch { .. } => {
            format!("public key {key_id:?} not found in trust domain {:?}", td.as_str())
        }
        JwtSvidError::BadSignature => {
            "go-jose/go-jose: error in cryptographic primitive".to_owned()
        }
        JwtSvidError::Expired => "token has expired".to_owned(),
        JwtSvidError::NotYetValid => {
            "go-jose/go-jose/jwt: validation failed, token not valid yet (nbf)".to_owned()
        }
        JwtSvidError::AudienceMismatch(_) | JwtSvidError::MissingAudience => format!(
            "expected audience in [{audience:?}] (audience={})",
            go_string_list(token_audience.as_ref())
        ),
        other => other.to_string(),
    })?;
    Ok((svid.spiffe_id, svid.claims))
}

/// A token's `aud` as Go's `%q` prints a string slice: `["a" "b"]`.
fn go_string_list(aud: Option<&Value>) -> String {
    let items: Vec<String> = match aud {
        Some(Value::String(s)) => vec![format!("{s:?}")],
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).map(|s| format!("{s:?}")).collect()
        }
        _ => Vec::new(),
    };
    format!("[{}]", items.join(" "))
}

/// The claims a caller is shown: every claim of a token from the agent's own trust domain;
/// of a foreign one only `sub`, `exp`, `aud` and the `allowed` claims. A single-string
/// `aud` becomes a one-element list, as SPIRE returns it.
pub(super) fn shown_claims(
    mut claims: Map<String, Value>,
    foreign: bool,
    allowed: &BTreeSet<String>,
) -> prost_types::Struct {
    if foreign {
        claims.retain(|name, _| {
            matches!(name.as_str(), "sub" | "exp" | "aud") || allowed.contains(name)
        });
    }
    if let Some(Value::String(aud)) = claims.get("aud") {
        let list = Value::Array(vec![Value::String(aud.clone())]);
        claims.insert("aud".to_owned(), list);
    }
    to_struct(claims)
}

fn to_struct(map: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        // JSON numbers become doubles in a protobuf Struct, as in Go's structpb.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(list) => Kind::ListValue(prost_types::ListValue {
            values: list.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_foreign_token_shows_only_sub_exp_aud_and_allowed_claims_with_aud_as_a_list() {
        let c = claims(json!({"sub": "spiffe://x/y", "exp": 5, "aud": "a", "iat": 1, "ok": true}));
        let allowed: BTreeSet<String> = ["ok".to_owned()].into();
        let s = shown_claims(c.clone(), true, &allowed);
        let mut names: Vec<&str> = s.fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["aud", "exp", "ok", "sub"]);
        let aud = &s.fields["aud"];
        assert_eq!(
            aud.kind,
            Some(Kind::ListValue(prost_types::ListValue {
                values: vec![prost_types::Value { kind: Some(Kind::StringValue("a".into())) }]
            }))
        );
        assert_eq!(shown_claims(c, false, &BTreeSet::new()).fields.len(), 5);
    }

    #[test]
    fn audience_lists_print_as_go_quotes_them() {
        assert_eq!(go_string_list(Some(&json!(["a", "b"]))), r#"["a" "b"]"#);
        assert_eq!(go_string_list(Some(&json!("a"))), r#"["a"]"#);
    }
}
