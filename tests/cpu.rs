//! CPU attribution on the real kernel: perf-event samples of the demo engine, attributed to the
//! query and stage each thread was executing (its CPU slot), checked against what the demo was
//! told to cost (`--filter-cost`), against the process's CPU time in `/proc`, and in profiles
//! symbolized with blazesym, drawn by inferno and decoded by Google's protobuf library.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{Daemon, GatedDemo, Scratch, bin, parse_metrics, run};
use serde_json::Value;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rounds of the demo's expensive filter expression per event: query 0 costs three times
/// query 1, both read the one stream (the same events), so their CPU splits 3:1 but for the
/// stages they share (a few percent).
const COST: &[&str] = &["--queries", "2", "--streams", "1", "--filter-cost", "6000,2000"];
const RATIO: f64 = 3.0;
const EXPENSIVE: &str = "q0_length";
const CHEAP: &str = "q1_length_batch";
const HOT: &str = "eventflux_demo::query::risk_score";

/// The demo, running until dropped.
fn demo() -> GatedDemo {
    GatedDemo::start(&bin("eventflux-demo"), COST).open()
}

/// CPU seconds of process `pid` so far (user and system, every thread), from `/proc`.
fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted after the command name's field 2.
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no memory arguments.
    ticks / unsafe { libc_sysconf_clk_tck() }
}

unsafe extern "C" {
    fn sysconf(name: i32) -> i64;
}

/// `sysconf(_SC_CLK_TCK)`.
unsafe fn libc_sysconf_clk_tck() -> f64 {
    const SC_CLK_TCK: i32 = 2;
    // SAFETY: a query without memory arguments.
    unsafe { sysconf(SC_CLK_TCK) as f64 }
}

/// `query_cpu_seconds_total` by (query_id, stage).
fn attributed(port: u16) -> BTreeMap<(String, String), f64> {
    let m = parse_metrics(&integration_tests::http_get(port, "/metrics"));
    m.iter()
        .filter(|s| s.name == "query_cpu_seconds_total")
        .map(|s| {
            let get = |k: &str| s.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
            ((get("query_id"), get("stage")), s.value)
        })
        .collect()
}

fn by_query(series: &BTreeMap<(String, String), f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for ((q, _), v) in series {
        *out.entry(q.clone()).or_insert(0.0) += v;
    }
    out
}

/// Over five seconds of `run --cpu-hz 999`: the queries' attributed CPU splits in the ratio the
/// demo set (within 10%), nearly all of it in the filter stage that evaluates the expensive
/// expression, and everything attributed (queries, stages and `none`) adds up to the CPU time
/// `/proc` gives the process over the same span (within 10%).
#[test]
fn attributed_cpu_splits_as_the_demo_costs_and_adds_up_to_proc() {
    let _serial = serial();
    let demo = demo();
    let pid = demo.pid();
    let daemon = Daemon::start_with(pid, &["--cpu-hz", "999"]);
    // Both queries attributed: the threads announced their slots.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !by_query(&attributed(daemon.port)).contains_key(CHEAP) {
        assert!(Instant::now() < deadline, "no CPU attributed to {CHEAP}: {:?}", attributed(daemon.port));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (proc0, a0) = (proc_cpu_seconds(pid), attributed(daemon.port));
    std::thread::sleep(Duration::from_secs(5));
    let (proc1, a1) = (proc_cpu_seconds(pid), attributed(daemon.port));
    let delta: BTreeMap<(String, String), f64> =
        a1.iter().map(|(k, v)| (k.clone(), v - a0.get(k).copied().unwrap_or(0.0))).collect();
    let queries = by_query(&delta);
    let (expensive, cheap) = (queries[EXPENSIVE], queries[CHEAP]);
    let ratio = expensive / cheap;
    assert!((ratio / RATIO - 1.0).abs() <= 0.10, "{EXPENSIVE}:{CHEAP} = {ratio:.3}, want {RATIO} ± 10%: {delta:?}");
    let filter = delta[&(EXPENSIVE.to_owned(), "filter".to_owned())];
    assert!(filter / expensive > 0.9, "the filter stage holds the cost: {delta:?}");
    let sum: f64 = delta.values().sum();
    let proc = proc1 - proc0;
    assert!((sum / proc - 1.0).abs() <= 0.10, "attributed {sum:.3}s, /proc says {proc:.3}s: {delta:?}");
    assert!(delta.contains_key(&("none".to_owned(), "none".to_owned())), "samples outside queries are `none`");
    eprintln!(
        "ratio {ratio:.3} (set {RATIO}); attributed {sum:.3}s of /proc's {proc:.3}s; filter share {:.3}",
        filter / expensive
    );
    assert!(daemon.stop().success());
}

/// Runs `eventflux-probe profile` on `pid` with `args`; returns stdout, failing on an error.
fn profile(pid: u32, args: &[&str]) -> String {
    let out = run(Command::new(bin("eventflux-probe")).args(["profile", "--pid", &pid.to_string()]).args(args));
    assert!(out.status.success(), "profile {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// A profile of the expensive query only: every stack starts with it; the demo's hot function
/// is the leaf of most samples, under the call chain the demo's source has, inlined calls
/// included (symbolized from the process's own binary); the flame graph puts it on top, with
/// most of the width.
#[test]
fn a_profile_of_the_expensive_query_has_its_hot_function_on_top() {
    let _serial = serial();
    let demo = demo();
    let pid = demo.pid();
    let folded = profile(pid, &["--query", EXPENSIVE, "--duration", "3s", "--hz", "499"]);
    let mut leaves: BTreeMap<&str, u64> = BTreeMap::new();
    let mut total = 0;
    let mut chain = None;
    for line in folded.lines() {
        let (stack, n) = line.rsplit_once(' ').expect("folded line");
        let n: u64 = n.parse().expect("count");
        let frames: Vec<&str> = stack.split(';').collect();
        assert_eq!(frames[0], EXPENSIVE, "filtered to the query: {line}");
        *leaves.entry(frames[frames.len() - 1]).or_insert(0) += n;
        total += n;
        if frames.last() == Some(&HOT) && chain.is_none() {
            chain = Some(frames[frames.len() - 5..].iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
    }
    let (top, n) = leaves.iter().max_by_key(|(_, n)| **n).map(|(l, n)| (*l, *n)).expect("samples");
    assert_eq!(top, HOT, "hottest leaf: {leaves:?}");
    assert!(n * 10 >= total * 8, "{HOT} is the leaf of {n} of {total} samples");
    assert_eq!(
        chain.expect("a stack ending in the hot function"),
        [
            "eventflux_demo::runtime::run",
            // Inlined into `run`: a frame of its own all the same (DWARF inline information).
            "eventflux_demo::runtime::Delivery::deliver",
            "eventflux_demo::query::Query::process",
            "eventflux_demo::query::Query::filter",
            HOT
        ],
        "the demo's call chain, named from its symbols"
    );

    let scratch = Scratch::new("flame");
    let svg_path = scratch.path().join("q0.svg");
    let svg_arg = svg_path.to_str().expect("path");
    profile(pid, &["--query", EXPENSIVE, "--duration", "2s", "--hz", "499", "--format", "svg", "-o", svg_arg]);
    let svg = std::fs::read_to_string(&svg_path).expect("svg");
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "an SVG document");
    // inferno titles each frame "name (N samples, P%)".
    let title = svg
        .split("<title>")
        .filter_map(|t| t.split_once("</title>").map(|(t, _)| t))
        .find(|t| t.starts_with(&format!("{HOT} (")))
        .unwrap_or_else(|| panic!("no frame of {HOT} in the flame graph"));
    let percent: f64 = title
        .rsplit_once(", ")
        .and_then(|(_, p)| p.strip_suffix("%)"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no percentage in {title:?}"));
    assert!(percent >= 80.0, "{title}");
}

/// The pprof output parses with Google's protobuf library (not ours): consistent ids and
/// strings, CPU nanoseconds = samples × period, labels by query and stage, the hot function the
/// leaf of most samples.
#[test]
fn the_pprof_output_parses_with_a_protobuf_decoder() {
    let _serial = serial();
    let demo = demo();
    let pid = demo.pid();
    let scratch = Scratch::new("pprof");
    let path = scratch.path().join("cpu.pb");
    let arg = path.to_str().expect("path");
    profile(pid, &["--duration", "2s", "--hz", "199", "--format", "pprof", "-o", arg]);
    let summary = decode_pprof(&path);
    assert_eq!(summary["problems"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["sample_types"], serde_json::json!([["samples", "count"], ["cpu", "nanoseconds"]]));
    let period = summary["period"].as_i64().expect("period");
    assert_eq!(period, 1_000_000_000 / 199);
    let totals: Vec<i64> = serde_json::from_value(summary["totals"].clone()).expect("totals");
    assert!(totals[0] > 100, "samples: {summary}");
    assert_eq!(totals[1], totals[0] * period, "cpu = samples × period");
    let labels = summary["by_label"].as_object().expect("labels");
    assert!(
        labels.contains_key(&format!("{EXPENSIVE}/filter")) && labels.contains_key(&format!("{CHEAP}/filter")),
        "{summary}"
    );
    assert_eq!(summary["top_leaf"][0], HOT, "{summary}");
}

/// Python with Google's protobuf package (installed with pip when missing).
fn decode_pprof(path: &Path) -> Value {
    let has = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !has(Command::new("python3").args(["-c", "import google.protobuf"])) {
        let ok = has(Command::new("python3").args(["-m", "pip", "install", "--quiet", "protobuf"]));
        assert!(ok, "cannot install the protobuf package for python3 (pip install protobuf)");
    }
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/pprof_check.py");
    let out = run(Command::new("python3").arg(tool).arg(path));
    assert!(out.status.success(), "pprof_check: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Mistakes get one line and a non-zero exit: a pid that is not running, a stage that does
/// not exist, a query the engine does not have, a rate out of range.
#[test]
fn profile_mistakes_are_one_line_errors() {
    let _serial = serial();
    let demo = demo();
    let pid = demo.pid().to_string();
    for (args, says) in [
        (vec!["--pid", "999999999"], "999999999"),
        (vec!["--pid", pid.as_str(), "--stage", "bogus"], "unknown stage `bogus`"),
        (vec!["--pid", pid.as_str(), "--hz", "0"], "--hz 0 is out of range"),
        (vec!["--pid", pid.as_str(), "--query", "nope", "--duration", "1s"], "no samples match the filter"),
    ] {
        let out = run(Command::new(bin("eventflux-probe")).arg("profile").args(&args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("eventflux-probe: error:") && last.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
