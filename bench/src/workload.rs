//! The simulated rollout: `pods` pods x `interfaces` interfaces per namespace, over
//! `namespaces` namespaces. Each pod starts at a random moment within `jitter` and then
//! registers each interface it exports with one unary call, one after the other (what the
//! grpc-java Dubbo client does at startup). Pod `p` of a namespace runs application
//! `bench-app-{p % apps}`: with `apps = 1`, the rollout of one deployment, whose replicas
//! all say the same thing.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use snp_core::{MappingKey, Mappings, Rng, SplitMix64};

/// The rollout's shape.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Pods per namespace.
    pub pods: usize,
    /// Interfaces each pod exports (the same set for every pod of a namespace).
    pub interfaces: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Distinct applications per namespace.
    pub apps: usize,
    /// Namespace name prefix (namespaces are `{prefix}-{n}`), unique per run so that a
    /// store that already holds an earlier run's mappings starts this one empty.
    pub prefix: String,
    /// Pods start uniformly within this window.
    pub jitter: Duration,
    /// Seed of the start times.
    pub seed: u64,
}

/// The rollout's shape as command-line flags, shared by the load generator and the naive
/// writer so that both simulate the same rollout from the same flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    /// Pods per namespace.
    #[arg(long, default_value_t = 200)]
    pub pods: usize,
    /// Interfaces each pod exports (one registration call each).
    #[arg(long, default_value_t = 10)]
    pub interfaces: usize,
    /// Namespaces.
    #[arg(long, default_value_t = 1)]
    pub namespaces: usize,
    /// Applications per namespace (pod p runs app p % apps).
    #[arg(long, default_value_t = 1)]
    pub apps: usize,
    /// Pods start uniformly within this window.
    #[arg(long, value_parser = crate::parse_duration, default_value = "3s")]
    pub jitter: Duration,
    /// Namespace prefix (default: the tool's name and a random suffix, so each run starts
    /// empty).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Seed of the pods' start times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl RolloutArgs {
    /// The rollout; `tool` names the default namespace prefix.
    pub fn rollout(&self, tool: &str) -> Rollout {
        Rollout {
            pods: self.pods,
            interfaces: self.interfaces,
            namespaces: self.namespaces,
            apps: self.apps,
            prefix: self.prefix.clone().unwrap_or_else(|| unique_prefix(tool)),
            jitter: self.jitter,
            seed: self.seed,
        }
    }
}

/// One pod of the rollout.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Global pod number (0 ..).
    pub index: usize,
    /// Namespace number.
    pub namespace: usize,
    /// When it starts, from the start of the rollout.
    pub start: Duration,
    /// Its calls: one encoded `ServiceMappingRequest` per interface.
    pub calls: Vec<Bytes>,
}

impl Rollout {
    /// Registrations (unary calls) in the rollout.
    pub fn registrations(&self) -> usize {
        self.pods * self.interfaces * self.namespaces
    }

    /// Distinct (namespace, interface) keys.
    pub fn keys(&self) -> usize {
        self.interfaces * self.namespaces
    }

    /// Distinct (namespace, interface, application) mappings.
    pub fn mappings(&self) -> usize {
        self.keys() * self.apps.min(self.pods).max(1)
    }

    /// Name of namespace `n`.
    pub fn namespace(&self, n: usize) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// Name of interface `i` (the same names in every namespace).
    pub fn interface(i: usize) -> String {
        format!("org.apache.dubbo.bench.DemoService{i}")
    }

    /// Application of pod `p` of a namespace.
    pub fn app(&self, p: usize) -> String {
        format!("bench-app-{}", p % self.apps.max(1))
    }

    /// The request of pod `p` of namespace `n` for interface `i`.
    pub fn request(&self, n: usize, p: usize, i: usize) -> snp_proto::dubbo::ServiceMappingRequest {
        snp_proto::dubbo::ServiceMappingRequest {
            namespace: self.namespace(n),
            application_name: self.app(p),
            interface_names: vec![Self::interface(i)],
        }
    }

    /// Every pod, in start order.
    pub fn pods(&self) -> Vec<Pod> {
        let mut rng = SplitMix64::new(self.seed);
        let jitter_us = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        let mut pods = Vec::with_capacity(self.pods * self.namespaces);
        for n in 0..self.namespaces {
            // Requests are the same for pods of one app: encode them once per app.
            let per_app: Vec<Vec<Bytes>> = (0..self.apps.clamp(1, self.pods.max(1)))
                .map(|a| {
                    (0..self.interfaces)
                        .map(|i| Bytes::from(self.request(n, a, i).encode_to_vec()))
                        .collect()
                })
                .collect();
            for p in 0..self.pods {
                let start = if jitter_us == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_micros(rng.next_u64() % jitter_us)
                };
                pods.push(Pod {
                    index: pods.len(),
                    namespace: n,
                    start,
                    calls: per_app[p % per_app.len()].clone(),
                });
            }
        }
        pods.sort_by_key(|p| p.start);
        pods
    }

    /// Every call of the rollout, encoded, in pod order (the closed-loop mode cycles
    /// through them).
    pub fn calls(&self) -> Vec<Bytes> {
        let mut v: Vec<(usize, Bytes)> = Vec::with_capacity(self.registrations());
        for pod in self.pods() {
            for c in pod.calls {
                v.push((pod.index, c));
            }
        }
        v.into_iter().map(|(_, c)| c).collect()
    }

    /// What the store must hold once the rollout has converged.
    pub fn expected(&self) -> Mappings {
        let mut m = Mappings::new();
        for n in 0..self.namespaces {
            for i in 0..self.interfaces {
                for p in 0..self.pods.min(self.apps.max(1)) {
                    m.insert(
                        MappingKey::new(self.namespace(n), Self::interface(i)),
                        &self.app(p),
                    );
                }
            }
        }
        m
    }
}

/// A run-unique namespace prefix: `b` + 6 hex digits of the clock (DNS-label safe).
pub fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut r = SplitMix64::new(nanos as u64 ^ u64::from(std::process::id()));
    format!("{tag}-{:06x}", r.next_u64() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> Rollout {
        Rollout {
            pods: 20,
            interfaces: 3,
            namespaces: 2,
            apps: 2,
            prefix: "t".into(),
            jitter: Duration::from_secs(3),
            seed: 7,
        }
    }

    #[test]
    fn shape_and_expected_mappings() {
        let r = rollout();
        assert_eq!(r.registrations(), 120);
        assert_eq!(r.keys(), 6);
        assert_eq!(r.mappings(), 12);
        let pods = r.pods();
        assert_eq!(pods.len(), 40);
        assert!(pods.windows(2).all(|w| w[0].start <= w[1].start));
        assert!(pods.iter().all(|p| p.start < Duration::from_secs(3)));
        assert!(pods.iter().all(|p| p.calls.len() == 3));
        assert_eq!(r.calls().len(), 120);
        let e = r.expected();
        assert_eq!(e.len(), 6);
        assert_eq!(e.entries(), 12);
        assert!(e.contains(
            &MappingKey::new("t-1", Rollout::interface(2)),
            "bench-app-1"
        ));
        // The bytes decode to what they say.
        let req =
            snp_proto::dubbo::ServiceMappingRequest::decode(pods[0].calls[0].clone()).unwrap();
        assert!(req.namespace.starts_with("t-"));
        assert_eq!(req.interface_names.len(), 1);
        let p = unique_prefix("bench");
        assert!(
            snp_core::validate::validate_namespace(&format!("{p}-100")).is_ok(),
            "{p}"
        );
    }
}
