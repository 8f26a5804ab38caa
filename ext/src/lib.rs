//! yezzey: a PostgreSQL extension that moves the files of cold relations to
//! S3-compatible object storage behind a pluggable storage manager.
//!
//! This crate is the pgrx glue: module initialisation, settings, the WAL
//! resource manager, the offload/load/status/GC SQL functions and the Rust
//! half of the read path. The storage manager's dispatch and the shared map
//! live in the C shim (`smgr_shim`); objects, cache and S3 in `yezzey-storage`.
use pgrx::prelude::*;

mod catalog;
mod errors;
mod fault;
mod init;
mod mapfile;
mod offload;
mod remote;
mod retired;
mod settings;
mod stats;
mod status;
mod utility;
mod wal;

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
