//! SPIRE's per-source-IP rate limits, on `governor`'s keyed GCRA limiter.
//!
//! SPIRE (`pkg/server/endpoints/middleware.go`) gives each group of methods its own per-IP
//! limiter: AttestAgent 1 call/s; the X.509 signing methods (BatchNewX509SVID, RenewAgent,
//! NewDownstreamX509CA) 500 CSRs/s; NewJWTSVID 500 tokens/s, apart from the X.509 ones. Each
//! limiter's burst equals its rate. A call that needs more tokens than the burst is refused at
//! once; a call that must wait, waits, as Go's `rate.Limiter.WaitN` does.
//!
//! Three properties matter for a server facing the network:
//! - **A cancelled wait costs nothing.** Tokens are taken only when the call is admitted, so a
//!   caller that disconnects while waiting leaves the bucket as it found it (a limiter that
//!   debits at reservation lets a burst of abandoned calls lock out everyone behind the same
//!   address for as long as the debt takes to refill).
//! - **A wait never outlives the call's deadline.** When the caller sent a gRPC deadline that
//!   the wait would pass, the call is refused at once, as `WaitN` refuses.
//! - **Memory stays bounded.** Buckets that have refilled are indistinguishable from new ones
//!   and are dropped every [`GC_INTERVAL`] (SPIRE swaps generations every minute), or sooner
//!   once more than [`MAX_TRACKED`] addresses are held.
//!
//! A limiter disabled by configuration admits everything, whatever the count, as SPIRE's
//! `DisabledLimit` does.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// AttestAgent calls per second per IP (SPIRE's `AttestLimitPerIP`).
pub const ATTEST_LIMIT_PER_IP: u32 = 1;
/// Signatures per second per IP (SPIRE's `SignLimitPerIP`), for X.509 and JWT apart.
pub const SIGN_LIMIT_PER_IP: u32 = 500;
/// How often buckets that have refilled are dropped.
pub const GC_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses held before a collection runs early (at most once a second).
pub const MAX_TRACKED: usize = 65_536;

/// Why a call was not admitted. The texts are the inner part of SPIRE's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// The call asked for more tokens than the bucket can ever hold.
    #[error("rate ({needed}) exceeds burst size ({burst})")]
    ExceedsBurst {
        /// Tokens requested.
        needed: u32,
        /// Bucket size.
        burst: u32,
    },
    /// Waiting for the tokens would pass the caller's deadline.
    #[error("rate: Wait(n={needed}) would exceed context deadline")]
    WouldExceedDeadline {
        /// Tokens requested.
        needed: u32,
    },
}

/// governor's clock on tokio's time, so waits and refills follow one clock (and tests can
/// pause it).
#[derive(Debug, Clone)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

type KeyedLimiter =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, TokioClock, NoOpMiddleware<Nanos>>;

/// One method group's per-IP limiter; a disabled limiter admits every call.
#[derive(Debug)]
pub struct PerIpLimiter {
    limit: u32,
    inner: Option<KeyedLimiter>,
    clock: TokioClock,
    /// Nanoseconds (on `clock`) of the last collection.
    last_gc: AtomicU64,
    waiting: AtomicUsize,
}

impl PerIpLimiter {
    /// A limiter allowing `limit` tokens per second per IP with a burst of `limit`; `enabled`
    /// false (or a zero limit) admits everything.
    pub fn new(limit: u32, enabled: bool) -> Self {
        let clock = TokioClock { origin: tokio::time::Instant::now() };
        let inner = NonZeroU32::new(limit)
            .filter(|_| enabled)
            .map(|rate| RateLimiter::dashmap_with_clock(Quota::per_second(rate), clock.clone()));
        Self { limit, inner, clock, last_gc: AtomicU64::new(0), waiting: AtomicUsize::new(0) }
    }

    /// Whether the limit is applied.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The burst size (equal to the per-second rate).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Calls waiting for tokens right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Addresses whose buckets are held (refilled ones may linger until the next collection).
    pub fn tracked(&self) -> usize {
        self.inner.as_ref().map_or(0, RateLimiter::len)
    }

    /// Takes `n` tokens for `ip`, waiting while the bucket refills. With a `deadline` (time
    /// left for the call), a wait that would pass it is refused at once instead.
    ///
    /// Cancel-safe: dropping the future while it waits takes nothing from the bucket.
    ///
    /// # Errors
    /// [`RateLimitError::ExceedsBurst`] when `n` is larger than the limit,
    /// [`RateLimitError::WouldExceedDeadline`] as above. A disabled limiter never fails.
    pub async fn acquire(
        &self,
        ip: IpAddr,
        n: u32,
        deadline: Option<Duration>,
    ) -> Result<(), RateLimitError> {
        let Some(limiter) = &self.inner else { return Ok(()) };
        let Some(count) = NonZeroU32::new(n) else { return Ok(()) };
        if n > self.limit {
            return Err(RateLimitError::ExceedsBurst { needed: n, burst: self.limit });
        }
        self.collect_garbage(limiter);
        let deadline = deadline.map(|d| tokio::time::Instant::now() + d);
        loop {
            let wait = match limiter.check_key_n(&ip, count) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(not_until)) => not_until.wait_time_from(self.clock.now()),
                Err(_) => {
                    return Err(RateLimitError::ExceedsBurst { needed: n, burst: self.limit });
                }
            };
            let wake = tokio::time::Instant::now() + wait;
            if deadline.is_some_and(|d| wake > d) {
                return Err(RateLimitError::WouldExceedDeadline { needed: n });
            }
            let _waiting = WaitingGuard::enter(&self.waiting);
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Drops buckets that have refilled, every [`GC_INTERVAL`], or at most once a second
    /// while more than [`MAX_TRACKED`] addresses are held.
    fn collect_garbage(&self, limiter: &KeyedLimiter) {
        let now = self.clock.now().as_u64();
        let last = self.last_gc.load(Ordering::Relaxed);
        let since = Duration::from_nanos(now.saturating_sub(last));
        let due = since >= GC_INTERVAL
            || (since >= Duration::from_secs(1) && limiter.len() > MAX_TRACKED);
        if due
            && self
                .last_gc
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Counts a call as waiting for as long as the guard lives (the wait may be cancelled).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server's limiters, one per method group as SPIRE groups them.
#[derive(Debug)]
pub struct RateLimits {
    /// AttestAgent.
    pub attest: PerIpLimiter,
    /// X.509 signing: BatchNewX509SVID (one token per CSR), RenewAgent, NewDownstreamX509CA.
    pub x509: PerIpLimiter,
    /// JWT signing: NewJWTSVID.
    pub jwt: PerIpLimiter,
}

impl RateLimits {
    /// Limiters with SPIRE's limits; `signing` turns both signing groups on or off.
    pub fn new(attestation: bool, signing: bool) -> Self {
        Self {
            attest: PerIpLimiter::new(ATTEST_LIMIT_PER_IP, attestation),
            x509: PerIpLimiter::new(SIGN_LIMIT_PER_IP, signing),
            jwt: PerIpLimiter::new(SIGN_LIMIT_PER_IP, signing),
        }
    }
}

/// The methods SPIRE rate limits, each with its limiter and its message prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// `Agent/AttestAgent`: the attestation limiter.
    AttestAgent,
    /// `Agent/RenewAgent`: the X.509 signing limiter.
    RenewAgent,
    /// `SVID/BatchNewX509SVID`: the X.509 signing limiter, one token per CSR.
    BatchNewX509Svid,
    /// `SVID/NewDownstreamX509CA`: the X.509 signing limiter.
    NewDownstreamX509Ca,
    /// `SVID/NewJWTSVID`: the JWT signing limiter.
    NewJwtSvid,
}

impl Limited {
    /// The start of SPIRE's message when the limiter refuses the call (its handlers' texts).
    pub fn message_prefix(self) -> &'static str {
        match self {
            Self::AttestAgent => "rejecting request due to attest agent rate limiting",
            Self::RenewAgent => "rejecting request due to renew agent rate limiting",
            Self::BatchNewX509Svid => "rejecting request due to certificate signing rate limiting",
            Self::NewDownstreamX509Ca => {
                "rejecting request due to downstream CA signing rate limit"
            }
            Self::NewJwtSvid => "rejecting request due to JWT signing request rate limiting",
        }
    }
}

impl RateLimits {
    /// The limiter that `method` draws from.
    pub fn limiter(&self, method: Limited) -> &PerIpLimiter {
        match method {
            Limited::AttestAgent => &self.attest,
            Limited::RenewAgent | Limited::BatchNewX509Svid | Limited::NewDownstreamX509Ca => {
                &self.x509
            }
            Limited::NewJwtSvid => &self.jwt,
        }
    }

    /// Admits a call of `method` from `ip` that needs `count` tokens (local callers, with no
    /// IP, are never limited), waiting as [`PerIpLimiter::acquire`] does.
    ///
    /// # Errors
    /// `ResourceExhausted` with SPIRE's text: the method's prefix, `": "`, the reason.
    pub async fn admit(
        &self,
        method: Limited,
        ip: Option<IpAddr>,
        count: usize,
        deadline: Option<Duration>,
    ) -> Result<(), tonic::Status> {
        let Some(ip) = ip else { return Ok(()) };
        let n = u32::try_from(count).unwrap_or(u32::MAX);
        self.limiter(method).acquire(ip, n, deadline).await.map_err(|e| {
            tonic::Status::resource_exhausted(format!("{}: {e}", method.message_prefix()))
        })
    }
}

/// The time left for a call from its `grpc-timeout` header (gRPC over HTTP/2: an integer of
/// at most 8 digits and a unit `H`, `M`, `S`, `m`, `u` or `n`), if it has a valid one.
pub fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = v.len().checked_sub(1)?;
    let (digits, unit) = v.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[tokio::test(start_paused = true)]
    async fn waits_for_refill_per_ip() {
        let l = PerIpLimiter::new(2, true);
        let t0 = tokio::time::Instant::now();
        l.acquire(IP, 2, None).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // Empty now: one more token is half a second away.
        l.acquire(IP, 1, None).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
        // Another IP has its own bucket.
        l.acquire(IpAddr::from([10, 0, 0, 2]), 2, None).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
    }

    #[test]
    fn deadline_header_parsing() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_deadline(&m), None);
        for (v, want) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("2H", Some(Duration::from_secs(7200))),
            ("1M", Some(Duration::from_secs(60))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("123456789S", None),
            ("S", None),
            ("5x", None),
            ("-5S", None),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_deadline(&m), want, "{v}");
        }
    }
}
