//! The garbage-collection decision, as a pure function: given what the
//! store lists, what this member's files say and what the lineage
//! published, a verdict for every listed object, with its reason.
//!
//! **The rule.** A member deletes an object only if
//! 1. it wrote the object itself, or the writer was forgotten (an
//!    operator declared it gone for good); never an object another live
//!    member wrote, nor one written before lineages (no writer in its name);
//! 2. no map of its own references it and no upload of its own that may
//!    still run is writing it;
//! 3. it is not retired here and still held: for a standby that has not
//!    replayed past its retirement, for a backup that started before its
//!    retirement and still exists, or for `yezzey.gc_retention`;
//! 4. no other member's published record holds it.
//!
//! The caller must gather its inputs in this order, so that an offload
//! running meanwhile is always seen: list the store, then read the shared
//! map (uploads in progress, maps, objects leaving the map), then the map
//! files, then retired records. (An object listed was uploaded after its
//! pending entry was made; a pending entry gone by the time it is read was
//! logged and is a map now, or abandoned with its object deleted; an object
//! that left the shared map is in a map file until its retired record is
//! written, and that record is read last.)
use super::lineage::{MemberState, Record};
use super::retired::Retired;
use crate::key::{Lsn, MemberId};
use crate::names::ObjectName;
use crate::store::ObjectMeta;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// What a collection looks at.
pub struct Inputs<'a> {
    pub me: MemberId,
    /// Objects listed in the store: this member's prefix, and the prefixes
    /// of forgotten members.
    pub listed: &'a [ObjectMeta],
    /// Objects this member's maps reference.
    pub referenced: &'a HashSet<String>,
    /// Objects this member's uploads that may still run are writing.
    pub uploading: &'a HashSet<String>,
    /// This member's retired records.
    pub retired: &'a [Retired],
    /// The oldest WAL position a standby of this member may still need
    /// (`None`: no standby to wait for).
    pub standby_horizon: Option<Lsn>,
    /// Unix seconds now, and the retention period in seconds.
    pub now: i64,
    pub retention: i64,
    /// The lineage's published records (this member's own is ignored).
    pub records: &'a [Record],
    /// This member's backups that still exist.
    pub backups: &'a [BackupHold],
}

/// A live backup: it holds every object retired at or after its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHold {
    pub label: String,
    pub start_lsn: Lsn,
}

/// Why an object stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A map of this member references it.
    Referenced,
    /// An upload of this member that may still be running is writing it.
    Uploading,
    /// Retired here at this position, which a standby has not replayed.
    Standby { retired_lsn: Lsn },
    /// Retired after this backup started: restoring it may need it.
    Backup { label: String, start_lsn: Lsn },
    /// Retired here at this time, within `yezzey.gc_retention`.
    Retention { retired_at: i64 },
    /// Another member's published record holds it.
    HeldBy(MemberId),
    /// Another live member wrote it: only it collects it.
    WrittenBy(MemberId),
    /// Written before lineages: nobody collects it automatically.
    NoWriter,
    /// Not a yezzey object name.
    NotAnObject,
}

impl Reason {
    /// `keep` for what is in use or not this member's, `hold` for what is
    /// unreferenced here but still needed by someone.
    pub fn class(&self) -> &'static str {
        match self {
            Reason::Standby { .. }
            | Reason::Backup { .. }
            | Reason::Retention { .. }
            | Reason::HeldBy(_) => "hold",
            _ => "keep",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Referenced => f.write_str("referenced by a map of this cluster"),
            Reason::Uploading => f.write_str("an upload of this cluster is writing it"),
            Reason::Standby { retired_lsn } => write!(
                f,
                "retired at {retired_lsn}, which a standby (connected, or publishing its replay position) has not replayed"
            ),
            Reason::Backup { label, start_lsn } => write!(
                f,
                "retired after the backup \"{label}\" (started at {start_lsn}) began"
            ),
            Reason::Retention { retired_at } => write!(
                f,
                "retired at unix time {retired_at}, within yezzey.gc_retention"
            ),
            Reason::HeldBy(m) => write!(f, "held by lineage member {m}"),
            Reason::WrittenBy(m) => write!(f, "written by lineage member {m}, which collects it"),
            Reason::NoWriter => f.write_str("written before lineages; never collected automatically"),
            Reason::NotAnObject => f.write_str("not a yezzey object"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep(Reason),
    Delete,
}

/// The verdict on one listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub name: String,
    pub bytes: u64,
    pub writer: Option<MemberId>,
    pub verdict: Verdict,
}

/// Everything a collection decides.
#[derive(Debug, Default)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Retired records to drop: their object is deleted or gone, or it was
    /// written by another member and this one no longer holds it.
    pub released: Vec<String>,
    /// What this member publishes: objects other members wrote that it
    /// still needs, sorted.
    pub holds: Vec<String>,
}

fn writer_of(name: &str) -> Option<Option<MemberId>> {
    ObjectName::parse(name).ok().map(|n| n.writer)
}

/// Why this member still needs a retired object, if it does.
fn retired_hold(r: &Retired, inp: &Inputs) -> Option<Reason> {
    if inp.standby_horizon.is_some_and(|h| h < r.lsn) {
        Some(Reason::Standby { retired_lsn: r.lsn })
    } else if let Some(b) = inp.backups.iter().find(|b| b.start_lsn <= r.lsn) {
        Some(Reason::Backup {
            label: b.label.clone(),
            start_lsn: b.start_lsn,
        })
    } else if inp.now - r.at < inp.retention {
        Some(Reason::Retention { retired_at: r.at })
    } else {
        None
    }
}

pub fn decide(inp: &Inputs) -> Plan {
    let live_members: HashSet<MemberId> = inp
        .records
        .iter()
        .filter(|r| r.state == MemberState::Live)
        .map(|r| r.member)
        .collect();
    let forgotten: HashSet<MemberId> = inp
        .records
        .iter()
        .filter(|r| r.state == MemberState::Forgotten && !live_members.contains(&r.member))
        .map(|r| r.member)
        .collect();
    let mut held_by: HashMap<&str, MemberId> = HashMap::new();
    for r in inp.records {
        if r.member == inp.me || r.state != MemberState::Live {
            continue;
        }
        for h in &r.holds {
            held_by.entry(h.as_str()).or_insert(r.member);
        }
    }
    let retired: HashMap<&str, &Retired> =
        inp.retired.iter().map(|r| (r.name.as_str(), r)).collect();

    let mut plan = Plan::default();
    let mut listed_names = HashSet::new();
    for o in inp.listed {
        listed_names.insert(o.name.as_str());
        let writer = writer_of(&o.name);
        let keep = match writer {
            None => Some(Reason::NotAnObject),
            Some(None) => Some(Reason::NoWriter),
            Some(Some(w)) if w != inp.me && !forgotten.contains(&w) => Some(Reason::WrittenBy(w)),
            Some(Some(_)) => {
                if inp.referenced.contains(&o.name) {
                    Some(Reason::Referenced)
                } else if inp.uploading.contains(&o.name) {
                    Some(Reason::Uploading)
                } else if let Some(why) = retired
                    .get(o.name.as_str())
                    .and_then(|r| retired_hold(r, inp))
                {
                    Some(why)
                } else {
                    held_by.get(o.name.as_str()).map(|m| Reason::HeldBy(*m))
                }
            }
        };
        let verdict = match keep {
            Some(why) => Verdict::Keep(why),
            None => Verdict::Delete,
        };
        if verdict == Verdict::Delete && retired.contains_key(o.name.as_str()) {
            plan.released.push(o.name.clone());
        }
        plan.decisions.push(Decision {
            name: o.name.clone(),
            bytes: o.size,
            writer: writer.flatten(),
            verdict,
        });
    }

    let mut holds: Vec<String> = Vec::new();
    let foreign = |name: &str| writer_of(name).is_some_and(|w| w != Some(inp.me));
    holds.extend(inp.referenced.iter().filter(|n| foreign(n)).cloned());
    for r in inp.retired {
        let mine = writer_of(&r.name).is_some_and(|w| w == Some(inp.me));
        let listed_here = listed_names.contains(r.name.as_str());
        if foreign(&r.name) && !listed_here {
            // Another member wrote it: hold it while needed, then let go.
            if retired_hold(r, inp).is_some() {
                holds.push(r.name.clone());
            } else {
                plan.released.push(r.name.clone());
            }
        } else if mine && !listed_here {
            // Already gone from the store.
            plan.released.push(r.name.clone());
        }
    }
    holds.sort();
    holds.dedup();
    plan.holds = holds;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ObjectId, RelFork};
    use crate::names::SegmentId;
    use proptest::prelude::*;

    const ME: MemberId = MemberId(1);
    const PARENT: MemberId = MemberId(2);
    const CHILD: MemberId = MemberId(3);

    fn name(writer: Option<MemberId>, id: u8) -> String {
        ObjectName {
            segment: SegmentId {
                system_id: 7,
                content: -1,
                rel: RelFork::main(1663, 5, 16384 + id as u32),
                segfile: 0,
            },
            writer,
            object_id: ObjectId([id; 16]),
        }
        .relative()
    }

    fn record(m: MemberId, state: MemberState, holds: Vec<String>) -> Record {
        Record {
            member: m,
            parent: None,
            system_id: 7,
            content: -1,
            state,
            origin: "backup".into(),
            published_at: 0,
            timeline: 1,
            lsn: Lsn(0),
            holds,
            forgotten_by: None,
            in_recovery: false,
            slot: None,
        }
    }

    fn meta(n: &str) -> ObjectMeta {
        ObjectMeta {
            name: n.to_string(),
            size: 100,
        }
    }

    fn verdict(plan: &Plan, n: &str) -> Verdict {
        plan.decisions
            .iter()
            .find(|d| d.name == n)
            .unwrap()
            .verdict
            .clone()
    }

    #[test]
    fn a_copy_never_collects_its_origins_objects_and_the_origin_keeps_what_the_copy_holds() {
        let parents = name(Some(PARENT), 1);
        let mine_live = name(Some(ME), 2);
        let mine_garbage = name(Some(ME), 3);
        let mine_held_by_child = name(Some(ME), 4);
        let listed: Vec<_> = [&parents, &mine_live, &mine_garbage, &mine_held_by_child]
            .iter()
            .map(|n| meta(n))
            .collect();
        let referenced: HashSet<String> = [parents.clone(), mine_live.clone()].into();
        let records = vec![
            record(PARENT, MemberState::Live, vec![]),
            record(CHILD, MemberState::Live, vec![mine_held_by_child.clone()]),
        ];
        let plan = decide(&Inputs {
            me: ME,
            listed: &listed,
            referenced: &referenced,
            uploading: &HashSet::new(),
            retired: &[],
            standby_horizon: None,
            now: 100,
            retention: 0,
            records: &records,
            backups: &[],
        });
        assert_eq!(
            verdict(&plan, &parents),
            Verdict::Keep(Reason::WrittenBy(PARENT))
        );
        assert_eq!(
            verdict(&plan, &mine_live),
            Verdict::Keep(Reason::Referenced)
        );
        assert_eq!(verdict(&plan, &mine_garbage), Verdict::Delete);
        assert_eq!(
            verdict(&plan, &mine_held_by_child),
            Verdict::Keep(Reason::HeldBy(CHILD))
        );
        assert_eq!(
            plan.holds,
            vec![parents],
            "publishes the parent's objects it uses"
        );
    }

    #[test]
    fn retired_objects_wait_for_standbys_and_retention_and_forgotten_writers_are_anyones() {
        let gone = MemberId(9);
        let standby = name(Some(ME), 1);
        let recent = name(Some(ME), 2);
        let old = name(Some(ME), 3);
        let orphan = name(Some(gone), 4);
        let legacy = name(None, 5);
        let inherited_held = name(Some(PARENT), 6);
        let inherited_done = name(Some(PARENT), 7);
        let vanished = name(Some(ME), 8);
        let for_backup = name(Some(ME), 9);
        let retired = vec![
            Retired {
                name: for_backup.clone(),
                lsn: Lsn(60),
                at: 0,
            },
            Retired {
                name: standby.clone(),
                lsn: Lsn(500),
                at: 0,
            },
            Retired {
                name: recent.clone(),
                lsn: Lsn(10),
                at: 95,
            },
            Retired {
                name: old.clone(),
                lsn: Lsn(10),
                at: 0,
            },
            Retired {
                name: inherited_held.clone(),
                lsn: Lsn(10),
                at: 95,
            },
            Retired {
                name: inherited_done.clone(),
                lsn: Lsn(10),
                at: 0,
            },
            Retired {
                name: vanished.clone(),
                lsn: Lsn(10),
                at: 0,
            },
        ];
        let listed: Vec<_> = [&standby, &recent, &old, &orphan, &legacy, &for_backup]
            .iter()
            .map(|n| meta(n))
            .collect();
        let records = vec![record(gone, MemberState::Forgotten, vec![])];
        let plan = decide(&Inputs {
            me: ME,
            listed: &listed,
            referenced: &HashSet::new(),
            uploading: &HashSet::new(),
            retired: &retired,
            standby_horizon: Some(Lsn(100)),
            now: 100,
            retention: 10,
            records: &records,
            backups: &[BackupHold {
                label: "b".into(),
                start_lsn: Lsn(50),
            }],
        });
        assert_eq!(
            verdict(&plan, &for_backup),
            Verdict::Keep(Reason::Backup {
                label: "b".into(),
                start_lsn: Lsn(50)
            })
        );
        assert_eq!(
            verdict(&plan, &standby),
            Verdict::Keep(Reason::Standby {
                retired_lsn: Lsn(500)
            })
        );
        assert_eq!(
            verdict(&plan, &recent),
            Verdict::Keep(Reason::Retention { retired_at: 95 })
        );
        assert_eq!(verdict(&plan, &old), Verdict::Delete);
        assert_eq!(verdict(&plan, &orphan), Verdict::Delete);
        assert_eq!(verdict(&plan, &legacy), Verdict::Keep(Reason::NoWriter));
        assert_eq!(plan.holds, vec![inherited_held]);
        let mut released = plan.released.clone();
        released.sort();
        let mut want = vec![old, inherited_done, vanished];
        want.sort();
        assert_eq!(released, want);
    }

    proptest! {
        /// Nothing referenced, being uploaded, held by a live member or
        /// written by another live member is ever in the delete set.
        #[test]
        fn nothing_anyone_needs_is_deleted(
            objs in proptest::collection::vec((0u8..4, any::<bool>(), any::<bool>(), 0u8..4, any::<bool>()), 1..40),
            horizon in proptest::option::of(0u64..200),
            backup_start in proptest::option::of(0u64..200),
            retention in 0i64..50,
        ) {
            let backups: Vec<BackupHold> = backup_start
                .map(|s| BackupHold { label: "b".into(), start_lsn: Lsn(s) })
                .into_iter()
                .collect();
            // writer: 0 legacy, 1 me, 2 parent (live), 3 forgotten
            let members = [None, Some(ME), Some(PARENT), Some(MemberId(9))];
            let mut listed = Vec::new();
            let (mut referenced, mut uploading) = (HashSet::new(), HashSet::new());
            let mut retired = Vec::new();
            let mut parent_holds = Vec::new();
            let mut needed = HashSet::new();
            for (i, (w, refd, up, held, ret)) in objs.iter().enumerate() {
                let n = name(members[*w as usize], i as u8);
                listed.push(meta(&n));
                if *refd { referenced.insert(n.clone()); needed.insert(n.clone()); }
                if *up { uploading.insert(n.clone()); needed.insert(n.clone()); }
                if *held == 1 { parent_holds.push(n.clone()); needed.insert(n.clone()); }
                if *w == 0 || *w == 2 { needed.insert(n.clone()); }
                if *ret {
                    let r = Retired { name: n.clone(), lsn: Lsn(100), at: 80 };
                    if horizon.is_some_and(|h| h < 100)
                        || backup_start.is_some_and(|b| b <= 100)
                        || 100 - 80 < retention
                    {
                        needed.insert(n.clone());
                    }
                    retired.push(r);
                }
            }
            let records = vec![
                record(PARENT, MemberState::Live, parent_holds),
                record(MemberId(9), MemberState::Forgotten, vec![]),
            ];
            let plan = decide(&Inputs {
                me: ME,
                listed: &listed,
                referenced: &referenced,
                uploading: &uploading,
                retired: &retired,
                standby_horizon: horizon.map(Lsn),
                now: 100,
                retention,
                records: &records,
                backups: &backups,
            });
            for d in &plan.decisions {
                if d.verdict == Verdict::Delete {
                    prop_assert!(!needed.contains(&d.name), "deleted a needed object: {}", d.name);
                } else {
                    // And what nobody needs and is ours (or orphaned) goes.
                    prop_assert!(needed.contains(&d.name), "kept garbage: {} {:?}", d.name, d.verdict);
                }
            }
        }
    }
}
