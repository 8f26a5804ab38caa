//! Map files: one JSON file per offloaded relation fork, saying which
//! leading blocks of each segment file are served from which object.
//! Readable by operators and copied by physical backups; the shared-memory
//! map (the C shim) is rebuilt from them at startup, and WAL redo rewrites
//! them, so they agree with WAL.
use super::{durable, StateDir};
use crate::key::{Lsn, MemberId, ObjectId, RelFork};
use crate::names::{ObjectName, SegmentId};
use serde::{Deserialize, Serialize};
use std::io;

/// One offloaded segment file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentMeta {
    pub segno: u32,
    /// Leading blocks of the segment served from the object.
    pub blocks: u32,
    pub object_id: ObjectId,
    pub raw_len: u64,
    pub stored_len: u64,
    /// A block of the remote range was written locally since the offload
    /// (reads look at the local file first). Maps written before this field
    /// existed read as true, the safe answer.
    #[serde(default = "written_default")]
    pub written: bool,
}

fn written_default() -> bool {
    true
}

/// The offload of one relation fork.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForkMap {
    pub system_id: u64,
    pub content: i32,
    #[serde(flatten)]
    pub key: RelFork,
    /// The lineage member that uploaded the objects (absent in maps
    /// written before lineages: their objects have no writer in their name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<MemberId>,
    /// Unix seconds and WAL position of the offload.
    pub offloaded_at: i64,
    pub lsn: Lsn,
    /// The WAL insert position before the relation's buffers were flushed
    /// for the upload: a page whose LSN is at most this is, but for hint
    /// bits, the page the object holds, so writing it back locally is
    /// never needed (0 in maps written before this field: no such page).
    #[serde(default)]
    pub clean_lsn: Lsn,
    /// False until the local files' blocks have been punched out.
    pub evicted: bool,
    pub segments: Vec<SegmentMeta>,
}

impl ForkMap {
    pub fn object_name(&self, s: &SegmentMeta) -> ObjectName {
        ObjectName {
            segment: SegmentId {
                system_id: self.system_id,
                content: self.content,
                rel: self.key,
                segfile: s.segno,
            },
            writer: self.writer,
            object_id: s.object_id,
        }
    }

    /// Every object the map names, relative to the store's prefix.
    pub fn object_names(&self) -> impl Iterator<Item = String> + '_ {
        self.segments.iter().map(|s| self.object_name(s).relative())
    }

    pub fn stored_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.stored_len).sum()
    }

    pub fn raw_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.raw_len).sum()
    }

    pub fn remote_blocks(&self) -> u64 {
        self.segments.iter().map(|s| s.blocks as u64).sum()
    }

    pub fn file_name(key: RelFork) -> String {
        format!("{}_{}_{}_{}.json", key.spc, key.db, key.rel, key.fork.0)
    }
}

impl StateDir {
    pub fn read_map(&self, key: RelFork) -> Option<ForkMap> {
        let bytes = std::fs::read(self.maps_dir().join(ForkMap::file_name(key))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every map file; unreadable ones come back as errors naming the file.
    pub fn read_maps(&self) -> Vec<Result<ForkMap, String>> {
        durable::read_json_dir(&self.maps_dir())
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    }

    /// The readable maps of one database (any tablespace).
    pub fn maps_of_database(&self, db: u32) -> Vec<ForkMap> {
        self.read_maps()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|m| m.key.db == db)
            .collect()
    }

    pub fn write_map(&self, m: &ForkMap) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(m).expect("serialising a map");
        durable::write(&self.maps_dir(), &ForkMap::file_name(m.key), &json)
    }

    pub fn remove_map(&self, key: RelFork) -> io::Result<()> {
        durable::remove(&self.maps_dir(), &ForkMap::file_name(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_maps_older_builds_wrote() {
        // As written before typed keys, writers and clean LSNs.
        let old = r#"{"system_id":7,"content":-1,"spc":1663,"db":5,"rel":16384,"fork":0,
            "offloaded_at":1,"lsn":344212368,"evicted":true,
            "segments":[{"segno":0,"blocks":3,"object_id":"abababababababababababababababab",
                         "raw_len":24576,"stored_len":99}]}"#;
        let m: ForkMap = serde_json::from_str(old).unwrap();
        assert_eq!(m.key, RelFork::main(1663, 5, 16384));
        assert_eq!((m.writer, m.clean_lsn), (None, Lsn(0)));
        assert!(m.segments[0].written, "no flag reads as written");
        assert_eq!(
            m.object_names().next().unwrap(),
            "7/seg-1/1663/5/16384/main.0.abababababababababababababababab.yz"
        );
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        s.write_map(&m).unwrap();
        assert_eq!(s.read_map(m.key), Some(m.clone()));
        assert_eq!(s.maps_of_database(5), vec![m.clone()]);
        s.remove_map(m.key).unwrap();
        assert!(s.read_maps().is_empty());
    }
}
