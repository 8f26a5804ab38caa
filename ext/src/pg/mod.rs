//! The PostgreSQL layer: everything yezzey asks of PostgreSQL through
//! `pg_sys`, and the only place outside `ffi.rs` that needs `unsafe`.
//! Each function states what it reads or changes; callers get safe Rust.
//!
//! * here: where files are, WAL positions, the process and its limits;
//! * [`catalog`]: catalog facts through SPI (SQL-callable functions only:
//!   the I/O path never touches the catalog);
//! * [`relation`]: locks, the buffer manager and the visibility map;
//! * [`xlog`]: the custom WAL resource manager's registration and records;
//! * [`guc`]: settings whose assignment the storage handle notices.
use pgrx::pg_sys;
use std::path::PathBuf;
use yezzey_storage::key::{Lsn, RelFork};
use yezzey_storage::state::StateDir;

pub mod catalog;
pub mod guc;
pub mod relation;
pub mod xlog;

pub use catalog::{database_exists, oids, physical_slots, relation, standby_horizon};

/// The data directory (PostgreSQL sets it before any extension code runs).
pub fn data_dir() -> PathBuf {
    // SAFETY: DataDir is a NUL-terminated string that never changes.
    unsafe {
        PathBuf::from(
            std::ffi::CStr::from_ptr(pg_sys::DataDir)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// yezzey's state directory, `$PGDATA/pg_yezzey`.
pub fn state() -> StateDir {
    StateDir::new(data_dir().join("pg_yezzey"))
}

/// pg_control's system identifier, shared by a whole lineage.
pub fn system_id() -> u64 {
    // SAFETY: reads pg_control's copy in shared memory.
    unsafe { pg_sys::GetSystemIdentifier() }
}

/// This creation of the server's shared memory: a new value at every
/// postmaster start and at every restart after a backend crash (which
/// keeps the postmaster's start time). Only compared for equality.
pub fn boot_id() -> i64 {
    yezzey_smgr_shim::map::boot_id() as i64
}

pub fn my_database() -> u32 {
    // SAFETY: a plain global set at connection.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

pub fn in_recovery() -> bool {
    // SAFETY: a query of shared xlog state.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// The WAL insert position (a primary only).
pub fn insert_lsn() -> Lsn {
    // SAFETY: a read of shared xlog state.
    Lsn(unsafe { pg_sys::GetXLogInsertRecPtr() })
}

/// The WAL position this server has reached: inserted on a primary,
/// replayed during recovery.
pub fn current_lsn() -> Lsn {
    if in_recovery() {
        // SAFETY: a read of shared xlog state.
        Lsn(unsafe { pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut()) })
    } else {
        insert_lsn()
    }
}

/// The timeline WAL is written on (after recovery).
pub fn timeline() -> u32 {
    if in_recovery() {
        return 0;
    }
    // SAFETY: a read of shared xlog state.
    unsafe { pg_sys::GetWALInsertionTimeLine() }
}

/// True when every change to a page, hint bits aside, moves its LSN:
/// data checksums or `wal_log_hints` (PostgreSQL's `XLogHintBitIsNeeded`).
pub fn hint_bits_logged() -> bool {
    // SAFETY: reads of pg_control's copy and a GUC.
    unsafe { pg_sys::DataChecksumsEnabled() || pg_sys::wal_log_hints }
}

/// The replication slot this standby streams from (`primary_slot_name`).
pub fn primary_slot_name() -> Option<String> {
    // SAFETY: reads a GUC's current value (a string PostgreSQL owns).
    let p = unsafe { pg_sys::GetConfigOption(c"primary_slot_name".as_ptr(), true, false) };
    if p.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string from GetConfigOption.
    let s = unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned();
    (!s.is_empty()).then_some(s)
}

/// Whether full_page_writes is on.
pub fn full_page_writes() -> bool {
    // SAFETY: a plain GUC variable.
    unsafe { pg_sys::fullPageWrites }
}

/// Whether data checksums are on (pages written now carry them).
pub fn data_checksums() -> bool {
    // SAFETY: reads pg_control's copy in shared memory.
    unsafe { pg_sys::DataChecksumsEnabled() }
}

/// Refuses, as VACUUM does, to run inside a transaction block (or a
/// pipeline, or a function's subtransaction), in a read-only transaction,
/// or during recovery: `what` names the command in the error.
pub fn refuse_in_transaction_block(what: &'static std::ffi::CStr) {
    // SAFETY: PostgreSQL's own checks, which ERROR if they fail.
    unsafe {
        pg_sys::PreventCommandDuringRecovery(what.as_ptr());
        pg_sys::PreventCommandIfReadOnly(what.as_ptr());
        pg_sys::PreventInTransactionBlock(true, what.as_ptr());
    }
}

/// True while `shared_preload_libraries` are being loaded (in the postmaster).
pub fn preloading() -> bool {
    // SAFETY: a plain global, read on the main thread.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// Whether the session's role is a superuser.
pub fn is_superuser() -> bool {
    // SAFETY: reads the session's role.
    unsafe { pg_sys::superuser() }
}

/// Rereads postgresql.conf (a background worker after SIGHUP).
pub fn reload_config() {
    // SAFETY: called from a worker's main loop, outside any transaction.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

/// The postmaster's process id.
pub fn postmaster_pid() -> i32 {
    // SAFETY: a plain global set at startup.
    unsafe { pg_sys::PostmasterPid }
}

/// Reports one descriptor opened outside fd.c, if PostgreSQL can spare it
/// (at most a third of what it may open goes to external descriptors).
pub fn acquire_external_fd() -> bool {
    // SAFETY: fd.c bookkeeping, on the main thread.
    unsafe { pg_sys::AcquireExternalFD() }
}

/// Reports one descriptor opened outside fd.c, closing PostgreSQL's least
/// recently used files if needed to keep its reserve.
pub fn reserve_external_fd() {
    // SAFETY: fd.c bookkeeping, on the main thread.
    unsafe { pg_sys::ReserveExternalFD() }
}

/// Reports that a descriptor reported above was closed.
pub fn release_external_fd() {
    // SAFETY: fd.c bookkeeping, on the main thread; paired with the above.
    unsafe { pg_sys::ReleaseExternalFD() }
}

/// Path of a segment file.
pub fn segment_path(key: RelFork, segno: u32) -> PathBuf {
    // SAFETY: GetRelationPath pallocs a C string from plain values.
    let base = unsafe {
        let p = pg_sys::GetRelationPath(
            key.db.into(),
            key.spc.into(),
            key.rel.into(),
            pg_sys::INVALID_PROC_NUMBER,
            key.fork.as_i32(),
        );
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        pg_sys::pfree(p.cast());
        s
    };
    let rel_path = if segno == 0 {
        base
    } else {
        format!("{base}.{segno}")
    };
    data_dir().join(rel_path)
}

/// Blocks per segment file (RELSEG_SIZE of this build).
pub fn blocks_per_segment() -> u32 {
    yezzey_smgr_shim::map::blocks_per_segment()
}

/// Unix seconds as a `timestamptz`.
pub fn timestamptz(unix: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    // PostgreSQL counts microseconds from 2000-01-01.
    pgrx::datum::TimestampWithTimeZone::try_from((unix - 946_684_800) * 1_000_000).ok()
}

/// Free bytes on the file system holding `path` (for unprivileged users).
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    yezzey_storage::state::durable::free_bytes(path)
}

/// The device a path is on (to tell whether two directories share a file system).
pub fn device_of(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.dev())
}

/// A WAL position as PostgreSQL's `pg_lsn` in SQL results.
#[derive(Debug, Clone, Copy)]
pub struct PgLsn(pub Lsn);

impl pgrx::IntoDatum for PgLsn {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        // pg_lsn is a pass-by-value uint64 (LSNGetDatum).
        Some(pg_sys::Datum::from(self.0 .0 as usize))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::PG_LSNOID
    }
}

// SAFETY: returns the pass-by-value Datum that into_datum builds.
unsafe impl pgrx::callconv::BoxRet for PgLsn {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        fcinfo.return_raw_datum(pg_sys::Datum::from(self.0 .0 as usize))
    }
}

pgrx::impl_sql_translatable!(PgLsn, "pg_lsn");

impl pgrx::FromDatum for PgLsn {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then(|| PgLsn(Lsn(datum.value() as u64)))
    }
}

// SAFETY: a pass-by-value argument, unboxed as FromDatum reads it.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for PgLsn {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        arg.unbox_arg_using_from_datum()
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}
