//! Latency histograms (HdrHistogram, microseconds) and number formatting for tables.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Call latencies, in microseconds, 3 significant digits, 1 µs .. 10 min.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Self(h)
    }

    /// Records one call.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(q))
    }

    /// Median.
    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    /// 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    /// 99.9th percentile.
    pub fn p999(&self) -> Duration {
        self.quantile(0.999)
    }

    /// Largest sample.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.0.max())
    }
}

/// A duration for a table: `850 µs`, `12.3 ms`, `4.21 s`.
pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// An integer with thousands separators: `1,234,567`.
pub fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate, rounded, with separators: `12,345/s`.
pub fn fmt_rate(per_sec: f64) -> String {
    format!("{}/s", fmt_int(per_sec.max(0.0).round() as u64))
}

/// Bytes as MiB with one decimal.
pub fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Median of a few values (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Latency::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.p50(), Duration::from_micros(500));
        assert_eq!(h.p99(), Duration::from_micros(990));
        assert_eq!(h.p999(), Duration::from_micros(999));
        assert_eq!(h.max(), Duration::from_micros(1000));
        let mut other = Latency::new();
        other.record(Duration::from_secs(2));
        h.merge(&other);
        assert_eq!(h.count(), 1001);
        // 3 significant digits.
        let max = h.max().as_micros();
        assert!((1_998_000..=2_002_000).contains(&max), "{max}");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_dur(Duration::from_micros(850)), "850 µs");
        assert_eq!(fmt_dur(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(fmt_dur(Duration::from_millis(123)), "123.0 ms");
        assert_eq!(fmt_dur(Duration::from_millis(4210)), "4.21 s");
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(1000), "1,000");
        assert_eq!(fmt_int(1_234_567), "1,234,567");
        assert_eq!(fmt_rate(12345.4), "12,345/s");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
