//! A real Prometheus (Debian's, 2.42; `cargo xtask setup` installs it) scraping an observer
//! every second, with the repository's alert rules, and its HTTP API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Scratch, free_port, http_status};

fn repo() -> std::path::PathBuf {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

pub struct Prometheus {
    child: Child,
    pub port: u16,
    _scratch: Scratch,
}

impl Prometheus {
    pub fn start(target_port: u16, features: &[&str]) -> Prometheus {
        let scratch = Scratch::new("prometheus");
        let port = free_port();
        let config = scratch.path().join("prometheus.yml");
        let rules = repo().join("dashboards/alerts/eventflux.rules.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: eventflux-probe\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
                rules.display()
            ),
        )
        .expect("config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", scratch.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(features.iter().map(|f| format!("--enable-feature={f}")))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian's prometheus package; cargo xtask setup installs it)");
        let p = Prometheus { child, port, _scratch: scratch };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(port, "/-/ready").map(|(s, _)| s) != Ok(200) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn api(&self, path: &str) -> Value {
        let (status, body) = http_status(self.port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        assert_eq!((status, v["status"].as_str()), (200, Some("success")), "GET {path}: {body}");
        v
    }

    pub fn query(&self, expr: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", encode(expr)))["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The exemplars stored for `query` since `since` (Unix seconds): each series' labels
    /// and an exemplar's `trace_id`.
    pub fn exemplar_trace_ids(&self, query: &str, since: u64) -> Vec<(Value, String)> {
        let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 1;
        let r = self.api(&format!("/api/v1/query_exemplars?query={}&start={since}&end={end}", encode(query)));
        let mut out = Vec::new();
        for series in r["data"].as_array().into_iter().flatten() {
            for e in series["exemplars"].as_array().into_iter().flatten() {
                let id = e["labels"]["trace_id"].as_str().unwrap_or("?").to_owned();
                out.push((series["seriesLabels"].clone(), id));
            }
        }
        out
    }

    pub fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let v = self.api(&format!("/api/v1/label/{label}/values?match[]={}", encode(selector)));
        v["data"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
