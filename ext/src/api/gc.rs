//! `yezzey_gc` and `yezzey_gc_plan`: collect this cluster's garbage, never
//! anything another cluster of its lineage, a standby or the retention
//! period still needs. The decision is `yezzey_storage::state::gc`; this
//! module gathers its inputs in the order that rule requires and carries
//! it out.
//!
//! It goes by the shared map, the authority while the server runs: an
//! object a map names there is kept whether or not its map file could be
//! written. It first brings `pg_yezzey` in step with it where it can
//! (objects still leaving the map when their retired records cannot be
//! written stay referenced), and refuses to run while a map is broken:
//! without it, what the fork references cannot be told. Like VACUUM,
//! `yezzey_gc()` refuses transaction blocks.
use crate::map::persist;
use crate::map::shared::{self, SharedFork, State};
use crate::pg;
use crate::{backups, errors, fds, lineage, settings, utility};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use yezzey_storage::names::{self, ObjectName};
use yezzey_storage::runtime::block_on;
use yezzey_storage::state::backups::BackupRecord;
use yezzey_storage::state::gc::{self, BackupHold, Inputs, Plan, Verdict};
use yezzey_storage::state::lineage::{read_all, recovery_horizon, MemberState};
use yezzey_storage::state::retired::Retired;
use yezzey_storage::state::unix_now;
use yezzey_storage::store::{ObjectMeta, ObjectStore};

/// Deletes this cluster's objects that nothing needs any more, and
/// publishes what it still needs of other clusters' objects. Safe to run
/// at any time, in any cluster of a lineage.
#[pg_extern(volatile, parallel_unsafe)]
fn yezzey_gc(
    dry_run: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(deleted_objects, i64),
        name!(deleted_bytes, i64),
        name!(kept_objects, i64),
        name!(held_objects, i64),
    ),
> {
    if !dry_run {
        pg::refuse_in_transaction_block(c"yezzey_gc()");
    }
    let storage = settings::storage();
    let c = gather(&storage, dry_run);
    if !dry_run {
        carry_out(&storage, &c);
    }
    let mut deleted = (0i64, 0i64);
    let (mut kept, mut held, mut held_bytes) = (0i64, 0i64, 0u64);
    let (mut for_standby, mut for_backups, mut for_retention, mut for_members) = (0, 0, 0, 0);
    for d in &c.plan.decisions {
        match &d.verdict {
            Verdict::Delete => {
                deleted.0 += 1;
                deleted.1 += d.bytes as i64;
            }
            Verdict::Keep(why) if why.class() == "hold" => {
                held += 1;
                held_bytes += d.bytes;
                match why {
                    gc::Reason::Standby { .. } => for_standby += 1,
                    gc::Reason::Backup { .. } => for_backups += 1,
                    gc::Reason::Retention { .. } => for_retention += 1,
                    _ => for_members += 1,
                }
            }
            Verdict::Keep(_) => kept += 1,
        }
    }
    if held > 0 {
        errors::notice(
            format!(
                "yezzey: kept {held} unreferenced object(s) ({:.1} MB) that a standby, a backup or another cluster may still need",
                held_bytes as f64 / (1024.0 * 1024.0)
            ),
            format!(
                "{for_standby} wait for a standby (connected, or publishing its replay position in the lineage) to replay the WAL position at which they were dropped; {for_backups} were dropped after a backup that still exists began (see yezzey_backups); {for_retention} were dropped less than yezzey.gc_retention ({} s) ago; {for_members} are held by other clusters of this lineage.",
                settings::gc_retention()
            ),
            "A later yezzey_gc() deletes them once that has passed; release clusters that are gone for good with yezzey_forget_member() (see yezzey_lineage); see yezzey_gc_plan() for each object.",
        );
    }
    TableIterator::once((deleted.0, deleted.1, kept, held))
}

/// What `yezzey_gc()` would do with every object this cluster wrote (and
/// every object of a forgotten cluster), and why; plus the objects of other
/// clusters this one still needs. Changes nothing.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)] // pgrx needs the row type spelled out
fn yezzey_gc_plan() -> TableIterator<
    'static,
    (
        name!(object, String),
        name!(bytes, Option<i64>),
        name!(database, Option<pg_sys::Oid>),
        name!(relfilenode, Option<pg_sys::Oid>),
        name!(written_by, Option<String>),
        name!(verdict, String),
        name!(reason, String),
    ),
> {
    let storage = settings::storage();
    let c = gather(&storage, true);
    let place = |name: &str| {
        ObjectName::parse(name).ok().map_or((None, None), |n| {
            (
                Some(pg_sys::Oid::from(n.segment.rel.db)),
                Some(pg_sys::Oid::from(n.segment.rel.rel)),
            )
        })
    };
    let mut rows = Vec::new();
    for d in &c.plan.decisions {
        let (db, rel) = place(&d.name);
        let (verdict, reason) = match &d.verdict {
            Verdict::Delete => ("delete".to_string(), "nothing needs it".to_string()),
            Verdict::Keep(why) => (why.class().to_string(), why.to_string()),
        };
        rows.push((
            d.name.clone(),
            Some(d.bytes as i64),
            db,
            rel,
            d.writer.map(|w| w.to_string()),
            verdict,
            reason,
        ));
    }
    for h in &c.plan.holds {
        let (db, rel) = place(h);
        let writer = ObjectName::parse(h).ok().and_then(|n| n.writer);
        rows.push((
            h.clone(),
            None,
            db,
            rel,
            writer.map(|w| w.to_string()),
            "hold".into(),
            format!(
                "this cluster needs it; its writer ({}) collects it",
                writer.map_or_else(|| "none".into(), |w| format!("member {w}"))
            ),
        ));
    }
    TableIterator::new(rows)
}

/// A collection's inputs and its plan.
struct Collection {
    plan: Plan,
    /// Registrations of backups that no longer exist.
    expired_backups: Vec<BackupRecord>,
    /// Retired records by object name.
    retired_files: HashMap<String, PathBuf>,
    stale_intents: Vec<PathBuf>,
}

fn gather(storage: &settings::Storage, dry_run: bool) -> Collection {
    errors::require_superuser("run yezzey_gc");
    if pg::in_recovery() {
        errors::error(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "yezzey_gc cannot run during recovery".into(),
            "Run it on the primary; standbys read the same objects.",
        );
    }
    // Maps of databases that no longer exist (dropped while yezzey was not
    // loaded) are forgotten first, so their objects are retired below.
    if !dry_run {
        let dead: Vec<SharedFork> = shared::all()
            .into_iter()
            .filter(|f| f.state != State::Pending && !pg::database_exists(f.map.key.db))
            .collect();
        if !dead.is_empty() {
            forget_dead(&dead);
        }
    }
    // Retired records let held objects go once nothing needs them, and
    // forks that left the map lose their files; what cannot be written now
    // stays referenced (GC goes by the shared map).
    if let Err(e) = persist::checkpoint(false) {
        pgrx::warning!(
            "yezzey_gc: could not write yezzey's map files and retired records ({e}); objects leaving the map are kept until they can be written"
        );
    }
    if let Some(f) = shared::all().iter().find(|f| f.state == State::Broken) {
        errors::error(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "yezzey_gc cannot run: the map of offloaded relation file {} is damaged or missing",
                pg::segment_path(f.map.key, 0).display()
            ),
            "Without it, the objects it references cannot be told; rebuild it with SELECT * FROM yezzey_repair_maps().",
        );
    }
    let me = lineage::me().member;
    let (sys, content) = (pg::system_id(), settings::content_id());
    let records = block_on(read_all(&storage.store, sys, content))
        .unwrap_or_else(|e| errors::report(e, "yezzey_gc cannot read the lineage's records"));
    // In the order state::gc requires: the store first, then this server.
    let forgotten = records
        .iter()
        .filter(|r| r.state == MemberState::Forgotten && r.member != me)
        .map(|r| r.member);
    let listed = list_writers(storage, std::iter::once(me).chain(forgotten));
    let local = fds::transient(fds::STATE_OP, || LocalState::read(dry_run));
    // Backups of this cluster, and of its standbys (they replay its WAL).
    let mut takers = vec![me];
    takers.extend(
        records
            .iter()
            .filter(|r| r.in_recovery && r.state == MemberState::Live && r.member != me)
            .map(|r| r.member),
    );
    let (mut holds, mut expired_backups) = (Vec::new(), Vec::new());
    for (rec, live) in backups::judged(storage, &takers, !dry_run) {
        if live.holds() {
            holds.push(BackupHold {
                label: rec.label.clone(),
                start_lsn: rec.start_lsn,
            });
        } else {
            expired_backups.push(rec);
        }
    }
    let plan = gc::decide(&Inputs {
        me,
        listed: &listed,
        referenced: &local.referenced,
        uploading: &local.uploading,
        retired: &local.retired,
        standby_horizon: [
            pg::standby_horizon(),
            recovery_horizon(
                &records,
                me,
                &pg::physical_slots(),
                unix_now(),
                settings::gc_retention(),
            ),
        ]
        .into_iter()
        .flatten()
        .min(),
        now: unix_now(),
        retention: settings::gc_retention(),
        records: &records,
        backups: &holds,
    });
    Collection {
        plan,
        expired_backups,
        retired_files: local.retired_files,
        stale_intents: local.stale_intents,
    }
}

/// The objects the given lineage members wrote.
fn list_writers(
    storage: &settings::Storage,
    writers: impl Iterator<Item = yezzey_storage::key::MemberId>,
) -> Vec<ObjectMeta> {
    let (sys, content) = (pg::system_id(), settings::content_id());
    let mut listed = Vec::new();
    for m in writers {
        listed.extend(
            block_on(storage.store.list(&names::writer_prefix(sys, content, m)))
                .unwrap_or_else(|e| errors::report(e, "yezzey_gc cannot list objects")),
        );
    }
    listed
}

/// This server's side of a collection: the shared map (uploads in
/// progress, maps, objects leaving them), then the map files, then
/// retired records (that order: see `state::gc`).
struct LocalState {
    uploading: HashSet<String>,
    referenced: HashSet<String>,
    retired: Vec<Retired>,
    retired_files: HashMap<String, PathBuf>,
    stale_intents: Vec<PathBuf>,
}

impl LocalState {
    fn read(dry_run: bool) -> LocalState {
        let state = pg::state();
        // The forks, then the retiring list, read again if a re-offload's
        // promotion came between the two (its holds on the new objects go
        // once the map names them, so neither read would show them).
        let (uploading, mut referenced, dead) = loop {
            pgrx::check_for_interrupts!();
            let switches = yezzey_smgr_shim::map::switches();
            let (mut uploading, mut referenced, mut dead) =
                (HashSet::new(), HashSet::new(), Vec::new());
            for f in shared::all() {
                match f.state {
                    State::Pending => uploading.extend(f.map.object_names()),
                    // Maps of databases that no longer exist (forgotten
                    // before a collection; a dry run counts their objects
                    // as retired).
                    _ if dry_run && !pg::database_exists(f.map.key.db) => dead.push(f),
                    _ => referenced.extend(f.map.object_names()),
                }
            }
            referenced.extend(shared::retiring().into_iter().map(|l| l.retired.name));
            if yezzey_smgr_shim::map::switches() == switches {
                break (uploading, referenced, dead);
            }
        };
        let dead_dbs: HashSet<u32> = dead.iter().map(|f| f.map.key.db).collect();
        for (key, m) in state.read_maps() {
            match m {
                // A dead database's maps in a dry run: counted as retired below.
                Ok(m) if dead_dbs.contains(&m.key.db) => {}
                Ok(m) => referenced.extend(m.object_names()),
                Err(e) => errors::error(
                    PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                    format!(
                        "yezzey_gc cannot run: the map file of relation file {} is {e}",
                        pg::segment_path(key, 0).display()
                    ),
                    "Without it, the objects it references cannot be told; rebuild it with SELECT * FROM yezzey_repair_maps().",
                ),
            }
        }
        let (mut retired, mut retired_files) = (Vec::new(), HashMap::new());
        for (path, r) in state.retired() {
            retired_files.insert(r.name.clone(), path);
            retired.push(r);
        }
        if dry_run {
            let (lsn, at) = (pg::current_lsn(), unix_now());
            for f in &dead {
                let m = &f.map;
                retired.extend(Retired::of(m, &m.segments, lsn, at).map(|(_, r)| r));
            }
        }
        // Upload intents of builds before the shared map: none can be live.
        let stale_intents = std::fs::read_dir(state.legacy_intents_dir())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        LocalState {
            uploading,
            referenced,
            retired,
            retired_files,
            stale_intents,
        }
    }
}

fn forget_dead(dead: &[SharedFork]) {
    utility::forget_maps(dead);
    let mut dbs: Vec<u32> = dead.iter().map(|f| f.map.key.db).collect();
    dbs.sort_unstable();
    dbs.dedup();
    notice!(
        "yezzey: forgot {} map(s) of databases that no longer exist (OIDs {dbs:?})",
        dead.len()
    );
}

fn carry_out(storage: &settings::Storage, c: &Collection) {
    // Others learn what this member still needs before anything goes.
    if let Err(e) = lineage::publish(storage, c.plan.holds.clone()) {
        lineage::raise(e, "yezzey_gc cannot publish this cluster's lineage record");
    }
    for rec in &c.expired_backups {
        backups::expire(storage, rec);
    }
    for d in c
        .plan
        .decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Delete)
    {
        block_on(storage.store.delete(&d.name))
            .unwrap_or_else(|e| errors::report(e, "yezzey_gc cannot delete"));
    }
    fds::transient(1, || {
        for name in &c.plan.released {
            if let Some(p) = c.retired_files.get(name) {
                let _ = std::fs::remove_file(p);
            }
        }
        for p in &c.stale_intents {
            let _ = std::fs::remove_file(p);
        }
    });
}
