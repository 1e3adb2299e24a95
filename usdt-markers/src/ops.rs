//! Component operations the engine times itself (`component_sample`, docs/probes.md
//! "Components"). Only rare operations come through here — a snapshot, a restore — so each is
//! timed and fired every time: their number, not the event rate, sets what an observer costs.
//! Frequent ones (a join probe, a table lookup) will be timed inside sampled batches instead.

use eventflux_abi::ComponentOp;

use crate::points::component_sample;

/// One timed operation: [`Timed::start`] before it, [`Timed::finish`] after. While no tool is
/// attached to `component_sample` neither reads the clock.
#[derive(Debug)]
#[must_use = "an operation is timed until `finish`"]
pub struct Timed {
    component: u32,
    op: ComponentOp,
    /// CLOCK_MONOTONIC at the start; 0 when nobody observes.
    start: u64,
}

impl Timed {
    /// Starts timing `op` of component `component`.
    pub fn start(component: u32, op: ComponentOp) -> Timed {
        let start = if component_sample::is_enabled() { crate::span::now_ns().max(1) } else { 0 };
        Timed { component, op, start }
    }

    /// The operation ended, having handled `items` (events, rows, bytes: the operation's own
    /// unit): fires `component_sample` with its duration.
    pub fn finish(self, items: u64) {
        if self.start == 0 {
            return;
        }
        let end = crate::span::now_ns();
        component_sample::site(self.component, self.op.code(), items, end.saturating_sub(self.start), self.start);
    }
}
