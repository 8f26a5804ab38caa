//! Object names: where a segment file's objects live in the store.
//!
//! ```text
//! <prefix>/<system id>/seg<content>/<spc>/<db>/<relfilenumber>/<fork>.<segfile>.<object id>.yz
//! ```
//!
//! * `system id`: the cluster's `pg_control` system identifier, shared by a
//!   primary, its standbys and its physical backups (so they share objects)
//!   and distinct between unrelated clusters using one bucket.
//! * `content`: the Greenplum segment content id; `-1` (Greenplum's
//!   coordinator id) for single-node PostgreSQL.
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
use std::fmt;

/// Which file a segment object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId {
    pub system_id: u64,
    pub content: i32,
    pub spc: u32,
    pub db: u32,
    pub relnumber: u32,
    /// PostgreSQL fork number: 0 main, 1 fsm, 2 vm, 3 init.
    pub fork: u8,
    pub segfile: u32,
}

/// PostgreSQL's fork names, indexed by fork number.
pub const FORK_NAMES: [&str; 4] = ["main", "fsm", "vm", "init"];

/// The full identity of one immutable object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    pub segment: SegmentId,
    pub object_id: [u8; 16],
}

impl SegmentId {
    /// The directory (below the prefix) holding every object of this relation fork's file numbers.
    pub fn relation_dir(&self) -> String {
        format!(
            "{}/seg{}/{}/{}/{}",
            self.system_id, self.content, self.spc, self.db, self.relnumber
        )
    }

    pub fn fork_name(&self) -> &'static str {
        FORK_NAMES
            .get(self.fork as usize)
            .copied()
            .unwrap_or("unknown")
    }
}

impl ObjectName {
    /// The name authenticated inside the object (relative to the prefix).
    pub fn relative(&self) -> String {
        format!(
            "{}/{}.{}.{}.yz",
            self.segment.relation_dir(),
            self.segment.fork_name(),
            self.segment.segfile,
            hex::encode(self.object_id)
        )
    }

    /// Parses a relative name (as produced by [`ObjectName::relative`]).
    pub fn parse(rel: &str) -> Result<ObjectName> {
        let bad = || Error::Config(format!("{rel:?} is not a yezzey object name"));
        let parts: Vec<&str> = rel.split('/').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let content = parts[1].strip_prefix("seg").ok_or_else(bad)?;
        let file: Vec<&str> = parts[5].split('.').collect();
        if file.len() != 4 || file[3] != "yz" {
            return Err(bad());
        }
        let fork = FORK_NAMES
            .iter()
            .position(|f| *f == file[0])
            .ok_or_else(bad)? as u8;
        let id = hex::decode(file[2]).map_err(|_| bad())?;
        Ok(ObjectName {
            segment: SegmentId {
                system_id: parts[0].parse().map_err(|_| bad())?,
                content: content.parse().map_err(|_| bad())?,
                spc: parts[2].parse().map_err(|_| bad())?,
                db: parts[3].parse().map_err(|_| bad())?,
                relnumber: parts[4].parse().map_err(|_| bad())?,
                fork,
                segfile: file[1].parse().map_err(|_| bad())?,
            },
            object_id: id.try_into().map_err(|_| bad())?,
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
                spc: 1663,
                db: 5,
                relnumber: 16384,
                fork: 0,
                segfile: 3 * 128 + 1, // AOCS column 3, segno 1
            },
            object_id: [0xab; 16],
        };
        let rel = n.relative();
        assert_eq!(
            rel,
            "7400000000000000001/seg-1/1663/5/16384/main.385.abababababababababababababababab.yz"
        );
        assert_eq!(ObjectName::parse(&rel).unwrap(), n);
        let gp = ObjectName {
            segment: SegmentId {
                content: 12,
                ..n.segment
            },
            ..n
        };
        assert_eq!(ObjectName::parse(&gp.relative()).unwrap(), gp);
        assert!(ObjectName::parse("a/b/c").is_err());
        assert_eq!(join_key("/pfx/", "x/y"), "pfx/x/y");
        assert_eq!(join_key("", "x/y"), "x/y");
    }
}
