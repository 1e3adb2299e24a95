//! A latency histogram as the observer holds it: the kernel's buckets (native schema 2's boundaries) summed over
//! CPUs (`eventflux_probe_common::hist` defines the buckets).

use std::collections::BTreeMap;

use eventflux_probe_common::hist;

/// A traced batch (or one of its spans) that fell in a bucket: what links a latency bucket to
/// the trace the OTLP exporter sent of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exemplar {
    /// The trace id the batch was exported under.
    pub trace_id: u128,
    /// The span's duration, which the kernel measured into this histogram.
    pub value_ns: u64,
    /// When the span ended, in milliseconds since the epoch.
    pub unix_ms: i64,
}

impl Exemplar {
    /// The trace id as W3C and OTLP's JSON write it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// A latency histogram summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistData {
    /// Counts per kernel bucket (see `eventflux_probe_common::hist`), not cumulative.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    /// The latest exemplar per kernel bucket (filled in by the trace pipeline, not the kernel).
    pub exemplars: BTreeMap<usize, Exemplar>,
}

impl HistData {
    /// Smallest bucket bound `le` such that at least `q` of the samples are `<= le`.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return hist::upper(i).min(self.max_ns.max(hist::lower(i) + 1));
            }
        }
        self.max_ns
    }
}
