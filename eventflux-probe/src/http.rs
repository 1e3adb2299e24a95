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
