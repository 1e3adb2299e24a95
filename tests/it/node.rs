//! Node mode on the real kernel: `eventflux-probe node` finds demos as they start (one in its
//! own pid and mount namespace and its own cgroup, named like a container's), counts each
//! exactly, labels each, forgets each after the grace period; and the library's per-target
//! attach and detach can run hundreds of cycles without exhausting anything.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventflux_probe::serve::daemon::Daemon;
use eventflux_probe_common::probe;
use integration_tests::{
    GatedDemo, NodeObserver, Scratch, bin, counts_match, demo_copy, parse_metrics, poll_http, read_semaphore,
    semaphore_offset, serial, summary, value, wait_with_deadline,
};
use serde_json::Value;

/// `eventflux-probe node` as these tests run it: counts handed over every 100 ms.
fn node(extra: &[&str]) -> NodeObserver {
    let mut args = vec!["--flush-interval", "100ms"];
    args.extend(extra);
    NodeObserver::start(&args)
}

/// The counts of process `pid` on the node's `/metrics` equal its summary.
fn counts_of(scrape: &str, pid: u32, summary: &Value) -> Result<(), String> {
    counts_match(&parse_metrics(scrape), summary, &[("pid", &pid.to_string())])
}

/// The labels of process `pid`'s `eventflux_probe_target_running` series.
fn labels_of(scrape: &str, pid: u32) -> Vec<(String, String)> {
    parse_metrics(scrape)
        .into_iter()
        .find(|s| {
            s.name == "eventflux_probe_target_running"
                && s.labels.iter().any(|(k, v)| k == "pid" && *v == pid.to_string())
        })
        .map(|s| s.labels)
        .unwrap_or_default()
}

/// A demo in its own pid and mount namespace (`unshare --pid --fork --mount-proc`) and its own
/// cgroup, named as containerd names a container's.
struct Contained {
    shell: Child,
    /// The demo's pid on the host.
    pid: u32,
    gate: std::path::PathBuf,
    cgroup: std::path::PathBuf,
    container_id: String,
    _scratch: Scratch,
}

impl Contained {
    fn start(demo: &Path, args: &[&str]) -> Contained {
        let scratch = Scratch::new("contained");
        let gate = scratch.path().join("go");
        let container_id = format!("{:064x}", u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15);
        let cgroup = Path::new("/sys/fs/cgroup/unified")
            .join(format!("eventflux-test-{}", std::process::id()))
            .join(format!("cri-containerd-{container_id}.scope"));
        std::fs::create_dir_all(&cgroup).unwrap_or_else(|e| panic!("cgroup {}: {e}", cgroup.display()));
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec unshare --pid --fork --mount-proc {} {} --gate {}",
            cgroup.display(),
            demo.display(),
            args.join(" "),
            gate.display()
        );
        let shell =
            Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("sh");
        // The demo is unshare's child (unshare is the shell, exec'd).
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            let child = std::fs::read_dir("/proc").expect("/proc").find_map(|e| {
                let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid: u32 = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                (ppid == shell.id() && exe == demo).then_some(pid)
            });
            if let Some(pid) = child {
                break pid;
            }
            assert!(Instant::now() < deadline, "the contained demo did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        Contained { shell, pid, gate, cgroup, container_id, _scratch: scratch }
    }

    fn open_and_wait(mut self) -> Value {
        std::fs::write(&self.gate, b"").expect("gate");
        let mut out = String::new();
        self.shell.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
        let status = wait_with_deadline(&mut self.shell, Duration::from_secs(60));
        assert!(status.success(), "{status}");
        summary(&out)
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
        let _ = std::fs::remove_dir(&self.cgroup);
        if let Some(parent) = self.cgroup.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Three demos start and stop at different times, one of them in its own pid and mount
/// namespace and cgroup: each is found within 2 s of its start, counted exactly (per `pid`),
/// labelled (`exe`, and `container_id` from the cgroup path for the contained one), listed in
/// `/health`, and its series are removed after the grace period; the observer never lists
/// itself.
#[test]
fn node_mode_finds_counts_labels_and_forgets_processes() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let node = node(&["--grace-period", "3s", "--exe", "*/eventflux-demo", "--cpu-hz", "999"]);

    let started = Instant::now();
    // A's query 0 evaluates an expensive filter (~0.7 s of CPU in all): CPU attribution per
    // process.
    let a = GatedDemo::start(&demo, &["--events", "150000", "--queries", "2", "--filter-cost", "3000"]);
    let pid_a = a.pid();
    let found_a = node.found(pid_a, started);

    let started = Instant::now();
    let b = Contained::start(&demo, &["--events", "20000", "--queries", "3", "--streams", "1"]);
    let pid_b = b.pid;
    let found_b = node.found(pid_b, started);
    let container_b = b.container_id.clone();

    // Labels while they run.
    let page = node.metrics();
    let la = labels_of(&page, pid_a);
    assert!(la.iter().any(|(k, v)| k == "exe" && Path::new(v) == demo), "{la:?}");
    assert!(!la.iter().any(|(k, _)| k == "container_id"), "A is in no container: {la:?}");
    let lb = labels_of(&page, pid_b);
    assert!(lb.iter().any(|(k, v)| k == "container_id" && *v == container_b), "{lb:?}");
    assert!(lb.iter().any(|(k, v)| k == "exe" && Path::new(v) == demo), "{lb:?}");
    let health = node.health();
    let b_health = health["targets"].as_array().expect("targets").iter().find(|t| t["pid"] == pid_b).cloned();
    assert_eq!(
        b_health.as_ref().map(|t| t["container_id"].clone()),
        Some(Value::from(container_b.clone())),
        "{health}"
    );

    let summary_a = summary(&a.open_and_wait());
    let summary_b = b.open_and_wait();
    poll_http(node.port, "/metrics", Duration::from_secs(10), "exact counts of A and B", |_, body| {
        counts_of(body, pid_a, &summary_a).is_ok() && counts_of(body, pid_b, &summary_b).is_ok()
    });
    let filter_cpu = |pid: u32| {
        let m = parse_metrics(&node.metrics());
        let l = [("pid", pid.to_string()), ("query_id", "q0_length".into()), ("stage", "filter".into())];
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        value(&m, "query_cpu_seconds_total", &l).unwrap_or(0.0)
    };
    let demo_cpu = summary_a["queries"]["q0_length"]["cpu_s"].as_f64().expect("A's query 0 CPU");
    assert!(
        filter_cpu(pid_a) > demo_cpu * 0.5,
        "A's expensive filter: {} s attributed, {demo_cpu} s measured",
        filter_cpu(pid_a)
    );
    assert!(filter_cpu(pid_b) < demo_cpu * 0.5, "B's filter is cheap: {} s attributed", filter_cpu(pid_b));

    // A third one while the first two are in their grace period.
    let started = Instant::now();
    let c = GatedDemo::start(&demo, &["--events", "10000"]);
    let pid_c = c.pid();
    let found_c = node.found(pid_c, started);
    let summary_c = summary(&c.open_and_wait());
    poll_http(node.port, "/metrics", Duration::from_secs(10), "exact counts of C", |_, body| {
        counts_of(body, pid_c, &summary_c).is_ok()
    });
    for (name, found) in [("A", found_a), ("B (own namespaces and cgroup)", found_b), ("C", found_c)] {
        assert!(found <= Duration::from_secs(2), "{name} found after {found:?}");
    }

    // After the grace period every finished process's series are gone, and so is it from
    // /health.
    poll_http(node.port, "/metrics", Duration::from_secs(15), "finished processes forgotten", |_, body| {
        let m = parse_metrics(body);
        !m.iter().any(|s| s.labels.iter().any(|(k, _)| k == "pid"))
    });
    assert!(node.target_pids().is_empty(), "{}", node.health());
    let h = node.health();
    assert_eq!(h["observer"]["discovery"]["attaches"], 3, "{h}");
    let status = node.stop();
    assert!(status.success(), "{status}");
}

/// A node observer attaches and detaches all day: 200 cycles of attach, detach and forget on
/// one process never fail, leave no site attached, reuse the same slots and leak no
/// descriptor, and leave the process's semaphore down.
#[test]
fn two_hundred_attach_and_detach_cycles_exhaust_nothing() {
    // Alone: a node observer of the other test would attach to this demo too.
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(&demo, &["--events", "1"]);
    let pid = target.pid();
    // One probe (one site): the cycle's cost is the kernel's uprobe unregistration, ~0.1 s per
    // site.
    let daemon = Daemon::load(&[probe::ingest::ID], Duration::ZERO).unwrap_or_else(|e| panic!("{e:#}"));
    let fds = || std::fs::read_dir("/proc/self/fd").expect("fds").count();
    let first = daemon.attach(pid).unwrap_or_else(|e| panic!("{e:#}"));
    let sites = first.report.sites;
    assert!(sites >= 1);
    drop(first);
    daemon.detach(pid);
    daemon.forget(pid).expect("forget");
    let before = fds();
    for i in 1..200 {
        let a = daemon.attach(pid).unwrap_or_else(|e| panic!("cycle {i}: {e:#}"));
        assert_eq!(a.report.sites, sites, "cycle {i}");
        drop(a);
        assert_eq!(daemon.detach(pid), sites, "cycle {i}");
        daemon.forget(pid).expect("forget");
    }
    let (attached, slots) = daemon.sites();
    assert_eq!((attached, slots), (0, sites), "no site left attached, no slot grown");
    // Detached, the live process's semaphore is down again while the observer still runs.
    let sem = semaphore_offset(&demo, "ingest");
    assert_eq!(read_semaphore(pid, &demo, sem), 0, "ingest semaphore left raised");
    assert!(fds() <= before, "descriptors leaked: {before} before, {} after", fds());
    drop(target);
}

/// An engine whose executable was deleted (or replaced) on disk after it started is found by
/// its exact path all the same: `/proc` names it "PATH (deleted)", and `--exe PATH` matches it.
#[test]
fn an_engine_whose_executable_was_deleted_is_found_by_its_path() {
    let _serial = serial();
    let scratch = Scratch::new("deleted-exe");
    let copy = demo_copy(&scratch, "engine");
    let demo = GatedDemo::start(&copy, &["--events", "1000"]);
    std::fs::remove_file(&copy).expect("delete the executable");
    let path = copy.to_str().expect("path");
    let node = node(&["--exe", path]);
    node.found(demo.pid(), Instant::now());
    let summary = summary(&demo.open_and_wait());
    assert_eq!(summary["events"], 1000);
    assert!(node.stop().success());
}

/// Churn: 60 short-lived engines (a few hundred milliseconds each, many of them dying while
/// they are being attached) under `node`: once every one is gone and the grace period is
/// over, nothing of them is left — no series with their pid, no entry in the kernel maps —
/// also of those whose attach failed because they died during it.
#[test]
fn short_lived_engines_leave_nothing_behind() {
    let _serial = serial();
    let scratch = Scratch::new("churn");
    // A copy of its own, so that no other test's demo is selected.
    let exe = demo_copy(&scratch, "churn-engine");
    let node = node(&["--exe", exe.to_str().expect("path"), "--grace-period", "1s", "--scan-interval", "50ms"]);
    let mut children = Vec::new();
    for i in 0..60u64 {
        let events = (5_000 + 3_000 * (i % 10)).to_string();
        let child = Command::new(&exe)
            .args(["--events", &events, "--rate", "50000", "--queries", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a short-lived engine");
        children.push(child);
        std::thread::sleep(Duration::from_millis(40 + 7 * (i % 5)));
    }
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    for mut c in children {
        wait_with_deadline(&mut c, Duration::from_secs(60));
    }
    let health = node.health();
    let attaches = health["observer"]["discovery"]["attaches"].as_u64().unwrap_or(0);
    let failures = health["observer"]["discovery"]["attach_failures"].as_u64().unwrap_or(0);
    assert!(attaches > 0, "some were attached: {health}");
    // Grace period (1 s) and a scan or two.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = node.metrics();
        let m = parse_metrics(&page);
        let left: Vec<u32> = pids.iter().copied().filter(|p| page.contains(&format!("pid=\"{p}\""))).collect();
        let entries: f64 = ["COUNTERS", "GAUGES", "HISTS"]
            .iter()
            .filter_map(|map| value(&m, "eventflux_probe_map_entries", &[("map", map)]))
            .sum();
        if left.is_empty() && entries == 0.0 {
            eprintln!("{attaches} attached, {failures} attaches failed; nothing left behind");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: series of {left:?}, {entries} map entries ({failures} failed attaches)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node.stop().success());
}
