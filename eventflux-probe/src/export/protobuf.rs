//! The Prometheus protobuf exposition (`io.prometheus.client.MetricFamily`, length-delimited):
//! what a Prometheus with `--enable-feature=native-histograms` asks for, and the only format
//! that carries native histograms.
//!
//! Every latency histogram goes out twice in one message: as the classic buckets of the text
//! layout (`export::buckets`) and as a native histogram at schema 2 whose buckets are the
//! kernel's own, relabelled (kernel bucket `i` is native bucket `i - 119`; no rebinning). The
//! messages are written here from the format's definition (client_model's `metrics.proto`, the
//! fields Prometheus 2.40+ reads), because the `prometheus` crate's generated types predate
//! native histograms.

use eventflux_probe_common::hist;
use prost::Message;

/// The content type of this exposition.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Native histograms' zero bucket: as wide as client_golang's default (2^-128); nothing the
/// kernel measures is that short, so it stays empty.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// `io.prometheus.client.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Summary = 2,
    Untyped = 3,
    Histogram = 4,
}

#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Counter {
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Bucket {
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
    /// A traced batch in this bucket. Prometheus takes a native histogram's exemplars from
    /// its classic buckets (2.42; later versions also read `Histogram.exemplars`, which is
    /// left empty so that they fall back to these).
    #[prost(message, optional, tag = "3")]
    pub exemplar: Option<Exemplar>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BucketSpan {
    /// Gap to the previous span, or the first span's first index.
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Each bucket's count less the previous bucket's (the first's less zero).
    #[prost(sint64, repeated, packed = "true", tag = "13")]
    pub positive_delta: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub r#type: Option<i32>,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

/// The native histogram of kernel bucket counts: schema 2, the non-empty buckets in spans
/// (runs of buckets with gaps of at most two empty ones inside a span, as client_golang
/// writes them: an empty bucket costs a delta of one byte, a new span several).
pub fn native(buckets: &[u64], count: u64, sum_seconds: f64) -> Histogram {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let (mut previous_count, mut end_of_span): (i64, Option<i32>) = (0, None);
    for (i, &n) in buckets.iter().enumerate().take(hist::BUCKETS) {
        if n == 0 {
            continue;
        }
        let index = hist::native_index(i);
        match end_of_span {
            // Close enough: fill the gap with empty buckets in the same span.
            Some(end) if index - end <= 2 => {
                for _ in end..index {
                    deltas.push(-previous_count);
                    previous_count = 0;
                }
                if let Some(last) = spans.last_mut() {
                    last.length = Some(last.length.unwrap_or(0) + (index - end) as u32 + 1);
                }
            }
            _ => {
                let offset = match end_of_span {
                    Some(end) => index - end,
                    None => index,
                };
                spans.push(BucketSpan { offset: Some(offset), length: Some(1) });
            }
        }
        let n = n as i64;
        deltas.push(n - previous_count);
        previous_count = n;
        end_of_span = Some(index + 1);
    }
    if spans.is_empty() {
        // A native histogram without observations: a no-op span tells it from a classic one.
        spans.push(BucketSpan { offset: Some(0), length: Some(0) });
    }
    Histogram {
        sample_count: Some(count),
        sample_sum: Some(sum_seconds),
        bucket: Vec::new(),
        schema: Some(2),
        zero_threshold: Some(ZERO_THRESHOLD),
        zero_count: Some(0),
        positive_span: spans,
        positive_delta: deltas,
    }
}

/// A native histogram's buckets back as kernel bucket counts (`top --url` reads them so); `None`
/// for one that is not this exporter's: another schema, a bucket outside the kernel's, counts
/// that go negative or a delta missing.
pub fn kernel_buckets(h: &Histogram) -> Option<Vec<u64>> {
    if h.schema != Some(2) {
        return None;
    }
    let mut out = vec![0u64; hist::BUCKETS];
    let (mut index, mut count) = (0i32, 0i64);
    let mut deltas = h.positive_delta.iter();
    for (n, span) in h.positive_span.iter().enumerate() {
        let offset = span.offset.unwrap_or(0);
        index = if n == 0 { offset } else { index.checked_add(offset)? };
        for _ in 0..span.length.unwrap_or(0) {
            count = count.checked_add(*deltas.next()?)?;
            let i = usize::try_from(index.checked_sub(hist::FIRST_INDEX)?).ok()?;
            *out.get_mut(i)? = u64::try_from(count).ok()?;
            index = index.checked_add(1)?;
        }
    }
    deltas.next().is_none().then_some(out)
}

/// The families of an exposition in this format.
pub fn decode(mut bytes: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    let mut families = Vec::new();
    while !bytes.is_empty() {
        families.push(MetricFamily::decode_length_delimited(&mut bytes)?);
    }
    Ok(families)
}

/// The families, each length-delimited, as Prometheus reads them.
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in families {
        // Writing into a Vec grows it: this cannot fail.
        let _ = f.encode_length_delimited(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_counts(h: &Histogram) -> Vec<u64> {
        kernel_buckets(h).expect("a native histogram of kernel buckets")
    }

    #[test]
    fn native_buckets_are_the_kernel_buckets() {
        let mut buckets = vec![0u64; hist::BUCKETS];
        for (i, n) in [(0, 1), (40, 3), (41, 5), (43, 2), (90, 7), (159, 1)] {
            buckets[i] = n;
        }
        let h = native(&buckets, 19, 0.5);
        assert_eq!(kernel_counts(&h), buckets);
        assert_eq!(h.schema, Some(2));
        // 0 alone; 40, 41, (42 empty), 43 in one span; 90; 159.
        assert_eq!(h.positive_span.iter().map(|s| s.length.unwrap_or(0)).collect::<Vec<u32>>(), [1, 4, 1, 1]);
        assert_eq!(h.positive_span[0].offset, Some(hist::FIRST_INDEX));

        let wrong_schema = Histogram { schema: Some(3), ..h.clone() };
        assert_eq!(kernel_buckets(&wrong_schema), None);
        let outside = Histogram { positive_span: vec![BucketSpan { offset: Some(500), length: Some(1) }], ..h.clone() };
        assert_eq!(kernel_buckets(&outside), None);
        let short = Histogram { positive_delta: vec![1], ..h };
        assert_eq!(kernel_buckets(&short), None);

        let empty = native(&vec![0; hist::BUCKETS], 0, 0.0);
        assert_eq!(empty.positive_span, [BucketSpan { offset: Some(0), length: Some(0) }]);
    }

    #[test]
    fn families_decode_back() {
        let fam = MetricFamily {
            name: Some("x_seconds".into()),
            help: Some("h".into()),
            r#type: Some(MetricType::Histogram as i32),
            metric: vec![Metric {
                label: vec![],
                gauge: None,
                counter: None,
                histogram: Some(Histogram {
                    bucket: vec![Bucket {
                        cumulative_count: Some(2),
                        upper_bound: Some(1.0),
                        exemplar: Some(Exemplar {
                            label: vec![LabelPair { name: Some("trace_id".into()), value: Some("ab".into()) }],
                            value: Some(0.5),
                            timestamp: Some(Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 }),
                        }),
                    }],
                    ..native(&[0, 2], 2, 1.0)
                }),
            }],
        };
        let bytes = encode(&[fam.clone(), fam.clone()]);
        assert_eq!(decode(&bytes).expect("decodes"), [fam.clone(), fam]);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "a cut message is an error");
    }
}
