//! The filter's JSON configuration (`on_configure`; Istio's `WasmPlugin.pluginConfig`).
//!
//! Every key is optional and has a default (documented in `envoy/README.md`). Unknown keys
//! are an error: a misspelt `namespace_policy` silently falling back to `trust` would turn
//! off namespace enforcement, so the filter refuses the configuration instead and Envoy
//! reports it.
//!
//! Read with serde (`deny_unknown_fields`) into `Raw`, then checked into [`Config`]. Type
//! errors carry the key's path (`paths[0].flavour: unknown variant ...`); range errors
//! name the key in their own words.

use core::time::Duration;

use serde::Deserialize;
use snp_core::backoff::Backoff;
use snp_core::{DebounceConfig, Limits};
use snp_proto::path::PathMatch;
use snp_proto::Flavour;

use crate::request::{Code, Reason, Rejection};

/// How the namespace of a registration is checked against the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMismatch {
    /// Answer PERMISSION_DENIED.
    Reject,
    /// Register the mapping in the caller's own namespace instead.
    Rewrite,
}

/// When a registration call is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// At once, once the call is valid and queued (the seed's behaviour).
    Immediate,
    /// Once the shim has acknowledged a batch carrying every mapping of the call, or
    /// UNAVAILABLE after `durable_timeout_ms`.
    Durable,
}

/// A flavour as the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawFlavour {
    Dubbo,
    Admin,
}

impl From<RawFlavour> for Flavour {
    fn from(f: RawFlavour) -> Self {
        match f {
            RawFlavour::Dubbo => Flavour::Dubbo,
            RawFlavour::Admin => Flavour::Admin,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object {\"path\": ..., \"flavour\": ...}"
)]
struct RawPath {
    path: String,
    flavour: RawFlavour,
}

/// The JSON document as written. A key that is absent takes its default; `null` is a
/// wrong type like any other (only `auth_token`, `auth_token_env` and `source` have no
/// default, and they must be strings when given).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a JSON object")]
struct Raw {
    #[serde(deserialize_with = "some")]
    paths: Option<Vec<RawPath>>,
    max_body_bytes: u64,
    namespace_policy: NamespacePolicy,
    on_mismatch: OnMismatch,
    node_namespace_key: String,
    ack_mode: AckMode,
    durable_timeout_ms: u64,
    shim_cluster: String,
    push_timeout_ms: u64,
    #[serde(deserialize_with = "some")]
    auth_token: Option<String>,
    #[serde(deserialize_with = "some")]
    auth_token_env: Option<String>,
    #[serde(deserialize_with = "some")]
    source: Option<String>,
    ack_header: String,
    ack_response_header: String,
    tick_ms: u64,
    debounce: bool,
    debounce_after_ms: u64,
    debounce_max_ms: u64,
    first_check_ms: u64,
    max_in_flight: u64,
    max_pending_keys: u64,
    max_apps_per_key: u64,
    max_batch_keys: u64,
    suppress_acked_ms: u64,
    max_acked_entries: u64,
    park_probe_ms: u64,
    max_parked_keys: u64,
    retry_base_ms: u64,
    retry_max_ms: u64,
    retry_jitter: f64,
    max_application_len: u64,
    max_interface_len: u64,
    max_interfaces: u64,
    max_push_bytes: u64,
    max_push_apps_per_key: u64,
    shared_batch: bool,
    shared_lease_ms: u64,
}

/// An optional key that, when present, must hold a value (not `null`).
fn some<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn n(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl Default for Raw {
    /// The defaults of [`Config::default`], as the document would spell them.
    fn default() -> Self {
        let c = Config::default();
        let d = &c.debounce;
        let l = &c.limits;
        Self {
            paths: None,
            max_body_bytes: n(c.max_body_bytes),
            namespace_policy: c.namespace_policy,
            on_mismatch: c.on_mismatch,
            node_namespace_key: c.node_namespace_key,
            ack_mode: c.ack_mode,
            durable_timeout_ms: ms(c.durable_timeout),
            shim_cluster: c.shim_cluster,
            push_timeout_ms: ms(c.push_timeout),
            auth_token: None,
            auth_token_env: None,
            source: None,
            ack_header: c.ack_header,
            ack_response_header: c.ack_response_header,
            tick_ms: ms(c.tick),
            debounce: d.enabled,
            debounce_after_ms: ms(d.debounce_after),
            debounce_max_ms: ms(d.debounce_max),
            first_check_ms: ms(d.first_check),
            max_in_flight: n(d.max_in_flight),
            max_pending_keys: n(d.max_pending_keys),
            max_apps_per_key: n(d.max_apps_per_key),
            max_batch_keys: n(d.max_batch_keys),
            suppress_acked_ms: ms(d.suppress_acked_for),
            max_acked_entries: n(d.max_acked_entries),
            park_probe_ms: ms(d.park_probe),
            max_parked_keys: n(d.max_parked_keys),
            retry_base_ms: ms(d.retry.base),
            retry_max_ms: ms(d.retry.cap),
            retry_jitter: d.retry.jitter,
            max_application_len: n(l.max_application_len),
            max_interface_len: n(l.max_interface_len),
            max_interfaces: n(l.max_interfaces),
            max_push_bytes: n(c.max_push_bytes),
            max_push_apps_per_key: n(c.max_push_apps_per_key),
            shared_batch: c.shared_batch,
            shared_lease_ms: ms(c.shared_lease),
        }
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
    /// Sent as `authorization: Bearer <token>` with every batch (default none). Written in
    /// the configuration, so Envoy's `/config_dump` shows it: prefer `auth_token_env`.
    pub auth_token: Option<String>,
    /// Name of an environment variable of the Wasm VM holding the token (default none).
    /// Envoy passes it with `vm_config.environment_variables.host_env_keys` (Istio:
    /// WasmPlugin `vmConfig.env` with `valueFrom: HOST`), so `/config_dump` shows only the
    /// name. Unset or empty in the VM: batches go without a token (a shim with
    /// `--push-namespace-policy pod` then checks them by the sending pod).
    pub auth_token_env: Option<String>,
    /// Sender label of batches (default: the Envoy node id, else `envoy`).
    pub source: Option<String>,
    /// Request header that used to route an answered call to the ack listener (default
    /// `x-snp-ack`); now removed from answered calls, as the route matches filter state.
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
    /// Largest `PushMappings` request; bigger batches go in several (default and most:
    /// the shim's default `--max-message-bytes`, 4 MiB).
    pub max_push_bytes: usize,
    /// Most applications of one key in one `PushMappings` request (default 1024, at most
    /// the shim's default `--max-apps-per-key`). A key with more goes in pieces, one
    /// request after another, so the shim never refuses a mapping for its size and no
    /// application is lost.
    pub max_push_apps_per_key: usize,
    /// One batch per Envoy (default on): every worker's VM adds the mappings it answers to
    /// an outbox in Envoy's shared data, and the one worker holding a lease there sends
    /// them. Off: each worker sends its own batches (N workers, N batches per window).
    pub shared_batch: bool,
    /// How long the sending worker's lease lasts without renewal (default 1 s; four ticks
    /// if that is longer): how soon another worker sends in its place if it dies.
    pub shared_lease: Duration,
}

/// The shim's defaults that bound what the filter may send: a default shim rejects a
/// longer interface or application name, or more applications per interface, so the
/// filter cannot be configured above them.
pub const SHIM_MAX_INTERFACE_LEN: u64 = 1024;
/// See [`SHIM_MAX_INTERFACE_LEN`].
pub const SHIM_MAX_APPLICATION_LEN: u64 = 253;
/// The filter's own bound of applications pending per key (`max_apps_per_key`).
pub const SHIM_MAX_APPS_PER_KEY: u64 = 1024;
/// The shim's default `--max-apps-per-key`: it rejects a pushed mapping with more
/// applications, so `max_push_apps_per_key` cannot be configured above it.
pub const SHIM_DEFAULT_MAX_APPS_PER_KEY: u64 = 65_536;
/// Default of `max_push_apps_per_key`: a request stays small however many applications a
/// key gathers (a merged retry may carry more than `max_apps_per_key`).
pub const DEFAULT_PUSH_APPS_PER_KEY: usize = 1024;
/// The shim's default `--ack-timeout`, in ms: a `PushMappings` call waits at most this
/// long there, so the filter's `push_timeout_ms` should be above it.
pub const SHIM_ACK_TIMEOUT_MS: u64 = 4000;

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
            auth_token_env: None,
            source: None,
            ack_header: "x-snp-ack".to_owned(),
            ack_response_header: "x-snp-acked".to_owned(),
            tick: Duration::from_millis(50),
            debounce: DebounceConfig::default(),
            limits: Limits::default(),
            max_push_bytes: crate::engine::SHIM_MAX_MESSAGE_BYTES,
            max_push_apps_per_key: DEFAULT_PUSH_APPS_PER_KEY,
            shared_batch: true,
            shared_lease: Duration::from_secs(1),
        }
    }
}

/// Milliseconds in `[min, max]` (Envoy's timers and callouts take 32-bit milliseconds).
fn millis(key: &str, ms: u64, min: u64) -> Result<Duration, ConfigError> {
    if ms < min || ms > u64::from(u32::MAX) {
        return err(format!("{key} must be between {min} and {} ms", u32::MAX));
    }
    Ok(Duration::from_millis(ms))
}

/// A count no larger than what a default shim accepts.
fn capped(key: &str, n: u64, max: u64, flag: &str) -> Result<usize, ConfigError> {
    if n == 0 || n > max {
        return err(format!(
            "{key} must be between 1 and {max}: a shim with the default {flag} ({max}) rejects more"
        ));
    }
    count(key, n, 1)
}

fn count(key: &str, n: u64, min: u64) -> Result<usize, ConfigError> {
    if n < min {
        return err(format!("{key} must be at least {min}"));
    }
    usize::try_from(n).or_else(|_| err(format!("{key} is too large")))
}

/// An HTTP header name Envoy accepts from a filter: lower-case token characters.
fn header_name(key: &str, name: String) -> Result<String, ConfigError> {
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

/// A bearer token the filter can send: non-empty printable ASCII.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && is_header_value(s)
}

impl Config {
    /// Parses the plugin configuration. Empty (or whitespace-only) input means defaults.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
            return Ok(Self::default());
        };
        // A struct also deserializes from a JSON array (field by field): refuse that
        // before serde reads it.
        if *first == b'[' {
            return err("the configuration must be a JSON object, not an array");
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: Raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                ConfigError(e.into_inner().to_string())
            } else {
                ConfigError(format!("{path}: {}", e.into_inner()))
            }
        })?;
        de.end().map_err(|e| ConfigError(e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> Result<Self, ConfigError> {
        let paths = match raw.paths {
            None => default_paths(),
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
                    out.push((p.path, p.flavour.into()));
                }
                out
            }
        };
        // The body holds a 5-byte frame header plus the message; anything below 64 bytes
        // can't hold a real registration, anything above 16 MiB defeats the limit.
        let max_body_bytes = count("max_body_bytes", raw.max_body_bytes, 64)?;
        if max_body_bytes > 16 * 1024 * 1024 {
            return err("max_body_bytes must be at most 16 MiB");
        }
        let node_namespace_key = raw.node_namespace_key;
        if node_namespace_key.is_empty() {
            return err("node_namespace_key must not be empty");
        }
        let shim_cluster = raw.shim_cluster;
        if shim_cluster.is_empty() || !is_header_value(&shim_cluster) {
            return err("shim_cluster must be a non-empty cluster name");
        }
        if let Some(t) = &raw.auth_token {
            if !is_token(t) {
                return err("auth_token must be non-empty printable ASCII");
            }
        }
        if let Some(name) = &raw.auth_token_env {
            if raw.auth_token.is_some() {
                return err("auth_token and auth_token_env are exclusive: give one");
            }
            let mut chars = name.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return err(format!(
                    "auth_token_env {name:?} must be an environment variable name (letters, digits, '_'; not starting with a digit)"
                ));
            }
        }
        if let Some(s) = &raw.source {
            if s.is_empty() || s.len() > 253 {
                return err("source must be 1 to 253 bytes");
            }
        }
        let ack_header = header_name("ack_header", raw.ack_header)?;
        let ack_response_header = header_name("ack_response_header", raw.ack_response_header)?;

        let retry_base = millis("retry_base_ms", raw.retry_base_ms, 1)?;
        let retry_cap = millis("retry_max_ms", raw.retry_max_ms, 1)?;
        if retry_cap < retry_base {
            return err("retry_max_ms must not be below retry_base_ms");
        }
        let jitter = raw.retry_jitter;
        if !(0.0..=1.0).contains(&jitter) {
            return err("retry_jitter must be a number between 0 and 1");
        }
        // Grow the shift until `base << n` reaches the cap, so the cap is reachable.
        let mut max_failures = 0u32;
        while max_failures < 31 && retry_base.saturating_mul(1u32 << max_failures) < retry_cap {
            max_failures += 1;
        }
        let debounce_after = millis("debounce_after_ms", raw.debounce_after_ms, 0)?;
        let debounce_max = millis("debounce_max_ms", raw.debounce_max_ms, 0)?;
        if debounce_max < debounce_after {
            return err("debounce_max_ms must not be below debounce_after_ms");
        }
        let debounce = DebounceConfig {
            enabled: raw.debounce,
            debounce_after,
            debounce_max,
            first_check: millis("first_check_ms", raw.first_check_ms, 0)?,
            max_in_flight: count("max_in_flight", raw.max_in_flight, 1)?,
            max_pending_keys: count("max_pending_keys", raw.max_pending_keys, 1)?,
            max_apps_per_key: capped(
                "max_apps_per_key",
                raw.max_apps_per_key,
                SHIM_MAX_APPS_PER_KEY,
                "--max-apps-per-key",
            )?,
            max_batch_keys: count("max_batch_keys", raw.max_batch_keys, 1)?,
            suppress_acked_for: millis("suppress_acked_ms", raw.suppress_acked_ms, 0)?,
            max_acked_entries: count("max_acked_entries", raw.max_acked_entries, 1)?,
            retry: Backoff {
                base: retry_base,
                cap: retry_cap,
                max_failures,
                jitter,
            },
            park_probe: millis("park_probe_ms", raw.park_probe_ms, 1000)?,
            max_parked_keys: count("max_parked_keys", raw.max_parked_keys, 1)?,
            seed: DebounceConfig::default().seed,
        };
        let limits = Limits {
            max_application_len: capped(
                "max_application_len",
                raw.max_application_len,
                SHIM_MAX_APPLICATION_LEN,
                "application name limit",
            )?,
            max_interface_len: capped(
                "max_interface_len",
                raw.max_interface_len,
                SHIM_MAX_INTERFACE_LEN,
                "--max-interface-len",
            )?,
            max_interfaces: count("max_interfaces", raw.max_interfaces, 1)?,
        };
        let push_timeout = millis("push_timeout_ms", raw.push_timeout_ms, 1)?;
        let durable_timeout = millis("durable_timeout_ms", raw.durable_timeout_ms, 1)?;
        if durable_timeout < push_timeout {
            return err(
                "durable_timeout_ms must be at least push_timeout_ms: a held reply must outlast the batch that carries it",
            );
        }
        let max_push_bytes = count("max_push_bytes", raw.max_push_bytes, 16 * 1024)?;
        if max_push_bytes > crate::engine::SHIM_MAX_MESSAGE_BYTES {
            return err(
                "max_push_bytes must be at most 4194304: a shim with the default --max-message-bytes rejects larger requests",
            );
        }
        let max_push_apps_per_key = capped(
            "max_push_apps_per_key",
            raw.max_push_apps_per_key,
            SHIM_DEFAULT_MAX_APPS_PER_KEY,
            "--max-apps-per-key",
        )?;
        let tick = millis("tick_ms", raw.tick_ms, 1)?;
        // The sending worker renews its lease on its tick: it lasts four ticks at least.
        let shared_lease = millis("shared_lease_ms", raw.shared_lease_ms, 1)?.max(tick * 4);
        Ok(Self {
            paths,
            max_body_bytes,
            namespace_policy: raw.namespace_policy,
            on_mismatch: raw.on_mismatch,
            node_namespace_key,
            ack_mode: raw.ack_mode,
            durable_timeout,
            shim_cluster,
            push_timeout,
            auth_token: raw.auth_token,
            auth_token_env: raw.auth_token_env,
            source: raw.source,
            ack_header,
            ack_response_header,
            tick,
            debounce,
            limits,
            max_push_bytes,
            max_push_apps_per_key,
            shared_batch: raw.shared_batch,
            shared_lease,
        })
    }

    /// The flavour served at `path`, if the filter intercepts it. The query string and
    /// fragment are ignored, as Envoy's and tonic's routing ignore them.
    pub fn flavour_for(&self, path: &[u8]) -> Option<Flavour> {
        self.classify(path).ok().flatten()
    }

    /// Like [`Config::flavour_for`], but a spelling of an intercepted path that some proxy
    /// could route to the same method (`snp_proto::path`) is refused instead of passed on.
    pub fn classify(&self, path: &[u8]) -> Result<Option<Flavour>, Rejection> {
        let known = self.paths.iter().map(|(p, _)| p.as_str());
        let flavour_of = |k: &str| self.paths.iter().find(|(p, _)| p == k).map(|(_, f)| *f);
        match snp_proto::path::classify(path, known) {
            PathMatch::Exact(k) => Ok(flavour_of(k)),
            PathMatch::Variant(k) => Err(Rejection::new(
                Code::InvalidArgument,
                Reason::NonCanonicalPath,
                snp_proto::path::variant_message(path, k),
            )),
            PathMatch::Other => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_batch_per_envoy_is_the_default_and_can_be_turned_off() {
        let c = Config::parse(b"{}").unwrap();
        assert!(c.shared_batch);
        assert_eq!(c.shared_lease, Duration::from_secs(1));
        let off = Config::parse(br#"{"shared_batch": false}"#).unwrap();
        assert!(!off.shared_batch);
        // The lease outlasts four ticks, whatever is asked.
        let short = Config::parse(br#"{"tick_ms": 100, "shared_lease_ms": 50}"#).unwrap();
        assert_eq!(short.shared_lease, Duration::from_millis(400));
        assert!(Config::parse(br#"{"shared_batch": "yes"}"#).is_err());
        assert!(Config::parse(br#"{"shared_lease_ms": 0}"#).is_err());
    }

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
            "node_namespace_key": "NS", "ack_mode": "durable", "durable_timeout_ms": 900,
            "shim_cluster": "shim", "push_timeout_ms": 700, "auth_token": "s3cret",
            "source": "node-1", "ack_header": "x-a", "ack_response_header": "x-b",
            "tick_ms": 20, "debounce": false, "debounce_after_ms": 10, "debounce_max_ms": 20,
            "first_check_ms": 5, "max_in_flight": 2, "max_pending_keys": 10,
            "max_apps_per_key": 3, "max_batch_keys": 4, "suppress_acked_ms": 0,
            "retry_base_ms": 100, "retry_max_ms": 1000, "retry_jitter": 0,
            "max_application_len": 50, "max_interface_len": 60, "max_interfaces": 7,
            "max_push_bytes": 65536, "max_acked_entries": 9, "park_probe_ms": 60000,
            "max_parked_keys": 11, "max_push_apps_per_key": 12
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
        assert_eq!(c.durable_timeout, Duration::from_millis(900));
        assert_eq!(c.shim_cluster, "shim");
        assert_eq!(c.push_timeout, Duration::from_millis(700));
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
        assert_eq!(c.max_push_bytes, 65536);
        assert_eq!(c.debounce.max_acked_entries, 9);
        assert_eq!(c.debounce.park_probe, Duration::from_secs(60));
        assert_eq!(c.debounce.max_parked_keys, 11);
        assert_eq!(c.max_push_apps_per_key, 12);
    }

    #[test]
    fn nothing_a_default_shim_refuses_can_be_configured() {
        for (json, needle) in [
            (
                r#"{"max_interface_len": 1025}"#,
                "max_interface_len must be between 1 and 1024",
            ),
            (
                r#"{"max_apps_per_key": 1025}"#,
                "max_apps_per_key must be between 1 and 1024",
            ),
            (
                r#"{"max_application_len": 254}"#,
                "max_application_len must be between 1 and 253",
            ),
            (r#"{"max_interface_len": 0}"#, "max_interface_len"),
            (
                r#"{"max_push_bytes": 4194305}"#,
                "max_push_bytes must be at most 4194304",
            ),
            (r#"{"max_push_bytes": 100}"#, "max_push_bytes"),
            (
                r#"{"max_push_apps_per_key": 65537}"#,
                "max_push_apps_per_key must be between 1 and 65536",
            ),
            (r#"{"max_push_apps_per_key": 0}"#, "max_push_apps_per_key"),
            (
                r#"{"durable_timeout_ms": 4000, "push_timeout_ms": 5000}"#,
                "durable_timeout_ms must be at least push_timeout_ms",
            ),
        ] {
            let e = Config::parse(json.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
        let edge = Config::parse(
            br#"{"max_interface_len": 1024, "max_apps_per_key": 1024, "max_application_len": 253}"#,
        )
        .unwrap();
        assert_eq!(edge.limits.max_interface_len, 1024);
        // The defaults: a batch fits the shim, and the shim answers before the filter
        // gives up.
        let c = Config::default();
        assert_eq!(c.max_push_bytes, 4 * 1024 * 1024);
        assert_eq!(c.max_push_apps_per_key, 1024);
        assert!(c.max_push_apps_per_key as u64 <= SHIM_DEFAULT_MAX_APPS_PER_KEY);
        assert!(c.push_timeout > Duration::from_millis(SHIM_ACK_TIMEOUT_MS));
        assert!(c.durable_timeout >= c.push_timeout);
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
            (
                r#"{"auth_token": "a", "auth_token_env": "T"}"#,
                "auth_token and auth_token_env are exclusive",
            ),
            (r#"{"auth_token_env": ""}"#, "environment variable name"),
            (r#"{"auth_token_env": "1X"}"#, "environment variable name"),
            (r#"{"auth_token_env": "A-B"}"#, "environment variable name"),
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
    fn the_token_can_come_from_an_environment_variable() {
        let c = Config::parse(br#"{"auth_token_env": "SNP_SHIM_TOKEN"}"#).unwrap();
        assert_eq!(c.auth_token_env.as_deref(), Some("SNP_SHIM_TOKEN"));
        assert_eq!(c.auth_token, None);
        assert!(Config::parse(br#"{"auth_token_env": "_x9"}"#).is_ok());
        let e = Config::parse(br#"{"auth_token_env": null}"#).unwrap_err();
        assert!(
            e.to_string().contains("auth_token_env: invalid type: null"),
            "{e}"
        );
    }

    #[test]
    fn type_errors_carry_the_path_of_the_key() {
        for (json, needle) in [
            (r#"{"tick_ms": null}"#, "tick_ms: invalid type: null"),
            (r#"{"auth_token": null}"#, "auth_token: invalid type: null"),
            (r#"{"tick_ms": -1}"#, "tick_ms: invalid value"),
            (
                r#"{"tick_ms": 1.5}"#,
                "tick_ms: invalid type: floating point",
            ),
            (
                r#"{"paths": [{"path": "/a", "flavour": "c"}]}"#,
                "paths[0].flavour",
            ),
            (r#"{"paths": [3]}"#, "paths[0]: invalid type"),
            (r#"{} x"#, "trailing characters"),
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
