//! `yezzey_offload_relation`: upload a relation's files and free their
//! local space; queries keep working unchanged.
//!
//! A relation offloaded before is offloaded again: only what changed since
//! is uploaded (`reoffload.rs`), with no load back.
//!
//! Like VACUUM, it is not transactional: it refuses to run inside a
//! transaction block (each relation it offloads stays offloaded whatever
//! happens to the statement after), in a read-only transaction and during
//! recovery.
//!
//! Per relation, holding ExclusiveLock (plain readers continue; writers,
//! `SELECT ... FOR UPDATE`, which writes row locks into pages, and VACUUM
//! wait):
//!   1. note the WAL insert position (the *clean LSN*), flush the
//!      relation's dirty buffers and fsync its files;
//!   2. put the fork's map in the shared map as *pending*, naming the
//!      objects about to be uploaded, every segment marked *written* (reads
//!      look at the local file first): refused here, with nothing
//!      uploaded, if it would take the map past `yezzey.max_map_memory`;
//!      garbage collection keeps a pending map's objects, and readers
//!      ignore it;
//!   3. upload each segment as one object named with this cluster's
//!      lineage member, copying its pages through the buffer manager: each
//!      page as PostgreSQL has it, never torn by a reader writing it out;
//!   4. once every relation of the command got this far (a standby holds
//!      the lock taken here until the command commits), take
//!      AccessExclusiveLock, waiting up to 5 s for readers (as VACUUM does
//!      to truncate; a writer queued behind the offload's ExclusiveLock
//!      also makes it give up), and write the relation's buffers out; if
//!      they stay, go on without it;
//!   5. WAL-log the map and whether the lock is held (OFFLOAD) and make it
//!      live, as one step (`wal.rs`: the point of no return);
//!   6. with the lock, free the local pages the objects hold: a segment
//!      nothing was written out to since step 2 (the storage manager marks
//!      a pending map's segments *touched* when blocks are written out to
//!      them) is freed whole, without being read; in a touched one, the
//!      pages whose LSN is at most the clean LSN. A segment left with
//!      nothing is truncated and is unwritten again (md takes it to be as
//!      long as its remote range and reads past its end as holes). Let go
//!      of the lock; write the map file.
//!
//! **Pages written meanwhile.** Readers may write pages while they are
//! copied: hint bits (with an LSN moved by a full-page image) or pruning,
//! which changes a page's line pointers and is WAL-logged. Such a page is
//! written out before step 5 at the latest (step 4 writes the buffers
//! out), which marks its segment touched; it has an LSN past the clean
//! LSN, so step 6 keeps it local and its segment written, and reads take
//! it from the local file: the object's copy may be older. A standby
//! replayed the same WAL, so its untouched segments hold nothing newer
//! either: the record names the touched segments, and redo frees the same
//! way. (Offloads before this rule truncated the files whatever they
//! held, and lost such a page on the primary.)
//!
//! **If a step fails.** Before 5 the offload aborts: the uploaded objects
//! are deleted and the pending map dropped (also when the backend exits
//! with a FATAL; after a crash shared memory is gone, and GC collects the
//! objects). After 5 nothing raises an ERROR: the offload is in effect on
//! this server (the shared map), on standbys (the record) and after a
//! crash (replay from the last checkpoint, which cannot complete until the
//! map file is written); a map file that cannot be written now is written
//! by the next checkpoint; local pages that cannot be freed now (no lock,
//! a failed punch) stay, their segments written, and are freed by the next
//! offload of the relation; a WARNING or NOTICE says which.
//!
//! **Crashes.** Before 5 the relation stays local and its objects are
//! garbage. After 5, redo writes its buffers out, makes the map live with
//! every segment written and, if the primary held the lock (which a
//! standby then holds too), frees the pages the objects hold, as step 6.
//! Pages whose LSN is at most the clean LSN, which is every page redo
//! rebuilds from WAL written before the offload, are the object's pages
//! and are never written back locally (the storage manager drops such
//! writes). Readers never see a hole that is not in the map: the map is
//! live before any hole exists, and the read path consults the map after
//! reading the local file.

use super::relations::{self, mb, Target};
use super::reoffload;
use crate::map::shared::{self, State};
use crate::{errors, fault, lineage, pg, settings, wal};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::time::Instant;
use yezzey_storage::format::{BlockRun, Layer};
use yezzey_storage::key::{Lsn, ObjectId, BLOCK_SIZE};
use yezzey_storage::names::ObjectName;
use yezzey_storage::runtime::block_on;
use yezzey_storage::state::map::{ForkMap, SegmentMeta};
use yezzey_storage::state::unix_now;
use yezzey_storage::store::ObjectStore;
use yezzey_storage::upload::{Upload, Uploaded};

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
    pg::refuse_in_transaction_block(c"yezzey_offload_relation()");
    require_hint_bits_logged();
    let storage = settings::storage();
    lineage::ensure_registered(&storage, crate::map::holds::holds);
    let targets = relations::expand(rel.to_u32(), with_indexes);
    relations::lock_all(&targets);
    for t in &targets {
        refuse_unlogged_changes(t);
    }
    let (mut rows, mut first, mut again) = (Vec::new(), Vec::new(), Vec::new());
    for t in &targets {
        if let Some(f) = shared::get(t.key) {
            if f.state == State::Broken {
                errors::error(
                    PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                    format!(
                        "cannot offload \"{}\": yezzey's map of it is damaged or missing",
                        t.name
                    ),
                    "Rebuild it first with SELECT * FROM yezzey_repair_maps().",
                );
            }
            if f.state == State::Pending {
                errors::error(
                    PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                    format!("\"{}\" is being offloaded by another session", t.name),
                    "Wait for it to finish.",
                );
            }
            match reoffload::prepare(&storage, t) {
                Some(p) => again.push(p),
                None => notice!("yezzey: \"{}\" is offloaded and unchanged since", t.name),
            }
            continue;
        }
        match offload_one(&storage, t) {
            Some(u) => first.push(u),
            None => rows.push((t.name.clone(), 0, 0, 0)),
        }
    }
    // Every relation switches last, together, once all are uploaded: a
    // standby holds each switch's lock until the command commits, so that
    // lasts only as long as the switches (step 4; reoffload.rs, step 6).
    for u in first {
        let name = u.t.name.clone();
        let m = u.switch();
        let all = m.segments.iter();
        let uploaded = all.fold((0, 0), |(r, s), x| (r + x.raw_len, s + x.stored_len));
        rows.push(row(&name, &m, uploaded));
    }
    for p in again {
        let name = p.name().to_string();
        let uploaded = p.uploaded();
        rows.push(row(&name, &p.switch(), uploaded));
    }
    TableIterator::new(rows)
}

/// A result row: the relation, its segments, and the bytes uploaded now,
/// raw and stored (a re-offload's layers and rewritten segments).
fn row(name: &str, m: &ForkMap, (raw, stored): (u64, u64)) -> (String, i32, i64, i64) {
    (
        name.to_string(),
        m.segments.len() as i32,
        raw as i64,
        stored as i64,
    )
}

/// Without logged hint bits a page can change without its LSN moving, and
/// a torn write over a hole would leave half a page of zeros. Without
/// full-page writes, replay after a crash would apply changes to a page
/// from whatever copy it finds, not from its image in WAL.
fn require_hint_bits_logged() {
    if !pg::hint_bits_logged() {
        errors::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "yezzey needs data checksums or wal_log_hints to offload relations".into(),
            "Set wal_log_hints = on and restart the server (or initialise clusters with --data-checksums).",
        );
    }
    if !pg::full_page_writes() {
        errors::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "yezzey needs full_page_writes to offload relations".into(),
            "Set full_page_writes = on (PostgreSQL's default) and reload.",
        );
    }
}

/// With `wal_level = minimal`, a relation created or rewritten in this
/// transaction skips WAL: its pages keep LSN 0, and writes after the
/// offload would look like pages the object already holds.
fn refuse_unlogged_changes(t: &Target) {
    if pg::relation::skips_wal(t.oid) {
        errors::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "cannot offload \"{}\": it was created or rewritten in this transaction, whose changes to it skip WAL (wal_level = minimal)",
                t.name
            ),
            "Commit the transaction that created it first, or set wal_level to replica.",
        );
    }
}

/// Steps 1 to 3 of offloading one relation's main fork: uploaded, its
/// pending map in the shared map, waiting for [`Uploads::switch`];
/// `None` when it has no blocks.
fn offload_one<'a>(storage: &'a settings::Storage, t: &'a Target) -> Option<Uploads<'a>> {
    let clean_lsn = pg::insert_lsn();
    let nblocks = relations::flush(t);
    advise_freeze(t, nblocks);
    let segs = relations::segments_of(nblocks);
    if segs.is_empty() {
        return None;
    }
    let mut m = ForkMap {
        system_id: pg::system_id(),
        content: settings::content_id(),
        key: t.key,
        writer: Some(lineage::me().member),
        offloaded_at: unix_now(),
        lsn: Lsn(0),
        clean_lsn,
        evicted: false,
        page_checksums: pg::data_checksums(),
        segments: segs
            .iter()
            .map(|&(segno, blocks)| SegmentMeta {
                segno,
                blocks,
                object_id: ObjectId::random(),
                raw_len: 0,
                stored_len: 0,
                // Until step 6 frees their pages, reads look local first.
                written: true,
                layers: Vec::new(),
            })
            .collect(),
    };
    let mut uploads = Uploads::reserve(storage, t, &m);
    let n = m.segments.len();
    for i in 0..n {
        fault::point("before_upload");
        let (raw, stored) = uploads.segment(&m, i, (i + 1, n));
        m.segments[i].raw_len = raw;
        m.segments[i].stored_len = stored;
    }
    fault::point("after_upload");
    // The insert position labels the offload (redo compares maps by it).
    m.lsn = pg::insert_lsn();
    m.offloaded_at = unix_now();
    uploads.update(&m);
    uploads.m = m;
    Some(uploads)
}

fn advise_freeze(t: &Target, nblocks: u32) {
    let unfrozen = relations::unfrozen_pages(t, nblocks);
    if unfrozen > 0 {
        errors::notice(
            format!("yezzey: {unfrozen} of {nblocks} pages of \"{}\" are not all-frozen", t.name),
            "Reading those rows after the offload sets their hint bits, which writes the pages back to local disk: correct, but they take local space again.".into(),
            "Run VACUUM (FREEZE) on the table before offloading it.",
        );
    }
}

/// Uploads segment `segno` of `t` (k of n) with `upload`: a failure is an
/// ERROR naming the segment and the store; what it did, a NOTICE.
pub(super) fn upload_segment(
    storage: &settings::Storage,
    t: &Target,
    segno: u32,
    (k, n): (usize, usize),
    again: bool,
    upload: impl FnOnce() -> yezzey_storage::Result<Uploaded>,
) -> Uploaded {
    let started = Instant::now();
    let up = match upload() {
        Ok(up) => up,
        Err(e) => errors::report(
            e,
            &format!(
                "could not offload segment {segno} of \"{}\" to {}",
                t.name, storage.describe
            ),
        ),
    };
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    notice!(
        "yezzey: offloaded \"{}\"{} segment {k}/{n}: {:.1} MB -> {:.1} MB ({:.0} MB/s)",
        t.name,
        if again { " again," } else { "" },
        mb(up.trailer.raw_len),
        mb(up.stored_len),
        mb(up.trailer.raw_len) / secs
    );
    up
}

/// Blocks `0..blocks` of segment `segno` of `t`, copied through the buffer
/// manager a frame at a time, as object `name`: each page as PostgreSQL
/// has it now, never torn by a concurrent write-out. The upload is aborted
/// (nothing left under the name) if the copy or the store fails.
pub(super) fn upload_pages(
    storage: &settings::Storage,
    t: &Target,
    segno: u32,
    blocks: u32,
    name: &ObjectName,
) -> yezzey_storage::Result<Uploaded> {
    let all = BlockRun {
        start: 0,
        len: blocks,
    };
    upload_runs(storage, t, segno, &[all], name, None)
}

/// The blocks of `runs` of segment `segno` of `t`, copied as
/// [`upload_pages`] does, one after another as object `name`: a layer
/// object if `layer` is given (its runs are `runs`).
pub(super) fn upload_runs(
    storage: &settings::Storage,
    t: &Target,
    segno: u32,
    runs: &[BlockRun],
    name: &ObjectName,
    layer: Option<Layer>,
) -> yezzey_storage::Result<Uploaded> {
    let mut up = block_on(Upload::start(
        &storage.store,
        &name.relative(),
        name.object_id.0,
        &storage.keys,
        &storage.upload,
    ))?;
    if let Some(l) = layer {
        up.set_layer(l);
    }
    let guard = AbortOnDrop(&mut up);
    let per_chunk = (storage.upload.format.frame_size as usize / BLOCK_SIZE).max(1) as u32;
    let first = segno * pg::blocks_per_segment();
    let strategy = pg::relation::BulkRead::new();
    let mut buf = vec![0u8; per_chunk as usize * BLOCK_SIZE];
    for r in runs {
        let mut at = r.start;
        while at < r.end() {
            pgrx::check_for_interrupts!();
            let n = per_chunk.min(r.end() - at);
            let chunk = &mut buf[..n as usize * BLOCK_SIZE];
            pg::relation::copy_pages(t.oid, first + at, chunk, &strategy);
            block_on(guard.0.push(chunk))?;
            at += n;
        }
    }
    std::mem::forget(guard);
    block_on(up.finish())
}

/// Aborts an upload left behind by an ERROR (which unwinds through here).
struct AbortOnDrop<'a>(&'a mut Upload);

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        block_on(self.0.abort());
    }
}

/// One relation's offload before its record: its pending map in the
/// shared map, and the objects uploaded so far. Dropped before the record
/// (an ERROR, a cancel), it deletes them and the pending map; once the
/// record made the map live, dropping it does nothing.
struct Uploads<'a> {
    storage: &'a settings::Storage,
    t: &'a Target,
    uploaded: Vec<ObjectName>,
    /// The map once uploaded.
    m: ForkMap,
}

impl<'a> Uploads<'a> {
    /// Puts the pending map: refused (nothing uploaded yet) when the map
    /// would grow past yezzey.max_map_memory.
    fn reserve(storage: &'a settings::Storage, t: &'a Target, m: &ForkMap) -> Uploads<'a> {
        if !shared::put(m, State::Pending, false, true) {
            let u = yezzey_smgr_shim::map::usage();
            errors::error_detail(
                PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
                format!(
                    "cannot offload \"{}\": the map of offloaded segments would grow past yezzey.max_map_memory ({:.0} MB)",
                    t.name,
                    mb(u.limit)
                ),
                format!(
                    "The map holds {} segments of {} forks in {:.1} MB of shared memory. Nothing was uploaded.",
                    u.segments,
                    u.forks,
                    mb(u.bytes)
                ),
                "Raise yezzey.max_map_memory (a reload is enough), or load relations back to make room.",
            );
        }
        Uploads {
            storage,
            t,
            uploaded: Vec::new(),
            m: m.clone(),
        }
    }

    /// Steps 4 to 6: the lock, the record and the switch, the pages freed.
    /// Returns the map.
    fn switch(self) -> ForkMap {
        relations::switch_alone(self.t, |alone| {
            // Read with the relation to itself, its buffers written out:
            // nothing is written to its files after this.
            let touched = alone.then(|| shared::touched(self.t.key, &self.m));
            wal::offload(&self.m, touched.as_deref())
        });
        self.m.clone()
    }

    /// The pending map again, with what the uploads measured.
    fn update(&self, m: &ForkMap) {
        if !shared::put(m, State::Pending, false, false) {
            errors::error(
                PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
                format!("cannot offload \"{}\": out of shared memory", self.t.name),
                "The map of offloaded segments grows in dynamic shared memory; check the operating system's shared memory limits.",
            );
        }
    }

    /// Uploads segment `i` of `m` as one object; its raw and stored sizes.
    fn segment(&mut self, m: &ForkMap, i: usize, (k, n): (usize, usize)) -> (u64, u64) {
        let (t, s) = (self.t, &m.segments[i]);
        let name = m.object_name(s);
        self.uploaded.push(name);
        let up = upload_segment(self.storage, t, s.segno, (k, n), false, || {
            upload_pages(self.storage, t, s.segno, s.blocks, &name)
        });
        (up.trailer.raw_len, up.stored_len)
    }
}

impl Drop for Uploads<'_> {
    fn drop(&mut self) {
        let k = self.t.key;
        let still_pending = shared::get(k).is_some_and(|f| f.state == State::Pending);
        if !still_pending {
            return; // logged: the objects are the map's
        }
        // The objects first: a pending map gone means its objects are gone.
        for n in self.uploaded.drain(..) {
            let _ = block_on(self.storage.store.delete(&n.relative()));
        }
        yezzey_smgr_shim::map::drop_pending(k.spc, k.db, k.rel, k.fork.as_i32());
    }
}
