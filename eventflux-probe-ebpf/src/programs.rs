//! One program per probe (control probes have none: they never fire, and user space attaches
//! the `empty` program to raise their semaphores). Each reads its arguments by name through the
//! ABI's `Args` and updates the maps; see docs/probes.md for what each probe means and which
//! metric it feeds.
//!
//! What could not be recorded is counted in `DROPS` always, and logged through aya-log at
//! debug level when user space asks for it: it sets `AYA_LOG_LEVEL` (read-only data) before
//! loading, and at the default level the verifier sees the logging branches as dead and prunes
//! them, so they cost the programs nothing.

use aya_ebpf::EbpfContext;
use aya_ebpf::helpers::generated::bpf_get_attach_cookie;
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_str_bytes};
use aya_ebpf::macros::{perf_event, uprobe};
use aya_ebpf::programs::tracing::StackIdContext;
use aya_ebpf::programs::{PerfEventContext, ProbeContext};
use aya_log_ebpf::debug;
use eventflux_probe_common::probe::*;
use eventflux_probe_common::{
    ContextRecord, CounterKey, CpuKey, EVENT_COMPONENT, EVENT_COMPONENT_GONE, EVENT_QUERY, EVENT_QUERY_GONE,
    EVENT_QUERY_INPUT, EVENT_STREAM, Event, NO_STACK, SPAN_BATCH, SPAN_CONTEXT, SPAN_STAGE, SiteSpec, SlotRef,
    SpanRecord, counter, drop, gauge, stage,
};

use crate::args;
use crate::maps::{
    CPU_TARGETS, EVENTS, PROFILE_STACKS, SLOTS, SPECS, STACKS, context_output, count_drop, counter_add, cpu_add,
    gauge_set, hist_add, span_output,
};

/// The current hit: its site's spec and the process it was attached for.
struct Hit<'a> {
    ctx: &'a ProbeContext,
    spec: &'a SiteSpec,
    pid: u32,
}

impl Hit<'_> {
    /// Argument `n`, widened to 64 bits; an unreadable one counts a drop and reads as 0.
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        match args::arg(self.ctx, self.spec, n) {
            Some(v) => v,
            None => {
                count_drop(drop::ARG_READ);
                debug!(self.ctx, "pid {}: probe {} argument {} could not be read", self.pid, self.spec.probe, n);
                0
            }
        }
    }

    #[inline(always)]
    fn add(&self, counter: u32, a: u32, b: u32, delta: u64) {
        if !counter_add(&CounterKey { pid: self.pid, counter, a, b }, delta) {
            debug!(self.ctx, "pid {}: counter map full, counter {} ({}, {}) lost {}", self.pid, counter, a, b, delta);
        }
    }

    #[inline(always)]
    fn set(&self, gauge: u32, a: u32, b: u32, value: u64) {
        if !gauge_set(&CounterKey { pid: self.pid, counter: gauge, a, b }, value) {
            debug!(self.ctx, "pid {}: gauge map full, gauge {} ({}, {}) not set", self.pid, gauge, a, b);
        }
    }

    /// The engine thread that hit the probe (the pid is the site's).
    #[inline(always)]
    fn tid(&self) -> u32 {
        aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
    }

    #[inline(always)]
    fn span(&self, record: &SpanRecord) {
        if !span_output(record) {
            debug!(self.ctx, "pid {}: span ring buffer full, a span of query {} lost", self.pid, record.query);
        }
    }

    #[inline(always)]
    fn hist(&self, query: u32, stage: u32, ns: u64) {
        self.hist_weighted(query, stage, ns, 1);
    }

    #[inline(always)]
    fn hist_weighted(&self, query: u32, stage: u32, ns: u64, weight: u64) {
        if !hist_add(self.pid, query, stage, ns, weight) {
            debug!(self.ctx, "pid {}: histogram map full, query {} stage {} lost a sample", self.pid, query, stage);
        }
    }

    #[inline(always)]
    fn event(&self, kind: u32, id: u32, name: Option<u64>, a: u32, b: u32, c: u32, d: u64) {
        let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
            count_drop(drop::EVENTS_FULL);
            debug!(self.ctx, "pid {}: registration ring buffer full, kind {} id {} lost", self.pid, kind, id);
            return;
        };
        let e = entry.as_mut_ptr();
        // SAFETY: `e` points at a reserved ring-buffer record of the size of `Event`; every
        // field is written before it is submitted.
        unsafe {
            (*e).kind = kind;
            (*e).pid = self.pid;
            (*e).id = id;
            (*e).a = a;
            (*e).b = b;
            (*e).c = c;
            (*e).d = d;
            (*e).name[0] = 0;
            if let Some(ptr) = name
                && bpf_probe_read_user_str_bytes(ptr as *const u8, &mut (*e).name).is_err()
            {
                (*e).name[0] = 0;
                count_drop(drop::ARG_READ);
                debug!(
                    self.ctx,
                    "pid {}: the name of registration kind {} id {} could not be read", self.pid, kind, id
                );
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
        debug!(ctx, "no site spec for cookie {}", cookie);
        return None;
    };
    Some(Hit { ctx, spec, pid: spec.pid })
}

/// `program!(probe, |h, a| body)`: the uprobe program of `probe`, with `a` its arguments read
/// by name (`probe::Args`).
macro_rules! program {
    ($name:ident, |$h:ident, $a:ident| $body:block) => {
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            if let Some($h) = hit(&ctx) {
                let $a = $name::Args::read(|n| $h.arg(n));
                $body
            }
            0
        }
    };
}

program!(stream_register, |h, a| {
    h.event(EVENT_STREAM, a.stream_id, Some(a.name), a.role, a.junction, 0, a.capacity);
});

program!(query_register, |h, a| {
    h.event(EVENT_QUERY, a.query_id, Some(a.name), a.input_stream_id, a.output_stream_id, a.window_kind, a.window_size);
});

program!(query_unregister, |h, a| {
    h.event(EVENT_QUERY_GONE, a.query_id, None, 0, 0, 0, 0);
});

program!(query_input, |h, a| {
    h.event(EVENT_QUERY_INPUT, a.query_id, None, a.stream_id, 0, 0, 0);
});

program!(component_register, |h, a| {
    h.event(EVENT_COMPONENT, a.component_id, Some(a.name), a.kind, a.variant, a.stream_id, u64::from(a.query_id));
});

program!(component_unregister, |h, a| {
    h.event(EVENT_COMPONENT_GONE, a.component_id, None, 0, 0, 0, 0);
});

// The slot's owner fires this itself, so the current thread is the one whose slot it is.
program!(cpu_slot, |h, a| {
    let tid = h.tid();
    if a.address == 0 {
        let _ = SLOTS.remove(&tid);
    } else if SLOTS.insert(&tid, &SlotRef { pid: h.pid, _pad: 0, address: a.address }, 0).is_err() {
        count_drop(drop::SLOTS_FULL);
        debug!(h.ctx, "pid {}: slot map full, thread {} not attributed", h.pid, tid);
    }
});

program!(ingest, |h, a| {
    h.add(counter::STREAM_RECEIVED, a.stream_id, 0, a.events);
});

program!(junction_send, |h, a| {
    h.add(counter::STREAM_SENT, a.stream_id, 0, a.events);
});

program!(query_events, |h, a| {
    h.add(counter::QUERY_PROCESSED, a.query_id, a.stream_id, a.events);
    h.add(counter::QUERY_BATCHES, a.query_id, 0, a.batches);
});

program!(emitted, |h, a| {
    h.add(counter::QUERY_EMITTED, a.query_id, a.stream_id, a.events);
    h.add(counter::STREAM_EMITTED_INTO, a.stream_id, 0, a.events);
});

program!(error, |h, a| {
    h.add(counter::QUERY_ERRORS, a.query_id, a.kind, a.count);
});

program!(backpressure, |h, a| {
    h.add(counter::BACKPRESSURE, a.stream_id, a.query_id, a.count);
});

program!(conn_open, |h, a| {
    h.add(counter::CONN_OPENED, a.protocol, 0, a.count);
});

program!(conn_close, |h, a| {
    h.add(counter::CONN_CLOSED, a.protocol, 0, a.count);
});

program!(conn_error, |h, a| {
    h.add(counter::CONN_ERRORS, a.protocol, a.kind, a.count);
});

program!(spans_dropped, |h, a| {
    h.add(counter::ENGINE_SPANS_DROPPED, 0, 0, a.count);
});

program!(traces_declined, |h, a| {
    h.add(counter::ENGINE_TRACES_DECLINED, 0, 0, a.count);
});

// Codes are not checked here: user space ignores (and counts) a code it does not know, so an
// engine newer than the observer costs nothing but unknown series.
program!(component_count, |h, a| {
    h.add(counter::COMPONENT.wrapping_add(a.counter), a.component_id, a.label, a.amount);
});

program!(component_gauge, |h, a| {
    h.set(gauge::COMPONENT.wrapping_add(a.gauge), a.component_id, a.label, a.value);
});

program!(conn_active, |h, a| {
    h.set(gauge::CONN_ACTIVE, a.protocol, 0, a.connections);
});

program!(window_state, |h, a| {
    h.set(gauge::WINDOW_STATE_BYTES, a.query_id, 0, a.bytes);
});

program!(aggregate_groups, |h, a| {
    h.set(gauge::GROUPS, a.query_id, 0, a.groups);
});

program!(queue_state, |h, a| {
    h.set(gauge::QUEUE_DEPTH, a.stream_id, a.query_id, a.depth);
    h.set(gauge::QUEUE_CAPACITY, a.stream_id, a.query_id, a.capacity);
    h.set(gauge::QUEUE_BYTES, a.stream_id, a.query_id, a.bytes);
    h.set(gauge::QUEUE_WAIT_NS, a.stream_id, a.query_id, a.wait_ns);
});

// `stage_sample` feeds only span trees (metrics take the stages' self times from
// `batch_sample`, one hit per sampled batch): user space attaches it when it traces.
program!(stage_sample, |h, a| {
    h.span(&SpanRecord {
        kind: SPAN_STAGE,
        pid: h.pid,
        tid: h.tid(),
        query: a.query_id,
        stage_or_stream: a.stage,
        clean: 0,
        events_in: a.events_in,
        events_out: a.events_out,
        start_ns: a.start_ns,
        total_ns: a.total_ns,
        self_ns: a.self_ns,
        span_id: a.span_id,
    });
});

// Only for span trees, like `stage_sample`: the trace a traced batch belongs to.
program!(trace_context, |h, a| {
    let record = ContextRecord {
        kind: SPAN_CONTEXT,
        pid: h.pid,
        tid: h.tid(),
        query: a.query_id,
        flags: a.flags,
        _pad: 0,
        trace_id_high: a.trace_id_high,
        trace_id_low: a.trace_id_low,
        span_id: a.span_id,
        parent_span_id: a.parent_span_id,
    };
    if !context_output(&record) {
        debug!(h.ctx, "pid {}: span ring buffer full, the trace context of query {} lost", h.pid, a.query_id);
    }
});

program!(batch_sample, |h, a| {
    h.span(&SpanRecord {
        kind: SPAN_BATCH,
        pid: h.pid,
        tid: h.tid(),
        query: a.query_id,
        stage_or_stream: a.stream_id,
        clean: u32::from(a.latency_weight != 0),
        events_in: a.events_in,
        events_out: a.events_out,
        start_ns: a.start_ns,
        total_ns: a.latency_ns,
        self_ns: 0,
        span_id: 0,
    });
    // Latency only from batches whose stages were not timed inside them (or when every batch is
    // sampled), each counted as the batches it stands for; stage self times from the others,
    // counted as samples.
    if a.latency_weight != 0 {
        h.hist_weighted(a.query_id, stage::BATCH, a.latency_ns, a.latency_weight);
    }
    // A stage that did not run in this batch reports 0.
    for (st, ns) in [
        (stage::INGEST, a.ingest_ns),
        (stage::FILTER, a.filter_ns),
        (stage::WINDOW, a.window_ns),
        (stage::AGGREGATE, a.aggregate_ns),
        (stage::EMIT, a.emit_ns),
    ] {
        if ns > 0 {
            h.hist(a.query_id, st, ns);
        }
    }
});

// A component operation the engine timed: its histogram, keyed like a query stage's with the
// component in the query's place.
program!(component_sample, |h, a| {
    h.hist(a.component_id, stage::COMPONENT.wrapping_add(a.op), a.duration_ns);
});

// Only for span trees, like `stage_sample`: a component operation inside a sampled batch, as a
// stage record whose stage is `COMPONENT + op` and whose `clean` field carries the component.
program!(component_span, |h, a| {
    h.span(&SpanRecord {
        kind: SPAN_STAGE,
        pid: h.pid,
        tid: h.tid(),
        query: a.query_id,
        stage_or_stream: stage::COMPONENT.wrapping_add(a.op),
        clean: a.component_id,
        events_in: a.items,
        events_out: a.items,
        start_ns: a.start_ns,
        total_ns: a.duration_ns,
        self_ns: a.duration_ns,
        span_id: 0,
    });
});

/// `bpf_get_stackid` flag: the user-space stack (frame pointers) instead of the kernel's.
const BPF_F_USER_STACK: u64 = 1 << 8;
/// `bpf_get_stackid` error when the stack's bucket holds another stack (or the map is full).
const EEXIST: i32 = 17;

/// A stack id, [`NO_STACK`] when there is none (a user-mode sample has no kernel stack); a
/// stack that could not be stored is a counted drop.
#[inline(always)]
fn stack_id(ctx: &PerfEventContext, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(e) => {
            if e == -EEXIST {
                count_drop(drop::STACK_LOST);
            }
            NO_STACK
        }
    }
}

/// One CPU sample (a perf event on every CPU, `eventflux-probe` sets its rate): counted under
/// what the interrupted thread of an observed process was executing, read from the thread's
/// CPU slot; every other task is left alone after one map lookup.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: a lookup; the value is not kept.
    if unsafe { CPU_TARGETS.get(&pid) }.is_none() {
        return 0;
    }
    let mut slot = 0u64;
    // SAFETY: a lookup; the value is copied before anything else touches the map.
    if let Some(r) = unsafe { SLOTS.get(&tid) }.copied()
        && r.pid == pid
    {
        // SAFETY: reads 8 bytes of the interrupted task's memory (it is `current`); a fault
        // (page not resident) is an error, not a crash.
        match unsafe { bpf_probe_read_user(r.address as *const u64) } {
            Ok(v) => slot = v,
            Err(_) => {
                count_drop(drop::SLOT_READ);
                debug!(&ctx, "pid {}: thread {}'s CPU slot could not be read", pid, tid);
            }
        }
    }
    let (user_stack, kernel_stack) = if PROFILE_STACKS.load() != 0 {
        (stack_id(&ctx, BPF_F_USER_STACK), stack_id(&ctx, 0))
    } else {
        (NO_STACK, NO_STACK)
    };
    let key = CpuKey { pid, query: (slot >> 32) as u32, state: slot as u32, user_stack, kernel_stack, _pad: 0 };
    if !cpu_add(&key) {
        debug!(&ctx, "pid {}: CPU sample map full, a sample lost", pid);
    }
    0
}

/// Does nothing. Attached to control probes to raise their semaphores (they never fire), and
/// the baseline the per-hit benchmark compares the real programs with (the cost of the uprobe
/// itself).
#[uprobe]
pub fn empty(_ctx: ProbeContext) -> u32 {
    0
}
