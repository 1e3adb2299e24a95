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

#[macro_use]
mod codes;
mod components;
mod levels;
pub mod slot;
mod table;

pub use codes::{ConnErrorKind, ErrorKind, JunctionKind, Protocol, Stage, StreamRole, WindowKind};
pub use components::{
    ComponentCounter, ComponentGauge, ComponentKind, ComponentOp, Connector, DeliveryError, Dimension, Direction,
    Duration, ErrorAction, ErrorOrigin, JoinSide, LookupResult, NONE, Outcome, StoreKind, TableKind, TableOp,
};
pub use levels::{DEFAULT_FLUSH_MS, DEFAULT_SAMPLES_PER_SEC, FLUSH_LEVELS, SAMPLE_LEVELS};
pub use table::{ABI_VERSION, ArgDef, ArgKind, Class, PROBES, PROVIDER, ProbeDef, probe};
