//! Which Kubernetes namespace a Nacos call reads or writes.
//!
//! Nacos mappings live in a tenant (a Nacos namespace id), our objects in a Kubernetes
//! namespace. A [`NamespacePolicy`] turns the caller (its TCP peer, never the self-reported
//! `clientIp`) and the tenant of a call into a namespace:
//!
//! * `trust` ([`Trust`], built now): the tenant, when it is a valid namespace name (an RFC
//!   1123 label); the tenants `""` and `"public"` (Nacos's default namespace) and any tenant
//!   that is not a valid name map to `--nacos-default-namespace`. Reads resolve the same way,
//!   so a consumer reads another namespace by naming it as its tenant. Any caller can write
//!   into any namespace: use it only where every client on the node is trusted.
//! * `pod` ([`PodPolicy`]): a write goes to the namespace of the pod that owns the TCP peer
//!   address (the shim's pod index, [`crate::identity::PodIndex`]); a tenant naming another
//!   namespace is refused, and so is a peer that is no pod's (host network, another node).
//!   A read of the default tenant reads the pod's namespace; a read may name another
//!   namespace explicitly (mappings are not secret; writing them is what is guarded).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::{Caller, CallerResolver};

use snp_core::validate::is_rfc1123_label;

/// Why a call may not use the namespace it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Resolves the Kubernetes namespace of a Nacos call.
pub trait NamespacePolicy: Send + Sync + 'static {
    /// The namespace a write from `peer` with `tenant` goes to.
    fn write_namespace(&self, peer: Option<SocketAddr>, tenant: &str) -> Result<String, Refused>;
    /// The namespace a read (query or listen) from `peer` with `tenant` reads.
    fn read_namespace(&self, peer: Option<SocketAddr>, tenant: &str) -> Result<String, Refused>;
    /// The policy's name, for logs.
    fn name(&self) -> &'static str;
}

/// Whether `tenant` is Nacos's default namespace.
pub fn is_default_tenant(tenant: &str) -> bool {
    tenant.is_empty() || tenant == "public"
}

/// `trust`: the tenant names the namespace; see the module documentation.
#[derive(Debug, Clone)]
pub struct Trust {
    default_namespace: String,
}

impl Trust {
    /// A policy mapping the default tenant and invalid names to `default_namespace`.
    pub fn new(default_namespace: impl Into<String>) -> Self {
        Self {
            default_namespace: default_namespace.into(),
        }
    }

    fn resolve(&self, tenant: &str) -> String {
        if !is_default_tenant(tenant) && is_rfc1123_label(tenant) {
            tenant.to_owned()
        } else {
            self.default_namespace.clone()
        }
    }
}

impl NamespacePolicy for Trust {
    fn write_namespace(&self, _peer: Option<SocketAddr>, tenant: &str) -> Result<String, Refused> {
        Ok(self.resolve(tenant))
    }

    fn read_namespace(&self, _peer: Option<SocketAddr>, tenant: &str) -> Result<String, Refused> {
        Ok(self.resolve(tenant))
    }

    fn name(&self) -> &'static str {
        "trust"
    }
}

/// `pod`: the caller pod's namespace; see the module documentation.
#[derive(Clone)]
pub struct PodPolicy {
    pods: Option<Arc<dyn CallerResolver>>,
}

impl PodPolicy {
    /// A policy resolving peers with `pods` (`None`: every call is refused).
    pub fn new(pods: Option<Arc<dyn CallerResolver>>) -> Self {
        Self { pods }
    }

    fn caller(&self, peer: Option<SocketAddr>) -> Result<Caller, Refused> {
        let found = self
            .pods
            .as_ref()
            .zip(peer)
            .and_then(|(pods, p)| pods.caller(p.ip()));
        found.ok_or_else(|| {
            Refused(format!(
                "the caller's namespace is unknown (no pod on this node has the address {})",
                peer.map_or_else(|| "?".to_owned(), |p| p.ip().to_string())
            ))
        })
    }
}

impl NamespacePolicy for PodPolicy {
    fn write_namespace(&self, peer: Option<SocketAddr>, tenant: &str) -> Result<String, Refused> {
        let caller = self.caller(peer)?;
        if is_default_tenant(tenant) || tenant == caller.namespace {
            Ok(caller.namespace)
        } else {
            Err(Refused(format!(
                "tenant {tenant:?} is not the caller's namespace {:?} (from the peer pod)",
                caller.namespace
            )))
        }
    }

    fn read_namespace(&self, peer: Option<SocketAddr>, tenant: &str) -> Result<String, Refused> {
        if is_default_tenant(tenant) {
            return self.caller(peer).map(|c| c.namespace);
        }
        if is_rfc1123_label(tenant) {
            Ok(tenant.to_owned())
        } else {
            Err(Refused(format!(
                "tenant {tenant:?} is not a namespace name"
            )))
        }
    }

    fn name(&self) -> &'static str {
        "pod"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_maps_tenants_to_namespaces() {
        let t = Trust::new("dubbo-apps");
        let peer = Some(SocketAddr::from(([10, 0, 0, 7], 40000)));
        for (tenant, ns) in [
            ("", "dubbo-apps"),
            ("public", "dubbo-apps"),
            ("shop", "shop"),
            ("team-a1", "team-a1"),
            ("Shop", "dubbo-apps"),
            ("a_b", "dubbo-apps"),
            ("-x", "dubbo-apps"),
            (&"x".repeat(64), "dubbo-apps"),
        ] {
            assert_eq!(t.write_namespace(peer, tenant).unwrap(), ns, "{tenant:?}");
            assert_eq!(t.read_namespace(None, tenant).unwrap(), ns, "{tenant:?}");
        }
    }

    /// A pod index with one pod: `shop` at 10.0.0.2.
    struct OnePod;

    impl CallerResolver for OnePod {
        fn caller(&self, peer: std::net::IpAddr) -> Option<Caller> {
            (peer.to_string() == "10.0.0.2").then(|| Caller {
                namespace: "shop".into(),
                service_account: Some("default".into()),
            })
        }
    }

    #[test]
    fn pod_policy_writes_into_the_callers_namespace_only() {
        let p = PodPolicy::new(Some(Arc::new(OnePod)));
        let pod: Option<SocketAddr> = Some("10.0.0.2:5000".parse().unwrap());
        let stranger: Option<SocketAddr> = Some("10.0.0.9:5000".parse().unwrap());
        for tenant in ["", "public", "shop"] {
            assert_eq!(
                p.write_namespace(pod, tenant).unwrap(),
                "shop",
                "{tenant:?}"
            );
        }
        let err = p.write_namespace(pod, "kube-system").unwrap_err();
        assert!(err.0.contains("not the caller's namespace"), "{err}");
        let err = p.write_namespace(stranger, "").unwrap_err();
        assert!(
            err.0
                .contains("no pod on this node has the address 10.0.0.9"),
            "{err}"
        );
        assert!(p.write_namespace(None, "shop").is_err());
        // Reads: the default tenant is the pod's namespace; another may be named.
        assert_eq!(p.read_namespace(pod, "").unwrap(), "shop");
        assert_eq!(p.read_namespace(stranger, "payments").unwrap(), "payments");
        assert!(p.read_namespace(stranger, "").is_err());
        // Without a pod index nothing is written.
        let none = PodPolicy::new(None);
        assert!(none.write_namespace(pod, "shop").is_err());
    }
}
