/*
 * yezzey_map.c: the shared map of offloaded relation forks.
 *
 * Three dshash tables in one DSA area, so the map grows with what is
 * offloaded instead of filling up (a warehouse of 10,000 tables offloads
 * 30,000 forks or more; redo on a standby must never find the map full):
 *
 *   forks     (spc, db, rel, fork) -> the fork's whole map: state, offload
 *             LSN and time, writer, and its segments (an array in the area);
 *   rels      (spc, db, rel) -> how many forks are visible (LIVE or BROKEN)
 *             and pending, so "does this relation have anything remote?" is
 *             one probe;
 *   retiring  object id -> an object that left the map, until its retired
 *             record in pg_yezzey/retired is durable.
 *
 * The area starts in the main shared memory segment (the postmaster cannot
 * use dynamic shared memory) and grows in DSM segments; the postmaster only
 * creates the empty tables.  The first process that needs the map loads it
 * from pg_yezzey/map (yezzey_map_load), under a lock, before anything else
 * reads it.  Every change that readers must notice bumps a generation
 * counter, which per-relation caches (SMgrRelation.smgr_private) compare on
 * each call, so a relation that was never offloaded costs one atomic read
 * per smgr call.
 *
 * While the server runs this map is the authority; the map files are its
 * durable image (see the extension's map module).  Every change marks the
 * fork dirty; the extension writes dirty forks' files eagerly where it can,
 * and every checkpoint writes the rest or fails.
 *
 * yezzey.max_map_memory bounds what offloads may add (they refuse before
 * uploading anything); redo and startup are never refused.
 */
#include "postgres.h"

#include <time.h>

#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "lib/dshash.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/dsa.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "yezzey_smgr.h"

/* Of the main shared memory segment: the tables' first buckets. */
#define YZ_INPLACE_SIZE (1024 * 1024)

typedef struct YzForkKey
{
	uint32		spc;
	uint32		db;
	uint32		rel;
	int32		fork;
} YzForkKey;

typedef struct YzRelKey
{
	uint32		spc;
	uint32		db;
	uint32		rel;
} YzRelKey;

/* One segment of a fork, in the fork's array. */
typedef struct YzSegData
{
	uint32		segno;
	uint32		remote_blocks;
	uint8		object_id[16];
	uint64		raw_len;
	uint64		stored_len;
	bool		written;
	bool		touched;		/* see YzSegInfo */
	uint32		nlayers;
	YzLayerInfo layers[YZ_MAX_LAYERS];
} YzSegData;

typedef struct YzForkEntry
{
	YzForkKey	key;
	uint8		state;
	bool		evicted;
	bool		page_checksums;
	bool		dirty;
	int32		content;
	int32		owner_pid;
	uint64		writer;
	int64		offloaded_at;
	uint64		lsn;
	uint64		clean_lsn;
	uint64		version;
	uint32		nsegs;
	dsa_pointer segs;			/* YzSegData[nsegs] */
	/* A re-offload's staged array (yz_map_stage), or after its promotion the old one. */
	int32		next_owner;		/* the process that staged it (0: none) */
	uint32		next_nsegs;
	dsa_pointer next_segs;
} YzForkEntry;

typedef struct YzRelEntry
{
	YzRelKey	key;
	int32		nvisible;		/* LIVE or BROKEN forks */
	int32		npending;
} YzRelEntry;

typedef struct YzRetiringEntry
{
	uint8		object_id[16];
	YzRetiring	r;
} YzRetiringEntry;

typedef struct YzShared
{
	pg_atomic_uint64 generation;
	pg_atomic_uint64 switches;	/* re-offloads promoted */
	pg_atomic_uint32 keys_changed;
	uint64		boot_id;
	int			tranche_id;
	LWLock	   *load_lock;
	bool		loaded;			/* under load_lock */
	dshash_table_handle forks_handle;
	dshash_table_handle rels_handle;
	dshash_table_handle retiring_handle;
	char		area[FLEXIBLE_ARRAY_MEMBER];
} YzShared;

static int	yz_max_map_memory_kb = 1024 * 1024;

static YzShared *yz_shared = NULL;

/* This process's attachment. */
static dsa_area *yz_area = NULL;
static dshash_table *yz_forks = NULL;
static dshash_table *yz_rels = NULL;
static dshash_table *yz_retiring = NULL;
static bool yz_known_loaded = false;
static bool yz_loading = false;
static bool yz_exit_registered = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static checkpoint_hook_type prev_checkpoint_hook = NULL;

static dshash_parameters forks_params = {
	sizeof(YzForkKey), sizeof(YzForkEntry),
	dshash_memcmp, dshash_memhash, dshash_memcpy, 0
};
static dshash_parameters rels_params = {
	sizeof(YzRelKey), sizeof(YzRelEntry),
	dshash_memcmp, dshash_memhash, dshash_memcpy, 0
};
static dshash_parameters retiring_params = {
	16, sizeof(YzRetiringEntry),
	dshash_memcmp, dshash_memhash, dshash_memcpy, 0
};

static Size
yz_shared_size(void)
{
	return add_size(offsetof(YzShared, area), YZ_INPLACE_SIZE);
}

static void
yz_map_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(yz_shared_size()));
	RequestNamedLWLockTranche("yezzey", 1);
}

static void
set_tranches(int tranche)
{
	forks_params.tranche_id = tranche;
	rels_params.tranche_id = tranche;
	retiring_params.tranche_id = tranche;
}

static void
yz_map_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	yz_shared = ShmemInitStruct("yezzey map", yz_shared_size(), &found);
	if (!found)
	{
		dsa_area   *area;
		dshash_table *t;

		pg_atomic_init_u64(&yz_shared->generation, 1);
		pg_atomic_init_u64(&yz_shared->switches, 0);
		pg_atomic_init_u32(&yz_shared->keys_changed, 0);
		yz_shared->boot_id = (uint64) GetCurrentTimestamp();
		yz_shared->load_lock = &(GetNamedLWLockTranche("yezzey"))->lock;
		yz_shared->loaded = false;
		yz_shared->tranche_id = LWLockNewTrancheId();
		set_tranches(yz_shared->tranche_id);

		/* As pgstat does: the tables' heads in plain shared memory. */
		area = dsa_create_in_place(yz_shared->area, YZ_INPLACE_SIZE,
								   yz_shared->tranche_id, NULL);
		dsa_pin(area);
		dsa_set_size_limit(area, YZ_INPLACE_SIZE);
		t = dshash_create(area, &forks_params, NULL);
		yz_shared->forks_handle = dshash_get_hash_table_handle(t);
		dshash_detach(t);
		t = dshash_create(area, &rels_params, NULL);
		yz_shared->rels_handle = dshash_get_hash_table_handle(t);
		dshash_detach(t);
		t = dshash_create(area, &retiring_params, NULL);
		yz_shared->retiring_handle = dshash_get_hash_table_handle(t);
		dshash_detach(t);
		dsa_set_size_limit(area, (size_t) -1);
		dsa_detach(area);
	}
	LWLockRelease(AddinShmemInitLock);

	/* The postmaster (re)created shared memory: this start's identity. */
	if (!found && !IsUnderPostmaster)
		yezzey_shmem_created();
}

static void
yz_checkpoint_hook(XLogRecPtr redo, int flags)
{
	if (prev_checkpoint_hook)
		prev_checkpoint_hook(redo, flags);
	yezzey_checkpoint(redo, flags);
}

void
yz_map_install(void)
{
	DefineCustomIntVariable("yezzey.max_map_memory",
							"Most shared memory offloads may make the map of offloaded segments take.",
							"An offload that would need more refuses before uploading anything; "
							"WAL replay and startup are never refused. 0: no limit. "
							"A segment takes about 600 bytes (18 MB for 30,000).",
							&yz_max_map_memory_kb, 1024 * 1024, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_KB, NULL, NULL, NULL);
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = yz_map_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = yz_map_shmem_startup;
	prev_checkpoint_hook = checkpoint_hook;
	checkpoint_hook = yz_checkpoint_hook;
}

static void drop_pending_of(int pid);
static void settle_holds_of(int pid, const YzForkKey *only, uint64 lsn, int64 at);

/*
 * An exiting process's failed offloads leave no pending forks, staged
 * arrays or holds behind.
 */
static void
yz_map_at_exit(int code, Datum arg)
{
	/* A FATAL raised while holding a partition lock would deadlock below. */
	LWLockReleaseAll();
	drop_pending_of(MyProcPid);
	settle_holds_of(MyProcPid, NULL, 0, 0);
}

static void
register_exit(void)
{
	if (!yz_exit_registered)
	{
		before_shmem_exit(yz_map_at_exit, 0);
		yz_exit_registered = true;
	}
}

static void
attach(void)
{
	MemoryContext old;

	set_tranches(yz_shared->tranche_id);
	old = MemoryContextSwitchTo(TopMemoryContext);
	yz_area = dsa_attach_in_place(yz_shared->area, NULL);
	dsa_pin_mapping(yz_area);
	yz_forks = dshash_attach(yz_area, &forks_params, yz_shared->forks_handle, NULL);
	yz_rels = dshash_attach(yz_area, &rels_params, yz_shared->rels_handle, NULL);
	yz_retiring = dshash_attach(yz_area, &retiring_params, yz_shared->retiring_handle, NULL);
	MemoryContextSwitchTo(old);
	LWLockRegisterTranche(yz_shared->tranche_id, "yezzey map");
}

/*
 * Attaches this process and makes sure the map was loaded from disk; false
 * before shared memory exists (bootstrap).  The first call in the whole
 * server loads the map files, under the load lock (others wait).
 */
static bool
ready(void)
{
	if (likely(yz_known_loaded))
		return true;
	if (yz_shared == NULL)
		return false;
	if (yz_forks == NULL)
		attach();
	if (yz_loading)
		return true;			/* the loader's own puts */
	LWLockAcquire(yz_shared->load_lock, LW_EXCLUSIVE);
	if (!yz_shared->loaded)
	{
		yz_loading = true;
		PG_TRY();
		{
			yezzey_map_load();
		}
		PG_FINALLY();
		{
			yz_loading = false;
		}
		PG_END_TRY();
		yz_shared->loaded = true;
	}
	LWLockRelease(yz_shared->load_lock);
	yz_known_loaded = true;
	return true;
}

uint64_t
yz_map_generation(void)
{
	/* Before shared memory exists (bootstrap), nothing is remote. */
	if (yz_shared == NULL)
		return 0;
	return pg_atomic_read_u64(&yz_shared->generation);
}

uint64_t
yz_boot_id(void)
{
	return yz_shared ? yz_shared->boot_id : 0;
}

static void
bump(void)
{
	pg_write_barrier();
	pg_atomic_fetch_add_u64(&yz_shared->generation, 1);
}

bool
yz_map_rel_has_remote(uint32_t spc, uint32_t db, uint32_t rel)
{
	bool		pending;

	return yz_map_rel_forks(spc, db, rel, &pending);
}

bool
yz_map_rel_forks(uint32_t spc, uint32_t db, uint32_t rel, bool *pending)
{
	YzRelKey	key = {spc, db, rel};
	YzRelEntry *e;
	bool		result;

	*pending = false;
	if (!ready())
		return false;
	e = dshash_find(yz_rels, &key, false);
	if (e == NULL)
		return false;
	result = e->nvisible > 0;
	*pending = e->npending > 0;
	dshash_release_lock(yz_rels, e);
	return result;
}

static inline bool
visible(uint8 state)
{
	return state == YZ_FORK_LIVE || state == YZ_FORK_BROKEN;
}

/*
 * Adjusts a relation's counts for a fork leaving state `from` (0: none) for
 * `to` (0: none).  The relation's entry exists while it has a fork (it is
 * made when the first fork is put, so that later state changes need no
 * memory).  Caller holds the fork's entry.
 */
static void
count(const YzForkKey *fk, uint8 from, uint8 to)
{
	YzRelKey	rkey = {fk->spc, fk->db, fk->rel};
	YzRelEntry *r;

	if (from == 0)
	{
		bool		found;

		r = dshash_find_or_insert(yz_rels, &rkey, &found);
		if (!found)
			r->nvisible = r->npending = 0;
	}
	else
		r = dshash_find(yz_rels, &rkey, true);
	if (r == NULL)
		return;
	r->nvisible += (visible(to) ? 1 : 0) - (visible(from) ? 1 : 0);
	r->npending += (to == YZ_FORK_PENDING ? 1 : 0) - (from == YZ_FORK_PENDING ? 1 : 0);
	if (to == 0 && r->nvisible <= 0 && r->npending <= 0)
	{
		/* Its last fork is going: the fork's entry is removed next. */
		dshash_delete_entry(yz_rels, r);
		return;
	}
	dshash_release_lock(yz_rels, r);
}

/*
 * A fork's entry, locked (shared or exclusive; release it with
 * dshash_release_lock), or NULL: no such fork, or no shared memory yet.
 */
static YzForkEntry *
find_fork(uint32 spc, uint32 db, uint32 rel, int32 fork, bool exclusive)
{
	YzForkKey	key = {spc, db, rel, fork};

	if (!ready())
		return NULL;
	return dshash_find(yz_forks, &key, exclusive);
}

static const YzSegData *
find_seg(const YzForkEntry *e, uint32 segno)
{
	const YzSegData *s;

	if (e->nsegs == 0)
		return NULL;
	s = dsa_get_address(yz_area, e->segs);
	if (segno < e->nsegs && s[segno].segno == segno)
		return &s[segno];
	for (uint32 i = 0; i < e->nsegs; i++)
		if (s[i].segno == segno)
			return &s[i];
	return NULL;
}

static void
fill_info(const YzForkEntry *e, const YzSegData *s, YzSegInfo *out)
{
	out->spc = e->key.spc;
	out->db = e->key.db;
	out->rel = e->key.rel;
	out->fork = e->key.fork;
	out->segno = s->segno;
	out->remote_blocks = s->remote_blocks;
	memcpy(out->object_id, s->object_id, 16);
	out->writer = e->writer;
	out->clean_lsn = e->clean_lsn;
	out->raw_len = s->raw_len;
	out->stored_len = s->stored_len;
	out->written = s->written;
	out->touched = s->touched;
	out->page_checksums = e->page_checksums;
	out->nlayers = s->nlayers;
	memcpy(out->layers, s->layers, sizeof(YzLayerInfo) * s->nlayers);
}

/* Whether two segments are served by the same objects (base and layers). */
static bool
same_objects(const YzSegData *a, const YzSegData *b)
{
	return memcmp(a->object_id, b->object_id, 16) == 0 &&
		a->nlayers == b->nlayers &&
		memcmp(a->layers, b->layers, sizeof(YzLayerInfo) * a->nlayers) == 0;
}

/* Whether a segment is served by an object, as its base or as a layer. */
static bool
seg_names(const YzSegData *s, const uint8 *object_id)
{
	if (memcmp(s->object_id, object_id, 16) == 0)
		return true;
	for (uint32 k = 0; k < s->nlayers; k++)
		if (memcmp(s->layers[k].object_id, object_id, 16) == 0)
			return true;
	return false;
}

int
yz_map_get(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
		   uint32_t segno, YzSegInfo *out)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, false);
	const YzSegData *s;
	int			result = 0;

	if (e == NULL)
		return 0;
	if (e->state == YZ_FORK_BROKEN)
		result = -1;
	else if (e->state == YZ_FORK_LIVE && (s = find_seg(e, segno)) != NULL)
	{
		fill_info(e, s, out);
		result = 1;
	}
	dshash_release_lock(yz_forks, e);
	return result;
}

/*
 * Finds or makes a fork's entry, locked, with the relation's counts moved
 * to `state`; what the entry was comes back in `old_state`, `old_segs`.
 */
static YzForkEntry *
insert_counted(const YzForkKey *key, uint8 state, uint8 *old_state, dsa_pointer *old_segs)
{
	bool		found;
	YzForkEntry *e = dshash_find_or_insert(yz_forks, key, &found);

	if (found)
	{
		*old_state = e->state;
		*old_segs = e->segs;
		e->version++;
	}
	else
	{
		e->state = 0;
		e->nsegs = 0;
		e->segs = InvalidDsaPointer;
		e->next_owner = 0;
		e->next_nsegs = 0;
		e->next_segs = InvalidDsaPointer;
		e->version = 1;
	}
	count(key, *old_state, state);
	return e;
}

/* A segment array in the map's area, copied from `segs`; invalid if memory does not allow. */
static dsa_pointer
alloc_segs(const YzSegInfo *segs, uint32 nsegs, bool within_limit)
{
	dsa_pointer dp;
	YzSegData  *arr;

	/* The extension never makes more; dropping some would serve old pages. */
	for (uint32 i = 0; i < nsegs; i++)
		if (segs[i].nlayers > YZ_MAX_LAYERS)
			elog(ERROR, "yezzey: segment %u has %u layers (at most %d)",
				 segs[i].segno, segs[i].nlayers, YZ_MAX_LAYERS);
	if (within_limit && yz_max_map_memory_kb > 0 &&
		dsa_get_total_size(yz_area) + (Size) nsegs * sizeof(YzSegData) + 1024 >
		(Size) yz_max_map_memory_kb * 1024)
		return InvalidDsaPointer;
	dp = dsa_allocate_extended(yz_area, (Size) Max(nsegs, 1) * sizeof(YzSegData),
							   DSA_ALLOC_NO_OOM | DSA_ALLOC_HUGE);
	if (!DsaPointerIsValid(dp))
		return InvalidDsaPointer;
	arr = dsa_get_address(yz_area, dp);
	for (uint32 i = 0; i < nsegs; i++)
	{
		arr[i].segno = segs[i].segno;
		arr[i].remote_blocks = segs[i].remote_blocks;
		memcpy(arr[i].object_id, segs[i].object_id, 16);
		arr[i].raw_len = segs[i].raw_len;
		arr[i].stored_len = segs[i].stored_len;
		arr[i].written = segs[i].written;
		arr[i].touched = segs[i].touched;
		arr[i].nlayers = segs[i].nlayers;
		memcpy(arr[i].layers, segs[i].layers, sizeof(YzLayerInfo) * arr[i].nlayers);
	}
	return dp;
}

/* Sets the touched flags of `to` that `from` (a segment array) has. */
static void
carry_touched(const YzSegData *from, uint32 nfrom, YzSegData *to, uint32 nto)
{
	for (uint32 i = 0; i < nto; i++)
		for (uint32 j = 0; j < nfrom; j++)
			if (from[j].segno == to[i].segno && from[j].touched)
				to[i].touched = true;
}

/* The fields of a fork's head that say which offload its map is from. */
static void
set_offload(YzForkEntry *e, const YzForkHead *head)
{
	e->writer = head->writer;
	e->offloaded_at = head->offloaded_at;
	e->lsn = head->lsn;
	e->clean_lsn = head->clean_lsn;
	e->page_checksums = head->page_checksums;
}

bool
yz_map_put_fork(const YzForkHead *head, const YzSegInfo *segs, uint32_t nsegs,
				bool within_limit)
{
	YzForkKey	key = {head->spc, head->db, head->rel, head->fork};
	YzForkEntry *e;
	volatile dsa_pointer dp = InvalidDsaPointer;
	/* Written inside PG_TRY (through pointers), read only after it. */
	volatile dsa_pointer old_segs = InvalidDsaPointer;
	volatile uint8 old_state = 0;

	if (!ready())
		return false;
	if (nsegs > 0)
	{
		dp = alloc_segs(segs, nsegs, within_limit);
		if (!DsaPointerIsValid(dp))
			return false;
	}
	else if (within_limit && yz_max_map_memory_kb > 0 &&
			 dsa_get_total_size(yz_area) + 1024 > (Size) yz_max_map_memory_kb * 1024)
		return false;
	if (head->state == YZ_FORK_PENDING)
		register_exit();
	/*
	 * The tables may need memory (an ERROR if dynamic shared memory cannot
	 * grow): the segment array goes back, and a new entry is left in state
	 * 0, which nobody sees, until a later put fills it.
	 */
	PG_TRY();
	{
		e = insert_counted(&key, head->state, (uint8 *) &old_state,
						   (dsa_pointer *) &old_segs);
	}
	PG_CATCH();
	{
		if (DsaPointerIsValid(dp))
			dsa_free(yz_area, dp);
		PG_RE_THROW();
	}
	PG_END_TRY();
	e->state = head->state;
	e->evicted = head->evicted;
	e->dirty = head->dirty;
	e->content = head->content;
	e->owner_pid = head->state == YZ_FORK_PENDING ? MyProcPid : 0;
	set_offload(e, head);
	/* A pending map put again keeps what was written out meanwhile. */
	if (old_state == YZ_FORK_PENDING && head->state == YZ_FORK_PENDING &&
		DsaPointerIsValid(old_segs) && DsaPointerIsValid(dp))
		carry_touched(dsa_get_address(yz_area, old_segs), e->nsegs,
					  dsa_get_address(yz_area, dp), nsegs);
	e->nsegs = nsegs;
	e->segs = dp;
	dshash_release_lock(yz_forks, e);
	if (DsaPointerIsValid(old_segs))
		dsa_free(yz_area, old_segs);
	/* Pending maps too: the write path notes writes to their relations. */
	if (visible(old_state) || visible(head->state) ||
		old_state == YZ_FORK_PENDING || head->state == YZ_FORK_PENDING)
		bump();
	if (visible(old_state) != visible(head->state))
		pg_atomic_write_u32(&yz_shared->keys_changed, 1);
	return true;
}

static void
fill_head(const YzForkEntry *e, YzForkHead *h)
{
	h->spc = e->key.spc;
	h->db = e->key.db;
	h->rel = e->key.rel;
	h->fork = e->key.fork;
	h->state = e->state;
	h->evicted = e->evicted;
	h->page_checksums = e->page_checksums;
	h->dirty = e->dirty;
	h->content = e->content;
	h->owner_pid = e->owner_pid;
	h->writer = e->writer;
	h->offloaded_at = e->offloaded_at;
	h->lsn = e->lsn;
	h->clean_lsn = e->clean_lsn;
	h->version = e->version;
	h->nsegs = e->nsegs;
}

bool
yz_map_get_fork(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
				YzForkHead *head, YzSegInfo *segs, uint32_t max)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, false);

	if (e == NULL)
		return false;
	if (e->state == 0)
	{
		dshash_release_lock(yz_forks, e);
		return false;
	}
	fill_head(e, head);
	if (e->nsegs > 0)
	{
		const YzSegData *s = dsa_get_address(yz_area, e->segs);

		for (uint32 i = 0; i < e->nsegs && i < max; i++)
			fill_info(e, &s[i], &segs[i]);
	}
	dshash_release_lock(yz_forks, e);
	return true;
}

bool
yz_map_set_state(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
				 uint8_t from, uint8_t to)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, true);

	if (e == NULL)
		return false;
	if (e->state != from)
	{
		dshash_release_lock(yz_forks, e);
		return false;
	}
	count(&e->key, from, to);
	e->state = to;
	e->version++;
	e->dirty = true;
	if (to != YZ_FORK_PENDING)
		e->owner_pid = 0;
	dshash_release_lock(yz_forks, e);
	bump();
	if (visible(from) != visible(to))
		pg_atomic_write_u32(&yz_shared->keys_changed, 1);
	return true;
}

bool
yz_map_set_evicted(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, true);

	if (e == NULL)
		return false;
	if (!e->evicted)
	{
		e->evicted = true;
		e->version++;
		e->dirty = true;
	}
	dshash_release_lock(yz_forks, e);
	return true;
}

void
yz_map_mark_clean(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
				  uint64_t version)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, true);

	if (e == NULL)
		return;
	if (e->version == version)
		e->dirty = false;
	dshash_release_lock(yz_forks, e);
}

uint32_t
yz_map_list(YzForkHead *out, uint32_t max)
{
	dshash_seq_status scan;
	YzForkEntry *e;
	uint32		n = 0;

	if (!ready())
		return 0;
	dshash_seq_init(&scan, yz_forks, false);
	while ((e = dshash_seq_next(&scan)) != NULL)
	{
		if (e->state == 0)
			continue;			/* a put that failed half way */
		if (n < max)
			fill_head(e, &out[n]);
		n++;
	}
	dshash_seq_term(&scan);
	return n;
}

static uint64
position_now(void)
{
	return RecoveryInProgress() ? GetXLogReplayRecPtr(NULL) : GetXLogInsertRecPtr();
}

/*
 * Removes one fork; a LIVE fork's segments go to the retiring list.  Caller
 * holds the entry exclusively (released here).
 */
static void
remove_fork(YzForkEntry *e, uint64 lsn, int64 at)
{
	YzForkKey	key = e->key;
	uint8		state = e->state;
	dsa_pointer segs = e->segs;
	dsa_pointer next_segs = e->next_segs;

	if (state == YZ_FORK_LIVE && e->nsegs > 0)
	{
		const YzSegData *s = dsa_get_address(yz_area, segs);

		/* Every object of every segment: its base (k = 0), then its layers. */
		for (uint32 i = 0; i < e->nsegs; i++)
			for (uint32 k = 0; k <= s[i].nlayers; k++)
			{
				const uint8 *id = k == 0 ? s[i].object_id : s[i].layers[k - 1].object_id;
				YzRetiringEntry *r;
				bool		found;

				r = dshash_find_or_insert(yz_retiring, id, &found);
				fill_info(e, &s[i], &r->r.seg);
				memcpy(r->r.seg.object_id, id, 16);
				if (k > 0)
				{
					r->r.seg.raw_len = s[i].layers[k - 1].raw_len;
					r->r.seg.stored_len = s[i].layers[k - 1].stored_len;
				}
				r->r.seg.nlayers = 0;
				r->r.content = e->content;
				r->r.owner_pid = 0;
				r->r.hold = YZ_HOLD_NONE;
				r->r.lsn = lsn;
				r->r.at = at;
				dshash_release_lock(yz_retiring, r);
			}
	}
	if (state != 0)
		count(&key, state, 0);
	dshash_delete_entry(yz_forks, e);
	if (DsaPointerIsValid(segs))
		dsa_free(yz_area, segs);
	if (DsaPointerIsValid(next_segs))
		dsa_free(yz_area, next_segs);
	if (visible(state))
	{
		bump();
		pg_atomic_write_u32(&yz_shared->keys_changed, 1);
	}
	else if (state == YZ_FORK_PENDING)
		bump();					/* relation caches drop has_pending */
}

int
yz_map_retire(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
			  uint64_t lsn, int64_t at)
{
	int			removed = 0;

	for (int f = (fork < 0 ? 0 : fork); f <= (fork < 0 ? MAX_FORKNUM : fork); f++)
	{
		YzForkEntry *e = find_fork(spc, db, rel, f, true);

		if (e == NULL)
			continue;
		remove_fork(e, lsn ? lsn : position_now(), at ? at : (int64) time(NULL));
		removed++;
	}
	return removed;
}

void
yz_map_drop_pending(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, true);

	if (e == NULL)
		return;
	if (e->state == YZ_FORK_PENDING && e->owner_pid == MyProcPid)
		remove_fork(e, 0, 0);
	else
		dshash_release_lock(yz_forks, e);
}

static void
drop_pending_of(int pid)
{
	dshash_seq_status scan;
	YzForkEntry *e;
	bool		dropped = false;

	if (yz_forks == NULL)
		return;
	dshash_seq_init(&scan, yz_forks, true);
	while ((e = dshash_seq_next(&scan)) != NULL)
	{
		if (e->state == YZ_FORK_PENDING && e->owner_pid == pid)
		{
			dsa_pointer segs = e->segs;
			YzForkKey	key = e->key;

			/* The relation's entry: another table, locked after this one. */
			count(&key, YZ_FORK_PENDING, 0);
			dshash_delete_current(&scan);
			if (DsaPointerIsValid(segs))
				dsa_free(yz_area, segs);
			dropped = true;
		}
	}
	dshash_seq_term(&scan);
	if (dropped)
		bump();					/* relation caches drop has_pending */
}

uint32_t
yz_map_list_retiring(YzRetiring *out, uint32_t max)
{
	dshash_seq_status scan;
	YzRetiringEntry *e;
	uint32		n = 0;

	if (!ready())
		return 0;
	dshash_seq_init(&scan, yz_retiring, false);
	while ((e = dshash_seq_next(&scan)) != NULL)
	{
		if (n < max)
			out[n] = e->r;
		n++;
	}
	dshash_seq_term(&scan);
	return n;
}

void
yz_map_drop_retiring(const uint8_t *object_id)
{
	if (!ready())
		return;
	dshash_delete_key(yz_retiring, object_id);
}

bool
yz_map_stage(const YzForkHead *head, const YzSegInfo *segs, uint32_t nsegs,
			 bool within_limit)
{
	YzForkEntry *e;
	dsa_pointer dp;
	bool		ok = false;

	if (!ready())
		return false;
	dp = alloc_segs(segs, nsegs, within_limit);
	if (!DsaPointerIsValid(dp))
		return false;
	register_exit();
	e = find_fork(head->spc, head->db, head->rel, head->fork, true);
	if (e != NULL)
	{
		if (e->state == YZ_FORK_LIVE && e->next_owner == 0 &&
			!DsaPointerIsValid(e->next_segs))
		{
			e->next_owner = MyProcPid;
			e->next_nsegs = nsegs;
			e->next_segs = dp;
			ok = true;
		}
		dshash_release_lock(yz_forks, e);
	}
	if (!ok)
		dsa_free(yz_area, dp);
	return ok;
}

/*
 * Puts an entry on the retiring list as `r` says, owned by `owner` with
 * `hold`; an entry already there is replaced only if `replace`.
 */
static void
put_retiring(const YzRetiring *r, int32 owner, uint8 hold, bool replace)
{
	YzRetiringEntry *h;
	bool		found;

	if (!ready())
		return;
	h = dshash_find_or_insert(yz_retiring, r->seg.object_id, &found);
	if (!found || replace)
	{
		h->r = *r;
		h->r.owner_pid = owner;
		h->r.hold = hold;
	}
	dshash_release_lock(yz_retiring, h);
}

void
yz_map_hold(const YzRetiring *r)
{
	YzRetiring	held = *r;

	register_exit();
	held.lsn = 0;
	held.at = 0;
	put_retiring(&held, MyProcPid, r->hold != YZ_HOLD_NONE ? r->hold : YZ_HOLD_NEW, false);
}

static bool
in_segs(const YzSegData *s, uint32 n, const uint8 *object_id)
{
	for (uint32 i = 0; i < n; i++)
		if (seg_names(&s[i], object_id))
			return true;
	return false;
}

bool
yz_map_promote(const YzForkHead *head)
{
	YzForkEntry *e = find_fork(head->spc, head->db, head->rel, head->fork, true);
	YzSegData  *now;
	const YzSegData *was;
	uint32		nnow;
	dsa_pointer old;
	uint32		nold;

	if (e == NULL)
		return false;
	if (e->state != YZ_FORK_LIVE || e->next_owner != MyProcPid ||
		!DsaPointerIsValid(e->next_segs))
	{
		dshash_release_lock(yz_forks, e);
		return false;
	}
	now = dsa_get_address(yz_area, e->next_segs);
	nnow = e->next_nsegs;
	was = e->nsegs > 0 ? dsa_get_address(yz_area, e->segs) : NULL;
	/*
	 * What happened meanwhile to the segments the switch keeps as they were
	 * (same base, same layers: one that gains a layer is a new segment,
	 * whose range may be longer than the old one's).
	 */
	for (uint32 i = 0; i < nnow; i++)
		for (uint32 j = 0; was != NULL && j < e->nsegs; j++)
			if (same_objects(&now[i], &was[j]))
			{
				now[i].written |= was[j].written;
				now[i].remote_blocks = Min(now[i].remote_blocks, was[j].remote_blocks);
			}
	old = e->segs;
	nold = e->nsegs;
	e->segs = e->next_segs;
	e->nsegs = nnow;
	e->next_segs = old;			/* freed by yz_map_unstage */
	e->next_nsegs = nold;
	set_offload(e, head);
	e->evicted = false;
	e->dirty = true;
	e->version++;
	dshash_release_lock(yz_forks, e);
	bump();
	pg_atomic_fetch_add_u64(&yz_shared->switches, 1);
	return true;
}

uint64_t
yz_map_switches(void)
{
	return yz_shared ? pg_atomic_read_u64(&yz_shared->switches) : 0;
}

/* Whether a fork's live map names an object (any state: false if no fork). */
static bool
fork_names(const YzSegInfo *seg)
{
	YzForkEntry *e = find_fork(seg->spc, seg->db, seg->rel, seg->fork, false);
	bool		named = false;

	if (e == NULL)
		return false;
	if (e->state == YZ_FORK_LIVE && e->nsegs > 0)
		named = in_segs(dsa_get_address(yz_area, e->segs), e->nsegs, seg->object_id);
	dshash_release_lock(yz_forks, e);
	return named;
}

/* Whether a retiring entry or fork is `only`'s (NULL: any). */
static inline bool
of_fork(const YzForkKey *only, uint32 spc, uint32 db, uint32 rel, int32 fork)
{
	return only == NULL || (only->spc == spc && only->db == db &&
							only->rel == rel && only->fork == fork);
}

/*
 * Ends process pid's switches of fork `only` (NULL: all of them): its
 * holds on superseded objects that the live map no longer names retire at
 * `lsn` (0: the current WAL position, for a process exiting), the others
 * are dropped; its staged or old arrays are freed.  Holds are settled one
 * at a time, each looked up in the forks table without the retiring table
 * locked, so no two partition locks are ever held at once.
 */
static void
settle_holds_of(int pid, const YzForkKey *only, uint64 lsn, int64 at)
{
	dshash_seq_status scan;
	YzRetiringEntry *h;
	YzForkEntry *e;

	if (yz_retiring == NULL || yz_forks == NULL)
		return;
	for (;;)
	{
		YzRetiring	r;
		bool		found = false;

		dshash_seq_init(&scan, yz_retiring, false);
		while ((h = dshash_seq_next(&scan)) != NULL)
		{
			if (h->r.lsn == 0 && h->r.owner_pid == pid &&
				of_fork(only, h->r.seg.spc, h->r.seg.db, h->r.seg.rel, h->r.seg.fork))
			{
				r = h->r;
				found = true;
				break;
			}
		}
		dshash_seq_term(&scan);
		if (!found)
			break;
		h = dshash_find(yz_retiring, r.seg.object_id, true);
		if (h != NULL && (h->r.lsn != 0 || h->r.owner_pid != pid))
		{
			dshash_release_lock(yz_retiring, h);
			continue;			/* no longer this process's hold */
		}
		if (h == NULL)
			continue;
		dshash_release_lock(yz_retiring, h);
		if (lsn != UINT64_MAX && r.hold == YZ_HOLD_SUPERSEDED && !fork_names(&r.seg))
		{
			h = dshash_find(yz_retiring, r.seg.object_id, true);
			if (h != NULL && h->r.lsn == 0 && h->r.owner_pid == pid)
			{
				h->r.lsn = lsn ? lsn : Max(position_now(), 1);
				h->r.at = at ? at : (int64) time(NULL);
				h->r.owner_pid = 0;
				h->r.hold = YZ_HOLD_NONE;
			}
			if (h != NULL)
				dshash_release_lock(yz_retiring, h);
		}
		else
		{
			h = dshash_find(yz_retiring, r.seg.object_id, true);
			if (h != NULL && h->r.lsn == 0 && h->r.owner_pid == pid)
				dshash_delete_entry(yz_retiring, h);
			else if (h != NULL)
				dshash_release_lock(yz_retiring, h);
		}
	}
	dshash_seq_init(&scan, yz_forks, true);
	while ((e = dshash_seq_next(&scan)) != NULL)
	{
		if (e->next_owner == pid &&
			of_fork(only, e->key.spc, e->key.db, e->key.rel, e->key.fork))
		{
			if (DsaPointerIsValid(e->next_segs))
				dsa_free(yz_area, e->next_segs);
			e->next_segs = InvalidDsaPointer;
			e->next_nsegs = 0;
			e->next_owner = 0;
		}
	}
	dshash_seq_term(&scan);
}

void
yz_map_unstage(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
			   uint64_t lsn, int64_t at)
{
	YzForkKey	key = {spc, db, rel, fork};

	if (!ready())
		return;
	/* Aborted (lsn 0): nothing was retired, every hold goes. */
	settle_holds_of(MyProcPid, &key, lsn == 0 ? UINT64_MAX : lsn, at);
}

void
yz_map_add_retiring(const YzRetiring *r)
{
	put_retiring(r, 0, YZ_HOLD_NONE, true);
}

bool
yz_map_clear_written(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
					 uint32_t segno)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, true);
	bool		changed = false;

	if (e == NULL)
		return false;
	if (e->state == YZ_FORK_LIVE)
	{
		YzSegData  *s = (YzSegData *) find_seg(e, segno);

		if (s != NULL && s->written)
		{
			s->written = false;
			e->version++;
			e->dirty = true;
			changed = true;
		}
	}
	dshash_release_lock(yz_forks, e);
	if (changed)
		bump();
	return changed;
}

bool
yz_map_mark_written(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
					uint32_t segno, uint32_t first)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, true);
	bool		changed = false;

	if (e == NULL)
		return false;
	if (e->state == YZ_FORK_LIVE && e->nsegs > 0)
	{
		YzSegData  *s = (YzSegData *) find_seg(e, segno);

		if (s != NULL && !s->written && first < s->remote_blocks)
		{
			/* Readers fetch entries per read, not cached: no generation bump. */
			s->written = true;
			e->version++;
			e->dirty = true;
			changed = true;
		}
	}
	dshash_release_lock(yz_forks, e);
	return changed;
}

void
yz_map_note_pending_write(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
						  uint32_t segno)
{
	YzForkEntry *e;
	bool		noted = true;

	/* Most write-outs find it noted already: look under a shared lock. */
	e = find_fork(spc, db, rel, fork, false);
	if (e == NULL)
		return;
	if (e->state == YZ_FORK_PENDING && e->nsegs > 0)
	{
		const YzSegData *s = find_seg(e, segno);

		noted = s == NULL || s->touched;
	}
	dshash_release_lock(yz_forks, e);
	if (noted)
		return;
	e = find_fork(spc, db, rel, fork, true);
	if (e == NULL)
		return;
	if (e->state == YZ_FORK_PENDING && e->nsegs > 0)
	{
		YzSegData  *s = (YzSegData *) find_seg(e, segno);

		if (s != NULL)
			s->touched = true;
	}
	dshash_release_lock(yz_forks, e);
}

int
yz_map_truncate(uint32_t spc, uint32_t db, uint32_t rel, int32_t fork,
				uint32_t nblocks, uint32_t blocks_per_segment)
{
	YzForkEntry *e = find_fork(spc, db, rel, fork, true);
	int			changed = 0;

	if (e == NULL)
		return 0;
	if (e->nsegs > 0)
	{
		YzSegData  *s = dsa_get_address(yz_area, e->segs);

		for (uint32 i = 0; i < e->nsegs; i++)
		{
			uint64		start = (uint64) s[i].segno * blocks_per_segment;
			uint32		keep = nblocks <= start ? 0 :
				(uint32) Min((uint64) s[i].remote_blocks, nblocks - start);

			if (keep != s[i].remote_blocks)
			{
				/* Zero remote blocks: the segment stays (GC still sees the object) but serves nothing. */
				s[i].remote_blocks = keep;
				changed++;
			}
		}
	}
	if (changed > 0)
	{
		e->version++;
		e->dirty = true;
	}
	dshash_release_lock(yz_forks, e);
	if (changed > 0)
		bump();
	return changed;
}

bool
yz_map_take_keys_changed(void)
{
	if (yz_shared == NULL)
		return false;
	return pg_atomic_exchange_u32(&yz_shared->keys_changed, 0) != 0;
}

void
yz_map_set_keys_changed(void)
{
	if (yz_shared != NULL)
		pg_atomic_write_u32(&yz_shared->keys_changed, 1);
}

void
yz_map_usage(YzMapUsage *out)
{
	dshash_seq_status scan;
	YzForkEntry *e;
	YzRetiringEntry *r;

	memset(out, 0, sizeof(*out));
	out->limit = (uint64) yz_max_map_memory_kb * 1024;
	if (!ready())
		return;
	out->bytes = dsa_get_total_size(yz_area);
	dshash_seq_init(&scan, yz_forks, false);
	while ((e = dshash_seq_next(&scan)) != NULL)
	{
		out->forks++;
		out->segments += e->nsegs;
		out->broken += e->state == YZ_FORK_BROKEN;
		out->pending += e->state == YZ_FORK_PENDING;
		out->dirty += e->dirty;
	}
	dshash_seq_term(&scan);
	dshash_seq_init(&scan, yz_retiring, false);
	while ((r = dshash_seq_next(&scan)) != NULL)
		out->retiring++;
	dshash_seq_term(&scan);
}
