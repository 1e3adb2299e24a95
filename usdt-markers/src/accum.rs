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
//!
//! Here are the handles the engine writes through; the cells are in `cells.rs`, the flusher in
//! `flusher.rs`.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use crate::cells::{BLOCK_CELLS, CELLS, DIRECT, GAUGE_CELLS, GAUGES, REGISTRY, Series, add_to, claim_block, lock};
use crate::flusher::FLUSHER;

pub use crate::cells::{MAX_KEYS, MAX_VALUES, ProbeInfo};
pub use crate::flusher::{flush, flush_final, start_flusher};
pub use crate::levels::flush_interval;

/// A series of a count or gauge probe: its first cell (`DIRECT` when there was no room) and
/// its index in the registry.
#[derive(Debug, Clone, Copy)]
pub struct Handle {
    base: u32,
    series: u32,
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
        let cells = CELLS.with(Cell::get);
        let range = self.base as usize..self.base as usize + N;
        // SAFETY: a non-null CELLS points at the cells of a leaked (never freed) Block that
        // this thread owns. A `DIRECT` series' range is past the cells: the slow path.
        match unsafe { cells.as_ref() }.and_then(|c| c.get(range)) {
            Some(c) => add_to(c, values),
            None => self.add_slow(values),
        }
    }

    #[cold]
    #[inline(never)]
    fn add_slow(&self, values: &[u64]) {
        start_flusher();
        if self.base != DIRECT
            && let Some(b) = claim_block()
            && let Some(c) = b.cells.get(self.base as usize..self.base as usize + values.len())
        {
            add_to(c, values);
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
