//! yezzey's durable state on one server, below `$PGDATA/pg_yezzey/`, and
//! the decisions taken from it. Plain Rust with no PostgreSQL: the
//! extension passes in what only the server knows (WAL positions, the
//! standby horizon, the system identifier) and does the server-side
//! effects (the shared map, WAL, punching holes).
//!
//! ```text
//! pg_yezzey/map/<spc>_<db>_<rel>_<fork>.json   one per offloaded fork (map.rs)
//! pg_yezzey/map/manifest                       the forks that have one (map.rs)
//! pg_yezzey/map.lock                           serialises writers of map files
//! pg_yezzey/retired/<object id>.json           an object that left every map (retired.rs)
//! pg_yezzey/member.json                        this cluster's lineage identity (member.rs)
//! ```
//!
//! **Invariants.**
//! * While the server runs, its shared-memory map is the authority and
//!   these files its durable image: a change reaches shared memory first
//!   (with its WAL record), the files as soon as they can be written, and
//!   no checkpoint completes until they are.
//! * An object is always attributable: to an upload in progress (a pending
//!   entry of the shared map, made before the first byte is sent), to a map
//!   (shared or file), to an object leaving the map (the shared retiring
//!   list), to a retired record, or to nothing (garbage).
//! * An object leaves the shared retiring list, or a map file, only after
//!   a retired record for it is durable.
//! * Files are replaced atomically ([`durable::write`]): a crash leaves the
//!   old or the new version; map files carry a checksum, so damage is
//!   detected rather than read.
//!
//! **Garbage collection** ([`gc`]) is a pure function from what the server
//! references, the objects listed in the store, the lineage's published
//! records ([`lineage`]) and the registered backups ([`backups`]) to a
//! verdict per object, with its reason. **Repair** ([`repair`]) rebuilds a
//! damaged or missing map from the objects its fork has in the store.
use std::path::{Path, PathBuf};

pub mod backups;
pub mod durable;
pub mod gc;
pub mod lineage;
pub mod map;
pub mod member;
pub mod reoffload;
pub mod repair;
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

    /// Where builds before the shared map kept upload intents (removed
    /// by garbage collection: none of them can be live after a restart).
    pub fn legacy_intents_dir(&self) -> PathBuf {
        self.root.join("intents")
    }

    fn retired_dir(&self) -> PathBuf {
        self.root.join("retired")
    }

    /// Serialises writers of map files (and of the retired records written
    /// before a map file goes) between processes: a checkpoint writing
    /// every dirty fork while a backend records a first local write.
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
