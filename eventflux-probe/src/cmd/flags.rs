//! Flags shared by the commands that attach.

use anyhow::Result;
use eventflux_probe::kernel::budget::Budget;

/// What this observer asks of the engine (see `eventflux_probe::kernel::budget`).
#[derive(Debug, clap::Args)]
pub struct BudgetArgs {
    /// Sampled batches per second per engine thread (16, 64, 256, 1024, 4096 or 16384; other
    /// values round down to one of these). Latency histograms come from the sampled batches.
    #[arg(long, value_name = "N")]
    pub sample_rate: Option<u32>,
    /// Time every batch instead of sampling: a deep dive that costs the engine several probe
    /// hits per batch while attached.
    #[arg(long, conflicts_with = "sample_rate")]
    pub every_batch: bool,
    /// How often the engine hands over its counts (10ms to 2s; rounds down to 10, 20, 50, 100,
    /// 250, 500 ms, 1 s or 2 s; default 1s). Counters lag by at most this much.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub flush_interval: Option<std::time::Duration>,
    /// CPU samples per second on each CPU for CPU attribution per query and stage
    /// (`query_cpu_seconds_total`; default 99, 0 turns it off; at most 10000).
    #[arg(long, value_name = "HZ")]
    pub cpu_hz: Option<u32>,
}

/// How `/metrics` shows latency histograms (`run` and `node`).
#[derive(Debug, clap::Args)]
pub struct BucketArgs {
    /// Classic buckets of batch latency and component operations in the text format:
    /// `default` (twelve, powers of 4 from 2^-20 s to 4 s), `full` (every kernel bucket), or
    /// bounds in seconds (`0.001,0.01,0.1`; each moves up to the nearest kernel boundary).
    #[arg(long, value_name = "SPEC", value_parser = parse_buckets)]
    pub buckets: Option<eventflux_probe::config::Buckets>,
    /// Classic buckets of stage latencies: `default` (five, powers of 32 from 2^-20 s to 1 s),
    /// `full`, or bounds in seconds.
    #[arg(long, value_name = "SPEC", value_parser = parse_buckets)]
    pub stage_buckets: Option<eventflux_probe::config::Buckets>,
}

impl BucketArgs {
    /// The `[metrics]` keys these flags set.
    pub fn metrics_layer(&self) -> eventflux_probe::config::MetricsLayer {
        eventflux_probe::config::MetricsLayer {
            buckets: self.buckets.clone(),
            stage_buckets: self.stage_buckets.clone(),
        }
    }
}

/// The classic histograms' buckets the settings ask for; says where given bounds moved to.
pub fn bucket_layout(settings: &eventflux_probe::config::Settings) -> eventflux_probe::export::buckets::Layout {
    let m = &settings.metrics;
    for (key, b) in [("buckets", &m.buckets), ("stage_buckets", &m.stage_buckets)] {
        for (asked, shown) in eventflux_probe::export::buckets::moved(b) {
            tracing::info!(key, asked, shown, "a bucket bound moved up to the nearest kernel boundary");
        }
    }
    eventflux_probe::export::buckets::Layout::new(&m.buckets, &m.stage_buckets)
}

fn parse_buckets(s: &str) -> Result<eventflux_probe::config::Buckets, String> {
    s.parse()
}

/// The settings from every layer: defaults, the config file, `EVENTFLUX_PROBE_*` variables,
/// then `flags` (docs/configuration.md).
pub fn load_settings(
    config_file: Option<&std::path::Path>,
    flags: eventflux_probe::config::Layer,
) -> Result<eventflux_probe::config::Settings> {
    let settings = eventflux_probe::config::load(config_file, |k| std::env::var(k).ok(), flags)?;
    // Before anything can print it (the environment's were registered at start).
    eventflux_probe::secrets::register_url(&settings.otlp.endpoint);
    eventflux_probe::secrets::register_url(&settings.otlp.metrics_endpoint);
    Ok(settings)
}

/// The budget the settings ask for.
pub fn settings_budget(settings: &eventflux_probe::config::Settings) -> Result<Budget> {
    let s = &settings.sampling;
    Budget::new(if s.every_batch { None } else { Some(s.rate) }, s.flush_interval)?.with_cpu_hz(s.cpu_hz)
}

impl BudgetArgs {
    /// The `[sampling]` keys these flags set, as the highest configuration layer (`run` and
    /// `node`). A rate on the command line beats `every_batch = true` from below, as flags do.
    pub fn sampling_layer(&self) -> eventflux_probe::config::SamplingLayer {
        eventflux_probe::config::SamplingLayer {
            rate: self.sample_rate,
            every_batch: if self.every_batch {
                Some(true)
            } else if self.sample_rate.is_some() {
                Some(false)
            } else {
                None
            },
            flush_interval: self.flush_interval,
            cpu_hz: self.cpu_hz,
        }
    }

    /// The budget asked for, with `default_rate` when no rate was given.
    pub fn budget(&self, default_rate: Option<u32>) -> Result<Budget> {
        let rate = if self.every_batch { None } else { self.sample_rate.or(default_rate) };
        Budget::new(rate, self.flush_interval.unwrap_or(eventflux_probe::kernel::budget::RUN_FLUSH))
    }
}

/// A duration flag that must not be zero: `10s`, `500ms`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match eventflux_probe::config::parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}` is not a positive duration")),
        d => Ok(d),
    }
}

/// The OTLP export `[otlp]` and the standard `OTEL_*` variables ask for, if any.
pub fn otlp_options(
    o: &eventflux_probe::config::Otlp,
) -> anyhow::Result<Option<eventflux_probe::export::otlp::Options>> {
    eventflux_probe::export::otlp::Options::resolve(o, |k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}
