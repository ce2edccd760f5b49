//! X509-SVIDs on the command line: a Workload API response parsed and checked as
//! `spire-agent api fetch x509` checks it, printed in its human format, and written to files
//! as its `-write` writes them.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::time::{Duration, SystemTime};

use ward_ca::PrivateKey;
use ward_core::SpiffeId;
use ward_proto::spiffe::workload::X509svidResponse;
use x509_parser::prelude::FromDer as _;

use super::go_text;

/// One certificate and its validity.
#[derive(Debug, Clone)]
pub struct Cert {
    der: Vec<u8>,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
}

/// A trust domain's X.509 authorities, named by the key the response gives them
/// (`spiffe://<trust domain>`).
pub type NamedBundle = (String, Vec<Cert>);

/// One X509-SVID of a response with what the human output and `-write` need.
#[derive(Debug)]
pub struct Svid {
    /// The SPIFFE ID the response names.
    pub spiffe_id: String,
    /// The entry's hint (empty when none).
    pub hint: String,
    /// The chain, leaf first.
    pub certificates: Vec<Cert>,
    /// The private key (absent when only printing, as `api watch` does).
    pub private_key: Option<PrivateKey>,
    /// The authorities of the SVID's own trust domain.
    pub bundle: Vec<Cert>,
    /// Other trust domains' authorities, sorted by name.
    pub federated: Vec<NamedBundle>,
}

/// Parses concatenated DER certificates.
///
/// # Errors
/// A sentence naming what is malformed.
pub fn parse_certs(mut der: &[u8]) -> Result<Vec<Cert>, String> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| format!("x509: malformed certificate: {e}"))?;
        let len = der.len() - rest.len();
        out.push(Cert {
            der: der[..len].to_vec(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        });
        der = rest;
    }
    Ok(out)
}

/// Parses every SVID of `resp` (keys included) and checks each chains to its bundle at `now`,
/// with spire-agent's error texts.
///
/// # Errors
/// The first problem found, as spire-agent words it.
pub fn parse_response(resp: &X509svidResponse, now: SystemTime) -> Result<Vec<Svid>, String> {
    if resp.svids.is_empty() {
        return Err("workload response contains no svids".into());
    }
    let mut federated = Vec::new();
    for (td, der) in &resp.federated_bundles {
        let certs = parse_certs(der)
            .map_err(|e| format!("failed to parse bundle for federated domain {td:?}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("no certificates in bundle for federated domain {td:?}"));
        }
        federated.push((td.clone(), certs));
    }
    federated.sort_by(|a, b| a.0.cmp(&b.0));
    let mut svids = Vec::with_capacity(resp.svids.len());
    for (i, s) in resp.svids.iter().enumerate() {
        let parse = || -> Result<Svid, String> {
            let certificates = parse_certs(&s.x509_svid)?;
            if certificates.is_empty() {
                return Err("no certificates found".into());
            }
            let key = PrivateKey::from_pkcs8_der(&s.x509_svid_key)
                .map_err(|e| format!("failed to parse private key: {e}"))?;
            let bundle =
                parse_certs(&s.bundle).map_err(|e| format!("failed to parse trust bundle: {e}"))?;
            if bundle.is_empty() {
                return Err("no certificates in trust bundle".into());
            }
            Ok(Svid {
                spiffe_id: s.spiffe_id.clone(),
                hint: s.hint.clone(),
                certificates,
                private_key: Some(key),
                bundle,
                federated: federated.clone(),
            })
        };
        let svid = parse().map_err(|e| {
            format!("failed to parse svid entry {i} for spiffe id {:?}: {e}", s.spiffe_id)
        })?;
        svids.push(svid);
    }
    for svid in &svids {
        verify(svid, now)?;
    }
    Ok(svids)
}

/// Parses `resp` as go-spiffe's `WatchX509Context` does for `spire-agent api watch`: SVIDs
/// whose non-empty hint repeats an earlier one's are dropped; every SVID's bundle and every
/// federated bundle go into one set by trust domain (a later one replacing an earlier); each
/// SVID then shows its own trust domain's authorities as its bundle and the others as
/// federated bundles named by bare trust domain name. No chain is verified.
///
/// # Errors
/// The first SVID, key, bundle or trust domain that does not parse.
pub fn parse_watch_response(resp: &X509svidResponse) -> Result<Vec<Svid>, String> {
    if resp.svids.is_empty() {
        return Err("no SVIDs in response".into());
    }
    let mut hints = std::collections::BTreeSet::new();
    let mut parsed = Vec::new();
    for s in &resp.svids {
        if !s.hint.is_empty() && !hints.insert(s.hint.as_str()) {
            continue;
        }
        let certificates = parse_certs(&s.x509_svid)?;
        if certificates.is_empty() {
            return Err("x509svid: no certificates found".into());
        }
        let key = PrivateKey::from_pkcs8_der(&s.x509_svid_key)
            .map_err(|e| format!("x509svid: cannot parse PEM encoded private key: {e}"))?;
        let id = leaf_id(&certificates)?;
        parsed.push((id, certificates, key));
    }
    let mut set: std::collections::BTreeMap<String, Vec<Cert>> = Default::default();
    for s in &resp.svids {
        let td = SpiffeId::parse(&s.spiffe_id).map_err(|e| e.to_string())?;
        set.insert(td.trust_domain_name().to_owned(), parse_certs(&s.bundle)?);
    }
    for (td, der) in &resp.federated_bundles {
        let td = ward_core::TrustDomain::parse(td).map_err(|e| e.to_string())?;
        set.insert(td.as_str().to_owned(), parse_certs(der)?);
    }
    Ok(parsed
        .into_iter()
        .map(|(id, certificates, key)| {
            let own = id.trust_domain_name();
            Svid {
                spiffe_id: id.as_str().to_owned(),
                hint: String::new(),
                certificates,
                private_key: Some(key),
                bundle: set.get(own).cloned().unwrap_or_default(),
                federated: set
                    .iter()
                    .filter(|(td, _)| td.as_str() != own)
                    .map(|(td, certs)| (td.clone(), certs.clone()))
                    .collect(),
            }
        })
        .collect())
}

/// The SPIFFE ID in the leaf certificate's URI SAN.
fn leaf_id(chain: &[Cert]) -> Result<SpiffeId, String> {
    let leaf = chain.first().ok_or("x509svid: no certificates found")?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&leaf.der)
        .map_err(|e| format!("x509svid: unable to parse leaf certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or("x509svid: certificate contains no URI SAN")?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .ok_or("x509svid: certificate contains no URI SAN")?;
    SpiffeId::parse(uri).map_err(|e| format!("x509svid: {e}"))
}

/// Checks that `svid`'s chain leads to its bundle.
fn verify(svid: &Svid, now: SystemTime) -> Result<(), String> {
    SpiffeId::parse(&svid.spiffe_id).map_err(|e| e.to_string())?;
    let chain: Vec<&[u8]> = svid.certificates.iter().map(|c| c.der.as_slice()).collect();
    let roots: Vec<&[u8]> = svid.bundle.iter().map(|c| c.der.as_slice()).collect();
    ward_core::x509svid::verify(&chain, &roots, now)
        .map(drop)
        .map_err(|e| format!("{:?} SVID failed verification against bundle: {e}", svid.spiffe_id))
}

/// The human output: `Received N svid(s) after <duration>`, then each SVID's validity and
/// its bundles' (spire-agent's `printX509SVIDResponse`).
pub fn render(svids: &[Svid], elapsed: Duration) -> String {
    let plural = if svids.len() == 1 { "" } else { "s" };
    let mut out =
        format!("Received {} svid{plural} after {}\n", svids.len(), go_text::duration(elapsed));
    for svid in svids {
        out.push('\n');
        render_svid(&mut out, svid);
        for (td, certs) in &svid.federated {
            for (i, ca) in certs.iter().enumerate() {
                validity(&mut out, &format!("[{td}] CA #{}", i + 1), ca);
            }
        }
    }
    out.push('\n');
    out
}

fn render_svid(out: &mut String, svid: &Svid) {
    let _ = writeln!(out, "SPIFFE ID:\t\t{}", svid.spiffe_id);
    if !svid.hint.is_empty() {
        let _ = writeln!(out, "Hint:\t\t\t{}", svid.hint);
    }
    if let Some((leaf, intermediates)) = svid.certificates.split_first() {
        validity(out, "SVID", leaf);
        for (i, c) in intermediates.iter().enumerate() {
            validity(out, &format!("Intermediate #{}", i + 1), c);
        }
    }
    for (i, ca) in svid.bundle.iter().enumerate() {
        validity(out, &format!("CA #{}", i + 1), ca);
    }
}

/// `<label> Valid After:\t<time>` and `<label> Valid Until:\t<time>`.
fn validity(out: &mut String, label: &str, cert: &Cert) {
    let _ = writeln!(out, "{label} Valid After:\t{}", go_text::time_utc(cert.not_before));
    let _ = writeln!(out, "{label} Valid Until:\t{}", go_text::time_utc(cert.not_after));
}

/// Mode of the certificate and bundle files `-write` creates.
const PUBLIC_MODE: u32 = 0o644;
/// Mode of the private key files `-write` creates.
const PRIVATE_MODE: u32 = 0o600;

/// Writes each SVID to `dir` as spire-agent's `-write` does: `svid.<i>.pem` (the chain),
/// `svid.<i>.key` (PKCS#8, mode 0600), `bundle.<i>.pem` and `federated_bundle.<i>.<j>.pem`
/// (mode 0644), announcing each file on `out` before writing it.
///
/// # Errors
/// The first file that cannot be written, as Go words it (`open <path>: <reason>`).
pub fn write_files(svids: &[Svid], dir: &str, out: &mut dyn std::io::Write) -> Result<(), String> {
    for (i, svid) in svids.iter().enumerate() {
        let svid_path = go_text::join(dir, &format!("svid.{i}.pem"));
        let key_path = go_text::join(dir, &format!("svid.{i}.key"));
        let bundle_path = go_text::join(dir, &format!("bundle.{i}.pem"));
        announce(out, &format!("Writing SVID #{i} to file {svid_path}.\n"));
        write_file(&svid_path, certs_pem(&svid.certificates).as_bytes(), PUBLIC_MODE)?;
        announce(out, &format!("Writing key #{i} to file {key_path}.\n"));
        let key_pem = svid.private_key.as_ref().map(PrivateKey::to_pkcs8_pem).unwrap_or_default();
        write_file(&key_path, key_pem.as_bytes(), PRIVATE_MODE)?;
        announce(out, &format!("Writing bundle #{i} to file {bundle_path}.\n"));
        write_file(&bundle_path, certs_pem(&svid.bundle).as_bytes(), PUBLIC_MODE)?;
        for (j, (td, certs)) in svid.federated.iter().enumerate() {
            let path = go_text::join(dir, &format!("federated_bundle.{i}.{j}.pem"));
            announce(
                out,
                &format!("Writing federated bundle #{j} for trust domain {td} to file {path}.\n"),
            );
            write_file(&path, certs_pem(certs).as_bytes(), PUBLIC_MODE)?;
        }
    }
    Ok(())
}

fn announce(out: &mut dyn std::io::Write, line: &str) {
    // Announcements are informational; a closed stdout must not stop the files being written.
    let _ = out.write_all(line.as_bytes());
}

fn certs_pem(certs: &[Cert]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    certs
        .iter()
        .map(|c| pem::encode_config(&pem::Pem::new("CERTIFICATE", c.der.clone()), config))
        .collect()
}

/// Creates or truncates `path` (a new file gets `mode`) and writes `data`, as Go's
/// `os.OpenFile(path, O_WRONLY|O_CREATE|O_TRUNC, mode)` and `Write` do.
fn write_file(path: &str, data: &[u8], mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("open {path}: {}", go_text::os_error(&e)))?;
    file.write_all(data).map_err(|e| format!("write {path}: {}", go_text::os_error(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_svids_and_prints_no_hint_line_when_empty() {
        let out = render(&[], Duration::from_micros(3_200));
        assert_eq!(out, "Received 0 svids after 3.2ms\n\n");
    }
}
