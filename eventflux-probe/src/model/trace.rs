//! A sampled batch as a tree of spans (the batch, its stages), and the clock that places its
//! kernel timestamps in wall-clock time. [`collect::spans`](crate::collect::spans) assembles
//! them from the kernel's span records; the OTLP exporter and `trace` print them.

use eventflux_probe_common::stage;

/// A traced batch's W3C trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id: u128,
    /// The root span's id (the engine's).
    pub span_id: u64,
    /// The upstream span this batch continues; 0 when it starts the trace.
    pub parent_span_id: u64,
    pub flags: u8,
}

impl Context {
    /// The trace id as the W3C header writes it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// One span of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The stage code (`stage::*`), or `stage::BATCH` for the root.
    pub stage: u32,
    /// CLOCK_MONOTONIC.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Time without the spans it called (the root: its latency less its children's).
    pub self_ns: u64,
    pub events_in: u64,
    pub events_out: u64,
    /// The id the engine gave this span (it forwarded the trace from inside it), 0 if none.
    pub span_id: u64,
    /// A component operation's component (`stage` is then `stage::COMPONENT` + its op).
    pub component: Option<u32>,
    pub children: Vec<Span>,
}

impl Span {
    /// `ingest`, `filter`, ... or `query` for the root.
    pub fn name(&self) -> &'static str {
        if self.stage == stage::BATCH {
            "query"
        } else if let Some(op) = self.op() {
            op.span_name()
        } else {
            stage::NAMES.get(self.stage as usize).copied().unwrap_or("?")
        }
    }

    /// The component operation this span is, if it is one.
    pub fn op(&self) -> Option<eventflux_abi::ComponentOp> {
        self.stage.checked_sub(stage::COMPONENT).and_then(eventflux_abi::ComponentOp::from_code)
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// Whether `other` lies within this span's time.
    pub fn contains(&self, other: &Span) -> bool {
        self.start_ns <= other.start_ns && other.end_ns <= self.end_ns
    }

    /// Every span of the tree, depth first, with its depth.
    pub fn walk(&self) -> Vec<(usize, &Span)> {
        let mut out = Vec::new();
        fn go<'a>(s: &'a Span, depth: usize, out: &mut Vec<(usize, &'a Span)>) {
            out.push((depth, s));
            for c in &s.children {
                go(c, depth + 1, out);
            }
        }
        go(self, 0, &mut out);
        out
    }
}

/// One sampled batch as a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub pid: u32,
    pub tid: u32,
    pub query: u32,
    pub stream: u32,
    /// The batch's latency was measured without stage timing inside it (`latency_weight` not 0): a
    /// latency-only sample, or every batch when every batch is sampled.
    pub clean: bool,
    /// The batch's latency as the engine measured it (the root may start earlier, with ingest).
    pub latency_ns: u64,
    /// Its trace context, when the engine traced it (else the observer makes up ids).
    pub context: Option<Context>,
    pub root: Span,
}

/// Traces waiting, in order, for their query's name: the engine replays its registrations to
/// a new observer shortly after attaching, and a fast engine has run batches by then. A trace
/// leaves when its query is known, or after `wait` with the id for a name.
#[derive(Debug)]
pub struct Held {
    queue: std::collections::VecDeque<(std::time::Instant, Trace)>,
    wait: std::time::Duration,
}

impl Held {
    pub fn new(wait: std::time::Duration) -> Held {
        Held { queue: Default::default(), wait }
    }

    pub fn push(&mut self, t: Trace) {
        self.queue.push_back((std::time::Instant::now(), t));
    }

    /// Whether the oldest trace waits for a name (the caller then reads the names again).
    pub fn waiting(&self, known: impl Fn(&Trace) -> bool) -> bool {
        self.queue.front().is_some_and(|(_, t)| !known(t))
    }

    /// The traces that may leave now, in order; all of them when `all`.
    pub fn ready(&mut self, known: impl Fn(&Trace) -> bool, all: bool) -> Vec<Trace> {
        let mut out = Vec::new();
        while let Some((at, t)) = self.queue.front() {
            if !(all || known(t) || at.elapsed() >= self.wait) {
                break;
            }
            out.extend(self.queue.pop_front().map(|(_, t)| t));
        }
        out
    }
}

/// Whether `t`'s query has registered (its name is known).
pub fn named(model: &crate::model::Model, t: &Trace) -> bool {
    if t.query == eventflux_abi::NONE {
        // An operation outside batches (a snapshot): named by its component.
        let component = t.root.component;
        return model
            .engines
            .get(&t.pid)
            .is_some_and(|e| component.is_some_and(|c| e.components.get(&c).is_some_and(|c| c.registered)));
    }
    model.engines.get(&t.pid).is_some_and(|e| e.queries.get(&t.query).is_some_and(|q| q.registered))
}

/// CLOCK_MONOTONIC to wall-clock time: the offset between the two clocks, read together.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Realtime minus monotonic, nanoseconds.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid, writable timespec; both clocks exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    /// Reads the offset now. The monotonic clock does not jump; the wall clock may be stepped
    /// later, so a long-running tracer reads it again now and then.
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono2 = clock_ns(libc::CLOCK_MONOTONIC);
        Clock { offset_ns: real - (mono + mono2) / 2 }
    }

    /// CLOCK_MONOTONIC now.
    pub fn monotonic_now(&self) -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
    }

    /// Nanoseconds since the Unix epoch of a CLOCK_MONOTONIC instant.
    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.offset_ns).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_offset_maps_now_to_now() {
        let c = Clock::now();
        let mono = u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).expect("positive");
        let real = clock_ns(libc::CLOCK_REALTIME);
        assert!((i128::from(c.unix_ns(mono)) - real).abs() < 5_000_000);
    }
}
