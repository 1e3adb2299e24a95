//! The probe table and the types it is written in. One table ([`for_each_probe!`]) gives each
//! probe's id, class and arguments, so that the engine's markers, the kernel programs and the
//! documentation cannot disagree.
//!
//! [`for_each_probe!`]: crate::for_each_probe

/// The provider's name as a literal, for what takes literals only: `usdt-markers` writes it
/// into its notes from an `asm!` template and into its semaphores' symbol names with `concat!`,
/// where a `const` cannot go. [`PROVIDER`] is defined from it, so the name is written once.
#[doc(hidden)]
#[macro_export]
macro_rules! __abi_provider {
    () => {
        "eventflux"
    };
}

/// SDT provider of every probe.
pub const PROVIDER: &str = __abi_provider!();

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
            /// Another stream a query reads besides `query_register`'s input (a join's other
            /// side, a pattern's or sequence's other streams): fired after the query's
            /// registration, replayed with it, forgotten with it.
            register query_input(query_id: u32, stream_id: u32;);
            /// While a tool is attached here, every engine thread keeps what it is executing in
            /// a thread-local 8-byte slot (see [`slot`](crate::slot): query and stage, 0
            /// outside any query) and announces the slot's `address` through this probe, from
            /// the thread itself: at its first batch once the tool's attach settled, again for
            /// each change of the attached tools, and with address 0 when the thread exits. A
            /// sampling profiler reads the slot of the thread it interrupted (CPU attribution).
            register cpu_slot(address: u64;);
            /// A component beyond the query pipeline was created (and replayed like
            /// `stream_register`): `kind` a ComponentKind; `variant` its Connector (sources,
            /// sinks) or TableKind (tables), else 0; `stream_id` and `query_id` what it belongs
            /// to, `NONE` (u32::MAX) when nothing. Its series come through `component_count`
            /// and `component_gauge`.
            register component_register(
                component_id: u32,
                name: str,
                kind: u32,
                variant: u32,
                stream_id: u32,
                query_id: u32;
            );
            /// A component was dropped, after its last counts were flushed.
            register component_unregister(component_id: u32;);
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
            /// An amount of a component's counter `counter` (a ComponentCounter: one exported
            /// family each), in the family's second dimension `label` (0 if it has none).
            count component_count(component_id: u32, counter: u32, label: u32; amount: u64);
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
            /// The value of a component's gauge `gauge` (a ComponentGauge: one exported family
            /// each), in the family's second dimension `label` (0 if it has none).
            gauge component_gauge(component_id: u32, gauge: u32, label: u32; value: u64);
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
            /// not timed). `latency_weight` is not 0 when `latency_ns` was measured without
            /// timing the stages inside it, and then says how many batches of its query this
            /// one stands for in a latency histogram (1 when every batch is sampled; a tail
            /// sampler's pick of a query's emitting batches stands for its stratum); 0 when
            /// the batch was sampled for its stages or its stratum has another sample. One hit
            /// gives everything latency metrics need.
            sample batch_sample(
                query_id: u32,
                stream_id: u32,
                latency_ns: u64,
                latency_weight: u64,
                events_in: u64,
                ingest_ns: u64,
                filter_ns: u64,
                window_ns: u64,
                aggregate_ns: u64,
                emit_ns: u64,
                events_out: u64,
                start_ns: u64;
            );
            /// One component operation the engine timed (`op` a ComponentOp: one histogram
            /// family each): `items` it handled, `duration_ns` it took, `start_ns` on
            /// CLOCK_MONOTONIC. Rare operations (a snapshot, a restore) fire every time, after
            /// the operation.
            sample component_sample(component_id: u32, op: u32, items: u64, duration_ns: u64, start_ns: u64;);
            /// A frequent component operation (a join probe, a table lookup, a pattern step, a
            /// sink publish) timed inside a batch sampled for its stages, for span trees: fired
            /// after the batch with its records, beside `component_sample`, only while a tool is
            /// attached here. `query_id` is the batch's query.
            sample component_span(component_id: u32, op: u32, query_id: u32, items: u64, duration_ns: u64, start_ns: u64;);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::Stage;

    #[test]
    fn ids_are_table_positions() {
        for (i, p) in PROBES.iter().enumerate() {
            assert_eq!(probe::NAMES[i], p.name);
        }
        assert_eq!(probe::ingest::ID as usize, PROBES.iter().position(|p| p.name == "ingest").unwrap_or(usize::MAX));
        assert_eq!(probe::queue_state::Arg::wait_ns as usize, 5);
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
        for needed in [Arg::query_id, Arg::latency_ns, Arg::latency_weight, Arg::emit_ns] {
            assert!((needed as usize) <= 9, "{needed:?}");
        }
        assert!(PROBES.iter().all(|p| p.args.len() <= 12), "x86-64 USDT carries at most 12 arguments");
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
