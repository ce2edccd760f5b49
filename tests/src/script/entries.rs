//! Registration entries: create, show, update, delete, count, and paging.

use super::*;

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
pub(super) fn entries(d: &mut Differential) -> anyhow::Result<()> {
    row(
        d,
        "bundle set: for entries",
        &["bundle", "set", "-id", "spiffe://ent.org", "-path", "{root}/files/ent.pem"],
    )?;
    both(d, "entry show: empty", &["entry", "show"])?;
    both(d, "entry count: empty", &["entry", "count"])?;

    // Good creates.
    row(
        d,
        "entry create: basic",
        &[
            "entry", "create", "-entryID", "e-basic", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/basic", "-selector", "unix:uid:1000",
        ],
    )?;
    row(
        d,
        "entry create: every flag",
        &[
            "entry", "create", "-entryID", "e-full", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/full", "-selector", "unix:uid:1001", "-selector", "unix:gid:1001",
            "-x509SVIDTTL", "3600", "-jwtSVIDTTL", "600", "-dns", "z.example.org", "-dns",
            "a.example.org", "-admin", "-downstream", "-entryExpiry", "4102444800", "-hint",
            "full-hint", "-storeSVID", "-federatesWith", "spiffe://ent.org",
        ],
    )?;
    row(
        d,
        "entry create (json)",
        &[
            "entry", "create", "-entryID", "e-json", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/json", "-selector", "unix:uid:1002", "-dns", "json.example.org",
            "-output", "json",
        ],
    )?;
    row(
        d,
        "entry create: node",
        &[
            "entry", "create", "-entryID", "e-node", "-node", "-spiffeID",
            "spiffe://example.org/nodes", "-selector", "join_token:abc",
        ],
    )?;
    d.run(
        Row::new(
            "entry create: generated id",
            &[
                "entry", "create", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/generated", "-selector", "unix:uid:1003",
            ],
        )
        .capture("generated_id", r"Entry ID\s*:\s*(\S+)"),
    )?;
    row(
        d,
        "entry create: federates",
        &[
            "entry", "create", "-entryID", "e-fed", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/fed", "-selector", "unix:uid:1004", "-federatesWith",
            "spiffe://fed.org",
        ],
    )?;
    row(
        d,
        "entry create: wildcard dns first label",
        &[
            "entry", "create", "-entryID", "e-wild", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/wild", "-selector", "unix:uid:1005", "-dns", "*.example.org",
        ],
    )?;
    row(
        d,
        "entry create: storeSVID same type",
        &[
            "entry", "create", "-entryID", "e-store", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/store", "-selector", "k8s:ns:a", "-selector", "k8s:sa:b",
            "-storeSVID",
        ],
    )?;
    row(
        d,
        "entry create: hint of 1024 bytes",
        &[
            "entry", "create", "-entryID", "e-hint", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/hint", "-selector", "unix:uid:1006", "-hint", &"h".repeat(1024),
        ],
    )?;
    row(d, "entry create: data file", &["entry", "create", "-data", "{root}/files/entries.json"])?;
    // Expiry dates past 2090 print as given; Go prints years past 9999 in full.
    for (name, expiry) in [("far", "99999999999"), ("farther", "999999999999")] {
        row(
            d,
            &format!("entry create: {name}-future expiry"),
            &[
                "entry", "create", "-entryID", &format!("e-{name}"), "-parentID", PARENT,
                "-spiffeID", &format!("spiffe://example.org/{name}"), "-selector",
                "unix:uid:1090", "-entryExpiry", expiry,
            ],
        )?;
        both(d, &format!("entry show: {name}-future expiry"), &["entry", "show", "-entryID", &format!("e-{name}")])?;
    }

    // Bad creates.
    let bad_creates: &[(&str, &[&str])] = &[
        (
            "entry create: similar entry",
            &[
                "-entryID", "e-similar", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/basic", "-selector", "unix:uid:1000",
            ],
        ),
        (
            "entry create: entry id in use",
            &[
                "-entryID", "e-basic", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/other", "-selector", "unix:uid:1100",
            ],
        ),
        (
            "entry create: entry id with slash",
            &[
                "-entryID", "bad/id", "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x1",
                "-selector", "unix:uid:1101",
            ],
        ),
        (
            "entry create: entry id with space",
            &[
                "-entryID", "bad id", "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x2",
                "-selector", "unix:uid:1102",
            ],
        ),
        (
            "entry create: entry id with percent",
            &[
                "-entryID", "bad%id", "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x3",
                "-selector", "unix:uid:1103",
            ],
        ),
        (
            "entry create: foreign spiffe id",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://other.org/w", "-selector",
                "unix:uid:1104",
            ],
        ),
        (
            "entry create: spiffe id without path",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org", "-selector",
                "unix:uid:1105",
            ],
        ),
        (
            "entry create: reserved spiffe id",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/spire/w", "-selector",
                "unix:uid:1106",
            ],
        ),
        (
            "entry create: foreign parent id",
            &[
                "-parentID", "spiffe://other.org/node", "-spiffeID", "spiffe://example.org/x4",
                "-selector", "unix:uid:1107",
            ],
        ),
        (
            "entry create: parent id without path",
            &[
                "-parentID", "spiffe://example.org", "-spiffeID", "spiffe://example.org/x5",
                "-selector", "unix:uid:1108",
            ],
        ),
        (
            "entry create: malformed spiffe id",
            &["-parentID", PARENT, "-spiffeID", "example.org/w", "-selector", "unix:uid:1109"],
        ),
        (
            "entry create: duplicate selector",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x6", "-selector",
                "unix:uid:1110", "-selector", "unix:uid:1110",
            ],
        ),
        (
            "entry create: storeSVID mixed selector types",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x7", "-selector",
                "k8s:ns:x", "-selector", "unix:uid:1111", "-storeSVID",
            ],
        ),
        (
            "entry create: wildcard dns in the middle",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x8", "-selector",
                "unix:uid:1112", "-dns", "a.*.example.org",
            ],
        ),
        (
            "entry create: dns with underscore",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x9", "-selector",
                "unix:uid:1113", "-dns", "bad_label.example.org",
            ],
        ),
        (
            "entry create: dns with leading hyphen",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x10", "-selector",
                "unix:uid:1114", "-dns", "-lead.example.org",
            ],
        ),
        (
            "entry create: dns with empty label",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x11", "-selector",
                "unix:uid:1115", "-dns", "a..example.org",
            ],
        ),
        (
            "entry create: missing federated bundle",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x12", "-selector",
                "unix:uid:1116", "-federatesWith", "spiffe://nowhere.org",
            ],
        ),
        (
            "entry create: federates with a bare name",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x13", "-selector",
                "unix:uid:1117", "-federatesWith", "fed.org",
            ],
        ),
        (
            "entry create: federates with own trust domain",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x14", "-selector",
                "unix:uid:1118", "-federatesWith", "spiffe://example.org",
            ],
        ),
        (
            "entry create: negative x509 ttl",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x15", "-selector",
                "unix:uid:1119", "-x509SVIDTTL", "-1",
            ],
        ),
        (
            "entry create: x509 ttl above int32",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x16", "-selector",
                "unix:uid:1120", "-x509SVIDTTL", "2147483648",
            ],
        ),
        (
            "entry create: hint of 1025 bytes",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x17", "-selector",
                "unix:uid:1121", "-hint", "HINT_1025",
            ],
        ),
        (
            "entry create: negative entry expiry",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x18", "-selector",
                "unix:uid:1122", "-entryExpiry", "-1",
            ],
        ),
        (
            "entry create: selector without value",
            &["-parentID", PARENT, "-spiffeID", "spiffe://example.org/x19", "-selector", "unix"],
        ),
        (
            "entry create: selector with empty value",
            &["-parentID", PARENT, "-spiffeID", "spiffe://example.org/x20", "-selector", "unix:"],
        ),
        (
            "entry create: no selector",
            &["-parentID", PARENT, "-spiffeID", "spiffe://example.org/x21"],
        ),
        (
            "entry create: node that federates",
            &[
                "-node", "-spiffeID", "spiffe://example.org/x22", "-selector", "join_token:x",
                "-federatesWith", "spiffe://fed.org",
            ],
        ),
        (
            "entry create: entry id of 256 characters",
            &[
                "-entryID", "ID_256", "-parentID", PARENT, "-spiffeID", "spiffe://example.org/x23",
                "-selector", "unix:uid:1123",
            ],
        ),
    ];
    let long_hint = "h".repeat(1025);
    let long_id = "i".repeat(256);
    for (name, args) in bad_creates {
        let mut argv = vec!["entry", "create"];
        for a in *args {
            argv.push(match *a {
                "HINT_1025" => long_hint.as_str(),
                "ID_256" => long_id.as_str(),
                other => other,
            });
        }
        row(d, name, &argv)?;
    }
    row(
        d,
        "entry create: malformed data file",
        &["entry", "create", "-data", "{root}/files/entries-bad.json"],
    )?;
    row(
        d,
        "entry create: data file that is not JSON",
        &["entry", "create", "-data", "{root}/files/entries-not-json.json"],
    )?;
    row(
        d,
        "entry create: data file with a value of the wrong type",
        &["entry", "create", "-data", "{root}/files/entries-wrong-type.json"],
    )?;
    drop_entries(d, r"^/x[0-9]+$")?;

    // Reads.
    both(d, "entry show: all", &["entry", "show"])?;
    both(d, "entry count: all", &["entry", "count"])?;
    both(d, "entry show -entryID", &["entry", "show", "-entryID", "e-full"])?;
    row(d, "entry show -entryID: generated", &["entry", "show", "-entryID", "{generated_id}"])?;
    row(d, "entry show -entryID: unknown", &["entry", "show", "-entryID", "e-unknown"])?;
    row(d, "entry show -entryID: invalid characters", &["entry", "show", "-entryID", "bad/id"])?;
    row(
        d,
        "entry show -entryID with -parentID",
        &["entry", "show", "-entryID", "e-full", "-parentID", PARENT],
    )?;
    let filters: &[(&str, &[&str])] = &[
        ("-parentID", &["-parentID", PARENT]),
        ("-parentID node group", &["-parentID", "spiffe://example.org/spire/server"]),
        ("-spiffeID", &["-spiffeID", "spiffe://example.org/basic"]),
        ("-selector", &["-selector", "unix:uid:1001"]),
        (
            "-selector exact",
            &[
                "-selector", "unix:uid:1001", "-selector", "unix:gid:1001", "-matchSelectorsOn",
                "exact",
            ],
        ),
        ("-selector exact partial", &["-selector", "unix:uid:1001", "-matchSelectorsOn", "exact"]),
        (
            "-selector any",
            &[
                "-selector", "unix:uid:1001", "-selector", "unix:uid:1000", "-matchSelectorsOn",
                "any",
            ],
        ),
        (
            "-selector subset",
            &[
                "-selector", "unix:uid:1001", "-selector", "unix:gid:1001", "-selector",
                "unix:uid:1000", "-matchSelectorsOn", "subset",
            ],
        ),
        ("-selector superset", &["-selector", "unix:uid:1001", "-matchSelectorsOn", "superset"]),
        ("-selector bad match", &["-selector", "unix:uid:1001", "-matchSelectorsOn", "most"]),
        ("-federatesWith", &["-federatesWith", "spiffe://ent.org"]),
        (
            "-federatesWith exact",
            &["-federatesWith", "spiffe://fed.org", "-matchFederatesWithOn", "exact"],
        ),
        (
            "-federatesWith any",
            &[
                "-federatesWith", "spiffe://fed.org", "-federatesWith", "spiffe://ent.org",
                "-matchFederatesWithOn", "any",
            ],
        ),
        (
            "-federatesWith subset",
            &[
                "-federatesWith", "spiffe://fed.org", "-federatesWith", "spiffe://ent.org",
                "-matchFederatesWithOn", "subset",
            ],
        ),
        ("-federatesWith unknown", &["-federatesWith", "spiffe://nowhere.org"]),
        ("-hint", &["-hint", "full-hint"]),
        ("-hint unknown", &["-hint", "no-such-hint"]),
        ("-downstream", &["-downstream"]),
        ("-parentID foreign", &["-parentID", "spiffe://other.org/node"]),
        ("-parentID without path", &["-parentID", "spiffe://example.org"]),
        ("-spiffeID reserved", &["-spiffeID", "spiffe://example.org/spire/x"]),
        ("-spiffeID without path", &["-spiffeID", "spiffe://example.org"]),
        ("-spiffeID malformed", &["-spiffeID", "example.org/x"]),
        ("-selector malformed", &["-selector", "unix"]),
    ];
    for (label, args) in filters {
        let mut show = vec!["entry", "show"];
        show.extend_from_slice(args);
        row(d, &format!("entry show {label}"), &show)?;
        let mut count = vec!["entry", "count"];
        count.extend_from_slice(args);
        row(d, &format!("entry count {label}"), &count)?;
    }
    both(
        d,
        "entry show -selector and -parentID",
        &["entry", "show", "-parentID", PARENT, "-selector", "unix:uid:1000"],
    )?;

    // Updates.
    twice(
        d,
        "entry update: change selectors and ttl",
        &[
            "entry", "update", "-entryID", "e-basic", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/basic", "-selector", "unix:uid:1000", "-selector",
            "unix:gid:1000", "-x509SVIDTTL", "120",
        ],
    )?;
    twice(
        d,
        "entry update: every flag",
        &[
            "entry", "update", "-entryID", "e-store", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/store2", "-selector", "k8s:ns:c", "-selector", "k8s:sa:d",
            "-x509SVIDTTL", "1800", "-jwtSVIDTTL", "900", "-dns", "y.example.org", "-dns",
            "b.example.org", "-admin", "-downstream", "-entryExpiry", "4133980800", "-hint",
            "store-hint", "-storeSVID", "-federatesWith", "spiffe://ent.org",
        ],
    )?;
    row(d, "entry show: after update of every flag", &["entry", "show", "-entryID", "e-store", "-output", "json"])?;
    row(
        d,
        "entry create: target of bad updates",
        &[
            "entry", "create", "-entryID", "e-victim", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/victim", "-selector", "unix:uid:1500",
        ],
    )?;
    row(
        d,
        "entry update: identical to another entry",
        &[
            "entry", "update", "-entryID", "e-victim", "-parentID", PARENT, "-spiffeID",
            "spiffe://example.org/basic", "-selector", "unix:uid:1000", "-selector",
            "unix:gid:1000", "-x509SVIDTTL", "120",
        ],
    )?;
    let bad_updates: &[(&str, &[&str])] = &[
        (
            "entry update: unknown entry",
            &[
                "-entryID", "e-unknown", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/u1", "-selector", "unix:uid:1",
            ],
        ),
        (
            "entry update: storeSVID mixed selector types",
            &[
                "-entryID", "e-victim", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/victim", "-selector", "k8s:ns:x", "-selector", "unix:uid:1",
                "-storeSVID",
            ],
        ),
        (
            "entry update: wildcard dns in the middle",
            &[
                "-entryID", "e-victim", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/victim", "-selector", "unix:uid:1000", "-dns",
                "a.*.example.org",
            ],
        ),
        (
            "entry update: reserved spiffe id",
            &[
                "-entryID", "e-victim", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/spire/x", "-selector", "unix:uid:1000",
            ],
        ),
        (
            "entry update: foreign parent id",
            &[
                "-entryID", "e-victim", "-parentID", "spiffe://other.org/x", "-spiffeID",
                "spiffe://example.org/victim", "-selector", "unix:uid:1000",
            ],
        ),
        (
            "entry update: missing federated bundle",
            &[
                "-entryID", "e-victim", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/victim", "-selector", "unix:uid:1000", "-federatesWith",
                "spiffe://nowhere.org",
            ],
        ),
        (
            "entry update: duplicate selector",
            &[
                "-entryID", "e-victim", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/victim", "-selector", "unix:uid:1000", "-selector",
                "unix:uid:1000",
            ],
        ),
        (
            "entry update: no selector",
            &[
                "-entryID", "e-victim", "-parentID", PARENT, "-spiffeID",
                "spiffe://example.org/victim",
            ],
        ),
        (
            "entry update: no entry id",
            &[
                "-parentID", PARENT, "-spiffeID", "spiffe://example.org/victim", "-selector",
                "unix:uid:1500",
            ],
        ),
    ];
    for (name, args) in bad_updates {
        let mut argv = vec!["entry", "update"];
        argv.extend_from_slice(args);
        row(d, name, &argv)?;
    }
    row(d, "entry show: target of bad updates", &["entry", "show", "-entryID", "e-victim"])?;
    row(d, "entry delete: target of bad updates", &["entry", "delete", "-entryID", "e-victim"])?;
    row(
        d,
        "entry update: data file",
        &["entry", "update", "-data", "{root}/files/entries-update.json"],
    )?;
    both(d, "entry show: after updates", &["entry", "show"])?;

    // Deletes.
    twice(d, "entry delete", &["entry", "delete", "-entryID", "e-json"])?;
    row(d, "entry delete: unknown", &["entry", "delete", "-entryID", "e-json"])?;
    row(d, "entry delete: file", &["entry", "delete", "-file", "{root}/files/delete.json"])?;
    row(d, "entry delete: no id", &["entry", "delete"])?;
    both(d, "entry count: after deletes", &["entry", "count"])?;

    // Bundle deletion and the entries that federate with it.
    row(
        d,
        "bundle delete: restrict with federating entries",
        &["bundle", "delete", "-id", "spiffe://fed.org"],
    )?;
    row(
        d,
        "bundle delete: dissociate",
        &["bundle", "delete", "-id", "spiffe://fed.org", "-mode", "dissociate"],
    )?;
    row(d, "entry show: after dissociate", &["entry", "show", "-entryID", "e-fed"])?;
    twice(
        d,
        "bundle delete: delete mode",
        &["bundle", "delete", "-id", "spiffe://ent.org", "-mode", "delete"],
    )?;
    row(d, "entry show: after delete mode", &["entry", "show", "-entryID", "e-full"])?;
    twice(
        d,
        "bundle delete: restrict without entries",
        &["bundle", "delete", "-id", "spiffe://jwks.org"],
    )?;
    row(
        d,
        "bundle delete: own trust domain",
        &["bundle", "delete", "-id", "spiffe://example.org"],
    )?;
    row(d, "bundle delete: unknown", &["bundle", "delete", "-id", "spiffe://nope.org"])?;
    row(
        d,
        "bundle delete: bad mode",
        &["bundle", "delete", "-id", "spiffe://nope.org", "-mode", "purge"],
    )?;
    row(d, "bundle delete: no id", &["bundle", "delete"])?;
    both(d, "bundle count: after deletes", &["bundle", "count"])?;
    both(d, "entry show: final", &["entry", "show"])?;
    Ok(())
}

/// `entry show` reads 500 entries a page: a list of exactly one page and one of two pages.
pub(super) fn paging(d: &mut Differential) -> anyhow::Result<()> {
    let batch = |parent: &str, from: usize, count: usize| {
        let entries: Vec<serde_json::Value> = (from..from + count)
            .map(|n| {
                serde_json::json!({
                    "entry_id": format!("p-{n:04}"),
                    "parent_id": format!("spiffe://example.org/{parent}"),
                    "spiffe_id": format!("spiffe://example.org/paged/{n:04}"),
                    "selectors": [{"type": "unix", "value": "uid:7000"}],
                })
            })
            .collect();
        serde_json::json!({ "entries": entries }).to_string()
    };
    d.write_file("files/paged-a.json", batch("paged-a", 0, 500).as_bytes())?;
    d.write_file("files/paged-b.json", batch("paged-b", 500, 100).as_bytes())?;
    let ids: Vec<String> = (0..600).map(|n| format!("p-{n:04}")).collect();
    d.write_file(
        "files/paged-delete.json",
        serde_json::json!({ "ids": ids }).to_string().as_bytes(),
    )?;

    row(
        d,
        "entry create: 500 entries from a file",
        &["entry", "create", "-data", "{root}/files/paged-a.json"],
    )?;
    row(
        d,
        "entry show: exactly one page",
        &["entry", "show", "-parentID", "spiffe://example.org/paged-a"],
    )?;
    row(
        d,
        "entry create: 100 more entries from a file",
        &["entry", "create", "-data", "{root}/files/paged-b.json"],
    )?;
    row(d, "entry show: two pages", &["entry", "show", "-selector", "unix:uid:7000"])?;
    both(d, "entry count: 600 entries", &["entry", "count", "-selector", "unix:uid:7000"])?;
    row(
        d,
        "entry delete: 600 entries from a file",
        &["entry", "delete", "-file", "{root}/files/paged-delete.json"],
    )?;
    row(d, "entry count: after deleting 600", &["entry", "count", "-selector", "unix:uid:7000"])?;
    Ok(())
}
