//! yezzey's custom WAL resource manager, and the switches it logs: each
//! written once, its "log, then apply" beside its redo twin (PostgreSQL's
//! do/redo pairing), with one failure policy for all of them.
//!
//! | switch  | record  | the shared map            | then                                 |
//! |---------|---------|---------------------------|--------------------------------------|
//! | offload | OFFLOAD | the fork's pending map goes live | free what the objects hold locally; map file |
//! | forget  | FORGET  | the fork leaves; its objects retire | retired records (its map file goes at the next checkpoint) |
//! | re-offload | REOFFLOAD (REOFFLOAD_LAYERS if its maps name layers) | the fork's staged map replaces its live one; the objects it no longer names retire | free what the new objects hold locally; map file |
//!
//! **The failure policy.**
//! 1. *Before the record* every failure aborts the switch: nothing is
//!    logged, and what was prepared (a pending map, uploaded objects) is
//!    undone. The shared map has room for the switch before the record is
//!    written (a pending map is inserted first, within
//!    `yezzey.max_map_memory`), so applying it cannot fail for want of it.
//! 2. *The record and the shared map's change are one step.* No checkpoint
//!    can complete between them (`DELAY_CHKPT_START`), so a crash that
//!    loses the change replays the record. OFFLOAD's change (pending to
//!    live) allocates nothing and runs in a critical section with the
//!    record: it cannot be left half done. FORGET's (the fork leaves, its
//!    objects go to the retiring list) needs memory for the retiring list:
//!    if that fails the fork stays as it was, its objects stay referenced,
//!    and the command errors; running it again completes it. REOFFLOAD's
//!    change allocates nothing either: the new map was staged beside the
//!    live one before the record, and the objects it supersedes were put
//!    on the retiring list, held; they retire at the record right after
//!    it (at the backend's exit if it dies in between, by redo after a
//!    crash).
//! 3. *After it*, every step is idempotent and best effort: the map file
//!    (a failure keeps the fork dirty: [`crate::map::persist`]), freeing
//!    the local copies (a failure keeps them: [`crate::map::evict`]).
//!    Nothing after the record raises an ERROR. The record is flushed
//!    before the shared map changes, so no map file can describe a switch
//!    that a crash could still take back.
//!
//! **What each party sees if a step after the record fails.** The shared
//! map has the change, so this server reads, writes and collects garbage
//! by it; a standby replays the record into its own shared map; after a
//! crash, replay from the last completed checkpoint redoes it (a
//! checkpoint cannot complete while the change is not in the files); and
//! garbage collection never sees an object the record names as
//! unreferenced, because it brings the files in step first and refuses to
//! run if it cannot.
//!
//! **Redo** applies the same change and the same steps after it. It never
//! moves a map back: maps loaded at startup may be newer than the record
//! being replayed (they are written after the record and before the next
//! checkpoint, which replay starts from), so an OFFLOAD older than the
//! fork's map is skipped, the one that made it keeps what happened since
//! (local-write flags, truncations), and a FORGET of an offload older than
//! the map is skipped. Reads during that replay see the newer pages, which
//! redo skips as already applied, exactly as it does pages flushed before
//! a crash.
//!
//! Records are small JSON documents, which also makes `pg_waldump` output
//! readable. The callbacks PostgreSQL calls are in `ffi.rs`.
use crate::map::{evict, persist, shared};
use crate::{errors, fault, pg};
use pgrx::PgSqlErrorCode;
use serde::{Deserialize, Serialize};
use shared::State;
use yezzey_storage::key::{Lsn, MemberId, RelFork};
use yezzey_storage::state::map::{ForkMap, SegmentMeta};
use yezzey_storage::state::unix_now;

/// Custom resource manager id (128-255 are for extensions; see
/// https://wiki.postgresql.org/wiki/CustomWALResourceManagers). Not yet
/// registered there: change it here if it collides with another extension.
pub const RMGR_ID: u8 = 160;
const XLOG_YEZZEY_OFFLOAD: u8 = 0x10;
const XLOG_YEZZEY_FORGET: u8 = 0x20;
const XLOG_YEZZEY_REOFFLOAD: u8 = 0x30;
/// A REOFFLOAD whose maps name layers: its own type, so that a server
/// whose yezzey predates layers stops at it (unknown record type) rather
/// than read the map without them and serve the base's older pages.
const XLOG_YEZZEY_REOFFLOAD_LAYERS: u8 = 0x40;

/// A fork is local again: the offload made at `lsn` is undone (records
/// written before this field existed undo whatever offload is there).
#[derive(Debug, Serialize, Deserialize)]
struct Forget {
    #[serde(flatten)]
    key: RelFork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lsn: Option<Lsn>,
}

/// A fork offloaded again (`api/reoffload.rs`): its new map (the segments
/// it rewrote marked written), and the segments of the old one it no
/// longer names, which retire at the record. They are in the record
/// because nothing else durable names them once the map file says the new
/// map: redo retires them again, whatever the map files say.
#[derive(Debug, Serialize, Deserialize)]
struct Reoffload {
    map: ForkMap,
    superseded: Vec<SegmentMeta>,
    /// The writer of the superseded objects (the old map's).
    superseded_writer: Option<MemberId>,
    /// The primary held AccessExclusiveLock across the record (its
    /// standby lock record comes first): redo may free the local pages the
    /// new objects hold, as the primary did, with no reader in the way.
    free_pages: bool,
}

/// An OFFLOAD record: the fork's map (every segment marked written, so
/// that reads look at the local files first until their pages are freed),
/// and whether the primary held AccessExclusiveLock across the record, as
/// in [`Reoffload`]. Records written before this form are the bare map
/// (its segments unwritten): their redo truncates the local copies, as
/// those offloads did.
#[derive(Debug, Serialize, Deserialize)]
struct Offload {
    map: ForkMap,
    free_pages: bool,
    /// With `free_pages`: the segments that had blocks written out while
    /// the objects were uploaded (`touched`), whose pages are checked
    /// before they are freed; the others hold nothing the objects lack and
    /// are freed whole. Absent: check every segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    touched: Option<Vec<u32>>,
}

/// An OFFLOAD record in either form.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OffloadRecord {
    Current(Offload),
    Bare(ForkMap),
}

/// OFFLOAD on the primary: `m` is the fork's pending map in the shared
/// map, whose objects are uploaded and whose segments are all marked
/// written; logs it and makes it live. With `touched` (the segments
/// written out to since the pending map was put) the caller holds
/// AccessExclusiveLock on the relation and has written out its buffers:
/// the local pages the objects hold are freed. Returns the record's
/// position. Raises no ERROR once the record is written.
///
/// A segment nothing was written out to while the objects were uploaded
/// holds, on this server and on every standby (which replayed the same
/// WAL up to the record), nothing the objects lack: any page changed
/// after its copy was made would have been written out by now (the caller
/// wrote the buffers out), and marked its segment. So it is freed whole,
/// without reading it back; the pages of touched segments are checked.
pub fn offload(m: &ForkMap, touched: Option<&[u32]>) -> Lsn {
    debug_assert!(m.segments.iter().all(|s| s.written));
    let free_pages = touched.is_some();
    let r = Offload {
        map: m.clone(),
        free_pages,
        touched: touched.map(<[u32]>::to_vec),
    };
    let payload = serde_json::to_vec(&r).expect("serialising a record");
    let lsn = pg::xlog::log_and_apply(RMGR_ID, XLOG_YEZZEY_OFFLOAD, &payload, true, |_| {
        // Allocates nothing; the pending map is there (the offload holds
        // the relation's lock, and only its own backend removes it).
        assert!(
            shared::set_state(m.key, State::Pending, State::Live),
            "the pending map of {} vanished",
            m.key
        );
    });
    fault::point("after_wal");
    after_switch(m, &rewritten(m), free_pages, touched);
    lsn
}

/// OFFLOAD in redo (crash recovery, standbys, point-in-time recovery).
fn redo_offload(r: OffloadRecord) {
    match r {
        OffloadRecord::Current(r) => {
            let rewritten = rewritten(&r.map);
            // As for REOFFLOAD: pages dirty in buffers reach the local
            // files before the clean LSN can take them for the object's.
            pg::relation::flush_all_buffers(r.map.key);
            if let Some(m) = apply_map(r.map) {
                after_switch(&m, &rewritten, r.free_pages, r.touched.as_deref());
            }
        }
        OffloadRecord::Bare(m) => {
            if let Some(m) = apply_map(m) {
                after_switch(&m, &[], false, None);
            }
        }
    }
}

/// A fork's map from WAL into the shared map, never moving it back: a
/// later offload's map is kept (`None`); the same offload's map keeps
/// what happened since (segments written, truncated, the eviction done:
/// those only go one way until the next offload); a broken map is
/// replaced, with every segment taken as written (local writes since may
/// be lost with its file, so reads look at the local file first).
fn apply_map(mut m: ForkMap) -> Option<ForkMap> {
    match shared::get(m.key) {
        // A later offload of this fork is already here (crash recovery).
        Some(cur) if cur.state != State::Pending && cur.map.lsn > m.lsn => return None,
        Some(cur) if cur.state == State::Live => {
            if cur.map.lsn == m.lsn {
                m.evicted |= cur.map.evicted;
            }
            // A segment the map shares with this one (the same offload, or
            // one a re-offload kept as it was: the same base and layers; one
            // that gained a layer may be longer) keeps its local writes and
            // truncations.
            for s in &mut m.segments {
                if let Some(c) = cur.map.segments.iter().find(|c| c.same_objects(s)) {
                    s.written |= c.written;
                    s.blocks = s.blocks.min(c.blocks);
                }
            }
        }
        Some(cur) if cur.state == State::Broken => {
            m.segments.iter_mut().for_each(|s| s.written = true);
        }
        _ => {}
    }
    if !shared::put(&m, State::Live, true, false) {
        errors::error(
            PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
            format!("yezzey: out of shared memory replaying the map of {}", m.key),
            "The map of offloaded segments grows in dynamic shared memory; check the operating system's shared memory limits.",
        );
    }
    Some(m)
}

/// REOFFLOAD on the primary: `m` is staged beside the fork's live map,
/// its new objects uploaded, and `superseded` (the old map's segments it
/// no longer names, written by `old_writer`) held; logs it and makes `m`
/// live as one step, then retires `superseded` at the record. With
/// `free_pages` the caller holds AccessExclusiveLock on the relation and
/// has written out its buffers: the local pages the new objects hold are
/// freed. Returns the record's position. Raises no ERROR once the record
/// is written.
pub fn reoffload(
    m: &ForkMap,
    superseded: &[SegmentMeta],
    old_writer: Option<MemberId>,
    free_pages: bool,
) -> Lsn {
    let r = Reoffload {
        map: m.clone(),
        superseded: superseded.to_vec(),
        superseded_writer: old_writer,
        free_pages,
    };
    let payload = serde_json::to_vec(&r).expect("serialising a record");
    let head = shared::promotion(m);
    let layered = m
        .segments
        .iter()
        .chain(superseded)
        .any(|s| !s.layers.is_empty());
    let lsn = pg::xlog::log_apply_settle(
        RMGR_ID,
        if layered {
            XLOG_YEZZEY_REOFFLOAD_LAYERS
        } else {
            XLOG_YEZZEY_REOFFLOAD
        },
        &payload,
        true,
        |_| {
            // Touches only the fork's entry, allocates nothing: staged before.
            assert!(
                shared::promote(&head),
                "the staged map of {} vanished",
                m.key
            );
        },
        // Before a checkpoint can pass the record: one that wrote the new
        // map file with the superseded objects still held (no retired
        // record) would let a crash lose them.
        |lsn| shared::unstage(m.key, Some(lsn)),
    );
    fault::point("after_wal");
    after_switch(m, &rewritten(m), free_pages, None);
    lsn
}

/// The segments a re-offload's map says it rewrote.
fn rewritten(m: &ForkMap) -> Vec<u32> {
    m.segments
        .iter()
        .filter(|s| s.written)
        .map(|s| s.segno)
        .collect()
}

/// REOFFLOAD in redo.
fn redo_reoffload(r: Reoffload, lsn: Lsn) {
    let mut old = r.map.clone();
    old.writer = r.superseded_writer;
    let rewritten = rewritten(&r.map);
    // Pages dirty in buffers are written under the map they were made
    // with: a page newer than the old objects must reach the local file
    // before the new clean LSN would take it for a page the objects hold.
    pg::relation::flush_all_buffers(r.map.key);
    let applied = apply_map(r.map);
    // Named by no map since this record, whatever the map files say.
    shared::add_retiring(&old, &r.superseded, lsn, unix_now());
    match applied {
        Some(m) => after_switch(&m, &rewritten, r.free_pages, None),
        None => persist::persist_or_warn(old.key),
    }
}

/// What follows an offload's or a re-offload's switch, on the primary and
/// in redo: with `free_pages`, the local pages the map's objects hold are
/// freed from the segments it (re)wrote ([`evict::free_superseded_pages`];
/// with `touched`, only those segments' pages are checked, the others are
/// freed whole);
/// the local copies of segments without local writes are freed (if an
/// earlier eviction left them); then the map file. (The file need not come
/// first: until a checkpoint writes it, the record is replayed after a
/// crash.) Never raises an ERROR.
fn after_switch(m: &ForkMap, rewritten: &[u32], free_pages: bool, touched: Option<&[u32]>) {
    if free_pages {
        evict::free_superseded_pages(m, rewritten, touched);
    }
    fault::point("mid_reoffload_evict");
    if evict::free_unwritten(m) {
        let k = m.key;
        yezzey_smgr_shim::map::set_evicted(k.spc, k.db, k.rel, k.fork.as_i32());
    }
    fault::point("after_map");
    persist::persist_or_warn(m.key);
}

/// FORGET on the primary: the fork's data is local again (load back) or
/// gone (its database was dropped); its objects retire. Its buffers are
/// written out first, here and in redo: while the map is there, the
/// fork's length comes from it; once it goes, from the local files.
pub fn forget(key: RelFork, offload_lsn: Option<Lsn>) -> Lsn {
    let f = Forget {
        key,
        lsn: offload_lsn,
    };
    let payload = serde_json::to_vec(&f).expect("serialising a record");
    pg::relation::flush_all_buffers(key);
    let lsn = pg::xlog::log_and_apply(RMGR_ID, XLOG_YEZZEY_FORGET, &payload, false, |lsn| {
        retire(key, lsn);
    });
    fault::point("after_forget");
    persist::persist_or_warn(key);
    lsn
}

/// FORGET in redo.
fn redo_forget(f: Forget, lsn: Lsn) {
    if let (Some(cur), Some(flsn)) = (shared::get(f.key), f.lsn) {
        if cur.state == State::Live && cur.map.lsn > flsn {
            return; // a later offload's map (crash recovery)
        }
    }
    // The pages a load back logged may be only in buffers yet (full-page
    // images replayed just before): on disk before the map goes, or the
    // fork would look as long as its local file, empty.
    pg::relation::flush_all_buffers(f.key);
    retire(f.key, lsn);
    persist::persist_or_warn(f.key);
}

fn retire(key: RelFork, lsn: Lsn) {
    yezzey_smgr_shim::map::retire(
        key.spc,
        key.db,
        key.rel,
        key.fork.as_i32(),
        lsn.0,
        unix_now(),
    );
}

/// Replays a record.
pub fn redo(info: u8, data: &[u8], lsn: Lsn) {
    let result = match info {
        XLOG_YEZZEY_OFFLOAD => serde_json::from_slice::<OffloadRecord>(data).map(redo_offload),
        XLOG_YEZZEY_FORGET => serde_json::from_slice::<Forget>(data).map(|f| redo_forget(f, lsn)),
        XLOG_YEZZEY_REOFFLOAD | XLOG_YEZZEY_REOFFLOAD_LAYERS => {
            serde_json::from_slice::<Reoffload>(data).map(|r| redo_reoffload(r, lsn))
        }
        other => {
            errors::error(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("yezzey redo: unknown record type {other:#x}"),
                "The WAL was written by a newer yezzey; install it on this server.",
            );
        }
    };
    if let Err(e) = result {
        errors::error(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("yezzey redo: unreadable record: {e}"),
            "The WAL was written by a newer yezzey; install it on this server.",
        );
    }
}

/// A record as `pg_waldump` shows it: its JSON.
pub fn describe(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A record type's name.
pub fn identify(info: u8) -> Option<&'static std::ffi::CStr> {
    match pg::xlog::info_type(info) {
        XLOG_YEZZEY_OFFLOAD => Some(c"OFFLOAD"),
        XLOG_YEZZEY_FORGET => Some(c"FORGET"),
        XLOG_YEZZEY_REOFFLOAD => Some(c"REOFFLOAD"),
        XLOG_YEZZEY_REOFFLOAD_LAYERS => Some(c"REOFFLOAD_LAYERS"),
        _ => None,
    }
}
