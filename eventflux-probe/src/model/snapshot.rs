//! One reading of everything the observer knows, in the kernel's own keys: what
//! [`collect`](crate::collect) fills and [`Model::build`](super::Model::build) interprets.

use std::collections::BTreeMap;
use std::time::Duration;

use eventflux_probe_common::{CounterKey, CpuKey, HistKey, drop};

use super::catalog::Catalog;
use super::hist::HistData;

/// The daemon's own state, exported as `eventflux_probe_*`.
#[derive(Debug, Clone, Default)]
pub struct SelfStats {
    pub sites_attached: usize,
    pub probes_attached: usize,
    /// Sites refused since load (`usdt::verify`), and the latest of them.
    pub sites_refused: u64,
    pub refused: Vec<crate::find::usdt::verify::RefusedSite>,
    /// (program, run count, run time)
    pub programs: Vec<(&'static str, u64, Duration)>,
    /// (map, entries, capacity)
    pub maps: Vec<(&'static str, usize, u32)>,
    pub drops: [u64; drop::COUNT as usize],
    /// Each target, and whether it still runs the program we attached to.
    pub targets: Vec<(u32, bool)>,
}

/// Everything known at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub counters: BTreeMap<CounterKey, u64>,
    pub gauges: BTreeMap<CounterKey, u64>,
    pub hists: BTreeMap<HistKey, HistData>,
    /// CPU samples by process and slot (stacks summed: both stack ids [`NO_STACK`]).
    pub cpu: BTreeMap<CpuKey, u64>,
    /// CPU time one sample stands for; `None` when CPU samples are not taken.
    pub cpu_period: Option<Duration>,
    pub catalog: Catalog,
    pub processes: BTreeMap<u32, ProcStats>,
    pub daemon: SelfStats,
}

impl Snapshot {
    pub fn counter(&self, pid: u32, counter: u32, a: u32, b: u32) -> u64 {
        self.counters.get(&CounterKey { pid, counter, a, b }).copied().unwrap_or(0)
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    pub uptime_seconds: f64,
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    /// CPU use since the previous reading, in percent of one core.
    pub cpu_percent: f64,
    /// Total user + system CPU seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors (`None` where `/proc/PID/fd` cannot be listed).
    pub open_fds: Option<u64>,
    /// I/O counters (`None` where `/proc/PID/io` cannot be read).
    pub io: Option<Io>,
}

/// `/proc/PID/io`: bytes through read/write system calls (sockets, pipes, files) and bytes
/// the storage layer read or wrote for the process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Io {
    pub rchar: u64,
    pub wchar: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}
