//! yezzey-tool: operate on yezzey objects directly, without PostgreSQL.
//!
//! ```text
//! yezzey-tool keygen
//! yezzey-tool [OPTIONS] put FILE NAME      upload FILE as object NAME
//! yezzey-tool [OPTIONS] get NAME FILE      download and decode NAME into FILE
//! yezzey-tool [OPTIONS] verify NAME        decode every frame, check every checksum
//! yezzey-tool [OPTIONS] header NAME        print the trailer as JSON
//! yezzey-tool [OPTIONS] read NAME OFFSET LEN   write raw bytes to stdout
//! yezzey-tool [OPTIONS] ls [PREFIX]        list objects
//! yezzey-tool [OPTIONS] rm NAME            delete an object
//! yezzey-tool [OPTIONS] get-raw NAME FILE  copy an object's stored bytes (no decoding)
//! yezzey-tool [OPTIONS] put-raw FILE NAME  store a file's bytes as they are
//! yezzey-tool cache-entries DIR            list a frame cache's entries: file, data offset
//! yezzey-tool [OPTIONS] verify-maps DATADIR
//!                     check every object a data directory's maps name: each
//!                     one present, authentic and whole; names each problem
//!                     with its relation file; exit 1 if there is one
//! yezzey-tool [OPTIONS] repair-maps DATADIR
//!                     rebuild a stopped server's damaged or missing maps from
//!                     the objects in the store (what yezzey_repair_maps()
//!                     does in a running one); --content N for Greenplum
//! ```
//!
//! Options (or environment): `--url` (YEZZEY_STORAGE_URL: s3://bucket/prefix
//! or a directory), `--endpoint` (YEZZEY_S3_ENDPOINT), `--region`
//! (YEZZEY_S3_REGION), `--key-file` (YEZZEY_KEY_FILE), `--frame-size`,
//! `--level`, `--cipher aws-lc|rustcrypto`, `--timeout SECS`. S3 credentials
//! come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS profile.
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use yezzey_storage::cache::HitCheck;
use yezzey_storage::crypto::CipherImpl;
use yezzey_storage::format::new_object_id;
use yezzey_storage::format::{FormatOptions, ObjectLayout};
use yezzey_storage::keys::{Key, KeyRing};
use yezzey_storage::reader::{ReadaheadConfig, RemoteReader};
use yezzey_storage::runtime::block_on;
use yezzey_storage::store::{AnyStore, Location, ObjectStore, S3Settings};
use yezzey_storage::upload::{upload, UploadOptions};
use yezzey_storage::{Error, Result};

struct Opts {
    flags: HashMap<String, String>,
    args: Vec<String>,
}

fn parse_args() -> std::result::Result<Opts, String> {
    let mut flags = HashMap::new();
    let mut args = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if let Some(f) = a.strip_prefix("--") {
            let v = it.next().ok_or(format!("--{f} needs a value"))?;
            flags.insert(f.to_string(), v);
        } else {
            args.push(a);
        }
    }
    Ok(Opts { flags, args })
}

impl Opts {
    fn get(&self, flag: &str, env: &str) -> Option<String> {
        self.flags
            .get(flag)
            .cloned()
            .or_else(|| std::env::var(env).ok())
            .filter(|s| !s.is_empty())
    }

    fn num<T: std::str::FromStr>(&self, flag: &str, default: T) -> Result<T> {
        match self.flags.get(flag) {
            Some(v) => v
                .parse()
                .map_err(|_| Error::Config(format!("--{flag} {v:?} is not a number"))),
            None => Ok(default),
        }
    }

    fn keys(&self) -> Result<KeyRing> {
        match self.get("key-file", "YEZZEY_KEY_FILE") {
            Some(p) => KeyRing::from_file(&PathBuf::from(p)),
            None => Ok(KeyRing::none()),
        }
    }

    fn cipher(&self) -> Result<CipherImpl> {
        self.flags
            .get("cipher")
            .map(|c| c.parse().map_err(Error::Config))
            .unwrap_or(Ok(CipherImpl::default()))
    }

    fn store(&self) -> Result<AnyStore> {
        let url = self.get("url", "YEZZEY_STORAGE_URL").ok_or_else(|| {
            Error::Config("no storage URL: pass --url or set YEZZEY_STORAGE_URL".into())
        })?;
        let timeout = Duration::from_secs(self.num("timeout", 30u64)?);
        let s3 = S3Settings {
            endpoint: self.get("endpoint", "YEZZEY_S3_ENDPOINT"),
            region: self
                .get("region", "YEZZEY_S3_REGION")
                .unwrap_or_else(|| "us-east-1".into()),
            request_timeout: timeout,
            connect_timeout: timeout.min(Duration::from_secs(5)),
            ..Default::default()
        };
        AnyStore::open(&Location::parse(&url)?, &s3)
    }

    fn arg(&self, i: usize, what: &str) -> Result<&str> {
        self.args
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| Error::Config(format!("missing {what}")))
    }
}

fn layout(reader: &RemoteReader, name: &str) -> Result<Arc<ObjectLayout>> {
    block_on(reader.layout(name))
}

/// Decodes a whole object into `out`, checking every frame and the
/// whole-file checksum.
fn decode_whole(r: &RemoteReader, name: &str, mut out: impl Write) -> Result<Arc<ObjectLayout>> {
    let l = layout(r, name)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let fs = l.trailer.frame_size as u64;
    let mut buf = vec![0u8; fs as usize];
    let mut off = 0;
    while off < l.trailer.raw_len {
        let n = fs.min(l.trailer.raw_len - off) as usize;
        block_on(r.read(name, off, &mut buf[..n]))?;
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("output", e))?;
        off += n as u64;
    }
    out.flush().map_err(|e| Error::io("output", e))?;
    if hasher.digest128().to_le_bytes() != l.trailer.raw_checksum {
        return Err(Error::corrupt(name, "whole-file checksum mismatch"));
    }
    Ok(l)
}

/// A data directory's maps, without the server: checking the objects they
/// name, and rebuilding the broken ones.
mod maps {
    use super::decode_whole;
    use std::collections::{BTreeSet, HashSet};
    use std::path::{Path, PathBuf};
    use yezzey_storage::key::RelFork;
    use yezzey_storage::reader::RemoteReader;
    use yezzey_storage::runtime::block_on;
    use yezzey_storage::state::{lineage, repair, unix_now, StateDir};
    use yezzey_storage::{Error, Result};

    /// The system identifier: pg_control's first field.
    fn system_id(dir: &Path) -> Result<u64> {
        let p = dir.join("global/pg_control");
        let b = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        Ok(u64::from_le_bytes(
            b.get(..8)
                .ok_or_else(|| Error::Config(format!("{} is too short", p.display())))?
                .try_into()
                .unwrap(),
        ))
    }

    /// Where a fork's segment file is (as PostgreSQL's relpath spells it).
    pub fn segment_path(dir: &Path, key: RelFork, segno: u32) -> PathBuf {
        let base = match key.spc {
            1663 => dir.join(format!("base/{}", key.db)),
            1664 => dir.join("global"),
            spc => {
                let t = dir.join(format!("pg_tblspc/{spc}"));
                let version = std::fs::read_dir(&t)
                    .ok()
                    .and_then(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .find(|n| n.starts_with("PG_"))
                    })
                    .unwrap_or_default();
                t.join(version).join(key.db.to_string())
            }
        };
        let fork = match key.fork.0 {
            1 => "_fsm",
            2 => "_vm",
            3 => "_init",
            _ => "",
        };
        let seg = if segno == 0 {
            String::new()
        } else {
            format!(".{segno}")
        };
        base.join(format!("{}{fork}{seg}", key.rel))
    }

    fn rel_path(dir: &Path, key: RelFork) -> String {
        let p = segment_path(dir, key, 0);
        p.strip_prefix(dir).unwrap_or(&p).display().to_string()
    }

    pub fn verify(r: &RemoteReader, dir: &Path) -> Result<()> {
        let state = StateDir::new(dir.join("pg_yezzey"));
        let (mut ok, mut bad) = (0, 0);
        for (key, m) in state.read_maps_checked() {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    println!("MAP\t{}\tthe map is {e}", rel_path(dir, key));
                    bad += 1;
                    continue;
                }
            };
            for (s, name) in m
                .segments
                .iter()
                .flat_map(|s| m.segment_names(s).map(move |n| (s, n.relative())))
            {
                match decode_whole(r, &name, std::io::sink()) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        let what = if matches!(e, Error::NotFound(_)) {
                            "MISSING"
                        } else {
                            "DAMAGED"
                        };
                        println!(
                            "{what}\t{} segment {}\t{name}: {e}",
                            rel_path(dir, key),
                            s.segno
                        );
                        bad += 1;
                    }
                }
            }
        }
        eprintln!("{ok} objects verified, {bad} problems");
        if bad > 0 {
            return Err(Error::corrupt(
                &dir.display().to_string(),
                format!("{bad} problems"),
            ));
        }
        Ok(())
    }

    pub fn repair(r: &RemoteReader, dir: &Path, content: i32) -> Result<()> {
        if let Ok(pid) = std::fs::read_to_string(dir.join("postmaster.pid")) {
            let pid: i32 = pid.lines().next().unwrap_or("").trim().parse().unwrap_or(0);
            if pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(Error::Config(format!(
                    "the server of {} is running (pid {pid}): use SELECT * FROM yezzey_repair_maps() in it",
                    dir.display()
                )));
            }
        }
        let sys = system_id(dir)?;
        let state = StateDir::new(dir.join("pg_yezzey"));
        let me = state
            .read_member()
            .map_err(|e| Error::io("pg_yezzey/member.json", e))?
            .ok_or_else(|| Error::Config("pg_yezzey/member.json is missing".into()))?;
        let mut preferred = vec![me.member];
        preferred.extend(me.parent);
        let mut writers: BTreeSet<_> = block_on(lineage::read_all(r.store(), sys, content))?
            .into_iter()
            .map(|rec| rec.member)
            .collect();
        writers.extend(preferred.iter().copied());
        let retired: HashSet<String> = state.retired().into_iter().map(|(_, x)| x.name).collect();
        let mut failed = 0;
        for (key, m) in state.read_maps_checked() {
            let Err(why) = m else { continue };
            let (found, skipped) = block_on(repair::candidates(
                r,
                sys,
                content,
                writers.iter().copied(),
                key,
            ))?;
            for s in skipped {
                eprintln!("not using {s}");
            }
            let local = |segno| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(segment_path(dir, key, segno)).map_or(0, |md| md.blocks() * 512)
            };
            match repair::rebuild(key, &found, &retired, &preferred, local, unix_now()) {
                Ok(m) => {
                    state
                        .write_map(&m)
                        .map_err(|e| Error::io("pg_yezzey/map", e))?;
                    println!(
                        "REPAIRED\t{}\twas {why}; {} segments",
                        rel_path(dir, key),
                        m.segments.len()
                    );
                }
                Err(e) => {
                    println!("FAILED\t{}\twas {why}; {e}", rel_path(dir, key));
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            return Err(Error::Config(format!("{failed} maps could not be rebuilt")));
        }
        Ok(())
    }
}

fn run(o: &Opts) -> Result<()> {
    let cmd = o.arg(
        0,
        "command (keygen, put, get, verify, header, read, ls, rm)",
    )?;
    if cmd == "keygen" {
        println!("{}", Key::generate().to_hex());
        return Ok(());
    }
    if cmd == "cache-stress" {
        return cache_stress(o);
    }
    if cmd == "cache-entries" {
        let dir = PathBuf::from(o.arg(1, "DIR")?);
        let cache = yezzey_storage::cache::FrameCache::open(&dir, u64::MAX)?;
        for (path, data_at) in cache.entry_files()? {
            println!("{}\t{data_at}", path.display());
        }
        return Ok(());
    }
    let store = Arc::new(o.store()?);
    let keys = o.keys()?;
    let cipher = o.cipher()?;
    let reader = || -> Result<RemoteReader> {
        Ok(RemoteReader::new(
            store.clone(),
            keys.clone(),
            cipher,
            None,
            ReadaheadConfig::default(),
        ))
    };
    match cmd {
        "put" => {
            let (file, name) = (o.arg(1, "FILE")?, o.arg(2, "NAME")?);
            let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
            let opts = UploadOptions {
                format: FormatOptions {
                    frame_size: o.num("frame-size", yezzey_storage::format::DEFAULT_FRAME_SIZE)?,
                    zstd_level: o.num("level", 1)?,
                    cipher,
                },
                ..Default::default()
            };
            let t0 = Instant::now();
            let up = block_on(upload(
                &store,
                name,
                new_object_id(),
                &keys,
                &opts,
                f,
                |_| {},
            ))?;
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "uploaded {name}: {} raw bytes -> {} stored ({:.1}%), {} frames, {:.0} MB/s",
                up.trailer.raw_len,
                up.stored_len,
                100.0 * up.stored_len as f64 / up.trailer.raw_len.max(1) as f64,
                up.trailer.frame_count,
                up.trailer.raw_len as f64 / secs / 1e6
            );
            println!("{}", up.trailer.object_id_hex());
        }
        "get" | "verify" => {
            let name = o.arg(1, "NAME")?;
            let r = reader()?;
            let out: Box<dyn Write> = if cmd == "get" {
                let path = o.arg(2, "FILE")?;
                Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).map_err(|e| Error::io(path, e))?,
                ))
            } else {
                Box::new(std::io::sink())
            };
            let l = decode_whole(&r, name, out)?;
            eprintln!(
                "{name}: OK ({} frames, {} raw bytes)",
                l.trailer.frame_count, l.trailer.raw_len
            );
        }
        "verify-maps" => return maps::verify(&reader()?, &PathBuf::from(o.arg(1, "DATADIR")?)),
        "repair-maps" => {
            let content = o.num("content", -1)?;
            return maps::repair(&reader()?, &PathBuf::from(o.arg(1, "DATADIR")?), content);
        }
        "header" => {
            let name = o.arg(1, "NAME")?;
            let l = layout(&reader()?, name)?;
            let t = &l.trailer;
            let stored: u64 = l.frames.iter().map(|f| f.stored_len as u64).sum();
            let json = serde_json::json!({
                "name": name,
                "format_version": t.version,
                "object_id": t.object_id_hex(),
                "encrypted": t.encrypted,
                "key_id": format!("{:08x}", t.key_id),
                "compressed": t.compressed,
                "zstd_level": t.zstd_level,
                "frame_size": t.frame_size,
                "frame_count": t.frame_count,
                "raw_len": t.raw_len,
                "stored_frame_bytes": stored,
                "object_len": l.object_len,
                "raw_xxh3_128": t.raw_checksum_hex(),
            });
            println!("{}", serde_json::to_string_pretty(&json).unwrap());
        }
        "read" => {
            let name = o.arg(1, "NAME")?;
            let off: u64 = o
                .arg(2, "OFFSET")?
                .parse()
                .map_err(|_| Error::Config("OFFSET must be a number".into()))?;
            let len: usize = o
                .arg(3, "LEN")?
                .parse()
                .map_err(|_| Error::Config("LEN must be a number".into()))?;
            let mut buf = vec![0u8; len];
            reader()?.read_blocking(name, off, &mut buf)?;
            std::io::stdout()
                .write_all(&buf)
                .map_err(|e| Error::io("stdout", e))?;
        }
        "ls" => {
            let prefix = o.args.get(1).map(String::as_str).unwrap_or("");
            for m in block_on(store.list(prefix))? {
                println!("{}\t{}", m.size, m.name);
            }
        }
        "rm" => block_on(store.delete(o.arg(1, "NAME")?))?,
        "get-raw" => {
            let (name, path) = (o.arg(1, "NAME")?, o.arg(2, "FILE")?);
            let size = block_on(store.head(name))?.size;
            let bytes = block_on(store.get_range(name, 0..size))?;
            std::fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
        }
        "put-raw" => {
            let (path, name) = (o.arg(1, "FILE")?, o.arg(2, "NAME")?);
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            block_on(store.put(name, bytes.into()))?;
        }
        other => return Err(Error::Config(format!("unknown command {other:?}"))),
    }
    Ok(())
}

/// Deterministic content of stress frame `k`: varying sizes, partial final blocks.
fn stress_frame(k: u32) -> Vec<u8> {
    let len = 16384 + (k as usize % 7) * 8192 + (k as usize % 3) * 1000;
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(k) as u8)
        .collect()
}

/// `cache-stress DIR LIMIT SEED OPS`: inserts and reads frames of 64 shared
/// keys in a cache directory, checking every hit's bytes and the size limit
/// after every insert. Run it in several processes at once to check a cache
/// directory's file system (the tests do).
fn cache_stress(o: &Opts) -> Result<()> {
    let dir = PathBuf::from(o.arg(1, "DIR")?);
    let num = |i: usize, what: &str| -> Result<u64> {
        o.arg(i, what)?
            .parse()
            .map_err(|_| Error::Config(format!("{what} must be a number")))
    };
    let (limit, mut x, ops) = (num(2, "LIMIT")?, num(3, "SEED")? | 1, num(4, "OPS")?);
    let cache = yezzey_storage::cache::FrameCache::open(&dir, limit)?;
    let (mut hits, mut inserts) = (0u64, 0u64);
    for _ in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = (x % 64) as u32;
        let want = stress_frame(k);
        let mut got = vec![0u8; want.len()];
        if cache.read("stress", k, 0, &mut got) {
            if got != want {
                return Err(Error::corrupt(
                    "stress",
                    format!("frame {k}: cache returned wrong bytes"),
                ));
            }
            hits += 1;
        } else {
            cache.insert("stress", k, &want, HitCheck::Every)?;
            inserts += 1;
            let used = cache.stats().used_bytes;
            if used > limit {
                return Err(Error::Config(format!(
                    "cache holds {used} bytes, over its limit {limit}"
                )));
            }
        }
    }
    println!("{hits} {inserts}");
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("yezzey-tool: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yezzey-tool: {e}");
            ExitCode::FAILURE
        }
    }
}
