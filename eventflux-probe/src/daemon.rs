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

use std::collections::{BTreeMap, BTreeSet};
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
    /// Span records, when loaded to trace (`stage_sample` among the probes).
    spans: Mutex<Option<aya::maps::RingBuf<aya::maps::MapData>>>,
    /// Holding the descriptor keeps the statistics on.
    stats: Result<std::os::fd::OwnedFd, String>,
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
        Daemon::with_kernel(Kernel::load(probes)?, probes, max_age)
    }

    /// Like [`Daemon::load`], for a profiler: CPU samples also record their stacks.
    pub fn load_profiling(probes: &[u32]) -> Result<Daemon> {
        Daemon::with_kernel(Kernel::load_profiling(probes)?, probes, Duration::ZERO)
    }

    fn with_kernel(mut kernel: Kernel, probes: &[u32], max_age: Duration) -> Result<Daemon> {
        // Keeps the kernel's BPF run-time statistics on while we run (the program metrics, and
        // the health report's last probe hit). Without them, said once attached (see
        // `stats_unavailable`): a warning before a failed attach would make its error two lines.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| e.to_string());
        let kernel_log = Mutex::new(kernel.take_logger());
        let tracing = crate::bpf::TRACE_PROBES.iter().any(|p| probes.contains(p));
        let spans = Mutex::new(if tracing { Some(kernel.take_spans()?) } else { None });
        let kernel = Arc::new(Mutex::new(kernel));
        let collector = Arc::new(Collector::new(Arc::clone(&kernel), max_age)?);
        Ok(Daemon { kernel, collector, kernel_log, spans, stats })
    }

    /// Hands every span record waiting in the ring buffer to `f` (nothing unless loaded to
    /// trace); returns how many.
    pub fn drain_spans(&self, mut f: impl FnMut(crate::trace::Record)) -> usize {
        let mut spans = lock(&self.spans);
        let Some(ring) = spans.as_mut() else { return 0 };
        let mut n = 0;
        while let Some(item) = ring.next() {
            if let Some(r) = crate::trace::decode(&item) {
                f(r);
                n += 1;
            }
        }
        n
    }

    /// Why the kernel's BPF run-time statistics are off, if they are.
    pub fn stats_unavailable(&self) -> Option<&str> {
        self.stats.as_ref().err().map(String::as_str)
    }

    /// Applies pending registrations and passes the kernel programs' diagnostics (if the log
    /// asked for them) to the log: call every 100 ms or so, their ring buffers must not fill.
    pub fn drain(&self) {
        self.collector.drain_events();
        if let Some(logger) = lock(&self.kernel_log).as_mut() {
            logger.flush();
        }
    }

    /// Collects for a one-shot command (`latency`, `profile`): drains every 100 ms until
    /// `duration` passes (`None`: no limit), Ctrl-C, or `target` ends; returns how the target
    /// ended if that is what stopped it.
    pub async fn collect(&self, duration: Option<Duration>, target: &Target) -> Option<State> {
        let wait = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let mut tick = tokio::time::interval(TICK);
        let drain = async {
            loop {
                tick.tick().await;
                self.drain();
            }
        };
        tokio::select! {
            () = wait => None,
            _ = tokio::signal::ctrl_c() => None,
            () = drain => None,
            state = target.ended(Duration::from_millis(250)) => Some(state),
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
        let report = {
            let mut kernel = lock(&self.kernel);
            let report = kernel.attach_process(pid, binaries)?;
            if kernel.cpu_period().is_some() {
                kernel.sample_cpu_of(pid, true)?;
            }
            report
        };
        for s in &report.skipped {
            tracing::warn!(pid, "not attached: {s}");
        }
        for r in &report.refused {
            tracing::warn!(
                pid,
                binary = %r.binary.display(),
                probe = %r.probe,
                offset = r.offset,
                "probe site refused, not attached: {r}"
            );
        }
        let target = Arc::new(target);
        self.collector.add_target(Arc::clone(&target), report.probes);
        Ok(Attached { target, report })
    }

    /// Process `pid`'s CPU samples so far by query and stage, without stacks.
    pub fn cpu_places(&self, pid: u32) -> Result<std::collections::BTreeMap<crate::profile::Place, u64>> {
        self.collector.drain_events();
        let catalog = self.collector.catalog();
        crate::profile::Profile::places(&lock(&self.kernel), &catalog, pid)
    }

    /// Process `pid`'s CPU profile so far (see [`crate::profile`]); symbolized in the running
    /// process, or through `layout` once it exited.
    pub fn profile(
        &self,
        pid: u32,
        filter: &crate::profile::Filter,
        layout: Option<&crate::profile::Layout>,
    ) -> Result<crate::profile::Profile> {
        self.collector.drain_events();
        let catalog = self.collector.catalog();
        crate::profile::Profile::read(&lock(&self.kernel), &catalog, pid, filter, layout)
    }

    /// Starts CPU sampling (see `Kernel::sample_cpu`): every target attached from now on has its
    /// CPU samples counted by query and stage.
    pub fn sample_cpu(&self, period: Duration) -> Result<()> {
        lock(&self.kernel).sample_cpu(period)
    }

    /// Like [`Daemon::sample_cpu`] for a service whose other metrics do not depend on it: a
    /// failure (no CAP_PERFMON in a container, perf events disabled) is a warning, and the
    /// service runs without `query_cpu_seconds_total`.
    pub fn sample_cpu_or_warn(&self, period: Duration) {
        if let Err(e) = self.sample_cpu(period) {
            tracing::warn!("CPU attribution off (query_cpu_seconds_total will be missing): {e:#}");
        }
    }

    /// Detaches every site (slow: see `Kernel::detach_all`); blocks, but scrapes do not wait:
    /// the kernel's lock is held only to take the attachments.
    pub fn detach_all(&self) {
        let (pids, attachments): (BTreeSet<u32>, _) = {
            let mut kernel = lock(&self.kernel);
            (kernel.sites().map(|s| s.pid).collect(), kernel.take_attachments())
        };
        crate::attach::detach(attachments);
        for pid in pids {
            self.collector.detached(pid);
        }
    }

    /// Detaches process `pid`'s sites only (node mode: the other targets stay attached), and
    /// says how many; like [`Daemon::detach_all`] holds the kernel's lock only to take them.
    pub fn detach(&self, pid: u32) -> usize {
        let (sites, attachments) = {
            let mut kernel = lock(&self.kernel);
            (kernel.sites().filter(|s| s.pid == pid).count(), kernel.take_attachments_of(pid))
        };
        crate::attach::detach(attachments);
        self.collector.detached(pid);
        sites
    }

    /// Sites attached now, over all targets, and the slots the kernel side has (attached or
    /// free): a node observer that attaches and detaches all day must not grow them.
    pub fn sites(&self) -> (usize, usize) {
        let kernel = lock(&self.kernel);
        (kernel.attached(), kernel.slots())
    }

    /// Forgets a finished target: its registrations and `/proc` readings, and its map entries
    /// (the error says if some could not be removed; the rest is forgotten all the same).
    pub fn forget(&self, pid: u32) -> Result<usize> {
        let removed = lock(&self.kernel).forget_pid(pid);
        self.collector.remove_target(pid);
        removed
    }

    pub fn collector(&self) -> &Arc<Collector> {
        &self.collector
    }

    /// The model of a fresh (or shared, see `max_age`) snapshot.
    pub fn model(&self) -> Result<Model> {
        Ok(Model::build(self.collector.snapshot()?.as_ref()))
    }

    /// The model for a health sample; a failed read is logged and the sample skipped.
    pub fn sample_model(&self) -> Option<Model> {
        self.model().map_err(|e| tracing::warn!("cannot read the BPF maps for a health sample: {e:#}")).ok()
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
    /// Export the span trees of sampled batches over OTLP.
    pub otlp: Option<crate::export::otlp::Options>,
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
        state: State,
    },
    /// SIGTERM: not ready, detaching soon; what the target was before.
    Draining {
        previous: Box<Phase>,
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

    /// Why the target is not observed any more, if it is not.
    fn gone(&self) -> Option<String> {
        match self {
            Phase::Attached { .. } => None,
            Phase::TargetGone { pid, state: State::Execd(new), .. } => {
                Some(format!("process {pid} exec'd {} (the probes were in the program it left)", new.display()))
            }
            Phase::TargetGone { pid, .. } => Some(format!("process {pid} exited")),
            Phase::Draining { previous } => previous.gone(),
        }
    }
}

/// What the HTTP handlers read: shared with the lifecycle task.
pub struct Shared {
    pub daemon: Daemon,
    pub options: ServeOptions,
    phase: Mutex<Phase>,
    target: Mutex<Option<Arc<Target>>>,
    /// Set by the first SIGTERM or SIGINT: `/ready` answers 503 from then on, whatever the
    /// lifecycle task is busy with.
    stopping: std::sync::atomic::AtomicBool,
    started: Instant,
    /// Milliseconds since `started` of the background loop's last turn (`/live`).
    heartbeat_ms: AtomicU64,
    history: Mutex<History>,
    /// (program runs seen, when they last changed): the last probe hit.
    hits: Mutex<(u64, Option<Instant>)>,
    exporter: Option<Arc<crate::export::otlp::Exporter>>,
}

/// `/live` fails when the background loop has not turned for this long.
const LIVE_WITHIN: Duration = Duration::from_secs(5);
/// How often the background loop drains registrations (their ring buffer must not fill).
const TICK: Duration = Duration::from_millis(100);
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

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// `/ready`: every selected probe attached and the target alive. `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        if self.stopping() {
            return Err("shutting down".into());
        }
        let phase = self.phase();
        if let Some(gone) = phase.gone() {
            return Err(gone);
        }
        let Phase::Attached { pid, expected, attached, .. } = phase else {
            return Err("shutting down".into());
        };
        // Faster than the lifecycle task: the pidfd says so the moment the process exits.
        if lock(&self.target).as_ref().is_some_and(|t| t.has_exited()) {
            return Err(format!("process {pid} exited"));
        }
        if attached < expected {
            return Err(format!("{attached} of {expected} probes attached to process {pid}"));
        }
        Ok(())
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
        model.observer.otlp = self.exporter.as_ref().map(|e| e.state());
        Ok(model)
    }

    /// `/health`.
    pub fn health(&self) -> Result<health::Report> {
        let model = self.model()?;
        let phase = self.phase();
        let current = match &phase {
            Phase::Draining { previous } => previous.as_ref(),
            p => p,
        };
        let (pid, exe, expected, attached) = match current {
            Phase::Attached { pid, exe, expected, attached } => (*pid, exe.clone(), *expected, *attached),
            Phase::TargetGone { pid, exe, .. } => (*pid, exe.clone(), 0, 0),
            Phase::Draining { .. } => (0, PathBuf::new(), 0, 0),
        };
        let exited_now =
            matches!(current, Phase::Attached { .. }) && lock(&self.target).as_ref().is_some_and(|t| t.has_exited());
        let gone = phase.gone().or_else(|| exited_now.then(|| format!("process {pid} exited")));
        let state = match current {
            Phase::TargetGone { state: State::Execd(_), .. } => "execd",
            _ if gone.is_some() => "exited",
            _ => "running",
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
                sites_refused: model.observer.refused.clone(),
                registrations_lost: model.observer.drops[eventflux_probe_common::drop::EVENTS_FULL as usize],
                last_probe_hit_seconds_ago: last_hit,
                dropped_events: model.observer.drops_total(),
                uptime_seconds: self.started.elapsed().as_secs_f64(),
                otlp: model.observer.otlp.clone(),
            },
        };
        let engine = model.engines.get(&pid);
        Ok(health::evaluate(engine, &lock(&self.history), &self.options.health, ctx))
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> Result<String> {
        let opts = PromOptions { max_series: self.options.max_series, ..PromOptions::default() };
        Ok(crate::export::prometheus::encode(&self.model()?, &opts))
    }

    fn beat(&self) {
        self.heartbeat_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// One health sample of the current target, and the last-hit bookkeeping.
    fn sample(&self) {
        let Some(model) = self.daemon.sample_model() else { return };
        let hits = model.observer.probe_hits();
        {
            let mut h = lock(&self.hits);
            if hits != h.0 {
                *h = (hits, Some(Instant::now()));
            }
        }
        let Phase::Attached { pid, .. } = self.phase() else { return };
        if let Some(engine) = model.engines.get(&pid) {
            lock(&self.history).push(Instant::now(), Totals::of(engine), self.options.health.history_span());
        }
    }
}

impl crate::http::Service for Shared {
    fn metrics(&self) -> Result<String> {
        Shared::metrics(self)
    }

    fn health(&self) -> Result<(u16, serde_json::Value)> {
        let report = Shared::health(self)?;
        Ok((report.status.http_code(), serde_json::to_value(&report)?))
    }

    fn ready(&self) -> Result<(), String> {
        Shared::ready(self)
    }

    fn live(&self) -> Result<(), String> {
        Shared::live(self)
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
        attach = a.report.attach,
        attach_ms = a.report.elapsed.as_secs_f64() * 1e3,
        "attached"
    );
    tracing::info!(pid = a.target.pid(), "asked the engine for {budget}");
}

/// SIGINT and SIGTERM, counted: the first asks for a drained stop, a second for haste.
pub(crate) struct Signals {
    count: tokio::sync::watch::Receiver<u32>,
}

impl Signals {
    /// Installs the handlers now, before anything slow: a signal during loading or attaching
    /// is then a stop like any other, not the default action (death by the signal).
    pub(crate) fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| anyhow!("cannot handle SIGTERM: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| anyhow!("cannot handle SIGINT: {e}"))?;
        let (tx, count) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals { count })
    }

    pub(crate) fn received(&self) -> u32 {
        *self.count.borrow()
    }

    /// Resolves once `n` signals have arrived in all.
    pub(crate) async fn at_least(&self, n: u32) {
        let mut rx = self.count.clone();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

/// Runs the service until the target is gone for good or a signal stops it.
pub async fn serve(options: ServeOptions) -> Result<()> {
    let signals = Signals::install()?;
    // Check the target and the port before loading anything: the common mistakes fail fast.
    let (target, binaries) = crate::discover::eventflux_binaries(options.pid)?;
    let listener = bind(options.listen).await?;

    let mut probes = crate::bpf::metric_probes();
    probes.extend(options.budget.probes());
    let cpu_period = options.budget.cpu_period();
    if options.otlp.is_some() {
        // The stage spans and trace contexts of traced batches, for the trees (docs/probes.md).
        probes.extend(crate::bpf::TRACE_PROBES);
    }
    let (daemon, first) = tokio::task::spawn_blocking(move || -> Result<(Daemon, Attached)> {
        let daemon = Daemon::load(&probes, Duration::from_millis(100))?;
        if let Some(period) = cpu_period {
            daemon.sample_cpu_or_warn(period);
        }
        let first = daemon.attach_found(target, &binaries)?;
        Ok((daemon, first))
    })
    .await
    .map_err(|e| anyhow!("attach task failed: {e}"))??;
    log_attached(&first, &options.budget);
    if let Some(why) = daemon.stats_unavailable() {
        tracing::warn!(
            "cannot turn on BPF run-time statistics ({why}): program run counts stay 0 and /health cannot tell the last probe hit"
        );
    }
    let exporter = match &options.otlp {
        Some(o) => {
            let exe = first.target.exe_path().display().to_string();
            let (exporter, worker) = crate::export::otlp::Exporter::start(o.clone(), first.target.pid(), &exe)?;
            tokio::spawn(worker.run());
            tracing::info!(
                endpoint = exporter.state().endpoint,
                protocol = exporter.state().protocol,
                "exporting traces over OTLP"
            );
            Some(exporter)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        exporter,
        daemon,
        phase: Mutex::new(attached_phase(&first)),
        target: Mutex::new(Some(Arc::clone(&first.target))),
        options,
        stopping: std::sync::atomic::AtomicBool::new(false),
        started: Instant::now(),
        heartbeat_ms: AtomicU64::new(0),
        history: Mutex::new(History::default()),
        hits: Mutex::new((0, None)),
    });
    if signals.received() > 0 {
        // Stopped while attaching: nobody saw it ready.
        shared.stopping.store(true, Ordering::Relaxed);
        tracing::info!("stopping before serving");
        detach(&shared).await;
        return Ok(());
    }

    let background = tokio::spawn(background(Arc::clone(&shared)));
    let (stop_http, server) =
        crate::http::spawn_server(listener, Arc::clone(&shared), shared.options.http_idle_timeout, "");

    let outcome = {
        let stop = async {
            signals.at_least(1).await;
            // Not ready from this instant, whatever the lifecycle is in the middle of.
            shared.stopping.store(true, Ordering::Relaxed);
        };
        tokio::select! {
            outcome = lifecycle(&shared, first.target) => outcome,
            () = stop => drain(&shared, &signals).await,
        }
    };
    background.abort();
    let _ = stop_http.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => return Err(anyhow!("HTTP server failed: {e}")),
        Ok(Err(e)) => return Err(anyhow!("HTTP server task failed: {e}")),
    }
    outcome
}

/// Drains registrations, kernel diagnostics and span records, beats for `/live`, samples
/// health.
async fn background(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    let mut last_sample: Option<Instant> = None;
    let mut assembler = crate::trace::Assembler::default();
    // Traces wait up to 2 s for their query's name (registrations are replayed after attach).
    let mut held = crate::trace::Held::new(Duration::from_secs(2));
    let clock = crate::trace::Clock::now();
    // Batches that began before the markers settled may lack stages (docs/probes.md).
    let settled = clock.monotonic_now() + 100_000_000;
    loop {
        tick.tick().await;
        shared.daemon.drain();
        if let Some(exporter) = &shared.exporter {
            shared.daemon.drain_spans(|r| {
                if let Some(t) = assembler.push(r)
                    && t.root.start_ns >= settled
                {
                    held.push(t);
                }
            });
            if held.waiting(|_| false) {
                match shared.daemon.model() {
                    Ok(model) => {
                        for t in held.ready(|t| crate::trace::named(&model, t), false) {
                            exporter.offer(&t, &model, &clock);
                        }
                    }
                    Err(e) => tracing::warn!("cannot read the BPF maps for span names: {e:#}"),
                }
            }
        }
        if last_sample.is_none_or(|at| at.elapsed() >= health::SAMPLE_EVERY) {
            last_sample = Some(Instant::now());
            let s = Arc::clone(&shared);
            // Reading maps is a few syscalls per entry: off the async thread.
            let _ = tokio::task::spawn_blocking(move || s.sample()).await;
        }
        shared.beat();
    }
}

async fn detach(shared: &Arc<Shared>) {
    let s = Arc::clone(shared);
    let started = Instant::now();
    let _ = tokio::task::spawn_blocking(move || s.daemon.detach_all()).await;
    tracing::info!(detach_ms = started.elapsed().as_secs_f64() * 1e3, "detached");
}

/// Follows the target (and its successors with `--follow`) until the grace period after the
/// last one is over. Cancelled by the caller at a signal, at any await.
async fn lifecycle(shared: &Arc<Shared>, mut target: Arc<Target>) -> Result<()> {
    loop {
        let pid = target.pid();
        let exe = target.exe_path().to_path_buf();
        let span = tracing::info_span!("target", pid, exe = %exe.display());
        let next = tracing::Instrument::instrument(watch(shared, &target), span).await;
        match next {
            Some(next) => target = next,
            None => return Ok(()),
        }
    }
}

/// One target, from attached to gone; its successor with `--follow`, or `None` once the
/// grace period is over.
async fn watch(shared: &Arc<Shared>, target: &Arc<Target>) -> Option<Arc<Target>> {
    let pid = target.pid();
    let exe = target.exe_path().to_path_buf();
    // Processes of the executable seen running while the target still ran are alongside it,
    // not its restart: never followed. The list is refreshed every poll while the target runs,
    // so one started within the last poll (250 ms) before the exit counts as a restart.
    let mut alongside = BTreeMap::new();
    let ended = target.ended(Duration::from_millis(250));
    tokio::pin!(ended);
    let state = loop {
        if shared.options.follow {
            let running = running_alongside(&exe, target);
            // Kept only if the target outlived the look: then none of them is its restart.
            if matches!(target.state(), State::Running) {
                alongside = running;
            }
        }
        tokio::select! {
            state = &mut ended => break state,
            () = tokio::time::sleep(FOLLOW_POLL), if shared.options.follow => {}
        }
    };
    match &state {
        State::Execd(new) => tracing::warn!(
            exe = %new.display(),
            "target exec'd another program: the probes were in the old one; treating it as exited"
        ),
        _ => tracing::info!("target exited"),
    }
    shared.set_phase(Phase::TargetGone { pid, exe: exe.clone(), state });
    // Its probes are gone with its image; the attachments only hold kernel resources now.
    detach(shared).await;

    let grace = tokio::time::sleep(shared.options.grace_period);
    tokio::pin!(grace);
    let mut forgotten = false;
    let mut rejected = BTreeSet::from([pid]);
    if shared.options.follow {
        tracing::info!("waiting for a new process of the same executable (--follow)");
    } else {
        tracing::info!(
            grace_s = shared.options.grace_period.as_secs_f64(),
            "serving the final values for the grace period"
        );
    }
    loop {
        tokio::select! {
            () = &mut grace, if !forgotten => {
                if !shared.options.follow {
                    tracing::info!("grace period over; exiting");
                    return None;
                }
                tracing::info!("grace period over; forgetting the finished target's values");
                forget(shared, pid).await;
                forgotten = true;
            }
            () = tokio::time::sleep(FOLLOW_POLL), if shared.options.follow => {
                let candidates: Vec<u32> = crate::discover::processes_running(&exe, target.start_ticks(), &rejected)
                    .into_iter()
                    .filter(|p| alongside.get(p) != crate::target::start_ticks(*p).as_ref())
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                // Forget first: from the moment the new process is attached, every count
                // served is its own.
                if !forgotten {
                    forget(shared, pid).await;
                    forgotten = true;
                }
                lock(&shared.history).clear();
                if let Some(next) = successor(shared, candidates, &mut rejected).await {
                    log_attached(&next, &shared.options.budget);
                    if let Some(exporter) = &shared.exporter {
                        exporter.add_target(next.target.pid(), &next.target.exe_path().display().to_string());
                    }
                    *lock(&shared.target) = Some(Arc::clone(&next.target));
                    shared.set_phase(attached_phase(&next));
                    return Some(next.target);
                }
            }
        }
    }
}

/// Processes of `exe` running now besides `target` (started after it, as successors are
/// looked for), with their start times: a pid alone could be reused by a restart.
fn running_alongside(exe: &std::path::Path, target: &Target) -> BTreeMap<u32, u64> {
    crate::discover::processes_running(exe, target.start_ticks(), &BTreeSet::from([target.pid()]))
        .into_iter()
        .filter_map(|p| Some((p, crate::target::start_ticks(p)?)))
        .collect()
}

async fn forget(shared: &Arc<Shared>, pid: u32) {
    let s = Arc::clone(shared);
    match tokio::task::spawn_blocking(move || s.daemon.forget(pid)).await {
        Ok(Ok(n)) => tracing::info!(map_entries = n, "forgot the finished target"),
        Ok(Err(e)) => tracing::warn!("cannot forget all of the finished target's map entries: {e:#}"),
        Err(e) => tracing::warn!("cannot forget the finished target: {e}"),
    }
}

/// The first of `candidates` that attaches; `rejected` remembers those that could not be (no
/// probes, gone while attaching), so they are not tried every poll.
async fn successor(shared: &Arc<Shared>, candidates: Vec<u32>, rejected: &mut BTreeSet<u32>) -> Option<Attached> {
    for pid in candidates {
        let s = Arc::clone(shared);
        match tokio::task::spawn_blocking(move || s.daemon.attach(pid)).await {
            Ok(Ok(attached)) => return Some(attached),
            Ok(Err(e)) => {
                tracing::info!(candidate = pid, "not following process {pid}: {e:#}");
                rejected.insert(pid);
            }
            Err(e) => {
                tracing::warn!(candidate = pid, "attach task failed: {e}");
                rejected.insert(pid);
            }
        }
    }
    None
}

/// SIGTERM: not ready at once (`stopping` is set), serve for the drain period (a second signal
/// cuts it short), detach, exit 0.
async fn drain(shared: &Arc<Shared>, signals: &Signals) -> Result<()> {
    let previous = shared.phase();
    let previous = match previous {
        Phase::Draining { previous } => previous,
        p => Box::new(p),
    };
    shared.set_phase(Phase::Draining { previous });
    tracing::info!(drain_s = shared.options.drain.as_secs_f64(), "stopping: not ready, draining");
    tokio::select! {
        () = tokio::time::sleep(shared.options.drain) => {}
        () = signals.at_least(2) => tracing::info!("second signal: cutting the drain short"),
    }
    detach(shared).await;
    Ok(())
}

/// `latency`'s use of a [`Daemon`]: attach, then give the caller the target to watch.
pub fn attach_once(pid: u32, probes: &[u32]) -> Result<(Daemon, Attached)> {
    let daemon = Daemon::load(probes, Duration::ZERO)?;
    let attached = daemon.attach(pid)?;
    Ok((daemon, attached))
}
