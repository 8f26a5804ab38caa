//! Writing state files so that a crash leaves the old version or the new
//! one, never a torn one; and the one inter-process lock yezzey uses.
use rustix::fs::{flock, FlockOperation};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Writes a file atomically and durably: temp file, fsync, rename, fsync
/// of the directory. Holds at most two descriptors, for the call only.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file durably (fsyncs the directory); a missing file is fine.
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(name)) {
        Ok(()) => File::open(dir)?.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An exclusive `flock` on a file, released when dropped (or by the kernel
/// if the holder dies, so a crash never leaves it held).
pub struct FileLock(File);

impl FileLock {
    /// Waits for the lock.
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        Self::lock(path, true).map(|l| l.expect("a blocking flock returns the lock"))
    }

    /// Takes the lock if nobody holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        Self::lock(path, false)
    }

    fn lock(path: &Path, blocking: bool) -> io::Result<Option<FileLock>> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let op = if blocking {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        loop {
            match flock(&f, op) {
                Ok(()) => return Ok(Some(FileLock(f))),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor would release it too.
        let _ = flock(&self.0, FlockOperation::Unlock);
    }
}

/// Free bytes on the file system holding `path`, for unprivileged users.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail * st.f_frsize)
}

/// Reads and parses every `*.json` file of a directory; unreadable ones
/// come back as errors naming the file.
pub fn read_json_dir<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Vec<(std::path::PathBuf, Result<T, String>)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
        .map(|p| {
            let parsed = fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|e| format!("{}: {e}", p.display()));
            (p, parsed)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replace_remove_and_lock() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.json", b"1").unwrap();
        write(d.path(), "a.json", b"2").unwrap();
        assert_eq!(fs::read(d.path().join("a.json")).unwrap(), b"2");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        remove(d.path(), "a.json").unwrap();
        remove(d.path(), "a.json").unwrap();
        let lock = d.path().join("x.lock");
        let held = FileLock::acquire(&lock).unwrap();
        assert!(FileLock::try_acquire(&lock).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_acquire(&lock).unwrap().is_some());
    }
}
