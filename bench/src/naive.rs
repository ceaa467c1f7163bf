//! The naive baseline of figure 3: what a registry server (or client) does when it writes
//! each registration to the API server as it comes, with no debouncing or merging. Per
//! registration, one read-modify-write of the `ServiceNameMapping` object, with
//! compare-and-swap on `resourceVersion`:
//!
//! 1. `GET` the object (named as the seed server names it: `lower(interface)` with `.` ->
//!    `-`);
//! 2. not found: `POST` a new one with this application; 409 AlreadyExists: start over;
//! 3. found: union the application into `spec.applicationNames` and `PUT` it with its
//!    `resourceVersion`; 409 Conflict: start over after a random pause of up to 100 ms.
//!
//! In [`NaiveMode::SkipUnchanged`] step 3 is skipped when the application is already
//! listed: this is exactly Dubbo's `MetadataServiceNameMapping.map` (read, return if the
//! app is there, else CAS-write and retry up to 6 times), and the seed's `tryRegister`
//! without its debouncer. [`NaiveMode::Always`] writes every time (a read-modify-write per
//! registration, no check). There is no client-side rate limit (kube-rs has none): the
//! only limit is `concurrency`, the calls in flight, as in the load generator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use kube::api::{Api, PostParams};
use kube::Client;
use prost::Message;
use snp_core::{naming, AppSet, MappingKey, Rng, SplitMix64};
use snp_store::crd::{self, MappingObject};
use tokio::sync::Semaphore;

use crate::prom::RequestCounts;
use crate::stats::Latency;
use crate::workload::Rollout;

/// Whether a registration whose app is already stored is written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NaiveMode {
    /// Read, and write only if the application is missing (Dubbo's metadata report, the
    /// seed's `tryRegister`).
    SkipUnchanged,
    /// Read, union, write: every registration.
    Always,
}

/// Tries of one registration (Dubbo's default CAS retry count is 6, plus the first try).
pub const MAX_TRIES: u32 = 7;

/// What one naive run did.
#[derive(Debug, Clone)]
pub struct NaiveReport {
    /// Registrations that ended stored (written or found).
    pub ok: u64,
    /// Registrations given up after [`MAX_TRIES`] or an error, with the first error.
    pub failed: u64,
    /// The first error.
    pub first_error: Option<String>,
    /// First registration to the last answer.
    pub elapsed: Duration,
    /// Per-registration latency (all its requests).
    pub latency: Latency,
    /// First registration until the last write that added an application completed.
    pub converged: Duration,
    /// Requests sent, by verb (client side).
    pub sent: BTreeMap<&'static str, u64>,
    /// The API server's count (deltas).
    pub api: RequestCounts,
}

enum Step {
    Done { grew: bool },
    Retry,
}

async fn once(
    api: &Api<MappingObject>,
    ar: &kube::core::ApiResource,
    key: &MappingKey,
    app: &str,
    mode: NaiveMode,
    sent: &mut BTreeMap<&'static str, u64>,
) -> Result<Step> {
    let name = naming::seed_name(&key.interface);
    *sent.entry("GET").or_default() += 1;
    match api.get_opt(&name).await? {
        None => {
            let mut apps = AppSet::new();
            apps.insert(app);
            let obj = crd::new_object(ar, &name, key, &apps);
            *sent.entry("POST").or_default() += 1;
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => Ok(Step::Done { grew: true }),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Step::Retry),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut obj) => {
            let present = obj.spec.application_names.iter().any(|a| a == app);
            if present && mode == NaiveMode::SkipUnchanged {
                return Ok(Step::Done { grew: false });
            }
            if !present {
                obj.spec.application_names.push(app.to_owned());
            }
            *sent.entry("PUT").or_default() += 1;
            match api.replace(&name, &PostParams::default(), &obj).await {
                Ok(_) => Ok(Step::Done { grew: !present }),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Step::Retry),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Runs the rollout against the API server, one read-modify-write per registration.
pub async fn run(
    client: &Client,
    group: &str,
    rollout: &Rollout,
    concurrency: usize,
    mode: NaiveMode,
) -> Result<NaiveReport> {
    let ar = crd::api_resource(group, crd::DEFAULT_VERSION);
    crate::kube::ensure_namespaces(client, rollout).await?;
    let before = crate::kube::request_counts(client, group).await?;
    let pods = rollout.pods();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = tokio::time::Instant::now();
    let first_sent = Instant::now() + pods.first().map_or(Duration::ZERO, |p| p.start);
    let mut set = tokio::task::JoinSet::new();
    for pod in pods {
        let client = client.clone();
        let ar = ar.clone();
        let sem = Arc::clone(&sem);
        set.spawn(async move {
            tokio::time::sleep_until(start + pod.start).await;
            let mut rng = SplitMix64::new(pod.index as u64 + 1);
            let mut lat = Vec::new();
            let mut failed = Vec::new();
            let mut last_growth: Option<Instant> = None;
            let mut sent = BTreeMap::new();
            for body in pod.calls {
                let Ok(_permit) = sem.acquire().await else {
                    break;
                };
                let Ok(req) = snp_proto::dubbo::ServiceMappingRequest::decode(body) else {
                    continue;
                };
                let api: Api<MappingObject> =
                    Api::namespaced_with(client.clone(), &req.namespace, &ar);
                let t = Instant::now();
                let mut result = Err(anyhow::anyhow!("gave up after {MAX_TRIES} tries (409s)"));
                for iface in &req.interface_names {
                    let key = MappingKey::new(req.namespace.as_str(), iface.as_str());
                    for _ in 0..MAX_TRIES {
                        match once(&api, &ar, &key, &req.application_name, mode, &mut sent).await {
                            Ok(Step::Done { grew }) => {
                                if grew {
                                    last_growth = Some(Instant::now());
                                }
                                result = Ok(());
                                break;
                            }
                            Ok(Step::Retry) => {
                                tokio::time::sleep(Duration::from_millis(rng.next_u64() % 100))
                                    .await;
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                }
                match result {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (lat, failed, last_growth, sent, Instant::now())
        });
    }
    let mut latency = Latency::new();
    let mut ok = 0;
    let mut failed = 0;
    let mut first_error = None;
    let mut end = first_sent;
    let mut converged_at = first_sent;
    let mut sent: BTreeMap<&'static str, u64> = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        if let Ok((lat, fails, growth, s, finished)) = r {
            ok += lat.len() as u64;
            for d in lat {
                latency.record(d);
            }
            failed += fails.len() as u64;
            if first_error.is_none() {
                first_error = fails.into_iter().next();
            }
            if let Some(g) = growth {
                converged_at = converged_at.max(g);
            }
            for (k, v) in s {
                *sent.entry(k).or_default() += v;
            }
            end = end.max(finished);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = crate::kube::request_counts(client, group).await?;
    Ok(NaiveReport {
        ok,
        failed,
        first_error,
        elapsed: end.saturating_duration_since(first_sent),
        latency,
        converged: converged_at.saturating_duration_since(first_sent),
        sent,
        api: after.since(&before),
    })
}
