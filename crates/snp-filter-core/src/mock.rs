//! A mock host for the lifecycle tests: it records what the filter does to each stream,
//! and it fails the test where Envoy's SDK would panic (reading request headers outside
//! `on_http_request_headers`, touching a stream while the root context is effective).

use core::cell::RefCell;
use core::time::Duration;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::host::{Buffer, GrpcCall, Host, LogLevel, Map, MetricKind, SharedSetError};
use crate::request::Code;

/// A local reply sent to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Grpc { status: u32, message: String },
    Http { status: u32, body: Vec<u8> },
}

/// What the host knows of one stream.
#[derive(Debug, Default)]
pub struct MockStream {
    pub request_headers: BTreeMap<String, Vec<u8>>,
    pub response_headers: BTreeMap<String, Vec<u8>>,
    pub response_trailers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub reply: Option<Reply>,
    /// Properties the filter set on this stream (filter state).
    pub properties: BTreeMap<String, Vec<u8>>,
    pub resumed: bool,
    /// The stream was reset or finished: the host no longer knows it.
    pub gone: bool,
}

/// A dispatched gRPC call.
#[derive(Debug, Clone)]
pub struct Call {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub metadata: Vec<(String, Vec<u8>)>,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

#[derive(Debug, Default)]
pub struct State {
    pub wall_ms: u64,
    pub config: Vec<u8>,
    /// The VM's environment variables.
    pub env: BTreeMap<String, String>,
    pub properties: BTreeMap<Vec<String>, Vec<u8>>,
    pub tick: Option<Duration>,
    pub logs: Vec<(LogLevel, String)>,
    /// Metric id = index: (kind, name, value).
    pub metrics: Vec<(MetricKind, String, i64)>,
    pub root_id: u32,
    pub effective: u32,
    /// Set while the filter runs `on_http_request_headers`.
    pub in_request_headers: bool,
    pub streams: BTreeMap<u32, MockStream>,
    pub calls: Vec<Call>,
    /// When set, dispatching fails with this message.
    pub dispatch_error: Option<String>,
    /// The response message of the call being completed.
    pub grpc_response: Vec<u8>,
    pub done: u32,
}

/// Envoy's shared data of one `vm_id`, as proxy-wasm-cpp-host keeps it: one store for
/// every worker's VM, outliving any of them; versions (`cas`) come from one counter, a set
/// with a stale non-zero `cas` fails, and a set of an absent key succeeds whatever `cas`.
#[derive(Debug)]
pub struct SharedStore {
    pub data: BTreeMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// Writes refused for a stale `cas`.
    pub mismatches: u64,
    /// Successful writes.
    pub writes: u64,
}

impl Default for SharedStore {
    fn default() -> Self {
        Self {
            data: BTreeMap::new(),
            next_cas: 1,
            mismatches: 0,
            writes: 0,
        }
    }
}

impl SharedStore {
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.data.get(key).cloned()
    }

    pub fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedSetError> {
        let next = self.next_cas;
        if let Some((_, current)) = self.data.get(key) {
            if cas != 0 && cas != *current {
                self.mismatches += 1;
                return Err(SharedSetError::CasMismatch);
            }
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.writes += 1;
        self.data.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct MockHost {
    pub state: RefCell<State>,
    /// The shared data this VM sees (shared with other mock VMs of one "Envoy").
    pub shared: Rc<RefCell<SharedStore>>,
}

impl MockHost {
    pub fn new(root_id: u32) -> Self {
        Self::with_shared(root_id, Rc::default())
    }

    /// A VM of an Envoy whose workers share `shared`.
    pub fn with_shared(root_id: u32, shared: Rc<RefCell<SharedStore>>) -> Self {
        let host = Self {
            shared,
            ..Self::default()
        };
        {
            let mut s = host.state.borrow_mut();
            s.root_id = root_id;
            s.effective = root_id;
            s.wall_ms = 1_700_000_000_000;
        }
        host
    }

    /// A metric's value by name.
    pub fn metric(&self, name: &str) -> i64 {
        let s = self.state.borrow();
        let found: Vec<i64> = s
            .metrics
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(_, _, v)| *v)
            .collect();
        assert!(!found.is_empty(), "metric {name} was never defined");
        found.iter().sum()
    }

    pub fn logged(&self, level: LogLevel, needle: &str) -> bool {
        self.state
            .borrow()
            .logs
            .iter()
            .any(|(l, m)| *l == level && m.contains(needle))
    }

    fn with_stream<T>(&self, what: &str, f: impl FnOnce(&mut MockStream) -> T) -> T {
        let mut s = self.state.borrow_mut();
        let id = s.effective;
        assert_ne!(id, s.root_id, "{what} while the root context is effective");
        let stream = s
            .streams
            .get_mut(&id)
            .unwrap_or_else(|| panic!("{what} on unknown stream {id}"));
        assert!(!stream.gone, "{what} on stream {id}, which is gone");
        f(stream)
    }
}

impl Host for MockHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.state
            .borrow_mut()
            .logs
            .push((level, message.to_owned()));
    }

    fn wall_clock_nanos(&self) -> u128 {
        u128::from(self.state.borrow().wall_ms) * 1_000_000
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.state.borrow().properties.get(&key).cloned()
    }

    fn set_property(&self, path: &[&str], value: &[u8]) {
        let key = path.join(".");
        self.with_stream("set_property", |s| {
            s.properties.insert(key, value.to_vec());
        });
    }

    fn plugin_configuration(&self) -> Result<Vec<u8>, String> {
        Ok(self.state.borrow().config.clone())
    }

    fn env(&self, name: &str) -> Option<String> {
        self.state.borrow().env.get(name).cloned()
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), String> {
        self.state.borrow_mut().tick = Some(period);
        Ok(())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let mut s = self.state.borrow_mut();
        s.metrics.push((kind, name.to_owned(), 0));
        u32::try_from(s.metrics.len() - 1).ok()
    }

    fn increment_metric(&self, id: u32, delta: i64) {
        let mut s = self.state.borrow_mut();
        let m = s.metrics.get_mut(id as usize).expect("defined metric");
        if m.0 == MetricKind::Counter {
            assert!(delta > 0, "counter {} moved by {delta}", m.1);
        }
        m.2 += delta;
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        if map == Map::RequestHeaders {
            assert!(
                self.state.borrow().in_request_headers,
                "request header {name} read outside on_http_request_headers (the SDK panics)"
            );
        }
        self.with_stream("header read", |s| match map {
            Map::RequestHeaders => s.request_headers.get(name).cloned(),
            Map::ResponseHeaders => s.response_headers.get(name).cloned(),
            Map::ResponseTrailers => s
                .response_trailers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone().into_bytes()),
        })
    }

    fn set_header(&self, map: Map, name: &str, value: &str) {
        self.with_stream("header write", |s| match map {
            Map::RequestHeaders => {
                assert!(
                    !s.resumed,
                    "request headers written after they were resumed"
                );
                s.request_headers
                    .insert(name.to_owned(), value.as_bytes().to_vec());
            }
            Map::ResponseHeaders => {
                s.response_headers
                    .insert(name.to_owned(), value.as_bytes().to_vec());
            }
            Map::ResponseTrailers => {
                s.response_trailers.retain(|(n, _)| n != name);
                s.response_trailers
                    .push((name.to_owned(), value.to_owned()));
            }
        })
    }

    fn add_header(&self, map: Map, name: &str, value: &str) {
        match map {
            Map::ResponseTrailers => self.with_stream("trailer add", |s| {
                s.response_trailers
                    .push((name.to_owned(), value.to_owned()))
            }),
            _ => self.set_header(map, name, value),
        }
    }

    fn remove_header(&self, map: Map, name: &str) {
        self.with_stream("header remove", |s| match map {
            Map::RequestHeaders => {
                s.request_headers.remove(name);
            }
            Map::ResponseHeaders => {
                s.response_headers.remove(name);
            }
            Map::ResponseTrailers => s.response_trailers.retain(|(n, _)| n != name),
        })
    }

    fn body(&self, buffer: Buffer, start: usize, len: usize) -> Option<Vec<u8>> {
        self.with_stream("body read", |s| {
            let b = match buffer {
                Buffer::RequestBody => &s.request_body,
                Buffer::ResponseBody => &s.response_body,
            };
            let end = start.saturating_add(len).min(b.len());
            b.get(start.min(end)..end).map(<[u8]>::to_vec)
        })
    }

    fn set_body(&self, buffer: Buffer, start: usize, len: usize, data: &[u8]) {
        self.with_stream("body write", |s| {
            let b = match buffer {
                Buffer::RequestBody => &mut s.request_body,
                Buffer::ResponseBody => &mut s.response_body,
            };
            let end = start.saturating_add(len).min(b.len());
            b.splice(start.min(end)..end, data.iter().copied());
        })
    }

    fn send_grpc_reply(&self, code: Code, message: &str) {
        self.with_stream("local reply", |s| {
            assert!(s.reply.is_none(), "answered twice");
            s.reply = Some(Reply::Grpc {
                status: code.as_u32(),
                message: message.to_owned(),
            });
        })
    }

    fn send_http_reply(&self, status: u32, _headers: &[(&str, &str)], body: &[u8]) {
        self.with_stream("local reply", |s| {
            assert!(s.reply.is_none(), "answered twice");
            s.reply = Some(Reply::Http {
                status,
                body: body.to_vec(),
            });
        })
    }

    fn resume_request(&self) {
        self.with_stream("resume", |s| s.resumed = true)
    }

    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, String> {
        let mut s = self.state.borrow_mut();
        assert_eq!(
            s.effective, s.root_id,
            "callouts must be made by the root context"
        );
        if let Some(e) = &s.dispatch_error {
            return Err(e.clone());
        }
        let token = u32::try_from(s.calls.len()).expect("few calls") + 100;
        s.calls.push(Call {
            token,
            cluster: call.cluster.to_owned(),
            service: call.service.to_owned(),
            method: call.method.to_owned(),
            metadata: call
                .metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            message: call.message.to_vec(),
            timeout: call.timeout,
        });
        Ok(token)
    }

    fn grpc_response_body(&self, len: usize) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        s.grpc_response
            .get(..len.min(s.grpc_response.len()))
            .map(<[u8]>::to_vec)
    }

    fn set_effective_context(&self, id: u32) -> bool {
        let mut s = self.state.borrow_mut();
        if id != s.root_id && s.streams.get(&id).is_none_or(|st| st.gone) {
            return false;
        }
        s.effective = id;
        true
    }

    fn done(&self) {
        self.state.borrow_mut().done += 1;
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.borrow().get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedSetError> {
        self.shared.borrow_mut().set(key, value, cas)
    }
}
