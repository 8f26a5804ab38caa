//! `yezzey_offload_relation`: upload a relation's files and free their
//! local space; queries keep working unchanged.
//!
//! Per relation, holding ExclusiveLock (plain readers continue; writers,
//! `SELECT ... FOR UPDATE`, which writes row locks into pages, and VACUUM
//! wait):
//!   1. note the WAL insert position (the *clean LSN*), flush the relation's
//!      dirty buffers and fsync its files;
//!   2. per segment file of the main fork: record an upload intent, upload
//!      the file as one object named with this cluster's lineage member;
//!   3. WAL-log the new map (OFFLOAD) and flush it;
//!   4. publish the map (shared memory, then `pg_yezzey/map/*.json`);
//!   5. truncate the local segment files (md takes them to be as long as
//!      their remote range, and reads past their end as holes) and mark the
//!      map file evicted; drop the intents.
//!
//! A crash before 3 leaves the relation local and objects that GC removes
//! (their intents are from a dead server); after 3, redo or startup finishes
//! 4 and 5, and the relation is offloaded: pages whose LSN is at most the
//! clean LSN, which is every page redo rebuilds from WAL written before the
//! offload, are the object's pages and are never written back locally (the
//! storage manager drops such writes). Readers never see a hole that is not
//! in the map: the map is published before any hole exists, and the read
//! path consults the map after reading the local file.
use super::relations::{self, mb, Target};
use crate::{apply, errors, fault, fds, lineage, pg, settings, wal};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::fs::File;
use std::time::Instant;
use yezzey_storage::key::{ObjectId, RelFork, BLOCK_SIZE};
use yezzey_storage::names::{ObjectName, SegmentId};
use yezzey_storage::runtime::block_on;
use yezzey_storage::state::map::{ForkMap, SegmentMeta};
use yezzey_storage::state::unix_now;
use yezzey_storage::store::ObjectStore;

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
    require_hint_bits_logged();
    let storage = settings::storage();
    lineage::ensure_registered(&storage);
    let targets = relations::expand(rel.to_u32(), with_indexes);
    relations::lock_all(&targets);
    let mut rows = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if yezzey_smgr_shim::map::has_remote(t.key.spc, t.key.db, t.key.rel) {
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
        let m = offload_one(&storage, t);
        let (raw, stored) = m
            .as_ref()
            .map_or((0, 0), |m| (m.raw_bytes(), m.stored_bytes()));
        let segments = m.as_ref().map_or(0, |m| m.segments.len() as i32);
        rows.push((t.name.clone(), segments, raw as i64, stored as i64));
    }
    TableIterator::new(rows)
}

/// Without logged hint bits a page can change without its LSN moving, and
/// a torn write over a hole would leave half a page of zeros.
fn require_hint_bits_logged() {
    if !pg::hint_bits_logged() {
        errors::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "yezzey needs data checksums or wal_log_hints to offload relations".into(),
            "Set wal_log_hints = on and restart the server (or initialise clusters with --data-checksums).",
        );
    }
}

/// Offloads one relation's main fork; `None` when it has no blocks.
fn offload_one(storage: &settings::Storage, t: &Target) -> Option<ForkMap> {
    let clean_lsn = pg::insert_lsn();
    let nblocks = relations::flush(t);
    advise_freeze(t, nblocks);
    let segs = relations::segments_of(nblocks);
    if segs.is_empty() {
        return None;
    }
    let mut uploads = Uploads {
        storage,
        names: Vec::new(),
    };
    let metas: Vec<SegmentMeta> = segs
        .iter()
        .enumerate()
        .map(|(i, &(segno, blocks))| uploads.segment(t, segno, blocks, (i + 1, segs.len())))
        .collect();
    fault::point("after_upload");
    let m = ForkMap {
        system_id: pg::system_id(),
        content: settings::content_id(),
        key: t.key,
        writer: Some(lineage::me().member),
        offloaded_at: unix_now(),
        // The insert position labels the offload (redo compares maps by it).
        lsn: pg::insert_lsn(),
        clean_lsn,
        evicted: false,
        segments: metas,
    };
    wal::log_offload(&m);
    fault::point("after_wal");
    if let Err(e) = apply::offload(&m) {
        // The WAL record stands: redo or the next start finishes the eviction.
        warning!(
            "yezzey: \"{}\" is offloaded but its local space was not freed yet: {e}",
            t.name
        );
    }
    uploads.done();
    Some(m)
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

/// The objects one relation's offload uploads: on an error, deleted with
/// their intents before the error is raised; once the offload is
/// WAL-logged, their intents are dropped ([`Uploads::done`]).
struct Uploads<'a> {
    storage: &'a settings::Storage,
    names: Vec<ObjectName>,
}

impl Uploads<'_> {
    fn name(&self, key: RelFork, segno: u32) -> ObjectName {
        ObjectName {
            segment: SegmentId {
                system_id: pg::system_id(),
                content: settings::content_id(),
                rel: key,
                segfile: segno,
            },
            writer: Some(lineage::me().member),
            object_id: ObjectId::random(),
        }
    }

    /// Uploads one segment file as one object.
    fn segment(
        &mut self,
        t: &Target,
        segno: u32,
        blocks: u32,
        (i, n): (usize, usize),
    ) -> SegmentMeta {
        let name = self.name(t.key, segno);
        let intent = fds::transient(fds::STATE_OP, || {
            pg::state().add_intent(&name, std::process::id() as i32, pg::postmaster_start())
        });
        if let Err(e) = intent {
            self.abandon();
            errors::io(
                e,
                &format!("cannot offload \"{}\": recording the upload", t.name),
            );
        }
        self.names.push(name);
        fault::point("before_upload");
        let started = Instant::now();
        let up = match self.upload_file(&pg::segment_path(t.key, segno), blocks, &name) {
            Ok(up) => up,
            Err(e) => {
                self.abandon();
                let to = &self.storage.describe;
                errors::report(
                    e,
                    &format!(
                        "could not offload segment {segno} of \"{}\" to {to}",
                        t.name
                    ),
                );
            }
        };
        if up.trailer.raw_len != blocks as u64 * BLOCK_SIZE as u64 {
            self.abandon();
            errors::error(
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                format!(
                    "segment {segno} of \"{}\" changed length during upload",
                    t.name
                ),
                "Something wrote the file behind the server's back; try again.",
            );
        }
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        notice!(
            "yezzey: offloaded \"{}\" segment {i}/{n}: {:.1} MB -> {:.1} MB ({:.0} MB/s)",
            t.name,
            mb(up.trailer.raw_len),
            mb(up.stored_len),
            mb(up.trailer.raw_len) / secs
        );
        SegmentMeta {
            segno,
            blocks,
            object_id: name.object_id,
            raw_len: up.trailer.raw_len,
            stored_len: up.stored_len,
            written: false,
        }
    }

    /// The first `blocks` blocks of a segment file, as object `name`.
    fn upload_file(
        &self,
        path: &std::path::Path,
        blocks: u32,
        name: &ObjectName,
    ) -> yezzey_storage::Result<yezzey_storage::upload::Uploaded> {
        let storage = self.storage;
        fds::transient(1, || {
            let f = File::open(path).map_err(|e| yezzey_storage::Error::io(path, e))?;
            use std::io::Read;
            block_on(yezzey_storage::upload::upload(
                &storage.store,
                &name.relative(),
                name.object_id.0,
                &storage.keys,
                &storage.upload,
                f.take(blocks as u64 * BLOCK_SIZE as u64),
                |_| {},
            ))
        })
    }

    /// Deletes what was uploaded (before the offload was logged).
    fn abandon(&mut self) {
        let state = pg::state();
        for n in self.names.drain(..) {
            let _ = block_on(self.storage.store.delete(&n.relative()));
            let _ = fds::transient(fds::STATE_OP, || state.drop_intent(n.object_id));
        }
    }

    /// The offload is logged: the objects are the map's now.
    fn done(self) {
        let state = pg::state();
        for n in &self.names {
            let _ = fds::transient(fds::STATE_OP, || state.drop_intent(n.object_id));
        }
    }
}
