//! eventflux-probe: an eBPF observer for EventFlux, driven by the engine's USDT probes.
//!
//! The data path reads top to bottom: [`usdt`] finds the probes in a binary and parses their
//! argument specs; [`budget`] is what the observer asks of the engine; [`bpf`] loads the kernel programs (eventflux-probe-ebpf) and [`attach`]es
//! them to every probe site; the [`collector`] reads the kernel maps, the registrations
//! ([`catalog`]) and `/proc` ([`procstat`]) into one snapshot; the [`export`]ers serve it.
//! CPU samples take the same path into `query_cpu_seconds_total`; with stacks, [`profile`]
//! symbolizes them into per-query flame graphs and pprof profiles.

pub mod attach;
pub mod bpf;
pub mod budget;
pub mod catalog;
pub mod collector;
pub mod config;
pub mod daemon;
pub mod discover;
pub mod export;
pub mod health;
pub mod http;
pub mod input;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod node;
pub mod privileges;
pub mod procstat;
pub mod profile;
pub mod secrets;
pub mod target;
pub mod trace;
pub mod usdt;
