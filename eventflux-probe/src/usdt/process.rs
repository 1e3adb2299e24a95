//! The files a running process executes from, read through `/proc/PID/root` so that a process
//! in a container is seen with its own filesystem.

use std::io::ErrorKind;
use std::path::PathBuf;

use anyhow::{Result, bail};

/// An executable file mapped by a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// Path inside the process's mount namespace, as `/proc/PID/maps` shows it.
    pub path: PathBuf,
    /// The same file reached from here.
    pub opened_at: PathBuf,
    /// Device and inode as the maps show them: the same file in many processes (containers of
    /// one image) has the same, so its notes are parsed once (`usdt::NotesCache`).
    pub file_id: Option<(String, u64)>,
}

/// The main executable first, then every other file mapped with execute permission, once each.
pub fn mapped_executables(pid: u32) -> Result<Vec<MappedFile>> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    // A process that exited but was not reaped yet still has a /proc entry, with no mappings.
    if matches!(crate::target::proc_state(pid), Some('Z' | 'X')) {
        bail!("process {pid} has exited (a zombie its parent has not reaped yet): nothing left to observe");
    }
    let maps = match std::fs::read_to_string(proc_dir.join("maps")) {
        Ok(maps) => maps,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("no process with pid {pid} (check the pid, or that it is visible in this pid namespace)")
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            bail!("cannot read /proc/{pid}/maps: permission denied (run as root or with CAP_SYS_PTRACE)")
        }
        Err(e) => bail!("cannot read /proc/{pid}/maps: {e}"),
    };
    let exe = std::fs::read_link(proc_dir.join("exe")).ok();
    let mut paths: Vec<String> = Vec::new();
    let mut ids: std::collections::BTreeMap<String, (String, u64)> = Default::default();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.splitn(6, ' ');
        let perms = fields.nth(1).unwrap_or("");
        let dev = fields.nth(1).unwrap_or("");
        let inode = fields.next().and_then(|i| i.parse::<u64>().ok());
        let path = fields.next().map(str::trim_start).unwrap_or("");
        if perms.contains('x') && path.starts_with('/') && !paths.iter().any(|p| p == path) {
            paths.push(path.to_owned());
            if let Some(inode) = inode.filter(|i| *i != 0) {
                ids.insert(path.to_owned(), (dev.to_owned(), inode));
            }
        }
    }
    if let Some(at) = exe.as_ref().and_then(|e| e.to_str()).and_then(|exe| paths.iter().position(|p| p == exe)) {
        let exe = paths.remove(at);
        paths.insert(0, exe);
    }
    let root = proc_dir.join("root");
    let exe = exe.as_ref().and_then(|e| e.to_str());
    Ok(paths
        .into_iter()
        .map(|p| {
            // The executable is reachable through /proc/PID/exe even when it was replaced on disk
            // since it started (maps then shows "path (deleted)").
            let opened_at =
                if Some(p.as_str()) == exe { proc_dir.join("exe") } else { root.join(p.trim_start_matches('/')) };
            let file_id = ids.remove(&p);
            MappedFile { path: PathBuf::from(p), opened_at, file_id }
        })
        .collect())
}
