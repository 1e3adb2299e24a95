//! Processes as `/proc` and the kernel see them: waiting for one, signalling it, what it
//! executes, listens on, sleeps for, uses, and the BPF links it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

/// Sends each line `output` (a child's stdout or stderr) writes to `tx`, from a thread of its
/// own, until the child closes it: a test reads them without ever blocking on the pipe, and
/// the child never blocks on a full pipe (lines go on being read when nobody listens).
pub fn forward_lines(output: impl std::io::Read + Send + 'static, tx: std::sync::mpsc::Sender<String>) {
    use std::io::BufRead;
    thread::spawn(move || {
        for line in std::io::BufReader::new(output).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
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

/// SIGTERM to `pid` (what Kubernetes sends to stop a pod); nothing if it is gone.
pub fn sigterm(pid: u32) {
    // SAFETY: sends a signal; no memory of this process is involved.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
}

/// SIGINT to `pid` (Ctrl-C); nothing if it is gone.
pub fn sigint(pid: u32) {
    // SAFETY: sends a signal; no memory of this process is involved.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
}

/// The TCP ports process `pid` listens on: its socket descriptors, looked up in the kernel's
/// socket tables (`/proc/net/tcp`, `tcp6`). How a test learns the port of a server it told to
/// take any (`--listen 127.0.0.1:0`) without asking the server.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            Some(link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for row in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let f: Vec<&str> = row.split_whitespace().collect();
            // State 0A is TCP_LISTEN.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}

/// How long the main thread of `pid` asked to sleep, if it is asleep in `nanosleep` or
/// `clock_nanosleep` now: the system call it is blocked in (`/proc/PID/syscall`) and the
/// request it passed, read from its memory (root). x86-64 system call numbers.
pub fn sleep_request(pid: u32) -> Option<Duration> {
    use std::os::unix::fs::FileExt;
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let f: Vec<&str> = text.split_whitespace().collect();
    let arg = |i: usize| u64::from_str_radix(f.get(i)?.trim_start_matches("0x"), 16).ok();
    let request = match f.first()?.parse::<u32>().ok()? {
        // nanosleep(request, remaining)
        35 => arg(1)?,
        // clock_nanosleep(clock, flags, request, remaining)
        230 => arg(3)?,
        _ => return None,
    };
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut timespec = [0u8; 16];
    mem.read_exact_at(&mut timespec, request).ok()?;
    let secs = u64::from_le_bytes(timespec[..8].try_into().ok()?);
    let nanos = u64::from_le_bytes(timespec[8..].try_into().ok()?);
    Some(Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// The BPF links process `pid` holds, counted by kind as the kernel names them in
/// `/proc/PID/fdinfo` (`uprobe_multi`, `perf`, ...): how an observer really attached.
pub fn bpf_links(pid: u32) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return kinds };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        if let Some(kind) = info.lines().find_map(|l| l.strip_prefix("link_type:")) {
            *kinds.entry(kind.trim().to_owned()).or_insert(0) += 1;
        }
    }
    kinds
}

/// Resident memory of `pid` in KiB (`VmRSS`); 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").to_owned()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds a process used so far (user and system, all threads), from `/proc/PID/stat`;
/// 0 once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15: indices 11 and 12 after the command.
    (ticks(11) + ticks(12)) / hz
}
