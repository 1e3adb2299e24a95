//! The demo engine (`eventflux-demo`) and the probe-loop targets as the tests run them: held at
//! a gate until an observer has attached, then let go; their summaries; node B of the
//! two-node tests, fed by an upstream node written apart from the demo's own.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Daemon, Scratch, bin, listening_ports, sleep_request, wait_exec, wait_with_deadline};

/// A target held at a gate (a file it waits for) so that an observer can attach before its
/// first event: the demo (`--gate PATH`), or a probe-loop target (`TARGET GATE ARGS…`). Killed
/// when dropped unless it has finished.
pub struct GatedDemo {
    pub child: Child,
    pub gate: PathBuf,
    _scratch: Scratch,
}

impl GatedDemo {
    /// Starts the demo (or a copy of it) with `args` and `--gate`, and waits until it runs.
    pub fn start(binary: &Path, args: &[&str]) -> GatedDemo {
        GatedDemo::spawn(binary, |cmd, gate| {
            cmd.args(args).arg("--gate").arg(gate);
        })
    }

    /// Starts a probe-loop target of this crate (`src/bin`): `binary GATE args…`.
    pub fn start_target(binary: &Path, args: &[&str]) -> GatedDemo {
        GatedDemo::spawn(binary, |cmd, gate| {
            cmd.arg(gate).args(args);
        })
    }

    fn spawn(binary: &Path, args: impl FnOnce(&mut Command, &Path)) -> GatedDemo {
        let scratch = Scratch::new("gate");
        let gate = scratch.path().join("go");
        let mut cmd = Command::new(binary);
        args(&mut cmd, &gate);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        wait_exec(child.id(), binary);
        GatedDemo { child, gate, _scratch: scratch }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens the gate and waits for the run to finish; returns its stdout.
    pub fn open_and_wait(mut self) -> String {
        self.finish()
    }

    /// Opens the gate and lets it run.
    pub fn open(self) -> GatedDemo {
        std::fs::write(&self.gate, b"").expect("open gate");
        self
    }

    /// Whether the target is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// The loopback address the demo listens on (`--listen 127.0.0.1:0`, node B), as the
    /// kernel's socket table has it; it binds before its gate opens.
    pub fn listening_addr(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(port) = listening_ports(self.pid()).first() {
                return format!("127.0.0.1:{port}");
            }
            assert!(self.is_running(), "the demo exited before it listened");
            assert!(Instant::now() < deadline, "the demo never listened");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the demo's main thread sleeps for at least `at_least` in one go: with
    /// `--hold`, it has produced every event and holds its queries open, idle. Returns when it
    /// was first seen asleep.
    pub fn wait_holding(&mut self, at_least: Duration, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if sleep_request(self.pid()).is_some_and(|d| d >= at_least) {
                return Instant::now();
            }
            assert!(self.is_running(), "the demo exited before it held");
            assert!(Instant::now() < deadline, "the demo never held its queries within {limit:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(&mut self) -> String {
        std::fs::write(&self.gate, b"").expect("open gate");
        // Read while it runs: a summary larger than a pipe's buffer would block it otherwise.
        let mut out = self.child.stdout.take().expect("stdout");
        let reader = thread::spawn(move || {
            let mut stdout = String::new();
            let _ = out.read_to_string(&mut stdout);
            stdout
        });
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(120));
        let stdout = reader.join().unwrap_or_default();
        let mut stderr = String::new();
        let _ = self.child.stderr.take().expect("stderr").read_to_string(&mut stderr);
        assert!(status.success(), "target failed ({status}): {stderr}");
        stdout
    }
}

impl Drop for GatedDemo {
    /// A target whose test ended (or failed) before opening its gate would wait forever.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A summary the demo (or a probe-loop target) printed: one JSON object.
pub fn summary(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("the summary is not JSON ({e}): {stdout}"))
}

/// A demo summary without what depends on timing (elapsed time, rates, percentiles,
/// backpressure, the last snapshot's wall-clock time, queue fill, source lag): what must be
/// equal between runs with the same input.
pub fn computed_summary(mut v: Value) -> Value {
    let obj = v.as_object_mut().expect("summary object");
    obj.remove("elapsed_s");
    obj.remove("cpu_s");
    obj.remove("events_per_sec");
    for q in obj["queries"].as_object_mut().expect("queries").values_mut() {
        let q = q.as_object_mut().expect("query");
        for timing in ["p50_ns", "p99_ns", "p999_ns", "max_ns", "emitting_max_ns", "emitting_work_max_ns"] {
            q.remove(timing);
        }
    }
    for s in obj["streams"].as_object_mut().expect("streams").values_mut() {
        s.as_object_mut().expect("stream").remove("backpressure");
    }
    // When the last snapshot was taken, how full a queue was, how far behind its pace a
    // source was: timing, not computed figures.
    const TIMING: [&str; 3] =
        ["persistence_last_snapshot_timestamp_seconds", "junction_queue_chunks", "source_lag_events"];
    if let Some(components) = obj.get_mut("components").and_then(Value::as_object_mut) {
        for c in components.values_mut() {
            if let Some(series) = c.get_mut("series").and_then(Value::as_array_mut) {
                series.retain(|s| !TIMING.iter().any(|f| s["family"] == *f));
            }
        }
    }
    v
}

/// A copy of the demo named `name` in `scratch`: an executable no other test's process runs
/// (node mode's `--exe` selects it alone), or one a test may delete or rewrite.
pub fn demo_copy(scratch: &Scratch, name: &str) -> PathBuf {
    let copy = scratch.path().join(name);
    std::fs::copy(bin("eventflux-demo"), &copy).expect("copy the demo");
    copy
}

/// Arguments of the probe-loop targets (`TARGET GATE ITERATIONS`): waits until GATE exists, so
/// that an observer can attach first, and returns ITERATIONS. Exits with usage on bad input.
pub fn gated_iterations(usage: &str) -> u64 {
    let mut args = std::env::args().skip(1);
    let (Some(gate), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<u64>().ok())) else {
        eprintln!("usage: {usage} GATE ITERATIONS");
        std::process::exit(2);
    };
    while !Path::new(&gate).exists() {
        thread::sleep(Duration::from_millis(5));
    }
    n
}

/// A client of the demo's node protocol (`eventflux-demo --listen`; see eventflux-demo's
/// `net.rs`): sends `chunks` chunks of `events` events each to `addr`, each with a W3C
/// `traceparent` of its own whose flags are `flags` (`Some(0x01)`: sampled), or with none,
/// then ends the stream. The upstream node of the tests, written apart from the demo's own.
pub fn send_chunks(addr: &str, chunks: u64, events: u32, flags: Option<u8>) {
    let stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    let mut out = std::io::BufWriter::new(&stream);
    let mut ts = 0u64;
    for chunk in 0..chunks {
        out.write_all(&events.to_le_bytes()).expect("send");
        match flags {
            Some(f) => {
                let ctx = format!("00-{:032x}-{:016x}-{f:02x}", u128::from(chunk) << 64 | 0xe7f1, chunk + 1);
                out.write_all(&[ctx.len() as u8]).and_then(|()| out.write_all(ctx.as_bytes())).expect("send");
            }
            None => out.write_all(&[0]).expect("send"),
        }
        for i in 0..events {
            // ts_ms, symbol, padding, price, volume
            out.write_all(&ts.to_le_bytes()).expect("send");
            out.write_all(&(i % 7).to_le_bytes()).expect("send");
            out.write_all(&0u32.to_le_bytes()).expect("send");
            out.write_all(&(100 + i64::from(i % 13)).to_le_bytes()).expect("send");
            out.write_all(&1i64.to_le_bytes()).expect("send");
            ts += 1;
        }
    }
    out.flush().expect("send");
    drop(out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Node B of the upstream-sampling test and benchmark: the demo listening (1 stream, 2
/// queries), observed by `run` exporting traces over OTLP/HTTP to `receiver_port`, fed `chunks`
/// chunks of `events` events by [`send_chunks`] with trace flags `flags`. Returns node B's
/// summary once it ended, and its observer, still serving.
pub fn fed_node_b(receiver_port: u16, chunks: u64, events: u32, flags: Option<u8>) -> (Value, Daemon) {
    let mut node_b =
        GatedDemo::start(&bin("eventflux-demo"), &["--listen", "127.0.0.1:0", "--streams", "1", "--queries", "2"]);
    let addr = node_b.listening_addr();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{receiver_port}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
    ];
    let daemon = Daemon::start_with_env(node_b.pid(), &[], &env);
    let node_b = node_b.open();
    let sender = thread::spawn(move || send_chunks(&addr, chunks, events, flags));
    let summary = summary(&node_b.open_and_wait());
    sender.join().expect("sender");
    (summary, daemon)
}
