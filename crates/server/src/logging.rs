//! Tracing set-up for the server process (stderr, text or JSON: flat objects with `time`,
//! `level` and `msg` as SPIRE writes them; level from the config) and the live level control
//! behind the Logger API.
//!
//! The filter sits behind a `tracing-subscriber` reload handle, so `logger set` and
//! `logger reset` change what the running process logs. The level names are SPIRE's (logrus):
//! `panic`, `fatal`, `error`, `warn`, `info`, `debug`, `trace`. ward emits nothing above
//! `error`, so `panic` and `fatal` silence the log.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

mod json;

use crate::config::{Config, LogFormat};

/// A log level as SPIRE's Logger API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `panic`: nothing ward logs.
    Panic,
    /// `fatal`: nothing ward logs.
    Fatal,
    /// `error`.
    Error,
    /// `warn`.
    Warn,
    /// `info`.
    Info,
    /// `debug`.
    Debug,
    /// `trace`.
    Trace,
}

impl LogLevel {
    /// Parses a level name as logrus does (case-insensitive; `warning` is `warn`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "panic" => Self::Panic,
            "fatal" => Self::Fatal,
            "error" => Self::Error,
            "warn" | "warning" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    /// The level's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Panic => "panic",
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    /// The level closest to what a tracing filter lets through (`off` is `panic`).
    pub fn from_filter(f: LevelFilter) -> Self {
        match f {
            LevelFilter::OFF => Self::Panic,
            LevelFilter::ERROR => Self::Error,
            LevelFilter::WARN => Self::Warn,
            LevelFilter::INFO => Self::Info,
            LevelFilter::DEBUG => Self::Debug,
            _ => Self::Trace,
        }
    }

    /// The filter directive for this level: dependencies chatty below `info` stay at `info`
    /// for `debug` and `trace`.
    pub fn directive(self) -> String {
        match self {
            Self::Panic | Self::Fatal => "off".to_owned(),
            Self::Debug | Self::Trace => format!("{},{QUIET}", self.name()),
            other => other.name().to_owned(),
        }
    }
}

/// Why a level could not be changed.
#[derive(Debug, thiserror::Error)]
#[error("changing the log filter: {0}")]
pub struct LogControlError(String);

/// The live log level: what the process logs now, what it started with, and the handle that
/// changes it.
#[derive(Debug)]
pub struct LogControl {
    launch_level: LogLevel,
    launch_filter: String,
    current: Mutex<LogLevel>,
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogControl {
    /// A control for a process whose subscriber was installed elsewhere (or not at all):
    /// levels are tracked and reported, the filter is not touched. `launch` is the configured
    /// level; a directive that is not a bare level name reports as its most verbose level.
    pub fn detached(launch: &str) -> Self {
        let level = launch_level(launch, &EnvFilter::try_new(directive(launch)).ok());
        Self {
            launch_level: level,
            launch_filter: directive(launch),
            current: Mutex::new(level),
            handle: None,
        }
    }

    /// The level now.
    pub fn current(&self) -> LogLevel {
        *self.lock()
    }

    /// The level the process started with.
    pub fn launch(&self) -> LogLevel {
        self.launch_level
    }

    /// Switches the live filter to `level`.
    ///
    /// # Errors
    /// [`LogControlError`] when the subscriber is gone.
    pub fn set(&self, level: LogLevel) -> Result<(), LogControlError> {
        let mut current = self.lock();
        self.reload(&level.directive())?;
        *current = level;
        Ok(())
    }

    /// Restores the filter the process started with.
    ///
    /// # Errors
    /// [`LogControlError`] when the subscriber is gone.
    pub fn reset(&self) -> Result<(), LogControlError> {
        let mut current = self.lock();
        self.reload(&self.launch_filter)?;
        *current = self.launch_level;
        Ok(())
    }

    fn reload(&self, filter: &str) -> Result<(), LogControlError> {
        let Some(handle) = &self.handle else { return Ok(()) };
        let filter = EnvFilter::try_new(filter).map_err(|e| LogControlError(e.to_string()))?;
        handle.reload(filter).map_err(|e| LogControlError(e.to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogLevel> {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

static INSTALLED: OnceLock<Arc<LogControl>> = OnceLock::new();

/// The control of the subscriber [`init`] installed, if it ran in this process.
pub fn installed() -> Option<Arc<LogControl>> {
    INSTALLED.get().cloned()
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log_level`.
///
/// # Errors
/// When the level is not a valid filter or a subscriber is already installed.
pub fn init(cfg: &Config) -> anyhow::Result<Arc<LogControl>> {
    let (configured, launch_filter) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => (v.clone(), v),
        _ => (cfg.log_level.clone(), directive(&cfg.log_level)),
    };
    let filter = EnvFilter::try_new(&launch_filter)?;
    let level = launch_level(&configured, &Some(filter.clone()));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal();
    let res = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer(cfg.log_format, ansi, std::io::stderr))
        .try_init();
    res.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    let control = Arc::new(LogControl {
        launch_level: level,
        launch_filter,
        current: Mutex::new(level),
        handle: Some(handle),
    });
    let _ = INSTALLED.set(control.clone());
    Ok(control)
}

/// The server's subscriber in `format`, filtered by `filter`, writing to `writer` (for
/// tests and tools that capture the log; [`init`] installs the same formatting).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    Box::new(tracing_subscriber::registry().with(filter).with(fmt_layer(format, ansi, writer)))
}

/// The formatting layer: text (colours when `ansi`) or SPIRE's flat JSON objects.
fn fmt_layer<S, W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => Box::new(layer.with_ansi(ansi)),
        LogFormat::Json => Box::new(
            layer.with_ansi(false).fmt_fields(JsonFields::new()).event_format(json::SpireJson),
        ),
    }
}

/// Dependencies that are chatty below `info`; a bare `debug`/`trace` level keeps them at
/// `info` so the server's own messages stay readable. Full directives are used as given.
const QUIET: &str =
    "sled=info,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info,tonic=info";

/// The filter directive for a configured level: a level name (SPIRE's included) becomes that
/// level's directive, anything else is a tracing directive used as given.
fn directive(level: &str) -> String {
    LogLevel::parse(level).map_or_else(|| level.to_owned(), LogLevel::directive)
}

/// The API level of a launch filter: the named level, or the filter's most verbose level.
fn launch_level(configured: &str, filter: &Option<EnvFilter>) -> LogLevel {
    LogLevel::parse(configured).unwrap_or_else(|| {
        filter
            .as_ref()
            .and_then(EnvFilter::max_level_hint)
            .map_or(LogLevel::Trace, LogLevel::from_filter)
    })
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

    #[test]
    fn spire_level_names_are_levels_not_targets() {
        assert_eq!(directive("fatal"), "off");
        assert_eq!(directive("PANIC"), "off");
        assert_eq!(directive("warning"), "warn");
        assert_eq!(LogLevel::parse("WARNING"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("verbose"), None);
    }

    #[test]
    fn launch_level_of_a_directive_is_its_most_verbose_level() {
        let f = |s: &str| Some(EnvFilter::try_new(s).unwrap());
        assert_eq!(launch_level("info", &f("info")), LogLevel::Info);
        assert_eq!(
            launch_level("ward_server=debug,warn", &f("ward_server=debug,warn")),
            LogLevel::Debug
        );
        assert_eq!(launch_level("fatal", &f("off")), LogLevel::Fatal);
    }

    #[test]
    fn detached_control_tracks_set_and_reset() {
        let c = LogControl::detached("info");
        assert_eq!((c.current(), c.launch()), (LogLevel::Info, LogLevel::Info));
        c.set(LogLevel::Trace).unwrap();
        assert_eq!((c.current(), c.launch()), (LogLevel::Trace, LogLevel::Info));
        c.reset().unwrap();
        assert_eq!(c.current(), LogLevel::Info);
    }
}
