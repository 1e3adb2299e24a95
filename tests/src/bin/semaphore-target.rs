//! Fires `eventflux:ingest` a known number of times with an argument whose evaluation is
//! counted, so a test can see that arguments are evaluated exactly while a tool is attached.
//!
//! Usage: semaphore-target GATE ITERATIONS. Waits for GATE to exist, fires ITERATIONS probes
//! with arg1 = 0, 1, 2, …, then prints `{"evaluated": E, "semaphore": S, "ns_per_hit": T}`
//! (T: the loop's time per iteration, which the per-hit benchmark compares across observers).

use std::sync::atomic::{AtomicU64, Ordering};
static EVALUATED: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn counted(i: u64) -> u64 {
    EVALUATED.fetch_add(1, Ordering::Relaxed);
    i
}

fn main() {
    let n = integration_tests::gated_iterations("semaphore-target");
    let semaphore = usdt_markers::ingest::SEMAPHORE.count();
    let started = std::time::Instant::now();
    for i in 0..n {
        usdt_markers::probe!(ingest(7, counted(i)));
    }
    let ns_per_hit = started.elapsed().as_nanos() as f64 / n.max(1) as f64;
    println!(
        "{{\"evaluated\": {}, \"semaphore\": {semaphore}, \"ns_per_hit\": {ns_per_hit:.3}}}",
        EVALUATED.load(Ordering::Relaxed)
    );
}
