//! Applying offloads and their undoing to this server: the shared map (the
//! C shim, what the I/O path reads), the map files (`pg_yezzey/map`, what
//! rebuilds it at startup) and the local files' holes. Used alike by the
//! primary, by WAL redo (crash recovery, standbys) and at startup, so every
//! step is idempotent and a crash between any two is finished later.
//!
//! **Maps from the future.** A server recovering from a crash loads its map
//! files before replaying WAL, so they may already describe an offload (or
//! a later one, or writes after it) that redo has yet to reach. Replaying
//! the older records must not move the map back: an OFFLOAD already applied
//! keeps the entry as the file has it (local-write flags, truncations), one
//! superseded by a later offload of the same fork is skipped, and so is a
//! FORGET of an offload older than the map's. Reads during that replay see
//! the newer pages, which redo skips as already applied, exactly as it
//! does pages flushed before the crash.
use crate::{fault, fds, pg};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use yezzey_smgr_shim::{map, SegInfo};
use yezzey_storage::key::{Lsn, RelFork, BLOCK_SIZE};
use yezzey_storage::state::map::{ForkMap, SegmentMeta};
use yezzey_storage::state::unix_now;

/// A segment as the shared map holds it.
pub fn seg_info(m: &ForkMap, s: &SegmentMeta) -> SegInfo {
    SegInfo {
        spc: m.key.spc,
        db: m.key.db,
        rel: m.key.rel,
        fork: m.key.fork.as_i32(),
        segno: s.segno,
        remote_blocks: s.blocks,
        object_id: s.object_id.0,
        writer: m.writer.map_or(0, |w| w.0),
        clean_lsn: m.clean_lsn.0,
        written: s.written,
    }
}

/// Makes a map say what the shared map (which the I/O path updates first)
/// says: each segment's remote length and local-write flag. Segments it no
/// longer has (truncated or dropped) leave the map, and their objects are
/// recorded as retired. Call holding the map lock.
fn refresh_from_shared(m: &mut ForkMap) -> io::Result<()> {
    let k = m.key;
    let mut gone = Vec::new();
    m.segments.retain_mut(
        |s| match map::get(k.spc, k.db, k.rel, k.fork.as_i32(), s.segno) {
            Some(seg) => {
                s.blocks = seg.remote_blocks;
                s.written = seg.written;
                true
            }
            None => {
                gone.push(s.clone());
                false
            }
        },
    );
    pg::state().record_retired(m, &gone, pg::current_lsn(), unix_now())
}

/// Writes a map as the shared map has it.
fn write_from_shared(m: &mut ForkMap) -> io::Result<()> {
    let state = pg::state();
    let _lock = state.lock_maps()?;
    refresh_from_shared(m)?;
    state.write_map(m)
}

/// Applies an offload: shared map, then map file, then the local holes,
/// then the map file again (evicted).
pub fn offload(m: &ForkMap) -> io::Result<()> {
    fds::transient(fds::STATE_OP + 1, || {
        match pg::state().read_map(m.key) {
            // A later offload of this fork is already here (crash recovery).
            Some(cur) if cur.lsn > m.lsn => return Ok(()),
            // This one, applied before a crash: keep what happened since.
            Some(cur) if cur.lsn == m.lsn && cur.evicted => {
                for s in &cur.segments {
                    put(&cur, s)?;
                    if !s.written {
                        evict_again(&pg::segment_path(cur.key, s.segno), s.blocks);
                    }
                }
                return Ok(());
            }
            _ => {}
        }
        for s in &m.segments {
            put(m, s)?;
        }
        let mut m = m.clone();
        m.evicted = false;
        write_from_shared(&mut m)?;
        fault::point("after_map");
        for (i, s) in m.segments.iter().enumerate() {
            evict(&pg::segment_path(m.key, s.segno), s.blocks)?;
            if i == 0 {
                fault::point("mid_punch");
            }
        }
        m.evicted = true;
        // A write may have landed since the map was published: its flag
        // must survive in the file.
        write_from_shared(&mut m)
    })
}

fn put(m: &ForkMap, s: &SegmentMeta) -> io::Result<()> {
    if map::put(&seg_info(m, s)) {
        Ok(())
    } else {
        Err(io::Error::other(
            "the shared map is full: raise yezzey.max_segments and restart",
        ))
    }
}

/// Undoes the offload made at `lsn` (any, if `None`) once the fork's data
/// is local again (or gone); its objects are retired.
pub fn forget(key: RelFork, lsn: Option<Lsn>) -> io::Result<()> {
    fds::transient(fds::STATE_OP, || {
        let state = pg::state();
        if let (Some(cur), Some(lsn)) = (state.read_map(key), lsn) {
            if cur.lsn > lsn {
                return Ok(()); // a later offload's map (crash recovery)
            }
        }
        map::remove(key.spc, key.db, key.rel, key.fork.as_i32());
        let _lock = state.lock_maps()?;
        if let Some(m) = state.read_map(key) {
            state.record_retired(&m, &m.segments, pg::current_lsn(), unix_now())?;
        }
        state.remove_map(key)
    })
}

/// Makes the map files of a relation's forks (`fork` < 0: all of them)
/// say what the shared map says, after truncate, unlink, a reused
/// relfilenumber or a first local write changed it.
pub fn persist(spc: u32, db: u32, rel: u32, fork: i32) -> io::Result<()> {
    let forks: Vec<u8> = if fork < 0 {
        (0..=3).collect()
    } else {
        vec![fork as u8]
    };
    fds::transient(fds::STATE_OP, || {
        let state = pg::state();
        let _lock = state.lock_maps()?;
        for f in forks {
            let key = RelFork {
                spc,
                db,
                rel,
                fork: yezzey_storage::key::Fork(f),
            };
            let Some(mut m) = state.read_map(key) else {
                continue;
            };
            refresh_from_shared(&mut m)?;
            if m.segments.is_empty() {
                state.remove_map(key)?;
            } else {
                state.write_map(&m)?;
            }
        }
        Ok(())
    })
}

/// At postmaster start (and restart after a crash): loads every map file
/// into shared memory, and finishes evictions a crash interrupted (no write
/// can have reached those relations in between: offload holds its lock
/// until the eviction is done).
pub fn load_at_start() {
    for m in pg::state().read_maps() {
        match m {
            Ok(m) if m.evicted => {
                for s in &m.segments {
                    let _ = put(&m, s);
                    if !s.written {
                        evict_again(&pg::segment_path(m.key, s.segno), s.blocks);
                    }
                }
            }
            Ok(m) => {
                if let Err(e) = offload(&m) {
                    pgrx::warning!(
                        "yezzey: could not finish evicting relation file {}: {e}",
                        m.key
                    );
                }
            }
            Err(e) => pgrx::warning!("yezzey: ignoring unreadable map file {e}"),
        }
    }
}

/// Frees the local copy of a segment's first `blocks` blocks (its remote
/// range). A file that holds nothing beyond them is truncated to nothing:
/// md takes the segment to be as long as its remote range (gp_patches/0002)
/// and reads the blocks past the file's end as holes, which are served from
/// the object; and a tool that copies the data directory copies nothing of
/// it. A file with blocks beyond (written after an earlier offload) keeps
/// its length and gets a hole instead.
pub fn evict(path: &Path, blocks: u32) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    if blocks == 0 {
        return Ok(());
    }
    let f = OpenOptions::new().write(true).open(path)?;
    let remote = blocks as u64 * BLOCK_SIZE as u64;
    if f.metadata()?.len() <= remote {
        f.set_len(0)?;
    } else {
        fallocate(
            &f,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            remote,
        )?;
    }
    f.sync_all()
}

/// Evicts again a segment that holds data in its remote range although no
/// block of it was written since the offload: a copy made before eviction
/// finished, or by a tool that filled holes with zeros. Safe because reads
/// of an unwritten segment's remote range never look at the local file,
/// and a write after the copy was made comes back from WAL (redo writes it
/// through the storage manager, which marks the segment written first).
fn evict_again(path: &Path, blocks: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::metadata(path) else {
        return;
    };
    let tail = md.size().saturating_sub(blocks as u64 * BLOCK_SIZE as u64);
    // Allocation beyond the local tail (plus extent metadata) means data.
    if md.blocks() * 512 <= tail + 64 * 1024 {
        return;
    }
    if let Err(e) = evict(path, blocks) {
        pgrx::warning!("yezzey: could not free {}: {e}", path.display());
    }
}

/// Bytes the files of a fork take on local disk (holes excluded).
pub fn local_bytes(key: RelFork) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (0..)
        .map_while(|segno| fs::metadata(pg::segment_path(key, segno)).ok())
        .map(|md| md.blocks() * 512)
        .sum()
}
