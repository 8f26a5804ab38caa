//! Which segments a re-offload rewrites, as a pure function.
//!
//! A fork offloaded before has, per segment, an object holding its first
//! `blocks` blocks, and local files holding what was written since (the
//! segment is then *written*) or appended past that range. A re-offload
//! uploads a new object for every segment with anything local and keeps
//! the objects of the others, so its cost follows what changed, by
//! segment (1 GB). The objects of the segments it rewrites, and of
//! segments the relation no longer has, are *superseded*: they retire at
//! the re-offload's WAL record, under the same rules as a dropped
//! relation's (standbys, backups and retention keep them as long as they
//! may need them).
//!
//! A map names one writer for all its objects, so a map that another
//! lineage member wrote (before a switchover) is rewritten whole.
use super::map::{ForkMap, SegmentMeta};
use crate::key::{MemberId, ObjectId};

/// What a re-offload does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The fork's map after it: kept segments as they were; rewritten
    /// ones with new object ids, no sizes yet, and taken as written until
    /// their local pages are freed.
    pub map: ForkMap,
    /// Segment numbers to upload anew.
    pub rewrite: Vec<u32>,
    /// Segments of the old map that the new one no longer names.
    pub superseded: Vec<SegmentMeta>,
}

/// Plans a re-offload of `old` by `writer`, the fork having `segments`
/// (segment number, blocks) now. `None` when nothing changed: every
/// segment is as long as its object's range and unwritten.
pub fn plan(
    old: &ForkMap,
    segments: &[(u32, u32)],
    writer: MemberId,
    mut new_id: impl FnMut() -> ObjectId,
) -> Option<Plan> {
    let whole = old.writer != Some(writer);
    let mut map = old.clone();
    map.writer = Some(writer);
    map.segments = Vec::with_capacity(segments.len());
    let mut rewrite = Vec::new();
    for &(segno, blocks) in segments {
        match old.segments.iter().find(|s| s.segno == segno) {
            Some(s) if !whole && !s.written && s.blocks == blocks => map.segments.push(s.clone()),
            _ => {
                rewrite.push(segno);
                map.segments.push(SegmentMeta {
                    segno,
                    blocks,
                    object_id: new_id(),
                    raw_len: 0,
                    stored_len: 0,
                    written: true,
                });
            }
        }
    }
    let superseded: Vec<SegmentMeta> = old
        .segments
        .iter()
        .filter(|s| !map.segments.iter().any(|n| n.object_id == s.object_id))
        .cloned()
        .collect();
    (!rewrite.is_empty() || !superseded.is_empty()).then_some(Plan {
        map,
        rewrite,
        superseded,
    })
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

    #[test]
    fn nothing_changed_is_nothing_to_do() {
        let old = map(vec![seg(0, 131072, 1, false), seg(1, 10, 2, false)]);
        assert_eq!(
            plan(&old, &[(0, 131072), (1, 10)], MemberId(7), ids()),
            None
        );
    }

    #[test]
    fn written_and_grown_segments_are_rewritten_the_rest_kept() {
        let old = map(vec![
            seg(0, 131072, 1, false),
            seg(1, 131072, 2, true),
            seg(2, 10, 3, false),
        ]);
        let p = plan(
            &old,
            &[(0, 131072), (1, 131072), (2, 12), (3, 5)],
            MemberId(7),
            ids(),
        )
        .unwrap();
        assert_eq!(p.rewrite, vec![1, 2, 3]);
        assert_eq!(p.map.segments[0], old.segments[0]);
        assert!(p.map.segments[1..]
            .iter()
            .all(|s| s.written && s.raw_len == 0));
        assert_eq!(p.map.segments[2].blocks, 12);
        let gone: Vec<u32> = p.superseded.iter().map(|s| s.segno).collect();
        assert_eq!(gone, vec![1, 2]);
    }

    #[test]
    fn segments_the_relation_lost_are_superseded() {
        let old = map(vec![seg(0, 131072, 1, false), seg(1, 0, 2, false)]);
        let p = plan(&old, &[(0, 131072)], MemberId(7), ids()).unwrap();
        assert!(p.rewrite.is_empty());
        assert_eq!(p.map.segments, vec![old.segments[0].clone()]);
        assert_eq!(p.superseded, vec![old.segments[1].clone()]);
    }

    #[test]
    fn another_members_map_is_rewritten_whole() {
        let old = map(vec![seg(0, 131072, 1, false), seg(1, 10, 2, false)]);
        let p = plan(&old, &[(0, 131072), (1, 10)], MemberId(8), ids()).unwrap();
        assert_eq!(p.rewrite, vec![0, 1]);
        assert_eq!(p.superseded.len(), 2);
        assert_eq!(p.map.writer, Some(MemberId(8)));
    }
}
