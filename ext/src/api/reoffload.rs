//! Re-offloading a relation that changed since its offload: only the
//! blocks that are local are uploaded, as a layer over each segment's
//! objects (or the segment merged into a new object), with no load back.
//! Reached through `yezzey_offload_relation` on a relation that is
//! offloaded already (`offload.rs` takes the lock and the checks).
//!
//! Per fork, holding ExclusiveLock (as the first offload):
//!   1. note the WAL insert position (the new *clean LSN*), flush the
//!      relation's dirty buffers, then read the fork's live map (the flush
//!      marks the segments whose pages it writes);
//!   2. plan ([`yezzey_storage::state::reoffload`]): a segment written
//!      since or grown past its objects' range gets a *layer* of its
//!      local blocks (found in its local file: the pages that are not
//!      holes, and every block past that range), or is *merged* (rewritten
//!      whole, as is a new segment) past `yezzey.max_layers` or once its
//!      layers would hold half its blocks; the others keep their objects;
//!      objects of merged or vanished segments are *superseded*;
//!   3. hold the new objects and the superseded ones in the shared map's
//!      retiring list (garbage collection keeps them; nothing uploaded
//!      yet if that fails);
//!   4. upload each merged segment as one object and each layer as one
//!      object of its blocks, copying the pages through the buffer
//!      manager: each page as PostgreSQL has it, local or (merging) read
//!      from the old objects, never torn by a reader writing it out;
//!   5. stage the new map beside the live one (refused, before anything
//!      is logged, past `yezzey.max_map_memory`);
//!   6. once every relation of the command got this far (so that the lock
//!      standbys take from here on lasts only as long as the switches),
//!      take AccessExclusiveLock, waiting up to 5 s for readers (as VACUUM
//!      does to truncate), and write the relation's buffers out; if readers
//!      stay, go on without it;
//!   7. WAL-log REOFFLOAD (the new map, the superseded segments, and
//!      whether the lock is held) and make the staged map live, as one
//!      step (`wal.rs`: the point of no return); then retire the
//!      superseded objects at the record;
//!   8. with the lock, free the local pages of the segments it uploaded
//!      that their objects hold (LSN at most the clean LSN); let go of the
//!      lock; write the map file.
//!
//! **Why a layer holds all it must.** The newest layer holding a block
//! serves it ([`yezzey_storage::layers`]). A page changed since the
//! segment's objects were written reached the local file by step 1 (the
//! flush), so step 2 finds it; a page of the objects' range that is a
//! hole there is the objects' page (hint bits aside: the storage manager
//! drops write-outs of pages no newer than the clean LSN); and every block
//! past that range is in the layer whatever it holds, so no older object's
//! copy of a block the relation lost and grew back (truncation) shows
//! through. A page written after step 2 has an LSN past the new clean LSN
//! (or it is the objects' page with hint bits): step 8 keeps it local.
//!
//! **If a step fails.** Before 7 the re-offload aborts: the uploaded
//! objects are deleted, the staged map and the holds dropped (also when
//! the backend exits with a FATAL); the old map stays live, and the local
//! files were never touched. After 7 nothing raises an ERROR: the new map
//! is in effect here (shared map), on standbys (the record) and after a
//! crash (replay from the last checkpoint, which cannot complete until the
//! map file is written). Rewritten segments are taken as *written* until
//! step 8 frees their pages, so without it (no lock, a failed punch)
//! reads go to the local file first, where every page is as new as the
//! object's or newer. A backend that dies between the record and the
//! retirement of the superseded objects retires them at its exit; a crash
//! there replays the record, which retires them again.
//!
//! **What each party sees.** A standby replays REOFFLOAD into its own
//! shared map after writing out its buffers under the old map, retires
//! the superseded objects at the record, and (if the primary held the
//! lock, which the standby then holds too) frees its own local pages the
//! new objects hold. A primary that crashes after 7 replays the record
//! whatever its map file says (older or newer), so the superseded objects
//! are retired from the record; they never become unreferenced without a
//! retirement, which garbage collection holds for standbys that have not
//! replayed it, for backups that started before it, and for
//! `yezzey.gc_retention`. A crash before 7 leaves the uploaded objects to
//! garbage collection and the relation as it was. Garbage collection reads
//! the shared map and its retiring list again if a switch happened in
//! between, so it never misses the new objects.
//!
//! **Pages written meanwhile.** Readers may write pages of the relation
//! while it is copied (hint bits with an LSN moved by a full-page image,
//! or pruning): such a page has an LSN past the clean LSN, so step 8
//! keeps it local; a kept segment written meanwhile keeps its written
//! flag (the promotion carries it over).
//!
//! **Left as is.** The critical section of step 7 touches the fork's
//! entry in dynamic shared memory; if another process grew the map's area
//! since this one last looked, mapping the new segment allocates, and a
//! failure there is a PANIC (then crash recovery replays the record). The
//! first offload's switch shares this.

use super::relations::{self, mb, Target};
use crate::map::evict;
use crate::map::shared::{self, State};
use crate::{errors, fault, lineage, pg, settings, wal};
use pgrx::PgSqlErrorCode;
use yezzey_storage::format::{BlockRun, Layer};
use yezzey_storage::key::{Lsn, MemberId, ObjectId};
use yezzey_storage::names::ObjectName;
use yezzey_storage::runtime::block_on;
use yezzey_storage::state::map::{ForkMap, SegmentMeta};
use yezzey_storage::state::reoffload;
use yezzey_storage::state::unix_now;
use yezzey_storage::store::ObjectStore;

/// A fork's re-offload up to its record (steps 1 to 5): uploaded and
/// staged, waiting for [`Prepared::switch`]. A command prepares all its
/// relations first and switches them last, so that the lock standbys
/// take with each switch lasts only as long as the switches. Dropped
/// unswitched (an ERROR), it undoes what it did.
pub struct Prepared<'a> {
    job: Job<'a>,
    m: ForkMap,
    superseded: Vec<SegmentMeta>,
    old_writer: Option<MemberId>,
    /// Bytes uploaded, raw and stored.
    uploaded: (u64, u64),
}

/// Steps 1 to 5 of re-offloading one relation's main fork, whose map is
/// live; `None` when nothing changed since.
pub fn prepare<'a>(storage: &'a settings::Storage, t: &'a Target) -> Option<Prepared<'a>> {
    let clean_lsn = pg::insert_lsn();
    let nblocks = relations::flush(t);
    // Read after the flush: pages written out by it mark their segments.
    let cur = shared::get(t.key).filter(|f| f.state == State::Live)?;
    let segments = relations::segments_of(nblocks);
    let me = lineage::me().member;
    let policy = reoffload::Policy {
        max_layers: settings::max_layers(),
    };
    let local = |s: &SegmentMeta, blocks: u32| {
        let runs = crate::fds::transient(1, || evict::local_runs(t.key, s.segno, s.blocks, blocks));
        runs.unwrap_or_else(|e| {
            errors::error(
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                format!(
                    "cannot offload \"{}\" again: could not read segment {} of it: {e}",
                    t.name, s.segno
                ),
                "Nothing changed.",
            )
        })
    };
    let plan = reoffload::plan(&cur.map, &segments, me, policy, local, ObjectId::random)?;
    let mut m = plan.map;
    m.clean_lsn = clean_lsn;
    m.evicted = false;
    // Copies get checksums when the cluster has them; kept objects have
    // theirs if the old map says so.
    let all_new = plan.rewrite.len() == m.segments.len();
    m.page_checksums = pg::data_checksums() && (cur.map.page_checksums || all_new);
    let mut job = Job::hold(storage, t, &cur.map, &m, &plan.superseded);
    let n = plan.rewrite.len() + plan.layer.len();
    let mut uploaded = (0, 0);
    for (k, &segno) in plan.rewrite.iter().enumerate() {
        fault::point("before_upload");
        let i = m.segments.iter().position(|s| s.segno == segno).unwrap();
        let (raw, stored) = job.segment(&m, i, (k + 1, n));
        uploaded = (uploaded.0 + raw, uploaded.1 + stored);
        m.segments[i].raw_len = raw;
        m.segments[i].stored_len = stored;
    }
    for (k, (segno, runs)) in plan.layer.into_iter().enumerate() {
        fault::point("before_upload");
        let i = m.segments.iter().position(|s| s.segno == segno).unwrap();
        let (raw, stored) = job.layer(&m, i, runs, (plan.rewrite.len() + k + 1, n));
        uploaded = (uploaded.0 + raw, uploaded.1 + stored);
        let l = m.segments[i].layers.last_mut().unwrap();
        l.raw_len = raw;
        l.stored_len = stored;
    }
    fault::point("after_upload");
    m.lsn = pg::insert_lsn();
    m.offloaded_at = unix_now();
    job.stage(&m);
    Some(Prepared {
        job,
        m,
        superseded: plan.superseded,
        old_writer: cur.map.writer,
        uploaded,
    })
}

impl Prepared<'_> {
    pub fn name(&self) -> &str {
        &self.job.t.name
    }

    /// Bytes it uploaded, raw and stored.
    pub fn uploaded(&self) -> (u64, u64) {
        self.uploaded
    }

    /// Steps 6 to 8: the lock, the record and the switch, the pages freed.
    /// Returns the new map.
    pub fn switch(mut self) -> ForkMap {
        let t = self.job.t;
        self.job.label = self.m.lsn;
        let (m, superseded, old_writer) = (&self.m, &self.superseded, self.old_writer);
        relations::switch_alone(t, |alone| wal::reoffload(m, superseded, old_writer, alone));
        self.m
    }
}

/// One fork's re-offload before its record: the holds, the objects
/// uploaded so far, the staged map. Dropped before the record (an ERROR,
/// a cancel), it deletes the objects and drops the rest; once the record
/// is written it does nothing.
struct Job<'a> {
    storage: &'a settings::Storage,
    t: &'a Target,
    uploaded: Vec<ObjectName>,
    /// The new map's label once staged: the live map has it after the record.
    label: Lsn,
}

impl<'a> Job<'a> {
    /// Holds the objects about to be uploaded and the superseded ones.
    fn hold(
        storage: &'a settings::Storage,
        t: &'a Target,
        old: &ForkMap,
        new: &ForkMap,
        superseded: &[SegmentMeta],
    ) -> Job<'a> {
        let job = Job {
            storage,
            t,
            uploaded: Vec::new(),
            label: Lsn(0),
        };
        shared::hold(new, old, superseded);
        job
    }

    /// Stages the new map: refused past yezzey.max_map_memory, before
    /// anything is logged.
    fn stage(&self, m: &ForkMap) {
        if !shared::stage(m, true) {
            let u = yezzey_smgr_shim::map::usage();
            errors::error(
                PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
                format!(
                    "cannot offload \"{}\" again: the map of offloaded segments would grow past yezzey.max_map_memory ({:.0} MB)",
                    self.t.name,
                    mb(u.limit)
                ),
                "Raise yezzey.max_map_memory (a reload is enough). Nothing changed; the objects uploaded were deleted.",
            );
        }
    }

    /// Uploads segment `i` of `m` from the relation's pages; its raw and
    /// stored sizes.
    fn segment(&mut self, m: &ForkMap, i: usize, (k, n): (usize, usize)) -> (u64, u64) {
        let (t, s) = (self.t, &m.segments[i]);
        let name = m.object_name(s);
        self.uploaded.push(name);
        let up = super::offload::upload_segment(self.storage, t, s.segno, (k, n), true, || {
            super::offload::upload_pages(self.storage, t, s.segno, s.blocks, &name)
        });
        (up.trailer.raw_len, up.stored_len)
    }

    /// Uploads the blocks `runs` of segment `i` of `m` as its newest layer
    /// (the last of its layers in `m`); its raw and stored sizes.
    fn layer(
        &mut self,
        m: &ForkMap,
        i: usize,
        runs: Vec<BlockRun>,
        (k, n): (usize, usize),
    ) -> (u64, u64) {
        let (t, s) = (self.t, &m.segments[i]);
        let id = s.layers.last().expect("a layer planned").object_id;
        let name = m.name_of(s.segno, id);
        self.uploaded.push(name);
        let layer = Layer {
            base: s.object_id.0,
            seq: s.layers.len() as u32,
            runs,
            blocks: s.blocks,
        };
        let up = super::offload::upload_segment(self.storage, t, s.segno, (k, n), true, || {
            super::offload::upload_runs(
                self.storage,
                t,
                s.segno,
                &layer.runs.clone(),
                &name,
                Some(layer),
            )
        });
        (up.trailer.raw_len, up.stored_len)
    }
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        let k = self.t.key;
        let logged = self.label != Lsn(0)
            && shared::get(k).is_some_and(|f| f.state == State::Live && f.map.lsn == self.label);
        if logged {
            return; // the objects are the map's
        }
        // The objects first, then the holds on them.
        for n in self.uploaded.drain(..) {
            let _ = block_on(self.storage.store.delete(&n.relative()));
        }
        shared::unstage(k, None);
    }
}
