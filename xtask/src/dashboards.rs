//! `cargo xtask dashboards [--check]`: writes the Grafana dashboards in `dashboards/grafana/`
//! from the specification below (or, with `--check`, fails if the files differ from it).
//!
//! Why generated: five dashboards of some sixty panels share a datasource input, template
//! variables, selectors and units; written by hand they drift (a panel without the instance
//! filter, a latency panel on a `quantile` label). Here every panel is a few lines, and the
//! JSON is committed so that Grafana users import it without Rust. `tests/it/dashboards.rs` lints
//! the committed JSON against the exporter's metric list and evaluates every query against a
//! real Prometheus scraping `run`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// How every panel and query reaches Prometheus: the import-time input `DS_PROMETHEUS`, which
/// is also a datasource template variable, so the same JSON works imported by hand (Grafana
/// replaces `${DS_PROMETHEUS}` with the chosen datasource) and provisioned from files (where it
/// resolves to the variable, by default the first Prometheus datasource).
fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"})
}

/// Every engine series is narrowed to the selected scrape targets.
const I: &str = r#"instance=~"$instance""#;

#[derive(Clone, Copy)]
enum Viz {
    Timeseries,
    Stat,
}

struct Panel {
    title: &'static str,
    description: &'static str,
    viz: Viz,
    unit: &'static str,
    /// (expression, legend)
    targets: Vec<(String, &'static str)>,
    /// Threshold steps after the green base: (value, colour).
    thresholds: Vec<(f64, &'static str)>,
    width: u32,
}

fn panel(title: &'static str, unit: &'static str, description: &'static str) -> Panel {
    Panel { title, description, viz: Viz::Timeseries, unit, targets: Vec::new(), thresholds: Vec::new(), width: 12 }
}

impl Panel {
    fn q(mut self, expr: impl Into<String>, legend: &'static str) -> Panel {
        self.targets.push((expr.into(), legend));
        self
    }

    fn stat(mut self) -> Panel {
        self.viz = Viz::Stat;
        self.width = 6;
        self
    }

    fn warn(mut self, yellow: f64, red: f64) -> Panel {
        self.thresholds = vec![(yellow, "yellow"), (red, "red")];
        self
    }

    fn width(mut self, w: u32) -> Panel {
        self.width = w;
        self
    }
}

struct Row {
    title: &'static str,
    panels: Vec<Panel>,
}

struct Dashboard {
    file: &'static str,
    uid: &'static str,
    title: &'static str,
    description: &'static str,
    /// Template variables beyond the datasource and `instance`: (name, label, metric).
    vars: Vec<(&'static str, &'static str, &'static str)>,
    rows: Vec<Row>,
}

/// p`q` of a histogram per query (and `extra` labels), over the buckets' rates.
fn quantile(q: f64, metric: &str, selector: &str, extra: &str) -> String {
    quantile_by(q, metric, selector, &format!("instance, pid, query_id{extra}"))
}

/// The `q`-quantile of histogram `metric` by the labels `by`, whether Prometheus stored it as
/// classic buckets (`_bucket{le}`, the text format) or as a native histogram (the protobuf
/// format, scraped with `--enable-feature=native-histograms`: then there is no `_bucket`).
fn quantile_by(q: f64, metric: &str, selector: &str, by: &str) -> String {
    format!(
        "histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[$__rate_interval]))) or histogram_quantile({q}, sum by ({by}) (rate({metric}{{{selector}}}[$__rate_interval])))"
    )
}

fn observer_row() -> Row {
    Row {
        title: "Observer",
        panels: vec![
            panel("Probes attached", "short", "Distinct USDT probes and probe sites the observer is attached to.")
                .q(format!("eventflux_probe_probes_attached{{{I}}}"), "probes {{instance}}")
                .q(format!("eventflux_probe_sites_attached{{{I}}}"), "sites {{instance}}")
                .width(8),
            panel("Observer ready", "short", "1 while /ready answers 200 (every probe attached, target alive).")
                .q(format!("eventflux_probe_ready{{{I}}}"), "{{instance}}")
                .width(8),
            panel(
                "Kernel program time",
                "percentunit",
                "Share of one CPU spent in the observer's eBPF programs (kernel BPF statistics), by program.",
            )
            .q(format!("sum by (instance, program) (rate(eventflux_probe_program_run_seconds_total{{{I}}}[$__rate_interval]))"), "{{program}} {{instance}}")
            .warn(0.01, 0.05)
            .width(8),
            panel("Kernel program runs / s", "ops", "Probe hits handled per second, by program: bounded by the sampling budget, not by the event rate.")
                .q(format!("sum by (instance, program) (rate(eventflux_probe_program_runs_total{{{I}}}[$__rate_interval]))"), "{{program}} {{instance}}"),
            panel("Kernel-side drops / s", "ops", "Probe hits the kernel programs could not record, by reason (a full map or ring buffer, an unreadable argument).")
                .q(format!("sum by (instance, reason) (rate(eventflux_probe_dropped_events_total{{{I}}}[$__rate_interval]))"), "{{reason}} {{instance}}")
                .warn(0.001, 1.0),
            panel("BPF map fill", "percentunit", "Entries of each bounded BPF map over its capacity: past 90% new series start to drop.")
                .q(format!("eventflux_probe_map_entries{{{I}}} / eventflux_probe_map_capacity{{{I}}}"), "{{map}} {{instance}}")
                .warn(0.7, 0.9),
            panel("Series folded by the cardinality cap", "short", "Label sets summed into the `overflow` series of a metric because it reached --max-series.")
                .q(format!("eventflux_probe_series_folded{{{I}}}"), "{{metric}} {{instance}}")
                .warn(1.0, 100.0),
            panel("Spans exported / dropped per second", "ops", "OTLP export of sampled batches' span trees: exported, and dropped by reason (queue_full, export_failed).")
                .q(format!("sum by (instance) (rate(eventflux_probe_spans_exported_total{{{I}}}[$__rate_interval]))"), "exported {{instance}}")
                .q(format!("sum by (instance, reason) (rate(eventflux_probe_spans_dropped_total{{{I}}}[$__rate_interval]))"), "dropped {{reason}} {{instance}}"),
        ],
    }
}

fn dashboards() -> Vec<Dashboard> {
    let q = r#"query_id=~"$query_id""#;
    let s = r#"stream_name=~"$stream_name""#;
    vec![
        Dashboard {
            file: "eventflux-overview.json",
            uid: "eventflux-overview",
            title: "EventFlux Overview",
            description: "Is the engine up, busy, fast and error-free? From eventflux-probe (eBPF, no engine changes).",
            vars: vec![],
            rows: vec![
                Row {
                    title: "Engine",
                    panels: vec![
                        panel("Uptime", "s", "Seconds since the engine process started.")
                            .q(format!("eventflux_uptime_seconds{{{I}}}"), "{{instance}}")
                            .stat(),
                        panel("Observer version", "none", "eventflux-probe's version and the probe ABI it reads.")
                            .q(format!("eventflux_probe_build_info{{{I}}}"), "{{version}} (ABI v{{abi_version}})")
                            .stat(),
                        panel("Active queries", "short", "Queries running in the engine.")
                            .q(format!("sum by (instance, pid) (query_active_count{{{I}}})"), "{{instance}}")
                            .stat(),
                        panel("Target running", "short", "1 while the observed engine process runs; 0 once it exited.")
                            .q(format!("eventflux_probe_target_running{{{I}}}"), "{{instance}}")
                            .stat(),
                    ],
                },
                Row {
                    title: "Throughput and errors",
                    panels: vec![
                        panel("Events processed / s", "ops", "Events entering queries per second, all queries of the engine.")
                            .q(format!("sum by (instance, pid) (rate(query_events_processed_total{{{I}}}[$__rate_interval]))"), "{{instance}}"),
                        panel("Events received / s by stream", "ops", "Events entering each stream (from sources, or inserted by queries).")
                            .q(format!("sum by (instance, pid, stream_name) (rate(stream_events_received_total{{{I}}}[$__rate_interval]))"), "{{stream_name}}"),
                        panel("Errors / s", "ops", "Events queries failed to process, by query and error type.")
                            .q(format!("sum by (instance, pid, query_id, error_type) (rate(query_execution_errors_total{{{I}}}[$__rate_interval]))"), "{{query_id}} {{error_type}}")
                            .warn(1.0, 100.0),
                        panel("Query latency p99", "s", "99th percentile of the per-batch latency of each query (sampled batches).")
                            .q(quantile(0.99, "query_latency_seconds", I, ""), "{{query_id}}")
                            .warn(0.01, 0.1),
                    ],
                },
                Row {
                    title: "Resources",
                    panels: vec![
                        panel("Memory", "bytes", "Resident memory of the engine, and the part its windows and queues hold (from probes).")
                            .q(format!("eventflux_memory_usage_bytes{{{I}}}"), "{{component}}"),
                        panel("CPU", "percent", "CPU use of the engine process, percent of one core.")
                            .q(format!("eventflux_cpu_usage_percent{{{I}}}"), "{{instance}}")
                            .warn(80.0, 95.0),
                    ],
                },
            ],
        },
        Dashboard {
            file: "eventflux-query-performance.json",
            uid: "eventflux-queries",
            title: "EventFlux Query Performance",
            description: "Per query: throughput, latency percentiles and stage times, errors, buffers, state.",
            vars: vec![("query_id", "Query", "query_batches_total")],
            rows: vec![
                Row {
                    title: "Throughput",
                    panels: vec![
                        panel("Query throughput", "ops", "Events entering each query per second.")
                            .q(format!("sum by (instance, pid, query_id) (rate(query_events_processed_total{{{I},{q}}}[$__rate_interval]))"), "{{query_id}}"),
                        panel("Rows emitted / s", "ops", "Rows each query inserts into its output stream per second.")
                            .q(format!("sum by (instance, pid, query_id) (rate(query_events_emitted_total{{{I},{q}}}[$__rate_interval]))"), "{{query_id}}"),
                        panel("Query execution timeline", "ops", "Batches (chunks) each query runs per second: when each query ran, and how often.")
                            .q(format!("sum by (instance, pid, query_id) (rate(query_batches_total{{{I},{q}}}[$__rate_interval]))"), "{{query_id}}")
                            .width(24),
                    ],
                },
                Row {
                    title: "Latency",
                    panels: vec![
                        panel("Query latency p50 / p95 / p99", "s", "Per-batch latency percentiles of each query, from the sampled batches' histogram.")
                            .q(quantile(0.5, "query_latency_seconds", &format!("{I},{q}"), ""), "p50 {{query_id}}")
                            .q(quantile(0.95, "query_latency_seconds", &format!("{I},{q}"), ""), "p95 {{query_id}}")
                            .q(quantile(0.99, "query_latency_seconds", &format!("{I},{q}"), ""), "p99 {{query_id}}")
                            .warn(0.01, 0.1),
                        panel("Stage self time p99", "s", "99th percentile of each stage's own time per sampled batch (ingest: time queued before the query started).")
                            .q(quantile(0.99, "query_stage_latency_seconds", &format!("{I},{q}"), ", stage"), "{{query_id}} {{stage}}"),
                    ],
                },
                Row {
                    title: "CPU",
                    panels: vec![
                        panel("CPU by query", "percent", "CPU time of the engine's threads while they executed each query, percent of one core, from CPU samples of every batch (none: outside any query).")
                            .q(format!("sum by (instance, pid, query_id) (rate(query_cpu_seconds_total{{{I},{q}}}[$__rate_interval])) * 100"), "{{query_id}}"),
                        panel("CPU by stage", "percent", "The same by query and stage (other: the query's own code between its stages); `eventflux-probe profile --query Q` shows the functions.")
                            .q(format!("sum by (instance, pid, query_id, stage) (rate(query_cpu_seconds_total{{{I},{q}}}[$__rate_interval])) * 100"), "{{query_id}} {{stage}}"),
                    ],
                },
                Row {
                    title: "Errors and buffers",
                    panels: vec![
                        panel("Query error rate", "ops", "Events each query failed to process per second, by error type.")
                            .q(format!("sum by (instance, pid, query_id, error_type) (rate(query_execution_errors_total{{{I},{q}}}[$__rate_interval]))"), "{{query_id}} {{error_type}}"),
                        panel("Error ratio", "percentunit", "Failed events over events processed, per query.")
                            .q(format!("sum by (instance, pid, query_id) (rate(query_execution_errors_total{{{I},{q}}}[$__rate_interval])) / sum by (instance, pid, query_id) (rate(query_events_processed_total{{{I},{q}}}[$__rate_interval]))"), "{{query_id}}")
                            .warn(0.01, 0.05),
                        panel("Query buffer utilization", "percentunit", "Fill of each query's input queue (async junctions): near 1 means backpressure.")
                            .q(format!("query_buffer_utilization{{{I},{q}}}"), "{{query_id}}")
                            .warn(0.7, 0.9),
                        panel("Window state", "bytes", "Bytes each query's window holds.")
                            .q(format!("query_window_size_bytes{{{I},{q}}}"), "{{query_id}} ({{window_type}})"),
                        panel("Aggregation groups", "short", "Live group-by keys of each query's aggregation.")
                            .q(format!("query_aggregation_groups{{{I},{q}}}"), "{{query_id}}"),
                    ],
                },
            ],
        },
        Dashboard {
            file: "eventflux-stream-monitoring.json",
            uid: "eventflux-streams",
            title: "EventFlux Stream Monitoring",
            description: "Per stream: throughput, backpressure, subscribers, queued bytes, oldest event age; connections.",
            vars: vec![("stream_name", "Stream", "stream_events_received_total")],
            rows: vec![
                Row {
                    title: "Streams",
                    panels: vec![
                        panel("Stream throughput", "ops", "Events entering each stream, and handed to its subscribers, per second.")
                            .q(format!("sum by (instance, pid, stream_name) (rate(stream_events_received_total{{{I},{s}}}[$__rate_interval]))"), "in {{stream_name}}")
                            .q(format!("sum by (instance, pid, stream_name) (rate(stream_events_sent_total{{{I},{s}}}[$__rate_interval]))"), "to subscribers {{stream_name}}"),
                        panel("Backpressure events / s", "ops", "Times a producer found a subscriber's queue full, per second.")
                            .q(format!("sum by (instance, pid, stream_name) (rate(stream_backpressure_events_total{{{I},{s}}}[$__rate_interval]))"), "{{stream_name}}")
                            .warn(10.0, 100.0),
                        panel("Subscribers", "short", "Queries subscribed to each stream.")
                            .q(format!("stream_subscribers_active{{{I},{s}}}"), "{{stream_name}}"),
                        panel("Buffer size", "bytes", "Bytes queued for each stream's subscribers (async junctions).")
                            .q(format!("stream_buffer_size_bytes{{{I},{s}}}"), "{{stream_name}}"),
                        panel("Oldest event age", "s", "How long the most recently dequeued chunk waited in its queue.")
                            .q(format!("stream_oldest_event_age_seconds{{{I},{s}}}"), "{{stream_name}}")
                            .warn(0.1, 1.0),
                    ],
                },
                Row {
                    title: "Connections",
                    panels: vec![
                        panel("Open connections", "short", "Open source and sink connections, by protocol.")
                            .q(format!("connections_active{{{I}}}"), "{{protocol}}"),
                        panel("Connection attempts / s", "ops", "Connection attempts by protocol and result, and failures by kind.")
                            .q(format!("sum by (instance, pid, protocol, result) (rate(connections_total{{{I}}}[$__rate_interval]))"), "{{protocol}} {{result}}")
                            .q(format!("sum by (instance, pid, protocol, error_type) (rate(connection_errors_total{{{I}}}[$__rate_interval]))"), "{{protocol}} failed: {{error_type}}"),
                    ],
                },
            ],
        },
        Dashboard {
            file: "eventflux-components.json",
            uid: "eventflux-components",
            title: "EventFlux Components",
            description: "Sources and sinks per connector, junctions, the error store, windows, joins and patterns, partitions, triggers, aggregations, persistence, tables: what each read, published, failed and holds.",
            vars: vec![],
            rows: vec![
                Row {
                    title: "Sources",
                    panels: vec![
                        panel("Source events / s", "ops", "Events each source read and mapped into its stream, per second.")
                            .q(format!("sum by (instance, pid, source, connector) (rate(source_events_total{{{I}}}[$__rate_interval]))"), "{{source}} ({{connector}})"),
                        panel("Source bytes / s", "Bps", "Bytes each source read from its connector, per second.")
                            .q(format!("sum by (instance, pid, source) (rate(source_bytes_total{{{I}}}[$__rate_interval]))"), "{{source}}"),
                        panel("Mapping errors / s", "ops", "Inputs a source's mapper could not map, per second, by what its error handler did with them (action).")
                            .q(format!("sum by (instance, pid, source, action) (rate(source_mapping_errors_total{{{I}}}[$__rate_interval]))"), "{{source}} {{action}}")
                            .warn(1.0, 100.0),
                        panel("Reconnects / s", "ops", "Times each source reconnected to its connector, per second.")
                            .q(format!("sum by (instance, pid, source) (rate(source_reconnects_total{{{I}}}[$__rate_interval]))"), "{{source}}"),
                        panel("Source lag", "short", "Events each source is behind its input: a Kafka consumer's lag, a paced source's events due but not yet read.")
                            .q(format!("source_lag_events{{{I}}}"), "{{source}}")
                            .width(24),
                        panel("Connected", "short", "1 while a source or sink is connected to its connector, 0 while it is not.")
                            .q(format!("source_connected{{{I}}}"), "source {{source}}")
                            .q(format!("sink_connected{{{I}}}"), "sink {{sink}}")
                            .width(24),
                    ],
                },
                Row {
                    title: "Sinks",
                    panels: vec![
                        panel("Sink events / s", "ops", "Events each sink published, per second.")
                            .q(format!("sum by (instance, pid, sink, connector) (rate(sink_events_total{{{I}}}[$__rate_interval]))"), "{{sink}} ({{connector}})"),
                        panel("Sink bytes / s", "Bps", "Bytes each sink published, per second.")
                            .q(format!("sum by (instance, pid, sink) (rate(sink_bytes_total{{{I}}}[$__rate_interval]))"), "{{sink}}"),
                        panel("Sink failures / s", "ops", "Events a sink could not publish, per second, by why (error_type).")
                            .q(format!("sum by (instance, pid, sink, error_type) (rate(sink_failures_total{{{I}}}[$__rate_interval]))"), "{{sink}} {{error_type}}")
                            .warn(1.0, 100.0),
                        panel("Sink retries / s", "ops", "Publish attempts repeated after a failure, per second.")
                            .q(format!("sum by (instance, pid, sink) (rate(sink_retries_total{{{I}}}[$__rate_interval]))"), "{{sink}}"),
                    ],
                },
                Row {
                    title: "Junctions",
                    panels: vec![
                        panel("Events dropped by junctions / s", "ops", "Events an async stream junction refused because its subscribers' queue stayed full through its back-off, per second: lost.")
                            .q(format!("sum by (instance, pid, junction) (rate(junction_events_dropped_total{{{I}}}[$__rate_interval]))"), "{{junction}}")
                            .warn(0.001, 1.0),
                        panel("Junction queue fill", "percentunit", "Chunks queued in each junction over what its queue holds: near 100% the junction applies backpressure, then drops.")
                            .q(format!("junction_queue_chunks{{{I}}} / junction_queue_capacity_chunks{{{I}}}"), "{{junction}}")
                            .warn(0.7, 0.9),
                    ],
                },
                Row {
                    title: "Error store",
                    panels: vec![
                        panel("Error store fill", "percentunit", "Failed events held over the store's capacity: past 100% failed events are lost.")
                            .q(format!("error_store_size_events{{{I}}} / error_store_capacity_events{{{I}}}"), "{{error_store}}")
                            .warn(0.7, 0.9)
                            .width(8),
                        panel("Failed events stored / s", "ops", "Events added to the error store per second, by where they failed (origin).")
                            .q(format!("sum by (instance, pid, error_store, origin) (rate(error_store_events_total{{{I}}}[$__rate_interval]))"), "{{error_store}} {{origin}}")
                            .width(8),
                        panel("Failed events lost / s", "ops", "Events the error store could not keep because it was full, per second.")
                            .q(format!("sum by (instance, pid, error_store) (rate(error_store_dropped_total{{{I}}}[$__rate_interval]))"), "{{error_store}}")
                            .warn(0.001, 1.0)
                            .width(8),
                    ],
                },
                Row {
                    title: "Windows",
                    panels: vec![
                        panel("Window events / s", "ops", "Events added to each query's window, and events that left it (expired, evicted, flushed), per second.")
                            .q(format!("sum by (instance, pid, window, window_type) (rate(window_events_total{{{I}}}[$__rate_interval]))"), "in {{window}} ({{window_type}})")
                            .q(format!("sum by (instance, pid, window, window_type) (rate(window_expired_events_total{{{I}}}[$__rate_interval]))"), "out {{window}} ({{window_type}})")
                            .width(8),
                        panel("Window flushes / s", "ops", "Times each batch window emitted (tumbled), per second.")
                            .q(format!("sum by (instance, pid, window) (rate(window_flushes_total{{{I}}}[$__rate_interval]))"), "{{window}}")
                            .width(8),
                        panel("Window size", "short", "Events each window holds: a line that only climbs is state that never expires.")
                            .q(format!("window_size_events{{{I}}}"), "{{window}} ({{window_type}})")
                            .width(8),
                    ],
                },
                Row {
                    title: "Joins and patterns",
                    panels: vec![
                        panel("Join events and matches / s", "ops", "Events arriving on each side of a join, and the matches (joined rows) it produced, per second.")
                            .q(format!("sum by (instance, pid, join, side) (rate(join_events_total{{{I}}}[$__rate_interval]))"), "{{join}} {{side}}")
                            .q(format!("sum by (instance, pid, join) (rate(join_matches_total{{{I}}}[$__rate_interval]))"), "{{join}} matches"),
                        panel("Join state", "short", "Events each side's window of a join holds: what every arriving event probes.")
                            .q(format!("join_state_events{{{I}}}"), "{{join}} {{side}}"),
                        panel("Pattern partial matches", "short", "Partial matches alive, waiting for their next event: a line that only climbs is a pattern whose `within` never expires them.")
                            .q(format!("pattern_partial_matches{{{I}}}"), "{{pattern}}"),
                        panel("Pattern matches / s", "ops", "Partial matches started, completed and expired (their `within` ran out), per second.")
                            .q(format!("sum by (instance, pid, pattern) (rate(pattern_partial_matches_started_total{{{I}}}[$__rate_interval]))"), "{{pattern}} started")
                            .q(format!("sum by (instance, pid, pattern) (rate(pattern_matches_total{{{I}}}[$__rate_interval]))"), "{{pattern}} matched")
                            .q(format!("sum by (instance, pid, pattern) (rate(pattern_partial_matches_expired_total{{{I}}}[$__rate_interval]))"), "{{pattern}} expired"),
                    ],
                },
                Row {
                    title: "Partitions, triggers, aggregations",
                    panels: vec![
                        panel("Partition instances", "short", "Instances of each partitioned query alive: one per live key, each with its own state.")
                            .q(format!("partition_instances{{{I}}}"), "{{partition}}")
                            .width(6),
                        panel("Partition instances created / purged per second", "ops", "Instances created (a new key) and purged (idle), per second.")
                            .q(format!("sum by (instance, pid, partition) (rate(partition_instances_created_total{{{I}}}[$__rate_interval]))"), "{{partition}} created")
                            .q(format!("sum by (instance, pid, partition) (rate(partition_instances_purged_total{{{I}}}[$__rate_interval]))"), "{{partition}} purged")
                            .width(6),
                        panel("Trigger fires / s", "ops", "Times each trigger fired, per second.")
                            .q(format!("sum by (instance, pid, trigger) (rate(trigger_fires_total{{{I}}}[$__rate_interval]))"), "{{trigger}}")
                            .width(6),
                        panel("Aggregation buckets", "short", "Buckets each incremental aggregation holds, by duration.")
                            .q(format!("aggregation_buckets{{{I}}}"), "{{aggregation}} {{duration}}")
                            .width(6),
                    ],
                },
                Row {
                    title: "Persistence",
                    panels: vec![
                        panel("Snapshots / s", "ops", "Snapshots of the app's state taken per second, by result (restores at start: persistence_restores_total).")
                            .q(format!("sum by (instance, pid, persistence, result) (rate(persistence_snapshots_total{{{I}}}[$__rate_interval]))"), "{{persistence}} {{result}}")
                            .width(8),
                        panel("Snapshot duration p50 / p99", "s", "Time to take and write one snapshot, from every snapshot's duration.")
                            .q(quantile_by(0.5, "persistence_snapshot_duration_seconds", I, "instance, pid, persistence"), "p50 {{persistence}}")
                            .q(quantile_by(0.99, "persistence_snapshot_duration_seconds", I, "instance, pid, persistence"), "p99 {{persistence}}")
                            .width(8),
                        panel("Age of the last snapshot", "s", "Seconds since the last snapshot succeeded: the state a restart would lose.")
                            .q(format!("time() - persistence_last_snapshot_timestamp_seconds{{{I}}}"), "{{persistence}}")
                            .warn(300.0, 900.0)
                            .width(8),
                    ],
                },
                Row {
                    title: "Tables",
                    panels: vec![
                        panel("Table writes / s", "ops", "Rows written to each table per second, by operation; evictions of bounded (cache) tables.")
                            .q(format!("sum by (instance, pid, table, op) (rate(table_operations_total{{{I}}}[$__rate_interval]))"), "{{table}} {{op}}")
                            .q(format!("sum by (instance, pid, table) (rate(table_evictions_total{{{I}}}[$__rate_interval]))"), "{{table}} evicted"),
                        panel("Table lookups / s", "ops", "Lookups into each table from streams per second, by result (hit, miss).")
                            .q(format!("sum by (instance, pid, table, result) (rate(table_lookups_total{{{I}}}[$__rate_interval]))"), "{{table}} {{result}}"),
                        panel("Table rows", "short", "Rows each table holds.")
                            .q(format!("table_rows{{{I}}}"), "{{table}}"),
                        panel("Table size", "bytes", "Bytes each table's rows take.")
                            .q(format!("table_size_bytes{{{I}}}"), "{{table}}"),
                        panel("Table lookup and sink publish p99", "s", "Time of one chunk's table lookup and one sink publish, p99, from batches sampled for their stages.")
                            .q(quantile_by(0.99, "table_lookup_duration_seconds", I, "instance, pid, table"), "lookup {{table}}")
                            .q(quantile_by(0.99, "sink_publish_duration_seconds", I, "instance, pid, sink"), "publish {{sink}}")
                            .width(24),
                    ],
                },
                Row {
                    title: "Transport between nodes",
                    panels: vec![
                        panel("Transport messages / s", "ops", "Messages the engine sent to and received from other nodes, per transport and direction.")
                            .q(format!("sum by (instance, pid, transport, direction) (rate(transport_messages_total{{{I}}}[$__rate_interval]))"), "{{transport}} {{direction}}")
                            .width(8),
                        panel("Transport bytes / s", "Bps", "Bytes the engine sent to and received from other nodes.")
                            .q(format!("sum by (instance, pid, transport, direction) (rate(transport_bytes_total{{{I}}}[$__rate_interval]))"), "{{transport}} {{direction}}")
                            .width(8),
                        panel("Transport peers and errors / s", "short", "Peers connected per transport, and the rate of its send and receive errors.")
                            .q(format!("transport_peers_connected{{{I}}}"), "{{transport}} peers")
                            .q(format!("sum by (instance, pid, transport) (rate(transport_errors_total{{{I}}}[$__rate_interval]))"), "{{transport}} errors / s")
                            .width(8),
                    ],
                },
            ],
        },
        Dashboard {
            file: "eventflux-system-resources.json",
            uid: "eventflux-system",
            title: "EventFlux System Resources",
            description: "The engine process from /proc (CPU, memory, threads, file descriptors, I/O) and the observer itself.",
            vars: vec![],
            rows: vec![
                Row {
                    title: "Engine process",
                    panels: vec![
                        panel("CPU usage", "percent", "CPU use of the engine process over time, percent of one core.")
                            .q(format!("eventflux_cpu_usage_percent{{{I}}}"), "{{instance}}")
                            .q(format!("rate(eventflux_cpu_seconds_total{{{I}}}[$__rate_interval]) * 100"), "rate {{instance}}")
                            .warn(80.0, 95.0),
                        panel("Memory usage", "bytes", "Resident memory, and the part held by windows and queues.")
                            .q(format!("eventflux_memory_usage_bytes{{{I}}}"), "{{component}}"),
                        panel("Threads and CPU per thread", "short", "Threads of the engine, and CPU seconds per second per thread: how busy its thread pool is.")
                            .q(format!("eventflux_threads_active{{{I}}}"), "threads {{instance}}")
                            .q(format!("rate(eventflux_cpu_seconds_total{{{I}}}[$__rate_interval]) / eventflux_threads_active{{{I}}}"), "busy per thread {{instance}}"),
                        panel("Open file descriptors", "short", "File descriptors the engine holds open (sockets included).")
                            .q(format!("eventflux_open_fds{{{I}}}"), "{{instance}}"),
                        panel("Disk I/O", "Bps", "Bytes the engine caused to be read from and written to storage.")
                            .q(format!("rate(eventflux_disk_io_bytes_total{{{I}}}[$__rate_interval])"), "{{direction}}"),
                        panel("Network and pipe I/O", "Bps", "Bytes through the engine's read and write system calls (sockets, pipes and files) less storage I/O: its network throughput, approximately.")
                            .q(format!("rate(eventflux_io_bytes_total{{{I}}}[$__rate_interval]) - rate(eventflux_disk_io_bytes_total{{{I}}}[$__rate_interval])"), "{{direction}}"),
                    ],
                },
                observer_row(),
            ],
        },
    ]
}

fn thresholds(p: &Panel) -> Value {
    let mut steps = vec![json!({"color": "green", "value": null})];
    steps.extend(p.thresholds.iter().map(|(v, c)| json!({"color": c, "value": v})));
    json!({"mode": "absolute", "steps": steps})
}

/// Histograms whose buckets carry exemplars (the trace ids of exported batches; docs/metrics.md):
/// the panels drawing their quantiles show them, linked to the trace.
pub const EXEMPLAR_METRICS: &[&str] = &["query_latency_seconds", "query_stage_latency_seconds"];

/// Whether a panel query draws a quantile of a histogram with exemplars.
fn shows_exemplars(expr: &str) -> bool {
    expr.starts_with("histogram_quantile(")
        && EXEMPLAR_METRICS.iter().any(|m| expr.contains(&format!("{m}_bucket{{")) || expr.contains(&format!("({m}{{")))
}

fn panel_json(p: &Panel, id: u32, x: u32, y: u32) -> Value {
    let targets: Vec<Value> = p
        .targets
        .iter()
        .enumerate()
        .map(|(i, (expr, legend))| {
            json!({
                "datasource": datasource(),
                "expr": expr,
                "legendFormat": legend,
                "range": true,
                "exemplar": shows_exemplars(expr),
                "refId": ((b'A' + i as u8) as char).to_string(),
            })
        })
        .collect();
    let height = match p.viz {
        Viz::Stat => 4,
        Viz::Timeseries => 8,
    };
    let mut v = json!({
        "id": id,
        "title": p.title,
        "description": p.description,
        "datasource": datasource(),
        "gridPos": {"h": height, "w": p.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": p.unit, "thresholds": thresholds(p), "color": {"mode": "palette-classic"}},
            "overrides": [],
        },
    });
    match p.viz {
        Viz::Stat => {
            v["type"] = json!("stat");
            v["fieldConfig"]["defaults"]["color"] = json!({"mode": "thresholds"});
            let text = if p.unit == "none" { "name" } else { "value" };
            v["options"] = json!({"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false}, "textMode": text, "colorMode": "value"});
        }
        Viz::Timeseries => {
            v["type"] = json!("timeseries");
            v["fieldConfig"]["defaults"]["custom"] = json!({"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "thresholdsStyle": {"mode": if p.thresholds.is_empty() { "off" } else { "line" }}});
            v["options"] = json!({"legend": {"displayMode": "list", "placement": "bottom", "showLegend": true}, "tooltip": {"mode": "multi", "sort": "desc"}});
        }
    }
    v
}

fn variable(name: &str, label: &str, query: String) -> Value {
    json!({
        "name": name,
        "label": label,
        "type": "query",
        "datasource": datasource(),
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
        "refresh": 2,
        "includeAll": true,
        "multi": true,
        "allValue": ".*",
        "current": {"selected": true, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    })
}

fn dashboard_json(d: &Dashboard) -> Value {
    let mut panels = Vec::new();
    let mut id = 1;
    let mut y = 0;
    for row in &d.rows {
        panels.push(json!({
            "id": id, "type": "row", "title": row.title, "collapsed": false,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": [],
        }));
        id += 1;
        y += 1;
        let mut x = 0;
        let mut row_height = 0;
        for p in &row.panels {
            if x + p.width > 24 {
                x = 0;
                y += row_height;
                row_height = 0;
            }
            let v = panel_json(p, id, x, y);
            row_height = row_height.max(v["gridPos"]["h"].as_u64().unwrap_or(8) as u32);
            panels.push(v);
            id += 1;
            x += p.width;
        }
        y += row_height;
    }
    let mut vars = vec![
        json!({"name": "DS_PROMETHEUS", "label": "Datasource", "type": "datasource", "query": "prometheus", "hide": 0, "current": {}}),
        variable("instance", "Instance", "label_values(eventflux_probe_build_info, instance)".into()),
    ];
    for (name, label, metric) in &d.vars {
        vars.push(variable(name, label, format!("label_values({metric}{{{I}}}, {name})")));
    }
    json!({
        "__inputs": [{
            "name": "DS_PROMETHEUS", "label": "Prometheus", "description": "The Prometheus that scrapes eventflux-probe",
            "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus",
        }],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["eventflux", "eventflux-probe"],
        "editable": true,
        "graphTooltip": 1,
        "id": null,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["eventflux"], "asDropdown": true, "title": "EventFlux", "includeVars": true, "keepTime": true}],
        "templating": {"list": vars},
        "panels": panels,
    })
}

pub fn run(check: bool) -> Result<()> {
    let dir: PathBuf = crate::root().join("dashboards/grafana");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut stale = Vec::new();
    for d in dashboards() {
        let text = serde_json::to_string_pretty(&dashboard_json(&d))? + "\n";
        let path = dir.join(d.file);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(d.file);
            }
        } else {
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        bail!(
            "dashboards/grafana/{} differ from xtask/src/dashboards.rs: run `cargo xtask dashboards`",
            stale.join(", ")
        );
    }
    Ok(())
}
