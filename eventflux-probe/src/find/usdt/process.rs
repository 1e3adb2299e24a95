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
    if matches!(crate::find::target::proc_state(pid), Some('Z' | 'X')) {
        bail!("process {pid} has exited (a zombie its parent has not reaped yet): nothing left to observe");
    }
    let maps = match mappings(pid) {
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
    for m in maps {
        if m.perms[2] == b'x' && m.path.starts_with('/') && !paths.contains(&m.path) {
            if m.inode != 0 {
                ids.insert(m.path.clone(), (m.dev, m.inode));
            }
            paths.push(m.path);
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

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `r-xp` and the like.
    pub perms: [u8; 4],
    /// File offset of `start`.
    pub offset: u64,
    /// The file's device and inode (0 for none).
    pub dev: String,
    pub inode: u64,
    /// The file, a `[name]` of the kernel's, or empty.
    pub path: String,
}

impl Mapping {
    pub fn parse(line: &str) -> Option<Mapping> {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let perms: [u8; 4] = fields.next()?.as_bytes().try_into().ok()?;
        let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
        let dev = fields.next()?.to_owned();
        let inode = fields.next()?.parse().ok()?;
        let path = fields.next().map(str::trim_start).unwrap_or("").to_owned();
        Some(Mapping {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            perms,
            offset,
            dev,
            inode,
            path,
        })
    }

    /// The address of file offset `offset` if this mapping holds `len` bytes from there.
    pub fn address_of(&self, offset: u64, len: u64) -> Option<u64> {
        let rel = offset.checked_sub(self.offset)?;
        (rel.checked_add(len)? <= self.end - self.start).then_some(self.start + rel)
    }
}

/// Process `pid`'s mappings, from `/proc/PID/maps`.
pub fn mappings(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/maps"))?.lines().filter_map(Mapping::parse).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let m =
            Mapping::parse("55d0c8a00000-55d0c8a45000 r-xp 00001000 fd:01 1234    /usr/bin/demo (deleted)").unwrap();
        assert_eq!(
            (m.start, m.end, &m.perms, m.offset, m.dev.as_str(), m.inode, m.path.as_str()),
            (0x55d0c8a00000, 0x55d0c8a45000, b"r-xp", 0x1000, "fd:01", 1234, "/usr/bin/demo (deleted)")
        );
        assert_eq!(m.address_of(0x1010, 5), Some(0x55d0c8a00010));
        assert_eq!(m.address_of(0xfff, 1), None);
        assert_eq!(m.address_of(0x1000 + 0x45000 - 2, 5), None, "crosses the mapping's end");
        let t = Mapping::parse("7fff0000-7fff1000 --xp 00000000 00:00 0                          [uprobes-trampoline]")
            .unwrap();
        assert_eq!(t.path, "[uprobes-trampoline]");
    }
}
