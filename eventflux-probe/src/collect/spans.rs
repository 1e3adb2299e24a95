//! Span trees of sampled batches, from the span records the kernel programs write to the
//! `SPANS` ring buffer while tracing (`stage_sample` and `batch_sample` attached, see
//! docs/probes.md).
//!
//! An engine thread fires a sampled batch's records after the batch: one per stage span
//! (`stage_sample`, in the order the spans closed), then the batch's (`batch_sample`). So the
//! [`Assembler`] keeps each thread's stage records until that thread's batch record arrives and
//! then builds the tree: the batch is the root (query execution); stage spans nest by time, a
//! span inside the innermost span that contains it, as they ran. The ingest stage (the time
//! the chunk waited in an async junction's queue) begins before the query starts on it: the
//! root then begins with the ingest span, so that children always lie inside their parent.
//! Times are CLOCK_MONOTONIC, the clock of the engine's markers; [`Clock`] turns them into
//! wall-clock time.
//!
//! A traced batch (one timed with its stages while `trace_context` is attached) also fires its
//! W3C trace context just before its batch record: the trace it belongs to (the upstream
//! node's, when its events came with one), its root span's id and its parent span upstream.
//! Stage records carry the id the engine gave a span when it forwarded the context from
//! inside it, so the downstream node's root hangs under exactly that span.

use std::collections::BTreeMap;

use crate::model::trace::{Context, Span, Trace};
use eventflux_probe_common::{ContextRecord, SPAN_BATCH, SPAN_CONTEXT, SPAN_STAGE, SpanRecord, stage};

/// Stage records kept per thread while waiting for the batch record: more means the batch
/// record was lost (a full ring buffer), and the oldest are dropped.
const MAX_PENDING: usize = 64;

/// A record of the `SPANS` ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Span(SpanRecord),
    Context(ContextRecord),
}

/// Decodes a ring-buffer record by its leading `kind`; `None` if it is of no known kind or
/// too short for its kind.
pub fn decode(bytes: &[u8]) -> Option<Record> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        SPAN_STAGE | SPAN_BATCH => read::<SpanRecord>(bytes).map(Record::Span),
        SPAN_CONTEXT => read::<ContextRecord>(bytes).map(Record::Context),
        _ => None,
    }
}

/// Types the kernel programs write to `SPANS`: plain integers, valid for any bit pattern.
trait Plain: Copy {}
impl Plain for SpanRecord {}
impl Plain for ContextRecord {}

fn read<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: at least size_of::<T>() bytes, and T is plain integers (any bit pattern valid).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Builds trees from span records as they arrive.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: BTreeMap<(u32, u32), Vec<SpanRecord>>,
    /// A thread's trace context record, waiting for the batch record right after it.
    contexts: BTreeMap<(u32, u32), ContextRecord>,
    /// Stage records dropped because their batch never came.
    pub orphaned: u64,
}

impl Assembler {
    /// Takes one record; a batch record completes its thread's tree.
    pub fn push(&mut self, r: Record) -> Option<Trace> {
        let r = match r {
            Record::Span(r) => r,
            Record::Context(c) => {
                self.contexts.insert((c.pid, c.tid), c);
                return None;
            }
        };
        match r.kind {
            // A rare component operation outside any batch (a snapshot): a tree of its own.
            SPAN_STAGE if r.query == eventflux_abi::NONE => Some(standalone(&r)),
            SPAN_STAGE => {
                let pending = self.pending.entry((r.pid, r.tid)).or_default();
                if pending.len() == MAX_PENDING {
                    pending.remove(0);
                    self.orphaned += 1;
                }
                pending.push(r);
                None
            }
            SPAN_BATCH => {
                let pending = self.pending.remove(&(r.pid, r.tid)).unwrap_or_default();
                // A nested batch (a query called from another's emit) fires before the outer
                // one: its stages are those of its query that started within it; the outer
                // query's stages that closed before it stay pending. No later batch's record
                // is here yet (a thread fires its records in order), so the batch's end is
                // no bound: its latency leaves out the instrumentation inside it, which on a
                // busy machine (a preempted clock read) can put its computed end before the
                // start of its last stage. The ingest span ends where the batch starts.
                let (mine, rest): (Vec<SpanRecord>, Vec<SpanRecord>) = pending.into_iter().partition(|s| {
                    s.query == r.query
                        && (s.start_ns >= r.start_ns
                            || (s.stage_or_stream == stage::INGEST
                                && s.start_ns.saturating_add(s.total_ns) >= r.start_ns))
                });
                if !rest.is_empty() {
                    self.pending.insert((r.pid, r.tid), rest);
                }
                let context = self.contexts.remove(&(r.pid, r.tid)).filter(|c| c.query == r.query).map(|c| Context {
                    trace_id: (u128::from(c.trace_id_high) << 64) | u128::from(c.trace_id_low),
                    span_id: c.span_id,
                    parent_span_id: c.parent_span_id,
                    flags: c.flags as u8,
                });
                let mut trace = tree(&r, &mine);
                trace.context = context;
                Some(trace)
            }
            _ => None,
        }
    }

    /// Forgets a process's pending records (it exited).
    pub fn forget(&mut self, pid: u32) {
        self.pending.retain(|(p, _), _| *p != pid);
        self.contexts.retain(|(p, _), _| *p != pid);
    }
}

/// The trace of an operation that ran outside batches: its span is the root.
fn standalone(r: &SpanRecord) -> Trace {
    let root = Span {
        stage: r.stage_or_stream,
        start_ns: r.start_ns,
        end_ns: r.start_ns.saturating_add(r.total_ns),
        self_ns: r.total_ns,
        events_in: r.events_in,
        events_out: r.events_out,
        span_id: 0,
        component: Some(r.clean),
        children: Vec::new(),
    };
    Trace {
        pid: r.pid,
        tid: r.tid,
        query: eventflux_abi::NONE,
        stream: eventflux_abi::NONE,
        clean: false,
        latency_ns: r.total_ns,
        context: None,
        root,
    }
}

fn tree(batch: &SpanRecord, stages: &[SpanRecord]) -> Trace {
    // Spans on one thread nest properly and the engine fires a span's record when it closes,
    // so the records arrive innermost first: a record's children are the subtrees closed
    // before it that started at or after its start (a sibling before it started earlier).
    // Not by its end: a span's reported total leaves out its children's bookkeeping, so a
    // parent may appear to end before its last child starts (microseconds, when a stage runs
    // twice and the sampling code is cold); it is stretched to cover its children. Nor by
    // the stages' order: the engine's WHERE may run inside its window, a stage twice.
    let mut top: Vec<Span> = Vec::new();
    for s in stages {
        let mut span = Span {
            stage: s.stage_or_stream,
            start_ns: s.start_ns,
            end_ns: s.start_ns.saturating_add(s.total_ns),
            self_ns: s.self_ns,
            events_in: s.events_in,
            events_out: s.events_out,
            span_id: s.span_id,
            component: (s.stage_or_stream >= stage::COMPONENT).then_some(s.clean),
            children: Vec::new(),
        };
        let mut children = Vec::new();
        while let Some(last) = top.last()
            && last.start_ns >= span.start_ns
        {
            children.extend(top.pop());
        }
        children.reverse();
        span.end_ns = children.iter().map(|c| c.end_ns).fold(span.end_ns, u64::max);
        span.children = children;
        top.push(span);
    }
    top.sort_by_key(|s| s.start_ns);
    // The root covers the batch and every span in it: the ingest wait before it, and stage
    // bookkeeping the latency left out after.
    let start = top.iter().map(|s| s.start_ns).fold(batch.start_ns, u64::min);
    let end = top.iter().map(|s| s.end_ns).fold(batch.start_ns.saturating_add(batch.total_ns), u64::max);
    let children: u64 = top.iter().map(Span::duration_ns).sum();
    let root = Span {
        stage: stage::BATCH,
        start_ns: start,
        end_ns: end,
        self_ns: end.saturating_sub(start).saturating_sub(children),
        events_in: batch.events_in,
        events_out: batch.events_out,
        span_id: 0,
        component: None,
        children: top,
    };
    Trace {
        pid: batch.pid,
        tid: batch.tid,
        query: batch.query,
        stream: batch.stage_or_stream,
        clean: batch.clean != 0,
        latency_ns: batch.total_ns,
        context: None,
        root,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage_rec(tid: u32, query: u32, st: u32, start: u64, total: u64, self_ns: u64) -> Record {
        Record::Span(SpanRecord {
            kind: SPAN_STAGE,
            pid: 1,
            tid,
            query,
            stage_or_stream: st,
            clean: 0,
            events_in: 64,
            events_out: 60,
            start_ns: start,
            total_ns: total,
            self_ns,
            span_id: 0,
        })
    }

    fn batch_rec(tid: u32, query: u32, start: u64, latency: u64) -> Record {
        Record::Span(SpanRecord {
            kind: SPAN_BATCH,
            pid: 1,
            tid,
            query,
            stage_or_stream: 0,
            clean: 0,
            events_in: 64,
            events_out: 10,
            start_ns: start,
            total_ns: latency,
            self_ns: 0,
            span_id: 0,
        })
    }

    fn context_rec(tid: u32, query: u32) -> ContextRecord {
        ContextRecord {
            kind: SPAN_CONTEXT,
            pid: 1,
            tid,
            query,
            flags: 1,
            _pad: 0,
            trace_id_high: 0xaa,
            trace_id_low: 0xbb,
            span_id: 0x77,
            parent_span_id: 0x55,
        }
    }

    #[test]
    fn a_context_record_belongs_to_the_batch_record_after_it() {
        let mut a = Assembler::default();
        a.push(stage_rec(1, 3, stage::FILTER, 100, 50, 50));
        a.push(Record::Context(context_rec(1, 3)));
        let t = a.push(batch_rec(1, 3, 90, 100)).expect("trace");
        let c = t.context.expect("context");
        assert_eq!((c.trace_id, c.span_id, c.parent_span_id, c.flags), ((0xaa << 64) | 0xbb, 0x77, 0x55, 1));
        assert_eq!(c.trace_id_hex(), "00000000000000aa00000000000000bb");
        // The next batch of the thread has none; a context of another query is not taken.
        assert_eq!(a.push(batch_rec(1, 3, 300, 10)).and_then(|t| t.context), None);
        a.push(Record::Context(context_rec(1, 4)));
        assert_eq!(a.push(batch_rec(1, 3, 400, 10)).and_then(|t| t.context), None);
    }

    #[test]
    fn nested_stages_become_a_tree_in_the_order_they_ran() {
        let mut a = Assembler::default();
        // As the engine fires them: the hand-off (ingest) first, then the stage spans as they
        // closed, innermost first; the aggregate's total leaves out the emit's bookkeeping, so
        // it seems to end 5 ns before the emit does.
        for r in [
            stage_rec(7, 3, stage::INGEST, 900, 100, 100),
            stage_rec(7, 3, stage::EMIT, 1400, 100, 100),
            stage_rec(7, 3, stage::AGGREGATE, 1300, 195, 200),
            stage_rec(7, 3, stage::WINDOW, 1200, 500, 200),
            stage_rec(7, 3, stage::FILTER, 1100, 700, 200),
        ] {
            assert!(a.push(r).is_none());
        }
        let t = a.push(batch_rec(7, 3, 1000, 900)).expect("a trace");
        let names: Vec<(usize, &str)> = t.root.walk().iter().map(|(d, s)| (*d, s.name())).collect();
        assert_eq!(
            names,
            vec![(0, "query"), (1, "ingest"), (1, "filter"), (2, "window"), (3, "aggregate"), (4, "emit")]
        );
        // The root begins with the ingest wait and ends with the batch.
        assert_eq!((t.root.start_ns, t.root.end_ns), (900, 1900));
        for (_, s) in t.root.walk() {
            for c in &s.children {
                assert!(s.contains(c), "{} outside {}", c.name(), s.name());
            }
        }
        assert_eq!(t.root.self_ns, 1000 - 100 - 700);
        assert!(a.pending.is_empty());
    }

    /// The engine's SQL order: the WHERE inside the window, aggregation with two inserts whose
    /// second starts after the aggregate's reported end (its bookkeeping left out).
    #[test]
    fn stages_nest_by_how_they_ran_not_by_their_order_or_reported_ends() {
        let mut a = Assembler::default();
        for r in [
            stage_rec(7, 3, stage::EMIT, 1400, 100, 100),
            stage_rec(7, 3, stage::EMIT, 1600, 100, 100),
            stage_rec(7, 3, stage::AGGREGATE, 1300, 250, 50),
            stage_rec(7, 3, stage::FILTER, 1200, 600, 100),
            stage_rec(7, 3, stage::WINDOW, 1100, 800, 200),
        ] {
            assert!(a.push(r).is_none());
        }
        let t = a.push(batch_rec(7, 3, 1000, 1000)).expect("a trace");
        let names: Vec<(usize, &str)> = t.root.walk().iter().map(|(d, s)| (*d, s.name())).collect();
        assert_eq!(names, vec![(0, "query"), (1, "window"), (2, "filter"), (3, "aggregate"), (4, "emit"), (4, "emit")]);
        for (_, s) in t.root.walk() {
            for c in &s.children {
                assert!(s.contains(c), "{} outside {}", c.name(), s.name());
            }
        }
    }

    #[test]
    fn a_stage_that_starts_after_the_batch_latency_ends_is_still_its() {
        let mut a = Assembler::default();
        // The batch's latency (100 ns from 1000) left out 400 ns the emit's bookkeeping was
        // preempted for: its last stage starts at 1300, after 1000 + 100.
        for r in [
            stage_rec(7, 3, stage::INGEST, 900, 100, 100),
            stage_rec(7, 3, stage::EMIT, 1300, 20, 20),
            stage_rec(7, 3, stage::FILTER, 1010, 330, 40),
        ] {
            assert!(a.push(r).is_none());
        }
        let t = a.push(batch_rec(7, 3, 1000, 100)).expect("a trace");
        let names: Vec<&str> = t.root.walk().iter().map(|(_, s)| s.name()).collect();
        assert_eq!(names, ["query", "ingest", "filter", "emit"]);
        assert!(a.pending.is_empty());
        // An ingest record of an earlier batch (whose batch record was lost) is not taken.
        a.push(stage_rec(7, 3, stage::INGEST, 1500, 100, 100));
        let t = a.push(batch_rec(7, 3, 2000, 100)).expect("a trace");
        assert!(t.root.children.is_empty());
    }

    #[test]
    fn threads_and_nested_batches_do_not_mix() {
        let mut a = Assembler::default();
        a.push(stage_rec(1, 3, stage::FILTER, 100, 50, 50));
        a.push(stage_rec(2, 4, stage::FILTER, 110, 50, 50));
        // An inner batch of query 5 inside query 3's emit, on thread 1, fires first.
        a.push(stage_rec(1, 5, stage::FILTER, 160, 10, 10));
        let inner = a.push(batch_rec(1, 5, 155, 20)).expect("inner");
        assert_eq!(inner.root.children.len(), 1);
        let outer = a.push(batch_rec(1, 3, 90, 100)).expect("outer");
        assert_eq!((outer.query, outer.root.children.len()), (3, 1));
        let other = a.push(batch_rec(2, 4, 105, 60)).expect("other thread");
        assert_eq!((other.tid, other.root.children[0].start_ns), (2, 110));
    }

    #[test]
    fn a_lost_batch_record_does_not_grow_without_bound() {
        let mut a = Assembler::default();
        for i in 0..(MAX_PENDING as u64 + 10) {
            a.push(stage_rec(1, 3, stage::FILTER, i * 10, 5, 5));
        }
        assert_eq!(a.orphaned, 10);
        assert_eq!(a.pending[&(1, 1)].len(), MAX_PENDING);
    }

    #[test]
    fn short_records_are_refused() {
        assert!(decode(&[0u8; 8]).is_none());
        assert!(decode(&[9u8; 80]).is_none(), "unknown kind");
        let Record::Span(r) = batch_rec(1, 2, 3, 4) else { unreachable!() };
        // SAFETY: SpanRecord is plain data; viewing it as bytes is sound.
        let bytes = unsafe { std::slice::from_raw_parts((&raw const r).cast::<u8>(), size_of::<SpanRecord>()) };
        assert_eq!(decode(bytes), Some(Record::Span(r)));
        let c = context_rec(1, 2);
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts((&raw const c).cast::<u8>(), size_of::<ContextRecord>()) };
        assert_eq!(decode(bytes), Some(Record::Context(c)));
        assert_eq!(decode(&bytes[..40]), None, "too short for its kind");
    }
}
