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
