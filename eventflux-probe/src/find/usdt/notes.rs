//! Reading SystemTap v3 probe notes (`.note.stapsdt`, type 3, owner "stapsdt") from an ELF file.
//!
//! A note's description is three addresses — the probe site, the link-time address of
//! `.stapsdt.base`, the semaphore (0 if none) — followed by provider, name and argument spec as
//! NUL-terminated strings. Addresses are link-time virtual addresses: if the file was prelinked,
//! `.stapsdt.base` moved and every address moves with it. Uprobes want file offsets, found
//! through the loadable segment that contains each address.

use std::ops::Range;

use object::Endianness;
use object::elf::{FileHeader64, PF_W, PF_X, PT_LOAD, SHT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use serde::Serialize;

use super::argspec::{self, ArgSpec};

/// Note type of a SystemTap v3 probe descriptor.
pub const NT_STAPSDT: u32 = 3;

/// One probe site, as its note describes it and as a uprobe needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsdtNote {
    /// Provider, e.g. `eventflux`.
    pub provider: String,
    /// Probe name, e.g. `ingest`.
    pub name: String,
    /// Virtual address of the probe's `nop`, adjusted for prelinking.
    pub pc: u64,
    /// File offset of the `nop`: what a uprobe attaches to.
    pub offset: u64,
    /// Virtual address of the semaphore, 0 if the probe has none.
    pub semaphore: u64,
    /// File offset of the semaphore (uprobe `ref_ctr_offset`), if the probe has one.
    pub semaphore_offset: Option<u64>,
    /// The argument spec string as written in the note.
    pub args: String,
    /// The same, parsed; `None` if a form is not understood (see `arg_error`). Such a probe is
    /// listed but cannot be attached to with arguments.
    pub arg_specs: Option<Vec<ArgSpec>>,
    /// Why `args` could not be parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arg_error: Option<String>,
    /// The raw addresses in the note, for comparison with `readelf -n`.
    pub raw: RawAddresses,
}

/// The three addresses exactly as stored in the note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RawAddresses {
    /// Location (probe site).
    pub pc: u64,
    /// Link-time address of `.stapsdt.base`.
    pub base: u64,
    /// Semaphore address.
    pub semaphore: u64,
}

/// A note that was read but cannot be attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedNote {
    /// `provider:name`.
    pub probe: String,
    /// Why.
    pub reason: String,
}

/// Every probe note of one file.
#[derive(Debug, Clone, Default)]
pub struct Notes {
    /// Attachable probe sites, in note order.
    pub notes: Vec<UsdtNote>,
    /// Well-formed notes whose site is not in the file's code, e.g. in a function the linker
    /// garbage-collected (the note survives, pointing nowhere).
    pub skipped: Vec<SkippedNote>,
}

/// Why a file's notes could not be read. Each names the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    /// Not an ELF file at all.
    #[error("not an ELF file")]
    NotElf,
    /// An ELF file of a kind we do not read.
    #[error("unsupported ELF file: {0} (only 64-bit little-endian x86-64 is supported)")]
    Unsupported(&'static str),
    /// Headers or tables that cannot be read.
    #[error("corrupt ELF file: {0}")]
    Corrupt(String),
    /// A stapsdt note that cannot be read.
    #[error("malformed stapsdt note #{index} at file offset {offset:#x}: {reason}")]
    Malformed {
        /// Zero-based index among the file's stapsdt notes.
        index: usize,
        /// File offset of the note section.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

struct Segment {
    vaddr: Range<u64>,
    file_offset: u64,
    file_size: u64,
    executable: bool,
    writable: bool,
}

impl Segment {
    /// The file offset of `len` bytes at `addr`, if they are stored in the file.
    fn file_offset_of(&self, addr: u64, len: u64) -> Option<u64> {
        let rel = addr.checked_sub(self.vaddr.start)?;
        (rel.checked_add(len)? <= self.file_size).then_some(self.file_offset + rel)
    }
}

/// Reads every stapsdt note of an ELF image.
pub fn parse(data: &[u8]) -> Result<Notes, NoteError> {
    if data.get(..4) != Some(&object::elf::ELFMAG[..]) {
        return Err(NoteError::NotElf);
    }
    match data.get(4) {
        Some(&object::elf::ELFCLASS64) => {}
        Some(&object::elf::ELFCLASS32) => return Err(NoteError::Unsupported("32-bit")),
        _ => return Err(NoteError::Corrupt("bad ELF class".into())),
    }
    let header = FileHeader64::<Endianness>::parse(data).map_err(|e| NoteError::Corrupt(e.to_string()))?;
    let endian = header.endian().map_err(|e| NoteError::Corrupt(e.to_string()))?;
    if endian != Endianness::Little {
        return Err(NoteError::Unsupported("big-endian"));
    }
    let corrupt = |e: object::read::Error| NoteError::Corrupt(e.to_string());
    let segments: Vec<Segment> = header
        .program_headers(endian, data)
        .map_err(corrupt)?
        .iter()
        .filter(|p| p.p_type(endian) == PT_LOAD)
        .map(|p| Segment {
            vaddr: p.p_vaddr(endian)..p.p_vaddr(endian).saturating_add(p.p_memsz(endian)),
            file_offset: p.p_offset(endian),
            file_size: p.p_filesz(endian),
            executable: p.p_flags(endian) & PF_X != 0,
            writable: p.p_flags(endian) & PF_W != 0,
        })
        .collect();
    let sections = header.sections(endian, data).map_err(corrupt)?;
    let base_section = sections
        .iter()
        .find(|s| sections.section_name(endian, s).ok() == Some(&b".stapsdt.base"[..]))
        .map(|s| s.sh_addr(endian));

    let mut out = Notes::default();
    let mut index = 0;
    for section in sections.iter() {
        if section.sh_type(endian) != SHT_NOTE
            || sections.section_name(endian, section).ok() != Some(&b".note.stapsdt"[..])
        {
            continue;
        }
        let section_offset = section.sh_offset(endian);
        let malformed = |index: usize, reason: String| NoteError::Malformed { index, offset: section_offset, reason };
        let mut iter = match section.notes(endian, data) {
            Ok(Some(iter)) => iter,
            Ok(None) => continue,
            Err(e) => return Err(malformed(index, e.to_string())),
        };
        loop {
            let note = match iter.next() {
                Ok(Some(note)) => note,
                Ok(None) => break,
                Err(e) => return Err(malformed(index, e.to_string())),
            };
            if note.name() != b"stapsdt" || note.n_type(endian) != NT_STAPSDT {
                continue;
            }
            let desc = parse_desc(note.desc()).map_err(|reason| malformed(index, reason))?;
            resolve(desc, base_section, &segments, &mut out);
            index += 1;
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct Desc {
    raw: RawAddresses,
    provider: String,
    name: String,
    args: String,
}

fn parse_desc(desc: &[u8]) -> Result<Desc, String> {
    if desc.len() < 24 {
        return Err(format!("description is {} bytes, shorter than its three addresses", desc.len()));
    }
    let addr = |i: usize| -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&desc[i * 8..i * 8 + 8]);
        u64::from_le_bytes(word)
    };
    let raw = RawAddresses { pc: addr(0), base: addr(1), semaphore: addr(2) };
    let mut strings = desc[24..].split(|b| *b == 0);
    let mut next = |what: &str| -> Result<String, String> {
        let bytes = strings.next().ok_or_else(|| format!("{what} is missing"))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    };
    let provider = next("provider")?;
    let name = next("probe name")?;
    let args = next("argument spec")?;
    // split() yields the text after the last NUL too: a string that was never terminated shows
    // up as a non-empty remainder with no NUL after it.
    let terminated = desc[24..].iter().filter(|b| **b == 0).count() >= 3;
    if !terminated {
        return Err("strings are not NUL-terminated".into());
    }
    if provider.is_empty() || name.is_empty() {
        return Err("empty provider or probe name".into());
    }
    Ok(Desc { raw, provider, name, args })
}

fn resolve(desc: Desc, base_section: Option<u64>, segments: &[Segment], out: &mut Notes) {
    let (arg_specs, arg_error) = match argspec::parse_args(&desc.args) {
        Ok(specs) => (Some(specs), None),
        Err(e) => (None, Some(e.to_string())),
    };
    // Prelink moved the file by (section address - address recorded at link time).
    let shift = match base_section {
        Some(actual) if desc.raw.base != 0 => actual.wrapping_sub(desc.raw.base),
        _ => 0,
    };
    let pc = desc.raw.pc.wrapping_add(shift);
    let semaphore = if desc.raw.semaphore == 0 { 0 } else { desc.raw.semaphore.wrapping_add(shift) };
    let probe = format!("{}:{}", desc.provider, desc.name);
    let Some(offset) = segments.iter().filter(|s| s.executable).find_map(|s| s.file_offset_of(pc, 1)) else {
        out.skipped.push(SkippedNote {
            probe,
            reason: format!(
                "probe site {pc:#x} is not in an executable segment (its function was likely \
                 removed by the linker)"
            ),
        });
        return;
    };
    let semaphore_offset = if semaphore == 0 {
        None
    } else {
        // The kernel adds to the semaphore wherever the note says: only a writable segment
        // is a place where that cannot overwrite code or constants.
        let stored = segments.iter().find_map(|s| Some((s.file_offset_of(semaphore, 2)?, s.writable)));
        match stored {
            Some((off, true)) => Some(off),
            Some((_, false)) => {
                out.skipped.push(SkippedNote {
                    probe,
                    reason: format!("semaphore {semaphore:#x} is not in a writable segment (a corrupt note)"),
                });
                return;
            }
            None => {
                out.skipped.push(SkippedNote {
                    probe,
                    reason: format!(
                        "semaphore {semaphore:#x} is not stored in the file (a .bss semaphore \
                         cannot be counted by the kernel)"
                    ),
                });
                return;
            }
        }
    };
    out.notes.push(UsdtNote {
        provider: desc.provider,
        name: desc.name,
        pc,
        offset,
        semaphore,
        semaphore_offset,
        args: desc.args,
        arg_specs,
        arg_error,
        raw: desc.raw,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_and_short_files() {
        assert!(matches!(parse(b""), Err(NoteError::NotElf)));
        assert!(matches!(parse(b"#!/bin/sh\necho hi\n"), Err(NoteError::NotElf)));
        assert!(matches!(parse(b"\x7fELF\x02\x01"), Err(NoteError::Corrupt(_))));
        assert!(matches!(parse(b"\x7fELF\x01\x01\x01\0"), Err(NoteError::Unsupported(_))));
    }

    #[test]
    fn desc_strings_must_be_terminated() {
        let mut desc = vec![0u8; 24];
        desc.extend_from_slice(b"eventflux\x00ingest\x004@%eax");
        assert!(parse_desc(&desc).unwrap_err().contains("NUL-terminated"));
        desc.push(0);
        let d = parse_desc(&desc).unwrap();
        assert_eq!((d.provider.as_str(), d.name.as_str(), d.args.as_str()), ("eventflux", "ingest", "4@%eax"));
        assert!(parse_desc(&desc[..20]).unwrap_err().contains("shorter"));
    }
}
