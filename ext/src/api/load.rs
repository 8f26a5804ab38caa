//! `yezzey_load_relation`: bring an offloaded relation's data back to
//! local disk and make it local again.
//!
//! Every block of the remote ranges is rewritten through the buffer
//! manager as a WAL-logged full page (so standbys and crash recovery get
//! the data too, not only this server's files), then flushed and fsynced;
//! then FORGET is WAL-logged and the fork leaves the map (`wal.rs`), its
//! objects retired. A crash or an error in between leaves a relation whose
//! local blocks win, and loading again finishes the job. Before writing
//! anything it checks that the data and their WAL fit on their file
//! systems with `yezzey.min_free_space` to spare. Like offload, it is not
//! transactional and refuses transaction blocks.
use super::relations::{self, mb, Target};
use crate::map::shared::{self, State};
use crate::{errors, fault, pg, settings, wal};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use yezzey_storage::key::BLOCK_SIZE;
use yezzey_storage::state::map::ForkMap;

/// Brings an offloaded relation's data back to local disk and makes it
/// local again (with its TOAST table and indexes). Objects become garbage
/// that `yezzey_gc()` removes.
#[pg_extern(sql = r#"
CREATE FUNCTION yezzey_load_relation(rel regclass)
RETURNS TABLE (relation text, blocks_loaded bigint)
VOLATILE PARALLEL UNSAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn yezzey_load_relation(
    rel: pg_sys::Oid,
) -> TableIterator<'static, (name!(relation, String), name!(blocks_loaded, i64))> {
    errors::require_superuser("load back relations");
    pg::refuse_in_transaction_block(c"yezzey_load_relation()");
    let targets = relations::expand(rel.to_u32(), true);
    relations::lock_all(&targets);
    let mut work: Vec<(Target, ForkMap)> = Vec::new();
    for t in &targets {
        match shared::get(t.key) {
            Some(f) if f.state == State::Broken => errors::error(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!(
                    "cannot load back \"{}\": yezzey's map of it is damaged or missing",
                    t.name
                ),
                "Rebuild it first with SELECT * FROM yezzey_repair_maps().",
            ),
            Some(f) if f.state == State::Live => work.push((t.clone(), f.map)),
            _ => {}
        }
    }
    if work.is_empty() {
        notice!(
            "yezzey: relation {} is not offloaded; nothing to do",
            targets.first().map(|t| t.name.as_str()).unwrap_or("?")
        );
    }
    check_space(&work);
    let rows: Vec<_> = work
        .iter()
        .map(|(t, m)| (t.name.clone(), load_one(t, m)))
        .collect();
    TableIterator::new(rows)
}

/// Refuses before writing anything when the remote blocks and about as
/// much WAL (one full-page image each) do not fit with the reserve.
fn check_space(work: &[(Target, ForkMap)]) {
    let reserve = settings::min_free_bytes();
    let wal_dir = pg::data_dir().join("pg_wal");
    // Bytes to write per file system (device), with a directory on it.
    let mut need: BTreeMap<u64, (u64, PathBuf)> = BTreeMap::new();
    let mut add = |dir: PathBuf, bytes: u64| {
        let dev = pg::device_of(&dir)
            .unwrap_or_else(|e| errors::io(e, &format!("cannot examine {}", dir.display())));
        need.entry(dev).or_insert((0, dir)).0 += bytes;
    };
    for (t, m) in work {
        let bytes = m.remote_blocks() * BLOCK_SIZE as u64;
        let dir = pg::segment_path(t.key, 0)
            .parent()
            .expect("a segment file has a directory")
            .to_path_buf();
        add(dir, bytes);
        add(wal_dir.clone(), bytes);
    }
    for (bytes, dir) in need.values() {
        let free = pg::free_bytes(dir)
            .unwrap_or_else(|e| errors::io(e, &format!("cannot examine {}", dir.display())));
        if free < bytes + reserve {
            errors::error_detail(
                PgSqlErrorCode::ERRCODE_DISK_FULL,
                format!(
                    "not enough free space to load back {}: it writes about {:.0} MB to the file system of {}, which has {:.0} MB free",
                    work.iter().map(|(t, _)| format!("\"{}\"", t.name)).collect::<Vec<_>>().join(", "),
                    mb(*bytes),
                    dir.display(),
                    mb(free)
                ),
                format!(
                    "Load back writes the relation's offloaded blocks and as much WAL, and leaves yezzey.min_free_space ({:.0} MB) free. Nothing was written.",
                    mb(reserve)
                ),
                "Free space on that file system, or load back the partitions of a partitioned table one at a time.",
            );
        }
    }
}

/// Rewrites every block of the remote ranges through the buffer manager:
/// read (from the object), mark dirty and WAL-log as a full page (its LSN
/// is then newer than the offload's clean LSN, so the storage manager
/// writes it, marking its segment written before the first block lands).
/// Returns the number of blocks rewritten.
fn load_one(t: &Target, m: &ForkMap) -> i64 {
    let per_segment = pg::blocks_per_segment();
    let mut loaded = 0i64;
    for s in &m.segments {
        let first = s.segno * per_segment;
        pg::relation::rewrite_logged(t.oid, first..first + s.blocks, t.is_heap());
        loaded += s.blocks as i64;
        notice!(
            "yezzey: loaded \"{}\" segment {} back ({:.1} MB)",
            t.name,
            s.segno,
            mb(s.raw_len)
        );
    }
    relations::flush(t);
    fault::point("after_fill");
    wal::forget(m.key, Some(m.lsn));
    loaded
}
