#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Golden bytes of the log-entry format: one fixture per [`Command`] variant, so any change
//! to how a command (or a type inside it) encodes fails here. Format 1 is frozen (see
//! `ward_store::log_entry`): a failing fixture means the change needs a new format number
//! and a decoder for the old one, not a new fixture.

use std::collections::BTreeMap;

use ward_core::{
    AgentId, Bundle, BundleEndpointProfile, EntryId, EntryPatch, FederationRelationship, JoinToken,
    JoinTokenHash, JwtAuthority, RegistrationEntry, Selector, SelectorSet, SpiffeId, TrustDomain,
    X509Authority,
};
use ward_store::{
    AgentAttestation, BundleDeleteMode, BundleMask, BundleUpdate, Command, EntryUpdate,
    FederationMask, FederationUpdate, LogEntry, StoreError,
};

const FIXTURES: &str = include_str!("data/log_entry_format1.hex");

/// The request id every fixture carries.
const REQUEST_ID: u128 = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff;

/// The variant's name. The match is exhaustive: a new variant must be named here, and then
/// needs a sample in [`samples`] and a fixture line.
fn variant(cmd: &Command) -> &'static str {
    match cmd {
        Command::CreateEntries(_) => "CreateEntries",
        Command::UpdateEntries(_) => "UpdateEntries",
        Command::DeleteEntries(_) => "DeleteEntries",
        Command::CreateJoinToken { .. } => "CreateJoinToken",
        Command::ConsumeJoinToken { .. } => "ConsumeJoinToken",
        Command::AttestAgent(_) => "AttestAgent",
        Command::RenewAgent { .. } => "RenewAgent",
        Command::ActivateAgentSerial { .. } => "ActivateAgentSerial",
        Command::BanAgent(_) => "BanAgent",
        Command::DeleteAgent(_) => "DeleteAgent",
        Command::SetBundles(_) => "SetBundles",
        Command::AppendBundle { .. } => "AppendBundle",
        Command::DeleteBundles { .. } => "DeleteBundles",
        Command::TaintX509Authority { .. } => "TaintX509Authority",
        Command::RevokeX509Authority { .. } => "RevokeX509Authority",
        Command::TaintJwtAuthority { .. } => "TaintJwtAuthority",
        Command::RevokeJwtAuthority { .. } => "RevokeJwtAuthority",
        Command::PruneBundleAuthorities { .. } => "PruneBundleAuthorities",
        Command::CreateFederationRelationships(_) => "CreateFederationRelationships",
        Command::UpdateFederationRelationships(_) => "UpdateFederationRelationships",
        Command::DeleteFederationRelationships(_) => "DeleteFederationRelationships",
        Command::PruneEntries { .. } => "PruneEntries",
        Command::PruneJoinTokens { .. } => "PruneJoinTokens",
        Command::PruneAgents { .. } => "PruneAgents",
        Command::CreateBundles(_) => "CreateBundles",
        Command::UpdateBundles(_) => "UpdateBundles",
        Command::AttestAgentFirstUse(_) => "AttestAgentFirstUse",
    }
}

/// Number of `Command` variants (the arms of [`variant`]).
const VARIANTS: usize = 27;

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn fed() -> TrustDomain {
    TrustDomain::new("fed.example").unwrap()
}

fn sid(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn selectors() -> SelectorSet {
    SelectorSet::new(vec![
        Selector::new("unix", "uid:1000").unwrap(),
        Selector::new("k8s", "ns:prod").unwrap(),
    ])
}

fn entry() -> RegistrationEntry {
    RegistrationEntry {
        id: EntryId::new("0b6f4c3e-9d1a-4b7e-8f2a-5c6d7e8f9a0b").unwrap(),
        spiffe_id: sid("spiffe://example.org/workload/web"),
        parent_id: sid("spiffe://example.org/spire/agent/join_token/abc"),
        selectors: selectors(),
        x509_svid_ttl: 3600,
        jwt_svid_ttl: -1,
        federates_with: vec![fed()],
        admin: true,
        downstream: false,
        expires_at: 1_900_000_000,
        dns_names: vec!["web.example.org".into()],
        revision_number: 7,
        store_svid: false,
        hint: "web".into(),
        created_at: 1_700_000_000,
    }
}

fn agent() -> AgentId {
    AgentId(sid("spiffe://example.org/spire/agent/join_token/abc"))
}

fn bundle(td: TrustDomain) -> Bundle {
    Bundle {
        trust_domain: td,
        x509_authorities: vec![X509Authority { der: vec![0x30, 0x82, 1, 2], tainted: true }],
        jwt_authorities: vec![jwt()],
        refresh_hint: 300,
        sequence_number: 42,
    }
}

fn jwt() -> JwtAuthority {
    JwtAuthority {
        public_key_der: vec![0x30, 0x59, 9],
        key_id: "kid-1".into(),
        expires_at: 1_800_000_000,
        tainted: false,
    }
}

fn relationship() -> FederationRelationship {
    FederationRelationship {
        trust_domain: fed(),
        bundle_endpoint_url: "https://fed.example/bundle".into(),
        profile: BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: sid("spiffe://fed.example/spire/server"),
        },
        trust_domain_bundle: Some(bundle(fed())),
    }
}

/// One command of every variant, with every optional part filled in.
fn samples() -> Vec<Command> {
    vec![
        Command::CreateEntries(vec![entry()]),
        Command::UpdateEntries(vec![EntryUpdate {
            id: entry().id,
            patch: EntryPatch {
                spiffe_id: Some(sid("spiffe://example.org/workload/api")),
                selectors: Some(selectors()),
                x509_svid_ttl: Some(60),
                federates_with: Some(vec![]),
                admin: Some(false),
                dns_names: Some(vec!["api".into()]),
                store_svid: Some(true),
                ..EntryPatch::default()
            },
        }]),
        Command::DeleteEntries(vec![entry().id]),
        Command::CreateJoinToken {
            token: JoinToken { token: "tok".into(), expires_at: 1_700_000_600 }.to_stored(),
            entry: Some(entry()),
        },
        Command::ConsumeJoinToken { hash: JoinTokenHash::of("tok"), now: 1_700_000_100 },
        Command::AttestAgent(AgentAttestation {
            id: agent(),
            attestation_type: "join_token".into(),
            serial: "1234567890".into(),
            expires_at: 1_700_003_600,
            selectors: selectors(),
            can_reattest: false,
        }),
        Command::RenewAgent { id: agent(), new_serial: "99".into(), new_expires_at: 1_700_007_200 },
        Command::ActivateAgentSerial { id: agent(), serial: "99".into() },
        Command::BanAgent(agent()),
        Command::DeleteAgent(agent()),
        Command::SetBundles(vec![bundle(fed())]),
        Command::AppendBundle {
            trust_domain: td(),
            x509_authorities: vec![X509Authority::new(vec![0x30, 1])],
            jwt_authorities: vec![jwt()],
        },
        Command::DeleteBundles { trust_domains: vec![fed()], mode: BundleDeleteMode::Dissociate },
        Command::TaintX509Authority { trust_domain: td(), der: vec![0x30, 2] },
        Command::RevokeX509Authority { trust_domain: td(), der: vec![0x30, 3] },
        Command::TaintJwtAuthority { trust_domain: td(), key_id: "kid-1".into() },
        Command::RevokeJwtAuthority { trust_domain: td(), key_id: "kid-2".into() },
        Command::PruneBundleAuthorities {
            trust_domain: td(),
            x509_ders: vec![vec![0x30, 4]],
            jwt_key_ids: vec!["kid-3".into()],
        },
        Command::CreateFederationRelationships(vec![relationship()]),
        Command::UpdateFederationRelationships(vec![FederationUpdate {
            relationship: FederationRelationship {
                profile: BundleEndpointProfile::HttpsWeb,
                trust_domain_bundle: None,
                ..relationship()
            },
            mask: FederationMask {
                bundle_endpoint_url: true,
                profile: false,
                trust_domain_bundle: true,
            },
        }]),
        Command::DeleteFederationRelationships(vec![fed()]),
        Command::PruneEntries { expires_before: 1_700_000_000 },
        Command::PruneJoinTokens { expires_before: 1_700_000_001 },
        Command::PruneAgents { expires_before: 1_700_000_002, include_non_reattestable: true },
        Command::CreateBundles(vec![bundle(fed())]),
        Command::UpdateBundles(vec![BundleUpdate {
            bundle: bundle(fed()),
            mask: BundleMask {
                x509_authorities: true,
                jwt_authorities: false,
                refresh_hint: true,
                sequence_number: false,
            },
        }]),
        Command::AttestAgentFirstUse(AgentAttestation {
            id: agent(),
            attestation_type: "aws_iid".into(),
            serial: "1234567890".into(),
            expires_at: 1_700_003_600,
            selectors: selectors(),
            can_reattest: false,
        }),
    ]
}

/// The fixture file: variant name → hex of the whole log entry.
fn fixtures() -> BTreeMap<&'static str, &'static str> {
    let mut out = BTreeMap::new();
    for line in FIXTURES.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, hex) = line.split_once(' ').expect("each line is `<variant> <hex>`");
        assert!(out.insert(name, hex.trim()).is_none(), "{name} has two fixtures");
    }
    out
}

#[test]
fn every_command_variant_has_a_sample_and_a_fixture() {
    let names: std::collections::BTreeSet<_> = samples().iter().map(variant).collect();
    assert_eq!(names.len(), VARIANTS, "one sample per variant");
    let fixtures = fixtures();
    let fixture_names: std::collections::BTreeSet<_> = fixtures.keys().copied().collect();
    assert_eq!(fixture_names, names);
}

#[test]
fn format_1_encodings_never_change() {
    let fixtures = fixtures();
    let missing: Vec<String> = samples()
        .iter()
        .filter(|cmd| !fixtures.contains_key(variant(cmd)))
        .map(|cmd| {
            format!(
                "{} {}",
                variant(cmd),
                hex::encode(LogEntry::new(REQUEST_ID, cmd.clone()).encode())
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "a new variant adds its line to the fixtures:\n{}",
        missing.join("\n")
    );
    for cmd in samples() {
        let name = variant(&cmd);
        let entry = LogEntry::new(REQUEST_ID, cmd);
        let got = hex::encode(entry.encode());
        let want = fixtures[name];
        assert_eq!(
            got, want,
            "the encoding of {name} changed: format 1 is frozen, so this change needs a new \
             log format number (see ward_store::log_entry)"
        );
        let decoded = LogEntry::decode(&hex::decode(want).unwrap()).unwrap();
        assert_eq!(decoded, entry, "the fixture of {name} decodes to its sample");
        assert_eq!(decoded.format, LogEntry::format_of(&entry.command));
    }
}

#[test]
fn an_entry_of_a_later_format_is_refused() {
    // The envelope of the PruneEntries fixture with format 3 (field 1 = 0x08 0x03).
    let bytes = hex::decode(fixtures()["PruneEntries"]).unwrap();
    assert_eq!(&bytes[..2], &[0x08, 0x01], "format is the first field");
    let mut later = bytes.clone();
    later[1] = 3;
    assert_eq!(LogEntry::decode(&later).unwrap_err(), StoreError::UnknownLogFormat(3));
}
