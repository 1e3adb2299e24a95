//! USDT probe points for the EventFlux pipeline.
//!
//! Every probe is a SystemTap v3 SDT marker: a `nop` in the code, an ELF note in
//! `.note.stapsdt` that tells tools where the `nop` is and where each argument lives, and a
//! 16-bit semaphore in `.probes` that tools increment while they are attached. That is the
//! format `sys/sdt.h` emits for C, so `bpftrace -e 'usdt:BIN:eventflux:ingest {…}'`, libbpf,
//! SystemTap and `eventflux-probe` all attach to the same sites.
//!
//! An attached probe costs a uprobe trap per hit, so the hot path fires none (probe ABI v2,
//! `docs/probes.md`):
//!
//! ```
//! use usdt_markers::{ingest, query_events, span::{Batch, Span}, abi::Stage};
//! # let (stream_id, query_id, chunk) = (0u32, 1u32, [0u8; 4]);
//! // Once per stream or query:
//! let received = ingest::Counter::new(stream_id);
//! let processed = query_events::Counter::new(query_id, stream_id);
//! // Per chunk: a load and a branch while detached, a few adds while attached.
//! received.add(chunk.len() as u64);
//! let batch = Batch::enter(query_id);
//! processed.add(chunk.len() as u64, 1);
//! let filter = Span::enter(query_id, Stage::Filter);
//! filter.exit(chunk.len() as u64, 2);
//! batch.exit(stream_id, chunk.len() as u64, 2);
//! ```
//!
//! Counters ([`accum`]) add into per-thread cells that a flusher thread hands to observers once
//! per interval; spans ([`span`]) time a few sampled batches per second in the engine and
//! report them after the batch; while a CPU profiler is attached, their boundaries keep each
//! thread's current query and stage in a slot it reads ([`cpu`]). Names travel only in the cold
//! registration calls ([`register_stream`], [`register_query`], [`register_component`]). How often observers are fed is their choice:
//! they raise control probes' semaphores, which the engine reads as levels.
//!
//! The probe table lives in `eventflux-abi` (re-exported as [`abi`]); [`PROBES`] is it as data,
//! and a test keeps `docs/probes.md` equal to it.
//!
//! Build without the default `enabled` feature and every marker compiles to nothing.
//!
//! The modules import each other in one direction: the flusher is started by the modules above
//! it and reads only those below it (`points`, `cells`, `levels`, `registry`, `semaphore`).
//! `cargo xtask modules` prints the graph and fails on a cycle.

#![warn(missing_docs)]

pub mod accum;
mod cells;
pub mod cpu;
mod flusher;
mod levels;
pub mod ops;
mod points;
mod probes;
mod registry;
mod semaphore;
#[cfg(all(feature = "enabled", target_arch = "x86_64", target_os = "linux"))]
mod site;
pub mod span;
pub mod trace;
mod traceparent;

pub use eventflux_abi as abi;
pub use eventflux_abi::{ABI_VERSION, ArgDef, ArgKind, Class, PROVIDER, ProbeDef};
pub use flusher::{unregister_component, unregister_query};
pub use probes::*;
pub use registry::{
    ComponentInfo, QueryInfo, StreamInfo, register_component, register_query, register_query_input, register_stream,
};
pub use semaphore::Semaphore;

/// Fires a probe's site now: `probe!(name(arg, …))`. Every hit traps while attached, so this
/// is for rare events and tools; hot paths use the probe's `Counter` or `Gauge` and
/// [`span`].
///
/// The arguments are evaluated only while a tool is attached to the probe (its semaphore is
/// non-zero); their types must match the ABI exactly (`u32` ids, `u64` counts).
#[cfg(feature = "enabled")]
#[macro_export]
macro_rules! probe {
    ($name:ident ( $($arg:expr),* $(,)? )) => {
        if $crate::$name::SEMAPHORE.is_active() {
            $crate::$name::site($($arg),*);
        }
    };
}

/// Fires a probe: `probe!(name(arg, …))`. Compiled out: the arguments are type-checked but
/// never evaluated.
#[cfg(not(feature = "enabled"))]
#[macro_export]
macro_rules! probe {
    ($name:ident ( $($arg:expr),* $(,)? )) => {
        if false {
            $crate::$name::site($($arg),*);
        }
    };
}

/// Whether anyone is attached to probe `name`: `probe_enabled!(window_end)`. For argument
/// preparation too expensive for [`probe!`]'s own laziness.
#[macro_export]
macro_rules! probe_enabled {
    ($name:ident) => {
        $crate::$name::is_enabled()
    };
}
