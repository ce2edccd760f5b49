//! `logger get|set|reset`.

use clap::Subcommand;
use ward_proto::spire::api::server::logger::v1 as loggerpb;
use ward_proto::spire::api::types::{LogLevel, Logger};

use super::{Admin, CliResult, Common, Ctx, Output, go_quote};
use crate::cli_err;

/// The logger commands.
#[derive(Subcommand, Debug)]
pub enum LoggerCmd {
    /// Gets the logger details.
    Get(NoFlags),
    /// Sets the log level.
    Set(SetArgs),
    /// Resets the log level to the launch level.
    Reset(NoFlags),
}

/// Commands with only the common flags.
#[derive(clap::Args, Debug)]
pub struct NoFlags {
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Flags of `logger set`.
#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// The new log level: panic, fatal, error, warn, info, debug or trace.
    #[arg(long = "level", default_value = "")]
    pub level: String,
    #[command(flatten)]
    /// Socket and output format.
    pub common: Common,
}

/// Runs a logger command.
pub async fn run(cmd: LoggerCmd) -> Output {
    let common = match &cmd {
        LoggerCmd::Get(a) | LoggerCmd::Reset(a) => a.common.clone(),
        LoggerCmd::Set(a) => a.common.clone(),
    };
    super::with_admin(&common, |mut ctx, admin| async move {
        let r = logger(&mut ctx, &admin, &cmd).await;
        (ctx, r)
    })
    .await
}

/// The level a `-level` value names (logrus's names, any case).
fn parse_level(s: &str) -> Option<LogLevel> {
    Some(match s.to_lowercase().as_str() {
        "panic" => LogLevel::Panic,
        "fatal" => LogLevel::Fatal,
        "error" => LogLevel::Error,
        "warn" | "warning" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

/// The name SPIRE prints for a level (logrus's text), if it has one.
fn level_text(level: i32) -> Option<&'static str> {
    Some(match LogLevel::try_from(level).ok()? {
        LogLevel::Panic => "panic",
        LogLevel::Fatal => "fatal",
        LogLevel::Error => "error",
        LogLevel::Warn => "warning",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
        LogLevel::Unspecified => return None,
    })
}

fn print_logger(ctx: &mut Ctx, l: &Logger) -> CliResult {
    let current = level_text(l.current_level).ok_or_else(|| {
        cli_err!(
            "internal error: returned current log level is undefined; please report this as a bug"
        )
    })?;
    let launch = level_text(l.launch_level).ok_or_else(|| {
        cli_err!(
            "internal error: returned launch log level is undefined; please report this as a bug"
        )
    })?;
    ctx.print(&format!("Logger Level : {current}\nLaunch Level : {launch}\n\n"));
    Ok(())
}

async fn logger(ctx: &mut Ctx, admin: &Admin, cmd: &LoggerCmd) -> CliResult {
    let mut c = loggerpb::logger_client::LoggerClient::new(admin.channel());
    let l = match cmd {
        LoggerCmd::Get(_) => c
            .get_logger(loggerpb::GetLoggerRequest {})
            .await
            .map_err(|s| cli_err!("error fetching logger: {}", admin.status(&s)))?,
        LoggerCmd::Set(a) => {
            if a.level.is_empty() {
                return Err(cli_err!("a value (-level) must be set"));
            }
            let level = parse_level(&a.level).ok_or_else(|| {
                cli_err!("the value {} is not a valid setting", go_quote(&a.level))
            })?;
            c.set_log_level(loggerpb::SetLogLevelRequest { new_level: level as i32 })
                .await
                .map_err(|s| cli_err!("failed to set log level: {}", admin.status(&s)))?
        }
        LoggerCmd::Reset(_) => c
            .reset_log_level(loggerpb::ResetLogLevelRequest {})
            .await
            .map_err(|s| cli_err!("failed to reset logger: {}", admin.status(&s)))?,
    }
    .into_inner();
    ctx.print_proto(&l, print_logger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_as_logrus_names_them() {
        assert_eq!(parse_level("WARN"), Some(LogLevel::Warn));
        assert_eq!(parse_level("warning"), Some(LogLevel::Warn));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn logger_prints_logrus_names() {
        let mut ctx = Ctx::new(super::super::Format::Pretty);
        print_logger(&mut ctx, &Logger { current_level: 4, launch_level: 6 }).unwrap();
        assert_eq!(ctx.out, "Logger Level : warning\nLaunch Level : debug\n\n");
        let err = print_logger(&mut ctx, &Logger { current_level: 0, launch_level: 6 });
        assert!(err.unwrap_err().to_string().contains("current log level is undefined"));
    }
}
