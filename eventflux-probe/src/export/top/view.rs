//! What one refresh of `top` shows: rates between the newest reading and the one a window
//! before it, and the rows in the order and selection the [`Controls`](super::controls) ask
//! for. It is also the `--json` document, field for field.
//!
//! Rates are over a window (5 s by default), not over one refresh: the engine hands its
//! counts over once per flush interval (1 s by default), so a rate over one second is mostly
//! the luck of how many flushes fell in it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use super::reading::{EngineReading, QueryReading, Reading};
use crate::model::hist::HistData;

/// One refresh.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    /// Seconds the rates span; 0 until there are two readings.
    pub window_seconds: f64,
    pub engines: Vec<EngineRow>,
    /// Every engine's queries, by engine, in the order asked for.
    pub queries: Vec<QueryRow>,
    pub streams: Vec<StreamRow>,
    pub observer: ObserverRow,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineRow {
    pub pid: u32,
    pub exe: String,
    /// `running`, `exited` or `execd`.
    pub state: String,
    pub uptime_seconds: Option<f64>,
    pub events_in_per_second: Option<f64>,
    pub events_out_per_second: Option<f64>,
    /// Percent of one core: the process's, and what CPU samples attributed to queries.
    pub cpu_percent: Option<f64>,
    pub attributed_cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub status: Option<String>,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryRow {
    pub pid: u32,
    pub name: String,
    pub events_in_per_second: Option<f64>,
    pub rows_out_per_second: Option<f64>,
    pub batches_per_second: Option<f64>,
    /// Batch latency of the batches sampled within the window.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub errors_per_second: Option<f64>,
    pub backpressure_per_second: Option<f64>,
    pub window_bytes: Option<u64>,
    pub groups: Option<u64>,
    pub stages: Vec<StageRow>,
    /// The window's latency histogram (for the detail view; not in `--json`).
    #[serde(skip)]
    pub latency: Option<HistData>,
}

/// A stage of a query, over the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageRow {
    pub stage: String,
    /// Samples of its self time.
    pub samples: u64,
    pub mean_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamRow {
    pub pid: u32,
    pub name: String,
    pub events_per_second: Option<f64>,
    /// The fullest subscriber queue, 0 to 1 (async junctions only).
    pub queue_fill: Option<f64>,
}

/// The kernel programs' cost: what looking costs the engines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ObserverRow {
    pub program_runs_per_second: Option<f64>,
    pub nanoseconds_per_run: Option<f64>,
    /// Percent of one core the programs take (their run time, in the engines' threads).
    pub cpu_percent: Option<f64>,
    pub drops: u64,
}

/// The columns of the query table, in order: what `s` steps through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    Query,
    In,
    Out,
    Batches,
    P50,
    P99,
    Cpu,
    Errors,
    Backpressure,
    Window,
    Groups,
}

impl Column {
    pub const ALL: [Column; 11] = [
        Column::Query,
        Column::In,
        Column::Out,
        Column::Batches,
        Column::P50,
        Column::P99,
        Column::Cpu,
        Column::Errors,
        Column::Backpressure,
        Column::Window,
        Column::Groups,
    ];

    /// The column's heading.
    pub fn title(self) -> &'static str {
        match self {
            Column::Query => "QUERY",
            Column::In => "IN/s",
            Column::Out => "OUT/s",
            Column::Batches => "BATCH/s",
            Column::P50 => "P50",
            Column::P99 => "P99",
            Column::Cpu => "CPU%",
            Column::Errors => "ERR/s",
            Column::Backpressure => "BP/s",
            Column::Window => "WINDOW",
            Column::Groups => "GROUPS",
        }
    }

    /// The row's value in this column, for sorting (names sort separately).
    fn key(self, q: &QueryRow) -> Option<f64> {
        match self {
            Column::Query => None,
            Column::In => q.events_in_per_second,
            Column::Out => q.rows_out_per_second,
            Column::Batches => q.batches_per_second,
            Column::P50 => q.p50_seconds,
            Column::P99 => q.p99_seconds,
            Column::Cpu => q.cpu_percent,
            Column::Errors => q.errors_per_second,
            Column::Backpressure => q.backpressure_per_second,
            Column::Window => q.window_bytes.map(|b| b as f64),
            Column::Groups => q.groups.map(|g| g as f64),
        }
    }
}

/// How the rows are ordered and chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub column: Column,
    /// Largest first (names: Z first).
    pub descending: bool,
    /// Only queries and streams whose name contains this (any case).
    pub filter: String,
}

impl Default for Order {
    fn default() -> Self {
        Order { column: Column::In, descending: true, filter: String::new() }
    }
}

/// The reading to take rates against: the newest at least `window` before the last, or the
/// oldest there is; of those that `has` (an engine found or attached later has no earlier
/// base: its counts start at its attach).
fn base(readings: &VecDeque<Reading>, window: Duration, has: impl Fn(&Reading) -> bool) -> Option<&Reading> {
    let last = readings.back()?;
    let older = readings.iter().rev().skip(1).filter(|r| has(r));
    older.clone().find(|r| last.at.duration_since(r.at) >= window).or_else(|| older.last())
}

/// Seconds between two readings; `None` without a base.
fn span(now: &Reading, then: Option<&Reading>) -> Option<f64> {
    then.map(|t| now.at.duration_since(t.at).as_secs_f64()).filter(|s| *s > 0.0)
}

/// Per second between `then` and `now`.
fn rate(now: u64, then: u64, secs: f64) -> f64 {
    now.saturating_sub(then) as f64 / secs
}

/// The histogram of the samples taken between two readings.
fn delta(now: &HistData, then: Option<&HistData>) -> HistData {
    let Some(then) = then else { return now.clone() };
    let buckets: Vec<u64> = now
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(then.buckets.get(i).copied().unwrap_or(0)))
        .collect();
    // The window's maximum is not known: the top of its slowest bucket, within the total's.
    let max_ns = buckets
        .iter()
        .rposition(|n| *n > 0)
        .map_or(0, |i| eventflux_probe_common::hist::upper(i).min(now.max_ns.max(1)));
    HistData {
        count: now.count.saturating_sub(then.count),
        sum_ns: now.sum_ns.saturating_sub(then.sum_ns),
        max_ns,
        buckets,
        exemplars: BTreeMap::new(),
    }
}

fn quantile(h: &HistData, q: f64) -> Option<f64> {
    (h.count > 0).then(|| h.quantile_ns(q) as f64 / 1e9)
}

impl View {
    /// The view of the newest reading, rates against the one `window` before it.
    pub fn new(readings: &VecDeque<Reading>, window: Duration, order: &Order) -> View {
        let Some(now) = readings.back() else { return View::default() };
        let then = base(readings, window, |_| true);
        let secs = span(now, then);
        let mut view = View { window_seconds: secs.unwrap_or(0.0), ..View::default() };
        for e in now.engines.values() {
            let then = base(readings, window, |r| r.engines.contains_key(&e.pid));
            let secs = span(now, then);
            let old = then.and_then(|t| t.engines.get(&e.pid));
            view.engines.push(engine_row(e, old, secs));
            // Each row against its own base: a query or stream named only once its
            // registration arrived (`query<ID>` until then) has no earlier reading, not zero.
            for (name, q) in &e.queries {
                let then =
                    base(readings, window, |r| r.engines.get(&e.pid).is_some_and(|x| x.queries.contains_key(name)));
                let old = then.and_then(|t| t.engines.get(&e.pid)).and_then(|o| o.queries.get(name));
                view.queries.push(query_row(e.pid, name, q, old, span(now, then)));
            }
            for (name, s) in &e.streams {
                let then =
                    base(readings, window, |r| r.engines.get(&e.pid).is_some_and(|x| x.streams.contains_key(name)));
                let before = then.and_then(|t| t.engines.get(&e.pid)).and_then(|o| o.streams.get(name));
                view.streams.push(StreamRow {
                    pid: e.pid,
                    name: name.clone(),
                    events_per_second: span(now, then).zip(before).map(|(d, b)| rate(s.received, b.received, d)),
                    queue_fill: s.queue_fill,
                });
            }
        }
        let o = &now.observer;
        let old = then.map(|t| &t.observer);
        view.observer = ObserverRow {
            program_runs_per_second: secs.map(|d| rate(o.program_runs, old.map_or(0, |x| x.program_runs), d)),
            nanoseconds_per_run: old.and_then(|x| {
                let runs = o.program_runs.saturating_sub(x.program_runs);
                (runs > 0).then(|| (o.program_seconds - x.program_seconds).max(0.0) * 1e9 / runs as f64)
            }),
            cpu_percent: secs.zip(old).map(|(d, x)| (o.program_seconds - x.program_seconds).max(0.0) / d * 100.0),
            drops: o.drops,
        };
        view.order(order);
        view
    }

    /// Filters and sorts the query and stream rows.
    fn order(&mut self, order: &Order) {
        let wanted = order.filter.to_lowercase();
        let keep = |name: &str| wanted.is_empty() || name.to_lowercase().contains(&wanted);
        self.queries.retain(|q| keep(&q.name));
        self.streams.retain(|s| keep(&s.name));
        let column = order.column;
        self.queries.sort_by(|a, b| {
            let by_value = match column {
                Column::Query => a.name.cmp(&b.name),
                // Rows without a value sort below every value, whichever the direction.
                _ => match (column.key(a), column.key(b)) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Greater,
                    (None, Some(_)) => std::cmp::Ordering::Less,
                    (None, None) => std::cmp::Ordering::Equal,
                },
            };
            let by_value = if order.descending { by_value.reverse() } else { by_value };
            by_value.then_with(|| a.name.cmp(&b.name)).then(a.pid.cmp(&b.pid))
        });
    }
}

fn engine_row(e: &EngineReading, old: Option<&EngineReading>, secs: Option<f64>) -> EngineRow {
    let per_core = |now: Option<f64>, then: Option<f64>| match (now, then, secs) {
        (Some(n), Some(t), Some(d)) => Some((n - t).max(0.0) / d * 100.0),
        _ => None,
    };
    EngineRow {
        pid: e.pid,
        exe: e.exe.clone(),
        state: e.state.clone(),
        uptime_seconds: e.uptime_seconds,
        events_in_per_second: secs.map(|d| rate(e.ingested, old.map_or(0, |o| o.ingested), d)),
        events_out_per_second: secs.map(|d| rate(e.emitted, old.map_or(0, |o| o.emitted), d)),
        cpu_percent: per_core(e.cpu_seconds, old.and_then(|o| o.cpu_seconds)),
        attributed_cpu_percent: per_core(e.attributed_cpu_seconds, old.and_then(|o| o.attributed_cpu_seconds)),
        rss_bytes: e.rss_bytes,
        status: e.status.clone(),
        reasons: e.reasons.clone(),
    }
}

fn query_row(pid: u32, name: &str, q: &QueryReading, old: Option<&QueryReading>, secs: Option<f64>) -> QueryRow {
    // Without an earlier reading of the row, no rate: its counts are not all from the window.
    let secs = secs.filter(|_| old.is_some());
    let per_s = |now: u64, then: fn(&QueryReading) -> u64| secs.zip(old).map(|(d, o)| rate(now, then(o), d));
    let cpu_of = |stage: Option<&str>| -> Option<f64> {
        let sum = |r: &QueryReading| -> f64 {
            r.cpu.iter().filter(|(s, _)| stage.is_none_or(|want| want == s.as_str())).map(|(_, v)| v).sum()
        };
        let d = secs?;
        let then = old.map_or(0.0, sum);
        (!q.cpu.is_empty()).then(|| (sum(q) - then).max(0.0) / d * 100.0)
    };
    let latency = q.latency.as_ref().map(|h| delta(h, old.and_then(|o| o.latency.as_ref())));
    let stages = q
        .stages
        .iter()
        .map(|(stage, h)| {
            let d = delta(h, old.and_then(|o| o.stages.get(stage)));
            StageRow {
                stage: stage.clone(),
                samples: d.count,
                mean_seconds: (d.count > 0).then(|| d.sum_ns as f64 / d.count as f64 / 1e9),
                p50_seconds: quantile(&d, 0.50),
                p99_seconds: quantile(&d, 0.99),
                cpu_percent: cpu_of(Some(stage)),
            }
        })
        .collect::<Vec<_>>();
    // In the order a batch runs through them.
    let rank = |name: &str| eventflux_probe_common::stage::NAMES.iter().position(|n| *n == name).unwrap_or(usize::MAX);
    let mut stages = stages;
    stages.sort_by_key(|s| rank(&s.stage));
    // Where CPU samples fell outside the timed stages (the query's own code, component
    // operations, a pool's idle spinning) is a row of its own.
    for label in q.cpu.keys() {
        if !stages.iter().any(|s| &s.stage == label) {
            stages.push(StageRow { stage: label.clone(), cpu_percent: cpu_of(Some(label)), ..StageRow::default() });
        }
    }
    QueryRow {
        pid,
        name: name.to_owned(),
        events_in_per_second: per_s(q.processed, |o| o.processed),
        rows_out_per_second: per_s(q.emitted, |o| o.emitted),
        batches_per_second: per_s(q.batches, |o| o.batches),
        p50_seconds: latency.as_ref().and_then(|h| quantile(h, 0.50)),
        p99_seconds: latency.as_ref().and_then(|h| quantile(h, 0.99)),
        cpu_percent: cpu_of(None),
        errors_per_second: per_s(q.errors, |o| o.errors),
        backpressure_per_second: q
            .backpressure
            .zip(secs)
            .map(|(b, d)| rate(b, old.and_then(|o| o.backpressure).unwrap_or(0), d)),
        window_bytes: q.window_bytes,
        groups: q.groups,
        stages,
        latency,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::export::top::reading::{ObserverReading, StreamReading};

    fn reading(at: Instant, processed: u64, p99_bucket: usize) -> Reading {
        let mut h = HistData { buckets: vec![0; eventflux_probe_common::hist::BUCKETS], ..HistData::default() };
        h.buckets[p99_bucket] = processed / 100;
        h.count = processed / 100;
        h.max_ns = eventflux_probe_common::hist::upper(p99_bucket);
        let q = |name: &str, n: u64| {
            (
                name.to_owned(),
                QueryReading { processed: n, batches: n / 64, latency: Some(h.clone()), ..QueryReading::default() },
            )
        };
        let e = EngineReading {
            pid: 1,
            ingested: processed,
            queries: [q("alpha", processed), q("beta", processed * 2)].into(),
            streams: [("s".to_owned(), StreamReading { received: processed, queue_fill: Some(0.5) })].into(),
            ..EngineReading::default()
        };
        Reading {
            at,
            one_target: true,
            engines: [(1, e)].into(),
            observer: ObserverReading {
                program_runs: processed / 10,
                program_seconds: processed as f64 * 1e-8,
                drops: 0,
            },
        }
    }

    #[test]
    fn rates_span_the_window_and_latency_only_its_samples() {
        let t0 = Instant::now();
        let mut r = VecDeque::new();
        for (i, bucket) in [(0u64, 40), (1, 40), (2, 40), (3, 40), (4, 60), (5, 60), (6, 60)] {
            r.push_back(reading(t0 + Duration::from_secs(i), i * 1000, bucket));
        }
        // Readings 0..=6: the base of a 5 s window is reading 1.
        let v = View::new(&r, Duration::from_secs(5), &Order::default());
        assert_eq!(v.window_seconds, 5.0);
        let beta = &v.queries[0];
        assert_eq!(beta.name, "beta", "sorted by IN/s, largest first");
        assert_eq!(beta.events_in_per_second, Some(2000.0));
        assert_eq!(v.engines[0].events_in_per_second, Some(1000.0));
        assert_eq!(v.streams[0].events_per_second, Some(1000.0));
        assert_eq!(v.observer.program_runs_per_second, Some(100.0));
        // The window's histogram: totals of reading 6 less those of reading 1.
        let h = beta.latency.as_ref().expect("latency");
        assert_eq!(h.count, 50);

        let by_name = Order { column: Column::Query, descending: false, filter: "ALP".into() };
        let v = View::new(&r, Duration::from_secs(5), &by_name);
        assert_eq!(v.queries.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["alpha"]);
        assert!(v.streams.is_empty(), "the filter applies to streams too");
    }

    #[test]
    fn one_reading_has_no_rates() {
        let mut r = VecDeque::new();
        r.push_back(reading(Instant::now(), 1000, 40));
        let v = View::new(&r, Duration::from_secs(5), &Order::default());
        assert_eq!(v.queries.len(), 2);
        assert!(v.queries.iter().all(|q| q.events_in_per_second.is_none()));
        assert_eq!(v.window_seconds, 0.0);
    }
}
