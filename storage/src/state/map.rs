//! Map files: one file per offloaded relation fork, saying which leading
//! blocks of each segment file are served from which objects (a base
//! object and the layers re-offloads put over it, [`crate::layers`]); and
//! the manifest, the list of forks that have one.
//!
//! While the server runs, its shared-memory map is the authority (WAL
//! records change it first); the map files are its durable image, which
//! rebuilds it at startup. They are written eagerly where they can be, and
//! by every checkpoint, which fails until they are written: so a map file
//! is never older than the last completed checkpoint, and WAL replay from
//! that checkpoint brings the shared map up to date.
//!
//! ```text
//! pg_yezzey/map/<spc>_<db>_<rel>_<fork>.json   {JSON}\n# xxh3 <32 hex digits>\n
//! pg_yezzey/map/manifest                       one `<spc>_<db>_<rel>_<fork>` per line
//! ```
//!
//! **Damage is detected, never served.** A map file ends with the xxh3 of
//! everything before its last line, so a flipped bit that still parses is
//! caught as surely as a truncated file ([`MapError::Damaged`]). The
//! manifest, rewritten by checkpoints when the set of forks changed, names
//! every fork that had a map file then: a fork it names whose file is gone
//! is [`MapError::Missing`]. Either way the fork is *broken*: its reads
//! fail with an error naming it (an offloaded fork's local files are
//! empty, so serving it without its map would return no rows) until the
//! map is rebuilt from the objects ([`super::repair`]). Files written
//! before the trailer existed are read without it.
use super::{durable, StateDir};
use crate::key::{Fork, Lsn, MemberId, ObjectId, RelFork};
use crate::names::{ObjectName, SegmentId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::io;

/// One offloaded segment file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentMeta {
    pub segno: u32,
    /// Leading blocks of the segment served from its objects.
    pub blocks: u32,
    /// The base object, holding the segment's blocks in order.
    pub object_id: ObjectId,
    pub raw_len: u64,
    pub stored_len: u64,
    /// Layers over the base, oldest first: blocks re-offloads uploaded
    /// since ([`crate::layers`]: a block is served by the newest layer
    /// holding it, else by the base).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerMeta>,
    /// A block of the remote range was written locally since the offload,
    /// or the offload has not freed the local copy yet
    /// (reads look at the local file first). Maps written before this field
    /// existed read as true, the safe answer.
    #[serde(default = "written_default")]
    pub written: bool,
}

fn written_default() -> bool {
    true
}

/// The most layers a segment may have (`YZ_MAX_LAYERS` of the shared map,
/// which the extension checks this against when it builds).
pub const MAX_LAYERS: usize = 8;

/// A layer object over a segment's base ([`crate::format`]'s layer
/// objects: its runs say which blocks it holds).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LayerMeta {
    pub object_id: ObjectId,
    pub raw_len: u64,
    pub stored_len: u64,
}

impl SegmentMeta {
    /// The segment's objects: the base, then its layers oldest first.
    pub fn object_ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        std::iter::once(self.object_id).chain(self.layers.iter().map(|l| l.object_id))
    }

    /// Whether both are served by the same objects (base and layers): the
    /// same offload's segment, or one a re-offload kept as it was.
    pub fn same_objects(&self, other: &SegmentMeta) -> bool {
        self.object_ids().eq(other.object_ids())
    }

    /// Bytes stored for the segment, layers included.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_len + self.layers.iter().map(|l| l.stored_len).sum::<u64>()
    }

    /// Bytes of the layers (before encoding).
    pub fn layer_raw_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.raw_len).sum()
    }
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
    /// The objects' pages carry valid data checksums (the cluster had them
    /// on at the offload). False in maps written before this field: reads
    /// then set checksums if the cluster verifies them, which is harmless
    /// for pages that had them.
    #[serde(default)]
    pub page_checksums: bool,
    pub segments: Vec<SegmentMeta>,
}

impl ForkMap {
    /// The name of a segment's base object.
    pub fn object_name(&self, s: &SegmentMeta) -> ObjectName {
        self.name_of(s.segno, s.object_id)
    }

    /// The name of object `id` of segment `segno` (its base or a layer).
    pub fn name_of(&self, segno: u32, id: ObjectId) -> ObjectName {
        ObjectName {
            segment: SegmentId {
                system_id: self.system_id,
                content: self.content,
                rel: self.key,
                segfile: segno,
            },
            writer: self.writer,
            object_id: id,
        }
    }

    /// The names of a segment's objects: its base, then its layers.
    pub fn segment_names<'a>(
        &'a self,
        s: &'a SegmentMeta,
    ) -> impl Iterator<Item = ObjectName> + 'a {
        s.object_ids().map(move |id| self.name_of(s.segno, id))
    }

    /// Every object the map names, relative to the store's prefix.
    pub fn object_names(&self) -> impl Iterator<Item = String> + '_ {
        self.segments
            .iter()
            .flat_map(|s| self.segment_names(s))
            .map(|n| n.relative())
    }

    /// Bytes stored, layers included.
    pub fn stored_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.stored_bytes()).sum()
    }

    pub fn raw_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.raw_len).sum()
    }

    pub fn remote_blocks(&self) -> u64 {
        self.segments.iter().map(|s| s.blocks as u64).sum()
    }

    pub fn file_name(key: RelFork) -> String {
        format!("{}.json", key_text(key))
    }
}

/// A fork as the manifest and file names spell it: `spc_db_rel_fork`.
pub fn key_text(key: RelFork) -> String {
    format!("{}_{}_{}_{}", key.spc, key.db, key.rel, key.fork.0)
}

/// The fork a manifest line or a map file name (without `.json`) names.
pub fn parse_key_text(s: &str) -> Option<RelFork> {
    let mut it = s.split('_').map(|p| p.parse::<u32>().ok());
    let key = RelFork {
        spc: it.next()??,
        db: it.next()??,
        rel: it.next()??,
        fork: Fork(u8::try_from(it.next()??).ok().filter(|f| *f <= 3)?),
    };
    it.next().is_none().then_some(key)
}

/// Why a fork's map cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// The file exists but does not read back as written.
    Damaged(String),
    /// The manifest names the fork but its file is gone.
    Missing,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Damaged(why) => write!(f, "damaged ({why})"),
            MapError::Missing => f.write_str("missing (the manifest lists it)"),
        }
    }
}

const TRAILER: &str = "# xxh3 ";

/// A map file's bytes: the JSON, then a line with the xxh3 of it.
fn encode(m: &ForkMap) -> Vec<u8> {
    let mut body = serde_json::to_vec_pretty(m).expect("serialising a map");
    body.push(b'\n');
    let sum = xxhash_rust::xxh3::xxh3_128(&body);
    body.extend_from_slice(format!("{TRAILER}{sum:032x}\n").as_bytes());
    body
}

/// Parses a map file's bytes, checking its trailer (files from before the
/// trailer existed have none and are taken as they parse).
pub fn decode(bytes: &[u8]) -> Result<ForkMap, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let json = match text.trim_end_matches('\n').rfind('\n') {
        Some(i) if text[i + 1..].starts_with(TRAILER) => {
            let (body, last) = text.split_at(i + 1);
            let want = last
                .trim_end()
                .strip_prefix(TRAILER)
                .and_then(|h| u128::from_str_radix(h, 16).ok())
                .ok_or("unreadable checksum line")?;
            if xxhash_rust::xxh3::xxh3_128(body.as_bytes()) != want {
                return Err("checksum mismatch".into());
            }
            body
        }
        _ if text.contains(TRAILER) => return Err("truncated after its checksum line".into()),
        _ => text,
    };
    serde_json::from_str(json).map_err(|e| e.to_string())
}

impl StateDir {
    /// A fork's map file: `Ok(None)` if there is none.
    pub fn read_map(&self, key: RelFork) -> Result<Option<ForkMap>, MapError> {
        match std::fs::read(self.maps_dir().join(ForkMap::file_name(key))) {
            Ok(b) => decode(&b).map(Some).map_err(MapError::Damaged),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MapError::Damaged(e.to_string())),
        }
    }

    /// The forks that have a map file (from the names alone).
    pub fn map_keys(&self) -> Vec<RelFork> {
        let Ok(rd) = std::fs::read_dir(self.maps_dir()) else {
            return Vec::new();
        };
        let mut keys: Vec<RelFork> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                parse_key_text(name.strip_suffix(".json")?)
            })
            .collect();
        keys.sort();
        keys
    }

    /// Every map file by its fork, parsed or with why not; files whose
    /// names name no fork are skipped.
    pub fn read_maps(&self) -> Vec<(RelFork, Result<ForkMap, MapError>)> {
        self.map_keys()
            .into_iter()
            .map(|key| (key, self.read_map(key)))
            .filter_map(|(k, r)| match r {
                Ok(Some(m)) => Some((k, Ok(m))),
                Ok(None) => None, // removed meanwhile
                Err(e) => Some((k, Err(e))),
            })
            .collect()
    }

    pub fn write_map(&self, m: &ForkMap) -> io::Result<()> {
        durable::write(&self.maps_dir(), &ForkMap::file_name(m.key), &encode(m))
    }

    pub fn remove_map(&self, key: RelFork) -> io::Result<()> {
        durable::remove(&self.maps_dir(), &ForkMap::file_name(key))
    }

    /// The forks the manifest lists; `None` if there is no manifest yet
    /// (or it cannot be read: nothing can then be told missing).
    pub fn read_manifest(&self) -> Option<BTreeSet<RelFork>> {
        let text = std::fs::read_to_string(self.maps_dir().join("manifest")).ok()?;
        Some(text.lines().filter_map(parse_key_text).collect())
    }

    pub fn write_manifest(&self, keys: &BTreeSet<RelFork>) -> io::Result<()> {
        let text: String = keys.iter().map(|k| key_text(*k) + "\n").collect();
        durable::write(&self.maps_dir(), "manifest", text.as_bytes())
    }

    /// Every map file and the manifest against what they should be: the
    /// forks whose map the manifest lists but whose file is gone, as
    /// [`MapError::Missing`].
    pub fn read_maps_checked(&self) -> Vec<(RelFork, Result<ForkMap, MapError>)> {
        let mut maps = self.read_maps();
        if let Some(listed) = self.read_manifest() {
            let present: BTreeSet<RelFork> = maps.iter().map(|(k, _)| *k).collect();
            maps.extend(
                listed
                    .difference(&present)
                    .map(|k| (*k, Err(MapError::Missing))),
            );
            maps.sort_by_key(|(k, _)| *k);
        }
        maps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ForkMap {
        ForkMap {
            system_id: 7,
            content: -1,
            key: RelFork::main(1663, 5, 16384),
            writer: Some(MemberId(9)),
            offloaded_at: 1,
            lsn: Lsn(100),
            clean_lsn: Lsn(90),
            evicted: true,
            page_checksums: true,
            segments: vec![SegmentMeta {
                segno: 0,
                blocks: 131072,
                object_id: ObjectId([0xab; 16]),
                raw_len: 1 << 30,
                stored_len: 99,
                written: false,
                layers: Vec::new(),
            }],
        }
    }

    #[test]
    fn reads_maps_older_builds_wrote() {
        // As written before typed keys, writers, clean LSNs and checksums.
        let old = r#"{"system_id":7,"content":-1,"spc":1663,"db":5,"rel":16384,"fork":0,
            "offloaded_at":1,"lsn":344212368,"evicted":true,
            "segments":[{"segno":0,"blocks":3,"object_id":"abababababababababababababababab",
                         "raw_len":24576,"stored_len":99}]}"#;
        let m = decode(old.as_bytes()).unwrap();
        assert_eq!(m.key, RelFork::main(1663, 5, 16384));
        assert_eq!((m.writer, m.clean_lsn), (None, Lsn(0)));
        assert!(m.segments[0].written, "no flag reads as written");
        assert!(!m.page_checksums, "no flag: checksums are set on read");
        assert_eq!(
            m.object_names().next().unwrap(),
            "7/seg-1/1663/5/16384/main.0.abababababababababababababababab.yz"
        );
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        s.write_map(&m).unwrap();
        assert_eq!(s.read_map(m.key), Ok(Some(m.clone())));
        s.remove_map(m.key).unwrap();
        assert_eq!(s.read_map(m.key), Ok(None));
        assert!(s.read_maps().is_empty());
    }

    #[test]
    fn every_damage_is_detected() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes), Ok(sample()));
        // Flip each bit of every byte, as bit rot would: each is caught,
        // or (in the JSON's insignificant whitespace) reads the same map.
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(m) = decode(&b) {
                    assert_eq!(m, sample(), "byte {i} bit {bit} changed the map unnoticed");
                }
            }
        }
        // Truncated anywhere.
        for n in 0..bytes.len() - 1 {
            let cut = &bytes[..n];
            if let Ok(m) = decode(cut) {
                assert_eq!(m, sample(), "a file cut at {n} bytes read as another map");
            }
        }
    }

    #[test]
    fn manifest_tells_missing_from_never_offloaded() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let a = sample();
        let mut b = sample();
        b.key = RelFork::main(1663, 5, 16385);
        s.write_map(&a).unwrap();
        s.write_map(&b).unwrap();
        // No manifest yet (older builds): nothing can be missing.
        assert_eq!(s.read_maps_checked().len(), 2);
        s.write_manifest(&[a.key, b.key].into_iter().collect())
            .unwrap();
        s.remove_map(b.key).unwrap();
        std::fs::write(d.path().join("map").join(ForkMap::file_name(a.key)), b"{").unwrap();
        let got = s.read_maps_checked();
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], (k, Err(MapError::Damaged(_))) if *k == a.key));
        assert_eq!(got[1], (b.key, Err(MapError::Missing)));
        assert_eq!(parse_key_text("1663_5_16384_0"), Some(a.key));
        assert_eq!(parse_key_text("1663_5_16384_9"), None);
        assert_eq!(parse_key_text("1663_5_16384"), None);
        assert_eq!(parse_key_text("manifest"), None);
    }
}
