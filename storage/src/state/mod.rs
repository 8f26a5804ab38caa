//! yezzey's durable state on one server, below `$PGDATA/pg_yezzey/`, and
//! the decisions taken from it. Plain Rust with no PostgreSQL: the
//! extension passes in what only the server knows (WAL positions, the
//! standby horizon, the system identifier) and does the server-side
//! effects (the shared map, WAL, punching holes).
//!
//! ```text
//! pg_yezzey/map/<spc>_<db>_<rel>_<fork>.json   one per offloaded fork (map.rs)
//! pg_yezzey/map.lock                           serialises read-modify-write of maps
//! pg_yezzey/intents/<object id>.json           an upload in progress (intents.rs)
//! pg_yezzey/retired/<object id>.json           an object that left every map (retired.rs)
//! pg_yezzey/member.json                        this cluster's lineage identity (member.rs)
//! ```
//!
//! **Invariants.**
//! * Every object this server uploads has an intent file from before its
//!   first byte is sent until its map file names it (or the upload is
//!   abandoned), so an object is always attributable: to a map, an intent,
//!   or nothing (garbage).
//! * An object leaves a map only after a retired record for it is durable.
//! * Files are replaced atomically ([`durable::write`]): a crash leaves the
//!   old or the new version.
//!
//! **Garbage collection** ([`gc`]) is a pure function from these files, the
//! objects listed in the store, the lineage's published records
//! ([`lineage`]) and the registered backups ([`backups`]) to a verdict per
//! object, with its reason.
use std::path::{Path, PathBuf};

pub mod backups;
pub mod durable;
pub mod gc;
pub mod intents;
pub mod lineage;
pub mod map;
pub mod member;
pub mod retired;

/// The state directory of one server (`$PGDATA/pg_yezzey`).
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps_dir(&self) -> PathBuf {
        self.root.join("map")
    }

    fn intents_dir(&self) -> PathBuf {
        self.root.join("intents")
    }

    fn retired_dir(&self) -> PathBuf {
        self.root.join("retired")
    }

    /// Serialises read-modify-write of map files (and the retired records
    /// written with them) between processes: a checkpointer recording a
    /// first local write while a backend truncates the same fork.
    pub fn lock_maps(&self) -> std::io::Result<durable::FileLock> {
        durable::FileLock::acquire(&self.root.join("map.lock"))
    }
}

/// Seconds since the Unix epoch (offload, retirement and publication times).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
