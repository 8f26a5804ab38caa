//! The shared map (`smgr_shim/src/yezzey_map.c`) in yezzey's own terms:
//! typed keys and [`ForkMap`]s in, the same out.
use crate::pg;
use yezzey_smgr_shim::map::{self, ForkHead};
use yezzey_smgr_shim::{LayerInfo, SegInfo, MAX_LAYERS};
use yezzey_storage::key::{Fork, Lsn, MemberId, ObjectId, RelFork};
use yezzey_storage::names::{ObjectName, SegmentId};
use yezzey_storage::state::map::{ForkMap, LayerMeta, SegmentMeta};
use yezzey_storage::state::retired::Retired;
use yezzey_storage::state::unix_now;

/// What state a fork's map is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Uploading, not logged yet: readers ignore it; GC keeps its objects.
    Pending,
    /// Logged: its remote ranges are served from the objects.
    Live,
    /// Its map file was damaged or missing: it serves nothing and refuses
    /// reads and writes until it is repaired.
    Broken,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::Pending => map::PENDING,
            State::Live => map::LIVE,
            State::Broken => map::BROKEN,
        }
    }

    fn of(code: u8) -> State {
        match code {
            c if c == map::PENDING => State::Pending,
            c if c == map::LIVE => State::Live,
            _ => State::Broken,
        }
    }
}

/// One fork as the shared map holds it.
#[derive(Debug, Clone)]
pub struct SharedFork {
    pub state: State,
    /// Its map file is not in step yet.
    pub dirty: bool,
    pub version: u64,
    pub map: ForkMap,
}

fn head_of(m: &ForkMap, state: State, dirty: bool) -> (ForkHead, Vec<SegInfo>) {
    let head = ForkHead {
        spc: m.key.spc,
        db: m.key.db,
        rel: m.key.rel,
        fork: m.key.fork.as_i32(),
        state: state.code(),
        evicted: m.evicted,
        page_checksums: m.page_checksums,
        dirty,
        content: m.content,
        writer: m.writer.map_or(0, |w| w.0),
        offloaded_at: m.offloaded_at,
        lsn: m.lsn.0,
        clean_lsn: m.clean_lsn.0,
        nsegs: m.segments.len() as u32,
        ..Default::default()
    };
    let segs = m.segments.iter().map(|s| seg_info(m, s)).collect();
    (head, segs)
}

/// A segment as the shared map (and the read path) holds it.
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
        raw_len: s.raw_len,
        stored_len: s.stored_len,
        written: s.written,
        touched: false,
        page_checksums: m.page_checksums,
        nlayers: s.layers.len() as u32,
        layers: layer_infos(&s.layers),
    }
}

// One limit for the shared map (C) and the maps the storage core builds.
const _: () = assert!(MAX_LAYERS == yezzey_storage::state::map::MAX_LAYERS);

/// A segment's layers as the shared map holds them (a map never has more
/// than `YZ_MAX_LAYERS`: re-offloads merge them before).
fn layer_infos(layers: &[LayerMeta]) -> [LayerInfo; MAX_LAYERS] {
    assert!(
        layers.len() <= MAX_LAYERS,
        "a segment with {} layers",
        layers.len()
    );
    let mut out = [LayerInfo::default(); MAX_LAYERS];
    for (o, l) in out.iter_mut().zip(layers) {
        *o = LayerInfo {
            object_id: l.object_id.0,
            raw_len: l.raw_len,
            stored_len: l.stored_len,
        };
    }
    out
}

pub fn key_of(spc: u32, db: u32, rel: u32, fork: i32) -> RelFork {
    RelFork {
        spc,
        db,
        rel,
        fork: Fork(fork as u8),
    }
}

fn writer(w: u64) -> Option<MemberId> {
    (w != 0).then_some(MemberId(w))
}

fn fork_of(h: &ForkHead, segs: &[SegInfo]) -> SharedFork {
    SharedFork {
        state: State::of(h.state),
        dirty: h.dirty,
        version: h.version,
        map: ForkMap {
            system_id: pg::system_id(),
            content: h.content,
            key: key_of(h.spc, h.db, h.rel, h.fork),
            writer: writer(h.writer),
            offloaded_at: h.offloaded_at,
            lsn: Lsn(h.lsn),
            clean_lsn: Lsn(h.clean_lsn),
            evicted: h.evicted,
            page_checksums: h.page_checksums,
            segments: segs
                .iter()
                .map(|s| SegmentMeta {
                    segno: s.segno,
                    blocks: s.remote_blocks,
                    object_id: ObjectId(s.object_id),
                    raw_len: s.raw_len,
                    stored_len: s.stored_len,
                    written: s.written,
                    layers: s.layers[..s.nlayers as usize]
                        .iter()
                        .map(|l| LayerMeta {
                            object_id: ObjectId(l.object_id),
                            raw_len: l.raw_len,
                            stored_len: l.stored_len,
                        })
                        .collect(),
                })
                .collect(),
        },
    }
}

/// A fork's map in any state.
pub fn get(key: RelFork) -> Option<SharedFork> {
    map::get_fork(key.spc, key.db, key.rel, key.fork.as_i32()).map(|(h, s)| fork_of(&h, &s))
}

/// The segments of a fork's pending map that had blocks written out since
/// it was put (`YzSegInfo.touched`); every segment it names if its map is
/// not pending (which the caller rules out: the safe answer all the same).
pub fn touched(key: RelFork, m: &ForkMap) -> Vec<u32> {
    match map::get_fork(key.spc, key.db, key.rel, key.fork.as_i32()) {
        Some((h, segs)) if h.state == map::PENDING => {
            segs.iter().filter(|s| s.touched).map(|s| s.segno).collect()
        }
        _ => m.segments.iter().map(|s| s.segno).collect(),
    }
}

/// Inserts or replaces a fork's map. False when memory does not allow it
/// (with `within_limit`, when yezzey.max_map_memory does not).
pub fn put(m: &ForkMap, state: State, dirty: bool, within_limit: bool) -> bool {
    let (head, segs) = head_of(m, state, dirty);
    map::put_fork(&head, &segs, within_limit)
}

/// Marks a fork broken: nothing is served from it, every read refuses.
pub fn put_broken(key: RelFork) -> bool {
    let m = ForkMap {
        system_id: pg::system_id(),
        content: crate::settings::content_id(),
        key,
        writer: None,
        offloaded_at: 0,
        lsn: Lsn(0),
        clean_lsn: Lsn(0),
        evicted: true,
        page_checksums: false,
        segments: Vec::new(),
    };
    put(&m, State::Broken, false, false)
}

/// Moves a fork between states (false if it was not in `from`). Allocates
/// nothing: may run in a critical section.
pub fn set_state(key: RelFork, from: State, to: State) -> bool {
    map::set_state(
        key.spc,
        key.db,
        key.rel,
        key.fork.as_i32(),
        from.code(),
        to.code(),
    )
}

/// Every fork's map, in any state.
pub fn all() -> Vec<SharedFork> {
    map::list()
        .iter()
        .filter_map(|h| get(key_of(h.spc, h.db, h.rel, h.fork)))
        .collect()
}

/// Forks of one database (any tablespace) that readers see (live or broken).
pub fn of_database(db: u32) -> Vec<SharedFork> {
    all()
        .into_iter()
        .filter(|f| f.map.key.db == db && f.state != State::Pending)
        .collect()
}

/// An entry of the retiring list: an object leaving the map, with the
/// retired record it gets; or, while `held`, an object a switch in
/// progress keeps from garbage collection (no record is written for it).
pub struct Leaving {
    pub id: ObjectId,
    pub retired: Retired,
    pub seg: SegInfo,
    pub held: bool,
}

/// The retiring list.
pub fn retiring() -> Vec<Leaving> {
    map::retiring()
        .iter()
        .map(|r| {
            let s = &r.seg;
            let name = ObjectName {
                segment: SegmentId {
                    system_id: pg::system_id(),
                    content: r.content,
                    rel: key_of(s.spc, s.db, s.rel, s.fork),
                    segfile: s.segno,
                },
                writer: writer(s.writer),
                object_id: ObjectId(s.object_id),
            };
            Leaving {
                id: ObjectId(s.object_id),
                retired: Retired {
                    name: name.relative(),
                    lsn: Lsn(r.lsn),
                    at: r.at,
                },
                seg: *s,
                held: r.lsn == 0,
            }
        })
        .collect()
}

/// The retiring-list entries of one of `m`'s segments: one per object,
/// its base and each layer, for those `which` keeps.
fn retiring_of(
    m: &ForkMap,
    s: &SegmentMeta,
    lsn: Lsn,
    at: i64,
    hold: u8,
    which: impl Fn(ObjectId) -> bool,
) -> Vec<map::Retiring> {
    let base = SegmentMeta {
        layers: Vec::new(),
        ..s.clone()
    };
    let layers = s.layers.iter().map(|l| SegmentMeta {
        object_id: l.object_id,
        raw_len: l.raw_len,
        stored_len: l.stored_len,
        ..base.clone()
    });
    std::iter::once(base.clone())
        .chain(layers)
        .filter(|o| which(o.object_id))
        .map(|o| map::Retiring {
            seg: seg_info(m, &o),
            content: m.content,
            lsn: lsn.0,
            at,
            owner_pid: 0,
            hold,
        })
        .collect()
}

/// Keeps objects from garbage collection while this process switches a
/// fork's map (ERRORs if the list cannot grow): the objects of the new map
/// `new` that the live map `old` does not name (about to be uploaded), and
/// `superseded`, segments of `old` that the switch will retire.
/// [`unstage`] ends the holds.
pub fn hold(new: &ForkMap, old: &ForkMap, superseded: &[SegmentMeta]) {
    let named_before: Vec<ObjectId> = old.segments.iter().flat_map(|s| s.object_ids()).collect();
    for s in &new.segments {
        for r in retiring_of(new, s, Lsn(0), 0, map::HOLD_NEW, |id| {
            !named_before.contains(&id)
        }) {
            map::hold(&r);
        }
    }
    for s in superseded {
        for r in retiring_of(old, s, Lsn(0), 0, map::HOLD_SUPERSEDED, |_| true) {
            map::hold(&r);
        }
    }
}

/// Stages `m` as the LIVE fork's next map; false (nothing changed) if the
/// fork is not live, another switch is staged, or memory does not allow
/// it (with `within_limit`, yezzey.max_map_memory).
pub fn stage(m: &ForkMap, within_limit: bool) -> bool {
    let (head, segs) = head_of(m, State::Live, true);
    map::stage(&head, &segs, within_limit)
}

/// What [`promote`] needs of `m`, made before the critical section.
pub fn promotion(m: &ForkMap) -> ForkHead {
    head_of(m, State::Live, true).0
}

/// Makes the staged map (its head made by [`promotion`]) the fork's.
/// Allocates nothing: runs in the record's critical section.
pub fn promote(head: &ForkHead) -> bool {
    map::promote(head)
}

/// Ends this process's switch of a fork: after a promotion (`Some(lsn)`)
/// the superseded objects retire at the record; aborted (`None`), every
/// hold and the staged map go.
pub fn unstage(key: RelFork, promoted_at: Option<Lsn>) {
    let (lsn, at) = promoted_at.map_or((0, 0), |l| (l.0, unix_now()));
    map::unstage(key.spc, key.db, key.rel, key.fork.as_i32(), lsn, at);
}

/// Puts `m`'s segments `segs` on the retiring list at `lsn` (redo of a
/// switch that retired them).
pub fn add_retiring(m: &ForkMap, segs: &[SegmentMeta], lsn: Lsn, at: i64) {
    for s in segs {
        for r in retiring_of(m, s, lsn, at, 0, |_| true) {
            map::add_retiring(&r);
        }
    }
}
