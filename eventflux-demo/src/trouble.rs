//! Whether the engine is in trouble now (`--trouble`): half of the sources' events are
//! malformed (an expression error each), async query workers are slow (their queues back up,
//! producers meet backpressure) and query 0's sink is disconnected. What a health check must
//! notice, then see recover. Apart from the runtime that sets it, so that the queries and
//! components that read it do not import the runtime.

use std::sync::atomic::{AtomicBool, Ordering};

static TROUBLE: AtomicBool = AtomicBool::new(false);

pub fn in_trouble() -> bool {
    TROUBLE.load(Ordering::Relaxed)
}

pub fn set(now: bool) {
    TROUBLE.store(now, Ordering::Relaxed);
}
