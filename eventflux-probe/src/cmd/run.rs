//! `eventflux-probe run --pid PID`: the daemon for one engine. Settings come from defaults, a
//! config file, `EVENTFLUX_PROBE_*` variables and these flags, in rising precedence
//! (docs/configuration.md); the service itself is `eventflux_probe::serve::run::serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use eventflux_probe::config::{self, Settings};
use eventflux_probe::export::health::Thresholds;
use eventflux_probe::logging::LogFormat;
use eventflux_probe::serve::run::ServeOptions;

use super::flags::parse_duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine process to observe.
    #[arg(long, value_name = "PID")]
    pid: u32,
    /// Configuration file (TOML; docs/configuration.md). Also EVENTFLUX_PROBE_CONFIG.
    #[arg(long, value_name = "FILE", env = "EVENTFLUX_PROBE_CONFIG")]
    config: Option<PathBuf>,
    /// Address for the HTTP endpoints (/metrics, /health, /ready, /live); default
    /// 127.0.0.1:9469. Use 0.0.0.0:9469 to be scraped from elsewhere.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Label sets per metric before further ones are folded into one `overflow` series
    /// (default 2000).
    #[arg(long, value_name = "N", value_parser = parse_max_series)]
    max_series: Option<usize>,
    /// Close an HTTP connection after this long without traffic (default 10s).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    http_idle_timeout: Option<Duration>,
    /// After the target exits, serve its last values this long, then exit (default 60s).
    #[arg(long, value_name = "D", value_parser = config::parse_duration)]
    grace_period: Option<Duration>,
    /// After the target exits, wait for a new process of the same executable and attach to it.
    #[arg(long, overrides_with = "no_follow")]
    follow: bool,
    /// Do not follow (overrides `follow = true` from the config file or the environment).
    #[arg(long, overrides_with = "follow")]
    no_follow: bool,
    /// On SIGTERM, answer /ready with 503 this long before detaching and exiting (default 5s).
    #[arg(long, value_name = "D", value_parser = config::parse_duration)]
    drain: Option<Duration>,
    /// Log level: a tracing filter such as `info` or `eventflux_probe=debug` (default info;
    /// RUST_LOG overrides).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format: pretty (default) or json (one object per line).
    #[arg(long, value_name = "FORMAT", value_parser = LogFormat::from_str)]
    log_format: Option<LogFormat>,
    /// Where logs go: stderr (default), stdout or a file path (appended to).
    #[arg(long, value_name = "WHERE")]
    log_output: Option<String>,
    #[command(flatten)]
    budget: super::flags::BudgetArgs,
    #[command(flatten)]
    buckets: super::flags::BucketArgs,
}

/// A cap on label sets: at least 1.
pub(super) fn parse_max_series(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (the cap on label sets per metric)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a number of series")),
    }
}

impl Args {
    /// The flags as the highest configuration layer.
    fn layer(&self) -> config::Layer {
        let mut l = config::Layer::default();
        l.http.listen = self.listen;
        l.http.idle_timeout = self.http_idle_timeout;
        l.limits.max_series = self.max_series;
        l.metrics = self.buckets.metrics_layer();
        l.lifecycle.grace_period = self.grace_period;
        l.lifecycle.follow = if self.follow {
            Some(true)
        } else if self.no_follow {
            Some(false)
        } else {
            None
        };
        l.lifecycle.drain = self.drain;
        l.logging.level = self.log_level.clone();
        l.logging.format = self.log_format;
        l.logging.output = self.log_output.as_deref().map(eventflux_probe::logging::LogOutput::from);
        l.sampling = self.budget.sampling_layer();
        l
    }
}

/// Whether `--log-level` was given: then it beats `RUST_LOG`, as flags beat the environment.
pub fn log_level_flag(args: &Args) -> bool {
    args.log_level.is_some()
}

/// The settings of this invocation, from every layer.
pub fn settings(args: &Args) -> Result<Settings> {
    super::flags::load_settings(args.config.as_deref(), args.layer())
}

pub fn run(args: &Args, settings: Settings) -> Result<()> {
    let budget = super::flags::settings_budget(&settings)?;
    let options = ServeOptions {
        pid: args.pid,
        budget,
        listen: Some(settings.http.listen),
        http_idle_timeout: settings.http.idle_timeout,
        max_series: settings.limits.max_series,
        layout: super::flags::bucket_layout(&settings),
        grace_period: settings.lifecycle.grace_period,
        follow: settings.lifecycle.follow,
        drain: settings.lifecycle.drain,
        health: Thresholds::from(&settings.health),
        otlp: super::flags::otlp_options(&settings.otlp)?,
    };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(eventflux_probe::serve::run::serve(options, None))
}
