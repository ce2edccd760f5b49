//! SPIRE's `server.federation` block: the bundle endpoint and the relationships configured
//! in the file (`federates_with`), translated into ward's `[federation]` table.
//!
//! Labels (`profile "https_spiffe"`, `federates_with "<trust domain>"`) arrive as one-key
//! objects from [`super::tree`]. Refusals use SPIRE's own sentences where SPIRE refuses the
//! same input.

use serde_json::{Map, Value};

use ward_spire_config::{Conv, Walk, convert, is_unset};

const ENDPOINT: &str = "server.federation.bundle_endpoint";

/// Walks `server.federation` (a [`ward_spire_config::Rule::Hook`]).
pub(super) fn walk(w: &mut Walk<'_>, _path: &str, value: &Value) {
    federation(w, value);
}

fn federation(w: &mut Walk<'_>, value: &Value) {
    let Value::Object(obj) = value else {
        if !is_unset(value) {
            w.refused.push("server.federation must be a block".into());
        }
        return;
    };
    let mut fed = toml::Table::new();
    for (key, v) in obj {
        match key.as_str() {
            "bundle_endpoint" => {
                if let Some(t) = bundle_endpoint(w, v) {
                    fed.insert(key.clone(), t.into());
                }
            }
            "federates_with" => {
                let t = federates_with(w, v);
                if !t.is_empty() {
                    fed.insert(key.clone(), t.into());
                }
            }
            other => w.refused.push(unknown(&format!("server.federation.{other}"))),
        }
    }
    if !fed.is_empty() {
        w.table.insert("federation".into(), fed.into());
    }
}

/// The endpoint's table; `None` when the block is absent or not a block.
fn bundle_endpoint(w: &mut Walk<'_>, value: &Value) -> Option<toml::Table> {
    let Value::Object(obj) = value else {
        if !is_unset(value) {
            w.refused.push(format!("{ENDPOINT} must be a block"));
        }
        return None;
    };
    let mut out = toml::Table::new();
    for (key, v) in obj {
        let conv = match key.as_str() {
            "address" => Conv::Ip,
            "port" => Conv::Int,
            "refresh_hint" => Conv::Duration,
            "profile" => {
                endpoint_profile(w, v);
                continue;
            }
            "acme" => {
                if !is_unset(v) {
                    w.refused.push(https_web_refusal("acme"));
                }
                continue;
            }
            other => {
                w.refused.push(unknown(&format!("{ENDPOINT}.{other}")));
                continue;
            }
        };
        if v.is_null() || is_unset(v) {
            continue;
        }
        match w.convert(v, conv) {
            Ok(t) => {
                out.insert(key.clone(), t);
            }
            Err(why) => w.refused.push(format!("{ENDPOINT}.{key} {why}")),
        }
    }
    Some(out)
}

fn endpoint_profile(w: &mut Walk<'_>, value: &Value) {
    let Value::Object(profiles) = value else {
        w.refused.push(format!("{ENDPOINT}.profile must be a labelled block"));
        return;
    };
    if profiles.len() != 1 {
        w.refused
            .push(format!("{ENDPOINT}.profile: exactly one bundle endpoint profile is expected"));
        return;
    }
    for (name, body) in profiles {
        match name.as_str() {
            // ward serves with its SVID, which is what this profile is.
            "https_spiffe" if is_unset(body) => {}
            "https_spiffe" => {
                w.refused.push(format!("{ENDPOINT}.profile \"https_spiffe\" takes no settings"))
            }
            "https_web" => w.refused.push(https_web_refusal("profile \"https_web\"")),
            other => w.refused.push(format!(
                "{ENDPOINT}.profile {other:?} is unknown; the profiles are \"https_spiffe\" \
                     and \"https_web\""
            )),
        }
    }
}

/// The relationships by trust domain.
fn federates_with(w: &mut Walk<'_>, value: &Value) -> toml::Table {
    let mut all = toml::Table::new();
    let Value::Object(domains) = value else {
        if !is_unset(value) {
            w.refused.push("server.federation.federates_with must hold labelled blocks".into());
        }
        return all;
    };
    for (td, body) in domains {
        match relationship(td, body) {
            Ok(t) => {
                all.insert(td.clone(), t.into());
            }
            Err(why) => w.refused.push(why),
        }
    }
    all
}

/// One `federates_with "<td>" { ... }` block as ward's table, or SPIRE's refusal.
fn relationship(td: &str, body: &Value) -> Result<toml::Table, String> {
    let empty = Map::new();
    let obj = body.as_object().unwrap_or(&empty);
    let mut out = toml::Table::new();
    for key in obj.keys() {
        if key != "bundle_endpoint_url" && key != "bundle_endpoint_profile" {
            return Err(unknown(&format!("server.federation.federates_with.{td}.{key}")));
        }
    }
    let url = obj.get("bundle_endpoint_url").map(|v| convert(v, Conv::Str)).transpose();
    let url = url.map_err(|why| {
        format!("server.federation.federates_with.{td}.bundle_endpoint_url {why}")
    })?;
    out.insert("bundle_endpoint_url".into(), url.unwrap_or_else(|| String::new().into()));
    let profiles = match obj.get("bundle_endpoint_profile") {
        Some(Value::Object(p)) => p,
        Some(v) if !is_unset(v) => {
            return Err(format!(
                "error parsing federation relationship for trust domain {td:?}: malformed configuration"
            ));
        }
        _ => {
            return Err(format!(
                "federation configuration for trust domain {td:?}: missing bundle endpoint configuration"
            ));
        }
    };
    let mut iter = profiles.iter();
    let (Some((name, settings)), None) = (iter.next(), iter.next()) else {
        return Err(format!(
            "error parsing federation relationship for trust domain {td:?}: exactly one bundle \
             endpoint profile is expected"
        ));
    };
    out.insert("bundle_endpoint_profile".into(), name.clone().into());
    match name.as_str() {
        "https_web" => {}
        "https_spiffe" => {
            let id = settings.get("endpoint_spiffe_id").map(|v| convert(v, Conv::Str)).transpose();
            let id = id.map_err(|why| format!("{td}: endpoint_spiffe_id {why}"))?;
            out.insert("endpoint_spiffe_id".into(), id.unwrap_or_else(|| String::new().into()));
        }
        _ => {
            return Err(format!(
                "error parsing federation relationship for trust domain {td:?}: no bundle \
                 endpoint profile defined; current supported profiles are \"https_spiffe\" and \
                 'https_web\""
            ));
        }
    }
    Ok(out)
}

pub(super) fn unknown(path: &str) -> String {
    format!("{path} is not a setting of SPIRE's server (SPIRE refuses it as unknown configuration)")
}

fn https_web_refusal(what: &str) -> String {
    format!(
        "{ENDPOINT}.{what} is not supported: ward's bundle endpoint serves with the server's \
         X509-SVID (profile \"https_spiffe\")"
    )
}
