//! What attaching needs from the kernel, checked before trying, so that a missing capability
//! is named instead of surfacing as an `EACCES` from deep inside an attach.
//!
//! - CAP_BPF: load the programs and create their maps.
//! - CAP_PERFMON: programs of the tracing kind.
//! - CAP_SYS_PTRACE: read another process's files through `/proc/PID/root` and filter a uprobe
//!   to its pid (the kernel's ptrace access check, which a tracer with fewer capabilities than
//!   its target fails without it).
//! - CAP_SYS_ADMIN, only where uprobes are attached through perf events (kernels before 6.10,
//!   or `EVENTFLUX_PROBE_ATTACH=perf`; see `load.rs`): `perf_event_open` of a uprobe wants it
//!   on Linux 6.16 and later (and the stable kernels the change went back to: "perf: Revert to
//!   requiring CAP_SYS_ADMIN for uprobes", 2025); from 5.8 until then CAP_PERFMON was enough.
//!   `uprobe_multi` links (6.10 and later, the default) need only CAP_BPF and CAP_PERFMON, so
//!   the minimal set there is CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE. CAP_SYS_ADMIN also
//!   covers CAP_BPF and CAP_PERFMON.
//!
//! The start check asks for CAP_SYS_PTRACE, and for CAP_BPF and CAP_PERFMON unless
//! CAP_SYS_ADMIN stands in for them; whether the kernel also wants CAP_SYS_ADMIN (perf events)
//! shows at the first attach, whose refusal [`attach_refused`] then explains. CAP_SYS_ADMIN
//! also turns on the kernel's BPF run-time statistics (`eventflux_probe_program_run*`); without
//! it those stay 0.

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
        "not permitted to attach: missing {} (CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON); run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (and CAP_SYS_ADMIN on kernels before 6.10)",
        missing.join(", ")
    )
}

/// The error for an attach refused with EACCES or EPERM: a uprobe `perf_event_open` (`perf`),
/// or a `uprobe_multi` link.
pub fn attach_refused(what: &str, perf: bool) -> anyhow::Error {
    match effective() {
        _ if !perf => anyhow!(
            "not permitted to attach to {what}: is a security module refusing BPF links? (see its audit log; EVENTFLUX_PROBE_ATTACH=perf attaches through perf events instead)"
        ),
        Some(eff) if !has(eff, CAP_SYS_ADMIN) => anyhow!(
            "not permitted to attach uprobes: missing CAP_SYS_ADMIN (this kernel allows uprobe perf events to CAP_SYS_ADMIN only, as Linux 6.16 and later do); run as root, or grant CAP_SYS_ADMIN and CAP_SYS_PTRACE"
        ),
        _ => anyhow!("not permitted to attach to {what} (is a security module refusing perf events?)"),
    }
}
