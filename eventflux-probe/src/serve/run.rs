//! The `run` service: one target, its lifecycle, the HTTP endpoints.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use super::daemon::{Attached, Daemon, TICK};
use super::service::{Every, Heartbeat, Signals, bind_some};
use crate::export::health::{self, History, Thresholds, Totals};
use crate::export::prometheus::Options as PromOptions;
use crate::find::target::{State, Target};
use crate::kernel::budget::Budget;
use crate::model::Model;
use crate::sync::lock;

/// What `run` configures.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pid: u32,
    pub budget: Budget,
    /// Where to serve the HTTP endpoints; `None` inside `top`, which reads the service itself.
    pub listen: Option<SocketAddr>,
    pub http_idle_timeout: Duration,
    pub max_series: usize,
    /// The classic histograms' buckets.
    pub layout: crate::export::buckets::Layout,
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

/// The service's state: what the HTTP handlers read, shared with the lifecycle task and the
/// background loop.
pub struct RunService {
    pub daemon: Daemon,
    pub options: ServeOptions,
    phase: Mutex<Phase>,
    target: Mutex<Option<Arc<Target>>>,
    /// Set by the first SIGTERM or SIGINT: `/ready` answers 503 from then on, whatever the
    /// lifecycle task is busy with.
    stopping: AtomicBool,
    heartbeat: Heartbeat,
    history: Mutex<History>,
    /// (program runs seen, when they last changed): the last probe hit.
    hits: Mutex<(u64, Option<Instant>)>,
    exporter: Option<Arc<crate::export::otlp::Exporter>>,
    metrics_exporter: Option<Arc<crate::export::otlp::MetricsExporter>>,
    /// Exported traces by the latency buckets they fell in.
    exemplars: Mutex<crate::model::exemplars::Exemplars>,
}

/// How often `--follow` looks for a successor.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

impl RunService {
    pub fn phase(&self) -> Phase {
        lock(&self.phase).clone()
    }

    fn set_phase(&self, phase: Phase) {
        tracing::debug!(phase = phase.name(), "phase");
        *lock(&self.phase) = phase;
        // The next scrape shows the change, not a snapshot from before it.
        self.daemon.reader().invalidate();
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
        self.heartbeat.live()
    }

    /// The model with the daemon's own state filled in.
    pub fn model(&self) -> Result<Model> {
        let mut model = self.daemon.model()?;
        model.observer.ready = Some(self.ready().is_ok());
        model.observer.otlp = crate::export::otlp::state(self.exporter.as_deref(), self.metrics_exporter.as_deref());
        lock(&self.exemplars).fill(&mut model);
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
                uptime_seconds: self.heartbeat.uptime().as_secs_f64(),
                otlp: model.observer.otlp.clone(),
            },
        };
        let engine = model.engines.get(&pid);
        Ok(health::evaluate(engine, &lock(&self.history), &self.options.health, ctx))
    }

    /// The Prometheus exposition in `format`.
    pub fn metrics(&self, format: super::http::Format) -> Result<Vec<u8>> {
        Ok(format.encode(&self.model()?, &prom_options(&self.options)))
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

impl super::http::Service for RunService {
    fn metrics(&self, format: super::http::Format) -> Result<Vec<u8>> {
        RunService::metrics(self, format)
    }

    fn health(&self) -> Result<(u16, serde_json::Value)> {
        let report = RunService::health(self)?;
        Ok((report.status.http_code(), serde_json::to_value(&report)?))
    }

    fn ready(&self) -> Result<(), String> {
        RunService::ready(self)
    }

    fn live(&self) -> Result<(), String> {
        RunService::live(self)
    }
}

/// The exposition options of `/metrics`, which OTLP metrics share.
fn prom_options(o: &ServeOptions) -> PromOptions {
    PromOptions { max_series: o.max_series, layout: o.layout.clone(), ..PromOptions::default() }
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

/// Runs the service until the target is gone for good or a signal stops it; hands
/// `embedder` (`top`) the service once it runs.
pub async fn serve(options: ServeOptions, embedder: Option<super::service::Embedder<RunService>>) -> Result<()> {
    let signals = Signals::install()?;
    // Check the target and the port before loading anything: the common mistakes fail fast.
    crate::kernel::privileges::check()?;
    let (target, binaries) = crate::find::eventflux_binaries(options.pid)?;
    let listener = bind_some(options.listen).await?;

    let mut probes = crate::kernel::probes::metric_probes();
    probes.extend(options.budget.probes());
    if options.otlp.as_ref().is_some_and(|o| o.traces) {
        // The stage spans and trace contexts of traced batches, for the trees (docs/probes.md).
        probes.extend(crate::kernel::probes::TRACE_PROBES);
    }
    let daemon = super::service::load(probes, &options.budget).await?;
    let (daemon, first) = tokio::task::spawn_blocking(move || -> Result<(Daemon, Attached)> {
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
    let (exporter, metrics_exporter) = match &options.otlp {
        Some(o) => crate::export::otlp::start(o)?,
        None => (None, None),
    };
    if let Some(e) = &exporter {
        e.add_target(first.target.pid(), &first.target.exe_path().display().to_string());
    }
    let shared = Arc::new(RunService {
        exporter,
        metrics_exporter: metrics_exporter.clone(),
        exemplars: Default::default(),
        daemon,
        phase: Mutex::new(attached_phase(&first)),
        target: Mutex::new(Some(Arc::clone(&first.target))),
        options,
        stopping: AtomicBool::new(false),
        heartbeat: Heartbeat::new(),
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

    // The model OTLP metrics read: the service's, while it lives.
    let metrics_source = metrics_exporter.as_ref().map(|e| {
        let weak = Arc::downgrade(&shared);
        let source: crate::export::otlp::metrics::ModelSource = Arc::new(move || match weak.upgrade() {
            Some(s) => Ok((s.model()?, prom_options(&s.options))),
            None => Err(anyhow!("stopping")),
        });
        tokio::spawn(Arc::clone(e).run(Arc::clone(&source)));
        (Arc::clone(e), source)
    });
    let background = tokio::spawn(background(Arc::clone(&shared)));
    let http =
        listener.map(|l| super::http::spawn_server(l, Arc::clone(&shared), shared.options.http_idle_timeout, ""));
    if let Some(embedder) = embedder {
        let _ = embedder.send(super::service::Embedded { service: Arc::clone(&shared), stop: signals.stopper() });
    }

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
    if let Some((e, source)) = &metrics_source {
        e.flush(source).await;
    }
    background.abort();
    if let Some((stop_http, server)) = http {
        super::service::stop_http(stop_http, server).await?;
    }
    outcome
}

/// Drains registrations, kernel diagnostics and span records, beats for `/live`, samples
/// health.
async fn background(shared: Arc<RunService>) {
    let mut tick = tokio::time::interval(TICK);
    let mut sample = Every::new(health::SAMPLE_EVERY);
    let mut traces = super::traces::Traces::new();
    loop {
        tick.tick().await;
        shared.daemon.drain();
        if let Some(exporter) = shared.exporter.clone() {
            traces = super::traces::tick_off_thread(traces, Arc::clone(&shared), exporter, trace_parts).await;
        }
        if sample.due() {
            let s = Arc::clone(&shared);
            // Reading maps is a few syscalls per entry: off the async thread.
            let _ = tokio::task::spawn_blocking(move || s.sample()).await;
        }
        shared.heartbeat.beat();
    }
}

async fn detach(shared: &Arc<RunService>) {
    let s = Arc::clone(shared);
    let started = Instant::now();
    let _ = tokio::task::spawn_blocking(move || s.daemon.detach_all()).await;
    tracing::info!(detach_ms = started.elapsed().as_secs_f64() * 1e3, "detached");
}

/// Follows the target (and its successors with `--follow`) until the grace period after the
/// last one is over. Cancelled by the caller at a signal, at any await.
async fn lifecycle(shared: &Arc<RunService>, mut target: Arc<Target>) -> Result<()> {
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
async fn watch(shared: &Arc<RunService>, target: &Arc<Target>) -> Option<Arc<Target>> {
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
                let candidates: Vec<u32> = crate::find::processes_running(&exe, target.start_ticks(), &rejected)
                    .into_iter()
                    .filter(|p| alongside.get(p) != crate::find::target::start_ticks(*p).as_ref())
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
    crate::find::processes_running(exe, target.start_ticks(), &BTreeSet::from([target.pid()]))
        .into_iter()
        .filter_map(|p| Some((p, crate::find::target::start_ticks(p)?)))
        .collect()
}

async fn forget(shared: &Arc<RunService>, pid: u32) {
    let s = Arc::clone(shared);
    match tokio::task::spawn_blocking(move || s.daemon.forget(pid)).await {
        Ok(Ok(n)) => tracing::info!(map_entries = n, "forgot the finished target"),
        Ok(Err(e)) => tracing::warn!("cannot forget all of the finished target's map entries: {e:#}"),
        Err(e) => tracing::warn!("cannot forget the finished target: {e}"),
    }
}

/// The first of `candidates` that attaches; `rejected` remembers those that could not be (no
/// probes, gone while attaching), so they are not tried every poll.
async fn successor(shared: &Arc<RunService>, candidates: Vec<u32>, rejected: &mut BTreeSet<u32>) -> Option<Attached> {
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
async fn drain(shared: &Arc<RunService>, signals: &Signals) -> Result<()> {
    let previous = shared.phase();
    let previous = match previous {
        Phase::Draining { previous } => previous,
        p => Box::new(p),
    };
    shared.set_phase(Phase::Draining { previous });
    signals.drain(shared.options.drain).await;
    detach(shared).await;
    Ok(())
}

/// What the trace pipeline borrows of the service.
fn trace_parts(s: &RunService) -> (&Daemon, &Mutex<crate::model::exemplars::Exemplars>) {
    (&s.daemon, &s.exemplars)
}
