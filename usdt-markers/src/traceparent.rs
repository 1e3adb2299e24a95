//! The W3C trace context (`traceparent`) as a value: what nodes send each other, parsed and
//! printed. Apart from [`crate::trace`], which asks the spans for the current context, so that
//! the spans can carry contexts without importing what reads them.

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

    proptest! {
        #[test]
        fn display_parses_back(trace_id in 1u128.., span_id in 1u64.., flags: u8) {
            let c = TraceContext { trace_id, span_id, flags };
            prop_assert_eq!(TraceContext::parse(&c.to_string()), Some(c));
        }
    }
}
