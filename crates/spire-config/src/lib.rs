//! Reading SPIRE's own configuration files, so `ward-server run -config` and
//! `ward-agent run -config` take the files `spire-server` and `spire-agent` used: HCL as
//! SPIRE's docs write it, or the JSON SPIRE's Helm chart renders.
//!
//! What this crate owns:
//! - [`tree`]: HCL or JSON text into one tree of JSON values, shaped as SPIRE's HCL v1 decoder
//!   sees it;
//! - [`expand_env()`]: `-expandEnv`, `$NAME` and `${NAME}` replaced before parsing;
//! - [`translate`]: the walk of that tree with a binary's [`Schema`] (its mapping table), so
//!   every key SPIRE knows is copied under ward's name, accepted with a note, or refused with
//!   one sentence, and every key SPIRE does not know is refused (all at once, so one edit fixes
//!   the file).
//!
//! What it does not do: decide what a binary supports. The tables live with the binaries
//! (`ward_server::spire_config::rules`, `ward_agent::spire_config`); the result is a TOML table
//! shaped as the binary's own TOML file, which its own config reader then takes.
//!
//! Flow: [`Format::detect`] → [`translate`] (parse with [`tree`], walk with the [`Schema`]) →
//! a [`Translation`].

pub mod expand_env;
mod schema;
pub mod tree;
mod walk;

pub use expand_env::expand_env;
pub use schema::{Constraint, Conv, Hook, PluginRule, Rule, Schema};
pub use walk::{Walk, convert, is_unset, set};

use serde_json::Value;

/// The two ways SPIRE's configuration is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// HCL (`agent { ... }`, `plugins { ... }` blocks).
    Hcl,
    /// JSON (what SPIRE's Helm chart renders).
    Json,
}

impl Format {
    /// SPIRE's own rule (its HCL v1 parser's): JSON when the first character that is not
    /// white space is `{`, HCL otherwise.
    pub fn detect(text: &str) -> Self {
        if text.trim_start().starts_with('{') { Self::Json } else { Self::Hcl }
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

impl SpireConfigError {
    /// The error as `program` reports it for the file at `path`: SPIRE's decode message, or
    /// one line naming the file followed by one `  - ` line per refused setting or plugin.
    pub fn describe(&self, path: &std::path::Path, program: &str) -> String {
        let path = path.display().to_string();
        match self {
            Self::Decode(why) => format!("unable to decode configuration at {path:?}: {why}"),
            Self::Refused(sentences) => {
                let mut msg =
                    format!("{program} cannot run with the SPIRE configuration at {path:?}:");
                for s in sentences {
                    msg.push_str("\n  - ");
                    msg.push_str(s);
                }
                msg
            }
        }
    }
}

/// Translates SPIRE configuration `text`, written in `format`, with `schema`.
///
/// SPIRE's own checks for the two required sections come first (`<section> section must be
/// configured`, `plugins section must be configured`), then every key and plugin is walked,
/// then the plugin counts of [`Schema::constraints`] are checked.
///
/// # Errors
/// [`SpireConfigError::Decode`] for text that does not parse, [`SpireConfigError::Refused`]
/// listing every refused setting and plugin.
pub fn translate(
    schema: &Schema,
    text: &str,
    format: Format,
) -> Result<Translation, SpireConfigError> {
    let tree = match format {
        Format::Json => tree::from_json(text),
        Format::Hcl => tree::from_hcl(text),
    }
    .map_err(SpireConfigError::Decode)?;
    let Value::Object(top) = tree else {
        return Err(SpireConfigError::Decode("the top level is not an object".into()));
    };
    let mut walk = Walk::new(schema);
    if !top.get(schema.section).is_some_and(Value::is_object) {
        walk.refused.push(format!("{} section must be configured", schema.section));
    }
    if !top.contains_key("plugins") {
        walk.refused.push("plugins section must be configured".into());
    }
    walk.object(&top, "");
    walk.check_constraints();
    if walk.refused.is_empty() {
        Ok(Translation { table: walk.table, notes: walk.notes })
    } else {
        Err(SpireConfigError::Refused(walk.refused))
    }
}

#[cfg(test)]
mod tests;
