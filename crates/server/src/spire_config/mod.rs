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

mod federation;
pub mod rules;

pub use ward_spire_config::{
    Conv, PluginRule, Rule, SpireConfigError, Translation, expand_env, set, tree,
};

use ward_spire_config::{Format, Schema};

use rules::{PLUGIN_TYPES, PLUGINS, SETTINGS};

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

/// SPIRE's server configuration as ward reads it: the table of [`rules`].
pub const SCHEMA: Schema = Schema {
    section: "server",
    settings: SETTINGS,
    plugins: PLUGINS,
    plugin_types: PLUGIN_TYPES,
    constraints: &[],
    unknown: federation::unknown,
    duration: |s| crate::config::parse_duration(s).map(|_| ()),
};

/// Translates SPIRE configuration text (`format` is [`ConfigFormat::SpireHcl`] or
/// [`ConfigFormat::SpireJson`]) into ward's settings.
///
/// # Errors
/// [`SpireConfigError::Decode`] for text that does not parse, [`SpireConfigError::Refused`]
/// listing every refused setting and plugin.
pub fn translate(text: &str, format: ConfigFormat) -> Result<Translation, SpireConfigError> {
    let format = match format {
        ConfigFormat::SpireJson => Format::Json,
        ConfigFormat::SpireHcl | ConfigFormat::WardToml => Format::Hcl,
    };
    ward_spire_config::translate(&SCHEMA, text, format)
}

#[cfg(test)]
mod tests;
