//! The daemon's lifecycle and its health endpoints on the real kernel, observed the way
//! Kubernetes and an SRE observe it: by polling `/ready`, `/live`, `/health` and `/metrics`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    Daemon, GatedDemo, Scratch, assert_one_line_error, bin, counts_match, health, http_status, json, parse_metrics,
    poll_http, serial, sigterm, summary, value, wait_with_deadline,
};
use serde_json::Value;

/// attaching → ready → target killed → 503 within 1 s with the reason → `--follow` attaches to
/// a restarted demo, whose counts are exact (nothing of the old process mixed in) → SIGTERM:
/// not ready at once, drains, exits 0.
#[test]
fn the_whole_lifecycle() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    // The first engine runs until killed.
    let first = GatedDemo::start(&demo, &["--rate", "20000"]).open();
    let first_pid = first.pid();
    let mut daemon = Daemon::start_with(
        first_pid,
        &["--follow", "--drain", "2s", "--grace-period", "60s", "--flush-interval", "100ms"],
    );
    let port = daemon.port;
    poll_http(port, "/ready", Duration::from_secs(10), "ready", |s, _| s == 200);
    let (status, _) = http_status(port, "/live").expect("live");
    assert_eq!(status, 200);
    // Counts arrive: the first engine is observed.
    poll_http(port, "/metrics", Duration::from_secs(10), "counting", |_, body| {
        value(&parse_metrics(body), "query_batches_total", &[("query_id", "q0_length")]).is_some_and(|v| v > 0.0)
    });
    let (code, h) = health(port);
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["target"]["pid"], first_pid);
    assert_eq!(h["observer"]["ready"], true);
    assert!(h["queries_running"].as_u64() == Some(3), "{h}");

    // Another instance of the same executable, running alongside the first: not a successor.
    // (The observer looks for such processes every 250 ms while its target runs: one that
    // started within the last look before the exit counts as a restart.) No endpoint shows
    // that look, so the test leaves it six of them: a starved observer still gets one in.
    let alongside = GatedDemo::start(&demo, &["--events", "10"]);
    std::thread::sleep(Duration::from_millis(1500));

    // Killed: both endpoints say so within a second, with the reason.
    let mut first = first;
    let killed = Instant::now();
    first.child.kill().expect("kill");
    let (_, body) = poll_http(port, "/ready", Duration::from_secs(1), "503 after the kill", |s, _| s == 503);
    assert!(body.contains("exited"), "{body}");
    let (code, h) = health(port);
    assert!(killed.elapsed() < Duration::from_secs(1), "noticed after {:?}", killed.elapsed());
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["status"], "unhealthy");
    assert!(h["reasons"][0].as_str().is_some_and(|r| r.contains(&format!("process {first_pid} exited"))), "{h}");
    let _ = first.child.wait();
    // The last values stay served in the grace period (a snapshot is shared for 100 ms, so the
    // scrape right after may still be the one from before the kill).
    let (_, body) = poll_http(port, "/metrics", Duration::from_secs(1), "target_running 0", |_, body| {
        value(&parse_metrics(body), "eventflux_probe_target_running", &[]) == Some(0.0)
    });
    let m = parse_metrics(&body);
    assert!(value(&m, "query_batches_total", &[("query_id", "q0_length")]).is_some_and(|v| v > 0.0));

    // The instance that ran alongside is not followed (several follow polls pass).
    std::thread::sleep(Duration::from_secs(1));
    let (code, h) = health(port);
    assert_eq!((code, h["target"]["pid"].as_u64()), (503, Some(u64::from(first_pid))), "{h}");
    drop(alongside);

    // A new process of the same executable: followed, and only its counts are served.
    let second = GatedDemo::start(&demo, &["--events", "50000"]);
    let second_pid = second.pid();
    poll_http(port, "/ready", Duration::from_secs(10), "ready for the new process", |s, _| s == 200);
    let (_, h) = health(port);
    assert_eq!(h["target"]["pid"], second_pid, "{h}");
    let summary = summary(&second.open_and_wait());
    // The demo flushed its final counts at exit; the daemon serves the last values.
    poll_http(port, "/metrics", Duration::from_secs(5), "exact counts of the new process", |_, body| {
        counts_match(&parse_metrics(body), &summary, &[]).is_ok()
    });
    let m = parse_metrics(&integration_tests::http_get(port, "/metrics"));
    assert_eq!(
        value(&m, "stream_events_received_total", &[("stream_name", "Stock0")]),
        summary["streams"]["Stock0"]["received"].as_f64()
    );

    // SIGTERM: not ready at once, still serving during the drain, then exit 0. (The second
    // demo has exited: the daemon waits for a third; the drain applies in any phase.)
    let third = GatedDemo::start(&demo, &["--rate", "5000"]).open();
    poll_http(port, "/ready", Duration::from_secs(10), "ready for the third process", |s, _| s == 200);
    let stopped = Instant::now();
    sigterm(daemon.child.id());
    let (_, body) = poll_http(port, "/ready", Duration::from_secs(1), "503 on SIGTERM", |s, _| s == 503);
    assert!(body.contains("shutting down"), "{body}");
    let (code, _) = http_status(port, "/metrics").expect("metrics while draining");
    assert_eq!(code, 200);
    let status = wait_with_deadline(&mut daemon.child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(stopped.elapsed() >= Duration::from_secs(2), "exited before the drain: {:?}", stopped.elapsed());
    drop(third);
}

/// Without `--follow` the daemon exits 0 once the grace period after the target's exit is over.
#[test]
fn the_daemon_exits_after_the_grace_period() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1000"]);
    let mut daemon = Daemon::start_with(target.pid(), &["--grace-period", "2s"]);
    target.open_and_wait();
    let exited = Instant::now();
    let port = daemon.port;
    poll_http(port, "/ready", Duration::from_secs(1), "503 after exit", |s, _| s == 503);
    // Still serving within the grace period.
    let (code, _) = http_status(port, "/metrics").expect("metrics in the grace period");
    assert_eq!(code, 200);
    let status = wait_with_deadline(&mut daemon.child, Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert!(
        exited.elapsed() >= Duration::from_secs(2),
        "exited {:?} after the target, before its grace period",
        exited.elapsed()
    );
}

/// Driven into backpressure, errors and a disconnected sink, the engine is `degraded` with
/// each reason; once the trouble is over and out of the window, `healthy` again. Thresholds from a config file.
#[test]
fn health_degrades_under_trouble_and_recovers() {
    let _serial = serial();
    let scratch = Scratch::new("health");
    let config = scratch.path().join("probe.toml");
    std::fs::write(&config, "[health]\nwindow = \"3s\"\nmax_error_ratio = 0.1\nmax_backpressure_per_second = 1.0\n")
        .expect("config");
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--mode", "async", "--rate", "20000", "--trouble", "6..12"]);
    let daemon = Daemon::start_with(
        target.pid(),
        &["--config", config.to_str().expect("utf-8 path"), "--flush-interval", "100ms"],
    );
    let port = daemon.port;
    // In trouble from 6 s to 12 s after its first event, by the demo's own clock, which starts
    // as its gate opens (a moment later on a loaded machine: the margin).
    let opened = Instant::now();
    let mut target = target.open();
    let (trouble, margin) = (opened + Duration::from_secs(6)..opened + Duration::from_secs(12), Duration::from_secs(1));
    let sleep_until = |t: Instant| std::thread::sleep(t.saturating_duration_since(Instant::now()));
    let status_of = |body: &str| json(body)["status"].as_str().unwrap_or("").to_owned();
    // Healthy with a full window of history behind it (the observer up for more than 3 s).
    let (_, body) = poll_http(port, "/health", Duration::from_secs(6), "healthy before the trouble", |s, b| {
        s == 200 && status_of(b) == "healthy" && json(b)["observer"]["uptime_seconds"].as_f64().is_some_and(|u| u > 4.0)
    });
    let h = json(&body);
    assert_eq!(h["checks"]["event_pipeline"], "ok", "{h}");
    sleep_until(trouble.start);
    let limit = (trouble.start + Duration::from_secs(8) + margin).saturating_duration_since(Instant::now());
    let (code, body) = poll_http(port, "/health", limit, "degraded in trouble", |_, b| {
        let h = json(b);
        let reasons = h["reasons"].to_string();
        h["status"] == "degraded"
            && reasons.contains("error ratio")
            && reasons.contains("backpressure")
            && reasons.contains("sink failures")
    });
    assert_eq!(code, 200, "degraded still answers 200");
    let h = json(&body);
    assert_eq!(h["checks"]["event_pipeline"], "degraded", "{h}");
    // Query 0's sink is disconnected in trouble: its rows fail.
    assert_eq!(h["checks"]["connectors"], "degraded", "{h}");
    sleep_until(trouble.end + margin);
    poll_http(port, "/health", Duration::from_secs(10), "healthy after the trouble", |s, b| {
        s == 200 && status_of(b) == "healthy"
    });
    let _ = target.child.kill();
}

/// `--log-format json`: every line is one JSON object in the engine team's format.
#[test]
fn json_logs_parse_and_carry_fields() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1000"]);
    let pid = target.pid();
    let mut daemon = Daemon::start_with(pid, &["--log-format", "json"]);
    daemon.wait_for_event("attached", Duration::from_secs(5));
    target.open_and_wait();
    daemon.wait_for_event("target exited", Duration::from_secs(5));
    let (status, lines) = daemon.stop_with_log();
    assert!(status.success(), "{status}");
    for line in &lines {
        let v = json(line);
        let ts = v["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {line}"));
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "timestamp {ts}");
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap_or("")), "{line}");
        assert!(v["target"].as_str().is_some_and(|t| t.starts_with("eventflux_probe")), "{line}");
        assert!(v["message"].is_string() && v["fields"].is_object(), "{line}");
    }
    let attached = lines.iter().map(|l| json(l)).find(|v| v["message"] == "attached").expect("attached line");
    assert_eq!(attached["level"], "INFO");
    assert_eq!(attached["fields"]["pid"], pid);
    assert!(attached["fields"]["probes"].as_u64().is_some_and(|n| n > 10), "{attached}");
    // Lifecycle events of a target are logged in its span, whose fields they carry.
    let exited = lines.iter().map(|l| json(l)).find(|v| v["message"] == "target exited").expect("target exited line");
    assert_eq!(exited["level"], "INFO");
    assert_eq!(exited["span"]["name"], "target", "{exited}");
    assert!(exited["span"]["id"].is_string(), "{exited}");
    assert_eq!(exited["fields"]["pid"], pid, "{exited}");
    // The environment is never logged.
    assert!(!lines.iter().any(|l| l.contains("PATH=")), "{lines:#?}");
}

fn run_with_config(config: &str, extra_env: &[(&str, &str)]) -> std::process::Output {
    let scratch = Scratch::new("config");
    let path = scratch.path().join("bad.toml");
    std::fs::write(&path, config).expect("config");
    let mut cmd = Command::new(bin("eventflux-probe"));
    // A process without eventflux probes (not this test binary: it has some): were the
    // configuration taken, `run` would fail at once rather than attach.
    cmd.args(["run", "--pid", "1", "--config"]).arg(&path);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    integration_tests::run(cmd.stdout(Stdio::null()))
}

/// Every kind of configuration mistake is one line naming the key and its line.
#[test]
fn config_errors_name_the_key_and_line() {
    let out = run_with_config("[http]\nlisten = \"127.0.0.1:9469\"\n\n[helth]\nwindow = \"3s\"\n", &[]);
    assert_one_line_error(&out, &["line 4", "helth"]);
    let out = run_with_config("[limits]\nmax_series = \"many\"\n", &[]);
    assert_one_line_error(&out, &["line 2", "limits.max_series"]);
    let out = run_with_config("[http]\n\nlisten = \"localhost:99999\"\n", &[]);
    assert_one_line_error(&out, &["line 3", "http.listen", "localhost:99999"]);
    let out = run_with_config("[lifecycle]\ndrain = \"soon\"\n", &[]);
    assert_one_line_error(&out, &["line 2", "lifecycle.drain"]);
    let out = run_with_config("[http\n", &[]);
    assert_one_line_error(&out, &["line 1"]);
    let out = run_with_config("", &[("EVENTFLUX_PROBE_HTTP_LISTN", "127.0.0.1:1")]);
    assert_one_line_error(&out, &["EVENTFLUX_PROBE_HTTP_LISTN"]);
    let out = run_with_config("", &[("EVENTFLUX_PROBE_SAMPLING_RATE", "fast")]);
    assert_one_line_error(&out, &["EVENTFLUX_PROBE_SAMPLING_RATE"]);
    let missing = Command::new(bin("eventflux-probe"))
        .args(["run", "--pid", "1", "--config", "/nonexistent/probe.toml"])
        .output()
        .expect("run");
    assert_one_line_error(&missing, &["/nonexistent/probe.toml"]);
}

/// Flags over environment over file: the daemon listens where the highest layer says.
#[test]
fn config_precedence_is_flag_then_env_then_file() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1000"]);
    let pid = target.pid().to_string();
    let scratch = Scratch::new("precedence");
    let config = scratch.path().join("probe.toml");
    let [file_port, env_port, flag_port] = [0; 3].map(|_| integration_tests::free_port());
    std::fs::write(&config, format!("[http]\nlisten = \"127.0.0.1:{file_port}\"\n")).expect("config");
    let start = |env: bool, flag: bool| {
        let mut cmd = Command::new(bin("eventflux-probe"));
        cmd.args(["run", "--pid", &pid, "--drain", "0", "--config"]).arg(&config);
        if env {
            cmd.env("EVENTFLUX_PROBE_HTTP_LISTEN", format!("127.0.0.1:{env_port}"));
        }
        if flag {
            cmd.args(["--listen", &format!("127.0.0.1:{flag_port}")]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start run")
    };
    for (env, flag, port) in [(true, true, flag_port), (true, false, env_port), (false, false, file_port)] {
        let mut child = start(env, flag);
        poll_http(port, "/live", Duration::from_secs(30), "listening", |s, _| s == 200);
        sigterm(child.id());
        let status = wait_with_deadline(&mut child, Duration::from_secs(30));
        assert!(status.success(), "{status}");
    }
    drop(target);
}

/// Kernel-side diagnostics reach the daemon's log when a debug level asks for them: 5,000
/// queries overflow the counter map and the registration ring buffer (counted drops); with
/// `eventflux_probe_ebpf=debug` each drop is also a log line saying what was lost, without it
/// none is (and the drops are counted all the same).
#[test]
fn kernel_diagnostics_reach_the_log_at_debug_level() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    for debug in [true, false] {
        let target = GatedDemo::start(&demo, &["--queries", "5000", "--events", "2000"]);
        let level = if debug { "info,eventflux_probe_ebpf=debug" } else { "info" };
        let daemon = Daemon::start_with(target.pid(), &["--log-format", "json", "--log-level", level]);
        target.open_and_wait();
        poll_http(daemon.port, "/ready", Duration::from_secs(5), "503 after exit", |s, _| s == 503);
        let m = daemon.samples();
        let dropped = value(&m, "eventflux_probe_dropped_events_total", &[("reason", "counters_full")]).unwrap_or(0.0);
        assert!(dropped > 0.0, "5,000 queries should overflow the counter map");
        let (status, lines) = daemon.stop_with_log();
        assert!(status.success(), "{status}");
        let kernel: Vec<Value> = lines
            .iter()
            .map(|l| json(l))
            .filter(|v| v["target"].as_str().is_some_and(|t| t.starts_with("eventflux_probe_ebpf")))
            .collect();
        if debug {
            assert!(
                kernel
                    .iter()
                    .any(|v| v["level"] == "DEBUG"
                        && v["message"].as_str().is_some_and(|m| m.contains("counter map full"))),
                "no kernel diagnostic in {} log lines",
                lines.len()
            );
        } else {
            assert!(kernel.is_empty(), "kernel diagnostics without the debug level: {:?}", kernel.first());
        }
    }
}
