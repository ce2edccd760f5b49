//! raft-rs logs through `slog`; this drain forwards its records to `tracing`, so raft's
//! lines land in the same subscriber, at the same levels, as everything else.

use slog::{Drain, KV, Key, OwnedKVList, Record, Serializer};

/// A `slog` drain writing to `tracing` under the target `raft`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingDrain;

/// Collects a record's key-value pairs as `key=value` text.
struct Fields(String);

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write as _;
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let msg = record.msg();
        let f = fields.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", raft = %f, "{msg}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", raft = %f, "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", raft = %f, "{msg}"),
            slog::Level::Debug => tracing::debug!(target: "raft", raft = %f, "{msg}"),
            slog::Level::Trace => tracing::trace!(target: "raft", raft = %f, "{msg}"),
        }
        Ok(())
    }
}

/// A logger for raft-rs that forwards to `tracing`, tagged with the replica's id.
pub fn raft_logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("node_id" => node_id))
}
