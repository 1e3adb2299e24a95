//! `eventflux-probe profile --pid PID`: a CPU profile of the engine split by query and stage.
//! Samples every CPU for `--duration` (or until Ctrl-C or the target exits), keeps the target's
//! samples with their stacks under the query and stage each thread was executing, symbolizes
//! them while the target still runs, and writes folded stacks, pprof or a flame graph SVG.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use eventflux_probe::collect::stacks::{Filter, Profile};
use eventflux_probe::kernel::budget::{DEFAULT_CPU_HZ, MAX_CPU_HZ};
use eventflux_probe::serve::daemon::Daemon;
use eventflux_probe_common::{Stage, probe};

use super::flags;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Folded stacks, one line per stack with its sample count (flamegraph.pl, inferno,
    /// speedscope read it).
    Folded,
    /// A pprof protobuf (`go tool pprof`, pprof.me, Grafana Pyroscope read it); samples carry
    /// `query_id` and `stage` labels.
    Pprof,
    /// A flame graph (SVG, interactive in a browser).
    Svg,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine process to profile.
    #[arg(long, value_name = "PID")]
    pid: u32,
    /// Only samples of this query (its name), or `none` for those outside any query.
    #[arg(long, value_name = "ID")]
    query: Option<String>,
    /// Only samples in this stage: ingest, filter, window, aggregate, emit, other (the query's
    /// own code between stages) or none.
    #[arg(long, value_name = "STAGE")]
    stage: Option<String>,
    /// How long to sample (10s, 500ms, 2m); Ctrl-C stops early.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = flags::parse_duration)]
    duration: Duration,
    /// Samples per second on each CPU (at most 10000).
    #[arg(long, value_name = "HZ", default_value_t = DEFAULT_CPU_HZ)]
    hz: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Folded)]
    format: Format,
    /// Write here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Stage names `--stage` accepts.
fn stage_names() -> Vec<&'static str> {
    Stage::ALL.iter().map(|s| s.label()).chain(["other", "none"]).collect()
}

pub fn run(args: &Args) -> Result<()> {
    if args.hz == 0 || args.hz > MAX_CPU_HZ {
        bail!("--hz {} is out of range: use 1 to {MAX_CPU_HZ} samples per second", args.hz);
    }
    if let Some(s) = &args.stage
        && !stage_names().contains(&s.as_str())
    {
        bail!("unknown stage `{s}`: use one of {}", stage_names().join(", "));
    }
    if args.output.is_none() && args.format != Format::Folded && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        let name =
            clap::ValueEnum::to_possible_value(&args.format).map(|v| v.get_name().to_owned()).unwrap_or_default();
        bail!("--format {name} is binary or long: write it to a file with --output FILE");
    }
    // An unwritable output fails now, not after sampling for a minute; a file is created only
    // once there is a profile to write.
    if let Some(path) = &args.output {
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if !existed {
            let _ = std::fs::remove_file(path);
        }
    }
    eventflux_probe::kernel::privileges::check()?;
    let (target, binaries) = eventflux_probe::find::eventflux_binaries(args.pid)?;
    let mut probes = vec![probe::stream_register::ID, probe::query_register::ID, probe::query_unregister::ID];
    probes.extend(eventflux_probe::kernel::probes::CPU_PROBES);
    let period = Duration::from_nanos(1_000_000_000 / u64::from(args.hz));
    let daemon = Daemon::load_profiling(&probes)?;
    daemon.sample_cpu(period)?;
    let attached = daemon.attach_found(target, &binaries)?;
    // Taken now, while it runs: a target that exits mid-profile is symbolized from it.
    let layout = eventflux_probe::collect::stacks::Layout::capture(args.pid)?;
    eprintln!(
        "Sampling pid {} at {} Hz per CPU for {:?} (Ctrl-C stops early); engine threads mark their query and stage from their next batch.",
        args.pid, args.hz, args.duration
    );
    let started = Instant::now();
    let start_unix_ns = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    if runtime.block_on(daemon.collect(Some(args.duration), &attached.target)).is_some() {
        eprintln!(
            "eventflux-probe: warning: process {} ended after {:.1}s of the {:?} asked for: writing the samples taken until then",
            args.pid,
            started.elapsed().as_secs_f64(),
            args.duration
        );
    }
    let filter = Filter { query: args.query.clone(), stage: args.stage.clone() };
    let places = daemon.cpu_places(args.pid)?;
    if !places.keys().any(|p| filter.keeps(p)) {
        daemon.detach_all();
        let mut known: Vec<String> = places.keys().map(|p| format!("{}/{}", p.query_label(), p.stage)).collect();
        known.dedup();
        if known.is_empty() {
            bail!("no CPU samples of process {} in {:?}: was it on CPU?", args.pid, args.duration);
        }
        bail!("no samples match the filter in process {}: samples were in {}", args.pid, known.join(", "));
    }
    let mut profile = daemon.profile(args.pid, &filter, Some(&layout))?;
    profile.duration = started.elapsed();
    profile.start_unix_ns = start_unix_ns;
    // Detaching takes a moment per site; the profile is complete already.
    daemon.detach_all();
    summary(&profile);
    let bytes = match args.format {
        Format::Folded => profile.folded().into_bytes(),
        Format::Pprof => profile.pprof(),
        Format::Svg => profile.svg(&title(args, &profile))?,
    };
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    out.write_all(&bytes).and_then(|()| out.flush()).context("cannot write the profile")?;
    Ok(())
}

fn title(args: &Args, p: &Profile) -> String {
    let mut t = format!("eventflux pid {}", p.pid);
    if let Some(q) = &args.query {
        t.push_str(&format!(", query {q}"));
    }
    if let Some(s) = &args.stage {
        t.push_str(&format!(", stage {s}"));
    }
    t.push_str(&format!(" ({} samples at {} Hz)", p.total(), args.hz));
    t
}

/// Where the CPU went, on stderr: seconds per query.
fn summary(p: &Profile) {
    let mut by_query: std::collections::BTreeMap<&str, u64> = Default::default();
    for s in &p.samples {
        *by_query.entry(s.place.query_label()).or_insert(0) += s.count;
    }
    let total = p.total().max(1);
    let mut rows: Vec<(&str, u64)> = by_query.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    eprintln!(
        "{} samples = {:.2} CPU seconds in {:.1}s:",
        p.total(),
        p.total() as f64 * p.period.as_secs_f64(),
        p.duration.as_secs_f64()
    );
    for (q, n) in rows {
        eprintln!("  {q:<24} {:>6.2}s {:>5.1}%", n as f64 * p.period.as_secs_f64(), n as f64 * 100.0 / total as f64);
    }
    if p.stacks_lost > 0 {
        eprintln!(
            "  ({} samples lost their stacks: the stack map was full; they show as query;stage only)",
            p.stacks_lost
        );
    }
}
