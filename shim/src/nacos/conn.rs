//! Nacos connections: the bi-streams, keyed by TCP peer, what each listens to, and the
//! pushes.
//!
//! A Nacos 2.x client opens one gRPC connection and sends everything on it: unary calls on
//! `/Request/request`, and one `/BiRequestStream/requestBiStream` that the server pushes
//! `ConfigChangeNotifyRequest`s on. Unary listens and the stream share the TCP peer
//! address, so the table is keyed by it (the self-reported `clientIp` is never used).
//!
//! Pushes: when a listened mapping changes ([`Connections::changed`]), every listen whose
//! client holds another MD5 is marked dirty on its connection, and the connection's pusher
//! task sends one notification per dirty listen (with the data id, group and tenant exactly
//! as the client listened), then waits for the client's ack. An unacknowledged notification
//! is sent again with backoff, up to [`MAX_PUSH_ATTEMPTS`] times; after that the client's
//! periodic full listen (every 3 minutes) heals it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use snp_core::MappingKey;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tonic::Status;

use super::metrics::NacosMetrics;
use super::model::{types, ConfigChangeNotifyRequest, ConfigKey};
use super::proto::Payload;
use super::wire;

/// How long a push waits for the client's ack before it is sent again.
pub const PUSH_ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Notifications of one change per listen, at most (the first and the retries).
pub const MAX_PUSH_ATTEMPTS: u32 = 5;
/// Configs one connection may listen to.
pub const MAX_LISTENS_PER_CONNECTION: usize = 10_000;
/// Messages buffered towards one client before the pusher waits for it.
pub const STREAM_BUFFER: usize = 64;
/// A peer that listened but never opened its stream is forgotten after this long.
pub const ORPHAN_TTL: Duration = Duration::from_secs(60);

/// A config as one client names it: echoed verbatim in pushes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenId {
    /// Group.
    pub group: String,
    /// Data id (encoded as the client sent it).
    pub data_id: String,
    /// Tenant, as the client spelled it ("" or "public" alike).
    pub tenant: String,
}

struct Listen {
    key: MappingKey,
    /// The MD5 the client holds (or will, after the push or answer it got).
    md5: String,
}

/// The push side of one bi-stream.
pub struct Outbox {
    tx: mpsc::Sender<Result<Payload, Status>>,
    dirty: Mutex<HashMap<ListenId, u32>>,
    wake: Notify,
    acks: Mutex<HashMap<String, oneshot::Sender<()>>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbox {
    /// The outbox of a stream whose messages go to `tx`.
    pub fn new(tx: mpsc::Sender<Result<Payload, Status>>) -> Arc<Self> {
        Arc::new(Self {
            tx,
            dirty: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            acks: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    fn mark(&self, id: ListenId) {
        lock(&self.dirty).insert(id, 0);
        self.wake.notify_one();
    }

    /// Completes the push `request_id` (the client's ack); returns whether it was awaited.
    pub fn ack(&self, request_id: &str) -> bool {
        match lock(&self.acks).remove(request_id) {
            Some(tx) => tx.send(()).is_ok(),
            None => false,
        }
    }

    /// Sends the dirty notifications until the stream closes or the shim shuts down.
    pub async fn run(self: Arc<Self>, metrics: NacosMetrics, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = self.tx.closed() => return,
                () = crate::shutdown::signalled(&mut shutdown) => return,
            }
            loop {
                let batch: Vec<(ListenId, u32)> = lock(&self.dirty).drain().collect();
                if batch.is_empty() {
                    break;
                }
                let mut waits = Vec::with_capacity(batch.len());
                for (listen, attempts) in batch {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
                    let (tx, rx) = oneshot::channel();
                    lock(&self.acks).insert(id.clone(), tx);
                    let body = ConfigChangeNotifyRequest {
                        headers: Default::default(),
                        key: ConfigKey {
                            request_id: Some(id.clone()),
                            data_id: Some(listen.data_id.clone()),
                            group: Some(listen.group.clone()),
                            tenant: Some(listen.tenant.clone()),
                        },
                        module: Some("config".into()),
                    };
                    let payload = wire::payload(types::CONFIG_CHANGE_NOTIFY, &body);
                    if self.tx.send(Ok(payload)).await.is_err() {
                        return;
                    }
                    metrics.pushes.inc();
                    waits.push((listen, attempts, id, rx));
                }
                let deadline = tokio::time::Instant::now() + PUSH_ACK_TIMEOUT;
                let mut again = Vec::new();
                for (listen, attempts, id, rx) in waits {
                    if let Ok(Ok(())) = tokio::time::timeout_at(deadline, rx).await {
                        continue;
                    }
                    lock(&self.acks).remove(&id);
                    if attempts + 1 < MAX_PUSH_ATTEMPTS {
                        metrics.push_retries.inc();
                        again.push((listen, attempts + 1));
                    } else {
                        metrics.push_failures.inc();
                        tracing::warn!(
                            data_id = %listen.data_id,
                            group = %listen.group,
                            "no ack for a config change notification; the client's next full listen heals it"
                        );
                    }
                }
                if let Some(max) = again.iter().map(|(_, a)| *a).max() {
                    let backoff = Duration::from_millis(500u64 << max.min(5));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.tx.closed() => return,
                        () = crate::shutdown::signalled(&mut shutdown) => return,
                    }
                    let mut dirty = lock(&self.dirty);
                    for (listen, attempts) in again {
                        // A newer change marked it afresh: that one counts from 0.
                        dirty.entry(listen).or_insert(attempts);
                    }
                }
            }
        }
    }
}

struct Conn {
    id: String,
    outbox: Option<Arc<Outbox>>,
    listens: HashMap<ListenId, Listen>,
    since: Instant,
}

#[derive(Default)]
struct Table {
    by_peer: HashMap<SocketAddr, Conn>,
    /// Which peers listen to a mapping.
    index: HashMap<MappingKey, HashSet<SocketAddr>>,
    listens: usize,
}

impl Table {
    fn conn(&mut self, peer: SocketAddr) -> &mut Conn {
        self.by_peer.entry(peer).or_insert_with(|| Conn {
            id: connection_id(peer),
            outbox: None,
            listens: HashMap::new(),
            since: Instant::now(),
        })
    }

    fn remove(&mut self, peer: SocketAddr) {
        if let Some(conn) = self.by_peer.remove(&peer) {
            self.listens -= conn.listens.len();
            for listen in conn.listens.values() {
                self.unindex(&listen.key, peer);
            }
        }
    }

    fn unindex(&mut self, key: &MappingKey, peer: SocketAddr) {
        if let Some(peers) = self.index.get_mut(key) {
            peers.remove(&peer);
            if peers.is_empty() {
                self.index.remove(key);
            }
        }
    }
}

/// A connection's id, as `ServerCheckResponse` reports it: `<millis>_<peer>`, like Nacos.
pub fn connection_id(peer: SocketAddr) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms}_{}_{}", peer.ip(), peer.port())
}

/// The connection table.
pub struct Connections {
    table: Mutex<Table>,
    metrics: NacosMetrics,
}

/// Why a listen was refused.
#[derive(Debug, thiserror::Error)]
#[error("a connection may listen to at most {MAX_LISTENS_PER_CONNECTION} configs")]
pub struct TooManyListens;

impl Connections {
    /// An empty table.
    pub fn new(metrics: NacosMetrics) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            metrics,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    fn gauges(&self, t: &Table) {
        let streams = t.by_peer.values().filter(|c| c.outbox.is_some()).count();
        self.metrics.connections.set(streams as i64);
        self.metrics.listeners.set(t.listens as i64);
    }

    /// The id of the connection from `peer` (made up if it has no entry yet).
    pub fn id(&self, peer: SocketAddr) -> String {
        self.table()
            .by_peer
            .get(&peer)
            .map_or_else(|| connection_id(peer), |c| c.id.clone())
    }

    /// Binds the bi-stream of `peer`; a stream opened again replaces the old one. Listens
    /// that arrived before the stream (a race of the client's first calls) get one push
    /// each, so a change that came in between is not missed.
    pub fn open(&self, peer: SocketAddr, outbox: Arc<Outbox>) {
        let mut t = self.table();
        let conn = t.conn(peer);
        for id in conn.listens.keys() {
            outbox.mark(id.clone());
        }
        conn.outbox = Some(outbox);
        self.gauges(&t);
    }

    /// Forgets `peer` and its listens, if `outbox` is still its stream.
    pub fn close(&self, peer: SocketAddr, outbox: &Arc<Outbox>) {
        let mut t = self.table();
        let current = t
            .by_peer
            .get(&peer)
            .and_then(|c| c.outbox.as_ref())
            .is_some_and(|o| Arc::ptr_eq(o, outbox));
        if current {
            t.remove(peer);
        }
        self.gauges(&t);
    }

    /// Starts listening; `md5` is what the client holds.
    pub fn listen(
        &self,
        peer: SocketAddr,
        id: ListenId,
        key: MappingKey,
        md5: String,
    ) -> Result<(), TooManyListens> {
        let mut t = self.table();
        let conn = t.conn(peer);
        let added = if let Some(listen) = conn.listens.get_mut(&id) {
            listen.md5 = md5;
            if listen.key != key {
                // Cannot happen for one id with a fixed policy; kept consistent anyway.
                let old = std::mem::replace(&mut listen.key, key.clone());
                t.unindex(&old, peer);
            }
            false
        } else {
            if conn.listens.len() >= MAX_LISTENS_PER_CONNECTION {
                return Err(TooManyListens);
            }
            conn.listens.insert(
                id,
                Listen {
                    key: key.clone(),
                    md5,
                },
            );
            true
        };
        t.index.entry(key).or_default().insert(peer);
        if added {
            t.listens += 1;
        }
        self.gauges(&t);
        Ok(())
    }

    /// Stops listening.
    pub fn unlisten(&self, peer: SocketAddr, id: &ListenId) {
        let mut t = self.table();
        let Some(conn) = t.by_peer.get_mut(&peer) else {
            return;
        };
        let Some(listen) = conn.listens.remove(id) else {
            return;
        };
        let still = conn.listens.values().any(|l| l.key == listen.key);
        t.listens -= 1;
        if !still {
            t.unindex(&listen.key, peer);
        }
        self.gauges(&t);
    }

    /// The mappings anyone listens to.
    pub fn listened(&self) -> Vec<MappingKey> {
        self.table().index.keys().cloned().collect()
    }

    /// `key` now has content with `md5`: pushes to every listen whose client holds another.
    pub fn changed(&self, key: &MappingKey, md5: &str) {
        let mut t = self.table();
        let Some(peers) = t.index.get(key).cloned() else {
            return;
        };
        for peer in peers {
            let Some(conn) = t.by_peer.get_mut(&peer) else {
                continue;
            };
            for (id, listen) in conn.listens.iter_mut() {
                if listen.key == *key && listen.md5 != md5 {
                    listen.md5 = md5.to_owned();
                    if let Some(outbox) = &conn.outbox {
                        outbox.mark(id.clone());
                    }
                }
            }
        }
    }

    /// Forgets peers that listened but never opened a stream within [`ORPHAN_TTL`].
    pub fn sweep(&self) {
        let mut t = self.table();
        let orphans: Vec<SocketAddr> = t
            .by_peer
            .iter()
            .filter(|(_, c)| c.outbox.is_none() && c.since.elapsed() > ORPHAN_TTL)
            .map(|(p, _)| *p)
            .collect();
        for peer in orphans {
            t.remove(peer);
        }
        self.gauges(&t);
    }
}
