//! The flusher thread: the one piece of the crate that runs between the engine's calls. Once per
//! flush interval ([`crate::levels`]) it hands counts and gauges to observers (the cells of
//! [`crate::cells`]), and whenever a semaphore moved it also replays registrations to observers
//! that arrived ([`crate::registry`]) and starts a generation of CPU-slot announcements
//! ([`crate::cpu`]). It is started by the handles, spans and CPU slots that need it, so it
//! imports none of them: only what it reads. It also holds [`unregister_query`] and
//! [`unregister_component`], which must flush the counts before the registration goes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::cells::{BLOCKS, DIRECT, GAUGES, MAX_VALUES, REGISTRY, Series, lock};
use crate::levels::flush_interval;
use crate::points::{SEMAPHORES, cpu_slot};
use crate::semaphore::SETTLE;

/// The flusher's memory: what each count cell held at the last flush, what each gauge series
/// last reported, each probe's semaphore then, and since when a probe's observers grew.
#[derive(Default)]
struct Flushed {
    counts: Vec<u64>,
    gauges: Vec<u64>,
    semaphores: Vec<u16>,
    settling: Vec<Option<Instant>>,
    /// When gauges and registrations were last fired to everyone attached ([`REFRESH`]);
    /// `None` before the first flush.
    refreshed: Option<Instant>,
}

static FLUSHED: Mutex<Flushed> = Mutex::new(Flushed {
    counts: Vec::new(),
    gauges: Vec::new(),
    semaphores: Vec::new(),
    settling: Vec::new(),
    refreshed: None,
});

/// How often the flusher looks at the semaphores between flushes: a new observer is settled
/// and has the names replayed within this much after SETTLE, whatever the flush interval.
const LOOK: Duration = Duration::from_millis(50);

/// A flush that must not leave anything behind (a query stops, the process exits): waits out
/// a settling observer rather than skip it.
pub fn flush_final() {
    flush();
    let settling = lock(&FLUSHED).settling.iter().any(Option::is_some);
    if settling {
        std::thread::sleep(SETTLE);
        flush();
    }
}

/// Whether the flusher has work before the next interval: an observer settling, or the
/// registration probes' observers changed.
fn pending() -> bool {
    let state = lock(&FLUSHED);
    state.settling.iter().any(Option::is_some)
        || SEMAPHORES.iter().zip(&state.semaphores).any(|(sem, seen)| sem.count() != *seen)
        || crate::registry::observers_changed()
        || cpu_slot_pending()
}

/// Fires every count series that grew and every gauge series that changed since the last flush
/// (to the observers attached now), then replays registrations to observers that arrived.
pub fn flush() {
    let mut state = lock(&FLUSHED);
    // The series as they are now; the registry is not held while the probes fire (each a trap
    // while attached), so engine threads creating handles never wait for a flush.
    let (series, count_cells, gauge_cells) = {
        let reg = lock(&REGISTRY);
        let series: Vec<Series> =
            reg.series.iter().map(|s| Series { probe: s.probe, keys: s.keys, base: s.base }).collect();
        (series, reg.count_cells, reg.gauge_cells)
    };
    let blocks = lock(&BLOCKS).clone();
    // Every semaphore read once: what is acted on is what is remembered as seen.
    let sems: Vec<u16> = SEMAPHORES.iter().map(|s| s.count()).collect();
    let state = &mut *state;
    // The kernel raises a probe's semaphore once per process however many tools attach to it,
    // so a tool that joins another moves no count: every REFRESH, what newcomers are owed
    // (gauges' current values, the registrations) goes to everyone attached. Not at the first
    // flush: the tools attached then have just seen the registrations fire.
    let refresh = state.refreshed.is_some_and(|at| at.elapsed() >= REFRESH);
    if refresh || state.refreshed.is_none() {
        state.refreshed = Some(Instant::now());
    }
    state.counts.resize(count_cells, 0);
    state.gauges.resize(gauge_cells, 0);
    state.semaphores.resize(SEMAPHORES.len(), 0);
    state.settling.resize(SEMAPHORES.len(), None);
    // Probes whose observers grew since the last flush settle first (see SETTLE); those that
    // settled just now owe their gauges to the newcomers.
    let mut settled_now = vec![false; SEMAPHORES.len()];
    for (id, &now) in sems.iter().enumerate() {
        let before = state.semaphores[id];
        if now > before {
            state.settling[id] = Some(Instant::now());
        }
        if let Some(since) = state.settling[id]
            && (since.elapsed() >= SETTLE || now == 0)
        {
            state.settling[id] = None;
            settled_now[id] = true;
        }
    }
    for s in &series {
        let (id, n) = (s.probe.id as usize, s.probe.values);
        let now = sems.get(id).copied().unwrap_or(0);
        let before = state.semaphores.get(id).copied().unwrap_or(0);
        if s.base == DIRECT || (now == 0 && before == 0) || state.settling[id].is_some() {
            continue;
        }
        let base = s.base as usize;
        let mut values = [0u64; MAX_VALUES];
        let mut fire = false;
        if s.probe.gauge {
            for (i, v) in values.iter_mut().enumerate().take(n) {
                *v = GAUGES[base + i].load(Ordering::Relaxed);
                fire |= state.gauges[base + i] != *v;
                state.gauges[base + i] = *v;
            }
            // New observers have not seen the current values yet.
            fire |= settled_now[id] || refresh;
        } else {
            for (i, v) in values.iter_mut().enumerate().take(n) {
                let total =
                    blocks.iter().fold(0u64, |sum, b| sum.wrapping_add(b.cells[base + i].load(Ordering::Relaxed)));
                *v = total.wrapping_sub(state.counts[base + i]);
                state.counts[base + i] = total;
                fire |= *v != 0;
            }
        }
        // A probe nobody observes any more only has its baseline moved: the next observer
        // counts from its own attach.
        if fire && now != 0 {
            #[cfg(test)]
            lock(&FIRED).push((s.probe.id, s.keys, values));
            (s.probe.fire)(&s.keys, &values);
        }
    }
    state.semaphores.copy_from_slice(&sems);
    crate::registry::sync_observers(refresh);
    sync_cpu_slot();
}

/// The thread and the exit flush start once; a gauge's `set` tests this inline, so that only
/// the sets before it started call [`start_flusher`].
pub(crate) static FLUSHER: Once = Once::new();

/// Starts the flusher thread and the exit flush, once per process. Called on the first attached
/// add, set or sampled batch, never while nothing is attached: a detached engine must not even
/// gain a thread (a second thread alone switches glibc's malloc from its single-threaded fast
/// path to locking, 1.4% more instructions in the demo). Once started it stays, sleeping between
/// intervals.
pub fn start_flusher() {
    if !cfg!(feature = "enabled") {
        return;
    }
    FLUSHER.call_once(|| {
        // SAFETY: registers a function with C linkage and no arguments to run at exit.
        unsafe { atexit(flush_at_exit) };
        let spawned = std::thread::Builder::new().name("usdt-flush".into()).spawn(|| {
            let mut last = Instant::now();
            loop {
                let interval = flush_interval();
                std::thread::sleep(interval.min(LOOK));
                if last.elapsed() >= interval || pending() {
                    flush();
                    last = Instant::now();
                }
                if std::hint::black_box(false) {
                    crate::points::keep_control_sites();
                }
            }
        });
        // Without the thread, counts still reach observers when a query stops and at exit.
        drop(spawned);
    });
}

unsafe extern "C" {
    fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn flush_at_exit() {
    // A panic must not unwind into libc's exit.
    let _ = std::panic::catch_unwind(flush_final);
}

/// Stops announcing a query and fires `query_unregister`, after flushing every count so that
/// observers have the query's final totals when they learn it stopped.
pub fn unregister_query(id: u32) {
    flush_final();
    crate::registry::forget_query(id);
}

/// Stops announcing a component and fires `component_unregister`, after flushing every count
/// so that observers have its final totals when they learn it is gone.
pub fn unregister_component(id: u32) {
    flush_final();
    crate::registry::forget_component(id);
}

// CPU-slot generations: when each engine thread announces its slot again ([`crate::cpu`]).

/// Bumped by the flusher when a change of the tools attached to `cpu_slot` settled; 0 until
/// the first.
pub(crate) static GENERATION: AtomicU32 = AtomicU32::new(0);

/// What tools attached need is fired again this often, whether or not a count moved: CPU-slot
/// announcements (a new generation), gauges' values and the registrations. A tool that joined
/// another (the kernel counts a semaphore once per process, not per tool) or replaced one
/// between two looks of the flusher (the count back where it was) gets them within this. Per
/// period: one trap per engine thread, per gauge series and per registration.
pub(crate) const REFRESH: Duration = Duration::from_secs(10);

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
fn sync_cpu_slot() {
    let now = cpu_slot::SEMAPHORE.count();
    let mut seen = lock(&SEEN);
    if now != seen.count {
        seen.count = now;
        seen.changed = Some(Instant::now());
        return;
    }
    if now == 0 {
        seen.changed = None;
        return;
    }
    let settled = seen.changed.is_some_and(|at| at.elapsed() >= SETTLE);
    let stale = seen.changed.is_none() && seen.started.is_none_or(|at| at.elapsed() >= REFRESH);
    if settled || stale {
        seen.changed = None;
        seen.started = Some(Instant::now());
        // Never back to 0, which means "nothing settled yet".
        let _ = GENERATION.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |g| Some(g.wrapping_add(1).max(1)));
    }
}

/// Whether [`sync_cpu_slot`] has a change to settle.
fn cpu_slot_pending() -> bool {
    let seen = lock(&SEEN);
    seen.changed.is_some() || seen.count != cpu_slot::SEMAPHORE.count()
}

/// One fire: (probe, keys, amounts or values).
#[cfg(test)]
type Fired = (u32, [u32; 4], [u64; 4]);

/// What `flush` fired.
#[cfg(test)]
pub(crate) static FIRED: Mutex<Vec<Fired>> = Mutex::new(Vec::new());
