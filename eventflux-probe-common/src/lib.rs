//! Types shared by the kernel programs (eventflux-probe-ebpf) and user space (eventflux-probe).
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, because the same bytes are
//! written by one side and read by the other through BPF maps. `docs/probes.md` describes the
//! map layouts; change them together.

#![no_std]

pub mod hist;

/// The probe ABI: ids, names and argument positions of every probe (`eventflux_abi::probe`),
/// generated from the one table the engine's markers are generated from.
pub use eventflux_abi::{Class, PROBES, Stage, probe};

/// Most arguments a USDT probe can have on x86-64 (as in libbpf).
pub const MAX_ARGS: usize = 12;

/// How to fetch one probe argument, decoded from its spec string by user space so that the
/// kernel program never parses text.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArgLoc {
    /// The constant (`Const`), or the displacement added to the address (`Deref`, `Indexed`).
    pub val_off: i64,
    /// Byte offset of the register in `struct pt_regs` (`Reg`, base of `Deref`/`Indexed`).
    pub reg_off: u16,
    /// Byte offset of the index register in `struct pt_regs` (`Indexed`).
    pub idx_reg_off: u16,
    /// One of the `ARG_*` kinds.
    pub kind: u8,
    /// Bytes to keep: 1, 2, 4 or 8.
    pub size: u8,
    /// 1 to sign-extend from `size` bytes.
    pub signed: u8,
    /// Index scale (`Indexed`).
    pub scale: u8,
    /// Bits to shift right before truncating: 8 for `%ah` and friends.
    pub shift: u8,
    /// 1 if the base register is absent (`(,%index,scale)`).
    pub no_base: u8,
    pub _pad: [u8; 6],
}

pub const ARG_CONST: u8 = 0;
pub const ARG_REG: u8 = 1;
pub const ARG_DEREF: u8 = 2;
pub const ARG_INDEXED: u8 = 3;

/// Everything the kernel needs about one probe site (note); found by the BPF cookie.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteSpec {
    pub args: [ArgLoc; MAX_ARGS],
    pub probe: u32,
    pub arg_count: u32,
    /// The process this site was attached for (attachments are per process): saves the
    /// kernel program a helper call on every hit.
    pub pid: u32,
    pub _pad: u32,
}

impl Default for SiteSpec {
    fn default() -> Self {
        SiteSpec { args: [ArgLoc::default(); MAX_ARGS], probe: 0, arg_count: 0, pid: 0, _pad: 0 }
    }
}

/// Sites (notes) that can be attached at once: the size of the spec map.
pub const MAX_SITES: u32 = 4096;

/// Key of a per-CPU counter: which counter, for which ids, in which process.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CounterKey {
    pub pid: u32,
    pub counter: u32,
    pub a: u32,
    pub b: u32,
}

/// Counter kinds (`CounterKey::counter`); `a` and `b` are the ids named.
pub mod counter {
    /// Events into a stream: a = stream.
    pub const STREAM_RECEIVED: u32 = 0;
    /// Events handed to subscribers: a = stream.
    pub const STREAM_SENT: u32 = 1;
    /// Producer found a queue full: a = stream, b = query.
    pub const BACKPRESSURE: u32 = 2;
    /// Events into a query: a = query, b = input stream.
    pub const QUERY_PROCESSED: u32 = 3;
    /// Rows emitted: a = query, b = output stream.
    pub const QUERY_EMITTED: u32 = 4;
    /// Failed events: a = query, b = error kind.
    pub const QUERY_ERRORS: u32 = 5;
    /// Connections established: a = protocol.
    pub const CONN_OPENED: u32 = 6;
    /// Connections closed: a = protocol.
    pub const CONN_CLOSED: u32 = 7;
    /// Connection failures: a = protocol, b = kind.
    pub const CONN_ERRORS: u32 = 8;
    /// Events emitted into a stream (output streams): a = stream.
    pub const STREAM_EMITTED_INTO: u32 = 9;
    /// Query batches (chunks), every one: a = query.
    pub const QUERY_BATCHES: u32 = 10;
    /// Span records of sampled batches the engine could not keep.
    pub const ENGINE_SPANS_DROPPED: u32 = 11;
    /// Upstream-sampled batches the engine did not trace (over its per-thread bound).
    pub const ENGINE_TRACES_DECLINED: u32 = 12;
    /// A component's counter: `COMPONENT + ComponentCounter code`, a = component, b = label.
    pub const COMPONENT: u32 = 0x100;
}

/// Last-value gauges (`CounterKey::counter` in the gauge map).
pub mod gauge {
    /// Bytes a query's window holds: a = query.
    pub const WINDOW_STATE_BYTES: u32 = 0;
    /// Live group-by keys: a = query.
    pub const GROUPS: u32 = 1;
    /// Chunks queued: a = stream, b = query.
    pub const QUEUE_DEPTH: u32 = 2;
    /// Queue capacity in chunks: a = stream, b = query.
    pub const QUEUE_CAPACITY: u32 = 3;
    /// Bytes queued: a = stream, b = query.
    pub const QUEUE_BYTES: u32 = 4;
    /// Nanoseconds the last dequeued chunk waited: a = stream, b = query.
    pub const QUEUE_WAIT_NS: u32 = 5;
    /// Connections open now: a = protocol.
    pub const CONN_ACTIVE: u32 = 6;
    /// A component's gauge: `COMPONENT + ComponentGauge code`, a = component, b = label.
    pub const COMPONENT: u32 = 0x100;
}

/// Histogram stages: the ABI's `Stage` codes, and the whole batch after them.
pub mod stage {
    use eventflux_abi::Stage;

    pub const INGEST: u32 = Stage::Ingest.code();
    pub const FILTER: u32 = Stage::Filter.code();
    pub const WINDOW: u32 = Stage::Window.code();
    pub const AGGREGATE: u32 = Stage::Aggregate.code();
    pub const EMIT: u32 = Stage::Emit.code();
    /// The whole query batch, children included (`batch_sample`).
    pub const BATCH: u32 = 5;
    /// A component operation's histogram: `COMPONENT + ComponentOp code`, with the component
    /// id in `HistKey::query`.
    pub const COMPONENT: u32 = 0x100;
    /// Stage labels by code; a test checks them against `Stage`.
    pub const NAMES: [&str; 6] = ["ingest", "filter", "window", "aggregate", "emit", "batch"];
}

/// Key of a latency histogram.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HistKey {
    pub pid: u32,
    pub query: u32,
    pub stage: u32,
    pub _pad: u32,
}

/// A per-CPU latency histogram; see [`hist`] for the buckets.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Hist {
    pub buckets: [u64; hist::BUCKETS],
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { buckets: [0; hist::BUCKETS], count: 0, sum_ns: 0, max_ns: 0 }
    }
}

/// Indexes of the drop counters: events the kernel side could not record.
pub mod drop {
    /// A counter or gauge map was full.
    pub const COUNTERS_FULL: u32 = 0;
    /// The histogram map was full.
    pub const HISTS_FULL: u32 = 1;
    /// The event ring buffer was full.
    pub const EVENTS_FULL: u32 = 2;
    /// A site fired with no spec (cookie) for it.
    pub const NO_SPEC: u32 = 3;
    /// An argument could not be read.
    pub const ARG_READ: u32 = 4;
    /// The span ring buffer was full (user space reads it too slowly).
    pub const SPANS_FULL: u32 = 5;
    /// The CPU slot map was full (more engine threads than it holds).
    pub const SLOTS_FULL: u32 = 6;
    /// A thread's CPU slot could not be read (its page not resident at the sample): the sample
    /// counts as outside any query.
    pub const SLOT_READ: u32 = 7;
    /// The CPU sample map was full.
    pub const CPU_FULL: u32 = 8;
    /// A sample's stack could not be stored (stack map full or its bucket taken): the sample
    /// counts without that stack.
    pub const STACK_LOST: u32 = 9;
    pub const COUNT: u32 = 10;
    pub const NAMES: [&str; COUNT as usize] = [
        "counters_full",
        "hists_full",
        "events_full",
        "no_spec",
        "arg_read",
        "spans_full",
        "slots_full",
        "slot_read",
        "cpu_samples_full",
        "stacks_lost",
    ];
}

/// Where an engine thread's CPU slot is (`cpu_slot`), by thread id in `SLOTS`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotRef {
    /// The process of the thread: a tid reused by another process is not read.
    pub pid: u32,
    pub _pad: u32,
    /// The slot's address in that process.
    pub address: u64,
}

/// A stack id that is not there (not collected, or not available: a sample in user mode has
/// no kernel stack).
pub const NO_STACK: i32 = -1;

/// Key of the CPU sample counts: the sampled process, what its interrupted thread was
/// executing (its CPU slot, `eventflux_abi::slot`: `query` the high half, `state` the low),
/// and when profiling its stacks (ids in `STACKS`, else [`NO_STACK`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CpuKey {
    pub pid: u32,
    pub query: u32,
    pub state: u32,
    pub user_stack: i32,
    pub kernel_stack: i32,
    pub _pad: u32,
}

/// Values of `CPU_TARGETS`: how to sample a process.
pub mod cpu_target {
    /// Count its samples.
    pub const COUNT: u32 = 1;
}

/// [`SpanRecord::kind`]: one stage of a sampled batch (`stage_sample`).
pub const SPAN_STAGE: u32 = 0;
/// [`SpanRecord::kind`]: a sampled batch as a whole (`batch_sample`), after its stages.
pub const SPAN_BATCH: u32 = 1;
/// [`ContextRecord::kind`]: a traced batch's trace context (`trace_context`), just before its
/// batch record.
pub const SPAN_CONTEXT: u32 = 2;

/// One span of a sampled batch, sent to user space through the `SPANS` ring buffer while
/// spans are traced. The thread tells the records of concurrent batches apart: an engine
/// thread fires a batch's stage records, then its batch record, after the batch.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanRecord {
    /// [`SPAN_STAGE`] or [`SPAN_BATCH`].
    pub kind: u32,
    pub pid: u32,
    /// The engine thread (kernel tid).
    pub tid: u32,
    pub query: u32,
    /// Stage: its `Stage` code, or `stage::COMPONENT + ComponentOp` for a component operation
    /// (`component_span`); batch: the input stream id.
    pub stage_or_stream: u32,
    /// Batch: 1 when timed as a whole only (`latency_weight` not 0: no stage records);
    /// component operation: the component's id.
    pub clean: u32,
    pub events_in: u64,
    pub events_out: u64,
    /// CLOCK_MONOTONIC.
    pub start_ns: u64,
    /// Stage: with the stages it called; batch: the latency.
    pub total_ns: u64,
    /// Stage: without the stages it called; batch: 0.
    pub self_ns: u64,
    /// Stage: the id the engine gave the span when it forwarded a trace context from inside
    /// it, 0 if none; batch: 0.
    pub span_id: u64,
}

/// A traced batch's W3C trace context, in the `SPANS` ring buffer just before the batch's
/// [`SpanRecord`] (same thread). Records in that ring buffer start with their `kind`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextRecord {
    /// [`SPAN_CONTEXT`].
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub query: u32,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u32,
    pub _pad: u32,
    pub trace_id_high: u64,
    pub trace_id_low: u64,
    /// The batch's root span.
    pub span_id: u64,
    /// The upstream span the batch continues, 0 when it starts a trace.
    pub parent_span_id: u64,
}

/// Bytes of a name carried in an [`Event`].
pub const NAME_LEN: usize = 64;

/// A registration, sent to user space through the ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// One of the `EVENT_*` kinds.
    pub kind: u32,
    pub pid: u32,
    pub id: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub d: u64,
    pub name: [u8; NAME_LEN],
}

/// `stream_register`: id = stream, a = role, b = junction, d = capacity.
pub const EVENT_STREAM: u32 = 0;
/// `query_register`: id = query, a = input stream, b = output stream, c = window kind, d = size.
pub const EVENT_QUERY: u32 = 1;
/// `query_unregister`: id = query.
pub const EVENT_QUERY_GONE: u32 = 2;
/// `component_register`: id = component, a = kind, b = variant, c = stream, d = query.
pub const EVENT_COMPONENT: u32 = 3;
/// `component_unregister`: id = component.
pub const EVENT_COMPONENT_GONE: u32 = 4;
/// `query_input`: id = query, a = another stream it reads.
pub const EVENT_QUERY_INPUT: u32 = 5;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) integers and arrays of them with explicit padding fields, valid
    // for any bit pattern.
    unsafe impl aya::Pod for super::SiteSpec {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::HistKey {}
    unsafe impl aya::Pod for super::Hist {}
    unsafe impl aya::Pod for super::SlotRef {}
    unsafe impl aya::Pod for super::CpuKey {}
}
