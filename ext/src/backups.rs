//! Base backups this server takes, registered in the store when they start
//! (through the host's backup hooks, `ffi`), and whether each still exists.
//! The rules are `yezzey_storage::state::backups`.
use crate::settings::{self, Storage};
use crate::{errors, lineage, pg};
use pgrx::PgSqlErrorCode;
use std::sync::Mutex;
use yezzey_storage::key::{Lsn, MemberId};
use yezzey_storage::runtime::block_on;
use yezzey_storage::state::backups::{self, BackupRecord, Liveness};
use yezzey_storage::state::unix_now;
use yezzey_storage::store::{AnyStore, Location};

/// The backup this process registered and has not stopped yet (a backup
/// starts and stops in one session or walsender).
static CURRENT: Mutex<Option<BackupRecord>> = Mutex::new(None);

/// A backup started: registers it before any file is copied. An ERROR
/// aborts the backup, since garbage collection could not know about it.
pub fn started(label: &str, start_lsn: Lsn, timeline: u32) {
    if !settings::storage_configured() {
        return;
    }
    if !settings::register_backups() {
        pgrx::warning!(
            "yezzey: backup \"{label}\" is not registered (yezzey.register_backups is off): the objects it needs are kept only for yezzey.gc_retention"
        );
        return;
    }
    let rec = BackupRecord {
        member: lineage::me().member,
        system_id: pg::system_id(),
        content: settings::content_id(),
        label: label.to_string(),
        start_lsn,
        timeline,
        started_at: unix_now(),
        boot: pg::boot_id(),
        stop_lsn: None,
        stopped_at: None,
        catalogued_at: None,
    };
    let storage = settings::storage();
    if let Err(e) = block_on(backups::register(&storage.store, &rec)) {
        errors::error_detail(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            format!("yezzey cannot register the backup \"{label}\": {e}"),
            "Every base backup is registered in the object store before it copies anything, so that garbage collection keeps the objects it needs.".into(),
            "Check that the object store is reachable, or set yezzey.register_backups = off to take it unregistered (covered by yezzey.gc_retention only).",
        );
    }
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(rec);
}

/// A backup stopped: records its stop point. A failure only warns (the
/// backup is complete; its registration stays, as if it were running).
pub fn stopped(start_lsn: Lsn, stop_lsn: Lsn) {
    let Some(mut rec) = CURRENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .filter(|r| r.start_lsn == start_lsn)
    else {
        return;
    };
    rec.stop_lsn = Some(stop_lsn);
    rec.stopped_at = Some(unix_now());
    let result = settings::try_storage().and_then(|s| block_on(backups::register(&s.store, &rec)));
    if let Err(e) = result {
        pgrx::warning!(
            "yezzey: could not record that backup \"{}\" stopped: {e}; it stays registered until yezzey_backup_expire('{}')",
            rec.label,
            rec.start_lsn
        );
    }
}

/// Barman's repository, if configured: one connection, for the call only.
fn barman_repository(storage: &Storage) -> Option<AnyStore> {
    let url = settings::barman_repository()?;
    let s3 = yezzey_storage::store::S3Settings {
        max_connections: 1,
        ..storage.s3.clone()
    };
    let open = Location::parse(&url).and_then(|l| AnyStore::open(&l, &s3));
    Some(open.unwrap_or_else(|e| errors::report(e, "cannot use yezzey.barman_repository")))
}

/// The registered backups of `members` (this cluster, and for garbage
/// collection its standbys: a backup of a standby replays this cluster's
/// WAL) with what each is now. `note_catalogued`: record in a Barman
/// backup's registration when its catalogue first lists it (from then on
/// its absence there means it was deleted).
pub fn judged(
    storage: &Storage,
    members: &[MemberId],
    note_catalogued: bool,
) -> Vec<(BackupRecord, Liveness)> {
    let mut list = Vec::new();
    for m in members {
        list.extend(
            block_on(backups::list(
                &storage.store,
                pg::system_id(),
                settings::content_id(),
                *m,
            ))
            .unwrap_or_else(|e| errors::report(e, "cannot read the registered backups")),
        );
    }
    let repo = barman_repository(storage);
    let (boot, now, retention) = (pg::boot_id(), unix_now(), settings::backup_retention());
    // The repository's connection, for as long as this call holds it.
    crate::fds::transient(3, || {
        list.into_iter()
            .map(|mut rec| {
                let status = match (&repo, backups::barman_backup_id(&rec.label)) {
                    (Some(repo), Some(id)) => Some(
                        block_on(backups::barman_status(repo, id)).unwrap_or_else(|e| {
                            errors::report(
                                e,
                                "cannot read Barman's catalogue (yezzey.barman_repository)",
                            )
                        }),
                    ),
                    _ => None,
                };
                let listed = matches!(&status, Some(Some(s)) if s != "FAILED");
                if note_catalogued && listed && rec.catalogued_at.is_none() {
                    rec.catalogued_at = Some(now);
                    // Best effort: until it is noted, absence still retains it.
                    if block_on(backups::register(&storage.store, &rec)).is_err() {
                        rec.catalogued_at = None;
                    }
                }
                let here = (rec.member == lineage::me().member).then_some(boot);
                let live = backups::judge(
                    &rec,
                    here,
                    now,
                    retention,
                    status.as_ref().map(|s| s.as_deref()),
                );
                (rec, live)
            })
            .collect()
    })
}

/// Removes a registration (garbage collection then no longer keeps objects
/// for that backup).
pub fn expire(storage: &Storage, rec: &BackupRecord) {
    block_on(backups::remove(&storage.store, rec))
        .unwrap_or_else(|e| errors::report(e, "cannot remove the backup's registration"));
}
