//! Optional authentication of writes: a bearer token, a verified client certificate, or
//! either.
//!
//! * `--auth-token-file`: callers send `authorization: Bearer <token>`; the token is read
//!   at startup (surrounding whitespace trimmed), compared in constant time, and re-read
//!   when the file's content changes ([`Auth::watch_token_file`], [`crate::reload`]): a
//!   Secret mounted as a volume is rotated in place by the kubelet, and the old token
//!   stops working at once.
//! * `--tls-client-ca` (with `--tls-cert`/`--tls-key`): the TLS handshake verifies client
//!   certificates against the CA. Certificates are optional at the handshake so that calls
//!   outside `--auth-scope` (lookups, and registrations with `--auth-scope push`) still work
//!   without one; calls in scope need a verified certificate (or the token).
//!
//! With both configured, either credential is enough. Lookups and watches
//! (`GetMappings`, `WatchMappings`) are never authenticated: they expose what any workload
//! of the mesh can read from the API server anyway.
//!
//! Checks happen in the handlers, not in a tonic interceptor, because the scope depends on
//! the method and an interceptor does not see the path.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::config::AuthScope;
use crate::metrics::{Credential, Metrics};

/// Which call is being authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `PushMappings`.
    Push,
    /// The registration API (either flavour).
    Register,
}

/// How a call was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    /// No credential is needed for the call.
    NotRequired,
    /// A client certificate verified by the TLS layer.
    Certificate,
    /// The bearer token.
    Token,
}

/// The authentication policy.
#[derive(Clone, Default)]
pub struct Auth {
    /// Shared by every clone, so a reload reaches every handler.
    token: Option<Arc<RwLock<Vec<u8>>>>,
    mtls: bool,
    scope_all: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("mtls", &self.mtls)
            .field("scope_all", &self.scope_all)
            .finish()
    }
}

/// Why the policy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file could not be read.
    #[error("reading the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token file holds no token.
    #[error("the token file {0} is empty")]
    EmptyToken(String),
}

impl Auth {
    /// No authentication.
    pub fn none() -> Self {
        Self::default()
    }

    /// A policy from its parts. `token` is the expected bearer token; `mtls` means verified
    /// client certificates are accepted.
    pub fn new(token: Option<String>, mtls: bool, scope: AuthScope) -> Self {
        Self {
            token: token.map(|t| Arc::new(RwLock::new(t.into_bytes()))),
            mtls,
            scope_all: scope == AuthScope::All,
        }
    }

    /// Reads the token from `path`.
    pub fn read_token(path: &Path) -> Result<String, AuthError> {
        let bytes = std::fs::read(path).map_err(|source| AuthError::TokenFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_token(path, &bytes)
    }

    /// The token in the content of the file at `path`: surrounding whitespace trimmed,
    /// not empty.
    fn parse_token(path: &Path, bytes: &[u8]) -> Result<String, AuthError> {
        let text = std::str::from_utf8(bytes).map_err(|e| AuthError::TokenFile {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(AuthError::EmptyToken(path.display().to_string()));
        }
        Ok(token.to_owned())
    }

    /// Re-reads the token from `path` every `period` and replaces it when the content
    /// changed, until `shutdown` ([`crate::reload`]). A file that cannot be read or is
    /// empty keeps the current token (logged and counted): a half-written rotation must
    /// not open the door. `None` when no token is configured.
    pub fn watch_token_file(
        &self,
        path: PathBuf,
        period: Duration,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let slot = Arc::clone(self.token.as_ref()?);
        // The content as read at start; unreadable now means the first good read reloads.
        let initial = std::fs::read(&path).unwrap_or_default();
        let file = path.clone();
        Some(crate::reload::watch_files(
            Credential::Token,
            vec![path],
            vec![initial],
            period,
            metrics,
            shutdown,
            move |contents: &[Vec<u8>]| {
                let token =
                    Self::parse_token(&file, contents.first().map_or(&[][..], Vec::as_slice))?;
                match slot.write() {
                    Ok(mut cur) => *cur = token.into_bytes(),
                    Err(poisoned) => *poisoned.into_inner() = token.into_bytes(),
                }
                Ok::<(), AuthError>(())
            },
        ))
    }

    /// Whether any credential is required at all.
    pub fn enabled(&self) -> bool {
        self.token.is_some() || self.mtls
    }

    fn applies_to(&self, action: Action) -> bool {
        self.enabled() && (action == Action::Push || self.scope_all)
    }

    /// Checks a call's credentials: its metadata and whether the TLS layer verified a client
    /// certificate.
    pub fn check(
        &self,
        action: Action,
        metadata: &MetadataMap,
        has_verified_cert: bool,
    ) -> Result<Authenticated, Status> {
        if !self.applies_to(action) {
            return Ok(Authenticated::NotRequired);
        }
        if self.mtls && has_verified_cert {
            return Ok(Authenticated::Certificate);
        }
        if let Some(slot) = &self.token {
            let expected = slot.read().map(|t| t.clone()).unwrap_or_default();
            let presented = metadata
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            return match presented {
                Some(t) if !expected.is_empty() && constant_time_eq(t.as_bytes(), &expected) => {
                    Ok(Authenticated::Token)
                }
                Some(_) => Err(Status::unauthenticated("invalid bearer token")),
                None if self.mtls => Err(Status::unauthenticated(
                    "a bearer token or a client certificate is required",
                )),
                None => Err(Status::unauthenticated(
                    "missing bearer token (authorization: Bearer <token>)",
                )),
            };
        }
        Err(Status::unauthenticated("a client certificate is required"))
    }

    /// [`Auth::check`] on a tonic request.
    pub fn check_request<T>(
        &self,
        action: Action,
        req: &tonic::Request<T>,
    ) -> Result<Authenticated, Status> {
        let has_cert = self.mtls && req.peer_certs().is_some_and(|c| !c.is_empty());
        self.check(action, req.metadata(), has_cert)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(auth: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(a) = auth {
            m.insert("authorization", a.parse().unwrap());
        }
        m
    }

    #[test]
    fn token_scope_and_certificates() {
        let a = Auth::new(Some("s3cret".into()), false, AuthScope::Push);
        assert!(a
            .check(Action::Push, &md(Some("Bearer s3cret")), false)
            .is_ok());
        assert!(a.check(Action::Register, &md(None), false).is_ok());
        let e = a.check(Action::Push, &md(None), false).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = a
            .check(Action::Push, &md(Some("Bearer nope")), false)
            .unwrap_err();
        assert_eq!(e.message(), "invalid bearer token");
        assert!(a
            .check(Action::Push, &md(Some("Bearer s3cre")), true)
            .is_err());

        let all = Auth::new(Some("t".into()), false, AuthScope::All);
        assert!(all.check(Action::Register, &md(None), false).is_err());

        let mtls = Auth::new(None, true, AuthScope::All);
        assert!(mtls.check(Action::Register, &md(None), true).is_ok());
        assert!(mtls.check(Action::Register, &md(None), false).is_err());

        assert!(Auth::none().check(Action::Push, &md(None), false).is_ok());
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
