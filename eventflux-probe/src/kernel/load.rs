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
//! On a kernel without `uprobe_multi` (before 6.6), or with the first version of its pid
//! filter (6.6 to 6.9: the target's main thread only), [`probe_kernel`] says so and the caller
//! attaches through perf events instead.
//!
//! [`attach::attach`]: crate::kernel::attach::attach
//! [`attach::attach_multi`]: super::attach::attach_multi

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

/// A program the kernel did not load: its error (errno kept), and the verifier's log when it
/// rejected the program.
#[derive(Debug)]
pub struct LoadError {
    pub error: io::Error,
    pub verifier_log: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        if !self.verifier_log.is_empty() {
            write!(f, "\n{}", self.verifier_log)?;
        }
        Ok(())
    }
}

impl LoadError {
    /// EPERM: a capability (or a security module) is missing, not a bad program.
    pub fn is_permission(&self) -> bool {
        self.error.raw_os_error() == Some(libc::EPERM)
    }
}

/// Loads `insns` as a uprobe program for `uprobe_multi` links, with the verifier's reasoning
/// in full when `verbose`.
fn prog_load(name: &str, insns: &[bpf_insn], license: &CString, verbose: bool) -> Result<OwnedFd, LoadError> {
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
        expected_attach_type: super::attach::BPF_TRACE_UPROBE_MULTI,
        ..ProgLoadAttr::default()
    };
    let load = |attr: &ProgLoadAttr| {
        // SAFETY: a BPF_PROG_LOAD attribute of the size passed; the instructions, license,
        // name and log buffer it points to outlive the call.
        let fd = unsafe {
            crate::sys::bpf(
                BPF_PROG_LOAD,
                attr as *const ProgLoadAttr as *const libc::c_void,
                size_of::<ProgLoadAttr>(),
            )
        }?;
        // SAFETY: the kernel just returned this descriptor to us.
        Ok::<_, io::Error>(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    let first = if verbose { Err(io::Error::from_raw_os_error(libc::EACCES)) } else { load(&attr) };
    match first {
        Ok(fd) => Ok(fd),
        // A verifier rejection (EACCES) or a malformed program (EINVAL): again with the
        // verifier's log, for the message (the first try costs no log).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EINVAL)) => {
            let mut log = vec![0u8; LOG_SIZE];
            attr.log_level = if verbose { 2 } else { 1 };
            attr.log_size = LOG_SIZE as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match load(&attr) {
                Ok(fd) => Ok(fd),
                Err(error) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let lines: Vec<&str> = text.lines().collect();
                    let keep = if verbose { lines.len() } else { 20 };
                    let verifier_log = lines[lines.len().saturating_sub(keep)..].join("\n");
                    Err(LoadError { error, verifier_log })
                }
            }
        }
        Err(error) => Err(LoadError { error, verifier_log: String::new() }),
    }
}

/// Why `uprobe_multi` links are not used.
#[derive(Debug)]
pub enum Unsupported {
    /// Not permitted to find out (EPERM): a capability is missing.
    Permission(io::Error),
    /// The kernel has no such links, or has them with a pid filter that lets only the
    /// target's main thread through (Linux 6.6 to 6.9, before "bpf: fix multi-uprobe PID
    /// filtering logic").
    Kernel(String),
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsupported::Permission(e) => write!(f, "not permitted to load a BPF program: {e}"),
            Unsupported::Kernel(why) => f.write_str(why),
        }
    }
}

/// Whether this kernel has `uprobe_multi` links whose pid filter filters by process: libbpf's
/// test, as its USDT attach makes it. A two-instruction program loaded for such links, then two
/// links the kernel must refuse for the right reason: to the directory `/` (EBADF: the kernel
/// got as far as the file, so it knows the link type), and with pid -1 (EINVAL from the early
/// pid check that came with the process-wide filter; a kernel that filters by thread goes on
/// to look the pid up instead).
pub fn probe_kernel() -> Result<(), Unsupported> {
    let insn = |code: u8| {
        // SAFETY: bpf_insn is integers only, all of them zero a valid value; `code` is set next.
        let mut insn: bpf_insn = unsafe { std::mem::zeroed() };
        insn.code = code;
        insn
    };
    // r0 = 0 (BPF_ALU64 | BPF_MOV | BPF_K, registers and immediate zero); exit.
    let (mov, exit) = (insn(0xb7), insn(0x95));
    let program = prog_load("uprobe_multi_probe", &[mov, exit], &CString::from(c"GPL"), false).map_err(|e| {
        if e.is_permission() {
            Unsupported::Permission(e.error)
        } else {
            Unsupported::Kernel(format!("no programs for uprobe_multi links: {}", e.error))
        }
    })?;
    let site = [super::attach::MultiSite { offset: 0, semaphore_offset: None, cookie: 0 }];
    let root = std::path::Path::new("/");
    match super::attach::attach_multi(program.as_fd(), root, 0, &site) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => return Err(Unsupported::Permission(e)),
        Err(e) => return Err(Unsupported::Kernel(format!("no uprobe_multi links (BPF_LINK_CREATE: {e})"))),
        Ok(_) => return Err(Unsupported::Kernel("uprobe_multi links attach to a directory".into())),
    }
    match super::attach::attach_multi(program.as_fd(), root, u32::MAX, &site) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        _ => Err(Unsupported::Kernel(
            "uprobe_multi links filter by thread, not process (fixed in Linux 6.10 and its stable kernels)".into(),
        )),
    }
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
            return Err(anyhow!(
                "the eBPF object has BTF (CO-RE) relocations, which this loader does not apply (EVENTFLUX_PROBE_ATTACH=perf loads it through aya)"
            ));
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

    /// Loads program `name` for `uprobe_multi` links (the verifier's whole reasoning in the
    /// error when `verbose`).
    ///
    /// The relocated instructions name aya's map descriptors by number: load only while
    /// every map is still in the [`aya::Ebpf`] (the caller drops this once it takes one).
    pub fn load(&self, name: &str, verbose: bool) -> Result<OwnedFd> {
        let program = self.object.programs.get(name).ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        let function = self
            .object
            .functions
            .get(&program.function_key())
            .ok_or_else(|| anyhow!("the eBPF object has no code for program {name}"))?;
        prog_load(name, &function.instructions, &program.license, verbose).map_err(|e| {
            if e.is_permission() {
                anyhow!(
                    "not permitted to load eBPF program {name}: {} (grant CAP_BPF and CAP_PERFMON, or run as root)",
                    e.error
                )
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
    // SAFETY: a BPF_OBJ_GET_INFO_BY_FD attribute of the size passed, pointing at `info`, which
    // is `info_len` bytes and outlives the call.
    unsafe {
        crate::sys::bpf(BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr as *const libc::c_void, size_of::<InfoAttr>())
    }?;
    Ok(ProgInfo { run_count: info.run_cnt, run_time_ns: info.run_time_ns, xlated_insns: info.xlated_prog_len / 8 })
}
