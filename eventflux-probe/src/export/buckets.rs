//! Which kernel buckets a classic (`le`) latency histogram shows in the text exposition.
//!
//! The kernel counts every latency in 160 buckets on the boundaries of Prometheus' native
//! histograms, schema 2 (`eventflux_probe_common::hist`): four per power of two of seconds.
//! Exported as classic buckets, every one of them is a series, and a scrape of a few queries is
//! mostly bucket lines (105 per histogram from 256 ns to 16 s). So the text format shows a
//! subset by default, every bound of it a kernel boundary: the cumulative count at such a
//! bound is exact, with no rebinning error.
//!
//! - batch latency and component operations (`query_latency_seconds`, `*_duration_seconds`):
//!   the powers of 4 from 2^-20 s (0.95 µs) to 2^2 s (4 s), twelve bounds;
//! - stage latencies (`query_stage_latency_seconds`, four per query): the powers of 32 from
//!   2^-20 s to 1 s (0.95 µs, 30.5 µs, 0.98 ms, 31.3 ms, 1 s), five bounds;
//!
//! which makes 47 lines per query for batch and stage latency, against 525 with every bucket.
//! `full` shows every bucket from 256 ns to 16 s; a list of seconds shows those, each moved up
//! to the nearest kernel boundary (the `le` is then that boundary, exactly). Native histograms
//! (protobuf) carry every bucket whatever this says.

use eventflux_probe_common::hist;

pub use crate::config::Buckets;

/// Smallest latency bucket bound of the full layout: finer buckets are cumulated into it. 256
/// ns, because a batch of a few events takes a few hundred nanoseconds in a fast engine.
const FIRST_FULL_NS: u64 = 256;
/// Largest bucket bound of the full layout: slower samples count only in `+Inf` (and in
/// `_sum`).
const LAST_FULL_NS: u64 = 16_000_000_000;

/// The kernel buckets whose upper bounds `buckets` shows, ascending; `default` is the
/// `fallback` set.
pub fn indices(buckets: &Buckets, fallback: &[usize]) -> Vec<usize> {
    let mut out: Vec<usize> = match buckets {
        Buckets::Default => fallback.to_vec(),
        Buckets::Full => (0..hist::BUCKETS - 1)
            .filter(|&i| hist::upper(i) >= FIRST_FULL_NS && hist::upper(i) <= LAST_FULL_NS)
            .collect(),
        Buckets::Seconds(bounds) => bounds.iter().map(|&s| snap(s)).collect(),
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Where [`Buckets::Seconds`] bounds moved to reach a kernel boundary: (asked, shown).
pub fn moved(buckets: &Buckets) -> Vec<(f64, f64)> {
    match buckets {
        Buckets::Seconds(bounds) => bounds
            .iter()
            .map(|&s| (s, hist::upper_seconds(snap(s))))
            .filter(|(asked, shown)| (asked - shown).abs() > asked * 1e-12)
            .collect(),
        _ => Vec::new(),
    }
}

/// The kernel bucket whose upper bound is the first at or above `seconds` (a bound that is a
/// boundary up to rounding stays where it is).
fn snap(seconds: f64) -> usize {
    (0..hist::BUCKETS - 1).find(|&i| hist::upper_seconds(i) >= seconds * (1.0 - 1e-12)).unwrap_or(hist::BUCKETS - 2)
}

/// The kernel bucket whose upper bound is `2^(e)` seconds.
const fn power_of_two(e: i32) -> usize {
    (4 * e - hist::FIRST_INDEX) as usize
}

/// The default layout of batch latency and component operations: powers of 4, 2^-20 s to 4 s.
pub fn default_latency() -> Vec<usize> {
    (-10..=1).map(|n| power_of_two(2 * n)).collect()
}

/// The default layout of stage latencies: powers of 32, 2^-20 s to 1 s.
pub fn default_stage() -> Vec<usize> {
    (-4..=0).map(|n| power_of_two(5 * n)).collect()
}

/// The layouts of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Batch latency and component operations.
    pub latency: Vec<usize>,
    /// Stage latencies.
    pub stage: Vec<usize>,
}

impl Layout {
    /// The kernel buckets histogram `metric` shows.
    pub fn of(&self, metric: &str) -> &[usize] {
        if metric == crate::export::metrics::QUERY_STAGE_LATENCY.name { &self.stage } else { &self.latency }
    }

    pub fn new(latency: &Buckets, stage: &Buckets) -> Layout {
        Layout { latency: indices(latency, &default_latency()), stage: indices(stage, &default_stage()) }
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout::new(&Buckets::Default, &Buckets::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_powers_of_two_in_seconds() {
        let secs = |v: Vec<usize>| v.into_iter().map(hist::upper_seconds).collect::<Vec<f64>>();
        let latency = secs(default_latency());
        assert_eq!(latency.len(), 12);
        assert_eq!(latency[0], 2f64.powi(-20));
        assert_eq!(latency[11], 4.0);
        assert!(latency.windows(2).all(|w| w[1] == 4.0 * w[0]));
        assert_eq!(secs(default_stage()), [2f64.powi(-20), 2f64.powi(-15), 2f64.powi(-10), 2f64.powi(-5), 1.0]);
        // Batch latency and four stages: 12 + 4 * 5 buckets, each histogram with +Inf, _sum
        // and _count.
        assert_eq!((12 + 3) + 4 * (5 + 3), 47);
    }

    #[test]
    fn bounds_move_up_to_a_kernel_boundary() {
        let b: Buckets = "0.001,0.0009765625".parse().expect("bounds");
        let shown: Vec<f64> = indices(&b, &[]).into_iter().map(hist::upper_seconds).collect();
        // 2^-10 s is a boundary; 1 ms is not and moves to the next, 2^(-39/4) s.
        assert_eq!(shown, [0.0009765625, 2f64.powf(-39.0 / 4.0)]);
        assert_eq!(moved(&b).len(), 1);
        assert_eq!(indices(&Buckets::Full, &[]).len(), 104);
    }
}
