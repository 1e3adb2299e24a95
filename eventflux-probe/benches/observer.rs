//! What observing costs, each figure against a baseline measured in the same run:
//!
//! - per probe hit: our program vs an empty program on the same site vs bpftrace counting it;
//! - attach time for every probe of the demo;
//! - demo throughput attached vs detached at `--rate 0`, for several chunk sizes;
//! - `/metrics` encoding at 10k series vs the `prometheus` crate's own registry.
//!
//! Needs root and the release binaries: run it as `cargo xtask bench`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eventflux_probe::bpf::Kernel;
use eventflux_probe::collector::Snapshot;
use eventflux_probe::export::prometheus::{Options, encode};
use eventflux_probe::usdt;
use eventflux_probe_common::{CounterKey, counter, probe};

const ROUNDS: usize = 5;

/// Gates handed out; on exit any left closed are opened so no target waits forever.
static GATES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn bin_dir() -> PathBuf {
    // target/release/deps/observer-<hash> → target/release
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn gate_path(tag: &str) -> PathBuf {
    let p = bin_dir().join(format!("bench-gate-{tag}-{}", std::process::id()));
    GATES.lock().unwrap_or_else(|e| e.into_inner()).push(p.clone());
    let _ = std::fs::remove_file(&p);
    p
}

/// Waits until `pid` has exec'd `binary` and mapped its code: right after spawn it may still
/// be a copy of us, and during exec `/proc/PID/exe` changes before the new code is mapped.
fn wait_exec(pid: u32, binary: &Path) -> Result<()> {
    let want = std::fs::canonicalize(binary)?;
    let want = want.to_string_lossy();
    for _ in 0..1000 {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if maps.lines().any(|l| l.contains(" r-xp ") && l.ends_with(want.as_ref())) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("process {pid} did not exec {}", binary.display())
}

fn wait_json(child: Child) -> Result<serde_json::Value> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("target failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("target output is not JSON")
}

#[derive(Clone, Copy, PartialEq)]
enum Observer {
    Detached,
    Empty,
    Ours,
    Bpftrace,
}

/// ns per loop iteration of the semaphore target firing `ingest` `hits` times.
fn per_hit(observer: Observer, hits: u64) -> Result<f64> {
    let target = bin_dir().join("semaphore-target");
    let gate = gate_path("hit");
    let child = Command::new(&target)
        .arg(&gate)
        .arg(hits.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", target.display()))?;
    let pid = child.id();
    wait_exec(pid, &target)?;
    let mut _kernel = None;
    let mut bpftrace = None;
    match observer {
        Observer::Detached => {}
        Observer::Empty | Observer::Ours => {
            let mut warnings = Vec::new();
            let binaries = usdt::probes_in_process(pid, &mut warnings)?;
            let mut k = if observer == Observer::Empty {
                Kernel::load_as(probe::ingest::ID, "empty")?
            } else {
                Kernel::load(&[probe::ingest::ID])?
            };
            let report = k.attach_process(pid, &binaries)?;
            if report.sites == 0 {
                let found: Vec<String> =
                    binaries.iter().map(|b| format!("{} ({} notes)", b.path.display(), b.notes.notes.len())).collect();
                bail!("no ingest site attached in process {pid}: {found:?} {:?}", report.skipped);
            }
            _kernel = Some(k);
        }
        Observer::Bpftrace => {
            let script = format!("usdt:{}:eventflux:ingest {{ @hits = count(); }}", target.display());
            let mut bt = Command::new("bpftrace")
                .args(["-p", &pid.to_string(), "-e", &script])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start bpftrace")?;
            let stdout = bt.stdout.take().context("bpftrace stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                if line?.starts_with("Attaching") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            bpftrace = Some((bt, lines));
        }
    }
    std::fs::write(&gate, b"")?;
    let v = wait_json(child)?;
    let _ = std::fs::remove_file(&gate);
    if let Some((mut bt, _)) = bpftrace {
        let _ = Command::new("kill").args(["-INT", &bt.id().to_string()]).status();
        let _ = bt.wait();
    }
    if observer != Observer::Detached && v["evaluated"].as_u64() != Some(hits) {
        bail!("the probe fired {} times, not {hits}", v["evaluated"]);
    }
    v["ns_per_hit"].as_f64().context("no ns_per_hit")
}

fn bench_per_hit() -> Result<()> {
    let hits = 1_000_000;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); 4];
    let observers = [Observer::Detached, Observer::Empty, Observer::Ours, Observer::Bpftrace];
    for _ in 0..ROUNDS {
        for (i, o) in observers.iter().enumerate() {
            results[i].push(per_hit(*o, hits)?);
        }
    }
    let [detached, empty, ours, bpftrace] = [0, 1, 2, 3].map(|i| median(results[i].clone()));
    println!("per probe hit (ingest, {hits} hits x {ROUNDS} rounds, median ns per hit):");
    println!("  detached                {detached:8.1}");
    println!("  empty BPF program       {empty:8.1}   (the uprobe itself)");
    println!("  eventflux-probe ingest  {ours:8.1}   = empty + {:.1} ns (target <= empty + 60)", ours - empty);
    println!("  bpftrace count()        {bpftrace:8.1}   ours/bpftrace {:.3} (target <= 1)", ours / bpftrace);
    Ok(())
}

fn demo(args: &[String], gate: &Path) -> Result<Child> {
    let binary = bin_dir().join("eventflux-demo");
    let child = Command::new(&binary)
        .args(args)
        .arg("--gate")
        .arg(gate)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start eventflux-demo")?;
    wait_exec(child.id(), &binary)?;
    Ok(child)
}

fn bench_attach() -> Result<()> {
    let mut attach = Vec::new();
    let mut total = Vec::new();
    let mut sites = 0;
    for _ in 0..ROUNDS {
        let gate = gate_path("attach");
        let child = demo(&["--events".into(), "1000".into()], &gate)?;
        let started = Instant::now();
        let mut warnings = Vec::new();
        let binaries = usdt::probes_in_process(child.id(), &mut warnings)?;
        let all: Vec<u32> = (0..probe::NAMES.len() as u32).collect();
        let mut kernel = Kernel::load(&all)?;
        let report = kernel.attach_process(child.id(), &binaries)?;
        total.push(started.elapsed().as_secs_f64() * 1e3);
        attach.push(report.elapsed.as_secs_f64() * 1e3);
        sites = report.sites;
        std::fs::write(&gate, b"")?;
        wait_json(child)?;
        let _ = std::fs::remove_file(&gate);
    }
    println!("attach, demo ({sites} sites, {ROUNDS} rounds, median):");
    println!("  attach every site        {:6.1} ms (target < 100 ms)", median(attach));
    println!("  discover + load + attach {:6.1} ms", median(total));
    Ok(())
}

fn demo_rate(batch: usize, events: u64, attached: bool) -> Result<f64> {
    let gate = gate_path("rate");
    let args: Vec<String> = ["--events", &events.to_string(), "--batch", &batch.to_string(), "--rate", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let child = demo(&args, &gate)?;
    let mut _kernel = None;
    if attached {
        let mut warnings = Vec::new();
        let binaries = usdt::probes_in_process(child.id(), &mut warnings)?;
        let all: Vec<u32> = (0..probe::NAMES.len() as u32).collect();
        let mut k = Kernel::load(&all)?;
        k.attach_process(child.id(), &binaries)?;
        _kernel = Some(k);
    }
    std::fs::write(&gate, b"")?;
    let v = wait_json(child)?;
    let _ = std::fs::remove_file(&gate);
    v["events_per_sec"].as_f64().context("no events_per_sec")
}

fn bench_throughput() -> Result<()> {
    let events = 5_000_000;
    println!(
        "demo throughput attached / detached (--rate 0, --events {events}, {ROUNDS} alternating pairs, median of pair ratios):"
    );
    for batch in [64usize, 1024, 8192] {
        let mut ratios = Vec::new();
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            let off = demo_rate(batch, events, false)?;
            let on = demo_rate(batch, events, true)?;
            ratios.push(on / off);
            rates.push((off, on));
        }
        let off = median(rates.iter().map(|r| r.0).collect());
        let on = median(rates.iter().map(|r| r.1).collect());
        println!(
            "  --batch {batch:<5} detached {off:>10.0} ev/s, attached {on:>10.0} ev/s, ratio {:.4} (target >= 0.99)",
            median(ratios)
        );
    }
    Ok(())
}

fn bench_metrics() -> Result<()> {
    let series = 10_000u32;
    let mut snap = Snapshot::default();
    for q in 0..series {
        snap.counters
            .insert(CounterKey { pid: 1, counter: counter::QUERY_PROCESSED, a: q, b: q % 100 }, u64::from(q) * 7);
    }
    let opts = Options { max_series: series as usize + 1, ..Options::default() };
    let mut ours = Vec::new();
    let mut bytes = 0;
    for _ in 0..20 {
        let t = Instant::now();
        bytes = std::hint::black_box(encode(&snap, &opts)).len();
        ours.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Baseline: the same 10k series held in the prometheus crate's own counters.
    let registry = prometheus::Registry::new();
    let vec = prometheus::IntCounterVec::new(
        prometheus::Opts::new("query_events_processed_total", "Events that entered the query."),
        &["query_id", "stream_name"],
    )?;
    registry.register(Box::new(vec.clone()))?;
    for q in 0..series {
        vec.with_label_values(&[&format!("query{q}"), &format!("stream{}", q % 100)]).inc_by(u64::from(q) * 7);
    }
    let mut base = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let mut out = String::new();
        prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out)?;
        std::hint::black_box(out);
        base.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (o, b) = (median(ours), median(base));
    println!("/metrics at {series} series (20 runs, median):");
    println!("  snapshot -> text ({bytes} bytes)  {o:6.2} ms");
    println!("  prometheus crate registry        {b:6.2} ms   ratio {:.2}", o / b);
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench -p eventflux-probe --bench observer -- [hit] [attach] [throughput] [metrics]`
    // runs the named sections only; `cargo bench` itself passes `--bench`.
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let result = (|| -> Result<()> {
        if run("hit") {
            bench_per_hit()?;
        }
        if run("attach") {
            bench_attach()?;
        }
        if run("throughput") {
            bench_throughput()?;
        }
        if run("metrics") {
            bench_metrics()?;
        }
        Ok(())
    })();
    // A failed round may leave a target waiting at its gate: open them all, then tidy up.
    let gates = std::mem::take(&mut *GATES.lock().unwrap_or_else(|e| e.into_inner()));
    for g in &gates {
        let _ = std::fs::write(g, b"");
    }
    std::thread::sleep(Duration::from_millis(100));
    for g in &gates {
        let _ = std::fs::remove_file(g);
    }
    result
}
