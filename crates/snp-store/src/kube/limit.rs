//! Client-side rate limit of Kubernetes API requests: a token bucket (GCRA, from
//! `governor`) shared by every request a store sends, except the long-running watch.
//!
//! Defaults (`--kube-qps 20 --kube-burst 40`) sit between client-go's 5/10 and Istio's
//! status writer's 100/500: writes are debounced and no-op writes skipped, so a node
//! needs few, but a first backfill of many interfaces should not take minutes.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Longest interval between two tokens (a tiny `qps` means one request an hour).
const MAX_PERIOD_SECS: f64 = 3600.0;

/// The quota of `qps` tokens per second with bursts of `burst` (at least 1); `None` (no
/// limit) when `qps` is not a positive finite number or a token would take under a
/// nanosecond.
fn quota(qps: f64, burst: u32) -> Option<Quota> {
    let quota = (qps.is_finite() && qps > 0.0)
        .then(|| Duration::try_from_secs_f64((1.0 / qps).min(MAX_PERIOD_SECS)).ok())
        .flatten()
        .and_then(Quota::with_period)?;
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Some(quota.allow_burst(burst))
}

/// A token bucket of `qps` tokens per second holding up to `burst`; unlimited when `qps`
/// is not a positive finite number (or so large that a token takes under a nanosecond).
#[derive(Debug)]
pub(crate) struct Limiter(Option<DefaultDirectRateLimiter>);

impl Limiter {
    /// A limiter of `qps` requests per second with bursts of `burst` (at least 1).
    pub fn new(qps: f64, burst: u32) -> Self {
        Self(quota(qps, burst).map(RateLimiter::direct))
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        if let Some(l) = &self.0 {
            l.until_ready().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::{Clock, FakeRelativeClock};
    use std::time::Instant;

    // On governor's fake clock: the bucket's arithmetic, exact whatever the machine's load.
    #[test]
    fn burst_then_rate() {
        let clock = FakeRelativeClock::default();
        let l = RateLimiter::direct_with_clock(quota(20.0, 5).unwrap(), clock.clone());
        for n in 0..5 {
            assert!(l.check().is_ok(), "burst is free: token {n}");
        }
        // 10 more tokens at 20/s: each waits 50 ms, 0.5 s in all.
        let mut waited = Duration::ZERO;
        for n in 0..10 {
            let wait = l
                .check()
                .expect_err("a token beyond the burst waits")
                .wait_time_from(clock.now());
            assert_eq!(wait, Duration::from_millis(50), "token {n}");
            clock.advance(wait);
            waited += wait;
            assert!(l.check().is_ok(), "token {n} after its wait");
        }
        assert_eq!(waited, Duration::from_millis(500));
    }

    // On the real clock, `acquire` really waits: only a lower bound, which load cannot break.
    #[tokio::test]
    async fn acquire_waits_for_tokens() {
        let l = Limiter::new(20.0, 5);
        let start = Instant::now();
        for _ in 0..15 {
            l.acquire().await;
        }
        let t = start.elapsed();
        assert!(t >= Duration::from_millis(430), "{t:?}");
    }

    #[tokio::test]
    async fn nonsense_rates_mean_unlimited() {
        for qps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(quota(qps, 0).is_none(), "{qps}");
            let l = Limiter::new(qps, 0);
            assert!(l.0.is_none(), "{qps}");
            for _ in 0..100 {
                l.acquire().await;
            }
        }
        // A tiny rate is one token an hour, not an error.
        let clock = FakeRelativeClock::default();
        let l = RateLimiter::direct_with_clock(quota(1e-9, 1).unwrap(), clock.clone());
        assert!(l.check().is_ok());
        let wait = l.check().unwrap_err().wait_time_from(clock.now());
        assert_eq!(wait, Duration::from_secs(3600));
    }
}
