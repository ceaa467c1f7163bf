//! Runs the Java test programs of `tests/dubbo-nacos` (real Dubbo 3 and nacos-client,
//! built by `tests/dubbo-nacos/build.sh`, which scripts/setup.sh runs) as processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The classpath of the Java programs. Missing is a failure, never a skip.
pub fn classpath() -> String {
    let path = root().join("target/tools/dubbo-nacos.classpath");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build the Java test programs with tests/dubbo-nacos/build.sh (scripts/setup.sh runs it)",
                path.display()
            )
        })
        .trim()
        .to_owned()
}

/// A Java program, its stdout lines collected, stderr in a file; killed on drop.
pub struct Java {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
}

impl Java {
    pub fn start(dir: &Path, name: &str, class: &str, args: &[String]) -> Java {
        let stderr = dir.join(format!("{name}.stderr"));
        // Dubbo and nacos-client keep caches and snapshots under the home directory: each
        // program gets a fresh one, so no test reads another run's state.
        let home = dir.join(format!("{name}.home"));
        std::fs::create_dir_all(&home).unwrap();
        let mut child = Command::new("java")
            .arg(format!("-Duser.home={}", home.display()))
            .args([
                "-Xss512k",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
            ])
            .arg(classpath())
            .arg(class)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("java must be installed (scripts/setup.sh installs it)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Java {
            child,
            lines,
            stderr,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn has(&self, prefix: &str) -> bool {
        self.lines().iter().any(|l| l.starts_with(prefix))
    }

    /// Waits until the program printed a line starting with `prefix`; panics with its log
    /// after `timeout`.
    pub async fn wait_for(&self, prefix: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.has(prefix) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {prefix:?} line within {timeout:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        format!(
            "stdout:\n{}\nstderr (last lines):\n{}",
            self.lines().join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Waits for the program to exit by itself; returns its `name value` lines.
    pub async fn finish(mut self, timeout: Duration) -> BTreeMap<String, String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the pipe.
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert!(status.success(), "exit {status}\n{}", self.log());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "did not finish in {timeout:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.lines()
            .iter()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl Drop for Java {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address a Nacos client is configured with: the client dials port + 1000.
pub fn client_addr(nacos: SocketAddr) -> String {
    format!("{}:{}", nacos.ip(), nacos.port() - 1000)
}
