//! The maps, bounded; a full map costs a drop count, never a silent loss.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace};
use eventflux_probe_common::{
    ContextRecord, CounterKey, CpuKey, Hist, HistKey, MAX_SITES, SiteSpec, SlotRef, SpanRecord, drop, hist,
};

/// Site specs, indexed by the BPF cookie user space gave each attachment.
#[map]
pub static SPECS: Array<SiteSpec> = Array::with_max_entries(MAX_SITES, 0);

/// Counters, per CPU so that concurrent threads never contend.
#[map]
pub static COUNTERS: PerCpuHashMap<CounterKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Last-value gauges (queue depth, window state): one value, last writer wins.
#[map]
pub static GAUGES: HashMap<CounterKey, u64> = HashMap::with_max_entries(16384, 0);

/// Latency histograms per (process, query, stage). One value shared by all CPUs, updated with
/// atomic adds: sample probes fire a bounded number of times per second, so contention is no
/// concern, and a per-CPU value (1.2 KiB) per entry per CPU would cost gigabytes at this
/// capacity on a large node. Entries are allocated as they are first used (no preallocation),
/// so the capacity costs nothing until queries exist: 65,536 covers 10,000 queries of 6 stages.
#[map]
pub static HISTS: HashMap<HistKey, Hist> = HashMap::with_max_entries(HIST_CAPACITY, BPF_F_NO_PREALLOC);

/// Entries of `HISTS`.
pub const HIST_CAPACITY: u32 = 65536;
const BPF_F_NO_PREALLOC: u32 = 1;

/// Zeroed template: a histogram is larger than the 512-byte BPF stack, so new entries are
/// inserted from here. Never written.
#[map]
pub static ZERO_HIST: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// What could not be recorded, by `drop::*` index.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop::COUNT, 0);

/// Registrations (names) for user space: records of 96 bytes (104 with the ring's header).
/// An observer that attaches to a running engine gets every live registration replayed at
/// once, between two drains of user space (100 ms): 2 MiB holds about 20,000 of them, an
/// engine with 5,000 queries on 50 streams four times over. Overflow is a counted drop
/// (`events_full`), and `/health` says names were lost rather than that there are no queries.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Span records of sampled batches for user space, while tracing (see [`TRACE_SPANS`]): 13k
/// records of 72 bytes (80 with the ring's header): between two drains of user space (100 ms)
/// at 1024 sampled batches per second, half of them traced with ~6 records each, room for
/// about 40 busy engine threads.
#[map]
pub static SPANS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Nonzero when user space traces spans, set before loading (read-only data): at 0 the
/// verifier sees the span-writing branches dead and removes them, so `batch_sample` costs
/// nothing more for metrics, and nothing fills a ring buffer nobody reads.
#[unsafe(no_mangle)]
pub static TRACE_SPANS: aya_ebpf::Global<u8> = aya_ebpf::Global::new(0);

/// Engine threads' CPU slots by thread id (global, as `bpf_get_current_pid_tgid` gives it),
/// from `cpu_slot`. 65,536 threads over every observed process.
#[map]
pub static SLOTS: HashMap<u32, SlotRef> = HashMap::with_max_entries(65536, 0);

/// Processes whose CPU samples are counted (pid → `cpu_target` flags), set by user space at
/// attach: the sampling program runs on every CPU for every task and keeps only these.
#[map]
pub static CPU_TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// CPU samples by (process, query, state, stacks). One value for all CPUs, updated with atomic
/// adds: a sample arrives every 10 ms per CPU at the default rate (0.1 ms at the highest), so
/// contention is slight, and without
/// per-CPU values the capacity costs the same on a large node. Without stacks a process has an
/// entry per query and stage; with them, one per distinct stack pair as well.
#[map]
pub static CPU_SAMPLES: HashMap<CpuKey, u64> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Stacks of CPU samples (instruction pointers, innermost first), when profiling
/// ([`PROFILE_STACKS`]). User space sizes it at load: one entry unless profiling.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Nonzero when user space profiles (read-only data): the sampling program then records the
/// user and kernel stacks of each sample; at 0 the verifier removes that branch.
#[unsafe(no_mangle)]
pub static PROFILE_STACKS: aya_ebpf::Global<u8> = aya_ebpf::Global::new(0);

/// Adds one sample; false when the map is full (a drop, counted).
#[inline(always)]
pub fn cpu_add(key: &CpuKey) -> bool {
    for _ in 0..2 {
        if let Some(p) = CPU_SAMPLES.get_ptr_mut(key) {
            // SAFETY: a live map value shared by all CPUs: the add is atomic.
            unsafe { atomic_add(p, 1) };
            return true;
        }
        // Inserted with 0 and then added to, so that two CPUs creating it at once both count.
        if CPU_SAMPLES.insert(key, &0, 1 /* BPF_NOEXIST */).is_err() && CPU_SAMPLES.get_ptr_mut(key).is_none() {
            break;
        }
    }
    count_drop(drop::CPU_FULL);
    false
}

/// Writes one span record; a full ring buffer is a counted drop (the engine never waits).
#[inline(always)]
pub fn span_output(record: &SpanRecord) -> bool {
    spans_output(record)
}

/// Writes a traced batch's context record, like [`span_output`].
#[inline(always)]
pub fn context_output(record: &ContextRecord) -> bool {
    spans_output(record)
}

#[inline(always)]
fn spans_output<T: 'static>(record: &T) -> bool {
    if TRACE_SPANS.load() == 0 {
        return true;
    }
    match SPANS.output::<T>(record, 0) {
        Ok(()) => true,
        Err(_) => {
            count_drop(drop::SPANS_FULL);
            false
        }
    }
}

#[inline(always)]
pub fn count_drop(which: u32) {
    if let Some(p) = DROPS.get_ptr_mut(which) {
        // SAFETY: this CPU's slot. Atomic all the same: a uprobe program runs with migration,
        // not preemption, disabled, so another task on this CPU may be in the same slot.
        unsafe { atomic_add(p, 1) };
    }
}

/// Adds to a per-CPU counter, creating it on first use; false when the map is full (a drop,
/// counted).
#[inline(always)]
pub fn counter_add(key: &CounterKey, delta: u64) -> bool {
    if let Some(p) = COUNTERS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of an existing entry (atomic, as in `count_drop`).
        unsafe { atomic_add(p, delta) };
        return true;
    }
    if COUNTERS.insert(key, &delta, 1 /* BPF_NOEXIST */).is_ok() {
        return true;
    }
    // Another CPU may have created it meanwhile; otherwise the map is full.
    match COUNTERS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(p) => unsafe { atomic_add(p, delta) },
        None => {
            count_drop(drop::COUNTERS_FULL);
            return false;
        }
    }
    true
}

/// False when the map is full (a drop, counted).
#[inline(always)]
pub fn gauge_set(key: &CounterKey, value: u64) -> bool {
    if GAUGES.insert(key, &value, 0 /* BPF_ANY */).is_err() {
        count_drop(drop::COUNTERS_FULL);
        return false;
    }
    true
}

/// Adds one duration, standing for `weight` of them, to the (process, query, stage)
/// histogram; false when the map is full (a drop, counted).
#[inline(always)]
pub fn hist_add(pid: u32, query: u32, stage: u32, ns: u64, weight: u64) -> bool {
    let key = HistKey { pid, query, stage, _pad: 0 };
    let h = match HISTS.get_ptr_mut(&key) {
        Some(h) => h,
        None => {
            let Some(zero) = ZERO_HIST.get_ptr(0) else { return false };
            // SAFETY: the template is a valid, never-written map value.
            let _ = HISTS.insert(&key, unsafe { &*zero }, 1 /* BPF_NOEXIST */);
            match HISTS.get_ptr_mut(&key) {
                Some(h) => h,
                None => {
                    count_drop(drop::HISTS_FULL);
                    return false;
                }
            }
        }
    };
    // SAFETY: a live map value; every CPU may update it, so each field is updated atomically
    // (an add whose result is unused is one BPF atomic instruction), except the maximum, whose
    // compare-and-store may lose a race to another CPU's larger or smaller value.
    unsafe {
        let add = |p: *mut u64, v: u64| atomic_add(p, v);
        if let Some(b) = (*h).buckets.get_mut(hist::bucket(ns)) {
            add(b, weight);
        }
        add(&raw mut (*h).count, weight);
        add(&raw mut (*h).sum_ns, ns.wrapping_mul(weight));
        if ns > (*h).max_ns {
            (*h).max_ns = ns;
        }
    }
    true
}

/// `*p += v` as one BPF atomic add: the BPF target has no `AtomicU64::fetch_add`, but the
/// instruction set has had this since the beginning (`BPF_XADD`).
///
/// # Safety
/// `p` must point at a live, 8-byte aligned u64 in a map value.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller's pointer; the instruction reads and writes only those 8 bytes.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack, preserves_flags),
        )
    }
}
