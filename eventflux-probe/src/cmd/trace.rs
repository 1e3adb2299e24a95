//! `eventflux-probe trace --pid PID [--count N] [--query ID]`: the next N sampled batches as
//! span trees in the terminal (durations, event counts), for an SRE without a tracing backend.
//! Attaches the registrations, `batch_sample`, the trace probes (`stage_sample`,
//! `trace_context`) and its budget's control levels;
//! stops after N trees, `--duration`, Ctrl-C or the target's exit.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eventflux_probe::collect::spans::Assembler;
use eventflux_probe::find::target::State;
use eventflux_probe::model::Model;
use eventflux_probe::model::trace::{Clock, Span, Trace, named};
use eventflux_probe::serve::daemon::attach_once;
use eventflux_probe_common::probe;
use serde_json::json;

use super::flags;

/// Sampled batches per second per engine thread `trace` asks for by default: a few trees a
/// second are what a terminal can show.
const TRACE_SAMPLES_PER_SEC: u32 = 16;

/// How long a trace waits for its query's name before it is printed with the id.
const NAME_WAIT: Duration = Duration::from_secs(2);

/// How long after attaching batches may still be partly recorded (the markers' settle time,
/// 50 ms, with margin).
const SETTLE: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine process to observe.
    #[arg(long, value_name = "PID")]
    pid: u32,
    /// How many batches to print.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Only batches of this query (its name, or its numeric id).
    #[arg(long, value_name = "ID")]
    query: Option<String>,
    /// Stop after this long even if fewer batches came (10s, 500ms, 2m).
    #[arg(long, value_name = "D", value_parser = flags::parse_duration)]
    duration: Option<Duration>,
    /// One JSON object per batch (one line each) instead of trees.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    budget: flags::BudgetArgs,
}

pub fn run(args: &Args) -> Result<()> {
    let budget = args.budget.budget(Some(TRACE_SAMPLES_PER_SEC))?;
    let mut probes = vec![
        probe::stream_register::ID,
        probe::query_register::ID,
        probe::query_unregister::ID,
        probe::batch_sample::ID,
    ];
    probes.extend(eventflux_probe::kernel::probes::TRACE_PROBES);
    probes.extend(budget.control_probes());
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let (daemon, attached) = attach_once(args.pid, &probes)?;
    eprintln!(
        "Attached {} probes ({} sites) to pid {}, asking for {budget}. Printing {} sampled batches{}.",
        attached.report.probes,
        attached.report.sites,
        args.pid,
        args.count,
        args.query.as_deref().map(|q| format!(" of query {q}")).unwrap_or_default()
    );
    let clock = Clock::now();
    // The engine starts firing a probe whose observers grew 50 ms after it sees the semaphore
    // raised (docs/probes.md): batches that began before then may lack some stages.
    let settled = clock.monotonic_now() + SETTLE.as_nanos() as u64;
    let mut assembler = Assembler::default();
    let mut printed = 0u64;
    let mut held = eventflux_probe::model::trace::Held::new(NAME_WAIT);
    let mut model = daemon.model()?;
    let mut out = std::io::stdout().lock();
    let mut emit = |model: &Model, t: &Trace| -> Result<bool> {
        if !selected(model, t, args.query.as_deref()) {
            return Ok(false);
        }
        let text = if args.json { to_json(model, t, &clock) } else { to_text(model, t, &clock) };
        use std::io::Write;
        out.write_all(text.as_bytes())?;
        out.flush()?;
        printed += 1;
        Ok(printed == args.count)
    };
    let ended = runtime.block_on(async {
        let wait = async {
            match args.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(wait);
        let ended = attached.target.ended(Duration::from_millis(250));
        tokio::pin!(ended);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            let last = tokio::select! {
                _ = tick.tick() => None,
                () = &mut wait => Some(None),
                _ = tokio::signal::ctrl_c() => Some(None),
                state = &mut ended => Some(Some(state)),
            };
            daemon.drain();
            daemon.drain_spans(|r| {
                // Batches only: an operation outside batches (a snapshot) is not a batch's tree.
                if let Some(t) = assembler.push(r)
                    && t.root.start_ns >= settled
                    && t.query != eventflux_abi::NONE
                {
                    held.push(t);
                }
            });
            if held.waiting(|t| named(&model, t)) {
                model = daemon.model()?;
            }
            for t in held.ready(|t| named(&model, t), last.is_some()) {
                if emit(&model, &t)? {
                    return Ok::<_, anyhow::Error>(None);
                }
            }
            if let Some(last) = last {
                return Ok(last);
            }
        }
    })?;
    drop(out);
    daemon.detach_all();
    match ended {
        Some(State::Execd(exe)) => eprintln!("Process {} exec'd {}: stopped.", args.pid, exe.display()),
        Some(_) => eprintln!("Process {} exited: stopped.", args.pid),
        None => {}
    }
    if let (Some(q), Some(model)) = (args.query.as_deref(), daemon.model().ok()) {
        let engine = model.engines.get(&args.pid);
        let known: Vec<&str> = engine
            .map(|e| e.queries.values().filter(|m| m.registered).map(|m| m.name.as_str()).collect())
            .unwrap_or_default();
        if printed == 0 && !known.is_empty() && !known.contains(&q) && q.parse::<u32>().is_err() {
            bail!("process {} has no query `{q}`: its queries are {}", args.pid, known.join(", "));
        }
    }
    if printed < args.count {
        eprintln!(
            "eventflux-probe: {printed} of {} batches traced in that time (is the engine processing events?)",
            args.count
        );
    }
    Ok(())
}

fn query_name(model: &Model, t: &Trace) -> String {
    model
        .engines
        .get(&t.pid)
        .and_then(|e| e.queries.get(&t.query))
        .map_or_else(|| format!("query{}", t.query), |q| q.name.clone())
}

fn stream_name(model: &Model, t: &Trace) -> String {
    model.engines.get(&t.pid).map_or_else(|| format!("stream{}", t.stream), |e| e.stream_name(t.stream))
}

fn selected(model: &Model, t: &Trace, query: Option<&str>) -> bool {
    query.is_none_or(|q| query_name(model, t) == q || q.parse::<u32>() == Ok(t.query))
}

fn duration(ns: u64) -> String {
    match ns {
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{:.1}µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n => format!("{:.3}s", n as f64 / 1e9),
    }
}

/// RFC 3339 UTC with microseconds.
fn timestamp(unix_ns: u64) -> String {
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    eventflux_probe::logging::rfc3339(unix_ns / 1_000_000_000, &format!("{micros:06}"))
}

fn to_text(model: &Model, t: &Trace, clock: &Clock) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} (stream {}) pid {} tid {} at {}{}",
        query_name(model, t),
        stream_name(model, t),
        t.pid,
        t.tid,
        timestamp(clock.unix_ns(t.root.start_ns)),
        if t.root.children.is_empty() { ", timed as a whole (stages not timed in this batch)" } else { "" }
    );
    if let Some(c) = &t.context {
        let parent = if c.parent_span_id == 0 {
            "starts the trace".to_owned()
        } else {
            format!("continues span {:016x} of an upstream node", c.parent_span_id)
        };
        let _ = writeln!(s, "  trace {} span {:016x}, {parent}", c.trace_id_hex(), c.span_id);
    }
    fn line(s: &mut String, span: &Span, prefix: &str, last: bool, root: bool) {
        let branch = if root {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let label = format!("{prefix}{branch}{}", span.name());
        let _ = writeln!(
            s,
            "  {label:<34} {:>10}  self {:>10}  events {} → {}",
            duration(span.duration_ns()),
            duration(span.self_ns),
            span.events_in,
            span.events_out
        );
        let child_prefix = if root { String::new() } else { format!("{prefix}{}", if last { "   " } else { "│  " }) };
        for (i, c) in span.children.iter().enumerate() {
            line(s, c, &child_prefix, i + 1 == span.children.len(), false);
        }
    }
    line(&mut s, &t.root, "", true, true);
    s.push('\n');
    s
}

fn to_json(model: &Model, t: &Trace, clock: &Clock) -> String {
    let spans: Vec<_> = t
        .root
        .walk()
        .iter()
        .map(|(depth, span)| {
            json!({
                "name": span.name(),
                "depth": depth,
                "start_unix_ns": clock.unix_ns(span.start_ns),
                "start_monotonic_ns": span.start_ns,
                "duration_ns": span.duration_ns(),
                "self_ns": span.self_ns,
                "events_in": span.events_in,
                "events_out": span.events_out,
                "engine_span_id": (span.span_id != 0).then(|| format!("{:016x}", span.span_id)),
            })
        })
        .collect();
    let v = json!({
        "query": query_name(model, t),
        "query_id": t.query,
        "stream": stream_name(model, t),
        "pid": t.pid,
        "tid": t.tid,
        "latency_ns": t.latency_ns,
        "stages_timed": !t.root.children.is_empty(),
        "trace_id": t.context.map(|c| c.trace_id_hex()),
        "span_id": t.context.map(|c| format!("{:016x}", c.span_id)),
        "parent_span_id": t.context.filter(|c| c.parent_span_id != 0).map(|c| format!("{:016x}", c.parent_span_id)),
        "spans": spans,
    });
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(1_709_164_800_123_456_789), "2024-02-29T00:00:00.123456Z");
    }
}
