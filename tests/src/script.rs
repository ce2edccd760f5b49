//! The shared script of the differential suites: a broad set of `spire-server` CLI commands,
//! good and bad input, plain and `-output json`, by area (tokens, bundles, entries, paging,
//! federation, minting, agents, local authorities, logger).
//!
//! [`script`] runs every row on a [`Differential`]; the suites choose what the two sides are
//! (SPIRE's server against ward's, or the `spire-server` CLI against `ward-server`'s own CLI)
//! and which differences they expect.

use std::time::Duration;

use anyhow::Context;
use base64::Engine;

use crate::differential::{Differential, Row, Side};
use crate::spire::{SpireBins, start_spire_agent};
use crate::wait::{Step, poll_until};

/// The trust domain both servers run.
pub const TD: &str = "example.org";
/// The parent ID of most entries the script creates.
pub const PARENT: &str = "spiffe://example.org/node";
/// How long an agent may take to attest.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the whole script on `d`, area by area.
///
/// # Errors
/// When a command could not be run at all (a comparison that differs is not an error).
pub fn script(d: &mut Differential) -> anyhow::Result<()> {
    fixtures(d)?;
    health_and_tokens(d)?;
    bundles(d)?;
    entries(d)?;
    paging(d)?;
    federation(d)?;
    mint(d)?;
    agents(d)?;
    local_authorities(d)?;
    logger(d)?;
    Ok(())
}

/// Runs `argv` as row `name` and again with `-output json` as `<name> (json)`.
fn both(d: &mut Differential, name: &str, argv: &[&str]) -> anyhow::Result<()> {
    d.run(Row::new(name, argv))?;
    let mut json = argv.to_vec();
    json.extend(["-output", "json"]);
    d.run(Row::new(&format!("{name} (json)"), &json))
}

/// Runs a command that changes state as row `name`, then the same command again with
/// `-output json` as `<name>, again (json)` (the second run meets the state the first left).
fn twice(d: &mut Differential, name: &str, argv: &[&str]) -> anyhow::Result<()> {
    d.run(Row::new(name, argv))?;
    let mut json = argv.to_vec();
    json.extend(["-output", "json"]);
    d.run(Row::new(&format!("{name}, again (json)"), &json))
}

/// Deletes, on each side and outside the comparison, the entries whose SPIFFE ID path
/// matches `path`: entries that a bad create row made on one side only, so that later rows
/// compare the same set of entries.
fn drop_entries(d: &mut Differential, path: &str) -> anyhow::Result<()> {
    let path = regex::Regex::new(path)?;
    for side in &d.sides {
        let listed = side.cli.json(&["entry", "show"], &[])?;
        for entry in listed["entries"].as_array().into_iter().flatten() {
            let entry_path = entry["spiffe_id"]["path"].as_str().unwrap_or_default();
            if path.is_match(entry_path) {
                let id = entry["id"].as_str().context("entry without id")?;
                side.cli.ok(&["entry", "delete"], &["-entryID", id])?;
            }
        }
    }
    Ok(())
}

fn row(d: &mut Differential, name: &str, argv: &[&str]) -> anyhow::Result<()> {
    d.run(Row::new(name, argv))
}

// ---------------------------------------------------------------------------------------
// Input files

/// A self-signed CA for `spiffe://<td>` as (PEM, DER, uncompressed P-256 public point).
fn ca_for(td: &str) -> anyhow::Result<(String, Vec<u8>, Vec<u8>)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into()?)];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), cert.der().to_vec(), key.public_key_raw().to_vec()))
}

/// A SPIFFE bundle document with one X.509 authority and one JWT authority.
fn spiffe_bundle(der: &[u8], point: &[u8], kid: &str, sequence: u64) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (x, y) = (b64url.encode(&point[1..33]), b64url.encode(&point[33..65]));
    serde_json::json!({
        "keys": [
            {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": x, "y": y,
             "x5c": [b64.encode(der)]},
            {"use": "jwt-svid", "kty": "EC", "kid": kid, "crv": "P-256", "x": x, "y": y},
        ],
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": 300,
    })
    .to_string()
}

fn fixtures(d: &mut Differential) -> anyhow::Result<()> {
    let (fed_pem, _, _) = ca_for("fed.org")?;
    let (fed2_pem, _, _) = ca_for("fed.org")?;
    let (ent_pem, _, _) = ca_for("ent.org")?;
    let (_, jwks_der, jwks_point) = ca_for("jwks.org")?;
    let (spf_pem, _, _) = ca_for("spiffe.org")?;
    d.write_file("files/fed.pem", fed_pem.as_bytes())?;
    d.write_file("files/fed-both.pem", format!("{fed_pem}{fed2_pem}").as_bytes())?;
    d.write_file("files/ent.pem", ent_pem.as_bytes())?;
    d.write_file("files/spiffe-org.pem", spf_pem.as_bytes())?;
    d.write_file(
        "files/jwks.json",
        spiffe_bundle(&jwks_der, &jwks_point, "jwks-key-1", 7).as_bytes(),
    )?;
    d.write_file("files/bad.pem", b"this is not PEM\n")?;
    d.write_file("files/empty.pem", b"")?;
    d.write_file(
        "files/bad-jwt-key.json",
        br#"{"keys":[{"use":"jwt-svid","kty":"EC","kid":"k","crv":"P-256","x":"AAAA","y":"AAAA"}]}"#,
    )?;
    d.write_file(
        "files/entries.json",
        serde_json::json!({"entries": [
            {"entry_id": "e-batch-1", "parent_id": PARENT, "spiffe_id": "spiffe://example.org/batch-1",
             "selectors": [{"type": "unix", "value": "uid:4001"}], "x509_svid_ttl": 200},
            {"entry_id": "e-batch-2", "parent_id": PARENT, "spiffe_id": "spiffe://other.org/batch-2",
             "selectors": [{"type": "unix", "value": "uid:4002"}]},
            {"entry_id": "e-batch-3", "parent_id": PARENT, "spiffe_id": "spiffe://example.org/batch-3",
             "selectors": [{"type": "unix", "value": "uid:4003"}], "dns_names": ["b3.example.org"],
             "hint": "batch"},
        ]})
        .to_string()
        .as_bytes(),
    )?;
    d.write_file(
        "files/entries-update.json",
        serde_json::json!({"entries": [
            {"entry_id": "e-batch-1", "parent_id": PARENT, "spiffe_id": "spiffe://example.org/batch-1",
             "selectors": [{"type": "unix", "value": "uid:4011"}], "x509_svid_ttl": 300},
            {"entry_id": "e-missing", "parent_id": PARENT, "spiffe_id": "spiffe://example.org/missing",
             "selectors": [{"type": "unix", "value": "uid:4012"}]},
        ]})
        .to_string()
        .as_bytes(),
    )?;
    d.write_file("files/entries-bad.json", b"{\"entries\": [")?;
    d.write_file("files/delete.json", br#"{"ids": ["e-batch-3", "e-missing"]}"#)?;
    d.write_file(
        "files/federation.json",
        serde_json::json!({"federationRelationships": [
            {"trustDomain": "data1.org", "bundleEndpointURL": "https://127.0.0.1:4/bundle",
             "bundleEndpointProfile": "https_web"},
            {"trustDomain": "example.org", "bundleEndpointURL": "https://127.0.0.1:5/bundle",
             "bundleEndpointProfile": "https_web"},
        ]})
        .to_string()
        .as_bytes(),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The script, by area

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn health_and_tokens(d: &mut Differential) -> anyhow::Result<()> {
    row(d, "healthcheck", &["healthcheck"])?;
    row(d, "healthcheck -shallow", &["healthcheck", "-shallow"])?;
    row(d, "healthcheck -verbose", &["healthcheck", "-verbose"])?;

    d.run(
        Row::new("token generate", &["token", "generate"]).capture("tok_plain", r"Token: (\S+)"),
    )?;
    d.run(
        Row::new("token generate (json)", &["token", "generate", "-ttl", "60", "-output", "json"])
            .capture("tok_json", r#""value":\s*"([^"]+)""#),
    )?;
    d.run(
        Row::new(
            "token generate -spiffeID",
            &["token", "generate", "-spiffeID", "spiffe://example.org/host"],
        )
        .capture("tok_host", r"Token: (\S+)"),
    )?;
    row(d, "token generate: ttl 0", &["token", "generate", "-ttl", "0"])?;
    row(d, "token generate: negative ttl", &["token", "generate", "-ttl", "-5"])?;
    row(
        d,
        "token generate: reserved agent id",
        &["token", "generate", "-spiffeID", "spiffe://example.org/spire/agent/x"],
    )?;
    row(
        d,
        "token generate: server id",
        &["token", "generate", "-spiffeID", "spiffe://example.org/spire/server"],
    )?;
    row(
        d,
        "token generate: foreign trust domain",
        &["token", "generate", "-spiffeID", "spiffe://other.org/host"],
    )?;
    row(
        d,
        "token generate: trust domain id",
        &["token", "generate", "-spiffeID", "spiffe://example.org"],
    )?;
    row(d, "token generate: malformed id", &["token", "generate", "-spiffeID", "host"])?;
    Ok(())
}

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn bundles(d: &mut Differential) -> anyhow::Result<()> {
    both(d, "bundle show", &["bundle", "show"])?;
    row(d, "bundle show -format spiffe", &["bundle", "show", "-format", "spiffe"])?;
    row(d, "bundle show: bad format", &["bundle", "show", "-format", "jwks"])?;
    both(d, "bundle count: own only", &["bundle", "count"])?;
    both(d, "bundle list: empty", &["bundle", "list"])?;

    row(
        d,
        "bundle set: pem",
        &["bundle", "set", "-id", "spiffe://fed.org", "-path", "{root}/files/fed.pem"],
    )?;
    row(
        d,
        "bundle set: same content again",
        &["bundle", "set", "-id", "spiffe://fed.org", "-path", "{root}/files/fed.pem"],
    )?;
    row(d, "bundle list: after set", &["bundle", "list"])?;
    row(d, "bundle list -format spiffe: after set", &["bundle", "list", "-format", "spiffe"])?;
    row(
        d,
        "bundle set: new content",
        &["bundle", "set", "-id", "spiffe://fed.org", "-path", "{root}/files/fed-both.pem"],
    )?;
    both(d, "bundle list -id", &["bundle", "list", "-id", "spiffe://fed.org"])?;
    row(
        d,
        "bundle list -id -format spiffe",
        &["bundle", "list", "-id", "spiffe://fed.org", "-format", "spiffe"],
    )?;
    twice(
        d,
        "bundle set: spiffe format",
        &[
            "bundle", "set", "-id", "spiffe://jwks.org", "-format", "spiffe", "-path",
            "{root}/files/jwks.json",
        ],
    )?;
    row(
        d,
        "bundle list -id: spiffe-format bundle",
        &["bundle", "list", "-id", "spiffe://jwks.org", "-format", "spiffe"],
    )?;
    row(
        d,
        "bundle set: id without scheme",
        &["bundle", "set", "-id", "noscheme.org", "-path", "{root}/files/fed.pem"],
    )?;
    row(
        d,
        "bundle set: own trust domain",
        &["bundle", "set", "-id", "spiffe://example.org", "-path", "{root}/files/fed.pem"],
    )?;
    row(
        d,
        "bundle set: id with path",
        &["bundle", "set", "-id", "spiffe://fed.org/path", "-path", "{root}/files/fed.pem"],
    )?;
    row(
        d,
        "bundle set: not pem",
        &["bundle", "set", "-id", "spiffe://bad.org", "-path", "{root}/files/bad.pem"],
    )?;
    row(
        d,
        "bundle set: empty file",
        &["bundle", "set", "-id", "spiffe://bad.org", "-path", "{root}/files/empty.pem"],
    )?;
    row(
        d,
        "bundle set: missing file",
        &["bundle", "set", "-id", "spiffe://bad.org", "-path", "{root}/files/nope.pem"],
    )?;
    row(
        d,
        "bundle set: bad jwt key",
        &[
            "bundle", "set", "-id", "spiffe://bad.org", "-format", "spiffe", "-path",
            "{root}/files/bad-jwt-key.json",
        ],
    )?;
    row(d, "bundle set: no id", &["bundle", "set", "-path", "{root}/files/fed.pem"])?;
    row(d, "bundle list -id: unknown", &["bundle", "list", "-id", "spiffe://nope.org"])?;
    row(d, "bundle list -id: malformed", &["bundle", "list", "-id", "spiffe://"])?;
    both(d, "bundle count: after sets", &["bundle", "count"])?;
    both(d, "bundle list: after sets", &["bundle", "list"])?;
    Ok(())
}

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn entries(d: &mut Differential) -> anyhow::Result<()> {
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
fn paging(d: &mut Differential) -> anyhow::Result<()> {
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

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn federation(d: &mut Differential) -> anyhow::Result<()> {
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

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn mint(d: &mut Differential) -> anyhow::Result<()> {
    both(d, "x509 mint", &["x509", "mint", "-spiffeID", "spiffe://example.org/minted"])?;
    row(
        d,
        "x509 mint: dns and ttl",
        &[
            "x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-dns", "a.example.org",
            "-dns", "b.example.org", "-ttl", "30m",
        ],
    )?;
    row(
        d,
        "x509 mint: wildcard dns",
        &["x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-dns", "*.example.org"],
    )?;
    row(
        d,
        "x509 mint -write",
        &["x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-write", "{root}/minted"],
    )?;
    let bad: &[(&str, &[&str])] = &[
        ("x509 mint: reserved id", &["-spiffeID", "spiffe://example.org/spire/agent/x"]),
        ("x509 mint: server id", &["-spiffeID", "spiffe://example.org/spire/server"]),
        ("x509 mint: trust domain id", &["-spiffeID", "spiffe://example.org"]),
        ("x509 mint: foreign id", &["-spiffeID", "spiffe://other.org/w"]),
        ("x509 mint: malformed id", &["-spiffeID", "minted"]),
        (
            "x509 mint: wildcard overlap",
            &[
                "-spiffeID", "spiffe://example.org/minted", "-dns", "*.example.org", "-dns",
                "a.example.org",
            ],
        ),
        (
            "x509 mint: wildcard in the middle",
            &["-spiffeID", "spiffe://example.org/minted", "-dns", "a.*.example.org"],
        ),
        (
            "x509 mint: dns with underscore",
            &["-spiffeID", "spiffe://example.org/minted", "-dns", "bad_label.example.org"],
        ),
        (
            "x509 mint: dns with empty label",
            &["-spiffeID", "spiffe://example.org/minted", "-dns", "a..example.org"],
        ),
        ("x509 mint: negative ttl", &["-spiffeID", "spiffe://example.org/minted", "-ttl", "-1m"]),
        ("x509 mint: no id", &[]),
    ];
    for (name, args) in bad {
        let mut argv = vec!["x509", "mint"];
        argv.extend_from_slice(args);
        row(d, name, &argv)?;
    }

    both(
        d,
        "jwt mint",
        &["jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "aud1"],
    )?;
    row(
        d,
        "jwt mint: two audiences and ttl",
        &[
            "jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "aud1",
            "-audience", "aud2", "-ttl", "2m",
        ],
    )?;
    row(
        d,
        "jwt mint: ttl above the maximum",
        &[
            "jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "a", "-ttl",
            "48h",
        ],
    )?;
    row(
        d,
        "jwt mint -write",
        &[
            "jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "a", "-write",
            "{root}/jwt.token",
        ],
    )?;
    let bad: &[(&str, &[&str])] = &[
        (
            "jwt mint: reserved id",
            &["-spiffeID", "spiffe://example.org/spire/agent/x", "-audience", "a"],
        ),
        ("jwt mint: trust domain id", &["-spiffeID", "spiffe://example.org", "-audience", "a"]),
        ("jwt mint: foreign id", &["-spiffeID", "spiffe://other.org/w", "-audience", "a"]),
        ("jwt mint: no audience", &["-spiffeID", "spiffe://example.org/minted"]),
        (
            "jwt mint: empty audience",
            &["-spiffeID", "spiffe://example.org/minted", "-audience", ""],
        ),
        (
            "jwt mint: negative ttl",
            &["-spiffeID", "spiffe://example.org/minted", "-audience", "a", "-ttl", "-1m"],
        ),
        ("jwt mint: no id", &["-audience", "a"]),
    ];
    for (name, args) in bad {
        let mut argv = vec!["jwt", "mint"];
        argv.extend_from_slice(args);
        row(d, name, &argv)?;
    }
    Ok(())
}

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn agents(d: &mut Differential) -> anyhow::Result<()> {
    both(d, "agent list: none", &["agent", "list"])?;
    both(d, "agent count: none", &["agent", "count"])?;
    both(d, "agent purge: none", &["agent", "purge"])?;

    d.run(
        Row::new("token generate: for the agent", &["token", "generate", "-ttl", "600"])
            .capture("agent_token", r"Token: (\S+)"),
    )?;
    attest_agents(d)?;

    both(d, "agent list", &["agent", "list"])?;
    both(d, "agent count", &["agent", "count"])?;
    both(d, "agent show", &["agent", "show", "-spiffeID", "{agent_id}"])?;
    row(
        d,
        "agent show: unknown",
        &["agent", "show", "-spiffeID", "spiffe://example.org/spire/agent/join_token/nope"],
    )?;
    row(
        d,
        "agent show: not an agent id",
        &["agent", "show", "-spiffeID", "spiffe://example.org/workload"],
    )?;
    row(
        d,
        "agent show: foreign id",
        &["agent", "show", "-spiffeID", "spiffe://other.org/spire/agent/x"],
    )?;
    row(d, "agent show: malformed id", &["agent", "show", "-spiffeID", "agent"])?;
    row(d, "agent show: no id", &["agent", "show"])?;
    let filters: &[(&str, &[&str])] = &[
        ("-attestationType join_token", &["-attestationType", "join_token"]),
        ("-attestationType x509pop", &["-attestationType", "x509pop"]),
        ("-banned false", &["-banned", "false"]),
        ("-banned true", &["-banned", "true"]),
        ("-canReattest true", &["-canReattest", "true"]),
        ("-canReattest false", &["-canReattest", "false"]),
        ("-expiresBefore far future", &["-expiresBefore", "2099-01-01 00:00:00 +0000 +00"]),
        ("-expiresBefore past", &["-expiresBefore", "2001-01-01 00:00:00 +0000 +00"]),
        ("-expiresBefore malformed", &["-expiresBefore", "tomorrow"]),
        ("-selector", &["-selector", "spiffe_id:{agent_id}"]),
        ("-selector no match", &["-selector", "unix:uid:1"]),
        ("-selector any", &["-selector", "unix:uid:1", "-matchSelectorsOn", "any"]),
        ("-selector bad match", &["-selector", "unix:uid:1", "-matchSelectorsOn", "most"]),
        ("-selector malformed", &["-selector", "unix"]),
    ];
    for (label, args) in filters {
        let mut list = vec!["agent", "list"];
        list.extend_from_slice(args);
        row(d, &format!("agent list {label}"), &list)?;
        let mut count = vec!["agent", "count"];
        count.extend_from_slice(args);
        row(d, &format!("agent count {label}"), &count)?;
    }
    both(d, "agent purge -dryRun", &["agent", "purge", "-dryRun"])?;
    row(d, "agent purge -expiredFor -dryRun", &["agent", "purge", "-expiredFor", "1s", "-dryRun"])?;
    twice(d, "agent ban", &["agent", "ban", "-spiffeID", "{agent_id}"])?;
    both(d, "agent list: banned", &["agent", "list"])?;
    row(d, "agent show: banned", &["agent", "show", "-spiffeID", "{agent_id}"])?;
    row(d, "agent count -banned true: after ban", &["agent", "count", "-banned", "true"])?;
    row(
        d,
        "agent ban: unknown",
        &["agent", "ban", "-spiffeID", "spiffe://example.org/spire/agent/join_token/nope"],
    )?;
    row(
        d,
        "agent ban: not an agent id",
        &["agent", "ban", "-spiffeID", "spiffe://example.org/workload"],
    )?;
    row(d, "agent ban: no id", &["agent", "ban"])?;
    twice(d, "agent evict", &["agent", "evict", "-spiffeID", "{agent_id}"])?;
    row(d, "agent evict: again", &["agent", "evict", "-spiffeID", "{agent_id}"])?;
    row(
        d,
        "agent evict: foreign id",
        &["agent", "evict", "-spiffeID", "spiffe://other.org/spire/agent/x"],
    )?;
    row(d, "agent evict: no id", &["agent", "evict"])?;
    row(d, "agent list: after evict", &["agent", "list"])?;
    row(d, "agent count: after evict", &["agent", "count"])?;
    for side in &mut d.sides {
        side.agent = None;
    }
    Ok(())
}

/// Starts a `spire-agent` with the captured join token against each server and waits until
/// each server lists one agent.
fn attest_agents(d: &mut Differential) -> anyhow::Result<()> {
    let bins = SpireBins::locate()?;
    for side in &mut d.sides {
        let token = side.vars.get("agent_token").cloned().with_context(|| {
            format!("{}: token generate printed no token for the agent", side.label)
        })?;
        side.set_var("agent_id", &format!("spiffe://{TD}/spire/agent/join_token/{token}"));
        let pem = side.cli.bundle_show_pem()?;
        let bundle_path = side.root.join("agent-bundle.pem");
        std::fs::write(&bundle_path, pem)?;
        side.agent = Some(start_spire_agent(
            &bins,
            &side.root.join("agent"),
            TD,
            side.server.port,
            &bundle_path,
            &token,
        )?);
    }
    for side in &mut d.sides {
        let label = side.label;
        let Side { agent, server, cli, .. } = side;
        let agent = agent.as_mut().context("agent")?;
        poll_until(&format!("the agent to attest to {label}"), AGENT_TIMEOUT, || {
            agent.daemon.ensure_running()?;
            server.daemon.ensure_running()?;
            let out = cli.raw(&["agent", "count"], &[])?;
            Ok(if out.stdout.trim() == "1 attested agent" {
                Step::Done(())
            } else {
                Step::Retry(out.describe())
            })
        })?;
    }
    Ok(())
}

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn local_authorities(d: &mut Differential) -> anyhow::Result<()> {
    for (kind, label) in [("x509", "X.509"), ("jwt", "JWT")] {
        let active = format!("{kind}_active");
        let prepared = format!("{kind}_prepared");
        let la = |verb: &str| format!("localauthority {kind} {verb}");
        d.run(
            Row::new(&la("show"), &["localauthority", kind, "show"])
                .capture(&active, &format!(r"Active {label} authority:\s+Authority ID: (\S+)")),
        )?;
        row(
            d,
            &format!("{} (json)", la("show")),
            &["localauthority", kind, "show", "-output", "json"],
        )?;
        let active_arg = format!("{{{active}}}");
        let prepared_arg = format!("{{{prepared}}}");
        row(
            d,
            &format!("{}: nothing prepared", la("activate")),
            &["localauthority", kind, "activate", "-authorityID", &active_arg],
        )?;
        row(
            d,
            &format!("{}: active authority", la("taint")),
            &["localauthority", kind, "taint", "-authorityID", &active_arg],
        )?;
        row(
            d,
            &format!("{}: active authority", la("revoke")),
            &["localauthority", kind, "revoke", "-authorityID", &active_arg],
        )?;
        d.run(
            Row::new(&la("prepare"), &["localauthority", kind, "prepare"])
                .capture(&prepared, r"Authority ID: (\S+)"),
        )?;
        row(d, &format!("{}: after prepare", la("show")), &["localauthority", kind, "show"])?;
        row(
            d,
            &format!("{}: unknown id", la("activate")),
            &["localauthority", kind, "activate", "-authorityID", "0123456789abcdef"],
        )?;
        row(d, &format!("{}: no id", la("activate")), &["localauthority", kind, "activate"])?;
        row(
            d,
            &format!("{}: active instead of prepared", la("activate")),
            &["localauthority", kind, "activate", "-authorityID", &active_arg],
        )?;
        row(
            d,
            &format!("{}: prepared authority", la("taint")),
            &["localauthority", kind, "taint", "-authorityID", &prepared_arg],
        )?;
        twice(
            d,
            &la("activate"),
            &["localauthority", kind, "activate", "-authorityID", &prepared_arg],
        )?;
        row(d, &format!("{}: after activate", la("show")), &["localauthority", kind, "show"])?;
        row(
            d,
            &format!("{}: old authority not tainted", la("revoke")),
            &["localauthority", kind, "revoke", "-authorityID", &active_arg],
        )?;
        row(
            d,
            &format!("{}: unknown id", la("taint")),
            &["localauthority", kind, "taint", "-authorityID", "0123456789abcdef"],
        )?;
        row(d, &format!("{}: no id", la("taint")), &["localauthority", kind, "taint"])?;
        twice(d, &la("taint"), &["localauthority", kind, "taint", "-authorityID", &active_arg])?;
        row(
            d,
            &format!("{}: again", la("taint")),
            &["localauthority", kind, "taint", "-authorityID", &active_arg],
        )?;
        row(d, &format!("{}: after taint", la("show")), &["localauthority", kind, "show"])?;
        both(d, &format!("bundle show: after {kind} taint"), &["bundle", "show"])?;
        row(
            d,
            &format!("bundle show -format spiffe: after {kind} taint"),
            &["bundle", "show", "-format", "spiffe"],
        )?;
        row(
            d,
            &format!("{}: unknown id", la("revoke")),
            &["localauthority", kind, "revoke", "-authorityID", "0123456789abcdef"],
        )?;
        row(d, &format!("{}: no id", la("revoke")), &["localauthority", kind, "revoke"])?;
        twice(d, &la("revoke"), &["localauthority", kind, "revoke", "-authorityID", &active_arg])?;
        row(d, &format!("{}: after revoke", la("show")), &["localauthority", kind, "show"])?;
        row(
            d,
            &format!("bundle show -format spiffe: after {kind} revoke"),
            &["bundle", "show", "-format", "spiffe"],
        )?;
    }
    row(
        d,
        "upstreamauthority taint",
        &["upstreamauthority", "taint", "-subjectKeyID", "0123456789abcdef"],
    )?;
    row(d, "upstreamauthority taint: no id", &["upstreamauthority", "taint"])?;
    row(
        d,
        "upstreamauthority revoke",
        &["upstreamauthority", "revoke", "-subjectKeyID", "0123456789abcdef"],
    )?;
    row(d, "upstreamauthority revoke: no id", &["upstreamauthority", "revoke"])?;
    Ok(())
}

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn logger(d: &mut Differential) -> anyhow::Result<()> {
    both(d, "logger get", &["logger", "get"])?;
    twice(d, "logger set", &["logger", "set", "-level", "warn"])?;
    row(d, "logger get: after set", &["logger", "get"])?;
    row(d, "logger set: unknown level", &["logger", "set", "-level", "loud"])?;
    row(d, "logger set: no level", &["logger", "set"])?;
    row(d, "logger set: upper case", &["logger", "set", "-level", "ERROR"])?;
    twice(d, "logger reset", &["logger", "reset"])?;
    row(d, "logger get: after reset", &["logger", "get"])?;
    Ok(())
}
