//! The filter's JSON configuration (`on_configure`; Istio's `WasmPlugin.pluginConfig`).
//!
//! Every key is optional and has a default (documented in `envoy/README.md`). Unknown keys
//! are an error: a misspelt `namespace_policy` silently falling back to `trust` would turn
//! off namespace enforcement, so the filter refuses the configuration instead and Envoy
//! reports it.

use core::time::Duration;

use snp_core::backoff::Backoff;
use snp_core::{DebounceConfig, Limits};
use snp_proto::Flavour;

use crate::json::{self, Json};

/// How the namespace of a registration is checked against the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespacePolicy {
    /// Take the request's namespace as it is (the seed's behaviour).
    Trust,
    /// The Envoy node metadata key (`NAMESPACE` by default, as Istio sets it) names the
    /// caller's namespace: sidecars, where the proxy serves exactly one workload.
    Node,
    /// The namespace segment of the peer certificate's SPIFFE ID
    /// (`spiffe://<trust-domain>/ns/<namespace>/sa/<account>`): node proxies and gateways
    /// reached over mTLS.
    Peer,
}

/// What to do when the request's namespace is not the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMismatch {
    /// Answer PERMISSION_DENIED.
    Reject,
    /// Register the mapping in the caller's own namespace instead.
    Rewrite,
}

/// When a registration call is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// At once, once the call is valid and queued (the seed's behaviour).
    Immediate,
    /// Once the shim has acknowledged a batch carrying every mapping of the call, or
    /// UNAVAILABLE after `durable_timeout_ms`.
    Durable,
}

#[derive(Debug, Clone)]
struct RawPath {
    path: String,
    flavour: Flavour,
}

/// The JSON document as written; `None` means "use the default".
#[derive(Debug, Default)]
struct Raw {
    paths: Option<Vec<RawPath>>,
    max_body_bytes: Option<u64>,
    namespace_policy: Option<NamespacePolicy>,
    on_mismatch: Option<OnMismatch>,
    node_namespace_key: Option<String>,
    ack_mode: Option<AckMode>,
    durable_timeout_ms: Option<u64>,
    shim_cluster: Option<String>,
    push_timeout_ms: Option<u64>,
    auth_token: Option<String>,
    source: Option<String>,
    ack_header: Option<String>,
    ack_response_header: Option<String>,
    tick_ms: Option<u64>,
    debounce: Option<bool>,
    debounce_after_ms: Option<u64>,
    debounce_max_ms: Option<u64>,
    first_check_ms: Option<u64>,
    max_in_flight: Option<u64>,
    max_pending_keys: Option<u64>,
    max_apps_per_key: Option<u64>,
    max_batch_keys: Option<u64>,
    suppress_acked_ms: Option<u64>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    retry_jitter: Option<f64>,
    max_application_len: Option<u64>,
    max_interface_len: Option<u64>,
    max_interfaces: Option<u64>,
}

/// Every configuration key, in documentation order.
pub const KEYS: &[&str] = &[
    "paths",
    "max_body_bytes",
    "namespace_policy",
    "on_mismatch",
    "node_namespace_key",
    "ack_mode",
    "durable_timeout_ms",
    "shim_cluster",
    "push_timeout_ms",
    "auth_token",
    "source",
    "ack_header",
    "ack_response_header",
    "tick_ms",
    "debounce",
    "debounce_after_ms",
    "debounce_max_ms",
    "first_check_ms",
    "max_in_flight",
    "max_pending_keys",
    "max_apps_per_key",
    "max_batch_keys",
    "suppress_acked_ms",
    "retry_base_ms",
    "retry_max_ms",
    "retry_jitter",
    "max_application_len",
    "max_interface_len",
    "max_interfaces",
];

fn expect_u64(key: &str, v: &Json) -> Result<u64, ConfigError> {
    v.as_u64().ok_or_else(|| {
        ConfigError(format!(
            "{key} must be a non-negative integer, not {}",
            v.kind()
        ))
    })
}

fn expect_str(key: &str, v: &Json) -> Result<String, ConfigError> {
    match v {
        Json::String(s) => Ok(s.clone()),
        other => err(format!("{key} must be a string, not {}", other.kind())),
    }
}

fn expect_bool(key: &str, v: &Json) -> Result<bool, ConfigError> {
    match v {
        Json::Bool(b) => Ok(*b),
        other => err(format!("{key} must be true or false, not {}", other.kind())),
    }
}

fn expect_enum<T: Copy>(key: &str, v: &Json, options: &[(&str, T)]) -> Result<T, ConfigError> {
    let s = expect_str(key, v)?;
    match options.iter().find(|(name, _)| *name == s) {
        Some((_, t)) => Ok(*t),
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            err(format!(
                "{key} must be one of {}, not {s:?}",
                names.join(", ")
            ))
        }
    }
}

fn expect_paths(v: &Json) -> Result<Vec<RawPath>, ConfigError> {
    let Json::Array(items) = v else {
        return err(format!("paths must be an array, not {}", v.kind()));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Json::Object(members) = item else {
            return err("each entry of paths must be an object {\"path\": ..., \"flavour\": ...}");
        };
        let (mut path, mut flavour) = (None, None);
        for (k, v) in members {
            match k.as_str() {
                "path" => path = Some(expect_str("paths[].path", v)?),
                "flavour" => {
                    flavour = Some(expect_enum(
                        "paths[].flavour",
                        v,
                        &[("dubbo", Flavour::Dubbo), ("admin", Flavour::Admin)],
                    )?)
                }
                other => {
                    return err(format!(
                        "unknown key {other:?} in paths[] (expected path, flavour)"
                    ))
                }
            }
        }
        match (path, flavour) {
            (Some(path), Some(flavour)) => out.push(RawPath { path, flavour }),
            _ => return err("each entry of paths needs both path and flavour"),
        }
    }
    Ok(out)
}

impl Raw {
    fn from_json(doc: &Json) -> Result<Self, ConfigError> {
        let Json::Object(members) = doc else {
            return err(format!(
                "the configuration must be a JSON object, not {}",
                doc.kind()
            ));
        };
        let mut r = Raw::default();
        for (k, v) in members {
            let key = k.as_str();
            let n = || expect_u64(key, v).map(Some);
            let s = || expect_str(key, v).map(Some);
            match key {
                "paths" => r.paths = Some(expect_paths(v)?),
                "max_body_bytes" => r.max_body_bytes = n()?,
                "namespace_policy" => {
                    r.namespace_policy = Some(expect_enum(
                        key,
                        v,
                        &[
                            ("trust", NamespacePolicy::Trust),
                            ("node", NamespacePolicy::Node),
                            ("peer", NamespacePolicy::Peer),
                        ],
                    )?)
                }
                "on_mismatch" => {
                    r.on_mismatch = Some(expect_enum(
                        key,
                        v,
                        &[
                            ("reject", OnMismatch::Reject),
                            ("rewrite", OnMismatch::Rewrite),
                        ],
                    )?)
                }
                "node_namespace_key" => r.node_namespace_key = s()?,
                "ack_mode" => {
                    r.ack_mode = Some(expect_enum(
                        key,
                        v,
                        &[
                            ("immediate", AckMode::Immediate),
                            ("durable", AckMode::Durable),
                        ],
                    )?)
                }
                "durable_timeout_ms" => r.durable_timeout_ms = n()?,
                "shim_cluster" => r.shim_cluster = s()?,
                "push_timeout_ms" => r.push_timeout_ms = n()?,
                "auth_token" => r.auth_token = s()?,
                "source" => r.source = s()?,
                "ack_header" => r.ack_header = s()?,
                "ack_response_header" => r.ack_response_header = s()?,
                "tick_ms" => r.tick_ms = n()?,
                "debounce" => r.debounce = Some(expect_bool(key, v)?),
                "debounce_after_ms" => r.debounce_after_ms = n()?,
                "debounce_max_ms" => r.debounce_max_ms = n()?,
                "first_check_ms" => r.first_check_ms = n()?,
                "max_in_flight" => r.max_in_flight = n()?,
                "max_pending_keys" => r.max_pending_keys = n()?,
                "max_apps_per_key" => r.max_apps_per_key = n()?,
                "max_batch_keys" => r.max_batch_keys = n()?,
                "suppress_acked_ms" => r.suppress_acked_ms = n()?,
                "retry_base_ms" => r.retry_base_ms = n()?,
                "retry_max_ms" => r.retry_max_ms = n()?,
                "retry_jitter" => {
                    r.retry_jitter = Some(v.as_unit_fraction().ok_or_else(|| {
                        ConfigError("retry_jitter must be a number between 0 and 1".to_owned())
                    })?)
                }
                "max_application_len" => r.max_application_len = n()?,
                "max_interface_len" => r.max_interface_len = n()?,
                "max_interfaces" => r.max_interfaces = n()?,
                other => {
                    return err(format!(
                        "unknown key {other:?}; the keys are: {}",
                        KEYS.join(", ")
                    ))
                }
            }
        }
        Ok(r)
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Intercepted gRPC paths and the flavour each speaks.
    pub paths: Vec<(String, Flavour)>,
    /// Largest request body buffered, frame header included (default 64 KiB).
    pub max_body_bytes: usize,
    /// Namespace policy (default `trust`).
    pub namespace_policy: NamespacePolicy,
    /// Mismatch handling (default `reject`).
    pub on_mismatch: OnMismatch,
    /// Node metadata key holding the caller's namespace (default `NAMESPACE`).
    pub node_namespace_key: String,
    /// Ack mode (default `immediate`).
    pub ack_mode: AckMode,
    /// How long a durable reply is held (default 5 s).
    pub durable_timeout: Duration,
    /// Envoy cluster of the shim's gRPC port (default `snp_shim`).
    pub shim_cluster: String,
    /// Timeout of one `PushMappings` call (default 5 s).
    pub push_timeout: Duration,
    /// Sent as `authorization: Bearer <token>` with every batch (default none).
    pub auth_token: Option<String>,
    /// Sender label of batches (default: the Envoy node id, else `envoy`).
    pub source: Option<String>,
    /// Request header that routes an answered call to the ack listener (default `x-snp-ack`).
    pub ack_header: String,
    /// Response header the ack listener sets, so the filter only ever rewrites its own
    /// answer (default `x-snp-acked`).
    pub ack_response_header: String,
    /// Period of `on_tick` (default 50 ms).
    pub tick: Duration,
    /// Debouncer settings.
    pub debounce: DebounceConfig,
    /// Validation limits.
    pub limits: Limits,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "invalid snp filter configuration: {}", self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Default intercepted paths: both registration flavours.
pub fn default_paths() -> Vec<(String, Flavour)> {
    vec![
        (Flavour::Dubbo.path().to_owned(), Flavour::Dubbo),
        (Flavour::Admin.path().to_owned(), Flavour::Admin),
    ]
}

impl Default for Config {
    fn default() -> Self {
        Self {
            paths: default_paths(),
            max_body_bytes: 64 * 1024,
            namespace_policy: NamespacePolicy::Trust,
            on_mismatch: OnMismatch::Reject,
            node_namespace_key: "NAMESPACE".to_owned(),
            ack_mode: AckMode::Immediate,
            durable_timeout: Duration::from_secs(5),
            shim_cluster: "snp_shim".to_owned(),
            push_timeout: Duration::from_secs(5),
            auth_token: None,
            source: None,
            ack_header: "x-snp-ack".to_owned(),
            ack_response_header: "x-snp-acked".to_owned(),
            tick: Duration::from_millis(50),
            debounce: DebounceConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// Milliseconds in `[min, max]` (Envoy's timers and callouts take 32-bit milliseconds).
fn millis(key: &str, v: Option<u64>, default: Duration, min: u64) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(ms) if ms < min || ms > u64::from(u32::MAX) => {
            err(format!("{key} must be between {min} and {} ms", u32::MAX))
        }
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

fn count(key: &str, v: Option<u64>, default: usize, min: u64) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if n < min => err(format!("{key} must be at least {min}")),
        Some(n) => usize::try_from(n).or_else(|_| err(format!("{key} is too large"))),
    }
}

/// An HTTP header name Envoy accepts from a filter: lower-case token characters.
fn header_name(key: &str, v: Option<String>, default: &str) -> Result<String, ConfigError> {
    let name = v.unwrap_or_else(|| default.to_owned());
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(name)
    } else {
        err(format!(
            "{key} {name:?} must be a lower-case HTTP header name"
        ))
    }
}

/// Printable ASCII without CR/LF: safe as a header value (or gRPC metadata).
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl Config {
    /// Parses the plugin configuration. Empty (or whitespace-only) input means defaults.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let doc = json::parse(bytes).map_err(|e| ConfigError(e.to_string()))?;
        Self::from_raw(Raw::from_json(&doc)?)
    }

    fn from_raw(raw: Raw) -> Result<Self, ConfigError> {
        let d = Self::default();
        let paths = match raw.paths {
            None => d.paths,
            Some(list) => {
                if list.is_empty() {
                    return err("paths must not be empty");
                }
                let mut out: Vec<(String, Flavour)> = Vec::with_capacity(list.len());
                for p in list {
                    if !p.path.starts_with('/') || !is_header_value(&p.path) {
                        return err(format!("path {:?} must be an absolute gRPC path", p.path));
                    }
                    if out.iter().any(|(q, _)| *q == p.path) {
                        return err(format!("path {:?} is listed twice", p.path));
                    }
                    out.push((p.path, p.flavour));
                }
                out
            }
        };
        // The body holds a 5-byte frame header plus the message; anything below 64 bytes
        // can't hold a real registration, anything above 16 MiB defeats the limit.
        let max_body_bytes = count("max_body_bytes", raw.max_body_bytes, d.max_body_bytes, 64)?;
        if max_body_bytes > 16 * 1024 * 1024 {
            return err("max_body_bytes must be at most 16 MiB");
        }
        let node_namespace_key = raw.node_namespace_key.unwrap_or(d.node_namespace_key);
        if node_namespace_key.is_empty() {
            return err("node_namespace_key must not be empty");
        }
        let shim_cluster = raw.shim_cluster.unwrap_or(d.shim_cluster);
        if shim_cluster.is_empty() || !is_header_value(&shim_cluster) {
            return err("shim_cluster must be a non-empty cluster name");
        }
        if let Some(t) = &raw.auth_token {
            if t.is_empty() || !is_header_value(t) {
                return err("auth_token must be non-empty printable ASCII");
            }
        }
        if let Some(s) = &raw.source {
            if s.is_empty() || s.len() > 253 {
                return err("source must be 1 to 253 bytes");
            }
        }
        let ack_header = header_name("ack_header", raw.ack_header, &d.ack_header)?;
        let ack_response_header = header_name(
            "ack_response_header",
            raw.ack_response_header,
            &d.ack_response_header,
        )?;

        let dd = DebounceConfig::default();
        let retry_base = millis("retry_base_ms", raw.retry_base_ms, dd.retry.base, 1)?;
        let retry_cap = millis("retry_max_ms", raw.retry_max_ms, dd.retry.cap, 1)?;
        if retry_cap < retry_base {
            return err("retry_max_ms must not be below retry_base_ms");
        }
        let jitter = raw.retry_jitter.unwrap_or(dd.retry.jitter);
        // Grow the shift until `base << n` reaches the cap, so the cap is reachable.
        let mut max_failures = 0u32;
        while max_failures < 31 && retry_base.saturating_mul(1u32 << max_failures) < retry_cap {
            max_failures += 1;
        }
        let debounce_after = millis(
            "debounce_after_ms",
            raw.debounce_after_ms,
            dd.debounce_after,
            0,
        )?;
        let debounce_max = millis("debounce_max_ms", raw.debounce_max_ms, dd.debounce_max, 0)?;
        if debounce_max < debounce_after {
            return err("debounce_max_ms must not be below debounce_after_ms");
        }
        let debounce = DebounceConfig {
            enabled: raw.debounce.unwrap_or(dd.enabled),
            debounce_after,
            debounce_max,
            first_check: millis("first_check_ms", raw.first_check_ms, dd.first_check, 0)?,
            max_in_flight: count("max_in_flight", raw.max_in_flight, dd.max_in_flight, 1)?,
            max_pending_keys: count(
                "max_pending_keys",
                raw.max_pending_keys,
                dd.max_pending_keys,
                1,
            )?,
            max_apps_per_key: count(
                "max_apps_per_key",
                raw.max_apps_per_key,
                dd.max_apps_per_key,
                1,
            )?,
            max_batch_keys: count("max_batch_keys", raw.max_batch_keys, dd.max_batch_keys, 1)?,
            suppress_acked_for: millis(
                "suppress_acked_ms",
                raw.suppress_acked_ms,
                dd.suppress_acked_for,
                0,
            )?,
            retry: Backoff {
                base: retry_base,
                cap: retry_cap,
                max_failures,
                jitter,
            },
            park_probe: dd.park_probe,
            max_parked_keys: dd.max_parked_keys,
            seed: dd.seed,
        };
        let dl = Limits::default();
        let limits = Limits {
            max_application_len: count(
                "max_application_len",
                raw.max_application_len,
                dl.max_application_len,
                1,
            )?,
            max_interface_len: count(
                "max_interface_len",
                raw.max_interface_len,
                dl.max_interface_len,
                1,
            )?,
            max_interfaces: count("max_interfaces", raw.max_interfaces, dl.max_interfaces, 1)?,
        };
        Ok(Self {
            paths,
            max_body_bytes,
            namespace_policy: raw.namespace_policy.unwrap_or(d.namespace_policy),
            on_mismatch: raw.on_mismatch.unwrap_or(d.on_mismatch),
            node_namespace_key,
            ack_mode: raw.ack_mode.unwrap_or(d.ack_mode),
            durable_timeout: millis(
                "durable_timeout_ms",
                raw.durable_timeout_ms,
                d.durable_timeout,
                1,
            )?,
            shim_cluster,
            push_timeout: millis("push_timeout_ms", raw.push_timeout_ms, d.push_timeout, 1)?,
            auth_token: raw.auth_token,
            source: raw.source,
            ack_header,
            ack_response_header,
            tick: millis("tick_ms", raw.tick_ms, d.tick, 1)?,
            debounce,
            limits,
        })
    }

    /// The flavour served at `path`, if the filter intercepts it.
    pub fn flavour_for(&self, path: &[u8]) -> Option<Flavour> {
        self.paths
            .iter()
            .find(|(p, _)| p.as_bytes() == path)
            .map(|(_, f)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_defaults_matching_the_seed() {
        let c = Config::parse(b"").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(Config::parse(b"  \n").unwrap(), Config::default());
        assert_eq!(Config::parse(b"{}").unwrap(), Config::default());
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.debounce.debounce_after, Duration::from_millis(100));
        assert_eq!(c.debounce.debounce_max, Duration::from_secs(1));
        assert_eq!(c.debounce.first_check, Duration::from_millis(200));
        assert_eq!(c.namespace_policy, NamespacePolicy::Trust);
        assert_eq!(c.on_mismatch, OnMismatch::Reject);
        assert_eq!(c.ack_mode, AckMode::Immediate);
        assert_eq!(
            c.flavour_for(Flavour::Dubbo.path().as_bytes()),
            Some(Flavour::Dubbo)
        );
        assert_eq!(
            c.flavour_for(Flavour::Admin.path().as_bytes()),
            Some(Flavour::Admin)
        );
        assert_eq!(c.flavour_for(b"/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn every_key_is_read() {
        let c = Config::parse(
            br#"{
            "paths": [{"path": "/x.Svc/register", "flavour": "admin"}],
            "max_body_bytes": 1024, "namespace_policy": "peer", "on_mismatch": "rewrite",
            "node_namespace_key": "NS", "ack_mode": "durable", "durable_timeout_ms": 700,
            "shim_cluster": "shim", "push_timeout_ms": 900, "auth_token": "s3cret",
            "source": "node-1", "ack_header": "x-a", "ack_response_header": "x-b",
            "tick_ms": 20, "debounce": false, "debounce_after_ms": 10, "debounce_max_ms": 20,
            "first_check_ms": 5, "max_in_flight": 2, "max_pending_keys": 10,
            "max_apps_per_key": 3, "max_batch_keys": 4, "suppress_acked_ms": 0,
            "retry_base_ms": 100, "retry_max_ms": 1000, "retry_jitter": 0,
            "max_application_len": 50, "max_interface_len": 60, "max_interfaces": 7
        }"#,
        )
        .unwrap();
        assert_eq!(
            c.paths,
            vec![("/x.Svc/register".to_owned(), Flavour::Admin)]
        );
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(c.namespace_policy, NamespacePolicy::Peer);
        assert_eq!(c.on_mismatch, OnMismatch::Rewrite);
        assert_eq!(c.node_namespace_key, "NS");
        assert_eq!(c.ack_mode, AckMode::Durable);
        assert_eq!(c.durable_timeout, Duration::from_millis(700));
        assert_eq!(c.shim_cluster, "shim");
        assert_eq!(c.push_timeout, Duration::from_millis(900));
        assert_eq!(c.auth_token.as_deref(), Some("s3cret"));
        assert_eq!(c.source.as_deref(), Some("node-1"));
        assert_eq!(
            (c.ack_header.as_str(), c.ack_response_header.as_str()),
            ("x-a", "x-b")
        );
        assert_eq!(c.tick, Duration::from_millis(20));
        assert!(!c.debounce.enabled);
        assert_eq!(c.debounce.debounce_after, Duration::from_millis(10));
        assert_eq!(c.debounce.debounce_max, Duration::from_millis(20));
        assert_eq!(c.debounce.first_check, Duration::from_millis(5));
        assert_eq!(c.debounce.max_in_flight, 2);
        assert_eq!(c.debounce.max_pending_keys, 10);
        assert_eq!(c.debounce.max_apps_per_key, 3);
        assert_eq!(c.debounce.max_batch_keys, 4);
        assert_eq!(c.debounce.suppress_acked_for, Duration::ZERO);
        assert_eq!(c.debounce.retry.base, Duration::from_millis(100));
        assert_eq!(c.debounce.retry.cap, Duration::from_millis(1000));
        // 100 << 4 = 1600 >= 1000: the cap is reached after 4 doublings.
        assert_eq!(c.debounce.retry.max_failures, 4);
        assert_eq!(c.debounce.retry.jitter, 0.0);
        assert_eq!(c.limits.max_application_len, 50);
        assert_eq!(c.limits.max_interface_len, 60);
        assert_eq!(c.limits.max_interfaces, 7);
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        for (json, needle) in [
            (r#"{"namespace_polcy": "node"}"#, "namespace_polcy"),
            (r#"{"namespace_policy": "strict"}"#, "strict"),
            (r#"{"paths": []}"#, "paths"),
            (
                r#"{"paths": [{"path": "x", "flavour": "dubbo"}]}"#,
                "absolute",
            ),
            (r#"{"paths": [{"path": "/a", "flavour": "c"}]}"#, "c"),
            (r#"{"max_body_bytes": 10}"#, "max_body_bytes"),
            (r#"{"tick_ms": 0}"#, "tick_ms"),
            (r#"{"push_timeout_ms": 99999999999}"#, "push_timeout_ms"),
            (
                r#"{"retry_base_ms": 10, "retry_max_ms": 5}"#,
                "retry_max_ms",
            ),
            (r#"{"retry_jitter": 2}"#, "retry_jitter"),
            (r#"{"auth_token": "a\nb"}"#, "auth_token"),
            (r#"{"ack_header": "X-Upper"}"#, "ack_header"),
            (r#"{"shim_cluster": ""}"#, "shim_cluster"),
            (r#"not json"#, "expected"),
            (r#"[1]"#, "object"),
            (r#"{"max_body_bytes": "1"}"#, "max_body_bytes"),
            (r#"{"debounce": 1}"#, "debounce"),
            (r#"{"paths": [{"path": "/a"}]}"#, "flavour"),
            (
                r#"{"paths": [{"path": "/a", "flavour": "dubbo", "x": 1}]}"#,
                "x",
            ),
            (
                r#"{"paths": [{"path": "/a", "flavour": "dubbo"}, {"path": "/a", "flavour": "admin"}]}"#,
                "twice",
            ),
        ] {
            let e = Config::parse(json.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn default_retry_matches_the_core_defaults() {
        let c = Config::default();
        let d = DebounceConfig::default();
        assert_eq!(c.debounce, d);
        // The parsed default computes the shift from base and cap: 500 ms << 6 >= 30 s.
        let parsed = Config::parse(b"{\"retry_base_ms\": 500}").unwrap();
        assert_eq!(parsed.debounce.retry.max_failures, 6);
    }
}
