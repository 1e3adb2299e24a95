//! The observed engines as types: what a [`Snapshot`] of the kernel maps, the registrations and
//! `/proc` *means*, built once per snapshot. Exporters (Prometheus, OTLP, health, in `run` and
//! in node mode) only format a [`Model`]; none of them reads a raw map key. The model imports
//! no later stage (only `find`'s description of a refused site): [`collect`](crate::collect)
//! fills its [`snapshot`] types, and everything after it reads the [`Model`].
//!
//! Everything the kernel keys by number is resolved here, in one place:
//! - counter and gauge kinds (`eventflux_probe_common::{counter, gauge}`) become fields; a kind
//!   this build does not know is counted in [`Observer::unknown_series`], never dropped silently;
//! - ids become entities, named by their registration, or `stream<ID>` / `query<ID>` until the
//!   registration arrives (an entity known only from its counts is `registered: false`);
//! - derived facts are computed once: open connections (the engine's gauge, else opened − closed), queue utilisation
//!   (depth / capacity), memory by component, the oldest waiting chunk of a stream.

pub mod catalog;
pub mod exemplars;
pub mod hist;
pub mod snapshot;
pub mod trace;

use std::collections::BTreeMap;

use eventflux_abi::slot::{self, Where};
use eventflux_abi::{ComponentCounter, ComponentGauge, ComponentKind, ComponentOp, Stage, WindowKind};
use eventflux_probe_common::{counter, drop, gauge, stage};

use hist::HistData;
use snapshot::{ProcStats, Snapshot};

/// Every observed engine, and the observer itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// By pid (the pid as this observer sees it).
    pub engines: BTreeMap<u32, Engine>,
    pub observer: Observer,
}

/// One engine process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Engine {
    pub pid: u32,
    /// Whether the process still runs the program the probes were attached to; `None` for a
    /// pid known only from map entries (not a target of this observer any more).
    pub running: Option<bool>,
    /// The last `/proc` reading (kept after the process exited).
    pub process: Option<ProcStats>,
    pub streams: BTreeMap<u32, Stream>,
    pub queries: BTreeMap<u32, Query>,
    /// By protocol code (`eventflux_abi::Protocol`).
    pub connections: BTreeMap<u32, Connections>,
    /// Sources, sinks, the error store, tables, … by component id.
    pub components: BTreeMap<u32, Component>,
    /// Span records of sampled batches the engine could not keep.
    pub spans_dropped: u64,
    /// Batches an upstream sampled that the engine did not trace (its per-thread bound).
    pub traces_declined: u64,
    /// CPU seconds sampled outside any query (engine overhead, sources, unmarked spinning,
    /// I/O); `None` when CPU samples are not taken. A query's own are in [`Query::cpu_seconds`].
    pub cpu_outside_queries: Option<f64>,
    /// CPU seconds in component operations outside any query (a sink on its own thread).
    pub cpu_ops_outside_queries: BTreeMap<eventflux_abi::ComponentOp, f64>,
    /// CPU seconds of threads idle in a pool (`cpu::Idle`: consumers spinning for work); `None`
    /// until such a sample.
    pub cpu_idle: Option<f64>,
}

/// A stream (junction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stream {
    pub id: u32,
    pub name: String,
    pub registered: bool,
    /// Events from sources (the `ingest` probe).
    pub received_from_sources: u64,
    /// Events inserted by queries (`emitted` into this stream as an output).
    pub received_from_queries: u64,
    /// Events handed to subscribers (one per subscriber per event).
    pub sent: u64,
    /// Times a producer found a subscriber's queue full.
    pub backpressure: u64,
    /// Active queries reading this stream.
    pub subscribers: u32,
    /// Bytes queued for the stream's subscribers (async junctions only).
    pub buffer_bytes: Option<u64>,
    /// How long the most recently dequeued chunk waited, the longest over subscribers.
    pub oldest_event_age_seconds: Option<f64>,
}

impl Stream {
    pub fn received(&self) -> u64 {
        self.received_from_sources + self.received_from_queries
    }
}

/// A query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub id: u32,
    pub name: String,
    pub registered: bool,
    /// Registered and not unregistered.
    pub active: bool,
    pub input_stream: Option<u32>,
    /// Every stream it reads, its registered input first (a join or pattern reads several).
    pub inputs: Vec<u32>,
    pub output_stream: Option<u32>,
    pub window: Option<WindowKind>,
    /// Events that entered the query, by input stream id.
    pub processed: BTreeMap<u32, u64>,
    /// Rows emitted, by output stream id.
    pub emitted: BTreeMap<u32, u64>,
    /// Batches (chunks), every one.
    pub batches: u64,
    /// Failed events, by `eventflux_abi::ErrorKind` code.
    pub errors: BTreeMap<u32, u64>,
    /// Times a producer found this query's queue full.
    pub backpressure: u64,
    pub window_bytes: Option<u64>,
    pub groups: Option<u64>,
    /// Input queue fill, 0 to 1 (async junctions, once the capacity is known).
    pub buffer_utilization: Option<f64>,
    /// Whole-batch latency of sampled batches.
    pub latency: Option<HistData>,
    /// Self time per stage (`stage::*` codes below `BATCH`) of sampled batches.
    pub stages: BTreeMap<u32, HistData>,
    /// CPU seconds sampled while the query's batches ran, by where in the query: every batch,
    /// its nested queries' batches excluded (they count as theirs).
    pub cpu_seconds: BTreeMap<CpuStage, f64>,
}

/// Where in a query a CPU sample fell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuStage {
    /// In one of its stages.
    Stage(Stage),
    /// In the query's own code, outside its stages (set-up, hand-offs between stages).
    Other,
    /// In a component operation (a table lookup, a sink publish) inside the query.
    Op(eventflux_abi::ComponentOp),
    /// A slot state this build does not know (a newer engine).
    Unknown(u32),
}

impl CpuStage {
    /// The `stage` label.
    pub fn label(self) -> String {
        match self {
            CpuStage::Stage(s) => s.label().to_owned(),
            CpuStage::Other => "other".to_owned(),
            CpuStage::Op(op) => op.span_name().to_owned(),
            CpuStage::Unknown(state) => format!("unknown_{state}"),
        }
    }
}

impl Query {
    pub fn processed_total(&self) -> u64 {
        self.processed.values().sum()
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A component beyond the query pipeline (`component_register`): a source, a sink, the error
/// store, a table. Its series are generic: each counter or gauge code is one exported family
/// (`eventflux_abi::ComponentCounter`, `ComponentGauge`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Component {
    pub id: u32,
    pub name: String,
    pub registered: bool,
    /// Registered and not unregistered.
    pub active: bool,
    /// `None` until the registration arrives, or a kind this build does not know.
    pub kind: Option<ComponentKind>,
    /// Its Connector or TableKind code.
    pub variant: u32,
    pub stream: Option<u32>,
    pub query: Option<u32>,
    /// By (counter, label): amounts since the attach.
    pub counters: BTreeMap<(ComponentCounter, u32), u64>,
    /// By (gauge, label): the engine's latest value.
    pub gauges: BTreeMap<(ComponentGauge, u32), u64>,
    /// Durations of the operations the engine timed.
    pub ops: BTreeMap<ComponentOp, HistData>,
}

impl Component {
    /// The sum of a counter over its labels.
    pub fn counter(&self, c: ComponentCounter) -> u64 {
        self.counters.iter().filter(|((code, _), _)| *code == c).map(|(_, v)| v).sum()
    }

    /// A gauge's value (label 0).
    pub fn gauge(&self, g: ComponentGauge) -> Option<u64> {
        self.gauges.get(&(g, 0)).copied()
    }
}

/// Connections of one protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connections {
    pub opened: u64,
    pub closed: u64,
    /// Open now, as the engine holds it (`conn_active`); `None` from an engine that does not
    /// report it.
    pub open_now: Option<u64>,
    /// Failed attempts by `eventflux_abi::ConnErrorKind` code.
    pub failures: BTreeMap<u32, u64>,
}

impl Connections {
    /// Open now: the engine's own figure; else opened minus closed since the attach (which
    /// misses what was open before it).
    pub fn active(&self) -> u64 {
        self.open_now.unwrap_or_else(|| self.opened.saturating_sub(self.closed))
    }
}

/// The observer's own state, from the kernel's point of view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observer {
    pub sites_attached: usize,
    pub probes_attached: usize,
    /// Sites refused since load because their code was not the promised nop, and the latest.
    pub sites_refused: u64,
    pub refused: Vec<crate::find::usdt::verify::RefusedSite>,
    /// (program, run count, run time in seconds)
    pub programs: Vec<(&'static str, u64, f64)>,
    /// (map, entries, capacity)
    pub maps: Vec<(&'static str, usize, u32)>,
    /// Probe hits the kernel side could not record, by `drop::NAMES` index.
    pub drops: [u64; drop::COUNT as usize],
    /// Map entries of kinds this build does not know (a newer kernel side?).
    pub unknown_series: u64,
    /// Whether the daemon is ready (`/ready`); set by the daemon, `None` outside one.
    pub ready: Option<bool>,
    /// The OTLP exporter's state, when the daemon exports traces.
    pub otlp: Option<OtlpState>,
}

impl Observer {
    /// Runs of every program: grows with every probe hit.
    pub fn probe_hits(&self) -> u64 {
        self.programs.iter().map(|(_, runs, _)| runs).sum()
    }

    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Memory of an engine by component, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    pub rss: u64,
    pub window_state: u64,
    pub queues: u64,
}

impl Engine {
    fn new(pid: u32) -> Engine {
        Engine { pid, ..Engine::default() }
    }

    fn stream(&mut self, id: u32) -> &mut Stream {
        self.streams.entry(id).or_insert_with(|| Stream { id, name: format!("stream{id}"), ..Stream::default() })
    }

    fn query(&mut self, id: u32) -> &mut Query {
        self.queries.entry(id).or_insert_with(|| Query { id, name: format!("query{id}"), ..Query::default() })
    }

    fn component(&mut self, id: u32) -> &mut Component {
        self.components.entry(id).or_insert_with(|| Component {
            id,
            name: format!("component{id}"),
            ..Component::default()
        })
    }

    /// The query's name, or `query<ID>` for one never seen.
    pub fn query_name(&self, id: u32) -> String {
        self.queries.get(&id).map_or_else(|| format!("query{id}"), |q| q.name.clone())
    }

    /// The stream's name, or `stream<ID>` for one never seen.
    pub fn stream_name(&self, id: u32) -> String {
        self.streams.get(&id).map_or_else(|| format!("stream{id}"), |s| s.name.clone())
    }

    /// Queries registered and not unregistered.
    pub fn queries_running(&self) -> usize {
        self.queries.values().filter(|q| q.active).count()
    }

    /// Streams the engine registered.
    pub fn streams_registered(&self) -> usize {
        self.streams.values().filter(|s| s.registered).count()
    }

    /// Whether anything of this engine was registered (its series exist from then on).
    pub fn has_registrations(&self) -> bool {
        self.streams_registered() > 0 || self.queries_running() > 0 || self.components.values().any(|c| c.registered)
    }

    pub fn memory(&self) -> Memory {
        Memory {
            rss: self.process.map_or(0, |p| p.rss_bytes),
            window_state: self.queries.values().filter_map(|q| q.window_bytes).sum(),
            queues: self.streams.values().filter_map(|s| s.buffer_bytes).sum(),
        }
    }

    /// Events that entered any query.
    pub fn processed_total(&self) -> u64 {
        self.queries.values().map(Query::processed_total).sum()
    }

    pub fn errors_total(&self) -> u64 {
        self.queries.values().map(Query::errors_total).sum()
    }

    pub fn backpressure_total(&self) -> u64 {
        self.streams.values().map(|s| s.backpressure).sum()
    }

    /// Events from sources, over every stream.
    pub fn ingested_total(&self) -> u64 {
        self.streams.values().map(|s| s.received_from_sources).sum()
    }

    /// Events handed to subscribers, over every stream.
    pub fn sent_total(&self) -> u64 {
        self.streams.values().map(|s| s.sent).sum()
    }

    /// A component gauge summed over every active component and label.
    pub fn component_gauges(&self, g: ComponentGauge) -> u64 {
        self.components
            .values()
            .filter(|c| c.active)
            .flat_map(|c| c.gauges.iter())
            .filter(|((code, _), _)| *code == g)
            .map(|(_, v)| v)
            .sum()
    }

    /// A component counter summed over every component and label.
    pub fn component_total(&self, c: ComponentCounter) -> u64 {
        self.components.values().map(|x| x.counter(c)).sum()
    }

    pub fn connections_active(&self) -> u64 {
        self.connections.values().map(Connections::active).sum()
    }
}

impl Model {
    /// What a snapshot means.
    pub fn build(snap: &Snapshot) -> Model {
        let mut model = Model::default();
        fn engine(m: &mut Model, pid: u32) -> &mut Engine {
            m.engines.entry(pid).or_insert_with(|| Engine::new(pid))
        }

        for (&(pid, id), s) in &snap.catalog.streams {
            let st = engine(&mut model, pid).stream(id);
            st.name = s.name.clone();
            st.registered = true;
        }
        for (&(pid, id), q) in &snap.catalog.queries {
            let e = engine(&mut model, pid);
            let query = e.query(id);
            query.name = q.name.clone();
            query.registered = true;
            query.active = q.active;
            query.input_stream = Some(q.input_stream);
            query.output_stream = Some(q.output_stream);
            query.window = WindowKind::from_code(q.window);
            // The series of a registered query exist before its first event, for each stream it
            // reads, and each such stream has it as a subscriber while it runs.
            let more = snap.catalog.inputs.get(&(pid, id)).into_iter().flatten().copied();
            let inputs: Vec<u32> =
                std::iter::once(q.input_stream).chain(more.filter(|s| *s != q.input_stream)).collect();
            for &s in &inputs {
                query.processed.entry(s).or_insert(0);
            }
            query.inputs = inputs.clone();
            if q.active {
                for s in inputs {
                    e.stream(s).subscribers += 1;
                }
            }
        }

        for (&(pid, id), c) in &snap.catalog.components {
            let component = engine(&mut model, pid).component(id);
            component.name = c.name.clone();
            component.registered = true;
            component.active = c.active;
            component.kind = ComponentKind::from_code(c.kind);
            component.variant = c.variant;
            component.stream = (c.stream != eventflux_abi::NONE).then_some(c.stream);
            component.query = (c.query != eventflux_abi::NONE).then_some(c.query);
            // A sink consumes its stream as a query does: an output stream with a sink has a
            // subscriber.
            if c.active && component.kind == Some(ComponentKind::Sink) && c.stream != eventflux_abi::NONE {
                engine(&mut model, pid).stream(c.stream).subscribers += 1;
            }
        }

        for (k, &v) in &snap.counters {
            let e = engine(&mut model, k.pid);
            if let Some(code) = k.counter.checked_sub(counter::COMPONENT) {
                match ComponentCounter::from_code(code) {
                    Some(c) => *e.component(k.a).counters.entry((c, k.b)).or_insert(0) += v,
                    None => model.observer.unknown_series += 1,
                }
                continue;
            }
            match k.counter {
                counter::STREAM_RECEIVED => e.stream(k.a).received_from_sources += v,
                counter::STREAM_EMITTED_INTO => e.stream(k.a).received_from_queries += v,
                counter::STREAM_SENT => e.stream(k.a).sent += v,
                counter::BACKPRESSURE => {
                    e.stream(k.a).backpressure += v;
                    e.query(k.b).backpressure += v;
                }
                counter::QUERY_PROCESSED => {
                    *e.query(k.a).processed.entry(k.b).or_insert(0) += v;
                    e.stream(k.b);
                }
                counter::QUERY_EMITTED => {
                    *e.query(k.a).emitted.entry(k.b).or_insert(0) += v;
                    e.stream(k.b);
                }
                counter::QUERY_BATCHES => e.query(k.a).batches += v,
                counter::QUERY_ERRORS => *e.query(k.a).errors.entry(k.b).or_insert(0) += v,
                counter::CONN_OPENED => e.connections.entry(k.a).or_default().opened += v,
                counter::CONN_CLOSED => e.connections.entry(k.a).or_default().closed += v,
                counter::CONN_ERRORS => *e.connections.entry(k.a).or_default().failures.entry(k.b).or_insert(0) += v,
                counter::ENGINE_SPANS_DROPPED => e.spans_dropped += v,
                counter::ENGINE_TRACES_DECLINED => e.traces_declined += v,
                _ => model.observer.unknown_series += 1,
            }
        }

        if let Some(period) = snap.cpu_period {
            for (k, &n) in &snap.cpu {
                let secs = n as f64 * period.as_secs_f64();
                let e = engine(&mut model, k.pid);
                let (query, stage) = match slot::decode((u64::from(k.query) << 32) | u64::from(k.state)) {
                    Where::None => {
                        *e.cpu_outside_queries.get_or_insert(0.0) += secs;
                        continue;
                    }
                    Where::Idle(_) => {
                        *e.cpu_idle.get_or_insert(0.0) += secs;
                        continue;
                    }
                    Where::Op(q, op) if q == eventflux_abi::NONE => {
                        *e.cpu_ops_outside_queries.entry(op).or_insert(0.0) += secs;
                        continue;
                    }
                    Where::Op(q, op) => (q, CpuStage::Op(op)),
                    Where::Query(q) => (q, CpuStage::Other),
                    Where::Stage(q, s) => (q, CpuStage::Stage(s)),
                    Where::Unknown(q, state) => (q, CpuStage::Unknown(state)),
                };
                *e.query(query).cpu_seconds.entry(stage).or_insert(0.0) += secs;
            }
        }

        for (k, &v) in &snap.gauges {
            let e = engine(&mut model, k.pid);
            if let Some(code) = k.counter.checked_sub(gauge::COMPONENT) {
                match ComponentGauge::from_code(code) {
                    Some(g) => {
                        e.component(k.a).gauges.insert((g, k.b), v);
                    }
                    None => model.observer.unknown_series += 1,
                }
                continue;
            }
            match k.counter {
                gauge::WINDOW_STATE_BYTES => e.query(k.a).window_bytes = Some(v),
                gauge::GROUPS => e.query(k.a).groups = Some(v),
                gauge::CONN_ACTIVE => e.connections.entry(k.a).or_default().open_now = Some(v),
                gauge::QUEUE_DEPTH => {
                    let capacity = snap
                        .gauges
                        .get(&eventflux_probe_common::CounterKey { counter: gauge::QUEUE_CAPACITY, ..*k })
                        .copied()
                        .filter(|c| *c > 0);
                    if let Some(capacity) = capacity {
                        e.query(k.b).buffer_utilization = Some(v as f64 / capacity as f64);
                    }
                }
                // Read with QUEUE_DEPTH above.
                gauge::QUEUE_CAPACITY => {}
                gauge::QUEUE_BYTES => *e.stream(k.a).buffer_bytes.get_or_insert(0) += v,
                gauge::QUEUE_WAIT_NS => {
                    let age = e.stream(k.a).oldest_event_age_seconds.get_or_insert(0.0);
                    *age = age.max(v as f64 / 1e9);
                }
                _ => model.observer.unknown_series += 1,
            }
        }

        for (k, h) in &snap.hists {
            if let Some(code) = k.stage.checked_sub(stage::COMPONENT) {
                match ComponentOp::from_code(code) {
                    Some(op) => {
                        engine(&mut model, k.pid).component(k.query).ops.insert(op, h.clone());
                    }
                    None => model.observer.unknown_series += 1,
                }
                continue;
            }
            let q = engine(&mut model, k.pid).query(k.query);
            if k.stage == stage::BATCH {
                q.latency = Some(h.clone());
            } else if (k.stage as usize) < stage::NAMES.len() {
                q.stages.insert(k.stage, h.clone());
            } else {
                model.observer.unknown_series += 1;
            }
        }

        for (&pid, p) in &snap.processes {
            engine(&mut model, pid).process = Some(*p);
        }
        for &(pid, running) in &snap.daemon.targets {
            engine(&mut model, pid).running = Some(running);
        }

        let d = &snap.daemon;
        model.observer.sites_attached = d.sites_attached;
        model.observer.probes_attached = d.probes_attached;
        model.observer.sites_refused = d.sites_refused;
        model.observer.refused = d.refused.clone();
        model.observer.programs = d.programs.iter().map(|(n, runs, t)| (*n, *runs, t.as_secs_f64())).collect();
        model.observer.maps = d.maps.clone();
        model.observer.drops = d.drops;
        if snap.cpu_period.is_some() {
            // Sampled: an engine without a sample outside its queries has 0 there, not nothing.
            for e in model.engines.values_mut() {
                e.cpu_outside_queries.get_or_insert(0.0);
            }
        }
        model
    }
}

/// Why spans were dropped, by `DROP_REASONS` index.
pub const DROP_REASONS: [&str; 2] = ["queue_full", "export_failed"];

/// The exporter's state, for `/metrics` and `/health`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct OtlpState {
    pub endpoint: String,
    pub protocol: &'static str,
    pub exported_spans: u64,
    /// By [`DROP_REASONS`].
    pub dropped_spans: [u64; 2],
    pub queued_spans: usize,
    /// The last export's error, cleared by a successful one.
    pub last_error: Option<String>,
    /// Seconds since the last successful export.
    pub last_success_seconds_ago: Option<f64>,
    /// OTLP metrics, when exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<OtlpMetricsState>,
}

/// The OTLP metrics export's own figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct OtlpMetricsState {
    pub endpoint: String,
    pub temporality: &'static str,
    pub exports_ok: u64,
    pub exports_failed: u64,
    /// The last export's error, cleared by a successful one.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use eventflux_probe_common::{CounterKey, HistKey};

    use super::catalog::{QueryMeta, StreamMeta};
    use super::*;

    fn key(pid: u32, counter: u32, a: u32, b: u32) -> CounterKey {
        CounterKey { pid, counter, a, b }
    }

    fn registered() -> Snapshot {
        let mut snap = Snapshot::default();
        let stream = |name: &str| StreamMeta { name: name.into(), role: 0, junction: 0, capacity: 0 };
        snap.catalog.streams.insert((7, 0), stream("Trades"));
        snap.catalog.streams.insert((7, 1), stream("Alerts"));
        snap.catalog.queries.insert(
            (7, 3),
            QueryMeta {
                name: "big_trades".into(),
                input_stream: 0,
                output_stream: 1,
                window: WindowKind::Length.code(),
                window_size: 10,
                active: true,
            },
        );
        snap
    }

    #[test]
    fn cpu_samples_become_seconds_by_query_and_stage() {
        use eventflux_probe_common::{CpuKey, NO_STACK};
        let mut snap = registered();
        let at = |query: u32, stage: Option<Stage>| {
            let v = slot::encode(query, stage);
            CpuKey {
                pid: 7,
                query: (v >> 32) as u32,
                state: v as u32,
                user_stack: NO_STACK,
                kernel_stack: NO_STACK,
                _pad: 0,
            }
        };
        snap.cpu.insert(at(3, Some(Stage::Filter)), 30);
        snap.cpu.insert(at(3, None), 2);
        snap.cpu.insert(CpuKey { pid: 7, ..CpuKey::default() }, 5);
        snap.cpu.insert(CpuKey { pid: 7, query: 3, state: 77, ..CpuKey::default() }, 1);
        let m = Model::build(&snap);
        assert_eq!(m.engines[&7].cpu_outside_queries, None, "not sampled: no attribution at all");
        snap.cpu_period = Some(std::time::Duration::from_millis(10));
        let m = Model::build(&snap);
        let e = &m.engines[&7];
        let q = &e.queries[&3];
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(q.cpu_seconds[&CpuStage::Stage(Stage::Filter)], 0.30));
        assert!(close(q.cpu_seconds[&CpuStage::Other], 0.02));
        assert_eq!(CpuStage::Unknown(77).label(), "unknown_77");
        assert!(close(e.cpu_outside_queries.unwrap_or(-1.0), 0.05));
    }

    #[test]
    fn a_registered_query_exists_before_its_first_event() {
        let m = Model::build(&registered());
        let e = &m.engines[&7];
        let q = &e.queries[&3];
        assert_eq!((q.name.as_str(), q.registered, q.active), ("big_trades", true, true));
        assert_eq!(q.processed, BTreeMap::from([(0, 0)]));
        assert_eq!(q.window, Some(WindowKind::Length));
        assert_eq!(e.streams[&0].subscribers, 1);
        assert_eq!(e.streams[&1].subscribers, 0);
        assert_eq!((e.queries_running(), e.streams_registered()), (1, 2));
    }

    #[test]
    fn counters_become_fields_and_unknown_kinds_are_counted() {
        let mut snap = registered();
        snap.counters.insert(key(7, counter::STREAM_RECEIVED, 0, 0), 100);
        snap.counters.insert(key(7, counter::STREAM_EMITTED_INTO, 1, 0), 5);
        snap.counters.insert(key(7, counter::STREAM_SENT, 0, 0), 100);
        snap.counters.insert(key(7, counter::BACKPRESSURE, 0, 3), 4);
        snap.counters.insert(key(7, counter::QUERY_PROCESSED, 3, 0), 100);
        snap.counters.insert(key(7, counter::QUERY_EMITTED, 3, 1), 5);
        snap.counters.insert(key(7, counter::QUERY_BATCHES, 3, 0), 2);
        snap.counters.insert(key(7, counter::QUERY_ERRORS, 3, 1), 2);
        snap.counters.insert(key(7, counter::CONN_OPENED, 1, 0), 3);
        snap.counters.insert(key(7, counter::CONN_CLOSED, 1, 0), 1);
        snap.counters.insert(key(7, counter::CONN_ERRORS, 1, 2), 6);
        snap.counters.insert(key(7, counter::ENGINE_SPANS_DROPPED, 0, 0), 9);
        snap.counters.insert(key(7, 999, 0, 0), 1);
        let m = Model::build(&snap);
        let e = &m.engines[&7];
        assert_eq!((e.streams[&0].received(), e.streams[&0].sent, e.streams[&0].backpressure), (100, 100, 4));
        assert_eq!(e.streams[&1].received_from_queries, 5);
        let q = &e.queries[&3];
        assert_eq!((q.processed_total(), q.emitted[&1], q.batches, q.errors[&1], q.backpressure), (100, 5, 2, 2, 4));
        assert_eq!(e.connections[&1].active(), 2);
        assert_eq!(e.connections[&1].failures[&2], 6);
        assert_eq!((e.spans_dropped, m.observer.unknown_series), (9, 1));
        // The engine's own figure wins: it knows what was open before the attach.
        let mut held = snap.clone();
        held.gauges.insert(key(7, gauge::CONN_ACTIVE, 1, 0), 5);
        held.gauges.insert(key(7, gauge::CONN_ACTIVE, 2, 0), 1);
        let h = Model::build(&held);
        assert_eq!((h.engines[&7].connections[&1].active(), h.engines[&7].connections[&2].active()), (5, 1));
        assert_eq!(
            (e.processed_total(), e.errors_total(), e.ingested_total(), e.connections_active()),
            (100, 2, 100, 2)
        );
    }

    #[test]
    fn entities_known_only_from_counts_are_named_by_id() {
        let mut snap = Snapshot::default();
        snap.counters.insert(key(9, counter::QUERY_PROCESSED, 4, 2), 10);
        let m = Model::build(&snap);
        let e = &m.engines[&9];
        assert_eq!((e.queries[&4].name.as_str(), e.queries[&4].registered), ("query4", false));
        assert_eq!(e.stream_name(2), "stream2");
        assert!(!e.has_registrations());
    }

    #[test]
    fn gauges_give_utilisation_memory_and_age() {
        let mut snap = registered();
        snap.gauges.insert(key(7, gauge::QUEUE_DEPTH, 0, 3), 4);
        snap.gauges.insert(key(7, gauge::QUEUE_CAPACITY, 0, 3), 16);
        snap.gauges.insert(key(7, gauge::QUEUE_BYTES, 0, 3), 1000);
        snap.gauges.insert(key(7, gauge::QUEUE_WAIT_NS, 0, 3), 2_000_000_000);
        snap.gauges.insert(key(7, gauge::WINDOW_STATE_BYTES, 3, 0), 500);
        snap.gauges.insert(key(7, gauge::GROUPS, 3, 0), 16);
        // A depth without a known capacity gives no utilisation.
        snap.gauges.insert(key(7, gauge::QUEUE_DEPTH, 1, 5), 4);
        snap.processes.insert(
            7,
            ProcStats {
                uptime_seconds: 1.0,
                rss_bytes: 4096,
                virtual_bytes: 0,
                threads: 3,
                cpu_percent: 0.0,
                cpu_seconds: 0.0,
                open_fds: Some(5),
                io: None,
            },
        );
        let m = Model::build(&snap);
        let e = &m.engines[&7];
        assert_eq!(e.queries[&3].buffer_utilization, Some(0.25));
        assert_eq!(e.queries.get(&5).and_then(|q| q.buffer_utilization), None);
        assert_eq!(e.streams[&0].oldest_event_age_seconds, Some(2.0));
        assert_eq!(e.memory(), Memory { rss: 4096, window_state: 500, queues: 1000 });
        assert_eq!(e.queries[&3].groups, Some(16));
    }

    #[test]
    fn histograms_split_into_latency_and_stages() {
        let mut snap = registered();
        let h = HistData {
            buckets: vec![0; eventflux_probe_common::hist::BUCKETS],
            count: 1,
            sum_ns: 5,
            max_ns: 5,
            ..Default::default()
        };
        snap.hists.insert(HistKey { pid: 7, query: 3, stage: stage::BATCH, _pad: 0 }, h.clone());
        snap.hists.insert(HistKey { pid: 7, query: 3, stage: stage::FILTER, _pad: 0 }, h.clone());
        snap.hists.insert(HistKey { pid: 7, query: 3, stage: 77, _pad: 0 }, h.clone());
        let m = Model::build(&snap);
        let q = &m.engines[&7].queries[&3];
        assert_eq!(q.latency.as_ref(), Some(&h));
        assert_eq!(q.stages.keys().copied().collect::<Vec<_>>(), vec![stage::FILTER]);
        assert_eq!(m.observer.unknown_series, 1);
    }
}
