//! The engine's components beyond the query pipeline: sources and sinks, the error store,
//! tables, … . One registration names each (`component_register`: its id, kind, variant and the
//! stream or query it belongs to); two generic probes carry its series: `component_count`
//! (amounts) and `component_gauge` (values), each hit naming a [`ComponentCounter`] or
//! [`ComponentGauge`] and a `label` code.
//!
//! The model: **one code is one exported metric family.** A counter or gauge code belongs to
//! one component kind and its label is the family's name, so adding a metric to the ABI is one
//! line here (and the observer's help text and label, which a test holds to this list). The
//! `label` argument is a second dimension some families have (a table's operation, a sink's
//! failure kind); each family says which enumeration decodes it, 0 when it has none. Generic
//! probes rather than one probe per family: the probe list stays short for tools, a kernel
//! program serves every family, and the engine's cost is the same (a counter series is one
//! handle however it is keyed).

/// The `stream_id` or `query_id` of a component that belongs to no stream or query.
pub const NONE: u32 = u32::MAX;

code_enum! {
    /// What a registered component is.
    ComponentKind {
        /// A source: reads from a connector, maps input into events of one stream.
        Source = 0 => "source",
        /// A sink: maps one stream's events and publishes them through a connector.
        Sink = 1 => "sink",
        /// The error store: events that failed mapping or delivery, kept for replay.
        ErrorStore = 2 => "error_store",
        /// A table: rows that queries insert, update, delete, upsert and look up.
        Table = 3 => "table",
        /// A query's window (its `variant` a WindowKind): the events it holds, adds, expires.
        Window = 4 => "window",
        /// The app's persistence (its `variant` a StoreKind): snapshots of its state, and the
        /// restore at start.
        Persistence = 5 => "persistence",
        /// A stream junction (its `variant` a JunctionKind): hands a stream's events to its
        /// subscribers, and in async mode may refuse them.
        Junction = 6 => "junction",
        /// A stream–stream join: each side's events probe the other side's window.
        Join = 7 => "join",
        /// A pattern (or sequence): partial matches wait for their next event, `within` a time.
        Pattern = 8 => "pattern",
        /// A partitioned query: one instance of its processors per partition key.
        Partition = 9 => "partition",
        /// A trigger: fires events into a stream on a schedule.
        Trigger = 10 => "trigger",
        /// An incremental aggregation: running aggregates per time bucket of each Duration.
        Aggregation = 11 => "aggregation",
        /// A transport between nodes (its `variant` a Connector): messages to and from peers.
        Transport = 12 => "transport",
    }
}

code_enum! {
    /// The connector of a source or sink (its `variant`; a window's is its WindowKind, a
    /// table's its TableKind).
    Connector {
        /// Events made by a timer.
        Timer = 0 => "timer",
        /// A file, read or written line by line.
        File = 1 => "file",
        /// HTTP: polled, a webhook, or requests sent.
        Http = 2 => "http",
        /// Kafka topics.
        Kafka = 3 => "kafka",
        /// RabbitMQ queues or exchanges.
        RabbitMq = 4 => "rabbitmq",
        /// WebSocket.
        WebSocket = 5 => "websocket",
        /// Plain TCP.
        Tcp = 6 => "tcp",
        /// gRPC.
        Grpc = 7 => "grpc",
        /// The log (a sink).
        Log = 8 => "log",
        /// In-process, no transport.
        InMemory = 9 => "inmemory",
    }
}

code_enum! {
    /// The kind of a table (its `variant`).
    TableKind {
        /// Rows in memory, unbounded.
        InMemory = 0 => "in_memory",
        /// A bounded cache in front of a store: evicts.
        Cache = 1 => "cache",
        /// Rows in a database over JDBC-like access.
        Jdbc = 2 => "jdbc",
    }
}

code_enum! {
    /// Where persistence keeps snapshots (its `variant`).
    StoreKind {
        /// In the engine's memory (lost with the process).
        InMemory = 0 => "in_memory",
        /// Files in a directory.
        File = 1 => "file",
        /// An SQLite database.
        Sqlite = 2 => "sqlite",
        /// Redis.
        Redis = 3 => "redis",
    }
}

code_enum! {
    /// A side of a join (`label` of the join families).
    JoinSide {
        /// The left (first) stream.
        Left = 0 => "left",
        /// The right (second) stream.
        Right = 1 => "right",
    }
}

code_enum! {
    /// A bucket duration of an incremental aggregation (`label` of its families).
    Duration {
        /// Per second.
        Second = 0 => "second",
        /// Per minute.
        Minute = 1 => "minute",
        /// Per hour.
        Hour = 2 => "hour",
        /// Per day.
        Day = 3 => "day",
        /// Per month.
        Month = 4 => "month",
        /// Per year.
        Year = 5 => "year",
    }
}

code_enum! {
    /// Which way a message went (`label` of the transport families).
    Direction {
        /// Sent to a peer.
        Sent = 0 => "sent",
        /// Received from a peer.
        Received = 1 => "received",
    }
}

code_enum! {
    /// How an operation ended (`label` of the persistence counters).
    Outcome {
        /// It succeeded.
        Success = 0 => "success",
        /// It failed.
        Failure = 1 => "failure",
    }
}

code_enum! {
    /// What a source's error handler did with input it could not map (`label` of
    /// `source_mapping_errors_total`).
    ErrorAction {
        /// Logged and dropped.
        Log = 0 => "log",
        /// Tried again.
        Retry = 1 => "retry",
        /// Dropped silently.
        Drop = 2 => "drop",
        /// Sent to the error store.
        Store = 3 => "error_store",
        /// Failed the source (it stopped).
        Fail = 4 => "fail",
    }
}

code_enum! {
    /// Why a sink could not publish (`label` of `sink_failures_total`).
    DeliveryError {
        /// Anything not listed below.
        Unknown = 0 => "unknown",
        /// The output mapper could not format the event.
        Mapping = 1 => "mapping",
        /// The connection was down.
        Connection = 2 => "connection",
        /// No answer in time.
        Timeout = 3 => "timeout",
        /// The other end refused the event.
        Rejected = 4 => "rejected",
    }
}

code_enum! {
    /// Where an event in the error store comes from (`label` of `error_store_events_total`).
    ErrorOrigin {
        /// A source's mapper could not map it.
        SourceMapping = 0 => "source_mapping",
        /// A sink could not deliver it.
        SinkDelivery = 1 => "sink_delivery",
        /// A junction refused it (its subscribers' queue stayed full).
        Junction = 2 => "junction",
    }
}

code_enum! {
    /// An operation on a table (`label` of `table_operations_total` and its failures).
    TableOp {
        /// Rows inserted.
        Insert = 0 => "insert",
        /// Rows updated.
        Update = 1 => "update",
        /// Rows deleted.
        Delete = 2 => "delete",
        /// Rows upserted (updated, or inserted when absent).
        Upsert = 3 => "upsert",
    }
}

code_enum! {
    /// The result of a table lookup (`label` of `table_lookups_total`).
    LookupResult {
        /// A row matched.
        Hit = 0 => "hit",
        /// No row matched.
        Miss = 1 => "miss",
    }
}

code_enum! {
    /// Component counters, fired through `component_count`: each is one exported counter family
    /// (its label here is the family's name) of components of one kind.
    ComponentCounter {
        /// Source: events read and mapped into its stream.
        SourceEvents = 0 => "source_events_total",
        /// Source: bytes read from the connector.
        SourceBytes = 1 => "source_bytes_total",
        /// Source: inputs its mapper could not map; `label` an ErrorAction (what was done).
        SourceMappingErrors = 2 => "source_mapping_errors_total",
        /// Source: times it reconnected to its connector.
        SourceReconnects = 3 => "source_reconnects_total",
        /// Sink: events published.
        SinkEvents = 4 => "sink_events_total",
        /// Sink: bytes published.
        SinkBytes = 5 => "sink_bytes_total",
        /// Sink: events it could not publish; `label` a DeliveryError.
        SinkFailures = 6 => "sink_failures_total",
        /// Sink: publish attempts repeated after a failure.
        SinkRetries = 7 => "sink_retries_total",
        /// Error store: events added; `label` an ErrorOrigin.
        ErrorStoreEvents = 8 => "error_store_events_total",
        /// Error store: events it could not keep (full).
        ErrorStoreDropped = 9 => "error_store_dropped_total",
        /// Table: rows written by operation; `label` a TableOp.
        TableOperations = 10 => "table_operations_total",
        /// Table: operations that failed; `label` a TableOp.
        TableOperationFailures = 11 => "table_operation_failures_total",
        /// Table: lookups from streams; `label` a LookupResult.
        TableLookups = 12 => "table_lookups_total",
        /// Table: rows a bounded (cache) table evicted.
        TableEvictions = 13 => "table_evictions_total",
        /// Window: events added.
        WindowEvents = 14 => "window_events_total",
        /// Window: events that left it (expired, evicted, or flushed by a batch window).
        WindowExpired = 15 => "window_expired_events_total",
        /// Window: times a batch window emitted (tumbled).
        WindowFlushes = 16 => "window_flushes_total",
        /// Persistence: snapshots taken; `label` an Outcome.
        PersistenceSnapshots = 17 => "persistence_snapshots_total",
        /// Persistence: bytes of the snapshots written.
        PersistenceSnapshotBytes = 18 => "persistence_snapshot_bytes_total",
        /// Persistence: restores from a snapshot; `label` an Outcome.
        PersistenceRestores = 19 => "persistence_restores_total",
        /// Junction: events it refused (dropped) because its subscribers' queue stayed full
        /// through its back-off.
        JunctionDropped = 20 => "junction_events_dropped_total",
        /// Join: events that arrived on a side; `label` a JoinSide.
        JoinEvents = 21 => "join_events_total",
        /// Join: matches (joined rows) produced.
        JoinMatches = 22 => "join_matches_total",
        /// Join: events that left a side's window; `label` a JoinSide.
        JoinExpired = 23 => "join_expired_events_total",
        /// Pattern: partial matches started (a first state matched).
        PatternStarted = 24 => "pattern_partial_matches_started_total",
        /// Pattern: complete matches.
        PatternMatches = 25 => "pattern_matches_total",
        /// Pattern: partial matches dropped because their `within` ran out.
        PatternExpired = 26 => "pattern_partial_matches_expired_total",
        /// Partition: events routed to its instances.
        PartitionEvents = 27 => "partition_events_total",
        /// Partition: instances created (a key seen for the first time, or again after a purge).
        PartitionCreated = 28 => "partition_instances_created_total",
        /// Partition: idle instances purged.
        PartitionPurged = 29 => "partition_instances_purged_total",
        /// Trigger: times it fired.
        TriggerFires = 30 => "trigger_fires_total",
        /// Aggregation: events aggregated.
        AggregationEvents = 31 => "aggregation_events_total",
        /// Aggregation: buckets purged past their retention; `label` a Duration.
        AggregationPurged = 32 => "aggregation_buckets_purged_total",
        /// Transport: messages (chunks) to or from peers; `label` a Direction.
        TransportMessages = 33 => "transport_messages_total",
        /// Transport: bytes to or from peers; `label` a Direction.
        TransportBytes = 34 => "transport_bytes_total",
        /// Transport: sends or receives that failed.
        TransportErrors = 35 => "transport_errors_total",
    }
}

code_enum! {
    /// Component gauges, fired through `component_gauge`: each is one exported gauge family of
    /// components of one kind; `label` its second dimension where it has one (see
    /// `ComponentGauge::dimension`), else 0.
    ComponentGauge {
        /// Source: 1 while connected to its connector, else 0.
        SourceConnected = 0 => "source_connected",
        /// Sink: 1 while connected to its connector, else 0.
        SinkConnected = 1 => "sink_connected",
        /// Error store: events it holds.
        ErrorStoreSize = 2 => "error_store_size_events",
        /// Error store: events it can hold (absent: unbounded).
        ErrorStoreCapacity = 3 => "error_store_capacity_events",
        /// Table: rows it holds.
        TableRows = 4 => "table_rows",
        /// Table: bytes its rows take.
        TableBytes = 5 => "table_size_bytes",
        /// Window: events it holds.
        WindowSize = 6 => "window_size_events",
        /// Persistence: bytes of the last snapshot written.
        PersistenceLastSnapshotBytes = 7 => "persistence_last_snapshot_size_bytes",
        /// Persistence: when the last snapshot succeeded, Unix seconds.
        PersistenceLastSnapshotTime = 8 => "persistence_last_snapshot_timestamp_seconds",
        /// Join: events a side's window holds; `label` a JoinSide.
        JoinState = 9 => "join_state_events",
        /// Pattern: partial matches alive, waiting for their next event.
        PatternPartialMatches = 10 => "pattern_partial_matches",
        /// Partition: instances alive.
        PartitionInstances = 11 => "partition_instances",
        /// Aggregation: buckets held; `label` a Duration.
        AggregationBuckets = 12 => "aggregation_buckets",
        /// Transport: peers connected now.
        TransportPeers = 13 => "transport_peers_connected",
        /// Source: events it is behind its input (a Kafka consumer's lag; a paced source's
        /// events due but not yet read).
        SourceLag = 14 => "source_lag_events",
        /// Junction: chunks queued for its subscribers.
        JunctionQueueDepth = 15 => "junction_queue_chunks",
        /// Junction: chunks its queue holds at most.
        JunctionQueueCapacity = 16 => "junction_queue_capacity_chunks",
    }
}

code_enum! {
    /// Component operations the engine times, fired through `component_sample` (each a
    /// histogram family, its label here the family's name): rare ones (a snapshot, a restore)
    /// are timed every time.
    ComponentOp {
        /// Persistence: taking and writing one snapshot.
        Snapshot = 0 => "persistence_snapshot_duration_seconds",
        /// Persistence: reading and applying a snapshot.
        Restore = 1 => "persistence_restore_duration_seconds",
        /// A stream–stream join: probing the other side's window with a chunk.
        JoinProbe = 2 => "join_probe_duration_seconds",
        /// A table: looking a chunk's keys up (a stream–table join, an `in` condition).
        TableLookup = 3 => "table_lookup_duration_seconds",
        /// A pattern or sequence: one chunk through its state processors.
        PatternStep = 4 => "pattern_step_duration_seconds",
        /// A sink: mapping and publishing a chunk of rows.
        SinkPublish = 5 => "sink_publish_duration_seconds",
    }
}

/// A family's second dimension: the name of its label and how a `label` code reads.
#[derive(Debug, Clone, Copy)]
pub struct Dimension {
    /// The label's name in the exported family.
    pub name: &'static str,
    /// The label's value for a code; `None` for a code this build does not know.
    pub decode: fn(u32) -> Option<&'static str>,
}

macro_rules! dimension {
    ($name:literal, $codes:ident) => {
        Some(Dimension { name: $name, decode: |code| $codes::from_code(code).map($codes::label) })
    };
}

impl ComponentCounter {
    /// The family's second dimension, `None` when its `label` is always 0.
    pub fn dimension(self) -> Option<Dimension> {
        use ComponentCounter::*;
        match self {
            SourceMappingErrors => dimension!("action", ErrorAction),
            SinkFailures => dimension!("error_type", DeliveryError),
            ErrorStoreEvents => dimension!("origin", ErrorOrigin),
            TableOperations | TableOperationFailures => dimension!("op", TableOp),
            TableLookups => dimension!("result", LookupResult),
            PersistenceSnapshots | PersistenceRestores => dimension!("result", Outcome),
            JoinEvents | JoinExpired => dimension!("side", JoinSide),
            AggregationPurged => dimension!("duration", Duration),
            TransportMessages | TransportBytes => dimension!("direction", Direction),
            SourceEvents
            | SourceBytes
            | SourceReconnects
            | SinkEvents
            | SinkBytes
            | SinkRetries
            | ErrorStoreDropped
            | TableEvictions
            | WindowEvents
            | WindowExpired
            | WindowFlushes
            | PersistenceSnapshotBytes
            | JunctionDropped
            | JoinMatches
            | PatternStarted
            | PatternMatches
            | PatternExpired
            | PartitionEvents
            | PartitionCreated
            | PartitionPurged
            | TriggerFires
            | AggregationEvents
            | TransportErrors => None,
        }
    }

    /// The kind of component that has this counter.
    pub const fn kind(self) -> ComponentKind {
        use ComponentCounter::*;
        match self {
            SourceEvents | SourceBytes | SourceMappingErrors | SourceReconnects => ComponentKind::Source,
            SinkEvents | SinkBytes | SinkFailures | SinkRetries => ComponentKind::Sink,
            ErrorStoreEvents | ErrorStoreDropped => ComponentKind::ErrorStore,
            TableOperations | TableOperationFailures | TableLookups | TableEvictions => ComponentKind::Table,
            WindowEvents | WindowExpired | WindowFlushes => ComponentKind::Window,
            PersistenceSnapshots | PersistenceSnapshotBytes | PersistenceRestores => ComponentKind::Persistence,
            JunctionDropped => ComponentKind::Junction,
            JoinEvents | JoinMatches | JoinExpired => ComponentKind::Join,
            PatternStarted | PatternMatches | PatternExpired => ComponentKind::Pattern,
            PartitionEvents | PartitionCreated | PartitionPurged => ComponentKind::Partition,
            TriggerFires => ComponentKind::Trigger,
            AggregationEvents | AggregationPurged => ComponentKind::Aggregation,
            TransportMessages | TransportBytes | TransportErrors => ComponentKind::Transport,
        }
    }
}

impl ComponentGauge {
    /// The family's second dimension, `None` when its `label` is always 0.
    pub fn dimension(self) -> Option<Dimension> {
        match self {
            ComponentGauge::JoinState => dimension!("side", JoinSide),
            ComponentGauge::AggregationBuckets => dimension!("duration", Duration),
            _ => None,
        }
    }

    /// The kind of component that has this gauge.
    pub const fn kind(self) -> ComponentKind {
        use ComponentGauge::*;
        match self {
            SourceConnected => ComponentKind::Source,
            SinkConnected => ComponentKind::Sink,
            ErrorStoreSize | ErrorStoreCapacity => ComponentKind::ErrorStore,
            TableRows | TableBytes => ComponentKind::Table,
            WindowSize => ComponentKind::Window,
            PersistenceLastSnapshotBytes | PersistenceLastSnapshotTime => ComponentKind::Persistence,
            JoinState => ComponentKind::Join,
            PatternPartialMatches => ComponentKind::Pattern,
            PartitionInstances => ComponentKind::Partition,
            AggregationBuckets => ComponentKind::Aggregation,
            TransportPeers => ComponentKind::Transport,
            SourceLag => ComponentKind::Source,
            JunctionQueueDepth | JunctionQueueCapacity => ComponentKind::Junction,
        }
    }
}

impl ComponentOp {
    /// The kind of component that has this operation.
    pub const fn kind(self) -> ComponentKind {
        match self {
            ComponentOp::Snapshot | ComponentOp::Restore => ComponentKind::Persistence,
            ComponentOp::JoinProbe => ComponentKind::Join,
            ComponentOp::TableLookup => ComponentKind::Table,
            ComponentOp::PatternStep => ComponentKind::Pattern,
            ComponentOp::SinkPublish => ComponentKind::Sink,
        }
    }

    /// Its name as a span and a CPU stage (`join_probe`).
    pub const fn span_name(self) -> &'static str {
        match self {
            ComponentOp::Snapshot => "snapshot",
            ComponentOp::Restore => "restore",
            ComponentOp::JoinProbe => "join_probe",
            ComponentOp::TableLookup => "table_lookup",
            ComponentOp::PatternStep => "pattern_step",
            ComponentOp::SinkPublish => "sink_publish",
        }
    }

    /// An operation that runs per chunk: timed only inside batches sampled for their stages
    /// (and then a span of their trees), not every time.
    pub const fn frequent(self) -> bool {
        !matches!(self, ComponentOp::Snapshot | ComponentOp::Restore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A family's name starts with its kind's (`source_…`, `table_…`), and counters end in
    /// `_total`: the names an operator greps for.
    #[test]
    fn family_names_follow_their_kind() {
        for c in ComponentCounter::ALL {
            assert!(c.label().starts_with(c.kind().label()), "{}", c.label());
            assert!(c.label().ends_with("_total"), "{}", c.label());
        }
        for g in ComponentGauge::ALL {
            assert!(g.label().starts_with(g.kind().label()), "{}", g.label());
            assert!(!g.label().ends_with("_total"), "{}", g.label());
        }
        for o in ComponentOp::ALL {
            assert!(o.label().starts_with(o.kind().label()), "{}", o.label());
            assert!(o.label().ends_with("_seconds"), "{}", o.label());
        }
    }
}
