//! eventflux-probe: an eBPF observer for EventFlux, driven by the engine's USDT probes.

pub mod collect;
pub mod export;
pub mod find;
pub mod kernel;
pub mod model;
pub mod serve;

pub mod config;
pub mod logging;

pub mod input;
pub mod secrets;
mod sync;
mod sys;
