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
    /// Directory of the embedded store: one ServiceNameMapping manifest per object, as
    /// `<namespace>/<object-name>.yaml` (`kubectl apply -R -f <dir>` loads it into a
    /// cluster). Read at startup; this shim is its only writer.
    #[arg(long, env = "SNP_DATA_DIR", default_value = "snp-data")]
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
    /// Client-side burst of Kubernetes API requests above --kube-qps.
    #[arg(long, env = "SNP_KUBE_BURST", default_value_t = 40)]
    pub kube_burst: u32,

    /// When a registration call is answered.
    #[arg(long, env = "SNP_ACK_MODE", value_enum, default_value_t = AckMode::Immediate)]
    pub ack_mode: AckMode,
    /// Longest a durable-mode call or a PushMappings call waits for the store; then it gets
    /// UNAVAILABLE (the mappings stay pending and are retried).
    #[arg(long, env = "SNP_ACK_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
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
    /// (a watch on this node's pods, --node-name; a peer that is no pod is refused).
    #[arg(long, env = "SNP_NAMESPACE_POLICY", value_enum, default_value_t = crate::identity::NamespacePolicy::Trust)]
    pub namespace_policy: crate::identity::NamespacePolicy,
    /// With --namespace-policy pod, what a call naming another namespace gets: `reject`
    /// (PERMISSION_DENIED) or `rewrite` (registered in the caller's namespace).
    #[arg(long, env = "SNP_ON_MISMATCH", value_enum, default_value_t = crate::identity::OnMismatch::Reject)]
    pub on_mismatch: crate::identity::OnMismatch,

    /// Longest the shutdown flush may take after SIGTERM.
    #[arg(long, env = "SNP_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "20s")]
    pub shutdown_timeout: Duration,
    /// Log format.
    #[arg(long, env = "SNP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "SNP_LOG", default_value = "info")]
    pub log: String,
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
}
