//! How the admin CLI prints: SPIRE's `-output pretty|json` choice, protobuf JSON as SPIRE's
//! CLI writes it, and the time formats its human output uses.
//!
//! JSON output is what SPIRE's CLI prints: protobuf's canonical JSON mapping with proto field
//! names and every field present (64-bit integers as strings, bytes as base64, enums by name),
//! unset messages left out, then re-encoded the way Go's `encoding/json` does: one line, keys
//! sorted, `<`, `>` and `&` escaped.

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::format_description;

/// The output format of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SPIRE's human-readable text (the default).
    Pretty,
    /// One JSON document.
    Json,
}

/// Parses `-output`: `json`, `pretty` or `prettyprint`, in any case.
///
/// # Errors
/// SPIRE's text: `bad formatter flag: unknown format option: "<s>"`.
pub fn parse_format(s: &str) -> Result<Format, String> {
    match s.to_lowercase().as_str() {
        "json" => Ok(Format::Json),
        "pretty" | "prettyprint" => Ok(Format::Pretty),
        _ => Err(format!("bad formatter flag: unknown format option: {}", super::go_quote(s))),
    }
}

/// `msg` as SPIRE's CLI prints a protobuf message with `-output json`, newline included.
///
/// # Errors
/// When `msg` cannot be serialised.
pub fn proto_json<T: Serialize>(msg: &T) -> Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(msg)?;
    ward_proto::go::drop_nulls(&mut value);
    Ok(ward_proto::go::encoding_json(&value))
}

/// `value` as Go's `encoding/json` prints a plain struct (no null removal), newline included.
pub fn struct_json(value: &Value) -> String {
    ward_proto::go::encoding_json(value)
}

/// Unix seconds as Go prints a `time.Time` in UTC: `2006-01-02 15:04:05 +0000 UTC`, for every
/// value (a far-future entry expiry, say year 33658, prints as a date too, as in Go).
pub fn go_time_utc(unix: i64) -> String {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC");
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(fmt).ok())
        .unwrap_or_else(|| go_time_utc_any_year(unix))
}

/// [`go_time_utc`] for the years the `time` crate does not hold (beyond ±9999): the
/// proleptic Gregorian date worked out from the day count (the inverse of the days-from-civil
/// formula), the year printed as Go prints it (at least four digits, sign first).
fn go_time_utc_any_year(unix: i64) -> String {
    let secs = i128::from(unix);
    let (days, second_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days counted from 0000-03-01, in 400-year eras of 146,097 days.
    let from_march_0 = days + 719_468;
    let era = from_march_0.div_euclid(146_097);
    let day_of_era = from_march_0.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + i128::from(month <= 2);
    let sign = if year < 0 { "-" } else { "" };
    format!(
        "{sign}{:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC",
        year.abs(),
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

/// Unix seconds as RFC 3339 in UTC (`2006-01-02T15:04:05Z`).
pub fn rfc3339_utc(unix: i64) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(fmt).ok())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_proto::spire::api::server::agent::v1::CountAgentsResponse;
    use ward_proto::spire::api::server::trustdomain::v1::ListFederationRelationshipsResponse;
    use ward_proto::spire::api::types;

    #[test]
    fn output_flag_values() {
        assert_eq!(parse_format("json"), Ok(Format::Json));
        assert_eq!(parse_format("JSON"), Ok(Format::Json));
        assert_eq!(parse_format("prettyprint"), Ok(Format::Pretty));
        assert_eq!(
            parse_format("yaml"),
            Err("bad formatter flag: unknown format option: \"yaml\"".to_owned())
        );
    }

    #[test]
    fn json_uses_proto_names_and_emits_defaults() {
        let agent = types::Agent {
            id: Some(types::Spiffeid { trust_domain: "example.org".into(), path: "/a".into() }),
            attestation_type: "join_token".into(),
            x509svid_serial_number: "7".into(),
            x509svid_expires_at: 1_700_000_000,
            selectors: vec![],
            banned: false,
            can_reattest: false,
        };
        assert_eq!(
            proto_json(&agent).unwrap(),
            "{\"attestation_type\":\"join_token\",\"banned\":false,\"can_reattest\":false,\
             \"id\":{\"path\":\"/a\",\"trust_domain\":\"example.org\"},\"selectors\":[],\
             \"x509svid_expires_at\":\"1700000000\",\"x509svid_serial_number\":\"7\"}\n"
        );
        assert_eq!(proto_json(&CountAgentsResponse { count: 0 }).unwrap(), "{\"count\":0}\n");
    }

    #[test]
    fn json_drops_unset_messages_and_keeps_the_set_oneof() {
        let fr = types::FederationRelationship {
            trust_domain: "a.org".into(),
            bundle_endpoint_url: "https://a.org/b?x=1&y=<2>".into(),
            bundle_endpoint_profile: Some(
                types::federation_relationship::BundleEndpointProfile::HttpsWeb(
                    types::HttpsWebProfile {},
                ),
            ),
            trust_domain_bundle: None,
        };
        let list = ListFederationRelationshipsResponse {
            federation_relationships: vec![fr],
            next_page_token: String::new(),
        };
        assert_eq!(
            proto_json(&list).unwrap(),
            "{\"federation_relationships\":[{\"bundle_endpoint_url\":\
             \"https://a.org/b?x=1\\u0026y=\\u003c2\\u003e\",\"https_web\":{},\
             \"trust_domain\":\"a.org\"}],\"next_page_token\":\"\"}\n"
        );
    }

    #[test]
    fn json_bytes_are_base64_and_enums_named() {
        let logger = types::Logger { current_level: 4, launch_level: 6 };
        assert_eq!(
            proto_json(&logger).unwrap(),
            "{\"current_level\":\"WARN\",\"launch_level\":\"DEBUG\"}\n"
        );
        let cert = types::X509Certificate { asn1: vec![1, 2, 3], tainted: true };
        assert_eq!(proto_json(&cert).unwrap(), "{\"asn1\":\"AQID\",\"tainted\":true}\n");
    }

    #[test]
    fn times_print_as_go_does() {
        assert_eq!(go_time_utc(4_102_444_800), "2100-01-01 00:00:00 +0000 UTC");
        // What Go's time.Unix(s, 0).UTC().String() prints for each.
        for (unix, go) in [
            (99_999_999_999, "5138-11-16 09:46:39 +0000 UTC"),
            (253_402_300_799, "9999-12-31 23:59:59 +0000 UTC"),
            (253_402_300_800, "10000-01-01 00:00:00 +0000 UTC"),
            (999_999_999_999, "33658-09-27 01:46:39 +0000 UTC"),
            (i64::MAX, "292277026596-12-04 15:30:07 +0000 UTC"),
            (-1, "1969-12-31 23:59:59 +0000 UTC"),
        ] {
            assert_eq!(go_time_utc(unix), go, "{unix}");
        }
        // The arithmetic agrees with the `time` crate where both work.
        for unix in [-62_135_596_800, -1, 0, 951_782_400, 4_102_444_800, 253_402_300_799] {
            assert_eq!(go_time_utc_any_year(unix), go_time_utc(unix), "{unix}");
        }
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
    }
}
