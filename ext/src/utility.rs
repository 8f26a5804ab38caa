//! A ProcessUtility hook for the database commands that handle data files
//! without the storage manager:
//! - `CREATE DATABASE ... STRATEGY FILE_COPY` and `ALTER DATABASE ... SET
//!   TABLESPACE` copy a database's directory as files, so an offloaded
//!   relation's punched holes would arrive as empty pages with no map to
//!   serve them: refused while the source database has offloaded relations.
//! - `DROP DATABASE` removes the directory without the storage manager's
//!   unlink: the database's maps are forgotten (WAL-logged, so standbys
//!   follow) and its objects become garbage for `yezzey_gc()`.
//!
//! The hook itself is C (`smgr_shim/src/yezzey_utility.c`), so the
//! commands' own errors never pass through Rust frames; it calls the two
//! functions below.
use crate::{errors, mapfile, wal};
use pgrx::PgSqlErrorCode;
use std::ffi::{c_char, CStr};

/// Installs the hook (from _PG_init, chaining any hook loaded before us).
pub fn install() {
    // SAFETY: _PG_init runs once per process, before any utility command.
    unsafe { yezzey_smgr_shim::install_utility_hook() };
}

/// Called by the hook before CREATE DATABASE ... STRATEGY FILE_COPY (the
/// template) and ALTER DATABASE ... SET TABLESPACE (`is_move`).
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_refuse_database_copy(db: u32, name: *const c_char, is_move: bool) {
    if db == 0 || name.is_null() {
        return;
    }
    // SAFETY: the hook passes the statement's NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    if is_move {
        refuse_if_offloaded(
            db,
            &name,
            "ALTER DATABASE ... SET TABLESPACE copies data files directly, and would copy the offloaded blocks as empty pages.",
            "Move the offloaded relations with ALTER TABLE ... SET TABLESPACE, which reads through yezzey, or bring them back with yezzey_load_relation() first.",
        );
    } else {
        refuse_if_offloaded(
            db,
            &name,
            "CREATE DATABASE with STRATEGY FILE_COPY copies data files directly, and would copy the offloaded blocks as empty pages.",
            "Use STRATEGY WAL_LOG (the default), which reads through yezzey, or bring the relations back with yezzey_load_relation() first.",
        );
    }
}

/// Called by the hook after DROP DATABASE removed database `db`.
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_forget_dropped_database(db: u32) {
    crate::fault::point("after_dropdb");
    forget_maps(&mapfile::forks_of_database(db));
}

fn refuse_if_offloaded(db: u32, name: &str, detail: &str, hint: &str) {
    let forks = mapfile::forks_of_database(db);
    if forks.is_empty() {
        return;
    }
    errors::error_detail(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!(
            "database \"{name}\" has {} offloaded relation file(s)",
            forks.len()
        ),
        format!(
            "{detail} Its offloaded relations are listed in its yezzey_offloaded_relations view."
        ),
        hint,
    );
}

/// Forgets maps of a database whose files are gone (WAL-logged first, as
/// load back does).
pub fn forget_maps(maps: &[mapfile::ForkMap]) {
    for m in maps {
        wal::log_forget(m.spc, m.db, m.rel, m.fork);
        if let Err(e) = mapfile::apply_forget(m.spc, m.db, m.rel, m.fork) {
            pgrx::warning!(
                "yezzey: could not remove the map of relation file {} of dropped database {}: {e}",
                m.rel,
                m.db
            );
        }
    }
}
