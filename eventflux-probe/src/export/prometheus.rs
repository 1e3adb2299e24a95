//! The Prometheus text exposition of the [`Model`]: the design document's metric names and
//! labels, latency histograms with `le` buckets taken from the kernel's buckets, and the
//! daemon's own `eventflux_probe_*` metrics.
//!
//! Series are capped per metric: past `max_series` label sets, further ones are folded into a
//! single series whose labels read `overflow`, so a runaway id cannot explode cardinality.

use std::collections::BTreeMap;

use eventflux_abi::{ConnErrorKind, ErrorKind, Protocol, WindowKind};
use eventflux_probe_common::{drop as drops, hist, stage};
use prometheus::proto::{self, MetricFamily, MetricType};

use crate::collector::HistData;
use crate::model::{Engine, Model};

/// Value of every label of a folded series.
pub const OVERFLOW: &str = "overflow";

/// Exposition options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Label sets per metric before folding into `overflow`.
    pub max_series: usize,
    /// Add a `pid` label to the engine's metrics (several targets in one daemon).
    pub pid_label: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_series: 2000, pid_label: false }
    }
}

/// Smallest latency bucket exported: finer buckets are cumulated into it. 256 ns, because a
/// batch of a few events takes a few hundred nanoseconds in a fast engine.
const FIRST_EXPORTED_NS: u64 = 256;
/// Largest bucket bound exported: slower samples count only in `+Inf` (and in `_sum`). No batch
/// should take seconds, and every bound is a series in Prometheus.
const LAST_EXPORTED_NS: u64 = 16_000_000_000;

#[derive(Debug, Clone)]
enum Value {
    Scalar(f64),
    Hist { buckets: Vec<u64>, count: u64, sum_ns: u64 },
}

impl Value {
    fn merge(&mut self, other: Value) {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => *a += b,
            (Value::Hist { buckets, count, sum_ns }, Value::Hist { buckets: b2, count: c2, sum_ns: s2 }) => {
                for (x, y) in buckets.iter_mut().zip(b2) {
                    *x += y;
                }
                *count += c2;
                *sum_ns += s2;
            }
            _ => {}
        }
    }
}

type Labels = Vec<(&'static str, String)>;

struct Family {
    help: &'static str,
    kind: MetricType,
    series: BTreeMap<Labels, Value>,
    /// Label sets summed into the overflow series (each once, however often it was added).
    folded: std::collections::BTreeSet<Labels>,
}

/// Collects series by metric name, applying the cap.
struct Families {
    opts: Options,
    by_name: BTreeMap<&'static str, Family>,
}

impl Families {
    fn family(&mut self, name: &'static str, help: &'static str, kind: MetricType) -> &mut Family {
        self.by_name.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
            folded: Default::default(),
        })
    }

    fn add(&mut self, name: &'static str, help: &'static str, kind: MetricType, labels: Labels, v: Value) {
        let max = self.opts.max_series;
        let fam = self.family(name, help, kind);
        let labels = if fam.series.contains_key(&labels) || fam.series.len() < max {
            labels
        } else {
            let overflow = labels.iter().map(|(k, _)| (*k, OVERFLOW.to_owned())).collect();
            fam.folded.insert(labels);
            overflow
        };
        match fam.series.get_mut(&labels) {
            Some(existing) => existing.merge(v),
            None => {
                fam.series.insert(labels, v);
            }
        }
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, v: f64) {
        self.add(name, help, MetricType::COUNTER, labels, Value::Scalar(v));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, v: f64) {
        self.add(name, help, MetricType::GAUGE, labels, Value::Scalar(v));
    }

    fn histogram(&mut self, name: &'static str, help: &'static str, labels: Labels, h: &HistData) {
        let v = Value::Hist { buckets: h.buckets.clone(), count: h.count, sum_ns: h.sum_ns };
        self.add(name, help, MetricType::HISTOGRAM, labels, v);
    }
}

fn label_name(code: u32, label: Option<&'static str>) -> String {
    label.map_or_else(|| format!("unknown_{code}"), str::to_owned)
}

/// Encodes a model in the Prometheus text format.
pub fn encode(model: &Model, opts: &Options) -> String {
    let mut f = Families { opts: opts.clone(), by_name: BTreeMap::new() };
    for engine in model.engines.values() {
        engine_metrics(engine, &mut f);
    }
    observer_metrics(model, &mut f);
    let families = to_proto(f);
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&families, &mut out) {
        out.push_str(&format!("# encoding failed: {e}\n"));
    }
    out
}

const PROCESSED_HELP: &str = "Events that entered the query.";
const CONNECTIONS_HELP: &str = "Connection attempts by result.";
const MEMORY_HELP: &str = "Memory of the engine by component: rss (resident), window_state and queues (from probes).";

fn engine_metrics(e: &Engine, f: &mut Families) {
    let pid_label = f.opts.pid_label;
    let labels = |mut labels: Labels| -> Labels {
        if pid_label {
            labels.insert(0, ("pid", e.pid.to_string()));
        }
        labels
    };

    if e.has_registrations() {
        f.gauge("query_active_count", "Queries running.", labels(vec![]), e.queries_running() as f64);
    }
    for s in e.streams.values() {
        let l = || labels(vec![("stream_name", s.name.clone())]);
        if s.registered || s.subscribers > 0 {
            f.gauge("stream_subscribers_active", "Queries subscribed to the stream.", l(), f64::from(s.subscribers));
        }
        if s.received() > 0 {
            f.counter(
                "stream_events_received_total",
                "Events that entered the stream (from sources, or inserted by queries).",
                l(),
                s.received() as f64,
            );
        }
        if s.sent > 0 {
            f.counter("stream_events_sent_total", "Events the stream handed to its subscribers.", l(), s.sent as f64);
        }
        if s.backpressure > 0 {
            f.counter(
                "stream_backpressure_events_total",
                "Times a producer found a subscriber's queue full.",
                l(),
                s.backpressure as f64,
            );
        }
        if let Some(bytes) = s.buffer_bytes {
            f.gauge("stream_buffer_size_bytes", "Bytes queued for the stream's subscribers.", l(), bytes as f64);
        }
        if let Some(age) = s.oldest_event_age_seconds {
            f.gauge(
                "stream_oldest_event_age_seconds",
                "How long the most recently dequeued chunk of the stream waited in its queue.",
                l(),
                age,
            );
        }
    }

    for q in e.queries.values() {
        let query = || ("query_id", q.name.clone());
        for (&stream, &n) in &q.processed {
            let l = labels(vec![query(), ("stream_name", e.stream_name(stream))]);
            f.counter("query_events_processed_total", PROCESSED_HELP, l, n as f64);
        }
        for (&stream, &n) in &q.emitted {
            f.counter(
                "query_events_emitted_total",
                "Rows the query inserted into its output stream.",
                labels(vec![query(), ("output_stream", e.stream_name(stream))]),
                n as f64,
            );
        }
        if q.batches > 0 {
            f.counter(
                "query_batches_total",
                "Query batches (chunks of input), every one; query_latency_seconds_count counts the sampled ones.",
                labels(vec![query()]),
                q.batches as f64,
            );
        }
        for (&kind, &n) in &q.errors {
            f.counter(
                "query_execution_errors_total",
                "Events the query failed to process.",
                labels(vec![
                    query(),
                    ("error_type", label_name(kind, ErrorKind::from_code(kind).map(ErrorKind::label))),
                ]),
                n as f64,
            );
        }
        if let Some(bytes) = q.window_bytes {
            let window = q.window.map_or("unknown", WindowKind::label);
            f.gauge(
                "query_window_size_bytes",
                "Bytes the query's window holds.",
                labels(vec![query(), ("window_type", window.to_owned())]),
                bytes as f64,
            );
        }
        if let Some(groups) = q.groups {
            f.gauge(
                "query_aggregation_groups",
                "Live group-by keys of the query's aggregation.",
                labels(vec![query()]),
                groups as f64,
            );
        }
        if let Some(u) = q.buffer_utilization {
            f.gauge("query_buffer_utilization", "Fill of the query's input queue, 0 to 1.", labels(vec![query()]), u);
        }
        if let Some(h) = &q.latency {
            f.histogram(
                "query_latency_seconds",
                "Time a query takes for one batch (chunk) of events, all stages included; from sampled batches timed as a whole (a few per second per engine thread), so _count counts those and query_batches_total all batches.",
                labels(vec![query()]),
                h,
            );
        }
        for (&st, h) in &q.stages {
            let Some(name) = stage::NAMES.get(st as usize) else { continue };
            f.histogram(
                "query_stage_latency_seconds",
                "Self time of one stage of a query per sampled batch (stages it calls excluded); ingest is the time a chunk waited in an async junction's queue.",
                labels(vec![query(), ("stage", (*name).to_owned())]),
                h,
            );
        }
    }

    for (&code, c) in &e.connections {
        let p = label_name(code, Protocol::from_code(code).map(Protocol::label));
        if c.opened > 0 {
            let l = labels(vec![("protocol", p.clone()), ("result", "success".into())]);
            f.counter("connections_total", CONNECTIONS_HELP, l, c.opened as f64);
            f.gauge(
                "connections_active",
                "Open connections.",
                labels(vec![("protocol", p.clone())]),
                c.active() as f64,
            );
        }
        for (&kind, &n) in &c.failures {
            let l = labels(vec![("protocol", p.clone()), ("result", "failure".into())]);
            f.counter("connections_total", CONNECTIONS_HELP, l, n as f64);
            let kind = label_name(kind, ConnErrorKind::from_code(kind).map(ConnErrorKind::label));
            f.counter(
                "connection_errors_total",
                "Connection failures by kind.",
                labels(vec![("protocol", p.clone()), ("error_type", kind)]),
                n as f64,
            );
        }
    }
    if e.spans_dropped > 0 {
        f.counter(
            "eventflux_probe_engine_spans_dropped_total",
            "Span records of sampled batches the engine could not keep (nesting deeper than its buffer).",
            labels(vec![]),
            e.spans_dropped as f64,
        );
    }

    if let Some(p) = &e.process {
        f.counter(
            "eventflux_uptime_seconds",
            "Seconds since the engine process started.",
            labels(vec![]),
            p.uptime_seconds,
        );
        let mem = e.memory();
        for (component, bytes) in [("rss", mem.rss), ("window_state", mem.window_state), ("queues", mem.queues)] {
            f.gauge(
                "eventflux_memory_usage_bytes",
                MEMORY_HELP,
                labels(vec![("component", component.into())]),
                bytes as f64,
            );
        }
        f.gauge(
            "eventflux_cpu_usage_percent",
            "CPU use of the engine, percent of one core.",
            labels(vec![]),
            p.cpu_percent,
        );
        f.gauge("eventflux_threads_active", "Threads of the engine process.", labels(vec![]), p.threads as f64);
        if let Some(fds) = p.open_fds {
            f.gauge("eventflux_open_fds", "Open file descriptors of the engine process.", labels(vec![]), fds as f64);
        }
    }
    if let Some(running) = e.running {
        let l = if pid_label { vec![("pid", e.pid.to_string())] } else { vec![] };
        f.gauge(
            "eventflux_probe_target_running",
            "1 while the target runs the program the probes were attached to; 0 once it exited or exec'd another.",
            l,
            if running { 1.0 } else { 0.0 },
        );
    }
}

fn observer_metrics(model: &Model, f: &mut Families) {
    let d = &model.observer;
    f.gauge("eventflux_probe_probes_attached", "Distinct USDT probes attached.", vec![], d.probes_attached as f64);
    f.gauge("eventflux_probe_sites_attached", "USDT probe sites (notes) attached.", vec![], d.sites_attached as f64);
    if let Some(ready) = d.ready {
        f.gauge(
            "eventflux_probe_ready",
            "1 while /ready answers 200: every selected probe attached and the target alive.",
            vec![],
            if ready { 1.0 } else { 0.0 },
        );
    }
    for (name, runs, seconds) in &d.programs {
        f.counter(
            "eventflux_probe_program_runs_total",
            "Runs of each eBPF program (kernel BPF statistics).",
            vec![("program", (*name).to_owned())],
            *runs as f64,
        );
        f.counter(
            "eventflux_probe_program_run_seconds_total",
            "Time spent in each eBPF program (kernel BPF statistics).",
            vec![("program", (*name).to_owned())],
            *seconds,
        );
    }
    for (name, entries, capacity) in &d.maps {
        f.gauge(
            "eventflux_probe_map_entries",
            "Entries in each bounded BPF map.",
            vec![("map", (*name).to_owned())],
            *entries as f64,
        );
        f.gauge(
            "eventflux_probe_map_capacity",
            "Capacity of each bounded BPF map.",
            vec![("map", (*name).to_owned())],
            *capacity as f64,
        );
    }
    for (i, n) in d.drops.iter().enumerate() {
        f.counter(
            "eventflux_probe_dropped_events_total",
            "Probe hits the kernel side could not record, by reason.",
            vec![("reason", drops::NAMES[i].to_owned())],
            *n as f64,
        );
    }
    if let Some(o) = &d.otlp {
        f.counter(
            "eventflux_probe_spans_exported_total",
            "Spans of sampled batches exported over OTLP.",
            vec![],
            o.exported_spans as f64,
        );
        for (reason, n) in crate::export::otlp::DROP_REASONS.iter().zip(o.dropped_spans) {
            f.counter(
                "eventflux_probe_spans_dropped_total",
                "Spans not exported, by reason: queue_full (the collector is slower than the engine samples), export_failed (the collector refused or did not answer).",
                vec![("reason", (*reason).to_owned())],
                n as f64,
            );
        }
    }
    if d.unknown_series > 0 {
        f.gauge(
            "eventflux_probe_unknown_series",
            "Map entries of kinds this build of the observer does not know (kernel side newer than user space?).",
            vec![],
            d.unknown_series as f64,
        );
    }
    let folded: Vec<(&'static str, u64)> = f
        .by_name
        .iter()
        .filter(|(_, fam)| !fam.folded.is_empty())
        .map(|(n, fam)| (*n, fam.folded.len() as u64))
        .collect();
    for (metric, n) in folded {
        f.gauge(
            "eventflux_probe_series_folded",
            "Label sets folded into the overflow series by the per-metric cap, in this scrape.",
            vec![("metric", metric.to_owned())],
            n as f64,
        );
    }
}

fn to_proto(f: Families) -> Vec<MetricFamily> {
    let first = (0..hist::BUCKETS).find(|&i| hist::upper(i) >= FIRST_EXPORTED_NS).unwrap_or(0);
    f.by_name
        .into_iter()
        .map(|(name, fam)| {
            let mut mf = MetricFamily::default();
            mf.set_name(name.to_owned());
            mf.set_help(fam.help.to_owned());
            mf.set_field_type(fam.kind);
            let metrics = fam
                .series
                .into_iter()
                .map(|(labels, value)| {
                    let mut m = proto::Metric::default();
                    m.set_label(
                        labels
                            .into_iter()
                            .map(|(k, v)| {
                                let mut l = proto::LabelPair::default();
                                l.set_name(k.to_owned());
                                l.set_value(v);
                                l
                            })
                            .collect(),
                    );
                    match value {
                        Value::Scalar(v) if fam.kind == MetricType::COUNTER => {
                            let mut c = proto::Counter::default();
                            c.set_value(v);
                            m.set_counter(c);
                        }
                        Value::Scalar(v) => {
                            let mut g = proto::Gauge::default();
                            g.set_value(v);
                            m.set_gauge(g);
                        }
                        Value::Hist { buckets, count, sum_ns } => {
                            let mut h = proto::Histogram::default();
                            h.set_sample_count(count);
                            h.set_sample_sum(sum_ns as f64 / 1e9);
                            let mut cumulative: u64 = buckets[..first].iter().sum();
                            let mut out = Vec::with_capacity(hist::BUCKETS - first);
                            // The last kernel bucket also holds everything beyond its bound:
                            // it is exported only as +Inf (the encoder adds it from the count).
                            for (i, n) in buckets
                                .iter()
                                .enumerate()
                                .take(hist::BUCKETS - 1)
                                .skip(first)
                                .take_while(|(i, _)| hist::upper(*i) <= LAST_EXPORTED_NS)
                            {
                                cumulative += n;
                                let mut b = proto::Bucket::default();
                                b.set_upper_bound(hist::upper(i) as f64 / 1e9);
                                b.set_cumulative_count(cumulative);
                                out.push(b);
                            }
                            h.set_bucket(out);
                            m.set_histogram(h);
                        }
                    }
                    m
                })
                .collect();
            mf.set_metric(metrics);
            mf
        })
        .collect()
}
