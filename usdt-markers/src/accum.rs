//! Counts and gauges accumulated in the engine, handed to observers once per flush interval.
//!
//! The model: a probe hit costs a uprobe trap (~0.4–0.8 µs), so nothing that happens per chunk
//! may fire one. A series (a count or gauge probe with its key arguments fixed, e.g. `ingest`
//! of stream 3) gets a few cells when the engine creates its handle:
//! - count cells live in a per-thread block: the thread that adds is the only writer of its
//!   block, so an add is a plain load, add and store (relaxed atomics, for the flusher's reads)
//!   with no lock prefix and no sharing of cache lines between engine threads;
//! - gauge cells are process-wide; a set is a plain store, the last writer wins.
//!
//! A flusher thread wakes once per interval (the shortest any observer asked for through the
//! control probes, else [`eventflux_abi::DEFAULT_FLUSH_MS`]), sums each count series over all
//! blocks, and fires the probe with the difference since its previous hit; gauges are fired when
//! they changed, or when the probe's set of observers changed. It also flushes when a query stops
//! ([`crate::unregister_query`]) and when the process exits (`atexit`), so totals are exact.
//! Blocks are never freed: a block whose thread exited is handed to the next new thread, and its
//! cumulative cells keep counting, so nothing a thread added before exiting is lost.
//!
//! While no observer is attached to a probe its handles do nothing (the semaphore test fails),
//! and the flusher fires nothing for it; the counts an observer sees start when its attach
//! raised the semaphore. When the last observer detaches, what was added since the last flush
//! is dropped so that the next observer does not receive it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use eventflux_abi::{DEFAULT_FLUSH_MS, FLUSH_LEVELS};

use crate::Semaphore;
use crate::probes::SEMAPHORES;

/// Most key arguments of a count or gauge probe (checked by a test of the ABI table).
pub const MAX_KEYS: usize = 4;
/// Most amounts or values of a count or gauge probe.
pub const MAX_VALUES: usize = 4;

/// Count cells per thread block (8 bytes each). Series past it fire their probe directly on
/// every add: exact, but each add then costs a trap while attached.
const BLOCK_CELLS: usize = 8192;
/// Gauge cells for the whole process; series past it fire directly likewise.
const GAUGE_CELLS: usize = 4096;

/// What the flusher needs to know about a count or gauge probe; one static per probe,
/// generated with it.
pub struct ProbeInfo {
    /// Probe id (ABI table index).
    pub id: u32,
    /// A gauge (last value) rather than a count (amounts summed).
    pub gauge: bool,
    /// Amounts or values per series.
    pub values: usize,
    /// The probe's semaphore.
    pub semaphore: &'static Semaphore,
    /// Fires the probe's site for one series.
    pub fire: fn(&[u32; MAX_KEYS], &[u64; MAX_VALUES]),
}

/// A series of a count or gauge probe: its first cell (`DIRECT` when there was no room) and
/// its index in the registry.
#[derive(Debug, Clone, Copy)]
pub struct Handle {
    base: u32,
    series: u32,
}

const DIRECT: u32 = u32::MAX;

struct Series {
    probe: &'static ProbeInfo,
    keys: [u32; MAX_KEYS],
    base: u32,
}

#[derive(Default)]
struct Registry {
    series: Vec<Series>,
    by_key: BTreeMap<(u32, [u32; MAX_KEYS]), u32>,
    count_cells: usize,
    gauge_cells: usize,
}

static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { series: Vec::new(), by_key: BTreeMap::new(), count_cells: 0, gauge_cells: 0 });

/// One engine thread's count cells. Leaked: blocks are recycled, never freed, so the flusher
/// can read them without coordinating with thread exit.
struct Block {
    cells: Box<[AtomicU64]>,
    in_use: AtomicBool,
}

impl Block {
    /// Adds `values` to the cells from `base` on. Only the owning thread writes a block: a load
    /// and a store, no read-modify-write.
    #[inline(always)]
    fn add(&self, base: u32, values: &[u64]) {
        for (i, v) in values.iter().enumerate() {
            if let Some(c) = self.cells.get(base as usize + i) {
                c.store(c.load(Ordering::Relaxed).wrapping_add(*v), Ordering::Relaxed);
            }
        }
    }
}

static BLOCKS: Mutex<Vec<&'static Block>> = Mutex::new(Vec::new());

static GAUGES: [AtomicU64; GAUGE_CELLS] = [const { AtomicU64::new(0) }; GAUGE_CELLS];

thread_local! {
    /// This thread's block, null until its first attached add. No destructor, so reading it
    /// is a single thread-pointer-relative load.
    static BLOCK: Cell<*const Block> = const { Cell::new(std::ptr::null()) };
    /// Hands the block back when the thread exits (registered on first use).
    static RELEASE: ReleaseBlock = const { ReleaseBlock };
}

struct ReleaseBlock;

impl Drop for ReleaseBlock {
    fn drop(&mut self) {
        let _ = BLOCK.try_with(|b| {
            let p = b.replace(std::ptr::null());
            // SAFETY: a non-null BLOCK points at a leaked, never-freed Block.
            if let Some(block) = unsafe { p.as_ref() } {
                block.in_use.store(false, Ordering::Release);
            }
        });
    }
}

/// Locks ignoring poison: a panic elsewhere leaves these tables consistent (every update is a
/// single push or store), and observability must never take the engine down.
fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handle {
    /// The series of `probe` with these keys: the existing one, or new cells.
    pub fn new(probe: &'static ProbeInfo, keys: &[u32]) -> Handle {
        let mut k = [0u32; MAX_KEYS];
        for (slot, key) in k.iter_mut().zip(keys) {
            *slot = *key;
        }
        let mut reg = lock(&REGISTRY);
        if let Some(&i) = reg.by_key.get(&(probe.id, k)) {
            return Handle { base: reg.series[i as usize].base, series: i };
        }
        let (used, cap) = if probe.gauge { (reg.gauge_cells, GAUGE_CELLS) } else { (reg.count_cells, BLOCK_CELLS) };
        let base = if used + probe.values <= cap {
            if probe.gauge {
                reg.gauge_cells += probe.values;
            } else {
                reg.count_cells += probe.values;
            }
            used as u32
        } else {
            DIRECT
        };
        let i = reg.series.len() as u32;
        reg.series.push(Series { probe, keys: k, base });
        reg.by_key.insert((probe.id, k), i);
        Handle { base, series: i }
    }

    /// Adds `values` to this thread's cells of the series.
    #[inline(always)]
    pub fn add<const N: usize>(&self, values: &[u64; N]) {
        let block = BLOCK.with(Cell::get);
        // SAFETY: a non-null BLOCK points at a leaked Block owned by this thread.
        match unsafe { block.as_ref() } {
            Some(b) if self.base != DIRECT => b.add(self.base, values),
            _ => self.add_slow(values),
        }
    }

    #[cold]
    #[inline(never)]
    fn add_slow(&self, values: &[u64]) {
        start_flusher();
        if self.base != DIRECT
            && let Some(b) = claim_block()
        {
            b.add(self.base, values);
            return;
        }
        self.fire_direct(values);
    }

    /// Sets the series' gauge cells (the caller stores whether or not anyone is attached, so
    /// that an observer attaching later is told the current value, not a stale one).
    #[inline(always)]
    pub fn set<const N: usize>(&self, values: &[u64; N], attached: bool) {
        if attached && !FLUSHER.is_completed() {
            start_flusher();
        }
        if self.base == DIRECT {
            if attached {
                self.fire_direct(values);
            }
            return;
        }
        for (i, v) in values.iter().enumerate() {
            if let Some(c) = GAUGES.get(self.base as usize + i) {
                c.store(*v, Ordering::Relaxed);
            }
        }
    }

    /// No cell for this series (or none for this thread): the probe fires now with this amount
    /// alone, which keeps totals exact at the cost of a trap.
    #[cold]
    #[inline(never)]
    fn fire_direct(&self, values: &[u64]) {
        let reg = lock(&REGISTRY);
        let Some(s) = reg.series.get(self.series as usize) else { return };
        let mut v = [0u64; MAX_VALUES];
        for (slot, value) in v.iter_mut().zip(values) {
            *slot = *value;
        }
        (s.probe.fire)(&s.keys, &v);
    }
}

/// This thread's block: a free one, or a new one.
fn claim_block() -> Option<&'static Block> {
    // Registering the release fails once the thread's destructors run: then no block, and the
    // caller fires directly.
    RELEASE.try_with(|_| ()).ok()?;
    let mut blocks = lock(&BLOCKS);
    let block = match blocks.iter().find(|b| !b.in_use.load(Ordering::Acquire)) {
        Some(b) => *b,
        None => {
            let cells: Box<[AtomicU64]> = (0..BLOCK_CELLS).map(|_| AtomicU64::new(0)).collect();
            let b: &'static Block = Box::leak(Box::new(Block { cells, in_use: AtomicBool::new(false) }));
            blocks.push(b);
            b
        }
    };
    block.in_use.store(true, Ordering::Relaxed);
    BLOCK.with(|c| c.set(block));
    Some(block)
}

/// The flusher's memory: what each count cell held at the last flush, what each gauge series
/// last reported, each probe's semaphore then, and since when a probe's observers grew.
#[derive(Default)]
struct Flushed {
    counts: Vec<u64>,
    gauges: Vec<u64>,
    semaphores: Vec<u16>,
    settling: Vec<Option<Instant>>,
}

static FLUSHED: Mutex<Flushed> =
    Mutex::new(Flushed { counts: Vec::new(), gauges: Vec::new(), semaphores: Vec::new(), settling: Vec::new() });

/// How long a probe whose observers grew is left alone before it fires again. An observer's
/// attach raises the semaphore (the kernel does, when it registers the uprobe) before its
/// program is linked to the site, microseconds later; a hit in between reaches nobody. Firing
/// only once the count has been steady this long means nothing is lost in that window: amounts
/// keep accumulating in the cells and arrive with the first hit after it.
pub(crate) const SETTLE: Duration = Duration::from_millis(50);

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
        || crate::cpu::pending()
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
            fire |= settled_now[id];
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
            tests::FIRED.lock().unwrap_or_else(|e| e.into_inner()).push((s.probe.id, s.keys, values));
            (s.probe.fire)(&s.keys, &values);
        }
    }
    state.semaphores.copy_from_slice(&sems);
    crate::registry::sync_observers();
    crate::cpu::sync_observers();
}

/// The flush interval observers asked for: the shortest raised level.
pub fn flush_interval() -> Duration {
    let ms = FLUSH_LEVELS
        .iter()
        .rev()
        .find(|(id, _)| SEMAPHORES.get(*id as usize).is_some_and(|s| s.is_active()))
        .map_or(DEFAULT_FLUSH_MS, |(_, ms)| *ms);
    Duration::from_millis(u64::from(ms))
}

static FLUSHER: Once = Once::new();

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
                    crate::probes::keep_control_sites();
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

#[cfg(all(test, feature = "enabled"))]
mod tests {
    use std::sync::Mutex;

    use crate::{error, ingest, window_state};

    /// One fire: (probe, keys, amounts or values).
    type Fired = (u32, [u32; 4], [u64; 4]);

    /// What `flush` fired.
    pub static FIRED: Mutex<Vec<Fired>> = Mutex::new(Vec::new());

    /// The tests share the process-wide registry and semaphores: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Raises a semaphore as an attaching tool would, and lets the change settle.
    fn attach(sem: &crate::Semaphore, n: u16) {
        sem.set(n);
        super::flush();
        std::thread::sleep(super::SETTLE);
    }

    fn fired(probe: u32, key: u32) -> Vec<[u64; 4]> {
        let mut f = FIRED.lock().unwrap_or_else(|e| e.into_inner());
        let out = f.iter().filter(|(p, k, _)| *p == probe && k[0] == key).map(|(_, _, v)| *v).collect();
        f.retain(|(p, k, _)| !(*p == probe && k[0] == key));
        out
    }

    /// Amounts added on several threads, some of which exit before the flush and hand their
    /// block to later threads, reach the probe exactly once and in full.
    #[test]
    fn counts_from_many_threads_are_exact_across_flushes_and_thread_exits() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let counter = ingest::Counter::new(901);
        attach(&ingest::SEMAPHORE, 1);
        let mut total = 0u64;
        for round in 0..3u64 {
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    std::thread::spawn(move || {
                        for i in 0..1000u64 {
                            counter.add(i % 7 + t + round);
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().expect("thread"));
            total += (0..4u64).map(|t| (0..1000u64).map(|i| i % 7 + t + round).sum::<u64>()).sum::<u64>();
            super::flush();
        }
        let sum: u64 = fired(ingest::ID, 901).iter().map(|v| v[0]).sum();
        assert_eq!(sum, total);
        // Nothing new: nothing fires.
        super::flush();
        assert!(fired(ingest::ID, 901).is_empty());
        ingest::SEMAPHORE.set(0);
    }

    /// While nobody observes the probe, adds are dropped; what was added before the last
    /// observer left does not reach the next one.
    #[test]
    fn an_observer_counts_from_its_attach() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let counter = error::Counter::new(902, 1);
        attach(&error::SEMAPHORE, 1);
        counter.add(5);
        super::flush();
        assert_eq!(fired(error::ID, 902), vec![[5, 0, 0, 0]]);
        counter.add(7);
        error::SEMAPHORE.set(0);
        super::flush();
        counter.add(100);
        error::SEMAPHORE.set(1);
        counter.add(3);
        // Settling: nothing fires yet, nothing is lost.
        super::flush();
        assert!(fired(error::ID, 902).is_empty());
        counter.add(4);
        std::thread::sleep(super::SETTLE);
        super::flush();
        assert_eq!(fired(error::ID, 902), vec![[7, 0, 0, 0]]);
        error::SEMAPHORE.set(0);
    }

    /// Gauges fire when they change, and again to a newly attached observer.
    #[test]
    fn gauges_fire_on_change_and_to_new_observers() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = window_state::Gauge::new(903);
        attach(&window_state::SEMAPHORE, 1);
        gauge.set(10);
        super::flush();
        gauge.set(10);
        super::flush();
        assert_eq!(fired(window_state::ID, 903), vec![[10, 0, 0, 0]]);
        attach(&window_state::SEMAPHORE, 2);
        super::flush();
        assert_eq!(fired(window_state::ID, 903), vec![[10, 0, 0, 0]], "the second observer gets the value");
        window_state::SEMAPHORE.set(0);
    }
}
