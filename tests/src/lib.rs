//! Shared harness for the integration tests: where the built binaries are, running them,
//! attaching bpftrace, reading `readelf -n`. Everything here runs the real thing; a missing
//! tool fails the test with what to install rather than skipping it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

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

/// One note as `readelf -n` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadelfNote {
    pub provider: String,
    pub name: String,
    pub location: u64,
    pub base: u64,
    pub semaphore: u64,
    pub args: String,
}

/// The stapsdt notes of a file according to binutils' `readelf -n`.
pub fn readelf_notes(path: &Path) -> Vec<ReadelfNote> {
    let out = run_ok(Command::new("readelf").arg("-nW").arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut notes = Vec::new();
    let mut cur: Option<ReadelfNote> = None;
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).expect("readelf hex");
    for line in text.lines() {
        let line = line.trim();
        // With -W, readelf prints "Provider:" at the end of the note's header line.
        if let Some(p) = line.find("Provider: ").map(|i| &line[i + "Provider: ".len()..]) {
            cur = Some(ReadelfNote {
                provider: p.to_owned(),
                name: String::new(),
                location: 0,
                base: 0,
                semaphore: 0,
                args: String::new(),
            });
        } else if let (Some(n), Some(c)) = (line.strip_prefix("Name: "), cur.as_mut()) {
            c.name = n.to_owned();
        } else if let (Some(l), Some(c)) = (line.strip_prefix("Location: "), cur.as_mut()) {
            // "0x…, Base: 0x…, Semaphore: 0x…"
            let parts: Vec<&str> = l.split(", ").collect();
            c.location = hex(parts[0]);
            c.base = hex(parts[1].trim_start_matches("Base: "));
            c.semaphore = hex(parts[2].trim_start_matches("Semaphore: "));
        } else if let Some(a) = line.strip_prefix("Arguments:") {
            let mut c = cur.take().expect("Arguments after Provider");
            c.args = a.trim().to_owned();
            notes.push(c);
        }
    }
    notes
}

/// bpftrace, attached and running in the background.
pub struct Bpftrace {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// Checks what bpftrace and uprobes need, failing with what to do.
pub fn require_tracing() {
    assert!(
        Command::new("bpftrace").arg("--version").output().is_ok_and(|o| o.status.success()),
        "bpftrace is not installed: run `cargo xtask setup` (Debian package bpftrace)"
    );
    assert!(
        Path::new("/sys/kernel/tracing/uprobe_events").exists(),
        "tracefs is not mounted at /sys/kernel/tracing: run `cargo xtask setup` (or mount -t tracefs nodev /sys/kernel/tracing)"
    );
}

impl Bpftrace {
    /// Starts `bpftrace -p PID -e SCRIPT` and waits until its probes are attached.
    pub fn attach(pid: u32, script: &str) -> Bpftrace {
        require_tracing();
        let mut child = Command::new("bpftrace")
            .args(["-p", &pid.to_string(), "-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bpftrace");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let tx2 = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = tx2.send(format!("stderr: {text}"));
        });
        let mut bt = Bpftrace { child, lines: rx, seen: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match bt.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("Attaching") => break,
                Ok(line) => bt.seen.push(line),
                Err(_) => {
                    let _ = bt.child.kill();
                    panic!("bpftrace did not attach: {:?}", bt.seen);
                }
            }
        }
        // bpftrace prints "Attaching N probes..." just before it attaches the last of them.
        thread::sleep(Duration::from_millis(500));
        bt
    }

    /// Stops bpftrace (SIGINT, as Ctrl-C) and returns every `@map: value` it printed.
    pub fn finish(self) -> Vec<(String, String)> {
        let mut maps = Vec::new();
        for line in self.finish_lines() {
            if let Some((k, v)) = line.strip_prefix('@').and_then(|rest| rest.split_once(": ")) {
                maps.push((format!("@{k}"), v.trim().to_owned()));
            }
        }
        maps
    }

    /// Stops bpftrace (SIGINT, as Ctrl-C) and returns every line it printed.
    pub fn finish_lines(mut self) -> Vec<String> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let status = self.child.wait().expect("wait bpftrace");
        let mut all = self.seen.clone();
        all.extend(self.lines.try_iter());
        // The reader threads may still be draining the pipes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            all.push(line);
        }
        let printed = all.iter().any(|l| l.starts_with('@'));
        assert!(status.success() || status.code().is_none() || printed, "bpftrace failed ({status}): {all:?}");
        all
    }
}

/// The value of `@name` in bpftrace's output, as a number.
pub fn map_value(maps: &[(String, String)], name: &str) -> u64 {
    maps.iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("bpftrace printed no {name}: {maps:?}"))
        .1
        .parse()
        .unwrap_or_else(|e| panic!("{name} is not a number: {e}"))
}

/// Waits for a child with a deadline; kills it and fails the test past the deadline.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `pid` has exec'd `binary` and mapped its code: right after spawn it may still be
/// a copy of the test, and during exec `/proc/PID/exe` changes before the new code is mapped.
pub fn wait_exec(pid: u32, binary: &Path) {
    let want = std::fs::canonicalize(binary).expect("canonicalize");
    let want = want.to_string_lossy();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if maps.lines().any(|l| l.contains(" r-xp ") && l.ends_with(want.as_ref())) {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} never ran {}", binary.display());
        thread::sleep(Duration::from_millis(1));
    }
}

/// Starts the demo with `--gate` so that an observer can attach before the first event.
pub struct GatedDemo {
    pub child: Child,
    pub gate: PathBuf,
    _scratch: Scratch,
}

impl GatedDemo {
    pub fn start(binary: &Path, args: &[&str]) -> GatedDemo {
        let scratch = Scratch::new("gate");
        let gate = scratch.path().join("go");
        let child = Command::new(binary)
            .args(args)
            .arg("--gate")
            .arg(&gate)
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

    /// Waits for a line of the target's stderr containing `what`.
    pub fn wait_for_stderr(&mut self, what: &str, limit: Duration) -> String {
        let mut stderr = BufReader::new(self.child.stderr.as_mut().expect("stderr"));
        let deadline = Instant::now() + limit;
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.contains(what) {
                return line;
            }
        }
        panic!("the target never printed {what:?} on stderr");
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

/// A free loopback port (bound and released; the race with other tests is theirs to lose).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `eventflux-probe run`, started and attached.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub stderr: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Daemon {
    /// Starts `eventflux-probe run --pid PID` on a free port and waits until it has attached.
    pub fn start(pid: u32) -> Daemon {
        Daemon::start_with(pid, &[])
    }

    /// Like [`Daemon::start`], with more arguments for `run`. Without a `--drain` among them,
    /// SIGTERM stops it at once (`--drain 0`), as the tests that do not test draining want.
    pub fn start_with(pid: u32, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(pid, extra, &[])
    }

    /// Like [`Daemon::start_with`], with environment variables.
    pub fn start_with_env(pid: u32, extra: &[&str], env: &[(&str, String)]) -> Daemon {
        let port = free_port();
        let drain: &[&str] = if extra.contains(&"--drain") { &[] } else { &["--drain", "0"] };
        let mut child = Command::new(bin("eventflux-probe"))
            .args(["run", "--pid", &pid.to_string(), "--listen", &format!("127.0.0.1:{port}")])
            .args(drain)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start eventflux-probe run");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut d = Daemon { child, port, stderr: rx, log: Vec::new() };
        d.wait_until_live(Duration::from_secs(60));
        d
    }

    /// Polls `/live` until it answers 200 (attached and serving); fails the test with the log
    /// if the daemon exits first or the limit passes.
    pub fn wait_until_live(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if matches!(http_status(self.port, "/live"), Ok((200, _))) {
                return;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = self.child.kill();
                self.log.extend(self.stderr.try_iter());
                panic!("eventflux-probe run never served /live ({exited:?}): {:#?}", self.log);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a log line containing `what`; fails the test with the log so far.
    pub fn wait_for_log(&mut self, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.log.iter().find(|l| l.contains(what)) {
                return line.clone();
            }
            match self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.log.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("eventflux-probe run never logged {what:?}: {:#?}", self.log);
                }
            }
        }
    }

    pub fn scrape(&self) -> String {
        http_get(self.port, "/metrics")
    }

    /// SIGTERM, then the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        self.stop_with_log().0
    }

    /// SIGTERM, then the exit status and every line the daemon logged.
    pub fn stop_with_log(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(30));
        // The reader thread ends with the daemon's stderr.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        (status, std::mem::take(&mut self.log))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on loopback; returns the body, failing the test on a non-200 status.
pub fn http_get(port: u16, path: &str) -> String {
    let (status, body) = http_status(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A plain HTTP/1.1 GET on loopback: the status code and the body, or why there is none
/// (nothing listening, connection reset).
pub fn http_status(port: u16, path: &str) -> Result<(u16, String), String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| "response is not UTF-8".to_owned())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status code in {head:?}"))?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok((status, body))
}

/// Polls `GET path` every 20 ms until `pred(status, body)` holds; returns that answer, or
/// fails the test with the last one after `limit`.
pub fn poll_http(
    port: u16,
    path: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + limit;
    loop {
        let answer = http_status(port, path);
        if let Ok((status, body)) = &answer
            && pred(*status, body)
        {
            return (*status, body.clone());
        }
        assert!(Instant::now() < deadline, "GET {path}: never {what} within {limit:?}; last answer {answer:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

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

/// The value of the one sample named `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v)))
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {} samples", found.len());
    found.first().map(|s| s.value)
}

/// Reads a process's 16-bit USDT semaphore through /proc/PID/mem (read only).
pub fn read_semaphore(pid: u32, binary: &Path, file_offset: u64) -> u16 {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let canon = std::fs::canonicalize(binary).expect("canonicalize");
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // The semaphore is in a writable mapping; a read-only one (RELRO) may cover the same
        // file offset with the file's original bytes.
        if f.len() < 6 || Path::new(f[5]) != canon || !f[1].contains('w') {
            continue;
        }
        let (start, end) = f[0].split_once('-').expect("range");
        let start = u64::from_str_radix(start, 16).expect("hex");
        let end = u64::from_str_radix(end, 16).expect("hex");
        let off = u64::from_str_radix(f[2], 16).expect("hex");
        if file_offset >= off && file_offset + 2 <= off + (end - start) {
            let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
            let mut buf = [0u8; 2];
            mem.read_exact_at(&mut buf, start + file_offset - off).expect("read mem");
            return u16::from_le_bytes(buf);
        }
    }
    panic!("no mapping of {} covers file offset {file_offset:#x}", binary.display());
}

/// A demo summary without what depends on timing (elapsed time, rates, percentiles,
/// backpressure): what must be equal between runs with the same input.
pub fn computed_summary(mut v: serde_json::Value) -> serde_json::Value {
    let obj = v.as_object_mut().expect("summary object");
    obj.remove("elapsed_s");
    obj.remove("cpu_s");
    obj.remove("events_per_sec");
    for q in obj["queries"].as_object_mut().expect("queries").values_mut() {
        let q = q.as_object_mut().expect("query");
        q.remove("p50_ns");
        q.remove("p99_ns");
    }
    for s in obj["streams"].as_object_mut().expect("streams").values_mut() {
        s.as_object_mut().expect("stream").remove("backpressure");
    }
    v
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

/// A real OTLP trace receiver for the tests: gRPC (the collector's `TraceService`) or
/// HTTP/protobuf (`POST /v1/traces`), decoding `opentelemetry-proto`'s messages and keeping
/// every span with its resource. Runs on its own runtime thread until dropped with the test.
pub mod otlp {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    /// A received span and its resource's attributes.
    #[derive(Debug, Clone)]
    pub struct Received {
        pub span: Span,
        pub resource: Vec<KeyValue>,
    }

    type Store = Arc<Mutex<Vec<Received>>>;

    fn keep(store: &Store, req: ExportTraceServiceRequest) {
        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
        for rs in req.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    s.push(Received { span, resource: resource.clone() });
                }
            }
        }
    }

    struct Grpc(Store);

    #[tonic::async_trait]
    impl TraceService for Grpc {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            keep(&self.0, request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    /// A running receiver.
    pub struct Receiver {
        pub port: u16,
        store: Store,
    }

    impl Receiver {
        /// A gRPC receiver (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) on a free loopback port.
        pub fn grpc() -> Receiver {
            Receiver::serve(|port, s| async move {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(Grpc(s)))
                    .serve(addr)
                    .await
                    .expect("OTLP gRPC receiver");
            })
        }

        /// Runs `server(port, store)` on its own runtime thread, on a free loopback port, and
        /// returns once the port accepts connections.
        fn serve<F: std::future::Future<Output = ()> + 'static>(
            server: impl FnOnce(u16, Store) -> F + Send + 'static,
        ) -> Receiver {
            let port = crate::free_port();
            let store = Store::default();
            let s = Arc::clone(&store);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().expect("runtime");
                rt.block_on(server(port, s));
            });
            crate::wait_for_port(port);
            Receiver { port, store }
        }

        /// An HTTP/protobuf receiver (`POST /v1/traces`) on a free loopback port.
        pub fn http() -> Receiver {
            Receiver::serve(|port, s| async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: axum::body::Bytes| {
                        let s = Arc::clone(&s);
                        async move {
                            match ExportTraceServiceRequest::decode(body) {
                                Ok(req) => {
                                    keep(&s, req);
                                    let resp = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                                    (axum::http::StatusCode::OK, [("content-type", "application/x-protobuf")], resp)
                                }
                                Err(_) => (
                                    axum::http::StatusCode::BAD_REQUEST,
                                    [("content-type", "text/plain")],
                                    b"not an ExportTraceServiceRequest".to_vec(),
                                ),
                            }
                        }
                    }),
                );
                let listener =
                    tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind OTLP HTTP receiver");
                axum::serve(listener, app).await.expect("OTLP HTTP receiver");
            })
        }

        pub fn spans(&self) -> Vec<Received> {
            self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    /// The string or integer value of attribute `key`, as text.
    pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
        let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
        match v {
            AnyValue { value: Some(any_value::Value::StringValue(s)) } => Some(s.clone()),
            AnyValue { value: Some(any_value::Value::IntValue(i)) } => Some(i.to_string()),
            _ => None,
        }
    }
}

/// Waits until something listens on loopback `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A copy of `binary` at `to` whose first stapsdt note of probe `eventflux:name` says its site
/// is at `move_pc(pc, semaphore)` instead: a stale or corrupt note. The note is found and
/// rewritten byte by byte (its description is pc, base, semaphore, then "provider\0name\0"),
/// not with the observer's parser. Returns the note's original pc.
pub fn with_moved_note(binary: &Path, to: &Path, name: &str, move_pc: impl Fn(u64, u64) -> u64) -> u64 {
    let mut data = std::fs::read(binary).expect("read binary");
    let needle = format!("eventflux\0{name}\0");
    let at = data.windows(needle.len()).position(|w| w == needle.as_bytes()).expect("the probe's note");
    let word =
        |data: &[u8], i: usize| u64::from_le_bytes(data[at - 24 + i * 8..at - 16 + i * 8].try_into().expect("8"));
    let (pc, semaphore) = (word(&data, 0), word(&data, 2));
    data[at - 24..at - 16].copy_from_slice(&move_pc(pc, semaphore).to_le_bytes());
    std::fs::write(to, &data).expect("write copy");
    let mut perms = std::fs::metadata(to).expect("copy").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(to, perms).expect("chmod");
    pc
}

/// The semaphore file offset of probe `name` in `binary`, as `eventflux-probe list --json`
/// reports it.
pub fn semaphore_offset(binary: &Path, name: &str) -> u64 {
    let out = run_ok(Command::new(bin("eventflux-probe")).args(["list", "--json", "--binary"]).arg(binary));
    let notes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("list JSON");
    notes.iter().find(|n| n["name"] == name).and_then(|n| n["semaphore_offset"].as_u64()).expect("semaphore")
}

/// A client of the demo's node protocol (`eventflux-demo --listen`; see eventflux-demo's
/// `net.rs`): sends `chunks` chunks of `events` events each to `addr`, each with a W3C
/// `traceparent` of its own whose flags are `flags` (`Some(0x01)`: sampled), or with none,
/// then ends the stream. The upstream node of the tests, written apart from the demo's own.
pub fn send_chunks(addr: &str, chunks: u64, events: u32, flags: Option<u8>) {
    use std::io::Write;
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
pub fn fed_node_b(receiver_port: u16, chunks: u64, events: u32, flags: Option<u8>) -> (serde_json::Value, Daemon) {
    let mut node_b =
        GatedDemo::start(&bin("eventflux-demo"), &["--listen", "127.0.0.1:0", "--streams", "1", "--queries", "2"]);
    let line = node_b.wait_for_stderr("listening on", Duration::from_secs(10));
    let addr = line.trim().rsplit(' ').next().expect("address").to_owned();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{receiver_port}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
    ];
    let daemon = Daemon::start_with_env(node_b.pid(), &[], &env);
    let node_b = node_b.open();
    let sender = thread::spawn(move || send_chunks(&addr, chunks, events, flags));
    let summary = serde_json::from_str(node_b.open_and_wait().trim()).expect("node B's summary");
    sender.join().expect("sender");
    (summary, daemon)
}

/// A copy of the demo named `name` in `scratch`: an executable no other test's process runs
/// (node mode's `--exe` selects it alone), or one a test may delete or rewrite.
pub fn demo_copy(scratch: &Scratch, name: &str) -> PathBuf {
    let copy = scratch.path().join(name);
    std::fs::copy(bin("eventflux-demo"), &copy).expect("copy the demo");
    copy
}

/// The BPF links process `pid` holds, counted by kind as the kernel names them in
/// `/proc/PID/fdinfo` (`uprobe_multi`, `perf`, ...): how an observer really attached.
pub fn bpf_links(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return kinds };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        if let Some(kind) = info.lines().find_map(|l| l.strip_prefix("link_type:")) {
            *kinds.entry(kind.trim().to_owned()).or_insert(0) += 1;
        }
    }
    kinds
}
