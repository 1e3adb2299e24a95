//! `eventflux-probe node`: every EventFlux process of the host (a Kubernetes DaemonSet's
//! mode). Settings come from the same layers as `run` (docs/configuration.md: the config file,
//! `EVENTFLUX_PROBE_*` variables, these flags); the service is `eventflux_probe::serve::node::serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use eventflux_probe::config::{self, Settings};
use eventflux_probe::export::health::Thresholds;
use eventflux_probe::find::select::Selection;
use eventflux_probe::logging::LogFormat;
use eventflux_probe::serve::node::NodeOptions;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML; docs/configuration.md). Also EVENTFLUX_PROBE_CONFIG.
    #[arg(long, value_name = "FILE", env = "EVENTFLUX_PROBE_CONFIG")]
    config: Option<PathBuf>,
    /// Address for the HTTP endpoints; default 127.0.0.1:9469 (a DaemonSet: 0.0.0.0:9469).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Only processes whose executable path (as the process sees it) matches this glob
    /// (`*` matches `/` too); repeat for several. Default: every process with eventflux probes.
    #[arg(long = "exe", value_name = "GLOB")]
    exe: Vec<String>,
    /// Only these processes (host pids); repeat for several.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Only processes in a container whose id or cgroup path matches this glob; repeat.
    #[arg(long = "container", value_name = "GLOB")]
    containers: Vec<String>,
    /// Label sets per metric over all processes (default 2000).
    #[arg(long, value_name = "N", value_parser = super::run::parse_max_series)]
    max_series: Option<usize>,
    /// Label sets per metric and process (default 500).
    #[arg(long, value_name = "N", value_parser = super::run::parse_max_series, default_value_t = 500)]
    max_series_per_process: usize,
    /// How long a finished process's series stay before they are removed (default 60s).
    #[arg(long, value_name = "D", value_parser = config::parse_duration)]
    grace_period: Option<Duration>,
    /// How often /proc is scanned for new processes (default 500ms).
    #[arg(long, value_name = "D", value_parser = config::parse_duration, default_value = "500ms")]
    scan_interval: Duration,
    /// On SIGTERM, answer /ready with 503 this long before detaching and exiting (default 5s).
    #[arg(long, value_name = "D", value_parser = config::parse_duration)]
    drain: Option<Duration>,
    /// Log level: a tracing filter such as `info` (default; RUST_LOG overrides).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format: pretty (default) or json.
    #[arg(long, value_name = "FORMAT", value_parser = LogFormat::from_str)]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    budget: super::flags::BudgetArgs,
    #[command(flatten)]
    buckets: super::flags::BucketArgs,
}

impl Args {
    fn layer(&self) -> config::Layer {
        let mut l = config::Layer::default();
        l.http.listen = self.listen;
        l.limits.max_series = self.max_series;
        l.metrics = self.buckets.metrics_layer();
        l.lifecycle.grace_period = self.grace_period;
        l.lifecycle.drain = self.drain;
        l.logging.level = self.log_level.clone();
        l.logging.format = self.log_format;
        l.sampling = self.budget.sampling_layer();
        l
    }
}

/// Whether `--log-level` was given (it then beats `RUST_LOG`).
pub fn log_level_flag(args: &Args) -> bool {
    args.log_level.is_some()
}

pub fn settings(args: &Args) -> Result<Settings> {
    super::flags::load_settings(args.config.as_deref(), args.layer())
}

pub fn run(args: &Args, settings: Settings) -> Result<()> {
    if args.scan_interval < Duration::from_millis(50) {
        anyhow::bail!("--scan-interval must be at least 50ms");
    }
    for g in &args.exe {
        eventflux_probe::find::select::check_glob("--exe", g).map_err(anyhow::Error::msg)?;
    }
    for g in &args.containers {
        eventflux_probe::find::select::check_glob("--container", g).map_err(anyhow::Error::msg)?;
    }
    let budget = super::flags::settings_budget(&settings)?;
    let options = NodeOptions {
        listen: Some(settings.http.listen),
        http_idle_timeout: settings.http.idle_timeout,
        budget,
        max_series: settings.limits.max_series,
        max_series_per_process: args.max_series_per_process,
        layout: super::flags::bucket_layout(&settings),
        grace_period: settings.lifecycle.grace_period,
        drain: settings.lifecycle.drain,
        scan_interval: args.scan_interval,
        health: Thresholds::from(&settings.health),
        select: Selection { exe: args.exe.clone(), pids: args.pids.clone(), containers: args.containers.clone() },
        otlp: super::flags::otlp_options(&settings.otlp)?,
    };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(eventflux_probe::serve::node::serve(options, None))
}
