//! JSON log lines shaped like SPIRE's (logrus's JSON formatter): one flat object per line
//! with `time` (RFC 3339), `level` (lower case), `msg`, and every field of the event and of
//! its enclosing spans as a top-level key (event fields win over span fields).

use std::fmt;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter; pair it with [`JsonFields`] so span fields are stored as JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpireJson;

impl<S, N> FormatEvent<S, N> for SpireJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut map = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<JsonFields>>() else { continue };
                if let Ok(Value::Object(f)) = serde_json::from_str::<Value>(fields.as_str()) {
                    map.extend(f);
                }
            }
        }
        let mut visitor = Visitor(&mut map);
        event.record(&mut visitor);
        let msg = map.remove("message").unwrap_or(Value::String(String::new()));
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let level = if level == "warn" { "warning".to_owned() } else { level };
        let now = time::OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let mut line = Map::with_capacity(map.len() + 3);
        line.insert("level".into(), Value::String(level));
        line.insert("msg".into(), msg);
        line.insert("time".into(), Value::String(now));
        for (k, v) in map {
            line.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}
