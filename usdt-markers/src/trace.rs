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

use std::cell::Cell;
use std::fmt;

/// The `sampled` trace flag.
pub const SAMPLED: u8 = 0x01;

/// A W3C trace context (`traceparent`, version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// 128-bit trace id, never 0.
    pub trace_id: u128,
    /// The sender's span, parent of the receiver's; never 0.
    pub span_id: u64,
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceContext {
    /// Whether the upstream sampled (recorded) this trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// Parses a `traceparent` header value: `00-<32 hex>-<16 hex>-<2 hex>`, lower-case, ids not
    /// all zero. Later versions are read as version 00 (their extra fields ignored), as the
    /// W3C specification asks; version `ff` and anything malformed give `None` (the receiver
    /// then starts a new trace).
    pub fn parse(s: &str) -> Option<TraceContext> {
        let s = s.trim();
        let b = s.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex(&s[0..2])? as u8;
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let trace_id = hex(&s[3..35])?;
        let span_id = hex(&s[36..52])? as u64;
        let flags = hex(&s[53..55])? as u8;
        (trace_id != 0 && span_id != 0).then_some(TraceContext { trace_id, span_id, flags })
    }
}

/// Lower-case hex digits only, as many as the field has.
fn hex(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value, version 00.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// The trace context to send downstream with events emitted now: inside a traced batch, its
/// trace with the span open now as parent; else the context the current batch arrived with;
/// else `None`.
pub fn current() -> Option<TraceContext> {
    crate::span::traced_context().or_else(crate::span::incoming_context)
}

thread_local! {
    static IDS: Cell<u64> = const { Cell::new(0) };
}

/// A random, non-zero 64-bit id: splitmix64 over a per-thread sequence seeded from the
/// process's random hash keys (the OS's randomness), so ids of different nodes and threads do
/// not collide.
fn next_id() -> u64 {
    IDS.with(|c| {
        let mut s = c.get();
        if s == 0 {
            use std::hash::BuildHasher;
            s = std::collections::hash_map::RandomState::new().hash_one(crate::span::now_ns()) | 1;
        }
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        c.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

pub(crate) fn new_span_id() -> u64 {
    loop {
        let id = next_id();
        if id != 0 {
            return id;
        }
    }
}

pub(crate) fn new_trace_id() -> u128 {
    (u128::from(next_id()) << 64) | u128::from(new_span_id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_specifications_example_parses_and_prints_back() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(s).expect("valid");
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!((c.span_id, c.flags, c.sampled()), (0x00f067aa0ba902b7, 1, true));
        assert_eq!(c.to_string(), s);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A later version with more fields is read as version 00.
        let later = TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abc");
        assert_eq!(later.map(|c| c.span_id), Some(0x00f067aa0ba902b7));
    }

    #[test]
    fn ids_are_not_zero_and_do_not_repeat() {
        let ids: std::collections::BTreeSet<u64> = (0..10_000).map(|_| new_span_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
        assert_ne!(new_trace_id(), new_trace_id());
    }

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

    proptest! {
        #[test]
        fn display_parses_back(trace_id in 1u128.., span_id in 1u64.., flags: u8) {
            let c = TraceContext { trace_id, span_id, flags };
            prop_assert_eq!(TraceContext::parse(&c.to_string()), Some(c));
        }
    }
}
