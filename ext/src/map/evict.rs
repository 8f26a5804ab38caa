//! Freeing the local copies of offloaded segments, and measuring what is
//! left locally.
//!
//! Only a segment without local writes since its offload is ever freed:
//! reads of such a segment's remote range never look at its local file,
//! so freeing it (now, again after a crash, or in a copy made before the
//! eviction finished) can never lose a byte; a written segment's file
//! holds the only copy of its written blocks and is never touched.
use crate::{fault, fds, pg};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use yezzey_smgr_shim::map::{self, Lookup};
use yezzey_storage::key::{RelFork, BLOCK_SIZE};
use yezzey_storage::state::map::ForkMap;

/// Frees the local copies of the map's segments that have no local writes
/// (as the shared map says now). False if one could not be freed (it is
/// tried again by checkpoints; nothing is lost meanwhile).
pub fn free_unwritten(m: &ForkMap) -> bool {
    let k = m.key;
    let mut ok = true;
    fds::transient(1, || {
        for (i, s) in m.segments.iter().enumerate() {
            let unwritten = matches!(
                map::get(k.spc, k.db, k.rel, k.fork.as_i32(), s.segno),
                Lookup::Found(seg) if !seg.written
            );
            if !unwritten {
                continue;
            }
            let path = pg::segment_path(k, s.segno);
            if let Err(e) = free_if_held(&path, s.blocks) {
                pgrx::warning!(
                    "yezzey: could not free the local copy of {}: {e}; checkpoints try again",
                    path.display()
                );
                ok = false;
            }
            if i == 0 {
                fault::point("mid_punch");
            }
        }
    });
    ok
}

/// Frees a segment's first `blocks` blocks (its remote range) if its file
/// still holds data there.
fn free_if_held(path: &Path, blocks: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = match fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let tail = md.size().saturating_sub(blocks as u64 * BLOCK_SIZE as u64);
    // Allocation beyond the local tail (plus extent metadata) means data.
    if md.blocks() * 512 <= tail + 64 * 1024 {
        return Ok(());
    }
    evict(path, blocks)
}

/// Frees the local copy of a segment's first `blocks` blocks (its remote
/// range). A file that holds nothing beyond them is truncated to nothing:
/// md takes the segment to be as long as its remote range (gp_patches/0002)
/// and reads the blocks past the file's end as holes, which are served from
/// the object; and a tool that copies the data directory copies nothing of
/// it. A file with blocks beyond (written after an earlier offload) keeps
/// its length and gets a hole instead. Not fsynced: a freeing lost to a
/// crash is done again by the first checkpoint after the start, and until
/// then the local copy is never read.
fn evict(path: &Path, blocks: u32) -> io::Result<()> {
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
    Ok(())
}

/// Bytes the files of a fork take on local disk (holes excluded).
pub fn local_bytes(key: RelFork) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (0..)
        .map_while(|segno| fs::metadata(pg::segment_path(key, segno)).ok())
        .map(|md| md.blocks() * 512)
        .sum()
}

/// Bytes a segment's local file holds (holes excluded; 0 if absent).
pub fn segment_local_bytes(key: RelFork, segno: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(pg::segment_path(key, segno)).map_or(0, |md| md.blocks() * 512)
}
