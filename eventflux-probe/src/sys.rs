//! The crate's raw system calls, each wrapped once: the rest of the crate calls these (as aya
//! keeps its own in `sys/`), so every `libc::syscall` and the promise that makes it sound is
//! in this one file. Only what libc and aya do not wrap for us is here.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `bpf(2)`: the commands aya 0.14 does not issue for us (loading for `uprobe_multi`, link
/// creation with cookies, program info).
///
/// # Safety
/// `attr` points to a `union bpf_attr` of `size` bytes as `cmd` expects it, and every pointer
/// in it is valid for the call.
pub(crate) unsafe fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> io::Result<i64> {
    // SAFETY: the caller's promise above.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as u32) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// `perf_event_open(2)`, close-on-exec: a uprobe perf event for `attach::attach`.
///
/// # Safety
/// `attr` is a `perf_event_attr` whose `size` field is at most `size_of::<T>()`, and every
/// pointer in it (the uprobe's path) is valid for the call.
pub(crate) unsafe fn perf_event_open<T>(attr: &T, pid: libc::pid_t, cpu: libc::c_int) -> io::Result<OwnedFd> {
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    // SAFETY: the caller's promise above; no group leader (-1).
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr as *const T, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_open(2)`: a descriptor for the process itself, not its number (`find::target`).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
