//! CPU attribution: which query and stage each engine thread is executing, for a sampling
//! profiler to read from the thread it interrupted.
//!
//! A profiler sees threads and functions; every query of the engine runs through the same
//! functions on the same threads, so from a stack alone a CPU sample cannot say whose work it
//! was. The markers know: [`Batch`](crate::span::Batch) and [`Span`](crate::span::Span) are
//! entered with their query and stage. While a tool is attached to `cpu_slot`, every batch and
//! stage boundary writes the thread's current state into a thread-local 8-byte slot
//! (`eventflux_abi::slot`: query id and stage, 0 outside any query) and restores the previous
//! state when it ends, so a query run synchronously inside another's emit stage is its own.
//! The thread hands the slot's address to the tool once through `cpu_slot`; the tool's
//! perf-event program reads the interrupted thread's slot (`bpf_probe_read_user`) and counts
//! the sample under that query and stage. Nothing traps per batch, and every batch is
//! attributed, not only the sampled ones.
//!
//! Costs: detached, a semaphore test per batch and per stage. Attached, a thread-local load and
//! store at each boundary (and at a batch's, a check of the flusher's generation); a thread's
//! announcement is one trap per generation.
//!
//! When a thread announces: the flusher thread (`flusher.rs`) watches the `cpu_slot` semaphore,
//! and once a change of the attached tools has settled ([`SETTLE`](crate::semaphore::SETTLE): a
//! tool's semaphore rises before its program is linked) it starts a new generation; each thread
//! announces at its first batch of a generation it has not announced in. Each tool keeps its
//! own table of slots, so a tool that attaches after another left (the count back where it
//! was) needs the new generation too: the flusher sees the count move either way. When a thread
//! exits, a thread-local destructor announces address 0, so the tool forgets it before its
//! memory is reused. A tool that replaced another between two looks of the flusher (50 ms; the
//! count back where it was) is caught by the generation the flusher starts every 10 s anyway.
//! A thread that never runs a batch never announces: outside queries the tool attributes its
//! samples to "none", which is what it would read.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use eventflux_abi::Stage;

use crate::flusher::GENERATION;
use crate::points::cpu_slot;

/// A boundary that did not write the slot (detached): nothing to restore.
pub(crate) const UNSET: u64 = u64::MAX;

thread_local! {
    /// What this thread executes now (`eventflux_abi::slot`). Const-initialised and without a
    /// destructor: its address is fixed for the thread's life, and reading it is one load.
    static SLOT: Cell<u64> = const { Cell::new(0) };
    /// The generation this thread announced its slot in; never one at first.
    static ANNOUNCED: Cell<u32> = const { Cell::new(u32::MAX) };
    /// Announces address 0 when the thread exits (armed at the first announcement).
    static RETRACT: Retract = const { Retract(Cell::new(false)) };
}

struct Retract(Cell<bool>);

impl Drop for Retract {
    fn drop(&mut self) {
        if self.0.get() && cpu_slot::is_enabled() {
            cpu_slot::site(0);
        }
    }
}

/// Enters a batch of `query`. Returns the state to restore at the end, or [`UNSET`] when no
/// tool takes the slots. A thread that has not announced its slot in this generation does so
/// here.
#[inline(always)]
pub(crate) fn enter_batch(query: u32) -> u64 {
    if !cfg!(feature = "enabled") || !cpu_slot::SEMAPHORE.is_active() {
        return UNSET;
    }
    let generation = GENERATION.load(Ordering::Relaxed);
    if ANNOUNCED.with(Cell::get) != generation {
        announce(generation);
    }
    SLOT.with(|s| s.replace(eventflux_abi::slot::encode(query, None)))
}

/// Enters `stage` of `query`, like [`enter_batch`]. Stages run inside batches, whose entry
/// announced the slot already: a stage only writes it (a load and a store), the boundary the
/// engine crosses most often.
#[inline(always)]
pub(crate) fn enter_stage(query: u32, stage: Stage) -> u64 {
    if !cfg!(feature = "enabled") || !cpu_slot::SEMAPHORE.is_active() {
        return UNSET;
    }
    SLOT.with(|s| s.replace(eventflux_abi::slot::encode(query, Some(stage))))
}

/// A worker thread idle in a pool (spinning or polling for work), for CPU attribution: while it
/// lives, samples of this thread count as the pool's idle time (`query_cpu_seconds_total`
/// with `stage="idle"`), not as "outside any query". Detached, a semaphore test.
///
/// ```
/// // An executor's consumer that spins before it parks:
/// # let queue: std::collections::VecDeque<u32> = Default::default();
/// let idle = usdt_markers::cpu::Idle::enter(5000);
/// while queue.is_empty() { /* … */ break; }
/// drop(idle);
/// ```
#[must_use = "the thread is idle while this lives"]
#[derive(Debug)]
pub struct Idle {
    previous: u64,
    _thread: std::marker::PhantomData<*const ()>,
}

impl Idle {
    /// The thread is idle in pool `pool_id` (the junction's or pool's component id, or
    /// `abi::NONE`) until the guard drops.
    #[inline(always)]
    pub fn enter(pool_id: u32) -> Idle {
        let previous = if !cfg!(feature = "enabled") || !cpu_slot::SEMAPHORE.is_active() {
            UNSET
        } else {
            let generation = GENERATION.load(Ordering::Relaxed);
            if ANNOUNCED.with(Cell::get) != generation {
                announce(generation);
            }
            SLOT.with(|s| s.replace(eventflux_abi::slot::encode_idle(pool_id)))
        };
        Idle { previous, _thread: std::marker::PhantomData }
    }
}

impl Drop for Idle {
    #[inline(always)]
    fn drop(&mut self) {
        leave(self.previous);
    }
}

/// Enters component operation `op` in whatever query and stage the thread is in, like
/// [`enter_stage`].
#[inline(always)]
pub(crate) fn enter_op(op: eventflux_abi::ComponentOp) -> u64 {
    if !cfg!(feature = "enabled") || !cpu_slot::SEMAPHORE.is_active() {
        return UNSET;
    }
    SLOT.with(|s| {
        let previous = s.get();
        s.set(eventflux_abi::slot::encode_op(previous, op));
        previous
    })
}

/// Ends what [`enter_batch`] or [`enter_stage`] began.
#[inline(always)]
pub(crate) fn leave(previous: u64) {
    if previous != UNSET {
        SLOT.with(|s| s.set(previous));
    }
}

#[cold]
#[inline(never)]
fn announce(generation: u32) {
    if generation == 0 {
        // Nothing settled yet: the flusher settles it (and replays names to the same tools).
        crate::flusher::start_flusher();
        return;
    }
    RETRACT.with(|r| r.0.set(true));
    cpu_slot::site(SLOT.with(Cell::as_ptr) as u64);
    ANNOUNCED.with(|a| a.set(generation));
}

/// The calling thread's slot value (tests and diagnostics).
pub fn current() -> u64 {
    SLOT.with(Cell::get)
}
