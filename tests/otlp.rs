//! OTLP export of sampled batches' span trees on the real kernel, into a real receiver that
//! decodes the collector's protobuf messages (gRPC and HTTP/protobuf).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::otlp::{Received, Receiver, attr};
use integration_tests::{
    Daemon, GatedDemo, bin, computed_summary, http_status, parse_metrics, poll_http, run_ok, value,
};
use serde_json::Value;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
        let scratch = integration_tests::Scratch::new("otlp");
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
        let summary: Value = serde_json::from_str(target.open_and_wait().trim()).expect("summary");
        let deadline = Instant::now() + Duration::from_secs(20);
        while spans_by_trace(&receiver.spans()).len() < BATCHES && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
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
        let m = parse_metrics(&integration_tests::http_get(daemon.port, "/metrics"));
        // Span durations agree with the stage histograms: per query and stage, as many spans
        // as histogram samples, and their self times sum to the histogram's sum.
        let mut stage_spans: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for s in &spans {
            let Some(stage) = attr(&s.span.attributes, "processor.type") else { continue };
            let query = attr(&s.span.attributes, "query.id").expect("query.id");
            let self_ns: u64 =
                attr(&s.span.attributes, "eventflux.self_ns").and_then(|v| v.parse().ok()).expect("self_ns");
            let e = stage_spans.entry((query, stage)).or_default();
            e.0 += 1;
            e.1 += self_ns;
        }
        assert!(!stage_spans.is_empty());
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

/// Under `run`'s default budget (1024 sampled batches per second per engine thread) the traced
/// batches stay within the budget however many batches the engine runs: a one-thread demo at
/// full speed in chunks of 8 events.
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
    let summary: Value = serde_json::from_str(target.open_and_wait().trim()).expect("summary");
    let batches: u64 =
        summary["queries"].as_object().expect("queries").values().filter_map(|q| q["batches"].as_u64()).sum();
    let elapsed = summary["elapsed_s"].as_f64().expect("elapsed_s");
    // Everything queued has been sent after two export intervals.
    std::thread::sleep(Duration::from_secs(1));
    let traces = spans_by_trace(&receiver.spans()).len() as f64;
    let m = parse_metrics(&integration_tests::http_get(daemon.port, "/metrics"));
    assert_eq!(value(&m, "eventflux_probe_spans_dropped_total", &[("reason", "queue_full")]), Some(0.0));
    let budget = 1024.0 * elapsed;
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
    let args = ["--events", "200000", "--rate", "100000"];
    let detached: Value =
        serde_json::from_slice(&run_ok(Command::new(&demo).args(args)).stdout).expect("detached summary");
    let target = GatedDemo::start(&demo, &args);
    // Nothing listens there.
    let closed = integration_tests::free_port();
    let mut cmd_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{closed}"))];
    cmd_env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
    let daemon =
        integration_tests::Daemon::start_with_env(target.pid(), &["--every-batch", "--grace-period", "30s"], &cmd_env);
    let target = target.open();
    let (_, body) = poll_http(daemon.port, "/metrics", Duration::from_secs(15), "export failures counted", |_, b| {
        value(&parse_metrics(b), "eventflux_probe_spans_dropped_total", &[("reason", "export_failed")])
            .is_some_and(|v| v > 0.0)
    });
    assert!(value(&parse_metrics(&body), "eventflux_probe_spans_exported_total", &[]) == Some(0.0));
    let (code, _) = http_status(daemon.port, "/live").expect("live");
    assert_eq!(code, 200);
    let (code, health) = http_status(daemon.port, "/health").expect("health");
    let health: Value = serde_json::from_str(&health).expect("health JSON");
    assert_eq!(code, 200, "{health}");
    assert!(health["observer"]["otlp"]["last_error"].is_string(), "{health}");
    let attached: Value = serde_json::from_str(target.open_and_wait().trim()).expect("summary");
    assert_eq!(computed_summary(attached), computed_summary(detached), "observing changed the engine's output");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
}
