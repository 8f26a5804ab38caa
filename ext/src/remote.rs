//! The read path's Rust half: the C shim calls these for blocks that are
//! holes in a segment's remote range.
use crate::{errors, mapfile, settings};
use std::ffi::c_void;
use yezzey_smgr_shim::SegInfo;

const BLCKSZ: usize = 8192;

fn object_name(seg: &SegInfo) -> String {
    mapfile::local_object_name(seg.spc, seg.db, seg.rel, seg.fork, seg.segno, seg.object_id)
        .relative()
}

/// Fills `n` buffers with blocks `[first, first + n)` of an offloaded segment.
///
/// # Safety
/// Called by the C shim with valid pointers to `n` page buffers.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn yezzey_remote_read(
    seg: *const SegInfo,
    first: u32,
    n: u32,
    buffers: *mut *mut c_void,
) {
    let seg = &*seg;
    let storage = settings::storage();
    let name = object_name(seg);
    let mut bufs: Vec<&mut [u8]> = (0..n as usize)
        .map(|i| std::slice::from_raw_parts_mut(*buffers.add(i) as *mut u8, BLCKSZ))
        .collect();
    if let Err(e) =
        storage
            .reader
            .read_blocks_blocking(&name, first as u64 * BLCKSZ as u64, &mut bufs)
    {
        errors::report(
            e,
            &format!(
                "could not read blocks {}..{} of segment {} of relation {}/{}/{} from object storage",
                first,
                first + n,
                seg.segno,
                seg.spc,
                seg.db,
                seg.rel
            ),
        );
    }
}

/// Starts fetching blocks that PostgreSQL announced it will read.
///
/// # Safety
/// Called by the C shim with a valid segment pointer.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn yezzey_remote_prefetch(seg: *const SegInfo, first: u32, n: u32) {
    let seg = &*seg;
    let storage = settings::storage();
    storage.reader.prefetch(
        &object_name(seg),
        first as u64 * BLCKSZ as u64,
        n as u64 * BLCKSZ as u64,
    );
}
