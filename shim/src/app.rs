//! Assembles the shim from its parts and runs it until shutdown.
//!
//! [`start`] binds both listeners first (so their addresses are known, also with port 0 in
//! tests), starts the operations endpoint, and runs the rest in a task: connect the store
//! (the Kubernetes store is retried with backoff until it answers; `/readyz` says 503
//! meanwhile), start the pipeline and the gRPC services.
//!
//! Readiness latches: once the store has been reachable and synced, `/readyz` stays 200
//! through later store outages, until shutdown. The Service is node-local
//! (`internalTrafficPolicy: Local`), so an unready shim would leave its node with no
//! endpoint at all, and apps that never retry (grpc-java Dubbo) would lose registrations
//! the shim could have buffered and written after the outage. The live state is the
//! `snp_store_ready` gauge. [`ShimHandle::shutdown`] (SIGTERM in
//! the binary) then:
//!
//! 1. marks the shim not ready and stops accepting gRPC calls; open watches end;
//! 2. flushes every pending mapping at once (debounce windows and retry backoff skipped);
//! 3. lets calls in progress finish (durable waiters get their answer);
//! 4. waits until the pipeline is idle, all within `--shutdown-timeout`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use snp_core::{Backoff, DebounceConfig, Limits, SplitMix64};
use snp_proto::api::mapping_service_server::MappingServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::auth::{Auth, AuthError};
use crate::config::{ServeArgs, StoreKind};
use crate::grpc::mapping::MappingApi;
use crate::grpc::registration::{AdminFlavour, DubboFlavour, RegistrationServer};
use crate::grpc::Shared;
use crate::http::{self, Readiness};
use crate::metrics::Metrics;
use crate::pipeline::{ParkedView, Pipeline};
use crate::status::{StatusHub, StoreInfo};
use crate::store::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use crate::store::kube::{KubeStore, KubeStoreConfig};
use crate::store::{Store, StoreError};
use crate::tls::{ReloadableTls, TlsError, TlsFiles};

/// How long open calls may still run once everything pending was flushed at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the shim could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS files could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// Authentication could not be set up.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Nacos endpoint could not start.
    #[error(transparent)]
    Nacos(#[from] crate::nacos::NacosError),
    /// The shim's task ended abnormally.
    #[error("the shim task failed: {0}")]
    Task(String),
    /// A flag's value makes no sense.
    #[error(transparent)]
    Flags(#[from] crate::config::FlagError),
    /// The journal could not be opened (e.g. another shim holds the data directory).
    #[error(transparent)]
    Journal(#[from] snp_journal::JournalError),
}

/// How the shim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    /// Whether every pending mapping reached the store before the exit.
    pub drained: bool,
    /// Keys still pending at exit (lost unless a client sends them again).
    pub pending_keys: u64,
}

/// Which store `--store` selects, given the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded store in this directory.
    Embedded(PathBuf),
    /// The Kubernetes API.
    Kubernetes,
}

/// What `--store auto` looks at: the ways kube-rs' `Config::infer` finds a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeEnv {
    /// Running in a pod (`KUBERNETES_SERVICE_HOST` is set).
    pub in_cluster: bool,
    /// `KUBECONFIG`, if set.
    pub kubeconfig_env: Option<PathBuf>,
    /// `~/.kube/config`, if it exists.
    pub home_kubeconfig: Option<PathBuf>,
}

impl KubeEnv {
    /// The environment of this process.
    pub fn detect() -> Self {
        Self {
            in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
            kubeconfig_env: std::env::var_os("KUBECONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            home_kubeconfig: crate::store::kube::default_kubeconfig().filter(|p| p.is_file()),
        }
    }
}

/// `--store auto` means Kubernetes when `--kubeconfig` is given, when `KUBECONFIG` is set,
/// when `~/.kube/config` exists, or when running in a pod, in that order (as
/// `kube::Config::infer` looks); else the embedded store. Returns the choice and why, for
/// the log.
pub fn choose_store(args: &ServeArgs, env: &KubeEnv) -> (StoreChoice, String) {
    let embedded = || StoreChoice::Embedded(args.data_dir.clone());
    match args.store {
        StoreKind::Embedded => (embedded(), "--store embedded".into()),
        StoreKind::Kubernetes => (StoreChoice::Kubernetes, "--store kubernetes".into()),
        StoreKind::Auto => {
            if let Some(k) = &args.kubeconfig {
                (
                    StoreChoice::Kubernetes,
                    format!("--kubeconfig {}", k.display()),
                )
            } else if let Some(k) = &env.kubeconfig_env {
                (
                    StoreChoice::Kubernetes,
                    format!("KUBECONFIG={}", k.display()),
                )
            } else if let Some(k) = &env.home_kubeconfig {
                (StoreChoice::Kubernetes, format!("{} exists", k.display()))
            } else if env.in_cluster {
                (
                    StoreChoice::Kubernetes,
                    "running in a pod (KUBERNETES_SERVICE_HOST)".into(),
                )
            } else {
                (
                    embedded(),
                    "no --kubeconfig, KUBECONFIG, ~/.kube/config nor in-cluster configuration"
                        .into(),
                )
            }
        }
    }
}

/// The debouncer settings the flags ask for.
pub fn debounce_config(args: &ServeArgs) -> DebounceConfig {
    let defaults = DebounceConfig::default();
    // Enough doublings of the base to reach the cap.
    let mut max_failures = 0u32;
    while max_failures < 31
        && args
            .retry_base
            .checked_mul(1u32 << max_failures)
            .is_some_and(|d| d < args.retry_max)
    {
        max_failures += 1;
    }
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    DebounceConfig {
        enabled: args.debounce,
        debounce_after: args.debounce_after,
        debounce_max: args.debounce_max,
        first_check: args.debounce_first_check,
        max_in_flight: args.max_in_flight.max(1),
        max_pending_keys: args.max_pending_keys.max(1),
        retry: Backoff {
            base: args.retry_base,
            cap: args.retry_max,
            max_failures: max_failures.max(1),
            jitter: defaults.retry.jitter,
        },
        seed,
        max_apps_per_key: usize::try_from(args.max_apps_per_key).unwrap_or(usize::MAX),
        park_probe: args.park_probe,
        max_parked_keys: usize::try_from(args.max_parked_keys).unwrap_or(usize::MAX),
        // The store's cache already skips writes of what it holds, so the shim keeps no
        // acknowledged set of its own: a key an operator deleted is written again by the
        // next registration.
        suppress_acked_for: Duration::ZERO,
        ..defaults
    }
}

/// The input limits the flags ask for (the rest are the filter's).
pub fn limits(args: &ServeArgs) -> Limits {
    Limits {
        max_interface_len: usize::try_from(args.max_interface_len).unwrap_or(usize::MAX),
        ..Limits::default()
    }
}

/// A running shim.
pub struct ShimHandle {
    /// Where gRPC is served.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_addr: SocketAddr,
    /// The shim's metrics.
    pub metrics: Metrics,
    /// Where the Nacos endpoint is served (`--nacos`).
    pub nacos_addr: Option<SocketAddr>,
    /// Where the Nacos login stub is served (`--nacos-login-addr`).
    pub nacos_login_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<Result<ExitReport, ShimError>>>,
}

impl ShimHandle {
    /// Starts the graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits for the shim to stop (after [`ShimHandle::shutdown`], or after a fatal error).
    /// Cancel-safe; once it returned, later calls fail.
    pub async fn join(&mut self) -> Result<ExitReport, ShimError> {
        let Some(task) = self.task.as_mut() else {
            return Err(ShimError::Task("already joined".into()));
        };
        let result = task.await;
        self.task = None;
        result.map_err(|e| ShimError::Task(e.to_string()))?
    }

    /// Shuts down and waits.
    pub async fn stop(mut self) -> Result<ExitReport, ShimError> {
        self.shutdown();
        self.join().await
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ShimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ShimError::Bind { addr, source })
}

/// The TLS files the flags name, loaded (`None` without `--tls-cert`).
fn load_tls(args: &ServeArgs) -> Result<Option<ReloadableTls>, ShimError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: args.tls_client_ca.clone(),
    };
    Ok(Some(ReloadableTls::load(files)?))
}

/// Binds the listeners and starts the shim. Returns once both ports accept connections.
pub async fn start(args: ServeArgs) -> Result<ShimHandle, ShimError> {
    args.validate()?;
    let token = args
        .auth_token_file
        .as_deref()
        .map(Auth::read_token)
        .transpose()?;
    let auth = Auth::new(token, args.tls_client_ca.is_some(), args.auth_scope);
    let tls = load_tls(&args)?;
    // Journal hook: lock and replay before binding, so a second shim on the same data
    // directory fails at once.
    let journal = crate::journal::open(&args).await?;
    let grpc = bind(args.grpc_addr).await?;
    let http_listener = bind(args.http_addr).await?;
    let grpc_addr = grpc.local_addr().map_err(|source| ShimError::Bind {
        addr: args.grpc_addr,
        source,
    })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| ShimError::Bind {
            addr: args.http_addr,
            source,
        })?;

    let registrations_need_auth =
        auth.enabled() && args.auth_scope == crate::config::AuthScope::All;
    let nacos = crate::nacos::bind(&args.nacos, registrations_need_auth).await?;
    let nacos_addr = nacos.as_ref().map(|n| n.addr);
    let nacos_login_addr = nacos.as_ref().and_then(|n| n.login_addr);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    if let Some(j) = &journal {
        registry.register_collector(Box::new(crate::journal::JournalCollector(
            j.journal.journal().clone(),
        )));
    }
    let registry = Arc::new(registry);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Rotation without restart. The watches end at shutdown, and with the shim's task
    // whichever way it ends.
    let mut watches = Vec::new();
    if let Some(path) = &args.auth_token_file {
        watches.extend(auth.watch_token_file(
            path.clone(),
            crate::reload::DEFAULT_PERIOD,
            metrics.clone(),
            shutdown_rx.clone(),
        ));
    }
    if let Some(tls) = &tls {
        watches.push(tls.watch(
            crate::reload::DEFAULT_PERIOD,
            metrics.clone(),
            shutdown_rx.clone(),
        ));
    }

    let synced_once = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    let ready: Readiness = {
        let synced_once = Arc::clone(&synced_once);
        let stopping = Arc::clone(&stopping);
        Arc::new(move || !stopping.load(Ordering::Relaxed) && synced_once.load(Ordering::Relaxed))
    };
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let parked = ParkedView::default();
    let status = StatusHub::new(
        metrics.clone(),
        &args,
        ready.clone(),
        parked.clone(),
        journal.as_ref().map(|j| j.journal.journal().clone()),
    );
    let http_task = tokio::spawn(http::serve(
        http_listener,
        Arc::clone(&registry),
        ready,
        parked.clone(),
        status.router(),
        async move {
            let _ = http_stop_rx.await;
        },
    ));

    let ctx = Context {
        args,
        auth,
        tls,
        grpc,
        nacos,
        metrics: metrics.clone(),
        shutdown: shutdown_rx,
        synced_once,
        stopping,
        status: status.clone(),
        parked,
        journal,
    };
    let task = tokio::spawn(async move {
        let result = ctx.run().await;
        for w in watches {
            w.abort();
        }
        status.close();
        let _ = http_stop_tx.send(());
        let _ = http_task.await;
        result
    });
    tracing::info!(%grpc_addr, %http_addr, "snp-shim listening");
    Ok(ShimHandle {
        grpc_addr,
        http_addr,
        metrics,
        nacos_addr,
        nacos_login_addr,
        shutdown: shutdown_tx,
        task: Some(task),
    })
}

struct Context {
    args: ServeArgs,
    auth: Auth,
    tls: Option<ReloadableTls>,
    grpc: TcpListener,
    nacos: Option<crate::nacos::Listeners>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
    /// Set once the store was first reachable and synced; `/readyz` follows it.
    synced_once: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    /// The status page, shown the store once it is up.
    status: StatusHub,
    /// The parked keys, kept by the pipeline, listed at `/parked`.
    parked: ParkedView,
    /// The opened journal and what it recovered (journal hook).
    journal: Option<crate::journal::Opened>,
}

impl Context {
    async fn run(self) -> Result<ExitReport, ShimError> {
        let (choice, why) = choose_store(&self.args, &KubeEnv::detect());
        match &choice {
            StoreChoice::Embedded(dir) => {
                tracing::info!(store = "embedded", dir = %dir.display(), because = %why, "store chosen")
            }
            StoreChoice::Kubernetes => {
                tracing::info!(store = "kubernetes", because = %why, "store chosen")
            }
        }
        match choice {
            StoreChoice::Embedded(dir) => {
                let store = EmbeddedStore::open(
                    EmbeddedStoreConfig {
                        dir,
                        group: self.args.crd.crd_group.clone(),
                        version: self.args.crd.crd_version.clone(),
                    },
                    self.metrics.clone(),
                )
                .await?;
                let location = store.dir().display().to_string();
                self.status.attach(
                    store.clone(),
                    StoreInfo {
                        kind: "embedded",
                        location,
                    },
                );
                self.serve(store).await
            }
            StoreChoice::Kubernetes => {
                let location = format!("{}/{}", self.args.crd.crd_group, self.args.crd.crd_version);
                let cfg = kube_store_config(&self.args);
                let mut shutdown = self.shutdown.clone();
                let store = tokio::select! {
                    s = connect_kube(cfg, self.metrics.clone()) => s,
                    _ = crate::shutdown::signalled(&mut shutdown) => {
                        return Ok(ExitReport { drained: true, pending_keys: 0 });
                    }
                };
                self.status.attach(
                    store.clone(),
                    StoreInfo {
                        kind: "kubernetes",
                        location,
                    },
                );
                self.serve(store).await
            }
        }
    }

    async fn serve<S: Store>(mut self, store: S) -> Result<ExitReport, ShimError> {
        let identity = identity_of(&self.args, self.shutdown.clone()).await?;
        tokio::spawn(track_store_readiness(
            store.clone(),
            Arc::clone(&self.synced_once),
            self.metrics.clone(),
            self.shutdown.clone(),
        ));
        // Journal hook: forget what the store wrote; recovered entries become pending.
        let journal = self.journal.take();
        let (pipeline, pipeline_task) = Pipeline::spawn_with(
            store.clone(),
            debounce_config(&self.args),
            self.metrics.clone(),
            self.parked.clone(),
            journal.as_ref().map(|j| j.journal.stored_hook()),
        );
        let journal = match journal {
            Some(j) => {
                crate::journal::offer_recovered(&pipeline, &j.recovered, j.journal.replay_apps())
                    .await;
                tokio::spawn(j.journal.clone().sweep(
                    store.clone(),
                    pipeline.clone(),
                    self.shutdown.clone(),
                ));
                Some(j.journal)
            }
            None => None,
        };
        // Closed at the end, whoever still holds a handle: the lock is released at once.
        let close_journal = journal.clone();
        let shared = Arc::new(Shared {
            store,
            pipeline: pipeline.clone(),
            metrics: self.metrics.clone(),
            auth: self.auth.clone(),
            ack_mode: self.args.ack_mode,
            ack_timeout: self.args.ack_timeout,
            limits: limits(&self.args),
            max_apps_per_key: usize::try_from(self.args.max_apps_per_key).unwrap_or(usize::MAX),
            max_message_bytes: usize::try_from(self.args.max_message_bytes).unwrap_or(usize::MAX),
            identity,
            shutdown: self.shutdown.clone(),
            journal,
        });
        let router = Server::builder()
            .layer(crate::grpc::registration::PathGuardLayer)
            .add_service(RegistrationServer::<S, DubboFlavour>::new(Arc::clone(
                &shared,
            )))
            .add_service(RegistrationServer::<S, AdminFlavour>::new(Arc::clone(
                &shared,
            )))
            .add_service(
                MappingServiceServer::new(MappingApi::new(Arc::clone(&shared)))
                    .max_decoding_message_size(shared.max_message_bytes),
            );
        if let Some(nacos) = self.nacos.take() {
            tokio::spawn(crate::nacos::serve(
                nacos,
                Arc::clone(&shared),
                self.args.nacos.clone(),
                self.shutdown.clone(),
            ));
        }
        drop(shared);
        let mut stop_grpc = self.shutdown.clone();
        let stop = async move {
            crate::shutdown::signalled(&mut stop_grpc).await;
        };
        let mut grpc_task = match &self.tls {
            // TLS served here, not by tonic, so that rotated files take effect.
            Some(tls) => {
                let incoming = tls.incoming(self.grpc, self.shutdown.clone());
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
            }
            None => {
                let incoming = TcpIncoming::from(self.grpc).with_nodelay(Some(true));
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
            }
        };
        tracing::info!(
            ack_mode = ?self.args.ack_mode,
            debounce = self.args.debounce,
            auth = self.auth.enabled(),
            tls = self.tls.is_some(),
            mutual_tls = self.tls.as_ref().is_some_and(ReloadableTls::mutual),
            namespace_policy = ?self.args.namespace_policy,
            "serving"
        );

        let mut shutdown = self.shutdown.clone();
        let ended = tokio::select! {
            biased;
            _ = crate::shutdown::signalled(&mut shutdown) => None,
            r = &mut grpc_task => Some(r),
        };
        let grpc_done = match ended {
            Some(r) if !*self.shutdown.borrow() => {
                // The server ended by itself: an error. Still try to write what is pending.
                let err = match r {
                    Ok(Ok(())) => ShimError::Task("the gRPC server stopped".into()),
                    Ok(Err(e)) => ShimError::Grpc(e),
                    Err(e) => ShimError::Task(e.to_string()),
                };
                tracing::error!(error = %err, "gRPC server failed");
                self.stopping.store(true, Ordering::Relaxed);
                pipeline.flush().await;
                let _ = tokio::time::timeout(self.args.shutdown_timeout, pipeline.drain()).await;
                crate::journal::close(close_journal).await;
                return Err(err);
            }
            other => other.is_some(),
        };

        self.stopping.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.args.shutdown_timeout;
        tracing::info!(
            pending_keys = self.metrics.pending_keys.get(),
            timeout = %humantime::format_duration(self.args.shutdown_timeout),
            "shutting down: no new calls; flushing"
        );
        pipeline.flush().await;
        // Calls in progress may still offer mappings (and durable ones wait for them), so
        // the pipeline drains while the server winds down. Once drained, open calls get a
        // short grace to send their answers; idle connections do not hold the exit up.
        let mut drained = false;
        if !grpc_done {
            tokio::select! {
                r = tokio::time::timeout_at(deadline, &mut grpc_task) => match r {
                    Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::warn!("calls still open at the shutdown deadline; closing them");
                        grpc_task.abort();
                    }
                },
                r = tokio::time::timeout_at(deadline, pipeline.drain()) => {
                    drained = matches!(r, Ok(Ok(_)));
                    let grace = (tokio::time::Instant::now() + SHUTDOWN_GRACE).min(deadline);
                    if tokio::time::timeout_at(grace, &mut grpc_task).await.is_err() {
                        tracing::info!("closing connections still open after the flush");
                        grpc_task.abort();
                    }
                }
            }
        }
        // Again: a call that finished during the grace may have offered more.
        drained = matches!(
            tokio::time::timeout_at(deadline, pipeline.drain()).await,
            Ok(Ok(_))
        ) || (drained && self.metrics.pending_keys.get() == 0);
        let pending_keys = u64::try_from(self.metrics.pending_keys.get()).unwrap_or(0);
        if drained {
            tracing::info!("every pending mapping is in the store; bye");
        } else {
            tracing::error!(
                pending_keys,
                "shutdown deadline passed with mappings not written; their senders must register again"
            );
        }
        let parked = self.parked.len();
        if parked > 0 {
            tracing::warn!(
                parked_keys = parked,
                "parked keys were refused by the store for good and are not stored; see the `key parked` lines"
            );
        }
        drop(pipeline);
        pipeline_task.abort();
        crate::journal::close(close_journal).await;
        Ok(ExitReport {
            drained,
            pending_keys,
        })
    }
}

/// The Kubernetes store's settings (also the client of the pod reflector).
pub fn kube_store_config(args: &ServeArgs) -> KubeStoreConfig {
    KubeStoreConfig {
        kubeconfig: args.kubeconfig.clone(),
        group: args.crd.crd_group.clone(),
        version: args.crd.crd_version.clone(),
        qps: args.kube_qps,
        burst: args.kube_burst,
        writer: args.node_name.clone(),
        create_spread: args.kube_create_spread,
        update_spread: args.kube_update_spread,
    }
}

/// The namespace policies of the registration API and of `PushMappings`. `pod` (either)
/// starts one reflector over this node's pods (`--node-name`), with the store's Kubernetes
/// client settings; it ends at shutdown. `peer` needs nothing but the client certificates
/// the TLS layer verifies.
async fn identity_of(
    args: &ServeArgs,
    mut shutdown: watch::Receiver<bool>,
) -> Result<crate::identity::Identity, ShimError> {
    use crate::identity::{CallerResolver, Identity, NamespacePolicy, PodIndex, PushPolicy};
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let pod_push = args.push_namespace_policy == PushPolicy::Pod;
    match args.namespace_policy {
        NamespacePolicy::Trust if !pod_push => return Ok(Identity::trust()),
        NamespacePolicy::Peer if !pod_push => {
            tracing::info!(on_mismatch = ?args.on_mismatch, "namespace policy peer: the SPIFFE ID of the client certificate");
            return Ok(Identity::peer(args.on_mismatch));
        }
        _ => {}
    }
    let cfg = kube_store_config(args);
    let client = crate::store::kube::client(&cfg).await?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client);
    let (reader, writer) = reflector::store();
    let watch = watcher::Config::default().fields(&PodIndex::field_selector(&args.node_name));
    let stream = reflector(writer, watcher(pods, watch)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                    Some(Ok(_)) => {}
                    None => break,
                },
                _ = crate::shutdown::signalled(&mut shutdown) => break,
            }
        }
    });
    tracing::info!(
        node = %args.node_name,
        registration = ?args.namespace_policy,
        on_mismatch = ?args.on_mismatch,
        push = ?args.push_namespace_policy,
        "namespace policy pod: watching this node's pods"
    );
    let index: std::sync::Arc<dyn CallerResolver> = std::sync::Arc::new(PodIndex::new(reader));
    let identity = match args.namespace_policy {
        NamespacePolicy::Pod => Identity::pod(args.on_mismatch, std::sync::Arc::clone(&index)),
        NamespacePolicy::Peer => Identity::peer(args.on_mismatch),
        NamespacePolicy::Trust => Identity::trust(),
    };
    Ok(if pod_push {
        identity.with_pod_push(index)
    } else {
        identity
    })
}

/// Connects the Kubernetes store, retrying with backoff (1 s doubling to 30 s) until it
/// succeeds.
async fn connect_kube(cfg: KubeStoreConfig, metrics: Metrics) -> KubeStore {
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 5).with_jitter(0.2);
    let mut rng = SplitMix64::new(u64::from(std::process::id()));
    let mut failures = 0;
    loop {
        match KubeStore::connect(cfg.clone(), metrics.clone()).await {
            Ok(store) => {
                tracing::info!(group = %cfg.group, version = %cfg.version, "Kubernetes store synced");
                return store;
            }
            Err(e) => {
                let delay = backoff.delay_with_jitter(failures, &mut rng);
                failures = backoff.next_failures(failures);
                tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the Kubernetes API");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the shim");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How often the store's live readiness is sampled for `/readyz` and `snp_store_ready`.
const READINESS_SAMPLE: Duration = Duration::from_millis(250);

/// Latches `synced_once` when the store is first ready, and keeps the `snp_store_ready`
/// gauge on the live state until shutdown.
async fn track_store_readiness<S: Store>(
    store: S,
    synced_once: Arc<AtomicBool>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let live = store.is_ready();
        metrics.store_ready.set(i64::from(live));
        if live && !synced_once.swap(true, Ordering::Relaxed) {
            tracing::info!("store synced; ready");
        }
        tokio::select! {
            _ = tokio::time::sleep(READINESS_SAMPLE) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["snp-shim"];
        argv.extend(extra);
        Cli::parse_from(argv).serve
    }

    #[test]
    fn auto_store_follows_the_environment() {
        let none = KubeEnv::default();
        let pod = KubeEnv {
            in_cluster: true,
            ..KubeEnv::default()
        };
        let a = args(&["--data-dir=/d"]);
        let (choice, why) = choose_store(&a, &none);
        assert_eq!(choice, StoreChoice::Embedded("/d".into()));
        assert!(why.contains("no --kubeconfig, KUBECONFIG"), "{why}");
        assert_eq!(choose_store(&a, &pod).0, StoreChoice::Kubernetes);
        let k = args(&["--kubeconfig=/k"]);
        assert_eq!(choose_store(&k, &none).0, StoreChoice::Kubernetes);
        let e = args(&["--store=embedded", "--kubeconfig=/k"]);
        assert!(matches!(choose_store(&e, &pod).0, StoreChoice::Embedded(_)));
        let kube = args(&["--store=kubernetes"]);
        assert_eq!(choose_store(&kube, &none).0, StoreChoice::Kubernetes);
        // KUBECONFIG and ~/.kube/config count, and the log says which was used.
        let env = KubeEnv {
            kubeconfig_env: Some("/etc/kc".into()),
            ..KubeEnv::default()
        };
        assert_eq!(
            choose_store(&a, &env),
            (StoreChoice::Kubernetes, "KUBECONFIG=/etc/kc".into())
        );
        let home = KubeEnv {
            home_kubeconfig: Some("/home/u/.kube/config".into()),
            ..KubeEnv::default()
        };
        assert_eq!(
            choose_store(&a, &home),
            (
                StoreChoice::Kubernetes,
                "/home/u/.kube/config exists".into()
            )
        );
    }

    #[test]
    fn the_shim_keeps_no_acknowledged_set_of_its_own() {
        assert_eq!(
            debounce_config(&args(&[])).suppress_acked_for,
            Duration::ZERO
        );
    }

    #[test]
    fn debounce_config_follows_the_flags() {
        let d = debounce_config(&args(&[]));
        assert_eq!(d.debounce_after, Duration::from_millis(100));
        assert_eq!(d.debounce_max, Duration::from_secs(1));
        assert_eq!(d.first_check, Duration::from_millis(200));
        // 500 ms << 6 = 32 s reaches the 30 s cap: 1, 2, 4, 8, 16, 30 s.
        assert_eq!(d.retry.max_failures, 6);
        let delays: Vec<u64> = (1..=7)
            .map(|f| d.retry.delay(f).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
        let off = debounce_config(&args(&[
            "--debounce=false",
            "--retry-base=1s",
            "--retry-max=1s",
        ]));
        assert!(!off.enabled);
        assert_eq!(off.retry.delay(5), Duration::from_secs(1));
    }
}
