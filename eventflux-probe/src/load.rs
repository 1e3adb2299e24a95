//! Loading the uprobe programs for `uprobe_multi` links, which aya 0.14 cannot do.
//!
//! The model: a uprobe attached through a perf event (aya's way, and [`attach::attach`]) is
//! unregistered when its event closes, under a kernel-wide mutex and with RCU grace periods
//! waited for each one: ~0.1 s per site, one after another whatever the number of threads
//! closing (2.4 s for the demo's 22 sites; minutes for a node observer with 100 targets, past
//! the DaemonSet's grace period). A `uprobe_multi` BPF link (Linux 6.6) holds many uprobes of
//! one file and unregisters all of them with one wait, and links closed from several threads
//! share their waits (measured on Linux 6.18, two busy cores: 1,500 links closed in 1.8 s
//! from 64 threads; 44 ms each one after another). See [`attach::attach_multi`].
//!
//! The kernel accepts a program in such a link only if it was loaded for it (expected attach
//! type `BPF_TRACE_UPROBE_MULTI`); aya 0.14 loads uprobe programs without an attach type, and
//! the aya that can (0.15) needs a newer Rust than ours. So the object is parsed again with
//! aya-obj (aya's own parser), its map references resolved to the maps aya created (so both
//! loaders share every map, the read-only globals aya set included) and its calls linked, and
//! each uprobe program is loaded here. Programs of other kinds (`cpu_sample`) stay aya's.
//!
//! On a kernel without `uprobe_multi` (before 6.6), [`probe_kernel`] says so and the caller
//! attaches through perf events instead.
//!
//! [`attach::attach`]: crate::attach::attach
//! [`attach::attach_multi`]: crate::attach::attach_multi

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, anyhow};
use aya::maps::Map;
use aya_obj::generated::{bpf_insn, bpf_prog_info};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
/// `BPF_TRACE_UPROBE_MULTI` of `enum bpf_attach_type`.
pub const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_OBJ_NAME_LEN: usize = 16;
/// Verifier log kept for an error message when a program is rejected.
const LOG_SIZE: usize = 1 << 20;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type` (the kernel zero-fills
/// what a shorter attribute leaves out).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; BPF_OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> io::Result<i64> {
    // SAFETY: every caller passes a bpf_attr of the given size for `cmd`, whose pointers (if
    // any) are valid for the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as u32) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// Loads `insns` as a uprobe program for `uprobe_multi` links. On a verifier rejection the
/// error carries the verifier's log.
fn prog_load(name: &str, insns: &[bpf_insn], license: &CString) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; BPF_OBJ_NAME_LEN];
    // The kernel keeps 15 bytes of a name and refuses a longer one.
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(BPF_OBJ_NAME_LEN - 1)) {
        *dst = if src.is_ascii_alphanumeric() || src == b'_' || src == b'.' { src } else { b'_' };
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI,
        ..ProgLoadAttr::default()
    };
    let attr_ptr = |a: &ProgLoadAttr| a as *const ProgLoadAttr as *const libc::c_void;
    match bpf(BPF_PROG_LOAD, attr_ptr(&attr), size_of::<ProgLoadAttr>()) {
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EINVAL) => {
            // Again with the verifier's log, for the message (the first try costs no log).
            let mut log = vec![0u8; LOG_SIZE];
            attr.log_level = 1;
            attr.log_size = LOG_SIZE as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match bpf(BPF_PROG_LOAD, attr_ptr(&attr), size_of::<ProgLoadAttr>()) {
                // SAFETY: as above.
                Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
                Err(_) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let tail: Vec<&str> = text.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    Err(io::Error::new(e.kind(), format!("{e}\n{}", tail.join("\n"))))
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether this kernel loads programs for `uprobe_multi` links (Linux 6.6 and later): a
/// two-instruction program, loaded and dropped.
pub fn probe_kernel() -> io::Result<()> {
    let insn = |code: u8| {
        // SAFETY: bpf_insn is integers only; all zero is `r0 = r0` of class 0 until `code` is set.
        let mut insn: bpf_insn = unsafe { std::mem::zeroed() };
        insn.code = code;
        insn
    };
    // r0 = 0 (BPF_ALU64 | BPF_MOV | BPF_K, registers and immediate zero); exit.
    let (mov, exit) = (insn(0xb7), insn(0x95));
    prog_load("uprobe_multi_probe", &[mov, exit], &CString::from(c"GPL")).map(drop)
}

/// The object's programs, relocated against the maps of a loaded [`aya::Ebpf`], ready to load
/// for `uprobe_multi` links.
pub struct Programs {
    object: aya_obj::Object,
}

impl Programs {
    /// Parses `object` and resolves its map references to `ebpf`'s maps (which must all still
    /// be in `ebpf`: call before taking any).
    pub fn relocate(object: &[u8], ebpf: &aya::Ebpf) -> Result<Programs> {
        let mut object = aya_obj::Object::parse(object).context("cannot parse the eBPF object")?;
        if object.has_btf_relocations() {
            // Ours has none (pt_regs is read at fixed offsets, args.rs); a CO-RE relocation
            // would need the kernel's BTF applied as aya does, which this loader does not do.
            return Err(anyhow!("the eBPF object has BTF (CO-RE) relocations, which this loader does not apply"));
        }
        // Copied out: the object is relocated in place while the iterator borrows them.
        let maps: Vec<(String, i32, aya_obj::Map)> = object
            .maps
            .iter()
            .map(|(name, map)| {
                let created = ebpf.map(name).ok_or_else(|| anyhow!("aya created no map {name}"))?;
                let fd = map_fd(created).ok_or_else(|| anyhow!("map {name} is of an unexpected type"))?;
                Ok((name.clone(), fd, map.clone()))
            })
            .collect::<Result<_>>()?;
        let text: HashSet<usize> = object.functions.keys().map(|(section, _)| *section).collect();
        object
            .relocate_maps(maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)), &text)
            .context("cannot relocate the eBPF object's map references")?;
        object.relocate_calls(&text).context("cannot link the eBPF object's calls")?;
        Ok(Programs { object })
    }

    /// Loads program `name` for `uprobe_multi` links.
    pub fn load(&self, name: &str) -> Result<OwnedFd> {
        let program = self.object.programs.get(name).ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        let function = self
            .object
            .functions
            .get(&program.function_key())
            .ok_or_else(|| anyhow!("the eBPF object has no code for program {name}"))?;
        prog_load(name, &function.instructions, &program.license).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied && e.raw_os_error() == Some(libc::EPERM) {
                anyhow!("not permitted to load eBPF program {name}: {e}")
            } else {
                anyhow!("the kernel rejected eBPF program {name}: {e}")
            }
        })
    }
}

/// The descriptor of an aya map, whatever its kind: the variants in use here.
fn map_fd(map: &Map) -> Option<i32> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// What the kernel says of a loaded program.
#[derive(Debug, Clone, Copy)]
pub struct ProgInfo {
    /// Runs and time spent in them, since load (counted while `kernel.bpf_stats_enabled`).
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Instructions the kernel kept after verifying it.
    pub xlated_insns: u32,
}

/// [`ProgInfo`] of the program `fd` (aya's or ours alike).
pub fn prog_info(fd: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    // SAFETY: bpf_prog_info is plain integers and pointers the kernel fills only when asked
    // (all zero here: no arrays requested), so all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr as *const libc::c_void, size_of::<InfoAttr>())?;
    Ok(ProgInfo { run_count: info.run_cnt, run_time_ns: info.run_time_ns, xlated_insns: info.xlated_prog_len / 8 })
}
