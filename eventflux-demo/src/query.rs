//! A query: filter → window → aggregation → emit, each processor calling the next from inside
//! its own `process`, as the engine's synchronous pipeline does. Stage probes therefore nest on
//! one thread: the window's span contains the aggregation and emit it calls.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use usdt_markers::abi::{ErrorKind, Stage, WindowKind};
use usdt_markers::span::{Batch, Span};
use usdt_markers::trace::TraceContext;
use usdt_markers::{aggregate_groups, emitted, error, query_events, window_state};

use crate::components::{Sink, Table, WindowComponent};
use crate::event::Event;
use crate::net::Forward;

/// What a query has done, reported in the demo's summary.
#[derive(Debug, Default, Clone)]
pub struct QueryStats {
    pub processed: u64,
    pub emitted: u64,
    pub errors: u64,
    pub batches: u64,
    pub latencies_ns: Vec<u64>,
    /// The slowest batch that emitted rows.
    pub emitting_max_ns: u64,
    /// Length-batch queries only: the longest time from a batch's first aggregation to the
    /// end of its work (before `Batch::exit`), which is what the observer's tail sampler times
    /// of an unsampled emitting batch.
    pub emitting_work_max_ns: Option<u64>,
    /// FNV-1a over every emitted row: equal digests mean equal computed output.
    pub digest: u64,
    /// CPU time of this query's batches (thread CPU clock around each), when measured
    /// (`--filter-cost`): the truth CPU attribution is checked against.
    pub cpu_ns: Option<u64>,
    /// Sum of the expensive filter expression's results: it is computed, not optimised away.
    pub score: u64,
}

/// One aggregated output row: running sum and count of `price` for a symbol.
#[derive(Debug, Clone, Copy)]
struct Row {
    symbol: u32,
    sum: i64,
    count: i64,
}

/// What a window hands to the aggregation, in order.
#[derive(Debug, Clone, Copy)]
enum Op {
    Add(Event),
    Remove(Event),
    /// End of a tumbling batch: emit one row per group touched since the last flush.
    Flush,
}

enum Window {
    Length { len: usize, buf: VecDeque<Event> },
    LengthBatch { len: usize, buf: Vec<Event>, prev: Vec<Event> },
    Time { ms: u64, buf: VecDeque<Event> },
}

impl Window {
    fn new(kind: WindowKind, size: u64) -> Self {
        let len = usize::try_from(size).unwrap_or(usize::MAX).max(1);
        match kind {
            WindowKind::LengthBatch => Window::LengthBatch { len, buf: Vec::new(), prev: Vec::new() },
            WindowKind::Time | WindowKind::TimeBatch => Window::Time { ms: size.max(1), buf: VecDeque::new() },
            // The demo's plan uses length, length_batch and time only; every other kind (the
            // engine's) slides over the last `size` events here.
            _ => Window::Length { len, buf: VecDeque::new() },
        }
    }

    /// Kept apart from the stage that fires the probes, like [`Aggregation::apply`].
    #[inline(never)]
    fn process(&mut self, input: &[Event], ops: &mut Vec<Op>) {
        match self {
            Window::Length { len, buf } => {
                for e in input {
                    buf.push_back(*e);
                    if buf.len() > *len
                        && let Some(old) = buf.pop_front()
                    {
                        ops.push(Op::Remove(old));
                    }
                    ops.push(Op::Add(*e));
                }
            }
            Window::LengthBatch { len, buf, prev } => {
                for e in input {
                    buf.push(*e);
                    if buf.len() == *len {
                        ops.extend(prev.drain(..).map(Op::Remove));
                        ops.extend(buf.iter().copied().map(Op::Add));
                        ops.push(Op::Flush);
                        std::mem::swap(prev, buf);
                    }
                }
            }
            Window::Time { ms, buf } => {
                for e in input {
                    while buf.front().is_some_and(|old| old.ts_ms + *ms <= e.ts_ms) {
                        if let Some(old) = buf.pop_front() {
                            ops.push(Op::Remove(old));
                        }
                    }
                    buf.push_back(*e);
                    ops.push(Op::Add(*e));
                }
            }
        }
    }

    fn held(&self) -> u64 {
        let events = match self {
            Window::Length { buf, .. } | Window::Time { buf, .. } => buf.len(),
            Window::LengthBatch { buf, prev, .. } => buf.len() + prev.len(),
        };
        events as u64
    }

    fn state_bytes(&self) -> u64 {
        self.held() * size_of::<Event>() as u64
    }
}

/// Group-by state: running sum and count of `price` per symbol over the window's contents.
struct Aggregation {
    groups: HashMap<u32, (i64, i64)>,
    /// Groups added to since the last flush (tumbling windows).
    touched: BTreeSet<u32>,
    /// Sliding windows emit a row per added event; tumbling windows one per group per flush.
    per_event: bool,
}

impl Aggregation {
    /// Kept apart from the stage that fires the probes: the inner loop's code then does not
    /// depend on what the probe sites around it compile to.
    #[inline(never)]
    fn apply(&mut self, ops: &[Op]) -> Vec<Row> {
        let mut rows = Vec::new();
        for op in ops {
            match *op {
                Op::Add(e) => {
                    let g = self.groups.entry(e.symbol).or_insert((0, 0));
                    g.0 += e.price;
                    g.1 += 1;
                    if self.per_event {
                        rows.push(Row { symbol: e.symbol, sum: g.0, count: g.1 });
                    } else {
                        self.touched.insert(e.symbol);
                    }
                }
                Op::Remove(e) => {
                    if let Some(g) = self.groups.get_mut(&e.symbol) {
                        g.0 -= e.price;
                        g.1 -= 1;
                        if g.1 == 0 {
                            self.groups.remove(&e.symbol);
                        }
                    }
                }
                Op::Flush => {
                    for symbol in std::mem::take(&mut self.touched) {
                        let (sum, count) = self.groups.get(&symbol).copied().unwrap_or((0, 0));
                        rows.push(Row { symbol, sum, count });
                    }
                }
            }
        }
        rows
    }

    fn groups(&self) -> u64 {
        self.groups.len() as u64
    }
}

/// The query's series of the count and gauge probes, created once.
struct Probes {
    events: query_events::Counter,
    emitted: emitted::Counter,
    errors: error::Counter,
    window_state: window_state::Gauge,
    groups: aggregate_groups::Gauge,
}

pub struct Query {
    pub id: u32,
    pub input_stream: u32,
    window: Window,
    aggregation: Aggregation,
    probes: Probes,
    /// Node A of two: where the output rows go (`--forward`).
    forward: Option<Arc<Forward>>,
    /// Rounds of [`risk_score`] per event in the filter (0: not evaluated).
    filter_cost: u32,
    /// Where its output stream's rows are published.
    pub sink: Option<Sink>,
    /// A table it upserts its rows into and looks its input up in.
    pub table: Option<Table>,
    /// Its window as a component: events added, expired, flushes, held.
    pub window_component: Option<WindowComponent>,
    /// When this batch's first aggregation began (length-batch queries: their flushes).
    emitting_since: Option<Instant>,
    /// The engine's SQL order (`--where-after-window`): see [`Query::window_first`].
    pub where_after_window: bool,
    pub stats: QueryStats,
}

impl Query {
    pub fn new(
        id: u32,
        input_stream: u32,
        output_stream: u32,
        window: WindowKind,
        window_size: u64,
        forward: Option<Arc<Forward>>,
    ) -> Self {
        Query {
            id,
            input_stream,
            window: Window::new(window, window_size),
            aggregation: Aggregation {
                groups: HashMap::new(),
                touched: BTreeSet::new(),
                per_event: !matches!(window, WindowKind::LengthBatch),
            },
            probes: Probes {
                events: query_events::Counter::new(id, input_stream),
                emitted: emitted::Counter::new(id, output_stream),
                errors: error::Counter::new(id, ErrorKind::Expression.code()),
                window_state: window_state::Gauge::new(id),
                groups: aggregate_groups::Gauge::new(id),
            },
            forward,
            filter_cost: 0,
            sink: None,
            table: None,
            window_component: None,
            emitting_since: None,
            where_after_window: false,
            stats: QueryStats {
                digest: FNV_OFFSET,
                emitting_work_max_ns: matches!(window, WindowKind::LengthBatch).then_some(0),
                ..QueryStats::default()
            },
        }
    }

    /// Makes the filter evaluate [`risk_score`] with `rounds` per event; `measure`: time each
    /// batch on the thread's CPU clock for the summary.
    pub fn set_filter_cost(&mut self, rounds: u32, measure: bool) {
        self.filter_cost = rounds;
        if measure {
            self.stats.cpu_ns = Some(0);
        }
    }

    /// Processes one chunk of the input stream: one query batch. `waited_ns`: how long the
    /// chunk sat in an async junction's queue; `context`: the trace context the chunk came
    /// with from another node.
    pub fn process(&mut self, chunk: &[Event], waited_ns: Option<u64>, context: Option<TraceContext>) {
        let n = chunk.len() as u64;
        // The clock reads enclose the batch span, so the span an observer is given lies inside
        // the one measured here.
        let cpu_started = self.stats.cpu_ns.map(|_| thread_cpu_ns());
        let started = Instant::now();
        let batch = Batch::enter_in(self.id, context);
        if let Some(wait) = waited_ns {
            batch.handoff(n, wait);
        }
        let emitted = if self.where_after_window { self.window_first(chunk) } else { self.filter(chunk) };
        if let (Some(since), Some(max)) = (self.emitting_since.take(), self.stats.emitting_work_max_ns.as_mut()) {
            *max = (*max).max(u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        batch.exit(self.input_stream, n, emitted);
        let elapsed = started.elapsed();
        if let (Some(total), Some(from)) = (self.stats.cpu_ns.as_mut(), cpu_started) {
            *total += thread_cpu_ns().saturating_sub(from);
        }
        self.probes.events.add(n, 1);
        if emitted > 0 {
            self.probes.emitted.add(emitted);
        }
        self.stats.processed += n;
        self.stats.emitted += emitted;
        self.stats.batches += 1;
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.stats.latencies_ns.push(elapsed_ns);
        if emitted > 0 {
            self.stats.emitting_max_ns = self.stats.emitting_max_ns.max(elapsed_ns);
        }
    }

    /// `price / volume >= 2`; a zero volume is an expression error and drops the event.
    #[inline(never)]
    fn filter(&mut self, chunk: &[Event]) -> u64 {
        let n = chunk.len() as u64;
        let span = Span::enter(self.id, Stage::Filter);
        let mut errors = 0u64;
        if self.filter_cost > 0 {
            // The expression's result does not decide anything: what the query computes stays
            // the same whatever its cost.
            for e in chunk {
                self.stats.score = self.stats.score.wrapping_add(risk_score(e, self.filter_cost));
            }
        }
        if let Some(table) = &mut self.table {
            table.lookup(chunk.iter().map(|e| e.symbol));
        }
        let passed: Vec<Event> = chunk
            .iter()
            .filter(|e| match e.price.checked_div(e.volume) {
                Some(ratio) => ratio >= 2,
                None => {
                    errors += 1;
                    false
                }
            })
            .copied()
            .collect();
        if errors > 0 {
            self.probes.errors.add(errors);
            self.stats.errors += errors;
        }
        let emitted = if passed.is_empty() { 0 } else { self.window(&passed) };
        span.exit(n, passed.len() as u64);
        emitted
    }

    #[inline(never)]
    fn window(&mut self, input: &[Event]) -> u64 {
        let n = input.len() as u64;
        let span = Span::enter(self.id, Stage::Window);
        let ops = self.window_ops(input);
        let emitted = if ops.is_empty() { 0 } else { self.aggregate(&ops) };
        span.exit(n, ops.len() as u64);
        self.probes.window_state.set(self.window.state_bytes());
        emitted
    }

    /// The window's work on `input`, as the window component counts it: what it hands on.
    fn window_ops(&mut self, input: &[Event]) -> Vec<Op> {
        let mut ops = Vec::with_capacity(input.len() * 2);
        self.window.process(input, &mut ops);
        if let Some(w) = &mut self.window_component {
            let expired = ops.iter().filter(|op| matches!(op, Op::Remove(_))).count() as u64;
            let flushes = ops.iter().filter(|op| matches!(op, Op::Flush)).count() as u64;
            w.record(input.len() as u64, expired, flushes, self.window.held());
        }
        ops
    }

    /// The engine's SQL order: the window takes the whole chunk, the WHERE clause filters what
    /// it hands on (its span inside the window's), and aggregation runs twice, for what left the
    /// window and for what entered it.
    #[inline(never)]
    fn window_first(&mut self, chunk: &[Event]) -> u64 {
        let n = chunk.len() as u64;
        let span = Span::enter(self.id, Stage::Window);
        let ops = self.window_ops(chunk);
        let emitted = if ops.is_empty() { 0 } else { self.filter_ops(&ops) };
        span.exit(n, ops.len() as u64);
        self.probes.window_state.set(self.window.state_bytes());
        emitted
    }

    /// `price / volume >= 2` on what the window hands on; an added event with a zero volume is
    /// an expression error (a removed one was judged when it was added).
    #[inline(never)]
    fn filter_ops(&mut self, ops: &[Op]) -> u64 {
        let span = Span::enter(self.id, Stage::Filter);
        let added: Vec<Event> = ops.iter().filter_map(|op| if let Op::Add(e) = op { Some(*e) } else { None }).collect();
        if self.filter_cost > 0 {
            for e in &added {
                self.stats.score = self.stats.score.wrapping_add(risk_score(e, self.filter_cost));
            }
        }
        if let Some(table) = &mut self.table {
            table.lookup(added.iter().map(|e| e.symbol));
        }
        let errors = added.iter().filter(|e| e.volume == 0).count() as u64;
        if errors > 0 {
            self.probes.errors.add(errors);
            self.stats.errors += errors;
        }
        let passes = |e: &Event| e.price.checked_div(e.volume).is_some_and(|ratio| ratio >= 2);
        let kept: Vec<Op> = ops
            .iter()
            .filter(|op| match op {
                Op::Add(e) | Op::Remove(e) => passes(e),
                Op::Flush => true,
            })
            .copied()
            .collect();
        let split = kept.iter().position(|op| !matches!(op, Op::Remove(_))).unwrap_or(kept.len());
        let (left, entered) = kept.split_at(split);
        let mut emitted = 0;
        for part in [left, entered] {
            if !part.is_empty() {
                emitted += self.aggregate(part);
            }
        }
        span.exit(ops.len() as u64, kept.len() as u64);
        emitted
    }

    #[inline(never)]
    fn aggregate(&mut self, ops: &[Op]) -> u64 {
        if self.stats.emitting_work_max_ns.is_some() && self.emitting_since.is_none() {
            self.emitting_since = Some(Instant::now());
        }
        let span = Span::enter(self.id, Stage::Aggregate);
        let rows = self.aggregation.apply(ops);
        let emitted = match rows.len() {
            0 => 0,
            // The engine's inserts run once for the current events and once for the expired:
            // here each half of the rows, in order.
            n if n >= 2 && self.where_after_window => {
                let (first, second) = rows.split_at(n / 2);
                self.emit(first) + self.emit(second)
            }
            _ => self.emit(&rows),
        };
        span.exit(ops.len() as u64, rows.len() as u64);
        self.probes.groups.set(self.aggregation.groups());
        emitted
    }

    #[inline(never)]
    fn emit(&mut self, rows: &[Row]) -> u64 {
        let n = rows.len() as u64;
        let span = Span::enter(self.id, Stage::Emit);
        for row in rows {
            for word in [u64::from(row.symbol), row.sum as u64, row.count as u64] {
                self.stats.digest = fnv1a(self.stats.digest, word);
            }
        }
        if let Some(table) = &mut self.table {
            table.upsert(rows.iter().map(|r| (r.symbol, r.sum, r.count)));
        }
        if let Some(sink) = &mut self.sink {
            sink.publish(n, crate::trouble::in_trouble());
        }
        if let Some(forward) = &self.forward {
            // Sent from inside the emit span: downstream, its batch continues this trace
            // under "Output Emission".
            forward.send(rows.iter().map(|r| (r.symbol, r.sum, r.count)), usdt_markers::trace::current());
        }
        span.exit(n, n);
        n
    }
}

/// The expensive filter expression (`--filter-cost`): `rounds` of a multiply-xorshift hash over
/// the event, each depending on the last. Its cost is linear in `rounds` and it calls nothing,
/// so in a profile of a query that evaluates it, it is the hot leaf: the function CPU
/// attribution tests look for.
#[inline(never)]
pub fn risk_score(e: &Event, rounds: u32) -> u64 {
    let mut h = (u64::from(e.symbol) << 32) ^ (e.price as u64) ^ ((e.volume as u64) << 16) ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..rounds {
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
        h = std::hint::black_box(h);
    }
    h
}

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, word: u64) -> u64 {
    for byte in word.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
