//! A ProcessUtility hook for the database commands that handle data files
//! without the storage manager:
//! - `CREATE DATABASE ... STRATEGY FILE_COPY` and `ALTER DATABASE ... SET
//!   TABLESPACE` copy a database's directory as files, so an offloaded
//!   relation's punched holes would arrive as empty pages with no map to
//!   serve them: refused while the source database has offloaded relations.
//! - `DROP DATABASE` removes the directory without the storage manager's
//!   unlink: the database's maps are forgotten (WAL-logged, so standbys
//!   follow) and its objects become garbage for `yezzey_gc()`.
use crate::{errors, mapfile, wal};
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use std::ffi::{CStr, CString};

static mut PREV_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook (from _PG_init, chaining any hook loaded before us).
pub fn install() {
    // SAFETY: _PG_init runs once per process, before any utility command.
    unsafe {
        PREV_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[allow(clippy::too_many_arguments)]
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let stmt = (*pstmt).utilityStmt;
    let mut dropped = None;
    if !stmt.is_null() {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_CreatedbStmt => check_createdb(stmt.cast()),
            pg_sys::NodeTag::T_AlterDatabaseStmt => check_movedb(stmt.cast()),
            pg_sys::NodeTag::T_DropdbStmt => {
                dropped = database_oid((*stmt.cast::<pg_sys::DropdbStmt>()).dbname)
            }
            _ => {}
        }
    }
    match PREV_HOOK {
        Some(prev) => prev(
            pstmt,
            query,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
        None => pg_sys::standard_ProcessUtility(
            pstmt,
            query,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
    }
    // The directory is gone once dropdb returns (it cannot run inside a
    // transaction block, so nothing rolls the removal back).
    if let Some(db) = dropped {
        crate::fault::point("after_dropdb");
        forget_database(db);
    }
}

/// The DefElems of an options list.
unsafe fn options(list: *mut pg_sys::List) -> Vec<*mut pg_sys::DefElem> {
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize)
        .map(|i| (*(*list).elements.add(i)).ptr_value.cast())
        .collect()
}

unsafe fn option_name(d: *mut pg_sys::DefElem) -> String {
    CStr::from_ptr((*d).defname).to_string_lossy().into_owned()
}

unsafe fn option_string(d: *mut pg_sys::DefElem) -> String {
    CStr::from_ptr(pg_sys::defGetString(d))
        .to_string_lossy()
        .into_owned()
}

unsafe fn database_oid(name: *const std::ffi::c_char) -> Option<u32> {
    if name.is_null() {
        return None;
    }
    let oid = pg_sys::get_database_oid(name, true);
    (oid != pg_sys::InvalidOid).then(|| oid.to_u32())
}

unsafe fn check_createdb(stmt: *mut pg_sys::CreatedbStmt) {
    let mut template = "template1".to_string();
    let mut file_copy = false;
    for d in options((*stmt).options) {
        match option_name(d).as_str() {
            "template" => template = option_string(d),
            "strategy" => file_copy = option_string(d).eq_ignore_ascii_case("file_copy"),
            _ => {}
        }
    }
    if !file_copy {
        return;
    }
    let c = CString::new(template.clone()).unwrap_or_default();
    if let Some(db) = database_oid(c.as_ptr()) {
        refuse_if_offloaded(
            db,
            &template,
            "CREATE DATABASE with STRATEGY FILE_COPY copies data files directly, and would copy the offloaded blocks as empty pages.",
            "Use STRATEGY WAL_LOG (the default), which reads through yezzey, or bring the relations back with yezzey_load_relation() first.",
        );
    }
}

unsafe fn check_movedb(stmt: *mut pg_sys::AlterDatabaseStmt) {
    let moves = options((*stmt).options)
        .into_iter()
        .any(|d| option_name(d) == "tablespace");
    if !moves {
        return;
    }
    let name = CStr::from_ptr((*stmt).dbname)
        .to_string_lossy()
        .into_owned();
    if let Some(db) = database_oid((*stmt).dbname) {
        refuse_if_offloaded(
            db,
            &name,
            "ALTER DATABASE ... SET TABLESPACE copies data files directly, and would copy the offloaded blocks as empty pages.",
            "Move the offloaded relations with ALTER TABLE ... SET TABLESPACE, which reads through yezzey, or bring them back with yezzey_load_relation() first.",
        );
    }
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

/// Forgets every map of a database whose files are gone (WAL-logged first,
/// as load back does). Returns how many forks were forgotten.
pub fn forget_database(db: u32) -> usize {
    let forks = mapfile::forks_of_database(db);
    for m in &forks {
        wal::log_forget(m.spc, m.db, m.rel, m.fork);
        if let Err(e) = mapfile::apply_forget(m.spc, m.db, m.rel, m.fork) {
            pgrx::warning!(
                "yezzey: could not remove the map of relation file {} of dropped database {db}: {e}",
                m.rel
            );
        }
    }
    forks.len()
}
