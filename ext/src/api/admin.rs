//! Administration: the frame cache, counters, and this cluster's lineage.
use crate::pg::{self, PgLsn};
use crate::{errors, lineage, settings};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use yezzey_storage::key::MemberId;
use yezzey_storage::state::lineage::MemberState;

/// Empties the local frame cache (every process's reads fetch from the
/// objects again). The remedy for PostgreSQL's "invalid page" error on an
/// offloaded relation: with data checksums on, cache hits rely on
/// PostgreSQL's page checksums rather than hashing every block again.
#[pg_extern(volatile, parallel_unsafe)]
fn yezzey_cache_clear() -> TableIterator<'static, (name!(entries, i64), name!(bytes, i64))> {
    errors::require_superuser("run yezzey_cache_clear");
    let storage = settings::storage();
    let Some(cache) = storage.reader.cache() else {
        return TableIterator::once((0, 0));
    };
    let (n, bytes) = crate::fds::transient(2, || cache.clear())
        .unwrap_or_else(|e| errors::report(e, "yezzey_cache_clear cannot empty the cache"));
    TableIterator::once((n as i64, bytes as i64))
}

/// This backend's remote reads and the shared cache's counters.
#[pg_extern(volatile, parallel_restricted)]
fn yezzey_remote_stats() -> TableIterator<'static, (name!(stat, String), name!(value, i64))> {
    use std::sync::atomic::Ordering::Relaxed;
    let storage = settings::storage();
    let s = storage.reader.stats();
    let mut rows = vec![
        ("gets".to_string(), s.gets.load(Relaxed) as i64),
        ("get_bytes".into(), s.get_bytes.load(Relaxed) as i64),
        (
            "frames_fetched".into(),
            s.frames_fetched.load(Relaxed) as i64,
        ),
        (
            "frames_prefetched".into(),
            s.frames_prefetched.load(Relaxed) as i64,
        ),
        ("cache_hits".into(), s.cache_hits.load(Relaxed) as i64),
        ("memory_hits".into(), s.memory_hits.load(Relaxed) as i64),
        ("peer_frames".into(), s.peer_frames.load(Relaxed) as i64),
        (
            "max_connections".into(),
            storage.store.max_connections() as i64,
        ),
    ];
    if let Some(c) = storage.reader.cache() {
        let cs = c.stats();
        rows.extend([
            ("cache_used_bytes".to_string(), cs.used_bytes as i64),
            ("cache_limit_bytes".into(), cs.limit_bytes as i64),
            ("cache_shared_hits".into(), cs.hits as i64),
            ("cache_shared_misses".into(), cs.misses as i64),
            ("cache_evictions".into(), cs.evictions as i64),
        ]);
    }
    TableIterator::new(rows)
}

/// The clusters of this cluster's lineage (the view `yezzey_lineage`
/// selects from this): every published record, and this cluster itself.
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)] // pgrx needs the row type spelled out
fn yezzey_lineage_members() -> TableIterator<
    'static,
    (
        name!(member, String),
        name!(parent, Option<String>),
        name!(is_self, bool),
        name!(state, String),
        name!(origin, String),
        name!(published_at, Option<TimestampWithTimeZone>),
        name!(timeline, Option<i64>),
        name!(lsn, Option<PgLsn>),
        name!(held_objects, i64),
        name!(forgotten_by, Option<String>),
    ),
> {
    let storage = settings::storage();
    let me = lineage::me_if_known().map(|m| m.member);
    let rows: Vec<_> = lineage::members(&storage)
        .into_iter()
        .map(|r| {
            let published = r.published_at != 0;
            (
                r.member.to_string(),
                r.parent.map(|p| p.to_string()),
                Some(r.member) == me,
                match (r.state, published) {
                    (MemberState::Forgotten, _) => "forgotten",
                    (MemberState::Live, true) => "live",
                    (MemberState::Live, false) => "unpublished",
                }
                .to_string(),
                r.origin,
                published.then(|| pg::timestamptz(r.published_at)).flatten(),
                published.then_some(r.timeline as i64),
                published.then_some(PgLsn(r.lsn)),
                r.holds.len() as i64,
                r.forgotten_by.map(|m| m.to_string()),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Declares another cluster of the lineage gone for good: it no longer
/// holds anything, and the objects it wrote become garbage for any
/// cluster's `yezzey_gc()` once nothing else needs them.
#[pg_extern(volatile, parallel_unsafe, strict)]
fn yezzey_forget_member(member: &str) -> String {
    errors::require_superuser("forget lineage members");
    let Some(id) = MemberId::parse(member.trim()) else {
        errors::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("\"{member}\" is not a lineage member id"),
            "Member ids are 16 hexadecimal digits, as the view yezzey_lineage shows them.",
        );
    };
    let storage = settings::storage();
    let tomb = lineage::forget(&storage, id);
    format!("forgot lineage member {}", tomb.member)
}

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
