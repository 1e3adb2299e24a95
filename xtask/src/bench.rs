//! `cargo xtask bench`: the figures in BENCHMARKS.md, each a ratio against a baseline measured
//! in the same run so that machine noise cancels out.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{build_release, root, sh};

pub fn run(events: u64, rounds: usize) -> Result<()> {
    sh(Command::new("cargo").args(["bench", "-p", "usdt-markers", "--bench", "detached"]))?;
    throughput(events, rounds)
}

/// Demo throughput at `--rate 0` with markers compiled in (detached) against compiled out.
fn throughput(events: u64, rounds: usize) -> Result<()> {
    build_release()?;
    let baseline_dir = root().join("target").join("no-markers");
    sh(Command::new("cargo")
        .args(["build", "--release", "-p", "eventflux-demo", "--no-default-features", "--target-dir"])
        .arg(&baseline_dir))?;
    let with = root().join("target/release/eventflux-demo");
    let without = baseline_dir.join("release/eventflux-demo");
    let mut with_rates = Vec::new();
    let mut without_rates = Vec::new();
    for _ in 0..rounds {
        without_rates.push(demo_rate(&without, events)?);
        with_rates.push(demo_rate(&with, events)?);
    }
    let (w, wo) = (median(with_rates), median(without_rates));
    println!("demo throughput (--rate 0, --events {events}, {rounds} alternating rounds, median):");
    println!("  markers compiled out  {:.0} events/s", wo);
    println!("  markers compiled in   {:.0} events/s (detached)", w);
    println!("  ratio                 {:.4}  (target >= 0.995)", w / wo);
    Ok(())
}

fn demo_rate(binary: &Path, events: u64) -> Result<f64> {
    let out = Command::new(binary)
        .args(["--events", &events.to_string(), "--rate", "0"])
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("demo summary is not JSON")?;
    v["events_per_sec"].as_f64().context("no events_per_sec in the summary")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
