//! A relation's locks and pages: what offload and load back ask of the
//! lock manager, the buffer manager and the visibility map.
use pgrx::pg_sys;
use std::ops::Range;

/// Takes ExclusiveLock on a relation, held to the end of the transaction:
/// plain readers go on; writers, row locks and VACUUM wait.
pub fn lock_exclusive(oid: u32) {
    // SAFETY: acquiring a heavyweight lock held until transaction end.
    unsafe { pg_sys::LockRelationOid(oid.into(), pg_sys::ExclusiveLock as i32) };
}

/// Whether the relation's changes skip WAL: created (or given a new
/// relfilenode) in this transaction with `wal_level = minimal`
/// (PostgreSQL's `RelationNeedsWAL` false for a permanent relation).
pub fn skips_wal(oid: u32) -> bool {
    // SAFETY: the relation is locked by the caller; reads relcache fields.
    unsafe {
        let rel = pg_sys::relation_open(oid.into(), pg_sys::NoLock as i32);
        // InvalidSubTransactionId is 0.
        let new_here = (*rel).rd_createSubid != 0 || (*rel).rd_firstRelfilelocatorSubid != 0;
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        new_here && pg_sys::wal_level < pg_sys::WalLevel::WAL_LEVEL_REPLICA as i32
    }
}

/// Writes out every dirty buffer of a relation file (all forks), by its
/// locator: usable in redo, where there is no relcache.
pub fn flush_all_buffers(key: yezzey_storage::key::RelFork) {
    // SAFETY: smgropen of a permanent relation's locator and PostgreSQL's
    // own flush of its buffers, from a process that may do buffer I/O.
    unsafe {
        let locator = pg_sys::RelFileLocator {
            spcOid: key.spc.into(),
            dbOid: key.db.into(),
            relNumber: key.rel.into(),
        };
        let mut smgr = pg_sys::smgropen(locator, pg_sys::INVALID_PROC_NUMBER);
        pg_sys::FlushRelationsAllBuffers(&mut smgr, 1);
    }
}

/// Writes out the relation's dirty buffers and fsyncs its main fork;
/// returns the fork's length in blocks. Caller holds a lock on it.
pub fn flush(oid: u32) -> u32 {
    // SAFETY: the relation is locked by the caller; standard relcache/smgr calls.
    unsafe {
        let rel = pg_sys::relation_open(oid.into(), pg_sys::NoLock as i32);
        pg_sys::FlushRelationBuffers(rel);
        let smgr = pg_sys::RelationGetSmgr(rel);
        let nblocks = pg_sys::smgrnblocks(smgr, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::smgrimmedsync(smgr, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        nblocks
    }
}

/// The main fork's length in bytes as the storage manager sees it: for an
/// offloaded relation more than its local files hold (`pg_relation_size`
/// counts the files).
pub fn logical_bytes(oid: u32) -> u64 {
    // SAFETY: opening with AccessShareLock, released at close; an smgr call.
    let nblocks = unsafe {
        let rel = pg_sys::relation_open(oid.into(), pg_sys::AccessShareLock as i32);
        let n = pg_sys::smgrnblocks(
            pg_sys::RelationGetSmgr(rel),
            pg_sys::ForkNumber::MAIN_FORKNUM,
        );
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
        n
    };
    nblocks as u64 * pg_sys::BLCKSZ as u64
}

/// Pages the visibility map shows all-frozen. Caller holds a lock.
pub fn all_frozen_pages(oid: u32) -> u32 {
    let (mut visible, mut frozen) = (0, 0);
    // SAFETY: the relation is locked by the caller; a read of its visibility map.
    unsafe {
        let rel = pg_sys::relation_open(oid.into(), pg_sys::NoLock as i32);
        pg_sys::visibilitymap_count(rel, &mut visible, &mut frozen);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
    }
    frozen
}

/// Rewrites blocks of the main fork through the buffer manager: read
/// (from wherever the storage manager finds them), mark dirty and WAL-log
/// as a full page, as `log_newpage_range()` does. `page_std`: the pages
/// keep pd_lower/pd_upper exact (heap), so the hole between them is not
/// logged. Caller holds a lock that keeps writers out.
pub fn rewrite_logged(oid: u32, blocks: Range<u32>, page_std: bool) {
    // SAFETY: the relation is locked by the caller; the pattern of
    // log_newpage_range(): buffer lock, critical section, dirty, log.
    unsafe {
        let rel = pg_sys::relation_open(oid.into(), pg_sys::NoLock as i32);
        let strategy = pg_sys::GetAccessStrategy(pg_sys::BufferAccessStrategyType::BAS_BULKWRITE);
        for blkno in blocks {
            pgrx::check_for_interrupts!();
            let buf = pg_sys::ReadBufferExtended(
                rel,
                pg_sys::ForkNumber::MAIN_FORKNUM,
                blkno,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                strategy,
            );
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32);
            pg_sys::CritSectionCount += 1;
            pg_sys::MarkBufferDirty(buf);
            pg_sys::log_newpage_buffer(buf, page_std);
            pg_sys::CritSectionCount -= 1;
            pg_sys::UnlockReleaseBuffer(buf);
        }
        pg_sys::FreeAccessStrategy(strategy);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
    }
}

/// Copies blocks `first..` of the main fork into `out` (whole pages)
/// through the buffer manager, so that each page is read as PostgreSQL
/// has it now (its newest version, never torn by a concurrent write), from
/// wherever the storage manager finds it. When the cluster has data
/// checksums, each copy gets its checksum (pages in buffers carry a stale
/// one until written out). Caller holds a lock that keeps writers out.
pub fn copy_pages(oid: u32, first: u32, out: &mut [u8], strategy: &BulkRead) {
    let bs = pg_sys::BLCKSZ as usize;
    let checksums = super::data_checksums();
    // SAFETY: the relation is locked by the caller; each buffer is pinned
    // and share-locked while its page is copied.
    unsafe {
        let rel = pg_sys::relation_open(oid.into(), pg_sys::NoLock as i32);
        for (i, page) in out.chunks_exact_mut(bs).enumerate() {
            let blkno = first + i as u32;
            let buf = pg_sys::ReadBufferExtended(
                rel,
                pg_sys::ForkNumber::MAIN_FORKNUM,
                blkno,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                strategy.0,
            );
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as i32);
            let src = pg_sys::BufferBlocks.add((buf as usize - 1) * bs) as *const u8;
            std::ptr::copy_nonoverlapping(src, page.as_mut_ptr(), bs);
            pg_sys::UnlockReleaseBuffer(buf);
            const UPPER: usize = std::mem::offset_of!(pg_sys::PageHeaderData, pd_upper);
            const SUM: usize = std::mem::offset_of!(pg_sys::PageHeaderData, pd_checksum);
            let is_new = page[UPPER] == 0 && page[UPPER + 1] == 0;
            if checksums && !is_new {
                let sum = yezzey_smgr_shim::page_checksum(page, blkno);
                page[SUM..SUM + 2].copy_from_slice(&sum.to_ne_bytes());
            }
        }
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
    }
}

/// A bulk-read buffer strategy (a small ring of buffers), so that a copy
/// of a whole relation does not push everything else out of shared buffers.
pub struct BulkRead(pg_sys::BufferAccessStrategy);

impl BulkRead {
    pub fn new() -> BulkRead {
        // SAFETY: allocates a strategy in the current memory context.
        BulkRead(unsafe {
            pg_sys::GetAccessStrategy(pg_sys::BufferAccessStrategyType::BAS_BULKREAD)
        })
    }
}

impl Drop for BulkRead {
    fn drop(&mut self) {
        // SAFETY: the strategy this value allocated.
        unsafe { pg_sys::FreeAccessStrategy(self.0) };
    }
}

/// Takes AccessExclusiveLock on a relation (whose weaker lock the caller
/// holds), so that nothing else reads or writes its pages; waits for
/// readers to finish for up to `patience` and gives up (false) rather than
/// wait longer or risk a deadlock, as VACUUM does before truncating a
/// table. Let go of it with [`release_access_exclusive`].
pub fn try_access_exclusive(oid: u32, patience: std::time::Duration) -> bool {
    let lock = pg_sys::AccessExclusiveLock as i32;
    let start = std::time::Instant::now();
    loop {
        // SAFETY: a conditional lock request.
        if unsafe { pg_sys::ConditionalLockRelationOid(oid.into(), lock) } {
            return true;
        }
        if start.elapsed() >= patience {
            return false;
        }
        pgrx::check_for_interrupts!();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Lets go of the AccessExclusiveLock [`try_access_exclusive`] took before
/// the transaction ends (the caller's weaker lock stays). Standbys keep
/// theirs until the transaction ends.
pub fn release_access_exclusive(oid: u32) {
    // SAFETY: the lock taken by try_access_exclusive.
    unsafe { pg_sys::UnlockRelationOid(oid.into(), pg_sys::AccessExclusiveLock as i32) };
}
