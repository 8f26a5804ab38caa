//! What yezzey asks PostgreSQL: where files are, where WAL is, and catalog
//! facts about relations. The I/O path never touches the catalog; the
//! catalog lookups here are for SQL-callable functions only (through SPI).
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use std::path::PathBuf;
use yezzey_storage::key::{Lsn, RelFork};
use yezzey_storage::state::StateDir;

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

/// The start time of this server's postmaster (Unix seconds... as
/// PostgreSQL's timestamp: only compared for equality).
pub fn postmaster_start() -> i64 {
    // SAFETY: a plain global set at postmaster start.
    unsafe { pg_sys::PgStartTime }
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

/// A relation's identity and where its files are.
#[derive(Debug, Clone)]
pub struct RelInfo {
    pub name: String,
    pub relkind: String,
    pub persistence: String,
    /// Tablespace, with 0 (the database default) resolved.
    pub spc: u32,
    pub db: u32,
    /// None for relations without storage (views, partitioned tables).
    pub relnumber: Option<u32>,
}

impl RelInfo {
    /// The main fork, for relations with storage.
    pub fn main_fork(&self) -> Option<RelFork> {
        self.relnumber.map(|r| RelFork::main(self.spc, self.db, r))
    }
}

fn spi_error(e: pgrx::spi::Error) -> ! {
    crate::errors::error(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("yezzey: catalog lookup failed: {e}"),
        "This is a bug in yezzey; please report it.",
    )
}

/// None if no relation has this OID (e.g. dropped concurrently).
pub fn relation(oid: u32) -> Option<RelInfo> {
    let q = format!(
        "SELECT c.oid::regclass::text, c.relkind::text, c.relpersistence::text,
                (CASE WHEN c.reltablespace = 0 THEN d.dattablespace ELSE c.reltablespace END)::bigint,
                d.oid::bigint, pg_relation_filenode(c.oid)::bigint
           FROM pg_class c, pg_database d
          WHERE c.oid = {oid} AND d.datname = current_database()"
    );
    Spi::connect(|c| {
        let mut out = None;
        for r in c.select(&q, None, &[])? {
            out = Some(RelInfo {
                name: r.get::<String>(1)?.unwrap_or_default(),
                relkind: r.get::<String>(2)?.unwrap_or_default(),
                persistence: r.get::<String>(3)?.unwrap_or_default(),
                spc: r.get::<i64>(4)?.unwrap_or(0) as u32,
                db: r.get::<i64>(5)?.unwrap_or(0) as u32,
                relnumber: r.get::<i64>(6)?.map(|n| n as u32),
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| spi_error(e))
}

/// The OIDs a query's first column returns.
pub fn oids(query: &str) -> Vec<u32> {
    Spi::connect(|c| {
        let mut v = Vec::new();
        for r in c.select(query, None, &[])? {
            if let Some(o) = r.get::<i64>(1)? {
                v.push(o as u32);
            }
        }
        Ok::<_, pgrx::spi::Error>(v)
    })
    .unwrap_or_else(|e| spi_error(e))
}

/// The first column of the first row of a query, as bigint; read-only
/// SPI, so it also works on a standby (a read-write SPI call there fails
/// assigning a transaction id).
pub fn select_i64(query: &str) -> Option<i64> {
    Spi::connect(|c| c.select(query, Some(1), &[])?.first().get_one::<i64>())
        .unwrap_or_else(|e| spi_error(e))
}

/// `pg_relation_size` of the main fork (0 if it cannot be read).
pub fn relation_size(oid: u32) -> i64 {
    select_i64(&format!("SELECT pg_relation_size({oid})")).unwrap_or(0)
}

/// Whether a database exists, from the catalog as it is now (not from the
/// transaction's snapshot: a database created since must count).
pub fn database_exists(db: u32) -> bool {
    // SAFETY: a syscache probe from a backend inside a transaction.
    unsafe {
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(db),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
        )
    }
}

/// The oldest WAL position a standby may still need: physical slots'
/// restart_lsn and connected standbys' replay_lsn (0 when one has not
/// reported yet). None when there are no standbys to wait for.
pub fn standby_horizon() -> Option<Lsn> {
    select_i64(
        "SELECT (min(lsn) - '0/0'::pg_lsn)::bigint FROM (
             SELECT restart_lsn AS lsn FROM pg_replication_slots
              WHERE slot_type = 'physical' AND restart_lsn IS NOT NULL
             UNION ALL
             SELECT coalesce(replay_lsn, '0/0') FROM pg_stat_replication) s",
    )
    .map(|l| Lsn(l as u64))
}

/// Unix seconds as a `timestamptz`.
pub fn timestamptz(unix: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    // PostgreSQL counts microseconds from 2000-01-01.
    pgrx::datum::TimestampWithTimeZone::try_from((unix - 946_684_800) * 1_000_000).ok()
}

/// Free bytes on the file system holding `path` (for unprivileged users).
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: statvfs into a zeroed struct we own.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }
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
