//! OTLP export of the span trees of sampled batches (`trace::Trace`), with `opentelemetry-otlp`
//! over gRPC or HTTP/protobuf.
//!
//! The engine never waits for this: span records reach us through a ring buffer the kernel
//! programs fill without blocking; here a bounded queue of spans sits between the tree
//! assembly and a worker that exports batches. A full queue or a failed export drops spans and
//! counts them (`eventflux_probe_spans_dropped_total{reason}`); the daemon stays healthy and
//! says so in `/health` (`observer.otlp`).
//!
//! Each sampled batch is one trace: a root span "Query Execution" with a child per stage span
//! ("Event Ingestion", "Filter Processing", "Window Processing", "Aggregation Processing",
//! "Output Emission"), nested as they ran, times converted from CLOCK_MONOTONIC to wall-clock
//! time by [`Clock`]. A batch the engine traced carries its W3C context: its trace id, its root
//! span's id and its upstream parent (a span another node's observer exported), and the ids
//! the engine gave spans it forwarded the context from; other ids are drawn here. The root of
//! a batch that continues an upstream trace is a `Consumer` span with a remote parent, a span
//! whose context went downstream a `Producer`.
//!
//! The resource is the process the spans come from (`process.pid`, its executable): one per
//! target, so spans of a successor followed after a restart carry its own pid.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use eventflux_abi::ComponentOp;
use eventflux_probe_common::stage;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use crate::model::Model;
use crate::model::OtlpState;
use crate::model::trace::{Clock, Span, Trace};
use crate::sync::lock;

use super::options::{Options, Wire, host_name};

/// Processes whose resource is kept at most.
const MAX_RESOURCES: usize = 4096;

/// The queue between tree assembly and the export worker.
pub struct Exporter {
    options: Options,
    /// Spans with the pid of the process they come from (whose resource they are exported
    /// under).
    queue: Mutex<VecDeque<(u32, SpanData)>>,
    /// Resource per target process.
    /// In the order the targets came, newest last.
    resources: Mutex<VecDeque<(u32, Resource)>>,
    exported: AtomicU64,
    dropped: [AtomicU64; 2],
    last: Mutex<(Option<String>, Option<Instant>)>,
    ids: Mutex<IdSource>,
    scope: InstrumentationScope,
}

/// Random trace and span ids: xorshift seeded from the kernel's random source.
struct IdSource(u64);

impl IdSource {
    fn new() -> IdSource {
        let mut seed = [0u8; 8];
        let random =
            std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed)).is_ok();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        IdSource(if random { u64::from_le_bytes(seed) | 1 } else { nanos | 1 })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The span names of the design document's hierarchy.
fn span_name(span: &Span) -> &'static str {
    match span.stage {
        stage::BATCH => "Query Execution",
        stage::INGEST => "Event Ingestion",
        stage::FILTER => "Filter Processing",
        stage::WINDOW => "Window Processing",
        stage::AGGREGATE => "Aggregation Processing",
        stage::EMIT => "Output Emission",
        _ => match span.op() {
            Some(ComponentOp::JoinProbe) => "Join Probe",
            Some(ComponentOp::TableLookup) => "Table Lookup",
            Some(ComponentOp::PatternStep) => "Pattern Step",
            Some(ComponentOp::SinkPublish) => "Sink Publish",
            Some(ComponentOp::Snapshot) => "Snapshot",
            Some(ComponentOp::Restore) => "Restore",
            None => "Stage",
        },
    }
}

impl Exporter {
    /// The exporter for `options`, and the worker future that exports its queue (spawn it on
    /// the daemon's runtime). Each target's spans need its resource first ([`Exporter::add_target`]).
    pub fn start(options: Options) -> Result<(std::sync::Arc<Exporter>, Worker)> {
        let endpoint = options.endpoint.clone().ok_or_else(|| anyhow!("no OTLP endpoint for traces"))?;
        // The endpoint, TLS and timeout are ours; headers and compression the crate reads from
        // the standard variables (`OTEL_EXPORTER_OTLP_{,TRACES_}{HEADERS,COMPRESSION}`).
        let http_client = super::tls::Explained::new(options.tls.reqwest(options.timeout)?);
        let inner = match options.wire {
            Wire::Grpc => {
                let b = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(options.timeout)
                    .with_endpoint(endpoint.clone());
                if super::tls::is_https(&endpoint) { b.with_tls_config(options.tls.tonic()).build() } else { b.build() }
            }
            Wire::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(options.timeout)
                .with_http_client(http_client.clone())
                // The HTTP exporter takes the whole URL of the traces endpoint.
                .with_endpoint(endpoint)
                .build(),
        }
        .map_err(|e| anyhow!("cannot set up the OTLP exporter: {e}"))?;
        let exporter = std::sync::Arc::new(Exporter {
            scope: InstrumentationScope::builder("eventflux-probe").with_version(env!("CARGO_PKG_VERSION")).build(),
            options,
            queue: Mutex::new(VecDeque::new()),
            resources: Mutex::new(VecDeque::new()),
            exported: AtomicU64::new(0),
            dropped: [AtomicU64::new(0), AtomicU64::new(0)],
            last: Mutex::new((None, None)),
            ids: Mutex::new(IdSource::new()),
        });
        let worker = Worker { exporter: std::sync::Arc::clone(&exporter), inner, resource_of: None, http_client };
        Ok((exporter, worker))
    }

    /// A process whose spans will be exported (the first target, a successor after a
    /// restart): its resource.
    pub fn add_target(&self, pid: u32, exe: &str) {
        let o = &self.options;
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", o.service_name.clone()),
                KeyValue::new("service.version", o.service_version.clone()),
                KeyValue::new("deployment.environment", o.environment.clone()),
                KeyValue::new("host.name", host_name()),
                KeyValue::new("process.pid", i64::from(pid)),
                KeyValue::new("process.executable.path", exe.to_owned()),
                KeyValue::new("telemetry.sdk.name", "eventflux-probe"),
                KeyValue::new("telemetry.sdk.language", "rust"),
            ])
            .build();
        let mut resources = lock(&self.resources);
        resources.retain(|(p, _)| *p != pid);
        // `run` has two live targets at most (one exporting its last spans, its successor),
        // node mode one per engine: the oldest go first past a node's worth.
        while resources.len() >= MAX_RESOURCES {
            resources.pop_front();
        }
        resources.push_back((pid, resource));
    }

    /// Queues one trace's spans; what does not fit is dropped and counted. The trace id it
    /// goes out under, if queued (an exemplar may point at it).
    pub fn offer(&self, trace: &Trace, model: &Model, clock: &Clock) -> Option<u128> {
        let (trace_id, spans) = self.spans(trace, model, clock);
        let mut queue = lock(&self.queue);
        let room = self.options.queue_spans.saturating_sub(queue.len());
        if spans.len() > room {
            // A trace is all or nothing: half a tree is worse than none.
            self.dropped[0].fetch_add(spans.len() as u64, Ordering::Relaxed);
            return None;
        }
        queue.extend(spans.into_iter().map(|s| (trace.pid, s)));
        Some(trace_id)
    }

    fn spans(&self, t: &Trace, model: &Model, clock: &Clock) -> (u128, Vec<SpanData>) {
        let engine = model.engines.get(&t.pid);
        let query = engine.and_then(|e| e.queries.get(&t.query));
        // An operation outside batches (a snapshot) belongs to no query or stream.
        let outside = t.query == eventflux_abi::NONE;
        let query_name = query.map_or_else(|| format!("query{}", t.query), |q| q.name.clone());
        let stream = engine.map_or_else(|| format!("stream{}", t.stream), |e| e.stream_name(t.stream));
        let window = query.and_then(|q| q.window).map(eventflux_abi::WindowKind::label);
        // The engine's ids where it gave some (a traced batch), ours for the rest.
        let walk = t.root.walk();
        let (trace_id, span_ids) = {
            let mut ids = lock(&self.ids);
            let trace_id = match t.context {
                Some(c) => c.trace_id,
                None => (u128::from(ids.next()) << 64) | u128::from(ids.next()),
            };
            let span_ids: Vec<u64> = walk
                .iter()
                .map(|(depth, s)| match (depth, t.context) {
                    (0, Some(c)) => c.span_id,
                    _ if s.span_id != 0 => s.span_id,
                    _ => ids.next(),
                })
                .collect();
            (trace_id, span_ids)
        };
        let raw_trace_id = trace_id;
        let trace_id = TraceId::from_bytes(trace_id.to_be_bytes());
        let remote_parent = t.context.map_or(0, |c| c.parent_span_id);
        let time = |ns: u64| UNIX_EPOCH + Duration::from_nanos(clock.unix_ns(ns));
        let mut out = Vec::new();
        let mut stack: Vec<(usize, SpanId)> = Vec::new();
        for ((depth, span), raw_id) in walk.into_iter().zip(span_ids) {
            let id = SpanId::from_bytes(raw_id.to_be_bytes());
            while stack.last().is_some_and(|(d, _)| *d >= depth) {
                stack.pop();
            }
            let (parent, remote) = match stack.last() {
                Some((_, id)) => (*id, false),
                None if remote_parent != 0 => (SpanId::from_bytes(remote_parent.to_be_bytes()), true),
                None => (SpanId::INVALID, false),
            };
            stack.push((depth, id));
            let kind = if remote {
                SpanKind::Consumer
            } else if depth > 0 && span.span_id != 0 {
                SpanKind::Producer
            } else {
                SpanKind::Internal
            };
            let mut attributes = if outside {
                vec![]
            } else {
                vec![KeyValue::new("query.id", query_name.clone()), KeyValue::new("stream.name", stream.clone())]
            };
            attributes.extend([
                KeyValue::new("event.count", span.events_in as i64),
                KeyValue::new("eventflux.events_out", span.events_out as i64),
                KeyValue::new("eventflux.self_ns", span.self_ns as i64),
                KeyValue::new("thread.id", i64::from(t.tid)),
            ]);
            if span.stage != stage::BATCH {
                attributes.push(KeyValue::new("processor.type", span.name()));
            } else if t.latency_ns > 0 {
                // What the latency histogram counted (the root may start earlier, with ingest):
                // the value of this trace's exemplar.
                attributes.push(KeyValue::new("eventflux.latency_ns", t.latency_ns as i64));
            }
            if let Some(c) = span.component.and_then(|c| engine.and_then(|e| e.components.get(&c))) {
                attributes.push(KeyValue::new("component.name", c.name.clone()));
            }
            if let (Some(w), true) = (window, span.stage == stage::WINDOW || span.stage == stage::BATCH) {
                attributes.push(KeyValue::new("window.type", w));
            }
            out.push(SpanData {
                span_context: SpanContext::new(trace_id, id, TraceFlags::SAMPLED, false, TraceState::default()),
                parent_span_id: parent,
                parent_span_is_remote: remote,
                span_kind: kind,
                name: Cow::Borrowed(span_name(span)),
                start_time: time(span.start_ns),
                end_time: time(span.end_ns),
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: self.scope.clone(),
            });
        }
        (raw_trace_id, out)
    }

    pub fn state(&self) -> OtlpState {
        let last = lock(&self.last);
        OtlpState {
            endpoint: self.options.endpoint.as_deref().map_or_else(String::new, crate::secrets::redact_url),
            protocol: match self.options.wire {
                Wire::Grpc => "grpc",
                Wire::HttpProtobuf => "http/protobuf",
            },
            exported_spans: self.exported.load(Ordering::Relaxed),
            dropped_spans: [self.dropped[0].load(Ordering::Relaxed), self.dropped[1].load(Ordering::Relaxed)],
            queued_spans: lock(&self.queue).len(),
            last_error: last.0.clone(),
            last_success_seconds_ago: last.1.map(|at| at.elapsed().as_secs_f64()),
            metrics: None,
        }
    }
}

/// Exports the queue in batches until dropped.
pub struct Worker {
    exporter: std::sync::Arc<Exporter>,
    inner: opentelemetry_otlp::SpanExporter,
    /// The process whose resource `inner` has now.
    resource_of: Option<u32>,
    /// What the HTTP exporter sends with, and why its last request failed.
    http_client: super::tls::Explained,
}

impl Worker {
    pub async fn run(mut self) {
        let e = std::sync::Arc::clone(&self.exporter);
        let mut tick = tokio::time::interval(e.options.interval);
        loop {
            tick.tick().await;
            loop {
                // One request carries one resource: the spans of one process. Node mode's
                // engines interleave in the queue, so the spans of the first process are taken
                // from the next batch's worth wherever they are, the others keep their order.
                let (pid, batch): (u32, Vec<SpanData>) = {
                    let mut q = lock(&e.queue);
                    let Some(pid) = q.front().map(|(pid, _)| *pid) else { break };
                    let window = q.len().min(e.options.batch_spans);
                    let (mut batch, mut rest) = (Vec::new(), VecDeque::with_capacity(window));
                    for (p, span) in q.drain(..window) {
                        if p == pid { batch.push(span) } else { rest.push_back((p, span)) }
                    }
                    while let Some(item) = rest.pop_back() {
                        q.push_front(item);
                    }
                    (pid, batch)
                };
                if self.resource_of != Some(pid) {
                    let known = lock(&e.resources).iter().find(|(p, _)| *p == pid).map(|(_, r)| r.clone());
                    // A process whose resource was forgotten still says which it is.
                    let resource = known.unwrap_or_else(|| {
                        Resource::builder_empty()
                            .with_attributes([KeyValue::new("process.pid", i64::from(pid))])
                            .build()
                    });
                    self.inner.set_resource(&resource);
                    self.resource_of = Some(pid);
                }
                let n = batch.len() as u64;
                let result = tokio::time::timeout(e.options.timeout, self.inner.export(batch)).await;
                let error = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(match self.http_client.take_cause() {
                        Some(cause) => super::tls::join_distinct(&[super::tls::error_chain(&err), cause]),
                        None => super::tls::error_chain(&err),
                    }),
                    Err(_) => Some(format!("no answer within {:?}", e.options.timeout)),
                };
                let mut last = lock(&e.last);
                match error {
                    None => {
                        e.exported.fetch_add(n, Ordering::Relaxed);
                        *last = (None, Some(Instant::now()));
                    }
                    Some(err) => {
                        e.dropped[1].fetch_add(n, Ordering::Relaxed);
                        let err = super::tls::with_hint(crate::secrets::scrub(&err).into_owned());
                        if last.0.is_none() {
                            tracing::warn!("OTLP export failed, spans dropped until it recovers: {err}");
                        }
                        // Served by /health: what a client library put in its error text too.
                        last.0 = Some(err);
                        // The collector is down: try again next tick, not in a tight loop.
                        break;
                    }
                }
            }
        }
    }
}
