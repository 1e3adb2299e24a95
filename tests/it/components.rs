//! The engine's components beyond the query pipeline (docs/probes.md, "Components"): the demo's
//! sources, sinks, error store and table against its own summary, exactly, and the summary's
//! figures against each other (what a sink published and failed is what its query emitted).

use std::time::Duration;

use integration_tests::{
    Daemon, GatedDemo, Scratch, assert_components_exact, bin, json, metric, poll_http, poll_metrics, serial, summary,
};
use serde_json::Value;

/// A component's one series of `family` in the summary (labels as given), 0 if absent.
fn series(summary: &Value, component: &str, family: &str, labels: &[(&str, &str)]) -> u64 {
    summary["components"][component]["series"]
        .as_array()
        .unwrap_or_else(|| panic!("no component {component} in the summary"))
        .iter()
        .filter(|s| s["family"] == family)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .filter_map(|s| s["value"].as_u64())
        .sum()
}

/// A whole run observed from before its first event: every component series exact, and the
/// components agree with the pipeline: each source mapped exactly what its stream received,
/// each sink published and failed exactly what its query emitted, the error store holds what
/// sources and sinks sent it, the table saw query 0's every row and every input event.
#[test]
fn components_count_exactly_and_agree_with_the_pipeline() {
    let _serial = serial();
    let target = GatedDemo::start(&bin("eventflux-demo"), &["--events", "250000", "--queries", "4", "--streams", "3"]);
    let daemon = Daemon::start(target.pid());
    let s = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    let compared = assert_components_exact(&m, &s);
    assert!(compared >= 30, "{compared} series: {}", s["components"]);

    let (mut garbage, mut rejected) = (0, 0);
    for (name, stream) in s["streams"].as_object().expect("streams") {
        let received = stream["received"].as_u64().expect("received");
        let component = s["components"]
            .as_object()
            .expect("components")
            .iter()
            .find(|(_, c)| c["labels"]["stream_name"] == name.as_str())
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| panic!("no component of stream {name}"));
        if stream["role"] == "input" {
            assert_eq!(series(&s, &component, "source_events_total", &[]), received, "{component}");
            garbage += series(&s, &component, "source_mapping_errors_total", &[("action", "error_store")]);
            let scraped = metric(&m, "source_events_total", &[("source", &component)]);
            assert_eq!(scraped as u64, received, "{component}");
        } else {
            let query = s["queries"]
                .as_object()
                .expect("queries")
                .values()
                .find(|q| q["output_stream"] == name.as_str())
                .expect("the query writing it");
            let emitted = query["emitted"].as_u64().expect("emitted");
            let failed = series(&s, &component, "sink_failures_total", &[("error_type", "rejected")]);
            assert_eq!(series(&s, &component, "sink_events_total", &[]) + failed, emitted, "{component}");
            rejected += failed;
        }
    }
    assert!(garbage > 0 && rejected > 0);
    assert_eq!(series(&s, "errors", "error_store_events_total", &[("origin", "source_mapping")]), garbage);
    assert_eq!(series(&s, "errors", "error_store_events_total", &[("origin", "sink_delivery")]), rejected);
    assert_eq!(series(&s, "errors", "error_store_size_events", &[]), garbage + rejected);
    let q0 = &s["queries"]["q0_length"];
    assert_eq!(
        series(&s, "SymbolStats", "table_operations_total", &[("op", "upsert")]),
        q0["emitted"].as_u64().expect("n")
    );
    let lookups = series(&s, "SymbolStats", "table_lookups_total", &[]);
    assert_eq!(lookups, q0["processed"].as_u64().expect("n"));
    // Each query's window keeps its kind's arithmetic: what left it is what came in less what
    // it holds; a length window holds its length, a length-batch window tumbles every 64.
    for (name, q) in s["queries"].as_object().expect("queries") {
        let added = series(&s, name, "window_events_total", &[]);
        let (expired, held) =
            (series(&s, name, "window_expired_events_total", &[]), series(&s, name, "window_size_events", &[]));
        assert!(added > 0 && added <= q["processed"].as_u64().expect("processed"), "{name}: {added}");
        assert_eq!(added - expired, held, "{name}");
        let flushes = series(&s, name, "window_flushes_total", &[]);
        match q["window"].as_str() {
            Some("length") => assert_eq!((held, flushes), (32, 0), "{name}"),
            Some("length_batch") => {
                assert_eq!(flushes, added / 64, "{name}");
                assert_eq!(expired, (flushes - 1) * 64, "{name}");
            }
            _ => assert_eq!(flushes, 0, "{name}"),
        }
    }
    // The join's sides are the first two streams, each holding its last 32 events; the
    // pattern's partial matches are those started, less those completed or expired.
    for (side, stream) in [("left", "Stock0"), ("right", "Stock1")] {
        let received = s["streams"][stream]["received"].as_u64().expect("received");
        assert_eq!(series(&s, "StockJoin", "join_events_total", &[("side", side)]), received, "{side}");
        let held = series(&s, "StockJoin", "join_state_events", &[("side", side)]);
        assert_eq!(held, received.min(32), "{side}");
        assert_eq!(series(&s, "StockJoin", "join_expired_events_total", &[("side", side)]), received - held, "{side}");
    }
    assert!(series(&s, "StockJoin", "join_matches_total", &[]) > 0);
    let started = series(&s, "PriceSwing", "pattern_partial_matches_started_total", &[]);
    let ended = series(&s, "PriceSwing", "pattern_matches_total", &[])
        + series(&s, "PriceSwing", "pattern_partial_matches_expired_total", &[]);
    assert_eq!(started - ended, series(&s, "PriceSwing", "pattern_partial_matches", &[]));
    assert!(ended > 0 && started > ended);
    // The partitioned query has an instance per live key (16 symbols); the trigger fired once
    // per 10,000 events; the aggregation took the first stream's every event.
    let partitioned = series(&s, "BySymbol", "partition_instances", &[]);
    let created = series(&s, "BySymbol", "partition_instances_created_total", &[]);
    assert_eq!(created - series(&s, "BySymbol", "partition_instances_purged_total", &[]), partitioned);
    assert!((1..=16).contains(&partitioned), "{partitioned}");
    assert_eq!(
        series(&s, "BySymbol", "partition_events_total", &[]),
        s["streams"]["Stock1"]["received"].as_u64().expect("n")
    );
    assert_eq!(series(&s, "Heartbeat", "trigger_fires_total", &[]), s["events"].as_u64().expect("events") / 10_000);
    assert_eq!(
        series(&s, "PriceAgg", "aggregation_events_total", &[]),
        s["streams"]["Stock0"]["received"].as_u64().expect("n")
    );
    assert_eq!(series(&s, "PriceAgg", "aggregation_buckets", &[("duration", "second")]), 60);
    // Registered families with nothing to count yet are there, at 0.
    assert_eq!(metric(&m, "table_evictions_total", &[("table", "SymbolStats")]), 0.0);
    assert_eq!(metric(&m, "error_store_dropped_total", &[("error_store", "errors")]), 0.0);
    assert!(daemon.stop().success());
}

/// An observer that attaches to a running engine learns every component at once (the
/// registrations and gauges are replayed to it): connected sources and sinks, the table's
/// rows, the error store's capacity and fill; its counters count from its attach, so less
/// than the whole run.
#[test]
fn a_late_observer_gets_components_and_gauges_at_once() {
    let _serial = serial();
    let target = GatedDemo::start(&bin("eventflux-demo"), &["--events", "200000", "--rate", "100000"]).open();
    std::thread::sleep(Duration::from_millis(700));
    let daemon = Daemon::start(target.pid());
    let m = poll_metrics(daemon.port, Duration::from_secs(10), "the component gauges", |m| {
        ["Stock0_tcp", "Stock1_grpc"]
            .iter()
            .all(|src| integration_tests::value(m, "source_connected", &[("source", src)]) == Some(1.0))
            && integration_tests::value(m, "table_rows", &[("table", "SymbolStats")]) == Some(16.0)
    });
    assert_eq!(metric(&m, "sink_connected", &[("sink", "Q0Out_log")]), 1.0);
    // An output stream's subscriber is its sink; an input stream's, the queries reading it.
    for (stream, subscribers) in [("Q0Out", 1.0), ("Q1Out", 1.0), ("Stock0", 2.0), ("Stock1", 1.0)] {
        assert_eq!(metric(&m, "stream_subscribers_active", &[("stream_name", stream)]), subscribers, "{stream}");
    }
    // A paced source reports how far behind its pace it is (it keeps up: 0 or a few events).
    assert!(integration_tests::value(&m, "source_lag_events", &[("source", "Stock0_tcp")]).is_some());
    assert_eq!(metric(&m, "error_store_capacity_events", &[("error_store", "errors")]), 10_000.0);
    // Some 70,000 events before the attach: one garbage record in a thousand is held already.
    assert!(metric(&m, "error_store_size_events", &[("error_store", "errors")]) >= 50.0);
    let s = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    for (source, stream) in [("Stock0_tcp", "Stock0"), ("Stock1_grpc", "Stock1")] {
        let counted = metric(&m, "source_events_total", &[("source", source)]) as u64;
        let all = s["streams"][stream]["received"].as_u64().expect("received");
        assert!(counted > 0 && counted < all, "{source}: counted {counted} of {all}, from the attach");
        assert_eq!(metric(&m, "source_connected", &[("source", source)]), 0.0, "disconnected at the end");
    }
    assert_eq!(
        metric(&m, "error_store_size_events", &[("error_store", "errors")]),
        series(&s, "errors", "error_store_size_events", &[]) as f64
    );
    assert!(daemon.stop().success());
}

/// An error store that fills up degrades `/health` (`event_pipeline`), naming the store, its
/// fill and what it dropped; the dropped events are counted exactly.
#[test]
fn a_full_error_store_degrades_health_and_counts_what_it_dropped() {
    let _serial = serial();
    let args = ["--events", "300000", "--rate", "150000", "--error-store-capacity", "100", "--hold", "4"];
    let target = GatedDemo::start(&bin("eventflux-demo"), &args);
    let daemon = Daemon::start_with(target.pid(), &["--flush-interval", "100ms"]);
    let target = target.open();
    let (_, body) = poll_http(daemon.port, "/health", Duration::from_secs(15), "a full error store", |s, b| {
        let reasons = json(b)["reasons"].to_string();
        s == 200 && reasons.contains("error store errors holds 100 of 100 events (100%)") && reasons.contains("dropped")
    });
    let h = json(&body);
    assert_eq!(
        (h["status"].as_str(), h["checks"]["event_pipeline"].as_str()),
        (Some("degraded"), Some("degraded")),
        "{h}"
    );
    // Open already: this only waits for its summary.
    let s = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    assert_components_exact(&m, &s);
    let dropped = series(&s, "errors", "error_store_dropped_total", &[]);
    assert!(dropped > 100, "{dropped}");
    assert_eq!(metric(&m, "error_store_dropped_total", &[("error_store", "errors")]) as u64, dropped);
    assert!(daemon.stop().success());
}

/// One observed run of the demo with `args`, from before its first event: its summary and
/// the scrape after it exited.
fn observed_run(args: &[&str]) -> (Value, Vec<integration_tests::Sample>) {
    let target = GatedDemo::start(&bin("eventflux-demo"), args);
    let daemon = Daemon::start(target.pid());
    let s = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    assert!(daemon.stop().success());
    assert_components_exact(&m, &s);
    (s, m)
}

/// Snapshots every 50,000 events into a directory, and at the next start a restore from the
/// last one (the sources resume where it left them): each counted and timed, every one.
#[test]
fn snapshots_and_the_restore_at_start_are_counted_and_timed() {
    let _serial = serial();
    let scratch = Scratch::new("snapshots");
    let dir = scratch.path().to_str().expect("utf-8").to_owned();
    let (first, m) = observed_run(&["--events", "120000", "--snapshot-dir", &dir]);
    let p = [("persistence", "snapshots")];
    assert_eq!(series(&first, "snapshots", "persistence_snapshots_total", &[("result", "success")]), 2);
    assert_eq!(metric(&m, "persistence_snapshot_duration_seconds_count", &p), 2.0, "every snapshot timed");
    assert_eq!(first["restored"], Value::Null, "a fresh start restores nothing");
    let last_size = metric(&m, "persistence_last_snapshot_size_bytes", &p);
    assert!(last_size > 0.0);

    let (second, m) = observed_run(&["--events", "60000", "--snapshot-dir", &dir]);
    // The last snapshot was taken at 100,000 events: 50,000 per stream, round-robin.
    assert_eq!(second["restored"], serde_json::json!([50_048, 49_984]), "{second}");
    assert_eq!(series(&second, "snapshots", "persistence_restores_total", &[("result", "success")]), 1);
    assert_eq!(metric(&m, "persistence_restore_duration_seconds_count", &p), 1.0);
    assert_eq!(series(&second, "snapshots", "persistence_snapshots_total", &[("result", "success")]), 1);
}

/// Snapshots that cannot be written (their directory does not exist) are counted as failures
/// and degrade `/health`'s `state_backend`.
#[test]
fn failing_snapshots_degrade_the_state_backend() {
    let _serial = serial();
    let scratch = Scratch::new("no-snapshots");
    let missing = scratch.path().join("not-there");
    let args = ["--events", "500000", "--rate", "60000", "--snapshot-dir", missing.to_str().expect("utf-8")];
    let target = GatedDemo::start(&bin("eventflux-demo"), &args);
    let daemon = Daemon::start(target.pid());
    let target = target.open();
    let (_, body) = poll_http(daemon.port, "/health", Duration::from_secs(15), "failing snapshots", |_, b| {
        json(b)["reasons"].to_string().contains("snapshots failed")
    });
    assert_eq!(json(&body)["checks"]["state_backend"], "degraded", "{body}");
    let s = summary(&target.open_and_wait());
    assert_eq!(series(&s, "snapshots", "persistence_snapshots_total", &[("result", "failure")]), 10);
    assert_eq!(series(&s, "snapshots", "persistence_snapshots_total", &[("result", "success")]), 0);
    assert!(daemon.stop().success());
}

/// An async junction with a back-off (`--drop-after`) refuses the chunks whose queue stays
/// full: the events it dropped are counted exactly, per junction, `/health` says so, and every
/// event a source delivered was either processed by each subscriber or dropped.
#[test]
fn events_a_junction_drops_are_counted_and_degrade_health() {
    let _serial = serial();
    let args = [
        "--mode",
        "async",
        "--queue-capacity",
        "2",
        "--rate",
        "20000",
        "--events",
        "100000",
        "--trouble",
        "1..3",
        "--drop-after",
        "1",
    ];
    let target = GatedDemo::start(&bin("eventflux-demo"), &args);
    let daemon = Daemon::start_with(target.pid(), &["--flush-interval", "100ms"]);
    let target = target.open();
    let (_, body) = poll_http(daemon.port, "/health", Duration::from_secs(15), "junctions dropping", |_, b| {
        json(b)["reasons"].to_string().contains("stream junctions dropped")
    });
    assert_eq!(json(&body)["checks"]["event_pipeline"], "degraded", "{body}");
    let s = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    assert_components_exact(&m, &s);
    let mut dropped_total = 0;
    for (name, stream) in s["streams"].as_object().expect("streams") {
        if stream["role"] != "input" {
            continue;
        }
        let dropped = stream["dropped"].as_u64().expect("dropped");
        dropped_total += dropped;
        assert_eq!(metric(&m, "junction_events_dropped_total", &[("junction", name)]) as u64, dropped, "{name}");
        let received = stream["received"].as_u64().expect("received");
        let subscribers: Vec<&Value> = s["queries"]
            .as_object()
            .expect("queries")
            .values()
            .filter(|q| q["input_stream"] == name.as_str())
            .collect();
        let processed: u64 = subscribers.iter().map(|q| q["processed"].as_u64().expect("processed")).sum();
        assert_eq!(processed + dropped, received * subscribers.len() as u64, "{name}: processed or dropped, each");
    }
    assert!(dropped_total > 0, "the trouble made the junctions drop: {}", s["streams"]);
    assert!(daemon.stop().success());
}

/// The transport between two nodes: node B, fed 300 chunks of 40 events by a client of the
/// node protocol written apart from the demo, counts 300 messages received and their exact
/// bytes, and its peer gone at the end.
#[test]
fn the_transport_between_nodes_counts_messages_and_bytes() {
    let _serial = serial();
    let mut node_b =
        GatedDemo::start(&bin("eventflux-demo"), &["--listen", "127.0.0.1:0", "--streams", "1", "--queries", "2"]);
    let addr = node_b.listening_addr();
    let daemon = Daemon::start(node_b.pid());
    let node_b = node_b.open();
    let sender = std::thread::spawn(move || integration_tests::send_chunks(&addr, 300, 40, None));
    let s = summary(&node_b.open_and_wait());
    sender.join().expect("sender");
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    assert_components_exact(&m, &s);
    let t = [("transport", "from_node_a"), ("direction", "received")];
    assert_eq!(metric(&m, "transport_messages_total", &t), 300.0);
    // Per chunk: a 4-byte count, a 1-byte context length (no context), 40 events of 32 bytes.
    assert_eq!(metric(&m, "transport_bytes_total", &t), 300.0 * (4.0 + 1.0 + 40.0 * 32.0));
    assert_eq!(metric(&m, "transport_peers_connected", &[("transport", "from_node_a")]), 0.0);
    assert_eq!(metric(&m, "transport_errors_total", &[("transport", "from_node_a")]), 0.0);
    assert!(daemon.stop().success());
}

/// A join as the engine runs it: a query reading two streams (`query_register` with one,
/// `query_input` with the other). Both streams count it as a subscriber while it runs, and its
/// events are counted exactly per input stream, its batches and rows too.
#[test]
fn a_query_that_reads_two_streams_counts_each() {
    let _serial = serial();
    let args = ["--events", "200000", "--rate", "100000", "--join-query"];
    let target = GatedDemo::start(&bin("eventflux-demo"), &args);
    let daemon = Daemon::start(target.pid());
    let target = target.open();
    // Stock0: q0, q2 and the join; Stock1: q1 and the join.
    poll_metrics(daemon.port, Duration::from_secs(10), "the join query's subscriptions", |m| {
        [("Stock0", 3.0), ("Stock1", 2.0)].iter().all(|(stream, n)| {
            integration_tests::value(m, "stream_subscribers_active", &[("stream_name", stream)]) == Some(*n)
        })
    });
    let s = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    let join = &s["join_query"];
    for stream in ["Stock0", "Stock1"] {
        let processed = join["processed"][stream].as_u64().expect("processed");
        assert_eq!(processed, s["streams"][stream]["received"].as_u64().expect("received"), "it reads all of {stream}");
        let labels = [("query_id", "stock_join"), ("stream_name", stream)];
        assert_eq!(metric(&m, "query_events_processed_total", &labels) as u64, processed, "{stream}");
    }
    let emitted = [("query_id", "stock_join"), ("output_stream", "JoinOut")];
    assert_eq!(metric(&m, "query_events_emitted_total", &emitted) as u64, join["emitted"].as_u64().expect("emitted"));
    let batches = metric(&m, "query_batches_total", &[("query_id", "stock_join")]) as u64;
    assert_eq!(batches, join["batches"].as_u64().expect("batches"));
    assert!(daemon.stop().success());
}

/// Frequent component operations are timed in the batches sampled for their stages: with every
/// batch sampled, one table lookup per batch of the query that owns the table and one probe
/// per batch of the join query, and a CPU slot state of their own.
#[test]
fn frequent_operations_are_timed_in_sampled_batches() {
    let _serial = serial();
    let args = ["--events", "60000", "--join-query", "--pattern-query", "--filter-cost", "0"];
    let target = GatedDemo::start(&bin("eventflux-demo"), &args);
    let daemon = Daemon::start_with(target.pid(), &["--every-batch"]);
    let s = summary(&target.open_and_wait());
    daemon.wait_target_gone(Duration::from_secs(10));
    let m = daemon.samples();
    let count = |family: &str, labels: &[(&str, &str)]| metric(&m, &format!("{family}_count"), labels) as u64;
    let batches = |q: &Value| q["batches"].as_u64().expect("batches");
    assert_eq!(
        count("table_lookup_duration_seconds", &[("table", "SymbolStats")]),
        batches(&s["queries"]["q0_length"])
    );
    assert_eq!(count("join_probe_duration_seconds", &[("join", "StockJoin")]), batches(&s["join_query"]));
    assert_eq!(count("pattern_step_duration_seconds", &[("pattern", "PriceSwing")]), batches(&s["pattern_query"]));
    assert!(count("sink_publish_duration_seconds", &[("sink", "Q0Out_log")]) > 0);
    assert!(daemon.stop().success());
}
