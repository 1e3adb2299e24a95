//! The `eventflux` USDT probe ABI, written once.
//!
//! [`for_each_probe!`] holds the one table of probes: name, class, arguments in order. Everything
//! else is generated from it or checked against it:
//! - `usdt-markers` (the engine side) generates a semaphore, a site and the engine-facing API
//!   of each probe from it;
//! - this crate generates [`PROBES`] (the table as data) and, per probe, a module in [`probe`]
//!   with its id, an `Arg` enum giving each argument's position and an `Args` struct that reads
//!   them all by name: the kernel programs (eventflux-probe-ebpf) read arguments only through
//!   it, so renaming an argument fails to compile there and reordering one moves every reader;
//! - `docs/probes.md` is checked against [`PROBES`] and against a built binary's notes by tests.
//!
//! The model (ABI version 2): an attached observer must cost the engine a bounded amount per
//! second, not per event. So the engine never fires a probe per chunk of events:
//! - **count** probes carry amounts accumulated in the engine since the previous hit of the
//!   same series (same key arguments); the engine fires them at most once per flush interval,
//!   and when a query stops or the process exits. Summing them gives exact totals.
//! - **gauge** probes carry the latest value of a series, fired at most once per flush interval
//!   when it changed (and to every newly attached observer).
//! - **sample** probes describe one sampled batch, fired after the batch ended so that the
//!   traps they cost are never inside a measured span; the engine samples at a rate per thread
//!   and second, not 1 in N.
//! - **control** probes never fire. An observer attaches to one to choose the sampling rate or
//!   the flush interval: the kernel raises the probe's semaphore, and the engine reads the
//!   semaphores as levels (the most demanding level any observer raised wins). Nobody writes
//!   into the engine's memory.
//! - **register** probes carry names, fired once per definition and replayed to late observers;
//!   `cpu_slot` likewise carries each engine thread's CPU slot address, announced again to each
//!   new generation of observers (see [`slot`]).
//!
//! `#![no_std]`: the kernel programs build this crate for `bpfel-unknown-none`.

#![no_std]
#![warn(missing_docs)]

/// SDT provider of every probe.
pub const PROVIDER: &str = "eventflux";

/// Version of the probe ABI described in `docs/probes.md`.
pub const ABI_VERSION: u32 = 2;

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

/// What a probe is for, and so how the engine fires it (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Names: once per definition, replayed to late observers.
    Register,
    /// Amounts since the previous hit of the series, at most once per flush interval.
    Count,
    /// Latest value of the series, at most once per flush interval.
    Gauge,
    /// One record of a sampled batch, after the batch ended.
    Sample,
    /// Never fires; attaching to it sets a level the engine reads from its semaphore.
    Control,
}

impl Class {
    /// The name used in `docs/probes.md`.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Register => "register",
            Class::Count => "count",
            Class::Gauge => "gauge",
            Class::Sample => "sample",
            Class::Control => "control",
        }
    }
}

/// One probe argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgDef {
    /// Argument name (tools address arguments by position; this crate by name).
    pub name: &'static str,
    /// Type and width.
    pub kind: ArgKind,
}

/// One probe of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeDef {
    /// Probe name under provider [`PROVIDER`].
    pub name: &'static str,
    /// How it fires.
    pub class: Class,
    /// Arguments in order: `arg0`, `arg1`, ….
    pub args: &'static [ArgDef],
    /// For count and gauge probes: the first `keys` arguments name the series, the rest are
    /// its amounts or values.
    pub keys: usize,
}

/// The probe table. Calls `$callback! { … }` with one entry per probe, in ABI order:
/// `class name(key: type, …; value: type, …);` with its doc comment. For count and gauge
/// probes the arguments before `;` name the series and those after are summed (count) or
/// replaced (gauge); other classes list every argument before the `;`.
#[macro_export]
macro_rules! for_each_probe {
    ($callback:ident) => {
        $callback! {
            /// A stream was defined; fired once, and replayed whenever the set of observers
            /// attached to the registration probes changes. `role` is a StreamRole, `junction`
            /// a JunctionKind, `capacity` the async queue capacity in chunks (0 when sync).
            register stream_register(stream_id: u32, name: str, role: u32, junction: u32, capacity: u64;);
            /// A query was started (and replayed like `stream_register`). `window_kind` is a
            /// WindowKind, `window_size` in events, or milliseconds for time windows.
            register query_register(
                query_id: u32,
                name: str,
                input_stream_id: u32,
                output_stream_id: u32,
                window_kind: u32,
                window_size: u64;
            );
            /// A query was stopped, after its last counts were flushed.
            register query_unregister(query_id: u32;);
            /// While a tool is attached here, every engine thread keeps what it is executing in
            /// a thread-local 8-byte slot (see [`slot`](crate::slot): query and stage, 0
            /// outside any query) and announces the slot's `address` through this probe, from
            /// the thread itself: at its first batch once the tool's attach settled, again for
            /// each change of the attached tools, and with address 0 when the thread exits. A
            /// sampling profiler reads the slot of the thread it interrupted (CPU attribution).
            register cpu_slot(address: u64;);
            /// Events sources delivered to an input stream's junction.
            count ingest(stream_id: u32; events: u64);
            /// Events a junction handed to one subscribing query (called it, or queued it).
            count junction_send(stream_id: u32, query_id: u32; events: u64);
            /// Events that entered a query, and the query batches (chunks) they came in.
            count query_events(query_id: u32, stream_id: u32; events: u64, batches: u64);
            /// Rows a query inserted into its output stream.
            count emitted(query_id: u32, stream_id: u32; events: u64);
            /// Events a query failed to process; `kind` is an ErrorKind.
            count error(query_id: u32, kind: u32; count: u64);
            /// Times a producer found a subscriber's queue full and had to wait.
            count backpressure(stream_id: u32, query_id: u32; count: u64);
            /// Connections established; `protocol` is a Protocol.
            count conn_open(protocol: u32; count: u64);
            /// Connections closed.
            count conn_close(protocol: u32; count: u64);
            /// Connection attempts or connections that failed; `kind` is a ConnErrorKind.
            count conn_error(protocol: u32, kind: u32; count: u64);
            /// Span records of sampled batches the engine could not keep (nesting deeper than
            /// its per-thread buffer).
            count spans_dropped(; count: u64);
            /// Batches whose upstream sampled their trace (W3C `traceparent` flags) that the
            /// engine did not trace, because this thread had already traced as many such
            /// batches this second as the sampling level allows: the bound that keeps a sender
            /// from setting the engine's cost. Their context is handed on unchanged.
            count traces_declined(; count: u64);
            /// Bytes a query's window holds.
            gauge window_state(query_id: u32; bytes: u64);
            /// Live group-by keys of a query's aggregation.
            gauge aggregate_groups(query_id: u32; groups: u64);
            /// Connections open now; `protocol` is a Protocol. A gauge the engine holds (and
            /// replays to new observers), so an observer that attaches after the sources
            /// connected sees them: `conn_open` and `conn_close` count only what happens after.
            gauge conn_active(protocol: u32; connections: u64);
            /// An async junction's queue for one subscriber: chunks queued, capacity in chunks,
            /// bytes queued, and nanoseconds the most recently dequeued chunk waited.
            gauge queue_state(stream_id: u32, query_id: u32; depth: u64, capacity: u64, bytes: u64, wait_ns: u64);
            /// One stage of a sampled batch: `stage` is a Stage, `self_ns` its time without the
            /// stages it called, `total_ns` with them, `start_ns` its start on CLOCK_MONOTONIC.
            /// Fired only while a tool is attached to it (for span trees); the stages' self
            /// times are in `batch_sample` too. `span_id` is the id the engine gave the span
            /// when it forwarded a trace context from inside it (`trace_context`), else 0.
            sample stage_sample(
                query_id: u32,
                stage: u32,
                events_in: u64,
                events_out: u64,
                self_ns: u64,
                total_ns: u64,
                start_ns: u64,
                span_id: u64;
            );
            /// The W3C trace context of a traced batch (one sampled for its stages while a tool
            /// is attached to this probe), fired after its stage records and just before its
            /// `batch_sample`: the 128-bit trace id in two halves, the id of the batch's root
            /// span, the parent span id (the span of the upstream node that forwarded the
            /// events, 0 when the batch starts a trace) and the trace flags.
            sample trace_context(
                query_id: u32,
                trace_id_high: u64,
                trace_id_low: u64,
                span_id: u64,
                parent_span_id: u64,
                flags: u32;
            );
            /// A sampled query batch, fired after its stages' records: the query's latency for
            /// one chunk, every stage included, `start_ns` on CLOCK_MONOTONIC, and the self time
            /// of each Stage in it (summed when a stage ran twice; 0 when it did not run or was
            /// not timed). `latency_clean` is 1 when `latency_ns` was measured without timing
            /// the stages inside it (every other sampled batch; and every batch when every batch
            /// is sampled), 0 when the batch was sampled for its stages. One hit gives
            /// everything latency metrics need.
            sample batch_sample(
                query_id: u32,
                stream_id: u32,
                latency_ns: u64,
                latency_clean: u64,
                events_in: u64,
                ingest_ns: u64,
                filter_ns: u64,
                window_ns: u64,
                aggregate_ns: u64,
                emit_ns: u64,
                events_out: u64,
                start_ns: u64;
            );
            /// Sample at most 16 batches per second per engine thread.
            control ctl_samples_16(;);
            /// At most 64 sampled batches per second per engine thread.
            control ctl_samples_64(;);
            /// At most 256 sampled batches per second per engine thread.
            control ctl_samples_256(;);
            /// At most 1024 sampled batches per second per engine thread.
            control ctl_samples_1024(;);
            /// At most 4096 sampled batches per second per engine thread.
            control ctl_samples_4096(;);
            /// At most 16384 sampled batches per second per engine thread.
            control ctl_samples_16384(;);
            /// Sample every batch (a deep dive: every batch pays its sample probes' traps).
            control ctl_samples_all(;);
            /// Flush counts and gauges every 2 s.
            control ctl_flush_2000ms(;);
            /// Flush every second.
            control ctl_flush_1000ms(;);
            /// Flush every 500 ms.
            control ctl_flush_500ms(;);
            /// Flush every 250 ms.
            control ctl_flush_250ms(;);
            /// Flush every 100 ms.
            control ctl_flush_100ms(;);
            /// Flush every 50 ms.
            control ctl_flush_50ms(;);
            /// Flush every 20 ms.
            control ctl_flush_20ms(;);
            /// Flush every 10 ms.
            control ctl_flush_10ms(;);
        }
    };
}

/// The Rust type an argument of ABI type `$t` has in [`probe`]'s `Args` structs.
#[doc(hidden)]
#[macro_export]
macro_rules! __abi_arg_type {
    (u32) => {
        u32
    };
    (u64) => {
        u64
    };
    // The pointer value; only the engine's side dereferences it.
    (str) => {
        u64
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __abi_arg_kind {
    (u32) => {
        $crate::ArgKind::U32
    };
    (u64) => {
        $crate::ArgKind::U64
    };
    (str) => {
        $crate::ArgKind::Str
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __abi_class {
    (register) => {
        $crate::Class::Register
    };
    (count) => {
        $crate::Class::Count
    };
    (gauge) => {
        $crate::Class::Gauge
    };
    (sample) => {
        $crate::Class::Sample
    };
    (control) => {
        $crate::Class::Control
    };
}

macro_rules! abi_items {
    ($(
        $(#[$doc:meta])*
        $class:ident $name:ident ( $($key:ident : $kty:ident),* ; $($val:ident : $vty:ident),* $(,)? );
    )*) => {
        /// One module per probe: its id, the position of each argument, and its arguments by
        /// name.
        pub mod probe {
            #[allow(non_camel_case_types, dead_code)]
            #[repr(u32)]
            enum Ids { $($name,)* }

            $(
                $(#[$doc])*
                #[allow(non_snake_case)]
                pub mod $name {
                    /// Probe name.
                    pub const NAME: &str = stringify!($name);
                    /// Index in [`crate::PROBES`]; the kernel program of this probe has this id.
                    pub const ID: u32 = super::Ids::$name as u32;
                    /// How it fires.
                    pub const CLASS: $crate::Class = $crate::__abi_class!($class);

                    /// Each argument's position (`argN` in bpftrace).
                    #[allow(non_camel_case_types, dead_code, missing_docs)]
                    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
                    pub enum Arg { $($key,)* $($val,)* }

                    /// The arguments of one hit, by name.
                    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
                    #[allow(missing_docs)]
                    pub struct Args { $(pub $key: $crate::__abi_arg_type!($kty),)* $(pub $val: $crate::__abi_arg_type!($vty),)* }

                    impl Args {
                        /// Reads every argument through `arg(position)`, each truncated to its type.
                        #[inline(always)]
                        #[allow(unused_variables, unused_mut, clippy::unnecessary_cast)]
                        pub fn read(mut arg: impl FnMut(usize) -> u64) -> Args {
                            Args {
                                $($key: arg(Arg::$key as usize) as $crate::__abi_arg_type!($kty),)*
                                $($val: arg(Arg::$val as usize) as $crate::__abi_arg_type!($vty),)*
                            }
                        }
                    }
                }
            )*

            /// Number of probes.
            pub const COUNT: usize = { let names: &[&str] = &[$(stringify!($name)),*]; names.len() };
            /// Probe names in id order; also the names of the kernel programs.
            pub const NAMES: [&str; COUNT] = [$(stringify!($name)),*];
        }

        /// Every probe in ABI order; `docs/probes.md` documents each.
        pub const PROBES: &[ProbeDef] = &[
            $(ProbeDef {
                name: stringify!($name),
                class: $crate::__abi_class!($class),
                args: &[
                    $(ArgDef { name: stringify!($key), kind: $crate::__abi_arg_kind!($kty) },)*
                    $(ArgDef { name: stringify!($val), kind: $crate::__abi_arg_kind!($vty) },)*
                ],
                keys: { let keys: &[&str] = &[$(stringify!($key)),*]; keys.len() },
            },)*
        ];
    };
}

for_each_probe!(abi_items);

/// Sampling levels: (control probe, sampled batches per second per engine thread; 0 = every
/// batch), least demanding first. The engine uses the most demanding level raised.
pub const SAMPLE_LEVELS: [(u32, u32); 7] = [
    (probe::ctl_samples_16::ID, 16),
    (probe::ctl_samples_64::ID, 64),
    (probe::ctl_samples_256::ID, 256),
    (probe::ctl_samples_1024::ID, 1024),
    (probe::ctl_samples_4096::ID, 4096),
    (probe::ctl_samples_16384::ID, 16384),
    (probe::ctl_samples_all::ID, 0),
];

/// Flush levels: (control probe, interval in milliseconds), least demanding first. The engine
/// uses the shortest interval raised.
pub const FLUSH_LEVELS: [(u32, u32); 8] = [
    (probe::ctl_flush_2000ms::ID, 2000),
    (probe::ctl_flush_1000ms::ID, 1000),
    (probe::ctl_flush_500ms::ID, 500),
    (probe::ctl_flush_250ms::ID, 250),
    (probe::ctl_flush_100ms::ID, 100),
    (probe::ctl_flush_50ms::ID, 50),
    (probe::ctl_flush_20ms::ID, 20),
    (probe::ctl_flush_10ms::ID, 10),
];

/// The value of an engine thread's CPU slot (probe `cpu_slot`): which query and stage the thread
/// is executing, written by the engine at every batch and stage boundary while a tool is attached
/// to `cpu_slot`, read by a sampling profiler from the interrupted thread. The query id is in
/// the high 32 bits; the low 32 bits are the state: [`slot::NONE`], [`slot::QUERY`] or
/// `slot::STAGE_BASE + Stage code`.
pub mod slot {
    use crate::Stage;

    /// Outside any query (the whole slot is 0): engine overhead, sources, idle spinning, I/O.
    pub const NONE: u32 = 0;
    /// Inside a query batch, outside its named stages.
    pub const QUERY: u32 = 1;
    /// Inside a stage: this plus the stage's code.
    pub const STAGE_BASE: u32 = 2;

    /// The slot value for `query` in `stage` (`None`: the query's own code).
    #[inline(always)]
    pub const fn encode(query: u32, stage: Option<Stage>) -> u64 {
        let state = match stage {
            None => QUERY,
            Some(s) => STAGE_BASE + s.code(),
        };
        ((query as u64) << 32) | state as u64
    }

    /// What a slot value says.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Where {
        /// Outside any query.
        None,
        /// In a query's own code, outside its stages.
        Query(u32),
        /// In a stage of a query.
        Stage(u32, Stage),
        /// A state this build does not know (a newer engine): query and raw state.
        Unknown(u32, u32),
    }

    /// Decodes a slot value.
    pub fn decode(value: u64) -> Where {
        let (query, state) = ((value >> 32) as u32, value as u32);
        match state {
            NONE => Where::None,
            QUERY => Where::Query(query),
            s => match Stage::from_code(s - STAGE_BASE) {
                Some(stage) => Where::Stage(query, stage),
                None => Where::Unknown(query, s),
            },
        }
    }
}

/// Sampled batches per second per engine thread when no observer raised a sampling level
/// (e.g. a bare bpftrace one-liner on the sample probes).
pub const DEFAULT_SAMPLES_PER_SEC: u32 = 256;

/// Flush interval when no observer raised a flush level.
pub const DEFAULT_FLUSH_MS: u32 = 1000;

macro_rules! code_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal => $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn ids_are_table_positions() {
        for (i, p) in PROBES.iter().enumerate() {
            assert_eq!(probe::NAMES[i], p.name);
        }
        assert_eq!(probe::ingest::ID as usize, PROBES.iter().position(|p| p.name == "ingest").unwrap_or(usize::MAX));
        assert_eq!(probe::queue_state::Arg::wait_ns as usize, 5);
    }

    #[test]
    fn level_tables_match_the_probe_names() {
        for (id, per_sec) in SAMPLE_LEVELS {
            let name = probe::NAMES[id as usize];
            let want = if per_sec == 0 { "all".into() } else { per_sec.to_string() };
            assert_eq!(name.strip_prefix("ctl_samples_"), Some(want.as_str()), "{name}");
        }
        for (id, ms) in FLUSH_LEVELS {
            let name = probe::NAMES[id as usize];
            assert_eq!(
                name.strip_prefix("ctl_flush_").and_then(|n| n.strip_suffix("ms")),
                Some(ms.to_string().as_str())
            );
        }
        let controls = PROBES.iter().filter(|p| p.class == Class::Control).count();
        assert_eq!(controls, SAMPLE_LEVELS.len() + FLUSH_LEVELS.len(), "every control probe is a level");
    }

    /// `batch_sample` carries one `<stage>_ns` per Stage, in code order, and what metrics and
    /// one-liners need lies within bpftrace's `arg0`..`arg9` (Debian's bpftrace 0.17 stops
    /// there).
    #[test]
    fn batch_sample_carries_every_stage_within_bpftraces_reach() {
        use probe::batch_sample::Arg;
        let p = PROBES[probe::batch_sample::ID as usize];
        let first = Arg::ingest_ns as usize;
        for (arg, stage) in p.args[first..first + Stage::ALL.len()].iter().zip(Stage::ALL) {
            assert_eq!(arg.name.strip_suffix("_ns"), Some(stage.label()));
        }
        for needed in [Arg::query_id, Arg::latency_ns, Arg::latency_clean, Arg::emit_ns] {
            assert!((needed as usize) <= 9, "{needed:?}");
        }
        assert!(PROBES.iter().all(|p| p.args.len() <= 12), "x86-64 USDT carries at most 12 arguments");
    }

    #[test]
    fn slot_values_decode_back() {
        use slot::{Where, decode, encode};
        assert_eq!(decode(0), Where::None);
        assert_eq!(decode(encode(7, None)), Where::Query(7));
        for &s in Stage::ALL {
            assert_eq!(decode(encode(u32::MAX, Some(s))), Where::Stage(u32::MAX, s));
        }
        assert_eq!(decode((3 << 32) | 99), Where::Unknown(3, 99));
        assert_ne!(encode(0, None), 0, "query 0 is not 'outside any query'");
    }

    #[test]
    fn count_and_gauge_keys_are_ids_and_values_are_u64() {
        for p in PROBES.iter().filter(|p| matches!(p.class, Class::Count | Class::Gauge)) {
            assert!(p.args[..p.keys].iter().all(|a| a.kind == ArgKind::U32), "{}", p.name);
            assert!(p.args[p.keys..].iter().all(|a| a.kind == ArgKind::U64), "{}", p.name);
            assert!(
                p.keys <= 4 && p.args.len() - p.keys <= 4,
                "{}: the engine's series hold 4 keys and 4 values",
                p.name
            );
        }
    }
}
