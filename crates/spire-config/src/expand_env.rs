//! `-expandEnv`: replacing `$NAME` and `${NAME}` in a configuration file's text before it is
//! parsed, with the rules SPIRE gets from Go's `os.Expand`.
//!
//! - `$NAME` takes the longest run of ASCII letters, digits and `_` after the `$`;
//!   `${NAME}` takes everything up to the next `}`.
//! - A `$` followed by one of `*#$@!?-` or a digit names that one character (`$1`, `${1}`);
//!   SPIRE maps `$$` to a literal `$`.
//! - A variable that is not set expands to nothing.
//! - `${}` and an unterminated `${` are dropped; a `$` followed by anything else (or at the
//!   end of the text) stays as it is.

/// Expands `$NAME` / `${NAME}` in `text`, looking names up with `lookup`.
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // `copied` is where the next unexpanded slice of `text` starts.
    let mut copied = 0;
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            out.push_str(&text[copied..j]);
            let (name, width) = shell_name(&text[j + 1..]);
            match name {
                Some("$") => out.push('$'),
                Some(name) => out.push_str(&lookup(name).unwrap_or_default()),
                // A lone `$` before a character that cannot start a name stays.
                None if width == 0 => out.push('$'),
                // Bad `${` syntax is dropped.
                None => {}
            }
            j += width + 1;
            copied = j;
        } else {
            j += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn is_special(c: u8) -> bool {
    matches!(c, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9')
}

fn is_name_char(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// The name that follows a `$` in `s` (non-empty) and how many bytes of `s` it spans. `None`
/// with a width of 0 means no name at all; `None` with a width means bad syntax to drop.
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_special(b[1]) && b[2] == b'}' {
            return (Some(&s[1..2]), 3);
        }
        return match s[1..].find('}') {
            Some(0) => (None, 2),
            Some(end) => (Some(&s[1..=end]), end + 2),
            None => (None, 1),
        };
    }
    if is_special(b[0]) {
        return (Some(&s[..1]), 1);
    }
    let len = b.iter().take_while(|c| is_name_char(**c)).count();
    if len == 0 { (None, 0) } else { (Some(&s[..len]), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TD" => Some("example.org".into()),
            "PORT" => Some("8081".into()),
            "1" => Some("one".into()),
            _ => None,
        }
    }

    fn x(s: &str) -> String {
        expand_env(s, &env)
    }

    #[test]
    fn expands_both_forms() {
        assert_eq!(x("trust_domain = \"$TD\""), "trust_domain = \"example.org\"");
        assert_eq!(x("port = ${PORT}0"), "port = 80810");
        assert_eq!(x("$TD.$PORT"), "example.org.8081");
    }

    #[test]
    fn unset_variables_expand_to_nothing() {
        assert_eq!(x("a${NOPE}b"), "ab");
        assert_eq!(x("a$NOPE/b"), "a/b");
    }

    #[test]
    fn dollar_rules_follow_go() {
        assert_eq!(x("cost $$5"), "cost $5");
        assert_eq!(x("ends with $"), "ends with $");
        assert_eq!(x("a $/b"), "a $/b");
        assert_eq!(x("a ${}b"), "a b");
        assert_eq!(x("a ${TD"), "a TD");
        assert_eq!(x("$1x ${1}"), "onex one");
        assert_eq!(x("${TD}${TD}"), "example.orgexample.org");
        assert_eq!(x("née $TD"), "née example.org");
    }
}
