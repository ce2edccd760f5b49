//! The time seam: everything that needs "now" takes a [`Clock`].

use std::time::SystemTime;

/// A source of the current time.
///
/// ward's pure crates never read the wall clock themselves; binaries pass a system clock and
/// tests pass a manual one, so expiry and rotation can be tested without sleeping.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time as whole seconds since the Unix epoch (0 for times before it).
    fn unix_seconds(&self) -> i64 {
        unix_seconds(self.now())
    }
}

/// Whole seconds since the Unix epoch of `t`; times before the epoch give 0 and times past
/// `i64::MAX` seconds saturate.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}
