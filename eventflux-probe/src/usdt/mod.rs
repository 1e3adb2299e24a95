//! Finding USDT probes: in an ELF file, or in every file a running process has mapped.

pub mod argspec;
pub mod notes;
pub mod process;
pub mod spec;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use notes::{Notes, UsdtNote};

/// The probes of one file.
#[derive(Debug, Clone)]
pub struct BinaryProbes {
    /// The file as the target sees it (inside its mount namespace for `--pid`).
    pub path: PathBuf,
    /// Where this process opened it (`/proc/PID/root/...` for `--pid`).
    pub opened_at: PathBuf,
    /// Its probe notes.
    pub notes: Notes,
}

/// Reads the probe notes of an ELF file.
pub fn probes_in_file(path: &Path) -> Result<Notes> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    notes::parse(&data).with_context(|| path.display().to_string())
}

/// Reads the probe notes of the executable and every shared object that process `pid` has
/// mapped executable. Files that cannot be read as ELF are reported in `warnings` and skipped.
pub fn probes_in_process(pid: u32, warnings: &mut Vec<String>) -> Result<Vec<BinaryProbes>> {
    let files = process::mapped_executables(pid)?;
    let mut out = Vec::new();
    for file in files {
        match probes_in_file(&file.opened_at) {
            Ok(notes) => out.push(BinaryProbes { path: file.path, opened_at: file.opened_at, notes }),
            Err(e) => warnings.push(format!("skipping {}: {e:#}", file.path.display())),
        }
    }
    Ok(out)
}
