//! The control levels: what an observer can ask of the engine by attaching to a control probe,
//! and what the engine does when nobody asked.

use crate::table::probe;

/// Sampling levels: (control probe, sampled batches per second per engine thread; 0 = every
/// batch), least demanding first. The engine uses the most demanding level raised.
pub const SAMPLE_LEVELS: [(u32, u32); 7] = [
    (probe::ctl_samples_16::ID, 16),
    (probe::ctl_samples_64::ID, 64),
    (probe::ctl_samples_256::ID, 256),
    (probe::ctl_samples_1024::ID, 1024),
    (probe::ctl_samples_4096::ID, 4096),
    (probe::ctl_samples_16384::ID, 16384),
    (probe::ctl_samples_all::ID, 0),
];

/// Flush levels: (control probe, interval in milliseconds), least demanding first. The engine
/// uses the shortest interval raised.
pub const FLUSH_LEVELS: [(u32, u32); 8] = [
    (probe::ctl_flush_2000ms::ID, 2000),
    (probe::ctl_flush_1000ms::ID, 1000),
    (probe::ctl_flush_500ms::ID, 500),
    (probe::ctl_flush_250ms::ID, 250),
    (probe::ctl_flush_100ms::ID, 100),
    (probe::ctl_flush_50ms::ID, 50),
    (probe::ctl_flush_20ms::ID, 20),
    (probe::ctl_flush_10ms::ID, 10),
];

/// Sampled batches per second per engine thread when no observer raised a sampling level
/// (e.g. a bare bpftrace one-liner on the sample probes).
pub const DEFAULT_SAMPLES_PER_SEC: u32 = 256;

/// Flush interval when no observer raised a flush level.
pub const DEFAULT_FLUSH_MS: u32 = 1000;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::table::{Class, PROBES};
    use std::string::ToString;

    #[test]
    fn level_tables_match_the_probe_names() {
        for (id, per_sec) in SAMPLE_LEVELS {
            let name = probe::NAMES[id as usize];
            let want = if per_sec == 0 { "all".into() } else { per_sec.to_string() };
            assert_eq!(name.strip_prefix("ctl_samples_"), Some(want.as_str()), "{name}");
        }
        for (id, ms) in FLUSH_LEVELS {
            let name = probe::NAMES[id as usize];
            assert_eq!(
                name.strip_prefix("ctl_flush_").and_then(|n| n.strip_suffix("ms")),
                Some(ms.to_string().as_str())
            );
        }
        let controls = PROBES.iter().filter(|p| p.class == Class::Control).count();
        assert_eq!(controls, SAMPLE_LEVELS.len() + FLUSH_LEVELS.len(), "every control probe is a level");
    }
}
