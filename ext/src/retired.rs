//! Objects that left every map (load back, TRUNCATE, DROP, DROP DATABASE),
//! one JSON file each under `$PGDATA/pg_yezzey/retired/`, with the WAL
//! position and the time they left. A standby that has not replayed that
//! far, or a backup or PITR target from before it, may still read them:
//! `yezzey_gc()` deletes a retired object only once every standby is past
//! its position and `yezzey.gc_retention` has elapsed.
//!
//! Written on every server that replays the change (redo goes through the
//! same paths), so a promoted standby knows them too.
use crate::mapfile::{self, ForkMap, SegmentMeta};
use crate::settings::data_dir;
use pgrx::pg_sys;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Retired {
    /// Object name relative to the storage prefix.
    pub name: String,
    /// WAL position at or after the change that dropped the last reference.
    pub lsn: u64,
    /// Unix seconds.
    pub at: i64,
}

fn dir() -> PathBuf {
    data_dir().join("pg_yezzey/retired")
}

/// The WAL position this server has reached: inserted on a primary,
/// replayed during recovery.
pub fn current_lsn() -> u64 {
    // SAFETY: reads of shared xlog state, valid in any attached process.
    unsafe {
        if pg_sys::RecoveryInProgress() {
            pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut())
        } else {
            pg_sys::GetXLogInsertRecPtr()
        }
    }
}

/// The records that retiring `segments` (of map `m`) now would write.
pub fn records_now<'a>(
    m: &'a ForkMap,
    segments: &'a [SegmentMeta],
) -> impl Iterator<Item = (&'a SegmentMeta, Retired)> + 'a {
    let (lsn, at) = (current_lsn(), mapfile::unix_now());
    segments.iter().map(move |s| {
        let name = m.object_name(s).relative();
        (s, Retired { name, lsn, at })
    })
}

/// Records the objects of `segments` (of map `m`) as retired now.
pub fn record(m: &ForkMap, segments: &[SegmentMeta]) -> io::Result<()> {
    for (s, r) in records_now(m, segments) {
        let json = serde_json::to_vec(&r).expect("serialising a retired object");
        mapfile::write_durably(&dir(), &format!("{}.json", s.object_id), &json)?;
    }
    Ok(())
}

/// Every readable record with its file; unreadable files are skipped (an
/// object without a record is collected as soon as nothing references it,
/// as before records existed).
pub fn all() -> Vec<(PathBuf, Retired)> {
    let Ok(rd) = fs::read_dir(dir()) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
        .filter_map(|p| {
            let r = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
            Some((p, r))
        })
        .collect()
}
