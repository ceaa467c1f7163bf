//! Who is calling, for callers with no sidecar: the shim tells a call's namespace (and
//! service account) by one of two sources, the `--namespace-policy`:
//!
//! * `pod`: the TCP peer address of the call, mapped to the pod that has it. [`PodIndex`]
//!   is the [`CallerResolver`] backed by a kube-rs reflector over the pods of the shim's own
//!   node (`spec.nodeName` field selector): a per-node shim only ever hears from pods of its
//!   node (the Service is `internalTrafficPolicy: Local`), so that is all it needs to know,
//!   and the watch stays small. Host-network pods share the node's address and are never
//!   matched: a call from the node's address has no pod, and the policy refuses it. The
//!   Nacos front end resolves its callers with the same index.
//! * `peer`: the SPIFFE ID (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) in the URI SAN of
//!   the client certificate the TLS layer verified against `--tls-client-ca`
//!   ([`spiffe_caller`]). A call with no certificate, or one that names no namespace, is
//!   refused.
//!
//! Either way the caller's namespace is compared with the one the call names, with the
//! filter's semantics and messages: `reject` answers PERMISSION_DENIED, `rewrite`
//! registers into the caller's namespace. See docs/security.md.
//!
//! `PushMappings` batches are checked by the sender's pod when it presents no credential
//! (`--push-namespace-policy pod`): a sidecar pushes for its own pod only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use snp_core::Registration;
use tonic::Status;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;

/// The identity of a caller, as far as the shim can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's namespace.
    pub namespace: String,
    /// The caller's service account, if its pod names one.
    pub service_account: Option<String>,
}

/// What a call shows of its caller: its TCP peer and, over mutual TLS, the client
/// certificate chain the handshake verified.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The TCP peer address.
    pub addr: Option<SocketAddr>,
    /// The verified client certificate chain, end-entity first.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Peer {
    /// The peer of a tonic request (tonic fills both from the connection).
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self {
            addr: request.remote_addr(),
            certs: request.peer_certs(),
        }
    }
}

/// The caller that a verified client certificate names by its SPIFFE ID: the one
/// `spiffe://` URI SAN of the end-entity certificate (an X.509-SVID has exactly one), in
/// Istio's layout. `Err` says why there is none.
pub fn spiffe_caller(certs: &[CertificateDer<'_>]) -> Result<Caller, String> {
    let Some(leaf) = certs.first() else {
        return Err("no client certificate was presented".into());
    };
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the client certificate cannot be parsed: {e:?}"))?;
    let mut ids = cert
        .valid_uri_names()
        .filter(|uri| uri.starts_with("spiffe://"));
    let Some(id) = ids.next() else {
        return Err("the client certificate has no spiffe:// URI SAN".into());
    };
    if ids.next().is_some() {
        return Err("the client certificate has more than one spiffe:// URI SAN".into());
    }
    let Some((namespace, service_account)) = snp_core::validate::spiffe_workload(id.as_bytes())
    else {
        return Err(format!(
            "the SPIFFE ID {id:?} names no valid namespace (/ns/<namespace>)"
        ));
    };
    Ok(Caller {
        namespace: namespace.to_owned(),
        service_account: service_account.map(str::to_owned),
    })
}

/// Tells who is behind a peer address.
pub trait CallerResolver: Send + Sync + 'static {
    /// The caller at `peer`, if known.
    fn caller(&self, peer: IpAddr) -> Option<Caller>;
}

/// A pod's caller identity, if it can be attributed by address: running (or pending with an
/// address), not on the host network.
fn pod_caller(pod: &Pod, peer: IpAddr) -> Option<Caller> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        // Finished pods keep status.podIP for a while, and the address may already be
        // another pod's.
        return None;
    }
    let mut ips = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref());
    let peer = canonical(peer);
    if !ips.any(|ip| ip.parse::<IpAddr>().is_ok_and(|ip| canonical(ip) == peer)) {
        return None;
    }
    Some(Caller {
        namespace: pod.metadata.namespace.clone()?,
        service_account: spec.service_account_name.clone(),
    })
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener reports those) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// [`CallerResolver`] over a reflector of the node's pods.
#[derive(Clone)]
pub struct PodIndex {
    pods: Store<Pod>,
}

impl PodIndex {
    /// A resolver reading `pods` (a reflector store the caller keeps running).
    pub fn new(pods: Store<Pod>) -> Self {
        Self { pods }
    }

    /// The field selector that limits the watch to the pods of `node`.
    pub fn field_selector(node: &str) -> String {
        format!("spec.nodeName={node}")
    }
}

impl CallerResolver for PodIndex {
    fn caller(&self, peer: IpAddr) -> Option<Caller> {
        // Two live pods never share an address; should the store briefly hold an old and a
        // new pod with one (a missed delete), refuse rather than guess.
        let mut found = self
            .pods
            .state()
            .iter()
            .filter_map(|p| pod_caller(p, peer))
            .collect::<Vec<_>>();
        found.dedup();
        match found.len() {
            1 => found.pop(),
            _ => None,
        }
    }
}

/// Whose namespace a registration may name (the filter's names and meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NamespacePolicy {
    /// The call's own namespace, unchecked.
    Trust,
    /// The namespace of the pod at the call's peer address.
    Pod,
    /// The namespace in the SPIFFE ID of the call's verified client certificate (mutual
    /// TLS with `--tls-client-ca`).
    Peer,
}

/// What a call naming another namespace than its caller's gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnMismatch {
    /// PERMISSION_DENIED.
    Reject,
    /// Registered in the caller's namespace instead.
    Rewrite,
}

/// Which namespaces a `PushMappings` batch may carry when its sender presents no
/// credential (no bearer token, no verified client certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushPolicy {
    /// Any: the credential (`--auth-token-file`), if one is configured, is the only check;
    /// a batch without one is refused as a whole.
    Trust,
    /// Only the namespace of the pod at the call's peer address (a sidecar sends for its own
    /// pod); mappings in another namespace get a REJECTED result each, the rest are stored.
    /// A sender with a valid credential (a gateway or node proxy) may carry any namespace.
    Pod,
}

/// Which namespaces one `PushMappings` batch may write into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushScope {
    /// Any namespace (a credential holder, or `--push-namespace-policy trust`).
    Any,
    /// Only this one: the sending pod's.
    Namespace(String),
    /// None: the peer address is no pod's (the message says which address).
    Unknown(String),
}

impl PushScope {
    /// Why a mapping in `namespace` may not be written, if it may not.
    pub fn denies(&self, namespace: &str) -> Option<String> {
        match self {
            Self::Any => None,
            Self::Namespace(ns) if ns == namespace => None,
            Self::Namespace(ns) => Some(format!(
                "namespace {namespace:?} is not the sending pod's namespace {ns:?}; only a sender with the shim's token may push for other namespaces"
            )),
            Self::Unknown(why) => Some(why.clone()),
        }
    }
}

/// The policy of the registration API, with its resolver.
#[derive(Clone)]
pub struct Identity {
    policy: NamespacePolicy,
    on_mismatch: OnMismatch,
    push: PushPolicy,
    resolver: Option<Arc<dyn CallerResolver>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("policy", &self.policy)
            .field("on_mismatch", &self.on_mismatch)
            .field("push", &self.push)
            .finish()
    }
}

impl Identity {
    /// `trust`: no check.
    pub fn trust() -> Self {
        Self {
            policy: NamespacePolicy::Trust,
            on_mismatch: OnMismatch::Reject,
            push: PushPolicy::Trust,
            resolver: None,
        }
    }

    /// `pod`, resolving peers with `resolver`.
    pub fn pod(on_mismatch: OnMismatch, resolver: Arc<dyn CallerResolver>) -> Self {
        Self {
            policy: NamespacePolicy::Pod,
            on_mismatch,
            push: PushPolicy::Trust,
            resolver: Some(resolver),
        }
    }

    /// `peer`: the SPIFFE ID of the verified client certificate.
    pub fn peer(on_mismatch: OnMismatch) -> Self {
        Self {
            policy: NamespacePolicy::Peer,
            on_mismatch,
            push: PushPolicy::Trust,
            resolver: None,
        }
    }

    /// The policy.
    pub fn policy(&self) -> NamespacePolicy {
        self.policy
    }

    /// The same policy for the registration API, with `PushMappings` batches from senders
    /// without a credential checked by their pod, resolved with `resolver`.
    pub fn with_pod_push(mut self, resolver: Arc<dyn CallerResolver>) -> Self {
        self.push = PushPolicy::Pod;
        self.resolver = Some(resolver);
        self
    }

    /// The `PushMappings` policy for senders without a credential.
    pub fn push_policy(&self) -> PushPolicy {
        self.push
    }

    /// The namespaces a `PushMappings` batch from `peer` may write into. `credentialed`: the
    /// sender presented a valid credential.
    pub fn push_scope(&self, peer: Option<SocketAddr>, credentialed: bool) -> PushScope {
        if credentialed || self.push == PushPolicy::Trust {
            return PushScope::Any;
        }
        let caller = self
            .resolver
            .as_ref()
            .zip(peer)
            .and_then(|(r, p)| r.caller(p.ip()));
        match caller {
            Some(c) => PushScope::Namespace(c.namespace),
            None => PushScope::Unknown(format!(
                "the sender presented no token and its namespace is unknown (no pod on this node has the address {})",
                peer.map_or_else(|| "?".to_owned(), |p| p.ip().to_string())
            )),
        }
    }

    /// The pod index behind `pod` (`None` under `trust`): the Nacos endpoint resolves its
    /// callers with the same one.
    pub fn resolver(&self) -> Option<Arc<dyn CallerResolver>> {
        self.resolver
            .clone()
            .filter(|_| self.policy == NamespacePolicy::Pod)
    }

    /// Where the policy takes the caller's namespace from, for messages (the filter's
    /// words for `peer`).
    fn source(&self) -> &'static str {
        match self.policy {
            NamespacePolicy::Trust => "the call",
            NamespacePolicy::Pod => "the peer pod",
            NamespacePolicy::Peer => "the peer certificate's SPIFFE ID",
        }
    }

    /// The caller of a call under the policy: `Ok(None)` under `trust`, PERMISSION_DENIED
    /// when the policy cannot tell who is calling.
    pub fn caller(&self, peer: &Peer) -> Result<Option<Caller>, Status> {
        match self.policy {
            NamespacePolicy::Trust => Ok(None),
            NamespacePolicy::Pod => {
                let found = self
                    .resolver
                    .as_ref()
                    .zip(peer.addr)
                    .and_then(|(r, addr)| r.caller(addr.ip()));
                found.map(Some).ok_or_else(|| {
                    Status::permission_denied(format!(
                        "the caller's namespace is unknown (no pod on this node has the address {})",
                        peer.addr
                            .map_or_else(|| "?".to_owned(), |p| p.ip().to_string())
                    ))
                })
            }
            NamespacePolicy::Peer => {
                let certs = peer.certs.as_deref().map_or(&[][..], Vec::as_slice);
                spiffe_caller(certs).map(Some).map_err(|why| {
                    tracing::debug!(peer = ?peer.addr, why = %why, "caller unknown under the peer policy");
                    Status::permission_denied(format!(
                        "the caller's namespace is unknown ({} does not name one)",
                        self.source()
                    ))
                })
            }
        }
    }

    /// Applies the policy to `namespace`, named by a call from `caller`. `Ok(Some(from))`
    /// when it was rewritten from `from`.
    pub fn enforce_namespace(
        &self,
        caller: &Caller,
        namespace: &mut String,
    ) -> Result<Option<String>, Status> {
        if *namespace == caller.namespace {
            return Ok(None);
        }
        match self.on_mismatch {
            OnMismatch::Reject => Err(Status::permission_denied(format!(
                "namespace {namespace:?} is not the caller's namespace {:?} (from {})",
                caller.namespace,
                self.source()
            ))),
            OnMismatch::Rewrite => Ok(Some(std::mem::replace(namespace, caller.namespace.clone()))),
        }
    }

    /// Applies the policy to a validated registration from `peer`. `Ok(Some(from))` when
    /// the namespace was rewritten from `from`.
    pub fn enforce(&self, peer: &Peer, reg: &mut Registration) -> Result<Option<String>, Status> {
        match self.caller(peer)? {
            None => Ok(None),
            Some(caller) => self.enforce_namespace(&caller, &mut reg.namespace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};
    use kube::api::ObjectMeta;
    use kube::runtime::{reflector, watcher};

    fn pod(ns: &str, name: &str, ip: &str, host_network: bool, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                host_network: Some(host_network),
                service_account_name: Some(format!("{name}-sa")),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                ..Default::default()
            }),
        }
    }

    fn index(pods: Vec<Pod>) -> PodIndex {
        let (reader, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for p in pods {
            writer.apply_watcher_event(&watcher::Event::InitApply(p));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        PodIndex::new(reader)
    }

    #[test]
    fn a_peer_address_maps_to_its_pod_only() {
        let idx = index(vec![
            pod("shop", "cart", "127.0.0.2", false, "Running"),
            pod("kube-system", "dns", "127.0.0.3", false, "Running"),
            pod("infra", "gateway", "127.0.0.1", true, "Running"),
            pod("old", "job", "127.0.0.4", false, "Succeeded"),
        ]);
        assert_eq!(
            idx.caller("127.0.0.2".parse().unwrap()),
            Some(Caller {
                namespace: "shop".into(),
                service_account: Some("cart-sa".into())
            })
        );
        assert_eq!(
            idx.caller("::ffff:127.0.0.3".parse().unwrap())
                .map(|c| c.namespace),
            Some("kube-system".into())
        );
        // Host network (the node's address), finished pods, unknown addresses: nobody.
        for ip in ["127.0.0.1", "127.0.0.4", "127.0.0.9"] {
            assert_eq!(idx.caller(ip.parse().unwrap()), None, "{ip}");
        }
        assert_eq!(PodIndex::field_selector("n1"), "spec.nodeName=n1");
    }

    /// One running pod, `shop/cart`, at 127.0.0.2.
    fn shop_at_127_0_0_2() -> Arc<dyn CallerResolver> {
        Arc::new(index(vec![pod(
            "shop",
            "cart",
            "127.0.0.2",
            false,
            "Running",
        )]))
    }

    #[test]
    fn the_pod_policy_rejects_or_rewrites() {
        let idx = shop_at_127_0_0_2();
        let reg = |ns: &str| Registration {
            namespace: ns.into(),
            application: "app".into(),
            interfaces: vec!["a.B".into()],
        };
        let from = |ip: &str| Peer {
            addr: Some(SocketAddr::new(ip.parse().unwrap(), 4000)),
            certs: None,
        };
        let reject = Identity::pod(OnMismatch::Reject, Arc::clone(&idx));
        let e = reject
            .enforce(&from("127.0.0.2"), &mut reg("kube-system"))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("\"shop\""), "{}", e.message());
        assert_eq!(
            reject
                .enforce(&from("127.0.0.2"), &mut reg("shop"))
                .unwrap(),
            None
        );
        for peer in [from("127.0.0.9"), Peer::default()] {
            let e = reject.enforce(&peer, &mut reg("shop")).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
        }
        let rewrite = Identity::pod(OnMismatch::Rewrite, idx);
        let mut r = reg("kube-system");
        assert_eq!(
            rewrite.enforce(&from("127.0.0.2"), &mut r).unwrap(),
            Some("kube-system".into())
        );
        assert_eq!(r.namespace, "shop");
        assert_eq!(
            Identity::trust()
                .enforce(&Peer::default(), &mut reg("x"))
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_batch_without_a_credential_is_scoped_to_its_pod() {
        let idx = shop_at_127_0_0_2();
        let from = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 4000));
        let trust = Identity::trust();
        assert_eq!(trust.push_policy(), PushPolicy::Trust);
        assert_eq!(trust.push_scope(from("127.0.0.9"), false), PushScope::Any);

        let pod = Identity::trust().with_pod_push(idx);
        assert_eq!(pod.push_policy(), PushPolicy::Pod);
        // The registration API keeps its own policy.
        assert!(pod.resolver().is_none());
        let scope = pod.push_scope(from("127.0.0.2"), false);
        assert_eq!(scope, PushScope::Namespace("shop".into()));
        assert_eq!(scope.denies("shop"), None);
        let why = scope.denies("kube-system").expect("denied");
        assert!(
            why.contains("\"kube-system\"") && why.contains("\"shop\""),
            "{why}"
        );
        // A credential holder (gateway, node proxy) carries any namespace.
        assert_eq!(pod.push_scope(from("127.0.0.9"), true), PushScope::Any);
        for peer in [from("127.0.0.9"), None] {
            let scope = pod.push_scope(peer, false);
            assert!(matches!(scope, PushScope::Unknown(_)), "{scope:?}");
            assert!(scope.denies("shop").is_some());
        }
    }

    #[test]
    fn two_live_pods_with_one_address_are_nobody() {
        let idx = index(vec![
            pod("a", "x", "10.0.0.5", false, "Running"),
            pod("b", "y", "10.0.0.5", false, "Running"),
        ]);
        assert_eq!(idx.caller("10.0.0.5".parse().unwrap()), None);
    }

    /// A self-signed certificate with these URI SANs (the TLS layer verifies chains; this
    /// is only about reading the SPIFFE ID).
    fn cert_with_uris(uris: &[&str]) -> CertificateDer<'static> {
        let mut p = rcgen::CertificateParams::new(vec!["client.example".to_owned()]).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_spiffe_id_of_a_client_certificate_names_the_caller() {
        let c = cert_with_uris(&["spiffe://cluster.local/ns/shop/sa/cart"]);
        assert_eq!(
            spiffe_caller(&[c]),
            Ok(Caller {
                namespace: "shop".into(),
                service_account: Some("cart".into())
            })
        );
        // Other URIs are ignored; two SPIFFE IDs, none, a bad namespace: nobody.
        let c = cert_with_uris(&["https://x.example/", "spiffe://td/ns/pay/sa/p"]);
        assert_eq!(spiffe_caller(&[c]).map(|c| c.namespace), Ok("pay".into()));
        for (uris, why) in [
            (
                &["spiffe://td/ns/a/sa/x", "spiffe://td/ns/b/sa/y"][..],
                "more than one",
            ),
            (&[][..], "no spiffe:// URI SAN"),
            (
                &["spiffe://td/ns/Not_A_Namespace/sa/x"][..],
                "names no valid namespace",
            ),
        ] {
            let e = spiffe_caller(&[cert_with_uris(uris)]).unwrap_err();
            assert!(e.contains(why), "{uris:?}: {e}");
        }
        assert!(spiffe_caller(&[])
            .unwrap_err()
            .contains("no client certificate"));
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(spiffe_caller(&[junk])
            .unwrap_err()
            .contains("cannot be parsed"));
    }

    #[test]
    fn the_peer_policy_rejects_or_rewrites() {
        let reg = |ns: &str| Registration {
            namespace: ns.into(),
            application: "app".into(),
            interfaces: vec!["a.B".into()],
        };
        let with = |uris: &[&str]| Peer {
            addr: Some("10.0.0.2:4000".parse().unwrap()),
            certs: Some(Arc::new(vec![cert_with_uris(uris)])),
        };
        let shop = with(&["spiffe://cluster.local/ns/shop/sa/cart"]);
        let reject = Identity::peer(OnMismatch::Reject);
        assert_eq!(reject.enforce(&shop, &mut reg("shop")).unwrap(), None);
        let e = reject.enforce(&shop, &mut reg("kube-system")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "namespace \"kube-system\" is not the caller's namespace \"shop\" (from the peer certificate's SPIFFE ID)"
        );
        for nobody in [Peer::default(), with(&[])] {
            let e = reject.enforce(&nobody, &mut reg("shop")).unwrap_err();
            assert_eq!(
                e.message(),
                "the caller's namespace is unknown (the peer certificate's SPIFFE ID does not name one)"
            );
        }
        let rewrite = Identity::peer(OnMismatch::Rewrite);
        let mut r = reg("kube-system");
        assert_eq!(
            rewrite.enforce(&shop, &mut r).unwrap(),
            Some("kube-system".into())
        );
        assert_eq!(r.namespace, "shop");
        assert!(rewrite.enforce(&Peer::default(), &mut reg("shop")).is_err());
        assert!(
            rewrite.resolver().is_none(),
            "the Nacos endpoint gets no pod index"
        );
    }
}
