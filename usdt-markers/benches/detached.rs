//! Cost of a detached probe site: a loop with markers against the same loop without, in one
//! run. Detached, each site is a load of its semaphore and a not-taken branch.
//!
//! `cargo bench -p usdt-markers --bench detached` (or `cargo xtask bench`). Target: ≤ 1 ns/site.

use std::hint::black_box;
use std::time::Instant;

use usdt_markers::probe;

const ITERATIONS: u64 = 400_000_000;
const ROUNDS: usize = 7;
/// Marker sites per iteration in the marked loop.
const SITES: u64 = 4;

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
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(black_box(i));
        probe!(ingest(1, i));
        probe!(query_batch_start(2, 1, i));
        probe!(filter_end(2, i, acc));
        probe!(emit_end(2, 3, i));
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
