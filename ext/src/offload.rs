//! `yezzey_offload_relation` and `yezzey_load_relation`.
//!
//! Offload of one relation, holding ExclusiveLock (plain readers continue;
//! writers, `SELECT ... FOR UPDATE`, which writes row locks into pages,
//! and VACUUM wait):
//!   1. flush its dirty buffers and fsync its files;
//!   2. per segment file of the main fork: record an upload intent, upload
//!      the file as one object;
//!   3. WAL-log the new map (OFFLOAD) and flush it;
//!   4. publish the map (shared memory, then `pg_yezzey/map/*.json`);
//!   5. punch the segments' blocks out of the local files (same size, no
//!      space) and mark the map file evicted; drop the intents.
//!
//! A crash before 3 leaves the relation local and objects that GC removes
//! (their intents are from a dead server); after 3, redo or startup finishes
//! 4 and 5. Readers never see a hole that is not in the map: the map is
//! published before any hole exists, and the read path consults the map
//! after reading the local file.
//!
//! Load back rewrites every remote block through the buffer manager as a
//! WAL-logged full page (so standbys and crash recovery get the data too,
//! not only this server's files), flushes and fsyncs, then WAL-logs FORGET
//! and drops the map; a crash in between leaves a relation whose local
//! blocks win, and loading again finishes the job.
//!
//! What is offloaded: the main fork of the relation, its TOAST table and
//! TOAST index, and (unless `with_indexes => false`) its indexes. The free
//! space map and visibility map stay local: they are small and read
//! constantly. A partitioned table offloads each leaf partition.
use crate::catalog;
use crate::errors;
use crate::fault;
use crate::mapfile::{self, ForkMap, SegmentMeta, BLCKSZ};
use crate::settings;
use crate::wal;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use std::fs::File;
use std::time::Instant;
use yezzey_smgr_shim::map;
use yezzey_storage::format::new_object_id;
use yezzey_storage::names::ObjectName;
use yezzey_storage::runtime::block_on;

const MAIN_FORK: i32 = 0;
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
const EXCLUSIVE_LOCK: i32 = 7;

/// A relation with storage that an offload or load acts on.
#[derive(Debug, Clone)]
struct Target {
    oid: u32,
    name: String,
    relkind: String,
    spc: u32,
    db: u32,
    rel: u32,
}

fn describe(oid: u32) -> Target {
    let Some(info) = catalog::relation(oid) else {
        errors::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {oid} does not exist"),
            "It may have been dropped concurrently.",
        );
    };
    let catalog::RelInfo {
        name,
        relkind,
        persistence,
        spc,
        db,
        relnumber,
    } = info;
    if oid < FIRST_NORMAL_OBJECT_ID {
        errors::error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("cannot offload \"{name}\": it is a system catalog"),
            "Only user relations can be offloaded.",
        );
    }
    match persistence.as_str() {
        "t" => errors::error(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot offload temporary relation \"{name}\""),
            "Temporary relations live only as long as their session.",
        ),
        "u" => errors::error(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot offload unlogged relation \"{name}\""),
            "Unlogged relations are reset after a crash; make it logged first: ALTER TABLE ... SET LOGGED.",
        ),
        _ => {}
    }
    // A partitioned table has no files of its own; expand() offloads its leaves.
    let relnumber = if relkind == "p" { Some(0) } else { relnumber };
    let Some(relnumber) =
        relnumber.filter(|_| matches!(relkind.as_str(), "r" | "m" | "t" | "i" | "p"))
    else {
        errors::error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "cannot offload \"{name}\": it has no storage of its own (relkind '{relkind}')"
            ),
            "Offload tables, materialized views, indexes or partitioned tables.",
        );
    };
    Target {
        oid,
        name,
        relkind,
        spc,
        db,
        rel: relnumber,
    }
}

fn oids(query: String) -> Vec<u32> {
    Spi::connect(|c| {
        let t = c.select(&query, None, &[])?;
        let mut v = Vec::new();
        for r in t {
            if let Some(o) = r.get::<i64>(1)? {
                v.push(o as u32);
            }
        }
        Ok::<_, pgrx::spi::Error>(v)
    })
    .unwrap_or_else(|e| error!("yezzey: catalog lookup failed: {e}"))
}

/// The relation, its TOAST table and index, and optionally its indexes;
/// for a partitioned table, the same for every leaf partition.
fn expand(oid: u32, with_indexes: bool) -> Vec<Target> {
    let top = describe(oid);
    let tables: Vec<u32> = if top.relkind == "p" {
        oids(format!(
            "SELECT relid::bigint FROM pg_partition_tree({oid}) t JOIN pg_class c ON c.oid = t.relid
              WHERE t.isleaf AND c.relkind IN ('r', 'm') ORDER BY 1"
        ))
    } else {
        vec![oid]
    };
    let mut out = Vec::new();
    for t in tables {
        let target = if t == oid { top.clone() } else { describe(t) };
        out.push(target);
        let toast = oids(format!(
            "SELECT reltoastrelid::bigint FROM pg_class WHERE oid = {t} AND reltoastrelid <> 0"
        ));
        for tt in &toast {
            out.push(describe(*tt));
            out.extend(
                oids(format!(
                    "SELECT indexrelid::bigint FROM pg_index WHERE indrelid = {tt}"
                ))
                .into_iter()
                .map(describe),
            );
        }
        if with_indexes {
            out.extend(
                oids(format!(
                    "SELECT i.indexrelid::bigint FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                      WHERE i.indrelid = {t} AND c.relkind = 'i' ORDER BY 1"
                ))
                .into_iter()
                .map(describe),
            );
        }
    }
    out.retain(|t| t.relkind != "p");
    out
}

/// Flushes the relation's dirty buffers and fsyncs its main fork; returns its length in blocks.
fn flush(t: &Target) -> u32 {
    // SAFETY: the relation is locked by us; standard relcache/smgr calls.
    unsafe {
        let rel = pg_sys::relation_open(t.oid.into(), pg_sys::NoLock as i32);
        pg_sys::FlushRelationBuffers(rel);
        let smgr = pg_sys::RelationGetSmgr(rel);
        let nblocks = pg_sys::smgrnblocks(smgr, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::smgrimmedsync(smgr, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        nblocks
    }
}

/// Pages of a table that the visibility map does not show all-frozen.
/// Reading such pages later sets hint bits, which writes them back locally.
fn unfrozen_pages(t: &Target, nblocks: u32) -> u32 {
    if !matches!(t.relkind.as_str(), "r" | "m" | "t") {
        return 0;
    }
    let (mut visible, mut frozen) = (0, 0);
    // SAFETY: the relation is locked by us; a read of its visibility map.
    unsafe {
        let rel = pg_sys::relation_open(t.oid.into(), pg_sys::NoLock as i32);
        pg_sys::visibilitymap_count(rel, &mut visible, &mut frozen);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
    }
    nblocks.saturating_sub(frozen)
}

fn lock(t: &Target) {
    // SAFETY: acquiring a heavyweight lock held until transaction end.
    unsafe { pg_sys::LockRelationOid(t.oid.into(), EXCLUSIVE_LOCK) };
}

fn segments_of(nblocks: u32) -> Vec<(u32, u32)> {
    let per = map::blocks_per_segment();
    (0..nblocks.div_ceil(per))
        .map(|s| (s, (nblocks - s * per).min(per)))
        .collect()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct Offloaded {
    segments: i32,
    raw: u64,
    stored: u64,
}

fn offload_one(t: &Target) -> Offloaded {
    let storage = settings::storage();
    let nblocks = flush(t);
    let unfrozen = unfrozen_pages(t, nblocks);
    if unfrozen > 0 {
        errors::notice(
            format!("yezzey: {unfrozen} of {nblocks} pages of \"{}\" are not all-frozen", t.name),
            "Reading those rows after the offload sets their hint bits, which writes the pages back to local disk: correct, but they take local space again.".into(),
            "Run VACUUM (FREEZE) on the table before offloading it.",
        );
    }
    let segs = segments_of(nblocks);
    if let Some(first) = segs.first() {
        let dir = mapfile::segment_path(t.spc, t.db, t.rel, MAIN_FORK, first.0);
        if let Err(e) = mapfile::check_hole_punching(dir.parent().unwrap()) {
            errors::error(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("cannot offload \"{}\": the file system under {} cannot punch holes: {e}", t.name, dir.parent().unwrap().display()),
                "yezzey frees local space with fallocate(PUNCH_HOLE); use ext4, xfs, btrfs or tmpfs for the data directory.",
            );
        }
    }
    // SAFETY: pg_control's system identifier.
    let system_id = unsafe { pg_sys::GetSystemIdentifier() };
    let mut metas = Vec::new();
    let mut uploaded: Vec<ObjectName> = Vec::new();
    let cleanup = |uploaded: &[ObjectName]| {
        for n in uploaded {
            let _ = block_on(yezzey_storage::store::ObjectStore::delete(
                &*storage.store,
                &n.relative(),
            ));
            mapfile::drop_intent(&n.object_id);
        }
    };
    for (i, &(segno, blocks)) in segs.iter().enumerate() {
        let name =
            mapfile::local_object_name(t.spc, t.db, t.rel, MAIN_FORK, segno, new_object_id());
        if let Err(e) = mapfile::add_intent(&name) {
            cleanup(&uploaded);
            errors::report(
                yezzey_storage::Error::io("pg_yezzey/intents", e),
                &format!("cannot offload \"{}\"", t.name),
            );
        }
        uploaded.push(name);
        fault::point("before_upload");
        let path = mapfile::segment_path(t.spc, t.db, t.rel, MAIN_FORK, segno);
        let started = Instant::now();
        let result = File::open(&path)
            .map_err(|e| yezzey_storage::Error::io(&path, e))
            .and_then(|f| {
                use std::io::Read;
                let input = f.take(blocks as u64 * BLCKSZ);
                block_on(yezzey_storage::upload::upload(
                    &storage.store,
                    &name.relative(),
                    name.object_id,
                    &storage.keys,
                    &storage.upload,
                    input,
                    |_| {},
                ))
            });
        let up = match result {
            Ok(up) => up,
            Err(e) => {
                cleanup(&uploaded);
                errors::report(
                    e,
                    &format!(
                        "could not offload segment {segno} of \"{}\" to {}",
                        t.name, storage.describe
                    ),
                );
            }
        };
        if up.trailer.raw_len != blocks as u64 * BLCKSZ {
            cleanup(&uploaded);
            error!(
                "yezzey: segment {segno} of \"{}\" changed length during upload",
                t.name
            );
        }
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        notice!(
            "yezzey: offloaded \"{}\" segment {}/{}: {:.1} MB -> {:.1} MB ({:.0} MB/s)",
            t.name,
            i + 1,
            segs.len(),
            mb(up.trailer.raw_len),
            mb(up.stored_len),
            mb(up.trailer.raw_len) / secs
        );
        metas.push(SegmentMeta {
            segno,
            blocks,
            object_id: hex::encode(name.object_id),
            raw_len: up.trailer.raw_len,
            stored_len: up.stored_len,
            written: false,
        });
    }
    if metas.is_empty() {
        return Offloaded {
            segments: 0,
            raw: 0,
            stored: 0,
        };
    }
    fault::point("after_upload");
    let mut m = ForkMap {
        system_id,
        content: settings::content_id(),
        spc: t.spc,
        db: t.db,
        rel: t.rel,
        fork: MAIN_FORK,
        offloaded_at: mapfile::unix_now(),
        lsn: 0,
        evicted: false,
        segments: metas,
    };
    // SAFETY: the insert position is only used as a label of the offload.
    m.lsn = unsafe { pg_sys::GetXLogInsertRecPtr() };
    wal::log_offload(&m);
    fault::point("after_wal");
    if let Err(e) = mapfile::apply_offload(&m) {
        // The WAL record stands: redo or the next start finishes the eviction.
        warning!(
            "yezzey: \"{}\" is offloaded but its local space was not freed yet: {e}",
            t.name
        );
    }
    for n in &uploaded {
        mapfile::drop_intent(&n.object_id);
    }
    Offloaded {
        segments: m.segments.len() as i32,
        raw: m.segments.iter().map(|s| s.raw_len).sum(),
        stored: m.stored_bytes(),
    }
}

/// Uploads a relation's files to object storage and frees their local space;
/// queries keep working unchanged. Returns one row per relation offloaded
/// (the table, its TOAST table and index, and its indexes).
#[pg_extern(sql = r#"
CREATE FUNCTION yezzey_offload_relation(rel regclass, with_indexes bool DEFAULT true)
RETURNS TABLE (relation text, segments int, local_bytes bigint, remote_bytes bigint)
VOLATILE PARALLEL UNSAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn yezzey_offload_relation(
    rel: pg_sys::Oid,
    with_indexes: default!(bool, true),
) -> TableIterator<
    'static,
    (
        name!(relation, String),
        name!(segments, i32),
        name!(local_bytes, i64),
        name!(remote_bytes, i64),
    ),
> {
    errors::require_superuser("offload relations");
    settings::storage();
    let targets = expand(rel.to_u32(), with_indexes);
    let mut rows = Vec::new();
    for t in &targets {
        lock(t);
    }
    for (i, t) in targets.iter().enumerate() {
        if map::has_remote(t.spc, t.db, t.rel) {
            if i == 0 && t.oid == rel.to_u32() {
                errors::error(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("relation \"{}\" is already offloaded", t.name),
                    "Load it back first with yezzey_load_relation() to offload it again.",
                );
            }
            notice!("yezzey: \"{}\" is already offloaded, skipping", t.name);
            continue;
        }
        let o = offload_one(t);
        rows.push((t.name.clone(), o.segments, o.raw as i64, o.stored as i64));
    }
    TableIterator::new(rows)
}

/// Rewrites every block of the remote ranges through the buffer manager:
/// read (from the object), mark dirty and WAL-log as a full page, so the
/// local files, crash recovery and standbys all get the data. The writes go
/// through the storage manager, which marks each segment written before its
/// first block lands. Returns the number of blocks rewritten.
fn load_one(t: &Target) -> i64 {
    let Some(m) = mapfile::read(t.spc, t.db, t.rel, MAIN_FORK) else {
        return 0;
    };
    // Heap pages keep pd_lower/pd_upper exact; for other kinds log the whole page.
    let page_std = matches!(t.relkind.as_str(), "r" | "m" | "t");
    let per_segment = map::blocks_per_segment();
    let mut loaded = 0i64;
    // SAFETY: the relation is locked by us; the standard pattern of
    // log_newpage_range(): buffer lock, critical section, dirty, log.
    unsafe {
        let rel = pg_sys::relation_open(t.oid.into(), pg_sys::NoLock as i32);
        let strategy = pg_sys::GetAccessStrategy(pg_sys::BufferAccessStrategyType::BAS_BULKWRITE);
        for s in &m.segments {
            let first = s.segno * per_segment;
            for blkno in first..first + s.blocks {
                pgrx::check_for_interrupts!();
                let buf = pg_sys::ReadBufferExtended(
                    rel,
                    pg_sys::ForkNumber::MAIN_FORKNUM,
                    blkno,
                    pg_sys::ReadBufferMode::RBM_NORMAL,
                    strategy,
                );
                pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32);
                pg_sys::CritSectionCount += 1;
                pg_sys::MarkBufferDirty(buf);
                pg_sys::log_newpage_buffer(buf, page_std);
                pg_sys::CritSectionCount -= 1;
                pg_sys::UnlockReleaseBuffer(buf);
            }
            loaded += s.blocks as i64;
            notice!(
                "yezzey: loaded \"{}\" segment {} back ({:.1} MB)",
                t.name,
                s.segno,
                mb(s.raw_len)
            );
        }
        pg_sys::FreeAccessStrategy(strategy);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
    }
    flush(t);
    fault::point("after_fill");
    wal::log_forget(t.spc, t.db, t.rel, MAIN_FORK);
    fault::point("after_forget");
    if let Err(e) = mapfile::apply_forget(t.spc, t.db, t.rel, MAIN_FORK) {
        error!("yezzey: could not remove the map of \"{}\": {e}", t.name);
    }
    loaded
}

/// Brings an offloaded relation's data back to local disk and makes it
/// local again (with its TOAST table and indexes). Objects become garbage
/// that `yezzey_gc()` removes.
#[pg_extern(sql = r#"
CREATE FUNCTION yezzey_load_relation(rel regclass)
RETURNS TABLE (relation text, blocks_loaded bigint)
VOLATILE PARALLEL UNSAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn yezzey_load_relation(
    rel: pg_sys::Oid,
) -> TableIterator<'static, (name!(relation, String), name!(blocks_loaded, i64))> {
    errors::require_superuser("load back relations");
    let targets = expand(rel.to_u32(), true);
    for t in &targets {
        lock(t);
    }
    let mut rows = Vec::new();
    for t in &targets {
        if !map::has_remote(t.spc, t.db, t.rel)
            && mapfile::read(t.spc, t.db, t.rel, MAIN_FORK).is_none()
        {
            continue;
        }
        rows.push((t.name.clone(), load_one(t)));
    }
    if rows.is_empty() {
        notice!(
            "yezzey: relation {} is not offloaded; nothing to do",
            targets.first().map(|t| t.name.as_str()).unwrap_or("?")
        );
    }
    TableIterator::new(rows)
}
