//! `cargo bench -p integration-tests --bench scrape_load` (part of `cargo xtask bench`): the
//! daemon under 500 concurrent HTTP clients for 20 s — `/metrics`, `/health` and `/ready` in
//! turn on keep-alive connections — as `run` on one engine and as `node` on four. Prints the
//! daemon's resident memory before, at its peak and 10 s after the burst, and each endpoint's
//! answer times. Targets (issue #18): node ≤ 128 MB, run ≤ 64 MB RSS; `/ready` p99 < 100 ms,
//! `/metrics` p99 < 1 s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::{Daemon, GatedDemo, NodeObserver, bin, poll_http, rss_kib};

const CLIENTS: usize = 500;
const BURST: Duration = Duration::from_secs(20);
const PATHS: [&str; 3] = ["/metrics", "/health", "/ready"];

fn rss_mb(pid: u32) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

/// One GET on a keep-alive connection; the answer time, or `None` if the connection broke.
fn get(reader: &mut BufReader<TcpStream>, path: &str) -> Option<Duration> {
    let started = Instant::now();
    write!(reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(started.elapsed())
}

/// 500 clients for 20 s; returns the answer times by path and the daemon's peak RSS.
fn burst(port: u16, daemon: u32) -> ([Vec<Duration>; 3], f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let times: Arc<Mutex<[Vec<Duration>; 3]>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, times) = (Arc::clone(&stop), Arc::clone(&times));
            std::thread::spawn(move || {
                let mut mine: [Vec<Duration>; 3] = Default::default();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut reader = BufReader::new(stream);
                    while !stop.load(Ordering::Relaxed) {
                        let p = i % PATHS.len();
                        i += 1;
                        match get(&mut reader, PATHS[p]) {
                            Some(t) => mine[p].push(t),
                            None => break,
                        }
                    }
                }
                let mut all = times.lock().unwrap_or_else(|e| e.into_inner());
                for (a, m) in all.iter_mut().zip(mine) {
                    a.extend(m);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut peak: f64 = 0.0;
    while started.elapsed() < BURST {
        peak = peak.max(rss_mb(daemon));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let times = std::mem::take(&mut *times.lock().unwrap_or_else(|e| e.into_inner()));
    (times, peak)
}

fn quantile(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

/// The burst against the observer `pid` serving on `port`, and what it did to it.
fn report(mode: &str, pid: u32, port: u16, rss_target: f64) {
    poll_http(port, "/ready", Duration::from_secs(60), "ready", |s, _| s == 200);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_mb(pid);
    let (mut times, peak) = burst(port, pid);
    std::thread::sleep(Duration::from_secs(10));
    let after = rss_mb(pid);
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!(
        "  {mode:<24} RSS {before:.0} MB before, {peak:.0} MB peak, {after:.0} MB 10 s after (target <= {rss_target:.0} MB: {})",
        verdict(peak <= rss_target)
    );
    for (p, path) in PATHS.iter().enumerate() {
        let n = times[p].len();
        let (p50, p99) = (quantile(&mut times[p], 0.5), quantile(&mut times[p], 0.99));
        let target = match *path {
            "/ready" => Some(100.0),
            "/metrics" => Some(1000.0),
            _ => None,
        };
        let t = target.map_or(String::new(), |t| format!(" (target p99 < {t:.0} ms: {})", verdict(p99 < t)));
        println!("    {path:<9} {n:>7} answers, p50 {p50:>7.1} ms, p99 {p99:>7.1} ms{t}");
    }
}

fn main() {
    let demo_args = ["--events", "100000000", "--rate", "100000"];
    println!("the daemon under {CLIENTS} concurrent HTTP clients for {BURST:?}:");
    {
        let demo = GatedDemo::start(&bin("eventflux-demo"), &demo_args).open();
        let daemon = Daemon::start(demo.pid());
        report("run, 1 engine", daemon.child.id(), daemon.port, 64.0);
        daemon.stop();
    }
    {
        let demos: Vec<GatedDemo> =
            (0..4).map(|_| GatedDemo::start(&bin("eventflux-demo"), &demo_args).open()).collect();
        let pids: Vec<String> = demos.iter().map(|d| d.pid().to_string()).collect();
        let args: Vec<&str> = pids.iter().flat_map(|p| ["--pid", p.as_str()]).collect();
        let node = NodeObserver::start(&args);
        report("node, 4 engines", node.child.id(), node.port, 128.0);
        node.stop();
    }
}
