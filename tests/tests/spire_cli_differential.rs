#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The differential suite: a broad script of unmodified `spire-server` v1.13.3 CLI commands,
//! good and bad input, plain and `-output json`, run against a real `spire-server` and
//! against `ward-server` started side by side with the same trust domain. Outputs are
//! normalised (`ward_tests::normalize`) and compared row by row; a row that differs fails
//! the test unless it is in [`KNOWN`] with the reason.
//!
//! - `WARD_DIFF_REPORT=<file>` writes every differing row (known or not) as Markdown.
//! - `WARD_DIFF_LOG=<file>` writes every row with its outcome.
//! - `WARD_DIFF_STRICT=1` also fails on known rows that match now (to prune the list).

use std::path::Path;
use std::time::Duration;

use ward_tests::differential::{Differential, Known, Side, open};
use ward_tests::script::{TD, script};
use ward_tests::server::ServerOptions;
use ward_tests::spire::{SpireBins, start_spire_server};
use ward_tests::ward::{start_ward_server, ward_server_bin};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Rows where ward answers differently from SPIRE, each with why. `open(..)` rows are
/// being fixed: remove them as they start to match (`WARD_DIFF_STRICT=1` lists them).
#[rustfmt::skip]
const KNOWN: &[Known] = &[
    open(
        "bundle sequence numbers: the server's own bundle starts at 2 (SPIRE 1), every set of a \
         federated bundle bumps the sequence (SPIRE keeps the one given, 0 for PEM) and SPIRE \
         omits spiffe_sequence 0 from SPIFFE documents",
        &[
            "bundle show (json)", "bundle show -format spiffe",
            "bundle list -format spiffe: after set", "bundle list -id (json)",
            "bundle list -id -format spiffe", "bundle set: spiffe format, again (json)",
            "bundle list -id: spiffe-format bundle", "bundle list: after sets (json)",
            "bundle show: after x509 taint (json)", "bundle show -format spiffe: after x509 taint",
            "bundle show -format spiffe: after x509 revoke", "bundle show: after jwt taint (json)",
            "bundle show -format spiffe: after jwt taint",
            "bundle show -format spiffe: after jwt revoke",
        ],
    ),
    open(
        "trust domain parse errors carry an extra \"invalid trust domain: \" prefix",
        &["bundle list -id: malformed", "federation show: malformed", "federation delete: malformed"],
    ),
    open(
        "CreateJoinToken does not check the agent ID as SPIRE does (\"invalid agent ID: ... is not \
         a workload in trust domain ...; path is ...\")",
        &["token generate: reserved agent id", "token generate: server id", "token generate: trust domain id"],
    ),
    open(
        "entry DNS names: SPIRE's create and update results list them sorted (reads keep the \
         order given); ward's results keep the order given",
        &["entry create: every flag", "entry update: every flag", "entry update: every flag, again (json)"],
    ),
    open(
        "entry ID validation: SPIRE allows only [-._0-9A-Za-z] and says \"datastore-validation: \
         invalid registration entry: entry ID contains invalid characters\" / \"entry ID too \
         long\"; an ID in use is \"datastore-sql: UNIQUE constraint failed: \
         registered_entries.entry_id\"",
        &[
            "entry create: entry id in use", "entry create: entry id with slash",
            "entry create: entry id with space", "entry create: entry id with percent",
            "entry create: entry id of 256 characters",
        ],
    ),
    open(
        "entry SPIFFE ID and parent ID messages: SPIRE says \"... is not a workload in trust \
         domain ...; path is empty / in the reserved namespace\" and \"is not a member of trust \
         domain ...; path is empty\"",
        &[
            "entry create: spiffe id without path", "entry create: reserved spiffe id",
            "entry create: parent id without path", "entry update: reserved spiffe id",
        ],
    ),
    open(
        "an entry with the same selector twice is accepted (de-duplicated); SPIRE refuses it \
         with AlreadyExists",
        &["entry create: duplicate selector", "entry update: duplicate selector"],
    ),
    open(
        "store_svid with selectors of different types is accepted; SPIRE refuses it",
        &["entry create: storeSVID mixed selector types", "entry update: storeSVID mixed selector types"],
    ),
    open(
        "entry DNS name validation: SPIRE accepts underscores, and its messages are \"invalid \
         DNS name: wildcard must be first label\" and \"invalid DNS name: idna error ...\"",
        &[
            "entry create: wildcard dns in the middle", "entry create: dns with underscore",
            "entry create: dns with leading hyphen", "entry create: dns with empty label",
            "entry update: wildcard dns in the middle",
        ],
    ),
    open(
        "federates_with a trust domain without a bundle: SPIRE says Internal \"unable to find \
         federated bundle \\\"spiffe://nowhere.org\\\"\"",
        &["entry create: missing federated bundle", "entry update: missing federated bundle"],
    ),
    open(
        "entry list/count filters: SPIRE refuses a parent ID outside the trust domain or without \
         a path and a reserved or path-less SPIFFE ID (\"malformed parent ID filter\" / \
         \"malformed SPIFFE ID filter\"); federates-with SUBSET does not match entries that \
         federate with nothing",
        &[
            "entry show -federatesWith subset", "entry count -federatesWith subset",
            "entry show -parentID foreign", "entry count -parentID foreign",
            "entry show -parentID without path", "entry count -parentID without path",
            "entry show -spiffeID reserved", "entry count -spiffeID reserved",
            "entry show -spiffeID without path", "entry count -spiffeID without path",
        ],
    ),
    open(
        "entry update: making an entry identical to another is refused (SPIRE allows it); a \
         missing entry is NotFound \"entry not found\" (SPIRE: \"failed to update entry\")",
        &[
            "entry update: identical to another entry", "entry update: unknown entry",
            "entry show: target of bad updates", "entry update: data file",
        ],
    ),
    open(
        "bundle delete: results name the trust domain as parsed (SPIRE echoes the caller's \
         spiffe://...), the restrict refusal names the trust domain instead of the entry count, \
         \"no such bundle\" instead of \"bundle not found\", own-bundle text differs; DISSOCIATE \
         bumps the entries' revision (SPIRE does not)",
        &[
            "bundle delete: restrict with federating entries", "entry show: after dissociate",
            "bundle delete: delete mode, again (json)",
            "bundle delete: restrict without entries, again (json)",
            "bundle delete: own trust domain", "bundle delete: unknown", "entry show: final",
            "entry show: final (json)",
        ],
    ),
    open(
        "federation: relationships are listed sorted (SPIRE: creation order) and without their \
         bundle; a duplicate is AlreadyExists (SPIRE: Internal \"datastore-sql: UNIQUE constraint \
         failed: federated_trust_domains.trust_domain\"); update of a missing one is NotFound \
         (SPIRE: Internal \"unable to fetch federation relationship: record not found\")",
        &[
            "federation create: https_spiffe with bundle, again (json)", "federation create: duplicate",
            "federation list", "federation list (json)", "federation show (json)",
            "federation update: unknown", "federation list: after update", "federation list: final",
        ],
    ),
    open(
        "MintX509SVID: reserved, server and trust-domain IDs are minted (SPIRE: \"CSR URI SAN is \
         invalid: ...\"), CSR DNS names are not validated (wildcard overlap, wildcard not first, \
         empty label), a negative TTL is refused (SPIRE uses the default)",
        &[
            "x509 mint: reserved id", "x509 mint: server id", "x509 mint: trust domain id",
            "x509 mint: foreign id", "x509 mint: wildcard overlap", "x509 mint: wildcard in the middle",
            "x509 mint: dns with empty label", "x509 mint: negative ttl",
        ],
    ),
    open(
        "MintJWTSVID: reserved and trust-domain IDs are minted (SPIRE: \"invalid SPIFFE ID: ...\"), \
         an empty audience is signed (SPIRE: Internal \"invalid JWT-SVID audience: cannot be \
         empty\"), a negative TTL is refused (SPIRE uses the default)",
        &["jwt mint: reserved id", "jwt mint: trust domain id", "jwt mint: empty audience", "jwt mint: negative ttl"],
    ),
    open(
        "agent show/ban/evict: an ID that is not an agent ID of the trust domain is NotFound; \
         SPIRE says InvalidArgument \"invalid agent ID: ...\"",
        &["agent show: not an agent id", "agent show: foreign id", "agent ban: not an agent id", "agent evict: foreign id"],
    ),
];

#[test]
fn spire_cli_differential() {
    let tmp = tempfile::Builder::new().prefix("ward-diff").tempdir().unwrap();
    let mut d = match start(tmp.path()) {
        Ok(d) => d,
        Err(e) => panic!("could not start the servers: {e:#}"),
    };
    if let Err(e) = script(&mut d) {
        panic!("the script could not run: {e:#}");
    }
    d.assert_known(KNOWN, "SPIRE and ward");
}

/// Starts both servers (each in its own directory, socket and port) and waits until the
/// `spire-server` CLI's healthcheck passes against each.
fn start(root: &Path) -> anyhow::Result<Differential> {
    let bins = SpireBins::locate()?;
    let ward_bin = ward_server_bin()?;
    let options = ServerOptions::new(TD);
    let spire_root = root.join("spire");
    let ward_root = root.join("ward");
    let spire = start_spire_server(&bins, &spire_root.join("server"), &options)?;
    let ward = start_ward_server(&ward_bin, &ward_root.join("server"), &options)?;
    let mut d = Differential::new(
        Side::new("spire", spire, &bins.server, &spire_root),
        Side::new("ward", ward, &bins.server, &ward_root),
    );
    d.wait_healthy(READY_TIMEOUT)?;
    Ok(d)
}
