/*
 * yezzey_smgr.c: yezzey's storage manager table (see yezzey_smgr.h).
 *
 * Every permanent relation is routed here and each call goes to md.  An
 * offloaded segment stays a (sparse) local file at its usual path, so md
 * keeps handling size, extension, truncation, unlink and fsync; reads fill
 * the blocks that are holes in a segment's remote range from object storage,
 * and a block written after offload is simply local again (copy-on-write).
 * Until the first such write, a segment's remote range is known to be all
 * holes, and reads skip md and go straight to the object.
 *
 * An offloaded segment's local file holds only what the object lacks: pages
 * written since the offload, or pages the offload could not free (it frees
 * the pages the object holds under AccessExclusiveLock, keeping pages
 * readers wrote meanwhile, and marks the segment written until then; a
 * segment left with nothing is truncated: gp_patches/0002 lets md treat a
 * segment as long as its remote range, reading blocks past the file's end
 * as holes), so backup tools that copy files copy only local bytes.
 *
 * A write of a page the object already holds is not a write: a page of a
 * remote range whose LSN is no later than the map's clean LSN (taken before
 * the upload's flush) differs from the object's copy in hint bits at most,
 * when hint bits are WAL-logged.  Such pages are dropped instead of written,
 * so neither a reader setting hint bits nor crash recovery replaying the
 * changes made before the offload brings the relation's blocks back.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlogdefs.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"
#include "storage/md.h"
#include "storage/smgr.h"
#include "utils/memutils.h"

#include "yezzey_smgr.h"

const char *const yz_smgr_call_names[YZ_CALL_COUNT] = {
	"open", "close", "create", "exists", "unlink", "extend", "zeroextend",
	"prefetch", "readv", "writev", "writeback", "nblocks", "truncate",
	"immedsync", "registersync",
};

/* Per-backend: counters are process-local, so incrementing them is free of contention. */
static uint64_t call_counts[YZ_CALL_COUNT];
static uint64_t opened_yezzey;
static uint64_t opened_md;

static SMgrId yz_smgr_id = -1;
static smgr_select_hook_type prev_select_hook = NULL;
static md_segment_blocks_hook_type prev_segment_blocks_hook = NULL;

#define COUNT(c) (call_counts[(c)]++)

/*
 * Per-relation cache in SMgrRelation.smgr_private: whether the relation has
 * remote segments, valid while the map's generation is unchanged.  Freed
 * when the last fork is closed (smgrrelease and smgrdestroy close them all).
 */
typedef struct YzRelCache
{
	uint64_t	generation;
	bool		has_remote;
	bool		has_pending;	/* an offload is uploading a fork of it */
} YzRelCache;

uint32_t
yz_blocks_per_segment(void)
{
	return RELSEG_SIZE;
}

/* bufpage.c's GUC; PostgreSQL 17 declares it in no header. */
extern bool ignore_checksum_failure;

bool
yz_host_verifies_pages(void)
{
	return DataChecksumsEnabled() && !ignore_checksum_failure && !zero_damaged_pages;
}

static YzRelCache *
rel_cache_slow(SMgrRelation reln, uint64_t gen)
{
	YzRelCache *c = reln->smgr_private;
	RelFileLocator l = reln->smgr_rlocator.locator;

	if (c == NULL)
	{
		c = MemoryContextAlloc(TopMemoryContext, sizeof(YzRelCache));
		reln->smgr_private = c;
	}
	c->has_remote = yz_map_rel_forks(l.spcOid, l.dbOid, l.relNumber, &c->has_pending);
	c->generation = gen;
	return c;
}

/*
 * The relation's cache, fresh: one atomic read when nothing about the map
 * changed.
 */
static inline const YzRelCache *
rel_cache(SMgrRelation reln)
{
	uint64_t	gen = yz_map_generation();
	YzRelCache *c = reln->smgr_private;

	if (likely(c != NULL && c->generation == gen))
		return c;
	return rel_cache_slow(reln, gen);
}

/* The hot-path test: whether the relation has remote segments. */
static inline bool
has_remote(SMgrRelation reln)
{
	return rel_cache(reln)->has_remote;
}

uint16_t
yz_page_checksum(const void *page, uint32_t blkno)
{
	return pg_checksum_page((char *) page, blkno);
}

/*
 * md's view of a segment's length (md_segment_blocks_hook): at least its
 * remote range, whatever the local file holds.  Called for every segment md
 * sizes, possibly in a critical section, so it allocates nothing: relations
 * md serves directly (temporary ones) and relations without remote segments
 * cost a comparison and, while nothing about the map changed, one atomic
 * read.
 */
static BlockNumber
yz_segment_blocks(SMgrRelation reln, ForkNumber forknum, BlockNumber segno)
{
	RelFileLocator l = reln->smgr_rlocator.locator;
	YzRelCache *c = reln->smgr_private;
	YzSegInfo	seg;

	if (reln->smgr_which != yz_smgr_id ||
		(c != NULL && c->generation == yz_map_generation() ? !c->has_remote
		 : !yz_map_rel_has_remote(l.spcOid, l.dbOid, l.relNumber)) ||
		yz_map_get(l.spcOid, l.dbOid, l.relNumber, forknum, segno, &seg) <= 0)
		return prev_segment_blocks_hook ? prev_segment_blocks_hook(reln, forknum, segno) : 0;
	return seg.remote_blocks;
}

static bool
page_is_zero(const void *page)
{
	const uint64_t *p = page;

	/* A used page has pd_upper > 0 (bytes 14-15): rule it out cheaply first. */
	if (((const PageHeaderData *) page)->pd_upper != 0)
		return false;
	for (int i = 0; i < BLCKSZ / 8; i++)
		if (p[i] != 0)
			return false;
	return true;
}

/*
 * A fork whose map is damaged or missing is never served: md would read its
 * truncated files as an empty relation.  ERRORs (outside critical sections,
 * where the read or write that follows fails instead).
 */
static void
refuse_broken(SMgrRelation reln, ForkNumber forknum)
{
	RelFileLocator l = reln->smgr_rlocator.locator;

	yezzey_broken_fork(l.spcOid, l.dbOid, l.relNumber, forknum);
}

/*
 * WAL replay is the exception: the map of a fork that was dropped, loaded
 * back or rewritten later in the WAL may well be gone, and replay must not
 * stop at it.  It reads the local files, as md would; a block replay needs
 * that is not there is PostgreSQL's own invalid-page reference, forgotten
 * when the record that drops the relation is replayed (and a PANIC at the
 * end of recovery if none is: then repair the map with yezzey-tool).
 */
static inline bool
serve_broken_as_local(void)
{
	return AmStartupProcess();
}

/* The shared map's entry for the segment holding block `blk`, if any. */
static inline bool
segment_of(SMgrRelation reln, ForkNumber forknum, BlockNumber blk, YzSegInfo *seg)
{
	RelFileLocator l = reln->smgr_rlocator.locator;
	int			found = yz_map_get(l.spcOid, l.dbOid, l.relNumber, forknum,
								   blk / RELSEG_SIZE, seg);

	if (unlikely(found < 0) && !serve_broken_as_local())
		refuse_broken(reln, forknum);
	return found > 0;
}

/* How many of `left` blocks from `blk` on lie in blk's segment. */
static inline BlockNumber
in_segment(BlockNumber blk, BlockNumber left)
{
	return Min(left, RELSEG_SIZE - blk % RELSEG_SIZE);
}

/*
 * Reads blocks of a segment's remote range from its object.  Pages
 * offloaded while the cluster had no data checksums carry none, and
 * pg_checksums --enable rewrites only local files: when the cluster has
 * checksums now, those pages get theirs here, as pg_checksums would have
 * set them (their bytes were verified by yezzey's own hashes on the way).
 */
static void
remote_read(const YzSegInfo *seg, BlockNumber first, BlockNumber n, void **buffers)
{
	yezzey_remote_read(seg, first, n, buffers);
	if (!seg->page_checksums && DataChecksumsEnabled())
	{
		for (BlockNumber i = 0; i < n; i++)
		{
			Page		page = (Page) buffers[i];

			if (!PageIsNew(page))
				((PageHeader) page)->pd_checksum =
					pg_checksum_page((char *) page, seg->segno * RELSEG_SIZE + first + i);
		}
	}
}

/*
 * After md has read a range, fill the blocks that are holes (all zeros) in a
 * segment's remote range from object storage.  md reads first and the map is
 * consulted after, so a segment being evicted right now is either still
 * local or already in the map: the eviction publishes the map before it
 * punches holes.
 */
static void
fill_remote(const YzSegInfo *seg, BlockNumber first, void **buffers, BlockNumber nblocks)
{
	BlockNumber i = 0;

	while (i < nblocks)
	{
		BlockNumber run;

		if (first + i >= seg->remote_blocks || !page_is_zero(buffers[i]))
		{
			i++;
			continue;
		}
		/* A run of zero blocks within the remote range. */
		run = 1;
		while (i + run < nblocks && first + i + run < seg->remote_blocks &&
			   page_is_zero(buffers[i + run]))
			run++;
		remote_read(seg, first + i, run, &buffers[i]);
		i += run;
	}
}

/*
 * Reads a range of a relation with remote segments, one segment at a time:
 * the remote range of a segment without local writes comes straight from
 * the object; anything else is read by md (unless the caller already did),
 * and its holes filled.
 */
static void
read_segments(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			  void **buffers, BlockNumber nblocks, bool md_done)
{
	BlockNumber i = 0;

	while (i < nblocks)
	{
		BlockNumber blk = blocknum + i;
		BlockNumber first = blk % RELSEG_SIZE;
		BlockNumber run = in_segment(blk, nblocks - i);
		YzSegInfo	seg;
		bool		found = segment_of(reln, forknum, blk, &seg);

		if (!md_done && found && !seg.written && first < seg.remote_blocks)
		{
			run = Min(run, seg.remote_blocks - first);
			remote_read(&seg, first, run, &buffers[i]);
		}
		else
		{
			if (!md_done)
			{
				mdreadv(reln, forknum, blk, &buffers[i], run);
				/* Look again: the segment may have been evicted meanwhile. */
				found = segment_of(reln, forknum, blk, &seg);
			}
			if (found)
				fill_remote(&seg, first, &buffers[i], run);
		}
		i += run;
	}
}

/* How a write-out is noted in the map before it lands (note_writes). */
typedef enum YzNote
{
	/*
	 * Into a live map's remote range: the segment has local writes, so that
	 * no read takes the remote bytes for it without looking locally: in the
	 * shared map at once, in the map file now if it can be written (else
	 * the fork stays dirty, and no checkpoint completes until it is
	 * written: a crash before then replays the write from WAL, which marks
	 * the segment again).
	 */
	YZ_NOTE_WRITTEN,
	/*
	 * Into a relation whose map an offload is uploading (pending): the
	 * segment is touched (YzSegInfo.touched), so the offload checks its
	 * pages before freeing them, since these may be newer than the copies
	 * it uploaded.
	 */
	YZ_NOTE_TOUCHED
} YzNote;

/* Notes a write-out of blocks [blocknum, blocknum + nblocks), segment by segment. */
static void
note_writes(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			BlockNumber nblocks, YzNote how)
{
	RelFileLocator l = reln->smgr_rlocator.locator;
	uint64		blk = blocknum;
	uint64		end = (uint64) blocknum + nblocks;

	while (blk < end)
	{
		uint32		segno = (uint32) (blk / RELSEG_SIZE);

		if (how == YZ_NOTE_TOUCHED)
			yz_map_note_pending_write(l.spcOid, l.dbOid, l.relNumber, forknum, segno);
		else if (yz_map_mark_written(l.spcOid, l.dbOid, l.relNumber, forknum,
									 segno, (uint32) (blk % RELSEG_SIZE)))
			yezzey_map_persist(l.spcOid, l.dbOid, l.relNumber, forknum);
		blk = Min((uint64) (segno + 1) * RELSEG_SIZE, end);
	}
}

/*
 * True when writing this page into a segment's remote range would store
 * nothing the object lacks (see the file header).  Cost: one comparison of
 * the page header's LSN.
 */
static inline bool
page_in_object(const void *page, const YzSegInfo *seg, BlockNumber first)
{
	return first < seg->remote_blocks && seg->clean_lsn != 0 &&
		XLogHintBitIsNeeded() &&
		PageGetLSN((Page) page) <= (XLogRecPtr) seg->clean_lsn;
}

/*
 * Writes a range of a relation with remote segments, one segment at a time:
 * pages the object already holds are skipped; runs of other pages are
 * recorded as local writes first, then written by md.
 */
static void
write_segments(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			   const void **buffers, BlockNumber nblocks, bool skipFsync)
{
	BlockNumber i = 0;

	while (i < nblocks)
	{
		BlockNumber blk = blocknum + i;
		BlockNumber first = blk % RELSEG_SIZE;
		BlockNumber run = in_segment(blk, nblocks - i);
		YzSegInfo	seg;
		BlockNumber j = 0;

		if (!segment_of(reln, forknum, blk, &seg))
		{
			mdwritev(reln, forknum, blk, &buffers[i], run, skipFsync);
			i += run;
			continue;
		}
		while (j < run)
		{
			BlockNumber k = j;

			if (page_in_object(buffers[i + j], &seg, first + j))
			{
				j++;
				continue;
			}
			while (k < run && !page_in_object(buffers[i + k], &seg, first + k))
				k++;
			note_writes(reln, forknum, blk + j, k - j, YZ_NOTE_WRITTEN);
			mdwritev(reln, forknum, blk + j, &buffers[i + j], k - j, skipFsync);
			j = k;
		}
		i += run;
	}
}

static void
yz_open(SMgrRelation reln)
{
	COUNT(YZ_CALL_OPEN);
	mdopen(reln);
}

static void
yz_close(SMgrRelation reln, ForkNumber forknum)
{
	COUNT(YZ_CALL_CLOSE);
	mdclose(reln, forknum);
	if (forknum == MAX_FORKNUM && reln->smgr_private != NULL)
	{
		pfree(reln->smgr_private);
		reln->smgr_private = NULL;
	}
}

static void
yz_create(SMgrRelation reln, ForkNumber forknum, bool isRedo)
{
	RelFileLocator l = reln->smgr_rlocator.locator;

	COUNT(YZ_CALL_CREATE);
	mdcreate(reln, forknum, isRedo);

	/*
	 * A reused relfilenumber must not inherit a dropped relation's objects.
	 * Outside redo, md created the file with O_EXCL, so it is new and any
	 * map entries are stale.  Redo calls smgrcreate on existing relations
	 * before replaying into them (XLogReadBufferExtended), so there nothing
	 * may be dropped; a dropped relation's entries went with its unlink.
	 */
	if (!isRedo && has_remote(reln) &&
		yz_map_retire(l.spcOid, l.dbOid, l.relNumber, forknum, 0, 0) > 0)
		yezzey_map_persist(l.spcOid, l.dbOid, l.relNumber, forknum);
}

static bool
yz_exists(SMgrRelation reln, ForkNumber forknum)
{
	COUNT(YZ_CALL_EXISTS);
	return mdexists(reln, forknum);
}

static void
yz_unlink(RelFileLocatorBackend rlocator, ForkNumber forknum, bool isRedo)
{
	RelFileLocator l = rlocator.locator;

	COUNT(YZ_CALL_UNLINK);
	mdunlink(rlocator, forknum, isRedo);
	/*
	 * The relation's objects leave the map: retired at this position, so GC
	 * keeps them for standbys, backups and retention.
	 */
	if (forknum == MAIN_FORKNUM || forknum == InvalidForkNumber)
	{
		if (yz_map_rel_has_remote(l.spcOid, l.dbOid, l.relNumber) &&
			yz_map_retire(l.spcOid, l.dbOid, l.relNumber, -1, 0, 0) > 0)
			yezzey_map_persist(l.spcOid, l.dbOid, l.relNumber, -1);
	}
}

static void
yz_extend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
		  const void *buffer, bool skipFsync)
{
	COUNT(YZ_CALL_EXTEND);
	if (unlikely(has_remote(reln)))
	{
		YzSegInfo	seg;

		(void) segment_of(reln, forknum, blocknum, &seg);	/* refuses a lost map */
		note_writes(reln, forknum, blocknum, 1, YZ_NOTE_WRITTEN);
	}
	mdextend(reln, forknum, blocknum, buffer, skipFsync);
}

static void
yz_zeroextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			  int nblocks, bool skipFsync)
{
	COUNT(YZ_CALL_ZEROEXTEND);
	if (unlikely(has_remote(reln)))
	{
		YzSegInfo	seg;

		(void) segment_of(reln, forknum, blocknum, &seg);	/* refuses a lost map */
		note_writes(reln, forknum, blocknum, nblocks, YZ_NOTE_WRITTEN);
	}
	mdzeroextend(reln, forknum, blocknum, nblocks, skipFsync);
}

static bool
yz_prefetch(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			int nblocks)
{
	COUNT(YZ_CALL_PREFETCH);
	if (unlikely(has_remote(reln)))
	{
		YzSegInfo	seg;
		uint32_t	first = blocknum % RELSEG_SIZE;

		if (segment_of(reln, forknum, blocknum, &seg) && first < seg.remote_blocks)
			yezzey_remote_prefetch(&seg, first, Min((uint32_t) nblocks, seg.remote_blocks - first));
	}
	return mdprefetch(reln, forknum, blocknum, nblocks);
}

static void
yz_readv(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
		 void **buffers, BlockNumber nblocks)
{
	COUNT(YZ_CALL_READV);
	if (likely(!has_remote(reln)))
	{
		mdreadv(reln, forknum, blocknum, buffers, nblocks);
		/*
		 * Checked again after reading: an eviction that started meanwhile
		 * published its map before punching the holes md may have read.
		 */
		if (unlikely(has_remote(reln)))
			read_segments(reln, forknum, blocknum, buffers, nblocks, true);
	}
	else
		read_segments(reln, forknum, blocknum, buffers, nblocks, false);
}

static void
yz_writev(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
		  const void **buffers, BlockNumber nblocks, bool skipFsync)
{
	const YzRelCache *c = rel_cache(reln);

	COUNT(YZ_CALL_WRITEV);
	/* An offload is uploading a fork of it: see YzSegInfo.touched. */
	if (unlikely(c->has_pending))
		note_writes(reln, forknum, blocknum, nblocks, YZ_NOTE_TOUCHED);
	if (unlikely(c->has_remote))
		write_segments(reln, forknum, blocknum, buffers, nblocks, skipFsync);
	else
		mdwritev(reln, forknum, blocknum, buffers, nblocks, skipFsync);
}

static void
yz_writeback(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 BlockNumber nblocks)
{
	COUNT(YZ_CALL_WRITEBACK);
	mdwriteback(reln, forknum, blocknum, nblocks);
}

static BlockNumber
yz_nblocks(SMgrRelation reln, ForkNumber forknum)
{
	COUNT(YZ_CALL_NBLOCKS);
	if (unlikely(has_remote(reln)) && CritSectionCount == 0)
	{
		YzSegInfo	seg;

		/* A scan starts here: an empty answer must not hide a lost map. */
		(void) segment_of(reln, forknum, 0, &seg);
	}
	return mdnblocks(reln, forknum);
}

static void
yz_truncate(SMgrRelation reln, ForkNumber forknum, BlockNumber old_blocks,
			BlockNumber nblocks)
{
	RelFileLocator l = reln->smgr_rlocator.locator;

	COUNT(YZ_CALL_TRUNCATE);
	mdtruncate(reln, forknum, old_blocks, nblocks);
	/*
	 * Blocks past the new end must never be served from an object again
	 * (a re-extended relation reads zeros there).  Runs inside
	 * RelationTruncate's critical section, like md's own ftruncate: the
	 * shared map changes at once, the map file at the next checkpoint
	 * (which fails until it is written; a crash before then replays the
	 * truncation).  Outside one (redo), the file is written now.
	 */
	if (has_remote(reln) &&
		yz_map_truncate(l.spcOid, l.dbOid, l.relNumber, forknum, nblocks, RELSEG_SIZE) > 0 &&
		CritSectionCount == 0)
		yezzey_map_persist(l.spcOid, l.dbOid, l.relNumber, forknum);
}

static void
yz_immedsync(SMgrRelation reln, ForkNumber forknum)
{
	COUNT(YZ_CALL_IMMEDSYNC);
	mdimmedsync(reln, forknum);
}

static void
yz_registersync(SMgrRelation reln, ForkNumber forknum)
{
	COUNT(YZ_CALL_REGISTERSYNC);
	mdregistersync(reln, forknum);
}

static const f_smgr yz_smgr = {
	.smgr_init = NULL,			/* md is initialised as smgr id 0 already */
	.smgr_shutdown = NULL,
	.smgr_open = yz_open,
	.smgr_close = yz_close,
	.smgr_create = yz_create,
	.smgr_exists = yz_exists,
	.smgr_unlink = yz_unlink,
	.smgr_extend = yz_extend,
	.smgr_zeroextend = yz_zeroextend,
	.smgr_prefetch = yz_prefetch,
	.smgr_readv = yz_readv,
	.smgr_writev = yz_writev,
	.smgr_writeback = yz_writeback,
	.smgr_nblocks = yz_nblocks,
	.smgr_truncate = yz_truncate,
	.smgr_immedsync = yz_immedsync,
	.smgr_registersync = yz_registersync,
};

/*
 * Temporary relations stay with md: they are backend-local and never
 * offloaded, so they should not pay for the indirection.
 */
static SMgrId
yz_select(RelFileLocator rlocator, ProcNumber backend)
{
	if (prev_select_hook)
	{
		SMgrId		which = prev_select_hook(rlocator, backend);

		if (which != SMGR_MD)
			return which;		/* another extension claimed it */
	}
	if (backend != INVALID_PROC_NUMBER)
	{
		opened_md++;
		return SMGR_MD;
	}
	opened_yezzey++;
	return yz_smgr_id;
}

int
yz_smgr_install(void)
{
	yz_map_install();
	yz_smgr_id = smgr_register(&yz_smgr);
	prev_select_hook = smgr_select_hook;
	smgr_select_hook = yz_select;
	prev_segment_blocks_hook = md_segment_blocks_hook;
	md_segment_blocks_hook = yz_segment_blocks;
	return yz_smgr_id;
}

const uint64_t *
yz_smgr_call_counts(void)
{
	return call_counts;
}

void
yz_smgr_reset_call_counts(void)
{
	memset(call_counts, 0, sizeof(call_counts));
	opened_yezzey = 0;
	opened_md = 0;
}

uint64_t
yz_smgr_opened_yezzey(void)
{
	return opened_yezzey;
}

uint64_t
yz_smgr_opened_md(void)
{
	return opened_md;
}
