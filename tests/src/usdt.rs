//! USDT notes and semaphores, checked against the ground truth: binutils' `readelf -n`, the
//! bytes of the file, a process's memory. A probe's semaphore is raised by the kernel for every
//! observer attached to it, so the semaphores say who is attached without asking anyone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use crate::{bin, run_ok};

/// One note as `readelf -n` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadelfNote {
    pub provider: String,
    pub name: String,
    pub location: u64,
    pub base: u64,
    pub semaphore: u64,
    pub args: String,
}

/// The stapsdt notes of a file according to binutils' `readelf -n`.
pub fn readelf_notes(path: &Path) -> Vec<ReadelfNote> {
    let out = run_ok(Command::new("readelf").arg("-nW").arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut notes = Vec::new();
    let mut cur: Option<ReadelfNote> = None;
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).expect("readelf hex");
    for line in text.lines() {
        let line = line.trim();
        // With -W, readelf prints "Provider:" at the end of the note's header line.
        if let Some(p) = line.find("Provider: ").map(|i| &line[i + "Provider: ".len()..]) {
            cur = Some(ReadelfNote {
                provider: p.to_owned(),
                name: String::new(),
                location: 0,
                base: 0,
                semaphore: 0,
                args: String::new(),
            });
        } else if let (Some(n), Some(c)) = (line.strip_prefix("Name: "), cur.as_mut()) {
            c.name = n.to_owned();
        } else if let (Some(l), Some(c)) = (line.strip_prefix("Location: "), cur.as_mut()) {
            // "0x…, Base: 0x…, Semaphore: 0x…"
            let parts: Vec<&str> = l.split(", ").collect();
            c.location = hex(parts[0]);
            c.base = hex(parts[1].trim_start_matches("Base: "));
            c.semaphore = hex(parts[2].trim_start_matches("Semaphore: "));
        } else if let Some(a) = line.strip_prefix("Arguments:") {
            let mut c = cur.take().expect("Arguments after Provider");
            c.args = a.trim().to_owned();
            notes.push(c);
        }
    }
    notes
}

/// A copy of `binary` at `to` whose first stapsdt note of probe `eventflux:name` says its site
/// is at `move_pc(pc, semaphore)` instead: a stale or corrupt note. The note is found and
/// rewritten byte by byte (its description is pc, base, semaphore, then "provider\0name\0"),
/// not with the observer's parser. Returns the note's original pc.
pub fn with_moved_note(binary: &Path, to: &Path, name: &str, move_pc: impl Fn(u64, u64) -> u64) -> u64 {
    let mut data = std::fs::read(binary).expect("read binary");
    let needle = format!("eventflux\0{name}\0");
    let at = data.windows(needle.len()).position(|w| w == needle.as_bytes()).expect("the probe's note");
    let word =
        |data: &[u8], i: usize| u64::from_le_bytes(data[at - 24 + i * 8..at - 16 + i * 8].try_into().expect("8"));
    let (pc, semaphore) = (word(&data, 0), word(&data, 2));
    data[at - 24..at - 16].copy_from_slice(&move_pc(pc, semaphore).to_le_bytes());
    std::fs::write(to, &data).expect("write copy");
    let mut perms = std::fs::metadata(to).expect("copy").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(to, perms).expect("chmod");
    pc
}

/// Every note of `binary` as `eventflux-probe list --json --binary` reports it.
fn listed(binary: &Path) -> Vec<serde_json::Value> {
    let out = run_ok(Command::new(bin("eventflux-probe")).args(["list", "--json", "--binary"]).arg(binary));
    serde_json::from_slice(&out.stdout).expect("list JSON")
}

/// The semaphore file offset of probe `name` in `binary`, as `eventflux-probe list --json`
/// reports it.
pub fn semaphore_offset(binary: &Path, name: &str) -> u64 {
    Semaphores::of(binary).offset(name)
}

/// Reads a process's 16-bit USDT semaphore through /proc/PID/mem (read only).
pub fn read_semaphore(pid: u32, binary: &Path, file_offset: u64) -> u16 {
    Writable::of(pid, binary).read(file_offset)
}

/// The writable mappings of `binary` in a process, where its semaphores are.
struct Writable<'a> {
    pid: u32,
    binary: &'a Path,
    mem: std::fs::File,
    /// (start address, end address, file offset)
    ranges: Vec<(u64, u64, u64)>,
}

impl<'a> Writable<'a> {
    fn of(pid: u32, binary: &'a Path) -> Writable<'a> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
        let canon = std::fs::canonicalize(binary).expect("canonicalize");
        let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
        let ranges = maps
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<&str>>())
            // The semaphore is in a writable mapping; a read-only one (RELRO) may cover the same
            // file offset with the file's original bytes.
            .filter(|f| f.len() >= 6 && Path::new(f[5]) == canon && f[1].contains('w'))
            .map(|f| {
                let (start, end) = f[0].split_once('-').expect("range");
                (hex(start), hex(end), hex(f[2]))
            })
            .collect();
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
        Writable { pid, binary, mem, ranges }
    }

    fn read(&self, file_offset: u64) -> u16 {
        use std::os::unix::fs::FileExt;
        let Some(&(start, _, off)) =
            self.ranges.iter().find(|(start, end, off)| file_offset >= *off && file_offset + 2 <= off + (end - start))
        else {
            panic!(
                "no mapping of {} in process {} covers file offset {file_offset:#x}",
                self.binary.display(),
                self.pid
            );
        };
        let mut buf = [0u8; 2];
        self.mem.read_exact_at(&mut buf, start + file_offset - off).expect("read mem");
        u16::from_le_bytes(buf)
    }
}

/// The semaphores of a binary's probes, by probe name (as `eventflux-probe list --json` finds
/// them; every site of a probe shares its one semaphore).
pub struct Semaphores {
    binary: PathBuf,
    offsets: BTreeMap<String, u64>,
}

impl Semaphores {
    pub fn of(binary: &Path) -> Semaphores {
        let offsets = listed(binary)
            .iter()
            .filter_map(|n| Some((n["name"].as_str()?.to_owned(), n["semaphore_offset"].as_u64()?)))
            .collect();
        Semaphores { binary: binary.to_path_buf(), offsets }
    }

    /// Every probe that has a semaphore.
    pub fn probes(&self) -> impl Iterator<Item = &str> {
        self.offsets.keys().map(String::as_str)
    }

    /// The file offset of probe `name`'s semaphore.
    pub fn offset(&self, name: &str) -> u64 {
        *self.offsets.get(name).unwrap_or_else(|| panic!("{} has no semaphore of {name}", self.binary.display()))
    }

    /// Probe `name`'s semaphore in process `pid`: how many observers are attached to it.
    pub fn value(&self, pid: u32, name: &str) -> u16 {
        read_semaphore(pid, &self.binary, self.offset(name))
    }

    /// The probes whose semaphore process `pid` has raised: those an observer is attached to.
    pub fn raised(&self, pid: u32) -> BTreeSet<String> {
        let process = Writable::of(pid, &self.binary);
        self.offsets.iter().filter(|(_, off)| process.read(**off) > 0).map(|(name, _)| name.clone()).collect()
    }

    /// Waits until `pred` holds of the probes process `pid` has raised (`observer`, started to
    /// attach to it, has attached), and returns them; fails the test if `observer` exits first
    /// or after `limit`.
    pub fn wait_raised(
        &self,
        pid: u32,
        observer: &mut Child,
        limit: Duration,
        pred: impl Fn(&BTreeSet<String>) -> bool,
    ) -> BTreeSet<String> {
        let deadline = Instant::now() + limit;
        loop {
            let raised = self.raised(pid);
            if pred(&raised) {
                return raised;
            }
            if let Some(status) = observer.try_wait().expect("try_wait") {
                panic!("the observer exited ({status}) before it attached; raised: {raised:?}");
            }
            assert!(Instant::now() < deadline, "not attached within {limit:?}; raised: {raised:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every probe of `probes` is raised in process `pid`: see [`Self::wait_raised`].
    pub fn wait_attached(&self, pid: u32, observer: &mut Child, limit: Duration, probes: &[&str]) {
        self.wait_raised(pid, observer, limit, |raised| probes.iter().all(|p| raised.contains(*p)));
    }
}
