//! The engine's components beyond the query pipeline, as the demo has them (the engine's
//! `stream/input/source`, `stream/output/sink`, the error store and `table/`):
//! - a **source** per input stream, on its connector: it reads records, maps them into events
//!   (one record in [`GARBAGE_EVERY`] is garbage its mapper cannot map: the error handler sends
//!   it to the error store), and reconnects every [`RECONNECT_EVERY`] events;
//! - a **sink** per output stream, publishing the query's rows: one row in [`TIMEOUT_EVERY`]
//!   times out once and is retried, one in [`REJECT_EVERY`] is rejected and goes to the error
//!   store; while the engine is in trouble (`--trouble`) query 0's sink is disconnected and its
//!   rows fail;
//! - the **error store** both send failures to, bounded: past its capacity events are dropped
//!   (and counted);
//! - a **table** (`SymbolStats`, in memory) that query 0 upserts its output rows into and looks
//!   each of its input events up in (a stream–table lookup: hit when the symbol has a row);
//! - each query's **window**: events added, expired (or flushed out), flushes, events held;
//! - a **join** of the first two input streams on the symbol, each side within a window, and
//!   a **pattern** on the first (`every a -> b within 1 s`): their state and matches;
//! - a **partitioned** query (an instance per symbol, purged when idle), a **trigger** and an
//!   **incremental aggregation** per second and minute of event time;
//! - **persistence**: a snapshot of the sources' positions every [`SNAPSHOT_EVERY`] events,
//!   in memory or (`--snapshot-dir`) in a file, and at start a restore from the last one: the
//!   sources resume where the snapshot left them.
//!
//! Each keeps its own figures in a [`Tally`], the summary's truth, and feeds the markers'
//! component series with the same amounts; none of them changes what a query computes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use usdt_markers::abi::{
    ComponentCounter as CC, ComponentGauge as CG, ComponentKind, ComponentOp, Connector, DeliveryError, ErrorAction,
    ErrorOrigin, JoinSide, LookupResult, NONE, Outcome, StoreKind, TableKind, TableOp, WindowKind,
};
use usdt_markers::ops::Timed;
use usdt_markers::{ComponentInfo, component_count, component_gauge};

/// One raw record in this many of a source is garbage (before the event it precedes).
pub const GARBAGE_EVERY: u64 = 1000;
/// A source reconnects after every this many of its events.
pub const RECONNECT_EVERY: u64 = 100_000;
/// One sink row in this many times out once and is retried.
pub const TIMEOUT_EVERY: u64 = 211;
/// One sink row in this many is rejected by the other end (not a multiple of the above).
pub const REJECT_EVERY: u64 = 997;
/// A snapshot after every this many events produced.
pub const SNAPSHOT_EVERY: u64 = 50_000;
/// Bytes of one mapped record (a CSV line), and of a garbage one.
const RECORD_BYTES: u64 = 32;
const GARBAGE_BYTES: u64 = 16;
/// Bytes of one published row (JSON).
const ROW_BYTES: u64 = 48;
/// Bytes of one table row.
const TABLE_ROW_BYTES: u64 = 40;

/// A component's series as the demo counts them, and the marker handles it feeds with the same
/// amounts.
pub struct Tally {
    pub id: u32,
    pub name: String,
    pub kind: ComponentKind,
    /// Labels the component's families carry besides its name: connector or table type, stream.
    pub labels: Vec<(&'static str, String)>,
    counts: BTreeMap<(CC, u32), u64>,
    gauges: BTreeMap<(CG, u32), u64>,
    handles: BTreeMap<(CC, u32), component_count::Counter>,
    gauge_handles: BTreeMap<(CG, u32), component_gauge::Gauge>,
    /// Operations timed, by kind.
    ops: BTreeMap<ComponentOp, u64>,
}

impl Tally {
    /// Registers the component.
    pub fn register(
        id: u32,
        name: String,
        kind: ComponentKind,
        variant: u32,
        stream: Option<(u32, &str)>,
        labels: Vec<(&'static str, String)>,
    ) -> Tally {
        Tally::register_in(id, name, kind, variant, stream, None, labels)
    }

    /// Registers a component that belongs to a query.
    pub fn register_in(
        id: u32,
        name: String,
        kind: ComponentKind,
        variant: u32,
        stream: Option<(u32, &str)>,
        query: Option<(u32, &str)>,
        labels: Vec<(&'static str, String)>,
    ) -> Tally {
        usdt_markers::register_component(ComponentInfo {
            id,
            name: &name,
            kind,
            variant,
            stream: stream.map_or(NONE, |(s, _)| s),
            query: query.map_or(NONE, |(q, _)| q),
        });
        let mut labels = labels;
        if let Some((_, stream)) = stream {
            labels.push(("stream_name", stream.to_owned()));
        }
        if let Some((_, query)) = query {
            labels.push(("query_id", query.to_owned()));
        }
        Tally {
            id,
            name,
            kind,
            labels,
            counts: BTreeMap::new(),
            gauges: BTreeMap::new(),
            handles: BTreeMap::new(),
            gauge_handles: BTreeMap::new(),
            ops: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, counter: CC, label: u32, n: u64) {
        if n == 0 {
            return;
        }
        *self.counts.entry((counter, label)).or_insert(0) += n;
        let id = self.id;
        self.handles
            .entry((counter, label))
            .or_insert_with(|| component_count::Counter::new(id, counter.code(), label))
            .add(n);
    }

    /// Starts timing one operation of this component.
    pub fn time(&mut self, op: ComponentOp) -> Timed {
        *self.ops.entry(op).or_insert(0) += 1;
        Timed::start(self.id, op)
    }

    pub fn set(&mut self, gauge: CG, value: u64) {
        self.set_in(gauge, 0, value);
    }

    /// Sets a gauge in its second dimension `label`; a value it already has changes nothing.
    pub fn set_in(&mut self, gauge: CG, label: u32, value: u64) {
        if self.gauges.insert((gauge, label), value) == Some(value) {
            return;
        }
        let id = self.id;
        self.gauge_handles
            .entry((gauge, label))
            .or_insert_with(|| component_gauge::Gauge::new(id, gauge.code(), label))
            .set(value);
    }

    /// What the summary says of it: its labels, and every series with its exact value.
    pub fn summary(&self) -> Value {
        let mut series = Vec::new();
        for (&(counter, label), &n) in &self.counts {
            let mut labels = serde_json::Map::new();
            if let Some(d) = counter.dimension() {
                labels.insert(d.name.to_owned(), json!((d.decode)(label).unwrap_or("?")));
            }
            series.push(json!({"family": counter.label(), "labels": labels, "value": n}));
        }
        for (&(gauge, label), &v) in &self.gauges {
            let mut labels = serde_json::Map::new();
            if let Some(d) = gauge.dimension() {
                labels.insert(d.name.to_owned(), json!((d.decode)(label).unwrap_or("?")));
            }
            series.push(json!({"family": gauge.label(), "labels": labels, "value": v}));
        }
        // How many were timed: the histogram's count (its durations are the observer's).
        for (&op, &n) in &self.ops {
            series.push(json!({"family": format!("{}_count", op.label()), "labels": {}, "value": n}));
        }
        let labels: serde_json::Map<String, Value> =
            self.labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        json!({"kind": self.kind.label(), "labels": labels, "series": series})
    }
}

/// What every component of the demo has: its tally, and from it its id and its summary.
pub trait Component {
    fn tally(&self) -> &Tally;

    fn id(&self) -> u32 {
        self.tally().id
    }

    /// Its name and what the summary says of it.
    fn summary(&self) -> (String, Value) {
        (self.tally().name.clone(), self.tally().summary())
    }
}

impl Component for Source {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for Sink {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for Table {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for WindowComponent {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for Persistence {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for Join {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for Pattern {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for Partition {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for Trigger {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Component for Aggregation {
    fn tally(&self) -> &Tally {
        &self.tally
    }
}

/// The error store: shared by every source and sink, bounded.
pub struct ErrorStore {
    tally: Mutex<(Tally, u64)>,
    capacity: u64,
}

impl ErrorStore {
    pub fn new(id: u32, capacity: u64) -> Arc<ErrorStore> {
        let mut tally = Tally::register(id, "errors".into(), ComponentKind::ErrorStore, 0, None, Vec::new());
        tally.set(CG::ErrorStoreCapacity, capacity);
        tally.set(CG::ErrorStoreSize, 0);
        Arc::new(ErrorStore { tally: Mutex::new((tally, 0)), capacity })
    }

    /// Keeps `n` failed events from `origin`, as many as fit.
    pub fn put(&self, origin: ErrorOrigin, n: u64) {
        if n == 0 {
            return;
        }
        let mut guard = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        let (tally, held) = &mut *guard;
        let kept = n.min(self.capacity - *held);
        tally.add(CC::ErrorStoreEvents, origin.code(), kept);
        tally.add(CC::ErrorStoreDropped, 0, n - kept);
        *held += kept;
        let held = *held;
        tally.set(CG::ErrorStoreSize, held);
    }

    pub fn summary(&self) -> Value {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).0.summary()
    }

    pub fn name(&self) -> String {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).0.name.clone()
    }
}

/// A source: reads records from its connector and maps them into its stream's events.
pub struct Source {
    tally: Tally,
    events: u64,
    store: Arc<ErrorStore>,
}

impl Source {
    pub fn new(id: u32, stream: (u32, &str), connector: Connector, store: Arc<ErrorStore>) -> Source {
        let name = format!("{}_{}", stream.1, connector.label());
        let labels = vec![("connector", connector.label().to_owned())];
        let mut tally = Tally::register(id, name, ComponentKind::Source, connector.code(), Some(stream), labels);
        tally.set(CG::SourceConnected, 1);
        Source { tally, events: 0, store }
    }

    /// The source read the records of `n` events: the garbage ones among them go to the error
    /// store, and it reconnects when its count crosses a multiple of [`RECONNECT_EVERY`].
    pub fn read(&mut self, n: u64) {
        let (from, to) = (self.events, self.events + n);
        let crossed = |every: u64| to / every - from / every;
        let garbage = crossed(GARBAGE_EVERY);
        self.tally.add(CC::SourceEvents, 0, n);
        self.tally.add(CC::SourceBytes, 0, n * RECORD_BYTES + garbage * GARBAGE_BYTES);
        self.tally.add(CC::SourceMappingErrors, ErrorAction::Store.code(), garbage);
        self.store.put(ErrorOrigin::SourceMapping, garbage);
        self.tally.add(CC::SourceReconnects, 0, crossed(RECONNECT_EVERY));
        self.events = to;
    }

    /// How many events the source is behind its input (a paced source: events due, not yet
    /// read).
    pub fn lag(&mut self, events: u64) {
        self.tally.set(CG::SourceLag, events);
    }

    /// The source disconnected for good (the engine stops).
    pub fn close(&mut self) {
        self.tally.set(CG::SourceConnected, 0);
    }
}

/// A sink: publishes one output stream's rows through its connector.
pub struct Sink {
    tally: Tally,
    rows: u64,
    store: Arc<ErrorStore>,
    /// Whether its connection is down while the engine is in trouble (`--trouble`).
    pub drops_in_trouble: bool,
    connected: bool,
}

impl Sink {
    pub fn new(id: u32, stream: (u32, &str), connector: Connector, store: Arc<ErrorStore>) -> Sink {
        let name = format!("{}_{}", stream.1, connector.label());
        let labels = vec![("connector", connector.label().to_owned())];
        let mut tally = Tally::register(id, name, ComponentKind::Sink, connector.code(), Some(stream), labels);
        tally.set(CG::SinkConnected, 1);
        Sink { tally, rows: 0, store, drops_in_trouble: false, connected: true }
    }

    /// Publishes `n` rows: the timed-out ones are retried (and then published), the rejected
    /// ones go to the error store. While the engine is in trouble a sink that
    /// [`drops_in_trouble`](Sink::drops_in_trouble) is disconnected: its rows fail with a
    /// connection error and are dropped (logged, as the engine's sinks do), not stored.
    pub fn publish(&mut self, n: u64, trouble: bool) {
        let timed = usdt_markers::ops::Timed::start(self.tally.id, usdt_markers::abi::ComponentOp::SinkPublish);
        self.deliver(n, trouble);
        timed.finish(n);
    }

    fn deliver(&mut self, n: u64, trouble: bool) {
        let down = trouble && self.drops_in_trouble;
        // Connected while down, or disconnected while not: the state changed.
        if down == self.connected {
            self.connected = !down;
            self.tally.set(CG::SinkConnected, u64::from(self.connected));
        }
        if down {
            self.tally.add(CC::SinkFailures, DeliveryError::Connection.code(), n);
            return;
        }
        let (from, to) = (self.rows, self.rows + n);
        let crossed = |every: u64| to / every - from / every;
        let rejected = crossed(REJECT_EVERY);
        let published = n - rejected;
        self.tally.add(CC::SinkRetries, 0, crossed(TIMEOUT_EVERY));
        self.tally.add(CC::SinkFailures, DeliveryError::Rejected.code(), rejected);
        self.store.put(ErrorOrigin::SinkDelivery, rejected);
        self.tally.add(CC::SinkEvents, 0, published);
        self.tally.add(CC::SinkBytes, 0, published * ROW_BYTES);
        self.rows = to;
    }

    pub fn close(&mut self) {
        self.tally.set(CG::SinkConnected, 0);
    }
}

/// A table in memory, keyed by symbol: the query that owns it upserts its rows and looks its
/// input up in it, on its own thread.
pub struct Table {
    tally: Tally,
    rows: HashMap<u32, (i64, i64)>,
}

impl Table {
    pub fn new(id: u32) -> Table {
        let labels = vec![("table_type", TableKind::InMemory.label().to_owned())];
        let mut tally =
            Tally::register(id, "SymbolStats".into(), ComponentKind::Table, TableKind::InMemory.code(), None, labels);
        tally.set(CG::TableRows, 0);
        tally.set(CG::TableBytes, 0);
        Table { tally, rows: HashMap::new() }
    }

    /// Looks each symbol up: how many have a row.
    pub fn lookup(&mut self, symbols: impl Iterator<Item = u32>) {
        let timed = usdt_markers::ops::Timed::start(self.tally.id, usdt_markers::abi::ComponentOp::TableLookup);
        let (mut hits, mut misses) = (0, 0);
        for s in symbols {
            if self.rows.contains_key(&s) {
                hits += 1;
            } else {
                misses += 1;
            }
        }
        self.tally.add(CC::TableLookups, LookupResult::Hit.code(), hits);
        self.tally.add(CC::TableLookups, LookupResult::Miss.code(), misses);
        timed.finish(hits + misses);
    }

    /// Upserts one row per symbol.
    pub fn upsert(&mut self, rows: impl Iterator<Item = (u32, i64, i64)>) {
        let mut n = 0;
        for (symbol, sum, count) in rows {
            self.rows.insert(symbol, (sum, count));
            n += 1;
        }
        if n > 0 {
            self.tally.add(CC::TableOperations, TableOp::Upsert.code(), n);
            let rows = self.rows.len() as u64;
            self.tally.set(CG::TableRows, rows);
            self.tally.set(CG::TableBytes, rows * TABLE_ROW_BYTES);
        }
    }
}

/// A query's window as a component: what it added, expired and flushed, and holds.
pub struct WindowComponent {
    tally: Tally,
}

impl WindowComponent {
    /// The window of `query`, named after it.
    pub fn new(id: u32, query: (u32, &str), kind: WindowKind) -> WindowComponent {
        let labels = vec![("window_type", kind.label().to_owned())];
        let mut tally =
            Tally::register_in(id, query.1.to_owned(), ComponentKind::Window, kind.code(), None, Some(query), labels);
        tally.set(CG::WindowSize, 0);
        WindowComponent { tally }
    }

    /// One chunk through the window: events added, events that left it, flushes, and what it
    /// holds after.
    pub fn record(&mut self, added: u64, expired: u64, flushes: u64, held: u64) {
        self.tally.add(CC::WindowEvents, 0, added);
        self.tally.add(CC::WindowExpired, 0, expired);
        self.tally.add(CC::WindowFlushes, 0, flushes);
        self.tally.set(CG::WindowSize, held);
    }
}

/// The app's persistence: snapshots of the sources' positions (what a restart needs to resume
/// them), in memory or in a directory, and the restore from the last one at start.
pub struct Persistence {
    tally: Tally,
    dir: Option<PathBuf>,
    memory: Option<String>,
}

impl Persistence {
    pub fn new(id: u32, dir: Option<PathBuf>) -> Persistence {
        let store = if dir.is_some() { StoreKind::File } else { StoreKind::InMemory };
        let labels = vec![("store_type", store.label().to_owned())];
        let tally = Tally::register(id, "snapshots".into(), ComponentKind::Persistence, store.code(), None, labels);
        Persistence { tally, dir, memory: None }
    }

    fn path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("snapshot.json"))
    }

    /// At start: the events each input stream had produced at the last snapshot, if the store
    /// has one (none is a fresh start, not a restore); a snapshot that cannot be read is a
    /// failed restore, and a fresh start.
    pub fn restore(&mut self) -> Option<Vec<u64>> {
        let path = self.path().filter(|p| p.exists())?;
        let timed = self.tally.time(ComponentOp::Restore);
        let positions: Option<Vec<u64>> =
            std::fs::read_to_string(&path).ok().and_then(|text| serde_json::from_str(&text).ok());
        timed.finish(positions.as_ref().map_or(0, |p| p.len() as u64));
        let outcome = if positions.is_some() { Outcome::Success } else { Outcome::Failure };
        self.tally.add(CC::PersistenceRestores, outcome.code(), 1);
        positions
    }

    /// Takes a snapshot of the sources' positions; false if it could not be written.
    pub fn snapshot(&mut self, positions: &[u64]) -> bool {
        let timed = self.tally.time(ComponentOp::Snapshot);
        let text = serde_json::to_string(positions).unwrap_or_default();
        let written = match self.path() {
            // Written aside, then renamed: a crash mid-write leaves the previous snapshot.
            Some(path) => {
                let aside = path.with_extension("json.tmp");
                std::fs::write(&aside, &text).and_then(|()| std::fs::rename(&aside, &path)).is_ok()
            }
            None => {
                self.memory = Some(text.clone());
                true
            }
        };
        timed.finish(positions.len() as u64);
        let bytes = text.len() as u64;
        if written {
            self.tally.add(CC::PersistenceSnapshots, Outcome::Success.code(), 1);
            self.tally.add(CC::PersistenceSnapshotBytes, 0, bytes);
            self.tally.set(CG::PersistenceLastSnapshotBytes, bytes);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            self.tally.set(CG::PersistenceLastSnapshotTime, now);
        } else {
            self.tally.add(CC::PersistenceSnapshots, Outcome::Failure.code(), 1);
        }
        written
    }
}

/// Events each side of [`Join`] keeps.
pub const JOIN_WINDOW: usize = 32;
/// How long (event time) a partial match of [`Pattern`] waits for its second event.
pub const PATTERN_WITHIN_MS: u64 = 1000;

/// A stream–stream join of the first two input streams on the symbol, each side within a
/// window of its last [`JOIN_WINDOW`] events: every arriving event probes the other side's
/// window (a match per event there of its symbol), then joins its own.
pub struct Join {
    tally: Tally,
    sides: [std::collections::VecDeque<u32>; 2],
}

impl Join {
    pub fn new(id: u32) -> Join {
        let mut tally = Tally::register(id, "StockJoin".into(), ComponentKind::Join, 0, None, Vec::new());
        for side in [JoinSide::Left, JoinSide::Right] {
            tally.set_in(CG::JoinState, side.code(), 0);
        }
        Join { tally, sides: Default::default() }
    }

    /// A chunk arrived on `side` (0 left, 1 right): the joined rows it made.
    pub fn push(&mut self, side: usize, chunk: &[crate::event::Event]) -> u64 {
        let (mut matches, mut expired) = (0, 0);
        for e in chunk {
            matches += self.sides[1 - side].iter().filter(|s| **s == e.symbol).count() as u64;
            let own = &mut self.sides[side];
            own.push_back(e.symbol);
            if own.len() > JOIN_WINDOW {
                own.pop_front();
                expired += 1;
            }
        }
        let code = [JoinSide::Left, JoinSide::Right][side].code();
        self.tally.add(CC::JoinEvents, code, chunk.len() as u64);
        self.tally.add(CC::JoinMatches, 0, matches);
        self.tally.add(CC::JoinExpired, code, expired);
        let held = self.sides[side].len() as u64;
        self.tally.set_in(CG::JoinState, code, held);
        matches
    }
}

/// A pattern on the first input stream: `every a=[price > 900] -> b=[price < 100, symbol ==
/// a.symbol] within 1 s` of event time. Each `a` starts a partial match; a `b` completes every
/// partial match of its symbol; a partial match older than the `within` expires.
pub struct Pattern {
    tally: Tally,
    partial: std::collections::VecDeque<(u32, u64)>,
}

impl Pattern {
    pub fn new(id: u32) -> Pattern {
        let mut tally = Tally::register(id, "PriceSwing".into(), ComponentKind::Pattern, 0, None, Vec::new());
        tally.set(CG::PatternPartialMatches, 0);
        Pattern { tally, partial: std::collections::VecDeque::new() }
    }

    /// Steps the pattern over `chunk`: the matches it completed.
    pub fn push(&mut self, chunk: &[crate::event::Event]) -> u64 {
        let (mut started, mut matched, mut expired) = (0, 0, 0);
        for e in chunk {
            while self.partial.front().is_some_and(|(_, ts)| ts + PATTERN_WITHIN_MS < e.ts_ms) {
                self.partial.pop_front();
                expired += 1;
            }
            if e.price < 100 {
                let before = self.partial.len();
                self.partial.retain(|(symbol, _)| *symbol != e.symbol);
                matched += (before - self.partial.len()) as u64;
            }
            if e.price > 900 {
                self.partial.push_back((e.symbol, e.ts_ms));
                started += 1;
            }
        }
        self.tally.add(CC::PatternStarted, 0, started);
        self.tally.add(CC::PatternMatches, 0, matched);
        self.tally.add(CC::PatternExpired, 0, expired);
        let alive = self.partial.len() as u64;
        self.tally.set(CG::PatternPartialMatches, alive);
        matched
    }
}

/// Events after which an idle instance of [`Partition`] is purged (event time, ms).
pub const PARTITION_IDLE_MS: u64 = 200;
/// A trigger fires every this many events produced (the demo's clock is its events).
pub const TRIGGER_EVERY: u64 = 10_000;

/// A query partitioned by symbol on the second input stream (the first when there is one): an
/// instance per key, created on the key's first event, purged once idle for
/// [`PARTITION_IDLE_MS`] of event time.
pub struct Partition {
    tally: Tally,
    /// Key → event time of its last event.
    instances: HashMap<u32, u64>,
}

impl Partition {
    pub fn new(id: u32) -> Partition {
        let mut tally = Tally::register(id, "BySymbol".into(), ComponentKind::Partition, 0, None, Vec::new());
        tally.set(CG::PartitionInstances, 0);
        Partition { tally, instances: HashMap::new() }
    }

    pub fn push(&mut self, chunk: &[crate::event::Event]) {
        let (mut created, mut purged) = (0, 0);
        for e in chunk {
            if self.instances.insert(e.symbol, e.ts_ms).is_none() {
                created += 1;
            }
            let before = self.instances.len();
            self.instances.retain(|_, last| last.saturating_add(PARTITION_IDLE_MS) >= e.ts_ms);
            purged += (before - self.instances.len()) as u64;
        }
        self.tally.add(CC::PartitionEvents, 0, chunk.len() as u64);
        self.tally.add(CC::PartitionCreated, 0, created);
        self.tally.add(CC::PartitionPurged, 0, purged);
        let alive = self.instances.len() as u64;
        self.tally.set(CG::PartitionInstances, alive);
    }
}

/// A trigger that fires every [`TRIGGER_EVERY`] events produced.
pub struct Trigger {
    tally: Tally,
}

impl Trigger {
    pub fn new(id: u32) -> Trigger {
        Trigger { tally: Tally::register(id, "Heartbeat".into(), ComponentKind::Trigger, 0, None, Vec::new()) }
    }

    /// The producer went from `before` to `after` events: the fires due in between.
    pub fn advance(&mut self, before: u64, after: u64) {
        self.tally.add(CC::TriggerFires, 0, after / TRIGGER_EVERY - before / TRIGGER_EVERY);
    }
}

/// An incremental aggregation of the first input stream's prices per second and per minute of
/// event time, keeping 60 seconds and 10 minutes of buckets and purging older ones.
pub struct Aggregation {
    tally: Tally,
    /// Per duration (second, minute).
    buckets: [Buckets; 2],
}

/// One duration's buckets of [`Aggregation`]: how many it keeps, how long each is (ms), and
/// bucket start → (sum, count).
struct Buckets {
    retain: usize,
    len: u64,
    sums: BTreeMap<u64, (i64, u64)>,
}

impl Aggregation {
    pub fn new(id: u32) -> Aggregation {
        let mut tally = Tally::register(id, "PriceAgg".into(), ComponentKind::Aggregation, 0, None, Vec::new());
        for d in [usdt_markers::abi::Duration::Second, usdt_markers::abi::Duration::Minute] {
            tally.set_in(CG::AggregationBuckets, d.code(), 0);
        }
        let buckets = [
            Buckets { retain: 60, len: 1000, sums: BTreeMap::new() },
            Buckets { retain: 10, len: 60_000, sums: BTreeMap::new() },
        ];
        Aggregation { tally, buckets }
    }

    pub fn push(&mut self, chunk: &[crate::event::Event]) {
        let durations = [usdt_markers::abi::Duration::Second, usdt_markers::abi::Duration::Minute];
        for (d, b) in durations.iter().zip(&mut self.buckets) {
            let mut purged = 0;
            for e in chunk {
                let start = e.ts_ms / b.len * b.len;
                let sum = b.sums.entry(start).or_insert((0, 0));
                sum.0 += e.price;
                sum.1 += 1;
                while b.sums.len() > b.retain {
                    b.sums.pop_first();
                    purged += 1;
                }
            }
            self.tally.add(CC::AggregationPurged, d.code(), purged);
            let held = b.sums.len() as u64;
            self.tally.set_in(CG::AggregationBuckets, d.code(), held);
        }
        self.tally.add(CC::AggregationEvents, 0, chunk.len() as u64);
    }
}
