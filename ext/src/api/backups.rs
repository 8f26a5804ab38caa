//! The base backups this cluster registered, and ending a registration.
use crate::pg::{self, PgLsn};
use crate::{backups, errors, settings};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use yezzey_storage::state::backups::Liveness;

/// Every base backup this cluster registered (the view `yezzey_backups`
/// selects from this), with what keeps it: running, listed by Barman's
/// catalogue, within `yezzey.backup_retention`, or expired (collected by
/// the next `yezzey_gc()`).
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)] // pgrx needs the row type spelled out
fn yezzey_backups_list() -> TableIterator<
    'static,
    (
        name!(label, String),
        name!(start_lsn, PgLsn),
        name!(stop_lsn, Option<PgLsn>),
        name!(timeline, i64),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(stopped_at, Option<TimestampWithTimeZone>),
        name!(holds_objects, bool),
        name!(status, String),
    ),
> {
    let storage = settings::storage();
    let rows: Vec<_> = backups::judged(&storage, &[crate::lineage::me().member], false)
        .into_iter()
        .map(|(r, live)| {
            let status = match &live {
                Liveness::Running => "running".to_string(),
                Liveness::Catalogued(s) => format!("in Barman's catalogue ({s})"),
                Liveness::Retained { until } => {
                    format!("kept until unix time {until} (yezzey.backup_retention)")
                }
                Liveness::Expired(why) => format!("expired: {why}"),
            };
            (
                r.label,
                PgLsn(r.start_lsn),
                r.stop_lsn.map(PgLsn),
                r.timeline as i64,
                pg::timestamptz(r.started_at),
                r.stopped_at.and_then(pg::timestamptz),
                live.holds(),
                status,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Ends the registration of the backup that started at `start_lsn`: the
/// objects only it needed become garbage for the next `yezzey_gc()`. For
/// backups that no catalogue lists (pg_basebackup), once they are deleted.
#[pg_extern(volatile, parallel_unsafe, strict)]
fn yezzey_backup_expire(start_lsn: PgLsn) -> String {
    errors::require_superuser("expire backups");
    let storage = settings::storage();
    let Some((rec, _)) = backups::judged(&storage, &[crate::lineage::me().member], false)
        .into_iter()
        .find(|(r, _)| r.start_lsn == start_lsn.0)
    else {
        errors::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("no registered backup started at {}", start_lsn.0),
            "The view yezzey_backups lists this cluster's registered backups and their start_lsn.",
        );
    };
    backups::expire(&storage, &rec);
    format!(
        "expired backup \"{}\" (started at {})",
        rec.label, rec.start_lsn
    )
}
