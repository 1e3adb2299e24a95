//! Adds 1 to `ingest` of stream 0 as fast as it can for SECONDS, and counts the adds made while
//! a tool was attached (the probe's semaphore raised): what an observer that attached meanwhile
//! must count, exactly. `count-target SECONDS` prints `{"observed": N, "total": M}`.

use std::time::{Duration, Instant};

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let counter = usdt_markers::ingest::Counter::new(0);
    let (mut observed, mut total) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        for _ in 0..1000 {
            // The add tests the semaphore again; while the tool attaches it only rises, so an
            // add made here is one the add itself counts.
            if usdt_markers::ingest::is_enabled() {
                observed += 1;
                counter.add(1);
            }
            total += 1;
        }
    }
    println!("{{\"observed\": {observed}, \"total\": {total}}}");
}
