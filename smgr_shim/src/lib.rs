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

/// PostgreSQL's data checksum of a page at block `blkno` (of its fork).
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    assert_eq!(page.len(), 8192);
    unsafe { ffi::yz_page_checksum(page.as_ptr().cast(), blkno) }
}

/// One offloaded segment as the shared map holds it.
pub use ffi::YzLayerInfo as LayerInfo;
pub use ffi::YzSegInfo as SegInfo;
/// Layers a segment may have over its base object (`YZ_MAX_LAYERS`).
pub const MAX_LAYERS: usize = ffi::YZ_MAX_LAYERS as usize;

/// The functions the shim calls in the extension, as the header declares
/// them: the extension checks its definitions against these.
pub mod callbacks {
    pub use super::ffi::{
        yezzey_backup_started, yezzey_backup_stopped, yezzey_broken_fork, yezzey_checkpoint,
        yezzey_forget_dropped_database, yezzey_map_load, yezzey_map_persist,
        yezzey_refuse_database_copy, yezzey_remote_prefetch, yezzey_remote_read,
        yezzey_shmem_created,
    };
}

/// The shared map of offloaded forks (`yezzey_map.c`): dshash tables that
/// grow as needed. Every function takes a partition lock briefly; call
/// from a PostgreSQL process's main thread only. Keys are plain
/// `(spc, db, rel, fork)`: the extension wraps them in its typed keys.
pub mod map {
    use super::{ffi, SegInfo};

    pub use ffi::YzForkHead as ForkHead;
    pub use ffi::YzMapUsage as Usage;
    pub use ffi::YzRetiring as Retiring;

    /// Why an object is held while a switch runs (`Retiring::hold`).
    pub const HOLD_NEW: u8 = ffi::YzHold::YZ_HOLD_NEW as u8;
    pub const HOLD_SUPERSEDED: u8 = ffi::YzHold::YZ_HOLD_SUPERSEDED as u8;

    /// Uploading, not logged yet: readers ignore it; GC keeps its objects.
    pub const PENDING: u8 = ffi::YzForkState::YZ_FORK_PENDING as u8;
    /// Logged: readers serve its remote ranges from the objects.
    pub const LIVE: u8 = ffi::YzForkState::YZ_FORK_LIVE as u8;
    /// Its map file is damaged or missing: reads and writes ERROR.
    pub const BROKEN: u8 = ffi::YzForkState::YZ_FORK_BROKEN as u8;

    /// What the map says of one segment.
    // Returned once per lookup, never stored: boxing would only allocate.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, Clone, Copy)]
    pub enum Lookup {
        Found(SegInfo),
        None,
        Broken,
    }

    pub fn get(spc: u32, db: u32, rel: u32, fork: i32, segno: u32) -> Lookup {
        let mut out = SegInfo::default();
        match unsafe { ffi::yz_map_get(spc, db, rel, fork, segno, &mut out) } {
            1 => Lookup::Found(out),
            0 => Lookup::None,
            _ => Lookup::Broken,
        }
    }

    pub fn has_remote(spc: u32, db: u32, rel: u32) -> bool {
        unsafe { ffi::yz_map_rel_has_remote(spc, db, rel) }
    }

    /// Inserts or replaces a fork's map; false when memory (or, with
    /// `within_limit`, yezzey.max_map_memory) does not allow it.
    pub fn put_fork(head: &ForkHead, segs: &[SegInfo], within_limit: bool) -> bool {
        unsafe { ffi::yz_map_put_fork(head, segs.as_ptr(), segs.len() as u32, within_limit) }
    }

    /// A fork's head and segments, in any state.
    pub fn get_fork(spc: u32, db: u32, rel: u32, fork: i32) -> Option<(ForkHead, Vec<SegInfo>)> {
        let mut segs = vec![SegInfo::default(); 8];
        loop {
            let mut head = ForkHead::default();
            let found = unsafe {
                ffi::yz_map_get_fork(
                    spc,
                    db,
                    rel,
                    fork,
                    &mut head,
                    segs.as_mut_ptr(),
                    segs.len() as u32,
                )
            };
            if !found {
                return None;
            }
            if head.nsegs as usize <= segs.len() {
                segs.truncate(head.nsegs as usize);
                return Some((head, segs));
            }
            segs = vec![SegInfo::default(); head.nsegs as usize];
        }
    }

    /// Moves a fork between states; false if it was not in `from`.
    /// Allocates nothing: may run in a critical section.
    pub fn set_state(spc: u32, db: u32, rel: u32, fork: i32, from: u8, to: u8) -> bool {
        unsafe { ffi::yz_map_set_state(spc, db, rel, fork, from, to) }
    }

    pub fn set_evicted(spc: u32, db: u32, rel: u32, fork: i32) -> bool {
        unsafe { ffi::yz_map_set_evicted(spc, db, rel, fork) }
    }

    /// Clears a fork's dirty flag if nothing changed it since `version`.
    pub fn mark_clean(spc: u32, db: u32, rel: u32, fork: i32, version: u64) {
        unsafe { ffi::yz_map_mark_clean(spc, db, rel, fork, version) }
    }

    /// Every fork's head.
    pub fn list() -> Vec<ForkHead> {
        let mut out = vec![ForkHead::default(); 64];
        loop {
            let n = unsafe { ffi::yz_map_list(out.as_mut_ptr(), out.len() as u32) } as usize;
            if n <= out.len() {
                out.truncate(n);
                return out;
            }
            out = vec![ForkHead::default(); n + n / 4];
        }
    }

    /// Removes a fork (`fork < 0`: all of the relation's); a LIVE fork's
    /// objects go to the retiring list at `lsn` and `at`. Returns how many
    /// forks were removed.
    pub fn retire(spc: u32, db: u32, rel: u32, fork: i32, lsn: u64, at: i64) -> i32 {
        unsafe { ffi::yz_map_retire(spc, db, rel, fork, lsn, at) }
    }

    /// Removes this process's pending fork (an offload that failed).
    pub fn drop_pending(spc: u32, db: u32, rel: u32, fork: i32) {
        unsafe { ffi::yz_map_drop_pending(spc, db, rel, fork) }
    }

    /// A re-offload's new segment array, staged in the LIVE fork's entry
    /// before its record; false (nothing changed) if there is no LIVE fork,
    /// another switch is staged, or memory does not allow it.
    pub fn stage(head: &ForkHead, segs: &[SegInfo], within_limit: bool) -> bool {
        unsafe { ffi::yz_map_stage(head, segs.as_ptr(), segs.len() as u32, within_limit) }
    }

    /// Keeps an object from garbage collection while this process switches
    /// its fork's map (an entry of the retiring list with lsn 0, `r.hold`
    /// saying why). ERRORs if the list cannot grow.
    pub fn hold(r: &Retiring) {
        unsafe { ffi::yz_map_hold(r) }
    }

    /// Makes the staged array the fork's. Touches only the fork's entry and
    /// allocates nothing: may run in a critical section. False if nothing
    /// is staged.
    pub fn promote(head: &ForkHead) -> bool {
        unsafe { ffi::yz_map_promote(head) }
    }

    /// Ends this process's switch of a fork: superseded objects retire at
    /// `lsn`, `at` (after a promotion), every other hold and the staged or
    /// old array go. `lsn` 0 aborts: every hold goes.
    pub fn unstage(spc: u32, db: u32, rel: u32, fork: i32, lsn: u64, at: i64) {
        unsafe { ffi::yz_map_unstage(spc, db, rel, fork, lsn, at) }
    }

    /// How many re-offloads were promoted since shared memory was made.
    pub fn switches() -> u64 {
        unsafe { ffi::yz_map_switches() }
    }

    /// Adds an object to the retiring list (redo of a switch that retired it).
    pub fn add_retiring(r: &Retiring) {
        unsafe { ffi::yz_map_add_retiring(r) }
    }

    /// Clears a segment's written flag (its local file holds nothing the
    /// object lacks); true if it was set.
    pub fn clear_written(spc: u32, db: u32, rel: u32, fork: i32, segno: u32) -> bool {
        unsafe { ffi::yz_map_clear_written(spc, db, rel, fork, segno) }
    }

    /// Objects that left the map and await their retired record.
    pub fn retiring() -> Vec<Retiring> {
        let mut out = vec![Retiring::default(); 16];
        loop {
            let n =
                unsafe { ffi::yz_map_list_retiring(out.as_mut_ptr(), out.len() as u32) } as usize;
            if n <= out.len() {
                out.truncate(n);
                return out;
            }
            out = vec![Retiring::default(); n + n / 4];
        }
    }

    pub fn drop_retiring(object_id: &[u8; 16]) {
        unsafe { ffi::yz_map_drop_retiring(object_id.as_ptr()) }
    }

    /// Takes the flag that says the set of forks changed since the manifest.
    pub fn take_keys_changed() -> bool {
        unsafe { ffi::yz_map_take_keys_changed() }
    }

    pub fn set_keys_changed() {
        unsafe { ffi::yz_map_set_keys_changed() }
    }

    pub fn usage() -> Usage {
        let mut u = Usage::default();
        unsafe { ffi::yz_map_usage(&mut u) };
        u
    }

    /// Unique per creation of shared memory: a postmaster start or its
    /// restart after a crash (which keeps the postmaster's start time).
    pub fn boot_id() -> u64 {
        unsafe { ffi::yz_boot_id() }
    }

    /// Blocks per segment file (RELSEG_SIZE).
    pub fn blocks_per_segment() -> u32 {
        unsafe { ffi::yz_blocks_per_segment() }
    }
}
