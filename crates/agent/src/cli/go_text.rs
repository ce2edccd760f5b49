//! Text as spire-agent (a Go program) prints it: times, durations, gRPC status errors, joined
//! paths and JSON numbers. `ward-agent api` prints the same bytes so scripts written against
//! `spire-agent api` keep working.

use std::time::Duration;

/// A certificate time as Go's `time.Time` prints it in UTC with `%v`:
/// `2006-01-02 15:04:05 +0000 UTC` (fractional seconds, when there are any, without trailing
/// zeros).
pub fn time_utc(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let nanos = t.nanosecond();
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A duration as Go's `time.Duration.String` writes it: `0s`, `850ns`, `1.5µs`, `3.2ms`,
/// `1.25s`, `2m3.5s`, `1h0m0s`.
pub fn duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", decimal(nanos, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", decimal(nanos, 6));
    }
    let seconds = decimal(nanos % 60_000_000_000, 9);
    let minutes = nanos / 60_000_000_000;
    match (minutes / 60, minutes % 60) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// `value / 10^scale` in decimal, without trailing zeros (nor a point when whole).
fn decimal(value: u128, scale: u32) -> String {
    let unit = 10u128.pow(scale);
    let (whole, frac) = (value / unit, value % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:0width$}", width = scale as usize);
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

pub use ward_proto::go::code_name;

/// A status error as grpc-go's `error.Error()` writes it.
pub fn status_error(code: tonic::Code, message: &str) -> String {
    format!("rpc error: code = {} desc = {message}", code_name(code))
}

/// An operating-system error as Go writes it (`no such file or directory`): the C library's
/// text with a lower-case first letter and without Rust's ` (os error N)` suffix.
pub fn os_error(e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => {
            let full = std::io::Error::from_raw_os_error(code).to_string();
            match full.rfind(" (os error ") {
                Some(at) => full[..at].to_owned(),
                None => full,
            }
        }
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Go's `path.Join(dir, name)`: the two joined by `/`, then cleaned lexically (`path.Clean`).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { clean(name) } else { clean(&format!("{dir}/{name}")) }
}

/// Go's `path.Clean`: the shortest lexically equal path (no `//`, `.` or inner `..`).
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// A JSON number as Go's `encoding/json` (and protojson) writes a float64: whole numbers
/// below 10^21 without a fraction or exponent, others in the shortest form that reads back.
pub fn json_number(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        // Exact: |n| < 2^53.
        #[expect(clippy::cast_possible_truncation, reason = "whole and below 2^53")]
        return serde_json::Value::from(n as i64);
    }
    serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(850), "850ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_micros(3_200), "3.2ms"),
            (Duration::from_nanos(3_217_421), "3.217421ms"),
            (Duration::from_millis(1_250), "1.25s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(123_500), "2m3.5s"),
            (Duration::from_secs(3_600), "1h0m0s"),
        ];
        for (d, want) in cases {
            assert_eq!(duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn times_print_as_go_prints_them() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_764_492_725).unwrap();
        assert_eq!(time_utc(t), "2025-11-30 08:52:05 +0000 UTC");
        let t = t + time::Duration::milliseconds(250);
        assert_eq!(time_utc(t), "2025-11-30 08:52:05.25 +0000 UTC");
    }

    #[test]
    fn status_errors_use_grpc_go_code_names() {
        assert_eq!(
            status_error(tonic::Code::PermissionDenied, "no identity issued"),
            "rpc error: code = PermissionDenied desc = no identity issued"
        );
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
    }

    #[test]
    fn os_errors_read_as_go_writes_them() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(os_error(&e), "no such file or directory");
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(os_error(&e), "connection refused");
    }

    #[test]
    fn paths_join_and_clean_as_go_does() {
        assert_eq!(join("out/", "svid.0.pem"), "out/svid.0.pem");
        assert_eq!(join("./out", "svid.0.pem"), "out/svid.0.pem");
        assert_eq!(join("/tmp//a/../b", "svid.0.pem"), "/tmp/b/svid.0.pem");
        assert_eq!(join(".", "svid.0.pem"), "svid.0.pem");
        assert_eq!(clean("../../x"), "../../x");
        assert_eq!(clean("/../x"), "/x");
        assert_eq!(clean(""), ".");
    }

    #[test]
    fn json_numbers_print_as_go_prints_them() {
        assert_eq!(json_number(1_764_492_725.0).to_string(), "1764492725");
        assert_eq!(json_number(-3.0).to_string(), "-3");
        assert_eq!(json_number(1.5).to_string(), "1.5");
    }
}
