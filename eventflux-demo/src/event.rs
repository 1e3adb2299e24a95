//! Events and the deterministic sources that produce them.

/// One input event, a stock tick. `ts_ms` is event time, not wall-clock time, so that time
/// windows give the same output on every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub ts_ms: u64,
    pub symbol: u32,
    pub price: i64,
    pub volume: i64,
}

/// A batch of events moving through the pipeline together, as the engine's chunks do.
pub type Chunk = Vec<Event>;

/// Number of distinct symbols: the group-by cardinality.
pub const SYMBOLS: u32 = 16;

/// A source: a seeded xorshift generator, one per stream, so every stream's sequence depends
/// only on its id.
pub struct Source {
    state: u64,
    next_ts_ms: u64,
}

impl Source {
    pub fn new(stream_id: u32) -> Self {
        Source {
            state: 0x9E37_79B9_7F4A_7C15 ^ (u64::from(stream_id) + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            next_ts_ms: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    pub fn next_event(&mut self) -> Event {
        let r = self.next_u64();
        let ts_ms = self.next_ts_ms;
        self.next_ts_ms += 1;
        Event {
            ts_ms,
            symbol: (r % u64::from(SYMBOLS)) as u32,
            price: ((r >> 8) % 1000) as i64 + 1,
            // Zero in one event of fifty: the filter's division fails there (an error probe).
            volume: ((r >> 20) % 50) as i64,
        }
    }

    /// Moves past `n` events, as a source resumed from a snapshot at that position does.
    pub fn skip(&mut self, n: u64) {
        for _ in 0..n {
            self.next_event();
        }
    }

    /// The next `len` events; while `trouble` (the runtime's `--trouble` window), half of them
    /// malformed.
    pub fn chunk(&mut self, len: usize, trouble: bool) -> Chunk {
        (0..len)
            .map(|_| {
                let e = self.next_event();
                // In trouble, every other event of the source is malformed (whatever the chunk
                // size): a zero volume fails the filter.
                if trouble && e.ts_ms.is_multiple_of(2) { Event { volume: 0, ..e } } else { e }
            })
            .collect()
    }
}
