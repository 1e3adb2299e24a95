//! The range checks a key of the table names (`check positive;`): each says in a few words what
//! the value must be.

use std::time::Duration;

use eventflux_abi::{FLUSH_LEVELS, SAMPLE_LEVELS};

pub(crate) use crate::logging::log_output;

pub(crate) fn filter_directive(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("is empty (expected e.g. info or eventflux_probe=debug)".into());
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|e| format!("`{level}` is not a log filter ({e}); expected e.g. info or eventflux_probe=debug"))
}

pub(crate) fn positive(d: &Duration) -> Result<(), String> {
    if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(()) }
}

pub(crate) fn at_least_one<T: PartialOrd + From<u8>>(n: &T) -> Result<(), String> {
    if *n < T::from(1) { Err("must be at least 1".into()) } else { Ok(()) }
}

/// The engine's lowest sampling level (batches per second; 0 is the every-batch level).
pub(crate) fn lowest_sample_level() -> u32 {
    SAMPLE_LEVELS.iter().map(|&(_, rate)| rate).filter(|&rate| rate != 0).min().unwrap_or(1)
}

/// The engine's shortest flush level, in milliseconds.
pub(crate) fn shortest_flush_level() -> u32 {
    FLUSH_LEVELS.iter().map(|&(_, ms)| ms).min().unwrap_or(1)
}

/// A rate below every level is one `Budget::new` refuses; higher ones round down to a level.
pub(crate) fn sample_rate(rate: &u32) -> Result<(), String> {
    let lowest = lowest_sample_level();
    if *rate < lowest { Err(format!("{rate} is below the lowest level, {lowest}")) } else { Ok(()) }
}

/// An interval shorter than every level is one `Budget::new` refuses (it compares whole
/// milliseconds); longer ones round down to a level, the longest being 2s.
pub(crate) fn flush_interval(d: &Duration) -> Result<(), String> {
    let shortest = shortest_flush_level();
    if d.as_millis() >= u128::from(shortest) {
        return Ok(());
    }
    // Duration's Debug writes zero as `0ns`, an odd way to write what the user wrote as `0s`.
    let written = if d.is_zero() { "0s".to_owned() } else { format!("{d:?}") };
    Err(format!("{written} is below the shortest level, {shortest}ms"))
}

pub(crate) fn cpu_hz(hz: &u32) -> Result<(), String> {
    if *hz <= crate::kernel::budget::MAX_CPU_HZ {
        Ok(())
    } else {
        Err(format!("{hz} is above {} samples per second", crate::kernel::budget::MAX_CPU_HZ))
    }
}

pub(crate) fn ratio(r: &f64) -> Result<(), String> {
    if (0.0..=1.0).contains(r) { Ok(()) } else { Err(format!("must be between 0 and 1, found {r}")) }
}

pub(crate) fn non_negative(r: &f64) -> Result<(), String> {
    if r.is_finite() && *r >= 0.0 { Ok(()) } else { Err(format!("must be a finite number of at least 0, found {r}")) }
}

pub(crate) fn growth_factor(r: &f64) -> Result<(), String> {
    // A state that never shrank ends at least at its starting size: below 1, every such state,
    // however steady, would count as grown.
    if r.is_finite() && *r >= 1.0 { Ok(()) } else { Err(format!("must be a finite factor of at least 1, found {r}")) }
}
