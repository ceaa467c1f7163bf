//! A monotonic millisecond clock built from Envoy's wall clock.
//!
//! proxy-wasm (ABI 0.2.1) only offers wall-clock time. The debouncer's windows, retry delays
//! and durable timeouts must not stall when the wall clock steps back (an NTP step), so the
//! filter's clock advances by the positive differences between successive wall readings and
//! ignores backward steps.

use snp_core::Instant;

/// Monotonic time from successive wall-clock readings.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonoClock {
    last_wall: Option<u64>,
    mono: u64,
}

impl MonoClock {
    /// The monotonic instant for a wall-clock reading of `wall_ms`.
    pub fn at(&mut self, wall_ms: u64) -> Instant {
        if let Some(last) = self.last_wall {
            self.mono = self.mono.saturating_add(wall_ms.saturating_sub(last));
        }
        self.last_wall = Some(wall_ms);
        Instant::from_millis(self.mono)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_steps_do_not_stall_or_rewind_time() {
        let mut c = MonoClock::default();
        assert_eq!(c.at(10_000_000).as_millis(), 0);
        assert_eq!(c.at(10_000_250).as_millis(), 250);
        // The wall clock steps back an hour: time stands still for that reading only.
        assert_eq!(c.at(10_000_250 - 3_600_000).as_millis(), 250);
        assert_eq!(c.at(10_000_250 - 3_600_000 + 100).as_millis(), 350);
        assert_eq!(c.at(10_000_250 - 3_600_000 + 100).as_millis(), 350);
    }
}
