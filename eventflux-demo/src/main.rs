//! `eventflux-demo`: a runtime shaped like the EventFlux pipeline, instrumented with
//! `usdt-markers`. It is the target of eventflux-probe's tests, benchmarks and README demo, so
//! with `--events N` it is deterministic: the same input gives the same counts and the same
//! output digest, attached or not.

mod components;
mod event;
mod net;
mod query;
mod queue;
mod runtime;
mod trouble;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use usdt_markers::abi::JunctionKind;

use runtime::{Config, Outcome};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Subscribers run inside the sender's call: stage spans nest on one thread.
    Sync,
    /// Bounded queues hand chunks to one worker thread per query; they can back up.
    Async,
}

/// An instrumented EventFlux-like runtime: streams, queries (filter → window → aggregation →
/// insert into), chunks of events, USDT probes at every stage.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Produce exactly N input events, print the summary, then stop (after --linger).
    /// Without it, run until stopped.
    #[arg(long, value_name = "N")]
    events: Option<u64>,
    /// Number of queries; query i reads stream i % STREAMS, windows cycle length,
    /// length_batch, time.
    #[arg(long, value_name = "Q", default_value_t = 3)]
    queries: u32,
    /// Number of input streams; chunks go to them round-robin.
    #[arg(long, value_name = "S", default_value_t = 2)]
    streams: u32,
    /// Events per chunk.
    #[arg(long, value_name = "B", default_value_t = 64)]
    batch: usize,
    /// Input events per second over all streams; 0 means as fast as possible.
    #[arg(long, value_name = "R", default_value_t = 0)]
    rate: u64,
    /// Junction mode.
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// Chunks each async queue holds before the producer waits (backpressure).
    #[arg(long, value_name = "C", default_value_t = 16)]
    queue_capacity: usize,
    /// Wait until FILE exists before producing the first event, so an observer can attach.
    #[arg(long, value_name = "FILE")]
    gate: Option<PathBuf>,
    /// Seconds to stay idle after the last event, before the queries stop (observers see an
    /// idle engine).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    hold: f64,
    /// Trouble from second A to second B after the first event (`A..B`): half the events
    /// malformed (expression errors), async query workers slow (backpressure), query 0's sink
    /// disconnected. Counts stay
    /// exact in the summary; the output is then no longer the same on every run.
    #[arg(long, value_name = "A..B", value_parser = parse_trouble)]
    trouble: Option<(Duration, Duration)>,
    /// Two-node mode, node A: send every query's output rows to node B at ADDR (over TCP,
    /// with the W3C trace context of each chunk).
    #[arg(long, value_name = "ADDR")]
    forward: Option<std::net::SocketAddr>,
    /// Two-node mode, node B: take the input stream(s) from node A's connection at ADDR
    /// (port 0: any, printed on stderr) instead of the sources; stop when node A ends.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["events", "rate", "trouble"])]
    listen: Option<std::net::SocketAddr>,
    /// Make the queries' filters expensive: rounds of a hash function (`risk_score`) per
    /// event, for query 0, 1, … (`3000,1000`; missing ones 0). Each query's CPU time is then
    /// measured and printed in the summary (`cpu_s`): the test of CPU attribution.
    #[arg(long, value_name = "R,R,…", value_delimiter = ',')]
    filter_cost: Vec<u32>,
    /// Failed events (garbage records, rejected rows) the error store holds before it drops
    /// them.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    error_store_capacity: u64,
    /// Keep snapshots (the sources' positions, every 50,000 events) in DIR instead of in
    /// memory, and at start restore the last one there: the sources resume where it left them.
    #[arg(long, value_name = "DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Async mode: a junction refuses (drops) a chunk whose subscriber's queue stays full for
    /// MS milliseconds, as the engine's junctions do after their back-off; without it the
    /// producer waits as long as it takes.
    #[arg(long, value_name = "MS")]
    drop_after: Option<u64>,
    /// Seconds to stay alive after the summary.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    linger: f64,
    /// Events per flush of the length-batch queries' windows (the engine's `lengthBatch(N)`).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    length_batch: u64,
    /// Register the queries without names, as an SQL application without `@info(name=…)`
    /// does (the summary still calls them by the demo's names).
    #[arg(long)]
    unnamed: bool,
    /// Run the join of the first two streams as a query of its own reading both (reported as
    /// `join_query`).
    #[arg(long)]
    join_query: bool,
    /// Run the pattern on the first stream as a query of its own (`price_swing`), which
    /// inserts its matches into `Swings` (reported as `pattern_query`).
    #[arg(long)]
    pattern_query: bool,
    /// Run each query in the engine's SQL order: the window first, the WHERE filter on what it
    /// hands on (nested inside it), aggregation for what left and what entered it, and each
    /// insert in two parts: stage spans nest differently, and run twice in one batch.
    #[arg(long)]
    where_after_window: bool,
    /// Async mode: a query worker that finds its queue empty spins (busy) up to US
    /// microseconds before it blocks, as the engine's pool consumers do; the CPU it spends so
    /// is marked idle for CPU attribution and reported as `idle_cpu_s`.
    #[arg(long, value_name = "US", default_value_t = 0)]
    spin_us: u64,
    /// Every MS milliseconds, print a JSON line on stderr: seconds since the first event,
    /// events produced, the process's CPU seconds. Lets a benchmark compare phases of one run
    /// (with and without an observer) without the run-to-run noise of separate processes.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    progress_ms: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventflux-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if args.streams == 0 {
        bail!("--streams must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.mode_is_async() && args.queue_capacity == 0 {
        bail!("--queue-capacity must be at least 1");
    }
    for (name, secs) in [("--linger", args.linger), ("--hold", args.hold)] {
        if !(secs.is_finite() && (0.0..=86_400.0).contains(&secs)) {
            bail!("{name} must be a number of seconds from 0 to 86400");
        }
    }
    let config = Config {
        events: args.events,
        streams: args.streams,
        queries: args.queries,
        batch: args.batch,
        rate: args.rate,
        mode: if args.mode_is_async() { JunctionKind::Async } else { JunctionKind::Sync },
        queue_capacity: args.queue_capacity,
        gate: args.gate.clone(),
        hold: Duration::from_secs_f64(args.hold),
        trouble: args.trouble,
        forward: args.forward,
        listen: args.listen,
        filter_cost: args.filter_cost.clone(),
        error_store_capacity: args.error_store_capacity,
        snapshot_dir: args.snapshot_dir.clone(),
        drop_after: args.drop_after.map(Duration::from_millis),
        length_batch: args.length_batch,
        unnamed: args.unnamed,
        join_query: args.join_query,
        pattern_query: args.pattern_query,
        where_after_window: args.where_after_window,
        spin: Duration::from_micros(args.spin_us),
        progress: args.progress_ms.map(Duration::from_millis),
    };
    let outcome = runtime::run(&config)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", summary(&config, &outcome))?;
    out.flush()?;
    drop(out);
    std::thread::sleep(Duration::from_secs_f64(args.linger));
    Ok(())
}

fn parse_trouble(s: &str) -> Result<(Duration, Duration), String> {
    let bad = || format!("`{s}` is not a span of seconds like 5..10");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let secs = |v: &str| v.trim().parse::<f64>().ok().filter(|x| x.is_finite() && (0.0..=86_400.0).contains(x));
    match (secs(a), secs(b)) {
        (Some(a), Some(b)) if a < b => Ok((Duration::from_secs_f64(a), Duration::from_secs_f64(b))),
        _ => Err(bad()),
    }
}

impl Args {
    fn mode_is_async(&self) -> bool {
        matches!(self.mode, Mode::Async)
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(config: &Config, outcome: &Outcome) -> Value {
    let name_of = |id: u32| outcome.streams.iter().find(|s| s.id == id).map_or("?", |s| s.name.as_str());
    let streams: BTreeMap<&str, Value> = outcome
        .streams
        .iter()
        .map(|s| {
            let v = json!({
                "id": s.id,
                "role": s.role.label(),
                "received": s.stats.received,
                "sent": s.stats.sent,
                "backpressure": s.stats.backpressure,
                "dropped": s.stats.dropped,
            });
            (s.name.as_str(), v)
        })
        .collect();
    let queries: BTreeMap<&str, Value> = outcome
        .queries
        .iter()
        .map(|(def, stats)| {
            let mut lat = stats.latencies_ns.clone();
            lat.sort_unstable();
            let v = json!({
                "id": def.id,
                "input_stream": name_of(def.input_stream),
                "output_stream": name_of(def.output_stream),
                "window": def.window.label(),
                "processed": stats.processed,
                "emitted": stats.emitted,
                "errors": stats.errors,
                "batches": stats.batches,
                "p50_ns": percentile(&lat, 0.50),
                "p99_ns": percentile(&lat, 0.99),
                "p999_ns": percentile(&lat, 0.999),
                "max_ns": lat.last().copied().unwrap_or(0),
                "emitting_max_ns": stats.emitting_max_ns,
                "digest": format!("{:016x}", stats.digest),
            });
            let mut v = v;
            if let Some(ns) = stats.emitting_work_max_ns {
                v["emitting_work_max_ns"] = json!(ns);
            }
            if let Some(ns) = stats.cpu_ns {
                v["cpu_s"] = json!(ns as f64 / 1e9);
            }
            (def.name.as_str(), v)
        })
        .collect();
    let connections: BTreeMap<&str, Value> = outcome
        .connections
        .iter()
        .map(|(p, c)| (p.label(), json!({"opened": c.opened, "failed": c.failed, "closed": c.closed})))
        .collect();
    let total: u64 = outcome.streams.iter().filter(|s| s.protocol.is_some()).map(|s| s.stats.received).sum();
    let secs = outcome.elapsed.as_secs_f64();
    let mut v = json!({
        "mode": config.mode.label(),
        "events": total,
        "elapsed_s": secs,
        "cpu_s": runtime::cpu_seconds(),
        "events_per_sec": if secs > 0.0 { total as f64 / secs } else { 0.0 },
        "streams": streams,
        "queries": queries,
        "connections": connections,
        "components": outcome.components.iter().cloned().collect::<BTreeMap<String, Value>>(),
        "restored": outcome.restored,
    });
    if config.spin > Duration::ZERO {
        v["idle_cpu_s"] = json!(outcome.idle_cpu_s);
    }
    if let Some(join) = &outcome.join_query {
        v["join_query"] = join.clone();
    }
    if let Some(pattern) = &outcome.pattern_query {
        v["pattern_query"] = pattern.clone();
    }
    v
}
