//! What is offloaded and what it costs: per relation, per database, per
//! segment object.
use crate::map::evict;
use crate::map::shared::{self, State};
use crate::pg::{self, PgLsn};
use crate::{errors, fds};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use yezzey_storage::format::BlockRun;
use yezzey_storage::key::ObjectId;
use yezzey_storage::state::map::SegmentMeta;
use yezzey_storage::state::reoffload;

/// The offload state of one relation: `local`, `offloaded`, `partially
/// offloaded` (blocks were written or appended since the offload and are
/// local, or the offload could not free its local pages;
/// `yezzey_offload_relation` offloads them again), or `map damaged`
/// (its map file was damaged or lost: reads fail until
/// `yezzey_repair_maps()` rebuilds it), with local and remote sizes, and
/// the bytes a re-offload would upload now (the segments with anything
/// local, whole).
#[pg_extern(sql = r#"
CREATE FUNCTION yezzey_relation_status(rel regclass)
RETURNS TABLE (state text, segments int, logical_bytes bigint, local_bytes bigint, remote_bytes bigint,
               objects int, offloaded_at timestamptz, offload_lsn pg_lsn, written_by text,
               reoffload_bytes bigint)
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
        name!(offloaded_at, Option<TimestampWithTimeZone>),
        name!(offload_lsn, Option<PgLsn>),
        name!(written_by, Option<String>),
        name!(reoffload_bytes, i64),
    ),
> {
    let Some(key) = pg::relation(rel.to_u32()).and_then(|r| r.main_fork()) else {
        errors::error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("relation with OID {} has no storage", rel.to_u32()),
            "Views and partitioned tables have no files; ask about a table, an index or a partition.",
        );
    };
    let fork = shared::get(key).filter(|f| f.state != State::Pending);
    let local = fds::transient(1, || evict::local_bytes(key) as i64);
    // The storage manager refuses to size a fork whose map is broken.
    let logical = match &fork {
        Some(f) if f.state == State::Broken => local,
        _ => pg::relation::logical_bytes(rel.to_u32()) as i64,
    };
    let row = match fork {
        Some(f) if f.state == State::Broken => (
            "map damaged".to_string(),
            0,
            logical,
            local,
            0,
            0,
            None,
            None,
            None,
            0,
        ),
        None => (
            "local".to_string(),
            0,
            logical,
            local,
            0,
            0,
            None,
            None,
            None,
            logical,
        ),
        Some(f) => {
            let m = f.map;
            let nblocks = (logical / yezzey_storage::key::BLOCK_SIZE as i64) as u32;
            let segments = super::relations::segments_of(nblocks);
            let me = crate::lineage::me_if_known()
                .map(|x| x.member)
                .or(m.writer)
                .unwrap_or(yezzey_storage::key::MemberId(0));
            let policy = reoffload::Policy {
                max_layers: crate::settings::max_layers(),
            };
            // What a re-offload would upload now: whole segments, and the
            // local blocks of those that would get a layer (an unreadable
            // segment counts whole).
            let local_runs = |s: &SegmentMeta, blocks: u32| {
                fds::transient(1, || evict::local_runs(key, s.segno, s.blocks, blocks))
                    .unwrap_or_else(|_| {
                        vec![BlockRun {
                            start: 0,
                            len: blocks,
                        }]
                    })
            };
            let bs = yezzey_storage::key::BLOCK_SIZE as i64;
            let again = reoffload::plan(&m, &segments, me, policy, local_runs, ObjectId::random)
                .map_or(0, |p| {
                    let whole: i64 = p
                        .map
                        .segments
                        .iter()
                        .filter(|s| p.rewrite.contains(&s.segno))
                        .map(|s| s.blocks as i64 * bs)
                        .sum();
                    let layers: i64 = p
                        .layer
                        .iter()
                        .flat_map(|(_, runs)| runs)
                        .map(|r| r.len as i64 * bs)
                        .sum();
                    whole + layers
                });
            let state = if local > 0 || m.segments.iter().any(|s| s.written) {
                "partially offloaded"
            } else {
                "offloaded"
            };
            (
                state.to_string(),
                m.segments.len() as i32,
                logical,
                local,
                m.stored_bytes() as i64,
                m.segments.iter().map(|s| 1 + s.layers.len() as i32).sum(),
                pg::timestamptz(m.offloaded_at),
                Some(PgLsn(m.lsn)),
                m.writer.map(|w| w.to_string()),
                again,
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
        name!(offload_lsn, PgLsn),
    ),
> {
    let db = pg::my_database();
    let rows: Vec<_> = shared::of_database(db)
        .into_iter()
        .filter(|f| f.state == State::Live && f.map.key.fork == yezzey_storage::key::Fork::MAIN)
        .map(|f| {
            let m = f.map;
            (
                pg_sys::Oid::from(m.key.rel),
                pg_sys::Oid::from(m.key.spc),
                m.segments.len() as i32,
                m.stored_bytes() as i64,
                m.raw_bytes() as i64,
                m.evicted,
                PgLsn(m.lsn),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Every offloaded segment of this cluster (all databases) with the name
/// of its base object, how many layers lie over it and what they store
/// (`stored_bytes` counts the base and its layers).
#[pg_extern(stable, parallel_safe)]
#[allow(clippy::type_complexity)] // pgrx needs the row type spelled out
fn yezzey_segments() -> TableIterator<
    'static,
    (
        name!(database, pg_sys::Oid),
        name!(tablespace, pg_sys::Oid),
        name!(relfilenode, pg_sys::Oid),
        name!(fork, String),
        name!(segno, i32),
        name!(object, String),
        name!(written_by, Option<String>),
        name!(remote_blocks, i64),
        name!(raw_bytes, i64),
        name!(stored_bytes, i64),
        name!(written, bool),
        name!(offload_lsn, PgLsn),
        name!(local_bytes, i64),
        name!(layers, i32),
        name!(layer_bytes, i64),
        name!(layer_objects, Vec<String>),
    ),
> {
    let mut rows = Vec::new();
    for f in shared::all() {
        if f.state != State::Live {
            continue;
        }
        let m = f.map;
        for s in &m.segments {
            rows.push((
                pg_sys::Oid::from(m.key.db),
                pg_sys::Oid::from(m.key.spc),
                pg_sys::Oid::from(m.key.rel),
                m.key.fork.name().to_string(),
                s.segno as i32,
                m.object_name(s).relative(),
                m.writer.map(|w| w.to_string()),
                s.blocks as i64,
                s.raw_len as i64,
                s.stored_bytes() as i64,
                s.written,
                PgLsn(m.lsn),
                fds::transient(1, || evict::segment_local_bytes(m.key, s.segno) as i64),
                s.layers.len() as i32,
                s.layers.iter().map(|l| l.stored_len as i64).sum(),
                m.segment_names(s).skip(1).map(|n| n.relative()).collect(),
            ));
        }
    }
    TableIterator::new(rows)
}
