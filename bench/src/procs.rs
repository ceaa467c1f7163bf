//! Child processes of the driver (Envoy, shims, the no-op server), measured through
//! `/proc/<pid>`. Starting and stopping them is the test kit's
//! ([`snp_testkit::process`], re-exported here).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
pub use snp_testkit::process::{free_port, local, wait_http, wait_tcp, Proc};

/// Resident memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`, bytes.
    pub rss: u64,
    /// `VmHWM` (peak RSS), bytes.
    pub hwm: u64,
}

/// `VmRSS`/`VmHWM` of `pid` from `/proc/<pid>/status`.
pub fn memory(pid: u32) -> Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    Ok(parse_status(&text))
}

/// Parses `VmRSS`/`VmHWM` of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Memory {
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Memory {
        rss: kib("VmRSS:"),
        hwm: kib("VmHWM:"),
    }
}

/// CPU time (user + system, all threads) `pid` has used, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    parse_stat_cpu(&text, clock_ticks()).context("parse /proc/<pid>/stat")
}

/// `utime + stime` of a `/proc/<pid>/stat` line, with `ticks` clock ticks per second.
pub fn parse_stat_cpu(text: &str, ticks: u64) -> Option<Duration> {
    // Fields after the command name (which may hold spaces and parentheses): field 3 is
    // the state, 14 and 15 are utime and stime.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks.max(1) as f64,
    ))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_from_proc_status() {
        let m =
            parse_status("Name:\tenvoy\nVmHWM:\t  51200 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n");
        assert_eq!(
            m,
            Memory {
                rss: 40 * 1024 * 1024,
                hwm: 50 * 1024 * 1024
            }
        );
        let stat = "123 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
        assert!(cpu_time(std::process::id()).is_ok());
        let me = memory(std::process::id()).unwrap();
        assert!(me.rss > 0 && me.hwm >= me.rss);
    }
}
