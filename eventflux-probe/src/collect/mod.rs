//! Reading the kernel side: the [`Reader`] turns the kernel maps, the registrations (through
//! the event ring buffer) and `/proc` into one [`Snapshot`](crate::model::snapshot::Snapshot)
//! that every exporter reads through the model, so that `/metrics`, traces and health agree.
//! Beside it: span records into span trees ([`spans`]) and CPU samples with their stacks into
//! profiles ([`stacks`]), and the target's `/proc` readings ([`procstat`]).
//!
//! Per-CPU values are summed here. A snapshot is cached for a short while so that concurrent
//! readers share one reading instead of each walking the maps.

pub mod procstat;
pub mod spans;
pub mod stacks;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use eventflux_probe_common::{CpuKey, Event, NO_STACK};

use crate::find::target::{State, Target};
use crate::kernel::Kernel;
use crate::model::catalog::Catalog;
use crate::model::hist::HistData;
use crate::model::snapshot::{SelfStats, Snapshot};
use crate::sync::lock;
use procstat::ProcSampler;

/// A target, its `/proc` sampler and the probes attached for it.
struct Watched {
    target: Arc<Target>,
    sampler: ProcSampler,
    probes: usize,
}

/// Reads the kernel side for the exporters.
pub struct Reader {
    kernel: Arc<Mutex<Kernel>>,
    events: Mutex<Option<RingBuf<MapData>>>,
    catalog: Mutex<Catalog>,
    targets: Mutex<BTreeMap<u32, Watched>>,
    /// The last snapshot, when it was read, and the generation it was read in.
    cache: Mutex<Option<(Instant, u64, Arc<Snapshot>)>>,
    /// Bumped by [`Reader::invalidate`] without taking `cache` (held for a whole read).
    generation: std::sync::atomic::AtomicU64,
    max_age: Duration,
}

impl Reader {
    /// `max_age`: how long a snapshot is reused by later readers.
    pub fn new(kernel: Arc<Mutex<Kernel>>, max_age: Duration) -> Result<Reader> {
        let events = lock(&kernel).take_events()?;
        Ok(Reader {
            kernel,
            events: Mutex::new(Some(events)),
            catalog: Mutex::new(Catalog::default()),
            targets: Mutex::new(BTreeMap::new()),
            cache: Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            max_age,
        })
    }

    /// Starts reporting a process's `/proc` statistics (while it runs; its last ones after).
    pub fn add_target(&self, target: Arc<Target>, probes_attached: usize) {
        // A first reading now: a target that exits before the first scrape still has one.
        let mut sampler = ProcSampler::default();
        sampler.sample(&target);
        lock(&self.targets).insert(target.pid(), Watched { target, sampler, probes: probes_attached });
        self.invalidate();
    }

    /// Records that a target's probes were detached (it stays reported, as not running).
    pub fn detached(&self, pid: u32) {
        if let Some(t) = lock(&self.targets).get_mut(&pid) {
            t.probes = 0;
        }
        self.invalidate();
    }

    /// Forgets a target: its registrations and `/proc` readings (its map entries are the
    /// kernel's, see `Kernel::forget_pid`).
    pub fn remove_target(&self, pid: u32) {
        lock(&self.targets).remove(&pid);
        let mut catalog = lock(&self.catalog);
        catalog.forget(pid);
        std::mem::drop(catalog);
        self.invalidate();
    }

    /// The next reader reads afresh.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Applies pending registrations; returns how many.
    pub fn drain_events(&self) -> usize {
        let mut events = lock(&self.events);
        let Some(ring) = events.as_mut() else { return 0 };
        let mut catalog = lock(&self.catalog);
        let mut n = 0;
        while let Some(item) = ring.next() {
            if let Some(e) = decode(&item) {
                catalog.apply(&e);
                n += 1;
            }
        }
        n
    }

    /// The registrations applied so far.
    pub fn catalog(&self) -> Catalog {
        lock(&self.catalog).clone()
    }

    /// A snapshot no older than `max_age`.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>> {
        let mut cache = lock(&self.cache);
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        if let Some((_, _, snap)) = cache.as_ref().filter(|(at, g, _)| *g == generation && at.elapsed() < self.max_age)
        {
            return Ok(Arc::clone(snap));
        }
        let snap = Arc::new(self.read()?);
        *cache = Some((Instant::now(), generation, Arc::clone(&snap)));
        Ok(snap)
    }

    fn read(&self) -> Result<Snapshot> {
        self.drain_events();
        let kernel = lock(&self.kernel);
        let mut snap = Snapshot::default();
        for entry in kernel.counters()?.iter() {
            let (key, values) = entry?;
            snap.counters.insert(key, values.iter().sum());
        }
        for entry in kernel.gauges()?.iter() {
            let (key, value) = entry?;
            snap.gauges.insert(key, value);
        }
        for entry in kernel.hists()?.iter() {
            let (key, v) = entry?;
            let h = HistData {
                buckets: v.buckets.to_vec(),
                count: v.count,
                sum_ns: v.sum_ns,
                max_ns: v.max_ns,
                ..Default::default()
            };
            snap.hists.insert(key, h);
        }
        snap.cpu_period = kernel.cpu_period();
        if snap.cpu_period.is_some() {
            for entry in kernel.cpu_samples()?.iter() {
                let (key, n) = entry?;
                let key = CpuKey { user_stack: NO_STACK, kernel_stack: NO_STACK, ..key };
                *snap.cpu.entry(key).or_insert(0) += n;
            }
        }
        let (sites_refused, refused) = kernel.refused();
        snap.daemon = SelfStats {
            sites_attached: kernel.attached(),
            sites_refused,
            refused,
            probes_attached: lock(&self.targets).values().map(|t| t.probes).sum(),
            programs: kernel.program_stats(),
            maps: kernel.map_usage()?,
            drops: kernel.drops()?,
            targets: Vec::new(),
        };
        std::mem::drop(kernel);
        snap.catalog = lock(&self.catalog).clone();
        for (pid, w) in lock(&self.targets).iter_mut() {
            if let Some(stats) = w.sampler.sample(&w.target) {
                snap.processes.insert(*pid, stats);
            }
            snap.daemon.targets.push((*pid, w.target.state() == State::Running));
        }
        Ok(snap)
    }
}

/// Decodes a ring-buffer record; `None` if it is too short to be an [`Event`].
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<Event>() bytes written by the kernel program
    // as an Event (plain integers and bytes, valid for any bit pattern).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}
