//! SPIRE's names for an RPC: the short service name logged as `service` and the metric key
//! of its call counter (`rpc.<service parts>.<method in snake_case>`), and gRPC code names
//! as Go spells them (the `status` label).

/// The parts of a gRPC path (`/<service>/<method>`) SPIRE logs and measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcNames {
    /// The short service name: `spire.api.server.` dropped, `grpc.health.v1.Health` is
    /// `Health` (for example `entry.v1.Entry`).
    pub service: String,
    /// The method name as on the wire (`ListEntries`).
    pub method: String,
    /// The metric key, dot-separated (`rpc.entry.v1.entry.list_entries`).
    pub metric_key: String,
}

const SERVER_API_PREFIX: &str = "spire.api.server.";

impl RpcNames {
    /// The names of the call to `path` (`/spire.api.server.entry.v1.Entry/ListEntries`).
    /// Malformed paths give empty names rather than an error.
    pub fn of(path: &str) -> Self {
        let full = path.strip_prefix('/').unwrap_or(path);
        let (raw_service, method) = full.split_once('/').unwrap_or(("", ""));
        let service = match raw_service {
            "grpc.health.v1.Health" => "Health".to_owned(),
            s => s.strip_prefix(SERVER_API_PREFIX).unwrap_or(s).to_owned(),
        };
        let mut key = String::from("rpc");
        for part in service.split('.').chain(std::iter::once(method)) {
            key.push('.');
            key.push_str(&snake_case(part));
        }
        Self { service, method: method.to_owned(), metric_key: key }
    }
}

/// PascalCase to snake_case as SPIRE converts method and service names: an upper-case letter
/// gets a `_` before it when it is neither first nor last, a lower-case letter is next to it,
/// and the output does not already end in `_`; anything not a letter or digit becomes `_`.
fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            out.push('_');
            continue;
        }
        let lower_neighbour =
            |j: Option<usize>| j.and_then(|j| chars.get(j)).is_some_and(|n| n.is_lowercase());
        if c.is_uppercase()
            && i > 0
            && i + 1 < chars.len()
            && (lower_neighbour(Some(i + 1)) || lower_neighbour(i.checked_sub(1)))
            && !out.ends_with('_')
        {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// A label value as SPIRE sanitizes it: every run of characters other than ASCII letters,
/// digits and `_`, with one `_` right after it, becomes a single `_` (`example.org` is
/// `example_org`).
pub fn sanitize_label(value: &str) -> String {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if word(c) {
            out.push(c);
            continue;
        }
        while chars.next_if(|&n| !word(n)).is_some() {}
        chars.next_if_eq(&'_');
        out.push('_');
    }
    out
}

pub use ward_proto::go::code_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_spire_builds_them() {
        let cases = [
            (
                "/spire.api.server.agent.v1.Agent/AttestAgent",
                "agent.v1.Agent",
                "rpc.agent.v1.agent.attest_agent",
            ),
            (
                "/spire.api.server.svid.v1.SVID/BatchNewX509SVID",
                "svid.v1.SVID",
                "rpc.svid.v1.svid.batch_new_x509svid",
            ),
            (
                "/spire.api.server.svid.v1.SVID/MintJWTSVID",
                "svid.v1.SVID",
                "rpc.svid.v1.svid.mint_jwtsvid",
            ),
            (
                "/spire.api.server.entry.v1.Entry/GetAuthorizedEntries",
                "entry.v1.Entry",
                "rpc.entry.v1.entry.get_authorized_entries",
            ),
            (
                "/spire.api.server.trustdomain.v1.TrustDomain/ListFederationRelationships",
                "trustdomain.v1.TrustDomain",
                "rpc.trustdomain.v1.trust_domain.list_federation_relationships",
            ),
            ("/grpc.health.v1.Health/Check", "Health", "rpc.health.check"),
        ];
        for (path, service, key) in cases {
            let n = RpcNames::of(path);
            assert_eq!((n.service.as_str(), n.metric_key.as_str()), (service, key), "{path}");
        }
        assert_eq!(RpcNames::of("/Entry/ListEntries").method, "ListEntries");
        assert_eq!(RpcNames::of("garbage").metric_key, "rpc..");
    }

    #[test]
    fn snake_case_follows_spire_rules() {
        for (input, want) in [
            ("One", "one"),
            ("one,two,three,Four", "one_two_three_four"),
            ("ABCDef", "abc_def"),
            ("v1", "v1"),
            ("AbcDEF", "abc_def"),
            ("OneTWOThree", "one_two_three"),
            ("ONETwoTHREE", "one_two_three"),
        ] {
            assert_eq!(snake_case(input), want, "{input}");
        }
    }

    #[test]
    fn label_values_sanitized_as_spire_does() {
        for (input, want) in [
            ("example.org", "example_org"),
            ("1.13.3-dev-unk", "1_13_3_dev_unk"),
            ("a._b", "a_b"),
            ("a_.b", "a__b"),
            ("ip-10-0-0-1", "ip_10_0_0_1"),
            ("plain_name", "plain_name"),
            ("é", "_"),
        ] {
            assert_eq!(sanitize_label(input), want, "{input}");
        }
    }
}
