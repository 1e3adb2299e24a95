//! Finding what to observe: a process's files that carry eventflux probes, and (for
//! `--follow`) the next process running the executable a finished target ran.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;

use crate::bpf::PROVIDER;
use crate::target::Target;
use crate::usdt::{self, BinaryProbes};

/// A process that runs but carries no eventflux probe.
#[derive(Debug, thiserror::Error)]
#[error(
    "process {pid} has no {PROVIDER} USDT probes (is it an EventFlux engine built with usdt-markers? `eventflux-probe list --pid {pid}` shows what it has)"
)]
pub struct NoProbes {
    pub pid: u32,
}

/// The target, held by identity, and its files that carry eventflux probes. Fails with one
/// clear line if the pid does not exist, has exited, cannot be read or carries no such probe
/// (the errors are `TargetError` and [`NoProbes`] underneath, for callers that tell them apart).
pub fn eventflux_binaries(pid: u32) -> Result<(Target, Vec<BinaryProbes>)> {
    crate::privileges::check()?;
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

/// The container a process runs in, from its cgroup path (cgroup v2 `0::/…`, or the v1
/// lines): the container runtime's 64-hex-digit id in the last component that has one
/// (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// or a bare `<id>` under cgroupfs), and the Kubernetes pod UID when a component names one
/// (`kubepods-…-pod<uid>.slice`, `pod<uid>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub pod_uid: Option<String>,
    /// The cgroup path it was read from.
    pub cgroup: String,
}

/// Parses `/proc/PID/cgroup` text; `None` outside a container.
pub fn container_from_cgroup(text: &str) -> Option<Container> {
    // The unified hierarchy first, then every v1 line: on hybrid hosts the runtime may manage
    // only the v1 controllers, and a v1 host's first line may be a controller it leaves alone.
    let mut paths: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("0::")).collect();
    paths.extend(text.lines().filter(|l| !l.starts_with("0::")).filter_map(|l| l.splitn(3, ':').nth(2)));
    paths.into_iter().find_map(|p| container_in(p.trim()))
}

fn container_in(path: &str) -> Option<Container> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let id = path.split('/').rev().find_map(|component| {
        let c = component.strip_suffix(".scope").unwrap_or(component);
        let c = ["docker-", "cri-containerd-", "crio-", "libpod-", "containerd-"]
            .iter()
            .find_map(|p| c.strip_prefix(p))
            .unwrap_or(c);
        is_id(c).then(|| c.to_owned())
    })?;
    let pod_uid = path.split('/').find_map(|component| {
        let c = component.strip_suffix(".slice").unwrap_or(component);
        let uid = c.rsplit_once("-pod").map(|(_, u)| u).or_else(|| c.strip_prefix("pod"))?;
        let uid = uid.replace('_', "-");
        (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
    });
    Some(Container { id, pod_uid, cgroup: path.to_owned() })
}

/// The container process `pid` runs in, if any.
pub fn container_of(pid: u32) -> Option<Container> {
    container_from_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
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

/// Whether `pattern` is a glob [`glob_match`] can use for `what` (`--exe`, `--container`):
/// only `*` and `?` are special, so brackets and braces (character classes, alternatives in
/// other globs) are refused rather than matched literally; an `--exe` glob must be able to
/// match an absolute path.
pub fn check_glob(what: &str, pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err(format!("{what}: an empty pattern matches nothing"));
    }
    if let Some(c) = pattern.chars().find(|c| matches!(c, '[' | ']' | '{' | '}')) {
        return Err(format!(
            "{what} `{pattern}`: `{c}` is not supported (only * and ? are wildcards, e.g. */eventflux or /usr/bin/eventflux-*)"
        ));
    }
    if what == "--exe" && !(pattern.starts_with('/') || pattern.starts_with('*')) {
        return Err(format!(
            "--exe `{pattern}` can never match: executable paths are absolute (start it with / or *, e.g. */{pattern})"
        ));
    }
    Ok(())
}

/// `*` (any run of characters, `/` included) and `?` (one character) glob matching.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_from_cgroup_paths() {
        let id = "4f1e2d3c4b5a69788796a5b4c3d2e1f04f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let k8s = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c8e5f7a_1b2c_4d3e_8f9a_0b1c2d3e4f5a.slice/cri-containerd-{id}.scope\n"
        );
        let c = container_from_cgroup(&k8s).expect("container");
        assert_eq!(c.id, id);
        assert_eq!(c.pod_uid.as_deref(), Some("0c8e5f7a-1b2c-4d3e-8f9a-0b1c2d3e4f5a"));
        let docker = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(container_from_cgroup(&docker).map(|c| (c.id, c.pod_uid)), Some((id.to_owned(), None)));
        let cgroupfs = format!("12:memory:/kubepods/besteffort/pod0c8e5f7a-1b2c-4d3e-8f9a-0b1c2d3e4f5a/{id}\n");
        let c = container_from_cgroup(&cgroupfs).expect("cgroupfs");
        assert_eq!((c.id.as_str(), c.pod_uid.as_deref()), (id, Some("0c8e5f7a-1b2c-4d3e-8f9a-0b1c2d3e4f5a")));
        assert_eq!(container_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        // Hybrid: the unified line says nothing, a v1 line names the container.
        let hybrid = format!("12:rdma:/\n4:memory:/docker/{id}\n0::/\n");
        assert_eq!(container_from_cgroup(&hybrid).map(|c| c.id), Some(id.to_owned()));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*/eventflux-*", "/usr/bin/eventflux-demo"));
        assert!(glob_match("/opt/?ngine", "/opt/engine"));
        assert!(!glob_match("/opt/?ngine", "/opt/eengine"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acd"));
    }
}
