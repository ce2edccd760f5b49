//! sshpop's JSON messages, encoded and decoded as Go's `encoding/json` does for SPIRE's
//! structs (field names matched regardless of case, byte strings as standard base64, `null`
//! for nil), with Go's error texts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::node_attestor::x509pop::{Base64Bytes, go_json_error};

// ---------------------------------------------------------------------------------------------
// Go's encoding/json, as far as these messages need it

/// The JSON kind Go names in `cannot unmarshal <kind>` errors.
pub(crate) fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `data` as a JSON object decoded into Go type `go_type`: `None` for `null`.
fn go_object(data: &[u8], go_type: &str) -> Result<Option<Map<String, Value>>, String> {
    let value: Value = serde_json::from_slice(data).map_err(|e| go_json_error(&e))?;
    match value {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            go_kind(&other)
        )),
    }
}

/// The member Go decodes into field `name`: an exact match, else one equal ignoring case.
fn go_member<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// The `[]byte` field `name` of Go struct `go_struct` (empty when absent or `null`).
fn go_bytes(obj: &Map<String, Value>, go_struct: &str, name: &str) -> Result<Vec<u8>, String> {
    match go_member(obj, name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(s @ Value::String(_)) => {
            Base64Bytes::deserialize(s).map(|b| b.0).map_err(|e| e.to_string())
        }
        Some(other) => Err(format!(
            "json: cannot unmarshal {} into Go struct field {go_struct}.{name} of type []uint8",
            go_kind(other)
        )),
    }
}

/// The `string` field `name` of Go struct `go_struct` (empty when absent or `null`).
fn go_string(obj: &Map<String, Value>, go_struct: &str, name: &str) -> Result<String, String> {
    match go_member(obj, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "json: cannot unmarshal {} into Go struct field {go_struct}.{name} of type string",
            go_kind(other)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire messages

/// The attestation payload: the host certificate in SSH wire format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationData {
    /// The certificate's wire bytes.
    pub certificate: Vec<u8>,
}

impl AttestationData {
    /// Go's encoding: `{"Certificate":"<base64>"}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut obj = Map::new();
        obj.insert("Certificate".into(), go_bytes_value(&self.certificate));
        Value::Object(obj).to_string().into_bytes()
    }

    /// Decodes `data` as Go's `json.Unmarshal` into SPIRE's `attestationData` does.
    ///
    /// # Errors
    /// Go's message.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let Some(obj) = go_object(data, "sshpop.attestationData")? else {
            return Ok(Self::default());
        };
        Ok(Self { certificate: go_bytes(&obj, "attestationData", "Certificate")? })
    }
}

/// Go's JSON for a `[]byte`: base64, `null` when nil.
fn go_bytes_value(b: &[u8]) -> Value {
    Value::String(STANDARD.encode(b))
}

/// The server's challenge: its nonce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChallengeRequest {
    /// The server's nonce.
    pub nonce: Vec<u8>,
}

impl ChallengeRequest {
    /// Go's encoding: `{"Nonce":"<base64>"}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut obj = Map::new();
        obj.insert("Nonce".into(), go_bytes_value(&self.nonce));
        Value::Object(obj).to_string().into_bytes()
    }

    /// Decodes `data` as Go decodes SPIRE's `challengeRequest`.
    ///
    /// # Errors
    /// Go's message.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let Some(obj) = go_object(data, "sshpop.challengeRequest")? else {
            return Ok(Self::default());
        };
        Ok(Self { nonce: go_bytes(&obj, "challengeRequest", "Nonce")? })
    }
}

/// An SSH signature as Go's `ssh.Signature` holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshSignature {
    /// The signature algorithm (`ssh-ed25519`, `rsa-sha2-512`, ...).
    pub format: String,
    /// The signature blob.
    pub blob: Vec<u8>,
    /// Trailing data (security-key signatures); `None` is Go's nil.
    pub rest: Option<Vec<u8>>,
}

/// The agent's answer: its nonce and the signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChallengeResponse {
    /// The agent's nonce.
    pub nonce: Vec<u8>,
    /// The signature over SHA-256(server nonce ‖ agent nonce); `None` is Go's nil.
    pub signature: Option<SshSignature>,
}

impl ChallengeResponse {
    /// Go's encoding: `{"Nonce":"..","Signature":{"Format":"..","Blob":"..","Rest":null}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let signature = match &self.signature {
            None => "null".to_owned(),
            Some(s) => format!(
                "{{\"Format\":{},\"Blob\":{},\"Rest\":{}}}",
                Value::String(s.format.clone()),
                go_bytes_value(&s.blob),
                s.rest.as_deref().map_or(Value::Null, go_bytes_value)
            ),
        };
        // Go writes members in field order, which serde_json's map would sort.
        format!("{{\"Nonce\":{},\"Signature\":{signature}}}", go_bytes_value(&self.nonce))
            .into_bytes()
    }

    /// Decodes `data` as Go decodes SPIRE's `challengeResponse`.
    ///
    /// # Errors
    /// Go's message.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let Some(obj) = go_object(data, "sshpop.challengeResponse")? else {
            return Ok(Self::default());
        };
        let nonce = go_bytes(&obj, "challengeResponse", "Nonce")?;
        let signature = match go_member(&obj, "Signature") {
            None | Some(Value::Null) => None,
            Some(Value::Object(sig)) => {
                let at = "challengeResponse.Signature";
                Some(SshSignature {
                    format: go_string(sig, at, "Format")?,
                    blob: go_bytes(sig, at, "Blob")?,
                    rest: match go_member(sig, "Rest") {
                        None | Some(Value::Null) => None,
                        Some(_) => Some(go_bytes(sig, at, "Rest")?),
                    },
                })
            }
            Some(other) => {
                return Err(format!(
                    "json: cannot unmarshal {} into Go struct field challengeResponse.Signature \
                     of type ssh.Signature",
                    go_kind(other)
                ));
            }
        };
        Ok(Self { nonce, signature })
    }
}
