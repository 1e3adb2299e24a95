//! Sampled batch and stage spans: the engine times a few batches per second per thread itself
//! and hands the timings to observers after the batch, through `stage_sample` and
//! `batch_sample`.
//!
//! Why the engine times them: a probe hit costs a trap of several hundred nanoseconds, as much
//! as a small batch's whole work. Timed in the kernel, from start and end probes, a span would
//! measure the observer's traps. Here the span boundaries read the clock (only in sampled
//! batches), the records wait in a per-thread buffer, and the probes fire after the outermost
//! span closed, so no trap falls inside any measured span.
//!
//! The bookkeeping at a nested span's boundaries still runs inside the spans around it, and in
//! a batch sampled a few hundred times a second its code and data are cold: measured, it added
//! 50–100% to a 1 µs batch. So each boundary times itself: it reads the clock before and after
//! its own work, and the enclosing spans subtract that, cache misses included. What remains is
//! the clock reads' own cost (one read per boundary, calibrated once per process), also
//! subtracted, and the few instructions between the engine's call and the first clock read.
//!
//! Which batches: a per-thread countdown picks the next sampled batch at random with a mean
//! stride chosen from the batch rate seen so far, so that a thread samples about the level's
//! rate per second (the most demanding `ctl_samples_*` level an observer raised, else
//! [`eventflux_abi::DEFAULT_SAMPLES_PER_SEC`]) whatever its batch rate, and batches of several
//! queries interleaved on one thread are sampled without aliasing. An unsampled batch costs a
//! semaphore test, a decrement and a branch; every stage inside it a semaphore test and a
//! thread-local load; each also tests the `cpu_slot` semaphore (CPU attribution).
//!
//! Batches and stages are entered with their query and stage so that, while a CPU profiler
//! takes `cpu_slot`, every boundary also keeps the thread's CPU slot ([`crate::cpu`]).
//!
//! ```
//! use usdt_markers::span::{Batch, Span};
//! use usdt_markers::abi::Stage;
//! # let (query, stream, chunk) = (0u32, 0u32, [1u64, 2, 3]);
//! let batch = Batch::enter(query);
//! let filter = Span::enter(query, Stage::Filter);
//! let passed = chunk.iter().filter(|v| **v > 1).count() as u64;
//! filter.exit(chunk.len() as u64, passed);
//! batch.exit(stream, chunk.len() as u64, passed);
//! ```

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use eventflux_abi::Stage;

use crate::probes::{batch_sample, spans_dropped, stage_sample, trace_context, traces_declined};
use crate::traceparent::{SAMPLED, TraceContext};

pub use crate::levels::samples_per_sec;

/// Spans open at once on a thread (a batch and the stages and batches nested in it).
const MAX_OPEN: usize = 16;
/// Records a thread keeps until its outermost span closes.
const MAX_RECORDS: usize = 64;

/// A query batch, sampled or not. Pass it to [`Batch::exit`] when the batch is done.
#[must_use = "a sampled batch is reported when it exits"]
#[derive(Debug)]
pub struct Batch {
    /// Start on CLOCK_MONOTONIC, 0 when not sampled.
    start: u64,
    /// The CPU slot's state before this batch ([`crate::cpu::UNSET`]: not written).
    slot: u64,
    query: u32,
    /// This batch set the thread's incoming trace context (and clears it when it ends).
    incoming: bool,
    _thread: ThreadBound,
}

/// Spans live in the thread's own state: they must end on the thread they began on (not sent
/// across an `.await` to another worker), so they are neither `Send` nor `Sync`.
type ThreadBound = std::marker::PhantomData<*const ()>;
const THREAD_BOUND: ThreadBound = std::marker::PhantomData;

/// A stage inside a batch, timed only when the batch is sampled.
#[must_use = "a sampled span is reported when it exits"]
#[derive(Debug)]
pub struct Span {
    start: u64,
    /// The CPU slot's state before this stage ([`crate::cpu::UNSET`]: not written).
    slot: u64,
    query: u32,
    stage: Stage,
    _thread: ThreadBound,
}

#[derive(Clone, Copy)]
struct Frame {
    /// The clock read that opened the span (after its own bookkeeping).
    start: u64,
    /// The clock read before that bookkeeping: the parent's time from here is instrumentation.
    before: u64,
    /// Instrumentation inside this span: nested spans' boundaries and clock reads.
    overhead: u64,
    /// Sum of the (corrected) totals of the direct children.
    children_ns: u64,
    /// A batch (rather than a stage): the stages inside it report their self time here.
    batch: bool,
    /// A batch whose total is its latency, undisturbed by stage timing (or taken anyway, when
    /// every batch is sampled).
    clean: bool,
    /// Self time per Stage of the stages in this batch (batches only).
    stages: [u64; STAGES],
    /// The id the engine gave this span when it forwarded a trace context from inside it
    /// ([`crate::trace::current`]), 0 if it did not.
    span_id: u64,
}

const STAGES: usize = Stage::ALL.len();

#[derive(Clone, Copy)]
enum Record {
    Stage {
        query: u32,
        stage: u32,
        events_in: u64,
        events_out: u64,
        self_ns: u64,
        total_ns: u64,
        start_ns: u64,
        span_id: u64,
    },
    Batch {
        query: u32,
        stream: u32,
        events_in: u64,
        events_out: u64,
        latency_ns: u64,
        start_ns: u64,
        stages: [u64; STAGES],
        clean: bool,
    },
}

struct Recorder {
    open: [Frame; MAX_OPEN],
    depth: usize,
    records: [Option<Record>; MAX_RECORDS],
    len: usize,
    dropped: u64,
    /// The trace of the outermost batch, when it is traced.
    trace: Option<Traced>,
}

/// A traced batch's context: its trace, its root span and where it continues from.
#[derive(Clone, Copy)]
struct Traced {
    trace_id: u128,
    span_id: u64,
    parent_span_id: u64,
    flags: u8,
}

thread_local! {
    /// Batches until the next sampled one; 1 means the next. Starts at 1: a thread's first
    /// batch while attached is sampled.
    static COUNTDOWN: Cell<u32> = const { Cell::new(1) };
    /// Non-zero while this thread is inside a sampled batch (the number of open spans).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// True while this thread is inside a batch sampled for its stages: only then are stages
    /// timed.
    static STAGES_TIMED: Cell<bool> = const { Cell::new(false) };
    /// The trace context the current outermost batch arrived with ([`Batch::enter_in`]).
    static INCOMING: Cell<Option<TraceContext>> = const { Cell::new(None) };
    /// Upstream-sampled batches traced in the current second, and when that second began.
    static FORCED: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
    static PACE: Cell<Pace> = const { Cell::new(Pace { stride: 1, drawn: 1, last_ns: 0, rng: 0, stages_next: false }) };
    static RECORDER: RefCell<Recorder> = const {
        RefCell::new(Recorder {
            open: [Frame { start: 0, before: 0, overhead: 0, children_ns: 0, batch: false, clean: false, stages: [0; STAGES], span_id: 0 }; MAX_OPEN],
            depth: 0,
            records: [None; MAX_RECORDS],
            len: 0,
            dropped: 0,
            trace: None,
        })
    };
}

#[derive(Clone, Copy)]
struct Pace {
    /// Mean batches between samples.
    stride: u32,
    /// Batches from the last sample to this one: the countdown drawn then.
    drawn: u32,
    last_ns: u64,
    rng: u64,
    /// Whether the next sampled batch times its stages (sampled batches alternate).
    stages_next: bool,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, so observers can place
/// the engine's timestamps on their own timeline.
pub fn now_ns() -> u64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_MONOTONIC: i32 = 1;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    (ts.sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.nsec as u64)
}

/// What one clock read costs, measured once: the smallest gap between back-to-back reads.
fn read_cost_ns() -> u64 {
    static COST: OnceLock<u64> = OnceLock::new();
    *COST.get_or_init(|| {
        let mut best = u64::MAX;
        for _ in 0..64 {
            let a = now_ns();
            let b = now_ns();
            best = best.min(b.saturating_sub(a));
        }
        best
    })
}

impl Batch {
    /// Enters a batch of query `query_id`; decides whether it is sampled.
    #[inline(always)]
    pub fn enter(query_id: u32) -> Batch {
        let slot = crate::cpu::enter_batch(query_id);
        Batch { start: Batch::timed(), slot, query: query_id, incoming: false, _thread: THREAD_BOUND }
    }

    /// The start of a batch that is sampled, else 0.
    #[inline(always)]
    fn timed() -> u64 {
        if !batch_sample::is_enabled() {
            return 0;
        }
        // Inside a sampled batch every nested batch is part of its record.
        if DEPTH.with(Cell::get) != 0 {
            return open(now_ns(), true);
        }
        let left = COUNTDOWN.with(Cell::get);
        if left > 1 {
            COUNTDOWN.with(|c| c.set(left - 1));
            return 0;
        }
        Batch::sampled()
    }

    /// Enters a query batch whose events arrived with a trace `context` from an upstream node
    /// (W3C `traceparent`, see [`TraceContext`]), or with none. When a tool traces
    /// (`trace_context` attached) and the upstream sampled the trace, the batch is traced
    /// whatever the thread's countdown (parent-based sampling), and its spans continue that
    /// trace — but at most the sampling level's rate of such batches per second on a thread:
    /// the sender must not set the engine's cost. Beyond that bound the batch takes the
    /// thread's own pace like any other (so whole-batch latency samples keep coming) and is
    /// counted by `traces_declined`. A batch the engine samples itself continues the trace
    /// too. Untraced, [`crate::trace::current`] still hands the context on unchanged.
    #[inline(always)]
    pub fn enter_in(query_id: u32, context: Option<TraceContext>) -> Batch {
        match context {
            None => Batch::enter(query_id),
            Some(c) => Batch::enter_with_context(query_id, c),
        }
    }

    #[cold]
    #[inline(never)]
    fn enter_with_context(query: u32, c: TraceContext) -> Batch {
        let slot = crate::cpu::enter_batch(query);
        // The outermost batch's context is the thread's until that batch ends.
        let set = INCOMING.with(|i| {
            let free = i.get().is_none();
            if free {
                i.set(Some(c));
            }
            free
        });
        let forced = set
            && c.sampled()
            && DEPTH.with(Cell::get) == 0
            && batch_sample::is_enabled()
            && trace_context::is_enabled();
        let start = if forced && Batch::may_force() { Batch::traced_by_parent() } else { Batch::timed() };
        Batch { start, slot, query, incoming: set, _thread: THREAD_BOUND }
    }

    /// Whether this thread may trace one more batch because its upstream sampled it: at most
    /// the sampling level's rate of them per second (one clock read per such batch); no bound
    /// when every batch is sampled. A refusal is counted.
    #[cold]
    #[inline(never)]
    fn may_force() -> bool {
        let rate = samples_per_sec();
        if rate == 0 {
            return true;
        }
        let now = now_ns();
        let (since, used) = FORCED.with(Cell::get);
        let (since, used) = if now.saturating_sub(since) >= 1_000_000_000 { (now, 0) } else { (since, used) };
        let allowed = used < rate;
        FORCED.with(|f| f.set((since, used + u32::from(allowed))));
        if !allowed {
            static DECLINED: OnceLock<traces_declined::Counter> = OnceLock::new();
            DECLINED.get_or_init(traces_declined::Counter::new).add(1);
        }
        allowed
    }

    /// A batch the upstream sampled: timed with its stages, outside the thread's own pace.
    #[cold]
    #[inline(never)]
    fn traced_by_parent() -> u64 {
        crate::flusher::start_flusher();
        Batch::open_sampled(true, samples_per_sec() == 0)
    }

    #[cold]
    #[inline(never)]
    fn sampled() -> u64 {
        crate::flusher::start_flusher();
        let now = now_ns();
        let rate = samples_per_sec();
        let mut pace = PACE.with(Cell::get);
        if rate == 0 {
            pace.stride = 1;
        } else if pace.last_ns != 0 {
            // Batches since the last sample over the time they took: the batch rate, and the
            // stride that gives `rate` samples per second at it. Averaged over a few samples
            // (one interval is short and noisy), but followed at once when the batch rate
            // moved by more than 4x (a burst, or an engine that went idle).
            let period = 1_000_000_000 / u64::from(rate);
            let elapsed = now.saturating_sub(pace.last_ns).max(1);
            let want = (u64::from(pace.drawn).saturating_mul(period) / elapsed).clamp(1, u64::from(u32::MAX / 2));
            let stride = u64::from(pace.stride);
            let next = if want > stride * 4 || want * 4 < stride { want } else { (3 * stride + want) / 4 };
            pace.stride = next.max(1) as u32;
        }
        pace.last_ns = now;
        // xorshift, seeded per thread from the clock: the draw only has to break aliasing.
        let mut x = if pace.rng == 0 { now | 1 } else { pace.rng };
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pace.rng = x;
        let next = if pace.stride <= 1 { 1 } else { 1 + (x % (2 * u64::from(pace.stride) - 1)) as u32 };
        pace.drawn = next;
        // Sampled batches alternate: one timed as a whole only (two clock reads, nothing inside
        // it disturbed: its latency is the engine's), the next with its stages timed (their
        // self times; the bookkeeping inside it leaves its total a little high). Sampling every
        // batch times every batch's stages.
        let stages = rate == 0 || pace.stages_next;
        pace.stages_next = !pace.stages_next;
        PACE.with(|p| p.set(pace));
        COUNTDOWN.with(|c| c.set(next));
        Batch::open_sampled(stages, !stages || rate == 0)
    }

    /// Opens a sampled outermost batch; a batch timed with its stages is traced while a tool
    /// takes `trace_context`.
    fn open_sampled(stages: bool, clean: bool) -> u64 {
        STAGES_TIMED.with(|c| c.set(stages));
        // Ids drawn before the batch's clock starts: not part of its time.
        let trace = (stages && trace_context::is_enabled()).then(|| {
            let (trace_id, parent_span_id, flags) = match INCOMING.with(Cell::get) {
                // Version 00 knows one flag; this node records the trace, so: sampled.
                Some(c) => (c.trace_id, c.span_id, SAMPLED),
                None => (new_trace_id(), 0, SAMPLED),
            };
            Traced { trace_id, span_id: new_span_id(), parent_span_id, flags }
        });
        let start = open(now_ns(), true);
        if start != 0 {
            RECORDER.with(|r| {
                let mut r = r.borrow_mut();
                let d = r.depth - 1;
                r.open[d].clean = clean;
                r.trace = trace;
            });
        }
        start
    }

    /// Whether this batch is sampled.
    pub fn is_sampled(&self) -> bool {
        self.start != 0
    }

    /// Records the batch's hand-off from its stream junction: `wait_ns` the chunk waited in an
    /// async junction's queue. Reported as the `ingest` stage.
    pub fn handoff(&self, events: u64, wait_ns: u64) {
        let query_id = self.query;
        if self.start != 0 {
            RECORDER.with(|r| {
                let mut r = r.borrow_mut();
                let depth = r.depth;
                if let Some(batch) = r.open[..depth].iter_mut().rev().find(|f| f.batch && f.start == self.start) {
                    batch.stages[Stage::Ingest as usize] += wait_ns.max(1);
                }
            });
            push_record(Record::Stage {
                query: query_id,
                stage: Stage::Ingest.code(),
                events_in: events,
                events_out: events,
                self_ns: wait_ns,
                total_ns: wait_ns,
                start_ns: self.start.saturating_sub(wait_ns),
                span_id: 0,
            });
        }
    }

    /// Leaves the batch, which took `events_in` events from stream `stream_id` and passed on
    /// `events_out`. When it was sampled and is the outermost span, its records fire now.
    #[inline(always)]
    pub fn exit(self, stream_id: u32, events_in: u64, events_out: u64) {
        let Batch { start, slot, query: query_id, incoming, .. } = self;
        // Exited: nothing for `drop` to clean up.
        std::mem::forget(self);
        // Before the records fire: their traps are the observer's, not this query's.
        crate::cpu::leave(slot);
        if start != 0 {
            Batch::exit_sampled(start, query_id, stream_id, events_in, events_out);
        }
        if incoming {
            INCOMING.with(|i| i.set(None));
        }
    }

    #[cold]
    #[inline(never)]
    fn exit_sampled(start: u64, query: u32, stream: u32, events_in: u64, events_out: u64) {
        let end = now_ns();
        close(start, end, None, |total, _, f| Record::Batch {
            query,
            stream,
            events_in,
            events_out,
            latency_ns: total,
            start_ns: f.start,
            stages: f.stages,
            clean: f.clean,
        });
        finish();
    }
}

impl Drop for Batch {
    /// A sampled batch left without `exit` (an early return, a panic caught above): its thread
    /// would otherwise stay "inside a sampled batch" forever. Its open spans and records are
    /// dropped and counted.
    #[inline(always)]
    fn drop(&mut self) {
        // Before `abandon` fires the thread's records, as `exit` does.
        crate::cpu::leave(self.slot);
        if self.start != 0 {
            abandon();
        }
        if self.incoming {
            INCOMING.with(|i| i.set(None));
        }
    }
}

#[cold]
#[inline(never)]
fn abandon() {
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        r.dropped += (r.depth + r.len) as u64;
        r.depth = 0;
        r.len = 0;
        r.trace = None;
    });
    DEPTH.with(|c| c.set(0));
    STAGES_TIMED.with(|c| c.set(false));
    finish();
}

impl Span {
    /// Enters `stage` of query `query_id`; timed only inside a batch sampled for its stages.
    /// Left without [`Span::exit`] (an early return), the stage's time until its batch ends
    /// counts as the stage's in CPU attribution; the batch restores the slot.
    #[inline(always)]
    pub fn enter(query_id: u32, stage: Stage) -> Span {
        let slot = crate::cpu::enter_stage(query_id, stage);
        let start = if !batch_sample::is_enabled() || !STAGES_TIMED.with(Cell::get) { 0 } else { open_now() };
        Span { start, slot, query: query_id, stage, _thread: THREAD_BOUND }
    }

    /// Leaves the stage: `events_in` it was given, `events_out` it passed on.
    #[inline(always)]
    pub fn exit(self, events_in: u64, events_out: u64) {
        let slot = self.slot;
        if self.start != 0 {
            self.exit_sampled(events_in, events_out);
        }
        crate::cpu::leave(slot);
    }

    #[cold]
    #[inline(never)]
    fn exit_sampled(self, events_in: u64, events_out: u64) {
        let end = now_ns();
        let Span { query, stage, .. } = self;
        close(self.start, end, Some(stage), |total_ns, self_ns, f| Record::Stage {
            query,
            stage: stage.code(),
            events_in,
            events_out,
            self_ns,
            total_ns,
            start_ns: f.start,
            span_id: f.span_id,
        });
        finish();
    }
}

#[cold]
#[inline(never)]
fn open_now() -> u64 {
    open(now_ns(), false)
}

/// Opens a span (a batch or a stage); `before` is the clock read when its bookkeeping began.
/// Returns its start (never 0), or 0 if too deeply nested.
fn open(before: u64, batch: bool) -> u64 {
    let opened = RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        if r.depth >= MAX_OPEN {
            r.dropped += 1;
            return false;
        }
        let d = r.depth;
        r.open[d] = Frame {
            start: 0,
            before,
            overhead: 0,
            children_ns: 0,
            batch,
            clean: false,
            stages: [0; STAGES],
            span_id: 0,
        };
        r.depth += 1;
        DEPTH.with(|c| c.set(r.depth as u32));
        true
    });
    if !opened {
        return 0;
    }
    let start = now_ns().max(1);
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        let d = r.depth - 1;
        r.open[d].start = start;
    });
    start
}

/// Closes the innermost span, which must be the one that started at `start`, at `end`: its
/// record, built by `record(total, self, frame)` from its times with the
/// instrumentation inside it subtracted, joins the thread's records, its parent learns what it
/// cost, and a stage's self time is added to its batch. Out of order, the thread's spans are
/// dropped.
fn close(start: u64, end: u64, stage: Option<Stage>, record: impl FnOnce(u64, u64, &Frame) -> Record) {
    let cost = read_cost_ns();
    let closed = RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        let d = r.depth.checked_sub(1)?;
        let f = r.open[d];
        if f.start != start {
            r.dropped += (r.depth + r.len) as u64;
            r.depth = 0;
            r.len = 0;
            r.trace = None;
            DEPTH.with(|c| c.set(0));
            STAGES_TIMED.with(|c| c.set(false));
            return None;
        }
        r.depth = d;
        DEPTH.with(|c| c.set(d as u32));
        if d == 0 {
            STAGES_TIMED.with(|c| c.set(false));
        }
        // Between the two reads lie half of each read (one read's cost) and the nested
        // instrumentation.
        let total = end.saturating_sub(f.start).saturating_sub(f.overhead + cost);
        let own = total.saturating_sub(f.children_ns);
        if let Some(stage) = stage
            && let Some(batch) = r.open[..d].iter_mut().rev().find(|f| f.batch)
        {
            // At least 1: the stage ran (0 in the record means it did not).
            batch.stages[stage as usize] += own.max(1);
        }
        let len = r.len;
        match r.records.get_mut(len) {
            Some(slot) => {
                *slot = Some(record(total, own, &f));
                r.len += 1;
            }
            None => r.dropped += 1,
        }
        Some((f.before, total, d))
    });
    let Some((before, total, d)) = closed else { return };
    let after = now_ns();
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        if let Some(parent) = d.checked_sub(1).and_then(|p| r.open.get_mut(p)) {
            // Everything from this span's first read to its last, bar its own work, was
            // instrumentation, plus half a read at each end.
            parent.overhead += after.saturating_sub(before).saturating_sub(total) + cost;
            parent.children_ns += total;
        }
    });
}

fn push_record(rec: Record) {
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        let len = r.len;
        match r.records.get_mut(len) {
            Some(slot) => {
                *slot = Some(rec);
                r.len += 1;
            }
            None => r.dropped += 1,
        }
    });
}

/// Once the outermost span closed: fires the thread's records, children first, every clock
/// read done.
fn finish() {
    let pending = RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        if r.depth != 0 {
            return None;
        }
        let n = r.len;
        r.len = 0;
        let dropped = std::mem::take(&mut r.dropped);
        Some((r.records, n, dropped, r.trace.take()))
    });
    let Some((records, n, dropped, trace)) = pending else { return };
    // Stage records only for a tool that wants them: the batch record carries their self times.
    let stages = stage_sample::is_enabled();
    for (i, rec) in records.iter().take(n).enumerate() {
        let Some(rec) = *rec else { continue };
        match rec {
            Record::Stage { query, stage, events_in, events_out, self_ns, total_ns, start_ns, span_id } => {
                if stages {
                    stage_sample::site(query, stage, events_in, events_out, self_ns, total_ns, start_ns, span_id)
                }
            }
            Record::Batch { query, stream, events_in, events_out, latency_ns, start_ns, stages, clean } => {
                // The outermost batch closes last: the trace is its.
                if i + 1 == n
                    && let Some(t) = trace
                {
                    trace_context::site(
                        query,
                        (t.trace_id >> 64) as u64,
                        t.trace_id as u64,
                        t.span_id,
                        t.parent_span_id,
                        u32::from(t.flags),
                    );
                }
                let [ingest, filter, window, aggregate, emit] = stages;
                batch_sample::site(
                    query,
                    stream,
                    latency_ns,
                    u64::from(clean),
                    events_in,
                    ingest,
                    filter,
                    window,
                    aggregate,
                    emit,
                    events_out,
                    start_ns,
                )
            }
        }
    }
    if dropped > 0 {
        static DROPPED: OnceLock<spans_dropped::Counter> = OnceLock::new();
        DROPPED.get_or_init(spans_dropped::Counter::new).add(dropped);
    }
}

/// The context a traced batch hands downstream from inside its innermost open span, which gets
/// an id now if it had none (its record carries it); `None` when the thread is not inside a
/// traced batch.
pub(crate) fn traced_context() -> Option<TraceContext> {
    if DEPTH.with(Cell::get) == 0 {
        return None;
    }
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        let t = r.trace?;
        let d = r.depth.checked_sub(1)?;
        let frame = r.open.get_mut(d)?;
        // A batch frame (the root, or a batch nested in it, which is part of the root's
        // record) is represented by the root span; so is a stage whose record nobody takes
        // (no tool on `stage_sample`: a parent id that is never exported would dangle).
        let span_id = if frame.batch || !stage_sample::is_enabled() {
            t.span_id
        } else {
            if frame.span_id == 0 {
                frame.span_id = new_span_id();
            }
            frame.span_id
        };
        Some(TraceContext { trace_id: t.trace_id, span_id, flags: t.flags })
    })
}

/// The context the current outermost batch arrived with.
pub(crate) fn incoming_context() -> Option<TraceContext> {
    INCOMING.with(Cell::get)
}

// Trace and span ids: here, not with `TraceContext`, because only traced spans draw them and
// the sequence is seeded from this module's clock.

thread_local! {
    /// This thread's id sequence, 0 until its first id.
    static IDS: Cell<u64> = const { Cell::new(0) };
}

/// A random, non-zero 64-bit id: splitmix64 over a per-thread sequence seeded from the
/// process's random hash keys (the OS's randomness), so ids of different nodes and threads do
/// not collide.
fn next_id() -> u64 {
    IDS.with(|c| {
        let mut s = c.get();
        if s == 0 {
            use std::hash::BuildHasher;
            s = std::collections::hash_map::RandomState::new().hash_one(now_ns()) | 1;
        }
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        c.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn new_span_id() -> u64 {
    loop {
        let id = next_id();
        if id != 0 {
            return id;
        }
    }
}

fn new_trace_id() -> u128 {
    (u128::from(next_id()) << 64) | u128::from(new_span_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_not_zero_and_do_not_repeat() {
        let ids: std::collections::BTreeSet<u64> = (0..10_000).map(|_| new_span_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
        assert_ne!(new_trace_id(), new_trace_id());
    }

    /// Attached: batches and stages set the slot and restore it, nested queries included;
    /// detached, nothing is written.
    #[cfg(feature = "enabled")]
    #[test]
    fn boundaries_set_and_restore_the_slot() {
        use eventflux_abi::slot::{Where, decode};

        use crate::cpu::current;
        use crate::points::cpu_slot;

        // The only test that raises this semaphore; the slot is per thread.
        assert_eq!(decode(current()), Where::None);
        cpu_slot::SEMAPHORE.set(1);
        let a = Batch::enter(1);
        assert_eq!(decode(current()), Where::Query(1));
        let emit = Span::enter(1, Stage::Emit);
        assert_eq!(decode(current()), Where::Stage(1, Stage::Emit));
        let b = Batch::enter(2);
        let filter = Span::enter(2, Stage::Filter);
        assert_eq!(decode(current()), Where::Stage(2, Stage::Filter));
        filter.exit(1, 1);
        assert_eq!(decode(current()), Where::Query(2));
        b.exit(0, 1, 1);
        assert_eq!(decode(current()), Where::Stage(1, Stage::Emit), "the outer query's stage again");
        emit.exit(1, 1);
        {
            let _dropped = Batch::enter(3);
            assert_eq!(decode(current()), Where::Query(3));
        }
        assert_eq!(decode(current()), Where::Query(1), "a batch dropped without exit restores too");
        a.exit(0, 1, 1);
        assert_eq!(decode(current()), Where::None);
        cpu_slot::SEMAPHORE.set(0);
        let c = Batch::enter(4);
        assert_eq!(decode(current()), Where::None, "detached: not written");
        c.exit(0, 1, 1);
    }
}
