//! The Grafana dashboards and Prometheus alert rules in `dashboards/`, against the exporter's
//! metric list (`eventflux_probe::export::metrics::ALL`), promtool, and a real Prometheus scraping `run`
//! attached to the demo.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use eventflux_probe::export::metrics::{self, Metric};
use integration_tests::otlp::Receiver;
use integration_tests::prometheus::{Prometheus, encode};
use integration_tests::{Daemon, GatedDemo, NodeObserver, bin, run_ok, serial};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("dashboards/grafana");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().expect("name").to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Panels that query (not rows).
fn panels(d: &Value) -> Vec<&Value> {
    d["panels"].as_array().expect("panels").iter().filter(|p| p["type"] != "row").collect()
}

/// Every (panel title, expression) of a dashboard.
fn queries(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_owned()))
        })
        .collect()
}

/// The quantile panels of the histograms that carry exemplars show them (Grafana's
/// `exemplar` on the target), and no other query asks for exemplars.
#[test]
fn latency_panels_show_exemplars() {
    let mut shown = 0;
    for (file, d) in dashboards() {
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("expr");
                let (names, _) = promql_names(expr);
                let wanted = expr.starts_with("histogram_quantile(")
                    && metrics::WITH_EXEMPLARS
                        .iter()
                        .any(|m| m.series_names().iter().chain([&m.name.to_owned()]).any(|n| names.contains(n)));
                assert_eq!(t["exemplar"].as_bool(), Some(wanted), "{file} {:?}: {expr}", p["title"]);
                shown += usize::from(wanted);
            }
        }
    }
    assert!(shown >= 5, "{shown} panel queries show exemplars");
}

// ---------------------------------------------------------------- PromQL names

const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "delta",
    "deriv",
    "floor",
    "group",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_replace",
    "label_join",
    "last_over_time",
    "ln",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "predict_linear",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "bottomk",
    "vector",
    "count_values",
];
const KEYWORDS: &[&str] =
    &["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"];
/// Labels every series has from the scrape or may have beyond the catalog's.
const TARGET_LABELS: &[&str] =
    &["instance", "job", "pid", "exe", "container_id", "pod_uid", "namespace", "pod", "node"];

/// The metric names and label names a PromQL expression uses. Strings, durations and numbers
/// are skipped; an identifier is a label inside `{…}` before a matcher or inside
/// `by`/`without`/`on`/`ignoring`/`group_*` parentheses, a function or keyword where PromQL has
/// one, a metric name otherwise.
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let b = expr.as_bytes();
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let mut i = 0;
    let mut in_braces = false;
    let mut label_list_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut last_word = String::new();
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'[' => {
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
                i += 1;
            }
            b'{' => {
                in_braces = true;
                i += 1;
            }
            b'}' => {
                in_braces = false;
                i += 1;
            }
            b'(' => {
                depth += 1;
                if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&last_word.as_str()) {
                    label_list_depth = Some(depth);
                }
                last_word.clear();
                i += 1;
            }
            b')' => {
                if label_list_depth == Some(depth) {
                    label_list_depth = None;
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().as_bytes().first().copied();
                if in_braces || label_list_depth.is_some() {
                    labels.insert(word.to_owned());
                } else if KEYWORDS.contains(&word)
                    || (FUNCTIONS.contains(&word)
                        && (next == Some(b'(') || {
                            let rest = expr[i..].trim_start();
                            rest.starts_with("by") || rest.starts_with("without")
                        }))
                {
                    // a function or keyword
                } else if i > start && start > 0 && b[start - 1] == b'$' {
                    // a Grafana variable ($__rate_interval outside a range is one)
                } else {
                    metrics.insert(word.to_owned());
                }
                last_word = word.to_owned();
            }
            _ => i += 1,
        }
    }
    (metrics, labels)
}

/// Checks an expression's names against the catalog; returns what is wrong.
fn lint_names(expr: &str) -> Vec<String> {
    let (names, labels) = promql_names(expr);
    let mut problems = Vec::new();
    let mut known_labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for name in &names {
        if name == "up" {
            continue;
        }
        // A classic histogram is stored as its `_bucket`, `_sum` and `_count` series, a native
        // one (scraped over protobuf) by its name.
        match metrics::by_name(name).or_else(|| metrics::by_series_name(name)) {
            Some(m) => {
                known_labels.extend(m.labels.iter().copied());
                if name.ends_with("_bucket") {
                    known_labels.insert("le");
                }
            }
            None => problems.push(format!("metric `{name}` is not exported")),
        }
    }
    for l in &labels {
        if !known_labels.contains(l.as_str()) {
            problems.push(format!("label `{l}` is on none of {names:?}"));
        }
    }
    problems
}

#[test]
fn the_promql_scanner_finds_metrics_and_labels() {
    let (m, l) = promql_names(
        r#"histogram_quantile(0.99, sum by (instance, query_id, le) (rate(query_latency_seconds_bucket{instance=~"$instance", query_id="a b"}[5m]))) > 0.1"#,
    );
    assert_eq!(m, BTreeSet::from(["query_latency_seconds_bucket".to_owned()]));
    assert_eq!(l, ["instance", "le", "query_id"].iter().map(|s| s.to_string()).collect());
    assert!(lint_names("rate(query_batches_total{stage=\"x\"}[1m])").iter().any(|p| p.contains("`stage`")));
    assert!(lint_names("query_batchez_total").iter().any(|p| p.contains("query_batchez_total")));
    assert!(lint_names("rate(query_latency_seconds[5m])").is_empty(), "a native histogram is stored by its name");
    assert!(!lint_names("rate(query_latency_seconds_total[5m])").is_empty());
    assert!(lint_names("eventflux_probe_map_entries / on(instance, map) eventflux_probe_map_capacity").is_empty());
}

// ---------------------------------------------------------------- static checks

/// Valid JSON, the four dashboards of the design document with the panels it names and the
/// components' dashboard, unique
/// ids, every datasource reference the `${DS_PROMETHEUS}` input (also a template variable),
/// units and thresholds on every panel, no hard-coded instance, latency from histogram buckets,
/// and every metric and label a query or variable uses in the exporter's list.
#[test]
fn dashboards_are_well_formed_and_use_only_exported_metrics() {
    let all = dashboards();
    let titles: Vec<&str> = all.iter().map(|(_, d)| d["title"].as_str().expect("title")).collect();
    assert_eq!(
        titles,
        [
            "EventFlux Components",
            "EventFlux Overview",
            "EventFlux Query Performance",
            "EventFlux Stream Monitoring",
            "EventFlux System Resources"
        ]
    );
    let required: BTreeMap<&str, &[&str]> = BTreeMap::from([
        (
            "EventFlux Overview",
            &["Uptime", "Observer version", "Active queries", "Events processed / s", "Memory", "CPU", "Errors / s"][..],
        ),
        (
            "EventFlux Query Performance",
            &[
                "Query throughput",
                "Query latency p50 / p95 / p99",
                "Query error rate",
                "Query buffer utilization",
                "Query execution timeline",
            ][..],
        ),
        (
            "EventFlux Stream Monitoring",
            &["Stream throughput", "Backpressure events / s", "Subscribers", "Buffer size", "Oldest event age"][..],
        ),
        (
            "EventFlux Components",
            &[
                "Source events / s",
                "Mapping errors / s",
                "Connected",
                "Sink failures / s",
                "Error store fill",
                "Table writes / s",
            ][..],
        ),
        (
            "EventFlux System Resources",
            &[
                "CPU usage",
                "Memory usage",
                "Threads and CPU per thread",
                "Disk I/O",
                "Network and pipe I/O",
                "Probes attached",
                "Kernel program time",
                "Kernel-side drops / s",
                "BPF map fill",
                "Series folded by the cardinality cap",
            ][..],
        ),
    ]);
    let ds = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    for (file, d) in &all {
        assert!(uids.insert(d["uid"].as_str().expect("uid").to_owned()), "{file}: uid used twice");
        assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS", "{file}");
        let vars = d["templating"]["list"].as_array().expect("templating");
        assert!(vars.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"), "{file}");
        assert!(vars.iter().any(|v| v["name"] == "instance"), "{file}: no instance variable");
        let title = d["title"].as_str().expect("title");
        let panel_titles: BTreeSet<&str> = panels(d).iter().filter_map(|p| p["title"].as_str()).collect();
        for want in required[title] {
            assert!(panel_titles.contains(want), "{file}: no panel {want:?}");
        }
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().expect("panels") {
            assert!(ids.insert(p["id"].as_u64().expect("id")), "{file}: panel id {} twice", p["id"]);
        }
        for p in panels(d) {
            let t = p["title"].as_str().unwrap_or("?");
            assert_eq!(p["datasource"], ds, "{file} {t}");
            assert!(
                p["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|u| !u.is_empty()),
                "{file} {t}: no unit"
            );
            assert!(
                p["fieldConfig"]["defaults"]["thresholds"]["steps"].as_array().is_some_and(|s| !s.is_empty()),
                "{file} {t}: no thresholds"
            );
            for target in p["targets"].as_array().expect("targets") {
                assert_eq!(target["datasource"], ds, "{file} {t}");
            }
        }
        for (t, expr) in queries(d) {
            for p in lint_names(&expr) {
                problems.push(format!("{file} {t:?}: {p} in {expr}"));
            }
            let hard_coded = expr.match_indices("instance").any(|(i, _)| {
                // The variable itself (`$instance`) is not a selector.
                if i > 0 && expr.as_bytes()[i - 1] == b'$' {
                    return false;
                }
                let rest = expr[i + "instance".len()..].trim_start();
                let rest = rest.trim_start_matches(['=', '~', '!']).trim_start();
                rest.starts_with('"') && !rest.starts_with("\"$instance\"")
            });
            assert!(!hard_coded, "{file} {t}: hard-coded instance in {expr}");
            if expr.contains("latency_seconds") {
                assert!(expr.contains("histogram_quantile(") && expr.contains("_bucket"), "{file} {t}: {expr}");
            }
            assert!(!expr.contains("quantile=") && !expr.contains("quantile =~"), "{file} {t}: a quantile label");
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let def = v["definition"].as_str().expect("definition");
            let inner = def.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect("label_values");
            let (selector, label) = inner.rsplit_once(',').expect("metric, label");
            for p in lint_names(selector) {
                problems.push(format!("{file} variable {}: {p}", v["name"]));
            }
            let metric = selector.split('{').next().unwrap_or("").trim();
            let m: &Metric = metrics::by_name(metric).expect("variable metric");
            let label = label.trim();
            assert!(m.labels.contains(&label) || TARGET_LABELS.contains(&label), "{file}: {label} not on {metric}");
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The committed dashboards are what `cargo xtask dashboards` generates (checked again by
/// `cargo xtask test`); here: Grafana provisioning points at them.
#[test]
fn provisioning_points_at_the_dashboards() {
    let p = std::fs::read_to_string(repo().join("dashboards/grafana/provisioning/dashboards/eventflux.yml"))
        .expect("dashboard provider");
    assert!(p.contains("apiVersion: 1") && p.contains("type: file") && p.contains("path:"), "{p}");
    let ds = std::fs::read_to_string(repo().join("dashboards/grafana/provisioning/datasources/prometheus.yml"))
        .expect("datasource");
    assert!(ds.contains("type: prometheus") && ds.contains("url:"), "{ds}");
}

fn promtool(args: &[&str]) -> String {
    let out = run_ok(Command::new("promtool").args(args).current_dir(repo()));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `promtool check rules` and `promtool test rules` (every alert shown firing and not firing,
/// docs/runbook.md), `promtool check config` of the sample scrape configuration; each alert has
/// a severity, summary, description and a runbook section.
#[test]
fn promtool_checks_and_tests_the_rules() {
    let check = promtool(&["check", "rules", "dashboards/alerts/eventflux.rules.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = promtool(&["test", "rules", "dashboards/alerts/eventflux.rules.test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
    let config = promtool(&["check", "config", "dashboards/prometheus/prometheus.yml"]);
    assert!(config.contains("SUCCESS"), "{config}");
    let rules = std::fs::read_to_string(repo().join("dashboards/alerts/eventflux.rules.yml")).expect("rules");
    let tests = std::fs::read_to_string(repo().join("dashboards/alerts/eventflux.rules.test.yml")).expect("tests");
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).expect("runbook");
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(str::trim).collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for a in &alerts {
        assert!(runbook.contains(&format!("\n## {a}\n")), "no runbook section for {a}");
        assert!(rules.contains(&format!("docs/runbook.md#{}", a.to_lowercase())), "{a}: runbook_url");
        assert!(tests.contains(&format!("alertname: {a}")), "{a}: no promtool test");
    }
    for field in ["severity:", "summary:", "description:"] {
        assert_eq!(rules.matches(field).count(), alerts.len(), "every alert has a {field}");
    }
}

// ---------------------------------------------------------------- a real Prometheus

/// Grafana's variables substituted: `instance` by the scraped target, the others by their
/// default, All (`.*`, each variable's `allValue`), and `$__rate_interval` by 10 s.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = expr.replace("$__rate_interval", "10s");
    for (k, v) in vars {
        out = out.replace(&format!("${k}"), v);
    }
    out
}

/// Every query of every panel of every dashboard, with its template variables substituted
/// (instance: the scraped `run`; query and stream: their default, All, once they resolve to
/// values), returns data from a real Prometheus (Debian's) scraping `run` attached to the demo; every
/// alert rule evaluates without error and uses only exported names. The demo runs async with
/// small queues and in trouble (errors, backpressure), forwards its rows to a second demo (the
/// transport), `run` exports spans to a receiver and folds series past a low cap, so that every
/// panel has something to show.
#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    panels_return_data(&[]);
}

/// The same from node mode over both demos, with native histograms and exemplar storage on:
/// Prometheus scrapes protobuf, stores every histogram as a native one (no `_bucket` series at
/// all in 2.42), and the panels' `or` branch answers.
#[test]
fn every_panel_query_returns_data_with_native_histograms_in_node_mode() {
    panels_return_data(&["native-histograms", "exemplar-storage"]);
}

/// A real Prometheus with these feature flags scrapes a busy demo's observer (`run`; node mode
/// when native histograms are on, over the demo and its downstream node); every panel and
/// alert rule answers.
fn panels_return_data(features: &[&str]) {
    let _serial = serial();
    let overview_data = std::env::var_os("EVENTFLUX_OVERVIEW_DATA").map(PathBuf::from);
    let demo = bin("eventflux-demo");
    // Node B of two, so that the observed demo's transport has something to carry.
    let mut node_b = GatedDemo::start(&demo, &["--listen", "127.0.0.1:0", "--streams", "1", "--queries", "1"]);
    let node_b_addr = node_b.listening_addr();
    let node_b = node_b.open();
    let target = GatedDemo::start(
        &demo,
        &[
            "--forward",
            &node_b_addr,
            "--mode",
            "async",
            "--streams",
            "3",
            "--queries",
            "6",
            "--queue-capacity",
            "2",
            "--rate",
            "20000",
            "--trouble",
            "0..3600",
        ],
    );
    let receiver = Receiver::http();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", receiver.port)),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("EVENTFLUX_PROBE_OTLP_INTERVAL", "200ms".to_owned()),
    ];
    let node_mode = features.contains(&"native-histograms");
    let (daemon, node) = if node_mode {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (a, b) = (target.pid().to_string(), node_b.pid().to_string());
        let node = NodeObserver::start_with_env(&["--pid", &a, "--pid", &b, "--max-series", "4"], &env);
        for pid in [target.pid(), node_b.pid()] {
            node.found(pid, Instant::now());
        }
        (None, Some(node))
    } else {
        (Some(Daemon::start_with_env(target.pid(), &["--max-series", "4"], &env)), None)
    };
    let port = daemon.as_ref().map_or_else(|| node.as_ref().map_or(0, |n| n.port), |d| d.port);
    let _target = target.open();
    let prometheus = Prometheus::start(port, features);
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.query("up{job=\"eventflux-probe\"} == 1").is_empty() {
        assert!(Instant::now() < deadline, "prometheus never scraped run");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Rates over 10 s windows need a few scrapes; the picture wants a longer run.
    let run_for = if overview_data.is_some() { 60 } else { 12 };
    std::thread::sleep(Duration::from_secs(run_for));

    let instance = prometheus.label_values("instance", "eventflux_probe_build_info");
    assert_eq!(instance.len(), 1, "{instance:?}");
    let mut failures = Vec::new();
    let mut evaluated = 0;
    for (file, d) in dashboards() {
        let mut vars = BTreeMap::from([("instance".to_owned(), instance[0].clone())]);
        for v in d["templating"]["list"].as_array().expect("templating").iter().filter(|v| v["type"] == "query") {
            let name = v["name"].as_str().expect("name");
            if name == "instance" {
                continue;
            }
            let def = substitute(v["definition"].as_str().expect("definition"), &vars);
            let inner = def.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect("label_values");
            let (selector, label) = inner.rsplit_once(',').expect("metric, label");
            let values = prometheus.label_values(label.trim(), selector.trim());
            assert!(!values.is_empty(), "{file}: variable {name} has no values");
            assert_eq!(v["current"]["value"][0], "$__all", "{file}: {name} defaults to All");
            vars.insert(name.to_owned(), v["allValue"].as_str().expect("allValue").to_owned());
        }
        for (title, expr) in queries(&d) {
            let q = substitute(&expr, &vars);
            evaluated += 1;
            if prometheus.query(&q).is_empty() {
                failures.push(format!("{file} {title:?}: no data for {q}"));
            }
        }
        if let (Some(path), true) = (&overview_data, d["uid"] == "eventflux-overview") {
            save_overview(&prometheus, &d, &vars, path, run_for);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {evaluated} panel queries returned nothing:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every rule evaluated (several evaluation rounds have passed) without error, on exported
    // names only.
    let rules = prometheus.api("/api/v1/rules");
    let mut seen = 0;
    for group in rules["data"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            seen += 1;
            let name = rule["name"].as_str().unwrap_or("?");
            assert_eq!(rule["health"], "ok", "{name}: {}", rule["lastError"]);
            let problems = lint_names(rule["query"].as_str().expect("query"));
            assert!(problems.is_empty(), "{name}: {problems:?}");
        }
    }
    assert!(seen >= 10, "{seen} rules loaded");
    if features.contains(&"native-histograms") {
        // Stored as native histograms: by name, with no classic series beside them.
        let native = prometheus.query("query_latency_seconds");
        assert!(!native.is_empty() && native.iter().all(|r| r["histogram"].is_array()), "{native:?}");
        assert!(prometheus.query("query_latency_seconds_bucket").is_empty());
    }
    let status = match (daemon, node) {
        (Some(d), _) => d.stop(),
        (None, Some(n)) => n.stop(),
        (None, None) => unreachable!("one observer runs"),
    };
    assert!(status.success(), "{status}");
}

/// Issue #21's "done when", in node mode over two engines: a real Prometheus with
/// `native-histograms,exemplar-storage` scrapes `node` (protobuf) while both demos run and
/// after they finished.
/// - Native histograms are the kernel's buckets: for every query of each engine, the p50,
///   p99 and maximum Prometheus computes from the native histogram lie in the bucket that the
///   same daemon's classic text exposition with every bucket (`--buckets full`) puts them in,
///   from the same counts.
/// - Exemplars resolve: every trace id Prometheus stored as an exemplar of the native
///   histograms is a trace the OTLP receiver got, and every exemplar of the OpenMetrics page
///   is inside its bucket with the value its trace says was counted.
#[test]
fn native_histograms_and_exemplars_in_node_mode_over_two_engines() {
    let _serial = serial();
    let receiver = Receiver::http();
    let demo = bin("eventflux-demo");
    let args = ["--events", "600000", "--rate", "200000", "--queries", "3"];
    let engines = [GatedDemo::start(&demo, &args), GatedDemo::start(&demo, &args)];
    let pids: Vec<String> = engines.iter().map(|e| e.pid().to_string()).collect();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("EVENTFLUX_PROBE_OTLP_INTERVAL", "200ms"),
    ];
    let node = NodeObserver::start_with_env(
        &["--pid", &pids[0], "--pid", &pids[1], "--buckets", "full", "--stage-buckets", "full"],
        &env,
    );
    for pid in &pids {
        node.found(pid.parse().expect("pid"), Instant::now());
    }
    let prometheus = Prometheus::start(node.port, &["native-histograms", "exemplar-storage"]);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let opened: Vec<GatedDemo> = engines.into_iter().map(GatedDemo::open).collect();
    let summaries: Vec<Value> = opened.into_iter().map(|e| integration_tests::summary(&e.open_and_wait())).collect();
    integration_tests::otlp::settle(&receiver, &[node.port]);
    // Past the end, the node serves the engines' final values: two more scrapes take them.
    std::thread::sleep(Duration::from_secs(3));
    let text = integration_tests::parse_metrics(&node.metrics());
    let mut checked = 0;
    for (pid, summary) in pids.iter().zip(&summaries) {
        let queries: Vec<&String> = summary["queries"].as_object().expect("queries").keys().collect();
        assert!(!queries.is_empty());
        for q in queries {
            for quantile in [0.5, 0.99, 1.0] {
                let id = [("query_id", q.as_str()), ("pid", pid.as_str())];
                let le =
                    integration_tests::bucket_quantile(&text, "query_latency_seconds", &id, quantile).expect("buckets");
                let r = prometheus.query(&format!(
                    "histogram_quantile({quantile}, query_latency_seconds{{query_id=\"{q}\",pid=\"{pid}\"}})"
                ));
                let native: f64 = r
                    .first()
                    .and_then(|v| v["value"][1].as_str())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{pid} {q} p{quantile}: {r:?}"));
                // The bucket ending at `le` is (le / 2^(1/4), le].
                let lower = le / 2f64.powf(0.25);
                assert!(
                    native > lower * (1.0 - 1e-9) && native <= le * (1.0 + 1e-9),
                    "{pid} {q} p{quantile}: native {native} outside ({lower}, {le}]"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 18, "{checked}");

    let spans = receiver.spans();
    let page = integration_tests::http_get_accept(node.port, "/metrics", integration_tests::OPENMETRICS);
    let resolved = integration_tests::otlp::assert_exemplars_resolve(&page, &spans);
    assert!(resolved >= 6, "{resolved} exemplars on the OpenMetrics page");
    let received: BTreeSet<String> =
        spans.iter().map(|s| s.span.trace_id.iter().map(|b| format!("{b:02x}")).collect()).collect();
    // Exemplars of both engines, as Prometheus stored them (polled: the last scrapes may be
    // in flight on a busy machine).
    let deadline = Instant::now() + Duration::from_secs(15);
    let stored = loop {
        let mut stored = BTreeMap::new();
        for (labels, id) in prometheus.exemplar_trace_ids("query_latency_seconds", started - 5) {
            let pid = labels["pid"].as_str().unwrap_or("?").to_owned();
            assert!(received.contains(&id), "Prometheus holds exemplar {id} of {pid}, a trace never received");
            *stored.entry(pid).or_insert(0) += 1;
        }
        if stored.len() == 2 || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(stored.len(), 2, "exemplars of both engines stored: {stored:?}");
    assert!(node.stop().success());
}

/// For `cargo xtask overview-png`: every Overview panel's series over the run, with their
/// legends, as JSON.
fn save_overview(p: &Prometheus, d: &Value, vars: &BTreeMap<String, String>, path: &Path, secs: u64) {
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let start = end - secs;
    let mut out = Vec::new();
    for panel in panels(d) {
        let mut series = Vec::new();
        for t in panel["targets"].as_array().expect("targets") {
            let q = substitute(t["expr"].as_str().expect("expr"), vars);
            let v = p.api(&format!("/api/v1/query_range?query={}&start={start}&end={end}&step=1", encode(&q)));
            for s in v["data"]["result"].as_array().into_iter().flatten() {
                let mut legend = t["legendFormat"].as_str().unwrap_or("").to_owned();
                for (k, val) in s["metric"].as_object().into_iter().flatten() {
                    legend = legend.replace(&format!("{{{{{k}}}}}"), val.as_str().unwrap_or(""));
                }
                series.push(json!({"legend": legend, "values": s["values"]}));
            }
        }
        out.push(json!({
            "title": panel["title"], "type": panel["type"], "unit": panel["fieldConfig"]["defaults"]["unit"],
            "gridPos": panel["gridPos"], "series": series,
        }));
    }
    std::fs::write(path, serde_json::to_string(&json!({"panels": out})).expect("json")).expect("write overview data");
}
