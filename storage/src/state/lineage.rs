//! Lineage records: what each member of a lineage publishes in the store,
//! beside the objects, so that the others know what it still needs.
//!
//! ```text
//! <system id>/seg<content>/lineage/m<member>.json
//! ```
//!
//! A record lists the objects **written by other members** that its member
//! still needs: those its maps reference, and those it retired but still
//! holds for its own standbys, backups or retention. A member never deletes
//! an object another member wrote, and deletes its own only when no
//! published record holds them ([`super::gc`]).
//!
//! Why publishing is enough. After a member is born (the end of its first
//! recovery) it can no longer gain references to objects others wrote: its
//! new references are to objects it uploads itself. So the set it needs
//! from others only shrinks, and a record published at any time after
//! birth, however old, is a superset of what the member needs now. The
//! record is published when the member starts (its background worker), and
//! again by every garbage collection and whenever the set shrank. Before
//! its first record a new member is protected like the backup it was made
//! from: by the backup's registration and `yezzey.gc_retention`.
//!
//! **Members still in recovery** (standbys, cascaded or delayed or fed
//! from an archive, and restores replaying towards their target) do gain
//! references: each record they replay may name objects. They publish
//! their *replay* position instead (`in_recovery`, `lsn`), every ten
//! seconds it moved: replay only moves forward, so a published position is
//! a lower bound of where the member is now, and every object retired
//! after it may still be needed ([`recovery_horizon`]). Such a record
//! holds while the member keeps publishing (its last record is younger
//! than `yezzey.gc_retention`, or than [`RECOVERY_LIVENESS`] if that is
//! longer) or while the replication slot it streams from exists: a
//! standby stopped for longer is still held by its slot, and dropping the
//! slot of a standby that is gone lets go.
//! A WAL receiver that does not replay (pg_receivewal, Barman's streaming)
//! runs no yezzey and publishes nothing, so it holds nothing.
//!
//! A record is replaced whole with one PUT, so a reader sees the old
//! record or the new one. Forgetting a member (`yezzey_forget_member`, for a
//! cluster gone for good) replaces its record with a tombstone: it holds
//! nothing, and the objects it wrote may be collected by any member.
use crate::error::{Error, Result};
use crate::key::{Lsn, MemberId};
use crate::names;
use crate::store::{AnyStore, ObjectStore};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Whether a member still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    Live,
    /// Gone for good, by an operator's word: holds nothing, and its
    /// objects are anyone's to collect.
    Forgotten,
}

/// One member's published record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub member: MemberId,
    pub parent: Option<MemberId>,
    pub system_id: u64,
    pub content: i32,
    pub state: MemberState,
    /// Why the member has its id (founder, backup, copy).
    pub origin: String,
    /// Unix seconds, WAL timeline and position of the publication.
    pub published_at: i64,
    pub timeline: u32,
    pub lsn: Lsn,
    /// Objects written by other members that this member still needs
    /// (names relative to the store's prefix), sorted.
    pub holds: Vec<String>,
    /// Who forgot this member, if it was forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten_by: Option<MemberId>,
    /// Published during recovery: `lsn` is the replay position then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_recovery: bool,
    /// In recovery: the replication slot it streams from (its upstream's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// How long a member in recovery that stopped publishing (it publishes at
/// least every ten minutes while it runs) is taken to be alive without a
/// slot, when `yezzey.gc_retention` is shorter.
pub const RECOVERY_LIVENESS: i64 = 1800;

/// The oldest replay position that a live member still in recovery
/// published and that still holds: published within `retention` seconds
/// (at least [`RECOVERY_LIVENESS`]) of `now`, or naming one of `slots`
/// (this server's physical replication slots). Every object retired after
/// it may still be read. `None` when no such member.
pub fn recovery_horizon(
    records: &[Record],
    me: MemberId,
    slots: &std::collections::HashSet<String>,
    now: i64,
    retention: i64,
) -> Option<Lsn> {
    records
        .iter()
        .filter(|r| r.member != me && r.state == MemberState::Live && r.in_recovery)
        .filter(|r| {
            now - r.published_at < retention.max(RECOVERY_LIVENESS)
                || r.slot.as_ref().is_some_and(|s| slots.contains(s))
        })
        .map(|r| r.lsn)
        .min()
}

impl Record {
    pub fn name(&self) -> String {
        names::lineage_record(self.system_id, self.content, self.member)
    }
}

/// Replaces a member's record.
pub async fn publish(store: &AnyStore, rec: &Record) -> Result<()> {
    let body = serde_json::to_vec_pretty(rec).expect("serialising a lineage record");
    store.put(&rec.name(), Bytes::from(body)).await
}

/// One member's record, if published.
pub async fn read(
    store: &AnyStore,
    system_id: u64,
    content: i32,
    member: MemberId,
) -> Result<Option<Record>> {
    let name = names::lineage_record(system_id, content, member);
    match get_whole(store, &name).await {
        Ok(b) => Ok(Some(parse(&name, &b)?)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A whole object with one GET (a suffix longer than any record), so a
/// record replaced meanwhile is read whole, old or new.
async fn get_whole(store: &AnyStore, name: &str) -> Result<Bytes> {
    Ok(store.get_suffix(name, 1 << 40).await?.0)
}

/// Every record of the lineage. A record that cannot be parsed is an
/// error: deciding without it could delete what its member needs.
pub async fn read_all(store: &AnyStore, system_id: u64, content: i32) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for meta in store
        .list(&names::lineage_prefix(system_id, content))
        .await?
    {
        if !meta.name.ends_with(".json") {
            continue;
        }
        let bytes = match get_whole(store, &meta.name).await {
            Ok(b) => b,
            // Deleted since the listing (no record is deleted but by hand).
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let rec = parse(&meta.name, &bytes)?;
        if rec.system_id == system_id && rec.content == content {
            out.push(rec);
        }
    }
    out.sort_by_key(|r| r.member);
    Ok(out)
}

fn parse(name: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(name, format!("not a lineage record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(m: u64, holds: &[&str]) -> Record {
        Record {
            member: MemberId(m),
            parent: None,
            system_id: 9,
            content: -1,
            state: MemberState::Live,
            origin: "founder".into(),
            published_at: 1,
            timeline: 1,
            lsn: Lsn(5),
            holds: holds.iter().map(|s| s.to_string()).collect(),
            forgotten_by: None,
            in_recovery: false,
            slot: None,
        }
    }

    #[test]
    fn horizon_is_the_oldest_replay_of_members_in_recovery() {
        let mut a = rec(2, &[]);
        a.in_recovery = true;
        a.lsn = Lsn(300);
        let mut b = rec(3, &[]);
        b.in_recovery = true;
        b.lsn = Lsn(200);
        let mut gone = b.clone();
        gone.member = MemberId(4);
        gone.lsn = Lsn(100);
        gone.state = MemberState::Forgotten;
        let primary = rec(1, &[]);
        let all = [primary.clone(), a.clone(), b.clone(), gone];
        let none = std::collections::HashSet::new();
        // Both published at 1: within a retention of 100 at time 50.
        assert_eq!(
            recovery_horizon(&all, MemberId(1), &none, 50, 100),
            Some(Lsn(200))
        );
        assert_eq!(
            recovery_horizon(std::slice::from_ref(&primary), MemberId(1), &none, 50, 100),
            None
        );
        // Silent for longer than the retention and the liveness window:
        // only a slot still holds.
        let late = RECOVERY_LIVENESS + 500;
        assert_eq!(recovery_horizon(&all, MemberId(1), &none, late, 100), None);
        b.slot = Some("yz_b".into());
        let slots: std::collections::HashSet<String> = ["yz_b".to_string()].into();
        assert_eq!(
            recovery_horizon(&[primary, a, b], MemberId(1), &slots, late, 100),
            Some(Lsn(200))
        );
        // Older records (no field) are not in recovery.
        let old: Record = serde_json::from_str(
            r#"{"member":"0000000000000005","parent":null,"system_id":9,"content":-1,
                "state":"live","origin":"backup","published_at":1,"timeline":1,"lsn":5,"holds":[]}"#,
        )
        .unwrap();
        assert!(!old.in_recovery);
    }

    #[test]
    fn publish_replace_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let store = AnyStore::local(d.path()).unwrap();
        crate::runtime::block_on(async {
            assert_eq!(read_all(&store, 9, -1).await.unwrap(), vec![]);
            publish(&store, &rec(2, &["a", "b"])).await.unwrap();
            publish(&store, &rec(1, &[])).await.unwrap();
            publish(&store, &rec(2, &["a"])).await.unwrap();
            let all = read_all(&store, 9, -1).await.unwrap();
            assert_eq!(all, vec![rec(1, &[]), rec(2, &["a"])]);
            assert_eq!(
                read(&store, 9, -1, MemberId(2)).await.unwrap(),
                Some(rec(2, &["a"]))
            );
            assert_eq!(read(&store, 9, -1, MemberId(3)).await.unwrap(), None);
            // Another content id's lineage is not this one's.
            assert_eq!(read_all(&store, 9, 0).await.unwrap(), vec![]);
            store
                .put(
                    &names::lineage_record(9, -1, MemberId(4)),
                    Bytes::from_static(b"{"),
                )
                .await
                .unwrap();
            assert!(matches!(
                read_all(&store, 9, -1).await,
                Err(Error::Corrupt { .. })
            ));
        });
    }
}
