//! The Kubernetes manifests in `deploy/`:
//!
//! 1. `deploy/crd.yaml` is exactly what `snp-shim crd` prints (generated from the Rust type);
//! 2. every document of every YAML file in `deploy/` parses into its typed Kubernetes
//!    structure (k8s-openapi; `snp_shim::crd::ServiceNameMapping` for the sample), and a
//!    field those types don't know is an error: k8s-openapi skips unknown fields silently,
//!    so every skipped field is caught with `serde_ignored`;
//! 3. the objects say what the shim needs (RBAC verbs, probes, security, ports, the
//!    node-local Service, env flags the shim accepts);
//! 4. the CRD and the sample custom resource are applied for real (server-side apply, strict
//!    field validation) to the test API server (kube-apiserver), and the shim's Kubernetes
//!    store, acting as the shim's service account, reads and reuses the sample object.
//!
//! Every manifest is also dry-run against the real API server (admission, validation,
//! PodSecurity) and the shim's effective permissions are compared with `deploy/rbac.yaml`:
//! `kube_admission.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use serde_yaml_ng::Value;
use snp_core::{naming, AppSet, MappingKey, Mappings};
use snp_shim::config::{Cli, LogFormat, ServeArgs, StoreKind};
use snp_shim::crd::{self, ServiceNameMapping};
use snp_shim::metrics::Metrics;
use snp_shim::store::kube::KubeStore;
use snp_shim::store::Store;

/// The verbs the ClusterRole grants, exactly. `patch` is not among them: the shim never
/// sends one (least privilege).
const GRANTED_VERBS: [&str; 5] = ["get", "list", "watch", "create", "update"];
/// The verbs `shim/src/store/kube.rs` uses; all must be granted.
const USED_VERBS: [&str; 5] = ["get", "list", "watch", "create", "update"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every `*.yaml` / `*.yml` under `deploy/`, recursively, sorted.
fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            // Not manifests: the Helm chart's templates (checked rendered, by
            // tests/e2e/test_helm.py) and promtool's unit tests of the alerts.
            let skip = path.ends_with("helm") || path.ends_with("monitoring/tests");
            if path.is_dir() && !skip {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// Strict typed parsing

/// `deploy/kustomization.yaml`. Not a Kubernetes API type, so it is typed here; the
/// fields it may use are the ones listed (extend this when the kustomization uses more).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
}

/// Prometheus Operator types, for strict parsing of `deploy/monitoring/`, typed after the
/// operator's API reference (it publishes no Rust types).
mod monitoring {
    // A schema: every field is declared so an unknown one is caught, not all are read.
    #![allow(dead_code)]
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PrometheusRule {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: RuleSpec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct RuleSpec {
        pub groups: Vec<RuleGroup>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct RuleGroup {
        pub name: String,
        #[serde(default)]
        pub interval: Option<String>,
        pub rules: Vec<Rule>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Rule {
        #[serde(default)]
        pub alert: Option<String>,
        #[serde(default)]
        pub record: Option<String>,
        pub expr: String,
        #[serde(default, rename = "for")]
        pub for_: Option<String>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
        #[serde(default)]
        pub annotations: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PodMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: PodMonitorSpec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PodMonitorSpec {
        pub selector: LabelSelector,
        #[serde(default)]
        pub namespace_selector: Option<BTreeMap<String, Vec<String>>>,
        pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PodMetricsEndpoint {
        pub port: String,
        #[serde(default)]
        pub path: Option<String>,
        #[serde(default)]
        pub interval: Option<String>,
        #[serde(default)]
        pub scrape_timeout: Option<String>,
    }
}
use monitoring::{PodMonitor, PrometheusRule};

/// Istio types, for strict parsing of `deploy/istio/`.
mod istio {
    // A schema: every field is declared so an unknown one is caught, not all are read.
    #![allow(dead_code)]
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_yaml_ng::Value;

    /// Istio's `networking.istio.io/v1alpha3` `EnvoyFilter`, typed after Istio's API reference
    /// so that a misspelled field fails like it does for the k8s-openapi types. Istio publishes
    /// no Rust types; `patch.value` is Envoy configuration, which the Istio e2e test validates
    /// with `envoy --mode validate` and runs.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EnvoyFilter {
        pub api_version: String,
        pub kind: String,
        pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        pub spec: EnvoyFilterSpec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EnvoyFilterSpec {
        #[serde(default)]
        pub workload_selector: Option<BTreeMap<String, BTreeMap<String, String>>>,
        #[serde(default)]
        pub priority: Option<i32>,
        pub config_patches: Vec<EnvoyConfigObjectPatch>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EnvoyConfigObjectPatch {
        pub apply_to: ApplyTo,
        #[serde(rename = "match")]
        pub match_: Option<ObjectMatch>,
        pub patch: IstioPatch,
    }

    #[derive(Debug, Deserialize, PartialEq, Eq)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum ApplyTo {
        Listener,
        FilterChain,
        NetworkFilter,
        HttpFilter,
        RouteConfiguration,
        VirtualHost,
        HttpRoute,
        Cluster,
        ExtensionConfig,
        Bootstrap,
        ListenerFilter,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ObjectMatch {
        pub context: Option<PatchContext>,
        pub proxy: Option<ProxyMatch>,
        pub listener: Option<ListenerMatch>,
        pub route_configuration: Option<RouteConfigurationMatch>,
        pub cluster: Option<ClusterMatch>,
    }

    #[derive(Debug, Deserialize, PartialEq, Eq)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum PatchContext {
        Any,
        SidecarInbound,
        SidecarOutbound,
        Gateway,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ProxyMatch {
        pub proxy_version: Option<String>,
        pub metadata: Option<BTreeMap<String, String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ListenerMatch {
        pub port_number: Option<u32>,
        pub name: Option<String>,
        pub filter_chain: Option<FilterChainMatch>,
        pub listener_filter: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct FilterChainMatch {
        pub name: Option<String>,
        pub sni: Option<String>,
        pub transport_protocol: Option<String>,
        pub application_protocols: Option<String>,
        pub filter: Option<FilterMatch>,
        pub destination_port: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct FilterMatch {
        pub name: Option<String>,
        pub sub_filter: Option<SubFilterMatch>,
    }

    #[derive(Debug, Deserialize)]
    pub struct SubFilterMatch {
        pub name: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RouteConfigurationMatch {
        pub port_number: Option<u32>,
        pub port_name: Option<String>,
        pub gateway: Option<String>,
        pub vhost: Option<VirtualHostMatch>,
        pub name: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct VirtualHostMatch {
        pub name: Option<String>,
        pub domain_name: Option<String>,
        pub route: Option<RouteMatch>,
    }

    #[derive(Debug, Deserialize)]
    pub struct RouteMatch {
        pub name: Option<String>,
        pub action: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ClusterMatch {
        pub port_number: Option<u32>,
        pub service: Option<String>,
        pub subset: Option<String>,
        pub name: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct IstioPatch {
        pub operation: PatchOperation,
        /// Envoy configuration: free-form here.
        pub value: Option<Value>,
        pub filter_class: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq, Eq)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum PatchOperation {
        Merge,
        Add,
        Remove,
        InsertBefore,
        InsertAfter,
        InsertFirst,
        Replace,
    }
}
use istio::{ApplyTo, EnvoyFilter, PatchContext, PatchOperation};

/// One parsed document.
#[derive(Debug)]
enum Manifest {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    Crd(Box<CustomResourceDefinition>),
    Mapping(Box<ServiceNameMapping>),
    Kustomization(Box<Kustomization>),
    EnvoyFilter(Box<EnvoyFilter>),
    PrometheusRule(Box<PrometheusRule>),
    PodMonitor(Box<PodMonitor>),
    NetworkPolicy(Box<NetworkPolicy>),
    Secret(Box<Secret>),
    ConfigMap(Box<ConfigMap>),
}

impl Manifest {
    fn kind(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::ServiceAccount(_) => "ServiceAccount",
            Self::ClusterRole(_) => "ClusterRole",
            Self::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Self::DaemonSet(_) => "DaemonSet",
            Self::Service(_) => "Service",
            Self::Crd(_) => "CustomResourceDefinition",
            Self::Mapping(_) => crd::KIND,
            Self::Kustomization(_) => "Kustomization",
            Self::EnvoyFilter(_) => "EnvoyFilter",
            Self::PrometheusRule(_) => "PrometheusRule",
            Self::PodMonitor(_) => "PodMonitor",
            Self::NetworkPolicy(_) => "NetworkPolicy",
            Self::Secret(_) => "Secret",
            Self::ConfigMap(_) => "ConfigMap",
        }
    }
}

/// Deserializes `doc` into `T`; any field `T` skipped (an unknown or misspelled field) is
/// an error naming its path, except the paths in `allowed`.
fn strict<T: DeserializeOwned>(doc: Value, allowed: &[&str]) -> Result<Box<T>, String> {
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(doc, |path| {
        let path = dotted(&path);
        if !allowed.contains(&path.as_str()) {
            unknown.push(path);
        }
    })
    .map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok(Box::new(value))
    } else {
        Err(format!("unknown field(s): {}", unknown.join(", ")))
    }
}

/// `spec.template.spec.containers.0.image`: the path of a skipped field, without the
/// `Option` and newtype levels `serde_ignored` also reports.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    let join = |parent: &Path<'_>, part: String| match dotted(parent) {
        p if p.is_empty() => part,
        p => format!("{p}.{part}"),
    };
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(parent, index.to_string()),
        Path::Map { parent, key } => join(parent, key.clone()),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

/// Parses one document into the type its `kind` names.
fn parse_document(doc: Value) -> Result<Manifest, String> {
    parse_document_as(doc, false)
}

/// [`parse_document`], also accepting the kinds only the Helm chart renders (`helm_only`).
fn parse_document_as(doc: Value, helm_only: bool) -> Result<Manifest, String> {
    let text = |key: &str| doc.get(key).and_then(Value::as_str).map(str::to_owned);
    let kind = text("kind").ok_or("no kind")?;
    let api_version = text("apiVersion").ok_or("no apiVersion")?;
    // k8s-openapi types check apiVersion and kind themselves; the other two are checked here.
    match kind.as_str() {
        "Namespace" => strict(doc, &[]).map(Manifest::Namespace),
        "ServiceAccount" => strict(doc, &[]).map(Manifest::ServiceAccount),
        "ClusterRole" => strict(doc, &[]).map(Manifest::ClusterRole),
        "ClusterRoleBinding" => strict(doc, &[]).map(Manifest::ClusterRoleBinding),
        "DaemonSet" => strict(doc, &[]).map(Manifest::DaemonSet),
        "Service" => strict(doc, &[]).map(Manifest::Service),
        "CustomResourceDefinition" => strict(doc, &[]).map(Manifest::Crd),
        "NetworkPolicy" => strict(doc, &[]).map(Manifest::NetworkPolicy),
        crd::KIND => {
            let want = format!("{}/{}", crd::DEFAULT_GROUP, crd::DEFAULT_VERSION);
            if api_version != want {
                return Err(format!("apiVersion {api_version}, expected {want}"));
            }
            // The derived type reads metadata and spec; apiVersion and kind (checked
            // above) are the only fields it may skip.
            strict(doc, &["apiVersion", "kind"]).map(Manifest::Mapping)
        }
        "Kustomization" => {
            let m: Box<Kustomization> = strict(doc, &[])?;
            if m.api_version != "kustomize.config.k8s.io/v1beta1" {
                return Err(format!("Kustomization apiVersion {}", m.api_version));
            }
            Ok(Manifest::Kustomization(m))
        }
        "EnvoyFilter" => {
            let f: Box<EnvoyFilter> = strict(doc, &[])?;
            if f.api_version != "networking.istio.io/v1alpha3" {
                return Err(format!("EnvoyFilter apiVersion {}", f.api_version));
            }
            Ok(Manifest::EnvoyFilter(f))
        }
        "PrometheusRule" | "PodMonitor" if api_version != "monitoring.coreos.com/v1" => {
            Err(format!("{kind} apiVersion {api_version}"))
        }
        "PrometheusRule" => strict(doc, &[]).map(Manifest::PrometheusRule),
        // Only the Helm chart renders these (token Secret, Grafana dashboard).
        "Secret" if helm_only => strict(doc, &[]).map(Manifest::Secret),
        "ConfigMap" if helm_only => strict(doc, &[]).map(Manifest::ConfigMap),
        "PodMonitor" => strict(doc, &[]).map(Manifest::PodMonitor),
        other => Err(format!("unexpected kind {other} ({api_version})")),
    }
}

/// The documents of a (multi-document) YAML text; empty documents are skipped.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {i}: {e}"))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Parses every document of a YAML text.
fn parse_text(text: &str) -> Result<Vec<Manifest>, String> {
    documents(text)?
        .into_iter()
        .enumerate()
        .map(|(i, doc)| parse_document(doc).map_err(|e| format!("document {i}: {e}")))
        .collect()
}

/// Every manifest of `deploy/`, by file (relative path). Panics listing every problem.
fn load_all() -> Vec<(String, Manifest)> {
    let root = deploy_dir();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for path in yaml_files() {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        match parse_text(&text) {
            Ok(ms) if ms.is_empty() => errors.push(format!("{rel}: no document")),
            Ok(ms) => out.extend(ms.into_iter().map(|m| (rel.clone(), m))),
            Err(e) => errors.push(format!("{rel}: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "manifests in deploy/ do not parse strictly:\n{}",
        errors.join("\n")
    );
    out
}

/// The install: exactly one of each object, plus the samples.
struct Deploy {
    namespace: Namespace,
    service_account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    daemonset: DaemonSet,
    service: Service,
    crd: CustomResourceDefinition,
    kustomization: Kustomization,
    network_policy: NetworkPolicy,
    samples: Vec<ServiceNameMapping>,
    /// Which file each object came from, by kind.
    files: BTreeMap<&'static str, Vec<String>>,
}

fn load_deploy() -> Deploy {
    let all = load_all();
    // Exactly one object that `pick` selects.
    fn one<T: Clone>(
        all: &[(String, Manifest)],
        kind: &str,
        pick: impl Fn(&Manifest) -> Option<&T>,
    ) -> T {
        let found: Vec<&T> = all.iter().filter_map(|(_, m)| pick(m)).collect();
        assert_eq!(found.len(), 1, "deploy/ must hold exactly one {kind}");
        found[0].clone()
    }
    let mut files: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for (file, m) in &all {
        files.entry(m.kind()).or_default().push(file.clone());
    }
    Deploy {
        namespace: one(&all, "Namespace", |m| match m {
            Manifest::Namespace(x) => Some(&**x),
            _ => None,
        }),
        service_account: one(&all, "ServiceAccount", |m| match m {
            Manifest::ServiceAccount(x) => Some(&**x),
            _ => None,
        }),
        role: one(&all, "ClusterRole", |m| match m {
            Manifest::ClusterRole(x) => Some(&**x),
            _ => None,
        }),
        binding: one(&all, "ClusterRoleBinding", |m| match m {
            Manifest::ClusterRoleBinding(x) => Some(&**x),
            _ => None,
        }),
        daemonset: one(&all, "DaemonSet", |m| match m {
            Manifest::DaemonSet(x) => Some(&**x),
            _ => None,
        }),
        service: one(&all, "Service", |m| match m {
            Manifest::Service(x) => Some(&**x),
            _ => None,
        }),
        crd: one(&all, "CustomResourceDefinition", |m| match m {
            Manifest::Crd(x) => Some(&**x),
            _ => None,
        }),
        // The install's kustomization (deploy/monitoring/ has its own).
        kustomization: one(&all, "Kustomization", |m| match m {
            Manifest::Kustomization(x) if x.resources.iter().any(|r| r == "daemonset.yaml") => {
                Some(&**x)
            }
            _ => None,
        }),
        network_policy: one(&all, "NetworkPolicy", |m| match m {
            Manifest::NetworkPolicy(x) => Some(&**x),
            _ => None,
        }),
        samples: all
            .iter()
            .filter_map(|(_, m)| match m {
                Manifest::Mapping(x) => Some((**x).clone()),
                _ => None,
            })
            .collect(),
        files,
    }
}

// ---------------------------------------------------------------------------------------
// 1. The CRD file is generated

#[test]
fn crd_yaml_is_generated_from_the_rust_type() {
    let generated = crd::crd_yaml(crd::DEFAULT_GROUP, crd::DEFAULT_VERSION).expect("CRD YAML");
    let checked_in = read("crd.yaml");
    assert!(
        checked_in == generated,
        "deploy/crd.yaml differs from the CRD generated from the Rust type; regenerate it with\n\n    \
         cargo run -p snp-shim -- crd > deploy/crd.yaml\n\n--- generated ---\n{generated}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Strict typed parsing

#[test]
fn every_manifest_parses_strictly() {
    let d = load_deploy();
    // Where each kind lives (the README and docs/deploy.md point at these files).
    let expect: [(&str, &str); 12] = [
        ("Namespace", "namespace.yaml"),
        ("ServiceAccount", "rbac.yaml"),
        ("ClusterRole", "rbac.yaml"),
        ("ClusterRoleBinding", "rbac.yaml"),
        ("DaemonSet", "daemonset.yaml"),
        ("Service", "service.yaml"),
        ("CustomResourceDefinition", "crd.yaml"),
        ("Kustomization", "kustomization.yaml"),
        (crd::KIND, "samples/servicenamemapping.yaml"),
        ("PrometheusRule", "monitoring/prometheusrule.yaml"),
        ("PodMonitor", "monitoring/podmonitor.yaml"),
        ("NetworkPolicy", "networkpolicy.yaml"),
    ];
    for (kind, file) in expect {
        let mut want = vec![file.to_owned()];
        if kind == "Kustomization" {
            want.push("monitoring/kustomization.yaml".to_owned());
        }
        assert_eq!(d.files.get(kind).cloned(), Some(want), "{kind}");
    }
    assert_eq!(d.samples.len(), 1);
}

#[test]
fn a_misspelled_field_is_an_error() {
    let bad = "
apiVersion: v1
kind: Service
metadata:
  name: snp-shim
spec:
  internalTraficPolicy: Local
  ports:
    - port: 15051
";
    let err = parse_text(bad).expect_err("a misspelled field must not parse");
    assert!(err.contains("spec.internalTraficPolicy"), "{err}");
    // The same document spelled right parses.
    parse_text(&bad.replace("Trafic", "Traffic")).expect("the correct spelling parses");
}

#[test]
fn a_misspelled_nested_field_is_an_error() {
    let bad = "
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: snp-shim
spec:
  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      containers:
        - name: snp-shim
          image: x
          securityContext:
            readOnlyRootFileSystem: true
";
    let err = parse_text(bad).expect_err("a misspelled nested field must not parse");
    assert!(
        err.contains("spec.template.spec.containers.0.securityContext.readOnlyRootFileSystem"),
        "{err}"
    );
    parse_text(&bad.replace("FileSystem", "Filesystem")).expect("the correct spelling parses");
}

#[test]
fn other_mistakes_are_errors() {
    let cases = [
        // A misspelled field of the custom resource.
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: ServiceNameMapping\n\
             metadata: {name: x}\nspec: {interfaceName: a.B, applicationName: [x]}\n",
            "spec.applicationName",
        ),
        // The custom resource under another group than the CRD's.
        (
            "apiVersion: dubbo.apache.org/v1alpha1\nkind: ServiceNameMapping\n\
             metadata: {name: x}\nspec: {interfaceName: a.B}\n",
            "apiVersion dubbo.apache.org/v1alpha1",
        ),
        // A wrong apiVersion for a built-in kind (k8s-openapi checks it).
        (
            "apiVersion: extensions/v1beta1\nkind: DaemonSet\nmetadata: {name: x}\n",
            "extensions/v1beta1",
        ),
        // A kind this test does not know.
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "unexpected kind ConfigMap",
        ),
        // A misspelled RBAC field.
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: x}\n\
             rules: [{apiGroups: [a], resource: [b], verbs: [get]}]\n",
            "rules.0.resource",
        ),
        // A misspelled kustomization field.
        (
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresource: [a]\n",
            "resource",
        ),
        // A duplicate key.
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, name: b}\n",
            "duplicate",
        ),
    ];
    for (doc, want) in cases {
        let err = parse_text(doc).expect_err(doc);
        assert!(err.contains(want), "{doc}\n=> {err}\n(expected {want:?})");
    }
}

// ---------------------------------------------------------------------------------------
// 3. What the objects say

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("DaemonSet pod spec")
}

fn shim_container(ds: &DaemonSet) -> &Container {
    let pod = pod_spec(ds);
    assert_eq!(pod.containers.len(), 1, "one container: the shim");
    let inits: Vec<&str> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        inits,
        vec!["prepare-data-dir"],
        "one init container: the data directory's chown"
    );
    &pod.containers[0]
}

/// The shim's effective configuration in the DaemonSet: every `SNP_*` variable must be the
/// twin of a flag and carry a value the flag accepts (the DaemonSet sets flags by env).
fn shim_config(c: &Container) -> ServeArgs {
    let cmd = Cli::command();
    let mut args = vec!["snp-shim".to_owned()];
    for e in c.env.iter().flatten() {
        if !e.name.starts_with("SNP_") {
            continue;
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|v| v == e.name.as_str()))
            .unwrap_or_else(|| panic!("env {} is not the twin of any snp-shim flag", e.name));
        let long = arg
            .get_long()
            .expect("flags with an env twin are long flags");
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            // Filled in by the kubelet (downward API); any value parses for these.
            (None, Some(_)) => "from-the-downward-api".to_owned(),
            _ => panic!("env {}: exactly one of value and valueFrom", e.name),
        };
        args.push(format!("--{long}={value}"));
    }
    Cli::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the DaemonSet's env does not parse as flags {args:?}: {e}"))
        .serve
}

/// The container port named `name`.
fn container_port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container port {name}"))
        .container_port
}

/// The container port an `IntOrString` port (a number or a port name) refers to.
fn resolve_port(c: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container_port(c, name),
    }
}

fn cpu_millis(q: &Quantity) -> u64 {
    let s = q.0.as_str();
    match s.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or_else(|_| panic!("cpu quantity {s}")),
        None => {
            let cores: f64 = s.parse().unwrap_or_else(|_| panic!("cpu quantity {s}"));
            (cores * 1000.0).round() as u64
        }
    }
}

fn bytes(q: &Quantity) -> u64 {
    let s = q.0.as_str();
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or_else(|_| panic!("memory {s}")) * factor;
        }
    }
    s.parse().unwrap_or_else(|_| panic!("memory quantity {s}"))
}

#[test]
fn network_policy_admits_cluster_pods_to_grpc_and_monitoring_to_metrics() {
    let d = load_deploy();
    let np = &d.network_policy;
    let ns = d.namespace.metadata.name.as_deref().unwrap();
    assert_eq!(np.metadata.namespace.as_deref(), Some(ns));
    let spec = np.spec.as_ref().expect("spec");
    // Selects the shim's pods, as the DaemonSet labels them.
    let labels = d
        .daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.pod_selector.as_ref().expect("podSelector");
    let wanted = selector.match_labels.clone().unwrap_or_default();
    assert!(
        !wanted.is_empty(),
        "the policy selects the shim's pods, not every pod"
    );
    for (k, v) in wanted {
        assert_eq!(labels.get(&k), Some(&v), "pod selector {k}={v}");
    }
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned()][..])
    );
    let ingress = spec.ingress.as_deref().unwrap_or_default();
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    let ports_of = |i: usize| -> Vec<Option<IntOrString>> {
        let ports = ingress[i].ports.as_deref().unwrap_or_default();
        ports.iter().map(|p| p.port.clone()).collect()
    };
    // gRPC (the registration API and the Nacos endpoint): any namespace (every pod of the
    // cluster), and no ipBlock.
    assert_eq!(
        ports_of(0),
        [
            Some(IntOrString::String("grpc".into())),
            Some(IntOrString::String("grpc-nacos".into()))
        ]
    );
    let from = ingress[0].from.as_deref().unwrap_or_default();
    assert_eq!(from.len(), 1);
    assert!(from[0].ip_block.is_none() && from[0].pod_selector.is_none());
    let any = from[0]
        .namespace_selector
        .as_ref()
        .expect("namespaceSelector");
    assert!(any.match_labels.is_none() && any.match_expressions.is_none());
    // Metrics: the monitoring namespace only.
    assert_eq!(
        ports_of(1),
        [Some(IntOrString::String("http-metrics".into()))]
    );
    let from = ingress[1].from.as_deref().unwrap_or_default();
    assert_eq!(from.len(), 1);
    let mon = from[0]
        .namespace_selector
        .as_ref()
        .expect("namespaceSelector");
    assert_eq!(
        mon.match_labels.clone().unwrap_or_default(),
        BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            "monitoring".to_owned()
        )])
    );
    // The named ports exist on the shim's container.
    let names: Vec<String> = shim_container(&d.daemonset)
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert!(names.contains(&"grpc".to_owned()) && names.contains(&"http-metrics".to_owned()));
}

#[test]
fn cluster_role_grants_exactly_the_mapping_verbs() {
    let d = load_deploy();
    let rules = d.role.rules.as_deref().unwrap_or_default();
    assert!(d.role.aggregation_rule.is_none(), "no aggregation");
    assert_eq!(rules.len(), 2, "two rules: {rules:?}");
    // Pods: read only (namespace policy "pod" maps a caller's address to its pod).
    let pods = &rules[1];
    assert_eq!(pods.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(pods.resources.as_deref(), Some(&["pods".to_owned()][..]));
    let pod_verbs: BTreeSet<&str> = pods.verbs.iter().map(String::as_str).collect();
    assert_eq!(pod_verbs, BTreeSet::from(["get", "list", "watch"]));
    assert!(pods.resource_names.is_none() && pods.non_resource_urls.is_none());
    let rule = &rules[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&[crd::DEFAULT_GROUP.to_owned()][..])
    );
    assert_eq!(
        rule.resources.as_deref(),
        Some(&[crd::PLURAL.to_owned()][..]),
        "servicenamemappings only (no subresources)"
    );
    assert!(rule.resource_names.is_none(), "not limited to some names");
    assert!(rule.non_resource_urls.is_none());
    let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
    assert_eq!(rule.verbs.len(), verbs.len(), "no duplicate verbs");
    assert_eq!(verbs, BTreeSet::from(GRANTED_VERBS));
    for v in USED_VERBS {
        assert!(verbs.contains(v), "the shim uses {v}");
    }

    // The binding gives that role to the shim's ServiceAccount, and the DaemonSet runs as it.
    let role_name = d.role.metadata.name.as_deref().unwrap();
    assert_eq!(d.binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(d.binding.role_ref.kind, "ClusterRole");
    assert_eq!(d.binding.role_ref.name, role_name);
    let sa_name = d.service_account.metadata.name.as_deref().unwrap();
    let ns = d.namespace.metadata.name.as_deref().unwrap();
    let subjects = d.binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, sa_name);
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns));
    assert_eq!(
        pod_spec(&d.daemonset).service_account_name.as_deref(),
        Some(sa_name)
    );
    assert_ne!(
        pod_spec(&d.daemonset).automount_service_account_token,
        Some(false),
        "the shim authenticates with its ServiceAccount token"
    );
}

#[test]
fn everything_names_the_same_group_namespace_and_ports() {
    let d = load_deploy();
    let ns = d.namespace.metadata.name.as_deref().unwrap();
    for (kind, meta) in [
        ("ServiceAccount", &d.service_account.metadata),
        ("DaemonSet", &d.daemonset.metadata),
        ("Service", &d.service.metadata),
    ] {
        assert_eq!(meta.namespace.as_deref(), Some(ns), "{kind} namespace");
    }
    let c = shim_container(&d.daemonset);
    let cfg = shim_config(c);
    // The API group: CRD, ClusterRole, the shim's flag and the sample agree.
    assert_eq!(d.crd.spec.group, crd::DEFAULT_GROUP);
    assert_eq!(cfg.crd.crd_group, d.crd.spec.group);
    assert_eq!(
        d.role.rules.as_ref().unwrap()[0].api_groups,
        Some(vec![d.crd.spec.group.clone()])
    );
    assert!(
        d.crd
            .spec
            .versions
            .iter()
            .any(|v| v.name == cfg.crd.crd_version && v.served && v.storage),
        "the shim's version is served and stored"
    );
    // Container ports are where the shim listens.
    let defaults = Cli::parse_from(["snp-shim"]).serve;
    assert_eq!(defaults.grpc_addr.port(), 15051);
    assert_eq!(defaults.http_addr.port(), 15052);
    assert_eq!(container_port(c, "grpc"), i32::from(cfg.grpc_addr.port()));
    assert_eq!(
        container_port(c, "http-metrics"),
        i32::from(cfg.http_addr.port())
    );
    assert_eq!(cfg.grpc_addr.port(), defaults.grpc_addr.port());
    assert_eq!(cfg.http_addr.port(), defaults.http_addr.port());
    // The Nacos endpoint (issue 17) is on, on the port Nacos clients dial (8848 + 1000).
    assert!(cfg.nacos.enabled, "SNP_NACOS=true");
    assert_eq!(defaults.nacos.nacos_addr.port(), 9848);
    assert_eq!(cfg.nacos.nacos_addr.port(), 9848);
    assert_eq!(
        container_port(c, "grpc-nacos"),
        i32::from(cfg.nacos.nacos_addr.port())
    );
    // The kustomization installs every top-level manifest (not the samples).
    let mut top_level: Vec<String> = yaml_files()
        .iter()
        .filter(|p| p.parent() == Some(deploy_dir().as_path()))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    top_level.sort();
    let mut listed = d.kustomization.resources.clone();
    listed.sort();
    assert_eq!(listed, top_level, "kustomization.yaml resources");
    assert_eq!(d.kustomization.kind, "Kustomization");
}

#[test]
fn daemonset_is_configured_for_a_node_local_shim() {
    let d = load_deploy();
    let ds = &d.daemonset;
    let pod = pod_spec(ds);
    let c = shim_container(ds);
    let cfg = shim_config(c);

    // Configuration through env.
    assert_eq!(cfg.store, StoreKind::Kubernetes, "SNP_STORE=kubernetes");
    assert_eq!(cfg.log_format, LogFormat::Json, "SNP_LOG_FORMAT=json");
    // Issue 13: direct registrations may only name the calling pod's namespace.
    assert_eq!(
        cfg.namespace_policy,
        snp_shim::identity::NamespacePolicy::Pod,
        "SNP_NAMESPACE_POLICY=pod"
    );
    assert_eq!(
        cfg.on_mismatch,
        snp_shim::identity::OnMismatch::Reject,
        "SNP_ON_MISMATCH=reject"
    );
    // PushMappings: the token from the Secret, mounted as a directory (no subPath, so the
    // kubelet's updates reach the shim, which re-reads the file); batches without it are
    // checked by the sending pod.
    assert_eq!(
        cfg.push_namespace_policy,
        snp_shim::identity::PushPolicy::Pod,
        "SNP_PUSH_NAMESPACE_POLICY=pod"
    );
    let token = cfg.auth_token_file.clone().expect("SNP_AUTH_TOKEN_FILE");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| token.parent() == Some(Path::new(&m.mount_path)))
        .expect("the token file's directory is a mounted volume");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        mount.sub_path, None,
        "a subPath mount never sees a rotated Secret"
    );
    let secret = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.secret.as_ref())
        .expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("snp-shim-token"));
    assert_ne!(secret.optional, Some(true), "never run unauthenticated");
    assert_eq!(token.file_name().and_then(|f| f.to_str()), Some("token"));
    let node = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SNP_NODE_NAME")
        .expect("SNP_NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("SNP_NODE_NAME from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");

    // Probes on the HTTP port.
    let http = container_port(c, "http-metrics");
    for (what, probe, path) in [
        ("liveness", c.liveness_probe.as_ref(), "/healthz"),
        ("readiness", c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe: httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{what} probe path");
        assert_eq!(resolve_port(c, &get.port), http, "{what} probe port");
        assert_ne!(get.scheme.as_deref(), Some("HTTPS"), "{what}: plain HTTP");
    }

    // Non-root, read-only, nothing extra: container settings, or the pod's where the
    // container has none.
    let psc = pod.security_context.as_ref();
    let csc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    let run_as_non_root = csc.run_as_non_root.or(psc.and_then(|p| p.run_as_non_root));
    assert_eq!(run_as_non_root, Some(true), "runAsNonRoot");
    let uid = csc.run_as_user.or(psc.and_then(|p| p.run_as_user));
    assert!(uid.is_some_and(|u| u > 0), "a numeric non-root runAsUser");
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_ne!(csc.privileged, Some(true));
    let drop = csc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(drop, vec!["ALL".to_owned()], "drop every capability");
    assert!(
        csc.capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .is_none(),
        "add none back"
    );
    let seccomp = csc
        .seccomp_profile
        .as_ref()
        .or(psc.and_then(|p| p.seccomp_profile.as_ref()))
        .expect("seccompProfile");
    assert_eq!(seccomp.type_, "RuntimeDefault");
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    // The one hostPath is the journal's data directory (journal_is_on_a_host_path).
    let host_paths: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert_eq!(host_paths, vec![cfg.data_dir.display().to_string()]);
    for p in c.ports.iter().flatten() {
        assert!(
            p.host_port.is_none(),
            "no hostPort (the node-local Service is the way in)"
        );
    }

    // Requests and limits for CPU and memory, requests within limits.
    let res = c.resources.as_ref().expect("resources");
    let requests = res.requests.as_ref().expect("requests");
    let limits = res.limits.as_ref().expect("limits");
    for r in ["cpu", "memory"] {
        assert!(requests.contains_key(r), "{r} request");
        assert!(limits.contains_key(r), "{r} limit");
    }
    assert!(cpu_millis(&requests["cpu"]) <= cpu_millis(&limits["cpu"]));
    assert!(bytes(&requests["memory"]) <= bytes(&limits["memory"]));
    assert!(bytes(&limits["memory"]) >= 128 << 20, "room for the cache");

    // SIGTERM's flush completes before SIGKILL: the grace period (which includes the
    // preStop hook) is longer than preStop + --shutdown-timeout.
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    let pre_stop = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds);
    let flush = i64::try_from(cfg.shutdown_timeout.as_secs()).unwrap();
    assert!(flush >= 20, "the shim's shutdown timeout ({flush} s)");
    assert!(
        grace > pre_stop + flush,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + shutdown timeout {flush} s"
    );

    // Every node: a toleration for every taint, Linux nodes only.
    assert!(
        pod.tolerations.iter().flatten().any(|t| t.key.is_none()
            && t.operator.as_deref() == Some("Exists")
            && t.effect.is_none()),
        "tolerate every taint"
    );
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux")
    );

    // The selector picks the template's pods.
    let spec = ds.spec.as_ref().unwrap();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(!selector.is_empty());
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "template label {k}");
    }
}

#[test]
fn service_is_node_local_and_reaches_the_daemonset() {
    let d = load_deploy();
    let spec = d.service.spec.as_ref().expect("Service spec");
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
    assert!(
        spec.type_.as_deref().is_none_or(|t| t == "ClusterIP"),
        "ClusterIP"
    );
    // The selector picks the DaemonSet's pods.
    let selector = spec.selector.clone().unwrap_or_default();
    assert!(!selector.is_empty());
    let labels = d
        .daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "pod label {k}");
    }
    // Ports: gRPC and HTTP, each onto the matching container port.
    let c = shim_container(&d.daemonset);
    let cfg = shim_config(c);
    let ports = spec.ports.as_deref().unwrap_or_default();
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("Service port {name}"))
    };
    for (name, listen) in [
        ("grpc", cfg.grpc_addr.port()),
        ("http-metrics", cfg.http_addr.port()),
        ("grpc-nacos", cfg.nacos.nacos_addr.port()),
    ] {
        let p = port(name);
        assert_eq!(p.port, i32::from(listen), "{name} port");
        let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
        assert_eq!(
            resolve_port(c, &target),
            i32::from(listen),
            "{name} targetPort"
        );
        assert_ne!(p.protocol.as_deref(), Some("UDP"));
    }
    assert_eq!(port("grpc").app_protocol.as_deref(), Some("grpc"));
    assert_eq!(port("grpc-nacos").app_protocol.as_deref(), Some("grpc"));
}

/// The journal (issue 12) lives on a hostPath, so an acknowledged registration survives
/// the pod's replacement; each pod has its own journal directory; the init container gives
/// the directory to the shim's user and can do nothing else.
#[test]
fn journal_is_on_a_host_path() {
    let d = load_deploy();
    let pod = pod_spec(&d.daemonset);
    let c = shim_container(&d.daemonset);
    let cfg = shim_config(c);
    assert!(cfg.journal, "the journal is on");
    assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/snp"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.host_path.is_some())
        .expect("a hostPath volume");
    let hp = volume.host_path.as_ref().unwrap();
    assert_eq!(hp.path, "/var/lib/snp");
    assert_eq!(hp.type_.as_deref(), Some("DirectoryOrCreate"));
    let mounted_at = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .map(|m| (m.mount_path.clone(), m.read_only))
    };
    assert_eq!(
        mounted_at(c),
        Some(("/var/lib/snp".to_owned(), None)),
        "the shim mounts it at its --data-dir, writable"
    );
    // One journal per pod: the instance is the pod's name (downward API).
    let instance = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SNP_JOURNAL_INSTANCE")
        .expect("SNP_JOURNAL_INSTANCE");
    let field = instance
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("from the downward API");
    assert_eq!(field.field_path, "metadata.name");

    // The init container: the shim's image, `prepare-data-dir` for the shim's user, root
    // with CAP_CHOWN only.
    let init = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image, c.image);
    let args = init.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("prepare-data-dir"));
    let uid = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .unwrap();
    let gid = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_group)
        .unwrap();
    assert!(args.contains(&format!("--owner={uid}:{gid}")), "{args:?}");
    let mut argv = vec!["snp-shim".to_owned()];
    argv.extend(args);
    let parsed = Cli::try_parse_from(&argv).expect("init args parse");
    assert!(matches!(
        parsed.command,
        Some(snp_shim::config::Command::PrepareDataDir(_))
    ));
    assert_eq!(
        mounted_at(init).map(|m| m.0),
        Some("/var/lib/snp".to_owned())
    );
    let sc = init
        .security_context
        .as_ref()
        .expect("init securityContext");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.clone().unwrap_or_default(),
        vec!["ALL".to_owned()]
    );
    assert_eq!(
        caps.add.clone().unwrap_or_default(),
        vec!["CHOWN".to_owned()]
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    assert!(init
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .is_some());
}

/// hostPath volumes are outside "baseline", so the namespace cannot enforce "restricted"
/// any more (issue 12); every other restricted control is checked on the pod by
/// daemonset_is_configured_for_a_node_local_shim, and the audit level stays "restricted".
#[test]
fn namespace_admits_the_journal_and_audits_restricted() {
    let d = load_deploy();
    let labels = d.namespace.metadata.labels.clone().unwrap_or_default();
    let label = |k: &str| labels.get(k).map(String::as_str);
    assert_eq!(
        label("pod-security.kubernetes.io/enforce"),
        Some("privileged")
    );
    assert_eq!(
        label("pod-security.kubernetes.io/audit"),
        Some("restricted")
    );
}

#[test]
fn sample_is_an_object_as_the_shim_writes_it() {
    let d = load_deploy();
    let sample = &d.samples[0];
    let interface = &sample.spec.interface_name;
    assert!(!sample.spec.application_names.is_empty());
    assert!(
        sample.metadata.namespace.is_none(),
        "no namespace: `kubectl apply -n` chooses it"
    );
    // The name the shim would choose, and the labels it would set.
    assert_eq!(
        sample.metadata.name.as_deref(),
        Some(naming::candidate_names(interface)[0].as_str())
    );
    let want: BTreeMap<String, String> = naming::labels(interface)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(sample.metadata.labels.clone().unwrap_or_default(), want);
}

// ---------------------------------------------------------------------------------------
// 4. Applied for real

/// A group no other CRD on this test binary's server uses: `deploy/crd.yaml` with its
/// group replaced is created from scratch under it.
const FRESH_GROUP: &str = "deploy-test.snp.example.com";

/// Server-side apply, as `kubectl apply --server-side --force-conflicts` does, with
/// strict field validation: the server rejects fields its schema does not declare
/// (instead of pruning them silently).
fn ssa() -> PatchParams {
    PatchParams::apply("snp-manifests-test")
        .force()
        .validation_strict()
}

/// Asserts every field of `want` is in `got` with the same value (the server may add
/// defaults and metadata).
fn assert_subset(want: &serde_json::Value, got: &serde_json::Value, path: &str) {
    match (want, got) {
        (serde_json::Value::Object(w), serde_json::Value::Object(g)) => {
            for (k, v) in w {
                let sub = format!("{path}.{k}");
                let g = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{sub}: missing on the server"));
                assert_subset(v, g, &sub);
            }
        }
        (serde_json::Value::Array(w), serde_json::Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{path}: length");
            for (i, (w, g)) in w.iter().zip(g).enumerate() {
                assert_subset(w, g, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(want, got, "{path}"),
    }
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).expect("YAML")
}

async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) {
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds.clone(), name, conditions::is_crd_established()),
    )
    .await
    .unwrap_or_else(|_| panic!("CRD {name} not Established within 30 s"))
    .expect("watch the CRD");
}

/// Waits until custom resources of `api`'s kind are served (Established can come a moment
/// before the resource path answers).
async fn wait_served(api: &Api<DynamicObject>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the resource to be served: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("not served within 30 s: {e}"),
        }
    }
}

/// Applies `obj` (strict) into `ns` under `group`, reads it back, checks it holds what was
/// applied. Returns the stored object.
async fn apply_mapping(
    client: &kube::Client,
    group: &str,
    ns: &str,
    obj: &serde_json::Value,
) -> serde_json::Value {
    let ar = crd::api_resource(group, crd::DEFAULT_VERSION);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    wait_served(&api).await;
    let name = obj["metadata"]["name"].as_str().expect("sample name");
    api.patch(name, &ssa(), &Patch::Apply(obj))
        .await
        .unwrap_or_else(|e| panic!("apply the sample under {group}: {e}"));
    let back = serde_json::to_value(api.get(name).await.expect("read the sample back")).unwrap();
    assert_subset(&obj["metadata"], &back["metadata"], "metadata");
    assert_eq!(back["spec"], obj["spec"], "spec as applied");
    assert_eq!(back["apiVersion"], obj["apiVersion"]);
    assert_eq!(back["kind"], crd::KIND);
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_and_sample_apply_to_a_real_api_server() {
    let client = apiserver::client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_text = read("crd.yaml");
    let crd_json = yaml_to_json(&crd_text);
    let name = crd_json["metadata"]["name"].as_str().unwrap().to_owned();

    // (a) deploy/crd.yaml itself. The support module registered this CRD when the server
    // started, from `crd::crd_yaml` (the same bytes: see crd_yaml_is_generated_from_the_rust_type),
    // so this is `kubectl apply --server-side -f deploy/crd.yaml` onto an installed CRD:
    // the server must accept every field of the file and store each one unchanged (it may
    // add defaults of its own).
    crds.patch(&name, &ssa(), &Patch::Apply(&crd_json))
        .await
        .unwrap_or_else(|e| panic!("apply deploy/crd.yaml: {e}"));
    wait_established(&crds, &name).await;
    let stored = serde_json::to_value(crds.get(&name).await.expect("get the CRD")).unwrap();
    assert_subset(&crd_json["spec"], &stored["spec"], "spec");

    // (b) The same file created from scratch: with its group replaced (the recipe of
    // docs/deploy.md for another group, which must equal `snp-shim crd --crd-group`), it
    // creates a CRD this server has never seen, which becomes Established.
    let fresh_text = crd_text.replace(crd::DEFAULT_GROUP, FRESH_GROUP);
    assert_eq!(
        fresh_text,
        crd::crd_yaml(FRESH_GROUP, crd::DEFAULT_VERSION).unwrap(),
        "replacing the group in deploy/crd.yaml gives the CRD generated for that group"
    );
    let fresh_json = yaml_to_json(&fresh_text);
    let fresh_name = fresh_json["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(
        crds.get_opt(&fresh_name).await.expect("get").is_none(),
        "{fresh_name} must not exist before"
    );
    let created = crds
        .patch(&fresh_name, &ssa(), &Patch::Apply(&fresh_json))
        .await
        .unwrap_or_else(|e| panic!("create {fresh_name}: {e}"));
    assert_subset(
        &fresh_json["spec"],
        &serde_json::to_value(&created).unwrap()["spec"],
        "spec",
    );
    wait_established(&crds, &fresh_name).await;

    // (c) The sample custom resource, verbatim, under the file's group, and again under the
    // fresh CRD.
    let sample = yaml_to_json(&read("samples/servicenamemapping.yaml"));
    let ns = apiserver::namespace("sample");
    apply_mapping(&client, crd::DEFAULT_GROUP, &ns, &sample).await;
    let mut fresh_sample = sample.clone();
    fresh_sample["apiVersion"] = json!(format!("{FRESH_GROUP}/{}", crd::DEFAULT_VERSION));
    apply_mapping(&client, FRESH_GROUP, &ns, &fresh_sample).await;

    // (d) The server validates against the file's schema: a misspelled field is refused
    // (strict field validation, as `kubectl create`/`apply` use by default), and so is a
    // missing required one.
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &crd::api_resource(crd::DEFAULT_GROUP, crd::DEFAULT_VERSION),
    );
    let mut misspelled = sample.clone();
    misspelled["metadata"]["name"] = json!("misspelled");
    misspelled["spec"]["applicationName"] = json!(["x"]);
    let post = http::Request::post(format!(
        "/apis/{}/{}/namespaces/{ns}/{}?fieldValidation=Strict",
        crd::DEFAULT_GROUP,
        crd::DEFAULT_VERSION,
        crd::PLURAL
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&misspelled).unwrap())
    .unwrap();
    match client.request::<DynamicObject>(post).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 400, "{s:?}");
            assert!(s.message.contains("applicationName"), "{s:?}");
        }
        other => panic!("a misspelled field must be refused: {other:?}"),
    }
    // Server-side apply refuses it too (whatever the validation setting: it cannot build
    // the typed patch; the server answers 500 for that).
    match api
        .patch("misspelled", &ssa(), &Patch::Apply(&misspelled))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert!(s.message.contains("applicationName"), "{s:?}")
        }
        other => panic!("a misspelled field must be refused: {other:?}"),
    }
    assert!(api.get_opt("misspelled").await.unwrap().is_none());
    let mut incomplete = sample.clone();
    incomplete["metadata"]["name"] = json!("incomplete");
    incomplete["spec"] = json!({ "applicationNames": ["x"] });
    match api
        .patch("incomplete", &ssa(), &Patch::Apply(&incomplete))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("interfaceName"), "{s:?}");
        }
        other => panic!("spec.interfaceName is required: {other:?}"),
    }

    // (e) The shim's Kubernetes store reads the sample and reuses its object: the mapping it
    // holds costs no write, and a new application goes into the same object.
    let store = KubeStore::connect(
        apiserver::store_config("manifests-test", crd::DEFAULT_GROUP),
        Metrics::unregistered(),
    )
    .await
    .expect("connect the store");
    assert!(store.is_ready());
    let interface = sample["spec"]["interfaceName"].as_str().unwrap();
    let apps: AppSet = sample["spec"]["applicationNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let key = MappingKey::new(ns.clone(), interface);
    let got = store.get(&ns, &[interface.to_owned()]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, key);
    assert_eq!(got[0].1.apps, apps);
    let same: Mappings = [(key.clone(), apps.clone())].into_iter().collect();
    let outcome = store.merge(&same).await.expect("merge");
    assert_eq!(outcome.written(), 0, "already there: {outcome:?}");
    let more: Mappings = [(key.clone(), ["another-provider"].into_iter().collect())]
        .into_iter()
        .collect();
    let outcome = store.merge(&more).await.expect("merge");
    assert_eq!((outcome.created, outcome.updated), (0, 1), "{outcome:?}");
    let name = sample["metadata"]["name"].as_str().unwrap();
    let obj = api.get(name).await.expect("get the sample");
    let mut names: Vec<&str> = obj.data["spec"]["applicationNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["another-provider", "demo-provider"]);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1,
        "no second object for the interface"
    );
}

/// The Istio EnvoyFilter reaches the shim the DaemonSet runs (the node-local Service's name,
/// namespace and gRPC port), only patches sidecars' outbound side on proxies new enough, and
/// inserts the filter before the router.
#[test]
fn istio_envoyfilter_targets_the_node_local_shim() {
    let all = load_all();
    let filters: Vec<&EnvoyFilter> = all
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::EnvoyFilter(f) => Some(f.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(filters.len(), 1, "one EnvoyFilter in deploy/istio");
    let f = filters[0];
    assert!(f.metadata.name.is_some());
    let svc = all
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::Service(s) => Some(s.as_ref()),
            _ => None,
        })
        .expect("a Service");
    let host = format!(
        "{}.{}.svc.cluster.local",
        svc.metadata.name.as_deref().unwrap(),
        svc.metadata.namespace.as_deref().unwrap()
    );
    let grpc = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some("grpc")))
        .expect("a grpc port")
        .port;

    for (i, p) in f.spec.config_patches.iter().enumerate() {
        let m = p
            .match_
            .as_ref()
            .unwrap_or_else(|| panic!("patch {i} has no match"));
        assert!(
            matches!(
                m.context,
                Some(PatchContext::SidecarOutbound | PatchContext::Any)
            ),
            "patch {i}: context {:?}",
            m.context
        );
        let version = m.proxy.as_ref().and_then(|p| p.proxy_version.as_deref());
        assert!(
            version.is_some(),
            "patch {i} applies to every proxy version"
        );
    }
    let filter = f
        .spec
        .config_patches
        .iter()
        .find(|p| p.apply_to == ApplyTo::HttpFilter)
        .expect("an HTTP_FILTER patch");
    assert_eq!(filter.patch.operation, PatchOperation::InsertBefore);
    // A relative insert with a proxyVersion match needs a priority (istioctl analyze IST0155).
    assert!(
        f.spec.priority.is_some_and(|p| p != 0),
        "the EnvoyFilter has a relative insert and no priority (IST0155)"
    );
    let clusters: Vec<String> = f
        .spec
        .config_patches
        .iter()
        .filter(|p| p.apply_to == ApplyTo::Cluster && p.patch.operation == PatchOperation::Add)
        .map(|p| serde_yaml_ng::to_string(&p.patch.value).unwrap())
        .collect();
    assert!(
        clusters
            .iter()
            .any(|c| c.contains(&host) && c.contains(&grpc.to_string())),
        "no CLUSTER patch reaches {host}:{grpc}: {clusters:?}"
    );
}

#[test]
fn a_misspelled_envoyfilter_field_fails() {
    let bad = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: x
spec:
  configPatches:
    - applyTo: CLUSTER
      match:
        context: SIDECAR_OUTBOUND
      patch:
        operation: ADD
        valeu: {}
"#;
    let err = parse_text(bad).unwrap_err();
    assert!(err.contains("valeu"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 5. The Helm chart (deploy/helm/snp) renders the same install, and its values work

/// `helm`, as scripts/setup.sh installs it (target/tools) or from PATH.
fn helm() -> PathBuf {
    let tools = deploy_dir().join("../target/tools/helm");
    if tools.exists() {
        return tools;
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("helm"))
                .find(|h| h.exists())
        })
        .unwrap_or_else(|| panic!("helm not found: run scripts/setup.sh"))
}

/// `helm template` of the chart into `namespace` with `args`; every document parsed strictly.
fn helm_template(namespace: &str, args: &[&str]) -> Vec<(Value, Manifest)> {
    let chart = deploy_dir().join("helm/snp");
    let out = std::process::Command::new(helm())
        .args(["template", "snp"])
        .arg(&chart)
        .args(["--namespace", namespace, "--kube-version", "1.33.0"])
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let docs = documents(&text).expect("helm's output is YAML");
    let mut errors = Vec::new();
    let parsed: Vec<(Value, Manifest)> = docs
        .into_iter()
        .enumerate()
        .filter_map(|(i, doc)| match parse_document_as(doc.clone(), true) {
            Ok(m) => Some((doc, m)),
            Err(e) => {
                errors.push(format!("document {i}: {e}"));
                None
            }
        })
        .collect();
    assert!(
        errors.is_empty(),
        "helm template {args:?} does not parse strictly:\n{}",
        errors.join("\n")
    );
    parsed
}

/// Removes what only Helm adds (its labels, the CRD's keep annotation), so a chart object
/// compares equal to the kustomize one.
fn without_helm_marks(mut v: Value) -> Value {
    fn strip(meta: Option<&mut Value>) {
        let Some(Value::Mapping(meta)) = meta else {
            return;
        };
        for field in ["labels", "annotations"] {
            let key = Value::from(field);
            if let Some(Value::Mapping(m)) = meta.get_mut(&key) {
                m.retain(|k, _| {
                    let k = k.as_str().unwrap_or_default();
                    !(k.starts_with("helm.sh/")
                        || k == "app.kubernetes.io/managed-by"
                        || k == "app.kubernetes.io/instance")
                });
                if m.is_empty() {
                    meta.remove(&key);
                }
            }
        }
    }
    strip(v.get_mut("metadata"));
    if let Some(t) = v.get_mut("spec").and_then(|s| s.get_mut("template")) {
        strip(t.get_mut("metadata"));
    }
    v
}

fn key_of_doc(doc: &Value) -> (String, String) {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    (
        s(doc.get("kind")),
        s(doc.get("metadata").and_then(|m| m.get("name"))),
    )
}

#[test]
fn helm_chart_copies_of_deploy_files_are_identical() {
    for (copy, original) in [
        ("helm/snp/files/crd.yaml", "crd.yaml"),
        (
            "helm/snp/files/prometheusrule.yaml",
            "monitoring/prometheusrule.yaml",
        ),
        (
            "helm/snp/files/grafana-dashboard.json",
            "monitoring/grafana-dashboard.json",
        ),
    ] {
        assert!(
            read(copy) == read(original),
            "deploy/{copy} differs from deploy/{original}: cp deploy/{original} deploy/{copy}"
        );
    }
}

#[test]
fn helm_chart_with_defaults_renders_the_kustomize_install() {
    let chart: BTreeMap<(String, String), Value> = helm_template("snp-system", &[])
        .into_iter()
        .map(|(doc, _)| (key_of_doc(&doc), without_helm_marks(doc)))
        .collect();
    // What `kubectl apply -k deploy/` applies, but the Namespace (Helm's --create-namespace).
    let mut kustomize = BTreeMap::new();
    for file in load_deploy().kustomization.resources {
        for doc in documents(&read(&file)).unwrap() {
            let key = key_of_doc(&doc);
            if key.0 != "Namespace" {
                kustomize.insert(key, doc);
            }
        }
    }
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kustomize.keys().collect::<Vec<_>>(),
        "the chart's objects with default values differ from deploy/kustomization.yaml's"
    );
    for (key, want) in &kustomize {
        let got = &chart[key];
        assert!(
            got == want,
            "{key:?} differs between the chart (default values) and deploy/:\n--- chart ---\n{}\n--- deploy/ ---\n{}",
            serde_yaml_ng::to_string(got).unwrap(),
            serde_yaml_ng::to_string(want).unwrap()
        );
    }
}

#[test]
fn helm_chart_values_reach_the_objects() {
    let rendered = helm_template(
        "mesh-infra",
        &[
            "--set=crd.group=dubbo.apache.org",
            "--set=crd.version=v1beta1",
            "--set=image.repository=registry.example/snp",
            "--set=image.tag=1.2.3",
            "--set=auth.token.create=true",
            "--set=auth.token.value=s3cret",
            "--set=auth.scope=all",
            "--set=policy.ackMode=durable",
            "--set=policy.debounceMax=2s",
            "--set=policy.shutdownTimeout=40s",
            "--set=store.kubeQps=50",
            "--set=networkPolicy.enabled=false",
            "--set=monitoring.podMonitor.enabled=true",
            "--set=monitoring.prometheusRule.enabled=true",
            "--set=monitoring.grafanaDashboard.enabled=true",
        ],
    );
    let mut kinds: Vec<&str> = rendered.iter().map(|(_, m)| m.kind()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "DaemonSet",
            "PodMonitor",
            "PrometheusRule",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    for (doc, m) in &rendered {
        let ns = doc
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str);
        let cluster_scoped = matches!(
            m,
            Manifest::Crd(_) | Manifest::ClusterRole(_) | Manifest::ClusterRoleBinding(_)
        );
        assert_eq!(
            ns,
            (!cluster_scoped).then_some("mesh-infra"),
            "{}",
            m.kind()
        );
        match m {
            Manifest::Crd(crd) => {
                assert_eq!(
                    crd.metadata.name.as_deref(),
                    Some("servicenamemappings.dubbo.apache.org")
                );
                assert_eq!(crd.spec.group, "dubbo.apache.org");
                assert_eq!(crd.spec.versions[0].name, "v1beta1");
                let keep = crd.metadata.annotations.as_ref().unwrap();
                assert_eq!(keep["helm.sh/resource-policy"], "keep");
            }
            Manifest::ClusterRole(role) => {
                let rule = &role.rules.as_ref().unwrap()[0];
                assert_eq!(
                    rule.api_groups.as_deref(),
                    Some(&["dubbo.apache.org".to_owned()][..])
                );
            }
            Manifest::ClusterRoleBinding(b) => {
                assert_eq!(
                    b.subjects.as_ref().unwrap()[0].namespace.as_deref(),
                    Some("mesh-infra")
                );
            }
            Manifest::Secret(s) => {
                assert_eq!(s.metadata.name.as_deref(), Some("snp-shim-token"));
                assert_eq!(s.string_data.as_ref().unwrap()["token"], "s3cret");
            }
            Manifest::DaemonSet(ds) => {
                let c = shim_container(ds);
                assert_eq!(c.image.as_deref(), Some("registry.example/snp:1.2.3"));
                let cfg = shim_config(c);
                assert_eq!(cfg.crd.crd_group, "dubbo.apache.org");
                assert_eq!(cfg.crd.crd_version, "v1beta1");
                assert_eq!(cfg.ack_mode, snp_shim::config::AckMode::Durable);
                assert_eq!(cfg.auth_scope, snp_shim::config::AuthScope::All);
                assert_eq!(cfg.debounce_max, Duration::from_secs(2));
                assert_eq!(cfg.shutdown_timeout, Duration::from_secs(40));
                assert_eq!(cfg.kube_qps, 50.0);
                let token = cfg.auth_token_file.expect("token file");
                let mount = c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .find(|m| token.starts_with(&m.mount_path))
                    .expect("the token file is on a mounted volume");
                let pod = pod_spec(ds);
                let volume = pod
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == mount.name)
                    .unwrap();
                assert_eq!(
                    volume.secret.as_ref().unwrap().secret_name.as_deref(),
                    Some("snp-shim-token")
                );
                assert_eq!(pod.termination_grace_period_seconds, Some(55));
            }
            Manifest::PrometheusRule(_) => {
                let want = documents(&read("monitoring/prometheusrule.yaml")).unwrap();
                assert_eq!(doc.get("spec"), want[0].get("spec"));
            }
            Manifest::ConfigMap(cm) => {
                let data = cm.data.as_ref().unwrap();
                assert_eq!(
                    data["snp.json"].trim_end(),
                    read("monitoring/grafana-dashboard.json").trim_end()
                );
                assert_eq!(
                    cm.metadata.labels.as_ref().unwrap()["grafana_dashboard"],
                    "1"
                );
            }
            Manifest::PodMonitor(pm) => {
                assert_eq!(pm.spec.pod_metrics_endpoints[0].port, "http-metrics");
            }
            _ => {}
        }
    }
    // The journal puts the node's directory in the pod.
    let journal = helm_template(
        "snp-system",
        &[
            "--set=journal.enabled=true",
            "--set=journal.hostPath=/data/snp",
        ],
    );
    let ds = journal
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::DaemonSet(ds) => Some(ds),
            _ => None,
        })
        .unwrap();
    let pod = pod_spec(ds);
    let data = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(data.host_path.as_ref().unwrap().path, "/data/snp");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "data")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/lib/snp");
    // Identity and Nacos values reach the env, the ports and the NetworkPolicy.
    let custom = helm_template(
        "snp-system",
        &[
            "--set=identity.namespacePolicy=trust",
            "--set=identity.onMismatch=rewrite",
            "--set=identity.pushNamespacePolicy=trust",
            "--set=auth.token.secretName=",
            "--set=nacos.identity=pod",
            "--set=nacos.defaultNamespace=dubbo",
            "--set=nacos.addr=0.0.0.0:9850",
            "--set=nacos.port=9850",
            "--set=networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=obs",
        ],
    );
    for (doc, m) in &custom {
        match m {
            Manifest::DaemonSet(ds) => {
                let env: BTreeMap<String, String> = shim_container(ds)
                    .env
                    .iter()
                    .flatten()
                    .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                    .collect();
                assert_eq!(env["SNP_NAMESPACE_POLICY"], "trust");
                assert_eq!(env["SNP_ON_MISMATCH"], "rewrite");
                assert_eq!(env["SNP_PUSH_NAMESPACE_POLICY"], "trust");
                // No Secret named: no token file, no token volume.
                assert!(!env.contains_key("SNP_AUTH_TOKEN_FILE"));
                assert!(pod_spec(ds)
                    .volumes
                    .iter()
                    .flatten()
                    .all(|v| v.secret.is_none()));
                assert_eq!(env["SNP_NACOS"], "true");
                assert_eq!(env["SNP_NACOS_IDENTITY"], "pod");
                assert_eq!(env["SNP_NACOS_DEFAULT_NAMESPACE"], "dubbo");
                assert_eq!(env["SNP_NACOS_ADDR"], "0.0.0.0:9850");
                let port = shim_container(ds)
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some("grpc-nacos"))
                    .unwrap();
                assert_eq!(port.container_port, 9850);
            }
            Manifest::Service(svc) => {
                let ports = svc.spec.as_ref().unwrap().ports.as_ref().unwrap();
                let nacos = ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some("grpc-nacos"))
                    .unwrap();
                assert_eq!(nacos.port, 9850);
            }
            Manifest::NetworkPolicy(_) => {
                let text = serde_json::to_string(doc).unwrap();
                assert!(text.contains(r#""team":"obs""#), "{text}");
                assert!(!text.contains("monitoring"), "{text}");
            }
            _ => {}
        }
    }
    // Nacos off: no env, no container or Service port, no NetworkPolicy port.
    let off = helm_template("snp-system", &["--set=nacos.enabled=false"]);
    for (doc, m) in &off {
        if matches!(
            m,
            Manifest::DaemonSet(_) | Manifest::Service(_) | Manifest::NetworkPolicy(_)
        ) {
            let text = serde_json::to_string(doc).unwrap();
            assert!(!text.contains("grpc-nacos"), "{text}");
            assert!(!text.contains("SNP_NACOS_"), "{text}");
        }
    }
    // A token without a value is refused, not rendered empty.
    let out = std::process::Command::new(helm())
        .args(["template", "snp"])
        .arg(deploy_dir().join("helm/snp"))
        .args(["--kube-version", "1.33.0", "--set=auth.token.create=true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.token.value is required"));
}

#[test]
fn networkpolicy_admits_the_shims_ports_and_alerts_carry_runbooks() {
    let all = load_all();
    let ds = load_deploy().daemonset;
    let shim = shim_container(&ds);
    for (file, m) in &all {
        match m {
            Manifest::NetworkPolicy(np) => {
                let spec = np.spec.as_ref().unwrap();
                let selects = spec
                    .pod_selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .as_ref()
                    .unwrap();
                let pod_labels = ds
                    .spec
                    .as_ref()
                    .unwrap()
                    .template
                    .metadata
                    .as_ref()
                    .unwrap();
                for (k, v) in selects {
                    assert_eq!(
                        pod_labels.labels.as_ref().unwrap().get(k),
                        Some(v),
                        "{file}"
                    );
                }
                // Both ports the shim serves are admitted: gRPC from every namespace.
                let mut admitted = BTreeSet::new();
                for rule in spec.ingress.iter().flatten() {
                    for p in rule.ports.iter().flatten() {
                        let port = resolve_port(shim, p.port.as_ref().unwrap());
                        admitted.insert(port);
                        if port == container_port(shim, "grpc")
                            || port == container_port(shim, "grpc-nacos")
                        {
                            let from = rule.from.as_ref().unwrap();
                            assert!(from.iter().any(|f| f
                                .namespace_selector
                                .as_ref()
                                .is_some_and(
                                    |s| s.match_labels.is_none() && s.match_expressions.is_none()
                                )));
                        }
                    }
                }
                assert_eq!(
                    admitted,
                    BTreeSet::from([
                        container_port(shim, "grpc"),
                        container_port(shim, "grpc-nacos"),
                        container_port(shim, "http-metrics")
                    ])
                );
            }
            Manifest::PrometheusRule(rule) => {
                for r in rule.spec.groups.iter().flat_map(|g| &g.rules) {
                    let name = r.alert.as_deref().expect("alerting rules only");
                    for a in ["summary", "description", "runbook"] {
                        assert!(r.annotations.contains_key(a), "{name}: no {a}");
                    }
                    assert!(r.labels.contains_key("severity"), "{name}: no severity");
                }
            }
            _ => {}
        }
    }
}
