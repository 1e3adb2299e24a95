//! Attaching a loaded uprobe program to USDT sites: by file offset, with the semaphore counted
//! by the kernel (uprobe `ref_ctr_offset`) and a BPF cookie naming each site.
//!
//! Two ways, both with a pid filter. Where the kernel has them (Linux 6.6), one `uprobe_multi`
//! BPF link holds all sites of one program in one file of one process ([`attach_multi`]): its
//! uprobes are unregistered together, with one RCU wait, when it closes (why that matters:
//! `load.rs`). Elsewhere, one perf event per site ([`attach`]): aya attaches uprobes but does
//! not expose `ref_ctr_offset`, so the event is opened here (`perf_event_open` on the `uprobe`
//! PMU, offset in config2, path in config1, reference counter offset in bits 32–63 of config)
//! and the program joined to it with `BPF_LINK_CREATE`. Either way the kernel increments the
//! semaphore while the uprobe exists and decrements it when it goes; nothing writes the
//! target's memory. Dropping an [`Attachment`] detaches; [`detach`] drops many at once, in
//! parallel.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Attached sites; dropping it closes the link (and the perf event): detach.
#[derive(Debug)]
pub enum Attachment {
    /// One site, through a perf event.
    Perf { _link: OwnedFd, _perf: OwnedFd },
    /// The sites of one `uprobe_multi` link.
    Multi { _link: OwnedFd },
}

/// Threads closing attachments at once, over all [`detach`] calls of the process (node mode
/// detaches every exited target in a task of its own).
const DETACH_THREADS: usize = 64;

/// Extra threads [`detach`] calls have running now.
static DETACH_EXTRA: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Drops (detaches) `attachments`, from up to 64 threads: each close waits for RCU grace
/// periods (tens of milliseconds on a busy machine), and closes in flight at the same time
/// share them. Perf-event attachments gain little (the kernel serialises them under one
/// mutex); `uprobe_multi` links gain nearly the thread count (`load.rs`). The calling thread
/// closes too, so with every extra thread taken elsewhere this still finishes.
pub fn detach(attachments: Vec<Attachment>) {
    use std::sync::atomic::Ordering;
    const MAX_EXTRA: usize = DETACH_THREADS - 1;
    let wanted = attachments.len().saturating_sub(1);
    let grant = |running: usize| wanted.min(MAX_EXTRA.saturating_sub(running));
    // The closure always returns Some: the update cannot fail.
    let extra = DETACH_EXTRA.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n + grant(n))).map_or(0, grant);
    let queue = std::sync::Mutex::new(attachments);
    let next = || queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
    std::thread::scope(|scope| {
        for _ in 0..extra {
            // A thread that cannot start leaves its share to the others (and to this one).
            let _ = std::thread::Builder::new().name("detach".into()).spawn_scoped(scope, || {
                while let Some(a) = next() {
                    drop(a);
                }
            });
        }
        while let Some(a) = next() {
            drop(a);
        }
    });
    DETACH_EXTRA.fetch_sub(extra, Ordering::AcqRel);
}

/// Type number of the kernel's `uprobe` PMU.
pub fn uprobe_pmu_type() -> io::Result<u32> {
    let text = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")?;
    text.trim().parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("uprobe PMU type: {e}")))
}

/// `struct perf_event_attr` up to `config2`, padded to PERF_ATTR_SIZE_VER5.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    _rest: [u64; 5],
}

const PERF_ATTR_SIZE_VER5: u32 = 112;
const PERF_UPROBE_REF_CTR_OFFSET_SHIFT: u64 = 32;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

/// `union bpf_attr` for `BPF_LINK_CREATE` with a perf event target.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
    _rest: [u64; 6],
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PERF_EVENT: u32 = 41;

/// Where and how to attach.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// The ELF file, as this process can open it.
    pub path: &'a Path,
    /// File offset of the probe's `nop`.
    pub offset: u64,
    /// File offset of the probe's semaphore, if it has one.
    pub semaphore_offset: Option<u64>,
    /// Only this process triggers the probe; `None` for every process mapping the file.
    pub pid: Option<u32>,
    /// Passed to the program as its BPF cookie.
    pub cookie: u64,
}

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Attaches `program` (a loaded uprobe program) at `site`.
pub fn attach(program: BorrowedFd<'_>, pmu_type: u32, site: &Site<'_>) -> io::Result<Attachment> {
    let path = CString::new(site.path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let attr = PerfEventAttr {
        type_: pmu_type,
        size: PERF_ATTR_SIZE_VER5,
        config: site.semaphore_offset.unwrap_or(0) << PERF_UPROBE_REF_CTR_OFFSET_SHIFT,
        config1: path.as_ptr() as u64,
        config2: site.offset,
        ..PerfEventAttr::default()
    };
    let (pid, cpu) = match site.pid {
        Some(pid) => (pid as libc::pid_t, -1),
        None => (-1, 0),
    };
    // SAFETY: attr is a valid perf_event_attr of the size it declares; path outlives the call.
    let perf = unsafe { crate::sys::perf_event_open(&attr, pid, cpu) }
        .map_err(|e| io::Error::new(e.kind(), format!("perf_event_open(uprobe): {e}")))?;

    let link_attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: perf.as_raw_fd() as u32,
        attach_type: BPF_PERF_EVENT,
        bpf_cookie: site.cookie,
        ..LinkCreateAttr::default()
    };
    // SAFETY: a link-create attribute, fully initialised, without pointers.
    let link = unsafe { link_create(&link_attr) }
        .map_err(|e| io::Error::new(e.kind(), format!("bpf(BPF_LINK_CREATE): {e}")))?;
    // SAFETY: an ioctl without arguments on our perf event.
    if unsafe { libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } < 0 {
        return Err(last_error("PERF_EVENT_IOC_ENABLE"));
    }
    Ok(Attachment::Perf { _link: link, _perf: perf })
}

/// `BPF_LINK_CREATE` with `attr`, through the crate's one `bpf()` wrapper (`load.rs`).
///
/// # Safety
/// `attr` is a `union bpf_attr` prefix for `BPF_LINK_CREATE`, and every pointer in it is valid
/// for the call.
unsafe fn link_create<T>(attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: the caller's promise above; `size_of::<T>()` is the size the kernel reads.
    let fd = unsafe { crate::sys::bpf(BPF_LINK_CREATE, attr as *const T as *const libc::c_void, size_of::<T>()) }?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One site of a [`attach_multi`] link.
#[derive(Debug, Clone, Copy)]
pub struct MultiSite {
    /// File offset of the probe's `nop`.
    pub offset: u64,
    /// File offset of the probe's semaphore, if it has one.
    pub semaphore_offset: Option<u64>,
    /// Passed to the program as its BPF cookie.
    pub cookie: u64,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` of a `uprobe_multi` link.
#[repr(C)]
#[derive(Default)]
struct UprobeMultiAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

/// Attaches `program` (loaded for `uprobe_multi`, `load.rs`) to `sites` of the file `path`,
/// triggered by process `pid` only: one link. The error is the kernel's errno as it is.
pub fn attach_multi(program: BorrowedFd<'_>, path: &Path, pid: u32, sites: &[MultiSite]) -> io::Result<Attachment> {
    let path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let offsets: Vec<u64> = sites.iter().map(|s| s.offset).collect();
    // 0 is "no semaphore" to the kernel, as for a single uprobe.
    let ref_ctr_offsets: Vec<u64> = sites.iter().map(|s| s.semaphore_offset.unwrap_or(0)).collect();
    let cookies: Vec<u64> = sites.iter().map(|s| s.cookie).collect();
    let attr = UprobeMultiAttr {
        prog_fd: program.as_raw_fd() as u32,
        attach_type: BPF_TRACE_UPROBE_MULTI,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        ref_ctr_offsets: ref_ctr_offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: sites.len() as u32,
        pid,
        ..UprobeMultiAttr::default()
    };
    // SAFETY: a link-create attribute, fully initialised; the path and the three arrays of
    // `cnt` entries outlive the call. The error is the bare errno: callers tell its kinds
    // apart (`load::probe_kernel`) and name the call.
    Ok(Attachment::Multi { _link: unsafe { link_create(&attr) }? })
}

/// `BPF_TRACE_UPROBE_MULTI` of `enum bpf_attach_type`.
pub const BPF_TRACE_UPROBE_MULTI: u32 = 48;
