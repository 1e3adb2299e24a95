//! Shared harness of the integration tests (`tests/it`) and the benchmarks (`tests/benches`):
//! where the built binaries are and running them; the demo engine; the observer (`run` and
//! `node`) and its HTTP endpoints; Prometheus expositions; USDT notes and semaphores; bpftrace;
//! a real OTLP receiver. Everything here runs the real thing; a missing tool fails the test
//! with what to install rather than skipping it.
//!
//! Nothing here waits for what the observer or the demo say in words: processes are followed
//! through `/proc` (exec, listening sockets, sleeps), attaches through the semaphores the kernel
//! raises, the observer through its endpoints and, where an event has no endpoint, its JSON log.
//! (bpftrace, which has neither, is waited for until it says it is attaching.)

mod bpftrace;
mod demo;
mod errors;
mod http;
mod metrics;
mod observer;
pub mod otlp;
mod procs;
pub mod prometheus;
pub mod terminal;
pub mod tls;
mod usdt;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

pub use bpftrace::{Bpftrace, map_value, require_tracing};
pub use demo::{GatedDemo, computed_summary, demo_copy, fed_node_b, gated_iterations, send_chunks, summary};
pub use errors::{PROBE_ERROR, assert_final_error, assert_one_line_error, assert_one_line_error_of};
pub use http::{free_port, health, http_get, http_get_accept, http_status, json, poll_http, wait_for_port};
pub use metrics::{
    ExemplarLine, OPENMETRICS, Sample, assert_components_exact, assert_promtool_accepts, bucket_quantile, counts_match,
    metric, metric_sum, parse_exemplars, parse_metrics, poll_metrics, value,
};
pub use observer::{Daemon, NodeObserver, log_events};
pub use procs::{
    bpf_links, cpu_seconds, listening_ports, rss_kib, sigint, sigterm, sleep_request, wait_exec, wait_with_deadline,
};
pub use usdt::{ReadelfNote, Semaphores, read_semaphore, readelf_notes, semaphore_offset, with_moved_note};

/// The one lock of the whole test binary, for every test that starts processes or touches the
/// kernel: one such test at a time, so that two cores suffice, latency and CPU figures measure
/// the pipeline and not a neighbour, and a node-mode observer (which attaches to every demo it
/// sees) never meets another test's demo. A test that failed holding it does not block the
/// others.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The directory holding the workspace's built binaries (`target/release` under
/// `cargo xtask test`), next to this test executable unless `EVENTFLUX_BIN_DIR` says otherwise.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EVENTFLUX_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent().and_then(Path::parent).expect("test executable is in target/<profile>/deps").to_path_buf()
}

/// A workspace binary, which must already be built (`cargo xtask test` builds them first).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo xtask test`, which builds the workspace binaries first",
        path.display()
    );
    path
}

/// Runs a command to completion and returns its output, failing the test if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Like [`run`], and the command must succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh scratch directory under the target directory, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        // Tests of one binary run in parallel threads: pid alone does not make a name unique.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = bin_dir().join("test-scratch").join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The median (the upper one of an even count); NaN of nothing.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
