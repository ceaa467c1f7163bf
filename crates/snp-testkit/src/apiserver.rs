//! The real Kubernetes API server of the tests and benchmarks (kube-apiserver over an
//! embedded etcd, built from Go modules), driven through `scripts/k8s-apiserver.sh`: one
//! way to start it, stop it, and run its `kubectl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// `scripts/k8s-apiserver.sh` of a checkout.
#[derive(Debug, Clone)]
pub struct Script(PathBuf);

impl Script {
    /// The script of the checkout at `root`.
    pub fn new(root: &Path) -> Self {
        Self(root.join("scripts/k8s-apiserver.sh"))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Runs the script with `args`, `stdin` (if any) on its standard input; returns its
    /// output whatever its exit status.
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        use std::io::Write;
        let mut child = Command::new(&self.0)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {}", self.0.display()))?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .context("piped stdin")?
                .write_all(text.as_bytes())
                .with_context(|| format!("write to {} {args:?}", self.0.display()))?;
        }
        child
            .wait_with_output()
            .with_context(|| format!("wait for {} {args:?}", self.0.display()))
    }

    /// Runs the script with `args`; its stdout, trimmed, or an error with its output if
    /// it fails.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args, None)?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if !out.status.success() {
            bail!(
                "{} {args:?} failed ({}):\n{stdout}\n{stderr}",
                self.0.display(),
                out.status
            );
        }
        Ok(stdout.trim().to_owned())
    }

    /// Builds (if needed) and starts the server in `dir`; on a restart it reuses the
    /// port, certificates and data of the previous run. Returns its URL.
    pub fn start(&self, dir: &Path) -> Result<String> {
        self.run(&["start", utf8(dir)?])
    }

    /// Stops the server in `dir` (SIGTERM, waits for it to exit).
    pub fn stop(&self, dir: &Path) -> Result<()> {
        self.run(&["stop", utf8(dir)?]).map(drop)
    }
}

fn utf8(dir: &Path) -> Result<&str> {
    dir.to_str()
        .with_context(|| format!("{} is not UTF-8", dir.display()))
}
