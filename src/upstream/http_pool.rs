//! Per-host HTTP connection pools: idle HTTP/1.1 connections reused one request at a
//! time, and one multiplexed HTTP/2 connection. Each worker has a pool of its own, as in
//! Envoy: a connection's task runs on the worker that opened it, so a request sent on
//! another worker's connection would wake that worker twice.
use crate::sync::MutexExt;
use std::time::Instant;

use std::sync::{
    Arc, Mutex, OnceLock,
    atomic::{AtomicU32, AtomicUsize, Ordering},
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{
    Cluster, Host,
    breakers::Slot,
    connect::{ConnectError, connect_alpn},
    h2_settings::{PeerLimit, Watched},
};
use crate::{
    http::{
        body::Body,
        idle::{Busy, ConnIdle},
    },
    istio::alpn::Override,
    telemetry::stats::GaugeGuard,
    workers,
};

/// Most idle HTTP/1.1 connections kept per host.
const MAX_IDLE_H1: usize = 1024;

#[derive(Debug, Default)]
pub struct HostPool {
    /// One per worker, made on first use: a host never sent to costs one pointer.
    workers: OnceLock<Box<[WorkerPool]>>,
}

/// One worker's connections to a host. Aligned to a cache line so workers' pools of
/// the same host do not share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct WorkerPool {
    /// ConnIdle HTTP/1.1 connections and how many requests each has carried.
    h1_idle: Mutex<Vec<Pooled>>,
    /// The HTTP/2 connection new streams go to, and how many it has carried.
    /// The HTTP/2 connections new streams go to, oldest first: another is opened
    /// when each has as many streams as its peer allows (or `max_concurrent_streams`).
    h2: Mutex<Vec<H2Conn>>,
    /// Serializes HTTP/2 connection setup so concurrent requests share one connection.
    h2_connect: tokio::sync::Mutex<()>,
    /// HTTP/1.1 connections open or opening (idle or busy).
    h1_open: AtomicUsize,
    /// Told when an HTTP/1.1 connection goes back to the pool or closes: a request
    /// pending on the connection limit tries again.
    released: tokio::sync::Notify,
}

impl HostPool {
    /// The calling worker's pool.
    fn mine(&self) -> &WorkerPool {
        &self.all()[workers::current() % self.all().len()]
    }

    fn all(&self) -> &[WorkerPool] {
        self.workers.get_or_init(|| {
            (0..workers::count())
                .map(|_| WorkerPool::default())
                .collect()
        })
    }

    /// True when the pool holds no live connection.
    pub fn is_idle_empty(&self) -> bool {
        self.workers.get().is_none_or(|all| {
            all.iter().all(|p| {
                p.h1_idle.locked().iter().all(|c| c.sender.is_closed())
                    && p.h2.locked().iter().all(|c| c.sender.is_closed())
            })
        })
    }
}

/// An HTTP/2 connection of a worker's pool.
#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<Body>,
    identity: Identity,
    /// Streams it has carried.
    served: u32,
    idle: Option<Arc<ConnIdle>>,
    /// Streams open on it now.
    active: Arc<AtomicU32>,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS.
    peer: PeerLimit,
    expires: Option<Instant>,
}

/// A stream open on an HTTP/2 connection, until its response ends.
#[derive(Debug)]
struct OpenStream(Arc<AtomicU32>);

impl OpenStream {
    fn new(active: &Arc<AtomicU32>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        OpenStream(active.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an upstream connection is, carried on each response it brings: its local
/// address (`%UPSTREAM_LOCAL_ADDRESS%`) and, over TLS, each certificate's first URI SAN
/// (Istio's stats label the peer with them).
#[derive(Debug, Clone, Default)]
pub struct UpstreamConnInfo {
    pub local_addr: Option<std::net::SocketAddr>,
    pub peer_san: Option<String>,
    pub local_san: Option<String>,
}

type Identity = Option<Arc<UpstreamConnInfo>>;

fn identity(stream: &super::connect::Upstream) -> Identity {
    let local_addr = stream.local_addr();
    Some(Arc::new(match stream {
        super::connect::Upstream::Tls(t) => UpstreamConnInfo {
            local_addr,
            peer_san: t.peer_uri_san(),
            local_san: t.local_uri_san(),
        },
        _ => UpstreamConnInfo {
            local_addr,
            ..Default::default()
        },
    }))
}

/// An idle HTTP/1.1 connection in the pool.
#[derive(Debug)]
struct Pooled {
    sender: http1::SendRequest<Body>,
    identity: Identity,
    /// The pool it belongs to (its `istio.alpn` override's index, 0 for none).
    alpn: u8,
    /// Requests it has carried.
    served: u32,
    /// Its idle timeout's state, when the cluster has one.
    idle: Option<Arc<ConnIdle>>,
    /// When it reaches `max_connection_duration`: then it carries nothing new.
    expires: Option<Instant>,
}

/// When a connection opened now reaches the cluster's `max_connection_duration`.
fn expiry(cluster: &Cluster) -> Option<Instant> {
    cluster
        .config
        .max_connection_duration
        .map(|d| Instant::now() + d)
}

fn expired(expires: Option<Instant>) -> bool {
    expires.is_some_and(|e| Instant::now() >= e)
}

#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (Envoy's UF).
    Connect(ConnectError),
    /// The connection failed or was reset before response headers (Envoy's UC).
    Reset(hyper::Error),
    /// A circuit breaker is open: too many pending or active requests (Envoy's UO).
    Overflow,
}

/// An open (or opening) upstream connection's hold on the cluster's connection limit
/// and on its worker pool's count; dropped when the connection ends, which wakes a
/// request pending on the limit.
#[derive(Debug)]
struct ConnSlot {
    _cx: Slot,
    /// Weak: the host's pool holds the connection that holds this.
    host: std::sync::Weak<Host>,
    alpn: u8,
    worker: usize,
    h1: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let Some(host) = self.host.upgrade() else {
            return;
        };
        let pool = &host.pool_for(self.alpn).all()[self.worker];
        if self.h1 {
            pool.h1_open.fetch_sub(1, Ordering::Relaxed);
        }
        pool.released.notify_one();
    }
}

impl ConnSlot {
    /// A slot for a new connection from this worker's pool to `host`: within the
    /// cluster's `max_connections`, or beyond it when the pool has no connection of
    /// this kind (so a pending request is never stranded, as in Envoy). `None` (counted
    /// in `upstream_cx_overflow`) when the request must wait.
    fn acquire(cluster: &Cluster, host: &Arc<Host>, alpn: u8, h1: bool) -> Option<Self> {
        let all = host.pool_for(alpn).all();
        let worker = workers::current() % all.len();
        let pool = &all[worker];
        let cx = match cluster.breakers.connections.try_acquire() {
            Some(s) => s,
            None if !h1 || pool.h1_open.load(Ordering::Relaxed) == 0 => {
                cluster.stats.upstream_cx_overflow.inc();
                cluster.breakers.connections.acquire_anyway()
            }
            None => {
                cluster.stats.upstream_cx_overflow.inc();
                return None;
            }
        };
        if h1 {
            pool.h1_open.fetch_add(1, Ordering::Relaxed);
        }
        Some(ConnSlot {
            _cx: cx,
            host: Arc::downgrade(host),
            alpn,
            worker,
            h1,
        })
    }
}

/// A request waiting for a connection: within `max_pending_requests`, counted in
/// `upstream_rq_pending_active` while it waits.
#[derive(Debug)]
struct Pending {
    _slot: Slot,
    _active: GaugeGuard,
}

impl Pending {
    fn acquire(cluster: &Cluster) -> Result<Self, SendError> {
        let Some(slot) = cluster.breakers.pending.try_acquire() else {
            cluster.stats.upstream_rq_pending_overflow.inc();
            return Err(SendError::Overflow);
        };
        cluster.stats.upstream_rq_pending_total.inc();
        Ok(Pending {
            _slot: slot,
            _active: GaugeGuard::new(&cluster.stats.upstream_rq_pending_active),
        })
    }
}

/// A request on a connection, within `max_requests`; held until its response ends.
/// An overflow counts in `upstream_rq_active_overflow`, as Envoy counts it.
fn request_slot(cluster: &Cluster) -> Result<Slot, SendError> {
    cluster.breakers.requests.try_acquire().ok_or_else(|| {
        cluster.stats.upstream_rq_active_overflow.inc();
        SendError::Overflow
    })
}

/// Sends `req` to `host` over a pooled connection of the given protocol. The request
/// counts in the cluster's `upstream_rq_total` once it has a connection, as in Envoy.
/// An `istio.alpn` override in the request's extensions picks the connections made
/// with it.
pub async fn send(
    cluster: &Cluster,
    host: &Arc<Host>,
    req: Request<Body>,
    h2: bool,
) -> Result<Response<PooledBody>, SendError> {
    let alpn = req.extensions().get::<Override>().cloned();
    let alpn = alpn.as_ref();
    if h2 {
        let (resp, busy, rq, stream) = send_h2(cluster, host, req, alpn).await?;
        Ok(resp.map(|body| PooledBody {
            body,
            back: None,
            _busy: busy,
            _rq: Some(rq),
            _stream: Some(stream),
        }))
    } else {
        send_h1(cluster, host, req, alpn).await
    }
}

/// The pool index of an override.
fn index(alpn: Option<&Override>) -> u8 {
    alpn.map_or(0, |o| o.id)
}

/// hyper sends a GET or HEAD whose body has no known length as bodiless (it assumes
/// there is none), which would drop what an HTTP/2 client sends after its headers.
/// Envoy forwards such a body chunked, and so does pilotfish.
fn chunk_unknown_length_body(req: &mut Request<Body>) {
    use hyper::body::Body as _;
    let body = req.body();
    if (req.method() == http::Method::GET || req.method() == http::Method::HEAD)
        && req.version() != http::Version::HTTP_10
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !req.headers().contains_key(http::header::CONTENT_LENGTH)
        && !req.headers().contains_key(http::header::TRANSFER_ENCODING)
    {
        req.headers_mut().insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
}

async fn send_h1(
    cluster: &Cluster,
    host: &Arc<Host>,
    mut req: Request<Body>,
    alpn: Option<&Override>,
) -> Result<Response<PooledBody>, SendError> {
    chunk_unknown_length_body(&mut req);
    let id = index(alpn);
    let max = cluster.config.max_requests_per_connection;
    let mut counted = false;
    let mut pending = None;
    loop {
        // Reuse an idle connection; one that turns out closed hands the request back.
        loop {
            let idle = host.pool_for(id).mine().h1_idle.locked().pop();
            let Some(Pooled {
                mut sender,
                identity,
                served,
                idle,
                expires,
                ..
            }) = idle
            else {
                break;
            };
            // A connection goes back to the pool as its last response ends, a moment
            // before its task has taken note: wait for that rather than dropping it.
            // One past its maximum duration is dropped, which closes it.
            if expired(expires) || sender.is_closed() || sender.ready().await.is_err() {
                continue;
            }
            let rq = match request_slot(cluster) {
                Ok(rq) => rq,
                Err(e) => {
                    put_back(Some((
                        host.clone(),
                        Pooled {
                            sender,
                            identity,
                            alpn: id,
                            served,
                            idle,
                            expires,
                        },
                    )));
                    return Err(e);
                }
            };
            if !std::mem::replace(&mut counted, true) {
                count_request(cluster, &req);
            }
            let busy = idle.as_ref().map(ConnIdle::busy);
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let conn = Pooled {
                        sender,
                        identity,
                        alpn: id,
                        served: served + 1,
                        idle,
                        expires,
                    };
                    return Ok(pooled(resp, host, conn, max, busy, rq));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Reset(e.into_error())),
                },
            }
        }
        // No idle connection: this request is pending until it has one.
        if pending.is_none() {
            pending = Some(Pending::acquire(cluster)?);
        }
        if let Some(slot) = ConnSlot::acquire(cluster, host, id, true) {
            let (mut sender, conn, identity) = open_h1(cluster, host, alpn).await?;
            let idle = cluster.config.idle_timeout.map(ConnIdle::new);
            let expires = expiry(cluster);
            run_connection(cluster, conn, idle.clone(), slot, expires);
            drop(pending);
            let rq = request_slot(cluster)?;
            if !counted {
                count_request(cluster, &req);
            }
            let busy = idle.as_ref().map(ConnIdle::busy);
            let resp = sender.send_request(req).await.map_err(SendError::Reset)?;
            let conn = Pooled {
                sender,
                identity,
                alpn: id,
                served: 1,
                idle,
                expires,
            };
            return Ok(pooled(resp, host, conn, max, busy, rq));
        }
        // At the connection limit: wait for one of this worker's connections to come
        // back or close.
        host.pool_for(id).mine().released.notified().await;
    }
}

/// Drives a connection on a task of its own until it ends, or until its idle timeout
/// closes it. At `expires` (its maximum duration) it is counted and, if idle, closed;
/// a busy one is closed when its request ends (it is not reused).
fn run_connection<F>(
    cluster: &Cluster,
    conn: F,
    idle: Option<Arc<ConnIdle>>,
    slot: ConnSlot,
    expires: Option<Instant>,
) where
    F: std::future::Future + Send + 'static,
{
    let guard = (GaugeGuard::new(&cluster.stats.upstream_cx_active), slot);
    let timed_out = cluster.stats.upstream_cx_idle_timeout.clone();
    let max_duration = cluster.stats.upstream_cx_max_duration_reached.clone();
    tokio::spawn(async move {
        tokio::pin!(conn);
        let went_idle = async {
            match &idle {
                Some(i) => i.expired().await,
                None => std::future::pending().await,
            }
        };
        let lifetime = async {
            match expires {
                Some(e) => tokio::time::sleep_until(e.into()).await,
                None => std::future::pending().await,
            }
        };
        let reached = tokio::select! {
            _ = conn.as_mut() => false,
            () = went_idle => {
                timed_out.inc();
                false
            }
            () = lifetime => true,
        };
        if reached {
            max_duration.inc();
            if idle.as_ref().is_some_and(|i| i.is_busy()) {
                conn.await;
            }
        }
        drop(guard);
    });
}

/// A response whose connection goes back to the pool when its body ends, unless it has
/// carried `max_requests_per_connection` requests (then it closes).
fn pooled(
    resp: Response<Incoming>,
    host: &Arc<Host>,
    conn: Pooled,
    max: Option<u32>,
    busy: Option<Busy>,
    rq: Slot,
) -> Response<PooledBody> {
    let mut resp = resp;
    if let Some(i) = &conn.identity {
        resp.extensions_mut().insert(i.clone());
    }
    let back = max
        .is_none_or(|m| conn.served < m)
        .then(|| (host.clone(), conn));
    resp.map(|body| PooledBody {
        body,
        back,
        _busy: busy,
        _rq: Some(rq),
        _stream: None,
    })
}

pin_project_lite::pin_project! {
    /// An upstream response body. An HTTP/1.1 one holds its connection and puts it back
    /// in the pool when the body has ended; dropped before its end, the connection is
    /// not reusable and closes.
    pub struct PooledBody {
        #[pin]
        body: Incoming,
        back: Option<(Arc<Host>, Pooled)>,
        // The request in progress, for the connection's idle timeout.
        _busy: Option<Busy>,
        // Its place within the cluster's `max_requests`.
        _rq: Option<Slot>,
        // Its stream on an HTTP/2 connection.
        _stream: Option<OpenStream>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body that ended without being read to its end (no body at all, or
            // a HEAD response) still leaves the connection reusable.
            if hyper::body::Body::is_end_stream(&*this.body) {
                put_back(this.back.take());
            }
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let res = this.body.poll_frame(cx);
        if let std::task::Poll::Ready(None) = &res {
            put_back(this.back.take());
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn put_back(back: Option<(Arc<Host>, Pooled)>) {
    let Some((host, conn)) = back else {
        return;
    };
    if conn.sender.is_closed() || expired(conn.expires) {
        return;
    }
    let pool = host.pool_for(conn.alpn).mine();
    let mut idle = pool.h1_idle.locked();
    // Checkout skips closed connections. Sweeping them out on every return would touch
    // every idle connection per request; upstreams close the longest idle first, so
    // sweep when the oldest has closed, or when the pool is full.
    if idle.first().is_some_and(|c| c.sender.is_closed()) || idle.len() >= MAX_IDLE_H1 {
        idle.retain(|c| !c.sender.is_closed());
    }
    if idle.len() < MAX_IDLE_H1 {
        idle.push(conn);
    }
    drop(idle);
    pool.released.notify_one();
}

/// Sends an upgrade request (e.g. WebSocket) on a connection of its own: after a `101`
/// the connection becomes the tunnel and never returns to the pool.
pub async fn send_upgrade(
    cluster: &Cluster,
    host: &Arc<Host>,
    req: Request<Body>,
) -> Result<Response<PooledBody>, SendError> {
    let pending = Pending::acquire(cluster)?;
    let alpn = req.extensions().get::<Override>().cloned();
    // A tunnel's connection is its own, outside the pool's count.
    let slot = ConnSlot {
        _cx: cluster.breakers.connections.acquire_anyway(),
        host: Arc::downgrade(host),
        alpn: index(alpn.as_ref()),
        worker: workers::current() % host.pool.all().len(),
        h1: false,
    };
    let (mut sender, conn, _) = open_h1(cluster, host, alpn.as_ref()).await?;
    // A tunnel's connection has no idle timeout here (the tunnel has its own life).
    run_connection(cluster, conn.with_upgrades(), None, slot, None);
    drop(pending);
    let rq = request_slot(cluster)?;
    count_request(cluster, &req);
    let resp = sender.send_request(req).await.map_err(SendError::Reset)?;
    Ok(resp.map(|body| PooledBody {
        body,
        back: None,
        _busy: None,
        _rq: Some(rq),
        _stream: None,
    }))
}

/// A new HTTP/1.1 connection to `host`; the caller drives the connection task.
async fn open_h1(
    cluster: &Cluster,
    host: &Host,
    alpn: Option<&Override>,
) -> Result<
    (
        http1::SendRequest<Body>,
        http1::Connection<TokioIo<super::connect::Upstream>, Body>,
        Identity,
    ),
    SendError,
> {
    let stream = connect_alpn(cluster, host, alpn)
        .await
        .map_err(SendError::Connect)?;
    let id = identity(&stream);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Reset)?;
    Ok((sender, conn, id))
}

async fn send_h2(
    cluster: &Cluster,
    host: &Arc<Host>,
    req: Request<Body>,
    alpn: Option<&Override>,
) -> Result<(Response<Incoming>, Option<Busy>, Slot, OpenStream), SendError> {
    let id = index(alpn);
    let (mut sender, idle, stream, identity) = match live_h2(cluster, host, id) {
        Some(s) => s,
        None => {
            // Pending while the connection is made (or while another request makes it).
            let pending = Pending::acquire(cluster)?;
            let _gate = host.pool_for(id).mine().h2_connect.lock().await;
            match live_h2(cluster, host, id) {
                Some(s) => s,
                None => match h2_slot(cluster, host, id) {
                    Some(slot) => {
                        let opened = open_h2(cluster, host, slot, alpn).await?;
                        drop(pending);
                        opened
                    }
                    // At the connection limit with connections open: the stream
                    // waits on the least busy one for the peer to allow it.
                    None => least_busy_h2(host, id).ok_or(SendError::Overflow)?,
                },
            }
        }
    };
    let rq = request_slot(cluster)?;
    count_request(cluster, &req);
    let busy = idle.as_ref().map(ConnIdle::busy);
    let mut resp = sender.send_request(req).await.map_err(SendError::Reset)?;
    if let Some(i) = identity {
        resp.extensions_mut().insert(i);
    }
    Ok((resp, busy, rq, stream))
}

type H2Pick = (
    http2::SendRequest<Body>,
    Option<Arc<ConnIdle>>,
    OpenStream,
    Identity,
);

/// A new connection: within `max_connections`, or the worker's first to the host.
fn h2_slot(cluster: &Cluster, host: &Arc<Host>, alpn: u8) -> Option<ConnSlot> {
    let first = host
        .pool_for(alpn)
        .mine()
        .h2
        .locked()
        .iter()
        .all(|c| c.sender.is_closed());
    if first {
        ConnSlot::acquire(cluster, host, alpn, false)
    } else {
        let cx = cluster.breakers.connections.try_acquire();
        if cx.is_none() {
            cluster.stats.upstream_cx_overflow.inc();
        }
        cx.map(|cx| ConnSlot {
            _cx: cx,
            host: Arc::downgrade(host),
            alpn,
            worker: workers::current() % host.pool_for(alpn).all().len(),
            h1: false,
        })
    }
}

/// Opens an HTTP/2 connection with the cluster's settings and counts one stream on it.
async fn open_h2(
    cluster: &Cluster,
    host: &Arc<Host>,
    slot: ConnSlot,
    alpn: Option<&Override>,
) -> Result<H2Pick, SendError> {
    let stream = connect_alpn(cluster, host, alpn)
        .await
        .map_err(SendError::Connect)?;
    let identity = identity(&stream);
    let (stream, peer) = Watched::new(stream);
    let opts = &cluster.config.h2;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(hyper_util::rt::TokioTimer::new());
    if let Some((interval, timeout)) = opts.keepalive {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true);
    }
    if let Some(w) = opts.initial_stream_window_size {
        builder.initial_stream_window_size(w);
    }
    if let Some(w) = opts.initial_connection_window_size {
        builder.initial_connection_window_size(w);
    }
    let (sender, conn) = builder
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Reset)?;
    let idle = cluster.config.idle_timeout.map(ConnIdle::new);
    let expires = expiry(cluster);
    run_connection(cluster, conn, idle.clone(), slot, expires);
    // Until the peer's SETTINGS arrive its limit is taken as unbounded: streams that
    // come before them stay on this connection (the peer queues what it does not
    // allow yet), as in Envoy.
    let active = Arc::new(AtomicU32::new(0));
    let open = OpenStream::new(&active);
    // A connection allowed one request only is never shared.
    if cluster.config.max_requests_per_connection != Some(1) {
        host.pool_for(index(alpn)).mine().h2.locked().push(H2Conn {
            sender: sender.clone(),
            identity: identity.clone(),
            served: 1,
            idle: idle.clone(),
            active,
            peer,
            expires,
        });
    }
    Ok((sender, idle, open, identity))
}

/// A stream on the first of the worker's HTTP/2 connections to `host` with room for
/// one (fewer streams open than the peer and `max_concurrent_streams` allow); a
/// connection leaves the pool (its streams finish, then it closes) once it has carried
/// `max_requests_per_connection`, or when it stops taking streams (GOAWAY).
fn live_h2(cluster: &Cluster, host: &Host, alpn: u8) -> Option<H2Pick> {
    let max_requests = cluster.config.max_requests_per_connection;
    let max_streams = cluster.config.h2.max_concurrent_streams;
    let mut conns = host.pool_for(alpn).mine().h2.locked();
    conns.retain(|c| !c.sender.is_closed() && c.sender.is_ready() && !expired(c.expires));
    let i = conns
        .iter()
        .position(|c| c.active.load(Ordering::Relaxed) < c.peer.get().min(max_streams))?;
    let conn = &mut conns[i];
    conn.served += 1;
    let out = (
        conn.sender.clone(),
        conn.idle.clone(),
        OpenStream::new(&conn.active),
        conn.identity.clone(),
    );
    if max_requests.is_some_and(|m| conn.served >= m) {
        conns.remove(i);
    }
    Some(out)
}

/// The worker's HTTP/2 connection to `host` with the fewest open streams.
fn least_busy_h2(host: &Host, alpn: u8) -> Option<H2Pick> {
    let mut conns = host.pool_for(alpn).mine().h2.locked();
    let conn = conns
        .iter_mut()
        .filter(|c| !c.sender.is_closed())
        .min_by_key(|c| c.active.load(Ordering::Relaxed))?;
    conn.served += 1;
    Some((
        conn.sender.clone(),
        conn.idle.clone(),
        OpenStream::new(&conn.active),
        conn.identity.clone(),
    ))
}

/// Another counter an attempt counts in beside the cluster's `upstream_rq_total` once
/// it has a connection (a virtual cluster's), carried in the request's extensions.
#[derive(Clone)]
pub struct AlsoCount(pub crate::telemetry::stats::Counter);

fn count_request<B>(cluster: &Cluster, req: &Request<B>) {
    cluster.stats.upstream_rq_total.inc();
    if let Some(AlsoCount(c)) = req.extensions().get() {
        c.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An idle connection over an in-memory stream; dropping the returned end closes it.
    async fn connection() -> (http1::SendRequest<Body>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (sender, conn) = http1::handshake(TokioIo::new(ours)).await.unwrap();
        tokio::spawn(conn);
        (sender, theirs)
    }

    fn pooled_conn(sender: http1::SendRequest<Body>) -> Pooled {
        Pooled {
            sender,
            identity: None,
            alpn: 0,
            served: 1,
            idle: None,
            expires: None,
        }
    }

    async fn closed(host: &Host, i: usize) {
        for _ in 0..1000 {
            if host.pool.mine().h1_idle.locked()[i].sender.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("connection {i} did not close");
    }

    #[tokio::test]
    async fn closed_connections_leave_when_the_oldest_closes() {
        let host = Host::new("127.0.0.1:1".parse().unwrap());
        let idle = || host.pool.mine().h1_idle.locked().len();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (sender, peer) = connection().await;
            put_back(Some((host.clone(), pooled_conn(sender))));
            peers.push(Some(peer));
        }
        assert_eq!(idle(), 3);
        // A newer connection closing waits for checkout to skip it: no sweep per return.
        peers[1] = None;
        closed(&host, 1).await;
        let (sender, _peer3) = connection().await;
        put_back(Some((host.clone(), pooled_conn(sender))));
        assert_eq!(idle(), 4);
        // The oldest closing sweeps out every closed one.
        peers[0] = None;
        closed(&host, 0).await;
        let (sender, _peer4) = connection().await;
        put_back(Some((host.clone(), pooled_conn(sender))));
        assert_eq!(idle(), 3);
        assert!(
            host.pool
                .mine()
                .h1_idle
                .locked()
                .iter()
                .all(|c| !c.sender.is_closed())
        );
    }

    /// Runs `fut` on `worker` and waits for its output.
    fn on<T: Send + 'static>(
        worker: &tokio::runtime::Handle,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        worker.spawn(async move { tx.send(fut.await).unwrap() });
        rx.recv().unwrap()
    }

    #[test]
    fn a_worker_reuses_only_connections_it_opened() {
        let workers = crate::workers::Workers::start(2, || async {}).unwrap();
        let w = workers.handles();
        let host = Host::new("127.0.0.1:1".parse().unwrap());
        let h = host.clone();
        let _peer = on(&w[0], async move {
            let (sender, peer) = connection().await;
            put_back(Some((h, pooled_conn(sender))));
            peer
        });
        let idle = |i: usize| {
            let h = host.clone();
            on(&w[i], async move { h.pool.mine().h1_idle.locked().len() })
        };
        assert_eq!(idle(1), 0, "worker 1 sees worker 0's connection");
        assert_eq!(idle(0), 1);
        assert!(!host.pool.is_idle_empty());
        workers.shutdown();
    }
}
