//! The read path's Rust half: the C shim calls these for blocks that are
//! holes in a segment's remote range.
use crate::{errors, mapfile, settings};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::c_void;
use std::rc::Rc;
use yezzey_smgr_shim::SegInfo;
use yezzey_storage::cache::HitCheck;

const BLCKSZ: usize = 8192;

/// A page PostgreSQL verifies itself on read: any but a new one (`pd_upper`
/// 0), which passes its check only if all zero, so a damaged cache entry
/// could pass as a new page.
fn host_checks_page(page: &[u8]) -> bool {
    const AT: usize = std::mem::offset_of!(pg_sys::PageHeaderData, pd_upper);
    page[AT] != 0 || page[AT + 1] != 0
}

/// Cache entries carry, and hits check, yezzey's own per-block hash only
/// where PostgreSQL's page checksum does not cover the block (a corrupt
/// cached page is then PostgreSQL's "invalid page" ERROR, as for a local one;
/// `yezzey_cache_clear()` mends it).
fn hit_check() -> HitCheck {
    if yezzey_smgr_shim::host_verifies_pages() {
        HitCheck::SkipIf(host_checks_page)
    } else {
        HitCheck::Every
    }
}

type SegKey = (u32, u32, u32, i32, u32, [u8; 16]);

thread_local! {
    /// The last segment's object name: a scan reads one segment for a while,
    /// and formatting the name on every read shows in profiles.
    static LAST_NAME: RefCell<Option<(SegKey, Rc<str>)>> = const { RefCell::new(None) };
}

fn object_name(seg: &SegInfo) -> Rc<str> {
    let key = (seg.spc, seg.db, seg.rel, seg.fork, seg.segno, seg.object_id);
    LAST_NAME.with_borrow_mut(|last| match last {
        Some((k, name)) if *k == key => name.clone(),
        _ => {
            let name: Rc<str> = mapfile::local_object_name(
                seg.spc,
                seg.db,
                seg.rel,
                seg.fork,
                seg.segno,
                seg.object_id,
            )
            .relative()
            .into();
            *last = Some((key, name.clone()));
            name
        }
    })
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
    if let Err(e) = storage.reader.read_blocks_blocking(
        &name,
        first as u64 * BLCKSZ as u64,
        &mut bufs,
        hit_check(),
    ) {
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
        hit_check(),
    );
}
