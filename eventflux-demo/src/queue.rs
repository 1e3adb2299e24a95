//! The bounded queue of an async stream junction: one per subscribing query, drained by that
//! query's worker thread. When it is full the producer waits, which is backpressure; with a
//! back-off (`--drop-after`) it waits at most that long and then refuses the chunk, as the
//! engine's junctions drop events whose queue stays full.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use usdt_markers::trace::TraceContext;
use usdt_markers::{backpressure, queue_state};

use crate::event::{Chunk, Event};

/// What became of a pushed chunk.
#[derive(Debug, Clone, Copy)]
pub struct Pushed {
    /// The queue was full: the producer met backpressure.
    pub waited: bool,
    /// Queued; false: refused after the back-off.
    pub queued: bool,
}

struct Item {
    chunk: Arc<Chunk>,
    context: Option<TraceContext>,
    queued_at: Instant,
}

struct State {
    items: VecDeque<Item>,
    bytes: u64,
    /// Nanoseconds the last dequeued chunk waited.
    last_wait_ns: u64,
    closed: bool,
}

pub struct Queue {
    capacity: usize,
    backpressure: backpressure::Counter,
    gauge: queue_state::Gauge,
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    /// `--spin-us`: how long a consumer that found the queue empty spins (busy) before it
    /// blocks, as the engine's pool consumers do, and the pool it is idle in.
    spin: Option<(Duration, u32)>,
    /// Thread CPU time spent spinning, in nanoseconds.
    pub spun_cpu_ns: AtomicU64,
}

impl Queue {
    pub fn new(stream_id: u32, query_id: u32, capacity: usize) -> Self {
        Queue {
            capacity: capacity.max(1),
            backpressure: backpressure::Counter::new(stream_id, query_id),
            gauge: queue_state::Gauge::new(stream_id, query_id),
            state: Mutex::new(State { items: VecDeque::new(), bytes: 0, last_wait_ns: 0, closed: false }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            spin: None,
            spun_cpu_ns: AtomicU64::new(0),
        }
    }

    /// Consumers spin for `spin` before they block on an empty queue, idle in pool `pool`.
    pub fn spinning(mut self, spin: Duration, pool: u32) -> Self {
        self.spin = (!spin.is_zero()).then_some((spin, pool));
        self
    }

    /// Spins (busy) until the queue has an item, is closed, or `spin` passed, marked idle
    /// in `pool` for CPU attribution; its thread CPU time goes to `spun_cpu_ns`.
    fn spin(&self, spin: Duration, pool: u32) {
        let cpu_from = crate::query::thread_cpu_ns();
        let idle = usdt_markers::cpu::Idle::enter(pool);
        let until = Instant::now() + spin;
        while Instant::now() < until {
            {
                let state = self.lock();
                if !state.items.is_empty() || state.closed {
                    break;
                }
            }
            // Busy, as a pool's consumer polls: `yield_now` would hand a busy machine's CPU to
            // others and spin nothing.
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
        drop(idle);
        self.spun_cpu_ns.fetch_add(crate::query::thread_cpu_ns().saturating_sub(cpu_from), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a chunk, waiting while the queue is full: with `give_up_after`, at most that
    /// long (the junction's back-off), after which the chunk is refused. Returns whether it had
    /// to wait, and whether it was queued.
    pub fn push(&self, chunk: Arc<Chunk>, context: Option<TraceContext>, give_up_after: Option<Duration>) -> Pushed {
        let bytes = (chunk.len() * size_of::<Event>()) as u64;
        let mut state = self.lock();
        let waited = state.items.len() >= self.capacity;
        if waited {
            self.backpressure.add(1);
            let deadline = give_up_after.map(|d| Instant::now() + d);
            while state.items.len() >= self.capacity {
                state = match deadline {
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Pushed { waited, queued: false };
                        }
                        self.not_full.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0
                    }
                    None => self.not_full.wait(state).unwrap_or_else(|e| e.into_inner()),
                };
            }
        }
        state.items.push_back(Item { chunk, context, queued_at: Instant::now() });
        state.bytes += bytes;
        self.gauge.set(state.items.len() as u64, self.capacity as u64, state.bytes, state.last_wait_ns);
        drop(state);
        self.not_empty.notify_one();
        Pushed { waited, queued: true }
    }

    /// Takes the oldest chunk, its trace context and how long it waited; `None` once the queue
    /// is closed and drained.
    pub fn pop(&self) -> Option<(Arc<Chunk>, Option<TraceContext>, u64)> {
        if let Some((spin, pool)) = self.spin
            && self.lock().items.is_empty()
        {
            self.spin(spin, pool);
        }
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                state.bytes -= (item.chunk.len() * size_of::<Event>()) as u64;
                let wait_ns = u64::try_from(item.queued_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                state.last_wait_ns = wait_ns;
                self.gauge.set(state.items.len() as u64, self.capacity as u64, state.bytes, wait_ns);
                drop(state);
                self.not_full.notify_one();
                return Some((item.chunk, item.context, wait_ns));
            }
            if state.closed {
                return None;
            }
            state = self.not_empty.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Chunks queued now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
    }
}
