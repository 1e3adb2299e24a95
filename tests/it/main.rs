//! The integration tests, as one test binary (linked once, not once per file): each module is
//! one area, run for real against this kernel, the demo, bpftrace, readelf and Prometheus.
//! Their shared harness is the `integration_tests` library (`tests/src`).
//!
//! Tests that start processes or touch the kernel take [`integration_tests::serial`], one lock
//! for the whole binary: one such test at a time, so that two cores suffice, latency and CPU
//! figures measure the pipeline rather than a neighbour, and a node-mode observer never
//! attaches to another test's demo. Tests that only read files run alongside.

mod abi;
mod bpftrace;
mod components;
mod cpu;
mod daemon;
mod dashboards;
mod demo;
mod deploy;
mod discovery;
mod hardening;
mod ids;
mod lifecycle;
mod node;
mod otlp;
mod parsers_prop;
mod redzone;
mod top;
mod trace;
