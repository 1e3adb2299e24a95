//! A real terminal for the tests of `top`: a detached tmux session running a plain shell,
//! driven with `send-keys` and read with `capture-pane`, as a person at a terminal would see
//! it; and `top`'s screens read back into rows.

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// The shell prompt in the session: how a test sees that a command has left.
pub const PROMPT: &str = "top-test$ ";

/// A tmux session with a shell, killed when dropped.
pub struct Tmux {
    name: String,
}

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux").args(args).output().expect("run tmux (cargo xtask setup installs it)")
}

impl Tmux {
    /// A session `width` × `height` running `bash` with [`PROMPT`].
    pub fn start(width: u16, height: u16) -> Tmux {
        let name = format!("eventflux-top-{}", std::process::id());
        let _ = tmux(&["kill-session", "-t", &name]);
        let out = tmux(&[
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &format!("env PS1='{PROMPT}' bash --norc --noprofile"),
        ]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        let t = Tmux { name };
        t.wait_for("the shell's prompt", Duration::from_secs(10), |s| s.contains(PROMPT.trim_end()));
        t
    }

    /// Types `line` and Enter.
    pub fn run(&self, line: &str) {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
    }

    /// `send-keys` with tmux's key names (`Enter`, `Escape`, `Down`, `-l` for literal text).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend_from_slice(keys);
        let out = tmux(&args);
        assert!(out.status.success(), "tmux send-keys: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// What the pane shows now, as text.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &self.name]).stdout).into_owned()
    }

    /// Whether the pane is on the alternate screen (a full-screen program holds it).
    pub fn alternate_screen(&self) -> bool {
        String::from_utf8_lossy(&tmux(&["display-message", "-p", "-t", &self.name, "#{alternate_on}"]).stdout).trim()
            == "1"
    }

    /// Polls the screen until `ready` holds; fails with the screen after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if ready(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what} not on screen within {limit:?}:\n{s}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.name]);
    }
}

/// The rows of the table whose heading starts with `heading` (`QUERY`, `STREAM`): by name (the
/// first column, or the second when there is a PID column), the other cells.
pub fn table(screen: &str, heading: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows = BTreeMap::new();
    let mut lines = screen.lines().skip_while(|l| !l.trim_start().starts_with(heading) && !is_pid_heading(l, heading));
    let Some(head) = lines.next() else { return rows };
    let with_pid = is_pid_heading(head, heading);
    for line in lines {
        let cells: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if cells.is_empty() {
            break;
        }
        let name = if with_pid { format!("{}/{}", cells[0], cells[1]) } else { cells[0].clone() };
        rows.insert(name, cells[if with_pid { 2 } else { 1 }..].to_vec());
    }
    rows
}

fn is_pid_heading(line: &str, heading: &str) -> bool {
    let mut w = line.split_whitespace();
    w.next() == Some("PID") && w.next().is_some_and(|h| h.starts_with(heading))
}

/// The query names in screen order.
pub fn query_order(screen: &str) -> Vec<String> {
    let mut lines = screen.lines().skip_while(|l| !l.trim_start().starts_with("QUERY"));
    lines.next();
    lines.map_while(|l| l.split_whitespace().next().map(str::to_owned)).collect()
}

/// A figure as `top` writes it (`950`, `9.50k`, `1.23M`, `12.3µs`, `4.0KiB`, `-`), in base
/// units (per second, seconds, bytes); `None` for `-`.
pub fn figure(cell: &str) -> Option<f64> {
    if cell == "-" {
        return None;
    }
    let units: [(&str, f64); 10] = [
        ("KiB", 1024.0),
        ("MiB", 1024.0 * 1024.0),
        ("GiB", 1024.0 * 1024.0 * 1024.0),
        ("ns", 1e-9),
        ("µs", 1e-6),
        ("ms", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("s", 1.0),
    ];
    for (suffix, scale) in units {
        if let Some(n) = cell.strip_suffix(suffix) {
            return Some(n.parse::<f64>().unwrap_or_else(|_| panic!("not a figure: {cell}")) * scale);
        }
    }
    let n = cell.strip_suffix('B').or_else(|| cell.strip_suffix('%')).unwrap_or(cell);
    Some(n.parse::<f64>().unwrap_or_else(|_| panic!("not a figure: {cell}")))
}
