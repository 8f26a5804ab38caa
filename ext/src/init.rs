//! Library initialisation: yezzey only works when preloaded, because the
//! storage manager, the WAL resource manager and the lineage worker must be
//! registered in the postmaster before any process that does I/O is forked.
use pgrx::PgSqlErrorCode;

pub fn init() {
    if !crate::pg::preloading() {
        crate::errors::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "yezzey must be loaded via shared_preload_libraries".into(),
            "Add 'yezzey' to shared_preload_libraries in postgresql.conf and restart the server.",
        );
    }
    crate::settings::define();
    crate::ffi::install();
    crate::worker::register();
}
