//! What this cluster holds of the objects other members of its lineage
//! wrote, as its published record says (`lineage.rs`).
use super::shared;
use crate::{fds, pg};
use std::collections::BTreeSet;
use yezzey_storage::key::MemberId;
use yezzey_storage::names::ObjectName;

/// Whether `name` was written by another member (or before lineages).
fn foreign(name: &str, me: MemberId) -> bool {
    ObjectName::parse(name).is_ok_and(|n| n.writer != Some(me))
}

/// What this member holds, without consulting standbys or retention: every
/// foreign object its shared map references (the authority; a map file
/// only lags it) or that left it (still leaving, or retired). A superset
/// of what garbage collection publishes, for publishing outside it.
pub fn holds(me: MemberId) -> Vec<String> {
    // In recovery, what this member retired was retired by the member whose
    // WAL it replays, which holds it for as long as this member's published
    // replay position is behind (state::lineage): only what its map
    // references is held by name.
    let recovering = pg::in_recovery();
    let mut holds = BTreeSet::new();
    for f in shared::all() {
        holds.extend(f.map.object_names().filter(|n| foreign(n, me)));
    }
    if !recovering {
        for l in shared::retiring() {
            if foreign(&l.retired.name, me) {
                holds.insert(l.retired.name);
            }
        }
        fds::transient(fds::STATE_OP, || {
            for (_, r) in pg::state().retired() {
                if foreign(&r.name, me) {
                    holds.insert(r.name);
                }
            }
        });
    }
    holds.into_iter().collect()
}
