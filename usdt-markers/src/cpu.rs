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
//! store at each boundary (and at a batch's, a check of the generation below); a thread's
//! announcement is one trap per generation.
//!
//! When a thread announces: the flusher thread watches the `cpu_slot` semaphore, and once a
//! change of the attached tools has settled ([`SETTLE`](crate::accum::SETTLE): a tool's
//! semaphore rises before its program is linked, see `accum`) it starts a new generation; each
//! thread announces at its first batch of a generation it has not announced in. Each tool keeps
//! its own table of slots, so a tool that attaches after another left (the count back where it
//! was) needs the new generation too: the flusher sees the count move either way. When a thread
//! exits, a thread-local destructor announces address 0, so the tool forgets it before its
//! memory is reused. A tool that replaced another between two looks of the flusher (50 ms; the
//! count back where it was) is caught by the generation the flusher starts every 10 s anyway.
//! A thread that never runs a batch never announces: outside queries the tool attributes its
//! samples to "none", which is what it would read.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use eventflux_abi::Stage;

use crate::probes::cpu_slot;

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

/// Ends what [`enter_batch`] or [`enter_stage`] began.
#[inline(always)]
pub(crate) fn leave(previous: u64) {
    if previous != UNSET {
        SLOT.with(|s| s.set(previous));
    }
}

/// Bumped by the flusher when a change of the tools attached to `cpu_slot` settled; 0 until
/// the first.
static GENERATION: AtomicU32 = AtomicU32::new(0);

#[cold]
#[inline(never)]
fn announce(generation: u32) {
    if generation == 0 {
        // Nothing settled yet: the flusher settles it (and replays names to the same tools).
        crate::accum::start_flusher();
        return;
    }
    RETRACT.with(|r| r.0.set(true));
    cpu_slot::site(SLOT.with(Cell::as_ptr) as u64);
    ANNOUNCED.with(|a| a.set(generation));
}

/// A new generation this often while tools are attached, whether or not the count moved: a
/// tool that replaced another between two looks of the flusher (the count back where it was)
/// gets the slots within this. One trap per engine thread per period.
const REFRESH: Duration = Duration::from_secs(10);

/// What the flusher knows of `cpu_slot`.
struct Seen {
    /// The semaphore count last seen.
    count: u16,
    /// Since when that count is unsettled (a change not yet turned into a generation).
    changed: Option<Instant>,
    /// When the last generation started.
    started: Option<Instant>,
}

static SEEN: Mutex<Seen> = Mutex::new(Seen { count: 0, changed: None, started: None });

/// Starts a new generation once a change of the `cpu_slot` semaphore has settled, and every
/// [`REFRESH`] while tools are attached. Called by the flusher on every pass (it looks whenever
/// a semaphore moved).
pub(crate) fn sync_observers() {
    let now = cpu_slot::SEMAPHORE.count();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if now != seen.count {
        seen.count = now;
        seen.changed = Some(Instant::now());
        return;
    }
    if now == 0 {
        seen.changed = None;
        return;
    }
    let settled = seen.changed.is_some_and(|at| at.elapsed() >= crate::accum::SETTLE);
    let stale = seen.changed.is_none() && seen.started.is_none_or(|at| at.elapsed() >= REFRESH);
    if settled || stale {
        seen.changed = None;
        seen.started = Some(Instant::now());
        // Never back to 0, which means "nothing settled yet".
        let _ = GENERATION.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |g| Some(g.wrapping_add(1).max(1)));
    }
}

/// Whether [`sync_observers`] has a change to settle.
pub(crate) fn pending() -> bool {
    let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.changed.is_some() || seen.count != cpu_slot::SEMAPHORE.count()
}

/// The calling thread's slot value (tests and diagnostics).
pub fn current() -> u64 {
    SLOT.with(Cell::get)
}

#[cfg(all(test, feature = "enabled"))]
mod tests {
    use eventflux_abi::slot::{Where, decode};

    use super::*;
    use crate::span::{Batch, Span};

    /// Attached: batches and stages set the slot and restore it, nested queries included;
    /// detached, nothing is written.
    #[test]
    fn boundaries_set_and_restore_the_slot() {
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
