//! `cargo xtask flamegraph`: the README's flame graph (docs/img/flamegraph.svg), from a real
//! profile of the demo's expensive query: the demo with `--filter-cost 6000,2000` (query 0's
//! filter evaluates a costly expression three times as often as query 1's), profiled with
//! `eventflux-probe profile --query q0_length --format svg`. Needs root, like every attach.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub fn run() -> Result<()> {
    let root = crate::root();
    crate::build_release()?;
    let bin = root.join("target/release");
    let mut demo = Command::new(bin.join("eventflux-demo"))
        .args(["--queries", "2", "--streams", "1", "--filter-cost", "6000,2000"])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the demo")?;
    // Its probes are mapped once it runs its own code.
    std::thread::sleep(Duration::from_millis(500));
    let out = root.join("docs/img/flamegraph.svg");
    let status = Command::new(bin.join("eventflux-probe"))
        .args(["profile", "--pid", &demo.id().to_string(), "--query", "q0_length", "--duration", "5s"])
        .args(["--hz", "499", "--format", "svg", "-o"])
        .arg(&out)
        .status();
    let _ = demo.kill();
    let _ = demo.wait();
    if !status.context("cannot run eventflux-probe profile")?.success() {
        bail!("eventflux-probe profile failed");
    }
    println!("wrote {}", out.display());
    Ok(())
}
