//! Finding what to observe: a process's files that carry eventflux probes, and (for
//! `--follow`) the next process running the executable a finished target ran.

pub mod container;
pub mod select;
pub mod target;
pub mod usdt;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;

use eventflux_abi::PROVIDER;
use target::Target;
use usdt::BinaryProbes;

/// A process that runs but carries no eventflux probe.
#[derive(Debug, thiserror::Error)]
#[error(
    "process {pid} has no {PROVIDER} USDT probes (is it an EventFlux engine built with usdt-markers? `eventflux-probe list --pid {pid}` shows what it has)"
)]
pub struct NoProbes {
    pub pid: u32,
}

/// The target, held by identity, and its files that carry eventflux probes. Callers check the
/// privileges first (`kernel::privileges::check`): reading another process's files needs them. Fails with one
/// clear line if the pid does not exist, has exited, cannot be read or carries no such probe
/// (the errors are `TargetError` and [`NoProbes`] underneath, for callers that tell them apart).
pub fn eventflux_binaries(pid: u32) -> Result<(Target, Vec<BinaryProbes>)> {
    let target = Target::open(pid)?;
    let mut warnings = Vec::new();
    let binaries = usdt::probes_in_process(pid, &mut warnings)?;
    let with_probes: Vec<BinaryProbes> =
        binaries.into_iter().filter(|b| b.notes.notes.iter().any(|n| n.provider == PROVIDER)).collect();
    if with_probes.is_empty() {
        return Err(NoProbes { pid }.into());
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok((target, with_probes))
}

/// Live processes (not zombies) whose executable is `exe`, started after `started_after`
/// (clock ticks after boot: a successor, not a process that ran alongside the old one),
/// except `skip` and this process; newest first.
pub fn processes_running(exe: &Path, started_after: u64, skip: &BTreeSet<u32>) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found: Vec<(u64, u32)> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && !skip.contains(pid))
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // Field 3 (state) is fields[0]; field 22 (start time) is fields[19].
            if matches!(fields.first(), Some(&"Z" | &"X")) {
                return None;
            }
            let start: u64 = fields.get(19)?.parse().ok()?;
            (start > started_after).then_some((start, pid))
        })
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    found.into_iter().map(|(_, pid)| pid).collect()
}

/// A user-space process of the host, as a scan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Start time, clock ticks after boot: with the pid, the process's identity.
    pub start_ticks: u64,
}

/// Every live user-space process but this one (kernel threads and zombies left out).
pub fn processes() -> Vec<Process> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Field N is f[N - 3]: state 3, flags 9, start time 22.
            let flags: u64 = f.get(6)?.parse().ok()?;
            if matches!(f.first(), Some(&"Z" | &"X")) || flags & PF_KTHREAD != 0 {
                return None;
            }
            Some(Process { pid, start_ticks: f.get(19)?.parse().ok()? })
        })
        .collect()
}

/// Like [`eventflux_binaries`] for a node scan: no privilege check (done once at start), files
/// parsed once per `cache`, and `Ok(None)` for a process without eventflux probes.
pub fn eventflux_binaries_cached(pid: u32, cache: &usdt::NotesCache) -> Result<Option<(Target, Vec<BinaryProbes>)>> {
    let mut warnings = Vec::new();
    let binaries = usdt::probes_in_process_cached(pid, &mut warnings, Some(cache))?;
    let with_probes: Vec<BinaryProbes> =
        binaries.into_iter().filter(|b| b.notes.notes.iter().any(|n| n.provider == PROVIDER)).collect();
    if with_probes.is_empty() {
        return Ok(None);
    }
    for w in warnings {
        tracing::debug!(pid, "{w}");
    }
    // Opened after reading the files: a process that exited meanwhile fails here, not later.
    let target = Target::open(pid)?;
    Ok(Some((target, with_probes)))
}
