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
//! from: by `yezzey.gc_retention` (and standby slots for standbys).
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
        }
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
