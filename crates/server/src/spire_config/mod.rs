//! Reading SPIRE's own server configuration, so an operator can start ward with the file
//! `spire-server run -config` used: HCL as SPIRE's docs write it, or the JSON that SPIRE's Helm
//! chart renders.
//!
//! The file becomes the same table ward's TOML would be, through the mapping table in
//! [`rules`]: supported settings are copied under ward's names, settings and plugins ward does
//! without are accepted with a note, and everything else is refused with one sentence each
//! (all of them at once, so one edit fixes the file).
//!
//! Flow: [`ConfigFormat::detect`] → [`translate`] (parse with [`tree`], walk with the table)
//! → a [`Translation`] whose `table` ward's own config reader takes. `-expandEnv` runs before
//! all of it ([`expand_env()`]).

pub mod expand_env;
mod federation;
pub mod rules;
pub mod tree;

pub use expand_env::expand_env;

use serde_json::Value;

use rules::{Conv, PLUGIN_TYPES, PLUGINS, PluginRule, Rule, SETTINGS};

/// The three configuration formats `ward-server run -config` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    /// ward's own TOML (`docs/config.md`).
    WardToml,
    /// SPIRE's HCL (`server { ... }` and `plugins { ... }` blocks).
    SpireHcl,
    /// SPIRE's configuration as JSON (what the Helm chart renders into `server.conf`).
    SpireJson,
}

impl ConfigFormat {
    /// Tells the format from the text, not the file name (SPIRE's Helm chart writes JSON to
    /// `server.conf`):
    /// - JSON when the first character that is not white space is `{`, which TOML never
    ///   starts with (SPIRE's HCL decoder uses the same test);
    /// - SPIRE's HCL when a line starts a `server` or `plugins` block (`server {`,
    ///   `plugins = {`): SPIRE requires both, and neither is a key of ward's TOML;
    /// - otherwise ward's TOML.
    pub fn detect(text: &str) -> Self {
        if text.trim_start().starts_with('{') {
            return Self::SpireJson;
        }
        let opens_section = |line: &str| {
            let line = line.trim_start();
            ["server", "plugins"].iter().any(|section| {
                line.strip_prefix(section).is_some_and(|rest| {
                    let rest = rest.trim_start();
                    let rest = rest.strip_prefix('=').map_or(rest, str::trim_start);
                    rest.starts_with('{')
                })
            })
        };
        if text.lines().any(opens_section) { Self::SpireHcl } else { Self::WardToml }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::WardToml => "ward TOML",
            Self::SpireHcl => "SPIRE HCL",
            Self::SpireJson => "SPIRE JSON",
        }
    }
}

/// A SPIRE configuration translated for ward.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// ward's settings, shaped as ward's TOML file.
    pub table: toml::Table,
    /// Settings and plugins accepted but ignored, one sentence each, for the start-up log.
    pub notes: Vec<String>,
}

/// Why a SPIRE configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpireConfigError {
    /// The text is not valid HCL or JSON.
    #[error("unable to decode configuration: {0}")]
    Decode(String),
    /// Settings or plugins ward refuses, one sentence each.
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
}

/// Translates SPIRE configuration text (`format` is [`ConfigFormat::SpireHcl`] or
/// [`ConfigFormat::SpireJson`]) into ward's settings.
///
/// # Errors
/// [`SpireConfigError::Decode`] for text that does not parse, [`SpireConfigError::Refused`]
/// listing every refused setting and plugin.
pub fn translate(text: &str, format: ConfigFormat) -> Result<Translation, SpireConfigError> {
    let tree = match format {
        ConfigFormat::SpireJson => tree::from_json(text),
        ConfigFormat::SpireHcl | ConfigFormat::WardToml => tree::from_hcl(text),
    }
    .map_err(SpireConfigError::Decode)?;
    let Value::Object(top) = tree else {
        return Err(SpireConfigError::Decode("the top level is not an object".into()));
    };
    let mut walk = Walk::default();
    // SPIRE's own checks for the two required sections, in its words.
    if !top.get("server").is_some_and(Value::is_object) {
        walk.refused.push("server section must be configured".into());
    }
    if !top.contains_key("plugins") {
        walk.refused.push("plugins section must be configured".into());
    }
    walk.object(&top, "");
    if walk.refused.is_empty() {
        Ok(Translation { table: walk.table, notes: walk.notes })
    } else {
        Err(SpireConfigError::Refused(walk.refused))
    }
}

#[derive(Debug, Default)]
struct Walk {
    table: toml::Table,
    notes: Vec<String>,
    refused: Vec<String>,
}

fn rule(path: &str) -> Option<Rule> {
    SETTINGS.iter().find(|(p, _)| p.eq_ignore_ascii_case(path)).map(|(_, r)| *r)
}

impl Walk {
    fn object(&mut self, obj: &serde_json::Map<String, Value>, prefix: &str) {
        for (key, value) in obj {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match rule(&path) {
                Some(Rule::Block) => match value {
                    Value::Object(inner) => self.object(inner, &path),
                    v if is_unset(v) => {}
                    _ => self.refused.push(format!("{path} must be a block")),
                },
                Some(Rule::Section(to)) => match value {
                    Value::Object(inner) => {
                        set(&mut self.table, to, toml::Value::Table(toml::Table::new()));
                        self.object(inner, &path);
                    }
                    v if is_unset(v) => {}
                    _ => self.refused.push(format!("{path} must be a block")),
                },
                Some(Rule::Plugins) => self.plugins(value),
                Some(Rule::Federation) => self.federation(value),
                // As in SPIRE, a zero value leaves the default (but `false` is a choice).
                Some(Rule::Map { conv, .. })
                    if value.is_null() || (conv != Conv::Bool && is_unset(value)) => {}
                Some(Rule::Map { to, conv }) => match convert(value, conv) {
                    Ok(v) => set(&mut self.table, to, v),
                    Err(why) => self.refused.push(format!("{path} {why}")),
                },
                Some(Rule::Ignore(note)) => {
                    if !is_unset(value) {
                        self.notes.push(note.to_owned());
                    }
                }
                Some(Rule::Refuse(sentence)) => {
                    if !is_unset(value) {
                        self.refused.push(sentence.to_owned());
                    }
                }
                None => self.refused.push(format!(
                    "{path} is not a setting of SPIRE's server (SPIRE refuses it as unknown \
                     configuration)"
                )),
            }
        }
    }

    fn plugins(&mut self, value: &Value) {
        let Value::Object(types) = value else {
            if !is_unset(value) {
                self.refused.push("plugins must be a block".into());
            }
            return;
        };
        for (kind, named) in types {
            let Value::Object(named) = named else {
                self.refused.push(format!("plugins.{kind} must hold named plugin blocks"));
                continue;
            };
            for (name, plugin) in named {
                self.plugin(kind, name, plugin);
            }
        }
    }

    fn plugin(&mut self, kind: &str, name: &str, plugin: &Value) {
        // SPIRE skips a plugin whose `enabled` is false.
        if plugin.get("enabled").and_then(|v| convert(v, Conv::Bool).ok())
            == Some(toml::Value::Boolean(false))
        {
            return;
        }
        let known = PLUGINS.iter().find(|(k, n, _)| *k == kind && *n == name).map(|(.., r)| *r);
        let rule = match known {
            Some(rule) => rule,
            None => {
                self.refused.push(match PLUGIN_TYPES.iter().find(|(k, _)| *k == kind) {
                    Some((_, why)) => format!("plugin {kind} \"{name}\" is not supported: {why}"),
                    None => format!("plugin type {kind} is unknown (SPIRE refuses it too)"),
                });
                return;
            }
        };
        if plugin.get("plugin_cmd").is_some_and(|v| !is_unset(v)) {
            self.refused.push(format!(
                "plugin {kind} \"{name}\" is not supported as an external plugin (plugin_cmd): \
                 ward runs no plugin processes"
            ));
            return;
        }
        match rule {
            PluginRule::Accept => {}
            PluginRule::Ignore(note) => self.notes.push(note.to_owned()),
            PluginRule::Refuse(sentence) => self.refused.push(sentence.to_owned()),
        }
    }
}

/// False, zero, empty or absent: a setting left at "off" needs no support.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(obj) => obj.values().all(is_unset),
    }
}

fn convert(v: &Value, conv: Conv) -> Result<toml::Value, String> {
    let text = || match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("must be a string, not {v}")),
    };
    Ok(match conv {
        Conv::Str => toml::Value::String(text()?),
        Conv::Lower => toml::Value::String(text()?.to_lowercase()),
        Conv::Int => {
            let n = match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            toml::Value::Integer(n.ok_or_else(|| format!("must be an integer, not {v}"))?)
        }
        Conv::Bool => {
            let b = match v {
                Value::Bool(b) => Some(*b),
                Value::String(s) => match s.as_str() {
                    "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
                    "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
                    _ => None,
                },
                _ => None,
            };
            toml::Value::Boolean(b.ok_or_else(|| format!("must be true or false, not {v}"))?)
        }
        Conv::Duration => {
            let s = text()?;
            crate::config::parse_duration(&s).map_err(|e| format!("is not a duration: {e}"))?;
            toml::Value::String(s)
        }
        Conv::Ip => {
            let s = text()?;
            let ip = s.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>().map_err(|_| {
                format!(
                    "must be an IP address for ward (it does not resolve host names), not {s:?}"
                )
            })?;
            toml::Value::String(ip.to_owned())
        }
    })
}

/// Sets the dotted path `to` in `table`, creating the tables on the way.
fn set(table: &mut toml::Table, to: &str, value: toml::Value) {
    match to.split_once('.') {
        None => {
            table.insert(to.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests;
