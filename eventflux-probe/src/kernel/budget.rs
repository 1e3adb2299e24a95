//! What an observer asks of the engine (probe ABI v2): how many batches per second each engine
//! thread samples, and how often it flushes its counts. The engine learns it from the control
//! probes the observer attaches to (their semaphores are levels; the most demanding level of
//! all attached observers wins), so nothing is written into the engine and several observers
//! can each ask for their own.

use std::fmt;
use std::time::Duration;

use anyhow::{Result, bail};
use eventflux_abi::{FLUSH_LEVELS, SAMPLE_LEVELS};

/// Sampled batches per second per engine thread that `run` asks for by default.
pub const RUN_SAMPLES_PER_SEC: u32 = 1024;
/// Flush interval `run` asks for by default.
pub const RUN_FLUSH: Duration = Duration::from_secs(1);
/// CPU samples per second per CPU `run` and node mode take by default: as `perf` and most
/// continuous profilers, a prime near 100, so the timer does not beat with the engine's own
/// periodic work.
pub const DEFAULT_CPU_HZ: u32 = 99;
/// The most CPU samples per second per CPU one may ask for.
pub const MAX_CPU_HZ: u32 = 10_000;

/// An observer's request: one sampling level and one flush level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Control probe and sampled batches per second per thread (0: every batch).
    sample: (u32, u32),
    /// Control probe and flush interval in milliseconds.
    flush: (u32, u32),
    /// CPU samples per second per CPU; 0: no CPU attribution.
    cpu_hz: u32,
}

impl Budget {
    /// The levels for at most `samples_per_sec` sampled batches per second per engine thread
    /// (`None`: every batch) and counts at most `flush` old. Rates and intervals between levels
    /// round to the level below the rate and below the interval.
    pub fn new(samples_per_sec: Option<u32>, flush: Duration) -> Result<Budget> {
        let sample = match samples_per_sec {
            None => SAMPLE_LEVELS[SAMPLE_LEVELS.len() - 1],
            Some(rate) => {
                let Some(level) = SAMPLE_LEVELS.iter().rev().find(|(_, r)| *r != 0 && *r <= rate) else {
                    bail!("--sample-rate {rate} is below the lowest level: use at least {}", SAMPLE_LEVELS[0].1);
                };
                *level
            }
        };
        let ms = flush.as_millis();
        let Some(&flush) = FLUSH_LEVELS.iter().find(|(_, l)| u128::from(*l) <= ms) else {
            let shortest = FLUSH_LEVELS[FLUSH_LEVELS.len() - 1].1;
            bail!("--flush-interval {flush:?} is shorter than the shortest level: use at least {shortest}ms");
        };
        Ok(Budget { sample, flush, cpu_hz: 0 })
    }

    /// This budget with CPU attribution at `hz` samples per second per CPU (0: off).
    pub fn with_cpu_hz(self, hz: u32) -> Result<Budget> {
        if hz > MAX_CPU_HZ {
            bail!("--cpu-hz {hz} is above {MAX_CPU_HZ} samples per second");
        }
        Ok(Budget { cpu_hz: hz, ..self })
    }

    /// CPU time one CPU sample stands for; `None` without CPU attribution.
    pub fn cpu_period(&self) -> Option<Duration> {
        (self.cpu_hz != 0).then(|| Duration::from_nanos(1_000_000_000 / u64::from(self.cpu_hz)))
    }

    /// Every probe this budget needs beyond the metric probes: its control probes, and the CPU
    /// slot probe when it attributes CPU.
    pub fn probes(&self) -> Vec<u32> {
        let mut probes = self.control_probes().to_vec();
        if self.cpu_hz != 0 {
            probes.extend(crate::kernel::probes::CPU_PROBES);
        }
        probes
    }

    /// `run`'s default.
    pub fn run_default() -> Budget {
        Budget::new(Some(RUN_SAMPLES_PER_SEC), RUN_FLUSH).unwrap_or(Budget {
            sample: SAMPLE_LEVELS[3],
            flush: FLUSH_LEVELS[1],
            cpu_hz: 0,
        })
    }

    /// The control probes to attach to.
    pub fn control_probes(&self) -> [u32; 2] {
        [self.sample.0, self.flush.0]
    }

    /// Sampled batches per second per engine thread; `None` for every batch.
    pub fn samples_per_sec(&self) -> Option<u32> {
        (self.sample.1 != 0).then_some(self.sample.1)
    }

    /// The flush interval.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.flush.1))
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.samples_per_sec() {
            Some(r) => write!(f, "{r} sampled batches/s per engine thread")?,
            None => write!(f, "every batch sampled")?,
        }
        write!(f, ", counts flushed every {} ms", self.flush.1)?;
        if self.cpu_hz != 0 {
            write!(f, ", CPU slots for {} Hz CPU samples", self.cpu_hz)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_down() {
        let b = Budget::new(Some(1000), Duration::from_millis(300)).expect("budget");
        assert_eq!(b.samples_per_sec(), Some(256));
        assert_eq!(b.flush_interval(), Duration::from_millis(250));
        let b = Budget::new(None, Duration::from_secs(60)).expect("budget");
        assert_eq!(b.samples_per_sec(), None);
        assert_eq!(b.flush_interval(), Duration::from_secs(2));
        assert!(Budget::new(Some(5), Duration::from_secs(1)).is_err());
        assert!(Budget::new(Some(64), Duration::from_millis(5)).is_err());
        assert_eq!(Budget::run_default().samples_per_sec(), Some(RUN_SAMPLES_PER_SEC));
        assert_eq!(Budget::run_default().flush_interval(), RUN_FLUSH);
        let cpu = b.with_cpu_hz(100).expect("budget");
        assert_eq!(cpu.cpu_period(), Some(Duration::from_millis(10)));
        assert!(cpu.probes().contains(&crate::kernel::probes::CPU_PROBES[0]));
        assert_eq!(b.cpu_period(), None);
        assert!(!b.probes().contains(&crate::kernel::probes::CPU_PROBES[0]));
        assert!(b.with_cpu_hz(MAX_CPU_HZ + 1).is_err());
    }
}
