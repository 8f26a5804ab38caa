//! yezzey: a PostgreSQL extension that moves the files of cold relations to
//! S3-compatible object storage behind a pluggable storage manager.
//!
//! This crate is the PostgreSQL layer; the state and the storage core
//! (`yezzey-storage`: objects, cache, stores, map files, lineage, the GC
//! decision) know nothing of PostgreSQL, and the storage manager's dispatch
//! and shared map are the C shim (`smgr_shim`).
//!
//! * [`api`]: the SQL functions, by what a DBA does; views and grants in `sql/`.
//! * [`ffi`]: every function the C side calls; [`remote`], [`map`],
//!   [`utility`], [`worker`] do their work.
//! * [`wal`]: the WAL resource manager and the switches it logs (offload,
//!   forget) with their redo; [`map`]: the shared map of offloaded forks
//!   and the files that are its durable image; [`lineage`]: this cluster's
//!   identity and published record; [`settings`]: GUCs and the storage
//!   handle.
//! * [`pg`], [`fds`], [`errors`]: what yezzey asks PostgreSQL, the file
//!   descriptors it reports to it, and the one way it raises errors.
use pgrx::prelude::*;

mod api;
mod backups;
mod errors;
mod fault;
mod fds;
mod ffi;
mod init;
mod lineage;
mod map;
mod pg;
mod remote;
mod settings;
mod utility;
mod wal;
mod worker;

::pgrx::pg_module_magic!();

/// Called by PostgreSQL when the library loads.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    init::init();
}

/// The extension's version, as built.
#[pg_extern]
fn yezzey_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pgrx::extension_sql_file!(
    "../../sql/views.sql",
    name = "views",
    requires = [
        yezzey_offloaded,
        yezzey_lineage_members,
        yezzey_backups_list
    ]
);
pgrx::extension_sql_file!("../../sql/grants.sql", name = "grants", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'yezzey'"]
    }
}
