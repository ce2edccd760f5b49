//! How SPIRE's Go programs spell values in their output, for the CLIs and telemetry that
//! print what spire-server and spire-agent print.
//!
//! - [`code_name`]: a gRPC status code as grpc-go names it (`codes.Code.String()`).
//! - [`encoding_json`] and [`drop_nulls`]: JSON as Go's `encoding/json` writes a decoded
//!   document (`json.Marshal` of a `map[string]any`): one line, object keys sorted, and `<`,
//!   `>`, `&`, U+2028 and U+2029 escaped as `\u003c` and so on (its HTML-safe default). SPIRE's
//!   CLIs drop null members after marshalling protobuf JSON (`cliprinter`), which
//!   [`drop_nulls`] does.

use serde_json::Value;

/// A gRPC status code's name as grpc-go spells it (`OK`, `Canceled` with one `l`,
/// `InvalidArgument`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Removes null object members and null array elements at every depth.
pub fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => {
            items.retain(|v| !v.is_null());
            items.iter_mut().for_each(drop_nulls);
        }
        _ => {}
    }
}

/// `value` as Go's `encoding/json` writes it, with a newline at the end: compact, object keys
/// sorted (by bytes, as Go sorts map keys), HTML-safe escapes. Nulls are written as they are;
/// call [`drop_nulls`] first to leave them out.
pub fn encoding_json(value: &Value) -> String {
    let mut out = marshal(value);
    out.push('\n');
    out
}

/// `value` as Go's `json.Marshal` returns it: [`encoding_json`] without the newline (a Go
/// struct's members come out in declaration order, so name them in sorted order to match).
pub fn marshal(value: &Value) -> String {
    let mut out = String::new();
    write_sorted(value, &mut out);
    out
}

fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_sorted(member, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON string as Go writes it.
fn write_string(s: &str, out: &mut String) {
    ward_core::go_json::write_string(s, out);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn code_names_are_grpc_go_spellings() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
        assert_eq!(code_name(tonic::Code::PermissionDenied), "PermissionDenied");
    }

    #[test]
    fn json_is_compact_sorted_and_html_safe_with_nulls_dropped_on_request() {
        let mut doc =
            json!({"b": [1, null, {"z": null, "y": "<a&b>\u{2028}"}], "a": null, "A": 1.5});
        assert_eq!(
            encoding_json(&doc),
            "{\"A\":1.5,\"a\":null,\"b\":[1,null,{\"y\":\"\\u003ca\\u0026b\\u003e\\u2028\",\"z\":null}]}\n"
        );
        drop_nulls(&mut doc);
        assert_eq!(
            encoding_json(&doc),
            "{\"A\":1.5,\"b\":[1,{\"y\":\"\\u003ca\\u0026b\\u003e\\u2028\"}]}\n"
        );
    }
}
