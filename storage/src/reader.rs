//! Block reads of remote segment objects, through the shared frame cache, a
//! small in-memory frame LRU, and readahead.
//!
//! A read of raw bytes `[offset, offset+len)` of an object is served frame by
//! frame: from memory, else from the disk cache, else from a fetch already in
//! flight, else by fetching it. A single random block costs one range GET of
//! one frame. When an object is read sequentially (a frame following the last
//! one read, or PostgreSQL's prefetch hints), the reader fetches ahead in
//! *groups*: the frames whose stored bytes start in one `group_bytes`-aligned
//! span (S3's guidance is 8–16 MiB per GET), one range GET each, the current
//! group's and the next. Groups are the same in every process, so the
//! workers of a parallel scan fetch each group once and whole, instead of
//! splitting windows between them into small GETs.
//!
//! Memory: in-flight fetches are bounded by `inflight_bytes` and decoded
//! frames kept in memory by `memory_bytes`; with the defaults a process holds
//! well under 64 MB of buffers however many objects it reads.
use crate::cache::{Claim, ClaimGuard, FrameCache, HitCheck};
use crate::crypto::CipherImpl;
use crate::error::{Error, Result};
use crate::format::{ObjectLayout, TailParse, TAIL_PREFETCH};
use crate::keys::KeyRing;
use crate::store::{AnyStore, ObjectStore};
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Semaphore};

#[derive(Debug, Clone, Copy)]
pub struct ReadaheadConfig {
    /// Raw bytes to keep fetched ahead of a sequential reader; 0 disables readahead.
    pub window_bytes: u64,
    /// Span of stored bytes that readahead fetches with one range GET (a
    /// group, see `RemoteReader::group`); S3's guidance is 8–16 MiB per GET.
    pub group_bytes: u64,
    /// Bound on stored bytes being fetched at once.
    pub inflight_bytes: u64,
    /// Bound on decoded frames kept in memory.
    pub memory_bytes: u64,
    /// How long to wait for a frame another process is fetching before
    /// fetching it too (and after which its claim counts as stale).
    pub peer_wait: std::time::Duration,
    /// Longest a blocking read may take, whatever it waits for (its own
    /// GETs, readahead already in flight, a peer's fetch, a free request
    /// slot): past it the read fails with [`Error::Timeout`].
    pub deadline: std::time::Duration,
}

impl Default for ReadaheadConfig {
    fn default() -> Self {
        ReadaheadConfig {
            window_bytes: 8 << 20,
            group_bytes: 8 << 20,
            inflight_bytes: 24 << 20,
            memory_bytes: 16 << 20,
            peer_wait: std::time::Duration::from_secs(30),
            deadline: std::time::Duration::from_secs(90),
        }
    }
}

/// Process-local read statistics.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub frames_fetched: AtomicU64,
    pub frames_prefetched: AtomicU64,
    pub cache_hits: AtomicU64,
    pub memory_hits: AtomicU64,
    pub inflight_waits: AtomicU64,
    /// Frames another process fetched for us (through the cache).
    pub peer_frames: AtomicU64,
}

type Frame = Arc<Vec<u8>>;
/// What a fetch publishes: the frame, or word that a peer put it in the cache.
#[derive(Clone)]
enum Ready {
    Frame(Frame),
    InCache,
}
type FrameResult = std::result::Result<Ready, Arc<Error>>;
type FrameKey = (Arc<str>, u32);
/// A frame to fetch: its number, where to publish it, and our claim on it.
type Fetch = (u32, FrameTx, Option<ClaimGuard>);
type FrameTx = watch::Sender<Option<FrameResult>>;

struct Inner {
    store: Arc<AnyStore>,
    keys: KeyRing,
    cipher: CipherImpl,
    cache: Option<FrameCache>,
    cfg: ReadaheadConfig,
    layouts: Mutex<LruCache<Arc<str>, Arc<ObjectLayout>>>,
    memory: Mutex<MemFrames>,
    inflight: Mutex<HashMap<FrameKey, watch::Receiver<Option<FrameResult>>>>,
    budget: Semaphore,
    seq: Mutex<HashMap<Arc<str>, SeqState>>,
    stats: ReaderStats,
}

/// Per object: how it is being read.
struct SeqState {
    /// The last frame read.
    last: u32,
    /// How many reads in a row were sequential.
    streak: u32,
    /// Frames below this were cached or in flight when last looked up.
    known_to: u32,
}

/// Decoded frames in memory, bounded in bytes.
struct MemFrames {
    lru: LruCache<FrameKey, Frame>,
    bytes: u64,
    limit: u64,
}

impl MemFrames {
    fn get(&mut self, k: &FrameKey) -> Option<Frame> {
        self.lru.get(k).cloned()
    }

    fn put(&mut self, k: FrameKey, f: Frame) {
        self.bytes += f.len() as u64;
        if let Some(old) = self.lru.put(k, f) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > self.limit {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= old.len() as u64,
                None => break,
            }
        }
    }
}

/// Reads remote objects; cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct RemoteReader(Arc<Inner>);

/// The cache entry holding an object's length, index and trailer (frame
/// numbers never reach it).
const TAIL_ENTRY: u32 = u32::MAX;

/// Most frames in one readahead group, so that readahead of data that
/// compresses very well stays a bounded number of frames.
const MAX_GROUP_FRAMES: u32 = 32;

/// Largest forward jump (in frames) still treated as sequential access.
const SEQ_GAP: u32 = 3;

/// One budget permit per KiB of in-flight stored bytes.
const PERMIT_BYTES: u64 = 1024;

/// Copies the front of `src` into `bufs`, one after another.
fn scatter(src: &[u8], bufs: &mut [&mut [u8]]) {
    let mut at = 0;
    for b in bufs.iter_mut() {
        b.copy_from_slice(&src[at..at + b.len()]);
        at += b.len();
    }
}

fn dup_err(e: &Error) -> Error {
    match e {
        Error::Corrupt { name, detail } => Error::Corrupt {
            name: name.clone(),
            detail: detail.clone(),
        },
        Error::UnknownKey { name, key_id } => Error::UnknownKey {
            name: name.clone(),
            key_id: *key_id,
        },
        Error::KeyRequired { name } => Error::KeyRequired { name: name.clone() },
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::AccessDenied(m) => Error::AccessDenied(m.clone()),
        Error::Timeout(m) => Error::Timeout(m.clone()),
        other => Error::Store(other.to_string()),
    }
}

impl RemoteReader {
    pub fn new(
        store: Arc<AnyStore>,
        keys: KeyRing,
        cipher: CipherImpl,
        cache: Option<FrameCache>,
        cfg: ReadaheadConfig,
    ) -> RemoteReader {
        let permits =
            (cfg.inflight_bytes / PERMIT_BYTES).clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        RemoteReader(Arc::new(Inner {
            store,
            keys,
            cipher,
            cache,
            cfg,
            layouts: Mutex::new(LruCache::new(NonZeroUsize::new(256).unwrap())),
            memory: Mutex::new(MemFrames {
                lru: LruCache::unbounded(),
                bytes: 0,
                limit: cfg.memory_bytes,
            }),
            inflight: Mutex::new(HashMap::new()),
            budget: Semaphore::new(permits),
            seq: Mutex::new(HashMap::new()),
            stats: ReaderStats::default(),
        }))
    }

    pub fn store(&self) -> &Arc<AnyStore> {
        &self.0.store
    }

    pub fn cache(&self) -> Option<&FrameCache> {
        self.0.cache.as_ref()
    }

    pub fn stats(&self) -> &ReaderStats {
        &self.0.stats
    }

    /// Reads and verifies an object's trailer and index: cached per process,
    /// and in the disk cache, so a new process (every parallel worker) need
    /// not GET it. A cached copy is verified like a fetched one.
    pub async fn layout(&self, name: &str) -> Result<Arc<ObjectLayout>> {
        if let Some(l) = self.0.layouts.lock().unwrap().get(name) {
            return Ok(l.clone());
        }
        let inner = &self.0;
        let parse = |len: u64, tail: &[u8]| {
            ObjectLayout::parse_tail(name, len, tail, &inner.keys, inner.cipher)
        };
        let cached = inner.cache.as_ref().and_then(|c| {
            let b = c.read_whole(name, TAIL_ENTRY)?;
            let len = u64::from_le_bytes(b.get(..8)?.try_into().unwrap());
            match parse(len, &b[8..]) {
                Ok(TailParse::Complete(l)) => Some(l),
                // Whatever is wrong, the store's copy gives the real answer.
                _ => None,
            }
        });
        let layout = match cached {
            Some(l) => l,
            None => {
                let (mut tail, len) = inner.store.get_suffix(name, TAIL_PREFETCH).await?;
                inner.stats.gets.fetch_add(1, Ordering::Relaxed);
                let layout = match parse(len, &tail)? {
                    TailParse::Complete(l) => l,
                    TailParse::NeedFrom { start } => {
                        tail = inner.store.get_range(name, start..len).await?;
                        inner.stats.gets.fetch_add(1, Ordering::Relaxed);
                        match parse(len, &tail)? {
                            TailParse::Complete(l) => l,
                            TailParse::NeedFrom { .. } => {
                                return Err(Error::corrupt(
                                    name,
                                    "index does not fit where the trailer says",
                                ))
                            }
                        }
                    }
                };
                if let Some(c) = &inner.cache {
                    // Only the index and trailer, not the prefetched frames before them.
                    let need = (len - layout.trailer.footer_offset) as usize;
                    let mut entry = len.to_le_bytes().to_vec();
                    entry.extend_from_slice(&tail[tail.len() - need..]);
                    let _ = c.insert(name, TAIL_ENTRY, &entry, HitCheck::Every);
                }
                layout
            }
        };
        let l = Arc::new(layout);
        inner
            .layouts
            .lock()
            .unwrap()
            .put(Arc::from(name), l.clone());
        Ok(l)
    }

    /// Reads raw bytes `[offset, offset + out.len())` of object `name`.
    pub async fn read(&self, name: &str, offset: u64, out: &mut [u8]) -> Result<()> {
        let layout = self.layout(name).await?;
        let end = offset + out.len() as u64;
        if end > layout.trailer.raw_len {
            return Err(Error::corrupt(
                name,
                format!(
                    "read of bytes {offset}..{end} beyond the object's {} raw bytes",
                    layout.trailer.raw_len
                ),
            ));
        }
        let name: Arc<str> = Arc::from(name);
        let fs = layout.trailer.frame_size as u64;
        let mut pos = offset;
        let mut done = 0usize;
        while pos < end {
            let frame = (pos / fs) as u32;
            let in_frame = (pos % fs) as usize;
            let n = ((fs - pos % fs).min(end - pos)) as usize;
            self.note_access(&name, &layout, frame, HitCheck::Every);
            let part = &mut out[done..done + n];
            self.read_frame_part(&name, &layout, frame, in_frame, part, HitCheck::Every)
                .await?;
            pos += n as u64;
            done += n;
        }
        Ok(())
    }

    /// Blocking form of [`read`](Self::read) for callers outside the runtime,
    /// bounded by the configured deadline.
    pub fn read_blocking(&self, name: &str, offset: u64, out: &mut [u8]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.0.cfg.deadline;
        self.block_until(name, deadline, self.read(name, offset, out))
    }

    /// Runs `fut` on the runtime, failing with a timeout at `deadline`.
    fn block_until<T>(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        crate::runtime::block_on(async {
            tokio::time::timeout_at(deadline, fut)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Timeout(format!(
                        "reading {name}: no answer within {:?}",
                        self.0.cfg.deadline
                    )))
                })
        })
    }

    /// An object's layout ([`layout`](Self::layout)), for callers outside
    /// the runtime.
    pub fn layout_blocking(&self, name: &str) -> Result<Arc<ObjectLayout>> {
        if let Some(l) = self.0.layouts.lock().unwrap().get(name).cloned() {
            return Ok(l);
        }
        let deadline = tokio::time::Instant::now() + self.0.cfg.deadline;
        self.block_until(name, deadline, self.layout(name))
    }

    /// Reads blocks of raw bytes starting at `offset` straight into `bufs`
    /// (one block each, as PostgreSQL's buffers come), for callers outside
    /// the runtime. Cache and memory hits are served on the calling thread
    /// with one `preadv` per frame and no copy; only misses enter the runtime.
    /// `check` says which blocks of a cache hit to check against their
    /// stored checksums.
    pub fn read_blocks_blocking(
        &self,
        name: &str,
        offset: u64,
        bufs: &mut [&mut [u8]],
        check: HitCheck,
    ) -> Result<()> {
        let bs = crate::format::BLOCK_SIZE;
        let deadline = tokio::time::Instant::now() + self.0.cfg.deadline;
        let cached = self.0.layouts.lock().unwrap().get(name).cloned();
        let layout = match cached {
            Some(l) => l,
            None => self.block_until(name, deadline, self.layout(name))?,
        };
        let fs = layout.trailer.frame_size as u64;
        let end = offset + (bufs.len() * bs) as u64;
        if !offset.is_multiple_of(bs as u64)
            || bufs.iter().any(|b| b.len() != bs)
            || end > layout.trailer.raw_len
        {
            // Not the block-shaped read this path is for: take the general one.
            let mut tmp = vec![0u8; bufs.iter().map(|b| b.len()).sum()];
            self.block_until(name, deadline, self.read(name, offset, &mut tmp))?;
            scatter(&tmp, bufs);
            return Ok(());
        }
        let name: Arc<str> = Arc::from(name);
        let (mut pos, mut i) = (offset, 0);
        while i < bufs.len() {
            let frame = (pos / fs) as u32;
            let in_frame = (pos % fs) as usize;
            let n = (bufs.len() - i).min((fs as usize - in_frame) / bs);
            let part = &mut bufs[i..i + n];
            self.note_access(&name, &layout, frame, check);
            // Misses enter the runtime and copy once, from the fetched
            // frame or from the cache a peer filled.
            let mut attempt = 0;
            while !self.read_blocks_now(&name, frame, in_frame, part, check) {
                let got = self.obtain(&name, &layout, frame, attempt, check);
                if let Some(f) = self.block_until(&name, deadline, got)? {
                    scatter(&f[in_frame..], part);
                    break;
                }
                attempt += 1;
            }
            pos += (n * bs) as u64;
            i += n;
        }
        Ok(())
    }

    /// Serves blocks of one frame from the disk cache or memory, if there.
    fn read_blocks_now(
        &self,
        name: &Arc<str>,
        frame: u32,
        off: usize,
        bufs: &mut [&mut [u8]],
        check: HitCheck,
    ) -> bool {
        let inner = &self.0;
        // Memory first: a frame this process just decoded costs no system
        // call there, and was verified when it was decoded.
        let mem = inner.memory.lock().unwrap().get(&(name.clone(), frame));
        if let Some(f) = mem {
            inner.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            scatter(&f[off..], bufs);
            return true;
        }
        if let Some(c) = &inner.cache {
            if c.read_blocks(name, frame, off, bufs, check) {
                inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Starts fetching the frames covering `[offset, offset+len)` in the
    /// background (PostgreSQL's `smgrprefetch`); returns at once.
    pub fn prefetch(&self, name: &str, offset: u64, len: u64, check: HitCheck) {
        let this = self.clone();
        let name: Arc<str> = Arc::from(name);
        crate::runtime::runtime().spawn(async move {
            if let Ok(layout) = this.layout(&name).await {
                let fs = layout.trailer.frame_size as u64;
                let last = ((offset + len.max(1) - 1) / fs)
                    .min(layout.frames.len().saturating_sub(1) as u64);
                let first = (offset / fs) as u32;
                this.spawn_fetch(&name, &layout, first, last as u32 + 1, false, check);
            }
        });
    }

    async fn read_frame_part(
        &self,
        name: &Arc<str>,
        layout: &Arc<ObjectLayout>,
        frame: u32,
        off: usize,
        out: &mut [u8],
        check: HitCheck,
    ) -> Result<()> {
        let bs = crate::format::BLOCK_SIZE;
        for attempt in 0.. {
            // Cache and memory serve whole blocks: an unaligned part is read
            // with the blocks around it, aside.
            let lead = off % bs;
            let hit = if lead == 0 {
                let mut bufs: Vec<&mut [u8]> = out.chunks_mut(bs).collect();
                self.read_blocks_now(name, frame, off, &mut bufs, check)
            } else {
                let mut tmp = vec![0u8; lead + out.len()];
                let mut bufs: Vec<&mut [u8]> = tmp.chunks_mut(bs).collect();
                let hit = self.read_blocks_now(name, frame, off - lead, &mut bufs, check);
                if hit {
                    out.copy_from_slice(&tmp[lead..]);
                }
                hit
            };
            if hit {
                return Ok(());
            }
            if let Some(f) = self.obtain(name, layout, frame, attempt, check).await? {
                out.copy_from_slice(&f[off..off + out.len()]);
                return Ok(());
            }
        }
        unreachable!()
    }

    /// Gets a frame that was neither cached nor in memory when looked for:
    /// waits for a fetch in flight or starts one. `None` means look in the
    /// cache and memory again: a peer cached the frame, or a background
    /// fetch finished between the caller's look and ours. From the third
    /// attempt on it fetches even if the cache has an entry (one that cannot
    /// be read).
    async fn obtain(
        &self,
        name: &Arc<str>,
        layout: &Arc<ObjectLayout>,
        frame: u32,
        attempt: u32,
        check: HitCheck,
    ) -> Result<Option<Frame>> {
        let inner = &self.0;
        let waiting = inner
            .inflight
            .lock()
            .unwrap()
            .get(&(name.clone(), frame))
            .cloned();
        let rx = match waiting {
            Some(rx) => {
                inner.stats.inflight_waits.fetch_add(1, Ordering::Relaxed);
                rx
            }
            None => match self
                .spawn_fetch(name, layout, frame, frame + 1, attempt >= 2, check)
                .pop()
            {
                Some(rx) => rx,
                None => return Ok(None),
            },
        };
        Ok(match Self::wait(rx).await? {
            Ready::Frame(f) => Some(f),
            Ready::InCache => None,
        })
    }

    async fn wait(mut rx: watch::Receiver<Option<FrameResult>>) -> Result<Ready> {
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r.map_err(|e| dup_err(&e));
            }
            if rx.changed().await.is_err() {
                // The fetch task ended without a result (it panicked).
                return Err(Error::Store("frame fetch was abandoned".into()));
            }
        }
    }

    /// Tracks sequential access per object and keeps a window fetched ahead.
    fn note_access(
        &self,
        name: &Arc<str>,
        layout: &Arc<ObjectLayout>,
        frame: u32,
        check: HitCheck,
    ) {
        let cfg = &self.0.cfg;
        if cfg.window_bytes == 0 {
            return;
        }
        let (streak, known, prev) = {
            let mut seq = self.0.seq.lock().unwrap();
            if seq.len() > 1024 {
                seq.clear();
            }
            let e = seq.entry(name.clone()).or_insert(SeqState {
                last: u32::MAX,
                streak: 0,
                known_to: 0,
            });
            // Forward steps of up to SEQ_GAP frames count as sequential: the
            // workers of a parallel seq scan each see interleaved chunks.
            e.streak = if e.last == frame {
                return; // same frame as last time: nothing new to learn
            } else if e.last != u32::MAX && frame > e.last && frame - e.last <= SEQ_GAP {
                e.streak + 1
            } else {
                if e.last == u32::MAX || frame < e.last {
                    // A new pass over the object: what was cached may be gone.
                    e.known_to = 0;
                }
                0
            };
            let prev = e.last;
            e.last = frame;
            (e.streak, e.known_to, prev)
        };
        if streak >= 1 {
            // A sequential reader is done with the frames behind it (its
            // own, and those a parallel scan's peers read): in memory they
            // go before frames fetched ahead and not read yet.
            {
                let mut memory = self.0.memory.lock().unwrap();
                for f in prev..frame {
                    memory.lru.demote(&(name.clone(), f));
                }
            }
            // Fetch whole groups, the window's and the next: one GET each,
            // the same for every process, and far enough ahead that a
            // group's GET and decoding overlap the reading of the one before.
            let frames = layout.frames.len() as u32;
            let ahead = (cfg.window_bytes / layout.trailer.frame_size as u64).max(1) as u32;
            let current = self.group(layout, frame);
            let want_to = (frame + 1 + ahead.max(current.len() as u32)).min(frames);
            // Frames found cached or in flight by an earlier look are not
            // looked up again (on a warm scan each lookup is a stat()).
            let mut at = (frame + 1).max(known);
            while at < want_to {
                // spawn_fetch skips frames cached, in memory or in flight.
                let g = self.group(layout, at);
                self.spawn_fetch(name, layout, at, g.end, false, check);
                at = g.end;
            }
            if let Some(e) = self.0.seq.lock().unwrap().get_mut(name) {
                e.known_to = e.known_to.max(at);
            }
        }
    }

    /// The readahead group holding `frame`: the frames whose stored bytes
    /// start in the same `group_bytes`-aligned span of the object, cut into
    /// pieces of at most `group_frames` frames. Every process agrees on it,
    /// so parallel workers fetch a group whole instead of splitting it
    /// between them, and a store that keeps objects in fixed blocks (Garage:
    /// 1 MiB) reads at most one block beyond what a group's GET returns.
    fn group(&self, layout: &ObjectLayout, frame: u32) -> std::ops::Range<u32> {
        let span = self.0.cfg.group_bytes.max(1);
        let k = layout.frames[frame as usize].offset / span;
        let first = layout.frames.partition_point(|f| f.offset < k * span) as u32;
        let end = layout.frames.partition_point(|f| f.offset < (k + 1) * span) as u32;
        let most = self.group_frames(layout);
        let start = first + (frame - first) / most * most;
        start..end.min(start + most)
    }

    /// Most frames in a group. Decoded frames wait to be read in the disk
    /// cache, or without one only in memory: two groups (the one being read
    /// and the next) must fit there with room to spare, or the next would
    /// evict the current one before it is read.
    fn group_frames(&self, layout: &ObjectLayout) -> u32 {
        let room = match &self.0.cache {
            Some(c) => c.limit() / 4,
            None => self.0.cfg.memory_bytes / 2,
        };
        (room / layout.trailer.frame_size.max(1) as u64).clamp(1, MAX_GROUP_FRAMES as u64) as u32
    }

    /// Starts fetching frames `[first, end)` that are not cached, in memory
    /// or already in flight, coalescing neighbours into range GETs. Returns
    /// receivers for the frames it started (in order).
    fn spawn_fetch(
        &self,
        name: &Arc<str>,
        layout: &Arc<ObjectLayout>,
        first: u32,
        end: u32,
        force: bool,
        check: HitCheck,
    ) -> Vec<watch::Receiver<Option<FrameResult>>> {
        let inner = &self.0;
        let mut started = Vec::new();
        let mut run: Vec<Fetch> = Vec::new();
        let flush = |run: &mut Vec<Fetch>| {
            if !run.is_empty() {
                let this = self.clone();
                let (name, layout, batch) = (name.clone(), layout.clone(), std::mem::take(run));
                crate::runtime::runtime()
                    .spawn(async move { this.fetch_run(name, layout, batch, check).await });
            }
        };
        // Consecutive frames peers are fetching: one task waits for them in order.
        let mut theirs: Vec<(u32, FrameTx)> = Vec::new();
        let wait_peer = |theirs: &mut Vec<(u32, FrameTx)>| {
            if !theirs.is_empty() {
                let (this, name, layout) = (self.clone(), name.clone(), layout.clone());
                let frames = std::mem::take(theirs);
                crate::runtime::runtime()
                    .spawn(async move { this.wait_for_peer(name, layout, frames, check).await });
            }
        };
        let mut group_end = first;
        for frame in first..end {
            if frame >= group_end {
                // A GET never crosses a group boundary.
                flush(&mut run);
                wait_peer(&mut theirs);
                group_end = self.group(layout, frame).end;
            }
            let key: FrameKey = (name.clone(), frame);
            let have = !force
                && inner
                    .cache
                    .as_ref()
                    .is_some_and(|c| c.contains(name, frame))
                || inner.memory.lock().unwrap().lru.contains(&key);
            let mut inflight = inner.inflight.lock().unwrap();
            if have || inflight.contains_key(&key) {
                drop(inflight);
                flush(&mut run);
                wait_peer(&mut theirs);
                continue;
            }
            let (tx, rx) = watch::channel(None);
            inflight.insert(key, rx.clone());
            drop(inflight);
            started.push(rx);
            let claim = match &inner.cache {
                Some(c) => c.claim(name, frame, inner.cfg.peer_wait),
                None => Claim::Unclaimed,
            };
            let guard = match claim {
                // A peer may have cached the frame and let its claim go
                // between our look and our claim.
                Claim::Mine(_) if !force && self.peer_cached(name, frame, &tx) => {
                    flush(&mut run);
                    wait_peer(&mut theirs);
                    continue;
                }
                Claim::Mine(g) => Some(g),
                Claim::Unclaimed => None,
                Claim::Theirs => {
                    // Another process (a parallel worker) is fetching it.
                    flush(&mut run);
                    theirs.push((frame, tx));
                    continue;
                }
            };
            wait_peer(&mut theirs);
            run.push((frame, tx, guard));
        }
        flush(&mut run);
        wait_peer(&mut theirs);
        started
    }

    /// Publishes that a peer cached `frame`, if it did: waiters read their
    /// part there (most need half a frame or none, so reading it whole here
    /// would be wasted).
    fn peer_cached(&self, name: &Arc<str>, frame: u32, tx: &FrameTx) -> bool {
        let inner = &self.0;
        if !inner
            .cache
            .as_ref()
            .is_some_and(|c| c.contains(name, frame))
        {
            return false;
        }
        inner.stats.peer_frames.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(Some(Ok(Ready::InCache)));
        inner
            .inflight
            .lock()
            .unwrap()
            .remove(&(name.clone(), frame));
        true
    }

    /// Waits for consecutive frames other processes claimed to appear in
    /// the cache, in order (a peer decodes a group front to back). If a
    /// claim goes away without an entry or outlives `peer_wait`, fetches
    /// that frame and the ones after it nobody else has claimed, with one
    /// GET, then waits for the rest.
    async fn wait_for_peer(
        &self,
        name: Arc<str>,
        layout: Arc<ObjectLayout>,
        frames: Vec<(u32, FrameTx)>,
        check: HitCheck,
    ) {
        let inner = &self.0;
        let cache = inner.cache.as_ref().expect("claims need a cache");
        let deadline = tokio::time::Instant::now() + inner.cfg.peer_wait;
        let mut frames = std::collections::VecDeque::from(frames);
        let mut delay = std::time::Duration::from_micros(500);
        while let Some((frame, tx)) = frames.front() {
            let frame = *frame;
            if self.peer_cached(&name, frame, tx) {
                frames.pop_front();
                delay = std::time::Duration::from_micros(500);
                continue;
            }
            // A claim is a few file reads and a kill(0) to check: only
            // once the frame is late, not on every look.
            let late = delay >= std::time::Duration::from_millis(4);
            let overdue = tokio::time::Instant::now() > deadline;
            if overdue || late && !cache.claimed(&name, frame, inner.cfg.peer_wait) {
                let mut run = Vec::new();
                while let Some((f, tx)) = frames.pop_front() {
                    let guard = match cache.claim(&name, f, inner.cfg.peer_wait) {
                        Claim::Theirs if !overdue => {
                            frames.push_front((f, tx));
                            break;
                        }
                        Claim::Mine(g) => Some(g),
                        _ => None,
                    };
                    // The entry may have landed just before its claim went.
                    // A GET covers consecutive frames: a cached one ends the run.
                    if self.peer_cached(&name, f, &tx) {
                        if run.is_empty() {
                            continue;
                        }
                        break;
                    }
                    run.push((f, tx, guard));
                }
                if !run.is_empty() {
                    self.fetch_run(name.clone(), layout.clone(), run, check)
                        .await;
                }
                delay = std::time::Duration::from_micros(500);
                continue;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_millis(20));
        }
    }

    /// Fetches consecutive frames with one range GET, decodes each, publishes
    /// it to waiters, memory and the disk cache.
    /// `check` says which blocks get checksums in the cache entries.
    async fn fetch_run(
        &self,
        name: Arc<str>,
        layout: Arc<ObjectLayout>,
        batch: Vec<Fetch>,
        check: HitCheck,
    ) {
        let inner = &self.0;
        let a = batch[0].0 as usize;
        let b = batch[batch.len() - 1].0 as usize;
        let start = layout.frames[a].offset;
        let end = layout.frames[b].range().end;
        // A run larger than the whole budget takes all of it rather than waiting forever.
        let total = (inner.cfg.inflight_bytes / PERMIT_BYTES).max(1);
        let permits = (end - start).div_ceil(PERMIT_BYTES).min(total) as u32;
        let _permit = inner.budget.acquire_many(permits).await;
        let fetched = inner.store.get_range(&name, start..end).await;
        inner.stats.gets.fetch_add(1, Ordering::Relaxed);
        let finish = |frame: u32,
                      tx: &watch::Sender<Option<FrameResult>>,
                      r: std::result::Result<Frame, Arc<Error>>| {
            if let Ok(f) = &r {
                inner
                    .memory
                    .lock()
                    .unwrap()
                    .put((name.clone(), frame), f.clone());
            }
            let _ = tx.send(Some(r.map(Ready::Frame)));
            inner
                .inflight
                .lock()
                .unwrap()
                .remove(&(name.clone(), frame));
        };
        let mut data = match fetched {
            // Frames are decrypted in place: take the buffer over rather
            // than copy each frame out of it.
            Ok(d) => d
                .try_into_mut()
                .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..])),
            Err(e) => {
                let e = Arc::new(e);
                for (frame, tx, _claim) in &batch {
                    finish(*frame, tx, Err(e.clone()));
                }
                return;
            }
        };
        inner
            .stats
            .get_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // Counted before any frame is published, so a reader that finishes
        // early already sees it.
        inner
            .stats
            .frames_prefetched
            .fetch_add(batch.len() as u64 - 1, Ordering::Relaxed);
        // Decoding consumes the batch (and its claims).
        for (frame, tx, claim) in batch {
            let frame = &frame;
            let tx = &tx;
            let r = layout.frames[*frame as usize].range();
            let stored = &mut data[(r.start - start) as usize..(r.end - start) as usize];
            let decoded = layout
                .decode_frame(*frame as usize, stored)
                .map(Arc::new)
                .map_err(Arc::new);
            inner.stats.frames_fetched.fetch_add(1, Ordering::Relaxed);
            // Waiters first: the disk cache is for later readers, not this one.
            let for_cache = decoded.as_ref().ok().cloned();
            finish(*frame, tx, decoded);
            if let (Some(f), Some(_)) = (for_cache, &inner.cache) {
                let (this, name, frame) = (self.clone(), name.clone(), *frame);
                // A cache that cannot take the frame (disk full) must not fail
                // the read. The claim is released once the entry exists.
                tokio::task::spawn_blocking(move || {
                    let _ = this
                        .0
                        .cache
                        .as_ref()
                        .unwrap()
                        .insert(&name, frame, &f, check);
                    drop(claim);
                });
            }
        }
    }
}
