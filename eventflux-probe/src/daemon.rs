//! The observer as a library type: [`Daemon`] loads the kernel programs once and attaches to,
//! detaches from and forgets targets; [`serve`] is the long-running service `run` configures
//! (one target, its lifecycle, the HTTP endpoints); `latency` uses a [`Daemon`] directly, and
//! node mode will hold many targets in one.
//!
//! The service's lifecycle, as `/ready` and `/health` report it:
//!
//! ```text
//! attached ──target exits or execs──▶ target_gone ──grace period──▶ exit 0
//!    ▲                                    │ (--follow: a process of the same executable)
//!    └────────────── attach ◀─────────────┘
//! any phase ──SIGTERM/SIGINT──▶ draining (/ready 503) ──drain──▶ detach, exit 0
//! ```
//!
//! The target's exit is noticed through its pidfd the moment it happens; an exec within the
//! exec poll (250 ms). Attaching to a new process first forgets the old one's map entries and
//! registrations, so the counts served are the new process's alone.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::net::TcpListener;

use crate::bpf::{AttachReport, Kernel};
use crate::budget::Budget;
use crate::collector::Collector;
use crate::export::prometheus::Options as PromOptions;
use crate::health::{self, History, Thresholds, Totals};
use crate::model::Model;
use crate::target::{State, Target};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loaded kernel programs and the targets they are attached to.
pub struct Daemon {
    kernel: Arc<Mutex<Kernel>>,
    collector: Arc<Collector>,
    kernel_log: Mutex<Option<crate::bpf::KernelLogger>>,
    _stats: Option<std::os::fd::OwnedFd>,
}

/// One attached target.
pub struct Attached {
    pub target: Arc<Target>,
    pub report: AttachReport,
}

impl Daemon {
    /// Loads the programs of `probes` (see `bpf::metric_probes` and `Budget::control_probes`).
    /// `max_age`: how long a snapshot is shared by concurrent readers.
    pub fn load(probes: &[u32], max_age: Duration) -> Result<Daemon> {
        // Keeps the kernel's BPF run-time statistics on while we run (the program metrics).
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        let mut kernel = Kernel::load(probes)?;
        let kernel_log = Mutex::new(kernel.take_logger());
        let kernel = Arc::new(Mutex::new(kernel));
        let collector = Arc::new(Collector::new(Arc::clone(&kernel), max_age)?);
        Ok(Daemon { kernel, collector, kernel_log, _stats: stats })
    }

    /// Applies pending registrations and passes the kernel programs' diagnostics (if the log
    /// asked for them) to the log: call every 100 ms or so, their ring buffers must not fill.
    pub fn drain(&self) {
        self.collector.drain_events();
        if let Some(logger) = lock(&self.kernel_log).as_mut() {
            logger.flush();
        }
    }

    /// Finds process `pid`'s probes and attaches the loaded programs to them.
    pub fn attach(&self, pid: u32) -> Result<Attached> {
        let (target, binaries) = crate::discover::eventflux_binaries(pid)?;
        self.attach_found(target, &binaries)
    }

    /// Attaches to probes already found (`discover::eventflux_binaries`).
    pub fn attach_found(&self, target: Target, binaries: &[crate::usdt::BinaryProbes]) -> Result<Attached> {
        let pid = target.pid();
        let report = lock(&self.kernel).attach_process(pid, binaries)?;
        for s in &report.skipped {
            tracing::warn!(pid, "not attached: {s}");
        }
        let target = Arc::new(target);
        self.collector.add_target(Arc::clone(&target), report.probes);
        Ok(Attached { target, report })
    }

    /// Detaches every site (slow: see `Kernel::detach_all`); blocks, but scrapes do not wait:
    /// the kernel's lock is held only to take the attachments.
    pub fn detach_all(&self) {
        let (pids, attachments): (BTreeSet<u32>, _) = {
            let mut kernel = lock(&self.kernel);
            (kernel.sites().iter().map(|s| s.pid).collect(), kernel.take_attachments())
        };
        std::mem::drop(attachments);
        for pid in pids {
            self.collector.detached(pid);
        }
    }

    /// Forgets a finished target: its map entries, registrations and `/proc` readings.
    pub fn forget(&self, pid: u32) -> Result<usize> {
        let removed = lock(&self.kernel).forget_pid(pid)?;
        self.collector.remove_target(pid);
        Ok(removed)
    }

    pub fn collector(&self) -> &Arc<Collector> {
        &self.collector
    }

    /// The model of a fresh (or shared, see `max_age`) snapshot.
    pub fn model(&self) -> Result<Model> {
        Ok(Model::build(self.collector.snapshot()?.as_ref()))
    }
}

/// What `run` configures.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pid: u32,
    pub budget: Budget,
    pub listen: SocketAddr,
    pub http_idle_timeout: Duration,
    pub max_series: usize,
    pub grace_period: Duration,
    pub follow: bool,
    pub drain: Duration,
    pub health: Thresholds,
}

/// Where the service is in its lifecycle.
#[derive(Debug, Clone)]
pub enum Phase {
    Attached {
        pid: u32,
        exe: PathBuf,
        expected: usize,
        attached: usize,
    },
    /// The target exited or exec'd; waiting out the grace period (or for a successor).
    TargetGone {
        pid: u32,
        exe: PathBuf,
        reason: String,
        since: Instant,
    },
    /// SIGTERM: not ready, detaching soon.
    Draining {
        pid: u32,
        exe: PathBuf,
    },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Attached { .. } => "attached",
            Phase::TargetGone { .. } => "target_gone",
            Phase::Draining { .. } => "draining",
        }
    }
}

/// What the HTTP handlers read: shared with the lifecycle task.
pub struct Shared {
    pub daemon: Daemon,
    pub options: ServeOptions,
    phase: Mutex<Phase>,
    target: Mutex<Option<Arc<Target>>>,
    started: Instant,
    /// Milliseconds since `started` of the background loop's last turn (`/live`).
    heartbeat_ms: AtomicU64,
    history: Mutex<History>,
    /// (program runs seen, when they last changed): the last probe hit.
    hits: Mutex<(u64, Option<Instant>)>,
}

/// `/live` fails when the background loop has not turned for this long.
const LIVE_WITHIN: Duration = Duration::from_secs(5);
/// How often the background loop drains registrations (their ring buffer must not fill).
const TICK: Duration = Duration::from_millis(100);
/// How often health samples are taken.
const HEALTH_SAMPLE: Duration = Duration::from_secs(1);
/// How often `--follow` looks for a successor.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

impl Shared {
    pub fn phase(&self) -> Phase {
        lock(&self.phase).clone()
    }

    fn set_phase(&self, phase: Phase) {
        tracing::debug!(phase = phase.name(), "phase");
        *lock(&self.phase) = phase;
        // The next scrape shows the change, not a snapshot from before it.
        self.daemon.collector().invalidate();
    }

    /// `/ready`: every selected probe attached and the target alive. `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        match self.phase() {
            Phase::Attached { pid, expected, attached, .. } => {
                if lock(&self.target).as_ref().is_some_and(|t| t.has_exited()) {
                    return Err(format!("target {pid} exited"));
                }
                if attached < expected {
                    return Err(format!("{attached} of {expected} probes attached to process {pid}"));
                }
                Ok(())
            }
            Phase::TargetGone { reason, .. } => Err(reason),
            Phase::Draining { .. } => Err("shutting down".into()),
        }
    }

    /// `/live`: the background loop turns.
    pub fn live(&self) -> Result<(), String> {
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(beat);
        if since > LIVE_WITHIN {
            return Err(format!("the collection loop has not run for {:.1}s", since.as_secs_f64()));
        }
        Ok(())
    }

    /// The model with the daemon's own state filled in.
    pub fn model(&self) -> Result<Model> {
        let mut model = self.daemon.model()?;
        model.observer.ready = Some(self.ready().is_ok());
        Ok(model)
    }

    /// `/health`.
    pub fn health(&self) -> Result<health::Report> {
        let model = self.model()?;
        let phase = self.phase();
        let (pid, exe, state, gone) = match &phase {
            Phase::Attached { pid, exe, .. } => {
                let exited = lock(&self.target).as_ref().is_some_and(|t| t.has_exited());
                let gone = exited.then(|| format!("process {pid} exited"));
                (*pid, exe.clone(), if exited { "exited" } else { "running" }, gone)
            }
            Phase::TargetGone { pid, exe, reason, .. } => {
                let state = if reason.contains("exec") { "execd" } else { "exited" };
                (*pid, exe.clone(), state, Some(reason.clone()))
            }
            Phase::Draining { pid, exe } => (*pid, exe.clone(), "running", None),
        };
        let (expected, attached) = match &phase {
            Phase::Attached { expected, attached, .. } => (*expected, *attached),
            _ => (0, 0),
        };
        let last_hit = lock(&self.hits).1.map(|at| at.elapsed().as_secs_f64());
        let ctx = health::Context {
            now: Instant::now(),
            target: health::TargetInfo { pid, state, executable: exe.display().to_string() },
            gone,
            observer: health::ObserverInfo {
                phase: phase.name(),
                ready: model.observer.ready == Some(true),
                probes_attached: attached,
                probes_expected: expected,
                sites_attached: model.observer.sites_attached,
                last_probe_hit_seconds_ago: last_hit,
                dropped_events: model.observer.drops_total(),
                uptime_seconds: self.started.elapsed().as_secs_f64(),
            },
        };
        let engine = model.engines.get(&pid);
        Ok(health::evaluate(engine, &lock(&self.history), &self.options.health, ctx))
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> Result<String> {
        let opts = PromOptions { max_series: self.options.max_series, pid_label: false };
        Ok(crate::export::prometheus::encode(&self.model()?, &opts))
    }

    fn beat(&self) {
        self.heartbeat_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// One health sample of the current target, and the last-hit bookkeeping.
    fn sample(&self) {
        let model = match self.daemon.model() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("cannot read the BPF maps for a health sample: {e:#}");
                return;
            }
        };
        let hits = model.observer.probe_hits();
        {
            let mut h = lock(&self.hits);
            if hits != h.0 {
                *h = (hits, Some(Instant::now()));
            }
        }
        let Phase::Attached { pid, .. } = self.phase() else { return };
        if let Some(engine) = model.engines.get(&pid) {
            let keep = self.options.health.window.max(self.options.health.stall_after) + HEALTH_SAMPLE * 2;
            lock(&self.history).push(Instant::now(), Totals::of(engine), keep);
        }
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

fn attached_phase(a: &Attached) -> Phase {
    Phase::Attached {
        pid: a.target.pid(),
        exe: a.target.exe_path().to_path_buf(),
        expected: a.report.expected.len(),
        attached: a.report.probes,
    }
}

fn log_attached(a: &Attached, budget: &Budget) {
    tracing::info!(
        pid = a.target.pid(),
        exe = %a.target.exe_path().display(),
        probes = a.report.probes,
        sites = a.report.sites,
        attach_ms = a.report.elapsed.as_secs_f64() * 1e3,
        "attached"
    );
    tracing::info!(pid = a.target.pid(), "asked the engine for {budget}");
}

/// Runs the service until the target is gone for good or a signal stops it.
pub async fn serve(options: ServeOptions) -> Result<()> {
    // Check the target and the port before loading anything: the common mistakes fail fast.
    let (target, binaries) = crate::discover::eventflux_binaries(options.pid)?;
    let listener = bind(options.listen).await?;

    let mut probes = crate::bpf::metric_probes();
    probes.extend(options.budget.control_probes());
    let daemon = Daemon::load(&probes, Duration::from_millis(100))?;
    let first = daemon.attach_found(target, &binaries)?;
    log_attached(&first, &options.budget);
    let shared = Arc::new(Shared {
        daemon,
        phase: Mutex::new(attached_phase(&first)),
        target: Mutex::new(Some(Arc::clone(&first.target))),
        options,
        started: Instant::now(),
        heartbeat_ms: AtomicU64::new(0),
        history: Mutex::new(History::default()),
        hits: Mutex::new((0, None)),
    });

    let background = tokio::spawn(background(Arc::clone(&shared)));
    let bound = listener.local_addr().unwrap_or(shared.options.listen);
    let cap = crate::http::connection_cap();
    tracing::info!(max_connections = cap, "serving http://{bound}/metrics, /health, /ready, /live");
    let listener = crate::http::GuardedListener::new(listener, cap, shared.options.http_idle_timeout);
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = crate::http::router(Arc::clone(&shared));
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let outcome = lifecycle(&shared, first.target).await;
    background.abort();
    let _ = stop_http.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => return Err(anyhow!("HTTP server failed: {e}")),
        Ok(Err(e)) => return Err(anyhow!("HTTP server task failed: {e}")),
    }
    outcome
}

/// Drains registrations, beats for `/live`, samples health.
async fn background(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    let mut last_sample = Instant::now() - HEALTH_SAMPLE;
    loop {
        tick.tick().await;
        shared.daemon.drain();
        if last_sample.elapsed() >= HEALTH_SAMPLE {
            last_sample = Instant::now();
            let s = Arc::clone(&shared);
            // Reading maps is a few syscalls per entry: off the async thread.
            let _ = tokio::task::spawn_blocking(move || s.sample()).await;
        }
        shared.beat();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn detach(shared: &Arc<Shared>) {
    let s = Arc::clone(shared);
    let started = Instant::now();
    let _ = tokio::task::spawn_blocking(move || s.daemon.detach_all()).await;
    tracing::info!(detach_ms = started.elapsed().as_secs_f64() * 1e3, "detached");
}

async fn lifecycle(shared: &Arc<Shared>, mut target: Arc<Target>) -> Result<()> {
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let pid = target.pid();
        let exe = target.exe_path().to_path_buf();
        let ended = tokio::select! {
            state = target.ended(Duration::from_millis(250)) => state,
            _ = &mut signal => return drain(shared, pid, exe).await,
        };
        let reason = match &ended {
            State::Execd(new) => {
                tracing::warn!(
                    pid,
                    exe = %new.display(),
                    "target exec'd another program: the probes were in the old one; treating it as exited"
                );
                format!("process {pid} exec'd {} (the probes were in the program it left)", new.display())
            }
            _ => {
                tracing::info!(pid, "target exited");
                format!("process {pid} exited")
            }
        };
        shared.set_phase(Phase::TargetGone { pid, exe: exe.clone(), reason, since: Instant::now() });
        // Its probes are gone with its image; the attachments only hold kernel resources now.
        detach(shared).await;

        let grace = tokio::time::sleep(shared.options.grace_period);
        tokio::pin!(grace);
        let mut grace_over = false;
        let mut rejected = BTreeSet::from([pid]);
        if !shared.options.follow {
            tracing::info!(
                pid,
                grace_s = shared.options.grace_period.as_secs_f64(),
                "serving the final values for the grace period"
            );
        } else {
            tracing::info!(pid, exe = %exe.display(), "waiting for a new process of the same executable (--follow)");
        }
        let next = loop {
            tokio::select! {
                _ = &mut signal => return drain(shared, pid, exe).await,
                _ = &mut grace, if !grace_over => {
                    grace_over = true;
                    if !shared.options.follow {
                        tracing::info!(pid, "grace period over; exiting");
                        return Ok(());
                    }
                    tracing::info!(pid, "grace period over; forgetting the finished target's values");
                    forget(shared, pid).await;
                }
                _ = tokio::time::sleep(FOLLOW_POLL), if shared.options.follow => {
                    if let Some(next) = successor(shared, &exe, &mut rejected).await {
                        break next;
                    }
                }
            }
        };
        if !grace_over {
            forget(shared, pid).await;
        }
        lock(&shared.history).clear();
        log_attached(&next, &shared.options.budget);
        shared.set_phase(attached_phase(&next));
        *lock(&shared.target) = Some(Arc::clone(&next.target));
        target = next.target;
    }
}

async fn forget(shared: &Arc<Shared>, pid: u32) {
    let s = Arc::clone(shared);
    match tokio::task::spawn_blocking(move || s.daemon.forget(pid)).await {
        Ok(Ok(n)) => tracing::info!(pid, map_entries = n, "forgot the finished target"),
        Ok(Err(e)) => tracing::warn!(pid, "cannot forget the finished target's map entries: {e:#}"),
        Err(e) => tracing::warn!(pid, "cannot forget the finished target: {e}"),
    }
}

/// A new process running `exe` with probes, attached; `rejected` remembers processes that
/// could not be (no probes, gone while attaching), so they are not tried every poll.
async fn successor(shared: &Arc<Shared>, exe: &std::path::Path, rejected: &mut BTreeSet<u32>) -> Option<Attached> {
    let candidates = crate::discover::processes_running(exe, rejected);
    for pid in candidates {
        let s = Arc::clone(shared);
        match tokio::task::spawn_blocking(move || s.daemon.attach(pid)).await {
            Ok(Ok(attached)) => return Some(attached),
            Ok(Err(e)) => {
                tracing::info!(pid, "not following process {pid}: {e:#}");
                rejected.insert(pid);
            }
            Err(e) => {
                tracing::warn!(pid, "attach task failed: {e}");
                rejected.insert(pid);
            }
        }
    }
    None
}

/// SIGTERM: not ready at once, serve for the drain period, detach, exit 0.
async fn drain(shared: &Arc<Shared>, pid: u32, exe: PathBuf) -> Result<()> {
    shared.set_phase(Phase::Draining { pid, exe });
    tracing::info!(drain_s = shared.options.drain.as_secs_f64(), "stopping: not ready, draining");
    tokio::time::sleep(shared.options.drain).await;
    detach(shared).await;
    Ok(())
}

/// `latency`'s use of a [`Daemon`]: attach, then give the caller the target to watch.
pub fn attach_once(pid: u32, probes: &[u32]) -> Result<(Daemon, Attached)> {
    let daemon = Daemon::load(probes, Duration::ZERO)?;
    let attached = daemon.attach(pid)?;
    Ok((daemon, attached))
}
