//! One program per probe. Each reads the arguments it needs through the site's spec and
//! updates the maps; see docs/probes.md for what each probe means and which metric it feeds.

use aya_ebpf::EbpfContext;
use aya_ebpf::helpers::generated::bpf_get_attach_cookie;
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_str_bytes};
use aya_ebpf::macros::uprobe;
use aya_ebpf::programs::ProbeContext;
use eventflux_probe_common::{
    CounterKey, EVENT_QUERY, EVENT_QUERY_GONE, EVENT_STREAM, Event, SiteSpec, counter, drop, gauge, stage,
};

use crate::args;
use crate::maps::{EVENTS, SPECS, count_drop, counter_add, gauge_set};
use crate::spans;

/// The current hit: its site's spec and the process it was attached for.
struct Hit<'a> {
    ctx: &'a ProbeContext,
    spec: &'a SiteSpec,
    pid: u32,
}

impl Hit<'_> {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        match args::arg(self.ctx, self.spec, n) {
            Some(v) => v,
            None => {
                count_drop(drop::ARG_READ);
                0
            }
        }
    }

    #[inline(always)]
    fn id(&self, n: usize) -> u32 {
        self.arg(n) as u32
    }

    #[inline(always)]
    fn key(&self, counter: u32, a: u32, b: u32) -> CounterKey {
        CounterKey { pid: self.pid, counter, a, b }
    }

    /// The firing thread, for the per-thread stage stack; only span probes need it.
    #[inline(always)]
    fn tid(&self) -> u64 {
        bpf_get_current_pid_tgid()
    }

    #[inline(always)]
    fn start(&self, stage: u32) {
        spans::push(self.tid(), self.id(0), stage, spans::now());
    }

    /// Closes `stage` and records its self time; returns the query (argument 0), already read.
    #[inline(always)]
    fn end(&self, stage: u32) -> u32 {
        let query = self.id(0);
        if let Some((_, own)) = spans::pop(self.tid(), query, stage, spans::now()) {
            spans::record(self.pid, query, stage, own);
        }
        query
    }

    #[inline(always)]
    fn event(&self, kind: u32, name_arg: Option<usize>, a: u32, b: u32, c: u32, d: u64) {
        let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
            count_drop(drop::EVENTS_FULL);
            return;
        };
        let e = entry.as_mut_ptr();
        // SAFETY: `e` points at a reserved ring-buffer record of the size of `Event`; every
        // field is written before it is submitted.
        unsafe {
            (*e).kind = kind;
            (*e).pid = self.pid;
            (*e).id = self.id(0);
            (*e).a = a;
            (*e).b = b;
            (*e).c = c;
            (*e).d = d;
            (*e).name[0] = 0;
            if let Some(n) = name_arg {
                let ptr = self.arg(n) as *const u8;
                if bpf_probe_read_user_str_bytes(ptr, &mut (*e).name).is_err() {
                    (*e).name[0] = 0;
                    count_drop(drop::ARG_READ);
                }
            }
        }
        entry.submit(0);
    }
}

#[inline(always)]
fn hit(ctx: &ProbeContext) -> Option<Hit<'_>> {
    // SAFETY: helpers without memory arguments beyond the context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(spec) = SPECS.get(cookie) else {
        count_drop(drop::NO_SPEC);
        return None;
    };
    Some(Hit { ctx, spec, pid: spec.pid })
}

macro_rules! program {
    ($name:ident, |$h:ident| $body:block) => {
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            if let Some($h) = hit(&ctx) {
                $body
            }
            0
        }
    };
}

program!(stream_register, |h| {
    h.event(EVENT_STREAM, Some(1), h.id(2), h.id(3), 0, h.arg(4));
});

program!(query_register, |h| {
    h.event(EVENT_QUERY, Some(1), h.id(2), h.id(3), h.id(4), h.arg(5));
});

program!(query_unregister, |h| {
    h.event(EVENT_QUERY_GONE, None, 0, 0, 0, 0);
});

program!(ingest, |h| {
    counter_add(&h.key(counter::STREAM_RECEIVED, h.id(0), 0), h.arg(1));
});

program!(junction_send, |h| {
    counter_add(&h.key(counter::STREAM_SENT, h.id(0), 0), h.arg(2));
    // The hand-off to query arg1 starts now. In sync mode the query's batch starts on this
    // thread and closes it; in async mode it never does, so a previous open hand-off is
    // discarded first rather than left to pile up.
    let tid = h.tid();
    spans::discard_top(tid, stage::INGEST);
    spans::push(tid, h.id(1), stage::INGEST, spans::now());
});

program!(query_batch_start, |h| {
    let query = h.id(0);
    counter_add(&h.key(counter::QUERY_PROCESSED, query, h.id(1)), h.arg(2));
    let (tid, now) = (h.tid(), spans::now());
    if spans::top_is(tid, query, stage::INGEST) {
        if let Some((total, _)) = spans::pop(tid, query, stage::INGEST, now) {
            spans::record(h.pid, query, stage::INGEST, total);
        }
    }
    spans::push(tid, query, stage::BATCH, now);
});

program!(query_batch_end, |h| {
    let query = h.id(0);
    // The batch reports its total: the latency of the query, children included.
    if let Some((total, _)) = spans::pop(h.tid(), query, stage::BATCH, spans::now()) {
        spans::record(h.pid, query, stage::BATCH, total);
    }
});

program!(filter_start, |h| {
    h.start(stage::FILTER);
});

program!(filter_end, |h| {
    let _ = h.end(stage::FILTER);
});

program!(window_start, |h| {
    h.start(stage::WINDOW);
});

program!(window_end, |h| {
    let query = h.end(stage::WINDOW);
    gauge_set(&h.key(gauge::WINDOW_STATE_BYTES, query, 0), h.arg(3));
});

program!(aggregate_start, |h| {
    h.start(stage::AGGREGATE);
});

program!(aggregate_end, |h| {
    let query = h.end(stage::AGGREGATE);
    gauge_set(&h.key(gauge::GROUPS, query, 0), h.arg(2));
});

program!(emit_start, |h| {
    h.start(stage::EMIT);
});

program!(emit_end, |h| {
    let query = h.end(stage::EMIT);
    let (stream, events) = (h.id(1), h.arg(2));
    counter_add(&h.key(counter::QUERY_EMITTED, query, stream), events);
    counter_add(&h.key(counter::STREAM_EMITTED_INTO, stream, 0), events);
});

program!(queue_push, |h| {
    let (stream, query) = (h.id(0), h.id(1));
    gauge_set(&h.key(gauge::QUEUE_DEPTH, stream, query), h.arg(2));
    gauge_set(&h.key(gauge::QUEUE_CAPACITY, stream, query), h.arg(3));
    gauge_set(&h.key(gauge::QUEUE_BYTES, stream, query), h.arg(4));
});

program!(queue_pop, |h| {
    let (stream, query, wait_ns) = (h.id(0), h.id(1), h.arg(3));
    gauge_set(&h.key(gauge::QUEUE_DEPTH, stream, query), h.arg(2));
    gauge_set(&h.key(gauge::QUEUE_WAIT_NS, stream, query), wait_ns);
    // In async mode the hand-off to the query is the time the chunk waited in its queue.
    spans::record(h.pid, query, stage::INGEST, wait_ns);
});

program!(backpressure, |h| {
    counter_add(&h.key(counter::BACKPRESSURE, h.id(0), h.id(1)), 1);
});

program!(error, |h| {
    counter_add(&h.key(counter::QUERY_ERRORS, h.id(0), h.id(1)), h.arg(2));
});

program!(conn_open, |h| {
    counter_add(&h.key(counter::CONN_OPENED, h.id(0), 0), 1);
});

program!(conn_close, |h| {
    counter_add(&h.key(counter::CONN_CLOSED, h.id(0), 0), 1);
});

program!(conn_error, |h| {
    counter_add(&h.key(counter::CONN_ERRORS, h.id(0), h.id(1)), 1);
});

/// Does nothing: the baseline the per-hit benchmark compares the real programs with (the cost
/// of the uprobe itself).
#[uprobe]
pub fn empty(_ctx: ProbeContext) -> u32 {
    0
}
