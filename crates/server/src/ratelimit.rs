//! SPIRE's per-source-IP rate limits: blocking token buckets.
//!
//! Each bucket holds at most `limit` tokens and refills at `limit` per second. A call takes
//! `n` tokens: it reserves them at once (the balance may go negative) and then waits until the
//! balance would have been non-negative, so callers queue fairly instead of failing. A call
//! that needs more than `limit` tokens at once can never succeed and is refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// AttestAgent calls per second per IP.
pub const ATTEST_LIMIT_PER_IP: u32 = 1;
/// Signatures per second per IP (BatchNewX509SVID counts CSRs).
pub const SIGN_LIMIT_PER_IP: u32 = 500;

/// Buckets kept before idle (full) buckets are dropped.
const MAX_TRACKED: usize = 4096;

/// A call asked for more tokens than the bucket can ever hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate ({needed}) exceeds burst size ({burst})")]
pub struct ExceedsBurst {
    /// Tokens requested.
    pub needed: u32,
    /// Bucket size.
    pub burst: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-IP token buckets for one limit; disabled limiters never wait.
#[derive(Debug)]
pub struct PerIpLimiter {
    limit: u32,
    enabled: bool,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl PerIpLimiter {
    /// A limiter allowing `limit` tokens per second per IP (burst `limit`).
    pub fn new(limit: u32, enabled: bool) -> Self {
        Self { limit, enabled, buckets: Mutex::new(HashMap::new()) }
    }

    /// Whether the limit is applied (oversized requests are refused either way).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Takes `n` tokens for `ip`, waiting as long as needed.
    ///
    /// # Errors
    /// [`ExceedsBurst`] when `n` is larger than the limit (checked even when disabled, as
    /// SPIRE rejects oversized batches outright).
    pub async fn acquire(&self, ip: IpAddr, n: u32) -> Result<(), ExceedsBurst> {
        if n > self.limit {
            return Err(ExceedsBurst { needed: n, burst: self.limit });
        }
        if !self.enabled || n == 0 {
            return Ok(());
        }
        let wait = self.reserve(ip, n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Reserves `n` tokens at `now` and returns how long the caller must wait.
    fn reserve(&self, ip: IpAddr, n: u32, now: Instant) -> Duration {
        let rate = f64::from(self.limit);
        let mut map = match self.buckets.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < rate);
        }
        let b = map.entry(ip).or_insert(Bucket { tokens: rate, at: now });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.at = now;
        b.tokens -= f64::from(n);
        if b.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-b.tokens / rate) }
    }
}

/// The server's limiters.
#[derive(Debug)]
pub struct RateLimits {
    /// AttestAgent.
    pub attest: PerIpLimiter,
    /// BatchNewX509SVID, NewJWTSVID, RenewAgent.
    pub sign: PerIpLimiter,
}

impl RateLimits {
    /// Limiters with SPIRE's limits, each on or off.
    pub fn new(attestation: bool, signing: bool) -> Self {
        Self {
            attest: PerIpLimiter::new(ATTEST_LIMIT_PER_IP, attestation),
            sign: PerIpLimiter::new(SIGN_LIMIT_PER_IP, signing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_reserves_and_refills() {
        let l = PerIpLimiter::new(2, true);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let t0 = Instant::now();
        assert_eq!(l.reserve(ip, 2, t0), Duration::ZERO);
        // Empty now: one more token is half a second away.
        assert_eq!(l.reserve(ip, 1, t0), Duration::from_millis(500));
        // Another IP has its own bucket.
        assert_eq!(l.reserve(IpAddr::from([10, 0, 0, 2]), 1, t0), Duration::ZERO);
        // After 2 s the bucket is full again (capped at 2).
        assert_eq!(l.reserve(ip, 1, t0 + Duration::from_secs(2)), Duration::ZERO);
    }

    #[tokio::test]
    async fn oversized_requests_are_refused() {
        let l = PerIpLimiter::new(500, false);
        let err = l.acquire(IpAddr::from([127, 0, 0, 1]), 501).await.unwrap_err();
        assert_eq!(err, ExceedsBurst { needed: 501, burst: 500 });
        assert_eq!(l.acquire(IpAddr::from([127, 0, 0, 1]), 500).await, Ok(()));
    }
}
