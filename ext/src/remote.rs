//! The read path's Rust half: reads and prefetches of blocks in a
//! segment's remote range, which the C shim hands over (through `ffi`).
use crate::{errors, pg, settings};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::rc::Rc;
use yezzey_smgr_shim::SegInfo;
use yezzey_storage::cache::HitCheck;
use yezzey_storage::key::{Fork, MemberId, ObjectId, RelFork, BLOCK_SIZE};
use yezzey_storage::layers;
use yezzey_storage::names::{ObjectName, SegmentId};
use yezzey_storage::reader::RemoteReader;

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

/// The name of object `id` of a shared-map entry's segment. Objects of
/// the whole lineage share this server's system id (and content id); the
/// writer is the entry's.
fn name_of(seg: &SegInfo, id: [u8; 16]) -> Rc<str> {
    let name = ObjectName {
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
        object_id: ObjectId(id),
    };
    name.relative().into()
}

/// A segment's object names: its base, then its layers oldest first.
struct Names {
    base: Rc<str>,
    layers: Vec<Rc<str>>,
}

/// What identifies a segment's objects: relation fork, segment, writer,
/// and the ids of its base and layers.
type SegKey = (u32, u32, u32, i32, u32, u64, Vec<[u8; 16]>);

fn seg_key(seg: &SegInfo) -> SegKey {
    let layers = &seg.layers[..seg.nlayers as usize];
    let ids = std::iter::once(seg.object_id)
        .chain(layers.iter().map(|l| l.object_id))
        .collect();
    (
        seg.spc, seg.db, seg.rel, seg.fork, seg.segno, seg.writer, ids,
    )
}

thread_local! {
    /// The last segment's object names: a scan reads one segment for a
    /// while, and formatting names on every read shows in profiles.
    static LAST_NAMES: RefCell<Option<(SegKey, Rc<Names>)>> = const { RefCell::new(None) };
}

fn names(seg: &SegInfo) -> Rc<Names> {
    let key = seg_key(seg);
    LAST_NAMES.with_borrow_mut(|last| match last {
        Some((k, names)) if *k == key => names.clone(),
        _ => {
            let names = Rc::new(Names {
                base: name_of(seg, seg.object_id),
                layers: seg.layers[..seg.nlayers as usize]
                    .iter()
                    .map(|l| name_of(seg, l.object_id))
                    .collect(),
            });
            *last = Some((key, names.clone()));
            names
        }
    })
}

/// Blocks `first..first + n` of a segment, cut by the object that serves
/// them ([`layers::resolve`]): (object name, first block in its raw bytes,
/// blocks). One piece of the base for a segment without layers.
fn pieces(
    reader: &RemoteReader,
    seg: &SegInfo,
    first: u32,
    n: u32,
) -> yezzey_storage::Result<Vec<(Rc<str>, u32, u32)>> {
    let names = names(seg);
    if names.layers.is_empty() {
        return Ok(vec![(names.base.clone(), first, n)]);
    }
    let layouts = names
        .layers
        .iter()
        .map(|name| reader.layout_blocking(name))
        .collect::<yezzey_storage::Result<Vec<_>>>()?;
    let mut index = Vec::with_capacity(layouts.len());
    for (l, name) in layouts.iter().zip(&names.layers) {
        match &l.layer {
            Some(i) if i.head.base == seg.object_id => index.push(i),
            _ => {
                return Err(yezzey_storage::Error::corrupt(
                    name,
                    "not a layer over the segment's object",
                ))
            }
        }
    }
    Ok(layers::resolve(&index, first, n)
        .into_iter()
        .map(|p| {
            let name = p.layer.map_or(&names.base, |i| &names.layers[i]);
            (name.clone(), p.at, p.count)
        })
        .collect())
}

/// Fills `bufs` (one page each) with blocks `first..` of an offloaded
/// segment, or raises the failure as an ERROR.
pub fn read(seg: &SegInfo, first: u32, bufs: &mut [&mut [u8]]) {
    let storage = settings::storage();
    let reader = &storage.reader;
    let result = pieces(reader, seg, first, bufs.len() as u32).and_then(|pieces| {
        let mut rest = &mut bufs[..];
        for (name, at, n) in pieces {
            let (now, later) = rest.split_at_mut(n as usize);
            let offset = at as u64 * BLOCK_SIZE as u64;
            reader.read_blocks_blocking(&name, offset, now, hit_check(seg))?;
            rest = later;
        }
        Ok(())
    });
    if let Err(e) = result {
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

/// Starts fetching blocks PostgreSQL announced it will read (a hint: a
/// failure to look up the layers is left to the read).
pub fn prefetch(seg: &SegInfo, first: u32, n: u32) {
    let storage = settings::storage();
    let reader = &storage.reader;
    let Ok(pieces) = pieces(reader, seg, first, n) else {
        return;
    };
    for (name, at, n) in pieces {
        reader.prefetch(
            &name,
            at as u64 * BLOCK_SIZE as u64,
            n as u64 * BLOCK_SIZE as u64,
            hit_check(seg),
        );
    }
}
