//! Every probe of the `eventflux` provider: one module per probe with its semaphore and its
//! `fire` function, and [`PROBES`], the same list as data.

use crate::abi::{ArgDef, ArgKind, ProbeDef};

macro_rules! arg_type {
    (u32) => { u32 };
    (u64) => { u64 };
    (str) => { *const u8 };
}

macro_rules! arg_kind {
    (u32) => {
        ArgKind::U32
    };
    (u64) => {
        ArgKind::U64
    };
    (str) => {
        ArgKind::Str
    };
}

macro_rules! define_probes {
    ($(
        $(#[$doc:meta])*
        $name:ident ( $($arg:ident : $kind:ident),+ $(,)? );
    )*) => {
        $(
            $(#[$doc])*
            #[allow(non_snake_case)]
            pub mod $name {
                #[allow(unused_imports)]
                use super::*;

                /// This probe's USDT semaphore.
                #[cfg(feature = "enabled")]
                #[unsafe(link_section = ".probes")]
                #[unsafe(export_name = concat!("eventflux_", stringify!($name), "_semaphore"))]
                pub static SEMAPHORE: crate::Semaphore = crate::Semaphore::new();

                /// Whether a tool is attached to this probe.
                #[inline(always)]
                pub fn is_enabled() -> bool {
                    #[cfg(feature = "enabled")]
                    return SEMAPHORE.is_active();
                    #[cfg(not(feature = "enabled"))]
                    return false;
                }

                /// The enabled path of [`crate::probe!`]: replays registrations to new observers,
                /// then executes the site.
                ///
                /// Out of line and `#[cold]` on purpose. At the call site the enabled branch is
                /// then a few register moves and one call, marked unlikely, so a detached site
                /// stays a load and a branch and the code around it compiles as if the marker
                /// were absent (an inlined site perturbed the demo's loops by 1.4% more
                /// instructions). The calls cost nanoseconds on a path that takes a uprobe trap.
                #[doc(hidden)]
                #[cold]
                #[inline(never)]
                pub fn fire_enabled($($arg: arg_type!($kind)),+) {
                    crate::registry::sync_observers();
                    site($($arg),+);
                }

                /// The probe site itself: a `nop` and its note. One function per probe, so a
                /// probe has one site whatever the number of callers (unless the compiler
                /// duplicates it inside this function), and the note is discarded together
                /// with the function when a binary never fires the probe.
                #[inline(never)]
                pub fn site($($arg: arg_type!($kind)),+) {
                    #[cfg(all(feature = "enabled", target_arch = "x86_64", target_os = "linux"))]
                    crate::__sdt_site!($name, $($arg : $kind),+);
                    #[cfg(not(all(feature = "enabled", target_arch = "x86_64", target_os = "linux")))]
                    let _ = ($($arg,)+);
                }
            }
        )*

        /// Every probe in ABI order, with its arguments; `docs/probes.md` documents each.
        pub const PROBES: &[ProbeDef] = &[
            $(ProbeDef {
                name: stringify!($name),
                args: &[$(ArgDef { name: stringify!($arg), kind: arg_kind!($kind) }),+],
            },)*
        ];
    };
}

define_probes! {
    /// A stream was defined: fired by [`crate::register_stream`] and replayed to new observers.
    stream_register(stream_id: u32, name: str, role: u32, junction: u32, capacity: u64);
    /// A query was started: fired by [`crate::register_query`] and replayed to new observers.
    query_register(
        query_id: u32,
        name: str,
        input_stream_id: u32,
        output_stream_id: u32,
        window_kind: u32,
        window_size: u64,
    );
    /// A query was stopped: fired by [`crate::unregister_query`].
    query_unregister(query_id: u32);
    /// A chunk of events entered a stream junction from a source.
    ingest(stream_id: u32, events: u64);
    /// A junction handed a chunk to one subscribing query (called it, or queued it).
    junction_send(stream_id: u32, query_id: u32, events: u64);
    /// A query started processing one chunk (batch) of its input stream.
    query_batch_start(query_id: u32, stream_id: u32, events: u64);
    /// The query finished the chunk: `events_out` is what it emitted for it.
    query_batch_end(query_id: u32, events_in: u64, events_out: u64);
    /// The filter started on a chunk.
    filter_start(query_id: u32, events_in: u64);
    /// The filter finished: `events_out` passed the predicate.
    filter_end(query_id: u32, events_in: u64, events_out: u64);
    /// The window processor started on the filtered chunk.
    window_start(query_id: u32, events_in: u64);
    /// The window processor finished: `events_out` were released downstream, `state_bytes` are held.
    window_end(query_id: u32, events_in: u64, events_out: u64, state_bytes: u64);
    /// The aggregation started on what the window released.
    aggregate_start(query_id: u32, events_in: u64);
    /// The aggregation finished: `events_out` result rows, `groups` live group-by keys.
    aggregate_end(query_id: u32, events_out: u64, groups: u64);
    /// The query started emitting rows into its output stream.
    emit_start(query_id: u32, stream_id: u32, events: u64);
    /// The rows were handed to the output stream.
    emit_end(query_id: u32, stream_id: u32, events: u64);
    /// An async junction queued a chunk for a subscriber: queue depth after the push.
    queue_push(stream_id: u32, query_id: u32, depth: u64, capacity: u64, bytes: u64);
    /// A subscriber's worker took a chunk off its queue: depth after the pop, time queued.
    queue_pop(stream_id: u32, query_id: u32, depth: u64, wait_ns: u64);
    /// A producer found a subscriber's queue full and has to wait.
    backpressure(stream_id: u32, query_id: u32, depth: u64, capacity: u64);
    /// A query failed to process `count` events of a chunk.
    error(query_id: u32, kind: u32, count: u64);
    /// A source or sink connection was established.
    conn_open(protocol: u32);
    /// A connection was closed.
    conn_close(protocol: u32);
    /// A connection attempt or an established connection failed.
    conn_error(protocol: u32, kind: u32);
}
