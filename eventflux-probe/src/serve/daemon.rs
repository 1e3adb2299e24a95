//! The observer as a library type: a [`Daemon`] loads the kernel programs once and attaches
//! to, detaches from and forgets targets. The `run` service (`run.rs`) holds one target in
//! it, node mode (`node.rs`) many; `latency`, `trace` and `profile` use one directly.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::collect::Reader;
use crate::find::target::{State, Target};
use crate::kernel::{AttachReport, Kernel};
use crate::model::Model;
use crate::sync::lock;

/// How often registrations are drained (their ring buffer must not fill).
pub const TICK: Duration = Duration::from_millis(100);

/// Loaded kernel programs and the targets they are attached to.
pub struct Daemon {
    kernel: Arc<Mutex<Kernel>>,
    reader: Arc<Reader>,
    kernel_log: Mutex<Option<crate::kernel::KernelLogger>>,
    /// Span records, when loaded to trace (`stage_sample` among the probes).
    spans: Mutex<Option<aya::maps::RingBuf<aya::maps::MapData>>>,
    /// Holding the descriptor keeps the statistics on.
    stats: Result<std::os::fd::OwnedFd, String>,
    /// When each target's attach finished (CLOCK_MONOTONIC ns): its batches that began
    /// earlier may lack stages (docs/probes.md), which the trace pipeline needs to know.
    attached_at: Mutex<std::collections::HashMap<u32, u64>>,
}

/// One attached target.
pub struct Attached {
    pub target: Arc<Target>,
    pub report: AttachReport,
}

impl Daemon {
    /// Loads the programs of `probes` (see `kernel::probes::metric_probes` and `Budget::control_probes`).
    /// `max_age`: how long a snapshot is shared by concurrent readers.
    pub fn load(probes: &[u32], max_age: Duration) -> Result<Daemon> {
        Daemon::with_kernel(Kernel::load(probes)?, probes, max_age)
    }

    /// Like [`Daemon::load`], for a profiler: CPU samples also record their stacks.
    pub fn load_profiling(probes: &[u32]) -> Result<Daemon> {
        Daemon::with_kernel(Kernel::load_profiling(probes)?, probes, Duration::ZERO)
    }

    fn with_kernel(mut kernel: Kernel, probes: &[u32], max_age: Duration) -> Result<Daemon> {
        // Keeps the kernel's BPF run-time statistics on while we run (the program metrics, and
        // the health report's last probe hit). Without them, said once attached (see
        // `stats_unavailable`): a warning before a failed attach would make its error two lines.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| e.to_string());
        let kernel_log = Mutex::new(kernel.take_logger());
        let tracing = crate::kernel::probes::TRACE_PROBES.iter().any(|p| probes.contains(p));
        let spans = Mutex::new(if tracing { Some(kernel.take_spans()?) } else { None });
        let kernel = Arc::new(Mutex::new(kernel));
        let reader = Arc::new(Reader::new(Arc::clone(&kernel), max_age)?);
        Ok(Daemon { kernel, reader, kernel_log, spans, stats, attached_at: Default::default() })
    }

    /// Hands every span record waiting in the ring buffer to `f` (nothing unless loaded to
    /// trace); returns how many.
    pub fn drain_spans(&self, mut f: impl FnMut(crate::collect::spans::Record)) -> usize {
        let mut spans = lock(&self.spans);
        let Some(ring) = spans.as_mut() else { return 0 };
        let mut n = 0;
        while let Some(item) = ring.next() {
            if let Some(r) = crate::collect::spans::decode(&item) {
                f(r);
                n += 1;
            }
        }
        n
    }

    /// Why the kernel's BPF run-time statistics are off, if they are.
    pub fn stats_unavailable(&self) -> Option<&str> {
        self.stats.as_ref().err().map(String::as_str)
    }

    /// Applies pending registrations and passes the kernel programs' diagnostics (if the log
    /// asked for them) to the log: call every 100 ms or so, their ring buffers must not fill.
    pub fn drain(&self) {
        self.reader.drain_events();
        if let Some(logger) = lock(&self.kernel_log).as_mut() {
            logger.flush();
        }
    }

    /// Collects for a one-shot command (`latency`, `profile`): drains every 100 ms until
    /// `duration` passes (`None`: no limit), Ctrl-C, or `target` ends; returns how the target
    /// ended if that is what stopped it.
    pub async fn collect(&self, duration: Option<Duration>, target: &Target) -> Option<State> {
        let wait = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let mut tick = tokio::time::interval(TICK);
        let drain = async {
            loop {
                tick.tick().await;
                self.drain();
            }
        };
        tokio::select! {
            () = wait => None,
            _ = tokio::signal::ctrl_c() => None,
            () = drain => None,
            state = target.ended(Duration::from_millis(250)) => Some(state),
        }
    }

    /// Finds process `pid`'s probes and attaches the loaded programs to them.
    pub fn attach(&self, pid: u32) -> Result<Attached> {
        crate::kernel::privileges::check()?;
        let (target, binaries) = crate::find::eventflux_binaries(pid)?;
        self.attach_found(target, &binaries)
    }

    /// Attaches to probes already found (`find::eventflux_binaries`).
    pub fn attach_found(&self, target: Target, binaries: &[crate::find::usdt::BinaryProbes]) -> Result<Attached> {
        let pid = target.pid();
        let report = {
            let mut kernel = lock(&self.kernel);
            let report = kernel.attach_process(pid, binaries)?;
            if kernel.cpu_period().is_some() {
                kernel.sample_cpu_of(pid, true)?;
            }
            report
        };
        for s in &report.skipped {
            tracing::warn!(pid, "not attached: {s}");
        }
        for r in &report.refused {
            tracing::warn!(
                pid,
                binary = %r.binary.display(),
                probe = %r.probe,
                offset = r.offset,
                "probe site refused, not attached: {r}"
            );
        }
        let target = Arc::new(target);
        self.reader.add_target(Arc::clone(&target), report.probes);
        lock(&self.attached_at).insert(pid, crate::model::trace::Clock::now().monotonic_now());
        Ok(Attached { target, report })
    }

    /// When process `pid`'s attach finished (CLOCK_MONOTONIC ns), if it is a target.
    pub fn attached_at(&self, pid: u32) -> Option<u64> {
        lock(&self.attached_at).get(&pid).copied()
    }

    /// Process `pid`'s CPU samples so far by query and stage, without stacks.
    pub fn cpu_places(&self, pid: u32) -> Result<std::collections::BTreeMap<crate::collect::stacks::Place, u64>> {
        self.reader.drain_events();
        let catalog = self.reader.catalog();
        crate::collect::stacks::Profile::places(&lock(&self.kernel), &catalog, pid)
    }

    /// Process `pid`'s CPU profile so far (see [`crate::collect::stacks`]); symbolized in the running
    /// process, or through `layout` once it exited.
    pub fn profile(
        &self,
        pid: u32,
        filter: &crate::collect::stacks::Filter,
        layout: Option<&crate::collect::stacks::Layout>,
    ) -> Result<crate::collect::stacks::Profile> {
        self.reader.drain_events();
        let catalog = self.reader.catalog();
        crate::collect::stacks::Profile::read(&lock(&self.kernel), &catalog, pid, filter, layout)
    }

    /// Starts CPU sampling (see `Kernel::sample_cpu`): every target attached from now on has its
    /// CPU samples counted by query and stage.
    pub fn sample_cpu(&self, period: Duration) -> Result<()> {
        lock(&self.kernel).sample_cpu(period)
    }

    /// Like [`Daemon::sample_cpu`] for a service whose other metrics do not depend on it: a
    /// failure (no CAP_PERFMON in a container, perf events disabled) is a warning, and the
    /// service runs without `query_cpu_seconds_total`.
    pub fn sample_cpu_or_warn(&self, period: Duration) {
        if let Err(e) = self.sample_cpu(period) {
            tracing::warn!("CPU attribution off (query_cpu_seconds_total will be missing): {e:#}");
        }
    }

    /// Detaches every site (slow: see `Kernel::detach_all`); blocks, but scrapes do not wait:
    /// the kernel's lock is held only to take the attachments.
    pub fn detach_all(&self) {
        let (pids, attachments): (BTreeSet<u32>, _) = {
            let mut kernel = lock(&self.kernel);
            (kernel.sites().map(|s| s.pid).collect(), kernel.take_attachments())
        };
        crate::kernel::attach::detach(attachments);
        for pid in pids {
            self.reader.detached(pid);
        }
    }

    /// Detaches process `pid`'s sites only (node mode: the other targets stay attached), and
    /// says how many; like [`Daemon::detach_all`] holds the kernel's lock only to take them.
    pub fn detach(&self, pid: u32) -> usize {
        let (sites, attachments) = {
            let mut kernel = lock(&self.kernel);
            (kernel.sites().filter(|s| s.pid == pid).count(), kernel.take_attachments_of(pid))
        };
        crate::kernel::attach::detach(attachments);
        self.reader.detached(pid);
        sites
    }

    /// Sites attached now, over all targets, and the slots the kernel side has (attached or
    /// free): a node observer that attaches and detaches all day must not grow them.
    pub fn sites(&self) -> (usize, usize) {
        let kernel = lock(&self.kernel);
        (kernel.attached(), kernel.slots())
    }

    /// Forgets a finished target: its registrations and `/proc` readings, and its map entries
    /// (the error says if some could not be removed; the rest is forgotten all the same).
    pub fn forget(&self, pid: u32) -> Result<usize> {
        let removed = lock(&self.kernel).forget_pid(pid);
        self.reader.remove_target(pid);
        lock(&self.attached_at).remove(&pid);
        removed
    }

    pub fn reader(&self) -> &Arc<Reader> {
        &self.reader
    }

    /// The model of a fresh (or shared, see `max_age`) snapshot.
    pub fn model(&self) -> Result<Model> {
        Ok(Model::build(self.reader.snapshot()?.as_ref()))
    }

    /// The model for a health sample; a failed read is logged and the sample skipped.
    pub fn sample_model(&self) -> Option<Model> {
        self.model().map_err(|e| tracing::warn!("cannot read the BPF maps for a health sample: {e:#}")).ok()
    }
}

/// `latency`'s use of a [`Daemon`]: attach, then give the caller the target to watch.
pub fn attach_once(pid: u32, probes: &[u32]) -> Result<(Daemon, Attached)> {
    let daemon = Daemon::load(probes, Duration::ZERO)?;
    let attached = daemon.attach(pid)?;
    Ok((daemon, attached))
}
