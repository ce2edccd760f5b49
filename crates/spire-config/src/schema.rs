//! The shape of a binary's mapping table: what ward does with each SPIRE setting and plugin.

use serde_json::Value;

use crate::Walk;

/// How a SPIRE value becomes ward's (SPIRE's HCL v1 decoder is weakly typed, and so is this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv {
    /// A string; a number is taken as its text.
    Str,
    /// A string that SPIRE compares without case, lower-cased.
    Lower,
    /// An integer; a string of digits is taken too.
    Int,
    /// A boolean; `"true"`, `"false"`, `"1"`, `"0"`, `"t"`, `"f"` are taken too.
    Bool,
    /// A Go duration (`"1h30m"`), checked with [`Schema::duration`] so that every bad one is
    /// listed.
    Duration,
    /// An IP address (SPIRE also resolves host names; ward listens on an address).
    Ip,
}

/// Code that walks one setting itself: it gets the walk, the setting's dotted path and its
/// value, and adds to [`Walk::table`], [`Walk::notes`] or [`Walk::refused`].
pub type Hook = fn(&mut Walk<'_>, &str, &Value);

/// What ward does with one SPIRE setting (and everything below it).
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// A block whose keys have rules of their own.
    Block,
    /// A block whose keys have rules of their own and whose presence, even empty, turns on
    /// ward's table `.0` (SPIRE's `telemetry { Prometheus {} }` enables Prometheus).
    Section(&'static str),
    /// The `plugins` section (see [`Schema::plugins`]).
    Plugins,
    /// A setting with a shape of its own, walked by the function.
    Hook(Hook),
    /// Copied to ward's setting `to` (a dotted path in ward's TOML), converted with `conv`.
    Map {
        /// Ward's key.
        to: &'static str,
        /// The conversion.
        conv: Conv,
    },
    /// Accepted and ignored; the note is logged at start-up when the value is set.
    Ignore(&'static str),
    /// Refused with this sentence when set to anything but false, empty or zero.
    Refuse(&'static str),
}

/// What ward does with one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginRule {
    /// Ward has it built in.
    Accept,
    /// Accepted and ignored, with this note at start-up.
    Ignore(&'static str),
    /// Refused with this sentence.
    Refuse(&'static str),
    /// Ward has it built in and configures it from ward's table `.0`: the table is created
    /// (empty when the plugin has no data), and the keys of `plugin_data` are walked as the
    /// settings `plugins.<type>.<name>.plugin_data.<key>` of [`Schema::settings`]. Its
    /// `plugin_data_file` is refused (ward reads the data written in the file only).
    Table(&'static str),
}

/// How many enabled plugins of one type SPIRE requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// Exactly one.
    ExactlyOne,
    /// One or more.
    AtLeastOne,
}

/// A binary's mapping table.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The section SPIRE requires beside `plugins` (`server`, `agent`).
    pub section: &'static str,
    /// Every setting SPIRE reads, by dotted path, beside [`COMMON_SETTINGS`]. A path listed in
    /// neither is not a SPIRE setting and is refused with [`Schema::unknown`]. Keys match without regard to case, as
    /// SPIRE's HCL decoder matches them (`Prometheus` and `prometheus` are one key).
    pub settings: &'static [(&'static str, Rule)],
    /// Plugins ward accepts, or refuses with a reason of their own, by type and name.
    pub plugins: &'static [(&'static str, &'static str, PluginRule)],
    /// Why a plugin of a known type that [`Schema::plugins`] does not name is refused.
    pub plugin_types: &'static [(&'static str, &'static str)],
    /// How many enabled plugins of a type SPIRE requires, checked after the walk with SPIRE's
    /// sentence.
    pub constraints: &'static [(&'static str, Constraint)],
    /// The sentence refusing a path that is not a setting.
    pub unknown: fn(&str) -> String,
    /// Checks a duration ([`Conv::Duration`]); the error completes "`<path>` is not a
    /// duration: ...".
    pub duration: fn(&str) -> Result<(), String>,
}

impl Schema {
    /// The rule of the setting at dotted `path`: the binary's own, else the common one.
    pub fn rule(&self, path: &str) -> Option<Rule> {
        self.settings
            .iter()
            .chain(COMMON_SETTINGS)
            .find(|(p, _)| p.eq_ignore_ascii_case(path))
            .map(|(_, r)| *r)
    }
}

/// Settings spire-server and spire-agent read alike, mapped to the same keys of ward-server's
/// and ward-agent's TOML: the `health_checks` block (SPIRE's `pkg/common/health/config.go`).
pub const COMMON_SETTINGS: &[(&str, Rule)] = &[
    ("health_checks", Rule::Block),
    (
        "health_checks.listener_enabled",
        Rule::Map { to: "health_checks.listener_enabled", conv: Conv::Bool },
    ),
    ("health_checks.bind_address", Rule::Map { to: "health_checks.bind_address", conv: Conv::Str }),
    ("health_checks.bind_port", Rule::Map { to: "health_checks.bind_port", conv: Conv::Int }),
    ("health_checks.live_path", Rule::Map { to: "health_checks.live_path", conv: Conv::Str }),
    ("health_checks.ready_path", Rule::Map { to: "health_checks.ready_path", conv: Conv::Str }),
];
