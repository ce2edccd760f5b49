//! Status values: per-item batch results and PermissionDenied errors with typed details.

use prost::Message;
use prost::bytes::Bytes;
use tonic::Code;

use crate::google::rpc;
use crate::spire::api::types;
use crate::spire::api::types::permission_denied_details::Reason;

/// The `Any` type URL under which `PermissionDeniedDetails` travels in status details.
pub const PERMISSION_DENIED_DETAILS_TYPE_URL: &str =
    "type.googleapis.com/spire.api.types.PermissionDeniedDetails";

/// A per-item result status for batch responses.
pub fn batch_status(code: Code, message: impl Into<String>) -> types::Status {
    types::Status { code: code as i32, message: message.into() }
}

/// The per-item success status SPIRE sends: code 0, message `"OK"`.
pub fn batch_status_ok() -> types::Status {
    batch_status(Code::Ok, "OK")
}

/// A PermissionDenied error carrying `spire.api.types.PermissionDeniedDetails{reason}` in
/// its status details, as SPIRE's agent authorization does. The details are a serialized
/// `google.rpc.Status` (code, message, one `Any`), which gRPC sends in the
/// `grpc-status-details-bin` trailer; SPIRE agents read the reason from there to decide
/// whether to re-attest or shut down.
pub fn permission_denied(message: impl Into<String>, reason: Reason) -> tonic::Status {
    let message = message.into();
    let details = types::PermissionDeniedDetails { reason: reason as i32 };
    let rich = rpc::Status {
        code: Code::PermissionDenied as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: PERMISSION_DENIED_DETAILS_TYPE_URL.to_owned(),
            value: details.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(Code::PermissionDenied, message, Bytes::from(rich.encode_to_vec()))
}

/// The PermissionDenied reason carried in a status's details, if any.
///
/// Returns `None` for other codes, absent or undecodable details, or an unknown reason number.
pub fn permission_denied_reason(status: &tonic::Status) -> Option<Reason> {
    if status.code() != Code::PermissionDenied {
        return None;
    }
    let rich = rpc::Status::decode(status.details()).ok()?;
    rich.details
        .iter()
        .filter(|any| any.type_url == PERMISSION_DENIED_DETAILS_TYPE_URL)
        .find_map(|any| types::PermissionDeniedDetails::decode(any.value.as_slice()).ok())
        .and_then(|d| Reason::try_from(d.reason).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_statuses_use_grpc_code_numbers() {
        assert_eq!(batch_status_ok(), types::Status { code: 0, message: "OK".into() });
        assert_eq!(batch_status(Code::NotFound, "entry not found").code, 5);
        assert_eq!(batch_status(Code::InvalidArgument, "x").code, 3);
    }

    #[test]
    fn details_hold_a_google_rpc_status_with_one_any() {
        let s = permission_denied("agent is banned", Reason::AgentBanned);
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.message(), "agent is banned");
        let rich = rpc::Status::decode(s.details()).unwrap();
        assert_eq!(rich.code, 7);
        assert_eq!(rich.message, "agent is banned");
        assert_eq!(rich.details.len(), 1);
        assert_eq!(rich.details[0].type_url, PERMISSION_DENIED_DETAILS_TYPE_URL);
        // reason field 1, varint: key 0x08, value 4 (AGENT_BANNED).
        assert_eq!(rich.details[0].value, vec![0x08, 0x04]);
        assert_eq!(permission_denied_reason(&s), Some(Reason::AgentBanned));
    }

    #[test]
    fn no_reason_without_details_or_for_other_codes() {
        assert_eq!(permission_denied_reason(&tonic::Status::permission_denied("x")), None);
        let other = tonic::Status::with_details(
            Code::Unavailable,
            "x",
            permission_denied("x", Reason::AgentExpired).details().to_vec().into(),
        );
        assert_eq!(permission_denied_reason(&other), None);
        let garbage =
            tonic::Status::with_details(Code::PermissionDenied, "x", Bytes::from_static(&[0xff]));
        assert_eq!(permission_denied_reason(&garbage), None);
    }
}
