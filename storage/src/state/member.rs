//! This cluster's identity within its lineage.
//!
//! A primary, its standbys, its backups and every cluster restored or
//! cloned from them share one system identifier, and so one object prefix.
//! Each of them is a *member* of the lineage with an id of its own, written
//! into the name of every object it uploads (see [`crate::names`]): a
//! member collects only objects it wrote, and holds on to those of other
//! members as long as it references them (published in [`super::lineage`]).
//!
//! A copy must never keep the id of the cluster it was copied from, or two
//! clusters would each take the other's objects for their own. The
//! postmaster decides the identity at every start, before any other
//! process runs ([`decide`]): a new id when the data directory
//! * has no identity yet (the first start with yezzey: a *founder*);
//! * starts from a `backup_label` it has not seen before: the first start
//!   of a copy made by `pg_basebackup`, Barman, pgBackRest or any tool
//!   using `pg_backup_start()`, including a standby, a PITR restore and a
//!   `pg_rewind` target, which all start with one;
//! * is another directory than the one the identity was made in (another
//!   file system, or another directory on it): a file-level copy made by
//!   `cp`, `rsync` or `tar` of a stopped cluster.
//!
//! A copy that is none of these (a block-level snapshot of the whole file
//! system started elsewhere) cannot be told from its origin restarting:
//! delete its `pg_yezzey/member.json` before its first start.
//!
//! The copy's new id names the old one as its parent (informational).
use super::{durable, StateDir};
use crate::key::MemberId;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

/// Where a data directory is: the file system's id and the directory's
/// inode. Survives restarts, reboots and renames within the file system;
/// changes when the directory is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub fsid: u64,
    pub inode: u64,
}

impl Fingerprint {
    pub fn of(dir: &Path) -> io::Result<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(dir)?;
        // Some file systems (tmpfs) report no id: the device number then.
        let fsid = rustix::fs::statvfs(dir)?.f_fsid;
        Ok(Fingerprint {
            fsid: if fsid != 0 { fsid } else { md.dev() },
            inode: md.ino(),
        })
    }
}

/// Why a member got its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The first start with yezzey.
    Founder,
    /// The first start from a backup (a `backup_label`).
    Backup,
    /// The data directory was copied.
    Copy,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Founder => "founder",
            Origin::Backup => "backup",
            Origin::Copy => "copy",
        }
    }
}

/// `pg_yezzey/member.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub member: MemberId,
    pub parent: Option<MemberId>,
    pub origin: Origin,
    /// Unix seconds when this identity was made.
    pub since: i64,
    pub fingerprint: Fingerprint,
    /// Hash of the `backup_label` this identity was made for: a start that
    /// fails and is retried with the same label keeps the id.
    #[serde(default)]
    pub label: Option<String>,
}

/// Hash of a `backup_label`'s contents.
pub fn label_hash(label: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(label))
}

/// The identity for this start: the recorded one, or a new one (true)
/// that must be written before anything uses it.
pub fn decide(
    recorded: Option<&Member>,
    backup_label: Option<&[u8]>,
    here: Fingerprint,
    now: i64,
) -> (Member, bool) {
    let label = backup_label.map(label_hash);
    let origin = match recorded {
        None => Some(Origin::Founder),
        Some(m) if label.is_some() && m.label != label => Some(Origin::Backup),
        Some(m) if m.fingerprint != here => Some(Origin::Copy),
        Some(_) => None,
    };
    match (origin, recorded) {
        (None, Some(m)) => (m.clone(), false),
        (Some(origin), parent) => (
            Member {
                member: MemberId::random(),
                parent: parent.map(|p| p.member),
                origin,
                since: now,
                fingerprint: here,
                label,
            },
            true,
        ),
        (None, None) => unreachable!("no record means a founder"),
    }
}

impl StateDir {
    fn member_file(&self) -> std::path::PathBuf {
        self.root().join("member.json")
    }

    /// The recorded identity; `Err` if the file exists but cannot be read
    /// (never silently replaced: the id names every object written).
    pub fn read_member(&self) -> io::Result<Option<Member>> {
        match std::fs::read(self.member_file()) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write_member(&self, m: &Member) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(m).expect("serialising a member");
        durable::write(self.root(), "member.json", &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: Fingerprint = Fingerprint { fsid: 1, inode: 2 };

    #[test]
    fn copies_get_new_ids_restarts_keep_theirs() {
        let (founder, new) = decide(None, None, HERE, 10);
        assert!(new);
        assert_eq!((founder.origin, founder.parent), (Origin::Founder, None));
        // A restart, a crash restart: same directory, no label.
        assert_eq!(
            decide(Some(&founder), None, HERE, 11),
            (founder.clone(), false)
        );
        // The first start of a backup of it: a label.
        let (copy, new) = decide(
            Some(&founder),
            Some(b"START WAL LOCATION: 0/2000028"),
            HERE,
            12,
        );
        assert!(new);
        assert_ne!(copy.member, founder.member);
        assert_eq!(
            (copy.origin, copy.parent),
            (Origin::Backup, Some(founder.member))
        );
        // Its second start, after a first one that failed with the label still there.
        assert_eq!(
            decide(
                Some(&copy),
                Some(b"START WAL LOCATION: 0/2000028"),
                HERE,
                13
            ),
            (copy.clone(), false)
        );
        // A later backup of the copy restored in place of it: another label.
        let (again, new) = decide(
            Some(&copy),
            Some(b"START WAL LOCATION: 0/9000028"),
            HERE,
            14,
        );
        assert!(new && again.parent == Some(copy.member));
        // A file-level copy elsewhere.
        let there = Fingerprint { fsid: 1, inode: 3 };
        let (moved, new) = decide(Some(&founder), None, there, 15);
        assert!(new);
        assert_eq!(
            (moved.origin, moved.parent),
            (Origin::Copy, Some(founder.member))
        );
        assert_eq!(decide(Some(&moved), None, there, 16), (moved, false));
    }

    #[test]
    fn identity_file_round_trips_and_fingerprint_is_stable() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        assert_eq!(s.read_member().unwrap(), None);
        let here = Fingerprint::of(d.path()).unwrap();
        assert_eq!(Fingerprint::of(d.path()).unwrap(), here);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(Fingerprint::of(other.path()).unwrap(), here);
        let (m, _) = decide(None, None, here, 1);
        s.write_member(&m).unwrap();
        assert_eq!(s.read_member().unwrap(), Some(m));
        std::fs::write(d.path().join("member.json"), "{").unwrap();
        assert!(
            s.read_member().is_err(),
            "a damaged identity is an error, not a new one"
        );
    }
}
