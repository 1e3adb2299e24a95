//! `cargo bench -p integration-tests --bench upstream` (part of `cargo xtask bench`): what an
//! upstream sender can make a downstream engine pay. Node B (`eventflux-demo --listen`) under
//! `run` exporting traces over OTLP takes chunks from a sender that marks every chunk's trace
//! context sampled (flags 01), against one whose contexts are not sampled (flags 00: the same
//! parsing, no marking), in alternating rounds; the figure is the
//! ratio of node B's throughput (its own summary), target ≥ 0.9: parent-based sampling is
//! bounded per engine thread (docs/probes.md, "Trace context across nodes").

use std::time::Duration;

use integration_tests::otlp::Receiver;
use integration_tests::{median, value};

const ROUNDS: usize = 5;

/// Node B's events per second and traced batches, fed `chunks` chunks of `events` events.
fn round(receiver: &Receiver, chunks: u64, events: u32, flags: Option<u8>) -> (f64, f64) {
    let (summary, daemon) = integration_tests::fed_node_b(receiver.port, chunks, events, flags);
    std::thread::sleep(Duration::from_millis(1200));
    let m = daemon.samples();
    let traced = value(&m, "eventflux_probe_program_runs_total", &[("program", "trace_context")]).unwrap_or(0.0);
    let elapsed = summary["elapsed_s"].as_f64().expect("elapsed_s").max(1e-3);
    assert!(daemon.stop().success());
    (summary["events_per_sec"].as_f64().expect("events_per_sec"), traced / elapsed)
}

fn main() {
    let receiver = Receiver::http();
    println!("upstream-sampled traces, node B under run + OTLP, {ROUNDS} alternating rounds (median):");
    for (events, chunks) in [(1u32, 400_000u64), (64, 40_000)] {
        let (mut plain, mut marked, mut ratios, mut traced) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (p, _) = round(&receiver, chunks, events, Some(0x00));
            let (m, t) = round(&receiver, chunks, events, Some(0x01));
            plain.push(p);
            marked.push(m);
            ratios.push(m / p);
            traced.push(t);
        }
        println!(
            "  chunks of {events:>2}: flags 00 {:>10.0} events/s, flags 01 (sampled) {:>10.0} events/s, ratio {:.3} (target >= 0.9); traced {:.0} batches/s",
            median(plain),
            median(marked),
            median(ratios),
            median(traced)
        );
    }
}
