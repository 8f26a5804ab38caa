//! SQL access to the storage manager's per-backend call counters: proof that
//! the hook is active, and a cheap way to see which calls a query makes.
use pgrx::prelude::*;

/// Storage-manager calls made by this backend since it started (or since
/// `yezzey_smgr_stats_reset()`), one row per `f_smgr` entry point.
#[pg_extern(volatile, parallel_restricted)]
fn yezzey_smgr_stats() -> TableIterator<'static, (name!(call, String), name!(count, i64))> {
    let rows: Vec<_> = yezzey_smgr_shim::call_counts()
        .into_iter()
        .map(|c| (c.call.to_string(), c.count as i64))
        .collect();
    TableIterator::new(rows)
}

/// How many relations this backend opened through yezzey's storage manager
/// (permanent relations) and through md directly (temporary relations).
#[pg_extern(volatile, parallel_restricted)]
fn yezzey_smgr_opened() -> TableIterator<'static, (name!(via_yezzey, i64), name!(via_md, i64))> {
    let (y, m) = yezzey_smgr_shim::opened();
    TableIterator::once((y as i64, m as i64))
}

/// Zeroes this backend's storage-manager counters.
#[pg_extern(volatile, parallel_restricted)]
fn yezzey_smgr_stats_reset() {
    yezzey_smgr_shim::reset_call_counts();
}
