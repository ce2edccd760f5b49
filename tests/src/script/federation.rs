//! Federation relationships.

use super::*;

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
pub(super) fn federation(d: &mut Differential) -> anyhow::Result<()> {
    both(d, "federation list: empty", &["federation", "list"])?;
    row(
        d,
        "federation create: https_web",
        &[
            "federation", "create", "-trustDomain", "web.org", "-bundleEndpointURL",
            "https://127.0.0.1:1/bundle", "-bundleEndpointProfile", "https_web",
        ],
    )?;
    twice(
        d,
        "federation create: https_spiffe with bundle",
        &[
            "federation", "create", "-trustDomain", "spiffe.org", "-bundleEndpointURL",
            "https://127.0.0.1:2/bundle", "-bundleEndpointProfile", "https_spiffe",
            "-endpointSpiffeID", "spiffe://spiffe.org/spire/server", "-trustDomainBundlePath",
            "{root}/files/spiffe-org.pem",
        ],
    )?;
    let bad: &[(&str, &[&str])] = &[
        (
            "federation create: duplicate",
            &[
                "-trustDomain", "web.org", "-bundleEndpointURL", "https://127.0.0.1:1/bundle",
                "-bundleEndpointProfile", "https_web",
            ],
        ),
        (
            "federation create: own trust domain",
            &[
                "-trustDomain", "example.org", "-bundleEndpointURL", "https://127.0.0.1:1/bundle",
                "-bundleEndpointProfile", "https_web",
            ],
        ),
        (
            "federation create: http url",
            &[
                "-trustDomain", "http.org", "-bundleEndpointURL", "http://127.0.0.1:1/bundle",
                "-bundleEndpointProfile", "https_web",
            ],
        ),
        (
            "federation create: url without host",
            &[
                "-trustDomain", "nohost.org", "-bundleEndpointURL", "https:///bundle",
                "-bundleEndpointProfile", "https_web",
            ],
        ),
        (
            "federation create: malformed trust domain",
            &[
                "-trustDomain", "Bad_TD!", "-bundleEndpointURL", "https://127.0.0.1:1/bundle",
                "-bundleEndpointProfile", "https_web",
            ],
        ),
        (
            "federation create: trust domain with scheme",
            &[
                "-trustDomain", "spiffe://scheme.org", "-bundleEndpointURL",
                "https://127.0.0.1:1/bundle", "-bundleEndpointProfile", "https_web",
            ],
        ),
        (
            "federation create: unknown profile",
            &[
                "-trustDomain", "prof.org", "-bundleEndpointURL", "https://127.0.0.1:1/bundle",
                "-bundleEndpointProfile", "https_other",
            ],
        ),
        (
            "federation create: https_spiffe without endpoint id",
            &[
                "-trustDomain", "noid.org", "-bundleEndpointURL", "https://127.0.0.1:1/bundle",
                "-bundleEndpointProfile", "https_spiffe",
            ],
        ),
        (
            "federation create: https_spiffe endpoint id in another trust domain",
            &[
                "-trustDomain", "other1.org", "-bundleEndpointURL", "https://127.0.0.1:1/bundle",
                "-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID",
                "spiffe://example.org/spire/server",
            ],
        ),
        (
            "federation create: bundle for another trust domain",
            &[
                "-trustDomain", "other2.org", "-bundleEndpointURL", "https://127.0.0.1:1/bundle",
                "-bundleEndpointProfile", "https_web", "-trustDomainBundlePath",
                "{root}/files/not-there.pem",
            ],
        ),
        (
            "federation create: no url",
            &["-trustDomain", "nourl.org", "-bundleEndpointProfile", "https_web"],
        ),
    ];
    for (name, args) in bad {
        let mut argv = vec!["federation", "create"];
        argv.extend_from_slice(args);
        row(d, name, &argv)?;
    }
    row(
        d,
        "federation create: data file",
        &["federation", "create", "-data", "{root}/files/federation.json"],
    )?;
    both(d, "federation list", &["federation", "list"])?;
    both(d, "federation show", &["federation", "show", "-trustDomain", "spiffe.org"])?;
    row(d, "federation show: unknown", &["federation", "show", "-trustDomain", "nope.org"])?;
    row(d, "federation show: malformed", &["federation", "show", "-trustDomain", "Bad_TD!"])?;
    row(d, "federation show: no trust domain", &["federation", "show"])?;
    twice(
        d,
        "federation update",
        &[
            "federation", "update", "-trustDomain", "web.org", "-bundleEndpointURL",
            "https://127.0.0.1:3/bundle", "-bundleEndpointProfile", "https_web",
        ],
    )?;
    row(
        d,
        "federation update: add bundle",
        &[
            "federation", "update", "-trustDomain", "web.org", "-bundleEndpointURL",
            "https://127.0.0.1:3/bundle", "-bundleEndpointProfile", "https_web",
            "-trustDomainBundlePath", "{root}/files/fed.pem",
        ],
    )?;
    row(
        d,
        "federation update: unknown",
        &[
            "federation", "update", "-trustDomain", "nope.org", "-bundleEndpointURL",
            "https://127.0.0.1:3/bundle", "-bundleEndpointProfile", "https_web",
        ],
    )?;
    row(
        d,
        "federation update: http url",
        &[
            "federation", "update", "-trustDomain", "web.org", "-bundleEndpointURL",
            "http://127.0.0.1:3/bundle", "-bundleEndpointProfile", "https_web",
        ],
    )?;
    row(d, "federation list: after update", &["federation", "list"])?;
    both(d, "bundle list: with federation bundles", &["bundle", "list"])?;
    row(
        d,
        "federation refresh: unreachable endpoint",
        &["federation", "refresh", "-id", "web.org"],
    )?;
    row(d, "federation refresh: unknown", &["federation", "refresh", "-id", "nope.org"])?;
    row(d, "federation refresh: no id", &["federation", "refresh"])?;
    twice(d, "federation delete", &["federation", "delete", "-id", "data1.org"])?;
    row(d, "federation delete: unknown", &["federation", "delete", "-id", "data1.org"])?;
    row(d, "federation delete: malformed", &["federation", "delete", "-id", "Bad_TD!"])?;
    row(d, "federation delete: no id", &["federation", "delete"])?;
    row(d, "federation list: final", &["federation", "list"])?;
    both(d, "bundle count: with federation bundles", &["bundle", "count"])?;
    Ok(())
}
