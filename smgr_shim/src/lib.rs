//! Safe Rust face of the C storage-manager shim (`yezzey_smgr.c`).
//!
//! The shim registers yezzey's `f_smgr` with the patched PostgreSQL and
//! forwards to md; this crate only exposes installation and per-backend
//! statistics. All functions must be called from a PostgreSQL process's main
//! thread: the counters are plain process-local statics.

#[allow(non_camel_case_types, non_upper_case_globals, dead_code)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

use std::ffi::CStr;

/// Registers yezzey's storage manager and installs the selection hook.
///
/// # Safety
/// Must be called from `_PG_init` while `shared_preload_libraries` load: the
/// patched `smgr_register` raises an ERROR (a longjmp) otherwise, so callers
/// check `process_shared_preload_libraries_in_progress` first.
pub unsafe fn install() -> i32 {
    ffi::yz_smgr_install()
}

/// Installs the ProcessUtility hook for database-level commands
/// (`yezzey_utility.c`).
///
/// # Safety
/// Must be called once from `_PG_init`.
pub unsafe fn install_utility_hook() {
    ffi::yz_utility_install()
}

/// Installs the base-backup hooks (`yezzey_backup.c`).
///
/// # Safety
/// Must be called once from `_PG_init`.
pub unsafe fn install_backup_hooks() {
    ffi::yz_backup_install()
}

/// One storage-manager entry point and how often this backend called it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCount {
    pub call: &'static str,
    pub count: u64,
}

/// This backend's storage-manager call counters, in `f_smgr` order.
pub fn call_counts() -> Vec<CallCount> {
    let n = ffi::YzSmgrCall::YZ_CALL_COUNT as usize;
    // SAFETY: both arrays have YZ_CALL_COUNT entries and live for the process.
    unsafe {
        let counts = std::slice::from_raw_parts(ffi::yz_smgr_call_counts(), n);
        let names = std::slice::from_raw_parts(ffi::yz_smgr_call_names.as_ptr(), n);
        names
            .iter()
            .zip(counts)
            .map(|(&name, &count)| CallCount {
                call: CStr::from_ptr(name).to_str().unwrap_or("?"),
                count,
            })
            .collect()
    }
}

/// How many relations this backend opened through yezzey and through md.
pub fn opened() -> (u64, u64) {
    unsafe { (ffi::yz_smgr_opened_yezzey(), ffi::yz_smgr_opened_md()) }
}

/// Zeroes this backend's counters.
pub fn reset_call_counts() {
    unsafe { ffi::yz_smgr_reset_call_counts() }
}

/// True when PostgreSQL verifies every non-new page it reads through the
/// storage manager (data checksums on, and neither `ignore_checksum_failure`
/// nor `zero_damaged_pages` set).
pub fn host_verifies_pages() -> bool {
    unsafe { ffi::yz_host_verifies_pages() }
}

/// One offloaded segment as the shared map holds it.
pub use ffi::YzSegInfo as SegInfo;

/// The functions the shim calls in the extension, as the header declares
/// them: the extension checks its definitions against these.
pub mod callbacks {
    pub use super::ffi::{
        yezzey_backup_started, yezzey_backup_stopped, yezzey_forget_dropped_database,
        yezzey_map_load, yezzey_map_persist, yezzey_refuse_database_copy, yezzey_remote_prefetch,
        yezzey_remote_read,
    };
}

/// The shared map of offloaded segments (`yezzey_map.c`). Every function
/// takes the map's LWLock briefly; call from a PostgreSQL process only.
pub mod map {
    use super::{ffi, SegInfo};

    /// Inserts or replaces a segment; false when the map is full.
    pub fn put(seg: &SegInfo) -> bool {
        unsafe { ffi::yz_map_put(seg) }
    }

    pub fn get(spc: u32, db: u32, rel: u32, fork: i32, segno: u32) -> Option<SegInfo> {
        let mut out = SegInfo::default();
        unsafe { ffi::yz_map_get(spc, db, rel, fork, segno, &mut out) }.then_some(out)
    }

    /// Removes every segment of a fork (`fork < 0`: of all forks).
    pub fn remove(spc: u32, db: u32, rel: u32, fork: i32) -> i32 {
        unsafe { ffi::yz_map_remove(spc, db, rel, fork) }
    }

    pub fn has_remote(spc: u32, db: u32, rel: u32) -> bool {
        unsafe { ffi::yz_map_rel_has_remote(spc, db, rel) }
    }

    /// Blocks per segment file (RELSEG_SIZE).
    pub fn blocks_per_segment() -> u32 {
        unsafe { ffi::yz_blocks_per_segment() }
    }
}
