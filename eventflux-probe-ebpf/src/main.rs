//! The kernel side of eventflux-probe: one uprobe program per probe of the `eventflux`
//! provider (docs/probes.md), attached to every site (note) of that probe.
//!
//! The data path: a program reads its arguments through the site's spec (found by the BPF
//! cookie, decoded from the note's argument spec by user space), by name through the ABI's
//! generated `Args`, then adds to per-CPU counters, sets gauges, adds a sampled duration to a
//! histogram, or sends a registration to user space. Since probe ABI v2 the engine fires these
//! probes a bounded number of times per second (amounts accumulated per flush interval, a few
//! sampled batches), so nothing here is on a per-event path; nothing handles strings except
//! the registration probes.

#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline asm on BPF (one constant-offset context load per register, see args.rs); this crate is
// built with nightly for the BPF target only.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod args;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
