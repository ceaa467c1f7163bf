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
//! * `pod` (issue 13, not built yet): a write goes to the namespace of the pod that owns the
//!   TCP peer address (from a pod reflector); a tenant naming another namespace is refused.
//!   A read of the default tenant reads the pod's namespace; a read may name another
//!   namespace explicitly. It plugs in as one more implementation of this trait.

use std::net::SocketAddr;

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
}
