//! `-output json`: Workload API responses as spire-agent prints them, which is protobuf's
//! canonical JSON (proto field names, every field present, bytes in padded base64) passed
//! once through Go's `encoding/json` (keys sorted, nulls dropped, `<`, `>` and `&` escaped),
//! one document per line; two responses print as a two-element array.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use ward_proto::spiffe::workload::{
    JwtBundlesResponse, JwtsvidResponse, ValidateJwtsvidResponse, X509svidResponse,
};

use super::go_text;

fn b64(bytes: &[u8]) -> Value {
    Value::String(STANDARD.encode(bytes))
}

fn bytes_map<'a>(entries: impl Iterator<Item = (&'a String, &'a Vec<u8>)>) -> Value {
    Value::Object(entries.map(|(k, v)| (k.clone(), b64(v))).collect())
}

/// `X509SVIDResponse` as JSON.
pub fn x509_svid_response(resp: &X509svidResponse) -> Value {
    let svids: Vec<Value> = resp
        .svids
        .iter()
        .map(|s| {
            json!({
                "spiffe_id": s.spiffe_id,
                "x509_svid": b64(&s.x509_svid),
                "x509_svid_key": b64(&s.x509_svid_key),
                "bundle": b64(&s.bundle),
                "hint": s.hint,
            })
        })
        .collect();
    json!({
        "svids": svids,
        "crl": resp.crl.iter().map(|c| b64(c)).collect::<Vec<_>>(),
        "federated_bundles": bytes_map(resp.federated_bundles.iter()),
    })
}

/// `JWTSVIDResponse` as JSON.
pub fn jwt_svid_response(resp: &JwtsvidResponse) -> Value {
    let svids: Vec<Value> = resp
        .svids
        .iter()
        .map(|s| json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}))
        .collect();
    json!({ "svids": svids })
}

/// `JWTBundlesResponse` as JSON.
pub fn jwt_bundles_response(resp: &JwtBundlesResponse) -> Value {
    json!({ "bundles": bytes_map(resp.bundles.iter()) })
}

/// `ValidateJWTSVIDResponse` as JSON (an absent `claims` is left out, as a null would be).
pub fn validate_response(resp: &ValidateJwtsvidResponse) -> Value {
    let mut out = Map::new();
    out.insert("spiffe_id".into(), Value::String(resp.spiffe_id.clone()));
    if let Some(claims) = &resp.claims {
        out.insert("claims".into(), struct_value(claims));
    }
    Value::Object(out)
}

/// A `google.protobuf.Struct` as the JSON object it stands for.
pub fn struct_value(s: &prost_types::Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

fn value(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => go_text::json_number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_value(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
    }
}

/// One or more documents as spire-agent writes them: one line, a newline at the end; two or
/// more documents as an array; nulls dropped, keys sorted, Go's HTML-safe escapes
/// ([`ward_proto::go::encoding_json`]).
pub fn print(mut docs: Vec<Value>) -> String {
    let mut doc = if docs.len() == 1 { docs.remove(0) } else { Value::Array(docs) };
    ward_proto::go::drop_nulls(&mut doc);
    ward_proto::go::encoding_json(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_proto::spiffe::workload::X509svid;

    #[test]
    fn x509_response_prints_sorted_with_every_field() {
        let resp = X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: "spiffe://example.org/a".into(),
                x509_svid: vec![1, 2],
                x509_svid_key: vec![3],
                bundle: vec![4, 5, 6],
                hint: String::new(),
            }],
            crl: vec![],
            federated_bundles: [("spiffe://fed.org".to_owned(), vec![7])].into(),
        };
        assert_eq!(
            print(vec![x509_svid_response(&resp)]),
            "{\"crl\":[],\"federated_bundles\":{\"spiffe://fed.org\":\"Bw==\"},\"svids\":[{\
             \"bundle\":\"BAUG\",\"hint\":\"\",\"spiffe_id\":\"spiffe://example.org/a\",\
             \"x509_svid\":\"AQI=\",\"x509_svid_key\":\"Aw==\"}]}\n"
        );
    }

    #[test]
    fn two_documents_print_as_an_array_and_html_is_escaped() {
        let svid = JwtsvidResponse {
            svids: vec![ward_proto::spiffe::workload::Jwtsvid {
                spiffe_id: "spiffe://example.org/a".into(),
                svid: "x.y.z".into(),
                hint: "<&>".into(),
            }],
        };
        let bundles = JwtBundlesResponse { bundles: Default::default() };
        assert_eq!(
            print(vec![jwt_svid_response(&svid), jwt_bundles_response(&bundles)]),
            "[{\"svids\":[{\"hint\":\"\\u003c\\u0026\\u003e\",\"spiffe_id\":\
             \"spiffe://example.org/a\",\"svid\":\"x.y.z\"}]},{\"bundles\":{}}]\n"
        );
    }

    #[test]
    fn claims_print_as_json_with_whole_numbers() {
        use prost_types::value::Kind;
        let claims = prost_types::Struct {
            fields: [
                ("exp".to_owned(), prost_types::Value { kind: Some(Kind::NumberValue(1e9)) }),
                ("gone".to_owned(), prost_types::Value { kind: Some(Kind::NullValue(0)) }),
            ]
            .into(),
        };
        let resp =
            ValidateJwtsvidResponse { spiffe_id: "spiffe://x/y".into(), claims: Some(claims) };
        assert_eq!(
            print(vec![validate_response(&resp)]),
            "{\"claims\":{\"exp\":1000000000},\"spiffe_id\":\"spiffe://x/y\"}\n"
        );
    }
}
