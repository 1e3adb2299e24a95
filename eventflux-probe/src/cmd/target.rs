//! Shared by the commands that attach: find the target's eventflux probes, or say clearly why
//! there are none.

use anyhow::{Result, bail};
use eventflux_probe::bpf::PROVIDER;
use eventflux_probe::usdt::{self, BinaryProbes};

/// The target's files that carry eventflux probes. Fails with one clear line if the pid does
/// not exist or carries no such probe.
pub fn eventflux_binaries(pid: u32) -> Result<Vec<BinaryProbes>> {
    let mut warnings = Vec::new();
    let binaries = usdt::probes_in_process(pid, &mut warnings)?;
    let with_probes: Vec<BinaryProbes> =
        binaries.into_iter().filter(|b| b.notes.notes.iter().any(|n| n.provider == PROVIDER)).collect();
    if with_probes.is_empty() {
        bail!(
            "process {pid} has no {PROVIDER} USDT probes (is it an EventFlux engine built with usdt-markers? `eventflux-probe list --pid {pid}` shows what it has)"
        );
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(with_probes)
}

/// Parses `10s`, `500ms`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("`{s}` is not a duration (try 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{s}` is not a positive duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}
