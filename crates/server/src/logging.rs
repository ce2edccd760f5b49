//! Tracing set-up for the server process: stderr, text or JSON, level from the config.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log_level`.
///
/// # Errors
/// When the level is not a valid filter or a subscriber is already installed.
pub fn init(cfg: &Config) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => EnvFilter::try_new(directive(&cfg.log_level))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let res = match cfg.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// Dependencies that are chatty below `info`; a bare `debug`/`trace` level keeps them at
/// `info` so the server's own messages stay readable. Full directives are used as given.
const QUIET: &str =
    "sled=info,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info,tonic=info";

fn directive(level: &str) -> String {
    match level {
        "debug" | "trace" => format!("{level},{QUIET}"),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_debug_keeps_dependencies_quiet() {
        assert!(directive("debug").starts_with("debug,sled=info"));
        assert_eq!(directive("info"), "info");
        assert_eq!(directive("ward_server=trace"), "ward_server=trace");
        assert!(EnvFilter::try_new(directive("trace")).is_ok());
    }
}
