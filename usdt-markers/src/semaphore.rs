use core::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// A USDT semaphore: the 16-bit counter that tools increment while attached to a probe.
///
/// The kernel updates it from outside the process (uprobe `ref_ctr_offset`), bpftrace and
/// SystemTap likewise, so it must live in a file-backed, writable section at an address written
/// in the probe's note; each probe's semaphore is placed in `.probes` as `sys/sdt.h` does.
#[repr(transparent)]
pub struct Semaphore(AtomicU16);

impl Semaphore {
    /// A semaphore nobody is attached to.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Semaphore(AtomicU16::new(0))
    }

    /// Whether at least one tool is attached.
    ///
    /// A relaxed load: one `cmpw $0, sym(%rip)` at the probe site. A stale read only delays
    /// the first or last fired event by one pass, which attaching tools tolerate anyway.
    #[inline(always)]
    pub fn is_active(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// The raw count, for diagnostics and tests.
    pub fn count(&self) -> u16 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the count as a tool attaching would (unit tests only: nothing in the engine writes
    /// a semaphore).
    #[cfg(test)]
    pub(crate) fn set(&self, n: u16) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// How long a probe whose observers grew is left alone before it fires again. An observer's
/// attach raises the semaphore (the kernel does, when it registers the uprobe) before its
/// program is linked to the site, microseconds later; a hit in between reaches nobody. Firing
/// only once the count has been steady this long means nothing is lost in that window: amounts
/// keep accumulating in the cells and arrive with the first hit after it.
pub(crate) const SETTLE: Duration = Duration::from_millis(50);
