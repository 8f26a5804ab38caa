/*
 * yezzey_map.c: the shared-memory map of offloaded segments.
 *
 * One entry per offloaded segment file: (tablespace, database, relfilenumber,
 * fork, segno) -> how many leading blocks of that segment are backed by an
 * object, and the object's id.  A second table counts entries per relation so
 * the storage manager can answer "does this relation have anything remote?"
 * with one probe.  Both sit under one LWLock; every change bumps a generation
 * counter, which per-relation caches (SMgrRelation.smgr_private) compare
 * against on each call, so a relation that was never offloaded costs one
 * atomic read per smgr call.
 *
 * The map is rebuilt from $PGDATA/pg_yezzey at startup and kept in step with
 * WAL by the extension's resource manager; nothing here needs the catalog.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/hsearch.h"

#include "yezzey_smgr.h"

typedef struct YzSegKey
{
	uint32		spc;
	uint32		db;
	uint32		rel;
	int32		fork;
	uint32		segno;
} YzSegKey;

typedef struct YzSegEntry
{
	YzSegKey	key;
	uint32		remote_blocks;
	uint8		object_id[16];
	uint64		writer;
	uint64		clean_lsn;
	bool		written;
} YzSegEntry;

typedef struct YzRelKey
{
	uint32		spc;
	uint32		db;
	uint32		rel;
} YzRelKey;

typedef struct YzRelEntry
{
	YzRelKey	key;
	int32		nsegments;
} YzRelEntry;

typedef struct YzShared
{
	pg_atomic_uint64 generation;
	LWLock	   *lock;
} YzShared;

int			yz_max_segments = 16384;

static YzShared *yz_shared = NULL;
static HTAB *yz_segs = NULL;
static HTAB *yz_rels = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
yz_map_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(YzShared)));
	RequestAddinShmemSpace(hash_estimate_size(yz_max_segments, sizeof(YzSegEntry)));
	RequestAddinShmemSpace(hash_estimate_size(yz_max_segments, sizeof(YzRelEntry)));
	RequestNamedLWLockTranche("yezzey", 1);
}

static void
yz_map_shmem_startup(void)
{
	bool		found;
	HASHCTL		ctl;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	yz_shared = ShmemInitStruct("yezzey map", sizeof(YzShared), &found);
	if (!found)
	{
		pg_atomic_init_u64(&yz_shared->generation, 1);
		yz_shared->lock = &(GetNamedLWLockTranche("yezzey"))->lock;
	}
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(YzSegKey);
	ctl.entrysize = sizeof(YzSegEntry);
	yz_segs = ShmemInitHash("yezzey segments", yz_max_segments, yz_max_segments,
							&ctl, HASH_ELEM | HASH_BLOBS);
	ctl.keysize = sizeof(YzRelKey);
	ctl.entrysize = sizeof(YzRelEntry);
	yz_rels = ShmemInitHash("yezzey relations", yz_max_segments, yz_max_segments,
							&ctl, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);

	/* The postmaster (re)creates shared memory: reload the map from disk. */
	if (!found && !IsUnderPostmaster)
		yezzey_map_load();
}

void
yz_map_install(void)
{
	DefineCustomIntVariable("yezzey.max_segments",
							"Most offloaded segment files the server can track.",
							"Each entry takes about 100 bytes of shared memory.",
							&yz_max_segments, 16384, 16, 16 * 1024 * 1024,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = yz_map_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = yz_map_shmem_startup;
}

uint64_t
yz_map_generation(void)
{
	/* Before shared memory exists (bootstrap), nothing is remote. */
	if (yz_shared == NULL)
		return 0;
	return pg_atomic_read_u64(&yz_shared->generation);
}

bool
yz_map_rel_has_remote(uint32_t spc, uint32_t db, uint32_t rel)
{
	YzRelKey	key = {spc, db, rel};
	YzRelEntry *e;
	bool		result;

	if (yz_shared == NULL)
		return false;
	LWLockAcquire(yz_shared->lock, LW_SHARED);
	e = hash_search(yz_rels, &key, HASH_FIND, NULL);
	result = e != NULL && e->nsegments > 0;
	LWLockRelease(yz_shared->lock);
	return result;
}

bool
yz_map_get(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
		   uint32_t segno, YzSegInfo *out)
{
	YzSegKey	key = {spc, db, rel, fork, segno};
	YzSegEntry *e;

	if (yz_shared == NULL)
		return false;
	LWLockAcquire(yz_shared->lock, LW_SHARED);
	e = hash_search(yz_segs, &key, HASH_FIND, NULL);
	if (e)
	{
		out->spc = spc;
		out->db = db;
		out->rel = rel;
		out->fork = fork;
		out->segno = segno;
		out->remote_blocks = e->remote_blocks;
		memcpy(out->object_id, e->object_id, 16);
		out->writer = e->writer;
		out->clean_lsn = e->clean_lsn;
		out->written = e->written;
	}
	LWLockRelease(yz_shared->lock);
	return e != NULL;
}

static void
bump(void)
{
	pg_write_barrier();
	pg_atomic_fetch_add_u64(&yz_shared->generation, 1);
}

/* Caller holds the lock exclusively. */
static void
remove_entry(YzSegKey *key)
{
	YzRelKey	rkey = {key->spc, key->db, key->rel};
	YzRelEntry *r;

	if (hash_search(yz_segs, key, HASH_REMOVE, NULL) == NULL)
		return;
	r = hash_search(yz_rels, &rkey, HASH_FIND, NULL);
	if (r && --r->nsegments <= 0)
		hash_search(yz_rels, &rkey, HASH_REMOVE, NULL);
}

bool
yz_map_put(const YzSegInfo *seg)
{
	YzSegKey	key = {seg->spc, seg->db, seg->rel, seg->fork, seg->segno};
	YzRelKey	rkey = {seg->spc, seg->db, seg->rel};
	YzSegEntry *e;
	YzRelEntry *r;
	bool		found;

	LWLockAcquire(yz_shared->lock, LW_EXCLUSIVE);
	e = hash_search(yz_segs, &key, HASH_ENTER_NULL, &found);
	if (e == NULL)
	{
		LWLockRelease(yz_shared->lock);
		return false;
	}
	if (!found)
	{
		r = hash_search(yz_rels, &rkey, HASH_ENTER_NULL, &found);
		if (r == NULL)
		{
			hash_search(yz_segs, &key, HASH_REMOVE, NULL);
			LWLockRelease(yz_shared->lock);
			return false;
		}
		if (!found)
			r->nsegments = 0;
		r->nsegments++;
	}
	e->remote_blocks = seg->remote_blocks;
	memcpy(e->object_id, seg->object_id, 16);
	e->writer = seg->writer;
	e->clean_lsn = seg->clean_lsn;
	e->written = seg->written;
	bump();
	LWLockRelease(yz_shared->lock);
	return true;
}

bool
yz_map_mark_written(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
					uint32_t segno, uint32_t first)
{
	YzSegKey	key = {spc, db, rel, fork, segno};
	YzSegEntry *e;
	bool		changed = false;

	if (yz_shared == NULL)
		return false;
	LWLockAcquire(yz_shared->lock, LW_EXCLUSIVE);
	e = hash_search(yz_segs, &key, HASH_FIND, NULL);
	if (e != NULL && !e->written && first < e->remote_blocks)
	{
		/* Readers fetch entries per read, not cached: no generation bump. */
		e->written = true;
		changed = true;
	}
	LWLockRelease(yz_shared->lock);
	return changed;
}

int
yz_map_remove(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork)
{
	HASH_SEQ_STATUS scan;
	YzSegEntry *e;
	int			removed = 0;
	YzSegKey	victims[64];
	int			n;

	if (yz_shared == NULL)
		return 0;
	LWLockAcquire(yz_shared->lock, LW_EXCLUSIVE);
	/* Collect in batches: entries must not be removed mid-scan. */
	do
	{
		n = 0;
		hash_seq_init(&scan, yz_segs);
		while ((e = hash_seq_search(&scan)) != NULL)
		{
			if (e->key.spc == spc && e->key.db == db && e->key.rel == rel &&
				(fork < 0 || e->key.fork == fork))
			{
				victims[n++] = e->key;
				if (n == lengthof(victims))
				{
					hash_seq_term(&scan);
					break;
				}
			}
		}
		for (int i = 0; i < n; i++)
			remove_entry(&victims[i]);
		removed += n;
	} while (n == lengthof(victims));
	if (removed > 0)
		bump();
	LWLockRelease(yz_shared->lock);
	return removed;
}

int
yz_map_truncate(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
				uint32_t nblocks, uint32_t blocks_per_segment)
{
	HASH_SEQ_STATUS scan;
	YzSegEntry *e;
	int			changed = 0;

	if (yz_shared == NULL)
		return 0;
	LWLockAcquire(yz_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&scan, yz_segs);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		uint64		start;
		uint32		keep;

		if (e->key.spc != spc || e->key.db != db || e->key.rel != rel || e->key.fork != fork)
			continue;
		start = (uint64) e->key.segno * blocks_per_segment;
		keep = nblocks <= start ? 0 : (uint32) Min((uint64) e->remote_blocks, nblocks - start);
		if (keep != e->remote_blocks)
		{
			/* Zero remote blocks: the entry stays (GC still sees the object) but serves nothing. */
			e->remote_blocks = keep;
			changed++;
		}
	}
	if (changed > 0)
		bump();
	LWLockRelease(yz_shared->lock);
	return changed;
}
