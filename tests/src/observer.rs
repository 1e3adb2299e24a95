//! The observer as the tests run it: `eventflux-probe run` on one target ([`Daemon`]) and
//! `eventflux-probe node` on every engine it selects ([`NodeObserver`]), each on a free
//! loopback port, followed through its endpoints (`/live`, `/ready`, `/health`, `/metrics`)
//! and, for what has no endpoint, its JSON log (`--log-format json`: one object per line, its
//! `message` the event's stable name, its `fields` the event's values).

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Sample, bin, free_port, health, http_get, http_status, json, parse_metrics, poll_http, sigterm};
use crate::{value, wait_with_deadline};

/// How old a scrape may be: the collector's snapshot (100 ms) rendered into a body that is
/// served for another 100 ms.
const SCRAPE_AGE: Duration = Duration::from_millis(200);

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
        crate::procs::forward_lines(stderr, tx);
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

    /// Waits for the event `message` in the daemon's JSON log (started with `--log-format
    /// json`) and returns it; fails the test with the log so far after `limit`.
    pub fn wait_for_event(&mut self, message: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(event) = log_events(&self.log).into_iter().find(|e| e["message"] == message) {
                return event;
            }
            match self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.log.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("eventflux-probe run never logged the event {message:?}: {:#?}", self.log);
                }
            }
        }
    }

    /// The `/metrics` page.
    pub fn scrape(&self) -> String {
        http_get(self.port, "/metrics")
    }

    /// The samples of the `/metrics` page.
    pub fn samples(&self) -> Vec<Sample> {
        parse_metrics(&self.scrape())
    }

    /// `/health`: its status code and report.
    pub fn health(&self) -> (u16, Value) {
        health(self.port)
    }

    /// Waits until `/health` says the target is gone (exited, or exec'd another program), then
    /// until no scrape can predate that: every count the target flushed before it ended is in
    /// the next scrape.
    pub fn wait_target_gone(&self, limit: Duration) {
        poll_http(self.port, "/health", limit, "the target gone", |_, body| {
            serde_json::from_str::<Value>(body).is_ok_and(|h| h["target"]["state"] != "running")
        });
        thread::sleep(SCRAPE_AGE);
    }

    /// SIGTERM, then the exit status.
    pub fn stop(self) -> ExitStatus {
        self.stop_with_log().0
    }

    /// SIGTERM, then the exit status and every line the daemon logged.
    pub fn stop_with_log(mut self) -> (ExitStatus, Vec<String>) {
        sigterm(self.child.id());
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

/// Every line of a JSON log (`--log-format json`) as its object; fails the test at a line that
/// is not one.
pub fn log_events(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| json(l)).collect()
}

/// `eventflux-probe node`, started and ready.
pub struct NodeObserver {
    pub child: Child,
    pub port: u16,
}

impl NodeObserver {
    /// Starts `eventflux-probe node` with `extra` arguments on a free port (`--drain 0`: SIGTERM
    /// stops it at once) and waits until `/ready` answers 200.
    pub fn start(extra: &[&str]) -> NodeObserver {
        NodeObserver::start_with_env(extra, &[])
    }

    /// Like [`NodeObserver::start`], with environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> NodeObserver {
        let port = free_port();
        let child = Command::new(bin("eventflux-probe"))
            .args(["node", "--listen", &format!("127.0.0.1:{port}"), "--drain", "0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start eventflux-probe node");
        let node = NodeObserver { child, port };
        poll_http(port, "/ready", Duration::from_secs(60), "node mode ready", |s, _| s == 200);
        node
    }

    /// `/health`'s report.
    pub fn health(&self) -> Value {
        health(self.port).1
    }

    /// The pids `/health` lists as targets.
    pub fn target_pids(&self) -> Vec<u64> {
        pids(&self.health())
    }

    /// Whether `/health` lists `pid` as a target (not while it does not answer).
    pub fn lists(&self, pid: u32) -> bool {
        let Ok((_, body)) = http_status(self.port, "/health") else { return false };
        serde_json::from_str(&body).is_ok_and(|h| pids(&h).contains(&u64::from(pid)))
    }

    /// How long until `/health` lists `pid`, measured from `since`; fails after 10 s.
    pub fn found(&self, pid: u32, since: Instant) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.lists(pid) {
            assert!(Instant::now() < deadline, "process {pid} never found");
            thread::sleep(Duration::from_millis(25));
        }
        since.elapsed()
    }

    /// The `/metrics` page.
    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
    }

    /// Probe sites attached over every target (`eventflux_probe_sites_attached`); 0 while it
    /// does not answer.
    pub fn sites(&self) -> f64 {
        let Ok((_, body)) = http_status(self.port, "/metrics") else { return 0.0 };
        value(&parse_metrics(&body), "eventflux_probe_sites_attached", &[]).unwrap_or(0.0)
    }

    /// SIGTERM, then the exit status within a minute.
    pub fn stop(self) -> ExitStatus {
        self.stop_within(Duration::from_secs(60))
    }

    /// SIGTERM, then the exit status; fails the test if it takes longer than `limit`.
    pub fn stop_within(mut self, limit: Duration) -> ExitStatus {
        sigterm(self.child.id());
        wait_with_deadline(&mut self.child, limit)
    }
}

fn pids(health: &Value) -> Vec<u64> {
    health["targets"].as_array().into_iter().flatten().filter_map(|t| t["pid"].as_u64()).collect()
}

impl Drop for NodeObserver {
    /// A failed test must not leave a node observer attaching to later tests' demos.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
