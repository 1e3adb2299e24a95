//! The codes that probe arguments carry for enumerations (a stream's role, a query's window, an
//! error's kind, a stage, …): one declaration gives each value its code and its metric label.

macro_rules! code_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal => $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $code,)*
        }

        impl $name {
            /// The enumeration's name, as docs/probes.md's "Codes" lists it.
            pub const NAME: &'static str = stringify!($name);

            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The code carried in probe arguments.
            pub const fn code(self) -> u32 {
                self as u32
            }

            /// The label exported in metrics.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }

            /// Decodes a probe argument; unknown codes come from a newer engine.
            pub fn from_code(code: u32) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

code_enum! {
    /// Role of a stream: fed from sources, or written by queries (`insert into`).
    StreamRole {
        /// Fed by sources; its events arrive through `ingest`.
        Input = 0 => "input",
        /// Written by queries; its events arrive through `emitted`.
        Output = 1 => "output",
    }
}

code_enum! {
    /// How a stream junction hands chunks to its subscribers.
    JunctionKind {
        /// Subscribers run on the sender's thread, inside its call.
        Sync = 0 => "sync",
        /// A bounded queue per subscriber, drained by a worker thread.
        Async = 1 => "async",
    }
}

code_enum! {
    /// Window processor of a query.
    WindowKind {
        /// No window: the query filters and projects only.
        None = 0 => "none",
        /// Sliding window over the last N events.
        Length = 1 => "length",
        /// Tumbling window emitting every N events.
        LengthBatch = 2 => "length_batch",
        /// Sliding window over the last T milliseconds of event time.
        Time = 3 => "time",
        /// Tumbling window emitting every T milliseconds of event time.
        TimeBatch = 4 => "time_batch",
        /// Sliding window over an event attribute's time.
        ExternalTime = 5 => "external_time",
        /// Tumbling window over an event attribute's time.
        ExternalTimeBatch = 6 => "external_time_batch",
        /// Events of a key until a gap of inactivity.
        Session = 7 => "session",
        /// The N events first by a sort order.
        Sort = 8 => "sort",
        /// Events while an expression over the window holds.
        Expression = 9 => "expression",
        /// Tumbling window on a cron schedule.
        Cron = 10 => "cron",
        /// Events held back for a time, then released.
        Delay = 11 => "delay",
        /// The latest event per key.
        Unique = 12 => "unique",
        /// The first event per key.
        FirstUnique = 13 => "first_unique",
        /// The most frequent keys.
        Frequent = 14 => "frequent",
        /// Keys above a frequency, approximately.
        LossyFrequent = 15 => "lossy_frequent",
    }
}

code_enum! {
    /// Kind of a query execution error.
    ErrorKind {
        /// Anything not listed below.
        Unknown = 0 => "unknown",
        /// Evaluating an expression failed (division by zero, overflow, type mismatch).
        Expression = 1 => "expression",
        /// A window processor rejected an event (out-of-order timestamp).
        Window = 2 => "window",
        /// An aggregation failed.
        Aggregation = 3 => "aggregation",
        /// Handing output to a stream or sink failed.
        Emit = 4 => "emit",
    }
}

code_enum! {
    /// Protocol of a source or sink connection.
    Protocol {
        /// Plain TCP.
        Tcp = 0 => "tcp",
        /// gRPC.
        Grpc = 1 => "grpc",
        /// HTTP.
        Http = 2 => "http",
        /// Kafka.
        Kafka = 3 => "kafka",
    }
}

code_enum! {
    /// Kind of a connection failure.
    ConnErrorKind {
        /// Connection refused or unreachable.
        Refused = 0 => "refused",
        /// Timed out.
        Timeout = 1 => "timeout",
        /// Reset by the peer.
        Reset = 2 => "reset",
        /// Protocol violation.
        Protocol = 3 => "protocol",
    }
}

code_enum! {
    /// A stage of a query batch, in `stage_sample`.
    Stage {
        /// The hand-off from the stream junction: the time the chunk waited in an async
        /// junction's queue (sync junctions call the query directly and have none).
        Ingest = 0 => "ingest",
        /// The filter, with the stages it called excluded.
        Filter = 1 => "filter",
        /// The window processor.
        Window = 2 => "window",
        /// The aggregation.
        Aggregate = 3 => "aggregate",
        /// Inserting the result rows into the output stream.
        Emit = 4 => "emit",
    }
}
