//! A fault-injecting HTTP proxy in front of the real test API server.
//!
//! It listens on plain HTTP on a free loopback port and forwards every request, unchanged
//! (method, path, query, headers, body; responses streamed back, so watches work), to the
//! real API server through a kube `Client` that holds the server's credentials. Requests
//! that match a [`Rule`] get the rule's answer instead, as a Kubernetes `Status` object,
//! exactly as the API server would send it, and are not forwarded. Rules can be limited
//! to a number of hits (e.g. two 429s, then the real server).
//!
//! Point a store at [`FaultProxy::kubeconfig`] to see the faults.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body as AxumBody, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// Which requests a rule answers.
pub type Matcher = Box<dyn Fn(&Method, &str, &[u8]) -> bool + Send + Sync>;

/// One injected answer.
pub struct Rule {
    /// For the record of injected faults.
    pub name: String,
    matches: Matcher,
    status: u16,
    reason: String,
    message: String,
    details: Option<serde_json::Value>,
    /// Hits left (`None`: for ever).
    remaining: Option<usize>,
}

impl Rule {
    /// Answers requests `matches` accepts with `status`/`reason`/`message`.
    pub fn new(
        name: &str,
        matches: impl Fn(&Method, &str, &[u8]) -> bool + Send + Sync + 'static,
        status: u16,
        reason: &str,
        message: &str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            matches: Box::new(matches),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
            details: None,
            remaining: None,
        }
    }

    /// Only the first `n` matching requests.
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    /// With `details` in the Status.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Writes (POST, PUT, PATCH) into namespace `ns`.
    pub fn writes_in(ns: &str) -> impl Fn(&Method, &str, &[u8]) -> bool + Send + Sync + 'static {
        let segment = format!("/namespaces/{ns}/");
        move |m, path, _| {
            matches!(*m, Method::POST | Method::PUT | Method::PATCH) && path.contains(&segment)
        }
    }

    /// Writes whose body names interface `interface` (as `spec.interfaceName`).
    pub fn writes_of(
        interface: &str,
    ) -> impl Fn(&Method, &str, &[u8]) -> bool + Send + Sync + 'static {
        let needle = format!("\"interfaceName\":\"{interface}\"");
        move |m, _, body| {
            matches!(*m, Method::POST | Method::PUT | Method::PATCH)
                && std::str::from_utf8(body).is_ok_and(|b| b.contains(&needle))
        }
    }

    /// What the API server answers a create into a namespace that does not exist.
    pub fn namespace_not_found(ns: &str) -> Self {
        Rule::new(
            &format!("404 namespace {ns}"),
            Self::writes_in(ns),
            404,
            "NotFound",
            &format!("namespaces \"{ns}\" not found"),
        )
        .details(serde_json::json!({"name": ns, "kind": "namespaces"}))
    }

    /// What the API server answers a create into a namespace being deleted.
    pub fn namespace_terminating(ns: &str) -> Self {
        Rule::new(
            &format!("403 terminating {ns}"),
            Self::writes_in(ns),
            403,
            "Forbidden",
            &format!("servicenamemappings \"x\" is forbidden: unable to create new content in namespace {ns} because it is being terminated"),
        )
        .details(serde_json::json!({"kind": "servicenamemappings"}))
    }
}

#[derive(Clone)]
struct Shared {
    upstream: kube::Client,
    rules: Arc<Mutex<Vec<Rule>>>,
    injected: Arc<Mutex<Vec<(String, String, String)>>>,
    forwarded: Arc<AtomicU64>,
}

/// The running proxy (stopped when dropped).
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// A kubeconfig that points at the proxy (no credentials: the proxy adds them).
    pub kubeconfig: PathBuf,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy to the server `upstream` talks to; its kubeconfig is written in `dir`.
    pub async fn start(upstream: kube::Client, dir: &Path) -> Self {
        let shared = Shared {
            upstream,
            rules: Arc::default(),
            injected: Arc::default(),
            forwarded: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let url = format!("http://{addr}");
        std::fs::create_dir_all(dir).unwrap();
        let kubeconfig = dir.join("proxy.kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {url}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: proxy\ncurrent-context: proxy\nusers:\n- name: proxy\n  user: {{}}\n"
            ),
        )
        .unwrap();
        Self {
            url,
            kubeconfig,
            shared,
            task,
        }
    }

    /// Adds a rule (checked in the order added; the first that matches answers).
    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    /// Removes every rule: from now on everything is forwarded.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// `(rule, method, path)` of every injected answer so far.
    pub fn injected(&self) -> Vec<(String, String, String)> {
        self.shared.injected.lock().unwrap().clone()
    }

    /// Injected answers of rule `name`.
    pub fn hits(&self, name: &str) -> usize {
        self.injected().iter().filter(|(r, _, _)| r == name).count()
    }

    /// Requests forwarded to the real server.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }
}

async fn handle(State(shared): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    // An injected answer?
    let fault = {
        let mut rules = shared.rules.lock().unwrap();
        let hit = rules
            .iter_mut()
            .find(|r| r.remaining != Some(0) && (r.matches)(&parts.method, &path, &body));
        hit.map(|r| {
            if let Some(n) = &mut r.remaining {
                *n -= 1;
            }
            let mut status = serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": r.message,
                "reason": r.reason,
                "code": r.status,
            });
            if let Some(d) = &r.details {
                status["details"] = d.clone();
            }
            (r.name.clone(), r.status, status)
        })
    };
    if let Some((name, code, status)) = fault {
        shared
            .injected
            .lock()
            .unwrap()
            .push((name, parts.method.to_string(), path));
        let mut resp = (StatusCode::from_u16(code).unwrap(), status.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    // Forward, unchanged but for the connection-level headers and the credentials,
    // which the upstream client sets.
    let mut builder = http::Request::builder()
        .method(parts.method.clone())
        .uri(path.as_str());
    for (name, value) in &parts.headers {
        if name == header::HOST || name == header::AUTHORIZATION || name == header::CONTENT_LENGTH {
            continue;
        }
        builder = builder.header(name, value);
    }
    let upstream_req = builder
        .body(kube::client::Body::from(body.to_vec()))
        .unwrap();
    shared.forwarded.fetch_add(1, Ordering::Relaxed);
    match shared.upstream.send(upstream_req).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, AxumBody::new(body))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
