//! Every metric the observer exports, written once: name, type, labels, help.
//!
//! The Prometheus exporter takes name, type and help from here (it cannot emit a metric that
//! is not listed, nor with other labels: `export::prometheus` checks each series against its
//! entry); `docs/metrics.md`, the Grafana dashboards and the alert rules in `dashboards/` are
//! checked against [`ALL`] by tests, so a renamed metric or label fails a test instead of
//! leaving an empty panel or an alert that never fires.
//!
//! Engine metrics describe an observed engine process: when one observer exports several
//! processes they also carry a `pid` label ([`ENGINE_EXTRA_LABELS`]). Observer metrics describe
//! the observer itself.

use eventflux_abi::{ComponentCounter as CC, ComponentGauge as CG, ComponentOp as OP};

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As in the exposition format's `# TYPE` line.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// What a metric describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// An observed engine process.
    Engine,
    /// The observer.
    Observer,
}

/// One exported metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    /// Label names, in the order the exporter writes them (`le` of histograms not included).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Metric {
    /// The series names Prometheus stores for it: the name, or a histogram's `_bucket`, `_sum`
    /// and `_count`.
    pub fn series_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{}{s}", self.name)).collect(),
            _ => vec![self.name.to_owned()],
        }
    }
}

/// Labels an engine metric may carry beyond its own when one observer exports several
/// processes (node mode): `pid` (the host's), `exe`, and for a process in a container
/// `container_id` and `pod_uid` (from its cgroup path; namespace and pod names come from a
/// join with kube-state-metrics, docs/kubernetes.md).
pub const ENGINE_EXTRA_LABELS: &[&str] = &["pid", "exe", "container_id", "pod_uid"];

/// Histograms whose buckets carry exemplars, the trace ids of exported batches that fell in
/// them (`model::exemplars` records them; the dashboards' quantile panels of these show them,
/// which `tests/it/dashboards.rs` checks).
pub const WITH_EXEMPLARS: &[&Metric] = &[&QUERY_LATENCY, &QUERY_STAGE_LATENCY];

/// A metric's name: a literal, or a component counter or gauge code (`(ComponentCounter::X)`)
/// whose ABI label is the family's name, so that the name is written once.
macro_rules! metric_name {
    ($name:literal) => {
        $name
    };
    (($code:expr)) => {
        $code.label()
    };
}

macro_rules! define_metrics {
    ($(
        $scope:ident {
            $( $(#[$doc:meta])* $id:ident: $kind:ident $name:tt [$($label:ident),*] $help:literal; )*
        }
    )*) => {
        $($(
            $(#[$doc])*
            pub const $id: Metric = Metric {
                name: metric_name!($name),
                kind: Kind::$kind,
                scope: Scope::$scope,
                labels: &[$(stringify!($label)),*],
                help: $help,
            };
        )*)*

        /// Every exported metric.
        pub const ALL: &[&Metric] = &[$($(&$id),*),*];
    };
}

define_metrics! {
    Engine {
        QUERY_ACTIVE: Gauge "query_active_count" [] "Queries running.";
        STREAM_SUBSCRIBERS: Gauge "stream_subscribers_active" [stream_name] "Queries and sinks subscribed to the stream.";
        STREAM_RECEIVED: Counter "stream_events_received_total" [stream_name]
            "Events that entered the stream (from sources, or inserted by queries).";
        STREAM_SENT: Counter "stream_events_sent_total" [stream_name] "Events the stream handed to its subscribers.";
        STREAM_BACKPRESSURE: Counter "stream_backpressure_events_total" [stream_name]
            "Times a producer found a subscriber's queue full.";
        STREAM_BUFFER_BYTES: Gauge "stream_buffer_size_bytes" [stream_name] "Bytes queued for the stream's subscribers.";
        STREAM_OLDEST_AGE: Gauge "stream_oldest_event_age_seconds" [stream_name]
            "How long the most recently dequeued chunk of the stream waited in its queue.";
        QUERY_PROCESSED: Counter "query_events_processed_total" [query_id, stream_name] "Events that entered the query.";
        QUERY_EMITTED: Counter "query_events_emitted_total" [query_id, output_stream]
            "Rows the query inserted into its output stream.";
        QUERY_BATCHES: Counter "query_batches_total" [query_id]
            "Query batches (chunks of input), every one.";
        QUERY_ERRORS: Counter "query_execution_errors_total" [query_id, error_type] "Events the query failed to process.";
        QUERY_CPU: Counter "query_cpu_seconds_total" [query_id, stage]
            "CPU time of the engine's threads by the query and stage they were executing, from CPU samples (query_id and stage none: outside any query; query_id none, stage idle: threads idle in a pool, spinning for work; stage other: the query's own code between stages).";
        QUERY_WINDOW_BYTES: Gauge "query_window_size_bytes" [query_id, window_type] "Bytes the query's window holds.";
        QUERY_GROUPS: Gauge "query_aggregation_groups" [query_id] "Live group-by keys of the query's aggregation.";
        QUERY_BUFFER_UTILIZATION: Gauge "query_buffer_utilization" [query_id] "Fill of the query's input queue, 0 to 1.";
        QUERY_LATENCY: Histogram "query_latency_seconds" [query_id]
            "Time a query takes for one batch (chunk) of events, all stages included; from sampled batches (a few per second per engine thread, and each query's emitting batches as a stratum of their own), each counted as the batches it stands for, so _count estimates query_batches_total.";
        QUERY_STAGE_LATENCY: Histogram "query_stage_latency_seconds" [query_id, stage]
            "Self time of one stage of a query per batch sampled for its stages (stages it calls excluded), so _count counts those samples; ingest is the time a chunk waited in an async junction's queue.";
        CONNECTIONS: Counter "connections_total" [protocol, result] "Connection attempts by result.";
        CONNECTIONS_ACTIVE: Gauge "connections_active" [protocol] "Open connections.";
        CONNECTION_ERRORS: Counter "connection_errors_total" [protocol, error_type] "Connection failures by kind.";
        ENGINE_SPANS_DROPPED: Counter "eventflux_probe_engine_spans_dropped_total" []
            "Span records of sampled batches the engine could not keep (nesting deeper than its buffer).";
        ENGINE_TRACES_DECLINED: Counter "eventflux_probe_engine_traces_declined_total" []
            "Batches whose upstream sampled their trace that the engine did not trace: each engine thread traces at most the sampling level's rate of them per second.";
        UPTIME: Counter "eventflux_uptime_seconds" [] "Seconds since the engine process started.";
        MEMORY: Gauge "eventflux_memory_usage_bytes" [component]
            "Memory of the engine by component: rss (resident), window_state and queues (from probes).";
        CPU_PERCENT: Gauge "eventflux_cpu_usage_percent" [] "CPU use of the engine, percent of one core.";
        CPU_SECONDS: Counter "eventflux_cpu_seconds_total" [] "CPU time the engine process used, user and system.";
        THREADS: Gauge "eventflux_threads_active" [] "Threads of the engine process.";
        OPEN_FDS: Gauge "eventflux_open_fds" [] "Open file descriptors of the engine process.";
        IO_BYTES: Counter "eventflux_io_bytes_total" [direction]
            "Bytes the engine read or wrote through system calls (sockets, pipes and files; /proc/PID/io rchar, wchar).";
        DISK_IO_BYTES: Counter "eventflux_disk_io_bytes_total" [direction]
            "Bytes the engine caused to be read from or written to storage (/proc/PID/io read_bytes, write_bytes).";
        TARGET_RUNNING: Gauge "eventflux_probe_target_running" []
            "1 while the target runs the program the probes were attached to; 0 once it exited or exec'd another.";
        SOURCE_EVENTS: Counter (CC::SourceEvents) [source, connector, stream_name]
            "Events the source read and mapped into its stream.";
        SOURCE_BYTES: Counter (CC::SourceBytes) [source, connector, stream_name] "Bytes the source read from its connector.";
        SOURCE_MAPPING_ERRORS: Counter (CC::SourceMappingErrors) [source, connector, stream_name, action]
            "Inputs the source's mapper could not map, by what its error handler did (log, retry, drop, error_store, fail).";
        SOURCE_RECONNECTS: Counter (CC::SourceReconnects) [source, connector, stream_name]
            "Times the source reconnected to its connector.";
        SOURCE_CONNECTED: Gauge (CG::SourceConnected) [source, connector, stream_name]
            "1 while the source is connected to its connector, else 0.";
        SOURCE_LAG: Gauge (CG::SourceLag) [source, connector, stream_name]
            "Events the source is behind its input: a Kafka consumer's lag, a paced source's events due but not yet read.";
        SINK_EVENTS: Counter (CC::SinkEvents) [sink, connector, stream_name] "Events the sink published.";
        SINK_BYTES: Counter (CC::SinkBytes) [sink, connector, stream_name] "Bytes the sink published.";
        SINK_FAILURES: Counter (CC::SinkFailures) [sink, connector, stream_name, error_type]
            "Events the sink could not publish, by why (mapping, connection, timeout, rejected, unknown).";
        SINK_RETRIES: Counter (CC::SinkRetries) [sink, connector, stream_name]
            "Publish attempts the sink repeated after a failure.";
        SINK_CONNECTED: Gauge (CG::SinkConnected) [sink, connector, stream_name]
            "1 while the sink is connected to its connector, else 0.";
        ERROR_STORE_EVENTS: Counter (CC::ErrorStoreEvents) [error_store, origin]
            "Events added to the error store, by where they failed (source_mapping, sink_delivery, junction).";
        ERROR_STORE_DROPPED: Counter (CC::ErrorStoreDropped) [error_store]
            "Events the error store could not keep because it was full: lost.";
        ERROR_STORE_SIZE: Gauge (CG::ErrorStoreSize) [error_store] "Events the error store holds.";
        ERROR_STORE_CAPACITY: Gauge (CG::ErrorStoreCapacity) [error_store]
            "Events the error store can hold (absent when unbounded).";
        TABLE_OPERATIONS: Counter (CC::TableOperations) [table, table_type, op]
            "Rows written to the table, by operation (insert, update, delete, upsert).";
        TABLE_OPERATION_FAILURES: Counter (CC::TableOperationFailures) [table, table_type, op]
            "Table operations that failed, by operation.";
        TABLE_LOOKUPS: Counter (CC::TableLookups) [table, table_type, result]
            "Lookups into the table from streams (joins, `in` conditions), by result (hit, miss).";
        TABLE_EVICTIONS: Counter (CC::TableEvictions) [table, table_type] "Rows a bounded (cache) table evicted.";
        TABLE_ROWS: Gauge (CG::TableRows) [table, table_type] "Rows the table holds.";
        TABLE_BYTES: Gauge (CG::TableBytes) [table, table_type] "Bytes the table's rows take.";
        WINDOW_EVENTS: Counter (CC::WindowEvents) [window, window_type, query_id] "Events added to the window.";
        WINDOW_EXPIRED: Counter (CC::WindowExpired) [window, window_type, query_id]
            "Events that left the window: expired, evicted, or flushed by a batch window.";
        WINDOW_FLUSHES: Counter (CC::WindowFlushes) [window, window_type, query_id]
            "Times a batch window emitted (tumbled).";
        WINDOW_SIZE: Gauge (CG::WindowSize) [window, window_type, query_id] "Events the window holds.";
        PERSISTENCE_SNAPSHOTS: Counter (CC::PersistenceSnapshots) [persistence, store_type, result]
            "Snapshots of the app's state taken, by result (success, failure).";
        PERSISTENCE_SNAPSHOT_BYTES: Counter (CC::PersistenceSnapshotBytes) [persistence, store_type]
            "Bytes of the snapshots written.";
        PERSISTENCE_RESTORES: Counter (CC::PersistenceRestores) [persistence, store_type, result]
            "Restores of the app's state from a snapshot, by result (success, failure).";
        PERSISTENCE_LAST_SNAPSHOT_BYTES: Gauge (CG::PersistenceLastSnapshotBytes) [persistence, store_type]
            "Bytes of the last snapshot written.";
        PERSISTENCE_LAST_SNAPSHOT_TIME: Gauge (CG::PersistenceLastSnapshotTime) [persistence, store_type]
            "When the last snapshot succeeded, in Unix seconds: time() minus it is the age of the state a restart would restore.";
        JUNCTION_DROPPED: Counter (CC::JunctionDropped) [junction, junction_type, stream_name]
            "Events a stream junction refused (dropped) because its subscribers' queue stayed full through its back-off: lost.";
        JUNCTION_QUEUE: Gauge (CG::JunctionQueueDepth) [junction, junction_type, stream_name]
            "Chunks queued in the stream junction for its subscribers.";
        JUNCTION_QUEUE_CAPACITY: Gauge (CG::JunctionQueueCapacity) [junction, junction_type, stream_name]
            "Chunks the stream junction's queue holds at most.";
        JOIN_EVENTS: Counter (CC::JoinEvents) [join, side] "Events that arrived on a side of the join.";
        JOIN_MATCHES: Counter (CC::JoinMatches) [join] "Matches (joined rows) the join produced.";
        JOIN_EXPIRED: Counter (CC::JoinExpired) [join, side] "Events that left a side's window of the join.";
        JOIN_STATE: Gauge (CG::JoinState) [join, side]
            "Events a side's window of the join holds: the state every arriving event probes.";
        PATTERN_STARTED: Counter (CC::PatternStarted) [pattern] "Partial matches the pattern started (its first state matched).";
        PATTERN_MATCHES: Counter (CC::PatternMatches) [pattern] "Complete matches of the pattern.";
        PATTERN_EXPIRED: Counter (CC::PatternExpired) [pattern]
            "Partial matches dropped because their `within` ran out.";
        PATTERN_PARTIAL: Gauge (CG::PatternPartialMatches) [pattern]
            "Partial matches alive, waiting for their next event: the pattern's state.";
        PARTITION_EVENTS: Counter (CC::PartitionEvents) [partition] "Events routed to the partitioned query's instances.";
        PARTITION_CREATED: Counter (CC::PartitionCreated) [partition]
            "Instances of the partitioned query created: a key seen for the first time, or again after a purge.";
        PARTITION_PURGED: Counter (CC::PartitionPurged) [partition] "Idle instances of the partitioned query purged.";
        PARTITION_INSTANCES: Gauge (CG::PartitionInstances) [partition]
            "Instances of the partitioned query alive: one per live key, each with its own processors' state.";
        TRIGGER_FIRES: Counter (CC::TriggerFires) [trigger] "Times the trigger fired.";
        AGGREGATION_EVENTS: Counter (CC::AggregationEvents) [aggregation] "Events the incremental aggregation took.";
        AGGREGATION_PURGED: Counter (CC::AggregationPurged) [aggregation, duration]
            "Buckets of the incremental aggregation purged past their retention, by duration.";
        AGGREGATION_BUCKETS: Gauge (CG::AggregationBuckets) [aggregation, duration]
            "Buckets the incremental aggregation holds, by duration.";
        TRANSPORT_MESSAGES: Counter (CC::TransportMessages) [transport, connector, direction]
            "Messages (chunks of events) the transport sent to or received from peers.";
        TRANSPORT_BYTES: Counter (CC::TransportBytes) [transport, connector, direction]
            "Bytes the transport sent to or received from peers.";
        TRANSPORT_ERRORS: Counter (CC::TransportErrors) [transport, connector] "Sends or receives of the transport that failed.";
        TRANSPORT_PEERS: Gauge (CG::TransportPeers) [transport, connector] "Peers the transport is connected to now.";
        PERSISTENCE_SNAPSHOT_DURATION: Histogram (OP::Snapshot) [persistence, store_type]
            "Time to take and write one snapshot, every snapshot.";
        PERSISTENCE_RESTORE_DURATION: Histogram (OP::Restore) [persistence, store_type]
            "Time to read and apply a snapshot at a restore, every restore.";
        JOIN_PROBE_DURATION: Histogram (OP::JoinProbe) [join]
            "Time for one chunk to probe the join's other side, in batches sampled for their stages (_count counts those).";
        TABLE_LOOKUP_DURATION: Histogram (OP::TableLookup) [table, table_type]
            "Time to look one chunk's keys up in the table, in batches sampled for their stages (_count counts those).";
        PATTERN_STEP_DURATION: Histogram (OP::PatternStep) [pattern]
            "Time for one chunk through the pattern's state processors, in batches sampled for their stages (_count counts those).";
        SINK_PUBLISH_DURATION: Histogram (OP::SinkPublish) [sink, connector, stream_name]
            "Time for the sink to map and publish one chunk of rows, in batches sampled for their stages (_count counts those).";
    }
    Observer {
        BUILD_INFO: Gauge "eventflux_probe_build_info" [version, abi_version]
            "The observer's version and the probe ABI version it reads; always 1.";
        PROBES_ATTACHED: Gauge "eventflux_probe_probes_attached" [] "Distinct USDT probes attached.";
        SITES_ATTACHED: Gauge "eventflux_probe_sites_attached" [] "USDT probe sites (notes) attached.";
        SITES_REFUSED: Counter "eventflux_probe_sites_refused_total" []
            "Probe sites not attached because the code there was not the nop their note promised.";
        READY: Gauge "eventflux_probe_ready" []
            "1 while /ready answers 200: every selected probe attached and the target alive.";
        PROGRAM_RUNS: Counter "eventflux_probe_program_runs_total" [program]
            "Runs of each eBPF program (kernel BPF statistics).";
        PROGRAM_SECONDS: Counter "eventflux_probe_program_run_seconds_total" [program]
            "Time spent in each eBPF program (kernel BPF statistics).";
        MAP_ENTRIES: Gauge "eventflux_probe_map_entries" [map] "Entries in each bounded BPF map.";
        MAP_CAPACITY: Gauge "eventflux_probe_map_capacity" [map] "Capacity of each bounded BPF map.";
        KERNEL_DROPS: Counter "eventflux_probe_dropped_events_total" [reason]
            "Probe hits the kernel side could not record, by reason.";
        SPANS_EXPORTED: Counter "eventflux_probe_spans_exported_total" [] "Spans of sampled batches exported over OTLP.";
        SPANS_DROPPED: Counter "eventflux_probe_spans_dropped_total" [reason]
            "Spans not exported, by reason: queue_full (the collector is slower than the engine samples), export_failed (the collector refused or did not answer).";
        METRIC_EXPORTS: Counter "eventflux_probe_metric_exports_total" [result]
            "OTLP metrics export requests, by result: ok, failed (the collector refused or did not answer; the next export carries the change).";
        UNKNOWN_SERIES: Gauge "eventflux_probe_unknown_series" []
            "Map entries of kinds this build of the observer does not know (kernel side newer than user space?).";
        SERIES_FOLDED: Gauge "eventflux_probe_series_folded" [metric]
            "Label sets folded into the overflow series by the per-metric cap, in this scrape.";
    }
}

/// The family of a component counter.
pub fn component_counter(c: CC) -> Option<&'static Metric> {
    by_name(c.label()).filter(|m| m.kind == Kind::Counter)
}

/// The family of a component gauge.
pub fn component_gauge(g: CG) -> Option<&'static Metric> {
    by_name(g.label()).filter(|m| m.kind == Kind::Gauge)
}

/// The family of a component operation's durations.
pub fn component_op(o: OP) -> Option<&'static Metric> {
    by_name(o.label()).filter(|m| m.kind == Kind::Histogram)
}

/// The metric of this name.
pub fn by_name(name: &str) -> Option<&'static Metric> {
    ALL.iter().copied().find(|m| m.name == name)
}

/// The metric a stored series name belongs to (`query_latency_seconds_bucket` →
/// `query_latency_seconds`).
pub fn by_series_name(series: &str) -> Option<&'static Metric> {
    ALL.iter().copied().find(|m| m.series_names().iter().any(|s| s == series))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        let mut seen = std::collections::BTreeSet::new();
        for m in ALL {
            for s in m.series_names() {
                assert!(seen.insert(s.clone()), "{s} twice");
            }
            assert!(m.name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'), "{}", m.name);
            assert_eq!(m.kind == Kind::Counter, m.name.ends_with("_total") || m.name == "eventflux_uptime_seconds");
            assert!(!m.labels.contains(&"le") && !m.labels.contains(&"pid"), "{}", m.name);
            assert!(m.help.ends_with('.'), "{}", m.name);
        }
        assert_eq!(by_series_name("query_latency_seconds_bucket"), Some(&QUERY_LATENCY));
        assert_eq!(by_series_name("query_latency_seconds"), None);
    }

    /// Every component counter and gauge of the ABI has its family here, and the family's
    /// first label names the component by its kind (`source`, `table`, …).
    #[test]
    fn every_component_code_has_its_family() {
        let families = CC::ALL
            .iter()
            .map(|c| (component_counter(*c), c.kind()))
            .chain(CG::ALL.iter().map(|g| (component_gauge(*g), g.kind())))
            .chain(OP::ALL.iter().map(|o| (component_op(*o), o.kind())));
        for (metric, kind) in families {
            let metric = metric.unwrap_or_else(|| panic!("a {} code without its family", kind.label()));
            assert_eq!(metric.labels.first(), Some(&kind.label()), "{}", metric.name);
        }
        // A family's second dimension is its last label; the labels before it are
        // the component's own, the same in every family of its kind (gauges included).
        let mut own: std::collections::BTreeMap<&str, &[&str]> = std::collections::BTreeMap::new();
        let families = CC::ALL
            .iter()
            .map(|c| (component_counter(*c).expect("family"), c.kind(), c.dimension()))
            .chain(CG::ALL.iter().map(|g| (component_gauge(*g).expect("family"), g.kind(), g.dimension())))
            .chain(OP::ALL.iter().map(|o| (component_op(*o).expect("family"), o.kind(), None)));
        for (metric, kind, dimension) in families {
            let labels = match dimension {
                Some(d) => {
                    assert_eq!(metric.labels.last(), Some(&d.name), "{}", metric.name);
                    &metric.labels[..metric.labels.len() - 1]
                }
                None => metric.labels,
            };
            let first = *own.entry(kind.label()).or_insert(labels);
            assert_eq!(labels, first, "{}: labels unlike its kind's other families", metric.name);
        }
    }

    /// docs/metrics.md lists exactly these metrics, with these types and labels.
    #[test]
    fn the_docs_list_every_metric() {
        let doc = include_str!("../../../docs/metrics.md");
        let mut documented = Vec::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let kind = cells[2];
            let labels: Vec<&str> = cells[3]
                .split(',')
                .map(|l| l.trim().trim_matches('`'))
                .filter(|l| !l.is_empty() && *l != "—")
                .collect();
            documented.push((name.to_owned(), kind.to_owned(), labels.join(",")));
        }
        let code: Vec<(String, String, String)> =
            ALL.iter().map(|m| (m.name.to_owned(), m.kind.name().to_owned(), m.labels.join(","))).collect();
        assert_eq!(documented, code, "docs/metrics.md and metrics::ALL differ");
    }
}
