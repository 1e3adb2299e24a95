//! OTLP export of sampled batches' span trees on the real kernel, into a real receiver that
//! decodes the collector's protobuf messages (gRPC and HTTP/protobuf).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::otlp::{Received, Receiver, attr, settle};
use integration_tests::{
    Daemon, GatedDemo, Scratch, assert_one_line_error, bin, computed_summary, http_status, parse_metrics, poll_http,
    poll_metrics, run_ok, serial, summary, value,
};
use serde_json::Value;

const DEMO: &[&str] = &["--events", "6400", "--batch", "64", "--queries", "3", "--streams", "2"];
/// Batches of DEMO: 100 chunks, two queries on one of the two streams.
const BATCHES: usize = 150;

fn spans_by_trace(spans: &[Received]) -> BTreeMap<Vec<u8>, Vec<&Received>> {
    let mut by: BTreeMap<Vec<u8>, Vec<&Received>> = BTreeMap::new();
    for s in spans {
        by.entry(s.span.trace_id.clone()).or_default().push(s);
    }
    by
}

/// With every batch sampled and traced, each batch of a `--events N` demo is exactly one trace:
/// a root "Query Execution" span and its stage spans with valid parent links, children inside
/// their parents, the design document's attributes and the resource's; per query as many
/// traces as the demo counts batches. Over gRPC and over HTTP/protobuf.
#[test]
fn every_batch_is_one_trace_over_grpc_and_http() {
    let _serial = serial();
    for protocol in ["grpc", "http/protobuf"] {
        let receiver = if protocol == "grpc" { Receiver::grpc() } else { Receiver::http() };
        let demo = bin("eventflux-demo");
        let target = GatedDemo::start(&demo, DEMO);
        let pid = target.pid();
        let endpoint = format!("http://127.0.0.1:{}", receiver.port);
        let scratch = Scratch::new("otlp");
        let config = scratch.path().join("probe.toml");
        std::fs::write(
            &config,
            format!(
                "[otlp]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\ninterval = \"200ms\"\nenvironment = \"test\"\nservice_version = \"9.9\"\n"
            ),
        )
        .expect("config");
        let daemon = Daemon::start_with(pid, &["--every-batch", "--config", config.to_str().expect("utf-8")]);
        // Past the markers' settle time, so the first batch is traced whole.
        std::thread::sleep(Duration::from_millis(300));
        let summary = summary(&target.open_and_wait());
        let deadline = Instant::now() + Duration::from_secs(20);
        while spans_by_trace(&receiver.spans()).len() < BATCHES && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        settle(&receiver, &[daemon.port]);
        let spans = receiver.spans();
        let traces = spans_by_trace(&spans);
        assert_eq!(traces.len(), BATCHES, "{protocol}: one trace per batch");
        let mut per_query: BTreeMap<String, u64> = BTreeMap::new();
        for (id, t) in &traces {
            let roots: Vec<&&Received> = t.iter().filter(|s| s.span.parent_span_id.is_empty()).collect();
            assert_eq!(roots.len(), 1, "{protocol}: one root in trace {id:?}");
            let root = &roots[0].span;
            assert_eq!(root.name, "Query Execution");
            let query = attr(&root.attributes, "query.id").expect("query.id");
            *per_query.entry(query.clone()).or_default() += 1;
            assert_eq!(attr(&root.attributes, "event.count").as_deref(), Some("64"));
            assert!(attr(&root.attributes, "stream.name").is_some_and(|s| s.starts_with("Stock")));
            let names: Vec<&str> = t.iter().map(|s| s.span.name.as_str()).collect();
            assert!(names.contains(&"Filter Processing"), "{protocol}: {names:?}");
            for s in t {
                let span = &s.span;
                assert!(span.start_time_unix_nano <= span.end_time_unix_nano);
                if span.parent_span_id.is_empty() {
                    continue;
                }
                let parent = t.iter().find(|p| p.span.span_id == span.parent_span_id).expect("parent in the trace");
                assert!(
                    parent.span.start_time_unix_nano <= span.start_time_unix_nano
                        && span.end_time_unix_nano <= parent.span.end_time_unix_nano,
                    "{} outside {}",
                    span.name,
                    parent.span.name
                );
                assert_eq!(attr(&span.attributes, "query.id"), Some(query.clone()));
                assert!(attr(&span.attributes, "processor.type").is_some(), "{}", span.name);
                let r = &s.resource;
                assert_eq!(attr(r, "service.name").as_deref(), Some("eventflux"));
                assert_eq!(attr(r, "service.version").as_deref(), Some("9.9"));
                assert_eq!(attr(r, "deployment.environment").as_deref(), Some("test"));
                assert_eq!(attr(r, "process.pid"), Some(pid.to_string()));
            }
        }
        for (name, q) in summary["queries"].as_object().expect("queries") {
            assert_eq!(per_query.get(name).copied(), q["batches"].as_u64(), "{protocol}: traces of {name}");
        }
        // Span durations agree with the stage histograms: per query and stage, as many spans
        // as histogram samples, and their self times sum to the histogram's sum.
        let mut stage_spans: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for s in &spans {
            let Some(stage) = attr(&s.span.attributes, "processor.type") else { continue };
            // Component operations (a table lookup, a sink publish) have histograms of their own.
            if !eventflux_probe_common::stage::NAMES.contains(&stage.as_str()) {
                continue;
            }
            let query = attr(&s.span.attributes, "query.id").expect("query.id");
            let self_ns: u64 =
                attr(&s.span.attributes, "eventflux.self_ns").and_then(|v| v.parse().ok()).expect("self_ns");
            let e = stage_spans.entry((query, stage)).or_default();
            e.0 += 1;
            e.1 += self_ns;
        }
        assert!(!stage_spans.is_empty());
        // `/metrics` is a snapshot of at most 100 ms ago: the one right after the last span may
        // predate the last sample. Until the counts agree, or 5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        let m = loop {
            let m = daemon.samples();
            let agree = stage_spans.iter().all(|((query, stage), (n, _))| {
                value(&m, "query_stage_latency_seconds_count", &[("query_id", query), ("stage", stage)])
                    == Some(*n as f64)
            });
            if agree || Instant::now() > deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        for ((query, stage), (n, self_ns)) in &stage_spans {
            let labels = [("query_id", query.as_str()), ("stage", stage.as_str())];
            let count = value(&m, "query_stage_latency_seconds_count", &labels);
            let sum = value(&m, "query_stage_latency_seconds_sum", &labels).expect("histogram sum");
            assert_eq!(count, Some(*n as f64), "{protocol}: {query} {stage} spans vs histogram count");
            let want = *self_ns as f64 / 1e9;
            assert!(
                (sum - want).abs() <= want * 1e-9 + 1e-12,
                "{protocol}: {query} {stage}: histogram {sum} s, spans {want} s"
            );
        }
        assert_eq!(value(&m, "eventflux_probe_spans_exported_total", &[]), Some(spans.len() as f64));
        assert_eq!(value(&m, "eventflux_probe_spans_dropped_total", &[("reason", "export_failed")]), Some(0.0));
        let status = daemon.stop();
        assert!(status.success(), "{status}");
    }
}

/// Under `run`'s default budget (1024 sampled batches per second per engine thread, and the
/// tail sampler's share) the traced batches stay within the budget however many batches the
/// engine runs: a one-thread demo at full speed in chunks of 8 events.
#[test]
fn traced_batches_stay_within_the_default_budget() {
    let _serial = serial();
    let receiver = Receiver::http();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "2000000", "--batch", "8"]);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", receiver.port)),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("EVENTFLUX_PROBE_OTLP_INTERVAL", "200ms".to_owned()),
    ];
    let daemon = Daemon::start_with_env(target.pid(), &[], &env);
    std::thread::sleep(Duration::from_millis(300));
    let summary = summary(&target.open_and_wait());
    let batches: u64 =
        summary["queries"].as_object().expect("queries").values().filter_map(|q| q["batches"].as_u64()).sum();
    let elapsed = summary["elapsed_s"].as_f64().expect("elapsed_s");
    // Everything queued has been sent after two export intervals.
    std::thread::sleep(Duration::from_secs(1));
    // Batches' traces (snapshots are traces of their own, one per 50,000 events).
    let traces = roots(&receiver.spans()).len() as f64;
    let m = daemon.samples();
    assert_eq!(value(&m, "eventflux_probe_spans_dropped_total", &[("reason", "queue_full")]), Some(0.0));
    // 1024 a second, and each query's tail sampler up to a quarter of that for its emitting
    // batches plus the slowest of each second (docs/probes.md, Tails).
    let queries = summary["queries"].as_object().expect("queries").len() as f64;
    let budget = (1024.0 * (1.0 + queries / 4.0) + 20.0 * queries) * elapsed;
    assert!(traces <= budget * 1.25 + 64.0, "{traces} traces in {elapsed:.2} s: over the budget of {budget:.0}");
    assert!(traces >= budget * 0.25, "{traces} traces in {elapsed:.2} s of {batches} batches: sampling too sparse");
    assert!((batches as f64) > traces * 20.0, "the engine ran {batches} batches: the budget must matter");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
}

/// With the collector down, spans are dropped and counted, the observer stays up and healthy,
/// and the engine computes what it computes unobserved.
#[test]
fn a_collector_that_is_down_costs_counted_drops_only() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    // Five seconds of events: the target is still running when the export failures are counted
    // and `/health` is asked, also on a loaded machine (its exit alone would make it 503).
    let args = ["--events", "1000000", "--rate", "200000"];
    let detached: Value =
        serde_json::from_slice(&run_ok(Command::new(&demo).args(args)).stdout).expect("detached summary");
    let target = GatedDemo::start(&demo, &args);
    // Nothing listens there.
    let closed = integration_tests::free_port();
    let mut cmd_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{closed}"))];
    cmd_env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
    let daemon = Daemon::start_with_env(target.pid(), &["--every-batch", "--grace-period", "30s"], &cmd_env);
    let target = target.open();
    let m = poll_metrics(daemon.port, Duration::from_secs(15), "export failures counted", |m| {
        value(m, "eventflux_probe_spans_dropped_total", &[("reason", "export_failed")]).is_some_and(|v| v > 0.0)
    });
    assert!(value(&m, "eventflux_probe_spans_exported_total", &[]) == Some(0.0));
    let (code, _) = http_status(daemon.port, "/live").expect("live");
    assert_eq!(code, 200);
    let (code, health) = daemon.health();
    assert_eq!(health["target"]["state"], "running", "asked too late to tell: {health}");
    assert_eq!(code, 200, "{health}");
    assert!(health["observer"]["otlp"]["last_error"].is_string(), "{health}");
    let attached = summary(&target.open_and_wait());
    assert_eq!(computed_summary(attached), computed_summary(detached), "observing changed the engine's output");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
}

/// The OTLP section of a probe configuration: export to `receiver` every 200 ms.
fn otlp_config(scratch: &Scratch, receiver: &Receiver, protocol: &str) -> String {
    let config = scratch.path().join("probe.toml");
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    std::fs::write(
        &config,
        format!("[otlp]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\ninterval = \"200ms\"\n"),
    )
    .expect("config");
    config.to_str().expect("utf-8").to_owned()
}

fn roots(spans: &[Received]) -> Vec<&Received> {
    spans.iter().filter(|s| s.span.name == "Query Execution").collect()
}

fn pid_of(s: &Received) -> Option<u32> {
    attr(&s.resource, "process.pid").and_then(|p| p.parse().ok())
}

fn batches(summary: &Value) -> u64 {
    summary["queries"].as_object().expect("queries").values().filter_map(|q| q["batches"].as_u64()).sum()
}

/// Two engine nodes: A forwards its queries' output to B over TCP on loopback with each
/// chunk's W3C trace context; one `run` observes each node, both export to one receiver. A
/// traces every batch (`--every-batch`); B runs at the default budget, yet traces every batch,
/// because A's context says sampled (parent-based sampling). Every B trace continues an A
/// trace: same trace id, B's root a child (remote parent, `Consumer`) of the "Output Emission"
/// span of the A batch that sent the chunk (a `Producer`), and it starts after that span did.
/// Exact counts: A's traces = A's batches, B's = B's, and B's input = A's output.
#[test]
fn two_nodes_yield_connected_traces() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let _serial = serial();
    let receiver = Receiver::grpc();
    let demo = bin("eventflux-demo");
    let mut node_b = GatedDemo::start(&demo, &["--listen", "127.0.0.1:0", "--streams", "1", "--queries", "2"]);
    let addr = node_b.listening_addr();
    let node_a = GatedDemo::start(
        &demo,
        &["--forward", &addr, "--events", "12800", "--batch", "64", "--queries", "2", "--streams", "2"],
    );
    let (pid_a, pid_b) = (node_a.pid(), node_b.pid());
    let scratch = Scratch::new("two-nodes");
    let config = otlp_config(&scratch, &receiver, "grpc");
    let observer_a = Daemon::start_with(pid_a, &["--every-batch", "--config", &config]);
    let observer_b = Daemon::start_with(pid_b, &["--config", &config]);
    std::thread::sleep(Duration::from_millis(300));
    let node_b = node_b.open();
    let summary_a = summary(&node_a.open_and_wait());
    let summary_b = summary(&node_b.open_and_wait());
    let emitted_a: u64 =
        summary_a["queries"].as_object().expect("queries").values().filter_map(|q| q["emitted"].as_u64()).sum();
    assert_eq!(summary_b["events"].as_u64(), Some(emitted_a), "B's input is A's output");
    let (want_a, want_b) = (batches(&summary_a), batches(&summary_b));
    assert!(want_b > 0, "{summary_b}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let count = |pid: u32, spans: &[Received]| roots(spans).iter().filter(|s| pid_of(s) == Some(pid)).count() as u64;
    while Instant::now() < deadline {
        let spans = receiver.spans();
        if count(pid_a, &spans) >= want_a && count(pid_b, &spans) >= want_b {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    settle(&receiver, &[observer_a.port, observer_b.port]);
    let spans = receiver.spans();
    assert_eq!(count(pid_a, &spans), want_a, "one trace per batch of node A");
    assert_eq!(count(pid_b, &spans), want_b, "one trace per batch of node B");
    let by_id: BTreeMap<&[u8], &Received> = spans.iter().map(|s| (s.span.span_id.as_slice(), s)).collect();
    // What B's observer lost, should a tree come out incomplete.
    let drops_b: Vec<String> = observer_b
        .samples()
        .iter()
        .filter(|s| s.name == "eventflux_probe_dropped_events_total" && s.value > 0.0)
        .map(|s| format!("{:?} {}", s.labels, s.value))
        .collect();
    for root in roots(&spans) {
        let span = &root.span;
        if pid_of(root) == Some(pid_a) {
            assert!(span.parent_span_id.is_empty(), "A's batches start their traces");
            continue;
        }
        let parent = by_id.get(span.parent_span_id.as_slice()).unwrap_or_else(|| {
            panic!("B's root has parent {:02x?}, not a span A's observer exported", span.parent_span_id)
        });
        assert_eq!(pid_of(parent), Some(pid_a));
        assert_eq!(parent.span.name, "Output Emission");
        assert_eq!(parent.span.trace_id, span.trace_id, "B continues A's trace");
        assert_eq!(parent.span.kind, SpanKind::Producer as i32);
        assert_eq!(span.kind, SpanKind::Consumer as i32);
        assert!(span.start_time_unix_nano >= parent.span.start_time_unix_nano, "B's batch before A sent it");
        // Within B's trace, B's stages hang under B's root.
        let children = spans.iter().filter(|s| s.span.parent_span_id == span.span_id).count();
        assert!(children >= 1, "B's root has its stage spans: {:?}; B's observer dropped {drops_b:?}", root.span);
    }
    for observer in [observer_a, observer_b] {
        let m = observer.samples();
        for reason in ["queue_full", "export_failed"] {
            assert_eq!(value(&m, "eventflux_probe_spans_dropped_total", &[("reason", reason)]), Some(0.0));
        }
        let status = observer.stop();
        assert!(status.success(), "{status}");
    }
}

/// Traces of a successor followed after a restart (`--follow`) are exported under its own
/// resource: `process.pid` is the new process's, and each process's traces are its batches.
#[test]
fn a_followed_process_exports_under_its_own_pid() {
    let _serial = serial();
    let receiver = Receiver::http();
    let demo = bin("eventflux-demo");
    let args = ["--events", "3200", "--queries", "2"];
    let first = GatedDemo::start(&demo, &args);
    let pid_1 = first.pid();
    let scratch = Scratch::new("otlp-follow");
    let config = otlp_config(&scratch, &receiver, "http/protobuf");
    let daemon = Daemon::start_with(pid_1, &["--every-batch", "--follow", "--config", &config]);
    std::thread::sleep(Duration::from_millis(300));
    let summary_1 = summary(&first.open_and_wait());
    poll_http(daemon.port, "/ready", Duration::from_secs(10), "not ready once the target exited", |s, _| s == 503);
    let second = GatedDemo::start(&demo, &args);
    let pid_2 = second.pid();
    poll_http(daemon.port, "/ready", Duration::from_secs(10), "ready for the new process", |s, _| s == 200);
    std::thread::sleep(Duration::from_millis(300));
    let summary_2 = summary(&second.open_and_wait());
    let count = |pid: u32| roots(&receiver.spans()).iter().filter(|s| pid_of(s) == Some(pid)).count() as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(pid_2) < batches(&summary_2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    settle(&receiver, &[daemon.port]);
    assert_eq!(count(pid_1), batches(&summary_1), "traces of the first process");
    assert_eq!(count(pid_2), batches(&summary_2), "traces of its successor, under its pid");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
}

/// A bad protocol in the standard variable is reported under the variable's name, in one
/// line, before anything is attached.
#[test]
fn a_bad_otlp_protocol_names_its_variable() {
    // A process without eventflux probes (not this test binary: it has some): were the
    // variable taken, `run` would fail at once rather than attach.
    let out = Command::new(bin("eventflux-probe"))
        .args(["run", "--pid", "1", "--listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
        .output()
        .expect("run");
    assert_one_line_error(&out, &["OTEL_EXPORTER_OTLP_PROTOCOL", "`thrift`"]);
}

/// A sender that marks every chunk sampled (`-01`, and `-ff`) does not set the downstream
/// engine's cost: node B under `run` with OTLP export traces at most its budget of
/// upstream-sampled batches per second per thread (1024 by default, plus its own pace's),
/// counts every other such batch as declined, and its whole-batch latency histogram keeps
/// filling (declined batches take the thread's own pace).
#[test]
fn an_upstream_that_marks_every_chunk_sampled_gets_the_budget_only() {
    let _serial = serial();
    for flags in [0x01u8, 0xff] {
        let receiver = Receiver::http();
        let (summary, daemon) = integration_tests::fed_node_b(receiver.port, 200_000, 1, Some(flags));
        let batches = batches(&summary);
        let elapsed = summary["elapsed_s"].as_f64().expect("elapsed_s");
        let queries: Vec<String> = summary["queries"].as_object().expect("queries").keys().cloned().collect();
        // Every count flushed: the batch counters agree with the summary.
        let m = poll_metrics(daemon.port, Duration::from_secs(10), "every batch counted", |m| {
            let counted: f64 = queries.iter().filter_map(|q| value(m, "query_batches_total", &[("query_id", q)])).sum();
            counted as u64 == batches
        });
        let traced = value(&m, "eventflux_probe_program_runs_total", &[("program", "trace_context")]).unwrap_or(0.0);
        let declined = value(&m, "eventflux_probe_engine_traces_declined_total", &[]).unwrap_or(0.0);
        // One engine thread (sync junctions): the bound plus the thread's own stage-timed half.
        let bound = (1024.0 + 512.0) * elapsed.max(1.0);
        assert!(
            traced <= bound * 1.25 + 64.0,
            "flags {flags:02x}: {traced} batches traced in {elapsed:.2}s, bound {bound:.0}"
        );
        assert!(traced > 0.0, "upstream-sampled batches are still traced, up to the bound");
        assert!(
            declined >= batches as f64 - traced,
            "flags {flags:02x}: {batches} batches, {traced} traced, {declined} declined: every other one is counted"
        );
        for q in &queries {
            let n = value(&m, "query_latency_seconds_count", &[("query_id", q)]).unwrap_or(0.0);
            assert!(n > 0.0, "flags {flags:02x}: {q}'s whole-batch latency histogram is fed");
        }
        assert!(daemon.stop().success());
    }
}

/// A snapshot runs outside any batch: each is a trace of its own, a root span "Snapshot" with
/// its component's name, as long as the engine took it; as many as the demo took, their
/// durations summing to the histogram's.
#[test]
fn every_snapshot_is_a_trace_of_its_own() {
    let _serial = serial();
    let receiver = Receiver::http();
    let scratch = Scratch::new("snapshot-traces");
    let config = otlp_config(&scratch, &receiver, "http/protobuf");
    let target = GatedDemo::start(&bin("eventflux-demo"), &["--events", "120000"]);
    let daemon = Daemon::start_with(target.pid(), &["--config", &config]);
    let s = summary(&target.open_and_wait());
    let taken = s["components"]["snapshots"]["series"]
        .as_array()
        .expect("series")
        .iter()
        .find(|x| x["family"] == "persistence_snapshots_total")
        .and_then(|x| x["value"].as_u64())
        .expect("snapshots taken");
    assert_eq!(taken, 2, "one every 50,000 events");
    let deadline = Instant::now() + Duration::from_secs(20);
    let snapshots = loop {
        let spans: Vec<Received> = receiver.spans().into_iter().filter(|r| r.span.name == "Snapshot").collect();
        if spans.len() as u64 >= taken || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(snapshots.len() as u64, taken);
    let mut total_ns = 0;
    for r in &snapshots {
        assert!(r.span.parent_span_id.is_empty(), "a root");
        assert_eq!(attr(&r.span.attributes, "component.name").as_deref(), Some("snapshots"));
        assert_eq!(attr(&r.span.attributes, "processor.type").as_deref(), Some("snapshot"));
        assert!(attr(&r.span.attributes, "query.id").is_none(), "no query: {:?}", r.span.attributes);
        total_ns += r.span.end_time_unix_nano - r.span.start_time_unix_nano;
    }
    let m = parse_metrics(&daemon.scrape());
    let sum = value(&m, "persistence_snapshot_duration_seconds_sum", &[("persistence", "snapshots")]).expect("sum");
    assert!((sum * 1e9 - total_ns as f64).abs() <= 2.0 * taken as f64, "histogram {sum} s, spans {total_ns} ns");
    assert!(daemon.stop().success());
}

/// Exemplars, end to end: `run` exports traces over OTLP at its default budget; its
/// OpenMetrics page puts, on latency buckets, the trace ids of exported batches that fell in
/// them, with the value the histogram counted of each (the root's `eventflux.latency_ns`, a
/// stage's self time), inside the bucket. A real Prometheus with `exemplar-storage` scrapes
/// that page, and `/api/v1/query_exemplars` answers trace ids the receiver got.
#[test]
fn exemplars_link_latency_buckets_to_received_traces() {
    let _serial = serial();
    let receiver = Receiver::http();
    let target =
        GatedDemo::start(&bin("eventflux-demo"), &["--events", "400000", "--rate", "100000", "--queries", "3"]);
    let scratch = Scratch::new("exemplars");
    let config = otlp_config(&scratch, &receiver, "http/protobuf");
    let daemon = Daemon::start_with(target.pid(), &["--config", &config]);
    let prometheus = integration_tests::prometheus::Prometheus::start(daemon.port, &["exemplar-storage"]);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    target.open_and_wait();
    daemon.wait_target_gone(Duration::from_secs(10));
    settle(&receiver, &[daemon.port]);
    let page = integration_tests::http_get_accept(daemon.port, "/metrics", integration_tests::OPENMETRICS);
    let spans = receiver.spans();
    let checked = integration_tests::otlp::assert_exemplars_resolve(&page, &spans);
    let on = |name: &str| page.lines().filter(|l| l.starts_with(name) && l.contains(" # {")).count();
    assert!(on("query_latency_seconds_bucket{") >= 3, "a latency exemplar per query at least:\n{page}");
    assert!(on("query_stage_latency_seconds_bucket{") >= 3, "stage exemplars:\n{page}");
    assert!(checked >= 6);

    // Prometheus stored them (it scrapes OpenMetrics with exemplar storage on).
    let received: std::collections::BTreeSet<String> =
        spans.iter().map(|s| s.span.trace_id.iter().map(|b| format!("{b:02x}")).collect()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let ids: Vec<String> = prometheus
            .exemplar_trace_ids("query_latency_seconds_bucket", started - 5)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        if !ids.is_empty() || Instant::now() > deadline {
            break ids;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!stored.is_empty(), "Prometheus stored no exemplar");
    for id in &stored {
        assert!(received.contains(id), "Prometheus holds exemplar {id}, a trace never received");
    }
    assert!(daemon.stop().success());
}

/// OTLP metrics: `run` exports its model to a real receiver, over gRPC with cumulative
/// temporality and gzip, and over HTTP/protobuf with delta temporality, each with a header
/// from `OTEL_EXPORTER_OTLP_METRICS_HEADERS`. After the engine stopped, every engine counter
/// of `/metrics` equals its OTLP `Sum` (cumulative: the last request's point; delta: the sum
/// of every request's points), and every latency histogram's `_count` and `_sum` equal its
/// `ExponentialHistogram`'s, whose scale-2 buckets add up, at every classic bound, to the
/// classic cumulative count there.
#[test]
fn otlp_metrics_equal_the_prometheus_page() {
    use eventflux_probe::export::metrics::{ALL, Kind, Scope};
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
    let _serial = serial();
    for (protocol, temporality) in [("grpc", "cumulative"), ("http/protobuf", "delta")] {
        let receiver = if protocol == "grpc" { Receiver::grpc() } else { Receiver::http() };
        let target =
            GatedDemo::start(&bin("eventflux-demo"), &["--events", "300000", "--rate", "150000", "--queries", "3"]);
        let scratch = Scratch::new("otlp-metrics");
        let config = scratch.path().join("probe.toml");
        std::fs::write(
            &config,
            format!(
                "[otlp]\nendpoint = \"http://127.0.0.1:{}\"\nprotocol = \"{protocol}\"\nmetrics = \"otlp\"\nmetrics_interval = \"300ms\"\nmetrics_temporality = \"{temporality}\"\n",
                receiver.port
            ),
        )
        .expect("config");
        let env = [
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=probe%20test".to_owned()),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", if protocol == "grpc" { "gzip" } else { "none" }.to_owned()),
        ];
        let daemon = Daemon::start_with_env(target.pid(), &["--config", config.to_str().expect("utf-8")], &env);
        target.open_and_wait();
        daemon.wait_target_gone(Duration::from_secs(10));
        let page = daemon.samples();
        // Two more exports: the last one is of the final values.
        let seen = receiver.metrics().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while receiver.metrics().len() < seen + 2 {
            assert!(Instant::now() < deadline, "{protocol}: no further OTLP metrics request");
            std::thread::sleep(Duration::from_millis(50));
        }
        let requests = receiver.metrics();
        for r in &requests {
            assert!(
                r.headers.contains(&("x-tenant".to_owned(), "probe test".to_owned())),
                "{protocol}: {:?}",
                r.headers
            );
        }
        let shown = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> =
                attrs.iter().map(|kv| (kv.key.clone(), attr(attrs, &kv.key).unwrap_or_default())).collect();
            v.sort();
            v
        };
        // (metric, attributes) → value: the last request's, or every request's summed.
        type Series = (String, Vec<(String, String)>);
        type Hist = (u64, f64, Vec<(f64, u64)>);
        let mut sums: BTreeMap<Series, f64> = BTreeMap::new();
        // Count, sum, and (bucket upper bound, count) of each histogram.
        let mut hists: BTreeMap<Series, Hist> = BTreeMap::new();
        let chosen: Vec<_> =
            if temporality == "delta" { requests.iter().collect() } else { requests.last().into_iter().collect() };
        for r in chosen {
            for m in r.request.resource_metrics.iter().flat_map(|rm| &rm.scope_metrics).flat_map(|sm| &sm.metrics) {
                match &m.data {
                    Some(Data::Sum(s)) => {
                        for p in &s.data_points {
                            let Some(number_data_point::Value::AsDouble(v)) = p.value else {
                                panic!("{}: a double", m.name)
                            };
                            *sums.entry((m.name.clone(), shown(&p.attributes))).or_default() += v;
                        }
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            assert_eq!(p.scale, 2);
                            let e = hists.entry((m.name.clone(), shown(&p.attributes))).or_default();
                            e.0 += p.count;
                            e.1 += p.sum.unwrap_or(0.0);
                            if let Some(b) = &p.positive {
                                for (i, n) in b.bucket_counts.iter().enumerate() {
                                    let upper = 2f64.powf(f64::from(b.offset + i as i32 + 1) / 4.0);
                                    e.2.push((upper, *n));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let (mut counters, mut histograms) = (0, 0);
        for s in &page {
            let labels = {
                let mut v: Vec<(String, String)> = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                v.sort();
                v
            };
            if let Some(m) =
                ALL.iter().find(|m| m.name == s.name && m.kind == Kind::Counter && m.scope == Scope::Engine)
            {
                let name = m.name.strip_suffix("_total").unwrap_or(m.name).to_owned();
                let got = sums.get(&(name, labels.clone())).copied();
                assert_eq!(got, Some(s.value), "{protocol} {temporality}: {} {labels:?}", s.name);
                counters += 1;
            }
            for (suffix, what) in [("_count", 0), ("_sum", 1), ("_bucket", 2)] {
                let Some(base) = s.name.strip_suffix(suffix) else { continue };
                if !ALL.iter().any(|m| m.name == base && m.kind == Kind::Histogram && m.scope == Scope::Engine) {
                    continue;
                }
                let h = hists
                    .get(&(base.to_owned(), labels.clone()))
                    .unwrap_or_else(|| panic!("{protocol}: no OTLP {base} {labels:?}"));
                match what {
                    0 => assert_eq!(h.0 as f64, s.value, "{protocol}: {} {labels:?}", s.name),
                    1 => assert!(
                        (h.1 - s.value).abs() <= 1e-9 * s.value.max(1.0),
                        "{protocol}: {} {labels:?}: {} vs {}",
                        s.name,
                        h.1,
                        s.value
                    ),
                    _ => {
                        let le = s.value_of("le");
                        let below: u64 =
                            h.2.iter().filter(|(upper, _)| *upper <= le * (1.0 + 1e-9)).map(|(_, n)| n).sum();
                        let below = if le.is_infinite() { h.0 } else { below };
                        assert_eq!(below as f64, s.value, "{protocol}: {} {labels:?} le={le}", s.name);
                        histograms += 1;
                    }
                }
            }
        }
        assert!(counters >= 10 && histograms >= 20, "{protocol}: {counters} counters, {histograms} buckets compared");
        let m = daemon.samples();
        assert!(value(&m, "eventflux_probe_metric_exports_total", &[("result", "ok")]).unwrap_or(0.0) >= 2.0);
        assert_eq!(value(&m, "eventflux_probe_metric_exports_total", &[("result", "failed")]), Some(0.0));
        assert!(daemon.stop().success());
    }
}

/// The variables of both OTLP signals to `receiver` over TLS, trusting `pki`'s CA and
/// presenting its client certificate, exporting often.
fn tls_env(pki: &integration_tests::tls::Pki, receiver: &Receiver, protocol: &str) -> Vec<(&'static str, String)> {
    let mut env = pki.client_env();
    env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://127.0.0.1:{}", receiver.port)),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
        ("OTEL_METRICS_EXPORTER", "otlp".to_owned()),
        ("EVENTFLUX_PROBE_OTLP_INTERVAL", "200ms".to_owned()),
        ("EVENTFLUX_PROBE_OTLP_METRICS_INTERVAL", "300ms".to_owned()),
    ]);
    env
}

/// TLS, with a CA the test made: `run` exports traces and metrics to `https://` receivers,
/// gRPC and HTTP/protobuf, that want a client certificate; CA, client certificate and key
/// come from `OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`, and the
/// requests are gzipped (`OTEL_EXPORTER_OTLP_COMPRESSION`). Every exported span arrives.
#[test]
fn otlp_over_tls_with_a_test_ca_and_a_client_certificate() {
    let _serial = serial();
    for protocol in ["grpc", "http/protobuf"] {
        let pki = integration_tests::tls::Pki::generate("otlp-tls");
        let receiver = Receiver::tls(protocol, &pki);
        let target = GatedDemo::start(&bin("eventflux-demo"), &["--events", "200000", "--rate", "100000"]);
        let mut env = tls_env(&pki, &receiver, protocol);
        env.push(("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".to_owned()));
        let daemon = Daemon::start_with_env(target.pid(), &[], &env);
        target.open_and_wait();
        daemon.wait_target_gone(Duration::from_secs(10));
        settle(&receiver, &[daemon.port]);
        let spans = receiver.spans().len();
        assert!(spans > 0, "{protocol}: no span arrived over TLS: {}", integration_tests::health(daemon.port).1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while receiver.metrics().is_empty() {
            assert!(Instant::now() < deadline, "{protocol}: no metrics request arrived over TLS");
            std::thread::sleep(Duration::from_millis(50));
        }
        let m = daemon.samples();
        assert_eq!(value(&m, "eventflux_probe_spans_dropped_total", &[("reason", "export_failed")]), Some(0.0));
        assert_eq!(value(&m, "eventflux_probe_metric_exports_total", &[("result", "failed")]), Some(0.0));
        assert!(daemon.stop().success());
    }
}

/// A collector whose certificate another CA signed: one clear error per signal in the log,
/// naming the certificate problem; the exports fail and are counted; nothing arrives; the
/// observer stays live and its target unharmed.
#[test]
fn a_collector_signed_by_another_ca_is_one_clear_error_and_counted_failures() {
    let _serial = serial();
    for protocol in ["grpc", "http/protobuf"] {
        let (server, other) =
            (integration_tests::tls::Pki::generate("otlp-tls"), integration_tests::tls::Pki::generate("other-ca"));
        let receiver = Receiver::tls(protocol, &server);
        let target = GatedDemo::start(&bin("eventflux-demo"), &["--events", "200000", "--rate", "100000"]);
        let env = tls_env(&other, &receiver, protocol);
        let daemon = Daemon::start_with_env(target.pid(), &["--log-format", "json"], &env);
        target.open_and_wait();
        daemon.wait_target_gone(Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(1));
        let m = daemon.samples();
        assert!(value(&m, "eventflux_probe_spans_dropped_total", &[("reason", "export_failed")]).unwrap_or(0.0) > 0.0);
        assert!(value(&m, "eventflux_probe_metric_exports_total", &[("result", "failed")]).unwrap_or(0.0) >= 2.0);
        assert_eq!(value(&m, "eventflux_probe_metric_exports_total", &[("result", "ok")]), Some(0.0));
        assert!(receiver.spans().is_empty() && receiver.metrics().is_empty());
        assert_eq!(http_status(daemon.port, "/live").map(|(s, _)| s), Ok(200));
        let (_, h) = integration_tests::health(daemon.port);
        for error in [&h["observer"]["otlp"]["last_error"], &h["observer"]["otlp"]["metrics"]["last_error"]] {
            let e = error.as_str().unwrap_or_else(|| panic!("no last error in {h}"));
            assert!(e.to_ascii_lowercase().contains("certificate"), "{protocol}: does not say what is wrong: {e}");
        }
        let (status, lines) = daemon.stop_with_log();
        assert!(status.success(), "{status}");
        let warnings: Vec<String> = integration_tests::log_events(&lines)
            .into_iter()
            .filter(|e| e["level"] == "WARN")
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .filter(|m| m.contains("OTLP"))
            .collect();
        assert_eq!(warnings.len(), 2, "{protocol}: one error per signal: {warnings:#?}");
        for w in &warnings {
            assert!(!w.contains('\n') && w.to_ascii_lowercase().contains("certificate"), "{w}");
        }
    }
}

/// TLS files that cannot serve are refused before anything is attached, one line naming the
/// variable or key: a missing CA file, a file without a certificate, a client certificate
/// without its key.
#[test]
fn bad_tls_files_are_one_line_errors() {
    let _serial = serial();
    let scratch = Scratch::new("bad-tls");
    let not_pem = scratch.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").expect("file");
    let pki = integration_tests::tls::Pki::generate("bad-tls");
    let demo = GatedDemo::start(&bin("eventflux-demo"), &["--events", "1000"]);
    let pid = demo.pid().to_string();
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    for (vars, says) in [
        (
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem".to_owned())],
            vec!["OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read `/nonexistent/ca.pem`"],
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", s(&not_pem))],
            vec!["OTEL_EXPORTER_OTLP_CERTIFICATE", "holds no PEM CERTIFICATE"],
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", s(&pki.client_cert))],
            vec!["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is set but no client key"],
        ),
        (
            vec![
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", s(&pki.client_cert)),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", s(&pki.client_cert)),
            ],
            vec!["OTEL_EXPORTER_OTLP_CLIENT_KEY", "holds no PEM PRIVATE KEY"],
        ),
    ] {
        let out = integration_tests::run(
            Command::new(bin("eventflux-probe"))
                .args(["run", "--pid", &pid, "--listen", "127.0.0.1:0"])
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317")
                .envs(vars.iter().map(|(k, v)| (*k, v.as_str()))),
        );
        assert_one_line_error(&out, &says);
    }
}

/// A stopping observer sends its last OTLP metrics: with an interval longer than the test,
/// the one request the receiver gets is the one sent at SIGTERM, and its query counters are
/// the final ones of `/metrics`, which equal the demo's own summary.
#[test]
fn a_stopping_observer_sends_its_last_metrics() {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
    let _serial = serial();
    let receiver = Receiver::http();
    let target = GatedDemo::start(&bin("eventflux-demo"), &["--events", "64000", "--batch", "64"]);
    let env = [
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", format!("http://127.0.0.1:{}/v1/metrics", receiver.port)),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf".to_owned()),
        ("EVENTFLUX_PROBE_OTLP_METRICS_INTERVAL", "1h".to_owned()),
    ];
    let daemon = Daemon::start_with_env(target.pid(), &[], &env);
    let summary = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let page = daemon.samples();
    assert!(receiver.metrics().is_empty(), "nothing is sent before the first interval");
    assert!(daemon.stop().success());
    let requests = receiver.metrics();
    assert_eq!(requests.len(), 1, "one last export at the stop");
    let processed: f64 = requests[0]
        .request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == "query_events_processed")
        .flat_map(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.clone(),
            _ => Vec::new(),
        })
        .map(|p| match p.value {
            Some(number_data_point::Value::AsDouble(v)) => v,
            _ => 0.0,
        })
        .sum();
    let on_page: f64 = page.iter().filter(|s| s.name == "query_events_processed_total").map(|s| s.value).sum();
    let demo_processed: f64 =
        summary["queries"].as_object().expect("queries").values().filter_map(|q| q["processed"].as_f64()).sum();
    assert_eq!(processed, on_page);
    assert_eq!(processed, demo_processed, "{summary}");
}
