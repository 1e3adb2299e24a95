//! Locks that outlive a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// The guard of `m`, poisoned or not: what the crate's mutexes hold (maps' handles, counters,
/// lists) is consistent between any two statements, so a panic in one task is no reason to
/// stop serving the others.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
