//! Prometheus text, read with `prometheus-parse`: the shim's `/metrics` and the API
//! server's `apiserver_request_total`.
//!
//! Every lookup fails when nothing matches, whether the metric is missing or only the
//! label set is: a renamed metric or label must fail the test that reads it, never read
//! as 0. (The shim creates the series that may legitimately stay at zero, such as
//! `snp_batches_total{result="error"}`, at start-up, so they are present.)
//!
//! `prometheus-parse` splits label sets on `,` and `=` and does not unescape values: label
//! values with commas, `=` or escaped quotes do not survive. Neither the shim's nor the
//! API server's label values used here contain them.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_parse::{Scrape, Value};

/// Why a metric could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// The text is not Prometheus text.
    #[error("not Prometheus text: {0}")]
    Parse(String),
    /// No sample has the name.
    #[error("metric {name} is absent (metrics present: {present})")]
    Absent {
        /// The name looked up.
        name: String,
        /// The names the text does hold.
        present: String,
    },
    /// The metric is there, but none of its samples has every wanted label.
    #[error("metric {name} has no sample labelled {want} (its label sets: {present})")]
    NoSuchLabels {
        /// The name looked up.
        name: String,
        /// The labels wanted, `k="v"` pairs.
        want: String,
        /// The label sets the metric has.
        present: String,
    },
    /// The sample is a histogram or summary, not a number.
    #[error("metric {0} is a histogram or summary, not a single value")]
    NotAValue(String),
}

/// One sample: name as written (with `_total`, `_sum` ...), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Name as written.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The value; `None` for histogram buckets and summary quantiles, which
    /// `prometheus-parse` groups into one sample.
    pub value: Option<f64>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses a Prometheus text exposition (OpenMetrics' `# EOF` included).
    pub fn parse(text: &str) -> Result<Self, MetricError> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = Scrape::parse(lines).map_err(|e| MetricError::Parse(e.to_string()))?;
        let samples = scrape
            .samples
            .into_iter()
            .map(|s| Sample {
                value: match s.value {
                    Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                    Value::Histogram(_) | Value::Summary(_) => None,
                },
                labels: s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                name: s.metric,
            })
            .collect();
        Ok(Self { samples })
    }

    /// Every sample.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The samples named `name` whose labels include every `(key, value)` of `want`;
    /// an error if there is none.
    pub fn matching(&self, name: &str, want: &[(&str, &str)]) -> Result<Vec<&Sample>, MetricError> {
        let named: Vec<&Sample> = self.samples.iter().filter(|s| s.name == name).collect();
        if named.is_empty() {
            let mut names: Vec<&str> = self.samples.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            return Err(MetricError::Absent {
                name: name.to_owned(),
                present: names.join(", "),
            });
        }
        let found: Vec<&Sample> = named
            .iter()
            .copied()
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        if found.is_empty() {
            let sets: Vec<String> = named.iter().map(|s| label_text(&s.labels)).collect();
            return Err(MetricError::NoSuchLabels {
                name: name.to_owned(),
                want: want
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(","),
                present: sets.join(" "),
            });
        }
        Ok(found)
    }

    /// Sum of the samples named `name` whose labels include every `(key, value)` of
    /// `want` (all of them for `&[]`); an error if none matches.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> Result<f64, MetricError> {
        self.matching(name, want)?
            .into_iter()
            .map(|s| {
                s.value
                    .ok_or_else(|| MetricError::NotAValue(name.to_owned()))
            })
            .sum()
    }
}

fn label_text(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", pairs.join(","))
}

/// Parses `text` and sums `name` with `want` (see [`Metrics::sum`]).
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> Result<f64, MetricError> {
    Metrics::parse(text)?.sum(name, want)
}

/// [`sum`] with the labels as `k="v"` strings (the form tests write them in); panics
/// with the reason if a label is malformed.
pub fn sum_kv(text: &str, name: &str, labels: &[&str]) -> Result<f64, MetricError> {
    let pairs: Vec<(&str, &str)> = labels
        .iter()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("label {kv:?} is not k=\"v\""));
            (k, v.trim_matches('"'))
        })
        .collect();
    sum(text, name, &pairs)
}

/// Mutating verbs as `apiserver_request_total` names them.
pub const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

/// `apiserver_request_total` of the `servicenamemappings` resource of one group, summed by
/// (verb, code) over the other labels (scope, version, ...), as the server counted them.
///
/// A verb or code that was never requested has no series (the server creates one on its
/// first request), so absent combinations count 0 here, unlike [`Metrics::sum`]; but a
/// text without `apiserver_request_total` at all is not the API server's `/metrics`, and
/// [`RequestCounts::parse`] refuses it rather than reading it as no requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts(pub BTreeMap<(String, String), u64>);

impl RequestCounts {
    /// Parses the API server's `/metrics` text for resource `servicenamemappings` of
    /// `group`; an error if the text has no `apiserver_request_total` at all.
    pub fn parse(text: &str, group: &str) -> Result<Self, MetricError> {
        let metrics = Metrics::parse(text)?;
        let mut counts = Self::default();
        for s in metrics.matching("apiserver_request_total", &[])? {
            if s.labels.get("group").map(String::as_str) != Some(group)
                || s.labels.get("resource").map(String::as_str) != Some("servicenamemappings")
            {
                continue;
            }
            let key = (
                s.labels.get("verb").cloned().unwrap_or_default(),
                s.labels.get("code").cloned().unwrap_or_default(),
            );
            let value = s
                .value
                .ok_or_else(|| MetricError::NotAValue("apiserver_request_total".into()))?;
            *counts.0.entry(key).or_default() += value as u64;
        }
        Ok(counts)
    }

    /// What was counted after `earlier` (per series; 0 where a counter went down).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(*earlier.0.get(k).unwrap_or(&0))))
                .filter(|(_, v)| *v > 0)
                .collect(),
        )
    }

    /// Requests whose (verb, code) pass `keep`.
    fn count(&self, keep: impl Fn(&str, &str) -> bool) -> u64 {
        self.0
            .iter()
            .filter(|((v, c), _)| keep(v, c))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of `verb` (any code).
    pub fn verb(&self, verb: &str) -> u64 {
        self.count(|v, _| v == verb)
    }

    /// Requests of `verb` answered with `code`.
    pub fn get(&self, verb: &str, code: &str) -> u64 {
        self.0
            .get(&(verb.to_owned(), code.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Requests answered with `code` (any verb).
    pub fn code(&self, code: &str) -> u64 {
        self.count(|_, c| c == code)
    }

    /// Mutating requests (POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION), any code.
    pub fn writes(&self) -> u64 {
        WRITE_VERBS.iter().map(|v| self.verb(v)).sum()
    }

    /// Mutating requests that succeeded (2xx).
    pub fn writes_ok(&self) -> u64 {
        self.count(|v, c| WRITE_VERBS.contains(&v) && c.starts_with('2'))
    }

    /// Every request, any verb and code.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Requests by verb (codes summed), in verb order.
    pub fn by_verb(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((verb, _), n) in &self.0 {
            *out.entry(verb.clone()).or_default() += n;
        }
        out
    }
}

impl fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|((verb, code), n)| format!("{verb} {code}: {n}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As prometheus-client writes it: counter families declared without `_total`.
    const SHIM: &str = r#"# HELP snp_batches Debounced batches
# TYPE snp_batches counter
snp_batches_total{result="ok"} 7
snp_batches_total{result="error"} 1
# TYPE snp_store_writes counter
snp_store_writes_total{verb="create",result="ok"} 10
snp_store_writes_total{verb="update",result="ok"} 3
# TYPE snp_pending_keys gauge
snp_pending_keys 0
# TYPE snp_flush_duration_seconds histogram
snp_flush_duration_seconds_sum 0.5
snp_flush_duration_seconds_count 8
snp_flush_duration_seconds_bucket{le="0.1"} 6
snp_flush_duration_seconds_bucket{le="+Inf"} 8
# EOF
"#;

    #[test]
    fn sums_samples_by_labels() {
        assert_eq!(sum(SHIM, "snp_batches_total", &[]), Ok(8.0));
        assert_eq!(sum(SHIM, "snp_batches_total", &[("result", "ok")]), Ok(7.0));
        assert_eq!(
            sum(SHIM, "snp_store_writes_total", &[("result", "ok")]),
            Ok(13.0)
        );
        assert_eq!(sum(SHIM, "snp_pending_keys", &[]), Ok(0.0));
        assert_eq!(
            sum_kv(SHIM, "snp_batches_total", &[r#"result="error""#]),
            Ok(1.0)
        );
        assert_eq!(sum(SHIM, "snp_flush_duration_seconds_count", &[]), Ok(8.0));
    }

    #[test]
    fn an_absent_metric_or_label_set_is_an_error_never_zero() {
        let err = sum(SHIM, "snp_missing", &[]).unwrap_err();
        assert!(matches!(err, MetricError::Absent { .. }), "{err}");
        assert!(err.to_string().contains("snp_batches_total"), "{err}");
        let err = sum(SHIM, "snp_batches_total", &[("result", "overloaded")]).unwrap_err();
        assert!(matches!(err, MetricError::NoSuchLabels { .. }), "{err}");
        assert!(err.to_string().contains(r#"{result="error"}"#), "{err}");
        // A label the metric does not have at all.
        assert!(sum(SHIM, "snp_pending_keys", &[("result", "ok")]).is_err());
        // Histogram buckets are grouped, not single values.
        assert_eq!(
            sum(SHIM, "snp_flush_duration_seconds", &[]),
            Err(MetricError::NotAValue("snp_flush_duration_seconds".into()))
        );
        assert!(sum("", "snp_batches_total", &[]).is_err());
    }

    #[test]
    fn counts_api_server_requests_by_verb() {
        let text = r#"# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="extensions.istio.io",resource="servicenamemappings",scope="resource",subresource="",verb="POST",version="v1alpha1"} 10
apiserver_request_total{code="409",component="apiserver",dry_run="",group="extensions.istio.io",resource="servicenamemappings",scope="resource",subresource="",verb="POST",version="v1alpha1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="extensions.istio.io",resource="servicenamemappings",scope="resource",subresource="",verb="GET",version="v1alpha1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="extensions.istio.io",resource="servicenamemappings",scope="cluster",subresource="",verb="LIST",version="v1alpha1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="dubbo.apache.org",resource="servicenamemappings",scope="resource",subresource="",verb="PUT",version="v1alpha1"} 99
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apiextensions.k8s.io",resource="customresourcedefinitions",scope="cluster",subresource="",verb="POST",version="v1"} 1
"#;
        let before = RequestCounts::parse(text, "extensions.istio.io").unwrap();
        assert_eq!(before.writes(), 12);
        assert_eq!(before.writes_ok(), 10);
        assert_eq!(before.verb("GET"), 5);
        assert_eq!(before.get("POST", "409"), 2);
        assert_eq!(before.code("200"), 6);
        assert_eq!(before.total(), 18);
        let after =
            RequestCounts::parse(&text.replace("} 10\n", "} 14\n"), "extensions.istio.io").unwrap();
        let delta = after.since(&before);
        assert_eq!(delta.writes(), 4);
        assert_eq!(delta.to_string(), "POST 201: 4");
        assert_eq!(delta.by_verb()["POST"], 4);
        // No request of the group yet: zero counts, but the text must be the API server's.
        assert_eq!(RequestCounts::parse(text, "other.io").unwrap().total(), 0);
        assert!(RequestCounts::parse("# TYPE x counter\nx 1\n", "other.io").is_err());
    }
}
