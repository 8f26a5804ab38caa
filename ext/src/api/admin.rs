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
        name!(in_recovery, bool),
        name!(slot, Option<String>),
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
                r.in_recovery,
                r.slot,
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

/// Rebuilds every damaged or missing map of this server from the objects
/// its fork has in the store (object names carry the relation, fork and
/// segment; trailers the lengths): one row per broken map, with what
/// became of it. A relation whose map is broken fails every read with
/// SQLSTATE XX001 until then; garbage collection refuses to run.
#[pg_extern(sql = r#"
CREATE FUNCTION yezzey_repair_maps()
RETURNS TABLE (relation_file text, fork text, segments int, outcome text)
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn yezzey_repair_maps() -> TableIterator<
    'static,
    (
        name!(relation_file, String),
        name!(fork, String),
        name!(segments, i32),
        name!(outcome, String),
    ),
> {
    errors::require_superuser("repair yezzey's maps");
    crate::map::repair::require_identity();
    let storage = settings::storage();
    let rows: Vec<_> = crate::map::repair::repair_all(&storage)
        .into_iter()
        .map(|o| {
            let path = pg::segment_path(o.key, 0);
            let path = path
                .strip_prefix(pg::data_dir())
                .unwrap_or(&path)
                .display()
                .to_string();
            use crate::map::repair::Repaired;
            let (segments, outcome) = match o.result {
                Ok(Repaired::Retired(m)) => (
                    m.segments.len() as i32,
                    "the relation is gone: its objects were retired and the damaged file removed"
                        .to_string(),
                ),
                Ok(Repaired::Rebuilt(m)) => {
                    (m.segments.len() as i32, "rebuilt from the store".to_string())
                }
                Ok(Repaired::Stale) => (
                    0,
                    "the map was stale: every object of it was retired here (loaded back or dropped); the relation is local"
                        .to_string(),
                ),
                Err(e) => (0, format!("not repaired: {e}")),
            };
            (path, o.key.fork.name().to_string(), segments, outcome)
        })
        .collect();
    TableIterator::new(rows)
}

/// The shared map of offloaded segments: how much it holds and takes.
#[pg_extern(volatile, parallel_restricted)]
fn yezzey_map_usage() -> TableIterator<'static, (name!(stat, String), name!(value, i64))> {
    let u = yezzey_smgr_shim::map::usage();
    TableIterator::new(vec![
        ("bytes".to_string(), u.bytes as i64),
        ("limit_bytes".into(), u.limit as i64),
        ("forks".into(), u.forks as i64),
        ("segments".into(), u.segments as i64),
        ("broken_forks".into(), u.broken as i64),
        ("pending_forks".into(), u.pending as i64),
        ("dirty_forks".into(), u.dirty as i64),
        ("retiring_objects".into(), u.retiring as i64),
    ])
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
