//! `cargo xtask overview-png`: the README's picture of the Overview dashboard, from real data.
//!
//! Runs the end-to-end dashboard test (a real Prometheus scraping `run` attached to the demo)
//! with `EVENTFLUX_OVERVIEW_DATA` set, so that before stopping it saves every Overview panel's
//! `query_range` result; then `dashboards/tools/render_overview.py` plots them into
//! `docs/img/overview.png`. No Grafana is needed: the picture shows what the panels' queries
//! return, laid out as the dashboard lays them out.

use std::process::Command;

use anyhow::{Context, Result};

pub fn run() -> Result<()> {
    let root = crate::root();
    let data = std::env::temp_dir().join("eventflux-overview.json");
    crate::build_release()?;
    crate::sh(
        Command::new("cargo")
            .args(["test", "--release", "-p", "integration-tests", "--test", "it"])
            .args(["dashboards::every_panel_query_returns_data_from_a_real_prometheus", "--", "--exact"])
            .env("EVENTFLUX_OVERVIEW_DATA", &data),
    )?;
    let have_matplotlib = Command::new("python3")
        .args(["-c", "import matplotlib"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_matplotlib {
        crate::sh(Command::new("python3").args(["-m", "pip", "install", "--quiet", "matplotlib"]))?;
    }
    let out = root.join("docs/img/overview.png");
    std::fs::create_dir_all(out.parent().context("docs/img")?)?;
    crate::sh(
        Command::new("python3")
            .arg(root.join("dashboards/tools/render_overview.py"))
            .arg(&data)
            .arg(root.join("dashboards/grafana/eventflux-overview.json"))
            .arg(&out),
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
