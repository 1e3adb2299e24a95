//! W3C trace context across engine nodes.
//!
//! An engine node that forwards events to another carries a trace context with them (the W3C
//! `traceparent`: trace id, parent span id, flags). The receiving node enters the batch of
//! those events with [`Batch::enter_in`](crate::span::Batch::enter_in); the sending node asks
//! [`current`] for the context to send from where it emits. Neither costs anything unless the
//! engine has a context in hand:
//!
//! - while a tool traces (`trace_context` attached), a batch timed with its stages is traced:
//!   its records carry a trace id (the upstream's, or a new one), a root span id and the
//!   upstream's span as parent; [`current`] inside it gives the id of the span open at that
//!   moment (typically "Output Emission"), so the downstream batch's root becomes that span's
//!   child. A batch whose upstream sampled the trace is traced whatever the sampling pace.
//! - otherwise [`current`] hands on the context the batch arrived with, unchanged, so a node
//!   nobody observes does not break the chain; a batch without one forwards none.
//!
//! ```
//! use usdt_markers::trace::{self, TraceContext};
//! use usdt_markers::span::Batch;
//! let incoming = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! let batch = Batch::enter_in(0, incoming);
//! // ... process, then when sending the results downstream:
//! let outgoing = trace::current().map(|c| c.to_string());
//! assert_eq!(outgoing.as_deref(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
//! batch.exit(0, 1, 1);
//! ```

pub use crate::traceparent::{SAMPLED, TraceContext};

/// The trace context to send downstream with events emitted now: inside a traced batch, its
/// trace with the span open now as parent; else the context the current batch arrived with;
/// else `None`.
pub fn current() -> Option<TraceContext> {
    crate::span::traced_context().or_else(crate::span::incoming_context)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing attached (unit tests raise no semaphore): the context a batch arrived with is
    /// handed on while it runs, the outermost batch's wins over a nested one's, and nothing is
    /// left on the thread after the batch, whether it exits or is dropped.
    #[test]
    fn an_incoming_context_is_handed_on_for_the_batch_only() {
        use crate::span::Batch;
        let a = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let b = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        assert_eq!(current(), None);
        let outer = Batch::enter_in(0, a);
        assert_eq!(current(), a);
        let inner = Batch::enter_in(1, b);
        assert_eq!(current(), a, "the outermost batch's context");
        inner.exit(0, 1, 1);
        assert_eq!(current(), a, "a nested batch does not clear it");
        outer.exit(0, 1, 1);
        assert_eq!(current(), None);
        {
            let _dropped = Batch::enter_in(0, b);
            assert_eq!(current(), b);
        }
        assert_eq!(current(), None, "a batch dropped without exit (early return, panic) clears it");
        let plain = Batch::enter_in(0, None);
        assert_eq!(current(), None);
        plain.exit(0, 1, 1);
    }
}
