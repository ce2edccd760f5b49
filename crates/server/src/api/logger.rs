//! `spire.api.server.logger.v1.Logger` (admin socket only): reads and changes the live log
//! level; `ResetLogLevel` goes back to the level the server started with.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use ward_proto::spire::api::server::logger::v1::{self as pb, logger_server::Logger};
use ward_proto::spire::api::types;

use crate::logging::{LogControl, LogLevel};

/// The Logger service.
#[derive(Debug, Clone)]
pub struct LoggerService {
    log: Arc<LogControl>,
}

impl LoggerService {
    /// A service changing the level through `log`.
    pub fn new(log: Arc<LogControl>) -> Self {
        tracing::info!(launch_log_level = log.launch().name(), "Logger service configured");
        Self { log }
    }

    fn logger(&self) -> types::Logger {
        types::Logger {
            current_level: api_level(self.log.current()) as i32,
            launch_level: api_level(self.log.launch()) as i32,
        }
    }
}

/// The wire level of `l`.
pub fn api_level(l: LogLevel) -> types::LogLevel {
    match l {
        LogLevel::Panic => types::LogLevel::Panic,
        LogLevel::Fatal => types::LogLevel::Fatal,
        LogLevel::Error => types::LogLevel::Error,
        LogLevel::Warn => types::LogLevel::Warn,
        LogLevel::Info => types::LogLevel::Info,
        LogLevel::Debug => types::LogLevel::Debug,
        LogLevel::Trace => types::LogLevel::Trace,
    }
}

/// The level of a wire value, as SPIRE checks it: `UNSPECIFIED` and unknown numbers are
/// refused with its messages.
pub fn level_from_api(v: i32) -> Result<LogLevel, Status> {
    match types::LogLevel::try_from(v) {
        Ok(types::LogLevel::Unspecified) => {
            Err(Status::invalid_argument("newLevel value cannot be LogLevel_UNSPECIFIED"))
        }
        Ok(types::LogLevel::Panic) => Ok(LogLevel::Panic),
        Ok(types::LogLevel::Fatal) => Ok(LogLevel::Fatal),
        Ok(types::LogLevel::Error) => Ok(LogLevel::Error),
        Ok(types::LogLevel::Warn) => Ok(LogLevel::Warn),
        Ok(types::LogLevel::Info) => Ok(LogLevel::Info),
        Ok(types::LogLevel::Debug) => Ok(LogLevel::Debug),
        Ok(types::LogLevel::Trace) => Ok(LogLevel::Trace),
        Err(_) => Err(Status::invalid_argument("unsupported log level")),
    }
}

#[tonic::async_trait]
impl Logger for LoggerService {
    async fn get_logger(
        &self,
        _: Request<pb::GetLoggerRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        tracing::info!("GetLogger Called");
        Ok(Response::new(self.logger()))
    }

    async fn set_log_level(
        &self,
        req: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        let level = level_from_api(req.into_inner().new_level)?;
        tracing::info!(new_log_level = level.name(), "SetLogLevel Called");
        self.log.set(level).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(self.logger()))
    }

    async fn reset_log_level(
        &self,
        _: Request<pb::ResetLogLevelRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        tracing::info!(launch_log_level = self.log.launch().name(), "ResetLogLevel Called");
        self.log.reset().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(self.logger()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_levels_round_trip_and_bad_ones_are_refused_as_spire_does() {
        for l in [
            LogLevel::Panic,
            LogLevel::Fatal,
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            assert_eq!(level_from_api(api_level(l) as i32).unwrap(), l);
        }
        let e = level_from_api(0).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, "newLevel value cannot be LogLevel_UNSPECIFIED")
        );
        let e = level_from_api(99).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, "unsupported log level")
        );
    }
}
