//! Bringing `pg_yezzey` in step with the shared map: map files for live
//! forks, retired records for objects that left the map, the manifest,
//! and removing the map files of forks that left.
//!
//! **Why a map file may lag, and why that is safe.** Every change reaches
//! the shared map first: a switch together with its WAL record (`wal.rs`),
//! a first local write, a truncation or an unlink from the storage manager.
//! The files follow in two ways:
//! * [`persist`], right after the change, best effort: a file that cannot
//!   be written (a read-only or full file system, EIO) leaves the fork
//!   dirty in the shared map, and the change in effect: readers, writers
//!   and garbage collection all go by the shared map, never by the files.
//!   It never removes a map file.
//! * [`checkpoint`], from every checkpoint and restartpoint (the host's
//!   `checkpoint_hook`, gp_patches/0004): everything, or an ERROR that
//!   fails the checkpoint, which keeps its WAL and is retried. So the files
//!   are never older than the last completed checkpoint, and crash
//!   recovery replays every change made since (a switch's record, the
//!   writes that mark segments written, truncations and drops), as
//!   PostgreSQL does for its relation map and two-phase state. A server
//!   whose `pg_yezzey` refuses writes runs on, but its checkpoints fail,
//!   and after a crash its recovery cannot complete until the files can be
//!   written (as with an unwritable `pg_twophase`).
//!
//! **Order.** An object leaves the map in steps: out of the shared map
//! into its retiring list (the storage manager or a FORGET), a retired
//! record written, off the retiring list; then, at a checkpoint, the
//! manifest rewritten without its fork and only then the map file
//! removed. Garbage collection reads the shared map (retiring list
//! included), then the map files, then the retired records, so at every
//! moment it finds the object in one of them; and the manifest never
//! names a fork whose file was removed (a fork it names without a file is
//! broken). A map file whose fork left the shared map without a retiring
//! entry (lost to a restart) has its objects retired at the current
//! position, later than they really left: a later position only holds
//! them longer.
use super::shared::{self, State};
use crate::{fds, pg};
use std::collections::{BTreeSet, HashSet};
use std::io;
use yezzey_storage::key::RelFork;
use yezzey_storage::state::map::MapError;
use yezzey_storage::state::retired::Retired;
use yezzey_storage::state::{unix_now, StateDir};

/// Makes the files of a relation's forks (`fork < 0`: all of them) say
/// what the shared map says, but for removing map files (checkpoints do).
/// What fails stays dirty for the next try.
pub fn persist(spc: u32, db: u32, rel: u32, fork: i32) -> io::Result<()> {
    let forks: Vec<i32> = if fork < 0 {
        (0..=3).collect()
    } else {
        vec![fork]
    };
    fds::transient(fds::STATE_OP, || {
        let state = pg::state();
        let _lock = state.lock_maps()?;
        retire_listed(&state, |r| r.spc == spc && r.db == db && r.rel == rel)?;
        for f in forks {
            write_if_dirty(&state, shared::key_of(spc, db, rel, f))?;
        }
        Ok(())
    })
}

/// [`persist`] for one fork, warning instead of failing: the change is in
/// effect, and the next checkpoint writes what this could not.
pub fn persist_or_warn(key: RelFork) {
    if let Err(e) = persist(key.spc, key.db, key.rel, key.fork.as_i32()) {
        warn_lagging(key, &e);
    }
}

/// The warning for a map file that could not be written now.
pub fn warn_lagging(key: RelFork, e: &io::Error) {
    pgrx::warning!(
        "yezzey: could not write the map file of relation file {}/{}/{} fork {}: {e}; the change is in effect, and checkpoints write the file (they fail until it can be written)",
        key.spc,
        key.db,
        key.rel,
        key.fork.name()
    );
}

/// Everything, or an error: every retiring object's record, every dirty
/// fork's file, the manifest if the set of forks changed, then the map
/// files of forks that left the shared map removed. With `free`, also
/// frees the local copies a start left (`load`): those of every fork the
/// first time in a process, then of forks not yet evicted.
pub fn checkpoint(free: bool) -> io::Result<()> {
    fds::transient(fds::STATE_OP, || {
        let state = pg::state();
        let _lock = state.lock_maps()?;
        retire_listed(&state, |_| true)?;
        let forks = shared::all();
        for f in forks.iter().filter(|f| f.dirty) {
            write_if_dirty(&state, f.map.key)?;
        }
        let keys: BTreeSet<RelFork> = forks
            .iter()
            .filter(|f| f.state != State::Pending)
            .map(|f| f.map.key)
            .collect();
        let orphans: Vec<RelFork> = state
            .map_keys()
            .into_iter()
            .filter(|k| !keys.contains(k) && shared::get(*k).is_none())
            .collect();
        let changed = yezzey_smgr_shim::map::take_keys_changed();
        if changed || !orphans.is_empty() || state.read_manifest().is_none() {
            if let Err(e) = state.write_manifest(&keys) {
                yezzey_smgr_shim::map::set_keys_changed();
                return Err(e);
            }
        }
        if !orphans.is_empty() {
            let recorded: HashSet<String> =
                state.retired().into_iter().map(|(_, r)| r.name).collect();
            for key in orphans {
                remove_orphan(&state, key, &recorded)?;
            }
        }
        Ok(())
    })?;
    if free {
        free_local_copies();
    }
    Ok(())
}

/// Frees local copies of unwritten segments that a start left (maps are
/// loaded without freeing anything while replay may still change them):
/// every fork's, once per process, then those of forks not evicted yet.
fn free_local_copies() {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let all = !SWEPT.swap(true, std::sync::atomic::Ordering::Relaxed);
    for f in shared::all() {
        if f.state == State::Live && (all || !f.map.evicted) && super::evict::free_unwritten(&f.map)
        {
            let k = f.map.key;
            if !f.map.evicted {
                yezzey_smgr_shim::map::set_evicted(k.spc, k.db, k.rel, k.fork.as_i32());
            }
        }
    }
}

/// Writes the retired records of the retiring objects `want` selects,
/// then takes them off the list.
fn retire_listed(
    state: &StateDir,
    want: impl Fn(&yezzey_smgr_shim::SegInfo) -> bool,
) -> io::Result<()> {
    for l in shared::retiring() {
        if !l.held && want(&l.seg) {
            state.record_one(l.id, &l.retired)?;
            yezzey_smgr_shim::map::drop_retiring(&l.id.0);
        }
    }
    Ok(())
}

/// One fork's file, if the fork is live and dirty. Caller holds the map
/// lock.
fn write_if_dirty(state: &StateDir, key: RelFork) -> io::Result<()> {
    match shared::get(key) {
        Some(f) if f.state == State::Live && f.dirty => {
            state.write_map(&f.map)?;
            yezzey_smgr_shim::map::mark_clean(
                key.spc,
                key.db,
                key.rel,
                key.fork.as_i32(),
                f.version,
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Removes the map file of a fork that left the shared map, retiring its
/// objects that have no retired record yet. Caller holds the map lock and
/// has written the manifest without the fork.
fn remove_orphan(state: &StateDir, key: RelFork, recorded: &HashSet<String>) -> io::Result<()> {
    match state.read_map(key) {
        Ok(Some(m)) => {
            let (lsn, at) = (pg::current_lsn(), unix_now());
            for (id, r) in Retired::of(&m, &m.segments, lsn, at) {
                if !recorded.contains(&r.name) {
                    state.record_one(id, &r)?;
                }
            }
            state.remove_map(key)
        }
        Ok(None) => Ok(()),
        // Its objects cannot be told: kept (and garbage collection
        // refuses) until yezzey_repair_maps() rebuilds and retires it.
        Err(MapError::Damaged(_)) | Err(MapError::Missing) => Ok(()),
    }
}
