//! What the `run` service and node mode share: the signals that stop them, the listener, the
//! load of the kernel programs, the heartbeat `/live` reads and the pace of their background
//! loops. Each keeps its own lifecycle (one target followed; every process of the node).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::net::TcpListener;

use super::daemon::Daemon;
use crate::kernel::budget::Budget;

/// `/live` fails when the background loop has not turned for this long.
const LIVE_WITHIN: Duration = Duration::from_secs(5);

/// The background loop's last turn, for `/live`.
pub(crate) struct Heartbeat {
    started: Instant,
    /// Milliseconds since `started` of the last turn.
    last_ms: AtomicU64,
}

impl Heartbeat {
    pub(crate) fn new() -> Heartbeat {
        Heartbeat { started: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    pub(crate) fn beat(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// `/live`: `Err` says for how long the loop has not turned.
    pub(crate) fn live(&self) -> Result<(), String> {
        let beat = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(beat);
        if since > LIVE_WITHIN {
            return Err(format!("the collection loop has not run for {:.1}s", since.as_secs_f64()));
        }
        Ok(())
    }

    /// Time since the service started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A task of a background loop that runs every `period` (checked at each tick).
pub(crate) struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    /// Due at the first tick.
    pub(crate) fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    /// Due after the first period.
    pub(crate) fn from_now(period: Duration) -> Every {
        Every { period, last: Some(Instant::now()) }
    }

    /// Whether it is due; if so, the next period starts now.
    pub(crate) fn due(&mut self) -> bool {
        if self.last.is_none_or(|at| at.elapsed() >= self.period) {
            self.last = Some(Instant::now());
            return true;
        }
        false
    }
}

/// Loads the programs of `probes` and starts the CPU samples `budget` asks for, off the async
/// thread (loading verifies every program: a second or more).
pub(crate) async fn load(probes: Vec<u32>, budget: &Budget) -> Result<Daemon> {
    let cpu_period = budget.cpu_period();
    tokio::task::spawn_blocking(move || {
        let daemon = Daemon::load(&probes, Duration::from_millis(100))?;
        if let Some(period) = cpu_period {
            daemon.sample_cpu_or_warn(period);
        }
        Ok::<_, anyhow::Error>(daemon)
    })
    .await
    .map_err(|e| anyhow!("load task failed: {e}"))?
}

/// Stops the HTTP server and waits for it, at most 5 s (a client stuck mid-response does not
/// hold the exit).
pub(crate) async fn stop_http(
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<()> {
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(e))) => Err(anyhow!("HTTP server failed: {e}")),
        Ok(Err(e)) => Err(anyhow!("HTTP server task failed: {e}")),
    }
}

/// Binds the listen address, if there is one (a service inside `top` serves no HTTP).
pub(crate) async fn bind_some(listen: Option<SocketAddr>) -> Result<Option<TcpListener>> {
    match listen {
        Some(addr) => Ok(Some(bind(addr).await?)),
        None => Ok(None),
    }
}

/// Binds the listen address, with the error an SRE can act on.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!(
            "cannot listen on {listen}: address already in use (another eventflux-probe or exporter?); choose another with --listen"
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("cannot listen on {listen}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)")
        }
        _ => anyhow!("cannot listen on {listen}: {e}"),
    })
}

/// SIGINT and SIGTERM, counted: the first asks for a drained stop, a second for haste.
pub(crate) struct Signals {
    count: tokio::sync::watch::Receiver<u32>,
    tx: std::sync::Arc<tokio::sync::watch::Sender<u32>>,
}

/// Stops a service as its first SIGTERM would: what a command that runs the service inside
/// itself (`top`) holds instead of sending itself a signal.
#[derive(Clone)]
pub struct Stopper(std::sync::Arc<tokio::sync::watch::Sender<u32>>);

impl Stopper {
    pub fn stop(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

/// What a service hands to the command that runs it inside itself (`top`), once it serves:
/// the service to read, and the way to stop it. Errors before that (wrong pid, not root) are
/// the service's result, as they are for `run` and `node`.
pub struct Embedded<S> {
    pub service: std::sync::Arc<S>,
    pub stop: Stopper,
}

/// Where a service sends its [`Embedded`] handle.
pub type Embedder<S> = tokio::sync::oneshot::Sender<Embedded<S>>;

impl Signals {
    /// Installs the handlers now, before anything slow: a signal during loading or attaching
    /// is then a stop like any other, not the default action (death by the signal).
    pub(crate) fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| anyhow!("cannot handle SIGTERM: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| anyhow!("cannot handle SIGINT: {e}"))?;
        let (tx, count) = tokio::sync::watch::channel(0u32);
        let tx = std::sync::Arc::new(tx);
        let sender = std::sync::Arc::clone(&tx);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                sender.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals { count, tx })
    }

    /// A stop that counts as a signal.
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper(std::sync::Arc::clone(&self.tx))
    }

    pub(crate) fn received(&self) -> u32 {
        *self.count.borrow()
    }

    /// Resolves once `n` signals have arrived in all.
    pub(crate) async fn at_least(&self, n: u32) {
        let mut rx = self.count.clone();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// The drain after the first signal: the service keeps serving, not ready, for `period`
    /// (so a load balancer sees `/ready` fail before the endpoints go), or until a second
    /// signal asks for haste.
    pub(crate) async fn drain(&self, period: Duration) {
        tracing::info!(drain_s = period.as_secs_f64(), "stopping: not ready, draining");
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = self.at_least(2) => tracing::info!("second signal: cutting the drain short"),
        }
    }
}
