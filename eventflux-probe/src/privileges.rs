//! What attaching needs from the kernel, checked before trying, so that a missing capability
//! is named instead of surfacing as an `EACCES` from deep inside an attach.
//!
//! - CAP_BPF: load the programs and create their maps.
//! - CAP_PERFMON: programs of the tracing kind.
//! - CAP_SYS_PTRACE: read another process's files through `/proc/PID/root` and filter a uprobe
//!   to its pid (the kernel's ptrace access check, which a tracer with fewer capabilities than
//!   its target fails without it).
//! - CAP_SYS_ADMIN, for `perf_event_open` of a uprobe on Linux 6.16 and later (and the stable
//!   kernels the change went back to: "perf: Revert to requiring CAP_SYS_ADMIN for uprobes",
//!   2025). From 5.8 until then CAP_PERFMON was enough. No sysctl changes this; the kernel
//!   version does. CAP_SYS_ADMIN also covers CAP_BPF and CAP_PERFMON, so on current kernels the
//!   minimal set is CAP_SYS_ADMIN and CAP_SYS_PTRACE.
//!
//! The start check asks for CAP_SYS_PTRACE, and for CAP_BPF and CAP_PERFMON unless
//! CAP_SYS_ADMIN stands in for them; whether the kernel also wants CAP_SYS_ADMIN shows at the
//! first attach, whose refusal [`attach_refused`] then explains. CAP_SYS_ADMIN also turns on the
//! kernel's BPF run-time statistics (`eventflux_probe_program_run*`); without it those stay 0.

use anyhow::{Result, anyhow, bail};

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from `/proc/self/status`.
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

fn has(eff: u64, cap: u32) -> bool {
    eff & (1u64 << cap) != 0
}

/// The capabilities attaching needs that this process lacks, by name (CAP_SYS_ADMIN only
/// where it stands in for CAP_BPF and CAP_PERFMON; see the module docs).
pub fn missing() -> Vec<&'static str> {
    let Some(eff) = effective() else { return Vec::new() };
    let mut need = vec![(CAP_SYS_PTRACE, "CAP_SYS_PTRACE")];
    if !has(eff, CAP_SYS_ADMIN) {
        need.extend([(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]);
    }
    need.into_iter().filter(|(bit, _)| !has(eff, *bit)).map(|(_, name)| name).collect()
}

/// Fails with one line naming what is missing.
pub fn check() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "not permitted to attach: missing {} (CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, and Linux 6.16 and later need it for uprobes anyway); run as root, or grant CAP_SYS_ADMIN and CAP_SYS_PTRACE",
        missing.join(", ")
    )
}

/// The error for a uprobe `perf_event_open` refused with EACCES or EPERM.
pub fn attach_refused(what: &str) -> anyhow::Error {
    match effective() {
        Some(eff) if !has(eff, CAP_SYS_ADMIN) => anyhow!(
            "not permitted to attach uprobes: missing CAP_SYS_ADMIN (this kernel allows uprobe perf events to CAP_SYS_ADMIN only, as Linux 6.16 and later do); run as root, or grant CAP_SYS_ADMIN and CAP_SYS_PTRACE"
        ),
        _ => anyhow!("not permitted to attach to {what} (is a security module refusing perf events?)"),
    }
}
