//! The kernel programs cover the ABI: the real kernel loads a program for every probe (the
//! `empty` one for control probes), so no probe of the table lacks its reader. Argument
//! positions need no test here: the programs read them by name through the table's `Args`.

use eventflux_probe::bpf::Kernel;
use eventflux_probe_common::PROBES;

#[test]
fn the_kernel_loads_a_program_for_every_probe() {
    let all: Vec<u32> = (0..PROBES.len() as u32).collect();
    let kernel = Kernel::load(&all).unwrap_or_else(|e| panic!("{e:#}"));
    let mut programs: Vec<&str> = kernel.program_stats().iter().map(|(name, ..)| *name).collect();
    programs.sort_unstable();
    let mut want: Vec<&str> = PROBES
        .iter()
        .map(|p| if p.class == eventflux_probe_common::Class::Control { "empty" } else { p.name })
        .collect();
    want.sort_unstable();
    want.dedup();
    assert_eq!(programs, want);
}
