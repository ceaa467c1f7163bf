//! TLS on the gRPC port, served by the shim itself with tokio-rustls so that the
//! certificate, its key and the client CA are reloaded when their files change, with no
//! restart (tonic's `ServerTlsConfig` is fixed once the server is built).
//!
//! [`ReloadableTls`] holds the current `rustls::ServerConfig`; every new connection is
//! accepted with the one current at that moment. Established connections keep the
//! certificate and the client identity they were set up with until they close.
//!
//! With a client CA, client certificates are verified against it but stay optional at the
//! handshake, so calls that need none (lookups, watches) work without one; the calls that
//! need one ([`crate::auth`], and the `peer` namespace policy) check for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::{Credential, Metrics};

/// Longest a TLS handshake may take; a client that stalls it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// Connections handed to the gRPC server and not yet taken.
const ACCEPTED_BUFFER: usize = 64;

/// Why TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not valid PEM, or holds no object of the kind it must.
    #[error("{path} holds no valid PEM {what}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What it must hold.
        what: &'static str,
        /// Why it does not.
        reason: String,
    },
    /// The client CA bundle cannot be used as trust anchors.
    #[error("the client CA {path} cannot be used: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate and key (e.g. the key is not the certificate's).
    #[error("the certificate {cert} and key {key} cannot be used together: {source}")]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        source: rustls::Error,
    },
}

/// The TLS files of the gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that client certificates are verified against (PEM), for mutual TLS.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files, in the order [`TlsFiles::config`] takes their contents.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.client_ca.clone());
        p
    }

    /// Reads the files.
    pub fn read(&self) -> Result<Vec<Vec<u8>>, TlsError> {
        crate::reload::read_all(&self.paths())
            .map_err(|(path, source)| TlsError::Read { path, source })
    }

    /// A server configuration from the contents of [`TlsFiles::paths`].
    pub fn config(&self, contents: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
        let (cert_pem, key_pem) = match contents {
            [cert, key, ..] => (cert, key),
            _ => {
                return Err(TlsError::Pem {
                    path: self.cert.clone(),
                    what: "certificate",
                    reason: "not read".into(),
                })
            }
        };
        let chain = certificates(&self.cert, cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            path: self.key.clone(),
            what: "private key",
            reason: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| self.identity_error(source))?;
        let builder = match (&self.client_ca, contents.get(2)) {
            (Some(path), Some(ca_pem)) => {
                let mut roots = RootCertStore::empty();
                for ca in certificates(path, ca_pem)? {
                    roots.add(ca).map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|source| self.identity_error(source))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    fn identity_error(&self, source: rustls::Error) -> TlsError {
        TlsError::Identity {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        }
    }
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        what: "certificate",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The server configuration in use, replaced when the files change.
#[derive(Clone)]
pub struct ReloadableTls {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    initial: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Loads the files; an error here stops the shim from starting.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let initial = files.read()?;
        let config = files.config(&initial)?;
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(config)),
            initial,
        })
    }

    /// Whether client certificates are verified (a client CA is configured).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration for the next connection.
    fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a complete configuration: writers only swap an Arc.
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads the files every `period` when their content changed, until `shutdown`. A
    /// change that does not load keeps the configuration in use (logged, counted).
    pub fn watch(
        &self,
        period: Duration,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let files = self.files.clone();
        let slot = Arc::clone(&self.current);
        crate::reload::watch_files(
            Credential::Tls,
            files.paths(),
            self.initial.clone(),
            period,
            metrics,
            shutdown,
            move |contents: &[Vec<u8>]| {
                let config = files.config(contents)?;
                match slot.write() {
                    Ok(mut cur) => *cur = config,
                    Err(poisoned) => *poisoned.into_inner() = config,
                }
                Ok::<(), TlsError>(())
            },
        )
    }

    /// Accepts connections on `listener` and completes their TLS handshakes (each with
    /// the configuration current when it was accepted), until `shutdown`. The stream feeds
    /// tonic's `serve_with_incoming`; tonic reads the peer address and the client
    /// certificates from the TLS stream.
    pub fn incoming(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(ACCEPTED_BUFFER);
        let tls = self.clone();
        tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                    break;
                };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = crate::shutdown::signalled(&mut shutdown) => break,
                    () = tx.closed() => break,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accepting a gRPC connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(tls.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => log_refused(peer, &e.to_string()),
                        Err(_) => log_refused(peer, "the handshake timed out"),
                    }
                });
            }
            tracing::debug!("TLS accept loop stopped");
        });
        ReceiverStream::new(rx)
    }
}

fn log_refused(peer: SocketAddr, why: &str) {
    tracing::debug!(%peer, error = %why, "TLS handshake failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn bad_files_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: Some(dir.path().join("ca.crt")),
        };
        let e = ReloadableTls::load(files.clone()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("reading {}", files.cert.display())),
            "{e}"
        );

        let (cert, key) = pem_pair("a");
        let (_, other_key) = pem_pair("b");
        let ok = vec![
            cert.clone().into_bytes(),
            key.into_bytes(),
            cert.clone().into_bytes(),
        ];
        assert!(files.config(&ok).is_ok());
        let mismatched = vec![
            cert.clone().into_bytes(),
            other_key.into_bytes(),
            cert.clone().into_bytes(),
        ];
        let e = files.config(&mismatched).unwrap_err().to_string();
        assert!(e.contains("cannot be used together"), "{e}");
        let garbage = vec![b"nope".to_vec(), b"nope".to_vec(), cert.into_bytes()];
        let e = files.config(&garbage).unwrap_err().to_string();
        assert!(e.contains("tls.crt holds no valid PEM certificate"), "{e}");
    }
}
