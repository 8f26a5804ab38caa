//! Loading the map files into the shared map: once per creation of shared
//! memory, by the first process that needs the map (the C shim calls this
//! under its load lock; everyone else waits). That is the startup process
//! before it replays the first record touching an offloaded relation, or,
//! after a clean shutdown, whichever process opens one first.
//!
//! A map file that is damaged, or that the manifest lists but is gone,
//! makes its fork *broken*: it is never served (its local files are empty,
//! so md would read no rows), every read and write of it fails with an
//! error naming it, and garbage collection refuses to run, until
//! `yezzey_repair_maps()` rebuilds it from the objects or WAL replay brings
//! an offload of it.
//!
//! The manifest may be older than the map files (a checkpoint that could
//! not write it): a fork it lists whose file is gone is taken as broken
//! only if one of its segment files looks offloaded, that is empty or
//! sparse. A fork loaded back since has whole local files, and one
//! dropped since has none. (Every segment is looked at: an offload keeps
//! a segment whole when readers rewrote all its pages meanwhile.)
//!
//! Files may be newer than the WAL replay that follows ("maps from the
//! future", `wal.rs`). Nothing is freed here: replay may yet mark segments
//! written. Local copies a crash or a copy left in segments without local
//! writes (an eviction interrupted, a backup taken before it finished) are
//! freed by the first checkpoint (`persist::checkpoint`), when the shared
//! map's flags are final.
use super::shared;
use crate::{fds, pg};
use yezzey_storage::key::RelFork;
use yezzey_storage::state::map::MapError;

pub fn load() {
    let maps = fds::transient(fds::STATE_OP, || pg::state().read_maps_checked());
    for (key, m) in maps {
        match m {
            Ok(m) => {
                if !shared::put(&m, shared::State::Live, false, false) {
                    pgrx::warning!(
                        "yezzey: out of shared memory loading the map of {key}: reads of it fail until the server restarts"
                    );
                    put_broken_or_fail(key);
                }
            }
            Err(MapError::Missing) if !looks_offloaded(key) => {}
            Err(e) => {
                let hint = match e {
                    MapError::Missing => "its file was deleted",
                    MapError::Damaged(_) => "its file does not read back as written",
                };
                pgrx::warning!(
                    "yezzey: the map of offloaded relation file {} is {e}: {hint}; reads of it fail until it is rebuilt with SELECT * FROM yezzey_repair_maps()",
                    pg::segment_path(key, 0).display()
                );
                put_broken_or_fail(key);
            }
        }
    }
}

/// A fork that cannot be served must refuse reads rather than read as its
/// empty local files: broken, or no start at all.
fn put_broken_or_fail(key: RelFork) {
    if !shared::put_broken(key) {
        crate::errors::error(
            pgrx::PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
            format!("yezzey: out of shared memory loading the map of {key}"),
            "The map of offloaded segments grows in dynamic shared memory; check the operating system's shared memory limits.",
        );
    }
}

/// Whether one of a fork's segment files is empty or sparse, as an
/// evicted (and perhaps since written) segment is.
fn looks_offloaded(key: RelFork) -> bool {
    use std::os::unix::fs::MetadataExt;
    (0..)
        .map_while(|segno| std::fs::metadata(pg::segment_path(key, segno)).ok())
        .any(|md| md.size() == 0 || md.blocks() * 512 < md.size())
}
