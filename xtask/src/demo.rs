//! `cargo xtask demo`: the demo runtime with eventflux-probe attached, and what it measured:
//! the probes it found, a `latency` histogram, a `/metrics` excerpt, and the demo's own summary
//! to compare with.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{build_release, root};

const LISTEN: &str = "127.0.0.1:9469";

struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

pub fn run(events: u64, rate: u64) -> Result<()> {
    build_release()?;
    let bin = root().join("target/release");
    let probe = bin.join("eventflux-probe");
    let gate = root().join("target/demo-gate");
    let _ = std::fs::remove_file(&gate);
    let demo = Command::new(bin.join("eventflux-demo"))
        .args(["--events", &events.to_string(), "--rate", &rate.to_string(), "--streams", "2", "--queries", "3"])
        .arg("--gate")
        .arg(&gate)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the demo")?;
    let pid = demo.id().to_string();
    std::thread::sleep(Duration::from_millis(200));

    println!("$ eventflux-probe list --pid {pid} --provider eventflux");
    if !Command::new(&probe).args(["list", "--pid", &pid, "--provider", "eventflux"]).status()?.success() {
        bail!("eventflux-probe list failed");
    }

    println!("\n$ eventflux-probe run --pid {pid} --listen {LISTEN} &");
    let mut daemon = Command::new(&probe)
        .args(["run", "--pid", &pid, "--listen", LISTEN])
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start eventflux-probe run")?;
    let mut log = BufReader::new(daemon.stderr.take().context("stderr")?).lines();
    let daemon = Reap(daemon);
    for line in log.by_ref() {
        let line = line?;
        println!("{line}");
        if line.contains("serving") {
            break;
        }
        if line.contains("error") {
            bail!("eventflux-probe run failed");
        }
    }
    std::thread::spawn(move || {
        log.for_each(|l| {
            if let Ok(l) = l {
                eprintln!("{l}")
            }
        })
    });

    println!("\n$ eventflux-probe latency --pid {pid} --stage batch --duration 2s");
    let latency = Command::new(&probe)
        .args(["latency", "--pid", &pid, "--stage", "batch", "--duration", "2s"])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start eventflux-probe latency")?;
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&gate, b"")?;
    let out = latency.wait_with_output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let summary = demo.wait_with_output()?;
    std::thread::sleep(Duration::from_millis(300));
    println!("$ curl -s http://{LISTEN}/metrics   (excerpt: no buckets, no eventflux_probe_*)");
    let body = http_get(LISTEN, "/metrics")?;
    for line in body.lines().filter(|l| {
        !l.starts_with('#') && !l.contains("_bucket{") && !l.starts_with("eventflux_probe_") && !l.is_empty()
    }) {
        println!("{line}");
    }
    drop(daemon);
    let _ = std::fs::remove_file(&gate);
    println!("\n== the demo's own summary");
    println!("{}", String::from_utf8_lossy(&summary.stdout).trim());
    Ok(())
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (_, body) = text.split_once("\r\n\r\n").context("bad HTTP response")?;
    Ok(body.to_owned())
}
