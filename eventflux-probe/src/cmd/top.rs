//! `eventflux-probe top`: the flags; the loop, the sources and the screens are
//! `eventflux_probe::serve::top`'s.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eventflux_probe::config::{self, Settings};
use eventflux_probe::export::health::Thresholds;
use eventflux_probe::find::select::Selection;
use eventflux_probe::logging::LogFormat;
use eventflux_probe::serve::node::NodeOptions;
use eventflux_probe::serve::run::ServeOptions;
use eventflux_probe::serve::top::{Output, Source, TopOptions};

use super::flags::parse_duration;

/// How long `run`'s service inside `top` serves a finished target's values: until `top` ends.
const KEEP_LAST_VALUES: Duration = Duration::from_secs(365 * 24 * 3600);

/// `top`'s flags (its help text is the `Top` command's, in `main.rs`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine process to observe.
    #[arg(long, value_name = "PID", conflicts_with = "url")]
    pid: Option<u32>,
    /// Read a running `eventflux-probe run` or `node` at this address instead of attaching
    /// (`http://127.0.0.1:9469`).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Without --pid: only processes whose executable path matches this glob; repeat.
    #[arg(long = "exe", value_name = "GLOB", conflicts_with_all = ["pid", "url"])]
    exe: Vec<String>,
    /// Time between refreshes (default 1s).
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
    /// Rates and latency quantiles cover this much time (default 5s): counts arrive once per
    /// flush interval, so a rate over one second is mostly the luck of the flushes.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "5s")]
    window: Duration,
    /// Print one frame as plain text, once the window is covered, and exit.
    #[arg(long, conflicts_with = "json")]
    once: bool,
    /// Print one JSON document (one line) per refresh, until stopped or the target exits.
    #[arg(long)]
    json: bool,
    /// Columns of the --once frame (default: the terminal's, else 132; wider if the query table
    /// needs it).
    #[arg(long, value_name = "N")]
    width: Option<u16>,
    /// Configuration file (TOML; docs/configuration.md): sampling and health thresholds.
    #[arg(long, value_name = "FILE", env = "EVENTFLUX_PROBE_CONFIG")]
    config: Option<PathBuf>,
    /// Log level (default warn; RUST_LOG overrides).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format: pretty (default) or json.
    #[arg(long, value_name = "FORMAT", value_parser = LogFormat::from_str)]
    log_format: Option<LogFormat>,
    /// Where logs go: a file path, stderr or stdout. Full-screen, logs are off unless this
    /// names a file (a line on the terminal would tear the screen).
    #[arg(long, value_name = "WHERE")]
    log_output: Option<String>,
    #[command(flatten)]
    budget: super::flags::BudgetArgs,
}

impl Args {
    fn output(&self) -> Output {
        if self.once {
            Output::Once
        } else if self.json {
            Output::Json
        } else {
            Output::Screen
        }
    }

    fn layer(&self) -> config::Layer {
        let mut l = config::Layer::default();
        l.logging.format = self.log_format;
        l.logging.level = Some(self.log_level.clone().unwrap_or_else(|| "warn".into()));
        l.logging.output = self.log_output.as_deref().map(eventflux_probe::logging::LogOutput::from);
        l.sampling = self.budget.sampling_layer();
        l.lifecycle.drain = Some(Duration::ZERO);
        l
    }
}

/// The settings of this invocation, from every layer.
pub fn settings(args: &Args) -> Result<Settings> {
    super::flags::load_settings(args.config.as_deref(), args.layer())
}

/// Full-screen, logs go to a file or nowhere.
pub fn log_options(args: &Args, settings: &Settings) -> Option<(String, Option<String>)> {
    let to_file = matches!(settings.logging.output, eventflux_probe::logging::LogOutput::File(_));
    if args.output() == Output::Screen && !to_file {
        return None;
    }
    let rust_log = if args.log_level.is_some() { None } else { std::env::var("RUST_LOG").ok() };
    Some((settings.logging.level.clone(), rust_log))
}

pub fn run(args: &Args, settings: Settings) -> Result<()> {
    eventflux_probe::serve::top::check_terminal(args.output())?;
    if args.window < args.interval {
        bail!(
            "--window ({:?}) must be at least --interval ({:?}): rates need two readings",
            args.window,
            args.interval
        );
    }
    for g in &args.exe {
        eventflux_probe::find::select::check_glob("--exe", g).map_err(anyhow::Error::msg)?;
    }
    let budget = super::flags::settings_budget(&settings)?;
    let layout =
        eventflux_probe::export::buckets::Layout::new(&settings.metrics.buckets, &settings.metrics.stage_buckets);
    let source = match (&args.url, args.pid) {
        (Some(url), _) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--url `{url}` is not an http:// or https:// address (e.g. http://127.0.0.1:9469)");
            }
            Source::Url(url.clone())
        }
        (None, Some(pid)) => Source::Pid(ServeOptions {
            pid,
            budget,
            listen: None,
            http_idle_timeout: settings.http.idle_timeout,
            max_series: settings.limits.max_series,
            layout,
            // The target's last values stay on screen: the service must not exit under them.
            // (Node mode keeps its grace period: it forgets engines that exited.)
            grace_period: KEEP_LAST_VALUES,
            follow: false,
            drain: settings.lifecycle.drain,
            health: Thresholds::from(&settings.health),
            otlp: None,
        }),
        (None, None) => Source::Node(NodeOptions {
            listen: None,
            http_idle_timeout: settings.http.idle_timeout,
            budget,
            max_series: settings.limits.max_series,
            max_series_per_process: 500,
            layout,
            grace_period: settings.lifecycle.grace_period,
            drain: settings.lifecycle.drain,
            scan_interval: Duration::from_millis(500),
            health: Thresholds::from(&settings.health),
            select: Selection { exe: args.exe.clone(), pids: Vec::new(), containers: Vec::new() },
            otlp: None,
        }),
    };
    let width = args.width.unwrap_or_else(|| {
        use std::io::IsTerminal;
        let terminal = std::io::stdout().is_terminal().then(|| ratatui::crossterm::terminal::size().ok()).flatten();
        terminal.map_or(132, |(w, _)| w)
    });
    let options = TopOptions { refresh: args.interval, window: args.window, output: args.output(), width };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(eventflux_probe::serve::top::run(source, options))
}
