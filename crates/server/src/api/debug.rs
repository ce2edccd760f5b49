//! `spire.api.server.debug.v1.Debug/GetInfo` (admin socket only): the server's own SVID
//! chain up to its root, uptime, and the numbers of agents, entries and bundles. As SPIRE,
//! an answer is reused for 5 seconds, and `federated_bundles_count` counts every bundle the
//! server holds, its own included.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};
use ward_proto::spire::api::server::debug::v1::{self as pb, debug_server::Debug};
use ward_store::PageRequest;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

use super::count_i32;
use crate::state::ServerState;

/// How long one answer is reused (SPIRE: 5 s).
pub const CACHE_EXPIRY: Duration = Duration::from_secs(5);

/// The Debug service.
#[derive(Debug)]
pub struct DebugService {
    state: Arc<ServerState>,
    cached: Mutex<Option<(SystemTime, pb::GetInfoResponse)>>,
}

impl DebugService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state, cached: Mutex::new(None) }
    }

    fn info(&self) -> Result<pb::GetInfoResponse, Status> {
        let st = &self.state;
        let bundle = st
            .store
            .bundle(&st.trust_domain)
            .ok_or_else(|| Status::not_found("trust domain bundle not found"))?;
        let chain = st.server_svid_chain();
        let now = st.clock.now();
        ward_core::x509svid::verify_with_bundle(&chain, &bundle, now)
            .map_err(|e| Status::internal(format!("failed verification against bundle: {e}")))?;
        let svid_chain = chain.iter().map(|der| cert_info(der)).collect::<Result<_, _>>()?;
        let uptime = now.duration_since(st.started_at).unwrap_or_default().as_secs();
        Ok(pb::GetInfoResponse {
            svid_chain,
            uptime: i32::try_from(uptime).unwrap_or(i32::MAX),
            agents_count: count_i32(st.store.agent_count()),
            federated_bundles_count: count_i32(
                st.store.list_bundles(&PageRequest::all()).items.len(),
            ),
            entries_count: count_i32(st.store.entry_count()),
        })
    }
}

#[tonic::async_trait]
impl Debug for DebugService {
    async fn get_info(
        &self,
        _: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        let now = self.state.clock.now();
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, resp)) = cached.as_ref()
            && now.duration_since(*at).is_ok_and(|age| age < CACHE_EXPIRY)
        {
            return Ok(Response::new(resp.clone()));
        }
        let resp = self.info()?;
        *cached = Some((now, resp.clone()));
        Ok(Response::new(resp))
    }
}

/// One certificate of the chain: its SPIFFE ID (when it has exactly one URI SAN that is
/// one), expiry and subject as Go prints a name.
fn cert_info(der: &[u8]) -> Result<pb::get_info_response::Cert, Status> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| Status::internal(format!("failed to parse bundle: {e}")))?;
    Ok(pb::get_info_response::Cert {
        id: spiffe_id_of(&cert).map(|id| ward_proto::convert::spiffe_id_to_proto(&id)),
        expires_at: cert.validity().not_after.timestamp(),
        subject: go_name(cert.subject()),
    })
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Option<ward_core::SpiffeId> {
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    ward_core::SpiffeId::parse(uri).ok()
}

/// The attributes Go's `pkix.Name` keeps in named fields, in the order it writes them
/// (before reversing): country, province, locality, street, postal code, organization,
/// organizational unit, common name, serial number.
const GO_NAME_ORDER: &[(&str, &str)] = &[
    ("2.5.4.6", "C"),
    ("2.5.4.8", "ST"),
    ("2.5.4.7", "L"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.17", "POSTALCODE"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.3", "CN"),
    ("2.5.4.5", "SERIALNUMBER"),
];

/// A distinguished name as Go's `pkix.Name.String()` prints it (what SPIRE reports): the
/// known attributes in Go's field order, then any others, all reversed and comma-joined,
/// with RFC 4514 escaping. Common name and serial number keep only their last value.
pub fn go_name(name: &X509Name<'_>) -> String {
    let mut known: Vec<(usize, String)> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for atv in name.iter_attributes() {
        let oid = atv.attr_type().to_id_string();
        let value = atv.as_str().map(str::to_owned).unwrap_or_default();
        match GO_NAME_ORDER.iter().position(|(o, _)| *o == oid) {
            Some(i) => {
                let single = matches!(GO_NAME_ORDER[i].1, "CN" | "SERIALNUMBER");
                if single {
                    known.retain(|(j, _)| *j != i);
                }
                known.push((i, value));
            }
            None => others.push(format!("{oid}=#{}", hex::encode(atv.attr_value().data))),
        }
    }
    known.sort_by_key(|(i, _)| *i);
    let mut parts: Vec<String> = others;
    parts.extend(known.into_iter().map(|(i, v)| format!("{}={}", GO_NAME_ORDER[i].1, escape(&v))));
    parts.reverse();
    parts.join(",")
}

fn escape(v: &str) -> String {
    let last = v.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(v.len());
    for (k, c) in v.chars().enumerate() {
        let needs = match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => true,
            ' ' => k == 0 || k == last,
            '#' => k == 0,
            _ => false,
        };
        if needs {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject_of(params: rcgen::CertificateParams) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
        go_name(parsed.subject())
    }

    #[test]
    fn names_print_as_go_prints_them() {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CountryName, "US");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "SPIFFE");
        p.distinguished_name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), "1234");
        assert_eq!(subject_of(p), "SERIALNUMBER=1234,O=SPIFFE,C=US");

        // Go's order, not the certificate's; escaping at the edges and of specials.
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, " a,b ");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "SPIRE");
        p.distinguished_name.push(rcgen::DnType::CountryName, "US");
        assert_eq!(subject_of(p), "CN=\\ a\\,b\\ ,O=SPIRE,C=US");
    }
}
