//! The model as OTLP metrics, for shops that run only an OpenTelemetry Collector.
//!
//! The series are `/metrics`' (the same capped collection, `export::prometheus::collect`),
//! converted as the Collector's Prometheus exporters convert back, so that names round-trip:
//! - a counter is a monotonic `Sum` named without its `_total`;
//! - a gauge is a `Gauge`;
//! - a latency histogram is an `ExponentialHistogram` at scale 2 whose buckets are the
//!   kernel's own (kernel bucket `k` is OTLP bucket `k - 120`: OTLP's bucket `i` is
//!   `(2^(i/4), 2^((i+1)/4)]`, native schema 2's bucket `i` is `(2^((i-1)/4), 2^(i/4)]`), with
//!   the exact count and sum, and the exemplars of `/metrics` (trace and value);
//! - labels are attributes; the resource is the observer's (`service.name`, …, `host.name`).
//!
//! Why not `opentelemetry-otlp`'s `MetricExporter`: it sends only what the SDK's instruments
//! aggregated from single measurements, and the SDK's data types cannot be built outside it.
//! Our histograms arrive aggregated by the kernel; replaying them as measurements would lose
//! the exact sums and cost a call per counted batch. So the requests are built from
//! `opentelemetry-proto`'s messages (the ones `opentelemetry-otlp` sends) and go out over the
//! same transports: tonic's generated `MetricsService` client, or an HTTP POST of the protobuf
//! body to `/v1/metrics`.
//!
//! Temporality: cumulative (the default) sends running totals, each point starting at the
//! export that first saw its series or at the one after its total went down (a target
//! restarted); delta sends the change since the last successful export (a failed export's
//! change goes out with the next one, so sums of deltas stay exact; a total that went down is
//! sent whole). A stopping service sends one last export ([`MetricsExporter::flush`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use eventflux_probe_common::hist;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    self as pm, AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exponential_histogram_data_point::Buckets, metric::Data,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::proto::MetricType;
use prost::Message;

use super::options::{MetricsOptions, Temporality, Wire};
use crate::export::prometheus::{Families, Labels, Options as PromOptions, Value, collect};
use crate::model::{Model, OtlpMetricsState};
use crate::sync::lock;

/// OTLP bucket index of kernel bucket 0.
const FIRST_OTLP_INDEX: i32 = hist::FIRST_INDEX - 1;

/// What the model source gives: the model now, and the options `/metrics` shows it with.
pub type ModelSource = std::sync::Arc<dyn Fn() -> Result<(Model, PromOptions)> + Send + Sync>;

/// Each counted series' total, by (metric, labels).
pub(crate) type Totals = BTreeMap<(&'static str, Labels), Value>;

/// Counted series kept at most in [`Series`] (several times `/metrics`' caps); beyond, the
/// oldest knowledge is dropped: delta then sends a whole total once, cumulative a new start.
const MAX_SERIES: usize = 200_000;

/// What the exporter remembers of each counted series between exports: one entry per series,
/// and only what its temporality needs (a node's worth of series is tens of thousands).
#[derive(Default)]
struct Series {
    /// Cumulative: when each series' running total began (the export that first saw it, or
    /// the one after its total went down: a target restarted, a series back from the
    /// overflow), and its last level (value or count, and sum) to see it go down.
    cumulative: BTreeMap<(&'static str, Labels), (u64, f64, u64)>,
    /// Delta: the totals the collector has accepted, the baseline of the next changes.
    sent: Totals,
    /// When the last export succeeded.
    sent_at: u64,
}

/// A total's level: its value or count, and its sum (a histogram's count may stay while its
/// sum restarts lower).
fn level(v: &Value) -> (f64, u64) {
    match v {
        Value::Scalar(x) => (*x, 0),
        Value::Hist { count, sum_ns, .. } => (*count as f64, *sum_ns),
    }
}

/// Builds requests from the model and sends them every interval.
pub struct MetricsExporter {
    options: MetricsOptions,
    resource: Vec<KeyValue>,
    /// Nanoseconds since the epoch when export began.
    start_ns: u64,
    series: Mutex<Series>,
    transport: Transport,
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value)) }),
        ..Default::default()
    }
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| kv(k, v.clone())).collect()
}

/// The unit the name's suffix says (UCUM, as the specification writes units).
fn unit(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    if base.ends_with("_seconds") {
        "s"
    } else if base.ends_with("_bytes") {
        "By"
    } else {
        ""
    }
}

/// `current` less `previous`, or `current` when a total went down (a reset).
fn delta(current: &Value, previous: Option<&Value>) -> Value {
    match (current, previous) {
        (Value::Scalar(c), Some(Value::Scalar(p))) if c >= p => Value::Scalar(c - p),
        (
            Value::Hist { buckets, count, sum_ns, exemplars },
            Some(Value::Hist { buckets: pb, count: pc, sum_ns: ps, .. }),
        ) if count >= pc && sum_ns >= ps && buckets.iter().zip(pb).all(|(c, p)| c >= p) => Value::Hist {
            buckets: buckets.iter().zip(pb.iter().chain(std::iter::repeat(&0))).map(|(c, p)| c - p).collect(),
            count: count - pc,
            sum_ns: sum_ns - ps,
            exemplars: exemplars.clone(),
        },
        _ => current.clone(),
    }
}

/// The kernel bucket counts as OTLP's positive buckets: the run from the first non-empty
/// bucket to the last.
fn buckets(counts: &[u64]) -> Buckets {
    let first = counts.iter().position(|&n| n > 0);
    let last = counts.iter().rposition(|&n| n > 0);
    match (first, last) {
        (Some(f), Some(l)) => Buckets { offset: FIRST_OTLP_INDEX + f as i32, bucket_counts: counts[f..=l].to_vec() },
        _ => Buckets { offset: 0, bucket_counts: Vec::new() },
    }
}

impl MetricsExporter {
    pub fn new(
        options: MetricsOptions,
        resource: Vec<(&'static str, String)>,
        transport: Transport,
    ) -> MetricsExporter {
        MetricsExporter {
            options,
            resource: resource.into_iter().map(|(k, v)| kv(k, v)).collect(),
            start_ns: now_ns(),
            series: Mutex::new(Series::default()),
            transport,
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The export's own figures, for `/health` and `/metrics`.
    pub fn state(&self) -> OtlpMetricsState {
        OtlpMetricsState {
            endpoint: crate::secrets::redact_url(&self.options.endpoint),
            temporality: match self.options.temporality {
                Temporality::Cumulative => "cumulative",
                Temporality::Delta => "delta",
            },
            exports_ok: self.ok.load(Ordering::Relaxed),
            exports_failed: self.failed.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// The request for `model` now, and (delta) the totals it was built from.
    pub(crate) fn request(&self, model: &Model, prom: &PromOptions, now: u64) -> (ExportMetricsServiceRequest, Totals) {
        let families: Families = collect(model, prom);
        let mut series = lock(&self.series);
        let Series { cumulative, sent, sent_at } = &mut *series;
        if cumulative.len() > MAX_SERIES || sent.len() > MAX_SERIES {
            cumulative.clear();
            sent.clear();
        }
        let delta_mode = self.options.temporality == Temporality::Delta;
        let temporality = if delta_mode { AggregationTemporality::Delta } else { AggregationTemporality::Cumulative };
        // The previous export (or the start): where a delta, or a total first seen now, begins.
        let previous = if *sent_at > 0 { *sent_at } else { self.start_ns };
        let mut totals = BTreeMap::new();
        let mut metrics = Vec::new();
        for (name, fam) in families.by_name {
            let (mut numbers, mut histograms) = (Vec::new(), Vec::new());
            for (labels, value) in fam.series {
                let key = (name, labels);
                let counted = fam.kind != MetricType::GAUGE;
                let shown = if delta_mode && counted { delta(&value, sent.get(&key)) } else { value.clone() };
                let start = if !counted {
                    0
                } else if delta_mode {
                    previous
                } else {
                    let (now_level, now_sum) = level(&value);
                    match cumulative.get_mut(&key) {
                        Some((at, last_level, last_sum)) => {
                            if now_level < *last_level || now_sum < *last_sum {
                                *at = previous;
                            }
                            (*last_level, *last_sum) = (now_level, now_sum);
                            *at
                        }
                        None => {
                            let at = if *sent_at > 0 { previous } else { self.start_ns };
                            cumulative.insert(key.clone(), (at, now_level, now_sum));
                            at
                        }
                    }
                };
                let attributes = attributes(&key.1);
                match shown {
                    Value::Scalar(v) => numbers.push(NumberDataPoint {
                        attributes,
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        exemplars: Vec::new(),
                        flags: 0,
                        value: Some(number_data_point::Value::AsDouble(v)),
                    }),
                    Value::Hist { buckets: counts, count, sum_ns, exemplars } => {
                        let exemplars = exemplars
                            .values()
                            .filter(|e| !delta_mode || (e.unix_ms.max(0) as u64) * 1_000_000 >= previous)
                            .map(|e| pm::Exemplar {
                                filtered_attributes: Vec::new(),
                                time_unix_nano: (e.unix_ms.max(0) as u64) * 1_000_000,
                                span_id: Vec::new(),
                                trace_id: e.trace_id.to_be_bytes().to_vec(),
                                value: Some(pm::exemplar::Value::AsDouble(e.value_ns as f64 / 1e9)),
                            })
                            .collect();
                        histograms.push(ExponentialHistogramDataPoint {
                            attributes,
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count,
                            sum: Some(sum_ns as f64 / 1e9),
                            scale: 2,
                            zero_count: 0,
                            positive: Some(buckets(&counts)),
                            negative: None,
                            flags: 0,
                            exemplars,
                            min: None,
                            max: None,
                            zero_threshold: 0.0,
                        });
                    }
                }
                if counted && delta_mode {
                    totals.insert(key, value);
                }
            }
            let data = match fam.kind {
                MetricType::COUNTER => Data::Sum(Sum {
                    data_points: numbers,
                    aggregation_temporality: temporality as i32,
                    is_monotonic: true,
                }),
                MetricType::GAUGE => Data::Gauge(Gauge { data_points: numbers }),
                _ => Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: histograms,
                    aggregation_temporality: temporality as i32,
                }),
            };
            metrics.push(Metric {
                name: name.strip_suffix("_total").unwrap_or(name).to_owned(),
                description: fam.help.to_owned(),
                unit: unit(name).to_owned(),
                metadata: Vec::new(),
                data: Some(data),
            });
        }
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: self.resource.clone(),
                    dropped_attributes_count: 0,
                    entity_refs: Vec::new(),
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "eventflux-probe".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        attributes: Vec::new(),
                        dropped_attributes_count: 0,
                    }),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        (request, totals)
    }

    /// Exports the model every interval until dropped.
    pub async fn run(self: std::sync::Arc<Self>, model: ModelSource) {
        let mut tick = tokio::time::interval(self.options.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: the first export one interval later.
        tick.tick().await;
        loop {
            tick.tick().await;
            self.export(&model).await;
        }
    }

    /// One export now: what a stopping service sends last, so that nothing counted since the
    /// last interval is lost.
    pub async fn flush(self: &std::sync::Arc<Self>, model: &ModelSource) {
        match tokio::time::timeout(self.timeout(), self.export(model)).await {
            Ok(()) => tracing::debug!("sent the last OTLP metrics"),
            Err(_) => tracing::warn!("the last OTLP metrics export did not finish in time"),
        }
    }

    fn timeout(&self) -> Duration {
        match &self.transport {
            Transport::Grpc { timeout, .. } | Transport::Http { timeout, .. } => *timeout,
        }
    }

    async fn export(self: &std::sync::Arc<Self>, model: &ModelSource) {
        // Reading maps and building the request cost a few syscalls per entry and a pass
        // over every series: off the async thread.
        let (source, me) = (std::sync::Arc::clone(model), std::sync::Arc::clone(self));
        let built = tokio::task::spawn_blocking(move || -> Result<_> {
            let (m, prom) = source()?;
            let now = now_ns();
            let (request, totals) = me.request(&m, &prom, now);
            Ok((me.transport.body(request)?, totals, now))
        })
        .await;
        let (body, totals, now) = match built {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!("cannot read the model for OTLP metrics: {e:#}");
                return;
            }
            Err(e) => {
                tracing::warn!("cannot build the OTLP metrics request: {e}");
                return;
            }
        };
        match self.transport.send(body).await {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let mut series = lock(&self.series);
                // Merged, not replaced: a series missing from one export (folded into the
                // overflow for a while) keeps the baseline of what was sent of it.
                series.sent.extend(totals);
                series.sent_at = now;
                *lock(&self.last_error) = None;
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let text = super::tls::with_hint(crate::secrets::scrub(&format!("{e:#}")).into_owned());
                let mut last = lock(&self.last_error);
                if last.is_none() {
                    tracing::warn!("OTLP metrics export failed, retrying every interval: {text}");
                }
                *last = Some(text);
            }
        }
    }
}

/// How requests reach the collector.
#[derive(Clone)]
pub enum Transport {
    Grpc { client: MetricsServiceClient<tonic::transport::Channel>, headers: Vec<(String, String)>, timeout: Duration },
    Http { client: reqwest::Client, url: String, headers: Vec<(String, String)>, gzip: bool, timeout: Duration },
}

/// A request ready to send: the message for gRPC (tonic encodes and compresses it), the
/// encoded and possibly gzipped body for HTTP.
pub enum Body {
    Grpc(ExportMetricsServiceRequest),
    Http(Vec<u8>),
}

impl Transport {
    /// The transport `options` describe (nothing is connected until the first export).
    pub fn new(options: &MetricsOptions, timeout: Duration) -> Result<Transport> {
        match options.wire {
            Wire::Grpc => {
                let mut endpoint = tonic::transport::Channel::from_shared(options.endpoint.clone())
                    .map_err(|e| anyhow!("OTLP metrics endpoint: {e}"))?
                    .timeout(timeout)
                    .connect_timeout(timeout);
                if super::tls::is_https(&options.endpoint) {
                    endpoint = endpoint
                        .tls_config(options.tls.tonic())
                        .map_err(|e| anyhow!("OTLP metrics TLS: {}", super::tls::error_chain(&e)))?;
                }
                let channel = endpoint.connect_lazy();
                let mut client = MetricsServiceClient::new(channel);
                if options.gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Ok(Transport::Grpc { client, headers: options.headers.clone(), timeout })
            }
            Wire::HttpProtobuf => {
                let client = options.tls.reqwest(timeout)?;
                Ok(Transport::Http {
                    client,
                    url: options.endpoint.clone(),
                    headers: options.headers.clone(),
                    gzip: options.gzip,
                    timeout,
                })
            }
        }
    }

    /// What [`Transport::send`] sends of `request` (blocking work: encoding, gzip).
    fn body(&self, request: ExportMetricsServiceRequest) -> Result<Body> {
        match self {
            Transport::Grpc { .. } => Ok(Body::Grpc(request)),
            Transport::Http { gzip, .. } => {
                let body = request.encode_to_vec();
                if !*gzip {
                    return Ok(Body::Http(body));
                }
                use std::io::Write as _;
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                z.write_all(&body)?;
                Ok(Body::Http(z.finish()?))
            }
        }
    }

    async fn send(&self, body: Body) -> Result<()> {
        match (self, body) {
            (Transport::Grpc { client, headers, timeout }, Body::Grpc(request)) => {
                let mut req = tonic::Request::new(request);
                for (k, v) in headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|_| anyhow!("header `{k}` is not a valid gRPC metadata key"))?;
                    let value = v.parse().map_err(|_| anyhow!("the value of header `{k}` is not valid"))?;
                    req.metadata_mut().insert(key, value);
                }
                let mut client = client.clone();
                match tokio::time::timeout(*timeout, client.export(req)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => {
                        let mut texts =
                            vec![format!("the collector answered {:?}: {}", status.code(), status.message())];
                        if let Some(cause) = std::error::Error::source(&status) {
                            texts.push(super::tls::error_chain(cause));
                        }
                        Err(anyhow!("{}", super::tls::join_distinct(&texts)))
                    }
                    Err(_) => Err(anyhow!("no answer within {timeout:?}")),
                }
            }
            (Transport::Http { client, url, headers, gzip, .. }, Body::Http(body)) => {
                let mut post = client.post(url).header("content-type", "application/x-protobuf");
                if *gzip {
                    post = post.header("content-encoding", "gzip");
                }
                for (k, v) in headers {
                    post = post.header(k.as_str(), v.as_str());
                }
                let response = post.body(body).send().await.map_err(|e| anyhow!("{}", super::tls::error_chain(&e)))?;
                let status = response.status();
                if status.is_success() { Ok(()) } else { Err(anyhow!("the collector answered HTTP {status}")) }
            }
            _ => Err(anyhow!("a request built for another transport")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_buckets_are_the_kernel_buckets() {
        let mut counts = vec![0u64; hist::BUCKETS];
        counts[40] = 3;
        counts[43] = 1;
        let b = buckets(&counts);
        assert_eq!(b.bucket_counts, vec![3, 0, 0, 1]);
        // OTLP bucket i is (2^(i/4), 2^((i+1)/4)] s: kernel bucket 40 ends at 2^((40-119)/4) s.
        let upper = 2f64.powf(f64::from(b.offset + 1) / 4.0);
        assert!((upper - hist::upper_seconds(40)).abs() <= upper * 1e-9, "{upper}");
        assert_eq!(buckets(&[0; 4]).bucket_counts, Vec::<u64>::new());
    }

    #[test]
    fn a_delta_is_the_change_and_a_reset_starts_over() {
        assert!(matches!(delta(&Value::Scalar(10.0), Some(&Value::Scalar(4.0))), Value::Scalar(6.0)));
        assert!(matches!(delta(&Value::Scalar(3.0), Some(&Value::Scalar(4.0))), Value::Scalar(3.0)));
        let h = |b: Vec<u64>, count, sum_ns| Value::Hist { buckets: b, count, sum_ns, exemplars: Default::default() };
        match delta(&h(vec![2, 5], 7, 70), Some(&h(vec![1, 1], 2, 20))) {
            Value::Hist { buckets, count, sum_ns, .. } => assert_eq!((buckets, count, sum_ns), (vec![1, 4], 5, 50)),
            Value::Scalar(_) => panic!("a histogram"),
        }
    }
}
