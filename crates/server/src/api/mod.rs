//! The gRPC services. Handlers stay thin: wire message to domain, domain call, back to wire;
//! each service maps domain errors to `tonic::Status` with SPIRE's codes and messages.

pub mod agent;
pub mod bundle;
pub mod entry;
pub mod health;
pub mod svid;
pub mod trustdomain;

use tonic::Status;
use ward_ca::{CsrError, SignError};
use ward_store::{Applied, Command};

use crate::state::ServerState;

/// Proposes `cmd`; a failed proposal is `Internal` (the store is unusable, not the request).
async fn propose(state: &ServerState, cmd: Command) -> Result<Applied, Status> {
    state.proposer.propose(cmd).await.map_err(|e| {
        tracing::error!(error = %e, "proposal failed");
        Status::internal(format!("failed to write: {e}"))
    })
}

/// The status SPIRE gives a signing failure: CSR problems and an ID outside the trust domain
/// are the caller's (`InvalidArgument`), everything else is `Internal` prefixed with
/// `context`. (The handlers check trust-domain membership before signing; the mapping
/// covers the CA's own check all the same.)
fn sign_error_status(e: &SignError, context: &str) -> Status {
    match e {
        SignError::Csr(CsrError::BadSignature) => {
            Status::invalid_argument(format!("invalid CSR signature: {e}"))
        }
        SignError::Csr(_) | SignError::PublicKey(_) => {
            Status::invalid_argument(format!("malformed CSR: {e}"))
        }
        SignError::NotInTrustDomain { .. } => {
            Status::invalid_argument(format!("invalid SPIFFE ID: {e}"))
        }
        _ => Status::internal(format!("{context}: {e}")),
    }
}

/// `Unimplemented` for a method of a registered service that this server does not serve.
fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("method {method} not implemented"))
}

/// A fresh server-chosen entry id (a v4 UUID).
fn new_entry_id() -> ward_core::EntryId {
    // A hyphenated v4 UUID is 36 printable ASCII characters: always a valid entry id.
    #[allow(clippy::expect_used)]
    ward_core::EntryId::new(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid entry id")
}

/// A store page request from a wire `page_size` / `page_token`.
fn page_request(size: i32, token: &str) -> Result<ward_store::PageRequest, Status> {
    let size = usize::try_from(size)
        .map_err(|_| Status::invalid_argument(format!("page size must not be negative: {size}")))?;
    Ok(ward_store::PageRequest { token: Some(token.to_owned()).filter(|t| !t.is_empty()), size })
}

/// A count for the wire (saturating).
fn count_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A store selector filter from a wire `SelectorMatch`.
fn selector_filter(
    m: &ward_proto::spire::api::types::SelectorMatch,
) -> Result<ward_store::SelectorFilter, Status> {
    let bad = |e: ward_proto::convert::ConvertError| {
        Status::invalid_argument(format!("malformed filter: {e}"))
    };
    let selectors = ward_proto::convert::selectors_from_proto(&m.selectors).map_err(bad)?;
    let match_mode = ward_proto::convert::selector_match_from_proto(m.r#match).map_err(bad)?;
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

/// The gRPC code of a refused command item.
fn item_code(e: &ward_store::ItemError) -> tonic::Code {
    use ward_store::ErrorClass;
    match e.class() {
        ErrorClass::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorClass::NotFound => tonic::Code::NotFound,
        ErrorClass::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorClass::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorClass::PermissionDenied => tonic::Code::PermissionDenied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_errors_map_to_caller_or_server_codes() {
        let foreign = SignError::NotInTrustDomain {
            id: "spiffe://other.org/w".into(),
            trust_domain: "example.org".into(),
        };
        let st = sign_error_status(&foreign, "failed to sign X509-SVID");
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            st.message(),
            "invalid SPIFFE ID: spiffe://other.org/w is not a member of trust domain example.org"
        );
        let expired = SignError::CaExpired { not_after: 5 };
        let st = sign_error_status(&expired, "failed to sign X509-SVID");
        assert_eq!(st.code(), tonic::Code::Internal);
        assert_eq!(st.message(), "failed to sign X509-SVID: CA expired at unix time 5");
    }
}
