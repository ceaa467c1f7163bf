//! Time as a value the caller passes in.
//!
//! The engine never reads a clock. An [`Instant`] is a count of milliseconds since an
//! origin the caller picks (process start, `proxy_get_current_time`, a virtual clock in
//! tests). Millisecond resolution matches Envoy's tick granularity and the debounce windows.

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point in time, in milliseconds since a caller-chosen origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Self = Self(0);

    /// An instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(millis(d)))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(millis(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(100);
        assert_eq!((t + Duration::from_millis(50)).as_millis(), 150);
        assert_eq!((t - Duration::from_secs(1)).as_millis(), 0);
        assert_eq!(
            t.saturating_since(Instant::from_millis(300)),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_millis(u64::MAX) + Duration::from_secs(1),
            Instant::from_millis(u64::MAX)
        );
    }
}
