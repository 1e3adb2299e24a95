//! eventflux-probe: an eBPF observer for EventFlux, driven by the engine's USDT probes.
//!
//! The stages, in the order the data flows (docs/architecture.md draws them); each line says
//! what crosses into the next stage. A stage imports only the stages above it
//! (`cargo xtask modules` checks that no import runs in a circle).

/// Reads maps, rings and `/proc` into one snapshot; assembles span records into span trees and
/// CPU samples into profiles. → `Snapshot`, `Trace`, `Profile`.
pub mod collect;
/// Formats of the model: the metric list, Prometheus text, OTLP, health JSON, profile files.
/// → text, protobuf, JSON.
pub mod export;
/// What to observe: processes, their files with eventflux probes (`find::usdt` parses the
/// notes), the target held by pidfd, containers, selection globs. → `BinaryProbes`, `Target`.
pub mod find;
/// The only user of aya: loads the kernel programs, attaches them to probe sites, owns the
/// maps; what the observer asks of the engine (`budget`) and which probes it loads (`probes`).
/// → `Kernel` (maps and rings).
pub mod kernel;
/// What a snapshot means: engines, streams, queries, histograms, the observer's own state.
/// → `Model`.
pub mod model;
/// Services: the `Daemon` library type, the `run` service, node mode, HTTP. → endpoints.
pub mod serve;

/// The settings, from defaults, file, environment and flags (`config/settings.rs` is the table).
pub mod config;
/// Logs, human or JSON lines.
pub mod logging;

/// Files a user names, read bounded and without blocking on a FIFO.
pub mod input;
/// Credentials the observer is handed and must never show.
pub mod secrets;
mod sync;
/// The crate's raw system calls, each wrapped once.
mod sys;
