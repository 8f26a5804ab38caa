//! Rebuilding broken maps from the objects in the store: forks whose map
//! file was damaged or lost (broken in the shared map), and damaged map
//! files of forks that are gone (their objects must still be retired, so
//! that garbage collection keeps them for standbys, backups and
//! retention). The rule is `yezzey_storage::state::repair`.
//!
//! A repair is this server's own: it is not WAL-logged (a standby keeps
//! its own map files; repair it on the standby if its map is damaged too).
use super::{evict, persist, shared};
use crate::settings::Storage;
use crate::{errors, lineage, pg, settings};
use std::collections::{BTreeSet, HashSet};
use yezzey_storage::key::{MemberId, RelFork};
use yezzey_storage::runtime::block_on;
use yezzey_storage::state::map::{ForkMap, MapError};
use yezzey_storage::state::repair::{rebuild, Candidate, RepairError};
use yezzey_storage::state::retired::Retired;
use yezzey_storage::state::unix_now;

/// What became of one broken map.
pub struct Outcome {
    pub key: RelFork,
    pub result: Result<Repaired, String>,
}

pub enum Repaired {
    /// Rebuilt from the objects, and live again.
    Rebuilt(ForkMap),
    /// The fork is gone (only its damaged file was left): its objects
    /// were retired rather than mapped.
    Retired(ForkMap),
    /// Every object of the fork was retired here (it was loaded back or
    /// dropped; the map that said otherwise was stale): it is local.
    Stale,
}

/// Rebuilds every broken map this server has.
pub fn repair_all(storage: &Storage) -> Vec<Outcome> {
    let broken: BTreeSet<RelFork> = shared::all()
        .into_iter()
        .filter(|f| f.state == shared::State::Broken)
        .map(|f| f.map.key)
        .collect();
    let gone: BTreeSet<RelFork> =
        crate::fds::transient(crate::fds::STATE_OP, || pg::state().read_maps())
            .into_iter()
            .filter(|(k, m)| matches!(m, Err(MapError::Damaged(_))) && shared::get(*k).is_none())
            .map(|(k, _)| k)
            .collect();
    // A broken fork whose relation file is gone was dropped: retire.
    let (broken, dropped): (BTreeSet<RelFork>, BTreeSet<RelFork>) = broken
        .into_iter()
        .partition(|k| pg::segment_path(*k, 0).exists());
    let gone: BTreeSet<RelFork> = gone.into_iter().chain(dropped).collect();
    if broken.is_empty() && gone.is_empty() {
        return Vec::new();
    }
    let me = lineage::me();
    let mut preferred = vec![me.member];
    preferred.extend(me.parent);
    let mut members: BTreeSet<MemberId> = lineage::members(storage)
        .into_iter()
        .map(|r| r.member)
        .collect();
    members.extend(preferred.iter().copied());
    let retired: HashSet<String> =
        crate::fds::transient(crate::fds::STATE_OP, || pg::state().retired())
            .into_iter()
            .map(|(_, r)| r.name)
            .collect();
    let mut out = Vec::new();
    for (key, is_gone) in broken
        .iter()
        .map(|k| (*k, false))
        .chain(gone.iter().map(|k| (*k, true)))
    {
        let result = candidates(storage, &members, key).and_then(|c| {
            match rebuild(
                key,
                &c,
                &retired,
                &preferred,
                |segno| evict::segment_local_bytes(key, segno),
                unix_now(),
            ) {
                Ok(m) => apply(&m, is_gone).map(|()| {
                    if is_gone {
                        Repaired::Retired(m)
                    } else {
                        Repaired::Rebuilt(m)
                    }
                }),
                Err(RepairError::NoObjects) if was_retired(&retired, key) => {
                    forget_stale(key).map(|()| Repaired::Stale)
                }
                Err(e) => Err(e.to_string()),
            }
        });
        out.push(Outcome { key, result });
    }
    out
}

/// Whether this cluster retired objects of the fork.
fn was_retired(retired: &HashSet<String>, key: RelFork) -> bool {
    retired
        .iter()
        .any(|n| yezzey_storage::names::ObjectName::parse(n).is_ok_and(|o| o.segment.rel == key))
}

/// Drops a stale broken entry (and its damaged file): the fork is local.
fn forget_stale(key: RelFork) -> Result<(), String> {
    yezzey_smgr_shim::map::retire(key.spc, key.db, key.rel, key.fork.as_i32(), 0, 0);
    crate::fds::transient(crate::fds::STATE_OP, || {
        let state = pg::state();
        let _lock = state.lock_maps()?;
        state.remove_map(key)
    })
    .map_err(|e| e.to_string())
}

/// Puts a rebuilt map in place (live, its file written now), or, for a
/// fork that is gone, retires its objects and removes the damaged file.
fn apply(m: &ForkMap, gone: bool) -> Result<(), String> {
    if gone {
        let k = m.key;
        yezzey_smgr_shim::map::retire(k.spc, k.db, k.rel, k.fork.as_i32(), 0, 0);
        return crate::fds::transient(crate::fds::STATE_OP, || {
            let state = pg::state();
            let _lock = state.lock_maps()?;
            for (id, r) in Retired::of(m, &m.segments, pg::current_lsn(), unix_now()) {
                state.record_one(id, &r)?;
            }
            state.remove_map(m.key)
        })
        .map_err(|e| e.to_string());
    }
    if !shared::put(m, shared::State::Live, true, false) {
        return Err("out of shared memory".into());
    }
    let k = m.key;
    persist::persist(k.spc, k.db, k.rel, k.fork.as_i32())
        .map_err(|e| format!("rebuilt and in effect, but its map file could not be written: {e}"))
}

/// The objects the store holds for a fork, from every member's prefix.
fn candidates(
    storage: &Storage,
    members: &BTreeSet<MemberId>,
    key: RelFork,
) -> Result<Vec<Candidate>, String> {
    let (found, skipped) = block_on(yezzey_storage::state::repair::candidates(
        &storage.reader,
        pg::system_id(),
        settings::content_id(),
        members.iter().copied(),
        key,
    ))
    .map_err(|e| e.to_string())?;
    for s in skipped {
        pgrx::warning!("yezzey: not using object {s} to rebuild a map");
    }
    Ok(found)
}

/// Raises an error if the repair could not run at all.
pub fn require_identity() {
    if lineage::me_if_known().is_none() {
        errors::error(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "yezzey cannot repair maps: this cluster has no lineage identity".into(),
            "See the server log from its start: pg_yezzey/member.json could not be read or written.",
        );
    }
}
