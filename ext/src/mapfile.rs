//! The durable side of the offload map: one JSON file per offloaded
//! relation fork under `$PGDATA/pg_yezzey/map/` (readable by operators and
//! copied by physical backups), the upload intents under
//! `$PGDATA/pg_yezzey/intents/`, and the local files' hole punching.
//!
//! The shared-memory map (C shim) is what the I/O path reads; these files
//! rebuild it at startup, and WAL redo rewrites them, so they agree with WAL.
use crate::settings::data_dir;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use yezzey_smgr_shim::{map, SegInfo};
use yezzey_storage::names::{ObjectName, SegmentId};

pub const BLCKSZ: u64 = 8192;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentMeta {
    pub segno: u32,
    /// Leading blocks of the segment served from the object.
    pub blocks: u32,
    pub object_id: String,
    pub raw_len: u64,
    pub stored_len: u64,
    /// A block of the remote range was written locally since the offload
    /// (reads look at the local file first). Maps written before this field
    /// existed read as true, the safe answer.
    #[serde(default = "written_default")]
    pub written: bool,
}

fn written_default() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForkMap {
    pub system_id: u64,
    pub content: i32,
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: i32,
    /// Unix seconds and WAL position of the offload.
    pub offloaded_at: i64,
    pub lsn: u64,
    /// False until the local files' blocks have been punched out.
    pub evicted: bool,
    pub segments: Vec<SegmentMeta>,
}

fn object_id(hex_id: &str) -> [u8; 16] {
    hex::decode(hex_id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .unwrap_or([0; 16])
}

impl ForkMap {
    pub fn object_name(&self, s: &SegmentMeta) -> ObjectName {
        ObjectName {
            segment: SegmentId {
                system_id: self.system_id,
                content: self.content,
                spc: self.spc,
                db: self.db,
                relnumber: self.rel,
                fork: self.fork as u8,
                segfile: s.segno,
            },
            object_id: object_id(&s.object_id),
        }
    }

    pub fn seg_info(&self, s: &SegmentMeta) -> SegInfo {
        SegInfo {
            spc: self.spc,
            db: self.db,
            rel: self.rel,
            fork: self.fork,
            segno: s.segno,
            remote_blocks: s.blocks,
            object_id: object_id(&s.object_id),
            written: s.written,
        }
    }

    fn file_name(spc: u32, db: u32, rel: u32, fork: i32) -> String {
        format!("{spc}_{db}_{rel}_{fork}.json")
    }

    pub fn stored_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.stored_len).sum()
    }
}

/// The name of a segment's object on this server (its system id and
/// content id), as the read path and new uploads use it.
pub fn local_object_name(
    spc: u32,
    db: u32,
    rel: u32,
    fork: i32,
    segno: u32,
    object_id: [u8; 16],
) -> ObjectName {
    ObjectName {
        segment: SegmentId {
            // SAFETY: reads pg_control's copy, set at startup.
            system_id: unsafe { pgrx::pg_sys::GetSystemIdentifier() },
            content: crate::settings::content_id(),
            spc,
            db,
            relnumber: rel,
            fork: fork as u8,
            segfile: segno,
        },
        object_id,
    }
}

pub fn map_dir() -> PathBuf {
    data_dir().join("pg_yezzey/map")
}

fn intent_dir() -> PathBuf {
    data_dir().join("pg_yezzey/intents")
}

/// Writes a file atomically and durably: temp file, fsync, rename, fsync dir.
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn remove_durably(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(name)) {
        Ok(()) => File::open(dir)?.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Serialises read-modify-write of map files between processes (a
/// checkpointer recording a first local write while a backend truncates).
/// An flock: released by the kernel if the holder dies.
fn map_lock() -> io::Result<File> {
    // Beside the map directory, which holds map files only.
    let dir = data_dir().join("pg_yezzey");
    fs::create_dir_all(&dir)?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("map.lock"))?;
    // SAFETY: flock on an fd we own.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(f)
}

/// Makes a map say what the shared map (which the I/O path updates first)
/// says: each segment's remote length and local-write flag; segments it no
/// longer has (truncated or dropped) are dropped and their objects recorded
/// as retired. Call holding `map_lock`.
fn refresh_from_shared(m: &mut ForkMap) -> io::Result<()> {
    let (spc, db, rel, fork) = (m.spc, m.db, m.rel, m.fork);
    let mut gone = Vec::new();
    m.segments
        .retain_mut(|s| match map::get(spc, db, rel, fork, s.segno) {
            Some(seg) => {
                s.blocks = seg.remote_blocks;
                s.written = seg.written;
                true
            }
            None => {
                gone.push(s.clone());
                false
            }
        });
    crate::retired::record(m, &gone)
}

/// Writes a map as the shared map has it.
fn write_from_shared(m: &mut ForkMap) -> io::Result<()> {
    let _lock = map_lock()?;
    refresh_from_shared(m)?;
    write(m)
}

pub fn write(m: &ForkMap) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(m).expect("serialising a map");
    write_durably(
        &map_dir(),
        &ForkMap::file_name(m.spc, m.db, m.rel, m.fork),
        &json,
    )
}

pub fn remove(spc: u32, db: u32, rel: u32, fork: i32) -> io::Result<()> {
    remove_durably(&map_dir(), &ForkMap::file_name(spc, db, rel, fork))
}

pub fn read(spc: u32, db: u32, rel: u32, fork: i32) -> Option<ForkMap> {
    let bytes = fs::read(map_dir().join(ForkMap::file_name(spc, db, rel, fork))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every map file; unreadable ones are returned as errors for the caller to report.
pub fn read_all() -> Vec<Result<ForkMap, String>> {
    let Ok(rd) = fs::read_dir(map_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        out.push(
            fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|e| format!("{}: {e}", p.display())),
        );
    }
    out
}

/// The readable maps of one database (any tablespace).
pub fn forks_of_database(db: u32) -> Vec<ForkMap> {
    read_all()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|m| m.db == db)
        .collect()
}

/// Path of a segment file relative to the data directory.
pub fn segment_path(spc: u32, db: u32, rel: u32, fork: i32, segno: u32) -> PathBuf {
    // SAFETY: GetRelationPath pallocs a C string from plain values.
    let base = unsafe {
        let p = pgrx::pg_sys::GetRelationPath(
            db.into(),
            spc.into(),
            rel.into(),
            pgrx::pg_sys::INVALID_PROC_NUMBER,
            fork,
        );
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        pgrx::pg_sys::pfree(p.cast());
        s
    };
    let rel_path = if segno == 0 {
        base
    } else {
        format!("{base}.{segno}")
    };
    data_dir().join(rel_path)
}

/// Frees the local copy of a segment's first `blocks` blocks, keeping the
/// file's size (md still sees the whole segment; reads of the holes are
/// served from the object).
pub fn punch(path: &Path, blocks: u32) -> io::Result<()> {
    if blocks == 0 {
        return Ok(());
    }
    let f = OpenOptions::new().write(true).open(path)?;
    // SAFETY: fallocate on an fd we own; KEEP_SIZE leaves the length alone.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            (blocks as u64 * BLCKSZ) as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    f.sync_all()
}

/// Checks that the file system under `dir` punches holes (and frees the
/// space): without that, offloading would not free anything.
pub fn check_hole_punching(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".yezzey_probe_{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&probe)?;
        f.write_all(&vec![0x5a; 64 * 1024])?;
        f.sync_all()?;
        punch(&probe, 8)?;
        let md = fs::metadata(&probe)?;
        use std::os::unix::fs::MetadataExt;
        if md.len() != 64 * 1024 || md.blocks() * 512 > 16 * 1024 + 4096 {
            return Err(io::Error::other("punching a hole did not free space"));
        }
        Ok(())
    })();
    let _ = fs::remove_file(&probe);
    result
}

/// Applies an offload to this server: shared map, then map file, then the
/// local holes, then the file again (evicted). Idempotent, so WAL redo and
/// startup can run it again after a crash at any point.
pub fn apply_offload(m: &ForkMap) -> io::Result<()> {
    for s in &m.segments {
        if !map::put(&m.seg_info(s)) {
            return Err(io::Error::other(
                "the shared map is full: raise yezzey.max_segments and restart",
            ));
        }
    }
    let mut m = m.clone();
    m.evicted = false;
    write_from_shared(&mut m)?;
    crate::fault::point("after_map");
    for (i, s) in m.segments.iter().enumerate() {
        punch(&segment_path(m.spc, m.db, m.rel, m.fork, s.segno), s.blocks)?;
        if i == 0 {
            crate::fault::point("mid_punch");
        }
    }
    m.evicted = true;
    // A write may have landed since the map was published (a hint bit set
    // by a reader): its flag must survive in the file.
    write_from_shared(&mut m)
}

/// Undoes an offload's bookkeeping once the data is local again (or gone);
/// its objects are retired.
pub fn apply_forget(spc: u32, db: u32, rel: u32, fork: i32) -> io::Result<()> {
    map::remove(spc, db, rel, fork);
    let _lock = map_lock()?;
    if let Some(m) = read(spc, db, rel, fork) {
        crate::retired::record(&m, &m.segments)?;
    }
    remove(spc, db, rel, fork)
}

/// Called by the C shim from the postmaster when shared memory is created:
/// loads every map file, and finishes evictions a crash interrupted (no
/// write can have reached those relations in between: offload holds its
/// lock until the eviction is done).
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_map_load() {
    for m in read_all() {
        match m {
            Ok(m) if m.evicted => {
                for s in &m.segments {
                    map::put(&m.seg_info(s));
                    if !s.written {
                        repunch(&segment_path(m.spc, m.db, m.rel, m.fork, s.segno), s.blocks);
                    }
                }
            }
            Ok(m) => {
                if let Err(e) = apply_offload(&m) {
                    pgrx::warning!("yezzey: could not finish evicting relation {}: {e}", m.rel);
                }
            }
            Err(e) => pgrx::warning!("yezzey: ignoring unreadable map file {e}"),
        }
    }
}

/// Frees the remote range of a segment that holds data again although no
/// block of it was written since the offload: a restored base backup or a
/// new standby, whose copy read the holes as zeros. Safe because reads of an
/// unwritten segment's remote range never look at the local file, and a
/// write after the backup started comes back from WAL (redo writes it
/// through the storage manager, which marks the segment written first).
fn repunch(path: &Path, blocks: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::metadata(path) else {
        return;
    };
    let tail = md.size().saturating_sub(blocks as u64 * BLCKSZ);
    // Allocation beyond the local tail (plus extent metadata) means data.
    if md.blocks() * 512 <= tail + 64 * 1024 {
        return;
    }
    if let Err(e) = punch(path, blocks) {
        pgrx::warning!("yezzey: could not free {}: {e}", path.display());
    }
}

/// Called by the C shim after truncate, unlink or a reused relfilenumber
/// changed the shared map: makes the fork's file say the same.
#[no_mangle]
#[pgrx::pg_guard]
pub extern "C-unwind" fn yezzey_map_persist(spc: u32, db: u32, rel: u32, fork: i32) {
    let forks: Vec<i32> = if fork < 0 {
        (0..=3).collect()
    } else {
        vec![fork]
    };
    let res = (|| -> io::Result<()> {
        let _lock = map_lock()?;
        for f in forks {
            let Some(mut m) = read(spc, db, rel, f) else {
                continue;
            };
            refresh_from_shared(&mut m)?;
            if m.segments.is_empty() {
                remove(spc, db, rel, f)?;
            } else {
                write(&m)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        pgrx::error!("yezzey: could not update map file of relation {rel}: {e}");
    }
}

/// An upload in progress, recorded before the first byte is sent, so that a
/// crash never leaves an object that GC cannot attribute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intent {
    pub name: String,
    pub pid: i32,
    /// The postmaster start time of the server that made it.
    pub boot: i64,
}

/// Seconds since the Unix epoch (offload and retirement times).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn postmaster_start() -> i64 {
    // SAFETY: a plain global set at postmaster start.
    unsafe { pgrx::pg_sys::PgStartTime }
}

pub fn add_intent(name: &ObjectName) -> io::Result<()> {
    let i = Intent {
        name: name.relative(),
        pid: std::process::id() as i32,
        boot: postmaster_start(),
    };
    write_durably(
        &intent_dir(),
        &format!("{}.json", hex::encode(name.object_id)),
        &serde_json::to_vec(&i).unwrap(),
    )
}

pub fn drop_intent(object_id: &[u8; 16]) {
    let _ = remove_durably(&intent_dir(), &format!("{}.json", hex::encode(object_id)));
}

/// All intents, with whether their upload may still be running.
pub fn intents() -> Vec<(PathBuf, Intent, bool)> {
    let Ok(rd) = fs::read_dir(intent_dir()) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let p = e.path();
            let i: Intent = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
            // SAFETY: signal 0 only checks that the process exists.
            let alive = i.boot == postmaster_start() && unsafe { libc::kill(i.pid, 0) } == 0;
            Some((p, i, alive))
        })
        .collect()
}
