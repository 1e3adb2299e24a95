//! Stage timing: a small stack of open stages per thread. Stages nest on a thread in the
//! engine's synchronous mode (the window's span contains the aggregation and emit it calls), so
//! each end reports its self time (children subtracted) and adds its total to its parent.
//! Keyed by thread, not CPU: a thread may migrate between a start and its end.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use eventflux_probe_common::{Frame, HistKey, MAX_DEPTH, SpanStack, drop, hist};

use crate::maps::{HISTS, SPANS, ZERO_HIST, ZERO_STACK, count_drop};

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no arguments, no memory.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn stack(tid: u64, create: bool) -> Option<*mut SpanStack> {
    if let Some(p) = SPANS.get_ptr_mut(&tid) {
        return Some(p);
    }
    if !create {
        return None;
    }
    let zero = ZERO_STACK.get_ptr(0)?;
    // SAFETY: the template is a valid, never-written map value.
    if SPANS.insert(&tid, unsafe { &*zero }, 1 /* BPF_NOEXIST */).is_err() {
        count_drop(drop::SPANS_FULL);
        return None;
    }
    SPANS.get_ptr_mut(&tid)
}

/// Opens a stage on this thread.
#[inline(always)]
pub fn push(tid: u64, query: u32, stage: u32, start_ns: u64) {
    let Some(s) = stack(tid, true) else { return };
    // SAFETY: an entry of this thread's own key; no other thread writes it.
    let s = unsafe { &mut *s };
    let d = s.depth as usize;
    s.depth += 1;
    if d >= MAX_DEPTH {
        // Deeper than we record: keep counting so the matching ends pop in step.
        count_drop(drop::STACK_OVERFLOW);
        return;
    }
    if let Some(f) = s.frames.get_mut(d) {
        *f = Frame { start_ns, child_ns: 0, query, stage };
    }
}

/// The innermost open stage of this thread, if it is `(query, stage)`.
#[inline(always)]
pub fn top_is(tid: u64, query: u32, stage: u32) -> bool {
    let Some(s) = stack(tid, false) else { return false };
    // SAFETY: as in `push`.
    let s = unsafe { &*s };
    let d = s.depth as usize;
    if d == 0 || d > MAX_DEPTH {
        return false;
    }
    s.frames.get(d - 1).is_some_and(|f| f.query == query && f.stage == stage)
}

/// Closes the innermost stage if it is `(query, stage)`: returns (total, self) nanoseconds.
#[inline(always)]
pub fn pop(tid: u64, query: u32, stage: u32, end_ns: u64) -> Option<(u64, u64)> {
    let Some(sp) = stack(tid, false) else {
        count_drop(drop::UNMATCHED_END);
        return None;
    };
    // SAFETY: as in `push`.
    let s = unsafe { &mut *sp };
    let d = s.depth as usize;
    if d == 0 {
        count_drop(drop::UNMATCHED_END);
        return None;
    }
    if d > MAX_DEPTH {
        s.depth -= 1;
        return None;
    }
    let f = *s.frames.get(d - 1)?;
    if f.query != query || f.stage != stage {
        // Out of step (attached in the middle of a span, or a start without its end): start
        // this thread afresh rather than misattribute every later span.
        count_drop(drop::UNMATCHED_END);
        let _ = SPANS.remove(&tid);
        return None;
    }
    let total = end_ns.saturating_sub(f.start_ns);
    let own = total.saturating_sub(f.child_ns);
    s.depth -= 1;
    // Re-read the depth rather than reuse `d`: the compiler would otherwise address the parent
    // as "this frame minus one", a negative offset the verifier cannot bound.
    // SAFETY: a valid field of the map value.
    let parent = unsafe { core::ptr::read_volatile(&s.depth) } as usize;
    if parent == 0 {
        let _ = SPANS.remove(&tid);
    } else if let Some(p) = s.frames.get_mut(parent - 1) {
        p.child_ns += total;
    }
    Some((total, own))
}

/// Adds one duration to the (process, query, stage) histogram.
#[inline(always)]
pub fn record(pid: u32, query: u32, stage: u32, ns: u64) {
    let key = HistKey { pid, query, stage, _pad: 0 };
    let h = match HISTS.get_ptr_mut(&key) {
        Some(h) => h,
        None => {
            let Some(zero) = ZERO_HIST.get_ptr(0) else { return };
            // SAFETY: the template is a valid, never-written map value.
            let _ = HISTS.insert(&key, unsafe { &*zero }, 1 /* BPF_NOEXIST */);
            match HISTS.get_ptr_mut(&key) {
                Some(h) => h,
                None => {
                    count_drop(drop::HISTS_FULL);
                    return;
                }
            }
        }
    };
    // SAFETY: this CPU's value of the entry.
    let h = unsafe { &mut *h };
    if let Some(b) = h.buckets.get_mut(hist::bucket(ns)) {
        *b += 1;
    }
    h.count += 1;
    h.sum_ns += ns;
    if ns > h.max_ns {
        h.max_ns = ns;
    }
}

/// Drops the innermost open stage if it is `stage`, without recording it.
#[inline(always)]
pub fn discard_top(tid: u64, stage: u32) {
    let Some(sp) = stack(tid, false) else { return };
    // SAFETY: as in `push`.
    let s = unsafe { &mut *sp };
    let d = s.depth as usize;
    if d == 0 || d > MAX_DEPTH {
        return;
    }
    if s.frames.get(d - 1).is_some_and(|f| f.stage == stage) {
        s.depth -= 1;
        if d == 1 {
            let _ = SPANS.remove(&tid);
        }
    }
}
