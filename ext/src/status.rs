//! What is offloaded, what it costs, and garbage collection.
use crate::mapfile::{self, BLCKSZ};
use crate::retired;
use crate::settings;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use yezzey_storage::runtime::block_on;
use yezzey_storage::store::ObjectStore;

fn my_db() -> u32 {
    // SAFETY: a plain global set at connection.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Bytes the files of a fork take on local disk (holes excluded).
fn local_bytes(spc: u32, db: u32, rel: u32, fork: i32) -> i64 {
    let mut total = 0i64;
    for segno in 0.. {
        match std::fs::metadata(mapfile::segment_path(spc, db, rel, fork, segno)) {
            Ok(md) => total += md.blocks() as i64 * 512,
            Err(_) => break,
        }
    }
    total
}

/// The offload state of one relation: `local`, `offloaded`, or `partially
/// offloaded` (blocks written since offload are local again), with local
/// and remote sizes.
#[pg_extern(sql = r#"
CREATE FUNCTION yezzey_relation_status(rel regclass)
RETURNS TABLE (state text, segments int, logical_bytes bigint, local_bytes bigint, remote_bytes bigint,
               objects int, offloaded_at timestamptz, offload_lsn bigint)
STABLE PARALLEL SAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
#[allow(clippy::type_complexity)] // pgrx needs the row type spelled out
fn yezzey_relation_status(
    rel: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(state, String),
        name!(segments, i32),
        name!(logical_bytes, i64),
        name!(local_bytes, i64),
        name!(remote_bytes, i64),
        name!(objects, i32),
        name!(offloaded_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(offload_lsn, Option<i64>),
    ),
> {
    let Some((spc, db, relnum)) =
        crate::catalog::relation(rel.to_u32()).and_then(|r| Some((r.spc, r.db, r.relnumber?)))
    else {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            "relation has no storage"
        );
    };
    let logical = crate::catalog::relation_size(rel.to_u32());
    let local = local_bytes(spc, db, relnum, 0);
    let row = match mapfile::read(spc, db, relnum, 0) {
        None => ("local".to_string(), 0, logical, local, 0, 0, None, None),
        Some(m) => {
            let remote_blocks: u64 = m.segments.iter().map(|s| s.blocks as u64).sum();
            let state =
                if remote_blocks > 0 && (local as u64) < remote_blocks * BLCKSZ / 64 + 64 * 1024 {
                    "offloaded"
                } else {
                    "partially offloaded"
                };
            let at = pgrx::datum::TimestampWithTimeZone::try_from(
                // Unix seconds -> PostgreSQL microseconds since 2000-01-01.
                (m.offloaded_at - 946_684_800) * 1_000_000,
            )
            .ok();
            (
                state.to_string(),
                m.segments.len() as i32,
                logical,
                local,
                m.stored_bytes() as i64,
                m.segments.len() as i32,
                at,
                Some(m.lsn as i64),
            )
        }
    };
    TableIterator::once(row)
}

/// Every offloaded relation fork of the current database (the view
/// `yezzey_offloaded_relations` selects from this).
#[pg_extern(stable, parallel_safe)]
fn yezzey_offloaded() -> TableIterator<
    'static,
    (
        name!(relfilenode, pg_sys::Oid),
        name!(tablespace, pg_sys::Oid),
        name!(segments, i32),
        name!(remote_bytes, i64),
        name!(raw_bytes, i64),
        name!(evicted, bool),
        name!(offload_lsn, i64),
    ),
> {
    let db = my_db();
    let rows: Vec<_> = mapfile::read_all()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|m| m.db == db && m.fork == 0)
        .map(|m| {
            (
                pg_sys::Oid::from(m.rel),
                pg_sys::Oid::from(m.spc),
                m.segments.len() as i32,
                m.stored_bytes() as i64,
                m.segments.iter().map(|s| s.raw_len as i64).sum(),
                m.evicted,
                m.lsn as i64,
            )
        })
        .collect();
    TableIterator::new(rows)
}

pgrx::extension_sql!(
    r#"
CREATE VIEW yezzey_offloaded_relations AS
SELECT pg_filenode_relation(CASE WHEN o.tablespace = (SELECT dattablespace FROM pg_database
                                                      WHERE datname = current_database())
                                 THEN 0 ELSE o.tablespace END, o.relfilenode) AS relation,
       o.segments, o.raw_bytes, o.remote_bytes, o.evicted, o.offload_lsn
  FROM yezzey_offloaded() o;
COMMENT ON VIEW yezzey_offloaded_relations IS 'Relations of this database whose files are (partly) in object storage';
REVOKE EXECUTE ON FUNCTION yezzey_offload_relation(regclass, bool) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION yezzey_load_relation(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION yezzey_gc(bool) FROM PUBLIC;
"#,
    name = "views",
    finalize
);

/// Whether a database exists, from the catalog as it is now (not from the
/// transaction's snapshot: a database created since must count).
fn database_exists(db: u32) -> bool {
    // SAFETY: a syscache probe from a backend inside a transaction.
    unsafe {
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(db),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
        )
    }
}

/// The oldest WAL position a standby may still need: physical slots'
/// restart_lsn and connected standbys' replay_lsn (0 when one has not
/// reported yet). None when there are no standbys to wait for.
fn standby_horizon() -> Option<u64> {
    crate::catalog::select_i64(
        "SELECT (min(lsn) - '0/0'::pg_lsn)::bigint FROM (
             SELECT restart_lsn AS lsn FROM pg_replication_slots
              WHERE slot_type = 'physical' AND restart_lsn IS NOT NULL
             UNION ALL
             SELECT coalesce(replay_lsn, '0/0') FROM pg_stat_replication) s",
    )
    .unwrap_or_else(|e| error!("yezzey: cannot read replication state: {e}"))
    .map(|l| l as u64)
}

/// Deletes objects that nothing references: not the map of any relation of
/// this cluster (all databases), and not an upload still in progress. An
/// object whose last reference was dropped (a retired object) is kept
/// until every standby has replayed past the drop and
/// `yezzey.gc_retention` has passed, for backups and PITR. Maps of
/// databases that no longer exist (dropped while yezzey was not loaded) are
/// forgotten first. Safe to run at any time.
#[pg_extern(volatile, parallel_unsafe)]
fn yezzey_gc(
    dry_run: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(deleted_objects, i64),
        name!(deleted_bytes, i64),
        name!(kept_objects, i64),
        name!(held_objects, i64),
    ),
> {
    crate::errors::require_superuser("run yezzey_gc");
    // SAFETY: a plain query of the xlog state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        crate::errors::error(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "yezzey_gc cannot run during recovery".into(),
            "Run it on the primary; standbys read the same objects.",
        );
    }
    let storage = settings::storage();
    let mut keep: HashSet<String> = HashSet::new();
    let mut dead_maps = Vec::new();
    // Maps first, then the catalog: a map's database committed before the
    // map was written, so it is visible to the later lookup unless dropped.
    for m in mapfile::read_all() {
        match m {
            Ok(m) if !database_exists(m.db) => dead_maps.push(m),
            Ok(m) => keep.extend(m.segments.iter().map(|s| m.object_name(s).relative())),
            Err(e) => {
                error!("yezzey: refusing to collect garbage with an unreadable map file: {e}")
            }
        }
    }
    if !dry_run && !dead_maps.is_empty() {
        crate::utility::forget_maps(&dead_maps);
        let mut dbs: Vec<u32> = dead_maps.iter().map(|m| m.db).collect();
        dbs.sort_unstable();
        dbs.dedup();
        notice!(
            "yezzey: forgot {} map(s) of databases that no longer exist (OIDs {dbs:?})",
            dead_maps.len()
        );
    }
    let mut stale_intents = Vec::new();
    for (path, intent, alive) in mapfile::intents() {
        if alive {
            keep.insert(intent.name);
        } else {
            stale_intents.push(path);
        }
    }
    let mut retired: HashMap<String, (Option<PathBuf>, retired::Retired)> = retired::all()
        .into_iter()
        .map(|(p, r)| (r.name.clone(), (Some(p), r)))
        .collect();
    if dry_run {
        // What forgetting the dead maps would record.
        for m in &dead_maps {
            for (_, r) in retired::records_now(m, &m.segments) {
                retired.insert(r.name.clone(), (None, r));
            }
        }
    }
    let horizon = standby_horizon();
    let retention = settings::gc_retention();
    let now = mapfile::unix_now();
    // SAFETY: pg_control's system identifier.
    let prefix = format!(
        "{}/seg{}/",
        unsafe { pg_sys::GetSystemIdentifier() },
        settings::content_id()
    );
    let listed = block_on(storage.store.list(&prefix))
        .unwrap_or_else(|e| crate::errors::report(e, "yezzey_gc cannot list objects"));
    let (mut deleted, mut bytes, mut kept) = (0i64, 0i64, 0i64);
    let (mut for_standby, mut for_retention, mut held_bytes) = (0i64, 0i64, 0u64);
    let mut listed_names = HashSet::new();
    for o in listed {
        listed_names.insert(o.name.clone());
        if keep.contains(&o.name) || !o.name.ends_with(".yz") {
            kept += 1;
            continue;
        }
        let record = retired.get(&o.name);
        if let Some((_, r)) = record {
            let standby_behind = horizon.is_some_and(|h| h < r.lsn);
            let too_recent = now - r.at < retention;
            if standby_behind || too_recent {
                for_standby += standby_behind as i64;
                for_retention += (!standby_behind) as i64;
                held_bytes += o.size;
                continue;
            }
        }
        if !dry_run {
            block_on(storage.store.delete(&o.name))
                .unwrap_or_else(|e| crate::errors::report(e, "yezzey_gc cannot delete"));
            if let Some((Some(p), _)) = record {
                let _ = std::fs::remove_file(p);
            }
        }
        deleted += 1;
        bytes += o.size as i64;
    }
    if !dry_run {
        for p in stale_intents {
            let _ = std::fs::remove_file(p);
        }
        // Records of objects that are gone from the store.
        for (name, (path, _)) in &retired {
            if let Some(p) = path.as_ref().filter(|_| !listed_names.contains(name)) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let held = for_standby + for_retention;
    if held > 0 {
        crate::errors::notice(
            format!(
                "yezzey: kept {held} unreferenced object(s) ({:.1} MB) that a standby or a backup may still need",
                held_bytes as f64 / (1024.0 * 1024.0)
            ),
            format!(
                "{for_standby} wait for a standby (or physical replication slot) to pass the WAL position at which they were dropped; {for_retention} were dropped less than yezzey.gc_retention ({retention} s) ago."
            ),
            "A later yezzey_gc() deletes them once that has passed; drop replication slots that are no longer used.",
        );
    }
    TableIterator::once((deleted, bytes, kept, held))
}

/// Empties the local frame cache (every process's reads fetch from the
/// objects again). The remedy for PostgreSQL's "invalid page" error on an
/// offloaded relation: with data checksums on, cache hits rely on
/// PostgreSQL's page checksums rather than hashing every block again.
#[pg_extern(volatile, parallel_unsafe)]
fn yezzey_cache_clear() -> TableIterator<'static, (name!(entries, i64), name!(bytes, i64))> {
    crate::errors::require_superuser("run yezzey_cache_clear");
    let storage = settings::storage();
    let Some(cache) = storage.reader.cache() else {
        return TableIterator::once((0, 0));
    };
    let (n, bytes) = cache
        .clear()
        .unwrap_or_else(|e| crate::errors::report(e, "yezzey_cache_clear cannot empty the cache"));
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
