//! `eventflux-probe top` in a real terminal (tmux): what it shows against the demo's own
//! figures, its keys, the terminal it leaves behind; `--once` and `--json`, attached and
//! reading another observer by `--url`; the mistakes it refuses.
//!
//! Rates are compared with the demo's own totals over its own elapsed time (`--rate` fixes
//! them), within 10%. `top` runs with `--flush-interval 100ms`: the engine hands its counts
//! over once per flush, so over a 5 s window a 1 s flush could move a rate by a fifth (the
//! default's trade-off, docs/top.md), which is not what these tests are about.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::terminal::{PROMPT, Tmux, figure, query_order, table};
use integration_tests::{Daemon, GatedDemo, Semaphores, assert_one_line_error, bin, serial, summary};
use serde_json::Value;

/// Demo rate over its two input streams: each query reads one, at half of it.
const RATE: u64 = 20_000;

fn demo(events: u64) -> GatedDemo {
    GatedDemo::start(
        &bin("eventflux-demo"),
        &["--rate", &RATE.to_string(), "--events", &events.to_string(), "--mode", "async"],
    )
}

/// `actual` within 10% of `expected`.
fn close(what: &str, actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() <= expected * 0.10,
        "{what}: top shows {actual:.1}/s, the demo's own rate is {expected:.1}/s (more than 10% apart)"
    );
}

/// The demo's rate of a query figure: its total over its elapsed time.
fn demo_rate(s: &Value, query: &str, field: &str) -> f64 {
    s["queries"][query][field].as_f64().unwrap_or_else(|| panic!("summary has no {query}.{field}"))
        / s["elapsed_s"].as_f64().expect("elapsed_s")
}

fn sorted_by(screen: &str, column: usize, descending: bool) -> bool {
    let rows = table(screen, "QUERY");
    let values: Vec<f64> = query_order(screen)
        .iter()
        .map(|n| rows[n].get(column).and_then(|c| figure(c)).unwrap_or(f64::NEG_INFINITY))
        .collect();
    values.windows(2).all(|w| if descending { w[0] >= w[1] } else { w[0] <= w[1] })
}

#[test]
fn top_in_a_terminal_agrees_with_the_demo_and_leaves_the_terminal_clean() {
    let _g = serial();
    // 25 s of events: the window (5 s), the keys, then the exit, all while it runs.
    let demo = demo(RATE * 25);
    let pid = demo.pid();
    let term = Tmux::start(160, 45);
    term.run("echo before-top");
    let top =
        format!("{} top --pid {pid} --flush-interval 100ms; echo top-exited-$?", bin("eventflux-probe").display());
    term.run(&top);
    let attached = term.wait_for("the attached engine", Duration::from_secs(60), |s| {
        s.contains(&format!("pid {pid}  eventflux-demo"))
    });
    assert!(term.alternate_screen(), "top draws on the alternate screen:\n{attached}");
    let demo = demo.open();
    let opened = Instant::now();
    term.wait_for("the demo's queries and streams", Duration::from_secs(10), |s| {
        table(s, "QUERY").len() == 3 && table(s, "STREAM").len() == 5
    });

    // The window covered by events only: rates as steady as they get.
    std::thread::sleep(Duration::from_secs(8));
    let running = term.screen();
    let queries = table(&running, "QUERY");
    let streams = table(&running, "STREAM");
    assert_eq!(
        queries.keys().map(String::as_str).collect::<Vec<_>>(),
        ["q0_length", "q1_length_batch", "q2_time"],
        "{running}"
    );
    assert_eq!(
        streams.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Q0Out", "Q1Out", "Q2Out", "Stock0", "Stock1"],
        "{running}"
    );
    assert!(running.contains(&format!("pid {pid}  eventflux-demo")), "{running}");
    assert!(running.contains("HEALTHY"), "{running}");
    assert!(running.contains("observer  bpf runs"), "{running}");

    // Sorting: by OUT/s (largest first), then reversed; the rows follow.
    term.keys(&["s"]);
    let by_out = term.wait_for("sorted by OUT/s", Duration::from_secs(5), |s| s.contains("OUT/s▼"));
    assert!(sorted_by(&by_out, 1, true), "{by_out}");
    assert_eq!(query_order(&by_out).last().map(String::as_str), Some("q1_length_batch"), "{by_out}");
    term.keys(&["r"]);
    let reversed = term.wait_for("reversed", Duration::from_secs(5), |s| s.contains("OUT/s▲"));
    assert!(sorted_by(&reversed, 1, false), "{reversed}");
    assert_eq!(query_order(&reversed).first().map(String::as_str), Some("q1_length_batch"), "{reversed}");

    // Filtering: only names containing "time" (any case), queries and streams alike.
    term.keys(&["/"]);
    term.keys(&["-l", "TIME"]);
    term.keys(&["Enter"]);
    let filtered = term.wait_for("the filter", Duration::from_secs(5), |s| s.contains("filter: TIME"));
    assert_eq!(table(&filtered, "QUERY").keys().collect::<Vec<_>>(), ["q2_time"], "{filtered}");
    assert!(table(&filtered, "STREAM").is_empty(), "{filtered}");

    // The detail of the one row left: every stage the query's batches ran through.
    term.keys(&["Enter"]);
    let detail = term.wait_for("the stages", Duration::from_secs(5), |s| s.contains("query q2_time"));
    let stages = table(&detail, "STAGE");
    for stage in ["ingest", "filter", "window", "aggregate", "emit"] {
        let row = stages.get(stage).unwrap_or_else(|| panic!("no {stage} row:\n{detail}"));
        assert!(row[0].parse::<u64>().is_ok_and(|n| n > 0), "{stage} has samples:\n{detail}");
    }
    assert!(detail.contains("batch latency over the last") && detail.contains('█'), "a histogram:\n{detail}");
    // One key at a time: two escapes read at once are one key to the terminal.
    term.keys(&["Escape"]);
    term.wait_for("the overview", Duration::from_secs(5), |s| s.contains("QUERY"));
    term.keys(&["Escape"]);
    let back = term.wait_for("the overview, unfiltered", Duration::from_secs(5), |s| table(s, "QUERY").len() == 3);
    assert!(!back.contains("filter:"), "{back}");

    // The target's exit: said on screen, the last values kept.
    let stdout = demo.open_and_wait();
    let ended = term.wait_for("the exit", Duration::from_secs(10), |s| s.contains(&format!("process {pid} exited")));
    let last = table(&ended, "QUERY");
    assert!(last.values().all(|r| figure(&r[0]).is_some_and(|v| v > 0.0)), "last values kept:\n{ended}");
    assert!(opened.elapsed() > Duration::from_secs(20), "the demo ran its 25 s");

    // `q` leaves: the shell's prompt below the command, no alternate screen.
    term.keys(&["q"]);
    let after = term.wait_for("the prompt", Duration::from_secs(10), |s| {
        s.trim_end().ends_with(PROMPT.trim_end()) && s.contains("before-top")
    });
    assert!(after.contains("top-exited-0"), "top exits 0 on q:\n{after}");
    assert!(!term.alternate_screen(), "top left the alternate screen:\n{after}");
    assert!(!after.contains("QUERY"), "nothing of top's screen left behind:\n{after}");

    // The figures, against the demo's own.
    let s = summary(&stdout);
    for (name, row) in &queries {
        close(&format!("{name} IN/s"), figure(&row[0]).expect("IN/s"), demo_rate(&s, name, "processed"));
        close(&format!("{name} OUT/s"), figure(&row[1]).expect("OUT/s"), demo_rate(&s, name, "emitted"));
        close(&format!("{name} BATCH/s"), figure(&row[2]).expect("BATCH/s"), demo_rate(&s, name, "batches"));
        close(&format!("{name} ERR/s"), figure(&row[6]).expect("ERR/s"), demo_rate(&s, name, "errors"));
        let p99 = figure(&row[4]).expect("p99");
        assert!(p99 > 0.0 && p99 < 0.1, "{name} p99 {p99}s");
    }
    let elapsed = s["elapsed_s"].as_f64().expect("elapsed_s");
    for (name, row) in &streams {
        let received = s["streams"][name]["received"].as_f64().expect("received");
        close(&format!("stream {name}"), figure(&row[0]).expect("EVENTS/s"), received / elapsed);
    }
}

fn top_json(args: &[&str], documents: usize) -> Vec<Value> {
    let mut child = Command::new(bin("eventflux-probe"))
        .arg("top")
        .args(args)
        .args(["--json", "--window", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start top --json");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut docs: Vec<Value> = Vec::new();
    while docs.len() < documents {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let err = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            panic!("top --json printed {} of {documents} documents within 60 s: {err:?}", docs.len());
        };
        docs.push(serde_json::from_str(&line).expect("one JSON document per line"));
    }
    integration_tests::sigterm(child.id());
    let status = integration_tests::wait_with_deadline(&mut child, Duration::from_secs(30));
    assert!(status.success(), "top --json stops cleanly on SIGTERM: {status}");
    docs
}

/// Query name → events in per second, of a `--json` document.
fn rates(doc: &Value) -> BTreeMap<String, f64> {
    doc["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .map(|q| (q["name"].as_str().expect("name").to_owned(), q["events_in_per_second"].as_f64().unwrap_or(0.0)))
        .collect()
}

#[test]
fn once_and_json_attached_and_by_url_show_the_same_engine() {
    let _g = serial();
    let demo = demo(RATE * 40);
    let pid = demo.pid();
    let _demo = demo.open();

    // Attached: `top` runs the `run` service inside itself; stopped, it detaches first.
    let attached = top_json(&["--pid", &pid.to_string(), "--flush-interval", "100ms"], 5);

    // By URL: `run` serving, `top` reading its protobuf page (the kernel's buckets) and health.
    let run = Daemon::start_with(pid, &["--flush-interval", "100ms"]);
    let url = format!("http://127.0.0.1:{}", run.port);
    std::thread::sleep(Duration::from_secs(3));
    let once = Command::new(bin("eventflux-probe"))
        .args(["top", "--url", &url, "--once", "--window", "3s"])
        .output()
        .expect("top --once");
    let text = String::from_utf8_lossy(&once.stdout);
    assert!(once.status.success(), "{text}{}", String::from_utf8_lossy(&once.stderr));
    assert!(text.starts_with("eventflux-probe top · http://127.0.0.1:"), "{text}");
    let queries = table(&text, "QUERY");
    assert_eq!(queries.keys().map(String::as_str).collect::<Vec<_>>(), ["q0_length", "q1_length_batch", "q2_time"]);
    for (name, row) in &queries {
        close(&format!("{name} IN/s by URL"), figure(&row[0]).expect("IN/s"), (RATE / 2) as f64);
        assert!(figure(&row[4]).is_some_and(|p99| p99 > 0.0), "{name} has a p99 from the page's buckets:\n{text}");
        assert_eq!(row[7], "-", "the page has backpressure by stream only:\n{text}");
    }
    let by_url = top_json(&["--url", &url], 5);

    // The same rows and rates either way.
    for docs in [&attached, &by_url] {
        let last = docs.last().expect("documents");
        assert_eq!(last["engines"][0]["pid"].as_u64(), Some(u64::from(pid)), "{last}");
        assert_eq!(last["engines"][0]["status"], "healthy", "{last}");
        assert!(last["window_seconds"].as_f64().is_some_and(|w| w >= 3.0), "{last}");
        let r = rates(last);
        assert_eq!(r.keys().collect::<Vec<_>>(), ["q0_length", "q1_length_batch", "q2_time"], "{last}");
        for (name, v) in r {
            close(&format!("{name} in --json"), v, (RATE / 2) as f64);
        }
        let stages: Vec<&str> = last["queries"][0]["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .filter_map(|s| s["stage"].as_str())
            .collect();
        assert!(["filter", "window", "aggregate", "emit"].iter().all(|s| stages.contains(s)), "{stages:?}");
    }
    run.stop();
}

#[test]
fn top_without_a_terminal_or_with_a_wrong_source_is_one_line() {
    let _g = serial();
    let demo = demo(RATE);
    let pid = demo.pid().to_string();
    let probe = |args: &[&str]| {
        Command::new(bin("eventflux-probe")).arg("top").args(args).stdin(Stdio::null()).output().expect("run top")
    };
    // Piped: nothing to draw on. Said before attaching anything.
    let line = assert_one_line_error(&probe(&["--pid", &pid]), &["not a terminal", "--once", "--json"]);
    let raised = Semaphores::of(&bin("eventflux-demo")).raised(demo.pid());
    assert!(raised.is_empty(), "nothing attached for a refused top ({line}): {raised:?}");
    assert_one_line_error(&probe(&["--pid", "999999999", "--once"]), &["999999999"]);
    let port = integration_tests::free_port();
    assert_one_line_error(
        &probe(&["--url", &format!("http://127.0.0.1:{port}"), "--once"]),
        &[&format!("127.0.0.1:{port}/metrics"), "refused", "eventflux-probe run"],
    );
    assert_one_line_error(&probe(&["--url", "127.0.0.1:9469", "--once"]), &["--url", "http://"]);
    assert_one_line_error(&probe(&["--pid", &pid, "--once", "--window", "1s", "--interval", "2s"]), &["--window"]);
}

#[test]
fn without_a_pid_top_shows_every_engine_of_the_host() {
    let _g = serial();
    let scratch = integration_tests::Scratch::new("top-node");
    let a = GatedDemo::start(
        &integration_tests::demo_copy(&scratch, "engine-a"),
        &["--rate", "20000", "--events", "800000"],
    );
    let b = GatedDemo::start(
        &integration_tests::demo_copy(&scratch, "engine-b"),
        &["--rate", "10000", "--events", "400000", "--queries", "2"],
    );
    let (pa, pb) = (a.pid(), b.pid());
    let (_a, _b) = (a.open(), b.open());
    let glob = format!("{}/*", scratch.path().display());
    let out = Command::new(bin("eventflux-probe"))
        .args(["top", "--exe", &glob, "--once", "--window", "4s", "--flush-interval", "100ms"])
        .output()
        .expect("top --once");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("every engine of this host"), "{text}");
    for (pid, exe) in [(pa, "engine-a"), (pb, "engine-b")] {
        assert!(text.contains(&format!("pid {pid}  {exe}")), "a header for {exe}:\n{text}");
    }
    // With two engines, the rows carry their pid.
    let queries = table(&text, "QUERY");
    let expected: Vec<String> = ["q0_length", "q1_length_batch", "q2_time"]
        .iter()
        .map(|q| format!("{pa}/{q}"))
        .chain(["q0_length", "q1_length_batch"].iter().map(|q| format!("{pb}/{q}")))
        .collect();
    let mut shown: Vec<String> = queries.keys().cloned().collect();
    shown.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(shown, want, "{text}");
    // Each engine's queries read one of its two streams: half its rate each.
    for (name, row) in &queries {
        let rate = if name.starts_with(&pa.to_string()) { 10_000.0 } else { 5_000.0 };
        close(&format!("{name} IN/s"), figure(&row[0]).expect("IN/s"), rate);
    }
}

/// The pid of the `top` running in the tmux session for engine `pid`.
fn top_process(pid: u32) -> u32 {
    let want = format!("top\0--pid\0{pid}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&want) {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "no top process for {pid}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_signal_to_top_restores_the_terminal_and_detaches() {
    let _g = serial();
    let demo = demo(RATE * 60);
    let pid = demo.pid();
    let _demo = demo.open();
    let semaphores = Semaphores::of(&bin("eventflux-demo"));
    let term = Tmux::start(140, 40);
    term.run("echo before-top");
    for (signal, send) in [("SIGTERM", integration_tests::sigterm as fn(u32)), ("SIGHUP", sighup)] {
        term.run(&format!("{} top --pid {pid}; echo top-exited-$?-after-{signal}", bin("eventflux-probe").display()));
        term.wait_for("the engine", Duration::from_secs(60), |s| s.contains(&format!("pid {pid}  eventflux-demo")));
        assert!(term.alternate_screen());
        assert!(!semaphores.raised(pid).is_empty(), "{signal}: attached, the engine's semaphores are raised");
        send(top_process(pid));
        let after = term.wait_for("the prompt", Duration::from_secs(20), |s| {
            s.trim_end().ends_with(PROMPT.trim_end()) && s.contains(&format!("-after-{signal}"))
        });
        assert!(!term.alternate_screen(), "{signal}: the alternate screen is left:\n{after}");
        assert!(!after.contains("QUERY"), "{signal}: nothing of top's screen stays:\n{after}");
        // A signal is a stop like `q`: the service inside detaches, top exits 0.
        assert!(after.contains(&format!("top-exited-0-after-{signal}")), "{signal}: exit status 0:\n{after}");
    }
}

fn sighup(pid: u32) {
    // SAFETY: kill only sends a signal to a process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0, "SIGHUP {pid}");
}

/// The kernel raises a semaphore once per process however many tools attach, so an observer
/// that joins another moves no count the engine could see: it learns the names and the gauges
/// that do not change from the engine's refresh (every 10 s), as `top` next to a DaemonSet must.
#[test]
fn an_observer_that_joins_another_learns_names_and_steady_gauges() {
    let _g = serial();
    let demo = demo(RATE * 60);
    let pid = demo.pid();
    let first = Daemon::start(pid);
    let _demo = demo.open();
    integration_tests::poll_metrics(first.port, Duration::from_secs(10), "the first observer's names", |m| {
        m.iter().any(|s| {
            s.name == "query_batches_total" && s.labels.iter().any(|(k, v)| k == "query_id" && v == "q0_length")
        })
    });
    let joined = Instant::now();
    let second = Daemon::start(pid);
    let page = integration_tests::poll_metrics(second.port, Duration::from_secs(25), "names and steady gauges", |m| {
        let named = m.iter().any(|s| {
            s.name == "query_batches_total" && s.labels.iter().any(|(k, v)| k == "query_id" && v == "q0_length")
        });
        // Set once at start and never again: only a refresh brings it to a newcomer.
        let capacity = m.iter().any(|s| s.name == "error_store_capacity_events");
        named && capacity
    });
    assert!(joined.elapsed() < Duration::from_secs(25), "{page:?}");
    // And `top` joining both: named rows.
    let docs = top_json(&["--pid", &pid.to_string()], 15);
    let last = docs.last().expect("documents");
    assert_eq!(rates(last).keys().collect::<Vec<_>>(), ["q0_length", "q1_length_batch", "q2_time"], "{last}");
    second.stop();
    first.stop();
}
