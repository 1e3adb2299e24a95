//! The OpenMetrics 1.0 text exposition: what a scraper gets when it asks for
//! `application/openmetrics-text` (Prometheus does when `--enable-feature=exemplar-storage` is
//! on), and the text format that carries exemplars.
//!
//! The series are the Prometheus text format's, name for name and label for label, so that
//! dashboards and alert rules read the same series whichever format was scraped:
//! - a counter family is named without its `_total`, its sample with it (OpenMetrics' rule);
//!   a counter whose name has no `_total` (`eventflux_uptime_seconds`) is typed `unknown`,
//!   which keeps its sample's name as it is;
//! - `le` values are written as the text format writes them;
//! - a histogram bucket carries, after ` # `, the latest exported trace among the batches it
//!   counts: `{trace_id="…"} VALUE TIMESTAMP` (value in seconds, timestamp in seconds).
//!
//! Written by hand: the `prometheus` crate has no OpenMetrics encoder.

use std::fmt::Write as _;

use prometheus::proto::MetricType;

use super::prometheus::{EXEMPLAR_LABEL, Options, Value, classic, classic_exemplars, collect};
use crate::model::Model;
use crate::model::hist::Exemplar;

/// The content type of this exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A number as OpenMetrics writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        v.to_string()
    }
}

/// Escapes a label value or help text (`\`, newline, and `"`).
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '\n', '"']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

fn labels(out: &mut String, labels: &[(&str, String)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().map(|(k, v)| (*k, v.as_str())).chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out.push('}');
}

fn exemplar(out: &mut String, e: &Exemplar) {
    let _ = write!(
        out,
        " # {{{EXEMPLAR_LABEL}=\"{}\"}} {} {}.{:03}",
        e.trace_id_hex(),
        number(e.value_ns as f64 / 1e9),
        e.unix_ms.div_euclid(1000),
        e.unix_ms.rem_euclid(1000)
    );
}

/// Encodes a model in the OpenMetrics text format.
pub fn encode(model: &Model, opts: &Options) -> String {
    let f = collect(model, opts);
    let mut out = String::new();
    for (name, fam) in f.by_name {
        let (family, kind) = match fam.kind {
            MetricType::COUNTER => match name.strip_suffix("_total") {
                Some(base) => (base, "counter"),
                None => (name, "unknown"),
            },
            MetricType::GAUGE => (name, "gauge"),
            _ => (name, "histogram"),
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        let _ = writeln!(out, "# HELP {family} {}", escape(fam.help));
        let shown = opts.layout.of(name);
        for (l, value) in &fam.series {
            match value {
                Value::Scalar(v) => {
                    out.push_str(name);
                    labels(&mut out, l, None);
                    let _ = writeln!(out, " {}", number(*v));
                }
                Value::Hist { buckets, count, sum_ns, exemplars } => {
                    let mut ex = classic_exemplars(exemplars, shown).into_iter();
                    let bounds = classic(buckets, shown).into_iter().map(|(le, n)| (number(le), n));
                    for (le, n) in bounds.chain([("+Inf".to_owned(), *count)]) {
                        let _ = write!(out, "{name}_bucket");
                        labels(&mut out, l, Some(&le));
                        let _ = write!(out, " {n}");
                        if let Some(e) = ex.next().flatten() {
                            exemplar(&mut out, &e);
                        }
                        out.push('\n');
                    }
                    let _ = write!(out, "{name}_count");
                    labels(&mut out, l, None);
                    let _ = writeln!(out, " {count}");
                    let _ = write!(out, "{name}_sum");
                    labels(&mut out, l, None);
                    let _ = writeln!(out, " {}", number(*sum_ns as f64 / 1e9));
                }
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use eventflux_probe_common::hist;

    use super::*;
    use crate::model::hist::HistData;
    use crate::model::{Engine, Query};

    #[test]
    fn counters_histograms_and_exemplars_are_written_as_openmetrics_says() {
        let mut buckets = vec![0u64; hist::BUCKETS];
        let k = hist::bucket(3_000);
        buckets[k] = 2;
        let e = Exemplar { trace_id: 0xab, value_ns: 3_000, unix_ms: 1_700_000_000_123 };
        let latency = HistData { buckets, count: 2, sum_ns: 6_000, max_ns: 3_000, exemplars: BTreeMap::from([(k, e)]) };
        let mut q = Query { id: 1, name: "q\"1".into(), registered: true, batches: 5, ..Default::default() };
        q.latency = Some(latency);
        let mut engine = Engine { pid: 1, ..Default::default() };
        engine.process = Some(crate::model::snapshot::ProcStats {
            uptime_seconds: 9.0,
            rss_bytes: 1,
            virtual_bytes: 1,
            threads: 1,
            cpu_percent: 0.0,
            cpu_seconds: 0.0,
            open_fds: None,
            io: None,
        });
        engine.queries.insert(1, q);
        let mut model = Model::default();
        model.engines.insert(1, engine);
        let text = encode(&model, &Options::default());
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE query_batches counter\n"), "{text}");
        assert!(text.contains("query_batches_total{query_id=\"q\\\"1\"} 5\n"), "{text}");
        // A counter without `_total` keeps its sample's name, as `unknown`.
        assert!(text.contains("# TYPE eventflux_uptime_seconds unknown\n"), "{text}");
        assert!(text.contains("\neventflux_uptime_seconds 9\n"), "{text}");
        // 3 µs falls under the default bound 2^-18 s (3.8 µs), with its exemplar.
        let line = text
            .lines()
            .find(|l| l.starts_with("query_latency_seconds_bucket{") && l.contains("le=\"0.000003814697265625\""))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            line,
            "query_latency_seconds_bucket{query_id=\"q\\\"1\",le=\"0.000003814697265625\"} 2 # {trace_id=\"000000000000000000000000000000ab\"} 0.000003 1700000000.123"
        );
        assert!(text.contains("query_latency_seconds_bucket{query_id=\"q\\\"1\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("query_latency_seconds_count{query_id=\"q\\\"1\"} 2\n"), "{text}");
    }
}
