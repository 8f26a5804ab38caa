//! Base backups a member saw start, registered in the store beside its
//! objects, and whether each still exists.
//!
//! ```text
//! <system id>/seg<content>/backups/m<member>/<start LSN, 16 hex digits>.json
//! ```
//!
//! **Why a start LSN is enough.** A backup that started at LSN `S` can be
//! restored and recovered to any point from its end on, so it may need any
//! object that was referenced at some position from `S` on: every object
//! still referenced, and every object retired at a position at or after `S`.
//! So a live backup holds, in garbage collection, the retired objects whose
//! retirement LSN is at least its start LSN, as a standby holds those past
//! its replay position ([`super::gc`]).
//!
//! **Registration cannot be forgotten.** The server registers a backup when
//! it starts (a host hook on `pg_backup_start()` and `BASE_BACKUP`, before
//! any file is copied; a backup that cannot be registered does not start),
//! whatever tool took it. A registration holds until something says the
//! backup is gone, and never because something could not be said:
//! * a backup Barman took (label `Barman backup <name> <id>`) lives while
//!   the server's catalogue named by `yezzey.barman_repository` (the
//!   repository URL and server name given to `barman-cloud-backup`) lists it
//!   (`base/<id>/backup.info`, status not `FAILED`). Once the catalogue has
//!   listed it (garbage collection records when it first saw that), its
//!   removal by `barman-cloud-backup-delete` lets its objects go. Before
//!   that, a backup not listed is kept for `yezzey.backup_retention`:
//!   Barman writes `backup.info` last, minutes after `pg_backup_stop()` for
//!   a large backup;
//! * any other backup (pg_basebackup, scripts) lives for
//!   `yezzey.backup_retention` after it started, or until
//!   `yezzey_backup_expire()`;
//! * a backup whose stop was never recorded (the server crashed or
//!   restarted while it ran, or the store could not be reached when it
//!   stopped) is judged by its catalogue if it has one, and otherwise kept
//!   for `yezzey.backup_retention`: it may have completed. One still
//!   running (by this creation of the server's shared memory) lives.
use crate::error::{Error, Result};
use crate::key::{Lsn, MemberId};
use crate::names;
use crate::store::{AnyStore, ObjectStore};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One registered backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub member: MemberId,
    pub system_id: u64,
    pub content: i32,
    pub label: String,
    pub start_lsn: Lsn,
    pub timeline: u32,
    /// Unix seconds.
    pub started_at: i64,
    /// The start time of the server that took it.
    pub boot: i64,
    #[serde(default)]
    pub stop_lsn: Option<Lsn>,
    #[serde(default)]
    pub stopped_at: Option<i64>,
    /// When garbage collection first saw Barman's catalogue list it (Unix
    /// seconds): from then on, its absence there means it was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogued_at: Option<i64>,
}

impl BackupRecord {
    pub fn name(&self) -> String {
        format!(
            "{}{:016X}.json",
            names::backups_prefix(self.system_id, self.content, self.member),
            self.start_lsn.0
        )
    }
}

/// Writes (or replaces) a registration.
pub async fn register(store: &AnyStore, rec: &BackupRecord) -> Result<()> {
    let body = serde_json::to_vec_pretty(rec).expect("serialising a backup record");
    store.put(&rec.name(), Bytes::from(body)).await
}

/// Removes a registration.
pub async fn remove(store: &AnyStore, rec: &BackupRecord) -> Result<()> {
    store.delete(&rec.name()).await
}

/// Every backup a member registered, oldest first. A record that cannot be
/// parsed is an error: deciding without it could delete what it needs.
pub async fn list(
    store: &AnyStore,
    system_id: u64,
    content: i32,
    member: MemberId,
) -> Result<Vec<BackupRecord>> {
    let mut out = Vec::new();
    for meta in store
        .list(&names::backups_prefix(system_id, content, member))
        .await?
    {
        let bytes = match store.get_suffix(&meta.name, 1 << 40).await {
            Ok((b, _)) => b,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        out.push(
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::corrupt(&meta.name, format!("not a backup record: {e}")))?,
        );
    }
    out.sort_by_key(|r: &BackupRecord| r.start_lsn);
    Ok(out)
}

/// The backup id in a label Barman gave a backup (`Barman backup <name>
/// <id>`; barman-cloud-backup's name is "cloud", whatever the server's).
pub fn barman_backup_id(label: &str) -> Option<&str> {
    let rest = label.strip_prefix("Barman backup ")?;
    let (name, id) = rest.split_once(' ')?;
    (!name.is_empty() && !id.is_empty() && !id.contains(' ')).then_some(id)
}

/// The status a Barman server's catalogue (a store rooted at
/// `<repository>/<server>`) gives a backup (`DONE`, `FAILED`, ...), or
/// `None` when it does not list it.
pub async fn barman_status(catalogue: &AnyStore, id: &str) -> Result<Option<String>> {
    let name = format!("base/{id}/backup.info");
    match catalogue.get_suffix(&name, 1 << 20).await {
        Ok((b, _)) => Ok(Some(
            String::from_utf8_lossy(&b)
                .lines()
                .find_map(|l| l.strip_prefix("status="))
                .unwrap_or("")
                .trim()
                .to_string(),
        )),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a registration is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Not stopped yet, by this start of the server.
    Running,
    /// Listed by Barman's catalogue with this status.
    Catalogued(String),
    /// Within the retention period, until this Unix time.
    Retained { until: i64 },
    /// Gone: deleted from its catalogue, past its retention, or abandoned.
    Expired(&'static str),
}

impl Liveness {
    pub fn holds(&self) -> bool {
        !matches!(self, Liveness::Expired(_))
    }
}

/// Judges a registration. `boot`: the current creation of the server's
/// shared memory, if the backup was taken here (a backup another member
/// took, a standby's, runs until its stop is recorded: only that server
/// could tell otherwise); `catalogued`: for a Barman backup with a
/// repository configured, what the repository says (`None`: not listed).
pub fn judge(
    rec: &BackupRecord,
    boot: Option<i64>,
    now: i64,
    retention: i64,
    catalogued: Option<Option<&str>>,
) -> Liveness {
    if rec.stop_lsn.is_none() && boot.is_none_or(|b| rec.boot == b) {
        return Liveness::Running;
    }
    let retained = || {
        if now < rec.started_at + retention {
            Liveness::Retained {
                until: rec.started_at + retention,
            }
        } else if rec.stop_lsn.is_none() {
            Liveness::Expired("its stop was never recorded, and it is past yezzey.backup_retention")
        } else {
            Liveness::Expired("past yezzey.backup_retention")
        }
    };
    match catalogued {
        Some(Some(status)) if status != "FAILED" => Liveness::Catalogued(status.to_string()),
        Some(Some(_)) => Liveness::Expired("failed, by Barman's catalogue"),
        Some(None) if rec.catalogued_at.is_some() => {
            Liveness::Expired("deleted from Barman's catalogue")
        }
        // Not listed yet (Barman writes backup.info last), or no catalogue.
        Some(None) | None => retained(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(label: &str, start: u64, stop: Option<u64>) -> BackupRecord {
        BackupRecord {
            member: MemberId(1),
            system_id: 7,
            content: -1,
            label: label.into(),
            start_lsn: Lsn(start),
            timeline: 1,
            started_at: 100,
            boot: 5,
            stop_lsn: stop.map(Lsn),
            stopped_at: stop.map(|_| 110),
            catalogued_at: None,
        }
    }

    #[test]
    fn labels_catalogues_and_retention() {
        assert_eq!(
            barman_backup_id("Barman backup cloud 20261202T101010"),
            Some("20261202T101010")
        );
        assert_eq!(barman_backup_id("pg_basebackup base backup"), None);
        let running = rec("x", 10, None);
        assert_eq!(judge(&running, Some(5), 1000, 0, None), Liveness::Running);
        // Another server's (a standby's) runs until its stop is recorded.
        assert_eq!(judge(&running, None, 1_000_000, 0, None), Liveness::Running);
        // Never recorded as stopped, from before a restart: it may have
        // completed, so retention (or its catalogue) decides.
        assert_eq!(
            judge(&running, Some(6), 150, 100, None),
            Liveness::Retained { until: 200 }
        );
        assert!(!judge(&running, Some(6), 250, 100, None).holds());
        let unstopped_barman = rec("Barman backup cloud 1", 10, None);
        assert_eq!(
            judge(&unstopped_barman, Some(6), 10_000, 100, Some(Some("DONE"))),
            Liveness::Catalogued("DONE".into()),
            "Barman lists it DONE: kept whatever the registration says"
        );
        let mut done = rec("Barman backup yz 1", 10, Some(20));
        assert_eq!(
            judge(&done, Some(5), 1000, 0, Some(Some("DONE"))),
            Liveness::Catalogued("DONE".into())
        );
        assert!(!judge(&done, Some(5), 1000, 0, Some(Some("FAILED"))).holds());
        // Not listed: not yet (Barman writes backup.info last) unless it
        // was listed before.
        assert_eq!(
            judge(&done, Some(5), 50, 100, Some(None)),
            Liveness::Retained { until: 200 }
        );
        done.catalogued_at = Some(30);
        assert!(
            !judge(&done, Some(5), 50, 100, Some(None)).holds(),
            "deleted"
        );
        let plain = rec("pg_basebackup base backup", 10, Some(20));
        assert_eq!(
            judge(&plain, Some(5), 150, 100, None),
            Liveness::Retained { until: 200 }
        );
        assert!(!judge(&plain, Some(5), 250, 100, None).holds());
    }

    #[test]
    fn register_list_remove_and_read_barman_catalogue() {
        let d = tempfile::tempdir().unwrap();
        let store = AnyStore::local(d.path()).unwrap();
        crate::runtime::block_on(async {
            let a = rec("a", 0x20, Some(0x30));
            let b = rec("b", 0x10, None);
            register(&store, &a).await.unwrap();
            register(&store, &b).await.unwrap();
            assert_eq!(
                list(&store, 7, -1, MemberId(1)).await.unwrap(),
                vec![b.clone(), a.clone()]
            );
            assert!(list(&store, 7, -1, MemberId(2)).await.unwrap().is_empty());
            remove(&store, &b).await.unwrap();
            assert_eq!(list(&store, 7, -1, MemberId(1)).await.unwrap(), vec![a]);
            store
                .put(
                    "base/20261202T101010/backup.info",
                    Bytes::from_static(b"backup_label=None\nstatus=DONE\nsystemid=7\n"),
                )
                .await
                .unwrap();
            assert_eq!(
                barman_status(&store, "20261202T101010")
                    .await
                    .unwrap()
                    .as_deref(),
                Some("DONE")
            );
            assert_eq!(barman_status(&store, "nope").await.unwrap(), None);
        });
    }
}
