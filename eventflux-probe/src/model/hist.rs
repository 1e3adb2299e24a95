//! A latency histogram as the observer holds it: the kernel's buckets (native schema 2's boundaries) summed over
//! CPUs (`eventflux_probe_common::hist` defines the buckets).

use eventflux_probe_common::hist;

/// A latency histogram summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistData {
    /// Counts per kernel bucket (see `eventflux_probe_common::hist`), not cumulative.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
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
