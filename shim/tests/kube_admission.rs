//! What only a real kube-apiserver shows (issue 10): admission, RBAC and validation, with
//! the shim's store acting as the shim's service account (`deploy/rbac.yaml` applied):
//!
//! * a registration into a namespace that does not exist (404), into a namespace stuck
//!   Terminating (403), and past an exhausted `ResourceQuota` on
//!   `count/servicenamemappings.extensions.istio.io` (403): the API server's answer, as the
//!   store surfaces it, and a healthy key in a healthy namespace that still lands on its
//!   own. What the shim should then do per key (issue 12) is asserted where that lands;
//!   these tests pin what the server says;
//! * `kubectl auth can-i --list` as the shim: exactly the rules of `deploy/rbac.yaml` on top
//!   of what every service account gets;
//! * `deploy/` through kustomize, and every manifest the project ships, applied with a
//!   server-side dry run: real admission (PodSecurity `restricted` on `snp-system`
//!   included) and validation, nothing stored.
//! * a Pod can be created (for the shim's identity work) and never runs: its status is the
//!   test's to set.
//!
//! The namespace, quota and pod tests need kube-controller-manager (namespace, quota and
//! service-account controllers), started once for this binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/apiserver.rs"]
mod apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use snp_core::{AppSet, MappingKey, Mappings};
use snp_shim::crd;
use snp_shim::metrics::Metrics;
use snp_shim::store::kube::KubeStore;
use snp_shim::store::{MergeOutcome, Store, StoreError};

use apiserver::GROUP;

async fn store(writer: &str) -> KubeStore {
    let store = KubeStore::connect(
        apiserver::store_config(writer, GROUP),
        Metrics::unregistered(),
    )
    .await
    .expect("connect as the shim");
    assert!(store.is_ready(), "the shim's store did not sync");
    store
}

/// One key registered on its own through the store.
async fn register(
    store: &KubeStore,
    ns: &str,
    iface: &str,
    app: &str,
) -> Result<MergeOutcome, StoreError> {
    let batch: Mappings = [(
        MappingKey::new(ns, iface),
        [app].into_iter().collect::<AppSet>(),
    )]
    .into_iter()
    .collect();
    store.merge(&batch).await
}

/// A key in a fresh, healthy namespace lands: whatever a bad namespace did to the store,
/// it goes on writing elsewhere.
async fn healthy_key_lands(store: &KubeStore, tag: &str) {
    let ns = apiserver::namespace(&format!("{tag}-ok"));
    let out = register(
        store,
        &ns,
        "org.apache.dubbo.demo.HealthyService",
        "healthy",
    )
    .await
    .unwrap_or_else(|e| panic!("a key in a healthy namespace must land: {e}"));
    assert_eq!(out.created, 1, "{out:?}");
    let admin = apiserver::client().await;
    let got = mappings(&admin, &ns)
        .get(&snp_core::naming::seed_name(
            "org.apache.dubbo.demo.HealthyService",
        ))
        .await;
    let got = got.expect("the object is there");
    assert_eq!(got.data["spec"]["applicationNames"], json!(["healthy"]));
}

fn mappings(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &crd::api_resource(GROUP, crd::DEFAULT_VERSION),
    )
}

/// The API server's own answer to a create by the shim's identity, without the store.
async fn create_as_shim(ns: &str, iface: &str) -> Result<DynamicObject, kube::Error> {
    let ar = crd::api_resource(GROUP, crd::DEFAULT_VERSION);
    let obj = DynamicObject::new(&snp_core::naming::seed_name(iface), &ar)
        .within(ns)
        .data(json!({"spec": {"interfaceName": iface, "applicationNames": ["direct"]}}));
    mappings(&apiserver::shim_client().await, ns)
        .create(&PostParams::default(), &obj)
        .await
}

fn api_status(r: Result<DynamicObject, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `f` until it returns `Some`, for up to `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_does_not_exist_is_a_404() {
    let store = store("admission-absent").await;
    let ns = format!("snp-absent-{}", std::process::id());
    let iface = "org.apache.dubbo.demo.AbsentService";

    let s = api_status(create_as_shim(&ns, iface).await);
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"), "{s:?}");
    assert!(
        s.message
            .contains(&format!("namespaces \"{ns}\" not found")),
        "{s:?}"
    );

    let err = register(&store, &ns, iface, "absent")
        .await
        .expect_err("a registration into a missing namespace cannot be written");
    assert!(
        err.to_string().contains("404"),
        "the store surfaces the 404: {err}"
    );

    healthy_key_lands(&store, "absent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_namespace_is_a_403() {
    apiserver::controllers();
    let admin = apiserver::client().await;
    let store = store("admission-terminating").await;
    let ns = apiserver::namespace("terminating");
    let iface = "org.apache.dubbo.demo.LateService";

    // An object with a finalizer nobody removes holds the namespace in Terminating once it
    // is deleted: the namespace controller deletes the rest and waits for it.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let held: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "held", "finalizers": ["snp.dev/test-hold"]}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    let phase = namespaces
        .get(&ns)
        .await
        .unwrap()
        .status
        .and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Terminating"));
    // The controller has been through it: it marked the held object for deletion.
    wait_for(
        "the namespace controller deletes the held ConfigMap",
        Duration::from_secs(60),
        || async {
            cms.get("held")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .map(|_| ())
        },
    )
    .await;

    let s = api_status(create_as_shim(&ns, iface).await);
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
    assert!(
        s.message.contains("because it is being terminated"),
        "{s:?}"
    );

    let err = register(&store, &ns, iface, "late")
        .await
        .expect_err("a registration into a terminating namespace cannot be written");
    let text = err.to_string();
    assert!(
        text.contains("403") && text.contains("Forbidden") && text.contains("being terminated"),
        "the store surfaces the 403: {text}"
    );

    healthy_key_lands(&store, "terminating").await;

    // Let go: the namespace then goes away (the controller finishes the deletion).
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_for("the namespace is gone", Duration::from_secs(60), || async {
        namespaces
            .get_opt(&ns)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_quota_is_a_403() {
    apiserver::controllers();
    let admin = apiserver::client().await;
    let store = store("admission-quota").await;
    let ns = apiserver::namespace("quota");
    let resource = format!("count/{}.{GROUP}", crd::PLURAL);

    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), &ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "snp-mappings"},
        "spec": {"hard": {resource.clone(): "1"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // Until the quota controller has computed its usage, admission refuses every create in
    // the namespace ("status unknown"): wait for it.
    wait_for(
        "the quota controller fills in the quota's usage",
        Duration::from_secs(60),
        || async {
            let q = quotas.get("snp-mappings").await.unwrap();
            let used = q.status.and_then(|s| s.used).unwrap_or_default();
            used.contains_key(&resource).then_some(())
        },
    )
    .await;

    // One object fits.
    let first = "org.apache.dubbo.demo.FirstService";
    let out = register(&store, &ns, first, "a")
        .await
        .expect("the first object fits the quota");
    assert_eq!(out.created, 1, "{out:?}");

    // A second one does not: the server's answer, then the store's.
    let second = "org.apache.dubbo.demo.SecondService";
    let s = api_status(create_as_shim(&ns, second).await);
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
    assert!(s.message.contains("exceeded quota: snp-mappings"), "{s:?}");
    let err = register(&store, &ns, second, "a")
        .await
        .expect_err("past the quota nothing is created");
    let text = err.to_string();
    assert!(
        text.contains("403") && text.contains("exceeded quota"),
        "the store surfaces the 403: {text}"
    );

    // The quota counts objects: the existing one still takes new applications.
    let out = register(&store, &ns, first, "b")
        .await
        .expect("an update is not a new object");
    assert_eq!(out.updated, 1, "{out:?}");

    healthy_key_lands(&store, "quota").await;
}

// ---------------------------------------------------------------------------------------
// RBAC

/// One row of `kubectl auth can-i --list`: (resource.group, non-resource URLs, resource
/// names, verbs), each list sorted.
type Row = (String, Vec<String>, Vec<String>, Vec<String>);

/// Parses the table `kubectl auth can-i --list` prints.
fn parse_can_i(table: &str) -> BTreeSet<Row> {
    let mut rows = BTreeSet::new();
    for line in table.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let first = line.find('[').unwrap_or_else(|| panic!("bad row {line:?}"));
        let resource = line[..first].trim().to_owned();
        let lists: Vec<Vec<String>> = line[first..]
            .split(']')
            .map(|p| p.trim().trim_start_matches('['))
            .take(3)
            .map(|p| {
                let mut v: Vec<String> = p.split_whitespace().map(str::to_owned).collect();
                v.sort();
                v
            })
            .collect();
        assert_eq!(lists.len(), 3, "bad row {line:?}");
        rows.insert((
            resource,
            lists[0].clone(),
            lists[1].clone(),
            lists[2].clone(),
        ));
    }
    rows
}

fn can_i_list(extra: &[&str]) -> BTreeSet<Row> {
    let mut args = vec!["auth", "can-i", "--list", "-n", "default"];
    args.extend_from_slice(extra);
    let (ok, out, err) = apiserver::kubectl(&args);
    assert!(ok, "kubectl {args:?}: {err}");
    assert!(!err.contains("incomplete"), "{err}");
    parse_can_i(&out)
}

fn deploy(relative: &str) -> PathBuf {
    apiserver::repo_root().join("deploy").join(relative)
}

/// Every document of a multi-document YAML text.
fn yaml_docs(text: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| <serde_yaml_ng::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The ClusterRole of `deploy/rbac.yaml`.
fn deployed_role() -> ClusterRole {
    let text = std::fs::read_to_string(deploy("rbac.yaml")).unwrap();
    yaml_docs(&text)
        .into_iter()
        .find(|v| v["kind"] == "ClusterRole")
        .map(|v| serde_yaml_ng::from_value(v).unwrap())
        .expect("a ClusterRole in deploy/rbac.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_may_do_exactly_what_deploy_rbac_says() {
    let server = apiserver::server();
    let shim = can_i_list(&["--kubeconfig", server.kubeconfig.to_str().unwrap()]);
    // What any service account of snp-system may do on this cluster without the shim's
    // binding: the bootstrap policy's discovery, self-review and OIDC-discovery rules.
    let baseline = can_i_list(&[
        "--as=system:serviceaccount:snp-system:snp-baseline",
        "--as-group=system:serviceaccounts",
        "--as-group=system:serviceaccounts:snp-system",
    ]);
    assert!(
        baseline
            .iter()
            .any(|r| r.0.starts_with("selfsubjectaccessreviews.")),
        "the baseline is the server's: {baseline:?}"
    );

    // The intended list: the baseline plus each rule of deploy/rbac.yaml, for the group it
    // names and for the test server's second group (the same role, docs/deploy.md's
    // recipe for dubbo-admin's group).
    let mut intended = baseline.clone();
    let role = deployed_role();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            // The mappings' rule holds for the second group too; the others (pods, in the
            // core group "") only for their own.
            let groups = if group == GROUP {
                vec![group.as_str(), apiserver::OTHER_GROUP]
            } else {
                vec![group.as_str()]
            };
            for g in groups {
                for r in rule.resources.as_deref().unwrap_or_default() {
                    intended.insert((
                        if g.is_empty() {
                            r.clone()
                        } else {
                            format!("{r}.{g}")
                        },
                        vec![],
                        rule.resource_names.clone().unwrap_or_default(),
                        verbs.clone(),
                    ));
                }
            }
        }
    }
    let extra: Vec<&Row> = shim.difference(&intended).collect();
    let missing: Vec<&Row> = intended.difference(&shim).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the shim's permissions differ from deploy/rbac.yaml:\n  granted beyond it: {extra:?}\n  missing: {missing:?}"
    );
    // And deploy/rbac.yaml gives what the store calls (shim/src/store/kube.rs), and no
    // deletion.
    let row = shim
        .iter()
        .find(|r| r.0 == format!("{}.{GROUP}", crd::PLURAL))
        .expect("a row for servicenamemappings");
    for verb in ["get", "list", "watch", "create", "update"] {
        assert!(row.3.iter().any(|v| v == verb), "{verb} missing: {row:?}");
    }
    for verb in ["delete", "deletecollection", "*"] {
        assert!(!row.3.iter().any(|v| v == verb), "{verb} granted: {row:?}");
    }
    eprintln!("kubectl auth can-i --list as the shim:");
    for r in &shim {
        eprintln!("  {r:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Server-side dry runs of what the project ships

/// `kubectl apply --server-side --dry-run=server ARGS` as the administrator: the server runs
/// admission and validation and stores nothing. Returns stdout; fails on an error or on any
/// warning (a PodSecurity violation of the DaemonSet is a warning for a workload).
fn dry_run(args: &[&str]) -> String {
    let mut all = vec![
        "apply",
        "--server-side",
        "--field-manager=snp-dry-run",
        "--dry-run=server",
    ];
    all.extend_from_slice(args);
    let (ok, out, err) = apiserver::kubectl(&all);
    assert!(ok, "kubectl {all:?} failed:\n{out}\n{err}");
    assert!(
        !err.to_lowercase().contains("warning"),
        "kubectl {all:?} warned:\n{err}"
    );
    out
}

/// The CRD named `name` in the YAML file at `path`.
fn crd_in(path: &str, name: &str) -> CustomResourceDefinition {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    yaml_docs(&text)
        .into_iter()
        .find(|v| v["metadata"]["name"] == name)
        .map(|v| serde_yaml_ng::from_value(v).unwrap())
        .unwrap_or_else(|| panic!("no CRD {name} in {path}"))
}

/// Istio's own CRD of `plural` (istio.io/api).
fn istio_crd(plural: &str) -> CustomResourceDefinition {
    crd_in(
        &apiserver::script_out(&["istio-crds"]),
        &format!("{plural}.networking.istio.io"),
    )
}

/// prometheus-operator's own CRD of `plural` (its release's files).
fn monitoring_crd(plural: &str) -> CustomResourceDefinition {
    let dir = apiserver::script_out(&["monitoring-crds"]);
    crd_in(
        &format!("{dir}/monitoring.coreos.com_{plural}.yaml"),
        &format!("{plural}.monitoring.coreos.com"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_manifest_passes_a_server_side_dry_run() {
    let admin = apiserver::client().await;
    let root = apiserver::repo_root();
    let deploy_dir = root.join("deploy");

    // deploy/ as users install it: kustomize, then the API server's admission and
    // validation for every object, nothing stored.
    let (ok, rendered, err) = apiserver::kubectl(&["kustomize", deploy_dir.to_str().unwrap()]);
    assert!(ok, "kubectl kustomize deploy/: {err}");
    let objects = yaml_docs(&rendered);
    let kinds: BTreeMap<String, usize> = objects.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o["kind"].as_str().unwrap().to_owned()).or_default() += 1;
        m
    });
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "DaemonSet",
    ] {
        assert!(
            kinds.contains_key(kind),
            "{kind} missing from deploy/: {kinds:?}"
        );
    }
    let out = dry_run(&["-k", deploy_dir.to_str().unwrap()]);
    let applied = out
        .lines()
        .filter(|l| l.ends_with("serverside-applied (server dry run)"))
        .count();
    assert_eq!(applied, objects.len(), "one line per object:\n{out}");
    // Nothing was stored: the DaemonSet and the Service are not there.
    let (_, got, _) = apiserver::kubectl(&[
        "-n",
        "snp-system",
        "get",
        "daemonsets,services",
        "-o",
        "name",
    ]);
    assert_eq!(got.trim(), "", "a dry run stored something");

    // Every YAML file under deploy/ on its own, as its comments say they apply.
    let istio_crd = istio_crd("envoyfilters");
    apiserver::install_crd(&admin, &istio_crd).await;
    for plural in ["prometheusrules", "podmonitors"] {
        apiserver::install_crd(&admin, &monitoring_crd(plural)).await;
    }
    apiserver::create_namespace(&admin, "istio-system").await;
    let sample_ns = apiserver::namespace("dry-run");
    let mut files = Vec::new();
    let mut stack = vec![deploy_dir.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                // The chart's templates are not manifests (rendered below), nor are
                // promtool's rule tests.
                if p != deploy_dir.join("helm") && p != deploy_dir.join("monitoring/tests") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    for f in &files {
        let path = f.to_str().unwrap();
        // The sample names no namespace: `-n` chooses one, as its comment says.
        let out = if f.starts_with(deploy_dir.join("samples")) {
            dry_run(&["-n", &sample_ns, "-f", path])
        } else {
            dry_run(&["-f", path])
        };
        assert!(
            out.contains("serverside-applied (server dry run)"),
            "{path}:\n{out}"
        );
        eprintln!(
            "{}: {}",
            f.strip_prefix(&root).unwrap().display(),
            out.trim()
        );
    }

    // The Helm chart as users install it: `helm template` with the defaults, and with the
    // monitoring objects on, then the API server's admission and validation.
    let helm = root.join("target/tools/helm");
    // Rendered for this API server's version (the chart states the versions it supports).
    let kube_version = admin.apiserver_version().await.unwrap().git_version;
    let chart = deploy_dir.join("helm/snp");
    for set in [
        &[][..],
        &[
            "--set",
            "monitoring.podMonitor.enabled=true",
            "--set",
            "monitoring.prometheusRule.enabled=true",
        ][..],
    ] {
        let out = std::process::Command::new(&helm)
            .args(["template", "snp", chart.to_str().unwrap()])
            .args(["--namespace", "snp-system", "--kube-version", &kube_version])
            .args(set)
            .output()
            .unwrap_or_else(|e| {
                panic!("run {} (scripts/setup.sh installs it): {e}", helm.display())
            });
        assert!(
            out.status.success(),
            "helm template {set:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).unwrap();
        let (ok, stdout, err) = apiserver::kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=snp-dry-run",
                // The harness applied deploy/'s RBAC under its own manager; the chart is
                // checked for validity and admission here, not for field ownership.
                "--force-conflicts",
                "--dry-run=server",
                "-f",
                "-",
            ],
            &rendered,
        );
        assert!(
            ok && !err.to_lowercase().contains("warning"),
            "the chart {set:?}:\n{stdout}\n{err}"
        );
        let applied = stdout
            .lines()
            .filter(|l| l.ends_with("serverside-applied (server dry run)"))
            .count();
        assert_eq!(
            applied,
            yaml_docs(&rendered).len(),
            "the chart {set:?}:\n{stdout}"
        );
        eprintln!("helm template {set:?}: {applied} objects pass a server-side dry run");
    }

    // The checks are real: Istio's schema refuses a misspelled enum.
    let bad = std::fs::read_to_string(deploy("istio/envoyfilter.yaml"))
        .unwrap()
        .replacen("applyTo: HTTP_FILTER", "applyTo: HTTP_FILTERS", 1);
    assert!(bad.contains("HTTP_FILTERS"));
    let (ok, _, err) = apiserver::kubectl_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &bad,
    );
    assert!(!ok && err.contains("HTTP_FILTERS"), "{err}");

    // snp-system enforces the `privileged` Pod Security level: the journal's hostPath and
    // the init container that hands it to the shim's user need it. The shim's own container
    // still meets `restricted`: in a namespace that warns at that level, the violations
    // named are the hostPath and the init container's, never the shim container's; and a
    // shim container that allows privilege escalation is named.
    let (ok, _, err) = apiserver::kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: pss-check\n  labels:\n    pod-security.kubernetes.io/warn: restricted\n",
    );
    assert!(ok, "{err}");
    let shipped = std::fs::read_to_string(deploy("daemonset.yaml"))
        .unwrap()
        .replace("namespace: snp-system", "namespace: pss-check");
    let (ok, _, err) = apiserver::kubectl_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &shipped,
    );
    assert!(ok && err.contains("would violate PodSecurity"), "{err}");
    assert!(err.contains("hostPath"), "{err}");
    assert!(!err.contains("container \"snp-shim\""), "{err}");
    let at = shipped
        .find("- name: snp-shim")
        .expect("the shim's container");
    let escalating = format!(
        "{}{}",
        &shipped[..at],
        shipped[at..].replacen(
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation: true",
            1
        )
    );
    assert_ne!(escalating, shipped);
    let (ok, _, err) = apiserver::kubectl_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &escalating,
    );
    assert!(
        ok && err.contains(
            "container \"snp-shim\" must set securityContext.allowPrivilegeEscalation=false"
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Pods

/// Pods can be created (the service-account controller made the namespace's `default`
/// ServiceAccount, which admission requires) but never run: no scheduler, no kubelet. A
/// test that needs a running pod sets its status itself, as here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_created_and_its_status_is_the_tests_to_set() {
    use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
    apiserver::controllers();
    let admin = apiserver::client().await;
    let ns = apiserver::namespace("pods");
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    wait_for(
        "the default ServiceAccount of a new namespace",
        Duration::from_secs(30),
        || async { sas.get_opt("default").await.unwrap().map(|_| ()) },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "demo-provider-0", "labels": {"app": "demo-provider"}},
        "spec": {
            "nodeName": "node-a",
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "example.invalid/demo-provider:1"}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let created = pods.get("demo-provider-0").await.unwrap();
    assert_eq!(
        created.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending"),
        "nothing runs it"
    );
    pods.patch_status(
        "demo-provider-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}]
        }})),
    )
    .await
    .unwrap();
    let running = pods.get("demo-provider-0").await.unwrap();
    let status = running.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.7"));
    assert_eq!(running.spec.unwrap().node_name.as_deref(), Some("node-a"));
}
