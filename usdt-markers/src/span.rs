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

use crate::probes::{
    batch_sample, component_sample, component_span, spans_dropped, stage_sample, trace_context, traces_declined,
};
use crate::traceparent::{SAMPLED, TraceContext};

pub use crate::levels::samples_per_sec;

/// Spans open at once on a thread (a batch and the stages and batches nested in it).
const MAX_OPEN: usize = 16;
/// Records a thread keeps until its outermost span closes.
const MAX_RECORDS: usize = 64;

/// [`Batch::start`] of a batch that is not sampled while a tool takes the samples (the tail
/// sampler may still time it from an emitting stage on); 0 when nobody does. A clock reading is
/// never 1.
const UNSAMPLED: u64 = 1;

/// A query batch, sampled or not. Pass it to [`Batch::exit`] when the batch is done.
#[must_use = "a sampled batch is reported when it exits"]
#[derive(Debug)]
pub struct Batch {
    /// Start on CLOCK_MONOTONIC when sampled; else [`UNSAMPLED`], or 0 while detached.
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
    /// For a batch whose total is its latency, undisturbed by stage timing (or taken anyway,
    /// when every batch is sampled): the batches this one stands for in the latency
    /// histogram. 0: not such a batch, or an emitting batch the tail sampler did not pick.
    weight: u64,
    /// Opened at the batch's first emitting stage by the tail sampler ([`tail`]), not at its
    /// start: [`Batch::exit`] of an unsampled batch closes it.
    promoted: bool,
    /// The tail sampler has seen this batch's first emitting stage.
    tail_seen: bool,
    /// A batch timed whole that the tail sampler picked: its weight is the stratum's.
    picked: bool,
    /// The query of a batch frame.
    query: u32,
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
        weight: u64,
    },
    /// A frequent component operation inside a batch sampled for its stages.
    Op { component: u32, op: u32, query: u32, items: u64, total_ns: u64, start_ns: u64 },
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
    static PACE: Cell<Pace> = const { Cell::new(Pace::NEW) };
    /// Whether the next sampled batch times its stages (sampled batches alternate).
    static STAGES_NEXT: Cell<bool> = const { Cell::new(false) };
    /// Sampled batches so far: with [`COUNTDOWN`], which every unsampled batch decrements, it
    /// names the current batch ([`batch_key`]).
    static CYCLE: Cell<u32> = const { Cell::new(0) };
    /// The last batch whose first emitting stage the tail sampler saw.
    static TAIL_SEEN: Cell<u64> = const { Cell::new(u64::MAX) };
    /// The tail sampler per query (its id modulo [`TAIL_SLOTS`]).
    static TAILS: RefCell<[Tail; TAIL_SLOTS]> = const { RefCell::new([Tail::NEW; TAIL_SLOTS]) };
    /// Per slot, what the inline path may do alone: the slot's countdown while its emitting
    /// batches are common, else 0 (ask [`tail`]).
    static TAIL_FAST: [Cell<u32>; TAIL_SLOTS] = const { [const { Cell::new(0) }; TAIL_SLOTS] };
    /// Per slot, the outermost batches entered while `batch_sample` was attached, and those of
    /// them that emitted: a sample's weight is a difference of these.
    static TAIL_BATCHES: [Cell<u32>; TAIL_SLOTS] = const { [const { Cell::new(0) }; TAIL_SLOTS] };
    static TAIL_EMITTING: [Cell<u32>; TAIL_SLOTS] = const { [const { Cell::new(0) }; TAIL_SLOTS] };
    static RECORDER: RefCell<Recorder> = const {
        RefCell::new(Recorder {
            open: [Frame { start: 0, before: 0, overhead: 0, children_ns: 0, batch: false, weight: 0, promoted: false, tail_seen: false, picked: false, query: 0, stages: [0; STAGES], span_id: 0 }; MAX_OPEN],
            depth: 0,
            records: [None; MAX_RECORDS],
            len: 0,
            dropped: 0,
            trace: None,
        })
    };
}

/// A countdown's pace: how many batches to let pass between samples so that about `rate` are
/// sampled per second, at random strides (the draw only has to break aliasing).
#[derive(Clone, Copy)]
struct Pace {
    /// Mean batches between samples.
    stride: u32,
    /// Batches from the last sample to this one: the countdown drawn then.
    drawn: u32,
    last_ns: u64,
    rng: u64,
}

impl Pace {
    const NEW: Pace = Pace { stride: 1, drawn: 1, last_ns: 0, rng: 0 };

    /// At a sample taken at `now`: the countdown to the next one.
    fn draw(&mut self, now: u64, rate: u32) -> u32 {
        if rate == 0 {
            self.stride = 1;
        } else if self.last_ns != 0 {
            // Batches since the last sample over the time they took: the batch rate, and the
            // stride that gives `rate` samples per second at it. Averaged over a few samples
            // (one interval is short and noisy), but followed at once when the batch rate
            // moved by more than 4x (a burst, or an engine that went idle).
            let period = 1_000_000_000 / u64::from(rate);
            let elapsed = now.saturating_sub(self.last_ns).max(1);
            let want = (u64::from(self.drawn).saturating_mul(period) / elapsed).clamp(1, u64::from(u32::MAX / 2));
            let stride = u64::from(self.stride);
            let next = if want > stride * 4 || want * 4 < stride { want } else { (3 * stride + want) / 4 };
            self.stride = next.max(1) as u32;
        }
        self.last_ns = now;
        // xorshift, seeded per thread from the clock.
        let mut x = if self.rng == 0 { now | 1 } else { self.rng };
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let next = if self.stride <= 1 { 1 } else { 1 + (x % (2 * u64::from(self.stride) - 1)) as u32 };
        self.drawn = next;
        next
    }
}

/// Queries whose tails are paced apart on a thread; queries whose ids are equal modulo this
/// share a pace (their tails are then sampled together, still with the right weights).
const TAIL_SLOTS: usize = 16;
/// Each query's tail sampler takes up to this share of the sampling level per second.
const TAIL_SHARE: u32 = 4;
/// A query whose emitting batches come at most this often per second has every one timed
/// (two clock reads each, no probe): its slowest reaches the histogram whatever the pick.
const WATCH_PER_SEC: u64 = 8192;
/// Emitting batches are a stratum of their own only while at most one of this many of the
/// query's batches emits; more common, the uniform samples cover them, and time them whole.
const RARE: u64 = 8;

/// The tail sampler of one query slot: a countdown over its emitting batches, and the slowest
/// of the current second.
#[derive(Clone, Copy)]
struct Tail {
    pace: Pace,
    /// Emitting batches until the next picked one; 1: the next.
    left: u32,
    /// Every emitting batch is timed (they are rare enough).
    watch: bool,
    /// The query's emitting batches are rare among its batches: the stratum is on.
    rare: bool,
    /// [`TAIL_BATCHES`] and [`TAIL_EMITTING`] of the slot at the last pick.
    batches_then: u32,
    emitting_then: u32,
    /// The same at the last uniform sample that spoke for the slot's batches.
    uniform_batches_then: u32,
    uniform_emitting_then: u32,
    /// The slowest emitting batch reported in the second that began at `since_ns`.
    max_ns: u64,
    since_ns: u64,
}

impl Tail {
    const NEW: Tail = Tail {
        pace: Pace::NEW,
        left: 1,
        watch: true,
        rare: true,
        batches_then: 0,
        emitting_then: 0,
        uniform_batches_then: 0,
        uniform_emitting_then: 0,
        max_ns: 0,
        since_ns: 0,
    };

    /// Whether an emitting batch of `latency_ns` that ended at `now` is the slowest of this
    /// second so far (and then it is).
    fn slowest(&mut self, latency_ns: u64, now: u64) -> bool {
        if now.saturating_sub(self.since_ns) >= 1_000_000_000 {
            self.since_ns = now;
            self.max_ns = 0;
        }
        let slowest = latency_ns > self.max_ns;
        self.max_ns = self.max_ns.max(latency_ns);
        slowest
    }
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
        Batch { start: Batch::timed(query_id), slot, query: query_id, incoming: false, _thread: THREAD_BOUND }
    }

    /// The start of a batch that is sampled, [`UNSAMPLED`] for one that is not while a tool
    /// takes the samples, else 0.
    #[inline(always)]
    fn timed(query: u32) -> u64 {
        if !batch_sample::is_enabled() {
            return 0;
        }
        // Inside a sampled batch every nested batch is part of its record.
        if DEPTH.with(Cell::get) != 0 {
            return open(now_ns(), Some(query));
        }
        // Batches per tail slot: how rare the slot's emitting batches are.
        TAIL_BATCHES.with(|b| {
            let c = &b[query as usize % TAIL_SLOTS];
            c.set(c.get().wrapping_add(1));
        });
        let left = COUNTDOWN.with(Cell::get);
        if left > 1 {
            COUNTDOWN.with(|c| c.set(left - 1));
            return UNSAMPLED;
        }
        Batch::sampled(query)
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
        let start = if forced && Batch::may_force() { Batch::traced_by_parent(query) } else { Batch::timed(query) };
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
    fn traced_by_parent(query: u32) -> u64 {
        crate::flusher::start_flusher();
        Batch::open_sampled(query, true, u64::from(samples_per_sec() == 0))
    }

    #[cold]
    #[inline(never)]
    fn sampled(query: u32) -> u64 {
        crate::flusher::start_flusher();
        let rate = samples_per_sec();
        let mut pace = PACE.with(Cell::get);
        let next = pace.draw(now_ns(), rate);
        PACE.with(|p| p.set(pace));
        COUNTDOWN.with(|c| c.set(next));
        CYCLE.with(|c| c.set(c.get().wrapping_add(1)));
        // Sampled batches alternate: one timed as a whole only (two clock reads, nothing inside
        // it disturbed: its latency is the engine's; how many batches it stands for is known
        // when it ends, see `uniform_weight`), the next with its stages timed (their self
        // times; the bookkeeping inside it leaves its total a little high). Sampling every
        // batch times every batch's stages, and each batch stands for itself.
        let stages = rate == 0 || STAGES_NEXT.with(Cell::get);
        STAGES_NEXT.with(|c| c.set(!stages));
        Batch::open_sampled(query, stages, u64::from(!stages || rate == 0))
    }

    /// Opens a sampled outermost batch; a batch timed with its stages is traced while a tool
    /// takes `trace_context`.
    fn open_sampled(query: u32, stages: bool, weight: u64) -> u64 {
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
        let start = open(now_ns(), Some(query));
        if start != 0 {
            RECORDER.with(|r| {
                let mut r = r.borrow_mut();
                let d = r.depth - 1;
                r.open[d].weight = weight;
                r.trace = trace;
            });
        }
        start
    }

    /// Whether this batch is sampled.
    pub fn is_sampled(&self) -> bool {
        self.start > UNSAMPLED
    }

    /// Records the batch's hand-off from its stream junction: `wait_ns` the chunk waited in an
    /// async junction's queue. Reported as the `ingest` stage.
    pub fn handoff(&self, events: u64, wait_ns: u64) {
        let query_id = self.query;
        if self.start > UNSAMPLED {
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
        // Detached: one test of a register.
        if start != 0 {
            if start != UNSAMPLED {
                Batch::exit_sampled(start, query_id, stream_id, events_in, events_out);
            } else if DEPTH.with(Cell::get) != 0 {
                // Unsampled, yet a span is open: the tail sampler promoted this batch.
                Batch::exit_promoted(query_id, stream_id, events_in, events_out);
            }
        }
        if incoming {
            INCOMING.with(|i| i.set(None));
        }
    }

    #[cold]
    #[inline(never)]
    fn exit_sampled(start: u64, query: u32, stream: u32, events_in: u64, events_out: u64) {
        Batch::close_batch(start, now_ns(), query, stream, events_in, events_out);
        finish();
    }

    /// Closes the batch frame that began at `start`, at `end`: its record joins the thread's.
    fn close_batch(start: u64, end: u64, query: u32, stream: u32, events_in: u64, events_out: u64) {
        close(start, end, None, |total, _, f| Record::Batch {
            query,
            stream,
            events_in,
            events_out,
            latency_ns: total,
            start_ns: f.start,
            stages: f.stages,
            // A uniform sample's weight is known now; a tail pick's was set when picked.
            weight: if f.weight != 0 && !f.promoted && !f.picked {
                uniform_weight(query, f.tail_seen)
            } else {
                f.weight
            },
        });
    }

    /// Closes the frame the tail sampler opened in this batch (the innermost open span when
    /// this unsampled batch ends: every batch entered after it was timed and has closed).
    #[cold]
    #[inline(never)]
    fn exit_promoted(query: u32, stream: u32, events_in: u64, events_out: u64) {
        let Some((start, tail_query)) = promoted_start() else { return };
        let end = now_ns();
        Batch::close_batch(start, end, query, stream, events_in, events_out);
        RECORDER.with(|r| {
            let mut r = r.borrow_mut();
            let last = r.len.checked_sub(1)?;
            let Some(Record::Batch { latency_ns, weight, .. }) = r.records.get_mut(last)?.as_mut() else { return None };
            if !tail_reported(tail_query, weight, *latency_ns, end) {
                // Watched, neither picked nor the slowest: nothing of it fires.
                r.len = 0;
            }
            Some(())
        });
        finish();
    }
}

/// The start and query of the innermost open span if the tail sampler opened it.
fn promoted_start() -> Option<(u64, u32)> {
    RECORDER.with(|r| {
        let r = r.borrow();
        let f = r.open.get(r.depth.checked_sub(1)?)?;
        (f.batch && f.promoted).then_some((f.start, f.query))
    })
}

impl Drop for Batch {
    /// A sampled batch left without `exit` (an early return, a panic caught above): its thread
    /// would otherwise stay "inside a sampled batch" forever. Its open spans and records are
    /// dropped and counted.
    #[inline(always)]
    fn drop(&mut self) {
        // Before `abandon` fires the thread's records, as `exit` does.
        crate::cpu::leave(self.slot);
        // Sampled, or unsampled with the tail sampler's frame open in it.
        let timed = self.start > UNSAMPLED
            || (self.start == UNSAMPLED && DEPTH.with(Cell::get) != 0 && promoted_start().is_some());
        if timed {
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
        let start = if !batch_sample::is_enabled() {
            0
        } else if STAGES_TIMED.with(Cell::get) {
            open_now()
        } else {
            if matches!(stage, Stage::Aggregate | Stage::Emit) {
                tail_entry(query_id);
            }
            0
        };
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

/// Names the thread's current batch: unsampled batches decrement the countdown, sampled ones
/// draw a new one and count a cycle, and a sampled batch's nested batches leave it alone.
#[inline(always)]
fn batch_key() -> u64 {
    (u64::from(CYCLE.with(Cell::get)) << 32) | u64::from(COUNTDOWN.with(Cell::get))
}

/// At an emitting stage (aggregate or emit) of a batch not timed for its stages. A query whose
/// emitting batches are common (a sliding window's: no stratum) only counts down to its next
/// look at how common they are, inline: two thread-local loads and a store, as every stage
/// entry of a one-event batch pays it (measured: counting each emitting batch exactly here cost
/// 10% of throughput at chunks of one event). A query whose emitting batches are rare has each
/// counted, exactly, in [`tail`]: a call per emitting batch, one in 8 of its batches or fewer.
#[inline(always)]
fn tail_entry(query: u32) {
    let slot = query as usize % TAIL_SLOTS;
    let left = TAIL_FAST.with(|f| f[slot].get());
    if left > 1 && DEPTH.with(Cell::get) == 0 {
        TAIL_FAST.with(|f| f[slot].set(left - 1));
        return;
    }
    tail(query);
}

/// The tail sampler, at the first emitting stage (aggregate or emit) of a batch of `query`
/// that is not timed for its stages.
///
/// Why: the batches that emit are where the work is (a tumbling window's flush carries all of
/// a window's aggregation and output, in one batch of a thousand when events arrive one at a
/// time) and uniform sampling at a few hundred batches a second meets them a few times a
/// minute. So while they are rare (one in [`RARE`] of the query's batches or fewer), emitting
/// batches are a stratum of their own: each query's are sampled with a countdown of their own
/// at up to 1/[`TAIL_SHARE`] of the level per second, and the ordinary samples keep only the
/// batches that did not emit. Common ones (a sliding window's) are left to the uniform
/// samples, which time them whole. Every latency sample carries the
/// number of batches it stands for, so the histogram estimates all batches, tails at their
/// true share.
///
/// A query whose emitting batches are rare (at most [`WATCH_PER_SEC`]) has every one timed:
/// the slowest of each second is reported too, standing for itself, so the histogram's top
/// bucket holds the slowest emitting batch (it overcounts that stratum by a few batches a
/// second).
///
/// An unsampled batch is timed from this stage on (its frame opens now and closes when the
/// batch exits): a lower bound on its latency that misses only the work before its first
/// emitting stage. A batch sampled whole keeps its own start when picked; if it was not
/// picked, its latency sample is dropped (its stratum speaks for it). A batch timed for its
/// stages cannot stand for the stratum and is left out of its count (one emitting batch in two
/// ordinary strides: a bias below 1% once the stride exceeds 50).
#[cold]
#[inline(never)]
fn tail(query: u32) {
    let rate = samples_per_sec();
    if rate == 0 {
        // Every batch is sampled and stands for itself.
        return;
    }
    // Once per batch (aggregation and emission may each run more than once in it).
    let key = batch_key();
    if TAIL_SEEN.with(Cell::get) == key {
        return;
    }
    // 0: not in a sampled batch; 1: in one timed whole, as the outermost batch of this query;
    // 2: in one this stage cannot speak for (timed for its stages, another query's, or a
    // tail already seen).
    let inside = RECORDER.with(|r| {
        let r = r.borrow();
        if r.depth == 0 {
            return 0;
        }
        let f = &r.open[0];
        if f.batch && f.query == query && !f.tail_seen && f.weight != 0 { 1 } else { 2 }
    });
    if inside == 2 {
        return;
    }
    TAIL_SEEN.with(|c| c.set(key));
    let slot = query as usize % TAIL_SLOTS;
    TAIL_EMITTING.with(|e| e[slot].set(e[slot].get().wrapping_add(1)));
    let pick = TAILS.with(|t| {
        let mut t = t.borrow_mut();
        let tail = &mut t[slot];
        if !tail.rare {
            // The inline path counted down since.
            tail.left = TAIL_FAST.with(|f| f[slot].get()).max(1);
        }
        let pick = if tail.left > 1 {
            tail.left -= 1;
            None
        } else {
            let share = (rate / TAIL_SHARE).max(1);
            // Emitting batches since the last pick (the ones this pick stands for), against
            // all of the slot's batches. Counted exactly while rare; while common, the inline
            // countdown's entries stand in (emitting stages, so up to a few per batch: common
            // stays common).
            let emitting_now = TAIL_EMITTING.with(|e| e[slot].get());
            let batches_now = TAIL_BATCHES.with(|b| b[slot].get());
            let counted = u64::from(emitting_now.wrapping_sub(tail.emitting_then));
            let weight = if tail.rare { counted } else { counted.max(u64::from(tail.pace.drawn)) }.max(1);
            let all = u64::from(batches_now.wrapping_sub(tail.batches_then));
            (tail.emitting_then, tail.batches_then) = (emitting_now, batches_now);
            tail.rare = weight * RARE <= all;
            tail.left = tail.pace.draw(now_ns(), share);
            tail.watch = tail.rare && u64::from(tail.pace.stride) * u64::from(share) <= WATCH_PER_SEC;
            Some(weight)
        };
        TAIL_FAST.with(|f| f[slot].set(if tail.rare { 0 } else { tail.left }));
        // Common emitting batches: no stratum (the uniform samples keep them, and the pick
        // above only measured how common they are).
        (pick.filter(|_| tail.rare), tail.watch, tail.rare)
    });
    let (pick, watch, rare) = pick;
    if !rare {
        if inside == 1 {
            RECORDER.with(|r| r.borrow_mut().open[0].tail_seen = true);
        }
        return;
    }
    if inside == 1 {
        RECORDER.with(|r| {
            let mut r = r.borrow_mut();
            let f = &mut r.open[0];
            f.tail_seen = true;
            if let Some(weight) = pick {
                f.weight = weight;
                f.picked = true;
            }
        });
        return;
    }
    if pick.is_none() && !watch {
        return;
    }
    crate::flusher::start_flusher();
    if open(now_ns(), Some(query)) != 0 {
        RECORDER.with(|r| {
            let mut r = r.borrow_mut();
            let d = r.depth - 1;
            let f = &mut r.open[d];
            f.weight = pick.unwrap_or(0);
            f.promoted = true;
            f.tail_seen = true;
        });
    }
}

/// How many batches a uniformly sampled batch of `query` timed whole stands for, at its end:
/// the slot's batches since its last such sample (itself included), but only those that did
/// not emit while emitting batches are a stratum of their own. An `emitting` one then stands
/// for none (the stratum's pick speaks for it), and the batches before it wait for the next.
/// Over a run the weights add up to the batches, however bursty their rate.
fn uniform_weight(query: u32, emitting: bool) -> u64 {
    if samples_per_sec() == 0 {
        return 1;
    }
    let slot = query as usize % TAIL_SLOTS;
    let batches = TAIL_BATCHES.with(|b| b[slot].get());
    let emitted = TAIL_EMITTING.with(|e| e[slot].get());
    TAILS.with(|t| {
        let mut t = t.borrow_mut();
        let tail = &mut t[slot];
        if tail.rare && emitting {
            return 0;
        }
        let all = batches.wrapping_sub(tail.uniform_batches_then);
        let stratum = emitted.wrapping_sub(tail.uniform_emitting_then);
        (tail.uniform_batches_then, tail.uniform_emitting_then) = (batches, emitted);
        u64::from(if tail.rare { all.saturating_sub(stratum) } else { all }).max(1)
    })
}

/// A promoted batch closed at `end` after `latency_ns`: whether its record fires. A pick
/// does; a watched batch that was not picked only when it is the slowest of its second
/// (then it stands for itself).
fn tail_reported(query: u32, weight: &mut u64, latency_ns: u64, end: u64) -> bool {
    let slowest = TAILS.with(|t| t.borrow_mut()[query as usize % TAIL_SLOTS].slowest(latency_ns, end));
    if *weight == 0 && slowest {
        *weight = 1;
    }
    *weight != 0
}

/// A frequent component operation begins: timed (a span) only inside a batch sampled for its
/// stages; its start, else 0.
#[inline(always)]
pub(crate) fn op_open() -> u64 {
    if STAGES_TIMED.with(Cell::get) { open_now() } else { 0 }
}

/// The operation that [`op_open`] began at `start` ended, having handled `items`.
#[cold]
#[inline(never)]
pub(crate) fn op_close(start: u64, component: u32, op: eventflux_abi::ComponentOp, items: u64) {
    let end = now_ns();
    // The batch it ran in: the innermost open batch frame.
    let query = RECORDER.with(|r| {
        let r = r.borrow();
        r.open[..r.depth].iter().rev().find(|f| f.batch).map_or(0, |f| f.query)
    });
    close(start, end, None, |total_ns, _, f| Record::Op {
        component,
        op: op.code(),
        query,
        items,
        total_ns,
        start_ns: f.start,
    });
    finish();
}

#[cold]
#[inline(never)]
fn open_now() -> u64 {
    open(now_ns(), None)
}

/// Opens a span: a batch of `query` (`Some`) or a stage; `before` is the clock read when its
/// bookkeeping began. Returns its start (never 0), or 0 if too deeply nested.
fn open(before: u64, batch: Option<u32>) -> u64 {
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
            batch: batch.is_some(),
            weight: 0,
            promoted: false,
            tail_seen: false,
            picked: false,
            query: batch.unwrap_or(0),
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
    let op_spans = component_span::is_enabled();
    for (i, rec) in records.iter().take(n).enumerate() {
        let Some(rec) = *rec else { continue };
        match rec {
            Record::Stage { query, stage, events_in, events_out, self_ns, total_ns, start_ns, span_id } => {
                if stages {
                    stage_sample::site(query, stage, events_in, events_out, self_ns, total_ns, start_ns, span_id)
                }
            }
            Record::Op { component, op, query, items, total_ns, start_ns } => {
                component_sample::site(component, op, items, total_ns, start_ns);
                if op_spans {
                    component_span::site(component, op, query, items, total_ns, start_ns);
                }
            }
            Record::Batch { query, stream, events_in, events_out, latency_ns, start_ns, stages, weight } => {
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
                    query, stream, latency_ns, weight, events_in, ingest, filter, window, aggregate, emit, events_out,
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
