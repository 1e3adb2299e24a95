//! The control levels observers raised, read from the control probes' semaphores: how often the
//! flusher hands counts over, and how many batches a second the spans sample. One place, so
//! that both follow the same rule (the most demanding level raised wins) from the same table.

use std::time::Duration;

use eventflux_abi::{DEFAULT_FLUSH_MS, DEFAULT_SAMPLES_PER_SEC, FLUSH_LEVELS, SAMPLE_LEVELS};

use crate::points::SEMAPHORES;

/// The value of the most demanding level raised among `levels` (least demanding first), else
/// `default`.
fn raised(levels: &[(u32, u32)], default: u32) -> u32 {
    levels
        .iter()
        .rev()
        .find(|(id, _)| SEMAPHORES.get(*id as usize).is_some_and(|s| s.is_active()))
        .map_or(default, |(_, value)| *value)
}

/// The flush interval observers asked for: the shortest raised level.
pub fn flush_interval() -> Duration {
    Duration::from_millis(u64::from(raised(&FLUSH_LEVELS, DEFAULT_FLUSH_MS)))
}

/// Sampled batches per second per thread that observers asked for; 0 means every batch.
pub fn samples_per_sec() -> u32 {
    raised(&SAMPLE_LEVELS, DEFAULT_SAMPLES_PER_SEC)
}
