//! A directory as an object store. Objects are published atomically (written
//! to a temporary file, fsynced, renamed, directory fsynced), so a crash never
//! leaves a partial object under its final name.
use super::{Multipart, ObjectMeta, ObjectStore, Part};
use crate::error::{Error, Result};
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct LocalStore {
    root: PathBuf,
}

const TMP_DIR: &str = ".yezzey-tmp";

impl LocalStore {
    pub fn new(root: &Path) -> Result<LocalStore> {
        fs::create_dir_all(root.join(TMP_DIR)).map_err(|e| Error::io(root, e))?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    pub fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty()
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c == TMP_DIR)
        {
            return Err(Error::Config(format!("invalid object name {name:?}")));
        }
        Ok(self.root.join(name))
    }

    fn not_found(name: &str, path: &Path, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound(name.to_string())
        } else {
            Error::io(path, e)
        }
    }

    fn tmp_path(&self, tag: &str) -> PathBuf {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("OS random source");
        self.root
            .join(TMP_DIR)
            .join(format!("{tag}-{}", hex::encode(r)))
    }

    /// Moves a fully written, fsynced temporary file to its final name.
    fn publish(&self, tmp: &Path, name: &str) -> Result<()> {
        let dst = self.path(name)?;
        let dir = dst.parent().unwrap();
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        fs::rename(tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))
    }

    fn write_tmp(&self, tag: &str, chunks: &[&[u8]]) -> Result<PathBuf> {
        let tmp = self.tmp_path(tag);
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for c in chunks {
            f.write_all(c).map_err(|e| Error::io(&tmp, e))?;
        }
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        Ok(tmp)
    }

    fn read_at(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(name)?;
        let f = File::open(&path).map_err(|e| Self::not_found(name, &path, e))?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        f.read_exact_at(&mut buf, range.start).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Store(format!("range {range:?} is beyond the end of {name}"))
            } else {
                Error::io(&path, e)
            }
        })?;
        Ok(buf.into())
    }

    fn walk(&self, dir: &Path, out: &mut Vec<ObjectMeta>) -> Result<()> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(dir, e))?;
            let p = ent.path();
            let ft = ent.file_type().map_err(|e| Error::io(&p, e))?;
            if ft.is_dir() {
                if ent.file_name() != TMP_DIR {
                    self.walk(&p, out)?;
                }
            } else if ft.is_file() {
                let size = ent.metadata().map_err(|e| Error::io(&p, e))?.len();
                let name = p
                    .strip_prefix(&self.root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push(ObjectMeta { name, size });
            }
        }
        Ok(())
    }

    fn part_dir(&self, mp: &Multipart) -> PathBuf {
        self.root.join(TMP_DIR).join(format!("mp-{}", mp.upload_id))
    }
}

impl ObjectStore for LocalStore {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        self.path(name)?;
        let tmp = self.write_tmp("put", &[&body])?;
        self.publish(&tmp, name)
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        self.read_at(name, range)
    }

    async fn get_suffix(&self, name: &str, n: u64) -> Result<(Bytes, u64)> {
        let path = self.path(name)?;
        let len = fs::metadata(&path)
            .map_err(|e| Self::not_found(name, &path, e))?
            .len();
        let start = len.saturating_sub(n);
        Ok((self.read_at(name, start..len)?, len))
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        let path = self.path(name)?;
        let md = fs::metadata(&path).map_err(|e| Self::not_found(name, &path, e))?;
        Ok(ObjectMeta {
            name: name.to_string(),
            size: md.len(),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // Walk only the deepest directory the prefix names, then filter.
        let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let mut out = Vec::new();
        self.walk(&self.root.join(dir_part), &mut out)?;
        out.retain(|m| m.name.starts_with(prefix));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    async fn create_multipart(&self, name: &str) -> Result<Multipart> {
        self.path(name)?;
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("OS random source");
        let mp = Multipart {
            name: name.to_string(),
            upload_id: hex::encode(r),
        };
        let d = self.part_dir(&mp);
        fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        Ok(mp)
    }

    async fn upload_part(&self, mp: &Multipart, number: i32, body: Bytes) -> Result<Part> {
        let p = self.part_dir(mp).join(format!("{number:05}"));
        fs::write(&p, &body).map_err(|e| Error::io(&p, e))?;
        Ok(Part {
            number,
            etag: format!("{number}"),
        })
    }

    async fn complete_multipart(&self, mp: &Multipart, mut parts: Vec<Part>) -> Result<()> {
        parts.sort_by_key(|p| p.number);
        let tmp = self.tmp_path("mp");
        let mut out = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        for part in &parts {
            let p = self.part_dir(mp).join(format!("{:05}", part.number));
            let mut f = File::open(&p).map_err(|e| Error::io(&p, e))?;
            io::copy(&mut f, &mut out).map_err(|e| Error::io(&tmp, e))?;
        }
        out.sync_all().map_err(|e| Error::io(&tmp, e))?;
        self.publish(&tmp, &mp.name)?;
        self.abort_multipart(mp).await
    }

    async fn abort_multipart(&self, mp: &Multipart) -> Result<()> {
        let d = self.part_dir(mp);
        match fs::remove_dir_all(&d) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(&d, e)),
            _ => Ok(()),
        }
    }
}
