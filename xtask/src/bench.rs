//! `cargo xtask bench`: the figures in BENCHMARKS.md, each a ratio against a baseline measured
//! in the same run so that machine noise cancels out.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{build_release, root, sh};

pub fn run(events: u64, rounds: usize) -> Result<()> {
    sh(Command::new("cargo").args(["bench", "-p", "usdt-markers", "--bench", "detached"]))?;
    // Writes its own semaphores through /proc/self/mem: root.
    sh(Command::new("cargo").args(["bench", "-p", "usdt-markers", "--bench", "attached"]))?;
    throughput(events, rounds)?;
    // Needs root: loads eBPF programs and attaches them to the demo and a probe loop.
    sh(Command::new("cargo").args(["bench", "-p", "integration-tests", "--bench", "observer"]))?;
    sh(Command::new("cargo").args(["bench", "-p", "integration-tests", "--bench", "upstream"]))?;
    sh(Command::new("cargo").args(["bench", "-p", "integration-tests", "--bench", "scrape_load"]))?;
    sh(Command::new("cargo").args(["bench", "-p", "integration-tests", "--bench", "node_scale"]))
}

/// Demo throughput at `--rate 0` with markers compiled in (detached) against compiled out.
///
/// Wall-clock throughput on this kind of machine varies by ±10% from run to run, more than the
/// 0.5% being measured, so the two builds run in alternating pairs and the figure is the median
/// of the per-pair ratios (slow phases of the machine hit both halves of a pair). The
/// instruction count under callgrind is reported as well: it is exact and repeatable.
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
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let wo = demo_rate(&without, events)?;
        let w = demo_rate(&with, events)?;
        ratios.push(w / wo);
        with_rates.push(w);
        without_rates.push(wo);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!("demo throughput (--rate 0, --events {events}, {rounds} alternating pairs):");
    println!(
        "  markers compiled out  median {:.0} events/s, best {:.0}",
        median(without_rates.clone()),
        best(&without_rates)
    );
    println!(
        "  markers compiled in   median {:.0} events/s, best {:.0} (detached)",
        median(with_rates.clone()),
        best(&with_rates)
    );
    println!(
        "  ratio in/out          median of pairs {:.4}, best/best {:.4}  (target >= 0.995)",
        median(ratios),
        best(&with_rates) / best(&without_rates)
    );
    match (instructions(&without), instructions(&with)) {
        (Ok(wo), Ok(w)) => {
            println!(
                "  instructions (callgrind, --events {CALLGRIND_EVENTS}): out {wo}, in {w}, ratio out/in {:.4}",
                wo as f64 / w as f64
            )
        }
        (Err(e), _) | (_, Err(e)) => println!("  instructions: not measured: {e:#}"),
    }
    Ok(())
}

const CALLGRIND_EVENTS: u64 = 1_000_000;

/// Instructions executed by one demo run, counted by callgrind.
fn instructions(binary: &Path) -> Result<u64> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(binary)
        .args(["--events", &CALLGRIND_EVENTS.to_string()])
        .output()
        .context("cannot run valgrind (run `cargo xtask setup`)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split_once("Collected :").map(|(_, n)| n.trim().parse::<u64>()))
        .context("valgrind printed no instruction count")?
        .context("bad instruction count")
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
