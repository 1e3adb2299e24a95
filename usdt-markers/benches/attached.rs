//! What the markers cost the engine per batch while an observer is attached, without the
//! observer's traps: the inline paths alone (the sampling countdown, the tail sampler's
//! countdown, CPU slot writes, cell adds), the part of the attached cost that grows with the
//! engine's batch rate.
//!
//! A loop of one-event batches shaped as the demo's queries run them (four stages, a table
//! lookup in the filter, a publish in the emit, the counters a junction and a query add), timed
//! detached and then with the semaphores `eventflux-probe run` raises at its defaults raised
//! (written through `/proc/self/mem`, as the kernel writes them from outside when a uprobe with
//! a reference counter is registered; nothing is attached, so the sites' `nop`s never trap).
//! Sampled batches still take their cold paths and fire their (untrapped) sites, so their
//! share is in the figure.
//!
//! `cargo bench -p usdt-markers --bench attached`. The traps themselves (a few thousand a
//! second, ~0.4 µs each) and the daemon are measured end to end by the demo throughput bench.

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use usdt_markers::abi::{ComponentOp, Stage};
use usdt_markers::ops::Timed;
use usdt_markers::span::{Batch, Span};
use usdt_markers::{
    Semaphore, batch_sample, component_count, component_sample, cpu_slot, emitted, ingest, query_events,
};

const ITERATIONS: u64 = 10_000_000;
const ROUNDS: usize = 9;
const QUERY: u32 = 2;
const TABLE: u32 = 2000;
const SINK: u32 = 1002;

/// The semaphores `run` raises that the loop's markers test, by what they turn on.
fn groups() -> [(&'static str, Vec<&'static Semaphore>); 3] {
    [
        ("sampling (countdowns, tails)", vec![&batch_sample::SEMAPHORE, &component_sample::SEMAPHORE]),
        ("CPU slots", vec![&cpu_slot::SEMAPHORE]),
        (
            "counters (cell adds)",
            vec![&ingest::SEMAPHORE, &query_events::SEMAPHORE, &emitted::SEMAPHORE, &component_count::SEMAPHORE],
        ),
    ]
}

/// Sets `semaphores` to `count` through `/proc/self/mem`, as an attaching observer's kernel
/// does.
fn set_semaphores(semaphores: &[&Semaphore], count: u16) -> std::io::Result<()> {
    let mem = std::fs::OpenOptions::new().read(true).write(true).open("/proc/self/mem")?;
    for s in semaphores {
        mem.write_all_at(&count.to_le_bytes(), std::ptr::from_ref(*s) as u64)?;
    }
    // The markers leave a probe whose observers grew alone this long (their settle time).
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

/// The loop's time per batch with `semaphores` raised.
fn time_with(semaphores: &[&Semaphore]) -> f64 {
    let set = |count| {
        if let Err(e) = set_semaphores(semaphores, count) {
            eprintln!("error: cannot write the semaphores through /proc/self/mem ({e}); run as root");
            std::process::exit(1);
        }
    };
    set(1);
    let ns = time();
    set(0);
    ns
}

#[inline(never)]
fn batches(n: u64) -> u64 {
    let received = ingest::Counter::new(0);
    let events = query_events::Counter::new(QUERY, 0);
    let rows = emitted::Counter::new(QUERY, 9);
    let lookups = component_count::Counter::new(TABLE, 0, 0);
    let mut acc = 0u64;
    for i in 0..n {
        received.add(1);
        let batch = Batch::enter(QUERY);
        let filter = Span::enter(QUERY, Stage::Filter);
        let lookup = Timed::start(TABLE, ComponentOp::TableLookup);
        acc = acc.wrapping_add(black_box(i));
        lookup.finish(1);
        lookups.add(1);
        let window = Span::enter(QUERY, Stage::Window);
        let aggregate = Span::enter(QUERY, Stage::Aggregate);
        acc = acc.wrapping_mul(black_box(3));
        aggregate.exit(1, 1);
        let emit = Span::enter(QUERY, Stage::Emit);
        let publish = Timed::start(SINK, ComponentOp::SinkPublish);
        acc = acc.wrapping_add(black_box(1));
        publish.finish(1);
        rows.add(1);
        emit.exit(1, 1);
        window.exit(1, 1);
        filter.exit(1, 1);
        batch.exit(0, 1, 1);
        events.add(1, 1);
    }
    acc
}

fn time() -> f64 {
    let start = Instant::now();
    black_box(batches(black_box(ITERATIONS)));
    start.elapsed().as_secs_f64() * 1e9 / ITERATIONS as f64
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if cfg!(not(feature = "enabled")) {
        eprintln!("note: built without the `enabled` feature: markers are compiled out");
    }
    let groups = groups();
    let all: Vec<&Semaphore> = groups.iter().flat_map(|(_, g)| g.iter().copied()).collect();
    let mut detached = Vec::new();
    let mut attached = Vec::new();
    let mut each: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
    // Interleaved, so that every configuration sees the same machine.
    for _ in 0..ROUNDS {
        detached.push(time());
        attached.push(time_with(&all));
        for (i, (_, g)) in groups.iter().enumerate() {
            each[i].push(time_with(g));
        }
    }
    let (d, a) = (median(&detached), median(&attached));
    println!(
        "one-event batches, 4 stages, 2 timed operations, 4 counters ({ITERATIONS} batches x {ROUNDS} rounds, median):"
    );
    println!("  detached                                   {d:6.2} ns/batch");
    println!("  semaphores raised as by `run` (no traps)   {a:6.2} ns/batch");
    println!("  inline attached cost                       {:6.2} ns/batch, of which:", a - d);
    for (i, (name, _)) in groups.iter().enumerate() {
        println!("    {name:<40} {:6.2} ns/batch", median(&each[i]) - d);
    }
}
