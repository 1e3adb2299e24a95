//! Before a uprobe goes on a probe site: is the instruction there really a `nop`?
//!
//! A note is only a claim. The kernel believes it: it writes a breakpoint (or, on a 5-byte nop,
//! a call into its uprobe trampoline) at the note's address and emulates whatever instruction
//! it finds in the file there. A note that points into the middle of an instruction — a stale
//! note after a post-link optimizer moved the code, a file overwritten in place, a third-party
//! note written by hand — so corrupts the engine's code, and the engine dies of a SIGSEGV or
//! SIGILL a moment after an observer attaches. bpftrace and libbpf attach regardless; we do not.
//!
//! The model, one site at a time:
//! - The file must hold, at the site's offset, the instruction the provider promises: for
//!   `eventflux` the ABI's `nopl 0(%rax,%rax,1)` (docs/probes.md), for any other provider a
//!   `nop` of one of the forms compilers and assemblers emit (`90`, `66 90`, `[66|2e]* 0f 1f /0`).
//!   The kernel copies the instruction it emulates from the file's page cache, so this is what
//!   executes in the process while the probe is attached.
//! - The process's own memory at that address, read through `/proc/PID/mem` from the mapping of
//!   the same file that covers the offset, must hold that same instruction, or it as a uprobe
//!   already left it: its first byte an `int3` and the rest unchanged (another tool attached
//!   first), or a `call` into the `[uprobes-trampoline]` mapping in place of a 5-byte nop (the
//!   kernel's optimized uprobe). Code the process changed in memory (a debugger's patch, a
//!   hot-patcher) or a mapping that is not the file's is refused.
//! - A semaphore must lie in a private writable mapping of the same file in the process — the
//!   only place the kernel's reference counter may add to without writing over something else.
//!
//! A refused site is not attached; the caller attaches the others, says which one it refused
//! and why (the bytes found, in hex), and counts it.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::UsdtNote;
use super::process::Mapping;

/// The instruction every `eventflux` site is: `nopl 0(%rax,%rax,1)`.
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// The longest x86-64 instruction; what is read at a site.
const MAX_INSN: usize = 15;

/// Bytes named in a refusal: enough to recognise an instruction.
const SHOWN: usize = 8;

/// The name `/proc/PID/maps` gives the page the kernel's optimized uprobes call into.
const TRAMPOLINE: &str = "[uprobes-trampoline]";

/// Why a site is not attached. Each names what was found, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The file does not hold the promised instruction at the site.
    #[error("the file holds {found} at the site, not {wanted} (a stale or corrupt note)")]
    FileNotNop { found: Hex, wanted: &'static str },
    /// The process's memory holds something else than the file's nop.
    #[error("the process has {found} at {address:#x}, not the file's {file} (code changed in memory)")]
    MemoryDiffers { address: u64, found: Hex, file: Hex },
    /// No mapping of the file covers the site, or it is not executable.
    #[error("file offset {offset:#x} is not in an executable mapping of the file in the process")]
    NotMapped { offset: u64 },
    /// The semaphore is not in a private writable mapping of the file.
    #[error("semaphore at file offset {offset:#x} is not in a writable mapping of the file in the process")]
    Semaphore { offset: u64 },
    /// The bytes could not be read.
    #[error("cannot read {what}: {reason}")]
    Unreadable { what: String, reason: String },
}

/// Bytes as `0f 1f 44 00 00`, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Hex {
    /// The first few of `bytes`.
    fn of(bytes: &[u8]) -> Hex {
        Hex(bytes[..bytes.len().min(SHOWN)].to_vec())
    }
}

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no bytes");
        }
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Length of the `nop` at the start of `code`, if it starts with one of the forms compilers and
/// assemblers emit: `90`, `66 90`, and `0f 1f /0` (`nopw`/`nopl` with any memory or register
/// operand) behind `66` or `2e` prefixes.
pub fn nop_len(code: &[u8]) -> Option<usize> {
    match code {
        [0x90, ..] => return Some(1),
        [0x66, 0x90, ..] => return Some(2),
        _ => {}
    }
    let prefixes = code.iter().take_while(|b| matches!(b, 0x66 | 0x2e)).count();
    let rest = &code[prefixes..];
    let [0x0f, 0x1f, modrm, tail @ ..] = rest else { return None };
    if (modrm >> 3) & 7 != 0 {
        return None;
    }
    let (mode, rm) = (modrm >> 6, modrm & 7);
    let sib = mode != 3 && rm == 4;
    let disp = match mode {
        0 if rm == 5 => 4,
        0 if sib => match tail.first() {
            Some(s) if s & 7 == 5 => 4,
            Some(_) => 0,
            None => return None,
        },
        1 => 1,
        2 => 4,
        _ => 0,
    };
    let len = prefixes + 3 + usize::from(sib) + disp;
    (len <= code.len() && len <= MAX_INSN).then_some(len)
}

/// Whether `code` starts with the instruction `provider` promises; its length if so.
fn promised(provider: &str, code: &[u8]) -> Option<usize> {
    if provider == eventflux_abi::PROVIDER { code.starts_with(&NOP5).then_some(NOP5.len()) } else { nop_len(code) }
}

fn wanted(provider: &str) -> &'static str {
    if provider == eventflux_abi::PROVIDER { "the ABI's nop (0f 1f 44 00 00)" } else { "a nop" }
}

/// Checks the file alone: what `list --binary` can say without a process.
pub fn check_file(path: &Path, note: &UsdtNote) -> Result<(), Refusal> {
    let file = read_at(path, note.offset, MAX_INSN)?;
    promised(&note.provider, &file)
        .map(|_| ())
        .ok_or_else(|| Refusal::FileNotNop { found: Hex::of(&file), wanted: wanted(&note.provider) })
}

/// A running process's mappings and memory, to check sites against.
pub struct ProcessImage {
    pid: u32,
    maps: Vec<Mapping>,
    mem: File,
}

impl ProcessImage {
    /// Reads process `pid`'s mappings and opens its memory (root or CAP_SYS_PTRACE).
    pub fn open(pid: u32) -> anyhow::Result<ProcessImage> {
        let maps = super::process::mappings(pid)
            .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/maps to check the probe sites: {e}"))?;
        let mem = File::open(format!("/proc/{pid}/mem"))
            .map_err(|e| anyhow::anyhow!("cannot open /proc/{pid}/mem to check the probe sites: {e}"))?;
        Ok(ProcessImage { pid, maps, mem })
    }

    /// Checks `note`, a site of `binary` (its path as the maps name it, `opened_at` where we
    /// read it), in this process: see the module docs.
    pub fn check(&self, binary: &Path, opened_at: &Path, note: &UsdtNote) -> Result<(), Refusal> {
        let name = binary.to_string_lossy();
        let of_file = || self.maps.iter().filter(|m| m.path == name);
        let file = read_at(opened_at, note.offset, MAX_INSN)?;
        let len = promised(&note.provider, &file)
            .ok_or_else(|| Refusal::FileNotNop { found: Hex::of(&file), wanted: wanted(&note.provider) })?;
        let address = of_file()
            .filter(|m| m.perms[2] == b'x')
            .find_map(|m| m.address_of(note.offset, len as u64))
            .ok_or(Refusal::NotMapped { offset: note.offset })?;
        let mut mem = vec![0; len];
        self.mem.read_exact_at(&mut mem, address).map_err(|e| Refusal::Unreadable {
            what: format!("process {}'s memory at {address:#x}", self.pid),
            reason: e.to_string(),
        })?;
        if !self.as_file_or_probed(&mem, &file[..len], address) {
            return Err(Refusal::MemoryDiffers { address, found: Hex(mem), file: Hex(file[..len].to_vec()) });
        }
        if let Some(offset) = note.semaphore_offset {
            let writable = |m: &&Mapping| m.perms[1] == b'w' && m.perms[3] == b'p';
            if !of_file().filter(writable).any(|m| m.address_of(offset, 2).is_some()) {
                return Err(Refusal::Semaphore { offset });
            }
        }
        Ok(())
    }

    /// Whether `mem` is the file's nop `file`, or that nop as a uprobe leaves it.
    fn as_file_or_probed(&self, mem: &[u8], file: &[u8], address: u64) -> bool {
        match mem {
            _ if mem == file => true,
            // A breakpoint on the first byte, the rest untouched.
            [0xcc, rest @ ..] => rest == &file[1..],
            // The kernel's optimized uprobe: a call into its trampoline page in place of a nop5.
            [0xe8, a, b, c, d] if file.len() == 5 => {
                let target =
                    address.wrapping_add(5).wrapping_add_signed(i64::from(i32::from_le_bytes([*a, *b, *c, *d])));
                self.maps.iter().any(|m| m.path == TRAMPOLINE && (m.start..m.end).contains(&target))
            }
            _ => false,
        }
    }
}

/// Up to `len` bytes of `path` at `offset` (fewer at the end of the file).
fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, Refusal> {
    let unreadable =
        |e: std::io::Error| Refusal::Unreadable { what: path.display().to_string(), reason: e.to_string() };
    let file = File::open(path).map_err(unreadable)?;
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// A site left unattached because its code is not what its note promised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusedSite {
    pub pid: u32,
    pub binary: std::path::PathBuf,
    /// `provider:name`.
    pub probe: String,
    /// File offset of the site.
    pub offset: u64,
    /// Why, with the bytes found.
    pub reason: String,
}

impl std::fmt::Display for RefusedSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} at {:#x} in process {}: {}",
            self.binary.display(),
            self.probe,
            self.offset,
            self.pid,
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_the_nops_assemblers_emit() {
        // GNU as's and LLVM's padding nops, 1 to 11 bytes.
        let nops: &[&[u8]] = &[
            &[0x90],
            &[0x66, 0x90],
            &[0x0f, 0x1f, 0x00],
            &[0x0f, 0x1f, 0x40, 0x00],
            &NOP5,
            &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
            &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x0f, 0x1f, 0xc0],
        ];
        for nop in nops {
            let mut code = nop.to_vec();
            code.extend_from_slice(&[0xc3, 0xcc]);
            assert_eq!(nop_len(&code), Some(nop.len()), "{}", Hex(nop.to_vec()));
        }
    }

    #[test]
    fn refuses_what_is_not_a_nop() {
        // The middle of the ABI's nop (pc + 2), a call, a push, `nopl` with reg ≠ 0 (that is
        // `0f 1f /1`, not a nop), a truncated nop, nothing.
        for code in [
            &[0x44, 0x00, 0x00, 0x48][..],
            &[0xe8, 0, 0, 0, 0],
            &[0x55],
            &[0x0f, 0x1f, 0x48, 0x00],
            &[0x0f, 0x1f, 0x44, 0x00],
            &[],
        ] {
            assert_eq!(nop_len(code), None, "{}", Hex(code.to_vec()));
        }
        assert_eq!(promised("eventflux", &[0x90, 0x90, 0x90, 0x90, 0x90]), None, "the ABI promises a nop5");
        assert_eq!(promised("other", &[0x90]), Some(1));
    }
}
