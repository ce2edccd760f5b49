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

mod authorities;
mod entries;
mod federation;
mod mint_agents;

use authorities::{local_authorities, logger};
use entries::{entries, paging};
use federation::federation;
use mint_agents::{agents, mint};

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
    d.write_file("files/entries-not-json.json", b"entries: none")?;
    d.write_file("files/entries-wrong-type.json", br#"{"entries": [{"spiffe_id": 5}]}"#)?;
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
