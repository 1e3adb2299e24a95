//! Node mode: one observer for every EventFlux process of the host (a Kubernetes DaemonSet).
//!
//! The model: a [`Daemon`] loaded once holds many targets. A scan of `/proc` every
//! `scan_interval` (500 ms by default) looks only at processes it has not examined yet (a pid
//! with its start time and the executable it runs: a reused pid is a new process, an exec a new
//! program, as a container's first process does when `runc init` becomes the entrypoint; a gone
//! target whose pid a new process took is forgotten at once), checks the selection
//! (executable globs, pids, container patterns; never this process) and whether the process's
//! executable or mapped shared objects carry `eventflux` notes, read through `/proc/PID/root`
//! so container paths resolve, and each distinct file (device and inode) parsed once. A process
//! with probes is attached to (all or nothing, slots reused), watched through its pidfd, and
//! when it exits its sites are detached at once and its series kept for `grace_period`, then
//! forgotten (map entries, names, `/proc` readings).
//!
//! Why a rescan and not an exec event: a rescan of a host's `/proc` costs about a millisecond
//! per few hundred processes (BENCHMARKS.md), needs no further privilege or kernel program, and
//! also finds processes that started before the observer; 500 ms keeps discovery within the
//! 2 s the DaemonSet promises. (A process that loads the engine as a shared object with
//! `dlopen` after it was examined is not seen: the executable it runs did not change.)
//!
//! Every engine series carries `pid` (the host's pid: a process in its own pid namespace is
//! known by its pid on the host), `exe` (its executable as the process sees it), and inside a
//! container `container_id` and `pod_uid` (from its cgroup path).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::daemon::{Daemon, TICK};
use super::service::{Every, Heartbeat, Signals, bind_some};
use crate::export::health::{self, History, Status, Thresholds, Totals};
use crate::export::prometheus::Options as PromOptions;
use crate::find;
use crate::find::container::{Container, container_of};
use crate::find::select::Selection;
use crate::find::target::{State, Target};
use crate::kernel::budget::Budget;
use crate::model::Model;
use crate::sync::lock;

/// What `node` configures.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where to serve the HTTP endpoints; `None` inside `top`, which reads the service itself.
    pub listen: Option<SocketAddr>,
    pub http_idle_timeout: Duration,
    pub budget: Budget,
    /// Label sets per metric over all processes.
    pub max_series: usize,
    /// Label sets per metric and process.
    pub max_series_per_process: usize,
    /// The classic histograms' buckets.
    pub layout: crate::export::buckets::Layout,
    /// How long a finished process's series stay.
    pub grace_period: Duration,
    pub drain: Duration,
    pub scan_interval: Duration,
    pub health: Thresholds,
    pub select: Selection,
    /// OTLP export of sampled batches' traces, as in `run`.
    pub otlp: Option<crate::export::otlp::Options>,
}

/// One observed process.
struct Tracked {
    target: Arc<Target>,
    exe: PathBuf,
    container: Option<Container>,
    expected: usize,
    attached: usize,
    /// When it exited (or exec'd), and how.
    gone: Option<(Instant, &'static str)>,
    history: History,
}

/// Discovery's own figures, in `/health`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Discovery {
    pub scans: u64,
    pub last_scan_ms: f64,
    pub processes_seen: usize,
    pub attaches: u64,
    pub attach_failures: u64,
    pub detaches: u64,
    pub files_parsed: u64,
    pub files_from_cache: u64,
}

/// The node service: what the HTTP handlers read, shared with the scanner.
pub struct Node {
    daemon: Daemon,
    options: NodeOptions,
    targets: Mutex<BTreeMap<u32, Tracked>>,
    /// Processes examined, by pid: who they were then (a process is examined once per program).
    examined: Mutex<HashMap<u32, Identity>>,
    cache: crate::find::usdt::NotesCache,
    discovery: Mutex<Discovery>,
    scanned_once: AtomicBool,
    stopping: AtomicBool,
    heartbeat: Heartbeat,
    exporter: Option<Arc<crate::export::otlp::Exporter>>,
    metrics_exporter: Option<Arc<crate::export::otlp::MetricsExporter>>,
    /// Exported traces by the latency buckets they fell in.
    exemplars: Mutex<crate::model::exemplars::Exemplars>,
}

/// A process as a scan saw it. A reused pid changes the start time, an exec the executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    /// Clock ticks after boot.
    start_ticks: u64,
    /// The executable it ran: (device, inode); `None` where `/proc/PID/exe` cannot be read.
    exe: Option<(u64, u64)>,
}

fn exe_id(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// One target in the node's `/health`.
#[derive(Debug, Serialize)]
struct TargetHealth {
    pid: u32,
    exe: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<String>,
    /// `running`, `exited`, `execd`.
    state: &'static str,
    /// Seconds until its series are forgotten, once it is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    forgotten_in_seconds: Option<f64>,
    probes_attached: usize,
    probes_expected: usize,
    health: health::Report,
}

#[derive(Debug, Serialize)]
struct NodeHealth {
    /// The worst status of the running targets (healthy with none).
    status: Status,
    targets: Vec<TargetHealth>,
    observer: NodeObserver,
}

#[derive(Debug, Serialize)]
struct NodeObserver {
    ready: bool,
    uptime_seconds: f64,
    targets_running: usize,
    sites_attached: usize,
    site_slots: usize,
    /// Sites refused since start (see `usdt::verify`); each target's report names its own.
    sites_refused: u64,
    dropped_events: u64,
    discovery: Discovery,
    /// The OTLP export, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp: Option<crate::model::OtlpState>,
}

impl Node {
    /// The model with the observer's readiness filled in.
    pub fn model(&self) -> Result<Model> {
        let mut model = self.daemon.model()?;
        model.observer.ready = Some(super::http::Service::ready(self).is_ok());
        model.observer.otlp = crate::export::otlp::state(self.exporter.as_deref(), self.metrics_exporter.as_deref());
        lock(&self.exemplars).fill(&mut model);
        Ok(model)
    }

    /// The exposition options of `/metrics`, which OTLP metrics share.
    fn prom_options(&self) -> PromOptions {
        PromOptions {
            max_series: self.options.max_series,
            pid_label: true,
            max_series_per_process: self.options.max_series_per_process,
            process_labels: self.process_labels(),
            layout: self.options.layout.clone(),
        }
    }

    /// Labels identifying each process, for the exporter.
    fn process_labels(&self) -> BTreeMap<u32, Vec<(&'static str, String)>> {
        lock(&self.targets)
            .iter()
            .map(|(pid, t)| {
                let mut labels = vec![("exe", t.exe.display().to_string())];
                if let Some(c) = &t.container {
                    labels.push(("container_id", c.id.clone()));
                    if let Some(uid) = &c.pod_uid {
                        labels.push(("pod_uid", uid.clone()));
                    }
                }
                (*pid, labels)
            })
            .collect()
    }

    /// Pids of the processes observed now or within their grace period.
    pub fn targets(&self) -> Vec<u32> {
        lock(&self.targets).keys().copied().collect()
    }

    /// Looks at every process not examined yet; attaches to those selected with probes.
    /// Blocking (reads `/proc`, parses ELF files, attaches).
    fn scan(&self) {
        let started = Instant::now();
        let processes = find::processes();
        let now: HashMap<u32, u64> = processes.iter().map(|p| (p.pid, p.start_ticks)).collect();
        // A finished target whose pid another process took: its series go now (the kernel
        // maps are keyed by pid), and the new process is examined.
        let reused: Vec<u32> = lock(&self.targets)
            .iter()
            .filter(|(pid, t)| t.gone.is_some() && now.get(pid).is_some_and(|s| *s != t.target.start_ticks()))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in reused {
            self.forget(pid);
        }
        let tracked: Vec<u32> = lock(&self.targets).keys().copied().collect();
        let fresh: Vec<u32> = {
            let mut examined = lock(&self.examined);
            examined.retain(|pid, _| now.contains_key(pid));
            processes
                .iter()
                .filter(|p| !tracked.contains(&p.pid) && self.options.select.wants_pid(p.pid))
                .filter(|p| {
                    let who = Identity { start_ticks: p.start_ticks, exe: exe_id(p.pid) };
                    examined.insert(p.pid, who) != Some(who)
                })
                .map(|p| p.pid)
                .collect()
        };
        for pid in fresh {
            self.examine(pid);
        }
        let mut d = lock(&self.discovery);
        d.scans += 1;
        d.last_scan_ms = started.elapsed().as_secs_f64() * 1e3;
        d.processes_seen = processes.len();
        d.files_parsed = self.cache.parsed.load(Ordering::Relaxed);
        d.files_from_cache = self.cache.hits.load(Ordering::Relaxed);
    }

    fn examine(&self, pid: u32) {
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return };
        let exe_text = exe.display().to_string();
        let container = container_of(pid);
        if !self.options.select.wants(&exe_text, container.as_ref()) {
            return;
        }
        let found = match find::eventflux_binaries_cached(pid, &self.cache) {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(pid, "not observing process {pid}: {e:#}");
                return;
            }
        };
        let (target, binaries) = found;
        match self.daemon.attach_found(target, &binaries) {
            Ok(a) => {
                tracing::info!(
                    pid,
                    exe = %exe.display(),
                    container_id = container.as_ref().map(|c| c.id.as_str()),
                    probes = a.report.probes,
                    sites = a.report.sites,
                    attach = a.report.attach,
                    attach_ms = a.report.elapsed.as_secs_f64() * 1e3,
                    "attached"
                );
                lock(&self.discovery).attaches += 1;
                if let Some(exporter) = &self.exporter {
                    exporter.add_target(pid, &exe.display().to_string());
                }
                lock(&self.targets).insert(
                    pid,
                    Tracked {
                        target: a.target,
                        exe: exe.strip_suffix_deleted(),
                        container,
                        expected: a.report.expected.len(),
                        attached: a.report.probes,
                        gone: None,
                        history: History::default(),
                    },
                );
            }
            Err(e) => {
                lock(&self.discovery).attach_failures += 1;
                tracing::warn!(pid, "cannot attach to process {pid}: {e:#}");
                // Sites attached before the failure (a process that died mid-attach) ran and
                // left map entries; it is in no target list, so nothing else would expire them.
                if let Err(e) = self.daemon.forget(pid) {
                    tracing::warn!(pid, "cannot forget the map entries of process {pid}: {e:#}");
                }
            }
        }
    }

    /// Processes that exited (or exec'd) since the last look: their pids, to detach.
    fn newly_gone(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (pid, t) in lock(&self.targets).iter_mut().filter(|(_, t)| t.gone.is_none()) {
            let how = match t.target.state() {
                State::Running => continue,
                State::Execd(_) => "execd",
                _ => "exited",
            };
            tracing::info!(pid, exe = %t.exe.display(), "target {how}; its series stay for the grace period");
            t.gone = Some((Instant::now(), how));
            t.attached = 0;
            out.push(*pid);
        }
        out
    }

    /// Processes whose grace period is over.
    fn expired(&self) -> Vec<u32> {
        let grace = self.options.grace_period;
        lock(&self.targets)
            .iter()
            .filter(|(_, t)| t.gone.is_some_and(|(at, _)| at.elapsed() >= grace))
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn forget(&self, pid: u32) {
        // The daemon first: until the target leaves `targets`, its series keep their labels.
        match self.daemon.forget(pid) {
            Ok(n) => tracing::info!(pid, map_entries = n, "forgot the finished target"),
            Err(e) => tracing::warn!(pid, "cannot forget all of the finished target's map entries: {e:#}"),
        }
        lock(&self.targets).remove(&pid);
        // Examined again if it still runs (it exec'd another program).
        lock(&self.examined).remove(&pid);
    }

    /// One health sample per running target.
    fn sample(&self) {
        let Some(model) = self.daemon.sample_model() else { return };
        let keep = self.options.health.history_span();
        for (pid, t) in lock(&self.targets).iter_mut().filter(|(_, t)| t.gone.is_none()) {
            if let Some(engine) = model.engines.get(pid) {
                t.history.push(Instant::now(), Totals::of(engine), keep);
            }
        }
    }
}

trait StripDeleted {
    fn strip_suffix_deleted(&self) -> PathBuf;
}

impl StripDeleted for PathBuf {
    /// The path without the " (deleted)" the kernel appends when the file was replaced.
    fn strip_suffix_deleted(&self) -> PathBuf {
        let s = self.display().to_string();
        PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s))
    }
}

impl super::http::Service for Node {
    fn metrics(&self, format: super::http::Format) -> Result<Vec<u8>> {
        Ok(format.encode(&self.model()?, &self.prom_options()))
    }

    fn health(&self) -> Result<(u16, serde_json::Value)> {
        let model = self.model()?;
        let ready = super::http::Service::ready(self).is_ok();
        let (sites, slots) = self.daemon.sites();
        let observer = health::ObserverInfo {
            phase: if self.stopping.load(Ordering::Relaxed) { "draining" } else { "attached" },
            ready,
            probes_attached: 0,
            probes_expected: 0,
            sites_attached: sites,
            sites_refused: Vec::new(),
            registrations_lost: model.observer.drops[eventflux_probe_common::drop::EVENTS_FULL as usize],
            last_probe_hit_seconds_ago: None,
            dropped_events: model.observer.drops_total(),
            uptime_seconds: self.heartbeat.uptime().as_secs_f64(),
            otlp: model.observer.otlp.clone(),
        };
        let grace = self.options.grace_period;
        let targets: Vec<TargetHealth> = lock(&self.targets)
            .iter()
            .map(|(pid, t)| {
                let state = t.gone.map_or("running", |(_, how)| how);
                let ctx = health::Context {
                    now: Instant::now(),
                    target: health::TargetInfo { pid: *pid, state, executable: t.exe.display().to_string() },
                    gone: t.gone.map(|(_, how)| format!("process {pid} {how}")),
                    observer: health::ObserverInfo {
                        probes_attached: t.attached,
                        probes_expected: t.expected,
                        sites_refused: model.observer.refused.iter().filter(|r| r.pid == *pid).cloned().collect(),
                        ..observer.clone()
                    },
                };
                let report = health::evaluate(model.engines.get(pid), &t.history, &self.options.health, ctx);
                TargetHealth {
                    pid: *pid,
                    exe: t.exe.display().to_string(),
                    container_id: t.container.as_ref().map(|c| c.id.clone()),
                    pod_uid: t.container.as_ref().and_then(|c| c.pod_uid.clone()),
                    state,
                    forgotten_in_seconds: t.gone.map(|(at, _)| grace.saturating_sub(at.elapsed()).as_secs_f64()),
                    probes_attached: t.attached,
                    probes_expected: t.expected,
                    health: report,
                }
            })
            .collect();
        let status = targets.iter().filter(|t| t.state == "running").map(|t| t.health.status).fold(
            Status::Healthy,
            |worst, s| match (worst, s) {
                (Status::Unhealthy, _) | (_, Status::Unhealthy) => Status::Unhealthy,
                (Status::Degraded, _) | (_, Status::Degraded) => Status::Degraded,
                _ => Status::Healthy,
            },
        );
        let report = NodeHealth {
            status,
            observer: NodeObserver {
                ready,
                uptime_seconds: self.heartbeat.uptime().as_secs_f64(),
                targets_running: targets.iter().filter(|t| t.state == "running").count(),
                sites_attached: sites,
                site_slots: slots,
                sites_refused: model.observer.sites_refused,
                dropped_events: model.observer.drops_total(),
                discovery: lock(&self.discovery).clone(),
                otlp: model.observer.otlp.clone(),
            },
            targets,
        };
        Ok((status.http_code(), serde_json::to_value(&report)?))
    }

    /// Ready once the first scan is done (a node without EventFlux processes is ready: there
    /// is nothing to miss), until a signal stops it.
    fn ready(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if !self.scanned_once.load(Ordering::Relaxed) {
            return Err("the first scan of the node's processes is not done".into());
        }
        Ok(())
    }

    fn live(&self) -> Result<(), String> {
        self.heartbeat.live()
    }
}

/// Runs node mode until a signal stops it; hands `embedder` (`top`) the service once it runs.
pub async fn serve(options: NodeOptions, embedder: Option<super::service::Embedder<Node>>) -> Result<()> {
    let signals = Signals::install()?;
    crate::kernel::privileges::check()?;
    let listener = bind_some(options.listen).await?;
    let mut probes = crate::kernel::probes::metric_probes();
    probes.extend(options.budget.probes());
    if options.otlp.as_ref().is_some_and(|o| o.traces) {
        probes.extend(crate::kernel::probes::TRACE_PROBES);
    }
    let daemon = super::service::load(probes, &options.budget).await?;
    let (exporter, metrics_exporter) = match &options.otlp {
        Some(o) => crate::export::otlp::start(o)?,
        None => (None, None),
    };
    let node = Arc::new(Node {
        exporter,
        metrics_exporter: metrics_exporter.clone(),
        exemplars: Default::default(),
        daemon,
        options,
        targets: Mutex::new(BTreeMap::new()),
        examined: Mutex::new(HashMap::new()),
        cache: Default::default(),
        discovery: Mutex::new(Discovery::default()),
        scanned_once: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        heartbeat: Heartbeat::new(),
    });
    node.heartbeat.beat();
    let http = listener
        .map(|l| super::http::spawn_server(l, Arc::clone(&node), node.options.http_idle_timeout, "node mode: "));
    if let Some(embedder) = embedder {
        let _ = embedder.send(super::service::Embedded { service: Arc::clone(&node), stop: signals.stopper() });
    }
    // The model OTLP metrics read: the service's, while it lives.
    let metrics_source = metrics_exporter.as_ref().map(|e| {
        let weak = Arc::downgrade(&node);
        let source: crate::export::otlp::metrics::ModelSource = Arc::new(move || match weak.upgrade() {
            Some(n) => Ok((n.model()?, n.prom_options())),
            None => Err(anyhow::anyhow!("stopping")),
        });
        tokio::spawn(Arc::clone(e).run(Arc::clone(&source)));
        (Arc::clone(e), source)
    });
    let background = tokio::spawn(background(Arc::clone(&node)));

    signals.at_least(1).await;
    node.stopping.store(true, Ordering::Relaxed);
    signals.drain(node.options.drain).await;
    if let Some((e, source)) = &metrics_source {
        e.flush(source).await;
    }
    background.abort();
    let n = Arc::clone(&node);
    let _ = tokio::task::spawn_blocking(move || n.daemon.detach_all()).await;
    match http {
        Some((stop_http, server)) => super::service::stop_http(stop_http, server).await,
        None => Ok(()),
    }
}

async fn background(node: Arc<Node>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scan = Every::new(node.options.scan_interval);
    let mut sample = Every::from_now(health::SAMPLE_EVERY);
    let scanning = Arc::new(AtomicBool::new(false));
    let mut traces = super::traces::Traces::new();
    loop {
        tick.tick().await;
        node.heartbeat.beat();
        let n = Arc::clone(&node);
        let _ = tokio::task::spawn_blocking(move || n.daemon.drain()).await;
        if let Some(exporter) = node.exporter.clone() {
            traces = super::traces::tick_off_thread(traces, Arc::clone(&node), exporter, trace_parts).await;
        }
        // A scan can take a while (attaching): it runs beside the loop, one at a time.
        if !scanning.load(Ordering::Relaxed) && scan.due() {
            scanning.store(true, Ordering::Relaxed);
            let (n, flag) = (Arc::clone(&node), Arc::clone(&scanning));
            tokio::task::spawn_blocking(move || {
                n.scan();
                n.scanned_once.store(true, Ordering::Relaxed);
                flag.store(false, Ordering::Relaxed);
            });
        }
        for pid in node.newly_gone() {
            // Detaching waits for the kernel's RCU grace periods (`load.rs`): in the
            // background, one task per target.
            let n = Arc::clone(&node);
            tokio::task::spawn_blocking(move || {
                let sites = n.daemon.detach(pid);
                lock(&n.discovery).detaches += 1;
                tracing::debug!(pid, sites, "detached");
            });
        }
        for pid in node.expired() {
            let n = Arc::clone(&node);
            let _ = tokio::task::spawn_blocking(move || n.forget(pid)).await;
        }
        if sample.due() {
            let n = Arc::clone(&node);
            let _ = tokio::task::spawn_blocking(move || n.sample()).await;
        }
    }
}

/// What the trace pipeline borrows of the service.
fn trace_parts(s: &Node) -> (&Daemon, &Mutex<crate::model::exemplars::Exemplars>) {
    (&s.daemon, &s.exemplars)
}
