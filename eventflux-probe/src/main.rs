//! The `eventflux-probe` command line. Each subcommand lives in its own module under `cmd/`;
//! this file only parses arguments and turns errors into one line and an exit code.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// eBPF observer for EventFlux: attaches to the engine's USDT probes without restarting it.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the USDT probes in a binary or a running process.
    List(cmd::list::Args),
    /// Attach to a running engine and serve its metrics (Prometheus) until stopped.
    Run(cmd::run::Args),
    /// Attach for a while and print latency histograms per query and stage.
    Latency(cmd::latency::Args),
    /// Print the next sampled batches as span trees (durations, event counts).
    Trace(cmd::trace::Args),
    /// Observe every EventFlux process of this host, as they come and go (a DaemonSet).
    Node(cmd::node::Args),
    /// Sample the engine's CPU and write a profile split by query and stage (flame graph,
    /// pprof, folded stacks).
    Profile(cmd::profile::Args),
    /// The engines at a glance, live in the terminal; costs the engine what `run` costs at its
    /// defaults.
    ///
    /// Rates, sampled latency, CPU and health per engine, query and stream, and what the
    /// observer's kernel programs cost, refreshed every second. With --pid, or without it
    /// (every EventFlux engine of this host, as `node` finds them), top runs the `run` service
    /// inside itself without its HTTP endpoints: its cost to the engine is that of `run` at its
    /// defaults (the budget flags below change it as they do for `run`). With --url it attaches
    /// nothing and reads a running `run` or `node`. Keys: q quit, ↑↓ select, enter a query's
    /// stages, s/S sort, r reverse, / filter, p pause. docs/top.md says what each figure is.
    Top(cmd::top::Args),
}

fn main() -> ExitCode {
    // Before anything can print one of them (docs/configuration.md, "Secrets").
    eventflux_probe::secrets::register_from_env();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List(args) => default_logging().and_then(|()| cmd::list::run(&args)),
        Command::Run(args) => cmd::run::settings(&args).and_then(|settings| {
            let rust_log = if cmd::run::log_level_flag(&args) { None } else { std::env::var("RUST_LOG").ok() };
            eventflux_probe::logging::init_with(settings.logging.options(), rust_log)?;
            cmd::run::run(&args, settings)
        }),
        Command::Latency(args) => default_logging().and_then(|()| cmd::latency::run(&args)),
        Command::Trace(args) => default_logging().and_then(|()| cmd::trace::run(&args)),
        Command::Profile(args) => default_logging().and_then(|()| cmd::profile::run(&args)),
        Command::Node(args) => cmd::node::settings(&args).and_then(|settings| {
            let rust_log = if cmd::node::log_level_flag(&args) { None } else { std::env::var("RUST_LOG").ok() };
            eventflux_probe::logging::init_with(settings.logging.options(), rust_log)?;
            cmd::node::run(&args, settings)
        }),
        Command::Top(args) => cmd::top::settings(&args).and_then(|settings| {
            if let Some((level, rust_log)) = cmd::top::log_options(&args, &settings) {
                let mut options = settings.logging.options();
                options.level = &level;
                eventflux_probe::logging::init_with(options, rust_log)?;
            }
            cmd::top::run(&args, settings)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `list | head` closing the pipe early is not an error worth a message.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventflux-probe: error: {}", eventflux_probe::secrets::scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, pretty; RUST_LOG=debug for more. Errors are printed once, by `main`, not
/// logged.
fn default_logging() -> anyhow::Result<()> {
    Ok(eventflux_probe::logging::init(eventflux_probe::config::Settings::default().logging.options())?)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let kind = c
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| c.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind));
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}
