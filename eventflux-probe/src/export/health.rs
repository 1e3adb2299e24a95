//! `/health`: the design document's health JSON, computed from what the probes observe.
//!
//! The checks compare the engine's counts now with their values a while ago (the health
//! window), so they speak of rates, not totals: a daemon sampling the [`Model`] once a second
//! keeps a short [`History`] of [`Totals`]; a request evaluates the current model against it
//! and changes nothing (a Kubernetes probe may call it as often as it likes).
//!
//! Each check is `ok`, `degraded` or `failed`, with a reason per finding (docs/health.md
//! defines them and their thresholds):
//! - `event_pipeline`: the error ratio and the backpressure rate over the window are under
//!   their thresholds, and events flow while sources are connected;
//! - `state_backend`: window state is under its cap; window state, join state and patterns'
//!   partial matches did not only grow through the whole window to `window_state_growth` times
//!   their size; snapshots do not fail;
//! - `query_runtime`: queries are registered, and events handed to queries are processed;
//! - `connectors`: sources and sinks stay connected, map and publish with few failures.
//!
//! The error store filling up (or dropping) degrades `event_pipeline`: failed events are about
//! to be lost.
//!
//! The status is `unhealthy` (HTTP 503) when the target is gone or a check failed, `degraded`
//! (200, with the reasons) when a check is degraded, `healthy` (200) otherwise.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use eventflux_abi::{ComponentCounter as CC, ComponentGauge as CG, ComponentKind, Outcome};

use crate::model::{Component, Engine};

/// An error store this full (held / capacity) degrades `event_pipeline`.
pub const ERROR_STORE_FULL: f64 = 0.9;

/// What makes a check degrade; from the `[health]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Rates are computed over this span.
    pub window: Duration,
    /// Errors per event processed above which the pipeline is degraded.
    pub max_error_ratio: f64,
    /// Backpressure events per second above which the pipeline is degraded.
    pub max_backpressure_per_second: f64,
    /// Events arriving (or sources connected) with nothing processed (or ingested) this long.
    pub stall_after: Duration,
    /// Window state above this many bytes is degraded; 0: no cap.
    pub max_window_state_bytes: u64,
    /// Window state that grew at every sample through the window to this factor is degraded.
    pub window_state_growth: f64,
}

/// How often the daemons take a health sample of each target.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Thresholds {
    /// How much history the checks need: the longer of the rate window and the stall
    /// threshold, and two samples more.
    pub fn history_span(&self) -> Duration {
        self.window.max(self.stall_after) + SAMPLE_EVERY * 2
    }
}

impl From<&crate::config::Health> for Thresholds {
    fn from(h: &crate::config::Health) -> Thresholds {
        Thresholds {
            window: h.window,
            max_error_ratio: h.max_error_ratio,
            max_backpressure_per_second: h.max_backpressure_per_second,
            stall_after: h.stall_after,
            max_window_state_bytes: h.max_window_state_bytes,
            window_state_growth: h.window_state_growth,
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            window: Duration::from_secs(30),
            max_error_ratio: 0.05,
            max_backpressure_per_second: 1.0,
            stall_after: Duration::from_secs(10),
            max_window_state_bytes: 0,
            window_state_growth: 2.0,
        }
    }
}

/// The counts the checks compare over time, of one engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub ingested: u64,
    pub sent: u64,
    pub processed: u64,
    pub errors: u64,
    pub backpressure: u64,
    pub window_state_bytes: u64,
    pub connections_active: u64,
    /// Active sources and sinks whose `connected` gauge reads 0.
    pub connectors_down: u64,
    pub source_events: u64,
    pub source_mapping_errors: u64,
    pub sink_events: u64,
    pub sink_failures: u64,
    pub error_store_dropped: u64,
    pub snapshot_failures: u64,
    pub junction_dropped: u64,
    /// Events the joins' windows hold.
    pub join_state: u64,
    /// Patterns' partial matches alive.
    pub partial_matches: u64,
}

/// The active sources and sinks that say they are disconnected.
fn disconnected(e: &Engine) -> impl Iterator<Item = &Component> {
    e.components.values().filter(|c| {
        c.active
            && match c.kind {
                Some(ComponentKind::Source) => c.gauge(CG::SourceConnected) == Some(0),
                Some(ComponentKind::Sink) => c.gauge(CG::SinkConnected) == Some(0),
                _ => false,
            }
    })
}

impl Totals {
    pub fn of(e: &Engine) -> Totals {
        Totals {
            ingested: e.ingested_total(),
            // Only what streams hand to running queries: a stream whose subscribers are gone
            // cannot stall the runtime.
            sent: e.streams.values().filter(|s| s.subscribers > 0).map(|s| s.sent).sum(),
            processed: e.processed_total(),
            errors: e.errors_total(),
            backpressure: e.backpressure_total(),
            window_state_bytes: e.memory().window_state,
            connections_active: e.connections_active(),
            connectors_down: disconnected(e).count() as u64,
            source_events: e.component_total(CC::SourceEvents),
            source_mapping_errors: e.component_total(CC::SourceMappingErrors),
            sink_events: e.component_total(CC::SinkEvents),
            sink_failures: e.component_total(CC::SinkFailures),
            error_store_dropped: e.component_total(CC::ErrorStoreDropped),
            junction_dropped: e.component_total(CC::JunctionDropped),
            join_state: e.component_gauges(CG::JoinState),
            partial_matches: e.component_gauges(CG::PatternPartialMatches),
            snapshot_failures: e
                .components
                .values()
                .filter_map(|c| c.counters.get(&(CC::PersistenceSnapshots, Outcome::Failure.code())))
                .sum(),
        }
    }
}

/// Samples of one engine's [`Totals`], oldest first, kept as long as the checks look back.
#[derive(Debug, Clone, Default)]
pub struct History {
    samples: VecDeque<(Instant, Totals)>,
}

impl History {
    /// Records a sample, forgetting those older than `keep` before it.
    pub fn push(&mut self, at: Instant, totals: Totals, keep: Duration) {
        self.samples.push_back((at, totals));
        while self.samples.front().is_some_and(|(t, _)| at.duration_since(*t) > keep) {
            self.samples.pop_front();
        }
    }

    /// The newest sample at least `span` before `now` (a rate then covers the whole span), or
    /// the oldest there is while the history is shorter than that.
    fn at_least(&self, now: Instant, span: Duration) -> Option<&(Instant, Totals)> {
        self.samples.iter().rev().find(|(t, _)| now.duration_since(*t) >= span).or_else(|| self.samples.front())
    }

    /// Samples within `span` before `now`, oldest first.
    fn within(&self, now: Instant, span: Duration) -> impl Iterator<Item = &(Instant, Totals)> {
        self.samples.iter().filter(move |(t, _)| now.duration_since(*t) <= span)
    }

    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

/// Rates are judged only over at least this much history (or the whole window, if shorter):
/// counts arrive once per flush interval (1 s by default), so a rate over a shorter span is
/// mostly the luck of where the flushes fell.
const MIN_SPAN: Duration = Duration::from_secs(5);
/// The error ratio is judged only over at least this many events processed.
const MIN_EVENTS: u64 = 100;

/// Where a state gauge started the window if it only grew through it, to `window_state_growth`
/// times that at least: state that never expires. Gauges change only when the engine flushes,
/// so repeated samples say nothing; every change must be a growth (three at least), from a
/// non-empty start (a window filling up from empty is not that).
fn only_grew(history: &History, now: Instant, t: &Thresholds, pick: fn(&Totals) -> u64, cur: u64) -> Option<u64> {
    let mut changes: Vec<u64> = history.within(now, t.window).map(|(_, s)| pick(s)).collect();
    changes.push(cur);
    changes.dedup();
    let start = changes[0];
    let always_grew = changes.len() >= 3 && changes.windows(2).all(|w| w[1] > w[0]);
    (always_grew && start > 0 && cur as f64 >= start as f64 * t.window_state_growth).then_some(start)
}

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Ok,
    Degraded,
    Failed,
}

/// The overall status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Status {
    /// 503 only when unhealthy: a degraded engine still serves.
    pub fn http_code(self) -> u16 {
        if self == Status::Unhealthy { 503 } else { 200 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checks {
    pub event_pipeline: Check,
    pub state_backend: Check,
    pub query_runtime: Check,
    pub connectors: Check,
}

/// The target as the daemon holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    /// `running`, `exited` or `execd`.
    pub state: &'static str,
    pub executable: String,
}

/// The observer's own part of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObserverInfo {
    /// The daemon's phase: `attached`, `target_gone` (grace period, or waiting for a successor
    /// with `--follow`), `draining`.
    pub phase: &'static str,
    pub ready: bool,
    pub probes_attached: usize,
    pub probes_expected: usize,
    pub sites_attached: usize,
    /// Sites not attached because their code was not the nop their note promised (the latest,
    /// with the bytes found); empty when every site checked out.
    pub sites_refused: Vec<crate::find::usdt::verify::RefusedSite>,
    /// Registrations (stream and query names) the kernel side could not pass on: its ring
    /// buffer was full. Non-zero means names and the query count are incomplete.
    pub registrations_lost: u64,
    /// Seconds since an eBPF program last ran (a probe hit); `null` before the first.
    pub last_probe_hit_seconds_ago: Option<f64>,
    pub dropped_events: u64,
    pub uptime_seconds: f64,
    /// The OTLP exporter, when traces are exported: its endpoint, spans exported and dropped,
    /// the last error. Its trouble does not make the engine unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<crate::model::OtlpState>,
}

/// The `/health` body: the design document's fields first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub status: Status,
    pub uptime_seconds: u64,
    pub queries_running: usize,
    pub streams_active: usize,
    pub memory_usage_mb: u64,
    pub checks: Checks,
    /// Why the status is not healthy, one line per finding, prefixed by its check.
    pub reasons: Vec<String>,
    pub target: TargetInfo,
    pub observer: ObserverInfo,
}

/// What the daemon knows beyond the model.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: Instant,
    pub target: TargetInfo,
    /// Why the target is not observed any more, if it is not.
    pub gone: Option<String>,
    pub observer: ObserverInfo,
}

struct Finding {
    check: Check,
    reasons: Vec<String>,
}

impl Finding {
    fn new() -> Finding {
        Finding { check: Check::Ok, reasons: Vec::new() }
    }

    fn raise(&mut self, to: Check, name: &str, reason: String) {
        self.check = self.check.max(to);
        self.reasons.push(format!("{name}: {reason}"));
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Evaluates the checks of `engine` (`None`: nothing observed yet) against its history.
pub fn evaluate(engine: Option<&Engine>, history: &History, t: &Thresholds, ctx: Context) -> Report {
    let now = ctx.now;
    let empty = Engine::default();
    let e = engine.unwrap_or(&empty);
    let cur = Totals::of(e);

    let mut pipeline = Finding::new();
    let judged =
        history.at_least(now, t.window).filter(|(then, _)| now.duration_since(*then) >= t.window.min(MIN_SPAN));
    if let Some((then, old)) = judged {
        let span = now.duration_since(*then).as_secs_f64();
        let processed = cur.processed.saturating_sub(old.processed);
        let errors = cur.errors.saturating_sub(old.errors);
        if processed >= MIN_EVENTS && errors as f64 / processed as f64 > t.max_error_ratio {
            pipeline.raise(
                Check::Degraded,
                "event_pipeline",
                format!(
                    "error ratio {:.1}% over the last {span:.0}s exceeds {:.1}% ({errors} errors in {processed} events)",
                    errors as f64 / processed as f64 * 100.0,
                    t.max_error_ratio * 100.0
                ),
            );
        }
        let bp = cur.backpressure.saturating_sub(old.backpressure);
        if span > 0.0 && bp as f64 / span > t.max_backpressure_per_second {
            pipeline.raise(
                Check::Degraded,
                "event_pipeline",
                format!(
                    "backpressure {:.1}/s over the last {span:.0}s exceeds {}/s",
                    bp as f64 / span,
                    t.max_backpressure_per_second
                ),
            );
        }
    }
    let mut connectors = Finding::new();
    if let Some((then, old)) = judged {
        let span = now.duration_since(*then).as_secs_f64();
        let ratios = [
            (
                "source mapping errors",
                "inputs read",
                cur.source_mapping_errors,
                old.source_mapping_errors,
                cur.source_events,
                old.source_events,
            ),
            (
                "sink failures",
                "events published",
                cur.sink_failures,
                old.sink_failures,
                cur.sink_events,
                old.sink_events,
            ),
        ];
        for (what, of, bad, bad_then, good, good_then) in ratios {
            let (bad, good) = (bad.saturating_sub(bad_then), good.saturating_sub(good_then));
            let all = bad + good;
            if all >= MIN_EVENTS && bad as f64 / all as f64 > t.max_error_ratio {
                connectors.raise(
                    Check::Degraded,
                    "connectors",
                    format!(
                        "{what} {:.1}% over the last {span:.0}s exceed {:.1}% ({bad} of {all} {of})",
                        bad as f64 / all as f64 * 100.0,
                        t.max_error_ratio * 100.0
                    ),
                );
            }
        }
        // Events lost over the window: (who lost them, what, why).
        let losses = [
            (
                "stream junctions dropped",
                "events",
                "their subscribers' queues stayed full",
                cur.junction_dropped.saturating_sub(old.junction_dropped),
            ),
            (
                "the error store dropped",
                "failed events",
                "it is full",
                cur.error_store_dropped.saturating_sub(old.error_store_dropped),
            ),
        ];
        for (who, what, why, n) in losses.into_iter().filter(|l| l.3 > 0) {
            pipeline.raise(
                Check::Degraded,
                "event_pipeline",
                format!("{who} {n} {what} in the last {span:.0}s: {why}"),
            );
        }
    }
    for c in e.components.values().filter(|c| c.active && c.kind == Some(ComponentKind::ErrorStore)) {
        let (Some(held), Some(capacity)) = (c.gauge(CG::ErrorStoreSize), c.gauge(CG::ErrorStoreCapacity)) else {
            continue;
        };
        if capacity > 0 && held as f64 >= capacity as f64 * ERROR_STORE_FULL {
            pipeline.raise(
                Check::Degraded,
                "event_pipeline",
                format!(
                    "error store {} holds {held} of {capacity} events ({:.0}%): failed events are lost once it is full",
                    c.name,
                    held as f64 / capacity as f64 * 100.0
                ),
            );
        }
    }

    // Stalls need a sample that is really `stall_after` old: not in the first seconds.
    let stalled = history.samples.iter().rev().find(|(at, _)| now.duration_since(*at) >= t.stall_after);
    if let Some((_, old)) = stalled {
        let sources_connected =
            cur.connections_active > 0 && history.within(now, t.stall_after).all(|(_, s)| s.connections_active > 0);
        if sources_connected && cur.ingested == old.ingested {
            pipeline.raise(
                Check::Degraded,
                "event_pipeline",
                format!(
                    "{} sources connected but no event ingested for {}",
                    cur.connections_active,
                    secs(t.stall_after)
                ),
            );
        }
    }

    if stalled.is_some()
        && cur.connectors_down > 0
        && history.within(now, t.stall_after).all(|(_, s)| s.connectors_down > 0)
    {
        let names: Vec<String> = disconnected(e)
            .map(|c| format!("{} {}", c.kind.map_or("component", ComponentKind::label), c.name))
            .collect();
        connectors.raise(
            Check::Degraded,
            "connectors",
            format!("{} disconnected for {} or more", names.join(", "), secs(t.stall_after)),
        );
    }

    let mut state = Finding::new();
    if let Some((then, old)) = judged {
        let failed = cur.snapshot_failures.saturating_sub(old.snapshot_failures);
        if failed > 0 {
            state.raise(
                Check::Degraded,
                "state_backend",
                format!(
                    "{failed} snapshots failed in the last {:.0}s: a restart would restore older state",
                    now.duration_since(*then).as_secs_f64()
                ),
            );
        }
    }
    if t.max_window_state_bytes > 0 && cur.window_state_bytes > t.max_window_state_bytes {
        state.raise(
            Check::Degraded,
            "state_backend",
            format!("window state {} bytes exceeds the cap of {}", cur.window_state_bytes, t.max_window_state_bytes),
        );
    }
    let covers = history.samples.front().is_some_and(|(at, _)| now.duration_since(*at) >= t.window);
    if covers {
        let grown = [
            ("window state", "bytes", (|s: &Totals| s.window_state_bytes) as fn(&Totals) -> u64),
            ("join state", "events", |s: &Totals| s.join_state),
            ("pattern partial matches", "", |s: &Totals| s.partial_matches),
        ];
        for (what, unit, pick) in grown {
            if let Some(start) = only_grew(history, now, t, pick, pick(&cur)) {
                let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
                state.raise(
                    Check::Degraded,
                    "state_backend",
                    format!("{what} only grew for {}, from {start} to {}{unit}", secs(t.window), pick(&cur)),
                );
            }
        }
    }

    let mut runtime = Finding::new();
    let lost = ctx.observer.registrations_lost;
    if lost > 0 {
        // Never "no query is registered" when the names were lost on their way.
        runtime.raise(
            Check::Degraded,
            "query_runtime",
            format!("{lost} registrations were lost (the registration ring buffer was full): query names and the query count are incomplete"),
        );
    } else if engine.is_some_and(|e| e.queries_running() == 0) {
        runtime.raise(Check::Degraded, "query_runtime", "no query is registered".into());
    }
    if let Some((_, old)) = stalled {
        let sent = cur.sent.saturating_sub(old.sent);
        if sent > 0 && cur.processed == old.processed {
            runtime.raise(
                Check::Failed,
                "query_runtime",
                format!("{sent} events handed to queries in the last {} but none processed", secs(t.stall_after)),
            );
        }
    }

    let mut reasons = Vec::new();
    let mut status = Status::Healthy;
    if let Some(gone) = &ctx.gone {
        reasons.push(format!("target: {gone}"));
        status = Status::Unhealthy;
    }
    let checks = Checks {
        event_pipeline: pipeline.check,
        state_backend: state.check,
        query_runtime: runtime.check,
        connectors: connectors.check,
    };
    for f in [pipeline, state, runtime, connectors] {
        status = match (status, f.check) {
            (Status::Unhealthy, _) | (_, Check::Failed) => Status::Unhealthy,
            (_, Check::Degraded) => Status::Degraded,
            (s, Check::Ok) => s,
        };
        reasons.extend(f.reasons);
    }
    let process = e.process;
    Report {
        status,
        uptime_seconds: process.map_or(0, |p| p.uptime_seconds as u64),
        queries_running: e.queries_running(),
        streams_active: e.streams_registered(),
        memory_usage_mb: e.memory().rss / (1024 * 1024),
        checks,
        reasons,
        target: ctx.target,
        observer: ctx.observer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Query, Stream};

    fn engine(t: Totals, queries: bool) -> Engine {
        let mut e = Engine { pid: 1, ..Engine::default() };
        let mut s = Stream { id: 0, name: "In".into(), registered: true, ..Stream::default() };
        s.received_from_sources = t.ingested;
        s.sent = t.sent;
        s.backpressure = t.backpressure;
        s.subscribers = 1;
        e.streams.insert(0, s);
        let mut q = Query { id: 0, name: "q".into(), registered: queries, active: queries, ..Query::default() };
        q.processed.insert(0, t.processed);
        q.errors.insert(1, t.errors);
        q.window_bytes = Some(t.window_state_bytes);
        e.queries.insert(0, q);
        if t.connections_active > 0 {
            e.connections.insert(1, crate::model::Connections { opened: t.connections_active, ..Default::default() });
        }
        e
    }

    fn ctx(now: Instant) -> Context {
        Context {
            now,
            target: TargetInfo { pid: 1, state: "running", executable: "x".into() },
            gone: None,
            observer: ObserverInfo {
                phase: "attached",
                ready: true,
                probes_attached: 1,
                probes_expected: 1,
                sites_attached: 1,
                sites_refused: Vec::new(),
                registrations_lost: 0,
                last_probe_hit_seconds_ago: None,
                dropped_events: 0,
                uptime_seconds: 1.0,
                otlp: None,
            },
        }
    }

    /// History of one sample per second for `n` seconds, each from `f(i)`.
    fn history(start: Instant, n: u64, f: impl Fn(u64) -> Totals) -> History {
        let mut h = History::default();
        for i in 0..n {
            h.push(start + Duration::from_secs(i), f(i), Duration::from_secs(120));
        }
        h
    }

    fn flowing(i: u64) -> Totals {
        Totals { ingested: i * 1000, sent: i * 1000, processed: i * 1000, errors: i * 10, ..Totals::default() }
    }

    /// A sink and an error store with these figures, added to `e`.
    fn with_components(mut e: Engine, connected: u64, published: u64, failed: u64, held: u64, dropped: u64) -> Engine {
        let sink = Component {
            id: 1,
            name: "out_kafka".into(),
            registered: true,
            active: true,
            kind: Some(ComponentKind::Sink),
            counters: [((CC::SinkEvents, 0), published), ((CC::SinkFailures, 2), failed)].into(),
            gauges: [((CG::SinkConnected, 0), connected)].into(),
            ..Component::default()
        };
        let store = Component {
            id: 2,
            name: "errors".into(),
            registered: true,
            active: true,
            kind: Some(ComponentKind::ErrorStore),
            counters: [((CC::ErrorStoreDropped, 0), dropped)].into(),
            gauges: [((CG::ErrorStoreSize, 0), held), ((CG::ErrorStoreCapacity, 0), 100)].into(),
            ..Component::default()
        };
        e.components.insert(1, sink);
        e.components.insert(2, store);
        e
    }

    fn totals(e: &Engine) -> Totals {
        Totals::of(e)
    }

    /// A sink disconnected through the stall time, one failing more than the error ratio, and
    /// an error store nearly full or dropping: each degrades, and says which component.
    #[test]
    fn connectors_and_the_error_store_degrade_and_name_the_component() {
        let start = Instant::now();
        let t = Thresholds { window: Duration::from_secs(10), ..Thresholds::default() };
        let at = |i: u64, connected: u64, failed_per_s: u64, held: u64, dropped_per_s: u64| {
            with_components(engine(flowing(i), true), connected, i * 1000, i * failed_per_s, held, i * dropped_per_s)
        };
        let now = start + Duration::from_secs(30);
        let run = |connected, failed, held, dropped| {
            let h = history(start, 30, |i| totals(&at(i, connected, failed, held, dropped)));
            evaluate(Some(&at(30, connected, failed, held, dropped)), &h, &t, ctx(now))
        };
        let r = run(1, 0, 10, 0);
        assert_eq!(r.status, Status::Healthy, "{:?}", r.reasons);
        let r = run(0, 0, 10, 0);
        assert_eq!(r.checks.connectors, Check::Degraded);
        assert_eq!(r.reasons, ["connectors: sink out_kafka disconnected for 10s or more"]);
        let r = run(1, 100, 10, 0);
        assert!(r.reasons[0].starts_with("connectors: sink failures 9.1% over the last 10s"), "{:?}", r.reasons);
        let r = run(1, 0, 95, 0);
        assert_eq!(r.checks.event_pipeline, Check::Degraded);
        assert!(r.reasons[0].contains("error store errors holds 95 of 100 events (95%)"), "{:?}", r.reasons);
        let r = run(1, 0, 100, 2);
        assert!(r.reasons.iter().any(|l| l.contains("dropped 20 failed events")), "{:?}", r.reasons);
        // A sink that disconnected just now is not yet a finding.
        let h = history(start, 30, |i| totals(&at(i, u64::from(i < 25), 0, 10, 0)));
        let r = evaluate(Some(&at(30, 0, 0, 10, 0)), &h, &t, ctx(now));
        assert_eq!(r.checks.connectors, Check::Ok, "{:?}", r.reasons);
    }

    /// Partial matches of a pattern that only grow through the window degrade the state
    /// backend, as window state does; ones that also shrink do not.
    #[test]
    fn partial_matches_growing_without_bound_degrade_the_state_backend() {
        let start = Instant::now();
        let t = Thresholds { window: Duration::from_secs(10), ..Thresholds::default() };
        let growing = |i: u64| Totals { partial_matches: i * i + 1, ..flowing(i) };
        let now = start + Duration::from_secs(20);
        let h = history(start, 20, growing);
        let mut e = engine(growing(20), true);
        e.components.insert(
            9,
            Component {
                id: 9,
                name: "p".into(),
                registered: true,
                active: true,
                kind: Some(ComponentKind::Pattern),
                gauges: [((CG::PatternPartialMatches, 0), growing(20).partial_matches)].into(),
                ..Component::default()
            },
        );
        let r = evaluate(Some(&e), &h, &t, ctx(now));
        assert_eq!(r.checks.state_backend, Check::Degraded, "{:?}", r.reasons);
        assert_eq!(r.reasons, ["state_backend: pattern partial matches only grew for 10s, from 101 to 401"]);
        let saw = |i: u64| Totals { partial_matches: 100 + (i % 3) * 20, ..flowing(i) };
        let h = history(start, 20, saw);
        let r = evaluate(Some(&engine(saw(20), true)), &h, &t, ctx(now));
        assert_eq!(r.checks.state_backend, Check::Ok, "{:?}", r.reasons);
    }

    #[test]
    fn a_flowing_engine_is_healthy() {
        let start = Instant::now();
        let t = Thresholds::default();
        let h = history(start, 40, flowing);
        let now = start + Duration::from_secs(40);
        let r = evaluate(Some(&engine(flowing(40), true)), &h, &t, ctx(now));
        assert_eq!(r.status, Status::Healthy, "{:?}", r.reasons);
        assert!(r.reasons.is_empty());
        assert_eq!(r.status.http_code(), 200);
    }

    #[test]
    fn errors_above_the_ratio_degrade_the_pipeline() {
        let start = Instant::now();
        let t = Thresholds { window: Duration::from_secs(5), ..Thresholds::default() };
        let errors = |i: u64| Totals { errors: if i < 30 { i * 10 } else { 300 + (i - 30) * 200 }, ..flowing(i) };
        let h = history(start, 40, errors);
        let now = start + Duration::from_secs(40);
        let r = evaluate(Some(&engine(errors(40), true)), &h, &t, ctx(now));
        assert_eq!((r.status, r.checks.event_pipeline), (Status::Degraded, Check::Degraded));
        assert!(r.reasons[0].starts_with("event_pipeline: error ratio 20.0%"), "{:?}", r.reasons);
        // The window moves past the burst: healthy again.
        let later = |i: u64| {
            if i < 40 { errors(i) } else { Totals { errors: errors(40).errors + (i - 40) * 10, ..flowing(i) } }
        };
        let h = history(start, 50, later);
        let r = evaluate(Some(&engine(later(50), true)), &h, &t, ctx(start + Duration::from_secs(50)));
        assert_eq!(r.status, Status::Healthy, "{:?}", r.reasons);
    }

    #[test]
    fn backpressure_above_the_rate_degrades_the_pipeline() {
        let start = Instant::now();
        let t = Thresholds { window: Duration::from_secs(10), ..Thresholds::default() };
        let bp = |i: u64| Totals { backpressure: i * 5, ..flowing(i) };
        let h = history(start, 20, bp);
        let r = evaluate(Some(&engine(bp(20), true)), &h, &t, ctx(start + Duration::from_secs(20)));
        assert_eq!(r.checks.event_pipeline, Check::Degraded);
        assert!(r.reasons[0].contains("backpressure 5.0/s"), "{:?}", r.reasons);
    }

    #[test]
    fn connected_sources_without_events_degrade_after_the_stall_time() {
        let start = Instant::now();
        let t = Thresholds::default();
        let idle = |i: u64| Totals { connections_active: 2, ..flowing(i.min(5)) };
        let h = history(start, 30, idle);
        let r = evaluate(Some(&engine(idle(30), true)), &h, &t, ctx(start + Duration::from_secs(30)));
        assert_eq!(r.checks.event_pipeline, Check::Degraded);
        assert!(r.reasons[0].contains("2 sources connected but no event ingested for 10s"), "{:?}", r.reasons);
        // Not connected: quiet is fine.
        let quiet = |i: u64| flowing(i.min(5));
        let h = history(start, 30, quiet);
        let r = evaluate(Some(&engine(quiet(30), true)), &h, &t, ctx(start + Duration::from_secs(30)));
        assert_eq!(r.status, Status::Healthy, "{:?}", r.reasons);
    }

    #[test]
    fn window_state_growing_without_bound_degrades_the_state_backend() {
        let start = Instant::now();
        let t = Thresholds { window: Duration::from_secs(10), ..Thresholds::default() };
        let growing = |i: u64| Totals { window_state_bytes: 1000 + i * i * 100, ..flowing(i) };
        let h = history(start, 20, growing);
        let r = evaluate(Some(&engine(growing(20), true)), &h, &t, ctx(start + Duration::from_secs(20)));
        assert_eq!(r.checks.state_backend, Check::Degraded, "{:?}", r.reasons);
        // Repeated samples between flushes do not hide growth.
        let stepped = |i: u64| Totals { window_state_bytes: 1000 + (i / 2) * (i / 2) * 400, ..flowing(i) };
        let h = history(start, 20, stepped);
        let r = evaluate(Some(&engine(stepped(20), true)), &h, &t, ctx(start + Duration::from_secs(20)));
        assert_eq!(r.checks.state_backend, Check::Degraded, "{:?}", r.reasons);
        // Filling up from empty is not growth without bound.
        let filling = |i: u64| Totals { window_state_bytes: i * i * 100, ..flowing(i) };
        let h = history(start, 10, filling);
        let r = evaluate(Some(&engine(filling(10), true)), &h, &t, ctx(start + Duration::from_secs(10)));
        assert_eq!(r.checks.state_backend, Check::Ok, "{:?}", r.reasons);
        // Growing, then shrinking: fine.
        let saw = |i: u64| Totals { window_state_bytes: 1000 + (i % 5) * 500, ..flowing(i) };
        let h = history(start, 20, saw);
        let r = evaluate(Some(&engine(saw(20), true)), &h, &t, ctx(start + Duration::from_secs(20)));
        assert_eq!(r.checks.state_backend, Check::Ok);
        // Over the cap.
        let t = Thresholds { max_window_state_bytes: 100, ..t };
        let r = evaluate(Some(&engine(saw(20), true)), &h, &t, ctx(start + Duration::from_secs(20)));
        assert!(r.reasons.iter().any(|r| r.contains("exceeds the cap of 100")), "{:?}", r.reasons);
    }

    #[test]
    fn rates_wait_for_enough_history() {
        let start = Instant::now();
        let t = Thresholds::default();
        // Two seconds of heavy errors and backpressure: not judged yet.
        let bad = |i: u64| Totals { errors: i * 900, backpressure: i * 50, ..flowing(i) };
        let h = history(start, 2, bad);
        let r = evaluate(Some(&engine(bad(2), true)), &h, &t, ctx(start + Duration::from_secs(2)));
        assert_eq!(r.status, Status::Healthy, "{:?}", r.reasons);
        let h = history(start, 6, bad);
        let r = evaluate(Some(&engine(bad(6), true)), &h, &t, ctx(start + Duration::from_secs(6)));
        assert_eq!(r.checks.event_pipeline, Check::Degraded);
        // Too few events for a ratio.
        let few = |i: u64| Totals { processed: i * 2, errors: i * 2, ..Totals::default() };
        let h = history(start, 40, few);
        let r = evaluate(Some(&engine(few(40), true)), &h, &t, ctx(start + Duration::from_secs(40)));
        assert_eq!(r.checks.event_pipeline, Check::Ok, "{:?}", r.reasons);
    }

    #[test]
    fn a_stuck_runtime_fails_and_no_queries_degrades() {
        let start = Instant::now();
        let t = Thresholds::default();
        let stuck = |i: u64| Totals { processed: 5000, ..flowing(i) };
        let h = history(start, 30, stuck);
        let r = evaluate(Some(&engine(stuck(30), true)), &h, &t, ctx(start + Duration::from_secs(30)));
        assert_eq!((r.status, r.checks.query_runtime), (Status::Unhealthy, Check::Failed));
        assert_eq!(r.status.http_code(), 503);
        let h = history(start, 30, flowing);
        let r = evaluate(Some(&engine(flowing(30), false)), &h, &t, ctx(start + Duration::from_secs(30)));
        assert_eq!(r.checks.query_runtime, Check::Degraded);
        assert!(r.reasons.contains(&"query_runtime: no query is registered".to_owned()));
        // Names lost on their way are said to be lost, never "no query".
        let mut lossy = ctx(start + Duration::from_secs(30));
        lossy.observer.registrations_lost = 7;
        let r = evaluate(Some(&engine(flowing(30), false)), &h, &t, lossy);
        assert_eq!(r.checks.query_runtime, Check::Degraded);
        assert!(r.reasons.iter().all(|r| !r.contains("no query is registered")), "{:?}", r.reasons);
        assert!(r.reasons.iter().any(|r| r.contains("7 registrations were lost")), "{:?}", r.reasons);
    }

    #[test]
    fn a_gone_target_is_unhealthy_with_the_reason() {
        let now = Instant::now();
        let mut c = ctx(now);
        c.gone = Some("process 1 exited".into());
        let r = evaluate(None, &History::default(), &Thresholds::default(), c);
        assert_eq!(r.status, Status::Unhealthy);
        assert_eq!(r.reasons, vec!["target: process 1 exited".to_owned()]);
        let json = serde_json::to_value(&r).expect("serialize");
        assert_eq!(json["status"], "unhealthy");
        assert_eq!(json["checks"]["event_pipeline"], "ok");
        for key in ["uptime_seconds", "queries_running", "streams_active", "memory_usage_mb", "observer", "target"] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }
    }
}
