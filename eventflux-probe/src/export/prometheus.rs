//! The Prometheus text exposition of a snapshot: the design document's metric names and
//! labels, latency histograms with `le` buckets taken from the kernel's buckets, and the
//! daemon's own `eventflux_probe_*` metrics.
//!
//! Series are capped per metric: past `max_series` label sets, further ones are folded into a
//! single series whose labels read `overflow`, so a runaway id cannot explode cardinality.

use std::collections::BTreeMap;

use eventflux_abi::{ConnErrorKind, ErrorKind, Protocol, WindowKind};
use eventflux_probe_common::{counter, drop as drops, gauge, hist, stage};
use prometheus::proto::{self, MetricFamily, MetricType};

use crate::collector::{HistData, Snapshot};

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

/// Encodes a snapshot in the Prometheus text format.
pub fn encode(snap: &Snapshot, opts: &Options) -> String {
    let mut f = Families { opts: opts.clone(), by_name: BTreeMap::new() };
    engine_metrics(snap, &mut f);
    daemon_metrics(snap, &mut f);
    let families = to_proto(f);
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&families, &mut out) {
        out.push_str(&format!("# encoding failed: {e}\n"));
    }
    out
}

fn engine_metrics(snap: &Snapshot, f: &mut Families) {
    let cat = &snap.catalog;
    let pid_label = f.opts.pid_label;
    let with_pid = |pid: u32, mut labels: Labels| -> Labels {
        if pid_label {
            labels.insert(0, ("pid", pid.to_string()));
        }
        labels
    };

    // Series that exist from registration on, before any event.
    let mut active: BTreeMap<u32, f64> = BTreeMap::new();
    let mut subscribers: BTreeMap<(u32, u32), f64> = BTreeMap::new();
    for &(pid, id) in cat.streams.keys() {
        active.entry(pid).or_insert(0.0);
        subscribers.entry((pid, id)).or_insert(0.0);
    }
    for (&(pid, _), q) in &cat.queries {
        let l =
            with_pid(pid, vec![("query_id", q.name.clone()), ("stream_name", cat.stream_name(pid, q.input_stream))]);
        f.counter("query_events_processed_total", "Events that entered the query.", l, 0.0);
        if q.active {
            *active.entry(pid).or_insert(0.0) += 1.0;
            *subscribers.entry((pid, q.input_stream)).or_insert(0.0) += 1.0;
        }
    }
    for (pid, n) in active {
        f.gauge("query_active_count", "Queries running.", with_pid(pid, vec![]), n);
    }
    for ((pid, stream), n) in subscribers {
        let l = with_pid(pid, vec![("stream_name", cat.stream_name(pid, stream))]);
        f.gauge("stream_subscribers_active", "Queries subscribed to the stream.", l, n);
    }

    for (k, &v) in &snap.counters {
        let (pid, v) = (k.pid, v as f64);
        let stream = |id| cat.stream_name(pid, id);
        let query = |id| cat.query_name(pid, id);
        match k.counter {
            counter::STREAM_RECEIVED | counter::STREAM_EMITTED_INTO => f.counter(
                "stream_events_received_total",
                "Events that entered the stream (from sources, or inserted by queries).",
                with_pid(pid, vec![("stream_name", stream(k.a))]),
                v,
            ),
            counter::STREAM_SENT => f.counter(
                "stream_events_sent_total",
                "Events the stream handed to its subscribers.",
                with_pid(pid, vec![("stream_name", stream(k.a))]),
                v,
            ),
            counter::BACKPRESSURE => f.counter(
                "stream_backpressure_events_total",
                "Times a producer found a subscriber's queue full.",
                with_pid(pid, vec![("stream_name", stream(k.a))]),
                v,
            ),
            counter::QUERY_PROCESSED => f.counter(
                "query_events_processed_total",
                "Events that entered the query.",
                with_pid(pid, vec![("query_id", query(k.a)), ("stream_name", stream(k.b))]),
                v,
            ),
            counter::QUERY_EMITTED => f.counter(
                "query_events_emitted_total",
                "Rows the query inserted into its output stream.",
                with_pid(pid, vec![("query_id", query(k.a)), ("output_stream", stream(k.b))]),
                v,
            ),
            counter::QUERY_BATCHES => f.counter(
                "query_batches_total",
                "Query batches (chunks of input), every one; query_latency_seconds_count counts the sampled ones.",
                with_pid(pid, vec![("query_id", query(k.a))]),
                v,
            ),
            counter::ENGINE_SPANS_DROPPED => f.counter(
                "eventflux_probe_engine_spans_dropped_total",
                "Span records of sampled batches the engine could not keep (nesting deeper than its buffer).",
                with_pid(pid, vec![]),
                v,
            ),
            counter::QUERY_ERRORS => f.counter(
                "query_execution_errors_total",
                "Events the query failed to process.",
                with_pid(
                    pid,
                    vec![
                        ("query_id", query(k.a)),
                        ("error_type", label_name(k.b, ErrorKind::from_code(k.b).map(ErrorKind::label))),
                    ],
                ),
                v,
            ),
            counter::CONN_OPENED => {
                let p = label_name(k.a, Protocol::from_code(k.a).map(Protocol::label));
                f.counter(
                    "connections_total",
                    "Connection attempts by result.",
                    with_pid(pid, vec![("protocol", p.clone()), ("result", "success".into())]),
                    v,
                );
                let closed = snap.counter(pid, counter::CONN_CLOSED, k.a, 0) as f64;
                f.gauge(
                    "connections_active",
                    "Open connections.",
                    with_pid(pid, vec![("protocol", p)]),
                    (v - closed).max(0.0),
                );
            }
            counter::CONN_ERRORS => {
                let p = label_name(k.a, Protocol::from_code(k.a).map(Protocol::label));
                f.counter(
                    "connections_total",
                    "Connection attempts by result.",
                    with_pid(pid, vec![("protocol", p.clone()), ("result", "failure".into())]),
                    v,
                );
                let kind = label_name(k.b, ConnErrorKind::from_code(k.b).map(ConnErrorKind::label));
                f.counter(
                    "connection_errors_total",
                    "Connection failures by kind.",
                    with_pid(pid, vec![("protocol", p), ("error_type", kind)]),
                    v,
                );
            }
            _ => {}
        }
    }

    let mut window_bytes: BTreeMap<u32, f64> = BTreeMap::new();
    let mut queue_bytes: BTreeMap<u32, f64> = BTreeMap::new();
    let mut stream_bytes: BTreeMap<(u32, u32), f64> = BTreeMap::new();
    let mut stream_age: BTreeMap<(u32, u32), f64> = BTreeMap::new();
    for (k, &v) in &snap.gauges {
        let pid = k.pid;
        match k.counter {
            gauge::WINDOW_STATE_BYTES => {
                let window = cat
                    .queries
                    .get(&(pid, k.a))
                    .and_then(|q| WindowKind::from_code(q.window))
                    .map_or("unknown", WindowKind::label);
                let l = with_pid(pid, vec![("query_id", cat.query_name(pid, k.a)), ("window_type", window.to_owned())]);
                f.gauge("query_window_size_bytes", "Bytes the query's window holds.", l, v as f64);
                *window_bytes.entry(pid).or_default() += v as f64;
            }
            gauge::GROUPS => {
                let l = with_pid(pid, vec![("query_id", cat.query_name(pid, k.a))]);
                f.gauge("query_aggregation_groups", "Live group-by keys of the query's aggregation.", l, v as f64);
            }
            gauge::QUEUE_DEPTH => {
                let cap = snap.gauges.get(&eventflux_probe_common::CounterKey { counter: gauge::QUEUE_CAPACITY, ..*k });
                if let Some(&cap) = cap.filter(|c| **c > 0) {
                    let l = with_pid(pid, vec![("query_id", cat.query_name(pid, k.b))]);
                    f.gauge(
                        "query_buffer_utilization",
                        "Fill of the query's input queue, 0 to 1.",
                        l,
                        v as f64 / cap as f64,
                    );
                }
            }
            gauge::QUEUE_BYTES => {
                *stream_bytes.entry((pid, k.a)).or_default() += v as f64;
                *queue_bytes.entry(pid).or_default() += v as f64;
            }
            gauge::QUEUE_WAIT_NS => {
                let age = stream_age.entry((pid, k.a)).or_default();
                *age = age.max(v as f64 / 1e9);
            }
            _ => {}
        }
    }
    for ((pid, s), v) in stream_bytes {
        let l = with_pid(pid, vec![("stream_name", cat.stream_name(pid, s))]);
        f.gauge("stream_buffer_size_bytes", "Bytes queued for the stream's subscribers.", l, v);
    }
    for ((pid, s), v) in stream_age {
        let l = with_pid(pid, vec![("stream_name", cat.stream_name(pid, s))]);
        f.gauge(
            "stream_oldest_event_age_seconds",
            "How long the most recently dequeued chunk of the stream waited in its queue.",
            l,
            v,
        );
    }

    for (k, h) in &snap.hists {
        let q = cat.query_name(k.pid, k.query);
        if k.stage == stage::BATCH {
            f.histogram(
                "query_latency_seconds",
                "Time a query takes for one batch (chunk) of events, all stages included; from sampled batches timed as a whole (a few per second per engine thread), so _count counts those and query_batches_total all batches.",
                with_pid(k.pid, vec![("query_id", q)]),
                h,
            );
        } else if let Some(name) = stage::NAMES.get(k.stage as usize) {
            f.histogram(
                "query_stage_latency_seconds",
                "Self time of one stage of a query per sampled batch (stages it calls excluded); ingest is the time a chunk waited in an async junction's queue.",
                with_pid(k.pid, vec![("query_id", q), ("stage", (*name).to_owned())]),
                h,
            );
        }
    }

    for (&pid, p) in &snap.processes {
        f.counter(
            "eventflux_uptime_seconds",
            "Seconds since the engine process started.",
            with_pid(pid, vec![]),
            p.uptime_seconds,
        );
        let mem = "Memory of the engine by component: rss (resident), window_state and queues (from probes).";
        f.gauge(
            "eventflux_memory_usage_bytes",
            mem,
            with_pid(pid, vec![("component", "rss".into())]),
            p.rss_bytes as f64,
        );
        let w = window_bytes.get(&pid).copied().unwrap_or(0.0);
        f.gauge("eventflux_memory_usage_bytes", mem, with_pid(pid, vec![("component", "window_state".into())]), w);
        let qb = queue_bytes.get(&pid).copied().unwrap_or(0.0);
        f.gauge("eventflux_memory_usage_bytes", mem, with_pid(pid, vec![("component", "queues".into())]), qb);
        f.gauge(
            "eventflux_cpu_usage_percent",
            "CPU use of the engine, percent of one core.",
            with_pid(pid, vec![]),
            p.cpu_percent,
        );
        f.gauge("eventflux_threads_active", "Threads of the engine process.", with_pid(pid, vec![]), p.threads as f64);
    }
}

fn daemon_metrics(snap: &Snapshot, f: &mut Families) {
    let d = &snap.daemon;
    f.gauge("eventflux_probe_probes_attached", "Distinct USDT probes attached.", vec![], d.probes_attached as f64);
    for &(pid, running) in &d.targets {
        let labels = if f.opts.pid_label { vec![("pid", pid.to_string())] } else { vec![] };
        f.gauge(
            "eventflux_probe_target_running",
            "1 while the target runs the program the probes were attached to; 0 once it exited or exec'd another.",
            labels,
            if running { 1.0 } else { 0.0 },
        );
    }
    f.gauge("eventflux_probe_sites_attached", "USDT probe sites (notes) attached.", vec![], d.sites_attached as f64);
    for (name, runs, time) in &d.programs {
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
            time.as_secs_f64(),
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
