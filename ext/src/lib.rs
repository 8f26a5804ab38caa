//! yezzey: a PostgreSQL extension that moves the files of cold relations to
//! S3-compatible object storage behind a pluggable storage manager.
//!
//! This crate is the pgrx glue: module initialisation and SQL functions.
//! The storage manager's dispatch lives in the C shim (`smgr_shim`).
use pgrx::prelude::*;

mod init;
mod stats;

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
