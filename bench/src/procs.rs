//! Child processes of the driver (Envoy, shims, the no-op server): started with their
//! output in a log file, measured through `/proc/<pid>/status`, stopped by their own pid
//! (SIGTERM, then SIGKILL) when dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::httpget;

/// A child process that is stopped when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Short name (log file stem).
    pub name: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    child: std::process::Child,
}

impl Proc {
    /// Starts `program args` with stdout and stderr appended to `dir/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        dir: &Path,
        cwd: &Path,
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `n` bytes of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(n);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// Its whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `VmRSS` and `VmHWM` (peak), in bytes.
    pub fn memory(&self) -> Result<Memory> {
        memory(self.pid())
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

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

/// A free TCP port on 127.0.0.1 (bound and released: a small race, as in the e2e harness).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> String {
    SocketAddr::from(([127, 0, 0, 1], port)).to_string()
}

/// Waits until `GET http://addr{path}` answers 200 (and, if given, its body contains
/// `body`), or `proc` exits, or `timeout` passes.
pub async fn wait_http(
    proc: &mut Proc,
    addr: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, text)) = httpget::get(addr, path).await {
            if body.is_none_or(|b| text.contains(b)) {
                return Ok(());
            }
        }
        if !proc.alive() {
            bail!("{} exited:\n{}", proc.name, proc.log_tail(3000));
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready at http://{addr}{path} after {timeout:?}:\n{}",
                proc.name,
                proc.log_tail(3000)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_tcp(proc: &mut Proc, addr: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if !proc.alive() {
            bail!("{} exited:\n{}", proc.name, proc.log_tail(3000));
        }
        if Instant::now() > deadline {
            bail!(
                "{} does not accept connections on {addr} after {timeout:?}",
                proc.name
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
