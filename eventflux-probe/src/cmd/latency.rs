//! `eventflux-probe latency --pid PID`: the SRE's one-liner. Attaches only the probes the
//! requested stages need, collects until `--duration` passes or Ctrl-C, then prints one
//! histogram per query and stage in bpftrace's layout, with count, p50, p90, p99 and max.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eventflux_probe::find::target::State;
use eventflux_probe::kernel::budget::Budget;
use eventflux_probe::model::Engine;
use eventflux_probe::model::hist::HistData;
use eventflux_probe::serve::daemon::attach_once;
use eventflux_probe_common::{hist, probe, stage};
use serde_json::json;

use super::flags;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine process to observe.
    #[arg(long, value_name = "PID")]
    pid: u32,
    /// Only this stage: ingest, filter, window, aggregate, emit or batch (the whole query).
    #[arg(long, value_name = "STAGE")]
    stage: Option<String>,
    /// Only this query (its name, or its numeric id).
    #[arg(long, value_name = "ID")]
    query: Option<String>,
    /// Stop after this long (10s, 500ms, 2m); without it, stop on Ctrl-C.
    #[arg(long, value_name = "D", value_parser = flags::parse_duration)]
    duration: Option<Duration>,
    /// Print JSON instead of histograms.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    budget: flags::BudgetArgs,
}

/// The probes `latency` attaches: the registrations (for names), `batch_sample` (which carries
/// the stages' self times too), and the control probes of its budget. The engine times the
/// stages itself (probe ABI v2), so one stage needs no other stage's probes.
fn probes_for(stage_name: Option<&str>, budget: &Budget) -> Result<(Vec<u32>, Vec<u32>)> {
    let stages: Vec<u32> = match stage_name {
        None => (0..stage::NAMES.len() as u32).collect(),
        Some(name) => match stage::NAMES.iter().position(|n| *n == name) {
            Some(s) => vec![s as u32],
            None => bail!("unknown stage `{name}`: use one of {}", stage::NAMES.join(", ")),
        },
    };
    let mut probes = vec![
        probe::stream_register::ID,
        probe::query_register::ID,
        probe::query_unregister::ID,
        probe::batch_sample::ID,
    ];
    probes.extend(budget.control_probes());
    Ok((probes, stages))
}

pub fn run(args: &Args) -> Result<()> {
    let budget = args.budget.budget(Some(eventflux_probe::kernel::budget::RUN_SAMPLES_PER_SEC))?;
    let (probes, stages) = probes_for(args.stage.as_deref(), &budget)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let (daemon, attached) = attach_once(args.pid, &probes)?;
    let report = &attached.report;
    eprintln!(
        "Attached {} probes ({} sites) to pid {}, asking for {budget}. {}",
        report.probes,
        report.sites,
        args.pid,
        match args.duration {
            Some(d) => format!("Collecting for {d:?}; Ctrl-C prints what it has so far."),
            None => "Collecting; Ctrl-C to print.".to_owned(),
        }
    );
    let started = std::time::Instant::now();
    let ended = runtime.block_on(daemon.collect(args.duration, &attached.target));
    let model = daemon.model()?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    match ended {
        Some(State::Execd(exe)) => eprintln!(
            "Process {} exec'd {} after {elapsed:.1}s: printing what it recorded before.",
            args.pid,
            exe.display()
        ),
        Some(_) => eprintln!("Process {} exited after {elapsed:.1}s: printing what it recorded.", args.pid),
        None => {}
    }
    daemon.detach_all();
    let hits: u64 =
        model.observer.programs.iter().filter(|(n, ..)| n.ends_with("_sample")).map(|(_, runs, _)| runs).sum();
    eprintln!(
        "Cost to the engine: {hits} sample probe hits ({:.0}/s), each a uprobe trap in the engine thread (a few hundred ns) after the batch it describes.",
        hits as f64 / elapsed
    );
    let engine = model.engines.get(&args.pid);
    if let (Some(q), Some(engine)) = (args.query.as_deref(), engine) {
        let known: Vec<&str> = engine.queries.values().filter(|m| m.registered).map(|m| m.name.as_str()).collect();
        let matches = engine.queries.values().any(|m| m.registered && (m.name == q || q.parse::<u32>() == Ok(m.id)));
        if !known.is_empty() && !matches {
            bail!("process {} has no query `{q}`: its queries are {}", args.pid, known.join(", "));
        }
    }
    let rows = engine.map(|e| select(e, &stages, args.query.as_deref())).unwrap_or_default();
    let out = if args.json { to_json(&rows) } else { to_text(&rows) };
    print!("{out}");
    if rows.is_empty() {
        eprintln!("eventflux-probe: no spans completed in that time (is the engine processing events?)");
    }
    Ok(())
}

struct Row<'a> {
    query: String,
    stage: &'static str,
    hist: &'a HistData,
}

fn select<'a>(engine: &'a Engine, stages: &[u32], query: Option<&str>) -> Vec<Row<'a>> {
    let mut rows = Vec::new();
    for q in engine.queries.values() {
        if query.is_some_and(|want| q.name != want && want.parse::<u32>() != Ok(q.id)) {
            continue;
        }
        let hists = q.stages.iter().map(|(s, h)| (*s, h)).chain(q.latency.iter().map(|h| (stage::BATCH, h)));
        for (st, h) in hists {
            if stages.contains(&st) && h.count > 0 {
                let stage = stage::NAMES.get(st as usize).copied().unwrap_or("?");
                rows.push(Row { query: q.name.clone(), stage, hist: h });
            }
        }
    }
    rows
}

/// A bucket bound as bpftrace writes it: 512, 4K, 6M, 1G.
fn bound(ns: u64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if ns >= 1 << shift && ns.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", ns >> shift);
        }
    }
    ns.to_string()
}

fn duration(ns: u64) -> String {
    match ns {
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{:.1}µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n => format!("{:.3}s", n as f64 / 1e9),
    }
}

fn to_text(rows: &[Row<'_>]) -> String {
    let mut out = String::new();
    for r in rows {
        let h = r.hist;
        let _ = writeln!(
            out,
            "@{}[{}]: count {}, p50 {}, p90 {}, p99 {}, max {}  (nanoseconds)",
            r.stage,
            r.query,
            h.count,
            duration(h.quantile_ns(0.50)),
            duration(h.quantile_ns(0.90)),
            duration(h.quantile_ns(0.99)),
            duration(h.max_ns)
        );
        let first = h.buckets.iter().position(|n| *n > 0).unwrap_or(0);
        let last = h.buckets.iter().rposition(|n| *n > 0).unwrap_or(0);
        let top = h.buckets.iter().copied().max().unwrap_or(1).max(1);
        for i in first..=last {
            let n = h.buckets[i];
            let bar = "@".repeat((n * 52).div_ceil(top) as usize);
            let range = if i + 1 == hist::BUCKETS {
                format!("({}, ...)", bound(hist::lower(i)))
            } else {
                format!("({}, {}]", bound(hist::lower(i)), bound(hist::upper(i)))
            };
            let _ = writeln!(out, "{range:<18} {n:>8} |{bar:<52}|");
        }
        out.push('\n');
    }
    out
}

fn to_json(rows: &[Row<'_>]) -> String {
    let v: Vec<_> = rows
        .iter()
        .map(|r| {
            let h = r.hist;
            let buckets: Vec<_> = h
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| json!({"gt_ns": hist::lower(i), "le_ns": hist::upper(i), "count": n}))
                .collect();
            json!({
                "query": r.query,
                "stage": r.stage,
                "count": h.count,
                "sum_ns": h.sum_ns,
                "max_ns": h.max_ns,
                "p50_ns": h.quantile_ns(0.50),
                "p90_ns": h.quantile_ns(0.90),
                "p99_ns": h.quantile_ns(0.99),
                "buckets": buckets,
            })
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}
