//! Mutual TLS at the shim, in-process on the embedded store: the `peer` namespace policy
//! (the caller's namespace is the one in the SPIFFE ID of its verified client certificate)
//! for both registration flavours and PushMappings, and certificates rotated while the shim
//! runs (a kubelet-style Secret volume: the files are symlinks into `..data`, which is
//! swapped atomically).
//!
//! Certificates are made here with rcgen: a CA per trust domain, server certificates for
//! `localhost`/127.0.0.1, client certificates with a `spiffe://` URI SAN.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use snp_proto::admin::service_name_mapping_service_client::ServiceNameMappingServiceClient as AdminClient;
use snp_proto::api::mapping_result::Status as ResultStatus;
use snp_proto::api::mapping_service_client::MappingServiceClient;
use snp_proto::api::PushMappingsRequest;
use snp_proto::dubbo::service_name_mapping_service_client::ServiceNameMappingServiceClient as DubboClient;
use snp_shim::app::ShimHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.distinguished_name.push(DnType::CommonName, "snp-test");
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Leaf {
        self.leaf(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose SPIFFE ID names `ns` and `sa`.
    fn workload(&self, ns: &str, sa: &str) -> Leaf {
        let id = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
        self.leaf(
            vec![SanType::URI(id.as_str().try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A client certificate with no SPIFFE ID (a DNS name only).
    fn anonymous(&self) -> Leaf {
        self.leaf(
            vec![SanType::DnsName("client.example".try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// TLS files laid out as the kubelet mounts a Secret: `<dir>/<name>` are symlinks to
/// `..data/<name>`, and `..data` is a symlink to a generation directory, swapped by an
/// atomic rename when the Secret changes.
struct Mount {
    dir: PathBuf,
    generation: u32,
}

const FILES: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

impl Mount {
    fn new(dir: &Path, server: &Leaf, client_ca: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut m = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        m.publish(server, client_ca);
        for f in FILES {
            std::os::unix::fs::symlink(Path::new("..data").join(f), dir.join(f)).unwrap();
        }
        m
    }

    /// Publishes new contents in one atomic step.
    fn publish(&mut self, server: &Leaf, client_ca: &str) {
        self.generation += 1;
        let name = format!("..gen{}", self.generation);
        let gen = self.dir.join(&name);
        std::fs::create_dir_all(&gen).unwrap();
        for (f, content) in FILES.iter().zip([&server.cert, &server.key, client_ca]) {
            std::fs::write(gen.join(f), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn flags(&self) -> Vec<String> {
        vec![
            format!("--tls-cert={}", self.dir.join("tls.crt").display()),
            format!("--tls-key={}", self.dir.join("tls.key").display()),
            format!("--tls-client-ca={}", self.dir.join("ca.crt").display()),
        ]
    }
}

/// A channel to the shim over TLS, trusting `roots`, with an optional client certificate.
async fn tls_channel(
    addr: SocketAddr,
    roots: &str,
    client: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert, &c.key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

/// The end-entity certificate the shim serves now (DER), read from a fresh handshake by a
/// client that trusts every CA in `roots`.
async fn served_certificate(addr: SocketAddr, roots: &[&str]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(c.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Starts a shim on `<tmp>/data` serving TLS from `mount`, under `--namespace-policy=peer`
/// plus `extra`.
async fn start_peer(tmp: &Path, mount: &Mount, extra: &[String]) -> (ShimHandle, PathBuf) {
    let mut flags = mount.flags();
    flags.push("--namespace-policy=peer".to_owned());
    flags.push("--debounce-first-check=10ms".to_owned());
    flags.extend_from_slice(extra);
    let data = tmp.join("data");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    (start(&data, &flags).await, data)
}

/// Waits until the store holds as many keys as `want`, then requires exactly `want`.
async fn assert_stored(data: &Path, want: &[(&str, &str, &[&str])]) {
    let n = want.len();
    assert!(
        eventually(Duration::from_secs(10), || on_disk(data).len() >= n).await,
        "{:?}",
        on_disk(data)
    );
    assert_eq!(on_disk(data), mappings(want));
}

fn push(mappings: Vec<snp_proto::api::Mapping>, want_results: bool) -> PushMappingsRequest {
    PushMappingsRequest {
        batch_id: "b".into(),
        source: "test".into(),
        mappings,
        want_results,
    }
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// One attempt of the table: what a client with some certificate asks, and what it gets.
struct Attempt {
    what: &'static str,
    client: Option<Leaf>,
    flavour: &'static str,
    namespace: &'static str,
    interface: &'static str,
    want: Code,
}

async fn register(ch: Channel, flavour: &str, ns: &str, iface: &str) -> Result<(), tonic::Status> {
    match flavour {
        "dubbo" => DubboClient::new(ch)
            .register_service_app_mapping(dubbo_req(ns, "cart", &[iface]))
            .await
            .map(drop),
        _ => AdminClient::new(ch)
            .register_service_app_mapping(admin_req(ns, "cart", &[iface]))
            .await
            .map(drop),
    }
}

/// Under `peer` with `reject`, every attempt with a certificate of another namespace, or
/// with no SPIFFE ID, or with none, is PERMISSION_DENIED and stores nothing; the same
/// certificate claiming its own namespace lands. PushMappings sent with a client
/// certificate is checked per mapping; sent with the bearer token (a gateway carrying many
/// namespaces), it is not.
#[tokio::test]
async fn the_peer_policy_takes_the_namespace_from_the_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("mesh-ca");
    let rogue = Ca::new("rogue-ca");
    let mount = Mount::new(&tmp.path().join("tls"), &ca.server(), &ca.pem());
    let token = tmp.path().join("token");
    std::fs::write(&token, "gateway-token\n").unwrap();
    let (shim, data) = start_peer(
        tmp.path(),
        &mount,
        &[
            "--on-mismatch=reject".to_owned(),
            format!("--auth-token-file={}", token.display()),
        ],
    )
    .await;

    let shop = ca.workload("shop", "cart");
    let table = [
        Attempt {
            what: "another namespace's certificate claims kube-system",
            client: Some(shop.clone()),
            flavour: "dubbo",
            namespace: "kube-system",
            interface: "org.forged.A",
            want: Code::PermissionDenied,
        },
        Attempt {
            what: "the same, flavour B",
            client: Some(shop.clone()),
            flavour: "admin",
            namespace: "kube-system",
            interface: "org.forged.B",
            want: Code::PermissionDenied,
        },
        Attempt {
            what: "a payments certificate claims shop",
            client: Some(ca.workload("payments", "pay")),
            flavour: "dubbo",
            namespace: "shop",
            interface: "org.forged.C",
            want: Code::PermissionDenied,
        },
        Attempt {
            what: "no client certificate",
            client: None,
            flavour: "dubbo",
            namespace: "shop",
            interface: "org.forged.D",
            want: Code::PermissionDenied,
        },
        Attempt {
            what: "a certificate with no SPIFFE ID",
            client: Some(ca.anonymous()),
            flavour: "admin",
            namespace: "shop",
            interface: "org.forged.E",
            want: Code::PermissionDenied,
        },
        Attempt {
            what: "the certificate claims its own namespace",
            client: Some(shop.clone()),
            flavour: "dubbo",
            namespace: "shop",
            interface: "org.shop.Cart",
            want: Code::Ok,
        },
        Attempt {
            what: "its own namespace, flavour B",
            client: Some(shop.clone()),
            flavour: "admin",
            namespace: "shop",
            interface: "org.shop.Order",
            want: Code::Ok,
        },
    ];
    let mut report = Vec::new();
    for a in &table {
        let ch = tls_channel(shim.grpc_addr, &ca.pem(), a.client.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{}: connect: {e:?}", a.what));
        let got = register(ch, a.flavour, a.namespace, a.interface).await;
        let (code, msg) = match &got {
            Ok(()) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_owned()),
        };
        report.push(format!("{:55} {:?} {msg}", a.what, code));
        assert_eq!(code, a.want, "{}: {msg}", a.what);
        if a.what.starts_with("another namespace") {
            assert_eq!(
                msg,
                "namespace \"kube-system\" is not the caller's namespace \"shop\" (from the peer certificate's SPIFFE ID)"
            );
        }
        if a.client.is_none() {
            assert_eq!(
                msg,
                "the caller's namespace is unknown (the peer certificate's SPIFFE ID does not name one)"
            );
        }
    }
    println!("{}", report.join("\n"));

    // A SPIFFE certificate from a CA the shim does not trust never gets a call through.
    let rogue_leaf = rogue.workload("shop", "cart");
    match tls_channel(shim.grpc_addr, &ca.pem(), Some(&rogue_leaf)).await {
        Err(_) => {}
        Ok(ch) => assert!(register(ch, "dubbo", "shop", "org.forged.Rogue")
            .await
            .is_err()),
    }

    // PushMappings with the shop certificate: per mapping.
    let ch = tls_channel(shim.grpc_addr, &ca.pem(), Some(&shop))
        .await
        .unwrap();
    let mut api = MappingServiceClient::new(ch);
    let r = api
        .push_mappings(push(
            vec![
                mapping("shop", "org.shop.Pushed", &["cart"]),
                mapping("kube-system", "org.forged.Pushed", &["cart"]),
            ],
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2);
    assert_ne!(
        r.results[0].status,
        ResultStatus::Rejected as i32,
        "{:?}",
        r.results[0]
    );
    assert_eq!(
        r.results[1].status,
        ResultStatus::Rejected as i32,
        "{:?}",
        r.results[1]
    );
    assert_eq!(r.results[1].reason, "namespace_mismatch");
    let e = api
        .push_mappings(push(
            vec![mapping("kube-system", "org.forged.Push2", &["cart"])],
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .starts_with("mappings[0]: namespace \"kube-system\""),
        "{e:?}"
    );
    // With no certificate and no token, PushMappings is not even authenticated.
    let anon = tls_channel(shim.grpc_addr, &ca.pem(), None).await.unwrap();
    let e = MappingServiceClient::new(anon.clone())
        .push_mappings(push(
            vec![mapping("shop", "org.forged.Anon", &["x"])],
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // The gateway's token carries any namespace.
    MappingServiceClient::new(anon)
        .push_mappings(bearer(
            push(vec![mapping("gateway-ns", "org.gw.Api", &["gw"])], false),
            "gateway-token",
        ))
        .await
        .unwrap();

    assert_stored(
        &data,
        &[
            ("shop", "org.shop.Cart", &["cart"]),
            ("shop", "org.shop.Order", &["cart"]),
            ("shop", "org.shop.Pushed", &["cart"]),
            ("gateway-ns", "org.gw.Api", &["gw"]),
        ],
    )
    .await;
    shim.stop().await.unwrap();
}

/// Under `peer` with `rewrite`, a call naming another namespace is registered in the
/// certificate's namespace, on both APIs.
#[tokio::test]
async fn the_peer_policy_rewrites_to_the_certificates_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("mesh-ca");
    let mount = Mount::new(&tmp.path().join("tls"), &ca.server(), &ca.pem());
    let (shim, data) = start_peer(tmp.path(), &mount, &["--on-mismatch=rewrite".to_owned()]).await;
    let shop = ca.workload("shop", "cart");
    let ch = tls_channel(shim.grpc_addr, &ca.pem(), Some(&shop))
        .await
        .unwrap();
    register(ch.clone(), "dubbo", "kube-system", "org.a.Dubbo")
        .await
        .unwrap();
    register(ch.clone(), "admin", "default", "org.a.Admin")
        .await
        .unwrap();
    MappingServiceClient::new(ch)
        .push_mappings(push(
            vec![mapping("kube-system", "org.a.Push", &["cart"])],
            false,
        ))
        .await
        .unwrap();
    // Rewriting does not let a call without a SPIFFE ID in.
    let anon = tls_channel(shim.grpc_addr, &ca.pem(), None).await.unwrap();
    let e = register(anon, "dubbo", "shop", "org.forged.Anon")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_stored(
        &data,
        &[
            ("shop", "org.a.Dubbo", &["cart"]),
            ("shop", "org.a.Admin", &["cart"]),
            ("shop", "org.a.Push", &["cart"]),
        ],
    )
    .await;
    shim.stop().await.unwrap();
}

/// The certificate, key and client CA are swapped while the shim runs (as the kubelet
/// updates a Secret volume). New connections get the new server certificate; a client
/// certificate from the CA that was removed is refused, one from the new CA lands. A
/// broken update keeps the certificate in use and is counted.
#[tokio::test]
async fn certificates_are_reloaded_when_their_files_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("ca-2025"), Ca::new("ca-2026"));
    let (old_server, new_server) = (old_ca.server(), new_ca.server());
    let mut mount = Mount::new(&tmp.path().join("tls"), &old_server, &old_ca.pem());
    let (shim, data) = start_peer(tmp.path(), &mount, &[]).await;
    let reloads = |result: &'static str| {
        let http = shim.http_addr;
        async move {
            metric(
                http,
                "snp_credential_reloads_total",
                &["credential=\"tls\"", &format!("result=\"{result}\"")],
            )
            .await
        }
    };
    assert_eq!((reloads("ok").await, reloads("error").await), (0.0, 0.0));
    let both = [old_ca.pem(), new_ca.pem()];
    let both: Vec<&str> = both.iter().map(String::as_str).collect();
    assert_eq!(
        served_certificate(shim.grpc_addr, &both).await,
        der(&old_server.cert)
    );
    let old_client = old_ca.workload("shop", "cart");
    let new_client = new_ca.workload("shop", "cart");
    let ch = tls_channel(shim.grpc_addr, &old_ca.pem(), Some(&old_client))
        .await
        .unwrap();
    register(ch.clone(), "dubbo", "shop", "org.before.Swap")
        .await
        .unwrap();

    mount.publish(&new_server, &new_ca.pem());
    let http = shim.http_addr;
    assert!(
        eventually_async(Duration::from_secs(10), || async move {
            metric(
                http,
                "snp_credential_reloads_total",
                &["credential=\"tls\"", "result=\"ok\""],
            )
            .await
                >= 1.0
        })
        .await,
        "the new files were never loaded"
    );
    assert_eq!(reloads("error").await, 0.0);
    assert_eq!(
        served_certificate(shim.grpc_addr, &both).await,
        der(&new_server.cert)
    );
    // A client that trusts only the old CA no longer completes a call.
    assert!(
        match tls_channel(shim.grpc_addr, &old_ca.pem(), Some(&old_client)).await {
            Err(_) => true,
            Ok(ch) => register(ch, "dubbo", "shop", "org.forged.OldTrust")
                .await
                .is_err(),
        }
    );
    // A client certificate from the removed CA is refused (at the handshake, or the call
    // fails), even by a client that trusts the new server certificate.
    let refused = match tls_channel(shim.grpc_addr, &new_ca.pem(), Some(&old_client)).await {
        Err(_) => true,
        Ok(ch) => register(ch, "dubbo", "shop", "org.forged.OldCa")
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a client certificate of the removed CA was accepted"
    );
    let ch_new = tls_channel(shim.grpc_addr, &new_ca.pem(), Some(&new_client))
        .await
        .unwrap();
    register(ch_new, "dubbo", "shop", "org.after.Swap")
        .await
        .unwrap();

    // A broken update (a key that is not the certificate's) keeps the current files.
    let mismatched = Leaf {
        cert: new_ca.server().cert,
        key: old_server.key.clone(),
    };
    mount.publish(&mismatched, &new_ca.pem());
    assert!(
        eventually_async(Duration::from_secs(10), || async move {
            metric(
                http,
                "snp_credential_reloads_total",
                &["credential=\"tls\"", "result=\"error\""],
            )
            .await
                >= 1.0
        })
        .await,
        "the broken update was not noticed"
    );
    assert_eq!(
        served_certificate(shim.grpc_addr, &both).await,
        der(&new_server.cert)
    );
    let ch_new = tls_channel(shim.grpc_addr, &new_ca.pem(), Some(&new_client))
        .await
        .unwrap();
    register(ch_new, "admin", "shop", "org.after.Broken")
        .await
        .unwrap();
    assert_eq!(reloads("ok").await, 1.0);

    assert_stored(
        &data,
        &[
            ("shop", "org.before.Swap", &["cart"]),
            ("shop", "org.after.Swap", &["cart"]),
            ("shop", "org.after.Broken", &["cart"]),
        ],
    )
    .await;
    drop(ch);
    shim.stop().await.unwrap();
}
