//! Exemplars: which exported trace fell in which latency bucket.
//!
//! The kernel counts every sampled batch into the latency histograms; a few of those batches
//! also become traces (OTLP). A trace the exporter queued is recorded here under the
//! histograms its batch was counted in, in the kernel bucket its value fell in:
//! - `query_latency_seconds`: the batch's latency as the engine measured it, only for a batch
//!   whose latency the kernel counted (a latency sample, `Trace::clean`);
//! - `query_stage_latency_seconds`: each stage's self time in the batch, the sum over its
//!   spans, as the kernel counts it from the same batch.
//!
//! One exemplar per kernel bucket and histogram, the latest: a scrape shows recent traces,
//! and the store is bounded by the histograms it may hold ([`MAX_HISTOGRAMS`]; beyond, new
//! histograms get none). The exposition picks, per classic bucket, the latest exemplar of the
//! kernel buckets it covers.

use std::collections::BTreeMap;

use eventflux_probe_common::{hist, stage};

use super::Model;
use super::hist::Exemplar;
use super::trace::{Clock, Trace};

/// Histograms (pid, query, stage) with exemplars at most.
const MAX_HISTOGRAMS: usize = 4096;

/// The latest exemplar per kernel bucket of each histogram.
#[derive(Debug, Default)]
pub struct Exemplars {
    /// By (pid, query, `stage::BATCH` or a stage code).
    by: BTreeMap<(u32, u32, u32), BTreeMap<usize, Exemplar>>,
}

impl Exemplars {
    /// Records `t`, exported as trace `trace_id`, in the histograms its batch was counted in.
    pub fn record(&mut self, t: &Trace, trace_id: u128, clock: &Clock) {
        if t.query == eventflux_abi::NONE {
            return;
        }
        let unix_ms = i64::try_from(clock.unix_ns(t.root.end_ns) / 1_000_000).unwrap_or(i64::MAX);
        let mut values: Vec<(u32, u64)> = Vec::new();
        if t.clean && t.latency_ns > 0 {
            values.push((stage::BATCH, t.latency_ns));
        }
        let mut stages: BTreeMap<u32, u64> = BTreeMap::new();
        for (_, s) in t.root.walk().into_iter().skip(1) {
            if s.stage < stage::BATCH {
                *stages.entry(s.stage).or_default() += s.self_ns;
            }
        }
        values.extend(stages.into_iter().filter(|(_, ns)| *ns > 0));
        for (st, value_ns) in values {
            let key = (t.pid, t.query, st);
            if !self.by.contains_key(&key) && self.by.len() >= MAX_HISTOGRAMS {
                continue;
            }
            let e = Exemplar { trace_id, value_ns, unix_ms };
            self.by.entry(key).or_default().insert(hist::bucket(value_ns), e);
        }
    }

    /// Puts the exemplars into `model`'s histograms; forgets those of processes the model no
    /// longer has.
    pub fn fill(&mut self, model: &mut Model) {
        self.by.retain(|(pid, _, _), _| model.engines.contains_key(pid));
        for (&(pid, query, st), exemplars) in &self.by {
            let Some(q) = model.engines.get_mut(&pid).and_then(|e| e.queries.get_mut(&query)) else { continue };
            let h = if st == stage::BATCH { q.latency.as_mut() } else { q.stages.get_mut(&st) };
            if let Some(h) = h {
                h.exemplars.clone_from(exemplars);
            }
        }
    }

    /// Whether no histogram holds an exemplar.
    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hist::HistData;
    use crate::model::trace::Span;
    use crate::model::{Engine, Query};

    fn span(stage: u32, start_ns: u64, end_ns: u64, self_ns: u64, children: Vec<Span>) -> Span {
        Span { stage, start_ns, end_ns, self_ns, events_in: 1, events_out: 1, span_id: 0, component: None, children }
    }

    fn trace(clean: bool) -> Trace {
        let filter1 = span(stage::FILTER, 100, 400, 300, vec![]);
        let filter2 = span(stage::FILTER, 400, 600, 200, vec![]);
        let emit = span(stage::EMIT, 600, 5_600, 5_000, vec![]);
        Trace {
            pid: 7,
            tid: 7,
            query: 1,
            stream: 0,
            clean,
            latency_ns: 6_000,
            context: None,
            root: span(stage::BATCH, 0, 6_000, 500, vec![filter1, filter2, emit]),
        }
    }

    fn model() -> Model {
        let mut q = Query { id: 1, latency: Some(HistData::default()), ..Default::default() };
        for st in [stage::FILTER, stage::EMIT] {
            q.stages.insert(st, HistData::default());
        }
        let mut e = Engine { pid: 7, ..Default::default() };
        e.queries.insert(1, q);
        let mut m = Model::default();
        m.engines.insert(7, e);
        m
    }

    #[test]
    fn a_trace_lands_in_the_buckets_its_values_were_counted_in() {
        let clock = Clock::now();
        let mut x = Exemplars::default();
        x.record(&trace(true), 42, &clock);
        let mut m = model();
        x.fill(&mut m);
        let q = &m.engines[&7].queries[&1];
        let latency = &q.latency.as_ref().expect("latency").exemplars;
        assert_eq!(latency.len(), 1);
        assert_eq!(latency.get(&hist::bucket(6_000)).map(|e| (e.trace_id, e.value_ns)), Some((42, 6_000)));
        // A stage's self time is the sum over its spans, as the kernel counts it.
        let filter = &q.stages[&stage::FILTER].exemplars;
        assert_eq!(filter.get(&hist::bucket(500)).map(|e| e.value_ns), Some(500));
        assert_eq!(q.stages[&stage::EMIT].exemplars.get(&hist::bucket(5_000)).map(|e| e.value_ns), Some(5_000));
    }

    #[test]
    fn a_batch_whose_latency_was_not_counted_gives_no_latency_exemplar() {
        let mut x = Exemplars::default();
        x.record(&trace(false), 42, &Clock::now());
        let mut m = model();
        x.fill(&mut m);
        let q = &m.engines[&7].queries[&1];
        assert!(q.latency.as_ref().expect("latency").exemplars.is_empty());
        assert_eq!(q.stages[&stage::FILTER].exemplars.len(), 1);
    }

    #[test]
    fn the_latest_trace_per_bucket_wins_and_gone_processes_are_forgotten() {
        let clock = Clock::now();
        let mut x = Exemplars::default();
        x.record(&trace(true), 1, &clock);
        x.record(&trace(true), 2, &clock);
        let mut m = model();
        x.fill(&mut m);
        let latency = &m.engines[&7].queries[&1].latency.as_ref().expect("latency").exemplars;
        assert_eq!(latency.values().map(|e| e.trace_id).collect::<Vec<_>>(), vec![2]);
        x.fill(&mut Model::default());
        assert!(x.is_empty());
    }
}
