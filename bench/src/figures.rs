//! The figures of `BENCHMARKS.md`, each run end to end by `snp-bench <figure>`: it starts
//! what the figure needs (Envoy with and without the filter, shims, the no-op server, a
//! real API server through `scripts/k8s-apiserver.sh`), drives it with the load generator
//! in this process, prints the figure's tables, and returns its verdicts.
//!
//! Comparisons are ratios of two set-ups measured in the same run, alternated A/B/A/B
//! (`rounds` times, `round` each) so that drift of a noisy machine hits both sides alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::envoy::{write_config, EnvoySpec};
use crate::kube::KubeTarget;
use crate::load::{self, LoadConfig, LoadReport, Rpc, TargetKind};
use crate::naive::{self, NaiveMode};
use crate::procs::{free_port, local, wait_http, wait_tcp, Memory, Proc};
use crate::stats::{fmt_dur, fmt_int, fmt_mib, fmt_rate, median, Latency};
use crate::table::{verdict, Table};
use crate::workload::{unique_prefix, Rollout};

/// Where everything is, and how long to measure.
#[derive(Debug, Clone)]
pub struct Env {
    /// Repository root.
    pub root: PathBuf,
    /// Work directory: configurations, logs, data.
    pub dir: PathBuf,
    /// Envoy binary.
    pub envoy: PathBuf,
    /// `snp-shim` binary (release build).
    pub shim: PathBuf,
    /// `snp-noop-server` binary.
    pub noop: PathBuf,
    /// The filter's `.wasm`.
    pub filter_wasm: PathBuf,
    /// The offer benchmark module's `.wasm` (figure 5).
    pub bench_wasm: PathBuf,
    /// Envoy `--concurrency` (workers) of figures 1 and 2.
    pub envoy_concurrency: usize,
    /// Length of one A or B round of the throughput figures.
    pub round: Duration,
    /// A/B round pairs.
    pub rounds: usize,
    /// Smaller sizes (a smoke run of the harness, not figures to publish).
    pub quick: bool,
    /// Figure 5: also run `cargo bench -p snp-core --bench offer`.
    pub cargo_bench: bool,
    /// Figure 7: also the 100k growing-keys run against the API server.
    pub kube_full: bool,
}

/// One checked (or reported) measure of a figure.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Figure number and measure.
    pub measure: String,
    /// The target, as text.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// `None`: reported, no target.
    pub pass: Option<bool>,
}

impl Verdict {
    fn check(
        measure: impl Into<String>,
        target: impl Into<String>,
        measured: impl Into<String>,
        pass: bool,
    ) -> Self {
        Self {
            measure: measure.into(),
            target: target.into(),
            measured: measured.into(),
            pass: Some(pass),
        }
    }

    fn info(measure: impl Into<String>, measured: impl Into<String>) -> Self {
        Self {
            measure: measure.into(),
            target: "(none)".into(),
            measured: measured.into(),
            pass: None,
        }
    }
}

/// The summary table of verdicts.
pub fn summary(verdicts: &[Verdict]) -> Table {
    let mut t = Table::new(&["measure", "target", "measured", "verdict"]);
    for v in verdicts {
        t.row([
            v.measure.clone(),
            v.target.clone(),
            v.measured.clone(),
            v.pass.map_or("info", verdict).to_owned(),
        ]);
    }
    t
}

fn section(title: &str) {
    println!("\n## {title}\n");
}

fn print_table(caption: &str, t: &Table) {
    if !caption.is_empty() {
        println!("{caption}\n");
    }
    println!("{t}");
}

// ----------------------------------------------------------------------------------------
// Processes

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
    /// Kubernetes store when `kube` is given. Waits for `/readyz`.
    pub async fn start(env: &Env, name: &str, kube: Option<&Path>, extra: &[&str]) -> Result<Self> {
        let grpc = local(free_port()?);
        let http = local(free_port()?);
        let mut args = vec![
            format!("--grpc-addr={grpc}"),
            format!("--http-addr={http}"),
            format!("--node-name={name}"),
            "--log-format=json".to_owned(),
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
        let mut proc = Proc::spawn(name, &env.shim, &args, &env.dir, &env.root)?;
        wait_http(&mut proc, &http, "/readyz", None, Duration::from_secs(60)).await?;
        wait_tcp(&mut proc, &grpc, Duration::from_secs(10)).await?;
        Ok(Self { proc, grpc, http })
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

/// An Envoy process.
pub struct Envoy {
    /// The process.
    pub proc: Proc,
    /// Admin address.
    pub admin: String,
    /// The `apps` listener.
    pub apps: String,
    /// The `apps_nofilter` listener, if configured.
    pub nofilter: Option<String>,
    /// Workers.
    pub concurrency: usize,
}

/// The snp filter on Envoy's `apps` listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Not in the chain.
    Off,
    /// In the chain, as `envoy/envoy.yaml` has it.
    On,
    /// In the chain but enabled only on the registration routes.
    RouteScoped,
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

fn port_of(addr: &str) -> u16 {
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
        let spec = EnvoySpec {
            admin_port: free_port()?,
            apps_port: free_port()?,
            filter: filter != Filter::Off,
            nofilter_port: if nofilter { Some(free_port()?) } else { None },
            filter_wasm: env.filter_wasm.display().to_string(),
            shim_port: up.shim,
            app_grpc_port: up.app_grpc,
            app_http_port: free_port()?,
            bootstrap_wasm,
            route_scoped: filter == Filter::RouteScoped,
            ack_h2: filter == Filter::AckH2,
        };
        let path = env.dir.join(format!("{name}.json"));
        write_config(&env.root, &spec, &path)?;
        let args: Vec<String> = vec![
            "-c".into(),
            path.display().to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
            "--disable-hot-restart".into(),
            "-l".into(),
            "warn".into(),
        ];
        let mut proc = Proc::spawn(name, &env.envoy, &args, &env.dir, &env.root)?;
        let admin = local(spec.admin_port);
        wait_http(
            &mut proc,
            &admin,
            "/ready",
            Some("LIVE"),
            Duration::from_secs(60),
        )
        .await?;
        let apps = local(spec.apps_port);
        wait_tcp(&mut proc, &apps, Duration::from_secs(10)).await?;
        let nofilter = spec.nofilter_port.map(local);
        if let Some(n) = &nofilter {
            wait_tcp(&mut proc, n, Duration::from_secs(10)).await?;
        }
        Ok(Self {
            proc,
            admin,
            apps,
            nofilter,
            concurrency,
        })
    }

    /// Fails if a wasm VM failed (a panic kills the VM and every stream on it).
    pub fn check_vm_healthy(&mut self) -> Result<()> {
        let log = self.proc.log_text();
        for marker in [
            "panicked at",
            "Wasm VM failed",
            "wasm vm failed",
            "Uncaught RuntimeError",
        ] {
            if log.contains(marker) {
                bail!("{}: wasm VM failure in the log ({marker})", self.proc.name);
            }
        }
        if !self.proc.alive() {
            bail!("{} exited", self.proc.name);
        }
        Ok(())
    }
}

/// A real API server (`scripts/k8s-apiserver.sh`), stopped when dropped.
pub struct ApiServer {
    root: PathBuf,
    /// Its directory.
    pub dir: PathBuf,
    /// Its kubeconfig.
    pub kubeconfig: PathBuf,
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
        let script = env.root.join("scripts/k8s-apiserver.sh");
        let out = tokio::process::Command::new(&script)
            .arg("start")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "the API server did not start:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let s = Self {
            root: env.root.clone(),
            kubeconfig: dir.join("kubeconfig"),
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
        let _ = std::process::Command::new(self.root.join("scripts/k8s-apiserver.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

// ----------------------------------------------------------------------------------------
// Load helpers

fn rollout(
    pods: usize,
    interfaces: usize,
    namespaces: usize,
    jitter: Duration,
    tag: &str,
) -> Rollout {
    Rollout {
        pods,
        interfaces,
        namespaces,
        apps: 1,
        prefix: unique_prefix(tag),
        jitter,
        seed: 1,
    }
}

/// A closed-loop load config with no metrics: throughput and latency only.
fn closed(
    targets: Vec<String>,
    kind: TargetKind,
    rpc: Rpc,
    concurrency: usize,
    connections: usize,
    d: Duration,
) -> LoadConfig {
    LoadConfig {
        kind,
        targets,
        rollout: rollout(200, 10, 1, Duration::ZERO, "ab"),
        concurrency,
        connections,
        rpc,
        duration: Some(d),
        shim_metrics: vec![],
        envoy_admin: None,
        kube: None,
        converge_shims: vec![],
        converge_timeout: Duration::from_secs(30),
    }
}

/// The sum of several closed-loop rounds of one side.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    /// Calls answered OK.
    pub ok: u64,
    /// Failed calls.
    pub errors: u64,
    /// Time measured.
    pub elapsed: Duration,
    /// Latency over all rounds.
    pub latency: Latency,
    /// Throughput of each round.
    pub per_round: Vec<f64>,
    /// CPU time the measured server processes used during the rounds.
    pub cpu: Duration,
}

impl Agg {
    fn add(&mut self, r: &LoadReport, cpu: Duration) {
        self.ok += r.ok;
        self.errors += r.error_count();
        self.elapsed += r.elapsed;
        self.latency.merge(&r.latency);
        self.per_round.push(r.throughput());
        self.cpu += cpu;
    }

    /// Calls per second over all rounds.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU per call.
    pub fn cpu_per_call(&self) -> Duration {
        self.cpu
            .checked_div(u32::try_from(self.ok.max(1)).unwrap_or(u32::MAX))
            .unwrap_or_default()
    }

    fn row(&self, label: &str) -> Vec<String> {
        let rounds: Vec<String> = self
            .per_round
            .iter()
            .map(|r| fmt_int(r.round() as u64))
            .collect();
        vec![
            label.to_owned(),
            fmt_int(self.ok),
            fmt_int(self.errors),
            fmt_rate(self.throughput()),
            rounds.join(" / "),
            fmt_dur(self.latency.p50()),
            fmt_dur(self.latency.p99()),
            fmt_dur(self.latency.p999()),
            format!("{:.1} µs", self.cpu_per_call().as_secs_f64() * 1e6),
        ]
    }
}

fn ab_table(rows: &[(&str, &Agg)]) -> Table {
    let mut t = Table::new(&[
        "set-up",
        "calls",
        "errors",
        "throughput",
        "per round (/s)",
        "p50",
        "p99",
        "p999",
        "server CPU / call",
    ]);
    for (label, a) in rows {
        t.row(a.row(label));
    }
    t
}

fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter()
        .filter_map(|p| crate::procs::cpu_time(*p).ok())
        .sum()
}

async fn measured(cfg: &LoadConfig, pids: &[u32]) -> Result<(LoadReport, Duration)> {
    let before = cpu_of(pids);
    let r = load::run(cfg).await?;
    Ok((r, cpu_of(pids).saturating_sub(before)))
}

/// Alternates A and B `rounds` times (A B A B ...), after a short warm-up of each.
/// `pids_a`/`pids_b`: the server processes whose CPU time is charged to each side.
async fn ab(
    env: &Env,
    a: &LoadConfig,
    b: &LoadConfig,
    pids_a: &[u32],
    pids_b: &[u32],
) -> Result<(Agg, Agg)> {
    let mut v = rotate(env, &[(a, pids_a), (b, pids_b)]).await?;
    let rb = v.pop().unwrap_or_default();
    let ra = v.pop().unwrap_or_default();
    Ok((ra, rb))
}

/// Runs the set-ups in turn (A B C A B C ...) `rounds` times, after a short warm-up of
/// each, charging each the CPU time of its processes.
async fn rotate(env: &Env, setups: &[(&LoadConfig, &[u32])]) -> Result<Vec<Agg>> {
    for (cfg, _) in setups {
        let mut warm = (*cfg).clone();
        warm.duration = Some(Duration::from_millis(500));
        load::run(&warm).await?;
    }
    let mut out = vec![Agg::default(); setups.len()];
    for _ in 0..env.rounds.max(1) {
        for (i, (cfg, pids)) in setups.iter().enumerate() {
            let (r, cpu) = measured(cfg, pids).await?;
            out[i].add(&r, cpu);
        }
    }
    Ok(out)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ----------------------------------------------------------------------------------------
// Figure 1

/// Figure 1: a registration answered inside Envoy by the filter, against the same call
/// routed by the same Envoy to the shim. Target: p50 ratio <= 0.8.
pub async fn fig1(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 1: ack latency in the proxy");
    let shim = Shim::start(env, "fig1-shim", None, &[]).await?;
    let up = Upstreams {
        shim: port_of(&shim.grpc),
        app_grpc: free_port()?,
    };
    let w = env.envoy_concurrency;
    let mut envoy = Envoy::start(env, "fig1-envoy", Filter::On, true, w, up, None).await?;
    let mut h2 = Envoy::start(env, "fig1-envoy-ack-h2", Filter::AckH2, false, w, up, None).await?;
    let nofilter = envoy.nofilter.clone().context("no nofilter listener")?;
    println!(
        "One Envoy ({w} workers) from `envoy/envoy.yaml` with two listeners: `apps` with the snp filter (answers inside Envoy) and `apps_nofilter`, the same without the filter (the same call, routed by the same Envoy to the shim; embedded store, on the same machine). A second Envoy, identical but for HTTP/2 on the `snp_ack` cluster (the internal ack listener), is an alternative, not what `envoy.yaml` ships. Closed loop of registrations (flavours A and B alternating) over the calls of a 200-pod x 10-interface rollout; {} rounds of {:?} per set-up, in turn. CPU is Envoy's and the shim's together.\n",
        env.rounds, env.round
    );
    let mut verdicts = Vec::new();
    let mut t = Table::new(&[
        "concurrency",
        "set-up",
        "calls",
        "throughput",
        "p50",
        "p99",
        "p999",
        "CPU / call (Envoy + shim)",
    ]);
    let mut rt = Table::new(&[
        "concurrency",
        "p50 filter / shim",
        "p99 filter / shim",
        "throughput filter / shim",
        "target (p50)",
        "verdict",
        "alternative (HTTP/2 ack): p50 / shim",
    ]);
    for (c, conns) in [(1usize, 1usize), (32, 2)] {
        let cfg = |addr: &str| {
            closed(
                vec![addr.to_owned()],
                TargetKind::Envoy,
                Rpc::Mixed,
                c,
                conns,
                env.round,
            )
        };
        let (a, b, d) = (cfg(&envoy.apps), cfg(&nofilter), cfg(&h2.apps));
        let p1 = [envoy.proc.pid(), shim.proc.pid()];
        let p2 = [h2.proc.pid(), shim.proc.pid()];
        let mut v = rotate(env, &[(&a, &p1), (&b, &p1), (&d, &p2)]).await?;
        let (fd, fb, fa) = (
            v.pop().unwrap_or_default(),
            v.pop().unwrap_or_default(),
            v.pop().unwrap_or_default(),
        );
        for (label, x) in [
            ("filter answers (ack in Envoy), envoy.yaml", &fa),
            ("routed by Envoy to the shim", &fb),
            (
                "alternative: filter answers, HTTP/2 to the ack listener",
                &fd,
            ),
        ] {
            t.row([
                c.to_string(),
                label.to_owned(),
                fmt_int(x.ok),
                fmt_rate(x.throughput()),
                fmt_dur(x.latency.p50()),
                fmt_dur(x.latency.p99()),
                fmt_dur(x.latency.p999()),
                format!("{:.1} µs", x.cpu_per_call().as_secs_f64() * 1e6),
            ]);
            if x.errors > 0 {
                bail!("figure 1: {} errors ({label})", x.errors);
            }
        }
        let p50 = ratio(secs(fa.latency.p50()), secs(fb.latency.p50()));
        let p99 = ratio(secs(fa.latency.p99()), secs(fb.latency.p99()));
        let tp = ratio(fa.throughput(), fb.throughput());
        let p50_d = ratio(secs(fd.latency.p50()), secs(fb.latency.p50()));
        rt.row([
            c.to_string(),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
            format!("{tp:.2}"),
            "<= 0.80".into(),
            verdict(p50 <= 0.8).into(),
            format!("{p50_d:.2} ({})", verdict(p50_d <= 0.8)),
        ]);
        verdicts.push(Verdict::check(
            format!("1. ack latency p50, filter / shim via Envoy (concurrency {c})"),
            "<= 0.80",
            format!(
                "{p50:.2} ({} vs {})",
                fmt_dur(fa.latency.p50()),
                fmt_dur(fb.latency.p50())
            ),
            p50 <= 0.8,
        ));
        verdicts.push(Verdict::info(
            format!("1. alternative, HTTP/2 ack cluster: p50 / shim (concurrency {c})"),
            format!("{p50_d:.2} ({})", fmt_dur(fd.latency.p50())),
        ));
    }
    envoy.check_vm_healthy()?;
    h2.check_vm_healthy()?;
    print_table("", &t);
    print_table("Ratios (same run):", &rt);
    Ok(verdicts)
}

// ----------------------------------------------------------------------------------------
// Figure 2

/// Figure 2: non-registration gRPC through Envoy with the filter loaded and without it.
/// Targets: throughput ratio >= 0.95, p99 ratio <= 1.10.
pub async fn fig2(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 2: cost for other traffic");
    let (_noop, noop_addr) = start_noop(env, "fig2-noop").await?;
    let up = Upstreams {
        shim: free_port()?,
        app_grpc: port_of(&noop_addr),
    };
    let w = env.envoy_concurrency;
    let mut with = Envoy::start(env, "fig2-envoy-filter", Filter::On, false, w, up, None).await?;
    let mut without =
        Envoy::start(env, "fig2-envoy-plain", Filter::Off, false, w, up, None).await?;
    let mut scoped = Envoy::start(
        env,
        "fig2-envoy-route-scoped",
        Filter::RouteScoped,
        false,
        w,
        up,
        None,
    )
    .await?;
    let (c, conns) = (32, 4);
    println!(
        "Envoys ({w} workers each) from `envoy/envoy.yaml`: with the snp filter in the chain (as shipped), without it, and (an alternative, not what `envoy.yaml` does) with the filter enabled only on the four registration routes (`disabled: true` on the filter, a per-route `FilterConfig` enabling it). All route `snp.v1.MappingService/GetMappings` (not a registration) to the same no-op upstream. Closed loop, concurrency {c}, {conns} connections; {} rounds of {:?} per set-up, in turn.\n",
        env.rounds, env.round
    );
    let cfg = |addr: &str| {
        closed(
            vec![addr.to_owned()],
            TargetKind::Envoy,
            Rpc::Get,
            c,
            conns,
            env.round,
        )
    };
    let (a, b, d) = (cfg(&with.apps), cfg(&without.apps), cfg(&scoped.apps));
    let (pa, pb, pd) = ([with.proc.pid()], [without.proc.pid()], [scoped.proc.pid()]);
    let mut v = rotate(env, &[(&a, &pa), (&b, &pb), (&d, &pd)]).await?;
    let (fd, fb, fa) = (
        v.pop().unwrap_or_default(),
        v.pop().unwrap_or_default(),
        v.pop().unwrap_or_default(),
    );
    // The route-scoped filter still answers registrations.
    let before =
        crate::load::EnvoyCounters::parse(&crate::httpget::get_ok(&scoped.admin, "/stats").await?);
    let reg = load::run(&closed(
        vec![scoped.apps.clone()],
        TargetKind::Envoy,
        Rpc::Mixed,
        4,
        1,
        Duration::from_millis(300),
    ))
    .await?;
    let after =
        crate::load::EnvoyCounters::parse(&crate::httpget::get_ok(&scoped.admin, "/stats").await?);
    let scoped_answers = after
        .registrations_ok
        .saturating_sub(before.registrations_ok);
    if reg.error_count() > 0 || scoped_answers != reg.ok {
        bail!(
            "figure 2: the route-scoped filter answered {scoped_answers} of {} registrations ({:?})",
            reg.ok,
            reg.first_error
        );
    }
    for e in [&mut with, &mut without, &mut scoped] {
        e.check_vm_healthy()?;
    }
    if fa.errors + fb.errors + fd.errors > 0 {
        bail!(
            "figure 2: {} + {} + {} errors",
            fa.errors,
            fb.errors,
            fd.errors
        );
    }
    print_table(
        "",
        &ab_table(&[
            ("Envoy with the snp filter (envoy.yaml)", &fa),
            ("Envoy without it", &fb),
            ("alternative: filter on registration routes only", &fd),
        ]),
    );
    println!(
        "The route-scoped Envoy answered all {} registrations sent to it afterwards in its filter (`snp.registrations.ok`).\n",
        reg.ok
    );
    let tp = ratio(fa.throughput(), fb.throughput());
    let p99 = ratio(secs(fa.latency.p99()), secs(fb.latency.p99()));
    let p50 = ratio(secs(fa.latency.p50()), secs(fb.latency.p50()));
    let cpu = ratio(secs(fa.cpu_per_call()), secs(fb.cpu_per_call()));
    let tp_d = ratio(fd.throughput(), fb.throughput());
    let p99_d = ratio(secs(fd.latency.p99()), secs(fb.latency.p99()));
    let cpu_d = ratio(secs(fd.cpu_per_call()), secs(fb.cpu_per_call()));
    let mut rt = Table::new(&[
        "ratio to Envoy without the filter",
        "with filter (envoy.yaml)",
        "target",
        "verdict",
        "route-scoped alternative",
    ]);
    rt.row([
        "throughput".into(),
        format!("{tp:.3}"),
        ">= 0.95".into(),
        verdict(tp >= 0.95).to_owned(),
        format!("{tp_d:.3} ({})", verdict(tp_d >= 0.95)),
    ]);
    rt.row([
        "p99".into(),
        format!("{p99:.3}"),
        "<= 1.10".into(),
        verdict(p99 <= 1.10).to_owned(),
        format!("{p99_d:.3} ({})", verdict(p99_d <= 1.10)),
    ]);
    rt.row([
        "p50".into(),
        format!("{p50:.3}"),
        "".into(),
        "info".into(),
        format!(
            "{:.3}",
            ratio(secs(fd.latency.p50()), secs(fb.latency.p50()))
        ),
    ]);
    rt.row([
        "Envoy CPU per call".into(),
        format!("{cpu:.3}"),
        "".into(),
        "info".into(),
        format!("{cpu_d:.3}"),
    ]);
    print_table("Ratios (same run):", &rt);
    Ok(vec![
        Verdict::check(
            "2. other traffic: throughput with / without filter",
            ">= 0.95",
            format!("{tp:.3}"),
            tp >= 0.95,
        ),
        Verdict::check(
            "2. other traffic: p99 with / without filter",
            "<= 1.10",
            format!("{p99:.3}"),
            p99 <= 1.10,
        ),
        Verdict::info(
            "2. other traffic: Envoy CPU per call with / without filter",
            format!(
                "{cpu:.3} ({:.1} vs {:.1} µs)",
                fa.cpu_per_call().as_secs_f64() * 1e6,
                fb.cpu_per_call().as_secs_f64() * 1e6
            ),
        ),
        Verdict::info(
            "2. alternative, filter on registration routes only: throughput / p99 / CPU ratios",
            format!("{tp_d:.3} / {p99_d:.3} / {cpu_d:.3}"),
        ),
    ])
}

// ----------------------------------------------------------------------------------------
// Figure 3

/// Figure 3: API writes per registration for a 200 x 10 rollout through 4 shims, against
/// naive writers. Target: <= 0.01.
pub async fn fig3(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 3: write amplification against a real API server");
    let (pods, ifaces) = if env.quick { (50, 4) } else { (200, 10) };
    let api = ApiServer::start(env, "fig3-apiserver").await?;
    let mut shims = Vec::new();
    for i in 0..4 {
        shims.push(Shim::start(env, &format!("fig3-shim-{i}"), Some(&api.kubeconfig), &[]).await?);
    }
    let (c, jitter) = (64, Duration::from_secs(3));
    println!(
        "A rollout of {pods} pods x {ifaces} interfaces (one deployment: one application) in one namespace, pods starting within {jitter:?}, {c} calls in flight at most. snp: the pods are spread over 4 `snp-shim --store kubernetes` processes (default flags: seed debounce windows, --kube-qps 20). Naive: `snp-naive-writer`, the same rollout, each registration a read-modify-write against the API server (no client-side rate limit, {c} in flight). Requests are the API server's own `apiserver_request_total` for servicenamemappings.\n"
    );
    let cfg = LoadConfig {
        kind: TargetKind::Shim,
        targets: shims.iter().map(|s| s.grpc.clone()).collect(),
        rollout: rollout(pods, ifaces, 1, jitter, "fig3"),
        concurrency: c,
        connections: 1,
        rpc: Rpc::Mixed,
        duration: None,
        shim_metrics: shims.iter().map(|s| s.http.clone()).collect(),
        envoy_admin: None,
        kube: Some(api.target()),
        converge_shims: shims.iter().map(|s| s.grpc.clone()).collect(),
        converge_timeout: Duration::from_secs(60),
    };
    let snp = load::run(&cfg).await?;
    if snp.error_count() > 0 || snp.missing > 0 {
        bail!(
            "figure 3: snp run failed: {:?} {:?}, {} missing",
            snp.errors,
            snp.first_error,
            snp.missing
        );
    }
    let client = crate::kube::client(&api.kubeconfig).await?;
    let stored = crate::kube::list_mappings(&client, &api.group, &cfg.rollout.prefix).await?;
    let expected = cfg.rollout.expected();
    let exact = stored == expected;
    print_table("snp (load generator's report):", &snp.table("snp: 4 shims"));
    let regs = cfg.rollout.registrations() as f64;
    let api_snp = snp.api.clone().unwrap_or_default();
    let mut t = Table::new(&[
        "writer",
        "registrations",
        "API write requests (2xx)",
        "write requests / registration",
        "API requests",
        "requests / registration",
        "by verb",
        "convergence",
        "registration p50 / p99",
    ]);
    let verbs = |a: &crate::prom::RequestCounts| -> String {
        a.by_verb()
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    t.row([
        "snp: 4 shims".to_owned(),
        fmt_int(snp.ok),
        format!(
            "{} ({})",
            fmt_int(api_snp.writes()),
            fmt_int(api_snp.writes_ok())
        ),
        format!("{:.4}", api_snp.writes() as f64 / regs),
        fmt_int(api_snp.total()),
        format!("{:.4}", api_snp.total() as f64 / regs),
        verbs(&api_snp),
        snp.converged.map_or("-".into(), fmt_dur),
        format!(
            "{} / {}",
            fmt_dur(snp.latency.p50()),
            fmt_dur(snp.latency.p99())
        ),
    ]);
    let mut naive_rows = Vec::new();
    for mode in [NaiveMode::SkipUnchanged, NaiveMode::Always] {
        let r = rollout(pods, ifaces, 1, jitter, "naive");
        let n = naive::run(&client, &api.group, &r, c, mode).await?;
        let stored = crate::kube::list_mappings(&client, &api.group, &r.prefix).await?;
        let label = match mode {
            NaiveMode::SkipUnchanged => {
                "naive: GET, write if missing (Dubbo metadata report, seed without debounce)"
            }
            NaiveMode::Always => "naive: GET + union + PUT/POST every registration",
        };
        t.row([
            label.to_owned(),
            format!(
                "{}{}",
                fmt_int(n.ok),
                if n.failed > 0 {
                    format!(" ({} failed)", n.failed)
                } else {
                    String::new()
                }
            ),
            format!(
                "{} ({})",
                fmt_int(n.api.writes()),
                fmt_int(n.api.writes_ok())
            ),
            format!("{:.4}", n.api.writes() as f64 / regs),
            fmt_int(n.api.total()),
            format!("{:.4}", n.api.total() as f64 / regs),
            verbs(&n.api),
            fmt_dur(n.converged),
            format!(
                "{} / {}",
                fmt_dur(n.latency.p50()),
                fmt_dur(n.latency.p99())
            ),
        ]);
        naive_rows.push((mode, n, stored == r.expected()));
    }
    print_table("", &t);
    let mut codes = Table::new(&["writer", "API server requests by verb and code"]);
    codes.row(["snp: 4 shims".to_owned(), api_snp.to_string()]);
    for (mode, n, _) in &naive_rows {
        codes.row([format!("naive {mode:?}"), n.api.to_string()]);
    }
    print_table("", &codes);
    println!(
        "Stored exactly the expected union: snp {exact}{}; shim store conflicts {}, no-op skips {}.\n",
        naive_rows.iter().map(|(m, _, ok)| format!(", naive {m:?} {ok}")).collect::<String>(),
        snp.shim.as_ref().map_or(0.0, |s| s.conflicts),
        snp.shim.as_ref().map_or(0.0, |s| s.noop_skips),
    );
    if !exact {
        bail!("figure 3: the API server does not hold exactly the expected mappings");
    }
    let per = api_snp.writes() as f64 / regs;
    let mut v = vec![Verdict::check(
        "3. API write requests / registration, snp (4 shims)",
        "<= 0.01",
        format!(
            "{per:.4} ({} writes / {} registrations)",
            api_snp.writes(),
            regs
        ),
        per <= 0.01,
    )];
    for (mode, n, _) in &naive_rows {
        v.push(Verdict::info(
            format!("3. naive {mode:?}: writes / requests per registration"),
            format!(
                "{:.4} / {:.4}",
                n.api.writes() as f64 / regs,
                n.api.total() as f64 / regs
            ),
        ));
    }
    Ok(v)
}

// ----------------------------------------------------------------------------------------
// Figure 4

/// Figure 4: registrations per second straight into the shim, against the do-nothing
/// server. Target: ratio >= 0.8.
pub async fn fig4(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 4: shim throughput close to the limit");
    let shim = Shim::start(env, "fig4-shim", None, &[]).await?;
    let (noop_proc, noop) = start_noop(env, "fig4-noop").await?;
    let (c, conns) = (64, 4);
    println!(
        "Closed loop of registrations (flavours A and B alternating, the calls of a 200-pod x 10-interface rollout) straight to `snp-shim` (embedded store, default flags) and to `snp-noop-server` (same protos, same tonic stack, answers at once). Concurrency {c}, {conns} connections, load generator on the same 2 cores; {} A/B round pairs of {:?}.\n",
        env.rounds, env.round
    );
    let a = closed(
        vec![shim.grpc.clone()],
        TargetKind::Shim,
        Rpc::Mixed,
        c,
        conns,
        env.round,
    );
    let b = closed(
        vec![noop.clone()],
        TargetKind::Shim,
        Rpc::Mixed,
        c,
        conns,
        env.round,
    );
    let (fa, fb) = ab(env, &a, &b, &[shim.proc.pid()], &[noop_proc.pid()]).await?;
    if fa.errors + fb.errors > 0 {
        bail!("figure 4: {} + {} errors", fa.errors, fb.errors);
    }
    print_table(
        "",
        &ab_table(&[("snp-shim", &fa), ("snp-noop-server (upper bound)", &fb)]),
    );
    let tp = ratio(fa.throughput(), fb.throughput());
    let mut rt = Table::new(&["ratio (shim / no-op)", "measured", "target", "verdict"]);
    rt.row([
        "throughput".into(),
        format!("{tp:.3}"),
        ">= 0.80".into(),
        verdict(tp >= 0.8).to_owned(),
    ]);
    rt.row([
        "p50 latency".into(),
        format!(
            "{:.3}",
            ratio(secs(fa.latency.p50()), secs(fb.latency.p50()))
        ),
        "".into(),
        "info".into(),
    ]);
    let cpu = ratio(secs(fb.cpu_per_call()), secs(fa.cpu_per_call()));
    rt.row([
        "server CPU per call, no-op / shim (the throughput ratio if the server alone were the bottleneck)".into(),
        format!("{cpu:.3}"),
        "".into(),
        "info".into(),
    ]);
    print_table("Ratios (same run):", &rt);
    Ok(vec![
        Verdict::check(
            "4. shim registrations/s / no-op server",
            ">= 0.80",
            format!(
                "{tp:.3} ({} vs {})",
                fmt_rate(fa.throughput()),
                fmt_rate(fb.throughput())
            ),
            tp >= 0.8,
        ),
        Verdict::info(
            "4. server CPU per registration, no-op / shim",
            format!(
                "{cpu:.3} ({:.1} vs {:.1} µs)",
                fb.cpu_per_call().as_secs_f64() * 1e6,
                fa.cpu_per_call().as_secs_f64() * 1e6
            ),
        ),
    ])
}

// ----------------------------------------------------------------------------------------
// Figure 5

fn parse_cargo_bench(out: &str) -> (Option<f64>, Option<String>) {
    let summary = out
        .lines()
        .find(|l| l.starts_with("offer: "))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    let thrpt = out
        .lines()
        .find(|l| l.trim_start().starts_with("thrpt:"))
        .map(|l| l.trim().to_owned());
    (summary, thrpt)
}

/// Parses the wasm module's pass lines: (registrations, keys, nanos) per pass.
pub fn parse_wasm_passes(log: &str) -> Vec<(u64, u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let i = l.find("snp-bench-wasm offer pass=")?;
            let mut regs = None;
            let mut keys = None;
            let mut nanos = None;
            for kv in l[i..].split_whitespace() {
                match kv.split_once('=') {
                    Some(("registrations", v)) => regs = v.parse().ok(),
                    Some(("keys", v)) => keys = v.parse().ok(),
                    Some(("nanos", v)) => {
                        nanos = v
                            .trim_end_matches(|c: char| !c.is_ascii_digit())
                            .parse()
                            .ok()
                    }
                    _ => {}
                }
            }
            Some((regs?, keys?, nanos?))
        })
        .collect()
}

/// Figure 5: the core engine's `offer` throughput, native and in wasm under Envoy.
pub async fn fig5(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 5: core engine (offer)");
    let passes = 5;
    let mut t = Table::new(&[
        "build",
        "runtime",
        "registrations/s (median of passes)",
        "best pass",
        "passes",
    ]);
    let mut verdicts = Vec::new();
    // (a) criterion, bench profile (opt-level 3).
    if env.cargo_bench {
        let out = tokio::process::Command::new("cargo")
            .args([
                "bench", "-p", "snp-core", "--bench", "offer", "--", "--noplot",
            ])
            .current_dir(&env.root)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cargo bench")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        std::fs::write(
            env.dir.join("fig5-cargo-bench.log"),
            format!("{text}\n{}", String::from_utf8_lossy(&out.stderr)),
        )?;
        let (single, thrpt) = parse_cargo_bench(&text);
        let crit = thrpt
            .as_deref()
            .and_then(|l| l.split('[').nth(1))
            .map(|inside| inside.split_whitespace().collect::<Vec<_>>())
            .and_then(|w| {
                if w.len() >= 4 {
                    Some(format!("{} {}", w[2], w[3]))
                } else {
                    None
                }
            });
        t.row([
            "`cargo bench -p snp-core --bench offer` (bench profile, opt-level 3)".to_owned(),
            "native".into(),
            crit.clone()
                .map_or("-".into(), |c| format!("{c} (criterion median)")),
            single.map_or("-".into(), |s| {
                format!("{} (first timed pass)", fmt_rate(s))
            }),
            "criterion, 10 samples".into(),
        ]);
        let rate = crit
            .as_deref()
            .and_then(|c| {
                let mut it = c.split_whitespace();
                let n: f64 = it.next()?.parse().ok()?;
                let unit = it.next()?;
                Some(match unit {
                    "Gelem/s" => n * 1e9,
                    "Melem/s" => n * 1e6,
                    "Kelem/s" => n * 1e3,
                    _ => n,
                })
            })
            .or(single);
        if let Some(r) = rate {
            verdicts.push(Verdict::check(
                "5. offer, native (criterion, opt-level 3)",
                ">= 2,000,000/s (core issue)",
                fmt_rate(r),
                r >= 2_000_000.0,
            ));
        } else {
            bail!("figure 5: could not read cargo bench's output (see fig5-cargo-bench.log)");
        }
    }
    // (b) the same workload natively in this process (release profile: opt-level "s",
    // the profile the shim ships with).
    let w = snp_bench_wasm::Workload::new();
    let mut native = Vec::new();
    for _ in 0..passes {
        let start = Instant::now();
        let (accepted, keys) = std::hint::black_box(w.run());
        let took = start.elapsed();
        if accepted != snp_bench_wasm::REGISTRATIONS || keys != snp_bench_wasm::KEYS {
            bail!("figure 5: native pass took {accepted} / {keys}");
        }
        native.push(accepted as f64 / took.as_secs_f64());
    }
    let native_med = median(&native);
    let native_best = native.iter().copied().fold(0.0, f64::max);
    t.row([
        "snp-bench (release profile, opt-level \"s\", as the shim)".to_owned(),
        "native".into(),
        fmt_rate(native_med),
        fmt_rate(native_best),
        passes.to_string(),
    ]);
    // (c) the same workload in Envoy's V8, as a singleton bootstrap wasm service.
    let up = Upstreams {
        shim: free_port()?,
        app_grpc: free_port()?,
    };
    let envoy = Envoy::start(
        env,
        "fig5-envoy-wasm",
        Filter::Off,
        false,
        1,
        up,
        Some((env.bench_wasm.display().to_string(), passes.to_string())),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut log = envoy.proc.log_text();
    while !log.contains("snp-bench-wasm offer done") {
        if Instant::now() > deadline {
            bail!(
                "figure 5: the wasm benchmark did not finish:\n{}",
                envoy.proc.log_tail(2000)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        log = envoy.proc.log_text();
    }
    drop(envoy);
    let wasm: Vec<f64> = parse_wasm_passes(&log)
        .into_iter()
        .filter(|(r, k, _)| {
            *r == snp_bench_wasm::REGISTRATIONS as u64 && *k == snp_bench_wasm::KEYS as u64
        })
        .map(|(r, _, n)| r as f64 / (n as f64 / 1e9))
        .collect();
    // Envoy starts the module's VM twice on the main thread (the base VM and the
    // singleton's own), so each start runs the passes: every pass counts.
    if wasm.len() < passes {
        bail!(
            "figure 5: {} wasm passes in the log, expected at least {passes}",
            wasm.len()
        );
    }
    let wasm_med = median(&wasm);
    let wasm_best = wasm.iter().copied().fold(0.0, f64::max);
    t.row([
        format!(
            "snp_bench_wasm.wasm ({} KiB, release profile)",
            std::fs::metadata(&env.bench_wasm)
                .map(|m| m.len() / 1024)
                .unwrap_or(0)
        ),
        "Envoy V8 (bootstrap wasm service)".into(),
        fmt_rate(wasm_med),
        fmt_rate(wasm_best),
        format!("{} (first: {})", wasm.len(), fmt_rate(wasm[0])),
    ]);
    println!(
        "1,000,000 registrations over 10,000 keys x 3 apps per pass, as in `crates/snp-core/benches/offer.rs` (the same code: `bench/wasm-offer`). The wasm figure is timed inside the module with the host clock (`proxy_get_current_time_nanoseconds`) around each pass; Envoy runs the module at start-up on its main thread, in the V8 runtime that runs the filter on each worker; it starts that VM twice (its base VM and the singleton's), and each start runs the passes.\n"
    );
    print_table("", &t);
    let r = ratio(wasm_med, native_med);
    println!("wasm / native (same workload, same profile, same run): {r:.2}\n");
    verdicts.push(Verdict::info(
        "5. offer, native (release, opt-level s)",
        fmt_rate(native_med),
    ));
    verdicts.push(Verdict::info(
        "5. offer, wasm in Envoy V8 (median pass)",
        format!("{} ({r:.2} of native)", fmt_rate(wasm_med)),
    ));
    Ok(verdicts)
}

// ----------------------------------------------------------------------------------------
// Figure 6

/// Figure 6: footprint: `.wasm` size, Envoy RSS with and without the filter per worker,
/// shim RSS idle and during a storm.
pub async fn fig6(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 6: footprint");
    let mut verdicts = Vec::new();
    let wasm_size = std::fs::metadata(&env.filter_wasm)?.len();
    println!(
        "`{}`: {} bytes ({:.0} KiB).\n",
        env.filter_wasm
            .strip_prefix(&env.root)
            .unwrap_or(&env.filter_wasm)
            .display(),
        fmt_int(wasm_size),
        wasm_size as f64 / 1024.0
    );
    verdicts.push(Verdict::info(
        "6. snp_filter.wasm size",
        format!(
            "{:.0} KiB ({} bytes)",
            wasm_size as f64 / 1024.0,
            fmt_int(wasm_size)
        ),
    ));

    let shim = Shim::start(env, "fig6-shim", None, &[]).await?;
    let (_noop, noop) = start_noop(env, "fig6-noop").await?;
    let up = Upstreams {
        shim: port_of(&shim.grpc),
        app_grpc: port_of(&noop),
    };
    let mut t = Table::new(&[
        "workers",
        "Envoy RSS without filter",
        "with filter",
        "difference",
        "difference / workers",
    ]);
    let workers: &[usize] = if env.quick { &[1, 2] } else { &[1, 2, 4] };
    let mut per_worker = Vec::new();
    for &w in workers {
        let mut rss = [0u64; 2];
        for (i, filter) in [false, true].into_iter().enumerate() {
            let mut e = Envoy::start(
                env,
                &format!("fig6-envoy-{w}-{}", if filter { "filter" } else { "plain" }),
                if filter { Filter::On } else { Filter::Off },
                false,
                w,
                up,
                None,
            )
            .await?;
            // The same warm-up traffic on both: registrations and other gRPC, over enough
            // connections to reach every worker.
            for rpc in [Rpc::Mixed, Rpc::Get] {
                let cfg = closed(
                    vec![e.apps.clone()],
                    TargetKind::Envoy,
                    rpc,
                    8,
                    2 * w,
                    Duration::from_millis(700),
                );
                let r = load::run(&cfg).await?;
                if r.error_count() > 0 {
                    bail!(
                        "figure 6: warm-up errors {:?}: {:?}",
                        r.errors,
                        r.first_error
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            e.check_vm_healthy()?;
            rss[i] = e.proc.memory()?.rss;
        }
        let diff = rss[1] as i64 - rss[0] as i64;
        let pw = diff as f64 / w as f64;
        per_worker.push(pw);
        t.row([
            w.to_string(),
            fmt_mib(rss[0]),
            fmt_mib(rss[1]),
            format!("{:+.1} MiB", diff as f64 / 1048576.0),
            format!("{:+.1} MiB", pw / 1048576.0),
        ]);
    }
    println!("Envoy from `envoy/envoy.yaml`, with and without the snp filter in the chain, same `--concurrency`; `VmRSS` from `/proc/<pid>/status` after 1.4 s of registrations and other gRPC through every worker.\n");
    print_table("", &t);
    // difference = fixed + per_worker x workers, least squares over the worker counts.
    let xs: Vec<f64> = workers.iter().map(|w| *w as f64).collect();
    let ys: Vec<f64> = per_worker.iter().zip(&xs).map(|(p, x)| p * x).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { f64::NAN };
    let fixed = my - slope * mx;
    println!(
        "Least-squares fit of the difference over the worker counts: {:+.1} MiB fixed (V8 and the filter's base VM) and {:+.1} MiB per worker (each worker has its own VM).\n",
        fixed / 1048576.0,
        slope / 1048576.0
    );
    verdicts.push(Verdict::info(
        "6. Envoy RSS with - without filter",
        format!(
            "{:+.1} MiB fixed, {:+.1} MiB per worker",
            fixed / 1048576.0,
            slope / 1048576.0
        ),
    ));

    // Shim: idle, then a storm.
    drop(shim);
    let shim = Shim::start(env, "fig6-shim-storm", None, &[]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = shim.proc.memory()?;
    let noop_mem = crate::procs::memory(_noop.pid())?;
    let (pods, ifaces, ns) = if env.quick {
        (20, 10, 10)
    } else {
        (100, 20, 50)
    };
    let r = rollout(pods, ifaces, ns, Duration::from_secs(3), "fig6");
    let regs = r.registrations();
    let keys = r.keys();
    let cfg = LoadConfig {
        kind: TargetKind::Shim,
        targets: vec![shim.grpc.clone()],
        rollout: r,
        concurrency: 64,
        connections: 4,
        rpc: Rpc::Mixed,
        duration: None,
        shim_metrics: vec![shim.http.clone()],
        envoy_admin: None,
        kube: None,
        converge_shims: vec![shim.grpc.clone()],
        converge_timeout: Duration::from_secs(120),
    };
    let pid = shim.proc.pid();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak = 0u64;
        loop {
            if let Ok(m) = crate::procs::memory(pid) {
                peak = peak.max(m.rss);
            }
            tokio::select! {
                _ = stop_rx.changed() => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        peak
    });
    let report = load::run(&cfg).await?;
    let _ = stop_tx.send(true);
    let peak = sampler.await.unwrap_or(0);
    let after = shim.proc.memory()?;
    if report.error_count() > 0 || report.missing > 0 {
        bail!(
            "figure 6: storm failed: {:?} {:?}",
            report.errors,
            report.first_error
        );
    }
    let mut st = Table::new(&["process", "state", "VmRSS", "VmHWM (peak)"]);
    st.row([
        "snp-shim (embedded store)".to_owned(),
        "idle, after start".into(),
        fmt_mib(idle.rss),
        fmt_mib(idle.hwm),
    ]);
    st.row([
        "snp-shim (embedded store)".to_owned(),
        format!(
            "storm: {} registrations, {} keys, {}",
            fmt_int(regs as u64),
            fmt_int(keys as u64),
            fmt_rate(report.throughput())
        ),
        format!("{} (highest sample, every 20 ms)", fmt_mib(peak)),
        fmt_mib(after.hwm),
    ]);
    st.row([
        "snp-shim (embedded store)".to_owned(),
        "after the storm".into(),
        fmt_mib(after.rss),
        fmt_mib(after.hwm),
    ]);
    st.row([
        "snp-noop-server (reference)".to_owned(),
        "idle".into(),
        fmt_mib(noop_mem.rss),
        fmt_mib(noop_mem.hwm),
    ]);
    print_table("", &st);
    verdicts.push(Verdict::info(
        "6. shim RSS idle / storm peak",
        format!("{} / {}", fmt_mib(idle.rss), fmt_mib(after.hwm.max(peak))),
    ));
    Ok(verdicts)
}

// ----------------------------------------------------------------------------------------
// Figure 7

struct ScaleRow {
    store: &'static str,
    series: &'static str,
    report: LoadReport,
    writes: f64,
    batches: f64,
}

/// Figure 7: convergence and writes as the rollout grows, over a fixed set of keys and over
/// keys that grow with it.
pub async fn fig7(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 7: scaling");
    let sizes: &[usize] = if env.quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let jitter = Duration::from_secs(3);
    // (series, registrations) -> (pods, interfaces, namespaces)
    let shape = |series: &str, regs: usize| -> (usize, usize, usize) {
        match series {
            // 100 keys: 10 namespaces x 10 interfaces; more pods.
            "fixed" => (regs / 100, 10, 10),
            // keys = registrations / 10: 10 pods x (regs / 100) interfaces x 10 namespaces.
            _ => (10, regs / 100, 10),
        }
    };
    println!(
        "Rollouts straight into one shim (default flags), one application per namespace, pods starting within {jitter:?}, 64 calls in flight. Fixed keys: 10 namespaces x 10 interfaces (100 keys), more pods. Growing keys: 10 namespaces x 10 pods, more interfaces (keys = registrations / 10). A fresh shim per run; convergence is first registration to the last mapping seen through `WatchMappings`.\n"
    );
    let mut rows: Vec<ScaleRow> = Vec::new();
    for series in ["fixed", "growing"] {
        for &regs in sizes {
            let (p, i, n) = shape(series, regs);
            let shim = Shim::start(env, &format!("fig7-shim-{series}-{regs}"), None, &[]).await?;
            let report = run_storm(&shim, rollout(p, i, n, jitter, "fig7"), None).await?;
            let s = report.shim.clone().unwrap_or_default();
            rows.push(ScaleRow {
                store: "embedded",
                series,
                writes: s.writes(),
                batches: s.batches_ok,
                report,
            });
        }
    }
    // The same against the real API server (writes are API requests; the shim's default
    // client-side limit of 20 requests/s applies).
    let api = ApiServer::start(env, "fig7-apiserver").await?;
    for series in ["fixed", "growing"] {
        for &regs in sizes {
            if series == "growing" && regs >= 100_000 && !env.kube_full {
                continue;
            }
            let (p, i, n) = shape(series, regs);
            let shim = Shim::start(
                env,
                &format!("fig7-kshim-{series}-{regs}"),
                Some(&api.kubeconfig),
                &[],
            )
            .await?;
            let report =
                run_storm(&shim, rollout(p, i, n, jitter, "fig7k"), Some(api.target())).await?;
            let writes = report.api.as_ref().map_or(0, |a| a.writes()) as f64;
            let batches = report.shim.as_ref().map_or(0.0, |s| s.batches_ok);
            rows.push(ScaleRow {
                store: "API server",
                series,
                writes,
                batches,
                report,
            });
        }
    }
    let mut t = Table::new(&[
        "store",
        "keys",
        "registrations",
        "sent in",
        "throughput",
        "convergence",
        "batches",
        "writes",
        "writes / key",
        "writes / 1k registrations",
    ]);
    for r in &rows {
        let rep = &r.report;
        t.row([
            format!("{} ({})", r.store, r.series),
            fmt_int(rep.keys as u64),
            fmt_int(rep.ok),
            fmt_dur(rep.elapsed),
            fmt_rate(rep.throughput()),
            rep.converged.map_or("-".into(), fmt_dur),
            format!("{}", r.batches),
            format!("{}", r.writes),
            format!("{:.2}", r.writes / rep.keys.max(1) as f64),
            format!("{:.2}", r.writes * 1000.0 / rep.ok.max(1) as f64),
        ]);
    }
    print_table("", &t);
    if !env.kube_full {
        println!("The 100,000-registration growing-keys run against the API server (10,000 keys) is left out: at the shim's default --kube-qps 20 its 10,000 creates take over 8 minutes (`--kube-full` runs it).\n");
    }
    let mut verdicts = Vec::new();
    for store in ["embedded", "API server"] {
        let fixed: Vec<&ScaleRow> = rows
            .iter()
            .filter(|r| r.store == store && r.series == "fixed")
            .collect();
        if let (Some(first), Some(last)) = (fixed.first(), fixed.last()) {
            let growth = ratio(last.writes, first.writes);
            let regs_growth = ratio(last.report.ok as f64, first.report.ok as f64);
            verdicts.push(Verdict::check(
                format!(
                    "7. {store}: writes at {}x the registrations over the same 100 keys",
                    regs_growth.round()
                ),
                "grows with keys, not registrations (<= 1.5x)",
                format!("{growth:.2}x ({} -> {} writes)", first.writes, last.writes),
                growth <= 1.5,
            ));
        }
        let growing: Vec<&ScaleRow> = rows
            .iter()
            .filter(|r| r.store == store && r.series == "growing")
            .collect();
        if !growing.is_empty() {
            let wk: Vec<String> = growing
                .iter()
                .map(|r| format!("{:.2}", r.writes / r.report.keys.max(1) as f64))
                .collect();
            verdicts.push(Verdict::info(
                format!("7. {store}: writes per key as keys grow"),
                wk.join(" / "),
            ));
        }
    }
    Ok(verdicts)
}

async fn run_storm(shim: &Shim, r: Rollout, kube: Option<KubeTarget>) -> Result<LoadReport> {
    let cfg = LoadConfig {
        kind: TargetKind::Shim,
        targets: vec![shim.grpc.clone()],
        rollout: r,
        concurrency: 64,
        connections: 4,
        rpc: Rpc::Mixed,
        duration: None,
        shim_metrics: vec![shim.http.clone()],
        envoy_admin: None,
        kube,
        converge_shims: vec![shim.grpc.clone()],
        converge_timeout: Duration::from_secs(900),
    };
    let report = load::run(&cfg).await?;
    if report.error_count() > 0 || report.missing > 0 {
        bail!(
            "storm failed: {:?} {:?}, {} missing",
            report.errors,
            report.first_error,
            report.missing
        );
    }
    Ok(report)
}

// ----------------------------------------------------------------------------------------
// Figure 8

/// A closed loop into `target`: the rollout's repeats (`fresh` false, as figure 4), or calls
/// that each carry a mapping never seen before (`fresh`: 100 namespaces x 1,000
/// applications x 1 interface, a new namespace prefix every run, so nothing repeats).
fn journal_load(target: &str, concurrency: usize, d: Duration, fresh: bool) -> LoadConfig {
    let mut cfg = closed(
        vec![target.to_owned()],
        TargetKind::Shim,
        Rpc::Mixed,
        concurrency,
        concurrency.min(4),
        d,
    );
    if fresh {
        cfg.rollout = Rollout {
            pods: 1000,
            interfaces: 1,
            namespaces: 100,
            apps: 1000,
            prefix: unique_prefix("jnew"),
            jitter: Duration::ZERO,
            seed: 1,
        };
    }
    cfg
}

/// One set-up of figure 8.
#[derive(Clone, Copy)]
struct JournalSetup<'a> {
    label: &'a str,
    grpc: &'a str,
    /// `/metrics` of a shim (journal counters), if it is one.
    http: Option<&'a str>,
    pid: u32,
}

async fn journal_syncs(http: Option<&str>) -> f64 {
    match http {
        Some(h) => crate::httpget::get_ok(h, "/metrics")
            .await
            .map(|t| crate::prom::sum(&t, "snp_journal_syncs_total", &[]))
            .unwrap_or(0.0),
        None => 0.0,
    }
}

/// Runs the set-ups in turn `rounds` times (after a short warm-up each), a fresh
/// workload each run; returns each one's aggregate and its `fdatasync`s.
async fn journal_rounds(
    env: &Env,
    setups: &[JournalSetup<'_>],
    concurrency: usize,
    fresh: bool,
) -> Result<Vec<(Agg, f64)>> {
    for s in setups {
        load::run(&journal_load(
            s.grpc,
            concurrency,
            Duration::from_millis(500),
            fresh,
        ))
        .await?;
    }
    let mut out: Vec<(Agg, f64)> = setups.iter().map(|_| (Agg::default(), 0.0)).collect();
    for _ in 0..env.rounds.max(1) {
        for (i, s) in setups.iter().enumerate() {
            let cfg = journal_load(s.grpc, concurrency, env.round, fresh);
            let before = journal_syncs(s.http).await;
            let (r, cpu) = measured(&cfg, &[s.pid]).await?;
            let syncs = journal_syncs(s.http).await - before;
            if r.error_count() > 0 {
                bail!(
                    "figure 8, {}: {} errors ({:?})",
                    s.label,
                    r.error_count(),
                    r.first_error
                );
            }
            out[i].0.add(&r, cpu);
            out[i].1 += syncs;
        }
    }
    Ok(out)
}

/// Figure 8: the journal (issue 12). Registrations per second with the journal against
/// the do-nothing server (target >= 0.8), for repeated and for new mappings; ack latency
/// with and without the journal, and in durable mode.
pub async fn fig8(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 8: the journal");
    let on = Shim::start(env, "fig8-journal", None, &[]).await?;
    let off = Shim::start(env, "fig8-nojournal", None, &["--journal=false"]).await?;
    let durable = Shim::start(env, "fig8-durable", None, &["--ack-mode=durable"]).await?;
    let (noop_proc, noop) = start_noop(env, "fig8-noop").await?;
    let a = JournalSetup {
        label: "snp-shim, journal (default)",
        grpc: &on.grpc,
        http: Some(&on.http),
        pid: on.proc.pid(),
    };
    let b = JournalSetup {
        label: "snp-shim, --journal=false",
        grpc: &off.grpc,
        http: None,
        pid: off.proc.pid(),
    };
    let c = JournalSetup {
        label: "snp-noop-server (upper bound)",
        grpc: &noop,
        http: None,
        pid: noop_proc.pid(),
    };
    let d = JournalSetup {
        label: "snp-shim, --ack-mode=durable",
        grpc: &durable.grpc,
        http: None,
        pid: durable.proc.pid(),
    };
    println!(
        "Immediate mode, embedded store, data directory on the work directory's file system. Closed loops, flavours A and B alternating, load generator on the same 2 cores; {} rounds of {:?} per set-up, in turn. \"Repeated\": the calls of a 200-pod x 10-interface rollout (as figure 4): after the first ones every mapping is known. \"New\": every call carries a mapping never seen before (100 namespaces x 1,000 applications, a new prefix every run), so every call appends to the journal and waits for an fdatasync.\n",
        env.rounds, env.round
    );
    let mut verdicts = Vec::new();
    for (fresh, name) in [(false, "repeated"), (true, "new")] {
        let r = journal_rounds(env, &[a, b, c], 64, fresh).await?;
        let calls = r[0].0.ok.max(1) as f64;
        let t = ab_table(&[(a.label, &r[0].0), (b.label, &r[1].0), (c.label, &r[2].0)]);
        print_table(
            &format!("Throughput, {name} registrations, concurrency 64 over 4 connections:"),
            &t,
        );
        let tp = ratio(r[0].0.throughput(), r[2].0.throughput());
        let tp_off = ratio(r[1].0.throughput(), r[2].0.throughput());
        let mut rt = Table::new(&["measure", "measured", "target", "verdict"]);
        rt.row([
            "throughput, journal / no-op".into(),
            format!("{tp:.3}"),
            ">= 0.80".into(),
            verdict(tp >= 0.8).to_owned(),
        ]);
        rt.row([
            "throughput, --journal=false / no-op".into(),
            format!("{tp_off:.3}"),
            "".into(),
            "info".into(),
        ]);
        rt.row([
            "fdatasyncs per call (journal)".into(),
            format!(
                "{:.4} ({} syncs, {} calls)",
                r[0].1 / calls,
                fmt_int(r[0].1 as u64),
                fmt_int(r[0].0.ok)
            ),
            "".into(),
            "info".into(),
        ]);
        rt.row([
            "fdatasyncs per second (journal)".into(),
            format!("{:.0}", r[0].1 / r[0].0.elapsed.as_secs_f64().max(1e-9)),
            "".into(),
            "info".into(),
        ]);
        print_table("Ratios (same run):", &rt);
        verdicts.push(Verdict::check(
            format!("8. {name} registrations/s, journal / no-op server"),
            ">= 0.80",
            format!(
                "{tp:.3} ({} vs {}; --journal=false {tp_off:.3})",
                fmt_rate(r[0].0.throughput()),
                fmt_rate(r[2].0.throughput())
            ),
            tp >= 0.8,
        ));
        verdicts.push(Verdict::info(
            format!("8. {name}: fdatasyncs per call (group commit)"),
            format!("{:.4}", r[0].1 / calls),
        ));
    }
    // Latency of one caller at a time: what an app waits for its OK.
    let r = journal_rounds(env, &[a, b, d, c], 1, true).await?;
    print_table(
        "Ack latency, new registrations, one call at a time:",
        &ab_table(&[
            (a.label, &r[0].0),
            (b.label, &r[1].0),
            (d.label, &r[2].0),
            (c.label, &r[3].0),
        ]),
    );
    for (i, label) in [(0, "journal"), (1, "--journal=false"), (2, "durable mode")] {
        verdicts.push(Verdict::info(
            format!("8. ack latency p50 / p99, {label} (new, concurrency 1)"),
            format!(
                "{} / {}",
                fmt_dur(r[i].0.latency.p50()),
                fmt_dur(r[i].0.latency.p99())
            ),
        ));
    }
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_benchmarks_outputs() {
        let out = "offer: 1000000 registrations over 10000 keys x 3 apps in 0.105 s = 9523809 registrations/s (target >= 2,000,000/s)\n\
                   debouncer/offer_1m_over_10k_keys\n                        time:   [104.1 ms 105.2 ms 106.0 ms]\n                        thrpt:  [9.4 Melem/s 9.5 Melem/s 9.6 Melem/s]\n";
        let (single, thrpt) = parse_cargo_bench(out);
        assert_eq!(single, Some(9523809.0));
        assert_eq!(
            thrpt.as_deref(),
            Some("thrpt:  [9.4 Melem/s 9.5 Melem/s 9.6 Melem/s]")
        );
        let log = "[2026-01-01 00:00:00.000][1][warning][wasm] wasm log snp_bench snp_bench snp_bench: snp-bench-wasm offer pass=1 registrations=1000000 keys=10000 nanos=250000000\n\
                   other line\n";
        assert_eq!(
            parse_wasm_passes(log),
            vec![(1_000_000, 10_000, 250_000_000)]
        );
        assert_eq!(port_of("127.0.0.1:15051"), 15051);
    }
}
