//! DNS names for X509-SVIDs, checked by the rules SPIRE v1.13 applies to registration
//! entries and to MintX509SVID requests (`x509util.ValidateLabel` and
//! `x509util.CheckForWildcardOverlap`).
//!
//! The rules, in the order they are applied:
//! 1. the name is ASCII;
//! 2. it has at most one `*`, and only as a whole first label (`*.example.org`);
//! 3. the rest, with surrounding white space ignored, is not empty and does not end with `.`;
//! 4. it passes IDNA 2008 (UTS #46) processing with hyphen, length and label checks but
//!    without mapping, and comes out unchanged: no empty label, no label starting or ending
//!    with `-`, no `--` in the third and fourth places of an ordinary label, labels of at most
//!    63 bytes and at most 253 in all; `xn--` labels must be valid, canonical punycode.
//!    Letters of either case, digits and other printable ASCII (`_`, for example) are accepted
//!    in ordinary labels, as SPIRE accepts them.
//!
//! A list of names is also refused when a wildcard covers one of its other names
//! ([`check_wildcard_overlap`]); SPIRE applies that check to minted SVIDs only.
//!
//! Error texts are SPIRE's, so a refusal reads the same from either server.

use std::fmt;

/// Why a DNS name cannot go into an X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsNameError {
    /// A byte outside ASCII.
    #[error("name must be ascii")]
    NotAscii,
    /// More than one `*`.
    #[error("too many wildcards")]
    TooManyWildcards,
    /// A `*` that is not the whole first label.
    #[error("wildcard must be first label")]
    WildcardNotFirstLabel,
    /// Nothing but white space (after a wildcard label, if any).
    #[error("empty or only whitespace")]
    Empty,
    /// A trailing `.`.
    #[error("domain ends with dot")]
    EndsWithDot,
    /// A label (or, for empty labels and length limits, the whole name) breaks an IDNA rule;
    /// the text names it as SPIRE does.
    #[error("idna error\nidna: invalid label {}", GoQuoted(.0))]
    InvalidLabel(String),
    /// IDNA processing would change the name (non-canonical punycode).
    #[error(
        "input domain name {} does not match idna output {}: label mismatch after idna",
        GoQuoted(.input),
        GoQuoted(.output)
    )]
    ChangedByIdna {
        /// The name as given (white space trimmed).
        input: String,
        /// The name IDNA processing produced.
        output: String,
    },
    /// A wildcard in the list covers this name.
    #[error(
        "name {} overlaps with an existing wildcard name in the list: wildcard overlap",
        GoQuoted(.0)
    )]
    WildcardOverlap(String),
}

/// Checks one DNS name (see the module docs for the rules).
///
/// # Errors
/// The first [`DnsNameError`] found.
pub fn validate_dns_name(name: &str) -> Result<(), DnsNameError> {
    if !name.is_ascii() {
        return Err(DnsNameError::NotAscii);
    }
    match name.bytes().filter(|&b| b == b'*').count() {
        0 => validate_plain(name),
        1 => match name.strip_prefix("*.") {
            Some(rest) => validate_plain(rest),
            None => Err(DnsNameError::WildcardNotFirstLabel),
        },
        _ => Err(DnsNameError::TooManyWildcards),
    }
}

/// Refuses a list in which a wildcard name covers another name of the list: `*.example.org`
/// covers `a.example.org` (the first label replaced by `*`), not `a.b.example.org`.
///
/// # Errors
/// [`DnsNameError::WildcardOverlap`] naming the first covered name.
pub fn check_wildcard_overlap<S: AsRef<str>>(names: &[S]) -> Result<(), DnsNameError> {
    let all: std::collections::HashSet<&str> = names.iter().map(AsRef::as_ref).collect();
    for name in names.iter().map(AsRef::as_ref) {
        if name.starts_with('*') {
            continue;
        }
        let covering = match name.split_once('.') {
            Some((_, rest)) => format!("*.{rest}"),
            None => "*".to_owned(),
        };
        if all.contains(covering.as_str()) {
            return Err(DnsNameError::WildcardOverlap(name.to_owned()));
        }
    }
    Ok(())
}

/// Rules 3 and 4 for a name without its wildcard label.
fn validate_plain(domain: &str) -> Result<(), DnsNameError> {
    let domain = domain.trim();
    if domain.is_empty() {
        return Err(DnsNameError::Empty);
    }
    if domain.ends_with('.') {
        return Err(DnsNameError::EndsWithDot);
    }
    if domain.starts_with("*.") {
        // Unreachable after the wildcard rules, kept as SPIRE keeps it.
        return Err(DnsNameError::WildcardNotFirstLabel);
    }
    let output = idna_to_ascii(domain)?;
    if output != domain {
        return Err(DnsNameError::ChangedByIdna { input: domain.to_owned(), output });
    }
    Ok(())
}

const ACE_PREFIX: &str = "xn--";
const MAX_LABEL_LEN: usize = 63;
const MAX_NAME_LEN: usize = 253;

/// IDNA "to ASCII" of an ASCII name, with the checks (and the order of errors) of the
/// profile SPIRE uses: label rules first for every label, then label lengths, then the
/// total length. Returns the processed name.
fn idna_to_ascii(domain: &str) -> Result<String, DnsNameError> {
    let mut first_error = None;
    let mut out_labels = Vec::new();
    for label in domain.split('.') {
        let (out, err) = if label.is_empty() {
            (String::new(), Some(DnsNameError::InvalidLabel(domain.to_owned())))
        } else if let Some(encoded) = label.strip_prefix(ACE_PREFIX) {
            ace_label(label, encoded)
        } else {
            (label.to_owned(), check_hyphens(label).err())
        };
        if first_error.is_none() {
            first_error = err;
        }
        out_labels.push(out);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if let Some(long) = out_labels.iter().find(|l| l.len() > MAX_LABEL_LEN) {
        return Err(DnsNameError::InvalidLabel(long.clone()));
    }
    let output = out_labels.join(".");
    if output.len() > MAX_NAME_LEN {
        return Err(DnsNameError::InvalidLabel(output));
    }
    Ok(output)
}

/// The hyphen rules of an ordinary label: no `--` in places three and four of a label longer
/// than four bytes, no `-` at either end.
fn check_hyphens(label: &str) -> Result<(), DnsNameError> {
    let b = label.as_bytes();
    let reserved = b.len() > 4 && b.get(2..4) == Some(b"--".as_slice());
    if reserved || label.starts_with('-') || label.ends_with('-') {
        return Err(DnsNameError::InvalidLabel(label.to_owned()));
    }
    Ok(())
}

/// An `xn--` label: its punycode must decode to a valid U-label (UTS #46 with STD3 rules,
/// hyphen and joiner checks, the bidi rule) whose canonical encoding is the output. A label
/// that decodes to plain ASCII comes out decoded (so the name then differs from its output).
fn ace_label(label: &str, encoded: &str) -> (String, Option<DnsNameError>) {
    let Some(decoded) = idna::punycode::decode_to_string(encoded) else {
        return (label.to_owned(), Some(DnsNameError::InvalidLabel(encoded.to_owned())));
    };
    if decoded.is_ascii() {
        let std3 =
            decoded.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let err = if decoded.is_empty() || !std3 {
            Some(DnsNameError::InvalidLabel(decoded.clone()))
        } else {
            check_hyphens(&decoded).err()
        };
        return (decoded, err);
    }
    let processed = idna::uts46::Uts46::new().to_ascii(
        label.as_bytes(),
        idna::uts46::AsciiDenyList::STD3,
        idna::uts46::Hyphens::Check,
        idna::uts46::DnsLength::Ignore,
    );
    match processed {
        Ok(out) => (out.into_owned(), None),
        Err(_) => (label.to_owned(), Some(DnsNameError::InvalidLabel(decoded))),
    }
}

/// A string quoted as Go's `%q` quotes it (the texts are SPIRE's).
struct GoQuoted<'a>(&'a str);

impl fmt::Display for GoQuoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\u{7}' => f.write_str("\\a")?,
                '\u{8}' => f.write_str("\\b")?,
                '\u{c}' => f.write_str("\\f")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\u{b}' => f.write_str("\\v")?,
                c if u32::from(c) < 0x20 || c == '\u{7f}' => write!(f, "\\x{:02x}", u32::from(c))?,
                c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(name: &str) -> String {
        validate_dns_name(name).unwrap_err().to_string()
    }

    #[test]
    fn accepts_what_spire_accepts() {
        for ok in [
            "example.org",
            "*.example.org",
            "a.b-c.example",
            "Web.Example.ORG",
            "under_score.example.org",
            " padded.example.org ",
            "localhost",
            "xn--bcher-kva.example",
            "a--b.example",
            &format!("{}.org", "a".repeat(63)),
        ] {
            assert_eq!(validate_dns_name(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn refuses_with_spire_texts() {
        let cases: &[(&str, &str)] = &[
            ("bücher.example", "name must be ascii"),
            ("*.*.example.org", "too many wildcards"),
            ("a.*.example.org", "wildcard must be first label"),
            ("*example.org", "wildcard must be first label"),
            ("*", "wildcard must be first label"),
            ("*.", "empty or only whitespace"),
            ("  ", "empty or only whitespace"),
            ("example.org.", "domain ends with dot"),
            ("a..b", "idna error\nidna: invalid label \"a..b\""),
            (".a", "idna error\nidna: invalid label \".a\""),
            ("-a.example.org", "idna error\nidna: invalid label \"-a\""),
            ("a.b-.org", "idna error\nidna: invalid label \"b-\""),
            ("ab--c.org", "idna error\nidna: invalid label \"ab--c\""),
            ("xn--.org", "idna error\nidna: invalid label \"\""),
            ("xn--A-.org", "idna error\nidna: invalid label \"A\""),
            (
                "xn--a-.org",
                "input domain name \"xn--a-.org\" does not match idna output \"a.org\": \
                 label mismatch after idna",
            ),
        ];
        for (name, want) in cases {
            assert_eq!(err(name), *want, "{name:?}");
        }
        let long = "a".repeat(64);
        assert_eq!(
            err(&format!("{long}.org")),
            format!("idna error\nidna: invalid label {long:?}")
        );
        let name = vec!["a".repeat(60); 5].join(".");
        assert_eq!(err(&name), format!("idna error\nidna: invalid label {name:?}"));
    }

    #[test]
    fn first_label_error_wins_over_lengths() {
        let name = format!("{}.-b.org", "a".repeat(70));
        assert_eq!(err(&name), "idna error\nidna: invalid label \"-b\"");
    }

    #[test]
    fn non_canonical_punycode_is_refused() {
        let e = validate_dns_name("xn--BCHER-KVA.example").unwrap_err();
        assert!(
            matches!(e, DnsNameError::ChangedByIdna { .. } | DnsNameError::InvalidLabel(_)),
            "{e:?}"
        );
    }

    #[test]
    fn wildcard_overlap() {
        assert_eq!(
            check_wildcard_overlap(&["*.example.org", "a.example.org"]).unwrap_err().to_string(),
            "name \"a.example.org\" overlaps with an existing wildcard name in the list: \
             wildcard overlap"
        );
        assert_eq!(check_wildcard_overlap(&["*.example.org", "a.b.example.org"]), Ok(()));
        assert_eq!(check_wildcard_overlap(&["*.example.org", "example.org"]), Ok(()));
        assert_eq!(check_wildcard_overlap::<&str>(&[]), Ok(()));
    }

    #[test]
    fn go_quoting() {
        assert_eq!(GoQuoted("a\"b\\c\t\u{0}").to_string(), "\"a\\\"b\\\\c\\t\\x00\"");
    }
}
