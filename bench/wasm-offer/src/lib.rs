//! The `offer` workload of `crates/snp-core/benches/offer.rs` (1,000,000 registrations
//! over 10,000 keys x 3 apps), as a library and, on `wasm32`, as a proxy-wasm module.
//!
//! Built with `cargo build --release --target wasm32-wasip1 -p snp-bench-wasm`, the module
//! is loaded by `snp-bench fig5` as an Envoy bootstrap wasm service (singleton, V8, the
//! runtime the filter uses). On VM start it runs the workload `passes` times (the plugin
//! configuration, a plain number; default 5) and logs one line per pass:
//!
//! ```text
//! snp-bench-wasm offer pass=1 registrations=1000000 keys=10000 nanos=123456789
//! ```
//!
//! Time comes from the host's wall clock (`proxy_get_current_time_nanoseconds`), read
//! before and after each pass; the engine itself reads no clock (time is passed in, as in
//! the filter). `snp-bench` runs [`run`] natively in the same process run for the ratio.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use snp_core::{DebounceConfig, Debouncer, Instant};

/// Registrations offered per pass (as in the core benchmark).
pub const REGISTRATIONS: usize = 1_000_000;
/// Distinct keys.
pub const KEYS: usize = 10_000;
/// Applications per key.
pub const APPS: usize = 3;

/// The interface and application names of the workload.
#[derive(Debug)]
pub struct Workload {
    interfaces: Vec<String>,
    apps: Vec<String>,
}

impl Default for Workload {
    fn default() -> Self {
        Self::new()
    }
}

impl Workload {
    /// The names, exactly as the core benchmark makes them.
    pub fn new() -> Self {
        Self {
            interfaces: (0..KEYS)
                .map(|i| format!("org.apache.dubbo.demo.service{}.DemoService{i}", i % 97))
                .collect(),
            apps: (0..APPS).map(|a| format!("demo-provider-{a}")).collect(),
        }
    }

    /// Offers every registration to a fresh debouncer (1 ms steps per 1,000) and returns
    /// how many were taken and the pending keys afterwards (`REGISTRATIONS`, `KEYS`).
    pub fn run(&self) -> (usize, usize) {
        let mut d = Debouncer::new(DebounceConfig::default());
        let mut accepted = 0;
        for i in 0..REGISTRATIONS {
            let now = Instant::from_millis((i / 1000) as u64);
            let iface = &self.interfaces[i % KEYS];
            let app = &self.apps[(i / KEYS) % APPS];
            accepted += usize::from(d.offer(now, "default", iface, app).is_ok());
        }
        (accepted, d.pending_keys())
    }
}

/// The log line of one pass (parsed by `snp-bench`).
pub fn pass_line(pass: usize, accepted: usize, keys: usize, nanos: u128) -> String {
    format!("snp-bench-wasm offer pass={pass} registrations={accepted} keys={keys} nanos={nanos}")
}

#[cfg(target_arch = "wasm32")]
mod module {
    use std::time::UNIX_EPOCH;

    use proxy_wasm::hostcalls as hc;
    use proxy_wasm::traits::{Context, RootContext};
    use proxy_wasm::types::LogLevel;

    use super::{pass_line, Workload};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Bench) });
    }}

    struct Bench;

    impl Context for Bench {}

    fn nanos() -> u128 {
        hc::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos())
    }

    impl RootContext for Bench {
        fn on_vm_start(&mut self, _size: usize) -> bool {
            let passes = hc::get_buffer(proxy_wasm::types::BufferType::VmConfiguration, 0, 64)
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(5);
            let w = Workload::new();
            for pass in 1..=passes {
                let start = nanos();
                let (accepted, keys) = w.run();
                let took = nanos().saturating_sub(start);
                let _ = hc::log(LogLevel::Warn, &pass_line(pass, accepted, keys, took));
            }
            let _ = hc::log(LogLevel::Warn, "snp-bench-wasm offer done");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_line_is_what_the_driver_parses() {
        assert_eq!(
            pass_line(2, 10, 3, 1234),
            "snp-bench-wasm offer pass=2 registrations=10 keys=3 nanos=1234"
        );
    }
}
