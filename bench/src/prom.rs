//! Parsing of the metrics the benchmarks read: Prometheus text (the shim's `/metrics`,
//! the API server's `/metrics`) and Envoy's admin `/stats` text.
//!
//! The API server part is the parsing of `shim/tests/support/apiserver.rs`
//! (`RequestCounts`), here so that the load generator and the tests can share it.

use std::collections::BTreeMap;
use std::fmt;

/// One sample line: `name{k="v",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket` ... suffixes as written).
    pub name: String,
    /// Labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value (`NaN`, `+Inf` parse as floats).
    pub value: f64,
}

/// Parses one sample line; `None` for comments, blank and malformed lines.
pub fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end;
        loop {
            // Skip separators.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = chars.next()?;
            if c == '}' {
                end = Some(start + 1);
                break;
            }
            let mut key_end = start;
            let mut found_eq = false;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    found_eq = true;
                    break;
                }
            }
            if !found_eq {
                return None;
            }
            let key = inner[start..key_end].trim().to_owned();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(o) => value.push(o),
                        None => return None,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    o => value.push(o),
                }
            }
            if !closed {
                return None;
            }
            labels.insert(key, value);
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Every sample of a Prometheus text exposition.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

/// Sum of the samples named `name` whose labels include every `(key, value)` of `want`.
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(parse_sample)
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts(pub BTreeMap<(String, String), u64>);

impl RequestCounts {
    /// Parses the API server's `/metrics` text for resource `servicenamemappings` of `group`.
    pub fn parse(text: &str, group: &str) -> Self {
        let mut counts = Self::default();
        for s in text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .filter_map(parse_sample)
        {
            if s.labels.get("group").map(String::as_str) != Some(group)
                || s.labels.get("resource").map(String::as_str) != Some("servicenamemappings")
            {
                continue;
            }
            let key = (
                s.labels.get("verb").cloned().unwrap_or_default(),
                s.labels.get("code").cloned().unwrap_or_default(),
            );
            *counts.0.entry(key).or_default() += s.value as u64;
        }
        counts
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

    /// Requests of `verb` (any code).
    pub fn verb(&self, verb: &str) -> u64 {
        self.0
            .iter()
            .filter(|((v, _), _)| v == verb)
            .map(|(_, n)| n)
            .sum()
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
        self.0
            .iter()
            .filter(|((_, c), _)| c == code)
            .map(|(_, n)| n)
            .sum()
    }

    /// Mutating requests (POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION), any code.
    pub fn writes(&self) -> u64 {
        WRITE_VERBS.iter().map(|v| self.verb(v)).sum()
    }

    /// Mutating requests that succeeded (2xx).
    pub fn writes_ok(&self) -> u64 {
        self.0
            .iter()
            .filter(|((v, c), _)| WRITE_VERBS.contains(&v.as_str()) && c.starts_with('2'))
            .map(|(_, n)| n)
            .sum()
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

/// Envoy admin `/stats` (text): `name: value` for counters and gauges; histograms skipped.
pub fn envoy_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            Some((name.to_owned(), value.trim().parse::<u64>().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIM: &str = r#"# HELP snp_batches Debounced batches
# TYPE snp_batches counter
snp_batches_total{result="ok"} 7
snp_batches_total{result="error"} 1
snp_store_writes_total{verb="create",result="ok"} 10
snp_store_writes_total{verb="update",result="ok"} 3
snp_pending_keys 0
snp_flush_duration_seconds_bucket{le="+Inf"} 8
odd_total{msg="a \"quoted\", value"} 2
"#;

    #[test]
    fn sums_samples_by_labels() {
        assert_eq!(sum(SHIM, "snp_batches_total", &[]), 8.0);
        assert_eq!(sum(SHIM, "snp_batches_total", &[("result", "ok")]), 7.0);
        assert_eq!(
            sum(SHIM, "snp_store_writes_total", &[("result", "ok")]),
            13.0
        );
        assert_eq!(sum(SHIM, "snp_pending_keys", &[]), 0.0);
        assert_eq!(sum(SHIM, "snp_missing", &[]), 0.0);
        assert_eq!(
            sum(SHIM, "odd_total", &[("msg", "a \"quoted\", value")]),
            2.0
        );
        let inf = parse_sample(r#"snp_flush_duration_seconds_bucket{le="+Inf"} 8"#).unwrap();
        assert_eq!(inf.labels["le"], "+Inf");
        assert_eq!(parse_sample("# comment"), None);
        assert_eq!(parse_sample(r#"bad{x="1} 2"#), None);
    }

    #[test]
    fn counts_api_server_requests_by_verb() {
        let text = r#"apiserver_request_total{code="201",component="apiserver",dry_run="",group="extensions.istio.io",resource="servicenamemappings",scope="resource",subresource="",verb="POST",version="v1alpha1"} 10
apiserver_request_total{code="409",component="apiserver",dry_run="",group="extensions.istio.io",resource="servicenamemappings",scope="resource",subresource="",verb="POST",version="v1alpha1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="extensions.istio.io",resource="servicenamemappings",scope="resource",subresource="",verb="GET",version="v1alpha1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="extensions.istio.io",resource="servicenamemappings",scope="cluster",subresource="",verb="LIST",version="v1alpha1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="dubbo.apache.org",resource="servicenamemappings",scope="resource",subresource="",verb="PUT",version="v1alpha1"} 99
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apiextensions.k8s.io",resource="customresourcedefinitions",scope="cluster",subresource="",verb="POST",version="v1"} 1
"#;
        let before = RequestCounts::parse(text, "extensions.istio.io");
        assert_eq!(before.writes(), 12);
        assert_eq!(before.writes_ok(), 10);
        assert_eq!(before.verb("GET"), 5);
        assert_eq!(before.get("POST", "409"), 2);
        assert_eq!(before.code("200"), 6);
        assert_eq!(before.total(), 18);
        let after = RequestCounts::parse(&text.replace("} 10\n", "} 14\n"), "extensions.istio.io");
        let delta = after.since(&before);
        assert_eq!(delta.writes(), 4);
        assert_eq!(delta.to_string(), "POST 201: 4");
        assert_eq!(delta.by_verb()["POST"], 4);
    }

    #[test]
    fn reads_envoy_stats() {
        let s = envoy_stats(
            "wasmcustom.snp.batches.sent: 4\nserver.concurrency: 2\ncluster.x.upstream_rq_time: P0(nan,1)\n",
        );
        assert_eq!(s["wasmcustom.snp.batches.sent"], 4);
        assert_eq!(s["server.concurrency"], 2);
        assert!(!s.contains_key("cluster.x.upstream_rq_time"));
    }
}
