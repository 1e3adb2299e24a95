//! The Prometheus text exposition of the [`Model`]: the design document's metric names and
//! labels, latency histograms with `le` buckets taken from the kernel's buckets, and the
//! daemon's own `eventflux_probe_*` metrics.
//!
//! Series are capped per metric: past `max_series` label sets, further ones are folded into a
//! single series whose labels read `overflow`, so a runaway id cannot explode cardinality. In
//! node mode a process's series are also capped per metric and process
//! (`max_series_per_process`): one runaway engine folds its own series, keeping the labels that
//! say which process it is, and leaves the others' room.

use std::collections::BTreeMap;

use eventflux_abi::{
    ComponentCounter, ConnErrorKind, Connector, Dimension, ErrorKind, JunctionKind, Protocol, StoreKind, TableKind,
    WindowKind,
};
use eventflux_probe_common::{drop as drops, hist, stage};
use prometheus::proto::{self, MetricFamily, MetricType};

use crate::export::buckets::Layout;
use crate::export::metrics::{self as m, Kind, Metric};
use crate::model::hist::{Exemplar, HistData};
use crate::model::{Component, Engine, Model};

/// Value of every label of a folded series.
pub const OVERFLOW: &str = "overflow";

/// Exposition options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Label sets per metric before folding into `overflow`.
    pub max_series: usize,
    /// Add a `pid` label to the engine's metrics (several targets in one daemon).
    pub pid_label: bool,
    /// Label sets per metric and process (node mode; 0: no such cap).
    pub max_series_per_process: usize,
    /// Labels identifying each engine process beyond `pid` (`exe`, `container_id`, …), by pid;
    /// never folded.
    pub process_labels: BTreeMap<u32, Vec<(&'static str, String)>>,
    /// Which kernel buckets the classic histograms show.
    pub layout: Layout,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_series: 2000,
            pid_label: false,
            max_series_per_process: 0,
            process_labels: BTreeMap::new(),
            layout: Layout::default(),
        }
    }
}

/// Labels that identify the process a series belongs to: kept when its other labels fold.
const PROCESS_LABELS: &[&str] = crate::export::metrics::ENGINE_EXTRA_LABELS;

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar(f64),
    Hist {
        buckets: Vec<u64>,
        count: u64,
        sum_ns: u64,
        /// By kernel bucket.
        exemplars: BTreeMap<usize, Exemplar>,
    },
}

impl Value {
    fn merge(&mut self, other: Value) {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => *a += b,
            (
                Value::Hist { buckets, count, sum_ns, exemplars },
                Value::Hist { buckets: b2, count: c2, sum_ns: s2, exemplars: e2 },
            ) => {
                for (x, y) in buckets.iter_mut().zip(b2) {
                    *x += y;
                }
                *count += c2;
                *sum_ns += s2;
                for (k, e) in e2 {
                    if exemplars.get(&k).is_none_or(|old| old.unix_ms <= e.unix_ms) {
                        exemplars.insert(k, e);
                    }
                }
            }
            _ => {}
        }
    }
}

pub(crate) type Labels = Vec<(&'static str, String)>;

pub(crate) struct Family {
    pub(crate) help: &'static str,
    pub(crate) kind: MetricType,
    pub(crate) series: BTreeMap<Labels, Value>,
    /// Label sets summed into the overflow series (each once, however often it was added).
    folded: std::collections::BTreeSet<Labels>,
    /// Label sets per process (by its `pid` label), for the per-process cap.
    per_process: BTreeMap<String, usize>,
}

/// Collects series by metric name, applying the cap.
pub(crate) struct Families {
    opts: Options,
    pub(crate) by_name: BTreeMap<&'static str, Family>,
}

impl Families {
    fn family(&mut self, metric: &'static Metric) -> &mut Family {
        let kind = match metric.kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
            Kind::Histogram => MetricType::HISTOGRAM,
        };
        self.by_name.entry(metric.name).or_insert_with(|| Family {
            help: metric.help,
            kind,
            series: BTreeMap::new(),
            folded: Default::default(),
            per_process: BTreeMap::new(),
        })
    }

    fn add(&mut self, metric: &'static Metric, labels: Labels, v: Value) {
        let (max, per_process) = (self.opts.max_series, self.opts.max_series_per_process);
        let fam = self.family(metric);
        let process = labels.iter().find(|(k, _)| *k == "pid").map(|(_, v)| v.clone());
        let known = fam.series.contains_key(&labels);
        let process_full = per_process > 0
            && process.as_ref().is_some_and(|p| fam.per_process.get(p).copied().unwrap_or(0) >= per_process);
        let labels = if known || (fam.series.len() < max && !process_full) {
            if !known && let Some(p) = &process {
                *fam.per_process.entry(p.clone()).or_default() += 1;
            }
            labels
        } else {
            // A process over its own cap keeps what says which process it is (in one series per
            // process, once it exists, whatever the global count: a label set must not move
            // between overflow series from scrape to scrape); over the global cap everything
            // folds.
            let fold = |keep: bool| -> Labels {
                labels
                    .iter()
                    .map(|(k, v)| {
                        (*k, if keep && PROCESS_LABELS.contains(k) { v.clone() } else { OVERFLOW.to_owned() })
                    })
                    .collect()
            };
            let own = fold(true);
            let overflow = if process_full && (fam.series.len() < max || fam.series.contains_key(&own)) {
                own
            } else {
                fold(false)
            };
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

    fn counter(&mut self, metric: &'static Metric, labels: Labels, v: f64) {
        self.add(metric, labels, Value::Scalar(v));
    }

    fn gauge(&mut self, metric: &'static Metric, labels: Labels, v: f64) {
        self.add(metric, labels, Value::Scalar(v));
    }

    fn histogram(&mut self, metric: &'static Metric, labels: Labels, h: &HistData) {
        let v = Value::Hist {
            buckets: h.buckets.clone(),
            count: h.count,
            sum_ns: h.sum_ns,
            exemplars: h.exemplars.clone(),
        };
        self.add(metric, labels, v);
    }
}

fn label_name(code: u32, label: Option<&'static str>) -> String {
    label.map_or_else(|| format!("unknown_{code}"), str::to_owned)
}

/// The model's series, by metric, capped.
pub(crate) fn collect(model: &Model, opts: &Options) -> Families {
    let mut f = Families { opts: opts.clone(), by_name: BTreeMap::new() };
    for engine in model.engines.values() {
        engine_metrics(engine, &mut f);
    }
    observer_metrics(model, &mut f);
    f
}

/// Encodes a model in the Prometheus protobuf format: the text format's series, and every
/// histogram also as a native histogram (`export::protobuf`).
pub fn encode_protobuf(model: &Model, opts: &Options) -> Vec<u8> {
    use crate::export::protobuf as pb;
    let f = collect(model, opts);
    let families: Vec<pb::MetricFamily> = f
        .by_name
        .into_iter()
        .map(|(name, fam)| {
            let shown = opts.layout.of(name);
            let kind = fam.kind;
            let metric = fam
                .series
                .into_iter()
                .map(|(labels, value)| {
                    let label = labels
                        .into_iter()
                        .map(|(k, v)| pb::LabelPair { name: Some(k.to_owned()), value: Some(v) })
                        .collect();
                    let mut out = pb::Metric { label, gauge: None, counter: None, histogram: None };
                    match value {
                        Value::Scalar(v) if kind == MetricType::COUNTER => {
                            out.counter = Some(pb::Counter { value: Some(v) })
                        }
                        Value::Scalar(v) => out.gauge = Some(pb::Gauge { value: Some(v) }),
                        Value::Hist { buckets, count, sum_ns, exemplars } => {
                            let mut h = pb::native(&buckets, count, sum_ns as f64 / 1e9);
                            let mut shown_exemplars = classic_exemplars(&exemplars, shown).into_iter();
                            h.bucket = classic(&buckets, shown)
                                .into_iter()
                                .map(|(le, n)| pb::Bucket {
                                    cumulative_count: Some(n),
                                    upper_bound: Some(le),
                                    exemplar: shown_exemplars.next().flatten().map(|e| pb_exemplar(&e)),
                                })
                                .collect();
                            // +Inf is implied by the count; written out only to carry an exemplar.
                            if let Some(e) = shown_exemplars.next().flatten() {
                                h.bucket.push(pb::Bucket {
                                    cumulative_count: Some(count),
                                    upper_bound: Some(f64::INFINITY),
                                    exemplar: Some(pb_exemplar(&e)),
                                });
                            }
                            out.histogram = Some(h);
                        }
                    }
                    out
                })
                .collect();
            let r#type = match kind {
                MetricType::COUNTER => pb::MetricType::Counter,
                MetricType::GAUGE => pb::MetricType::Gauge,
                _ => pb::MetricType::Histogram,
            };
            pb::MetricFamily {
                name: Some(name.to_owned()),
                help: Some(fam.help.to_owned()),
                r#type: Some(r#type as i32),
                metric,
            }
        })
        .collect();
    pb::encode(&families)
}

/// An exemplar's labels: the trace it links to, as Grafana's exemplar links look it up.
pub(crate) const EXEMPLAR_LABEL: &str = "trace_id";

fn pb_exemplar(e: &Exemplar) -> crate::export::protobuf::Exemplar {
    use crate::export::protobuf as pb;
    pb::Exemplar {
        label: vec![pb::LabelPair { name: Some(EXEMPLAR_LABEL.to_owned()), value: Some(e.trace_id_hex()) }],
        value: Some(e.value_ns as f64 / 1e9),
        timestamp: Some(pb::Timestamp {
            seconds: e.unix_ms.div_euclid(1000),
            nanos: (e.unix_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
    }
}

/// The exemplar of each classic bucket [`classic`] shows, then of +Inf: the latest of the
/// kernel buckets it covers.
pub(crate) fn classic_exemplars(exemplars: &BTreeMap<usize, Exemplar>, shown: &[usize]) -> Vec<Option<Exemplar>> {
    let bounds: Vec<usize> = shown.iter().copied().filter(|&i| i < hist::BUCKETS - 1).collect();
    let mut out: Vec<Option<Exemplar>> = vec![None; bounds.len() + 1];
    for (&k, e) in exemplars {
        let slot = bounds.iter().position(|&b| k <= b).unwrap_or(bounds.len());
        if out[slot].is_none_or(|old| old.unix_ms <= e.unix_ms) {
            out[slot] = Some(*e);
        }
    }
    out
}

/// The cumulative counts of kernel `buckets` at the `shown` bounds, each a kernel boundary
/// (exact): (upper bound in seconds, count). The last kernel bucket also holds everything
/// beyond its bound: it is never shown, only as +Inf (from the count).
pub(crate) fn classic(buckets: &[u64], shown: &[usize]) -> Vec<(f64, u64)> {
    let (mut cumulative, mut next) = (0u64, 0usize);
    shown
        .iter()
        .filter(|&&i| i < hist::BUCKETS - 1)
        .map(|&i| {
            cumulative += buckets.get(next..=i).map_or(0, |b| b.iter().sum::<u64>());
            next = i + 1;
            (hist::upper_seconds(i), cumulative)
        })
        .collect()
}

/// Encodes a model in the Prometheus text format.
pub fn encode(model: &Model, opts: &Options) -> String {
    let f = collect(model, opts);
    let families = to_proto(f, &opts.layout);
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&families, &mut out) {
        out.push_str(&format!("# encoding failed: {e}\n"));
    }
    out
}

fn engine_metrics(e: &Engine, f: &mut Families) {
    let pid_label = f.opts.pid_label;
    let process: Labels = f.opts.process_labels.get(&e.pid).cloned().unwrap_or_default();
    let labels = |mut labels: Labels| -> Labels {
        if pid_label {
            let mut front = vec![("pid", e.pid.to_string())];
            front.extend(process.iter().cloned());
            labels.splice(0..0, front);
        }
        labels
    };

    if e.has_registrations() {
        f.gauge(&m::QUERY_ACTIVE, labels(vec![]), e.queries_running() as f64);
    }
    for s in e.streams.values() {
        let l = || labels(vec![("stream_name", s.name.clone())]);
        if s.registered || s.subscribers > 0 {
            f.gauge(&m::STREAM_SUBSCRIBERS, l(), f64::from(s.subscribers));
        }
        if s.received() > 0 {
            f.counter(&m::STREAM_RECEIVED, l(), s.received() as f64);
        }
        if s.sent > 0 {
            f.counter(&m::STREAM_SENT, l(), s.sent as f64);
        }
        if s.backpressure > 0 {
            f.counter(&m::STREAM_BACKPRESSURE, l(), s.backpressure as f64);
        }
        if let Some(bytes) = s.buffer_bytes {
            f.gauge(&m::STREAM_BUFFER_BYTES, l(), bytes as f64);
        }
        if let Some(age) = s.oldest_event_age_seconds {
            f.gauge(&m::STREAM_OLDEST_AGE, l(), age);
        }
    }

    if let Some(secs) = e.cpu_outside_queries {
        f.counter(&m::QUERY_CPU, labels(vec![("query_id", "none".into()), ("stage", "none".into())]), secs);
    }
    for (op, &secs) in &e.cpu_ops_outside_queries {
        f.counter(&m::QUERY_CPU, labels(vec![("query_id", "none".into()), ("stage", op.span_name().into())]), secs);
    }
    if let Some(secs) = e.cpu_idle {
        f.counter(&m::QUERY_CPU, labels(vec![("query_id", "none".into()), ("stage", "idle".into())]), secs);
    }
    for q in e.queries.values() {
        let query = || ("query_id", q.name.clone());
        for (&stream, &n) in &q.processed {
            let l = labels(vec![query(), ("stream_name", e.stream_name(stream))]);
            f.counter(&m::QUERY_PROCESSED, l, n as f64);
        }
        for (&stream, &n) in &q.emitted {
            f.counter(&m::QUERY_EMITTED, labels(vec![query(), ("output_stream", e.stream_name(stream))]), n as f64);
        }
        if q.batches > 0 {
            f.counter(&m::QUERY_BATCHES, labels(vec![query()]), q.batches as f64);
        }
        for (stage, &secs) in &q.cpu_seconds {
            f.counter(&m::QUERY_CPU, labels(vec![query(), ("stage", stage.label())]), secs);
        }
        for (&kind, &n) in &q.errors {
            f.counter(
                &m::QUERY_ERRORS,
                labels(vec![
                    query(),
                    ("error_type", label_name(kind, ErrorKind::from_code(kind).map(ErrorKind::label))),
                ]),
                n as f64,
            );
        }
        if let Some(bytes) = q.window_bytes {
            let window = q.window.map_or("unknown", WindowKind::label);
            f.gauge(&m::QUERY_WINDOW_BYTES, labels(vec![query(), ("window_type", window.to_owned())]), bytes as f64);
        }
        if let Some(groups) = q.groups {
            f.gauge(&m::QUERY_GROUPS, labels(vec![query()]), groups as f64);
        }
        if let Some(u) = q.buffer_utilization {
            f.gauge(&m::QUERY_BUFFER_UTILIZATION, labels(vec![query()]), u);
        }
        if let Some(h) = &q.latency {
            f.histogram(&m::QUERY_LATENCY, labels(vec![query()]), h);
        }
        for (&st, h) in &q.stages {
            let Some(name) = stage::NAMES.get(st as usize) else { continue };
            f.histogram(&m::QUERY_STAGE_LATENCY, labels(vec![query(), ("stage", (*name).to_owned())]), h);
        }
    }

    for (&code, c) in &e.connections {
        let p = label_name(code, Protocol::from_code(code).map(Protocol::label));
        if c.opened > 0 {
            let l = labels(vec![("protocol", p.clone()), ("result", "success".into())]);
            f.counter(&m::CONNECTIONS, l, c.opened as f64);
        }
        // The engine's own figure also for connections made before the attach.
        if c.opened > 0 || c.open_now.is_some() {
            f.gauge(&m::CONNECTIONS_ACTIVE, labels(vec![("protocol", p.clone())]), c.active() as f64);
        }
        for (&kind, &n) in &c.failures {
            let l = labels(vec![("protocol", p.clone()), ("result", "failure".into())]);
            f.counter(&m::CONNECTIONS, l, n as f64);
            let kind = label_name(kind, ConnErrorKind::from_code(kind).map(ConnErrorKind::label));
            f.counter(&m::CONNECTION_ERRORS, labels(vec![("protocol", p.clone()), ("error_type", kind)]), n as f64);
        }
    }
    for c in e.components.values() {
        component_metrics(e, c, f, &labels);
    }
    if e.spans_dropped > 0 {
        f.counter(&m::ENGINE_SPANS_DROPPED, labels(vec![]), e.spans_dropped as f64);
    }
    if e.traces_declined > 0 {
        f.counter(&m::ENGINE_TRACES_DECLINED, labels(vec![]), e.traces_declined as f64);
    }

    if let Some(p) = &e.process {
        f.counter(&m::UPTIME, labels(vec![]), p.uptime_seconds);
        let mem = e.memory();
        for (component, bytes) in [("rss", mem.rss), ("window_state", mem.window_state), ("queues", mem.queues)] {
            f.gauge(&m::MEMORY, labels(vec![("component", component.into())]), bytes as f64);
        }
        f.gauge(&m::CPU_PERCENT, labels(vec![]), p.cpu_percent);
        f.counter(&m::CPU_SECONDS, labels(vec![]), p.cpu_seconds);
        f.gauge(&m::THREADS, labels(vec![]), p.threads as f64);
        if let Some(io) = p.io {
            for (direction, syscalls, storage) in
                [("read", io.rchar, io.read_bytes), ("write", io.wchar, io.write_bytes)]
            {
                f.counter(&m::IO_BYTES, labels(vec![("direction", direction.into())]), syscalls as f64);
                f.counter(&m::DISK_IO_BYTES, labels(vec![("direction", direction.into())]), storage as f64);
            }
        }
        if let Some(fds) = p.open_fds {
            f.gauge(&m::OPEN_FDS, labels(vec![]), fds as f64);
        }
    }
    if let Some(running) = e.running {
        f.gauge(&m::TARGET_RUNNING, labels(vec![]), if running { 1.0 } else { 0.0 });
    }
}

/// A component's series. Every family's labels are filled by name from the component: its own
/// name under its kind's label, its connector or table type, its stream, and the family's
/// second dimension decoded by the label's enumeration. A registered component's families
/// without a second dimension exist from its registration (0 until something happens), so
/// `rate()` and absence alerts work from the start.
fn component_metrics(e: &Engine, c: &Component, f: &mut Families, labels: &dyn Fn(Labels) -> Labels) {
    // A component known only from its counts has no kind to name its families by.
    if c.kind.is_none() {
        return;
    }
    let fill = |metric: &Metric, dimension: Option<Dimension>, label: u32| -> Labels {
        let values = metric.labels.iter().map(|&name| {
            let value = match name {
                "connector" => label_name(c.variant, Connector::from_code(c.variant).map(Connector::label)),
                "table_type" => label_name(c.variant, TableKind::from_code(c.variant).map(TableKind::label)),
                "window_type" => label_name(c.variant, WindowKind::from_code(c.variant).map(WindowKind::label)),
                "store_type" => label_name(c.variant, StoreKind::from_code(c.variant).map(StoreKind::label)),
                "junction_type" => label_name(c.variant, JunctionKind::from_code(c.variant).map(JunctionKind::label)),
                "stream_name" => c.stream.map_or_else(|| "none".to_owned(), |s| e.stream_name(s)),
                "query_id" => c.query.map_or_else(|| "none".to_owned(), |q| e.query_name(q)),
                _ => match dimension {
                    Some(d) if d.name == name => label_name(label, (d.decode)(label)),
                    // The first label: the component's name, under its kind's name.
                    _ => c.name.clone(),
                },
            };
            (name, value)
        });
        labels(values.collect())
    };
    for &code in ComponentCounter::ALL.iter().filter(|code| Some(code.kind()) == c.kind) {
        let Some(metric) = m::component_counter(code) else { continue };
        let series: Vec<(u32, u64)> =
            c.counters.iter().filter(|((k, _), _)| *k == code).map(|((_, label), n)| (*label, *n)).collect();
        if series.is_empty() && c.registered && code.dimension().is_none() {
            f.counter(metric, fill(metric, None, 0), 0.0);
        }
        for (label, n) in series {
            f.counter(metric, fill(metric, code.dimension(), label), n as f64);
        }
    }
    for (&(code, label), &v) in &c.gauges {
        if let Some(metric) = m::component_gauge(code) {
            f.gauge(metric, fill(metric, code.dimension(), label), v as f64);
        }
    }
    for (&op, h) in &c.ops {
        if let Some(metric) = m::component_op(op) {
            f.histogram(metric, fill(metric, None, 0), h);
        }
    }
}

fn observer_metrics(model: &Model, f: &mut Families) {
    let d = &model.observer;
    f.gauge(
        &m::BUILD_INFO,
        vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("abi_version", eventflux_abi::ABI_VERSION.to_string()),
        ],
        1.0,
    );
    f.gauge(&m::PROBES_ATTACHED, vec![], d.probes_attached as f64);
    f.gauge(&m::SITES_ATTACHED, vec![], d.sites_attached as f64);
    f.counter(&m::SITES_REFUSED, vec![], d.sites_refused as f64);
    if let Some(ready) = d.ready {
        f.gauge(&m::READY, vec![], if ready { 1.0 } else { 0.0 });
    }
    for (name, runs, seconds) in &d.programs {
        f.counter(&m::PROGRAM_RUNS, vec![("program", (*name).to_owned())], *runs as f64);
        f.counter(&m::PROGRAM_SECONDS, vec![("program", (*name).to_owned())], *seconds);
    }
    for (name, entries, capacity) in &d.maps {
        f.gauge(&m::MAP_ENTRIES, vec![("map", (*name).to_owned())], *entries as f64);
        f.gauge(&m::MAP_CAPACITY, vec![("map", (*name).to_owned())], *capacity as f64);
    }
    for (i, n) in d.drops.iter().enumerate() {
        f.counter(&m::KERNEL_DROPS, vec![("reason", drops::NAMES[i].to_owned())], *n as f64);
    }
    if let Some(o) = &d.otlp {
        f.counter(&m::SPANS_EXPORTED, vec![], o.exported_spans as f64);
        for (reason, n) in crate::model::DROP_REASONS.iter().zip(o.dropped_spans) {
            f.counter(&m::SPANS_DROPPED, vec![("reason", (*reason).to_owned())], n as f64);
        }
        if let Some(x) = &o.metrics {
            f.counter(&m::METRIC_EXPORTS, vec![("result", "ok".to_owned())], x.exports_ok as f64);
            f.counter(&m::METRIC_EXPORTS, vec![("result", "failed".to_owned())], x.exports_failed as f64);
        }
    }
    if d.unknown_series > 0 {
        f.gauge(&m::UNKNOWN_SERIES, vec![], d.unknown_series as f64);
    }
    let folded: Vec<(&'static str, u64)> = f
        .by_name
        .iter()
        .filter(|(_, fam)| !fam.folded.is_empty())
        .map(|(n, fam)| (*n, fam.folded.len() as u64))
        .collect();
    for (metric, n) in folded {
        f.gauge(&m::SERIES_FOLDED, vec![("metric", metric.to_owned())], n as f64);
    }
}

fn to_proto(f: Families, layout: &Layout) -> Vec<MetricFamily> {
    f.by_name
        .into_iter()
        .map(|(name, fam)| {
            let shown = layout.of(name);
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
                        Value::Hist { buckets, count, sum_ns, .. } => {
                            let mut h = proto::Histogram::default();
                            h.set_sample_count(count);
                            h.set_sample_sum(sum_ns as f64 / 1e9);
                            // +Inf: the encoder adds it from the count.
                            let out = classic(&buckets, shown)
                                .into_iter()
                                .map(|(le, n)| {
                                    let mut b = proto::Bucket::default();
                                    b.set_upper_bound(le);
                                    b.set_cumulative_count(n);
                                    b
                                })
                                .collect();
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::model::snapshot::{Io, ProcStats};
    use crate::model::{Connections, Query, Stream};

    fn hist_data() -> HistData {
        let mut buckets = vec![0; hist::BUCKETS];
        buckets[40] = 3;
        HistData { buckets, count: 3, sum_ns: 3000, max_ns: 1000, ..Default::default() }
    }

    /// A model in which every metric has something to say.
    fn rich() -> Model {
        let mut e = Engine {
            pid: 42,
            running: Some(true),
            spans_dropped: 2,
            traces_declined: 3,
            cpu_outside_queries: Some(0.25),
            ..Default::default()
        };
        e.process = Some(ProcStats {
            uptime_seconds: 10.0,
            rss_bytes: 1 << 20,
            virtual_bytes: 1 << 22,
            threads: 4,
            cpu_percent: 50.0,
            cpu_seconds: 5.0,
            open_fds: Some(9),
            io: Some(Io { rchar: 1, wchar: 2, read_bytes: 3, write_bytes: 4 }),
        });
        e.streams.insert(
            0,
            Stream {
                id: 0,
                name: "S0".into(),
                registered: true,
                received_from_sources: 10,
                sent: 10,
                backpressure: 1,
                subscribers: 5,
                buffer_bytes: Some(64),
                oldest_event_age_seconds: Some(0.5),
                ..Default::default()
            },
        );
        // More queries than the cap below: some are folded.
        for id in 0..5 {
            e.queries.insert(
                id,
                Query {
                    id,
                    name: format!("q{id}"),
                    registered: true,
                    active: true,
                    input_stream: Some(0),
                    inputs: vec![0],
                    output_stream: Some(1),
                    window: Some(eventflux_abi::WindowKind::Length),
                    processed: BTreeMap::from([(0, 10)]),
                    emitted: BTreeMap::from([(1, 5)]),
                    batches: 2,
                    errors: BTreeMap::from([(1, 1)]),
                    backpressure: 0,
                    window_bytes: Some(100),
                    groups: Some(3),
                    buffer_utilization: Some(0.5),
                    latency: Some(hist_data()),
                    stages: BTreeMap::from([(stage::FILTER, hist_data())]),
                    cpu_seconds: BTreeMap::from([(crate::model::CpuStage::Stage(eventflux_abi::Stage::Filter), 1.5)]),
                },
            );
        }
        e.connections
            .insert(0, Connections { opened: 2, closed: 1, open_now: None, failures: BTreeMap::from([(0, 1)]) });
        // One component of each kind, each of its counters and gauges with a value.
        for (id, kind) in eventflux_abi::ComponentKind::ALL.iter().enumerate() {
            let id = id as u32;
            let counters = ComponentCounter::ALL.iter().filter(|c| c.kind() == *kind).map(|c| ((*c, 1), 7)).collect();
            let gauges =
                eventflux_abi::ComponentGauge::ALL.iter().filter(|g| g.kind() == *kind).map(|g| ((*g, 0), 5)).collect();
            let ops = eventflux_abi::ComponentOp::ALL
                .iter()
                .filter(|o| o.kind() == *kind)
                .map(|o| (*o, hist_data()))
                .collect();
            let component = crate::model::Component {
                id,
                name: format!("{}{id}", kind.label()),
                registered: true,
                active: true,
                kind: Some(*kind),
                variant: 0,
                stream: Some(0),
                query: Some(0),
                counters,
                gauges,
                ops,
            };
            e.components.insert(id, component);
        }
        let mut model = Model::default();
        model.engines.insert(42, e);
        let o = &mut model.observer;
        o.sites_attached = 3;
        o.probes_attached = 3;
        o.programs = vec![("ingest", 5, 0.001)];
        o.maps = vec![("COUNTERS", 10, 16384)];
        o.unknown_series = 1;
        o.ready = Some(true);
        o.otlp = Some(crate::model::OtlpState {
            metrics: Some(crate::model::OtlpMetricsState::default()),
            ..Default::default()
        });
        model
    }

    /// The per-process cap (node mode): each process keeps its first label sets and sums the
    /// rest into one overflow series that still says which process it is; the sums are exact;
    /// the global cap still folds everything past it.
    #[test]
    fn the_per_process_cap_folds_each_process_on_its_own() {
        let mut model = Model::default();
        for pid in [1, 2] {
            let mut e = rich().engines.remove(&42).expect("engine");
            e.pid = pid;
            model.engines.insert(pid, e);
        }
        let process_labels = BTreeMap::from([(1, vec![("exe", "/a".to_owned())]), (2, vec![("exe", "/b".to_owned())])]);
        let opts = Options {
            max_series: 100,
            pid_label: true,
            max_series_per_process: 2,
            process_labels,
            ..Options::default()
        };
        let text = encode(&model, &opts);
        let processed: Vec<&str> = text.lines().filter(|l| l.starts_with("query_batches_total{")).collect();
        assert_eq!(
            processed,
            [
                r#"query_batches_total{pid="1",exe="/a",query_id="overflow"} 6"#,
                r#"query_batches_total{pid="1",exe="/a",query_id="q0"} 2"#,
                r#"query_batches_total{pid="1",exe="/a",query_id="q1"} 2"#,
                r#"query_batches_total{pid="2",exe="/b",query_id="overflow"} 6"#,
                r#"query_batches_total{pid="2",exe="/b",query_id="q0"} 2"#,
                r#"query_batches_total{pid="2",exe="/b",query_id="q1"} 2"#,
            ],
            "{text}"
        );
        assert!(text.contains(r#"eventflux_probe_series_folded{metric="query_batches_total"} 6"#), "{text}");
        // Globally capped at 3: the first process's two, then everything folds, pid included.
        let opts = Options { max_series: 3, ..opts };
        let text = encode(&model, &opts);
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with("query_batches_total{"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        assert_eq!(total, 20.0, "folding loses nothing: {text}");
    }

    /// Every family the exporter writes is in `metrics::ALL` with its type, every series has
    /// exactly the catalog's labels (plus `pid` for engine metrics when asked, `le` for
    /// buckets), and every catalogued metric appears: the catalog is the exporter's truth.
    #[test]
    fn every_series_matches_the_catalog_and_every_metric_is_exported() {
        for pid_label in [false, true] {
            let process_labels = BTreeMap::from([(42, vec![("exe", "/bin/engine".to_owned())])]);
            let opts = Options { max_series: 3, pid_label, process_labels, ..Options::default() };
            let text = encode(&rich(), &opts);
            let mut seen = BTreeSet::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').expect("TYPE line");
                    let metric =
                        crate::export::metrics::by_name(name).unwrap_or_else(|| panic!("{name} not in the catalog"));
                    assert_eq!(metric.kind.name(), kind, "{name}");
                    seen.insert(name.to_owned());
                    continue;
                }
                if line.starts_with('#') || line.is_empty() {
                    continue;
                }
                let series = line.split(['{', ' ']).next().expect("name");
                let metric = crate::export::metrics::by_name(series)
                    .or_else(|| crate::export::metrics::by_series_name(series))
                    .unwrap_or_else(|| panic!("{series} not in the catalog"));
                let labels: Vec<&str> = match line.split_once('{') {
                    Some((_, rest)) => rest
                        .split_once('}')
                        .expect("closing brace")
                        .0
                        .split(',')
                        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                        .filter(|k| *k != "le")
                        .collect(),
                    None => vec![],
                };
                let mut want: Vec<&str> = metric.labels.to_vec();
                if pid_label && metric.scope == crate::export::metrics::Scope::Engine {
                    want.splice(0..0, ["pid", "exe"]);
                }
                assert_eq!(labels, want, "{line}");
            }
            let all: BTreeSet<String> = crate::export::metrics::ALL.iter().map(|m| m.name.to_owned()).collect();
            assert_eq!(seen, all, "catalogued metrics the exporter did not write (or the reverse)");
        }
    }
}
