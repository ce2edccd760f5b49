//! Test-only helpers for ward.
//!
//! This crate is a dev-dependency of the other ward crates and is never shipped. It owns the
//! [`ManualClock`], a [`Clock`] whose time tests set and advance by hand so expiry and
//! rotation can be exercised without sleeping, and [`serve_closing_unix_socket`], a Unix
//! socket that hangs up on every client (what a dying server looks like to a CLI), and
//! [`TestAuthority`], a trust domain's real ward-ca CA and JWT key for signing test SVIDs
//! (with feature `agent`, the `agent` module turns them into the agent cache's identities and
//! a JWT-SVID source).

#![allow(clippy::expect_used, reason = "test fixtures fail loudly")]

#[cfg(feature = "agent")]
pub mod agent;
mod authority;

pub use authority::{TestAuthority, TestSvid};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use ward_core::Clock;

/// Serves `path` as a Unix socket that accepts each connection and closes its side at once,
/// reading what the client sends until the client goes away, so the client reads end of
/// stream before any answer (never a reset). Runs on background threads for the rest of
/// the process.
///
/// # Errors
/// When the socket cannot be bound.
pub fn serve_closing_unix_socket(path: &std::path::Path) -> std::io::Result<()> {
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            });
        }
    });
    Ok(())
}

/// A thread-safe clock that only moves when told to.
///
/// Clones share the same time: advancing one advances all of them, so a test can keep a
/// handle while the code under test holds another (`Arc<dyn Clock>`).
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// The time a [`ManualClock::default`] starts at: 2026-01-01T00:00:00Z.
    pub const DEFAULT_START_UNIX: u64 = 1_767_225_600;

    /// A clock reading `start`.
    pub fn new(start: SystemTime) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// A clock reading `secs` seconds after the Unix epoch.
    pub fn at_unix(secs: u64) -> Self {
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Sets the time to `t` (which may be earlier than the current reading).
    pub fn set(&self, t: SystemTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// Moves the time forward by `d` and returns the new reading.
    pub fn advance(&self, d: Duration) -> SystemTime {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += d;
        *now
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::at_unix(Self::DEFAULT_START_UNIX)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_advance_are_shared_between_clones() {
        let clock = ManualClock::default();
        let other = clock.clone();
        assert_eq!(clock.unix_seconds(), 1_767_225_600);
        let t = other.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), t);
        assert_eq!(clock.unix_seconds(), 1_767_225_690);
        clock.set(SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        assert_eq!(other.unix_seconds(), 5);
    }

    #[test]
    fn usable_across_threads_as_dyn_clock() {
        let clock = ManualClock::at_unix(1000);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = clock.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        c.advance(Duration::from_secs(1));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(shared.unix_seconds(), 1400);
    }
}
