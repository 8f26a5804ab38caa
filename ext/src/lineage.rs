//! This cluster's place in its lineage: its member identity, decided by
//! the postmaster at every start, and the record it publishes so that the
//! other clusters sharing its objects keep what it needs. The rules are in
//! `yezzey_storage::state::member` and `yezzey_storage::state::lineage`.
use crate::errors;
use crate::settings::Storage;
use crate::{fds, pg};
use pgrx::PgSqlErrorCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use yezzey_storage::key::MemberId;
use yezzey_storage::runtime::block_on;
use yezzey_storage::state::lineage::{self, MemberState, Record};
use yezzey_storage::state::member::{self, Fingerprint, Member};
use yezzey_storage::state::unix_now;

/// Set by the postmaster before it forks; every process inherits it.
static ME: OnceLock<Member> = OnceLock::new();

/// Decides this start's identity (postmaster, before any other process
/// exists). A failure leaves the cluster without one: reads work, offload
/// and garbage collection refuse until it is fixed.
pub fn decide_at_start() {
    let dir = pg::data_dir();
    let result = fds::transient(fds::STATE_OP, || -> std::io::Result<Member> {
        let state = pg::state();
        let recorded = state.read_member()?;
        let label = match std::fs::read(dir.join("backup_label")) {
            Ok(l) => Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let (m, new) = member::decide(
            recorded.as_ref(),
            label.as_deref(),
            Fingerprint::of(&dir)?,
            unix_now(),
        );
        if new {
            state.write_member(&m)?;
            pgrx::log!(
                "yezzey: this cluster is lineage member {} ({}{})",
                m.member,
                m.origin.as_str(),
                m.parent
                    .map(|p| format!(", copied from member {p}"))
                    .unwrap_or_default()
            );
        }
        Ok(m)
    });
    match result {
        Ok(m) => {
            let _ = ME.set(m);
        }
        Err(e) => pgrx::warning!(
            "yezzey: cannot establish this cluster's lineage identity ({}/pg_yezzey/member.json): {e}; offloading and garbage collection are disabled",
            dir.display()
        ),
    }
}

/// This cluster's identity; an ERROR if it has none.
pub fn me() -> &'static Member {
    ME.get().unwrap_or_else(|| {
        errors::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "this cluster has no yezzey lineage identity".into(),
            "See the server log from its start: pg_yezzey/member.json could not be read or written. Fix or remove it and restart.",
        )
    })
}

/// This cluster's identity, if it has one (no ERROR).
pub fn me_if_known() -> Option<&'static Member> {
    ME.get()
}

/// A record of this member holding `holds`.
pub fn record(holds: Vec<String>) -> Record {
    let me = me();
    Record {
        member: me.member,
        parent: me.parent,
        system_id: pg::system_id(),
        content: crate::settings::content_id(),
        state: MemberState::Live,
        origin: me.origin.as_str().into(),
        published_at: unix_now(),
        timeline: pg::timeline(),
        lsn: pg::current_lsn(),
        holds,
        forgotten_by: None,
        in_recovery: pg::in_recovery(),
        slot: pg::in_recovery().then(pg::primary_slot_name).flatten(),
    }
}

/// Errors of [`publish`].
pub enum PublishError {
    /// Another member forgot this one: it must not come back silently.
    Forgotten(MemberId),
    Store(yezzey_storage::Error),
}

/// Publishes this member's record, unless it was forgotten.
pub fn publish(storage: &Storage, holds: Vec<String>) -> Result<(), PublishError> {
    let me = me().member;
    let own = block_on(lineage::read(
        &storage.store,
        pg::system_id(),
        crate::settings::content_id(),
        me,
    ))
    .map_err(PublishError::Store)?;
    if let Some(r) = own.filter(|r| r.state == MemberState::Forgotten) {
        return Err(PublishError::Forgotten(r.forgotten_by.unwrap_or(me)));
    }
    block_on(lineage::publish(&storage.store, &record(holds))).map_err(PublishError::Store)?;
    REGISTERED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Raises a publication failure as an ERROR.
pub fn raise(e: PublishError, context: &str) -> ! {
    match e {
        PublishError::Forgotten(by) => errors::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{context}: this cluster (lineage member {}) was forgotten by member {by}", me().member),
            "yezzey_forget_member() was run for this cluster in another cluster of its lineage, which may have deleted objects it wrote. Do not offload or collect garbage here; load its relations back, or rebuild it from a backup.",
        ),
        PublishError::Store(e) => errors::report(e, context),
    }
}

static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Makes sure this member has a record before it uploads anything, so that
/// every object in the store is attributable to a published member;
/// `holds` says what it holds (`map::holds`), if it must be published.
pub fn ensure_registered(storage: &Storage, holds: impl FnOnce(MemberId) -> Vec<String>) {
    if REGISTERED.load(Ordering::Relaxed) {
        return;
    }
    let holds = holds(me().member);
    if let Err(e) = publish(storage, holds) {
        raise(e, "cannot register this cluster in its lineage");
    }
}

/// Every published record, with this member's own (from its identity
/// file) first if it has not published yet.
pub fn members(storage: &Storage) -> Vec<Record> {
    let mut all = block_on(lineage::read_all(
        &storage.store,
        pg::system_id(),
        crate::settings::content_id(),
    ))
    .unwrap_or_else(|e| errors::report(e, "cannot read the lineage's records"));
    if let Some(me) = me_if_known() {
        if !all.iter().any(|r| r.member == me.member) {
            let mut own = record(Vec::new());
            own.published_at = 0;
            all.insert(0, own);
        }
    }
    all
}

/// Marks another member as gone for good: its record holds nothing any
/// more, and the objects it wrote become collectable by any member.
pub fn forget(storage: &Storage, member: MemberId) -> Record {
    let me = me();
    if member == me.member {
        errors::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("member {member} is this cluster"),
            "Run yezzey_forget_member() in another cluster of the lineage, for a cluster that is gone for good.",
        );
    }
    let (sys, content) = (pg::system_id(), crate::settings::content_id());
    let old = block_on(lineage::read(&storage.store, sys, content, member))
        .unwrap_or_else(|e| errors::report(e, "cannot read the member's record"));
    let tomb = Record {
        member,
        parent: old.as_ref().and_then(|r| r.parent),
        system_id: sys,
        content,
        state: MemberState::Forgotten,
        origin: old.map(|r| r.origin).unwrap_or_else(|| "unknown".into()),
        published_at: unix_now(),
        timeline: pg::timeline(),
        lsn: pg::current_lsn(),
        holds: Vec::new(),
        forgotten_by: Some(me.member),
        in_recovery: false,
        slot: None,
    };
    block_on(lineage::publish(&storage.store, &tomb))
        .unwrap_or_else(|e| errors::report(e, "cannot write the member's tombstone"));
    tomb
}
