//! `cargo xtask`: the project's tasks, so that a fresh machine and CI run exactly what a
//! developer runs.
//!
//! - `setup`: toolchain pieces, bpf-linker, Debian packages, tracefs. Idempotent; fast when done.
//! - `test`: builds the workspace binaries, then runs every test against the real kernel.
//! - `bench`: prints the benchmark figures (ratios against a baseline measured in the same run).
//! - `demo`: the demo runtime with probes attached, and what they saw.
//! - `dashboards`: writes (or checks) the Grafana dashboards from their specification.
//! - `overview-png`: redraws the README's picture of the Overview dashboard from a real run.
//! - `flamegraph`: redraws the README's flame graph from a real profile of the demo.
//! - `top-png`: redraws the README's picture of `eventflux-probe top` from a real terminal.
//! - `modules`: prints the module graph by stage and fails on an import cycle.

mod bench;
mod dashboards;
mod demo;
mod flamegraph;
mod modules;
mod overview;
mod setup;
mod top_png;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Make this machine ready: rust-src on nightly, bpf-linker, Debian packages, tracefs.
    Setup,
    /// Check formatting and lints, build the workspace binaries (release), run every test.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy -D warnings`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Run the benchmarks and print their figures.
    Bench {
        /// Events per demo run in the throughput benchmark.
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        /// Alternating pairs of runs (with markers, without).
        #[arg(long, default_value_t = 21)]
        rounds: usize,
    },
    /// Start the demo runtime with probes attached and show what they measured.
    Demo {
        /// Input events the demo produces.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Input events per second.
        #[arg(long, default_value_t = 250_000)]
        rate: u64,
    },
    /// Write dashboards/grafana/*.json from xtask/src/dashboards.rs.
    Dashboards {
        /// Only check that the committed files are what the specification gives.
        #[arg(long)]
        check: bool,
    },
    /// Redraw docs/img/overview.png: the Overview dashboard's panels plotted from the
    /// end-to-end test's Prometheus (needs root, Debian's prometheus, python3 with matplotlib).
    OverviewPng,
    /// Redraw docs/img/flamegraph.svg: a profile of the demo's expensive query (needs root).
    Flamegraph,
    /// Redraw docs/img/top.png: `eventflux-probe top` on the demo, captured from tmux (needs
    /// root, tmux, python3 with Pillow).
    TopPng,
    /// Print the observer's stages and what each uses; fail on any module import cycle.
    Modules,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { no_lint, cargo_args } => test(!no_lint, &cargo_args),
        Task::Bench { events, rounds } => bench::run(events, rounds),
        Task::Demo { events, rate } => demo::run(events, rate),
        Task::Dashboards { check } => dashboards::run(check),
        Task::OverviewPng => overview::run(),
        Task::Flamegraph => flamegraph::run(),
        Task::TopPng => top_png::run(),
        Task::Modules => modules::run(true),
    }
}

/// The workspace root (this crate's parent).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command in the workspace root, echoing it, and fails if it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd.current_dir(root()).status().with_context(|| format!("cannot run {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo build --release` of every workspace binary.
pub fn build_release() -> Result<()> {
    sh(Command::new("cargo").args(["build", "--release", "--workspace", "--bins"]))
}

fn test(lint: bool, extra: &[String]) -> Result<()> {
    if lint {
        sh(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
        sh(Command::new("cargo").args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        dashboards::run(true)?;
        modules::run(false)?;
    }
    build_release()?;
    sh(Command::new("cargo").args(["test", "--release", "--workspace"]).args(extra))
}
