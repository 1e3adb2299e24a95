//! The kernel programs cover the ABI: the real kernel loads a program for every probe (the
//! `empty` one for control probes), so no probe lacks its
//! reader. Argument positions need no test here: the programs read them by name through the
//! table's `Args`.

use eventflux_probe::kernel::Kernel;
use eventflux_probe::kernel::probes::{CPU_PROBES, TRACE_PROBES, metric_probes};
use eventflux_probe_common::{Class, PROBES, probe};
use integration_tests::serial;

#[test]
fn the_kernel_loads_a_program_for_every_probe() {
    let _serial = serial();
    let mut observed = metric_probes();
    // Metrics: everything but the controls, the trace probes (per-stage records, which
    // batch_sample repeats, and trace contexts; for span trees) and the CPU slot probe (for CPU
    // attribution, attached only when CPU samples are taken); those have programs too.
    assert_eq!(
        observed.len(),
        PROBES.iter().filter(|p| p.class != Class::Control).count() - TRACE_PROBES.len() - CPU_PROBES.len()
    );
    assert!(TRACE_PROBES.iter().chain(&CPU_PROBES).all(|p| !observed.contains(p)));
    assert!(TRACE_PROBES.contains(&probe::stage_sample::ID) && TRACE_PROBES.contains(&probe::trace_context::ID));
    assert_eq!(CPU_PROBES, [probe::cpu_slot::ID]);
    observed.extend(TRACE_PROBES);
    observed.extend(CPU_PROBES);
    let mut all = observed.clone();
    all.extend(PROBES.iter().enumerate().filter(|(_, p)| p.class == Class::Control).map(|(i, _)| i as u32));
    let mut kernel = Kernel::load(&all).unwrap_or_else(|e| panic!("{e:#}"));
    // The perf-event program of CPU attribution loads (and attaches to every CPU) too.
    kernel.sample_cpu(std::time::Duration::from_millis(10)).unwrap_or_else(|e| panic!("{e:#}"));
    let mut programs: Vec<&str> = kernel.program_stats().iter().map(|(name, ..)| *name).collect();
    programs.sort_unstable();
    let mut want: Vec<&str> =
        observed.iter().map(|&id| PROBES[id as usize].name).chain(["empty", "cpu_sample"]).collect();
    want.sort_unstable();
    assert_eq!(programs, want);
}

/// The programs' diagnostics (aya-log) load and verify when asked for, and cost nothing when
/// not: at level 0 the verifier proves the logging branches dead and removes them, so every
/// program keeps fewer instructions than with diagnostics on.
#[test]
fn kernel_diagnostics_are_pruned_unless_asked_for() {
    let _serial = serial();
    let probes = metric_probes();
    let off = Kernel::load_with(&probes, false).unwrap_or_else(|e| panic!("{e:#}")).program_instructions();
    let on = Kernel::load_with(&probes, true).unwrap_or_else(|e| panic!("{e:#}")).program_instructions();
    assert_eq!(off.len(), probes.len());
    assert_eq!(off.iter().map(|(n, _)| n).collect::<Vec<_>>(), on.iter().map(|(n, _)| n).collect::<Vec<_>>());
    for ((name, without), (_, with)) in off.iter().zip(&on) {
        assert!(without < with, "{name}: {without} instructions without diagnostics, {with} with");
    }
}

/// Span records cost the metrics nothing: loaded without the trace probes (as `run` and
/// `latency` load), `batch_sample` keeps fewer instructions than loaded to trace, because the
/// verifier removes the span-writing branch.
#[test]
fn span_records_are_pruned_unless_tracing() {
    let _serial = serial();
    let metrics = metric_probes();
    let mut tracing = metrics.clone();
    tracing.extend(TRACE_PROBES);
    let count = |probes: &[u32]| {
        let kernel = Kernel::load_with(probes, false).unwrap_or_else(|e| panic!("{e:#}"));
        kernel.program_instructions().into_iter().find(|(n, _)| *n == "batch_sample").expect("batch_sample").1
    };
    let (without, with) = (count(&metrics), count(&tracing));
    assert!(without < with, "batch_sample: {without} instructions without tracing, {with} with");
}
