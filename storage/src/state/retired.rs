//! Objects that left every map (load back, TRUNCATE, DROP, DROP DATABASE),
//! one record each, with the WAL position and the time they left. A
//! standby that has not replayed that far, or a backup or PITR target from
//! before it, may still read them: garbage collection holds a retired
//! object until every standby is past its position and the retention
//! period has passed.
//!
//! Written on every server that replays the change (redo goes through the
//! same paths), so a promoted standby knows them too.
use super::map::{ForkMap, SegmentMeta};
use super::{durable, StateDir};
use crate::key::{Lsn, ObjectId};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Retired {
    /// Object name relative to the store's prefix.
    pub name: String,
    /// WAL position at or after the change that dropped the last reference.
    pub lsn: Lsn,
    /// Unix seconds.
    pub at: i64,
}

impl Retired {
    /// The records retiring the objects of `segments` of `m` (bases and
    /// layers) at `lsn` and `at` would write, each with its object's id.
    pub fn of<'a>(
        m: &'a ForkMap,
        segments: &'a [SegmentMeta],
        lsn: Lsn,
        at: i64,
    ) -> impl Iterator<Item = (ObjectId, Retired)> + 'a {
        segments.iter().flat_map(move |s| {
            s.object_ids().map(move |id| {
                let name = m.name_of(s.segno, id).relative();
                (id, Retired { name, lsn, at })
            })
        })
    }
}

impl StateDir {
    /// Records the objects of `segments` (of map `m`) as retired.
    pub fn record_retired(
        &self,
        m: &ForkMap,
        segments: &[SegmentMeta],
        lsn: Lsn,
        at: i64,
    ) -> io::Result<()> {
        for (id, r) in Retired::of(m, segments, lsn, at) {
            self.record_one(id, &r)?;
        }
        Ok(())
    }

    /// Records one object as retired (its id names the file).
    pub fn record_one(&self, id: ObjectId, r: &Retired) -> io::Result<()> {
        let json = serde_json::to_vec(r).expect("serialising a retired object");
        durable::write(&self.retired_dir(), &format!("{id}.json"), &json)
    }

    /// Every readable record with its file; unreadable files are skipped
    /// (an object without a record is collected as soon as nothing
    /// references it).
    pub fn retired(&self) -> Vec<(PathBuf, Retired)> {
        durable::read_json_dir(&self.retired_dir())
            .into_iter()
            .filter_map(|(p, r)| Some((p, r.ok()?)))
            .collect()
    }
}
