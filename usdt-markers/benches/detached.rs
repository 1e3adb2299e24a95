//! Cost of a detached marker: a loop with markers against the same loop without, in one run.
//! Detached, each marker (a counter add, a batch or stage span) is a load of its probe's
//! semaphore and a not-taken branch.
//!
//! `cargo bench -p usdt-markers --bench detached` (or `cargo xtask bench`). Target: ≤ 1 ns/site.

use std::hint::black_box;
use std::time::Instant;

use usdt_markers::abi::Stage;
use usdt_markers::span::{Batch, Span};

const ITERATIONS: u64 = 400_000_000;
const ROUNDS: usize = 7;
/// Markers per iteration in the marked loop: a counter add, a batch and a stage span.
const SITES: u64 = 3;

#[inline(never)]
fn empty_loop(n: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(black_box(i));
    }
    acc
}

#[inline(never)]
fn marked_loop(n: u64) -> u64 {
    let counter = usdt_markers::ingest::Counter::new(1);
    let mut acc = 0u64;
    for i in 0..n {
        let batch = Batch::enter(2);
        acc = acc.wrapping_add(black_box(i));
        counter.add(i);
        let span = Span::enter(2, Stage::Filter);
        span.exit(i, acc);
        batch.exit(1, i, acc);
    }
    acc
}

fn time(f: fn(u64) -> u64) -> f64 {
    let start = Instant::now();
    black_box(f(black_box(ITERATIONS)));
    start.elapsed().as_secs_f64() * 1e9 / ITERATIONS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !usdt_markers::ingest::is_enabled() && cfg!(not(feature = "enabled")) {
        eprintln!("note: built without the `enabled` feature: markers are compiled out");
    }
    let mut empty = Vec::new();
    let mut marked = Vec::new();
    for _ in 0..ROUNDS {
        empty.push(time(empty_loop));
        marked.push(time(marked_loop));
    }
    let (e, m) = (median(empty), median(marked));
    let per_site = ((m - e) / SITES as f64).max(0.0);
    println!("detached marker cost ({ITERATIONS} iterations x {ROUNDS} rounds, median):");
    println!("  empty loop            {e:.3} ns/iteration");
    println!("  loop + {SITES} marker sites {m:.3} ns/iteration");
    println!("  per detached site     {per_site:.3} ns  (target <= 1 ns)");
}
