//! The Prometheus text exposition of `/metrics`: its samples, one by name and labels, and the
//! demo's own summary held against them.

use std::time::Duration;

use serde_json::Value;

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The OpenMetrics `Accept` header, as Prometheus 2.42 sends it with `exemplar-storage`.
pub const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// An exemplar of an OpenMetrics exposition: the sample it follows, its trace id, value and
/// timestamp (seconds).
#[derive(Debug, Clone)]
pub struct ExemplarLine {
    pub sample: Sample,
    pub trace_id: String,
    pub value: f64,
    pub timestamp: f64,
}

/// The exemplars of an OpenMetrics exposition (`SAMPLE # {trace_id="…"} VALUE TIMESTAMP`);
/// fails the test on an exemplar it cannot read, or on an exposition without `# EOF`.
pub fn parse_exemplars(text: &str) -> Vec<ExemplarLine> {
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((sample, exemplar)) = line.split_once(" # ") else { continue };
        let sample = parse_metrics(sample).pop().unwrap_or_else(|| panic!("no sample in {line}"));
        let (labels, rest) = exemplar.split_once("} ").unwrap_or_else(|| panic!("exemplar labels in {line}"));
        let trace_id = labels
            .strip_prefix("{trace_id=\"")
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("a trace_id label alone in {line}"))
            .to_owned();
        let mut numbers = rest.split(' ').map(|n| n.parse::<f64>().unwrap_or_else(|_| panic!("number in {line}")));
        let (Some(value), Some(timestamp), None) = (numbers.next(), numbers.next(), numbers.next()) else {
            panic!("value and timestamp in {line}")
        };
        out.push(ExemplarLine { sample, trace_id, value, timestamp });
    }
    out
}

impl Sample {
    /// The value of label `k` as a number (`le`); +Inf for `+Inf`, NaN when absent.
    pub fn value_of(&self, k: &str) -> f64 {
        match self.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()) {
            Some("+Inf") => f64::INFINITY,
            Some(v) => v.parse().unwrap_or(f64::NAN),
            None => f64::NAN,
        }
    }

    /// Whether this sample's labels include `labels`.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.labels.iter().any(|(a, b)| a == k && b == v))
    }
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples.iter().filter(|s| s.name == name && s.has(labels)).collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {} samples", found.len());
    found.first().map(|s| s.value)
}

/// Like [`value`], and the sample must be there.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
}

/// Every sample named `name` added up (a counter over all its label sets).
pub fn metric_sum(samples: &[Sample], name: &str) -> f64 {
    samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}

/// The upper bound (`le`, seconds) of the bucket that holds the `q`-quantile of histogram
/// `name` among its series with `labels`; `None` without buckets.
pub fn bucket_quantile(samples: &[Sample], name: &str, labels: &[(&str, &str)], q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket && s.has(labels))
        .map(|s| {
            let le = s.labels.iter().find(|(k, _)| k == "le").expect("le").1.as_str();
            (if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le") }, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last()?.1;
    let rank = (q * count).ceil().max(1.0);
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

/// Fails the test unless `promtool check metrics` accepts the exposition `text` (no error, no
/// invalid line; its lint warnings are the daemon's choice).
pub fn assert_promtool_accepts(text: &str) {
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (run `cargo xtask setup`)");
    std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = check.wait_with_output().expect("promtool");
    let problems = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !problems.lines().any(|l| l.contains("error") || l.contains("invalid")),
        "promtool check metrics: {problems}"
    );
}

/// Scrapes `/metrics` on `port` until `pred` holds on its samples; returns them, or fails the
/// test after `limit`.
pub fn poll_metrics(port: u16, limit: Duration, what: &str, pred: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let (_, body) =
        crate::poll_http(port, "/metrics", limit, what, |status, body| status == 200 && pred(&parse_metrics(body)));
    parse_metrics(&body)
}

/// Whether every count of the demo's `summary` equals the scrape's, among the samples that
/// carry `labels` too (node mode's `pid`): per query the events processed and emitted, the
/// batches and the errors; per stream the events received. `Err` says the first that differs.
pub fn counts_match(samples: &[Sample], summary: &Value, labels: &[(&str, &str)]) -> Result<(), String> {
    fn with<'a>(labels: &[(&'a str, &'a str)], more: [(&'a str, &'a str); 1]) -> Vec<(&'a str, &'a str)> {
        labels.iter().copied().chain(more).collect()
    }
    for (name, q) in summary["queries"].as_object().ok_or("no queries in the summary")? {
        let l = with(labels, [("query_id", name)]);
        let got = (
            value(samples, "query_events_processed_total", &l),
            value(samples, "query_events_emitted_total", &l).unwrap_or(0.0),
            value(samples, "query_batches_total", &l),
            value(samples, "query_execution_errors_total", &l).unwrap_or(0.0),
        );
        let want = (
            q["processed"].as_f64(),
            q["emitted"].as_f64().unwrap_or(-1.0),
            q["batches"].as_f64(),
            q["errors"].as_f64(),
        );
        if (got.0, got.1, got.2, Some(got.3)) != want {
            return Err(format!(
                "{labels:?} {name}: (processed, emitted, batches, errors) {got:?}, summary {want:?}: {q}"
            ));
        }
    }
    for (name, s) in summary["streams"].as_object().ok_or("no streams in the summary")? {
        let got = value(samples, "stream_events_received_total", &with(labels, [("stream_name", name)])).unwrap_or(0.0);
        if got != s["received"].as_f64().unwrap_or(-1.0) {
            return Err(format!("{labels:?} {name}: received {got}, summary {s}"));
        }
    }
    Ok(())
}

/// Every component series the demo's summary reports (`components`: per component its kind,
/// its labels and each series' family, labels and value) is in the scrape with exactly that
/// value and exactly those labels (the component's name under its kind's label); and every
/// component series the scrape has beyond them is 0 (a family the observer exports from the
/// registration, before anything happened). A timed operation's histogram is compared by its
/// `_count` (the summary's count of operations timed). Returns how many series were compared.
pub fn assert_components_exact(samples: &[Sample], summary: &Value) -> usize {
    let components = summary["components"].as_object().expect("components in the summary");
    // (family, labels sorted, value)
    type Series = (String, Vec<(String, String)>, f64);
    let mut expected: Vec<Series> = Vec::new();
    for (name, c) in components {
        let kind = c["kind"].as_str().expect("kind");
        let mut base = vec![(kind.to_owned(), name.clone())];
        for (k, v) in c["labels"].as_object().expect("labels") {
            base.push((k.clone(), v.as_str().expect("label").to_owned()));
        }
        for s in c["series"].as_array().expect("series") {
            let mut labels = base.clone();
            for (k, v) in s["labels"].as_object().expect("series labels") {
                labels.push((k.clone(), v.as_str().expect("label").to_owned()));
            }
            labels.sort();
            let family = s["family"].as_str().expect("family").to_owned();
            expected.push((family, labels, s["value"].as_f64().expect("value")));
        }
    }
    let kinds: Vec<String> = components.values().map(|c| c["kind"].as_str().unwrap_or("").to_owned()).collect();
    let sorted = |s: &Sample| {
        let mut l = s.labels.clone();
        l.sort();
        l
    };
    for (family, labels, want) in &expected {
        let found: Vec<&Sample> = samples.iter().filter(|s| &s.name == family && &sorted(s) == labels).collect();
        assert_eq!(found.len(), 1, "{family} {labels:?}: {} samples in the scrape", found.len());
        assert_eq!(found[0].value, *want, "{family} {labels:?}: the demo counted {want}");
    }
    for s in samples {
        // A timed operation's durations are the observer's to know: the summary has the count
        // of the rare ones; frequent ones are timed in sampled batches, so not even that.
        if s.name.ends_with("_bucket") || s.name.ends_with("_sum") {
            continue;
        }
        let frequent = usdt_markers::abi::ComponentOp::ALL
            .iter()
            .any(|op| op.frequent() && s.name.strip_suffix("_count") == Some(op.label()));
        if frequent {
            continue;
        }
        let is_component = s.labels.first().is_some_and(|(k, _)| kinds.contains(k) && s.name.starts_with(k.as_str()));
        if is_component && !expected.iter().any(|(f, l, _)| *f == s.name && *l == sorted(s)) {
            assert_eq!(s.value, 0.0, "{} {:?} is not in the demo's summary", s.name, s.labels);
        }
    }
    expected.len()
}
