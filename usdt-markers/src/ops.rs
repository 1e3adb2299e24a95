//! Component operations the engine times itself (`component_sample`, docs/probes.md
//! "Components"). Rare operations — a snapshot, a restore — are timed and fired every time:
//! their number, not the event rate, sets what an observer costs. Frequent ones (a join probe,
//! a table lookup, a pattern step, a sink publish: [`ComponentOp::frequent`]) are timed only
//! inside a batch sampled for its stages, as spans of it: their records fire after the batch
//! with its stages (`component_sample` for the histograms, `component_span` for span trees).
//! Either way, while a tool takes CPU samples, the thread's CPU slot says it is in the operation.

use eventflux_abi::ComponentOp;

use crate::points::{component_sample, component_span};

/// One timed operation: [`Timed::start`] before it, [`Timed::finish`] after. While no tool is
/// attached to `component_sample` neither reads the clock.
#[derive(Debug)]
#[must_use = "an operation is timed until `finish`"]
pub struct Timed {
    component: u32,
    op: ComponentOp,
    /// CLOCK_MONOTONIC at the start; 0 when nobody observes (or, for a frequent operation,
    /// outside a batch sampled for its stages).
    start: u64,
    /// The CPU slot's state before ([`crate::cpu::UNSET`]: not written).
    slot: u64,
}

impl Timed {
    /// Starts timing `op` of component `component`.
    #[inline(always)]
    pub fn start(component: u32, op: ComponentOp) -> Timed {
        let slot = crate::cpu::enter_op(op);
        let start = if op.frequent() {
            // For the histograms or for span trees (`trace` takes only the latter).
            if component_sample::is_enabled() || component_span::is_enabled() { crate::span::op_open() } else { 0 }
        } else if component_sample::is_enabled() {
            crate::span::now_ns().max(1)
        } else {
            0
        };
        Timed { component, op, start, slot }
    }

    /// The operation ended, having handled `items` (events, rows, bytes: the operation's own
    /// unit): fires `component_sample` with its duration.
    #[inline(always)]
    pub fn finish(self, items: u64) {
        if self.start != 0 {
            self.finish_timed(items);
        }
        crate::cpu::leave(self.slot);
    }

    #[cold]
    #[inline(never)]
    fn finish_timed(&self, items: u64) {
        if self.op.frequent() {
            crate::span::op_close(self.start, self.component, self.op, items);
            return;
        }
        let end = crate::span::now_ns();
        let duration = end.saturating_sub(self.start);
        component_sample::site(self.component, self.op.code(), items, duration, self.start);
        // A rare operation runs outside batches: a trace of its own.
        component_span::site(self.component, self.op.code(), eventflux_abi::NONE, items, duration, self.start);
    }
}
