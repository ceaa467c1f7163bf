//! Envoy with the filter, as tests and benchmarks run it: configurations derived from
//! `envoy/envoy.yaml` (the file users run) with only what a run must change (ports,
//! upstream ports, the wasm path, whether the snp filter is in the chain, a second
//! listener without the filter, a bootstrap wasm service), and the process that runs one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::process::{local, wait_http, wait_tcp, Proc};

/// What to change in `envoy/envoy.yaml`.
#[derive(Debug, Clone)]
pub struct EnvoySpec {
    /// Admin port.
    pub admin_port: u16,
    /// Port of the `apps` listener.
    pub apps_port: u16,
    /// Whether the `apps` listener keeps the snp filter.
    pub filter: bool,
    /// A second listener `apps_nofilter` on this port: `apps` without the snp filter
    /// (registrations go to the shim, other traffic to `app_grpc`).
    pub nofilter_port: Option<u16>,
    /// The filter's `.wasm`.
    pub filter_wasm: String,
    /// The shim's gRPC port (cluster `snp_shim`).
    pub shim_port: u16,
    /// The upstream of other gRPC traffic (cluster `app_grpc`).
    pub app_grpc_port: u16,
    /// The upstream of other HTTP traffic (cluster `app_http`).
    pub app_http_port: u16,
    /// A singleton bootstrap wasm service: (`.wasm` path, its configuration string).
    pub bootstrap_wasm: Option<(String, String)>,
    /// Run the snp filter on every stream, as `envoy/envoy.yaml` did before it enabled the
    /// filter only on the registration routes (`disabled: true` in the chain, a per-route
    /// `FilterConfig` enabling it): the filter's `disabled` flag is removed. An alternative
    /// the benchmarks measure against the shipped configuration.
    pub unscoped: bool,
    /// Talk HTTP/2 to the internal ack listener (cluster `snp_ack`). `envoy/envoy.yaml`
    /// does so since the benchmarks measured it; kept so that configs derived from an
    /// older `envoy.yaml` (HTTP/1.1, a cluster without protocol options) can be compared.
    pub ack_h2: bool,
    /// Keys set in the filter's JSON configuration over `envoy/envoy.yaml`'s (e.g.
    /// `shared_batch`, the debounce windows).
    pub filter_settings: serde_json::Map<String, Value>,
}

fn find<'a>(items: &'a mut Value, name: &str) -> Result<&'a mut Value> {
    items
        .as_array_mut()
        .context("not a list")?
        .iter_mut()
        .find(|i| i["name"] == name)
        .with_context(|| format!("{name} not found"))
}

fn set_port(cluster: &mut Value, port: u16) {
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"] = json!(port);
}

fn http_filters(listener: &mut Value) -> &mut Value {
    &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
}

/// The configuration (as JSON, which Envoy reads as YAML) for `spec`, from the text of
/// `envoy/envoy.yaml`.
pub fn config(envoy_yaml: &str, spec: &EnvoySpec) -> Result<Value> {
    let mut cfg: Value = serde_yaml_ng::from_str(envoy_yaml).context("parse envoy.yaml")?;
    cfg["admin"]["address"]["socket_address"]["port_value"] = json!(spec.admin_port);
    let listeners = &mut cfg["static_resources"]["listeners"];
    let apps = find(listeners, "apps")?;
    apps["address"]["socket_address"] =
        json!({"address": "127.0.0.1", "port_value": spec.apps_port});
    let filters = http_filters(apps);
    let snp = find(filters, "snp")?;
    snp["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] =
        json!(spec.filter_wasm);
    let mut nofilter = apps.clone();
    {
        let f = http_filters(&mut nofilter)
            .as_array_mut()
            .context("http_filters")?;
        f.retain(|x| x["name"] != "snp");
        if f.len() != 1 {
            bail!("expected only the router after removing snp");
        }
    }
    if !spec.filter {
        *apps = nofilter.clone();
    } else {
        let snp = find(http_filters(apps), "snp")?;
        if snp["disabled"] != json!(true) {
            bail!("envoy.yaml: the snp filter is not disabled by default (enabled per route)");
        }
        if spec.unscoped {
            snp.as_object_mut()
                .context("snp filter")?
                .remove("disabled");
        }
        if !spec.filter_settings.is_empty() {
            let value = &mut snp["typed_config"]["config"]["configuration"]["value"];
            let mut conf: serde_json::Map<String, Value> =
                serde_json::from_str(value.as_str().context("the filter's configuration")?)
                    .context("the filter's configuration")?;
            conf.extend(spec.filter_settings.clone());
            *value = json!(serde_json::to_string(&conf)?);
        }
    }
    if let Some(port) = spec.nofilter_port {
        nofilter["name"] = json!("apps_nofilter");
        nofilter["address"]["socket_address"] = json!({"address": "127.0.0.1", "port_value": port});
        nofilter["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] =
            json!("apps_nofilter");
        listeners
            .as_array_mut()
            .context("listeners")?
            .push(nofilter);
    }
    let clusters = &mut cfg["static_resources"]["clusters"];
    if spec.ack_h2 {
        find(clusters, "snp_ack")?["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    set_port(find(clusters, "snp_shim")?, spec.shim_port);
    set_port(find(clusters, "app_grpc")?, spec.app_grpc_port);
    set_port(find(clusters, "app_http")?, spec.app_http_port);
    if let Some((wasm, conf)) = &spec.bootstrap_wasm {
        cfg["bootstrap_extensions"]
            .as_array_mut()
            .context("bootstrap_extensions")?
            .push(json!({
                "name": "envoy.bootstrap.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                    "singleton": true,
                    "config": {
                        "name": "snp_bench",
                        "root_id": "snp_bench",
                        "vm_config": {
                            "vm_id": "snp_bench",
                            "runtime": "envoy.wasm.runtime.v8",
                            "configuration": {
                                "@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": conf
                            },
                            "code": {"local": {"filename": wasm}}
                        }
                    }
                }
            }));
    }
    Ok(cfg)
}

/// Writes the configuration for `spec` to `path`.
pub fn write_config(root: &Path, spec: &EnvoySpec, path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(root.join("envoy/envoy.yaml")).context("read envoy/envoy.yaml")?;
    let cfg = config(&text, spec)?;
    std::fs::write(path, serde_json::to_string_pretty(&cfg)?)?;
    Ok(())
}

/// A running Envoy, stopped when dropped.
#[derive(Debug)]
pub struct EnvoyProcess {
    /// The process.
    pub proc: Proc,
    /// Admin address.
    pub admin: String,
    /// The `apps` listener.
    pub apps: String,
    /// The `apps_nofilter` listener, if configured.
    pub nofilter: Option<String>,
    /// Its configuration file.
    pub config: PathBuf,
}

impl EnvoyProcess {
    /// Writes the configuration for `spec` (from `root/envoy/envoy.yaml`) to
    /// `dir/<name>.json` and starts `envoy` on it with `concurrency` workers, its log in
    /// `dir/<name>.log`; returns once the admin says `LIVE` and the listeners accept
    /// connections (an error, with the log, if Envoy exits or is not ready in 60 s).
    pub async fn start(
        envoy: &Path,
        root: &Path,
        dir: &Path,
        name: &str,
        spec: &EnvoySpec,
        concurrency: usize,
    ) -> Result<Self> {
        let config = dir.join(format!("{name}.json"));
        write_config(root, spec, &config)?;
        let args: Vec<String> = vec![
            "-c".into(),
            config.display().to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
            "--disable-hot-restart".into(),
            "-l".into(),
            "warn".into(),
        ];
        let mut proc = Proc::spawn(name, envoy, &args, dir, root)?;
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
            config,
        })
    }

    /// Fails if a wasm VM failed (a panic kills the VM and every stream on it) or Envoy
    /// exited.
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

/// Envoy admin `/stats` (text): `name: value` for counters and gauges; histograms skipped.
pub fn stats(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            Some((name.to_owned(), value.trim().parse::<u64>().ok()?))
        })
        .collect()
}

/// `name` from parsed [`stats`]; an error if Envoy has no such stat (a renamed stat must
/// not read as 0).
pub fn stat(stats: &std::collections::BTreeMap<String, u64>, name: &str) -> Result<u64> {
    stats
        .get(name)
        .copied()
        .with_context(|| format!("Envoy has no stat {name} ({} stats present)", stats.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_stat_is_an_error() {
        let s = stats("wasmcustom.snp.pending_keys: 3\ncluster.x.upstream_rq_total: 0\n");
        assert_eq!(stat(&s, "wasmcustom.snp.pending_keys").unwrap(), 3);
        assert_eq!(stat(&s, "cluster.x.upstream_rq_total").unwrap(), 0);
        assert!(stat(&s, "wasmcustom.snp.pending").is_err());
    }

    fn spec(filter: bool) -> EnvoySpec {
        EnvoySpec {
            admin_port: 1,
            apps_port: 2,
            filter,
            nofilter_port: Some(3),
            filter_wasm: "/x/snp_filter.wasm".into(),
            shim_port: 4,
            app_grpc_port: 5,
            app_http_port: 6,
            bootstrap_wasm: Some(("/x/b.wasm".into(), "3".into())),
            unscoped: false,
            ack_h2: false,
            filter_settings: serde_json::Map::new(),
        }
    }

    fn names(listener: &Value) -> Vec<String> {
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn derives_the_benchmark_configs_from_envoy_yaml() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../envoy/envoy.yaml"
        ))
        .unwrap();
        let c = config(&text, &spec(true)).unwrap();
        let l = c["static_resources"]["listeners"].as_array().unwrap();
        let apps = l.iter().find(|x| x["name"] == "apps").unwrap();
        let nf = l.iter().find(|x| x["name"] == "apps_nofilter").unwrap();
        assert_eq!(names(apps), ["snp", "envoy.filters.http.router"]);
        assert_eq!(names(nf), ["envoy.filters.http.router"]);
        assert_eq!(nf["address"]["socket_address"]["port_value"], 3);
        assert_eq!(c["admin"]["address"]["socket_address"]["port_value"], 1);
        let shim = c["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "snp_shim")
            .unwrap();
        assert_eq!(
            shim["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            4
        );
        assert_eq!(c["bootstrap_extensions"].as_array().unwrap().len(), 2);
        // As shipped, the filter runs only where a route enables it: the registration routes.
        let snp = |c: &Value| {
            let l = c["static_resources"]["listeners"].as_array().unwrap();
            let apps = l.iter().find(|x| x["name"] == "apps").unwrap();
            apps["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0].clone()
        };
        assert_eq!(snp(&c)["disabled"], true);
        let routes = &apps["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"];
        let enabled: Vec<&Value> = routes
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r.get("typed_per_filter_config").is_some())
            .collect();
        assert_eq!(enabled.len(), 4, "{enabled:?}");
        let unscoped = config(
            &text,
            &EnvoySpec {
                unscoped: true,
                ..spec(true)
            },
        )
        .unwrap();
        assert!(snp(&unscoped).get("disabled").is_none());
        let mut settings = serde_json::Map::new();
        settings.insert("shared_batch".into(), json!(false));
        let tuned = config(
            &text,
            &EnvoySpec {
                filter_settings: settings,
                ..spec(true)
            },
        )
        .unwrap();
        let conf: Value = serde_json::from_str(
            snp(&tuned)["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(conf["shared_batch"], false);
        assert_eq!(conf["shim_cluster"], "snp_shim", "the shipped keys stay");
        let c = config(&text, &spec(false)).unwrap();
        let apps = c["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "apps")
            .unwrap()
            .clone();
        assert_eq!(names(&apps), ["envoy.filters.http.router"]);
    }

    #[test]
    fn reads_envoy_stats() {
        let s = stats(
            "wasmcustom.snp.batches.sent: 4\nserver.concurrency: 2\ncluster.x.upstream_rq_time: P0(nan,1)\n",
        );
        assert_eq!(s["wasmcustom.snp.batches.sent"], 4);
        assert_eq!(s["server.concurrency"], 2);
        assert!(!s.contains_key("cluster.x.upstream_rq_time"));
    }
}
