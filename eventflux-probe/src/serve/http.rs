//! The listener the daemon serves HTTP on, guarded so that misbehaving clients cannot blind the
//! SRE's Prometheus: connections are capped below the process's descriptor limit (so accepting
//! never starves the daemon of descriptors for its maps and `/proc` reads), and a connection
//! that moves no byte for `idle` is closed (a client that connects and says nothing, or keeps
//! an idle keep-alive connection, gives its slot back). At the cap, a new connection takes the
//! slot of the connection that has been waiting longest for a request (a client that connected
//! and said nothing, or an idle keep-alive connection), which is closed: hundreds of idle
//! connections cannot make a scrape wait for their idle timeout. A connection whose request is
//! being answered is never taken; when every one is, the new connection waits for a slot.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Descriptors kept free for everything but HTTP connections.
const RESERVED_FDS: u64 = 64;
/// Most concurrent connections, whatever the descriptor limit.
const MAX_CONNECTIONS: u64 = 1024;

/// Raises the soft descriptor limit to the hard one (as many servers do at start) and returns
/// the number of HTTP connections to allow under it, besides the descriptors open now.
pub fn connection_cap() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 128;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // What the daemon holds already (programs, maps, perf events of every site) is not free.
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    lim.rlim_cur.saturating_sub(open + RESERVED_FDS).clamp(8, MAX_CONNECTIONS) as usize
}

/// A TCP listener with a connection cap and an idle timeout.
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
    open: Arc<Open>,
}

/// The open connections, for taking the slot of the longest-waiting one at the cap.
#[derive(Default)]
struct Open {
    conns: Mutex<Vec<std::sync::Weak<Conn>>>,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

/// What the listener knows of one connection.
#[derive(Default)]
struct Conn {
    /// Milliseconds since [`Open::epoch`] of its last byte either way.
    last_ms: AtomicU64,
    /// Whether it is waiting for a request: nothing moved yet, or the last byte moved was
    /// written (an answer). Read last, a request is being answered: not to be taken.
    waiting: AtomicBool,
    /// Set to close it; its task is woken to see it.
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Open {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
    }

    fn add(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            last_ms: AtomicU64::new(self.now_ms()),
            waiting: AtomicBool::new(true),
            ..Conn::default()
        });
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(&conn));
        conn
    }

    /// Closes the connection that has waited longest for a request; false if none waits.
    fn evict_longest_waiting(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let victim = conns
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|c| c.waiting.load(Ordering::Relaxed) && !c.evicted.load(Ordering::Relaxed))
            .min_by_key(|c| c.last_ms.load(Ordering::Relaxed));
        let Some(victim) = victim else { return false };
        victim.evicted.store(true, Ordering::Relaxed);
        if let Some(w) = victim.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
        true
    }
}

impl GuardedListener {
    /// Serves at most `cap` connections at once, each closed after `idle` without traffic.
    pub fn new(inner: TcpListener, cap: usize, idle: Duration) -> Self {
        GuardedListener { inner, slots: Arc::new(Semaphore::new(cap.max(1))), idle, open: Arc::default() }
    }

    /// A slot for a connection just accepted: a free one, else the slot of the connection
    /// waiting longest for a request, else the next one freed.
    async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
                return slot;
            }
            let evicted = self.open.evict_longest_waiting();
            // The evicted connection's task closes it and frees its slot; when nobody could be
            // taken, look again shortly (a connection may finish its answer meanwhile).
            let retry = if evicted { Duration::from_millis(500) } else { Duration::from_millis(20) };
            if let Ok(Ok(slot)) = tokio::time::timeout(retry, Arc::clone(&self.slots).acquire_owned()).await {
                return slot;
            }
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = IdleTimeout;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let slot = self.slot().await;
                    let conn = self.open.add();
                    return (IdleTimeout::new(stream, slot, self.idle, conn, Arc::clone(&self.open)), addr);
                }
                Err(e) => {
                    // Out of descriptors (the daemon's own grew since the cap was set): free
                    // one by closing the connection waiting longest, and retry at once. Out of
                    // memory, an aborted handshake, or nobody to close: wait, then retry.
                    let no_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    if !(no_fds && self.open.evict_longest_waiting()) {
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that fails with `TimedOut` once no byte moved either way for `idle`, or when
/// the listener takes its slot for a newer one; holds its slot until dropped.
pub struct IdleTimeout {
    stream: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    conn: Arc<Conn>,
    open: Arc<Open>,
}

impl IdleTimeout {
    fn new(
        stream: tokio::net::TcpStream,
        slot: OwnedSemaphorePermit,
        idle: Duration,
        conn: Arc<Conn>,
        open: Arc<Open>,
    ) -> Self {
        IdleTimeout { stream, _slot: slot, idle, deadline: Box::pin(tokio::time::sleep(idle)), conn, open }
    }

    /// On progress: push the deadline back and note which way the last byte went. While
    /// waiting: fail if the deadline passed or the slot was taken.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>, wrote: bool) -> Poll<io::Result<T>> {
        if self.conn.evicted.load(Ordering::Relaxed) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed for a new one")));
        }
        match poll {
            Poll::Ready(r) => {
                let idle = self.idle;
                self.deadline.as_mut().reset(Instant::now() + idle);
                self.conn.last_ms.store(self.open.now_ms(), Ordering::Relaxed);
                self.conn.waiting.store(wrote, Ordering::Relaxed);
                Poll::Ready(r)
            }
            Poll::Pending => {
                *self.conn.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection"))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        // End of stream (a read of nothing) is no request.
        let wrote = matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() == before;
        self.check(cx, poll, wrote)
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.check(cx, poll, true)
    }

    /// Vectored, so that hyper queues a shared body instead of copying it into a buffer of
    /// each connection (500 clients of a 1 MB `/metrics` were 500 MB of copies).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.check(cx, poll, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `service`'s endpoints on `listener` (guarded: connection cap, idle timeout) until
/// the returned sender is used or dropped; the handle yields the server's outcome.
pub fn spawn_server<S: Service>(
    listener: TcpListener,
    service: std::sync::Arc<S>,
    idle: Duration,
    what: &str,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<io::Result<()>>) {
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let cap = connection_cap();
    tracing::info!(max_connections = cap, "{what}serving http://{bound}/metrics, /health, /ready, /live");
    let listener = GuardedListener::new(listener, cap, idle);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(service);
    tokio::spawn(return_memory());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, server)
}

/// Hands memory freed after a burst of clients back to the system: glibc keeps freed heap in
/// its arenas (one per thread that allocated) until told, and a daemon that once served 500
/// clients would otherwise stay at its peak size for good.
async fn return_memory() {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        // SAFETY: malloc_trim only releases free heap pages; it takes no pointers.
        unsafe { libc::malloc_trim(0) };
    }
}

/// A format of the Prometheus exposition, as the scraper's `Accept` header picks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: classic histograms only.
    Text,
    /// `application/openmetrics-text; version=1.0.0`: classic histograms with exemplars.
    OpenMetrics,
    /// Length-delimited `io.prometheus.client.MetricFamily`: classic and native histograms,
    /// with exemplars.
    Protobuf,
}

impl Format {
    /// The format for an `Accept` header: the one accepted with the highest `q`; on a tie
    /// protobuf, then OpenMetrics, then text (the richer first, as Prometheus orders them).
    /// Prometheus asks for protobuf first with `--enable-feature=native-histograms`, for
    /// OpenMetrics first otherwise (2.42; with `exemplar-storage` it stores the exemplars).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let (mut proto_q, mut om_q, mut text_q) = (0.0f64, 0.0f64, 0.0f64);
        for item in accept.split(',') {
            let mut params = item.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut delimited, mut family, mut version) = (1.0f64, false, false, None);
            for p in params {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                match (k.trim().to_ascii_lowercase().as_str(), v.trim()) {
                    ("q", v) => q = v.parse().unwrap_or(0.0),
                    ("encoding", v) => delimited = v.eq_ignore_ascii_case("delimited"),
                    ("proto", v) => family = v == "io.prometheus.client.MetricFamily",
                    ("version", v) => version = Some(v.to_owned()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/vnd.google.protobuf" if delimited && family => proto_q = proto_q.max(q),
                // 1.0.0 is what this writes; an unversioned ask takes the current version.
                "application/openmetrics-text" if version.as_deref().is_none_or(|v| v == "1.0.0") => om_q = om_q.max(q),
                "text/plain" | "*/*" | "text/*" => text_q = text_q.max(q),
                _ => {}
            }
        }
        if proto_q > 0.0 && proto_q >= om_q && proto_q >= text_q {
            Format::Protobuf
        } else if om_q > 0.0 && om_q >= text_q {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The body of `model` in this format.
    pub fn encode(self, model: &crate::model::Model, opts: &crate::export::prometheus::Options) -> Vec<u8> {
        match self {
            Format::Text => crate::export::prometheus::encode(model, opts).into_bytes(),
            Format::OpenMetrics => crate::export::openmetrics::encode(model, opts).into_bytes(),
            Format::Protobuf => crate::export::prometheus::encode_protobuf(model, opts),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus::TEXT_FORMAT,
            Format::OpenMetrics => crate::export::openmetrics::CONTENT_TYPE,
            Format::Protobuf => crate::export::protobuf::CONTENT_TYPE,
        }
    }
}

/// What the endpoints serve: `run`'s one-target service and node mode's many-target one.
pub trait Service: Send + Sync + 'static {
    /// The Prometheus exposition in `format`.
    fn metrics(&self, format: Format) -> anyhow::Result<Vec<u8>>;
    /// The health report and its HTTP status.
    fn health(&self) -> anyhow::Result<(u16, serde_json::Value)>;
    /// `Err` says why not ready.
    fn ready(&self) -> Result<(), String>;
    /// `Err` says why not live.
    fn live(&self) -> Result<(), String>;
}

/// How long a rendered `/metrics` or `/health` body is served to everyone who asks: the
/// reader's snapshot period (`collect::Reader`), so that concurrent scrapes share one snapshot and one body
/// instead of each rendering its own (500 concurrent clients once grew the daemon by hundreds
/// of megabytes).
const RENDERED_FOR: Duration = Duration::from_millis(100);

/// One endpoint's latest body, with the readiness it was rendered under (`Service::ready`):
/// a change of it — the target exited, a drain began — is a new body at once, so `/health`
/// never lags `/ready`. The lock is held while rendering, so requests that arrive meanwhile
/// wait for that body instead of rendering again: at most one render per endpoint at a time.
struct Rendered<T>(tokio::sync::Mutex<Option<Body<T>>>);

/// A rendered body, when, and under which readiness.
struct Body<T> {
    at: Instant,
    ready: Result<(), String>,
    body: T,
}

impl<T: Clone + Send + 'static> Rendered<T> {
    fn new() -> Self {
        Rendered(tokio::sync::Mutex::new(None))
    }

    async fn get(
        &self,
        ready: Result<(), String>,
        render: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let mut latest = self.0.lock().await;
        if let Some(b) = latest.as_ref().filter(|b| b.at.elapsed() < RENDERED_FOR && b.ready == ready) {
            return Ok(b.body.clone());
        }
        let body = match tokio::task::spawn_blocking(render).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => return Err(format!("cannot read the BPF maps: {e:#}")),
            Err(e) => return Err(format!("rendering failed: {e}")),
        };
        *latest = Some(Body { at: Instant::now(), ready, body: body.clone() });
        Ok(body)
    }
}

/// What the endpoints share: the service and the latest bodies.
struct Endpoints<S> {
    service: std::sync::Arc<S>,
    metrics: Rendered<axum::body::Bytes>,
    metrics_protobuf: Rendered<axum::body::Bytes>,
    metrics_openmetrics: Rendered<axum::body::Bytes>,
    health: Rendered<(u16, axum::body::Bytes)>,
}

/// `/metrics`, `/health`, `/ready`, `/live` of a service.
pub fn router<S: Service>(service: std::sync::Arc<S>) -> axum::Router {
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    fn plain(code: StatusCode, body: String) -> Response {
        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
    }

    async fn metrics<S: Service>(
        State(e): State<std::sync::Arc<Endpoints<S>>>,
        headers: axum::http::HeaderMap,
    ) -> Response {
        let service = std::sync::Arc::clone(&e.service);
        let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
        let rendered = match format {
            Format::Text => &e.metrics,
            Format::OpenMetrics => &e.metrics_openmetrics,
            Format::Protobuf => &e.metrics_protobuf,
        };
        match rendered.get(e.service.ready(), move || service.metrics(format).map(axum::body::Bytes::from)).await {
            Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
            Err(why) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
        }
    }

    async fn health<S: Service>(State(e): State<std::sync::Arc<Endpoints<S>>>) -> Response {
        let service = std::sync::Arc::clone(&e.service);
        let render = move || {
            let (code, report) = service.health()?;
            Ok((code, axum::body::Bytes::from(serde_json::to_vec(&report)?)))
        };
        match e.health.get(e.service.ready(), render).await {
            Ok((code, body)) => {
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Err(why) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
        }
    }

    async fn ready<S: Service>(State(e): State<std::sync::Arc<Endpoints<S>>>) -> Response {
        match e.service.ready() {
            Ok(()) => plain(StatusCode::OK, "ready\n".into()),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        }
    }

    async fn live<S: Service>(State(e): State<std::sync::Arc<Endpoints<S>>>) -> Response {
        match e.service.live() {
            Ok(()) => plain(StatusCode::OK, "live\n".into()),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not live: {why}\n")),
        }
    }

    let endpoints = std::sync::Arc::new(Endpoints {
        service,
        metrics: Rendered::new(),
        metrics_protobuf: Rendered::new(),
        metrics_openmetrics: Rendered::new(),
        health: Rendered::new(),
    });
    axum::Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/health", get(health::<S>))
        .route("/ready", get(ready::<S>))
        .route("/live", get(live::<S>))
        .with_state(endpoints)
}

#[cfg(test)]
mod tests {
    use super::Format;

    #[test]
    fn the_accept_header_picks_the_format() {
        // Prometheus 2.42 with native histograms on, and a plain text scraper.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let classic = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(native)), Format::Protobuf);
        assert_eq!(Format::negotiate(Some(classic)), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        // Protobuf of another message, or not delimited: not ours.
        assert_eq!(
            Format::negotiate(Some("application/vnd.google.protobuf;proto=other;encoding=delimited")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            )),
            Format::Text
        );
        // Prometheus 2.42 with exemplar storage, and with native histograms too.
        let openmetrics = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(openmetrics)), Format::OpenMetrics);
        let both = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5";
        assert_eq!(Format::negotiate(Some(both)), Format::Protobuf);
        // A version this does not write: not OpenMetrics.
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=2.0.0,text/plain;q=0.5")),
            Format::Text
        );
        // Preferred less than text: text.
        let less = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.2,text/plain;q=0.9";
        assert_eq!(Format::negotiate(Some(less)), Format::Text);
    }
}
