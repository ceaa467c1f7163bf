//! Exponential backoff as in the Nacos client: `delay = min(base << failures, cap)`.
//!
//! The failure count itself is capped (so the shift can't overflow and a long outage
//! doesn't leave a huge count behind), and the delay can be shortened by a random
//! fraction (jitter) so that many shims recovering from the same outage don't retry in
//! lock step. Randomness is injected ([`Rng`]) to keep the engine deterministic in tests.

use core::time::Duration;

/// A source of random numbers, injected by the caller.
pub trait Rng {
    /// A uniformly distributed 64-bit value.
    fn next_u64(&mut self) -> u64;
}

/// A small, fast, seedable generator (SplitMix64). Good enough for jitter; not for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl Rng for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Backoff policy. Defaults are the Nacos client's: 1 s base, 60 s cap, plus 20 %
/// jitter, which only ever shortens a delay.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay unit, shifted left by the failure count.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
    /// Failure count at which the shift stops growing.
    pub max_failures: u32,
    /// Fraction in `[0, 1]` of the delay that is randomly taken off. 0 disables jitter.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_failures: 6,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// A policy without jitter.
    pub const fn new(base: Duration, cap: Duration, max_failures: u32) -> Self {
        Self {
            base,
            cap,
            max_failures,
            jitter: 0.0,
        }
    }

    /// The same policy with `jitter` (clamped to `[0, 1]`).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The failure count after one more failure, capped.
    pub fn next_failures(&self, failures: u32) -> u32 {
        failures.saturating_add(1).min(self.max_failures)
    }

    /// `min(base << failures, cap)`, without jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.min(self.max_failures).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// [`Backoff::delay`] shortened by a random fraction of up to `jitter`.
    pub fn delay_with_jitter(&self, failures: u32, rng: &mut dyn Rng) -> Duration {
        let delay = self.delay(failures);
        if self.jitter <= 0.0 {
            return delay;
        }
        // 53 random bits give a uniform float in [0, 1).
        let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        delay.mul_f64(1.0 - self.jitter * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nacos_sequence() {
        let b = Backoff::new(Duration::from_secs(6), Duration::from_secs(60), 6);
        let got: Vec<u64> = (0..8).map(|f| b.delay(f).as_secs()).collect();
        assert_eq!(got, vec![6, 12, 24, 48, 60, 60, 60, 60]);
    }

    #[test]
    fn failures_are_capped_and_the_shift_never_overflows() {
        let b = Backoff::new(Duration::from_millis(1), Duration::from_secs(3600), 6);
        assert_eq!(b.next_failures(6), 6);
        assert_eq!(b.next_failures(0), 1);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(64));
        let huge = Backoff::new(
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(5),
            40,
        );
        assert_eq!(huge.delay(40), Duration::from_secs(5));
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_its_fraction() {
        let b = Backoff::default();
        let mut rng = SplitMix64::new(7);
        let mut distinct = std::collections::BTreeSet::new();
        for failures in 0..10 {
            let full = b.delay(failures);
            for _ in 0..200 {
                let d = b.delay_with_jitter(failures, &mut rng);
                assert!(d <= full && d >= full.mul_f64(0.8), "{d:?} vs {full:?}");
                distinct.insert(d);
            }
        }
        assert!(distinct.len() > 100, "jitter should spread delays");
    }

    #[test]
    fn zero_jitter_is_exact() {
        let b = Backoff::default().with_jitter(0.0);
        let mut rng = SplitMix64::new(1);
        assert_eq!(b.delay_with_jitter(2, &mut rng), Duration::from_secs(4));
        assert_eq!(Backoff::default().with_jitter(f64::NAN).jitter, 0.0);
    }
}
