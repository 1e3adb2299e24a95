//! Finding USDT probes: in an ELF file, or in every file a running process has mapped.

pub mod argspec;
pub mod notes;
pub mod process;
pub mod spec;
pub mod verify;

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

/// Reads the probe notes of an ELF file: a regular file, read up to the size it had when
/// opened, so that a FIFO cannot hang us and a device cannot feed us forever.
pub fn probes_in_file(path: &Path) -> Result<Notes> {
    let data = crate::input::read_regular(path, None, "binary").map_err(|e| match e.io() {
        Some(io) => read_error(path, io),
        None => anyhow::Error::new(e),
    })?;
    notes::parse(&data).with_context(|| path.display().to_string())
}

/// A file we were not allowed to read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read {}: permission denied (reading another process's files through /proc needs root or CAP_SYS_PTRACE)",
    path.display()
)]
pub struct PermissionDenied {
    /// The file.
    pub path: PathBuf,
}

/// Why a file could not be read, with what to do about a refusal.
fn read_error(path: &Path, e: &std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        PermissionDenied { path: path.to_path_buf() }.into()
    } else {
        anyhow::anyhow!("cannot read {}: {e}", path.display())
    }
}

/// Reads the probe notes of the executable and every shared object that process `pid` has
/// mapped executable. Files that cannot be read as ELF are reported in `warnings` and skipped.
///
/// A process whose executable we may not read is an error (it would otherwise look like a
/// process without probes).
pub fn probes_in_process(pid: u32, warnings: &mut Vec<String>) -> Result<Vec<BinaryProbes>> {
    probes_in_process_cached(pid, warnings, None)
}

/// Notes of files already parsed, by device and inode, checked against the file's size and
/// modification time: a node observer sees the same executable in many processes (every
/// container of one image, every restart) and parses it once.
#[derive(Debug, Default)]
pub struct NotesCache {
    files: std::sync::Mutex<std::collections::HashMap<FileId, Stamped>>,
    /// Files parsed, and files found in the cache.
    pub parsed: std::sync::atomic::AtomicU64,
    pub hits: std::sync::atomic::AtomicU64,
}

/// A file as `/proc/PID/maps` names it: device and inode.
type FileId = (String, u64);
/// What identifies a file's content without reading it: its size and its modification and
/// change times (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

/// Notes with the stamp of the file they were read from.
#[derive(Debug)]
struct Stamped {
    stamp: Stamp,
    notes: Notes,
}

/// Entries kept at most; past it the cache starts over (a host runs far fewer distinct
/// executables than this).
const CACHE_FILES: usize = 4096;

impl NotesCache {
    fn notes(&self, file: &process::MappedFile) -> Result<Notes> {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering;
        // The change time too: mtime is often preserved (image layers, `cp -p`, reproducible
        // builds) and an inode number is reused after a delete; nobody can set ctime.
        let stamp = std::fs::metadata(&file.opened_at).ok().map(|m| Stamp {
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        });
        if let (Some(id), Some(stamp)) = (&file.file_id, stamp) {
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cached) = files.get(id)
                && cached.stamp == stamp
            {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(cached.notes.clone());
            }
        }
        let notes = probes_in_file(&file.opened_at)?;
        self.parsed.fetch_add(1, Ordering::Relaxed);
        if let (Some(id), Some(stamp)) = (&file.file_id, stamp) {
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            if files.len() >= CACHE_FILES {
                files.clear();
            }
            files.insert(id.clone(), Stamped { stamp, notes: notes.clone() });
        }
        Ok(notes)
    }
}

/// [`probes_in_process`], parsing each file once per `cache`.
pub fn probes_in_process_cached(
    pid: u32,
    warnings: &mut Vec<String>,
    cache: Option<&NotesCache>,
) -> Result<Vec<BinaryProbes>> {
    let files = process::mapped_executables(pid)?;
    let mut out = Vec::new();
    for (i, file) in files.into_iter().enumerate() {
        let notes = match cache {
            Some(c) => c.notes(&file),
            None => probes_in_file(&file.opened_at),
        };
        match notes {
            Ok(notes) => out.push(BinaryProbes { path: file.path, opened_at: file.opened_at, notes }),
            Err(e) if i == 0 && e.is::<PermissionDenied>() => {
                return Err(e.context(format!("process {pid}'s executable could not be read")));
            }
            Err(e) => warnings.push(format!("skipping {}: {e:#}", file.path.display())),
        }
    }
    Ok(out)
}
