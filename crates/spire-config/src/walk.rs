//! The walk of a SPIRE configuration tree with a [`Schema`].

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::schema::{Constraint, Conv, PluginRule, Rule, Schema};

/// A walk in progress: what has been translated, noted and refused so far. [`Rule::Hook`]
/// functions add to it.
#[derive(Debug)]
pub struct Walk<'s> {
    schema: &'s Schema,
    /// ward's settings, shaped as ward's TOML file.
    pub table: toml::Table,
    /// Settings and plugins accepted but ignored, one sentence each.
    pub notes: Vec<String>,
    /// Settings and plugins refused, one sentence each.
    pub refused: Vec<String>,
    /// Enabled plugins seen, by type; `None` until the `plugins` section is walked.
    plugin_counts: Option<BTreeMap<String, usize>>,
}

impl<'s> Walk<'s> {
    /// An empty walk with `schema`.
    pub fn new(schema: &'s Schema) -> Self {
        Self {
            schema,
            table: toml::Table::new(),
            notes: Vec::new(),
            refused: Vec::new(),
            plugin_counts: None,
        }
    }

    /// The schema walked with.
    pub fn schema(&self) -> &'s Schema {
        self.schema
    }

    /// Walks the keys of `obj`, whose dotted path is `prefix` (empty at the top).
    pub fn object(&mut self, obj: &Map<String, Value>, prefix: &str) {
        for (key, value) in obj {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            self.setting(&path, value);
        }
    }

    fn setting(&mut self, path: &str, value: &Value) {
        match self.schema.rule(path) {
            Some(Rule::Block) => match value {
                Value::Object(inner) => self.object(inner, path),
                v if is_unset(v) => {}
                _ => self.refused.push(format!("{path} must be a block")),
            },
            Some(Rule::Section(to)) => match value {
                Value::Object(inner) => {
                    set(&mut self.table, to, toml::Value::Table(toml::Table::new()));
                    self.object(inner, path);
                }
                v if is_unset(v) => {}
                _ => self.refused.push(format!("{path} must be a block")),
            },
            Some(Rule::Plugins) => self.plugins(value),
            Some(Rule::Hook(hook)) => hook(self, path, value),
            // As in SPIRE, a zero value leaves the default (but `false` is a choice).
            Some(Rule::Map { conv, .. })
                if value.is_null() || (conv != Conv::Bool && is_unset(value)) => {}
            Some(Rule::Map { to, conv }) => match self.convert(value, conv) {
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
            None => self.refused.push((self.schema.unknown)(path)),
        }
    }

    /// [`convert`], with durations checked by the schema.
    ///
    /// # Errors
    /// A sentence completing "`<path>` ...".
    pub fn convert(&self, v: &Value, conv: Conv) -> Result<toml::Value, String> {
        let out = convert(v, conv)?;
        if conv == Conv::Duration
            && let toml::Value::String(s) = &out
        {
            (self.schema.duration)(s).map_err(|e| format!("is not a duration: {e}"))?;
        }
        Ok(out)
    }

    fn plugins(&mut self, value: &Value) {
        self.plugin_counts.get_or_insert_with(BTreeMap::new);
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
                // SPIRE skips a plugin whose `enabled` is false.
                if plugin.get("enabled").and_then(|v| convert(v, Conv::Bool).ok())
                    == Some(toml::Value::Boolean(false))
                {
                    continue;
                }
                if let Some(counts) = &mut self.plugin_counts {
                    *counts.entry(kind.clone()).or_default() += 1;
                }
                self.plugin(kind, name, plugin);
            }
        }
    }

    fn plugin(&mut self, kind: &str, name: &str, plugin: &Value) {
        let known =
            self.schema.plugins.iter().find(|(k, n, _)| *k == kind && *n == name).map(|(.., r)| *r);
        let rule = match known {
            Some(rule) => rule,
            None => {
                self.refused.push(
                    match self.schema.plugin_types.iter().find(|(k, _)| *k == kind) {
                        Some((_, why)) => {
                            format!("plugin {kind} \"{name}\" is not supported: {why}")
                        }
                        None => format!("plugin type {kind} is unknown (SPIRE refuses it too)"),
                    },
                );
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
            PluginRule::Table(to) => self.plugin_table(kind, name, plugin, to),
        }
    }

    fn plugin_table(&mut self, kind: &str, name: &str, plugin: &Value, to: &str) {
        set(&mut self.table, to, toml::Value::Table(toml::Table::new()));
        if plugin.get("plugin_data_file").is_some_and(|v| !is_unset(v)) {
            self.refused.push(format!(
                "plugin {kind} \"{name}\" is not supported with plugin_data_file: write its \
                 settings in plugin_data"
            ));
        }
        match plugin.get("plugin_data") {
            Some(Value::Object(data)) => {
                self.object(data, &format!("plugins.{kind}.{name}.plugin_data"));
            }
            Some(v) if !is_unset(v) => {
                self.refused.push(format!("plugin {kind} \"{name}\": plugin_data must be a block"));
            }
            _ => {}
        }
    }

    /// Checks the plugin counts of [`Schema::constraints`], in SPIRE's words.
    pub(crate) fn check_constraints(&mut self) {
        let Some(counts) = &self.plugin_counts else { return };
        for (kind, constraint) in self.schema.constraints {
            let n = counts.get(*kind).copied().unwrap_or(0);
            let expected = match constraint {
                Constraint::ExactlyOne if n != 1 => "exactly",
                Constraint::AtLeastOne if n < 1 => "at least",
                _ => continue,
            };
            self.refused.push(format!(
                "plugin type {kind:?} constraint not satisfied: expected {expected} 1 but got {n}"
            ));
        }
    }
}

/// False, zero, empty or absent: a setting left at "off" needs no support.
pub fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(obj) => obj.values().all(is_unset),
    }
}

/// Converts a SPIRE value with `conv`; durations are kept as text unchecked (see
/// [`Walk::convert`]).
///
/// # Errors
/// A sentence completing "`<path>` ...", such as `must be an integer, not "x"`.
pub fn convert(v: &Value, conv: Conv) -> Result<toml::Value, String> {
    let text = || match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("must be a string, not {v}")),
    };
    Ok(match conv {
        Conv::Str | Conv::Duration => toml::Value::String(text()?),
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
pub fn set(table: &mut toml::Table, to: &str, value: toml::Value) {
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
