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

/// A token bucket of `qps` tokens per second holding up to `burst`; unlimited when `qps`
/// is not a positive finite number (or so large that a token takes under a nanosecond).
#[derive(Debug)]
pub(crate) struct Limiter(Option<DefaultDirectRateLimiter>);

impl Limiter {
    /// A limiter of `qps` requests per second with bursts of `burst` (at least 1).
    pub fn new(qps: f64, burst: u32) -> Self {
        let quota = (qps.is_finite() && qps > 0.0)
            .then(|| Duration::try_from_secs_f64((1.0 / qps).min(MAX_PERIOD_SECS)).ok())
            .flatten()
            .and_then(Quota::with_period);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Self(quota.map(|q| RateLimiter::direct(q.allow_burst(burst))))
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
    use std::time::Instant;

    #[tokio::test]
    async fn burst_then_rate() {
        let l = Limiter::new(20.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(40), "burst is free");
        for _ in 0..10 {
            l.acquire().await;
        }
        // 10 more tokens at 20/s: 0.5 s.
        let t = start.elapsed();
        assert!(
            t >= Duration::from_millis(430) && t < Duration::from_millis(1500),
            "{t:?}"
        );
    }

    #[tokio::test]
    async fn nonsense_rates_mean_unlimited() {
        for qps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            let l = Limiter::new(qps, 0);
            let start = Instant::now();
            for _ in 0..100 {
                l.acquire().await;
            }
            assert!(start.elapsed() < Duration::from_millis(100), "{qps}");
        }
    }
}
