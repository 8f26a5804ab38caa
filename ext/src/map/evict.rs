//! Freeing the local copies of offloaded segments, and measuring what is
//! left locally.
//!
//! Only a segment without local writes since its offload is ever freed:
//! reads of such a segment's remote range never look at its local file,
//! so freeing it (now, again after a crash, or in a copy made before the
//! eviction finished) can never lose a byte; a written segment's file
//! holds the only copy of its written blocks and is never touched, but
//! by [`free_superseded_pages`] after an offload or a re-offload, which
//! frees only the pages its new object holds.
use crate::{fault, fds, pg};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use yezzey_smgr_shim::map::{self, Lookup};
use yezzey_storage::format::BlockRun;
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

/// After an offload or a re-offload: frees, in the segments it (re)wrote
/// (`rewritten`), every local page the new objects hold, that is every
/// page whose LSN is at most the map's clean LSN (the new objects were
/// read after the relation was flushed at that position, so they hold
/// those pages or newer ones). A segment left with no other page is unwritten again: its
/// file is truncated and its flag cleared (in this server's shared map
/// only: each server judges its own files). Pages written since, which may
/// hold what the objects lack (a reader pruning a page meanwhile), stay
/// local and keep the segment written. Segments the re-offload kept are
/// never touched: their objects are older than the clean LSN.
///
/// With `check`, only the segments it names are read to check their
/// pages; the others are freed whole (an offload knows which segments
/// were written to while it uploaded: `wal::offload`).
///
/// Nothing may write or read the fork's pages meanwhile, and none may be
/// dirty in a buffer: on the primary the caller holds AccessExclusiveLock
/// and wrote the buffers out; in redo the startup process holds the
/// primary's lock too, and wrote them out. Never raises an ERROR; what it
/// cannot free stays, and is read locally.
pub fn free_superseded_pages(m: &ForkMap, rewritten: &[u32], check: Option<&[u32]>) {
    let k = m.key;
    fds::transient(1, || {
        let segments = m.segments.iter().filter(|s| rewritten.contains(&s.segno));
        for (i, s) in segments.enumerate() {
            let path = pg::segment_path(k, s.segno);
            let whole = check.is_some_and(|c| !c.contains(&s.segno));
            let freed = if whole {
                free_whole(&path, s.blocks)
            } else {
                free_pages_upto(&path, s.blocks, m.clean_lsn.0)
            };
            match freed {
                Ok(true) => {
                    map::clear_written(k.spc, k.db, k.rel, k.fork.as_i32(), s.segno);
                }
                Ok(false) => {}
                Err(e) => pgrx::warning!(
                    "yezzey: could not free the local copy of {}: {e}; it is read locally until the next re-offload",
                    path.display()
                ),
            }
            if i == 0 {
                fault::point("mid_punch");
            }
        }
    });
}

/// Frees a segment's first `blocks` blocks whatever they hold ([`evict`]);
/// true when the file then holds nothing.
fn free_whole(path: &Path, blocks: u32) -> io::Result<bool> {
    match evict(path, blocks) {
        Ok(()) => Ok(fs::metadata(path)?.len() == 0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// A page's LSN (`pd_lsn`: two native-endian 32-bit halves, high first).
fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_ne_bytes(page[0..4].try_into().unwrap());
    let lo = u32::from_ne_bytes(page[4..8].try_into().unwrap());
    (hi as u64) << 32 | lo as u64
}

/// Punches out the pages of a segment's first `blocks` blocks whose LSN is
/// at most `upto`; true when the file then holds nothing (it is truncated
/// to nothing: md takes the segment to be as long as its remote range).
/// Reads only the file's data (SEEK_DATA/SEEK_HOLE skip its holes), so it
/// costs what the segment holds locally, and punches runs of pages at once.
fn free_pages_upto(path: &Path, blocks: u32, upto: u64) -> io::Result<bool> {
    use rustix::fs::{fallocate, FallocateFlags};
    use std::os::unix::fs::FileExt;
    let f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let bs = BLOCK_SIZE as u64;
    let len = f.metadata()?.len();
    let remote = blocks as u64 * bs;
    let end = len.min(remote);
    let mut kept = len > remote;
    let punch = |from: u64, to: u64| -> io::Result<()> {
        if to > from {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            fallocate(&f, flags, from, to - from)?;
        }
        Ok(())
    };
    let mut buf = vec![0u8; 1 << 20];
    for extent in data_extents(&f, end) {
        let (data, stop) = extent?;
        let mut at = data;
        let mut run = None; // start of the run of pages to punch
        while at < stop {
            let n = ((stop - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at)?;
            for (i, page) in buf[..n].chunks(BLOCK_SIZE).enumerate() {
                let off = at + (i * BLOCK_SIZE) as u64;
                let used = page.iter().any(|&b| b != 0);
                let ours = used && page.len() == BLOCK_SIZE && page_lsn(page) <= upto;
                match (ours, run) {
                    (true, None) => run = Some(off),
                    (false, Some(from)) => {
                        punch(from, off)?;
                        run = None;
                    }
                    _ => {}
                }
                kept |= used && !ours;
            }
            at += n as u64;
        }
        if let Some(from) = run {
            punch(from, stop)?;
        }
    }
    if !kept {
        f.set_len(0)?;
    }
    Ok(!kept)
}

/// The page-aligned stretches of a file's first `end` bytes that hold data
/// (SEEK_DATA/SEEK_HOLE: its holes are skipped without being read).
fn data_extents(f: &fs::File, end: u64) -> impl Iterator<Item = io::Result<(u64, u64)>> + '_ {
    use rustix::fs::{seek, SeekFrom};
    let bs = BLOCK_SIZE as u64;
    let mut pos = 0u64;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        // The next data, and where it ends (ENXIO: none past pos).
        let data = match seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d / bs * bs,
            Err(rustix::io::Errno::NXIO) => return None,
            Err(e) => return Some(Err(e.into())),
        };
        if data >= end {
            return None;
        }
        let hole = match seek(f, SeekFrom::Hole(data)) {
            Ok(h) => h,
            Err(e) => return Some(Err(e.into())),
        };
        let stop = hole.div_ceil(bs).saturating_mul(bs).min(end);
        pos = stop.max(hole);
        Some(Ok((data, stop)))
    })
}

/// The blocks a layer over an offloaded segment must hold: the pages of
/// its objects' range `[0, remote)` that its local file holds (a page
/// there is written since, or kept because newer than the objects' copy;
/// a hole or an all-zero page is read from the objects), and every block
/// of `[remote, blocks)` past that range, whatever it holds. Reads only
/// the file's data.
pub fn local_runs(key: RelFork, segno: u32, remote: u32, blocks: u32) -> io::Result<Vec<BlockRun>> {
    use std::os::unix::fs::FileExt;
    let mut runs: Vec<BlockRun> = Vec::new();
    let mut add = |b: u32, n: u32| match runs.last_mut() {
        Some(r) if r.end() == b => r.len += n,
        _ => runs.push(BlockRun { start: b, len: n }),
    };
    let path = pg::segment_path(key, segno);
    match fs::File::open(&path) {
        Ok(f) => {
            let end = (f.metadata()?.len()).min(remote as u64 * BLOCK_SIZE as u64);
            let mut buf = vec![0u8; 1 << 20];
            for extent in data_extents(&f, end) {
                let (data, stop) = extent?;
                let mut at = data;
                while at < stop {
                    let n = ((stop - at) as usize).min(buf.len());
                    f.read_exact_at(&mut buf[..n], at)?;
                    for (i, page) in buf[..n].chunks(BLOCK_SIZE).enumerate() {
                        if page.iter().any(|&b| b != 0) {
                            add(((at as usize + i * BLOCK_SIZE) / BLOCK_SIZE) as u32, 1);
                        }
                    }
                    at += n as u64;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if blocks > remote {
        add(remote, blocks - remote);
    }
    Ok(runs)
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
