//! File descriptors yezzey holds outside PostgreSQL's `fd.c`, reported to
//! it, so that its cache of open relation files makes room instead of the
//! process failing with EMFILE (`AcquireExternalFD` / `ReserveExternalFD`).
//!
//! * Long-lived ones (the I/O runtime's, the object store's connections,
//!   the frame cache's open entries) are reserved when a process builds its
//!   storage handle, for as many as those parts can hold at most
//!   (`AnyStore::max_fds`, `FrameCache::max_fds`, `RUNTIME_FDS`), and
//!   released when the handle is dropped.
//! * Short-lived ones (state files, a segment file being uploaded, punching
//!   holes) are reserved around the call that opens and closes them.
//!
//! All of it runs on a process's main thread: fd.c is not thread-safe, and
//! the runtime's threads only use descriptors already counted here.
use crate::pg;
use std::sync::atomic::{AtomicBool, Ordering};

/// Descriptors reserved until dropped.
pub struct Reserved(usize);

impl Reserved {
    /// Reserves `n` descriptors if PostgreSQL can spare them (at most a
    /// third of what it may open goes to external descriptors).
    pub fn acquire(n: usize) -> Option<Reserved> {
        let mut got = Reserved(0);
        for _ in 0..n {
            if !pg::acquire_external_fd() {
                return None; // `got` releases what it took
            }
            got.0 += 1;
        }
        Some(got)
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        for _ in 0..self.0 {
            pg::release_external_fd();
        }
    }
}

/// Runs `f`, which opens and closes up to `n` descriptors, with them
/// reserved (closing PostgreSQL's least recently used files if needed).
pub fn transient<T>(n: usize, f: impl FnOnce() -> T) -> T {
    for _ in 0..n {
        pg::reserve_external_fd(); // released below
    }
    let _release = Reserved(n);
    f()
}

/// The I/O runtime lives as long as the process: its descriptors are
/// reserved once, when the first storage handle is built.
pub fn reserve_runtime() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !DONE.swap(true, Ordering::Relaxed) {
        for _ in 0..yezzey_storage::runtime::RUNTIME_FDS {
            pg::reserve_external_fd(); // never released
        }
    }
}

/// Descriptors a state-file operation holds at once: the map lock, a
/// temporary file and its directory.
pub const STATE_OP: usize = 3;
