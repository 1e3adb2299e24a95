//! `cargo xtask setup`: everything a fresh machine of this project's kind lacks. Each step
//! checks first, so a second run takes a second.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{root, sh};

/// Debian packages the build, tests and demo use: bpftrace (interop tests), readelf (note
/// comparison), gcc and sys/sdt.h (C probe fixtures), prometheus/promtool (rules and scrape
/// tests), capsh (privilege tests), curl (demo), openssl (the OTLP TLS tests' CA), tmux (the `top` tests' terminal).
const PACKAGES: &[&str] =
    &["bpftrace", "binutils", "gcc", "systemtap-sdt-dev", "prometheus", "libcap2-bin", "curl", "openssl", "tmux"];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()?;
    tracefs()?;
    eprintln!("setup: done");
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The eBPF crate is built with nightly's `-Z build-std=core`, which needs the std sources.
fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
        .context("the nightly toolchain is needed to build the eBPF programs")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must use the same LLVM as the nightly rustc that emits the bitcode: link it
/// against the nightly's own libLLVM rather than a system LLVM.
fn bpf_linker() -> Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_ok_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in the nightly toolchain ({})", lib_dir.display()))?;
    let prefix = root().join("target").join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("cannot link {}", link.display()))?;
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display())))
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// bpftrace and perf-based uprobes create their probes through tracefs.
fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/uprobe_events").exists() {
        return Ok(());
    }
    if !quiet(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])) {
        bail!("cannot mount tracefs at /sys/kernel/tracing (are you root?)");
    }
    Ok(())
}
