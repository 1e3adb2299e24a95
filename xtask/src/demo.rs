//! `cargo xtask demo`: the demo runtime with its probes attached, and what they measured.
//!
//! Until the metrics daemon lands, the observer is Debian's bpftrace on the same USDT probes
//! that eventflux-probe lists; the demo's own summary is printed next to it for comparison.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{build_release, root};

pub fn run(events: u64, rate: u64) -> Result<()> {
    build_release()?;
    let bin = root().join("target/release");
    let demo = bin.join("eventflux-demo");
    let gate = root().join("target/demo-gate");
    let _ = std::fs::remove_file(&gate);
    let child = Command::new(&demo)
        .args(["--events", &events.to_string(), "--rate", &rate.to_string(), "--streams", "2", "--queries", "3"])
        .arg("--gate")
        .arg(&gate)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the demo")?;
    let pid = child.id().to_string();

    println!("== eventflux-probe list --pid {pid} --provider eventflux");
    let status =
        Command::new(bin.join("eventflux-probe")).args(["list", "--pid", &pid, "--provider", "eventflux"]).status()?;
    if !status.success() {
        bail!("eventflux-probe list failed");
    }

    let d = demo.display();
    let script = format!(
        "usdt:{d}:eventflux:query_register {{ printf(\"query %d = %s\\n\", arg0, str(arg1)); }} \
         usdt:{d}:eventflux:ingest {{ @ingested_events[arg0] = sum(arg1); }} \
         usdt:{d}:eventflux:query_batch_start {{ @start[tid, arg0] = nsecs; }} \
         usdt:{d}:eventflux:query_batch_end /@start[tid, arg0]/ {{ \
             @batch_latency_ns = hist(nsecs - @start[tid, arg0]); @batches[arg0] = count(); \
             @emitted[arg0] = sum(arg2); delete(@start[tid, arg0]); }} \
         END {{ clear(@start); }}"
    );
    println!("\n== bpftrace -p {pid} (the same USDT probes)");
    let mut bt = Command::new("bpftrace")
        .args(["-p", &pid, "-e", &script])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start bpftrace (run `cargo xtask setup`)")?;
    let mut lines = BufReader::new(bt.stdout.take().context("bpftrace stdout")?).lines();
    for line in lines.by_ref() {
        let line = line?;
        println!("{line}");
        if line.starts_with("Attaching") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&gate, b"")?;
    let out = child.wait_with_output()?;
    Command::new("kill").args(["-INT", &bt.id().to_string()]).status()?;
    for line in lines {
        println!("{}", line?);
    }
    bt.wait()?;
    let _ = std::fs::remove_file(&gate);
    println!("\n== the demo's own summary");
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    Ok(())
}
