//! Database-level commands that handle data files without the storage
//! manager (the hook itself is C, `smgr_shim/src/yezzey_utility.c`, so the
//! commands' own errors never pass through Rust frames; it calls these
//! through `ffi`):
//! - `CREATE DATABASE ... STRATEGY FILE_COPY` and `ALTER DATABASE ... SET
//!   TABLESPACE` copy a database's directory as files, so an offloaded
//!   relation's punched holes would arrive as empty pages with no map to
//!   serve them: refused while the source database has offloaded relations.
//! - `DROP DATABASE` removes the directory without the storage manager's
//!   unlink: the database's maps are forgotten (WAL-logged, so standbys
//!   follow) and its objects become garbage for `yezzey_gc()`.
use crate::map::shared::{self, SharedFork, State};
use crate::{errors, wal};
use pgrx::PgSqlErrorCode;

/// Before CREATE DATABASE ... STRATEGY FILE_COPY (the template) and ALTER
/// DATABASE ... SET TABLESPACE (`is_move`).
pub fn refuse_database_copy(db: u32, name: &str, is_move: bool) {
    let (detail, hint) = if is_move {
        (
            "ALTER DATABASE ... SET TABLESPACE copies data files directly, and would copy the offloaded blocks as empty pages.",
            "Move the offloaded relations with ALTER TABLE ... SET TABLESPACE, which reads through yezzey, or bring them back with yezzey_load_relation() first.",
        )
    } else {
        (
            "CREATE DATABASE with STRATEGY FILE_COPY copies data files directly, and would copy the offloaded blocks as empty pages.",
            "Use STRATEGY WAL_LOG (the default), which reads through yezzey, or bring the relations back with yezzey_load_relation() first.",
        )
    };
    let forks = maps_of(db);
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

/// After DROP DATABASE removed database `db`.
pub fn forget_dropped_database(db: u32) {
    crate::fault::point("after_dropdb");
    forget_maps(&maps_of(db));
}

fn maps_of(db: u32) -> Vec<SharedFork> {
    shared::of_database(db)
}

/// Forgets maps of a database whose files are gone (WAL-logged, as load
/// back does). A broken map is forgotten whatever offload it had.
pub fn forget_maps(maps: &[SharedFork]) {
    for f in maps {
        let lsn = (f.state == State::Live).then_some(f.map.lsn);
        wal::forget(f.map.key, lsn);
    }
}
