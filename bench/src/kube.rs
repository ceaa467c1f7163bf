//! The Kubernetes API server side of the benchmarks: clients from a kubeconfig, the CRD,
//! `apiserver_request_total` from the server's own `/metrics`, and reading back what the
//! server holds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use snp_core::{MappingKey, Mappings};
use snp_store::crd;

use crate::prom::RequestCounts;
use crate::workload::Rollout;

/// An API server and the CRD group the run uses.
#[derive(Debug, Clone)]
pub struct KubeTarget {
    /// An administrator's kubeconfig (it reads `/metrics` and creates namespaces).
    pub kubeconfig: PathBuf,
    /// The ServiceNameMapping group.
    pub group: String,
}

/// A client for `kubeconfig`.
pub async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The server's `/metrics` text.
pub async fn metrics_text(client: &Client) -> Result<String> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    client.request_text(req).await.context("GET /metrics")
}

/// `apiserver_request_total` for `servicenamemappings.<group>`, by verb and code; an error
/// if the server's `/metrics` has no `apiserver_request_total` at all.
pub async fn request_counts(client: &Client, group: &str) -> Result<RequestCounts> {
    RequestCounts::parse(&metrics_text(client).await?, group)
        .context("apiserver_request_total in the API server's /metrics")
}

/// Creates the `ServiceNameMapping` CRD under `group` (if missing) and waits until its
/// resources are served.
pub async fn register_crd(client: &Client, group: &str) -> Result<()> {
    let yaml = crd::crd_yaml(group, crd::DEFAULT_VERSION)?;
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&yaml)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("create the CRD"),
    }
    let ar = crd::api_resource(group, crd::DEFAULT_VERSION);
    let objs: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match objs.list(&ListParams::default().limit(1)).await {
            Ok(_) => return warm_up(client, &ar).await,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("servicenamemappings.{group} not served within 60 s: {e}"),
        }
    }
}

/// Creates the namespaces of `rollout` that do not exist yet: the API server refuses objects
/// in a namespace that does not exist, and in a cluster the applications' namespaces exist
/// before their pods register.
pub async fn ensure_namespaces(client: &Client, rollout: &Rollout) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for n in 0..rollout.namespaces {
        let name = rollout.namespace(n);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("create namespace {name}")),
        }
    }
    Ok(())
}

/// A dry-run create, which stores nothing. The test API server takes about 2 s over the
/// first write of a newly registered resource type, later ones take milliseconds; in a
/// cluster the CRD has long been written to. Without this, that one-off delay keeps every
/// shim's first creates in flight together, so they all race for the same names.
async fn warm_up(client: &Client, ar: &ApiResource) -> Result<()> {
    let objs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", ar);
    let obj = DynamicObject::new("warm-up", ar).within("default").data(
        serde_json::json!({"spec": {"interfaceName": "warm.Up", "applicationNames": ["warm-up"]}}),
    );
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    objs.create(&pp, &obj)
        .await
        .context("dry-run create (warm-up)")?;
    Ok(())
}

/// Every mapping the server holds under `group` in namespaces starting with `prefix`.
pub async fn list_mappings(client: &Client, group: &str, prefix: &str) -> Result<Mappings> {
    let ar = crd::api_resource(group, crd::DEFAULT_VERSION);
    let objs: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut out = Mappings::new();
    let mut lp = ListParams::default().limit(5000);
    loop {
        let list = objs.list(&lp).await.context("list servicenamemappings")?;
        for o in &list.items {
            let ns = o.metadata.namespace.clone().unwrap_or_default();
            if !ns.starts_with(prefix) {
                continue;
            }
            let spec = &o.data["spec"];
            let Some(iface) = spec["interfaceName"].as_str() else {
                continue;
            };
            let key = MappingKey::new(ns.as_str(), iface);
            for a in spec["applicationNames"].as_array().into_iter().flatten() {
                if let Some(a) = a.as_str() {
                    out.insert(key.clone(), a);
                }
            }
        }
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(out),
        }
    }
}
