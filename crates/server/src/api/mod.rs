//! The gRPC services. Handlers stay thin: wire message to domain, domain call, back to wire;
//! each service maps domain errors to `tonic::Status` with SPIRE's codes and messages.

pub mod agent;
pub mod bundle;
pub mod debug;
pub mod entry;
pub mod health;
pub mod localauthority;
pub mod logger;
pub mod svid;
pub mod trustdomain;
pub mod watch;

use tonic::Status;
use ward_ca::{CsrError, SignError};
use ward_store::{Applied, Command};

use crate::state::ServerState;

/// Proposes `cmd`; a failed proposal is `Unavailable` while the cluster cannot take writes
/// (clients retry) and `Internal` when the replica failed (see
/// [`crate::proposer::ProposeError::to_status`]). A fatal failure is logged once, where the
/// server stops for it.
async fn propose(state: &ServerState, cmd: Command) -> Result<Applied, Status> {
    state.proposer.propose(cmd).await.map_err(|e| {
        if !e.is_fatal() {
            tracing::error!(error = %e, "proposal failed");
        }
        e.to_status()
    })
}

/// SPIRE's texts for a refused CSR, which differ between RPCs.
#[derive(Debug, Clone, Copy)]
struct CsrTexts {
    /// The CSR does not parse (or carries a key ward does not certify).
    malformed: &'static str,
    /// The CSR's signature does not verify.
    bad_signature: &'static str,
}

/// BatchNewX509SVID.
const BATCH_CSR: CsrTexts =
    CsrTexts { malformed: "malformed CSR", bad_signature: "invalid CSR signature" };
/// MintX509SVID.
const MINT_CSR: CsrTexts =
    CsrTexts { malformed: "malformed CSR", bad_signature: "failed to verify CSR signature" };
/// AttestAgent and RenewAgent. (SPIRE does not check an agent CSR's signature; ward does,
/// and refuses a bad one as unparseable.)
const AGENT_CSR: CsrTexts =
    CsrTexts { malformed: "failed to parse CSR", bad_signature: "failed to parse CSR" };

/// The `InvalidArgument` status of a refused CSR.
fn csr_status(e: &CsrError, texts: CsrTexts) -> Status {
    let prefix =
        if matches!(e, CsrError::BadSignature) { texts.bad_signature } else { texts.malformed };
    Status::invalid_argument(format!("{prefix}: {e}"))
}

/// The status SPIRE gives a signing failure: CSR problems are the caller's
/// (`InvalidArgument`, with the RPC's `csr` texts); everything else, the CA's own checks
/// included (the handlers validate before signing), is `Internal` prefixed with `context`.
fn sign_error_status(e: &SignError, csr: CsrTexts, context: &str) -> Status {
    match e {
        SignError::Csr(c) => csr_status(c, csr),
        SignError::PublicKey(_) => Status::invalid_argument(format!("{}: {e}", csr.malformed)),
        _ => Status::internal(format!("{context}: {e}")),
    }
}

/// A SPIFFE ID request field that must name something of a given role in the server's trust
/// domain (`check`, one of the [`ward_core::SpiffeId`] `check_*_of` methods): a missing,
/// malformed or misplaced ID is `InvalidArgument` "invalid <field>: ..." as in SPIRE.
fn id_for_role(
    id: Option<&ward_proto::spire::api::types::Spiffeid>,
    field: ward_proto::convert::IdField,
    check: impl FnOnce(&ward_core::SpiffeId) -> Result<(), ward_core::IdRoleError>,
) -> Result<ward_core::SpiffeId, Status> {
    let id = ward_proto::convert::spiffe_id_from_proto(id, field)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    check(&id).map_err(|e| Status::invalid_argument(format!("invalid {field}: {e}")))?;
    Ok(id)
}

/// `Unimplemented` for a method of a registered service that this server does not serve.
fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("method {method} not implemented"))
}

/// A fresh server-chosen entry id: a version 7 UUID (RFC 9562 §5.7), in the same
/// hyphenated form as SPIRE's version 4 ids, but ordered by creation time. The ids of new
/// entries then sort after every earlier one, so their records land at the end of the
/// store's key space instead of at random places in it (see `docs/spire-differences.md`).
fn new_entry_id() -> ward_core::EntryId {
    // A hyphenated UUID is 36 printable ASCII characters: always a valid entry id.
    #[allow(clippy::expect_used)]
    ward_core::EntryId::new(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid entry id")
}

/// A store page request from a wire `page_size` / `page_token`, read as SPIRE reads them.
///
/// A size of 0 or less asks for everything in one page, and the token is then ignored.
/// Otherwise a non-empty token must be one this list could have handed out (`parses`, for
/// the list's key), else the call fails with `refuse` of SPIRE's reason,
/// "could not parse token '<token>'"; each list wraps that reason in its own way.
fn page_request(
    size: i32,
    token: &str,
    parses: impl FnOnce(&str) -> bool,
    refuse: impl FnOnce(String) -> Status,
) -> Result<ward_store::PageRequest, Status> {
    let Ok(size @ 1..) = usize::try_from(size) else {
        return Ok(ward_store::PageRequest::all());
    };
    if token.is_empty() {
        return Ok(ward_store::PageRequest::first(size));
    }
    if !parses(token) {
        return Err(refuse(format!("could not parse token '{token}'")));
    }
    Ok(ward_store::PageRequest { token: Some(token.to_owned()), size })
}

/// Whether `token` is a page token of a list SPIRE pages by row id (entries, bundles,
/// federation relationships): a decimal number that fits in 32 bits, with no sign, as Go's
/// `strconv.ParseUint(token, 10, 32)` reads it.
fn row_id_token(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_digit()) && token.parse::<u32>().is_ok()
}

/// A number as Go's `%q` prints a rune, the way SPIRE's datastore names an unknown match
/// behavior (`'\t'` for 9, `'A'` for 65); numbers that are no rune print as `'\u{fffd}'`
/// does (the replacement character).
fn go_quoted_rune(n: i32) -> String {
    let c = u32::try_from(n).ok().and_then(char::from_u32).unwrap_or(char::REPLACEMENT_CHARACTER);
    let body = match c {
        '\u{7}' => "\\a".to_owned(),
        '\u{8}' => "\\b".to_owned(),
        '\u{c}' => "\\f".to_owned(),
        '\n' => "\\n".to_owned(),
        '\r' => "\\r".to_owned(),
        '\t' => "\\t".to_owned(),
        '\u{b}' => "\\v".to_owned(),
        '\\' => "\\\\".to_owned(),
        '\'' => "\\'".to_owned(),
        c if c.is_ascii_control() => format!("\\x{:02x}", u32::from(c)),
        c if c.is_control() && u32::from(c) <= 0xffff => format!("\\u{:04x}", u32::from(c)),
        c if c.is_control() => format!("\\U{:08x}", u32::from(c)),
        c => c.to_string(),
    };
    format!("'{body}'")
}

/// A count for the wire (saturating).
fn count_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The ListAgents / CountAgents selector filter, refused as SPIRE refuses it: a bad
/// selector is the caller's, an empty set or an unknown match behavior its datastore's
/// (`failed` is "failed to list agents" or "failed to count agents").
fn agent_selector_filter(
    m: &ward_proto::spire::api::types::SelectorMatch,
    failed: &str,
) -> Result<ward_store::SelectorFilter, Status> {
    let selectors = ward_proto::convert::selectors_from_proto(&m.selectors)
        .map_err(|e| Status::invalid_argument(format!("failed to parse selectors: {e}")))?;
    if selectors.is_empty() {
        return Err(Status::internal(format!("{failed}: cannot list by empty selectors set")));
    }
    let match_mode = ward_proto::convert::selector_match_from_proto(m.r#match).map_err(|_| {
        Status::internal(format!(
            "{failed}: datastore-sql: unhandled match behavior {}",
            go_quoted_rune(m.r#match)
        ))
    })?;
    Ok(ward_store::SelectorFilter { selectors, match_mode })
}

/// A batch response under construction: items refused before the proposal keep their place,
/// and the results of the proposed items fill the remaining places in request order.
struct Batch<R> {
    results: Vec<Option<R>>,
    pending: Vec<usize>,
}

impl<R> Default for Batch<R> {
    fn default() -> Self {
        Self { results: Vec::new(), pending: Vec::new() }
    }
}

impl<R> Batch<R> {
    /// The next item is refused with `r`.
    fn refuse(&mut self, r: R) {
        self.results.push(Some(r));
    }

    /// The next item is proposed; its result comes later through [`Batch::fill`].
    fn accept(&mut self) {
        self.pending.push(self.results.len());
        self.results.push(None);
    }

    /// Accepts `item` (returning its value for the proposal) or refuses it with its result.
    fn take<T>(&mut self, item: Result<T, R>) -> Option<T> {
        match item {
            Ok(v) => {
                self.accept();
                Some(v)
            }
            Err(r) => {
                self.refuse(r);
                None
            }
        }
    }

    /// The results of the accepted items, in the order they were accepted.
    fn fill(&mut self, items: impl IntoIterator<Item = R>) {
        for (slot, r) in std::mem::take(&mut self.pending).into_iter().zip(items) {
            if let Some(place) = self.results.get_mut(slot) {
                *place = Some(r);
            }
        }
    }

    /// All results in request order.
    fn finish(self) -> Vec<R> {
        self.results.into_iter().flatten().collect()
    }
}

/// The gRPC code of a refused command item, where a service has no more precise answer.
fn item_code(e: &ward_store::ItemError) -> tonic::Code {
    use ward_store::ItemError as E;
    match e {
        E::EntryExists(_)
        | E::EntryIdTaken(_)
        | E::TokenExists
        | E::BundleExists(_)
        | E::FederationExists(_) => tonic::Code::AlreadyExists,
        E::EntryNotFound(_)
        | E::TokenNotFound
        | E::AgentNotFound(_)
        | E::BundleNotFound(_)
        | E::AuthorityNotFound(_)
        | E::FederationNotFound(_) => tonic::Code::NotFound,
        E::InvalidEntry(_) | E::SerialMismatch | E::Invalid(_) => tonic::Code::InvalidArgument,
        E::FederatedBundleMissing(_) => tonic::Code::Internal,
        E::BundleInUse(..) | E::AuthorityNotTainted => tonic::Code::FailedPrecondition,
        E::AgentBanned(_) | E::AgentAttestedBefore(_) => tonic::Code::PermissionDenied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_entry_ids_are_hyphenated_uuids_in_creation_order() {
        let ids: Vec<String> = (0..2000).map(|_| new_entry_id().as_str().to_owned()).collect();
        for id in &ids {
            assert_eq!(id.len(), 36, "{id}");
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 7, "{id}");
            assert_eq!(parsed.hyphenated().to_string(), *id, "lower-case hyphenated form");
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids sort in the order they were made");
    }

    #[test]
    fn runes_print_as_go_quotes_them() {
        for (n, want) in [
            (9, "'\\t'"),
            (65, "'A'"),
            (0, "'\\x00'"),
            (39, "'\\''"),
            (0x7f, "'\\x7f'"),
            (0x85, "'\\u0085'"),
            (0xe9, "'é'"),
            (-1, "'\u{fffd}'"),
            (0x11_0000, "'\u{fffd}'"),
        ] {
            assert_eq!(go_quoted_rune(n), want, "{n}");
        }
    }

    #[test]
    fn row_id_tokens_are_unsigned_32_bit_decimals_as_go_parses_them() {
        for good in ["0", "1", "007", "4294967295"] {
            assert!(row_id_token(good), "{good}");
        }
        for bad in ["", "garbage", "-1", "+1", "abc", " 1", "1 ", "4294967296", "1_000", "0x1"] {
            assert!(!row_id_token(bad), "{bad}");
        }
    }

    #[test]
    fn page_size_of_zero_or_less_ignores_the_token() {
        let never = |_: &str| -> bool { panic!("token read") };
        let refuse = |why: String| Status::internal(why);
        for size in [0, -1, i32::MIN] {
            let p = page_request(size, "zz/not a token", never, refuse).unwrap();
            assert_eq!(p, ward_store::PageRequest::all());
        }
        let st = page_request(2, "bad", |_| false, refuse).unwrap_err();
        assert_eq!(st.message(), "could not parse token 'bad'");
        let p = page_request(2, "good", |_| true, refuse).unwrap();
        assert_eq!(p, ward_store::PageRequest { token: Some("good".into()), size: 2 });
    }

    #[test]
    fn sign_errors_map_to_caller_or_server_codes() {
        let foreign = SignError::NotInTrustDomain {
            id: "spiffe://other.org/w".into(),
            trust_domain: "example.org".into(),
        };
        let st = sign_error_status(&foreign, BATCH_CSR, "failed to sign X509-SVID");
        assert_eq!(st.code(), tonic::Code::Internal);
        assert_eq!(
            st.message(),
            "failed to sign X509-SVID: spiffe://other.org/w is not a member of trust domain \
             example.org"
        );
        let expired = SignError::CaExpired { not_after: 5 };
        let st = sign_error_status(&expired, BATCH_CSR, "failed to sign X509-SVID");
        assert_eq!(st.code(), tonic::Code::Internal);
        assert_eq!(st.message(), "failed to sign X509-SVID: CA expired at unix time 5");
        let bad_sig = SignError::Csr(CsrError::BadSignature);
        for (texts, prefix) in [
            (BATCH_CSR, "invalid CSR signature"),
            (MINT_CSR, "failed to verify CSR signature"),
            (AGENT_CSR, "failed to parse CSR"),
        ] {
            let st = sign_error_status(&bad_sig, texts, "unused");
            assert_eq!(st.code(), tonic::Code::InvalidArgument);
            assert_eq!(st.message(), format!("{prefix}: CSR signature does not verify"));
        }
        let st = sign_error_status(&SignError::Csr(CsrError::MalformedDer), MINT_CSR, "unused");
        assert_eq!(st.message(), "malformed CSR: malformed CSR DER");
    }
}
