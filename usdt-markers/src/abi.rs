//! The probe ABI as data: what observers may rely on.
//!
//! `docs/probes.md` is the human-readable copy; a test compares it with [`crate::PROBES`] and
//! with the notes in a built binary. Changing an existing probe's arguments is a breaking change:
//! bump [`ABI_VERSION`], and add a new probe name rather than reorder arguments.

/// SDT provider of every probe in this crate.
pub const PROVIDER: &str = "eventflux";

/// Version of the probe ABI described in `docs/probes.md`.
pub const ABI_VERSION: u32 = 1;

/// How an argument is passed, as it appears in the note's argument spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// `u32`, spec `4@%e..`: ids and enum codes.
    U32,
    /// `u64`, spec `8@%r..`: counts, bytes, nanoseconds.
    U64,
    /// Pointer to a NUL-terminated UTF-8 string, spec `8@%r..`; read it with `str(argN)`.
    Str,
}

impl ArgKind {
    /// The name used in `docs/probes.md`.
    pub const fn name(self) -> &'static str {
        match self {
            ArgKind::U32 => "u32",
            ArgKind::U64 => "u64",
            ArgKind::Str => "str",
        }
    }

    /// Signed size as written before `@` in the argument spec (`4`, `8`).
    pub const fn spec_size(self) -> i8 {
        match self {
            ArgKind::U32 => 4,
            ArgKind::U64 | ArgKind::Str => 8,
        }
    }
}

/// One probe argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgDef {
    /// Argument name (documentation only; tools address arguments by position).
    pub name: &'static str,
    /// Type and width.
    pub kind: ArgKind,
}

/// One probe of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeDef {
    /// Probe name under provider [`PROVIDER`].
    pub name: &'static str,
    /// Arguments in order: `arg0`, `arg1`, ….
    pub args: &'static [ArgDef],
}

macro_rules! code_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal => $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $code,)*
        }

        impl $name {
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
        /// Written by queries; its events arrive through `emit_end`.
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
