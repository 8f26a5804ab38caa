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
//! that does not decide, the repair refuses and names them.
use super::map::{ForkMap, SegmentMeta};
use crate::key::{Lsn, MemberId, RelFork, BLOCK_SIZE};
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
    for (segno, mut cands) in by_seg {
        let best = cands.iter().map(|c| rank(c.name.writer)).min().unwrap();
        cands.retain(|c| rank(c.name.writer) == best);
        if cands.len() == 1 {
            chosen.push(cands[0]);
        } else {
            ambiguous.push((segno, cands.iter().map(|c| c.name.relative()).collect()));
        }
    }
    // One map has one writer: mixed writers cannot be one offload.
    let writer = chosen.first().map_or(first.name.writer, |c| c.name.writer);
    if chosen.iter().any(|c| c.name.writer != writer) {
        ambiguous.push((u32::MAX, chosen.iter().map(|c| c.name.relative()).collect()));
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
            .map(|c| SegmentMeta {
                segno: c.name.segment.segfile,
                blocks: (c.raw_len / BLOCK_SIZE as u64) as u32,
                object_id: c.name.object_id,
                raw_len: c.raw_len,
                stored_len: c.stored_len,
                written: local_bytes(c.name.segment.segfile) > 0,
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
