//! Object names: where a segment file's objects live in the store.
//!
//! ```text
//! <prefix>/<system id>/seg<content>/m<writer>/<spc>/<db>/<relfilenumber>/<fork>.<segfile>.<object id>.yz
//! <prefix>/<system id>/seg<content>/lineage/m<member>.json        (lineage records)
//! <prefix>/<system id>/seg<content>/backups/m<member>/<lsn>.json  (registered backups)
//! ```
//!
//! * `system id`: the cluster's `pg_control` system identifier, shared by a
//!   primary, its standbys, its physical backups and every cluster restored
//!   or cloned from them (a *lineage*; they share objects), and distinct
//!   between unrelated clusters using one bucket.
//! * `content`: the Greenplum segment content id; `-1` (Greenplum's
//!   coordinator id) for single-node PostgreSQL.
//! * `writer`: the lineage member (one cluster of the lineage, see
//!   [`crate::state::member`]) that uploaded the object. Only its writer
//!   ever deletes an object (or any member, once the writer has been
//!   forgotten), so a restored copy or a clone never collects what its
//!   origin wrote, and the origin never collects what they wrote; and a
//!   member's garbage collection lists only its own prefix. Names written
//!   before lineages existed have no writer component: nobody collects
//!   those automatically.
//! * `segfile`: the file number within the fork: for heap and indexes the
//!   1 GiB segment number, for Greenplum AO/AOCS files `column * 128 + segno`.
//!   It is a plain `u32`, so both fit without a format change.
//! * `object id`: the random id stored in the object's trailer. Every upload
//!   gets a new name, so objects are immutable and never overwritten.
//!
//! The *name* authenticated inside an object is the part after `<prefix>/`,
//! so a bucket prefix can be moved without re-encrypting, but an object
//! copied to another segment's name is rejected.
use crate::error::{Error, Result};
use crate::key::{Fork, MemberId, ObjectId, RelFork};
use std::fmt;

/// Which file a segment object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId {
    pub system_id: u64,
    pub content: i32,
    pub rel: RelFork,
    pub segfile: u32,
}

/// The full identity of one immutable object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    pub segment: SegmentId,
    /// The lineage member that wrote it (`None`: written before lineages).
    pub writer: Option<MemberId>,
    pub object_id: ObjectId,
}

/// The directory (below the store's prefix) of one content id's objects
/// and records: `<system id>/seg<content>/`.
pub fn content_prefix(system_id: u64, content: i32) -> String {
    format!("{system_id}/seg{content}/")
}

/// The directory of every object one member wrote.
pub fn writer_prefix(system_id: u64, content: i32, writer: MemberId) -> String {
    format!("{}m{writer}/", content_prefix(system_id, content))
}

/// The directory of the backups a member registered.
pub fn backups_prefix(system_id: u64, content: i32, member: MemberId) -> String {
    format!("{}backups/m{member}/", content_prefix(system_id, content))
}

/// The directory of the lineage's published records.
pub fn lineage_prefix(system_id: u64, content: i32) -> String {
    format!("{}lineage/", content_prefix(system_id, content))
}

/// The name of one member's lineage record.
pub fn lineage_record(system_id: u64, content: i32, member: MemberId) -> String {
    format!("{}m{member}.json", lineage_prefix(system_id, content))
}

impl ObjectName {
    /// The name authenticated inside the object (relative to the prefix).
    pub fn relative(&self) -> String {
        let s = &self.segment;
        let dir = match self.writer {
            Some(w) => writer_prefix(s.system_id, s.content, w),
            None => content_prefix(s.system_id, s.content),
        };
        format!(
            "{dir}{}/{}/{}/{}.{}.{}.yz",
            s.rel.spc,
            s.rel.db,
            s.rel.rel,
            s.rel.fork.name(),
            s.segfile,
            self.object_id
        )
    }

    /// Parses a relative name (as produced by [`ObjectName::relative`]).
    pub fn parse(rel: &str) -> Result<ObjectName> {
        let bad = || Error::Config(format!("{rel:?} is not a yezzey object name"));
        let mut parts: Vec<&str> = rel.split('/').collect();
        let writer = match parts.len() {
            7 => Some(
                parts
                    .remove(2)
                    .strip_prefix('m')
                    .and_then(MemberId::parse)
                    .ok_or_else(bad)?,
            ),
            6 => None,
            _ => return Err(bad()),
        };
        let content = parts[1].strip_prefix("seg").ok_or_else(bad)?;
        let file: Vec<&str> = parts[5].split('.').collect();
        if file.len() != 4 || file[3] != "yz" {
            return Err(bad());
        }
        let fork = Fork::from_name(file[0]).ok_or_else(bad)?;
        Ok(ObjectName {
            segment: SegmentId {
                system_id: parts[0].parse().map_err(|_| bad())?,
                content: content.parse().map_err(|_| bad())?,
                rel: RelFork {
                    spc: parts[2].parse().map_err(|_| bad())?,
                    db: parts[3].parse().map_err(|_| bad())?,
                    rel: parts[4].parse().map_err(|_| bad())?,
                    fork,
                },
                segfile: file[1].parse().map_err(|_| bad())?,
            },
            writer,
            object_id: ObjectId::parse(file[2]).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.relative())
    }
}

/// Joins a store prefix and a relative name into a store key.
pub fn join_key(prefix: &str, relative: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        relative.to_string()
    } else {
        format!("{p}/{relative}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_including_greenplum_numbering() {
        let n = ObjectName {
            segment: SegmentId {
                system_id: 7_400_000_000_000_000_001,
                content: -1,
                rel: RelFork::main(1663, 5, 16384),
                segfile: 3 * 128 + 1, // AOCS column 3, segno 1
            },
            writer: Some(MemberId(0x0123_4567_89ab_cdef)),
            object_id: ObjectId([0xab; 16]),
        };
        let rel = n.relative();
        assert_eq!(
            rel,
            "7400000000000000001/seg-1/m0123456789abcdef/1663/5/16384/main.385.abababababababababababababababab.yz"
        );
        assert!(rel.starts_with(&writer_prefix(
            7_400_000_000_000_000_001,
            -1,
            MemberId(0x0123_4567_89ab_cdef)
        )));
        assert_eq!(ObjectName::parse(&rel).unwrap(), n);
        let gp = ObjectName {
            segment: SegmentId {
                content: 12,
                ..n.segment
            },
            ..n
        };
        assert_eq!(ObjectName::parse(&gp.relative()).unwrap(), gp);
        // Names from before lineages: no writer.
        let old = ObjectName { writer: None, ..n };
        assert_eq!(
            old.relative(),
            "7400000000000000001/seg-1/1663/5/16384/main.385.abababababababababababababababab.yz"
        );
        assert_eq!(ObjectName::parse(&old.relative()).unwrap(), old);
        assert!(ObjectName::parse("a/b/c").is_err());
        assert!(ObjectName::parse("1/seg-1/lineage/m0123456789abcdef.json").is_err());
        assert_eq!(join_key("/pfx/", "x/y"), "pfx/x/y");
        assert_eq!(join_key("", "x/y"), "x/y");
    }
}
