//! The kernel programs: loading them, attaching them to a process's probe sites, and the maps
//! they fill. This is the only module that talks to aya.

pub mod attach;
pub mod budget;
pub mod load;
pub mod privileges;
pub mod probes;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap};
use aya::programs::UProbe;
use aya::programs::perf_event::{PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::{Ebpf, EbpfLoader};
use eventflux_probe_common::{
    Class, CounterKey, CpuKey, Hist, HistKey, MAX_SITES, PROBES, SiteSpec, SlotRef, cpu_target, drop, probe,
};
use probes::TRACE_PROBES;

use crate::find::usdt::verify::RefusedSite;
use crate::find::usdt::{self, BinaryProbes};
use attach::{Attachment, MultiSite, Site};
use eventflux_abi::PROVIDER;

/// The compiled kernel programs (eventflux-probe-ebpf), built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/eventflux-probe-ebpf"));

/// What an attach did, for the log and the daemon's own metrics.
#[derive(Debug, Clone, Default)]
pub struct AttachReport {
    /// Distinct probes attached.
    pub probes: usize,
    /// Sites (notes) attached.
    pub sites: usize,
    /// How long attaching took, opening the binaries included.
    pub elapsed: Duration,
    /// Sites that could not be attached, and why.
    pub skipped: Vec<String>,
    /// Sites whose code was not the nop their note promised: not attached (`usdt::verify`).
    pub refused: Vec<RefusedSite>,
    /// Probes with a loaded program that the binaries have sites of: what should be attached.
    pub expected: BTreeSet<u32>,
    /// How: `uprobe_multi` links or `perf_event`s ([`Kernel::attach_kind`]).
    pub attach: &'static str,
}

impl AttachReport {
    /// Whether every expected probe got at least one site attached.
    pub fn complete(&self) -> bool {
        self.probes == self.expected.len()
    }
}

/// A site we attached to, by cookie.
#[derive(Debug, Clone)]
pub struct AttachedSite {
    pub pid: u32,
    pub binary: PathBuf,
    pub probe: u32,
}

/// Refused sites kept for `/health`, newest last; the count goes on past it.
const REFUSED_KEPT: usize = 32;

/// The `tracing` target the kernel programs' diagnostics arrive under (aya-log passes on the
/// module path of the program that logged, through the `log` crate).
pub const KERNEL_LOG_TARGET: &str = "eventflux_probe_ebpf";

/// Reads the kernel programs' diagnostics into the daemon's log; see [`Kernel::take_logger`].
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Loaded programs, their attachments, and handles to their maps.
pub struct Kernel {
    ebpf: Ebpf,
    logger: Option<KernelLogger>,
    pmu_type: u32,
    /// Probe id → the program attached to its sites.
    loaded: BTreeMap<u32, &'static str>,
    /// How programs are loaded and attached: `uprobe_multi` links where the kernel has them.
    multi: Option<Multi>,
    /// By cookie (the index into `SPECS`): the site attached there, or `None` for a free slot,
    /// reused by the next attach (a daemon that follows restarts attaches all day).
    slots: Vec<Option<AttachedSite>>,
    /// The attachments holding the sites, by the process they filter on.
    links: Vec<(u32, Attachment)>,
    /// CPU time one CPU sample stands for, once sampling started ([`Kernel::sample_cpu`]).
    cpu_period: Option<Duration>,
    /// Sites refused since load, and the latest of them.
    refused_total: u64,
    refused: std::collections::VecDeque<RefusedSite>,
}

/// The uprobe programs, loaded for `uprobe_multi` links (`load.rs`).
struct Multi {
    /// Until a map is handed over (`take_spans`, `take_events`): the relocated code names the
    /// maps' descriptors by number.
    programs: Option<load::Programs>,
    loaded: BTreeMap<&'static str, OwnedFd>,
    /// The verifier's whole reasoning in load errors (`EVENTFLUX_PROBE_VERIFIER_LOG=1`).
    verbose: bool,
}

/// How uprobes are attached: `EVENTFLUX_PROBE_ATTACH` (see docs/configuration.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttachMode {
    /// `uprobe_multi` links if the kernel has them, else perf events.
    Auto,
    Multi,
    Perf,
}

/// The environment variable that chooses the [`AttachMode`].
pub const ATTACH_ENV: &str = "EVENTFLUX_PROBE_ATTACH";

impl AttachMode {
    fn from_env() -> Result<AttachMode> {
        let Some(value) = std::env::var_os(ATTACH_ENV) else { return Ok(AttachMode::Auto) };
        match value.to_str() {
            Some("" | "auto") => Ok(AttachMode::Auto),
            Some("multi") => Ok(AttachMode::Multi),
            Some("perf") => Ok(AttachMode::Perf),
            _ => {
                let shown: String = value.to_string_lossy().chars().take(64).collect();
                Err(anyhow!("environment variable {ATTACH_ENV}: `{shown}` is not one of auto, multi, perf"))
            }
        }
    }
}

/// Entries of `STACKS` when profiling (each holds up to 127 frames).
pub const STACK_CAPACITY: u32 = 16384;

/// Whether an error chain says "not permitted" (EPERM). The verifier rejects a program with
/// EACCES, which is not a permission problem, so EACCES does not count.
pub fn is_permission_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::EPERM)) {
            return true;
        }
        cur = err.source();
    }
    false
}

const PERMISSION_HINT: &str = "run as root, or grant CAP_SYS_ADMIN and CAP_SYS_PTRACE, or on Linux 6.10 and later CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (see the README's privileges)";

impl Kernel {
    /// Loads the programs of the given probes (ids from `eventflux_probe_common::probe`), with
    /// their diagnostics on when the log asks for debug output of [`KERNEL_LOG_TARGET`].
    pub fn load(probes: &[u32]) -> Result<Kernel> {
        Kernel::load_with(probes, tracing::enabled!(target: KERNEL_LOG_TARGET, tracing::Level::DEBUG))
    }

    /// Like [`Kernel::load`], with the programs' diagnostics on or off.
    pub fn load_with(probes: &[u32], kernel_log: bool) -> Result<Kernel> {
        Kernel::load_full(probes, kernel_log, false)
    }

    /// Like [`Kernel::load`], for a profiler: CPU samples also record their user and kernel
    /// stacks (`STACKS`).
    pub fn load_profiling(probes: &[u32]) -> Result<Kernel> {
        Kernel::load_full(probes, tracing::enabled!(target: KERNEL_LOG_TARGET, tracing::Level::DEBUG), true)
    }

    fn load_full(probes: &[u32], kernel_log: bool, stacks: bool) -> Result<Kernel> {
        let mut loader = EbpfLoader::new();
        // Stacks only for a profiler; the map cannot have 0 entries.
        let profile = u8::from(stacks);
        loader.override_global("PROFILE_STACKS", &profile, true);
        loader.map_max_entries("STACKS", if stacks { STACK_CAPACITY } else { 1 });
        // EVENTFLUX_PROBE_VERIFIER_LOG=1 puts the verifier's whole reasoning in load errors.
        let verifier_log = std::env::var_os("EVENTFLUX_PROBE_VERIFIER_LOG").is_some_and(|v| v == "1");
        if verifier_log {
            loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
        }
        // The programs' diagnostics (a drop, and why) only when the log asks for debug output
        // of their target: otherwise level 0, which the verifier sees in read-only data, so it
        // prunes every logging branch and the programs pay nothing for them.
        let level: u8 = if kernel_log { aya_log::Level::Debug as u8 } else { 0 };
        loader.override_global(aya_log::LEVEL, &level, false);
        // Span records only for a tracer (who attaches the trace probes and reads `SPANS`).
        let trace: u8 = TRACE_PROBES.iter().any(|p| probes.contains(p)).into();
        loader.override_global("TRACE_SPANS", &trace, true);
        let mode = AttachMode::from_env()?;
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            if is_permission_error(&e) {
                anyhow!("not permitted to load eBPF programs: {PERMISSION_HINT}")
            } else {
                anyhow::Error::new(e).context("cannot load the eBPF programs")
            }
        })?;
        let pmu_type = attach::uprobe_pmu_type()
            .context("this kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe/type)")?;
        let multi = match mode {
            AttachMode::Perf => None,
            AttachMode::Auto | AttachMode::Multi => {
                let probe = load::probe_kernel();
                if let Err(load::Unsupported::Permission(e)) = &probe {
                    bail!("not permitted to load eBPF programs ({e}): {PERMISSION_HINT}");
                }
                let ready = probe.map_err(|e| anyhow!("{e}")).and_then(|()| load::Programs::relocate(OBJECT, &ebpf));
                match ready {
                    Ok(programs) => {
                        Some(Multi { programs: Some(programs), loaded: BTreeMap::new(), verbose: verifier_log })
                    }
                    Err(e) if mode == AttachMode::Multi => {
                        bail!(
                            "{ATTACH_ENV}=multi, but uprobe_multi links cannot be used: {e:#} (unset it, or set it to perf)"
                        )
                    }
                    Err(e) => {
                        tracing::info!(
                            "uprobe_multi links cannot be used ({e:#}): attaching one perf event per site, which takes \
                             about 0.1 s per site to detach"
                        );
                        None
                    }
                }
            }
        };
        let logger = if kernel_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => Some(logger),
                Err(e) => {
                    tracing::warn!("kernel diagnostics unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };
        let mut kernel = Kernel {
            ebpf,
            logger,
            pmu_type,
            loaded: BTreeMap::new(),
            multi,
            slots: Vec::new(),
            links: Vec::new(),
            cpu_period: None,
            refused_total: 0,
            refused: Default::default(),
        };
        for &id in probes {
            kernel.load_program(id, Self::program_name(id)?)?;
        }
        Ok(kernel)
    }

    /// Like [`Kernel::load`], with `program` attached to the sites of probe `id` instead of the
    /// probe's own program: the benchmarks attach the `empty` baseline this way.
    pub fn load_as(id: u32, program: &'static str) -> Result<Kernel> {
        let mut kernel = Kernel::load(&[])?;
        kernel.load_program(id, program)?;
        Ok(kernel)
    }

    /// The program of probe `id`: its own, or `empty` for a control probe, which never fires
    /// and is attached to only to raise its semaphore.
    fn program_name(id: u32) -> Result<&'static str> {
        match PROBES.get(id as usize) {
            Some(p) if p.class == Class::Control => Ok("empty"),
            Some(p) => Ok(p.name),
            None => Err(anyhow!("no probe with id {id}")),
        }
    }

    fn load_program(&mut self, id: u32, name: &'static str) -> Result<()> {
        if self.loaded.contains_key(&id) {
            return Ok(());
        }
        if self.loaded.values().any(|n| *n == name) {
            self.loaded.insert(id, name);
            return Ok(());
        }
        if let Some(multi) = &mut self.multi {
            let programs = multi
                .programs
                .as_ref()
                .ok_or_else(|| anyhow!("cannot load program {name} after a map was handed over (a bug)"))?;
            let fd = programs.load(name, multi.verbose)?;
            multi.loaded.insert(name, fd);
            self.loaded.insert(id, name);
            return Ok(());
        }
        let program: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
            .try_into()
            .with_context(|| format!("program {name} is not a uprobe"))?;
        program.load().map_err(|e| load_error(name, e))?;
        self.loaded.insert(id, name);
        Ok(())
    }

    /// Attaches the loaded programs to every site of their probes in `binaries` (the files of
    /// process `pid`), with a pid filter. Sites of probes whose program is not loaded are left.
    /// All or nothing: if one site fails, those attached before it are detached again and
    /// their slots freed.
    pub fn attach_process(&mut self, pid: u32, binaries: &[BinaryProbes]) -> Result<AttachReport> {
        let started = Instant::now();
        let mut report = AttachReport { attach: self.attach_kind(), ..AttachReport::default() };
        let mut cookies = Vec::new();
        let links = self.links.len();
        if let Err(e) = self.attach_sites(pid, binaries, &mut report, &mut cookies) {
            for c in cookies {
                self.slots[c as usize] = None;
            }
            attach::detach(self.links.split_off(links).into_iter().map(|(_, a)| a).collect());
            return Err(e);
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    fn attach_sites(
        &mut self,
        pid: u32,
        binaries: &[BinaryProbes],
        report: &mut AttachReport,
        cookies: &mut Vec<u32>,
    ) -> Result<()> {
        let mut probes = BTreeSet::new();
        let image = usdt::verify::ProcessImage::open(pid)?;
        let mut pending: BTreeMap<&'static str, Vec<(u32, MultiSite)>> = BTreeMap::new();
        for binary in binaries {
            for note in binary.notes.notes.iter().filter(|n| n.provider == PROVIDER) {
                let Some(id) = probe::NAMES.iter().position(|n| *n == note.name).map(|i| i as u32) else {
                    report.skipped.push(format!("{}: unknown probe {} (newer ABI?)", binary.path.display(), note.name));
                    continue;
                };
                let Some(&name) = self.loaded.get(&id) else { continue };
                report.expected.insert(id);
                if let Err(refusal) = image.check(&binary.path, &binary.opened_at, note) {
                    report.refused.push(RefusedSite {
                        pid,
                        binary: binary.path.clone(),
                        probe: format!("{}:{}", note.provider, note.name),
                        offset: note.offset,
                        reason: refusal.to_string(),
                    });
                    continue;
                }
                let what = format!("{}:{} at {:#x}", binary.path.display(), note.name, note.offset);
                let spec = match note
                    .arg_specs
                    .as_deref()
                    .ok_or_else(|| note.arg_error.clone().unwrap_or_default())
                    .and_then(|args| usdt::spec::site_spec(id, args))
                {
                    Ok(spec) => SiteSpec { pid, ..spec },
                    Err(e) => {
                        report.skipped.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                let cookie = match self.slots.iter().position(Option::is_none) {
                    Some(free) => free as u32,
                    None if (self.slots.len() as u32) < MAX_SITES => {
                        self.slots.push(None);
                        self.slots.len() as u32 - 1
                    }
                    None => bail!("more than {MAX_SITES} probe sites attached at once: not supported"),
                };
                self.spec_map()?.set(cookie, spec, 0).context("cannot write the site spec map")?;
                self.slots[cookie as usize] = Some(AttachedSite { pid, binary: binary.path.clone(), probe: id });
                cookies.push(cookie);
                let site =
                    MultiSite { offset: note.offset, semaphore_offset: note.semaphore_offset, cookie: cookie.into() };
                pending.entry(name).or_default().push((id, site));
            }
            // One link per program for this file (see `load.rs`), or one perf event per site.
            for (name, sites) in std::mem::take(&mut pending) {
                let fd = self.program_fd(name).with_context(|| format!("program {name} is not loaded"))?;
                let what = || {
                    let probes: BTreeSet<&str> = sites.iter().map(|(id, _)| probe::NAMES[*id as usize]).collect();
                    format!("{}:{}", binary.path.display(), probes.into_iter().collect::<Vec<_>>().join(","))
                };
                let perf = self.multi.is_none();
                let refused = |e: std::io::Error, what: String| {
                    // EACCES and EPERM (the error's text carries the call, so go by its kind).
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        crate::kernel::privileges::attach_refused(&what, perf)
                    } else {
                        anyhow!("cannot attach to {what}: {e}")
                    }
                };
                // On a failure, what this group attached is dropped (detached) with `attached`,
                // and the caller detaches the groups before it.
                let mut attached = Vec::new();
                if self.multi.is_some() {
                    let multi: Vec<MultiSite> = sites.iter().map(|(_, s)| *s).collect();
                    attached.push(
                        attach::attach_multi(fd, &binary.opened_at, pid, &multi).map_err(|e| {
                            let what = format!("{} ({} sites)", what(), multi.len());
                            if e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::ESRCH) {
                                refused(e, what)
                            } else {
                                anyhow!(
                                    "cannot attach to {what}: bpf(BPF_LINK_CREATE, uprobe_multi): {e} (EVENTFLUX_PROBE_ATTACH=perf attaches through perf events instead)"
                                )
                            }
                        })?,
                    );
                } else {
                    for (_, site) in &sites {
                        let at = Site {
                            path: &binary.opened_at,
                            offset: site.offset,
                            semaphore_offset: site.semaphore_offset,
                            pid: Some(pid),
                            cookie: site.cookie,
                        };
                        attached.push(
                            attach::attach(fd, self.pmu_type, &at)
                                .map_err(|e| refused(e, format!("{} at {:#x}", what(), site.offset)))?,
                        );
                    }
                }
                self.links.extend(attached.into_iter().map(|a| (pid, a)));
                probes.extend(sites.iter().map(|(id, _)| *id));
                report.sites += sites.len();
            }
        }
        report.probes = probes.len();
        self.refused_total += report.refused.len() as u64;
        self.refused.extend(report.refused.iter().cloned());
        while self.refused.len() > REFUSED_KEPT {
            self.refused.pop_front();
        }
        Ok(())
    }

    /// Sites refused since load, and the latest of them (see [`RefusedSite`]).
    pub fn refused(&self) -> (u64, Vec<RefusedSite>) {
        (self.refused_total, self.refused.iter().cloned().collect())
    }

    /// Starts CPU sampling: the `cpu_sample` program on a CPU-clock perf event of every online
    /// CPU, one sample per `period` of CPU time, whoever runs. Only the processes given to
    /// [`Kernel::sample_cpu_of`] are counted. Runs until the `Kernel` is dropped.
    pub fn sample_cpu(&mut self, period: Duration) -> Result<()> {
        if self.cpu_period.is_some() {
            return Ok(());
        }
        let cpus =
            aya::util::online_cpus().map_err(|(what, e)| anyhow!("cannot list the online CPUs ({what}): {e}"))?;
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut("cpu_sample")
            .ok_or_else(|| anyhow!("the eBPF object has no program cpu_sample"))?
            .try_into()
            .context("program cpu_sample is not a perf event program")?;
        // Loaded already when an earlier start failed on some CPU.
        if program.fd().is_err() {
            program.load().map_err(|e| load_error("cpu_sample", e))?;
        }
        let ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
        for cpu in cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(ns),
                    false,
                )
                .map_err(|e| {
                    if is_permission_error(&e) {
                        anyhow!("not permitted to sample CPUs: {PERMISSION_HINT} (CAP_PERFMON for perf events)")
                    } else {
                        anyhow!("cannot start CPU sampling on CPU {cpu}: {e}")
                    }
                })?;
        }
        self.cpu_period = Some(period);
        Ok(())
    }

    /// CPU time one sample stands for, when sampling.
    pub fn cpu_period(&self) -> Option<Duration> {
        self.cpu_period
    }

    /// Counts process `pid`'s CPU samples from now on (`on`), or no longer.
    pub fn sample_cpu_of(&mut self, pid: u32, on: bool) -> Result<()> {
        let map = self.ebpf.map_mut("CPU_TARGETS").ok_or_else(|| anyhow!("no map CPU_TARGETS"))?;
        let mut map: HashMap<&mut MapData, u32, u32> = HashMap::try_from(map).context("map CPU_TARGETS")?;
        if on {
            map.insert(pid, cpu_target::COUNT, 0).context("cannot write map CPU_TARGETS")?;
        } else {
            match map.remove(&pid) {
                Ok(()) => {}
                // Not sampled (never attached, or forgotten already): nothing to remove.
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(anyhow::Error::new(e).context("cannot remove from map CPU_TARGETS")),
            }
        }
        Ok(())
    }

    pub fn cpu_samples(&self) -> Result<HashMap<&MapData, CpuKey, u64>> {
        HashMap::try_from(self.map("CPU_SAMPLES")?).context("map CPU_SAMPLES")
    }

    /// The sample stacks (instruction pointers, innermost first), by id.
    pub fn stacks(&self) -> Result<StackTraceMap<&MapData>> {
        StackTraceMap::try_from(self.map("STACKS")?).context("map STACKS")
    }

    /// Detaches everything (also done on drop).
    ///
    /// The kernel's time more than ours: each closed attachment waits for RCU grace periods
    /// (see `load.rs`); [`attach::detach`] closes them in parallel.
    pub fn detach_all(&mut self) {
        attach::detach(self.take_attachments());
    }

    /// The attachments, handed over for the caller to detach ([`attach::detach`]) without
    /// holding whatever lock guards this `Kernel` meanwhile; their slots are free.
    pub fn take_attachments(&mut self) -> Vec<Attachment> {
        self.slots.iter_mut().for_each(|slot| *slot = None);
        self.links.drain(..).map(|(_, a)| a).collect()
    }

    /// Process `pid`'s attachments, handed over like [`Kernel::take_attachments`]: the other
    /// targets stay attached, and the slots are free for the next attach.
    pub fn take_attachments_of(&mut self, pid: u32) -> Vec<Attachment> {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|site| site.pid == pid) {
                *slot = None;
            }
        }
        let (taken, kept) = std::mem::take(&mut self.links).into_iter().partition(|(p, _)| *p == pid);
        self.links = kept;
        taken.into_iter().map(|(_, a)| a).collect::<Vec<_>>()
    }

    /// The sites attached now.
    pub fn sites(&self) -> impl Iterator<Item = &AttachedSite> {
        self.slots.iter().flatten()
    }

    /// The descriptor of loaded program `name`: ours for `uprobe_multi`, else aya's.
    fn program_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        if let Some(fd) = self.multi.as_ref().and_then(|m| m.loaded.get(name)) {
            return Some(fd.as_fd());
        }
        self.ebpf.program(name)?.fd().ok().map(|fd| fd.as_fd())
    }

    /// No more programs are loaded once a map leaves `ebpf`: the taker may drop it and its
    /// descriptor number be reused, which relocated code would then point at.
    fn forget_relocations(&mut self) {
        if let Some(multi) = &mut self.multi {
            multi.programs = None;
        }
    }

    /// How the uprobes are attached: `"uprobe_multi"` links or `"perf_event"`s.
    pub fn attach_kind(&self) -> &'static str {
        if self.multi.is_some() { "uprobe_multi" } else { "perf_event" }
    }

    /// Sites attached now.
    pub fn attached(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Site slots in use or free for reuse (grows only when every slot is taken).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    fn spec_map(&mut self) -> Result<Array<&mut MapData, SiteSpec>> {
        let map = self.ebpf.map_mut("SPECS").ok_or_else(|| anyhow!("no map SPECS"))?;
        Array::try_from(map).context("map SPECS")
    }

    pub fn counters(&self) -> Result<PerCpuHashMap<&MapData, CounterKey, u64>> {
        PerCpuHashMap::try_from(self.map("COUNTERS")?).context("map COUNTERS")
    }

    pub fn gauges(&self) -> Result<HashMap<&MapData, CounterKey, u64>> {
        HashMap::try_from(self.map("GAUGES")?).context("map GAUGES")
    }

    pub fn hists(&self) -> Result<HashMap<&MapData, HistKey, Hist>> {
        HashMap::try_from(self.map("HISTS")?).context("map HISTS")
    }

    /// Drop counters summed over CPUs, by `drop::*` index.
    pub fn drops(&self) -> Result<[u64; drop::COUNT as usize]> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map("DROPS")?).context("map DROPS")?;
        let mut out = [0; drop::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0).with_context(|| format!("cannot read map DROPS[{i}]"))?.iter().sum();
        }
        Ok(out)
    }

    /// Removes every map entry of process `pid` (a target that is gone): its series disappear
    /// and a later process that gets the same pid starts from zero. Returns how many.
    pub fn forget_pid(&mut self, pid: u32) -> Result<usize> {
        self.refused.retain(|r| r.pid != pid);
        // The three maps differ in kind and value type but are pruned alike: collect the
        // process's keys (a failed read is an error, not a skipped key), then remove them.
        macro_rules! prune {
            ($name:literal, $map:ident, $key:ty, $value:ty) => {{
                let map = self.ebpf.map_mut($name).ok_or_else(|| anyhow!(concat!("no map ", $name)))?;
                let mut map: $map<&mut MapData, $key, $value> = $map::try_from(map).context(concat!("map ", $name))?;
                let keys: Vec<$key> =
                    map.keys().filter(|k| k.as_ref().map_or(true, |k| k.pid == pid)).collect::<Result<_, _>>()?;
                for k in &keys {
                    map.remove(k).context(concat!("cannot remove from map ", $name))?;
                }
                keys.len()
            }};
        }
        let slots = {
            let map = self.ebpf.map_mut("SLOTS").ok_or_else(|| anyhow!("no map SLOTS"))?;
            let mut map: HashMap<&mut MapData, u32, SlotRef> = HashMap::try_from(map).context("map SLOTS")?;
            let tids: Vec<u32> = map
                .iter()
                .filter(|e| e.as_ref().map_or(true, |(_, r)| r.pid == pid))
                .map(|e| e.map(|(tid, _)| tid))
                .collect::<Result<_, _>>()?;
            for tid in &tids {
                map.remove(tid).context("cannot remove from map SLOTS")?;
            }
            tids.len()
        };
        self.sample_cpu_of(pid, false)?;
        Ok(prune!("COUNTERS", PerCpuHashMap, CounterKey, u64)
            + prune!("GAUGES", HashMap, CounterKey, u64)
            + prune!("HISTS", HashMap, HistKey, Hist)
            + prune!("CPU_SAMPLES", HashMap, CpuKey, u64)
            + slots)
    }

    /// Takes the reader of the programs' diagnostics (once; `None` unless the log asked for
    /// them at load): `flush` it regularly.
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    /// Takes the span ring buffer (once), for a tracer.
    pub fn take_spans(&mut self) -> Result<RingBuf<MapData>> {
        self.forget_relocations();
        let map = self.ebpf.take_map("SPANS").ok_or_else(|| anyhow!("map SPANS already taken"))?;
        RingBuf::try_from(map).context("map SPANS")
    }

    /// Takes the registration ring buffer (once) for the events task.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        self.forget_relocations();
        let map = self.ebpf.take_map("EVENTS").ok_or_else(|| anyhow!("map EVENTS already taken"))?;
        RingBuf::try_from(map).context("map EVENTS")
    }

    /// The loaded programs' names.
    fn program_names(&self) -> BTreeSet<&'static str> {
        let mut names: BTreeSet<&'static str> = self.loaded.values().copied().collect();
        if self.cpu_period.is_some() {
            names.insert("cpu_sample");
        }
        names
    }

    /// Per-program kernel statistics: (name, run count, run time), for loaded programs.
    pub fn program_stats(&self) -> Vec<(&'static str, u64, Duration)> {
        let mut out = Vec::new();
        let names = self.program_names();
        for name in names {
            let Some(fd) = self.program_fd(name) else { continue };
            if let Ok(info) = load::prog_info(fd) {
                out.push((name, info.run_count, Duration::from_nanos(info.run_time_ns)));
            }
        }
        out
    }

    /// Instructions the kernel kept of each loaded program after verifying it (xlated).
    pub fn program_instructions(&self) -> Vec<(&'static str, u32)> {
        self.program_names()
            .into_iter()
            .filter_map(|name| Some((name, load::prog_info(self.program_fd(name)?).ok()?.xlated_insns)))
            .collect()
    }

    /// (map name, entries, capacity) of the bounded maps.
    pub fn map_usage(&self) -> Result<Vec<(&'static str, usize, u32)>> {
        Ok(vec![
            ("counters", self.counters()?.keys().count(), capacity(self.map("COUNTERS")?)?),
            ("gauges", self.gauges()?.keys().count(), capacity(self.map("GAUGES")?)?),
            ("histograms", self.hists()?.keys().count(), capacity(self.map("HISTS")?)?),
            ("cpu_samples", self.cpu_samples()?.keys().count(), capacity(self.map("CPU_SAMPLES")?)?),
            (
                "cpu_slots",
                HashMap::<_, u32, SlotRef>::try_from(self.map("SLOTS")?)?.keys().count(),
                capacity(self.map("SLOTS")?)?,
            ),
            ("sites", self.attached(), MAX_SITES),
        ])
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn load_error(name: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    if is_permission_error(&e) {
        anyhow!("not permitted to load eBPF program {name}: {PERMISSION_HINT}")
    } else {
        let log = match &e {
            aya::programs::ProgramError::LoadError { verifier_log, .. } => format!("\n{verifier_log}"),
            _ => String::new(),
        };
        anyhow!("the kernel rejected eBPF program {name}: {e}{log}")
    }
}

fn capacity(map: &aya::maps::Map) -> Result<u32> {
    let data = match map {
        aya::maps::Map::PerCpuHashMap(d) | aya::maps::Map::HashMap(d) => d,
        _ => bail!("not a hash map"),
    };
    Ok(data.info().context("cannot read a map's info")?.max_entries())
}
