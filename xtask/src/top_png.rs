//! `cargo xtask top-png`: the README's picture of `eventflux-probe top`, from a real terminal.
//!
//! Starts the demo (async junctions, so queue fill shows), runs `top` on it in a detached tmux
//! session, lets the window fill, captures the pane with its escape sequences
//! (`capture-pane -e`), leaves with `q`, and draws the capture with
//! `docs/tools/render_pane.py` into `docs/img/top.png`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmux(args: &[&str]) -> Result<String> {
    let out = Command::new("tmux").args(args).output().context("cannot run tmux (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!("tmux {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run() -> Result<()> {
    let root = crate::root();
    crate::build_release()?;
    let bin = root.join("target/release");
    let demo = Killed(
        Command::new(bin.join("eventflux-demo"))
            .args(["--rate", "40000", "--mode", "async", "--join-query", "--pattern-query"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the demo")?,
    );
    let session = format!("eventflux-top-png-{}", std::process::id());
    tmux(&["new-session", "-d", "-s", &session, "-x", "132", "-y", "34", "env PS1='$ ' bash --norc --noprofile"])?;
    let capture = (|| -> Result<String> {
        let top = format!("{} top --pid {}", bin.join("eventflux-probe").display(), demo.0.id());
        tmux(&["send-keys", "-t", &session, "-l", &top])?;
        tmux(&["send-keys", "-t", &session, "Enter"])?;
        // Attached, and a full window of rates.
        std::thread::sleep(Duration::from_secs(12));
        let pane = tmux(&["capture-pane", "-p", "-e", "-t", &session])?;
        tmux(&["send-keys", "-t", &session, "q"])?;
        std::thread::sleep(Duration::from_secs(2));
        Ok(pane)
    })();
    let _ = tmux(&["kill-session", "-t", &session]);
    let pane = capture?;
    if !pane.contains("QUERY") {
        bail!("top's screen was not captured:\n{pane}");
    }
    let have_pillow =
        Command::new("python3").args(["-c", "import PIL"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !have_pillow {
        crate::sh(Command::new("python3").args(["-m", "pip", "install", "--quiet", "pillow"]))?;
    }
    let text = std::env::temp_dir().join("eventflux-top-pane.txt");
    std::fs::write(&text, pane)?;
    let out = root.join("docs/img/top.png");
    crate::sh(Command::new("python3").arg(root.join("docs/tools/render_pane.py")).arg(&text).arg(&out))?;
    println!("wrote {}", out.display());
    Ok(())
}
