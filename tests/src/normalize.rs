//! Normalising what a CLI printed so that the output of two servers can be compared.
//!
//! Two servers given the same commands differ in values that are meant to differ: generated
//! entry ids and join tokens, timestamps, serial numbers, keys, certificates, JWTs and the
//! temporary directories they run in. [`Normalizer::normalize`] replaces each of those with a
//! placeholder that keeps what matters for compatibility:
//!
//! - values the caller named (a captured token, an authority id, the temp dir) become
//!   `<name>`, so a later command that prints the same value is recognised;
//! - a certificate becomes `<cert#n ca=… life=… uri=… dns=…>` and a JWT `<jwt alg=… sub=… aud=…
//!   ttl=…>`: their content is compared, their bytes are not;
//! - other generated values (UUIDs, long hex and base64 runs, key ids) become `<kind#n>`,
//!   numbered by first appearance within one output, so "the same value twice" and "two
//!   different values" stay distinguishable;
//! - times near now become `<time>` / `<unix>`; far-future times (year 2090 and later) are
//!   inputs the script chose and are kept.
//!
//! Output that parses as JSON is walked value by value and printed again with sorted keys,
//! so whitespace and key order do not matter while array order still does, with one
//! exception: in a JWK set (a `keys` array) the keys whose id was captured are ordered by their
//! name, because go-spiffe prints a bundle's JWT keys from a map, in random order.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use regex::{Captures, Regex};
use serde_json::Value;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Times in years before this are "now-ish" and normalised; later ones are script inputs.
const KEEP_FROM_YEAR: u32 = 2090;

/// Builds a regex from a literal pattern written in this file.
fn re(pattern: &str) -> Regex {
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("patterns in this file are valid")
}

static PEM: LazyLock<Regex> = LazyLock::new(|| {
    re(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]*?)-----END ([A-Z0-9 ]+)-----\r?\n?")
});
static JWT: LazyLock<Regex> =
    LazyLock::new(|| re(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"));
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    re(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
});
/// Go's `time.Time.String()` (`2006-01-02 15:04:05.999 -0700 MST`) and RFC 3339.
static TIME: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"\b(\d{4})-\d{2}-\d{2}(?:[ T])\d{2}:\d{2}:\d{2}(?:\.\d+)?(?: ?[+-]\d{2}:?\d{2}(?: [A-Z]{2,5}| [+-]\d{2,4})?|Z| UTC)?",
    )
});
/// Unix seconds from 2020-09 to 2033-05.
static UNIX: LazyLock<Regex> = LazyLock::new(|| re(r"\b1[6-9]\d{8}\b"));
static SERIAL_LINE: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?m)^(Serial number[ \t]*:[ \t]*)[0-9]+[ \t]*$"));
static AUTHORITY_LINE: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?m)^([ \t]*(?:Authority ID|Subject Key ID|Key ID)[ \t]*:[ \t]*)(\S+)[ \t]*$")
});
static HEX: LazyLock<Regex> = LazyLock::new(|| re(r"\b[0-9a-fA-F]{32,}\b"));
static BASE64: LazyLock<Regex> = LazyLock::new(|| re(r"[A-Za-z0-9+/_-]{40,}={0,2}"));

/// JWT lifetimes above this many seconds are printed as `<long>`.
const LONG_JWT_TTL: i64 = 3 * 3600;

/// JSON keys whose string values are key ids or authority ids.
const KEY_ID_KEYS: &[&str] = &["kid", "key_id", "authority_id"];
/// JSON keys whose values are base64 DER certificates.
const CERT_KEYS: &[&str] = &["asn1", "x509_svid", "root_cas"];
/// JSON keys whose values are serial numbers.
const SERIAL_KEYS: &[&str] = &["x509_svid_serial_number", "serial_number"];

/// Rewrites outputs as described in the module docs. One normaliser serves one server: the
/// literal substitutions (its temp dir, values captured from its earlier outputs) are its own.
#[derive(Debug, Default, Clone)]
pub struct Normalizer {
    /// (value, placeholder), longest value first.
    literals: Vec<(String, String)>,
}

impl Normalizer {
    /// A normaliser with no literal substitutions.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on `value` is printed as `<name>`. Empty values are ignored.
    pub fn literal(&mut self, value: &str, name: &str) {
        if value.is_empty() {
            return;
        }
        self.literals.retain(|(v, _)| v != value);
        self.literals.push((value.to_owned(), format!("<{name}>")));
        self.literals.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    /// Normalises one output (stdout or stderr of one command).
    pub fn normalize(&self, text: &str) -> String {
        let mut interner = Interner::default();
        let trimmed = text.trim();
        if (trimmed.starts_with('{') || trimmed.starts_with('['))
            && let Ok(value) = serde_json::from_str::<Value>(trimmed)
        {
            let value = self.json_value(value, None, &mut interner);
            // Printing a `Value` cannot fail.
            let mut out = serde_json::to_string_pretty(&value).unwrap_or_default();
            out.push('\n');
            return out;
        }
        self.text(text, &mut interner)
    }

    fn json_value(&self, value: Value, key: Option<&str>, interner: &mut Interner) -> Value {
        match value {
            Value::String(s) => Value::String(self.json_string(&s, key, interner)),
            Value::Number(n) => match n.as_i64() {
                Some(v) if UNIX.is_match(&v.to_string()) => Value::String("<unix>".into()),
                _ => Value::Number(n),
            },
            Value::Array(mut items) => {
                if key == Some("keys") {
                    items.sort_by_cached_key(|v| self.captured_key_id(v));
                }
                Value::Array(items.into_iter().map(|v| self.json_value(v, key, interner)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = self.json_value(v, Some(&k), interner);
                        (k, v)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// The captured name of a JWK's `kid`, if any (keys without one sort first, in the order
    /// printed).
    fn captured_key_id(&self, jwk: &Value) -> Option<String> {
        let kid = jwk.get("kid")?.as_str()?;
        Some(self.literals(kid)).filter(|named| named.starts_with('<'))
    }

    fn json_string(&self, s: &str, key: Option<&str>, interner: &mut Interner) -> String {
        let s = self.literals(s);
        if s.starts_with('<') {
            return s;
        }
        match key {
            Some(k) if KEY_ID_KEYS.contains(&k) && !s.is_empty() => interner.label("kid", &s),
            Some(k) if SERIAL_KEYS.contains(&k) && !s.is_empty() => "<serial>".into(),
            _ if is_cert_key(key) => {
                match base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
                    Ok(der) => describe_cert(&der, interner),
                    Err(_) => self.generic(&s, interner),
                }
            }
            _ => self.generic(&s, interner),
        }
    }

    fn literals(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (value, name) in &self.literals {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), name);
            }
        }
        out
    }

    fn text(&self, text: &str, interner: &mut Interner) -> String {
        let text = self.literals(text);
        let text = SERIAL_LINE.replace_all(&text, "${1}<serial>").into_owned();
        let text = AUTHORITY_LINE
            .replace_all(&text, |c: &Captures<'_>| {
                let value = &c[2];
                if value.starts_with('<') {
                    format!("{}{}", &c[1], value)
                } else {
                    format!("{}{}", &c[1], interner.label("kid", value))
                }
            })
            .into_owned();
        self.generic(&text, interner)
    }

    /// The rules that apply anywhere: PEM, JWT, UUID, times, hex, base64.
    fn generic(&self, text: &str, interner: &mut Interner) -> String {
        let text = PEM
            .replace_all(text, |c: &Captures<'_>| {
                let kind = &c[1];
                let body: String = c[2].chars().filter(|ch| !ch.is_whitespace()).collect();
                let der = base64::engine::general_purpose::STANDARD.decode(body.as_bytes());
                let label = match (kind, der) {
                    ("CERTIFICATE", Ok(der)) => describe_cert(&der, interner),
                    (_, Ok(der)) => interner.label(&kind.to_lowercase().replace(' ', "-"), &der),
                    (_, Err(_)) => format!("<unparsable {kind}>"),
                };
                format!("{label}\n")
            })
            .into_owned();
        let text =
            JWT.replace_all(&text, |c: &Captures<'_>| describe_jwt(&c[0], interner)).into_owned();
        let text =
            UUID.replace_all(&text, |c: &Captures<'_>| interner.label("uuid", &c[0])).into_owned();
        let text = TIME
            .replace_all(&text, |c: &Captures<'_>| {
                let year: u32 = c[1].parse().unwrap_or(0);
                if year >= KEEP_FROM_YEAR { c[0].to_owned() } else { "<time>".to_owned() }
            })
            .into_owned();
        let text = UNIX.replace_all(&text, "<unix>").into_owned();
        let text =
            HEX.replace_all(&text, |c: &Captures<'_>| interner.label("hex", &c[0])).into_owned();
        BASE64.replace_all(&text, |c: &Captures<'_>| interner.label("b64", &c[0])).into_owned()
    }
}

fn is_cert_key(key: Option<&str>) -> bool {
    matches!(key, Some(k) if k == "x5c" || CERT_KEYS.contains(&k))
}

/// Numbers distinct values of one kind by first appearance: `<kind#1>`, `<kind#2>`, …
#[derive(Debug, Default)]
struct Interner {
    seen: HashMap<String, HashMap<Vec<u8>, usize>>,
}

impl Interner {
    fn label(&mut self, kind: &str, value: impl AsRef<[u8]>) -> String {
        let n = self.number(kind, value.as_ref());
        format!("<{kind}#{n}>")
    }

    fn number(&mut self, kind: &str, value: &[u8]) -> usize {
        let values = self.seen.entry(kind.to_owned()).or_default();
        let next = values.len() + 1;
        *values.entry(value.to_vec()).or_insert(next)
    }
}

/// `<cert#n ca=… life=…s uri=… dns=…>` for a DER certificate (or `<bad-cert#n>`); `life` is
/// from not-before to not-after.
fn describe_cert(der: &[u8], interner: &mut Interner) -> String {
    let n = interner.number("cert", der);
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return format!("<bad-cert#{n}>");
    };
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    let life = validity.not_after.timestamp() - validity.not_before.timestamp();
    let mut out = format!("<cert#{n} ca={} life={life}s", cert.is_ca());
    if !uris.is_empty() {
        out.push_str(&format!(" uri={}", uris.join(",")));
    }
    if !dns.is_empty() {
        out.push_str(&format!(" dns={}", dns.join(",")));
    }
    out.push('>');
    out
}

/// `<jwt alg=… kid=<kid#n> sub=… aud=[…] ttl=…s claims=…>` for a compact JWS.
fn describe_jwt(token: &str, interner: &mut Interner) -> String {
    let mut parts = token.split('.');
    let decode = |part: Option<&str>| -> Option<Value> {
        let bytes =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part?.as_bytes()).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let (Some(header), Some(claims)) = (decode(parts.next()), decode(parts.next())) else {
        return interner.label("b64", token);
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::from("<jwt");
    for field in ["alg", "typ"] {
        if let Some(v) = header.get(field) {
            out.push_str(&format!(" {field}={}", text(v)));
        }
    }
    if let Some(kid) = header.get("kid") {
        out.push_str(&format!(" kid={}", interner.label("kid", text(kid))));
    }
    if let Some(sub) = claims.get("sub") {
        out.push_str(&format!(" sub={}", text(sub)));
    }
    if let Some(aud) = claims.get("aud") {
        let list = match aud {
            Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
            other => text(other),
        };
        out.push_str(&format!(" aud=[{list}]"));
    }
    if let (Some(exp), Some(iat)) =
        (claims.get("exp").and_then(Value::as_i64), claims.get("iat").and_then(Value::as_i64))
    {
        // A lifetime above three hours has been capped at the signing key's expiry, which
        // depends on when each server started: only its being long is comparable.
        let ttl = exp - iat;
        if ttl > LONG_JWT_TTL {
            out.push_str(" ttl=<long>");
        } else {
            out.push_str(&format!(" ttl={ttl}s"));
        }
    }
    if let Value::Object(map) = &claims {
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        out.push_str(&format!(" claims={}", keys.join(",")));
    }
    out.push('>');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_win_and_longest_first() {
        let mut n = Normalizer::new();
        n.literal("/tmp/abc", "root");
        n.literal("/tmp/abc/api.sock", "socket");
        assert_eq!(
            n.normalize("dial /tmp/abc/api.sock in /tmp/abc\n"),
            "dial <socket> in <root>\n"
        );
    }

    #[test]
    fn uuids_are_numbered_by_first_appearance() {
        let n = Normalizer::new();
        let a = "0b9f8e3c-1111-4222-8333-444455556666";
        let b = "9e2a7c1d-aaaa-4bbb-8ccc-ddddeeeeffff";
        assert_eq!(n.normalize(&format!("{a} {b} {a}\n")), "<uuid#1> <uuid#2> <uuid#1>\n");
    }

    #[test]
    fn near_times_are_replaced_and_far_times_kept() {
        let n = Normalizer::new();
        assert_eq!(
            n.normalize("Expiration time   : 2026-11-29 15:03:14 +0000 UTC\n"),
            "Expiration time   : <time>\n"
        );
        assert_eq!(
            n.normalize("Expiration time  : 2100-01-01 00:00:00 +0000 UTC\n"),
            "Expiration time  : 2100-01-01 00:00:00 +0000 UTC\n"
        );
        assert_eq!(n.normalize("expires \"2026-11-29T15:03:14Z\"\n"), "expires \"<time>\"\n");
    }

    #[test]
    fn json_is_reprinted_with_sorted_keys_and_normalised_values() {
        let n = Normalizer::new();
        let out = n.normalize(
            r#"{"value":"0b9f8e3c-1111-4222-8333-444455556666", "expires_at":"1764432000", "count": 3}"#,
        );
        assert_eq!(
            out,
            "{\n  \"count\": 3,\n  \"expires_at\": \"<unix>\",\n  \"value\": \"<uuid#1>\"\n}\n"
        );
    }

    #[test]
    fn captured_jwk_key_ids_order_a_key_set() {
        let mut n = Normalizer::new();
        n.literal("k-new", "jwt_prepared");
        n.literal("k-old", "jwt_active");
        let doc = |first: &str, second: &str| {
            format!(
                r#"{{"keys":[{{"use":"x509-svid","x":"1"}},{{"kid":"{first}","x":"{first}"}},{{"kid":"{second}","x":"{second}"}}]}}"#
            )
        };
        let a = n.normalize(&doc("k-new", "k-old"));
        assert_eq!(a, n.normalize(&doc("k-old", "k-new")));
        let x509 = a.find("x509-svid").unwrap();
        let (old, new) = (a.find("<jwt_active>").unwrap(), a.find("<jwt_prepared>").unwrap());
        assert!(x509 < old && old < new, "{a}");
        // Arrays under other keys keep their order.
        assert_ne!(
            n.normalize(r#"{"ids":["k-new","k-old"]}"#),
            n.normalize(r#"{"ids":["k-old","k-new"]}"#)
        );
    }

    #[test]
    fn serial_and_authority_lines() {
        let n = Normalizer::new();
        assert_eq!(
            n.normalize("Serial number     : 123456789012345\n  Authority ID: abc\n"),
            "Serial number     : <serial>\n  Authority ID: <kid#1>\n"
        );
    }

    #[test]
    fn jwt_is_summarised() {
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!(
            "{}.{}.c2lnbmF0dXJl",
            enc(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
            enc(
                r#"{"aud":["a"],"exp":1764432300,"iat":1764432000,"sub":"spiffe://example.org/w"}"#
            )
        );
        assert_eq!(
            Normalizer::new().normalize(&format!("{token}\n")),
            "<jwt alg=ES256 typ=JWT kid=<kid#1> sub=spiffe://example.org/w aud=[a] ttl=300s claims=aud,exp,iat,sub>\n"
        );
    }
}
