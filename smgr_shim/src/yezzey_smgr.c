/*
 * yezzey_smgr.c: yezzey's storage manager table (see yezzey_smgr.h).
 *
 * Stage 1 (foundation): every permanent relation is routed here and each call
 * forwards to md.  Offloaded segments will be dispatched from these same
 * functions; the md path stays the first, cheap branch.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/md.h"
#include "storage/smgr.h"

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

#define COUNT(c) (call_counts[(c)]++)

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
}

static void
yz_create(SMgrRelation reln, ForkNumber forknum, bool isRedo)
{
	COUNT(YZ_CALL_CREATE);
	mdcreate(reln, forknum, isRedo);
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
	COUNT(YZ_CALL_UNLINK);
	mdunlink(rlocator, forknum, isRedo);
}

static void
yz_extend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
		  const void *buffer, bool skipFsync)
{
	COUNT(YZ_CALL_EXTEND);
	mdextend(reln, forknum, blocknum, buffer, skipFsync);
}

static void
yz_zeroextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			  int nblocks, bool skipFsync)
{
	COUNT(YZ_CALL_ZEROEXTEND);
	mdzeroextend(reln, forknum, blocknum, nblocks, skipFsync);
}

static bool
yz_prefetch(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			int nblocks)
{
	COUNT(YZ_CALL_PREFETCH);
	return mdprefetch(reln, forknum, blocknum, nblocks);
}

static void
yz_readv(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
		 void **buffers, BlockNumber nblocks)
{
	COUNT(YZ_CALL_READV);
	mdreadv(reln, forknum, blocknum, buffers, nblocks);
}

static void
yz_writev(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
		  const void **buffers, BlockNumber nblocks, bool skipFsync)
{
	COUNT(YZ_CALL_WRITEV);
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
	return mdnblocks(reln, forknum);
}

static void
yz_truncate(SMgrRelation reln, ForkNumber forknum, BlockNumber old_blocks,
			BlockNumber nblocks)
{
	COUNT(YZ_CALL_TRUNCATE);
	mdtruncate(reln, forknum, old_blocks, nblocks);
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
	yz_smgr_id = smgr_register(&yz_smgr);
	prev_select_hook = smgr_select_hook;
	smgr_select_hook = yz_select;
	return yz_smgr_id;
}

bool
yz_smgr_installed(void)
{
	return yz_smgr_id >= 0;
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
