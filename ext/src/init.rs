//! Library initialisation: yezzey only works when preloaded, because the
//! storage manager, the WAL resource manager and the lineage worker must be
//! registered in the postmaster before any process that does I/O is forked.
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

pub fn init() {
    // SAFETY: reading a PostgreSQL global from the main thread.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !preloading {
        crate::errors::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "yezzey must be loaded via shared_preload_libraries".into(),
            "Add 'yezzey' to shared_preload_libraries in postgresql.conf and restart the server.",
        );
    }
    crate::settings::define();
    // SAFETY: we are inside shared_preload_libraries processing (checked above).
    unsafe {
        yezzey_smgr_shim::install();
    }
    crate::wal::register();
    crate::utility::install();
    crate::worker::register();
}
