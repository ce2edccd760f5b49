#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The X.509 CA against SPIRE's certificate profile, checked with x509-parser and the
//! `openssl` binary.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::PublicKeyData as _;
use ward_ca::{
    CaError, CsrError, KeyType, PrivateKey, PublicKeyError, SignError, SvidParams, UpstreamCa,
    X509Ca, build_csr, read_csr, subject_key_id, verify_csr,
};
use ward_core::dns_name::DnsNameError;
use ward_core::{SpiffeId, TrustDomain};
use ward_testkit::ManualClock;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

const DAY: Duration = Duration::from_secs(86_400);

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `openssl verify` with `roots` trusted and `untrusted` intermediates; returns its stdout.
fn openssl_verify(dir: &Path, roots: &[&[u8]], untrusted: &[&[u8]], leaf: &[u8]) -> String {
    let write = |name: &str, certs: &[&[u8]]| {
        let p = dir.join(name);
        std::fs::write(&p, certs.iter().map(|c| pem(c)).collect::<String>()).unwrap();
        p
    };
    let roots = write("roots.pem", roots);
    let leaf = write("leaf.pem", &[leaf]);
    let mut cmd = Command::new("openssl");
    // The CA certificates' own validity starts 10 s in the past, in real time; keep
    // openssl's notion of "now" aligned with the certificates we made.
    cmd.arg("verify").arg("-CAfile").arg(&roots);
    if !untrusted.is_empty() {
        cmd.arg("-untrusted").arg(write("untrusted.pem", untrusted));
    }
    let out = cmd.arg(&leaf).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "openssl verify failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn names(cert: &X509Certificate<'_>) -> Vec<(String, String)> {
    cert.subject()
        .iter_attributes()
        .map(|a| (a.attr_type().to_id_string(), a.as_str().unwrap().to_owned()))
        .collect()
}

struct Exts {
    ku: Option<(bool, u16)>,
    eku: Option<(bool, bool, usize)>,
    ca: Option<(bool, bool)>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
    uris: Vec<String>,
    dns: Vec<String>,
}

fn exts(cert: &X509Certificate<'_>) -> Exts {
    let mut e =
        Exts { ku: None, eku: None, ca: None, ski: None, aki: None, uris: vec![], dns: vec![] };
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => e.ku = Some((ext.critical, ku.flags)),
            ParsedExtension::ExtendedKeyUsage(eku) => {
                e.eku = Some((eku.server_auth, eku.client_auth, eku.other.len()))
            }
            ParsedExtension::BasicConstraints(bc) => e.ca = Some((ext.critical, bc.ca)),
            ParsedExtension::SubjectKeyIdentifier(id) => e.ski = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                e.aki = aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::URI(u) => e.uris.push((*u).to_owned()),
                        GeneralName::DNSName(d) => e.dns.push((*d).to_owned()),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
            other => panic!("unexpected extension {other:?}"),
        }
    }
    e
}

fn key_bits(spki_der: &[u8]) -> Vec<u8> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).unwrap();
    spki.subject_public_key.data.to_vec()
}

#[test]
fn self_signed_ca_follows_spire_profile_for_every_key_type() {
    let now = SystemTime::now();
    for kt in KeyType::ALL {
        let key = PrivateKey::generate(kt).unwrap();
        let bits = key_bits(key.public_key_der());
        let ca = X509Ca::self_signed(key, &td(), DAY, now).unwrap();
        let (rest, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        assert!(rest.is_empty());
        assert_eq!(cert.version().0, 2);
        let serial = cert.tbs_certificate.serial.clone();
        assert!(serial > 0u32.into() && serial.bits() <= 128, "{kt}");
        assert_eq!(
            names(&cert),
            vec![
                ("2.5.4.6".into(), "US".into()),
                ("2.5.4.10".into(), "SPIFFE".into()),
                ("2.5.4.5".into(), serial.to_string()),
            ]
        );
        assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
        assert_eq!(cert.validity().not_before.timestamp(), unix(now) - 10);
        assert_eq!(cert.validity().not_after.timestamp(), unix(now) + 86_400);
        assert_eq!(unix(ca.not_after()), unix(now) + 86_400);
        let e = exts(&cert);
        assert_eq!(e.ku, Some((true, 0b110_0000)), "keyCertSign|cRLSign");
        assert_eq!(e.ca, Some((true, true)));
        assert_eq!(e.eku, None);
        assert_eq!(e.ski.as_deref(), Some(&subject_key_id(&bits)[..]));
        assert_eq!(e.aki, e.ski);
        assert_eq!(e.uris, vec!["spiffe://example.org".to_owned()]);
        assert!(e.dns.is_empty());
        assert_eq!(ca.ski(), &subject_key_id(&bits));
        assert_eq!(ca.authority_id(), hex::encode(subject_key_id(&bits)));
        cert.verify_signature(None).unwrap();
        assert!(ca.svid_chain_tail().is_empty());
        assert_eq!(ca.trust_anchor_der(), ca.cert_der());
    }
}

fn assert_leaf_profile(
    leaf_der: &[u8],
    ca: &X509Ca,
    leaf_spki: &[u8],
    id: &str,
    dns: &[String],
) -> i64 {
    let (rest, leaf) = X509Certificate::from_der(leaf_der).unwrap();
    assert!(rest.is_empty());
    let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
    leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(leaf.version().0, 2);
    assert_eq!(leaf.issuer().as_raw(), ca_cert.subject().as_raw());
    assert_eq!(leaf.public_key().raw, leaf_spki);
    let mut want_names = vec![("2.5.4.6".into(), "US".into()), ("2.5.4.10".into(), "SPIRE".into())];
    if let Some(cn) = dns.first() {
        want_names.push(("2.5.4.3".into(), cn.clone()));
    }
    assert_eq!(names(&leaf), want_names);
    let e = exts(&leaf);
    // digitalSignature | keyEncipherment | keyAgreement
    assert_eq!(e.ku, Some((true, 0b1_0101)));
    assert_eq!(e.eku, Some((true, true, 0)));
    assert_eq!(e.ca, Some((true, false)));
    assert_eq!(e.ski.as_deref(), Some(&subject_key_id(&key_bits(leaf_spki))[..]));
    assert_eq!(e.aki.as_deref(), Some(&ca.ski()[..]));
    assert_eq!(e.uris, vec![id.to_owned()]);
    assert_eq!(e.dns, dns);
    let serial = leaf.tbs_certificate.serial.clone();
    assert!(serial > 0u32.into() && serial.bits() <= 128);
    leaf.validity().not_after.timestamp()
}

#[test]
fn leaves_from_csr_for_every_ca_and_leaf_key_type_verify_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let leaf_keys: Vec<PrivateKey> =
        KeyType::ALL.iter().map(|kt| PrivateKey::generate(*kt).unwrap()).collect();
    let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
    let dns = vec!["web.prod.svc".to_owned(), "*.web.example.org".to_owned()];
    for ca_kt in KeyType::ALL {
        let ca =
            X509Ca::self_signed(PrivateKey::generate(ca_kt).unwrap(), &td(), DAY, now).unwrap();
        for key in &leaf_keys {
            let csr = build_csr(key).unwrap();
            let params =
                SvidParams { spiffe_id: &id, dns_names: &dns, ttl: Duration::from_secs(3600) };
            let leaf = ca.sign_x509_svid_from_csr(&csr, &params, now).unwrap();
            let na = assert_leaf_profile(&leaf, &ca, key.public_key_der(), id.as_str(), &dns);
            assert_eq!(na, unix(now) + 3600);
            let out = openssl_verify(tmp.path(), &[ca.cert_der()], &[], &leaf);
            assert!(out.trim_end().ends_with(": OK"), "{ca_kt} {:?}: {out}", key.key_type());

            // The same key as a bare SPKI gives the same profile.
            let leaf2 = ca.sign_x509_svid(key.public_key_der(), &params, now).unwrap();
            assert_leaf_profile(&leaf2, &ca, key.public_key_der(), id.as_str(), &dns);
        }
    }
}

#[test]
fn csr_identity_comes_from_parameters_not_from_the_csr() {
    // rcgen builds a CSR asking for another identity and DNS names; none of it is used.
    let now = SystemTime::now();
    let ca = X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), &td(), DAY, now)
        .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut req = rcgen::CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
    req.subject_alt_names
        .push(rcgen::SanType::URI("spiffe://example.org/admin".try_into().unwrap()));
    req.distinguished_name.push(rcgen::DnType::CommonName, "admin");
    req.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = req.serialize_request(&key).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/demo").unwrap();
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(600) };
    let leaf = ca.sign_x509_svid_from_csr(csr.der(), &params, now).unwrap();
    assert_leaf_profile(
        &leaf,
        &ca,
        &key.subject_public_key_info(),
        "spiffe://example.org/demo",
        &[],
    );
}

#[test]
fn minted_leaf_takes_the_csr_subject_with_the_first_dns_name_as_common_name() {
    let now = SystemTime::now();
    let ca = X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), &td(), DAY, now)
        .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut req = rcgen::CertificateParams::new(vec!["web.example.org".to_owned()]).unwrap();
    req.subject_alt_names.push(rcgen::SanType::URI("spiffe://example.org/web".try_into().unwrap()));
    // Out of Go's order on purpose: the leaf lists them as Go's pkix.Name writes them.
    req.distinguished_name.push(rcgen::DnType::CommonName, "ignored-cn");
    req.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
    req.distinguished_name.push(rcgen::DnType::CountryName, "DE");
    req.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "Team Ü");
    let csr = req.serialize_request(&key).unwrap();

    let request = read_csr(csr.der()).unwrap();
    assert_eq!(request.uris, ["spiffe://example.org/web"]);
    assert_eq!(request.dns_names, ["web.example.org"]);
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let params =
        SvidParams { spiffe_id: &id, dns_names: &request.dns_names, ttl: Duration::from_secs(600) };
    let leaf = ca.sign_x509_svid_for_request(&request, &params, now).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let got: Vec<(String, String)> = names(&cert);
    let want = [
        ("2.5.4.6", "DE"),
        ("2.5.4.10", "Acme"),
        ("2.5.4.11", "Team Ü"),
        ("2.5.4.3", "web.example.org"),
    ];
    let want: Vec<(String, String)> =
        want.iter().map(|(o, v)| ((*o).to_owned(), (*v).to_owned())).collect();
    assert_eq!(got, want);

    // A CSR without a subject gets SPIRE's default one.
    let bare = build_csr(&PrivateKey::generate(KeyType::EcP256).unwrap()).unwrap();
    let request = read_csr(&bare).unwrap();
    assert!(request.subject.is_empty());
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(600) };
    let leaf = ca.sign_x509_svid_for_request(&request, &params, now).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(
        names(&cert),
        [("2.5.4.6".to_owned(), "US".to_owned()), ("2.5.4.10".to_owned(), "SPIRE".to_owned())]
    );
}

#[test]
fn only_the_server_path_signs_the_server_id() {
    let now = SystemTime::now();
    let ca = X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), &td(), DAY, now)
        .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let csr = build_csr(&key).unwrap();
    let server = SpiffeId::parse("spiffe://example.org/spire/server").unwrap();
    let params = SvidParams { spiffe_id: &server, dns_names: &[], ttl: Duration::from_secs(60) };
    let refused = SignError::ServerIdReserved("spiffe://example.org/spire/server".into());
    assert_eq!(ca.sign_x509_svid_from_csr(&csr, &params, now).unwrap_err(), refused);
    assert_eq!(ca.sign_x509_svid(key.public_key_der(), &params, now).unwrap_err(), refused);
    let request = read_csr(&csr).unwrap();
    assert_eq!(ca.sign_x509_svid_for_request(&request, &params, now).unwrap_err(), refused);
    let leaf = ca.sign_server_x509_svid(key.public_key_der(), &params, now).unwrap();
    assert_eq!(exts(&X509Certificate::from_der(&leaf).unwrap().1).uris, [server.as_str()]);

    for other in [
        "spiffe://example.org/spire/agent/x",
        "spiffe://example.org/spire/server/x",
        "spiffe://example.org/spire/server/replica/0",
    ] {
        let other = SpiffeId::parse(other).unwrap();
        let params = SvidParams { spiffe_id: &other, dns_names: &[], ttl: Duration::from_secs(60) };
        assert_eq!(
            ca.sign_server_x509_svid(key.public_key_der(), &params, now).unwrap_err(),
            SignError::NotServerId(other.to_string())
        );
    }
}

#[test]
fn only_the_server_path_signs_replica_ids() {
    let now = SystemTime::now();
    let ca = X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), &td(), DAY, now)
        .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let csr = build_csr(&key).unwrap();
    for reserved in [
        "spiffe://example.org/spire/server/replica/2",
        "spiffe://example.org/spire/server/anything",
    ] {
        let id = SpiffeId::parse(reserved).unwrap();
        let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(60) };
        let refused = SignError::ServerIdReserved(reserved.into());
        assert_eq!(ca.sign_x509_svid_from_csr(&csr, &params, now).unwrap_err(), refused);
        assert_eq!(ca.sign_x509_svid(key.public_key_der(), &params, now).unwrap_err(), refused);
        let request = read_csr(&csr).unwrap();
        assert_eq!(ca.sign_x509_svid_for_request(&request, &params, now).unwrap_err(), refused);
    }
    // A workload whose path merely starts with the same letters is not in the namespace.
    let near = SpiffeId::parse("spiffe://example.org/spire/serverless").unwrap();
    let params = SvidParams { spiffe_id: &near, dns_names: &[], ttl: Duration::from_secs(60) };
    assert!(ca.sign_x509_svid(key.public_key_der(), &params, now).is_ok());

    let replica = SpiffeId::parse("spiffe://example.org/spire/server/replica/2").unwrap();
    let params = SvidParams { spiffe_id: &replica, dns_names: &[], ttl: Duration::from_secs(60) };
    let leaf = ca.sign_server_x509_svid(key.public_key_der(), &params, now).unwrap();
    assert_eq!(exts(&X509Certificate::from_der(&leaf).unwrap().1).uris, [replica.as_str()]);
}

#[test]
fn openssl_made_csr_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let csr_path = tmp.path().join("req.der");
    let out = Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes"])
        .args(["-subj", "/CN=ignored", "-outform", "DER", "-keyout"])
        .arg(tmp.path().join("k.pem"))
        .arg("-out")
        .arg(&csr_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csr = std::fs::read(&csr_path).unwrap();
    let key = verify_csr(&csr).unwrap();
    assert_eq!(key.kind, ward_ca::PublicKeyKind::EcP384);
}

#[test]
fn ttl_is_clamped_to_the_ca_and_an_expired_ca_refuses() {
    let clock = ManualClock::default();
    let ca = X509Ca::self_signed(
        PrivateKey::generate(KeyType::EcP256).unwrap(),
        &td(),
        Duration::from_secs(7200),
        ward_core::Clock::now(&clock),
    )
    .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let csr = build_csr(&key).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(3600) };

    let t = clock.advance(Duration::from_secs(5400));
    let leaf = ca.sign_x509_svid_from_csr(&csr, &params, t).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(cert.validity().not_after.timestamp(), ca.not_after_unix());
    assert_eq!(cert.validity().not_before.timestamp(), unix(t) - 10);
    assert_eq!(ca.svid_not_after(t, params.ttl).unwrap(), cert.validity().not_after.timestamp());

    // Before the cap, the leaf's NotAfter is now + TTL, and svid_not_after says the same.
    let t0 = ward_core::Clock::now(&clock) - Duration::from_secs(5000);
    let leaf = ca.sign_x509_svid_from_csr(&csr, &params, t0).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(cert.validity().not_after.timestamp(), unix(t0) + 3600);
    assert_eq!(ca.svid_not_after(t0, params.ttl).unwrap(), unix(t0) + 3600);
    assert_eq!(ca.svid_not_after(t0, Duration::ZERO).unwrap_err(), SignError::ZeroTtl);

    // An absurd TTL does not overflow: it is capped like any other.
    let params_max = SvidParams { ttl: Duration::MAX, ..params };
    let leaf = ca.sign_x509_svid_from_csr(&csr, &params_max, t).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(cert.validity().not_after.timestamp(), ca.not_after_unix());

    let t = clock.advance(Duration::from_secs(1800));
    assert_eq!(unix(t), ca.not_after_unix());
    assert_eq!(
        ca.sign_x509_svid_from_csr(&csr, &params, t).unwrap_err(),
        SignError::CaExpired { not_after: ca.not_after_unix() }
    );
}

#[test]
fn serials_are_unique() {
    let now = SystemTime::now();
    let ca = X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), &td(), DAY, now)
        .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(60) };
    let mut serials = std::collections::HashSet::new();
    for _ in 0..300 {
        let leaf = ca.sign_x509_svid(key.public_key_der(), &params, now).unwrap();
        let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
        assert!(serials.insert(cert.tbs_certificate.serial.clone()));
    }
}

#[test]
fn parameter_errors_are_typed() {
    let now = SystemTime::now();
    let ca = X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), &td(), DAY, now)
        .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let csr = build_csr(&key).unwrap();

    let long = SpiffeId::parse(&format!("spiffe://example.org/{}", "a".repeat(2100))).unwrap();
    let params = SvidParams { spiffe_id: &long, dns_names: &[], ttl: Duration::from_secs(60) };
    assert_eq!(
        ca.sign_x509_svid_from_csr(&csr, &params, now).unwrap_err(),
        SignError::IdTooLong { len: long.as_str().len(), max: 2048 }
    );
    // Exactly 2048 bytes is fine.
    let pad = 2048 - "spiffe://example.org/".len();
    let max = SpiffeId::parse(&format!("spiffe://example.org/{}", "a".repeat(pad))).unwrap();
    assert_eq!(max.as_str().len(), 2048);
    let params = SvidParams { spiffe_id: &max, dns_names: &[], ttl: Duration::from_secs(60) };
    assert!(ca.sign_x509_svid_from_csr(&csr, &params, now).is_ok());

    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    for (bad, reason) in [
        ("", DnsNameError::Empty),
        ("-a.example.org", DnsNameError::InvalidLabel("-a".into())),
        ("ünïcode", DnsNameError::NotAscii),
    ] {
        let dns = vec![bad.to_owned()];
        let params = SvidParams { spiffe_id: &id, dns_names: &dns, ttl: Duration::from_secs(60) };
        assert_eq!(
            ca.sign_x509_svid_from_csr(&csr, &params, now).unwrap_err(),
            SignError::InvalidDnsName { name: bad.to_owned(), reason }
        );
    }
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::ZERO };
    assert_eq!(ca.sign_x509_svid_from_csr(&csr, &params, now).unwrap_err(), SignError::ZeroTtl);

    assert_eq!(ca.trust_domain(), Some(&td()));
    let foreign = SpiffeId::parse("spiffe://other.org/w").unwrap();
    let params = SvidParams { spiffe_id: &foreign, dns_names: &[], ttl: Duration::from_secs(60) };
    let want = SignError::NotInTrustDomain {
        id: "spiffe://other.org/w".into(),
        trust_domain: "example.org".into(),
    };
    assert_eq!(ca.sign_x509_svid_from_csr(&csr, &params, now).unwrap_err(), want);
    assert_eq!(ca.sign_x509_svid(key.public_key_der(), &params, now).unwrap_err(), want);
}

/// Replaces the first occurrence of `from` in `der` with `to` (same length).
fn patch(der: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let pos = der.windows(from.len()).rposition(|w| w == from).unwrap();
    let mut out = der.to_vec();
    out[pos..pos + to.len()].copy_from_slice(to);
    out
}

fn openssl_rsa1024_csr(dir: &Path) -> Vec<u8> {
    let path = dir.join("rsa1024.der");
    let out = Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=x"])
        .args(["-outform", "DER", "-keyout"])
        .arg(dir.join("rsa1024.key"))
        .arg("-out")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(path).unwrap()
}

#[test]
fn malformed_csr_table() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), &td(), DAY, now)
        .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let other = PrivateKey::generate(KeyType::EcP256).unwrap();
    let good = build_csr(&key).unwrap();

    let mut bad_sig = good.clone();
    let last = bad_sig.len() - 3;
    bad_sig[last] ^= 0x01;
    // The request info of one key with the signature of another.
    let other_csr = build_csr(&other).unwrap();
    let swapped_key =
        patch(&good, &key_bits(key.public_key_der()), &key_bits(other.public_key_der()));
    let mut trailing = good.clone();
    trailing.push(0);
    // ecdsa-with-SHA256 -> ecdsa-with-SHA224 (same length).
    let sha224 = patch(&good, &[0x3d, 0x04, 0x03, 0x02], &[0x3d, 0x04, 0x03, 0x01]);
    let ed_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed25519 = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&ed_key)
        .unwrap();
    let rsa1024 = openssl_rsa1024_csr(tmp.path());
    // secp256k1 curve OID in place of P-256's (both 5/8 bytes: patch inside the 8-byte OID).
    let cert_der = ca.cert_der().to_vec();

    let cases: Vec<(&str, Vec<u8>, CsrError)> = vec![
        ("empty", vec![], CsrError::MalformedDer),
        ("garbage", b"this is not DER at all".to_vec(), CsrError::MalformedDer),
        ("truncated", good[..good.len() / 2].to_vec(), CsrError::MalformedDer),
        ("truncated by one", good[..good.len() - 1].to_vec(), CsrError::MalformedDer),
        ("trailing byte", trailing, CsrError::TrailingData),
        ("certificate, not a CSR", cert_der, CsrError::MalformedDer),
        ("flipped signature bit", bad_sig, CsrError::BadSignature),
        ("signature by another key", swapped_key, CsrError::BadSignature),
        (
            "unsupported signature algorithm",
            sha224,
            CsrError::UnsupportedSignatureAlgorithm { oid: "1.2.840.10045.4.3.1".into() },
        ),
        (
            "ed25519 key",
            ed25519.der().to_vec(),
            CsrError::UnsupportedKey(PublicKeyError::UnsupportedAlgorithm {
                oid: "1.3.101.112".into(),
            }),
        ),
        (
            "rsa-1024 key",
            rsa1024,
            CsrError::UnsupportedKey(PublicKeyError::RsaTooSmall { bits: 1024 }),
        ),
    ];
    assert!(verify_csr(&other_csr).is_ok());
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(60) };
    for (name, input, want) in cases {
        assert_eq!(verify_csr(&input).unwrap_err(), want, "{name}");
        assert_eq!(
            ca.sign_x509_svid_from_csr(&input, &params, now).unwrap_err(),
            SignError::Csr(want),
            "{name}"
        );
    }
}

#[test]
fn bare_public_key_errors() {
    let now = SystemTime::now();
    let ca = X509Ca::self_signed(PrivateKey::generate(KeyType::EcP256).unwrap(), &td(), DAY, now)
        .unwrap();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(60) };
    let good = PrivateKey::generate(KeyType::EcP256).unwrap().public_key_der().to_vec();
    // P-256 OID 1.2.840.10045.3.1.7 -> 1.2.840.10045.3.1.1 (P-192).
    let p192 = patch(&good, &[0x3d, 0x03, 0x01, 0x07], &[0x3d, 0x03, 0x01, 0x01]);
    let mut trailing = good.clone();
    trailing.push(0);
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().subject_public_key_info();
    let cases: Vec<(&str, Vec<u8>, PublicKeyError)> = vec![
        ("garbage", vec![1, 2, 3], PublicKeyError::Malformed),
        ("truncated", good[..40].to_vec(), PublicKeyError::Malformed),
        ("trailing", trailing, PublicKeyError::TrailingData),
        ("p-192", p192, PublicKeyError::UnsupportedCurve { oid: "1.2.840.10045.3.1.1".into() }),
        ("ed25519", ed, PublicKeyError::UnsupportedAlgorithm { oid: "1.3.101.112".into() }),
    ];
    for (name, input, want) in cases {
        assert_eq!(
            ca.sign_x509_svid(&input, &params, now).unwrap_err(),
            SignError::PublicKey(want),
            "{name}"
        );
    }
}

#[test]
fn intermediate_under_openssl_made_upstream_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // An upstream root made by openssl: SEC1 EC key, 2-day validity.
    let key_path = dir.join("upstream.key.pem");
    let cert_path = dir.join("upstream.crt.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-days", "2", "-subj", "/O=Upstream/CN=upstream root"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key_path)
        .arg("-out")
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let upstream = UpstreamCa::load(&cert_path, &key_path).unwrap();
    let (_, up_cert) = X509Certificate::from_der(&upstream.certs()[0]).unwrap();
    let up_not_after = up_cert.validity().not_after.timestamp();

    let now = SystemTime::now();
    // Asking for 30 days gets the upstream's NotAfter.
    let ca = X509Ca::signed_by_upstream(
        PrivateKey::generate(KeyType::EcP384).unwrap(),
        &td(),
        30 * DAY,
        now,
        &upstream,
    )
    .unwrap();
    assert_eq!(ca.not_after_unix(), up_not_after);
    let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
    assert_eq!(ca_cert.issuer().as_raw(), up_cert.subject().as_raw());
    ca_cert.verify_signature(Some(up_cert.public_key())).unwrap();
    let up_ski = exts_ski(&up_cert);
    assert_eq!(exts(&ca_cert).aki, Some(up_ski));
    assert_eq!(ca.svid_chain_tail(), &[ca.cert_der().to_vec()]);
    assert_eq!(ca.trust_anchor_der(), upstream.certs()[0].as_slice());

    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(3600) };
    let leaf = ca.sign_x509_svid_from_csr(&build_csr(&key).unwrap(), &params, now).unwrap();
    let out = openssl_verify(dir, &[ca.trust_anchor_der()], &[ca.cert_der()], &leaf);
    assert!(out.trim_end().ends_with(": OK"), "{out}");

    // The upstream has expired: no new intermediate.
    let later = now + 3 * DAY;
    let err = X509Ca::signed_by_upstream(
        PrivateKey::generate(KeyType::EcP256).unwrap(),
        &td(),
        DAY,
        later,
        &upstream,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::IssuerExpired { not_after } if not_after == up_not_after));
}

fn exts_ski(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn from_parts_reloads_and_checks_the_key() {
    let now = SystemTime::now();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let ca = X509Ca::self_signed(key.clone(), &td(), DAY, now).unwrap();
    let again = X509Ca::from_parts(key, ca.cert_der().to_vec(), vec![]).unwrap();
    assert_eq!(again.ski(), ca.ski());
    assert_eq!(again.not_after(), ca.not_after());
    let wrong = PrivateKey::generate(KeyType::EcP256).unwrap();
    assert!(matches!(
        X509Ca::from_parts(wrong, ca.cert_der().to_vec(), vec![]),
        Err(CaError::KeyMismatch)
    ));
    assert!(matches!(
        X509Ca::from_parts(PrivateKey::generate(KeyType::EcP256).unwrap(), vec![1, 2], vec![]),
        Err(CaError::MalformedCertificate(_))
    ));
    // A leaf is not a CA.
    let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(60) };
    let leaf = ca.sign_x509_svid(leaf_key.public_key_der(), &params, now).unwrap();
    assert!(matches!(X509Ca::from_parts(leaf_key, leaf, vec![]), Err(CaError::NotACa)));
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn fixture() -> &'static (X509Ca, PrivateKey, Vec<u8>) {
        static F: OnceLock<(X509Ca, PrivateKey, Vec<u8>)> = OnceLock::new();
        F.get_or_init(|| {
            let now = SystemTime::now();
            let ca = X509Ca::self_signed(
                PrivateKey::generate(KeyType::EcP256).unwrap(),
                &td(),
                DAY,
                now,
            )
            .unwrap();
            let key = PrivateKey::generate(KeyType::EcP256).unwrap();
            let csr = build_csr(&key).unwrap();
            (ca, key, csr)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Lengths on both sides of every DER length-encoding boundary (127/128, 255/256)
        /// still give leaves that parse, verify and carry exactly the requested names.
        #[test]
        fn any_id_and_dns_names_give_a_valid_leaf(
            segments in proptest::collection::vec("[a-zA-Z0-9._-]{1,120}", 1..20),
            dns in proptest::collection::vec(
                proptest::collection::vec("[a-z0-9]{1,60}", 1..4).prop_map(|l| l.join(".")),
                0..4,
            ),
            ttl in 1u64..200_000,
        ) {
            let segments: Vec<String> =
                segments.into_iter().filter(|s| s != "." && s != "..").collect();
            prop_assume!(!segments.is_empty());
            let id = SpiffeId::parse(&format!("spiffe://example.org/{}", segments.join("/"))).unwrap();
            prop_assume!(id.as_str().len() <= SpiffeId::MAX_SVID_LEN);
            let (ca, key, csr) = fixture();
            let now = SystemTime::now();
            let params = SvidParams { spiffe_id: &id, dns_names: &dns, ttl: Duration::from_secs(ttl) };
            let leaf = ca.sign_x509_svid_from_csr(csr, &params, now).unwrap();
            let na = assert_leaf_profile(&leaf, ca, key.public_key_der(), id.as_str(), &dns);
            prop_assert_eq!(na, (unix(now) + ttl as i64).min(ca.not_after_unix()));
        }
    }
}
