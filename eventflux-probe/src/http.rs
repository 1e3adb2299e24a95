//! The listener the daemon serves HTTP on, guarded so that misbehaving clients cannot blind the
//! SRE's Prometheus: connections are capped below the process's descriptor limit (so accepting
//! never starves the daemon of descriptors for its maps and `/proc` reads), and a connection
//! that moves no byte for `idle` is closed (a client that connects and says nothing, or keeps
//! an idle keep-alive connection, gives its slot back). At the cap, new connections wait in the
//! kernel's backlog until a slot frees.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
/// the number of HTTP connections to allow under it.
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
    lim.rlim_cur.saturating_sub(RESERVED_FDS).clamp(8, MAX_CONNECTIONS) as usize
}

/// A TCP listener with a connection cap and an idle timeout.
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl GuardedListener {
    /// Serves at most `cap` connections at once, each closed after `idle` without traffic.
    pub fn new(inner: TcpListener, cap: usize, idle: Duration) -> Self {
        GuardedListener { inner, slots: Arc::new(Semaphore::new(cap.max(1))), idle }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = IdleTimeout;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // The semaphore is never closed, so acquiring only waits.
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else { continue };
            match self.inner.accept().await {
                Ok((stream, addr)) => return (IdleTimeout::new(stream, slot, self.idle), addr),
                Err(e) => {
                    // Out of descriptors or memory, or an aborted handshake: wait, then retry.
                    tracing::debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that fails with `TimedOut` once no byte moved either way for `idle`; holds its
/// slot until dropped.
pub struct IdleTimeout {
    stream: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    fn new(stream: tokio::net::TcpStream, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        IdleTimeout { stream, _slot: slot, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    /// On progress: push the deadline back. While waiting: fail if it passed.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                let idle = self.idle;
                self.deadline.as_mut().reset(Instant::now() + idle);
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.check(cx, poll)
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.check(cx, poll)
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
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, server)
}

/// What the endpoints serve: `run`'s one-target service and node mode's many-target one.
pub trait Service: Send + Sync + 'static {
    /// The Prometheus exposition.
    fn metrics(&self) -> anyhow::Result<String>;
    /// The health report and its HTTP status.
    fn health(&self) -> anyhow::Result<(u16, serde_json::Value)>;
    /// `Err` says why not ready.
    fn ready(&self) -> Result<(), String>;
    /// `Err` says why not live.
    fn live(&self) -> Result<(), String>;
}

/// `/metrics`, `/health`, `/ready`, `/live` of a service.
pub fn router<S: Service>(shared: std::sync::Arc<S>) -> axum::Router {
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    fn plain(code: StatusCode, body: String) -> Response {
        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
    }

    async fn blocking<S: Service, T: Send + 'static>(
        shared: std::sync::Arc<S>,
        f: fn(&S) -> anyhow::Result<T>,
    ) -> Result<T, Response> {
        match tokio::task::spawn_blocking(move || f(&shared)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(plain(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the BPF maps: {e:#}\n"))),
            Err(e) => Err(plain(StatusCode::INTERNAL_SERVER_ERROR, format!("collector failed: {e}\n"))),
        }
    }

    async fn metrics<S: Service>(State(shared): State<std::sync::Arc<S>>) -> Response {
        match blocking(shared, S::metrics).await {
            Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
            Err(r) => r,
        }
    }

    async fn health<S: Service>(State(shared): State<std::sync::Arc<S>>) -> Response {
        match blocking(shared, S::health).await {
            Ok((code, report)) => {
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                (code, axum::Json(report)).into_response()
            }
            Err(r) => r,
        }
    }

    async fn ready<S: Service>(State(shared): State<std::sync::Arc<S>>) -> Response {
        match shared.ready() {
            Ok(()) => plain(StatusCode::OK, "ready\n".into()),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        }
    }

    async fn live<S: Service>(State(shared): State<std::sync::Arc<S>>) -> Response {
        match shared.live() {
            Ok(()) => plain(StatusCode::OK, "live\n".into()),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not live: {why}\n")),
        }
    }

    axum::Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/health", get(health::<S>))
        .route("/ready", get(ready::<S>))
        .route("/live", get(live::<S>))
        .with_state(shared)
}
