//! Debian's bpftrace, attached to a process: the tool whose one-liners docs/probes.md promises
//! work on our probes. It has no endpoint and raises no semaphore for its `profile` probes, so
//! it is the one program waited for until it says it is attaching.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

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
        crate::procs::forward_lines(stdout, tx);
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
        crate::sigint(self.child.id());
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
