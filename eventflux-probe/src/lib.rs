//! eventflux-probe: an eBPF observer for EventFlux, driven by the engine's USDT probes.
//!
//! The data path reads top to bottom: [`usdt`] finds the probes in a binary and parses their
//! argument specs; the kernel programs (eventflux-probe-ebpf) count and time at those sites;
//! the collector reads the kernel maps; the exporters serve what it read.

pub mod usdt;
