//! The application: streams behind junctions, queries subscribed to them, sources feeding
//! them chunk by chunk, in the engine's synchronous or asynchronous mode.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use usdt_markers::abi::{ConnErrorKind, Connector, JunctionKind, Protocol, StreamRole, WindowKind};
use usdt_markers::trace::TraceContext;
use usdt_markers::{QueryInfo, StreamInfo, conn_active, conn_close, conn_error, conn_open, ingest, junction_send};

use crate::components::{
    self, Aggregation, Component, ErrorStore, Join, Partition, Pattern, Persistence, SNAPSHOT_EVERY, Sink, Table,
    Tally, Trigger, WindowComponent,
};
use crate::event::{Chunk, Source};
use crate::net::{Forward, Inbound};
use crate::query::{Query, QueryStats};
use crate::queue::{Pushed, Queue};
use crate::trouble::{self, in_trouble};
use usdt_markers::abi::{ComponentCounter as CC, ComponentGauge as CG, ComponentKind, ComponentOp};

#[derive(Debug, Clone)]
pub struct Config {
    pub events: Option<u64>,
    pub streams: u32,
    pub queries: u32,
    pub batch: usize,
    pub rate: u64,
    pub mode: JunctionKind,
    pub queue_capacity: usize,
    pub gate: Option<PathBuf>,
    /// Idle time after the last event, before queries stop.
    pub hold: Duration,
    /// From when to when (since the first event) the engine is in trouble: see [`trouble`].
    pub trouble: Option<(Duration, Duration)>,
    /// Node A of two: send every query's output to node B there.
    pub forward: Option<std::net::SocketAddr>,
    /// Node B of two: take the input from node A's connection here instead of the sources.
    pub listen: Option<std::net::SocketAddr>,
    /// Rounds of the expensive filter expression per event, by query index (missing: 0).
    pub filter_cost: Vec<u32>,
    /// Failed events the error store holds before it drops.
    pub error_store_capacity: u64,
    /// Where snapshots are kept (in memory without it); the last one is restored at start.
    pub snapshot_dir: Option<PathBuf>,
    /// Async junctions refuse a chunk whose queue stays full this long.
    pub drop_after: Option<Duration>,
    /// Events per flush of a length-batch window.
    pub length_batch: u64,
    /// Queries register without names.
    pub unnamed: bool,
    /// The join of the first two streams is also a query of its own, reading both.
    pub join_query: bool,
    /// The pattern on the first stream is also a query of its own.
    pub pattern_query: bool,
    /// Queries run the engine's SQL order: window, then WHERE, then aggregation and insert
    /// twice per chunk the window hands on.
    pub where_after_window: bool,
    /// Async consumers spin this long on an empty queue before they block.
    pub spin: Duration,
    /// Print the events produced so far at this interval (`--progress-ms`).
    pub progress: Option<Duration>,
}

/// How long a query worker stalls per chunk while in trouble.
const TROUBLE_STALL: Duration = Duration::from_millis(10);

/// A stream's counters, in the summary.
#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    pub received: u64,
    pub sent: u64,
    pub backpressure: u64,
    /// Events the junction refused after its back-off (`--drop-after`).
    pub dropped: u64,
}

pub struct StreamDef {
    pub id: u32,
    pub name: String,
    pub role: StreamRole,
    pub protocol: Option<Protocol>,
    pub stats: StreamStats,
}

pub struct QueryDef {
    pub id: u32,
    pub name: String,
    pub window: WindowKind,
    pub window_size: u64,
    pub input_stream: u32,
    pub output_stream: u32,
}

/// Connection attempts per protocol, in the summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnStats {
    pub opened: u64,
    pub failed: u64,
    pub closed: u64,
}

pub struct Outcome {
    pub streams: Vec<StreamDef>,
    pub queries: Vec<(QueryDef, QueryStats)>,
    pub connections: Vec<(Protocol, ConnStats)>,
    /// What each component did, by name: its summary (see [`components`]).
    pub components: Vec<(String, serde_json::Value)>,
    /// Events each input stream had produced at the snapshot restored at start.
    pub restored: Option<Vec<u64>>,
    /// `--join-query`: what the join query did.
    pub join_query: Option<serde_json::Value>,
    /// `--pattern-query`: what the pattern query did.
    pub pattern_query: Option<serde_json::Value>,
    /// CPU seconds async workers spun idle (`--spin-us`).
    pub idle_cpu_s: f64,
    pub elapsed: Duration,
}

/// Component ids: the error store, sources by input stream, sinks by query, the table,
/// windows by query.
const ERROR_STORE_ID: u32 = 0;
const SOURCE_IDS: u32 = 1;
const SINK_IDS: u32 = 1000;
const TABLE_ID: u32 = 2000;
const WINDOW_IDS: u32 = 3000;
const PERSISTENCE_ID: u32 = 4000;
const JUNCTION_IDS: u32 = 5000;
const JOIN_ID: u32 = 6000;
const PATTERN_ID: u32 = 6001;
const PARTITION_ID: u32 = 6002;
const TRIGGER_ID: u32 = 6003;
const AGGREGATION_ID: u32 = 6004;

/// A source's connector, from its stream's protocol.
fn source_connector(p: Protocol) -> Connector {
    match p {
        Protocol::Tcp => Connector::Tcp,
        Protocol::Grpc => Connector::Grpc,
        Protocol::Http => Connector::Http,
        Protocol::Kafka => Connector::Kafka,
    }
}

/// Sinks cycle through these connectors by query.
const SINK_CONNECTORS: [Connector; 6] =
    [Connector::Log, Connector::File, Connector::Http, Connector::Kafka, Connector::RabbitMq, Connector::WebSocket];

/// The query plan: query `i` reads input stream `i % streams` and cycles through the window
/// kinds, so every kind runs whenever there are three queries or more.
pub fn plan(config: &Config) -> (Vec<StreamDef>, Vec<QueryDef>) {
    let mut streams: Vec<StreamDef> = (0..config.streams)
        .map(|i| StreamDef {
            id: i,
            name: format!("Stock{i}"),
            role: StreamRole::Input,
            protocol: Some(Protocol::ALL[i as usize % Protocol::ALL.len()]),
            stats: StreamStats::default(),
        })
        .collect();
    let windows = [(WindowKind::Length, 32), (WindowKind::LengthBatch, config.length_batch), (WindowKind::Time, 100)];
    let mut queries = Vec::new();
    for i in 0..config.queries {
        let output_stream = config.streams + i;
        let (window, window_size) = windows[i as usize % windows.len()];
        queries.push(QueryDef {
            id: i,
            name: format!("q{i}_{}", window.label()),
            window,
            window_size,
            input_stream: i % config.streams,
            output_stream,
        });
        streams.push(StreamDef {
            id: output_stream,
            name: format!("Q{i}Out"),
            role: StreamRole::Output,
            protocol: None,
            stats: StreamStats::default(),
        });
    }
    (streams, queries)
}

enum Delivery {
    /// Subscribers run inside the producer's call.
    Sync(Vec<Query>),
    /// One bounded queue and one worker per query.
    Async { queues: Vec<Arc<Queue>>, workers: Vec<JoinHandle<Query>> },
}

impl Delivery {
    /// Hands a chunk to query `q`: whether that hit backpressure, and whether the chunk was
    /// taken (an async junction with a back-off refuses it when the queue stays full).
    fn deliver(
        &mut self,
        q: usize,
        chunk: &Arc<Chunk>,
        context: Option<TraceContext>,
        give_up_after: Option<Duration>,
    ) -> Pushed {
        match self {
            Delivery::Sync(queries) => {
                queries[q].process(chunk, None, context);
                Pushed { waited: false, queued: true }
            }
            Delivery::Async { queues, .. } => queues[q].push(Arc::clone(chunk), context, give_up_after),
        }
    }

    /// Chunks queued for the queries `qs`, and what their queues hold at most (async only).
    fn queued(&self, qs: impl Iterator<Item = usize>) -> Option<(u64, u64)> {
        match self {
            Delivery::Sync(_) => None,
            Delivery::Async { queues, .. } => {
                Some(qs.fold((0, 0), |(n, c), q| (n + queues[q].len() as u64, c + queues[q].capacity() as u64)))
            }
        }
    }

    /// The queries back from their workers, and the CPU seconds the workers spun idle.
    fn finish(self) -> Result<(Vec<Query>, f64)> {
        match self {
            Delivery::Sync(queries) => Ok((queries, 0.0)),
            Delivery::Async { queues, workers } => {
                queues.iter().for_each(|q| q.close());
                let queries = workers
                    .into_iter()
                    .map(|w| w.join().map_err(|_| anyhow::anyhow!("a query worker thread panicked")))
                    .collect::<Result<Vec<Query>>>()?;
                let spun: u64 = queues.iter().map(|q| q.spun_cpu_ns.load(std::sync::atomic::Ordering::Relaxed)).sum();
                Ok((queries, spun as f64 / 1e9))
            }
        }
    }
}

fn register(config: &Config, streams: &[StreamDef], queries: &[QueryDef]) {
    for s in streams {
        let async_input = s.role == StreamRole::Input && config.mode == JunctionKind::Async;
        usdt_markers::register_stream(StreamInfo {
            id: s.id,
            name: &s.name,
            role: s.role,
            junction: if async_input { JunctionKind::Async } else { JunctionKind::Sync },
            capacity: if async_input { config.queue_capacity as u64 } else { 0 },
        });
    }
    for q in queries {
        usdt_markers::register_query(QueryInfo {
            id: q.id,
            // An SQL application's queries have no names unless it gives them one.
            name: if config.unnamed { "" } else { &q.name },
            input_stream: q.input_stream,
            output_stream: q.output_stream,
            window: q.window,
            window_size: q.window_size,
        });
    }
}

/// Each source connects before producing; the sources of odd-numbered streams are refused once
/// first, so connection-error probes fire a known number of times.
fn connect_sources(streams: &[StreamDef], conns: &mut Vec<(Protocol, ConnStats)>) {
    for s in streams {
        let Some(protocol) = s.protocol else { continue };
        let entry = conn_entry(conns, protocol);
        if s.id % 2 == 1 {
            conn_error::Counter::new(protocol.code(), ConnErrorKind::Refused.code()).add(1);
            entry.failed += 1;
        }
        conn_open::Counter::new(protocol.code()).add(1);
        entry.opened += 1;
        // What is open now, for observers that attach later (a gauge the engine holds).
        conn_active::Gauge::new(protocol.code()).set(entry.opened - entry.closed);
    }
}

fn conn_entry(conns: &mut Vec<(Protocol, ConnStats)>, protocol: Protocol) -> &mut ConnStats {
    let at = match conns.iter().position(|(p, _)| *p == protocol) {
        Some(at) => at,
        None => {
            conns.push((protocol, ConnStats::default()));
            conns.len() - 1
        }
    };
    &mut conns[at].1
}

fn wait_for_gate(gate: &std::path::Path) {
    while !gate.exists() {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Where input chunks come from.
enum Input {
    /// The deterministic sources, round-robin over the input streams.
    Sources(Vec<Source>),
    /// Node A's connection (two-node mode).
    Node(Inbound),
}

pub fn run(config: &Config) -> Result<Outcome> {
    let (mut streams, defs) = plan(config);
    // Query ids and output streams after the pipeline's.
    let (next_query, next_stream) = (config.queries, config.streams + config.queries);
    let mut join_query = (config.join_query && config.streams >= 2).then(|| {
        OperatorQuery::new(
            (next_query, "stock_join", ComponentOp::JoinProbe),
            &[0, 1],
            (next_stream, "JoinOut"),
            &mut streams,
        )
    });
    let mut pattern_query = config.pattern_query.then(|| {
        let ids = (next_query + 1, "price_swing", ComponentOp::PatternStep);
        OperatorQuery::new(ids, &[0], (next_stream + 1, "Swings"), &mut streams)
    });
    register(config, &streams, &defs);
    if let Some(q) = &join_query {
        q.register(components::JOIN_WINDOW as u64);
    }
    if let Some(q) = &pattern_query {
        q.register(0);
    }

    let forward = config.forward.map(Forward::connect).transpose()?.map(Arc::new);
    let mut input = match config.listen {
        Some(addr) => Input::Node(Inbound::accept(addr)?),
        None => Input::Sources((0..config.streams).map(Source::new).collect()),
    };
    let store = ErrorStore::new(ERROR_STORE_ID, config.error_store_capacity);
    let mut sources: Vec<components::Source> = match &input {
        Input::Sources(_) => streams
            .iter()
            .filter_map(|s| Some((s, s.protocol?)))
            .map(|(s, p)| {
                let id = SOURCE_IDS + s.id;
                components::Source::new(id, (s.id, &s.name), source_connector(p), Arc::clone(&store))
            })
            .collect(),
        Input::Node(_) => Vec::new(),
    };
    let queries: Vec<Query> = defs
        .iter()
        .map(|d| {
            let mut q = Query::new(d.id, d.input_stream, d.output_stream, d.window, d.window_size, forward.clone());
            q.where_after_window = config.where_after_window;
            q.set_filter_cost(
                config.filter_cost.get(d.id as usize).copied().unwrap_or(0),
                !config.filter_cost.is_empty(),
            );
            let out = streams.iter().find(|s| s.id == d.output_stream).map_or("?", |s| s.name.as_str());
            let connector = SINK_CONNECTORS[d.id as usize % SINK_CONNECTORS.len()];
            let mut sink = Sink::new(SINK_IDS + d.id, (d.output_stream, out), connector, Arc::clone(&store));
            sink.drops_in_trouble = d.id == 0;
            q.sink = Some(sink);
            if d.id == 0 {
                q.table = Some(Table::new(TABLE_ID));
            }
            q.window_component = Some(WindowComponent::new(WINDOW_IDS + d.id, (d.id, &d.name), d.window));
            q
        })
        .collect();
    let mut delivery = match config.mode {
        JunctionKind::Sync => Delivery::Sync(queries),
        JunctionKind::Async => {
            let mut queues = Vec::new();
            let mut workers = Vec::new();
            for mut query in queries {
                let queue = Arc::new(
                    Queue::new(query.input_stream, query.id, config.queue_capacity)
                        .spinning(config.spin, JUNCTION_IDS + query.input_stream),
                );
                queues.push(Arc::clone(&queue));
                let worker = thread::Builder::new()
                    .name(format!("query-{}", query.id))
                    .spawn(move || {
                        while let Some((chunk, context, wait_ns)) = queue.pop() {
                            if in_trouble() {
                                thread::sleep(TROUBLE_STALL);
                            }
                            query.process(&chunk, Some(wait_ns), context);
                        }
                        query
                    })
                    .context("cannot start a query worker thread")?;
                workers.push(worker);
            }
            Delivery::Async { queues, workers }
        }
    };
    // Subscribers of each input stream, in query order, with the counter of what the junction
    // sends each.
    let subscribers: Vec<Vec<(usize, junction_send::Counter)>> = (0..config.streams)
        .map(|s| {
            defs.iter()
                .enumerate()
                .filter(|(_, d)| d.input_stream == s)
                .map(|(i, d)| (i, junction_send::Counter::new(s, d.id)))
                .collect()
        })
        .collect();
    let received: Vec<ingest::Counter> = (0..config.streams).map(ingest::Counter::new).collect();
    // A join of the first two streams, a pattern on the first: on the producer's thread.
    let mut join = (config.streams >= 2).then(|| Join::new(JOIN_ID));
    let mut pattern = Pattern::new(PATTERN_ID);
    let mut partition = Partition::new(PARTITION_ID);
    let mut trigger = Trigger::new(TRIGGER_ID);
    let mut aggregation = Aggregation::new(AGGREGATION_ID);
    let partitioned = if config.streams >= 2 { 1 } else { 0 };
    // The async junctions, as components: what they refuse.
    let mut junctions: Vec<Tally> = match config.mode {
        JunctionKind::Async => streams
            .iter()
            .filter(|s| s.role == StreamRole::Input)
            .map(|s| {
                let labels = vec![("junction_type", JunctionKind::Async.label().to_owned())];
                let id = JUNCTION_IDS + s.id;
                Tally::register(
                    id,
                    s.name.clone(),
                    ComponentKind::Junction,
                    JunctionKind::Async.code(),
                    Some((s.id, &s.name)),
                    labels,
                )
            })
            .collect(),
        JunctionKind::Sync => Vec::new(),
    };

    if let Some(gate) = &config.gate {
        wait_for_gate(gate);
    }
    // At start: resume the sources where the last snapshot left them.
    let mut persistence = Persistence::new(PERSISTENCE_ID, config.snapshot_dir.clone());
    let restored = persistence.restore();
    let mut positions = vec![0u64; config.streams as usize];
    if let (Some(at), Input::Sources(sources)) = (&restored, &mut input) {
        for ((source, position), &at) in sources.iter_mut().zip(&mut positions).zip(at) {
            source.skip(at);
            *position = at;
        }
    }
    let mut connections = Vec::new();
    connect_sources(&streams, &mut connections);

    let started = Instant::now();
    let mut produced = 0u64;
    let progress = config.progress.map(|every| Progress::start(started, every));
    let mut next_stream = 0usize;
    loop {
        // Events the producer is behind its pace (`--rate`): the lag of this chunk's source.
        let mut behind = None;
        let (chunk, context) = match &mut input {
            Input::Sources(sources) => {
                if config.events.is_some_and(|n| produced >= n) {
                    break;
                }
                let len = match config.events {
                    Some(n) => (n - produced).min(config.batch as u64) as usize,
                    None => config.batch,
                };
                if config.rate > 0 {
                    behind = Some(pace(started, produced, config.rate));
                }
                if let Some((from, to)) = config.trouble {
                    let t = started.elapsed();
                    let now = t >= from && t < to;
                    if now != in_trouble() {
                        trouble::set(now);
                        eprintln!("eventflux-demo: {} trouble", if now { "entering" } else { "leaving" });
                    }
                }
                (sources[next_stream].chunk(len, in_trouble()), None)
            }
            Input::Node(inbound) => match inbound.next()? {
                Some(next) => next,
                None => break,
            },
        };
        let stream = next_stream;
        next_stream = (next_stream + 1) % config.streams as usize;
        let n = chunk.len() as u64;
        let chunk = Arc::new(chunk);
        received[stream].add(n);
        if let Some(source) = sources.get_mut(stream) {
            source.read(n);
            if let Some(lag) = behind {
                source.lag(lag);
            }
        }
        if let Some(join) = join.as_mut().filter(|_| stream < 2) {
            match join_query.as_mut() {
                Some(q) => q.process(join.id(), stream, n, || join.push(stream, &chunk)),
                None => {
                    join.push(stream, &chunk);
                }
            }
        }
        if stream == 0 {
            match pattern_query.as_mut() {
                Some(q) => q.process(pattern.id(), 0, n, || pattern.push(&chunk)),
                None => {
                    pattern.push(&chunk);
                }
            }
            aggregation.push(&chunk);
        }
        if stream == partitioned {
            partition.push(&chunk);
        }
        streams[stream].stats.received += n;
        for (q, sent) in &subscribers[stream] {
            let pushed = delivery.deliver(*q, &chunk, context, config.drop_after);
            if pushed.waited {
                streams[stream].stats.backpressure += 1;
            }
            if pushed.queued {
                sent.add(n);
                streams[stream].stats.sent += n;
            } else {
                streams[stream].stats.dropped += n;
                if let Some(junction) = junctions.get_mut(stream) {
                    junction.add(CC::JunctionDropped, 0, n);
                }
            }
        }
        // Once per chunk, after every subscriber had it: what the junction holds now.
        if let (Some(junction), Some((depth, capacity))) =
            (junctions.get_mut(stream), delivery.queued(subscribers[stream].iter().map(|(q, _)| *q)))
        {
            junction.set(CG::JunctionQueueDepth, depth);
            junction.set(CG::JunctionQueueCapacity, capacity);
        }
        positions[stream] += n;
        trigger.advance(produced, produced + n);
        if (produced + n) / SNAPSHOT_EVERY > produced / SNAPSHOT_EVERY {
            persistence.snapshot(&positions);
        }
        produced += n;
        if let Some(p) = &progress {
            p.produced.store(produced, std::sync::atomic::Ordering::Relaxed);
        }
    }
    drop(progress);
    let (queries, idle_cpu_s) = delivery.finish()?;
    if let Some(forward) = &forward {
        forward.finish();
    }
    // The transports' ends, as components.
    let mut transports = Vec::new();
    if let Some(forward) = &forward {
        transports.push(forward.summary());
    }
    if let Input::Node(inbound) = &input {
        transports.push((inbound.tally.id, inbound.tally.name.clone(), inbound.tally.summary()));
    }
    let elapsed = started.elapsed();
    if !config.hold.is_zero() {
        eprintln!("eventflux-demo: produced {produced} events; idle for {:?} before stopping", config.hold);
        thread::sleep(config.hold);
    }

    for s in &streams {
        if let Some(protocol) = s.protocol {
            conn_close::Counter::new(protocol.code()).add(1);
            let entry = conn_entry(&mut connections, protocol);
            entry.closed += 1;
            conn_active::Gauge::new(protocol.code()).set(entry.opened - entry.closed);
        }
    }
    for q in &defs {
        usdt_markers::unregister_query(q.id);
    }
    for q in join_query.iter().chain(&pattern_query) {
        usdt_markers::unregister_query(q.id);
    }
    let mut components = Vec::new();
    let mut ids = Vec::new();
    for source in &mut sources {
        source.close();
        components.push(source.summary());
        ids.push(source.id());
    }
    let mut queries = queries;
    for query in &mut queries {
        if let Some(sink) = &mut query.sink {
            sink.close();
            components.push(sink.summary());
            ids.push(sink.id());
        }
        if let Some(table) = &query.table {
            components.push(table.summary());
            ids.push(table.id());
        }
        if let Some(window) = &query.window_component {
            components.push(window.summary());
            ids.push(window.id());
        }
    }
    ids.push(ERROR_STORE_ID);
    components.push((store.name(), store.summary()));
    ids.push(persistence.id());
    components.push(persistence.summary());
    if let Some(join) = &join {
        ids.push(join.id());
        components.push(join.summary());
    }
    ids.push(pattern.id());
    components.push(pattern.summary());
    for (id, summary) in [
        (partition.id(), partition.summary()),
        (trigger.id(), trigger.summary()),
        (aggregation.id(), aggregation.summary()),
    ] {
        ids.push(id);
        components.push(summary);
    }
    for (id, name, summary) in transports {
        ids.push(id);
        components.push((name, summary));
    }
    for junction in &junctions {
        ids.push(junction.id);
        components.push((junction.name.clone(), junction.summary()));
    }
    // Their final counts reach observers before they go.
    for id in ids {
        usdt_markers::unregister_component(id);
    }
    let mut queries_out = Vec::new();
    for (def, query) in defs.into_iter().zip(queries) {
        if let Some(out) = streams.iter_mut().find(|s| s.id == def.output_stream) {
            out.stats.received += query.stats.emitted;
        }
        queries_out.push((def, query.stats));
    }
    // What it inserted is what its output stream received.
    for q in join_query.iter().chain(&pattern_query) {
        if let Some(out) = streams.iter_mut().find(|s| s.id == q.output_stream) {
            out.stats.received = q.rows;
        }
    }
    let join_query = join_query.map(|q| q.summary());
    let pattern_query = pattern_query.map(|q| q.summary());
    Ok(Outcome {
        streams,
        queries: queries_out,
        connections,
        components,
        restored,
        elapsed,
        join_query,
        pattern_query,
        idle_cpu_s,
    })
}

/// CPU time this process used so far (every thread, user and system): what observing costs
/// shows here too, less blurred than in wall-clock time by whatever else the machine runs.
pub fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill for this process.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// `--progress-ms`: a thread that prints the producer's count at an interval, as JSON lines on
/// stderr (`{"progress":{"t_s":…,"events":…,"cpu_s":…}}`). The producer pays a relaxed store
/// per chunk while it runs.
struct Progress {
    produced: Arc<std::sync::atomic::AtomicU64>,
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    fn start(started: Instant, every: Duration) -> Progress {
        use std::sync::atomic::Ordering::Relaxed;
        let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, stop) = (produced.clone(), done.clone());
        let thread = thread::spawn(move || {
            while !stop.load(Relaxed) {
                thread::sleep(every);
                let line = serde_json::json!({"progress": {
                    "t_s": started.elapsed().as_secs_f64(),
                    "events": count.load(Relaxed),
                    "cpu_s": cpu_seconds(),
                }});
                eprintln!("{line}");
            }
        });
        Progress { produced, done, thread: Some(thread) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps until `produced` events are due at `rate` events per second; returns how many events
/// the producer is behind (due by now but not produced), 0 when it had to wait.
fn pace(started: Instant, produced: u64, rate: u64) -> u64 {
    let due = Duration::from_secs_f64(produced as f64 / rate as f64);
    match due.checked_sub(started.elapsed()) {
        Some(wait) => {
            thread::sleep(wait);
            0
        }
        None => ((started.elapsed().as_secs_f64() * rate as f64) as u64).saturating_sub(produced),
    }
}

/// A component run as a query of its own, as the engine runs joins and patterns: each chunk
/// it takes from one of its input streams is one of its batches, with the component's
/// operation (a join probe, a pattern step) timed inside it, and the rows it finds inserted
/// into its output stream. `--join-query`: `stock_join` reads the first two streams
/// (`query_register` with the left, `query_input` with the right) into `JoinOut`;
/// `--pattern-query`: `price_swing` reads the first into `Swings`.
struct OperatorQuery {
    id: u32,
    name: &'static str,
    op: ComponentOp,
    /// Its input streams' ids and names; the first is the one it registers with.
    inputs: Vec<(u32, String)>,
    output_stream: u32,
    events: Vec<usdt_markers::query_events::Counter>,
    emitted: usdt_markers::emitted::Counter,
    processed: Vec<u64>,
    batches: u64,
    rows: u64,
}

impl OperatorQuery {
    /// Query `id` reading `inputs` (stream ids) into a new output stream `output`.
    fn new(
        (id, name, op): (u32, &'static str, ComponentOp),
        inputs: &[u32],
        (output_stream, output): (u32, &str),
        streams: &mut Vec<StreamDef>,
    ) -> OperatorQuery {
        let inputs: Vec<(u32, String)> = inputs
            .iter()
            .map(|&s| (s, streams.iter().find(|d| d.id == s).map_or_else(|| format!("stream{s}"), |d| d.name.clone())))
            .collect();
        streams.push(StreamDef {
            id: output_stream,
            name: output.into(),
            role: StreamRole::Output,
            protocol: None,
            stats: StreamStats::default(),
        });
        OperatorQuery {
            id,
            name,
            op,
            events: inputs.iter().map(|&(s, _)| usdt_markers::query_events::Counter::new(id, s)).collect(),
            processed: vec![0; inputs.len()],
            inputs,
            output_stream,
            emitted: usdt_markers::emitted::Counter::new(id, output_stream),
            batches: 0,
            rows: 0,
        }
    }

    fn register(&self, window_size: u64) {
        usdt_markers::register_query(QueryInfo {
            id: self.id,
            name: self.name,
            input_stream: self.inputs[0].0,
            output_stream: self.output_stream,
            window: WindowKind::Length,
            window_size,
        });
        for &(stream, _) in &self.inputs[1..] {
            usdt_markers::register_query_input(self.id, stream);
        }
    }

    /// A chunk of `n` events from input `side`: one batch, in which `work` (component
    /// `component`'s operation) returns the rows found.
    fn process(&mut self, component: u32, side: usize, n: u64, work: impl FnOnce() -> u64) {
        let batch = usdt_markers::span::Batch::enter(self.id);
        let timed = usdt_markers::ops::Timed::start(component, self.op);
        let rows = work();
        timed.finish(n);
        batch.exit(self.inputs[side].0, n, rows);
        self.events[side].add(n, 1);
        if rows > 0 {
            self.emitted.add(rows);
        }
        self.processed[side] += n;
        self.batches += 1;
        self.rows += rows;
    }

    fn summary(&self) -> serde_json::Value {
        let processed: serde_json::Map<String, serde_json::Value> =
            self.inputs.iter().zip(&self.processed).map(|((_, name), &n)| (name.clone(), n.into())).collect();
        serde_json::json!({
            "id": self.id,
            "processed": processed,
            "batches": self.batches,
            "emitted": self.rows,
        })
    }
}
