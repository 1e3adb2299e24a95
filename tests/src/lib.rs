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
    pub fn finish(mut self) -> Vec<(String, String)> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let status = self.child.wait().expect("wait bpftrace");
        let mut maps = Vec::new();
        let mut all = self.seen.clone();
        all.extend(self.lines.try_iter());
        // The reader threads may still be draining the pipes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            all.push(line);
        }
        for line in &all {
            if let Some((k, v)) = line.strip_prefix('@').and_then(|rest| rest.split_once(": ")) {
                maps.push((format!("@{k}"), v.trim().to_owned()));
            }
        }
        assert!(status.success() || status.code().is_none() || !maps.is_empty(), "bpftrace failed ({status}): {all:?}");
        maps
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
        GatedDemo { child, gate, _scratch: scratch }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens the gate and waits for the run to finish; returns its stdout.
    pub fn open_and_wait(mut self) -> String {
        std::fs::write(&self.gate, b"").expect("open gate");
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(120));
        let mut stdout = String::new();
        let mut stderr = String::new();
        let _ = self.child.stdout.take().expect("stdout").read_to_string(&mut stdout);
        let _ = self.child.stderr.take().expect("stderr").read_to_string(&mut stderr);
        assert!(status.success(), "target failed ({status}): {stderr}");
        stdout
    }
}
