//! Shared by the commands that attach: find the target's eventflux probes, or say clearly why
//! there are none.

use anyhow::{Result, bail};
use eventflux_probe::bpf::PROVIDER;
use eventflux_probe::budget::Budget;
use eventflux_probe::target::Target;
use eventflux_probe::usdt::{self, BinaryProbes};

/// The target, held by identity, and its files that carry eventflux probes. Fails with one
/// clear line if the pid does not exist, has exited, cannot be read or carries no such probe.
pub fn eventflux_binaries(pid: u32) -> Result<(Target, Vec<BinaryProbes>)> {
    eventflux_probe::privileges::check()?;
    let target = Target::open(pid)?;
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
    Ok((target, with_probes))
}

/// What this observer asks of the engine (see `eventflux_probe::budget`).
#[derive(Debug, clap::Args)]
pub struct BudgetArgs {
    /// Sampled batches per second per engine thread (16, 64, 256, 1024, 4096 or 16384; other
    /// values round down to one of these). Latency histograms come from the sampled batches.
    #[arg(long, value_name = "N")]
    sample_rate: Option<u32>,
    /// Time every batch instead of sampling: a deep dive that costs the engine several probe
    /// hits per batch while attached.
    #[arg(long, conflicts_with = "sample_rate")]
    every_batch: bool,
    /// How often the engine hands over its counts (10ms to 2s; rounds down to 10, 20, 50, 100,
    /// 250, 500 ms, 1 s or 2 s). Counters lag by at most this much.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    flush_interval: std::time::Duration,
}

impl BudgetArgs {
    /// The budget asked for, with `default_rate` when no rate was given.
    pub fn budget(&self, default_rate: Option<u32>) -> Result<Budget> {
        let rate = if self.every_batch { None } else { self.sample_rate.or(default_rate) };
        Budget::new(rate, self.flush_interval)
    }
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
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is too long a duration"))
}
