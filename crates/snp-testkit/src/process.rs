//! Child processes (the shim binary, Envoy, the benchmark's servers): started with their
//! output in a log file, stopped by their own pid (SIGTERM, then SIGKILL) when dropped.
//!
//! Waits here are on the real clock: they wait for other processes.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http;

/// A child process that is stopped when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Short name (for messages; the log file stem when [`Proc::spawn`] names the log).
    pub name: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    child: std::process::Child,
}

impl Proc {
    /// Starts `program args` in `cwd` with stdout and stderr in `dir/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        dir: &Path,
        cwd: &Path,
    ) -> Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(cwd);
        Self::spawn_command(name, cmd, &dir.join(format!("{name}.log")))
    }

    /// Starts `cmd` (its program, arguments, environment and directory as set) with
    /// stdin closed and stdout and stderr in `log`.
    pub fn spawn_command(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {:?}", cmd.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            log: log.to_path_buf(),
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

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` bytes of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
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

    fn signal_term(&self) -> Result<()> {
        let pid = self.pid().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run kill")?
            .success();
        if !ok {
            bail!("kill -TERM {pid} ({}) failed", self.name);
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit without blocking the caller's runtime (its
    /// servers keep answering meanwhile); an error if it is still running after `within`.
    pub async fn terminate(&mut self, within: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        self.signal_term()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {within:?} of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL (blocking).
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = self.signal_term();
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

    /// SIGKILL at once, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: a small race; prefer port 0 where
/// the process reports the address it bound).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> String {
    SocketAddr::from(([127, 0, 0, 1], port)).to_string()
}

/// Polls `probe` every `every` until it holds; an error (with the log) if `proc` exits
/// first or `timeout` passes, saying it is not `what`.
async fn wait_for<F, Fut>(
    proc: &mut Proc,
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return Ok(());
        }
        if !proc.alive() {
            bail!("{} exited:\n{}", proc.name, proc.log_tail(3000));
        }
        if Instant::now() > deadline {
            bail!(
                "{} is not {what} after {timeout:?}:\n{}",
                proc.name,
                proc.log_tail(3000)
            );
        }
        tokio::time::sleep(every).await;
    }
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
    let what = format!("ready at http://{addr}{path}");
    wait_for(proc, &what, timeout, Duration::from_millis(50), || async {
        matches!(http::get(addr, path).await, Ok((200, text)) if body.is_none_or(|b| text.contains(b)))
    })
    .await
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_tcp(proc: &mut Proc, addr: &str, timeout: Duration) -> Result<()> {
    let what = format!("accepting connections on {addr}");
    wait_for(proc, &what, timeout, Duration::from_millis(20), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}

/// The `snp-shim` binary, started with `--log-format=json` and stopped when dropped.
#[derive(Debug)]
pub struct ShimBinary {
    /// The process.
    pub proc: Proc,
    /// Its gRPC address, as it logged it.
    pub grpc: SocketAddr,
    /// Its HTTP (operations) address, as it logged it.
    pub http: SocketAddr,
}

impl ShimBinary {
    /// Starts `exe` with `--log-format=json` and exactly `args` (which must not repeat
    /// `--log-format`; give `--grpc-addr`/`--http-addr` with port 0 for free ports), its
    /// output in `log`, without the in-cluster environment. Returns once it listens, with
    /// the addresses it logged; an error if it exits first or does not listen within 20 s.
    pub fn spawn(exe: &Path, log: &Path, args: &[String]) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("--log-format=json")
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST");
        let name = log.file_stem().map_or_else(
            || "snp-shim".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        let mut proc = Proc::spawn_command(&name, cmd, log)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = proc.log_text();
            if let Some(line) = text.lines().find(|l| l.contains("snp-shim listening")) {
                let (grpc, http) = listening_addrs(line)
                    .with_context(|| format!("snp-shim's listening line: {line}"))?;
                return Ok(Self { proc, grpc, http });
            }
            if let Some(status) = proc.exited() {
                bail!("snp-shim {args:?} exited ({status}):\n{text}");
            }
            if Instant::now() > deadline {
                bail!("snp-shim {args:?} did not listen within 20 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `GET /readyz` answers 200; an error (with the log) after `within` or
    /// if the process exits.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let http = self.http.to_string();
        wait_http(&mut self.proc, &http, "/readyz", None, within).await
    }

    /// Sends SIGTERM and waits for the exit (up to 30 s); returns whether it exited with 0.
    pub async fn terminate(&mut self) -> Result<bool> {
        Ok(self
            .proc
            .terminate(Duration::from_secs(30))
            .await?
            .success())
    }
}

/// The gRPC and HTTP addresses of the shim's JSON `snp-shim listening` log line.
pub fn listening_addrs(line: &str) -> Result<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).context("not a JSON log line")?;
    let addr = |key: &str| -> Result<SocketAddr> {
        v[key]
            .as_str()
            .with_context(|| format!("no {key}"))?
            .parse()
            .with_context(|| format!("bad {key}"))
    };
    Ok((addr("grpc_addr")?, addr("http_addr")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let line = r#"{"level":"INFO","fields":{"message":"snp-shim listening"},"grpc_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#;
        let (g, h) = listening_addrs(line).unwrap();
        assert_eq!((g.port(), h.port()), (1, 2));
        assert!(listening_addrs(r#"{"grpc_addr":"127.0.0.1:1"}"#).is_err());
    }
}
