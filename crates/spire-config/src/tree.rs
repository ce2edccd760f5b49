//! SPIRE's configuration as one tree of JSON values, whether it was written in HCL or in JSON,
//! shaped the way SPIRE's HCL v1 decoder sees it.
//!
//! - A block `A "x" "y" { ... }` is the object `{"A": {"x": {"y": {...}}}}`, and `A { ... }`
//!   equals `A = { ... }`.
//! - A key given twice merges: objects key by key, anything else the later value.
//! - A list of objects where an object belongs (`"ca_subject": [{...}]`, as SPIRE's Helm chart
//!   renders blocks) is the objects merged.
//! - A quoted string holding `${...}` stays literal text, as HCL v1 keeps it (`-expandEnv`
//!   runs before parsing and is the only expansion).

use hcl::{Expression, ObjectKey, Structure};
use serde_json::{Map, Value};

/// Parses HCL text into the tree.
///
/// # Errors
/// The HCL parser's message.
pub fn from_hcl(text: &str) -> Result<Value, String> {
    let body = hcl::parse(text).map_err(|e| e.to_string())?;
    let tree = body_value(body)?;
    Ok(normalize(tree))
}

/// Parses JSON text into the tree.
///
/// # Errors
/// The JSON parser's message.
pub fn from_json(text: &str) -> Result<Value, String> {
    let tree: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(normalize(tree))
}

fn body_value(body: hcl::Body) -> Result<Value, String> {
    let mut obj = Map::new();
    for structure in body.into_inner() {
        match structure {
            Structure::Attribute(a) => insert(&mut obj, a.key.into_inner(), expr_value(a.expr)?),
            Structure::Block(b) => {
                let mut value = body_value(b.body)?;
                for label in b.labels.into_iter().rev() {
                    let mut wrapped = Map::new();
                    wrapped.insert(label.into_inner(), value);
                    value = Value::Object(wrapped);
                }
                insert(&mut obj, b.identifier.into_inner(), value);
            }
        }
    }
    Ok(Value::Object(obj))
}

fn expr_value(expr: Expression) -> Result<Value, String> {
    Ok(match expr {
        Expression::Null => Value::Null,
        Expression::Bool(b) => Value::Bool(b),
        Expression::Number(n) => number_value(&n),
        Expression::String(s) => Value::String(s),
        Expression::Array(items) => {
            Value::Array(items.into_iter().map(expr_value).collect::<Result<_, _>>()?)
        }
        Expression::Object(entries) => {
            let mut obj = Map::new();
            for (key, value) in entries {
                insert(&mut obj, key_string(key)?, expr_value(value)?);
            }
            Value::Object(obj)
        }
        Expression::TemplateExpr(t) => Value::String(t.to_string()),
        Expression::Parenthesis(inner) => expr_value(*inner)?,
        other => return Err(format!("unsupported expression `{other}`: SPIRE's HCL has none")),
    })
}

fn key_string(key: ObjectKey) -> Result<String, String> {
    match key {
        ObjectKey::Identifier(id) => Ok(id.into_inner()),
        ObjectKey::Expression(Expression::String(s)) => Ok(s),
        ObjectKey::Expression(Expression::TemplateExpr(t)) => Ok(t.to_string()),
        other => Err(format!("unsupported object key `{other}`")),
    }
}

fn number_value(n: &hcl::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::from(i)
    } else if let Some(u) = n.as_u64() {
        Value::from(u)
    } else {
        n.as_f64().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
    }
}

/// Adds `key` to `obj`, merging with a value already there.
fn insert(obj: &mut Map<String, Value>, key: String, value: Value) {
    match obj.get_mut(&key) {
        Some(existing) => merge(existing, value),
        None => {
            obj.insert(key, value);
        }
    }
}

fn merge(into: &mut Value, value: Value) {
    match (into, value) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                insert(a, k, v);
            }
        }
        (slot, value) => *slot = value,
    }
}

/// Turns every non-empty list of objects into the objects merged, at every depth.
fn normalize(value: Value) -> Value {
    match value {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let mut merged = Value::Object(Map::new());
            for item in items {
                merge(&mut merged, normalize(item));
            }
            merged
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Object(obj) => {
            Value::Object(obj.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_nest_by_label_and_merge() {
        let tree = from_hcl(
            r#"
            server {
                trust_domain = "example.org"
                bind_port = "8081"
            }
            plugins {
                NodeAttestor "join_token" {
                    plugin_data {}
                }
                KeyManager "disk" {
                    plugin_data = { keys_path = "/k.json" }
                }
            }
            plugins {
                NodeAttestor "x509pop" {
                    plugin_data { ca_bundle_path = "/ca.pem" }
                }
            }
            "#,
        )
        .unwrap();
        assert_eq!(
            tree,
            json!({
                "server": {"trust_domain": "example.org", "bind_port": "8081"},
                "plugins": {
                    "NodeAttestor": {
                        "join_token": {"plugin_data": {}},
                        "x509pop": {"plugin_data": {"ca_bundle_path": "/ca.pem"}}
                    },
                    "KeyManager": {"disk": {"plugin_data": {"keys_path": "/k.json"}}}
                }
            })
        );
    }

    #[test]
    fn templates_stay_literal_and_numbers_keep_their_type() {
        let tree = from_hcl("a = \"${HOME}/x\"\nb = 8081\nc = 1.5\nd = [\"x\", 2]\n").unwrap();
        assert_eq!(tree, json!({"a": "${HOME}/x", "b": 8081, "c": 1.5, "d": ["x", 2]}));
    }

    #[test]
    fn lists_of_objects_merge_as_hcl_v1_blocks() {
        let tree = from_json(
            r#"{"server": {"ca_subject": [{"country": ["US"], "common_name": "x"}]},
                "telemetry": [{"Prometheus": [{"port": 9988}]}], "empty": []}"#,
        )
        .unwrap();
        assert_eq!(
            tree,
            json!({
                "server": {"ca_subject": {"country": ["US"], "common_name": "x"}},
                "telemetry": {"Prometheus": {"port": 9988}},
                "empty": []
            })
        );
    }

    #[test]
    fn expressions_spire_cannot_read_are_refused() {
        let err = from_hcl("a = upper(\"x\")\n").unwrap_err();
        assert!(err.contains("unsupported expression"), "{err}");
        assert!(from_hcl("server {").is_err());
        // HCL 2 refuses what HCL 1 took: a quoted block type, a nested block on one line.
        assert!(from_hcl("\"NodeAttestor\" \"x\" {\n}\n").is_err());
        assert!(from_hcl("A \"x\" { plugin_data { a = 1 } }\n").is_err());
        assert!(from_json("{\"server\": ").is_err());
    }
}
