//! The local frame cache: decoded frames on disk, shared by every process on
//! the machine, bounded in bytes, LRU-evicted, surviving restarts.
//!
//! **Decoded, not encoded.** A cache hit must cost microseconds per 8 KiB
//! block; an encoded frame would need a whole 1 MiB frame decrypted and
//! decompressed per hit. The decoded bytes are the same relation data that
//! sat on this disk before offload, so caching them in the clear exposes
//! nothing new (put the cache on the data directory's file system).
//!
//! **Layout.** `<dir>/pgsql_tmp.state` (a shared, memory-mapped page of
//! counters), `<dir>/pgsql_tmp.evict.lock`, `<dir>/pgsql_tmp.tmp/`, and
//! entries `<dir>/<xx>/pgsql_tmp<hash>`, where `hash` is xxh3_128 of (object
//! name, frame number). Every file's name starts with `pgsql_tmp`, the
//! prefix of PostgreSQL's temporary files, which `pg_basebackup`, Barman,
//! pgBackRest and the usual rsync recipes leave out: a backup of a data
//! directory holding the cache carries none of it. An entry is a 64-byte
//! header (magic, raw length, block count, key hash, flags), one xxh3_64 per
//! 8 KiB block, then the raw frame. An entry written for a reader that
//! verifies some blocks itself ([`HitCheck::SkipIf`]: PostgreSQL's page
//! checksums) has checksums only for the other blocks, and says so in its
//! flags.
//!
//! **Never a torn entry.** Entries are written under `tmp/` and linked into
//! place, so a reader sees a whole file or none; and every block read is
//! checked against its checksum, so even an entry damaged by an OS crash
//! (link durable, data not) or by anything else reads as a miss, is
//! removed, and is fetched again (blocks the reader verifies itself are left
//! to its check).
//!
//! **Never the disk's last bytes.** The cache shares its file system with
//! the database (by default it lives in the data directory). Before every
//! reservation it checks the file system's free space: below
//! `min_free` plus the entry, it evicts least-recently-used entries first,
//! and if that does not make room it declines the entry (the read goes on
//! uncached). A write that fails anyway (the disk filled meanwhile) is also
//! only a declined entry.
//!
//! **Bounded descriptors.** A process keeps at most `open_files` entries
//! open (an LRU of open files); everything else it opens is closed before
//! the call returns, except the eviction lock while evicting.
//!
//! **Size limit across processes.** `used` bytes live in the shared state
//! page. A writer *reserves* its entry's size with a compare-and-swap that
//! never takes `used` past the limit; when it does not fit, the writer takes
//! `pgsql_tmp.evict.lock` (flock) and evicts least-recently-used entries (by mtime,
//! which a hit refreshes at most every few seconds per entry) down to the
//! low-water mark. Reservations precede publication, so the bytes on disk
//! never exceed the counter, and the counter never exceeds the limit.
//! Entries are published with `link()`, which fails if another process
//! published the same frame first, so nothing is counted twice. A process
//! that dies between reserving and publishing over-counts, which only makes
//! eviction run early; the evictor's directory scan corrects large drift.
use crate::error::{Error, Result};
use crate::format::BLOCK_SIZE;
use crate::state::durable::FileLock;
use lru::LruCache;
use memmap2::MmapMut;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

const ENTRY_MAGIC: [u8; 8] = *b"YZCACHE1";
const STATE_MAGIC: u64 = 0x595a_4341_4348_4531; // "YZCACHE1"
const HEADER_LEN: usize = 64;
/// Header byte 32: flags.
const FLAGS_AT: usize = 32;
/// The entry holds checksums only for the blocks its writer's
/// [`HitCheck::SkipIf`] did not skip (others read as 0).
const SUMS_PARTIAL: u8 = 1;
const STATE_LEN: usize = 4096;
/// PostgreSQL's prefix of temporary files, which backup tools leave out.
const TEMP_PREFIX: &str = "pgsql_tmp";
const STATE_FILE: &str = "pgsql_tmp.state";
const LOCK_FILE: &str = "pgsql_tmp.evict.lock";
const TMP_DIR: &str = "pgsql_tmp.tmp";
/// A hit refreshes an entry's mtime (its LRU position) at most this often.
const TOUCH_INTERVAL: Duration = Duration::from_secs(5);
/// Eviction frees down to this fraction of the limit.
const LOW_WATER: f64 = 0.9;

#[derive(Clone, Copy)]
enum Counter {
    Used = 1,
    Hits,
    Misses,
    Inserts,
    Evictions,
    Corrupt,
    /// Bumped whenever entries are removed in bulk, so every process drops
    /// the entries it holds open (an unlinked file stays readable, and its
    /// space taken, while open).
    Generation,
}

/// Counters shared by every process using the cache directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub corrupt_entries: u64,
}

struct OpenEntry {
    file: File,
    path: PathBuf,
    raw_len: usize,
    checksums: Vec<u64>,
    /// Checksums only for the blocks a `SkipIf` check wants.
    partial: bool,
    touched: SystemTime,
}

/// Which blocks of a cache entry carry a checksum and are checked against it
/// on a hit.
#[derive(Debug, Clone, Copy)]
pub enum HitCheck {
    /// Every block.
    Every,
    /// Every block except those this returns true for: blocks the caller
    /// verifies itself (PostgreSQL with data checksums verifies every page it
    /// reads, except all-zero ones), so they need not be hashed twice.
    /// Entries written this way serve only readers that skip the same
    /// blocks (one predicate per cache directory); to an `Every` reader they
    /// are misses.
    SkipIf(fn(&[u8]) -> bool),
}

impl HitCheck {
    fn wants(self, block: &[u8]) -> bool {
        match self {
            HitCheck::Every => true,
            HitCheck::SkipIf(caller_verifies) => !caller_verifies(block),
        }
    }
}

/// The outcome of [`FrameCache::claim`].
pub enum Claim {
    /// We fetch the frame; dropping the guard releases the claim.
    Mine(ClaimGuard),
    /// Another process is fetching it: wait for its entry.
    Theirs,
    /// Claims are unavailable: fetch without one.
    Unclaimed,
}

/// Removes its claim file when dropped.
pub struct ClaimGuard(PathBuf);

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// How a process uses a cache directory.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// Bytes the entries may take.
    pub limit: u64,
    /// Free bytes the cache leaves on its file system.
    pub min_free: u64,
    /// Entries this process keeps open at most.
    pub open_files: usize,
}

impl CacheOptions {
    /// `limit` bytes, no free-space reserve, the default open-file bound.
    pub fn with_limit(limit: u64) -> CacheOptions {
        CacheOptions {
            limit,
            min_free: 0,
            open_files: DEFAULT_OPEN_FILES,
        }
    }
}

/// Entries a process keeps open by default.
pub const DEFAULT_OPEN_FILES: usize = 16;

pub struct FrameCache {
    dir: PathBuf,
    limit: u64,
    min_free: u64,
    open_files: usize,
    state: MmapMut,
    open: Mutex<OpenEntries>,
}

/// Entries this process holds open, valid for one cache generation.
struct OpenEntries {
    lru: LruCache<u128, Arc<Mutex<OpenEntry>>>,
    generation: u64,
}

fn entry_key(name: &str, frame: u32) -> u128 {
    let mut k = Vec::with_capacity(name.len() + 5);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&frame.to_le_bytes());
    xxh3_128(&k)
}

fn block_count(raw_len: usize) -> usize {
    raw_len.div_ceil(BLOCK_SIZE)
}

impl FrameCache {
    /// Opens (creating if needed) the cache in `dir`, limited to `limit`
    /// bytes, with the default options otherwise.
    pub fn open(dir: &Path, limit: u64) -> Result<FrameCache> {
        Self::open_with(dir, CacheOptions::with_limit(limit))
    }

    /// Opens (creating if needed) the cache in `dir`.
    pub fn open_with(dir: &Path, opts: CacheOptions) -> Result<FrameCache> {
        let limit = opts.limit;
        fs::create_dir_all(dir.join(TMP_DIR)).map_err(|e| Error::io(dir, e))?;
        let lock = Self::lock(dir)?;
        let state_path = dir.join(STATE_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&state_path)
            .map_err(|e| Error::io(&state_path, e))?;
        let fresh = f.metadata().map_err(|e| Error::io(&state_path, e))?.len() != STATE_LEN as u64;
        if fresh {
            f.set_len(STATE_LEN as u64)
                .map_err(|e| Error::io(&state_path, e))?;
        }
        // SAFETY: the file is ours and STATE_LEN long; all access goes through atomics.
        let state = unsafe { MmapMut::map_mut(&f) }.map_err(|e| Error::io(&state_path, e))?;
        let open_files = opts.open_files.max(1);
        let cache = FrameCache {
            dir: dir.to_path_buf(),
            limit,
            min_free: opts.min_free,
            open_files,
            state,
            open: Mutex::new(OpenEntries {
                lru: LruCache::new(NonZeroUsize::new(open_files).unwrap()),
                generation: 0,
            }),
        };
        if fresh
            || cache.counter(Counter::Used).load(Ordering::Relaxed) > 0
                && cache.magic().load(Ordering::Relaxed) != STATE_MAGIC
        {
            // New (or foreign) state page: count what is already on disk.
            let on_disk: u64 = cache.scan()?.iter().map(|e| e.1).sum();
            cache
                .counter(Counter::Used)
                .store(on_disk, Ordering::Relaxed);
            cache.magic().store(STATE_MAGIC, Ordering::Release);
        }
        drop(lock);
        // A smaller limit than last time takes effect at once.
        if cache.counter(Counter::Used).load(Ordering::Relaxed) > limit {
            cache.evict(0)?;
        }
        Ok(cache)
    }

    fn atomic(&self, slot: usize) -> &AtomicU64 {
        assert!(slot * 8 + 8 <= STATE_LEN);
        // SAFETY: the mapping is page-aligned, STATE_LEN long and lives as
        // long as self; other processes touch it only through atomics too.
        unsafe { AtomicU64::from_ptr(self.state.as_ptr().add(slot * 8) as *mut u64) }
    }

    fn magic(&self) -> &AtomicU64 {
        self.atomic(0)
    }

    fn counter(&self, c: Counter) -> &AtomicU64 {
        self.atomic(c as usize)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The most file descriptors this process's use of the cache holds at
    /// once: its open entries (plus an evicted one a reader still holds),
    /// an entry being written on each of the runtime's blocking threads,
    /// and a claim, the eviction lock and a directory scan.
    pub fn max_fds(&self) -> usize {
        self.open_files + 2 + crate::runtime::MAX_BLOCKING_THREADS + 3
    }

    /// Free bytes on the cache's file system (for unprivileged users).
    fn free_bytes(&self) -> Option<u64> {
        crate::state::durable::free_bytes(&self.dir).ok()
    }

    /// The eviction lock: one process evicts or clears at a time.
    fn lock(dir: &Path) -> Result<FileLock> {
        let path = dir.join(LOCK_FILE);
        FileLock::acquire(&path).map_err(|e| Error::io(&path, e))
    }

    pub fn stats(&self) -> CacheStats {
        let g = |c| self.counter(c).load(Ordering::Relaxed);
        CacheStats {
            used_bytes: g(Counter::Used),
            limit_bytes: self.limit,
            hits: g(Counter::Hits),
            misses: g(Counter::Misses),
            inserts: g(Counter::Inserts),
            evictions: g(Counter::Evictions),
            corrupt_entries: g(Counter::Corrupt),
        }
    }

    fn entry_path(&self, key: u128) -> PathBuf {
        let h = format!("{key:032x}");
        self.dir.join(&h[..2]).join(format!("{TEMP_PREFIX}{h}"))
    }

    /// This process's open entries, emptied first if entries were removed
    /// in bulk since it last looked.
    fn open_entries(&self) -> std::sync::MutexGuard<'_, OpenEntries> {
        let mut open = self.open.lock().unwrap();
        let g = self.counter(Counter::Generation).load(Ordering::Acquire);
        if open.generation != g {
            open.lru.clear();
            open.generation = g;
        }
        open
    }

    fn open_entry(&self, key: u128) -> Option<Arc<Mutex<OpenEntry>>> {
        if let Some(e) = self.open_entries().lru.get(&key) {
            return Some(e.clone());
        }
        let path = self.entry_path(key);
        let file = File::open(&path).ok()?;
        let mut header = [0u8; HEADER_LEN];
        let valid = file.read_exact_at(&mut header, 0).is_ok()
            && header[..8] == ENTRY_MAGIC
            && header[16..32] == key.to_le_bytes();
        let raw_len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
        let nblocks = u32::from_le_bytes(header[12..16].try_into().unwrap()) as usize;
        let partial = header[FLAGS_AT] & SUMS_PARTIAL != 0;
        let mut sums = vec![0u8; nblocks * 8];
        if !valid
            || nblocks != block_count(raw_len)
            || file.read_exact_at(&mut sums, HEADER_LEN as u64).is_err()
        {
            self.discard(&path);
            return None;
        }
        // An entry touched lately need not be touched again on its first hit
        // here (an fstat is cheaper than an mtime update).
        let touched = file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let e = Arc::new(Mutex::new(OpenEntry {
            file,
            path,
            raw_len,
            checksums: sums
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            partial,
            touched,
        }));
        self.open_entries().lru.put(key, e.clone());
        Some(e)
    }

    /// Removes a damaged entry (and gives its bytes back).
    fn discard(&self, path: &Path) {
        if let Ok(md) = fs::metadata(path) {
            if fs::remove_file(path).is_ok() {
                self.release(md.len());
            }
        }
        self.counter(Counter::Corrupt)
            .fetch_add(1, Ordering::Relaxed);
    }

    fn release(&self, bytes: u64) {
        let used = self.counter(Counter::Used);
        let _ = used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
            Some(u.saturating_sub(bytes))
        });
    }

    /// Copies `out.len()` bytes at `offset` within frame `frame` of object
    /// `name` into `out`. Returns false on a miss (nothing cached, or the
    /// entry failed its checksums and was dropped). `offset` must be
    /// block-aligned.
    pub fn read(&self, name: &str, frame: u32, offset: usize, out: &mut [u8]) -> bool {
        self.read_with(name, frame, offset, out, HitCheck::Every)
    }

    /// [`read`](Self::read) with the given block checks.
    pub fn read_with(
        &self,
        name: &str,
        frame: u32,
        offset: usize,
        out: &mut [u8],
        check: HitCheck,
    ) -> bool {
        let mut bufs: Vec<&mut [u8]> = out.chunks_mut(BLOCK_SIZE).collect();
        self.read_blocks(name, frame, offset, &mut bufs, check)
    }

    /// Like [`read`](Self::read), into separate buffers of one block each
    /// (the last may be shorter): PostgreSQL's buffers for one read are not
    /// contiguous, and one `preadv` into them saves a copy per block.
    pub fn read_blocks(
        &self,
        name: &str,
        frame: u32,
        offset: usize,
        bufs: &mut [&mut [u8]],
        check: HitCheck,
    ) -> bool {
        let hit = self.read_inner(entry_key(name, frame), offset, bufs, check);
        self.counter(if hit { Counter::Hits } else { Counter::Misses })
            .fetch_add(1, Ordering::Relaxed);
        hit
    }

    fn read_inner(
        &self,
        key: u128,
        offset: usize,
        bufs: &mut [&mut [u8]],
        check: HitCheck,
    ) -> bool {
        debug_assert_eq!(offset % BLOCK_SIZE, 0);
        let Some((last, whole)) = bufs.split_last_mut() else {
            return true;
        };
        debug_assert!(whole.iter().all(|b| b.len() == BLOCK_SIZE) && last.len() <= BLOCK_SIZE);
        let len = whole.len() * BLOCK_SIZE + last.len();
        let Some(entry) = self.open_entry(key) else {
            return false;
        };
        let mut e = entry.lock().unwrap();
        if offset + len > e.raw_len || e.partial && matches!(check, HitCheck::Every) {
            return false;
        }
        let data_off = (HEADER_LEN + e.checksums.len() * 8) as u64 + offset as u64;
        // Blocks are checksummed whole (the file pads the last one), so a
        // request that ends mid-block reads that block aside.
        let mut spill = Vec::new();
        let partial = last.len() < BLOCK_SIZE;
        if partial {
            spill.resize(BLOCK_SIZE, 0);
        }
        let first = offset / BLOCK_SIZE;
        let ok = {
            let mut iov: Vec<&mut [u8]> = whole.iter_mut().map(|b| &mut **b).collect();
            iov.push(if partial { &mut spill[..] } else { &mut **last });
            preadv_exact(&e.file, &mut iov, data_off).is_ok()
                && iov
                    .iter()
                    .enumerate()
                    .all(|(i, b)| !check.wants(b) || xxh3_64(b) == e.checksums[first + i])
        };
        if !ok {
            let path = e.path.clone();
            drop(e);
            self.open_entries().lru.pop(&key);
            self.discard(&path);
            return false;
        }
        if partial {
            let n = last.len();
            last.copy_from_slice(&spill[..n]);
        }
        let now = SystemTime::now();
        if now.duration_since(e.touched).unwrap_or_default() > TOUCH_INTERVAL {
            let _ = e.file.set_modified(now);
            e.touched = now;
        }
        true
    }

    /// Claims the right to fetch a frame, so that processes reading the same
    /// object (parallel workers of one scan) fetch each frame once. Claims
    /// are files created with O_EXCL next to the entry; one older than
    /// `stale_after` (its owner died or hung) is taken over.
    pub fn claim(&self, name: &str, frame: u32, stale_after: Duration) -> Claim {
        let path = self.claim_path(name, frame);
        let _ = fs::create_dir_all(path.parent().unwrap());
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Claim::Mine(ClaimGuard(path));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if Self::claim_is_live(&path, stale_after) {
                        return Claim::Theirs;
                    }
                    let _ = fs::remove_file(&path);
                }
                // Cannot claim (read-only cache dir...): fetch without one.
                Err(_) => return Claim::Unclaimed,
            }
        }
        Claim::Unclaimed
    }

    fn claim_path(&self, name: &str, frame: u32) -> PathBuf {
        self.entry_path(entry_key(name, frame))
            .with_extension("claim")
    }

    /// A claim is live while its owner process exists and it is younger than
    /// `stale_after`. Owners that exit (parallel workers finishing a scan
    /// with readahead outstanding) or crash leave claims nobody must wait for.
    fn claim_is_live(path: &Path, stale_after: Duration) -> bool {
        let young = fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age <= stale_after);
        // An empty file is a claim being written: its owner is alive.
        let owner_alive = match fs::read_to_string(path) {
            Ok(pid) if pid.is_empty() => true,
            // SAFETY: signal 0 only checks that the process exists.
            Ok(pid) => pid
                .trim()
                .parse::<i32>()
                .is_ok_and(|p| unsafe { libc::kill(p, 0) } == 0),
            Err(_) => false,
        };
        young && owner_alive
    }

    /// True while a live process holds a claim on the frame.
    pub fn claimed(&self, name: &str, frame: u32, stale_after: Duration) -> bool {
        Self::claim_is_live(&self.claim_path(name, frame), stale_after)
    }

    /// A whole entry, every block verified.
    pub fn read_whole(&self, name: &str, frame: u32) -> Option<Vec<u8>> {
        let len = self
            .open_entry(entry_key(name, frame))?
            .lock()
            .unwrap()
            .raw_len;
        let mut out = vec![0u8; len];
        self.read(name, frame, 0, &mut out).then_some(out)
    }

    /// True if the frame is cached (no checksum verification).
    pub fn contains(&self, name: &str, frame: u32) -> bool {
        let key = entry_key(name, frame);
        self.open_entries().lru.contains(&key) || self.entry_path(key).exists()
    }

    /// Caches a decoded frame. Never fails the caller's read: errors (disk
    /// full, permissions) are returned for logging, and the cache stays
    /// consistent.
    /// `check` says which blocks get a checksum (those a reader will check).
    pub fn insert(&self, name: &str, frame: u32, raw: &[u8], check: HitCheck) -> Result<()> {
        let key = entry_key(name, frame);
        let nblocks = block_count(raw.len());
        // The last block is zero-padded on disk so every block checksums whole.
        let size = (HEADER_LEN + nblocks * 8 + nblocks * BLOCK_SIZE) as u64;
        if size > self.limit {
            return Ok(());
        }
        self.reserve(size)?;
        let path = self.entry_path(key);
        let published = self.write_entry(key, raw, &path, check);
        if let Ok(true) = published {
            self.counter(Counter::Inserts)
                .fetch_add(1, Ordering::Relaxed);
        } else {
            // Failed, or another process published the frame first.
            self.release(size);
        }
        published.map(|_| ())
    }

    /// Writes an entry and publishes it; false if one was there already.
    fn write_entry(&self, key: u128, raw: &[u8], path: &Path, check: HitCheck) -> Result<bool> {
        let nblocks = block_count(raw.len());
        // Header and checksums; the frame itself is written from the
        // caller's buffer, not copied behind them.
        let mut head = Vec::with_capacity(HEADER_LEN + nblocks * 8);
        head.extend_from_slice(&ENTRY_MAGIC);
        head.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        head.extend_from_slice(&(nblocks as u32).to_le_bytes());
        head.extend_from_slice(&key.to_le_bytes());
        head.resize(HEADER_LEN, 0);
        if matches!(check, HitCheck::SkipIf(_)) {
            head[FLAGS_AT] |= SUMS_PARTIAL;
        }
        let pad = vec![0u8; nblocks * BLOCK_SIZE - raw.len()];
        let mut last = [0u8; BLOCK_SIZE];
        for (i, b) in raw.chunks(BLOCK_SIZE).enumerate() {
            let b = if b.len() == BLOCK_SIZE {
                b
            } else {
                debug_assert_eq!(i + 1, nblocks);
                last[..b.len()].copy_from_slice(b);
                &last[..]
            };
            let sum = if check.wants(b) { xxh3_64(b) } else { 0 };
            head.extend_from_slice(&sum.to_le_bytes());
        }
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("OS random source");
        let tmp = self
            .dir
            .join(TMP_DIR)
            .join(format!("{TEMP_PREFIX}{}", hex::encode(r)));
        // Publish with link(): atomic like rename, but it fails if another
        // process published the same frame first, so an entry is never
        // replaced and its bytes never counted twice.
        let write = || -> io::Result<bool> {
            let mut f = File::create(&tmp)?;
            f.write_all(&head)?;
            f.write_all(raw)?;
            f.write_all(&pad)?;
            fs::create_dir_all(path.parent().unwrap())?;
            let published = match fs::hard_link(&tmp, path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            fs::remove_file(&tmp)?;
            Ok(published)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }

    /// Takes `size` bytes of the budget, evicting first if they do not fit
    /// under the limit or would leave less than `min_free` on the disk.
    fn reserve(&self, size: u64) -> Result<()> {
        self.make_room_on_disk(size)?;
        let used = self.counter(Counter::Used);
        for _ in 0..8 {
            let fits = used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    (u + size <= self.limit).then_some(u + size)
                })
                .is_ok();
            if fits {
                return Ok(());
            }
            self.evict(size)?;
        }
        Err(Error::Io {
            path: self.dir.display().to_string(),
            source: io::Error::other("cache is full and eviction freed nothing"),
        })
    }

    /// Evicts until the file system keeps `min_free` bytes besides `size`
    /// more; declines (an error the reader ignores) if it cannot.
    fn make_room_on_disk(&self, size: u64) -> Result<()> {
        if self.min_free == 0 {
            return Ok(());
        }
        let Some(free) = self.free_bytes() else {
            return Ok(());
        };
        if free >= self.min_free + size {
            return Ok(());
        }
        let short = self.min_free + size - free;
        self.evict_bytes(short)?;
        match self.free_bytes() {
            Some(free) if free < self.min_free + size => Err(Error::io(
                &self.dir,
                io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "{free} bytes free, keeping {} free for the database",
                        self.min_free
                    ),
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Evicts least-recently-used entries until `bytes` are freed (or none
    /// are left).
    fn evict_bytes(&self, bytes: u64) -> Result<()> {
        let _lock = Self::lock(&self.dir)?;
        self.evict_lru(self.scan()?, |freed| freed >= bytes);
        Ok(())
    }

    /// Removes entries, least recently used first, until `done(bytes
    /// freed)`; then every process drops the entries it holds open (an
    /// unlinked file keeps its space while open). Call holding the lock.
    fn evict_lru(&self, mut entries: Vec<(PathBuf, u64, SystemTime)>, done: impl Fn(u64) -> bool) {
        entries.sort_by_key(|e| e.2);
        let (mut freed, mut evicted) = (0, 0);
        for (path, size, _) in entries {
            if done(freed) {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                self.release(size);
                freed += size;
                evicted += 1;
            }
        }
        self.counter(Counter::Evictions)
            .fetch_add(evicted, Ordering::Relaxed);
        self.counter(Counter::Generation)
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Lists entries as (path, size, mtime).
    fn scan(&self) -> Result<Vec<(PathBuf, u64, SystemTime)>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for d in rd.flatten() {
            let name = d.file_name();
            let n = name.to_string_lossy();
            if n.len() != 2 || !d.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            for f in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                if f.path().extension().is_some_and(|e| e == "claim") {
                    continue;
                }
                if let Ok(md) = f.metadata() {
                    out.push((
                        f.path(),
                        md.len(),
                        md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Evicts least-recently-used entries until `need` more bytes fit under
    /// the low-water mark. One process evicts at a time; others wait for it.
    fn evict(&self, need: u64) -> Result<()> {
        let _lock = Self::lock(&self.dir)?;
        let used = self.counter(Counter::Used);
        let target = ((self.limit as f64 * LOW_WATER) as u64).saturating_sub(need);
        if used.load(Ordering::Acquire) <= target {
            return Ok(()); // someone else just evicted
        }
        let entries = self.scan()?;
        let on_disk: u64 = entries.iter().map(|e| e.1).sum();
        let counted = used.load(Ordering::Acquire);
        // Correct large over-counting (writers that crashed after reserving,
        // a cache wiped by hand), leaving headroom for reservations of
        // writers still in flight, which the scan could not see.
        if counted > on_disk + self.limit / 2 {
            self.release(counted - on_disk - self.limit / 4);
        }
        self.evict_lru(entries, |_| used.load(Ordering::Acquire) <= target);
        Ok(())
    }

    /// Removes every entry and returns how many and their bytes. Readers in
    /// any process fetch again from the objects; a reader in the middle of a
    /// read finishes it from the file it has open.
    pub fn clear(&self) -> Result<(u64, u64)> {
        let _lock = Self::lock(&self.dir)?;
        let (mut n, mut bytes) = (0, 0);
        for (path, size, _) in self.scan()? {
            if fs::remove_file(&path).is_ok() {
                self.release(size);
                n += 1;
                bytes += size;
            }
        }
        self.counter(Counter::Generation)
            .fetch_add(1, Ordering::AcqRel);
        Ok((n, bytes))
    }

    /// Every entry file with the offset of its first data block (after the
    /// header and the block checksums): for tools that inspect or, in
    /// tests, damage entries without knowing the layout.
    pub fn entry_files(&self) -> Result<Vec<(PathBuf, u64)>> {
        let mut out = Vec::new();
        for (path, _, _) in self.scan()? {
            let mut header = [0u8; HEADER_LEN];
            let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
            if f.read_exact_at(&mut header, 0).is_ok() && header[..8] == ENTRY_MAGIC {
                let nblocks = u32::from_le_bytes(header[12..16].try_into().unwrap()) as u64;
                out.push((path, (HEADER_LEN as u64) + nblocks * 8));
            }
        }
        Ok(out)
    }

    /// Bytes the entries on disk take (a directory scan; for tests and tools).
    pub fn disk_usage(&self) -> Result<u64> {
        Ok(self.scan()?.iter().map(|e| e.1).sum())
    }
}

/// Linux's limit on iovecs per call.
const IOV_MAX: usize = 1024;

/// Fills `bufs` from `file` at `offset` with as few `preadv` calls as the
/// kernel allows (one, for a regular file in practice).
fn preadv_exact(file: &File, bufs: &mut [&mut [u8]], mut offset: u64) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut at = 0;
    while at < iov.len() {
        let n = iov.len() - at;
        // SAFETY: every iovec points into a live, exclusively borrowed buffer.
        let got = unsafe {
            libc::preadv(
                file.as_raw_fd(),
                iov[at..].as_ptr(),
                n.min(IOV_MAX) as i32,
                offset as libc::off_t,
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        offset += got as u64;
        let mut got = got as usize;
        while at < iov.len() && got >= iov[at].iov_len {
            got -= iov[at].iov_len;
            at += 1;
        }
        if got > 0 {
            // SAFETY: advancing within the same buffer.
            iov[at].iov_base = unsafe { iov[at].iov_base.cast::<u8>().add(got).cast() };
            iov[at].iov_len -= got;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn hit_miss_and_partial_final_block() {
        let d = tempfile::tempdir().unwrap();
        let c = FrameCache::open(d.path(), 10 << 20).unwrap();
        let mut out = vec![0u8; 8192];
        assert!(!c.read("obj", 0, 0, &mut out));
        let f = frame(1, 3 * 8192 + 100);
        c.insert("obj", 0, &f, HitCheck::Every).unwrap();
        assert!(c.read("obj", 0, 8192, &mut out));
        assert_eq!(out, f[8192..16384]);
        let mut tail = vec![0u8; 100];
        assert!(c.read("obj", 0, 3 * 8192, &mut tail));
        assert_eq!(tail, f[3 * 8192..]);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.inserts), (2, 1, 1));
        // Survives reopening (a restart).
        drop(c);
        let c = FrameCache::open(d.path(), 10 << 20).unwrap();
        assert!(c.read("obj", 0, 0, &mut out));
        assert_eq!(out, f[..8192]);
        assert_eq!(c.stats().used_bytes, c.disk_usage().unwrap());
    }

    #[test]
    fn damaged_entry_is_a_miss_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let c = FrameCache::open(d.path(), 10 << 20).unwrap();
        let f = frame(2, 4 * 8192);
        c.insert("o", 7, &f, HitCheck::Every).unwrap();
        let path = c.entry_path(entry_key("o", 7));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], (HEADER_LEN + 4 * 8 + 2 * 8192 + 5) as u64)
            .unwrap();
        let mut out = vec![0u8; 8192];
        assert!(
            c.read("o", 7, 0, &mut out),
            "undamaged block still readable"
        );
        assert!(
            !c.read("o", 7, 2 * 8192, &mut out),
            "damaged block must miss"
        );
        assert!(!path.exists());
        assert_eq!(c.stats().corrupt_entries, 1);
        // Truncated (torn) entry.
        c.insert("o", 8, &f, HitCheck::Every).unwrap();
        let path = c.entry_path(entry_key("o", 8));
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        assert!(!c.read("o", 8, 0, &mut out));
    }

    #[test]
    fn skipped_checks_cover_only_what_the_caller_verifies() {
        let d = tempfile::tempdir().unwrap();
        let c = FrameCache::open(d.path(), 10 << 20).unwrap();
        // Block 0 is "verified by the caller" (first byte nonzero), block 1
        // (all zero) is not.
        let mut f = vec![0u8; 2 * 8192];
        f[..8192].fill(7);
        let skip = HitCheck::SkipIf(|b| b[0] != 0);
        let data = (HEADER_LEN + 2 * 8) as u64;
        let damage = |frame: u32, at: u64| {
            let path = c.entry_path(entry_key("o", frame));
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&[9], data + at).unwrap();
        };
        // Written with every checksum: a full check still catches damage to
        // a block the caller verifies.
        c.insert("o", 1, &f, HitCheck::Every).unwrap();
        damage(1, 100);
        let mut out = vec![0u8; 8192];
        assert!(c.read_blocks("o", 1, 0, &mut [&mut out[..]], skip));
        assert_eq!(out[100], 9, "the caller's own check is what catches this");
        assert!(!c.read_blocks("o", 1, 0, &mut [&mut out[..]], HitCheck::Every));
        // Written with the caller's checks: served to such readers only; a
        // full-check reader misses without removing it.
        c.insert("o", 2, &f, skip).unwrap();
        let mut two = vec![vec![0u8; 8192]; 2];
        let mut bufs: Vec<&mut [u8]> = two.iter_mut().map(|b| &mut b[..]).collect();
        assert!(c.read_blocks("o", 2, 0, &mut bufs, skip));
        assert_eq!(two.concat(), f);
        let mut bufs: Vec<&mut [u8]> = two.iter_mut().map(|b| &mut b[..]).collect();
        assert!(!c.read_blocks("o", 2, 0, &mut bufs, HitCheck::Every));
        assert!(c.contains("o", 2));
        assert_eq!(c.stats().corrupt_entries, 1);
        // A damaged all-zero block is always checked.
        damage(2, 8192 + 5);
        let mut bufs: Vec<&mut [u8]> = two.iter_mut().map(|b| &mut b[..]).collect();
        assert!(!c.read_blocks("o", 2, 0, &mut bufs, skip));
        assert_eq!(c.stats().corrupt_entries, 2);
    }

    #[test]
    fn clear_reaches_entries_other_processes_hold_open() {
        let d = tempfile::tempdir().unwrap();
        let a = FrameCache::open(d.path(), 10 << 20).unwrap();
        let b = FrameCache::open(d.path(), 10 << 20).unwrap();
        let f = frame(3, 2 * 8192);
        a.insert("o", 0, &f, HitCheck::Every).unwrap();
        a.insert("o", 1, &f, HitCheck::Every).unwrap();
        let mut out = vec![0u8; 8192];
        assert!(a.read("o", 0, 0, &mut out), "now held open by a");
        let before = a.stats().used_bytes;
        assert_eq!(b.clear().unwrap(), (2, before));
        assert_eq!(b.stats().used_bytes, 0);
        assert!(
            !a.read("o", 0, 0, &mut out),
            "a must not read a cleared entry"
        );
        assert!(!a.contains("o", 0));
    }

    #[test]
    fn claims_exclude_live_owners_only() {
        let d = tempfile::tempdir().unwrap();
        let c = FrameCache::open(d.path(), 10 << 20).unwrap();
        let long = Duration::from_secs(60);
        let Claim::Mine(g) = c.claim("o", 1, long) else {
            panic!("first claim must be ours")
        };
        assert!(
            matches!(c.claim("o", 1, long), Claim::Theirs),
            "a live owner's claim holds"
        );
        assert!(c.claimed("o", 1, long));
        drop(g);
        assert!(
            !c.claimed("o", 1, long),
            "dropping the guard releases the claim"
        );
        // A claim left by a process that no longer exists is taken over at once.
        let path = c.claim_path("o", 2);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "2147483646").unwrap();
        assert!(!c.claimed("o", 2, long));
        assert!(matches!(c.claim("o", 2, long), Claim::Mine(_)));
        // Claims are not entries: they never count against the limit.
        assert_eq!(c.disk_usage().unwrap(), 0);
    }

    #[test]
    fn limit_holds_and_lru_evicts_oldest() {
        let d = tempfile::tempdir().unwrap();
        let limit = 20 * (64 << 10);
        let c = FrameCache::open(d.path(), limit).unwrap();
        for i in 0..100u32 {
            c.insert("obj", i, &frame(i as u8, 64 << 10), HitCheck::Every)
                .unwrap();
            assert!(c.stats().used_bytes <= limit);
            assert!(c.disk_usage().unwrap() <= limit);
            if i < 3 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(c.stats().evictions > 0);
        assert!(!c.contains("obj", 0), "oldest entry evicted");
        assert!(c.contains("obj", 99), "newest entry kept");
    }
}
