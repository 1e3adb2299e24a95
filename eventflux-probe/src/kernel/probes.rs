//! Which probes the observer loads programs for, by what it makes of them: the metric probes
//! (counts, gauges, latency), the probes only span trees need, and the CPU slot probe. The
//! control probes a [`Budget`](super::budget::Budget) asks through are chosen there; the table
//! itself (ids, names, classes) is `eventflux_abi`'s `define_probes!`.

use eventflux_probe_common::{Class, PROBES, probe};

/// The probe CPU attribution needs: engine threads announce their CPU slots through it, and
/// keep them only while it is attached (`usdt_markers::cpu`). Not among the metric probes:
/// attached only when CPU samples are taken.
pub const CPU_PROBES: [u32; 1] = [probe::cpu_slot::ID];

/// The probes only span trees need: `stage_sample` (its per-stage records repeat what
/// `batch_sample` carries for metrics) and `trace_context`. Loading either turns span records
/// on (`TRACE_SPANS`).
pub const TRACE_PROBES: [u32; 3] = [probe::stage_sample::ID, probe::trace_context::ID, probe::component_span::ID];

/// The probes whose data the metrics are made of: every probe but the control probes and
/// [`TRACE_PROBES`].
pub fn metric_probes() -> Vec<u32> {
    PROBES
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            p.class != Class::Control && !TRACE_PROBES.contains(&(*i as u32)) && !CPU_PROBES.contains(&(*i as u32))
        })
        .map(|(i, _)| i as u32)
        .collect()
}
