//! The trace pipeline `run` and node mode share: span records from the kernel's ring buffer
//! become trees ([`collect::spans`](crate::collect::spans)), wait for their query's name
//! ([`Held`]), go to the OTLP exporter, and each trace the exporter queued becomes the
//! exemplar of the latency buckets its batch was counted in ([`Exemplars`]).

use std::sync::Mutex;
use std::time::Duration;

use super::daemon::Daemon;
use crate::collect::spans::Assembler;
use crate::export::otlp::Exporter;
use crate::model::Model;
use crate::model::exemplars::Exemplars;
use crate::model::trace::{Clock, Held, named};
use crate::sync::lock;

/// How long after an attach finished a batch may still lack stages: the markers settle
/// (docs/probes.md).
const SETTLE_NS: u64 = 100_000_000;

/// The pipeline's state across ticks of a service's background loop. Blocking (it drains a
/// ring buffer and reads maps): a service runs [`Traces::tick`] off its async thread.
pub(crate) struct Traces {
    assembler: Assembler,
    held: Held,
    clock: Clock,
    /// For a process the daemon has no attach time of: batches that began before this instant
    /// (CLOCK_MONOTONIC) may lack stages.
    settled: u64,
}

impl Traces {
    pub(crate) fn new() -> Traces {
        let clock = Clock::now();
        Traces {
            assembler: Assembler::default(),
            // Traces wait up to 2 s for their query's name (registrations are replayed after
            // attach).
            held: Held::new(Duration::from_secs(2)),
            settled: clock.monotonic_now() + SETTLE_NS,
            clock,
        }
    }

    /// Drains the span records and exports the traces that are ready.
    pub(crate) fn tick(&mut self, daemon: &Daemon, exporter: &Exporter, exemplars: &Mutex<Exemplars>) {
        let (assembler, held, fallback) = (&mut self.assembler, &mut self.held, self.settled);
        daemon.drain_spans(|r| {
            if let Some(t) = assembler.push(r) {
                // Each target from its own attach (node mode attaches at any time, `--follow`
                // to a successor).
                let since = daemon.attached_at(t.pid).map_or(fallback, |at| at + SETTLE_NS);
                // An operation outside batches (a snapshot) has no stages to lack.
                if t.root.start_ns >= since || t.query == eventflux_abi::NONE {
                    held.push(t);
                }
            }
        });
        if !self.held.waiting(|_| false) {
            return;
        }
        let model: Model = match daemon.model() {
            Ok(model) => model,
            Err(e) => {
                tracing::warn!("cannot read the BPF maps for span names: {e:#}");
                return;
            }
        };
        let ready = self.held.ready(|t| named(&model, t), false);
        let mut x = lock(exemplars);
        for t in ready {
            if let Some(trace_id) = exporter.offer(&t, &model, &self.clock) {
                x.record(&t, trace_id, &self.clock);
            }
        }
    }
}

/// One tick of `traces` off the async thread (it drains a ring buffer and reads maps); the
/// service `owner` lends its daemon and exemplar store through `parts`. A tick that panicked
/// is logged and the pipeline starts afresh.
pub(crate) async fn tick_off_thread<S: Send + Sync + 'static>(
    traces: Traces,
    owner: std::sync::Arc<S>,
    exporter: std::sync::Arc<Exporter>,
    parts: fn(&S) -> (&Daemon, &Mutex<Exemplars>),
) -> Traces {
    let ticked = tokio::task::spawn_blocking(move || {
        let mut t = traces;
        let (daemon, exemplars) = parts(&owner);
        t.tick(daemon, &exporter, exemplars);
        t
    })
    .await;
    match ticked {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("the trace pipeline failed, restarting it: {e}");
            Traces::new()
        }
    }
}
