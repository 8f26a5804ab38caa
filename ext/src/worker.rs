//! The lineage worker: one background worker per server that publishes
//! this cluster's lineage record (see `lineage`): on a hot standby (or a
//! restore replaying archived WAL) as soon as it is consistent and then
//! every ten seconds its replay position moved, so that garbage collection in
//! the primary keeps what it has yet to replay; on a primary when it
//! leaves recovery (the birth of a restored copy, a clone or a promoted
//! standby), then again within a minute whenever what it holds shrank,
//! and every ten minutes anyway. A store that cannot be reached is retried
//! every ten seconds, with one warning. A standby with `hot_standby = off`
//! runs no background workers: while it is disconnected, only
//! `yezzey.gc_retention` protects what it has yet to replay.
use crate::{lineage, settings};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

const CHECK: Duration = Duration::from_secs(60);
/// In recovery the replay position is what others wait for.
const RECOVERY_CHECK: Duration = Duration::from_secs(10);
const REFRESH: Duration = Duration::from_secs(600);
const RETRY: Duration = Duration::from_secs(10);

/// Registers the worker (from `_PG_init`, while preloading).
pub fn register() {
    BackgroundWorkerBuilder::new("yezzey lineage")
        .set_type("yezzey lineage")
        .set_library("yezzey")
        .set_function("yezzey_lineage_worker_main")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RETRY))
        .load();
}

/// The worker's life (called through `ffi`).
pub fn main() {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let mut last: Option<(u64, Instant)> = None;
    let mut failing = false;
    loop {
        if BackgroundWorker::sighup_received() {
            crate::pg::reload_config();
        }
        let wait = match publish_if_due(&mut last) {
            Ok(()) => {
                if failing {
                    pgrx::log!("yezzey: this cluster's lineage record is published again");
                }
                failing = false;
                if crate::pg::in_recovery() {
                    RECOVERY_CHECK
                } else {
                    CHECK
                }
            }
            Err(e) => {
                if !failing {
                    pgrx::warning!("yezzey: cannot publish this cluster's lineage record: {e}; retrying every {}s", RETRY.as_secs());
                }
                failing = true;
                RETRY
            }
        };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
    }
}

fn publish_if_due(last: &mut Option<(u64, Instant)>) -> Result<(), String> {
    if !settings::storage_configured() || lineage::me_if_known().is_none() {
        return Ok(());
    }
    let storage = settings::try_storage().map_err(|e| e.to_string())?;
    let holds = crate::map::holds::holds(lineage::me().member);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    holds.hash(&mut h);
    // In recovery, the replay position is what others need to know.
    if crate::pg::in_recovery() {
        crate::pg::current_lsn().0.hash(&mut h);
    }
    let digest = h.finish();
    if last.is_some_and(|(d, at)| d == digest && at.elapsed() < REFRESH) {
        return Ok(());
    }
    lineage::publish(&storage, holds).map_err(|e| match e {
        lineage::PublishError::Forgotten(by) => {
            format!("this cluster was forgotten by lineage member {by}")
        }
        lineage::PublishError::Store(e) => e.to_string(),
    })?;
    *last = Some((digest, Instant::now()));
    Ok(())
}
