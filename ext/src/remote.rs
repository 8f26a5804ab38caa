//! The read path's Rust half: reads and prefetches of blocks in a
//! segment's remote range, which the C shim hands over (through `ffi`).
use crate::{errors, pg, settings};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::rc::Rc;
use yezzey_smgr_shim::SegInfo;
use yezzey_storage::cache::HitCheck;
use yezzey_storage::key::{Fork, MemberId, ObjectId, RelFork, BLOCK_SIZE};
use yezzey_storage::names::{ObjectName, SegmentId};

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
/// `yezzey_cache_clear()` mends it). Pages offloaded without checksums get
/// theirs set after the read (the C shim), so they are hashed too.
fn hit_check(seg: &SegInfo) -> HitCheck {
    if seg.page_checksums && yezzey_smgr_shim::host_verifies_pages() {
        HitCheck::SkipIf(host_checks_page)
    } else {
        HitCheck::Every
    }
}

/// The object behind a shared-map entry. Objects of the whole lineage share
/// this server's system id (and content id); the writer is the entry's.
fn name_of(seg: &SegInfo) -> ObjectName {
    ObjectName {
        segment: SegmentId {
            system_id: pg::system_id(),
            content: settings::content_id(),
            rel: RelFork {
                spc: seg.spc,
                db: seg.db,
                rel: seg.rel,
                fork: Fork(seg.fork as u8),
            },
            segfile: seg.segno,
        },
        writer: (seg.writer != 0).then_some(MemberId(seg.writer)),
        object_id: ObjectId(seg.object_id),
    }
}

type SegKey = (u32, u32, u32, i32, u32, [u8; 16], u64);

thread_local! {
    /// The last segment's object name: a scan reads one segment for a while,
    /// and formatting the name on every read shows in profiles.
    static LAST_NAME: RefCell<Option<(SegKey, Rc<str>)>> = const { RefCell::new(None) };
}

fn object_name(seg: &SegInfo) -> Rc<str> {
    let key = (
        seg.spc,
        seg.db,
        seg.rel,
        seg.fork,
        seg.segno,
        seg.object_id,
        seg.writer,
    );
    LAST_NAME.with_borrow_mut(|last| match last {
        Some((k, name)) if *k == key => name.clone(),
        _ => {
            let name: Rc<str> = name_of(seg).relative().into();
            *last = Some((key, name.clone()));
            name
        }
    })
}

/// Fills `bufs` (one page each) with blocks `first..` of an offloaded
/// segment, or raises the failure as an ERROR.
pub fn read(seg: &SegInfo, first: u32, bufs: &mut [&mut [u8]]) {
    let storage = settings::storage();
    let name = object_name(seg);
    let offset = first as u64 * BLOCK_SIZE as u64;
    if let Err(e) = storage
        .reader
        .read_blocks_blocking(&name, offset, bufs, hit_check(seg))
    {
        errors::report(
            e,
            &format!(
                "could not read blocks {}..{} of segment {} of relation {}/{}/{} from object storage",
                first,
                first + bufs.len() as u32,
                seg.segno,
                seg.spc,
                seg.db,
                seg.rel
            ),
        );
    }
}

/// Starts fetching blocks PostgreSQL announced it will read.
pub fn prefetch(seg: &SegInfo, first: u32, n: u32) {
    let storage = settings::storage();
    storage.reader.prefetch(
        &object_name(seg),
        first as u64 * BLOCK_SIZE as u64,
        n as u64 * BLOCK_SIZE as u64,
        hit_check(seg),
    );
}
