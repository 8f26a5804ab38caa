//! What a re-offload uploads, as a pure function.
//!
//! A fork offloaded before has, per segment, a base object holding its
//! first `blocks` blocks, maybe layers over it ([`crate::layers`]), and
//! local files holding what was written since (the segment is then
//! *written*) or appended past that range. A re-offload uploads, for each
//! segment with anything local, either
//! * a **layer**: only the segment's local blocks (pages written since,
//!   found as the pages of the local file that are not holes, and every
//!   block past the objects' range), so its cost follows the blocks that
//!   changed; or
//! * a new **base** (a *compaction* of the segment): the whole segment, its
//!   layers merged, when one more layer would make more than
//!   [`Policy::max_layers`], when the layers would hold more than half the
//!   segment's blocks (their space and their reads would cost more than a
//!   rewrite), or when the map is another lineage member's (a map names one
//!   writer for all its objects, so one written before a switchover is
//!   rewritten whole).
//!
//! Segments with nothing local keep their objects. The objects of
//! compacted segments, and of segments the relation no longer has, are
//! *superseded*: they retire at the re-offload's WAL record, under the same
//! rules as a dropped relation's (standbys, backups and retention keep
//! them as long as they may need them).
use super::map::{ForkMap, LayerMeta, SegmentMeta};
use crate::format::BlockRun;
use crate::key::{MemberId, ObjectId};

/// When a re-offload compacts a segment instead of adding a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Layers a segment may have (0: never layer, always rewrite whole).
    pub max_layers: usize,
}

/// What a re-offload does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The fork's map after it: kept segments as they were; the others
    /// with their new object (no sizes yet), taken as written until their
    /// local pages are freed.
    pub map: ForkMap,
    /// Segments to upload whole, as a new base without layers.
    pub rewrite: Vec<u32>,
    /// Segments that get a layer, with the blocks it holds; the layer is
    /// the last of the segment's in `map`.
    pub layer: Vec<(u32, Vec<BlockRun>)>,
    /// Segments of the old map whose objects the new one no longer names.
    pub superseded: Vec<SegmentMeta>,
}

/// Plans a re-offload of `old` by `writer`, the fork having `segments`
/// (segment number, blocks) now. `local(old_segment, blocks_now)` gives the
/// blocks a layer over that segment would hold (asked only for segments
/// with anything local). `None` when nothing changed: every segment is as
/// long as its objects' range and unwritten.
pub fn plan(
    old: &ForkMap,
    segments: &[(u32, u32)],
    writer: MemberId,
    policy: Policy,
    mut local: impl FnMut(&SegmentMeta, u32) -> Vec<BlockRun>,
    mut new_id: impl FnMut() -> ObjectId,
) -> Option<Plan> {
    let whole = old.writer != Some(writer);
    let mut map = old.clone();
    map.writer = Some(writer);
    map.segments = Vec::with_capacity(segments.len());
    let (mut rewrite, mut layer) = (Vec::new(), Vec::new());
    for &(segno, blocks) in segments {
        let prev = old.segments.iter().find(|s| s.segno == segno);
        let seg = match prev {
            Some(s) if !whole && !s.written && s.blocks == blocks => s.clone(),
            Some(s) if !whole && s.blocks <= blocks => {
                let runs = local(s, blocks);
                let held: u64 = runs.iter().map(|r| r.len as u64).sum();
                let layered = s.layer_raw_bytes() / crate::key::BLOCK_SIZE as u64 + held;
                if runs.is_empty() && s.blocks == blocks {
                    // Written, but nothing is local any more (its pages were
                    // freed before its flag was cleared): kept, and freed
                    // again after the switch, which clears the flag.
                    s.clone()
                } else if s.layers.len() < policy.max_layers && 2 * layered <= blocks as u64 {
                    let mut n = s.clone();
                    n.blocks = blocks;
                    n.written = true;
                    n.layers.push(LayerMeta {
                        object_id: new_id(),
                        raw_len: 0,
                        stored_len: 0,
                    });
                    layer.push((segno, runs));
                    n
                } else {
                    rewrite.push(segno);
                    new_base(segno, blocks, new_id())
                }
            }
            _ => {
                rewrite.push(segno);
                new_base(segno, blocks, new_id())
            }
        };
        map.segments.push(seg);
    }
    let named: Vec<ObjectId> = map.segments.iter().flat_map(|s| s.object_ids()).collect();
    let superseded: Vec<SegmentMeta> = old
        .segments
        .iter()
        .filter(|s| !named.contains(&s.object_id))
        .cloned()
        .collect();
    let written = map.segments.iter().any(|s| s.written);
    (!rewrite.is_empty() || !layer.is_empty() || !superseded.is_empty() || written).then_some(
        Plan {
            map,
            rewrite,
            layer,
            superseded,
        },
    )
}

fn new_base(segno: u32, blocks: u32, object_id: ObjectId) -> SegmentMeta {
    SegmentMeta {
        segno,
        blocks,
        object_id,
        raw_len: 0,
        stored_len: 0,
        layers: Vec::new(),
        written: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Fork, Lsn, RelFork};

    fn seg(segno: u32, blocks: u32, id: u8, written: bool) -> SegmentMeta {
        SegmentMeta {
            segno,
            blocks,
            object_id: ObjectId([id; 16]),
            raw_len: blocks as u64 * 8192,
            stored_len: 100,
            layers: Vec::new(),
            written,
        }
    }

    fn map(segments: Vec<SegmentMeta>) -> ForkMap {
        ForkMap {
            system_id: 1,
            content: -1,
            key: RelFork {
                spc: 1663,
                db: 5,
                rel: 16384,
                fork: Fork(0),
            },
            writer: Some(MemberId(7)),
            offloaded_at: 0,
            lsn: Lsn(100),
            clean_lsn: Lsn(90),
            evicted: true,
            page_checksums: true,
            segments,
        }
    }

    fn ids() -> impl FnMut() -> ObjectId {
        let mut n = 100u8;
        move || {
            n += 1;
            ObjectId([n; 16])
        }
    }

    const LAYERS: Policy = Policy { max_layers: 8 };
    const WHOLE: Policy = Policy { max_layers: 0 };

    /// Local blocks: the ones past the objects' range, and block 7 of a
    /// written segment.
    fn local(s: &SegmentMeta, blocks: u32) -> Vec<BlockRun> {
        let mut runs = Vec::new();
        if s.written {
            runs.push(BlockRun { start: 7, len: 1 });
        }
        if blocks > s.blocks {
            runs.push(BlockRun {
                start: s.blocks,
                len: blocks - s.blocks,
            });
        }
        runs
    }

    #[test]
    fn nothing_changed_is_nothing_to_do() {
        let old = map(vec![seg(0, 131072, 1, false), seg(1, 10, 2, false)]);
        for p in [LAYERS, WHOLE] {
            assert_eq!(
                plan(&old, &[(0, 131072), (1, 10)], MemberId(7), p, local, ids()),
                None
            );
        }
    }

    /// Plans, with `policy`, a re-offload of a map of three segments (one
    /// unchanged, one written, one grown) by the fork with a new fourth.
    fn unchanged_written_grown_and_new(policy: Policy) -> (ForkMap, Plan) {
        let old = map(vec![
            seg(0, 131072, 1, false),
            seg(1, 131072, 2, true),
            seg(2, 10, 3, false),
        ]);
        let now = [(0, 131072), (1, 131072), (2, 12), (3, 5)];
        let p = plan(&old, &now, MemberId(7), policy, local, ids()).unwrap();
        (old, p)
    }

    #[test]
    fn written_and_grown_segments_get_layers_of_their_local_blocks() {
        let (old, p) = unchanged_written_grown_and_new(LAYERS);
        assert_eq!(p.rewrite, vec![3], "a new segment is a new base");
        assert_eq!(
            p.layer,
            vec![
                (1, vec![BlockRun { start: 7, len: 1 }]),
                (2, vec![BlockRun { start: 10, len: 2 }]),
            ]
        );
        assert_eq!(p.map.segments[0], old.segments[0]);
        for i in [1, 2] {
            let (o, n) = (&old.segments[i], &p.map.segments[i]);
            assert_eq!(
                (n.object_id, n.layers.len(), n.written),
                (o.object_id, 1, true)
            );
        }
        assert_eq!(p.map.segments[2].blocks, 12);
        assert!(p.superseded.is_empty(), "every old object is still named");
    }

    #[test]
    fn without_layers_written_and_grown_segments_are_rewritten() {
        let (_, p) = unchanged_written_grown_and_new(WHOLE);
        assert_eq!(p.rewrite, vec![1, 2, 3]);
        assert!(p.layer.is_empty());
        assert!(p.map.segments[1..]
            .iter()
            .all(|s| s.written && s.raw_len == 0 && s.layers.is_empty()));
        let gone: Vec<u32> = p.superseded.iter().map(|s| s.segno).collect();
        assert_eq!(gone, vec![1, 2]);
    }

    #[test]
    fn a_segment_compacts_past_its_layer_limit_or_half_its_blocks() {
        let mut s = seg(0, 1000, 1, true);
        s.layers = (0..8)
            .map(|i| LayerMeta {
                object_id: ObjectId([50 + i; 16]),
                raw_len: 8192,
                stored_len: 10,
            })
            .collect();
        let old = map(vec![s.clone()]);
        let p = plan(&old, &[(0, 1000)], MemberId(7), LAYERS, local, ids()).unwrap();
        assert_eq!(p.rewrite, vec![0]);
        assert!(p.map.segments[0].layers.is_empty());
        assert_eq!(
            p.superseded,
            vec![s.clone()],
            "its base and every layer retire"
        );
        // Under the limit, but the layers would hold more than half.
        s.layers.truncate(2);
        let old = map(vec![s]);
        let half = |_: &SegmentMeta, _: u32| vec![BlockRun { start: 0, len: 499 }];
        let p = plan(&old, &[(0, 1000)], MemberId(7), LAYERS, half, ids()).unwrap();
        assert_eq!(p.rewrite, vec![0]);
        let under = |_: &SegmentMeta, _: u32| vec![BlockRun { start: 0, len: 498 }];
        let p = plan(&old, &[(0, 1000)], MemberId(7), LAYERS, under, ids()).unwrap();
        assert_eq!((p.rewrite.len(), p.map.segments[0].layers.len()), (0, 3));
    }

    #[test]
    fn a_written_segment_with_nothing_local_is_kept_and_switched() {
        let old = map(vec![seg(0, 100, 1, true)]);
        let p = plan(
            &old,
            &[(0, 100)],
            MemberId(7),
            LAYERS,
            |_, _| Vec::new(),
            ids(),
        )
        .unwrap();
        assert!(p.rewrite.is_empty() && p.layer.is_empty() && p.superseded.is_empty());
        assert_eq!(p.map.segments, old.segments);
    }

    #[test]
    fn segments_the_relation_lost_are_superseded() {
        let old = map(vec![seg(0, 131072, 1, false), seg(1, 0, 2, false)]);
        let p = plan(&old, &[(0, 131072)], MemberId(7), LAYERS, local, ids()).unwrap();
        assert!(p.rewrite.is_empty());
        assert_eq!(p.map.segments, vec![old.segments[0].clone()]);
        assert_eq!(p.superseded, vec![old.segments[1].clone()]);
    }

    #[test]
    fn another_members_map_is_rewritten_whole() {
        let old = map(vec![seg(0, 131072, 1, false), seg(1, 10, 2, true)]);
        let p = plan(
            &old,
            &[(0, 131072), (1, 10)],
            MemberId(8),
            LAYERS,
            local,
            ids(),
        )
        .unwrap();
        assert_eq!(p.rewrite, vec![0, 1]);
        assert_eq!(p.superseded.len(), 2);
        assert_eq!(p.map.writer, Some(MemberId(8)));
    }
}
