//! Command-line flags. Every flag has an environment-variable twin (`SNP_*`), so the
//! DaemonSet can set them either way, and a documented default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// snp-shim: the node-local service-name-mapping registry shim.
///
/// Takes registration calls (from apps directly, or as merged batches from the snp Envoy
/// filter), debounces and merges them, and writes ServiceNameMapping custom resources with
/// union semantics. Serves lookups and change streams to consumers.
#[derive(Debug, Parser)]
#[command(name = "snp-shim", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the shim (the default).
    Serve,
    /// Print the CustomResourceDefinition YAML, generated from the Rust type.
    Crd(CrdArgs),
    /// Create the data directory and hand it to the shim's user. The DaemonSet's init
    /// container runs this as root with only CAP_CHOWN, on the hostPath the kubelet creates
    /// root-owned, so that the shim itself runs as non-root.
    PrepareDataDir(PrepareArgs),
}

/// Arguments of `prepare-data-dir`.
#[derive(Debug, Clone, Args)]
pub struct PrepareArgs {
    /// The data directory (as the shim's --data-dir).
    #[arg(long, env = "SNP_DATA_DIR", default_value = "/var/lib/snp")]
    pub data_dir: PathBuf,
    /// Owner to give it, `uid:gid` (the image's nonroot user by default).
    #[arg(long, default_value = "65532:65532")]
    pub owner: String,
}

/// Which API group/version the ServiceNameMapping resource is served under.
#[derive(Debug, Clone, Args)]
pub struct CrdArgs {
    /// API group of ServiceNameMapping (dubbo-admin used dubbo.apache.org).
    #[arg(long, env = "SNP_CRD_GROUP", default_value = "extensions.istio.io")]
    pub crd_group: String,
    /// API version of ServiceNameMapping.
    #[arg(long, env = "SNP_CRD_VERSION", default_value = "v1alpha1")]
    pub crd_version: String,
}

/// Where mappings are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Kubernetes if in-cluster configuration or --kubeconfig is present, else embedded.
    Auto,
    /// ServiceNameMapping custom resources through the Kubernetes API.
    Kubernetes,
    /// A directory of ServiceNameMapping YAML manifests (no cluster needed).
    Embedded,
}

/// When a registration call is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    /// At once, as the seed server does; the mapping is written within the debounce window.
    Immediate,
    /// Only once the mapping is durable in the store.
    Durable,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable.
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// gRPC listen address: the registration API (both flavours) and snp.v1.MappingService.
    #[arg(long, env = "SNP_GRPC_ADDR", default_value = "0.0.0.0:15051")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for /metrics, /healthz and /readyz.
    #[arg(long, env = "SNP_HTTP_ADDR", default_value = "0.0.0.0:15052")]
    pub http_addr: SocketAddr,
    /// Name of this node, reported as the batch source and in logs (downward API spec.nodeName).
    #[arg(long, env = "SNP_NODE_NAME", default_value = "local")]
    pub node_name: String,

    /// Storage backend.
    #[arg(long, env = "SNP_STORE", value_enum, default_value_t = StoreKind::Auto)]
    pub store: StoreKind,
    /// Local state: the journal, in `<data-dir>/journal/<--journal-instance>/`, and, with
    /// the embedded store, one ServiceNameMapping manifest per object, as
    /// `<namespace>/<object-name>.yaml` (`kubectl apply -R -f <dir>` loads it into a
    /// cluster). Both are locked: a second shim on the same directory exits with an error.
    #[arg(long, env = "SNP_DATA_DIR", default_value = "/var/lib/snp")]
    pub data_dir: PathBuf,
    /// Kubeconfig file; without it the in-cluster configuration is used.
    #[arg(long, env = "SNP_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub crd: CrdArgs,
    /// Client-side limit of Kubernetes API requests per second (sustained).
    ///
    /// client-go defaults to 5; writes are already debounced and no-op writes skipped, so
    /// a node needs few, but a first backfill of many interfaces should not take minutes.
    #[arg(long, env = "SNP_KUBE_QPS", default_value_t = 20.0)]
    pub kube_qps: f64,
    /// Before creating the object of an interface it has never seen, a shim waits a random
    /// delay up to this long and checks its watch cache again. When every node's shim
    /// flushes the same new interface at once (a rollout across nodes), one creates it and
    /// the others see it, instead of all POSTing and all but one getting 409. 0 disables.
    #[arg(long, env = "SNP_KUBE_CREATE_SPREAD", value_parser = humantime::parse_duration, default_value = "500ms")]
    pub kube_create_spread: Duration,
    /// Before adding applications to an object that another writer (another node's shim)
    /// wrote last, a shim waits a random delay up to this long and checks its watch cache
    /// again. When every node's shim adds its applications to the same object at once,
    /// they take turns: each updates from the previous one's version, or finds its
    /// applications already there and writes nothing, instead of all updating the same
    /// version and all but one getting 409. Objects this shim wrote last are updated at
    /// once, and a key that has just waited the create spread does not wait again. After
    /// a key's first 409 it waits the spread again and takes the winning version from its
    /// watch cache, re-reading the object only if the watch has not brought it. 0
    /// disables.
    #[arg(long, env = "SNP_KUBE_UPDATE_SPREAD", value_parser = humantime::parse_duration, default_value = "500ms")]
    pub kube_update_spread: Duration,
    /// Client-side burst of Kubernetes API requests above --kube-qps.
    #[arg(long, env = "SNP_KUBE_BURST", default_value_t = 40)]
    pub kube_burst: u32,

    /// When a registration call is answered.
    #[arg(long, env = "SNP_ACK_MODE", value_enum, default_value_t = AckMode::Immediate)]
    pub ack_mode: AckMode,
    /// Longest a durable-mode call or a PushMappings call waits for the store; then it gets
    /// UNAVAILABLE, or a PushMappings sender that asks for results gets PENDING for the rest
    /// (the mappings stay pending and are retried). Keep it below the filter's
    /// `push_timeout_ms` (5 s) so the shim always answers before the filter gives up.
    #[arg(long, env = "SNP_ACK_TIMEOUT", value_parser = humantime::parse_duration, default_value = "4s")]
    pub ack_timeout: Duration,

    /// Debounce registrations (the seed's behaviour). `--debounce false` sends each at once.
    #[arg(long, env = "SNP_DEBOUNCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub debounce: bool,
    /// Quiet period that ends a burst.
    #[arg(long, env = "SNP_DEBOUNCE_AFTER", value_parser = humantime::parse_duration, default_value = "100ms")]
    pub debounce_after: Duration,
    /// Longest a burst is held before it is written.
    #[arg(long, env = "SNP_DEBOUNCE_MAX", value_parser = humantime::parse_duration, default_value = "1s")]
    pub debounce_max: Duration,
    /// Delay of the first check after a burst starts.
    #[arg(long, env = "SNP_DEBOUNCE_FIRST_CHECK", value_parser = humantime::parse_duration, default_value = "200ms")]
    pub debounce_first_check: Duration,
    /// Concurrent store batches when debouncing is off.
    #[arg(long, env = "SNP_MAX_IN_FLIGHT", default_value_t = 4)]
    pub max_in_flight: usize,
    /// Distinct (namespace, interface) keys that may wait; beyond it calls get RESOURCE_EXHAUSTED.
    #[arg(long, env = "SNP_MAX_PENDING_KEYS", default_value_t = 100_000)]
    pub max_pending_keys: usize,
    /// Backoff unit of a failed store batch: retries come after 2x, 4x, 8x ... this
    /// (1 s, 2 s, 4 s ... with the default), capped by --retry-max, minus up to 20 % jitter.
    /// A failed batch is never dropped.
    #[arg(long, env = "SNP_RETRY_BASE", value_parser = humantime::parse_duration, default_value = "500ms")]
    pub retry_base: Duration,
    /// Longest retry delay of a failed store batch.
    #[arg(long, env = "SNP_RETRY_MAX", value_parser = humantime::parse_duration, default_value = "30s")]
    pub retry_max: Duration,
    /// How often a parked key (one the store refuses for good: missing or terminating
    /// namespace, RBAC, admission, quota, size) is tried again.
    #[arg(long, env = "SNP_PARK_PROBE", value_parser = parse_positive_duration, default_value = "5m")]
    pub park_probe: Duration,
    /// Parked keys kept at most; beyond it the key parked longest ago is dropped (logged).
    #[arg(long, env = "SNP_MAX_PARKED_KEYS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_parked_keys: u64,
    /// Longest interface name accepted, in bytes. The filter must not be configured above it.
    #[arg(long, env = "SNP_MAX_INTERFACE_LEN", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_interface_len: u64,
    /// Most applications one interface may have pending at once; a PushMappings mapping
    /// with more is rejected. Well above the filter's own cap (1024), because a filter
    /// whose batches failed merges its retries, and a refused mapping would be lost.
    #[arg(long, env = "SNP_MAX_APPS_PER_KEY", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_apps_per_key: u64,
    /// Largest gRPC request message decoded, in bytes (larger ones get OUT_OF_RANGE).
    #[arg(long, env = "SNP_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(256 * 1024 * 1024)))]
    pub max_message_bytes: u64,

    /// File holding a bearer token that callers in --auth-scope must present as
    /// `authorization: Bearer <token>` (whitespace trimmed; re-read when the file changes, so a
    /// rotated Secret takes effect without a restart). Without it
    /// and without --tls-client-ca, nothing is authenticated.
    #[arg(long, env = "SNP_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Which calls need the token (or a verified client certificate, with --tls-client-ca).
    /// GetMappings and WatchMappings never do.
    #[arg(long, env = "SNP_AUTH_SCOPE", value_enum, default_value_t = AuthScope::Push)]
    pub auth_scope: AuthScope,
    /// Serve gRPC over TLS with this certificate (PEM).
    #[arg(long, env = "SNP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "SNP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Verify client certificates against this CA (PEM): mutual TLS. Certificates stay
    /// optional at the handshake, so reads work without one; calls in --auth-scope need one
    /// (or the bearer token).
    #[arg(long, env = "SNP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Whose namespace a registration call may name (docs/security.md): `trust` takes the
    /// call's; `pod` requires the namespace of the pod whose address the call comes from
    /// (a watch on this node's pods, --node-name; a peer that is no pod is refused); `peer`
    /// requires the namespace in the SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`) of the
    /// client certificate verified against --tls-client-ca (a call without one is
    /// refused). `peer` also checks PushMappings sent with a client certificate.
    #[arg(long, env = "SNP_NAMESPACE_POLICY", value_enum, default_value_t = crate::identity::NamespacePolicy::Trust)]
    pub namespace_policy: crate::identity::NamespacePolicy,
    /// With --namespace-policy pod or peer, what a call naming another namespace gets:
    /// `reject` (PERMISSION_DENIED) or `rewrite` (registered in the caller's namespace).
    #[arg(long, env = "SNP_ON_MISMATCH", value_enum, default_value_t = crate::identity::OnMismatch::Reject)]
    pub on_mismatch: crate::identity::OnMismatch,

    /// Which namespaces a PushMappings batch may carry when its sender presents no
    /// credential (no token, no verified client certificate): `trust` (any; with
    /// --auth-token-file such a batch is refused as UNAUTHENTICATED) or `pod` (only the
    /// namespace of the pod at the peer address, as for a sidecar: each mapping in another
    /// namespace gets a REJECTED result, the rest are stored; a peer that is no pod of this
    /// node gets every mapping rejected). A sender with a valid credential (gateway, node
    /// proxy) may carry any namespace. A wrong token is refused either way.
    #[arg(long, env = "SNP_PUSH_NAMESPACE_POLICY", value_enum, default_value_t = crate::identity::PushPolicy::Trust)]
    pub push_namespace_policy: crate::identity::PushPolicy,

    /// Longest the shutdown flush may take after SIGTERM.
    #[arg(long, env = "SNP_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "20s")]
    pub shutdown_timeout: Duration,
    /// Log format.
    #[arg(long, env = "SNP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "SNP_LOG", default_value = "info")]
    pub log: String,

    /// The Nacos endpoint (`--nacos*`).
    #[command(flatten)]
    pub nacos: crate::nacos::NacosArgs,
    /// Journal immediate-mode registrations under --data-dir and answer only once they are
    /// on disk (group commit: one fdatasync for all calls that arrived meanwhile), so an OK
    /// survives a crash. `--journal false` answers from memory, as the seed did.
    #[arg(long, env = "SNP_JOURNAL", default_value_t = true, action = clap::ArgAction::Set)]
    pub journal: bool,
    /// Name of this shim's journal, `<data-dir>/journal/<name>/`. Shims on one node with
    /// different names (the old and the new pod of a rollout: the DaemonSet uses the pod
    /// name) each keep their own; a shim adopts the journals of names no process holds.
    #[arg(long, env = "SNP_JOURNAL_INSTANCE", default_value = "default", value_parser = parse_instance)]
    pub journal_instance: String,
}

/// A duration above zero (e.g. `4s`, `5m`).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

/// A journal instance name: one path component.
fn parse_instance(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("one path component of letters, digits, '-', '_' and '.'".to_owned())
    }
}

/// Which calls authentication applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthScope {
    /// PushMappings only (filters authenticate; apps register freely).
    Push,
    /// PushMappings and the registration API.
    All,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_seed() {
        let cli = Cli::parse_from(["snp-shim"]);
        let s = cli.serve;
        assert_eq!(s.debounce_after, Duration::from_millis(100));
        assert_eq!(s.debounce_max, Duration::from_secs(1));
        assert_eq!(s.debounce_first_check, Duration::from_millis(200));
        assert!(s.debounce);
        assert_eq!(s.ack_mode, AckMode::Immediate);
        assert_eq!(s.crd.crd_group, "extensions.istio.io");
        assert_eq!(s.store, StoreKind::Auto);
    }

    #[test]
    fn journal_flags() {
        let s = Cli::parse_from(["snp-shim"]).serve;
        assert!(s.journal, "the journal is on by default");
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/snp"));
        assert_eq!(s.journal_instance, "default");
        let s = Cli::parse_from([
            "snp-shim",
            "--journal=false",
            "--journal-instance=snp-shim-x7k2p",
        ])
        .serve;
        assert!(!s.journal);
        assert_eq!(s.journal_instance, "snp-shim-x7k2p");
        for bad in ["", "..", "a/b", "../etc", "x y"] {
            assert!(
                Cli::try_parse_from(["snp-shim", &format!("--journal-instance={bad}")]).is_err(),
                "{bad:?} must be refused"
            );
        }
        let cli = Cli::parse_from(["snp-shim", "prepare-data-dir", "--owner=1:2"]);
        match cli.command {
            Some(Command::PrepareDataDir(p)) => {
                assert_eq!(p.owner, "1:2");
                assert_eq!(p.data_dir, PathBuf::from("/var/lib/snp"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_and_timeouts_validate_with_clear_errors() {
        let s = Cli::parse_from(["snp-shim"]).serve;
        assert_eq!(s.ack_timeout, Duration::from_secs(4));
        assert_eq!(s.park_probe, Duration::from_secs(300));
        assert_eq!(
            (s.max_interface_len, s.max_apps_per_key, s.max_message_bytes),
            (1024, 65_536, 4 * 1024 * 1024)
        );
        for (flag, want) in [
            ("--park-probe=0s", "must be above zero"),
            ("--max-parked-keys=0", "0 is not in 1.."),
            ("--max-interface-len=0", "0 is not in 1..=65536"),
            ("--max-apps-per-key=0", "0 is not in 1..=1000000"),
            ("--max-message-bytes=10", "10 is not in 1024..="),
        ] {
            let err = Cli::try_parse_from(["snp-shim", flag])
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{flag}: {err}");
        }
    }
}

// ----------------------------------------------------------------------------------------
// Validation: values that parse but make no sense, refused at start-up with an error that
// names the flag (as the filter refuses its configuration), instead of being clamped or
// misbehaving later.

/// A flag whose value makes no sense, alone or with another flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for {flag}: {reason}")]
pub struct FlagError {
    /// The flag, as written on the command line (`--retry-base`).
    pub flag: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

fn refuse(flag: &'static str, reason: String) -> Result<(), FlagError> {
    Err(FlagError { flag, reason })
}

fn positive(flag: &'static str, value: Duration, why: &str) -> Result<(), FlagError> {
    if value.is_zero() {
        return refuse(flag, format!("must be greater than 0s ({why})"));
    }
    Ok(())
}

fn at_least(
    flag: &'static str,
    value: Duration,
    other: &'static str,
    other_value: Duration,
) -> Result<(), FlagError> {
    if value < other_value {
        return refuse(
            flag,
            format!(
                "{} is below {other} ({}); it must be at least {other}",
                humantime::format_duration(value),
                humantime::format_duration(other_value)
            ),
        );
    }
    Ok(())
}

impl ServeArgs {
    /// Checks the flags together; the first nonsense found is the error.
    pub fn validate(&self) -> Result<(), FlagError> {
        positive(
            "--retry-base",
            self.retry_base,
            "a failed batch would be retried in a busy loop",
        )?;
        at_least(
            "--retry-max",
            self.retry_max,
            "--retry-base",
            self.retry_base,
        )?;
        at_least(
            "--debounce-max",
            self.debounce_max,
            "--debounce-after",
            self.debounce_after,
        )?;
        positive(
            "--ack-timeout",
            self.ack_timeout,
            "every durable call and PushMappings would time out at once",
        )?;
        positive(
            "--shutdown-timeout",
            self.shutdown_timeout,
            "pending mappings would not be flushed at shutdown",
        )?;
        if self.nacos.enabled
            && self.nacos.nacos_identity == crate::nacos::NacosIdentity::Pod
            && self.namespace_policy != crate::identity::NamespacePolicy::Pod
        {
            refuse(
                "--nacos-identity",
                "pod needs --namespace-policy=pod (the shim's index of this node's pods)"
                    .to_owned(),
            )?;
        }
        if self.namespace_policy == crate::identity::NamespacePolicy::Peer
            && self.tls_client_ca.is_none()
        {
            refuse(
                "--namespace-policy",
                "peer needs --tls-client-ca (with --tls-cert and --tls-key): the caller's \
                 namespace is read from its verified client certificate"
                    .to_owned(),
            )?;
        }
        if self.namespace_policy == crate::identity::NamespacePolicy::Peer && self.nacos.enabled {
            refuse(
                "--namespace-policy",
                "peer cannot be combined with --nacos: Nacos clients present no client \
                 certificate, so their publishes would bypass the policy (use \
                 --namespace-policy=pod with --nacos-identity=pod)"
                    .to_owned(),
            )?;
        }
        if self.max_in_flight == 0 {
            refuse("--max-in-flight", "must be at least 1".to_owned())?;
        }
        if self.max_pending_keys == 0 {
            refuse(
                "--max-pending-keys",
                "must be at least 1 (0 would refuse every registration)".to_owned(),
            )?;
        }
        if !self.kube_qps.is_finite() || self.kube_qps < 0.0 {
            refuse(
                "--kube-qps",
                format!(
                    "must be a finite number of requests per second, 0 or more, not {}",
                    self.kube_qps
                ),
            )?;
        }
        if self.node_name.is_empty() || self.node_name.len() > 253 {
            refuse(
                "--node-name",
                format!(
                    "must be 1 to 253 bytes (it is the source of every batch), not {}",
                    self.node_name.len()
                ),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    fn check(flags: &[&str]) -> Result<(), FlagError> {
        let argv = std::iter::once("snp-shim").chain(flags.iter().copied());
        Cli::parse_from(argv).serve.validate()
    }

    fn refused(flags: &[&str], flag: &str, says: &str) {
        let err = check(flags).expect_err("refused");
        assert_eq!(err.flag, flag, "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("invalid value for {flag}: ")),
            "{text}"
        );
        assert!(text.contains(says), "{text}");
    }

    #[test]
    fn defaults_and_the_tests_flags_are_valid() {
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(
            check(&[
                "--debounce-first-check=5ms",
                "--debounce-after=5ms",
                "--debounce-max=20ms",
                "--retry-base=100ms",
                "--retry-max=100ms",
                "--ack-timeout=600ms",
                "--kube-qps=0",
                "--max-pending-keys=2",
            ]),
            Ok(())
        );
    }

    #[test]
    fn a_zero_retry_base_is_refused() {
        refused(&["--retry-base=0s"], "--retry-base", "greater than 0s");
        refused(&["--retry-base=0ms"], "--retry-base", "busy loop");
    }

    #[test]
    fn retry_max_below_retry_base_is_refused() {
        refused(
            &["--retry-base=2s", "--retry-max=1s"],
            "--retry-max",
            "1s is below --retry-base (2s)",
        );
    }

    #[test]
    fn debounce_max_below_debounce_after_is_refused() {
        refused(
            &["--debounce-after=500ms", "--debounce-max=100ms"],
            "--debounce-max",
            "100ms is below --debounce-after (500ms)",
        );
        assert_eq!(
            check(&["--debounce-after=500ms", "--debounce-max=500ms"]),
            Ok(())
        );
    }

    #[test]
    fn a_zero_ack_timeout_is_refused() {
        refused(&["--ack-timeout=0s"], "--ack-timeout", "greater than 0s");
    }

    #[test]
    fn other_nonsense_is_refused() {
        refused(&["--shutdown-timeout=0s"], "--shutdown-timeout", "flushed");
        refused(&["--max-in-flight=0"], "--max-in-flight", "at least 1");
        refused(
            &["--max-pending-keys=0"],
            "--max-pending-keys",
            "at least 1",
        );
        refused(&["--kube-qps=-1"], "--kube-qps", "not -1");
        refused(&["--kube-qps=NaN"], "--kube-qps", "not NaN");
        refused(&["--kube-qps=inf"], "--kube-qps", "not inf");
        refused(&["--node-name="], "--node-name", "1 to 253 bytes");
        refused(
            &["--namespace-policy=peer"],
            "--namespace-policy",
            "peer needs --tls-client-ca",
        );
        refused(
            &[
                "--namespace-policy=peer",
                "--tls-cert=c.pem",
                "--tls-key=k.pem",
            ],
            "--namespace-policy",
            "verified client certificate",
        );
        refused(
            &[
                "--namespace-policy=peer",
                "--tls-cert=c.pem",
                "--tls-key=k.pem",
                "--tls-client-ca=ca.pem",
                "--nacos",
            ],
            "--namespace-policy",
            "peer cannot be combined with --nacos",
        );
        assert_eq!(
            check(&[
                "--namespace-policy=peer",
                "--on-mismatch=rewrite",
                "--tls-cert=c.pem",
                "--tls-key=k.pem",
                "--tls-client-ca=ca.pem",
            ]),
            Ok(())
        );
        let err = Cli::try_parse_from(["snp-shim", "--push-namespace-policy=node"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[possible values: trust, pod]"), "{err}");
        let long = format!("--node-name={}", "n".repeat(254));
        refused(&[&long], "--node-name", "not 254");
    }
}
