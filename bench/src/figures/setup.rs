//! The processes a figure starts: shims, the no-op server, Envoy (through the test kit's
//! one way of starting each) and a real API server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use snp_testkit::apiserver::Script;
use snp_testkit::envoy::{EnvoyProcess, EnvoySpec};
use snp_testkit::process::{free_port, local, wait_tcp, Proc, ShimBinary};

use super::Env;
use crate::kube::KubeTarget;
use crate::procs::Memory;

/// A shim process.
pub struct Shim {
    /// The process.
    pub proc: Proc,
    /// gRPC address.
    pub grpc: String,
    /// HTTP (metrics) address.
    pub http: String,
}

impl Shim {
    /// Starts `snp-shim` with the embedded store in a fresh data directory, or with the
    /// Kubernetes store when `kube` is given, on ephemeral ports. Waits for `/readyz`.
    pub async fn start(env: &Env, name: &str, kube: Option<&Path>, extra: &[&str]) -> Result<Self> {
        let mut args = vec![
            "--grpc-addr=127.0.0.1:0".to_owned(),
            "--http-addr=127.0.0.1:0".to_owned(),
            format!("--node-name={name}"),
        ];
        match kube {
            Some(k) => {
                args.push("--store=kubernetes".into());
                args.push(format!("--kubeconfig={}", k.display()));
                // The journal's directory.
                let data = env.dir.join(format!("{name}-data"));
                let _ = std::fs::remove_dir_all(&data);
                args.push(format!("--data-dir={}", data.display()));
            }
            None => {
                let data = env.dir.join(format!("{name}-data"));
                let _ = std::fs::remove_dir_all(&data);
                args.push("--store=embedded".into());
                args.push(format!("--data-dir={}", data.display()));
            }
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = env.dir.join(format!("{name}.log"));
        let mut shim = ShimBinary::spawn(&env.shim, &log, &args)?;
        shim.wait_ready(Duration::from_secs(60)).await?;
        let grpc = shim.grpc.to_string();
        wait_tcp(&mut shim.proc, &grpc, Duration::from_secs(10)).await?;
        Ok(Self {
            grpc,
            http: shim.http.to_string(),
            proc: shim.proc,
        })
    }
}

/// Starts the no-op server; returns it and its gRPC address.
pub async fn start_noop(env: &Env, name: &str) -> Result<(Proc, String)> {
    let addr = local(free_port()?);
    let mut p = Proc::spawn(
        name,
        &env.noop,
        &[format!("--addr={addr}")],
        &env.dir,
        &env.root,
    )?;
    wait_tcp(&mut p, &addr, Duration::from_secs(10)).await?;
    Ok((p, addr))
}

/// An Envoy process of a figure.
pub struct Envoy {
    /// The process and its addresses.
    pub envoy: EnvoyProcess,
    /// Workers.
    pub concurrency: usize,
}

impl std::ops::Deref for Envoy {
    type Target = EnvoyProcess;
    fn deref(&self) -> &EnvoyProcess {
        &self.envoy
    }
}

impl std::ops::DerefMut for Envoy {
    fn deref_mut(&mut self) -> &mut EnvoyProcess {
        &mut self.envoy
    }
}

/// The snp filter on Envoy's `apps` listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Not in the chain.
    Off,
    /// In the chain, as `envoy/envoy.yaml` has it: enabled only on the registration routes.
    On,
    /// In the chain and run on every stream (`envoy.yaml` before the route scoping).
    Everywhere,
    /// In the chain, with HTTP/2 to the internal ack listener.
    AckH2,
}

/// Ports of Envoy's upstreams.
#[derive(Debug, Clone, Copy)]
pub struct Upstreams {
    /// The shim's gRPC port.
    pub shim: u16,
    /// The `app_grpc` upstream (the no-op server).
    pub app_grpc: u16,
}

/// The port of `host:port`.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

impl Envoy {
    /// Starts Envoy from `envoy/envoy.yaml` with `filter` on the `apps` listener (and
    /// `nofilter`: a second listener without it), `concurrency` workers.
    pub async fn start(
        env: &Env,
        name: &str,
        filter: Filter,
        nofilter: bool,
        concurrency: usize,
        up: Upstreams,
        bootstrap_wasm: Option<(String, String)>,
    ) -> Result<Self> {
        let mut spec = spec(env, filter, up)?;
        spec.nofilter_port = if nofilter { Some(free_port()?) } else { None };
        spec.bootstrap_wasm = bootstrap_wasm;
        Self::run(env, name, &spec, concurrency).await
    }

    /// Starts Envoy with the filter as shipped and `settings` over its configuration.
    pub async fn start_with(
        env: &Env,
        name: &str,
        concurrency: usize,
        up: Upstreams,
        settings: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        let mut spec = spec(env, Filter::On, up)?;
        spec.filter_settings = settings;
        Self::run(env, name, &spec, concurrency).await
    }

    async fn run(env: &Env, name: &str, spec: &EnvoySpec, concurrency: usize) -> Result<Self> {
        let envoy =
            EnvoyProcess::start(&env.envoy, &env.root, &env.dir, name, spec, concurrency).await?;
        Ok(Self { envoy, concurrency })
    }
}

/// The configuration of an Envoy with `filter`, on free ports, without extras.
fn spec(env: &Env, filter: Filter, up: Upstreams) -> Result<EnvoySpec> {
    Ok(EnvoySpec {
        admin_port: free_port()?,
        apps_port: free_port()?,
        filter: filter != Filter::Off,
        nofilter_port: None,
        filter_wasm: env.filter_wasm.display().to_string(),
        shim_port: up.shim,
        app_grpc_port: up.app_grpc,
        app_http_port: free_port()?,
        bootstrap_wasm: None,
        unscoped: filter == Filter::Everywhere,
        ack_h2: filter == Filter::AckH2,
        filter_settings: serde_json::Map::new(),
    })
}

/// A real API server (`scripts/k8s-apiserver.sh`), stopped when dropped.
pub struct ApiServer {
    root: PathBuf,
    /// Its directory.
    pub dir: PathBuf,
    /// The administrator's kubeconfig.
    pub kubeconfig: PathBuf,
    /// The shim's service account (`deploy/rbac.yaml`): what the shims under test get.
    pub shim_kubeconfig: PathBuf,
    /// The group the CRD was registered under.
    pub group: String,
}

impl ApiServer {
    /// Builds (if needed) and starts the server in `env.dir/<name>`, registers the CRD
    /// under the seed's group.
    pub async fn start(env: &Env, name: &str) -> Result<Self> {
        let dir = env.dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let script = Script::new(&env.root);
        let at = dir.clone();
        tokio::task::spawn_blocking(move || script.start(&at))
            .await
            .context("the API server's start")?
            .context("the API server did not start")?;
        let s = Self {
            root: env.root.clone(),
            kubeconfig: dir.join("kubeconfig"),
            shim_kubeconfig: dir.join("shim.kubeconfig"),
            dir,
            group: snp_shim::crd::DEFAULT_GROUP.to_owned(),
        };
        let client = crate::kube::client(&s.kubeconfig).await?;
        crate::kube::register_crd(&client, &s.group).await?;
        Ok(s)
    }

    /// The load generator's view of it.
    pub fn target(&self) -> KubeTarget {
        KubeTarget {
            kubeconfig: self.kubeconfig.clone(),
            group: self.group.clone(),
        }
    }

    /// Stops it (`scripts/k8s-apiserver.sh stop`): an outage.
    pub fn stop(&self) -> Result<()> {
        Script::new(&self.root).stop(&self.dir)
    }

    /// Starts it again on the same port, certificates and data.
    pub fn restart(&self) -> Result<()> {
        Script::new(&self.root).start(&self.dir).map(drop)
    }

    /// Its process's memory.
    pub fn memory(&self) -> Result<Memory> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("pid"))?
            .trim()
            .parse()?;
        crate::procs::memory(pid)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Script::new(&self.root).stop(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_of_an_address() {
        assert_eq!(port_of("127.0.0.1:15051"), 15051);
    }
}
