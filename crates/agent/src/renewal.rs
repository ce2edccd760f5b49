//! When the agent SVID is renewed: at half its lifetime, moved by a random ±10 % of that half
//! so agents started together do not renew together (SPIRE's rotation rule,
//! `pkg/common/rotationutil`). Pure functions of the certificate's validity and `now`.

use std::time::{Duration, SystemTime};

/// The validity period of a DER certificate.
///
/// # Errors
/// A message when the certificate does not parse.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad certificate: {e}"))?;
    let at = |secs: i64| match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    };
    Ok((at(cert.validity().not_before.timestamp()), at(cert.validity().not_after.timestamp())))
}

/// When an SVID valid from `not_before` to `not_after` should be renewed: once the time left
/// is at most half the lifetime, shifted by `jitter` (a fraction of that half, clamped to
/// ±0.1).
pub fn renewal_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let half = lifetime / 2;
    let jitter = jitter.clamp(-0.1, 0.1);
    let shift = half.mul_f64(jitter.abs());
    // Time left at which to renew: half ± shift.
    let left = if jitter >= 0.0 { half + shift } else { half.saturating_sub(shift) };
    not_after.checked_sub(left).unwrap_or(not_before)
}

/// Whether an SVID that ends at `not_after` is expired at `now`, with spire-agent's one
/// second of clock skew.
pub fn is_expired(not_after: SystemTime, now: SystemTime) -> bool {
    now + Duration::from_secs(1) >= not_after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renews_at_half_life_within_ten_percent() {
        // One hour: half is 1800 s, ±10 % of it is 180 s.
        assert_eq!(renewal_at(t(1000), t(4600), 0.0), t(2800));
        assert_eq!(renewal_at(t(1000), t(4600), 0.1), t(2620));
        assert_eq!(renewal_at(t(1000), t(4600), -0.1), t(2980));
        // Out-of-range jitter is clamped.
        assert_eq!(renewal_at(t(1000), t(4600), 5.0), t(2620));
    }

    #[test]
    fn expiry_allows_one_second_of_skew() {
        assert!(!is_expired(t(100), t(98)));
        assert!(is_expired(t(100), t(99)));
        assert!(is_expired(t(100), t(200)));
    }
}
