//! Rebuilding a fork's map from the objects it has in the store, for a map
//! file that was damaged or lost ([`super::map::MapError`]).
//!
//! Object names carry everything a map needs but the offload's LSNs:
//! relation, fork, segment file, writer and object id; the object's trailer
//! gives its raw length. What a rebuilt map cannot know it assumes the
//! safe way:
//! * every segment whose local file holds data is *written* (reads look at
//!   the local file first and fill only its holes from the object);
//! * no clean LSN (no local write is ever dropped as already in the object)
//!   and no offload LSN (WAL replay of the fork's own OFFLOAD record, if any
//!   comes, replaces the rebuilt map);
//! * no page checksums in the objects (reads set them where the cluster
//!   verifies them; harmless for pages that had them).
//!
//! Which objects: those of the fork's segments that this cluster has not
//! retired (a retired object is one a load back, truncation or drop left
//! behind). Several candidates for one segment (an earlier offload's
//! object not retired here, or a parent's later upload) are resolved in
//! favour of the writers given first (this cluster, then its parent); if
//! that does not decide, the repair refuses and names them. A segment's
//! layers are the layer objects whose trailer names its base, numbered
//! 1, 2, ... without a gap or a repeat, and no more than a map holds (else
//! the repair refuses, naming them). A layer left by a re-offload that
//! crashed before its record, numbered after the last real one, is taken
//! for a real one: harmless, since it holds copies of pages that stayed
//! local (the crash came before they were freed), which reads look at
//! first; a later re-offload's layer of the same number makes the repair
//! refuse until the leftover is deleted.
use super::map::{ForkMap, LayerMeta, SegmentMeta};
use crate::key::{Lsn, MemberId, ObjectId, RelFork, BLOCK_SIZE};
use crate::names::{self, ObjectName};
use crate::reader::RemoteReader;
use crate::store::ObjectStore;
use std::collections::{BTreeMap, HashSet};

/// An object the store lists for the fork, with its trailer's raw length.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: ObjectName,
    pub stored_len: u64,
    pub raw_len: u64,
    /// A layer object's base, place among its layers and the segment's
    /// length in blocks when it was written ([`crate::format::Layer`]).
    pub layer: Option<(ObjectId, u32, u32)>,
}

/// Why a map could not be rebuilt.
#[derive(Debug, Clone, PartialEq)]
pub enum RepairError {
    /// The store holds no (unretired) object of the fork.
    NoObjects,
    /// These segments have several equally likely objects.
    Ambiguous(Vec<(u32, Vec<String>)>),
}

impl std::fmt::Display for RepairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepairError::NoObjects => {
                f.write_str("the store holds no object of it that this cluster has not retired")
            }
            RepairError::Ambiguous(segs) => {
                f.write_str("more than one object could be it: ")?;
                for (segno, names) in segs {
                    write!(f, "segment {segno}: {}; ", names.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// The objects the store holds for a fork, from the prefixes of `writers`
/// (and the one of names from before lineages), each with its trailer's
/// raw length. Objects whose trailer does not verify are skipped, with a
/// message each in the second list.
pub async fn candidates(
    reader: &RemoteReader,
    system_id: u64,
    content: i32,
    writers: impl IntoIterator<Item = MemberId>,
    key: RelFork,
) -> crate::Result<(Vec<Candidate>, Vec<String>)> {
    let rel_dir = format!("{}/{}/{}/", key.spc, key.db, key.rel);
    let mut prefixes: Vec<String> = writers
        .into_iter()
        .map(|m| names::writer_prefix(system_id, content, m) + &rel_dir)
        .collect();
    prefixes.push(names::content_prefix(system_id, content) + &rel_dir);
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for p in prefixes {
        for o in reader.store().list(&p).await? {
            let Ok(name) = ObjectName::parse(&o.name) else {
                continue;
            };
            if name.segment.rel != key {
                continue;
            }
            match reader.layout(&o.name).await {
                Ok(l) => out.push(Candidate {
                    name,
                    stored_len: o.size,
                    raw_len: l.trailer.raw_len,
                    layer: l
                        .layer
                        .as_ref()
                        .map(|i| (ObjectId(i.head.base), i.head.seq, i.blocks)),
                }),
                Err(e) => skipped.push(format!("{}: {e}", o.name)),
            }
        }
    }
    Ok((out, skipped))
}

/// The rebuilt map of `key`. `preferred`: writers in order of preference;
/// `local_bytes(segno)`: how much data the segment's local file holds.
pub fn rebuild(
    key: RelFork,
    candidates: &[Candidate],
    retired: &HashSet<String>,
    preferred: &[MemberId],
    local_bytes: impl Fn(u32) -> u64,
    now: i64,
) -> Result<ForkMap, RepairError> {
    let mut by_seg: BTreeMap<u32, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        if c.name.segment.rel == key && !retired.contains(&c.name.relative()) {
            by_seg.entry(c.name.segment.segfile).or_default().push(c);
        }
    }
    let first: &Candidate = by_seg
        .values()
        .next()
        .and_then(|v| v.first().copied())
        .ok_or(RepairError::NoObjects)?;
    let rank = |w: Option<MemberId>| {
        w.and_then(|w| preferred.iter().position(|p| *p == w))
            .unwrap_or(preferred.len())
    };
    let mut chosen = Vec::new();
    let mut ambiguous = Vec::new();
    for (segno, cands) in by_seg {
        let (layers, mut bases): (Vec<&Candidate>, Vec<&Candidate>) =
            cands.into_iter().partition(|c| c.layer.is_some());
        let best = bases.iter().map(|c| rank(c.name.writer)).min();
        bases.retain(|c| Some(rank(c.name.writer)) == best);
        let [base] = bases[..] else {
            let mut names: Vec<String> = bases.iter().map(|c| c.name.relative()).collect();
            if names.is_empty() {
                names = layers.iter().map(|c| c.name.relative()).collect();
            }
            ambiguous.push((segno, names));
            continue;
        };
        // Its layers: over this base, by its writer, numbered 1, 2, ...
        let mut over: Vec<&Candidate> = layers
            .into_iter()
            .filter(|c| c.layer.is_some_and(|l| l.0 == base.name.object_id))
            .collect();
        over.sort_by_key(|c| c.layer.map(|l| l.1));
        let numbered = over.len() <= super::map::MAX_LAYERS
            && over.iter().enumerate().all(|(i, c)| {
                c.layer.is_some_and(|l| l.1 == i as u32 + 1) && c.name.writer == base.name.writer
            });
        if !numbered {
            ambiguous.push((segno, over.iter().map(|c| c.name.relative()).collect()));
            continue;
        }
        chosen.push((base, over));
    }
    // One map has one writer: mixed writers cannot be one offload.
    let writer = chosen
        .first()
        .map_or(first.name.writer, |c| c.0.name.writer);
    if chosen.iter().any(|c| c.0.name.writer != writer) {
        ambiguous.push((
            u32::MAX,
            chosen.iter().map(|c| c.0.name.relative()).collect(),
        ));
    }
    if !ambiguous.is_empty() {
        return Err(RepairError::Ambiguous(ambiguous));
    }
    Ok(ForkMap {
        system_id: first.name.segment.system_id,
        content: first.name.segment.content,
        key,
        writer,
        offloaded_at: now,
        lsn: Lsn(0),
        clean_lsn: Lsn(0),
        evicted: true,
        page_checksums: false,
        segments: chosen
            .iter()
            .map(|(c, over)| {
                // The segment's length: the newest layer's, which a
                // truncation may have made shorter than the base.
                let base_blocks = (c.raw_len / BLOCK_SIZE as u64) as u32;
                let newest = over.last().and_then(|l| l.layer).map(|l| l.2);
                SegmentMeta {
                    segno: c.name.segment.segfile,
                    blocks: newest.unwrap_or(base_blocks),
                    object_id: c.name.object_id,
                    raw_len: c.raw_len,
                    stored_len: c.stored_len,
                    written: local_bytes(c.name.segment.segfile) > 0,
                    layers: over
                        .iter()
                        .map(|l| LayerMeta {
                            object_id: l.name.object_id,
                            raw_len: l.raw_len,
                            stored_len: l.stored_len,
                        })
                        .collect(),
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ObjectId;
    use crate::names::SegmentId;

    const KEY: RelFork = RelFork::main(1663, 5, 16384);

    fn cand(writer: u64, segno: u32, id: u8) -> Candidate {
        Candidate {
            name: ObjectName {
                segment: SegmentId {
                    system_id: 7,
                    content: -1,
                    rel: KEY,
                    segfile: segno,
                },
                writer: Some(MemberId(writer)),
                object_id: ObjectId([id; 16]),
            },
            stored_len: 10,
            raw_len: 3 * BLOCK_SIZE as u64,
            layer: None,
        }
    }

    fn layer(segno: u32, id: u8, base: u8, seq: u32, end: u32) -> Candidate {
        Candidate {
            raw_len: BLOCK_SIZE as u64,
            layer: Some((ObjectId([base; 16]), seq, end)),
            ..cand(1, segno, id)
        }
    }

    #[test]
    fn layers_are_put_back_over_their_base_in_order() {
        let c = vec![
            cand(1, 0, 1),
            layer(0, 12, 1, 2, 9),
            layer(0, 11, 1, 1, 4),
            layer(0, 20, 99, 1, 4), // over a base that is gone
        ];
        let m = rebuild(KEY, &c, &HashSet::new(), &[MemberId(1)], |_| 0, 0).unwrap();
        let s = &m.segments[0];
        let ids: Vec<ObjectId> = s.object_ids().collect();
        assert_eq!(
            ids,
            vec![ObjectId([1; 16]), ObjectId([11; 16]), ObjectId([12; 16])]
        );
        assert_eq!(s.blocks, 9, "the newest layer's length");
        // A segment truncated since its base (3 blocks) to 2.
        let c2 = vec![cand(1, 0, 1), layer(0, 11, 1, 1, 2)];
        let m = rebuild(KEY, &c2, &HashSet::new(), &[MemberId(1)], |_| 0, 0).unwrap();
        assert_eq!(m.segments[0].blocks, 2);
        // A gap or a repeat in the numbers is refused.
        for extra in [layer(0, 13, 1, 2, 9), layer(0, 13, 1, 4, 9)] {
            let mut c = c.clone();
            c.push(extra);
            assert!(matches!(
                rebuild(KEY, &c, &HashSet::new(), &[MemberId(1)], |_| 0, 0),
                Err(RepairError::Ambiguous(_))
            ));
        }
    }

    #[test]
    fn rebuilds_from_unretired_objects_preferring_own() {
        let c = vec![cand(1, 0, 1), cand(1, 1, 2), cand(2, 0, 3), cand(1, 0, 4)];
        let retired: HashSet<String> = [c[3].name.relative()].into();
        // Member 1 (this cluster) over member 2 (its parent); segment 0's
        // older object was retired here.
        let m = rebuild(
            KEY,
            &c,
            &retired,
            &[MemberId(1), MemberId(2)],
            |s| (s == 1) as u64,
            9,
        )
        .unwrap();
        assert_eq!(m.writer, Some(MemberId(1)));
        let segs: Vec<_> = m
            .segments
            .iter()
            .map(|s| (s.segno, s.object_id, s.blocks, s.written))
            .collect();
        assert_eq!(
            segs,
            vec![
                (0, ObjectId([1; 16]), 3, false),
                (1, ObjectId([2; 16]), 3, true)
            ]
        );
        assert_eq!((m.lsn, m.clean_lsn, m.evicted), (Lsn(0), Lsn(0), true));
    }

    #[test]
    fn refuses_to_guess() {
        let c = vec![cand(1, 0, 1), cand(1, 0, 2)];
        assert!(matches!(
            rebuild(KEY, &c, &HashSet::new(), &[MemberId(1)], |_| 0, 0),
            Err(RepairError::Ambiguous(v)) if v.len() == 1 && v[0].1.len() == 2
        ));
        assert_eq!(
            rebuild(KEY, &[], &HashSet::new(), &[], |_| 0, 0),
            Err(RepairError::NoObjects)
        );
        let mut other = cand(1, 0, 1);
        other.name.segment.rel = RelFork::main(1663, 5, 99);
        assert_eq!(
            rebuild(KEY, &[other], &HashSet::new(), &[], |_| 0, 0),
            Err(RepairError::NoObjects)
        );
    }
}
