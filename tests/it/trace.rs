//! `eventflux-probe trace` on the real kernel: span trees of sampled batches, from the
//! `stage_sample` and `batch_sample` records the kernel programs put in the `SPANS` ring buffer.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflux_probe::kernel::probes::TRACE_PROBES;
use eventflux_probe_common::PROBES;
use integration_tests::{GatedDemo, Semaphores, assert_final_error, bin, serial, summary, wait_with_deadline};
use serde_json::Value;

/// Span names of component operations: leaves inside the stage they ran in.
const OPS: [&str; 4] = ["join_probe", "table_lookup", "pattern_step", "sink_publish"];

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Starts `trace` on `pid` and waits until it has attached (and the markers' settle time has
/// passed), so that every batch after the gate opens is traced.
fn start_trace(pid: u32, extra: &[&str]) -> std::process::Child {
    let mut child = Command::new(bin("eventflux-probe"))
        .args(["trace", "--pid", &pid.to_string(), "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start trace");
    // Attached once the kernel raised the semaphores of every probe it takes: the
    // registrations, `batch_sample`, the trace probes, a sampling and a flush level.
    let mut probes = vec!["stream_register", "query_register", "query_unregister", "batch_sample"];
    probes.extend(TRACE_PROBES.iter().map(|&p| PROBES[p as usize].name));
    Semaphores::of(&bin("eventflux-demo")).wait_raised(pid, &mut child, Duration::from_secs(30), |raised| {
        probes.iter().all(|p| raised.contains(*p))
            && raised.iter().any(|p| p.starts_with("ctl_samples_"))
            && raised.iter().any(|p| p.starts_with("ctl_flush_"))
    });
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn traces(child: std::process::Child) -> Vec<Value> {
    let mut child = child;
    // Read while it runs: a hundred trees are more than a pipe holds.
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let status = wait_with_deadline(&mut child, Duration::from_secs(60));
    assert!(status.success(), "trace failed: {status}");
    let out = reader.join().expect("reader");
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// With every batch sampled, every batch of a `--events N` run is exactly one tree: per query
/// as many trees as the demo's own count of batches; each a query span whose children are the
/// stages nested as the sync junction ran them (filter ⊃ window ⊃ aggregate ⊃ emit), children
/// inside their parents, event counts as the demo chunks them, wall-clock times of this run.
#[test]
fn every_batch_is_one_tree_of_its_stage_spans() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "6400", "--batch", "64", "--queries", "3", "--streams", "2"]);
    let before = unix_ns();
    let trace = start_trace(target.pid(), &["--every-batch", "--count", "150"]);
    let summary = summary(&target.open_and_wait());
    let after = unix_ns();
    let traces = traces(trace);
    assert_eq!(traces.len(), 150, "one tree per batch (100 chunks, two queries on one stream)");
    for (name, q) in summary["queries"].as_object().expect("queries") {
        let n = traces.iter().filter(|t| t["query"] == name.as_str()).count() as u64;
        assert_eq!(Some(n), q["batches"].as_u64(), "trees of {name}");
    }
    for t in &traces {
        let spans = t["spans"].as_array().expect("spans");
        assert_eq!(spans[0]["name"], "query", "{t}");
        assert_eq!(spans[0]["events_in"], 64, "{t}");
        assert_eq!(t["stages_timed"], true, "{t}");
        // Depth first: names at their depths follow the sync pipeline (component operations,
        // leaves inside the stages, aside).
        let shape: Vec<(u64, &str)> = spans
            .iter()
            .map(|s| (s["depth"].as_u64().expect("depth"), s["name"].as_str().expect("name")))
            .filter(|(_, name)| !OPS.contains(name))
            .collect();
        let pipeline = [(0, "query"), (1, "filter"), (2, "window"), (3, "aggregate"), (4, "emit")];
        assert!(shape.len() >= 2 && shape[..] == pipeline[..shape.len()], "{shape:?}");
        assert_eq!(spans[1]["events_in"], 64, "{t}");
        assert_nested(t);
        let start = spans[0]["start_unix_ns"].as_u64().expect("start");
        assert!(before <= start && start <= after, "{start} outside this run ({before}..{after})");
    }
}

/// Each span of tree `t` lies inside its parent (the previous span one level up); returns the
/// (parent, child) names.
fn assert_nested(t: &Value) -> Vec<(String, String)> {
    let spans = t["spans"].as_array().expect("spans");
    let mut pairs = Vec::new();
    for (i, s) in spans.iter().enumerate().skip(1) {
        let depth = s["depth"].as_u64().expect("depth");
        let parent = spans[..i].iter().rev().find(|p| p["depth"].as_u64() == Some(depth - 1)).expect("parent");
        let (ps, pd) =
            (parent["start_monotonic_ns"].as_u64().expect("start"), parent["duration_ns"].as_u64().expect("d"));
        let (cs, cd) = (s["start_monotonic_ns"].as_u64().expect("start"), s["duration_ns"].as_u64().expect("d"));
        assert!(ps <= cs && cs + cd <= ps + pd, "{} outside {} in {t}", s["name"], parent["name"]);
        pairs.push((parent["name"].as_str().expect("name").to_owned(), s["name"].as_str().expect("name").to_owned()));
    }
    pairs
}

/// The engine's SQL order (`--where-after-window`): the WHERE filter runs inside the window,
/// aggregation twice in a batch (for what left the window and what entered it), each insert in
/// two parts. Neither the probes nor the assembly assume an order: every batch is one tree of
/// what ran, window ⊃ filter ⊃ aggregate ⊃ emit, each span inside its parent, and stages that
/// ran twice are two spans.
#[test]
fn stages_nest_as_they_ran_whatever_their_order() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let args = ["--events", "6400", "--batch", "64", "--queries", "3", "--streams", "2", "--where-after-window"];
    let target = GatedDemo::start(&demo, &args);
    let trace = start_trace(target.pid(), &["--every-batch", "--count", "150"]);
    let summary = summary(&target.open_and_wait());
    let traces = traces(trace);
    assert_eq!(traces.len(), 150);
    for (name, q) in summary["queries"].as_object().expect("queries") {
        let n = traces.iter().filter(|t| t["query"] == name.as_str()).count() as u64;
        assert_eq!(Some(n), q["batches"].as_u64(), "trees of {name}");
    }
    let want = [
        ("query", "window"),
        ("window", "filter"),
        ("filter", "aggregate"),
        ("aggregate", "emit"),
        ("filter", "table_lookup"),
        ("emit", "sink_publish"),
    ];
    let (mut twice_aggregated, mut twice_emitted) = (0, 0);
    for t in &traces {
        let pairs = assert_nested(t);
        assert_eq!(t["spans"][1]["name"], "window", "{t}");
        for (parent, child) in &pairs {
            assert!(want.contains(&(parent.as_str(), child.as_str())), "{child} under {parent}: {t}");
        }
        let count = |name: &str| pairs.iter().filter(|(_, c)| c == name).count();
        twice_aggregated += usize::from(count("aggregate") == 2);
        twice_emitted += usize::from(count("emit") >= 2);
    }
    assert!(twice_aggregated > 0 && twice_emitted > 0, "{twice_aggregated} {twice_emitted}");
}

/// `--query` keeps one query's batches; under the default budget (16 sampled batches per
/// second per thread) a thread's uniformly sampled batches alternate between timed as a whole
/// and stage-timed, and the tail sampler adds batches timed as a whole (the length-batch
/// query's flushes): of consecutive ones (all queries run on the sync demo's one thread) no two
/// stage-timed ones are neighbours. (One query's share of them is a random draw.)
#[test]
fn one_query_at_the_default_budget() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--rate", "100000"]).open();
    let trace = start_trace(target.pid(), &["--query", "q1_length_batch", "--count", "6"]);
    let traces = traces(trace);
    assert_eq!(traces.len(), 6);
    assert!(traces.iter().all(|t| t["query"] == "q1_length_batch"), "{traces:?}");
    let all = self::traces(start_trace(target.pid(), &["--count", "12"]));
    assert_eq!(all.len(), 12);
    let timed: Vec<bool> = all.iter().map(|t| t["stages_timed"] == true).collect();
    assert!(timed.windows(2).all(|w| !(w[0] && w[1])), "stage-timed ones apart: {timed:?}");
    assert!(timed.iter().any(|t| *t) && timed.iter().any(|t| !*t), "both kinds: {timed:?}");
    drop(target);
}

/// Bad input is one line.
#[test]
fn unknown_query_and_bad_count_are_one_line() {
    let out = Command::new(bin("eventflux-probe")).args(["trace", "--pid", "1", "--count", "0"]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--count"), "{}", String::from_utf8_lossy(&out.stderr));
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--rate", "20000"]).open();
    let out = Command::new(bin("eventflux-probe"))
        .args(["trace", "--pid", &target.pid().to_string(), "--query", "nope", "--duration", "1s"])
        .output()
        .expect("run");
    assert_final_error(&out, &["q0_length"]);
    drop(target);
}

/// Component operations the engine times (a table lookup in query 0's filter, each sink's
/// publish in its query's emit, the join query's probe) are spans of the stage they ran in,
/// in every batch sampled for its stages.
#[test]
fn component_operations_are_spans_of_the_stage_they_ran_in() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let args =
        ["--events", "6400", "--batch", "64", "--queries", "3", "--streams", "2", "--join-query", "--pattern-query"];
    let target = GatedDemo::start(&demo, &args);
    let trace = start_trace(target.pid(), &["--every-batch", "--count", "300"]);
    let summary = summary(&target.open_and_wait());
    let traces = traces(trace);
    assert_eq!(traces.len(), 300, "150 query batches, 100 of the join, 50 of the pattern");
    let ops = |query: &str, op: &str| -> Vec<Vec<(String, String)>> {
        traces
            .iter()
            .filter(|t| t["query"] == query)
            .map(|t| assert_nested(t).into_iter().filter(|(_, c)| c == op).collect())
            .collect()
    };
    // Every q0 batch looks its chunk up in the table, inside its filter.
    let lookups = ops("q0_length", "table_lookup");
    assert_eq!(lookups.len() as u64, summary["queries"]["q0_length"]["batches"].as_u64().expect("batches"));
    assert!(lookups.iter().all(|l| l == &[("filter".to_owned(), "table_lookup".to_owned())]), "{lookups:?}");
    // A batch that emitted published its rows, inside its emit.
    for q in ["q0_length", "q1_length_batch", "q2_time"] {
        let publishes: Vec<_> = ops(q, "sink_publish").into_iter().flatten().collect();
        assert!(!publishes.is_empty() && publishes.iter().all(|(p, _)| p == "emit"), "{q}: {publishes:?}");
    }
    // Every batch of the join query probes, directly under the query.
    let probes = ops("stock_join", "join_probe");
    assert_eq!(probes.len() as u64, summary["join_query"]["batches"].as_u64().expect("batches"));
    assert!(probes.iter().all(|p| p == &[("query".to_owned(), "join_probe".to_owned())]), "{probes:?}");
    // And every batch of the pattern query steps its pattern.
    let steps = ops("price_swing", "pattern_step");
    assert_eq!(steps.len() as u64, summary["pattern_query"]["batches"].as_u64().expect("batches"));
    assert!(steps.iter().all(|p| p == &[("query".to_owned(), "pattern_step".to_owned())]), "{steps:?}");
}
