//! Namespace enforcement: a registration may not claim a namespace other than its caller's.

use snp_core::validate::is_rfc1123_label;
use snp_core::Registration;

use crate::config::{NamespacePolicy, OnMismatch};
use crate::request::{Code, Reason, Rejection};

/// What enforcement did to an accepted registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforced {
    /// The namespace is the request's own (policy `trust`, or it matched).
    Unchanged,
    /// The namespace was rewritten to the caller's; `from` is what the request said.
    Rewritten {
        /// The request's namespace.
        from: String,
    },
}

pub use snp_core::validate::spiffe_namespace;

/// A namespace from node metadata, if it is a valid one. Envoy returns a string property
/// as its raw bytes.
pub fn node_namespace(value: &[u8]) -> Option<String> {
    let s = core::str::from_utf8(value).ok()?.trim();
    is_rfc1123_label(s).then(|| s.to_owned())
}

/// Applies `policy` to a validated registration. `caller` is the caller's namespace as
/// the policy's source knows it (node metadata or peer certificate), if known.
pub fn enforce(
    policy: NamespacePolicy,
    on_mismatch: OnMismatch,
    caller: Option<&str>,
    reg: &mut Registration,
) -> Result<Enforced, Rejection> {
    let source = match policy {
        NamespacePolicy::Trust => return Ok(Enforced::Unchanged),
        NamespacePolicy::Node => "the proxy's node metadata",
        NamespacePolicy::Peer => "the peer certificate's SPIFFE ID",
    };
    let Some(caller) = caller else {
        return Err(Rejection::new(
            Code::PermissionDenied,
            Reason::CallerUnknown,
            format!("the caller's namespace is unknown ({source} does not name one)"),
        ));
    };
    if reg.namespace == caller {
        return Ok(Enforced::Unchanged);
    }
    match on_mismatch {
        OnMismatch::Reject => Err(Rejection::new(
            Code::PermissionDenied,
            Reason::NamespaceMismatch,
            format!(
                "namespace {:?} is not the caller's namespace {caller:?} (from {source})",
                reg.namespace
            ),
        )),
        OnMismatch::Rewrite => {
            let from = core::mem::replace(&mut reg.namespace, caller.to_owned());
            Ok(Enforced::Rewritten { from })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(ns: &str) -> Registration {
        Registration {
            namespace: ns.into(),
            application: "app".into(),
            interfaces: vec!["a.B".into()],
        }
    }

    #[test]
    fn node_metadata_values() {
        assert_eq!(node_namespace(b"shop"), Some("shop".into()));
        assert_eq!(node_namespace(b""), None);
        assert_eq!(node_namespace(b"NOPE"), None);
    }

    #[test]
    fn trust_takes_the_request_namespace() {
        let mut r = reg("mapping");
        assert_eq!(
            enforce(
                NamespacePolicy::Trust,
                OnMismatch::Reject,
                Some("shop"),
                &mut r
            ),
            Ok(Enforced::Unchanged)
        );
        assert_eq!(r.namespace, "mapping");
    }

    #[test]
    fn matches_pass_and_mismatches_are_rejected_or_rewritten() {
        for policy in [NamespacePolicy::Node, NamespacePolicy::Peer] {
            let mut r = reg("shop");
            assert_eq!(
                enforce(policy, OnMismatch::Reject, Some("shop"), &mut r),
                Ok(Enforced::Unchanged)
            );

            let mut r = reg("mapping");
            let e = enforce(policy, OnMismatch::Reject, Some("shop"), &mut r).unwrap_err();
            assert_eq!(
                (e.code, e.reason),
                (Code::PermissionDenied, Reason::NamespaceMismatch)
            );
            assert!(
                e.message.contains("mapping") && e.message.contains("shop"),
                "{}",
                e.message
            );
            assert_eq!(r.namespace, "mapping");

            let mut r = reg("mapping");
            assert_eq!(
                enforce(policy, OnMismatch::Rewrite, Some("shop"), &mut r),
                Ok(Enforced::Rewritten {
                    from: "mapping".into()
                })
            );
            assert_eq!(r.namespace, "shop");

            for mode in [OnMismatch::Reject, OnMismatch::Rewrite] {
                let e = enforce(policy, mode, None, &mut reg("shop")).unwrap_err();
                assert_eq!(
                    (e.code, e.reason),
                    (Code::PermissionDenied, Reason::CallerUnknown)
                );
            }
        }
    }
}
