//! The observed process, held by identity, not by number.
//!
//! A pid names a process only until it exits: then the number is free for the next process,
//! and `/proc/PID` describes that one. So a [`Target`] holds a pidfd (which refers to the
//! process itself and becomes readable when it exits), the process's start time and the
//! identity (device, inode) of the executable it ran when we attached. It answers:
//! - has the process exited? (the pidfd says so, zombie included, the moment it happens);
//! - has it exec'd another program? (its executable changed: the probes we attached are in the
//!   old image, so for us that is the end of this target too);
//! - may `/proc/PID` be read as this process? (only while the pidfd says it is alive).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Why a process cannot be observed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {0} (check the pid, or that it is visible in this pid namespace)")]
    NoSuchProcess(u32),
    #[error("process {0} has exited (a zombie its parent has not reaped yet): nothing left to observe")]
    Exited(u32),
    #[error(
        "cannot read process {0}'s executable (/proc/{0}/exe): permission denied: missing CAP_SYS_PTRACE (observing another process needs it, or root)"
    )]
    NotPermitted(u32),
    #[error("cannot take hold of process {pid}: {error}")]
    Io { pid: u32, error: std::io::Error },
}

/// What became of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Still running the program we attached to.
    Running,
    /// Exited (perhaps not reaped yet).
    Exited,
    /// Running another program: it called exec (the path it runs now).
    Execd(PathBuf),
}

/// A process we observe.
#[derive(Debug)]
pub struct Target {
    pid: u32,
    pidfd: OwnedFd,
    /// `(st_dev, st_ino)` of the executable when we attached.
    exe: (u64, u64),
    /// Its path then (what `--follow` looks for in a new process).
    exe_path: PathBuf,
    /// Start time, clock ticks after boot (`/proc/PID/stat` field 22): tells a process that
    /// started after this one from one that ran alongside it.
    start_ticks: u64,
}

/// The state letter of `/proc/PID/stat` (after the parenthesised name, which may hold spaces).
pub(crate) fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).and_then(|s| s.chars().next())
}

/// Start time of process `pid` in clock ticks after boot (`/proc/PID/stat` field 22).
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 3 (state) is the first after the parenthesised name; field 22 is 19 after it.
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(19)).and_then(|v| v.parse().ok())
}

fn exe_identity(pid: u32) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(format!("/proc/{pid}/exe"))?;
    Ok((meta.dev(), meta.ino()))
}

impl Target {
    /// Takes hold of process `pid`, or says in one line why it cannot be observed.
    pub fn open(pid: u32) -> Result<Target, TargetError> {
        let pidfd = match crate::sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(TargetError::NoSuchProcess(pid)),
            Err(error) => return Err(TargetError::Io { pid, error }),
        };
        if matches!(proc_state(pid), Some('Z' | 'X')) {
            return Err(TargetError::Exited(pid));
        }
        let exe = match exe_identity(pid) {
            Ok(id) => id,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(TargetError::NotPermitted(pid)),
            // A zombie's exe link is gone.
            Err(_) if matches!(proc_state(pid), Some('Z' | 'X') | None) => return Err(TargetError::Exited(pid)),
            Err(error) => return Err(TargetError::Io { pid, error }),
        };
        let exe_path =
            std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|error| TargetError::Io { pid, error })?;
        // A binary replaced on disk since the process started reads "PATH (deleted)"; its
        // successor runs PATH.
        let exe_path = match exe_path.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
            Some(p) => PathBuf::from(p),
            None => exe_path,
        };
        let start_ticks = start_ticks(pid).ok_or(TargetError::Exited(pid))?;
        Ok(Target { pid, pidfd, exe, exe_path, start_ticks })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The executable's path when we took hold of the process.
    pub fn exe_path(&self) -> &std::path::Path {
        &self.exe_path
    }

    /// When the process started, in clock ticks after boot.
    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }

    /// Whether the process has exited: its pidfd is readable.
    pub fn has_exited(&self) -> bool {
        let mut fds = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut fds, 1, 0) };
        n > 0 && fds.revents & libc::POLLIN != 0
    }

    /// What became of the process.
    pub fn state(&self) -> State {
        if self.has_exited() {
            return State::Exited;
        }
        let exe = exe_identity(self.pid);
        // The pid is ours only while the pidfd says the process lives: check again after.
        if self.has_exited() {
            return State::Exited;
        }
        match exe {
            Ok(id) if id == self.exe => State::Running,
            Ok(_) => State::Execd(std::fs::read_link(format!("/proc/{}/exe", self.pid)).unwrap_or_default()),
            // Gone between the two checks.
            Err(_) if self.has_exited() => State::Exited,
            Err(_) => State::Running,
        }
    }

    /// Runs `read` on `/proc/PID` facts only if they are this process's: alive before and after
    /// the read (the pidfd pins the pid, so an alive pidfd means the number is still ours).
    pub fn read_proc<T>(&self, read: impl FnOnce(u32) -> Option<T>) -> Option<T> {
        if self.has_exited() {
            return None;
        }
        let value = read(self.pid);
        if self.has_exited() { None } else { value }
    }

    /// Resolves when the process exits or runs another program, checking every `poll` for an
    /// exec (the kernel notifies exits, not execs).
    pub async fn ended(&self, poll: std::time::Duration) -> State {
        let exited = async {
            // SAFETY: the pidfd is owned by `self`, which outlives this future and with it the
            // AsyncFd: the descriptor stays open and the same while registered.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(self.pidfd.as_fd(), tokio::io::Interest::READABLE)
            };
            match registered {
                Ok(fd) => {
                    let _ = fd.readable().await;
                }
                // Without a reactor for it, fall back to the periodic check below.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let execd = async {
            loop {
                tokio::time::sleep(poll).await;
                match self.state() {
                    State::Running => {}
                    other => return other,
                }
            }
        };
        tokio::select! {
            _ = exited => State::Exited,
            state = execd => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_running_then_exited_and_its_proc_is_no_longer_read() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let target = Target::open(child.id()).expect("open");
        assert_eq!(target.state(), State::Running);
        assert!(target.read_proc(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()).is_some());
        child.kill().expect("kill");
        // Not reaped yet: a zombie, which has exited all the same.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(target.state(), State::Exited);
        assert!(target.read_proc(|_| Some(1)).is_none());
        let err = Target::open(child.id()).expect_err("a zombie cannot be observed");
        assert!(matches!(err, TargetError::Exited(_)), "{err}");
        child.wait().expect("reap");
    }
}
