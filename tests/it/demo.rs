//! The demo runtime is deterministic: the same N events in give the same counts and the same
//! computed output, run after run and in both junction modes.

use std::process::Command;

use integration_tests::{assert_one_line_error_of, bin, run, run_ok, serial};
use serde_json::Value;

fn summary(args: &[&str]) -> Value {
    let out = run_ok(Command::new(bin("eventflux-demo")).args(args));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(text.lines().count(), 1, "the summary is one line: {text}");
    integration_tests::summary(&text)
}

/// The parts of a summary that depend only on the input (and not on the junction mode).
fn deterministic(v: Value) -> Value {
    let mut v = integration_tests::computed_summary(v);
    let obj = v.as_object_mut().expect("object");
    obj.remove("mode");
    // Async junctions are components of their own: only in async mode.
    if let Some(components) = obj.get_mut("components").and_then(Value::as_object_mut) {
        components.retain(|_, c| c["kind"] != "junction");
    }
    v
}

const ARGS: &[&str] = &["--events", "200003", "--streams", "3", "--queries", "5", "--batch", "50"];

#[test]
fn same_input_same_counts_and_output() {
    let _serial = serial();
    let a = summary(ARGS);
    let b = summary(ARGS);
    assert_eq!(deterministic(a.clone()), deterministic(b));

    // Exactly N events in, split over the input streams, each delivered to its subscribers.
    assert_eq!(a["events"], 200_003);
    let streams = a["streams"].as_object().expect("streams");
    let received: u64 =
        ["Stock0", "Stock1", "Stock2"].iter().map(|s| streams[*s]["received"].as_u64().expect("n")).sum();
    assert_eq!(received, 200_003);
    let queries = a["queries"].as_object().expect("queries");
    assert_eq!(queries.len(), 5);
    for (name, q) in queries {
        let input = q["input_stream"].as_str().expect("input");
        let subscribers = queries.values().filter(|o| o["input_stream"] == input).count() as u64;
        assert_eq!(q["processed"], streams[input]["received"], "{name} sees every event of {input}");
        assert_eq!(streams[input]["sent"].as_u64(), streams[input]["received"].as_u64().map(|r| r * subscribers));
        let out = q["output_stream"].as_str().expect("output");
        assert_eq!(streams[out]["received"], q["emitted"]);
        assert!(q["emitted"].as_u64().expect("emitted") > 0, "{name} emitted nothing");
        assert!(q["errors"].as_u64().expect("errors") > 0, "{name} saw no expression errors");
        assert!(q["p50_ns"].as_u64().expect("p50") <= q["p99_ns"].as_u64().expect("p99"));
    }
    // Every window kind ran.
    for kind in ["length", "length_batch", "time"] {
        assert!(queries.values().any(|q| q["window"] == kind), "no {kind} window");
    }
}

#[test]
fn async_mode_computes_what_sync_mode_computes() {
    let _serial = serial();
    let sync = summary(ARGS);
    let mut args = ARGS.to_vec();
    args.extend(["--mode", "async", "--queue-capacity", "2"]);
    let asynchronous = summary(&args);
    assert_eq!(asynchronous["mode"], "async");
    assert_eq!(deterministic(sync), deterministic(asynchronous));
}

#[test]
fn bad_arguments_are_one_clear_line() {
    // Demos, however short-lived: a node-mode observer of another test would count them.
    let _serial = serial();
    for (args, expect) in [
        (&["--streams", "0"][..], "--streams must be at least 1"),
        (&["--batch", "0"][..], "--batch must be at least 1"),
        (&["--linger=-1"][..], "--linger must be a number of seconds from 0 to 86400"),
        (&["--hold", "1e30"][..], "--hold must be a number of seconds from 0 to 86400"),
    ] {
        let out = run(Command::new(bin("eventflux-demo")).args(args));
        assert_one_line_error_of("eventflux-demo: ", &out, &[expect]);
    }
}

/// `--progress-ms`: JSON lines on stderr whose counts only grow and never pass what the
/// summary says was produced (the phase benchmark reads them).
#[test]
fn progress_lines_count_what_was_produced() {
    let _serial = serial();
    let out = run_ok(Command::new(bin("eventflux-demo")).args([
        "--events",
        "3000000",
        "--batch",
        "1",
        "--progress-ms",
        "20",
    ]));
    let total = integration_tests::summary(&String::from_utf8_lossy(&out.stdout))["events"].as_f64().expect("events");
    let progress: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["progress"].clone())
        .collect();
    assert!(progress.len() >= 3, "a 3M-event run at chunks of one lasts over 60 ms: {progress:?}");
    let field = |p: &Value, k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{k} in {p}"));
    for pair in progress.windows(2) {
        for k in ["t_s", "events", "cpu_s"] {
            assert!(field(&pair[1], k) >= field(&pair[0], k), "{k} went back: {pair:?}");
        }
    }
    let last = progress.last().expect("a line");
    assert!(field(last, "events") > 0.0 && field(last, "events") <= total, "{last} against {total}");
}
