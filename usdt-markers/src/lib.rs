//! USDT probe points for the EventFlux pipeline.
//!
//! Every probe is a SystemTap v3 SDT marker: a `nop` in the code, an ELF note in
//! `.note.stapsdt` that tells tools where the `nop` is and where each argument lives, and a
//! 16-bit semaphore in `.probes` that tools increment while they are attached. That is the
//! format `sys/sdt.h` emits for C, so `bpftrace -e 'usdt:BIN:eventflux:ingest {…}'`, libbpf,
//! SystemTap and `eventflux-probe` all attach to the same sites.
//!
//! Fire a probe with [`probe!`]:
//!
//! ```
//! # let (stream_id, chunk) = (0u32, [0u8; 4]);
//! usdt_markers::probe!(ingest(stream_id, chunk.len() as u64));
//! ```
//!
//! The macro tests the probe's semaphore first and evaluates the arguments only when somebody
//! is attached, so a detached site costs one load and one not-taken branch. Names travel only in
//! the cold registration calls ([`register_stream`], [`register_query`]); hot-path probes carry
//! small integer ids.
//!
//! The probe ABI (names, argument order, types, units) is written down in `docs/probes.md`;
//! [`PROBES`] is the same table in code, and a test keeps the two equal.
//!
//! Build without the default `enabled` feature and every marker compiles to nothing.

#![warn(missing_docs)]

pub mod abi;
mod probes;
mod registry;
mod semaphore;
#[cfg(all(feature = "enabled", target_arch = "x86_64", target_os = "linux"))]
mod site;

pub use abi::{ABI_VERSION, ArgDef, ArgKind, PROVIDER, ProbeDef};
pub use probes::*;
pub use registry::{QueryInfo, StreamInfo, register_query, register_stream, unregister_query};
pub use semaphore::Semaphore;

/// Fires a probe: `probe!(name(arg, …))`.
///
/// The arguments are evaluated only while a tool is attached to the probe (its semaphore is
/// non-zero); their types must match the ABI exactly (`u32` ids, `u64` counts).
#[cfg(feature = "enabled")]
#[macro_export]
macro_rules! probe {
    ($name:ident ( $($arg:expr),* $(,)? )) => {
        if $crate::$name::SEMAPHORE.is_active() {
            $crate::$name::fire_enabled($($arg),*);
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
