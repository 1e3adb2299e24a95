//! What a hostile SRE found, each reproduced on the real kernel: target identity and lifecycle
//! (exec, pid reuse, zombies, a target dying under `latency`, hits at attach, SIGTERM),
//! privileges, bad input, exporter correctness and misbehaving HTTP clients.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    Daemon, GatedDemo, Sample, Scratch, Semaphores, assert_final_error, assert_one_line_error, bin, free_port, json,
    listening_ports, log_events, metric, parse_metrics, poll_http, poll_metrics, run, run_ok, serial, sigint, sigterm,
    summary, value,
};
use serde_json::Value;

/// A target that execs another program stops being this target: its probes were in the old
/// image. `run` notices, says so, detaches and reports it as no longer running.
#[test]
fn a_target_that_execs_is_treated_as_exited() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let demo = demo.to_str().expect("path");
    let target = GatedDemo::start_target(&bin("exec-target"), &[demo, "--events", "1000", "--linger", "10"]);
    let daemon = Daemon::start(target.pid());
    assert_eq!(metric(&daemon.samples(), "eventflux_probe_target_running", &[]), 1.0);
    let target = target.open();
    let m = poll_metrics(daemon.port, Duration::from_secs(5), "target_running 0 after exec", |m| {
        value(m, "eventflux_probe_target_running", &[]) == Some(0.0)
    });
    // Detached from the old image's sites.
    let m = if value(&m, "eventflux_probe_sites_attached", &[]) == Some(0.0) {
        m
    } else {
        poll_metrics(daemon.port, Duration::from_secs(5), "detach after exec", |m| {
            value(m, "eventflux_probe_sites_attached", &[]) == Some(0.0)
        })
    };
    assert_eq!(metric(&m, "eventflux_probe_sites_attached", &[]), 0.0);
    // And says so: the target exec'd, not merely exited.
    let (_, health) = poll_http(daemon.port, "/health", Duration::from_secs(2), "target state execd", |_, body| {
        serde_json::from_str::<Value>(body).is_ok_and(|h| h["target"]["state"] == "execd")
    });
    assert_eq!(json(&health)["target"]["pid"], target.pid(), "{health}");
}

/// Once the target exited and another process got its pid, nothing of that process is
/// reported as the target's: the last values stay as they were.
#[test]
fn pid_reuse_does_not_report_another_process() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "20000"]);
    let pid = target.pid();
    let daemon = Daemon::start(pid);
    assert!(value(&daemon.samples(), "eventflux_uptime_seconds", &[]).is_some());
    target.open_and_wait();
    let before = poll_metrics(daemon.port, Duration::from_secs(5), "target_running 0", |m| {
        value(m, "eventflux_probe_target_running", &[]) == Some(0.0)
    });
    let rss = metric(&before, "eventflux_memory_usage_bytes", &[("component", "rss")]);
    let threads = metric(&before, "eventflux_threads_active", &[]);
    let uptime = metric(&before, "eventflux_uptime_seconds", &[]);

    // Hand the pid to a new process: the kernel gives out ns_last_pid + 1 next.
    let mut impostor = None;
    for _ in 0..20 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("ns_last_pid (needs root)");
        let child = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        if child.id() == pid {
            impostor = Some(child);
            break;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut impostor = impostor.expect("could not hand the pid to another process");
    std::thread::sleep(Duration::from_millis(300));
    let after = daemon.samples();
    assert_eq!(metric(&after, "eventflux_probe_target_running", &[]), 0.0);
    assert_eq!(metric(&after, "eventflux_memory_usage_bytes", &[("component", "rss")]), rss);
    assert_eq!(metric(&after, "eventflux_threads_active", &[]), threads);
    assert_eq!(metric(&after, "eventflux_uptime_seconds", &[]), uptime);
    let _ = impostor.kill();
    let _ = impostor.wait();
}

/// A process that exited but was not reaped is not "without probes": it has exited.
#[test]
fn a_zombie_is_reported_as_exited() {
    let _serial = serial();
    let mut child =
        Command::new(bin("eventflux-demo")).args(["--events", "10"]).stdout(Stdio::null()).spawn().expect("spawn");
    // Not reaped: a zombie once it exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default().contains(") Z ") {
        assert!(Instant::now() < deadline, "the demo never exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    let probe = bin("eventflux-probe");
    for cmd in [&["run", "--pid", &pid][..], &["latency", "--pid", &pid], &["list", "--pid", &pid]] {
        assert_one_line_error(&run(Command::new(&probe).args(cmd)), &["has exited"]);
    }
    child.wait().expect("reap");
}

/// `latency` stops when its target dies, prints what it has and says why.
#[test]
fn latency_stops_when_the_target_exits() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "100000", "--rate", "100000"]);
    let started = Instant::now();
    let mut latency = Command::new(bin("eventflux-probe"))
        .args(["latency", "--pid", &target.pid().to_string(), "--duration", "60s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start latency");
    Semaphores::of(&demo).wait_attached(target.pid(), &mut latency, Duration::from_secs(30), &["query_register"]);
    target.open_and_wait();
    let out = latency.wait_with_output().expect("latency");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "latency waited out its duration");
    assert!(err.contains("exited after"), "{err}");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(!rows.is_empty(), "it printed what it recorded");
}

/// Attaching to a running engine loses nothing after the semaphore rises: the target counts
/// the adds it made while a tool was attached, and `run` reports exactly that, flushing every
/// 10 ms (a flush in the moment between the semaphore rising and the program being linked
/// would otherwise be lost). Three times, attaching at a different moment each time.
#[test]
fn no_counts_are_lost_while_attaching() {
    let _serial = serial();
    for attach_after in [300u64, 450, 600] {
        let target =
            Command::new(bin("count-target")).arg("2.5").stdout(Stdio::piped()).spawn().expect("start count-target");
        integration_tests::wait_exec(target.id(), &bin("count-target"));
        std::thread::sleep(Duration::from_millis(attach_after));
        let daemon = Daemon::start_with(target.id(), &["--flush-interval", "10ms"]);
        let out = target.wait_with_output().expect("count-target");
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let observed = v["observed"].as_u64().expect("observed");
        assert!(observed > 0 && observed < v["total"].as_u64().expect("total"), "attached mid-run: {v}");
        daemon.wait_target_gone(Duration::from_secs(10));
        let m = daemon.samples();
        let counted = metric(&m, "stream_events_received_total", &[("stream_name", "stream0")]) as u64;
        assert_eq!(counted, observed, "attached after {attach_after} ms");
    }
}

/// SIGTERM detaches and exits. The bound is what one perf event per site would take (about
/// 0.1 s each, `EVENTFLUX_PROBE_ATTACH=perf`), with room for a loaded machine: a loose check
/// that exiting waits for nothing else; the figures for `uprobe_multi` links, milliseconds,
/// are BENCHMARKS.md's (`node_scale`).
#[test]
fn sigterm_detaches_in_time_proportional_to_the_sites() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1000"]);
    let daemon = Daemon::start(target.pid());
    let sites = metric(&daemon.samples(), "eventflux_probe_sites_attached", &[]) as u32;
    assert!(sites > 0, "attached to no site");
    let started = Instant::now();
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(250) * sites + Duration::from_secs(1),
        "SIGTERM to exit took {took:?} for {sites} sites"
    );
}

/// The capabilities attaching needs are named when missing. With `uprobe_multi` links (this
/// kernel's default) CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE are enough; with perf events
/// (`EVENTFLUX_PROBE_ATTACH=perf`) Linux 6.16 and later want CAP_SYS_ADMIN, which also covers
/// CAP_BPF and CAP_PERFMON.
#[test]
fn missing_capabilities_are_named() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1000"]);
    let probe = bin("eventflux-probe");
    let cmd = |env: &str, port: u16| {
        format!("exec env {env} {} run --pid {} --listen 127.0.0.1:{port}", probe.display(), target.pid())
    };
    for (env, drop, missing) in [
        ("EVENTFLUX_PROBE_ATTACH=perf", "cap_sys_admin", "CAP_SYS_ADMIN"),
        ("EVENTFLUX_PROBE_ATTACH=auto", "cap_sys_ptrace", "CAP_SYS_PTRACE"),
        ("EVENTFLUX_PROBE_ATTACH=auto", "cap_bpf,cap_perfmon,cap_sys_admin", "CAP_BPF, CAP_PERFMON"),
    ] {
        let out = run(Command::new("capsh").args([&format!("--drop={drop}"), "--", "-c", &cmd(env, free_port())]));
        assert_one_line_error(&out, &[missing, "missing"]);
    }
    for (env, drop) in [
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON.
        ("EVENTFLUX_PROBE_ATTACH=perf", "cap_bpf,cap_perfmon"),
        // uprobe_multi links need no CAP_SYS_ADMIN.
        ("EVENTFLUX_PROBE_ATTACH=auto", "cap_sys_admin"),
    ] {
        let port = free_port();
        let mut child = Command::new("capsh")
            .args([&format!("--drop={drop}"), "--", "-c", &cmd(env, port)])
            .stderr(Stdio::piped())
            .spawn()
            .expect("capsh");
        let deadline = Instant::now() + Duration::from_secs(30);
        let body = loop {
            if let Ok((200, body)) = integration_tests::http_status(port, "/metrics") {
                break body;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("run with {env} without {drop} failed ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "run with {env} without {drop} never served");
            std::thread::sleep(Duration::from_millis(50));
        };
        let m = parse_metrics(&body);
        assert!(metric(&m, "eventflux_probe_sites_attached", &[]) > 0.0, "{env} without {drop}: {body}");
        sigterm(child.id());
        let _ = child.wait();
    }
}

/// `list` refuses what is not a regular file, at once, instead of hanging on a FIFO or reading
/// /dev/zero until memory runs out.
#[test]
fn list_refuses_what_is_not_a_regular_file() {
    let scratch = Scratch::new("fifo");
    let fifo = scratch.path().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let probe = bin("eventflux-probe");
    for path in [fifo.as_path(), std::path::Path::new("/dev/zero"), scratch.path()] {
        let started = Instant::now();
        let out = run(Command::new(&probe).arg("list").arg("--binary").arg(path));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_one_line_error(&out, &[if path == scratch.path() { "is a directory" } else { "not a regular file" }]);
    }
}

/// Absurd arguments are one line each, never a panic.
#[test]
fn absurd_arguments_are_one_clear_line() {
    let _serial = serial();
    let probe = bin("eventflux-probe");
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1000"]);
    let pid = target.pid().to_string();
    let out = run(Command::new(&probe).args(["latency", "--pid", &pid, "--duration", "99999999999999999999h"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("too long") && !err.contains("panicked"), "{err}");
    let out = run(Command::new(&probe).args(["run", "--pid", &pid, "--max-series", "0"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("at least 1"), "{err}");
}

/// `latency --query` with a name the engine does not have is an error naming the ones it has.
#[test]
fn an_unknown_query_is_an_error_naming_the_known_ones() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "400000", "--rate", "200000"]);
    let mut latency = Command::new(bin("eventflux-probe"))
        .args(["latency", "--pid", &target.pid().to_string(), "--query", "nosuch", "--duration", "1500ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("latency");
    Semaphores::of(&demo).wait_attached(target.pid(), &mut latency, Duration::from_secs(30), &["query_register"]);
    let target = target.open();
    let out = latency.wait_with_output().expect("latency");
    assert_final_error(&out, &["no query `nosuch`", "q0_length", "q2_time"]);
    drop(target);
}

/// `--listen` with port 0 serves on the port the kernel chose (found in the kernel's socket
/// table, not in the log), and logs that port for the operator to find.
#[test]
fn port_zero_logs_the_bound_port() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1000"]);
    let mut child = Command::new(bin("eventflux-probe"))
        .args(["run", "--pid", &target.pid().to_string(), "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let [port] = listening_ports(child.id())[..] {
            break port;
        }
        assert!(child.try_wait().expect("wait").is_none(), "run ended");
        assert!(Instant::now() < deadline, "run never listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(port, 0);
    poll_http(port, "/live", Duration::from_secs(60), "live", |s, _| s == 200);
    assert!(integration_tests::http_get(port, "/metrics").contains("eventflux_probe_sites_attached"));
    sigterm(child.id());
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read the log");
    let _ = child.wait();
    // What the operator reads: the event that says where it serves names the chosen port.
    let log: Vec<String> = err.lines().map(str::to_owned).collect();
    let url = format!("http://127.0.0.1:{port}/");
    assert!(
        log_events(&log).iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains(&url))),
        "no log event names {url}: {err}"
    );
}

/// With 200 queries and a cap of 100 series, exactly 100 label sets are folded (each query once,
/// not once per line it appears on), and the daemon's own metrics are never folded.
#[test]
fn folded_series_are_counted_once() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "100000", "--queries", "200", "--streams", "4"]);
    let daemon = Daemon::start_with(target.pid(), &["--max-series", "100"]);
    target.open_and_wait();
    let m = poll_metrics(daemon.port, Duration::from_secs(5), "every query counted", |m| {
        value(m, "eventflux_probe_series_folded", &[("metric", "query_events_processed_total")]).is_some()
    });
    assert_eq!(metric(&m, "eventflux_probe_series_folded", &[("metric", "query_events_processed_total")]), 100.0);
    assert_eq!(metric(&m, "eventflux_probe_series_folded", &[("metric", "query_batches_total")]), 100.0);
    assert!(
        value(&m, "eventflux_probe_series_folded", &[("metric", "eventflux_probe_dropped_events_total")]).is_none()
    );
}

/// A thousand queries over two hundred streams, every batch timed: every query gets its
/// histograms and none is dropped for a full map.
#[test]
fn a_thousand_queries_fit_the_histogram_map() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target =
        GatedDemo::start(&demo, &["--events", "128000", "--queries", "1000", "--streams", "200", "--batch", "64"]);
    let daemon = Daemon::start_with(target.pid(), &["--every-batch", "--max-series", "100000"]);
    let summary = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    assert_eq!(metric(&m, "eventflux_probe_dropped_events_total", &[("reason", "hists_full")]), 0.0);
    for (name, q) in summary["queries"].as_object().expect("queries") {
        let batches = q["batches"].as_f64().expect("batches");
        assert_eq!(metric(&m, "query_latency_seconds_count", &[("query_id", name)]), batches, "{name}");
    }
}

/// Idle connections cannot make a scrape wait for their idle timeout: with the descriptor limit
/// at 256 (about 190 connections) and 400 idle connections open, once under a 2 s idle timeout
/// and once under the default 10 s, a scrape is answered within a few seconds — at the cap the
/// connection that has waited longest for a request gives its slot to the new one.
#[test]
fn idle_connections_do_not_blind_scrapes() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1000"]);
    for idle_timeout in ["2s", "10s"] {
        let port = free_port();
        let mut child = Command::new("prlimit")
            .arg("--nofile=256:256")
            .arg(bin("eventflux-probe"))
            .args(["run", "--pid", &target.pid().to_string(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--http-idle-timeout", idle_timeout])
            .stderr(Stdio::null())
            .spawn()
            .expect("prlimit (util-linux)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "run never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let idle: Vec<TcpStream> = (0..400).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
        assert!(idle.len() > 256, "only {} idle connections made", idle.len());
        let started = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        use std::io::Write;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("the scrape timed out");
        assert!(text.starts_with("HTTP/1.1 200"), "{}", text.lines().next().unwrap_or_default());
        // Well below the 10 s idle timeout, with room for a loaded machine.
        eprintln!("idle timeout {idle_timeout}: scrape answered in {:?}", started.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "idle timeout {idle_timeout}: took {:?}",
            started.elapsed()
        );
        drop(idle);
        sigterm(child.id());
        let _ = child.wait();
    }
}

/// The demo's arguments for the corrupt-note tests: a short, deterministic run.
const NOTE_DEMO: &[&str] = &["--events", "300000", "--queries", "3", "--streams", "2"];

/// The demo's summary without what depends on timing.
fn digest(stdout: &str) -> Value {
    integration_tests::computed_summary(summary(stdout))
}

/// Copies of the demo whose notes lie, each as a stale note or a post-link optimizer leaves
/// them: `ingest`'s pc 2 bytes into its 5-byte nop; `query_unregister`'s pc 1 byte back, into
/// the last byte of the instruction before it; `query_unregister`'s pc at its semaphore (data).
/// Unobserved, each runs as the original does.
fn corrupt_demos(scratch: &Scratch) -> Vec<(&'static str, &'static str, std::path::PathBuf)> {
    let demo = bin("eventflux-demo");
    // (what, probe, new pc from the pc and the semaphore address)
    type Variant = (&'static str, &'static str, fn(u64, u64) -> u64);
    let variants: [Variant; 3] = [
        ("pc+2 (inside the nop)", "ingest", |pc, _| pc + 2),
        ("pc-1 (inside another instruction)", "query_unregister", |pc, _| pc - 1),
        ("pc at data", "query_unregister", |_, semaphore| semaphore),
    ];
    variants
        .into_iter()
        .enumerate()
        .map(|(i, (what, probe, shift))| {
            let copy = scratch.path().join(format!("demo-{i}"));
            integration_tests::with_moved_note(&demo, &copy, probe, shift);
            (what, probe, copy)
        })
        .collect()
}

/// A note that points into the middle of an instruction would have the kernel write its
/// breakpoint there, and the engine would die a moment after the attach. `run` reads the
/// process's own code at each site first: the lying site is refused (one warning, counted in
/// `eventflux_probe_sites_refused_total`, named with the bytes found in `/health`), the others
/// are attached and count exactly, and the engine computes what it computes unobserved.
#[test]
fn run_refuses_a_site_whose_note_lies_and_the_engine_survives() {
    let _serial = serial();
    let scratch = Scratch::new("corrupt-run");
    for (what, probe, copy) in corrupt_demos(&scratch) {
        let expected = digest(&GatedDemo::start(&copy, NOTE_DEMO).open_and_wait());
        let target = GatedDemo::start(&copy, NOTE_DEMO);
        let daemon = Daemon::start(target.pid());
        let summary = target.open_and_wait();
        assert_eq!(digest(&summary), expected, "{what}: the observed engine computed something else");
        let summary = integration_tests::summary(&summary);
        // The other probes count exactly: batches per query.
        let m = poll_metrics(daemon.port, Duration::from_secs(10), "every batch counted", |m| {
            summary["queries"]
                .as_object()
                .expect("queries")
                .iter()
                .all(|(name, q)| value(m, "query_batches_total", &[("query_id", name)]) == q["batches"].as_f64())
        });
        let refused = if what == "pc at data" { 0.0 } else { 1.0 };
        assert_eq!(metric(&m, "eventflux_probe_sites_refused_total", &[]), refused, "{what}");
        // 503: the target is gone by now; the observer's part stays.
        let (_, health) = daemon.health();
        let sites = health["observer"]["sites_refused"].as_array().expect("sites_refused");
        assert_eq!(sites.len() as f64, refused, "{what}: {health}");
        if let Some(site) = sites.first() {
            assert_eq!(site["probe"], format!("eventflux:{probe}"), "{what}: {site}");
            let reason = site["reason"].as_str().expect("reason");
            let found = if probe == "ingest" { "44 00 00" } else { "80 0f 1f 44 00" };
            assert!(reason.contains(found), "{what}: the bytes found are named: {reason}");
        }
        if probe == "ingest" {
            // Not attached: no ingest counts, rather than a dead engine.
            assert_eq!(value(&m, "stream_events_received_total", &[("stream_name", "Stock0")]), None, "{what}");
        }
        assert!(daemon.stop().success());
    }
}

/// The same copies under `node`, `latency`, `trace` and `profile`: each attaches what it
/// attaches, refuses the lying sites, and the engine computes what it computes unobserved.
#[test]
fn every_command_refuses_a_site_whose_note_lies() {
    let _serial = serial();
    let scratch = Scratch::new("corrupt-all");
    let probe = bin("eventflux-probe");
    for (what, _, copy) in corrupt_demos(&scratch) {
        let expected = digest(&GatedDemo::start(&copy, NOTE_DEMO).open_and_wait());
        let semaphores = Semaphores::of(&copy);
        for command in ["node", "latency", "trace", "profile"] {
            let target = GatedDemo::start(&copy, NOTE_DEMO);
            let pid = target.pid().to_string();
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let args: Vec<&str> = match command {
                "node" => vec!["node", "--pid", &pid, "--listen", &listen, "--drain", "0s"],
                "profile" => vec!["profile", "--pid", &pid, "--duration", "30s"],
                c => vec![c, "--pid", &pid, "--duration", "30s"],
            };
            let mut observer = Command::new(&probe)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the observer");
            // Attached: every command takes the registrations, so their semaphore rises.
            semaphores.wait_attached(target.pid(), &mut observer, Duration::from_secs(30), &["query_register"]);
            let summary = target.open_and_wait();
            assert_eq!(digest(&summary), expected, "{what} under {command}: the engine computed something else");
            if command == "node" {
                let m = parse_metrics(&integration_tests::http_get(port, "/metrics"));
                let refused = if what == "pc at data" { 0.0 } else { 1.0 };
                assert_eq!(metric(&m, "eventflux_probe_sites_refused_total", &[]), refused, "{what}");
            }
            sigint(observer.id());
            let status = integration_tests::wait_with_deadline(&mut observer, Duration::from_secs(60));
            let mut err = String::new();
            let _ = observer.stderr.take().expect("stderr").read_to_string(&mut err);
            assert!(!err.contains("panicked"), "{command}: {err}");
            assert!(status.success(), "{command} ({what}) failed: {err}");
        }
    }
}

/// `list` shows a lying site before anyone attaches: from the file with `--binary`, from the
/// process's memory with `--pid` — there also code changed in memory since it was loaded (here
/// the ABI's nop rewritten into another 5-byte nop, harmless to run, but not the file's).
#[test]
fn list_marks_the_sites_an_observer_would_refuse() {
    let _serial = serial();
    let scratch = Scratch::new("corrupt-list");
    let probe = bin("eventflux-probe");
    let (_, _, copy) = corrupt_demos(&scratch).swap_remove(0);
    let out = run_ok(Command::new(&probe).args(["list", "--json", "--binary"]).arg(&copy));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let refused: Vec<&Value> = rows.iter().filter(|r| r["site"] != "ok").collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["name"], "ingest");
    let site = refused[0]["site"].as_str().expect("site");
    assert!(site.contains("holds 44 00 00 ") && site.contains("(0f 1f 44 00 00)"), "{refused:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ingest") && err.contains("would not be attached"), "{err}");
    let table = run_ok(Command::new(&probe).args(["list", "--binary"]).arg(&copy));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().next().expect("header").contains("SITE"));
    assert!(table.lines().any(|l| l.contains(" ingest ") && l.contains("REFUSED")), "{table}");

    // The original binary, its ingest site rewritten in the running process.
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, NOTE_DEMO);
    let pid = target.pid().to_string();
    let json = |out: std::process::Output| -> Vec<Value> { serde_json::from_slice(&out.stdout).expect("JSON") };
    let rows = json(run_ok(Command::new(&probe).args(["list", "--json", "--pid", &pid])));
    assert!(rows.iter().all(|r| r["site"] == "ok"), "{rows:?}");
    let ingest = rows.iter().find(|r| r["name"] == "ingest").expect("ingest");
    let offset = ingest["offset"].as_u64().expect("offset");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let canon = std::fs::canonicalize(&demo).expect("canonicalize");
    let address = maps
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 6 && std::path::Path::new(f[5]) == canon && f[1].contains('x'))
        .find_map(|f| {
            let (start, end) = f[0].split_once('-')?;
            let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
            let off = u64::from_str_radix(f[2], 16).ok()?;
            (offset >= off && offset - off < end - start).then(|| start + offset - off)
        })
        .expect("ingest's site mapped");
    let mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/mem")).expect("open mem");
    std::os::unix::fs::FileExt::write_all_at(&mem, &[0x0f, 0x1f, 0x44, 0x00, 0x01], address).expect("write mem");
    let rows = json(run_ok(Command::new(&probe).args(["list", "--json", "--pid", &pid])));
    let ingest = rows.iter().find(|r| r["name"] == "ingest").expect("ingest");
    assert!(ingest["site"].as_str().expect("site").contains("0f 1f 44 00 01"), "{ingest}");
    let daemon = Daemon::start(target.pid());
    let m = daemon.samples();
    assert_eq!(metric(&m, "eventflux_probe_sites_refused_total", &[]), 1.0);
    assert_eq!(digest(&target.open_and_wait())["events"], 300_000);
    assert!(daemon.stop().success());
}

/// Credentials in an OTLP endpoint (its userinfo) and in OTLP headers, given every way the
/// observer accepts them — `[otlp] endpoint`, `EVENTFLUX_PROBE_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS` — never appear: not in any log
/// line at trace level in either format (hyper's connection pool included), not in `/health`
/// or `/metrics`, not in the one-line error of an endpoint the observer refuses.
#[test]
fn credentials_never_appear_in_logs_endpoints_or_errors() {
    let _serial = serial();
    let receiver = integration_tests::otlp::Receiver::http();
    let scratch = Scratch::new("secrets");
    // Secrets that only the credentials contain (and their Basic-auth form).
    const PASSWORD: &str = "pw-9fZq-secret";
    const HEADER: &str = "hdr-7Kx2-secret";
    let basic = "dXNlcjpwdy05ZlpxLXNlY3JldA"; // base64("user:pw-9fZq-secret"), unpadded prefix
    let url = format!("http://user:{PASSWORD}@127.0.0.1:{}", receiver.port);
    let config = scratch.path().join("probe.toml");
    std::fs::write(&config, format!("[otlp]\nendpoint = \"{url}\"\nprotocol = \"http/protobuf\"\n")).expect("config");
    let config = config.to_str().expect("path").to_owned();
    let headers = ("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization=Bearer {HEADER}"));
    let http = ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned());
    // (how, flags, environment)
    type Way<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, String)>);
    let ways: Vec<Way> = vec![
        ("[otlp] endpoint", vec!["--config", &config], vec![headers.clone()]),
        ("EVENTFLUX_PROBE_OTLP_ENDPOINT", vec![], vec![("EVENTFLUX_PROBE_OTLP_ENDPOINT", url.clone()), http.clone()]),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", vec![], vec![("OTEL_EXPORTER_OTLP_ENDPOINT", url.clone()), http, headers]),
    ];
    let leaks = |text: &str| [PASSWORD, HEADER, basic].into_iter().find(|s| text.contains(s));
    for (way, args, env) in &ways {
        for format in ["pretty", "json"] {
            let demo = GatedDemo::start(&bin("eventflux-demo"), &["--events", "200000", "--rate", "100000"]);
            let mut all: Vec<&str> = vec!["--log-level", "trace", "--log-format", format, "--every-batch"];
            all.extend(args.iter().copied());
            let daemon = Daemon::start_with_env(demo.pid(), &all, env);
            let _ = demo.open_and_wait();
            // Exports happened (the collector got spans), so connections were made and logged.
            let deadline = Instant::now() + Duration::from_secs(20);
            while receiver.spans().is_empty() {
                if Instant::now() > deadline {
                    let (_, log) = daemon.stop_with_log();
                    let useful: Vec<&String> = log
                        .iter()
                        .filter(|l| {
                            l.contains("otlp") || l.contains("OTLP") || l.contains("WARN") || l.contains("ERROR")
                        })
                        .collect();
                    panic!("{way}: nothing exported: {useful:#?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            for path in ["/health", "/metrics"] {
                let (_, body) = integration_tests::http_status(daemon.port, path).expect(path);
                assert_eq!(leaks(&body), None, "{way}: {path} shows a secret: {body}");
                if path == "/health" {
                    assert!(body.contains("***@127.0.0.1") || *way != "[otlp] endpoint", "{way}: masked URL: {body}");
                }
            }
            let (status, log) = daemon.stop_with_log();
            assert!(status.success());
            assert!(log.len() > 50, "{way} {format}: trace level logs plenty ({} lines)", log.len());
            for line in &log {
                assert_eq!(leaks(line), None, "{way} {format}: {line}");
            }
        }
    }
    // Refused before attaching: schemes that are not HTTP, named by where they came from, the
    // credentials masked.
    let demo = GatedDemo::start(&bin("eventflux-demo"), &["--events", "1000"]);
    let pid = demo.pid().to_string();
    for (var, value, says) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("grpc://user:{PASSWORD}@127.0.0.1:4317"),
            "scheme `grpc` is not supported",
        ),
        (
            "EVENTFLUX_PROBE_OTLP_ENDPOINT",
            format!("ftp://user:{PASSWORD}@127.0.0.1:21"),
            "scheme `ftp` is not supported",
        ),
    ] {
        let out = run(Command::new(bin("eventflux-probe"))
            .args(["run", "--pid", &pid, "--listen", "127.0.0.1:0"])
            .env(var, &value));
        assert_one_line_error(&out, &[says]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(leaks(&err), None, "{err}");
        assert!(err.contains("***@127.0.0.1"), "{err}");
    }
}

/// Inputs that are not files, or not sane ones, are one line each, at once, and nothing grows:
/// a config that is a device (also through a symlink), a FIFO, a sparse multi-gigabyte file; a
/// log output that is a FIFO; a huge value (named, not echoed whole); a variable whose value is
/// not UTF-8 (refused, not ignored); globs `node` cannot match as the user means them.
#[test]
fn inputs_that_are_not_sane_files_or_values_are_one_line_each() {
    use std::os::unix::ffi::OsStrExt;
    let _serial = serial();
    let scratch = Scratch::new("inputs");
    let dir = scratch.path();
    let fifo = dir.join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let zero_link = dir.join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero_link).expect("symlink");
    let sparse = dir.join("sparse.toml");
    std::fs::File::create(&sparse).and_then(|f| f.set_len(3 << 30)).expect("sparse file");
    let huge = dir.join("huge.toml");
    std::fs::write(&huge, format!("[http]\nlisten = \"{}\"\n", "9".repeat(500_000))).expect("config");
    let demo = GatedDemo::start(&bin("eventflux-demo"), &["--events", "1000"]);
    let pid = demo.pid().to_string();
    let probe = bin("eventflux-probe");
    let run_with = |args: &[&std::ffi::OsStr], env: Option<(&str, &std::ffi::OsStr)>| {
        let mut cmd = Command::new(&probe);
        cmd.args(["run", "--pid", &pid, "--listen", "127.0.0.1:0"]).args(args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let out = run(&mut cmd);
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?} took {:?}", started.elapsed());
        out
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    for (path, says) in [
        (os("/dev/zero"), "not a regular file"),
        (zero_link.clone().into_os_string(), "not a regular file"),
        (fifo.clone().into_os_string(), "not a regular file"),
        (sparse.clone().into_os_string(), "more than the 1048576 bytes a configuration file may have"),
    ] {
        assert_one_line_error(&run_with(&[&os("--config"), &path], None), &[says]);
    }
    let out = run_with(&[&os("--config"), huge.as_os_str()], None);
    assert_one_line_error(&out, &["is not a socket address"]);
    assert!(out.stderr.len() < 600, "the value is cut: {} bytes of error", out.stderr.len());
    assert!(String::from_utf8_lossy(&out.stderr).contains("more characters)"));
    assert_one_line_error(&run_with(&[&os("--log-output"), fifo.as_os_str()], None), &["not a regular file"]);
    let bad = std::ffi::OsStr::from_bytes(b"127.0.0.1:\xff");
    assert_one_line_error(&run_with(&[], Some(("EVENTFLUX_PROBE_HTTP_LISTEN", bad))), &["not UTF-8"]);
    for (glob, says) in [("[", "`[` is not supported"), ("eventflux", "can never match")] {
        let out = run(Command::new(&probe).args(["node", "--listen", "127.0.0.1:0", "--exe", glob]));
        assert_one_line_error(&out, &[says]);
    }
}

/// An engine whose sources connected before the observer came shows them: `connections_active`
/// is the engine's own gauge, replayed to a new observer — not opens minus closes since the
/// attach, which would say 0 — and it drops to 0 when the sources close.
#[test]
fn connections_open_before_the_attach_are_shown() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let child = Command::new(&demo)
        .args(["--events", "2000000", "--rate", "400000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo");
    integration_tests::wait_exec(child.id(), &demo);
    // The sources connect at the first event, long before the attach ends.
    std::thread::sleep(Duration::from_millis(300));
    let daemon = Daemon::start(child.id());
    let m = poll_metrics(daemon.port, Duration::from_secs(10), "connections_active", |m| {
        m.iter().any(|s| s.name == "connections_active" && s.value > 0.0)
    });
    let out = child.wait_with_output().expect("demo");
    let summary = summary(&String::from_utf8_lossy(&out.stdout));
    for (protocol, c) in summary["connections"].as_object().expect("connections") {
        let opened = c["opened"].as_f64().expect("opened");
        assert_eq!(metric(&m, "connections_active", &[("protocol", protocol)]), opened, "{protocol} while running");
    }
    poll_metrics(daemon.port, Duration::from_secs(10), "connections closed", |m| {
        m.iter().filter(|s| s.name == "connections_active").all(|s| s.value == 0.0)
    });
    assert!(daemon.stop().success());
}

/// 5,000 queries on 50 streams: every registration replayed to the observer arrives (the
/// registration ring holds them), so `query_active_count` is 5000 and every query shows under
/// its own name, none as a bare id; `/health` counts them all and lost no name.
#[test]
fn five_thousand_queries_arrive_with_their_names() {
    let _serial = serial();
    let demo = GatedDemo::start(
        &bin("eventflux-demo"),
        &["--queries", "5000", "--streams", "50", "--events", "1000000", "--rate", "200000"],
    );
    let daemon = Daemon::start_with(demo.pid(), &["--max-series", "20000"]);
    let demo = demo.open();
    let window_gauges = |m: &[Sample]| -> std::collections::BTreeSet<String> {
        m.iter()
            .filter(|s| s.name == "query_window_size_bytes")
            .filter_map(|s| s.labels.iter().find(|(k, _)| k == "query_id").map(|(_, v)| v.clone()))
            .collect()
    };
    // Registrations first, then each query's window gauge with its first flush (every second,
    // later on a loaded machine): both, eventually.
    let m = poll_metrics(
        daemon.port,
        Duration::from_secs(30),
        "5000 queries registered, each with its window gauge",
        |m| value(m, "query_active_count", &[]) == Some(5000.0) && window_gauges(m).len() == 5000,
    );
    let names = window_gauges(&m);
    let names: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names.len(), 5000, "every query's window gauge, by name");
    let bare: Vec<&&str> =
        names.iter().filter(|n| n.strip_prefix("query").is_some_and(|d| d.parse::<u32>().is_ok())).collect();
    assert!(bare.is_empty(), "queries without their names: {:?}", &bare[..bare.len().min(5)]);
    assert!(
        names.contains("q0_length") && names.contains("q4999_length_batch"),
        "{:?}",
        names.iter().take(3).collect::<Vec<_>>()
    );
    let (_, health) = daemon.health();
    assert_eq!(health["queries_running"], 5000, "{health}");
    assert_eq!(health["observer"]["registrations_lost"], 0, "{health}");
    drop(demo);
    assert!(daemon.stop().success());
}
