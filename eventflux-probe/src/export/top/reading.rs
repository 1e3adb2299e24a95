//! One reading of the engines, in what `top` shows: totals since the attach, which two
//! readings turn into rates ([`super::view`]). A reading comes from the model of a service
//! this process runs ([`Reading::of_model`]), or from another observer's `/metrics` page
//! (protobuf, for the kernel's exact latency buckets) and `/health` ([`Reading::of_page`]).
//! Both sides name metrics through `export::metrics`, so a renamed metric breaks the build
//! here, not the `--url` view.

use std::collections::BTreeMap;
use std::time::Instant;

use eventflux_probe_common::{hist, stage};
use serde_json::Value;

use crate::export::metrics as m;
use crate::export::protobuf::{self, MetricFamily};
use crate::model::hist::HistData;
use crate::model::{Engine, Model};

/// Every engine at one instant, and the observer's programs.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    /// From an observer of one target (`run`'s `/health`), whose exit ends the figures; node
    /// mode's engines come and go.
    pub one_target: bool,
    pub engines: BTreeMap<u32, EngineReading>,
    pub observer: ObserverReading,
}

/// One engine's totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineReading {
    pub pid: u32,
    pub exe: String,
    /// `running`, `exited` or `execd`, as `/health` says.
    pub state: String,
    pub uptime_seconds: Option<f64>,
    /// CPU seconds of the process (user and system).
    pub cpu_seconds: Option<f64>,
    /// CPU seconds the samples attributed to queries; `None` without CPU samples.
    pub attributed_cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// `healthy`, `degraded` or `unhealthy`, and why.
    pub status: Option<String>,
    pub reasons: Vec<String>,
    /// Events from sources.
    pub ingested: u64,
    /// Rows the queries emitted.
    pub emitted: u64,
    pub queries: BTreeMap<String, QueryReading>,
    pub streams: BTreeMap<String, StreamReading>,
}

/// One query's totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryReading {
    pub processed: u64,
    pub emitted: u64,
    pub batches: u64,
    pub errors: u64,
    /// Times a producer found its queue full; `None` from a `/metrics` page, which counts
    /// backpressure by stream only.
    pub backpressure: Option<u64>,
    pub window_bytes: Option<u64>,
    pub groups: Option<u64>,
    /// Fill of its input queue, 0 to 1 (async junctions).
    pub queue_fill: Option<f64>,
    /// The streams it reads.
    pub inputs: Vec<String>,
    /// CPU seconds by stage label.
    pub cpu: BTreeMap<String, f64>,
    pub latency: Option<HistData>,
    /// Self time by stage name.
    pub stages: BTreeMap<String, HistData>,
}

/// One stream's totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamReading {
    /// Events that entered it (from sources and from queries).
    pub received: u64,
    /// The fullest queue of its subscribers, 0 to 1 (async junctions).
    pub queue_fill: Option<f64>,
}

/// The kernel programs' own totals: the cost of looking.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObserverReading {
    pub program_runs: u64,
    pub program_seconds: f64,
    pub drops: u64,
}

/// What `/health` says of one engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthOf {
    pub exe: String,
    pub state: String,
    pub status: Option<String>,
    pub reasons: Vec<String>,
}

/// The engines `/health` reports, by pid: `run`'s single report or node mode's `targets`.
pub fn health_by_pid(v: &Value) -> BTreeMap<u32, HealthOf> {
    fn one(report: &Value, pid: &Value, exe: &Value, state: &Value) -> Option<(u32, HealthOf)> {
        let pid = u32::try_from(pid.as_u64()?).ok()?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Some((
            pid,
            HealthOf {
                exe: text(exe).unwrap_or_default(),
                state: text(state).unwrap_or_else(|| "running".into()),
                status: text(&report["status"]),
                reasons: report["reasons"].as_array().into_iter().flatten().filter_map(text).collect(),
            },
        ))
    }
    match v["targets"].as_array() {
        Some(targets) => targets.iter().filter_map(|t| one(&t["health"], &t["pid"], &t["exe"], &t["state"])).collect(),
        None => {
            let t = &v["target"];
            // `run` before its first attach reports pid 0: no engine yet.
            one(v, &t["pid"], &t["executable"], &t["state"]).filter(|(pid, _)| *pid != 0).into_iter().collect()
        }
    }
}

impl Reading {
    /// A reading of a model this process holds, with its service's `/health` body.
    pub fn of_model(model: &Model, health: &Value, at: Instant) -> Reading {
        let health = health_by_pid(health);
        let engines = model
            .engines
            .values()
            .filter(|e| e.running.is_some() || health.contains_key(&e.pid))
            .map(|e| (e.pid, engine_of_model(e, health.get(&e.pid))))
            .collect();
        let o = &model.observer;
        let observer = ObserverReading {
            program_runs: o.programs.iter().map(|p| p.1).sum(),
            program_seconds: o.programs.iter().map(|p| p.2).sum(),
            drops: o.drops_total(),
        };
        Reading { at, one_target: false, engines, observer }
    }

    /// A reading of another observer's `/metrics` page in the protobuf format, with its
    /// `/health` body. Series of kinds `top` does not show are skipped.
    pub fn of_page(page: &[u8], health: &Value, at: Instant) -> Result<Reading, String> {
        let families =
            protobuf::decode(page).map_err(|e| format!("the /metrics page is not the protobuf exposition: {e}"))?;
        let mut r = page_reading(&families, &health_by_pid(health), at);
        r.one_target = !health["targets"].is_array();
        Ok(r)
    }
}

fn engine_of_model(e: &Engine, health: Option<&HealthOf>) -> EngineReading {
    let mut r = EngineReading { pid: e.pid, ..EngineReading::default() };
    if let Some(h) = health {
        r.exe = h.exe.clone();
        r.state = h.state.clone();
        r.status = h.status.clone();
        r.reasons = h.reasons.clone();
    } else {
        r.state = if e.running == Some(true) { "running" } else { "exited" }.into();
    }
    if let Some(p) = e.process {
        r.uptime_seconds = Some(p.uptime_seconds);
        r.cpu_seconds = Some(p.cpu_seconds);
        r.rss_bytes = Some(p.rss_bytes);
    }
    r.ingested = e.ingested_total();
    // The engine's totals over every query, stopped ones too: a total must not go down when a
    // query stops (its rate would read 0 for a window).
    r.emitted = e.queries.values().flat_map(|q| q.emitted.values()).sum();
    let sampled = e.cpu_outside_queries.is_some();
    let attributed: f64 = e.queries.values().flat_map(|q| q.cpu_seconds.values()).sum();
    for q in e.queries.values().filter(|q| q.active || !q.registered) {
        let stage_name = |s: u32| stage::NAMES.get(s as usize).map_or_else(|| format!("stage{s}"), |n| (*n).to_owned());
        let cpu: BTreeMap<String, f64> = q.cpu_seconds.iter().map(|(s, v)| (s.label(), *v)).collect();
        let emitted: u64 = q.emitted.values().sum();
        r.queries.insert(
            q.name.clone(),
            QueryReading {
                processed: q.processed_total(),
                emitted,
                batches: q.batches,
                errors: q.errors_total(),
                backpressure: Some(q.backpressure),
                window_bytes: q.window_bytes,
                groups: q.groups,
                queue_fill: q.buffer_utilization,
                inputs: q.inputs.iter().map(|s| e.stream_name(*s)).collect(),
                cpu,
                latency: q.latency.clone(),
                stages: q.stages.iter().map(|(s, h)| (stage_name(*s), h.clone())).collect(),
            },
        );
    }
    r.attributed_cpu_seconds = sampled.then_some(attributed);
    for s in e.streams.values() {
        r.streams.insert(s.name.clone(), StreamReading { received: s.received(), queue_fill: None });
    }
    fill_stream_queues(&mut r);
    r
}

/// A stream's queue fill: the fullest of its subscribers' queues.
fn fill_stream_queues(r: &mut EngineReading) {
    for q in r.queries.values() {
        let Some(fill) = q.queue_fill else { continue };
        for input in &q.inputs {
            if let Some(s) = r.streams.get_mut(input) {
                s.queue_fill = Some(s.queue_fill.map_or(fill, |f: f64| f.max(fill)));
            }
        }
    }
}

/// A series of the page: its labels and value.
struct Series<'a> {
    labels: BTreeMap<&'a str, &'a str>,
    metric: &'a protobuf::Metric,
}

impl Series<'_> {
    fn label(&self, name: &str) -> String {
        self.labels.get(name).map(|v| (*v).to_owned()).unwrap_or_default()
    }

    fn value(&self) -> f64 {
        let m = self.metric;
        m.counter.as_ref().and_then(|c| c.value).or_else(|| m.gauge.as_ref().and_then(|g| g.value)).unwrap_or(0.0)
    }

    fn count(&self) -> u64 {
        self.value().max(0.0).round() as u64
    }

    fn hist(&self) -> Option<HistData> {
        let h = self.metric.histogram.as_ref()?;
        let buckets = protobuf::kernel_buckets(h)?;
        // The page carries no maximum: the top of the slowest bucket stands for it.
        let max_ns = buckets.iter().rposition(|n| *n > 0).map_or(0, hist::upper);
        Some(HistData {
            count: h.sample_count.unwrap_or(0),
            sum_ns: (h.sample_sum.unwrap_or(0.0) * 1e9) as u64,
            max_ns,
            buckets,
            exemplars: BTreeMap::new(),
        })
    }
}

fn page_reading(families: &[MetricFamily], health: &BTreeMap<u32, HealthOf>, at: Instant) -> Reading {
    // `run`'s page has no pid label: its one engine is the one its /health names.
    let only_pid = (health.len() == 1).then(|| health.keys().next().copied()).flatten();
    let mut engines: BTreeMap<u32, EngineReading> = BTreeMap::new();
    let mut observer = ObserverReading::default();
    // Rows the queries inserted into each stream: a stream's events from sources are what
    // entered it less these.
    let mut inserted: BTreeMap<(u32, String), u64> = BTreeMap::new();
    for f in families {
        let Some(name) = f.name.as_deref() else { continue };
        for metric in &f.metric {
            let labels = metric
                .label
                .iter()
                .filter_map(|l| Some((l.name.as_deref()?, l.value.as_deref().unwrap_or(""))))
                .collect();
            let s = Series { labels, metric };
            match name {
                n if n == m::PROGRAM_RUNS.name => observer.program_runs += s.count(),
                n if n == m::PROGRAM_SECONDS.name => observer.program_seconds += s.value(),
                n if n == m::KERNEL_DROPS.name => observer.drops += s.count(),
                _ => {}
            }
            if m::by_name(name).is_none_or(|d| d.scope != m::Scope::Engine) {
                continue;
            }
            let pid = match s.labels.get("pid") {
                Some(p) => p.parse().ok(),
                None => only_pid,
            };
            let Some(pid) = pid else { continue };
            let e = engines.entry(pid).or_insert_with(|| {
                let h = health.get(&pid).cloned().unwrap_or_default();
                EngineReading {
                    pid,
                    exe: if h.exe.is_empty() { s.label("exe") } else { h.exe },
                    state: if h.state.is_empty() { "running".into() } else { h.state },
                    status: h.status,
                    reasons: h.reasons,
                    ..EngineReading::default()
                }
            });
            page_series(e, name, &s, &mut inserted);
        }
    }
    for ((pid, stream), n) in inserted {
        if let Some(e) = engines.get_mut(&pid)
            && let Some(s) = e.streams.get(&stream)
        {
            e.ingested = e.ingested.saturating_sub(n.min(s.received));
        }
    }
    for e in engines.values_mut() {
        fill_stream_queues(e);
    }
    Reading { at, one_target: false, engines, observer }
}

/// One engine series of the page into its reading.
fn page_series(e: &mut EngineReading, name: &str, s: &Series<'_>, inserted: &mut BTreeMap<(u32, String), u64>) {
    fn query<'e>(e: &'e mut EngineReading, s: &Series<'_>) -> Option<&'e mut QueryReading> {
        let id = s.label("query_id");
        (id != "none").then(|| e.queries.entry(id).or_default())
    }
    match name {
        n if n == m::UPTIME.name => e.uptime_seconds = Some(s.value()),
        n if n == m::CPU_SECONDS.name => e.cpu_seconds = Some(s.value()),
        n if n == m::MEMORY.name && s.label("component") == "rss" => e.rss_bytes = Some(s.count()),
        n if n == m::STREAM_RECEIVED.name => {
            e.ingested += s.count();
            e.streams.entry(s.label("stream_name")).or_default().received = s.count();
        }
        n if n == m::QUERY_PROCESSED.name => {
            if let Some(q) = query(e, s) {
                q.processed += s.count();
                q.inputs.push(s.label("stream_name"));
            }
        }
        n if n == m::QUERY_EMITTED.name => {
            e.emitted += s.count();
            *inserted.entry((e.pid, s.label("output_stream"))).or_insert(0) += s.count();
            if let Some(q) = query(e, s) {
                q.emitted += s.count();
            }
        }
        n if n == m::QUERY_BATCHES.name => query(e, s).into_iter().for_each(|q| q.batches += s.count()),
        n if n == m::QUERY_ERRORS.name => query(e, s).into_iter().for_each(|q| q.errors += s.count()),
        n if n == m::QUERY_WINDOW_BYTES.name => query(e, s).into_iter().for_each(|q| q.window_bytes = Some(s.count())),
        n if n == m::QUERY_GROUPS.name => query(e, s).into_iter().for_each(|q| q.groups = Some(s.count())),
        n if n == m::QUERY_BUFFER_UTILIZATION.name => {
            query(e, s).into_iter().for_each(|q| q.queue_fill = Some(s.value()));
        }
        n if n == m::QUERY_CPU.name => {
            let stage = s.label("stage");
            match query(e, s) {
                Some(q) => {
                    *q.cpu.entry(stage).or_insert(0.0) += s.value();
                    *e.attributed_cpu_seconds.get_or_insert(0.0) += s.value();
                }
                // Sampled, outside any query: the engine has CPU samples, none attributed here.
                None => {
                    e.attributed_cpu_seconds.get_or_insert(0.0);
                }
            }
        }
        n if n == m::QUERY_LATENCY.name => {
            if let Some(q) = query(e, s) {
                q.latency = s.hist();
            }
        }
        n if n == m::QUERY_STAGE_LATENCY.name => {
            let (stage, h) = (s.label("stage"), s.hist());
            if let (Some(q), Some(h)) = (query(e, s), h) {
                q.stages.insert(stage, h);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn health_of_run_and_of_node_mode() {
        let run = json!({"status": "degraded", "reasons": ["event_pipeline: slow"],
            "target": {"pid": 7, "state": "running", "executable": "/bin/e"}});
        let h = health_by_pid(&run);
        assert_eq!(h[&7].status.as_deref(), Some("degraded"));
        assert_eq!(h[&7].reasons, ["event_pipeline: slow"]);
        assert_eq!(h[&7].exe, "/bin/e");
        assert!(health_by_pid(&json!({"status": "unhealthy", "target": {"pid": 0}})).is_empty());

        let node = json!({"status": "healthy", "targets": [
            {"pid": 8, "exe": "/a", "state": "exited", "health": {"status": "unhealthy", "reasons": []}},
            {"pid": 9, "exe": "/b", "state": "running", "health": {"status": "healthy", "reasons": []}}]});
        let h = health_by_pid(&node);
        assert_eq!(h.keys().copied().collect::<Vec<_>>(), [8, 9]);
        assert_eq!(h[&8].state, "exited");
        assert_eq!(h[&9].status.as_deref(), Some("healthy"));
    }

    #[test]
    fn a_page_that_is_not_protobuf_is_one_error() {
        let e = Reading::of_page(b"# TYPE x counter\nx 1\n", &json!({}), Instant::now()).unwrap_err();
        assert!(e.starts_with("the /metrics page is not the protobuf exposition"), "{e}");
    }
}
