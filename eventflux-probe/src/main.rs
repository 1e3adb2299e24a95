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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List(args) => cmd::list::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `list | head` closing the pipe early is not an error worth a message.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventflux-probe: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
