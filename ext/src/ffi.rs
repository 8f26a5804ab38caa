//! Every function C calls: the storage-manager shim's callbacks (by name,
//! declared in `smgr_shim/src/yezzey_smgr.h`), the WAL resource manager's
//! (by pointer) and the background worker's entry point; and the shim's
//! installation. Each is a thin, guarded wrapper; the work is in the module
//! it names. The shim's callbacks are checked against the header's
//! bindings at compile time (`signatures_match_the_header`).
use crate::map::{load, persist};
use crate::{backups, errors, lineage, pg, remote, utility, wal, worker};
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr};
use yezzey_smgr_shim::SegInfo;
use yezzey_storage::key::Lsn;

/// Registers the storage manager, its shared map and the utility hook, and
/// the WAL resource manager. From `_PG_init`, while preloading (checked).
pub fn install() {
    assert!(
        crate::pg::preloading(),
        "yezzey installs only while preloading"
    );
    // SAFETY: inside shared_preload_libraries processing, once.
    unsafe {
        yezzey_smgr_shim::install();
        yezzey_smgr_shim::install_utility_hook();
        yezzey_smgr_shim::install_backup_hooks();
    }
    crate::pg::xlog::register(wal::RMGR_ID, c"yezzey", rmgr_redo, rmgr_desc, rmgr_identify);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn rmgr_redo(record: *mut pg_sys::XLogReaderState) {
    let (info, data, lsn) = crate::pg::xlog::parts(record);
    wal::redo(info, data, lsn);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn rmgr_desc(
    buf: pg_sys::StringInfo,
    record: *mut pg_sys::XLogReaderState,
) {
    let (_, data, _) = crate::pg::xlog::parts(record);
    crate::pg::xlog::append(buf, &wal::describe(data));
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn rmgr_identify(info: u8) -> *const c_char {
    wal::identify(info).map_or(std::ptr::null(), CStr::as_ptr)
}

/// Fills `n` buffers with blocks `[first, first + n)` of an offloaded segment.
///
/// # Safety
/// Called by the C shim with a valid segment and `n` valid page buffers.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn yezzey_remote_read(
    seg: *const SegInfo,
    first: u32,
    n: u32,
    buffers: *mut *mut c_void,
) {
    let mut bufs: Vec<&mut [u8]> = (0..n as usize)
        .map(|i| {
            std::slice::from_raw_parts_mut(
                *buffers.add(i) as *mut u8,
                yezzey_storage::key::BLOCK_SIZE,
            )
        })
        .collect();
    remote::read(&*seg, first, &mut bufs);
}

/// Starts fetching blocks that PostgreSQL announced it will read.
///
/// # Safety
/// Called by the C shim with a valid segment pointer.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn yezzey_remote_prefetch(seg: *const SegInfo, first: u32, n: u32) {
    remote::prefetch(&*seg, first, n);
}

/// After truncate, unlink, a reused relfilenumber or a first local write
/// changed the shared map: makes the fork's map file say the same, if it
/// can (what it cannot stays for the next checkpoint).
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_map_persist(spc: u32, db: u32, rel: u32, fork: i32) {
    if let Err(e) = persist::persist(spc, db, rel, fork) {
        let f = fork.max(0);
        persist::warn_lagging(crate::map::shared::key_of(spc, db, rel, f), &e);
    }
}

/// From the first process that needs the shared map: the map files.
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_map_load() {
    load::load();
}

/// From the postmaster, whenever it creates shared memory: this start's
/// lineage identity (every process it forks inherits it).
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_shmem_created() {
    lineage::decide_at_start();
}

/// From every checkpoint and restartpoint: pg_yezzey in step with the
/// shared map, or an ERROR that fails the checkpoint.
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_checkpoint(_redo: u64, _flags: i32) {
    if let Err(e) = persist::checkpoint(true) {
        errors::io_detail(
            e,
            "yezzey cannot write its map files, so this checkpoint cannot complete",
            "Offloads, writes and drops since the last checkpoint are in effect and in WAL, which is kept until a checkpoint completes; crash recovery cannot complete until the files can be written.",
            "Check the permissions and free space of the data directory's pg_yezzey folder.",
        );
    }
}

/// A read or write of a fork whose map is damaged or missing.
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_broken_fork(spc: u32, db: u32, rel: u32, fork: i32) {
    let key = crate::map::shared::key_of(spc, db, rel, fork);
    let path = pg::segment_path(key, 0);
    let path = path.strip_prefix(pg::data_dir()).unwrap_or(&path);
    errors::error_detail(
        pgrx::PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!(
            "relation file \"{}\" is offloaded, but yezzey's map of it is damaged or missing",
            path.display()
        ),
        "Its blocks are in object storage and its local files are empty; without the map they cannot be read, and reading the local files would return no rows.".into(),
        "Rebuild the map from the objects with SELECT * FROM yezzey_repair_maps() (on a server that cannot start, yezzey-tool repair-maps), or restore pg_yezzey/map from a backup.",
    );
}

/// Before CREATE DATABASE ... STRATEGY FILE_COPY (the template) and ALTER
/// DATABASE ... SET TABLESPACE (`is_move`).
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_refuse_database_copy(db: u32, name: *const c_char, is_move: bool) {
    if db == 0 || name.is_null() {
        return;
    }
    // SAFETY: the hook passes the statement's NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    utility::refuse_database_copy(db, &name, is_move);
}

/// After DROP DATABASE removed database `db`.
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_forget_dropped_database(db: u32) {
    utility::forget_dropped_database(db);
}

/// A base backup started (pg_backup_start() or BASE_BACKUP).
///
/// # Safety
/// Called by the shim with the backup's NUL-terminated label.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn yezzey_backup_started(
    label: *const c_char,
    start_lsn: u64,
    timeline: u32,
) {
    let label = CStr::from_ptr(label).to_string_lossy();
    backups::started(&label, Lsn(start_lsn), timeline);
}

/// A base backup stopped.
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_backup_stopped(start_lsn: u64, stop_lsn: u64) {
    backups::stopped(Lsn(start_lsn), Lsn(stop_lsn));
}

/// The lineage background worker's entry point.
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_lineage_worker_main(_arg: pgrx::pg_sys::Datum) {
    worker::main();
}

/// Fails to compile if a callback's signature differs from the header's.
#[allow(dead_code, unused_assignments)]
fn signatures_match_the_header() {
    use yezzey_smgr_shim::callbacks as h;
    let mut read: unsafe extern "C-unwind" fn(_, _, _, _) = h::yezzey_remote_read;
    read = yezzey_remote_read;
    let mut prefetch: unsafe extern "C-unwind" fn(_, _, _) = h::yezzey_remote_prefetch;
    prefetch = yezzey_remote_prefetch;
    let mut persist: unsafe extern "C-unwind" fn(_, _, _, _) = h::yezzey_map_persist;
    persist = yezzey_map_persist;
    let mut load: unsafe extern "C-unwind" fn() = h::yezzey_map_load;
    load = yezzey_map_load;
    let mut created: unsafe extern "C-unwind" fn() = h::yezzey_shmem_created;
    created = yezzey_shmem_created;
    let mut checkpoint: unsafe extern "C-unwind" fn(_, _) = h::yezzey_checkpoint;
    checkpoint = yezzey_checkpoint;
    let mut broken: unsafe extern "C-unwind" fn(_, _, _, _) = h::yezzey_broken_fork;
    broken = yezzey_broken_fork;
    let mut refuse: unsafe extern "C-unwind" fn(_, _, _) = h::yezzey_refuse_database_copy;
    refuse = yezzey_refuse_database_copy;
    let mut dropped: unsafe extern "C-unwind" fn(_) = h::yezzey_forget_dropped_database;
    dropped = yezzey_forget_dropped_database;
    let mut started: unsafe extern "C-unwind" fn(_, _, _) = h::yezzey_backup_started;
    started = yezzey_backup_started;
    let mut stopped: unsafe extern "C-unwind" fn(_, _) = h::yezzey_backup_stopped;
    stopped = yezzey_backup_stopped;
    let _ = (
        read, prefetch, persist, load, created, checkpoint, broken, refuse, dropped, started,
        stopped,
    );
}
