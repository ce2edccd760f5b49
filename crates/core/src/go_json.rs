//! JSON strings as Go's `encoding/json` writes them, for output that must match SPIRE's bytes
//! (CLI output, attestation payloads).

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it: serde_json's escapes
/// plus Go's HTML-safe ones (`<`, `>`, `&` as `\u003c` and so on, and U+2028, U+2029).
pub fn write_string(s: &str, out: &mut String) {
    let encoded = serde_json::Value::String(s.to_owned()).to_string();
    for c in encoded.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_go_does() {
        let mut out = String::new();
        write_string("<a & b>\n\u{2028}\"", &mut out);
        assert_eq!(out, r#""\u003ca \u0026 b\u003e\n\u2028\"""#);
    }
}
